//! `drakit-nri`: the NRI sidecar binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use drakit_nri::cpu::CpuConcern;
use drakit_nri::netdev::NetdevConcern;
use drakit_nri::{Concern, RuntimeSpecConcern, Sidecar};
use drakit_types::constants;
use drakit_types::policy::Policy;
use nri::{Stub, StubConfig};

#[derive(Debug, Parser)]
#[command(name = "drakit-nri", version, about = "drakit NRI sidecar")]
struct Args {
    /// The runtime's NRI socket (ignored when the runtime launched us with NRI_PLUGIN_SOCKET).
    #[arg(long, env = "DRAKIT_NRI_SOCKET", default_value = constants::NRI_SOCKET)]
    nri_socket: PathBuf,
    /// Plugin name registered with the runtime.
    #[arg(long, env = "DRAKIT_NRI_PLUGIN_NAME", default_value = "drakit")]
    plugin_name: String,
    /// Two-digit plugin index (runtime call order among plugins).
    #[arg(long, env = "DRAKIT_NRI_PLUGIN_INDEX", default_value = "50")]
    plugin_index: String,
    /// Apply runtime-spec edits (runtime.drakit.dev claims).
    #[arg(long, env = "DRAKIT_NRI_RUNTIME_SPEC", default_value_t = true, action = clap::ArgAction::Set)]
    runtime_spec: bool,
    /// Admin policy for runtime-spec edits (YAML; the built-in default allows resource fields only).
    #[arg(long, env = "DRAKIT_POLICY_FILE")]
    policy_file: Option<PathBuf>,
    /// Keep cpusets: exclusive CPUs for cpu.drakit.dev claims, the shared pool for the rest.
    #[arg(long, env = "DRAKIT_NRI_CPU", default_value_t = true, action = clap::ArgAction::Set)]
    cpu: bool,
    /// drakit-cpu's socket.
    #[arg(
        long,
        env = "DRAKIT_CPU_SOCKET",
        default_value = "/run/drakit/cpu.sock"
    )]
    cpu_socket: PathBuf,
    /// Attach pod network interfaces through drakit-netdev (net attach mode `nri`).
    #[arg(long, env = "DRAKIT_NRI_NETDEV", default_value_t = true, action = clap::ArgAction::Set)]
    netdev: bool,
    /// drakit-netdev's socket.
    #[arg(
        long,
        env = "DRAKIT_NETDEV_SOCKET",
        default_value = "/run/drakit/netdev.sock"
    )]
    netdev_socket: PathBuf,
    /// Deadline of a netdev attach/detach call, in milliseconds (keep under the runtime's 2 s).
    #[arg(long, env = "DRAKIT_NETDEV_TIMEOUT_MS", default_value_t = 1500)]
    netdev_timeout_ms: u64,
    /// Log as JSON.
    #[arg(long, env = "DRAKIT_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    drakit_types::logging::init(args.log_json);
    // One thread: the sidecar's work is small and latency-bound; this keeps RSS low.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let mut concerns: Vec<Arc<dyn Concern>> = Vec::new();
    if args.runtime_spec {
        let policy = match &args.policy_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading the policy file {}", p.display()))?;
                Policy::from_yaml(&text).with_context(|| format!("policy file {}", p.display()))?
            }
            None => Policy::default(),
        };
        concerns.push(Arc::new(RuntimeSpecConcern::new(policy)));
    }
    let cpu = args.cpu.then(|| CpuConcern::new(args.cpu_socket.clone()));
    if let Some(c) = &cpu {
        concerns.push(c.clone());
    }
    if args.netdev {
        concerns.push(Arc::new(NetdevConcern::new(
            args.netdev_socket.clone(),
            Duration::from_millis(args.netdev_timeout_ms),
        )));
    }
    let sidecar = Sidecar::new(concerns);
    tracing::info!(concerns = ?sidecar.concern_names(), "starting");

    let cfg = StubConfig::from_env(Some(&args.plugin_name), Some(&args.plugin_index))
        .context("plugin name/index")?;
    // An inherited runtime fd wins over the socket path (from_env already chose it).
    let cfg = if std::env::var_os("NRI_PLUGIN_SOCKET").is_some() {
        cfg
    } else {
        cfg.with_socket(&args.nri_socket)
    };
    let stub = Stub::new(sidecar, cfg);
    let handle = stub.handle();
    if let Some(c) = &cpu {
        c.set_handle(handle.clone());
        tokio::spawn(c.clone().watch_pool());
    }
    let stop = handle.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("no SIGTERM handler: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        stop.shutdown();
    });
    stub.run().await.context("NRI stub")?;
    Ok(())
}
