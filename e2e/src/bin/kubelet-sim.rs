//! `kubelet-sim`: the kubelet simulator as a process.
//!
//! `watch` (default) logs plugin watcher events as JSON lines until SIGINT/SIGTERM; `prepare`,
//! `unprepare` and `health` wait for a driver to register, make the call and print the results as
//! JSON (exit status 1 when any claim failed).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use drakit_e2e::kubelet::{
    ApiServerLink, ClaimRef, DraVersion, HealthVersion, KubeletSim, KubeletSimConfig,
    RegistrationEvent,
};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "kubelet plugin-watcher and DRA-manager simulator for drakit node e2e tests")]
struct Args {
    /// The plugins_registry directory to watch.
    #[arg(
        long,
        env = "KUBELET_SIM_REGISTRY_DIR",
        default_value = "/var/lib/kubelet/plugins_registry"
    )]
    registry_dir: PathBuf,
    /// Directory scan interval.
    #[arg(long, env = "KUBELET_SIM_POLL_MS", default_value_t = 20)]
    poll_ms: u64,
    /// Deadline of each NodePrepareResources / NodeUnprepareResources call.
    #[arg(long, env = "KUBELET_SIM_CALL_TIMEOUT_SECS", default_value_t = 45)]
    call_timeout_secs: u64,
    /// DRAPlugin versions this kubelet speaks (v1, v1beta1).
    #[arg(
        long,
        env = "KUBELET_SIM_DRA_VERSIONS",
        value_delimiter = ',',
        default_value = "v1,v1beta1"
    )]
    dra_versions: Vec<String>,
    /// API server (http://host:port, no auth) for the kubelet's ResourceSlice clean-up; none when
    /// unset.
    #[arg(long, env = "KUBELET_SIM_APISERVER_URL", requires = "node_name")]
    apiserver_url: Option<String>,
    /// The node whose slices are cleaned up.
    #[arg(long, env = "KUBELET_SIM_NODE_NAME")]
    node_name: Option<String>,
    /// Delay before a gone driver's slices are deleted.
    #[arg(long, env = "KUBELET_SIM_SLICE_WIPE_DELAY_SECS", default_value_t = 30)]
    slice_wipe_delay_secs: u64,
    /// How long to wait for the driver to register (prepare/unprepare/health).
    #[arg(long, env = "KUBELET_SIM_WAIT_SECS", default_value_t = 60)]
    wait_secs: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log registrations, rejections and deregistrations until signalled.
    Watch,
    /// NodePrepareResources for the given claims.
    Prepare(CallArgs),
    /// NodeUnprepareResources for the given claims.
    Unprepare(CallArgs),
    /// Open NodeWatchResources and print updates.
    Health {
        #[arg(long)]
        driver: String,
        /// v1alpha1 or v1.
        #[arg(long, default_value = "v1alpha1")]
        version: String,
        /// Stop after this many updates (0: until signalled).
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
}

#[derive(Debug, clap::Args)]
struct CallArgs {
    #[arg(long)]
    driver: String,
    /// A claim as namespace/name/uid; repeat for several.
    #[arg(long = "claim", required = true)]
    claims: Vec<String>,
    /// v1 or v1beta1 (default: the negotiated one).
    #[arg(long)]
    api_version: Option<String>,
}

fn dra_version(s: &str) -> Result<DraVersion> {
    match s {
        "v1" => Ok(DraVersion::V1),
        "v1beta1" => Ok(DraVersion::V1beta1),
        other => bail!("unknown DRA version {other:?} (v1, v1beta1)"),
    }
}

fn claim_ref(s: &str) -> Result<ClaimRef> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [ns, name, uid] => Ok(ClaimRef::new(*ns, *name, *uid)),
        _ => bail!("claim {s:?}: expected namespace/name/uid"),
    }
}

