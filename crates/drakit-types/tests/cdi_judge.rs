//! Emitted CDI specs checked by two independent judges: the CDI JSON schema (a real JSON-schema
//! validator, `defs.json` registered locally) and the upstream Rust CDI library, which must load
//! each spec and agree on the minimum version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use container_device_interface as upstream;
use drakit_types::cdi::{
    CdiVersion, ClaimDevice, ClaimSpec, ContainerEdits, DeviceNode, Hook, IntelRdt, Mount,
    NetDevice, Spec, SpecDir, minimum_version,
};
use serde_json::Value;

const VENDOR: &str = "net.drakit.dev";
const UID: &str = "0e1f2a3b-4c5d-6e7f-8091-a2b3c4d5e6f7";

fn schema_dirs() -> Vec<PathBuf> {
    let base = std::env::var_os("DRAKIT_CDI_SCHEMA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/specs/cdi"));
    // The v1.1.0 schema, and main's (which also lists the top-level containerEdits).
    vec![base.join("schema"), base.join("main/schema")]
}

/// Validates `doc` against `<dir>/schema.json`, resolving `defs.json` from the v1.1.0 schema dir.
/// Returns false (after printing `skipped:`) when the schema files are not on this machine.
fn check_schema(doc: &Value) -> bool {
    let dirs = schema_dirs();
    let defs_path = dirs[0].join("defs.json");
    let Ok(defs) = std::fs::read(&defs_path) else {
        eprintln!(
            "skipped: JSON-schema check, {} not found (set DRAKIT_CDI_SCHEMA_DIR)",
            defs_path.display()
        );
        return false;
    };
    let defs: Value = serde_json::from_slice(&defs).unwrap();
    for dir in &dirs {
        let schema: Value =
            serde_json::from_slice(&std::fs::read(dir.join("schema.json")).unwrap()).unwrap();
        let base = "https://cdi.schema.invalid/schema.json";
        let registry = jsonschema::Registry::new()
            .add("https://cdi.schema.invalid/defs.json", defs.clone())
            .unwrap()
            .prepare()
            .unwrap();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .with_base_uri(base)
            .with_registry(&registry)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema {} does not compile: {e}", dir.display()));
        let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "schema {} rejects {doc:#}: {errors:?}",
            dir.display()
        );
    }
    true
}

/// The schema check must be able to fail: a document breaking the schema is rejected.
#[test]
fn schema_check_rejects_bad_documents() {
    let dirs = schema_dirs();
    let Ok(defs) = std::fs::read(dirs[0].join("defs.json")) else {
        eprintln!("skipped: JSON-schema files not found");
        return;
    };
    let defs: Value = serde_json::from_slice(&defs).unwrap();
    let schema: Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("schema.json")).unwrap()).unwrap();
    let registry = jsonschema::Registry::new()
        .add("https://cdi.schema.invalid/defs.json", defs)
        .unwrap()
        .prepare()
        .unwrap();
    let v = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .with_base_uri("https://cdi.schema.invalid/schema.json")
        .with_registry(&registry)
        .build(&schema)
        .unwrap();
    // A mount without containerPath: only caught through the defs.json reference.
    let bad = serde_json::json!({
        "cdiVersion": "0.3.0", "kind": "a.b/c",
        "devices": [{"name": "d", "containerEdits": {"mounts": [{"hostPath": "/x"}]}}]
    });
    assert!(!v.is_valid(&bad));
    let bad_gid = serde_json::json!({
        "cdiVersion": "0.7.0", "kind": "a.b/c",
        "devices": [{"name": "d", "containerEdits": {"additionalGids": [-1]}}]
    });
    assert!(!v.is_valid(&bad_gid));
}

fn env_edit(s: &str) -> ContainerEdits {
    ContainerEdits {
        env: vec![s.to_string()],
        ..Default::default()
    }
}

/// Builds, checks with both judges, and returns the emitted version.
fn judge(class: &str, devices: Vec<ClaimDevice>, common: ContainerEdits) -> CdiVersion {
    let cs = ClaimSpec::build(VENDOR, class, UID, devices, common).unwrap();
    let bytes = cs.to_json().unwrap();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["cdiVersion"], cs.version.as_str());
    check_schema(&doc);

    let tmp = tempfile::tempdir().unwrap();
    let dir = SpecDir::new(tmp.path(), VENDOR, class).unwrap();
    dir.write(&cs).unwrap();
    let path = dir.path_for(UID);
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        format!("{VENDOR}-{class}_{UID}.json")
    );
    upstream_loads(&path, &cs);
    upstream_rejects_older(&doc, tmp.path(), cs.version);
    cs.version
}

