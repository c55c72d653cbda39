//! Reading `manifests/examples/<scenario>/*.yaml`: claims, claim templates and pods, and the pod →
//! claim expansion a ResourceClaim controller would do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

/// One example directory.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub dir: PathBuf,
    /// The README's first paragraph after the title.
    pub summary: String,
    /// ResourceClaims by name (`spec` only).
    pub claims: BTreeMap<String, Value>,
    /// ResourceClaimTemplates by name (their `spec.spec`, i.e. a claim spec).
    pub templates: BTreeMap<String, Value>,
    pub pods: Vec<PodDef>,
}

#[derive(Debug, Clone)]
pub struct PodDef {
    pub name: String,
    pub namespace: String,
    pub containers: Vec<ContainerDef>,
    /// `spec.resourceClaims`: pod-level name → claim source.
    pub claims: Vec<PodClaim>,
}

#[derive(Debug, Clone)]
pub struct ContainerDef {
    pub name: String,
    pub args: Vec<String>,
    /// Pod-level claim names from `resources.claims`.
    pub claims: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PodClaim {
    pub name: String,
    pub source: ClaimSource,
}

#[derive(Debug, Clone)]
pub enum ClaimSource {
    Claim(String),
    Template(String),
}

/// A claim as the scenario's pods use it: its object name and spec.
#[derive(Debug, Clone)]
pub struct ClaimUse {
    /// Object name (`<pod>-<claim>` for templates, as the controller generates them).
    pub object: String,
    pub spec: Value,
    /// The pods that reference it.
    pub pods: Vec<String>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn first_paragraph(readme: &str) -> String {
    readme
        .split("\n\n")
        .map(str::trim)
        .find(|p| !p.is_empty() && !p.starts_with('#'))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Scenario {
    pub fn load(dir: &Path) -> Result<Self> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let summary = std::fs::read_to_string(dir.join("README.md"))
            .map(|r| first_paragraph(&r))
            .unwrap_or_default();
        let mut s = Scenario {
            name,
            dir: dir.to_path_buf(),
            summary,
            claims: BTreeMap::new(),
            templates: BTreeMap::new(),
            pods: Vec::new(),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v =
                    Value::deserialize(doc).with_context(|| format!("parsing {}", f.display()))?;
                if v.is_null() {
                    continue;
                }
                s.add(v).with_context(|| format!("in {}", f.display()))?;
            }
        }
        if s.pods.is_empty() {
            bail!("scenario {} has no Pod", s.name);
        }
        Ok(s)
    }

    fn add(&mut self, v: Value) -> Result<()> {
        let kind = str_at(&v, &["kind"]).unwrap_or_default();
        let api = str_at(&v, &["apiVersion"]).unwrap_or_default();
        let name = str_at(&v, &["metadata", "name"])
            .context("object without metadata.name")?
            .to_owned();
        match kind {
            "ResourceClaim" | "ResourceClaimTemplate" if api != "resource.k8s.io/v1" => {
                bail!("{kind} {name}: apiVersion {api:?}, the examples use resource.k8s.io/v1")
            }
            "ResourceClaim" => {
                self.claims.insert(name, v["spec"].clone());
            }
            "ResourceClaimTemplate" => {
                self.templates.insert(name, v["spec"]["spec"].clone());
            }
            "Pod" => self.pods.push(parse_pod(&v, name)?),
            other => bail!("{name}: unexpected kind {other:?}"),
        }
        Ok(())
    }

    /// Every claim the pods use, in first-use order.
    pub fn claim_uses(&self) -> Result<Vec<ClaimUse>> {
        let mut out: Vec<ClaimUse> = Vec::new();
        for pod in &self.pods {
            for pc in &pod.claims {
                let (object, spec) = match &pc.source {
                    ClaimSource::Claim(n) => (
                        n.clone(),
                        self.claims
                            .get(n)
                            .with_context(|| format!("pod {}: no ResourceClaim {n}", pod.name))?
                            .clone(),
                    ),
                    ClaimSource::Template(t) => (
                        format!("{}-{}", pod.name, pc.name),
                        self.templates
                            .get(t)
                            .with_context(|| {
                                format!("pod {}: no ResourceClaimTemplate {t}", pod.name)
                            })?
                            .clone(),
                    ),
                };
                match out.iter_mut().find(|u| u.object == object) {
                    Some(u) => u.pods.push(pod.name.clone()),
                    None => out.push(ClaimUse {
                        object,
                        spec,
                        pods: vec![pod.name.clone()],
                    }),
                }
            }
        }
        Ok(out)
    }
}

fn parse_pod(v: &Value, name: String) -> Result<PodDef> {
    let namespace = str_at(v, &["metadata", "namespace"])
        .unwrap_or("default")
        .to_owned();
    let spec = &v["spec"];
    let mut containers = Vec::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        let cname =
            str_at(c, &["name"]).with_context(|| format!("pod {name}: container without name"))?;
        let mut args = strings(c.get("command"));
        args.extend(strings(c.get("args")));
        let claims = c["resources"]["claims"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["name"].as_str().map(String::from))
            .collect();
        containers.push(ContainerDef {
            name: cname.to_owned(),
            args,
            claims,
        });
    }
    if containers.is_empty() {
        bail!("pod {name}: no containers");
    }
    let mut claims = Vec::new();
    for rc in spec["resourceClaims"].as_array().into_iter().flatten() {
        let cname = str_at(rc, &["name"]).context("resourceClaims entry without name")?;
        let source = if let Some(t) = str_at(rc, &["resourceClaimTemplateName"]) {
            ClaimSource::Template(t.to_owned())
        } else if let Some(c) = str_at(rc, &["resourceClaimName"]) {
            ClaimSource::Claim(c.to_owned())
        } else {
            bail!("pod {name}: resourceClaims[{cname}] names neither a claim nor a template");
        };
        claims.push(PodClaim {
            name: cname.to_owned(),
            source,
        });
    }
    for c in &containers {
        for cl in &c.claims {
            if !claims.iter().any(|p| &p.name == cl) {
                bail!(
                    "pod {name}: container {} uses claim {cl} not in spec.resourceClaims",
                    c.name
                );
            }
        }
    }
    Ok(PodDef {
        name,
        namespace,
        containers,
        claims,
    })
}

