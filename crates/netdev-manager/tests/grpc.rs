//! The gRPC services through a real Unix socket in a temp dir (fake netlink behind), the
//! drakit-oci-hook binary against it, and the drakit-netdev binary's start-up and SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use drakit_netdev::addr::Mac;
use drakit_netdev::inventory::{FoundDevice, HostDevice};
use drakit_netdev::manager::{Manager, ManagerOptions};
use drakit_netdev::netlink::fake::{FakeNetlink, HOST};
use drakit_netdev::server::{NetdevService, connect_attach, connect_backend, serve};
use drakit_netdev::store::MemStore;
use drakit_proto::drakit as pb;

async fn wait_for(p: &Path) {
    for _ in 0..500 {
        if p.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("socket {} never appeared", p.display());
}

fn start(
    dir: &Path,
    allowed: Vec<u32>,
) -> (
    PathBuf,
    FakeNetlink,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let fake = FakeNetlink::new_world();
    fake.add_physical(HOST, "eth0", Mac([2, 0, 0, 0, 0, 1]), 1500);
    fake.add_ns("/fake/pod");
    fake.add_ns("/fake/proc/77/ns/net");
    let mut o = ManagerOptions::new("node-a");
    o.proc_root = "/fake/proc".into();
    let inv = vec![FoundDevice {
        name: "netdev-virtual".into(),
        host: HostDevice::Virtual,
        attributes: BTreeMap::new(),
        capacity: BTreeMap::new(),
        shared: true,
    }];
    let mgr = Arc::new(Manager::new(fake.clone(), MemStore::default(), o, inv).unwrap());
    let sock = dir.join("run/drakit/netdev.sock");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let s = sock.clone();
    let h = tokio::spawn(async move {
        serve(NetdevService::new(mgr), &s, allowed, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (sock, fake, tx, h)
}

fn prep(uid: &str, cfg: &str, pod: &str) -> pb::PrepareRequest {
    pb::PrepareRequest {
        claim: Some(pb::ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: uid.into(),
        }),
        devices: vec![pb::AllocatedDevice {
            device: "netdev-virtual".into(),
            pool: "node-a".into(),
            config_json: cfg.into(),
            ..Default::default()
        }],
        reserved_for_pods: vec![pod.into()],
        boot_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_and_attach_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, fake, stop, h) = start(dir.path(), vec![0, unsafe_free_uid()]);
    wait_for(&sock).await;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    let mut b = connect_backend(&sock, Duration::from_secs(5))
        .await
        .unwrap();
    let mut stream = b
        .watch_devices(pb::WatchDevicesRequest {
            driver: "net.drakit.dev".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let inv = stream.message().await.unwrap().unwrap();
    assert_eq!(inv.devices[0].name, "netdev-virtual");
    assert_eq!(inv.pool, "node-a");

    let r = b.prepare(prep("g1", r#"{"netdev":{"kind":"macvlan","parent":"eth0","interfaceName":"net1","addresses":["10.0.0.2/24"]}}"#, "pod-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.devices[0].network_data.as_ref().unwrap().interface_name,
        "net1"
    );
    let e = b
        .prepare(prep(
            "g2",
            r#"{"netdev":{"kind":"macvlan","mode":"x"}}"#,
            "pod-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("g2") && e.message().contains("mode"),
        "{}",
        e.message()
    );

    let mut a = connect_attach(&sock, Duration::from_secs(5)).await.unwrap();
    let resp = a
        .attach_pod(pb::AttachPodRequest {
            pod_uid: "pod-1".into(),
            netns_path: "/fake/pod".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.interfaces[0].network_data.as_ref().unwrap().ips,
        vec!["10.0.0.2/24"]
    );
    assert_eq!(fake.names_in("/fake/pod"), ["net1"]);
    assert!(!resp.interfaces[0].already_attached);
    // A repeated AttachPod (the NRI sidecar's late attach after a Synchronize) changes nothing
    // and says the device was already there.
    let again = a
        .attach_pod(pb::AttachPodRequest {
            pod_uid: "pod-1".into(),
            netns_path: "/fake/pod".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.interfaces[0].already_attached);
    assert_eq!(
        again.interfaces[0].network_data,
        resp.interfaces[0].network_data
    );
    assert_eq!(fake.names_in("/fake/pod"), ["net1"]);
    let e = a
        .attach_pod(pb::AttachPodRequest {
            pod_uid: "pod-1".into(),
            netns_path: "/fake/pod".into(),
            host_network: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let d = a
        .detach_pod(pb::DetachPodRequest {
            pod_uid: "pod-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.errors.is_empty());
    assert!(fake.names_in("/fake/pod").is_empty());
    b.unprepare(pb::UnprepareRequest {
        claim: Some(pb::ClaimRef {
            uid: "g1".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();

    // The hook binary: hook-mode claim, OCI state on stdin.
    b.prepare(prep(
        "h1",
        r#"{"netdev":{"kind":"veth","interfaceName":"eth9","attachMode":"hook"}}"#,
        "pod-9",
    ))
    .await
    .unwrap();
    let state = r#"{"ociVersion":"1.2.0","id":"c","status":"creating","pid":77,"bundle":"/b","annotations":{"io.kubernetes.cri.sandbox-uid":"pod-9"}}"#;
    let out = run_hook(&sock, "h1", state).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("eth9 "));
    assert_eq!(fake.names_in("/fake/proc/77/ns/net"), ["eth9"]);
    let out = run_hook(&sock, "unknown-claim", state).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown-claim") && err.contains("not prepared"),
        "{err}"
    );
    let out = run_hook(&dir.path().join("nope.sock"), "h1", state).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach drakit-netdev"));
    let out = run_hook(&sock, "h1", "not json").await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("OCI state"));

    drop(stream);
    drop(a);
    drop(b);
    stop.send(()).unwrap();
    h.await.unwrap();
    assert!(!sock.exists(), "socket removed on shutdown");
}

/// A uid no test runs as, to prove the allow-list is what admits root.
fn unsafe_free_uid() -> u32 {
    4_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_with_other_uids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, _fake, stop, h) = start(dir.path(), vec![4_000_001]);
    wait_for(&sock).await;
    let res = async {
        let mut b = connect_backend(&sock, Duration::from_secs(2)).await?;
        b.unprepare(pb::UnprepareRequest::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(
        res.is_err(),
        "a caller whose uid is not allowed must be refused"
    );
    stop.send(()).unwrap();
    h.await.unwrap();
}

async fn run_hook(sock: &Path, claim: &str, state: &str) -> std::process::Output {
    let sock = sock.to_path_buf();
    let claim = claim.to_string();
    let state = state.to_string();
    tokio::task::spawn_blocking(move || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_drakit-oci-hook"))
            .args(["--claim-uid", &claim, "--socket"])
            .arg(&sock)
            .args(["--timeout-ms", "5000"])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(state.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[test]
fn daemon_starts_serves_and_stops_on_sigterm() {
    // Run inside a fresh namespace so start-up reconcile sees only that namespace's links.
    let Some(ns) = common::TestNs::create("bin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sriov-nic");
    let sock = dir.path().join("s/netdev.sock");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_drakit-netdev"),
        ])
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--sys-root")
        .arg(fx.join("sys"))
        .arg("--proc-root")
        .arg(fx.join("proc"))
        .args(["--pool", "node-x"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..500 {
        if sock.exists() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let names = up.then(|| {
        rt.block_on(async {
            let mut b = connect_backend(&sock, Duration::from_secs(5))
                .await
                .unwrap();
            let mut s = b
                .watch_devices(pb::WatchDevicesRequest::default())
                .await
                .unwrap()
                .into_inner();
            let inv = s.message().await.unwrap().unwrap();
            (inv.pool, inv.devices.len())
        })
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(up, "daemon never listened: {err}");
    assert_eq!(names, Some(("node-x".to_string(), 10)));
    assert!(status.success(), "exit {status}: {err}");
    assert!(!sock.exists(), "socket left behind");
}

/// An open WatchDevices stream (the kubelet plugin keeps one) does not hold shutdown: the
/// stream ends and the server returns well inside the drain grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_watch_streams_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, _fake, stop, h) = start(dir.path(), vec![0]);
    wait_for(&sock).await;
    let mut b = connect_backend(&sock, Duration::from_secs(5))
        .await
        .unwrap();
    let mut stream = b
        .watch_devices(pb::WatchDevicesRequest {
            driver: "net.drakit.dev".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let t0 = std::time::Instant::now();
    stop.send(()).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("the stream ends at shutdown");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    tokio::time::timeout(Duration::from_secs(2), h)
        .await
        .expect("the server returns without sitting out the grace period")
        .unwrap();
    assert!(
        t0.elapsed() < drakit_netdev::server::SHUTDOWN_GRACE,
        "{:?}",
        t0.elapsed()
    );
    assert!(!sock.exists(), "socket removed");
}
