//! The plugin's durable state and CDI specs, on the shared formats of `drakit_types`.
//!
//! Each driver keeps its prepared claims in a [`drakit_types::checkpoint`] journal
//! (`<state dir>/<driver>/claims.checkpoint`, key = claim UID, value = [`ClaimRecord`]): a
//! prepare is answered only after its record is appended and `fdatasync`'d. The claim's CDI spec
//! is built with [`drakit_types::cdi::ClaimSpec`] (kind `<driver>/claim`, minimum `cdiVersion`),
//! kept as JSON in the record and written through a [`SpecDir`] without fsync: every spec is
//! rebuilt from the checkpoint at start-up, which also covers a tmpfs `/var/run/cdi` emptied by
//! a reboot.
//!
//! A checkpoint of the plugin's earlier journal format (`checkpoint.journal`) is imported once,
//! see [`crate::legacy`].

use std::path::{Path, PathBuf};

use drakit_proto::drakit as pb;
use drakit_types::cdi::{self, CdiError, ClaimDevice, ClaimSpec, SpecDir};
use drakit_types::checkpoint::{
    BootIdSource, Checkpoint, CheckpointError, Durability, LoadReport, Options,
};
use serde::{Deserialize, Serialize};

/// CDI class of the per-claim specs (kind `<driver>/claim`).
pub const CDI_CLASS: &str = "claim";
/// File name of a driver's checkpoint inside `<state dir>/<driver>/`.
pub const CHECKPOINT_NAME: &str = "claims.checkpoint";
/// Compact the journal after this many records beyond twice the live claims.
const COMPACT_AFTER: usize = 256;

/// The checkpoint of one driver: claim UID → record.
pub type ClaimCheckpoint = Checkpoint<ClaimRecord>;

/// One prepared device as the kubelet was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub requests: Vec<String>,
    pub pool: String,
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    pub cdi_device_ids: Vec<String>,
}

/// Everything needed to answer a repeated prepare and to rebuild the CDI spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub devices: Vec<DeviceRecord>,
    /// The CDI spec exactly as written to disk (`ClaimSpec::to_json`); empty when the claim
    /// needs none.
    pub cdi_spec: String,
    pub boot_id: String,
    /// What the backend was asked to prepare (re-sent at start-up to reconcile).
    #[serde(default, with = "alloc_serde")]
    pub allocated: Vec<pb::AllocatedDevice>,
    #[serde(default)]
    pub reserved_for_pods: Vec<String>,
}

