//! One vendor's claim specs in a CDI spec directory.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::CdiError;
use super::claim::{
    ClaimSpec, check_vendor_class, file_prefix, spec_file_name, validate_claim_uid,
};
use super::validate::validate_spec;
use crate::fsutil::{self, Durability, FsError, Step};

/// The crash-injection step ([`crate::crash`]) that [`SpecDir::write`] reaches with the new spec
/// complete in its temp file, before the rename. Only a daemon that lists it among its steps can
/// arm it (the kubelet plugin does).
pub const CRASH_BEFORE_RENAME: &str = "cdi-write-before-rename";

/// What [`SpecDir::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file was (re)written.
    Written,
    /// The file already held exactly these bytes.
    Unchanged,
}

/// What [`SpecDir::rebuild`] did. Rebuild keeps going after an error; check `errors`.
#[derive(Debug, Default)]
pub struct RebuildReport {
    /// Claim UIDs whose spec was written.
    pub written: Vec<String>,
    /// Claim UIDs whose spec was already right.
    pub unchanged: Vec<String>,
    /// Claim UIDs whose stale spec was removed.
    pub removed: Vec<String>,
    /// Leftover temp files of ours that were removed.
    pub removed_temp_files: Vec<PathBuf>,
    /// Every error met on the way.
    pub errors: Vec<CdiError>,
}

impl RebuildReport {
    /// `Err` with all errors if there were any.
    pub fn into_result(self) -> Result<RebuildReport, Vec<CdiError>> {
        if self.errors.is_empty() {
            Ok(self)
        } else {
            Err(self.errors)
        }
    }
}

/// A CDI spec directory as seen by one vendor/class: only files named
/// `<vendor>-<class>_<claim uid>.json` are ever written, listed or removed.
#[derive(Debug, Clone)]
pub struct SpecDir {
    dir: PathBuf,
    vendor: String,
    class: String,
    prefix: String,
    durability: Durability,
}

impl SpecDir {
    /// A handle on `dir` (created on the first write, mode 0755) for `vendor`/`class`.
    pub fn new(dir: impl Into<PathBuf>, vendor: &str, class: &str) -> Result<SpecDir, CdiError> {
        check_vendor_class(vendor, class)?;
        Ok(SpecDir {
            dir: dir.into(),
            vendor: vendor.to_string(),
            class: class.to_string(),
            prefix: file_prefix(vendor, class),
            durability: Durability::Fsync,
        })
    }

