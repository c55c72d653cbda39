//! A tiny fake DRA plugin for the harness's own tests: a registration server on
//! `<registry>/<driver>-reg.sock` and the DRA (v1 + v1beta1) and health (v1alpha1 + v1) services on
//! `<plugins>/<driver>/dra.sock`, all tonic over unix sockets.
//!
//! Behaviour per claim: a claim whose name starts with `bad` gets a per-claim error; one whose name
//! starts with `slow` sleeps 30 s (for deadline tests); one starting with `omit` is left out of
//! the response; any other is prepared as one device
//! `dev-<name>` in pool `pool-1` with CDI ID `drakit.dev/fake=<uid>`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod http;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drakit_proto::dra::{v1, v1beta1};
use drakit_proto::health;
use drakit_proto::pluginregistration::{
    self as reg, InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use futures::Stream;
use tokio::sync::{broadcast, oneshot};
use tonic::{Request, Response, Status};

/// What a fake plugin saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub notifications: Vec<RegistrationStatus>,
    /// ("v1" | "v1beta1", "prepare" | "unprepare", claim names)
    pub calls: Vec<(&'static str, &'static str, Vec<String>)>,
}

#[derive(Clone)]
struct State {
    info: PluginInfo,
    seen: Arc<Mutex<Seen>>,
    notified: Arc<tokio::sync::watch::Sender<usize>>,
    health: broadcast::Sender<Vec<(String, String, i32)>>,
}

pub struct FakePlugin {
    pub driver: String,
    pub registration_socket: PathBuf,
    pub endpoint: PathBuf,
    seen: Arc<Mutex<Seen>>,
    notified: Arc<tokio::sync::watch::Sender<usize>>,
    health: broadcast::Sender<Vec<(String, String, i32)>>,
    stop_reg: Option<oneshot::Sender<()>>,
    stop_dra: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakePlugin {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.registration_socket);
        let _ = std::fs::remove_file(&self.endpoint);
    }
}

/// How to build a fake plugin.
pub struct FakeOptions {
    pub driver: String,
    /// File name of the registration socket in the registry dir.
    pub registration_name: String,
    /// Sub-directory of the plugins dir holding `dra.sock`.
    pub endpoint_name: String,
    pub plugin_type: String,
    pub supported_versions: Vec<String>,
    /// Advertise this endpoint instead of the real one.
    pub endpoint_override: Option<String>,
}

impl FakeOptions {
    pub fn new(driver: &str) -> Self {
        Self {
            driver: driver.to_owned(),
            registration_name: format!("{driver}-reg.sock"),
            endpoint_name: "dra.sock".to_owned(),
            plugin_type: "DRAPlugin".to_owned(),
            supported_versions: vec!["v1.DRAPlugin".to_owned(), "v1beta1.DRAPlugin".to_owned()],
            endpoint_override: None,
        }
    }

    pub fn versions(mut self, v: &[&str]) -> Self {
        self.supported_versions = v.iter().map(|s| (*s).to_owned()).collect();
        self
    }
}

