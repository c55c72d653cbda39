//! The `drakit.v1.Backend` and `drakit.v1.CpuPool` services over a Unix socket.
//!
//! The socket directory is created 0700 when missing and the socket is 0600; every accepted
//! connection's peer credentials (SO_PEERCRED) are checked against the allowed uids (root
//! always) and refused connections are closed before any byte is read.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use drakit_proto::drakit::backend_server::{Backend, BackendServer};
use drakit_proto::drakit::cpu_pool_server::{CpuPool, CpuPoolServer};
use drakit_proto::drakit::{
    CpuPoolState, CpuPoolWatchRequest, Inventory, PrepareRequest, PrepareResponse,
    UnprepareRequest, UnprepareResponse, WatchDevicesRequest,
};
use futures::Stream;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::state::{Manager, PrepareError};
use crate::store::create_private_dir;

/// Errors setting up or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<PrepareError> for Status {
    fn from(e: PrepareError) -> Self {
        let msg = e.to_string();
        match e {
            PrepareError::Invalid { .. } | PrepareError::Device { .. } => {
                Status::invalid_argument(msg)
            }
            PrepareError::BootMismatch { .. }
            | PrepareError::AlreadyExclusive { .. }
            | PrepareError::Conflict { .. } => Status::failed_precondition(msg),
            PrepareError::Alloc { .. } | PrepareError::SharedPoolEmpty { .. } => {
                Status::resource_exhausted(msg)
            }
            PrepareError::Store { .. } => Status::internal(msg),
        }
    }
}

/// Shared state of both services.
#[derive(Debug, Clone)]
pub struct CpuService {
    manager: Arc<Mutex<Manager>>,
    pool_tx: Arc<watch::Sender<CpuPoolState>>,
    inventory_tx: Arc<watch::Sender<Inventory>>,
    /// Turns true at shutdown: open watch streams end so the server can drain.
    stop_tx: Arc<watch::Sender<bool>>,
}

impl CpuService {
    pub fn new(manager: Manager) -> Self {
        let (pool_tx, _) = watch::channel(manager.pool_state());
        let (inventory_tx, _) = watch::channel(manager.inventory());
        let (stop_tx, _) = watch::channel(false);
        Self {
            manager: Arc::new(Mutex::new(manager)),
            pool_tx: Arc::new(pool_tx),
            inventory_tx: Arc::new(inventory_tx),
            stop_tx: Arc::new(stop_tx),
        }
    }

    /// Ends every open watch stream (called by [`serve`] at shutdown).
    pub fn stop_streams(&self) {
        self.stop_tx.send_replace(true);
    }

    /// Runs `f` on the manager (tests and the binary's status logging).
    pub fn with_manager<T>(&self, f: impl FnOnce(&mut Manager) -> T) -> Result<T, Status> {
        let mut m = self
            .manager
            .lock()
            .map_err(|_| Status::internal("state lock poisoned"))?;
        Ok(f(&mut m))
    }

    fn publish(&self, m: &Manager) {
        self.pool_tx.send_replace(m.pool_state());
    }

    /// Hands a freshly discovered topology to the manager; when it changed, watchers of the
    /// inventory and of the pool get the new state. Returns whether it changed.
    pub fn refresh_topology(&self, topo: crate::topology::Topology) -> Result<bool, Status> {
        let mut m = self
            .manager
            .lock()
            .map_err(|_| Status::internal("state lock poisoned"))?;
        if !m.refresh_topology(topo) {
            return Ok(false);
        }
        self.inventory_tx.send_replace(m.inventory());
        self.publish(&m);
        Ok(true)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The current value at once, then every change, until the sender goes or `stop` turns true.
fn watch_stream<T: Clone + Send + Sync + 'static>(
    rx: watch::Receiver<T>,
    stop: watch::Receiver<bool>,
) -> BoxStream<T> {
    Box::pin(futures::stream::unfold(
        (rx, stop, true),
        |(mut rx, mut stop, first)| async move {
            if *stop.borrow_and_update() {
                return None;
            }
            if !first {
                tokio::select! {
                    changed = rx.changed() => changed.ok()?,
                    _ = stop.changed() => return None,
                }
            }
            let v = rx.borrow_and_update().clone();
            Some((Ok(v), (rx, stop, false)))
        },
    ))
}

#[tonic::async_trait]
impl Backend for CpuService {
    type WatchDevicesStream = BoxStream<Inventory>;