    /// Changes the fsync policy ([`Durability::None`] for benchmarks only).
    pub fn with_durability(mut self, durability: Durability) -> SpecDir {
        self.durability = durability;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The vendor (driver name).
    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    /// The class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Path of a claim's spec file.
    pub fn path_for(&self, claim_uid: &str) -> PathBuf {
        self.dir
            .join(spec_file_name(&self.vendor, &self.class, claim_uid))
    }

    /// Writes a claim's spec atomically unless the file already holds exactly these bytes.
    pub fn write(&self, spec: &ClaimSpec) -> Result<WriteOutcome, CdiError> {
        if spec.vendor != self.vendor || spec.class != self.class {
            return Err(CdiError::InvalidName {
                what: "kind",
                value: format!("{}/{}", spec.vendor, spec.class),
                reason: format!(
                    "claim {}: this spec directory handle writes only {}/{}",
                    spec.claim_uid, self.vendor, self.class
                ),
            });
        }
        // ClaimSpec's fields are public: check again what could have been changed after build.
        validate_claim_uid(&spec.claim_uid)?;
        validate_spec(&spec.spec).map_err(|invalid| CdiError::InvalidSpec {
            claim_uid: spec.claim_uid.clone(),
            kind: spec.spec.kind.clone(),
            invalid,
        })?;
        let bytes = spec.to_json()?;
        let path = self.path_for(&spec.claim_uid);
        match fs::read(&path) {
            Ok(existing) if existing == bytes => return Ok(WriteOutcome::Unchanged),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CdiError::Fs(FsError::new(Step::Read, &path, e))),
        }
        let write = || {
            fsutil::atomic_write_hooked(
                &path,
                0o644,
                self.durability,
                |w| w.write_all(&bytes),
                || crate::crash::point(CRASH_BEFORE_RENAME),
            )
        };
        match write() {
            Ok(()) => {}
            Err(e) if e.step == Step::CreateTemp && e.source.kind() == io::ErrorKind::NotFound => {
                fsutil::create_dir_durable(&self.dir, 0o755, self.durability)?;
                write()?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(WriteOutcome::Written)
    }

    /// Makes a claim's spec file hold `json`, the output of [`ClaimSpec::to_json`] kept
    /// elsewhere (e.g. in a checkpoint): nothing is done when the file already holds exactly
    /// these bytes (one read, no decode); otherwise the spec is decoded and checked again
    /// ([`ClaimSpec::from_json`]) and written.
    pub fn ensure_json(&self, claim_uid: &str, json: &[u8]) -> Result<WriteOutcome, CdiError> {
        validate_claim_uid(claim_uid)?;
        let path = self.path_for(claim_uid);
        match fs::read(&path) {
            Ok(existing) if existing == json => return Ok(WriteOutcome::Unchanged),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CdiError::Fs(FsError::new(Step::Read, &path, e))),
        }
        let spec = ClaimSpec::from_json(&self.vendor, &self.class, claim_uid, json)?;
        self.write(&spec)
    }

    /// Removes a claim's spec. Returns whether a file was there; a missing file is success.
    pub fn remove(&self, claim_uid: &str) -> Result<bool, CdiError> {
        validate_claim_uid(claim_uid)?;
        let path = self.path_for(claim_uid);
        match fs::remove_file(&path) {
            Ok(()) => {
                if self.durability == Durability::Fsync {
                    fsutil::sync_dir(&self.dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CdiError::Fs(FsError::new(Step::Remove, &path, e))),
        }
    }

    /// Claim UIDs this vendor/class has spec files for, sorted. A missing directory is empty.
    pub fn list(&self) -> Result<Vec<String>, CdiError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(CdiError::Fs(FsError::new(Step::ReadDir, &self.dir, e)));
            }
        };
        let mut uids = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| CdiError::Fs(FsError::new(Step::ReadDir, &self.dir, e)))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(uid) = name
                .strip_prefix(&self.prefix)
                .and_then(|rest| rest.strip_suffix(".json"))
            else {
                continue;
            };
            // A UID never contains '_', so `<vendor>-<class>_x_<uid>.json` of another class
            // starting with ours is not mistaken for one of ours.
            if validate_claim_uid(uid).is_ok() {
                uids.push(uid.to_string());
            }
        }
        uids.sort();
        Ok(uids)
    }

    /// Makes the directory hold exactly `desired` for this vendor/class: writes missing or
    /// different specs, removes stale ones and our leftover temp files. Other vendors' files
    /// are left alone. Keeps going after errors and reports them all.
    pub fn rebuild(&self, desired: &[ClaimSpec]) -> RebuildReport {
        let mut report = RebuildReport::default();
        let mut keep = BTreeSet::new();
        for spec in desired {
            keep.insert(spec.claim_uid.as_str());
            match self.write(spec) {
                Ok(WriteOutcome::Written) => report.written.push(spec.claim_uid.clone()),
                Ok(WriteOutcome::Unchanged) => report.unchanged.push(spec.claim_uid.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        match self.list() {
            Ok(existing) => {
                for uid in existing {
                    if keep.contains(uid.as_str()) {
                        continue;
                    }
                    match self.remove(&uid) {
                        Ok(true) => report.removed.push(uid),
                        Ok(false) => {}
                        Err(e) => report.errors.push(e),
                    }
                }
            }
            Err(e) => report.errors.push(e),
        }
        match fsutil::remove_temp_files(&self.dir, &self.prefix) {
            Ok(removed) => report.removed_temp_files = removed,
            Err(e) => report.errors.push(e.into()),
        }
        report
    }
}
