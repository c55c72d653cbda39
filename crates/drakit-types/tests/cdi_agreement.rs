//! Randomised agreement with the upstream Rust CDI library: every spec our validation accepts
//! loads upstream, with the same minimum version; our checks are allowed to be stricter
//! (interface-name rules, hook timeouts, netDevices unique across the whole spec).

use std::collections::BTreeMap;

use container_device_interface as upstream;
use drakit_types::cdi::{
    ContainerEdits, Device, DeviceNode, Hook, IntelRdt, Mount, NetDevice, Spec, minimum_version,
    validate_content,
};
use proptest::prelude::*;

fn pick<T: Clone + std::fmt::Debug + 'static>(v: Vec<T>) -> impl Strategy<Value = T> {
    proptest::sample::select(v)
}

fn opt_s(v: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(pick(v.to_vec()).prop_map(String::from))
}

/// The first value most of the time, one of the others (often invalid) now and then.
fn mostly(v: Vec<&'static str>) -> impl Strategy<Value = &'static str> {
    let first = v[0];
    prop_oneof![12 => Just(first), 1 => pick(v)]
}

/// `Some(first)`, `None`, or now and then one of the others.
fn mostly_opt(v: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![6 => Just(None), 6 => Just(Some(v[0].to_string())), 1 => opt_s(v)]
}

static ACCEPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn edits() -> impl Strategy<Value = ContainerEdits> {
    let env = proptest::collection::vec(mostly(vec!["A=1", "B=", "=x", "C", "D=e=f"]), 0..3);
    let node = (
        mostly(vec!["/dev/null", "", "/dev/zero"]),
        mostly_opt(&["/dev/null", ""]),
        mostly_opt(&["c", "", "b", "x", "p"]),
        mostly_opt(&["rw", "rwm", "", "q", "none"]),
    )
        .prop_map(|(p, h, t, perm)| DeviceNode {
            path: p.into(),
            host_path: h,
            kind: t,
            permissions: perm,
            major: Some(1),
            minor: Some(3),
            ..Default::default()
        });
    let mount = (
        mostly(vec!["/a", ""]),
        mostly(vec!["/b", ""]),
        mostly_opt(&["bind", "", "tmpfs"]),
    )
        .prop_map(|(h, c, t)| Mount {
            host_path: h.into(),
            container_path: c.into(),
            kind: t,
            options: vec![],
        });
    let hook = (
        mostly(vec!["createRuntime", "prestart", "bogus", "poststop"]),
        mostly(vec!["/bin/true", ""]),
        proptest::collection::vec(mostly(vec!["X=1", "bad"]), 0..2),
    )
        .prop_map(|(n, p, env)| Hook {
            hook_name: n.into(),
            path: p.into(),
            env: env.into_iter().map(String::from).collect(),
            ..Default::default()
        });
    let nd = (
        mostly(vec!["eth0", "eth1", ""]),
        mostly(vec!["net1", "net2", ""]),
    )
        .prop_map(|(h, n)| NetDevice {
            host_interface_name: h.into(),
            name: n.into(),
        });
    let rdt = proptest::option::of(
        (
            mostly_opt(&["gold", "..", "a/b"]),
            proptest::option::of(Just(vec!["L3:0=f".to_string()])),
            any::<bool>(),
        )
            .prop_map(|(c, s, m)| IntelRdt {
                clos_id: c,
                schemata: s,
                enable_monitoring: m,
                ..Default::default()
            }),
    );
    (
        env,
        proptest::collection::vec(node, 0..2),
        proptest::collection::vec(mount, 0..2),
        proptest::collection::vec(hook, 0..=1),
        proptest::collection::vec(nd, 0..=1),
        rdt,
        proptest::collection::vec(0u32..100, 0..2),
    )
        .prop_map(|(env, dn, m, h, nd, rdt, gids)| ContainerEdits {
            env: env.into_iter().map(String::from).collect(),
            device_nodes: dn,
            mounts: m,
            hooks: h,
            net_devices: nd,
            intel_rdt: rdt,
            additional_gids: gids,
        })
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        mostly(vec!["drakit.dev/x", "a", "bad key", "-x"]).prop_map(String::from),
        Just("v".to_string()),
        0..2,
    )
}

fn spec() -> impl Strategy<Value = Spec> {
    let device = (
        mostly(vec!["a", "0a", "a b", "x:y", "-a"]),
        annotations(),
        edits(),
    )
        .prop_map(|(n, a, e)| Device {
            name: n.into(),
            annotations: a,
            container_edits: e,
        });
    (
        mostly(vec![
            "net.drakit.dev/claim",
            "net.drakit.dev/c.v1",
            "1x/claim",
            "a/b/c",
        ]),
        annotations(),
        proptest::collection::vec(device, 1..3),
        edits(),
    )
        .prop_map(|(k, a, d, e)| Spec {
            cdi_version: String::new(),
            kind: k.into(),
            annotations: a,
            devices: d,
            container_edits: e,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn accepted_specs_load_upstream_with_the_same_minimum(mut s in spec()) {
        let ours = validate_content(&s);
        let min = minimum_version(&s);
        s.cdi_version = min.as_str().to_string();
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.json");
        std::fs::write(&p, serde_json::to_vec(&s).unwrap()).unwrap();
        let theirs = upstream::spec::read_spec(&p, 0);
        if ours.is_ok() {
            ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let up = theirs.map_err(|e| format!("{e:#}"));
            prop_assert!(up.is_ok(), "we accept, upstream refuses: {:?}\n{}", up.err(), serde_json::to_string(&s).unwrap());
            let up = up.unwrap();
            prop_assert_eq!(
                upstream::version::minimum_required_version(&up.cdi_spec).unwrap().to_string(),
                min.as_str()
            );
        }
    }
}

/// Runs after the property (test order is not guaranteed, so it runs the property itself):
/// enough generated specs must have been accepted for the comparison to mean something.
#[test]
fn a_fair_share_of_generated_specs_is_valid() {
    accepted_specs_load_upstream_with_the_same_minimum();
    let n = ACCEPTED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("accepted {n}");
    assert!(n >= 40, "only {n} of the generated specs were valid");
}
