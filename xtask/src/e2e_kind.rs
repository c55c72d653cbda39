//! `cargo xtask e2e`: a real kind cluster. Builds the images and the node image, creates the
//! cluster from `kind/cluster.yaml`, loads the images, installs the chart, applies every example
//! in `manifests/examples/`, checks from inside the pods, and deletes the cluster.
//! It needs docker (with an engine), kind and kubectl; without them it says so and fails.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::helm::ensure_helm;
use crate::images::{self, COMPONENTS, REGISTRY};
use crate::util::{self, have, root};

pub const CLUSTER: &str = "drakit";
pub const NODE_IMAGE: &str = "drakit/kind-node:v1.35.0";

/// What `e2e` and `dev` need on PATH, with the reason.
pub fn missing_tools() -> Vec<&'static str> {
    ["docker", "kind", "kubectl"]
        .into_iter()
        .filter(|t| !have(t))
        .collect()
}

pub fn require_cluster_tools() -> Result<()> {
    let missing = missing_tools();
    if !missing.is_empty() {
        bail!(
            "cargo xtask e2e needs {} on PATH (and a running Docker engine); this machine has none of that, \
             use `cargo xtask node-e2e` for the node-level suite",
            missing.join(", ")
        );
    }
    images::require_docker()
}

/// helm install/upgrade arguments for images tagged `tag`.
pub fn helm_install_args(tag: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "upgrade",
        "--install",
        "drakit",
        "charts/drakit",
        "--namespace",
        "drakit-system",
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
        "--set",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("image.tag={tag}"));
    a.push("--set".into());
    a.push(format!("image.registry={REGISTRY}"));
    a
}

/// What each example is checked with, from inside its pod.
pub fn pod_check(example: &str) -> &'static [&'static str] {
    if example.starts_with("net-") || example.starts_with("cni-") || example == "roce" {
        &["ip", "-brief", "link"]
    } else if example.starts_with("cpu-") {
        &["cat", "/sys/fs/cgroup/cpuset.cpus.effective"]
    } else if example.starts_with("runtime-") {
        &["cat", "/sys/fs/cgroup/io.max"]
    } else {
        &["true"]
    }
}

fn kubectl(args: &[&str]) -> Result<()> {
    util::run(Command::new("kubectl").args(args))
}

pub fn run(args: &[String]) -> Result<()> {
    require_cluster_tools()?;
    let keep = args.iter().any(|a| a == "--keep");
    let tag = "e2e";
    images::build(&[], tag)?;
    util::run(Command::new("docker").current_dir(root()).args([
        "build",
        "-f",
        "kind/node-image.Dockerfile",
        "-t",
        NODE_IMAGE,
        "kind/",
    ]))?;
    util::run(Command::new("kind").current_dir(root()).args([
        "create",
        "cluster",
        "--name",
        CLUSTER,
        "--config",
        "kind/cluster.yaml",
        "--image",
        NODE_IMAGE,
    ]))?;
    let result = (|| -> Result<()> {
        for (_, repo) in COMPONENTS {
            util::run(Command::new("kind").args([
                "load",
                "docker-image",
                "--name",
                CLUSTER,
                &format!("{REGISTRY}/{repo}:{tag}"),
            ]))?;
        }
        let helm = ensure_helm()?;
        util::run(
            Command::new(helm)
                .current_dir(root())
                .args(helm_install_args(tag)),
        )?;
        let examples = root().join("manifests/examples");
        let mut names: Vec<String> = std::fs::read_dir(&examples)
            .context("manifests/examples")?
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let dir = examples.join(&name);
            kubectl(&["apply", "-f", &dir.to_string_lossy()])?;
            kubectl(&[
                "wait",
                "--for=condition=Ready",
                "pod",
                "--all",
                "--timeout=120s",
            ])?;
            let mut cmd = vec!["exec", "deploy-or-pod", "--"];
            let pod = format!("pod/{name}");
            cmd[1] = &pod;
            cmd.extend_from_slice(pod_check(&name));
            kubectl(&cmd)?;
            kubectl(&["delete", "-f", &dir.to_string_lossy(), "--wait"])?;
        }
        Ok(())
    })();
    if !keep {
        let _ = util::run(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_args_pin_the_tag() {
        let a = helm_install_args("e2e").join(" ");
        assert!(a.contains("--set image.tag=e2e"), "{a}");
        assert!(
            a.starts_with("upgrade --install drakit charts/drakit"),
            "{a}"
        );
    }

    #[test]
    fn checks_per_example_kind() {
        assert_eq!(pod_check("net-macvlan"), ["ip", "-brief", "link"]);
        assert_eq!(
            pod_check("cpu-exclusive")[1],
            "/sys/fs/cgroup/cpuset.cpus.effective"
        );
        assert_eq!(pod_check("runtime-io-throttle")[1], "/sys/fs/cgroup/io.max");
    }
}
