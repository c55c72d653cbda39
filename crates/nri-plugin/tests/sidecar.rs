//! The sidecar against the NRI runtime simulator (containerd stand-in) over real Unix sockets,
//! with in-process fake `drakit-cpu` (CpuPool) and `drakit-netdev` (NetdevAttach) servers.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drakit_nri::cpu::CpuConcern;
use drakit_nri::netdev::NetdevConcern;
use drakit_nri::{Concern, RuntimeSpecConcern, Sidecar};
use drakit_proto::drakit::cpu_pool_server::{CpuPool, CpuPoolServer};
use drakit_proto::drakit::netdev_attach_server::{NetdevAttach, NetdevAttachServer};
use drakit_proto::drakit::{
    AttachPodRequest, AttachPodResponse, AttachedInterface, ClaimRef, CpuAssignment, CpuPoolState,
    CpuPoolWatchRequest, DetachPodRequest, DetachPodResponse, HookAttachRequest,
};
use drakit_proto::nri::{LinuxNamespace, LinuxPodSandbox, PodSandbox};
use drakit_types::policy::Policy;
use futures::Stream;
use nri::simulator::{self, Runtime, SimConfig, default_spec};
use nri::{Stub, StubConfig, StubHandle};
use serde_json::Value;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
struct FakeCpu {
    tx: watch::Sender<CpuPoolState>,
}

#[tonic::async_trait]
impl CpuPool for FakeCpu {
    type WatchStream = BoxStream<CpuPoolState>;
    async fn watch(
        &self,
        _: Request<CpuPoolWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rx = self.tx.subscribe();
        let s = tokio_stream::wrappers::WatchStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::map(s, Ok))))
    }
}

#[derive(Clone, Default)]
struct FakeNetdev {
    attach: Arc<Mutex<Vec<AttachPodRequest>>>,
    detach: Arc<Mutex<Vec<DetachPodRequest>>>,
}

#[tonic::async_trait]
impl NetdevAttach for FakeNetdev {
    async fn attach_pod(
        &self,
        req: Request<AttachPodRequest>,
    ) -> Result<Response<AttachPodResponse>, Status> {
        let req = req.into_inner();
        let refuse = req.pod_name == "refused";
        // Pods named "late*" have one net claim; the first AttachPod attaches it.
        let with_claim = req.pod_name.starts_with("late");
        let mut log = self.attach.lock().unwrap();
        let already = log.iter().any(|r| r.pod_uid == req.pod_uid);
        log.push(req);
        drop(log);
        if refuse {
            return Err(Status::failed_precondition(
                "claim ns/net1: parent link \"eth9\" does not exist",
            ));
        }
        let interfaces = if with_claim {
            vec![AttachedInterface {
                device: "netdev-virtual".into(),
                already_attached: already,
                ..Default::default()
            }]
        } else {
            Vec::new()
        };
        Ok(Response::new(AttachPodResponse { interfaces }))
    }
    async fn detach_pod(
        &self,
        req: Request<DetachPodRequest>,
    ) -> Result<Response<DetachPodResponse>, Status> {
        self.detach.lock().unwrap().push(req.into_inner());
        Ok(Response::new(DetachPodResponse::default()))
    }
    async fn hook_attach(
        &self,
        _: Request<HookAttachRequest>,
    ) -> Result<Response<AttachPodResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

fn incoming(path: &Path) -> UnixListenerStream {
    UnixListenerStream::new(UnixListener::bind(path).unwrap())
}

fn serve_cpu(path: &Path, svc: FakeCpu) {
    let inc = incoming(path);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CpuPoolServer::new(svc))
            .serve_with_incoming(inc),
    );
}

fn serve_netdev(path: &Path, svc: FakeNetdev) {
    let inc = incoming(path);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NetdevAttachServer::new(svc))
            .serve_with_incoming(inc),
    );
}

fn pool(generation: u64, shared: &str, assignments: &[(&str, &str, &str)]) -> CpuPoolState {
    CpuPoolState {
        generation,
        shared_cpus: shared.into(),
        shared_mems: "0".into(),
        assignments: assignments
            .iter()
            .map(|(uid, cpus, mems)| CpuAssignment {
                claim: Some(ClaimRef {
                    uid: uid.to_string(),
                    namespace: "ns".into(),
                    name: "c".into(),
                }),
                cpus: cpus.to_string(),
                mems: mems.to_string(),
                pod_uids: vec![],
            })
            .collect(),
    }
}

