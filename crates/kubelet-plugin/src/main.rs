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

/// How long the kube client's set-up waits for the kubelet's first GetInfo.
const CLIENT_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Returns the heap memory start-up freed (kubeconfig parsing, TLS set-up, slice building) to
/// the kernel: glibc keeps freed pages of the heap resident until a trim.
#[allow(unsafe_code)]
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// One malloc arena for the whole process (glibc): the runtime runs on one thread, and the few
/// blocking-pool threads (kube client set-up, `flock` waits) would otherwise each get an arena
/// of their own (a few hundred KiB resident, kept for the process's life).
#[allow(unsafe_code)]
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called first thing, before any other thread.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

fn main() -> anyhow::Result<()> {
    one_malloc_arena();
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
    let rt = drakit_kubelet_plugin::plugin::runtime().context("starting the tokio runtime")?;
    rt.block_on(async move {
        // The client (kubeconfig, TLS set-up: milliseconds of CPU) is built once the sockets
        // are up, on a blocking-pool thread: the runtime has one thread, which must be free to
        // answer the kubelet's GetInfo meanwhile. Claim reads, slices and status wait for it.
        let (client, setter) = LazyClient::pending();
        let kubeconfig = config.kubeconfig.clone();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let plugin = Plugin::start_lazy(config, client).await?;
        tracing::info!("serving");
        let mut asked = plugin.registration_asked();
        tokio::spawn(async move {
            // The kubelet asks for GetInfo as soon as a registration socket appears; that answer
            // comes first (on a 2-core node the client's set-up would compete with it for CPU).
            // Without a kubelet asking, the client is built after a short wait anyway.
            let _ = tokio::time::timeout(CLIENT_AFTER, asked.wait_for(|a| *a)).await;
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                // Tasks the client spawns (its request buffer, connections) go to the runtime.
                match handle.block_on(kube_client(kubeconfig.as_deref())) {
                    Ok(c) => {
                        setter.set(c);
                        trim_heap();
                    }
                    Err(e) => {
                        let _ = failed_tx.send(e.to_string());
                    }
                }
            });
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
