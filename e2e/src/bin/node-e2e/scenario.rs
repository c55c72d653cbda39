//! One example scenario against a running [`Node`]: allocate its claims from the published
//! ResourceSlices (as the scheduler would), prepare them through the kubelet simulator, run its
//! pods and containers through the NRI runtime simulator, check what a user would check, tear
//! down and check that nothing is left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use drakit_e2e::apiserver::Resource;
use drakit_e2e::kubelet::ClaimRef;
use drakit_proto::nri::{LinuxNamespace, LinuxPodSandbox};
use nri::simulator::{self, default_spec};
use serde_json::{Value, json};

use crate::cel;
use crate::manifest::{self, Scenario};
use crate::node::{CPU, NET, Node, RUNTIME};
use crate::sys::{self, Netns, PodProcess};

/// What one scenario showed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub checks: Vec<String>,
    pub skipped: Vec<String>,
    /// Narration blocks (title, body) for the demo.
    pub story: Vec<(String, String)>,
}

impl Outcome {
    fn ok(&mut self, s: impl Into<String>) {
        self.checks.push(s.into());
    }
    fn tell(&mut self, title: impl Into<String>, body: impl Into<String>) {
        self.story.push((title.into(), body.into()));
    }
}

/// A claim of the scenario, allocated.
#[derive(Debug, Clone)]
struct Claim {
    object: String,
    namespace: String,
    uid: String,
    pods: Vec<String>,
    /// (request, driver, device, consumed cpus)
    results: Vec<(String, String, String, Option<u32>)>,
    /// driver → merged parameters given for it (the examples use one config per driver).
    configs: Vec<(String, Value)>,
    drivers: BTreeSet<String>,
    cdi_ids: Vec<String>,
}

impl Claim {
    fn cref(&self) -> ClaimRef {
        ClaimRef::new(&self.namespace, &self.object, &self.uid)
    }
    fn config_of_kind(&self, kind: &str) -> Option<&Value> {
        self.configs
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["kind"] == kind || (kind == "RoceConfig" && v["type"] == "combo"))
    }
    fn netdev(&self) -> Option<&Value> {
        self.configs
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["kind"] == "NetdevConfig" || v["kind"] == "RoceConfig")
            .map(|v| &v["netdev"])
    }
    /// The interface name this claim puts into the pod, if any.
    fn ifname(&self) -> Option<String> {
        if let Some(c) = self.config_of_kind("CniConfig") {
            return c["interfaceName"].as_str().map(String::from);
        }
        self.netdev()
            .and_then(|n| n["interfaceName"].as_str().map(String::from))
    }
    fn net_kind(&self) -> Option<String> {
        if self.config_of_kind("CniConfig").is_some() {
            return Some("cni".into());
        }
        if self.config_of_kind("RdmaConfig").is_some() {
            return Some("rdma".into());
        }
        if self.config_of_kind("RoceConfig").is_some() {
            return Some("roce".into());
        }
        self.netdev()
            .and_then(|n| n["kind"].as_str().map(String::from))
    }
    fn exclusive_cpus(&self) -> BTreeSet<u32> {
        self.results
            .iter()
            .filter(|r| r.1 == CPU && r.3.is_none())
            .filter_map(|r| r.2.strip_prefix("cpu").and_then(|n| n.parse().ok()))
            .collect()
    }
    fn grouped_cpus(&self) -> u32 {
        self.results.iter().filter_map(|r| r.3).sum()
    }
}

/// Parses a kernel cpu list (`0-3,8`).
pub fn cpulist(s: &str) -> Result<BTreeSet<u32>> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse()?, b.parse()?);
                if b < a || b - a > 65536 {
                    bail!("bad range {part}");
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse()?);
            }
        }
    }
    Ok(out)
}

