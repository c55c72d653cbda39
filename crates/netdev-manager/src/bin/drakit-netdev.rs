//! drakit-netdev: serves Backend + NetdevAttach on a Unix socket. Wiring only; logic is in the lib.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drakit_netdev::config::AttachMode;
use drakit_netdev::inventory::{InventoryOptions, VirtualMode, scan};
use drakit_netdev::manager::{Manager, ManagerOptions};
use drakit_netdev::netlink::real::RtNetlink;
use drakit_netdev::server::{NetdevService, serve};
use drakit_netdev::store::CheckpointStore;

#[derive(Debug, Parser)]
#[command(
    name = "drakit-netdev",
    about = "drakit network device and RDMA manager"
)]
struct Args {
    #[arg(
        long,
        env = "DRAKIT_NETDEV_SOCKET",
        default_value = "/run/drakit/netdev.sock"
    )]
    socket: PathBuf,
    /// Peer uids allowed to call (SO_PEERCRED).
    #[arg(
        long,
        env = "DRAKIT_ALLOWED_UIDS",
        value_delimiter = ',',
        default_value = "0"
    )]
    allowed_uids: Vec<u32>,
    #[arg(
        long,
        env = "DRAKIT_NETDEV_STATE_DIR",
        default_value = "/var/lib/drakit/netdev"
    )]
    state_dir: PathBuf,
    #[arg(long, env = "DRAKIT_SYS_ROOT", default_value = "/sys")]
    sys_root: PathBuf,
    #[arg(long, env = "DRAKIT_PROC_ROOT", default_value = "/proc")]
    proc_root: PathBuf,
    /// Pool name (defaults to the node name).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pool: String,
    /// Interfaces never published.
    #[arg(long, env = "DRAKIT_EXCLUDE_IFACES", value_delimiter = ',')]
    exclude: Vec<String>,
    /// Virtual links: one shared device with this many `slots`…
    #[arg(long, env = "DRAKIT_VIRTUAL_SLOTS", default_value_t = 128)]
    virtual_slots: u32,
    /// …or that many pre-enumerated devices instead.
    #[arg(long, env = "DRAKIT_VIRTUAL_PREENUMERATED", default_value_t = false)]
    virtual_preenumerated: bool,
    #[arg(long, env = "DRAKIT_ATTACH_MODE", default_value = "nri", value_parser = ["nri", "cdi", "hook"])]
    attach_mode: String,
    #[arg(long, env = "DRAKIT_RUNC", default_value = "runc")]
    runc: PathBuf,
    #[arg(
        long,
        env = "DRAKIT_HOOK_BINARY",
        default_value = "/usr/local/bin/drakit-oci-hook"
    )]
    hook_binary: PathBuf,
    #[arg(long, env = "DRAKIT_HOOK_TIMEOUT_MS", default_value_t = 10_000)]
    hook_timeout_ms: u64,
    #[arg(long, env = "DRAKIT_CNI_BIN_DIRS", value_delimiter = ',')]
    cni_bin_dirs: Vec<PathBuf>,
    #[arg(long, env = "DRAKIT_DEFAULT_PARENT")]
    default_parent: Option<String>,
    #[arg(long, env = "DRAKIT_RESCAN_SECONDS", default_value_t = 60)]
    rescan_seconds: u64,
    #[arg(long, env = "DRAKIT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_tracing(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init()
    } else {
        b.init()
    }
}

/// `DRAKIT_CRASH_AT` (tests only: honoured when built with the `crash-injection` feature).
fn crash_injection() -> anyhow::Result<()> {
    use drakit_types::crash::{Setting, init};
    match init(
        "drakit-netdev",
        drakit_netdev::manager::CRASH_STEPS,
        cfg!(feature = "crash-injection"),
    ) {
        Ok(Setting::Off) => {}
        Ok(Setting::Armed(step)) => {
            tracing::warn!(%step, "crash injection armed: the process aborts at this step")
        }
        Ok(Setting::Ignored(step)) => tracing::warn!(
            %step,
            "DRAKIT_CRASH_AT ignored: this binary was built without the crash-injection feature"
        ),
        Err(e) => anyhow::bail!(e),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    init_tracing(&a.log_format);
    crash_injection()?;
    let pool = if a.pool.is_empty() {
        std::fs::read_to_string(a.proc_root.join("sys/kernel/hostname"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    } else {
        a.pool.clone()
    };
    let mut inv = InventoryOptions::new(&a.sys_root, &a.proc_root);
    inv.exclude = a.exclude.clone();
    inv.virtual_mode = if a.virtual_preenumerated {
        VirtualMode::Slots(a.virtual_slots)
    } else {
        VirtualMode::Shared {
            slots: a.virtual_slots,
        }
    };
    let devices = scan(&inv).context("scanning sysfs")?;
    let mut o = ManagerOptions::new(pool);
    o.default_attach_mode = match a.attach_mode.as_str() {
        "cdi" => AttachMode::Cdi,
        "hook" => AttachMode::Hook,
        _ => AttachMode::Nri,
    };
    o.proc_root = a.proc_root.clone();
    o.runc = a.runc.clone();
    o.hook_binary = a.hook_binary.clone();
    o.hook_socket = a.socket.clone();
    o.hook_timeout = Duration::from_millis(a.hook_timeout_ms);
    if !a.cni_bin_dirs.is_empty() {
        o.cni.bin_dirs = a.cni_bin_dirs.clone();
    }
    o.default_parent = a.default_parent.clone();
    let host = RtNetlink::current().context("opening netlink")?;
    let mut cp = drakit_types::checkpoint::Options::new(&a.state_dir, "netdev.checkpoint");
    cp.boot_id = drakit_types::checkpoint::BootIdSource::ProcRoot(a.proc_root.clone());
    let store = CheckpointStore::open(cp).context("opening the checkpoint")?;
    let mgr = Arc::new(Manager::new(host, store, o, devices).context("loading state")?);
    let rep = mgr
        .reconcile()
        .await
        .context("reconciling with the kernel")?;
    tracing::info!(removed = ?rep.removed, restored = ?rep.restored, kept = ?rep.kept, errors = ?rep.errors, "reconciled");

    let rescan = {
        let mgr = mgr.clone();
        let every = Duration::from_secs(a.rescan_seconds.max(1));
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                match scan(&inv) {
                    Ok(d) => mgr.set_inventory(d),
                    Err(e) => tracing::warn!(error = %e, "rescan failed"),
                }
            }
        })
    };
    let shutdown = async {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut t) => {
                tokio::select! {
                    _ = t.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutting down");
    };
    tracing::info!(socket = %a.socket.display(), "serving");
    serve(
        NetdevService::new(mgr),
        &a.socket,
        a.allowed_uids.clone(),
        shutdown,
    )
    .await
    .context("serving")?;
    rescan.abort();
    Ok(())
}
