//! gRPC services (`drakit.v1.Backend`, `drakit.v1.NetdevAttach`) over a Unix socket, and the
//! client the OCI hook uses. Socket handling is `drakit_proto::uds::server`, shared with
//! drakit-cpu: directory 0700 when created, socket 0600, callers admitted by SO_PEERCRED uid
//! (exactly the `--allowed-uids` list), requests over [`uds::MAX_REQUEST_BYTES`] refused.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drakit_proto::drakit as pb;
use drakit_proto::drakit::backend_server::{Backend, BackendServer};
use drakit_proto::drakit::netdev_attach_client::NetdevAttachClient;
use drakit_proto::drakit::netdev_attach_server::{NetdevAttach, NetdevAttachServer};
use drakit_proto::uds::server as uds;
use futures::Stream;
use tokio::net::UnixStream;
use tonic::{Request, Response, Status};

use crate::manager::{Manager, ManagerError};
use crate::netlink::Netlink;
use crate::store::Store;

/// Errors from setting up or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bind(#[from] uds::BindError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<ManagerError> for Status {
    fn from(e: ManagerError) -> Self {
        let msg = e.to_string();
        match e {
            ManagerError::UnknownClaim(_) => Status::not_found(msg),
            ManagerError::HostNetwork { .. } | ManagerError::Runtime { .. } => {
                Status::failed_precondition(msg)
            }
            ref other if other.is_invalid_input() => Status::invalid_argument(msg),
            _ => Status::internal(msg),
        }
    }
}

