//! The node admin policy that every `RuntimeSpecEditConfig` fragment must pass — at prepare in
//! the kubelet plugin, at CreateContainer in the NRI sidecar and in the admission webhook, so
//! all three give the same answer.
//!
//! # Policy file
//!
//! YAML (usually a ConfigMap mounted into the pods), decoded strictly: unknown keys, wrong types
//! and duplicate keys are errors with their path.
//!
//! ```yaml
//! apiVersion: drakit.dev/v1alpha1
//! kind: RuntimeSpecPolicy
//! default:                       # absent: the built-in default (Policy::default())
//!   allowedFields:               # spec paths (runtime-spec JSON names); a path allows its subtree
//!     - linux.resources.unified
//!     - linux.resources.memory.limit
//!     - process.env
//!   unified:
//!     allowedKeys: ["io.*", "memory.high", "pids.max"]   # globs: * any run, ? one character
//!     maxValueLength: 256
//!     bounds: {memory.high: {min: 1048576}, pids.max: {max: 4096}}
//!   bounds:                      # numeric bounds on other fields, by path
//!     linux.resources.memory.limit: {min: 4194304, max: 68719476736}
//!   mounts: {allowedSources: [/srv/shared], allowedTypes: [tmpfs]}
//!   hooks: {allowedPaths: [/opt/hooks]}
//!   env: {maxEntries: 32}
//! namespaces:
//!   team-a:
//!     mode: extend               # extend (default) or replace
//!     rules:
//!       allowedFields: [mounts]
//!       mounts: {allowedSources: [/srv/team-a]}
//! ```
//!
//! **Per-namespace rules.** `mode: extend` adds the namespace's rules to the default ones: lists
//! (`allowedFields`, `allowedKeys`, `allowedSources`, `allowedTypes`, `allowedPaths`) are
//! appended, bound maps are merged with the namespace's entry winning for the same key, and a
//! scalar (`maxValueLength`, `maxEntries`) the namespace sets replaces the default's.
//! `mode: replace` makes the namespace's rules the whole policy for that namespace (anything it
//! does not set allows nothing). Namespaces not listed get the default.
//!
//! **What is never allowed**, whatever the file says: `unified` keys outside the config rules
//! (unknown controller, `cgroup.*`, `/`, `..`), environment names starting with `DRAKIT_` (in
//! any letter case: those carry drakit's own per-claim data) or not made of printable ASCII,
//! host paths with `..` components or not absolute, a bind mount whose source is not under an
//! allowed source, a hook outside the allowed paths, a device node outside `/dev`, joining
//! another namespace by path.
//!
//! The fragment is checked exactly as decoded (JSON escapes resolved, nothing normalised);
//! decoding itself ([`RuntimeSpecFragment::from_json`]) refuses duplicate keys and unknown
//! fields, so a second spelling of a key cannot hide from the check.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{
    API_VERSION, ConfigError, RuntimeSpecFragment, validate_unified_key, validate_unified_value,
};

/// The `kind` of a policy file.
pub const POLICY_KIND: &str = "RuntimeSpecPolicy";
/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// Reserved environment name prefix (compared without regard to letter case).
pub const RESERVED_ENV_PREFIX: &str = "DRAKIT_";

/// A refused fragment or policy file: the field path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct PolicyError {
    /// Path of the offending field (`spec.mounts[0]`, or a path in the policy file).
    pub path: String,
    /// Why.
    pub reason: String,
}

fn perr(path: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.into(),
        reason: reason.into(),
    }
}

impl From<ConfigError> for PolicyError {
    fn from(e: ConfigError) -> Self {
        perr(e.path(), e.reason().to_string())
    }
}

/// Inclusive numeric bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    /// Smallest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Largest allowed value (a `unified` value `max`, meaning unlimited, is above any bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

/// Rules for `linux.resources.unified`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnifiedRules {
    /// Key globs that may be set (`io.*`, `memory.high`); keys must also pass the config rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_keys: Option<Vec<String>>,
    /// Longest value in bytes (never above the config limit of 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value_length: Option<usize>,
    /// Numeric bounds per key glob; the value must then be an integer (or `max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<BTreeMap<String, Bound>>,
}

