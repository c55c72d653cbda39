//! Arbitrary structured claim specs into the CDI spec builder.
//!
//! The input is a claim (vendor, class, UID, devices with edits and annotations, spec-level
//! edits) whose strings are drawn mostly from small vocabularies of good and bad values, plus
//! the edits drakit itself derives from claim configs: the runtime-spec env variable of a
//! `RuntimeSpecEditConfig` (as the kubelet plugin writes it), the CPU list env variable, and a
//! netDevice named after a `NetdevConfig`'s `interfaceName`.
//!
//! Checked, besides "no panic":
//! - a spec the builder accepts round-trips through our own loader: its JSON decodes (strictly)
//!   to the same spec, `validate_spec` accepts it, and the declared `cdiVersion` is the minimum
//!   version of the reloaded spec; the file a `SpecDir` writes is exactly that JSON, listed
//!   under the claim UID, and removed again;
//! - edits derived from valid claim configs never make a valid claim unbuildable (a config the
//!   config decoder accepts must give CDI content the CDI validator accepts);
//! - refusals name the claim UID (or the bad vendor/class/UID itself).

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use drakit_types::cdi::{
    CdiError, ClaimDevice, ClaimSpec, ContainerEdits, DeviceNode, Hook, IntelRdt, Mount, NetDevice,
    Spec, SpecDir, minimum_version, validate_spec,
};
use drakit_types::config::{ClaimConfig, RuntimeSpecFragment};
use drakit_types::constants::{cpus_env_name, runtime_spec_env_name};
use drakit_types::fsutil::Durability;
use libfuzzer_sys::fuzz_target;

/// A string: mostly one of a field's vocabulary, sometimes anything.
#[derive(Arbitrary, Debug)]
enum S {
    Pick(u8),
    Raw(String),
}

impl S {
    fn get(&self, vocab: &[&str]) -> String {
        match self {
            S::Pick(i) => vocab[*i as usize % vocab.len()].to_string(),
            S::Raw(s) => s.clone(),
        }
    }
}

const VENDORS: &[&str] = &[
    "net.drakit.dev",
    "cpu.drakit.dev",
    "runtime.drakit.dev",
    "a",
    "x-y_z.example",
    "1bad",
    "bad-",
    "",
];
const CLASSES: &[&str] = &["claim", "net", "a.b", "c_1", "9", "a/b", ""];
const UIDS: &[&str] = &[
    "7d1e0c7e-8a9b-4c3d-9e2f-0a1b2c3d4e5f",
    "0b1c",
    "a.b-c",
    ".hidden",
    "has_underscore",
    "",
];
const DEVICES: &[&str] = &[
    "eth1",
    "cpu0",
    "spec-edit",
    "pool/dev",
    "0",
    "a b",
    "-x",
    "",
];
const ENV: &[&str] = &[
    "A=1",
    "PATH=/usr/bin",
    "EMPTY=",
    "X=a=b",
    "=novalue",
    "NOEQUALS",
    "SP ACE=1",
    "NUL=\0",
];
const PATHS: &[&str] = &[
    "/dev/infiniband/uverbs0",
    "/dev/null",
    "/opt/hook",
    "/data",
    "relative",
    "/a/../b",
    "",
];
const NODE_TYPES: &[&str] = &["c", "b", "u", "p", "x", ""];
const PERMS: &[&str] = &["rw", "rwm", "m", "", "rwx"];
const HOOK_NAMES: &[&str] = &[
    "createRuntime",
    "prestart",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
    "bogus",
];
const MOUNT_TYPES: &[&str] = &["bind", "tmpfs", ""];
const IFNAMES: &[&str] = &[
    "net1",
    "eth0",
    "ib0",
    "averyveryverylongname",
    "a:b",
    "a b",
    ".",
    "",
];
const ANNOTATION_KEYS: &[&str] = &[
    "drakit.dev/claim-uid",
    "cdi.k8s.io/x",
    "plain",
    "Bad Key",
    "a/b/c",
    "",
];
const CLOS: &[&str] = &["clos1", "a/b", ".", ""];

#[derive(Arbitrary, Debug)]
struct InNode {
    path: S,
    host_path: Option<S>,
    kind: Option<S>,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    permissions: Option<S>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Arbitrary, Debug)]
struct InHook {
    name: S,
    path: S,
    args: Vec<S>,
    env: Vec<S>,
    timeout: Option<u32>,
}

#[derive(Arbitrary, Debug)]
struct InMount {
    host: S,
    container: S,
    kind: Option<S>,
    options: Vec<S>,
}

