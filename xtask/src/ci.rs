//! `cargo xtask ci`: everything CI runs, in order. `.ci/run` is exactly this task.

use crate::util::{self, cargo, ensure_apt};
use anyhow::Result;

/// Debian packages the test suite uses, each with a file that shows it is installed.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
];

/// Formatting, lints, every test in the workspace, then the checks owned by other tasks.
pub fn run(_args: &[String]) -> Result<()> {
    ensure_apt(TEST_PACKAGES)?;
    util::run(cargo().args(["fmt", "--all", "--check"]))?;
    // The fuzz crates live outside the workspace; their code is checked for format here and
    // compiled (warnings shown) by the fuzz smoke at the end.
    for dir in crate::fuzz::crate_dirs() {
        let manifest = util::root().join(dir).join("Cargo.toml");
        util::run(
            cargo()
                .arg("fmt")
                .arg("--manifest-path")
                .arg(&manifest)
                .arg("--check"),
        )?;
    }
    util::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The dependency tree: licenses, bans, sources (installs cargo-deny when missing).
    crate::deny::run_task(&[])?;
    // The chart first: its renders feed the xtask tests (k8s-openapi decoding of every object).
    crate::helm::check_chart()?;
    crate::render::run(&["--check".to_string()])?;
    util::run(cargo().args(["test", "--workspace", "--locked"]))?;
    // Later steps (each owned by its task module) are added below, one line each.
    crate::node_e2e::run(&[])?;
    // The soak, short: 300 cycles across all concerns with daemon kills, API 500s and bad claims
    // mixed in; nothing may leak. `cargo xtask soak` alone runs 10,000.
    crate::soak::run(&["--cycles".to_string(), "300".to_string()])?;
    // Every fuzz target builds (ASan) and runs 10 s from its seeds; `cargo xtask fuzz-smoke`
    // alone runs 60 s each.
    crate::fuzz::run(&["--seconds".to_string(), "10".to_string()])?;
    Ok(())
}
