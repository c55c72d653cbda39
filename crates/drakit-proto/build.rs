//! Compiles `proto/` with protox (pure Rust, no system protoc) and generates prost messages and
//! tonic services. NRI and ttrpc are ttrpc, not gRPC: only their messages are generated.

use std::path::PathBuf;

/// gRPC protos: messages plus tonic clients and servers.
const GRPC: &[&str] = &[
    "k8s/dra/v1/api.proto",
    "k8s/dra/v1beta1/api.proto",
    "k8s/dra-health/v1alpha1/api.proto",
    "k8s/dra-health/v1/api.proto",
    "k8s/pluginregistration/v1/api.proto",
    "drakit/v1/backend.proto",
];

/// ttrpc protos: messages only (the nri crate implements their transport).
const TTRPC: &[&str] = &["nri/api.proto", "ttrpc/request.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let grpc = protox::compile(GRPC, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(grpc)?;

    let ttrpc = protox::compile(TTRPC, [&root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(ttrpc)?;
    Ok(())
}
