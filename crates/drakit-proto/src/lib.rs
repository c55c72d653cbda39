//! Generated protobuf and gRPC code for every wire contract drakit speaks.
//!
//! | module | proto package | peer |
//! |---|---|---|
//! | [`dra::v1`], [`dra::v1beta1`] | `k8s.io.kubelet.pkg.apis.dra.{v1,v1beta1}` | kubelet (DRAPlugin) |
//! | [`health::v1alpha1`], [`health::v1`] | `v1alpha1`, `v1` | kubelet (DRAResourceHealth) |
//! | [`pluginregistration`] | `pluginregistration` | kubelet plugin watcher |
//! | [`nri`] | `nri.pkg.api.v1alpha1` | containerd / CRI-O (over ttrpc) |
//! | [`ttrpc`], [`google::rpc`] | `ttrpc`, `google.rpc` | ttrpc envelope |
//! | [`drakit`] | `drakit.v1` | drakit's own daemons |
//!
//! Lints are relaxed here only: this is generated code.
#![allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    missing_debug_implementations
)]

/// Kubelet DRA gRPC services.
pub mod dra {
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
        /// The string advertised in `PluginInfo.supported_versions`.
        pub const SUPPORTED_VERSION: &str = "v1.DRAPlugin";
        /// The full gRPC service name.
        pub const SERVICE: &str = "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin";
    }
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
        pub const SUPPORTED_VERSION: &str = "v1beta1.DRAPlugin";
        pub const SERVICE: &str = "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin";
    }
}

/// Kubelet DRA resource health services.
pub mod health {
    pub mod v1alpha1 {
        tonic::include_proto!("v1alpha1");
        pub const SERVICE: &str = "v1alpha1.DRAResourceHealth";
    }
    pub mod v1 {
        tonic::include_proto!("v1");
        pub const SERVICE: &str = "v1.DRAResourceHealth";
    }
}

/// Kubelet plugin registration (package `pluginregistration`, API version v1).
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
    /// `PluginInfo.type` of a DRA driver.
    pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";
}

/// NRI API messages (`nri.pkg.api.v1alpha1`); transported over ttrpc by the `nri` crate.
pub mod nri {
    tonic::include_proto!("nri.pkg.api.v1alpha1");
}

/// The ttrpc request/response envelope.
pub mod ttrpc {
    tonic::include_proto!("ttrpc");
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// drakit's internal services (`drakit.v1`).
pub mod drakit {
    tonic::include_proto!("drakit.v1");
}

/// The `.proto` sources this crate was generated from, for tests that compare descriptors.
pub fn proto_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

/// gRPC channels over Unix sockets, the transport of every drakit-internal service.
pub mod uds {
    use std::path::Path;

    use hyper_util::rt::TokioIo;
    use tokio::net::UnixStream;
    use tonic::transport::{Channel, Endpoint, Uri};

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
}
