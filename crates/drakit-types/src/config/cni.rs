//! `CniConfig`: an interface set up by running a CNI plugin chain in the pod's netns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ConfigError, index, invalid, join};
use super::net::InterfaceName;
use super::netdev::AttachMode;

/// Most plugins one chain may hold.
pub const MAX_PLUGINS: usize = 32;

/// One plugin of the chain: its `type` (the binary's file name in the CNI bin dir) and its own
/// free-form settings, passed through to the plugin untouched.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniPlugin {
    /// Plugin binary name, a plain file name (`bridge`, `host-local`, `tuning`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Every other key of the plugin object (ipam, bridge, mtu, ...), as JSON.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// A CNI network configuration list (the content of a `.conflist` file).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniNetworkList {
    /// CNI spec version of the list, `x.y.z` (e.g. `1.0.0`).
    pub cni_version: String,
    /// Network name (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
    pub name: String,
    /// Skip CHECK for this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_check: Option<bool>,
    /// Skip GC for this network.
    #[serde(default, rename = "disableGC", skip_serializing_if = "Option::is_none")]
    pub disable_gc: Option<bool>,
    /// The plugin chain, run in order on ADD and in reverse on DEL; 1..=32 entries.
    pub plugins: Vec<CniPlugin>,
}

/// `kind: CniConfig`: run a CNI chain for one extra pod interface.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniConfig {
    /// Interface name inside the pod (`CNI_IFNAME`).
    pub interface_name: InterfaceName,
    /// nri (default) or hook; CNI interfaces cannot use cdi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_mode: Option<AttachMode>,
    /// The network configuration list to run.
    pub config: CniNetworkList,
    /// Extra `CNI_ARGS` key/value pairs (no `;`, `=` or NUL in keys or values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// Runtime capability arguments (`portMappings`, `ips`, `mac`, ...) handed to plugins that
    /// declare the capability.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub capability_args: Map<String, Value>,
}

fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 255
        && !t.starts_with('.')
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn valid_network_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && n.len() <= 253
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|c| c.is_ascii_digit()))
}

impl CniConfig {
    /// Semantic checks with field paths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.attach_mode == Some(AttachMode::Cdi) {
            return Err(invalid(
                "attachMode",
                "CNI interfaces attach with nri or hook, not cdi",
            ));
        }
        let c = &self.config;
        if !valid_version(&c.cni_version) {
            return Err(invalid(
                "config.cniVersion",
                format!("{:?} is not a version like \"1.0.0\"", c.cni_version),
            ));
        }
        if !valid_network_name(&c.name) {
            return Err(invalid(
                "config.name",
                format!(
                    "{:?} is not a network name ([A-Za-z0-9][A-Za-z0-9_.-]*, at most 253)",
                    c.name
                ),
            ));
        }
        if c.plugins.is_empty() {
            return Err(invalid("config.plugins", "must list at least one plugin"));
        }
        if c.plugins.len() > MAX_PLUGINS {
            return Err(invalid(
                "config.plugins",
                format!(
                    "{} plugins, more than the maximum {MAX_PLUGINS}",
                    c.plugins.len()
                ),
            ));
        }
        for (i, p) in c.plugins.iter().enumerate() {
            if !valid_plugin_type(&p.plugin_type) {
                return Err(invalid(
                    join(&index("config.plugins", i), "type"),
                    format!(
                        "{:?} is not a plain plugin file name ([A-Za-z0-9_.-], no leading '.', no '/')",
                        p.plugin_type
                    ),
                ));
            }
        }
        for (k, v) in &self.args {
            let bad = |s: &str| s.is_empty() || s.contains([';', '=', '\0']);
            if bad(k) || v.contains([';', '=', '\0']) {
                return Err(invalid(
                    join("args", k),
                    "CNI_ARGS keys must be non-empty and neither keys nor values may contain ';', '=' or NUL",
                ));
            }
        }
        Ok(())
    }
}
