//! The kernel implementation of [`Netlink`](super::Netlink) on rtnetlink.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoKind, IpVlanMode, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    MacVlanMode,
};
use nix::sched::CloneFlags;
use rtnetlink::{
    Handle, LinkBridge, LinkDummy, LinkIpVlan, LinkIpoib, LinkMacVlan, LinkMessageBuilder,
    LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::{
    IpvlanMode, LinkChange, LinkInfo, LinkKind, MacvlanMode, NetlinkError, NewLink, RouteSpec,
    VfSettings,
};
use crate::addr::{IpNet, Mac};

/// An opened network namespace (its nsfs file) that links can be moved into.
#[derive(Debug, Clone)]
pub struct NsFd(Arc<File>);

/// rtnetlink bound to one network namespace.
#[derive(Debug, Clone)]
pub struct RtNetlink {
    handle: Handle,
    ns: NsFd,
    ns_path: PathBuf,
}

fn kernel(op: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = m.raw_code().abs();
            let reason = std::io::Error::from_raw_os_error(errno).to_string();
            NetlinkError::Kernel { op, errno, reason }
        }
        other => NetlinkError::Other {
            op,
            reason: other.to_string(),
        },
    }
}

fn open_ns(path: &Path) -> Result<File, NetlinkError> {
    File::open(path).map_err(|source| NetlinkError::NetnsGone {
        path: path.to_path_buf(),
        source,
    })
}

impl RtNetlink {
    /// A handle on the calling process's own namespace. Needs a tokio runtime.
    pub fn current() -> Result<Self, NetlinkError> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        let ns = NsFd(Arc::new(open_ns(&path)?));
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError::Other {
            op: "open netlink socket".into(),
            reason: e.to_string(),
        })?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            ns,
            ns_path: path,
        })
    }

    /// A handle on the namespace at `path`. Needs a tokio runtime.
    pub async fn open(path: &Path) -> Result<Self, NetlinkError> {
        let file = Arc::new(open_ns(path)?);
        let handle = Self::connect_in(path, &file)?;
        Ok(Self {
            handle,
            ns: NsFd(file),
            ns_path: path.to_path_buf(),
        })
    }

    /// Opens a netlink socket inside the namespace `file`, on the calling thread: it enters the
    /// namespace, creates the socket (a socket stays in the namespace it was created in) and
    /// enters its own namespace again, all synchronously, so no other task runs on the thread
    /// in between. Should the way back fail, the process aborts rather than let later work on
    /// this thread run in the pod's namespace. No thread is spawned and nothing waits for
    /// another thread: under load every such hand-off can cost a scheduler tick (4 ms here).
    fn connect_in(path: &Path, file: &File) -> Result<Handle, NetlinkError> {
        let enter_err = |reason: String| NetlinkError::NetnsEnter {
            path: path.to_path_buf(),
            reason,
        };
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| enter_err(format!("no tokio runtime: {e}")))?;
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| enter_err(format!("opening this thread's namespace: {e}")))?;
        nix::sched::setns(file, CloneFlags::CLONE_NEWNET)
            .map_err(|e| enter_err(format!("setns: {e}")))?;
        let back = Return(&home);
        let conn = rtnetlink::new_connection();
        drop(back);
        let (conn, handle, _) = conn.map_err(|e| enter_err(format!("netlink socket: {e}")))?;
        rt.spawn(conn);
        Ok(handle)
    }

    /// The namespace path this handle was opened on.
    pub fn ns_path(&self) -> &Path {
        &self.ns_path
    }
}

/// Puts the thread back into its own namespace when dropped (also on unwinding); aborts the
/// process if the kernel refuses, since the thread would otherwise go on in another namespace.
struct Return<'a>(&'a File);

impl Drop for Return<'_> {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.0, CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "drakit-netdev: cannot return to the thread's own network namespace ({e}); aborting"
            );
            std::process::abort();
        }
    }
}

fn macvlan_mode(m: MacvlanMode) -> MacVlanMode {
    match m {
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
        MacvlanMode::Source => MacVlanMode::Source,
    }
}

fn ipvlan_mode(m: IpvlanMode) -> IpVlanMode {
    match m {
        IpvlanMode::L2 => IpVlanMode::L2,
        IpvlanMode::L3 => IpVlanMode::L3,
        IpvlanMode::L3s => IpVlanMode::L3S,
    }
}

fn with_common<T>(mut b: LinkMessageBuilder<T>, req: &NewLink) -> LinkMessage {
    if let Some(mtu) = req.mtu {
        b = b.mtu(mtu);
    }
    if let Some(mac) = req.mac {
        b = b.address(mac.0.to_vec());
    }
    if req.up {
        b = b.up();
    }
    b.build()
}

fn to_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        alias: None,
        link: None,
        master: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(b) => info.mac = Mac::from_bytes(b),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::IfAlias(s) => info.alias = Some(s.clone()),
            LinkAttribute::Link(l) => info.link = Some(*l),
            LinkAttribute::Controller(c) => info.master = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        info.kind = Some(kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Other(s) => s.clone(),
        other => other.to_string(),
    }
}

fn new_link_message(req: &NewLink) -> LinkMessage {
    match &req.kind {
        LinkKind::Macvlan { parent, mode } => with_common(
            LinkMacVlan::new(&req.name, *parent, macvlan_mode(*mode)),
            req,
        ),
        LinkKind::Ipvlan { parent, mode } => {
            with_common(LinkIpVlan::new(&req.name, *parent, ipvlan_mode(*mode)), req)
        }
        LinkKind::Veth { peer } => with_common(LinkVeth::new(&req.name, peer), req),
        LinkKind::Dummy => with_common(LinkDummy::new(&req.name), req),
        LinkKind::Bridge => with_common(LinkBridge::new(&req.name), req),
        LinkKind::IpoibChild { parent, pkey } => {
            with_common(LinkIpoib::new(&req.name).pkey(*pkey).link(*parent), req)
        }
    }
}

