//! Topology-aware choice of exclusive CPUs inside a group (grouped device model).
//!
//! The candidate CPUs are arranged in a tree: package → die → NUMA node → L3 → cluster → core →
//! thread. At every level the picker prefers a single child that can hold the whole request; among
//! those it compares what each would hand out, in this order:
//! 1. fewest NUMA nodes,
//! 2. fewest cores the claim would only partly own (whole cores before SMT siblings),
//! 3. fewest L3 domains,
//! 4. fewest fully free cores split in half (a lone thread goes into a hole first),
//! 5. fewest clusters,
//! 6. the tightest fit (fewest free CPUs in the child), then the lowest numbers.
//!
//! When no child fits, it takes whole children, largest first (fewest domains), and places the
//! remainder by the same rules. Like the kubelet's static CPU manager, large requests take whole
//! domains and small ones stay packed.

use std::collections::{BTreeMap, BTreeSet};

use crate::cpuset::CpuSet;
use crate::topology::{CoreType, Cpu, Topology};

/// Why no CPUs could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("{requested} CPUs requested but only {available} are free in the group")]
    Insufficient { requested: usize, available: usize },
    #[error("a request for 0 CPUs")]
    Zero,
    #[error("{requested} CPUs cannot be whole cores: got {got}, which splits a core")]
    NotWholeCores { requested: usize, got: CpuSet },
    #[error("{requested} CPUs do not fit on one NUMA node (best choice spans nodes {nodes})")]
    NotOneNumaNode { requested: usize, nodes: CpuSet },
}

/// How strictly SMT siblings are treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SmtPolicy {
    /// Whole cores first, a lone thread where the count is odd (default).
    #[default]
    Prefer,
    /// Only whole, fully free cores; a count that would split a core is refused (like the
    /// kubelet's `full-pcpus-only`).
    FullCores,
}

/// Constraints on a pick (what a claim's `CpuConfig` can ask for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickOptions {
    pub smt: SmtPolicy,
    /// Only CPUs of this core type (hybrid parts; on others no CPU has a type, so nothing fits).
    pub core_type: Option<CoreType>,
    /// Refuse a choice that spans NUMA nodes.
    pub single_numa_node: bool,
}

/// Levels of the tree; the last one (core) holds threads.
const LEVELS: usize = 6;

fn level_key(cpu: &Cpu, level: usize) -> u64 {
    match level {
        0 => u64::from(cpu.package),
        1 => u64::from(cpu.die),
        2 => u64::from(cpu.numa_node),
        3 => cpu.l3_key(),
        4 => cpu.cluster_key(),
        _ => cpu.core_key(),
    }
}

#[derive(Debug)]
struct Node {
    free: usize,
    children: Vec<Node>,
    /// Free threads, only at core level.
    threads: Vec<u32>,
}

fn build(cpus: &[&Cpu], level: usize) -> Node {
    if level == LEVELS - 1 {
        return Node {
            free: cpus.len(),
            children: Vec::new(),
            threads: cpus.iter().map(|c| c.id).collect(),
        };
    }
    let mut children = Vec::new();
    let mut start = 0;
    while start < cpus.len() {
        let key = level_key(cpus[start], level);
        let mut end = start + 1;
        while end < cpus.len() && level_key(cpus[end], level) == key {
            end += 1;
        }
        children.push(build(&cpus[start..end], level + 1));
        start = end;
    }
    Node {
        free: cpus.len(),
        children,
        threads: Vec::new(),
    }
}

/// Chooses `count` CPUs out of `free` (CPUs unknown to `topo` are ignored), default options.
pub fn pick(topo: &Topology, free: &CpuSet, count: usize) -> Result<CpuSet, AllocError> {
    pick_with(topo, free, count, PickOptions::default())
}

