//! `cargo xtask dev <component>`: rebuild one component's image, load it into the kind cluster and
//! swap just that container (helm upgrade with that component's image tag, other values reused).

use std::process::Command;

use anyhow::{Result, bail};

use crate::e2e_kind::{CLUSTER, require_cluster_tools};
use crate::helm::ensure_helm;
use crate::images::{self, COMPONENTS, REGISTRY};
use crate::util::{self, root};

/// The chart values key of a component.
pub fn values_key(target: &str) -> Option<&'static str> {
    match target {
        "kubelet-plugin" => Some("kubeletPlugin"),
        "nri" => Some("nri"),
        "netdev" => Some("netdev"),
        "cpu" => Some("cpuAllocator"),
        "webhook" => Some("webhook"),
        _ => None,
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let Some(target) = args.first() else {
        bail!("usage: cargo xtask dev <kubelet-plugin|nri|netdev|cpu>");
    };
    let Some(key) = values_key(target) else {
        bail!("unknown component {target:?} (kubelet-plugin, nri, netdev, cpu)");
    };
    require_cluster_tools()?;
    let tag = format!(
        "dev-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    images::build(&[target.as_str()], &tag)?;
    let repo = COMPONENTS
        .iter()
        .find(|(t, _)| t == target)
        .map(|(_, r)| *r)
        .unwrap_or_default();
    util::run(Command::new("kind").args([
        "load",
        "docker-image",
        "--name",
        CLUSTER,
        &format!("{REGISTRY}/{repo}:{tag}"),
    ]))?;
    util::run(Command::new(ensure_helm()?).current_dir(root()).args([
        "upgrade",
        "drakit",
        "charts/drakit",
        "--namespace",
        "drakit-system",
        "--reuse-values",
        "--set",
        &format!("{key}.image.tag={tag}"),
    ]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys() {
        assert_eq!(super::values_key("cpu"), Some("cpuAllocator"));
        assert_eq!(super::values_key("x"), None);
    }
}
