//! Reading ResourceClaims from the API server and picking out what one driver must prepare.

// Errors carry the claim and field for the user; they are built once per failed claim, so
// their size does not matter.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use drakit_proto::drakit::AllocatedDevice;
use drakit_types::config::{
    ClaimRef as TypesClaimRef, ConfigEntry, ConfigSource, merge_for_request,
};
use futures::future::BoxFuture;
use k8s_openapi::api::resource::v1::ResourceClaim;

/// What the kubelet names in a call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// One failed GET.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("not found")]
    NotFound,
    /// Worth retrying (connection refused, 5xx, 429, timeout).
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help (403, 400...).
    #[error("{0}")]
    Permanent(String),
}

/// Source of ResourceClaims (the API server; tests may substitute their own).
pub trait ClaimSource: Send + Sync + 'static {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<ResourceClaim, FetchError>>;
}

/// The API server through kube-rs.
#[derive(Clone)]
pub struct KubeClaims {
    client: crate::lazy::LazyClient,
}

impl std::fmt::Debug for KubeClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeClaims")
    }
}

impl KubeClaims {
    pub fn new(client: crate::lazy::LazyClient) -> Self {
        Self { client }
    }
}

/// Classifies a kube error for the retry loop.
pub fn classify(err: kube::Error) -> FetchError {
    match err {
        kube::Error::Api(status) if status.code == 404 => FetchError::NotFound,
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => {
            FetchError::Transient(format!(
                "API server answered {}: {}",
                status.code, status.message
            ))
        }
        kube::Error::Api(status) => FetchError::Permanent(format!(
            "API server answered {}: {}",
            status.code, status.message
        )),
        other => FetchError::Transient(other.to_string()),
    }
}

impl ClaimSource for KubeClaims {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<ResourceClaim, FetchError>> {
        Box::pin(async move {
            let client = self.client.get().await.ok_or_else(|| {
                FetchError::Permanent("no kube client (building it failed)".into())
            })?;
            let api: kube::Api<ResourceClaim> = kube::Api::namespaced(client, namespace);
            api.get(name).await.map_err(classify)
        })
    }
}

/// Errors of reading one claim, each naming the claim.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClaimError {
    #[error("claim {claim}: not found in the API server")]
    NotFound { claim: ClaimRef },
    #[error("claim {claim}: API server unavailable for {after:?} ({attempts} attempts): {last}")]
    Unavailable {
        claim: ClaimRef,
        after: Duration,
        attempts: u32,
        last: String,
    },
    #[error("claim {claim}: reading it failed: {message}")]
    Read { claim: ClaimRef, message: String },
    #[error(
        "claim {claim}: UID in the API server is {actual:?}, the kubelet asked for {expected:?} (claim was re-created)"
    )]
    UidMismatch {
        claim: ClaimRef,
        expected: String,
        actual: String,
    },
    #[error("claim {claim}: not allocated (status.allocation is empty)")]
    NotAllocated { claim: ClaimRef },
    #[error("claim {claim}: status.allocation.nodeSelector does not select node {node:?}")]
    OtherNode { claim: ClaimRef, node: String },
    #[error(
        "claim {claim}: status.allocation.devices.results[{index}] is device {device:?} in pool {pool:?}, not a pool of node {node:?}"
    )]
    ForeignPool {
        claim: ClaimRef,
        index: usize,
        pool: String,
        device: String,
        node: String,
    },
    #[error("claim {claim}: no device is allocated by driver {driver}")]
    NoDevices { claim: ClaimRef, driver: String },
    #[error("claim {claim}: {field}: {message}")]
    BadConfig {
        claim: ClaimRef,
        field: String,
        message: String,
    },
}

