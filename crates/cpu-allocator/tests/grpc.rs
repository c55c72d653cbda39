//! The gRPC services through a real Unix socket in a temp dir, and the real binary.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drakit_cpu::fixture::materialize_named;
use drakit_cpu::inventory::{DeviceModel, GroupBy};
use drakit_cpu::server::{self, CpuService, PeerPolicy};
use drakit_cpu::store::MemoryStore;
use drakit_cpu::{CpuSet, Manager, PoolConfig, Topology};
use drakit_proto::drakit::backend_client::BackendClient;
use drakit_proto::drakit::cpu_pool_client::CpuPoolClient;
use drakit_proto::drakit::{
    AllocatedDevice, ClaimRef, CpuPoolWatchRequest, PrepareRequest, UnprepareRequest,
    WatchDevicesRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const BOOT: &str = "89da862f-7ffd-412e-82ca-c8b2773928da";

async fn connect(path: &Path) -> Channel {
    let path = path.to_path_buf();
    // Poll until the server accepts (no blind sleep), at most 20 s.
    for _ in 0..400 {
        if UnixStream::connect(&path).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Endpoint::try_from("http://drakit.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

fn grouped_request(uid: &str, count: &str) -> PrepareRequest {
    let mut consumed = HashMap::new();
    consumed.insert("cpus".to_string(), count.to_string());
    PrepareRequest {
        claim: Some(ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: uid.into(),
        }),
        devices: vec![AllocatedDevice {
            requests: vec!["cpus".into()],
            pool: "node".into(),
            device: "numa1".into(),
            share_id: format!("s-{uid}"),
            consumed_capacity: consumed,
            ..Default::default()
        }],
        reserved_for_pods: vec!["pod-1".into()],
        boot_id: BOOT.into(),
    }
}

struct Running {
    _dir: tempfile::TempDir,
    service: CpuService,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), server::ServerError>>,
}

fn start(policy: PeerPolicy) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    materialize_named("xeon-2s-smt", &sys).unwrap();
    let topo = Topology::discover(&sys).unwrap();
    let cfg = PoolConfig {
        model: DeviceModel::Grouped(GroupBy::Numa),
        reserved: CpuSet::parse("0,40").unwrap(),
        ..Default::default()
    };
    let m = Manager::new(topo, cfg, BOOT, Box::new(MemoryStore::new())).unwrap();
    let service = CpuService::new(m);
    let socket = dir.path().join("run/drakit/cpu.sock");
    let listener = server::bind(&socket).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let path = socket.clone();
    let svc = service.clone();
    let task = tokio::spawn(async move {
        server::serve(svc, listener, &path, policy, async {
            let _ = rx.await;
        })
        .await
    });
    Running {
        _dir: dir,
        service,
        socket,
        stop: Some(tx),
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_and_pool_over_a_unix_socket() {
    let mut srv = start(PeerPolicy::default());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&srv.socket), 0o600);
    assert_eq!(mode(srv.socket.parent().unwrap()), 0o700);

    let ch = connect(&srv.socket).await;
    let mut backend = BackendClient::new(ch.clone());
    let mut pool = CpuPoolClient::new(ch);

    let mut devices = backend
        .watch_devices(WatchDevicesRequest {
            driver: "cpu.drakit.dev".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let inv = devices.message().await.unwrap().unwrap();
    let names: Vec<&str> = inv.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["numa0", "numa1"]);

    let mut watch = pool
        .watch(CpuPoolWatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.shared_cpus, "1-39,41-79");
    assert_eq!(first.shared_mems, "0-1");
    assert!(first.assignments.is_empty());

    let resp = backend
        .prepare(grouped_request("uid-1", "4"))
        .await
        .unwrap()
        .into_inner();
    let env = &resp.devices[0].edits.as_ref().unwrap().env;
    assert_eq!(env, &vec!["DRAKIT_CPUS_uid_1=20-21,60-61".to_string()]);
    assert_eq!(resp.devices[0].share_id, "s-uid-1");

    let next = watch.message().await.unwrap().unwrap();
    assert!(next.generation > first.generation);
    assert_eq!(next.shared_cpus, "1-19,22-39,41-59,62-79");
    assert_eq!(next.assignments.len(), 1);
    assert_eq!(next.assignments[0].cpus, "20-21,60-61");
    assert_eq!(next.assignments[0].mems, "1");
    assert_eq!(next.assignments[0].pod_uids, vec!["pod-1".to_string()]);

    // Idempotent repeat: same answer, no pool change published.
    let again = backend
        .prepare(grouped_request("uid-1", "4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, resp);

    // Errors carry the claim and a fitting status code.
    let err = backend
        .prepare(grouped_request("uid-2", "99"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("claim uid-2"), "{}", err.message());
    let mut stale = grouped_request("uid-3", "1");
    stale.boot_id = "00000000-0000-0000-0000-000000000000".into();
    let err = backend.prepare(stale).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    backend
        .unprepare(UnprepareRequest {
            claim: Some(ClaimRef {
                uid: "uid-1".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let after = watch.message().await.unwrap().unwrap();
    assert_eq!(after.shared_cpus, first.shared_cpus);
    assert!(after.assignments.is_empty());
    // Unknown claims succeed.
    backend
        .unprepare(UnprepareRequest {
            claim: Some(ClaimRef {
                uid: "never-seen".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // A topology change (cpu79 went offline) reaches both watchers.
    let spec_path = drakit_cpu::fixture::fixtures_dir().join("xeon-2s-smt.json");
    let mut spec = drakit_cpu::fixture::MachineSpec::load(&spec_path).unwrap();
    spec.offline = "79".into();
    let sys = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    spec.materialize(sys.path()).unwrap();
    let changed = srv
        .service
        .refresh_topology(Topology::discover(sys.path()).unwrap())
        .unwrap();
    assert!(changed);
    let inv2 = devices.message().await.unwrap().unwrap();
    assert_eq!(inv2.generation, inv.generation + 1);
    let numa1 = inv2.devices.iter().find(|d| d.name == "numa1").unwrap();
    assert_eq!(numa1.capacity["cpus"].value, "39");
    let pool2 = watch.message().await.unwrap().unwrap();
    assert_eq!(pool2.shared_cpus, "1-39,41-78");

    // Shutdown with both watch streams still open: they end and the server drains.
    let _ = srv.stop.take().unwrap().send(());
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        while let Ok(Some(_)) = watch.message().await {}
        while let Ok(Some(_)) = devices.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "watch streams end at shutdown");
    tokio::time::timeout(Duration::from_secs(4), &mut srv.task)
        .await
        .expect("server stops within the grace period")
        .unwrap()
        .unwrap();
    assert!(!srv.socket.exists(), "socket removed on shutdown");
    drop(backend);
    drop(pool);
}

/// Connects as uid 65534 with a tiny Python client that sends the HTTP/2 preface and reports
/// whether the server answered (SETTINGS) or closed the connection. `None`: the client could not
/// be started at all (no setpriv); anything else the client hit is reported in the string.
fn probe_as_nobody(socket: &Path) -> Option<String> {
    let script = r#"
import socket, sys
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
except Exception as e:
    print("connect error: %r" % e)
    sys.exit(0)
try:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0,0,0,4,0,0,0,0,0]))
    data = s.recv(64)
except (BrokenPipeError, ConnectionResetError):
    data = b""
print("answered" if data else "closed")
"#;
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(socket)
        .output()
        .ok()?;
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_credentials_are_checked() {
    if !Path::new("/usr/bin/python3").exists() || nix_uid() != 0 {
        eprintln!("skipped: needs root and /usr/bin/python3 to connect as another uid");
        return;
    }
    for (allowed, want) in [(vec![], "closed"), (vec![65534], "answered")] {
        let mut srv = start(PeerPolicy {
            allowed_uids: allowed.clone(),
        });
        // Open the file modes so only SO_PEERCRED stands between uid 65534 and the server.
        let mut p = srv.socket.clone();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        while let Some(parent) = p.parent() {
            if parent == std::env::temp_dir() || parent == Path::new("/") {
                break;
            }
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
            p = parent.to_path_buf();
        }
        let socket = srv.socket.clone();
        let got = tokio::task::spawn_blocking(move || probe_as_nobody(&socket))
            .await
            .unwrap();
        let Some(got) = got else {
            eprintln!("skipped: could not run a client as uid 65534 (setpriv)");
            return;
        };
        assert_eq!(got, want, "allowed uids {allowed:?}");
        let _ = srv.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut srv.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Kills the daemon if a test fails before stopping it.
struct Daemon(Option<std::process::Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
            // A killed daemon cannot remove the tree it materialised for --fixture.
            let _ = std::fs::remove_dir_all(
                drakit_cpu::fixture::scratch_parent()
                    .join(format!("drakit-cpu-fixture-{}", c.id())),
            );
        }
    }
}

/// The real binary: starts on a fixture, serves, restores state across a restart, and removes its
/// socket on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_restores_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/cpu.sock");
    let boot = dir.path().join("boot_id");
    std::fs::write(&boot, format!("{BOOT}\n")).unwrap();
    let fixture = drakit_cpu::fixture::fixtures_dir().join("xeon-2s-smt.json");
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_drakit-cpu"))
            .env_clear()
            .env("DRAKIT_CPU_SOCKET", &socket)
            .env("DRAKIT_CPU_FIXTURE", &fixture)
            .env("DRAKIT_BOOT_ID_FILE", &boot)
            .env("DRAKIT_CPU_STATE_DIR", dir.path().join("state"))
            .env("DRAKIT_CPU_DEVICE_MODEL", "grouped")
            .env("DRAKIT_CPU_RESERVED", "0,40")
            .env("DRAKIT_LOG", "debug")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map(|c| Daemon(Some(c)))
            .unwrap()
    };
    let stop = |mut daemon: Daemon| {
        let child = daemon.0.take().unwrap();
        let pid = child.id() as i32;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let logs = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "exit {:?}: {logs}", out.status);
        logs
    };

    let child = spawn();
    let ch = connect(&socket).await;
    let mut backend = BackendClient::new(ch);
    let resp = backend
        .prepare(grouped_request("uid-7", "2"))
        .await
        .unwrap()
        .into_inner();
    let env = resp.devices[0].edits.as_ref().unwrap().env[0].clone();
    assert_eq!(env, "DRAKIT_CPUS_uid_7=20,60");
    drop(backend);
    let logs = stop(child);
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(!socket.exists(), "socket removed: {logs}");

    // Restart: the assignment is restored and shows in the pool.
    let child = spawn();
    let ch = connect(&socket).await;
    let mut pool = CpuPoolClient::new(ch);
    let state = pool
        .watch(CpuPoolWatchRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.assignments.len(), 1);
    assert_eq!(state.assignments[0].cpus, "20,60");
    drop(pool);
    let logs = stop(child);
    assert!(logs.contains("restored exclusive allocation"), "{logs}");

    // Reboot: another boot id drops the stale allocation with a clear log.
    std::fs::write(&boot, "00000000-1111-2222-3333-444444444444\n").unwrap();
    let child = spawn();
    let ch = connect(&socket).await;
    let mut pool = CpuPoolClient::new(ch);
    let state = pool
        .watch(CpuPoolWatchRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(state.assignments.is_empty());
    drop(pool);
    let logs = stop(child);
    assert!(logs.contains("stale: recorded under boot"), "{logs}");

    // A corrupt checkpoint: moved aside with a warning, the daemon still serves (no crash loop).
    std::fs::write(dir.path().join("state/cpu.checkpoint"), "garbage").unwrap();
    let child = spawn();
    let ch = connect(&socket).await;
    let mut backend = BackendClient::new(ch);
    let mut req = grouped_request("uid-8", "1");
    req.boot_id = "00000000-1111-2222-3333-444444444444".into();
    backend.prepare(req).await.unwrap();
    drop(backend);
    let logs = stop(child);
    assert!(logs.contains("is corrupt"), "{logs}");
}

/// The real binary follows CPU hotplug: with a 1 s rescan, taking a CPU offline in its sysfs root
/// republishes the inventory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_rescans_the_topology() {
    let dir = tempfile::tempdir().unwrap();
    let sys = tempfile::tempdir_in(drakit_cpu::fixture::scratch_parent()).unwrap();
    materialize_named("alderlake-8p8e", sys.path()).unwrap();
    let socket = dir.path().join("cpu.sock");
    let boot = dir.path().join("boot_id");
    std::fs::write(&boot, format!("{BOOT}\n")).unwrap();
    let mut daemon = Daemon(Some(
        std::process::Command::new(env!("CARGO_BIN_EXE_drakit-cpu"))
            .env_clear()
            .env("DRAKIT_CPU_SOCKET", &socket)
            .env("DRAKIT_SYSFS_ROOT", sys.path())
            .env("DRAKIT_BOOT_ID_FILE", &boot)
            .env("DRAKIT_CPU_STATE_DIR", dir.path().join("state"))
            .env("DRAKIT_CPU_RESCAN_SECS", "1")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let mut backend = BackendClient::new(connect(&socket).await);
    let mut devices = backend
        .watch_devices(WatchDevicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = devices.message().await.unwrap().unwrap();
    assert_eq!(first.devices.len(), 24);
    // Hotplug: cpu23 goes offline (the kernel drops its topology directory).
    let cpu = sys.path().join("devices/system/cpu");
    std::fs::write(cpu.join("online"), "0-22\n").unwrap();
    std::fs::remove_dir_all(cpu.join("cpu23/topology")).unwrap();
    std::fs::remove_dir_all(cpu.join("cpu23/cache")).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), devices.message())
        .await
        .expect("a new inventory after the rescan")
        .unwrap()
        .unwrap();
    assert_eq!(next.generation, first.generation + 1);
    assert_eq!(next.devices.len(), 23);
    assert!(!next.devices.iter().any(|d| d.name == "cpu23"));
    drop(devices);
    drop(backend);
    let child = daemon.0.take().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
}
