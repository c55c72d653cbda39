//! `apiserver-sim`: the API server stand-in as a process, for node-e2e runs with real daemons.
//!
//! Prints one JSON line `{"url": ..., "kubeconfig": ...}` on stdout once listening, then serves
//! until SIGINT/SIGTERM. Seeding, inspection and faults are under `/_drakit/` (see the README).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use drakit_e2e::apiserver::ApiServerSim;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(about = "Kubernetes API server stand-in for drakit node e2e tests")]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "APISERVER_SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the server here.
    #[arg(long, env = "APISERVER_SIM_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// YAML or JSON files of Nodes, ResourceClaims and ResourceSlices to load (multi-document).
    #[arg(long = "seed", env = "APISERVER_SIM_SEED", value_delimiter = ',')]
    seeds: Vec<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "APISERVER_SIM_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
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

fn load_seeds(api: &ApiServerSim, path: &PathBuf) -> Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut count = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc)
            .with_context(|| format!("parsing {}", path.display()))?;
        if value.is_null() {
            continue;
        }
        api.insert_raw(value)
            .with_context(|| format!("seeding from {}", path.display()))?;
        count += 1;
    }
    Ok(count)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format);
    let api = ApiServerSim::start_on(args.listen).await?;
    for seed in &args.seeds {
        let n = load_seeds(&api, seed)?;
        tracing::info!(file = %seed.display(), objects = n, "seeded");
    }
    if let Some(path) = &args.kubeconfig {
        api.write_kubeconfig(path)?;
    }
    println!(
        "{}",
        serde_json::json!({
            "url": api.url(),
            "kubeconfig": args.kubeconfig.as_ref().map(|p| p.display().to_string()),
        })
    );
    shutdown_signal().await?;
    tracing::info!("shutting down");
    Ok(())
}
