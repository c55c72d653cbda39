//! Minimum-version computation and the checks a CDI library applies when it loads a spec, done
//! before the spec is written so that a spec that would not load is an error at build time.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::types::{ContainerEdits, Spec};

/// A known CDI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CdiVersion {
    V0_3_0,
    V0_4_0,
    V0_5_0,
    V0_6_0,
    V0_7_0,
    V0_8_0,
    V1_0_0,
    V1_1_0,
}

impl CdiVersion {
    /// The newest version this crate knows (and the newest the CDI libraries know).
    pub const LATEST: CdiVersion = CdiVersion::V1_1_0;

    /// The version as written in `cdiVersion` (no leading `v`).
    pub fn as_str(self) -> &'static str {
        match self {
            CdiVersion::V0_3_0 => "0.3.0",
            CdiVersion::V0_4_0 => "0.4.0",
            CdiVersion::V0_5_0 => "0.5.0",
            CdiVersion::V0_6_0 => "0.6.0",
            CdiVersion::V0_7_0 => "0.7.0",
            CdiVersion::V0_8_0 => "0.8.0",
            CdiVersion::V1_0_0 => "1.0.0",
            CdiVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a declared version (a leading `v` is tolerated). 0.1.0 and 0.2.0 are known to the
    /// libraries but older than anything this crate writes, so they are rejected here.
    pub fn parse(s: &str) -> Option<CdiVersion> {
        let s = s.strip_prefix('v').unwrap_or(s);
        [
            CdiVersion::V0_3_0,
            CdiVersion::V0_4_0,
            CdiVersion::V0_5_0,
            CdiVersion::V0_6_0,
            CdiVersion::V0_7_0,
            CdiVersion::V0_8_0,
            CdiVersion::V1_0_0,
            CdiVersion::V1_1_0,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl fmt::Display for CdiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The oldest CDI version that can express `spec`, following the "required version" table of
/// the CDI specification (and the Go and Rust CDI libraries that enforce it).
pub fn minimum_version(spec: &Spec) -> CdiVersion {
    let edits = || ContainerEdits::iter_all(spec);
    let (_, class) = split_kind(&spec.kind);

    let v110 = edits().any(|e| {
        !e.net_devices.is_empty()
            || e.intel_rdt
                .as_ref()
                .is_some_and(|r| r.schemata.is_some() || r.enable_monitoring)
    });
    if v110 {
        return CdiVersion::V1_1_0;
    }
    // 0.8.0 and 1.0.0 changed no spec content.
    if edits().any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()) {
        return CdiVersion::V0_7_0;
    }
    if !spec.annotations.is_empty()
        || spec.devices.iter().any(|d| !d.annotations.is_empty())
        || class.contains('.')
    {
        return CdiVersion::V0_6_0;
    }
    if edits().any(|e| {
        e.device_nodes
            .iter()
            .any(|n| n.host_path.as_deref().is_some_and(|p| !p.is_empty()))
    }) || spec
        .devices
        .iter()
        .any(|d| d.name.chars().next().is_some_and(|c| c.is_ascii_digit()))
    {
        return CdiVersion::V0_5_0;
    }
    if edits().any(|e| {
        e.mounts
            .iter()
            .any(|m| m.kind.as_deref().is_some_and(|t| !t.is_empty()))
    }) {
        return CdiVersion::V0_4_0;
    }
    CdiVersion::V0_3_0
}

/// A validation failure: the field path inside the spec and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// e.g. `devices[0].containerEdits.env[1]`.
    pub field: String,
    pub reason: String,
}

impl Invalid {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn split_kind(kind: &str) -> (&str, &str) {
    kind.split_once('/').unwrap_or(("", kind))
}

/// Checks a vendor (`net.drakit.dev`) or class (`claim`) name: first character a letter, last a
/// letter or digit, the rest letters, digits, `_`, `-` or `.`; at most 253 (vendor) or 63
/// (class) characters as the specification asks.
pub fn validate_vendor(vendor: &str) -> Result<(), String> {
    validate_vendor_or_class(vendor, 253)
}

/// See [`validate_vendor`].
pub fn validate_class(class: &str) -> Result<(), String> {
    validate_vendor_or_class(class, 63)
}

fn validate_vendor_or_class(name: &str, max: usize) -> Result<(), String> {
    let b = name.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return Err("empty name".to_string());
    };
    if !first.is_ascii_alphabetic() {
        return Err(format!("{name:?} must start with a letter"));
    }
    if !last.is_ascii_alphanumeric() {
        return Err(format!("{name:?} must end with a letter or digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{name:?} contains {c:?} (allowed: letters, digits, '_', '-', '.')"
        ));
    }
    if b.len() > max {
        return Err(format!("{name:?} is longer than {max} characters"));
    }
    Ok(())
}

/// Checks a device name: first and last character a letter or digit, the rest letters, digits,
/// `_`, `-`, `.` or `:`.
pub fn validate_device_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return Err("empty device name".to_string());
    };
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "device name {name:?} must start with a letter or digit"
        ));
    }
    if !last.is_ascii_alphanumeric() {
        return Err(format!(
            "device name {name:?} must end with a letter or digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "device name {name:?} contains {c:?} (allowed: letters, digits, '_', '-', '.', ':')"
        ));
    }
    Ok(())
}

