//! Benchmark: CreateContainer round trips and Synchronize through the mux, stub vs simulator.
//!
//! `cargo run --release -p nri --features simulator --example bench [--multi-thread] [containers] [sync_size]`
//!
//! Targets: CreateContainer p50 <= 100 us, p99 <= 1 ms over 10,000 containers;
//! Synchronize of 1,000 containers <= 50 ms.

use std::time::{Duration, Instant};

use drakit_proto::nri::{Container, CreateContainerResponse, Mount, PodSandbox};
use nri::simulator::{self, Runtime, SimConfig, default_spec};
use nri::{Adjustment, Event, EventMask, HookResult, Plugin, Stub, StubConfig};
use tokio::net::UnixStream;

struct Bench;

impl Plugin for Bench {
    fn events(&self) -> EventMask {
        EventMask::of(Event::CreateContainer)
    }
    async fn create_container(
        &self,
        _: &PodSandbox,
        c: &Container,
    ) -> HookResult<CreateContainerResponse> {
        let mut a = Adjustment::new();
        a.add_env("BENCH", &c.id)
            .set_cpuset_cpus("2-3")
            .set_memory_limit(1 << 30);
        Ok(a.into())
    }
}

/// A container about the size of the recorded CRI ones (~2.5 KB encoded).
fn realistic(id: &str, pod: &str) -> Container {
    let mut c = simulator::container(id, pod, &format!("name-{id}"));
    for (k, v) in [
        ("io.kubernetes.cri.container-name", id),
        ("io.kubernetes.cri.container-type", "container"),
        (
            "io.kubernetes.cri.image-name",
            "registry.example.com/library/app:1.2.3",
        ),
        (
            "io.kubernetes.cri.sandbox-id",
            "8d399f0d15c720d9e8f0b8484b2b44d2b5192b1f630955959deaa960d3d17b9e",
        ),
        ("io.kubernetes.cri.sandbox-name", "bench-pod"),
        ("io.kubernetes.cri.sandbox-namespace", "default"),
        (
            "io.kubernetes.cri.sandbox-uid",
            "2f1a5b7e-2f0b-4a8e-9d0c-0c6b9a3c1e11",
        ),
    ] {
        c.annotations.insert(k.into(), v.into());
    }
    c.labels
        .insert("io.kubernetes.pod.name".into(), "bench-pod".into());
    c.labels
        .insert("io.kubernetes.pod.namespace".into(), "default".into());
    c.args = vec!["/bin/sh".into(), "-c".into(), "sleep 3600".into()];
    c.env = (0..12)
        .map(|i| format!("ENV_VARIABLE_{i}=some-value-{i}-xxxxxxxxxxxxxxxx"))
        .collect();
    c.mounts = (0..8)
        .map(|i| Mount {
            destination: format!("/var/run/secrets/mount-{i}"),
            r#type: "bind".into(),
            source: format!(
                "/var/lib/kubelet/pods/2f1a5b7e/volumes/kubernetes.io~projected/vol-{i}"
            ),
            options: vec!["rbind".into(), "rprivate".into(), "ro".into()],
        })
        .collect();
    c
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Start the plugin on its own OS thread with its own single-threaded tokio runtime, like a
/// separate plugin process, and attach the simulator to it.
async fn connect(rt: &Runtime) -> nri::Result<(std::thread::JoinHandle<()>, Duration)> {
    let (a, b) =
        std::os::unix::net::UnixStream::pair().map_err(|e| nri::Error::Config(e.to_string()))?;
    b.set_nonblocking(true)
        .map_err(|e| nri::Error::Config(e.to_string()))?;
    a.set_nonblocking(true)
        .map_err(|e| nri::Error::Config(e.to_string()))?;
    let mut cfg = StubConfig::new("bench", "10")?;
    cfg.reconnect = None;
    let thread = std::thread::spawn(move || {
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
            let _ = Stub::new(Bench, cfg).serve(b).await;
        });
    });
    let a = UnixStream::from_std(a).map_err(|e| nri::Error::Config(e.to_string()))?;
    let t = Instant::now();
    rt.attach(a).await?;
    Ok((thread, t.elapsed()))
}

fn main() -> nri::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let multi = args.peek().is_some_and(|a| a == "--multi-thread");
    if multi {
        args.next();
    }
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let sync_n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .map_err(|e| nri::Error::Config(e.to_string()))?;
    println!(
        "runtime side: {}; plugin side: its own thread with a current-thread tokio runtime",
        if multi {
            "multi-thread tokio runtime (2 workers)"
        } else {
            "current-thread tokio runtime"
        }
    );
    rt.block_on(run(n, sync_n))
}

