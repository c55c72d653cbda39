//! Prepare / unprepare, the shared pool, restart restore, bad input.

use std::collections::HashMap;

use drakit_cpu::fixture::{MachineSpec, fixtures_dir, materialize_named};
use drakit_cpu::inventory::{DeviceModel, GroupBy, STANDARD_NUMA_ATTRIBUTE};
use drakit_cpu::state::{ClaimRecord, PrepareError, cpus_env_name};
use drakit_cpu::store::{CheckpointStore, MemoryStore, StateStore};
use drakit_cpu::{CpuSet, Manager, PoolConfig, Topology};
use drakit_proto::drakit::{AllocatedDevice, ClaimRef, PrepareRequest, attribute};

const BOOT: &str = "11111111-2222-3333-4444-555555555555";

fn set(s: &str) -> CpuSet {
    CpuSet::parse(s).unwrap()
}

fn topo(name: &str) -> Topology {
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    materialize_named(name, dir.path()).unwrap();
    Topology::discover(dir.path()).unwrap()
}

fn individual(uid: &str, cpus: &[u32]) -> PrepareRequest {
    PrepareRequest {
        claim: Some(ClaimRef {
            namespace: "ns".into(),
            name: format!("claim-{uid}"),
            uid: uid.into(),
        }),
        devices: cpus
            .iter()
            .map(|c| AllocatedDevice {
                requests: vec!["cpus".into()],
                pool: "node-a".into(),
                device: format!("cpu{c}"),
                ..Default::default()
            })
            .collect(),
        reserved_for_pods: vec![format!("pod-{uid}")],
        boot_id: BOOT.into(),
    }
}

fn grouped(uid: &str, group: &str, count: &str) -> PrepareRequest {
    let mut consumed = HashMap::new();
    consumed.insert("cpus".to_string(), count.to_string());
    PrepareRequest {
        claim: Some(ClaimRef {
            namespace: "ns".into(),
            name: format!("claim-{uid}"),
            uid: uid.into(),
        }),
        devices: vec![AllocatedDevice {
            requests: vec!["cpus".into()],
            pool: "node-a".into(),
            device: group.into(),
            share_id: format!("share-{uid}"),
            consumed_capacity: consumed,
            ..Default::default()
        }],
        reserved_for_pods: vec![],
        boot_id: String::new(),
    }
}

fn manager(t: Topology, cfg: PoolConfig, store: &MemoryStore) -> Manager {
    Manager::new(t, cfg, BOOT, Box::new(store.clone())).unwrap()
}

fn env_cpus(resp: &drakit_proto::drakit::PrepareResponse, uid: &str) -> CpuSet {
    let env = &resp.devices[0].edits.as_ref().unwrap().env[0];
    let (name, value) = env.split_once('=').unwrap();
    assert_eq!(name, cpus_env_name(uid));
    set(value)
}