impl FakePlugin {
    /// Starts the DRA endpoint first, then the registration socket (as real plugins do).
    pub async fn start(registry: &Path, plugins: &Path, opts: FakeOptions) -> Self {
        let plugin_dir = plugins.join(&opts.driver);
        std::fs::create_dir_all(&plugin_dir).unwrap();
        std::fs::create_dir_all(registry).unwrap();
        let endpoint = plugin_dir.join(&opts.endpoint_name);
        let registration_socket = registry.join(&opts.registration_name);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let notified = Arc::new(tokio::sync::watch::channel(0usize).0);
        let (health, _) = broadcast::channel(16);
        let state = State {
            info: PluginInfo {
                r#type: opts.plugin_type.clone(),
                name: opts.driver.clone(),
                endpoint: opts
                    .endpoint_override
                    .clone()
                    .unwrap_or_else(|| endpoint.display().to_string()),
                supported_versions: opts.supported_versions.clone(),
            },
            seen: seen.clone(),
            notified: notified.clone(),
            health: health.clone(),
        };

        let (stop_dra, dra_rx) = oneshot::channel::<()>();
        let dra_router = tonic::transport::Server::builder()
            .add_service(v1::dra_plugin_server::DraPluginServer::new(state.clone()))
            .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(
                state.clone(),
            ))
            .add_service(
                health::v1alpha1::dra_resource_health_server::DraResourceHealthServer::new(
                    state.clone(),
                ),
            )
            .add_service(
                health::v1::dra_resource_health_server::DraResourceHealthServer::new(state.clone()),
            );
        let listener = drakit_e2e::grpc::bind_unix(&endpoint).unwrap();
        let dra_task = tokio::spawn(async move {
            let _ = dra_router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = dra_rx.await;
                    },
                )
                .await;
        });

        let (stop_reg, reg_rx) = oneshot::channel::<()>();
        let reg_router = tonic::transport::Server::builder().add_service(
            reg::registration_server::RegistrationServer::new(state.clone()),
        );
        let listener = drakit_e2e::grpc::bind_unix(&registration_socket).unwrap();
        let reg_task = tokio::spawn(async move {
            let _ = reg_router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = reg_rx.await;
                    },
                )
                .await;
        });

        Self {
            driver: opts.driver,
            registration_socket,
            endpoint,
            seen,
            notified,
            health,
            stop_reg: Some(stop_reg),
            stop_dra: Some(stop_dra),
            tasks: vec![dra_task, reg_task],
        }
    }

    pub fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// The first NotifyRegistrationStatus the plugin received, waiting for it if need be.
    pub async fn notification(&self) -> RegistrationStatus {
        self.notifications(1).await.remove(0)
    }

    /// Waits until at least `n` NotifyRegistrationStatus calls arrived; returns them all.
    pub async fn notifications(&self, n: usize) -> Vec<RegistrationStatus> {
        let mut rx = self.notified.subscribe();
        let wait = async {
            loop {
                rx.mark_unchanged();
                let seen = self.seen().notifications.clone();
                if seen.len() >= n {
                    return seen;
                }
                let _ = rx.changed().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("not enough NotifyRegistrationStatus calls within 20s")
    }

    /// Sends one health update (pool, device, health) to every open stream.
    pub fn send_health(&self, devices: &[(&str, &str, i32)]) -> usize {
        self.health
            .send(
                devices
                    .iter()
                    .map(|(p, d, h)| ((*p).to_owned(), (*d).to_owned(), *h))
                    .collect(),
            )
            .unwrap_or(0)
    }

    /// Removes the registration socket (deregistration), keeping the DRA endpoint up.
    pub fn remove_registration(&mut self) {
        if let Some(tx) = self.stop_reg.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_file(&self.registration_socket);
    }

    /// Stops the DRA endpoint and removes its socket.
    pub fn stop_endpoint(&mut self) {
        if let Some(tx) = self.stop_dra.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_file(&self.endpoint);
    }
}

fn claim_names<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    names.cloned().collect()
}

