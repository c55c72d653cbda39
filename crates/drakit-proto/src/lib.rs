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

/// gRPC over Unix sockets (hand-written): client channels and the daemons' server side.
pub mod uds;
