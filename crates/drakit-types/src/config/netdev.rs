//! `NetdevConfig`: one network interface in the pod, of one link kind.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, Reason, index, invalid, join};
use super::net::{GatewayAddr, InterfaceAddress, InterfaceName, IpPrefix, MacAddr};

/// Smallest MTU accepted (the IPv4 minimum).
pub const MTU_MIN: u32 = 68;
/// Largest MTU accepted.
pub const MTU_MAX: u32 = 65535;
/// Most addresses one interface may get (as `networkData.ips` allows).
pub const MAX_ADDRESSES: usize = 16;
/// Most routes one interface may get.
pub const MAX_ROUTES: usize = 64;

/// The link kind of a pod interface.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetdevKind {
    /// A macvlan child of `parent`, created for the pod.
    Macvlan,
    /// An ipvlan child of `parent`, created for the pod.
    Ipvlan,
    /// A veth pair: one end in the pod, the other on the host (optionally in bridge `master`).
    Veth,
    /// A dummy interface (no traffic leaves it).
    Dummy,
    /// An existing host interface (the allocated device) moved into the pod.
    HostDevice,
    /// An SR-IOV virtual function's netdev (the allocated device) moved into the pod, with
    /// VLAN / trust / spoof-check set on the physical function.
    SriovVf,
    /// An IPoIB child interface with partition key `pkey` on the allocated IPoIB device.
    Ipoib,
}

impl NetdevKind {
    /// The spelling used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Macvlan => "macvlan",
            Self::Ipvlan => "ipvlan",
            Self::Veth => "veth",
            Self::Dummy => "dummy",
            Self::HostDevice => "host-device",
            Self::SriovVf => "sriov-vf",
            Self::Ipoib => "ipoib",
        }
    }
}

impl fmt::Display for NetdevKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Link mode: macvlan modes and ipvlan modes (which apply depends on `kind`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetdevMode {
    /// macvlan: children talk to each other through the parent's bridge (the default).
    Bridge,
    /// macvlan: no traffic between children.
    Private,
    /// macvlan: traffic between children goes out to the switch.
    Vepa,
    /// macvlan: one child takes over the parent.
    Passthru,
    /// macvlan: only frames from allowed source MACs.
    Source,
    /// ipvlan: layer 2 mode (the default).
    L2,
    /// ipvlan: layer 3 mode.
    L3,
    /// ipvlan: layer 3 mode with netfilter on the slave.
    L3s,
}

impl NetdevMode {
    /// The spelling used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Private => "private",
            Self::Vepa => "vepa",
            Self::Passthru => "passthru",
            Self::Source => "source",
            Self::L2 => "l2",
            Self::L3 => "l3",
            Self::L3s => "l3s",
        }
    }

    fn is_macvlan(self) -> bool {
        matches!(
            self,
            Self::Bridge | Self::Private | Self::Vepa | Self::Passthru | Self::Source
        )
    }
}

/// How the interface gets into the pod.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// At RunPodSandbox through the NRI sidecar, into the pod netns (the default).
    Nri,
    /// CDI 1.1.0 `netDevices`: the runtime moves it (needs containerd ≥ 2.2 and runc ≥ 1.4; one
    /// container per pod).
    Cdi,
    /// A CDI `createRuntime` hook that calls back into drakit-netdev.
    Hook,
}

/// An InfiniBand partition key (15 bits, 0x0001..=0x7fff; the full-membership bit is the
/// driver's business). Written as a `0x`-prefixed hex string; an integer is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PKey(pub u16);

impl Serialize for PKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("0x{:04x}", self.0))
    }
}

