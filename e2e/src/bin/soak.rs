//! `soak`: many prepare → attach → detach → unprepare cycles through the real drakit daemons on
//! one simulated node (the `node-1` node of `node-e2e`: drakit-kubelet-plugin, drakit-netdev in
//! a private network namespace, drakit-cpu on the Alder Lake fixture, drakit-nri behind the NRI
//! runtime simulator), with faults injected at random: a daemon killed (SIGKILL) at a random
//! moment and started again, the API server answering 500 to claim reads and status writes, a
//! claim with a bad config (or CPUs another claim holds) mixed in. Run by `cargo xtask soak`.
//!
//! ```text
//! soak --bin-dir target/debug [--workspace .] [--cycles 10000] [--seed S] [--kill-rate 0.03]
//! ```
//!
//! Each cycle: a net claim (veth or macvlan with an address), two CPU claims on disjoint CPUs, a
//! runtime-spec claim, sometimes a bad claim; prepared through the kubelet simulator; a pod
//! sandbox in a fresh network namespace (drakit-nri → AttachPod) whose interface and address are
//! checked; a container whose final cpuset and `pids.max` are checked; then the sandbox is
//! stopped and removed (DetachPod), the claims unprepared and deleted. A call that fails is
//! retried as the kubelet would, but only in a cycle where a fault could explain it; anywhere
//! else a failure fails the run. After every cycle no CDI file and no drakit link may remain.
//! At the end: no link, namespace, CDI file or checkpoint entry left, each daemon's open fds
//! and RSS compared between a warm-up sample and the end (bounds below), no panic in any log.

#[allow(dead_code)]
#[path = "node-e2e/node.rs"]
mod node;
#[allow(dead_code)]
#[path = "node-e2e/sys.rs"]
mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use drakit_e2e::apiserver::{Fault, Resource};
use drakit_e2e::kubelet::{ClaimRef, PreparedDevice};
use drakit_proto::nri::{LinuxNamespace, LinuxPodSandbox};
use nri::simulator::{self, default_spec};
use serde_json::{Value, json};

use crate::node::{CPU, NET, Node, Paths, RUNTIME};
use crate::sys::Netns;

/// How long a call may keep failing after a fault before the run fails.
const RETRY_BUDGET: Duration = Duration::from_secs(60);
/// Open fds a daemon may gain between the warm-up sample and the end (pooled connections to
/// its peers come and go; a per-cycle leak shows as hundreds).
const FD_SLACK: i64 = 4;
const NS: &str = "soak";

#[derive(Debug, Parser)]
#[command(about = "drakit soak: long claim cycles through the real daemons with injected faults")]
struct Args {
    /// Directory holding drakit-kubelet-plugin, drakit-netdev, drakit-oci-hook, drakit-cpu, drakit-nri.
    #[arg(long)]
    bin_dir: PathBuf,
    /// The workspace root (fixtures are read from it).
    #[arg(long, default_value = ".")]
    workspace: PathBuf,
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    cycles: u64,
    /// Seed of the fault schedule (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Chance per cycle that drakit-kubelet-plugin, drakit-netdev or drakit-cpu is killed at a
    /// random moment of the cycle (drakit-nri: a third of it, between cycles); the last fifth
    /// of the cycles kills nothing.
    #[arg(long, default_value_t = 0.03)]
    kill_rate: f64,
    /// Chance per cycle of 500s from the API server (claim reads, then status writes).
    #[arg(long, default_value_t = 0.15)]
    api_fault_rate: f64,
    /// Chance per cycle of an extra claim that must be refused.
    #[arg(long, default_value_t = 0.1)]
    bad_claim_rate: f64,
    /// RSS a daemon may gain between the warm-up sample and the end, in KiB.
    #[arg(long, default_value_t = 8192)]
    max_rss_growth_kib: i64,
    /// Keep the temp root (logs, state) afterwards.
    #[arg(long)]
    keep: bool,
}

/// xorshift64*: the fault schedule is a function of the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15).max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
}

/// The daemons, by their name in [`Node`].
const KP: &str = "drakit-kubelet-plugin";
const NETDEV: &str = "drakit-netdev";
const CPUD: &str = "drakit-cpu";
const NRI: &str = "drakit-nri";
const DAEMONS: [&str; 4] = [KP, NETDEV, CPUD, NRI];

/// The moments of a cycle a kill can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    PrepareNet,
    PrepareCpu,
    PrepareRuntime,
    RunSandbox,
    CreateContainer,
    StopSandbox,
    Unprepare,
}

const STEPS: [Step; 7] = [
    Step::PrepareNet,
    Step::PrepareCpu,
    Step::PrepareRuntime,
    Step::RunSandbox,
    Step::CreateContainer,
    Step::StopSandbox,
    Step::Unprepare,
];

/// A SIGKILL armed to fire `delay` after `step` begins.
#[derive(Debug, Clone)]
struct Kill {
    daemon: &'static str,
    step: Step,
    delay: Duration,
}

/// SIGKILLs sent, per daemon: (in total, not yet matched by a restart). A daemon found dead
/// with none outstanding died on its own, which fails the run.
type Kills = std::sync::Arc<std::sync::Mutex<BTreeMap<&'static str, (u64, u64)>>>;

fn send_kill(kills: &Kills, daemon: &'static str, pid: u32, when: &str) {
    println!("  SIGKILL {daemon} (pid {pid}) {when}");
    {
        let mut k = kills.lock().unwrap_or_else(|p| p.into_inner());
        let e = k.entry(daemon).or_default();
        e.0 += 1;
        e.1 += 1;
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    // Until it is really gone (a zombie, not reaped yet: the child of this process), so the
    // next liveness check sees it dead. A process in uninterruptible sleep (an fdatasync on a
    // busy disk) takes the signal only when the call returns: that can be seconds.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(st)
                if st
                    .rsplit_once(") ")
                    .is_some_and(|(_, r)| !r.starts_with('Z')) => {}
            _ => break,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Debug, Default)]