/// Rules for `mounts` (when allowed at all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountRules {
    /// Host directories a bind mount may take its source from (the directory or below it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_sources: Option<Vec<String>>,
    /// Non-bind filesystem types that may be mounted (e.g. `tmpfs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_types: Option<Vec<String>>,
}

/// Rules for `hooks` (when allowed at all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HookRules {
    /// Directories hook binaries must live in (the directory or below it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_paths: Option<Vec<String>>,
}

/// Rules for `process.env`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvRules {
    /// Most entries one fragment may add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
}

/// One rule set (the default, or a namespace's). Unset parts mean "nothing" when the set
/// stands alone, "no change" when it extends another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rules {
    /// Spec paths that may be set; each allows its subtree (`linux.resources.memory` allows
    /// `linux.resources.memory.limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_fields: Option<Vec<String>>,
    /// `linux.resources.unified` rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified: Option<UnifiedRules>,
    /// Numeric bounds by spec path (`linux.resources.pids.limit`; list elements included:
    /// `process.rlimits.hard` bounds every rlimit's `hard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<BTreeMap<String, Bound>>,
    /// Mount rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<MountRules>,
    /// Hook rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HookRules>,
    /// Environment rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvRules>,
}

/// How a namespace's rules combine with the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverrideMode {
    /// Add to the default rules (the default).
    #[default]
    Extend,
    /// Replace the default rules.
    Replace,
}

/// A namespace's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceOverride {
    /// extend (default) or replace.
    #[serde(default)]
    pub mode: OverrideMode,
    /// The rules.
    #[serde(default)]
    pub rules: Rules,
}

/// The policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyFile {
    /// `drakit.dev/v1alpha1`.
    pub api_version: String,
    /// `RuntimeSpecPolicy`.
    pub kind: String,
    /// Rules for every namespace without its own; absent: the built-in default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Rules>,
    /// Per-namespace rules.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceOverride>,
}

/// A loaded policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The default rules.
    pub default: Rules,
    /// Namespace overrides.
    pub namespaces: BTreeMap<String, NamespaceOverride>,
}