/// Both services over one manager.
#[derive(Debug)]
pub struct NetdevService<N: Netlink, S: Store> {
    mgr: Arc<Manager<N, S>>,
    /// Turns true at shutdown: open WatchDevices streams end, so the server's graceful drain
    /// does not wait for the kubelet plugin to hang up.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<N: Netlink, S: Store> Clone for NetdevService<N, S> {
    fn clone(&self) -> Self {
        Self {
            mgr: self.mgr.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<N: Netlink, S: Store> NetdevService<N, S> {
    pub fn new(mgr: Arc<Manager<N, S>>) -> Self {
        Self {
            mgr,
            stop: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Ends every open stream (the servers' shutdown calls it).
    pub fn stop_streams(&self) {
        self.stop.send_replace(true);
    }

    /// A tonic router carrying both services.
    pub fn router(&self) -> tonic::transport::server::Router {
        tonic::transport::Server::builder()
            .add_service(
                BackendServer::new(self.clone()).max_decoding_message_size(uds::MAX_REQUEST_BYTES),
            )
            .add_service(
                NetdevAttachServer::new(self.clone())
                    .max_decoding_message_size(uds::MAX_REQUEST_BYTES),
            )
    }
}

type InventoryStream = Pin<Box<dyn Stream<Item = Result<pb::Inventory, Status>> + Send>>;

#[tonic::async_trait]
impl<N: Netlink, S: Store> Backend for NetdevService<N, S> {
    type WatchDevicesStream = InventoryStream;

    async fn watch_devices(
        &self,
        _req: Request<pb::WatchDevicesRequest>,
    ) -> Result<Response<InventoryStream>, Status> {
        let rx = self.mgr.subscribe();
        let stop = self.stop.subscribe();
        let mgr = self.mgr.clone();
        let s = futures::stream::unfold((rx, stop, true), move |(mut rx, mut stop, first)| {
            let mgr = mgr.clone();
            async move {
                if *stop.borrow() {
                    return None;
                }
                if !first {
                    tokio::select! {
                        changed = rx.changed() => changed.ok()?,
                        _ = stop.wait_for(|v| *v) => return None,
                    }
                }
                rx.borrow_and_update();
                Some((Ok(mgr.inventory_proto()), (rx, stop, false)))
            }
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn prepare(
        &self,
        req: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let r = req.into_inner();
        let uid = r.claim.as_ref().map(|c| c.uid.clone()).unwrap_or_default();
        let span = tracing::info_span!("prepare", claim.uid = %uid);
        let _e = span.enter();
        match self.mgr.prepare(&r).await {
            Ok(resp) => Ok(Response::new(resp)),
            Err(e) => {
                tracing::warn!(error = %e, "prepare failed");
                Err(e.into())
            }
        }
    }

    async fn unprepare(
        &self,
        req: Request<pb::UnprepareRequest>,
    ) -> Result<Response<pb::UnprepareResponse>, Status> {
        let uid = req.into_inner().claim.map(|c| c.uid).unwrap_or_default();
        self.mgr.unprepare(&uid).await.map_err(Status::from)?;
        Ok(Response::new(pb::UnprepareResponse {}))
    }
}

#[tonic::async_trait]
impl<N: Netlink, S: Store> NetdevAttach for NetdevService<N, S> {
    async fn attach_pod(
        &self,
        req: Request<pb::AttachPodRequest>,
    ) -> Result<Response<pb::AttachPodResponse>, Status> {
        let r = req.into_inner();
        tracing::info!(pod.uid = %r.pod_uid, netns = %r.netns_path, "attach pod");
        Ok(Response::new(
            self.mgr.attach_pod(&r).await.map_err(Status::from)?,
        ))
    }

    async fn detach_pod(
        &self,
        req: Request<pb::DetachPodRequest>,
    ) -> Result<Response<pb::DetachPodResponse>, Status> {
        let r = req.into_inner();
        tracing::info!(pod.uid = %r.pod_uid, "detach pod");
        Ok(Response::new(self.mgr.detach_pod(&r).await))
    }

    async fn hook_attach(
        &self,
        req: Request<pb::HookAttachRequest>,
    ) -> Result<Response<pb::AttachPodResponse>, Status> {
        let r = req.into_inner();
        tracing::info!(claim.uid = %r.claim_uid, "hook attach");
        Ok(Response::new(
            self.mgr.hook_attach(&r).await.map_err(Status::from)?,
        ))
    }
}

/// How long open calls (e.g. WatchDevices streams) may drain after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves both services on `path` until `shutdown` resolves, drains for at most
/// [`SHUTDOWN_GRACE`], then removes the socket.
pub async fn serve<N: Netlink, S: Store>(
    svc: NetdevService<N, S>,
    path: &Path,
    allowed_uids: Vec<u32>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let l = uds::bind(path)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let streams = svc.clone();
    let signal = async move {
        shutdown.await;
        streams.stop_streams();
        let _ = tx.send(());
    };
    let server = svc.router().serve_with_incoming_shutdown(
        uds::incoming(l, uds::PeerPolicy::only(allowed_uids)),
        signal,
    );
    tokio::pin!(server);
    let res = tokio::select! {
        r = &mut server => r.map_err(ServerError::from),
        () = async {
            if rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("open calls did not finish within the shutdown grace period");
            Ok(())
        }
    };
    uds::remove(path);
    res
}

/// A NetdevAttach client over a Unix socket (what drakit-oci-hook and tests use).
pub async fn connect_attach(
    path: &Path,
    timeout: Duration,
) -> Result<NetdevAttachClient<tonic::transport::Channel>, tonic::transport::Error> {
    let path = path.to_path_buf();
    let ch = tonic::transport::Endpoint::from_static("http://drakit-netdev.invalid")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(p).await?))
            }
        }))
        .await?;
    Ok(NetdevAttachClient::new(ch))
}

/// A Backend client over a Unix socket.
pub async fn connect_backend(
    path: &Path,
    timeout: Duration,
) -> Result<
    drakit_proto::drakit::backend_client::BackendClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    let path = path.to_path_buf();
    let ch = tonic::transport::Endpoint::from_static("http://drakit-netdev.invalid")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(p).await?))
            }
        }))
        .await?;
    Ok(drakit_proto::drakit::backend_client::BackendClient::new(ch))
}
