//! `cargo xtask demo [--only NAME]...`: the README's main command. Runs the whole node stack —
//! drakit-kubelet-plugin, drakit-netdev, drakit-cpu, drakit-nri as real processes, with the
//! kubelet simulator, the API server stand-in and the NRI runtime simulator playing containerd —
//! on every example of `manifests/examples/`, and tells for each what it asked for and what it
//! produced (CDI spec, the interface inside the pod's network namespace, the container's final
//! cpuset and cgroup keys, the claim's status). Without root the network scenarios are skipped
//! (and said so); the runtime-spec and CPU ones still run.

use crate::node_e2e;
use crate::util::is_root;
use anyhow::Result;

pub fn run(args: &[String]) -> Result<()> {
    if !is_root() {
        eprintln!(
            "note: not running as root: scenarios of net.drakit.dev need network namespaces and \
             will be reported as skipped; runtime-spec and CPU scenarios still run."
        );
    }
    eprintln!("building the daemons (debug) ...");
    let bin_dir = node_e2e::build(true)?;
    node_e2e::runner(&bin_dir, args, true)
}
