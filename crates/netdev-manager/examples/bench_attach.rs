//! Benchmark: prepare + attach + detach + unprepare of a macvlan claim in real namespaces,
//! N claims one after the other (default 500), with p50/p99 per phase; then the idle RSS of the
//! drakit-netdev daemon (release binary next to this example) serving a fixture inventory.
//!
//!     cargo build --release -p drakit-netdev --bins --examples
//!     target/release/examples/bench_attach [N] [--phases M]
//!
//! A second pass of M claims (default 200) times every netlink call and journal write of each
//! AttachPod through wrappers around the facade and the store, and prints the p50 per operation
//! (`BENCH netdev_phase_<op>_p50`) and what the calls leave uncovered (`..._rest_p50`).
//!
//! Needs root (network namespaces). Creates `dkbench-<pid>-{h,p}` and deletes them on exit.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drakit_netdev::addr::IpNet;
use drakit_netdev::inventory::{FoundDevice, HostDevice};
use drakit_netdev::manager::{Manager, ManagerOptions};
use drakit_netdev::netlink::real::RtNetlink;
use drakit_netdev::netlink::{
    LinkChange, LinkId, LinkInfo, Netlink, NetlinkError, NewLink, RouteSpec, VfSettings,
};
use drakit_netdev::store::{CheckpointStore, Store, StoreError};
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

/// Phase recorder for the breakdown pass: every netlink call and store write of the attach, by
/// operation, with its wall time. Off the measured path: the headline pass runs the manager on
/// the plain `RtNetlink` and `CheckpointStore`; only the breakdown pass wraps them.
#[derive(Clone, Default)]
struct Rec(Arc<Mutex<Vec<(&'static str, Duration)>>>);

impl Rec {
    async fn time<T>(&self, op: &'static str, f: impl Future<Output = T>) -> T {
        let t = Instant::now();
        let r = f.await;
        self.push(op, t.elapsed());
        r
    }
    fn push(&self, op: &'static str, d: Duration) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((op, d));
    }
    fn take(&self) -> Vec<(&'static str, Duration)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// `Netlink` wrapper that records each call (handles made by `enter` record into the same list).
struct Timed<N> {
    inner: N,
    rec: Rec,
    pod: bool,
}

impl<N: Netlink> Netlink for Timed<N> {
    type Target = N::Target;
    async fn enter(&self, path: &Path) -> Result<Self, NetlinkError> {
        let inner = self.rec.time("enter", self.inner.enter(path)).await?;
        Ok(Timed {
            inner,
            rec: self.rec.clone(),
            pod: true,
        })
    }
    fn open_target(&self, path: &Path) -> Result<Self::Target, NetlinkError> {
        let t = Instant::now();
        let r = self.inner.open_target(path);
        self.rec.push("open_target", t.elapsed());
        r
    }
    fn self_target(&self) -> Result<Self::Target, NetlinkError> {
        self.inner.self_target()
    }
    async fn create_link(&self, req: &NewLink) -> Result<u32, NetlinkError> {
        self.rec
            .time("create_link", self.inner.create_link(req))
            .await
    }
    async fn create_link_in(
        &self,
        req: &NewLink,
        target: &Self::Target,
    ) -> Result<(), NetlinkError> {
        self.rec
            .time("create_link_in", self.inner.create_link_in(req, target))
            .await
    }
    async fn move_link(
        &self,
        index: u32,
        target: &Self::Target,
        new_name: &str,
    ) -> Result<(), NetlinkError> {
        self.rec
            .time("move_link", self.inner.move_link(index, target, new_name))
            .await
    }
    async fn set_link(&self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        self.rec
            .time("set_link", self.inner.set_link(index, change))
            .await
    }
    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.rec
            .time("delete_link", self.inner.delete_link(index))
            .await
    }
    async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        self.rec.time("links_dump", self.inner.links()).await
    }
    async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.rec
            .time("add_address", self.inner.add_address(index, addr))
            .await
    }
    async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        self.rec
            .time("addresses", self.inner.addresses(index))
            .await
    }
    async fn add_route(&self, route: &RouteSpec) -> Result<(), NetlinkError> {
        self.rec
            .time("add_route", self.inner.add_route(route))
            .await
    }
    async fn set_vf(&self, pf_index: u32, vf: u32, s: &VfSettings) -> Result<(), NetlinkError> {
        self.rec
            .time("set_vf", self.inner.set_vf(pf_index, vf, s))
            .await
    }
    async fn find_link(&self, id: &LinkId) -> Result<Option<LinkInfo>, NetlinkError> {
        let op = match (id, self.pod) {
            (LinkId::Name(_), false) => "find_by_name_host",
            (LinkId::Name(_), true) => "find_by_name_pod",
            (LinkId::Index(_), _) => "find_by_index",
            (LinkId::Mac(_), _) => "find_by_mac",
        };
        self.rec.time(op, self.inner.find_link(id)).await
    }
}

