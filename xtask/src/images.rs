//! `cargo xtask images`.

use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("`cargo xtask images` is not implemented yet (tracked in issue 7)")
}
