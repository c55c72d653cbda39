//! `cargo xtask <task>`: the project's developer and CI entry points.
//!
//! Every task installs what it needs when it is missing, so that a fresh machine needs nothing but
//! this repository, `../shared` beside it and the Rust toolchain.

mod tasks;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  ci          what CI runs: fmt check, clippy -D warnings, every test
  demo        the whole node stack on its embedded default (simulated kubelet and API server)
  node-e2e    node-level end-to-end scenarios with real processes
  e2e         end-to-end on a real kind cluster (needs docker and kind)
  bench       every benchmark; results are printed and summarised for BENCHMARKS.md
  render      regenerate manifests/install.yaml and manifests/schemas/
  images      build the container images (needs docker)
  fuzz-smoke  a short run of every fuzz target
  soak        long prepare/attach/detach/unprepare cycles with injected faults
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprint!("{USAGE}");
        bail!("no task given");
    };
    let rest = &args[1..];
    match task.as_str() {
        "ci" => tasks::ci(rest),
        "demo" => tasks::demo(rest),
        "node-e2e" => tasks::not_yet("node-e2e", "issue 7"),
        "e2e" => tasks::not_yet("e2e", "issue 7"),
        "bench" => tasks::not_yet("bench", "issue 8"),
        "render" => tasks::not_yet("render", "issue 7"),
        "images" => tasks::not_yet("images", "issue 7"),
        "fuzz-smoke" => tasks::not_yet("fuzz-smoke", "issue 8"),
        "soak" => tasks::not_yet("soak", "issue 8"),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown task `{other}`")
        }
    }
}