fn strings(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

impl Rules {
    /// The built-in default: resource fields only.
    pub fn builtin() -> Self {
        Self {
            allowed_fields: strings(&[
                "linux.resources.unified",
                "linux.resources.memory.limit",
                "linux.resources.memory.reservation",
                "linux.resources.memory.swap",
                "linux.resources.memory.swappiness",
                "linux.resources.memory.disableOOMKiller",
                "linux.resources.cpu.shares",
                "linux.resources.cpu.quota",
                "linux.resources.cpu.burst",
                "linux.resources.cpu.period",
                "linux.resources.cpu.idle",
                "linux.resources.pids",
                "linux.resources.hugepageLimits",
                "linux.resources.blockIO",
                "process.rlimits",
                "process.env",
            ]),
            unified: Some(UnifiedRules {
                // cpuset.* is left out: exclusive CPU placement belongs to drakit-cpu.
                allowed_keys: strings(&[
                    "cpu.*",
                    "io.*",
                    "memory.*",
                    "pids.*",
                    "hugetlb.*",
                    "rdma.*",
                    "misc.*",
                ]),
                max_value_length: Some(crate::config::UNIFIED_VALUE_MAX),
                bounds: None,
            }),
            bounds: None,
            mounts: None,
            hooks: None,
            env: Some(EnvRules {
                max_entries: Some(64),
            }),
        }
    }

    fn extended_by(&self, ns: &Rules) -> Rules {
        fn list(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> Option<Vec<String>> {
            match (a, b) {
                (None, None) => None,
                _ => Some(
                    a.iter()
                        .flatten()
                        .chain(b.iter().flatten())
                        .cloned()
                        .collect(),
                ),
            }
        }
        fn bounds(
            a: &Option<BTreeMap<String, Bound>>,
            b: &Option<BTreeMap<String, Bound>>,
        ) -> Option<BTreeMap<String, Bound>> {
            match (a, b) {
                (None, None) => None,
                _ => {
                    let mut m = a.clone().unwrap_or_default();
                    m.extend(b.clone().unwrap_or_default());
                    Some(m)
                }
            }
        }
        let du = self.unified.clone().unwrap_or_default();
        let nu = ns.unified.clone().unwrap_or_default();
        let dm = self.mounts.clone().unwrap_or_default();
        let nm = ns.mounts.clone().unwrap_or_default();
        let dh = self.hooks.clone().unwrap_or_default();
        let nh = ns.hooks.clone().unwrap_or_default();
        let de = self.env.clone().unwrap_or_default();
        let ne = ns.env.clone().unwrap_or_default();
        Rules {
            allowed_fields: list(&self.allowed_fields, &ns.allowed_fields),
            unified: Some(UnifiedRules {
                allowed_keys: list(&du.allowed_keys, &nu.allowed_keys),
                max_value_length: nu.max_value_length.or(du.max_value_length),
                bounds: bounds(&du.bounds, &nu.bounds),
            }),
            bounds: bounds(&self.bounds, &ns.bounds),
            mounts: Some(MountRules {
                allowed_sources: list(&dm.allowed_sources, &nm.allowed_sources),
                allowed_types: list(&dm.allowed_types, &nm.allowed_types),
            }),
            hooks: Some(HookRules {
                allowed_paths: list(&dh.allowed_paths, &nh.allowed_paths),
            }),
            env: Some(EnvRules {
                max_entries: ne.max_entries.or(de.max_entries),
            }),
        }
    }

    fn validate(&self, path: &str) -> Result<(), PolicyError> {
        let join = |k: &str| format!("{path}.{k}");
        for (i, f) in self.allowed_fields.iter().flatten().enumerate() {
            if !valid_field_path(f) {
                return Err(perr(
                    format!("{}[{i}]", join("allowedFields")),
                    format!(
                        "{f:?} is not a fragment field path (process.*, linux.*, mounts, hooks, annotations; runtime-spec JSON names separated by '.')"
                    ),
                ));
            }
        }
        if let Some(u) = &self.unified {
            for (i, k) in u.allowed_keys.iter().flatten().enumerate() {
                if !valid_glob(k) {
                    return Err(perr(
                        format!("{}[{i}]", join("unified.allowedKeys")),
                        format!("{k:?} is not a key glob ([A-Za-z0-9_.*?])"),
                    ));
                }
            }
            if let Some(n) = u.max_value_length
                && n > crate::config::UNIFIED_VALUE_MAX
            {
                return Err(perr(
                    join("unified.maxValueLength"),
                    format!(
                        "{n} is above the config limit {}",
                        crate::config::UNIFIED_VALUE_MAX
                    ),
                ));
            }
            for (k, b) in u.bounds.iter().flatten() {
                if !valid_glob(k) {
                    return Err(perr(
                        format!("{}[{k:?}]", join("unified.bounds")),
                        "not a key glob",
                    ));
                }
                check_bound(b, &format!("{}[{k:?}]", join("unified.bounds")))?;
            }
        }
        for (k, b) in self.bounds.iter().flatten() {
            let p = format!("{}[{k:?}]", join("bounds"));
            if !valid_field_path(k) {
                return Err(perr(p, format!("{k:?} is not a fragment field path")));
            }
            check_bound(b, &p)?;
        }
        let dirs = [
            (
                "mounts.allowedSources",
                self.mounts
                    .as_ref()
                    .and_then(|m| m.allowed_sources.as_ref()),
            ),
            (
                "hooks.allowedPaths",
                self.hooks.as_ref().and_then(|h| h.allowed_paths.as_ref()),
            ),
        ];
        for (name, list) in dirs {
            for (i, d) in list.into_iter().flatten().enumerate() {
                clean_abs_path(d).map_err(|m| perr(format!("{}[{i}]", join(name)), m))?;
            }
        }
        Ok(())
    }
}

/// A fragment field path: runtime-spec JSON names separated by `.`, under a fragment root.
fn valid_field_path(f: &str) -> bool {
    !f.is_empty()
        && f.split('.')
            .all(|seg| !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_alphanumeric()))
        && ["process", "linux", "mounts", "hooks", "annotations"]
            .contains(&f.split('.').next().unwrap_or(""))
}

fn check_bound(b: &Bound, path: &str) -> Result<(), PolicyError> {
    if let (Some(lo), Some(hi)) = (b.min, b.max)
        && lo > hi
    {
        return Err(perr(path, format!("min {lo} is above max {hi}")));
    }
    Ok(())
}

impl Default for Policy {
    /// The built-in policy: resource fields only, for every namespace.
    fn default() -> Self {
        Self {
            default: Rules::builtin(),
            namespaces: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// Loads a policy file (YAML; JSON is YAML too). Errors carry the path in the file.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(perr(
                "",
                format!(
                    "policy file is {} bytes, more than the limit of {MAX_POLICY_BYTES}",
                    text.len()
                ),
            ));
        }
        // Maps decoded straight into a BTreeMap keep the last of two equal keys; the generic
        // YAML value refuses them, so parse once into it for that check.
        serde_yaml::from_str::<serde_yaml::Value>(text)
            .map_err(|e| perr("", format!("invalid YAML: {e}")))?;
        let de = serde_yaml::Deserializer::from_str(text);
        let file: PolicyFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let p = e.path().to_string();
            let p = if p == "." { String::new() } else { p };
            let msg = e.into_inner().to_string();
            // serde_yaml starts its message with the path again ("a.b: ..."); keep it once.
            let msg = match msg.split_once(": ") {
                Some((head, rest)) if !head.contains(' ') && p.starts_with(head) => {
                    rest.to_string()
                }
                _ => msg,
            };
            perr(p, msg)
        })?;
        if file.api_version != API_VERSION {
            return Err(perr(
                "apiVersion",
                format!(
                    "{:?} is not supported (expected {API_VERSION:?})",
                    file.api_version
                ),
            ));
        }
        if file.kind != POLICY_KIND {
            return Err(perr(
                "kind",
                format!("{:?} is not {POLICY_KIND:?}", file.kind),
            ));
        }
        let default = file.default.unwrap_or_else(Rules::builtin);
        default.validate("default")?;
        for (ns, o) in &file.namespaces {
            if ns.is_empty()
                || ns.len() > 63
                || !ns
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            {
                return Err(perr(
                    format!("namespaces[{ns:?}]"),
                    "not a namespace name (DNS label)",
                ));
            }
            o.rules.validate(&format!("namespaces[{ns:?}].rules"))?;
        }
        Ok(Self {
            default,
            namespaces: file.namespaces,
        })
    }

    /// The effective rules for a namespace.
    pub fn rules_for(&self, namespace: &str) -> Rules {
        match self.namespaces.get(namespace) {
            None => self.default.clone(),
            Some(o) => match o.mode {
                OverrideMode::Replace => o.rules.clone(),
                OverrideMode::Extend => self.default.extended_by(&o.rules),
            },
        }
    }
}

