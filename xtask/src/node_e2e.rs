//! `cargo xtask node-e2e [--only NAME]... [--keep]`: every scenario of `manifests/examples/`
//! against the real daemons (debug builds), with the kubelet simulator, the API server stand-in
//! and the NRI runtime simulator. The runner is `drakit-e2e`'s `node-e2e` binary; this task
//! builds it and the daemons in one `cargo build`, then runs it. `demo` shares this code.

use crate::util::{self, cargo, ensure_apt};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// What the network scenarios use on the machine: `ip` and the CNI plugins.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("containernetworking-plugins", "/usr/lib/cni/macvlan"),
];

/// The binaries node-e2e starts, and the runner itself.
const PACKAGES_TO_BUILD: &[&str] = &[
    "drakit-kubelet-plugin",
    "drakit-netdev",
    "drakit-cpu",
    "drakit-nri",
    "drakit-e2e",
];

pub fn run(args: &[String]) -> Result<()> {
    ensure_apt(PACKAGES)?;
    let bin_dir = build(false)?;
    runner(&bin_dir, args, false)
}

/// Builds the daemons and the runner (debug); returns the directory holding them.
pub fn build(quiet: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--locked", "--bins"]);
    if quiet {
        cmd.arg("-q");
    }
    for p in PACKAGES_TO_BUILD {
        cmd.args(["-p", p]);
    }
    util::run(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("target"));
    let target = if target.is_relative() {
        util::root().join(target)
    } else {
        target
    };
    Ok(target.join("debug"))
}

/// Runs the `node-e2e` runner with `args` passed through.
pub fn runner(bin_dir: &std::path::Path, args: &[String], demo: bool) -> Result<()> {
    let exe = bin_dir.join("node-e2e");
    let mut cmd = Command::new(&exe);
    cmd.arg("--bin-dir")
        .arg(bin_dir)
        .arg("--workspace")
        .arg(util::root())
        .args(args)
        .current_dir(util::root());
    if demo {
        cmd.arg("--demo");
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        bail!("node-e2e failed ({status})");
    }
    Ok(())
}
