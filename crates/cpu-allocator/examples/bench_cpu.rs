//! drakit-cpu benchmarks (targets from the issue):
//! - grouped allocation of 64 CPUs on the 1,024-CPU fixture (≤ 1 ms),
//! - inventory build for 1,024 CPUs (≤ 20 ms),
//! - idle RSS of the daemon (≤ 10 MiB).
//!
//! Run: `cargo build --release -p drakit-cpu && cargo run --release -p drakit-cpu --example bench_cpu`
//! (the RSS part needs the release binary next to the example; it says `skipped:` otherwise).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drakit_cpu::fixture::materialize_named;
use drakit_cpu::inventory::{self, DeviceModel, GroupBy};
use drakit_cpu::store::MemoryStore;
use drakit_cpu::{CpuSet, Manager, PoolConfig, Topology, alloc};
use drakit_proto::drakit::{AllocatedDevice, ClaimRef, PrepareRequest};

fn scratch() -> tempfile::TempDir {
    // tmpfs when there is one: the fixture is ~28,000 small files.
    if Path::new("/dev/shm").is_dir()
        && let Ok(d) = tempfile::Builder::new()
            .prefix("drakit-cpu-bench")
            .tempdir_in("/dev/shm")
    {
        return d;
    }
    tempfile::tempdir().expect("temp dir")
}

/// Prints one line and returns the median.
fn stats(name: &str, target: Option<Duration>, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let verdict = match target {
        Some(t) if pct(0.5) <= t => format!("  (target ≤ {:.3} ms: met)", ms(t)),
        Some(t) => format!("  (target ≤ {:.3} ms: MISSED)", ms(t)),
        None => String::new(),
    };
    println!(
        "{name:<58} n={:<4} p50 {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms{verdict}",
        samples.len(),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(pct(1.0)),
    );
    pct(0.5)
}

fn time<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect()
}

fn grouped_request(uid: &str, group: &str, count: usize) -> PrepareRequest {
    let mut consumed = HashMap::new();
    consumed.insert("cpus".to_string(), count.to_string());
    PrepareRequest {
        claim: Some(ClaimRef {
            namespace: "bench".into(),
            name: uid.into(),
            uid: uid.into(),
        }),
        devices: vec![AllocatedDevice {
            device: group.into(),
            pool: "node".into(),
            share_id: format!("s-{uid}"),
            consumed_capacity: consumed,
            ..Default::default()
        }],
        reserved_for_pods: vec![],
        boot_id: String::new(),
    }
}

