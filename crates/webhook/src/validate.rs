//! AdmissionReview (admission.k8s.io/v1) in, AdmissionReview out: the opaque configs of drakit
//! drivers in ResourceClaims, ResourceClaimTemplates and DeviceClasses (resource.k8s.io/v1) are
//! decoded and checked with drakit-types, exactly as the node daemons do:
//!
//! - every config entry addressed to a drakit driver: `config::decode_parameters` (strict decode +
//!   semantic validation; the message names the claim, the entry and the field path);
//! - for a claim, every request that has drakit configs: `config::merge_for_request` (the node's
//!   merge: class first, then claim, later wins), then the runtime-spec admin policy
//!   (`policy::check_config`) for the runtime driver, with the namespace of the claim;
//! - entries for other drivers are ignored.
//!
//! Entry indexes are positions in the object's own config list (on the node a claim's class
//! configs come first, so the index printed there can be higher by the number of class configs).

use drakit_types::config::{self, ClaimRef, ConfigEntry, ConfigSource, MAX_PARAMETERS_BYTES};
use drakit_types::policy::{self, Policy};
use serde_json::{Value, json};

/// What the webhook checks against.
#[derive(Debug, Clone)]
pub struct Validator {
    /// Driver names whose configs are drakit's.
    pub drivers: Vec<String>,
    /// The runtime-spec driver (its configs also go through the admin policy).
    pub runtime_driver: String,
    pub policy: Policy,
}

impl Default for Validator {
    fn default() -> Self {
        use drakit_types::constants::{CPU_DRIVER_NAME, NET_DRIVER_NAME, RUNTIME_DRIVER_NAME};
        Self {
            drivers: vec![
                NET_DRIVER_NAME.into(),
                CPU_DRIVER_NAME.into(),
                RUNTIME_DRIVER_NAME.into(),
            ],
            runtime_driver: RUNTIME_DRIVER_NAME.into(),
            policy: Policy::default(),
        }
    }
}

/// The decision on one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Why, with the field path.
    Deny(String),
}

struct Entry {
    source: ConfigSource,
    driver: String,
    requests: Vec<String>,
    parameters: Vec<u8>,
    /// Field path of the entry in the object, for messages.
    path: String,
}

fn entries(list: &Value, path: &str, source: ConfigSource) -> Vec<Entry> {
    list.as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, c)| {
            let driver = c["opaque"]["driver"].as_str()?.to_string();
            // The API server hands us the parameters as JSON; re-encode them compactly.
            let parameters = serde_json::to_vec(&c["opaque"]["parameters"]).ok()?;
            Some(Entry {
                source,
                driver,
                requests: c["requests"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                parameters,
                path: format!("{path}[{i}].opaque.parameters"),
            })
        })
        .collect()
}

impl Validator {
    fn is_ours(&self, driver: &str) -> bool {
        self.drivers.iter().any(|d| d == driver)
    }

