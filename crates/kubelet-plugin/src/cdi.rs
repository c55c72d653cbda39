//! Per-claim CDI specs: one transient JSON file per claim and driver, written atomically
//! (temp + rename). No fsync: the checkpoint is the durable record and every spec is rebuilt
//! from it at start-up, which also covers a tmpfs `/var/run/cdi` emptied by a reboot.
//!
//! This is the plugin's own emitter until `drakit_types::cdi` lands; the version picked is the
//! lowest that the used features need (`netDevices` → 1.1.0, `additionalGids` → 0.7.0, else
//! 0.5.0, the first version that allows device names starting with a digit such as a UID).

use std::io::Write;
use std::path::{Path, PathBuf};

use drakit_proto::drakit::ContainerEdits;
use serde_json::{Map, Value, json};

/// CDI class of drakit's per-claim specs (kind `<driver>/claim`).
pub const CDI_CLASS: &str = "claim";

/// Errors of writing or removing a spec.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("writing CDI spec {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing CDI spec {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CDI device name {name:?} is not valid (letters, digits, `_.:-`, first a letter or digit)"
    )]
    BadName { name: String },
}

/// One CDI device of a claim spec.
#[derive(Debug, Clone, PartialEq)]
pub struct CdiDevice {
    pub name: String,
    pub edits: ContainerEdits,
}

/// Where a driver's specs go.
#[derive(Debug, Clone)]
pub struct CdiWriter {
    dir: PathBuf,
    driver: String,
}

