//! A containerd-like NRI runtime for tests and benchmarks (feature `simulator`).
//!
//! It listens on a unix socket (or takes a connected stream), waits for RegisterPlugin, calls
//! Configure and a (possibly chunked) Synchronize, then relays pod and container lifecycle events to
//! the plugins in index order, with containerd's request timeout (2 s by default). Adjustments and
//! updates the plugins return are applied to each container's OCI spec (JSON) so tests can assert
//! on the final spec. Plugins that time out or whose connection breaks are dropped, as containerd
//! does; plugin errors fail the operation. [`Runtime::restart`] closes every connection and
//! listens again, like a runtime restart.

mod oci;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use oci::{
    apply_adjustment, apply_adjustment_to_container, apply_resources, default_spec, merge_resources,
};

use drakit_proto::nri::{
    ConfigureRequest, ConfigureResponse, Container, ContainerAdjustment, ContainerEviction,
    ContainerState, ContainerUpdate, CreateContainerRequest, CreateContainerResponse, Empty, Event,
    LinuxContainer, LinuxResources, PodSandbox, PostCreateContainerRequest,
    PostStartContainerRequest, PostUpdateContainerRequest, PostUpdatePodSandboxRequest,
    RegisterPluginRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StateChangeEvent, StopContainerRequest, StopContainerResponse,
    StopPodSandboxRequest, SynchronizeRequest, SynchronizeResponse, UpdateContainerRequest,
    UpdateContainerResponse, UpdateContainersRequest, UpdateContainersResponse,
    UpdatePodSandboxRequest, ValidateContainerAdjustmentRequest,
    ValidateContainerAdjustmentResponse,
};
use prost::Message;
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};

use crate::conn::{BoxFuture, Connection, Handler, IncomingCall, Side};
use crate::error::{Error, Result};
use crate::event::EventMask;
use crate::stub::{PLUGIN_SERVICE, RUNTIME_SERVICE, validate_index, validate_name};
use crate::ttrpc::{self, Code, Status};

/// Simulator settings; defaults match containerd 2.3 (NRI v0.12.0).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// `ConfigureRequest.runtime_name`.
    pub runtime_name: String,
    /// `ConfigureRequest.runtime_version`.
    pub runtime_version: String,
    /// `ConfigureRequest.NRI_version`; below v0.10 only events up to RemoveContainer are valid.
    pub nri_version: String,
    /// `ConfigureRequest.config`.
    pub config: String,
    /// How long a connected plugin has to call RegisterPlugin.
    pub registration_timeout: Duration,
    /// Deadline of every runtime->plugin request.
    pub request_timeout: Duration,
    /// Force chunked Synchronize with this many objects per message (containerd only chunks
    /// after a ResourceExhausted failure; this simulator does that too when `None`).
    pub sync_chunk: Option<usize>,
    /// Deliver notification events only through `StateChange` (NRI <= v0.11 behaviour).
    pub legacy_state_change: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            runtime_name: "containerd".into(),
            runtime_version: "v2.3.4".into(),
            nri_version: "v0.12.0".into(),
            config: String::new(),
            registration_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            sync_chunk: None,
            legacy_state_change: false,
        }
    }
}

/// A plugin the simulator has synchronized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Simulator-wide connection number.
    pub id: u64,
    /// Registered name.
    pub name: String,
    /// Registered index.
    pub index: String,
    /// `RegisterPluginRequest.NRI_version`.
    pub nri_version: String,
    /// Subscribed events (after resolving 0 = all).
    pub events: EventMask,
    /// How many Synchronize messages the sync took.
    pub sync_messages: usize,
}

/// A container as the simulator keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimContainer {
    /// The NRI view (adjustments applied).
    pub container: Container,
    /// The OCI spec (adjustments and updates applied).
    pub spec: Value,
    /// Adjustments in plugin order: (`IDX-NAME`, adjustment).
    pub adjustments: Vec<(String, ContainerAdjustment)>,
    /// Evictions requested by plugins for this container.
    pub evictions: Vec<String>,
}

struct SimPlugin {
    info: PluginInfo,
    conn: Connection,
    fallback: Mutex<EventMask>,
}

