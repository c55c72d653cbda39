//! A small typed facade over rtnetlink: everything the manager does to links, addresses and
//! routes goes through [`Netlink`], so the logic above it is tested against the in-memory `fake`
//! module (feature `fake`) and the real implementation ([`real::RtNetlink`]) is exercised by
//! kernel tests.
//!
//! A `Netlink` value is bound to one network namespace. [`Netlink::enter`] gives a handle on
//! another namespace; the real implementation creates the netlink socket for it with the calling
//! thread briefly inside that namespace (a socket belongs to the namespace of the thread that
//! created it) and back in its own before anything else can run on that thread.

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::addr::{IpNet, Mac};

#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod real;

/// Errors from the netlink facade.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace {path} is gone or unreadable: {source}")]
    NetnsGone {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {reason}")]
    NetnsEnter { path: PathBuf, reason: String },
    #[error("{op}: {reason}")]
    Kernel {
        op: String,
        errno: i32,
        reason: String,
    },
    #[error("{op}: link {link} not found")]
    NoSuchLink { op: String, link: String },
    #[error("{op}: {reason}")]
    Other { op: String, reason: String },
}

pub const EEXIST: i32 = 17;
pub const ENODEV: i32 = 19;
pub const EINVAL: i32 = 22;
pub const EOPNOTSUPP: i32 = 95;

impl NetlinkError {
    /// The kernel errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The kernel does not know this link kind (module missing).
    pub fn is_unsupported_kind(&self) -> bool {
        matches!(self.errno(), Some(EOPNOTSUPP)) || matches!(self.errno(), Some(e) if e == 2)
    }
}

/// macvlan modes (`ip link ... type macvlan mode X`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
    Source,
}

/// ipvlan modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpvlanMode {
    L2,
    L3,
    L3s,
}

/// The kind-specific part of a link to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Macvlan {
        parent: u32,
        mode: MacvlanMode,
    },
    Ipvlan {
        parent: u32,
        mode: IpvlanMode,
    },
    /// A veth pair: the new link plus its peer, both in the handle's namespace.
    Veth {
        peer: String,
    },
    Dummy,
    Bridge,
    /// An IPoIB child interface on a partition key.
    IpoibChild {
        parent: u32,
        pkey: u16,
    },
}

impl LinkKind {
    /// The kernel's `IFLA_INFO_KIND` name.
    pub fn kernel_kind(&self) -> &'static str {
        match self {
            LinkKind::Macvlan { .. } => "macvlan",
            LinkKind::Ipvlan { .. } => "ipvlan",
            LinkKind::Veth { .. } => "veth",
            LinkKind::Dummy => "dummy",
            LinkKind::Bridge => "bridge",
            LinkKind::IpoibChild { .. } => "ipoib",
        }
    }
}

/// A link to create in the handle's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLink {
    pub name: String,
    pub kind: LinkKind,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    /// Bring it up in the create request itself (`IFF_UP`; the kernel applies it once the link
    /// is registered, so no separate request is needed).
    pub up: bool,
}

/// Attributes to change on an existing link; `None` leaves one alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub up: Option<bool>,
    pub alias: Option<String>,
    /// Enslave to this bridge (ifindex) or, with `Some(0)`, release from any master.
    pub master: Option<u32>,
    pub name: Option<String>,
}

/// What the facade reports about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `macvlan`, `bridge`, ...); `None` for physical devices.
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    pub alias: Option<String>,
    /// `IFLA_LINK` (the parent of a macvlan/ipvlan, the peer of a veth).
    pub link: Option<u32>,
    pub master: Option<u32>,
}

/// A route to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: Option<std::net::IpAddr>,
    pub oif: u32,
    /// Route priority (`metric`); None: the kernel's default.
    pub metric: Option<u32>,
}

/// SR-IOV settings for one VF, set through its PF.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VfSettings {
    pub mac: Option<Mac>,
    pub vlan: Option<u16>,
    /// 802.1p priority of `vlan`.
    pub qos: Option<u8>,
    pub trust: Option<bool>,
    pub spoofchk: Option<bool>,
}

/// Ways to find a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkId {
    Index(u32),
    Name(String),
    Mac(Mac),
}

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkId::Index(i) => write!(f, "ifindex {i}"),
            LinkId::Name(n) => write!(f, "{n:?}"),
            LinkId::Mac(m) => write!(f, "MAC {m}"),
        }
    }
}

/// Netlink operations in one network namespace.
pub trait Netlink: Send + Sync + Sized + 'static {
    /// An opened namespace that links can be moved into (the real one holds its fd).
    type Target: Send + Sync;

    /// A handle operating inside the namespace at `path` (e.g. `/var/run/netns/x`,
    /// `/proc/<pid>/ns/net`).
    fn enter(&self, path: &Path) -> impl Future<Output = Result<Self, NetlinkError>> + Send;

    /// Opens the namespace at `path` as a move target.
    fn open_target(&self, path: &Path) -> Result<Self::Target, NetlinkError>;

    /// The target for this handle's own namespace (to move links back to it).
    fn self_target(&self) -> Result<Self::Target, NetlinkError>;

    /// Creates a link; returns its ifindex.
    fn create_link(&self, req: &NewLink) -> impl Future<Output = Result<u32, NetlinkError>> + Send;

    /// Creates a link directly inside `target` (parent looked up here), in one request: no
    /// namespace move, so no RCU grace period on the way in.
    fn create_link_in(
        &self,
        req: &NewLink,
        target: &Self::Target,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    /// Moves a link into `target`, renaming it there, in one request.
    fn move_link(
        &self,
        index: u32,
        target: &Self::Target,
        new_name: &str,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    fn set_link(
        &self,
        index: u32,
        change: &LinkChange,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    fn delete_link(&self, index: u32) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    fn links(&self) -> impl Future<Output = Result<Vec<LinkInfo>, NetlinkError>> + Send;

    fn add_address(
        &self,
        index: u32,
        addr: IpNet,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    fn addresses(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<IpNet>, NetlinkError>> + Send;

    fn add_route(&self, route: &RouteSpec)
    -> impl Future<Output = Result<(), NetlinkError>> + Send;

    /// Sets MAC/VLAN/trust/spoofchk of VF `vf` on PF `pf_index` (`IFLA_VFINFO_LIST`).
    fn set_vf(
        &self,
        pf_index: u32,
        vf: u32,
        s: &VfSettings,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;

    /// Finds one link by index, name or MAC.
    fn find_link(
        &self,
        id: &LinkId,
    ) -> impl Future<Output = Result<Option<LinkInfo>, NetlinkError>> + Send {
        async move {
            let links = self.links().await?;
            Ok(links.into_iter().find(|l| match id {
                LinkId::Index(i) => l.index == *i,
                LinkId::Name(n) => &l.name == n,
                LinkId::Mac(m) => l.mac.as_ref() == Some(m),
            }))
        }
    }
}

/// Linux interface-name rule: 1..=15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

#[cfg(test)]
mod tests {
    use super::valid_ifname;

    #[test]
    fn ifnames() {
        assert!(valid_ifname("net1"));
        assert!(valid_ifname("abcdefghijklmno"));
        assert!(!valid_ifname("abcdefghijklmnop"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(".."));
    }
}
