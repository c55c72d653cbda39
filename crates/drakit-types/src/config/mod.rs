//! The claim-configuration API, `apiVersion: drakit.dev/v1alpha1`.
//!
//! Claims (and DeviceClasses) carry opaque parameters for a drakit driver. This module decodes
//! them strictly and totally: any byte string gives either a [`ClaimConfig`] or a
//! [`ConfigError`] that names the claim, the config entry and the field path, e.g.
//! `claim ns/name: config[1] (FromClaim) netdev.mtu: 70000 is above the maximum 65535`.
//!
//! Decoding steps (all in [`decode_parameters`]):
//! 1. at most [`MAX_PARAMETERS_BYTES`] (the API server's limit for `opaque.parameters`);
//! 2. UTF-8, JSON, **no duplicate keys** in any object (checked while parsing, no extra pass);
//! 3. a JSON object with `apiVersion: drakit.dev/v1alpha1` and a `kind` (or, for the original
//!    netdev driver's configs, a legacy `type`: `netdev` → NetdevConfig, `rdma` → RdmaConfig,
//!    `combo`/`roce` → RoceConfig);
//! 4. typed decoding with unknown fields refused at every depth (serde `deny_unknown_fields`;
//!    inside oci-spec types, which accept unknown keys, by comparing the input tree with the
//!    re-encoded one), errors located with `serde_path_to_error`;
//! 5. semantic validation (ranges, formats, fields that do not apply to the chosen link kind,
//!    `unified` keys), each error with its own path.
//!
//! [`ClaimConfig`] serialises back to canonical JSON ([`ClaimConfig::to_json`]) with
//! `apiVersion` and `kind` set, so a validated config can be handed to a backend, which decodes
//! it again with [`ClaimConfig::from_json`].
//!
//! Several configs for one request are merged by [`merge_for_request`]; see there for the order.

mod cni;
mod cpu;
mod error;
pub mod json;
mod net;
mod netdev;
mod rdma;
mod runtime;
#[cfg(feature = "schema")]
pub mod schema;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use cni::{CniConfig, CniNetworkList, CniPlugin, MAX_PLUGINS};
pub use cpu::{CoreType, CpuConfig, MAX_CPU_COUNT, NumaAlignment, SmtPolicy};
pub use error::{ClaimRef, ConfigError, ConfigErrorDetail, ConfigSource, EntryRef, Origin, Reason};
pub use net::{GatewayAddr, IFNAME_MAX, InterfaceAddress, InterfaceName, IpPrefix, MacAddr};
pub use netdev::{
    AttachMode, MAX_ADDRESSES, MAX_ROUTES, MTU_MAX, MTU_MIN, NetdevConfig, NetdevKind, NetdevMode,
    NetdevSpec, PKey, Route,
};
pub use rdma::{RdmaConfig, RdmaKind, RdmaSpec, RoceConfig};
pub use runtime::{
    ENV_ENTRY_MAX, ProcessFragment, RuntimeSpecEditConfig, RuntimeSpecFragment,
    UNIFIED_CONTROLLERS, UNIFIED_KEY_MAX, UNIFIED_MAX_ENTRIES, UNIFIED_VALUE_MAX,
    validate_env_entry, validate_unified_key, validate_unified_value,
};

use error::invalid;

/// The one supported `apiVersion`.
pub const API_VERSION: &str = "drakit.dev/v1alpha1";
/// Largest raw parameters accepted (`OpaqueParametersMaxLength` in resource.k8s.io).
pub const MAX_PARAMETERS_BYTES: usize = 10 * 1024;
/// Largest re-encoded config accepted by [`ClaimConfig::from_json`] and
/// [`RuntimeSpecFragment::from_json`]: a merge of up to 64 entries (32 class + 32 claim configs)
/// can legitimately be larger than one entry, and re-encoding may add defaulted fields.
pub const MAX_ENCODED_BYTES: usize = 64 * MAX_PARAMETERS_BYTES;

const KIND_LIST: &str =
    "NetdevConfig, RdmaConfig, RoceConfig, CniConfig, CpuConfig, RuntimeSpecEditConfig";

/// The config kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigKind {
    /// `NetdevConfig`
    Netdev,
    /// `RdmaConfig`
    Rdma,
    /// `RoceConfig`
    Roce,
    /// `CniConfig`
    Cni,
    /// `CpuConfig`
    Cpu,
    /// `RuntimeSpecEditConfig`
    RuntimeSpecEdit,
}