/// Retries `source.get` with exponential backoff until `budget` runs out.
pub async fn fetch_with_retry(
    source: &dyn ClaimSource,
    claim: &ClaimRef,
    budget: Duration,
) -> Result<ResourceClaim, ClaimError> {
    let start = tokio::time::Instant::now();
    let deadline = start + budget;
    let mut backoff = Duration::from_millis(20);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // One stalled GET must not eat the whole budget: each attempt gets a share of it.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = remaining.min((budget / 4).max(Duration::from_millis(500)));
        let res = tokio::time::timeout(attempt, source.get(&claim.namespace, &claim.name)).await;
        let last = match res {
            Ok(Ok(rc)) => return Ok(rc),
            Ok(Err(FetchError::NotFound)) => {
                return Err(ClaimError::NotFound {
                    claim: claim.clone(),
                });
            }
            Ok(Err(FetchError::Permanent(message))) => {
                return Err(ClaimError::Read {
                    claim: claim.clone(),
                    message,
                });
            }
            Ok(Err(FetchError::Transient(m))) => m,
            Err(_) => format!("no answer within {attempt:?}"),
        };
        let now = tokio::time::Instant::now();
        if now + backoff >= deadline {
            return Err(ClaimError::Unavailable {
                claim: claim.clone(),
                after: now - start,
                attempts,
                last,
            });
        }
        tracing::debug!(claim.uid = %claim.uid, attempts, error = %last, "claim GET failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// What a driver prepares for one claim, read from the API object.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimWork {
    pub claim: ClaimRef,
    pub devices: Vec<AllocatedDevice>,
    pub reserved_for_pods: Vec<String>,
}

/// Checks the claim against what the kubelet asked for and this node, and collects this
/// driver's allocated devices with their merged opaque configs (class configs first, then the
/// claim's; later ones override earlier keys; configs of different `kind`s are refused).
pub fn extract(
    rc: &ResourceClaim,
    asked: &ClaimRef,
    driver: &str,
    node: &str,
    pools: &[String],
) -> Result<ClaimWork, ClaimError> {
    let claim = asked.clone();
    let actual = rc.metadata.uid.clone().unwrap_or_default();
    if actual != asked.uid {
        return Err(ClaimError::UidMismatch {
            claim,
            expected: asked.uid.clone(),
            actual,
        });
    }
    let Some(alloc) = rc.status.as_ref().and_then(|s| s.allocation.as_ref()) else {
        return Err(ClaimError::NotAllocated { claim });
    };
    if let Some(sel) = &alloc.node_selector {
        let mut names = Vec::new();
        for term in &sel.node_selector_terms {
            for f in term.match_fields.iter().flatten() {
                if f.key == "metadata.name" && f.operator == "In" {
                    names.extend(f.values.iter().flatten().cloned());
                }
            }
        }
        if !names.is_empty() && !names.iter().any(|n| n == node) {
            return Err(ClaimError::OtherNode {
                claim,
                node: node.to_owned(),
            });
        }
    }
    let Some(devs) = alloc.devices.as_ref() else {
        return Err(ClaimError::NoDevices {
            claim,
            driver: driver.to_owned(),
        });
    };
    // Every opaque entry for this driver, in list order, as raw bytes for drakit-types.
    let raw: Vec<(ConfigSource, Vec<String>, Vec<u8>)> = devs
        .config
        .iter()
        .flatten()
        .map(|c| {
            let source = ConfigSource::parse(&c.source).unwrap_or(ConfigSource::FromClaim);
            let driver_ok = c.opaque.as_ref().is_some_and(|o| o.driver == driver);
            let params = match (&c.opaque, driver_ok) {
                (Some(o), true) => serde_json::to_vec(&o.parameters.0).unwrap_or_default(),
                _ => Vec::new(),
            };
            (source, c.requests.clone().unwrap_or_default(), params)
        })
        .collect();
    let drivers: Vec<&str> = devs
        .config
        .iter()
        .flatten()
        .map(|c| c.opaque.as_ref().map_or("", |o| o.driver.as_str()))
        .collect();
    let entries: Vec<ConfigEntry<'_>> = raw
        .iter()
        .zip(&drivers)
        .map(|((source, requests, params), d)| ConfigEntry {
            source: *source,
            driver: d,
            requests,
            parameters: params,
        })
        .collect();
    let tref = TypesClaimRef {
        namespace: asked.namespace.clone(),
        name: asked.name.clone(),
        uid: asked.uid.clone(),
    };
    let mut out = Vec::new();
    for (index, r) in devs.results.iter().flatten().enumerate() {
        if r.driver != driver {
            continue;
        }
        if !pools.iter().any(|p| p == &r.pool) {
            return Err(ClaimError::ForeignPool {
                claim,
                index,
                pool: r.pool.clone(),
                device: r.device.clone(),
                node: node.to_owned(),
            });
        }
        let merged = merge_for_request(&tref, driver, &r.request, &entries).map_err(|e| {
            ClaimError::BadConfig {
                claim: claim.clone(),
                field: format!(
                    "status.allocation.devices.results[{index}] ({:?})",
                    r.request
                ),
                message: e.to_string(),
            }
        })?;
        let config_json = match merged {
            Some(cfg) => String::from_utf8(cfg.to_json().map_err(|e| ClaimError::BadConfig {
                claim: claim.clone(),
                field: "config".into(),
                message: e.to_string(),
            })?)
            .unwrap_or_default(),
            None => String::new(),
        };
        out.push(AllocatedDevice {
            requests: vec![r.request.clone()],
            pool: r.pool.clone(),
            device: r.device.clone(),
            config_json,
            share_id: r.share_id.clone().unwrap_or_default(),
            consumed_capacity: r
                .consumed_capacity
                .iter()
                .flatten()
                .map(|(k, q)| (k.clone(), q.0.clone()))
                .collect(),
            admin_access: r.admin_access.unwrap_or(false),
        });
    }
    if out.is_empty() {
        return Err(ClaimError::NoDevices {
            claim,
            driver: driver.to_owned(),
        });
    }
    let reserved_for_pods = rc
        .status
        .as_ref()
        .and_then(|s| s.reserved_for.as_ref())
        .map(|v| {
            v.iter()
                .filter(|r| r.resource == "pods")
                .map(|r| r.uid.clone())
                .collect()
        })
        .unwrap_or_default();
    Ok(ClaimWork {
        claim,
        devices: out,
        reserved_for_pods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::*;
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
    use serde_json::{Value, json};

    fn claim(
        uid: &str,
        results: Vec<DeviceRequestAllocationResult>,
        config: Vec<DeviceAllocationConfiguration>,
    ) -> ResourceClaim {
        let mut rc = ResourceClaim::default();
        rc.metadata.uid = Some(uid.into());
        rc.status = Some(ResourceClaimStatus {
            allocation: Some(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    results: Some(results),
                    config: Some(config),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        rc
    }

    fn result(driver: &str, pool: &str, dev: &str, req: &str) -> DeviceRequestAllocationResult {
        DeviceRequestAllocationResult {
            driver: driver.into(),
            pool: pool.into(),
            device: dev.into(),
            request: req.into(),
            ..Default::default()
        }
    }

    fn cfg(
        source: &str,
        driver: &str,
        reqs: Option<Vec<&str>>,
        p: Value,
    ) -> DeviceAllocationConfiguration {
        DeviceAllocationConfiguration {
            source: source.into(),
            requests: reqs.map(|r| r.into_iter().map(String::from).collect()),
            opaque: Some(OpaqueDeviceConfiguration {
                driver: driver.into(),
                parameters: RawExtension(p),
            }),
        }
    }

    fn asked(uid: &str) -> ClaimRef {
        ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: uid.into(),
        }
    }

    fn rt(spec: Value) -> Value {
        json!({"apiVersion":"drakit.dev/v1alpha1","kind":"RuntimeSpecEditConfig","spec":spec})
    }

    #[test]
    fn picks_own_devices_and_merges_class_then_claim() {
        let rc = claim(
            "u",
            vec![
                result("d", "n1", "a", "r1"),
                result("other", "n1", "b", "r2"),
                result("d", "n1", "c", "r2/s"),
            ],
            vec![
                cfg(
                    "FromClaim",
                    "d",
                    Some(vec!["r1"]),
                    rt(json!({"linux":{"resources":{"pids":{"limit":2}}}})),
                ),
                cfg(
                    "FromClass",
                    "d",
                    None,
                    rt(
                        json!({"linux":{"resources":{"pids":{"limit":1}}},"process":{"env":["A=1"]}}),
                    ),
                ),
                cfg("FromClaim", "other", None, json!({"kind":"Z"})),
            ],
        );
        let w = extract(&rc, &asked("u"), "d", "n1", &["n1".into()]).unwrap();
        assert_eq!(w.devices.len(), 2);
        let c0: Value = serde_json::from_str(&w.devices[0].config_json).unwrap();
        assert_eq!(c0["spec"]["linux"]["resources"]["pids"]["limit"], 2);
        assert_eq!(c0["spec"]["process"]["env"][0], "A=1");
        let c1: Value = serde_json::from_str(&w.devices[1].config_json).unwrap();
        assert_eq!(c1["spec"]["linux"]["resources"]["pids"]["limit"], 1);
    }

    #[test]
    fn refuses_wrong_uid_pool_and_kind_mix() {
        let rc = claim("u", vec![result("d", "n2", "a", "r")], vec![]);
        assert!(matches!(
            extract(&rc, &asked("v"), "d", "n1", &["n1".into()]),
            Err(ClaimError::UidMismatch { .. })
        ));
        assert!(matches!(
            extract(&rc, &asked("u"), "d", "n1", &["n1".into()]),
            Err(ClaimError::ForeignPool { .. })
        ));
        assert!(matches!(
            extract(&rc, &asked("u"), "x", "n1", &["n1".into()]),
            Err(ClaimError::NoDevices { .. })
        ));
        let rc = claim(
            "u",
            vec![result("d", "n1", "a", "r")],
            vec![
                cfg("FromClass", "d", None, rt(json!({}))),
                cfg(
                    "FromClaim",
                    "d",
                    None,
                    json!({"apiVersion":"drakit.dev/v1alpha1","kind":"CpuConfig","count":1}),
                ),
            ],
        );
        let e = extract(&rc, &asked("u"), "d", "n1", &["n1".into()]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("config[1]") && e.contains("ns/c"), "{e}");
        let mut rc = claim("u", vec![], vec![]);
        rc.status = None;
        assert!(matches!(
            extract(&rc, &asked("u"), "d", "n1", &["n1".into()]),
            Err(ClaimError::NotAllocated { .. })
        ));
    }
}
