//! `cargo xtask dev`.

use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("`cargo xtask dev` is not implemented yet (tracked in issue 7)")
}