impl ConfigKind {
    /// Every kind.
    pub const ALL: [ConfigKind; 6] = [
        Self::Netdev,
        Self::Rdma,
        Self::Roce,
        Self::Cni,
        Self::Cpu,
        Self::RuntimeSpecEdit,
    ];

    /// The `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netdev => "NetdevConfig",
            Self::Rdma => "RdmaConfig",
            Self::Roce => "RoceConfig",
            Self::Cni => "CniConfig",
            Self::Cpu => "CpuConfig",
            Self::RuntimeSpecEdit => "RuntimeSpecEditConfig",
        }
    }

    /// Parses a `kind` string (exact spelling).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Maps the legacy `type` of the original netdev driver.
    pub fn from_legacy_type(s: &str) -> Option<Self> {
        match s {
            "netdev" => Some(Self::Netdev),
            "rdma" => Some(Self::Rdma),
            "combo" | "roce" => Some(Self::Roce),
            _ => None,
        }
    }
}

/// Which drakit driver a config kind belongs to (driver names are configurable, so this is
/// the concern, not the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Concern {
    /// Network interfaces, RDMA, RoCE, CNI (`net.drakit.dev` by default).
    Net,
    /// Exclusive CPUs (`cpu.drakit.dev` by default).
    Cpu,
    /// Runtime-spec edits (`runtime.drakit.dev` by default).
    Runtime,
}

impl ConfigKind {
    /// The driver concern that accepts this kind; a driver should refuse configs of another
    /// concern's kind.
    pub fn concern(self) -> Concern {
        match self {
            Self::Netdev | Self::Rdma | Self::Roce | Self::Cni => Concern::Net,
            Self::Cpu => Concern::Cpu,
            Self::RuntimeSpecEdit => Concern::Runtime,
        }
    }
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded and validated claim config.
// One value per claim request, never stored in bulk: the size of the runtime-spec variant
// (oci-spec's `Linux` is large) is not worth a box on every access.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimConfig {
    /// `NetdevConfig`
    Netdev(NetdevConfig),
    /// `RdmaConfig`
    Rdma(RdmaConfig),
    /// `RoceConfig`
    Roce(RoceConfig),
    /// `CniConfig`
    Cni(CniConfig),
    /// `CpuConfig`
    Cpu(CpuConfig),
    /// `RuntimeSpecEditConfig`
    RuntimeSpecEdit(RuntimeSpecEditConfig),
}

#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    inner: &'a T,
}

impl Serialize for ClaimConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind().as_str();
        macro_rules! tagged {
            ($inner:expr) => {
                Tagged {
                    api_version: API_VERSION,
                    kind,
                    inner: $inner,
                }
                .serialize(s)
            };
        }
        match self {
            Self::Netdev(c) => tagged!(c),
            Self::Rdma(c) => tagged!(c),
            Self::Roce(c) => tagged!(c),
            Self::Cni(c) => tagged!(c),
            Self::Cpu(c) => tagged!(c),
            Self::RuntimeSpecEdit(c) => tagged!(c),
        }
    }
}

impl ClaimConfig {
    /// The kind.
    pub fn kind(&self) -> ConfigKind {
        match self {
            Self::Netdev(_) => ConfigKind::Netdev,
            Self::Rdma(_) => ConfigKind::Rdma,
            Self::Roce(_) => ConfigKind::Roce,
            Self::Cni(_) => ConfigKind::Cni,
            Self::Cpu(_) => ConfigKind::Cpu,
            Self::RuntimeSpecEdit(_) => ConfigKind::RuntimeSpecEdit,
        }
    }

    /// Runs the semantic checks again (decoding already did).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Netdev(c) => c.validate(),
            Self::Rdma(c) => c.validate(),
            Self::Roce(c) => c.validate(),
            Self::Cni(c) => c.validate(),
            Self::Cpu(c) => c.validate(),
            Self::RuntimeSpecEdit(c) => c.validate(),
        }
    }

    /// Canonical JSON: compact, object keys sorted at every level, unset optional fields
    /// omitted, `apiVersion` and `kind` always present.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.to_value()?)
    }

    /// Canonical JSON as a [`Value`].
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self).map(json::sorted)
    }

    /// The kind's own object without `apiVersion`/`kind`.
    fn to_inner_value(&self) -> Result<Value, ConfigError> {
        let v = match self {
            Self::Netdev(c) => serde_json::to_value(c),
            Self::Rdma(c) => serde_json::to_value(c),
            Self::Roce(c) => serde_json::to_value(c),
            Self::Cni(c) => serde_json::to_value(c),
            Self::Cpu(c) => serde_json::to_value(c),
            Self::RuntimeSpecEdit(c) => serde_json::to_value(c),
        };
        v.map_err(|e| invalid("", format!("cannot re-encode the config: {e}")))
    }

    /// Decodes JSON without claim context (a backend re-reading a config the kubelet plugin
    /// already validated). Same rules as [`decode_parameters`], except the size limit is
    /// [`MAX_ENCODED_BYTES`] (a merged config may be larger than one entry).
    pub fn from_json(raw: &[u8]) -> Result<Self, ConfigError> {
        decode(raw, MAX_ENCODED_BYTES)
    }

    /// The netdev part, for kinds that have one (NetdevConfig, RoceConfig).
    pub fn netdev(&self) -> Option<&NetdevSpec> {
        match self {
            Self::Netdev(c) => Some(&c.netdev),
            Self::Roce(c) => Some(&c.netdev),
            _ => None,
        }
    }
}

