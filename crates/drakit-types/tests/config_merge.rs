//! Merging the configs of one claim for one request: class before claim, later wins, request
//! and subrequest matching, kind conflicts.

use drakit_types::config::{
    ClaimConfig, ClaimRef, ConfigEntry, ConfigSource, EntryRef, NetdevKind, NetdevMode, Origin,
    Reason, merge_for_request, request_matches,
};
use serde_json::json;

const DRIVER: &str = "net.drakit.dev";

fn claim() -> ClaimRef {
    ClaimRef::new("team-a", "nic", "uid-1")
}

struct E {
    source: ConfigSource,
    driver: &'static str,
    requests: Vec<String>,
    params: Vec<u8>,
}

fn e(source: ConfigSource, requests: &[&str], params: serde_json::Value) -> E {
    E {
        source,
        driver: DRIVER,
        requests: requests.iter().map(|s| s.to_string()).collect(),
        params: serde_json::to_vec(&params).unwrap(),
    }
}

fn merge(
    request: &str,
    es: &[E],
) -> Result<Option<ClaimConfig>, drakit_types::config::ConfigError> {
    let entries: Vec<ConfigEntry<'_>> = es
        .iter()
        .map(|x| ConfigEntry {
            source: x.source,
            driver: x.driver,
            requests: &x.requests,
            parameters: &x.params,
        })
        .collect();
    merge_for_request(&claim(), DRIVER, request, &entries)
}

fn nd(netdev: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "netdev": netdev})
}

use ConfigSource::{FromClaim, FromClass};

#[test]
fn class_first_then_claim_later_wins() {
    // Listed claim-first on purpose: the class entry still applies first.
    let es = [
        e(
            FromClaim,
            &[],
            nd(json!({"kind": "macvlan", "interfaceName": "data0", "mtu": 1400})),
        ),
        e(
            FromClass,
            &[],
            nd(json!({"kind": "macvlan", "parent": "eth0", "mode": "bridge", "mtu": 9000})),
        ),
        e(
            FromClaim,
            &["nic"],
            nd(json!({"kind": "macvlan", "mtu": 1500, "addresses": ["10.0.0.2/24"]})),
        ),
        e(
            FromClass,
            &[],
            nd(
                json!({"kind": "macvlan", "mode": "private", "addresses": ["10.9.9.9/8", "10.9.9.8/8"]}),
            ),
        ),
    ];
    let c = merge("nic", &es).unwrap().unwrap();
    let n = c.netdev().unwrap();
    assert_eq!(n.kind, NetdevKind::Macvlan);
    assert_eq!(n.parent.as_ref().unwrap().as_str(), "eth0"); // class default kept
    assert_eq!(n.mode, Some(NetdevMode::Private)); // second class entry over the first
    assert_eq!(n.interface_name.as_ref().unwrap().as_str(), "data0"); // claim adds
    assert_eq!(n.mtu, Some(1500)); // last claim entry wins
    // Arrays replace, they do not concatenate.
    assert_eq!(n.addresses.len(), 1);
    assert_eq!(n.addresses[0].to_string(), "10.0.0.2/24");
}

#[test]
fn null_removes_a_class_default() {
    let es = [
        e(FromClass, &[], nd(json!({"kind": "veth", "master": "br0"}))),
        e(FromClaim, &[], nd(json!({"master": null}))),
    ];
    let c = merge("nic", &es).unwrap().unwrap();
    assert!(c.netdev().unwrap().master.is_none());
}