struct Env {
    _dir: tempfile::TempDir,
    rt: Runtime,
    sock: PathBuf,
    cpu_tx: watch::Sender<CpuPoolState>,
    netdev: FakeNetdev,
    handle: StubHandle,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.rt.shutdown();
    }
}

/// Starts the fakes and the simulator (with `existing` containers, whose specs carry
/// `cpuset.cpus` 0-7), waits for the pool to reach the sidecar, then starts the sidecar.
async fn start(policy: Policy, existing: &[(&str, &[&str])]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let cpu_sock = dir.path().join("cpu.sock");
    let netdev_sock = dir.path().join("netdev.sock");
    let sock = dir.path().join("nri.sock");
    let (cpu_tx, _) = watch::channel(pool(1, "0-1,6-7", &[]));
    serve_cpu(&cpu_sock, FakeCpu { tx: cpu_tx.clone() });
    let netdev = FakeNetdev::default();
    serve_netdev(&netdev_sock, netdev.clone());

    let rt = Runtime::new(SimConfig::default());
    rt.listen(&sock).await.unwrap();
    rt.add_pod(simulator::pod("pod0", "old", "ns"));
    for (id, env) in existing {
        let mut c = simulator::container(id, "pod0", id);
        c.env = env.iter().map(|s| s.to_string()).collect();
        c.state = drakit_proto::nri::ContainerState::ContainerRunning as i32;
        let mut spec = default_spec(&["sh"]);
        spec["linux"]["resources"]["cpu"] = serde_json::json!({"cpus": "0-7"});
        rt.add_container(c, spec);
    }

    let cpu = CpuConcern::new(cpu_sock);
    tokio::spawn(cpu.clone().watch_pool());
    tokio::time::timeout(WAIT, async {
        while cpu.pool().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("pool state reaches the sidecar");
    let concerns: Vec<Arc<dyn Concern>> = vec![
        Arc::new(RuntimeSpecConcern::new(policy)),
        cpu.clone(),
        Arc::new(NetdevConcern::new(netdev_sock, Duration::from_millis(1500))),
    ];
    let cfg = StubConfig::new("drakit", "50").unwrap().with_socket(&sock);
    let stub = Stub::new(Sidecar::new(concerns), cfg);
    let handle = stub.handle();
    cpu.set_handle(handle.clone());
    tokio::spawn(stub.run());
    rt.wait_synced(1, WAIT).await.unwrap();
    Env {
        _dir: dir,
        rt,
        sock,
        cpu_tx,
        netdev,
        handle,
    }
}

fn pod_with_netns(id: &str, name: &str, netns: Option<&str>) -> PodSandbox {
    let mut p = simulator::pod(id, name, "ns");
    p.linux = Some(LinuxPodSandbox {
        namespaces: netns
            .map(|path| LinuxNamespace {
                r#type: "network".into(),
                path: path.into(),
            })
            .into_iter()
            .collect(),
        ..Default::default()
    });
    p
}

/// The OCI spec containerd would build: the container's env (CDI-injected vars included) in
/// `process.env`.
fn spec_for(c: &drakit_proto::nri::Container) -> Value {
    let mut spec = default_spec(&["sh"]);
    spec["process"]["env"] = serde_json::json!(c.env);
    spec
}

fn env_of(spec: &Value) -> Vec<String> {
    spec["process"]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn cpus(spec: &Value) -> (&str, &str) {
    let cpu = &spec["linux"]["resources"]["cpu"];
    (
        cpu["cpus"].as_str().unwrap_or(""),
        cpu["mems"].as_str().unwrap_or(""),
    )
}

const IO_MAX: &str = r#"{"linux":{"resources":{"unified":{"io.max":"8:0 rbps=1048576 wbps=1048576","memory.high":"536870912","pids.max":"128"}}}}"#;

#[tokio::test]
async fn runtime_spec_edits_land_and_transport_env_is_removed() {
    let env = start(Policy::default(), &[]).await;
    env.rt
        .run_pod_sandbox(pod_with_netns("p1", "web", Some("/var/run/netns/p1")))
        .await
        .unwrap();
    let mut c = simulator::container("c1", "p1", "app");
    c.env = vec![
        "PATH=/bin".into(),
        format!("DRAKIT_RUNTIME_SPEC_claim_a={IO_MAX}"),
        "DRAKIT_CPUS_claim_c=0-1".into(),
    ];
    let got = env
        .rt
        .create_container(c.clone(), spec_for(&c))
        .await
        .unwrap();
    let unified = &got.spec["linux"]["resources"]["unified"];
    assert_eq!(unified["io.max"], "8:0 rbps=1048576 wbps=1048576");
    assert_eq!(unified["memory.high"], "536870912");
    assert_eq!(unified["pids.max"], "128");
    let e = env_of(&got.spec);
    assert!(e.iter().any(|v| v == "PATH=/bin"), "{e:?}");
    assert!(!e.iter().any(|v| v.starts_with("DRAKIT_")), "{e:?}");
}

#[tokio::test]
async fn refused_fragment_fails_create_container_naming_the_field() {
    let env = start(Policy::default(), &[]).await;
    env.rt
        .run_pod_sandbox(pod_with_netns("p1", "web", Some("/var/run/netns/p1")))
        .await
        .unwrap();
    for (i, (frag, field)) in [
        (
            r#"{"mounts":[{"destination":"/host","source":"/","type":"bind","options":["rbind"]}]}"#,
            "spec.mounts[0]",
        ),
        (
            r#"{"hooks":{"createRuntime":[{"path":"/bin/sh"}]}}"#,
            "spec.hooks",
        ),
        (
            r#"{"process":{"capabilities":{"bounding":["CAP_SYS_ADMIN"],"effective":["CAP_SYS_ADMIN"]}}}"#,
            "spec.process.capabilities",
        ),
        (
            r#"{"linux":{"resources":{"unified":{"../../x":"1"}}}}"#,
            "unified[\"../../x\"]",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = simulator::container(&format!("bad{i}"), "p1", "app");
        c.env = vec![format!("DRAKIT_RUNTIME_SPEC_claim_b={frag}")];
        let e = env
            .rt
            .create_container(c.clone(), spec_for(&c))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
        assert!(e.contains("DRAKIT_RUNTIME_SPEC_claim_b"), "{e}");
        assert!(env.rt.container(&format!("bad{i}")).is_none());
    }
}

#[tokio::test]
async fn a_field_nri_cannot_apply_is_refused_not_dropped() {
    let policy = Policy::from_yaml(
        "apiVersion: drakit.dev/v1alpha1\nkind: RuntimeSpecPolicy\ndefault:\n  allowedFields: [linux.resources, process.noNewPrivileges]\n",
    )
    .unwrap();
    let env = start(policy, &[]).await;
    env.rt
        .run_pod_sandbox(pod_with_netns("p1", "web", Some("/var/run/netns/p1")))
        .await
        .unwrap();
    let mut c = simulator::container("c1", "p1", "app");
    c.env = vec![r#"DRAKIT_RUNTIME_SPEC_x={"process":{"noNewPrivileges":true}}"#.into()];
    let e = env
        .rt
        .create_container(c.clone(), spec_for(&c))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.process.noNewPrivileges"), "{e}");
    assert!(e.contains("cannot be applied through NRI"), "{e}");
}

#[tokio::test]
async fn cpusets_exclusive_shared_and_pool_changes() {
    let env = start(Policy::default(), &[("pre", &[])]).await;
    // The container that existed before the sidecar is moved to the shared pool at sync.
    let pre = env.rt.container("pre").unwrap();
    assert_eq!(cpus(&pre.spec).0, "0-1,6-7");

    env.cpu_tx
        .send_replace(pool(2, "0-1,6-7", &[("uid-x", "2-5", "0")]));
    env.rt
        .run_pod_sandbox(pod_with_netns("p1", "web", Some("/var/run/netns/p1")))
        .await
        .unwrap();
    // Let the new pool state (same shared set) arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ex = simulator::container("ex", "p1", "worker");
    ex.env = vec!["DRAKIT_CPUS_uid_x=2-5".into()];
    let ex = env
        .rt
        .create_container(ex.clone(), spec_for(&ex))
        .await
        .unwrap();
    assert_eq!(cpus(&ex.spec), ("2-5", "0"));
    assert!(!env_of(&ex.spec).iter().any(|v| v.starts_with("DRAKIT_")));

    let plain = simulator::container("plain", "p1", "sidecar");
    let plain = env
        .rt
        .create_container(plain.clone(), spec_for(&plain))
        .await
        .unwrap();
    assert_eq!(cpus(&plain.spec), ("0-1,6-7", "0"));

    // A new exclusive claim shrinks the pool: every shared container is updated.
    let before = env.rt.update_requests().len();
    env.cpu_tx.send_replace(pool(
        3,
        "0,7",
        &[("uid-x", "2-5", "0"), ("uid-y", "1,6", "0")],
    ));
    env.rt.wait_update_requests(before + 1, WAIT).await.unwrap();
    for id in ["pre", "plain"] {
        assert_eq!(cpus(&env.rt.container(id).unwrap().spec).0, "0,7", "{id}");
    }
    assert_eq!(cpus(&env.rt.container("ex").unwrap().spec).0, "2-5");

    // Unprepare grows it back.
    let before = env.rt.update_requests().len();
    env.cpu_tx
        .send_replace(pool(4, "0-1,6-7", &[("uid-x", "2-5", "0")]));
    env.rt.wait_update_requests(before + 1, WAIT).await.unwrap();
    assert_eq!(cpus(&env.rt.container("plain").unwrap().spec).0, "0-1,6-7");
}

#[tokio::test]
async fn pod_attach_and_detach_reach_drakit_netdev() {
    let env = start(Policy::default(), &[]).await;
    env.rt
        .run_pod_sandbox(pod_with_netns("p1", "web", Some("/var/run/netns/cni-1234")))
        .await
        .unwrap();
    env.rt
        .run_pod_sandbox(pod_with_netns("p2", "hostnet", None))
        .await
        .unwrap();
    {
        let a = env.netdev.attach.lock().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].netns_path, "/var/run/netns/cni-1234");
        assert_eq!(a[0].pod_uid, "uid-p1");
        assert_eq!(a[0].sandbox_id, "p1");
        assert!(!a[0].host_network);
        assert!(a[1].host_network);
    }
    let e = env
        .rt
        .run_pod_sandbox(pod_with_netns("p3", "refused", Some("/var/run/netns/x")))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("eth9") && e.contains("drakit netdev"), "{e}");

    env.rt.stop_pod_sandbox("p1").await.unwrap();
    let d = env.netdev.detach.lock().unwrap().clone();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].pod_uid, "uid-p1");
    assert_eq!(d[0].netns_path, "/var/run/netns/cni-1234");
}

