//! The runtime-spec admin policy: default rules, refusals naming the field, per-namespace
//! overrides, encoding tricks, and strict policy-file decoding.

use drakit_types::config::RuntimeSpecFragment;
use drakit_types::policy::{Policy, PolicyError, check, check_json};
use serde_json::{Value, json};

fn frag(v: Value) -> RuntimeSpecFragment {
    RuntimeSpecFragment::from_json(&serde_json::to_vec(&v).unwrap()).unwrap()
}

/// Decodes and checks in one go (the config rules run at decode time).
fn refused(policy: &Policy, ns: &str, v: Value) -> PolicyError {
    match check_json(policy, ns, &serde_json::to_vec(&v).unwrap()) {
        Ok(()) => panic!("accepted: {v}"),
        Err(e) => e,
    }
}

#[test]
fn seed_example_passes_the_default_policy() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/configs/seed-runtime-multi.yaml"),
    )
    .unwrap();
    let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let j = serde_json::to_value(y).unwrap();
    let spec = &j["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"]["spec"];
    let f = frag(spec.clone());
    check(&Policy::default(), "default", &f).unwrap();
    // And the other resource fields of the default policy.
    check(
        &Policy::default(),
        "x",
        &frag(json!({
            "process": {"env": ["MODE=fast"], "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
            "linux": {"resources": {
                "memory": {"limit": 268435456}, "cpu": {"quota": 50000, "period": 100000},
                "pids": {"limit": 100}, "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
                "blockIO": {"weight": 100},
                "unified": {"cpu.max": "50000 100000", "io.weight": "default 100"}}}
        })),
    )
    .unwrap();
}

