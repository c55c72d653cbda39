//! Device inventory from sysfs, rooted at a configurable path so fixtures can stand in for a
//! machine: NICs that can be handed to a pod, SR-IOV VFs, IPoIB interfaces, RDMA HCAs (plain
//! InfiniBand or RoCE) and the virtual-link capacity.
//!
//! Not published: the node's default-route uplink(s), loopback, bridges, bonds and other
//! virtual links, PFs with VFs enabled (their VFs are published instead) and netdevs that back
//! an RDMA device (published as that RDMA device).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use drakit_proto::drakit::{self as pb, attribute::Value};

/// Most attributes + capacities a device may carry (ResourceSlice limit).
pub const MAX_ATTRS: usize = 32;
/// Longest string attribute value.
pub const MAX_STRING: usize = 64;
/// The Kubernetes-defined PCIe root attribute.
pub const PCIE_ROOT_ATTR: &str = "resource.kubernetes.io/pcieRoot";

/// Errors from scanning sysfs.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How virtual links (macvlan, ipvlan, veth, dummy, ipoib child, cni) are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualMode {
    /// One shared device with `allowMultipleAllocations` and a consumable `slots` capacity.
    Shared { slots: u32 },
    /// `n` pre-enumerated devices `virtual-0` .. `virtual-{n-1}`.
    Slots(u32),
    /// None.
    Off,
}

/// Where to look and what to leave out.
#[derive(Debug, Clone)]
pub struct InventoryOptions {
    /// Usually `/sys`.
    pub sys_root: PathBuf,
    /// Usually `/proc` (for `net/route`, the default-route uplinks).
    pub proc_root: PathBuf,
    /// Interfaces never to publish (in addition to the default-route uplinks).
    pub exclude: Vec<String>,
    pub virtual_mode: VirtualMode,
}

impl InventoryOptions {
    pub fn new(sys_root: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            sys_root: sys_root.into(),
            proc_root: proc_root.into(),
            exclude: vec![],
            virtual_mode: VirtualMode::Shared { slots: 128 },
        }
    }
}

/// A character device a container needs (`/dev/infiniband/uverbsN`, `rdma_cm`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CharDev {
    pub path: String,
    pub major: i64,
    pub minor: i64,
}

/// What a published device is on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HostDevice {
    /// A whole NIC to move into the pod.
    Nic {
        ifname: String,
        pci: Option<String>,
        mac: Option<String>,
    },
    /// An SR-IOV virtual function.
    Vf {
        ifname: Option<String>,
        pci: String,
        pf: String,
        vf_index: u32,
        mac: Option<String>,
    },
    /// An IPoIB interface (parent for pkey children).
    Ipoib { ifname: String, hca: Option<String> },
    /// An RDMA HCA; `netdev` is its associated network interface (RoCE when link layer is Ethernet).
    Rdma {
        hca: String,
        pci: Option<String>,
        netdev: Option<String>,
        roce: bool,
        char_devs: Vec<CharDev>,
    },
    /// Capacity for links created on demand.
    Virtual,
}

/// A device ready to publish plus what it is on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundDevice {
    pub name: String,
    pub host: HostDevice,
    pub attributes: BTreeMap<String, Value>,
    pub capacity: BTreeMap<String, pb::Capacity>,
    pub shared: bool,
}

fn read(p: &Path) -> Option<String> {
    use std::io::Read;
    let f = fs::File::open(p).ok()?;
    let mut s = String::new();
    f.take(4096).read_to_string(&mut s).ok()?;
    Some(s.trim().to_string())
}

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()?
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A DNS label made from arbitrary text: lower case, `[a-z0-9-]`, ≤ 63, no dash at either end.
pub fn dns_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let mut out: String = out.trim_matches('-').chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "x".into() } else { out }
}

/// True for `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, ≤ 63.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

