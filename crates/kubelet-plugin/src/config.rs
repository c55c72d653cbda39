//! Configuration: a plain [`Config`] that tests build directly, and the clap [`Args`] (each flag
//! also read from the environment) that the binary parses into it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which backend serves a driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// The runtime-spec driver: in-process.
    Runtime,
    /// A backend daemon over the internal gRPC service on this unix socket.
    Socket(PathBuf),
}

/// One DRA driver hosted by the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSpec {
    pub name: String,
    pub backend: BackendKind,
}

/// Everything the plugin needs; every filesystem root is here.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// `None`: in-cluster config (or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    pub registry_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub cdi_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cgroupfs_root: PathBuf,
    pub proc_root: PathBuf,
    pub drivers: Vec<DriverSpec>,
    /// Rolling update: socket names carry this pod UID and a serialize lock is taken.
    pub rolling_update_pod_uid: Option<String>,
    /// How long one claim GET may keep retrying (keep well inside the kubelet's 45 s).
    pub api_budget: Duration,
    pub backend_timeout: Duration,
    pub health_resend: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub publish_slices: bool,
    pub write_status: bool,
    /// Publish shared devices as N plain slots (0: shared with allowMultipleAllocations).
    pub shared_slots: u32,
    /// Serialize prepare/unprepare calls per driver.
    pub serialize: bool,
    /// fdatasync the checkpoint (benchmark switch; always on in production).
    pub durable_checkpoint: bool,
    /// Write CDI spec files (benchmark switch).
    pub write_cdi: bool,
    pub shutdown_grace: Duration,
    /// Re-offer the registration socket this many times after a rejection, then exit.
    pub registration_retries: u32,
    pub registration_retry_delay: Duration,
    /// After a reboot: how often claims restored from before it that the kubelet has not
    /// prepared again are checked against the API server (and released when no longer in use).
    pub reboot_recheck: Duration,
    /// The runtime-spec edit policy (YAML) the runtime driver checks claims against at prepare;
    /// `None`: the built-in default. Must be the same file drakit-nri enforces, or a claim the
    /// policy allows would be refused here (or one it refuses would pass prepare).
    pub runtime_policy_file: Option<PathBuf>,
}

impl Config {
    /// Defaults with every path under `root` (tests) and the three default drivers, the
    /// backends' sockets under `<root>/run/drakit`.
    pub fn under_root(root: &std::path::Path, node_name: &str) -> Self {
        let run = root.join("run/drakit");
        Self {
            node_name: node_name.to_owned(),
            kubeconfig: None,
            registry_dir: root.join("var/lib/kubelet/plugins_registry"),
            plugins_dir: root.join("var/lib/kubelet/plugins"),
            cdi_dir: root.join("var/run/cdi"),
            state_dir: root.join("var/lib/drakit"),
            cgroupfs_root: root.join("sys/fs/cgroup"),
            proc_root: root.join("proc"),
            drivers: default_drivers(&run, true, true, true),
            rolling_update_pod_uid: None,
            api_budget: Duration::from_secs(30),
            backend_timeout: Duration::from_secs(20),
            health_resend: Duration::from_secs(30),
            metrics_addr: None,
            publish_slices: true,
            write_status: true,
            shared_slots: 16,
            serialize: true,
            durable_checkpoint: true,
            write_cdi: true,
            shutdown_grace: Duration::from_secs(10),
            registration_retries: 3,
            registration_retry_delay: Duration::from_secs(1),
            reboot_recheck: Duration::from_secs(30),
            runtime_policy_file: None,
        }
    }
}

/// The default driver set, each toggled.
pub fn default_drivers(
    run_dir: &std::path::Path,
    net: bool,
    cpu: bool,
    runtime: bool,
) -> Vec<DriverSpec> {
    let mut v = Vec::new();
    if net {
        v.push(DriverSpec {
            name: "net.drakit.dev".into(),
            backend: BackendKind::Socket(run_dir.join("netdev.sock")),
        });
    }
    if cpu {
        v.push(DriverSpec {
            name: "cpu.drakit.dev".into(),
            backend: BackendKind::Socket(run_dir.join("cpu.sock")),
        });
    }
    if runtime {
        v.push(DriverSpec {
            name: "runtime.drakit.dev".into(),
            backend: BackendKind::Runtime,
        });
    }
    v
}