struct Stats {
    restarts: BTreeMap<&'static str, u64>,
    api_get_500: u64,
    api_status_500: u64,
    bad_claims: u64,
    retries: u64,
    sandbox_retries: u64,
    cycle_ms: Vec<f64>,
    net_kinds: BTreeMap<String, u64>,
}

/// One daemon instance's resource samples.
#[derive(Debug, Clone)]
struct Sample {
    pid: u32,
    fds: i64,
    rss_kib: i64,
}

fn sample(pid: u32) -> Option<Sample> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as i64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    Some(Sample { pid, fds, rss_kib })
}

/// What a cycle's claims look like.
struct ClaimSpec {
    name: String,
    uid: String,
    driver: &'static str,
    devices: Vec<String>,
    params: Option<Value>,
}

impl ClaimSpec {
    fn cref(&self) -> ClaimRef {
        ClaimRef::new(NS, &self.name, &self.uid)
    }

    fn object(&self, node: &str, pod: &str, pod_uid: &str) -> Value {
        let results: Vec<Value> = self
            .devices
            .iter()
            .map(|d| json!({"request": "r", "driver": self.driver, "pool": node, "device": d}))
            .collect();
        let mut spec = json!({"devices": {"requests": [{"name": "r", "exactly": {
            "deviceClassName": self.driver, "count": self.devices.len()}}]}});
        let mut alloc = json!({"devices": {"results": results}});
        if let Some(p) = &self.params {
            let cfg =
                json!([{"requests": ["r"], "opaque": {"driver": self.driver, "parameters": p}}]);
            spec["devices"]["config"] = cfg.clone();
            let mut a = cfg;
            a[0]["source"] = json!("FromClaim");
            alloc["devices"]["config"] = a;
        }
        json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": self.name, "namespace": NS, "uid": self.uid},
            "spec": spec,
            "status": {"allocation": alloc,
                       "reservedFor": [{"resource": "pods", "name": pod, "uid": pod_uid}]},
        })
    }
}

/// Sorted CPU numbers of a cpulist (`0-3,8`).
fn cpulist(s: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(c) = part.parse() {
                    out.insert(c);
                }
            }
        }
    }
    out
}

struct Soak {
    node: Node,
    a: Args,
    rng: Rng,
    stats: Stats,
    /// Devices as published: net virtual slots, CPUs, runtime slots.
    net_devices: Vec<String>,
    cpu_devices: Vec<String>,
    rt_devices: Vec<String>,
    net_kinds: Vec<&'static str>,
    nri_syncs: u64,
    /// A fault was injected in this cycle (kill, or a daemon found dead): failures may be retried.
    disrupted: bool,
    /// Per daemon: (cycle its instance started, warm-up sample, last sample).
    samples: BTreeMap<&'static str, (u64, Option<Sample>, Option<Sample>)>,
    warmup: u64,
    start_links: Vec<String>,
    kills: Kills,
    /// This cycle's SIGKILL, until it is started.
    kill: Option<Kill>,
    /// From this cycle on no daemon is killed, so every daemon's last instance lives long enough
    /// for its fds and RSS to be compared.
    quiet_from: u64,
}

impl Soak {
    fn pid(&self, daemon: &str) -> Option<u32> {
        self.node
            .daemons
            .iter()
            .find(|d| d.name == daemon)
            .and_then(sys::Daemon::pid)
    }

    fn node_ns(&self) -> Option<String> {
        self.node.ns_name().map(str::to_owned)
    }

