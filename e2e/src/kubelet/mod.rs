//! The kubelet simulator: plugin watcher, plugin registration, DRA calls and the health stream.
//!
//! It behaves as the real kubelet's plugin manager and DRA manager do (see
//! `shared/RUNTIME-FACTS.md`, "Kubelet"):
//!
//! - it watches a `plugins_registry` directory (a tight poll; names starting with `.` are ignored)
//!   and, for each new `*.sock`, calls `pluginregistration.Registration/GetInfo`, validates the
//!   answer and reports the verdict with `NotifyRegistrationStatus`;
//! - of the plugin's `supported_versions` it takes the first it supports itself;
//! - with several instances of one driver it talks to the most recently registered one whose
//!   endpoint is still there; removing a registration socket deregisters that instance;
//! - NodePrepareResources / NodeUnprepareResources carry a deadline (45 s by default).
//!
//! ```no_run
//! # async fn demo(dir: &std::path::Path) -> Result<(), drakit_e2e::kubelet::KubeletError> {
//! use drakit_e2e::kubelet::{ClaimRef, KubeletSim, KubeletSimConfig};
//! use std::time::Duration;
//! let kubelet = KubeletSim::start(KubeletSimConfig::new(dir)).await?;
//! kubelet.wait_for_driver("net.drakit.dev", Duration::from_secs(10)).await?;
//! let claim = ClaimRef::new("default", "claim-1", "uid-1");
//! let results = kubelet.prepare("net.drakit.dev", &[claim]).await?;
//! # let _ = results; Ok(()) }
//! ```

mod dra;
mod health;
mod slices;
mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::wait::Changes;

pub use dra::{ClaimRef, PrepareResults, PreparedDevice, UnprepareResults};
pub use health::{DeviceHealthReport, Health, HealthUpdate, HealthWatch};
pub use slices::ApiServerLink;

/// The kubelet's deadline for one NodePrepareResources / NodeUnprepareResources call.
pub const KUBELET_DRA_CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// A DRAPlugin API version the kubelet can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DraVersion {
    /// `k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin`, advertised as `v1.DRAPlugin`.
    V1,
    /// `k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin`, advertised as `v1beta1.DRAPlugin`.
    V1beta1,
}

impl DraVersion {
    /// The string a plugin lists in `PluginInfo.supported_versions`.
    pub fn advertised(self) -> &'static str {
        match self {
            Self::V1 => drakit_proto::dra::v1::SUPPORTED_VERSION,
            Self::V1beta1 => drakit_proto::dra::v1beta1::SUPPORTED_VERSION,
        }
    }

    /// Parses an entry of `PluginInfo.supported_versions`.
    pub fn from_advertised(s: &str) -> Option<Self> {
        [Self::V1, Self::V1beta1]
            .into_iter()
            .find(|v| v.advertised() == s)
    }
}

/// A DRAResourceHealth API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthVersion {
    /// `v1alpha1.DRAResourceHealth` (Kubernetes 1.34+).
    V1alpha1,
    /// `v1.DRAResourceHealth` (1.37 development).
    V1,
}

/// How the simulator behaves. Build with [`KubeletSimConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct KubeletSimConfig {
    /// The `plugins_registry` directory to watch (the real one is `/var/lib/kubelet/plugins_registry`).
    pub registry_dir: PathBuf,
    /// How often the directory is scanned.
    pub poll_interval: Duration,
    /// Deadline of each NodePrepareResources / NodeUnprepareResources call.
    pub call_timeout: Duration,
    /// Deadline of GetInfo and NotifyRegistrationStatus.
    pub registration_timeout: Duration,
    /// The DRAPlugin versions this kubelet speaks (the plugin's first listed entry that is in here
    /// wins). The real kubelet speaks both.
    pub supported_versions: Vec<DraVersion>,
    /// When set, the simulator also does the kubelet's ResourceSlice clean-up against this API
    /// server (all of the node's slices at start; a driver's slices `wipe_delay` after its last
    /// instance deregistered).
    pub api_server: Option<ApiServerLink>,
}

