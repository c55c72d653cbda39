//! `cargo xtask images [--tag T]`: the container image of every component, from
//! `kind/images/Dockerfile` (one multi-stage build, one `--target` per component).

use std::process::Command;

use anyhow::{Result, bail};

use crate::util::{self, have, root};

/// (Dockerfile target, image repository) of every component.
pub const COMPONENTS: &[(&str, &str)] = &[
    ("kubelet-plugin", "drakit-kubelet-plugin"),
    ("nri", "drakit-nri"),
    ("netdev", "drakit-netdev"),
    ("cpu", "drakit-cpu"),
    ("webhook", "drakit-webhook"),
];

pub const REGISTRY: &str = "ghcr.io/drakit";

/// Fails with a clear message when no container engine answers.
pub fn require_docker() -> Result<()> {
    if !have("docker") {
        bail!("docker is not installed: building images needs a Docker engine");
    }
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!("no Docker engine answers (`docker info` failed): building images needs one");
    }
    Ok(())
}

/// The `docker build` arguments for one component.
pub fn build_args(target: &str, repo: &str, tag: &str) -> Vec<String> {
    vec![
        "build".into(),
        "-f".into(),
        "kind/images/Dockerfile".into(),
        "--target".into(),
        target.into(),
        "-t".into(),
        format!("{REGISTRY}/{repo}:{tag}"),
        ".".into(),
    ]
}

pub fn tag_arg(args: &[String]) -> String {
    args.iter()
        .position(|a| a == "--tag")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "dev".into())
}

/// Builds `components` (all when empty) with `tag`.
pub fn build(components: &[&str], tag: &str) -> Result<()> {
    require_docker()?;
    for (target, repo) in COMPONENTS {
        if components.is_empty() || components.contains(target) {
            util::run(
                Command::new("docker")
                    .current_dir(root())
                    .args(build_args(target, repo, tag)),
            )?;
        }
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    build(&[], &tag_arg(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_name_target_and_tag() {
        let a = build_args("nri", "drakit-nri", "v1");
        assert_eq!(
            a.join(" "),
            "build -f kind/images/Dockerfile --target nri -t ghcr.io/drakit/drakit-nri:v1 ."
        );
        assert_eq!(tag_arg(&["--tag".into(), "x".into()]), "x");
        assert_eq!(tag_arg(&[]), "dev");
    }
}
