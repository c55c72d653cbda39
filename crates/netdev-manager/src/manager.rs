//! Prepare / attach / detach / unprepare: the claim lifecycle on top of the netlink facade,
//! the inventory, CNI and the persistent store.
//!
//! Links the manager creates carry the alias `drakit:<claim uid>`. macvlan/ipvlan/dummy/ipoib
//! links are created directly in the pod under their final name (up, with MTU and MAC, in one
//! request), then marked and given their addresses and routes; a veth is created in the host
//! namespace under a temporary name derived from the claim (`dk` + 10 hex digits) and its pod
//! end moved and renamed in one request. Physical links are marked
//! `drakit:<claim uid>:<host name>` so that a restart can give them back their name. At start-up
//! [`Manager::reconcile`] deletes marked links that no live claim explains.
//!
//! Records are written durably at prepare, unprepare and reconcile; attach and detach write them
//! with [`Store::put_until_reboot`] (see [`crate::store`]) except for claims with a CNI device.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drakit_proto::drakit as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell, watch};

use crate::addr::{IpNet, Mac, fnv64};
use crate::cni::{CniArgs, CniError, CniRuntime};
use crate::config::{self, AttachMode, ConfigError, DeviceConfig, NetKind};
use crate::inventory::{CharDev, FoundDevice, HostDevice};
use crate::netlink::{
    IpvlanMode, LinkChange, LinkId, LinkKind, MacvlanMode, Netlink, NetlinkError, NewLink,
    RouteSpec, VfSettings,
};
use crate::store::{Store, StoreError};

/// Alias prefix marking links drakit owns.
pub const ALIAS_PREFIX: &str = "drakit:";
/// OCI annotation with the pod UID (CRI).
pub const ANN_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// OCI annotation with the sandbox ID (CRI).
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const MAX_OCI_STATE: usize = 1024 * 1024;

/// Errors of the claim lifecycle; each names the claim and, where there is one, the device or field.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("claim {claim}, device {device}: config: {source}")]
    Config {
        claim: String,
        device: String,
        #[source]
        source: ConfigError,
    },
    #[error("claim {claim}: {field}: {reason}")]
    Invalid {
        claim: String,
        field: String,
        reason: String,
    },
    #[error("claim {claim}, device {device}: {source}")]
    Netlink {
        claim: String,
        device: String,
        #[source]
        source: NetlinkError,
    },
    #[error("claim {claim}: {source}")]
    Cni {
        claim: String,
        #[source]
        source: CniError,
    },
    #[error("claim {claim}: {reason}")]
    Runtime { claim: String, reason: String },
    #[error("pod {pod} uses the host network: netdev claims cannot be attached to it ({claims})")]
    HostNetwork { pod: String, claims: String },
    #[error("claim {0} is not prepared on this node")]
    UnknownClaim(String),
    #[error("saving state: {0}")]
    Store(#[from] StoreError),
    #[error("claim {claim}: simulated crash after creating link {link}")]
    Crash { claim: String, link: String },
}

impl ManagerError {
    /// True for errors caused by the request (bad input) rather than the node.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            ManagerError::Config { .. }
                | ManagerError::Invalid { .. }
                | ManagerError::HostNetwork { .. }
                | ManagerError::UnknownClaim(_)
        )
    }
}

/// The crash-injection steps of `drakit-netdev` (`DRAKIT_CRASH_AT`, feature `crash-injection`;
/// see `drakit_types::crash`), in the order prepare, attach, detach and unprepare reach them.
pub const CRASH_STEPS: &[&str] = &[
    // Attach mode cdi: the claim's host-side links exist; the record does not know them yet.
    "prepare-after-link-create",
    // The record is durable; the caller has no answer.
    "prepare-after-checkpoint",
    // A virtual link exists and carries its mark (veth pair on the host, or macvlan/ipvlan/dummy
    // created in the pod); not moved, not configured, not recorded.
    "after-link-create",
    // A link (veth pod end, physical link) is in the pod under its final name; not configured,
    // not recorded.
    "after-move-to-netns",
    // Every link of the pod is configured; the attachment is not recorded.
    "attach-before-checkpoint",
    // The attachment is recorded; the caller has no answer.
    "attach-after-checkpoint",
    // The pod's links are deleted or given back; the record still says attached.
    "detach-before-checkpoint",
    // The claim's links are released; its record still exists.
    "unprepare-before-checkpoint",
];

/// Options of the manager (everything the binary's flags set).
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub pool: String,
    pub default_attach_mode: AttachMode,
    /// Usually `/proc` (the hook resolves `/proc/<pid>/ns/net`).
    pub proc_root: PathBuf,
    /// runc binary checked for CDI netDevices support (attach mode `cdi`).
    pub runc: PathBuf,
    /// drakit-oci-hook as seen by the runtime (attach mode `hook`).
    pub hook_binary: PathBuf,
    /// The NetdevAttach socket the hook calls.
    pub hook_socket: PathBuf,
    pub hook_timeout: Duration,
    pub cni: CniRuntime,
    /// Parent for macvlan/ipvlan when neither the config nor the device names one.
    pub default_parent: Option<String>,
    /// Test seam: stop right after creating a link, as if the process died there.
    #[doc(hidden)]
    pub crash_after_create: bool,
}

impl ManagerOptions {
    pub fn new(pool: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            default_attach_mode: AttachMode::Nri,
            proc_root: "/proc".into(),
            runc: "runc".into(),
            hook_binary: "/usr/local/bin/drakit-oci-hook".into(),
            hook_socket: "/run/drakit/netdev.sock".into(),
            hook_timeout: Duration::from_secs(10),
            cni: CniRuntime {
                bin_dirs: crate::cni::default_bin_dirs(),
                timeout: Duration::from_secs(30),
            },
            default_parent: None,
            crash_after_create: false,
        }
    }
}

/// Where a device is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub pod_uid: String,
    pub netns: PathBuf,
    pub sandbox_id: String,
}

/// What the status networkData gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetData {
    pub interface_name: String,
    pub ips: Vec<IpNet>,
    pub mac: Option<Mac>,
}

impl NetData {
    fn to_proto(&self) -> pb::NetworkData {
        pb::NetworkData {
            interface_name: self.interface_name.clone(),
            ips: self.ips.iter().map(ToString::to_string).collect(),
            hardware_address: self.mac.map(|m| m.to_string()).unwrap_or_default(),
        }
    }
}

/// One prepared device of a claim (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub requests: Vec<String>,
    pub pool: String,
    pub device: String,
    pub share_id: String,
    pub kind: NetKind,
    /// `None`: nothing to attach (RDMA only).
    pub mode: Option<AttachMode>,
    pub cfg: DeviceConfig,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Physical: the host name to restore. Virtual: the temporary host-side name.
    pub host_name: String,
    pub host_mac: Option<Mac>,
    pub parent: Option<String>,
    /// SR-IOV: (PF name, VF index).
    pub vf: Option<(String, u32)>,
    pub char_devs: Vec<CharDev>,
    pub attached: Option<Attachment>,
    pub cni_result: Option<String>,
    pub net: NetData,
    /// Attach mode cdi: the host-side link is not known to be complete. Set in the record
    /// written before it is created, cleared in the one written once it is configured; a
    /// restart finds such a link unexplained (deleted) and a repeated prepare completes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_pending: bool,
}

/// One prepared claim (persisted under its UID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub pods: Vec<String>,
    pub devices: Vec<DeviceRecord>,
}

/// What [`Manager::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub removed: Vec<String>,
    pub restored: Vec<String>,
    pub kept: Vec<String>,
    pub errors: Vec<String>,
}

/// The claim manager, generic over the netlink implementation and the store.
#[derive(Debug)]
pub struct Manager<N: Netlink, S: Store> {
    host: N,
    store: S,
    opts: ManagerOptions,
    claims: Mutex<BTreeMap<String, ClaimRecord>>,
    inventory: RwLock<Vec<FoundDevice>>,
    generation: AtomicU64,
    inv_tx: watch::Sender<u64>,
    runc_ok: OnceCell<Result<(), String>>,
}