impl super::Netlink for RtNetlink {
    type Target = NsFd;

    async fn enter(&self, path: &Path) -> Result<Self, NetlinkError> {
        Self::open(path).await
    }

    fn open_target(&self, path: &Path) -> Result<NsFd, NetlinkError> {
        Ok(NsFd(Arc::new(open_ns(path)?)))
    }

    fn self_target(&self) -> Result<NsFd, NetlinkError> {
        Ok(self.ns.clone())
    }

    async fn create_link(&self, req: &NewLink) -> Result<u32, NetlinkError> {
        let op = format!("create {} link {:?}", req.kind.kernel_kind(), req.name);
        let msg = new_link_message(req);
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| kernel(&op, e))?;
        let found = self
            .handle
            .link()
            .get()
            .match_name(req.name.clone())
            .execute()
            .try_next()
            .await
            .map_err(|e| kernel(&op, e))?;
        found
            .map(|m| m.header.index)
            .ok_or(NetlinkError::NoSuchLink {
                op,
                link: req.name.clone(),
            })
    }

    async fn find_link(&self, id: &super::LinkId) -> Result<Option<LinkInfo>, NetlinkError> {
        // Kernel-side lookups for name and index instead of a full dump.
        let req = match id {
            super::LinkId::Name(n) => self.handle.link().get().match_name(n.clone()),
            super::LinkId::Index(i) => self.handle.link().get().match_index(*i),
            super::LinkId::Mac(m) => {
                let links = self.links().await?;
                return Ok(links.into_iter().find(|l| l.mac.as_ref() == Some(m)));
            }
        };
        match req.execute().try_next().await {
            Ok(m) => Ok(m.as_ref().map(to_info)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == super::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(kernel(format!("find link {id}"), e)),
        }
    }

    async fn create_link_in(&self, req: &NewLink, target: &NsFd) -> Result<(), NetlinkError> {
        let op = format!(
            "create {} link {:?} in another namespace",
            req.kind.kernel_kind(),
            req.name
        );
        let mut msg = new_link_message(req);
        msg.attributes
            .push(LinkAttribute::NetNsFd(target.0.as_raw_fd()));
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| kernel(&op, e))
    }

    async fn move_link(
        &self,
        index: u32,
        target: &NsFd,
        new_name: &str,
    ) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(target.0.as_raw_fd())
            .name(new_name.to_string())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| kernel(format!("move ifindex {index} as {new_name:?}"), e))
    }

    async fn set_link(&self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mtu) = change.mtu {
            b = b.mtu(mtu);
        }
        if let Some(mac) = change.mac {
            b = b.address(mac.0.to_vec());
        }
        if let Some(name) = &change.name {
            b = b.name(name.clone());
        }
        if let Some(alias) = &change.alias {
            b = b.alias(alias.clone());
        }
        match change.master {
            Some(0) => b = b.nocontroller(),
            Some(m) => b = b.controller(m),
            None => {}
        }
        match change.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| kernel(format!("set ifindex {index} ({change:?})"), e))
    }

    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| kernel(format!("delete ifindex {index}"), e))
    }

    async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel("list links", e))?;
        Ok(msgs.iter().map(to_info).collect())
    }

    async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, addr.addr(), addr.prefix())
            .execute()
            .await
            .map_err(|e| kernel(format!("add address {addr} to ifindex {index}"), e))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel(format!("list addresses of ifindex {index}"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.index != index {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(n) = IpNet::new(ip, m.header.prefix_len)
            {
                out.push(n);
            }
        }
        Ok(out)
    }

    async fn add_route(&self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let op = format!(
            "add route {} via {:?} dev ifindex {}",
            route.dst, route.gateway, route.oif
        );
        let bad = |reason: String| NetlinkError::Other {
            op: op.clone(),
            reason,
        };
        let dst: IpAddr = route.dst.network().addr();
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, route.dst.prefix())
            .map_err(|e| bad(e.to_string()))?
            .output_interface(route.oif);
        if let Some(gw) = route.gateway {
            b = b.gateway(gw).map_err(|e| bad(e.to_string()))?;
        }
        if let Some(m) = route.metric {
            b = b.priority(m);
        }
        self.handle
            .route()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| kernel(&op, e))
    }

    async fn set_vf(&self, pf_index: u32, vf: u32, s: &VfSettings) -> Result<(), NetlinkError> {
        use netlink_packet_route::link::{
            LinkVfInfo, VfInfo, VfInfoMac, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan,
        };
        let mut infos = Vec::new();
        if let Some(m) = s.mac {
            infos.push(VfInfo::Mac(VfInfoMac::new(vf, &m.0)));
        }
        if let Some(v) = s.vlan {
            infos.push(VfInfo::Vlan(VfInfoVlan::new(
                vf,
                u32::from(v),
                u32::from(s.qos.unwrap_or(0)),
            )));
        }
        if let Some(t) = s.trust {
            infos.push(VfInfo::Trust(VfInfoTrust::new(vf, t)));
        }
        if let Some(c) = s.spoofchk {
            infos.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, c)));
        }
        if infos.is_empty() {
            return Ok(());
        }
        let mut msg = LinkUnspec::new_with_index(pf_index).build();
        msg.attributes
            .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(infos)]));
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| kernel(format!("set VF {vf} on PF ifindex {pf_index} ({s:?})"), e))
    }
}
