//! Wiring: one registration server + one DRA server per driver, slice publishers, metrics, and
//! a single shutdown that deregisters first, drains in-flight calls under a grace timeout and
//! removes the sockets last.

use std::sync::Arc;
use std::time::Duration;

use drakit_proto::dra::{v1, v1beta1};
use drakit_proto::health::{v1 as hv1, v1alpha1 as hv1alpha1};
use drakit_proto::pluginregistration::registration_server::RegistrationServer;
use drakit_proto::uds::server::MAX_REQUEST_BYTES;
use drakit_types::checkpoint::Durability;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

use crate::backend::{Backend, GrpcBackend};
use crate::claims::{ClaimSource, KubeClaims};
use crate::config::{BackendKind, Config};
use crate::driver::{Driver, DriverParams, StatusSink};
use crate::grpc::{DraService, HealthService, RegistrationOutcome, RegistrationService};
use crate::lazy::LazyClient;
use crate::metrics::Metrics;
use crate::runtime::{RuntimeBackend, detect_cgroup_mode};
use crate::slices::SlicePublisher;
use crate::sockets::{SerializeLock, SocketPaths, bind, remove_socket};
use crate::state::{StateOptions, open_checkpoint, read_boot_id, spec_dir};

/// Errors of starting or running the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("kube client: {0}")]
    Kube(String),
    #[error("driver {driver}: {source}")]
    Checkpoint {
        driver: String,
        #[source]
        source: crate::state::StateError,
    },
    #[error("driver {driver}: CDI spec dir: {source}")]
    Cdi {
        driver: String,
        #[source]
        source: drakit_types::cdi::CdiError,
    },
    #[error("driver {driver}: {source}")]
    Socket {
        driver: String,
        #[source]
        source: crate::sockets::SocketError,
    },
    #[error("metrics address {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "driver {driver}: the kubelet rejected the registration {attempts} times, last: {error}"
    )]
    Rejected {
        driver: String,
        attempts: u32,
        error: String,
    },
    #[error("no driver enabled")]
    NoDrivers,
    #[error("runtime-spec policy file {path}: {reason}")]
    Policy {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// The runtime-spec policy: the file when one is configured (read and checked at start, so a bad
/// file stops the daemon instead of refusing every claim later), else the built-in default.
fn load_runtime_policy(
    path: Option<&std::path::Path>,
) -> Result<drakit_types::policy::Policy, PluginError> {
    let Some(path) = path else {
        return Ok(drakit_types::policy::Policy::default());
    };
    let err = |reason: String| PluginError::Policy {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    drakit_types::policy::Policy::from_yaml(&text).map_err(|e| err(e.to_string()))
}

/// Selects ring as the process-wide rustls provider. rustls only picks one by itself when
/// exactly one is compiled in; a workspace build can link two (aws-lc-rs arrives through a
/// test-only dependency), and then every TLS connection would panic. Idempotent.
pub fn install_crypto_provider() {
    // An Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The runtime the binary runs on: one thread (`current_thread`). A prepare is a chain of
/// waits (kubelet → API server → backend) with little CPU work in between, so a second worker
/// thread buys no throughput; it cost a thread, its stack and its malloc arena (≈ 0.4 MiB
/// resident), thread wake-ups between the workers on every call, and its start-up at launch.
/// Blocking work (checkpoint `fdatasync`, the serialize `flock`) stays short or goes to the
/// blocking pool. Benchmarks build the plugin's runtime here too.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .thread_name(BLOCKING_THREAD_NAME)
        .enable_all()
        .build()
}

/// Name of the runtime's blocking-pool threads.
pub const BLOCKING_THREAD_NAME: &str = "drakit-blocking";

/// Builds a kube client from a kubeconfig path, or the default chain.
pub async fn kube_client(path: Option<&std::path::Path>) -> Result<kube::Client, PluginError> {
    install_crypto_provider();
    let cfg = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| PluginError::Kube(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| PluginError::Kube(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| PluginError::Kube(e.to_string()))?,
    };
    kube::Client::try_from(cfg).map_err(|e| PluginError::Kube(e.to_string()))
}

struct DriverRuntime {
    driver: Arc<Driver>,
    paths: SocketPaths,
    dra_task: JoinHandle<()>,
    reg_task: Option<JoinHandle<()>>,
    reg_stop: Option<watch::Sender<bool>>,
}

/// A running plugin.
pub struct Plugin {
    drivers: Vec<DriverRuntime>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    outcomes: mpsc::UnboundedReceiver<RegistrationOutcome>,
    outcome_tx: mpsc::UnboundedSender<RegistrationOutcome>,
    asked: Arc<watch::Sender<bool>>,
    config: Config,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("drivers", &self.drivers.len())
            .finish_non_exhaustive()
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn start_registration(
    driver: &str,
    paths: &SocketPaths,
    outcomes: mpsc::UnboundedSender<RegistrationOutcome>,
    asked: Arc<watch::Sender<bool>>,
) -> Result<(JoinHandle<()>, watch::Sender<bool>), PluginError> {
    let listener = bind(&paths.registration, 0o600).map_err(|source| PluginError::Socket {
        driver: driver.to_owned(),
        source,
    })?;
    let svc = RegistrationService {
        driver: driver.to_owned(),
        endpoint: paths.dra.to_string_lossy().into_owned(),
        outcomes,
        asked,
    };
    let (tx, rx) = watch::channel(false);
    let name = driver.to_owned();
    let task = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(svc).max_decoding_message_size(MAX_REQUEST_BYTES))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped(rx))
            .await;
        if let Err(e) = r {
            tracing::error!(driver = %name, error = %e, "registration server");
        }
    });
    Ok((task, tx))
}