/// Every scenario directory under `root`, sorted by name.
pub fn load_all(root: &Path) -> Result<Vec<Scenario>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| Scenario::load(d)).collect()
}

/// DeviceClasses (name → CEL selectors) from a rendered manifest such as
/// `manifests/install.yaml`; other kinds are ignored.
pub fn device_classes(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if v["kind"] != "DeviceClass" {
            continue;
        }
        let name = str_at(&v, &["metadata", "name"])
            .context("DeviceClass without a name")?
            .to_owned();
        let sels = v["spec"]["selectors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["cel"]["expression"].as_str().map(String::from))
            .collect();
        out.insert(name, sels);
    }
    Ok(out)
}

/// One request of a claim spec (`spec.devices.requests[]`, `exactly` form).
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub class: String,
    pub selectors: Vec<String>,
    pub count: usize,
    /// `capacity.requests` (e.g. `cpus: "4"`).
    pub capacity: BTreeMap<String, String>,
}

pub fn requests(spec: &Value) -> Result<Vec<Request>> {
    let mut out = Vec::new();
    for r in spec["devices"]["requests"].as_array().into_iter().flatten() {
        let name = str_at(r, &["name"]).context("request without name")?;
        let ex = r
            .get("exactly")
            .with_context(|| format!("request {name}: only `exactly` requests are supported"))?;
        let class = str_at(ex, &["deviceClassName"])
            .with_context(|| format!("request {name}: no deviceClassName"))?;
        let selectors = ex["selectors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["cel"]["expression"].as_str().map(String::from))
            .collect();
        let count = ex["count"].as_u64().unwrap_or(1) as usize;
        let capacity = ex["capacity"]["requests"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Request {
            name: name.to_owned(),
            class: class.to_owned(),
            selectors,
            count,
            capacity,
        });
    }
    Ok(out)
}

/// `spec.devices.config[]` opaque entries: (driver, requests, parameters).
pub fn configs(spec: &Value) -> Vec<(String, Vec<String>, Value)> {
    spec["devices"]["config"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let o = c.get("opaque")?;
            Some((
                o["driver"].as_str()?.to_owned(),
                strings(c.get("requests")),
                o["parameters"].clone(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_loads_and_its_claims_resolve() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
        let all = load_all(&root).unwrap();
        assert!(all.len() >= 11, "{} scenarios", all.len());
        for s in &all {
            let uses = s.claim_uses().unwrap();
            for u in &uses {
                let reqs = requests(&u.spec).unwrap();
                assert!(!reqs.is_empty(), "{}: {} has no requests", s.name, u.object);
                for r in &reqs {
                    assert!(r.class.ends_with(".drakit.dev"), "{}: {}", s.name, r.class);
                }
                for (driver, _, params) in configs(&u.spec) {
                    assert!(driver.ends_with(".drakit.dev"));
                    assert_eq!(params["apiVersion"], "drakit.dev/v1alpha1", "{}", s.name);
                }
            }
            assert!(!s.summary.is_empty(), "{}: README summary", s.name);
        }
    }

    #[test]
    fn the_rendered_device_classes_select_by_driver() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/install.yaml");
        if !path.exists() {
            eprintln!("skipped: {} not rendered yet", path.display());
            return;
        }
        let classes = device_classes(&path).unwrap();
        for d in ["net.drakit.dev", "cpu.drakit.dev", "runtime.drakit.dev"] {
            assert!(classes.contains_key(d), "{d} in {classes:?}");
        }
    }

    #[test]
    fn template_claims_are_named_after_pod_and_claim() {
        let yaml = "apiVersion: resource.k8s.io/v1\nkind: ResourceClaimTemplate\nmetadata: {name: t}\nspec: {spec: {devices: {requests: [{name: r, exactly: {deviceClassName: cpu.drakit.dev, count: 2}}]}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: x, resources: {claims: [{name: a}]}}]\n  resourceClaims: [{name: a, resourceClaimTemplateName: t}]\n";
        let dir = std::env::temp_dir().join(format!("node-e2e-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.yaml"), yaml).unwrap();
        let s = Scenario::load(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let s = s.unwrap();
        let uses = s.claim_uses().unwrap();
        assert_eq!(uses[0].object, "p-a");
        assert_eq!(requests(&uses[0].spec).unwrap()[0].count, 2);
    }

    #[test]
    fn a_container_naming_an_unknown_claim_is_refused() {
        let v: Value = serde_yaml::from_str(
            "metadata: {name: p}\nspec: {containers: [{name: c, resources: {claims: [{name: x}]}}]}",
        )
        .unwrap();
        let e = parse_pod(&v, "p".into()).unwrap_err().to_string();
        assert!(e.contains("claim x"), "{e}");
    }
}
