//! Claim configuration as this manager needs it, decoded from `AllocatedDevice.config_json`.
//!
//! A config carrying `apiVersion` (what the kubelet plugin passes: drakit-types JSON) is decoded
//! and validated strictly by `drakit_types::config::ClaimConfig::from_json`, then its canonical
//! form is read into [`DeviceConfig`]. Without `apiVersion` a lenient local reader takes the
//! seed examples' shape (`type: netdev` + nested `netdev:`) or flat fields; it predates
//! drakit-types and remains for those inputs and this crate's tests.

use serde_json::{Map, Value};

use crate::addr::{IpNet, Mac};
use crate::netlink::{IpvlanMode, MacvlanMode, valid_ifname};

/// Largest config this manager accepts.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Errors naming the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config is not valid JSON: {0}")]
    Json(String),
    #[error("config is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge,
    #[error("field {field}: {reason}")]
    Field { field: String, reason: String },
    #[error("{0}")]
    Types(String),
}

fn ferr(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Link kinds a claim can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetKind {
    Macvlan,
    Ipvlan,
    Veth,
    Dummy,
    HostDevice,
    SriovVf,
    Ipoib,
    Rdma,
    Roce,
    Cni,
}

impl NetKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "macvlan" => Self::Macvlan,
            "ipvlan" => Self::Ipvlan,
            "veth" => Self::Veth,
            "dummy" => Self::Dummy,
            "host-device" => Self::HostDevice,
            "sriov-vf" => Self::SriovVf,
            "ipoib" => Self::Ipoib,
            "rdma" | "uverbs" => Self::Rdma,
            "roce" => Self::Roce,
            "cni" => Self::Cni,
            _ => return None,
        })
    }

    /// Links the manager creates (and deletes); the others are moved host devices.
    pub fn is_virtual(self) -> bool {
        matches!(
            self,
            Self::Macvlan | Self::Ipvlan | Self::Veth | Self::Dummy | Self::Ipoib
        )
    }
}

/// Where and when the interface gets into the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Nri,
    Cdi,
    Hook,
}

/// A route inside the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteConfig {
    pub dst: IpNet,
    pub gateway: Option<std::net::IpAddr>,
    /// Route priority; lower wins.
    #[serde(default)]
    pub metric: Option<u32>,
}

/// SR-IOV settings applied on the PF for the VF.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VfConfig {
    pub vlan: Option<u16>,
    /// 802.1p priority for `vlan` (0..=7).
    #[serde(default)]
    pub qos: Option<u8>,
    pub trust: Option<bool>,
    pub spoofchk: Option<bool>,
}

/// Everything a device's config says (kind-specific fields optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceConfig {
    pub kind: Option<NetKind>,
    pub interface_name: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<RouteConfig>,
    pub macvlan_mode: Option<MacvlanMode>,
    pub ipvlan_mode: Option<IpvlanMode>,
    /// Host interface: parent of macvlan/ipvlan/ipoib child, or the device for host-device.
    pub parent: Option<String>,
    /// Bridge to enslave a veth host end to.
    pub bridge: Option<String>,
    pub pkey: Option<u16>,
    pub vf: VfConfig,
    pub attach_mode: Option<AttachMode>,
    /// CNI: the network configuration list (JSON object).
    pub cni_conflist: Option<String>,
    /// CNI: extra `CNI_ARGS` pairs.
    #[serde(default)]
    pub cni_args: std::collections::BTreeMap<String, String>,
    /// CNI: capability arguments, handed as `runtimeConfig` to plugins declaring the capability.
    #[serde(default)]
    pub cni_capability_args: Map<String, Value>,
}

fn get<'a>(objs: &[&'a Map<String, Value>], keys: &[&str]) -> Option<(&'a Value, String)> {
    for o in objs {
        for k in keys {
            if let Some(v) = o.get(*k)
                && !v.is_null()
            {
                return Some((v, (*k).to_string()));
            }
        }
    }
    None
}

