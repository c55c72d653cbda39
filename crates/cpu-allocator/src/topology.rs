//! CPU topology discovery from sysfs (root is a parameter, `/sys` on a real node).
//!
//! Files read, relative to the root:
//! - `devices/system/cpu/online`, `devices/system/cpu/isolated` (optional)
//! - `devices/system/cpu/cpu<N>/topology/{physical_package_id,die_id,cluster_id,core_id,
//!   thread_siblings_list}` (`die_id`, `cluster_id` optional; `core_cpus_list` when
//!   `thread_siblings_list` is missing)
//! - `devices/system/cpu/cpu<N>/cache/index<I>/{level,type,id,shared_cpu_list}` (optional: VMs
//!   often lack it; without `id` the lowest CPU of `shared_cpu_list` stands in)
//! - `devices/system/node/node<N>/cpulist` (optional: no NUMA means node 0)
//! - `devices/cpu_core/cpus`, `devices/cpu_atom/cpus` (hybrid Intel parts only)

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::cpuset::CpuSet;

/// The kernel writes this (or -1) into `cluster_id` when the platform has no cluster information.
const NO_CLUSTER: i64 = 65535;

/// What went wrong reading sysfs; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("no online CPUs found under {0}")]
    NoCpus(PathBuf),
}

/// Core type on hybrid parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CoreType {
    /// Performance core (`/sys/devices/cpu_core`).
    Performance,
    /// Efficiency core (`/sys/devices/cpu_atom`).
    Efficiency,
}

impl CoreType {
    /// The attribute value: `P-core` or `E-core`.
    pub fn as_str(self) -> &'static str {
        match self {
            CoreType::Performance => "P-core",
            CoreType::Efficiency => "E-core",
        }
    }
}

impl fmt::Display for CoreType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cache levels published as `cache0ID`..`cache3ID`.
pub const CACHE_LEVELS: [&str; 4] = ["L1d", "L1i", "L2", "L3"];

/// One online logical CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub id: u32,
    /// `physical_package_id` (socket).
    pub package: u32,
    /// `die_id`, unique within the package; 0 when the kernel does not report it.
    pub die: u32,
    /// `cluster_id`, `None` when the platform reports none.
    pub cluster: Option<u32>,
    /// `core_id`: unique within a package only, as the kernel numbers it.
    pub core: u32,
    /// Hardware threads of the same core, this one included (online only).
    pub siblings: CpuSet,
    /// Cache ids for L1d, L1i, L2, L3 (see [`CACHE_LEVELS`]).
    pub caches: [Option<u32>; 4],
    pub core_type: Option<CoreType>,
    /// NUMA node of the CPU's local memory.
    pub numa_node: u32,
    /// Listed in `devices/system/cpu/isolated` (isolcpus).
    pub isolated: bool,
}

impl Cpu {
    /// The L3 id, or the package when the machine reports no L3 (one domain per socket).
    pub fn l3_key(&self) -> u64 {
        match self.caches[3] {
            Some(id) => u64::from(id),
            None => (1 << 40) | u64::from(self.package),
        }
    }

    /// A key that identifies the cluster node-wide: cluster id, else the L2, else the core.
    pub fn cluster_key(&self) -> u64 {
        let pkg = u64::from(self.package) << 32;
        match (self.cluster, self.caches[2]) {
            (Some(c), _) => pkg | u64::from(c),
            (None, Some(l2)) => (1 << 62) | u64::from(l2),
            (None, None) => (1 << 63) | pkg | u64::from(self.core),
        }
    }

    /// A key that identifies the physical core node-wide.
    pub fn core_key(&self) -> u64 {
        (u64::from(self.package) << 32) | u64::from(self.core)
    }
}

/// What sysfs says about the node's CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Online CPUs by number.
    pub cpus: BTreeMap<u32, Cpu>,
    pub online: CpuSet,
    pub isolated: CpuSet,
    /// Online CPUs of each NUMA node.
    pub numa_nodes: BTreeMap<u32, CpuSet>,
    /// The part reports P-cores and E-cores.
    pub hybrid: bool,
}

