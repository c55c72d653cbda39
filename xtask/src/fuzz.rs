//! `cargo xtask fuzz-smoke`.

use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("`cargo xtask fuzz-smoke` is not implemented yet (tracked in issue 8)")
}
