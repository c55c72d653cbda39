//! The tasks behind `cargo xtask`.

use crate::util::{cargo, ensure_apt, run};
use anyhow::{Result, bail};

/// Debian packages the test suite uses, each with a file that shows it is installed.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
];

/// What CI runs: formatting, lints, then every test in the workspace.
pub fn ci(_args: &[String]) -> Result<()> {
    ensure_apt(TEST_PACKAGES)?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace", "--locked"]))?;
    Ok(())
}

/// The README's main command.
pub fn demo(_args: &[String]) -> Result<()> {
    println!(
        "drakit demo: the node stack (kubelet plugin, NRI sidecar, netdev and CPU managers) is not \
         wired up yet; it lands with issue 7. Run `cargo xtask ci` for the test suite."
    );
    Ok(())
}

pub fn not_yet(task: &str, issue: &str) -> Result<()> {
    bail!("`cargo xtask {task}` is not implemented yet (tracked in {issue})")
}