fn string(
    objs: &[&Map<String, Value>],
    keys: &[&str],
) -> Result<Option<(String, String)>, ConfigError> {
    match get(objs, keys) {
        None => Ok(None),
        Some((Value::String(s), k)) => Ok(Some((s.clone(), k))),
        Some((_, k)) => Err(ferr(&k, "must be a string")),
    }
}

/// Decodes one device's config. Empty text means "no config".
pub fn decode(json: &str) -> Result<DeviceConfig, ConfigError> {
    if json.trim().is_empty() {
        return Ok(DeviceConfig::default());
    }
    if json.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge);
    }
    let mut v: Value = serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
    if v.get("apiVersion").is_some() {
        let cc = drakit_types::config::ClaimConfig::from_json(json.as_bytes())
            .map_err(|e| ConfigError::Types(e.to_string()))?;
        v = cc
            .to_value()
            .map_err(|e| ConfigError::Json(e.to_string()))?;
    }
    let Value::Object(top) = &v else {
        return Err(ConfigError::Json("top level must be an object".into()));
    };
    let api_kind = top.get("kind").and_then(Value::as_str).unwrap_or("");
    let is_api_kind = api_kind.ends_with("Config");
    let mut objs: Vec<&Map<String, Value>> = vec![];
    for nested in ["netdev", "spec", "cni"] {
        if let Some(o) = top.get(nested) {
            match o {
                Value::Object(m) => objs.push(m),
                _ => return Err(ferr(nested, "must be an object")),
            }
        }
    }
    objs.push(top);
    let mut c = DeviceConfig::default();

    // Link kind: nested `kind`, or `linkKind`/`type`, or implied by the API kind.
    let kind_keys: &[&str] = if is_api_kind {
        &["linkKind", "type"]
    } else {
        &["kind", "linkKind", "type"]
    };
    let nested_kind = objs[..objs.len() - 1]
        .iter()
        .find_map(|o| o.get("kind").and_then(Value::as_str).map(String::from));
    let kind_text = match nested_kind {
        Some(k) => Some((k, "netdev.kind".to_string())),
        None => string(&objs, kind_keys)?,
    };
    c.kind = match kind_text {
        Some((k, _)) if k == "netdev" => None,
        Some((k, f)) => {
            Some(NetKind::parse(&k).ok_or_else(|| ferr(&f, format!("unknown kind {k:?}")))?)
        }
        None => None,
    };
    match api_kind {
        "RdmaConfig" => c.kind = Some(NetKind::Rdma),
        "RoceConfig" => c.kind = Some(NetKind::Roce),
        "CniConfig" => c.kind = Some(NetKind::Cni),
        _ => {}
    }
    if let Some((n, f)) = string(&objs, &["interfaceName", "ifName"])? {
        if !valid_ifname(&n) {
            return Err(ferr(
                &f,
                format!("{n:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"),
            ));
        }
        c.interface_name = Some(n);
    }
    if let Some((v, f)) = get(&objs, &["mtu"]) {
        let m = v
            .as_u64()
            .filter(|m| (68..=65535).contains(m))
            .ok_or_else(|| ferr(&f, "must be an integer 68..65535"))?;
        c.mtu = u32::try_from(m).ok();
    }
    if let Some((m, f)) = string(&objs, &["mac", "macAddress", "hardwareAddress"])? {
        c.mac = Some(
            m.parse()
                .map_err(|e: crate::addr::AddrError| ferr(&f, e.to_string()))?,
        );
    }
    if let Some((v, f)) = get(&objs, &["addresses", "ips"]) {
        let arr = v
            .as_array()
            .ok_or_else(|| ferr(&f, "must be a list of CIDR strings"))?;
        if arr.len() > 16 {
            return Err(ferr(&f, "at most 16 addresses"));
        }
        for (i, a) in arr.iter().enumerate() {
            let s = a
                .as_str()
                .ok_or_else(|| ferr(&format!("{f}[{i}]"), "must be a string"))?;
            c.addresses.push(
                s.parse().map_err(|e: crate::addr::AddrError| {
                    ferr(&format!("{f}[{i}]"), e.to_string())
                })?,
            );
        }
    }
    if let Some((v, f)) = get(&objs, &["routes"]) {
        let arr = v.as_array().ok_or_else(|| ferr(&f, "must be a list"))?;
        if arr.len() > 64 {
            return Err(ferr(&f, "at most 64 routes"));
        }
        for (i, r) in arr.iter().enumerate() {
            let p = format!("{f}[{i}]");
            let o = r.as_object().ok_or_else(|| ferr(&p, "must be an object"))?;
            let (dst, df) = string(&[o], &["destination", "dst", "to"])?
                .ok_or_else(|| ferr(&p, "destination is required"))?;
            let dst: IpNet = if dst == "default" {
                "0.0.0.0/0"
                    .parse()
                    .map_err(|e: crate::addr::AddrError| ferr(&p, e.to_string()))?
            } else {
                dst.parse().map_err(|e: crate::addr::AddrError| {
                    ferr(&format!("{p}.{df}"), e.to_string())
                })?
            };
            let gateway = match string(&[o], &["gateway", "via", "gw"])? {
                Some((g, gf)) => Some(g.parse().map_err(|_| {
                    ferr(&format!("{p}.{gf}"), format!("{g:?} is not an IP address"))
                })?),
                None => None,
            };
            let metric = match o.get("metric") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| ferr(&format!("{p}.metric"), "must be 0..=4294967295"))?,
                ),
            };
            c.routes.push(RouteConfig {
                dst: dst.network(),
                gateway,
                metric,
            });
        }
    }
    if let Some((m, f)) = string(&objs, &["mode"])? {
        match c.kind {
            Some(NetKind::Ipvlan) => {
                c.ipvlan_mode = Some(match m.as_str() {
                    "l2" => IpvlanMode::L2,
                    "l3" => IpvlanMode::L3,
                    "l3s" => IpvlanMode::L3s,
                    _ => {
                        return Err(ferr(
                            &f,
                            format!("ipvlan mode {m:?} is not one of l2, l3, l3s"),
                        ));
                    }
                })
            }
            _ => {
                c.macvlan_mode = Some(match m.as_str() {
                    "bridge" => MacvlanMode::Bridge,
                    "private" => MacvlanMode::Private,
                    "vepa" => MacvlanMode::Vepa,
                    "passthru" => MacvlanMode::Passthru,
                    "source" => MacvlanMode::Source,
                    _ => {
                        return Err(ferr(
                            &f,
                            format!(
                                "macvlan mode {m:?} is not one of bridge, private, vepa, passthru, source"
                            ),
                        ));
                    }
                })
            }
        }
    }
    for (key, slot) in [("parent", 0), ("master", 1), ("bridge", 1), ("device", 0)] {
        if let Some((p, f)) = string(&objs, &[key])? {
            if !valid_ifname(&p) {
                return Err(ferr(&f, format!("{p:?} is not a valid interface name")));
            }
            if slot == 0 {
                c.parent = Some(p)
            } else {
                c.bridge = Some(p)
            }
        }
    }
    if let Some((v, f)) = get(&objs, &["pkey"]) {
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).ok(),
            _ => None,
        };
        c.pkey = n
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n & 0x7fff != 0)
            .map(|n| n | 0x8000)
            .map(Some)
            .ok_or_else(|| ferr(&f, "must be a partition key 0x0001..0xffff"))?;
    }
    if let Some((v, f)) = get(&objs, &["vlan"]) {
        c.vf.vlan = Some(
            v.as_u64()
                .filter(|n| *n <= 4094)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| ferr(&f, "must be 0..4094"))?,
        );
    }
    if let Some((v, f)) = get(&objs, &["vlanQos"]) {
        c.vf.qos = Some(
            v.as_u64()
                .filter(|n| *n <= 7)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| ferr(&f, "must be 0..7"))?,
        );
    }
    if let Some((_, f)) = get(&objs, &["hostInterfaceName"]) {
        // The host end carries a name derived from the claim so that a crash can always be
        // cleaned up; a chosen name is not supported yet and is refused rather than ignored.
        return Err(ferr(
            &f,
            "choosing the veth host end's name is not supported by this drakit-netdev (it is derived from the claim); remove the field",
        ));
    }
    for (k, slot) in [("trust", 0), ("spoofchk", 1), ("spoofChk", 1)] {
        if let Some((v, f)) = get(&objs, &[k]) {
            let b = v
                .as_bool()
                .ok_or_else(|| ferr(&f, "must be true or false"))?;
            if slot == 0 {
                c.vf.trust = Some(b)
            } else {
                c.vf.spoofchk = Some(b)
            }
        }
    }
    if let Some((m, f)) = string(&objs, &["attachMode"])? {
        c.attach_mode = Some(match m.as_str() {
            "nri" => AttachMode::Nri,
            "cdi" => AttachMode::Cdi,
            "hook" => AttachMode::Hook,
            _ => return Err(ferr(&f, format!("{m:?} is not one of nri, cdi, hook"))),
        });
    }
    if let Some((v, f)) = get(&objs, &["conflist", "config"]) {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Object(_) => v.to_string(),
            _ => {
                return Err(ferr(
                    &f,
                    "must be a CNI network configuration list (object or JSON text)",
                ));
            }
        };
        c.cni_conflist = Some(text);
    }
    if c.cni_conflist.is_some() {
        if let Some(args) = top.get("args").filter(|v| !v.is_null()) {
            let m = args
                .as_object()
                .ok_or_else(|| ferr("args", "must be an object of strings"))?;
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| ferr(&format!("args.{k}"), "must be a string"))?;
                if k.contains([';', '=', '\0']) || v.contains([';', '\0']) {
                    return Err(ferr(
                        &format!("args.{k}"),
                        "must not contain ';', '=' or NUL",
                    ));
                }
                c.cni_args.insert(k.clone(), v.to_string());
            }
        }
        if let Some(caps) = top.get("capabilityArgs").filter(|v| !v.is_null()) {
            c.cni_capability_args = caps
                .as_object()
                .cloned()
                .ok_or_else(|| ferr("capabilityArgs", "must be an object"))?;
        }
    }
    if c.kind == Some(NetKind::Cni) && c.cni_conflist.is_none() {
        return Err(ferr("conflist", "required for a CNI claim"));
    }
    if c.kind == Some(NetKind::Cni) && c.attach_mode == Some(AttachMode::Cdi) {
        return Err(ferr(
            "attachMode",
            "cni claims attach with nri or hook, not cdi",
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_shape_and_flat_shape() {
        let c = decode(r#"{"type":"netdev","netdev":{"kind":"dummy","interfaceName":"net1"}}"#)
            .unwrap();
        assert_eq!(c.kind, Some(NetKind::Dummy));
        assert_eq!(c.interface_name.as_deref(), Some("net1"));
        let c = decode(
            r#"{"kind":"NetdevConfig","linkKind":"macvlan","mode":"bridge",
                "parent":"eth0","interfaceName":"data0","mtu":1400,"mac":"02:00:00:00:00:01",
                "addresses":["10.1.0.5/24"],"routes":[{"destination":"10.2.0.0/16","gateway":"10.1.0.1"}]}"#,
        )
        .unwrap();
        assert_eq!(c.kind, Some(NetKind::Macvlan));
        assert_eq!(c.macvlan_mode, Some(MacvlanMode::Bridge));
        assert_eq!(c.parent.as_deref(), Some("eth0"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.addresses[0].to_string(), "10.1.0.5/24");
        assert_eq!(c.routes[0].gateway, Some("10.1.0.1".parse().unwrap()));
        let c = decode(r#"{"kind":"RdmaConfig"}"#).unwrap();
        assert_eq!(c.kind, Some(NetKind::Rdma));
        assert_eq!(decode("").unwrap(), DeviceConfig::default());
    }

    #[test]
    fn drakit_types_json_is_decoded_strictly() {
        let c = decode(
            r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"sriov-vf",
                "interfaceName":"vf0","vlan":100,"trust":true,"spoofChk":false,"addresses":["10.0.0.2/24"],
                "routes":[{"dst":"10.1.0.0/16","gateway":"10.0.0.1"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.kind, Some(NetKind::SriovVf));
        assert_eq!(
            (c.vf.vlan, c.vf.trust, c.vf.spoofchk),
            (Some(100), Some(true), Some(false))
        );
        assert_eq!(c.routes[0].dst.to_string(), "10.1.0.0/16");
        let c = decode(
            r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"CniConfig","interfaceName":"net3",
                "config":{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.kind, Some(NetKind::Cni));
        assert!(c.cni_conflist.unwrap().contains("bridge"));
        // Unknown fields are refused by drakit-types, with the path.
        let e = decode(r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"veth","bogus":1}}"#)
            .unwrap_err();
        assert!(
            matches!(e, ConfigError::Types(ref m) if m.contains("bogus")),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (j, field) in [
            (
                r#"{"netdev":{"kind":"macvlan","interfaceName":"this-name-is-way-too-long"}}"#,
                "interfaceName",
            ),
            (
                r#"{"kind":"NetdevConfig","linkKind":"ipvlan","mode":"l4"}"#,
                "mode",
            ),
            (r#"{"kind":"NetdevConfig","linkKind":"warp"}"#, "linkKind"),
            (
                r#"{"netdev":{"kind":"veth","addresses":["10.0.0.1"]}}"#,
                "addresses[0]",
            ),
            (r#"{"netdev":{"kind":"veth","mtu":10}}"#, "mtu"),
            (
                r#"{"netdev":{"kind":"veth","routes":[{"gateway":"1.2.3.4"}]}}"#,
                "routes[0]",
            ),
            (r#"{"kind":"CniConfig"}"#, "conflist"),
            (r#"{"netdev":{"kind":"ipoib","pkey":"0x8000"}}"#, "pkey"),
        ] {
            match decode(j) {
                Err(ConfigError::Field { field: f, .. }) => assert_eq!(f, field, "{j}"),
                other => panic!("{j}: {other:?}"),
            }
        }
        assert!(matches!(decode("[1]"), Err(ConfigError::Json(_))));
        assert!(matches!(decode("{"), Err(ConfigError::Json(_))));
    }

    #[test]
    fn metric_qos_and_cni_args_are_read_and_host_name_refused() {
        let c = decode(
            r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"macvlan",
                "interfaceName":"net1","parent":"eth0","addresses":["192.0.2.2/24"],
                "routes":[{"dst":"198.51.100.0/24","gateway":"192.0.2.1","metric":100}]}}"#,
        )
        .unwrap();
        assert_eq!(c.routes[0].metric, Some(100));
        let c = decode(
            r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"sriov-vf",
                "vlan":100,"vlanQos":3}}"#,
        )
        .unwrap();
        assert_eq!((c.vf.vlan, c.vf.qos), (Some(100), Some(3)));
        let e = decode(
            r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"veth",
                "interfaceName":"net1","hostInterfaceName":"vh0"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("hostInterfaceName"), "{e}");
        let e = decode(
            r#"{"kind":"cni","interfaceName":"net2","conflist":{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}]},
                "args":{"A;B":"1"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("args.A;B"), "{e}");
    }
}
