//! JSON Schemas of the config kinds (feature `schema`), generated from the same types the decoder
//! uses, for editors and `manifests/schemas/`. The schemas describe shape, names, enums and the
//! bounds that are simple to state; the decoder (`decode_parameters`) stays the judge: it also
//! checks what a schema cannot (a MAC's multicast bit, prefix host bits, cgroup key rules, ...).
//!
//! OCI runtime-spec sub-objects (`linux`, `mounts`, `hooks`, `process.rlimits`, ...) are typed by
//! the oci-spec crate, which has no schema support; they appear as objects (with the
//! `linux.resources` fields drakit's policy is about spelled out).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use super::{
    CniConfig, CpuConfig, GatewayAddr, InterfaceAddress, InterfaceName, IpPrefix, MacAddr,
    NetdevConfig, RdmaConfig, RoceConfig, RuntimeSpecEditConfig, netdev::PKey,
};
use crate::constants::CONFIG_API_GROUP_VERSION;

macro_rules! string_schema {
    ($t:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $t {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

string_schema!(InterfaceName, "InterfaceName", {
    "type": "string",
    "description": "Linux interface name: 1-15 bytes, not . or .., without / : whitespace NUL or %",
    "minLength": 1,
    "maxLength": 15,
    "pattern": "^[^/:%\\s\\u0000]{1,15}$"
});
string_schema!(MacAddr, "MacAddr", {
    "type": "string",
    "description": "Unicast, non-zero Ethernet MAC address, six hex pairs separated by ':'",
    "pattern": "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"
});
string_schema!(InterfaceAddress, "InterfaceAddress", {
    "type": "string",
    "description": "Interface address with prefix length (CIDR), e.g. 192.0.2.10/24 or 2001:db8::10/64",
    "pattern": "^[0-9A-Fa-f.:]+/[0-9]{1,3}$"
});
string_schema!(IpPrefix, "IpPrefix", {
    "type": "string",
    "description": "Route destination in CIDR form with host bits clear (0.0.0.0/0 and ::/0 for default)",
    "pattern": "^[0-9A-Fa-f.:]+/[0-9]{1,3}$"
});
string_schema!(GatewayAddr, "GatewayAddr", {
    "type": "string",
    "description": "Gateway IP address (IPv4 or IPv6)",
    "pattern": "^[0-9A-Fa-f.:]+$"
});
string_schema!(PKey, "PKey", {
    "description": "InfiniBand partition key 0x0001..0x7fff, as a \"0x\" hex string or an integer",
    "oneOf": [
        {"type": "string", "pattern": "^0[xX][0-9A-Fa-f]{1,4}$"},
        {"type": "integer", "minimum": 1, "maximum": 32767}
    ]
});

/// An OCI runtime-spec object, checked by the decoder against the runtime-spec types.
#[derive(Debug)]
pub struct Oci;

string_schema!(Oci, "OciObject", {
    "type": "object",
    "description": "An OCI runtime-spec object of this field's type (runtime-spec config.md); unknown fields are refused by the node"
});

/// The `linux` part of a runtime-spec fragment.
#[derive(Debug)]
pub struct OciLinux;

string_schema!(OciLinux, "OciLinux", {
    "type": "object",
    "description": "OCI runtime-spec `linux` (config-linux.md). The node's admin policy decides which fields a claim may set; the default allows linux.resources only",
    "properties": {
        "resources": {
            "type": "object",
            "properties": {
                "unified": {
                    "type": "object",
                    "description": "cgroup v2 interface files of the container's own cgroup: '<controller>.<file>' (controllers cpu, cpuset, io, memory, pids, hugetlb, rdma, misc), no '/', at most 64 entries; needs a cgroup v2 node",
                    "maxProperties": 64,
                    "propertyNames": {"pattern": "^(cpu|cpuset|io|memory|pids|hugetlb|rdma|misc)\\.[A-Za-z0-9_.]+$", "maxLength": 128},
                    "additionalProperties": {"type": "string", "maxLength": 4096}
                },
                "memory": {"type": "object", "properties": {
                    "limit": {"type": "integer"}, "reservation": {"type": "integer"},
                    "swap": {"type": "integer"}, "swappiness": {"type": "integer", "minimum": 0, "maximum": 100},
                    "disableOOMKiller": {"type": "boolean"}}},
                "cpu": {"type": "object", "properties": {
                    "shares": {"type": "integer", "minimum": 0}, "quota": {"type": "integer"},
                    "period": {"type": "integer", "minimum": 0}, "cpus": {"type": "string"}, "mems": {"type": "string"}}},
                "pids": {"type": "object", "properties": {"limit": {"type": "integer"}}},
                "hugepageLimits": {"type": "array", "items": {"type": "object", "properties": {
                    "pageSize": {"type": "string"}, "limit": {"type": "integer", "minimum": 0}}}}
            }
        }
    }
});

/// Every config kind with its JSON Schema (draft 2020-12), `apiVersion` and `kind` included.
pub fn kind_schemas() -> Vec<(&'static str, Value)> {
    fn one<T: JsonSchema>(kind: &'static str, about: &str) -> (&'static str, Value) {
        let mut v = schemars::schema_for!(T).to_value();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "$id".into(),
                json!(format!("https://drakit.dev/schemas/{kind}.json")),
            );
            o.insert("title".into(), json!(kind));
            o.insert("description".into(), json!(about));
            let props = o
                .entry("properties")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .map(|p| {
                    p.insert(
                        "apiVersion".into(),
                        json!({"const": CONFIG_API_GROUP_VERSION, "description": "The config API version."}),
                    );
                    p.insert(
                        "kind".into(),
                        json!({"const": kind, "description": "The config kind."}),
                    );
                });
            let _ = props;
            let req = o.entry("required").or_insert_with(|| json!([]));
            if let Some(r) = req.as_array_mut() {
                r.insert(0, json!("kind"));
                r.insert(0, json!("apiVersion"));
            }
        }
        (kind, v)
    }
    vec![
        one::<NetdevConfig>(
            "NetdevConfig",
            "A network interface for the pod (net.drakit.dev).",
        ),
        one::<CniConfig>(
            "CniConfig",
            "A CNI chain run for one extra pod interface (net.drakit.dev).",
        ),
        one::<RdmaConfig>(
            "RdmaConfig",
            "RDMA verbs devices for the container (net.drakit.dev).",
        ),
        one::<RoceConfig>(
            "RoceConfig",
            "An RDMA device together with its netdev (net.drakit.dev).",
        ),
        one::<CpuConfig>("CpuConfig", "Exclusive CPUs (cpu.drakit.dev)."),
        one::<RuntimeSpecEditConfig>(
            "RuntimeSpecEditConfig",
            "Policy-checked OCI runtime-spec edits applied before the container starts (runtime.drakit.dev).",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_schema_with_its_envelope() {
        let all = kind_schemas();
        assert_eq!(all.len(), 6);
        for (kind, s) in &all {
            assert_eq!(s["properties"]["kind"]["const"], *kind);
            assert_eq!(
                s["properties"]["apiVersion"]["const"],
                CONFIG_API_GROUP_VERSION
            );
            assert!(s["required"].as_array().unwrap().contains(&json!("kind")));
        }
    }
}