#[test]
fn individual_prepare_unprepare_and_pool() {
    let store = MemoryStore::new();
    let cfg = PoolConfig {
        reserved: set("0-1"),
        ..Default::default()
    };
    let mut m = manager(topo("alderlake-8p8e"), cfg, &store);
    assert_eq!(m.shared_pool(), set("2-23"));
    let g0 = m.generation();
    let resp = m.prepare(&individual("uid-a", &[2, 3])).unwrap();
    assert_eq!(resp.devices.len(), 2);
    assert_eq!(env_cpus(&resp, "uid-a"), set("2-3"));
    assert_eq!(cpus_env_name("ab-cd"), "DRAKIT_CPUS_ab_cd");
    assert!(m.generation() > g0);
    assert_eq!(m.shared_pool(), set("4-23"));
    let state = m.pool_state();
    assert_eq!(state.shared_cpus, "4-23");
    assert_eq!(state.shared_mems, "0");
    assert_eq!(state.assignments.len(), 1);
    assert_eq!(state.assignments[0].cpus, "2-3");
    assert_eq!(state.assignments[0].pod_uids, vec!["pod-uid-a".to_string()]);

    // Idempotent repeat: same answer, nothing changes.
    let g1 = m.generation();
    let again = m.prepare(&individual("uid-a", &[3, 2])).unwrap();
    assert_eq!(again, resp);
    assert_eq!(m.generation(), g1);
    // Same uid, other devices: refused.
    let err = m.prepare(&individual("uid-a", &[4])).unwrap_err();
    assert!(matches!(err, PrepareError::Conflict { .. }), "{err}");

    // Another claim for a CPU already exclusive: refused, nothing recorded.
    let err = m.prepare(&individual("uid-b", &[5, 3])).unwrap_err();
    assert!(
        err.to_string()
            .contains("cpu3 is already exclusive to claim uid-a"),
        "{err}"
    );
    assert!(err.to_string().contains("claim uid-b"), "{err}");
    assert!(m.claim("uid-b").is_none());
    assert_eq!(m.exclusive(), set("2-3"));

    // Reserved, offline / absent, malformed names.
    let err = m.prepare(&individual("uid-c", &[1])).unwrap_err();
    assert!(err.to_string().contains("cpu1 is reserved"), "{err}");
    let err = m.prepare(&individual("uid-c", &[24])).unwrap_err();
    assert!(
        err.to_string().contains("cpu24 is offline or absent"),
        "{err}"
    );
    let mut bad = individual("uid-c", &[5]);
    bad.devices[0].device = "cpu05".into();
    let err = m.prepare(&bad).unwrap_err();
    assert!(err.to_string().contains("want cpu<N>"), "{err}");
    let err = m.prepare(&individual("uid-c", &[5, 5])).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");

    assert!(m.unprepare("uid-a").unwrap());
    assert!(!m.unprepare("uid-a").unwrap(), "unknown claim succeeds");
    assert_eq!(m.shared_pool(), set("2-23"));
    assert!(store.clone().load().unwrap().is_empty());
}

#[test]
fn bad_requests_are_refused_clearly() {
    let store = MemoryStore::new();
    let mut m = manager(topo("alderlake-8p8e"), PoolConfig::default(), &store);
    let mut r = individual("uid-x", &[4]);
    r.boot_id = "other-boot".into();
    let err = m.prepare(&r).unwrap_err();
    assert!(matches!(err, PrepareError::BootMismatch { .. }), "{err}");
    assert!(err.to_string().contains("other-boot"), "{err}");

    let mut r = individual("", &[4]);
    r.claim.as_mut().unwrap().uid.clear();
    assert!(m.prepare(&r).unwrap_err().to_string().contains("uid"));
    let r = individual("bad/uid", &[4]);
    assert!(
        m.prepare(&r)
            .unwrap_err()
            .to_string()
            .contains("characters")
    );
    let r = individual("uid-x", &[]);
    assert!(
        m.prepare(&r)
            .unwrap_err()
            .to_string()
            .contains("no devices")
    );

    let mut r = individual("uid-x", &[4]);
    r.devices[0].config_json = "[1]".into();
    let err = m.prepare(&r).unwrap_err().to_string();
    assert!(
        err.contains("device cpu4: config: parameters must be a JSON object"),
        "{err}"
    );
    r.devices[0].config_json =
        r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"CpuConfig","bogus":1}"#.into();
    let err = m.prepare(&r).unwrap_err().to_string();
    assert!(
        err.contains("device cpu4: config:") && err.contains("bogus"),
        "{err}"
    );
    r.devices[0].config_json =
        r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"RdmaConfig","rdma":{}}"#.into();
    let err = m.prepare(&r).unwrap_err().to_string();
    assert!(err.contains("device cpu4: config:"), "{err}");
    assert!(m.exclusive().is_empty());
    r.devices[0].config_json = r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"CpuConfig"}"#.into();
    m.prepare(&r).unwrap();
    assert_eq!(m.exclusive(), set("4"));
}