/// Command line of `drakit-kubelet-plugin`; every flag can also come from the environment.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "drakit-kubelet-plugin",
    version,
    about = "drakit DRA kubelet plugin"
)]
pub struct Args {
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(
        long,
        env = "DRAKIT_REGISTRY_DIR",
        default_value = "/var/lib/kubelet/plugins_registry"
    )]
    pub registry_dir: PathBuf,
    #[arg(
        long,
        env = "DRAKIT_PLUGINS_DIR",
        default_value = "/var/lib/kubelet/plugins"
    )]
    pub plugins_dir: PathBuf,
    #[arg(long, env = "DRAKIT_CDI_DIR", default_value = "/var/run/cdi")]
    pub cdi_dir: PathBuf,
    #[arg(long, env = "DRAKIT_STATE_DIR", default_value = "/var/lib/drakit")]
    pub state_dir: PathBuf,
    #[arg(long, env = "DRAKIT_RUN_DIR", default_value = "/run/drakit")]
    pub run_dir: PathBuf,
    #[arg(long, env = "DRAKIT_CGROUPFS_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroupfs_root: PathBuf,
    #[arg(long, env = "DRAKIT_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    #[arg(long, env = "DRAKIT_NET_DRIVER", default_value_t = true, action = clap::ArgAction::Set)]
    pub net_driver: bool,
    #[arg(long, env = "DRAKIT_CPU_DRIVER", default_value_t = true, action = clap::ArgAction::Set)]
    pub cpu_driver: bool,
    #[arg(long, env = "DRAKIT_RUNTIME_DRIVER", default_value_t = true, action = clap::ArgAction::Set)]
    pub runtime_driver: bool,
    #[arg(long, env = "DRAKIT_NET_DRIVER_NAME", default_value = "net.drakit.dev")]
    pub net_driver_name: String,
    #[arg(long, env = "DRAKIT_CPU_DRIVER_NAME", default_value = "cpu.drakit.dev")]
    pub cpu_driver_name: String,
    #[arg(
        long,
        env = "DRAKIT_RUNTIME_DRIVER_NAME",
        default_value = "runtime.drakit.dev"
    )]
    pub runtime_driver_name: String,
    #[arg(long, env = "DRAKIT_NETDEV_SOCKET")]
    pub netdev_socket: Option<PathBuf>,
    #[arg(long, env = "DRAKIT_CPU_SOCKET")]
    pub cpu_socket: Option<PathBuf>,
    #[arg(long, env = "DRAKIT_ROLLING_UPDATE_POD_UID")]
    pub rolling_update_pod_uid: Option<String>,
    #[arg(long, env = "DRAKIT_API_BUDGET_SECONDS", default_value_t = 30.0)]
    pub api_budget_seconds: f64,
    #[arg(long, env = "DRAKIT_BACKEND_TIMEOUT_SECONDS", default_value_t = 20.0)]
    pub backend_timeout_seconds: f64,
    #[arg(long, env = "DRAKIT_HEALTH_RESEND_SECONDS", default_value_t = 30.0)]
    pub health_resend_seconds: f64,
    #[arg(long, env = "DRAKIT_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[arg(long, env = "DRAKIT_PUBLISH_SLICES", default_value_t = true, action = clap::ArgAction::Set)]
    pub publish_slices: bool,
    #[arg(long, env = "DRAKIT_WRITE_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub write_status: bool,
    /// Publish each shared device as N plain devices instead of one with allowMultipleAllocations.
    #[arg(long, env = "DRAKIT_SHARED_SLOTS", default_value_t = 16)]
    pub shared_slots: u32,
    #[arg(long, env = "DRAKIT_SERIALIZE", default_value_t = true, action = clap::ArgAction::Set)]
    pub serialize: bool,
    /// Benchmark only: no CDI files, no checkpoint fsync.
    #[arg(long, env = "DRAKIT_BENCH_NO_FILE_WRITES", default_value_t = false)]
    pub bench_no_file_writes: bool,
    #[arg(long, env = "DRAKIT_SHUTDOWN_GRACE_SECONDS", default_value_t = 10.0)]
    pub shutdown_grace_seconds: f64,
    #[arg(long, env = "DRAKIT_REGISTRATION_RETRIES", default_value_t = 3)]
    pub registration_retries: u32,
    /// After a reboot, how often claims restored from before it (and not prepared again by the
    /// kubelet) are checked against the API server; those no longer in use are released.
    #[arg(long, env = "DRAKIT_REBOOT_RECHECK_SECONDS", default_value_t = 30.0)]
    pub reboot_recheck_seconds: f64,
    #[arg(long, env = "DRAKIT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Admin policy for runtime-spec edits (YAML), the same file drakit-nri gets; the built-in
    /// default allows resource fields only.
    #[arg(long, env = "DRAKIT_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::from_secs(30))
}

