//! `drakit-kubelet-plugin`: parse flags, set up logging, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use drakit_kubelet_plugin::config::Args;
use drakit_kubelet_plugin::plugin::{Plugin, kube_client};

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
    tracing::info!("signal received; shutting down");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = args.into_config();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let client = kube_client(config.kubeconfig.as_deref()).await?;
        let plugin = Plugin::start(config, client).await?;
        // One line a supervisor (or the launch benchmark) can wait for.
        tracing::info!("serving");
        plugin.run(shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(())
    })
}