impl Topology {
    /// Reads the topology below `sysfs_root` (`/sys` on a real node).
    pub fn discover(sysfs_root: &Path) -> Result<Self, TopologyError> {
        let cpu_dir = sysfs_root.join("devices/system/cpu");
        let online = read_cpulist(&cpu_dir.join("online"))?;
        if online.is_empty() {
            return Err(TopologyError::NoCpus(sysfs_root.to_path_buf()));
        }
        let isolated = read_optional(&cpu_dir.join("isolated"))?
            .map(|(p, s)| parse_cpulist(&p, &s))
            .transpose()?
            .unwrap_or_default();

        let numa_nodes = read_numa_nodes(&sysfs_root.join("devices/system/node"), &online)?;
        let node_of = |cpu: u32| {
            numa_nodes
                .iter()
                .find(|(_, set)| set.contains(cpu))
                .map_or(0, |(n, _)| *n)
        };

        let p_cores = read_optional(&sysfs_root.join("devices/cpu_core/cpus"))?
            .map(|(p, s)| parse_cpulist(&p, &s))
            .transpose()?;
        let e_cores = read_optional(&sysfs_root.join("devices/cpu_atom/cpus"))?
            .map(|(p, s)| parse_cpulist(&p, &s))
            .transpose()?;
        let hybrid = p_cores.is_some() && e_cores.is_some();

        let mut cpus = BTreeMap::new();
        for id in online.iter() {
            let dir = cpu_dir.join(format!("cpu{id}"));
            let topo = dir.join("topology");
            let package = read_u32(&topo.join("physical_package_id"))?;
            let die = match read_optional(&topo.join("die_id"))? {
                Some((p, s)) => parse_u32(&p, &s)?,
                None => 0,
            };
            let cluster = match read_optional(&topo.join("cluster_id"))? {
                Some((p, s)) => {
                    let v = parse_i64(&p, &s)?;
                    if v < 0 || v == NO_CLUSTER {
                        None
                    } else {
                        Some(u32::try_from(v).map_err(|_| TopologyError::Malformed {
                            path: p.clone(),
                            reason: format!("{v} out of range"),
                        })?)
                    }
                }
                None => None,
            };
            let core = read_u32(&topo.join("core_id"))?;
            let siblings = match read_optional(&topo.join("thread_siblings_list"))? {
                Some((p, s)) => parse_cpulist(&p, &s)?,
                None => read_cpulist(&topo.join("core_cpus_list"))?,
            };
            if !siblings.contains(id) {
                return Err(TopologyError::Malformed {
                    path: topo.join("thread_siblings_list"),
                    reason: format!("does not list cpu{id} itself"),
                });
            }
            let caches = read_caches(&dir.join("cache"))?;
            let core_type = if hybrid {
                if p_cores.as_ref().is_some_and(|s| s.contains(id)) {
                    Some(CoreType::Performance)
                } else if e_cores.as_ref().is_some_and(|s| s.contains(id)) {
                    Some(CoreType::Efficiency)
                } else {
                    None
                }
            } else {
                None
            };
            cpus.insert(
                id,
                Cpu {
                    id,
                    package,
                    die,
                    cluster,
                    core,
                    siblings: siblings.intersection(&online),
                    caches,
                    core_type,
                    numa_node: node_of(id),
                    isolated: isolated.contains(id),
                },
            );
        }
        Ok(Self {
            cpus,
            online,
            isolated,
            numa_nodes,
            hybrid,
        })
    }

    /// Online CPUs of a package.
    pub fn package_cpus(&self, package: u32) -> CpuSet {
        self.cpus
            .values()
            .filter(|c| c.package == package)
            .map(|c| c.id)
            .collect()
    }

