//! The `drakit.v1.Backend` and `drakit.v1.CpuPool` services over a Unix socket.
//!
//! Socket handling is `drakit_proto::uds::server`, shared with drakit-netdev: the socket
//! directory is created 0700 when missing and the socket is 0600; every accepted connection's
//! peer credentials (SO_PEERCRED) are checked against the allowed uids (root always) and refused
//! connections are closed before any byte is read. Requests over
//! [`uds::MAX_REQUEST_BYTES`] are refused.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use drakit_proto::drakit::backend_server::{Backend, BackendServer};
use drakit_proto::drakit::cpu_pool_server::{CpuPool, CpuPoolServer};
use drakit_proto::drakit::{
    CpuPoolState, CpuPoolWatchRequest, Inventory, PrepareRequest, PrepareResponse,
    UnprepareRequest, UnprepareResponse, WatchDevicesRequest,
};
use drakit_proto::uds::server as uds;
use futures::Stream;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::state::{Manager, PrepareError};

/// Errors setting up or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Socket(#[from] uds::BindError),
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

/// Binds the socket with [`drakit_proto::uds::server::bind`]: parent dir created 0700 if
/// missing, a stale socket replaced (nothing else), socket 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    Ok(uds::bind(path)?)
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
    let incoming = uds::incoming(listener, uds::PeerPolicy::root_and(policy.allowed_uids));
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
        .add_service(
            BackendServer::new(service.clone()).max_decoding_message_size(uds::MAX_REQUEST_BYTES),
        )
        .add_service(CpuPoolServer::new(service).max_decoding_message_size(uds::MAX_REQUEST_BYTES))
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
    uds::remove(path);
    result.map_err(ServerError::from)
}
