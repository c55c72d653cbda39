//! Discovery on every fixture: generated trees, the checked-in VM tree, the real host.

use std::collections::BTreeSet;
use std::path::Path;

use drakit_cpu::CpuSet;
use drakit_cpu::fixture::{MachineSpec, fixtures_dir, materialize_named};
use drakit_cpu::topology::{CoreType, Topology, TopologyError};

fn set(s: &str) -> CpuSet {
    CpuSet::parse(s).unwrap()
}

fn machine(name: &str) -> (tempfile::TempDir, Topology) {
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    materialize_named(name, dir.path()).unwrap();
    let t = Topology::discover(dir.path()).unwrap();
    (dir, t)
}

fn distinct<T: Ord>(t: &Topology, f: impl Fn(&drakit_cpu::topology::Cpu) -> T) -> usize {
    t.cpus.values().map(f).collect::<BTreeSet<_>>().len()
}

#[test]
fn generator_writes_kernel_formats() {
    let (dir, _) = machine("xeon-2s-smt");
    let r = dir.path();
    let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
    assert_eq!(read("devices/system/cpu/online"), "0-79\n");
    assert_eq!(read("devices/system/cpu/isolated"), "\n");
    assert_eq!(
        read("devices/system/cpu/cpu0/topology/thread_siblings_list"),
        "0,40\n"
    );
    assert_eq!(
        read("devices/system/cpu/cpu41/topology/core_cpus_list"),
        "1,41\n"
    );
    assert_eq!(
        read("devices/system/cpu/cpu20/topology/physical_package_id"),
        "1\n"
    );
    assert_eq!(read("devices/system/cpu/cpu20/topology/core_id"), "0\n");
    assert_eq!(read("devices/system/cpu/cpu5/cache/index0/level"), "1\n");
    assert_eq!(read("devices/system/cpu/cpu5/cache/index0/type"), "Data\n");
    assert_eq!(
        read("devices/system/cpu/cpu5/cache/index1/type"),
        "Instruction\n"
    );
    assert_eq!(
        read("devices/system/cpu/cpu5/cache/index3/type"),
        "Unified\n"
    );
    assert_eq!(
        read("devices/system/cpu/cpu5/cache/index3/shared_cpu_list"),
        "0-19,40-59\n"
    );
    assert_eq!(
        read("devices/system/cpu/cpu5/cache/index2/shared_cpu_list"),
        "5,45\n"
    );
    assert_eq!(read("devices/system/node/node1/cpulist"), "20-39,60-79\n");
    assert!(!r.join("devices/cpu_core").exists(), "not hybrid");
}

#[test]
fn alderlake_hybrid() {
    let (_d, t) = machine("alderlake-8p8e");
    assert_eq!(t.online, set("0-23"));
    assert!(t.hybrid);
    assert_eq!(t.cpus.len(), 24);
    for id in 0..16 {
        let c = &t.cpus[&id];
        assert_eq!(c.core_type, Some(CoreType::Performance), "cpu{id}");
        assert_eq!(c.siblings.len(), 2, "cpu{id}: SMT on P-cores");
        assert_eq!(c.core, id / 2);
    }
    for id in 16..24 {
        let c = &t.cpus[&id];
        assert_eq!(c.core_type, Some(CoreType::Efficiency), "cpu{id}");
        assert_eq!(
            c.siblings,
            [id].into_iter().collect::<CpuSet>(),
            "no SMT on E"
        );
    }
    // E-cores: clusters of four sharing an L2; every CPU shares the one L3.
    assert_eq!(t.cpus[&16].cluster, t.cpus[&19].cluster);
    assert_ne!(t.cpus[&19].cluster, t.cpus[&20].cluster);
    assert_eq!(t.cpus[&16].caches[2], t.cpus[&19].caches[2]);
    assert_ne!(t.cpus[&0].caches[2], t.cpus[&2].caches[2]);
    assert_eq!(distinct(&t, |c| c.caches[3]), 1);
    assert_eq!(
        t.cpus[&0].caches[0], t.cpus[&1].caches[0],
        "siblings share L1"
    );
    assert_eq!(t.numa_nodes.len(), 1);
    assert_eq!(CoreType::Performance.as_str(), "P-core");
    assert_eq!(CoreType::Efficiency.as_str(), "E-core");
}

