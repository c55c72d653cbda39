//! Crash consistency: the real `drakit-kubelet-plugin` binary (this crate's tests build it with
//! the `crash-injection` feature) is started with `DRAKIT_CRASH_AT=<step>` for every step of
//! `driver::CRASH_STEPS` and every driver, aborts there (the marker line on its stderr proves the
//! step was reached; a run that does not abort fails), is started again without it, and the
//! kubelet's retry of the same call must give the answer a crash-free run gives. After each
//! restart and at the end: the CDI specs on disk are exactly the checkpoint's (none stale, none
//! missing, byte for byte, no temp file left), the backends hold exactly the checkpointed claims,
//! the claim status carries the network data; after unprepare nothing is left anywhere.
//!
//! Peers: the kubelet simulator and the API server stand-in of `drakit-e2e`, the fake net and
//! cpu backends of `tests/common` (real `drakit.v1.Backend` gRPC on unix sockets, in this
//! process, so they outlive the plugin's crashes), the in-process runtime backend.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use drakit_e2e::apiserver::ClaimBuilder;
use drakit_e2e::kubelet::{ClaimRef, PreparedDevice};
use drakit_kubelet_plugin::driver::CRASH_STEPS;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_drakit-kubelet-plugin");
const T: Duration = Duration::from_secs(15);
const DRIVERS: [&str; 3] = [NET, CPU, RUNTIME];