fn upstream_loads(path: &Path, cs: &ClaimSpec) {
    let spec = upstream::spec::read_spec(&path.to_path_buf(), 0)
        .unwrap_or_else(|e| panic!("upstream CDI library rejects {}: {e:#}", path.display()));
    let min = upstream::version::minimum_required_version(&spec.cdi_spec).unwrap();
    assert_eq!(
        min.to_string(),
        cs.version.as_str(),
        "minimum version differs"
    );
    let mut names: Vec<String> = spec
        .get_devices()
        .values()
        .map(|d| d.get_qualified_name())
        .collect();
    names.sort();
    let mut ids = cs.device_ids.clone();
    ids.sort();
    assert_eq!(names, ids);

    // The cache (what a runtime uses) sees exactly our device ids in the directory.
    let dir = path.parent().unwrap().to_str().unwrap().to_string();
    let cache = upstream::cache::new_cache(vec![
        upstream::spec_dirs::with_spec_dirs(&[dir.as_str()]),
        upstream::cache::with_auto_refresh(false),
    ]);
    let mut cache = cache.lock().unwrap();
    let _ = cache.refresh();
    let errors = cache.get_errors();
    assert!(errors.is_empty(), "cache errors: {errors:?}");
    let mut listed = cache.list_devices();
    listed.sort();
    assert_eq!(listed, ids);
}

/// Declaring the version just below our minimum must make the upstream library refuse the
/// spec: our minimum is not higher than needed.
fn upstream_rejects_older(doc: &Value, dir: &Path, version: CdiVersion) {
    let older = match version {
        CdiVersion::V0_3_0 => return,
        CdiVersion::V0_4_0 => "0.3.0",
        CdiVersion::V0_5_0 => "0.4.0",
        CdiVersion::V0_6_0 => "0.5.0",
        CdiVersion::V0_7_0 => "0.6.0",
        CdiVersion::V0_8_0 | CdiVersion::V1_0_0 => return,
        CdiVersion::V1_1_0 => "1.0.0",
    };
    let mut doc = doc.clone();
    doc["cdiVersion"] = Value::String(older.to_string());
    let p = dir.join("older.json");
    std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
    let r = upstream::spec::read_spec(&p, 0);
    assert!(r.is_err(), "upstream accepted {older} for a {version} spec");
    std::fs::remove_file(&p).unwrap();
}

fn dev(name: &str, edits: ContainerEdits) -> ClaimDevice {
    ClaimDevice {
        device: name.to_string(),
        edits,
        annotations: BTreeMap::new(),
    }
}

#[test]
fn env_only_is_0_3_0() {
    let v = judge(
        "claim",
        vec![dev("eth1", env_edit("DRAKIT_CPUS_x=0-3"))],
        ContainerEdits::default(),
    );
    assert_eq!(v, CdiVersion::V0_3_0);
}

#[test]
fn device_nodes_with_and_without_host_path() {
    let node = DeviceNode {
        path: "/dev/infiniband/uverbs0".into(),
        kind: Some("c".into()),
        major: Some(231),
        minor: Some(192),
        file_mode: Some(0o666),
        permissions: Some("rw".into()),
        uid: Some(0),
        gid: Some(0),
        ..Default::default()
    };
    let v = judge(
        "claim",
        vec![dev(
            "mlx5-0",
            ContainerEdits {
                device_nodes: vec![node.clone()],
                ..Default::default()
            },
        )],
        ContainerEdits::default(),
    );
    assert_eq!(v, CdiVersion::V0_3_0);
    let mut with_host = node;
    with_host.host_path = Some("/dev/infiniband/uverbs3".into());
    with_host.path = "/dev/infiniband/uverbs0".into();
    let v = judge(
        "claim",
        vec![dev(
            "mlx5-0",
            ContainerEdits {
                device_nodes: vec![with_host],
                ..Default::default()
            },
        )],
        ContainerEdits::default(),
    );
    assert_eq!(v, CdiVersion::V0_5_0);
}

#[test]
fn mounts_with_and_without_type() {
    let m = Mount {
        host_path: "/var/lib/drakit/x".into(),
        container_path: "/x".into(),
        kind: None,
        options: vec!["ro".into(), "bind".into()],
    };
    let one = |m: Mount| {
        vec![dev(
            "d0",
            ContainerEdits {
                mounts: vec![m],
                ..Default::default()
            },
        )]
    };
    assert_eq!(
        judge("claim", one(m.clone()), ContainerEdits::default()),
        CdiVersion::V0_3_0
    );
    let mut typed = m;
    typed.kind = Some("bind".into());
    assert_eq!(
        judge("claim", one(typed), ContainerEdits::default()),
        CdiVersion::V0_4_0
    );
}

#[test]
fn hooks() {
    let h = Hook {
        hook_name: "createRuntime".into(),
        path: "/usr/local/bin/drakit-oci-hook".into(),
        args: vec!["drakit-oci-hook".into(), "attach".into()],
        env: vec!["DRAKIT_SOCKET=/run/drakit/netdev.sock".into()],
        timeout: Some(10),
    };
    let v = judge(
        "claim",
        vec![dev(
            "eth1",
            ContainerEdits {
                hooks: vec![h],
                ..Default::default()
            },
        )],
        ContainerEdits::default(),
    );
    assert_eq!(v, CdiVersion::V0_3_0);
}