/// The attach requests the fake received for `pod_uid`.
fn attaches_of(env: &Env, pod_uid: &str) -> usize {
    let a = env.netdev.attach.lock().unwrap();
    a.iter().filter(|r| r.pod_uid == pod_uid).count()
}

#[tokio::test]
async fn a_pod_started_while_the_sidecar_was_away_is_attached_after_synchronize() {
    let env = start(Policy::default(), &[]).await;
    // The first Synchronize saw only pod0 (no network namespace): nothing to attach late.
    assert!(env.netdev.attach.lock().unwrap().is_empty());
    // Sandboxes that start while the sidecar is not connected: their RunPodSandbox never
    // reaches it.
    env.rt
        .add_pod(pod_with_netns("lp", "late-web", Some("/var/run/netns/lp")));
    env.rt.add_pod(pod_with_netns("hn", "late-hostnet", None));
    env.rt.restart().await.unwrap();
    env.rt.wait_synced(2, WAIT).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while attaches_of(&env, "uid-lp") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the late pod is attached after the Synchronize");
    let a = env.netdev.attach.lock().unwrap().clone();
    let lp = a.iter().find(|r| r.pod_uid == "uid-lp").unwrap();
    assert_eq!(lp.netns_path, "/var/run/netns/lp");
    assert_eq!(lp.sandbox_id, "lp");
    assert!(!lp.host_network);
    // A host-network pod has no namespace to receive interfaces: not asked.
    assert!(a.iter().all(|r| r.pod_uid != "uid-hn"), "{a:?}");

    // The next Synchronize asks again; drakit-netdev answers "already attached".
    env.rt.restart().await.unwrap();
    env.rt.wait_synced(3, WAIT).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while attaches_of(&env, "uid-lp") < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the pod is asked again at the next Synchronize");
}