/// `Store` wrapper that records each write (journal append, with fdatasync for `put` and
/// `remove`, without for `put_until_reboot`).
struct TimedStore<S> {
    inner: S,
    rec: Rec,
}

impl<S: Store> Store for TimedStore<S> {
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.load()
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.put(key, value);
        self.rec.push("checkpoint_put", t.elapsed());
        r
    }
    fn put_until_reboot(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.put_until_reboot(key, value);
        self.rec.push("checkpoint_put_until_reboot", t.elapsed());
        r
    }
    fn remove(&self, key: &str) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.remove(key);
        self.rec.push("checkpoint_remove", t.elapsed());
        r
    }
}

const USAGE: &str = "usage: bench_attach [N] [--phases M]
  N           claims in the headline pass (default 500)
  --phases M  claims in the breakdown pass that times every netlink call and journal write of
              AttachPod (default 200; 0 skips it)";

/// `[N] [--phases M]`; `None` for `--help`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<(usize, usize)>, String> {
    let (mut n, mut phases) = (500, 200);
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--phases" => {
                let v = args.next().ok_or("--phases needs a number")?;
                phases = v
                    .parse()
                    .map_err(|_| format!("--phases: not a number: {v:?}"))?;
            }
            v => n = v.parse().map_err(|_| format!("not a claim count: {v:?}"))?,
        }
    }
    Ok(Some((n, phases)))
}