impl<'de> Deserialize<'de> for PKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a partition key (0x0001..0x7fff, integer or \"0x\" hex string)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PKey, E> {
                check_pkey(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PKey, E> {
                let v = u64::try_from(v)
                    .map_err(|_| E::custom(format!("partition key {v} is negative")))?;
                check_pkey(v).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PKey, E> {
                let hex = s
                    .strip_prefix("0x")
                    .or_else(|| s.strip_prefix("0X"))
                    .filter(|h| !h.is_empty() && h.len() <= 4)
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "partition key {s:?} is not a hex number like \"0x8001\""
                        ))
                    })?;
                let v = u64::from_str_radix(hex, 16).map_err(E::custom)?;
                check_pkey(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn check_pkey(v: u64) -> Result<PKey, String> {
    if (1..=0x7fff).contains(&v) {
        Ok(PKey(v as u16))
    } else {
        Err(format!(
            "partition key {v:#x} is outside 0x0001..=0x7fff (the full-membership bit is set by the driver)"
        ))
    }
}

/// A route inside the pod through this interface.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Destination prefix in CIDR form, host bits clear (`10.2.0.0/16`; `0.0.0.0/0` or `::/0`
    /// for a default route).
    pub dst: IpPrefix,
    /// Next hop; same address family as `dst`. Absent: the destination is on-link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayAddr>,
    /// Route metric (priority); lower wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// The interface description (the `netdev:` object).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetdevSpec {
    /// Link kind: macvlan, ipvlan, veth, dummy, host-device, sriov-vf or ipoib.
    pub kind: NetdevKind,
    /// Name of the interface inside the pod (1..=15 bytes, kernel rules). Absent: the driver
    /// picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<InterfaceName>,
    /// MTU, 68..=65535. Absent: the kernel's default (the parent's MTU for macvlan/ipvlan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Unicast MAC address (`02:00:00:00:00:01`); written in lower case. Not for ipoib.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Interface addresses in CIDR form, IPv4 or IPv6, at most 16, no repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<InterfaceAddress>,
    /// Routes through this interface, at most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// macvlan: bridge | private | vepa | passthru | source; ipvlan: l2 | l3 | l3s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<NetdevMode>,
    /// Host interface the child hangs off: required for macvlan and ipvlan; for ipoib the
    /// allocated device is the parent unless this names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<InterfaceName>,
    /// veth only: host bridge to enslave the host-side end to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<InterfaceName>,
    /// veth only: name of the host-side end. Reserved: not supported yet and refused; the
    /// driver names the host end after the claim (so a crash can always be cleaned up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface_name: Option<InterfaceName>,
    /// sriov-vf only: VLAN ID 1..=4094 set on the VF by the physical function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// sriov-vf only: 802.1p priority 0..=7 for `vlan` (needs `vlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_qos: Option<u8>,
    /// sriov-vf only: let the VF change its MAC / enter promiscuous mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<bool>,
    /// sriov-vf only: drop frames whose source MAC is not the VF's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoof_chk: Option<bool>,
    /// ipoib only (required): partition key 0x0001..=0x7fff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkey: Option<PKey>,
    /// nri (default) | cdi | hook: how the interface gets into the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_mode: Option<AttachMode>,
}

impl NetdevSpec {
    /// A spec of this kind with everything else unset.
    pub fn new(kind: NetdevKind) -> Self {
        Self {
            kind,
            interface_name: None,
            mtu: None,
            mac: None,
            addresses: Vec::new(),
            routes: Vec::new(),
            mode: None,
            parent: None,
            master: None,
            host_interface_name: None,
            vlan: None,
            vlan_qos: None,
            trust: None,
            spoof_chk: None,
            pkey: None,
            attach_mode: None,
        }
    }