#[tokio::test]
async fn late_attach_skips_ended_pods_and_yields_to_a_newer_synchronize() {
    let env = start(Policy::default(), &[]).await;
    let concern = NetdevConcern::new(
        env.sock.with_file_name("netdev.sock"),
        Duration::from_millis(1500),
    );
    let pods = [
        pod_with_netns("a", "late-a", Some("/var/run/netns/a")),
        pod_with_netns("b", "late-b", Some("/var/run/netns/b")),
        pod_with_netns("h", "late-h", None),
    ];
    let pass = concern.late_attach_pass(&pods);
    // Pod b stops before the pass reaches it: its DetachPod goes out, its attach never does.
    concern.stop_pod_sandbox(&pods[1]).await.unwrap();
    let r = pass.await;
    assert_eq!(r.asked, 1);
    assert_eq!(r.attached_late, ["ns/late-a"]);
    assert!(r.failed.is_empty());
    assert_eq!(attaches_of(&env, "uid-b"), 0);
    assert_eq!(attaches_of(&env, "uid-h"), 0);

    // A pass superseded by a newer Synchronize stops; the newer one does the work, and a pod
    // attached already is not reported as late.
    let old = concern.late_attach_pass(&pods[..1]);
    let new = concern.late_attach_pass(&pods[..1]);
    assert_eq!(old.await, Default::default());
    let r = new.await;
    assert_eq!(r.asked, 1);
    assert!(r.attached_late.is_empty(), "{r:?}");

    // drakit-netdev down: the pass reports the failure and goes on.
    let down = NetdevConcern::new(
        env.sock.with_file_name("missing.sock"),
        Duration::from_millis(300),
    );
    let r = down.late_attach_pass(&pods).await;
    assert_eq!(r.asked, 2);
    assert_eq!(r.failed.len(), 2);
    assert!(r.failed[0].1.contains("not reachable"), "{r:?}");
}