    fn published(&self, driver: &str) -> Vec<(String, Value)> {
        let node = self.node.profile.name;
        let mut out = Vec::new();
        for s in self.node.harness.api.slices_for(node, driver) {
            for d in s.spec.devices.unwrap_or_default() {
                let attrs = serde_json::to_value(&d.attributes).unwrap_or(Value::Null);
                out.push((d.name, attrs));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Starts every dead daemon again and waits until it serves.
    async fn ensure_up(&mut self, cycle: u64) -> Result<()> {
        for name in DAEMONS {
            let Some(d) = self.node.daemons.iter_mut().find(|d| d.name == name) else {
                continue;
            };
            if d.check_alive().is_ok() {
                continue;
            }
            self.disrupted = true;
            let expected = {
                let mut k = self.kills.lock().unwrap_or_else(|p| p.into_inner());
                let e = k.entry(name).or_default();
                let was = e.1 > 0;
                e.1 = e.1.saturating_sub(1);
                was
            };
            if !expected {
                bail!(
                    "{name} exited without being killed; log tail:\n{}",
                    sys::tail(&d.log, 40)
                );
            }
            let seqs: Vec<u64> = [CPU, RUNTIME, NET]
                .iter()
                .map(|drv| {
                    self.node
                        .harness
                        .kubelet
                        .driver(drv)
                        .map_or(0, |p| p.sequence)
                })
                .collect();
            println!("  cycle {cycle}: {name} found dead, starting it again");
            self.node.restart_daemon(name, || Ok(()))?;
            *self.stats.restarts.entry(name).or_default() += 1;
            self.samples.insert(name, (cycle, None, None));
            match name {
                KP => {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    for (drv, old) in [CPU, RUNTIME, NET].iter().zip(seqs) {
                        if *drv == NET && !self.node.net {
                            continue;
                        }
                        while self
                            .node
                            .harness
                            .kubelet
                            .driver(drv)
                            .map_or(0, |p| p.sequence)
                            <= old
                        {
                            if Instant::now() > deadline {
                                bail!("{drv} did not register again after {KP} restarted");
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                CPUD | NETDEV => {
                    // Serving once its socket accepts (the killed instance's socket file stays
                    // until the new one binds over it).
                    let sock = self.node.root.join("run").join(if name == CPUD {
                        "cpu.sock"
                    } else {
                        "netdev.sock"
                    });
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
                        if Instant::now() > deadline {
                            bail!("{name} did not serve {} again", sock.display());
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                NRI => {
                    self.nri_syncs += 1;
                    self.node
                        .rt
                        .wait_synced(self.nri_syncs, Duration::from_secs(30))
                        .await
                        .context("drakit-nri did not synchronize again after its restart")?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Waits for an armed kill to have happened, then brings the daemon back.
    async fn settle(
        &mut self,
        cycle: u64,
        armed: Option<std::thread::JoinHandle<()>>,
    ) -> Result<()> {
        if let Some(t) = armed {
            let _ = t.join();
            self.ensure_up(cycle).await?;
        }
        Ok(())
    }

    /// Starts the cycle's kill if it is aimed at `step` (at most once per cycle).
    fn arm(&mut self, step: Step) -> Option<std::thread::JoinHandle<()>> {
        if self.kill.as_ref()?.step != step {
            return None;
        }
        let k = self.kill.take()?;
        let pid = self.pid(k.daemon)?;
        let (delay, daemon, kills) = (k.delay, k.daemon, self.kills.clone());
        let when = format!("{:?} + {delay:?}", k.step);
        Some(std::thread::spawn(move || {
            std::thread::sleep(delay);
            send_kill(&kills, daemon, pid, &when);
        }))
    }

    async fn prepare_once(
        &self,
        driver: &str,
        c: &ClaimSpec,
    ) -> std::result::Result<Vec<PreparedDevice>, String> {
        let cref = c.cref();
        let r = self
            .node
            .harness
            .kubelet
            .prepare(driver, std::slice::from_ref(&cref))
            .await
            .map_err(|e| format!("prepare {}: {e}", c.name))?;
        r.get(&c.uid)
            .cloned()
            .unwrap_or_else(|| Err("no answer".into()))
    }

    /// Prepares a good claim; retried only when a fault in this cycle explains a failure.
    async fn prepare(
        &mut self,
        cycle: u64,
        c: &ClaimSpec,
        step: Step,
    ) -> Result<Vec<PreparedDevice>> {
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut armed = self.arm(step);
        loop {
            let r = self.prepare_once(c.driver, c).await;
            self.settle(cycle, armed.take()).await?;
            match r {
                Ok(d) => return Ok(d),
                Err(e) => {
                    self.ensure_up(cycle).await?;
                    if !self.disrupted {
                        bail!(
                            "prepare of {} ({}) failed with no fault: {e}",
                            c.name,
                            c.driver
                        );
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "prepare of {} still failing after {RETRY_BUDGET:?}: {e}",
                            c.name
                        );
                    }
                    self.stats.retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn unprepare(&mut self, cycle: u64, c: &ClaimSpec) -> Result<()> {
        let deadline = Instant::now() + RETRY_BUDGET;
        loop {
            let cref = c.cref();
            let r = self
                .node
                .harness
                .kubelet
                .unprepare(c.driver, std::slice::from_ref(&cref))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    r.get(&c.uid)
                        .cloned()
                        .unwrap_or_else(|| Err("no answer".into()))
                });
            match r {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.ensure_up(cycle).await?;
                    if !self.disrupted {
                        bail!("unprepare of {} failed with no fault: {e}", c.name);
                    }
                    if Instant::now() > deadline {
                        bail!("unprepare of {} still failing: {e}", c.name);
                    }
                    self.stats.retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A claim that must be refused: the answer names the claim and `needle` (the field or
    /// device), and nothing of it stays prepared.
    async fn bad_claim(&mut self, cycle: u64, c: &ClaimSpec, needle: &str) -> Result<()> {
        let deadline = Instant::now() + RETRY_BUDGET;
        loop {
            match self.prepare_once(c.driver, c).await {
                Ok(d) => bail!("bad claim {} was prepared: {d:?}", c.name),
                Err(e) if e.contains(&c.name) && e.contains(needle) => break,
                Err(e) => {
                    self.ensure_up(cycle).await?;
                    if !self.disrupted || Instant::now() > deadline {
                        bail!(
                            "bad claim {}: the error does not name the claim and {needle:?}: {e}",
                            c.name
                        );
                    }
                    self.stats.retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.stats.bad_claims += 1;
        self.unprepare(cycle, c).await
    }

    fn cdi_env(&self, driver: &str, uid: &str) -> Vec<String> {
        let p = self.node.cdi_dir.join(format!("{driver}-claim_{uid}.json"));
        let v: Value = std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        v["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| {
                d["containerEdits"]["env"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|e| e.as_str().map(String::from))
            .collect()
    }

    fn cdi_cpus(&self, uid: &str) -> BTreeSet<u32> {
        self.cdi_env(CPU, uid)
            .iter()
            .find(|e| e.starts_with("DRAKIT_CPUS_"))
            .and_then(|e| e.split_once('='))
            .map(|(_, v)| cpulist(v))
            .unwrap_or_default()
    }

    /// Global addresses of `ifname` in a namespace (`None`: no such link).
    fn addresses(ns: &str, ifname: &str) -> Option<Vec<String>> {
        let v = sys::ip_json(ns, &["addr", "show"]).ok()?;
        let l = v
            .as_array()?
            .iter()
            .find(|l| l["ifname"].as_str() == Some(ifname))?;
        Some(
            l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["scope"] == "global")
                .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
                .collect(),
        )
    }

    fn links(ns: &str) -> Vec<String> {
        let v = sys::ip_json(ns, &["link", "show"]).unwrap_or(Value::Null);
        let mut names: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    }

    /// Links drakit marked or named in a namespace.
    fn drakit_links(ns: &str) -> Vec<String> {
        let v = sys::ip_json(ns, &["-d", "link", "show"]).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let name = l["ifname"].as_str()?.to_owned();
                let alias = l["ifalias"].as_str().unwrap_or_default();
                let temp = name.len() == 13
                    && name.starts_with("dk")
                    && (name.ends_with('p') || name.ends_with('h'));
                (alias.starts_with("drakit:") || temp).then(|| format!("{name} ({alias})"))
            })
            .collect()
    }

    async fn cycle(&mut self, i: u64) -> Result<()> {
        self.disrupted = false;
        let node_name = self.node.profile.name;
        let pod = format!("soak-{i}");
        let pod_uid = format!(
            "50a1{:04x}-{:04x}-4000-8000-{:012x}",
            i >> 16 & 0xffff,
            i & 0xffff,
            i
        );
        let uid = |k: u16| format!("50a0{:04x}-{k:04x}-4000-8000-{i:012x}", i & 0xffff);

        // ---- the fault schedule of this cycle ----
        let kill_rate = if i < self.quiet_from {
            self.a.kill_rate
        } else {
            0.0
        };
        if self.rng.chance(kill_rate / 3.0)
            && let Some(pid) = self.pid(NRI)
        {
            // drakit-nri between cycles: a pod started while it is away would run without its
            // interfaces (the runtime carries on without a plugin), which is not drakit's to fix.
            send_kill(&self.kills, NRI, pid, "between cycles");
            let start = Instant::now();
            while self.pid(NRI).is_some()
                && self
                    .node
                    .daemons
                    .iter_mut()
                    .find(|d| d.name == NRI)
                    .is_some_and(|d| d.check_alive().is_ok())
            {
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("drakit-nri did not die on SIGKILL");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.ensure_up(i).await?;
        }
        self.kill = if self.rng.chance(kill_rate) {
            let mut choices = vec![KP, CPUD];
            if self.node.net {
                choices.push(NETDEV);
            }
            let daemon = choices[self.rng.below(choices.len() as u64) as usize];
            let step = STEPS[self.rng.below(STEPS.len() as u64) as usize];
            self.disrupted = true;
            Some(Kill {
                daemon,
                step,
                delay: Duration::from_micros(self.rng.below(4000)),
            })
        } else {
            None
        };
        if self.rng.chance(self.a.api_fault_rate) {
            let n = 1 + self.rng.below(3) as usize;
            self.node.harness.api.fail_next(
                n,
                Fault::status(500)
                    .method("GET")
                    .path_contains("/resourceclaims/"),
            );
            self.stats.api_get_500 += n as u64;
        }
        if self.rng.chance(self.a.api_fault_rate) {
            let n = 1 + self.rng.below(3) as usize;
            self.node.harness.api.fail_next(
                n,
                Fault::status(500).method("PATCH").path_contains("/status"),
            );
            self.stats.api_status_500 += n as u64;
        }

        // ---- claims ----
        let mut claims = Vec::new();
        let net_kind = if self.node.net && !self.net_kinds.is_empty() {
            let k = self.net_kinds[self.rng.below(self.net_kinds.len() as u64) as usize];
            *self.stats.net_kinds.entry(k.to_string()).or_default() += 1;
            Some(k)
        } else {
            None
        };
        let addr = format!("10.{}.{}.2/24", 100 + (i / 250) % 100, i % 250);
        if let Some(kind) = net_kind {
            let mut netdev = json!({"kind": kind, "interfaceName": "net1", "addresses": [addr]});
            if kind == "macvlan" {
                netdev["parent"] = json!("eth0");
            }
            let dev =
                self.net_devices[self.rng.below(self.net_devices.len() as u64) as usize].clone();
            claims.push(ClaimSpec {
                name: format!("net-{i}"),
                uid: uid(1),
                driver: NET,
                devices: vec![dev],
                params: Some(json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "netdev": netdev})),
            });
        }
        // Two CPU claims on disjoint CPUs.
        let mut pool = self.cpu_devices.clone();
        let mut take = |rng: &mut Rng, n: usize| -> Vec<String> {
            let mut out = Vec::new();
            while out.len() < n && !pool.is_empty() {
                out.push(pool.remove(rng.below(pool.len() as u64) as usize));
            }
            out
        };
        let n_a = 1 + self.rng.below(2) as usize;
        let n_b = 1 + self.rng.below(2) as usize;
        let cpus_a = take(&mut self.rng, n_a);
        let cpus_b = take(&mut self.rng, n_b);
        claims.push(ClaimSpec {
            name: format!("cpu-a-{i}"),
            uid: uid(2),
            driver: CPU,
            devices: cpus_a.clone(),
            params: None,
        });
        claims.push(ClaimSpec {
            name: format!("cpu-b-{i}"),
            uid: uid(3),
            driver: CPU,
            devices: cpus_b.clone(),
            params: None,
        });
        let pids_max = (64 + i % 1000).to_string();
        let rt_dev = self.rt_devices[self.rng.below(self.rt_devices.len() as u64) as usize].clone();
        claims.push(ClaimSpec {
            name: format!("rt-{i}"),
            uid: uid(4),
            driver: RUNTIME,
            devices: vec![rt_dev.clone()],
            params: Some(
                json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig",
                "spec": {"linux": {"resources": {"unified": {"pids.max": pids_max}}}}}),
            ),
        });
        let bad = if self.rng.chance(self.a.bad_claim_rate) {
            let which = self.rng.below(if self.node.net { 3 } else { 2 });
            Some(match which {
                0 => (
                    ClaimSpec {
                        name: format!("bad-cpu-{i}"),
                        uid: uid(9),
                        driver: CPU,
                        devices: vec![cpus_a[0].clone()],
                        params: None,
                    },
                    cpus_a[0].clone(),
                ),
                1 => (
                    ClaimSpec {
                        name: format!("bad-rt-{i}"),
                        uid: uid(9),
                        driver: RUNTIME,
                        devices: vec![rt_dev.clone()],
                        params: Some(
                            json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig",
                            "spec": {"linux": {"resources": {"unified": {"pids.max": "64"}}}, "bogusField": 1}}),
                        ),
                    },
                    "bogusField".to_string(),
                ),
                _ => (
                    ClaimSpec {
                        name: format!("bad-net-{i}"),
                        uid: uid(9),
                        driver: NET,
                        devices: vec![self.net_devices[0].clone()],
                        params: Some(
                            json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig",
                            "netdev": {"kind": "veth", "interfaceName": "net9", "bogusField": true}}),
                        ),
                    },
                    "bogusField".to_string(),
                ),
            })
        } else {
            None
        };
        for c in claims.iter().chain(bad.iter().map(|b| &b.0)) {
            self.node
                .harness
                .api
                .insert_raw(c.object(node_name, &pod, &pod_uid))
                .context("inserting a claim")?;
        }

        // ---- prepare ----
        for c in &claims {
            let step = match c.driver {
                NET => Step::PrepareNet,
                CPU => Step::PrepareCpu,
                _ => Step::PrepareRuntime,
            };
            let devs = self.prepare(i, c, step).await?;
            if devs.len() != c.devices.len() {
                bail!(
                    "{}: {} devices answered for {} allocated",
                    c.name,
                    devs.len(),
                    c.devices.len()
                );
            }
            // Attach mode nri: a netdev claim needs no CDI edits; CPUs and spec edits do.
            if c.driver != NET && devs.iter().all(|d| d.cdi_device_ids.is_empty()) {
                bail!("{}: no CDI device in the answer", c.name);
            }
        }
        if let Some((c, needle)) = &bad {
            self.bad_claim(i, c, needle).await?;
        }
        // No CPU exclusive twice: each CPU claim got exactly its allocation, and they differ.
        let want_a: BTreeSet<u32> = cpus_a
            .iter()
            .filter_map(|d| d.strip_prefix("cpu")?.parse().ok())
            .collect();
        let want_b: BTreeSet<u32> = cpus_b
            .iter()
            .filter_map(|d| d.strip_prefix("cpu")?.parse().ok())
            .collect();
        let (got_a, got_b) = (self.cdi_cpus(&uid(2)), self.cdi_cpus(&uid(3)));
        if got_a != want_a || got_b != want_b || !got_a.is_disjoint(&got_b) {
            bail!("CPU claims got {got_a:?} and {got_b:?}, allocated {want_a:?} and {want_b:?}");
        }
        if let Some(c) = claims.iter().find(|c| c.driver == NET) {
            let name = c.name.clone();
            self.node
                .harness
                .api
                .wait_for("claim status networkData", Duration::from_secs(30), |api| {
                    api.claim(NS, &name)
                        .and_then(|c| c.status?.devices)
                        .filter(|d| d.iter().any(|d| d.network_data.is_some()))
                })
                .await
                .with_context(|| format!("{name}: networkData never reached the claim status"))?;
        }

        // ---- pod: sandbox (attach), a container ----
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut attempt = 0;
        let (sandbox, netns) = loop {
            attempt += 1;
            let id = format!("soak{i}a{attempt}");
            let netns = if self.node.net {
                Some(Netns::create(&format!(
                    "dks{}-{i}-{attempt}",
                    self.node.run_id
                ))?)
            } else {
                None
            };
            let mut p = simulator::pod(&id, &pod, NS);
            p.uid = pod_uid.clone();
            if let Some(ns) = &netns {
                p.linux = Some(LinuxPodSandbox {
                    namespaces: vec![LinuxNamespace {
                        r#type: "network".into(),
                        path: ns.path().display().to_string(),
                    }],
                    ..Default::default()
                });
            }
            let armed = if attempt == 1 {
                self.arm(Step::RunSandbox)
            } else {
                None
            };
            let run = self.node.rt.run_pod_sandbox(p).await;
            self.settle(i, armed).await?;
            let attached = match (&netns, net_kind) {
                (Some(ns), Some(_)) => {
                    let got = Self::addresses(&ns.name, "net1");
                    if got.as_deref() == Some(std::slice::from_ref(&addr)) {
                        Ok(())
                    } else {
                        Err(format!("pod netns has net1 with {got:?}, want [{addr}]"))
                    }
                }
                _ => Ok(()),
            };
            match (run, attached) {
                (Ok(()), Ok(())) => break (id, netns),
                (r, a) => {
                    let why = format!("RunPodSandbox: {r:?}; attach: {a:?}");
                    // The sandbox failed: the kubelet tears it down and makes a new one.
                    let _ = self.node.rt.stop_pod_sandbox(&id).await;
                    let _ = self.node.rt.remove_pod_sandbox(&id).await;
                    drop(netns);
                    self.ensure_up(i).await?;
                    if !self.disrupted {
                        bail!("pod {pod} failed with no fault: {why}");
                    }
                    if Instant::now() > deadline {
                        bail!("pod {pod} still failing after {RETRY_BUDGET:?}: {why}");
                    }
                    self.stats.sandbox_retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let mut env =
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
        env.extend(self.cdi_env(CPU, &uid(2)));
        env.extend(self.cdi_env(RUNTIME, &uid(4)));
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let cid = format!("{sandbox}c{attempt}");
            let mut ctr = simulator::container(&cid, &sandbox, "app");
            ctr.env = env.clone();
            let mut spec = default_spec(&["sh"]);
            spec["process"]["env"] = json!(env);
            let armed = if attempt == 1 {
                self.arm(Step::CreateContainer)
            } else {
                None
            };
            let created = self.node.rt.create_container(ctr, spec).await;
            self.settle(i, armed).await?;
            let check = match &created {
                Ok(c) => {
                    let cpus = c.spec["linux"]["resources"]["cpu"]["cpus"]
                        .as_str()
                        .map(cpulist)
                        .unwrap_or_default();
                    let pm = &c.spec["linux"]["resources"]["unified"]["pids.max"];
                    let leftover = c.spec["process"]["env"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .find(|e| e.starts_with("DRAKIT_"))
                        .map(String::from);
                    if cpus != want_a {
                        Err(format!("container cpuset {cpus:?}, claim has {want_a:?}"))
                    } else if pm != &json!(pids_max) {
                        Err(format!("container pids.max {pm}, claim asks {pids_max}"))
                    } else if let Some(e) = leftover {
                        Err(format!("transport env {e} left in the final spec"))
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(format!("CreateContainer: {e}")),
            };
            let _ = self.node.rt.stop_container(&cid).await;
            let _ = self.node.rt.remove_container(&cid).await;
            match check {
                Ok(()) => break,
                Err(why) => {
                    self.ensure_up(i).await?;
                    if !self.disrupted || Instant::now() > deadline {
                        bail!("container of {pod}: {why}");
                    }
                    self.stats.retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }

        // ---- teardown: sandbox (detach), claims ----
        let armed = self.arm(Step::StopSandbox);
        let stop = self.node.rt.stop_pod_sandbox(&sandbox).await;
        self.settle(i, armed).await?;
        let mut stop = stop.map_err(|e| e.to_string());
        let deadline = Instant::now() + RETRY_BUDGET;
        loop {
            let left = match (&netns, net_kind) {
                (Some(ns), Some(_)) => {
                    let l = Self::links(&ns.name);
                    if l == ["lo"] {
                        Ok(())
                    } else {
                        Err(format!("pod netns still holds {l:?}"))
                    }
                }
                _ => Ok(()),
            };
            let why = match (&stop, left) {
                (Ok(()), Ok(())) => break,
                (s, l) => format!("StopPodSandbox: {s:?}; {l:?}"),
            };
            self.ensure_up(i).await?;
            if !self.disrupted || Instant::now() > deadline {
                bail!("detach of {pod}: {why}");
            }
            // The kubelet retries StopPodSandbox until it succeeds.
            self.stats.retries += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop = self
                .node
                .rt
                .stop_pod_sandbox(&sandbox)
                .await
                .map_err(|e| e.to_string());
        }
        self.node
            .rt
            .remove_pod_sandbox(&sandbox)
            .await
            .context("RemovePodSandbox")?;
        drop(netns);
        let armed = self.arm(Step::Unprepare);
        for c in &claims {
            self.unprepare(i, c).await?;
        }
        self.settle(i, armed).await?;
        // A kill aimed at the unprepare may land after it: the daemon comes back before checks.
        self.ensure_up(i).await?;
        for c in claims.iter().chain(bad.iter().map(|b| &b.0)) {
            self.node
                .harness
                .api
                .remove(Resource::ResourceClaims, NS, &c.name);
        }

        // ---- nothing left of this cycle ----
        let cdi: Vec<String> = std::fs::read_dir(&self.node.cdi_dir)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !cdi.is_empty() {
            bail!("CDI files left after the cycle: {cdi:?}");
        }
        if let Some(ns) = self.node_ns() {
            let l = Self::drakit_links(&ns);
            if !l.is_empty() {
                bail!("drakit links left in the node netns after the cycle: {l:?}");
            }
        }
        self.node.harness.api.clear_faults();
        Ok(())
    }

    fn sample_all(&mut self, cycle: u64) {
        for name in DAEMONS {
            let Some(pid) = self.pid(name) else { continue };
            let s = sample(pid);
            let warmup = self.warmup;
            let e = self.samples.entry(name).or_insert((0, None, None));
            if e.1.is_none() && cycle >= e.0 + warmup {
                e.1 = s.clone();
            }
            e.2 = s;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = run(a) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT): daemons stopped, namespaces deleted"),
        _ = term.recv() => bail!("terminated (SIGTERM): daemons stopped, namespaces deleted"),
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

async fn run(a: Args) -> Result<()> {
    let workspace = a.workspace.canonicalize().context("workspace dir")?;
    let bin_dir = a.bin_dir.canonicalize().context("bin dir")?;
    for b in [KP, NETDEV, "drakit-oci-hook", CPUD, NRI] {
        if !bin_dir.join(b).is_file() {
            bail!(
                "{} is missing: build the daemons first (cargo xtask soak does)",
                bin_dir.join(b).display()
            );
        }
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let paths = Paths {
        workspace,
        bin_dir,
        cni_bin_dir: a.cni_bin_dir.clone(),
        shared_slots: 16,
    };
    let run_id = format!("{:x}", std::process::id() % 0xfffff);
    let base = std::env::temp_dir().join(format!("drakit-soak-{run_id}"));
    if base.exists() {
        std::fs::remove_dir_all(&base)?;
    }
    std::fs::create_dir_all(&base)?;
    let net_ok = sys::netns_usable();
    println!(
        "drakit soak: {} cycles, seed {seed}, state under {}",
        a.cycles,
        base.display()
    );
    match &net_ok {
        Ok(()) => println!("network: real links in private network namespaces (root)"),
        Err(why) => {
            println!("network: skipped: {why} (cycles run CPU and runtime-spec claims only)")
        }
    }
    let t0 = Instant::now();
    let node = Node::start(node::MAIN, &base, &paths, &run_id, net_ok.clone())
        .await
        .context("starting the node")?;
    println!("node up in {} ms", t0.elapsed().as_millis());
    let mut net_kinds = Vec::new();
    for k in ["veth", "macvlan"] {
        if node.net && !node.missing_kinds.iter().any(|m| m == k) {
            net_kinds.push(k);
        }
    }
    let mut s = Soak {
        a,
        rng: Rng::new(seed),
        stats: Stats::default(),
        net_devices: Vec::new(),
        cpu_devices: Vec::new(),
        rt_devices: Vec::new(),
        net_kinds,
        nri_syncs: 1,
        disrupted: false,
        samples: BTreeMap::new(),
        warmup: 0,
        start_links: Vec::new(),
        kills: Kills::default(),
        kill: None,
        quiet_from: 0,
        node,
    };
    s.warmup = (s.a.cycles / 20).clamp(1, 50);
    s.quiet_from = s.a.cycles - (s.a.cycles / 5).max(2 * s.warmup).min(s.a.cycles);
    s.net_devices = s
        .published(NET)
        .into_iter()
        .filter(|(_, attrs)| attrs.to_string().contains("\"virtual\""))
        .map(|(n, _)| n)
        .collect();
    s.cpu_devices = s.published(CPU).into_iter().map(|(n, _)| n).collect();
    // Keep most CPUs for the shared pool.
    s.cpu_devices.truncate(8);
    s.rt_devices = s.published(RUNTIME).into_iter().map(|(n, _)| n).collect();
    if s.node.net && s.net_devices.is_empty() {
        bail!("no virtual net device published");
    }
    if s.cpu_devices.len() < 4 || s.rt_devices.is_empty() {
        bail!("too few CPU or runtime devices published");
    }
    if let Some(ns) = s.node_ns() {
        s.start_links = Soak::links(&ns);
    }
    for name in DAEMONS {
        s.samples.insert(name, (0, None, None));
    }
    println!(
        "kills until cycle {}, then a quiet tail; fds and RSS compared from {} cycles after each \
         daemon instance started",
        s.quiet_from, s.warmup
    );
    let mut failure = None;
    let progress = (s.a.cycles / 20).max(1);
    for i in 0..s.a.cycles {
        let t = Instant::now();
        if let Err(e) = s.cycle(i).await {
            failure = Some(format!("cycle {i}: {e:#}"));
            break;
        }
        s.stats.cycle_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        s.sample_all(i + 1);
        if (i + 1) % progress == 0 {
            println!(
                "  {} / {} cycles, {:.0} s",
                i + 1,
                s.a.cycles,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let total = t0.elapsed();
    let mut verdicts: Vec<(String, bool)> = Vec::new();

    // ---- resources: warm-up sample vs end ----
    let mut table = Vec::new();
    for name in DAEMONS {
        let (since, warm, end) = s.samples.get(name).cloned().unwrap_or((0, None, None));
        let row = match (warm, end) {
            (Some(w), Some(e)) if w.pid == e.pid => {
                let fd_ok = e.fds - w.fds <= FD_SLACK;
                let rss_ok = e.rss_kib - w.rss_kib <= s.a.max_rss_growth_kib;
                verdicts.push((
                    format!(
                        "{name}: open fds {} -> {} (bound +{FD_SLACK})",
                        w.fds, e.fds
                    ),
                    fd_ok,
                ));
                verdicts.push((
                    format!(
                        "{name}: RSS {} -> {} KiB (bound +{} KiB)",
                        w.rss_kib, e.rss_kib, s.a.max_rss_growth_kib
                    ),
                    rss_ok,
                ));
                format!(
                    "{name:<22} {:>7} {:>8} {:>6} {:>5} -> {:<5} {:>8} -> {:<8}",
                    e.pid,
                    s.stats.restarts.get(name).copied().unwrap_or(0),
                    since,
                    w.fds,
                    e.fds,
                    w.rss_kib,
                    e.rss_kib
                )
            }
            _ => format!(
                "{name:<22} {:>7} {:>8} {:>6} (instance too young for a warm-up sample)",
                s.pid(name).map(|p| p.to_string()).unwrap_or_default(),
                s.stats.restarts.get(name).copied().unwrap_or(0),
                since
            ),
        };
        table.push(row);
    }
    // ---- leaks on the node ----
    if let Some(ns) = s.node_ns() {
        let now = Soak::links(&ns);
        let dl = Soak::drakit_links(&ns);
        verdicts.push((
            format!(
                "node netns links as at start ({} links), no drakit link ({})",
                now.len(),
                dl.len()
            ),
            now == s.start_links && dl.is_empty(),
        ));
    }
    let left_ns: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("dks{}-", s.node.run_id)))
        .collect();
    verdicts.push((
        format!("pod network namespaces left: {}", left_ns.len()),
        left_ns.is_empty(),
    ));
    let cdi = std::fs::read_dir(&s.node.cdi_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    verdicts.push((format!("CDI files left: {cdi}"), cdi == 0));
    let unclean = s.node.stop();
    verdicts.push((
        format!("daemons exited on SIGTERM (not: {unclean:?})"),
        unclean.is_empty(),
    ));
    let live = checkpoint_claims(&s.node);
    verdicts.push((
        format!(
            "checkpoint entries left (netdev, cpu, kubelet-plugin): {}",
            live.len()
        ),
        live.is_empty(),
    ));
    let panics = log_panics(&s.node.root.join("logs"));
    verdicts.push((
        format!("daemon logs with a panic: {}", panics.len()),
        panics.is_empty(),
    ));

    // ---- summary ----
    let st = &s.stats;
    let done = st.cycle_ms.len();
    println!("\n==== soak summary (seed {seed}) ====");
    println!(
        "cycles: {done} of {} in {:.1} s; cycle p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.a.cycles,
        total.as_secs_f64(),
        percentile(&st.cycle_ms, 0.5),
        percentile(&st.cycle_ms, 0.99),
        percentile(&st.cycle_ms, 1.0)
    );
    println!("net kinds: {:?}", st.net_kinds);
    println!(
        "faults: SIGKILLs {:?}; API 500s injected: {} claim GETs, {} status PATCHes; bad claims refused: {}",
        s.kills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(d, (n, _))| (*d, *n))
            .collect::<BTreeMap<_, _>>(),
        st.api_get_500,
        st.api_status_500,
        st.bad_claims
    );
    println!(
        "recovery: {} call retries, {} sandbox re-creations, restarts {:?}",
        st.retries, st.sandbox_retries, st.restarts
    );
    println!(
        "{:<22} {:>7} {:>8} {:>6} {:>14} {:>20}",
        "daemon", "pid", "restarts", "since", "fds warm->end", "RSS KiB warm->end"
    );
    for r in &table {
        println!("{r}");
    }
    let mut failed = failure.is_some();
    for (what, ok) in &verdicts {
        println!("{} {what}", if *ok { "PASS" } else { "FAIL" });
        failed |= !ok;
    }
    if !live.is_empty() {
        println!("  left: {live:?}");
    }
    for p in &panics {
        println!("  {p}");
    }
    if let Some(f) = &failure {
        println!("FAIL {f}");
        eprintln!("{}", s.node.dump());
    }
    if s.a.keep || failed {
        println!("state kept under {}", base.display());
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    if failed {
        bail!("soak failed");
    }
    println!("soak passed");
    Ok(())
}

/// Claims left in the netdev, cpu and kubelet-plugin checkpoints (daemons stopped).
fn checkpoint_claims(node: &Node) -> Vec<String> {
    let mut live = Vec::new();
    let st = &node.state_dir;
    for (dir, name, proc_root) in [
        (
            st.join("netdev"),
            "netdev.checkpoint",
            node.net_proc_root.clone(),
        ),
        (st.join("cpu"), "cpu.checkpoint", PathBuf::from("/proc")),
    ] {
        if !dir.join(name).exists() {
            continue;
        }
        let mut o = drakit_types::checkpoint::Options::new(&dir, name);
        o.boot_id = drakit_types::checkpoint::BootIdSource::ProcRoot(proc_root);
        match drakit_types::checkpoint::Checkpoint::<Value>::open(o) {
            Ok((cp, _)) => live.extend(cp.entries().keys().map(|k| format!("{name}: {k}"))),
            Err(e) => live.push(format!("{name}: unreadable: {e}")),
        }
    }
    // The kubelet plugin: one checkpoint per driver, `<state>/<driver>/claims.checkpoint`.
    for e in std::fs::read_dir(st.join("kubelet-plugin"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let j = e.path().join("claims.checkpoint");
        if !j.exists() {
            continue;
        }
        let o = drakit_types::checkpoint::Options::new(e.path(), "claims.checkpoint");
        match drakit_types::checkpoint::Checkpoint::<Value>::open(o) {
            Ok((cp, _)) => {
                live.extend(cp.entries().keys().map(|u| format!("{}: {u}", j.display())))
            }
            Err(e) => live.push(format!("{}: unreadable: {e}", j.display())),
        }
    }
    live
}

fn log_panics(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("panicked at")) {
            bad.push(format!("{}: {l}", e.path().display()));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_a_function_of_the_seed() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let va: Vec<u64> = (0..5).map(|_| a.next()).collect();
        let vb: Vec<u64> = (0..5).map(|_| b.next()).collect();
        assert_eq!(va, vb);
        assert_ne!(Rng::new(8).next(), va[0]);
        let mut r = Rng::new(0);
        assert!((0..1000).all(|_| r.below(3) < 3));
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }

    #[test]
    fn cpulists() {
        assert_eq!(cpulist("0-2,5"), BTreeSet::from([0, 1, 2, 5]));
        assert_eq!(cpulist(""), BTreeSet::new());
    }

    #[test]
    fn claim_objects_carry_allocation_and_config() {
        let c = ClaimSpec {
            name: "c".into(),
            uid: "u".into(),
            driver: CPU,
            devices: vec!["cpu1".into(), "cpu2".into()],
            params: Some(json!({"kind": "CpuConfig"})),
        };
        let v = c.object("node-1", "p", "pu");
        assert_eq!(
            v["status"]["allocation"]["devices"]["results"][1]["device"],
            "cpu2"
        );
        assert_eq!(
            v["status"]["allocation"]["devices"]["config"][0]["source"],
            "FromClaim"
        );
        assert_eq!(v["spec"]["devices"]["requests"][0]["exactly"]["count"], 2);
        assert_eq!(v["status"]["reservedFor"][0]["uid"], "pu");
    }
}
