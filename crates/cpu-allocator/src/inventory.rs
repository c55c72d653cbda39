//! The devices drakit-cpu publishes, in either device model.

use std::collections::HashMap;

use drakit_proto::drakit::{
    Attribute, Capacity, Device, Health, Inventory, RequestPolicy, ValidRange, attribute,
};

use crate::cpuset::CpuSet;
use crate::topology::{CACHE_LEVELS, Topology};

/// The standard (cross-driver) NUMA attribute, for `matchAttribute` with NICs and GPUs.
pub const STANDARD_NUMA_ATTRIBUTE: &str = "resource.kubernetes.io/numaNode";
/// Capacity name of a group device in the grouped model.
pub const CPUS_CAPACITY: &str = "cpus";

/// How CPUs are exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceModel {
    /// One device `cpu<N>` per allocatable logical CPU, with topology attributes.
    Individual,
    /// One device per group with a consumable `cpus` capacity; drakit-cpu picks the CPUs.
    Grouped(GroupBy),
}

/// What a group device of the grouped model covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Device `numa<N>` per NUMA node.
    Numa,
    /// Device `socket<N>` per package.
    Socket,
}

/// A group device: its name and the allocatable CPUs it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub cpus: CpuSet,
    pub numa_node: Option<u32>,
    pub package: u32,
}

/// The groups of the grouped model over `allocatable` CPUs (groups with none are left out).
pub fn groups(topo: &Topology, by: GroupBy, allocatable: &CpuSet) -> Vec<Group> {
    let mut out = Vec::new();
    match by {
        GroupBy::Numa => {
            for (node, cpus) in &topo.numa_nodes {
                let cpus = cpus.intersection(allocatable);
                let Some(first) = cpus.first() else { continue };
                let package = topo.cpus.get(&first).map_or(0, |c| c.package);
                out.push(Group {
                    name: format!("numa{node}"),
                    cpus,
                    numa_node: Some(*node),
                    package,
                });
            }
        }
        GroupBy::Socket => {
            for package in topo.packages() {
                let cpus = topo.package_cpus(package).intersection(allocatable);
                if cpus.is_empty() {
                    continue;
                }
                let mems = topo.mems_of(&cpus);
                let numa_node = if mems.len() == 1 { mems.first() } else { None };
                out.push(Group {
                    name: format!("socket{package}"),
                    cpus,
                    numa_node,
                    package,
                });
            }
        }
    }
    out
}

fn int(v: u32) -> Attribute {
    Attribute {
        value: Some(attribute::Value::Int(i64::from(v))),
    }
}

fn string(v: &str) -> Attribute {
    Attribute {
        value: Some(attribute::Value::String(v.to_string())),
    }
}

fn boolean(v: bool) -> Attribute {
    Attribute {
        value: Some(attribute::Value::Bool(v)),
    }
}

/// Builds the inventory: `allocatable` is online minus reserved.
pub fn build(
    topo: &Topology,
    model: DeviceModel,
    allocatable: &CpuSet,
    generation: u64,
) -> Inventory {
    let devices = match model {
        DeviceModel::Individual => allocatable
            .iter()
            .filter_map(|id| topo.cpus.get(&id))
            .map(|cpu| {
                let mut attributes = HashMap::with_capacity(13);
                attributes.insert("package".into(), int(cpu.package));
                attributes.insert("die".into(), int(cpu.die));
                if let Some(c) = cpu.cluster {
                    attributes.insert("cluster".into(), int(c));
                }
                attributes.insert("core".into(), int(cpu.core));
                if let Some(t) = cpu.core_type {
                    attributes.insert("coreType".into(), string(t.as_str()));
                }
                for (i, id) in cpu.caches.iter().enumerate() {
                    if let Some(id) = id {
                        attributes.insert(format!("cache{i}ID"), int(*id));
                    }
                }
                attributes.insert("localMemory".into(), int(cpu.numa_node));
                attributes.insert("isolated".into(), boolean(cpu.isolated));
                attributes.insert(STANDARD_NUMA_ATTRIBUTE.into(), int(cpu.numa_node));
                Device {
                    name: format!("cpu{}", cpu.id),
                    attributes,
                    capacity: HashMap::new(),
                    allow_multiple_allocations: false,
                    health: Health::Healthy as i32,
                    health_message: String::new(),
                }
            })
            .collect(),
        DeviceModel::Grouped(by) => groups(topo, by, allocatable)
            .into_iter()
            .map(|g| {
                let mut attributes = HashMap::new();
                attributes.insert("package".into(), int(g.package));
                if let Some(n) = g.numa_node {
                    attributes.insert("localMemory".into(), int(n));
                    attributes.insert(STANDARD_NUMA_ATTRIBUTE.into(), int(n));
                }
                let smt = g
                    .cpus
                    .iter()
                    .filter_map(|c| topo.cpus.get(&c))
                    .any(|c| c.siblings.len() > 1);
                attributes.insert("smt".into(), boolean(smt));
                let count = g.cpus.len().to_string();
                let mut capacity = HashMap::new();
                capacity.insert(
                    CPUS_CAPACITY.into(),
                    Capacity {
                        value: count.clone(),
                        request_policy: Some(RequestPolicy {
                            default: "1".into(),
                            valid_values: Vec::new(),
                            valid_range: Some(ValidRange {
                                min: "1".into(),
                                max: count,
                                step: "1".into(),
                            }),
                        }),
                    },
                );
                Device {
                    name: g.name,
                    attributes,
                    capacity,
                    allow_multiple_allocations: true,
                    health: Health::Healthy as i32,
                    health_message: String::new(),
                }
            })
            .collect(),
    };
    Inventory {
        generation,
        devices,
        pool: String::new(),
    }
}

/// Attribute names published in the individual model (for docs and tests).
pub fn individual_attribute_names() -> Vec<String> {
    let mut v: Vec<String> = ["package", "die", "cluster", "core", "coreType"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend((0..CACHE_LEVELS.len()).map(|i| format!("cache{i}ID")));
    v.extend(["localMemory".into(), "isolated".into()]);
    v.push(STANDARD_NUMA_ATTRIBUTE.into());
    v
}
