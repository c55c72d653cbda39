//! The subset of the API server's validation that a DRA driver can trip over, with the limits of
//! resource.k8s.io/v1 (see `shared/specs/k8s/RESOURCE_API.md`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};

use super::status::Cause;

pub(crate) const MAX_DEVICES: usize = 128;
pub(crate) const MAX_DEVICES_WITH_TAINTS_OR_COUNTERS: usize = 64;
pub(crate) const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
pub(crate) const MAX_ATTRIBUTE_VALUE_LEN: usize = 64;
pub(crate) const MAX_DRIVER_NAME_LEN: usize = 63;
pub(crate) const MAX_POOL_NAME_LEN: usize = 253;
pub(crate) const MAX_DEVICE_CONDITIONS: usize = 8;
pub(crate) const MAX_DEVICE_DATA_LEN: usize = 10 * 1024;
pub(crate) const MAX_INTERFACE_NAME_LEN: usize = 256;
pub(crate) const MAX_HARDWARE_ADDRESS_LEN: usize = 128;
pub(crate) const MAX_IPS: usize = 16;

/// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated labels, at most 253.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_c_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_driver(field: &str, driver: &str, causes: &mut Vec<Cause>) {
    if driver.is_empty() {
        causes.push(Cause::required(field));
    } else if driver.len() > MAX_DRIVER_NAME_LEN {
        causes.push(Cause::invalid(
            field,
            format!("must be no more than {MAX_DRIVER_NAME_LEN} characters"),
        ));
    } else if !is_dns_subdomain(&driver.to_ascii_lowercase()) {
        causes.push(Cause::invalid(
            field,
            format!("{driver:?}: must be a DNS subdomain"),
        ));
    }
}

fn check_pool_name(field: &str, pool: &str, causes: &mut Vec<Cause>) {
    if pool.is_empty() {
        causes.push(Cause::required(field));
    } else if pool.len() > MAX_POOL_NAME_LEN {
        causes.push(Cause::invalid(
            field,
            format!("must be no more than {MAX_POOL_NAME_LEN} characters"),
        ));
    } else if !pool.split('/').all(is_dns_subdomain) {
        causes.push(Cause::invalid(
            field,
            format!("{pool:?}: must be one or more DNS subdomains separated by slashes"),
        ));
    }
}

fn check_qualified_name(field: &str, name: &str, causes: &mut Vec<Cause>) {
    let (domain, id) = match name.split_once('/') {
        Some((d, id)) => (Some(d), id),
        None => (None, name),
    };
    if id.contains('/') {
        causes.push(Cause::invalid(
            field,
            format!("{name:?}: at most one '/' is allowed"),
        ));
        return;
    }
    if !is_c_identifier(id) || id.len() > 32 {
        causes.push(Cause::invalid(
            field,
            format!("{name:?}: the identifier must be a C identifier of at most 32 characters"),
        ));
    }
    if let Some(d) = domain
        && (d.len() > 63 || !is_dns_subdomain(&d.to_ascii_lowercase()))
    {
        causes.push(Cause::invalid(
            field,
            format!("{name:?}: the domain must be a DNS subdomain of at most 63 characters"),
        ));
    }
}

