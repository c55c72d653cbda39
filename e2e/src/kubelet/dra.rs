//! NodePrepareResources / NodeUnprepareResources over v1 or v1beta1, with version-neutral results.

use std::collections::BTreeMap;
use std::time::Duration;

use drakit_proto::dra::{v1, v1beta1};
use tonic::transport::Channel;

use super::{DraVersion, KubeletError, RegisteredPlugin};

/// The claim identity the kubelet passes to a DRA plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ClaimRef {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// One prepared device as the plugin reported it (v1beta1 has no `share_id`: always `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDevice {
    pub request_names: Vec<String>,
    pub pool_name: String,
    pub device_name: String,
    pub cdi_device_ids: Vec<String>,
    pub share_id: Option<String>,
}

/// Per claim UID: the prepared devices, or the plugin's error text for that claim.
pub type PrepareResults = BTreeMap<String, Result<Vec<PreparedDevice>, String>>;

/// Per claim UID: success, or the plugin's error text for that claim.
pub type UnprepareResults = BTreeMap<String, Result<(), String>>;

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(timeout);
    req
}

fn per_claim<T>(error: &str, ok: impl FnOnce() -> T) -> Result<T, String> {
    if error.is_empty() {
        Ok(ok())
    } else {
        Err(error.to_owned())
    }
}

/// As the kubelet does: a requested claim the plugin left out of the response is an error for
/// that claim.
fn left_out<T>(
    method: &str,
    claims: &[ClaimRef],
    results: &mut BTreeMap<String, Result<T, String>>,
) {
    for c in claims {
        results.entry(c.uid.clone()).or_insert_with(|| {
            Err(format!(
                "{method} left out claim {}/{} (uid {})",
                c.namespace, c.name, c.uid
            ))
        });
    }
}

async fn deadline<T>(
    plugin: &RegisteredPlugin,
    method: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, KubeletError> {
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        // The client enforces the grpc-timeout itself (tonic reports it as Cancelled); the server
        // may answer DeadlineExceeded first.
        Ok(Err(status))
            if status.code() == tonic::Code::DeadlineExceeded
                || (status.code() == tonic::Code::Cancelled && started.elapsed() >= timeout) =>
        {
            Err(KubeletError::Timeout {
                driver: plugin.driver.clone(),
                method,
                after: timeout,
            })
        }
        Ok(Err(status)) => Err(KubeletError::Rpc {
            driver: plugin.driver.clone(),
            endpoint: plugin.endpoint.clone(),
            method,
            status: Box::new(status),
        }),
        Err(_) => Err(KubeletError::Timeout {
            driver: plugin.driver.clone(),
            method,
            after: timeout,
        }),
    }
}

pub(super) async fn prepare(
    plugin: &RegisteredPlugin,
    channel: Channel,
    version: DraVersion,
    claims: &[ClaimRef],
    timeout: Duration,
) -> Result<PrepareResults, KubeletError> {
    const METHOD: &str = "NodePrepareResources";
    match version {
        DraVersion::V1 => {
            let mut client = v1::dra_plugin_client::DraPluginClient::new(channel);
            let msg = v1::NodePrepareResourcesRequest {
                claims: claims
                    .iter()
                    .map(|c| v1::Claim {
                        namespace: c.namespace.clone(),
                        uid: c.uid.clone(),
                        name: c.name.clone(),
                    })
                    .collect(),
            };
            let resp = deadline(
                plugin,
                METHOD,
                timeout,
                client.node_prepare_resources(request(msg, timeout)),
            )
            .await?;
            let mut results: BTreeMap<_, _> = resp
                .claims
                .into_iter()
                .map(|(uid, r)| {
                    let devices = r.devices;
                    let result = per_claim(&r.error, || {
                        devices
                            .into_iter()
                            .map(|d| PreparedDevice {
                                request_names: d.request_names,
                                pool_name: d.pool_name,
                                device_name: d.device_name,
                                cdi_device_ids: d.cdi_device_ids,
                                share_id: d.share_id,
                            })
                            .collect()
                    });
                    (uid, result)
                })
                .collect();
            left_out(METHOD, claims, &mut results);
            Ok(results)
        }
        DraVersion::V1beta1 => {
            let mut client = v1beta1::dra_plugin_client::DraPluginClient::new(channel);
            let msg = v1beta1::NodePrepareResourcesRequest {
                claims: claims
                    .iter()
                    .map(|c| v1beta1::Claim {
                        namespace: c.namespace.clone(),
                        uid: c.uid.clone(),
                        name: c.name.clone(),
                    })
                    .collect(),
            };
            let resp = deadline(
                plugin,
                METHOD,
                timeout,
                client.node_prepare_resources(request(msg, timeout)),
            )
            .await?;
            let mut results: BTreeMap<_, _> = resp
                .claims
                .into_iter()
                .map(|(uid, r)| {
                    let devices = r.devices;
                    let result = per_claim(&r.error, || {
                        devices
                            .into_iter()
                            .map(|d| PreparedDevice {
                                request_names: d.request_names,
                                pool_name: d.pool_name,
                                device_name: d.device_name,
                                cdi_device_ids: d.cdi_device_ids,
                                share_id: None,
                            })
                            .collect()
                    });
                    (uid, result)
                })
                .collect();
            left_out(METHOD, claims, &mut results);
            Ok(results)
        }
    }
}

pub(super) async fn unprepare(
    plugin: &RegisteredPlugin,
    channel: Channel,
    version: DraVersion,
    claims: &[ClaimRef],
    timeout: Duration,
) -> Result<UnprepareResults, KubeletError> {
    const METHOD: &str = "NodeUnprepareResources";
    match version {
        DraVersion::V1 => {
            let mut client = v1::dra_plugin_client::DraPluginClient::new(channel);
            let msg = v1::NodeUnprepareResourcesRequest {
                claims: claims
                    .iter()
                    .map(|c| v1::Claim {
                        namespace: c.namespace.clone(),
                        uid: c.uid.clone(),
                        name: c.name.clone(),
                    })
                    .collect(),
            };
            let resp = deadline(
                plugin,
                METHOD,
                timeout,
                client.node_unprepare_resources(request(msg, timeout)),
            )
            .await?;
            let mut results: BTreeMap<_, _> = resp
                .claims
                .into_iter()
                .map(|(uid, r)| (uid, per_claim(&r.error, || ())))
                .collect();
            left_out(METHOD, claims, &mut results);
            Ok(results)
        }
        DraVersion::V1beta1 => {
            let mut client = v1beta1::dra_plugin_client::DraPluginClient::new(channel);
            let msg = v1beta1::NodeUnprepareResourcesRequest {
                claims: claims
                    .iter()
                    .map(|c| v1beta1::Claim {
                        namespace: c.namespace.clone(),
                        uid: c.uid.clone(),
                        name: c.name.clone(),
                    })
                    .collect(),
            };
            let resp = deadline(
                plugin,
                METHOD,
                timeout,
                client.node_unprepare_resources(request(msg, timeout)),
            )
            .await?;
            let mut results: BTreeMap<_, _> = resp
                .claims
                .into_iter()
                .map(|(uid, r)| (uid, per_claim(&r.error, || ())))
                .collect();
            left_out(METHOD, claims, &mut results);
            Ok(results)
        }
    }
}
