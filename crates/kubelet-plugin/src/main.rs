//! `drakit-kubelet-plugin`: parse flags, set up logging, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use drakit_kubelet_plugin::config::Args;
use drakit_kubelet_plugin::lazy::LazyClient;
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

/// `DRAKIT_CRASH_AT` (tests only: honoured when built with the `crash-injection` feature).
fn crash_injection() -> anyhow::Result<()> {
    use drakit_types::crash::{Setting, init};
    match init(
        "drakit-kubelet-plugin",
        drakit_kubelet_plugin::driver::CRASH_STEPS,
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
    crash_injection()?;
    let config = args.into_config();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        // The client (TLS roots: tens of ms) is built once the drivers are registered; claim
        // reads, slices and status wait for it.
        let (client, setter) = LazyClient::pending();
        let kubeconfig = config.kubeconfig.clone();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let plugin = Plugin::start_lazy(config, client).await?;
        tracing::info!("serving");
        tokio::spawn(async move {
            match kube_client(kubeconfig.as_deref()).await {
                Ok(c) => setter.set(c),
                Err(e) => {
                    let _ = failed_tx.send(e.to_string());
                }
            }
        });
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let failed2 = failed.clone();
        let stop = async move {
            tokio::select! {
                () = shutdown_signal() => {}
                Ok(e) = failed_rx => {
                    tracing::error!(error = %e, "building the kube client failed; shutting down");
                    *failed2.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
        };
        plugin.run(stop).await?;
        if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            anyhow::bail!("kube client: {e}");
        }
        Ok::<_, anyhow::Error>(())
    })
}
