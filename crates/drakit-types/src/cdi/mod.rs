//! CDI spec emission for drakit's claims.
//!
//! - [`types`]: serde types of a CDI spec (1.1.0 and older), empty fields left out.
//! - [`minimum_version`]: the oldest `cdiVersion` that can express a spec; [`Spec::finalize`]
//!   validates a spec and stamps that version, so runtimes with older CDI libraries still load
//!   specs that do not need new features.
//! - [`ClaimSpec`]: the transient spec of one prepared claim, kind `<driver>/<class>`, one CDI
//!   device per allocated device, and the fully-qualified ids the kubelet gets back.
//! - [`SpecDir`]: atomic write (skipped when unchanged), remove, list and rebuild of one
//!   vendor's claim specs in a CDI directory, leaving other files alone.

mod claim;
mod dir;
pub mod types;
mod validate;

pub use claim::{ClaimDevice, ClaimSpec, cdi_device_name, qualified_device_id};
pub use dir::{CRASH_BEFORE_RENAME, RebuildReport, SpecDir, WriteOutcome};
pub use types::{ContainerEdits, Device, DeviceNode, Hook, IntelRdt, Mount, NetDevice, Spec};
pub use validate::{
    CdiVersion, Invalid, minimum_version, validate_annotations, validate_class, validate_content,
    validate_device_name, validate_env_entry, validate_interface_name, validate_kind,
    validate_spec, validate_vendor,
};

use crate::fsutil::FsError;

/// Errors of CDI spec building and writing. They name the claim where there is one and the
/// field of the spec that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("invalid CDI {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("claim {claim_uid}: CDI spec {kind}: {invalid}")]
    InvalidSpec {
        claim_uid: String,
        kind: String,
        invalid: Invalid,
    },
    #[error("claim {claim_uid}: cannot encode CDI spec: {error}")]
    Encode {
        claim_uid: String,
        error: serde_json::Error,
    },
    #[error("claim {claim_uid}: stored CDI spec does not decode: {error}")]
    Decode {
        claim_uid: String,
        error: serde_json::Error,
    },
    #[error("CDI spec dir: {0}")]
    Fs(#[from] FsError),
}

impl Spec {
    /// Validates the spec (everything a CDI library checks on load) and sets `cdiVersion` to
    /// [`minimum_version`]. Returns the version.
    pub fn finalize(&mut self) -> Result<CdiVersion, Invalid> {
        validate_content(self)?;
        let v = minimum_version(self);
        self.cdi_version = v.as_str().to_string();
        Ok(v)
    }
}