#[derive(Default)]
struct Timings {
    prepare: Vec<Duration>,
    attach: Vec<Duration>,
    detach: Vec<Duration>,
    unprepare: Vec<Duration>,
    /// Breakdown pass: per attach, the recorded calls in order.
    attach_calls: Vec<Vec<(&'static str, Duration)>>,
}

/// Claims `first..first + n`, one after the other: prepare, AttachPod, DetachPod, unprepare.
async fn run_claims<N: Netlink, S: Store>(
    m: &Manager<N, S>,
    first: usize,
    n: usize,
    netns: &str,
    rec: Option<&Rec>,
) -> Result<Timings, String> {
    let mut t = Timings::default();
    for i in first..first + n {
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
        let t0 = Instant::now();
        m.prepare(&req).await.map_err(|e| e.to_string())?;
        t.prepare.push(t0.elapsed());
        if let Some(r) = rec {
            r.take();
        }
        let t0 = Instant::now();
        let a = m
            .attach_pod(&pb::AttachPodRequest {
                pod_uid: pod.clone(),
                netns_path: netns.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        t.attach.push(t0.elapsed());
        if let Some(r) = rec {
            t.attach_calls.push(r.take());
        }
        if a.interfaces.len() != 1 {
            return Err(format!("claim {uid}: expected one interface"));
        }
        let t0 = Instant::now();
        let d = m
            .detach_pod(&pb::DetachPodRequest {
                pod_uid: pod,
                ..Default::default()
            })
            .await;
        t.detach.push(t0.elapsed());
        if !d.errors.is_empty() {
            return Err(format!("{:?}", d.errors));
        }
        let t0 = Instant::now();
        m.unprepare(&uid).await.map_err(|e| e.to_string())?;
        t.unprepare.push(t0.elapsed());
    }
    Ok(t)
}

/// Per operation: calls per attach and the p50 of its summed time per attach; the rest of the
/// attach (manager logic, lock, record encoding, scheduling) is what the calls do not cover.
fn print_breakdown(t: &mut Timings) {
    let n = t.attach_calls.len();
    if n == 0 {
        return;
    }
    let mut order: Vec<&'static str> = Vec::new();
    for calls in &t.attach_calls {
        for (op, _) in calls {
            if !order.contains(op) {
                order.push(op);
            }
        }
    }
    // What the recorded calls do not cover, per attach (before `pct` sorts the totals).
    let mut rest: Vec<Duration> = t
        .attach_calls
        .iter()
        .zip(&t.attach)
        .map(|(calls, total)| total.saturating_sub(calls.iter().map(|(_, d)| *d).sum()))
        .collect();
    // The attach without its journal write (append + fdatasync), per attach.
    let mut no_journal: Vec<Duration> = t
        .attach_calls
        .iter()
        .zip(&t.attach)
        .map(|(calls, total)| {
            let journal: Duration = calls
                .iter()
                .filter(|(op, _)| op.starts_with("checkpoint_"))
                .map(|(_, d)| *d)
                .sum();
            total.saturating_sub(journal)
        })
        .collect();
    let attach_p50 = pct(&mut t.attach, 0.5);
    println!(
        "attach breakdown ({n} claims, wrapped facade and journal): attach p50 {attach_p50:.3} ms"
    );
    println!("BENCH netdev_phase_attach_p50 {:.0} us", attach_p50 * 1e3);
    for op in order {
        let mut sums: Vec<Duration> = Vec::new();
        let mut count = 0usize;
        for calls in &t.attach_calls {
            let mut s = Duration::ZERO;
            for (o, d) in calls {
                if *o == op {
                    s += *d;
                    count += 1;
                }
            }
            sums.push(s);
        }
        let p50 = pct(&mut sums, 0.5);
        println!(
            "  {op:<28} {:>4.1} calls/attach  p50 {p50:.3} ms",
            count as f64 / n as f64
        );
        println!("BENCH netdev_phase_{op}_p50 {:.0} us", p50 * 1e3);
    }
    let p50 = pct(&mut rest, 0.5);
    println!("  {:<28}                 p50 {p50:.3} ms", "rest (manager)");
    println!("BENCH netdev_phase_rest_p50 {:.0} us", p50 * 1e3);
    let p50 = pct(&mut no_journal, 0.5);
    println!(
        "  {:<28}                 p50 {p50:.3} ms",
        "attach minus journal"
    );
    println!(
        "BENCH netdev_phase_attach_minus_journal_p50 {:.0} us",
        p50 * 1e3
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let (n, phases) = match parse_args(std::env::args().skip(1)) {
        Ok(Some(v)) => v,
        Ok(None) => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(e) => return Err(format!("{e}\n{USAGE}")),
    };
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
    let inv = vec![FoundDevice {
        name: "netdev-virtual".into(),
        host: HostDevice::Virtual,
        attributes: BTreeMap::new(),
        capacity: BTreeMap::new(),
        shared: true,
    }];
    let checkpoint = |dir: &str| {
        let mut cp =
            drakit_types::checkpoint::Options::new(state.path().join(dir), "netdev.checkpoint");
        cp.boot_id = drakit_types::checkpoint::BootIdSource::Fixed("bench".into());
        CheckpointStore::open(cp).map_err(|e| e.to_string())
    };
    let netns = p.path().display().to_string();

    // Headline pass: the manager on the plain kernel facade and journal.
    let host = RtNetlink::open(&h.path())
        .await
        .map_err(|e| e.to_string())?;
    let m = Manager::new(
        host,
        checkpoint("netdev")?,
        ManagerOptions::new("bench"),
        inv.clone(),
    )
    .map_err(|e| e.to_string())?;
    let mut t = run_claims(&m, 0, n, &netns, None).await?;
    drop(m);
    println!(
        "macvlan claims: {n} (checkpoint in {}: prepare/unprepare fdatasync'd, attach/detach written until reboot)",
        state.path().display()
    );
    for (name, v) in [
        ("prepare", &mut t.prepare),
        ("attach", &mut t.attach),
        ("detach", &mut t.detach),
        ("unprepare", &mut t.unprepare),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!("{name:>10}: p50 {p50:.3} ms  p99 {p99:.3} ms");
        println!("BENCH netdev_{name}_p50 {:.0} us", p50 * 1e3);
        println!("BENCH netdev_{name}_p99 {:.0} us", p99 * 1e3);
    }

    // Breakdown pass: the same claims with every netlink call and journal write of the attach
    // timed (wrappers around the facade and the store; the manager's code is the same).
    if phases > 0 {
        let rec = Rec::default();
        let host = Timed {
            inner: RtNetlink::open(&h.path())
                .await
                .map_err(|e| e.to_string())?,
            rec: rec.clone(),
            pod: false,
        };
        let store = TimedStore {
            inner: checkpoint("netdev-phases")?,
            rec: rec.clone(),
        };
        let m = Manager::new(host, store, ManagerOptions::new("bench"), inv.clone())
            .map_err(|e| e.to_string())?;
        let mut t = run_claims(&m, n, phases, &netns, Some(&rec)).await?;
        drop(m);
        print_breakdown(&mut t);
    }

    // One piece of an attach on its own, in a tight loop: a netlink handle inside the pod's
    // namespace (the calling thread enters it, opens the socket and returns), as every attach
    // does once.
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
        "piece: netlink handle in the pod netns (setns + socket + setns back): p50 {p50:.3} ms  p99 {p99:.3} ms"
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
