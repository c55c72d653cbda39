//! Inputs the fuzz target in `fuzz/` found, kept as ordinary tests so `cargo test` guards the
//! fix without cargo-fuzz. Each test names the target and what it found.

use drakit_cpu::fixture::materialize_named;
use drakit_cpu::inventory::{GroupBy, groups};
use drakit_cpu::topology::{Topology, TopologyError};

/// sysfs_topology: two NUMA nodes listing the same CPU (node0 `0-1` plus the orphans, node3
/// `0`) were accepted, so cpu0 sat in two nodes and in two groups of the grouped model.
#[test]
fn sysfs_topology_cpu_listed_by_two_numa_nodes() {
    let dir = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    materialize_named("xeon-2s-smt", dir.path()).unwrap();
    let node = dir.path().join("devices/system/node");
    // Sound as generated: the two nodes partition the CPUs.
    let t = Topology::discover(dir.path()).unwrap();
    let g = groups(&t, GroupBy::Numa, &t.online);
    assert_eq!(g.len(), 2);
    assert!(g[0].cpus.is_disjoint(&g[1].cpus));

    std::fs::create_dir_all(node.join("node3")).unwrap();
    std::fs::write(node.join("node3/cpulist"), "0\n").unwrap();
    match Topology::discover(dir.path()) {
        Err(TopologyError::Malformed { path, reason }) => {
            assert_eq!(path, node.join("node3/cpulist"));
            assert!(reason.contains("cpu0"), "{reason}");
        }
        other => panic!("overlapping node lists accepted: {other:?}"),
    }
}