#[test]
fn default_policy_refusals_name_the_field() {
    let p = Policy::default();
    let cases = [
        (
            json!({"mounts": [{"destination": "/host", "type": "bind", "source": "/", "options": ["rbind"]}]}),
            "spec.mounts[0]: host mounts are not allowed by the node policy",
        ),
        (
            json!({"hooks": {"createRuntime": [{"path": "/bin/sh"}]}}),
            "spec.hooks: hooks are not allowed by the node policy",
        ),
        (
            json!({"process": {"capabilities": {"bounding": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"]}}}),
            "spec.process.capabilities: capability changes are not allowed by the node policy",
        ),
        (
            json!({"linux": {"devices": [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]}}),
            "spec.linux.devices[0]: device access is not allowed by the node policy",
        ),
        (
            json!({"linux": {"namespaces": [{"type": "network", "path": "/proc/1/ns/net"}]}}),
            "spec.linux.namespaces[0]: namespace changes are not allowed by the node policy",
        ),
        (
            json!({"linux": {"resources": {"devices": [{"allow": true, "access": "rwm"}]}}}),
            "spec.linux.resources.devices[0]: device access is not allowed by the node policy",
        ),
        (
            json!({"linux": {"resources": {"cpu": {"cpus": "0-3"}}}}),
            "spec.linux.resources.cpu.cpus: linux.resources is not allowed by the node policy",
        ),
        (
            json!({"linux": {"sysctl": {"kernel.shm_rmid_forced": "1"}}}),
            "spec.linux.sysctl: linux.sysctl is not allowed by the node policy",
        ),
        (
            json!({"process": {"noNewPrivileges": false}}),
            "spec.process.noNewPrivileges: security settings are not allowed by the node policy",
        ),
        (
            json!({"annotations": {"a": "b"}}),
            "spec.annotations: annotations is not allowed by the node policy",
        ),
        (
            json!({"linux": {"resources": {"unified": {"../../x": "1"}}}}),
            "spec.linux.resources.unified[\"../../x\"]: key must not contain '/': keys name files in the container's own cgroup",
        ),
        (
            json!({"linux": {"resources": {"unified": {"cpuset.cpus": "0-3"}}}}),
            "spec.linux.resources.unified[\"cpuset.cpus\"]: key is not allowed by the node policy",
        ),
        (
            json!({"process": {"env": ["DRAKIT_RUNTIME_SPEC_abc={}"]}}),
            "spec.process.env[0]: DRAKIT_RUNTIME_SPEC_abc is reserved: DRAKIT_* variables carry drakit's own data",
        ),
        (
            json!({"process": {"env": ["OK=1", "drakit_cpus_x=0-3"]}}),
            "spec.process.env[1]: drakit_cpus_x is reserved: DRAKIT_* variables carry drakit's own data",
        ),
        (
            json!({"process": {"env": [" DRAKIT_X=1"]}}),
            "spec.process.env[0]: \" DRAKIT_X\" is not an environment name (printable ASCII, no spaces)",
        ),
    ];
    let mut wrong = Vec::new();
    for (v, want) in cases {
        let got = refused(&p, "default", v.clone()).to_string();
        if got != want {
            wrong.push(format!("{v}\n  got:  {got}\n  want: {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn encoding_tricks_do_not_bypass() {
    let p = Policy::default();
    // A unicode escape that decodes to '/'.
    let e = check_json(
        &p,
        "ns",
        br#"{"linux":{"resources":{"unified":{"io\u002f..\u002fx":"1"}}}}"#,
    )
    .unwrap_err();
    assert_eq!(e.path, "spec.linux.resources.unified[\"io/../x\"]");
    // Duplicate keys: the second "unified" or "mounts" could hide from a reviewer.
    let e = check_json(
        &p,
        "ns",
        br#"{"linux":{"resources":{"unified":{"io.max":"1"},"unified":{"io.max":"2"}}}}"#,
    )
    .unwrap_err();
    assert_eq!(e.path, "linux.resources");
    assert!(e.reason.contains("duplicate key \"unified\""), "{e}");
    // Huge values.
    let big = "9".repeat(5000);
    let raw =
        serde_json::to_vec(&json!({"linux": {"resources": {"unified": {"memory.high": big}}}}))
            .unwrap();
    let e = check_json(&p, "ns", &raw).unwrap_err();
    assert!(e.reason.contains("more than the maximum 4096"), "{e}");
    // An unknown field inside the fragment.
    let e = check_json(
        &p,
        "ns",
        br#"{"linux":{"resources":{"memory":{"limit":1,"kmem":1}}}}"#,
    )
    .unwrap_err();
    assert_eq!(e.path, "spec.linux.resources.memory.kmem");
    // A NUL inside an env name.
    let e = refused(&p, "ns", json!({"process": {"env": ["DRA\u{0}KIT_X=1"]}}));
    assert!(e.reason.contains("NUL"), "{e}");
}

const POLICY: &str = r#"
apiVersion: drakit.dev/v1alpha1
kind: RuntimeSpecPolicy
default:
  allowedFields: [linux.resources.unified, linux.resources.memory.limit, process.env]
  unified:
    allowedKeys: ["io.*", "memory.high", "pids.max"]
    maxValueLength: 64
    bounds:
      pids.max: {min: 1, max: 1000}
  bounds:
    linux.resources.memory.limit: {min: 4194304, max: 1073741824}
  env: {maxEntries: 2}
namespaces:
  team-a:
    rules:
      allowedFields: [mounts]
      mounts: {allowedSources: [/srv/shared], allowedTypes: [tmpfs]}
      unified:
        bounds:
          pids.max: {max: 5000}
  locked:
    mode: replace
    rules:
      allowedFields: [process.env]
"#;

#[test]
fn policy_file_rules_and_namespace_overrides() {
    let p = Policy::from_yaml(POLICY).unwrap();
    let mount = json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/srv/shared/a", "options": ["rbind", "ro"]}]});
    // The mount is allowed in team-a only.
    check(&p, "team-a", &frag(mount.clone())).unwrap();
    let e = refused(&p, "team-b", mount);
    assert_eq!(
        e.to_string(),
        "spec.mounts[0]: host mounts are not allowed by the node policy"
    );
    // Even in team-a, sources outside the allowed directory, '..' and other types are refused.
    let e = refused(
        &p,
        "team-a",
        json!({"mounts": [{"destination": "/d", "type": "bind", "source": "/srv/sharedX"}]}),
    );
    assert_eq!(e.path, "spec.mounts[0].source");
    let e = refused(
        &p,
        "team-a",
        json!({"mounts": [{"destination": "/d", "type": "bind", "source": "/srv/shared/../../etc"}]}),
    );
    assert!(e.reason.contains("'..'"), "{e}");
    let e = refused(
        &p,
        "team-a",
        json!({"mounts": [{"destination": "/d/../../x", "type": "tmpfs", "source": "tmpfs"}]}),
    );
    assert_eq!(e.path, "spec.mounts[0].destination");
    check(
        &p,
        "team-a",
        &frag(json!({"mounts": [{"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"}]})),
    )
    .unwrap();
    let e = refused(
        &p,
        "team-a",
        json!({"mounts": [{"destination": "/p", "type": "proc", "source": "proc"}]}),
    );
    assert_eq!(
        e.to_string(),
        "spec.mounts[0].type: mount type \"proc\" is not allowed by the node policy"
    );

    // Unified key globs, value length and numeric bounds.
    check(&p, "x", &frag(json!({"linux": {"resources": {"unified": {"io.max": "8:0 rbps=1", "pids.max": "10"}}}}))).unwrap();
    let e = refused(
        &p,
        "x",
        json!({"linux": {"resources": {"unified": {"memory.max": "1"}}}}),
    );
    assert_eq!(
        e.to_string(),
        "spec.linux.resources.unified[\"memory.max\"]: key is not allowed by the node policy"
    );
    let e = refused(
        &p,
        "x",
        json!({"linux": {"resources": {"unified": {"pids.max": "2000"}}}}),
    );
    assert_eq!(
        e.to_string(),
        "spec.linux.resources.unified[\"pids.max\"]: 2000 is above the node policy's maximum 1000"
    );
    let e = refused(
        &p,
        "x",
        json!({"linux": {"resources": {"unified": {"pids.max": "max"}}}}),
    );
    assert!(e.reason.contains("unlimited"), "{e}");
    let e = refused(
        &p,
        "x",
        json!({"linux": {"resources": {"unified": {"pids.max": "lots"}}}}),
    );
    assert!(e.reason.contains("not a number"), "{e}");
    let e = refused(
        &p,
        "x",
        json!({"linux": {"resources": {"unified": {"io.max": "8:0 rbps=".to_string() + &"1".repeat(60)}}}}),
    );
    assert!(e.reason.contains("node policy's maximum 64"), "{e}");
    // team-a extends: its bound for the same key wins.
    check(
        &p,
        "team-a",
        &frag(json!({"linux": {"resources": {"unified": {"pids.max": "2000"}}}})),
    )
    .unwrap();
    // Bounds on plain fields.
    let e = refused(
        &p,
        "x",
        json!({"linux": {"resources": {"memory": {"limit": 1024}}}}),
    );
    assert_eq!(
        e.to_string(),
        "spec.linux.resources.memory.limit: 1024 is below the node policy's minimum 4194304"
    );
    // env count.
    let e = refused(&p, "x", json!({"process": {"env": ["A=1", "B=2", "C=3"]}}));
    assert_eq!(e.path, "spec.process.env");
    // Replace: only env in "locked".
    check(
        &p,
        "locked",
        &frag(json!({"process": {"env": ["A=1", "B=2", "C=3"]}})),
    )
    .unwrap();
    let e = refused(
        &p,
        "locked",
        json!({"linux": {"resources": {"unified": {"io.max": "8:0 rbps=1"}}}}),
    );
    assert_eq!(e.path, "spec.linux");
}

#[test]
fn allowed_mounts_cannot_cover_runtime_paths_or_propagate() {
    let p = Policy::from_yaml(POLICY).unwrap();
    for dest in ["/", "/proc", "/proc/sys", "/sys/fs/cgroup"] {
        let e = refused(
            &p,
            "team-a",
            json!({"mounts": [{"destination": dest, "type": "tmpfs", "source": "tmpfs"}]}),
        );
        assert_eq!(e.path, "spec.mounts[0].destination", "{dest}");
    }
    let e = refused(
        &p,
        "team-a",
        json!({"mounts": [{"destination": "/d", "type": "bind", "source": "/srv/shared", "options": ["rbind", "rshared"]}]}),
    );
    assert_eq!(
        e.to_string(),
        "spec.mounts[0].options: propagation \"rshared\" is not allowed: mounts must not propagate between host and container"
    );
}

#[test]
fn hooks_when_allowed_must_come_from_allowed_paths() {
    let p = Policy::from_yaml(
        "apiVersion: drakit.dev/v1alpha1\nkind: RuntimeSpecPolicy\ndefault:\n  allowedFields: [hooks]\n  hooks: {allowedPaths: [/opt/hooks]}\n",
    )
    .unwrap();
    check(
        &p,
        "n",
        &frag(json!({"hooks": {"createRuntime": [{"path": "/opt/hooks/net", "args": ["net"]}]}})),
    )
    .unwrap();
    let e = refused(
        &p,
        "n",
        json!({"hooks": {"poststart": [{"path": "/opt/hooks/../../bin/sh"}]}}),
    );
    assert_eq!(e.path, "spec.hooks.poststart[0].path");
    let e = refused(
        &p,
        "n",
        json!({"hooks": {"createRuntime": [{"path": "/usr/bin/curl"}]}}),
    );
    assert!(
        e.reason.contains("not under a path the node policy allows"),
        "{e}"
    );
}

#[test]
fn malformed_policy_files_fail_with_paths() {
    let head = "apiVersion: drakit.dev/v1alpha1\nkind: RuntimeSpecPolicy\n";
    let cases = [
        (
            format!("{head}default:\n  unified:\n    allowedKey: [x]\n"),
            "default.unified.allowedKey",
            "unknown field `allowedKey`",
        ),
        (
            format!("{head}namespaces:\n  team-a:\n    rules:\n      allowedFields: mounts\n"),
            "namespaces.team-a.rules.allowedFields",
            "invalid type: string \"mounts\", expected a sequence",
        ),
        (
            format!("{head}namespaces:\n  team-a:\n    mode: merge\n"),
            "namespaces.team-a.mode",
            "unknown variant `merge`",
        ),
        (
            format!(
                "{head}default:\n  bounds:\n    linux.resources.pids.limit: {{min: 10, max: 1}}\n"
            ),
            "default.bounds[\"linux.resources.pids.limit\"]",
            "min 10 is above max 1",
        ),
        (
            format!("{head}default:\n  allowedFields: [\"spec.mounts\"]\n"),
            "default.allowedFields[0]",
            "is not a fragment field path",
        ),
        (
            format!("{head}default:\n  unified: {{allowedKeys: [\"io/*\"]}}\n"),
            "default.unified.allowedKeys[0]",
            "is not a key glob",
        ),
        (
            format!("{head}default:\n  mounts: {{allowedSources: [\"/srv/../etc\"]}}\n"),
            "default.mounts.allowedSources[0]",
            "'..' component",
        ),
        (
            format!("{head}default:\n  unified: {{maxValueLength: 100000}}\n"),
            "default.unified.maxValueLength",
            "above the config limit 4096",
        ),
        (
            format!("{head}namespaces:\n  Team_A: {{}}\n"),
            "namespaces[\"Team_A\"]",
            "not a namespace name",
        ),
        (
            "apiVersion: v1\nkind: RuntimeSpecPolicy\n".to_string(),
            "apiVersion",
            "is not supported",
        ),
        (
            "apiVersion: drakit.dev/v1alpha1\nkind: Policy\n".to_string(),
            "kind",
            "is not \"RuntimeSpecPolicy\"",
        ),
        (
            format!("{head}default: {{}}\ndefault: {{}}\n"),
            "",
            "duplicate entry with key \"default\"",
        ),
        (
            format!("{head}namespaces:\n  a: {{}}\n  a: {{}}\n"),
            "",
            "duplicate entry with key \"a\"",
        ),
        ("- a\n- b\n".to_string(), "", "invalid type: sequence"),
        (
            format!("{head}extra: 1\n"),
            "extra",
            "unknown field `extra`",
        ),
        (
            format!("{head}default:\n  bounds:\n    spec.pids: {{max: 1}}\n"),
            "default.bounds[\"spec.pids\"]",
            "is not a fragment field path",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, path, reason) in &cases {
        match Policy::from_yaml(text) {
            Ok(_) => wrong.push(format!("accepted:\n{text}")),
            Err(e) => {
                if e.path != *path || !e.reason.contains(reason) {
                    wrong.push(format!(
                        "{text}\n  got {:?} {:?}\n  want {path:?} {reason:?}",
                        e.path, e.reason
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn empty_fragment_passes_even_a_policy_that_allows_nothing() {
    let p = Policy::from_yaml(
        "apiVersion: drakit.dev/v1alpha1\nkind: RuntimeSpecPolicy\ndefault: {}\n",
    )
    .unwrap();
    check(&p, "n", &frag(json!({}))).unwrap();
    check(&p, "n", &frag(json!({"linux": {}}))).unwrap();
    let e = refused(&p, "n", json!({"process": {"env": ["A=1"]}}));
    assert_eq!(
        e.to_string(),
        "spec.process: process is not allowed by the node policy"
    );
}

#[test]
fn an_empty_policy_file_header_uses_the_builtin_default() {
    let p =
        Policy::from_yaml("apiVersion: drakit.dev/v1alpha1\nkind: RuntimeSpecPolicy\n").unwrap();
    assert_eq!(p, Policy::default());
}

mod totality {
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "linux",
        "resources",
        "unified",
        "process",
        "env",
        "mounts",
        "hooks",
        "devices",
        "namespaces",
        "capabilities",
        "memory",
        "limit",
        "destination",
        "source",
        "type",
        "path",
        "options",
        "createRuntime",
        "io.max",
        "pids.max",
        "annotations",
        "rlimits",
        "hard",
    ];

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::Bool),
            proptest::sample::select(
                &[
                    "bind",
                    "/srv/shared/x",
                    "../..",
                    "DRAKIT_X=1",
                    "max",
                    "8:0 rbps=1",
                    "/dev/x",
                    "network"
                ][..]
            )
            .prop_map(|s| Value::String(s.into())),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (proptest::sample::select(KEYS).prop_map(String::from), inner),
                    0..5
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn check_never_panics(v in value(), ns in proptest::sample::select(&["team-a", "x", "locked"][..])) {
            let p = Policy::from_yaml(POLICY).unwrap();
            let raw = serde_json::to_vec(&v).unwrap();
            let _ = check_json(&p, ns, &raw);
            let _ = check_json(&Policy::default(), ns, &raw);
        }

        #[test]
        fn policy_loading_never_panics(text in ".{0,200}", cut in 0usize..2000) {
            let _ = Policy::from_yaml(&text);
            let n = cut.min(POLICY.len());
            if POLICY.is_char_boundary(n) {
                let _ = Policy::from_yaml(&POLICY[..n]);
            }
        }
    }
}
