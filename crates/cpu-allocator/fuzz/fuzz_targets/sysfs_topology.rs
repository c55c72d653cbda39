//! Arbitrary sysfs CPU trees into topology discovery, and what discovery returns into the
//! inventory and the CPU picker; arbitrary strings into the cpulist and quantity parsers.
//!
//! The input describes a small tree (at most 8 CPUs, up to 4 NUMA nodes, 4-5 caches per CPU)
//! in which every file holds what a real machine shows unless the input says it is missing,
//! a number, a list or anything else; it is written to a scratch directory on tmpfs and read
//! back with `Topology::discover`, exactly as on a node.
//!
//! Checked, besides "no panic" and "no hang":
//! - a CPU list that parses prints in the kernel format and parses back to the same set;
//! - a discovered topology is consistent: one CPU entry per online CPU, each CPU among its own
//!   (online) siblings and in the NUMA node it names, NUMA nodes disjoint and covering every
//!   online CPU, `isolated` flags matching the isolated list;
//! - the inventory has one device per allocatable CPU (individual model) and groups that
//!   partition them (grouped models);
//! - the picker hands out exactly the count asked for, only free known CPUs, and honours its
//!   options (whole cores, one NUMA node, core type); with default options it fails only when
//!   fewer CPUs are free than asked for.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use arbitrary::Arbitrary;
use drakit_cpu::alloc::{AllocError, PickOptions, SmtPolicy, pick_with};
use drakit_cpu::inventory::{self, DeviceModel, GroupBy};
use drakit_cpu::state::parse_count;
use drakit_cpu::topology::CoreType;
use drakit_cpu::{CpuSet, Topology};
use libfuzzer_sys::fuzz_target;

const MAX_CPU: u8 = 8;
/// CPUs per package in the good tree (two packages, SMT pairs, two L2 clusters each).
const PER_PACKAGE: u32 = MAX_CPU as u32 / 2;

/// A file's content: mostly what a real machine shows (derived from the CPU's number, so an
/// empty input is a consistent 16-CPU, 2-package, SMT machine), sometimes missing, a number,
/// a list, or anything.
#[derive(Arbitrary, Debug, Default)]
enum F {
    #[default]
    Good,
    Missing,
    Num(i64),
    List(Vec<(u8, u8)>),
    Raw(String),
}

fn list_text(r: &[(u8, u8)]) -> String {
    let mut s = String::new();
    for (i, (a, b)) in r.iter().take(8).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let (a, b) = (a % (MAX_CPU + 2), b % (MAX_CPU + 2));
        if a == b {
            let _ = write!(s, "{a}");
        } else {
            let _ = write!(s, "{}-{}", a.min(b), a.max(b));
        }
    }
    s.push('\n');
    s
}