/// Checks a fragment for a pod in `namespace` against the policy. Error paths start at `spec`.
pub fn check(
    policy: &Policy,
    namespace: &str,
    fragment: &RuntimeSpecFragment,
) -> Result<(), PolicyError> {
    // The config rules first (unified keys and values, env shape): never waivable.
    fragment.validate("spec")?;
    let rules = policy.rules_for(namespace);
    // Sorted: oci-spec keeps some maps in HashMaps; the first refusal must not depend on hash
    // order.
    let tree = serde_json::to_value(fragment)
        .map(crate::config::json::sorted)
        .map_err(|e| perr("spec", format!("cannot encode the fragment: {e}")))?;
    let allowed: Vec<&str> = rules
        .allowed_fields
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    walk_allowed(&tree, "", "spec", &allowed)?;
    check_unified(fragment, &rules)?;
    check_env(fragment, &rules)?;
    check_mounts(fragment, &rules)?;
    check_hooks(fragment, &rules)?;
    check_linux_paths(fragment)?;
    for (field, b) in rules.bounds.iter().flatten() {
        let mut found = Vec::new();
        values_at(&tree, field, "spec", &mut found);
        for (p, v) in found {
            let n = number(v).ok_or_else(|| perr(&p, "must be a number to be bounded"))?;
            check_in(n, b, &p)?;
        }
    }
    Ok(())
}