impl KubeletSimConfig {
    /// Defaults of a current kubelet, watching `registry_dir`.
    pub fn new(registry_dir: impl Into<PathBuf>) -> Self {
        Self {
            registry_dir: registry_dir.into(),
            poll_interval: Duration::from_millis(20),
            call_timeout: KUBELET_DRA_CALL_TIMEOUT,
            registration_timeout: Duration::from_secs(10),
            supported_versions: vec![DraVersion::V1, DraVersion::V1beta1],
            api_server: None,
        }
    }
}

/// One registered instance of a DRA driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredPlugin {
    /// `PluginInfo.name`: the driver name.
    pub driver: String,
    /// The registration socket in the registry directory.
    pub registration_socket: PathBuf,
    /// `PluginInfo.endpoint`: the DRA service socket.
    pub endpoint: PathBuf,
    /// The negotiated DRAPlugin version.
    pub version: DraVersion,
    /// `PluginInfo.supported_versions` as the plugin sent it.
    pub supported_versions: Vec<String>,
    /// Registration order across all instances (higher is more recent).
    pub sequence: u64,
}

/// Something the plugin watcher did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// Validation passed and the plugin was told `plugin_registered: true`.
    Registered(RegisteredPlugin),
    /// Validation failed and the plugin was told `plugin_registered: false` with `error`.
    Rejected {
        registration_socket: PathBuf,
        /// The plugin name from GetInfo (may be empty).
        driver: String,
        error: String,
    },
    /// The socket could not be talked to (connect or RPC failure); retried on later scans.
    Failed {
        registration_socket: PathBuf,
        error: String,
    },
    /// The registration socket went away.
    Deregistered(RegisteredPlugin),
    /// The node's ResourceSlices (of `driver`, or all when `None`) were deleted through the API
    /// server: `Ok(HTTP status)` or `Err(what failed)`.
    SlicesWiped {
        driver: Option<String>,
        result: Result<u16, String>,
    },
}

/// Errors of the kubelet simulator; each names the driver or socket involved.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("registry directory {path}")]
    RegistryDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no registered instance of driver {driver}")]
    NotRegistered { driver: String },
    #[error("driver {driver} does not speak {version:?} (negotiated {negotiated:?})")]
    VersionUnavailable {
        driver: String,
        version: DraVersion,
        negotiated: DraVersion,
    },
    #[error("{method} on driver {driver} (endpoint {endpoint}) failed: {status}")]
    Rpc {
        driver: String,
        endpoint: PathBuf,
        method: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{method} on driver {driver} did not answer within {after:?}")]
    Timeout {
        driver: String,
        method: &'static str,
        after: Duration,
    },
    #[error("gave up waiting after {after:?} for {what}")]
    WaitTimeout { what: String, after: Duration },
}

/// A registered instance together with the channel to its endpoint.
#[derive(Debug, Clone)]
struct Instance {
    plugin: RegisteredPlugin,
    channel: Channel,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by registration socket path.
    instances: BTreeMap<PathBuf, Instance>,
    events: Vec<(SystemTime, RegistrationEvent)>,
    next_sequence: u64,
    /// Drivers whose slices are due to be wiped, with the token of the pending wipe.
    pending_wipes: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Shared {
    config: KubeletSimConfig,
    state: Mutex<State>,
    changes: Changes,
    /// Pending slice wipes, cancelled when the simulator stops.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent in a way that matters to a
        // test harness: keep going with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tasks(&self) -> MutexGuard<'_, Vec<tokio::task::AbortHandle>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, event: RegistrationEvent) {
        tracing::info!(?event, "plugin watcher");
        self.lock().events.push((SystemTime::now(), event));
        self.changes.bump();
    }
}