impl F {
    /// The text to write, `None` for no file; `good` is what a real machine would show.
    fn text(&self, good: impl FnOnce() -> String) -> Option<String> {
        match self {
            F::Good => Some(good()),
            F::Missing => None,
            F::Num(n) => Some(format!("{n}\n")),
            F::List(r) => Some(list_text(r)),
            F::Raw(s) => Some(s.clone()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct CpuDir {
    package: F,
    die: F,
    cluster: F,
    core: F,
    siblings: F,
    core_cpus: F,
    /// index0..index3: L1d, L1i, L2, L3, each with level, type, id, shared_cpu_list.
    caches: [[F; 4]; 4],
    /// An extra index4 (L4 or garbage).
    extra_cache: Option<[F; 4]>,
}

#[derive(Arbitrary, Debug)]
enum Nodes {
    /// node0 = package 0's CPUs, node1 = package 1's.
    PerPackage,
    /// No node directory (no NUMA).
    Absent,
    Custom(Vec<(u8, F)>),
}

#[derive(Arbitrary, Debug)]
struct Pick {
    count: u8,
    full_cores: bool,
    one_node: bool,
    core_type: Option<bool>,
    /// CPUs taken out of the free set first.
    taken: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// How many CPUs are online (`0-<n>`), unless `online_file` says otherwise.
    last_online: u8,
    online_file: F,
    isolated: F,
    cpus: Vec<CpuDir>,
    nodes: Nodes,
    /// A node directory entry that is not `node<N>` (ignored by discovery).
    stray_node_entry: bool,
    /// cpu_core/cpus and cpu_atom/cpus (hybrid: package 0 P-cores, package 1 E-cores).
    hybrid: Option<(F, F)>,
    reserved: F,
    picks: Vec<Pick>,
    /// Raw strings for the pure parsers.
    lists: Vec<String>,
}

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if fs::metadata("/dev/shm").is_ok_and(|m| m.is_dir()) {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        sweep_dead(&base, "drakit-fuzz-sysfs-");
        base.join(format!("drakit-fuzz-sysfs-{}", std::process::id()))
    })
}

/// Removes `<base>/<prefix><pid>` trees of fuzzer processes that are gone (libFuzzer ends with
/// `exit`, so a run cannot clean up after itself; `cargo xtask fuzz-smoke` sweeps too).
fn sweep_dead(base: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The files and directories of one fixture tree. Written by [`sync`], which changes only what
/// differs from the previous input's tree: rewriting some 150 files per input would make the
/// file system, not the code under test, the bottleneck.
#[derive(Default, Clone, PartialEq)]
struct Tree {
    files: BTreeMap<PathBuf, String>,
    dirs: BTreeSet<PathBuf>,
}

impl Tree {
    fn put(&mut self, path: &Path, text: &str) {
        self.files.insert(path.to_path_buf(), text.to_string());
    }
    fn put_opt(&mut self, path: &Path, text: Option<String>) {
        if let Some(t) = text {
            self.put(path, &t);
        }
    }
    fn dir(&mut self, path: &Path) {
        self.dirs.insert(path.to_path_buf());
    }
    /// Every directory that must exist: the explicit ones and every file's ancestors.
    fn all_dirs(&self, root: &Path) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        let parents = self.files.keys().filter_map(|f| f.parent());
        for p in self.dirs.iter().map(PathBuf::as_path).chain(parents) {
            let mut d = Some(p);
            while let Some(x) = d {
                if !x.starts_with(root) || !out.insert(x.to_path_buf()) {
                    break;
                }
                d = x.parent();
            }
        }
        out
    }
}

/// Makes the directory hold exactly `tree`, given that it held `prev` (None: unknown).
fn sync(root: &Path, prev: Option<&Tree>, tree: &Tree) {
    let Some(prev) = prev else {
        let _ = fs::remove_dir_all(root);
        for d in tree.all_dirs(root) {
            fs::create_dir_all(&d).expect("mkdir");
        }
        for (f, t) in &tree.files {
            fs::write(f, t).expect("write fixture file");
        }
        return;
    };
    for f in prev.files.keys() {
        if !tree.files.contains_key(f) {
            fs::remove_file(f).expect("remove fixture file");
        }
    }
    let want = tree.all_dirs(root);
    // Deepest first, so a directory is empty when it is removed.
    let mut gone: Vec<PathBuf> = prev.all_dirs(root).difference(&want).cloned().collect();
    gone.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in gone {
        fs::remove_dir(&d).expect("remove fixture dir");
    }
    for d in &want {
        fs::create_dir_all(d).expect("mkdir");
    }
    for (f, t) in &tree.files {
        if prev.files.get(f) != Some(t) {
            fs::write(f, t).expect("write fixture file");
        }
    }
}

fn write_tree(root: &Path, input: &Input) {
    static PREV: Mutex<Option<Tree>> = Mutex::new(None);
    let mut tree = Tree::default();
    build_tree(root, input, &mut tree);
    let mut prev = PREV.lock().unwrap_or_else(|e| e.into_inner());
    // Forget the previous tree first: if sync fails half-way, the next input starts afresh.
    let old = prev.take();
    sync(root, old.as_ref(), &tree);
    *prev = Some(tree);
}

fn build_tree(root: &Path, input: &Input, tree: &mut Tree) {
    let n = u32::from(input.last_online % MAX_CPU) + 1;
    let cpu = root.join("devices/system/cpu");
    tree.put_opt(
        &cpu.join("online"),
        input.online_file.text(|| format!("0-{}\n", n - 1)),
    );
    tree.put_opt(&cpu.join("isolated"), input.isolated.text(String::new));
    let default_dir = CpuDir {
        package: F::Good,
        die: F::Good,
        cluster: F::Good,
        core: F::Good,
        siblings: F::Good,
        core_cpus: F::Good,
        caches: Default::default(),
        extra_cache: None,
    };
    for i in 0..u32::from(MAX_CPU) {
        let c = input.cpus.get(i as usize).unwrap_or(&default_dir);
        let dir = cpu.join(format!("cpu{i}"));
        let topo = dir.join("topology");
        tree.dir(&topo);
        let pair = || format!("{}-{}\n", i & !1, i | 1);
        let files = [
            (
                "physical_package_id",
                c.package.text(|| format!("{}\n", i / PER_PACKAGE)),
            ),
            ("die_id", c.die.text(|| "0\n".into())),
            ("cluster_id", c.cluster.text(|| format!("{}\n", i / 2))),
            (
                "core_id",
                c.core.text(|| format!("{}\n", (i % PER_PACKAGE) / 2)),
            ),
            ("thread_siblings_list", c.siblings.text(pair)),
            ("core_cpus_list", c.core_cpus.text(pair)),
        ];
        for (name, text) in files {
            tree.put_opt(&topo.join(name), text);
        }
        // (level, type, id, shared_cpu_list) of index0..index3.
        let good: [(u32, &str, u32, String); 4] = [
            (1, "Data", i / 2, pair()),
            (1, "Instruction", i / 2, pair()),
            (2, "Unified", i / 2, pair()),
            (
                3,
                "Unified",
                i / PER_PACKAGE,
                format!(
                    "{}-{}\n",
                    i / PER_PACKAGE * PER_PACKAGE,
                    i / PER_PACKAGE * PER_PACKAGE + PER_PACKAGE - 1
                ),
            ),
        ];
        let extra = c.extra_cache.as_ref().map(|e| (4, e));
        for (index, files) in c.caches.iter().enumerate().chain(extra) {
            let (level, kind, id, shared) = good.get(index).cloned().unwrap_or((
                4,
                "Unified",
                0,
                format!("0-{}\n", MAX_CPU - 1),
            ));
            let idx = dir.join(format!("cache/index{index}"));
            tree.dir(&idx);
            tree.put_opt(&idx.join("level"), files[0].text(|| format!("{level}\n")));
            tree.put_opt(&idx.join("type"), files[1].text(|| format!("{kind}\n")));
            tree.put_opt(&idx.join("id"), files[2].text(|| format!("{id}\n")));
            tree.put_opt(&idx.join("shared_cpu_list"), files[3].text(|| shared));
        }
    }
    let node = root.join("devices/system/node");
    match &input.nodes {
        Nodes::PerPackage => {
            let last = PER_PACKAGE - 1;
            tree.put(&node.join("node0/cpulist"), &format!("0-{last}\n"));
            tree.put(
                &node.join("node1/cpulist"),
                &format!("{PER_PACKAGE}-{}\n", PER_PACKAGE + last),
            );
        }
        Nodes::Absent => {}
        Nodes::Custom(list) => {
            for (k, f) in list.iter().take(4) {
                tree.put_opt(
                    &node.join(format!("node{}/cpulist", k % 4)),
                    f.text(|| format!("{}-{}\n", (k % 4) * 2, (k % 4) * 2 + 1)),
                );
            }
        }
    }
    if input.stray_node_entry {
        tree.put(&node.join("possible"), "0-3\n");
        tree.dir(&node.join("nodeX"));
    }
    if let Some((p, e)) = &input.hybrid {
        let half = PER_PACKAGE;
        tree.put_opt(
            &root.join("devices/cpu_core/cpus"),
            p.text(|| format!("0-{}\n", half - 1)),
        );
        tree.put_opt(
            &root.join("devices/cpu_atom/cpus"),
            e.text(|| format!("{half}-{}\n", 2 * half - 1)),
        );
    }
}

fn check_topology(t: &Topology) {
    assert!(!t.online.is_empty(), "discovery returned no online CPUs");
    let ids: Vec<u32> = t.cpus.keys().copied().collect();
    let online: Vec<u32> = t.online.iter().collect();
    assert_eq!(ids, online, "one CPU entry per online CPU");
    let mut seen = CpuSet::new();
    for set in t.numa_nodes.values() {
        assert!(set.is_subset(&t.online), "NUMA node lists offline CPUs");
        assert!(
            set.is_disjoint(&seen),
            "a CPU is in two NUMA nodes: {:?}",
            t.numa_nodes
        );
        seen = seen.union(set);
    }
    assert_eq!(seen, t.online, "NUMA nodes do not cover every online CPU");
    for (id, c) in &t.cpus {
        assert_eq!(c.id, *id);
        assert!(c.siblings.contains(*id), "cpu{id} not among its siblings");
        assert!(c.siblings.is_subset(&t.online), "offline sibling");
        assert!(
            t.numa_nodes
                .get(&c.numa_node)
                .is_some_and(|s| s.contains(*id)),
            "cpu{id} names node {} that does not list it",
            c.numa_node
        );
        assert_eq!(c.isolated, t.isolated.contains(*id));
        assert!(
            t.hybrid || c.core_type.is_none(),
            "cpu{id} has a core type on a non-hybrid part"
        );
    }
}

fn check_inventory(t: &Topology, allocatable: &CpuSet) {
    let known: CpuSet = allocatable.intersection(&t.online);
    let inv = inventory::build(t, DeviceModel::Individual, allocatable, 1);
    assert_eq!(
        inv.devices.len(),
        known.len(),
        "one device per allocatable CPU"
    );
    for by in [GroupBy::Numa, GroupBy::Socket] {
        let _ = inventory::build(t, DeviceModel::Grouped(by), allocatable, 1);
        let mut seen = CpuSet::new();
        for g in inventory::groups(t, by, allocatable) {
            assert!(!g.cpus.is_empty(), "empty group {}", g.name);
            assert!(
                g.cpus.is_subset(&known),
                "group {} has CPUs not allocatable",
                g.name
            );
            assert!(g.cpus.is_disjoint(&seen), "groups overlap at {}", g.name);
            seen = seen.union(&g.cpus);
        }
        assert_eq!(
            seen, known,
            "{by:?} groups do not cover the allocatable CPUs"
        );
    }
}

fn check_pick(t: &Topology, p: &Pick) {
    let mut free = t.online.clone();
    for c in &p.taken {
        free.remove(u32::from(*c % MAX_CPU));
    }
    let count = usize::from(p.count % (MAX_CPU + 2));
    let opts = PickOptions {
        smt: if p.full_cores {
            SmtPolicy::FullCores
        } else {
            SmtPolicy::Prefer
        },
        core_type: p.core_type.map(|perf| {
            if perf {
                CoreType::Performance
            } else {
                CoreType::Efficiency
            }
        }),
        single_numa_node: p.one_node,
    };
    match pick_with(t, &free, count, opts) {
        Ok(got) => {
            assert_eq!(got.len(), count, "asked {count}, got {got}");
            assert!(got.is_subset(&free), "picked CPUs that are not free: {got}");
            for id in got.iter() {
                let c = t.cpus.get(&id).expect("picked an unknown CPU");
                if let Some(want) = opts.core_type {
                    assert_eq!(c.core_type, Some(want), "cpu{id} has the wrong core type");
                }
                if opts.smt == SmtPolicy::FullCores {
                    assert!(c.siblings.is_subset(&got), "cpu{id} splits a core: {got}");
                }
            }
            if opts.single_numa_node {
                assert!(t.mems_of(&got).len() <= 1, "{got} spans NUMA nodes");
            }
        }
        Err(AllocError::Zero) => assert_eq!(count, 0),
        Err(e) => {
            if opts == PickOptions::default() {
                let available = free.intersection(&t.online).len();
                assert!(
                    count > available,
                    "default pick of {count} failed with {available} free: {e}"
                );
            }
        }
    }
}

fuzz_target!(|input: Input| {
    for s in input.lists.iter().take(4) {
        if let Ok(set) = CpuSet::parse(s) {
            let shown = set.to_string();
            let back = CpuSet::parse(&shown).expect("printed list parses");
            assert_eq!(back, set, "cpulist round trip of {s:?}");
            assert_eq!(back.to_string(), shown);
        }
        if let Ok(n) = parse_count(s) {
            assert!(n > 0, "a count of zero from {s:?}");
        }
    }

    let root = scratch();
    write_tree(root, &input);
    let Ok(topo) = Topology::discover(root) else {
        return;
    };
    check_topology(&topo);

    let reserved = input
        .reserved
        .text(String::new)
        .and_then(|t| CpuSet::parse(&t).ok())
        .unwrap_or_default();
    let allocatable = topo.online.difference(&reserved);
    check_inventory(&topo, &allocatable);
    for p in input.picks.iter().take(4) {
        check_pick(&topo, p);
    }
});
