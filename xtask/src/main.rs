//! `cargo xtask <task>`: the project's developer and CI entry points.
//!
//! Every task installs what it needs when it is missing, so that a fresh machine needs nothing but
//! this repository, `../shared` beside it and the Rust toolchain. Each task lives in its own module.

mod bench;
mod ci;
mod demo;
mod deny;
mod dev;
mod e2e_kind;
mod fuzz;
mod helm;
mod images;
mod node_e2e;
mod render;
mod schemas;
mod soak;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  ci          what CI runs: fmt check, clippy -D warnings, cargo deny, chart and render checks, every test,
              node-e2e, soak (300 cycles), fuzz-smoke (10 s a target)
  deny        cargo deny: licenses, bans, sources of Cargo.lock against deny.toml (installs cargo-deny)
  demo        the whole node stack on its embedded default (simulated kubelet and API server)
  node-e2e    node-level end-to-end scenarios with real processes
  e2e         end-to-end on a real kind cluster (needs docker and kind)
  dev <comp>  rebuild one component's image and swap it into the kind cluster
  bench       every benchmark (--quick, --runs N); a table of medians for BENCHMARKS.md
  chart       helm lint + template of every toggle combination (into target/chart-renders/)
  render      regenerate manifests/install.yaml and manifests/schemas/ (--check: fail when stale)
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
        "ci" => ci::run(rest),
        "deny" => deny::run_task(rest),
        "demo" => demo::run(rest),
        "node-e2e" => node_e2e::run(rest),
        "e2e" => e2e_kind::run(rest),
        "dev" => dev::run(rest),
        "bench" => bench::run(rest),
        "chart" => helm::check_chart(),
        "render" => render::run(rest),
        "images" => images::run(rest),
        "fuzz-smoke" => fuzz::run(rest),
        "soak" => soak::run(rest),
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