impl Plugin {
    /// Starts every enabled driver. A kube client is needed for claims, slices and status.
    pub async fn start(config: Config, client: kube::Client) -> Result<Self, PluginError> {
        Self::start_lazy(config, LazyClient::ready(client)).await
    }

    /// Starts with a client that may still be being built: registration does not wait for it.
    pub async fn start_lazy(config: Config, client: LazyClient) -> Result<Self, PluginError> {
        let claims: Arc<dyn ClaimSource> = Arc::new(KubeClaims::new(client.clone()));
        Self::start_with(config, Some(client), claims).await
    }

    /// Starts with an explicit claim source (benchmarks, tests); `client` `None` disables slices
    /// and status.
    pub async fn start_with(
        config: Config,
        client: Option<LazyClient>,
        claims: Arc<dyn ClaimSource>,
    ) -> Result<Self, PluginError> {
        if config.drivers.is_empty() {
            return Err(PluginError::NoDrivers);
        }
        let metrics = Arc::new(Metrics::default());
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(addr) = config.metrics_addr {
            let l = crate::metrics::bind(addr)
                .await
                .map_err(|source| PluginError::Metrics { addr, source })?;
            tasks.push(tokio::spawn(crate::metrics::serve(
                l,
                metrics.clone(),
                stopped(stop.subscribe()),
            )));
        }
        let boot_id = read_boot_id(&config.proc_root);
        let cgroup_mode = detect_cgroup_mode(&config.cgroupfs_root);
        let runtime_policy = load_runtime_policy(config.runtime_policy_file.as_deref())?;
        let (outcome_tx, outcomes) = mpsc::unbounded_channel();
        let asked = Arc::new(watch::channel(false).0);
        let mut drivers = Vec::new();
        for spec in &config.drivers {
            let name = spec.name.clone();
            let backend: Arc<dyn Backend> = match &spec.backend {
                BackendKind::Runtime => Arc::new(RuntimeBackend::with_policy(
                    cgroup_mode,
                    runtime_policy.clone(),
                )),
                BackendKind::Socket(p) => {
                    Arc::new(GrpcBackend::new(name.clone(), p, config.backend_timeout))
                }
            };
            let paths = SocketPaths::new(
                &config.registry_dir,
                &config.plugins_dir,
                &name,
                config.rolling_update_pod_uid.as_deref(),
            );
            let serialize_lock = config
                .rolling_update_pod_uid
                .as_ref()
                .map(|_| SerializeLock::new(paths.lock.clone()));
            // With another instance beside us (rolling update), its calls are kept out while the
            // checkpoint is read and the CDI specs are rebuilt from it.
            let _guard = match &serialize_lock {
                Some(l) => Some(l.acquire().await.map_err(|source| PluginError::Socket {
                    driver: name.clone(),
                    source,
                })?),
                None => None,
            };
            let checkpoint = open_checkpoint(&StateOptions {
                dir: config.state_dir.join(&name),
                driver: name.clone(),
                boot_id: boot_id.clone(),
                durability: if config.durable_checkpoint {
                    Durability::Fsync
                } else {
                    Durability::None
                },
                shared: serialize_lock.is_some(),
            })
            .map_err(|source| PluginError::Checkpoint {
                driver: name.clone(),
                source,
            })?;
            let cdi = spec_dir(&config.cdi_dir, &name).map_err(|source| PluginError::Cdi {
                driver: name.clone(),
                source,
            })?;
            let driver = Driver::new(DriverParams {
                name: name.clone(),
                node_name: config.node_name.clone(),
                claims: claims.clone(),
                backend,
                cdi,
                checkpoint,
                boot_id: boot_id.clone(),
                serialize_lock,
                api_budget: config.api_budget,
                write_cdi: config.write_cdi,
                serialize: config.serialize,
                status: match (&client, config.write_status) {
                    (Some(c), true) => Some(StatusSink {
                        client: c.clone(),
                        field_manager: format!("drakit-kubelet-plugin/{name}"),
                        timeout: config.api_budget,
                    }),
                    _ => None,
                },
                metrics: metrics.driver(&name),
            });
            // DRA endpoint first: the kubelet may call as soon as registration succeeds.
            let listener = bind(&paths.dra, 0o600).map_err(|source| PluginError::Socket {
                driver: name.clone(),
                source,
            })?;
            let dra = DraService {
                driver: driver.clone(),
            };
            let health = HealthService {
                driver: driver.clone(),
                resend: config.health_resend,
                stop: stop.subscribe(),
            };
            let shutdown = stopped(stop.subscribe());
            let dname = name.clone();
            let dra_task = tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .add_service(
                        v1::dra_plugin_server::DraPluginServer::new(dra.clone())
                            .max_decoding_message_size(MAX_REQUEST_BYTES),
                    )
                    .add_service(
                        v1beta1::dra_plugin_server::DraPluginServer::new(dra)
                            .max_decoding_message_size(MAX_REQUEST_BYTES),
                    )
                    .add_service(
                        hv1alpha1::dra_resource_health_server::DraResourceHealthServer::new(
                            health.clone(),
                        )
                        .max_decoding_message_size(MAX_REQUEST_BYTES),
                    )
                    .add_service(
                        hv1::dra_resource_health_server::DraResourceHealthServer::new(health)
                            .max_decoding_message_size(MAX_REQUEST_BYTES),
                    )
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                    .await;
                if let Err(e) = r {
                    tracing::error!(driver = %dname, error = %e, "DRA server");
                }
            });
            drivers.push(DriverRuntime {
                driver,
                paths,
                dra_task,
                reg_task: None,
                reg_stop: None,
            });
        }
        // Background work per driver: reconcile backends, then (after a reboot) release claims
        // from before it that are no longer in use; publish slices.
        for d in &drivers {
            let driver = d.driver.clone();
            let every = config.reboot_recheck;
            tasks.push(tokio::spawn(async move {
                driver.reconcile_backend().await;
                driver.release_unused_after_reboot(every).await;
            }));
            if config.publish_slices
                && let Some(c) = &client
            {
                let p = SlicePublisher {
                    client: c.clone(),
                    driver: d.driver.clone(),
                    field_manager: format!("drakit-kubelet-plugin/{}", d.driver.name()),
                    shared_slots: config.shared_slots,
                    round_timeout: config.api_budget,
                };
                tasks.push(tokio::spawn(p.run(stopped(stop.subscribe()))));
            } else {
                // Without slices the health stream still needs the inventory.
                let driver = d.driver.clone();
                let slots = config.shared_slots;
                let node = config.node_name.clone();
                let shutdown = stopped(stop.subscribe());
                tasks.push(tokio::spawn(async move {
                    follow_inventory(driver, node, slots, shutdown).await;
                }));
            }
        }
        // Registration last, once everything it advertises is serving.
        for d in &mut drivers {
            let (task, tx) =
                start_registration(d.driver.name(), &d.paths, outcome_tx.clone(), asked.clone())?;
            d.reg_task = Some(task);
            d.reg_stop = Some(tx);
        }
        metrics.set_ready(true);
        Ok(Self {
            drivers,
            stop,
            tasks,
            outcomes,
            outcome_tx,
            asked,
            config,
            metrics,
        })
    }

    pub fn drivers(&self) -> Vec<Arc<Driver>> {
        self.drivers.iter().map(|d| d.driver.clone()).collect()
    }

    pub fn socket_paths(&self) -> Vec<SocketPaths> {
        self.drivers.iter().map(|d| d.paths.clone()).collect()
    }

    /// Turns true once the kubelet has asked a registration socket for `GetInfo`.
    pub fn registration_asked(&self) -> watch::Receiver<bool> {
        self.asked.subscribe()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs until `shutdown` resolves or a driver is rejected for good, then shuts down.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), PluginError> {
        tokio::pin!(shutdown);
        let mut rejections: std::collections::HashMap<String, u32> = Default::default();
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                Some(o) = self.outcomes.recv() => {
                    if o.registered {
                        rejections.remove(&o.driver);
                        continue;
                    }
                    let n = rejections.entry(o.driver.clone()).or_insert(0);
                    *n += 1;
                    if *n > self.config.registration_retries {
                        break Err(PluginError::Rejected { driver: o.driver, attempts: *n, error: o.error });
                    }
                    if let Err(e) = self.reoffer(&o.driver).await {
                        break Err(e);
                    }
                }
            }
        };
        self.shutdown().await;
        result
    }

    /// Removes and re-creates one driver's registration socket (the kubelet sees a new plugin).
    async fn reoffer(&mut self, driver: &str) -> Result<(), PluginError> {
        let tx = self.outcome_tx.clone();
        let Some(d) = self.drivers.iter_mut().find(|d| d.driver.name() == driver) else {
            return Ok(());
        };
        if let Some(s) = d.reg_stop.take() {
            let _ = s.send(true);
        }
        if let Some(mut t) = d.reg_task.take() {
            // The kubelet may hold its connection open; do not wait for it long.
            if tokio::time::timeout(Duration::from_millis(500), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        // Gone for a while, so the kubelet's watcher sees a removal and then a new socket.
        remove_socket(&d.paths.registration);
        tokio::time::sleep(self.config.registration_retry_delay).await;
        tracing::info!(driver, "re-offering registration");
        let (task, stop) = start_registration(driver, &d.paths, tx, self.asked.clone())?;
        d.reg_task = Some(task);
        d.reg_stop = Some(stop);
        Ok(())
    }

    /// Deregisters (removes registration sockets), drains in-flight calls under the grace
    /// timeout, then removes the DRA sockets.
    pub async fn shutdown(mut self) {
        self.metrics.set_ready(false);
        for d in &mut self.drivers {
            if let Some(s) = d.reg_stop.take() {
                let _ = s.send(true);
            }
            remove_socket(&d.paths.registration);
        }
        let _ = self.stop.send(true);
        let grace = self.config.shutdown_grace;
        let mut all = Vec::new();
        for d in &mut self.drivers {
            if let Some(t) = d.reg_task.take() {
                all.push(t);
            }
        }
        let dra: Vec<JoinHandle<()>> = self
            .drivers
            .iter_mut()
            .map(|d| std::mem::replace(&mut d.dra_task, tokio::spawn(async {})))
            .collect();
        all.extend(dra);
        let deadline = tokio::time::Instant::now() + grace;
        let mut late = false;
        for mut t in all {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                late = true;
                t.abort();
                let _ = t.await;
            }
        }
        if late {
            tracing::warn!(
                ?grace,
                "in-flight calls did not finish within the grace period"
            );
        }
        // An abort only takes effect when the runtime next polls the task, and until it is
        // dropped a task may hold a driver and, through it, the checkpoint lock the next
        // instance needs: wait for each.
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        // Connections the server spawned end once their streams do; wait (1 s at most in all)
        // for the last handle on each driver.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        for d in &self.drivers {
            while Arc::strong_count(&d.driver) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if Arc::strong_count(&d.driver) > 1 {
                tracing::warn!(driver = %d.driver.name(), "still referenced after shutdown; its checkpoint stays locked until released");
            }
        }
        for d in &self.drivers {
            remove_socket(&d.paths.dra);
        }
        tracing::info!("shut down");
    }
}

/// Without an API server: follow the backend inventory only for health and slot names.
async fn follow_inventory(
    driver: Arc<Driver>,
    node: String,
    shared_slots: u32,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use futures::StreamExt;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            s = driver.backend().watch_devices(driver.name().to_owned()) => s,
        };
        match stream {
            Ok(mut s) => loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    n = s.next() => match n {
                        Some(Ok(inv)) => {
                            let opts = crate::slices::SliceOptions {
                                driver: driver.name().to_owned(),
                                node_name: node.clone(),
                                node_uid: String::new(),
                                shared_slots,
                            };
                            let built = crate::slices::build(&inv, &opts, 0);
                            driver.set_inventory(&inv, &built.slots);
                        }
                        _ => break,
                    }
                }
            },
            Err(e) => tracing::debug!(driver = %driver.name(), error = %e, "inventory watch"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
