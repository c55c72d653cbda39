//! `cargo xtask render`.

use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("`cargo xtask render` is not implemented yet (tracked in issue 7)")
}
