//! `RuntimeSpecEditConfig`: an OCI runtime-spec fragment applied to the claim's containers.
//!
//! `oci_spec::runtime::Spec` cannot hold a fragment: it needs `process.user` and `process.cwd`
//! whenever `process` is present, and it writes `ociVersion: ""` back. So the fragment is a
//! struct of optional oci-spec sub-types (`Linux`, `Mount`, `Hooks`, the `process` pieces), and
//! since oci-spec types accept unknown fields silently, the decoder compares the input tree with
//! the re-encoded one and reports the first key that was dropped.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Hooks, Linux, LinuxCapabilities, LinuxIOPriority, Mount, PosixRlimit, Scheduler,
};
use serde::{Deserialize, Serialize};

use super::error::{ConfigError, index, invalid, join};

/// cgroup v2 controllers whose interface files a `unified` key may name.
pub const UNIFIED_CONTROLLERS: &[&str] = &[
    "cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc",
];
/// Longest `unified` key in bytes.
pub const UNIFIED_KEY_MAX: usize = 128;
/// Longest `unified` value in bytes.
pub const UNIFIED_VALUE_MAX: usize = 4096;
/// Most `unified` entries in one fragment.
pub const UNIFIED_MAX_ENTRIES: usize = 64;
/// Longest environment entry (`NAME=value`) in bytes.
pub const ENV_ENTRY_MAX: usize = 4096;

/// The `process` part of a fragment: only what makes sense to add to an existing container.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessFragment {
    /// Environment entries `NAME=value`, added to the container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// POSIX resource limits (`RLIMIT_NOFILE`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Vec<super::schema::Oci>>"))]
    pub rlimits: Option<Vec<PosixRlimit>>,
    /// Capability sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<super::schema::Oci>"))]
    pub capabilities: Option<LinuxCapabilities>,
    /// Set the no_new_privs bit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_new_privileges: Option<bool>,
    /// OOM score adjustment, -1000..=1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// AppArmor profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor_profile: Option<String>,
    /// SELinux process label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux_label: Option<String>,
    /// I/O priority class and level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<super::schema::Oci>"))]
    pub io_priority: Option<LinuxIOPriority>,
    /// Scheduling policy and attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<super::schema::Oci>"))]
    pub scheduler: Option<Scheduler>,
}

/// A partial OCI runtime spec (runtime-spec v1.3 field names).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeSpecFragment {
    /// Process settings to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessFragment>,
    /// Linux settings (`resources.unified`, `resources.memory`, `devices`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<super::schema::OciLinux>"))]
    pub linux: Option<Linux>,
    /// Mounts to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Vec<super::schema::Oci>>"))]
    pub mounts: Option<Vec<Mount>>,
    /// Lifecycle hooks to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<super::schema::Oci>"))]
    pub hooks: Option<Hooks>,
    /// Annotations to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `kind: RuntimeSpecEditConfig`: runtime-spec edits for the containers using the claim
/// (subject to the node's admin policy, see [`crate::policy`]).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeSpecEditConfig {
    /// The OCI runtime-spec fragment.
    pub spec: RuntimeSpecFragment,
}

/// Path of a map entry: `parent["key"]` (the key Debug-escaped, so odd bytes stay visible).
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    format!("{parent}[{key:?}]")
}

/// Checks a `unified` key: `<controller>.<file>` with a known cgroup v2 controller, only
/// `[A-Za-z0-9_.]`, no empty segment, not `cgroup.*`, at most [`UNIFIED_KEY_MAX`] bytes.
/// The key is checked exactly as decoded (escapes already resolved), never normalised.
pub fn validate_unified_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > UNIFIED_KEY_MAX {
        return Err(format!(
            "key is {} bytes, more than the maximum {UNIFIED_KEY_MAX}",
            key.len()
        ));
    }
    if key.contains('/') {
        return Err(
            "key must not contain '/': keys name files in the container's own cgroup".into(),
        );
    }
    if key.contains("..") {
        return Err("key must not contain \"..\"".into());
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '.'))
    {
        return Err(format!(
            "key contains {c:?}; only ASCII letters, digits, '_' and '.' are allowed"
        ));
    }
    let Some((controller, file)) = key.split_once('.') else {
        return Err("key must be <controller>.<file> (e.g. io.max)".into());
    };
    if controller == "cgroup" {
        return Err("cgroup.* files are managed by the runtime and cannot be set".into());
    }
    if !UNIFIED_CONTROLLERS.contains(&controller) {
        return Err(format!(
            "unknown cgroup v2 controller {controller:?} (known: {})",
            UNIFIED_CONTROLLERS.join(", ")
        ));
    }
    if file.is_empty() || file.ends_with('.') {
        return Err("key must be <controller>.<file> with no empty part".into());
    }
    Ok(())
}

/// Checks a `unified` value: at most [`UNIFIED_VALUE_MAX`] bytes, one line, no NUL.
pub fn validate_unified_value(value: &str) -> Result<(), String> {
    if value.len() > UNIFIED_VALUE_MAX {
        return Err(format!(
            "value is {} bytes, more than the maximum {UNIFIED_VALUE_MAX}",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err("value must not contain NUL".into());
    }
    if value.contains(['\n', '\r']) {
        return Err("value must be a single line".into());
    }
    Ok(())
}

/// Checks an environment entry `NAME=value`: a non-empty name without NUL, bounded length.
pub fn validate_env_entry(entry: &str) -> Result<(), String> {
    if entry.len() > ENV_ENTRY_MAX {
        return Err(format!(
            "entry is {} bytes, more than the maximum {ENV_ENTRY_MAX}",
            entry.len()
        ));
    }
    if entry.contains('\0') {
        return Err("entry must not contain NUL".into());
    }
    match entry.split_once('=') {
        Some((name, _)) if !name.is_empty() => Ok(()),
        _ => Err(format!("{entry:?} is not NAME=value")),
    }
}

impl RuntimeSpecFragment {
    /// Semantic checks (independent of the admin policy). `path` is where it sits (`spec`).
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if let Some(unified) = self
            .linux
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.unified().as_ref())
        {
            let up = join(path, "linux.resources.unified");
            if unified.len() > UNIFIED_MAX_ENTRIES {
                return Err(invalid(
                    up,
                    format!(
                        "{} entries, more than the maximum {UNIFIED_MAX_ENTRIES}",
                        unified.len()
                    ),
                ));
            }
            // Sorted, so the first error reported does not depend on hash order.
            let mut keys: Vec<&String> = unified.keys().collect();
            keys.sort();
            for k in keys {
                let kp = key_path(&up, k);
                validate_unified_key(k).map_err(|m| invalid(&kp, m))?;
                if let Some(v) = unified.get(k) {
                    validate_unified_value(v).map_err(|m| invalid(&kp, m))?;
                }
            }
        }
        if let Some(env) = self.process.as_ref().and_then(|p| p.env.as_ref()) {
            let ep = join(path, "process.env");
            for (i, e) in env.iter().enumerate() {
                validate_env_entry(e).map_err(|m| invalid(index(&ep, i), m))?;
            }
        }
        if let Some(adj) = self.process.as_ref().and_then(|p| p.oom_score_adj)
            && !(-1000..=1000).contains(&adj)
        {
            return Err(invalid(
                join(path, "process.oomScoreAdj"),
                format!("{adj} is outside -1000..=1000"),
            ));
        }
        Ok(())
    }
}

impl RuntimeSpecEditConfig {
    /// Semantic checks with field paths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.spec.validate("spec")
    }
}
