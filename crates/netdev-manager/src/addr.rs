//! Interface addresses (CIDR) and MAC addresses: strict parsing and the canonical text that
//! ResourceClaim `status.devices[].networkData` requires (`192.0.2.5/24`, `2001:db8::5/64`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Errors from parsing an address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("{0:?} is not an address in CIDR form (like 192.0.2.5/24 or 2001:db8::5/64)")]
    NotCidr(String),
    #[error("prefix length {prefix} is out of range for {addr} (max {max})")]
    Prefix { addr: IpAddr, prefix: u8, max: u8 },
    #[error("{0:?} is not a MAC address (six hex octets separated by ':')")]
    Mac(String),
}

/// An interface address with its prefix length, e.g. `10.0.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Builds one; IPv4-mapped IPv6 addresses become IPv4 (the canonical form).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, AddrError> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                _ => (addr, prefix),
            },
            IpAddr::V4(_) => (addr, prefix),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(AddrError::Prefix { addr, prefix, max });
        }
        Ok(Self { addr, prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address (host bits cleared), for on-link routes.
    pub fn network(&self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                IpAddr::V6((bits & mask).into())
            }
        };
        IpNet {
            addr,
            prefix: self.prefix,
        }
    }
}

impl FromStr for IpNet {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrError::NotCidr(s.chars().take(64).collect());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        IpNet::new(addr, prefix)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A 48-bit Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// From raw link-layer bytes; `None` unless exactly six bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }

    /// A locally administered unicast address derived from `seed` (deterministic per claim).
    pub fn local_from(seed: &str) -> Mac {
        let h = fnv64(seed.as_bytes()).to_be_bytes();
        Mac([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
    }
}

impl FromStr for Mac {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrError::Mac(s.chars().take(64).collect());
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(':') {
            if n == 6 || part.len() != 2 {
                return Err(bad());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
            n += 1;
        }
        if n != 6 {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// FNV-1a, 64 bit: stable short hashes for generated names (not security relevant).
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_roundtrip_is_canonical() {
        for (i, o) in [
            ("192.0.2.5/24", "192.0.2.5/24"),
            ("2001:DB8:0:0::5/64", "2001:db8::5/64"),
            ("::ffff:10.1.2.3/120", "10.1.2.3/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            assert_eq!(i.parse::<IpNet>().unwrap().to_string(), o);
        }
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "10.0.0.1/",
            "/24",
            "x/1",
            "10.0.0.01/8",
            "1::/129",
            "10.0.0.1/+8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        let n: IpNet = "10.1.2.3/16".parse().unwrap();
        assert_eq!(n.network().to_string(), "10.1.0.0/16");
        let n: IpNet = "2001:db8::5/64".parse().unwrap();
        assert_eq!(n.network().to_string(), "2001:db8::/64");
    }

    #[test]
    fn mac_parse_and_format() {
        let m: Mac = "02:AB:cd:00:11:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:cd:00:11:ff");
        for bad in [
            "",
            "02:ab",
            "02:ab:cd:00:11:ff:00",
            "0g:ab:cd:00:11:ff",
            "2:ab:cd:00:11:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let l = Mac::local_from("claim-1");
        assert_eq!(l.0[0] & 0x03, 0x02);
        assert_eq!(l, Mac::local_from("claim-1"));
    }
}

macro_rules! serde_as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(IpNet);
serde_as_text!(Mac);
