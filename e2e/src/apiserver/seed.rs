//! Builders for the objects tests seed: allocated ResourceClaims and Nodes.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    AllocationResult, DeviceAllocationConfiguration, DeviceAllocationResult, DeviceClaim,
    DeviceClaimConfiguration, DeviceRequest, DeviceRequestAllocationResult, ExactDeviceRequest,
    OpaqueDeviceConfiguration, ResourceClaim, ResourceClaimConsumerReference, ResourceClaimSpec,
    ResourceClaimStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::Value;

/// A Node named `name` with no spec (enough for owner references and `GET /api/v1/nodes/{name}`).
pub fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Builds a ResourceClaim as the scheduler leaves it: spec requests, `status.allocation` with
/// device results and configs, and `status.reservedFor` pods.
///
/// ```
/// use drakit_e2e::apiserver::ClaimBuilder;
/// let claim = ClaimBuilder::new("default", "net-claim")
///     .uid("6f3c1a9e-0000-4000-8000-000000000001")
///     .device("net.drakit.dev", "node-1", "eth1", "nic")
///     .config_from_claim("net.drakit.dev", &["nic"], serde_json::json!({
///         "apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "interfaceName": "net1"
///     }))
///     .reserved_for_pod("pod-a", "pod-uid-a")
///     .build();
/// assert_eq!(claim.metadata.uid.as_deref(), Some("6f3c1a9e-0000-4000-8000-000000000001"));
/// ```
#[derive(Debug, Clone)]
pub struct ClaimBuilder {
    namespace: String,
    name: String,
    uid: Option<String>,
    device_class: String,
    results: Vec<DeviceRequestAllocationResult>,
    configs: Vec<(String, String, Vec<String>, Value)>,
    reserved_for: Vec<(String, String)>,
    allocated: bool,
}

impl ClaimBuilder {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: None,
            device_class: "drakit".to_owned(),
            results: Vec::new(),
            configs: Vec::new(),
            reserved_for: Vec::new(),
            allocated: true,
        }
    }

    /// The claim UID (the kubelet passes it in `Claim.uid`); assigned by the server when unset.
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.to_owned());
        self
    }

    /// The DeviceClass named by every request (default `drakit`).
    pub fn device_class(mut self, class: &str) -> Self {
        self.device_class = class.to_owned();
        self
    }

    /// An allocated device for `request`.
    pub fn device(mut self, driver: &str, pool: &str, device: &str, request: &str) -> Self {
        self.results.push(DeviceRequestAllocationResult {
            driver: driver.to_owned(),
            pool: pool.to_owned(),
            device: device.to_owned(),
            request: request.to_owned(),
            ..Default::default()
        });
        self
    }

    /// An allocated device with a `shareID` (consumable capacity).
    pub fn shared_device(
        mut self,
        driver: &str,
        pool: &str,
        device: &str,
        request: &str,
        share_id: &str,
    ) -> Self {
        self = self.device(driver, pool, device, request);
        if let Some(last) = self.results.last_mut() {
            last.share_id = Some(share_id.to_owned());
        }
        self
    }

    fn config(mut self, source: &str, driver: &str, requests: &[&str], parameters: Value) -> Self {
        self.configs.push((
            source.to_owned(),
            driver.to_owned(),
            requests.iter().map(|r| (*r).to_owned()).collect(),
            parameters,
        ));
        self
    }

    /// Opaque config from the DeviceClass (`source: FromClass`); `requests` empty = all requests.
    pub fn config_from_class(self, driver: &str, requests: &[&str], parameters: Value) -> Self {
        self.config("FromClass", driver, requests, parameters)
    }

    /// Opaque config from the claim itself (`source: FromClaim`, also listed in `spec.devices.config`).
    pub fn config_from_claim(self, driver: &str, requests: &[&str], parameters: Value) -> Self {
        self.config("FromClaim", driver, requests, parameters)
    }

    /// A pod in `status.reservedFor`.
    pub fn reserved_for_pod(mut self, name: &str, uid: &str) -> Self {
        self.reserved_for.push((name.to_owned(), uid.to_owned()));
        self
    }

    /// Leaves `status` empty (a claim not yet allocated).
    pub fn unallocated(mut self) -> Self {
        self.allocated = false;
        self
    }

    pub fn build(self) -> ResourceClaim {
        let mut request_names = BTreeSet::new();
        let requests: Vec<DeviceRequest> = self
            .results
            .iter()
            .filter(|r| request_names.insert(r.request.clone()))
            .map(|r| DeviceRequest {
                name: r.request.clone(),
                exactly: Some(ExactDeviceRequest {
                    device_class_name: self.device_class.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let opaque = |driver: &str, parameters: &Value| OpaqueDeviceConfiguration {
            driver: driver.to_owned(),
            parameters: RawExtension(parameters.clone()),
        };
        let non_empty = |r: &Vec<String>| (!r.is_empty()).then(|| r.clone());
        let spec_config: Vec<DeviceClaimConfiguration> = self
            .configs
            .iter()
            .filter(|(source, ..)| source == "FromClaim")
            .map(|(_, driver, reqs, params)| DeviceClaimConfiguration {
                opaque: Some(opaque(driver, params)),
                requests: non_empty(reqs),
            })
            .collect();
        let allocation_config: Vec<DeviceAllocationConfiguration> = self
            .configs
            .iter()
            .map(
                |(source, driver, reqs, params)| DeviceAllocationConfiguration {
                    source: source.clone(),
                    opaque: Some(opaque(driver, params)),
                    requests: non_empty(reqs),
                },
            )
            .collect();
        let status = self.allocated.then(|| ResourceClaimStatus {
            allocation: Some(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    results: Some(self.results.clone()),
                    config: (!allocation_config.is_empty()).then_some(allocation_config),
                }),
                ..Default::default()
            }),
            reserved_for: (!self.reserved_for.is_empty()).then(|| {
                self.reserved_for
                    .iter()
                    .map(|(name, uid)| ResourceClaimConsumerReference {
                        api_group: None,
                        resource: "pods".to_owned(),
                        name: name.clone(),
                        uid: uid.clone(),
                    })
                    .collect()
            }),
            devices: None,
        });
        ResourceClaim {
            metadata: ObjectMeta {
                namespace: Some(self.namespace),
                name: Some(self.name),
                uid: self.uid,
                ..Default::default()
            },
            spec: ResourceClaimSpec {
                devices: Some(DeviceClaim {
                    requests: Some(requests),
                    config: (!spec_config.is_empty()).then_some(spec_config),
                    constraints: None,
                }),
            },
            status,
        }
    }
}