    /// Checks the rules serde cannot express. `path` is where this object sits (`netdev`).
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        use NetdevKind as K;
        let kind = self.kind;
        let not_for = |field: &'static str| {
            ConfigError::new(
                join(path, field),
                Reason::NotForKind {
                    field,
                    kind: kind.to_string(),
                },
            )
        };
        // Fields that only some kinds take.
        let only: [(&'static str, bool, &[K]); 10] = [
            ("mode", self.mode.is_some(), &[K::Macvlan, K::Ipvlan]),
            (
                "parent",
                self.parent.is_some(),
                &[K::Macvlan, K::Ipvlan, K::Ipoib],
            ),
            ("master", self.master.is_some(), &[K::Veth]),
            (
                "hostInterfaceName",
                self.host_interface_name.is_some(),
                &[K::Veth],
            ),
            ("vlan", self.vlan.is_some(), &[K::SriovVf]),
            ("vlanQos", self.vlan_qos.is_some(), &[K::SriovVf]),
            ("trust", self.trust.is_some(), &[K::SriovVf]),
            ("spoofChk", self.spoof_chk.is_some(), &[K::SriovVf]),
            ("pkey", self.pkey.is_some(), &[K::Ipoib]),
            (
                "mac",
                self.mac.is_some(),
                &[K::Macvlan, K::Veth, K::Dummy, K::HostDevice, K::SriovVf],
            ),
        ];
        for (field, set, kinds) in only {
            if set && !kinds.contains(&kind) {
                return Err(not_for(field));
            }
        }
        if self.host_interface_name.is_some() {
            // drakit-netdev names the host end after the claim, so that a crash can always be
            // cleaned up; a chosen name is refused rather than silently ignored.
            return Err(invalid(
                join(path, "hostInterfaceName"),
                "choosing the veth host end's name is not supported yet (drakit names it after the claim)"
                    .to_string(),
            ));
        }
        if let Some(m) = self.mode {
            let ok = match kind {
                K::Macvlan => m.is_macvlan(),
                _ => !m.is_macvlan(),
            };
            if !ok {
                let allowed = if kind == K::Macvlan {
                    "bridge, private, vepa, passthru, source"
                } else {
                    "l2, l3, l3s"
                };
                return Err(invalid(
                    join(path, "mode"),
                    format!("{} is not a {kind} mode (one of {allowed})", m.as_str()),
                ));
            }
        }
        if matches!(kind, K::Macvlan | K::Ipvlan) && self.parent.is_none() {
            return Err(invalid(
                join(path, "parent"),
                format!("required for kind {kind}"),
            ));
        }
        if kind == K::Ipoib && self.pkey.is_none() {
            return Err(invalid(join(path, "pkey"), "required for kind ipoib"));
        }
        if let Some(mtu) = self.mtu {
            if mtu < MTU_MIN {
                return Err(invalid(
                    join(path, "mtu"),
                    format!("{mtu} is below the minimum {MTU_MIN}"),
                ));
            }
            if mtu > MTU_MAX {
                return Err(invalid(
                    join(path, "mtu"),
                    format!("{mtu} is above the maximum {MTU_MAX}"),
                ));
            }
        }
        if let Some(v) = self.vlan
            && !(1..=4094).contains(&v)
        {
            return Err(invalid(
                join(path, "vlan"),
                format!("{v} is outside the VLAN ID range 1..=4094"),
            ));
        }
        if let Some(q) = self.vlan_qos {
            if q > 7 {
                return Err(invalid(
                    join(path, "vlanQos"),
                    format!("{q} is above the maximum 7"),
                ));
            }
            if self.vlan.is_none() {
                return Err(invalid(join(path, "vlanQos"), "needs vlan"));
            }
        }
        let ap = join(path, "addresses");
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(
                &ap,
                format!(
                    "{} addresses, more than the maximum {MAX_ADDRESSES}",
                    self.addresses.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, a) in self.addresses.iter().enumerate() {
            if !seen.insert(a.ip) {
                return Err(invalid(
                    index(&ap, i),
                    format!("address {} is listed twice", a.ip),
                ));
            }
        }
        let rp = join(path, "routes");
        if self.routes.len() > MAX_ROUTES {
            return Err(invalid(
                &rp,
                format!(
                    "{} routes, more than the maximum {MAX_ROUTES}",
                    self.routes.len()
                ),
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(gw) = r.gateway
                && gw.0.is_ipv4() != r.dst.ip.is_ipv4()
            {
                return Err(invalid(
                    join(&index(&rp, i), "gateway"),
                    format!("{} is not in the address family of dst {}", gw, r.dst),
                ));
            }
        }
        Ok(())
    }
}

/// `kind: NetdevConfig`: one network interface for the pod.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetdevConfig {
    /// Legacy selector from the original driver's configs; when present it must be `netdev`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<String>,
    /// The interface.
    pub netdev: NetdevSpec,
}

impl NetdevConfig {
    /// Semantic checks with field paths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_legacy_type(self.legacy_type.as_deref(), &["netdev"], "NetdevConfig")?;
        self.netdev.validate("netdev")
    }
}

pub(crate) fn check_legacy_type(
    t: Option<&str>,
    allowed: &[&str],
    kind: &str,
) -> Result<(), ConfigError> {
    match t {
        Some(t) if !allowed.contains(&t) => Err(invalid(
            "type",
            format!(
                "{t:?} does not match kind {kind} (expected {})",
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        )),
        _ => Ok(()),
    }
}