#[test]
fn xeon_two_sockets_two_numa() {
    let (_d, t) = machine("xeon-2s-smt");
    assert_eq!(t.online.len(), 80);
    assert!(!t.hybrid);
    assert_eq!(t.packages(), vec![0, 1]);
    assert_eq!(t.numa_nodes[&0], set("0-19,40-59"));
    assert_eq!(t.numa_nodes[&1], set("20-39,60-79"));
    assert_eq!(t.cpus[&0].siblings, set("0,40"));
    assert_eq!(t.cpus[&60].numa_node, 1);
    assert_eq!(t.cpus[&60].package, 1);
    assert_eq!(distinct(&t, |c| c.caches[3]), 2);
    assert_eq!(distinct(&t, |c| c.core_key()), 40);
    assert!(t.cpus.values().all(|c| c.core_type.is_none()));
}

#[test]
fn epyc_eight_l3_per_socket() {
    let (_d, t) = machine("epyc-2s-8l3");
    assert_eq!(t.online.len(), 128);
    assert_eq!(t.numa_nodes.len(), 2);
    let l3_socket0: BTreeSet<_> = t
        .cpus
        .values()
        .filter(|c| c.package == 0)
        .map(|c| c.caches[3])
        .collect();
    assert_eq!(l3_socket0.len(), 8);
    assert_eq!(distinct(&t, |c| c.caches[3]), 16);
    // One CCX: 4 cores x 2 threads.
    let ccx: CpuSet = t
        .cpus
        .values()
        .filter(|c| c.caches[3] == t.cpus[&0].caches[3])
        .map(|c| c.id)
        .collect();
    assert_eq!(ccx, set("0-3,64-67"));
}

#[test]
fn synthetic_1024() {
    let (_d, t) = machine("synthetic-1024");
    assert_eq!(t.online.len(), 1024);
    assert_eq!(t.numa_nodes.len(), 8);
    assert!(t.numa_nodes.values().all(|s| s.len() == 128));
    assert_eq!(distinct(&t, |c| (c.package, c.die)), 8);
    assert_eq!(distinct(&t, |c| c.caches[3]), 32);
    assert_eq!(distinct(&t, |c| c.core_key()), 512);
    assert_eq!(t.cpus[&1023].siblings, set("511,1023"));
}

#[test]
fn offline_and_isolated() {
    let mut spec = MachineSpec::load(&fixtures_dir().join("xeon-2s-smt.json")).unwrap();
    spec.offline = "79".into();
    spec.isolated = "2-3,42-43".into();
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    spec.materialize(dir.path()).unwrap();
    let t = Topology::discover(dir.path()).unwrap();
    assert_eq!(t.online, set("0-78"));
    assert!(!t.cpus.contains_key(&79));
    assert_eq!(
        t.cpus[&39].siblings,
        set("39"),
        "offline sibling not listed"
    );
    assert_eq!(t.isolated, set("2-3,42-43"));
    assert!(t.cpus[&42].isolated);
    assert!(!t.cpus[&4].isolated);
    assert!(
        !dir.path()
            .join("devices/system/cpu/cpu79/topology")
            .exists()
    );
}

#[test]
fn missing_cache_ids_fall_back_to_shared_list() {
    let mut spec = MachineSpec::load(&fixtures_dir().join("epyc-2s-8l3.json")).unwrap();
    spec.cache_ids = false;
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    spec.materialize(dir.path()).unwrap();
    let t = Topology::discover(dir.path()).unwrap();
    assert_eq!(t.cpus[&65].caches[3], Some(0));
    assert_eq!(t.cpus[&4].caches[3], Some(4));
    assert_eq!(distinct(&t, |c| c.caches[3]), 16);
}

