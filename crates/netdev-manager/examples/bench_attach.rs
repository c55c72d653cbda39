//! Benchmark: prepare + attach + detach + unprepare of a macvlan claim in real namespaces,
//! N claims one after the other (default 500), with p50/p99 per phase; then the idle RSS of the
//! drakit-netdev daemon (release binary next to this example) serving a fixture inventory.
//!
//!     cargo build --release -p drakit-netdev --bins --examples
//!     target/release/examples/bench_attach [N]
//!
//! Needs root (network namespaces). Creates `dkbench-<pid>-{h,p}` and deletes them on exit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use drakit_netdev::inventory::{FoundDevice, HostDevice};
use drakit_netdev::manager::{Manager, ManagerOptions};
use drakit_netdev::netlink::real::RtNetlink;
use drakit_netdev::store::CheckpointStore;
use drakit_proto::drakit as pb;

struct Ns(String);

impl Ns {
    fn new(name: String) -> Result<Self, String> {
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into());
        }
        Ok(Ns(name))
    }
    fn ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let pid = std::process::id();
    let h = Ns::new(format!("dkbench-{pid}-h"))
        .map_err(|e| format!("skipped: cannot create netns: {e}"))?;
    let p = Ns::new(format!("dkbench-{pid}-p"))?;
    if !(h.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"])
        && h.ip(&["link", "set", "up0", "up"]))
    {
        return Err("cannot create the parent veth".into());
    }
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let host = RtNetlink::open(&h.path())
        .await
        .map_err(|e| e.to_string())?;
    let inv = vec![FoundDevice {
        name: "netdev-virtual".into(),
        host: HostDevice::Virtual,
        attributes: BTreeMap::new(),
        capacity: BTreeMap::new(),
        shared: true,
    }];
    let mut cp =
        drakit_types::checkpoint::Options::new(state.path().join("netdev"), "netdev.checkpoint");
    cp.boot_id = drakit_types::checkpoint::BootIdSource::Fixed("bench".into());
    let store = CheckpointStore::open(cp).map_err(|e| e.to_string())?;
    let m =
        Manager::new(host, store, ManagerOptions::new("bench"), inv).map_err(|e| e.to_string())?;
    let netns = p.path().display().to_string();
    let (mut tp, mut ta, mut td, mut tu) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let uid = format!("bench-{i}");
        let pod = format!("pod-{i}");
        let cfg = format!(
            r#"{{"netdev":{{"kind":"macvlan","parent":"up0","interfaceName":"net1","addresses":["10.{}.{}.2/24"]}}}}"#,
            (i / 256) % 256,
            i % 256
        );
        let req = pb::PrepareRequest {
            claim: Some(pb::ClaimRef {
                namespace: "b".into(),
                name: uid.clone(),
                uid: uid.clone(),
            }),
            devices: vec![pb::AllocatedDevice {
                device: "netdev-virtual".into(),
                config_json: cfg,
                ..Default::default()
            }],
            reserved_for_pods: vec![pod.clone()],
            boot_id: String::new(),
        };
        let t = Instant::now();
        m.prepare(&req).await.map_err(|e| e.to_string())?;
        tp.push(t.elapsed());
        let t = Instant::now();
        let a = m
            .attach_pod(&pb::AttachPodRequest {
                pod_uid: pod.clone(),
                netns_path: netns.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        ta.push(t.elapsed());
        if a.interfaces.len() != 1 {
            return Err(format!("claim {uid}: expected one interface"));
        }
        let t = Instant::now();
        let d = m
            .detach_pod(&pb::DetachPodRequest {
                pod_uid: pod,
                ..Default::default()
            })
            .await;
        td.push(t.elapsed());
        if !d.errors.is_empty() {
            return Err(format!("{:?}", d.errors));
        }
        let t = Instant::now();
        m.unprepare(&uid).await.map_err(|e| e.to_string())?;
        tu.push(t.elapsed());
    }
    println!(
        "macvlan claims: {n} (checkpoint journal in {}, fsync on)",
        state.path().display()
    );
    for (name, v) in [
        ("prepare", &mut tp),
        ("attach", &mut ta),
        ("detach", &mut td),
        ("unprepare", &mut tu),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!("{name:>10}: p50 {p50:.3} ms  p99 {p99:.3} ms");
        println!("BENCH netdev_{name}_p50 {:.0} us", p50 * 1e3);
        println!("BENCH netdev_{name}_p99 {:.0} us", p99 * 1e3);
    }
    drop(m);

    // One piece of an attach on its own: a netlink handle inside the pod's namespace (a fresh OS
    // thread that enters it and opens the socket), as every attach does once.
    let mut topen = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let h = RtNetlink::open(&p.path())
            .await
            .map_err(|e| e.to_string())?;
        topen.push(t.elapsed());
        drop(h);
    }
    let (p50, p99) = (pct(&mut topen, 0.5), pct(&mut topen, 0.99));
    println!(
        "piece: netlink handle in the pod netns (thread + setns + socket): p50 {p50:.3} ms  p99 {p99:.3} ms"
    );
    println!("BENCH netdev_piece_enter_p50 {:.0} us", p50 * 1e3);

    // Idle RSS of the daemon.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("drakit-netdev"));
    match bin.filter(|b| b.is_file()) {
        None => println!(
            "idle RSS: skipped: drakit-netdev binary not built next to this example (cargo build --release -p drakit-netdev --bins)"
        ),
        Some(bin) => {
            let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sriov-nic");
            let sock = state.path().join("run/netdev.sock");
            let mut child = Command::new("ip")
                .args(["netns", "exec", &h.0])
                .arg(&bin)
                .arg("--socket")
                .arg(&sock)
                .arg("--state-dir")
                .arg(state.path().join("daemon"))
                .arg("--sys-root")
                .arg(fx.join("sys"))
                .arg("--proc-root")
                .arg(fx.join("proc"))
                .args(["--pool", "bench", "--log-format", "json"])
                .env("RUST_LOG", "warn")
                .spawn()
                .map_err(|e| e.to_string())?;
            for _ in 0..500 {
                if sock.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss = rss_kib(child.id());
            let peak = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                });
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
            match rss {
                Some(k) => {
                    println!("idle RSS: {k} KiB ({:.1} MiB)", k as f64 / 1024.0);
                    println!("BENCH netdev_idle_rss {k} KiB");
                    if let Some(p) = peak {
                        println!("peak RSS (VmHWM) over start-up and inventory: {p} KiB");
                        println!("BENCH netdev_peak_rss {p} KiB");
                    }
                }
                None => println!("idle RSS: unavailable"),
            }
        }
    }
    Ok(())
}
