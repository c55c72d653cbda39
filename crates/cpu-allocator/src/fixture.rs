//! Machine descriptions and a generator that writes them out as a real sysfs tree.
//!
//! A [`MachineSpec`] is a compact JSON description of a machine (see `fixtures/*.json`). The
//! generator materialises the files the kernel would show under `/sys` into a directory, in the
//! kernel's formats, so discovery always reads real files: tests, benchmarks and other crates'
//! tests (the NRI sidecar) can describe machines nobody has at hand.
//!
//! Numbering follows the kernel on x86: `core_id`, `die_id` and `cluster_id` count within a
//! package; cache ids are unique per level across the machine. With `smtNumbering: adjacent`
//! siblings get consecutive numbers (client parts: cpu0/cpu1 share a core); with `split` the first
//! thread of every core is numbered first, then the second threads (servers: cpu0/cpu40).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cpuset::CpuSet;
use crate::topology::CoreType;

/// Errors while loading a description or writing the tree.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("reading machine description {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("machine description {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("machine description {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How sibling hardware threads are numbered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SmtNumbering {
    /// Threads of a core are consecutive (cpu0, cpu1).
    #[default]
    Adjacent,
    /// First threads of all cores first, then second threads.
    Split,
}

/// Core type as written in a description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SpecCoreType {
    #[serde(rename = "P-core")]
    P,
    #[serde(rename = "E-core")]
    E,
}

impl From<SpecCoreType> for CoreType {
    fn from(t: SpecCoreType) -> Self {
        match t {
            SpecCoreType::P => CoreType::Performance,
            SpecCoreType::E => CoreType::Efficiency,
        }
    }
}

/// A run of identical cores inside each die.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoreGroup {
    pub cores: u32,
    #[serde(default = "one")]
    pub threads: u32,
    #[serde(default)]
    pub core_type: Option<SpecCoreType>,
    #[serde(default = "one")]
    pub cores_per_cluster: u32,
    #[serde(default = "one")]
    pub cores_per_l2: u32,
    /// Cores sharing one L3; absent: one L3 per die, shared with the die's other groups that
    /// leave it absent too.
    #[serde(default)]
    pub cores_per_l3: Option<u32>,
}

/// A machine description.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub packages: u32,
    #[serde(default = "one")]
    pub dies_per_package: u32,
    /// NUMA nodes per die; the die's cores are split evenly between them in order.
    #[serde(default = "one")]
    pub numa_nodes_per_die: u32,
    #[serde(default)]
    pub smt_numbering: SmtNumbering,
    /// The groups of each die, in CPU-numbering order.
    pub core_groups: Vec<CoreGroup>,
    /// CPUs to show as offline (cpulist).
    #[serde(default)]
    pub offline: String,
    /// CPUs to list in `cpu/isolated` (cpulist).
    #[serde(default)]
    pub isolated: String,
    /// Write `cache/index*/id` (older kernels and some VMs lack it).
    #[serde(default = "yes")]
    pub cache_ids: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// One generated logical CPU, before it is written out.
#[derive(Debug, Clone)]
struct GenCpu {
    id: u32,
    package: u32,
    die: u32,
    cluster: u32,
    core: u32,
    core_type: Option<CoreType>,
    numa: u32,
    /// Global ids per cache level: L1d, L1i, L2, L3.
    caches: [u32; 4],
    /// Global core index (for sibling lists).
    gcore: usize,
}