/// Checks a `kind` (`vendor/class`).
pub fn validate_kind(kind: &str) -> Result<(), String> {
    let Some((vendor, class)) = kind.split_once('/') else {
        return Err(format!("kind {kind:?} is not of the form vendor/class"));
    };
    validate_vendor(vendor).map_err(|e| format!("vendor of kind {kind:?}: {e}"))?;
    validate_class(class).map_err(|e| format!("class of kind {kind:?}: {e}"))
}

/// Checks one `NAME=value` environment entry.
pub fn validate_env_entry(entry: &str) -> Result<(), String> {
    match entry.split_once('=') {
        Some((name, _)) if !name.is_empty() => {
            if entry.contains('\0') {
                Err(format!("environment entry {entry:?} contains a NUL byte"))
            } else {
                Ok(())
            }
        }
        _ => Err(format!(
            "environment entry {entry:?} must be NAME=value with a non-empty NAME"
        )),
    }
}

const HOOK_NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Checks a Linux interface name the way the kernel does: 1–15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace.
pub fn validate_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".to_string());
    }
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(format!(
            "interface name {name:?} contains '/', ':', a NUL or whitespace"
        ));
    }
    Ok(())
}

/// Checks annotation keys like Kubernetes does (optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters) and the total size (256 KiB).
pub fn validate_annotations(
    annotations: &BTreeMap<String, String>,
    field: &str,
) -> Result<(), Invalid> {
    let mut total = 0usize;
    for (k, v) in annotations {
        total = total.saturating_add(k.len()).saturating_add(v.len());
        validate_qualified_name(&k.to_ascii_lowercase())
            .map_err(|r| Invalid::new(format!("{field}[{k:?}]"), r))?;
    }
    if total > 256 * 1024 {
        return Err(Invalid::new(
            field,
            format!("annotations take {total} bytes, more than the 262144-byte limit"),
        ));
    }
    Ok(())
}

