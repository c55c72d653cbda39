//! The CDI spec of one prepared claim.

use std::collections::BTreeMap;

use super::types::{ContainerEdits, Device, Spec};
use super::validate::{validate_class, validate_vendor};
use super::{CdiError, CdiVersion};

/// One allocated device of a claim and the edits it brings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimDevice {
    /// The DRA device name from the allocation result (a DNS label, e.g. `eth1`; a pool-qualified
    /// `pool/dev` also works: characters CDI does not allow become `_`).
    pub device: String,
    /// Edits for a container that uses this device (must not be empty: CDI refuses a device
    /// without edits).
    pub edits: ContainerEdits,
    pub annotations: BTreeMap<String, String>,
}

/// A built, validated claim spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSpec {
    pub vendor: String,
    pub class: String,
    pub claim_uid: String,
    pub spec: Spec,
    /// Fully-qualified CDI device ids (`vendor/class=name`), in the order of the input devices:
    /// what NodePrepareResources returns for each device.
    pub device_ids: Vec<String>,
    /// The emitted `cdiVersion`.
    pub version: CdiVersion,
}

/// CDI device name of a claim's device: `claim-<claim uid>-<device>`, every character CDI does
/// not allow in a device name replaced by `_`. The fixed `claim-` prefix keeps the first
/// character a letter (a UID may start with a digit, which would need CDI 0.5.0).
pub fn cdi_device_name(claim_uid: &str, device: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("claim-{}-{}", clean(claim_uid), clean(device))
}

/// `vendor/class=name`.
pub fn qualified_device_id(vendor: &str, class: &str, name: &str) -> String {
    format!("{vendor}/{class}={name}")
}

/// Checks a claim UID for use in file and device names: 1–128 characters of letters, digits,
/// `-` and `.`, not starting with `.` (Kubernetes UIDs are UUIDs).
pub(crate) fn validate_claim_uid(uid: &str) -> Result<(), CdiError> {
    let bad = |reason: &str| CdiError::InvalidName {
        what: "claim UID",
        value: uid.to_string(),
        reason: reason.to_string(),
    };
    if uid.is_empty() || uid.len() > 128 {
        return Err(bad("must be 1-128 characters"));
    }
    if uid.starts_with('.') {
        return Err(bad("must not start with '.'"));
    }
    if !uid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(bad("may only contain letters, digits, '-' and '.'"));
    }
    Ok(())
}

pub(crate) fn check_vendor_class(vendor: &str, class: &str) -> Result<(), CdiError> {
    validate_vendor(vendor).map_err(|reason| CdiError::InvalidName {
        what: "vendor",
        value: vendor.to_string(),
        reason,
    })?;
    validate_class(class).map_err(|reason| CdiError::InvalidName {
        what: "class",
        value: class.to_string(),
        reason,
    })
}

impl ClaimSpec {
    /// Builds and validates the spec of one claim: kind `<vendor>/<class>`, one CDI device per
    /// entry of `devices`, spec-level edits `common` (applied when any of the devices is used),
    /// `cdiVersion` = the minimum the content needs. Deterministic for equal input.
    pub fn build(
        vendor: &str,
        class: &str,
        claim_uid: &str,
        devices: Vec<ClaimDevice>,
        common: ContainerEdits,
    ) -> Result<ClaimSpec, CdiError> {
        check_vendor_class(vendor, class)?;
        validate_claim_uid(claim_uid)?;
        let spec = Spec {
            cdi_version: String::new(),
            kind: format!("{vendor}/{class}"),
            annotations: BTreeMap::new(),
            devices: devices
                .into_iter()
                .map(|d| Device {
                    name: cdi_device_name(claim_uid, &d.device),
                    annotations: d.annotations,
                    container_edits: d.edits,
                })
                .collect(),
            container_edits: common,
        };
        Self::finish(vendor, class, claim_uid, spec)
    }

    /// A spec read back from JSON (as [`ClaimSpec::to_json`] wrote it, e.g. kept in a
    /// checkpoint to rebuild the file): strict decode, the kind must be `<vendor>/<class>`, then
    /// validated and stamped with its minimum version like [`ClaimSpec::build`]. Device names are
    /// kept as they are. `to_json` of the result gives the same bytes for a spec this crate wrote.
    pub fn from_json(
        vendor: &str,
        class: &str,
        claim_uid: &str,
        json: &[u8],
    ) -> Result<ClaimSpec, CdiError> {
        check_vendor_class(vendor, class)?;
        validate_claim_uid(claim_uid)?;
        let spec: Spec = serde_json::from_slice(json).map_err(|error| CdiError::Decode {
            claim_uid: claim_uid.to_string(),
            error,
        })?;
        let kind = format!("{vendor}/{class}");
        if spec.kind != kind {
            return Err(CdiError::InvalidName {
                what: "kind",
                value: spec.kind,
                reason: format!("claim {claim_uid}: expected {kind}"),
            });
        }
        Self::finish(vendor, class, claim_uid, spec)
    }

    /// Validates and stamps `spec` (kind `<vendor>/<class>`) and lists its device ids.
    fn finish(
        vendor: &str,
        class: &str,
        claim_uid: &str,
        mut spec: Spec,
    ) -> Result<ClaimSpec, CdiError> {
        let version = spec.finalize().map_err(|invalid| CdiError::InvalidSpec {
            claim_uid: claim_uid.to_string(),
            kind: spec.kind.clone(),
            invalid,
        })?;
        let device_ids = spec
            .devices
            .iter()
            .map(|d| qualified_device_id(vendor, class, &d.name))
            .collect();
        Ok(ClaimSpec {
            vendor: vendor.to_string(),
            class: class.to_string(),
            claim_uid: claim_uid.to_string(),
            spec,
            device_ids,
            version,
        })
    }

    /// The spec as written to disk: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Result<Vec<u8>, CdiError> {
        let mut b = serde_json::to_vec_pretty(&self.spec).map_err(|error| CdiError::Encode {
            claim_uid: self.claim_uid.clone(),
            error,
        })?;
        b.push(b'\n');
        Ok(b)
    }

    /// The spec file name: `<vendor>-<class>_<claim uid>.json`.
    pub fn file_name(&self) -> String {
        spec_file_name(&self.vendor, &self.class, &self.claim_uid)
    }
}

/// `<vendor>-<class>_<claim uid>.json`, with `/` replaced by `_` as the CDI library does for
/// transient spec names.
pub(crate) fn spec_file_name(vendor: &str, class: &str, claim_uid: &str) -> String {
    format!(
        "{}{}.json",
        file_prefix(vendor, class),
        claim_uid.replace('/', "_")
    )
}

/// The common prefix of a vendor's claim spec files: `<vendor>-<class>_`.
pub(crate) fn file_prefix(vendor: &str, class: &str) -> String {
    format!("{vendor}-{class}_").replace('/', "_")
}
