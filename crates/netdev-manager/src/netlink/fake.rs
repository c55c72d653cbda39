//! In-memory [`Netlink`]: namespaces, links, addresses and routes, with the kernel's observable
//! rules that the manager depends on (name clashes, parent lookup, MTU above the parent, a move
//! that lands under the old name when the new one clashes, namespaces that vanish with their
//! virtual links while physical ones fall back to the host).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    EEXIST, EINVAL, ENODEV, EOPNOTSUPP, LinkChange, LinkInfo, LinkKind, NetlinkError, NewLink,
    RouteSpec, VfSettings,
};
use crate::addr::{IpNet, Mac};

/// The path the fake calls the host (initial) namespace.
pub const HOST: &str = "/fake/host";

#[derive(Debug, Clone)]
struct FakeLink {
    info: LinkInfo,
    physical: bool,
    addrs: Vec<IpNet>,
    /// Peer ifindex for veth.
    peer: Option<u32>,
}

#[derive(Debug, Default)]
struct World {
    namespaces: BTreeMap<String, BTreeMap<u32, FakeLink>>,
    routes: BTreeMap<String, Vec<RouteSpec>>,
    next_index: u32,
    unsupported: BTreeSet<&'static str>,
    next_mac: u64,
    /// Fail the n-th next mutating call (for crash/rollback tests).
    fail_ops: BTreeMap<String, u32>,
    vf_settings: BTreeMap<(u32, u32), VfSettings>,
}

/// A handle on one namespace of a shared in-memory world.
#[derive(Debug, Clone)]
pub struct FakeNetlink {
    world: Arc<Mutex<World>>,
    ns: String,
}

fn lock(w: &Arc<Mutex<World>>) -> MutexGuard<'_, World> {
    match w.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn kerr(op: String, errno: i32, reason: &str) -> NetlinkError {
    NetlinkError::Kernel {
        op,
        errno,
        reason: reason.to_string(),
    }
}

impl FakeNetlink {
    /// A world with a host namespace holding `lo`; every link kind is supported.
    pub fn new_world() -> Self {
        let mut w = World {
            next_index: 2,
            next_mac: 1,
            ..World::default()
        };
        let mut host = BTreeMap::new();
        host.insert(
            1,
            FakeLink {
                info: LinkInfo {
                    index: 1,
                    name: "lo".into(),
                    kind: None,
                    mac: None,
                    mtu: 65536,
                    up: true,
                    alias: None,
                    link: None,
                    master: None,
                },
                physical: true,
                addrs: vec![],
                peer: None,
            },
        );
        w.namespaces.insert(HOST.into(), host);
        Self {
            world: Arc::new(Mutex::new(w)),
            ns: HOST.into(),
        }
    }

    /// Makes creating links of this kernel kind fail with EOPNOTSUPP (module missing).
    pub fn set_unsupported(&self, kind: &'static str) {
        lock(&self.world).unsupported.insert(kind);
    }

    /// Makes the next call of `op` (e.g. "move_link") fail.
    pub fn fail_next(&self, op: &str) {
        *lock(&self.world)
            .fail_ops
            .entry(op.to_string())
            .or_default() += 1;
    }

    /// Adds a namespace at `path` (like `ip netns add`).
    pub fn add_ns(&self, path: &str) {
        lock(&self.world).namespaces.entry(path.into()).or_default();
    }

    /// Destroys a namespace like the kernel: virtual links die, physical links return to the
    /// host under their current name.
    pub fn remove_ns(&self, path: &str) {
        let mut w = lock(&self.world);
        let Some(links) = w.namespaces.remove(path) else {
            return;
        };
        w.routes.remove(path);
        let dead: Vec<u32> = links
            .values()
            .filter(|l| !l.physical)
            .filter_map(|l| l.peer)
            .collect();
        for l in links.into_values() {
            if l.physical
                && let Some(host) = w.namespaces.get_mut(HOST)
            {
                let mut l = l;
                l.addrs.clear();
                l.info.up = false;
                host.insert(l.info.index, l);
            }
        }
        for ns in w.namespaces.values_mut() {
            for p in &dead {
                ns.remove(p);
            }
        }
    }