impl MachineSpec {
    /// Loads a description from a JSON file.
    pub fn load(path: &Path) -> Result<Self, FixtureError> {
        let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| FixtureError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    fn invalid(&self, reason: impl Into<String>) -> FixtureError {
        FixtureError::Invalid {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Number of logical CPUs the description yields (online or not), saturating.
    pub fn cpu_count(&self) -> u64 {
        let per_die = self.core_groups.iter().fold(0u64, |acc, g| {
            acc.saturating_add(u64::from(g.cores).saturating_mul(u64::from(g.threads)))
        });
        per_die
            .saturating_mul(u64::from(self.packages))
            .saturating_mul(u64::from(self.dies_per_package))
    }

    fn generate(&self) -> Result<Vec<GenCpu>, FixtureError> {
        if self.packages == 0 || self.dies_per_package == 0 || self.numa_nodes_per_die == 0 {
            return Err(self.invalid("packages, diesPerPackage and numaNodesPerDie must be ≥ 1"));
        }
        if self.core_groups.is_empty() {
            return Err(self.invalid("coreGroups is empty"));
        }
        for (i, g) in self.core_groups.iter().enumerate() {
            if g.cores == 0 || g.threads == 0 || g.cores_per_cluster == 0 || g.cores_per_l2 == 0 {
                return Err(self.invalid(format!("coreGroups[{i}]: counts must be ≥ 1")));
            }
            if g.cores_per_l3 == Some(0) {
                return Err(self.invalid(format!("coreGroups[{i}].coresPerL3 must be ≥ 1")));
            }
        }
        if self.cpu_count() > u64::from(crate::cpuset::MAX_CPUS) {
            return Err(self.invalid("too many CPUs"));
        }
        let die_cores: u32 = self.core_groups.iter().map(|g| g.cores).sum();
        if self.numa_nodes_per_die > die_cores {
            return Err(self.invalid("numaNodesPerDie exceeds the cores of a die"));
        }
        let cores_per_node = die_cores.div_ceil(self.numa_nodes_per_die);

        // Cores in numbering order, each with its threads' properties.
        struct GenCore {
            package: u32,
            die: u32,
            cluster: u32,
            core: u32,
            core_type: Option<CoreType>,
            numa: u32,
            l1: u32,
            l2: u32,
            l3: u32,
            threads: u32,
        }
        let mut cores = Vec::new();
        let (mut l2_next, mut l3_next) = (0u32, 0u32);
        for package in 0..self.packages {
            let (mut core_in_pkg, mut cluster_next) = (0u32, 0u32);
            for die in 0..self.dies_per_package {
                let die_index = package * self.dies_per_package + die;
                let mut core_in_die = 0u32;
                let mut die_l3: Option<u32> = None;
                for g in &self.core_groups {
                    let (cluster_base, l2_base, l3_base) = (cluster_next, l2_next, l3_next);
                    for c in 0..g.cores {
                        let l3 = match g.cores_per_l3 {
                            Some(n) => l3_base + c / n,
                            None => *die_l3.get_or_insert(l3_base),
                        };
                        cores.push(GenCore {
                            package,
                            die,
                            cluster: cluster_base + c / g.cores_per_cluster,
                            core: core_in_pkg,
                            core_type: g.core_type.map(Into::into),
                            numa: die_index * self.numa_nodes_per_die
                                + core_in_die / cores_per_node,
                            l1: cores.len() as u32,
                            l2: l2_base + c / g.cores_per_l2,
                            l3,
                            threads: g.threads,
                        });
                        core_in_pkg += 1;
                        core_in_die += 1;
                    }
                    cluster_next = cluster_base + g.cores.div_ceil(g.cores_per_cluster);
                    l2_next = l2_base + g.cores.div_ceil(g.cores_per_l2);
                    l3_next = match g.cores_per_l3 {
                        Some(n) => l3_base + g.cores.div_ceil(n),
                        None if die_l3 == Some(l3_base) => l3_base + 1,
                        None => l3_base,
                    };
                }
            }
        }

        let mut cpus = Vec::new();
        let mut push = |gcore: usize, c: &GenCore, id: u32| {
            cpus.push(GenCpu {
                id,
                package: c.package,
                die: c.die,
                cluster: c.cluster,
                core: c.core,
                core_type: c.core_type,
                numa: c.numa,
                caches: [c.l1, c.l1, c.l2, c.l3],
                gcore,
            });
        };
        let mut next = 0u32;
        match self.smt_numbering {
            SmtNumbering::Adjacent => {
                for (i, c) in cores.iter().enumerate() {
                    for _ in 0..c.threads {
                        push(i, c, next);
                        next += 1;
                    }
                }
            }
            SmtNumbering::Split => {
                let max_threads = cores.iter().map(|c| c.threads).max().unwrap_or(1);
                for t in 0..max_threads {
                    for (i, c) in cores.iter().enumerate() {
                        if t < c.threads {
                            push(i, c, next);
                            next += 1;
                        }
                    }
                }
            }
        }
        cpus.sort_by_key(|c| c.id);
        Ok(cpus)
    }

    /// Writes the sysfs tree for this machine below `root` (which plays `/sys`).
    pub fn materialize(&self, root: &Path) -> Result<(), FixtureError> {
        let cpus = self.generate()?;
        let offline =
            CpuSet::parse(&self.offline).map_err(|e| self.invalid(format!("offline: {e}")))?;
        let isolated =
            CpuSet::parse(&self.isolated).map_err(|e| self.invalid(format!("isolated: {e}")))?;
        let all: CpuSet = cpus.iter().map(|c| c.id).collect();
        let online = all.difference(&offline);
        let on = |c: &&GenCpu| online.contains(c.id);

        let set_where = |pred: &dyn Fn(&GenCpu) -> bool| -> CpuSet {
            cpus.iter()
                .filter(on)
                .filter(|c| pred(c))
                .map(|c| c.id)
                .collect()
        };

        let cpu_dir = root.join("devices/system/cpu");
        write(&cpu_dir.join("online"), &online.to_string())?;
        write(
            &cpu_dir.join("offline"),
            &offline.intersection(&all).to_string(),
        )?;
        write(&cpu_dir.join("possible"), &all.to_string())?;
        write(&cpu_dir.join("present"), &all.to_string())?;
        write(&cpu_dir.join("isolated"), &isolated.to_string())?;
        write(&cpu_dir.join("kernel_max"), "8191")?;

        for c in &cpus {
            let dir = cpu_dir.join(format!("cpu{}", c.id));
            if c.id != 0 {
                write(
                    &dir.join("online"),
                    if online.contains(c.id) { "1" } else { "0" },
                )?;
            }
            if !online.contains(c.id) {
                // The kernel removes topology and cache directories of an offline CPU.
                continue;
            }
            let siblings = set_where(&|o| o.gcore == c.gcore);
            let package_cpus = set_where(&|o| o.package == c.package);
            let die_cpus = set_where(&|o| o.package == c.package && o.die == c.die);
            let cluster_cpus = set_where(&|o| o.package == c.package && o.cluster == c.cluster);
            let t = dir.join("topology");
            write(&t.join("physical_package_id"), &c.package.to_string())?;
            write(&t.join("die_id"), &c.die.to_string())?;
            write(&t.join("cluster_id"), &c.cluster.to_string())?;
            write(&t.join("core_id"), &c.core.to_string())?;
            write(&t.join("thread_siblings_list"), &siblings.to_string())?;
            write(&t.join("core_cpus_list"), &siblings.to_string())?;
            write(&t.join("core_siblings_list"), &package_cpus.to_string())?;
            write(&t.join("package_cpus_list"), &package_cpus.to_string())?;
            write(&t.join("die_cpus_list"), &die_cpus.to_string())?;
            write(&t.join("cluster_cpus_list"), &cluster_cpus.to_string())?;

            let levels: [(u32, &str, usize); 4] = [
                (1, "Data", 0),
                (1, "Instruction", 1),
                (2, "Unified", 2),
                (3, "Unified", 3),
            ];
            for (index, (level, kind, slot)) in levels.into_iter().enumerate() {
                let shared = set_where(&|o| o.caches[slot] == c.caches[slot]);
                let d = dir.join(format!("cache/index{index}"));
                write(&d.join("level"), &level.to_string())?;
                write(&d.join("type"), kind)?;
                if self.cache_ids {
                    write(&d.join("id"), &c.caches[slot].to_string())?;
                }
                write(&d.join("shared_cpu_list"), &shared.to_string())?;
            }
        }

        let node_dir = root.join("devices/system/node");
        let mut nodes: Vec<u32> = cpus.iter().map(|c| c.numa).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for n in &nodes {
            let list = set_where(&|o| o.numa == *n);
            write(
                &node_dir.join(format!("node{n}/cpulist")),
                &list.to_string(),
            )?;
        }
        let node_set: CpuSet = nodes.iter().copied().collect();
        write(&node_dir.join("online"), &node_set.to_string())?;
        write(&node_dir.join("possible"), &node_set.to_string())?;

        if cpus.iter().any(|c| c.core_type.is_some()) {
            let p = set_where(&|o| o.core_type == Some(CoreType::Performance));
            let e = set_where(&|o| o.core_type == Some(CoreType::Efficiency));
            write(&root.join("devices/cpu_core/cpus"), &p.to_string())?;
            write(&root.join("devices/cpu_atom/cpus"), &e.to_string())?;
        }
        Ok(())
    }
}

/// Writes `content` plus the newline the kernel ends every attribute with.
fn write(path: &Path, content: &str) -> Result<(), FixtureError> {
    let err = |source| FixtureError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(path, format!("{content}\n")).map_err(err)
}

/// The checked-in descriptions in this crate's `fixtures/` directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Loads `fixtures/<name>.json` and writes its tree below `root`.
pub fn materialize_named(name: &str, root: &Path) -> Result<MachineSpec, FixtureError> {
    let spec = MachineSpec::load(&fixtures_dir().join(format!("{name}.json")))?;
    spec.materialize(root)?;
    Ok(spec)
}

/// Where to put generated trees: `/dev/shm` when it is a writable directory (a 1,024-CPU tree is
/// ~28,000 small files: ~0.4 s on tmpfs, over 10 s on this disk), else the system temp dir.
pub fn scratch_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = std::fs::metadata(shm)
        .map(|m| m.is_dir() && !m.permissions().readonly())
        .unwrap_or(false);
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