impl SimPlugin {
    fn display(&self) -> String {
        format!("{}-{}", self.info.index, self.info.name)
    }
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, PodSandbox>,
    containers: BTreeMap<String, SimContainer>,
}

struct Inner {
    cfg: SimConfig,
    state: Mutex<State>,
    plugins: Mutex<Vec<Arc<SimPlugin>>>,
    op: tokio::sync::Mutex<()>,
    updates: Mutex<Vec<UpdateContainersRequest>>,
    updates_seen: watch::Sender<usize>,
    synced: watch::Sender<u64>,
    log: Mutex<Vec<String>>,
    listener: Mutex<Option<(PathBuf, tokio::task::AbortHandle)>>,
    next_id: AtomicU64,
    /// Armed by [`Runtime::fail_next_sync_after`]: the next Synchronize dies after this many
    /// answered messages.
    fail_sync_after: Mutex<Option<usize>>,
}

/// The simulated runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("plugins", &self.plugins())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pod sandbox message for tests.
pub fn pod(id: &str, name: &str, namespace: &str) -> PodSandbox {
    PodSandbox {
        id: id.into(),
        name: name.into(),
        uid: format!("uid-{id}"),
        namespace: namespace.into(),
        ..Default::default()
    }
}

/// A container message for tests.
pub fn container(id: &str, pod_id: &str, name: &str) -> Container {
    Container {
        id: id.into(),
        pod_sandbox_id: pod_id.into(),
        name: name.into(),
        ..Default::default()
    }
}

