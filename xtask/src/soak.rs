//! `cargo xtask soak`.

use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("`cargo xtask soak` is not implemented yet (tracked in issue 8)")
}
