//! The decoder is total: arbitrary bytes and arbitrary JSON (random keys, and keys the decoder
//! knows, nested) give Ok or an error, never a panic; whatever decodes re-encodes and decodes
//! to the same value.

use drakit_types::config::{
    ClaimConfig, ClaimRef, ConfigEntry, ConfigSource, decode_parameters, merge_for_request,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "type",
    "netdev",
    "rdma",
    "spec",
    "linux",
    "resources",
    "unified",
    "process",
    "env",
    "mounts",
    "hooks",
    "interfaceName",
    "mtu",
    "mac",
    "addresses",
    "routes",
    "dst",
    "gateway",
    "mode",
    "parent",
    "master",
    "vlan",
    "pkey",
    "config",
    "plugins",
    "cniVersion",
    "name",
    "count",
    "smt",
    "io.max",
    "memory",
    "limit",
    "destination",
    "source",
];
const STRINGS: &[&str] = &[
    "drakit.dev/v1alpha1",
    "NetdevConfig",
    "RdmaConfig",
    "RoceConfig",
    "CniConfig",
    "CpuConfig",
    "RuntimeSpecEditConfig",
    "netdev",
    "rdma",
    "combo",
    "macvlan",
    "ipvlan",
    "veth",
    "dummy",
    "host-device",
    "sriov-vf",
    "ipoib",
    "bridge",
    "l2",
    "eth0",
    "net1",
    "10.0.0.1/24",
    "10.0.0.0/8",
    "::/0",
    "02:00:00:00:00:01",
    "0x0001",
    "1.0.0",
    "259:0 rbps=1",
    "../../x",
    "\u{0}",
    "é",
    "",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(KEYS).prop_map(String::from),
        1 => "[a-zA-Z./\\\\\u{0}-\u{7f}]{0,8}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u32..70_000).prop_map(Value::from),
        proptest::sample::select(STRINGS).prop_map(|s| Value::String(s.into())),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A top-level object that usually passes the envelope checks, so the typed decoder and the
/// validators see the random body.
fn config_like() -> impl Strategy<Value = Value> {
    (
        proptest::option::weighted(0.9, Just("drakit.dev/v1alpha1")),
        proptest::option::weighted(0.8, proptest::sample::select(&STRINGS[1..7])),
        proptest::collection::vec((key(), json_value()), 0..6),
    )
        .prop_map(|(api, kind, body)| {
            let mut m: Map<String, Value> = body.into_iter().collect();
            if let Some(a) = api {
                m.insert("apiVersion".into(), Value::String(a.into()));
            }
            if let Some(k) = kind {
                m.insert("kind".into(), Value::String(k.into()));
            }
            Value::Object(m)
        })
}

fn check(raw: &[u8]) {
    let claim = ClaimRef::new("ns", "c", "u");
    if let Ok(c) = decode_parameters(&claim, 0, ConfigSource::FromClaim, raw) {
        let bytes = c.to_json().expect("encode");
        let again = ClaimConfig::from_json(&bytes).expect("re-decode");
        assert_eq!(again, c);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&raw);
    }

    #[test]
    fn arbitrary_json(v in json_value()) {
        check(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn config_shaped_json(v in config_like()) {
        check(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn mutated_valid_configs(pos in 0usize..400, byte in any::<u8>(), which in 0usize..4) {
        let files = ["netdev-macvlan-full.json", "cni-bridge.json", "runtime-full.json", "roce.json"];
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configs").join(files[which]);
        let mut raw = std::fs::read(path).unwrap();
        let i = pos % raw.len();
        raw[i] = byte;
        check(&raw);
    }

    #[test]
    fn merge_is_total(a in config_like(), b in config_like()) {
        let pa = serde_json::to_vec(&a).unwrap();
        let pb = serde_json::to_vec(&b).unwrap();
        let reqs: Vec<String> = vec![];
        let entries = [
            ConfigEntry { source: ConfigSource::FromClaim, driver: "d", requests: &reqs, parameters: &pa },
            ConfigEntry { source: ConfigSource::FromClass, driver: "d", requests: &reqs, parameters: &pb },
        ];
        let _ = merge_for_request(&ClaimRef::default(), "d", "r", &entries);
    }
}

/// Valid netdev configs, generated field by field for the chosen kind.
fn valid_netdev() -> impl Strategy<Value = Value> {
    const KINDS: [&str; 7] = [
        "macvlan",
        "ipvlan",
        "veth",
        "dummy",
        "host-device",
        "sriov-vf",
        "ipoib",
    ];
    let ifname = "[a-z][a-z0-9_.-]{0,14}";
    let mac = proptest::array::uniform6(any::<u8>())
        .prop_filter("not zero", |b| b.iter().any(|x| *x != 0))
        .prop_map(|mut b| {
            b[0] &= 0xfe; // unicast
            if b == [0; 6] {
                b[5] = 1;
            }
            format!(
                "{:02X}:{:02x}:{:02X}:{:02x}:{:02x}:{:02x}",
                b[0], b[1], b[2], b[3], b[4], b[5]
            )
        });
    let v4 = (1u8..224, any::<[u8; 3]>(), 0u8..=32)
        .prop_map(|(a, r, p)| format!("{a}.{}.{}.{}/{p}", r[0], r[1], r[2]));
    let v6 = (0x2000u16..0x3fff, any::<[u16; 7]>(), 0u8..=128).prop_map(|(a, r, p)| {
        format!(
            "{a:x}:{:X}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}/{p}",
            r[0], r[1], r[2], r[3], r[4], r[5], r[6]
        )
    });
    let addrs = proptest::collection::btree_set(prop_oneof![v4, v6], 0..4)
        .prop_map(|s| s.into_iter().collect::<Vec<_>>());
    let routes = proptest::collection::vec(
        (
            any::<[u8; 2]>(),
            proptest::option::of(1u32..1000),
            any::<bool>(),
        ),
        0..3,
    )
    .prop_map(|rs| {
        rs.into_iter()
            .map(|(n, metric, gw)| {
                let mut r = serde_json::json!({"dst": format!("10.{}.{}.0/24", n[0], n[1])});
                if gw {
                    r["gateway"] = Value::from("10.255.0.1");
                }
                if let Some(m) = metric {
                    r["metric"] = Value::from(m);
                }
                r
            })
            .collect::<Vec<_>>()
    });
    (
        proptest::sample::select(&KINDS[..]),
        proptest::option::of(ifname),
        proptest::option::of(68u32..=65535),
        proptest::option::of(mac),
        addrs,
        routes,
        any::<u8>(),
        1u16..=4094,
        1u16..=0x7fff,
        proptest::option::of(proptest::sample::select(&["nri", "cdi", "hook"][..])),
    )
        .prop_map(
            |(kind, name, mtu, mac, addresses, routes, pick, vlan, pkey, attach)| {
                let mut n = serde_json::json!({"kind": kind});
                if let Some(x) = name {
                    n["interfaceName"] = Value::from(x);
                }
                if let Some(x) = mtu {
                    n["mtu"] = Value::from(x);
                }
                if !addresses.is_empty() {
                    n["addresses"] = Value::from(addresses);
                }
                if !routes.is_empty() {
                    n["routes"] = Value::from(routes);
                }
                if let Some(a) = attach {
                    n["attachMode"] = Value::from(a);
                }
                match kind {
                    "macvlan" => {
                        n["parent"] = Value::from("eth0");
                        let modes = ["bridge", "private", "vepa", "passthru", "source"];
                        n["mode"] = Value::from(modes[usize::from(pick) % modes.len()]);
                    }
                    "ipvlan" => {
                        n["parent"] = Value::from("eth0");
                        let modes = ["l2", "l3", "l3s"];
                        n["mode"] = Value::from(modes[usize::from(pick) % modes.len()]);
                    }
                    "veth" => {
                        n["master"] = Value::from("br0");
                    }
                    "sriov-vf" => {
                        n["vlan"] = Value::from(vlan);
                        n["vlanQos"] = Value::from(pick % 8);
                        n["trust"] = Value::from(pick % 2 == 0);
                        n["spoofChk"] = Value::from(pick % 3 == 0);
                    }
                    "ipoib" => {
                        n["pkey"] = if pick % 2 == 0 {
                            Value::from(pkey)
                        } else {
                            Value::from(format!("0x{pkey:x}"))
                        };
                    }
                    _ => {}
                }
                if let Some(m) = mac
                    && !matches!(kind, "ipvlan" | "ipoib")
                {
                    n["mac"] = Value::from(m);
                }
                serde_json::json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "netdev": n})
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn valid_netdev_configs_decode_and_round_trip(v in valid_netdev()) {
        let raw = serde_json::to_vec(&v).unwrap();
        let c = decode_parameters(&ClaimRef::default(), 0, ConfigSource::FromClaim, &raw)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{v}")))?;
        let bytes = c.to_json().unwrap();
        let again = ClaimConfig::from_json(&bytes).unwrap();
        prop_assert_eq!(&again, &c);
        prop_assert_eq!(again.to_json().unwrap(), bytes);
        // MACs come back lower case.
        if let Some(m) = v["netdev"]["mac"].as_str() {
            let out = c.to_value().unwrap();
            let want = m.to_lowercase();
            prop_assert_eq!(out["netdev"]["mac"].as_str(), Some(want.as_str()));
        }
    }
}
