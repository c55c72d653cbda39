//! `drakit-webhook`: validating admission webhook for drakit claim configs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use drakit_types::constants;
use drakit_types::policy::Policy;
use drakit_webhook::{CertReloader, Metrics, ServerConfig, Validator, serve};

#[derive(Debug, Parser)]
#[command(name = "drakit-webhook", version, about = "drakit admission webhook")]
struct Args {
    #[arg(long, env = "DRAKIT_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: String,
    /// Serving certificate (PEM chain), e.g. from a mounted Secret's tls.crt.
    #[arg(
        long,
        env = "DRAKIT_WEBHOOK_CERT",
        default_value = "/etc/drakit/tls/tls.crt"
    )]
    cert_file: PathBuf,
    /// Its private key (PEM).
    #[arg(
        long,
        env = "DRAKIT_WEBHOOK_KEY",
        default_value = "/etc/drakit/tls/tls.key"
    )]
    key_file: PathBuf,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, env = "DRAKIT_WEBHOOK_RELOAD_SECS", default_value_t = 10)]
    reload_secs: u64,
    /// The runtime-spec admin policy (the same file the NRI sidecar reads).
    #[arg(long, env = "DRAKIT_POLICY_FILE")]
    policy_file: Option<PathBuf>,
    #[arg(long, env = "DRAKIT_NET_DRIVER_NAME", default_value = constants::NET_DRIVER_NAME)]
    net_driver_name: String,
    #[arg(long, env = "DRAKIT_CPU_DRIVER_NAME", default_value = constants::CPU_DRIVER_NAME)]
    cpu_driver_name: String,
    #[arg(long, env = "DRAKIT_RUNTIME_DRIVER_NAME", default_value = constants::RUNTIME_DRIVER_NAME)]
    runtime_driver_name: String,
    /// Per-request deadline in milliseconds.
    #[arg(long, env = "DRAKIT_WEBHOOK_TIMEOUT_MS", default_value_t = 2000)]
    timeout_ms: u64,
    #[arg(long, env = "DRAKIT_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    drakit_types::logging::init(args.log_json);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let policy = match &args.policy_file {
        Some(p) => Policy::from_yaml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("policy file {}", p.display()))?,
        None => Policy::default(),
    };
    let validator = Arc::new(Validator {
        drivers: vec![
            args.net_driver_name.clone(),
            args.cpu_driver_name.clone(),
            args.runtime_driver_name.clone(),
        ],
        runtime_driver: args.runtime_driver_name.clone(),
        policy,
    });
    let certs = CertReloader::new(args.cert_file.clone(), args.key_file.clone())
        .context("loading the serving certificate")?;
    let tls = certs.server_config()?;
    let metrics = Arc::new(Metrics::default());
    {
        let certs = certs.clone();
        let metrics = metrics.clone();
        let every = Duration::from_secs(args.reload_secs.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match certs.reload_if_changed() {
                    Ok(true) => {
                        metrics.tls_reloads.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("serving certificate reloaded");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        "certificate changed but cannot be loaded (keeping the old one): {e}"
                    ),
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(
        listener,
        tls,
        ServerConfig {
            validator,
            metrics,
            request_timeout: Duration::from_millis(args.timeout_ms),
        },
        shutdown,
    )
    .await;
    Ok(())
}