/// Validates a ResourceSlice as create/update would.
pub(crate) fn resource_slice(slice: &ResourceSlice) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &slice.spec;
    check_driver("spec.driver", &spec.driver, &mut causes);
    check_pool_name("spec.pool.name", &spec.pool.name, &mut causes);
    if spec.pool.generation < 0 {
        causes.push(Cause::invalid(
            "spec.pool.generation",
            "must be greater than or equal to 0",
        ));
    }
    if spec.pool.resource_slice_count <= 0 {
        causes.push(Cause::invalid(
            "spec.pool.resourceSliceCount",
            "must be greater than 0",
        ));
    }

    let mut selections = Vec::new();
    if let Some(n) = &spec.node_name {
        if n.is_empty() || !is_dns_subdomain(n) {
            causes.push(Cause::invalid(
                "spec.nodeName",
                format!("{n:?}: must be a valid node name"),
            ));
        }
        selections.push("nodeName");
    }
    if spec.node_selector.is_some() {
        selections.push("nodeSelector");
    }
    match spec.all_nodes {
        Some(true) => selections.push("allNodes"),
        Some(false) => causes.push(Cause::invalid("spec.allNodes", "must be unset or true")),
        None => {}
    }
    match spec.per_device_node_selection {
        Some(true) => selections.push("perDeviceNodeSelection"),
        Some(false) => causes.push(Cause::invalid(
            "spec.perDeviceNodeSelection",
            "must be unset or true",
        )),
        None => {}
    }
    match selections.len() {
        1 => {}
        0 => causes.push(Cause::required(
            "spec: exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection`",
        )),
        _ => causes.push(Cause::invalid(
            "spec",
            format!("{{{}}}: exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required", selections.join(", ")),
        )),
    }

    let devices = spec.devices.as_deref().unwrap_or_default();
    if !devices.is_empty() && spec.shared_counters.as_ref().is_some_and(|c| !c.is_empty()) {
        causes.push(Cause::invalid(
            "spec",
            "only one of `devices` and `sharedCounters` may be set",
        ));
    }
    let advanced = devices.iter().any(|d| {
        d.taints.as_ref().is_some_and(|t| !t.is_empty())
            || d.consumes_counters.as_ref().is_some_and(|c| !c.is_empty())
    });
    let max = if advanced {
        MAX_DEVICES_WITH_TAINTS_OR_COUNTERS
    } else {
        MAX_DEVICES
    };
    if devices.len() > max {
        causes.push(Cause::too_many("spec.devices", devices.len(), max));
    }
    let mut names = BTreeSet::new();
    for (i, d) in devices.iter().enumerate() {
        let field = format!("spec.devices[{i}]");
        if d.name.is_empty() {
            causes.push(Cause::required(format!("{field}.name")));
        } else if !is_dns_label(&d.name) {
            causes.push(Cause::invalid(
                format!("{field}.name"),
                format!("{:?}: must be a DNS label", d.name),
            ));
        } else if !names.insert(d.name.as_str()) {
            causes.push(Cause::duplicate(format!("{field}.name"), d.name.as_str()));
        }
        let attrs = d.attributes.as_ref();
        let caps = d.capacity.as_ref();
        let count = attrs.map_or(0, |a| a.len()) + caps.map_or(0, |c| c.len());
        if count > MAX_ATTRIBUTES_AND_CAPACITIES {
            causes.push(Cause::too_many(
                format!("{field}: attributes and capacity"),
                count,
                MAX_ATTRIBUTES_AND_CAPACITIES,
            ));
        }
        for (name, attr) in attrs.into_iter().flatten() {
            let afield = format!("{field}.attributes[{name}]");
            check_qualified_name(&afield, name, &mut causes);
            let set = [
                attr.bool.is_some(),
                attr.int.is_some(),
                attr.string.is_some(),
                attr.version.is_some(),
            ]
            .into_iter()
            .filter(|b| *b)
            .count();
            if set != 1 {
                causes.push(Cause::invalid(
                    afield.clone(),
                    "exactly one value must be specified",
                ));
            }
            for s in [&attr.string, &attr.version].into_iter().flatten() {
                if s.len() > MAX_ATTRIBUTE_VALUE_LEN {
                    causes.push(Cause::invalid(
                        afield.clone(),
                        format!("may not be longer than {MAX_ATTRIBUTE_VALUE_LEN} bytes"),
                    ));
                }
            }
        }
        for name in caps.into_iter().flatten().map(|(n, _)| n) {
            check_qualified_name(&format!("{field}.capacity[{name}]"), name, &mut causes);
        }
    }
    causes
}

/// The key of an allocation result / device status entry.
pub(crate) type DeviceKey = (String, String, String, Option<String>);