/// Kernel cpulist form: `0-3,8`.
fn fmt_set(s: &BTreeSet<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut it = s.iter().copied().peekable();
    while let Some(a) = it.next() {
        let mut b = a;
        while it.peek() == Some(&(b + 1)) {
            b += 1;
            it.next();
        }
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    parts.join(",")
}

/// A device as the selectors see it, from a slice (bare attribute names belong to the driver).
fn cel_device(driver: &str, dev: &Value) -> cel::Device {
    let mut d = cel::Device {
        driver: driver.into(),
        ..Default::default()
    };
    if let Some(attrs) = dev["attributes"].as_object() {
        for (k, v) in attrs {
            let key = if k.contains('/') {
                k.clone()
            } else {
                format!("{driver}/{k}")
            };
            let val = ["string", "int", "bool", "version"]
                .iter()
                .find_map(|t| v.get(*t).cloned())
                .unwrap_or(Value::Null);
            d.attributes.insert(key, val);
        }
    }
    d
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_else(|_| v.to_string())
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The host-local IPAM store goes to the run's temp dir, not /var/lib/cni.
fn redirect_host_local(params: &mut Value, dir: &std::path::Path) -> bool {
    let mut changed = false;
    // get_mut, not IndexMut: indexing a missing key would insert a null field into the config.
    let plugins = params
        .get_mut("config")
        .and_then(|c| c.get_mut("plugins"))
        .and_then(Value::as_array_mut);
    for p in plugins.into_iter().flatten() {
        if let Some(ipam) = p.get_mut("ipam").and_then(Value::as_object_mut)
            && ipam.get("type").and_then(Value::as_str) == Some("host-local")
            && !ipam.contains_key("dataDir")
        {
            ipam.insert("dataDir".into(), json!(dir.display().to_string()));
            changed = true;
        }
    }
    changed
}

struct CdiEdits {
    env: Vec<String>,
    device_nodes: Vec<String>,
    hooks: Vec<Value>,
    net_devices: Vec<Value>,
    files: BTreeSet<String>,
}

/// Resolves fully qualified CDI device names against every spec file in the CDI dir.
fn resolve_cdi(dir: &std::path::Path, ids: &[String]) -> Result<CdiEdits> {
    let mut specs = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let text = std::fs::read_to_string(e.path())?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("CDI spec {} is not JSON", e.path().display()))?;
        specs.push((e.file_name().to_string_lossy().into_owned(), v));
    }
    let mut out = CdiEdits {
        env: Vec::new(),
        device_nodes: Vec::new(),
        hooks: Vec::new(),
        net_devices: Vec::new(),
        files: BTreeSet::new(),
    };
    for id in ids {
        let (kind, name) = id
            .split_once('=')
            .with_context(|| format!("CDI device id {id:?} is not <vendor/class>=<name>"))?;
        let found = specs.iter().find_map(|(f, s)| {
            if s["kind"] != kind {
                return None;
            }
            let d = s["devices"]
                .as_array()?
                .iter()
                .find(|d| d["name"] == name)?;
            Some((f, s, d))
        });
        let Some((file, spec, dev)) = found else {
            bail!("CDI device {id} is not in any spec under {}", dir.display());
        };
        out.files.insert(file.clone());
        for edits in [&spec["containerEdits"], &dev["containerEdits"]] {
            for e in edits["env"].as_array().into_iter().flatten() {
                if let Some(s) = e.as_str() {
                    out.env.push(s.into());
                }
            }
            for n in edits["deviceNodes"].as_array().into_iter().flatten() {
                if let Some(p) = n["path"].as_str() {
                    out.device_nodes.push(p.into());
                }
            }
            out.hooks
                .extend(edits["hooks"].as_array().into_iter().flatten().cloned());
            out.net_devices.extend(
                edits["netDevices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
    }
    Ok(out)
}

/// Pod-side view: (ifname → (mtu, addresses, alias)).
fn pod_links(ns: &str) -> Result<BTreeMap<String, (u64, Vec<String>)>> {
    let v = sys::ip_json(ns, &["addr", "show"])?;
    let mut out = BTreeMap::new();
    for l in v.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or_default().to_owned();
        let addrs = l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"] != "link")
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect();
        out.insert(name, (l["mtu"].as_u64().unwrap_or(0), addrs));
    }
    Ok(out)
}

/// Links drakit marked or named in a namespace (a leak once every claim is gone).
pub fn drakit_links(ns: &str) -> Result<Vec<String>> {
    let v = sys::ip_json(ns, &["-d", "link", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?.to_owned();
            let alias = l["ifalias"].as_str().unwrap_or_default();
            let temp = name.len() == 13
                && name.starts_with("dk")
                && (name.ends_with('p') || name.ends_with('h'));
            (alias.starts_with("drakit:") || temp).then(|| format!("{name} (alias {alias:?})"))
        })
        .collect())
}

fn is_drakit_env(e: &str) -> bool {
    e.to_ascii_uppercase().starts_with("DRAKIT_")
}

struct RunningPod {
    name: String,
    id: String,
    has_claims: bool,
    containers: Vec<String>,
    netns: Option<Netns>,
    procs: Vec<PodProcess>,
}

pub async fn run(
    node: &mut Node,
    sc: &Scenario,
    seq: usize,
    classes: &BTreeMap<String, Vec<String>>,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    let api = &node.harness.api;
    let node_name = node.profile.name;
    let uses = sc.claim_uses()?;
    out.tell(
        "what it asks for",
        format!(
            "{}\n(node {}: {})",
            sc.summary, node_name, node.profile.what
        ),
    );

    // ---- allocate, as the scheduler would, from what drakit published ----
    let mut taken: BTreeSet<(String, String)> = BTreeSet::new();
    let mut claims = Vec::new();
    let ipam_dir = node.root.join("cni-ipam");
    for (i, u) in uses.iter().enumerate() {
        let ns = "default".to_string();
        let uid = format!("e2e{seq:05x}-{i:04x}-4000-8000-{:012x}", std::process::id());
        let reqs = manifest::requests(&u.spec)?;
        let mut results = Vec::new();
        let mut asked = Vec::new();
        for r in &reqs {
            // The DeviceClass's selectors (from the rendered manifests), then the request's, over
            // every device published for this node, as the scheduler evaluates them.
            let class_sel = match classes.get(&r.class) {
                Some(sel) => sel.clone(),
                None => bail!(
                    "claim {}: request {}: no DeviceClass {:?} in manifests/install.yaml",
                    u.object,
                    r.name,
                    r.class
                ),
            };
            let driver = r.class.clone();
            let mut devs = Vec::new();
            for s in api.slices() {
                let s = serde_json::to_value(&s)?;
                if s["spec"]["nodeName"] != node_name {
                    continue;
                }
                let sdriver = s["spec"]["driver"].as_str().unwrap_or_default().to_owned();
                for d in s["spec"]["devices"].as_array().into_iter().flatten() {
                    let cd = cel_device(&sdriver, d);
                    let mut in_class = true;
                    for sel in &class_sel {
                        in_class &= cel::matches(sel, &cd)
                            .with_context(|| format!("DeviceClass {} selector {sel:?}", r.class))?;
                    }
                    if in_class {
                        devs.push((
                            sdriver.clone(),
                            s["spec"]["pool"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            d.clone(),
                        ));
                    }
                }
            }
            if devs.is_empty() {
                bail!(
                    "claim {}: request {}: no device of class {driver} published on {node_name}",
                    u.object,
                    r.name
                );
            }
            let mut picked = 0;
            for (ddriver, pool, d) in &devs {
                if picked == r.count {
                    break;
                }
                let driver = ddriver.clone();
                let name = d["name"].as_str().unwrap_or_default().to_owned();
                let shared = d["allowMultipleAllocations"] == true;
                if !shared && taken.contains(&(driver.clone(), name.clone())) {
                    continue;
                }
                let cd = cel_device(&driver, d);
                let mut ok = true;
                for sel in &r.selectors {
                    ok &= cel::matches(sel, &cd)
                        .with_context(|| format!("claim {}: selector {sel:?}", u.object))?;
                }
                if !ok {
                    continue;
                }
                if !r.capacity.is_empty() && !shared {
                    continue;
                }
                let consumed = r
                    .capacity
                    .get("cpus")
                    .map(|v| v.parse::<u32>())
                    .transpose()
                    .with_context(|| format!("claim {}: capacity cpus", u.object))?;
                taken.insert((driver.clone(), name.clone()));
                results.push((
                    r.name.clone(),
                    driver.clone(),
                    name.clone(),
                    consumed,
                    pool.clone(),
                    shared,
                ));
                picked += 1;
            }
            if picked < r.count && !r.capacity.is_empty() {
                bail!(
                    "claim {}: request {} asks for capacity {:?}, which needs a shared device (allowMultipleAllocations, DRAConsumableCapacity); none of the {} published devices of {driver} is one (kubelet plugin --shared-slots 0 publishes them)",
                    u.object,
                    r.name,
                    r.capacity,
                    devs.len()
                );
            }
            if picked < r.count {
                bail!(
                    "claim {}: request {} wants {} device(s) of {driver} matching {:?}; only {picked} of {} published fit",
                    u.object,
                    r.name,
                    r.count,
                    r.selectors,
                    devs.len()
                );
            }
            asked.push(format!(
                "request {}: {} × {}{}{}",
                r.name,
                r.count,
                r.class,
                if r.selectors.is_empty() {
                    String::new()
                } else {
                    format!(" where {}", r.selectors.join(" && "))
                },
                if r.capacity.is_empty() {
                    String::new()
                } else {
                    format!(" with capacity {:?}", r.capacity)
                }
            ));
        }
        let mut configs = Vec::new();
        let mut spec = u.spec.clone();
        let mut alloc_config = Vec::new();
        if let Some(cfgs) = spec["devices"]["config"].as_array_mut() {
            for c in cfgs.iter_mut() {
                if redirect_host_local(&mut c["opaque"]["parameters"], &ipam_dir) {
                    out.skipped.push(format!(
                        "note: claim {}: host-local IPAM dataDir set to {} (the run's temp dir, not /var/lib/cni)",
                        u.object,
                        ipam_dir.display()
                    ));
                }
            }
        }
        for (driver, requests, params) in manifest::configs(&spec) {
            asked.push(format!(
                "config for {driver}{}:\n{}",
                if requests.is_empty() {
                    String::new()
                } else {
                    format!(" (requests {})", requests.join(", "))
                },
                indent(&yaml(&params))
            ));
            alloc_config.push(json!({
                "source": "FromClaim",
                "requests": requests,
                "opaque": {"driver": driver, "parameters": params},
            }));
            configs.push((driver, params));
        }
        let pod_refs: Vec<Value> = u
            .pods
            .iter()
            .map(|p| json!({"resource": "pods", "name": p, "uid": pod_uid(seq, p)}))
            .collect();
        let result_json: Vec<Value> = results
            .iter()
            .map(|(req, driver, dev, consumed, pool, shared)| {
                let mut r = json!({"request": req, "driver": driver, "pool": pool, "device": dev});
                if *shared {
                    // The scheduler's share ID: unique per allocation of a shared device.
                    r["shareID"] = json!(format!(
                        "{seq:08x}-{i:04x}-4000-8000-{:012x}",
                        std::process::id()
                    ));
                    r["consumedCapacity"] = match consumed {
                        Some(c) => json!({"cpus": c.to_string()}),
                        None => json!({"slots": "1"}),
                    };
                }
                r
            })
            .collect();
        let obj = json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": u.object, "namespace": ns, "uid": uid},
            "spec": spec,
            "status": {
                "allocation": {
                    "devices": {"results": result_json, "config": alloc_config},
                    "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                        {"key": "metadata.name", "operator": "In", "values": [node_name]}]}]},
                },
                "reservedFor": pod_refs,
            }
        });
        api.insert_raw(obj)
            .with_context(|| format!("seeding claim {}", u.object))?;
        let drivers = results.iter().map(|r| r.1.clone()).collect();
        out.tell(
            format!(
                "claim {} (uid {uid}) for pod(s) {}",
                u.object,
                u.pods.join(", ")
            ),
            format!(
                "{}\nallocated: {}",
                asked.join("\n"),
                results
                    .iter()
                    .map(|r| match r.3 {
                        Some(c) => format!("{}/{} ({c} cpus)", r.1, r.2),
                        None => format!("{}/{}", r.1, r.2),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        claims.push(Claim {
            object: u.object.clone(),
            namespace: ns,
            uid,
            pods: u.pods.clone(),
            results: results
                .iter()
                .map(|r| (r.0.clone(), r.1.clone(), r.2.clone(), r.3))
                .collect(),
            configs,
            drivers,
            cdi_ids: Vec::new(),
        });
    }
    out.ok(format!(
        "{} claim(s) allocated from the published ResourceSlices",
        claims.len()
    ));

    let res = run_pods(node, sc, seq, &mut claims, &mut out).await;
    // Whatever happened, unprepare what is left and remove the claims.
    let mut leftovers = Vec::new();
    for c in &claims {
        for d in &c.drivers {
            match node.harness.kubelet.unprepare(d, &[c.cref()]).await {
                Ok(r) => {
                    if let Some(Err(e)) = r.get(&c.uid) {
                        leftovers.push(format!("unprepare {} on {d}: {e}", c.object));
                    }
                }
                Err(e) => leftovers.push(format!("unprepare {} on {d}: {e}", c.object)),
            }
        }
        api.remove(Resource::ResourceClaims, &c.namespace, &c.object);
    }
    res?;
    if !leftovers.is_empty() {
        bail!("{}", leftovers.join("; "));
    }

    // ---- nothing left behind ----
    for c in &claims {
        for f in std::fs::read_dir(&node.cdi_dir)?.flatten() {
            if f.file_name().to_string_lossy().contains(&c.uid) {
                bail!("CDI spec {} left after unprepare", f.path().display());
            }
        }
    }
    out.ok("no CDI spec left after unprepare");
    // CNI DEL ran: host-local holds no address for any claim any more.
    if claims
        .iter()
        .any(|c| c.config_of_kind("CniConfig").is_some())
    {
        let mut held = Vec::new();
        for net in std::fs::read_dir(&ipam_dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = f.file_name().to_string_lossy().into_owned();
                if n != "lock" && !n.starts_with("last_reserved_ip") {
                    held.push(n);
                }
            }
        }
        if !held.is_empty() {
            bail!("host-local still holds {held:?} after unprepare (CNI DEL missing)");
        }
        out.ok("CNI DEL ran: host-local holds no address after unprepare");
    }
    if let Some(ns) = node.ns_name() {
        let left = drakit_links(ns)?;
        if !left.is_empty() {
            bail!("links left on the node after teardown: {left:?}");
        }
        for (name, _) in node.profile.links {
            if sys::ip(&["-n", ns, "link", "show", name]).is_err() {
                bail!("the node's {name} is gone after teardown");
            }
        }
        out.ok("no drakit link left on the node, its own links all back");
    }
    node.check_daemons()?;
    Ok(out)
}

/// Not an example: a runtime-spec claim is prepared, the kubelet plugin is restarted with its CDI
/// dir wiped (tmpfs `/var/run/cdi` after a reboot), and the spec must be rebuilt from the
/// checkpoint before the plugin registers again; a repeated prepare answers the same CDI ids and
/// unprepare removes everything.
pub async fn restart_check(node: &mut Node, seq: usize) -> Result<Outcome> {
    let mut out = Outcome::default();
    let node_name = node.profile.name;
    let (ns, name) = ("default", "restart-check");
    let uid = format!("e2e{seq:05x}-0000-4000-8000-{:012x}", std::process::id());
    let device = node
        .harness
        .api
        .slices_for(node_name, RUNTIME)
        .iter()
        .find_map(|s| s.spec.devices.as_ref()?.first().map(|d| d.name.clone()))
        .context("no runtime.drakit.dev device published")?;
    let params = json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig",
        "spec": {"linux": {"resources": {"unified": {"pids.max": "64"}}}}});
    let claim = json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": RUNTIME}}],
                 "config": [{"requests": ["r"], "opaque": {"driver": RUNTIME, "parameters": params}}]}},
        "status": {"allocation": {"devices": {
            "results": [{"request": "r", "driver": RUNTIME, "pool": node_name, "device": device}],
            "config": [{"source": "FromClaim", "requests": ["r"], "opaque": {"driver": RUNTIME, "parameters": params}}]}},
            "reservedFor": [{"resource": "pods", "name": "restart-pod", "uid": pod_uid(seq, "restart-pod")}]},
    });
    node.harness.api.insert_raw(claim)?;
    let cref = ClaimRef::new(ns, name, &uid);
    let first = node
        .harness
        .kubelet
        .prepare(RUNTIME, std::slice::from_ref(&cref))
        .await?;
    let ids = match first.get(&uid) {
        Some(Ok(d)) => d
            .iter()
            .flat_map(|d| d.cdi_device_ids.clone())
            .collect::<Vec<_>>(),
        other => bail!("prepare before the restart: {other:?}"),
    };
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&node.cdi_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(&uid))
        .collect();
    let [file] = files.as_slice() else {
        bail!("expected one CDI spec for the claim, found {files:?}");
    };
    let before = std::fs::read(file)?;
    out.ok("runtime-spec claim prepared, CDI spec written");
    let old_seq = node
        .harness
        .kubelet
        .driver(RUNTIME)
        .map(|p| p.sequence)
        .unwrap_or_default();
    let cdi_dir = node.cdi_dir.clone();
    let clean = node.restart_daemon("drakit-kubelet-plugin", || {
        for e in std::fs::read_dir(&cdi_dir)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        Ok(())
    })?;
    if !clean {
        bail!("drakit-kubelet-plugin did not exit on SIGTERM within 10 s");
    }
    out.ok("drakit-kubelet-plugin stopped on SIGTERM; CDI dir wiped; started again");
    let kubelet = &node.harness.kubelet;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while kubelet
        .driver(RUNTIME)
        .map(|p| p.sequence)
        .unwrap_or_default()
        <= old_seq
    {
        if std::time::Instant::now() > deadline {
            bail!("{RUNTIME} did not register again after the restart");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = std::fs::read(file).with_context(|| {
        format!(
            "CDI spec {} not rebuilt from the checkpoint by the time the driver registered",
            file.display()
        )
    })?;
    if after != before {
        bail!("rebuilt CDI spec differs from the one written at prepare");
    }
    out.ok(
        "CDI spec rebuilt from the checkpoint, byte for byte, before the driver registered again",
    );
    let again = kubelet
        .prepare(RUNTIME, std::slice::from_ref(&cref))
        .await?;
    let ids2 = match again.get(&uid) {
        Some(Ok(d)) => d
            .iter()
            .flat_map(|d| d.cdi_device_ids.clone())
            .collect::<Vec<_>>(),
        other => bail!("prepare after the restart: {other:?}"),
    };
    if ids2 != ids {
        bail!("prepare after the restart answered {ids2:?}, before {ids:?}");
    }
    out.ok("repeated prepare after the restart answers the same CDI ids");
    match kubelet
        .unprepare(RUNTIME, std::slice::from_ref(&cref))
        .await?
        .get(&uid)
    {
        Some(Ok(())) => {}
        other => bail!("unprepare: {other:?}"),
    }
    node.harness.api.remove(Resource::ResourceClaims, ns, name);
    if file.exists() {
        bail!("CDI spec left after unprepare");
    }
    out.ok("unprepare removed the CDI spec");
    node.check_daemons()?;
    Ok(out)
}

/// Not an example: the container runtime restarts (every NRI connection dropped, pods and
/// containers kept); drakit-nri must reconnect and resynchronize, and a container created before
/// the restart must still follow the shared pool (UpdateContainers) when a CPU claim takes CPUs
/// and when it gives them back.
pub async fn nri_restart_check(node: &Node, seq: usize) -> Result<Outcome> {
    let mut out = Outcome::default();
    let node_name = node.profile.name;
    let rt = &node.rt;
    let api = &node.harness.api;
    let (pid, cid) = (format!("sb{seq}nri"), format!("sb{seq}nric0"));
    let mut p = simulator::pod(&pid, "nri-restart", "default");
    p.uid = pod_uid(seq, "nri-restart");
    let netns = if node.net {
        let ns = Netns::create(&format!("dke{}-{seq}-nri", node.run_id))?;
        p.linux = Some(LinuxPodSandbox {
            namespaces: vec![LinuxNamespace {
                r#type: "network".into(),
                path: ns.path().display().to_string(),
            }],
            ..Default::default()
        });
        Some(ns)
    } else {
        None
    };
    rt.run_pod_sandbox(p).await?;
    let late = if node.net {
        Some(LatePod::new(node, seq)?)
    } else {
        out.skipped.push(
            "skipped: late attach after Synchronize (drakit-netdev is not running: no network namespaces here)"
                .into(),
        );
        None
    };
    let res = async {
        rt.create_container(simulator::container(&cid, &pid, "app"), default_spec(&["sh"]))
            .await?;
        rt.start_container(&cid).await?;
        let pool = container_cpus(rt, &cid);
        if pool.is_empty() {
            bail!("the container got no shared cpuset");
        }
        out.ok(format!("container created before the restart is on the shared pool {}", fmt_set(&pool)));
        // A pod whose sandbox starts while drakit-nri is not connected: prepared, but its
        // RunPodSandbox never reaches the sidecar.
        if let Some(l) = &late {
            l.prepare(node, &mut out).await?;
        }
        rt.restart().await?;
        rt.wait_synced(2, Duration::from_secs(30))
            .await
            .context("drakit-nri did not reconnect and resynchronize after the runtime restart")?;
        out.ok("runtime restarted (connections dropped); drakit-nri reconnected and resynchronized");
        if let Some(l) = &late {
            l.expect_attached(&mut out).await?;
        }
        // A CPU claim now takes two CPUs of that pool.
        let devs: Vec<String> = api
            .slices_for(node_name, CPU)
            .iter()
            .flat_map(|s| s.spec.devices.clone().unwrap_or_default())
            .map(|d| d.name)
            .filter(|n| n.strip_prefix("cpu").and_then(|x| x.parse::<u32>().ok()).is_some_and(|x| pool.contains(&x)))
            .take(2)
            .collect();
        if devs.len() < 2 {
            bail!("fewer than 2 CPU devices published");
        }
        let taken: BTreeSet<u32> = devs.iter().filter_map(|n| n.strip_prefix("cpu")?.parse().ok()).collect();
        let uid = format!("e2e{seq:05x}-0001-4000-8000-{:012x}", std::process::id());
        let results: Vec<Value> = devs
            .iter()
            .map(|d| json!({"request": "r", "driver": CPU, "pool": node_name, "device": d}))
            .collect();
        api.insert_raw(json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "nri-restart-cpus", "namespace": "default", "uid": uid},
            "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": CPU, "count": 2}}]}},
            "status": {"allocation": {"devices": {"results": results}},
                       "reservedFor": [{"resource": "pods", "name": "other", "uid": pod_uid(seq, "other")}]},
        }))?;
        let cref = ClaimRef::new("default", "nri-restart-cpus", &uid);
        match node.harness.kubelet.prepare(CPU, std::slice::from_ref(&cref)).await?.get(&uid) {
            Some(Ok(_)) => {}
            other => bail!("prepare of the CPU claim: {other:?}"),
        }
        let shrunk = wait_cpus(rt, &cid, |g| !g.is_empty() && g.is_disjoint(&taken)).await?;
        out.ok(format!(
            "after the claim took {}, the pre-restart container was updated to {}",
            fmt_set(&taken),
            fmt_set(&shrunk)
        ));
        let unprep = node.harness.kubelet.unprepare(CPU, std::slice::from_ref(&cref)).await;
        api.remove(Resource::ResourceClaims, "default", "nri-restart-cpus");
        match unprep?.get(&uid) {
            Some(Ok(())) => {}
            other => bail!("unprepare of the CPU claim: {other:?}"),
        }
        let grown = wait_cpus(rt, &cid, |g| taken.is_subset(g)).await?;
        out.ok(format!("after unprepare it was updated back to {}", fmt_set(&grown)));
        Ok(())
    }
    .await;
    let _ = rt.stop_container(&cid).await;
    let _ = rt.remove_container(&cid).await;
    let stop = rt.stop_pod_sandbox(&pid).await;
    let _ = rt.remove_pod_sandbox(&pid).await;
    let late_end = match late {
        Some(l) => l.end(node).await,
        None => Ok(()),
    };
    drop(netns);
    res?;
    stop?;
    late_end?;
    Ok(out)
}

