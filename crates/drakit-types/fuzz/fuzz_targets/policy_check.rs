//! Arbitrary runtime-spec edits through the admin policy check, with the built-in policy and
//! with a policy file taken from the input.
//!
//! Input: `<config or fragment JSON> [NUL <policy YAML>]`. The config is decoded as a whole
//! claim config (`RuntimeSpecEditConfig`) and, failing that, as a bare fragment (what the NRI
//! sidecar checks), so the fuzzer reaches the policy without writing the envelope every time.
//!
//! Checked, besides "no panic":
//! - the answer is deterministic: decoding and checking the same bytes twice gives the same
//!   result (oci-spec keeps some maps in HashMaps whose order differs between instances);
//! - `check_json` agrees with decode + `check`;
//! - what no policy file can allow is never allowed: `DRAKIT_*` environment names (any letter
//!   case), `unified` keys outside the config rules, bind mount sources and hook paths that are
//!   not clean absolute paths, device nodes outside /dev, joining a namespace by path, setting
//!   the cgroup path.

#![no_main]

use drakit_types::config::{
    ClaimConfig, RuntimeSpecEditConfig, RuntimeSpecFragment, validate_unified_key,
};
use drakit_types::policy::{Policy, PolicyError, check_config, check_json};
use libfuzzer_sys::fuzz_target;

const NAMESPACES: [&str; 3] = ["default", "team-a", "kube-system"];

fn clean_abs(p: &str) -> bool {
    p.starts_with('/') && !p.contains('\0') && !p.split('/').any(|c| c == ".." || c == ".")
}

/// Things no policy may let through.
fn assert_never_allowed(f: &RuntimeSpecFragment, what: &str) {
    if let Some(env) = f.process.as_ref().and_then(|p| p.env.as_ref()) {
        for e in env {
            let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
            assert!(
                !name.to_ascii_uppercase().starts_with("DRAKIT_"),
                "{what}: reserved env name {name:?} passed the policy"
            );
            assert!(
                !name.is_empty() && name.bytes().all(|c| c.is_ascii_graphic()),
                "{what}: env name {name:?} passed the policy"
            );
        }
    }
    if let Some(linux) = &f.linux {
        if let Some(u) = linux
            .resources()
            .as_ref()
            .and_then(|r| r.unified().as_ref())
        {
            for k in u.keys() {
                assert!(
                    validate_unified_key(k).is_ok(),
                    "{what}: unified key {k:?} passed the policy"
                );
            }
        }
        for d in linux.devices().iter().flatten() {
            let p = d.path().to_string_lossy();
            assert!(
                clean_abs(&p) && d.path().starts_with("/dev"),
                "{what}: device node {p} passed the policy"
            );
        }
        for ns in linux.namespaces().iter().flatten() {
            assert!(
                ns.path().is_none(),
                "{what}: namespace path passed the policy"
            );
        }
        assert!(
            linux.cgroups_path().is_none(),
            "{what}: cgroupsPath passed the policy"
        );
    }
    for m in f.mounts.iter().flatten() {
        let dest = m.destination().to_string_lossy();
        assert!(
            clean_abs(&dest),
            "{what}: mount destination {dest:?} passed the policy"
        );
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if bind {
            let src = m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            assert!(
                clean_abs(&src),
                "{what}: bind mount source {src:?} passed the policy"
            );
        }
    }
    if let Some(h) = &f.hooks {
        #[allow(deprecated)]
        let lists = [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
            h.poststart(),
            h.poststop(),
        ];
        for hook in lists.iter().copied().flatten().flatten() {
            let p = hook.path().to_string_lossy();
            assert!(clean_abs(&p), "{what}: hook path {p:?} passed the policy");
        }
    }
}

/// Decodes the config bytes: a whole claim config, else a bare fragment.
fn decode(raw: &[u8]) -> Option<(ClaimConfig, bool)> {
    match ClaimConfig::from_json(raw) {
        Ok(c) => Some((c, false)),
        Err(_) => RuntimeSpecFragment::from_json(raw).ok().map(|spec| {
            (
                ClaimConfig::RuntimeSpecEdit(RuntimeSpecEditConfig { spec }),
                true,
            )
        }),
    }
}

fn run(policy: &Policy, ns: &str, raw: &[u8], what: &str) {
    let Some((cfg, bare)) = decode(raw) else {
        return;
    };
    let first: Result<(), PolicyError> = check_config(policy, ns, &cfg);
    // A second, independent decode: its HashMaps iterate in another order.
    let (cfg2, _) = decode(raw).expect("the same bytes decode twice");
    let second = check_config(policy, ns, &cfg2);
    assert_eq!(
        first, second,
        "{what}: the same fragment got two different answers"
    );
    if bare {
        assert_eq!(
            check_json(policy, ns, raw),
            first,
            "{what}: check_json and decode + check disagree"
        );
    }
    if first.is_ok()
        && let ClaimConfig::RuntimeSpecEdit(c) = &cfg
    {
        assert_never_allowed(&c.spec, what);
    }
}

fuzz_target!(|data: &[u8]| {
    let (config, policy_text) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let ns = NAMESPACES[config.len() % NAMESPACES.len()];

    run(&Policy::default(), ns, config, "built-in policy");

    let Some(text) = policy_text.and_then(|t| std::str::from_utf8(t).ok()) else {
        return;
    };
    let Ok(policy) = Policy::from_yaml(text) else {
        return;
    };
    for ns in NAMESPACES {
        // Every namespace gets rules (its own, extended or replaced, or the default).
        let _ = policy.rules_for(ns);
        run(&policy, ns, config, "policy from the input");
    }
});