struct Pci {
    addr: String,
    root: Option<String>,
    vendor: Option<String>,
    device: Option<String>,
    numa: Option<i64>,
}

fn pci_info(dev_link: &Path) -> Option<Pci> {
    let canon = fs::canonicalize(dev_link).ok()?;
    let addr = canon.file_name()?.to_string_lossy().to_string();
    if !looks_pci(&addr) {
        return None;
    }
    let root = canon
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .find(|c| c.starts_with("pci") && c.len() > 3);
    let numa = read(&canon.join("numa_node"))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= 0);
    Some(Pci {
        addr,
        root,
        vendor: read(&canon.join("vendor")),
        device: read(&canon.join("device")),
        numa,
    })
}

fn looks_pci(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
}

fn default_route_ifaces(proc_root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(t) = read(&proc_root.join("net/route")) {
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                out.insert(f[0].to_string());
            }
        }
    }
    if let Some(t) = read(&proc_root.join("net/ipv6_route")) {
        for line in t.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
                out.insert(f[9].to_string());
            }
        }
    }
    out
}

struct Attrs(BTreeMap<String, Value>);

impl Attrs {
    fn s(&mut self, k: &str, v: impl Into<String>) {
        let v: String = v.into();
        if !v.is_empty() && v.len() <= MAX_STRING {
            self.0.insert(k.into(), Value::String(v));
        }
    }
    fn os(&mut self, k: &str, v: Option<impl Into<String>>) {
        if let Some(v) = v {
            self.s(k, v);
        }
    }
    fn i(&mut self, k: &str, v: i64) {
        self.0.insert(k.into(), Value::Int(v));
    }
    fn b(&mut self, k: &str, v: bool) {
        self.0.insert(k.into(), Value::Bool(v));
    }
    fn pci(&mut self, p: &Pci) {
        self.s("pciAddress", p.addr.clone());
        self.os(PCIE_ROOT_ATTR, p.root.clone());
        self.os("vendor", p.vendor.clone());
        self.os("deviceId", p.device.clone());
        if let Some(n) = p.numa {
            self.i("numaNode", n);
        }
    }
}

fn char_dev(sys_class_dir: &Path, dev_path: String) -> Option<CharDev> {
    let t = read(&sys_class_dir.join("dev"))?;
    let (a, b) = t.split_once(':')?;
    Some(CharDev {
        path: dev_path,
        major: a.parse().ok()?,
        minor: b.parse().ok()?,
    })
}