/// Checks a decoded claim config: runtime-spec edits go through [`check`], other kinds have
/// nothing the runtime-spec policy governs.
pub fn check_config(
    policy: &Policy,
    namespace: &str,
    config: &crate::config::ClaimConfig,
) -> Result<(), PolicyError> {
    match config {
        crate::config::ClaimConfig::RuntimeSpecEdit(c) => check(policy, namespace, &c.spec),
        _ => Ok(()),
    }
}

/// Decodes a bare fragment strictly and checks it (for the NRI sidecar and the webhook).
pub fn check_json(policy: &Policy, namespace: &str, raw: &[u8]) -> Result<(), PolicyError> {
    let f = RuntimeSpecFragment::from_json(raw)?;
    check(policy, namespace, &f)
}

fn covered(path: &str, allowed: &[&str]) -> bool {
    allowed
        .iter()
        .any(|a| path == *a || (path.starts_with(a) && path.as_bytes().get(a.len()) == Some(&b'.')))
}

fn below(path: &str, allowed: &[&str]) -> bool {
    allowed
        .iter()
        .any(|a| a.starts_with(path) && a.as_bytes().get(path.len()) == Some(&b'.'))
}

fn refusal(field: &str) -> String {
    let what = match field {
        "mounts" => "host mounts are",
        "hooks" => "hooks are",
        "process.capabilities" => "capability changes are",
        "linux.devices" | "linux.resources.devices" => "device access is",
        "linux.namespaces" => "namespace changes are",
        "process.noNewPrivileges" | "process.apparmorProfile" | "process.selinuxLabel" => {
            "security settings are"
        }
        _ => return format!("{field} is not allowed by the node policy"),
    };
    format!("{what} not allowed by the node policy")
}

/// Every set field must lie under an allowed path. `field` is the path without list indices,
/// `shown` the one with them.
fn walk_allowed(v: &Value, field: &str, shown: &str, allowed: &[&str]) -> Result<(), PolicyError> {
    if !field.is_empty() && covered(field, allowed) {
        return Ok(());
    }
    // An empty object or list sets nothing.
    match v {
        Value::Object(m) if m.is_empty() => return Ok(()),
        Value::Array(a) if a.is_empty() => return Ok(()),
        _ => {}
    }
    // The root object is always entered (an empty fragment passes any policy).
    if field.is_empty() || below(field, allowed) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let f = if field.is_empty() {
                        k.clone()
                    } else {
                        format!("{field}.{k}")
                    };
                    walk_allowed(x, &f, &format!("{shown}.{k}"), allowed)?;
                }
                return Ok(());
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk_allowed(x, field, &format!("{shown}[{i}]"), allowed)?;
                }
                return Ok(());
            }
            _ => {}
        }
    }
    let shown = match v {
        Value::Array(a) if !a.is_empty() => format!("{shown}[0]"),
        _ => shown.to_string(),
    };
    let top = field.split('.').take(2).collect::<Vec<_>>().join(".");
    let key = if field.starts_with("process.") || field.starts_with("linux.") {
        if field.starts_with("linux.resources.devices") {
            "linux.resources.devices"
        } else {
            top.as_str()
        }
    } else {
        field.split('.').next().unwrap_or(field)
    };
    Err(perr(shown, refusal(key)))
}

