//! `RdmaConfig` (RDMA uverbs character devices) and `RoceConfig` (RDMA + the device's netdev).

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::netdev::{NetdevSpec, check_legacy_type};

/// The RDMA device flavour; only userspace verbs today.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RdmaKind {
    /// `/dev/infiniband/uverbsN` of the allocated HCA port.
    Uverbs,
}

/// Which RDMA character devices the container gets besides its `uverbsN`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RdmaSpec {
    /// Device flavour; `uverbs` (the default and only value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RdmaKind>,
    /// Also expose `/dev/infiniband/rdma_cm` (connection manager). Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_cm: Option<bool>,
    /// Also expose the port's `/dev/infiniband/umadN` (management datagrams; lets the pod
    /// talk to the subnet manager). Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umad: Option<bool>,
}

impl RdmaSpec {
    /// Whether `rdma_cm` is exposed (default true).
    pub fn rdma_cm(&self) -> bool {
        self.rdma_cm.unwrap_or(true)
    }

    /// Whether `umadN` is exposed (default false).
    pub fn umad(&self) -> bool {
        self.umad.unwrap_or(false)
    }
}

/// `kind: RdmaConfig`: the allocated RDMA device's character devices in the container.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RdmaConfig {
    /// Legacy selector from the original driver's configs; when present it must be `rdma`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<String>,
    /// RDMA options; absent means the defaults.
    #[serde(default)]
    pub rdma: RdmaSpec,
}

impl RdmaConfig {
    /// Semantic checks with field paths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_legacy_type(self.legacy_type.as_deref(), &["rdma"], "RdmaConfig")
    }
}

/// `kind: RoceConfig`: an RDMA over Converged Ethernet device: its RDMA character devices and
/// its netdev, both in the pod.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoceConfig {
    /// Legacy selector from the original driver's configs; when present it must be `combo`
    /// or `roce`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<String>,
    /// RDMA options; absent means the defaults.
    #[serde(default)]
    pub rdma: RdmaSpec,
    /// The RDMA device's network interface in the pod.
    pub netdev: NetdevSpec,
}

impl RoceConfig {
    /// Semantic checks with field paths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_legacy_type(
            self.legacy_type.as_deref(),
            &["combo", "roce"],
            "RoceConfig",
        )?;
        self.netdev.validate("netdev")
    }
}
