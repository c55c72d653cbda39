//! Benchmark of the drakit-nri sidecar against the NRI runtime simulator.
//!
//! ```text
//! cargo build --release -p drakit-nri --bins
//! cargo run --release -p drakit-nri --example bench_nri [containers] [sync_size] [fanout]
//! ```
//!
//! - CreateContainer round trip (simulator -> mux/ttrpc -> sidecar: runtime-spec fragment decoded,
//!   policy-checked, merged and translated; cpuset chosen; transport env removed -> adjustment
//!   applied to the OCI JSON), p50/p99 over `containers` (default 10,000). Targets p50 <= 100 us,
//!   p99 <= 1 ms.
//! - Registration + Synchronize of `sync_size` containers (default 1,000), median of 5. Target
//!   <= 50 ms.
//! - Pool update fan-out: a pool change reaching `fanout` shared containers (default 500) through
//!   UpdateContainers, until the runtime has applied it; median of 5. Target <= 50 ms.
//! - Idle RSS of the release `drakit-nri` binary connected to a simulator (target <= 10 MiB).
//!
//! The sidecar runs on its own OS thread with a current-thread tokio runtime, like the real
//! binary (which is single-threaded); the simulator on the main thread. One line per figure is
//! also printed as `BENCH <name> <value> <unit>` for `cargo xtask bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drakit_nri::cpu::{CpuConcern, Pool};
use drakit_nri::{Concern, RuntimeSpecConcern, Sidecar};
use drakit_proto::nri::Container;
use drakit_types::policy::Policy;
use nri::simulator::{self, Runtime, SimConfig, default_spec};
use nri::{Stub, StubConfig, StubHandle};
use tokio::net::UnixStream;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const FRAGMENT: &str = r#"{"linux":{"resources":{"unified":{"io.max":"8:0 rbps=1048576 wbps=1048576","memory.high":"536870912","pids.max":"128"}}}}"#;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pool(generation: u64, shared: &str) -> Pool {
    Pool {
        generation,
        shared_cpus: shared.into(),
        shared_mems: "0".into(),
        mems_by_claim: [("bench_claim".to_string(), "0".to_string())].into(),
    }
}

/// A container like a CRI one (~2.5 KB), with the CDI-injected drakit env.
fn container(id: &str, pod: &str, claims: bool) -> Container {
    let mut c = simulator::container(id, pod, &format!("name-{id}"));
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        (
            "io.kubernetes.cri.image-name",
            "registry.example.com/library/app:1.2.3",
        ),
        ("io.kubernetes.cri.sandbox-name", "bench-pod"),
        ("io.kubernetes.cri.sandbox-namespace", "default"),
    ] {
        c.annotations.insert(k.into(), v.into());
    }
    c.args = vec!["/bin/sh".into(), "-c".into(), "sleep 3600".into()];
    c.env = (0..12)
        .map(|i| format!("ENV_VARIABLE_{i}=some-value-{i}-xxxxxxxxxxxxxxxx"))
        .collect();
    if claims {
        c.env
            .push(format!("DRAKIT_RUNTIME_SPEC_bench_claim={FRAGMENT}"));
        c.env.push("DRAKIT_CPUS_bench_claim=4-5".into());
    }
    c
}

/// Starts the sidecar (runtime-spec + cpu) on its own thread, attached to `rt`.
async fn connect(rt: &Runtime, cpu: Arc<CpuConcern>) -> Res<(StubHandle, Duration)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let mut cfg = StubConfig::new("drakit", "50")?;
    cfg.reconnect = None;
    let concerns: Vec<Arc<dyn Concern>> = vec![
        Arc::new(RuntimeSpecConcern::new(Policy::default())),
        cpu.clone(),
    ];
    let stub = Stub::new(Sidecar::new(concerns), cfg);
    let handle = stub.handle();
    cpu.set_handle(handle.clone());
    std::thread::spawn(move || {
        let Ok(prt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        prt.block_on(async move {
            let Ok(b) = UnixStream::from_std(b) else {
                return;
            };
            let _ = stub.serve(b).await;
        });
    });
    let a = UnixStream::from_std(a)?;
    let t = Instant::now();
    rt.attach(a).await?;
    Ok((handle, t.elapsed()))
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let sync_n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let fanout: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(n, sync_n, fanout))?;
    idle_rss()
}

