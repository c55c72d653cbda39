//! The JSON Schemas in `manifests/schemas/` are current (equal to a fresh export from the types)
//! and agree with the decoder: every valid seed config validates, the malformed ones that a
//! schema can express are refused.

use std::path::{Path, PathBuf};

use drakit_types::config::schema::kind_schemas;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schema(kind: &str) -> Value {
    let p = root().join(format!("manifests/schemas/{kind}.json"));
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

#[test]
fn checked_in_schemas_are_current() {
    for (kind, fresh) in kind_schemas() {
        assert_eq!(
            schema(kind),
            fresh,
            "manifests/schemas/{kind}.json is stale: run `cargo xtask render`"
        );
    }
}

#[test]
fn seed_configs_validate_and_malformed_ones_do_not() {
    let dir = root().join("crates/drakit-types/tests/data/configs");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        let text = std::fs::read_to_string(&p).unwrap();
        let v: Value = if p.extension().is_some_and(|x| x == "json") {
            serde_json::from_str(&text).unwrap()
        } else {
            continue;
        };
        // Legacy shapes without `kind` (e.g. `type: combo`) are decoder-only compatibility.
        let Some(kind) = v["kind"].as_str() else {
            continue;
        };
        if drakit_types::config::ClaimConfig::from_json(text.as_bytes()).is_err() {
            continue;
        }
        let validator = jsonschema::validator_for(&schema(kind)).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", p.display());
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} seed configs checked");

    let nd = |f: Value| {
        let mut n = json!({"kind": "macvlan", "interfaceName": "net1", "parent": "eth0"});
        for (k, v) in f.as_object().unwrap() {
            n[k] = v.clone();
        }
        json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "netdev": n})
    };
    let bad = [
        ("NetdevConfig", nd(json!({"ipAddress": "10.0.0.1/24"}))),
        (
            "NetdevConfig",
            nd(json!({"interfaceName": "abcdefghijklmnop"})),
        ),
        ("NetdevConfig", nd(json!({"interfaceName": "a/b"}))),
        ("NetdevConfig", nd(json!({"kind": "bond"}))),
        ("NetdevConfig", nd(json!({"mtu": "1500"}))),
        ("NetdevConfig", nd(json!({"mac": "zz:00:00:00:00:01"}))),
        (
            "NetdevConfig",
            json!({"apiVersion": "drakit.dev/v1alpha2", "kind": "NetdevConfig", "netdev": {"kind": "dummy"}}),
        ),
        (
            "CpuConfig",
            json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "CpuConfig", "cpus": 4}),
        ),
        (
            "RuntimeSpecEditConfig",
            json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig", "spec": {"hostname": "x"}}),
        ),
        (
            "RuntimeSpecEditConfig",
            json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig", "spec": {"linux": {"resources": {"unified": {"../../x": "1"}}}}}),
        ),
    ];
    for (kind, v) in bad {
        let validator = jsonschema::validator_for(&schema(kind)).unwrap();
        assert!(!validator.is_valid(&v), "schema {kind} accepted {v}");
        // ...and the node refuses it too.
        assert!(
            drakit_types::config::ClaimConfig::from_json(&serde_json::to_vec(&v).unwrap()).is_err(),
            "decoder accepted {v}"
        );
    }
}
