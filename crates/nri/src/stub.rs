//! The plugin side: connect, register, serve the Plugin service, reconnect.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drakit_proto::nri::{
    ConfigureRequest, ConfigureResponse, Container, ContainerEviction, ContainerUpdate,
    CreateContainerRequest, Empty, PodSandbox, PostCreateContainerRequest,
    PostStartContainerRequest, PostUpdateContainerRequest, PostUpdatePodSandboxRequest,
    RegisterPluginRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StateChangeEvent, StopContainerRequest, StopContainerResponse,
    StopPodSandboxRequest, SynchronizeRequest, SynchronizeResponse, UpdateContainerRequest,
    UpdateContainersRequest, UpdateContainersResponse, UpdatePodSandboxRequest,
    ValidateContainerAdjustmentRequest, ValidateContainerAdjustmentResponse,
};
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::{Notify, watch};

use crate::conn::{BoxFuture, Connection, Handler, IncomingCall, Side};
use crate::error::{Error, Result};
use crate::event::valid_for_runtime_info;
use crate::plugin::Plugin;
use crate::ttrpc::Status;

/// Where external plugins find the runtime.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/nri/nri.sock";
/// Service the plugin serves (on conn 1).
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// Service the runtime serves (on conn 2).
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// NRI API version of the protocol definition this crate is built from.
pub const NRI_VERSION: &str = "v0.12.2";
/// Runtime default: how long after connecting a plugin has to register.
pub const DEFAULT_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Runtime default: deadline of each runtime->plugin request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Environment variables set by a runtime that launches a pre-installed plugin.
pub const ENV_PLUGIN_SOCKET: &str = "NRI_PLUGIN_SOCKET";
/// See [`ENV_PLUGIN_SOCKET`].
pub const ENV_PLUGIN_NAME: &str = "NRI_PLUGIN_NAME";
/// See [`ENV_PLUGIN_SOCKET`].
pub const ENV_PLUGIN_IDX: &str = "NRI_PLUGIN_IDX";

/// Reconnection delays: `initial`, doubled after each failed attempt up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Delay before attempt `n` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How the stub reaches the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Dial this unix socket (external plugin); reconnect when it goes away.
    Socket(PathBuf),
    /// Use this already-connected socket fd (pre-installed plugin launched by the runtime). The
    /// runtime relaunches such plugins itself, so the stub does not reconnect.
    Fd(i32),
}

/// Stub settings. Build with [`StubConfig::new`] or [`StubConfig::from_env`], then adjust fields.
#[derive(Debug, Clone)]
pub struct StubConfig {
    /// Plugin name (`[a-zA-Z0-9_.+-]+`).
    pub name: String,
    /// Two-digit index, e.g. `"10"`; plugins run in ascending index order.
    pub index: String,
    /// Socket or inherited fd.
    pub transport: Transport,
    /// `RegisterPluginRequest.NRI_version`.
    pub nri_version: String,
    /// Deadline of the RegisterPlugin call, and how long to wait for Configure after it.
    pub registration_timeout: Duration,
    /// Deadline of UpdateContainers calls until the runtime's Configure tells its own request
    /// timeout, which is used from then on.
    pub request_timeout: Duration,
    /// Reconnect after the runtime goes away (`None`: [`Stub::run`] returns instead).
    /// Ignored for [`Transport::Fd`].
    pub reconnect: Option<Backoff>,
}

/// Check an NRI plugin name.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Config("plugin name is empty".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')))
    {
        return Err(Error::Config(format!(
            "plugin name {name:?}: character {c:?} not allowed (use [a-zA-Z0-9_.+-])"
        )));
    }
    Ok(())
}

/// Check an NRI plugin index (exactly two ASCII digits).
pub fn validate_index(index: &str) -> Result<()> {
    if index.len() == 2 && index.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "plugin index {index:?}: must be exactly two digits, e.g. \"10\""
        )))
    }
}

