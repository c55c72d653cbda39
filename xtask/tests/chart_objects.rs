//! Every object the chart renders decodes into its k8s-openapi type without losing a field, and
//! the per-driver toggles decide which DeviceClasses and containers exist.
//!
//! `manifests/install.yaml` (checked in, default values) is always checked. The toggle
//! combinations are rendered by `cargo xtask ci` into `target/chart-renders/` before the tests run
//! (helm is not a test dependency); run `cargo xtask ci` or the chart step to produce them.

use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::DeviceClass;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn same<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value, what: &str) {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    let mut orig = v.clone();
    strip_nulls(&mut orig);
    assert_eq!(orig, back, "{what}: a field was lost decoding it");
}

fn check_objects(path: &Path) -> Vec<Value> {
    let all = docs(path);
    for v in &all {
        let what = format!(
            "{}: {} {}",
            path.display(),
            v["kind"],
            v["metadata"]["name"]
        );
        match (
            v["apiVersion"].as_str().unwrap_or(""),
            v["kind"].as_str().unwrap_or(""),
        ) {
            ("v1", "ServiceAccount") => same::<ServiceAccount>(v, &what),
            ("v1", "Service") => same::<Service>(v, &what),
            ("v1", "ConfigMap") => same::<ConfigMap>(v, &what),
            ("apps/v1", "DaemonSet") => same::<DaemonSet>(v, &what),
            ("apps/v1", "Deployment") => same::<Deployment>(v, &what),
            ("v1", "Secret") => same::<Secret>(v, &what),
            ("policy/v1", "PodDisruptionBudget") => same::<PodDisruptionBudget>(v, &what),
            ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
                same::<ValidatingWebhookConfiguration>(v, &what)
            }
            // cert-manager's CRD: check its shape by hand.
            ("cert-manager.io/v1", "Certificate") => {
                assert!(v["spec"]["secretName"].is_string(), "{what}");
                assert!(v["spec"]["issuerRef"]["name"].is_string(), "{what}");
                assert!(v["spec"]["dnsNames"][0].is_string(), "{what}");
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => same::<ClusterRole>(v, &what),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                same::<ClusterRoleBinding>(v, &what)
            }
            ("resource.k8s.io/v1", "DeviceClass") => same::<DeviceClass>(v, &what),
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                same::<ValidatingAdmissionPolicy>(v, &what)
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                same::<ValidatingAdmissionPolicyBinding>(v, &what)
            }
            // Not a Kubernetes type: the Prometheus operator's CRD. Check its shape by hand.
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                assert!(v["spec"]["endpoints"][0]["port"].is_string(), "{what}");
                assert!(v["spec"]["selector"]["matchLabels"].is_object(), "{what}");
            }
            (a, k) => panic!("{what}: unexpected {a} {k}"),
        }
    }
    all
}

fn containers(all: &[Value]) -> Vec<String> {
    all.iter()
        .filter(|v| v["kind"] == "DaemonSet")
        .flat_map(|v| {
            v["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn install_yaml_objects_decode_and_hold_every_component() {
    let all = check_objects(&root().join("manifests/install.yaml"));
    let classes: Vec<&str> = all
        .iter()
        .filter(|v| v["kind"] == "DeviceClass")
        .map(|v| v["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        ["net.drakit.dev", "cpu.drakit.dev", "runtime.drakit.dev"]
    );
    assert_eq!(containers(&all), ["kubelet-plugin", "nri", "netdev", "cpu"]);
    let role = all.iter().find(|v| v["kind"] == "ClusterRole").unwrap();
    let verbs: Vec<String> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let res = r["resources"][0].as_str().unwrap().to_string();
            r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |v| format!("{res}:{}", v.as_str().unwrap()))
        })
        .collect();
    // Least privilege: claims are read-only, only their status is written; no secrets, no pods.
    assert!(
        !verbs.iter().any(|v| v.starts_with("resourceclaims:")
            && !v.ends_with(":get")
            && !v.ends_with(":list")
            && !v.ends_with(":watch")),
        "{verbs:?}"
    );
    assert!(verbs.contains(&"nodes:get".to_string()));
    assert!(
        !verbs
            .iter()
            .any(|v| v.starts_with("nodes:") && v != "nodes:get")
    );
}

#[test]
fn every_rendered_combination_decodes_and_follows_its_toggles() {
    let dir = root().join("target/chart-renders");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        eprintln!(
            "skipped: {} absent (the chart step of `cargo xtask ci` renders it before the tests)",
            dir.display()
        );
        return;
    };
    let mut n = 0;
    for f in rd.flatten() {
        let path = f.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let all = check_objects(&path);
        n += 1;
        if let Some(rest) = name.strip_prefix("drivers-") {
            // drivers-net<0|1>-cpu<0|1>-rt<0|1>
            let bits: Vec<bool> = rest.split('-').map(|p| p.ends_with('1')).collect();
            let (net, cpu, rt) = (bits[0], bits[1], bits[2]);
            let classes = all.iter().filter(|v| v["kind"] == "DeviceClass").count();
            assert_eq!(classes, net as usize + cpu as usize + rt as usize, "{name}");
            let c = containers(&all);
            assert_eq!(c.contains(&"netdev".to_string()), net, "{name}: {c:?}");
            assert_eq!(c.contains(&"cpu".to_string()), cpu, "{name}: {c:?}");
            assert_eq!(
                c.contains(&"nri".to_string()),
                net || cpu || rt,
                "{name}: {c:?}"
            );
            if !(net || cpu || rt) {
                assert!(all.iter().all(|v| v["kind"] != "ClusterRole"), "{name}");
            }
        }
        if name == "attach-cdi" {
            let ds = all.iter().find(|v| v["kind"] == "DaemonSet").unwrap();
            let nri = ds["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "nri")
                .unwrap();
            assert!(
                nri["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a == "--netdev=false")
            );
        }
        if name.starts_with("webhook-") {
            let vwc = all
                .iter()
                .find(|v| v["kind"] == "ValidatingWebhookConfiguration")
                .unwrap_or_else(|| panic!("{name}: no ValidatingWebhookConfiguration"));
            let w = &vwc["webhooks"][0];
            assert_eq!(w["clientConfig"]["service"]["path"], "/validate");
            assert!(
                w["matchConditions"][0]["expression"]
                    .as_str()
                    .unwrap()
                    .contains("net.drakit.dev")
            );
            let dep = all.iter().find(|v| v["kind"] == "Deployment").unwrap();
            let pod = &dep["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
                true
            );
            assert!(all.iter().any(|v| v["kind"] == "PodDisruptionBudget"));
            if name == "webhook-generated-cert" {
                assert!(w["clientConfig"]["caBundle"].is_string());
                assert_eq!(w["failurePolicy"], "Fail");
            } else {
                assert!(all.iter().any(|v| v["kind"] == "Certificate"));
            }
        }
        if name == "all-options" {
            assert!(all.iter().any(|v| v["kind"] == "ServiceMonitor"));
            assert!(all.iter().any(|v| v["kind"] == "ConfigMap"));
            let ds = all.iter().find(|v| v["kind"] == "DaemonSet").unwrap();
            assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 1);
        }
    }
    assert!(n >= 8, "only {n} renders in {}", dir.display());
}