fn event_json(e: &RegistrationEvent) -> Value {
    match e {
        RegistrationEvent::Registered(p) => json!({
            "event": "registered", "driver": p.driver, "endpoint": p.endpoint,
            "socket": p.registration_socket, "version": p.version.advertised(),
        }),
        RegistrationEvent::Rejected {
            registration_socket,
            driver,
            error,
        } => json!({
            "event": "rejected", "driver": driver, "socket": registration_socket, "error": error,
        }),
        RegistrationEvent::Failed {
            registration_socket,
            error,
        } => json!({
            "event": "failed", "socket": registration_socket, "error": error,
        }),
        RegistrationEvent::Deregistered(p) => json!({
            "event": "deregistered", "driver": p.driver, "socket": p.registration_socket,
        }),
        RegistrationEvent::SlicesWiped { driver, result } => match result {
            Ok(status) => json!({ "event": "slices-wiped", "driver": driver, "status": status }),
            Err(e) => json!({ "event": "slices-wiped", "driver": driver, "error": e }),
        },
    }
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut config = KubeletSimConfig::new(&args.registry_dir);
    config.poll_interval = Duration::from_millis(args.poll_ms.max(1));
    config.call_timeout = Duration::from_secs(args.call_timeout_secs);
    config.supported_versions = args
        .dra_versions
        .iter()
        .map(|v| dra_version(v))
        .collect::<Result<_>>()?;
    if let (Some(url), Some(node)) = (&args.apiserver_url, &args.node_name) {
        let mut link = ApiServerLink::new(url, node);
        link.wipe_delay = Duration::from_secs(args.slice_wipe_delay_secs);
        config.api_server = Some(link);
    }
    let kubelet = KubeletSim::start(config).await?;
    let wait = Duration::from_secs(args.wait_secs);

    match args.command.unwrap_or(Command::Watch) {
        Command::Watch => {
            let mut printed = 0;
            let signal = shutdown_signal();
            tokio::pin!(signal);
            loop {
                tokio::select! {
                    r = &mut signal => return r,
                    events = kubelet.wait_for_event_count(printed + 1, Duration::from_secs(3600)) => {
                        if let Ok(events) = events {
                            for ev in &events[printed..] {
                                println!("{}", event_json(ev));
                            }
                            printed = events.len();
                        }
                    }
                }
            }
        }
        Command::Prepare(call) => {
            let claims: Vec<ClaimRef> = call
                .claims
                .iter()
                .map(|c| claim_ref(c))
                .collect::<Result<_>>()?;
            let version = call.api_version.as_deref().map(dra_version).transpose()?;
            kubelet.wait_for_driver(&call.driver, wait).await?;
            let results = kubelet.prepare_with(&call.driver, &claims, version).await?;
            let mut ok = true;
            let out: serde_json::Map<String, Value> = results
                .into_iter()
                .map(|(uid, r)| {
                    let v = match r {
                        Ok(devices) => json!({ "devices": devices.iter().map(|d| json!({
                            "requestNames": d.request_names, "poolName": d.pool_name,
                            "deviceName": d.device_name, "cdiDeviceIDs": d.cdi_device_ids,
                            "shareID": d.share_id,
                        })).collect::<Vec<_>>() }),
                        Err(e) => {
                            ok = false;
                            json!({ "error": e })
                        }
                    };
                    (uid, v)
                })
                .collect();
            println!("{}", Value::Object(out));
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Unprepare(call) => {
            let claims: Vec<ClaimRef> = call
                .claims
                .iter()
                .map(|c| claim_ref(c))
                .collect::<Result<_>>()?;
            let version = call.api_version.as_deref().map(dra_version).transpose()?;
            kubelet.wait_for_driver(&call.driver, wait).await?;
            let results = kubelet
                .unprepare_with(&call.driver, &claims, version)
                .await?;
            let ok = results.values().all(Result::is_ok);
            let out: serde_json::Map<String, Value> = results
                .into_iter()
                .map(|(uid, r)| (uid, json!({ "error": r.err() })))
                .collect();
            println!("{}", Value::Object(out));
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Health {
            driver,
            version,
            count,
        } => {
            let version = match version.as_str() {
                "v1alpha1" => HealthVersion::V1alpha1,
                "v1" => HealthVersion::V1,
                other => bail!("unknown health version {other:?} (v1alpha1, v1)"),
            };
            kubelet.wait_for_driver(&driver, wait).await?;
            let watch = kubelet.watch_health(&driver, version).await?;
            let mut printed = 0;
            loop {
                let want = printed + 1;
                let updates = tokio::select! {
                    r = shutdown_signal() => return r,
                    u = watch.wait_for_updates(want, Duration::from_secs(1)) => match u {
                        Ok(u) => u,
                        Err(_) => {
                            if let Some(end) = watch.ended() {
                                return end.map_err(|e| anyhow::anyhow!("health stream ended: {e}"));
                            }
                            continue;
                        }
                    },
                };
                for u in &updates[printed..] {
                    let devices: Vec<Value> = u.devices.iter().map(|d| json!({
                        "poolName": d.pool_name, "deviceName": d.device_name,
                        "health": format!("{:?}", d.health), "lastUpdatedTime": d.last_updated_time,
                        "healthCheckTimeoutSeconds": d.health_check_timeout_seconds, "message": d.message,
                    })).collect();
                    println!("{}", json!({ "devices": devices }));
                }
                printed = updates.len();
                if count > 0 && printed >= count {
                    return Ok(());
                }
            }
        }
    }
}