/// Chooses `count` CPUs out of `free` under `opts`.
pub fn pick_with(
    topo: &Topology,
    free: &CpuSet,
    count: usize,
    opts: PickOptions,
) -> Result<CpuSet, AllocError> {
    if count == 0 {
        return Err(AllocError::Zero);
    }
    let candidates: CpuSet = free
        .iter()
        .filter(|id| {
            topo.cpus.get(id).is_some_and(|c| {
                opts.core_type.is_none_or(|t| c.core_type == Some(t))
                    && (opts.smt == SmtPolicy::Prefer || c.siblings.is_subset(free))
            })
        })
        .collect();
    let got = pick_from(topo, &candidates, count)?;
    if opts.smt == SmtPolicy::FullCores
        && got
            .iter()
            .filter_map(|c| topo.cpus.get(&c))
            .any(|c| !c.siblings.is_subset(&got))
    {
        return Err(AllocError::NotWholeCores {
            requested: count,
            got,
        });
    }
    if opts.single_numa_node {
        let nodes = topo.mems_of(&got);
        if nodes.len() > 1 {
            return Err(AllocError::NotOneNumaNode {
                requested: count,
                nodes,
            });
        }
    }
    Ok(got)
}

fn pick_from(topo: &Topology, free: &CpuSet, count: usize) -> Result<CpuSet, AllocError> {
    let mut cpus: Vec<&Cpu> = free.iter().filter_map(|id| topo.cpus.get(&id)).collect();
    if cpus.len() < count {
        return Err(AllocError::Insufficient {
            requested: count,
            available: cpus.len(),
        });
    }
    cpus.sort_by_key(|c| {
        let mut k = [0u64; LEVELS + 1];
        for (l, slot) in k.iter_mut().enumerate().take(LEVELS) {
            *slot = level_key(c, l);
        }
        k[LEVELS] = u64::from(c.id);
        k
    });
    let root = build(&cpus, 0);
    let picker = Picker { topo, free };
    let mut out = Vec::with_capacity(count);
    picker.pick(&root, count, &mut out);
    Ok(out.into_iter().collect())
}

struct Picker<'a> {
    topo: &'a Topology,
    free: &'a CpuSet,
}

/// Comparison key of a candidate choice; smaller is better.
type Cost = (usize, usize, usize, usize, usize, usize, usize);

