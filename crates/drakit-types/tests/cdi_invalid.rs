//! Names and edits that a runtime would refuse are refused when the spec is built, with an
//! error naming the claim and the field.

use drakit_types::cdi::{
    CdiError, ClaimDevice, ClaimSpec, ContainerEdits, Device, DeviceNode, Hook, IntelRdt, Mount,
    NetDevice, Spec, validate_spec,
};

const UID: &str = "7d1e0c57-1111-2222-3333-444455556666";

fn env(s: &str) -> ContainerEdits {
    ContainerEdits {
        env: vec![s.into()],
        ..Default::default()
    }
}

fn dev(name: &str, edits: ContainerEdits) -> ClaimDevice {
    ClaimDevice {
        device: name.into(),
        edits,
        ..Default::default()
    }
}

fn build_err(devices: Vec<ClaimDevice>, common: ContainerEdits) -> String {
    let e = ClaimSpec::build("net.drakit.dev", "claim", UID, devices, common).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(UID), "error does not name the claim: {msg}");
    msg
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} lacks {p:?}");
    }
}

#[test]
fn bad_vendor_class_and_uid() {
    for (vendor, class) in [
        ("", "claim"),
        ("1net.dev", "claim"),
        ("net.dev-", "claim"),
        ("net/dev", "claim"),
        ("net.dev", ""),
        ("net.dev", "cl aim"),
        ("net.dev", "_claim"),
    ] {
        let e = ClaimSpec::build(
            vendor,
            class,
            UID,
            vec![dev("a", env("A=1"))],
            ContainerEdits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, CdiError::InvalidName { .. }),
            "{vendor}/{class}: {e}"
        );
    }
    for uid in ["", ".hidden", "a/b", "a_b", "a b", &"x".repeat(129)] {
        let e = ClaimSpec::build(
            "net.drakit.dev",
            "claim",
            uid,
            vec![dev("a", env("A=1"))],
            ContainerEdits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("claim UID"), "{uid}: {e}");
    }
}

#[test]
fn env_entries() {
    let m = build_err(vec![dev("a", env("NOEQUALS"))], ContainerEdits::default());
    assert_has(&m, &["devices[0].containerEdits.env[0]", "NOEQUALS"]);
    let m = build_err(vec![dev("a", env("=value"))], ContainerEdits::default());
    assert_has(&m, &["env[0]", "non-empty NAME"]);
    let m = build_err(vec![dev("a", env("A=1"))], env("bad"));
    assert_has(&m, &["containerEdits.env[0]"]);
}

