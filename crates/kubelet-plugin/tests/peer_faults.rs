//! Faults of the plugin's peers: the API server answering 500 or not answering at all while the
//! plugin publishes ResourceSlices, writes claim status or reads a claim; and a backend daemon
//! (the real drakit-cpu) dying in the middle of a Prepare and coming back.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use drakit_cpu::inventory::DeviceModel;
use drakit_cpu::server::{self as cpu_server, CpuService, PeerPolicy};
use drakit_cpu::store::CheckpointStore;
use drakit_cpu::{CpuSet, Manager, PoolConfig, Topology};
use drakit_e2e::apiserver::{ApiServerSim, ClaimBuilder, Fault};
use drakit_e2e::kubelet::ClaimRef;
use drakit_kubelet_plugin::config::{BackendKind, DriverSpec};
use drakit_proto::drakit::backend_server::{Backend, BackendServer};
use drakit_proto::drakit::{
    PrepareRequest, PrepareResponse, UnprepareRequest, UnprepareResponse, WatchDevicesRequest,
};
use serde_json::json;
use tonic::{Request, Response, Status};

const T: Duration = Duration::from_secs(15);

/// The path prefix of the net driver's slices (`<node>-<driver>-<i>`, DNS-label safe).
fn net_slices_path() -> String {
    format!("/resourceslices/{NODE}-{}", NET.replace('.', "-"))
}

