//! drakit-cpu: wiring only; the logic lives in the library (`drakit_cpu::daemon`).

use anyhow::Context;
use clap::Parser;
use drakit_cpu::daemon::{self, Args, LogFormat};
use tokio::signal::unix::{SignalKind, signal};

fn init_logs(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("--log")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("logging: {e}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(args.log_format, &args.log)?;
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        };
        daemon::run(config, shutdown).await.context("drakit-cpu")
    })
}