/// The plugin as a child process, its stdout + stderr in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(n: &TestNode, crash_at: Option<&str>, log: &Path) -> Proc {
        let c = &n.config;
        let f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        // Nothing from the caller's environment (DRAKIT_*, NODE_NAME, KUBECONFIG) leaks in.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .arg("--node-name")
            .arg(NODE)
            .arg("--kubeconfig")
            .arg(c.kubeconfig.as_ref().unwrap())
            .arg("--registry-dir")
            .arg(&c.registry_dir)
            .arg("--plugins-dir")
            .arg(&c.plugins_dir)
            .arg("--cdi-dir")
            .arg(&c.cdi_dir)
            .arg("--state-dir")
            .arg(&c.state_dir)
            .arg("--run-dir")
            .arg(n.tmp.path().join("run/drakit"))
            .arg("--cgroupfs-root")
            .arg(&c.cgroupfs_root)
            .arg("--proc-root")
            .arg(&c.proc_root)
            .arg("--netdev-socket")
            .arg(&n.net.socket)
            .arg("--cpu-socket")
            .arg(&n.cpu.socket)
            .args(["--api-budget-seconds", "5", "--shutdown-grace-seconds", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f));
        if let Some(step) = crash_at {
            cmd.env(drakit_types::crash::ENV, step);
        }
        Proc {
            child: cmd.spawn().expect("starting drakit-kubelet-plugin"),
            log: log.to_path_buf(),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the abort at `step`: killed by SIGABRT, marker line on stderr.
    fn expect_abort(&mut self, step: &str) -> Result<(), String> {
        use std::os::unix::process::ExitStatusExt;
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > T {
                return Err(format!(
                    "step {step} not reached: the plugin is still running after {T:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let marker = drakit_types::crash::marker("drakit-kubelet-plugin", step);
        let log = self.log_text();
        if status.signal() != Some(6) {
            return Err(format!(
                "step {step}: the plugin ended with {status}, not SIGABRT; log:\n{log}"
            ));
        }
        if !log.lines().any(|l| l.trim() == marker) {
            return Err(format!(
                "step {step}: no marker line {marker:?} on stderr; log:\n{log}"
            ));
        }
        Ok(())
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < T {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn claim_name(driver: &str) -> &'static str {
    match driver {
        NET => "nic",
        CPU => "cpus",
        _ => "io",
    }
}

fn claim_uid(driver: &str) -> &'static str {
    match driver {
        NET => "c0a50001-0000-4000-8000-000000000001",
        CPU => "c0a50001-0000-4000-8000-000000000002",
        _ => "c0a50001-0000-4000-8000-000000000003",
    }
}

fn cref(driver: &str) -> ClaimRef {
    ClaimRef::new("default", claim_name(driver), claim_uid(driver))
}

fn insert_claims(n: &TestNode) {
    let api = &n.node.api;
    api.insert_claim(
        &ClaimBuilder::new("default", claim_name(NET))
            .uid(claim_uid(NET))
            .device(NET, NODE, "eth1", "nic")
            .config_from_claim(
                NET,
                &["nic"],
                json!({"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig",
                       "netdev":{"kind":"macvlan","interfaceName":"net1","parent":"eth0"}}),
            )
            .reserved_for_pod("pod-a", "pod-uid-a")
            .build(),
    )
    .unwrap();
    api.insert_claim(
        &ClaimBuilder::new("default", claim_name(CPU))
            .uid(claim_uid(CPU))
            .device(CPU, NODE, "cpu2", "cpus")
            .reserved_for_pod("pod-a", "pod-uid-a")
            .build(),
    )
    .unwrap();
    api.insert_claim(
        &ClaimBuilder::new("default", claim_name(RUNTIME))
            .uid(claim_uid(RUNTIME))
            .device(RUNTIME, NODE, "spec-edit-0", "edit")
            .config_from_claim(
                RUNTIME,
                &["edit"],
                runtime_config(
                    json!({"linux":{"resources":{"unified":{"io.max":"259:0 rbps=2097152"}}}}),
                ),
            )
            .reserved_for_pod("pod-a", "pod-uid-a")
            .build(),
    )
    .unwrap();
}

async fn wait_registered(n: &TestNode, after: &BTreeMap<String, u64>) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let all = DRIVERS.iter().all(|d| {
            n.node
                .kubelet
                .driver(d)
                .is_some_and(|p| p.sequence > after.get(*d).copied().unwrap_or(0))
        });
        if all {
            return Ok(());
        }
        if start.elapsed() > T {
            return Err(format!("drivers did not register within {T:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sequences(n: &TestNode) -> BTreeMap<String, u64> {
    DRIVERS
        .iter()
        .map(|d| {
            (
                d.to_string(),
                n.node.kubelet.driver(d).map(|p| p.sequence).unwrap_or(0),
            )
        })
        .collect()
}

/// Live claims of a driver's checkpoint (uid → CDI spec text), read without the plugin's or
/// drakit-types' code, from the documented layout: header `"DRAKITCK" | u32 version | u16 boot-id
/// length | boot id | u32 CRC`, then `[u32 len][u32 crc32][JSON]` records `{"put":[uid, record]}`
/// or `{"del":uid}`; replay stops at the first torn or corrupt one.
fn journal(n: &TestNode, driver: &str) -> BTreeMap<String, String> {
    let path = n.config.state_dir.join(driver).join("claims.checkpoint");
    let b = std::fs::read(path).unwrap_or_default();
    let mut live = BTreeMap::new();
    if b.len() < 14 || &b[..8] != b"DRAKITCK" {
        return live;
    }
    let id_len = u16::from_le_bytes([b[12], b[13]]) as usize;
    let mut i = 14 + id_len + 4;
    while i + 8 <= b.len() {
        let len = u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(b[i + 4..i + 8].try_into().unwrap());
        let Some(payload) = b.get(i + 8..i + 8 + len) else {
            break;
        };
        if crc32(payload) != crc {
            break;
        }
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        if let Some(put) = v.get("put") {
            let uid = put[0].as_str().unwrap_or_default().to_owned();
            live.insert(
                uid,
                put[1]["cdi_spec"].as_str().unwrap_or_default().to_owned(),
            );
        } else if let Some(uid) = v.get("del").and_then(|u| u.as_str()) {
            live.remove(uid);
        }
        i += 8 + len;
    }
    live
}

/// CRC-32 (IEEE), bitwise: the test does not share the plugin's checksum code.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The node-wide invariant: every CDI file is the spec of a checkpointed claim (byte for byte),
/// every checkpointed claim with a spec has its file, no temp file, and each fake backend holds
/// exactly the claims its driver checkpointed, plus at most `in_flight` (a claim whose call died
/// after the backend acted: the kubelet's retry settles it). Backends are reconciled in the
/// background at start-up, so this polls for a while.
async fn consistent(n: &TestNode, what: &str, in_flight: Option<&str>) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let r = check_once(n, what, in_flight);
        if r.is_ok() || start.elapsed() > Duration::from_secs(5) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check_once(n: &TestNode, what: &str, in_flight: Option<&str>) -> Result<(), String> {
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for d in DRIVERS {
        for (uid, spec) in journal(n, d) {
            if !spec.is_empty() {
                want.insert(format!("{d}-claim_{uid}.json"), spec);
            }
        }
    }
    let mut have: BTreeMap<String, String> = BTreeMap::new();
    let entries = std::fs::read_dir(&n.config.cdi_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for f in entries {
        let text = std::fs::read_to_string(n.config.cdi_dir.join(&f)).unwrap_or_default();
        have.insert(f, text);
    }
    if have != want {
        let hk: Vec<_> = have.keys().collect();
        let wk: Vec<_> = want.keys().collect();
        return Err(format!(
            "{what}: CDI dir {hk:?} does not match the checkpoints {wk:?} (or contents differ)"
        ));
    }
    for (fake, d) in [(&n.net, NET), (&n.cpu, CPU)] {
        let cp: Vec<String> = journal(n, d).into_keys().collect();
        let mut held = fake.prepared();
        if let Some(uid) = in_flight
            && !cp.iter().any(|c| c == uid)
        {
            held.retain(|h| h != uid);
        }
        if held != cp {
            return Err(format!(
                "{what}: backend of {d} holds {:?}, its checkpoint {cp:?}",
                fake.prepared()
            ));
        }
    }
    Ok(())
}

async fn prepare(n: &TestNode, driver: &str) -> Result<Vec<PreparedDevice>, String> {
    let c = cref(driver);
    let r = n
        .node
        .kubelet
        .prepare(driver, std::slice::from_ref(&c))
        .await
        .map_err(|e| format!("prepare {driver}: {e}"))?;
    r.get(&c.uid)
        .cloned()
        .unwrap_or_else(|| Err("no answer for the claim".into()))
        .map_err(|e| format!("prepare {driver}: {e}"))
}

async fn unprepare(n: &TestNode, driver: &str) -> Result<(), String> {
    let c = cref(driver);
    let r = n
        .node
        .kubelet
        .unprepare(driver, std::slice::from_ref(&c))
        .await
        .map_err(|e| format!("unprepare {driver}: {e}"))?;
    r.get(&c.uid)
        .cloned()
        .unwrap_or_else(|| Err("no answer for the claim".into()))
        .map_err(|e| format!("unprepare {driver}: {e}"))
}

async fn net_status(n: &TestNode) -> Result<(), String> {
    let st = n
        .node
        .api
        .wait_for("claim status", T, |api| {
            api.claim("default", claim_name(NET))
                .and_then(|c| c.status?.devices)
                .filter(|d| !d.is_empty())
        })
        .await
        .map_err(|e| format!("claim status of the net claim never written: {e}"))?;
    let ifname = st[0]
        .network_data
        .as_ref()
        .and_then(|d| d.interface_name.clone());
    if ifname.as_deref() != Some("net1") {
        return Err(format!(
            "claim status networkData: {:?}",
            st[0].network_data
        ));
    }
    Ok(())
}

/// What a crash-free node answers, and the CDI spec it writes, per driver.
struct Reference {
    answers: BTreeMap<&'static str, Vec<PreparedDevice>>,
    specs: BTreeMap<&'static str, String>,
}

async fn reference() -> Reference {
    let n = TestNode::start(true).await;
    insert_claims(&n);
    let p = Proc::spawn(&n, None, &n.tmp.path().join("plugin.log"));
    wait_registered(&n, &BTreeMap::new()).await.unwrap();
    let mut answers = BTreeMap::new();
    let mut specs = BTreeMap::new();
    for d in DRIVERS {
        answers.insert(d, prepare(&n, d).await.unwrap());
        specs.insert(d, journal(&n, d)[claim_uid(d)].clone());
        assert!(
            !specs[d].is_empty(),
            "{d}: the reference claim has a CDI spec"
        );
    }
    consistent(&n, "reference", None).await.unwrap();
    for d in DRIVERS {
        unprepare(&n, d).await.unwrap();
    }
    assert!(n.cdi_files().is_empty());
    p.stop();
    Reference { answers, specs }
}

/// After a crash inside a prepare, the kubelet either retries it (the pod is still wanted) or
/// gives the claim up (the pod was deleted meanwhile) and unprepares it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    Retry,
    GiveUp,
}

/// One crash run: `step` reached while `driver`'s claim is prepared (or unprepared).
async fn crash_run(
    step: &str,
    driver: &'static str,
    r: &Reference,
    after: After,
) -> Result<(), String> {
    let n = TestNode::start(true).await;
    insert_claims(&n);
    let log = n.tmp.path().join("plugin.log");
    let mut p = Proc::spawn(&n, Some(step), &log);
    wait_registered(&n, &BTreeMap::new()).await?;
    let in_unprepare = step.starts_with("unprepare-");
    let dump = |n: &TestNode, e: String| {
        format!(
            "{e}\n--- plugin log ---\n{}",
            std::fs::read_to_string(n.tmp.path().join("plugin.log")).unwrap_or_default()
        )
    };
    if in_unprepare {
        let got = prepare(&n, driver).await?;
        if got != r.answers[driver] {
            return Err(format!("{driver}: first prepare answered {got:?}"));
        }
    }
    let before = sequences(&n);
    // The call during which the plugin dies: whatever the kubelet gets back, it is no success.
    if in_unprepare {
        if let Ok(()) = unprepare(&n, driver).await {
            return Err(dump(&n, format!("{step}/{driver}: unprepare succeeded")));
        }
    } else if let Ok(d) = prepare(&n, driver).await {
        return Err(dump(
            &n,
            format!("{step}/{driver}: prepare succeeded: {d:?}"),
        ));
    }
    p.expect_abort(step)?;
    drop(p);

    // Start again without the variable, as the DaemonSet would; the kubelet retries.
    let p = Proc::spawn(&n, None, &log);
    wait_registered(&n, &before)
        .await
        .map_err(|e| dump(&n, e))?;
    consistent(&n, "after the restart", Some(claim_uid(driver)))
        .await
        .map_err(|e| dump(&n, e))?;
    if in_unprepare || after == After::GiveUp {
        unprepare(&n, driver).await.map_err(|e| dump(&n, e))?;
    } else {
        let got = prepare(&n, driver).await.map_err(|e| dump(&n, e))?;
        if got != r.answers[driver] {
            return Err(format!(
                "{driver}: the retried prepare answered {got:?}, a crash-free run {:?}",
                r.answers[driver]
            ));
        }
        let spec = journal(&n, driver)
            .get(claim_uid(driver))
            .cloned()
            .unwrap_or_default();
        if spec != r.specs[driver] {
            return Err(format!(
                "{driver}: CDI spec after the retry differs from a crash-free run's"
            ));
        }
        if driver == NET {
            net_status(&n).await.map_err(|e| dump(&n, e))?;
        }
    }
    consistent(&n, "after the retry", None)
        .await
        .map_err(|e| dump(&n, e))?;
    // The other drivers keep working beside it; then everything is released.
    for d in DRIVERS {
        if d != driver || in_unprepare || after == After::GiveUp {
            prepare(&n, d).await.map_err(|e| dump(&n, e))?;
        }
    }
    consistent(&n, "with every claim prepared", None)
        .await
        .map_err(|e| dump(&n, e))?;
    for d in DRIVERS {
        unprepare(&n, d).await.map_err(|e| dump(&n, e))?;
    }
    consistent(&n, "after unprepare", None)
        .await
        .map_err(|e| dump(&n, e))?;
    let left: Vec<String> = std::fs::read_dir(&n.config.cdi_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    if !left.is_empty() {
        return Err(format!("files left in the CDI dir: {left:?}"));
    }
    for d in DRIVERS {
        if !journal(&n, d).is_empty() {
            return Err(format!("{d}: checkpoint still holds claims"));
        }
    }
    if !n.net.prepared().is_empty() || !n.cpu.prepared().is_empty() {
        return Err("a backend still holds claims".into());
    }
    p.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_step_ends_consistent() {
    let r = reference().await;
    let mut failures = Vec::new();
    let mut ran = 0;
    for step in CRASH_STEPS {
        for driver in DRIVERS {
            let mut modes = vec![After::Retry];
            if !step.starts_with("unprepare-") {
                modes.push(After::GiveUp);
            }
            for after in modes {
                ran += 1;
                if let Err(e) = crash_run(step, driver, &r, after).await {
                    failures.push(format!("[{step} / {driver} / {after:?}] {e}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} crash runs failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_step_is_refused_at_start() {
    let n = TestNode::start(true).await;
    let log = n.tmp.path().join("plugin.log");
    let mut p = Proc::spawn(&n, Some("no-such-step"), &log);
    let st = p.child.wait().unwrap();
    assert!(!st.success());
    let text = p.log_text();
    assert!(
        text.contains("no-such-step") && text.contains("prepare-after-backend"),
        "{text}"
    );
}