/// A running kubelet simulator. Dropping it stops the plugin watcher.
#[derive(Debug)]
pub struct KubeletSim {
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

impl Drop for KubeletSim {
    fn drop(&mut self) {
        self.stop();
    }
}

impl KubeletSim {
    /// Starts watching `config.registry_dir` (created if missing).
    pub async fn start(config: KubeletSimConfig) -> Result<Self, KubeletError> {
        std::fs::create_dir_all(&config.registry_dir).map_err(|source| {
            KubeletError::RegistryDir {
                path: config.registry_dir.clone(),
                source,
            }
        })?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            changes: Changes::default(),
            tasks: Mutex::new(Vec::new()),
        });
        let watcher = tokio::spawn(watcher::run(shared.clone()));
        Ok(Self { shared, watcher })
    }

    /// Stops the plugin watcher and cancels pending slice wipes (no more registrations or
    /// deregistrations are noticed; calls to registered instances still work). Dropping does the
    /// same.
    pub fn stop(&self) {
        self.watcher.abort();
        for task in self.shared.lock_tasks().drain(..) {
            task.abort();
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &KubeletSimConfig {
        &self.shared.config
    }

    /// The watched registry directory.
    pub fn registry_dir(&self) -> &Path {
        &self.shared.config.registry_dir
    }

    /// Every registered instance, oldest first.
    pub fn registered(&self) -> Vec<RegisteredPlugin> {
        let mut all: Vec<_> = self
            .shared
            .lock()
            .instances
            .values()
            .map(|i| i.plugin.clone())
            .collect();
        all.sort_by_key(|p| p.sequence);
        all
    }

    /// The instance of `driver` calls go to: the most recently registered one whose endpoint
    /// socket still exists.
    pub fn driver(&self, driver: &str) -> Option<RegisteredPlugin> {
        self.active(driver).map(|i| i.plugin)
    }

    fn active(&self, driver: &str) -> Option<Instance> {
        let state = self.shared.lock();
        state
            .instances
            .values()
            .filter(|i| i.plugin.driver == driver && i.plugin.endpoint.exists())
            .max_by_key(|i| i.plugin.sequence)
            .cloned()
    }

    /// Everything the plugin watcher did so far, in order.
    pub fn events(&self) -> Vec<RegistrationEvent> {
        self.shared
            .lock()
            .events
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// A readable account of the registry dir, the registered instances and every event.
    pub fn dump(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "--- kubelet-sim (registry {})
",
            self.registry_dir().display()
        );
        match std::fs::read_dir(self.registry_dir()) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                let _ = writeln!(out, "registry dir: {names:?}");
            }
            Err(e) => {
                let _ = writeln!(out, "registry dir unreadable: {e}");
            }
        }
        for p in self.registered() {
            let _ = writeln!(
                out,
                "registered #{} {} {:?} endpoint {} (exists: {}) via {}",
                p.sequence,
                p.driver,
                p.version,
                p.endpoint.display(),
                p.endpoint.exists(),
                p.registration_socket.display()
            );
        }
        for (at, e) in &self.shared.lock().events {
            let since = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            let _ = writeln!(out, "event @{since:.3}: {e:?}");
        }
        out
    }

    /// Waits until `driver` has an active instance.
    pub async fn wait_for_driver(
        &self,
        driver: &str,
        timeout: Duration,
    ) -> Result<RegisteredPlugin, KubeletError> {
        self.shared
            .changes
            .wait_for(timeout, || self.driver(driver))
            .await
            .ok_or_else(|| KubeletError::WaitTimeout {
                what: format!(
                    "driver {driver} to register in {}",
                    self.registry_dir().display()
                ),
                after: timeout,
            })
    }

    /// Waits until at least `count` events were recorded and returns them all.
    pub async fn wait_for_event_count(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<RegistrationEvent>, KubeletError> {
        self.shared
            .changes
            .wait_for(timeout, || {
                let state = self.shared.lock();
                (state.events.len() >= count)
                    .then(|| state.events.iter().map(|(_, e)| e.clone()).collect())
            })
            .await
            .ok_or_else(|| KubeletError::WaitTimeout {
                what: format!("{count} plugin watcher events"),
                after: timeout,
            })
    }

    /// Waits until `driver` has no registered instance left.
    pub async fn wait_for_driver_gone(
        &self,
        driver: &str,
        timeout: Duration,
    ) -> Result<(), KubeletError> {
        self.shared
            .changes
            .wait_for(timeout, || {
                let state = self.shared.lock();
                (!state.instances.values().any(|i| i.plugin.driver == driver)).then_some(())
            })
            .await
            .ok_or_else(|| KubeletError::WaitTimeout {
                what: format!("driver {driver} to deregister"),
                after: timeout,
            })
    }

    /// Waits for the first recorded event (past or future) that `matches` accepts and returns it.
    pub async fn wait_for_event(
        &self,
        timeout: Duration,
        mut matches: impl FnMut(&RegistrationEvent) -> bool,
    ) -> Result<RegistrationEvent, KubeletError> {
        self.shared
            .changes
            .wait_for(timeout, || {
                self.shared
                    .lock()
                    .events
                    .iter()
                    .map(|(_, e)| e)
                    .find(|e| matches(e))
                    .cloned()
            })
            .await
            .ok_or_else(|| KubeletError::WaitTimeout {
                what: "a matching plugin watcher event".to_owned(),
                after: timeout,
            })
    }

    /// Waits until the registration at `socket` (a file name in the registry dir or a full path) is
    /// rejected, and returns the error sent to the plugin.
    pub async fn wait_for_rejection(
        &self,
        socket: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<String, KubeletError> {
        let path = self.registry_dir().join(socket.as_ref());
        let event = self
            .wait_for_event(timeout, |e| {
                matches!(e, RegistrationEvent::Rejected { registration_socket, .. } if *registration_socket == path)
            })
            .await?;
        match event {
            RegistrationEvent::Rejected { error, .. } => Ok(error),
            _ => Err(KubeletError::WaitTimeout {
                what: format!("rejection of {}", path.display()),
                after: timeout,
            }),
        }
    }

    /// NodePrepareResources on the active instance of `driver`, over the negotiated version.
    pub async fn prepare(
        &self,
        driver: &str,
        claims: &[ClaimRef],
    ) -> Result<PrepareResults, KubeletError> {
        self.prepare_with(driver, claims, None).await
    }

    /// NodePrepareResources over `version` (the negotiated one when `None`).
    pub async fn prepare_with(
        &self,
        driver: &str,
        claims: &[ClaimRef],
        version: Option<DraVersion>,
    ) -> Result<PrepareResults, KubeletError> {
        let (instance, version) = self.pick(driver, version)?;
        dra::prepare(
            &instance.plugin,
            instance.channel,
            version,
            claims,
            self.shared.config.call_timeout,
        )
        .await
    }

    /// NodeUnprepareResources on the active instance of `driver`, over the negotiated version.
    pub async fn unprepare(
        &self,
        driver: &str,
        claims: &[ClaimRef],
    ) -> Result<UnprepareResults, KubeletError> {
        self.unprepare_with(driver, claims, None).await
    }

    /// NodeUnprepareResources over `version` (the negotiated one when `None`).
    pub async fn unprepare_with(
        &self,
        driver: &str,
        claims: &[ClaimRef],
        version: Option<DraVersion>,
    ) -> Result<UnprepareResults, KubeletError> {
        let (instance, version) = self.pick(driver, version)?;
        dra::unprepare(
            &instance.plugin,
            instance.channel,
            version,
            claims,
            self.shared.config.call_timeout,
        )
        .await
    }

    /// Opens the NodeWatchResources stream on the active instance of `driver`. The returned watch
    /// collects every update the plugin sends until it is dropped.
    pub async fn watch_health(
        &self,
        driver: &str,
        version: HealthVersion,
    ) -> Result<HealthWatch, KubeletError> {
        let instance = self
            .active(driver)
            .ok_or_else(|| KubeletError::NotRegistered {
                driver: driver.to_owned(),
            })?;
        health::open(
            &instance.plugin,
            instance.channel,
            version,
            self.shared.config.registration_timeout,
        )
        .await
    }

    fn pick(
        &self,
        driver: &str,
        version: Option<DraVersion>,
    ) -> Result<(Instance, DraVersion), KubeletError> {
        let instance = self
            .active(driver)
            .ok_or_else(|| KubeletError::NotRegistered {
                driver: driver.to_owned(),
            })?;
        let negotiated = instance.plugin.version;
        let version = version.unwrap_or(negotiated);
        // A version the plugin did not advertise is refused here, before any call: a test that
        // asks for one has a bug worth naming.
        if !instance
            .plugin
            .supported_versions
            .iter()
            .any(|v| v == version.advertised())
        {
            return Err(KubeletError::VersionUnavailable {
                driver: driver.to_owned(),
                version,
                negotiated,
            });
        }
        Ok((instance, version))
    }
}