/// The pod of the late-attach check: a veth claim prepared for it, its sandbox put into the
/// runtime without a RunPodSandbox event (as if it started while drakit-nri was away).
struct LatePod {
    id: String,
    pod: drakit_proto::nri::PodSandbox,
    netns: Netns,
    claim: ClaimRef,
}

impl LatePod {
    const IFNAME: &'static str = "late0";
    const ADDR: &'static str = "10.99.7.2/24";

    fn new(node: &Node, seq: usize) -> Result<Self> {
        let id = format!("sb{seq}late");
        let mut pod = simulator::pod(&id, "nri-late", "default");
        pod.uid = pod_uid(seq, "nri-late");
        let netns = Netns::create(&format!("dke{}-{seq}-late", node.run_id))?;
        pod.linux = Some(LinuxPodSandbox {
            namespaces: vec![LinuxNamespace {
                r#type: "network".into(),
                path: netns.path().display().to_string(),
            }],
            ..Default::default()
        });
        let uid = format!("e2e{seq:05x}-0002-4000-8000-{:012x}", std::process::id());
        Ok(Self {
            id,
            pod,
            netns,
            claim: ClaimRef::new("default", "nri-late-net", &uid),
        })
    }

    async fn prepare(&self, node: &Node, out: &mut Outcome) -> Result<()> {
        let api = &node.harness.api;
        let dev = api
            .slices_for(node.profile.name, NET)
            .iter()
            .flat_map(|s| s.spec.devices.clone().unwrap_or_default())
            .find(|d| d.name.starts_with("netdev-virtual"))
            .context("no netdev-virtual device published")?;
        let mut result =
            json!({"request": "r", "driver": NET, "pool": node.profile.name, "device": dev.name});
        if dev.allow_multiple_allocations == Some(true) {
            result["shareID"] = json!(format!(
                "{}-0000-4000-8000-000000000001",
                &self.claim.uid[..8]
            ));
            result["consumedCapacity"] = json!({"slots": "1"});
        }
        let params = json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig",
            "netdev": {"kind": "veth", "interfaceName": Self::IFNAME, "addresses": [Self::ADDR]}});
        let config = json!([{"source": "FromClaim", "requests": ["r"], "opaque": {"driver": NET, "parameters": params}}]);
        api.insert_raw(json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": self.claim.name, "namespace": "default", "uid": self.claim.uid},
            "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": NET}}]}},
            "status": {"allocation": {"devices": {"results": [result], "config": config}},
                       "reservedFor": [{"resource": "pods", "name": "nri-late", "uid": self.pod.uid}]},
        }))?;
        match node
            .harness
            .kubelet
            .prepare(NET, std::slice::from_ref(&self.claim))
            .await?
            .get(&self.claim.uid)
        {
            Some(Ok(_)) => {}
            other => bail!("prepare of the late pod's veth claim: {other:?}"),
        }
        node.rt.add_pod(self.pod.clone());
        if pod_links(&self.netns.name)?.contains_key(Self::IFNAME) {
            bail!("{} is in the late pod before any attach", Self::IFNAME);
        }
        out.ok(format!(
            "pod nri-late (veth claim prepared) started without drakit-nri seeing its RunPodSandbox; {} has no {}",
            self.netns.name,
            Self::IFNAME
        ));
        Ok(())
    }

    async fn expect_attached(&self, out: &mut Outcome) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let links = pod_links(&self.netns.name)?;
            if let Some((_, addrs)) = links.get(Self::IFNAME)
                && addrs.iter().any(|a| a == Self::ADDR)
            {
                out.ok(format!(
                    "after the Synchronize drakit-nri attached it late: {} in the pod with {}",
                    Self::IFNAME,
                    Self::ADDR
                ));
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the pod that started while drakit-nri was away never got {} (its links: {:?})",
                    Self::IFNAME,
                    links.keys().collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops and removes the pod (DetachPod through drakit-nri), unprepares the claim; the
    /// pod's namespace must be empty of drakit links.
    async fn end(self, node: &Node) -> Result<()> {
        let stop = node.rt.stop_pod_sandbox(&self.id).await;
        let _ = node.rt.remove_pod_sandbox(&self.id).await;
        let unprep = node
            .harness
            .kubelet
            .unprepare(NET, std::slice::from_ref(&self.claim))
            .await;
        node.harness
            .api
            .remove(Resource::ResourceClaims, "default", &self.claim.name);
        stop?;
        match unprep?.get(&self.claim.uid) {
            Some(Ok(())) => {}
            other => bail!("unprepare of the late pod's veth claim: {other:?}"),
        }
        let left = drakit_links(&self.netns.name)?;
        if !left.is_empty() {
            bail!("links left in the late pod's namespace: {left:?}");
        }
        Ok(())
    }
}

