//! The `drakit-cpu` daemon: command line, plain [`Config`], and [`run`].
//!
//! Flags each have an environment variable (`env =`); [`Args::into_config`] turns them into a
//! [`Config`] that tests build directly without touching the process environment.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::cpuset::CpuSet;
use crate::fixture::MachineSpec;
use crate::inventory::{DeviceModel, GroupBy};
use crate::server::{self, CpuService, PeerPolicy, ServerError};
use crate::state::{Manager, PoolConfig, StateError};
use crate::store::{CheckpointStore, StoreError};
use crate::topology::{Topology, TopologyError};

/// Default socket of the daemon.
pub const DEFAULT_SOCKET: &str = "/run/drakit/cpu.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// One device `cpu<N>` per CPU with topology attributes.
    Individual,
    /// One device per NUMA node or socket with a consumable `cpus` capacity.
    Grouped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupArg {
    Numa,
    Socket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// drakit-cpu: CPU topology discovery and exclusive CPU allocation for cpu.drakit.dev.
#[derive(Debug, Parser)]
#[command(name = "drakit-cpu", version)]
pub struct Args {
    /// Unix socket serving drakit.v1.Backend and drakit.v1.CpuPool.
    #[arg(long, env = "DRAKIT_CPU_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Root of sysfs (the host's /sys, e.g. /host/sys in a container).
    #[arg(long, env = "DRAKIT_SYSFS_ROOT", default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// Describe this machine instead: a machine description JSON (see fixtures/), materialised
    /// into a temporary sysfs tree. For development and demos.
    #[arg(long, env = "DRAKIT_CPU_FIXTURE", conflicts_with = "sysfs_root")]
    pub fixture: Option<PathBuf>,
    /// File holding the node's boot ID.
    #[arg(
        long,
        env = "DRAKIT_BOOT_ID_FILE",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    pub boot_id_file: PathBuf,
    /// Directory of the state file (created 0700).
    #[arg(
        long,
        env = "DRAKIT_CPU_STATE_DIR",
        default_value = "/var/lib/drakit/cpu"
    )]
    pub state_dir: PathBuf,
    /// Device model.
    #[arg(
        long,
        env = "DRAKIT_CPU_DEVICE_MODEL",
        value_enum,
        default_value = "individual"
    )]
    pub device_model: ModelArg,
    /// Grouping of the grouped model.
    #[arg(long, env = "DRAKIT_CPU_GROUP_BY", value_enum, default_value = "numa")]
    pub group_by: GroupArg,
    /// CPUs never handed out exclusively (cpulist, e.g. "0-1").
    #[arg(long, env = "DRAKIT_CPU_RESERVED", default_value = "")]
    pub reserved_cpus: String,
    /// Reserved CPUs also run shared containers.
    #[arg(long, env = "DRAKIT_CPU_RESERVED_SHAREABLE")]
    pub reserved_shareable: bool,
    /// Isolated CPUs (isolcpus) also run shared containers.
    #[arg(long, env = "DRAKIT_CPU_ISOLATED_SHAREABLE")]
    pub isolated_shareable: bool,
    /// Allow a prepare that leaves no shared CPU.
    #[arg(long, env = "DRAKIT_CPU_ALLOW_EMPTY_SHARED_POOL")]
    pub allow_empty_shared_pool: bool,
    /// Uids allowed to connect besides root (comma-separated).
    #[arg(long, env = "DRAKIT_CPU_ALLOWED_UIDS", value_delimiter = ',')]
    pub allowed_uids: Vec<u32>,
    /// Re-read the topology every this many seconds to follow CPU hotplug (0: never).
    #[arg(long, env = "DRAKIT_CPU_RESCAN_SECS", default_value_t = 30)]
    pub rescan_secs: u64,
    /// Log format.
    #[arg(long, env = "DRAKIT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "DRAKIT_LOG", default_value = "info")]
    pub log: String,
}

/// Where the topology comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologySource {
    Sysfs(PathBuf),
    Fixture(PathBuf),
}