#[test]
fn checked_in_vm_tree() {
    let root = fixtures_dir().join("sysfs/vm-2cpu");
    let t = Topology::discover(&root).unwrap();
    assert_eq!(t.online, set("0-1"));
    assert!(t.isolated.is_empty());
    assert!(!t.hybrid);
    assert_eq!(t.numa_nodes.len(), 1);
    // The kernel reports 65535 when there is no cluster information.
    assert_eq!(t.cpus[&0].cluster, None);
    assert_eq!(t.cpus[&0].siblings, set("0"));
    assert!(t.cpus[&0].caches.iter().all(Option::is_some));
    assert_eq!(t.cpus[&0].caches[3], t.cpus[&1].caches[3]);
}

#[test]
fn real_host_is_readable() {
    // Read-only: discovery of this machine's own /sys must succeed and agree with the online file.
    let root = Path::new("/sys");
    if !root.join("devices/system/cpu/online").exists() {
        eprintln!("skipped: no /sys/devices/system/cpu/online on this host");
        return;
    }
    let t = Topology::discover(root).unwrap();
    let online =
        CpuSet::parse(&std::fs::read_to_string(root.join("devices/system/cpu/online")).unwrap())
            .unwrap();
    assert_eq!(t.online, online);
    assert_eq!(t.cpus.len(), online.len());
}

fn corrupt(rel: &str, content: &str) -> TopologyError {
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    materialize_named("alderlake-8p8e", dir.path()).unwrap();
    std::fs::write(dir.path().join(rel), content).unwrap();
    Topology::discover(dir.path()).unwrap_err()
}

#[test]
fn malformed_files_name_the_file() {
    let cases = [
        (
            "devices/system/cpu/online",
            "0-x\n",
            "devices/system/cpu/online",
        ),
        ("devices/system/cpu/online", "\n", "no online CPUs"),
        (
            "devices/system/cpu/cpu3/topology/core_id",
            "banana\n",
            "cpu3/topology/core_id",
        ),
        (
            "devices/system/cpu/cpu3/topology/physical_package_id",
            "-1\n",
            "physical_package_id",
        ),
        (
            "devices/system/cpu/cpu3/topology/thread_siblings_list",
            "7\n",
            "does not list cpu3",
        ),
        (
            "devices/system/cpu/cpu3/cache/index0/type",
            "Weird\n",
            "unknown cache type",
        ),
        (
            "devices/system/cpu/cpu3/cache/index3/id",
            "99999999999999\n",
            "index3/id",
        ),
        (
            "devices/system/node/node0/cpulist",
            "3-1\n",
            "node0/cpulist",
        ),
        ("devices/cpu_core/cpus", "0-99999\n", "cpu_core/cpus"),
        ("devices/system/cpu/isolated", "zz\n", "isolated"),
    ];
    for (rel, content, want) in cases {
        let err = corrupt(rel, content).to_string();
        assert!(err.contains(want), "{rel}: {err:?} should mention {want:?}");
    }
    // A missing required file names it too.
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    materialize_named("alderlake-8p8e", dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("devices/system/cpu/cpu5/topology/core_id")).unwrap();
    let err = Topology::discover(dir.path()).unwrap_err().to_string();
    assert!(err.contains("cpu5/topology/core_id"), "{err}");
    // An empty root.
    let empty = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    let err = Topology::discover(empty.path()).unwrap_err().to_string();
    assert!(err.contains("devices/system/cpu/online"), "{err}");
}

#[test]
fn bad_descriptions_are_refused() {
    let mut spec = MachineSpec::load(&fixtures_dir().join("alderlake-8p8e.json")).unwrap();
    spec.core_groups[0].threads = 0;
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    let err = spec.materialize(dir.path()).unwrap_err().to_string();
    assert!(err.contains("coreGroups[0]"), "{err}");
    let mut spec = MachineSpec::load(&fixtures_dir().join("alderlake-8p8e.json")).unwrap();
    spec.numa_nodes_per_die = u32::MAX;
    let err = spec.materialize(dir.path()).unwrap_err().to_string();
    assert!(err.contains("numaNodesPerDie"), "{err}");
    let mut spec = MachineSpec::load(&fixtures_dir().join("alderlake-8p8e.json")).unwrap();
    spec.packages = u32::MAX;
    spec.dies_per_package = u32::MAX;
    let err = spec.materialize(dir.path()).unwrap_err().to_string();
    assert!(err.contains("too many CPUs"), "{err}");
    let text = r#"{"name":"x","packages":1,"coreGroups":[{"cores":1}],"bogus":1}"#;
    let path = dir.path().join("x.json");
    std::fs::write(&path, text).unwrap();
    let err = MachineSpec::load(&path).unwrap_err().to_string();
    assert!(err.contains("bogus"), "{err}");
}

