//! `cargo xtask deny`: the dependency tree (Cargo.lock) against `deny.toml` — licenses, bans
//! (duplicate versions warn, wildcard requirements fail) and sources (crates.io only).
//!
//! Installs cargo-deny when missing (`cargo install cargo-deny --locked`, pinned below; it has no
//! optional features to trim; the build is ≈200 CPU-seconds, measured 6 min 16 s wall on this
//! 2-core machine while other builds ran). The check itself takes ≈2 s. The `advisories` check is
//! not run: its database is fetched with git, which this project's machines cannot reach (see
//! the comment in deny.toml).

use std::process::Stdio;

use anyhow::{Result, bail};

use crate::util::{cargo, run};

/// The cargo-deny release installed when none is present.
const CARGO_DENY_VERSION: &str = "0.20.2";

pub fn run_task(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`cargo xtask deny` takes no arguments (got `{a}`)");
    }
    ensure_cargo_deny()?;
    run(cargo().args(["deny", "--locked", "check", "licenses", "bans", "sources"]))
}

/// The installed cargo-deny's version line, if one is installed.
fn installed() -> Option<String> {
    let out = cargo()
        .args(["deny", "--version"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn ensure_cargo_deny() -> Result<()> {
    if let Some(v) = installed() {
        eprintln!("using {v}");
        return Ok(());
    }
    eprintln!("cargo-deny is missing; installing {CARGO_DENY_VERSION} (a few minutes)");
    run(cargo().args([
        "install",
        "cargo-deny",
        "--locked",
        "--version",
        CARGO_DENY_VERSION,
    ]))?;
    match installed() {
        Some(v) => {
            eprintln!("installed {v}");
            Ok(())
        }
        None => bail!("`cargo install cargo-deny` succeeded but `cargo deny` does not run"),
    }
}