impl StubConfig {
    /// An external plugin dialing [`DEFAULT_SOCKET_PATH`], reconnecting with default backoff.
    pub fn new(name: impl Into<String>, index: impl Into<String>) -> Result<Self> {
        let cfg = Self {
            name: name.into(),
            index: index.into(),
            transport: Transport::Socket(PathBuf::from(DEFAULT_SOCKET_PATH)),
            nri_version: NRI_VERSION.to_owned(),
            registration_timeout: DEFAULT_REGISTRATION_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reconnect: Some(Backoff::default()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Use another socket path.
    pub fn with_socket(mut self, path: impl AsRef<Path>) -> Self {
        self.transport = Transport::Socket(path.as_ref().to_path_buf());
        self
    }

    /// Check name and index.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        validate_index(&self.index)
    }

    /// From the process environment and `argv[0]`, as a runtime-launched or external plugin:
    /// see [`StubConfig::from_vars`]. `name`/`index`, when given, win over the environment (as
    /// the Go stub's options do; a runtime ignores them for plugins it launched itself anyway).
    pub fn from_env(name: Option<&str>, index: Option<&str>) -> Result<Self> {
        let argv0 = std::env::args().next();
        Self::from_vars(|k| std::env::var(k).ok(), argv0.as_deref(), name, index)
    }

    /// The rules of the Go stub, with the environment given as a function (for tests):
    /// - `NRI_PLUGIN_SOCKET` set and non-empty: use that fd (decimal) instead of dialing;
    /// - name and index: the given values, else `NRI_PLUGIN_NAME` / `NRI_PLUGIN_IDX`, else parsed
    ///   from `basename(argv0)` as `IDX-NAME`; if only the index is known, the name is
    ///   `basename(argv0)`.
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
        argv0: Option<&str>,
        name: Option<&str>,
        index: Option<&str>,
    ) -> Result<Self> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let base = argv0
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
            .filter(|b| !b.is_empty());
        let (arg_idx, arg_name) = match base.as_deref().and_then(|b| b.split_once('-')) {
            Some((i, n)) if validate_index(i).is_ok() => (Some(i.to_owned()), Some(n.to_owned())),
            _ => (None, None),
        };
        let index = index
            .map(str::to_owned)
            .or_else(|| nonempty(ENV_PLUGIN_IDX))
            .or(arg_idx.clone())
            .ok_or_else(|| {
                Error::Config(
                    "no plugin index (NRI_PLUGIN_IDX, argument or argv[0] IDX-NAME)".into(),
                )
            })?;
        let name = name
            .map(str::to_owned)
            .or_else(|| nonempty(ENV_PLUGIN_NAME))
            .or(arg_name)
            .or(base)
            .ok_or_else(|| {
                Error::Config("no plugin name (NRI_PLUGIN_NAME, argument or argv[0])".into())
            })?;
        let mut cfg = Self::new(name, index)?;
        if let Some(fd) = nonempty(ENV_PLUGIN_SOCKET) {
            let fd: i32 = fd.trim().parse().map_err(|_| {
                Error::Config(format!(
                    "{ENV_PLUGIN_SOCKET}={fd:?} is not a file descriptor number"
                ))
            })?;
            if fd < 0 {
                return Err(Error::Config(format!(
                    "{ENV_PLUGIN_SOCKET}={fd} is negative"
                )));
            }
            cfg.transport = Transport::Fd(fd);
        }
        Ok(cfg)
    }
}

/// Connection state of a stub, observable through [`StubHandle::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StubState {
    /// Not connected (yet, or after losing the runtime).
    Disconnected,
    /// Connected, RegisterPlugin sent.
    Registering,
    /// Configure served.
    Configured,
    /// Synchronize served: events flow, UpdateContainers allowed.
    Synchronized,
    /// The stub stopped.
    Stopped,
}

struct HandleInner {
    conn: Mutex<Option<Connection>>,
    runtime: Mutex<Option<ConfigureRequest>>,
    state: watch::Sender<StubState>,
    stop: Notify,
    stop_requested: std::sync::atomic::AtomicBool,
    /// Deadline of UpdateContainers in nanoseconds; the runtime's own request timeout once known.
    request_timeout_ns: std::sync::atomic::AtomicU64,
    connections: std::sync::atomic::AtomicU64,
}

/// A cloneable handle to a running stub, for other tasks: send unsolicited container updates,
/// watch the connection state, stop the stub.
#[derive(Clone)]
pub struct StubHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for StubHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubHandle")
            .field("state", &self.state())
            .finish()
    }
}