async fn run(n: usize, sync_n: usize, fanout: usize) -> Res<()> {
    // CreateContainer.
    let rt = Runtime::new(SimConfig::default());
    rt.add_pod(simulator::pod("bench-pod", "bench-pod", "default"));
    let cpu = CpuConcern::new("/nonexistent/cpu.sock".into());
    cpu.set_pool(pool(1, "0-3,6-7"));
    let (handle, _) = connect(&rt, cpu.clone()).await?;
    let spec = default_spec(&["/bin/sh", "-c", "sleep 3600"]);
    let spec_for = |c: &Container| {
        let mut s = spec.clone();
        s["process"]["env"] = serde_json::json!(c.env);
        s
    };
    for i in 0..1000 {
        let id = format!("warm-{i}");
        let c = container(&id, "bench-pod", true);
        rt.create_container(c.clone(), spec_for(&c)).await?;
        rt.remove_container(&id).await?;
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("c-{i}");
        let c = container(&id, "bench-pod", true);
        let s = spec_for(&c);
        let t = Instant::now();
        let created = rt.create_container(c, s).await?;
        lat.push(t.elapsed());
        if created.spec["linux"]["resources"]["unified"]["pids.max"] != "128" {
            return Err(format!("{id}: runtime-spec edit missing").into());
        }
        rt.remove_container(&id).await?;
    }
    lat.sort();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    println!(
        "CreateContainer with a runtime-spec claim and a CPU claim, {n} containers: p50 {p50:?}  p99 {p99:?}  max {:?}",
        lat[lat.len() - 1]
    );
    println!("BENCH nri_create_p50 {} us", p50.as_micros());
    println!("BENCH nri_create_p99 {} us", p99.as_micros());

    // Pool fan-out to `fanout` shared containers.
    for i in 0..fanout {
        let c = container(&format!("s-{i}"), "bench-pod", false);
        rt.create_container(c.clone(), spec_for(&c)).await?;
    }
    let mut fan = Vec::new();
    for round in 0..5u64 {
        let before = rt.update_requests().len();
        let shared = if round % 2 == 0 { "0-3" } else { "0-3,6-7" };
        let t = Instant::now();
        let sent = cpu.apply_pool(pool(2 + round, shared)).await;
        rt.wait_update_requests(before + 1, Duration::from_secs(10))
            .await?;
        fan.push(t.elapsed());
        if sent < fanout {
            return Err(format!("only {sent} of {fanout} containers updated").into());
        }
    }
    let f = median(fan);
    println!(
        "Pool update fan-out to {fanout} shared containers (UpdateContainers applied): median {f:?}"
    );
    println!("BENCH nri_pool_fanout_{fanout} {} us", f.as_micros());
    handle.shutdown();
    rt.shutdown();

    // Registration + Synchronize.
    let mut syncs = Vec::new();
    for _ in 0..5 {
        let rt = Runtime::new(SimConfig::default());
        rt.add_pod(simulator::pod("bench-pod", "bench-pod", "default"));
        for i in 0..sync_n {
            let c = container(&format!("x-{i}"), "bench-pod", i % 2 == 0);
            let s = spec_for(&c);
            rt.add_container(c, s);
        }
        let cpu = CpuConcern::new("/nonexistent/cpu.sock".into());
        cpu.set_pool(pool(1, "0-3,6-7"));
        let (h, took) = connect(&rt, cpu).await?;
        syncs.push(took);
        h.shutdown();
        rt.shutdown();
    }
    let s = median(syncs);
    println!(
        "Registration + Synchronize of {sync_n} containers (all moved to their cpusets): median {s:?}"
    );
    println!("BENCH nri_sync_{sync_n} {} us", s.as_micros());
    Ok(())
}

/// RSS of the release binary, connected to a simulator and idle for 2 s.
fn idle_rss() -> Res<()> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("drakit-nri"))
        .ok_or("no target dir")?;
    if !bin.exists() {
        println!(
            "idle RSS: skipped: {} not built (cargo build --release -p drakit-nri --bins)",
            bin.display()
        );
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("drakit-nri-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("nri.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let sim = Runtime::new(SimConfig::default());
        sim.listen(&sock).await?;
        let mut child = std::process::Command::new(&bin)
            .arg("--nri-socket")
            .arg(&sock)
            .arg("--cpu-socket")
            .arg(dir.join("cpu.sock"))
            .arg("--netdev-socket")
            .arg(dir.join("netdev.sock"))
            .env("DRAKIT_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let synced = sim.wait_synced(1, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        let _ = child.kill();
        let _ = child.wait();
        sim.shutdown();
        synced?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or("no VmRSS")?;
        let peak: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok::<(u64, u64), Box<dyn std::error::Error>>((kb, peak))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (kb, peak) = result?;
    println!(
        "Idle RSS of drakit-nri (connected, synchronized, 2 s idle): {:.1} MiB; binary {:.1} MB",
        kb as f64 / 1024.0,
        std::fs::metadata(&bin)?.len() as f64 / 1e6
    );
    println!("BENCH nri_idle_rss {kb} KiB");
    println!("Peak RSS (VmHWM) of drakit-nri over start-up and sync: {peak} KiB");
    println!("BENCH nri_peak_rss {peak} KiB");
    Ok(())
}
