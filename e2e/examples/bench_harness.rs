//! Measures the harness itself, so that e2e timings can be read against its own overhead:
//! registration latency of the kubelet simulator, a NodePrepareResources round trip through it to
//! a trivial plugin, and GET / server-side apply through a kube client against the stand-in.
//!
//! `cargo run --release -p drakit-e2e --example bench_harness [iterations]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use drakit_e2e::apiserver::{ApiServerSim, ClaimBuilder};
use drakit_e2e::kubelet::{ClaimRef, KubeletSim, KubeletSimConfig};
use drakit_proto::dra::v1;
use drakit_proto::pluginregistration as reg;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, Patch, PatchParams};
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct Plugin {
    endpoint: String,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Plugin {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: "DRAPlugin".into(),
            name: "bench.drakit.dev".into(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["v1.DRAPlugin".into()],
        }))
    }
    async fn notify_registration_status(
        &self,
        _: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for Plugin {
    async fn node_prepare_resources(
        &self,
        r: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        let mut resp = v1::NodePrepareResourcesResponse::default();
        for c in r.into_inner().claims {
            resp.claims
                .insert(c.uid, v1::NodePrepareResourceResponse::default());
        }
        Ok(Response::new(resp))
    }
    async fn node_unprepare_resources(
        &self,
        _: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        Ok(Response::new(v1::NodeUnprepareResourcesResponse::default()))
    }
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<44} n={:<5} p50={:>9.3?} p90={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        samples.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        samples[samples.len() - 1]
    );
}

async fn registration(poll: Duration, rounds: usize) -> Vec<Duration> {
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry");
        let mut config = KubeletSimConfig::new(&registry);
        config.poll_interval = poll;
        let kubelet = KubeletSim::start(config).await.unwrap();
        let endpoint = dir.path().join("dra.sock");
        let plugin = Plugin {
            endpoint: endpoint.display().to_string(),
        };
        let dra = tonic::transport::Server::builder()
            .add_service(v1::dra_plugin_server::DraPluginServer::new(plugin.clone()));
        let ep = endpoint.clone();
        let dra_task = tokio::spawn(async move {
            drakit_e2e::grpc::serve_unix(dra, &ep, std::future::pending()).await
        });
        while !endpoint.exists() {
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        let reg_sock = registry.join("bench.drakit.dev-reg.sock");
        let server = tonic::transport::Server::builder()
            .add_service(reg::registration_server::RegistrationServer::new(plugin));
        let reg_task = tokio::spawn(async move {
            drakit_e2e::grpc::serve_unix(server, &reg_sock, std::future::pending()).await
        });
        kubelet
            .wait_for_driver("bench.drakit.dev", Duration::from_secs(10))
            .await
            .unwrap();
        samples.push(start.elapsed());
        reg_task.abort();
        dra_task.abort();
    }
    samples
}

#[tokio::main]
async fn main() {
    // kube's TLS stack: two rustls providers are linked into this example (ring and, through a
    // dev-dependency, aws-lc-rs), so pick one as every kube client in the workspace does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);

    summary(
        "registration, poll 20ms (default)",
        registration(Duration::from_millis(20), 20).await,
    );
    summary(
        "registration, poll 1ms",
        registration(Duration::from_millis(1), 20).await,
    );

    // Prepare round trips.
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let kubelet = KubeletSim::start(KubeletSimConfig::new(&registry))
        .await
        .unwrap();
    let endpoint = dir.path().join("dra.sock");
    let plugin = Plugin {
        endpoint: endpoint.display().to_string(),
    };
    let dra = tonic::transport::Server::builder()
        .add_service(v1::dra_plugin_server::DraPluginServer::new(plugin.clone()));
    let ep = endpoint.clone();
    tokio::spawn(
        async move { drakit_e2e::grpc::serve_unix(dra, &ep, std::future::pending()).await },
    );
    let reg_sock = registry.join("bench.drakit.dev-reg.sock");
    let server = tonic::transport::Server::builder()
        .add_service(reg::registration_server::RegistrationServer::new(plugin));
    tokio::spawn(async move {
        drakit_e2e::grpc::serve_unix(server, &reg_sock, std::future::pending()).await
    });
    kubelet
        .wait_for_driver("bench.drakit.dev", Duration::from_secs(10))
        .await
        .unwrap();
    let claims = [ClaimRef::new("default", "c", "uid")];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        kubelet.prepare("bench.drakit.dev", &claims).await.unwrap();
        samples.push(t.elapsed());
    }
    summary("NodePrepareResources round trip (1 claim)", samples);

    // The stand-in through a kube client.
    let api = ApiServerSim::start().await.unwrap();
    api.insert_claim(
        &ClaimBuilder::new("default", "c1")
            .device("bench.drakit.dev", "p", "d", "r")
            .build(),
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let claims_api: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        claims_api.get("c1").await.unwrap();
        samples.push(t.elapsed());
    }
    summary("kube GET ResourceClaim", samples);
    let slices: Api<ResourceSlice> = Api::all(client);
    let pp = PatchParams::apply("bench").force();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let devices: Vec<_> = (0..128).map(|d| serde_json::json!({ "name": format!("dev{d}"), "attributes": { "index": { "int": i } } })).collect();
        let body = serde_json::json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": { "name": "bench" },
            "spec": { "driver": "bench.drakit.dev", "nodeName": "node-1",
                      "pool": { "name": "node-1", "generation": i, "resourceSliceCount": 1 },
                      "devices": devices }
        });
        let t = Instant::now();
        slices
            .patch("bench", &pp, &Patch::Apply(body))
            .await
            .unwrap();
        samples.push(t.elapsed());
    }
    summary("kube SSA ResourceSlice (128 devices, changed)", samples);
}