    /// Adds a physical NIC to namespace `ns`; returns its ifindex.
    pub fn add_physical(&self, ns: &str, name: &str, mac: Mac, mtu: u32) -> u32 {
        let mut w = lock(&self.world);
        let index = w.next_index;
        w.next_index += 1;
        let link = FakeLink {
            info: LinkInfo {
                index,
                name: name.into(),
                kind: None,
                mac: Some(mac),
                mtu,
                up: true,
                alias: None,
                link: None,
                master: None,
            },
            physical: true,
            addrs: vec![],
            peer: None,
        };
        w.namespaces
            .entry(ns.into())
            .or_default()
            .insert(index, link);
        index
    }

    /// A handle on namespace `ns` of the same world (no checks).
    pub fn handle_for(&self, ns: &str) -> Self {
        Self {
            world: self.world.clone(),
            ns: ns.into(),
        }
    }

    /// VF settings applied through PF `pf` for VF `vf`.
    pub fn vf_settings(&self, pf: u32, vf: u32) -> Option<VfSettings> {
        lock(&self.world).vf_settings.get(&(pf, vf)).copied()
    }

    /// Routes recorded in this namespace.
    pub fn routes(&self) -> Vec<RouteSpec> {
        lock(&self.world)
            .routes
            .get(&self.ns)
            .cloned()
            .unwrap_or_default()
    }

    /// Link names in namespace `ns` (sorted), for assertions.
    pub fn names_in(&self, ns: &str) -> Vec<String> {
        let w = lock(&self.world);
        let mut v: Vec<String> = w
            .namespaces
            .get(ns)
            .map(|m| m.values().map(|l| l.info.name.clone()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn check_fail(w: &mut World, op: &str) -> Result<(), NetlinkError> {
        if let Some(n) = w.fail_ops.get_mut(op)
            && *n > 0
        {
            *n -= 1;
            return Err(kerr(format!("{op} (injected)"), 5, "injected failure"));
        }
        Ok(())
    }
}

fn ns_mut<'a>(w: &'a mut World, ns: &str) -> Result<&'a mut BTreeMap<u32, FakeLink>, NetlinkError> {
    w.namespaces
        .get_mut(ns)
        .ok_or_else(|| NetlinkError::NetnsGone {
            path: PathBuf::from(ns),
            source: std::io::Error::from_raw_os_error(2),
        })
}

fn name_taken(links: &BTreeMap<u32, FakeLink>, name: &str) -> bool {
    links.values().any(|l| l.info.name == name)
}

impl super::Netlink for FakeNetlink {
    type Target = String;

    async fn enter(&self, path: &Path) -> Result<Self, NetlinkError> {
        let p = path.to_string_lossy().to_string();
        let mut w = lock(&self.world);
        ns_mut(&mut w, &p)?;
        Ok(Self {
            world: self.world.clone(),
            ns: p,
        })
    }

    fn open_target(&self, path: &Path) -> Result<String, NetlinkError> {
        let p = path.to_string_lossy().to_string();
        let mut w = lock(&self.world);
        ns_mut(&mut w, &p)?;
        Ok(p)
    }

    fn self_target(&self) -> Result<String, NetlinkError> {
        Ok(self.ns.clone())
    }

    async fn create_link_in(&self, req: &NewLink, target: &String) -> Result<(), NetlinkError> {
        // Parent looked up here, link born in the target: like the kernel's IFLA_NET_NS_FD.
        let op = format!("create {} link {:?}", req.kind.kernel_kind(), req.name);
        {
            let mut w = lock(&self.world);
            if name_taken(ns_mut(&mut w, target)?, &req.name) {
                return Err(kerr(op, EEXIST, "File exists"));
            }
        }
        let tmp = format!("dkfake{}", lock(&self.world).next_index);
        let mut r = req.clone();
        r.name = tmp.chars().take(15).collect();
        let idx = self.create_link(&r).await?;
        let mut w = lock(&self.world);
        let src = ns_mut(&mut w, &self.ns)?;
        let mut l = src
            .remove(&idx)
            .ok_or_else(|| kerr(op.clone(), ENODEV, "No such device"))?;
        l.info.name = req.name.clone();
        ns_mut(&mut w, target)?.insert(idx, l);
        Ok(())
    }