#[derive(Arbitrary, Debug)]
struct InRdt {
    clos: Option<S>,
    l3: Option<String>,
    mb: Option<String>,
    schemata: Option<Vec<String>>,
    monitoring: bool,
}

#[derive(Arbitrary, Debug)]
struct InEdits {
    env: Vec<S>,
    nodes: Vec<InNode>,
    hooks: Vec<InHook>,
    mounts: Vec<InMount>,
    net: Vec<(S, S)>,
    rdt: Option<InRdt>,
    gids: Vec<u32>,
}

#[derive(Arbitrary, Debug)]
struct InDevice {
    name: S,
    edits: InEdits,
    annotations: Vec<(S, String)>,
}

/// Edits drakit derives from claim configs.
#[derive(Arbitrary, Debug)]
enum Derived {
    /// `DRAKIT_RUNTIME_SPEC_<uid>=<fragment JSON>` from a runtime-spec fragment.
    RuntimeSpec(Vec<u8>),
    /// `DRAKIT_CPUS_<uid>=<list>`.
    Cpus(Vec<u16>),
    /// A netDevice inside the container named as the config's `interfaceName`.
    Netdev(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    vendor: S,
    class: S,
    uid: S,
    devices: Vec<InDevice>,
    common: InEdits,
    derived: Vec<Derived>,
}

fn edits(e: &InEdits) -> ContainerEdits {
    ContainerEdits {
        env: e.env.iter().map(|s| s.get(ENV)).collect(),
        device_nodes: e
            .nodes
            .iter()
            .map(|n| DeviceNode {
                path: n.path.get(PATHS),
                host_path: n.host_path.as_ref().map(|s| s.get(PATHS)),
                kind: n.kind.as_ref().map(|s| s.get(NODE_TYPES)),
                major: n.major,
                minor: n.minor,
                file_mode: n.file_mode,
                permissions: n.permissions.as_ref().map(|s| s.get(PERMS)),
                uid: n.uid,
                gid: n.gid,
            })
            .collect(),
        hooks: e
            .hooks
            .iter()
            .map(|h| Hook {
                hook_name: h.name.get(HOOK_NAMES),
                path: h.path.get(PATHS),
                args: h.args.iter().map(|s| s.get(&["hook", "-v", ""])).collect(),
                env: h.env.iter().map(|s| s.get(ENV)).collect(),
                timeout: h.timeout,
            })
            .collect(),
        mounts: e
            .mounts
            .iter()
            .map(|m| Mount {
                host_path: m.host.get(PATHS),
                container_path: m.container.get(PATHS),
                kind: m.kind.as_ref().map(|s| s.get(MOUNT_TYPES)),
                options: m
                    .options
                    .iter()
                    .map(|s| s.get(&["ro", "bind", ""]))
                    .collect(),
            })
            .collect(),
        net_devices: e
            .net
            .iter()
            .map(|(h, n)| NetDevice {
                host_interface_name: h.get(IFNAMES),
                name: n.get(IFNAMES),
            })
            .collect(),
        intel_rdt: e.rdt.as_ref().map(|r| IntelRdt {
            clos_id: r.clos.as_ref().map(|s| s.get(CLOS)),
            l3_cache_schema: r.l3.clone(),
            mem_bw_schema: r.mb.clone(),
            schemata: r.schemata.clone(),
            enable_monitoring: r.monitoring,
        }),
        additional_gids: e.gids.clone(),
    }
}

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::fs::metadata("/dev/shm").is_ok_and(|m| m.is_dir()) {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        sweep_dead(&base, "drakit-fuzz-cdi-");
        let dir = base.join(format!("drakit-fuzz-cdi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

/// Removes `<base>/<prefix><pid>` directories of fuzzer processes that are gone (libFuzzer
/// ends with `exit`, so a run cannot clean up after itself; `cargo xtask fuzz-smoke` sweeps too).
fn sweep_dead(base: &std::path::Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The spec must come back unchanged through JSON, our strict types and our validator.
fn reload(spec: &ClaimSpec) {
    let json = spec.to_json().expect("a built spec must encode");
    let back: Spec = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "our loader refuses a built spec: {e}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(back, spec.spec, "spec changed through JSON");
    if let Err(e) = validate_spec(&back) {
        panic!(
            "our validator refuses a spec the builder produced: {e}\n{}",
            String::from_utf8_lossy(&json)
        );
    }
    assert_eq!(
        back.cdi_version,
        spec.version.as_str(),
        "declared version is not the stamped one"
    );
    assert_eq!(
        minimum_version(&back),
        spec.version,
        "stamped version is not the minimum"
    );
    assert_eq!(spec.device_ids.len(), spec.spec.devices.len());
    for (id, d) in spec.device_ids.iter().zip(&spec.spec.devices) {
        assert_eq!(
            id,
            &format!("{}/{}={}", spec.vendor, spec.class, d.name),
            "device id"
        );
    }

    // Through a spec directory (tmpfs, no fsync: this checks names and bytes, not durability).
    let dir = SpecDir::new(scratch(), &spec.vendor, &spec.class)
        .expect("vendor/class accepted by build")
        .with_durability(Durability::None);
    dir.write(spec)
        .unwrap_or_else(|e| panic!("SpecDir refuses a built spec: {e}"));
    let path = dir.path_for(&spec.claim_uid);
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some(spec.file_name().as_str())
    );
    assert_eq!(std::fs::read(&path).expect("written file"), json);
    let listed = dir.list().expect("list");
    assert!(
        listed.contains(&spec.claim_uid),
        "written spec for {} not listed: {listed:?}",
        spec.claim_uid
    );
    assert!(dir.remove(&spec.claim_uid).expect("remove"), "not removed");
    assert!(!path.exists());
}

fuzz_target!(|input: Input| {
    let vendor = input.vendor.get(VENDORS);
    let class = input.class.get(CLASSES);
    let uid = input.uid.get(UIDS);
    let mut devices: Vec<ClaimDevice> = input
        .devices
        .iter()
        .take(8)
        .map(|d| ClaimDevice {
            device: d.name.get(DEVICES),
            edits: edits(&d.edits),
            annotations: d
                .annotations
                .iter()
                .map(|(k, v)| (k.get(ANNOTATION_KEYS), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        })
        .collect();
    let common = edits(&input.common);

    // First, the claim as given.
    let plain = ClaimSpec::build(&vendor, &class, &uid, devices.clone(), common.clone());
    match &plain {
        Ok(spec) => reload(spec),
        Err(e @ CdiError::InvalidSpec { claim_uid, .. }) => {
            assert_eq!(claim_uid, &uid, "error names another claim: {e}");
            assert!(e.to_string().contains(&uid), "{e}");
        }
        Err(CdiError::InvalidName { .. }) => {}
        Err(e) => panic!("unexpected error kind from build: {e}"),
    }

    // Then with the edits drakit derives from valid claim configs added to the first device.
    // Each derived edit is valid on its own, so it must not turn an accepted claim into a
    // refused one.
    if devices.is_empty() || plain.is_err() {
        return;
    }
    let mut added = 0;
    let mut net_names: Vec<String> = Vec::new();
    for d in input.derived.iter().take(3) {
        match d {
            Derived::RuntimeSpec(raw) => {
                let Ok(f) = RuntimeSpecFragment::from_json(raw) else {
                    continue;
                };
                let value = serde_json::to_string(&f).expect("a decoded fragment encodes");
                devices[0]
                    .edits
                    .env
                    .push(format!("{}={value}", runtime_spec_env_name(&uid)));
            }
            Derived::Cpus(cpus) => {
                let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
                devices[0]
                    .edits
                    .env
                    .push(format!("{}={}", cpus_env_name(&uid), list.join(",")));
            }
            Derived::Netdev(raw) => {
                let Ok(cfg) = ClaimConfig::from_json(raw) else {
                    continue;
                };
                let Some(name) = cfg.netdev().and_then(|n| n.interface_name.as_ref()) else {
                    continue;
                };
                // Names are unique across a spec: skip what the claim already uses.
                let name = name.as_str().to_string();
                let taken = std::iter::once(&common)
                    .chain(devices.iter().map(|d| &d.edits))
                    .flat_map(|e| &e.net_devices)
                    .any(|n| n.name == name || n.host_interface_name.starts_with("drk"));
                if taken || net_names.contains(&name) {
                    continue;
                }
                devices[0].edits.net_devices.push(NetDevice {
                    host_interface_name: format!("drk{}", net_names.len()),
                    name: name.clone(),
                });
                net_names.push(name);
            }
        }
        added += 1;
    }
    if added == 0 {
        return;
    }
    match ClaimSpec::build(&vendor, &class, &uid, devices, common) {
        Ok(spec) => reload(&spec),
        Err(e) => panic!("edits derived from valid configs made a valid claim unbuildable: {e}"),
    }
});
