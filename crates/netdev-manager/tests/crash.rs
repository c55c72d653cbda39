//! Crash consistency on the real kernel: the `drakit-netdev` binary (built for these tests with
//! the `crash-injection` feature) runs in a namespace playing the host, and is started with
//! `DRAKIT_CRASH_AT=<step>` for every step of `manager::CRASH_STEPS` that a claim kind reaches.
//! A claim then goes prepare → AttachPod → DetachPod → unprepare (attach mode cdi: prepare →
//! unprepare) over the daemon's gRPC socket. The daemon must abort at the step (SIGABRT and the
//! marker line on stderr; a step not reached fails the test); it is started again without the
//! variable and the call that died is retried, as the kubelet plugin and drakit-nri do. After
//! every call the answer (MACs aside, which must match the live link) and the link lists of both
//! namespaces (names and addresses) must equal those of a crash-free run; after the restart no
//! drakit link may exist on the host that neither the state before nor after the call explains;
//! at the end both namespaces are as they started and the checkpoint holds no claim.
//!
//! Kinds: veth (host pair + move), macvlan (created in the pod), RoCE (a physical link moved
//! in and back; the HCA comes from the `roce-nic` sysfs fixture, its netdev `ens3f0np0` is a real
//! veth standing in), and a veth in attach mode cdi (created on the host at prepare; a stand-in
//! `runc features` lists netDevices).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestNs;
use drakit_netdev::manager::CRASH_STEPS;
use drakit_netdev::server::{connect_attach, connect_backend};
use drakit_proto::drakit as pb;

const BIN: &str = env!("CARGO_BIN_EXE_drakit-netdev");
const T: Duration = Duration::from_secs(15);
const POOL: &str = "node-c";
const POD: &str = "c0a5e000-0000-4000-8000-00000000000a";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Prepare,
    Attach,
    Detach,
    Unprepare,
}

struct Kind {
    name: &'static str,
    uid: &'static str,
    device: &'static str,
    config: &'static str,
    ops: &'static [Op],
    /// The steps this kind reaches (each must abort the daemon).
    steps: &'static [&'static str],
}

const ALL_OPS: &[Op] = &[Op::Prepare, Op::Attach, Op::Detach, Op::Unprepare];

const KINDS: &[Kind] = &[
    Kind {
        name: "veth",
        uid: "c0a5e000-0000-4000-8000-000000000001",
        device: "netdev-virtual",
        config: r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"veth","interfaceName":"eth1","mtu":1400,"addresses":["10.77.1.2/24"],"routes":[{"dst":"10.78.0.0/16","gateway":"10.77.1.1"}]}}"#,
        ops: ALL_OPS,
        steps: &[
            "prepare-after-checkpoint",
            "after-link-create",
            "after-move-to-netns",
            "attach-before-checkpoint",
            "attach-after-checkpoint",
            "detach-before-checkpoint",
            "unprepare-before-checkpoint",
        ],
    },
    Kind {
        name: "macvlan",
        uid: "c0a5e000-0000-4000-8000-000000000002",
        device: "netdev-virtual",
        config: r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"macvlan","parent":"eth0","interfaceName":"net1","addresses":["10.77.2.2/24"]}}"#,
        ops: ALL_OPS,
        steps: &[
            "prepare-after-checkpoint",
            "after-link-create",
            "attach-before-checkpoint",
            "attach-after-checkpoint",
            "detach-before-checkpoint",
            "unprepare-before-checkpoint",
        ],
    },
    Kind {
        name: "roce",
        uid: "c0a5e000-0000-4000-8000-000000000003",
        device: "rdma-mlx5-1",
        config: r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"RoceConfig","rdma":{"kind":"uverbs","rdmaCm":true},"netdev":{"kind":"host-device","interfaceName":"rdma0","addresses":["192.168.77.2/24"]}}"#,
        ops: ALL_OPS,
        steps: &[
            "prepare-after-checkpoint",
            "after-move-to-netns",
            "attach-before-checkpoint",
            "attach-after-checkpoint",
            "detach-before-checkpoint",
            "unprepare-before-checkpoint",
        ],
    },
    Kind {
        name: "veth-cdi",
        uid: "c0a5e000-0000-4000-8000-000000000004",
        device: "netdev-virtual",
        config: r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"veth","interfaceName":"eth2","attachMode":"cdi","addresses":["10.77.4.2/24"]}}"#,
        ops: &[Op::Prepare, Op::Unprepare],
        steps: &[
            "after-link-create",
            "prepare-after-link-create",
            "prepare-after-checkpoint",
            "unprepare-before-checkpoint",
        ],
    },
];