/// The CDI device name of one allocated device of a claim.
pub fn device_name(claim_uid: &str, device: &str, share_id: Option<&str>) -> String {
    match share_id {
        Some(s) if !s.is_empty() => format!("{claim_uid}-{device}-{s}"),
        _ => format!("{claim_uid}-{device}"),
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

fn edits_json(e: &ContainerEdits) -> Value {
    let mut m = Map::new();
    if !e.env.is_empty() {
        m.insert("env".into(), json!(e.env));
    }
    if !e.device_nodes.is_empty() {
        let nodes: Vec<Value> = e
            .device_nodes
            .iter()
            .map(|d| {
                let mut n = Map::new();
                n.insert("path".into(), json!(d.path));
                if !d.host_path.is_empty() {
                    n.insert("hostPath".into(), json!(d.host_path));
                }
                if !d.r#type.is_empty() {
                    n.insert("type".into(), json!(d.r#type));
                }
                if d.major != 0 || d.minor != 0 {
                    n.insert("major".into(), json!(d.major));
                    n.insert("minor".into(), json!(d.minor));
                }
                if !d.permissions.is_empty() {
                    n.insert("permissions".into(), json!(d.permissions));
                }
                if let Some(mode) = d.file_mode {
                    n.insert("fileMode".into(), json!(mode));
                }
                if let Some(uid) = d.uid {
                    n.insert("uid".into(), json!(uid));
                }
                if let Some(gid) = d.gid {
                    n.insert("gid".into(), json!(gid));
                }
                Value::Object(n)
            })
            .collect();
        m.insert("deviceNodes".into(), Value::Array(nodes));
    }
    if !e.mounts.is_empty() {
        let mounts: Vec<Value> = e
            .mounts
            .iter()
            .map(|mt| {
                let mut n = Map::new();
                n.insert("hostPath".into(), json!(mt.host_path));
                n.insert("containerPath".into(), json!(mt.container_path));
                if !mt.r#type.is_empty() {
                    n.insert("type".into(), json!(mt.r#type));
                }
                if !mt.options.is_empty() {
                    n.insert("options".into(), json!(mt.options));
                }
                Value::Object(n)
            })
            .collect();
        m.insert("mounts".into(), Value::Array(mounts));
    }
    if !e.hooks.is_empty() {
        let hooks: Vec<Value> = e
            .hooks
            .iter()
            .map(|h| {
                let mut n = Map::new();
                n.insert("hookName".into(), json!(h.hook_name));
                n.insert("path".into(), json!(h.path));
                if !h.args.is_empty() {
                    n.insert("args".into(), json!(h.args));
                }
                if !h.env.is_empty() {
                    n.insert("env".into(), json!(h.env));
                }
                if let Some(t) = h.timeout {
                    n.insert("timeout".into(), json!(t));
                }
                Value::Object(n)
            })
            .collect();
        m.insert("hooks".into(), Value::Array(hooks));
    }
    if !e.net_devices.is_empty() {
        let nd: Vec<Value> = e
            .net_devices
            .iter()
            .map(|d| json!({"hostInterfaceName": d.host_interface_name, "name": d.name}))
            .collect();
        m.insert("netDevices".into(), Value::Array(nd));
    }
    if !e.additional_gids.is_empty() {
        m.insert("additionalGids".into(), json!(e.additional_gids));
    }
    Value::Object(m)
}

/// The minimum CDI version for these devices.
pub fn min_version(devices: &[CdiDevice]) -> &'static str {
    if devices.iter().any(|d| !d.edits.net_devices.is_empty()) {
        "1.1.0"
    } else if devices.iter().any(|d| !d.edits.additional_gids.is_empty()) {
        "0.7.0"
    } else {
        "0.5.0"
    }
}

impl CdiWriter {
    pub fn new(dir: impl Into<PathBuf>, driver: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            driver: driver.into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<driver>/claim`.
    pub fn kind(&self) -> String {
        format!("{}/{CDI_CLASS}", self.driver)
    }

    /// The fully qualified CDI device ID (`<driver>/claim=<name>`).
    pub fn device_id(&self, name: &str) -> String {
        format!("{}/{CDI_CLASS}={name}", self.driver)
    }

    /// Path of the claim's spec file.
    pub fn spec_path(&self, claim_uid: &str) -> PathBuf {
        self.dir
            .join(format!("{}-{CDI_CLASS}_{claim_uid}.json", self.driver))
    }

    /// Renders the spec of a claim (bytes stored in the checkpoint and written to disk).
    pub fn render(&self, devices: &[CdiDevice]) -> Result<Vec<u8>, CdiError> {
        for d in devices {
            if !valid_name(&d.name) {
                return Err(CdiError::BadName {
                    name: d.name.clone(),
                });
            }
        }
        let devs: Vec<Value> = devices
            .iter()
            .map(|d| json!({"name": d.name, "containerEdits": edits_json(&d.edits)}))
            .collect();
        let spec = json!({
            "cdiVersion": min_version(devices),
            "kind": self.kind(),
            "devices": devs,
            "containerEdits": {},
        });
        Ok(serde_json::to_vec(&spec).unwrap_or_default())
    }

    /// Writes (or re-writes) a claim's spec atomically: temp file in the same dir, rename.
    pub fn write(&self, claim_uid: &str, bytes: &[u8]) -> Result<PathBuf, CdiError> {
        let path = self.spec_path(claim_uid);
        let tmp = self
            .dir
            .join(format!(".{}-{CDI_CLASS}_{claim_uid}.tmp", self.driver));
        let err = |source| CdiError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            drop(f);
            drakit_types::crash::point("cdi-write-before-rename");
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            // A full disk (ENOSPC) or any other failure leaves no partial temp file behind.
            if let Err(re) = std::fs::remove_file(&tmp)
                && re.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %tmp.display(), error = %re, "removing CDI temp file");
            }
            return Err(err(e));
        }
        Ok(path)
    }

    /// Temp files of this driver left in the directory by a writer that died before its rename
    /// (never read by a runtime: CDI only loads `*.json` and `*.yaml`, but still litter).
    pub fn temp_files(&self) -> Vec<PathBuf> {
        let prefix = format!(".{}-{CDI_CLASS}_", self.driver);
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
            })
            .map(|e| e.path())
            .collect()
    }

    /// Whether the spec file exists with exactly these bytes.
    pub fn is_current(&self, claim_uid: &str, bytes: &[u8]) -> bool {
        std::fs::read(self.spec_path(claim_uid)).is_ok_and(|b| b == bytes)
    }

    /// Removes a claim's spec; a missing file is fine.
    pub fn remove(&self, claim_uid: &str) -> Result<(), CdiError> {
        let path = self.spec_path(claim_uid);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CdiError::Remove { path, source }),
        }
    }

    /// Claim UIDs of every spec file of this driver in the directory.
    pub fn list(&self) -> Vec<String> {
        let prefix = format!("{}-{CDI_CLASS}_", self.driver);
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let uid = name.strip_prefix(&prefix)?.strip_suffix(".json")?;
                Some(uid.to_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drakit_proto::drakit::NetDevice;

    #[test]
    fn renders_minimum_version_and_ids() {
        let w = CdiWriter::new("/x", "net.drakit.dev");
        let mut edits = ContainerEdits {
            env: vec!["A=1".into()],
            ..Default::default()
        };
        let d = CdiDevice {
            name: device_name("0b1c-uid", "eth1", None),
            edits: edits.clone(),
        };
        let v: Value = serde_json::from_slice(&w.render(&[d]).unwrap()).unwrap();
        assert_eq!(v["cdiVersion"], "0.5.0");
        assert_eq!(v["kind"], "net.drakit.dev/claim");
        assert_eq!(v["devices"][0]["name"], "0b1c-uid-eth1");
        assert_eq!(v["devices"][0]["containerEdits"]["env"][0], "A=1");
        edits.net_devices.push(NetDevice {
            host_interface_name: "eth1".into(),
            name: "net1".into(),
        });
        let d = CdiDevice {
            name: "u-eth1".into(),
            edits,
        };
        let v: Value = serde_json::from_slice(&w.render(&[d]).unwrap()).unwrap();
        assert_eq!(v["cdiVersion"], "1.1.0");
        assert_eq!(
            v["devices"][0]["containerEdits"]["netDevices"][0]["hostInterfaceName"],
            "eth1"
        );
        assert_eq!(w.device_id("u-eth1"), "net.drakit.dev/claim=u-eth1");
    }

    #[test]
    fn bad_names_are_refused() {
        let w = CdiWriter::new("/x", "d.dev");
        let d = CdiDevice {
            name: "-bad/name".into(),
            edits: ContainerEdits::default(),
        };
        assert!(matches!(w.render(&[d]), Err(CdiError::BadName { .. })));
    }

    #[test]
    fn temp_files_of_the_driver_only() {
        let tmp = tempfile::tempdir().unwrap();
        let w = CdiWriter::new(tmp.path(), "d.dev");
        for n in [
            ".d.dev-claim_u1.tmp",
            ".e.dev-claim_u1.tmp",
            "d.dev-claim_u2.json",
        ] {
            std::fs::write(tmp.path().join(n), b"{}").unwrap();
        }
        assert_eq!(w.temp_files(), vec![tmp.path().join(".d.dev-claim_u1.tmp")]);
        assert_eq!(w.list(), vec!["u2".to_owned()]);
    }

    #[test]
    fn write_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let w = CdiWriter::new(tmp.path().join("cdi"), "d.dev");
        w.write("u1", b"{}").unwrap();
        assert!(w.is_current("u1", b"{}"));
        assert_eq!(w.list(), vec!["u1".to_owned()]);
        w.remove("u1").unwrap();
        w.remove("u1").unwrap();
        assert!(w.list().is_empty());
    }
}