impl Runtime {
    /// A runtime with no plugins, pods or containers.
    pub fn new(cfg: SimConfig) -> Self {
        let (updates_seen, _) = watch::channel(0);
        let (synced, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(State::default()),
                plugins: Mutex::new(Vec::new()),
                op: tokio::sync::Mutex::new(()),
                updates: Mutex::new(Vec::new()),
                updates_seen,
                synced,
                log: Mutex::new(Vec::new()),
                listener: Mutex::new(None),
                next_id: AtomicU64::new(1),
                fail_sync_after: Mutex::new(None),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    // ----- connections -------------------------------------------------------------------

    /// Listen on `path` (stale socket removed, parent created) and accept plugins in the
    /// background; each one is registered, configured and synchronized.
    pub async fn listen(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing stale {}", path.display()), e)),
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
        let rt = self.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let rt = rt.clone();
                        tokio::spawn(async move {
                            if let Err(e) = rt.attach(stream).await {
                                rt.note(format!("plugin connection rejected: {e}"));
                            }
                        });
                    }
                    Err(e) => {
                        rt.note(format!("accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        *lock(&self.inner.listener) = Some((path, task.abort_handle()));
        Ok(())
    }

    /// Simulate a runtime restart: stop listening, close every plugin connection (no goodbye,
    /// like containerd), then listen again on the same path. Pods and containers are kept.
    pub async fn restart(&self) -> Result<()> {
        let path = self.stop_listening();
        self.disconnect_all();
        match path {
            Some(p) => self.listen(p).await,
            None => Ok(()),
        }
    }

    /// Simulate a runtime that dies in the middle of a chunked Synchronize: the next sync drops
    /// its connection (no goodbye) once `messages` Synchronize messages were answered, so the
    /// plugin has seen part of the state with `more` set and never the end. The connection's
    /// handshake fails; the plugin is expected to reconnect and get a full sync. One-shot.
    pub fn fail_next_sync_after(&self, messages: usize) {
        *lock(&self.inner.fail_sync_after) = Some(messages);
    }

    /// Stop accepting; returns the socket path that was used.
    pub fn stop_listening(&self) -> Option<PathBuf> {
        let (path, task) = lock(&self.inner.listener).take()?;
        task.abort();
        let _ = std::fs::remove_file(&path);
        Some(path)
    }

    /// Close all plugin connections.
    pub fn disconnect_all(&self) {
        let plugins = std::mem::take(&mut *lock(&self.inner.plugins));
        for p in plugins {
            p.conn.close();
        }
    }

    /// Stop listening and disconnect everything.
    pub fn shutdown(&self) {
        self.stop_listening();
        self.disconnect_all();
    }

    /// Run the registration handshake on a connected stream (e.g. one end of a socketpair for a
    /// pre-launched plugin); the plugin joins the event list once synchronized.
    pub async fn attach(&self, stream: UnixStream) -> Result<PluginInfo> {
        let (tx, rx) = oneshot::channel();
        let svc = Arc::new(RuntimeService {
            rt: Arc::downgrade(&self.inner),
            register: Mutex::new(Some(tx)),
        });
        let conn = Connection::spawn(stream, Side::Runtime, svc);
        let res = self.handshake(&conn, rx).await;
        if res.is_err() {
            conn.close();
        }
        res
    }

    async fn handshake(
        &self,
        conn: &Connection,
        rx: oneshot::Receiver<RegisterPluginRequest>,
    ) -> Result<PluginInfo> {
        let cfg = &self.inner.cfg;
        let reg = tokio::select! {
            r = tokio::time::timeout(cfg.registration_timeout, rx) => match r {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => return Err(conn.closed().await),
                Err(_) => return Err(Error::Protocol(format!("plugin did not register within {:?}", cfg.registration_timeout))),
            },
            e = conn.closed() => return Err(e),
        };
        let creq = ConfigureRequest {
            config: cfg.config.clone(),
            runtime_name: cfg.runtime_name.clone(),
            runtime_version: cfg.runtime_version.clone(),
            registration_timeout: i64::try_from(cfg.registration_timeout.as_millis())
                .unwrap_or(i64::MAX),
            request_timeout: i64::try_from(cfg.request_timeout.as_millis()).unwrap_or(i64::MAX),
            nri_version: cfg.nri_version.clone(),
        };
        let cres: ConfigureResponse = conn
            .call(
                PLUGIN_SERVICE,
                "Configure",
                &creq,
                Some(cfg.request_timeout),
            )
            .await?;
        let valid = EventMask::valid_for_runtime(&cfg.nri_version);
        let requested = EventMask::from_bits(u32::try_from(cres.events).unwrap_or(u32::MAX));
        let events = if requested.is_empty() {
            valid
        } else if requested.intersect(valid) != requested {
            return Err(Error::Protocol(format!(
                "invalid plugin events {requested:?} (runtime accepts {valid:?})"
            )));
        } else {
            requested
        };
        let _guard = self.inner.op.lock().await;
        let (pods, ctrs) = {
            let st = lock(&self.inner.state);
            (
                st.pods.values().cloned().collect::<Vec<_>>(),
                st.containers
                    .values()
                    .map(|c| c.container.clone())
                    .collect::<Vec<_>>(),
            )
        };
        let (updates, sync_messages) = self.synchronize(conn, pods, ctrs).await?;
        self.apply_updates(&updates, &[]);
        let info = PluginInfo {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            name: reg.plugin_name,
            index: reg.plugin_idx,
            nri_version: reg.nri_version,
            events,
            sync_messages,
        };
        let plugin = Arc::new(SimPlugin {
            info: info.clone(),
            conn: conn.clone(),
            fallback: Mutex::new(EventMask::EMPTY),
        });
        {
            let mut list = lock(&self.inner.plugins);
            list.push(plugin);
            list.sort_by(|a, b| a.info.index.cmp(&b.info.index));
        }
        self.inner.synced.send_modify(|n| *n += 1);
        Ok(info)
    }

    async fn synchronize(
        &self,
        conn: &Connection,
        mut pods: Vec<PodSandbox>,
        mut ctrs: Vec<Container>,
    ) -> Result<(Vec<ContainerUpdate>, usize)> {
        let timeout = Some(self.inner.cfg.request_timeout);
        let chunk = match self.inner.cfg.sync_chunk {
            Some(n) => n.max(1),
            None => {
                let req = SynchronizeRequest {
                    pods,
                    containers: ctrs,
                    more: false,
                };
                match conn
                    .call::<_, SynchronizeResponse>(PLUGIN_SERVICE, "Synchronize", &req, timeout)
                    .await
                {
                    Ok(r) => return Ok((r.update, 1)),
                    Err(e) if e.code() == Some(Code::ResourceExhausted) => {
                        // Size chunks to about half the limit, at least 8 objects each.
                        let total = req.encoded_len().max(1);
                        pods = req.pods;
                        ctrs = req.containers;
                        let objects = (pods.len() + ctrs.len()).max(1);
                        let per = (ttrpc::MAX_DATA_LEN / 2) * objects / total;
                        per.max(8)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let mut items: Vec<(Option<PodSandbox>, Option<Container>)> = pods
            .into_iter()
            .map(|p| (Some(p), None))
            .chain(ctrs.into_iter().map(|c| (None, Some(c))))
            .collect();
        let mut messages = 0;
        loop {
            let rest = items.split_off(chunk.min(items.len()));
            let this = std::mem::replace(&mut items, rest);
            let more = !items.is_empty();
            let mut req = SynchronizeRequest {
                more,
                ..Default::default()
            };
            for (p, c) in this {
                req.pods.extend(p);
                req.containers.extend(c);
            }
            messages += 1;
            let resp: SynchronizeResponse = conn
                .call(PLUGIN_SERVICE, "Synchronize", &req, timeout)
                .await?;
            {
                let mut armed = lock(&self.inner.fail_sync_after);
                if more && *armed == Some(messages) {
                    *armed = None;
                    conn.close();
                    return Err(Error::Protocol(format!(
                        "runtime went away after {messages} Synchronize message(s) (simulated)"
                    )));
                }
            }
            if more {
                if !resp.more || !resp.update.is_empty() {
                    return Err(Error::Protocol(
                        "plugin does not handle split sync requests".into(),
                    ));
                }
                continue;
            }
            return Ok((resp.update, messages));
        }
    }

    /// Wait until at least `n` plugins have been synchronized since this runtime was created
    /// (counting reconnections).
    pub async fn wait_synced(&self, n: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.inner.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n))
            .await
            .map_err(|_| {
                Error::Protocol(format!(
                    "fewer than {n} plugin synchronizations within {timeout:?}"
                ))
            })?
            .map_err(|_| Error::Closed)?;
        Ok(())
    }

    /// Plugins currently in the event list, in index order.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        lock(&self.inner.plugins)
            .iter()
            .map(|p| p.info.clone())
            .collect()
    }

    /// Things the simulator logged: rejected connections, dropped plugins.
    pub fn log(&self) -> Vec<String> {
        lock(&self.inner.log).clone()
    }

    fn note(&self, msg: String) {
        tracing::info!("nri simulator: {msg}");
        lock(&self.inner.log).push(msg);
    }

    // ----- state ------------------------------------------------------------------------

    /// Add a pod without events (exists before plugins connect; sent in Synchronize).
    pub fn add_pod(&self, pod: PodSandbox) {
        lock(&self.inner.state).pods.insert(pod.id.clone(), pod);
    }

    /// Add a container without events (sent in Synchronize); an unset state becomes running.
    pub fn add_container(&self, mut container: Container, spec: Value) {
        if container.state == ContainerState::ContainerUnknown as i32 {
            container.state = ContainerState::ContainerRunning as i32;
        }
        lock(&self.inner.state).containers.insert(
            container.id.clone(),
            SimContainer {
                container,
                spec,
                adjustments: Vec::new(),
                evictions: Vec::new(),
            },
        );
    }

    /// A container's current state.
    pub fn container(&self, id: &str) -> Option<SimContainer> {
        lock(&self.inner.state).containers.get(id).cloned()
    }

    /// A pod.
    pub fn pod(&self, id: &str) -> Option<PodSandbox> {
        lock(&self.inner.state).pods.get(id).cloned()
    }

    /// Every UpdateContainers request received so far.
    pub fn update_requests(&self) -> Vec<UpdateContainersRequest> {
        lock(&self.inner.updates).clone()
    }

    /// Wait until at least `n` UpdateContainers requests have arrived.
    pub async fn wait_update_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<UpdateContainersRequest>> {
        let mut rx = self.inner.updates_seen.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n))
            .await
            .map_err(|_| {
                Error::Protocol(format!(
                    "fewer than {n} UpdateContainers within {timeout:?}"
                ))
            })?
            .map_err(|_| Error::Closed)?;
        Ok(self.update_requests())
    }

    /// Apply updates to stored containers; returns those that failed (unknown container).
    fn apply_updates(
        &self,
        updates: &[ContainerUpdate],
        evict: &[ContainerEviction],
    ) -> Vec<ContainerUpdate> {
        let mut failed = Vec::new();
        let mut st = lock(&self.inner.state);
        for u in updates {
            match st.containers.get_mut(&u.container_id) {
                Some(c) => {
                    if let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                        apply_resources(&mut c.spec["linux"]["resources"], r);
                        let linux = c
                            .container
                            .linux
                            .get_or_insert_with(LinuxContainer::default);
                        merge_resources(linux.resources.get_or_insert_with(Default::default), r);
                    }
                }
                None if u.ignore_failure => {}
                None => failed.push(u.clone()),
            }
        }
        for e in evict {
            if let Some(c) = st.containers.get_mut(&e.container_id) {
                c.evictions.push(e.reason.clone());
            }
        }
        failed
    }

    fn pod_of(&self, id: &str) -> Result<PodSandbox> {
        self.pod(id)
            .ok_or_else(|| Error::Config(format!("simulator: unknown pod {id:?}")))
    }

    fn container_of(&self, id: &str) -> Result<(PodSandbox, SimContainer)> {
        let c = self
            .container(id)
            .ok_or_else(|| Error::Config(format!("simulator: unknown container {id:?}")))?;
        let pod = self.pod(&c.container.pod_sandbox_id).unwrap_or_default();
        Ok((pod, c))
    }

    fn set_state(&self, id: &str, s: ContainerState) {
        if let Some(c) = lock(&self.inner.state).containers.get_mut(id) {
            c.container.state = s as i32;
        }
    }

    // ----- event delivery ---------------------------------------------------------------

    fn subscribed(&self, event: Event) -> Vec<Arc<SimPlugin>> {
        lock(&self.inner.plugins)
            .iter()
            .filter(|p| p.info.events.contains(event))
            .cloned()
            .collect()
    }

    fn drop_plugin(&self, p: &SimPlugin, why: &Error) {
        self.note(format!("dropping plugin {}: {why}", p.display()));
        p.conn.close();
        lock(&self.inner.plugins).retain(|x| x.info.id != p.info.id);
    }

    /// One call to one plugin. `Ok(None)`: the plugin was dropped (transport error or timeout),
    /// carry on as if it had not answered (containerd's behaviour).
    async fn call_one<Q: Message, R: Message + Default>(
        &self,
        p: &SimPlugin,
        method: &str,
        req: &Q,
    ) -> Result<Option<R>> {
        match p
            .conn
            .call(
                PLUGIN_SERVICE,
                method,
                req,
                Some(self.inner.cfg.request_timeout),
            )
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e)
                if e.is_transport()
                    || matches!(e, Error::DeadlineExceeded { .. })
                    || e.code() == Some(Code::DeadlineExceeded) =>
            {
                self.drop_plugin(p, &e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn notify(
        &self,
        event: Event,
        method: &str,
        req: &impl Message,
        pod: &PodSandbox,
        ctr: Option<&Container>,
    ) -> Result<()> {
        for p in self.subscribed(event) {
            let legacy = self.inner.cfg.legacy_state_change || lock(&p.fallback).contains(event);
            if !legacy {
                match p
                    .conn
                    .call::<_, Empty>(
                        PLUGIN_SERVICE,
                        method,
                        req,
                        Some(self.inner.cfg.request_timeout),
                    )
                    .await
                {
                    Ok(_) => continue,
                    Err(e) if e.code() == Some(Code::Unimplemented) => {
                        self.note(format!(
                            "plugin {} uses a deprecated interface (StateChange for {method})",
                            p.display()
                        ));
                        let mut f = lock(&p.fallback);
                        *f = *f | event;
                    }
                    Err(e) if e.is_transport() || e.code() == Some(Code::DeadlineExceeded) => {
                        self.drop_plugin(&p, &e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let ev = StateChangeEvent {
                event: event as i32,
                pod: Some(pod.clone()),
                container: ctr.cloned(),
            };
            self.call_one::<_, Empty>(&p, "StateChange", &ev).await?;
        }
        Ok(())
    }

    /// RunPodSandbox: store the pod and notify.
    pub async fn run_pod_sandbox(&self, pod: PodSandbox) -> Result<()> {
        let _g = self.inner.op.lock().await;
        self.add_pod(pod.clone());
        let req = RunPodSandboxRequest {
            pod: Some(pod.clone()),
        };
        self.notify(Event::RunPodSandbox, "RunPodSandbox", &req, &pod, None)
            .await
    }

    /// StopPodSandbox.
    pub async fn stop_pod_sandbox(&self, pod_id: &str) -> Result<()> {
        let _g = self.inner.op.lock().await;
        let pod = self.pod_of(pod_id)?;
        let req = StopPodSandboxRequest {
            pod: Some(pod.clone()),
        };
        self.notify(Event::StopPodSandbox, "StopPodSandbox", &req, &pod, None)
            .await
    }

    /// RemovePodSandbox: notify, then forget the pod.
    pub async fn remove_pod_sandbox(&self, pod_id: &str) -> Result<()> {
        let _g = self.inner.op.lock().await;
        let pod = self.pod_of(pod_id)?;
        let req = RemovePodSandboxRequest {
            pod: Some(pod.clone()),
        };
        self.notify(
            Event::RemovePodSandbox,
            "RemovePodSandbox",
            &req,
            &pod,
            None,
        )
        .await?;
        lock(&self.inner.state).pods.remove(pod_id);
        Ok(())
    }

    /// UpdatePodSandbox then PostUpdatePodSandbox.
    pub async fn update_pod_sandbox(
        &self,
        pod_id: &str,
        overhead: Option<LinuxResources>,
        resources: Option<LinuxResources>,
    ) -> Result<()> {
        let _g = self.inner.op.lock().await;
        let pod = self.pod_of(pod_id)?;
        let req = UpdatePodSandboxRequest {
            pod: Some(pod.clone()),
            overhead_linux_resources: overhead,
            linux_resources: resources,
        };
        for p in self.subscribed(Event::UpdatePodSandbox) {
            self.call_one::<_, Empty>(&p, "UpdatePodSandbox", &req)
                .await?;
        }
        let req = PostUpdatePodSandboxRequest {
            pod: Some(pod.clone()),
        };
        self.notify(
            Event::PostUpdatePodSandbox,
            "PostUpdatePodSandbox",
            &req,
            &pod,
            None,
        )
        .await
    }

    /// CreateContainer through every subscribed plugin in index order (each sees the previous
    /// plugins' adjustments), ValidateContainerAdjustment, store, then PostCreateContainer.
    /// Returns the stored container with its final spec.
    pub async fn create_container(
        &self,
        container: Container,
        spec: Value,
    ) -> Result<SimContainer> {
        let _g = self.inner.op.lock().await;
        let pod = self.pod_of(&container.pod_sandbox_id)?;
        let mut sc = SimContainer {
            container,
            spec,
            adjustments: Vec::new(),
            evictions: Vec::new(),
        };
        // Like containerd, CreateContainer shows the container with no state yet.
        let mut combined = ContainerAdjustment::default();
        let mut all_updates = Vec::new();
        let mut all_evictions = Vec::new();
        for p in self.subscribed(Event::CreateContainer) {
            let req = CreateContainerRequest {
                pod: Some(pod.clone()),
                container: Some(sc.container.clone()),
            };
            let Some(resp) = self
                .call_one::<_, CreateContainerResponse>(&p, "CreateContainer", &req)
                .await?
            else {
                continue;
            };
            if let Some(adj) = resp.adjust {
                apply_adjustment(&mut sc.spec, &adj);
                apply_adjustment_to_container(&mut sc.container, &adj);
                merge_adjustment(&mut combined, &adj);
                sc.adjustments.push((p.display(), adj));
            }
            all_updates.extend(resp.update);
            all_evictions.extend(resp.evict);
        }
        for p in self.subscribed(Event::ValidateContainerAdjustment) {
            let req = ValidateContainerAdjustmentRequest {
                pod: Some(pod.clone()),
                container: Some(sc.container.clone()),
                adjust: Some(combined.clone()),
                update: all_updates.clone(),
                ..Default::default()
            };
            if let Some(v) = self
                .call_one::<_, ValidateContainerAdjustmentResponse>(
                    &p,
                    "ValidateContainerAdjustment",
                    &req,
                )
                .await?
                && v.reject
            {
                return Err(Error::Status {
                    call: format!("{PLUGIN_SERVICE}/ValidateContainerAdjustment"),
                    status: Status::new(
                        Code::FailedPrecondition,
                        format!("rejected by {}: {}", p.display(), v.reason),
                    ),
                });
            }
        }
        let id = sc.container.id.clone();
        sc.container.state = ContainerState::ContainerCreated as i32;
        lock(&self.inner.state)
            .containers
            .insert(id.clone(), sc.clone());
        self.apply_updates(&all_updates, &all_evictions);
        let req = PostCreateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(sc.container.clone()),
        };
        self.notify(
            Event::PostCreateContainer,
            "PostCreateContainer",
            &req,
            &pod,
            Some(&sc.container),
        )
        .await?;
        self.container(&id)
            .ok_or_else(|| Error::Config(format!("simulator: container {id:?} vanished")))
    }

    /// StartContainer then PostStartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let _g = self.inner.op.lock().await;
        let (pod, c) = self.container_of(id)?;
        let req = StartContainerRequest {
            pod: Some(pod.clone()),
            container: Some(c.container.clone()),
        };
        self.notify(
            Event::StartContainer,
            "StartContainer",
            &req,
            &pod,
            Some(&c.container),
        )
        .await?;
        self.set_state(id, ContainerState::ContainerRunning);
        let (pod, c) = self.container_of(id)?;
        let req = PostStartContainerRequest {
            pod: Some(pod.clone()),
            container: Some(c.container.clone()),
        };
        self.notify(
            Event::PostStartContainer,
            "PostStartContainer",
            &req,
            &pod,
            Some(&c.container),
        )
        .await
    }

    /// UpdateContainer (plugins may return updates, applied along with `resources`), then
    /// PostUpdateContainer.
    pub async fn update_container(&self, id: &str, resources: LinuxResources) -> Result<()> {
        let _g = self.inner.op.lock().await;
        let (pod, c) = self.container_of(id)?;
        let mut updates = Vec::new();
        let mut evictions = Vec::new();
        for p in self.subscribed(Event::UpdateContainer) {
            let req = UpdateContainerRequest {
                pod: Some(pod.clone()),
                container: Some(c.container.clone()),
                linux_resources: Some(resources.clone()),
            };
            if let Some(r) = self
                .call_one::<_, UpdateContainerResponse>(&p, "UpdateContainer", &req)
                .await?
            {
                updates.extend(r.update);
                evictions.extend(r.evict);
            }
        }
        let own = ContainerUpdate {
            container_id: id.to_owned(),
            linux: Some(drakit_proto::nri::LinuxContainerUpdate {
                resources: Some(resources),
            }),
            ignore_failure: false,
        };
        // The requested change first, plugin updates on top.
        updates.insert(0, own);
        self.apply_updates(&updates, &evictions);
        let (pod, c) = self.container_of(id)?;
        let req = PostUpdateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(c.container.clone()),
        };
        self.notify(
            Event::PostUpdateContainer,
            "PostUpdateContainer",
            &req,
            &pod,
            Some(&c.container),
        )
        .await
    }

    /// StopContainer (plugins may return updates for other containers).
    pub async fn stop_container(&self, id: &str) -> Result<()> {
        let _g = self.inner.op.lock().await;
        let (pod, c) = self.container_of(id)?;
        let mut updates = Vec::new();
        for p in self.subscribed(Event::StopContainer) {
            let req = StopContainerRequest {
                pod: Some(pod.clone()),
                container: Some(c.container.clone()),
            };
            if let Some(r) = self
                .call_one::<_, StopContainerResponse>(&p, "StopContainer", &req)
                .await?
            {
                updates.extend(r.update);
            }
        }
        self.set_state(id, ContainerState::ContainerStopped);
        self.apply_updates(&updates, &[]);
        Ok(())
    }

    /// RemoveContainer: notify, then forget the container.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let _g = self.inner.op.lock().await;
        let (pod, c) = self.container_of(id)?;
        let req = RemoveContainerRequest {
            pod: Some(pod.clone()),
            container: Some(c.container.clone()),
        };
        self.notify(
            Event::RemoveContainer,
            "RemoveContainer",
            &req,
            &pod,
            Some(&c.container),
        )
        .await?;
        lock(&self.inner.state).containers.remove(id);
        Ok(())
    }
}

/// Accumulate one plugin's adjustment into the combined one sent for validation.
fn merge_adjustment(dst: &mut ContainerAdjustment, src: &ContainerAdjustment) {
    dst.annotations.extend(src.annotations.clone());
    dst.mounts.extend(src.mounts.iter().cloned());
    dst.env.extend(src.env.iter().cloned());
    dst.rlimits.extend(src.rlimits.iter().cloned());
    dst.cdi_devices.extend(src.cdi_devices.iter().cloned());
    if !src.args.is_empty() {
        dst.args = src.args.clone();
    }
    if let Some(h) = &src.hooks {
        let d = dst.hooks.get_or_insert_with(Default::default);
        d.prestart.extend(h.prestart.iter().cloned());
        d.create_runtime.extend(h.create_runtime.iter().cloned());
        d.create_container
            .extend(h.create_container.iter().cloned());
        d.start_container.extend(h.start_container.iter().cloned());
        d.poststart.extend(h.poststart.iter().cloned());
        d.poststop.extend(h.poststop.iter().cloned());
    }
    if let Some(l) = &src.linux {
        let d = dst.linux.get_or_insert_with(Default::default);
        d.devices.extend(l.devices.iter().cloned());
        if let Some(r) = &l.resources {
            merge_resources(d.resources.get_or_insert_with(Default::default), r);
        }
        if !l.cgroups_path.is_empty() {
            d.cgroups_path = l.cgroups_path.clone();
        }
        if l.oom_score_adj.is_some() {
            d.oom_score_adj = l.oom_score_adj;
        }
        d.namespaces.extend(l.namespaces.iter().cloned());
        d.sysctl.extend(l.sysctl.clone());
        d.net_devices.extend(l.net_devices.clone());
    }
}

/// The Runtime service one plugin connection talks to.
struct RuntimeService {
    rt: Weak<Inner>,
    register: Mutex<Option<oneshot::Sender<RegisterPluginRequest>>>,
}

impl Handler for RuntimeService {
    fn handle(&self, call: IncomingCall) -> BoxFuture<std::result::Result<Vec<u8>, Status>> {
        if call.service != RUNTIME_SERVICE {
            return Box::pin(async move {
                Err(Status::unimplemented(format!("service {}", call.service)))
            });
        }
        match call.method.as_str() {
            "RegisterPlugin" => {
                let res = (|| {
                    let req = RegisterPluginRequest::decode(call.payload.clone()).map_err(|e| {
                        Status::invalid_argument(format!(
                            "RegisterPlugin: cannot decode request: {e}"
                        ))
                    })?;
                    validate_name(&req.plugin_name)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                    validate_index(&req.plugin_idx)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                    let tx = lock(&self.register)
                        .take()
                        .ok_or_else(|| Status::failed_precondition("plugin already registered"))?;
                    let _ = tx.send(req);
                    Ok(Vec::new())
                })();
                Box::pin(async move { res })
            }
            "UpdateContainers" => {
                let rt = self.rt.upgrade();
                Box::pin(async move {
                    let req = UpdateContainersRequest::decode(call.payload).map_err(|e| {
                        Status::invalid_argument(format!(
                            "UpdateContainers: cannot decode request: {e}"
                        ))
                    })?;
                    let Some(inner) = rt else {
                        return Err(Status::new(Code::Unavailable, "runtime is gone"));
                    };
                    let rt = Runtime { inner };
                    let failed = rt.apply_updates(&req.update, &req.evict);
                    lock(&rt.inner.updates).push(req);
                    rt.inner.updates_seen.send_modify(|n| *n += 1);
                    Ok(UpdateContainersResponse { failed }.encode_to_vec())
                })
            }
            other => {
                let msg = format!("method {other}");
                Box::pin(async move { Err(Status::unimplemented(msg)) })
            }
        }
    }
}
