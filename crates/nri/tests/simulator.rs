//! End-to-end tests: the stub against the runtime simulator over real unix sockets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drakit_proto::nri::{
    ConfigureRequest, Container, ContainerUpdate, CreateContainerResponse, LinuxResources,
    PodSandbox, StateChangeEvent, UpdateContainerResponse, UpdatePodSandboxRequest,
    ValidateContainerAdjustmentRequest,
};
use nri::simulator::{self, Runtime, SimConfig, default_spec};
use nri::{
    Adjustment, Backoff, Event, EventMask, HookResult, Plugin, Status, Stub, StubConfig,
    StubHandle, Update,
};
use tokio::net::UnixStream;

const WAIT: Duration = Duration::from_secs(10);

/// Records every hook call as `Event:object`.
#[derive(Default)]
struct Recorder {
    mask: Mutex<EventMask>,
    calls: Mutex<Vec<String>>,
    syncs: Mutex<Vec<(usize, usize)>>,
    configs: Mutex<Vec<ConfigureRequest>>,
    /// Containers with this name make create_container sleep this long.
    slow: Option<(&'static str, Duration)>,
    /// Size of an annotation echoed back in every adjustment.
    big_reply: usize,
    /// Answer dedicated notification RPCs with Unimplemented (old-plugin behaviour).
    legacy_plugin: bool,
}

impl Recorder {
    fn with_mask(mask: EventMask) -> Self {
        let r = Recorder::default();
        *r.mask.lock().unwrap() = mask;
        r
    }
    fn log(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn note(&self, ev: &str, id: &str) -> HookResult {
        if self.legacy_plugin {
            return Err(Status::unimplemented(format!("method {ev}")));
        }
        self.log(format!("{ev}:{id}"));
        Ok(())
    }
}

impl Plugin for Recorder {
    fn events(&self) -> EventMask {
        *self.mask.lock().unwrap()
    }
    async fn configure(&self, req: &ConfigureRequest) -> HookResult {
        self.configs.lock().unwrap().push(req.clone());
        Ok(())
    }
    async fn synchronize(
        &self,
        pods: Vec<PodSandbox>,
        ctrs: Vec<Container>,
    ) -> HookResult<Vec<ContainerUpdate>> {
        self.syncs.lock().unwrap().push((pods.len(), ctrs.len()));
        // Ask for a change of every synchronized container.
        Ok(ctrs
            .iter()
            .map(|c| {
                let mut u = Update::new(&c.id);
                u.set_cpu_shares(1000);
                u.into_proto()
            })
            .collect())
    }
    async fn run_pod_sandbox(&self, pod: &PodSandbox) -> HookResult {
        self.note("RunPodSandbox", &pod.id)
    }
    async fn stop_pod_sandbox(&self, pod: &PodSandbox) -> HookResult {
        self.note("StopPodSandbox", &pod.id)
    }
    async fn remove_pod_sandbox(&self, pod: &PodSandbox) -> HookResult {
        self.note("RemovePodSandbox", &pod.id)
    }
    async fn update_pod_sandbox(&self, req: &UpdatePodSandboxRequest) -> HookResult {
        self.log(format!(
            "UpdatePodSandbox:{}",
            req.pod.as_ref().map(|p| p.id.as_str()).unwrap_or("")
        ));
        Ok(())
    }
    async fn post_update_pod_sandbox(&self, pod: &PodSandbox) -> HookResult {
        self.note("PostUpdatePodSandbox", &pod.id)
    }
    async fn create_container(
        &self,
        _: &PodSandbox,
        c: &Container,
    ) -> HookResult<CreateContainerResponse> {
        if let Some((name, d)) = self.slow
            && c.name == name
        {
            tokio::time::sleep(d).await;
        }
        self.log(format!("CreateContainer:{}", c.id));
        let mut a = Adjustment::new();
        a.add_env("ADJUSTED_BY", "recorder")
            .remove_env("DROP_ME")
            .set_cpuset_cpus("2-3")
            .set_cpuset_mems("0")
            .set_memory_limit(256 << 20)
            .add_unified("io.max", "8:0 rbps=1048576")
            .add_annotation("recorder/seen", c.annotations.len().to_string())
            .add_bind_mount("/host/data", "/data", &["rbind", "ro"])
            .add_rlimit("RLIMIT_NOFILE", 4096, 1024)
            .add_cdi_device("example.com/dev=dev0");
        if self.big_reply > 0 {
            a.add_annotation("recorder/big", "x".repeat(self.big_reply));
        }
        Ok(a.into())
    }
    async fn post_create_container(&self, _: &PodSandbox, c: &Container) -> HookResult {
        self.note("PostCreateContainer", &c.id)
    }
    async fn start_container(&self, _: &PodSandbox, c: &Container) -> HookResult {
        self.note("StartContainer", &c.id)
    }
    async fn post_start_container(&self, _: &PodSandbox, c: &Container) -> HookResult {
        self.note("PostStartContainer", &c.id)
    }
    async fn update_container(
        &self,
        _: &PodSandbox,
        c: &Container,
        r: Option<&LinuxResources>,
    ) -> HookResult<UpdateContainerResponse> {
        self.log(format!(
            "UpdateContainer:{}:{}",
            c.id,
            r.and_then(|r| r.cpu.as_ref())
                .map(|c| c.cpus.as_str())
                .unwrap_or("")
        ));
        // Also pin the memory nodes of the updated container.
        let mut u = Update::new(&c.id);
        u.set_cpuset_mems("1");
        Ok(UpdateContainerResponse {
            update: vec![u.into_proto()],
            evict: Vec::new(),
        })
    }
    async fn post_update_container(&self, _: &PodSandbox, c: &Container) -> HookResult {
        self.note("PostUpdateContainer", &c.id)
    }
    async fn stop_container(
        &self,
        _: &PodSandbox,
        c: &Container,
    ) -> HookResult<Vec<ContainerUpdate>> {
        self.log(format!("StopContainer:{}", c.id));
        Ok(Vec::new())
    }
    async fn remove_container(&self, _: &PodSandbox, c: &Container) -> HookResult {
        self.note("RemoveContainer", &c.id)
    }
    async fn validate_container_adjustment(
        &self,
        req: &ValidateContainerAdjustmentRequest,
    ) -> HookResult {
        let id = req
            .container
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        self.log(format!("ValidateContainerAdjustment:{id}"));
        if id.contains("reject") {
            return Err(Status::failed_precondition("policy says no"));
        }
        Ok(())
    }
    async fn state_change(&self, ev: &StateChangeEvent) -> HookResult {
        if self.legacy_plugin {
            let id = ev
                .container
                .as_ref()
                .map(|c| c.id.clone())
                .or(ev.pod.as_ref().map(|p| p.id.clone()))
                .unwrap_or_default();
            self.log(format!(
                "StateChange({}):{id}",
                Event::try_from(ev.event)
                    .map(|e| e.as_str_name())
                    .unwrap_or("?")
            ));
            return Ok(());
        }
        nri::route_state_change(self, ev).await
    }
}

struct Env {
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
    rt: Runtime,
}

async fn runtime(cfg: SimConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nri/nri.sock");
    let rt = Runtime::new(cfg);
    rt.listen(&sock).await.unwrap();
    Env {
        _dir: dir,
        sock,
        rt,
    }
}

fn start_stub(
    plugin: Arc<Recorder>,
    env: &Env,
    name: &str,
    idx: &str,
) -> (StubHandle, tokio::task::JoinHandle<nri::Result<()>>) {
    let mut cfg = StubConfig::new(name, idx).unwrap().with_socket(&env.sock);
    cfg.reconnect = Some(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    });
    let stub = Stub::with_shared(plugin, cfg);
    let h = stub.handle();
    (h, tokio::spawn(stub.run()))
}

fn all_events() -> EventMask {
    EventMask::ALL
}

#[tokio::test]
async fn registration_configure_sync_and_every_event() {
    let env = runtime(SimConfig::default()).await;
    // Pre-existing state, delivered in Synchronize.
    env.rt.add_pod(simulator::pod("pod0", "pre", "default"));
    env.rt.add_container(
        simulator::container("c0", "pod0", "pre1"),
        default_spec(&["sleep"]),
    );

    let plugin = Arc::new(Recorder::with_mask(all_events()));
    let (handle, task) = start_stub(plugin.clone(), &env, "recorder", "10");
    env.rt.wait_synced(1, WAIT).await.unwrap();
    handle.wait_synchronized().await.unwrap();

    let infos = env.rt.plugins();
    assert_eq!(infos.len(), 1);
    assert_eq!(
        (infos[0].name.as_str(), infos[0].index.as_str()),
        ("recorder", "10")
    );
    assert_eq!(infos[0].events, EventMask::ALL);
    assert_eq!(infos[0].nri_version, nri::NRI_VERSION);
    assert_eq!(infos[0].sync_messages, 1);
    assert_eq!(*plugin.syncs.lock().unwrap(), vec![(1, 1)]);
    let cfg = plugin.configs.lock().unwrap()[0].clone();
    assert_eq!(
        (
            cfg.runtime_name.as_str(),
            cfg.request_timeout,
            cfg.registration_timeout
        ),
        ("containerd", 2000, 5000)
    );
    assert_eq!(handle.runtime().unwrap().runtime_version, "v2.3.4");
    // The sync reply's update reached the pre-existing container's spec.
    assert_eq!(
        env.rt.container("c0").unwrap().spec["linux"]["resources"]["cpu"]["shares"],
        1000
    );

    // Every event, in lifecycle order.
    env.rt
        .run_pod_sandbox(simulator::pod("p1", "web", "default"))
        .await
        .unwrap();
    let mut ctr = simulator::container("c1", "p1", "app");
    ctr.annotations.insert("a".into(), "b".into());
    let mut spec = default_spec(&["/bin/app"]);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin", "DROP_ME=1"]);
    let created = env.rt.create_container(ctr, spec).await.unwrap();
    env.rt.start_container("c1").await.unwrap();
    let res = LinuxResources {
        cpu: Some(drakit_proto::nri::LinuxCpu {
            cpus: "4-5".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    env.rt.update_container("c1", res.clone()).await.unwrap();
    env.rt
        .update_pod_sandbox("p1", None, Some(res))
        .await
        .unwrap();
    env.rt.stop_container("c1").await.unwrap();
    env.rt.remove_container("c1").await.unwrap();
    env.rt.stop_pod_sandbox("p1").await.unwrap();
    env.rt.remove_pod_sandbox("p1").await.unwrap();

    assert_eq!(
        plugin.calls(),
        vec![
            "RunPodSandbox:p1",
            "CreateContainer:c1",
            "ValidateContainerAdjustment:c1",
            "PostCreateContainer:c1",
            "StartContainer:c1",
            "PostStartContainer:c1",
            "UpdateContainer:c1:4-5",
            "PostUpdateContainer:c1",
            "UpdatePodSandbox:p1",
            "PostUpdatePodSandbox:p1",
            "StopContainer:c1",
            "RemoveContainer:c1",
            "StopPodSandbox:p1",
            "RemovePodSandbox:p1",
        ]
    );

    // The adjustment landed in the OCI spec and in the NRI view.
    let s = &created.spec;
    assert_eq!(
        s["process"]["env"],
        serde_json::json!(["PATH=/bin", "ADJUSTED_BY=recorder"])
    );
    assert_eq!(s["linux"]["resources"]["cpu"]["cpus"], "2-3");
    assert_eq!(s["linux"]["resources"]["cpu"]["mems"], "0");
    assert_eq!(s["linux"]["resources"]["memory"]["limit"], 256 << 20);
    assert_eq!(
        s["linux"]["resources"]["unified"]["io.max"],
        "8:0 rbps=1048576"
    );
    assert_eq!(s["annotations"]["recorder/seen"], "1");
    assert_eq!(s["process"]["rlimits"][0]["soft"], 1024);
    assert!(
        s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/data")
    );
    assert_eq!(
        created.container.cdi_devices[0].name,
        "example.com/dev=dev0"
    );
    assert_eq!(created.adjustments[0].0, "10-recorder");

    handle.shutdown();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    env.rt.shutdown();
}

#[tokio::test]
async fn validation_rejects_and_plugin_errors_fail_the_operation() {
    let env = runtime(SimConfig::default()).await;
    let plugin = Arc::new(Recorder::with_mask(all_events()));
    let (handle, _task) = start_stub(plugin, &env, "recorder", "10");
    handle.wait_synchronized().await.unwrap();
    env.rt.wait_synced(1, WAIT).await.unwrap();
    env.rt
        .run_pod_sandbox(simulator::pod("p1", "web", "default"))
        .await
        .unwrap();
    let err = env
        .rt
        .create_container(
            simulator::container("c-reject", "p1", "x"),
            default_spec(&["x"]),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("policy says no"), "{err}");
    assert!(env.rt.container("c-reject").is_none());
    handle.shutdown();
}

#[tokio::test]
async fn legacy_runtime_delivers_through_state_change() {
    let env = runtime(SimConfig {
        nri_version: "v0.8.0".into(),
        legacy_state_change: true,
        ..Default::default()
    })
    .await;
    let plugin = Arc::new(Recorder::with_mask(all_events()));
    let (handle, _task) = start_stub(plugin.clone(), &env, "recorder", "10");
    handle.wait_synchronized().await.unwrap();
    env.rt.wait_synced(1, WAIT).await.unwrap();
    // Events the old runtime does not know were dropped from the subscription.
    assert_eq!(env.rt.plugins()[0].events, EventMask::ALL_LEGACY);
    env.rt
        .run_pod_sandbox(simulator::pod("p1", "web", "default"))
        .await
        .unwrap();
    env.rt
        .create_container(
            simulator::container("c1", "p1", "app"),
            default_spec(&["a"]),
        )
        .await
        .unwrap();
    env.rt.start_container("c1").await.unwrap();
    env.rt.remove_container("c1").await.unwrap();
    // The default state_change routes to the typed hooks; no ValidateContainerAdjustment.
    assert_eq!(
        plugin.calls(),
        vec![
            "RunPodSandbox:p1",
            "CreateContainer:c1",
            "PostCreateContainer:c1",
            "StartContainer:c1",
            "PostStartContainer:c1",
            "RemoveContainer:c1",
        ]
    );
    handle.shutdown();
}

#[tokio::test]
async fn unimplemented_event_rpcs_fall_back_to_state_change() {
    let env = runtime(SimConfig::default()).await;
    let plugin = Arc::new(Recorder {
        legacy_plugin: true,
        ..Recorder::with_mask(EventMask::from_events([
            Event::RunPodSandbox,
            Event::StartContainer,
        ]))
    });
    let (handle, _task) = start_stub(plugin.clone(), &env, "old", "20");
    handle.wait_synchronized().await.unwrap();
    env.rt.wait_synced(1, WAIT).await.unwrap();
    env.rt
        .run_pod_sandbox(simulator::pod("p1", "web", "default"))
        .await
        .unwrap();
    env.rt.add_container(
        simulator::container("c1", "p1", "app"),
        default_spec(&["a"]),
    );
    env.rt.start_container("c1").await.unwrap();
    env.rt.start_container("c1").await.unwrap();
    assert_eq!(
        plugin.calls(),
        vec![
            "StateChange(RUN_POD_SANDBOX):p1",
            "StateChange(START_CONTAINER):c1",
            "StateChange(START_CONTAINER):c1"
        ]
    );
    assert!(
        env.rt
            .log()
            .iter()
            .any(|l| l.contains("deprecated interface"))
    );
    handle.shutdown();
}

#[tokio::test]
async fn chunked_synchronize_is_reassembled() {
    let env = runtime(SimConfig {
        sync_chunk: Some(8),
        ..Default::default()
    })
    .await;
    for p in 0..20 {
        env.rt
            .add_pod(simulator::pod(&format!("p{p}"), "pod", "default"));
    }
    for c in 0..30 {
        env.rt.add_container(
            simulator::container(&format!("c{c}"), "p0", "ctr"),
            default_spec(&["a"]),
        );
    }
    let plugin = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let (handle, _task) = start_stub(plugin.clone(), &env, "recorder", "10");
    handle.wait_synchronized().await.unwrap();
    env.rt.wait_synced(1, WAIT).await.unwrap();
    assert_eq!(*plugin.syncs.lock().unwrap(), vec![(20, 30)]);
    assert_eq!(env.rt.plugins()[0].sync_messages, 7);
    // Only the final reply carried updates, and they were applied.
    assert_eq!(
        env.rt.container("c29").unwrap().spec["linux"]["resources"]["cpu"]["shares"],
        1000
    );
    handle.shutdown();
}

/// The runtime dies in the middle of a chunked Synchronize: the plugin has taken part of the state
/// (with `more` set) and never the end. It must not act on the partial state, must reconnect,
/// and must see the whole state exactly once, from the fresh sync.
#[tokio::test]
async fn runtime_dying_mid_synchronize_gets_a_full_resync() {
    let env = runtime(SimConfig {
        sync_chunk: Some(8),
        ..Default::default()
    })
    .await;
    for p in 0..20 {
        env.rt
            .add_pod(simulator::pod(&format!("p{p}"), "pod", "default"));
    }
    for c in 0..30 {
        env.rt.add_container(
            simulator::container(&format!("c{c}"), "p0", "ctr"),
            default_spec(&["a"]),
        );
    }
    // 50 objects in messages of 8: the first sync dies after 3 of its 7 messages.
    env.rt.fail_next_sync_after(3);
    let plugin = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let (handle, _task) = start_stub(plugin.clone(), &env, "recorder", "10");
    env.rt.wait_synced(1, WAIT).await.unwrap();
    handle.wait_synchronized().await.unwrap();
    assert!(
        env.rt
            .log()
            .iter()
            .any(|l| l.contains("after 3 Synchronize message(s)")),
        "the first sync was cut: {:?}",
        env.rt.log()
    );
    assert!(handle.connections() >= 2, "the plugin reconnected");
    // The plugin saw one complete state, never the 24 objects of the cut sync.
    assert_eq!(*plugin.syncs.lock().unwrap(), vec![(20, 30)]);
    assert_eq!(env.rt.plugins().len(), 1);
    assert_eq!(env.rt.plugins()[0].sync_messages, 7);
    // And it serves events on the new connection.
    let c = env
        .rt
        .create_container(
            simulator::container("after", "p0", "after"),
            default_spec(&["a"]),
        )
        .await
        .unwrap();
    assert_eq!(c.adjustments.len(), 1);
    handle.shutdown();
}

#[tokio::test]
async fn oversized_synchronize_is_split_after_resource_exhausted() {
    let env = runtime(SimConfig::default()).await;
    env.rt.add_pod(simulator::pod("p0", "pod", "default"));
    // 48 containers of ~100 KiB each: ~4.7 MiB, over the 4 MiB ttrpc limit in one message.
    for c in 0..48 {
        let mut ctr = simulator::container(&format!("c{c}"), "p0", "ctr");
        ctr.annotations
            .insert("blob".into(), "y".repeat(100 * 1024));
        env.rt.add_container(ctr, default_spec(&["a"]));
    }
    let plugin = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let (handle, _task) = start_stub(plugin.clone(), &env, "recorder", "10");
    handle.wait_synchronized().await.unwrap();
    env.rt.wait_synced(1, WAIT).await.unwrap();
    assert_eq!(*plugin.syncs.lock().unwrap(), vec![(1, 48)]);
    assert!(env.rt.plugins()[0].sync_messages > 1);
    handle.shutdown();
}

#[tokio::test]
async fn large_messages_both_directions() {
    let env = runtime(SimConfig::default()).await;
    // Reply of ~4 MiB - 64 KiB from the plugin, requests > 4096 and near 4 MiB to it.
    let plugin = Arc::new(Recorder {
        big_reply: (4 << 20) - 64 * 1024,
        ..Recorder::with_mask(EventMask::of(Event::CreateContainer))
    });
    let (handle, _task) = start_stub(plugin.clone(), &env, "recorder", "10");
    handle.wait_synchronized().await.unwrap();
    env.rt.wait_synced(1, WAIT).await.unwrap();
    env.rt
        .run_pod_sandbox(simulator::pod("p1", "web", "default"))
        .await
        .unwrap();
    for (id, size) in [("small", 5000usize), ("big", (4 << 20) - 128 * 1024)] {
        let mut ctr = simulator::container(id, "p1", id);
        ctr.annotations.insert("payload".into(), "z".repeat(size));
        ctr.annotations.insert("second".into(), "2".into());
        let c = env
            .rt
            .create_container(ctr, default_spec(&["a"]))
            .await
            .unwrap();
        assert_eq!(c.spec["annotations"]["recorder/seen"], "2", "{id}");
        assert_eq!(
            c.spec["annotations"]["recorder/big"].as_str().map(str::len),
            Some(plugin.big_reply),
            "{id}"
        );
    }
    // Over the limit: refused locally with ResourceExhausted, the connection survives.
    let mut ctr = simulator::container("huge", "p1", "huge");
    ctr.annotations
        .insert("payload".into(), "z".repeat(5 << 20));
    let err = env
        .rt
        .create_container(ctr, default_spec(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(nri::Code::ResourceExhausted), "{err}");
    env.rt
        .create_container(
            simulator::container("after", "p1", "after"),
            default_spec(&["a"]),
        )
        .await
        .unwrap();
    assert_eq!(env.rt.plugins().len(), 1);
    handle.shutdown();
}

#[tokio::test]
async fn update_containers_from_another_task() {
    let env = runtime(SimConfig::default()).await;
    env.rt.add_pod(simulator::pod("p0", "pod", "default"));
    env.rt.add_container(
        simulator::container("c0", "p0", "ctr"),
        default_spec(&["a"]),
    );
    let plugin = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let (handle, _task) = start_stub(plugin, &env, "recorder", "10");
    assert!(matches!(
        handle.update_containers(Vec::new(), Vec::new()).await,
        Err(nri::Error::NotConnected) | Ok(_)
    ));
    handle.wait_synchronized().await.unwrap();
    env.rt.wait_synced(1, WAIT).await.unwrap();
    let h2 = handle.clone();
    let failed = tokio::spawn(async move {
        let mut u = Update::new("c0");
        u.set_cpuset_cpus("7").set_pids_limit(5);
        let mut missing = Update::new("nope");
        missing.set_cpuset_cpus("1");
        h2.update_containers(
            vec![u.into_proto(), missing.into_proto()],
            vec![nri::eviction("c0", "testing")],
        )
        .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].container_id, "nope");
    let reqs = env.rt.wait_update_requests(1, WAIT).await.unwrap();
    assert_eq!(reqs[0].update.len(), 2);
    let c = env.rt.container("c0").unwrap();
    assert_eq!(c.spec["linux"]["resources"]["cpu"]["cpus"], "7");
    assert_eq!(c.spec["linux"]["resources"]["pids"]["limit"], 5);
    assert_eq!(c.evictions, vec!["testing".to_string()]);
    handle.shutdown();
}

#[tokio::test]
async fn runtime_restart_reconnects_and_resynchronizes() {
    let env = runtime(SimConfig::default()).await;
    env.rt.add_pod(simulator::pod("p0", "pod", "default"));
    let plugin = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let (handle, task) = start_stub(plugin.clone(), &env, "recorder", "10");
    env.rt.wait_synced(1, WAIT).await.unwrap();
    env.rt
        .create_container(
            simulator::container("c1", "p0", "one"),
            default_spec(&["a"]),
        )
        .await
        .unwrap();

    env.rt.restart().await.unwrap();
    env.rt.wait_synced(2, WAIT).await.unwrap();
    handle.wait_synchronized().await.unwrap();
    env.rt.wait_synced(1, WAIT).await.unwrap();
    assert_eq!(handle.connections(), 2);
    // The second sync saw the container created before the restart.
    assert_eq!(*plugin.syncs.lock().unwrap(), vec![(1, 0), (1, 1)]);
    let c = env
        .rt
        .create_container(
            simulator::container("c2", "p0", "two"),
            default_spec(&["a"]),
        )
        .await
        .unwrap();
    assert_eq!(c.adjustments.len(), 1);
    assert_eq!(env.rt.plugins().len(), 1);

    // A runtime that is down for a while: the stub keeps retrying.
    let path = env.rt.stop_listening().unwrap();
    env.rt.disconnect_all();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.rt.listen(&path).await.unwrap();
    env.rt.wait_synced(3, WAIT).await.unwrap();
    assert!(handle.connections() >= 3);
    handle.shutdown();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(handle.state(), nri::StubState::Stopped);
}

#[tokio::test]
async fn slow_plugin_is_dropped_then_reconnects() {
    let env = runtime(SimConfig {
        request_timeout: Duration::from_millis(1000),
        ..Default::default()
    })
    .await;
    env.rt.add_pod(simulator::pod("p0", "pod", "default"));
    let plugin = Arc::new(Recorder {
        slow: Some(("slow", Duration::from_secs(60))),
        ..Recorder::with_mask(EventMask::of(Event::CreateContainer))
    });
    let (handle, _task) = start_stub(plugin.clone(), &env, "recorder", "10");
    env.rt.wait_synced(1, WAIT).await.unwrap();
    // The runtime gives up after its request timeout, drops the plugin and creates the
    // container unadjusted, like containerd.
    let c = env
        .rt
        .create_container(
            simulator::container("c-slow", "p0", "slow"),
            default_spec(&["a"]),
        )
        .await
        .unwrap();
    assert!(c.adjustments.is_empty());
    assert!(
        env.rt
            .log()
            .iter()
            .any(|l| l.contains("dropping plugin 10-recorder")),
        "{:?}",
        env.rt.log()
    );
    // The stub notices the closed connection, reconnects and serves again.
    env.rt.wait_synced(2, WAIT).await.unwrap();
    let c = env
        .rt
        .create_container(
            simulator::container("c-fast", "p0", "fast"),
            default_spec(&["a"]),
        )
        .await
        .unwrap();
    assert_eq!(c.adjustments.len(), 1);
    // The handler of the slow call was cancelled at the runtime's deadline (timeout_nano).
    assert!(
        !plugin
            .calls()
            .contains(&"CreateContainer:c-slow".to_string())
    );
    handle.shutdown();
}

#[tokio::test]
async fn plugins_run_in_index_order_and_see_earlier_adjustments() {
    let env = runtime(SimConfig::default()).await;
    env.rt.add_pod(simulator::pod("p0", "pod", "default"));
    let late = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let early = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let (h1, _t1) = start_stub(late.clone(), &env, "late", "90");
    let (h2, _t2) = start_stub(early.clone(), &env, "early", "05");
    env.rt.wait_synced(2, WAIT).await.unwrap();
    let c = env
        .rt
        .create_container(simulator::container("c1", "p0", "x"), default_spec(&["a"]))
        .await
        .unwrap();
    let order: Vec<&str> = c.adjustments.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(order, vec!["05-early", "90-late"]);
    // The later plugin saw the annotation added by the earlier one.
    assert_eq!(c.adjustments[1].1.annotations["recorder/seen"], "1");
    h1.shutdown();
    h2.shutdown();
}

#[tokio::test]
async fn prelaunched_plugin_over_inherited_fd() {
    use std::os::fd::IntoRawFd;
    let rt = Runtime::new(SimConfig::default());
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let ours = UnixStream::from_std(ours).unwrap();
    let fd = theirs.into_raw_fd();
    let cfg = StubConfig::from_vars(
        |k| match k {
            "NRI_PLUGIN_SOCKET" => Some(fd.to_string()),
            "NRI_PLUGIN_NAME" => Some("fdplugin".into()),
            "NRI_PLUGIN_IDX" => Some("42".into()),
            _ => None,
        },
        Some("/opt/nri/plugins/99-ignored"),
        None,
        None,
    )
    .unwrap();
    assert_eq!(cfg.transport, nri::Transport::Fd(fd));
    let plugin = Arc::new(Recorder::with_mask(EventMask::of(Event::RunPodSandbox)));
    let stub = Stub::with_shared(plugin.clone(), cfg);
    let handle = stub.handle();
    let task = tokio::spawn(stub.run());
    let info = rt.attach(ours).await.unwrap();
    assert_eq!(
        (info.name.as_str(), info.index.as_str()),
        ("fdplugin", "42")
    );
    rt.run_pod_sandbox(simulator::pod("p1", "x", "y"))
        .await
        .unwrap();
    assert_eq!(plugin.calls(), vec!["RunPodSandbox:p1"]);
    handle.wait_synchronized().await.unwrap();
    // A runtime-launched plugin does not reconnect: run() ends when the runtime closes.
    rt.disconnect_all();
    let res = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(
        res.is_err(),
        "fd transport returns the connection error: {res:?}"
    );
}

#[tokio::test]
async fn simulator_survives_a_garbage_peer() {
    use tokio::io::AsyncWriteExt;
    let env = runtime(SimConfig {
        registration_timeout: Duration::from_millis(1000),
        ..Default::default()
    })
    .await;
    // Unknown conn id, then a ttrpc request with a garbage envelope, then silence.
    let mut bad = UnixStream::connect(&env.sock).await.unwrap();
    bad.write_all(&[0, 0, 0, 9, 0, 0, 0, 2, 1, 2])
        .await
        .unwrap();
    bad.write_all(&[
        0, 0, 0, 2, 0, 0, 0, 13, 0, 0, 0, 3, 0, 0, 0, 1, 1, 0, 0xff, 0xff, 0xff,
    ])
    .await
    .unwrap();
    // A plugin that sends a truncated header and hangs up.
    let mut cut = UnixStream::connect(&env.sock).await.unwrap();
    cut.write_all(&[0, 0]).await.unwrap();
    drop(cut);
    // A real plugin still registers.
    let plugin = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let (handle, _task) = start_stub(plugin, &env, "recorder", "10");
    env.rt.wait_synced(1, WAIT).await.unwrap();
    env.rt.add_pod(simulator::pod("p0", "pod", "default"));
    let c = env
        .rt
        .create_container(simulator::container("c1", "p0", "x"), default_spec(&["a"]))
        .await
        .unwrap();
    assert_eq!(c.adjustments.len(), 1);
    // Both bad peers were rejected with a reason (no registration in time / truncated frame).
    let deadline = tokio::time::Instant::now() + WAIT;
    while env
        .rt
        .log()
        .iter()
        .filter(|l| l.contains("rejected"))
        .count()
        < 2
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = env.rt.log();
    assert_eq!(
        log.iter().filter(|l| l.contains("rejected")).count(),
        2,
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("truncated mux frame header")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("did not register")),
        "{log:?}"
    );
    drop(bad);
    handle.shutdown();
}

#[tokio::test]
async fn concurrent_update_containers_are_matched_by_stream_id() {
    let env = runtime(SimConfig::default()).await;
    env.rt.add_pod(simulator::pod("p0", "pod", "default"));
    for i in 0..50 {
        env.rt.add_container(
            simulator::container(&format!("c{i}"), "p0", "ctr"),
            default_spec(&["a"]),
        );
    }
    let plugin = Arc::new(Recorder::with_mask(EventMask::of(Event::CreateContainer)));
    let (handle, _task) = start_stub(plugin, &env, "recorder", "10");
    env.rt.wait_synced(1, WAIT).await.unwrap();
    handle.wait_synchronized().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut u = Update::new(format!("c{i}"));
            u.set_cpuset_cpus(i.to_string());
            // Every other request names a missing container, so replies differ per call.
            let mut ups = vec![u.into_proto()];
            if i % 2 == 1 {
                ups.push(Update::new(format!("missing-{i}")).into_proto());
            }
            (i, h.update_containers(ups, Vec::new()).await)
        }));
    }
    for t in tasks {
        let (i, res) = t.await.unwrap();
        let failed = res.unwrap();
        if i % 2 == 1 {
            assert_eq!(failed.len(), 1, "call {i}");
            assert_eq!(failed[0].container_id, format!("missing-{i}"));
        } else {
            assert!(failed.is_empty(), "call {i}");
        }
    }
    for i in 0..50 {
        let c = env.rt.container(&format!("c{i}")).unwrap();
        assert_eq!(c.spec["linux"]["resources"]["cpu"]["cpus"], i.to_string());
    }
    handle.shutdown();
}