    async fn watch_devices(
        &self,
        _req: Request<WatchDevicesRequest>,
    ) -> Result<Response<Self::WatchDevicesStream>, Status> {
        Ok(Response::new(watch_stream(
            self.inventory_tx.subscribe(),
            self.stop_tx.subscribe(),
        )))
    }

    async fn prepare(
        &self,
        req: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        let req = req.into_inner();
        let uid = req
            .claim
            .as_ref()
            .map(|c| c.uid.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("prepare", claim.uid = %uid);
        let _g = span.enter();
        let mut m = self
            .manager
            .lock()
            .map_err(|_| Status::internal("state lock poisoned"))?;
        let before = m.generation();
        let result = m.prepare(&req);
        if m.generation() != before {
            self.publish(&m);
        }
        match result {
            Ok(resp) => Ok(Response::new(resp)),
            Err(e) => {
                tracing::warn!("prepare refused: {e}");
                Err(e.into())
            }
        }
    }

    async fn unprepare(
        &self,
        req: Request<UnprepareRequest>,
    ) -> Result<Response<UnprepareResponse>, Status> {
        let uid = req.into_inner().claim.map(|c| c.uid).unwrap_or_default();
        if uid.is_empty() {
            return Err(Status::invalid_argument("unprepare: claim uid is empty"));
        }
        let mut m = self
            .manager
            .lock()
            .map_err(|_| Status::internal("state lock poisoned"))?;
        if m.unprepare(&uid)? {
            self.publish(&m);
        }
        Ok(Response::new(UnprepareResponse {}))
    }
}

#[tonic::async_trait]
impl CpuPool for CpuService {
    type WatchStream = BoxStream<CpuPoolState>;

    async fn watch(
        &self,
        _req: Request<CpuPoolWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(watch_stream(
            self.pool_tx.subscribe(),
            self.stop_tx.subscribe(),
        )))
    }
}

/// Who may connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Uids allowed besides root.
    pub allowed_uids: Vec<u32>,
}

impl PeerPolicy {
    pub fn allows(&self, uid: u32) -> bool {
        uid == 0 || self.allowed_uids.contains(&uid)
    }
}

/// Binds the socket: parent dir created 0700 if missing, stale socket removed, socket 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ServerError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Accepted connections whose peer passes the policy.
fn checked_incoming(
    listener: UnixListener,
    policy: PeerPolicy,
) -> impl Stream<Item = Result<UnixStream, std::io::Error>> {
    futures::stream::unfold((listener, policy), |(listener, policy)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(cred) if policy.allows(cred.uid()) => {
                        return Some((Ok(stream), (listener, policy)));
                    }
                    Ok(cred) => {
                        tracing::warn!(
                            uid = cred.uid(),
                            pid = ?cred.pid(),
                            "refused connection from a peer that is not allowed"
                        );
                    }
                    Err(e) => tracing::warn!("refused connection: peer credentials: {e}"),
                },
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// How long open calls may take to finish after the shutdown signal.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves both services on `listener` until `shutdown` completes: watch streams are ended, calls
/// in flight get [`SHUTDOWN_GRACE`] to finish, then the socket at `path` is removed.
pub async fn serve(
    service: CpuService,
    listener: UnixListener,
    path: &Path,
    policy: PeerPolicy,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let incoming = checked_incoming(listener, policy);
    let fired = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let fired = fired.clone();
        let service = service.clone();
        async move {
            shutdown.await;
            service.stop_streams();
            fired.notify_one();
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(BackendServer::new(service.clone()))
        .add_service(CpuPoolServer::new(service))
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        _ = async {
            fired.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("calls still open {SHUTDOWN_GRACE:?} after shutdown; closing anyway");
            Ok(())
        }
    };
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing socket {}: {e}", path.display());
    }
    result.map_err(ServerError::from)
}
