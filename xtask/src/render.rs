//! `cargo xtask render [--check]`: `manifests/install.yaml` from the chart with default values, and
//! the config JSON Schemas into `manifests/schemas/`. `--check` fails when a checked-in file is stale.

use anyhow::{Result, bail};

use crate::helm;
use crate::util::root;

const HEADER: &str = "# Rendered from charts/drakit with default values by `cargo xtask render`; do not edit.\n# Install: kubectl create namespace drakit-system && kubectl apply -n drakit-system -f manifests/install.yaml\n";

pub fn run(args: &[String]) -> Result<()> {
    let check = args.iter().any(|a| a == "--check");
    let helm = helm::ensure_helm()?;
    let rendered = format!("{HEADER}{}", helm::template(&helm, &[])?);
    let path = root().join("manifests/install.yaml");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let mut stale = Vec::new();
    if current != rendered {
        if check {
            stale.push(path.display().to_string());
        } else {
            std::fs::write(&path, &rendered)?;
            eprintln!("wrote {}", path.display());
        }
    }
    let schemas = root().join("manifests/schemas");
    if check {
        let tmp = root().join("target/render-check/schemas");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        match crate::schemas::write(&tmp) {
            Ok(files) => {
                for f in files {
                    let name = f.file_name().unwrap_or_default();
                    let want = std::fs::read_to_string(&f)?;
                    let have = std::fs::read_to_string(schemas.join(name)).unwrap_or_default();
                    if want != have {
                        stale.push(schemas.join(name).display().to_string());
                    }
                }
            }
            Err(e) => eprintln!("note: schemas not checked: {e}"),
        }
    } else {
        match crate::schemas::write(&schemas) {
            Ok(files) => eprintln!(
                "wrote {} schema file(s) into {}",
                files.len(),
                schemas.display()
            ),
            Err(e) => eprintln!("note: schemas not written: {e}"),
        }
    }
    if !stale.is_empty() {
        bail!(
            "stale rendered files (run `cargo xtask render` and commit): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