/// Temporary host-side name for device `i` of a claim (≤ 15 bytes).
pub fn temp_name(claim_uid: &str, i: usize, suffix: char) -> String {
    let h = fnv64(format!("{claim_uid}/{i}").as_bytes());
    format!("dk{:010x}{suffix}", h & 0xff_ffff_ffff)
}

fn is_temp_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() == 13
        && n.starts_with("dk")
        && b[2..12].iter().all(u8::is_ascii_hexdigit)
        && matches!(b[12], b'p' | b'h')
}

fn uid_ok(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 128
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !uid.starts_with('.')
}

fn default_ifname(uid: &str, i: usize) -> String {
    format!("net{:04x}", fnv64(format!("{uid}/{i}").as_bytes()) & 0xffff)
}

fn parse_alias(alias: &str) -> Option<(String, Option<String>)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    match rest.split_once(':') {
        Some((u, n)) => Some((u.to_string(), Some(n.to_string()))),
        None => Some((rest.to_string(), None)),
    }
}

impl<N: Netlink, S: Store> Manager<N, S> {
    /// Loads the persisted claims. Call [`Manager::reconcile`] before serving.
    pub fn new(
        host: N,
        store: S,
        opts: ManagerOptions,
        inventory: Vec<FoundDevice>,
    ) -> Result<Self, ManagerError> {
        let mut claims = BTreeMap::new();
        for (k, v) in store.load()? {
            match serde_json::from_slice::<ClaimRecord>(&v) {
                Ok(r) if r.uid == k => {
                    claims.insert(k, r);
                }
                Ok(_) | Err(_) => tracing::warn!(key = %k, "ignoring unreadable claim record"),
            }
        }
        let (inv_tx, _) = watch::channel(1);
        Ok(Self {
            host,
            store,
            opts,
            claims: Mutex::new(claims),
            inventory: RwLock::new(inventory),
            generation: AtomicU64::new(1),
            inv_tx,
            runc_ok: OnceCell::new(),
        })
    }

    pub fn options(&self) -> &ManagerOptions {
        &self.opts
    }

    /// Replaces the inventory (after a rescan) and bumps the generation when it changed.
    pub fn set_inventory(&self, devices: Vec<FoundDevice>) {
        let changed = {
            let mut inv = match self.inventory.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let changed = *inv != devices;
            *inv = devices;
            changed
        };
        if changed {
            let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
            self.inv_tx.send_replace(g);
        }
    }

    /// The inventory in wire form.
    pub fn inventory_proto(&self) -> pb::Inventory {
        let inv = match self.inventory.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        crate::inventory::to_proto(
            &inv,
            self.generation.load(Ordering::SeqCst),
            &self.opts.pool,
        )
    }