impl Args {
    pub fn into_config(self) -> Config {
        let mut drivers = Vec::new();
        if self.net_driver {
            drivers.push(DriverSpec {
                name: self.net_driver_name,
                backend: BackendKind::Socket(
                    self.netdev_socket
                        .unwrap_or_else(|| self.run_dir.join("netdev.sock")),
                ),
            });
        }
        if self.cpu_driver {
            drivers.push(DriverSpec {
                name: self.cpu_driver_name,
                backend: BackendKind::Socket(
                    self.cpu_socket
                        .unwrap_or_else(|| self.run_dir.join("cpu.sock")),
                ),
            });
        }
        if self.runtime_driver {
            drivers.push(DriverSpec {
                name: self.runtime_driver_name,
                backend: BackendKind::Runtime,
            });
        }
        Config {
            node_name: self.node_name,
            kubeconfig: self.kubeconfig,
            registry_dir: self.registry_dir,
            plugins_dir: self.plugins_dir,
            cdi_dir: self.cdi_dir,
            state_dir: self.state_dir,
            cgroupfs_root: self.cgroupfs_root,
            proc_root: self.proc_root,
            drivers,
            rolling_update_pod_uid: self.rolling_update_pod_uid.filter(|s| !s.is_empty()),
            api_budget: secs(self.api_budget_seconds),
            backend_timeout: secs(self.backend_timeout_seconds),
            health_resend: secs(self.health_resend_seconds),
            metrics_addr: self.metrics_addr,
            publish_slices: self.publish_slices,
            write_status: self.write_status,
            shared_slots: self.shared_slots,
            serialize: self.serialize,
            durable_checkpoint: !self.bench_no_file_writes,
            write_cdi: !self.bench_no_file_writes,
            shutdown_grace: secs(self.shutdown_grace_seconds),
            registration_retries: self.registration_retries,
            registration_retry_delay: Duration::from_secs(1),
            reboot_recheck: secs(self.reboot_recheck_seconds),
            runtime_policy_file: self.policy_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_toggle_drivers() {
        let a = Args::try_parse_from([
            "x",
            "--node-name",
            "n1",
            "--cpu-driver",
            "false",
            "--run-dir",
            "/r",
            "--api-budget-seconds",
            "2",
        ])
        .unwrap();
        let c = a.into_config();
        assert_eq!(c.drivers.len(), 2);
        assert_eq!(
            c.drivers[0].backend,
            BackendKind::Socket("/r/netdev.sock".into())
        );
        assert_eq!(c.drivers[1].backend, BackendKind::Runtime);
        assert_eq!(c.api_budget, Duration::from_secs(2));
        assert!(c.durable_checkpoint);
    }
}