/// Validates `status.devices` of a claim (the part a driver writes) against its allocation.
pub(crate) fn claim_device_status(claim: &ResourceClaim) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(status) = &claim.status else {
        return causes;
    };
    let allocated: BTreeSet<DeviceKey> = status
        .allocation
        .as_ref()
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.as_ref())
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r.driver.clone(),
                r.pool.clone(),
                r.device.clone(),
                r.share_id.clone(),
            )
        })
        .collect();
    let mut seen = BTreeSet::new();
    for (i, d) in status.devices.iter().flatten().enumerate() {
        let field = format!("status.devices[{i}]");
        check_driver(&format!("{field}.driver"), &d.driver, &mut causes);
        check_pool_name(&format!("{field}.pool"), &d.pool, &mut causes);
        if d.device.is_empty() {
            causes.push(Cause::required(format!("{field}.device")));
        }
        let key = (
            d.driver.clone(),
            d.pool.clone(),
            d.device.clone(),
            d.share_id.clone(),
        );
        if !seen.insert(key.clone()) {
            causes.push(Cause::duplicate(
                field.clone(),
                format!("{}/{}/{}", d.driver, d.pool, d.device),
            ));
        }
        if !allocated.contains(&key) {
            causes.push(Cause::invalid(
                field.clone(),
                format!(
                    "device {}/{}/{} is not in status.allocation.devices.results",
                    d.driver, d.pool, d.device
                ),
            ));
        }
        let conditions = d.conditions.as_deref().unwrap_or_default();
        if conditions.len() > MAX_DEVICE_CONDITIONS {
            causes.push(Cause::too_many(
                format!("{field}.conditions"),
                conditions.len(),
                MAX_DEVICE_CONDITIONS,
            ));
        }
        let mut types = BTreeSet::new();
        for (j, c) in conditions.iter().enumerate() {
            if c.type_.is_empty() {
                causes.push(Cause::required(format!("{field}.conditions[{j}].type")));
            } else if !types.insert(c.type_.as_str()) {
                causes.push(Cause::duplicate(
                    format!("{field}.conditions[{j}].type"),
                    c.type_.as_str(),
                ));
            }
            if !matches!(c.status.as_str(), "True" | "False" | "Unknown") {
                causes.push(Cause::invalid(
                    format!("{field}.conditions[{j}].status"),
                    format!("{:?}: must be one of True, False, Unknown", c.status),
                ));
            }
            if c.reason.is_empty() {
                causes.push(Cause::required(format!("{field}.conditions[{j}].reason")));
            }
        }
        if let Some(data) = &d.data {
            let len = serde_json::to_vec(&data.0).map_or(0, |v| v.len());
            if len > MAX_DEVICE_DATA_LEN {
                causes.push(Cause::invalid(
                    format!("{field}.data"),
                    format!("must not be longer than {MAX_DEVICE_DATA_LEN} bytes"),
                ));
            }
            if !data.0.is_object() {
                causes.push(Cause::invalid(
                    format!("{field}.data"),
                    "must be a JSON object",
                ));
            }
        }
        if let Some(net) = &d.network_data {
            let nfield = format!("{field}.networkData");
            if net
                .interface_name
                .as_ref()
                .is_some_and(|n| n.len() > MAX_INTERFACE_NAME_LEN)
            {
                causes.push(Cause::invalid(
                    format!("{nfield}.interfaceName"),
                    format!("must not be longer than {MAX_INTERFACE_NAME_LEN} bytes"),
                ));
            }
            if net
                .hardware_address
                .as_ref()
                .is_some_and(|h| h.len() > MAX_HARDWARE_ADDRESS_LEN)
            {
                causes.push(Cause::invalid(
                    format!("{nfield}.hardwareAddress"),
                    format!("must not be longer than {MAX_HARDWARE_ADDRESS_LEN} bytes"),
                ));
            }
            let ips = net.ips.as_deref().unwrap_or_default();
            if ips.len() > MAX_IPS {
                causes.push(Cause::too_many(format!("{nfield}.ips"), ips.len(), MAX_IPS));
            }
            let mut unique = BTreeSet::new();
            for (j, ip) in ips.iter().enumerate() {
                if let Err(why) = check_interface_address(ip) {
                    causes.push(Cause::invalid(
                        format!("{nfield}.ips[{j}]"),
                        format!("{ip:?}: {why}"),
                    ));
                } else if !unique.insert(ip.as_str()) {
                    causes.push(Cause::duplicate(format!("{nfield}.ips[{j}]"), ip.as_str()));
                }
            }
        }
    }
    causes
}

/// An interface address in CIDR form and canonical text (what Go's `ip.String()/len` prints).
pub(crate) fn check_interface_address(s: &str) -> Result<(), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or("must be an IP address in CIDR form (address/prefix)")?;
    let addr: IpAddr = ip.parse().map_err(|_| "not a valid IP address")?;
    let prefix: u8 = len
        .parse()
        .map_err(|_| "the prefix length must be a decimal number")?;
    if len.len() > 1 && len.starts_with('0') {
        return Err("the prefix length must not have leading zeros".to_owned());
    }
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("the prefix length must be at most {max}"));
    }
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return Err("an IPv4-mapped IPv6 address must be written as IPv4".to_owned());
    }
    if addr.to_string() != ip {
        return Err(format!("must be in canonical form ({addr}/{prefix})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_addresses() {
        for ok in ["192.0.2.5/24", "2001:db8::5/64", "10.0.0.1/32", "::1/128"] {
            assert_eq!(check_interface_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "192.0.2.5",
            "192.0.2.005/24",
            "2001:DB8::5/64",
            "2001:db8:0:0::5/64",
            "::ffff:192.0.2.5/96",
            "192.0.2.5/33",
            "192.0.2.5/024",
            "nonsense/8",
        ] {
            assert!(check_interface_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(is_dns_label("eth0-1"));
        assert!(!is_dns_label("Eth0"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("net.drakit.dev"));
        assert!(!is_dns_subdomain("net..dev"));
        let mut c = Vec::new();
        check_qualified_name("f", "net.drakit.dev/ifName", &mut c);
        check_qualified_name("f", "mtu", &mut c);
        assert!(c.is_empty(), "{c:?}");
        check_qualified_name("f", "a/b/c", &mut c);
        check_qualified_name("f", "9lives", &mut c);
        assert_eq!(c.len(), 2);
    }
}