fn container_cpus(rt: &nri::simulator::Runtime, id: &str) -> BTreeSet<u32> {
    rt.container(id)
        .and_then(|c| {
            c.spec["linux"]["resources"]["cpu"]["cpus"]
                .as_str()
                .map(String::from)
        })
        .and_then(|s| cpulist(&s).ok())
        .unwrap_or_default()
}

/// Waits (10 s) until the container's cpuset satisfies `want`.
async fn wait_cpus(
    rt: &nri::simulator::Runtime,
    id: &str,
    want: impl Fn(&BTreeSet<u32>) -> bool,
) -> Result<BTreeSet<u32>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = container_cpus(rt, id);
        if want(&got) {
            return Ok(got);
        }
        if std::time::Instant::now() > deadline {
            bail!("container {id} stayed on {}", fmt_set(&got));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pod_uid(seq: usize, pod: &str) -> String {
    let mut h: u64 = 1469598103934665603;
    for b in pod.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(1099511628211);
    }
    format!(
        "{seq:08x}-{:04x}-4000-8000-{:012x}",
        h & 0xffff,
        h >> 16 & 0xffff_ffff_ffff
    )
}

async fn run_pods(
    node: &Node,
    sc: &Scenario,
    seq: usize,
    claims: &mut [Claim],
    out: &mut Outcome,
) -> Result<()> {
    let api = &node.harness.api;
    // ---- prepare, per driver, as the kubelet does for a pod ----
    for c in claims.iter_mut() {
        for d in c.drivers.clone() {
            let r = node
                .harness
                .kubelet
                .prepare(&d, &[c.cref()])
                .await
                .with_context(|| format!("NodePrepareResources {d} for {}", c.object))?;
            match r.get(&c.uid) {
                Some(Ok(devs)) => {
                    for pd in devs {
                        c.cdi_ids.extend(pd.cdi_device_ids.iter().cloned());
                    }
                }
                Some(Err(e)) => bail!("prepare of claim {} by {d} failed: {e}", c.object),
                None => bail!("prepare of claim {} by {d}: no answer", c.object),
            }
        }
    }
    out.ok("every claim prepared by the kubelet plugin (NodePrepareResources over gRPC)");

    // ---- CDI specs ----
    for c in claims.iter() {
        let e = resolve_cdi(&node.cdi_dir, &c.cdi_ids)?;
        let mut excerpt = Vec::new();
        for f in &e.files {
            excerpt.push(format!("file {f}"));
        }
        let mut seen = BTreeSet::new();
        for v in e.env.iter().filter(|v| seen.insert(v.as_str())) {
            let (k, val) = v.split_once('=').unwrap_or((v, ""));
            let val = if val.chars().count() > 110 {
                format!("{}…", val.chars().take(110).collect::<String>())
            } else {
                val.to_string()
            };
            excerpt.push(format!("env {k}={val}"));
        }
        for n in &e.device_nodes {
            excerpt.push(format!("deviceNode {n}"));
        }
        for h in &e.hooks {
            excerpt.push(format!(
                "hook {} {}",
                h["hookName"].as_str().unwrap_or("?"),
                h["args"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            ));
        }
        for n in &e.net_devices {
            excerpt.push(format!("netDevice {n}"));
        }
        if excerpt.is_empty() {
            excerpt.push(
                "(none: nothing to inject into the container; the interface is attached to the \
                 pod at RunPodSandbox through NRI)"
                    .into(),
            );
        }
        out.tell(format!("CDI spec of {}", c.object), excerpt.join("\n"));
        if e.files.iter().any(|f| !f.contains(&c.uid)) {
            bail!(
                "claim {}: CDI spec files {:?} are not per-claim",
                c.object,
                e.files
            );
        }
        if c.drivers.contains(RUNTIME)
            && !e.env.iter().any(|v| v.starts_with("DRAKIT_RUNTIME_SPEC_"))
        {
            bail!(
                "claim {}: CDI spec lacks DRAKIT_RUNTIME_SPEC_*: {:?}",
                c.object,
                e.env
            );
        }
        if c.drivers.contains(CPU) {
            let Some(v) = e.env.iter().find(|v| v.starts_with("DRAKIT_CPUS_")) else {
                bail!(
                    "claim {}: CDI spec lacks DRAKIT_CPUS_*: {:?}",
                    c.object,
                    e.env
                );
            };
            let cpus = cpulist(v.split_once('=').map(|x| x.1).unwrap_or(""))?;
            let want = c.exclusive_cpus();
            if !want.is_empty() && cpus != want {
                bail!(
                    "claim {}: CDI env names cpus {} but {} were allocated",
                    c.object,
                    fmt_set(&cpus),
                    fmt_set(&want)
                );
            }
            if want.is_empty() && cpus.len() != c.grouped_cpus() as usize {
                bail!(
                    "claim {}: CDI env names cpus {}, {} were asked for",
                    c.object,
                    fmt_set(&cpus),
                    c.grouped_cpus()
                );
            }
        }
        if let Some(k) = c.net_kind()
            && (k == "rdma" || k == "roce")
        {
            if !e
                .device_nodes
                .iter()
                .any(|n| n.starts_with("/dev/infiniband/uverbs"))
            {
                bail!(
                    "claim {}: no uverbs device node in the CDI spec: {:?}",
                    c.object,
                    e.device_nodes
                );
            }
            let cm = c
                .config_of_kind(if k == "rdma" {
                    "RdmaConfig"
                } else {
                    "RoceConfig"
                })
                .map(|v| v["rdma"]["rdmaCm"] != false)
                .unwrap_or(true);
            if cm != e.device_nodes.iter().any(|n| n.ends_with("/rdma_cm")) {
                bail!(
                    "claim {}: rdma_cm device node {} expected: {:?}",
                    c.object,
                    if cm { "" } else { "not" },
                    e.device_nodes
                );
            }
        }
        let hook_mode = c
            .config_of_kind("CniConfig")
            .is_some_and(|v| v["attachMode"] == "hook")
            || c.netdev().is_some_and(|n| n["attachMode"] == "hook");
        if hook_mode && !e.hooks.iter().any(|h| h["hookName"] == "createRuntime") {
            bail!(
                "claim {}: hook attach mode but no createRuntime hook in the CDI spec",
                c.object
            );
        }
    }
    out.ok(
        "CDI specs: one file per claim, with the env vars / device nodes / hooks each claim needs",
    );

    // ---- ResourceClaim status ----
    for c in claims.iter() {
        let Some(ifname) = c.ifname() else { continue };
        let want_ips: Vec<String> = c
            .netdev()
            .and_then(|n| n["addresses"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let (ns, name) = (c.namespace.clone(), c.object.clone());
        let status = api
            .wait_for(
                &format!("networkData of {name}"),
                Duration::from_secs(10),
                |a| {
                    let cl = serde_json::to_value(a.claim(&ns, &name)?).ok()?;
                    let d = cl["status"]["devices"]
                        .as_array()?
                        .iter()
                        .find(|d| d["networkData"]["interfaceName"] == ifname.as_str())?
                        .clone();
                    Some(d)
                },
            )
            .await
            .with_context(|| {
                format!(
                    "claim {}: status.devices[].networkData.interfaceName {ifname}",
                    c.object
                )
            })?;
        let ips: Vec<String> = status["networkData"]["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        for w in &want_ips {
            if !ips.contains(w) {
                bail!("claim {}: networkData.ips {ips:?} lacks {w}", c.object);
            }
        }
        out.tell(
            format!("ResourceClaim {} status.devices", c.object),
            yaml(&status).trim_end().to_string(),
        );
        out.ok(format!(
            "claim {}: status.devices[].networkData names {ifname} {ips:?}",
            c.object
        ));
    }

    // ---- pods through the NRI runtime simulator ----
    let mut pods: Vec<RunningPod> = Vec::new();
    let r = start_pods(node, sc, seq, claims, out, &mut pods).await;
    let stop = stop_pods(node, claims, out, &mut pods).await;
    r?;
    stop
}

async fn start_pods(
    node: &Node,
    sc: &Scenario,
    seq: usize,
    claims: &[Claim],
    out: &mut Outcome,
    pods: &mut Vec<RunningPod>,
) -> Result<()> {
    let mut exclusive_all: BTreeSet<u32> = BTreeSet::new();
    for c in claims {
        exclusive_all.extend(c.exclusive_cpus());
    }
    for (pi, pd) in sc.pods.iter().enumerate() {
        let pod_claims: Vec<&Claim> = claims
            .iter()
            .filter(|c| c.pods.contains(&pd.name))
            .collect();
        let claim_of = |pod_claim: &str| -> Option<&Claim> {
            let pc = pd.claims.iter().find(|p| p.name == pod_claim)?;
            let object = match &pc.source {
                manifest::ClaimSource::Claim(n) => n.clone(),
                manifest::ClaimSource::Template(_) => format!("{}-{}", pd.name, pc.name),
            };
            claims.iter().find(|c| c.object == object)
        };
        let net_claims: Vec<&&Claim> = pod_claims
            .iter()
            .filter(|c| c.drivers.contains(NET))
            .collect();
        // Which in-pod network parts can run on this machine?
        let mut blocked = Vec::new();
        for c in &net_claims {
            let kind = c.net_kind().unwrap_or_default();
            if node.missing_kinds.contains(&kind) {
                blocked.push(format!(
                    "claim {}: this kernel cannot create {kind} links (module missing)",
                    c.object
                ));
            }
            if kind == "sriov-vf" {
                blocked.push(format!(
                    "claim {}: VF settings and the VF move need a real SR-IOV PF",
                    c.object
                ));
            }
        }
        if !blocked.is_empty() {
            for b in &blocked {
                out.skipped.push(format!(
                    "skipped: pod {} sandbox + containers: {b}",
                    pd.name
                ));
            }
            continue;
        }
        let id = format!("sb{seq}x{pi}");
        let uid = pod_uid(seq, &pd.name);
        let mut p = simulator::pod(&id, &pd.name, &pd.namespace);
        p.uid = uid.clone();
        let netns = if node.net {
            let ns = Netns::create(&format!("dke{}-{seq}-{pi}", node.run_id))?;
            p.linux = Some(LinuxPodSandbox {
                namespaces: vec![LinuxNamespace {
                    r#type: "network".into(),
                    path: ns.path().display().to_string(),
                }],
                ..Default::default()
            });
            Some(ns)
        } else {
            None
        };
        let rp = RunningPod {
            name: pd.name.clone(),
            id: id.clone(),
            has_claims: !pod_claims.is_empty(),
            containers: Vec::new(),
            netns,
            procs: Vec::new(),
        };
        let run = node.rt.run_pod_sandbox(p).await;
        pods.push(rp);
        run.with_context(|| format!("RunPodSandbox {} (drakit-nri → AttachPod)", pd.name))?;
        let rp = pods.last_mut().context("pod")?;

        for (ci, cd) in pd.containers.iter().enumerate() {
            let my_claims: Vec<&Claim> = cd.claims.iter().filter_map(|n| claim_of(n)).collect();
            let mut ids = Vec::new();
            for c in &my_claims {
                ids.extend(c.cdi_ids.iter().cloned());
            }
            let edits = resolve_cdi(&node.cdi_dir, &ids)?;
            let cid = format!("{id}c{ci}");
            let mut ctr = simulator::container(&cid, &id, &cd.name);
            let mut env = vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ];
            env.extend(edits.env.iter().cloned());
            ctr.env = env.clone();
            let args: Vec<&str> = cd.args.iter().map(String::as_str).collect();
            let mut spec = default_spec(if args.is_empty() { &["sh"] } else { &args });
            spec["process"]["env"] = json!(env);
            if !edits.device_nodes.is_empty() {
                spec["linux"]["devices"] = json!(
                    edits
                        .device_nodes
                        .iter()
                        .map(|p| json!({"path": p, "type": "c"}))
                        .collect::<Vec<_>>()
                );
            }
            let hooks: Vec<Value> = edits
                .hooks
                .iter()
                .filter(|h| h["hookName"] == "createRuntime")
                .cloned()
                .collect();
            let created = node
                .rt
                .create_container(ctr, spec)
                .await
                .with_context(|| format!("CreateContainer {}/{}", pd.name, cd.name))?;
            rp.containers.push(cid.clone());
            // runc create runs the createRuntime hooks (from CDI) with the container's state.
            for h in &hooks {
                let ns = rp.netns.as_ref().context("hook attach needs a pod netns")?;
                let proc_ = PodProcess::start(&ns.name)?;
                let state = json!({
                    "ociVersion": "1.2.0", "id": cid, "status": "creating", "pid": proc_.pid(),
                    "bundle": node.root.join("bundles").join(&cid).display().to_string(),
                    "annotations": {"io.kubernetes.cri.sandbox-uid": uid, "io.kubernetes.cri.sandbox-id": id},
                });
                rp.procs.push(proc_);
                run_hook(h, &state)
                    .with_context(|| format!("createRuntime hook of {}/{}", pd.name, cd.name))?;
                out.ok(format!(
                    "createRuntime hook (drakit-oci-hook) ran for {}/{}",
                    pd.name, cd.name
                ));
            }
            node.rt.start_container(&cid).await?;
            let spec = &created.spec;
            // -- runtime-spec edits --
            let env_final: Vec<String> = spec["process"]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            if let Some(e) = env_final.iter().find(|e| is_drakit_env(e)) {
                bail!(
                    "{}/{}: transport env {e} left in the final spec",
                    pd.name,
                    cd.name
                );
            }
            let mut shown = Vec::new();
            for c in &my_claims {
                if let Some(cfg) = c.config_of_kind("RuntimeSpecEditConfig") {
                    for (k, v) in cfg["spec"]["linux"]["resources"]["unified"]
                        .as_object()
                        .into_iter()
                        .flatten()
                    {
                        let got = &spec["linux"]["resources"]["unified"][k];
                        if got != v {
                            bail!(
                                "{}/{}: unified[{k}] is {got}, the claim asked for {v}",
                                pd.name,
                                cd.name
                            );
                        }
                        shown.push(format!("unified {k} = {}", v.as_str().unwrap_or_default()));
                    }
                    out.ok(format!("{}/{}: linux.resources.unified carries the claim's keys; no DRAKIT_* env left", pd.name, cd.name));
                }
            }
            // -- cpusets --
            let cpus_s = spec["linux"]["resources"]["cpu"]["cpus"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mems_s = spec["linux"]["resources"]["cpu"]["mems"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let cpus = cpulist(&cpus_s)?;
            let cpu_claims: Vec<&&Claim> = my_claims
                .iter()
                .filter(|c| c.drivers.contains(CPU))
                .collect();
            if !cpu_claims.is_empty() {
                let mut want = BTreeSet::new();
                let mut grouped = 0;
                for c in &cpu_claims {
                    want.extend(c.exclusive_cpus());
                    grouped += c.grouped_cpus();
                }
                if grouped == 0 {
                    if cpus != want {
                        bail!(
                            "{}/{}: cpuset.cpus {cpus_s:?}, allocated {}",
                            pd.name,
                            cd.name,
                            fmt_set(&want)
                        );
                    }
                } else if cpus.len() != grouped as usize
                    || mems_s.contains(',')
                    || mems_s.contains('-')
                    || mems_s.is_empty()
                {
                    bail!(
                        "{}/{}: cpuset.cpus {cpus_s:?} / mems {mems_s:?}: want {grouped} CPUs on one NUMA node",
                        pd.name,
                        cd.name
                    );
                }
                exclusive_all.extend(cpus.iter().copied());
                out.ok(format!(
                    "{}/{}: exclusive cpuset.cpus {cpus_s} (mems {mems_s})",
                    pd.name, cd.name
                ));
            } else if !cpus.is_empty() || sc.name.starts_with("cpu-") {
                if cpus.is_empty() {
                    bail!("{}/{}: no shared cpuset applied", pd.name, cd.name);
                }
                if let Some(x) = cpus.intersection(&exclusive_all).next() {
                    bail!(
                        "{}/{}: shared cpuset {cpus_s} contains exclusive CPU {x}",
                        pd.name,
                        cd.name
                    );
                }
                out.ok(format!(
                    "{}/{}: shared pool cpuset.cpus {cpus_s}, disjoint from exclusive CPUs",
                    pd.name, cd.name
                ));
            }
            shown.push(format!(
                "cpuset.cpus = {cpus_s:?}, cpuset.mems = {mems_s:?}"
            ));
            if !edits.device_nodes.is_empty() {
                shown.push(format!(
                    "linux.devices (from CDI) = {:?}",
                    edits.device_nodes
                ));
            }
            out.tell(
                format!("final OCI spec of container {}/{}", pd.name, cd.name),
                shown.join("\n"),
            );
        }

        // -- interfaces inside the pod --
        if let Some(ns) = &pods
            .last()
            .and_then(|p| p.netns.as_ref())
            .map(|n| n.name.clone())
        {
            let links = pod_links(ns)?;
            for c in &net_claims {
                let Some(ifname) = c.ifname() else { continue };
                let Some((mtu, addrs)) = links.get(&ifname) else {
                    bail!(
                        "claim {}: {ifname} is not in the pod netns (links: {:?})",
                        c.object,
                        links.keys().collect::<Vec<_>>()
                    );
                };
                let mut details = vec![format!("mtu {mtu}")];
                // The link is of the kind the claim asked for (a CNI claim: its first plugin's).
                let want_kind = match c.net_kind().as_deref() {
                    Some("cni") => c
                        .config_of_kind("CniConfig")
                        .and_then(|v| v["config"]["plugins"][0]["type"].as_str().map(String::from)),
                    Some(k @ ("macvlan" | "ipvlan" | "veth" | "dummy")) => Some(k.to_string()),
                    _ => None,
                };
                if let Some(k) = want_kind {
                    let l = sys::ip_json(ns, &["-d", "link", "show", "dev", &ifname])?;
                    let got = l[0]["linkinfo"]["info_kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if got != k {
                        bail!(
                            "claim {}: {ifname} is a {got:?} link, the claim asked for {k}",
                            c.object
                        );
                    }
                    details.push(format!("kind {got}"));
                }
                if c.config_of_kind("CniConfig").is_some() {
                    let subnet = c
                        .config_of_kind("CniConfig")
                        .and_then(|v| {
                            v["config"]["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]
                                .as_str()
                                .map(String::from)
                        })
                        .unwrap_or_default();
                    let prefix = subnet
                        .rsplit_once('.')
                        .map(|x| x.0.to_string())
                        .unwrap_or_default();
                    if !addrs.iter().any(|a| a.starts_with(&prefix)) {
                        bail!(
                            "claim {}: {ifname} has {addrs:?}, nothing from {subnet}",
                            c.object
                        );
                    }
                } else if let Some(nd) = c.netdev() {
                    for a in nd["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str())
                    {
                        if !addrs.iter().any(|x| x == a) {
                            bail!("claim {}: {ifname} has {addrs:?}, not {a}", c.object);
                        }
                    }
                    if let Some(m) = nd["mtu"].as_u64()
                        && *mtu != m
                    {
                        bail!("claim {}: {ifname} mtu {mtu}, want {m}", c.object);
                    }
                    for r in nd["routes"].as_array().into_iter().flatten() {
                        let dst = r["dst"].as_str().unwrap_or_default();
                        let routes = sys::ip(&["-n", ns, "route", "show", dst])?;
                        if routes.trim().is_empty() {
                            bail!("claim {}: no route to {dst} in the pod", c.object);
                        }
                        details.push(format!("route {}", routes.trim()));
                    }
                    if let Some(master) = nd["master"].as_str() {
                        let host_ns = node.ns_name().context("node netns")?;
                        let enslaved = sys::ip_json(host_ns, &["link", "show", "master", master])?;
                        let n = enslaved.as_array().map(Vec::len).unwrap_or(0);
                        if n == 0 {
                            bail!("claim {}: no host end enslaved to {master}", c.object);
                        }
                        out.ok(format!(
                            "claim {}: the veth host end is enslaved to {master} on the node",
                            c.object
                        ));
                    }
                }
                out.ok(format!(
                    "claim {}: {ifname} inside the pod netns with {addrs:?}, {}",
                    c.object,
                    details.join(", ")
                ));
            }
            if !net_claims.is_empty() {
                let brief = sys::ip(&["-n", ns, "-brief", "addr"])?;
                out.tell(
                    format!("ip -brief addr inside pod {}", pd.name),
                    brief.trim_end().to_string(),
                );
            }
        }
    }
    Ok(())
}

fn run_hook(h: &Value, state: &Value) -> Result<()> {
    use std::io::Write;
    let path = h["path"].as_str().context("hook without path")?;
    let args: Vec<String> = h["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let mut cmd = std::process::Command::new(path);
    cmd.args(args.iter().skip(1));
    cmd.env_clear();
    for e in h["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running hook {path}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(state.to_string().as_bytes())?;
    }
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "hook {path} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

async fn stop_pods(
    node: &Node,
    claims: &[Claim],
    out: &mut Outcome,
    pods: &mut Vec<RunningPod>,
) -> Result<()> {
    let mut errs = Vec::new();
    // Pods with claims first; then, if exclusive CPUs were freed, the shared containers that are
    // still running must be moved onto the grown pool.
    pods.sort_by_key(|p| !p.has_claims);
    let freed: BTreeSet<u32> = claims.iter().flat_map(|c| c.exclusive_cpus()).collect();
    let mut unprepared_cpu = false;
    let had_netns = pods.iter().any(|p| p.netns.is_some());
    while let Some(p) = (!pods.is_empty()).then(|| pods.remove(0)) {
        if !p.has_claims && !unprepared_cpu && !freed.is_empty() {
            // The claimed pods are gone: unprepare their CPU claims now (the kubelet would).
            for c in claims.iter().filter(|c| c.drivers.contains(CPU)) {
                if let Err(e) = node.harness.kubelet.unprepare(CPU, &[c.cref()]).await {
                    errs.push(format!("unprepare {}: {e}", c.object));
                }
            }
            unprepared_cpu = true;
            for cid in &p.containers {
                let grown = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        let cpus = node
                            .rt
                            .container(cid)
                            .and_then(|c| {
                                c.spec["linux"]["resources"]["cpu"]["cpus"]
                                    .as_str()
                                    .map(String::from)
                            })
                            .unwrap_or_default();
                        if let Ok(set) = cpulist(&cpus)
                            && freed.is_subset(&set)
                        {
                            return cpus;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                match grown {
                    Ok(cpus) => out.ok(format!(
                        "after unprepare, running shared container {}/{cid} was updated to {cpus} (UpdateContainers), freed CPUs {} included",
                        p.name,
                        fmt_set(&freed)
                    )),
                    Err(_) => errs.push(format!(
                        "shared container {cid} of {} was not updated to include the freed CPUs {}",
                        p.name,
                        fmt_set(&freed)
                    )),
                }
            }
        }
        for cid in &p.containers {
            if let Err(e) = node.rt.stop_container(cid).await {
                errs.push(format!("StopContainer {cid}: {e}"));
            }
            if let Err(e) = node.rt.remove_container(cid).await {
                errs.push(format!("RemoveContainer {cid}: {e}"));
            }
        }
        if let Err(e) = node.rt.stop_pod_sandbox(&p.id).await {
            errs.push(format!("StopPodSandbox {}: {e}", p.name));
        }
        if let Err(e) = node.rt.remove_pod_sandbox(&p.id).await {
            errs.push(format!("RemovePodSandbox {}: {e}", p.name));
        }
        if let Some(ns) = &p.netns {
            let left = pod_links(&ns.name)
                .map(|l| l.into_keys().filter(|n| n != "lo").collect::<Vec<_>>());
            match left {
                Ok(l) if !l.is_empty() => errs.push(format!(
                    "pod {}: links left in its netns after StopPodSandbox: {l:?}",
                    p.name
                )),
                Err(e) => errs.push(e.to_string()),
                _ => {}
            }
        }
        drop(p);
    }
    if errs.is_empty() {
        out.ok(if had_netns {
            "containers and sandboxes stopped and removed; every pod netns holds nothing but lo (DetachPod)"
        } else {
            "containers and sandboxes stopped and removed"
        });
        Ok(())
    } else {
        bail!("{}", errs.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists() {
        assert_eq!(fmt_set(&cpulist("0-2,8,10,11").unwrap()), "0-2,8,10-11");
        assert_eq!(fmt_set(&cpulist("5").unwrap()), "5");
        assert!(cpulist("").unwrap().is_empty());
        assert!(cpulist("3-1").is_err());
        assert!(cpulist("x").is_err());
    }

    #[test]
    fn host_local_is_redirected_once() {
        let mut plain = json!({"kind": "NetdevConfig", "netdev": {"kind": "dummy"}});
        assert!(!redirect_host_local(
            &mut plain,
            std::path::Path::new("/tmp/x")
        ));
        assert_eq!(
            plain,
            json!({"kind": "NetdevConfig", "netdev": {"kind": "dummy"}})
        );
        let mut v =
            json!({"config": {"plugins": [{"type": "macvlan", "ipam": {"type": "host-local"}}]}});
        assert!(redirect_host_local(&mut v, std::path::Path::new("/tmp/x")));
        assert_eq!(v["config"]["plugins"][0]["ipam"]["dataDir"], "/tmp/x");
        assert!(!redirect_host_local(&mut v, std::path::Path::new("/tmp/y")));
    }

    #[test]
    fn slice_attributes_are_qualified_for_cel() {
        let d = json!({"name": "cpu3", "attributes": {"coreType": {"string": "E-core"}, "resource.kubernetes.io/numaNode": {"int": 0}}});
        let c = cel_device("cpu.drakit.dev", &d);
        assert_eq!(c.attributes["cpu.drakit.dev/coreType"], "E-core");
        assert_eq!(c.attributes["resource.kubernetes.io/numaNode"], 0);
    }
}
