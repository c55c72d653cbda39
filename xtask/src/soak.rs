//! `cargo xtask soak [--cycles N] [--seed S] [--kill-rate P] [--keep] ...`: long prepare →
//! attach → detach → unprepare cycles through the real daemons (debug builds) with injected
//! faults, then leak checks (links, namespaces, CDI files, checkpoint entries, fds, RSS). The
//! runner is `drakit-e2e`'s `soak` binary (`e2e/src/bin/soak.rs`); this task builds it together
//! with the daemons (the same build as node-e2e) and passes every argument through.

use crate::util::{self, ensure_apt};
use anyhow::{Context, Result, bail};
use std::process::Command;

/// The network part needs `ip` (the CNI plugins are not used by the soak).
const PACKAGES: &[(&str, &str)] = &[("iproute2", "/usr/sbin/ip")];

pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: cargo xtask soak [--cycles N (10000)] [--seed S] [--kill-rate P (0.03)] \
             [--api-fault-rate P (0.15)] [--bad-claim-rate P (0.1)] [--max-rss-growth-kib K (8192)] [--keep]"
        );
        return Ok(());
    }
    ensure_apt(PACKAGES)?;
    let bin_dir = crate::node_e2e::build(false)?;
    let exe = bin_dir.join("soak");
    let status = Command::new(&exe)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--workspace")
        .arg(util::root())
        .args(args)
        .current_dir(util::root())
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        bail!("soak failed ({status})");
    }
    Ok(())
}
