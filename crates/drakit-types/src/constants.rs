//! Defaults shared by the kubelet plugin, the backends and the NRI sidecar.
//!
//! Every value here is a *default*: each daemon exposes a flag for it. Keep the names in one
//! place so that two daemons started without flags agree with each other.
//!
//! # Environment variables from CDI to the NRI sidecar
//!
//! The kubelet plugin puts per-claim data into the claim's CDI spec as environment variables; the
//! runtime copies them into the container's OCI spec, where the NRI sidecar sees them at
//! CreateContainer and turns them into adjustments.
//!
//! - `DRAKIT_RUNTIME_SPEC_<uid>=<json>`: the claim's policy-checked OCI runtime-spec fragment,
//!   serialised as **compact JSON** (serde_json, one line, no padding or encoding layer). JSON was
//!   chosen over base64 because env values may hold any byte but NUL, it needs no extra crate,
//!   and it stays readable in `crictl inspect` when debugging.
//! - `DRAKIT_CPUS_<uid>=<cpulist>`: the claim's exclusive CPUs in Linux cpulist syntax
//!   (`0-3,8,10-11`).
//!
//! `<uid>` is the claim UID sanitised into a portable variable name: every character outside
//! `[A-Za-z0-9_]` becomes `_` (a UUID's `-` turns into `_`; case is kept). The mapping is not
//! reversible, so a reader compares [`sanitize_claim_uid`] of the UIDs it knows with the suffix it
//! found.

/// Default driver name of the network-interface driver.
pub const NET_DRIVER_NAME: &str = "net.drakit.dev";
/// Default driver name of the exclusive-CPU driver.
pub const CPU_DRIVER_NAME: &str = "cpu.drakit.dev";
/// Default driver name of the runtime-spec-edit driver.
pub const RUNTIME_DRIVER_NAME: &str = "runtime.drakit.dev";

/// API group of the claim-configuration API.
pub const CONFIG_API_GROUP: &str = "drakit.dev";
/// API version of the claim-configuration API.
pub const CONFIG_API_VERSION: &str = "v1alpha1";
/// `apiVersion` value of a claim configuration (`drakit.dev/v1alpha1`).
pub const CONFIG_API_GROUP_VERSION: &str = "drakit.dev/v1alpha1";

/// Directory the kubelet watches for plugin registration sockets.
pub const KUBELET_PLUGINS_REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
/// Directory under which each DRA plugin keeps its `<driver>/dra.sock` endpoint.
pub const KUBELET_PLUGINS_DIR: &str = "/var/lib/kubelet/plugins";
/// Directory of drakit's internal sockets (mode 0700, sockets 0600).
pub const RUN_DIR: &str = "/run/drakit";
/// File name of the netdev backend's socket inside [`RUN_DIR`].
pub const NETDEV_SOCKET_NAME: &str = "netdev.sock";
/// File name of the CPU backend's socket inside [`RUN_DIR`].
pub const CPU_SOCKET_NAME: &str = "cpu.sock";
/// Directory of transient CDI specs (tmpfs on most nodes).
pub const CDI_SPEC_DIR: &str = "/var/run/cdi";
/// Directory of drakit's durable state (checkpoints).
pub const STATE_DIR: &str = "/var/lib/drakit";
/// The NRI socket of the container runtime.
pub const NRI_SOCKET: &str = "/var/run/nri/nri.sock";
/// Root of procfs (boot ID lives at `<root>/sys/kernel/random/boot_id`).
pub const PROC_ROOT: &str = "/proc";
/// Default CDI class of drakit's per-claim specs (kind `<driver>/<class>`).
pub const CDI_CLASS: &str = "claim";

/// Prefix of the per-claim runtime-spec environment variable.
pub const RUNTIME_SPEC_ENV_PREFIX: &str = "DRAKIT_RUNTIME_SPEC_";
/// Prefix of the per-claim exclusive-CPU environment variable.
pub const CPUS_ENV_PREFIX: &str = "DRAKIT_CPUS_";

/// Default path of the netdev backend socket.
pub fn netdev_socket_path(run_dir: &std::path::Path) -> std::path::PathBuf {
    run_dir.join(NETDEV_SOCKET_NAME)
}

/// Default path of the CPU backend socket.
pub fn cpu_socket_path(run_dir: &std::path::Path) -> std::path::PathBuf {
    run_dir.join(CPU_SOCKET_NAME)
}