fn values_at<'a>(v: &'a Value, field: &str, shown: &str, out: &mut Vec<(String, &'a Value)>) {
    if field.is_empty() {
        match v {
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    values_at(x, field, &format!("{shown}[{i}]"), out);
                }
            }
            other => out.push((shown.to_string(), other)),
        }
        return;
    }
    let (head, rest) = field.split_once('.').unwrap_or((field, ""));
    match v {
        Value::Object(m) => {
            if let Some(x) = m.get(head) {
                values_at(x, rest, &format!("{shown}.{head}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                values_at(x, field, &format!("{shown}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn number(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

fn check_in(n: i128, b: &Bound, path: &str) -> Result<(), PolicyError> {
    if let Some(lo) = b.min
        && n < i128::from(lo)
    {
        return Err(perr(
            path,
            format!("{n} is below the node policy's minimum {lo}"),
        ));
    }
    if let Some(hi) = b.max
        && n > i128::from(hi)
    {
        return Err(perr(
            path,
            format!("{n} is above the node policy's maximum {hi}"),
        ));
    }
    Ok(())
}

fn valid_glob(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 128
        && g.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'*' | b'?'))
}

/// `*` matches any run (also empty), `?` one byte; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

fn check_unified(f: &RuntimeSpecFragment, rules: &Rules) -> Result<(), PolicyError> {
    let Some(unified) = f
        .linux
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.unified().as_ref())
    else {
        return Ok(());
    };
    let u = rules.unified.clone().unwrap_or_default();
    let mut keys: Vec<&String> = unified.keys().collect();
    keys.sort();
    for k in keys {
        let p = format!("spec.linux.resources.unified[{k:?}]");
        let v = unified.get(k).map(String::as_str).unwrap_or("");
        validate_unified_key(k).map_err(|m| perr(&p, m))?;
        validate_unified_value(v).map_err(|m| perr(&p, m))?;
        if !u.allowed_keys.iter().flatten().any(|g| glob_match(g, k)) {
            return Err(perr(&p, "key is not allowed by the node policy"));
        }
        if let Some(max) = u.max_value_length
            && v.len() > max
        {
            return Err(perr(
                &p,
                format!(
                    "value is {} bytes, more than the node policy's maximum {max}",
                    v.len()
                ),
            ));
        }
        for (g, b) in u.bounds.iter().flatten() {
            if !glob_match(g, k) {
                continue;
            }
            let t = v.trim();
            if t == "max" {
                if b.max.is_some() {
                    return Err(perr(
                        &p,
                        "\"max\" (unlimited) is above the node policy's maximum",
                    ));
                }
                continue;
            }
            let n: i128 = t.parse().map_err(|_| {
                perr(
                    &p,
                    format!("{v:?} is not a number, and the node policy bounds this key"),
                )
            })?;
            check_in(n, b, &p)?;
        }
    }
    Ok(())
}

fn check_env(f: &RuntimeSpecFragment, rules: &Rules) -> Result<(), PolicyError> {
    let Some(env) = f.process.as_ref().and_then(|p| p.env.as_ref()) else {
        return Ok(());
    };
    if let Some(max) = rules.env.as_ref().and_then(|e| e.max_entries)
        && env.len() > max
    {
        return Err(perr(
            "spec.process.env",
            format!(
                "{} entries, more than the node policy's maximum {max}",
                env.len()
            ),
        ));
    }
    for (i, e) in env.iter().enumerate() {
        let p = format!("spec.process.env[{i}]");
        let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(perr(
                &p,
                format!("{name:?} is not an environment name (printable ASCII, no spaces)"),
            ));
        }
        let upper = name.to_ascii_uppercase();
        if upper.starts_with(RESERVED_ENV_PREFIX) {
            return Err(perr(
                &p,
                format!(
                    "{name} is reserved: {RESERVED_ENV_PREFIX}* variables carry drakit's own data"
                ),
            ));
        }
    }
    Ok(())
}

/// A clean absolute path: starts with `/`, no `.`/`..` components, no NUL.
fn clean_abs_path(p: &str) -> Result<(), String> {
    if p.contains('\0') {
        return Err(format!("{p:?} contains NUL"));
    }
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!("{p:?} has a '.' or '..' component"));
    }
    Ok(())
}

fn under_any(path: &Path, dirs: &[String]) -> bool {
    dirs.iter().any(|d| {
        let d = Path::new(d);
        path.starts_with(d)
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    })
}