/// The floor set by the OS: a 64-byte ping-pong between this task and a tokio echo task on
/// another thread over a unix socketpair (two cross-thread wake-ups per round trip, as in NRI).
async fn socket_floor(n: usize) -> nri::Result<(Duration, Duration)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let err = |e: std::io::Error| nri::Error::Config(e.to_string());
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(err)?;
    a.set_nonblocking(true).map_err(err)?;
    b.set_nonblocking(true).map_err(err)?;
    let echo = std::thread::spawn(move || {
        let Ok(prt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        prt.block_on(async move {
            let Ok(mut b) = UnixStream::from_std(b) else {
                return;
            };
            let mut buf = [0u8; 64];
            while b.read_exact(&mut buf).await.is_ok() {
                if b.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
    });
    let mut a = UnixStream::from_std(a).map_err(err)?;
    let mut buf = [7u8; 64];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        a.write_all(&buf).await.map_err(err)?;
        a.read_exact(&mut buf).await.map_err(err)?;
        lat.push(t.elapsed());
    }
    drop(a);
    let _ = tokio::task::spawn_blocking(move || echo.join()).await;
    lat.sort();
    Ok((pct(&lat, 0.5), pct(&lat, 0.99)))
}

async fn run(n: usize, sync_n: usize) -> nri::Result<()> {
    let (f50, f99) = socket_floor(n).await?;
    println!(
        "OS floor: 64-byte ping-pong across threads over a socketpair, {n} round trips: p50 {f50:?}  p99 {f99:?}"
    );

    // CreateContainer round trips.
    let rt = Runtime::new(SimConfig::default());
    rt.add_pod(simulator::pod("bench-pod", "bench-pod", "default"));
    let (_task, _) = connect(&rt).await?;
    let spec = default_spec(&["/bin/sh", "-c", "sleep 3600"]);
    for i in 0..1000 {
        let id = format!("warm-{i}");
        rt.create_container(realistic(&id, "bench-pod"), spec.clone())
            .await?;
        rt.remove_container(&id).await?;
    }
    // Simulator bookkeeping alone (no plugin subscribed), to separate it from the wire.
    let bare = Runtime::new(SimConfig::default());
    bare.add_pod(simulator::pod("bench-pod", "bench-pod", "default"));
    let mut base = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("b-{i}");
        let ctr = realistic(&id, "bench-pod");
        let t = Instant::now();
        bare.create_container(ctr, spec.clone()).await?;
        base.push(t.elapsed());
        bare.remove_container(&id).await?;
    }
    base.sort();

    let mut lat = Vec::with_capacity(n);
    let total = Instant::now();
    for i in 0..n {
        let id = format!("c-{i}");
        let ctr = realistic(&id, "bench-pod");
        let t = Instant::now();
        let created = rt.create_container(ctr, spec.clone()).await?;
        lat.push(t.elapsed());
        if created.adjustments.len() != 1 {
            return Err(nri::Error::Protocol(format!(
                "{id}: plugin adjustment missing"
            )));
        }
        rt.remove_container(&id).await?;
    }
    let wall = total.elapsed();
    lat.sort();
    let (p50, p99, max) = (pct(&lat, 0.50), pct(&lat, 0.99), lat[lat.len() - 1]);
    println!(
        "CreateContainer round trip (simulator -> mux/ttrpc -> stub -> adjustment applied to OCI JSON), {n} containers:"
    );
    println!(
        "  p50 {p50:?}  p99 {p99:?}  max {max:?}  (wall {wall:?} incl. RemoveContainer bookkeeping)"
    );
    println!(
        "  of which simulator bookkeeping without any plugin: p50 {:?}  p99 {:?}",
        pct(&base, 0.5),
        pct(&base, 0.99)
    );
    println!(
        "  targets p50 <= 100us: {}  p99 <= 1ms: {}",
        if p50 <= Duration::from_micros(100) {
            "met"
        } else {
            "MISSED"
        },
        if p99 <= Duration::from_millis(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    rt.shutdown();

    // Synchronize of sync_n containers (full handshake: RegisterPlugin, Configure, Synchronize).
    let rt = Runtime::new(SimConfig::default());
    rt.add_pod(simulator::pod("bench-pod", "bench-pod", "default"));
    for i in 0..sync_n {
        rt.add_container(realistic(&format!("s-{i}"), "bench-pod"), spec.clone());
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let (task, d) = connect(&rt).await?;
        times.push(d);
        rt.disconnect_all();
        let _ = tokio::task::spawn_blocking(move || task.join()).await;
    }
    times.sort();
    println!(
        "Registration + Synchronize of {sync_n} containers (~2.5 KB each, one message), 20 runs: median {:?}  max {:?}  target <= 50ms: {}",
        pct(&times, 0.5),
        times[times.len() - 1],
        if pct(&times, 0.5) <= Duration::from_millis(50) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