/// Turns a claim UID into the suffix of an environment variable name: characters outside
/// `[A-Za-z0-9_]` become `_`.
pub fn sanitize_claim_uid(claim_uid: &str) -> String {
    claim_uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Name of the runtime-spec variable of a claim: `DRAKIT_RUNTIME_SPEC_<sanitised uid>`.
pub fn runtime_spec_env_name(claim_uid: &str) -> String {
    format!("{RUNTIME_SPEC_ENV_PREFIX}{}", sanitize_claim_uid(claim_uid))
}

/// Name of the CPU variable of a claim: `DRAKIT_CPUS_<sanitised uid>`.
pub fn cpus_env_name(claim_uid: &str) -> String {
    format!("{CPUS_ENV_PREFIX}{}", sanitize_claim_uid(claim_uid))
}

/// A drakit variable recognised in a container's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrakitEnv<'a> {
    /// `DRAKIT_RUNTIME_SPEC_<uid>=<json>`.
    RuntimeSpec {
        /// The sanitised claim UID (compare with [`sanitize_claim_uid`]).
        uid: &'a str,
        /// The JSON value.
        value: &'a str,
    },
    /// `DRAKIT_CPUS_<uid>=<cpulist>`.
    Cpus {
        /// The sanitised claim UID (compare with [`sanitize_claim_uid`]).
        uid: &'a str,
        /// The cpulist value.
        value: &'a str,
    },
}

/// Recognises one `NAME=value` entry of an OCI process environment. Returns `None` for
/// variables that are not drakit's (or carry an empty or malformed suffix).
pub fn parse_env_entry(entry: &str) -> Option<DrakitEnv<'_>> {
    let (name, value) = entry.split_once('=')?;
    let valid_suffix =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if let Some(uid) = name.strip_prefix(RUNTIME_SPEC_ENV_PREFIX) {
        return valid_suffix(uid).then_some(DrakitEnv::RuntimeSpec { uid, value });
    }
    if let Some(uid) = name.strip_prefix(CPUS_ENV_PREFIX) {
        return valid_suffix(uid).then_some(DrakitEnv::Cpus { uid, value });
    }
    None
}

/// Whether `name` (without `=value`) is a drakit runtime-spec variable name.
pub fn is_runtime_spec_env_name(name: &str) -> bool {
    matches!(
        parse_env_entry(&format!("{name}=")),
        Some(DrakitEnv::RuntimeSpec { .. })
    )
}

/// Whether `name` (without `=value`) is a drakit CPU variable name.
pub fn is_cpus_env_name(name: &str) -> bool {
    matches!(
        parse_env_entry(&format!("{name}=")),
        Some(DrakitEnv::Cpus { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let uid = "0b1c2d3e-aaaa-bbbb-cccc-0123456789ab";
        let n = runtime_spec_env_name(uid);
        assert_eq!(
            n,
            "DRAKIT_RUNTIME_SPEC_0b1c2d3e_aaaa_bbbb_cccc_0123456789ab"
        );
        assert!(is_runtime_spec_env_name(&n));
        assert!(!is_cpus_env_name(&n));
        let c = cpus_env_name("ab-cd");
        assert_eq!(c, "DRAKIT_CPUS_ab_cd");
        let entry = format!("{c}=0-3,8");
        assert_eq!(
            parse_env_entry(&entry),
            Some(DrakitEnv::Cpus {
                uid: "ab_cd",
                value: "0-3,8"
            })
        );
        let entry = format!("{n}={{\"a\":\"b=c\"}}");
        assert_eq!(
            parse_env_entry(&entry),
            Some(DrakitEnv::RuntimeSpec {
                uid: &sanitize_claim_uid(uid),
                value: "{\"a\":\"b=c\"}"
            })
        );
    }

    #[test]
    fn foreign_and_malformed_entries_are_ignored() {
        for e in [
            "PATH=/bin",
            "DRAKIT_CPUS_=1",
            "DRAKIT_CPUS_a-b=1",
            "DRAKIT_CPUS_ab",
            "DRAKIT_RUNTIME_SPEC_=x",
            "",
            "=",
        ] {
            assert_eq!(parse_env_entry(e), None, "{e}");
        }
    }

    #[test]
    fn sanitize_keeps_portable_names() {
        assert_eq!(sanitize_claim_uid("A.b/c-d_e"), "A_b_c_d_e");
    }
}