/// Checks size, UTF-8, JSON (no duplicate keys) and that the top level is an object.
pub fn parse_parameters(raw: &[u8]) -> Result<Map<String, Value>, ConfigError> {
    parse_limited(raw, MAX_PARAMETERS_BYTES)
}

fn parse_limited(raw: &[u8], max: usize) -> Result<Map<String, Value>, ConfigError> {
    if raw.len() > max {
        return Err(ConfigError::new(
            "",
            Reason::TooLarge {
                len: raw.len(),
                max,
            },
        ));
    }
    match json::parse_strict_bytes(raw)? {
        Value::Object(m) => Ok(m),
        other => Err(ConfigError::new(
            "",
            Reason::NotAnObject(json::type_name(&other)),
        )),
    }
}

/// Checks `apiVersion` and finds the kind (`kind`, else the legacy `type`).
pub fn resolve_kind(obj: &Map<String, Value>) -> Result<ConfigKind, ConfigError> {
    match obj.get("apiVersion") {
        None => {
            return Err(ConfigError::new(
                "apiVersion",
                Reason::MissingApiVersion {
                    expected: API_VERSION,
                },
            ));
        }
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => {
            return Err(ConfigError::new(
                "apiVersion",
                Reason::WrongApiVersion {
                    found: other.to_string(),
                    expected: API_VERSION,
                },
            ));
        }
    }
    match obj.get("kind") {
        Some(Value::String(k)) => ConfigKind::parse(k).ok_or_else(|| {
            ConfigError::new(
                "kind",
                Reason::UnknownKind {
                    found: format!("{k:?}"),
                    expected: KIND_LIST,
                },
            )
        }),
        Some(other) => Err(ConfigError::new(
            "kind",
            Reason::UnknownKind {
                found: other.to_string(),
                expected: KIND_LIST,
            },
        )),
        None => match obj.get("type") {
            None => Err(ConfigError::new("kind", Reason::MissingKind(KIND_LIST))),
            Some(Value::String(t)) => ConfigKind::from_legacy_type(t).ok_or_else(|| {
                invalid(
                    "type",
                    format!(
                        "legacy type {t:?} names no kind (netdev, rdma, combo or roce); set kind to one of {KIND_LIST}"
                    ),
                )
            }),
            Some(other) => Err(invalid(
                "type",
                format!("must be a string, found {}", json::type_name(other)),
            )),
        },
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let msg = e.into_inner().to_string();
        ConfigError::new(path, Reason::Decode(msg))
    })
}