fn main() {
    let dir = scratch();
    let t = Instant::now();
    materialize_named("synthetic-1024", dir.path()).expect("fixture");
    println!(
        "materialise synthetic-1024 sysfs tree into {}: {:.1} ms",
        dir.path().display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let samples = time(20, || Topology::discover(dir.path()).expect("discover"));
    stats("discover 1,024-CPU topology from sysfs", None, samples);
    let topo = Topology::discover(dir.path()).expect("discover");

    let all = topo.online.clone();
    let samples = time(200, || {
        inventory::build(&topo, DeviceModel::Individual, &all, 1)
    });
    let p50 = stats(
        "inventory build, individual model, 1,024 devices",
        Some(Duration::from_millis(20)),
        samples,
    );
    println!("BENCH cpu_inventory_1024_devices {} us", p50.as_micros());
    let samples = time(200, || {
        inventory::build(&topo, DeviceModel::Grouped(GroupBy::Numa), &all, 1)
    });
    stats(
        "inventory build, grouped model (8 NUMA groups)",
        None,
        samples,
    );

    let node3 = topo.numa_nodes[&3].clone();
    let samples = time(500, || alloc::pick(&topo, &node3, 64).expect("pick"));
    stats(
        "pick 64 CPUs in a free 128-CPU NUMA node",
        Some(Duration::from_millis(1)),
        samples,
    );
    // A fragmented node: every fourth core half taken.
    let frag: CpuSet = node3.iter().filter(|c| !(c % 8 == 0 && *c < 512)).collect();
    let samples = time(500, || alloc::pick(&topo, &frag, 64).expect("pick"));
    let p50 = stats(
        "pick 64 CPUs in a fragmented NUMA node",
        Some(Duration::from_millis(1)),
        samples,
    );
    println!("BENCH cpu_pick64_fragmented {} us", p50.as_micros());
    let samples = time(200, || alloc::pick(&topo, &all, 64).expect("pick"));
    stats(
        "pick 64 CPUs with the whole machine as the group",
        Some(Duration::from_millis(1)),
        samples,
    );

    // Full prepare + unprepare (in-memory store) of a 64-CPU grouped claim.
    let cfg = PoolConfig {
        model: DeviceModel::Grouped(GroupBy::Numa),
        reserved: CpuSet::parse("0,512").expect("list"),
        ..Default::default()
    };
    let mut m =
        Manager::new(topo.clone(), cfg, "boot", Box::new(MemoryStore::new())).expect("manager");
    let mut i = 0u64;
    let samples = time(300, || {
        i += 1;
        let uid = format!("u{i}");
        m.prepare(&grouped_request(&uid, "numa3", 64))
            .expect("prepare");
        m.unprepare(&uid).expect("unprepare");
    });
    let p50 = stats(
        "Manager prepare+unprepare, 64 CPUs, grouped, memory store",
        Some(Duration::from_millis(1)),
        samples,
    );
    println!("BENCH cpu_alloc64_1024 {} us", p50.as_micros());

    // The same through the on-disk checkpoint journal (one append + fdatasync per change).
    let disk = tempfile::tempdir().expect("temp dir");
    let (store, _) = drakit_cpu::store::CheckpointStore::open(&disk.path().join("state"), "boot")
        .expect("store");
    let cfg = PoolConfig {
        model: DeviceModel::Grouped(GroupBy::Numa),
        reserved: CpuSet::parse("0,512").expect("list"),
        ..Default::default()
    };
    let mut m = Manager::new(topo.clone(), cfg, "boot", Box::new(store)).expect("manager");
    let mut prep = Vec::new();
    let mut unprep = Vec::new();
    for i in 0..300 {
        let uid = format!("d{i}");
        let t = Instant::now();
        m.prepare(&grouped_request(&uid, "numa3", 64))
            .expect("prepare");
        prep.push(t.elapsed());
        let t = Instant::now();
        m.unprepare(&uid).expect("unprepare");
        unprep.push(t.elapsed());
    }
    let p50 = stats(
        "Manager prepare, 64 CPUs, on-disk checkpoint (durable)",
        None,
        prep,
    );
    println!("BENCH cpu_prepare64_durable {} us", p50.as_micros());
    stats(
        "Manager unprepare, on-disk checkpoint (durable)",
        None,
        unprep,
    );

    scaling();
    idle_rss();
}

/// CPU allocation as the machine grows: 64, 256 and 1,024 CPUs (same shape: SMT pairs, an L3 per
/// 8 cores, one NUMA node per die). For each size: topology discovery, the individual-model
/// inventory, and a Manager prepare+unprepare of a 16-CPU claim from NUMA node 0.
fn scaling() {
    println!("\nscaling with machine size (medians; BENCH lines for `cargo xtask bench`):");
    for (cpus, packages, dies, cores) in [(64, 1, 1, 32), (256, 2, 2, 32), (1024, 2, 4, 64)] {
        let dir = scratch();
        let spec_path = dir.path().join("machine.json");
        let spec = serde_json::json!({
            "name": format!("scale-{cpus}"),
            "packages": packages,
            "diesPerPackage": dies,
            "numaNodesPerDie": 1,
            "smtNumbering": "split",
            "coreGroups": [{ "cores": cores, "threads": 2, "coresPerCluster": 4, "coresPerL3": 8 }],
        });
        std::fs::write(&spec_path, spec.to_string()).expect("write machine description");
        let root = dir.path().join("sys");
        drakit_cpu::fixture::MachineSpec::load(&spec_path)
            .expect("machine description")
            .materialize(&root)
            .expect("materialise");
        let topo = Topology::discover(&root).expect("discover");
        assert_eq!(topo.online.len(), cpus, "fixture size");
        let med = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let discover = med(time(20, || Topology::discover(&root).expect("discover")));
        let all = topo.online.clone();
        let inv = med(time(100, || {
            inventory::build(&topo, DeviceModel::Individual, &all, 1)
        }));
        let cfg = PoolConfig {
            model: DeviceModel::Grouped(GroupBy::Numa),
            reserved: CpuSet::parse("0").expect("list"),
            ..Default::default()
        };
        let mut m =
            Manager::new(topo.clone(), cfg, "boot", Box::new(MemoryStore::new())).expect("manager");
        let mut i = 0u64;
        let alloc = med(time(300, || {
            i += 1;
            let uid = format!("s{i}");
            m.prepare(&grouped_request(&uid, "numa0", 16))
                .expect("prepare");
            m.unprepare(&uid).expect("unprepare");
        }));
        println!(
            "  {cpus:>5} CPUs: discover {:.3} ms, inventory {:.3} ms, prepare+unprepare 16 CPUs {:.1} µs",
            discover.as_secs_f64() * 1e3,
            inv.as_secs_f64() * 1e3,
            alloc.as_secs_f64() * 1e6
        );
        println!("BENCH cpu_discover_{cpus} {} us", discover.as_micros());
        println!("BENCH cpu_inventory_{cpus} {} us", inv.as_micros());
        println!("BENCH cpu_alloc16_{cpus} {} us", alloc.as_micros());
    }
}

fn idle_rss() {
    let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("drakit-cpu")))
        .filter(|p| p.exists())
    else {
        println!("idle RSS: skipped: build the daemon first (cargo build --release -p drakit-cpu)");
        return;
    };
    for (label, fixture) in [
        ("real /sys", None),
        (
            "synthetic-1024 fixture",
            Some(drakit_cpu::fixture::fixtures_dir().join("synthetic-1024.json")),
        ),
    ] {
        let dir = scratch();
        let socket = dir.path().join("cpu.sock");
        let mut cmd = std::process::Command::new(&bin);
        cmd.env_clear()
            .env("DRAKIT_CPU_SOCKET", &socket)
            .env("DRAKIT_CPU_STATE_DIR", dir.path().join("state"))
            .env("DRAKIT_LOG", "warn");
        if let Some(f) = &fixture {
            cmd.env("DRAKIT_CPU_FIXTURE", f);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                println!("idle RSS ({label}): skipped: spawn {}: {e}", bin.display());
                continue;
            }
        };
        let start = Instant::now();
        while !socket.exists() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let ready = start.elapsed();
        std::thread::sleep(Duration::from_millis(500)); // settle: idle means after start-up
        let rss = rss_kib(child.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        match rss {
            Some((rss, anon, peak)) => {
                if fixture.is_some() {
                    println!("BENCH cpu_idle_rss {rss} KiB");
                    println!("BENCH cpu_peak_rss {peak} KiB");
                }
                println!("peak RSS (VmHWM) of drakit-cpu ({label}) over start-up: {peak} KiB");
                println!(
                    "idle RSS of drakit-cpu ({label}): {:.1} MiB (anonymous {:.1} MiB), socket up after {:.1} ms  (target ≤ 10 MiB: {})",
                    rss as f64 / 1024.0,
                    anon as f64 / 1024.0,
                    ready.as_secs_f64() * 1e3,
                    if rss <= 10 * 1024 { "met" } else { "MISSED" }
                )
            }
            None => println!("idle RSS ({label}): skipped: could not read /proc status"),
        }
    }
}

/// (VmRSS, RssAnon, VmHWM) in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((
        field("VmRSS:")?,
        field("RssAnon:").unwrap_or(0),
        field("VmHWM:").unwrap_or(0),
    ))
}