    async fn create_link(&self, req: &NewLink) -> Result<u32, NetlinkError> {
        let op = format!("create {} link {:?}", req.kind.kernel_kind(), req.name);
        let mut w = lock(&self.world);
        Self::check_fail(&mut w, "create_link")?;
        if w.unsupported.contains(req.kind.kernel_kind()) {
            return Err(kerr(op, EOPNOTSUPP, "Operation not supported"));
        }
        if !super::valid_ifname(&req.name) {
            return Err(kerr(op, EINVAL, "Invalid argument"));
        }
        let index = w.next_index;
        let mac_seed = w.next_mac;
        w.next_index += 2;
        w.next_mac += 2;
        let links = ns_mut(&mut w, &self.ns)?;
        if name_taken(links, &req.name) {
            return Err(kerr(op, EEXIST, "File exists"));
        }
        let parent = match req.kind {
            LinkKind::Macvlan { parent, .. }
            | LinkKind::Ipvlan { parent, .. }
            | LinkKind::IpoibChild { parent, .. } => {
                let p = links
                    .get(&parent)
                    .ok_or_else(|| kerr(op.clone(), ENODEV, "No such device"))?;
                if req.mtu.is_some_and(|m| m > p.info.mtu) {
                    return Err(kerr(op, EINVAL, "Invalid argument"));
                }
                Some((parent, p.info.mtu))
            }
            _ => None,
        };
        if let LinkKind::Veth { peer } = &req.kind
            && (name_taken(links, peer) || peer == &req.name || !super::valid_ifname(peer))
        {
            return Err(kerr(op, EEXIST, "File exists"));
        }
        let mk_mac = |seed: u64| {
            let b = seed.to_be_bytes();
            Mac([0x02, 0xfa, b[4], b[5], b[6], b[7]])
        };
        let mtu = req.mtu.or(parent.map(|p| p.1)).unwrap_or(1500);
        let info = LinkInfo {
            index,
            name: req.name.clone(),
            kind: Some(req.kind.kernel_kind().into()),
            mac: req.mac.or(Some(mk_mac(mac_seed))),
            mtu,
            up: req.up,
            alias: None,
            link: parent.map(|p| p.0),
            master: None,
        };
        let mut peer_index = None;
        if let LinkKind::Veth { peer } = &req.kind {
            let pi = index + 1;
            peer_index = Some(pi);
            let pinfo = LinkInfo {
                index: pi,
                name: peer.clone(),
                mac: Some(mk_mac(mac_seed + 1)),
                link: Some(index),
                // The peer has its own flags: `up` is for the new link only.
                up: false,
                ..info.clone()
            };
            links.insert(
                pi,
                FakeLink {
                    info: pinfo,
                    physical: false,
                    addrs: vec![],
                    peer: Some(index),
                },
            );
        }
        let mut info = info;
        if peer_index.is_some() {
            info.link = peer_index;
        }
        links.insert(
            index,
            FakeLink {
                info,
                physical: false,
                addrs: vec![],
                peer: peer_index,
            },
        );
        Ok(index)
    }

    async fn move_link(
        &self,
        index: u32,
        target: &String,
        new_name: &str,
    ) -> Result<(), NetlinkError> {
        let op = format!("move ifindex {index} as {new_name:?}");
        let mut w = lock(&self.world);
        Self::check_fail(&mut w, "move_link")?;
        ns_mut(&mut w, target)?;
        let src = ns_mut(&mut w, &self.ns)?;
        let mut link = src
            .remove(&index)
            .ok_or_else(|| kerr(op.clone(), ENODEV, "No such device"))?;
        let dst = ns_mut(&mut w, target)?;
        if name_taken(dst, &link.info.name) {
            // The kernel refuses the move when the current name clashes and no free name is given.
            let clash_new = name_taken(dst, new_name);
            if clash_new {
                let src = ns_mut(&mut w, &self.ns)?;
                src.insert(index, link);
                return Err(kerr(op, EEXIST, "File exists"));
            }
            link.info.name = new_name.to_string();
        }
        link.addrs.clear();
        link.info.up = false;
        let clash = name_taken(dst, new_name) && link.info.name != new_name;
        if !clash {
            link.info.name = new_name.to_string();
        }
        dst.insert(index, link);
        if clash {
            // Like the kernel: moved, but the rename failed.
            return Err(kerr(op, EEXIST, "File exists"));
        }
        Ok(())
    }

