//! The seam between a driver and the daemon that does the node work: drakit's internal
//! `drakit.v1.Backend` service, reached over a unix socket, or an in-process implementation
//! (the runtime-spec driver).

use std::path::{Path, PathBuf};
use std::time::Duration;

use drakit_proto::drakit::backend_client::BackendClient;
use drakit_proto::drakit::{
    ClaimRef as ProtoClaimRef, Inventory, PrepareRequest, PrepareResponse, UnprepareRequest,
    WatchDevicesRequest,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tonic::transport::Channel;

use crate::claims::ClaimRef;

/// Errors from a backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or did not answer in time.
    #[error("backend {backend} unavailable: {message}")]
    Unavailable { backend: String, message: String },
    /// The backend refused the claim (bad config, device busy...): the message is for the user.
    #[error("{message}")]
    Refused { message: String },
}

/// What a driver needs from its backend.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &str;
    fn prepare(&self, req: PrepareRequest) -> BoxFuture<'_, Result<PrepareResponse, BackendError>>;
    fn unprepare(&self, req: UnprepareRequest) -> BoxFuture<'_, Result<(), BackendError>>;
    /// The inventory stream: the whole inventory on connect and after each change.
    fn watch_devices(
        &self,
        driver: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Inventory, BackendError>>, BackendError>>;
}

impl From<&ClaimRef> for ProtoClaimRef {
    fn from(c: &ClaimRef) -> Self {
        ProtoClaimRef {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            uid: c.uid.clone(),
        }
    }
}

/// A backend daemon over gRPC on a unix socket.
#[derive(Debug, Clone)]
pub struct GrpcBackend {
    name: String,
    socket: PathBuf,
    client: BackendClient<Channel>,
    timeout: Duration,
}

impl GrpcBackend {
    /// Connects lazily: the backend may start after the plugin.
    pub fn new(name: impl Into<String>, socket: &Path, timeout: Duration) -> Self {
        Self {
            name: name.into(),
            socket: socket.to_path_buf(),
            client: BackendClient::new(crate::sockets::unix_channel(socket)),
            timeout,
        }
    }

    fn map(&self, s: tonic::Status) -> BackendError {
        use tonic::Code;
        match s.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::NotFound
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::OutOfRange => BackendError::Refused {
                message: s.message().to_owned(),
            },
            _ => BackendError::Unavailable {
                backend: format!("{} ({})", self.name, self.socket.display()),
                message: format!("{:?}: {}{}", s.code(), s.message(), causes(&s)),
            },
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }
}

/// The causes under a transport-level status (e.g. "connection closed before message
/// completed" under tonic's bare "transport error"), as `: a: b`.
fn causes(s: &tonic::Status) -> String {
    let mut out = String::new();
    let mut next = std::error::Error::source(s);
    while let Some(e) = next {
        let text = e.to_string();
        if !out.ends_with(&text) && !s.message().ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

impl Backend for GrpcBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&self, req: PrepareRequest) -> BoxFuture<'_, Result<PrepareResponse, BackendError>> {
        Box::pin(async move {
            let mut c = self.client.clone();
            let r = self.request(req);
            match tokio::time::timeout(self.timeout, c.prepare(r)).await {
                Ok(Ok(resp)) => Ok(resp.into_inner()),
                Ok(Err(s)) => Err(self.map(s)),
                Err(_) => Err(BackendError::Unavailable {
                    backend: self.name.clone(),
                    message: format!("no answer within {:?}", self.timeout),
                }),
            }
        })
    }

    fn unprepare(&self, req: UnprepareRequest) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut c = self.client.clone();
            let r = self.request(req);
            match tokio::time::timeout(self.timeout, c.unprepare(r)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(s)) => Err(self.map(s)),
                Err(_) => Err(BackendError::Unavailable {
                    backend: self.name.clone(),
                    message: format!("no answer within {:?}", self.timeout),
                }),
            }
        })
    }

    fn watch_devices(
        &self,
        driver: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Inventory, BackendError>>, BackendError>>
    {
        Box::pin(async move {
            let mut c = self.client.clone();
            let resp = c
                .watch_devices(WatchDevicesRequest { driver })
                .await
                .map_err(|s| self.map(s))?;
            let this = self.clone();
            Ok(resp
                .into_inner()
                .map(move |r| r.map_err(|s| this.map(s)))
                .boxed())
        })
    }
}
