//! Small network value types with strict parsing: interface names, MAC addresses, interface
//! addresses (CIDR) and route destinations. Each serialises as the canonical string, so
//! re-encoding a decoded config gives the text Kubernetes expects in `networkData`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest Linux interface name in bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

macro_rules! string_serde {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// A Linux network interface name: 1..=15 bytes, not `.` or `..`, without `/`, `:`,
/// whitespace, NUL or `%` (kernel name templates are not accepted in configs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InterfaceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("interface name must not be empty".into());
        }
        if s.len() > IFNAME_MAX {
            return Err(format!(
                "interface name {s:?} is {} bytes, more than the kernel limit of {IFNAME_MAX}",
                s.len()
            ));
        }
        if s == "." || s == ".." {
            return Err(format!("interface name {s:?} is not allowed"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, '/' | ':' | '%' | '\0') || c.is_whitespace())
        {
            return Err(format!(
                "interface name {s:?} contains {c:?}, which the kernel does not accept"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_serde!(InterfaceName, "an interface name");

/// A unicast, non-zero Ethernet MAC address; written as six lower-case hex pairs with `:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address (six hex pairs separated by ':')");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if out[0] & 1 == 1 {
            return Err(format!(
                "{s} is a multicast address; an interface needs a unicast MAC"
            ));
        }
        if out == [0; 6] {
            return Err("00:00:00:00:00:00 is not a usable MAC address".into());
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

string_serde!(MacAddr, "a MAC address");

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address"))?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "{s} is an IPv4-mapped IPv6 address; write the IPv4 address instead"
        ));
    }
    Ok(ip)
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not in CIDR form (address/prefix-length)"))?;
    let ip = parse_ip(ip)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("{s:?}: prefix length {len:?} is not a number"));
    }
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?}: prefix length is not a number"))?;
    if len > max {
        return Err(format!(
            "{s:?}: prefix length {len} is above the maximum {max}"
        ));
    }
    Ok((ip, len))
}

fn mask_host_bits(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// An interface address in CIDR form (`192.0.2.5/24`, `2001:db8::5/64`): host bits allowed,
/// not unspecified, not multicast, not IPv4-mapped. Written canonically (as Kubernetes wants
/// `networkData.ips`: no leading zeros, lower case, compressed IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InterfaceAddress {
    /// The address.
    pub ip: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl FromStr for InterfaceAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix_len) = parse_cidr(s)?;
        if ip.is_unspecified() {
            return Err(format!("{s}: the unspecified address cannot be assigned"));
        }
        if ip.is_multicast() {
            return Err(format!(
                "{s}: a multicast address cannot be assigned to an interface"
            ));
        }
        Ok(Self { ip, prefix_len })
    }
}

impl fmt::Display for InterfaceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

string_serde!(InterfaceAddress, "an interface address in CIDR form");

/// A network prefix (route destination) in CIDR form with no host bits set (`10.2.0.0/16`,
/// `0.0.0.0/0`, `::/0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    /// The network address.
    pub ip: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix_len) = parse_cidr(s)?;
        let net = mask_host_bits(ip, prefix_len);
        if net != ip {
            return Err(format!(
                "{s} has host bits set; the network is {net}/{prefix_len}"
            ));
        }
        Ok(Self { ip, prefix_len })
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

string_serde!(IpPrefix, "a network prefix in CIDR form");

/// A gateway address: any unicast IP, canonical text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GatewayAddr(pub IpAddr);

impl FromStr for GatewayAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ip = parse_ip(s)?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!("{s} cannot be a gateway"));
        }
        Ok(Self(ip))
    }
}

impl fmt::Display for GatewayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

string_serde!(GatewayAddr, "an IP address");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for ok in ["eth0", "net1", "a", "abcdefghijklmno", "ens1f0v3", "data.0"] {
            assert!(ok.parse::<InterfaceName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "abcdefghijklmnop",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\0",
            "eth%d",
        ] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            "02:AB:cd:00:00:01".parse::<MacAddr>().unwrap().to_string(),
            "02:ab:cd:00:00:01"
        );
        for bad in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02-00-00-00-00-01",
            "2:0:0:0:0:1",
            "+2:00:00:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_are_canonical() {
        let a: InterfaceAddress = "2001:DB8:0:0::5/64".parse().unwrap();
        assert_eq!(a.to_string(), "2001:db8::5/64");
        let a: InterfaceAddress = "192.0.2.5/24".parse().unwrap();
        assert_eq!(a.to_string(), "192.0.2.5/24");
        for bad in [
            "192.0.2.5",
            "192.0.2.5/33",
            "192.0.2.5/-1",
            "192.0.2.5/+8",
            "192.0.2.5/ 8",
            "010.0.0.1/8",
            "0.0.0.0/0",
            "224.0.0.1/4",
            "::ffff:192.0.2.5/120",
            "2001:db8::5/129",
            "x/8",
        ] {
            assert!(bad.parse::<InterfaceAddress>().is_err(), "{bad}");
        }
        assert!("10.2.0.0/16".parse::<IpPrefix>().is_ok());
        assert!("0.0.0.0/0".parse::<IpPrefix>().is_ok());
        assert!("::/0".parse::<IpPrefix>().is_ok());
        let e = "10.2.0.1/16".parse::<IpPrefix>().unwrap_err();
        assert!(e.contains("10.2.0.0/16"), "{e}");
    }
}