fn check_mounts(f: &RuntimeSpecFragment, rules: &Rules) -> Result<(), PolicyError> {
    let m = rules.mounts.clone().unwrap_or_default();
    for (i, mnt) in f.mounts.iter().flatten().enumerate() {
        let p = format!("spec.mounts[{i}]");
        let dest = mnt.destination().to_string_lossy();
        clean_abs_path(&dest).map_err(|e| perr(format!("{p}.destination"), e))?;
        let dpath = mnt.destination();
        if dpath == Path::new("/") || dpath.starts_with("/proc") || dpath.starts_with("/sys") {
            return Err(perr(
                format!("{p}.destination"),
                format!(
                    "mounting over {dest} is not allowed (/, /proc and /sys belong to the runtime)"
                ),
            ));
        }
        if let Some(o) = mnt
            .options()
            .iter()
            .flatten()
            .find(|o| matches!(o.as_str(), "shared" | "rshared" | "slave" | "rslave"))
        {
            return Err(perr(
                format!("{p}.options"),
                format!(
                    "propagation {o:?} is not allowed: mounts must not propagate between host and container"
                ),
            ));
        }
        let bind = mnt.typ().as_deref() == Some("bind")
            || mnt
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if bind {
            let src = mnt
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .ok_or_else(|| perr(format!("{p}.source"), "a bind mount needs a source"))?;
            clean_abs_path(&src).map_err(|e| perr(format!("{p}.source"), e))?;
            if !under_any(Path::new(&src), m.allowed_sources.as_deref().unwrap_or(&[])) {
                return Err(perr(
                    format!("{p}.source"),
                    format!("host path {src} is not under a source the node policy allows"),
                ));
            }
        } else {
            let t = mnt.typ().clone().unwrap_or_default();
            if !m.allowed_types.iter().flatten().any(|a| *a == t) {
                return Err(perr(
                    format!("{p}.type"),
                    format!("mount type {t:?} is not allowed by the node policy"),
                ));
            }
        }
    }
    Ok(())
}

fn check_hooks(f: &RuntimeSpecFragment, rules: &Rules) -> Result<(), PolicyError> {
    let Some(h) = &f.hooks else {
        return Ok(());
    };
    let allowed = rules
        .hooks
        .as_ref()
        .and_then(|h| h.allowed_paths.clone())
        .unwrap_or_default();
    #[allow(deprecated)]
    let lists = [
        ("prestart", h.prestart()),
        ("createRuntime", h.create_runtime()),
        ("createContainer", h.create_container()),
        ("startContainer", h.start_container()),
        ("poststart", h.poststart()),
        ("poststop", h.poststop()),
    ];
    for (name, list) in lists {
        for (i, hook) in list.iter().flatten().enumerate() {
            let p = format!("spec.hooks.{name}[{i}].path");
            let path = hook.path().to_string_lossy();
            clean_abs_path(&path).map_err(|e| perr(&p, e))?;
            if !under_any(hook.path(), &allowed) {
                return Err(perr(
                    &p,
                    format!("hook {path} is not under a path the node policy allows"),
                ));
            }
        }
    }
    Ok(())
}

/// Host-escaping values under `linux` that no policy can allow.
fn check_linux_paths(f: &RuntimeSpecFragment) -> Result<(), PolicyError> {
    let Some(l) = &f.linux else {
        return Ok(());
    };
    for (i, d) in l.devices().iter().flatten().enumerate() {
        let p = d.path().to_string_lossy();
        clean_abs_path(&p).map_err(|e| perr(format!("spec.linux.devices[{i}].path"), e))?;
        if !d.path().starts_with("/dev") {
            return Err(perr(
                format!("spec.linux.devices[{i}].path"),
                format!("{p} is not under /dev"),
            ));
        }
    }
    for (i, ns) in l.namespaces().iter().flatten().enumerate() {
        if ns.path().is_some() {
            return Err(perr(
                format!("spec.linux.namespaces[{i}].path"),
                "joining an existing namespace by path is not allowed",
            ));
        }
    }
    if l.cgroups_path().is_some() {
        return Err(perr(
            "spec.linux.cgroupsPath",
            "the cgroup path belongs to the runtime",
        ));
    }
    Ok(())
}

impl fmt::Display for OverrideMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Extend => "extend",
            Self::Replace => "replace",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("io.*", "io.max"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("memory.high", "memory.high"));
        assert!(!glob_match("memory.high", "memory.high2"));
        assert!(glob_match("m?mory.*x", "memory.max"));
        assert!(!glob_match("io.*", "memory.max"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn coverage() {
        let a = ["linux.resources.memory", "process.env"];
        assert!(covered("linux.resources.memory.limit", &a));
        assert!(covered("process.env", &a));
        assert!(!covered("linux.resources.memoryx", &a));
        assert!(below("linux.resources", &a));
        assert!(!below("linux.devices", &a));
    }
}
