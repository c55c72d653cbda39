//! `CpuConfig`: how exclusive CPUs are picked for a claim.

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, invalid};

/// Largest CPU count one claim may ask for.
pub const MAX_CPU_COUNT: u32 = 4096;

/// Whether hyperthread siblings may be split between claims.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtPolicy {
    /// Hand out whole physical cores only (count must then be a multiple of the threads per
    /// core on the node).
    FullCores,
    /// Prefer whole cores but accept single threads (the default).
    Prefer,
    /// Any logical CPUs.
    Any,
}

/// How strictly the CPUs must come from one NUMA node.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NumaAlignment {
    /// Fail the allocation when one NUMA node cannot hold all CPUs.
    Require,
    /// Prefer one NUMA node, spill over when needed (the default).
    Prefer,
    /// No NUMA preference.
    None,
}

/// Which core type to take on hybrid (P-core / E-core) machines.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoreType {
    /// Performance cores only.
    Performance,
    /// Efficiency cores only.
    Efficiency,
    /// Either (the default).
    Any,
}

/// `kind: CpuConfig`: options for a CPU claim.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuConfig {
    /// Number of CPUs, for the grouped model (one device standing for a pool of CPUs).
    /// Ignored by the per-CPU model, where the number of allocated devices is the count.
    /// 1..=4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// full-cores | prefer (default) | any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<SmtPolicy>,
    /// require | prefer (default) | none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_alignment: Option<NumaAlignment>,
    /// performance | efficiency | any (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_type: Option<CoreType>,
}

impl CpuConfig {
    /// Semantic checks with field paths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = self.count {
            if c == 0 {
                return Err(invalid("count", "must be at least 1"));
            }
            if c > MAX_CPU_COUNT {
                return Err(invalid(
                    "count",
                    format!("{c} is above the maximum {MAX_CPU_COUNT}"),
                ));
            }
        }
        Ok(())
    }
}
