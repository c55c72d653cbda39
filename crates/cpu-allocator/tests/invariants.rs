//! Property tests: across random prepare / unprepare / restart sequences no CPU is ever exclusive
//! twice, reserved and offline CPUs are never handed out, and the shared pool is never empty.

use std::collections::HashMap;
use std::sync::OnceLock;

use drakit_cpu::fixture::{MachineSpec, fixtures_dir};
use drakit_cpu::inventory::{DeviceModel, GroupBy};
use drakit_cpu::store::MemoryStore;
use drakit_cpu::{CpuSet, Manager, PoolConfig, Topology};
use drakit_proto::drakit::{AllocatedDevice, ClaimRef, PrepareRequest};
use proptest::prelude::*;

const BOOT: &str = "boot-1";

/// Alder Lake with an offline E-core and an isolated P-core: a small but irregular machine.
fn topology() -> &'static Topology {
    static T: OnceLock<Topology> = OnceLock::new();
    T.get_or_init(|| {
        let mut spec = MachineSpec::load(&fixtures_dir().join("alderlake-8p8e.json")).unwrap();
        spec.offline = "23".into();
        spec.isolated = "14-15".into();
        let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
        spec.materialize(dir.path()).unwrap();
        Topology::discover(dir.path()).unwrap()
    })
}

#[derive(Debug, Clone)]
enum Op {
    /// Individual model: these CPU numbers (may include offline / reserved / taken ones).
    PrepareCpus(u8, Vec<u32>),
    /// Grouped model: this many CPUs from the node group.
    PrepareCount(u8, usize),
    Unprepare(u8),
    Restart,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0u8..8, proptest::collection::vec(0u32..26, 1..5)).prop_map(|(u, c)| Op::PrepareCpus(u, c)),
        4 => (0u8..8, 1usize..12).prop_map(|(u, n)| Op::PrepareCount(u, n)),
        3 => (0u8..8).prop_map(Op::Unprepare),
        1 => Just(Op::Restart),
    ];
    proptest::collection::vec(op, 1..40)
}

fn claim(uid: u8) -> Option<ClaimRef> {
    Some(ClaimRef {
        namespace: "ns".into(),
        name: format!("c{uid}"),
        uid: format!("uid-{uid}"),
    })
}

fn check(m: &Manager, reserved: &CpuSet) -> Result<(), TestCaseError> {
    let mut seen = CpuSet::new();
    for rec in m.claims() {
        prop_assert!(
            rec.cpus.is_disjoint(&seen),
            "cpu exclusive twice: {} overlaps {}",
            rec.cpus,
            seen
        );
        seen = seen.union(&rec.cpus);
        prop_assert!(!rec.cpus.is_empty());
    }
    prop_assert_eq!(&seen, &m.exclusive());
    prop_assert!(seen.is_disjoint(reserved), "reserved handed out: {}", seen);
    prop_assert!(
        seen.is_subset(&m.topology().online),
        "offline handed out: {}",
        seen
    );
    prop_assert!(!m.shared_pool().is_empty(), "shared pool empty");
    prop_assert!(m.shared_pool().is_disjoint(&seen));
    Ok(())
}

fn run(model: DeviceModel, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let reserved = CpuSet::parse("0-1").unwrap();
    let cfg = PoolConfig {
        model,
        reserved: reserved.clone(),
        ..Default::default()
    };
    let store = MemoryStore::new();
    let new = || {
        Manager::new(
            topology().clone(),
            cfg.clone(),
            BOOT,
            Box::new(store.clone()),
        )
    };
    let mut m = new().unwrap();
    for op in ops {
        let before: Vec<_> = m.claims().cloned().collect();
        let result = match &op {
            Op::PrepareCpus(uid, cpus) => {
                if !matches!(model, DeviceModel::Individual) {
                    continue;
                }
                let req = PrepareRequest {
                    claim: claim(*uid),
                    devices: cpus
                        .iter()
                        .map(|c| AllocatedDevice {
                            device: format!("cpu{c}"),
                            pool: "p".into(),
                            ..Default::default()
                        })
                        .collect(),
                    reserved_for_pods: vec![],
                    boot_id: BOOT.into(),
                };
                m.prepare(&req).map(|_| ())
            }
            Op::PrepareCount(uid, n) => {
                if matches!(model, DeviceModel::Individual) {
                    continue;
                }
                let mut consumed = HashMap::new();
                consumed.insert("cpus".to_string(), n.to_string());
                let req = PrepareRequest {
                    claim: claim(*uid),
                    devices: vec![AllocatedDevice {
                        device: "numa0".into(),
                        pool: "p".into(),
                        share_id: format!("s{uid}"),
                        consumed_capacity: consumed,
                        ..Default::default()
                    }],
                    reserved_for_pods: vec![],
                    boot_id: BOOT.into(),
                };
                let r = m.prepare(&req);
                if let Ok(resp) = &r {
                    let rec = m.claim(&format!("uid-{uid}")).unwrap();
                    // A repeat of an already prepared claim returns the recorded set.
                    let want = format!("={}", rec.cpus);
                    let env = &resp.devices[0].edits.as_ref().unwrap().env[0];
                    prop_assert!(env.ends_with(&want), "{} vs {}", env, want);
                }
                r.map(|_| ())
            }
            Op::Unprepare(uid) => m.unprepare(&format!("uid-{uid}")).map(|_| ()),
            Op::Restart => {
                drop(m);
                m = new().unwrap();
                let after: Vec<_> = m.claims().cloned().collect();
                prop_assert_eq!(&after, &before, "restart must restore exactly");
                Ok(())
            }
        };
        if result.is_err() {
            let after: Vec<_> = m.claims().cloned().collect();
            prop_assert_eq!(&after, &before, "a failed op changed state: {:?}", op);
        }
        check(&m, &reserved)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn individual_model_invariants(ops in ops()) {
        run(DeviceModel::Individual, ops)?;
    }

    #[test]
    fn grouped_model_invariants(ops in ops()) {
        run(DeviceModel::Grouped(GroupBy::Numa), ops)?;
    }
}
