//! Measures the durable-state options of a prepare: the checkpoint journal (append + fdatasync)
//! against replacing a whole snapshot file per change (temp + write + fsync + rename + fsync of
//! the directory), and the CDI spec write (first write, and the cheap re-ensure of an unchanged
//! spec) on disk and on tmpfs.
//!
//! ```text
//! cargo run --release -p drakit-types --example bench_state -- [N] [disk dir] [tmpfs dir]
//! ```
//! Defaults: N = 1000 claims, disk = /var/tmp, tmpfs = /dev/shm. Prints p50/p90/p99 per operation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drakit_types::cdi::{ClaimDevice, ClaimSpec, ContainerEdits, NetDevice, SpecDir};
use drakit_types::checkpoint::{BootIdSource, Checkpoint, Durability, Options};
use drakit_types::fsutil;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    namespace: String,
    name: String,
    devices: Vec<String>,
    pods: Vec<String>,
    host_ifname: String,
    pod_ifname: String,
}

fn record(i: usize) -> Record {
    Record {
        namespace: "default".into(),
        name: format!("claim-{i}"),
        devices: vec![format!("eth{}", i % 8)],
        pods: vec![format!("7c0d7a5e-0000-4000-8000-{i:012}")],
        host_ifname: format!("dk{i:08x}"),
        pod_ifname: "net1".into(),
    }
}

fn uid(i: usize) -> String {
    format!("0b8e3c1a-1111-4222-8333-{i:012}")
}

fn report(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let q = |p: f64| {
        let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[idx].as_secs_f64() * 1e3
    };
    println!(
        "{label:<58} n={:<5} p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms",
        v.len(),
        q(0.5),
        q(0.9),
        q(0.99)
    );
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(format!("drakit-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create bench dir");
    d
}

fn bench_journal(base: &Path, n: usize, durability: Durability) -> Vec<Duration> {
    let dir = fresh_dir(base, "journal");
    let opts = Options {
        dir: dir.clone(),
        name: "bench.checkpoint".into(),
        boot_id: BootIdSource::Fixed("bench".into()),
        durability,
        compact_after: 1000,
    };
    let (mut cp, _) = Checkpoint::<Record>::open(opts.clone()).expect("open");
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let s = Instant::now();
        cp.put(&uid(i), record(i)).expect("put");
        t.push(s.elapsed());
    }
    drop(cp);
    let s = Instant::now();
    let (cp, _) = Checkpoint::<Record>::open(opts).expect("reopen");
    println!(
        "  reopen + replay of {} keys: {:.3} ms",
        cp.len(),
        s.elapsed().as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
    t
}

fn bench_snapshot(base: &Path, n: usize, durability: Durability) -> Vec<Duration> {
    let dir = fresh_dir(base, "snapshot");
    let path = dir.join("bench.snapshot");
    let mut map = BTreeMap::new();
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let s = Instant::now();
        map.insert(uid(i), record(i));
        let bytes = serde_json::to_vec(&map).expect("encode");
        let crc = crc32fast::hash(&bytes);
        fsutil::atomic_write_with(&path, 0o600, durability, |w| {
            w.write_all(&crc.to_le_bytes())?;
            w.write_all(&bytes)
        })
        .expect("write");
        t.push(s.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);
    t
}

fn claim_spec(i: usize) -> ClaimSpec {
    ClaimSpec::build(
        "net.drakit.dev",
        "claim",
        &uid(i),
        vec![ClaimDevice {
            device: format!("eth{}", i % 8),
            edits: ContainerEdits {
                env: vec![format!("DRAKIT_NETDEV_{i}=net1")],
                net_devices: vec![NetDevice {
                    host_interface_name: format!("dk{i:08x}"),
                    name: "net1".into(),
                }],
                ..Default::default()
            },
            ..Default::default()
        }],
        ContainerEdits::default(),
    )
    .expect("build")
}

fn bench_cdi(base: &Path, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let dir = fresh_dir(base, "cdi");
    let sd = SpecDir::new(&dir, "net.drakit.dev", "claim").expect("dir");
    let mut first = Vec::with_capacity(n);
    let mut again = Vec::with_capacity(n);
    for i in 0..n {
        let s = Instant::now();
        sd.write(&claim_spec(i)).expect("write");
        first.push(s.elapsed());
    }
    for i in 0..n {
        let s = Instant::now();
        sd.write(&claim_spec(i)).expect("write");
        again.push(s.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);
    (first, again)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let disk = PathBuf::from(args.get(2).map(String::as_str).unwrap_or("/var/tmp"));
    let tmpfs = PathBuf::from(args.get(3).map(String::as_str).unwrap_or("/dev/shm"));
    println!(
        "drakit-types state bench: {n} claims, disk {}, tmpfs {}",
        disk.display(),
        tmpfs.display()
    );

    report(
        "checkpoint journal put (append + fdatasync), disk",
        bench_journal(&disk, n, Durability::Fsync),
    );
    report(
        "checkpoint journal put, no fsync (CPU + write only)",
        bench_journal(&disk, n, Durability::None),
    );
    report(
        "snapshot replace per change (whole map, fsync), disk",
        bench_snapshot(&disk, n, Durability::Fsync),
    );
    report(
        "snapshot replace per change, no fsync",
        bench_snapshot(&disk, n, Durability::None),
    );
    let (first, again) = bench_cdi(&disk, n);
    report("CDI spec build + first write, disk", first);
    report("CDI spec build + re-ensure (unchanged), disk", again);
    let (first, again) = bench_cdi(&tmpfs, n);
    report("CDI spec build + first write, tmpfs", first);
    report("CDI spec build + re-ensure (unchanged), tmpfs", again);
}