    /// Packages present, ascending.
    pub fn packages(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.cpus.values().map(|c| c.package).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// NUMA nodes whose memory is local to any CPU of `cpus` (cpuset.mems for them).
    pub fn mems_of(&self, cpus: &CpuSet) -> CpuSet {
        cpus.iter()
            .filter_map(|c| self.cpus.get(&c).map(|cpu| cpu.numa_node))
            .collect()
    }
}

fn read_caches(dir: &Path) -> Result<[Option<u32>; 4], TopologyError> {
    let mut caches = [None; 4];
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(caches),
        Err(source) => {
            return Err(TopologyError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| TopologyError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("index") {
            continue;
        }
        let idx = entry.path();
        let level = read_u32(&idx.join("level"))?;
        let (type_path, kind) = read_string(&idx.join("type"))?;
        let slot = match (level, kind.trim()) {
            (1, "Data") => 0,
            (1, "Instruction") => 1,
            (1, "Unified") => 0,
            (2, _) => 2,
            (3, _) => 3,
            (1, other) => {
                return Err(TopologyError::Malformed {
                    path: type_path,
                    reason: format!("unknown cache type {other:?}"),
                });
            }
            _ => continue, // L4 and beyond: not published
        };
        let id = match read_optional(&idx.join("id"))? {
            Some((p, s)) => parse_u32(&p, &s)?,
            None => read_cpulist(&idx.join("shared_cpu_list"))?
                .first()
                .ok_or_else(|| TopologyError::Malformed {
                    path: idx.join("shared_cpu_list"),
                    reason: "empty".into(),
                })?,
        };
        caches[slot] = Some(id);
    }
    Ok(caches)
}

fn read_numa_nodes(dir: &Path, online: &CpuSet) -> Result<BTreeMap<u32, CpuSet>, TopologyError> {
    let mut nodes = BTreeMap::new();
    let mut listed = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            nodes.insert(0, online.clone());
            return Ok(nodes);
        }
        Err(source) => {
            return Err(TopologyError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| TopologyError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(num) = name.to_str().and_then(|n| n.strip_prefix("node")) else {
            continue;
        };
        let Ok(node) = num.parse::<u32>() else {
            continue;
        };
        let path = entry.path().join("cpulist");
        let cpus = read_cpulist(&path)?.intersection(online);
        listed.insert(node, (path, cpus));
    }
    // A CPU has one home node; two lists naming it mean a corrupt tree (the kernel never writes
    // that), and would put the CPU into two groups of the grouped model. Checked in node order
    // so the file named does not depend on directory order.
    let mut seen = CpuSet::new();
    for (node, (path, cpus)) in listed {
        if let Some(cpu) = cpus.intersection(&seen).first() {
            return Err(TopologyError::Malformed {
                path,
                reason: format!("lists cpu{cpu}, which a lower-numbered node lists too"),
            });
        }
        seen = seen.union(&cpus);
        nodes.insert(node, cpus);
    }
    if nodes.is_empty() {
        nodes.insert(0, online.clone());
    } else {
        // CPUs no node claims (should not happen) are counted on the lowest node.
        let claimed = nodes.values().fold(CpuSet::new(), |acc, s| acc.union(s));
        let orphans = online.difference(&claimed);
        if !orphans.is_empty()
            && let Some(first) = nodes.values_mut().next()
        {
            *first = first.union(&orphans);
        }
    }
    Ok(nodes)
}

fn read_string(path: &Path) -> Result<(PathBuf, String), TopologyError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok((path.to_path_buf(), s)),
        Err(source) => Err(TopologyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>, TopologyError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some((path.to_path_buf(), s))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TopologyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_cpulist(path: &Path) -> Result<CpuSet, TopologyError> {
    let (p, s) = read_string(path)?;
    parse_cpulist(&p, &s)
}

fn parse_cpulist(path: &Path, s: &str) -> Result<CpuSet, TopologyError> {
    CpuSet::parse(s).map_err(|e| TopologyError::Malformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_u32(path: &Path) -> Result<u32, TopologyError> {
    let (p, s) = read_string(path)?;
    parse_u32(&p, &s)
}

fn parse_u32(path: &Path, s: &str) -> Result<u32, TopologyError> {
    s.trim().parse().map_err(|_| TopologyError::Malformed {
        path: path.to_path_buf(),
        reason: format!("{:?} is not a non-negative integer", truncate(s)),
    })
}

fn parse_i64(path: &Path, s: &str) -> Result<i64, TopologyError> {
    s.trim().parse().map_err(|_| TopologyError::Malformed {
        path: path.to_path_buf(),
        reason: format!("{:?} is not an integer", truncate(s)),
    })
}

fn truncate(s: &str) -> String {
    s.trim().chars().take(64).collect()
}