    /// Checks a claim spec (`ResourceClaim.spec` or `ResourceClaimTemplate.spec.spec`).
    pub fn check_claim_spec(&self, claim: &ClaimRef, spec: &Value, spec_path: &str) -> Decision {
        let all = entries(
            &spec["devices"]["config"],
            &format!("{spec_path}.devices.config"),
            ConfigSource::FromClaim,
        );
        let ours: Vec<&Entry> = all.iter().filter(|e| self.is_ours(&e.driver)).collect();
        if ours.is_empty() {
            return Decision::Allow;
        }
        // Each entry on its own, so an entry that applies to no request is still checked.
        for (index, e) in all.iter().enumerate() {
            if !self.is_ours(&e.driver) {
                continue;
            }
            if e.parameters.len() > MAX_PARAMETERS_BYTES {
                return Decision::Deny(format!(
                    "{}: {claim} config[{index}]: parameters are {} bytes, more than the limit of {MAX_PARAMETERS_BYTES} bytes",
                    e.path,
                    e.parameters.len()
                ));
            }
            if let Err(err) = config::decode_parameters(claim, index, e.source, &e.parameters) {
                return Decision::Deny(format!("{}: {err}", e.path));
            }
        }
        // Then per request, merged as the node merges them, and the admin policy.
        let config_entries: Vec<ConfigEntry<'_>> = all
            .iter()
            .map(|e| ConfigEntry {
                source: e.source,
                driver: &e.driver,
                requests: &e.requests,
                parameters: &e.parameters,
            })
            .collect();
        let mut requests: Vec<String> = spec["devices"]["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        if requests.is_empty() {
            requests.push(String::new());
        }
        let mut drivers: Vec<&str> = ours.iter().map(|e| e.driver.as_str()).collect();
        drivers.sort_unstable();
        drivers.dedup();
        for driver in drivers {
            for request in &requests {
                match config::merge_for_request(claim, driver, request, &config_entries) {
                    Ok(Some(cfg)) if driver == self.runtime_driver => {
                        if let Err(e) = policy::check_config(&self.policy, &claim.namespace, &cfg) {
                            return Decision::Deny(format!(
                                "{spec_path}.devices.config: {claim} request {request:?}: refused by the node's runtime-spec policy: {e}"
                            ));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {}
                    Err(e) => return Decision::Deny(format!("{spec_path}.devices.config: {e}")),
                }
            }
        }
        Decision::Allow
    }

    /// Checks a DeviceClass: each drakit config entry decodes and validates; runtime-spec
    /// fragments also pass the default rules of the policy.
    pub fn check_device_class(&self, name: &str, object: &Value) -> Decision {
        let claim = ClaimRef::new("", format!("(DeviceClass {name})"), "");
        for (index, e) in entries(
            &object["spec"]["config"],
            "spec.config",
            ConfigSource::FromClass,
        )
        .iter()
        .enumerate()
        {
            if !self.is_ours(&e.driver) {
                continue;
            }
            match config::decode_parameters(&claim, index, e.source, &e.parameters) {
                Err(err) => return Decision::Deny(format!("{}: {err}", e.path)),
                Ok(cfg) if e.driver == self.runtime_driver => {
                    // A class applies in every namespace: check the default rules.
                    if let Err(err) = policy::check_config(&self.policy, "", &cfg) {
                        return Decision::Deny(format!(
                            "{}: refused by the node's runtime-spec policy: {err}",
                            e.path
                        ));
                    }
                }
                Ok(_) => {}
            }
        }
        Decision::Allow
    }

    /// Decides on one AdmissionRequest object.
    pub fn decide(&self, request: &Value) -> Decision {
        let kind = request["kind"]["kind"].as_str().unwrap_or_default();
        if request["operation"] == "DELETE" {
            return Decision::Allow;
        }
        let object = &request["object"];
        let ns = object["metadata"]["namespace"]
            .as_str()
            .or_else(|| request["namespace"].as_str())
            .unwrap_or_default();
        let name = object["metadata"]["name"]
            .as_str()
            .or_else(|| object["metadata"]["generateName"].as_str())
            .or_else(|| request["name"].as_str())
            .unwrap_or_default();
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        match kind {
            "ResourceClaim" => {
                self.check_claim_spec(&ClaimRef::new(ns, name, uid), &object["spec"], "spec")
            }
            "ResourceClaimTemplate" => self.check_claim_spec(
                &ClaimRef::new(ns, format!("{name} (template)"), uid),
                &object["spec"]["spec"],
                "spec.spec",
            ),
            "DeviceClass" => self.check_device_class(name, object),
            _ => Decision::Allow,
        }
    }

    /// Answers an AdmissionReview. A review that cannot be read is answered with an error
    /// status (`None` uid when there is none to echo).
    pub fn review(&self, body: &[u8]) -> Result<Value, String> {
        let review: Value = serde_json::from_slice(body)
            .map_err(|e| format!("AdmissionReview is not JSON: {e}"))?;
        if review["kind"] != "AdmissionReview" {
            return Err(format!(
                "expected an AdmissionReview, got kind {}",
                review["kind"]
            ));
        }
        let request = &review["request"];
        let uid = request["uid"]
            .as_str()
            .ok_or("AdmissionReview.request.uid is missing")?;
        let response = match self.decide(request) {
            Decision::Allow => json!({"uid": uid, "allowed": true}),
            Decision::Deny(message) => json!({
                "uid": uid,
                "allowed": false,
                "status": {"code": 422, "reason": "Invalid", "message": message}
            }),
        };
        Ok(json!({
            "apiVersion": review["apiVersion"].as_str().unwrap_or("admission.k8s.io/v1"),
            "kind": "AdmissionReview",
            "response": response,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(configs: Value) -> Value {
        json!({
            "uid": "r1",
            "kind": {"group": "resource.k8s.io", "version": "v1", "kind": "ResourceClaim"},
            "operation": "CREATE",
            "object": {
                "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": "c1", "namespace": "ns"},
                "spec": {"devices": {
                    "requests": [{"name": "r", "exactly": {"deviceClassName": "net.drakit.dev"}}],
                    "config": configs
                }}
            }
        })
    }

    #[test]
    fn valid_is_allowed_and_other_drivers_ignored() {
        let v = Validator::default();
        let ok = claim(
            json!([{"requests": ["r"], "opaque": {"driver": "net.drakit.dev", "parameters":
            {"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "netdev": {"kind": "macvlan", "interfaceName": "net1", "parent": "eth0"}}}}]),
        );
        assert_eq!(v.decide(&ok), Decision::Allow);
        let other = claim(
            json!([{"opaque": {"driver": "gpu.example.com", "parameters": {"anything": [1]}}}]),
        );
        assert_eq!(v.decide(&other), Decision::Allow);
    }

    #[test]
    fn bad_config_is_denied_with_the_field() {
        let v = Validator::default();
        let bad = claim(json!([{"opaque": {"driver": "net.drakit.dev", "parameters":
            {"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "netdev": {"kind": "macvlan", "interfaceName": "this-name-is-too-long", "parent": "eth0"}}}}]));
        let Decision::Deny(m) = v.decide(&bad) else {
            panic!("allowed")
        };
        assert!(m.contains("interfaceName"), "{m}");
        assert!(m.contains("claim ns/c1"), "{m}");
    }

    #[test]
    fn policy_refusal_is_denied() {
        let v = Validator::default();
        let mut r = claim(
            json!([{"opaque": {"driver": "runtime.drakit.dev", "parameters":
            {"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig", "spec": {"mounts": [{"destination": "/h", "source": "/", "type": "bind"}]}}}}]),
        );
        r["object"]["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] =
            json!("runtime.drakit.dev");
        let Decision::Deny(m) = v.decide(&r) else {
            panic!("allowed")
        };
        assert!(m.contains("policy") && m.contains("spec.mounts"), "{m}");
    }

    #[test]
    fn garbage_reviews_are_errors_not_panics() {
        let v = Validator::default();
        for b in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"kind\":\"AdmissionReview\"}",
            b"\xff\xfe",
        ] {
            assert!(v.review(b).is_err());
        }
        let r = v.review(br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u","kind":{"kind":"ResourceClaim"},"object":null}}"#).unwrap();
        assert_eq!(r["response"]["allowed"], true);
    }
}