#[test]
fn device_nodes() {
    let node = |kind: Option<&str>, perm: Option<&str>, path: &str| ContainerEdits {
        device_nodes: vec![DeviceNode {
            path: path.into(),
            kind: kind.map(Into::into),
            permissions: perm.map(Into::into),
            ..Default::default()
        }],
        ..Default::default()
    };
    let m = build_err(
        vec![dev("a", node(Some("x"), None, "/dev/x"))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["deviceNodes[0].type", "\"x\""]);
    let m = build_err(
        vec![dev("a", node(None, Some("rwx"), "/dev/x"))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["deviceNodes[0].permissions", "rwx"]);
    let m = build_err(
        vec![dev("a", node(None, None, ""))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["deviceNodes[0].path"]);
}

#[test]
fn hooks() {
    let hook = |name: &str, path: &str, env: &[&str], timeout: Option<u32>| ContainerEdits {
        hooks: vec![Hook {
            hook_name: name.into(),
            path: path.into(),
            env: env.iter().map(|s| s.to_string()).collect(),
            timeout,
            ..Default::default()
        }],
        ..Default::default()
    };
    let m = build_err(
        vec![dev("a", hook("preStart", "/x", &[], None))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["hooks[0].hookName", "preStart", "createRuntime"]);
    let m = build_err(
        vec![dev("a", hook("prestart", "", &[], None))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["hooks[0].path"]);
    let m = build_err(
        vec![dev("a", hook("prestart", "/x", &["E"], None))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["hooks[0].env[0]"]);
    let m = build_err(
        vec![dev("a", hook("prestart", "/x", &[], Some(0)))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["hooks[0].timeout"]);
}

#[test]
fn mounts() {
    let mount = |h: &str, c: &str| ContainerEdits {
        mounts: vec![Mount {
            host_path: h.into(),
            container_path: c.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_has(
        &build_err(vec![dev("a", mount("", "/c"))], ContainerEdits::default()),
        &["mounts[0].hostPath"],
    );
    assert_has(
        &build_err(vec![dev("a", mount("/h", ""))], ContainerEdits::default()),
        &["mounts[0].containerPath"],
    );
}

#[test]
fn net_devices() {
    let nd = |pairs: &[(&str, &str)]| ContainerEdits {
        net_devices: pairs
            .iter()
            .map(|(h, n)| NetDevice {
                host_interface_name: h.to_string(),
                name: n.to_string(),
            })
            .collect(),
        ..Default::default()
    };
    let m = build_err(
        vec![dev("a", nd(&[("eth1", "net1"), ("eth1", "net2")]))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["netDevices", "eth1", "twice"]);
    let m = build_err(
        vec![dev("a", nd(&[("eth1", "net1"), ("eth2", "net1")]))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["net1", "twice"]);
    // Across devices of one spec as well (one container may use all of them).
    let m = build_err(
        vec![
            dev("a", nd(&[("eth1", "net1")])),
            dev("b", nd(&[("eth2", "net1")])),
        ],
        ContainerEdits::default(),
    );
    assert_has(&m, &["net1", "twice"]);
    let m = build_err(
        vec![dev("a", nd(&[("averyveryverylongname", "n")]))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["netDevices[0].hostInterfaceName", "15"]);
    for bad in ["", "a/b", "a:1", "a b", "..", "."] {
        let m = build_err(
            vec![dev("a", nd(&[("eth1", bad)]))],
            ContainerEdits::default(),
        );
        assert_has(&m, &["netDevices[0].name"]);
    }
}

#[test]
fn intel_rdt_clos_id() {
    for bad in ["", ".", "..", "a/b", "/", "a\nb"] {
        let e = ContainerEdits {
            intel_rdt: Some(IntelRdt {
                clos_id: Some(bad.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_has(
            &build_err(vec![dev("a", e)], ContainerEdits::default()),
            &["intelRdt.closID"],
        );
    }
}

#[test]
fn devices_annotations_and_names() {
    let m = build_err(vec![], ContainerEdits::default());
    assert_has(&m, &["devices", "at least one device"]);
    let m = build_err(
        vec![dev("a", ContainerEdits::default())],
        ContainerEdits::default(),
    );
    assert_has(
        &m,
        &["devices[0].containerEdits", "at least one container edit"],
    );
    // Device names derived from one claim collide after sanitising.
    let m = build_err(
        vec![dev("a/b", env("A=1")), dev("a_b", env("A=1"))],
        ContainerEdits::default(),
    );
    assert_has(&m, &["devices[1].name", "twice"]);
    let m = build_err(vec![dev("eth1-", env("A=1"))], ContainerEdits::default());
    assert_has(&m, &["devices[0].name", "end with a letter or digit"]);
    let mut d = dev("a", env("A=1"));
    d.annotations.insert("not valid/key/x".into(), "v".into());
    let m = build_err(vec![d], ContainerEdits::default());
    assert_has(&m, &["devices[0].annotations"]);
    let mut d = dev("a", env("A=1"));
    d.annotations.insert("k".into(), "v".repeat(300 * 1024));
    assert_has(&build_err(vec![d], ContainerEdits::default()), &["262144"]);
}

#[test]
fn declared_versions() {
    let mut s = Spec {
        cdi_version: "0.3.0".into(),
        kind: "net.drakit.dev/claim".into(),
        devices: vec![Device {
            name: "a".into(),
            container_edits: ContainerEdits {
                net_devices: vec![NetDevice {
                    host_interface_name: "eth1".into(),
                    name: "eth1".into(),
                }],
                ..Default::default()
            },
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = validate_spec(&s).unwrap_err();
    assert_eq!(e.field, "cdiVersion");
    assert!(e.reason.contains("1.1.0"), "{e}");
    s.cdi_version = "1.2.0".into();
    assert!(validate_spec(&s).unwrap_err().reason.contains("unknown"));
    s.cdi_version = "v1.1.0".into();
    validate_spec(&s).unwrap();
}

#[test]
fn device_names_are_deterministic_and_valid() {
    let a = ClaimSpec::build(
        "net.drakit.dev",
        "claim",
        UID,
        vec![dev("eth1", env("A=1"))],
        ContainerEdits::default(),
    )
    .unwrap();
    let b = ClaimSpec::build(
        "net.drakit.dev",
        "claim",
        UID,
        vec![dev("eth1", env("A=1"))],
        ContainerEdits::default(),
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
    assert_eq!(
        a.device_ids,
        vec![format!("net.drakit.dev/claim=claim-{UID}-eth1")]
    );
    // A UID that starts with a digit still gives a letter-first name (no 0.5.0 needed).
    let c = ClaimSpec::build(
        "net.drakit.dev",
        "claim",
        "0abc",
        vec![dev("0dev", env("A=1"))],
        ContainerEdits::default(),
    )
    .unwrap();
    assert_eq!(c.version.as_str(), "0.3.0");
    assert_eq!(
        c.device_ids,
        vec!["net.drakit.dev/claim=claim-0abc-0dev".to_string()]
    );
}