#[test]
fn last_shared_cpu_is_never_handed_out() {
    let store = MemoryStore::new();
    let cfg = PoolConfig {
        reserved: set("0"),
        ..Default::default()
    };
    let t = {
        let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
        Topology::discover(&copy_vm_tree(dir.path())).unwrap()
    };
    let mut m = manager(t.clone(), cfg.clone(), &store);
    // cpu1 is the only shared CPU (cpu0 reserved, not shareable).
    let err = m.prepare(&individual("uid-a", &[1])).unwrap_err();
    assert!(matches!(err, PrepareError::SharedPoolEmpty { .. }), "{err}");
    assert!(m.exclusive().is_empty());

    // Reserved CPUs configured shareable: cpu0 stays in the pool, cpu1 may go.
    let mut m = manager(
        t.clone(),
        PoolConfig {
            reserved_shareable: true,
            ..cfg.clone()
        },
        &MemoryStore::new(),
    );
    m.prepare(&individual("uid-a", &[1])).unwrap();
    assert_eq!(m.shared_pool(), set("0"));

    // Or an empty pool explicitly allowed.
    let mut m = manager(
        t,
        PoolConfig {
            allow_empty_shared_pool: true,
            ..cfg
        },
        &MemoryStore::new(),
    );
    m.prepare(&individual("uid-a", &[1])).unwrap();
    assert!(m.shared_pool().is_empty());
}

fn copy_vm_tree(dst: &std::path::Path) -> std::path::PathBuf {
    fn walk(src: &std::path::Path, dst: &std::path::Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            let to = dst.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &to);
            } else {
                std::fs::copy(e.path(), to).unwrap();
            }
        }
    }
    walk(&fixtures_dir().join("sysfs/vm-2cpu"), dst);
    dst.to_path_buf()
}

#[test]
fn isolated_cpus_leave_the_shared_pool_unless_shareable() {
    let mut spec = MachineSpec::load(&fixtures_dir().join("xeon-2s-smt.json")).unwrap();
    spec.isolated = "10-11".into();
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    spec.materialize(dir.path()).unwrap();
    let t = Topology::discover(dir.path()).unwrap();
    let m = manager(t.clone(), PoolConfig::default(), &MemoryStore::new());
    assert!(!m.shared_pool().contains(10));
    let m = manager(
        t,
        PoolConfig {
            isolated_shareable: true,
            ..Default::default()
        },
        &MemoryStore::new(),
    );
    assert!(m.shared_pool().contains(10));
}