/// Scans sysfs. A missing `class/net` is an error (wrong root); anything odd inside a device's
/// directory only drops that attribute or device.
pub fn scan(opts: &InventoryOptions) -> Result<Vec<FoundDevice>, InventoryError> {
    let sys = &opts.sys_root;
    let net_dir = sys.join("class/net");
    fs::read_dir(&net_dir).map_err(|source| InventoryError::Read {
        path: net_dir.clone(),
        source,
    })?;
    let uplinks = default_route_ifaces(&opts.proc_root);
    let mut out = Vec::new();

    // RDMA first: their netdevs are published as part of them.
    let mut rdma_netdevs = BTreeSet::new();
    let verbs_dir = sys.join("class/infiniband_verbs");
    let mut uverbs_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in list(&verbs_dir) {
        if let Some(ib) = read(&verbs_dir.join(&u).join("ibdev")) {
            uverbs_of.entry(ib).or_default().push(u);
        }
    }
    let rdma_cm = char_dev(
        &sys.join("class/misc/rdma_cm"),
        "/dev/infiniband/rdma_cm".into(),
    );
    let ib_dir = sys.join("class/infiniband");
    for hca in list(&ib_dir) {
        let d = ib_dir.join(&hca);
        let pci = pci_info(&d.join("device"));
        let link_layer = read(&d.join("ports/1/link_layer"));
        let state = read(&d.join("ports/1/state"));
        let netdev =
            read(&d.join("ports/1/gid_attrs/ndevs/0")).filter(|s| !s.is_empty() && s.len() <= 15);
        let roce = link_layer.as_deref() == Some("Ethernet");
        let mut a = Attrs(BTreeMap::new());
        a.s("type", if roce { "roce" } else { "rdma" });
        a.s("rdmaDevice", hca.clone());
        a.os("linkLayer", link_layer.clone());
        a.os(
            "portState",
            state
                .as_deref()
                .map(|s| s.split_once(": ").map_or(s, |x| x.1).to_string()),
        );
        a.os("nodeGuid", read(&d.join("node_guid")));
        a.os("netdev", netdev.clone());
        a.b("roce", roce);
        if let Some(p) = &pci {
            a.pci(p);
        }
        let mut char_devs = Vec::new();
        for u in uverbs_of.get(&hca).cloned().unwrap_or_default() {
            if let Some(c) = char_dev(&verbs_dir.join(&u), format!("/dev/infiniband/{u}")) {
                a.s("uverbs", u.clone());
                char_devs.push(c);
            }
        }
        if let Some(c) = &rdma_cm {
            char_devs.push(c.clone());
        }
        if let Some(n) = netdev.as_ref().filter(|_| roce) {
            rdma_netdevs.insert(n.clone());
        }
        out.push(FoundDevice {
            name: dns_label(&format!("rdma-{hca}")),
            host: HostDevice::Rdma {
                hca: hca.clone(),
                pci: pci.as_ref().map(|p| p.addr.clone()),
                netdev,
                roce,
                char_devs,
            },
            attributes: a.0,
            capacity: BTreeMap::new(),
            shared: false,
        });
    }

    for ifname in list(&net_dir) {
        if ifname.len() > 15
            || uplinks.contains(&ifname)
            || opts.exclude.contains(&ifname)
            || rdma_netdevs.contains(&ifname)
        {
            continue;
        }
        let d = net_dir.join(&ifname);
        if d.join("bridge").exists() || d.join("bonding").exists() {
            continue;
        }
        let Some(pci) = pci_info(&d.join("device")) else {
            continue;
        }; // virtual link
        let dev = d.join("device");
        let typ = read(&d.join("type"))
            .and_then(|t| t.parse::<u32>().ok())
            .unwrap_or(1);
        let mac = read(&d.join("address")).filter(|m| m.len() == 17);
        let mut a = Attrs(BTreeMap::new());
        a.s("ifName", ifname.clone());
        a.os("mac", mac.clone());
        if let Some(m) = read(&d.join("mtu")).and_then(|m| m.parse::<i64>().ok()) {
            a.i("mtu", m);
        }
        a.pci(&pci);
        if typ == 32 {
            let hca = list(&dev.join("infiniband")).into_iter().next();
            a.s("type", "netdev");
            a.s("kind", "ipoib");
            a.os("pkey", read(&d.join("pkey")));
            a.os("rdmaDevice", hca.clone());
            out.push(FoundDevice {
                name: dns_label(&format!("ipoib-{ifname}")),
                host: HostDevice::Ipoib { ifname, hca },
                attributes: a.0,
                capacity: BTreeMap::new(),
                shared: false,
            });
            continue;
        }
        if dev.join("physfn").exists() {
            let pf_dir = dev.join("physfn");
            let pf_name = list(&pf_dir.join("net"))
                .into_iter()
                .next()
                .unwrap_or_default();
            let vf_index = list(&pf_dir)
                .into_iter()
                .filter_map(|e| {
                    e.strip_prefix("virtfn")
                        .and_then(|n| n.parse::<u32>().ok())
                        .map(|n| (e, n))
                })
                .find(|(e, _)| link_name(&pf_dir.join(e)).as_deref() == Some(pci.addr.as_str()))
                .map(|(_, n)| n);
            let Some(vf_index) = vf_index else { continue };
            a.s("type", "netdev");
            a.s("kind", "sriov-vf");
            a.s("pfName", pf_name.clone());
            a.i("vfIndex", i64::from(vf_index));
            out.push(FoundDevice {
                name: dns_label(&format!("vf-{}", pci.addr)),
                host: HostDevice::Vf {
                    ifname: Some(ifname),
                    pci: pci.addr.clone(),
                    pf: pf_name,
                    vf_index,
                    mac,
                },
                attributes: a.0,
                capacity: BTreeMap::new(),
                shared: false,
            });
            continue;
        }
        let numvfs = read(&dev.join("sriov_numvfs"))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        if numvfs > 0 {
            continue;
        }
        if let Some(t) = read(&dev.join("sriov_totalvfs")).and_then(|n| n.parse::<i64>().ok()) {
            a.i("sriovTotalVfs", t);
        }
        a.s("type", "netdev");
        a.s("kind", "host-device");
        out.push(FoundDevice {
            name: dns_label(&format!("nic-{ifname}")),
            host: HostDevice::Nic {
                ifname,
                pci: Some(pci.addr.clone()),
                mac,
            },
            attributes: a.0,
            capacity: BTreeMap::new(),
            shared: false,
        });
    }

    let virtual_attrs = || {
        let mut a = Attrs(BTreeMap::new());
        a.s("type", "netdev");
        a.s("kind", "virtual");
        a.0
    };
    match opts.virtual_mode {
        VirtualMode::Shared { slots } => {
            let mut cap = BTreeMap::new();
            cap.insert(
                "slots".to_string(),
                pb::Capacity {
                    value: slots.to_string(),
                    request_policy: Some(pb::RequestPolicy {
                        default: "1".into(),
                        ..Default::default()
                    }),
                },
            );
            out.push(FoundDevice {
                name: "netdev-virtual".into(),
                host: HostDevice::Virtual,
                attributes: virtual_attrs(),
                capacity: cap,
                shared: true,
            });
        }
        VirtualMode::Slots(n) => {
            for i in 0..n {
                out.push(FoundDevice {
                    name: format!("virtual-{i}"),
                    host: HostDevice::Virtual,
                    attributes: virtual_attrs(),
                    capacity: BTreeMap::new(),
                    shared: false,
                });
            }
        }
        VirtualMode::Off => {}
    }

    // Enforce the API limits by construction.
    let mut seen = BTreeSet::new();
    out.retain(|d| is_dns_label(&d.name) && seen.insert(d.name.clone()));
    for d in &mut out {
        while d.attributes.len() + d.capacity.len() > MAX_ATTRS {
            let Some(k) = d.attributes.keys().next_back().cloned() else {
                break;
            };
            d.attributes.remove(&k);
        }
    }
    Ok(out)
}

/// The wire form sent to the kubelet plugin.
pub fn to_proto(devices: &[FoundDevice], generation: u64, pool: &str) -> pb::Inventory {
    pb::Inventory {
        generation,
        pool: pool.to_string(),
        devices: devices
            .iter()
            .map(|d| pb::Device {
                name: d.name.clone(),
                attributes: d
                    .attributes
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            pb::Attribute {
                                value: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
                capacity: d.capacity.clone().into_iter().collect(),
                allow_multiple_allocations: d.shared,
                health: pb::Health::Healthy as i32,
                health_message: String::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(dns_label("vf-0000:3b:02.0"), "vf-0000-3b-02-0");
        assert_eq!(dns_label("rdma-mlx5_0"), "rdma-mlx5-0");
        assert_eq!(dns_label("--A__b--"), "a-b");
        assert!(is_dns_label(&dns_label(&"x".repeat(200))));
        assert!(!is_dns_label("a-"));
    }

    #[test]
    fn missing_root_is_an_error() {
        let o = InventoryOptions::new("/nonexistent-drakit/sys", "/nonexistent-drakit/proc");
        assert!(scan(&o).unwrap_err().to_string().contains("class/net"));
    }
}
