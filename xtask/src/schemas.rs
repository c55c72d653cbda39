//! JSON Schemas of the claim-config kinds, written into `manifests/schemas/` by `cargo xtask render`.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// Writes one schema file per config kind into `out_dir`; returns the files written.
#[allow(dead_code)]
pub fn write(_out_dir: &Path) -> Result<Vec<PathBuf>> {
    bail!("schema export is not implemented yet (tracked in issue 9)")
}