/// Decodes and validates an object of a known kind (`apiVersion`/`kind` are removed first).
pub fn decode_object(
    kind: ConfigKind,
    mut obj: Map<String, Value>,
) -> Result<ClaimConfig, ConfigError> {
    obj.remove("apiVersion");
    obj.remove("kind");
    let input = Value::Object(obj);
    // `typed` consumes its input; keep a copy to compare with the re-encoded result.
    let copy = input.clone();
    let cfg = match kind {
        ConfigKind::Netdev => ClaimConfig::Netdev(typed(input)?),
        ConfigKind::Rdma => ClaimConfig::Rdma(typed(input)?),
        ConfigKind::Roce => ClaimConfig::Roce(typed(input)?),
        ConfigKind::Cni => ClaimConfig::Cni(typed(input)?),
        ConfigKind::Cpu => ClaimConfig::Cpu(typed(input)?),
        ConfigKind::RuntimeSpecEdit => ClaimConfig::RuntimeSpecEdit(typed(input)?),
    };
    // oci-spec types (inside RuntimeSpecEditConfig) accept unknown keys, and serde derive
    // accepts a struct written as an array: both show up as a difference here.
    let out = cfg.to_inner_value()?;
    match json::first_mismatch(&copy, &out, "") {
        None => {}
        Some(json::Mismatch::Dropped(p)) => {
            let field = p.rsplit('.').next().unwrap_or(&p).to_string();
            return Err(ConfigError::new(p, Reason::UnknownField(field)));
        }
        Some(json::Mismatch::NotObject(p, found)) => {
            return Err(ConfigError::new(
                p,
                Reason::Decode(format!("expected an object, found {found}")),
            ));
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

fn decode(raw: &[u8], max: usize) -> Result<ClaimConfig, ConfigError> {
    let obj = parse_limited(raw, max)?;
    let kind = resolve_kind(&obj)?;
    decode_object(kind, obj)
}

/// The decoding entry point: one config entry of a claim (`status.allocation.devices.config[
/// index]`, from `source`), raw `opaque.parameters` bytes → a validated config, or an error
/// naming the claim, the entry and the field.
pub fn decode_parameters(
    claim: &ClaimRef,
    index: usize,
    source: ConfigSource,
    raw: &[u8],
) -> Result<ClaimConfig, ConfigError> {
    decode(raw, MAX_PARAMETERS_BYTES)
        .map_err(|e| e.with_context(Some(claim), &Origin::Entry(EntryRef { index, source })))
}

/// One opaque config entry of a claim's allocation, as the caller found it.
#[derive(Debug, Clone, Copy)]
pub struct ConfigEntry<'a> {
    /// `FromClass` or `FromClaim`.
    pub source: ConfigSource,
    /// `opaque.driver`; entries for other drivers are skipped.
    pub driver: &'a str,
    /// `requests`: the request names it applies to (`req` or `req/sub`); empty means all.
    pub requests: &'a [String],
    /// `opaque.parameters`, raw JSON.
    pub parameters: &'a [u8],
}

/// Whether a config whose `requests` list is `requests` applies to `request` (a request name
/// as in the allocation result: `req`, or `req/sub` for a subrequest). An empty list applies to
/// every request; an entry `req` also applies to all of `req`'s subrequests; an entry
/// `req/sub` applies to that subrequest only.
pub fn request_matches(requests: &[String], request: &str) -> bool {
    if requests.is_empty() {
        return true;
    }
    let parent = request.split_once('/').map(|(p, _)| p);
    requests
        .iter()
        .any(|r| r == request || Some(r.as_str()) == parent)
}

/// Collects the configs for `driver` that apply to `request`, merges them and decodes the
/// result. `Ok(None)` when none applies.
///
/// Order: class configs (`FromClass`) first, then claim configs (`FromClaim`), each group in the
/// order of `entries` (the order of `status.allocation.devices.config`); later wins. Error
/// messages name entries by their index in `entries`.
///
/// Merge: every applicable entry is checked on its own for size, JSON, duplicate keys,
/// apiVersion and kind; all must resolve to the same kind, otherwise the request is refused with
/// [`Reason::KindConflict`] naming the first entry and the first that disagrees (drakit cannot
/// apply e.g. a NetdevConfig and a CniConfig to one device). The objects are then combined
/// with JSON merge patch (RFC 7386: a later entry's keys override, objects merge key by key,
/// arrays and scalars replace, `null` removes a key), and the result is decoded and validated
/// as a whole, so a class can set defaults (`netdev.parent`, `netdev.mode`) that a claim
/// completes (`netdev.interfaceName`, `netdev.addresses`). A lone entry is decoded as is.
pub fn merge_for_request(
    claim: &ClaimRef,
    driver: &str,
    request: &str,
    entries: &[ConfigEntry<'_>],
) -> Result<Option<ClaimConfig>, ConfigError> {
    let mut applicable: Vec<(EntryRef, &ConfigEntry<'_>)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.driver == driver && request_matches(e.requests, request))
        .map(|(index, e)| {
            (
                EntryRef {
                    index,
                    source: e.source,
                },
                e,
            )
        })
        .collect();
    // Stable: keeps list order within each source.
    applicable.sort_by_key(|(r, _)| r.source);
    let mut first: Option<(EntryRef, ConfigKind)> = None;
    let mut merged = Value::Object(Map::new());
    for (r, e) in &applicable {
        let ctx = |err: ConfigError| err.with_context(Some(claim), &Origin::Entry(*r));
        let obj = parse_parameters(e.parameters).map_err(ctx)?;
        let kind = resolve_kind(&obj).map_err(ctx)?;
        match first {
            None => first = Some((*r, kind)),
            Some((f, fk)) if fk != kind => {
                return Err(ConfigError::new(
                    "kind",
                    Reason::KindConflict {
                        first: f,
                        first_kind: fk.as_str(),
                        second: *r,
                        second_kind: kind.as_str(),
                    },
                )
                .with_context(
                    Some(claim),
                    &Origin::Merged {
                        request: request.to_string(),
                        entries: applicable.iter().map(|(r, _)| *r).collect(),
                    },
                ));
            }
            Some(_) => {}
        }
        if applicable.len() == 1 {
            // A lone entry is decoded as is: a merge patch would drop its `null` members
            // (RFC 7386: null removes), so an unknown `"bogus": null` would pass here while
            // decode_parameters refuses it.
            merged = Value::Object(obj);
        } else {
            json::merge_patch(&mut merged, &Value::Object(obj));
        }
    }
    let Some((_, kind)) = first else {
        return Ok(None);
    };
    let origin = if applicable.len() == 1 {
        Origin::Entry(applicable[0].0)
    } else {
        Origin::Merged {
            request: request.to_string(),
            entries: applicable.iter().map(|(r, _)| *r).collect(),
        }
    };
    let Value::Object(obj) = merged else {
        return Err(
            invalid("", "merged config is not an object").with_context(Some(claim), &origin)
        );
    };
    decode_object(kind, obj)
        .map(Some)
        .map_err(|e| e.with_context(Some(claim), &origin))
}

impl RuntimeSpecFragment {
    /// Decodes a bare fragment (the `spec` object, as the kubelet plugin hands it to the NRI
    /// sidecar) with the same strictness as a config: at most [`MAX_ENCODED_BYTES`], UTF-8,
    /// no duplicate keys, no unknown fields, semantic checks. Paths start with `spec`.
    pub fn from_json(raw: &[u8]) -> Result<Self, ConfigError> {
        let obj = parse_limited(raw, MAX_ENCODED_BYTES)?;
        let mut wrapper = Map::new();
        wrapper.insert("spec".into(), Value::Object(obj));
        match decode_object(ConfigKind::RuntimeSpecEdit, wrapper)? {
            ClaimConfig::RuntimeSpecEdit(c) => Ok(c.spec),
            _ => Err(invalid("spec", "not a runtime-spec fragment")),
        }
    }

    /// Canonical JSON of the fragment (keys sorted at every level).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&json::sorted(serde_json::to_value(self)?))
    }
}

impl<'de> Deserialize<'de> for ClaimConfig {
    /// Lenient entry for configs embedded in other documents: decodes a JSON value with the
    /// same rules as [`decode_parameters`], except that duplicate keys cannot be seen here
    /// (the outer parser already collapsed them) and there is no size limit.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let Value::Object(obj) = v else {
            return Err(serde::de::Error::custom(Reason::NotAnObject(
                json::type_name(&v),
            )));
        };
        let kind = resolve_kind(&obj).map_err(serde::de::Error::custom)?;
        decode_object(kind, obj).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_deserialize_uses_the_same_rules() {
        let ok: ClaimConfig = serde_json::from_str(
            r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"CpuConfig","count":2}"#,
        )
        .unwrap();
        assert_eq!(ok.kind().concern(), Concern::Cpu);
        let e = serde_json::from_str::<ClaimConfig>(
            r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"CpuConfig","count":0}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("count: must be at least 1"), "{e}");
    }

    #[test]
    fn api_version_matches_the_shared_constant() {
        assert_eq!(API_VERSION, crate::constants::CONFIG_API_GROUP_VERSION);
    }

    #[test]
    fn bare_fragment_round_trips() {
        let raw = br#"{"linux":{"resources":{"unified":{"io.max":"8:0 rbps=1"}}},"process":{"env":["A=1"]}}"#;
        let f = RuntimeSpecFragment::from_json(raw).unwrap();
        let again = RuntimeSpecFragment::from_json(&f.to_json().unwrap()).unwrap();
        assert_eq!(f, again);
        let e =
            RuntimeSpecFragment::from_json(br#"{"linux":{"sysctl":{},"bogus":1}}"#).unwrap_err();
        assert_eq!(e.path(), "spec.linux.bogus");
        let e = RuntimeSpecFragment::from_json(br#"{"process":{"env":[],"env":[]}}"#).unwrap_err();
        assert_eq!(e.reason(), &Reason::DuplicateKey("env".into()));
    }
}
