//! gRPC over unix sockets: a client channel and a server helper (the kubelet speaks plain HTTP/2
//! gRPC, no TLS, over unix sockets).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors of the unix-socket gRPC helpers.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("connecting to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("serving on {path}")]
    Serve {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The placeholder authority used for unix-socket channels (the URI is never resolved).
const UNIX_AUTHORITY: &str = "http://unix.invalid";

fn endpoint() -> Endpoint {
    Endpoint::from_static(UNIX_AUTHORITY)
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<TokioIo<UnixStream>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(&path).await.map(TokioIo::new) }
    })
}

/// Connects a tonic channel to the gRPC server listening on the unix socket `path`.
pub async fn connect_unix(path: &Path) -> Result<Channel, GrpcError> {
    endpoint()
        .connect_with_connector(connector(path.to_path_buf()))
        .await
        .map_err(|source| GrpcError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// A channel to `path` that connects on first use and reconnects after the server restarts.
pub fn connect_unix_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.to_path_buf()))
}

/// Serves `router` on a fresh unix socket at `path` until `shutdown` resolves, then removes the
/// socket. A stale socket file at `path` is replaced.
pub async fn serve_unix<F>(
    router: tonic::transport::server::Router,
    path: &Path,
    shutdown: F,
) -> Result<(), GrpcError>
where
    F: Future<Output = ()> + Send,
{
    let listener = bind_unix(path)?;
    let result = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|source| GrpcError::Serve {
            path: path.to_path_buf(),
            source,
        });
    let _ = std::fs::remove_file(path);
    result
}

/// Binds a unix listener at `path` (mode 0600, published only once it listens), removing a
/// stale socket file first.
pub fn bind_unix(path: &Path) -> Result<UnixListener, GrpcError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(GrpcError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    drakit_proto::uds::server::listen_at(path, 0o600).map_err(|source| GrpcError::Bind {
        path: path.to_path_buf(),
        source,
    })
}
