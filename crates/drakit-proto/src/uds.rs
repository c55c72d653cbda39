//! gRPC over Unix sockets, the transport of every drakit-internal service: client channels here,
//! the server side (bind with modes, peer-credential check, message size limit) in [`server`].
//!
//! Hand-written code, unlike the rest of this crate: the usual lints apply.
#![warn(clippy::all, missing_docs)]

use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod server;

/// A channel that connects (and reconnects) to `path` on first use. tonic requires a URI;
/// it names nothing here, the connector always dials the socket.
pub fn lazy_channel(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path))
}

/// A channel connected now, failing when the socket does not answer within `timeout`.
pub async fn connect(
    path: &Path,
    timeout: std::time::Duration,
) -> Result<Channel, tonic::transport::Error> {
    endpoint()
        .connect_timeout(timeout)
        .connect_with_connector(connector(path))
        .await
}

fn endpoint() -> Endpoint {
    Endpoint::from_static("http://drakit.invalid")
}

fn connector(
    path: &Path,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send,
> + Clone
+ Send
+ 'static {
    let path = path.to_path_buf();
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(&path).await.map(TokioIo::new) }
    })
}