#[tokio::test]
async fn netdev_daemon_down_fails_the_sandbox_clearly() {
    let env = start(Policy::default(), &[]).await;
    // A second sidecar-less check: a concern pointed at a socket nobody serves.
    let concern = NetdevConcern::new(
        env.sock.with_file_name("missing.sock"),
        Duration::from_millis(300),
    );
    let e = concern
        .run_pod_sandbox(&pod_with_netns("p9", "x", Some("/var/run/netns/x")))
        .await
        .unwrap_err();
    assert!(e.message().contains("not reachable"), "{}", e.message());
}

#[tokio::test]
async fn runtime_restart_reconnects_and_resynchronizes() {
    let env = start(Policy::default(), &[("pre", &[])]).await;
    env.rt.restart().await.unwrap();
    env.rt.wait_synced(2, WAIT).await.unwrap();
    env.rt
        .run_pod_sandbox(pod_with_netns("p1", "web", Some("/var/run/netns/p1")))
        .await
        .unwrap();
    let mut c = simulator::container("c1", "p1", "app");
    c.env = vec![format!("DRAKIT_RUNTIME_SPEC_claim_a={IO_MAX}")];
    let got = env
        .rt
        .create_container(c.clone(), spec_for(&c))
        .await
        .unwrap();
    assert_eq!(got.spec["linux"]["resources"]["unified"]["pids.max"], "128");
}

#[tokio::test]
async fn garbage_env_never_panics_and_the_sidecar_keeps_serving() {
    let env = start(Policy::default(), &[]).await;
    env.rt
        .run_pod_sandbox(pod_with_netns("p1", "web", Some("/var/run/netns/p1")))
        .await
        .unwrap();
    let garbage = [
        "DRAKIT_RUNTIME_SPEC_a=",
        "DRAKIT_RUNTIME_SPEC_a={",
        "DRAKIT_RUNTIME_SPEC_a=null",
        "DRAKIT_RUNTIME_SPEC_a=\u{0}\u{ffff}",
        "DRAKIT_CPUS_a=",
        "DRAKIT_CPUS_a=99999999",
        "DRAKIT_CPUS_a=1-0",
        "DRAKIT_RUNTIME_SPEC_",
        "=",
        "",
    ];
    for (i, g) in garbage.iter().enumerate() {
        let mut c = simulator::container(&format!("g{i}"), "p1", "app");
        c.env = vec![g.to_string()];
        let _ = env.rt.create_container(c.clone(), spec_for(&c)).await;
    }
    let c = simulator::container("ok", "p1", "app");
    env.rt
        .create_container(c.clone(), spec_for(&c))
        .await
        .unwrap();
    assert_eq!(
        env.handle.connections(),
        1,
        "the sidecar never dropped the runtime"
    );
}