#[tonic::async_trait]
impl reg::registration_server::Registration for State {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        self.seen
            .lock()
            .unwrap()
            .notifications
            .push(request.into_inner());
        self.notified.send_modify(|n| *n += 1);
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// The fake's verdict for one claim: `Err` for `bad*` names, sleeps for `slow*`.
async fn outcome(name: &str, uid: &str) -> Result<(String, String), String> {
    if name.starts_with("slow") {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if name.starts_with("bad") {
        return Err(format!("claim {name}: refused by the fake plugin"));
    }
    Ok((format!("dev-{name}"), format!("drakit.dev/fake={uid}")))
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for State {
    async fn node_prepare_resources(
        &self,
        request: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        self.seen.lock().unwrap().calls.push((
            "v1",
            "prepare",
            claim_names(claims.iter().map(|c| &c.name)),
        ));
        let mut resp = v1::NodePrepareResourcesResponse::default();
        for c in claims {
            if c.name.starts_with("omit") {
                continue;
            }
            let r = match outcome(&c.name, &c.uid).await {
                Ok((device, cdi)) => v1::NodePrepareResourceResponse {
                    devices: vec![v1::Device {
                        request_names: vec!["req".to_owned()],
                        pool_name: "pool-1".to_owned(),
                        device_name: device,
                        cdi_device_ids: vec![cdi],
                        share_id: c
                            .name
                            .starts_with("shared")
                            .then(|| format!("share-{}", c.uid)),
                    }],
                    error: String::new(),
                },
                Err(e) => v1::NodePrepareResourceResponse {
                    devices: vec![],
                    error: e,
                },
            };
            resp.claims.insert(c.uid, r);
        }
        Ok(Response::new(resp))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        self.seen.lock().unwrap().calls.push((
            "v1",
            "unprepare",
            claim_names(claims.iter().map(|c| &c.name)),
        ));
        let mut resp = v1::NodeUnprepareResourcesResponse::default();
        for c in claims {
            if c.name.starts_with("omit") {
                continue;
            }
            let error = outcome(&c.name, &c.uid).await.err().unwrap_or_default();
            resp.claims
                .insert(c.uid, v1::NodeUnprepareResourceResponse { error });
        }
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for State {
    async fn node_prepare_resources(
        &self,
        request: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        self.seen.lock().unwrap().calls.push((
            "v1beta1",
            "prepare",
            claim_names(claims.iter().map(|c| &c.name)),
        ));
        let mut resp = v1beta1::NodePrepareResourcesResponse::default();
        for c in claims {
            if c.name.starts_with("omit") {
                continue;
            }
            let r = match outcome(&c.name, &c.uid).await {
                Ok((device, cdi)) => v1beta1::NodePrepareResourceResponse {
                    devices: vec![v1beta1::Device {
                        request_names: vec!["req".to_owned()],
                        pool_name: "pool-1".to_owned(),
                        device_name: device,
                        cdi_device_ids: vec![cdi],
                    }],
                    error: String::new(),
                },
                Err(e) => v1beta1::NodePrepareResourceResponse {
                    devices: vec![],
                    error: e,
                },
            };
            resp.claims.insert(c.uid, r);
        }
        Ok(Response::new(resp))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        self.seen.lock().unwrap().calls.push((
            "v1beta1",
            "unprepare",
            claim_names(claims.iter().map(|c| &c.name)),
        ));
        let mut resp = v1beta1::NodeUnprepareResourcesResponse::default();
        for c in claims {
            if c.name.starts_with("omit") {
                continue;
            }
            let error = outcome(&c.name, &c.uid).await.err().unwrap_or_default();
            resp.claims
                .insert(c.uid, v1beta1::NodeUnprepareResourceResponse { error });
        }
        Ok(Response::new(resp))
    }
}

type HealthStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn health_stream<T: Send + 'static>(
    rx: broadcast::Receiver<Vec<(String, String, i32)>>,
    map: fn(Vec<(String, String, i32)>) -> T,
) -> HealthStream<T> {
    Box::pin(futures::stream::unfold(rx, move |mut rx| async move {
        match rx.recv().await {
            Ok(v) => Some((Ok(map(v)), rx)),
            Err(_) => None,
        }
    }))
}

#[tonic::async_trait]
impl health::v1alpha1::dra_resource_health_server::DraResourceHealth for State {
    type NodeWatchResourcesStream = HealthStream<health::v1alpha1::NodeWatchResourcesResponse>;

    async fn node_watch_resources(
        &self,
        _: Request<health::v1alpha1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        use health::v1alpha1 as h;
        Ok(Response::new(health_stream(self.health.subscribe(), |v| {
            h::NodeWatchResourcesResponse {
                devices: v
                    .into_iter()
                    .map(|(pool, device, health)| h::DeviceHealth {
                        device: Some(h::DeviceIdentifier {
                            pool_name: pool,
                            device_name: device,
                        }),
                        health,
                        last_updated_time: 1_700_000_000,
                        health_check_timeout_seconds: 30,
                        message: "fake".to_owned(),
                    })
                    .collect(),
            }
        })))
    }
}

#[tonic::async_trait]
impl health::v1::dra_resource_health_server::DraResourceHealth for State {
    type NodeWatchResourcesStream = HealthStream<health::v1::NodeWatchResourcesResponse>;

    async fn node_watch_resources(
        &self,
        _: Request<health::v1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        use health::v1 as h;
        Ok(Response::new(health_stream(self.health.subscribe(), |v| {
            h::NodeWatchResourcesResponse {
                devices: v
                    .into_iter()
                    .map(|(pool, device, health)| h::DeviceHealth {
                        device: Some(h::DeviceIdentifier {
                            pool_name: pool,
                            device_name: device,
                        }),
                        health,
                        last_updated_time: 1_700_000_001,
                        health_check_timeout_seconds: 60,
                        message: "fake v1".to_owned(),
                    })
                    .collect(),
            }
        })))
    }
}
