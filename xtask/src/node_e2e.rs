//! `cargo xtask node-e2e`.

use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("`cargo xtask node-e2e` is not implemented yet (tracked in issue 7)")
}