#[test]
fn request_and_subrequest_matching() {
    assert!(request_matches(&[], "anything"));
    assert!(request_matches(&["nic".into()], "nic"));
    assert!(request_matches(&["nic".into()], "nic/fast"));
    assert!(request_matches(&["nic/fast".into()], "nic/fast"));
    assert!(!request_matches(&["nic/fast".into()], "nic"));
    assert!(!request_matches(&["nic/fast".into()], "nic/slow"));
    assert!(!request_matches(&["ni".into()], "nic"));
    assert!(!request_matches(&["nic".into()], "nicx/fast"));

    let es = [
        e(
            FromClaim,
            &["nic"],
            nd(json!({"kind": "dummy", "mtu": 1000})),
        ),
        e(FromClaim, &["nic/fast"], nd(json!({"mtu": 9000}))),
        e(FromClaim, &["other"], nd(json!({"mtu": 2000}))),
    ];
    assert_eq!(
        merge("nic", &es).unwrap().unwrap().netdev().unwrap().mtu,
        Some(1000)
    );
    assert_eq!(
        merge("nic/fast", &es)
            .unwrap()
            .unwrap()
            .netdev()
            .unwrap()
            .mtu,
        Some(9000)
    );
    assert_eq!(
        merge("nic/slow", &es)
            .unwrap()
            .unwrap()
            .netdev()
            .unwrap()
            .mtu,
        Some(1000)
    );
    // "other" alone is not a complete NetdevConfig: the error names that single entry.
    let err = merge("other", &es).unwrap_err();
    assert_eq!(
        err.origin,
        Origin::Entry(EntryRef {
            index: 2,
            source: FromClaim
        })
    );
    assert_eq!(merge("none", &es[..2]).unwrap(), None);
}

#[test]
fn other_drivers_are_ignored() {
    let mut foreign = e(FromClaim, &[], json!({"not": "ours"}));
    foreign.driver = "gpu.example.com";
    let es = [foreign, e(FromClaim, &[], nd(json!({"kind": "dummy"})))];
    assert!(merge("nic", &es).unwrap().is_some());
    assert_eq!(merge("nic", &es[..1]).unwrap(), None);
}

#[test]
fn different_kinds_for_one_request_are_refused() {
    let cni = json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "CniConfig", "interfaceName": "n",
                     "config": {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}});
    let es = [
        e(FromClaim, &["nic"], cni),
        e(FromClass, &[], nd(json!({"kind": "dummy"}))),
    ];
    let err = merge("nic", &es).unwrap_err();
    assert_eq!(
        err.reason,
        Reason::KindConflict {
            first: EntryRef {
                index: 1,
                source: FromClass
            },
            first_kind: "NetdevConfig",
            second: EntryRef {
                index: 0,
                source: FromClaim
            },
            second_kind: "CniConfig",
        }
    );
    let msg = err.to_string();
    assert!(msg.starts_with("claim team-a/nic: request \"nic\" (merged config[1] (FromClass) + config[0] (FromClaim)) kind: "), "{msg}");
    assert!(
        msg.contains(
            "config[1] (FromClass) is a NetdevConfig but config[0] (FromClaim) is a CniConfig"
        ),
        "{msg}"
    );
    // The legacy type resolves to the same kind as an explicit kind: no conflict.
    let es = [
        e(FromClass, &[], nd(json!({"kind": "dummy"}))),
        e(
            FromClaim,
            &[],
            json!({"apiVersion": "drakit.dev/v1alpha1", "type": "netdev", "netdev": {"interfaceName": "net1"}}),
        ),
    ];
    let c = merge("nic", &es).unwrap().unwrap();
    assert_eq!(
        c.netdev()
            .unwrap()
            .interface_name
            .as_ref()
            .unwrap()
            .as_str(),
        "net1"
    );
}

#[test]
fn per_entry_and_merged_errors_name_their_origin() {
    // A broken entry is reported as itself.
    let es = [
        e(FromClass, &[], nd(json!({"kind": "dummy"}))),
        E {
            source: FromClaim,
            driver: DRIVER,
            requests: vec![],
            params: b"{\"a\":1,\"a\":2}".to_vec(),
        },
    ];
    let err = merge("nic", &es).unwrap_err();
    assert_eq!(
        err.origin,
        Origin::Entry(EntryRef {
            index: 1,
            source: FromClaim
        })
    );
    assert_eq!(err.reason, Reason::DuplicateKey("a".into()));
    // A merged result that breaks a rule names all merged entries and the field.
    let es = [
        e(
            FromClass,
            &[],
            nd(json!({"kind": "macvlan", "parent": "eth0", "mode": "bridge"})),
        ),
        e(FromClaim, &[], nd(json!({"kind": "veth"}))),
    ];
    let err = merge("nic", &es).unwrap_err();
    assert_eq!(err.path, "netdev.mode");
    assert_eq!(
        err.to_string(),
        "claim team-a/nic: request \"nic\" (merged config[0] (FromClass) + config[1] (FromClaim)) netdev.mode: mode is not valid for kind veth"
    );
}