    /// Fires on every inventory change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inv_tx.subscribe()
    }

    /// A copy of one claim's record (for tests and diagnostics).
    pub async fn claim(&self, uid: &str) -> Option<ClaimRecord> {
        self.claims.lock().await.get(uid).cloned()
    }

    fn encode(r: &ClaimRecord) -> Result<Vec<u8>, ManagerError> {
        serde_json::to_vec(r).map_err(|e| ManagerError::Runtime {
            claim: r.uid.clone(),
            reason: format!("encoding state: {e}"),
        })
    }

    /// Writes the record durably (fdatasync'd before it returns).
    fn save(&self, r: &ClaimRecord) -> Result<(), ManagerError> {
        self.store.put(&r.uid, &Self::encode(r)?)?;
        Ok(())
    }

    /// Writes the record after AttachPod, DetachPod or the hook changed where its devices are
    /// attached: kept by a crash of this process (written before the caller is answered), not
    /// necessarily by a reboot, which takes every pod namespace and so every such attachment
    /// with it (the record then goes back to its last durable state, never attached to that
    /// boot's pods). CNI attachments stay durable: the plugins' own state (IPAM leases on disk)
    /// outlives a reboot and needs the DEL that only a recorded attachment leads to.
    fn save_attachment(&self, r: &ClaimRecord) -> Result<(), ManagerError> {
        let bytes = Self::encode(r)?;
        if r.devices.iter().any(|d| d.kind == NetKind::Cni) {
            self.store.put(&r.uid, &bytes)?;
        } else {
            self.store.put_until_reboot(&r.uid, &bytes)?;
        }
        Ok(())
    }

    fn find_inventory(&self, name: &str) -> Option<FoundDevice> {
        let inv = match self.inventory.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        inv.iter().find(|d| d.name == name).cloned()
    }

    async fn check_runc(&self, claim: &str) -> Result<(), ManagerError> {
        let runc = self.opts.runc.clone();
        let res = self
            .runc_ok
            .get_or_init(|| async move {
                let out = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::process::Command::new(&runc).arg("features").output(),
                )
                .await;
                match out {
                    Err(_) => Err(format!("`{} features` timed out", runc.display())),
                    Ok(Err(e)) => Err(format!("cannot run `{} features`: {e}", runc.display())),
                    Ok(Ok(o)) if !o.status.success() => Err(format!(
                        "`{} features` failed ({}): runc older than 1.2 has no features command",
                        runc.display(),
                        o.status
                    )),
                    Ok(Ok(o)) => {
                        if String::from_utf8_lossy(&o.stdout).contains("\"netDevices\"") {
                            Ok(())
                        } else {
                            Err(format!(
                                "`{} features` does not list netDevices",
                                runc.display()
                            ))
                        }
                    }
                }
            })
            .await;
        res.clone().map_err(|r| ManagerError::Runtime {
            claim: claim.into(),
            reason: format!(
                "attach mode cdi needs a runtime that moves CDI netDevices (runc >= 1.4); {r}. Older runc silently ignores them: use attach mode nri or hook"
            ),
        })
    }

    // ---------------------------------------------------------------- prepare

    /// Prepares one claim. Idempotent: a repeat returns the recorded result.
    pub async fn prepare(
        &self,
        req: &pb::PrepareRequest,
    ) -> Result<pb::PrepareResponse, ManagerError> {
        let claim = req.claim.clone().unwrap_or_default();
        let uid = claim.uid.clone();
        if !uid_ok(&uid) {
            return Err(ManagerError::Invalid {
                claim: format!("{}/{}", claim.namespace, claim.name),
                field: "claim.uid".into(),
                reason: "missing or not a UID".into(),
            });
        }
        let mut claims = self.claims.lock().await;
        if let Some(r) = claims.get(&uid) {
            let same = r.devices.len() == req.devices.len()
                && r.devices.iter().zip(&req.devices).all(|(d, a)| {
                    d.device == a.device && d.share_id == a.share_id && d.pool == a.pool
                });
            if !same {
                return Err(ManagerError::Invalid {
                    claim: uid,
                    field: "devices".into(),
                    reason: "claim is already prepared with other devices; unprepare it first"
                        .into(),
                });
            }
            if !r.devices.iter().any(|d| d.host_pending) {
                return Ok(response(r, &self.opts));
            }
            // An earlier prepare died before its cdi host side was complete: finish it.
            let mut rec = r.clone();
            if let Err(e) = self.finish_cdi_host_side(&uid, &mut rec).await {
                let _ = self.store.remove(&uid);
                claims.remove(&uid);
                return Err(e);
            }
            let resp = response(&rec, &self.opts);
            claims.insert(uid, rec);
            return Ok(resp);
        }
        let mut rec = ClaimRecord {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            uid: uid.clone(),
            pods: req.reserved_for_pods.clone(),
            devices: vec![],
        };
        for (i, a) in req.devices.iter().enumerate() {
            rec.devices
                .push(self.plan_device(&uid, i, a, req.reserved_for_pods.len())?);
        }
        // Durable before anything is created, so a crash leaves an explained state.
        self.save(&rec)?;
        if let Err(e) = self.finish_cdi_host_side(&uid, &mut rec).await {
            let _ = self.store.remove(&uid);
            return Err(e);
        }
        drakit_types::crash::point("prepare-after-checkpoint");
        let resp = response(&rec, &self.opts);
        claims.insert(uid, rec);
        Ok(resp)
    }

    /// Attach mode cdi: creates (or re-creates) and configures the host side of every device
    /// still marked pending, then records it complete. On failure what this call created is
    /// released and the error returned.
    async fn finish_cdi_host_side(
        &self,
        uid: &str,
        rec: &mut ClaimRecord,
    ) -> Result<(), ManagerError> {
        let mut created = Vec::new();
        for i in 0..rec.devices.len() {
            if !rec.devices[i].host_pending {
                continue;
            }
            let res = match self.check_runc(uid).await {
                Ok(()) => self.cdi_host_side(uid, i, &mut rec.devices[i]).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => created.push(i),
                Err(e) => {
                    for j in created {
                        self.cdi_release(uid, &mut rec.devices[j]).await;
                    }
                    return Err(e);
                }
            }
        }
        if !created.is_empty() {
            drakit_types::crash::point("prepare-after-link-create");
            for &i in &created {
                rec.devices[i].host_pending = false;
            }
            self.save(rec)?;
        }
        Ok(())
    }

    fn plan_device(
        &self,
        uid: &str,
        i: usize,
        a: &pb::AllocatedDevice,
        npods: usize,
    ) -> Result<DeviceRecord, ManagerError> {
        let inv = self
            .find_inventory(&a.device)
            .ok_or_else(|| ManagerError::Invalid {
                claim: uid.into(),
                field: format!("devices[{i}].device"),
                reason: format!("device {:?} is not in this node's inventory", a.device),
            })?;
        let cfg = config::decode(&a.config_json).map_err(|source| ManagerError::Config {
            claim: uid.into(),
            device: a.device.clone(),
            source,
        })?;
        let bad = |field: &str, reason: String| ManagerError::Invalid {
            claim: uid.into(),
            field: format!("device {}: {field}", a.device),
            reason,
        };
        let implied = match &inv.host {
            HostDevice::Nic { .. } => NetKind::HostDevice,
            HostDevice::Vf { .. } => NetKind::SriovVf,
            HostDevice::Ipoib { .. } => NetKind::Ipoib,
            HostDevice::Rdma { roce: true, .. } => NetKind::Roce,
            HostDevice::Rdma { .. } => NetKind::Rdma,
            HostDevice::Virtual => cfg.kind.ok_or_else(|| {
                bad(
                    "kind",
                    "a virtual device needs a kind (macvlan, ipvlan, veth, dummy, ipoib, cni)"
                        .into(),
                )
            })?,
        };
        let kind = cfg.kind.unwrap_or(implied);
        let ok = match (&inv.host, kind) {
            (HostDevice::Virtual, k) => matches!(
                k,
                NetKind::Macvlan
                    | NetKind::Ipvlan
                    | NetKind::Veth
                    | NetKind::Dummy
                    | NetKind::Ipoib
                    | NetKind::Cni
            ),
            (HostDevice::Nic { .. }, k) => {
                matches!(k, NetKind::HostDevice | NetKind::Macvlan | NetKind::Ipvlan)
            }
            (HostDevice::Vf { .. }, k) => k == NetKind::SriovVf,
            (HostDevice::Ipoib { .. }, k) => matches!(k, NetKind::Ipoib | NetKind::HostDevice),
            (HostDevice::Rdma { roce, .. }, k) => {
                k == NetKind::Rdma || (*roce && k == NetKind::Roce)
            }
        };
        if !ok {
            return Err(bad(
                "kind",
                format!("{kind:?} does not fit device {:?}", a.device),
            ));
        }
        let has_netdev = kind != NetKind::Rdma;
        if has_netdev && npods > 1 {
            return Err(bad(
                "reservedFor",
                format!(
                    "claim is reserved for {npods} pods; a network interface can be attached to one pod only"
                ),
            ));
        }
        let mode = has_netdev.then(|| cfg.attach_mode.unwrap_or(self.opts.default_attach_mode));
        if kind == NetKind::Cni && mode == Some(AttachMode::Cdi) {
            return Err(bad(
                "attachMode",
                "cni claims attach with nri or hook".into(),
            ));
        }
        let ifname = cfg
            .interface_name
            .clone()
            .unwrap_or_else(|| default_ifname(uid, i));
        let mut parent = cfg.parent.clone();
        let mut host_name = String::new();
        let mut host_mac = None;
        let mut vf = None;
        let mut char_devs = Vec::new();
        match &inv.host {
            HostDevice::Nic { ifname: n, mac, .. } => {
                if kind == NetKind::HostDevice {
                    host_name = n.clone();
                    host_mac = mac.as_deref().and_then(|m| m.parse().ok());
                } else {
                    parent = Some(n.clone());
                }
            }
            HostDevice::Vf {
                ifname: n,
                pf,
                vf_index,
                mac,
                pci,
            } => {
                host_name = n.clone().ok_or_else(|| {
                    bad(
                        "device",
                        format!("VF {pci} has no network interface (driver not bound)"),
                    )
                })?;
                host_mac = mac.as_deref().and_then(|m| m.parse().ok());
                vf = Some((pf.clone(), *vf_index));
            }
            HostDevice::Ipoib { ifname: n, .. } => {
                if kind == NetKind::HostDevice {
                    host_name = n.clone();
                } else {
                    parent = Some(n.clone());
                }
            }
            HostDevice::Rdma {
                netdev,
                char_devs: c,
                ..
            } => {
                char_devs = c.clone();
                if kind == NetKind::Roce {
                    host_name = netdev.clone().ok_or_else(|| {
                        bad(
                            "device",
                            "RoCE device has no associated network interface".into(),
                        )
                    })?;
                }
            }
            HostDevice::Virtual => {}
        }
        if kind.is_virtual() {
            host_name = temp_name(uid, i, 'p');
            if matches!(kind, NetKind::Macvlan | NetKind::Ipvlan) {
                parent = parent.or_else(|| self.opts.default_parent.clone());
                if parent.is_none() {
                    return Err(bad("parent", format!("{kind:?} needs a parent interface")));
                }
            }
            if kind == NetKind::Ipoib && (parent.is_none() || cfg.pkey.is_none()) {
                return Err(bad(
                    "pkey",
                    "an ipoib child needs a parent IPoIB interface and a pkey".into(),
                ));
            }
        }
        let net = NetData {
            interface_name: if has_netdev {
                ifname.clone()
            } else {
                String::new()
            },
            ips: cfg.addresses.clone(),
            mac: cfg.mac.or(host_mac),
        };
        Ok(DeviceRecord {
            requests: a.requests.clone(),
            pool: a.pool.clone(),
            device: a.device.clone(),
            share_id: a.share_id.clone(),
            kind,
            mode,
            cfg,
            ifname,
            host_name,
            host_mac,
            parent,
            vf,
            char_devs,
            attached: None,
            cni_result: None,
            net,
            host_pending: mode == Some(AttachMode::Cdi),
        })
    }

    /// Attach mode cdi: the runtime moves the link, so it must exist on the host now.
    async fn cdi_host_side(
        &self,
        uid: &str,
        i: usize,
        d: &mut DeviceRecord,
    ) -> Result<(), ManagerError> {
        let nerr = |source| ManagerError::Netlink {
            claim: uid.into(),
            device: d.device.clone(),
            source,
        };
        if d.kind.is_virtual() {
            let idx = self.create_virtual(uid, i, d).await?;
            let res = async {
                for a in &d.cfg.addresses {
                    self.host.add_address(idx, *a).await?;
                }
                Ok::<_, NetlinkError>(())
            }
            .await;
            if let Err(e) = res {
                let _ = self.host.delete_link(idx).await;
                return Err(nerr(e));
            }
        } else {
            let l = self.find_physical(d).await.map_err(nerr)?;
            self.host
                .set_link(
                    l.index,
                    &LinkChange {
                        alias: Some(format!("{ALIAS_PREFIX}{uid}:{}", d.host_name)),
                        mtu: d.cfg.mtu,
                        mac: d.cfg.mac,
                        ..Default::default()
                    },
                )
                .await
                .map_err(nerr)?;
            d.host_mac = l.mac.or(d.host_mac);
        }
        Ok(())
    }

    async fn cdi_release(&self, uid: &str, d: &mut DeviceRecord) {
        if d.kind.is_virtual() {
            if let Ok(Some(l)) = self
                .host
                .find_link(&LinkId::Name(d.host_name.clone()))
                .await
            {
                let _ = self.host.delete_link(l.index).await;
            }
        } else if let Ok(l) = self.find_physical(d).await {
            let _ = self.restore_physical_in_host(uid, d, &l).await;
        }
    }

    // ---------------------------------------------------------------- links

    async fn find_physical(
        &self,
        d: &DeviceRecord,
    ) -> Result<crate::netlink::LinkInfo, NetlinkError> {
        if let Some(m) = d.host_mac
            && let Some(l) = self.host.find_link(&LinkId::Mac(m)).await?
        {
            return Ok(l);
        }
        self.host
            .find_link(&LinkId::Name(d.host_name.clone()))
            .await?
            .ok_or(NetlinkError::NoSuchLink {
                op: "find host interface".into(),
                link: d.host_name.clone(),
            })
    }

    async fn restore_physical_in_host(
        &self,
        _uid: &str,
        d: &DeviceRecord,
        l: &crate::netlink::LinkInfo,
    ) -> Result<(), NetlinkError> {
        let mut ch = LinkChange {
            alias: Some(String::new()),
            ..Default::default()
        };
        if l.name != d.host_name {
            ch.name = Some(d.host_name.clone());
            ch.up = Some(false);
        }
        self.host.set_link(l.index, &ch).await
    }

    /// Creates a virtual link in the host namespace under its temporary name and marks it.
    /// The kernel link kind for a virtual device (parent resolved in the host namespace).
    async fn virtual_link_kind(
        &self,
        uid: &str,
        i: usize,
        d: &DeviceRecord,
    ) -> Result<LinkKind, ManagerError> {
        let nerr = |source| ManagerError::Netlink {
            claim: uid.into(),
            device: d.device.clone(),
            source,
        };
        let peer = temp_name(uid, i, 'h');
        let parent_index = match &d.parent {
            Some(p) if matches!(d.kind, NetKind::Macvlan | NetKind::Ipvlan | NetKind::Ipoib) => {
                Some(
                    self.host
                        .find_link(&LinkId::Name(p.clone()))
                        .await
                        .map_err(nerr)?
                        .ok_or_else(|| ManagerError::Invalid {
                            claim: uid.into(),
                            field: format!("device {}: parent", d.device),
                            reason: format!("host interface {p:?} does not exist"),
                        })?
                        .index,
                )
            }
            _ => None,
        };
        Ok(match d.kind {
            NetKind::Macvlan => LinkKind::Macvlan {
                parent: parent_index.unwrap_or(0),
                mode: d.cfg.macvlan_mode.unwrap_or(MacvlanMode::Bridge),
            },
            NetKind::Ipvlan => LinkKind::Ipvlan {
                parent: parent_index.unwrap_or(0),
                mode: d.cfg.ipvlan_mode.unwrap_or(IpvlanMode::L2),
            },
            NetKind::Veth => LinkKind::Veth { peer: peer.clone() },
            NetKind::Ipoib => LinkKind::IpoibChild {
                parent: parent_index.unwrap_or(0),
                pkey: d.cfg.pkey.unwrap_or(0xffff),
            },
            _ => LinkKind::Dummy,
        })
    }

    /// Creates a non-veth virtual link directly in the pod under its final name, up, with its
    /// MTU and MAC (one request), marks it, adds its addresses and routes. Requests in the common
    /// case: the parent by name (host), the create, the new link by name (pod: ifindex and MAC),
    /// the mark, one per address and route. A link an earlier attempt left under the same name
    /// is looked for only when the create says the name is taken.
    async fn create_in_pod(
        &self,
        uid: &str,
        i: usize,
        d: &DeviceRecord,
        pod: &N,
        target: &N::Target,
    ) -> Result<NetData, ManagerError> {
        let nerr = |source| ManagerError::Netlink {
            claim: uid.into(),
            device: d.device.clone(),
            source,
        };
        let req = NewLink {
            name: d.ifname.clone(),
            kind: self.virtual_link_kind(uid, i, d).await?,
            mtu: d.cfg.mtu,
            mac: d.cfg.mac,
            up: true,
        };
        if let Err(e) = self.host.create_link_in(&req, target).await {
            let left = if e.errno() == Some(crate::netlink::EEXIST) {
                pod.find_link(&LinkId::Name(d.ifname.clone()))
                    .await
                    .map_err(nerr)?
            } else {
                None
            };
            let Some(l) = left else {
                return Err(nerr(e));
            };
            self.clear_leftover(uid, d, pod, &l).await?;
            self.host.create_link_in(&req, target).await.map_err(nerr)?;
        }
        let l = pod
            .find_link(&LinkId::Name(d.ifname.clone()))
            .await
            .map_err(nerr)?
            .ok_or_else(|| {
                nerr(NetlinkError::NoSuchLink {
                    op: "find created link".into(),
                    link: d.ifname.clone(),
                })
            })?;
        if let Err(e) = pod
            .set_link(
                l.index,
                &LinkChange {
                    alias: Some(format!("{ALIAS_PREFIX}{uid}")),
                    ..Default::default()
                },
            )
            .await
        {
            let _ = pod.delete_link(l.index).await;
            return Err(nerr(e));
        }
        drakit_types::crash::point("after-link-create");
        if self.opts.crash_after_create {
            return Err(ManagerError::Crash {
                claim: uid.into(),
                link: d.ifname.clone(),
            });
        }
        if let Err(e) = Self::add_addresses_and_routes(pod, l.index, d).await {
            let _ = pod.delete_link(l.index).await;
            return Err(nerr(e));
        }
        Ok(NetData {
            interface_name: d.ifname.clone(),
            ips: d.cfg.addresses.clone(),
            mac: l.mac.or(d.cfg.mac),
        })
    }

    /// A link named like the device is already in the pod. Left by an earlier attempt for this
    /// very claim that died half-way: a virtual link is deleted, a physical one (marked with its
    /// host name) is given back to the host (to be moved in again). Anything else is a clash.
    async fn clear_leftover(
        &self,
        uid: &str,
        d: &DeviceRecord,
        pod: &N,
        l: &crate::netlink::LinkInfo,
    ) -> Result<(), ManagerError> {
        let nerr = |source| ManagerError::Netlink {
            claim: uid.into(),
            device: d.device.clone(),
            source,
        };
        let alias = l.alias.as_deref();
        if d.kind.is_virtual()
            && l.kind.is_some()
            && alias == Some(format!("{ALIAS_PREFIX}{uid}").as_str())
        {
            pod.delete_link(l.index).await.map_err(nerr)
        } else if !d.kind.is_virtual()
            && alias == Some(format!("{ALIAS_PREFIX}{uid}:{}", d.host_name).as_str())
        {
            let host_target = self.host.self_target().map_err(nerr)?;
            pod.set_link(
                l.index,
                &LinkChange {
                    up: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(nerr)?;
            pod.move_link(l.index, &host_target, &d.host_name)
                .await
                .map_err(nerr)
        } else {
            Err(ManagerError::Invalid {
                claim: uid.into(),
                field: format!("device {}: interfaceName", d.device),
                reason: format!("{:?} already exists in the pod network namespace", d.ifname),
            })
        }
    }

    async fn create_virtual(
        &self,
        uid: &str,
        i: usize,
        d: &DeviceRecord,
    ) -> Result<u32, ManagerError> {
        let nerr = |source| ManagerError::Netlink {
            claim: uid.into(),
            device: d.device.clone(),
            source,
        };
        let peer = temp_name(uid, i, 'h');
        for stale in [&d.host_name, &peer] {
            if let Some(l) = self
                .host
                .find_link(&LinkId::Name(stale.clone()))
                .await
                .map_err(nerr)?
            {
                self.host.delete_link(l.index).await.map_err(nerr)?;
            }
        }
        let kind = self.virtual_link_kind(uid, i, d).await?;
        let idx = self
            .host
            .create_link(&NewLink {
                name: d.host_name.clone(),
                kind,
                mtu: d.cfg.mtu,
                mac: d.cfg.mac,
                up: false,
            })
            .await
            .map_err(nerr)?;
        let mark = async {
            let alias = Some(format!("{ALIAS_PREFIX}{uid}"));
            self.host
                .set_link(
                    idx,
                    &LinkChange {
                        alias: alias.clone(),
                        ..Default::default()
                    },
                )
                .await?;
            if d.kind == NetKind::Veth {
                let h = self
                    .host
                    .find_link(&LinkId::Name(peer.clone()))
                    .await?
                    .ok_or(NetlinkError::NoSuchLink {
                        op: "veth host end".into(),
                        link: peer.clone(),
                    })?;
                let master = match &d.cfg.bridge {
                    Some(b) => Some(
                        self.host
                            .find_link(&LinkId::Name(b.clone()))
                            .await?
                            .ok_or(NetlinkError::NoSuchLink {
                                op: "bridge for veth host end".into(),
                                link: b.clone(),
                            })?
                            .index,
                    ),
                    None => None,
                };
                self.host
                    .set_link(
                        h.index,
                        &LinkChange {
                            alias,
                            mtu: d.cfg.mtu,
                            master,
                            up: Some(true),
                            ..Default::default()
                        },
                    )
                    .await?;
            }
            Ok::<_, NetlinkError>(())
        }
        .await;
        if let Err(e) = mark {
            let _ = self.host.delete_link(idx).await;
            return Err(nerr(e));
        }
        drakit_types::crash::point("after-link-create");
        if self.opts.crash_after_create {
            return Err(ManagerError::Crash {
                claim: uid.into(),
                link: d.host_name.clone(),
            });
        }
        Ok(idx)
    }

    /// MTU, MAC, up, addresses and routes inside the pod, for the link `l` found there.
    async fn configure(
        pod: &N,
        l: &crate::netlink::LinkInfo,
        d: &DeviceRecord,
    ) -> Result<NetData, NetlinkError> {
        pod.set_link(
            l.index,
            &LinkChange {
                mtu: d.cfg.mtu,
                mac: d.cfg.mac,
                up: Some(true),
                ..Default::default()
            },
        )
        .await?;
        Self::add_addresses_and_routes(pod, l.index, d).await?;
        Ok(NetData {
            interface_name: d.ifname.clone(),
            ips: d.cfg.addresses.clone(),
            // The configured MAC was just set; without one the link keeps the MAC it was found with.
            mac: d.cfg.mac.or(l.mac),
        })
    }

    async fn add_addresses_and_routes(
        pod: &N,
        idx: u32,
        d: &DeviceRecord,
    ) -> Result<(), NetlinkError> {
        for a in &d.cfg.addresses {
            pod.add_address(idx, *a).await?;
        }
        for r in &d.cfg.routes {
            pod.add_route(&RouteSpec {
                dst: r.dst,
                gateway: r.gateway,
                oif: idx,
                metric: r.metric,
            })
            .await?;
        }
        Ok(())
    }

    async fn attach_device(
        &self,
        uid: &str,
        i: usize,
        d: &mut DeviceRecord,
        att: &Attachment,
    ) -> Result<(), ManagerError> {
        let nerr = |source| ManagerError::Netlink {
            claim: uid.into(),
            device: d.device.clone(),
            source,
        };
        if d.kind == NetKind::Cni {
            let args = CniArgs {
                container_id: cni_container_id(att, uid),
                netns: att.netns.clone(),
                ifname: d.ifname.clone(),
                extra_args: d.cfg.cni_args.clone(),
                capability_args: d.cfg.cni_capability_args.clone(),
            };
            let conf = d.cfg.cni_conflist.clone().unwrap_or_default();
            let out =
                self.opts
                    .cni
                    .add(&conf, &args)
                    .await
                    .map_err(|source| ManagerError::Cni {
                        claim: uid.into(),
                        source,
                    })?;
            d.net = NetData {
                interface_name: d.ifname.clone(),
                ips: out.ips,
                mac: out.mac,
            };
            d.cni_result = Some(out.result);
            d.attached = Some(att.clone());
            return Ok(());
        }
        let pod = self.host.enter(&att.netns).await.map_err(nerr)?;
        let target = pod.self_target().map_err(nerr)?;
        if d.kind.is_virtual() && d.kind != NetKind::Veth {
            d.net = self.create_in_pod(uid, i, d, &pod, &target).await?;
            d.attached = Some(att.clone());
            return Ok(());
        }
        if let Some(l) = pod
            .find_link(&LinkId::Name(d.ifname.clone()))
            .await
            .map_err(nerr)?
        {
            self.clear_leftover(uid, d, &pod, &l).await?;
        }
        if d.kind.is_virtual() {
            // veth: the host end stays behind: create both here, then move the pod end (one
            // request that also renames it).
            let idx = self.create_virtual(uid, i, d).await?;
            if let Err(e) = self.host.move_link(idx, &target, &d.ifname).await {
                // The kernel may have moved it before the rename failed: look on both sides.
                let _ = self.host.delete_link(idx).await;
                if let Ok(Some(l)) = pod.find_link(&LinkId::Name(d.host_name.clone())).await {
                    let _ = pod.delete_link(l.index).await;
                }
                return Err(nerr(e));
            }
            drakit_types::crash::point("after-move-to-netns");
            let res = async {
                let l = pod
                    .find_link(&LinkId::Name(d.ifname.clone()))
                    .await?
                    .ok_or(NetlinkError::NoSuchLink {
                        op: "find moved link".into(),
                        link: d.ifname.clone(),
                    })?;
                Self::configure(&pod, &l, d).await
            }
            .await;
            match res {
                Ok(net) => d.net = net,
                Err(e) => {
                    if let Ok(Some(l)) = pod.find_link(&LinkId::Name(d.ifname.clone())).await {
                        let _ = pod.delete_link(l.index).await;
                    }
                    return Err(nerr(e));
                }
            }
        } else {
            let l = self.find_physical(d).await.map_err(nerr)?;
            d.host_mac = l.mac.or(d.host_mac);
            if let Some((pf, vf)) = &d.vf {
                let pfl = self
                    .host
                    .find_link(&LinkId::Name(pf.clone()))
                    .await
                    .map_err(nerr)?
                    .ok_or_else(|| {
                        nerr(NetlinkError::NoSuchLink {
                            op: "find PF".into(),
                            link: pf.clone(),
                        })
                    })?;
                let s = VfSettings {
                    mac: d.cfg.mac,
                    vlan: d.cfg.vf.vlan,
                    qos: d.cfg.vf.qos,
                    trust: d.cfg.vf.trust,
                    spoofchk: d.cfg.vf.spoofchk,
                };
                self.host.set_vf(pfl.index, *vf, &s).await.map_err(nerr)?;
            }
            self.host
                .set_link(
                    l.index,
                    &LinkChange {
                        alias: Some(format!("{ALIAS_PREFIX}{uid}:{}", d.host_name)),
                        ..Default::default()
                    },
                )
                .await
                .map_err(nerr)?;
            if self.opts.crash_after_create {
                return Err(ManagerError::Crash {
                    claim: uid.into(),
                    link: d.host_name.clone(),
                });
            }
            let host_target = self.host.self_target().map_err(nerr)?;
            if let Err(e) = self.host.move_link(l.index, &target, &d.ifname).await {
                self.give_back(&pod, &host_target, d).await;
                let _ = self.restore_after_failed_attach(uid, d).await;
                return Err(nerr(e));
            }
            drakit_types::crash::point("after-move-to-netns");
            let res = async {
                let pl = pod
                    .find_link(&LinkId::Name(d.ifname.clone()))
                    .await?
                    .ok_or(NetlinkError::NoSuchLink {
                        op: "find moved link".into(),
                        link: d.ifname.clone(),
                    })?;
                Self::configure(&pod, &pl, d).await
            }
            .await;
            match res {
                Ok(net) => d.net = net,
                Err(e) => {
                    self.give_back(&pod, &host_target, d).await;
                    let _ = self.restore_after_failed_attach(uid, d).await;
                    return Err(nerr(e));
                }
            }
        }
        d.attached = Some(att.clone());
        Ok(())
    }

    async fn restore_after_failed_attach(
        &self,
        uid: &str,
        d: &DeviceRecord,
    ) -> Result<(), NetlinkError> {
        let l = self.find_physical(d).await?;
        self.restore_physical_in_host(uid, d, &l).await
    }

    /// Moves a physical link found in `pod` (by MAC, else by pod-side name) back to the host.
    async fn give_back(&self, pod: &N, host_target: &N::Target, d: &DeviceRecord) {
        let found = match d.host_mac {
            Some(m) => pod.find_link(&LinkId::Mac(m)).await.ok().flatten(),
            None => None,
        };
        let found = match found {
            Some(l) => Some(l),
            None => pod
                .find_link(&LinkId::Name(d.ifname.clone()))
                .await
                .ok()
                .flatten(),
        };
        if let Some(l) = found {
            let _ = pod
                .set_link(
                    l.index,
                    &LinkChange {
                        up: Some(false),
                        ..Default::default()
                    },
                )
                .await;
            let _ = pod.move_link(l.index, host_target, &d.host_name).await;
        }
    }

    /// Undoes an attachment; teardown goes on past errors and reports them all.
    async fn detach_device(&self, uid: &str, d: &mut DeviceRecord, errors: &mut Vec<String>) {
        let Some(att) = d.attached.clone() else {
            return;
        };
        let ctx = |e: &dyn std::fmt::Display| format!("claim {uid}, device {}: {e}", d.device);
        if d.kind == NetKind::Cni {
            let args = CniArgs {
                container_id: cni_container_id(&att, uid),
                netns: att.netns.clone(),
                ifname: d.ifname.clone(),
                extra_args: d.cfg.cni_args.clone(),
                capability_args: d.cfg.cni_capability_args.clone(),
            };
            let conf = d.cfg.cni_conflist.clone().unwrap_or_default();
            if let Err(es) = self
                .opts
                .cni
                .del(&conf, &args, d.cni_result.as_deref())
                .await
            {
                errors.extend(es.iter().map(|e| ctx(e)));
                return;
            }
            d.attached = None;
            d.cni_result = None;
            return;
        }
        let pod = self.host.enter(&att.netns).await.ok();
        let before = errors.len();
        if d.kind.is_virtual() {
            if let Some(pod) = &pod {
                match pod.find_link(&LinkId::Name(d.ifname.clone())).await {
                    Ok(Some(l))
                        if l.alias
                            .as_deref()
                            .is_none_or(|a| a.starts_with(&format!("{ALIAS_PREFIX}{uid}"))) =>
                    {
                        if let Err(e) = pod.delete_link(l.index).await {
                            errors.push(ctx(&e));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(ctx(&e)),
                }
            }
            for n in [d.host_name.clone(), temp_name_peer(&d.host_name)] {
                if let Ok(Some(l)) = self.host.find_link(&LinkId::Name(n)).await {
                    let _ = self.host.delete_link(l.index).await;
                }
            }
        } else {
            if let Some(pod) = &pod {
                match self.host.self_target() {
                    Ok(t) => self.give_back(pod, &t, d).await,
                    Err(e) => errors.push(ctx(&e)),
                }
            }
            match self.find_physical(d).await {
                Ok(l) => {
                    if let Err(e) = self.restore_physical_in_host(uid, d, &l).await {
                        errors.push(ctx(&e));
                    }
                }
                Err(e) => errors.push(ctx(&format!(
                    "interface not back in the host namespace yet: {e}"
                ))),
            }
        }
        if errors.len() == before {
            d.attached = None;
        }
    }

    // ---------------------------------------------------------------- pod events

    /// NRI RunPodSandbox: attaches every `nri`-mode device of the pod's claims.
    pub async fn attach_pod(
        &self,
        req: &pb::AttachPodRequest,
    ) -> Result<pb::AttachPodResponse, ManagerError> {
        let mut claims = self.claims.lock().await;
        let uids: Vec<String> = claims
            .values()
            .filter(|c| {
                c.pods.contains(&req.pod_uid)
                    && c.devices.iter().any(|d| d.mode == Some(AttachMode::Nri))
            })
            .map(|c| c.uid.clone())
            .collect();
        if uids.is_empty() {
            return Ok(pb::AttachPodResponse::default());
        }
        if req.host_network {
            return Err(ManagerError::HostNetwork {
                pod: req.pod_uid.clone(),
                claims: uids.join(", "),
            });
        }
        let att = Attachment {
            pod_uid: req.pod_uid.clone(),
            netns: PathBuf::from(&req.netns_path),
            sandbox_id: req.sandbox_id.clone(),
        };
        let mut out = Vec::new();
        let mut done: Vec<(String, usize)> = Vec::new();
        for uid in uids {
            let Some(mut rec) = claims.get(&uid).cloned() else {
                continue;
            };
            for i in 0..rec.devices.len() {
                if rec.devices[i].mode != Some(AttachMode::Nri) {
                    continue;
                }
                let already = rec.devices[i]
                    .attached
                    .as_ref()
                    .is_some_and(|a| a.pod_uid == att.pod_uid && a.netns == att.netns);
                match self.attach_one(&uid, i, &mut rec, &att).await {
                    Ok(()) if already => {}
                    Ok(()) => done.push((uid.clone(), i)),
                    Err(e) => {
                        claims.insert(uid.clone(), rec);
                        self.rollback(&mut claims, &done).await;
                        return Err(e);
                    }
                }
                out.push(attached(&rec, i, already));
            }
            drakit_types::crash::point("attach-before-checkpoint");
            self.save_attachment(&rec)?;
            claims.insert(uid, rec);
        }
        drakit_types::crash::point("attach-after-checkpoint");
        Ok(pb::AttachPodResponse { interfaces: out })
    }

    async fn attach_one(
        &self,
        uid: &str,
        i: usize,
        rec: &mut ClaimRecord,
        att: &Attachment,
    ) -> Result<(), ManagerError> {
        let d = &mut rec.devices[i];
        match &d.attached {
            Some(a) if a.pod_uid == att.pod_uid && a.netns == att.netns => return Ok(()),
            Some(a) => {
                return Err(ManagerError::Invalid {
                    claim: uid.into(),
                    field: format!("device {}", d.device),
                    reason: format!("already attached to pod {}", a.pod_uid),
                });
            }
            None => {}
        }
        self.attach_device(uid, i, d, att).await
    }

    async fn rollback(&self, claims: &mut BTreeMap<String, ClaimRecord>, done: &[(String, usize)]) {
        for (uid, i) in done.iter().rev() {
            if let Some(rec) = claims.get_mut(uid)
                && let Some(d) = rec.devices.get_mut(*i)
            {
                let mut errs = Vec::new();
                self.detach_device(uid, d, &mut errs).await;
                for e in errs {
                    tracing::warn!(claim.uid = %uid, error = %e, "rollback");
                }
                let _ = self.save_attachment(&rec.clone());
            }
        }
    }

    /// NRI StopPodSandbox/RemovePodSandbox: physical links back to the host, virtual ones deleted.
    pub async fn detach_pod(&self, req: &pb::DetachPodRequest) -> pb::DetachPodResponse {
        let mut claims = self.claims.lock().await;
        let mut errors = Vec::new();
        let uids: Vec<String> = claims
            .values()
            .filter(|c| {
                c.devices.iter().any(|d| {
                    d.attached
                        .as_ref()
                        .is_some_and(|a| a.pod_uid == req.pod_uid)
                })
            })
            .map(|c| c.uid.clone())
            .collect();
        for uid in uids {
            let Some(mut rec) = claims.get(&uid).cloned() else {
                continue;
            };
            for d in rec.devices.iter_mut() {
                if d.attached
                    .as_ref()
                    .is_some_and(|a| a.pod_uid == req.pod_uid)
                {
                    self.detach_device(&uid, d, &mut errors).await;
                }
            }
            drakit_types::crash::point("detach-before-checkpoint");
            if let Err(e) = self.save_attachment(&rec) {
                errors.push(e.to_string());
            }
            claims.insert(uid, rec);
        }
        if !req.netns_path.is_empty() {
            self.sweep_pod(&claims, req, &mut errors).await;
        }
        pb::DetachPodResponse { errors }
    }

    /// Links in the pod's namespace that carry the mark of a claim of this pod (or of no known
    /// claim) but that no record shows attached: left by an attach that died half-way (a crash
    /// before its record was written). Virtual ones are deleted, physical ones go back to the
    /// host under their host name, unmarked. A namespace that is already gone holds nothing.
    async fn sweep_pod(
        &self,
        claims: &BTreeMap<String, ClaimRecord>,
        req: &pb::DetachPodRequest,
        errors: &mut Vec<String>,
    ) {
        let Ok(pod) = self.host.enter(std::path::Path::new(&req.netns_path)).await else {
            return;
        };
        let Ok(links) = pod.links().await else {
            return;
        };
        for l in links {
            let Some((uid, host_name)) = l.alias.as_deref().and_then(parse_alias) else {
                continue;
            };
            let recorded = claims.get(&uid).map(|r| {
                (
                    r.pods.contains(&req.pod_uid),
                    r.devices.iter().any(|d| {
                        d.attached.is_some() && (d.ifname == l.name || d.host_name == l.name)
                    }),
                )
            });
            if matches!(recorded, Some((false, _)) | Some((_, true))) {
                continue;
            }
            let ctx = |e: &dyn std::fmt::Display| {
                format!("claim {uid}: leftover {} in the pod: {e}", l.name)
            };
            let res = match &host_name {
                None => pod.delete_link(l.index).await,
                Some(h) => {
                    async {
                        let host_target = self.host.self_target()?;
                        pod.set_link(
                            l.index,
                            &LinkChange {
                                up: Some(false),
                                ..Default::default()
                            },
                        )
                        .await?;
                        pod.move_link(l.index, &host_target, h).await?;
                        if let Some(hl) = self.host.find_link(&LinkId::Name(h.clone())).await? {
                            self.host
                                .set_link(
                                    hl.index,
                                    &LinkChange {
                                        alias: Some(String::new()),
                                        ..Default::default()
                                    },
                                )
                                .await?;
                        }
                        Ok(())
                    }
                    .await
                }
            };
            match res {
                Ok(()) => {
                    tracing::warn!(claim.uid = %uid, link = %l.name, pod.uid = %req.pod_uid, "removed a link a half-done attach left in the pod")
                }
                Err(e) => errors.push(ctx(&e)),
            }
        }
    }

    /// createRuntime hook: attaches the claim's `hook`-mode devices into the container's pod netns.
    pub async fn hook_attach(
        &self,
        req: &pb::HookAttachRequest,
    ) -> Result<pb::AttachPodResponse, ManagerError> {
        let uid = req.claim_uid.clone();
        let st = parse_oci_state(&req.oci_state_json).map_err(|reason| ManagerError::Invalid {
            claim: uid.clone(),
            field: "oci_state_json".into(),
            reason,
        })?;
        let mut claims = self.claims.lock().await;
        let mut rec = claims
            .get(&uid)
            .cloned()
            .ok_or_else(|| ManagerError::UnknownClaim(uid.clone()))?;
        let pod_uid = st.pod_uid.clone().unwrap_or_default();
        if !rec.pods.is_empty() && !pod_uid.is_empty() && !rec.pods.contains(&pod_uid) {
            return Err(ManagerError::Invalid {
                claim: uid,
                field: "pod".into(),
                reason: format!("pod {pod_uid} is not in the claim's reservedFor"),
            });
        }
        let netns = self.opts.proc_root.join(st.pid.to_string()).join("ns/net");
        let att = Attachment {
            pod_uid: pod_uid.clone(),
            netns,
            sandbox_id: st.sandbox_id.unwrap_or_default(),
        };
        let mut out = Vec::new();
        let mut done = Vec::new();
        for i in 0..rec.devices.len() {
            if rec.devices[i].mode != Some(AttachMode::Hook) {
                continue;
            }
            // Another container of the same pod already ran the hook: same result.
            if rec.devices[i]
                .attached
                .as_ref()
                .is_some_and(|a| !a.pod_uid.is_empty() && a.pod_uid == pod_uid)
            {
                out.push(attached(&rec, i, true));
                continue;
            }
            if let Err(e) = self.attach_one(&uid, i, &mut rec, &att).await {
                for j in done {
                    let mut errs = Vec::new();
                    self.detach_device(&uid, &mut rec.devices[j], &mut errs)
                        .await;
                }
                let _ = self.save_attachment(&rec);
                claims.insert(uid, rec);
                return Err(e);
            }
            done.push(i);
            out.push(attached(&rec, i, false));
        }
        drakit_types::crash::point("attach-before-checkpoint");
        self.save_attachment(&rec)?;
        claims.insert(uid, rec);
        drakit_types::crash::point("attach-after-checkpoint");
        Ok(pb::AttachPodResponse { interfaces: out })
    }

    /// CNI CHECK for an attached CNI claim.
    pub async fn cni_check(&self, claim_uid: &str) -> Result<(), ManagerError> {
        let claims = self.claims.lock().await;
        let rec = claims
            .get(claim_uid)
            .ok_or_else(|| ManagerError::UnknownClaim(claim_uid.into()))?;
        for d in rec.devices.iter().filter(|d| d.kind == NetKind::Cni) {
            let (Some(att), Some(res)) = (&d.attached, &d.cni_result) else {
                continue;
            };
            let args = CniArgs {
                container_id: cni_container_id(att, claim_uid),
                netns: att.netns.clone(),
                ifname: d.ifname.clone(),
                extra_args: d.cfg.cni_args.clone(),
                capability_args: d.cfg.cni_capability_args.clone(),
            };
            self.opts
                .cni
                .check(
                    d.cfg.cni_conflist.as_deref().unwrap_or_default(),
                    &args,
                    res,
                )
                .await
                .map_err(|source| ManagerError::Cni {
                    claim: claim_uid.into(),
                    source,
                })?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- unprepare

    /// Releases a claim. Unknown claims succeed. Physical links that came back to the host under
    /// their pod-side name (pod netns destroyed) are found by MAC and renamed.
    pub async fn unprepare(&self, uid: &str) -> Result<(), ManagerError> {
        let mut claims = self.claims.lock().await;
        let Some(mut rec) = claims.get(uid).cloned() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        for d in rec.devices.iter_mut() {
            if d.attached.is_some() {
                self.detach_device(uid, d, &mut errors).await;
            } else if d.mode == Some(AttachMode::Cdi) {
                if d.kind.is_virtual() {
                    if let Ok(Some(l)) = self
                        .host
                        .find_link(&LinkId::Name(d.host_name.clone()))
                        .await
                    {
                        let _ = self.host.delete_link(l.index).await;
                    }
                } else {
                    match self.find_physical(d).await {
                        Ok(l) => {
                            if let Err(e) = self.restore_physical_in_host(uid, d, &l).await {
                                errors.push(e.to_string());
                            }
                        }
                        Err(e) => errors.push(format!(
                            "device {}: {:?} is not back in the host namespace (is the pod sandbox still there?): {e}",
                            d.device, d.host_name
                        )),
                    }
                }
            }
        }
        if !errors.is_empty() {
            self.save(&rec)?;
            claims.insert(uid.into(), rec);
            return Err(ManagerError::Runtime {
                claim: uid.into(),
                reason: errors.join("; "),
            });
        }
        drakit_types::crash::point("unprepare-before-checkpoint");
        self.store.remove(uid)?;
        claims.remove(uid);
        Ok(())
    }

    // ---------------------------------------------------------------- start-up

    /// Reconciles the kernel with the records: deletes marked links no live claim explains
    /// (e.g. created just before a crash), gives physical links back their host name, and forgets
    /// attachments whose namespace is gone.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ManagerError> {
        let mut claims = self.claims.lock().await;
        let mut rep = ReconcileReport::default();
        let links = self
            .host
            .links()
            .await
            .map_err(|source| ManagerError::Netlink {
                claim: "-".into(),
                device: "-".into(),
                source,
            })?;
        let mut expected: BTreeMap<String, (String, usize)> = BTreeMap::new();
        for r in claims.values() {
            for (i, d) in r.devices.iter().enumerate() {
                if d.kind.is_virtual() {
                    expected.insert(d.host_name.clone(), (r.uid.clone(), i));
                    expected.insert(temp_name(&r.uid, i, 'h'), (r.uid.clone(), i));
                }
            }
        }
        for l in &links {
            let alias = l.alias.as_deref().and_then(parse_alias);
            if alias.is_none() && !is_temp_name(&l.name) {
                continue;
            }
            let owner = alias
                .as_ref()
                .map(|a| a.0.clone())
                .or_else(|| expected.get(&l.name).map(|e| e.0.clone()));
            let rec = owner.as_ref().and_then(|o| claims.get(o));
            if l.kind.is_some() {
                // Virtual: keep only the host side of a cdi-mode device waiting for its container.
                let keep = rec.is_some_and(|r| {
                    r.devices.iter().enumerate().any(|(i, d)| {
                        d.mode == Some(AttachMode::Cdi)
                            && d.attached.is_none()
                            && !d.host_pending
                            && (d.host_name == l.name || temp_name(&r.uid, i, 'h') == l.name)
                    }) || r.devices.iter().any(|d| {
                        d.kind == NetKind::Veth
                            && d.attached.is_some()
                            && temp_name_peer(&d.host_name) == l.name
                    })
                });
                if keep {
                    rep.kept.push(l.name.clone());
                } else if let Err(e) = self.host.delete_link(l.index).await {
                    // The peer of an already deleted veth vanishes with it.
                    if e.errno() != Some(crate::netlink::ENODEV) {
                        rep.errors.push(format!("deleting orphan {}: {e}", l.name));
                    }
                } else {
                    rep.removed.push(l.name.clone());
                }
            } else {
                let attached_cdi = rec.is_some_and(|r| {
                    r.devices.iter().any(|d| {
                        d.mode == Some(AttachMode::Cdi)
                            && d.host_mac == l.mac
                            && d.attached.is_none()
                            && !d.host_pending
                    })
                });
                if attached_cdi {
                    rep.kept.push(l.name.clone());
                    continue;
                }
                let name = alias
                    .as_ref()
                    .and_then(|a| a.1.clone())
                    .filter(|n| crate::netlink::valid_ifname(n));
                let mut ch = LinkChange {
                    alias: Some(String::new()),
                    ..Default::default()
                };
                if let Some(n) = &name
                    && n != &l.name
                {
                    ch.name = Some(n.clone());
                    ch.up = Some(false);
                }
                match self.host.set_link(l.index, &ch).await {
                    Ok(()) => rep.restored.push(name.unwrap_or_else(|| l.name.clone())),
                    Err(e) => rep.errors.push(format!("restoring {}: {e}", l.name)),
                }
            }
        }
        // Attachments whose namespace is gone.
        let uids: Vec<String> = claims.keys().cloned().collect();
        for uid in uids {
            let Some(mut rec) = claims.get(&uid).cloned() else {
                continue;
            };
            let mut changed = false;
            for d in rec.devices.iter_mut() {
                if d.attached
                    .as_ref()
                    .is_some_and(|a| self.host.open_target(&a.netns).is_err())
                    && d.kind != NetKind::Cni
                {
                    d.attached = None;
                    changed = true;
                }
            }
            if changed {
                self.save(&rec)?;
                claims.insert(uid, rec);
            }
        }
        Ok(rep)
    }
}

fn temp_name_peer(host_name: &str) -> String {
    let mut s = host_name.to_string();
    if s.ends_with('p') {
        s.pop();
        s.push('h');
    }
    s
}

fn cni_container_id(att: &Attachment, uid: &str) -> String {
    if att.sandbox_id.is_empty() {
        format!("drakit-{uid}")
    } else {
        att.sandbox_id.clone()
    }
}

fn attached(rec: &ClaimRecord, i: usize, already: bool) -> pb::AttachedInterface {
    let d = &rec.devices[i];
    pb::AttachedInterface {
        claim: Some(pb::ClaimRef {
            namespace: rec.namespace.clone(),
            name: rec.name.clone(),
            uid: rec.uid.clone(),
        }),
        device: d.device.clone(),
        network_data: Some(d.net.to_proto()),
        already_attached: already,
    }
}

fn response(rec: &ClaimRecord, opts: &ManagerOptions) -> pb::PrepareResponse {
    pb::PrepareResponse {
        devices: rec.devices.iter().map(|d| prepared(rec, d, opts)).collect(),
    }
}

fn prepared(rec: &ClaimRecord, d: &DeviceRecord, opts: &ManagerOptions) -> pb::PreparedDevice {
    let mut edits = pb::ContainerEdits::default();
    for c in &d.char_devs {
        edits.device_nodes.push(pb::DeviceNode {
            path: c.path.clone(),
            host_path: c.path.clone(),
            r#type: "c".into(),
            major: c.major,
            minor: c.minor,
            permissions: "rw".into(),
            file_mode: Some(0o666),
            uid: None,
            gid: None,
        });
    }
    match d.mode {
        Some(AttachMode::Cdi) => edits.net_devices.push(pb::NetDevice {
            host_interface_name: d.host_name.clone(),
            name: d.ifname.clone(),
        }),
        Some(AttachMode::Hook) => edits.hooks.push(hook_edit(rec, opts)),
        _ => {}
    }
    let network_data = (d.kind != NetKind::Rdma).then(|| d.net.to_proto());
    pb::PreparedDevice {
        requests: d.requests.clone(),
        pool: d.pool.clone(),
        device: d.device.clone(),
        share_id: d.share_id.clone(),
        edits: Some(edits),
        network_data,
        conditions: vec![],
    }
}

fn hook_edit(rec: &ClaimRecord, opts: &ManagerOptions) -> pb::Hook {
    let (bin, sock, timeout) = (&opts.hook_binary, &opts.hook_socket, opts.hook_timeout);
    pb::Hook {
        hook_name: "createRuntime".into(),
        path: bin.display().to_string(),
        args: vec![
            "drakit-oci-hook".into(),
            "--claim-uid".into(),
            rec.uid.clone(),
            "--socket".into(),
            sock.display().to_string(),
            "--timeout-ms".into(),
            timeout.as_millis().to_string(),
        ],
        // Explicit: without env the hook would inherit the runtime's whole environment.
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        timeout: Some(i32::try_from(timeout.as_secs() + 2).unwrap_or(i32::MAX)),
    }
}

/// The parts of the OCI state the hook needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciState {
    pub pid: u32,
    pub pod_uid: Option<String>,
    pub sandbox_id: Option<String>,
}

/// Parses the OCI state a runtime passes to hooks (size-limited, strict on `pid`).
pub fn parse_oci_state(text: &str) -> Result<OciState, String> {
    if text.len() > MAX_OCI_STATE {
        return Err("OCI state larger than 1 MiB".into());
    }
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("OCI state is not JSON: {e}"))?;
    let o = v.as_object().ok_or("OCI state is not an object")?;
    let pid = o
        .get("pid")
        .and_then(serde_json::Value::as_u64)
        .filter(|p| *p > 0 && *p <= u64::from(u32::MAX))
        .ok_or("OCI state has no valid pid")?;
    let ann = o.get("annotations").and_then(serde_json::Value::as_object);
    let get = |k: &str| {
        ann.and_then(|a| a.get(k))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .map(String::from)
    };
    Ok(OciState {
        pid: pid as u32,
        pod_uid: get(ANN_SANDBOX_UID),
        sandbox_id: get(ANN_SANDBOX_ID),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        let n = temp_name("0b7c-uid", 0, 'p');
        assert_eq!(n.len(), 13);
        assert!(is_temp_name(&n));
        assert!(!is_temp_name("dkxyz"));
        assert_eq!(temp_name_peer(&n), temp_name("0b7c-uid", 0, 'h'));
        assert!(crate::netlink::valid_ifname(&default_ifname("u", 3)));
    }

    #[test]
    fn oci_state() {
        let s = parse_oci_state(r#"{"ociVersion":"1.2.0","id":"c1","status":"creating","pid":4242,"bundle":"/b",
            "annotations":{"io.kubernetes.cri.sandbox-uid":"pod-1","io.kubernetes.cri.sandbox-id":"sb1"}}"#)
        .unwrap();
        assert_eq!(
            s,
            OciState {
                pid: 4242,
                pod_uid: Some("pod-1".into()),
                sandbox_id: Some("sb1".into())
            }
        );
        assert!(parse_oci_state(r#"{"pid":0}"#).is_err());
        assert!(parse_oci_state(r#"{"pid":"1"}"#).is_err());
        assert!(parse_oci_state("nope").is_err());
    }
}