/// Everything the daemon needs, free of clap and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    pub topology: TopologySource,
    pub boot_id_file: PathBuf,
    pub state_dir: PathBuf,
    pub pool: PoolConfig,
    pub peers: PeerPolicy,
    /// Topology re-read interval; `None`: never.
    pub rescan: Option<std::time::Duration>,
}

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("--reserved-cpus: {0}")]
    Reserved(#[source] crate::cpuset::CpuListError),
    #[error("topology: {0}")]
    Topology(#[from] TopologyError),
    #[error("fixture: {0}")]
    Fixture(#[from] crate::fixture::FixtureError),
    #[error("boot id from {path}: {reason}")]
    BootId { path: PathBuf, reason: String },
    #[error("state: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
}

impl Args {
    pub fn into_config(self) -> Result<Config, DaemonError> {
        let model = match self.device_model {
            ModelArg::Individual => DeviceModel::Individual,
            ModelArg::Grouped => DeviceModel::Grouped(match self.group_by {
                GroupArg::Numa => GroupBy::Numa,
                GroupArg::Socket => GroupBy::Socket,
            }),
        };
        Ok(Config {
            socket: self.socket,
            topology: match self.fixture {
                Some(f) => TopologySource::Fixture(f),
                None => TopologySource::Sysfs(self.sysfs_root),
            },
            boot_id_file: self.boot_id_file,
            state_dir: self.state_dir,
            pool: PoolConfig {
                model,
                reserved: CpuSet::parse(&self.reserved_cpus).map_err(DaemonError::Reserved)?,
                reserved_shareable: self.reserved_shareable,
                isolated_shareable: self.isolated_shareable,
                allow_empty_shared_pool: self.allow_empty_shared_pool,
            },
            peers: PeerPolicy {
                allowed_uids: self.allowed_uids,
            },
            rescan: (self.rescan_secs > 0)
                .then(|| std::time::Duration::from_secs(self.rescan_secs)),
        })
    }
}

/// Reads and checks a boot ID file (a UUID, as the kernel writes it).
pub fn read_boot_id(path: &std::path::Path) -> Result<String, DaemonError> {
    let err = |reason: String| DaemonError::BootId {
        path: path.to_path_buf(),
        reason,
    };
    let s = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let id = s.trim();
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(err(format!(
            "{:?} is not a boot id",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(id.to_string())
}

/// Discovers the topology, restores state, serves until `shutdown`, removes the socket.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let (root, _fixture_dir) = match &cfg.topology {
        TopologySource::Sysfs(root) => (root.clone(), None),
        TopologySource::Fixture(path) => {
            let spec = MachineSpec::load(path)?;
            let dir = tempfile_dir()?;
            spec.materialize(&dir.0)?;
            tracing::info!(fixture = %spec.name, root = %dir.0.display(), "using a machine description");
            (dir.0.clone(), Some(dir))
        }
    };
    let topo = Topology::discover(&root)?;
    let boot_id = read_boot_id(&cfg.boot_id_file)?;
    let (store, report) = CheckpointStore::open(&cfg.state_dir, &boot_id)?;
    for w in report.warnings() {
        tracing::warn!("{w}");
    }
    let manager = Manager::new(topo, cfg.pool.clone(), &boot_id, Box::new(store))?;
    tracing::info!(
        cpus = %manager.topology().online,
        numa_nodes = manager.topology().numa_nodes.len(),
        hybrid = manager.topology().hybrid,
        shared = %manager.shared_pool(),
        restored = manager.claims().count(),
        model = ?cfg.pool.model,
        "topology discovered"
    );
    let service = CpuService::new(manager);
    let listener = server::bind(&cfg.socket)?;
    tracing::info!(socket = %cfg.socket.display(), "serving");
    let rescan = cfg
        .rescan
        .map(|every| tokio::spawn(rescan_loop(service.clone(), root.clone(), every)));
    let served = server::serve(service, listener, &cfg.socket, cfg.peers.clone(), shutdown).await;
    if let Some(task) = rescan {
        task.abort();
    }
    served?;
    tracing::info!("stopped, socket removed");
    Ok(())
}

/// Re-reads the topology every `every`; a changed one is republished. Read errors are logged
/// and the last good topology stays in force.
async fn rescan_loop(service: CpuService, root: PathBuf, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; start-up just read it
    loop {
        tick.tick().await;
        let r = root.clone();
        match tokio::task::spawn_blocking(move || Topology::discover(&r)).await {
            Ok(Ok(topo)) => {
                if let Err(e) = service.refresh_topology(topo) {
                    tracing::error!("applying the new topology: {e}");
                }
            }
            Ok(Err(e)) => tracing::warn!("re-reading the topology: {e}; keeping the last one"),
            Err(e) => tracing::warn!("re-reading the topology: task failed: {e}"),
        }
    }
}

/// A private temporary directory removed on drop (for `--fixture`).
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const FIXTURE_DIR_PREFIX: &str = "drakit-cpu-fixture-";

/// Removes the fixture trees of daemons that are gone (a killed daemon never runs its `Drop`;
/// a 1,024-CPU tree is ~28,000 files of tmpfs memory).
fn remove_stale_fixture_dirs(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(FIXTURE_DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn tempfile_dir() -> Result<TempDir, DaemonError> {
    let parent = crate::fixture::scratch_parent();
    remove_stale_fixture_dirs(&parent);
    let base = parent.join(format!("{FIXTURE_DIR_PREFIX}{}", std::process::id()));
    crate::store::create_private_dir(&base).map_err(DaemonError::TempDir)?;
    Ok(TempDir(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_fixture_dirs_of_dead_daemons_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        // Above any pid_max: no such process.
        let dead = parent
            .path()
            .join(format!("{FIXTURE_DIR_PREFIX}4294967295"));
        let mine = parent
            .path()
            .join(format!("{FIXTURE_DIR_PREFIX}{}", std::process::id()));
        let other = parent.path().join("something-else-1");
        for d in [&dead, &mine, &other] {
            std::fs::create_dir_all(d.join("devices/system/cpu")).unwrap();
        }
        remove_stale_fixture_dirs(parent.path());
        assert!(!dead.exists());
        assert!(mine.exists());
        assert!(other.exists());
    }

    #[test]
    fn args_to_config() {
        let args = Args::try_parse_from([
            "drakit-cpu",
            "--socket",
            "/tmp/x.sock",
            "--device-model",
            "grouped",
            "--group-by",
            "socket",
            "--reserved-cpus",
            "0-1",
            "--allowed-uids",
            "1000,1001",
        ])
        .unwrap();
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.pool.model, DeviceModel::Grouped(GroupBy::Socket));
        assert_eq!(cfg.pool.reserved.to_string(), "0-1");
        assert_eq!(cfg.peers.allowed_uids, vec![1000, 1001]);
        assert!(cfg.peers.allows(0) && cfg.peers.allows(1001) && !cfg.peers.allows(7));
        assert_eq!(cfg.topology, TopologySource::Sysfs("/sys".into()));
        assert_eq!(cfg.rescan, Some(std::time::Duration::from_secs(30)));
        let off = Args::try_parse_from(["drakit-cpu", "--rescan-secs", "0"]).unwrap();
        assert_eq!(off.into_config().unwrap().rescan, None);
        let bad = Args::try_parse_from(["drakit-cpu", "--reserved-cpus", "x"]).unwrap();
        assert!(
            bad.into_config()
                .unwrap_err()
                .to_string()
                .contains("--reserved-cpus")
        );
    }

    #[test]
    fn boot_id_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        std::fs::write(&p, "89da862f-7ffd-412e-82ca-c8b2773928da\n").unwrap();
        assert_eq!(
            read_boot_id(&p).unwrap(),
            "89da862f-7ffd-412e-82ca-c8b2773928da"
        );
        std::fs::write(&p, "not a boot id\n").unwrap();
        assert!(read_boot_id(&p).is_err());
        assert!(read_boot_id(&dir.path().join("missing")).is_err());
    }
}