#[test]
fn grouped_model_picks_inside_the_group() {
    let store = MemoryStore::new();
    let cfg = PoolConfig {
        model: DeviceModel::Grouped(GroupBy::Numa),
        reserved: set("0,40"),
        ..Default::default()
    };
    let mut m = manager(topo("xeon-2s-smt"), cfg, &store);
    let inv = m.inventory();
    assert_eq!(inv.devices.len(), 2);
    let numa1 = inv.devices.iter().find(|d| d.name == "numa1").unwrap();
    assert_eq!(numa1.capacity["cpus"].value, "40");
    assert!(numa1.allow_multiple_allocations);
    let numa0 = inv.devices.iter().find(|d| d.name == "numa0").unwrap();
    assert_eq!(
        numa0.capacity["cpus"].value, "38",
        "reserved CPUs are not offered"
    );
    assert_eq!(
        numa0.attributes[STANDARD_NUMA_ATTRIBUTE].value,
        Some(attribute::Value::Int(0))
    );

    let resp = m.prepare(&grouped("uid-a", "numa1", "4")).unwrap();
    assert_eq!(env_cpus(&resp, "uid-a"), set("20-21,60-61"));
    assert_eq!(resp.devices[0].share_id, "share-uid-a");
    let resp = m.prepare(&grouped("uid-b", "numa1", "3000m")).unwrap();
    assert_eq!(env_cpus(&resp, "uid-b"), set("22-23,62"));
    // A single CPU fills the hole the odd request left.
    let resp = m.prepare(&grouped("uid-c", "numa1", "1")).unwrap();
    assert_eq!(env_cpus(&resp, "uid-c"), set("63"));
    // numa0 avoids the reserved core.
    let resp = m.prepare(&grouped("uid-d", "numa0", "2")).unwrap();
    assert_eq!(env_cpus(&resp, "uid-d"), set("1,41"));
    assert_eq!(m.pool_state().assignments.len(), 4);
    let d = m
        .pool_state()
        .assignments
        .iter()
        .find(|a| a.cpus == "1,41")
        .unwrap()
        .mems
        .clone();
    assert_eq!(d, "0");

    // Errors: unknown group, bad quantity, too many.
    let err = m
        .prepare(&grouped("uid-e", "numa7", "1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such group (have numa0,numa1)"), "{err}");
    for q in ["1.5", "1500m", "0", "-1", "x", ""] {
        let err = m
            .prepare(&grouped("uid-e", "numa1", q))
            .unwrap_err()
            .to_string();
        assert!(err.contains("consumed_capacity[\"cpus\"]"), "{q}: {err}");
    }
    let err = m
        .prepare(&grouped("uid-e", "numa1", "40"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("40 CPUs requested but only 32 are free"),
        "{err}"
    );
    // Individual device names are not devices of the grouped model.
    let err = m
        .prepare(&individual("uid-e", &[5]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such group"), "{err}");
}

#[test]
fn grouped_by_socket_on_epyc_is_l3_aligned() {
    let cfg = PoolConfig {
        model: DeviceModel::Grouped(GroupBy::Socket),
        ..Default::default()
    };
    let mut m = manager(topo("epyc-2s-8l3"), cfg, &MemoryStore::new());
    let names: Vec<String> = m.inventory().devices.into_iter().map(|d| d.name).collect();
    assert_eq!(names, vec!["socket0", "socket1"]);
    let a = env_cpus(&m.prepare(&grouped("a", "socket1", "8")).unwrap(), "a");
    assert_eq!(a, set("32-35,96-99"), "one whole CCX");
    let b = env_cpus(&m.prepare(&grouped("b", "socket1", "6")).unwrap(), "b");
    assert_eq!(b, set("36-38,100-102"), "whole cores in one fresh CCX");
    let c = env_cpus(&m.prepare(&grouped("c", "socket1", "2")).unwrap(), "c");
    assert_eq!(c, set("39,103"), "best fit: the rest of b's CCX");
}

#[test]
fn restart_restores_exactly_and_drops_stale_records() {
    // On disk, through the shared checkpoint journal, as in production.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let open = |boot: &str| Box::new(CheckpointStore::open(&path, boot).unwrap().0);
    let t = topo("xeon-2s-smt");
    let cfg = PoolConfig {
        model: DeviceModel::Grouped(GroupBy::Numa),
        ..Default::default()
    };
    let (state, claims) = {
        let mut m = Manager::new(t.clone(), cfg.clone(), BOOT, open(BOOT)).unwrap();
        m.prepare(&grouped("a", "numa0", "4")).unwrap();
        m.prepare(&grouped("b", "numa1", "5")).unwrap();
        m.prepare(&grouped("c", "numa0", "2")).unwrap();
        m.unprepare("c").unwrap();
        (
            m.pool_state(),
            m.claims().cloned().collect::<Vec<ClaimRecord>>(),
        )
    };
    let m = Manager::new(t.clone(), cfg.clone(), BOOT, open(BOOT)).unwrap();
    assert_eq!(m.claims().cloned().collect::<Vec<_>>(), claims);
    let restored = m.pool_state();
    assert_eq!(restored.shared_cpus, state.shared_cpus);
    assert_eq!(restored.assignments, state.assignments);
    drop(m);

    // After a reboot: every record is stale, dropped and deleted from the store.
    let m = Manager::new(t, cfg, "another-boot", open("another-boot")).unwrap();
    assert_eq!(m.claims().count(), 0);
    assert_eq!(m.shared_pool().len(), 80);
    drop(m);
    assert!(open("another-boot").load().unwrap().is_empty());
}

#[test]
fn conflicting_or_garbage_records_are_dropped_not_doubled() {
    let store = MemoryStore::new();
    let t = topo("alderlake-8p8e");
    let rec = |uid: &str, cpus: &str| ClaimRecord {
        namespace: "ns".into(),
        name: uid.into(),
        uid: uid.into(),
        cpus: set(cpus),
        pods: vec![],
        devices: vec![],
        boot_id: BOOT.into(),
    };
    let mut s = store.clone();
    s.put("a", &serde_json::to_vec(&rec("a", "2-3")).unwrap())
        .unwrap();
    s.put("b", &serde_json::to_vec(&rec("b", "3-4")).unwrap())
        .unwrap();
    s.put("c", b"{not json").unwrap();
    s.put("d", &serde_json::to_vec(&rec("other", "9")).unwrap())
        .unwrap();
    let cfg = PoolConfig {
        reserved: set("0"),
        ..Default::default()
    };
    s.put("e", &serde_json::to_vec(&rec("e", "0")).unwrap())
        .unwrap();
    let m = manager(t, cfg, &store);
    assert_eq!(
        m.claims().map(|r| r.uid.as_str()).collect::<Vec<_>>(),
        vec!["a"]
    );
    assert_eq!(m.exclusive(), set("2-3"));
    let left: Vec<String> = store.clone().load().unwrap().into_keys().collect();
    assert_eq!(left, vec!["a".to_string()]);
}

#[test]
fn reserved_everything_is_refused() {
    let t = topo("alderlake-8p8e");
    let cfg = PoolConfig {
        reserved: set("0-23"),
        ..Default::default()
    };
    let err = Manager::new(t, cfg, BOOT, Box::new(MemoryStore::new())).unwrap_err();
    assert!(err.to_string().contains("no online CPU"), "{err}");
}

#[test]
fn store_failure_rolls_back() {
    #[derive(Debug)]
    struct Failing;
    impl StateStore for Failing {
        fn load(
            &mut self,
        ) -> Result<std::collections::BTreeMap<String, Vec<u8>>, drakit_cpu::store::StoreError>
        {
            Ok(Default::default())
        }
        fn put(&mut self, _: &str, _: &[u8]) -> Result<(), drakit_cpu::store::StoreError> {
            Err(drakit_cpu::store::StoreError::Poisoned)
        }
        fn delete(&mut self, _: &str) -> Result<(), drakit_cpu::store::StoreError> {
            Ok(())
        }
    }
    let mut m = Manager::new(
        topo("alderlake-8p8e"),
        PoolConfig::default(),
        BOOT,
        Box::new(Failing),
    )
    .unwrap();
    let err = m.prepare(&individual("uid-a", &[3])).unwrap_err();
    assert!(matches!(err, PrepareError::Store { .. }), "{err}");
    assert!(m.exclusive().is_empty());
    assert!(m.claim("uid-a").is_none());
}

#[test]
fn individual_inventory_attributes() {
    let m = manager(
        topo("alderlake-8p8e"),
        PoolConfig {
            reserved: set("0-1"),
            ..Default::default()
        },
        &MemoryStore::new(),
    );
    let inv = m.inventory();
    assert_eq!(inv.devices.len(), 22, "reserved CPUs are not published");
    let d = inv.devices.iter().find(|d| d.name == "cpu17").unwrap();
    let a = |k: &str| d.attributes[k].value.clone().unwrap();
    assert_eq!(a("coreType"), attribute::Value::String("E-core".into()));
    assert_eq!(a("package"), attribute::Value::Int(0));
    assert_eq!(a("core"), attribute::Value::Int(9));
    assert_eq!(a("localMemory"), attribute::Value::Int(0));
    assert_eq!(a("isolated"), attribute::Value::Bool(false));
    assert_eq!(a(STANDARD_NUMA_ATTRIBUTE), attribute::Value::Int(0));
    for i in 0..4 {
        assert!(d.attributes.contains_key(&format!("cache{i}ID")));
    }
    for d in &inv.devices {
        assert!(d.attributes.len() + d.capacity.len() <= 32);
        assert!(d.name.len() <= 63);
    }
    let p = inv.devices.iter().find(|d| d.name == "cpu2").unwrap();
    assert_eq!(
        p.attributes["coreType"].value,
        Some(attribute::Value::String("P-core".into()))
    );
}

fn cfg(json: &str) -> String {
    format!(r#"{{"apiVersion":"drakit.dev/v1alpha1","kind":"CpuConfig",{json}}}"#)
}

#[test]
fn cpu_config_steers_the_grouped_pick() {
    let mut m = manager(
        topo("alderlake-8p8e"),
        PoolConfig {
            model: DeviceModel::Grouped(GroupBy::Numa),
            ..Default::default()
        },
        &MemoryStore::new(),
    );
    // Default: 4 CPUs = one whole E-core cluster.
    let r = grouped("a", "numa0", "4");
    assert_eq!(env_cpus(&m.prepare(&r).unwrap(), "a"), set("16-19"));
    // coreType performance: two whole P-cores.
    let mut r = grouped("b", "numa0", "4");
    r.devices[0].config_json = cfg(r#""coreType":"performance""#);
    assert_eq!(env_cpus(&m.prepare(&r).unwrap(), "b"), set("0-3"));
    // smt full-cores with an odd count on P-cores: refused, nothing taken.
    let mut r = grouped("c", "numa0", "3");
    r.devices[0].config_json = cfg(r#""coreType":"performance","smt":"full-cores""#);
    let err = m.prepare(&r).unwrap_err().to_string();
    assert!(
        err.contains("claim c") && err.contains("splits a core"),
        "{err}"
    );
    // The count may come from the config when no capacity was recorded ...
    let mut r = grouped("d", "numa0", "1");
    r.devices[0].consumed_capacity.clear();
    r.devices[0].config_json = cfg(r#""count":2,"coreType":"efficiency""#);
    assert_eq!(env_cpus(&m.prepare(&r).unwrap(), "d"), set("20-21"));
    // ... but must not contradict the capacity the scheduler accounted.
    let mut r = grouped("e", "numa0", "2");
    r.devices[0].config_json = cfg(r#""count":3"#);
    let err = m.prepare(&r).unwrap_err().to_string();
    assert!(
        err.contains("config count 3 differs from the allocated capacity 2"),
        "{err}"
    );
    assert_eq!(m.exclusive(), set("0-3,16-21"));
}

#[test]
fn cpu_config_checks_the_individual_choice() {
    let mut m = manager(
        topo("xeon-2s-smt"),
        PoolConfig::default(),
        &MemoryStore::new(),
    );
    let with = |uid: &str, cpus: &[u32], json: &str| {
        let mut r = individual(uid, cpus);
        for d in &mut r.devices {
            d.config_json = cfg(json);
        }
        r
    };
    // full-cores: cpu1 without its sibling cpu41 is refused; with it, fine.
    let err = m
        .prepare(&with("a", &[1, 2, 42], r#""smt":"full-cores""#))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cpu1 is allocated without its siblings 1,41"),
        "{err}"
    );
    m.prepare(&with("a", &[1, 41, 2, 42], r#""smt":"full-cores""#))
        .unwrap();
    // numaAlignment require: CPUs on two nodes are refused.
    let err = m
        .prepare(&with("b", &[3, 23], r#""numaAlignment":"require""#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("span NUMA nodes 0-1"), "{err}");
    // coreType on a part without core types: refused with a hint.
    let err = m
        .prepare(&with("c", &[5], r#""coreType":"performance""#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not typed"), "{err}");
    assert_eq!(m.exclusive(), set("1-2,41-42"));
}

#[test]
fn topology_refresh_follows_hotplug() {
    let mut m = manager(
        topo("xeon-2s-smt"),
        PoolConfig::default(),
        &MemoryStore::new(),
    );
    m.prepare(&individual("a", &[5, 79])).unwrap();
    let (inv0, gen0) = (m.inventory(), m.generation());
    assert_eq!(inv0.devices.len(), 80);
    assert!(
        !m.refresh_topology(m.topology().clone()),
        "same topology: no change"
    );

    let mut spec = MachineSpec::load(&fixtures_dir().join("xeon-2s-smt.json")).unwrap();
    spec.offline = "78-79".into();
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    spec.materialize(dir.path()).unwrap();
    assert!(m.refresh_topology(Topology::discover(dir.path()).unwrap()));
    let inv = m.inventory();
    assert_eq!(inv.generation, inv0.generation + 1);
    assert_eq!(inv.devices.len(), 78);
    assert!(m.generation() > gen0);
    assert!(!m.shared_pool().contains(78));
    // The claim keeps its CPUs (one now offline, logged); offline CPUs are refused.
    assert_eq!(m.claim("a").unwrap().cpus, set("5,79"));
    let err = m.prepare(&individual("b", &[78])).unwrap_err().to_string();
    assert!(err.contains("cpu78 is offline"), "{err}");
}