impl Picker<'_> {
    fn pick(&self, node: &Node, k: usize, out: &mut Vec<u32>) {
        if node.children.is_empty() {
            out.extend(node.threads.iter().take(k));
            return;
        }
        let mut best: Option<(Cost, Vec<u32>)> = None;
        for (i, child) in node.children.iter().enumerate() {
            if child.free < k {
                continue;
            }
            let mut sub = Vec::with_capacity(k);
            self.pick(child, k, &mut sub);
            let cost = self.cost(&sub, child.free, i);
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, sub));
            }
        }
        if let Some((_, sub)) = best {
            out.extend(sub);
            return;
        }
        // No single child holds it: whole children, largest first, then the remainder.
        let mut order: Vec<usize> = (0..node.children.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(node.children[i].free));
        let mut remaining = k;
        let mut skipped = Vec::new();
        for i in order {
            let child = &node.children[i];
            if child.free <= remaining {
                self.take_all(child, out);
                remaining -= child.free;
            } else {
                skipped.push(i);
            }
        }
        if remaining == 0 {
            return;
        }
        let mut best: Option<(Cost, Vec<u32>)> = None;
        for i in skipped {
            let child = &node.children[i];
            let mut sub = Vec::with_capacity(remaining);
            self.pick(child, remaining, &mut sub);
            let mut all = out.clone();
            all.extend(&sub);
            let cost = self.cost(&all, child.free, i);
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, sub));
            }
        }
        if let Some((_, sub)) = best {
            out.extend(sub);
        }
    }

    fn take_all(&self, node: &Node, out: &mut Vec<u32>) {
        if node.children.is_empty() {
            out.extend(&node.threads);
        }
        for c in &node.children {
            self.take_all(c, out);
        }
    }

    fn cost(&self, chosen: &[u32], child_free: usize, index: usize) -> Cost {
        let mut numa = BTreeSet::new();
        let mut l3 = BTreeSet::new();
        let mut clusters = BTreeSet::new();
        let mut cores: BTreeMap<u64, (usize, &CpuSet)> = BTreeMap::new();
        for id in chosen {
            let Some(cpu) = self.topo.cpus.get(id) else {
                continue;
            };
            numa.insert(cpu.numa_node);
            l3.insert(cpu.l3_key());
            clusters.insert(cpu.cluster_key());
            cores.entry(cpu.core_key()).or_insert((0, &cpu.siblings)).0 += 1;
        }
        let (mut partial, mut split) = (0, 0);
        for (taken, siblings) in cores.values() {
            if *taken < siblings.len() {
                partial += 1;
                if siblings.is_subset(self.free) {
                    split += 1;
                }
            }
        }
        (
            numa.len(),
            partial,
            l3.len(),
            split,
            clusters.len(),
            child_free,
            index,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::materialize_named;

    fn topo(name: &str) -> (tempfile::TempDir, Topology) {
        let dir = tempfile::tempdir_in(crate::fixture::scratch_parent()).unwrap();
        materialize_named(name, dir.path()).unwrap();
        let t = Topology::discover(dir.path()).unwrap();
        (dir, t)
    }

    fn set(s: &str) -> CpuSet {
        CpuSet::parse(s).unwrap()
    }

    #[test]
    fn errors() {
        let (_d, t) = topo("alderlake-8p8e");
        assert_eq!(pick(&t, &t.online, 0), Err(AllocError::Zero));
        assert_eq!(
            pick(&t, &set("0-3"), 5),
            Err(AllocError::Insufficient {
                requested: 5,
                available: 4
            })
        );
        // CPUs unknown to the topology are not candidates.
        assert!(pick(&t, &set("100-200"), 1).is_err());
    }

    #[test]
    fn smt_whole_cores_first_on_xeon() {
        let (_d, t) = topo("xeon-2s-smt");
        let node0 = t.numa_nodes[&0].clone();
        // Two CPUs: one whole core (cpu0 + its sibling cpu40), not two half cores.
        assert_eq!(pick(&t, &node0, 2).unwrap(), set("0,40"));
        assert_eq!(pick(&t, &node0, 4).unwrap(), set("0-1,40-41"));
        // With cpu0 taken by someone, a single CPU fills the hole (cpu40) and leaves whole cores.
        let free = node0.difference(&set("0"));
        assert_eq!(pick(&t, &free, 1).unwrap(), set("40"));
        // Two CPUs with a hole present: a whole core, not the hole plus a split core.
        assert_eq!(pick(&t, &free, 2).unwrap(), set("1,41"));
        // Three: a whole core plus the hole.
        assert_eq!(pick(&t, &free, 3).unwrap(), set("1,40-41"));
    }

    #[test]
    fn socket_group_stays_on_one_numa_node() {
        let (_d, t) = topo("xeon-2s-smt");
        // Whole machine as candidates; node 1 has more room, 8 CPUs must stay within one node.
        let free = t.online.difference(&set("0-15,40-55"));
        let got = pick(&t, &free, 8).unwrap();
        assert_eq!(t.mems_of(&got), set("0"), "tightest node that fits: {got}");
        assert_eq!(got, set("16-19,56-59"));
        let got = pick(&t, &free, 10).unwrap();
        assert_eq!(t.mems_of(&got), set("1"), "{got}");
        assert_eq!(got, set("20-24,60-64"));
    }

    #[test]
    fn l3_aware_on_epyc() {
        let (_d, t) = topo("epyc-2s-8l3");
        let node0 = t.numa_nodes[&0].clone();
        // 8 CPUs = one whole CCX (4 cores x 2 threads, one L3).
        let got = pick(&t, &node0, 8).unwrap();
        assert_eq!(got, set("0-3,64-67"));
        // Partly used CCX0: 6 CPUs go to the tighter CCX0 remainder only if it fits whole cores.
        let free = node0.difference(&set("0,64"));
        let got = pick(&t, &free, 6).unwrap();
        assert_eq!(got, set("1-3,65-67"), "best fit into the used L3");
        // 8 no longer fits CCX0: a fresh CCX, not two L3 domains.
        let got = pick(&t, &free, 8).unwrap();
        assert_eq!(got, set("4-7,68-71"));
        // 16: exactly two whole L3 domains.
        let got = pick(&t, &node0, 16).unwrap();
        let l3s: BTreeSet<u64> = got.iter().map(|c| t.cpus[&c].l3_key()).collect();
        assert_eq!(l3s.len(), 2, "{got}");
        assert_eq!(got, set("0-7,64-71"));
        // 12 from a fresh node: one whole L3 plus half of another, whole cores only.
        let got = pick(&t, &node0, 12).unwrap();
        let l3s: BTreeSet<u64> = got.iter().map(|c| t.cpus[&c].l3_key()).collect();
        assert_eq!(l3s.len(), 2, "{got}");
        for c in got.iter() {
            assert!(t.cpus[&c].siblings.is_subset(&got), "half core in {got}");
        }
    }

    #[test]
    fn hybrid_clusters() {
        let (_d, t) = topo("alderlake-8p8e");
        // Two CPUs: one P-core (both threads), the tightest cluster that fits.
        assert_eq!(pick(&t, &t.online, 2).unwrap(), set("0-1"));
        // Four CPUs: one whole E-core cluster (one cluster, no SMT sharing).
        assert_eq!(pick(&t, &t.online, 4).unwrap(), set("16-19"));
        // One CPU: an E-core (a whole core by itself) rather than half a P-core.
        assert_eq!(pick(&t, &t.online, 1).unwrap(), set("16"));
    }

    #[test]
    fn options() {
        let (_d, t) = topo("alderlake-8p8e");
        let p = PickOptions {
            core_type: Some(CoreType::Performance),
            ..Default::default()
        };
        assert_eq!(pick_with(&t, &t.online, 1, p).unwrap(), set("0"));
        assert_eq!(pick_with(&t, &t.online, 4, p).unwrap(), set("0-3"));
        let e = PickOptions {
            core_type: Some(CoreType::Efficiency),
            ..Default::default()
        };
        assert_eq!(pick_with(&t, &t.online, 6, e).unwrap(), set("16-21"));
        assert!(matches!(
            pick_with(&t, &t.online, 9, e),
            Err(AllocError::Insufficient { available: 8, .. })
        ));

        let (_d, x) = topo("xeon-2s-smt");
        let full = PickOptions {
            smt: SmtPolicy::FullCores,
            ..Default::default()
        };
        // cpu40 taken: its sibling cpu0 is no candidate for whole cores.
        let free = x.online.difference(&set("40"));
        assert_eq!(pick_with(&x, &free, 2, full).unwrap(), set("1,41"));
        let err = pick_with(&x, &free, 3, full).unwrap_err();
        assert!(matches!(err, AllocError::NotWholeCores { .. }), "{err}");
        assert!(err.to_string().contains("splits a core"));

        let one = PickOptions {
            single_numa_node: true,
            ..Default::default()
        };
        assert_eq!(
            x.mems_of(&pick_with(&x, &x.online, 40, one).unwrap()),
            set("0")
        );
        let err = pick_with(&x, &x.online, 41, one).unwrap_err();
        assert!(matches!(err, AllocError::NotOneNumaNode { .. }), "{err}");
        // Without the constraint 41 spans both nodes.
        assert_eq!(x.mems_of(&pick(&x, &x.online, 41).unwrap()), set("0-1"));
    }

    #[test]
    fn big_request_on_1024() {
        let (_d, t) = topo("synthetic-1024");
        let node3 = t.numa_nodes[&3].clone();
        assert_eq!(node3.len(), 128);
        let got = pick(&t, &node3, 64).unwrap();
        assert_eq!(got.len(), 64);
        let l3s: BTreeSet<u64> = got.iter().map(|c| t.cpus[&c].l3_key()).collect();
        assert_eq!(l3s.len(), 2, "64 CPUs = two whole L3 domains of 32: {got}");
        for c in got.iter() {
            assert!(t.cpus[&c].siblings.is_subset(&got), "half core in {got}");
        }
    }
}