/// Waits until the net driver's pool is complete with `n` devices, all slices of one generation.
async fn net_pool_complete(api: &ApiServerSim, n: usize, timeout: Duration) -> Result<(), String> {
    api.wait_for("complete net pool", timeout, |api| {
        let p = api.pool(NET, NODE);
        (p.complete && p.devices.len() == n).then_some(())
    })
    .await
    .map_err(|e| format!("{e}\n{}", api.dump()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_publishing_retries_500s_with_backoff() {
    let n = TestNode::start(true).await;
    n.node.api.fail_next(
        4,
        Fault::status(500)
            .method("PATCH")
            .path_contains(&net_slices_path()),
    );
    let p = n.launch_registered().await;
    net_pool_complete(&n.node.api, 4, T).await.unwrap();
    let failed: Vec<_> = n
        .node
        .api
        .requests()
        .into_iter()
        .filter(|r| r.injected)
        .collect();
    assert_eq!(failed.len(), 4, "every injected failure was met");
    // Backoff 100, 200, 400 ms between the four failed rounds: no hot retry loop.
    let spread = failed[3]
        .at
        .duration_since(failed[0].at)
        .unwrap_or_default();
    assert!(
        spread >= Duration::from_millis(650),
        "retried too fast: {spread:?}"
    );
    // Nothing half-published stays behind: one generation, every device once, no stale slice.
    let pool = n.node.api.pool(NET, NODE);
    assert_eq!(pool.devices, vec!["eth0", "eth1", "eth2", "eth3"]);
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_slice_apply_times_out_and_is_retried() {
    let mut n = TestNode::start(true).await;
    // The round timeout is the API budget.
    n.config.api_budget = Duration::from_secs(1);
    n.node.api.fail_next(
        1,
        Fault::stall(Duration::from_secs(600))
            .method("PATCH")
            .path_contains(&net_slices_path()),
    );
    let started = Instant::now();
    let p = n.launch_registered().await;
    net_pool_complete(&n.node.api, 4, T).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "the stalled apply held a round for its timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_status_is_written_through_a_stall_and_500s() {
    let mut n = TestNode::start(true).await;
    n.config.api_budget = Duration::from_secs(1);
    let p = n.launch_registered().await;
    n.node
        .api
        .insert_claim(
            &ClaimBuilder::new("default", "nic")
                .uid("nic-uid")
                .device(NET, NODE, "eth1", "nic")
                .config_from_claim(NET, &["nic"], json!({"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"macvlan","interfaceName":"net1","parent":"eth0"}}))
                .reserved_for_pod("pod-a", "pod-uid-a")
                .build(),
        )
        .unwrap();
    // First a write that never gets an answer, then two 500s.
    n.node.api.fail_next(
        1,
        Fault::stall(Duration::from_secs(600))
            .method("PATCH")
            .path_contains("/resourceclaims/nic/status"),
    );
    n.node.api.fail_next(
        2,
        Fault::status(500)
            .method("PATCH")
            .path_contains("/resourceclaims/nic/status"),
    );
    let c = [ClaimRef::new("default", "nic", "nic-uid")];
    let started = Instant::now();
    let r = n.node.kubelet.prepare(NET, &c).await.unwrap();
    assert!(
        r["nic-uid"].is_ok(),
        "status trouble does not fail the prepare: {r:?}"
    );
    let status = n
        .node
        .api
        .wait_for("claim status", T, |api| {
            api.claim("default", "nic")
                .and_then(|c| c.status?.devices)
                .filter(|d| !d.is_empty())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", n.node.api.dump()));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the first write was held for the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(status.len(), 1);
    assert_eq!(
        status[0]
            .network_data
            .as_ref()
            .unwrap()
            .interface_name
            .as_deref(),
        Some("net1")
    );
    let injected = n.node.api.requests().iter().filter(|r| r.injected).count();
    assert_eq!(
        injected, 2,
        "both 500s were met (the stalled one was dropped unserved)"
    );
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_claim_read_is_abandoned_and_retried_within_the_budget() {
    let mut n = TestNode::start(true).await;
    n.config.api_budget = Duration::from_secs(4);
    let p = n.launch_registered().await;
    n.node
        .api
        .insert_claim(
            &ClaimBuilder::new("default", "a")
                .uid("a-uid")
                .device(RUNTIME, NODE, "spec-edit-0", "edit")
                .config_from_claim(RUNTIME, &["edit"], runtime_config(json!({})))
                .reserved_for_pod("pod-a", "pod-uid-a")
                .build(),
        )
        .unwrap();
    n.node.api.fail_next(
        1,
        Fault::stall(Duration::from_secs(600))
            .method("GET")
            .path_contains("/resourceclaims/a"),
    );
    let started = Instant::now();
    let r = n
        .node
        .kubelet
        .prepare(RUNTIME, &[ClaimRef::new("default", "a", "a-uid")])
        .await
        .unwrap();
    assert!(r["a-uid"].is_ok(), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "one stalled GET must not eat the budget: {:?}",
        started.elapsed()
    );
    p.stop().await.unwrap();
}

// ---- a backend daemon dying mid-call ----------------------------------------------------------

/// drakit-cpu's Backend service that commits a Prepare and then never answers (the process is
/// about to die), telling the test that the commit happened.
#[derive(Clone)]
struct DiesAfterCommit {
    inner: CpuService,
    committed: Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl Backend for DiesAfterCommit {
    type WatchDevicesStream = <CpuService as Backend>::WatchDevicesStream;

    async fn watch_devices(
        &self,
        req: Request<WatchDevicesRequest>,
    ) -> Result<Response<Self::WatchDevicesStream>, Status> {
        self.inner.watch_devices(req).await
    }

    async fn prepare(
        &self,
        req: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        let done = self.inner.prepare(req).await;
        assert!(done.is_ok(), "the first prepare commits: {done:?}");
        self.committed.notify_one();
        std::future::pending().await
    }

    async fn unprepare(
        &self,
        req: Request<UnprepareRequest>,
    ) -> Result<Response<UnprepareResponse>, Status> {
        self.inner.unprepare(req).await
    }
}

/// A drakit-cpu "process": its own runtime, so killing it drops every connection at once.
struct CpuDaemon {
    rt: Option<tokio::runtime::Runtime>,
    service: CpuService,
}

impl CpuDaemon {
    fn manager(sys: &Path, state: &Path, boot: &str) -> Manager {
        let cfg = PoolConfig {
            model: DeviceModel::Individual,
            reserved: CpuSet::parse("0").unwrap(),
            ..Default::default()
        };
        let (store, _) = CheckpointStore::open(state, boot).unwrap();
        Manager::new(Topology::discover(sys).unwrap(), cfg, boot, Box::new(store)).unwrap()
    }

    /// Serves the real service, or the one that dies after committing when `committed` is set.
    fn start(
        socket: &Path,
        sys: &Path,
        state: &Path,
        boot: &str,
        committed: Option<Arc<tokio::sync::Notify>>,
    ) -> Self {
        let service = CpuService::new(Self::manager(sys, state, boot));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _g = rt.enter();
            cpu_server::bind(socket).unwrap()
        };
        let svc = service.clone();
        let path = socket.to_path_buf();
        rt.spawn(async move {
            match committed {
                None => {
                    let _ = cpu_server::serve(
                        svc,
                        listener,
                        &path,
                        PeerPolicy::default(),
                        std::future::pending(),
                    )
                    .await;
                }
                Some(committed) => {
                    use drakit_proto::uds::server as uds;
                    let _ = tonic::transport::Server::builder()
                        .add_service(BackendServer::new(DiesAfterCommit {
                            inner: svc,
                            committed,
                        }))
                        .serve_with_incoming(uds::incoming(listener, uds::PeerPolicy::root_and([])))
                        .await;
                }
            }
        });
        Self {
            rt: Some(rt),
            service,
        }
    }

    /// Dies: every task and connection is dropped, nothing is cleaned up (the socket file
    /// stays). Returns once the tasks are gone.
    async fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10)))
                .await
                .unwrap();
        }
    }

    fn claims(&self) -> Vec<(String, CpuSet)> {
        self.service
            .with_manager(|m| {
                m.claims()
                    .map(|c| (c.uid.clone(), c.cpus.clone()))
                    .collect()
            })
            .unwrap()
    }

    fn exclusive(&self) -> CpuSet {
        self.service.with_manager(|m| m.exclusive()).unwrap()
    }
}

impl Drop for CpuDaemon {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_dying_mid_prepare_then_kubelet_retry_succeeds_without_double_allocation() {
    let mut n = TestNode::start(true).await;
    let root: PathBuf = n.tmp.path().to_path_buf();
    let sys = root.join("cpu-sys");
    drakit_cpu::fixture::materialize_named("alderlake-8p8e", &sys).unwrap();
    let state = root.join("cpu-state");
    let socket = root.join("run/real-cpu/cpu.sock");
    let boot_file = n.config.proc_root.join("sys/kernel/random/boot_id");
    std::fs::create_dir_all(boot_file.parent().unwrap()).unwrap();
    std::fs::write(&boot_file, "5f1c8f2e-0d7a-4c1e-9a54-2f6a0c3b7e11\n").unwrap();
    let boot = drakit_kubelet_plugin::state::read_boot_id(&n.config.proc_root);
    assert!(!boot.is_empty());
    n.config.backend_timeout = Duration::from_secs(10);
    for d in &mut n.config.drivers {
        if d.name == CPU {
            *d = DriverSpec {
                name: CPU.into(),
                backend: BackendKind::Socket(socket.clone()),
            };
        }
    }
    let committed = Arc::new(tokio::sync::Notify::new());
    let mut first = CpuDaemon::start(&socket, &sys, &state, &boot, Some(committed.clone()));
    let p = n.launch_registered().await;
    // The plugin knows the CPU pool once the inventory is published.
    n.node
        .api
        .wait_for("cpu slices", T, |api| {
            let p = api.pool(CPU, NODE);
            (p.complete && p.devices.iter().any(|d| d == "cpu2")).then_some(())
        })
        .await
        .unwrap();
    n.node
        .api
        .insert_claim(
            &ClaimBuilder::new("default", "pinned")
                .uid("pin-uid")
                .device(CPU, NODE, "cpu2", "cpus")
                .device(CPU, NODE, "cpu3", "cpus")
                .reserved_for_pod("pod-a", "pod-uid-a")
                .build(),
        )
        .unwrap();
    let c = [ClaimRef::new("default", "pinned", "pin-uid")];

    // The daemon commits the allocation, then dies before answering.
    let killer = async {
        tokio::time::timeout(T, committed.notified())
            .await
            .expect("the backend got the prepare");
        assert_eq!(first.claims().len(), 1);
        first.kill().await;
    };
    let (r, ()) = tokio::join!(
        tokio::time::timeout(T, n.node.kubelet.prepare(CPU, &c)),
        killer
    );
    let r = r.expect("the prepare call ends").unwrap();
    let e = r["pin-uid"].clone().unwrap_err();
    assert!(
        e.contains("claim default/pinned") && e.contains("unavailable"),
        "a clear error naming the claim and the backend: {e}"
    );
    assert!(
        n.cdi_files().iter().all(|f| !f.contains("pin-uid")),
        "no CDI spec for a failed prepare: {:?}",
        n.cdi_files()
    );

    // The process is gone, its checkpoint lock with it.
    drop(first);
    // Back from its checkpoint: the claim it committed is there, once.
    let second = CpuDaemon::start(&socket, &sys, &state, &boot, None);
    let two_three = CpuSet::parse("2-3").unwrap();
    assert_eq!(
        second.claims(),
        vec![("pin-uid".to_owned(), two_three.clone())]
    );
    // The kubelet retries: same CPUs, nothing allocated twice.
    let c = [ClaimRef::new("default", "pinned", "pin-uid")];
    let mut last = String::new();
    let deadline = Instant::now() + T;
    loop {
        let r = n.node.kubelet.prepare(CPU, &c).await.unwrap();
        match &r["pin-uid"] {
            Ok(devices) => {
                let mut names: Vec<_> = devices.iter().map(|d| d.device_name.clone()).collect();
                names.sort();
                assert_eq!(names, vec!["cpu2", "cpu3"]);
                break;
            }
            // The plugin's channel may need one more call to reconnect.
            Err(e) if Instant::now() < deadline && e.contains("unavailable") => {
                last = e.clone();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("retry after the restart failed: {e} (before: {last})"),
        }
    }
    assert_eq!(
        second.claims(),
        vec![("pin-uid".to_owned(), two_three.clone())]
    );
    assert_eq!(second.exclusive(), two_three);
    assert!(
        n.cdi_files().iter().any(|f| f.contains("pin-uid")),
        "{:?}",
        n.cdi_files()
    );
    // And it unprepares cleanly.
    let u = n.node.kubelet.unprepare(CPU, &c).await.unwrap();
    assert!(u["pin-uid"].is_ok(), "{u:?}");
    assert!(second.claims().is_empty());
    assert!(second.exclusive().is_empty());
    p.stop().await.unwrap();
    drop(second);
}