#[test]
fn annotations_and_dotted_class_are_0_6_0() {
    let mut d = dev("eth1", env_edit("A=1"));
    d.annotations
        .insert("drakit.dev/claim".into(), "ns/name".into());
    assert_eq!(
        judge("claim", vec![d], ContainerEdits::default()),
        CdiVersion::V0_6_0
    );
    assert_eq!(
        judge(
            "claim.v1",
            vec![dev("eth1", env_edit("A=1"))],
            ContainerEdits::default()
        ),
        CdiVersion::V0_6_0
    );
}

#[test]
fn additional_gids_and_intel_rdt_are_0_7_0() {
    let v = judge(
        "claim",
        vec![dev(
            "d",
            ContainerEdits {
                additional_gids: vec![44, 107],
                ..Default::default()
            },
        )],
        ContainerEdits::default(),
    );
    assert_eq!(v, CdiVersion::V0_7_0);
    let v = judge(
        "claim",
        vec![dev(
            "d",
            ContainerEdits {
                intel_rdt: Some(IntelRdt {
                    clos_id: Some("gold".into()),
                    l3_cache_schema: Some("L3:0=ff".into()),
                    mem_bw_schema: Some("MB:0=50".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )],
        ContainerEdits::default(),
    );
    assert_eq!(v, CdiVersion::V0_7_0);
}

#[test]
fn intel_rdt_schemata_or_monitoring_are_1_1_0() {
    for rdt in [
        IntelRdt {
            schemata: Some(vec!["L3:0=f".into()]),
            ..Default::default()
        },
        IntelRdt {
            clos_id: Some("c2".into()),
            enable_monitoring: true,
            ..Default::default()
        },
    ] {
        let v = judge(
            "claim",
            vec![dev(
                "d",
                ContainerEdits {
                    intel_rdt: Some(rdt),
                    ..Default::default()
                },
            )],
            ContainerEdits::default(),
        );
        assert_eq!(v, CdiVersion::V1_1_0);
    }
}

#[test]
fn net_devices_are_1_1_0_at_device_and_spec_level() {
    let nd = ContainerEdits {
        net_devices: vec![NetDevice {
            host_interface_name: "dk0a1b2c3".into(),
            name: "net1".into(),
        }],
        ..Default::default()
    };
    assert_eq!(
        judge(
            "claim",
            vec![dev("eth1", nd.clone())],
            ContainerEdits::default()
        ),
        CdiVersion::V1_1_0
    );
    assert_eq!(
        judge("claim", vec![dev("eth1", env_edit("A=b"))], nd),
        CdiVersion::V1_1_0
    );
}

#[test]
fn everything_at_once_with_several_devices() {
    let full = ContainerEdits {
        env: vec!["A=1".into(), "B=".into()],
        device_nodes: vec![DeviceNode {
            path: "/dev/net/tun".into(),
            host_path: Some("/dev/net/tun".into()),
            kind: Some("c".into()),
            major: Some(10),
            minor: Some(200),
            permissions: Some("rwm".into()),
            ..Default::default()
        }],
        hooks: vec![Hook {
            hook_name: "poststop".into(),
            path: "/bin/true".into(),
            ..Default::default()
        }],
        mounts: vec![Mount {
            host_path: "tmpfs".into(),
            container_path: "/scratch".into(),
            kind: Some("tmpfs".into()),
            options: vec!["size=1m".into()],
        }],
        net_devices: vec![NetDevice {
            host_interface_name: "eth7".into(),
            name: "eth7".into(),
        }],
        intel_rdt: Some(IntelRdt {
            clos_id: Some("c1".into()),
            ..Default::default()
        }),
        additional_gids: vec![5],
    };
    let v = judge(
        "claim",
        vec![
            dev("eth7", full),
            dev("pool-a/eth8", env_edit("C=3")),
            dev("0dev", env_edit("D=4")),
        ],
        env_edit("COMMON=1"),
    );
    assert_eq!(v, CdiVersion::V1_1_0);
}

/// Our minimum version agrees with the table for hand-made specs outside the claim builder
/// too (a device name starting with a digit needs 0.5.0).
#[test]
fn digit_first_device_name_needs_0_5_0() {
    let mut spec = Spec {
        kind: "net.drakit.dev/claim".into(),
        devices: vec![drakit_types::cdi::Device {
            name: "0eth".into(),
            container_edits: env_edit("A=1"),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(spec.finalize().unwrap(), CdiVersion::V0_5_0);
    assert_eq!(minimum_version(&spec), CdiVersion::V0_5_0);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("net.drakit.dev-claim.json");
    std::fs::write(&p, serde_json::to_vec(&spec).unwrap()).unwrap();
    let up = upstream::spec::read_spec(&p, 0).unwrap();
    assert_eq!(
        upstream::version::minimum_required_version(&up.cdi_spec)
            .unwrap()
            .to_string(),
        "0.5.0"
    );
}