/// Backend requests as protobuf bytes in hex (compact, exact).
mod alloc_serde {
    use drakit_proto::drakit::AllocatedDevice;
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[AllocatedDevice], s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        s.collect_seq(v.iter().map(|d| {
            let bytes = d.encode_to_vec();
            let mut hex = String::with_capacity(bytes.len() * 2);
            for b in bytes {
                hex.push(char::from(DIGITS[usize::from(b >> 4)]));
                hex.push(char::from(DIGITS[usize::from(b & 0xf)]));
            }
            hex
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AllocatedDevice>, D::Error> {
        let hex: Vec<String> = Vec::deserialize(d)?;
        hex.iter()
            .map(|h| {
                let bytes: Option<Vec<u8>> = (0..h.len())
                    .step_by(2)
                    .map(|i| h.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
                    .collect();
                let bytes = bytes.ok_or_else(|| serde::de::Error::custom("bad hex"))?;
                AllocatedDevice::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// Errors of opening a driver's state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("importing the earlier checkpoint {}: {source}", path.display())]
    Legacy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the node boot ID from `<proc_root>/sys/kernel/random/boot_id` (empty when unreadable).
pub fn read_boot_id(proc_root: &Path) -> String {
    std::fs::read_to_string(drakit_types::checkpoint::boot_id_path(proc_root))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// How to open one driver's checkpoint.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// `<state dir>/<driver>`.
    pub dir: PathBuf,
    pub driver: String,
    /// The node's boot ID (empty when unreadable: the checkpoint then cannot tell reboots).
    pub boot_id: String,
    pub durability: Durability,
    /// Another instance may use the same checkpoint (rolling update); the caller holds the
    /// cross-process serialize lock around the open and every change.
    pub shared: bool,
}

impl StateOptions {
    fn checkpoint_options(&self) -> Options {
        let mut o = Options::new(&self.dir, CHECKPOINT_NAME);
        o.boot_id = BootIdSource::Fixed(if self.boot_id.is_empty() {
            "unknown".to_owned()
        } else {
            self.boot_id.clone()
        });
        o.durability = self.durability;
        o.compact_after = COMPACT_AFTER;
        o
    }
}

/// Opens a driver's checkpoint, importing the earlier journal format if one is there, and logs
/// what loading found (torn tail cut, corrupt file moved aside, reboot).
pub fn open_checkpoint(opts: &StateOptions) -> Result<ClaimCheckpoint, StateError> {
    let co = opts.checkpoint_options();
    let (mut cp, report) = if opts.shared {
        ClaimCheckpoint::open_shared(co)?
    } else {
        ClaimCheckpoint::open(co)?
    };
    log_report(&opts.driver, &report);
    crate::legacy::import(&opts.dir, &opts.driver, &mut cp)?;
    Ok(cp)
}

fn log_report(driver: &str, report: &LoadReport) {
    for w in report.warnings() {
        tracing::warn!(driver, "{w}");
    }
}

/// The spec directory of a driver's claims.
pub fn spec_dir(cdi_dir: &Path, driver: &str) -> Result<SpecDir, CdiError> {
    Ok(SpecDir::new(cdi_dir, driver, CDI_CLASS)?.with_durability(Durability::None))
}

/// The CDI edits of a backend's answer.
pub fn cdi_edits(e: &pb::ContainerEdits) -> cdi::ContainerEdits {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    cdi::ContainerEdits {
        env: e.env.clone(),
        device_nodes: e
            .device_nodes
            .iter()
            .map(|d| {
                let numbered = d.major != 0 || d.minor != 0;
                cdi::DeviceNode {
                    path: d.path.clone(),
                    host_path: opt(&d.host_path),
                    kind: opt(&d.r#type),
                    major: numbered.then_some(d.major),
                    minor: numbered.then_some(d.minor),
                    file_mode: d.file_mode,
                    permissions: opt(&d.permissions),
                    uid: d.uid,
                    gid: d.gid,
                }
            })
            .collect(),
        hooks: e
            .hooks
            .iter()
            .map(|h| cdi::Hook {
                hook_name: h.hook_name.clone(),
                path: h.path.clone(),
                args: h.args.clone(),
                env: h.env.clone(),
                // A negative timeout becomes 0, which validation refuses with its path.
                timeout: h.timeout.map(|t| u32::try_from(t).unwrap_or(0)),
            })
            .collect(),
        mounts: e
            .mounts
            .iter()
            .map(|m| cdi::Mount {
                host_path: m.host_path.clone(),
                container_path: m.container_path.clone(),
                kind: opt(&m.r#type),
                options: m.options.clone(),
            })
            .collect(),
        net_devices: e
            .net_devices
            .iter()
            .map(|n| cdi::NetDevice {
                host_interface_name: n.host_interface_name.clone(),
                name: n.name.clone(),
            })
            .collect(),
        intel_rdt: None,
        additional_gids: e.additional_gids.clone(),
    }
}

/// The CDI device of one allocated device; `share_id` (a shared device's allocation) is part of
/// the name so that two shares of one device get two CDI devices.
pub fn claim_device(
    device: &str,
    share_id: Option<&str>,
    edits: &pb::ContainerEdits,
) -> ClaimDevice {
    ClaimDevice {
        device: match share_id {
            Some(s) if !s.is_empty() => format!("{device}-{s}"),
            _ => device.to_owned(),
        },
        edits: cdi_edits(edits),
        annotations: Default::default(),
    }
}

/// Builds a claim's spec.
pub fn claim_spec(
    driver: &str,
    claim_uid: &str,
    devices: Vec<ClaimDevice>,
) -> Result<ClaimSpec, CdiError> {
    ClaimSpec::build(
        driver,
        CDI_CLASS,
        claim_uid,
        devices,
        cdi::ContainerEdits::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: &str) -> ClaimRecord {
        ClaimRecord {
            namespace: "ns".into(),
            name: format!("c-{uid}"),
            uid: uid.into(),
            devices: vec![DeviceRecord {
                requests: vec!["r".into()],
                pool: "node".into(),
                device: "d".into(),
                share_id: None,
                cdi_device_ids: vec![format!("x/claim={uid}-d")],
            }],
            cdi_spec: String::new(),
            boot_id: "b".into(),
            allocated: vec![pb::AllocatedDevice {
                device: "d".into(),
                config_json: "{\"a\":1}".into(),
                ..Default::default()
            }],
            reserved_for_pods: vec!["pod".into()],
        }
    }

    fn opts(dir: &Path) -> StateOptions {
        StateOptions {
            dir: dir.to_path_buf(),
            driver: "d.dev".into(),
            boot_id: "b".into(),
            durability: Durability::Fsync,
            shared: false,
        }
    }

    #[test]
    fn records_survive_reopen_and_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let o = opts(&tmp.path().join("state/d.dev"));
        let mut cp = open_checkpoint(&o).unwrap();
        cp.put("a", rec("a")).unwrap();
        cp.put("b", rec("b")).unwrap();
        cp.remove("a").unwrap();
        assert_eq!(cp.remove("zzz").unwrap(), None);
        drop(cp);
        let cp = open_checkpoint(&o).unwrap();
        assert_eq!(cp.entries().keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(cp.get("b"), Some(&rec("b")));
    }

    #[test]
    fn an_unreadable_boot_id_still_opens() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = opts(tmp.path());
        o.boot_id = String::new();
        let mut cp = open_checkpoint(&o).unwrap();
        cp.put("a", rec("a")).unwrap();
        assert_eq!(read_boot_id(tmp.path()), "");
    }

    #[test]
    fn specs_use_the_shared_names_and_minimum_version() {
        let edits = pb::ContainerEdits {
            env: vec!["A=1".into()],
            ..Default::default()
        };
        let s = claim_spec(
            "net.drakit.dev",
            "0b1c-uid",
            vec![claim_device("eth1", None, &edits)],
        )
        .unwrap();
        assert_eq!(s.version.as_str(), "0.3.0");
        assert_eq!(
            s.device_ids,
            vec!["net.drakit.dev/claim=claim-0b1c-uid-eth1".to_owned()]
        );
        let mut with_net = edits.clone();
        with_net.net_devices.push(pb::NetDevice {
            host_interface_name: "eth1".into(),
            name: "net1".into(),
        });
        let s = claim_spec(
            "net.drakit.dev",
            "u",
            vec![claim_device("eth1", Some("s1"), &with_net)],
        )
        .unwrap();
        assert_eq!(s.version.as_str(), "1.1.0");
        assert_eq!(
            s.device_ids,
            vec!["net.drakit.dev/claim=claim-u-eth1-s1".to_owned()]
        );
    }

    #[test]
    fn invalid_backend_edits_are_refused_naming_the_claim_and_field() {
        let edits = pb::ContainerEdits {
            hooks: vec![pb::Hook {
                hook_name: "createRuntime".into(),
                path: "/bin/h".into(),
                timeout: Some(-1),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = claim_spec("d.dev", "u1", vec![claim_device("x", None, &edits)]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("u1") && e.contains("timeout"), "{e}");
    }
}