/// The host namespace's own links (a veth pair for the macvlan parent, one standing in for the
/// RoCE netdev).
const HOST_LINKS: [&str; 5] = ["ens3f0np0", "ens3f0np0p", "eth0", "eth0p", "lo"];

struct Env {
    host: TestNs,
    pod: TestNs,
    dir: tempfile::TempDir,
    sock: PathBuf,
    runc: PathBuf,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roce-nic")
}

impl Env {
    fn new() -> Option<Env> {
        let host = TestNs::create("ch")?;
        let pod = TestNs::create("cp")?;
        for (a, b) in [("eth0", "eth0p"), ("ens3f0np0", "ens3f0np0p")] {
            let out = host.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
            assert!(!out.starts_with("ERR"), "{out}");
            for l in [a, b] {
                assert!(!host.ip(&["link", "set", l, "up"]).starts_with("ERR"));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let runc = dir.path().join("runc");
        std::fs::write(
            &runc,
            "#!/bin/sh\necho '{\"ociVersionMin\":\"1.0.0\",\"netDevices\":{\"enabled\":true}}'\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("run/netdev.sock");
        Some(Env {
            host,
            pod,
            dir,
            sock,
            runc,
        })
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("netdev.log")
    }

    fn spawn(&self, crash_at: Option<&str>) -> Daemon {
        let f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let fx = fixture();
        let mut cmd = Command::new("ip");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .args(["netns", "exec", &self.host.name, BIN])
            .arg("--socket")
            .arg(&self.sock)
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--sys-root")
            .arg(fx.join("sys"))
            .arg("--proc-root")
            .arg(fx.join("proc"))
            .args(["--pool", POOL, "--rescan-seconds", "3600"])
            .arg("--runc")
            .arg(&self.runc)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f));
        if let Some(s) = crash_at {
            cmd.env(drakit_types::crash::ENV, s);
        }
        let _ = std::fs::remove_file(&self.sock);
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            child,
            log: self.log(),
        };
        let start = Instant::now();
        while !self.sock.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("drakit-netdev exited at start ({st}):\n{}", d.log_text());
            }
            assert!(start.elapsed() < T, "drakit-netdev did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// Link names of a namespace with their global addresses, sorted.
    fn links(ns: &TestNs) -> Vec<String> {
        let out = ns.ip(&["-o", "addr", "show", "scope", "global"]);
        let mut addrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in out.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 3 {
                addrs
                    .entry(f[1].split('@').next().unwrap_or_default().to_owned())
                    .or_default()
                    .push(f[3].to_owned());
            }
        }
        ns.link_names()
            .into_iter()
            .map(|n| match addrs.get(&n) {
                Some(a) => format!("{n} {}", a.join(",")),
                None => n,
            })
            .collect()
    }

    fn snapshot(&self) -> (Vec<String>, Vec<String>) {
        (Self::links(&self.host), Self::links(&self.pod))
    }

    /// Host links that carry a drakit mark or temporary name.
    fn drakit_host_links(&self) -> Vec<String> {
        let out = self.host.ip(&["-o", "-d", "link", "show"]);
        out.lines()
            .filter_map(|l| {
                let name = l.split(": ").nth(1)?.split('@').next()?.to_owned();
                let temp = name.len() == 13 && name.starts_with("dk");
                (l.contains("alias drakit:") || temp).then_some(name)
            })
            .collect()
    }