fn validate_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Err(format!("prefix of key {key:?} must be 1-253 characters"));
        }
        for label in p.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.len() <= 63
                && b.first()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.last()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
            if !ok {
                return Err(format!("prefix of key {key:?} is not a DNS subdomain"));
            }
        }
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok {
        return Err(format!(
            "name part of key {key:?} must be 1-63 characters of letters, digits, '-', '_', '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_edits(e: &ContainerEdits, at: &str) -> Result<(), Invalid> {
    for (i, entry) in e.env.iter().enumerate() {
        validate_env_entry(entry).map_err(|r| Invalid::new(format!("{at}.env[{i}]"), r))?;
    }
    for (i, n) in e.device_nodes.iter().enumerate() {
        let f = format!("{at}.deviceNodes[{i}]");
        if n.path.is_empty() {
            return Err(Invalid::new(format!("{f}.path"), "empty device path"));
        }
        if let Some(t) = &n.kind
            && !matches!(t.as_str(), "" | "b" | "c" | "u" | "p")
        {
            return Err(Invalid::new(
                format!("{f}.type"),
                format!("device type {t:?} is not one of b, c, u, p"),
            ));
        }
        if let Some(p) = &n.permissions
            && !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        {
            return Err(Invalid::new(
                format!("{f}.permissions"),
                format!("permissions {p:?} may only contain r, w and m"),
            ));
        }
    }
    for (i, h) in e.hooks.iter().enumerate() {
        let f = format!("{at}.hooks[{i}]");
        if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
            return Err(Invalid::new(
                format!("{f}.hookName"),
                format!(
                    "hook name {:?} is not one of {}",
                    h.hook_name,
                    HOOK_NAMES.join(", ")
                ),
            ));
        }
        if h.path.is_empty() {
            return Err(Invalid::new(format!("{f}.path"), "empty hook path"));
        }
        for (j, entry) in h.env.iter().enumerate() {
            validate_env_entry(entry).map_err(|r| Invalid::new(format!("{f}.env[{j}]"), r))?;
        }
        if h.timeout == Some(0) {
            return Err(Invalid::new(
                format!("{f}.timeout"),
                "timeout must be greater than zero",
            ));
        }
    }
    for (i, m) in e.mounts.iter().enumerate() {
        let f = format!("{at}.mounts[{i}]");
        if m.host_path.is_empty() {
            return Err(Invalid::new(format!("{f}.hostPath"), "empty host path"));
        }
        if m.container_path.is_empty() {
            return Err(Invalid::new(
                format!("{f}.containerPath"),
                "empty container path",
            ));
        }
    }
    for (i, nd) in e.net_devices.iter().enumerate() {
        let f = format!("{at}.netDevices[{i}]");
        validate_interface_name(&nd.host_interface_name)
            .map_err(|r| Invalid::new(format!("{f}.hostInterfaceName"), r))?;
        validate_interface_name(&nd.name).map_err(|r| Invalid::new(format!("{f}.name"), r))?;
    }
    // The Go library also accepts "/" (the root CLOS); the Rust library refuses it, so a spec
    // with it would not load everywhere: refuse it too.
    if let Some(rdt) = &e.intel_rdt
        && let Some(clos) = &rdt.clos_id
        && (clos.is_empty()
            || clos.len() >= 4096
            || clos == "."
            || clos == ".."
            || clos.contains(['/', '\n', '\0']))
    {
        return Err(Invalid::new(
            format!("{at}.intelRdt.closID"),
            format!(
                "closID {clos:?} must be a valid file name (no '/', newline, NUL; not '.' or '..')"
            ),
        ));
    }
    Ok(())
}

/// Checks everything a CDI library checks when loading `spec` (except `cdiVersion`, see
/// [`validate_spec`]), plus interface-name rules and netDevices uniqueness across the whole
/// spec (all of a spec's edits may end up in one container).
pub fn validate_content(spec: &Spec) -> Result<(), Invalid> {
    validate_kind(&spec.kind).map_err(|r| Invalid::new("kind", r))?;
    validate_annotations(&spec.annotations, "annotations")?;
    validate_edits(&spec.container_edits, "containerEdits")?;
    if spec.devices.is_empty() {
        return Err(Invalid::new("devices", "a spec needs at least one device"));
    }
    let mut names = HashSet::new();
    for (i, d) in spec.devices.iter().enumerate() {
        let at = format!("devices[{i}]");
        validate_device_name(&d.name).map_err(|r| Invalid::new(format!("{at}.name"), r))?;
        if !names.insert(d.name.as_str()) {
            return Err(Invalid::new(
                format!("{at}.name"),
                format!("device name {:?} is used twice", d.name),
            ));
        }
        validate_annotations(&d.annotations, &format!("{at}.annotations"))?;
        if d.container_edits.is_empty() {
            return Err(Invalid::new(
                format!("{at}.containerEdits"),
                "a device needs at least one container edit",
            ));
        }
        validate_edits(&d.container_edits, &format!("{at}.containerEdits"))?;
    }
    let mut hosts = HashSet::new();
    let mut inner = HashSet::new();
    for e in ContainerEdits::iter_all(spec) {
        for nd in &e.net_devices {
            if !hosts.insert(nd.host_interface_name.as_str()) {
                return Err(Invalid::new(
                    "netDevices",
                    format!(
                        "host interface {:?} is listed twice",
                        nd.host_interface_name
                    ),
                ));
            }
            if !inner.insert(nd.name.as_str()) {
                return Err(Invalid::new(
                    "netDevices",
                    format!("container interface name {:?} is used twice", nd.name),
                ));
            }
        }
    }
    Ok(())
}

/// Full check of a spec as a loader would do it: content, and a declared `cdiVersion` that is
/// known and at least [`minimum_version`].
pub fn validate_spec(spec: &Spec) -> Result<(), Invalid> {
    validate_content(spec)?;
    let declared = CdiVersion::parse(&spec.cdi_version).ok_or_else(|| {
        Invalid::new(
            "cdiVersion",
            format!("unknown CDI version {:?}", spec.cdi_version),
        )
    })?;
    let min = minimum_version(spec);
    if declared < min {
        return Err(Invalid::new(
            "cdiVersion",
            format!("the spec uses features of CDI {min} but declares {declared}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_vendor("net.drakit.dev").is_ok());
        assert!(validate_vendor("1net").is_err());
        assert!(validate_vendor("net-").is_err());
        assert!(validate_class("claim").is_ok());
        assert!(validate_class("a/b").is_err());
        assert!(validate_device_name("0abc:1").is_ok());
        assert!(validate_device_name("a b").is_err());
        assert!(validate_device_name("-a").is_err());
        assert!(validate_device_name("").is_err());
        assert!(validate_kind("net.drakit.dev/claim").is_ok());
        assert!(validate_kind("claim").is_err());
        assert!(validate_kind("a/b/c").is_err());
    }

    #[test]
    fn annotation_keys() {
        for ok in ["a", "cdi.k8s.io/x_y", "A.b-C", "drakit.dev/claim-uid"] {
            assert!(
                validate_qualified_name(&ok.to_ascii_lowercase()).is_ok(),
                "{ok}"
            );
        }
        for bad in ["", "/a", "a/", "a/b/c", "-a", "a$", "Exa_mple.com/a"] {
            assert!(validate_qualified_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(CdiVersion::parse("v1.1.0"), Some(CdiVersion::V1_1_0));
        assert_eq!(CdiVersion::parse("1.2.0"), None);
        assert!(CdiVersion::V0_3_0 < CdiVersion::LATEST);
    }
}