impl StubHandle {
    fn new(request_timeout: Duration) -> Self {
        let (state, _) = watch::channel(StubState::Disconnected);
        Self {
            inner: Arc::new(HandleInner {
                conn: Mutex::new(None),
                runtime: Mutex::new(None),
                state,
                stop: Notify::new(),
                stop_requested: std::sync::atomic::AtomicBool::new(false),
                request_timeout_ns: std::sync::atomic::AtomicU64::new(
                    u64::try_from(request_timeout.as_nanos()).unwrap_or(u64::MAX),
                ),
                connections: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Current state.
    pub fn state(&self) -> StubState {
        *self.inner.state.borrow()
    }

    /// A receiver of state changes.
    pub fn watch_state(&self) -> watch::Receiver<StubState> {
        self.inner.state.subscribe()
    }

    /// Wait until the stub is synchronized with a runtime (again). Returns `Err(NotConnected)`
    /// if the stub stops first.
    pub async fn wait_synchronized(&self) -> Result<()> {
        let mut rx = self.inner.state.subscribe();
        let st = rx
            .wait_for(|s| matches!(s, StubState::Synchronized | StubState::Stopped))
            .await
            .map_err(|_| Error::NotConnected)?;
        if *st == StubState::Stopped {
            return Err(Error::NotConnected);
        }
        Ok(())
    }

    /// How many times the stub has connected (1 after the first connection).
    pub fn connections(&self) -> u64 {
        self.inner
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the runtime said in its last Configure (name, version, timeouts, config).
    pub fn runtime(&self) -> Option<ConfigureRequest> {
        self.inner.runtime.lock().ok().and_then(|r| r.clone())
    }

    /// Ask the runtime to update containers (and evict some), any time after Synchronize.
    /// Returns the updates the runtime reported as failed.
    pub async fn update_containers(
        &self,
        update: Vec<ContainerUpdate>,
        evict: Vec<ContainerEviction>,
    ) -> Result<Vec<ContainerUpdate>> {
        let conn = self.connection().ok_or(Error::NotConnected)?;
        let req = UpdateContainersRequest { update, evict };
        let resp: UpdateContainersResponse = conn
            .call(
                RUNTIME_SERVICE,
                "UpdateContainers",
                &req,
                Some(Duration::from_nanos(
                    self.inner
                        .request_timeout_ns
                        .load(std::sync::atomic::Ordering::Relaxed),
                )),
            )
            .await?;
        Ok(resp.failed)
    }

    /// What the current connection dropped or refused so far (zero when not connected).
    pub fn stats(&self) -> crate::conn::ConnStats {
        self.inner
            .conn
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(Connection::stats))
            .unwrap_or_default()
    }

    /// The live connection, once synchronized.
    pub fn connection(&self) -> Option<Connection> {
        if self.state() != StubState::Synchronized {
            return None;
        }
        self.inner.conn.lock().ok().and_then(|c| c.clone())
    }

    /// Stop the stub: close the connection and make [`Stub::run`] return `Ok(())`.
    pub fn shutdown(&self) {
        self.inner
            .stop_requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.stop.notify_waiters();
        if let Some(c) = self.inner.conn.lock().ok().and_then(|c| c.clone()) {
            c.close();
        }
    }

    fn stop_requested(&self) -> bool {
        self.inner
            .stop_requested
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_state(&self, s: StubState) {
        self.inner.state.send_replace(s);
    }

    fn set_conn(&self, c: Option<Connection>) {
        if let Ok(mut g) = self.inner.conn.lock() {
            *g = c;
        }
    }
}

/// Runs a [`Plugin`] against a runtime.
///
/// ```no_run
/// use nri::{EventMask, Event, Plugin, Stub, StubConfig, Adjustment, HookResult};
/// use drakit_proto::nri::{PodSandbox, Container, CreateContainerResponse};
///
/// struct Env;
/// impl Plugin for Env {
///     fn events(&self) -> EventMask { EventMask::of(Event::CreateContainer) }
///     async fn create_container(&self, _p: &PodSandbox, _c: &Container) -> HookResult<CreateContainerResponse> {
///         let mut a = Adjustment::new();
///         a.add_env("HELLO", "nri");
///         Ok(a.into())
///     }
/// }
/// # async fn f() -> nri::Result<()> {
/// Stub::new(Env, StubConfig::new("env", "50")?).run().await
/// # }
/// ```
pub struct Stub<P: Plugin> {
    plugin: Arc<P>,
    cfg: StubConfig,
    handle: StubHandle,
    fd: Option<i32>,
}

impl<P: Plugin> std::fmt::Debug for Stub<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub").field("cfg", &self.cfg).finish()
    }
}

impl<P: Plugin> Stub<P> {
    /// A stub for `plugin` with `cfg`.
    pub fn new(plugin: P, cfg: StubConfig) -> Self {
        Self::with_shared(Arc::new(plugin), cfg)
    }

    /// Same, keeping a reference to the plugin for the caller.
    pub fn with_shared(plugin: Arc<P>, cfg: StubConfig) -> Self {
        let handle = StubHandle::new(cfg.request_timeout);
        let fd = match cfg.transport {
            Transport::Fd(fd) => Some(fd),
            Transport::Socket(_) => None,
        };
        Self {
            plugin,
            cfg,
            handle,
            fd,
        }
    }

    /// A handle for other tasks.
    pub fn handle(&self) -> StubHandle {
        self.handle.clone()
    }

    /// Connect, register, serve; reconnect (with backoff) when the runtime goes away, until
    /// [`StubHandle::shutdown`]. Returns the connection error when reconnecting is off.
    pub async fn run(mut self) -> Result<()> {
        self.cfg.validate()?;
        let mut attempt = 0u32;
        let result = loop {
            if self.handle.stop_requested() {
                break Ok(());
            }
            let reconnect = match self.cfg.transport {
                Transport::Fd(_) => None,
                Transport::Socket(_) => self.cfg.reconnect,
            };
            let stream = match self.connect().await {
                Ok(s) => s,
                Err(e) => match reconnect {
                    Some(b) => {
                        tracing::debug!(error = %e, attempt, "NRI runtime not reachable, retrying");
                        if self.sleep_or_stop(b.delay(attempt)).await {
                            break Ok(());
                        }
                        attempt = attempt.saturating_add(1);
                        continue;
                    }
                    None => break Err(e),
                },
            };
            let res = self.serve(stream).await;
            let synced = res.as_ref().map(|s| *s).unwrap_or(false);
            self.plugin.on_connection_lost();
            if self.handle.stop_requested() {
                break Ok(());
            }
            let err = match res {
                Ok(_) => Error::Closed,
                Err(e) => e,
            };
            tracing::info!(plugin = %self.cfg.name, error = %err, "lost the NRI runtime connection");
            let Some(b) = reconnect else {
                break Err(err);
            };
            if synced {
                attempt = 0;
            }
            if self.sleep_or_stop(b.delay(attempt)).await {
                break Ok(());
            }
            attempt = attempt.saturating_add(1);
        };
        self.handle.set_state(StubState::Stopped);
        result
    }

    async fn sleep_or_stop(&self, d: Duration) -> bool {
        let stop = self.handle.inner.stop.notified();
        if self.handle.stop_requested() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => self.handle.stop_requested(),
            _ = stop => true,
        }
    }

    async fn connect(&mut self) -> Result<UnixStream> {
        match &self.cfg.transport {
            Transport::Socket(path) => UnixStream::connect(path)
                .await
                .map_err(|e| Error::io(format!("connecting to NRI socket {}", path.display()), e)),
            Transport::Fd(_) => {
                let fd = self.fd.take().ok_or_else(|| {
                    Error::Config(format!(
                        "{ENV_PLUGIN_SOCKET}: the inherited socket was already used"
                    ))
                })?;
                stream_from_fd(fd)
            }
        }
    }

    /// Serve one already-connected session (register, then serve until it ends). Returns
    /// `Ok(true)` if the session got synchronized before it ended normally.
    pub async fn serve(&self, stream: UnixStream) -> Result<bool> {
        let session = Arc::new(Session {
            plugin: self.plugin.clone(),
            handle: self.handle.clone(),
            shared: Arc::new(SessionShared::default()),
        });
        let conn = Connection::spawn(stream, Side::Plugin, session.clone());
        self.handle
            .inner
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handle.set_conn(Some(conn.clone()));
        self.handle.set_state(StubState::Registering);
        let result = self.register_and_wait(&conn, &session).await;
        conn.close();
        self.handle.set_conn(None);
        let synced = *self.handle.inner.state.borrow() == StubState::Synchronized;
        self.handle.set_state(StubState::Disconnected);
        result.map(|()| synced)
    }

    async fn register_and_wait(&self, conn: &Connection, session: &Session<P>) -> Result<()> {
        let configured = session.shared.configured.notified();
        tokio::pin!(configured);
        configured.as_mut().enable();
        let req = RegisterPluginRequest {
            plugin_name: self.cfg.name.clone(),
            plugin_idx: self.cfg.index.clone(),
            nri_version: self.cfg.nri_version.clone(),
        };
        let stop = self.handle.inner.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if self.handle.stop_requested() {
            return Ok(());
        }
        tokio::select! {
            r = conn.call::<_, Empty>(RUNTIME_SERVICE, "RegisterPlugin", &req, Some(self.cfg.registration_timeout)) => { r?; }
            e = conn.closed() => return Err(e),
            _ = &mut stop => return Ok(()),
        }
        tracing::debug!(plugin = %self.cfg.name, index = %self.cfg.index, "registered with the NRI runtime");
        if self.handle.state() == StubState::Registering {
            tokio::select! {
                _ = &mut configured => {}
                _ = tokio::time::sleep(self.cfg.registration_timeout) => {
                    if self.handle.state() == StubState::Registering {
                        return Err(Error::Protocol(format!(
                            "runtime did not call Configure within {:?} of registration",
                            self.cfg.registration_timeout
                        )));
                    }
                }
                e = conn.closed() => return Err(e),
                _ = &mut stop => return Ok(()),
            }
        }
        tokio::select! {
            e = conn.closed() => match e { Error::Closed => Ok(()), e => Err(e) },
            _ = &mut stop => Ok(()),
        }
    }
}

/// Adopt an inherited, connected unix socket fd.
fn stream_from_fd(fd: i32) -> Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: the runtime hands us this descriptor through NRI_PLUGIN_SOCKET for our exclusive use;
    // the stub takes it exactly once (Stub::fd is an Option that is taken), so ownership is unique.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let std_stream = std::os::unix::net::UnixStream::from(owned);
    std_stream
        .set_nonblocking(true)
        .map_err(|e| Error::io(format!("{ENV_PLUGIN_SOCKET}={fd}: set non-blocking"), e))?;
    UnixStream::from_std(std_stream)
        .map_err(|e| Error::io(format!("{ENV_PLUGIN_SOCKET}={fd}: register with tokio"), e))
}

struct Session<P: Plugin> {
    plugin: Arc<P>,
    handle: StubHandle,
    shared: Arc<SessionShared>,
}

#[derive(Default)]
struct SessionShared {
    sync: Mutex<(Vec<PodSandbox>, Vec<Container>)>,
    configured: Notify,
}

fn decode<M: Message + Default>(call: &IncomingCall) -> std::result::Result<M, Status> {
    M::decode(call.payload.clone()).map_err(|e| {
        Status::invalid_argument(format!(
            "{}/{}: cannot decode request: {e}",
            call.service, call.method
        ))
    })
}

fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

impl<P: Plugin> Handler for Session<P> {
    fn handle(&self, call: IncomingCall) -> BoxFuture<std::result::Result<Vec<u8>, Status>> {
        use tracing::Instrument;
        let span = tracing::debug_span!("nri_request", method = %call.method);
        let fut = self.dispatch(call);
        Box::pin(
            async move {
                let res = fut.await;
                if let Err(st) = &res {
                    tracing::debug!(status = %st, "NRI request failed");
                }
                res
            }
            .instrument(span),
        )
    }
}

impl<P: Plugin> Session<P> {
    fn dispatch(&self, call: IncomingCall) -> BoxFuture<std::result::Result<Vec<u8>, Status>> {
        let plugin = self.plugin.clone();
        if call.service != PLUGIN_SERVICE {
            return Box::pin(async move {
                Err(Status::unimplemented(format!("service {}", call.service)))
            });
        }
        macro_rules! notify {
            ($req:ty, $method:ident) => {{
                Box::pin(async move {
                    let req: $req = decode(&call)?;
                    let pod = req.pod.unwrap_or_default();
                    plugin.$method(&pod).await?;
                    Ok(Vec::new())
                })
            }};
            ($req:ty, $method:ident, container) => {{
                Box::pin(async move {
                    let req: $req = decode(&call)?;
                    let pod = req.pod.unwrap_or_default();
                    let ctr = req.container.unwrap_or_default();
                    plugin.$method(&pod, &ctr).await?;
                    Ok(Vec::new())
                })
            }};
        }
        match call.method.as_str() {
            "Configure" => {
                let handle = self.handle.clone();
                let shared = self.shared.clone();
                Box::pin(async move {
                    let req: ConfigureRequest = decode(&call)?;
                    plugin.configure(&req).await?;
                    let wanted = plugin.events();
                    let valid = valid_for_runtime_info(
                        &req.runtime_name,
                        &req.runtime_version,
                        &req.nri_version,
                    );
                    let mask = wanted.intersect(valid);
                    if mask != wanted {
                        tracing::warn!(?wanted, runtime_nri = %req.nri_version, "runtime does not know some subscribed events; dropping them");
                    }
                    if mask.is_empty() {
                        // 0 would mean "all events" to the runtime: surely not what was meant.
                        return Err(Status::failed_precondition(format!(
                            "plugin subscribes to no events the runtime knows (wanted {wanted:?}, runtime NRI {:?})",
                            req.nri_version
                        )));
                    }
                    if let Ok(ms) = u64::try_from(req.request_timeout)
                        && ms > 0
                    {
                        handle.inner.request_timeout_ns.store(
                            ms.saturating_mul(1_000_000),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                    if let Ok(mut r) = handle.inner.runtime.lock() {
                        *r = Some(req);
                    }
                    handle.set_state(StubState::Configured);
                    shared.configured.notify_one();
                    Ok(encode(&ConfigureResponse {
                        events: mask.to_proto(),
                    }))
                })
            }
            "Synchronize" => {
                let handle = self.handle.clone();
                let shared = self.shared.clone();
                Box::pin(async move {
                    let req: SynchronizeRequest = decode(&call)?;
                    let Some((pods, ctrs)) = shared.collect(req) else {
                        return Ok(encode(&SynchronizeResponse {
                            update: Vec::new(),
                            more: true,
                        }));
                    };
                    let update = plugin.synchronize(pods, ctrs).await?;
                    handle.set_state(StubState::Synchronized);
                    Ok(encode(&SynchronizeResponse {
                        update,
                        more: false,
                    }))
                })
            }
            "Shutdown" => {
                let handle = self.handle.clone();
                Box::pin(async move {
                    let _: Empty = decode(&call)?;
                    plugin.shutdown().await;
                    // Let the reply go out before the connection is closed.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        handle.shutdown();
                    });
                    Ok(Vec::new())
                })
            }
            "RunPodSandbox" => notify!(RunPodSandboxRequest, run_pod_sandbox),
            "StopPodSandbox" => notify!(StopPodSandboxRequest, stop_pod_sandbox),
            "RemovePodSandbox" => notify!(RemovePodSandboxRequest, remove_pod_sandbox),
            "PostUpdatePodSandbox" => notify!(PostUpdatePodSandboxRequest, post_update_pod_sandbox),
            "UpdatePodSandbox" => Box::pin(async move {
                let req: UpdatePodSandboxRequest = decode(&call)?;
                plugin.update_pod_sandbox(&req).await?;
                Ok(Vec::new())
            }),
            "CreateContainer" => Box::pin(async move {
                let req: CreateContainerRequest = decode(&call)?;
                let pod = req.pod.unwrap_or_default();
                let ctr = req.container.unwrap_or_default();
                let resp = plugin.create_container(&pod, &ctr).await?;
                Ok(encode(&resp))
            }),
            "PostCreateContainer" => {
                notify!(PostCreateContainerRequest, post_create_container, container)
            }
            "StartContainer" => notify!(StartContainerRequest, start_container, container),
            "PostStartContainer" => {
                notify!(PostStartContainerRequest, post_start_container, container)
            }
            "PostUpdateContainer" => {
                notify!(PostUpdateContainerRequest, post_update_container, container)
            }
            "RemoveContainer" => notify!(RemoveContainerRequest, remove_container, container),
            "UpdateContainer" => Box::pin(async move {
                let req: UpdateContainerRequest = decode(&call)?;
                let pod = req.pod.unwrap_or_default();
                let ctr = req.container.unwrap_or_default();
                let resp = plugin
                    .update_container(&pod, &ctr, req.linux_resources.as_ref())
                    .await?;
                Ok(encode(&resp))
            }),
            "StopContainer" => Box::pin(async move {
                let req: StopContainerRequest = decode(&call)?;
                let pod = req.pod.unwrap_or_default();
                let ctr = req.container.unwrap_or_default();
                let update = plugin.stop_container(&pod, &ctr).await?;
                Ok(encode(&StopContainerResponse { update }))
            }),
            "StateChange" => Box::pin(async move {
                let req: StateChangeEvent = decode(&call)?;
                plugin.state_change(&req).await?;
                Ok(Vec::new())
            }),
            "ValidateContainerAdjustment" => Box::pin(async move {
                let req: ValidateContainerAdjustmentRequest = decode(&call)?;
                let resp = match plugin.validate_container_adjustment(&req).await {
                    Ok(()) => ValidateContainerAdjustmentResponse::default(),
                    Err(st) => ValidateContainerAdjustmentResponse {
                        reject: true,
                        reason: st.message().to_owned(),
                    },
                };
                Ok(encode(&resp))
            }),
            other => {
                let msg = format!("method {other}");
                Box::pin(async move { Err(Status::unimplemented(msg)) })
            }
        }
    }
}

impl SessionShared {
    /// Collect a chunk; `Some(everything)` once the final (`more == false`) chunk arrived.
    fn collect(&self, req: SynchronizeRequest) -> Option<(Vec<PodSandbox>, Vec<Container>)> {
        let Ok(mut buf) = self.sync.lock() else {
            return Some((req.pods, req.containers));
        };
        buf.0.extend(req.pods);
        buf.1.extend(req.containers);
        if req.more {
            return None;
        }
        Some(std::mem::take(&mut *buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_and_argv0_rules() {
        // Runtime-launched: everything from the environment, fd transport.
        let c = StubConfig::from_vars(
            vars(&[
                ("NRI_PLUGIN_SOCKET", "3"),
                ("NRI_PLUGIN_NAME", "dra"),
                ("NRI_PLUGIN_IDX", "10"),
            ]),
            Some("/opt/nri/plugins/10-dra"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            (c.name.as_str(), c.index.as_str(), &c.transport),
            ("dra", "10", &Transport::Fd(3))
        );

        // argv[0] IDX-NAME fallback, dial the default socket.
        let c = StubConfig::from_vars(
            vars(&[("NRI_PLUGIN_SOCKET", "")]),
            Some("/usr/bin/05-net-attach"),
            None,
            None,
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.index.as_str()), ("net-attach", "05"));
        assert_eq!(
            c.transport,
            Transport::Socket(PathBuf::from(DEFAULT_SOCKET_PATH))
        );

        // Only the index known: the name is basename(argv0).
        let c = StubConfig::from_vars(
            vars(&[("NRI_PLUGIN_IDX", "42")]),
            Some("/bin/drakit-nri"),
            None,
            None,
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.index.as_str()), ("drakit-nri", "42"));

        // Explicit values beat the environment and argv0.
        let c = StubConfig::from_vars(
            vars(&[]),
            Some("/bin/drakit-nri"),
            Some("drakit"),
            Some("50"),
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.index.as_str()), ("drakit", "50"));
        let c = StubConfig::from_vars(
            vars(&[("NRI_PLUGIN_NAME", "env"), ("NRI_PLUGIN_IDX", "11")]),
            Some("/bin/20-argv"),
            Some("explicit"),
            None,
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.index.as_str()), ("explicit", "11"));

        // Errors name the problem.
        let e = StubConfig::from_vars(vars(&[]), Some("/bin/plain"), None, None).unwrap_err();
        assert!(e.to_string().contains("index"), "{e}");
        let e = StubConfig::from_vars(
            vars(&[("NRI_PLUGIN_SOCKET", "x")]),
            Some("/bin/10-a"),
            None,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("NRI_PLUGIN_SOCKET"), "{e}");
        assert!(StubConfig::new("bad name", "10").is_err());
        assert!(StubConfig::new("ok", "1").is_err());
        assert!(StubConfig::new("ok", "1a").is_err());
        assert!(StubConfig::new("a.b+c_d-e", "99").is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(4), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }
}