    fn mac_in_pod(&self, ifname: &str) -> String {
        let out = self.pod.ip(&["-o", "link", "show", ifname]);
        out.split("link/ether ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or_default()
            .to_owned()
    }
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn expect_abort(&mut self, step: &str) -> Result<(), String> {
        use std::os::unix::process::ExitStatusExt;
        let start = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > T {
                return Err(format!(
                    "step {step} not reached: the daemon is still running"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // `ip netns exec` execs the daemon (same pid); a forking `ip` would report 128 + 6.
        let aborted = st.signal() == Some(6) || st.code() == Some(134);
        let marker = drakit_types::crash::marker("drakit-netdev", step);
        let log = self.log_text();
        if !aborted {
            return Err(format!(
                "step {step}: the daemon ended with {st}, not SIGABRT:\n{log}"
            ));
        }
        if !log.lines().any(|l| l.trim() == marker) {
            return Err(format!("step {step}: no marker line {marker:?}:\n{log}"));
        }
        Ok(())
    }

    fn stop(mut self) -> Result<(), String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < T {
            if let Ok(Some(st)) = self.child.try_wait() {
                return if st.success() {
                    Ok(())
                } else {
                    Err(format!("daemon exited with {st}:\n{}", self.log_text()))
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("daemon did not stop on SIGTERM".into())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn claim(k: &Kind) -> pb::ClaimRef {
    pb::ClaimRef {
        namespace: "default".into(),
        name: k.name.into(),
        uid: k.uid.into(),
    }
}

/// One call's answer, MACs blanked (checked against the live link instead).
async fn call(env: &Env, k: &Kind, op: Op) -> Result<String, String> {
    let t = Duration::from_secs(5);
    let e = |e: tonic::Status| format!("{op:?}: {} {}", e.code(), e.message());
    let c = |e: tonic::transport::Error| format!("{op:?}: connecting: {e}");
    match op {
        Op::Prepare => {
            let mut b = connect_backend(&env.sock, t).await.map_err(c)?;
            let r = b
                .prepare(pb::PrepareRequest {
                    claim: Some(claim(k)),
                    devices: vec![pb::AllocatedDevice {
                        requests: vec!["r".into()],
                        pool: POOL.into(),
                        device: k.device.into(),
                        config_json: k.config.into(),
                        ..Default::default()
                    }],
                    reserved_for_pods: vec![POD.into()],
                    boot_id: String::new(),
                })
                .await
                .map_err(e)?
                .into_inner();
            Ok(format!("{r:?}"))
        }
        Op::Attach => {
            let mut a = connect_attach(&env.sock, t).await.map_err(c)?;
            let mut r = a
                .attach_pod(pb::AttachPodRequest {
                    pod_uid: POD.into(),
                    netns_path: env.pod.path().display().to_string(),
                    sandbox_id: "sandbox-c".into(),
                    ..Default::default()
                })
                .await
                .map_err(e)?
                .into_inner();
            for i in &mut r.interfaces {
                // A retry after a crash past the attach's checkpoint finds the device attached
                // and says so; the rest of the answer must be the same.
                i.already_attached = false;
                if let Some(nd) = i.network_data.as_mut() {
                    let live = env.mac_in_pod(&nd.interface_name);
                    if nd.hardware_address != live {
                        return Err(format!(
                            "AttachPod answered MAC {} for {}, the link has {live}",
                            nd.hardware_address, nd.interface_name
                        ));
                    }
                    nd.hardware_address.clear();
                }
            }
            Ok(format!("{r:?}"))
        }
        Op::Detach => {
            let mut a = connect_attach(&env.sock, t).await.map_err(c)?;
            let r = a
                .detach_pod(pb::DetachPodRequest {
                    pod_uid: POD.into(),
                    sandbox_id: "sandbox-c".into(),
                    netns_path: env.pod.path().display().to_string(),
                })
                .await
                .map_err(e)?
                .into_inner();
            if !r.errors.is_empty() {
                return Err(format!("DetachPod: {:?}", r.errors));
            }
            Ok(format!("{r:?}"))
        }
        Op::Unprepare => {
            let mut b = connect_backend(&env.sock, t).await.map_err(c)?;
            let r = b
                .unprepare(pb::UnprepareRequest {
                    claim: Some(claim(k)),
                })
                .await
                .map_err(e)?
                .into_inner();
            Ok(format!("{r:?}"))
        }
    }
}

/// After each call of a crash-free run: the answer and both namespaces' links.
type Trace = Vec<(String, (Vec<String>, Vec<String>))>;

async fn reference(k: &Kind) -> Option<Trace> {
    let env = Env::new()?;
    assert_eq!(Env::links(&env.host), HOST_LINKS);
    let d = env.spawn(None);
    let mut trace = Vec::new();
    for op in k.ops {
        let a = call(&env, k, *op)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", k.name, d.log_text()));
        trace.push((a, env.snapshot()));
    }
    d.stop().unwrap();
    assert_eq!(
        env.snapshot(),
        (HOST_LINKS.map(String::from).to_vec(), vec!["lo".to_owned()])
    );
    Some(trace)
}

fn checkpoint_claims(dir: &Path) -> Vec<String> {
    let mut o = drakit_types::checkpoint::Options::new(dir.join("state"), "netdev.checkpoint");
    o.boot_id = drakit_types::checkpoint::BootIdSource::ProcRoot(fixture().join("proc"));
    match drakit_types::checkpoint::Checkpoint::<serde_json::Value>::open(o) {
        Ok((cp, _)) => cp.entries().keys().cloned().collect(),
        Err(e) => vec![format!("unreadable checkpoint: {e}")],
    }
}

/// Steps reached inside AttachPod.
const ATTACH_STEPS: [&str; 4] = [
    "after-link-create",
    "after-move-to-netns",
    "attach-before-checkpoint",
    "attach-after-checkpoint",
];

/// How the caller goes on after the crash: retry the call (the usual case), or, for a crash
/// inside AttachPod, give the pod up (the sandbox failed: DetachPod with its namespace, then
/// unprepare) without ever retrying the attach.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    Retry,
    GiveUp,
}

async fn crash_run(k: &Kind, step: &str, want: &Trace, after: After) -> Result<(), String> {
    let env = Env::new().ok_or("namespaces vanished")?;
    let mut d = env.spawn(Some(step));
    let mut crashed = false;
    let mut before = env.snapshot();
    for (i, op) in k.ops.iter().enumerate() {
        let (want_answer, want_links) = &want[i];
        let got = match call(&env, k, *op).await {
            Ok(a) if !crashed => {
                // No crash in this call: it must have run as in a crash-free run.
                a
            }
            Ok(a) => a,
            Err(first) if !crashed => {
                d.expect_abort(step)
                    .map_err(|e| format!("{op:?} failed ({first}) and {e}"))?;
                crashed = true;
                // The start-up reconcile must leave no drakit link on the host that neither the
                // state before this call nor the one after it explains.
                d = env.spawn(None);
                let allowed: Vec<&String> = before.0.iter().chain(&want_links.0).collect();
                for l in env.drakit_host_links() {
                    if !allowed
                        .iter()
                        .any(|a| a.split(' ').next() == Some(l.as_str()))
                    {
                        return Err(format!(
                            "after the restart, orphan host link {l}; host: {:?}\n{}",
                            Env::links(&env.host),
                            d.log_text()
                        ));
                    }
                }
                if after == After::GiveUp {
                    if *op != Op::Attach {
                        return Err(format!("step {step} was reached in {op:?}, not in Attach"));
                    }
                    before = env.snapshot();
                    continue;
                }
                call(&env, k, *op).await.map_err(|e| {
                    format!(
                        "the retried {op:?} after a crash at {step} failed: {e}\n{}",
                        d.log_text()
                    )
                })?
            }
            Err(e) => return Err(format!("{op:?} after the restart: {e}\n{}", d.log_text())),
        };
        if &got != want_answer {
            return Err(format!(
                "{op:?} answered\n  {got}\na crash-free run answered\n  {want_answer}"
            ));
        }
        let now = env.snapshot();
        if &now != want_links {
            return Err(format!(
                "after {op:?}: links (host, pod) {now:?}, a crash-free run has {want_links:?}\n{}",
                d.log_text()
            ));
        }
        before = now;
    }
    if !crashed {
        let _ = d.stop();
        return Err(format!("step {step} was never reached (no abort)"));
    }
    d.stop()?;
    let left = checkpoint_claims(env.dir.path());
    if !left.is_empty() {
        return Err(format!("claims left in the checkpoint: {left:?}"));
    }
    let end = env.snapshot();
    if end.0 != HOST_LINKS || end.1 != ["lo"] {
        return Err(format!("namespaces not as they started: {end:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_step_ends_consistent() {
    // Every step is reached by some kind.
    for s in CRASH_STEPS {
        assert!(
            KINDS.iter().any(|k| k.steps.contains(s)),
            "step {s} is not exercised by any kind"
        );
    }
    let mut failures = Vec::new();
    let mut runs = 0;
    for k in KINDS {
        let Some(want) = reference(k).await else {
            return; // skipped: printed by TestNs::create
        };
        for step in k.steps {
            let mut modes = vec![After::Retry];
            if k.ops.contains(&Op::Attach) && ATTACH_STEPS.contains(step) {
                modes.push(After::GiveUp);
            }
            for after in modes {
                runs += 1;
                if let Err(e) = crash_run(k, step, &want, after).await {
                    failures.push(format!("[{} / {step} / {after:?}] {e}", k.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} crash runs failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn an_unknown_step_is_refused_at_start() {
    let out = Command::new(BIN)
        .env(drakit_types::crash::ENV, "no-such-step")
        .args(["--socket", "/nonexistent/dir/x.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no-such-step") && err.contains("after-link-create"),
        "{err}"
    );
}
