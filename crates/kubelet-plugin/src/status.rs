//! ResourceClaim `status.devices[]` by server-side apply, when a backend reports device data.

use drakit_proto::drakit::PreparedDevice;
use serde_json::{Value, json};

use crate::claims::ClaimRef;

/// Builds the apply body for a claim's device status (`None` when there is nothing to report).
pub fn status_patch(
    driver: &str,
    claim: &ClaimRef,
    devices: &[PreparedDevice],
    now: &str,
) -> Option<Value> {
    let entries: Vec<Value> = devices
        .iter()
        .filter(|d| d.network_data.is_some() || !d.conditions.is_empty())
        .map(|d| {
            let mut e = json!({"driver": driver, "pool": d.pool, "device": d.device});
            if !d.share_id.is_empty() {
                e["shareID"] = json!(d.share_id);
            }
            if !d.conditions.is_empty() {
                e["conditions"] = Value::Array(
                    d.conditions
                        .iter()
                        .take(8)
                        .map(|c| {
                            json!({
                                "type": c.r#type,
                                "status": if c.status.is_empty() { "Unknown" } else { c.status.as_str() },
                                "reason": if c.reason.is_empty() { "Prepared" } else { c.reason.as_str() },
                                "message": c.message,
                                "lastTransitionTime": now,
                            })
                        })
                        .collect(),
                );
            }
            if let Some(n) = &d.network_data {
                let mut nd = serde_json::Map::new();
                if !n.interface_name.is_empty() {
                    nd.insert("interfaceName".into(), json!(n.interface_name));
                }
                if !n.ips.is_empty() {
                    nd.insert("ips".into(), json!(n.ips));
                }
                if !n.hardware_address.is_empty() {
                    nd.insert("hardwareAddress".into(), json!(n.hardware_address));
                }
                e["networkData"] = Value::Object(nd);
            }
            e
        })
        .collect();
    if entries.is_empty() {
        return None;
    }
    Some(json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": claim.name, "namespace": claim.namespace},
        "status": {"devices": entries},
    }))
}

/// Applies the patch to `resourceclaims/<name>/status` under `field_manager`. An API server that
/// does not answer within `timeout` is an error like any other (the kube client itself waits
/// for an answer forever).
pub async fn apply_status(
    client: &kube::Client,
    field_manager: &str,
    claim: &ClaimRef,
    patch: Value,
    timeout: std::time::Duration,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::resource::v1::ResourceClaim;
    let api: kube::Api<ResourceClaim> = kube::Api::namespaced(client.clone(), &claim.namespace);
    let pp = kube::api::PatchParams::apply(field_manager).force();
    match tokio::time::timeout(
        timeout,
        api.patch_status(&claim.name, &pp, &kube::api::Patch::Apply(patch)),
    )
    .await
    {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from the API server within {timeout:?}"),
        )))),
    }
}

/// RFC 3339 UTC timestamp (seconds) without a date crate.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use drakit_proto::drakit::{Condition, NetworkData};

    #[test]
    fn builds_network_status() {
        let c = ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: "u".into(),
        };
        let d = PreparedDevice {
            pool: "n1".into(),
            device: "eth1".into(),
            network_data: Some(NetworkData {
                interface_name: "net1".into(),
                ips: vec!["192.0.2.5/24".into()],
                hardware_address: "aa:bb:cc:dd:ee:ff".into(),
            }),
            conditions: vec![Condition {
                r#type: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = status_patch(
            "net.drakit.dev",
            &c,
            &[d, PreparedDevice::default()],
            "2026-01-01T00:00:00Z",
        )
        .unwrap();
        let devs = p["status"]["devices"].as_array().unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0]["networkData"]["interfaceName"], "net1");
        assert_eq!(devs[0]["conditions"][0]["reason"], "Prepared");
        assert!(status_patch("d", &c, &[PreparedDevice::default()], "x").is_none());
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 20, "{ts}");
    }
}