mod random_machines {
    use drakit_cpu::alloc;
    use drakit_cpu::fixture::{CoreGroup, MachineSpec, SmtNumbering, SpecCoreType};
    use drakit_cpu::{CpuSet, Topology};
    use proptest::prelude::*;

    fn group() -> impl Strategy<Value = CoreGroup> {
        (
            1u32..6,
            1u32..3,
            prop_oneof![
                Just(None),
                Just(Some(SpecCoreType::P)),
                Just(Some(SpecCoreType::E))
            ],
            1u32..4,
            1u32..4,
            prop_oneof![Just(None), (1u32..4).prop_map(Some)],
        )
            .prop_map(|(cores, threads, core_type, cl, l2, l3)| CoreGroup {
                cores,
                threads,
                core_type,
                cores_per_cluster: cl,
                cores_per_l2: l2,
                cores_per_l3: l3,
            })
    }

    fn spec() -> impl Strategy<Value = (MachineSpec, Vec<u32>, Vec<u32>, usize)> {
        (
            1u32..3,
            1u32..3,
            1u32..3,
            any::<bool>(),
            proptest::collection::vec(group(), 1..3),
            proptest::collection::vec(1u32..80, 0..6),
            proptest::collection::vec(0u32..80, 0..4),
            1usize..40,
        )
            .prop_map(|(p, d, n, split, groups, offline, isolated, k)| {
                let spec = MachineSpec {
                    name: "random".into(),
                    description: String::new(),
                    packages: p,
                    dies_per_package: d,
                    numa_nodes_per_die: n,
                    smt_numbering: if split {
                        SmtNumbering::Split
                    } else {
                        SmtNumbering::Adjacent
                    },
                    core_groups: groups,
                    offline: String::new(),
                    isolated: String::new(),
                    cache_ids: true,
                };
                (spec, offline, isolated, k)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Generator, discovery and picker agree on any small machine.
        #[test]
        fn generated_machines_round_trip((mut spec, offline, isolated, k) in spec()) {
            let total = spec.cpu_count() as u32;
            let offline: CpuSet = offline.into_iter().filter(|c| *c < total).collect();
            spec.offline = offline.to_string();
            spec.isolated = isolated.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
            let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
            let r = spec.materialize(dir.path());
            if spec.numa_nodes_per_die > spec.core_groups.iter().map(|g| g.cores).sum::<u32>() {
                prop_assert!(r.is_err());
                return Ok(());
            }
            r.unwrap();
            let t = Topology::discover(dir.path()).unwrap();
            let all: CpuSet = (0..total).collect();
            prop_assert_eq!(&t.online, &all.difference(&offline));
            prop_assert_eq!(t.cpus.len(), t.online.len());
            let max_threads = spec.core_groups.iter().map(|g| g.threads).max().unwrap() as usize;
            for c in t.cpus.values() {
                prop_assert!(c.siblings.contains(c.id));
                prop_assert!(c.siblings.is_subset(&t.online));
                prop_assert!(c.siblings.len() <= max_threads);
                prop_assert!(c.caches.iter().all(Option::is_some));
                // Siblings agree with each other.
                for s in c.siblings.iter() {
                    prop_assert_eq!(&t.cpus[&s].siblings, &c.siblings);
                    prop_assert_eq!(t.cpus[&s].core_key(), c.core_key());
                }
            }
            let covered = t.numa_nodes.values().fold(CpuSet::new(), |a, s| a.union(s));
            prop_assert_eq!(&covered, &t.online);
            let iso: CpuSet = isolated.into_iter().collect();
            prop_assert_eq!(&t.isolated, &iso);
            let k = k.min(t.online.len());
            let got = alloc::pick(&t, &t.online, k).unwrap();
            prop_assert_eq!(got.len(), k);
            prop_assert!(got.is_subset(&t.online));
        }
    }
}