    async fn set_link(&self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        let op = format!("set ifindex {index}");
        let mut w = lock(&self.world);
        Self::check_fail(&mut w, "set_link")?;
        let links = ns_mut(&mut w, &self.ns)?;
        if let Some(name) = &change.name
            && links
                .values()
                .any(|l| &l.info.name == name && l.info.index != index)
        {
            return Err(kerr(op, EEXIST, "File exists"));
        }
        if let Some(m) = change.master
            && m != 0
            && links
                .get(&m)
                .is_none_or(|l| l.info.kind.as_deref() != Some("bridge"))
        {
            return Err(kerr(op, EINVAL, "Invalid argument"));
        }
        let parent_mtu = links
            .get(&index)
            .and_then(|l| if l.peer.is_none() { l.info.link } else { None })
            .and_then(|p| links.get(&p))
            .map(|p| p.info.mtu);
        let l = links
            .get_mut(&index)
            .ok_or_else(|| kerr(op.clone(), ENODEV, "No such device"))?;
        if let Some(mtu) = change.mtu {
            if parent_mtu.is_some_and(|p| mtu > p) || mtu < 68 {
                return Err(kerr(op, EINVAL, "Invalid argument"));
            }
            l.info.mtu = mtu;
        }
        if let Some(mac) = change.mac {
            l.info.mac = Some(mac);
        }
        if let Some(name) = &change.name {
            l.info.name = name.clone();
        }
        if let Some(a) = &change.alias {
            l.info.alias = if a.is_empty() { None } else { Some(a.clone()) };
        }
        if let Some(m) = change.master {
            l.info.master = if m == 0 { None } else { Some(m) };
        }
        if let Some(up) = change.up {
            l.info.up = up;
        }
        Ok(())
    }

    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let op = format!("delete ifindex {index}");
        let mut w = lock(&self.world);
        Self::check_fail(&mut w, "delete_link")?;
        let links = ns_mut(&mut w, &self.ns)?;
        let l = links
            .get(&index)
            .ok_or_else(|| kerr(op.clone(), ENODEV, "No such device"))?;
        if l.physical {
            return Err(kerr(op, EOPNOTSUPP, "Operation not supported"));
        }
        let peer = l.peer;
        links.remove(&index);
        if let Some(p) = peer {
            for ns in w.namespaces.values_mut() {
                ns.remove(&p);
            }
        }
        for routes in w.routes.values_mut() {
            routes.retain(|r| r.oif != index);
        }
        Ok(())
    }

    async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut w = lock(&self.world);
        Ok(ns_mut(&mut w, &self.ns)?
            .values()
            .map(|l| l.info.clone())
            .collect())
    }

    async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let op = format!("add address {addr} to ifindex {index}");
        let mut w = lock(&self.world);
        Self::check_fail(&mut w, "add_address")?;
        let l = ns_mut(&mut w, &self.ns)?
            .get_mut(&index)
            .ok_or_else(|| kerr(op.clone(), ENODEV, "No such device"))?;
        if l.addrs.contains(&addr) {
            return Err(kerr(op, EEXIST, "File exists"));
        }
        l.addrs.push(addr);
        Ok(())
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let mut w = lock(&self.world);
        Ok(ns_mut(&mut w, &self.ns)?
            .get(&index)
            .map(|l| l.addrs.clone())
            .unwrap_or_default())
    }

    async fn add_route(&self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let op = format!("add route {}", route.dst);
        let mut w = lock(&self.world);
        Self::check_fail(&mut w, "add_route")?;
        let links = ns_mut(&mut w, &self.ns)?;
        let l = links
            .get(&route.oif)
            .ok_or_else(|| kerr(op.clone(), ENODEV, "No such device"))?;
        if let Some(gw) = route.gateway
            && !l
                .addrs
                .iter()
                .any(|a| IpNet::new(gw, a.prefix()).is_ok_and(|g| g.network() == a.network()))
        {
            return Err(kerr(op, 101, "Network is unreachable"));
        }
        let routes = w.routes.entry(self.ns.clone()).or_default();
        if routes
            .iter()
            .any(|r| r.dst.network() == route.dst.network())
        {
            return Err(kerr(op, EEXIST, "File exists"));
        }
        routes.push(*route);
        Ok(())
    }

    async fn set_vf(&self, pf_index: u32, vf: u32, s: &VfSettings) -> Result<(), NetlinkError> {
        let mut w = lock(&self.world);
        Self::check_fail(&mut w, "set_vf")?;
        if !ns_mut(&mut w, &self.ns)?.contains_key(&pf_index) {
            return Err(kerr(
                format!("set VF {vf} on ifindex {pf_index}"),
                ENODEV,
                "No such device",
            ));
        }
        let e = w.vf_settings.entry((pf_index, vf)).or_default();
        if s.mac.is_some() {
            e.mac = s.mac;
        }
        if s.vlan.is_some() {
            e.vlan = s.vlan;
        }
        if s.trust.is_some() {
            e.trust = s.trust;
        }
        if s.spoofchk.is_some() {
            e.spoofchk = s.spoofchk;
        }
        Ok(())
    }
}
