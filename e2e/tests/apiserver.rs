//! The API server stand-in over real HTTP: shapes, status codes, server-side apply, selectors,
//! request log and fault injection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::http::{self, Reply};
use drakit_e2e::apiserver::{ApiServerSim, ClaimBuilder, Fault, Resource, node};
use serde_json::{Value, json};

const DRIVER: &str = "net.drakit.dev";
const SLICES: &str = "/apis/resource.k8s.io/v1/resourceslices";
const CLAIMS: &str = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims";

fn slice(name: &str, node: &str, devices: &[&str]) -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {
            "name": name,
            "labels": { "app": "drakit", "node": node },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": node, "uid": "node-uid", "controller": true
            }]
        },
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": { "name": node, "generation": 1, "resourceSliceCount": 1 },
            "devices": devices.iter().map(|d| json!({
                "name": d,
                "attributes": { "net.drakit.dev/ifName": { "string": d }, "mtu": { "int": 1500 } }
            })).collect::<Vec<_>>()
        }
    })
}

fn apply_path(name: &str, manager: &str) -> String {
    format!("{SLICES}/{name}?fieldManager={manager}")
}

fn assert_status(reply: &Reply, code: u16, reason: &str) -> Value {
    assert_eq!(
        reply.status,
        code,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["reason"], reason);
    assert_eq!(v["code"], code);
    v
}

#[tokio::test]
async fn nodes_and_claims_get_with_real_shapes() {
    let api = ApiServerSim::start().await.unwrap();
    api.insert_node(&node("node-1")).unwrap();
    let claim = ClaimBuilder::new("default", "c1")
        .uid("11111111-2222-4333-8444-555555555555")
        .device(DRIVER, "node-1", "eth1", "nic")
        .config_from_class(DRIVER, &[], json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig"}))
        .config_from_claim(DRIVER, &["nic"], json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "interfaceName": "net1"}))
        .reserved_for_pod("pod-a", "pod-uid-a")
        .build();
    api.insert_claim(&claim).unwrap();

    let n = http::get(api.addr(), "/api/v1/nodes/node-1").await;
    assert_eq!(n.status, 200);
    assert_eq!(n.header("content-type"), Some("application/json"));
    let n = n.json();
    assert_eq!(n["kind"], "Node");
    assert_eq!(n["apiVersion"], "v1");
    assert!(n["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(n["metadata"]["resourceVersion"].as_str().is_some());

    let missing = http::get(api.addr(), "/api/v1/nodes/node-2").await;
    let s = assert_status(&missing, 404, "NotFound");
    assert_eq!(s["message"], "nodes \"node-2\" not found");
    assert_eq!(s["details"]["name"], "node-2");
    assert_eq!(s["details"]["kind"], "nodes");

    let c = http::get(api.addr(), &format!("{CLAIMS}/c1")).await;
    assert_eq!(c.status, 200);
    let c = c.json();
    assert_eq!(c["metadata"]["uid"], "11111111-2222-4333-8444-555555555555");
    assert_eq!(c["metadata"]["namespace"], "default");
    let results = &c["status"]["allocation"]["devices"]["results"];
    assert_eq!(results[0]["device"], "eth1");
    assert_eq!(results[0]["pool"], "node-1");
    let config = c["status"]["allocation"]["devices"]["config"]
        .as_array()
        .unwrap();
    assert_eq!(config.len(), 2);
    assert_eq!(config[0]["source"], "FromClass");
    assert_eq!(config[1]["source"], "FromClaim");
    assert_eq!(config[1]["opaque"]["parameters"]["interfaceName"], "net1");
    assert_eq!(c["status"]["reservedFor"][0]["uid"], "pod-uid-a");
    assert_eq!(c["status"]["reservedFor"][0]["resource"], "pods");

    let other_ns = http::get(
        api.addr(),
        "/apis/resource.k8s.io/v1/namespaces/other/resourceclaims/c1",
    )
    .await;
    let s = assert_status(&other_ns, 404, "NotFound");
    assert_eq!(
        s["message"],
        "resourceclaims.resource.k8s.io \"c1\" not found"
    );
    assert_eq!(s["details"]["group"], "resource.k8s.io");

    assert_status(
        &http::get(api.addr(), "/api/v1/pods").await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn slice_server_side_apply_creates_updates_and_bumps() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    let created = http::apply(
        addr,
        &apply_path("node-1-net", "drakit"),
        &slice("node-1-net", "node-1", &["eth1"]),
    )
    .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let created = created.json();
    assert_eq!(created["metadata"]["generation"], 1);
    let rv1: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap().to_owned();

    // The same content again: nothing changes.
    let same = http::apply(
        addr,
        &apply_path("node-1-net", "drakit"),
        &slice("node-1-net", "node-1", &["eth1"]),
    )
    .await;
    assert_eq!(same.status, 200);
    assert_eq!(
        same.json()["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    // A spec change bumps generation and resourceVersion, keeps the UID.
    let updated = http::apply(
        addr,
        &apply_path("node-1-net", "drakit"),
        &slice("node-1-net", "node-1", &["eth1", "eth2"]),
    )
    .await;
    assert_eq!(updated.status, 200);
    let updated = updated.json();
    assert_eq!(updated["metadata"]["generation"], 2);
    let rv2: u64 = updated["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);
    assert_eq!(updated["metadata"]["uid"], uid.as_str());
    assert_eq!(updated["spec"]["devices"].as_array().unwrap().len(), 2);

    // Stored and typed.
    let typed = api.slice("node-1-net").unwrap();
    assert_eq!(typed.spec.devices.unwrap().len(), 2);
    assert_eq!(typed.metadata.owner_references.unwrap()[0].kind, "Node");

    // GET one.
    let one = http::get(addr, &format!("{SLICES}/node-1-net")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["metadata"]["generation"], 2);
}

#[tokio::test]
async fn slice_apply_errors() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    let body = slice("s1", "node-1", &["eth1"]);

    // No field manager.
    let r = http::apply(addr, &format!("{SLICES}/s1"), &body).await;
    let s = assert_status(&r, 422, "Invalid");
    assert!(s["message"].as_str().unwrap().contains("fieldManager"));

    // Name mismatch.
    let r = http::apply(addr, &apply_path("other", "drakit"), &body).await;
    assert_status(&r, 400, "BadRequest");

    // Wrong kind.
    let mut wrong = body.clone();
    wrong["kind"] = json!("ResourceClaim");
    assert_status(
        &http::apply(addr, &apply_path("s1", "drakit"), &wrong).await,
        400,
        "BadRequest",
    );

    // Unsupported patch type.
    let r = http::send_json(
        addr,
        "PATCH",
        &apply_path("s1", "drakit"),
        "application/json-patch+json",
        &json!([]),
    )
    .await;
    assert_status(&r, 415, "UnsupportedMediaType");

    // Validation: 129 devices, a bad device name, no node selection.
    let many: Vec<String> = (0..129).map(|i| format!("dev{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = http::apply(
        addr,
        &apply_path("s1", "drakit"),
        &slice("s1", "node-1", &many),
    )
    .await;
    let s = assert_status(&r, 422, "Invalid");
    assert_eq!(s["details"]["kind"], "ResourceSlice");
    assert_eq!(s["details"]["causes"][0]["field"], "spec.devices");
    let r = http::apply(
        addr,
        &apply_path("s1", "drakit"),
        &slice("s1", "node-1", &["Eth_1"]),
    )
    .await;
    let s = assert_status(&r, 422, "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "spec.devices[0].name");
    let mut no_node = body.clone();
    no_node["spec"].as_object_mut().unwrap().remove("nodeName");
    assert_status(
        &http::apply(addr, &apply_path("s1", "drakit"), &no_node).await,
        422,
        "Invalid",
    );
    let mut both = body.clone();
    both["spec"]["allNodes"] = json!(true);
    assert_status(
        &http::apply(addr, &apply_path("s1", "drakit"), &both).await,
        422,
        "Invalid",
    );
    assert!(api.slices().is_empty());

    // Another manager changing the spec conflicts unless forced.
    assert_eq!(
        http::apply(addr, &apply_path("s1", "drakit"), &body)
            .await
            .status,
        201
    );
    let changed = slice("s1", "node-1", &["eth9"]);
    let r = http::apply(addr, &apply_path("s1", "intruder"), &changed).await;
    let s = assert_status(&r, 409, "Conflict");
    assert!(s["message"].as_str().unwrap().contains("drakit"), "{s}");
    let r = http::apply(
        addr,
        &format!("{}&force=true", apply_path("s1", "intruder")),
        &changed,
    )
    .await;
    assert_eq!(r.status, 200);

    // A stale resourceVersion in the applied object conflicts.
    let mut stale = body.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    assert_status(
        &http::apply(addr, &apply_path("s1", "intruder"), &stale).await,
        409,
        "Conflict",
    );

    // Create via POST twice: AlreadyExists.
    let r = http::send_json(addr, "POST", SLICES, "application/json", &body).await;
    assert_status(&r, 409, "AlreadyExists");
}

#[tokio::test]
async fn slices_list_with_selectors_and_delete() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    for (name, node) in [("a", "node-1"), ("b", "node-1"), ("c", "node-2")] {
        assert_eq!(
            http::apply(
                addr,
                &apply_path(name, "drakit"),
                &slice(name, node, &["eth1"])
            )
            .await
            .status,
            201
        );
    }
    let mut other_driver = slice("d", "node-1", &["eth1"]);
    other_driver["spec"]["driver"] = json!("cpu.drakit.dev");
    assert_eq!(
        http::apply(addr, &apply_path("d", "drakit"), &other_driver)
            .await
            .status,
        201
    );

    let names = |r: &Reply| -> Vec<String> {
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = http::get(addr, SLICES).await;
    assert_eq!(all.status, 200);
    let v = all.json();
    assert_eq!(v["kind"], "ResourceSliceList");
    assert_eq!(v["apiVersion"], "resource.k8s.io/v1");
    assert!(v["metadata"]["resourceVersion"].as_str().is_some());
    assert_eq!(names(&all), ["a", "b", "c", "d"]);

    let sel = http::get(
        addr,
        &format!("{SLICES}?fieldSelector=spec.nodeName%3Dnode-1%2Cspec.driver%3D{DRIVER}"),
    )
    .await;
    assert_eq!(names(&sel), ["a", "b"]);
    let sel = http::get(addr, &format!("{SLICES}?labelSelector=node%3Dnode-2")).await;
    assert_eq!(names(&sel), ["c"]);
    let bad = http::get(addr, &format!("{SLICES}?fieldSelector=spec.color%3Dred")).await;
    assert_status(&bad, 400, "BadRequest");

    // Delete one: the object comes back; then it is gone.
    let del = http::request(addr, "DELETE", &format!("{SLICES}/a"), None, b"")
        .await
        .unwrap();
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["metadata"]["name"], "a");
    assert_status(
        &http::get(addr, &format!("{SLICES}/a")).await,
        404,
        "NotFound",
    );
    assert_status(
        &http::request(addr, "DELETE", &format!("{SLICES}/a"), None, b"")
            .await
            .unwrap(),
        404,
        "NotFound",
    );

    // A UID precondition that does not match.
    let pre =
        json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-it"}});
    let r = http::send_json(
        addr,
        "DELETE",
        &format!("{SLICES}/b"),
        "application/json",
        &pre,
    )
    .await;
    assert_status(&r, 409, "Conflict");

    // Delete the collection for node-1 + this driver: only b goes.
    let r = http::request(
        addr,
        "DELETE",
        &format!("{SLICES}?fieldSelector=spec.nodeName%3Dnode-1%2Cspec.driver%3D{DRIVER}"),
        None,
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(names(&r), ["b"]);
    let left: Vec<String> = api
        .slices()
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["c", "d"]);
}

fn status_apply(devices: Value) -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": { "name": "c1", "namespace": "default" },
        "status": { "devices": devices }
    })
}

#[tokio::test]
async fn claim_status_apply_merges_by_device_and_manager() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    api.insert_claim(
        &ClaimBuilder::new("default", "c1")
            .device(DRIVER, "node-1", "eth1", "a")
            .device(DRIVER, "node-1", "eth2", "b")
            .device("cpu.drakit.dev", "node-1", "cpu0", "c")
            .build(),
    )
    .unwrap();
    let path = |m: &str| format!("{CLAIMS}/c1/status?fieldManager={m}&force=true");
    let net = |dev: &str, ip: &str| {
        json!({
            "driver": DRIVER, "pool": "node-1", "device": dev,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Configured", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "networkData": {"interfaceName": "net1", "ips": [ip], "hardwareAddress": "02:00:00:00:00:01"}
        })
    };

    let r = http::apply(
        addr,
        &path(DRIVER),
        &status_apply(json!([
            net("eth1", "192.0.2.5/24"),
            net("eth2", "2001:db8::5/64")
        ])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let cpu = json!({"driver": "cpu.drakit.dev", "pool": "node-1", "device": "cpu0", "data": {"cpus": "2-3"}});
    let r = http::apply(addr, &path("cpu.drakit.dev"), &status_apply(json!([cpu]))).await;
    assert_eq!(r.status, 200);
    let devices = r.json()["status"]["devices"].as_array().unwrap().clone();
    assert_eq!(devices.len(), 3, "{devices:?}");

    // The net manager drops eth2: only its own entry goes; the allocation is untouched.
    let r = http::apply(
        addr,
        &path(DRIVER),
        &status_apply(json!([net("eth1", "192.0.2.6/24")])),
    )
    .await;
    assert_eq!(r.status, 200);
    let claim = api.claim("default", "c1").unwrap();
    let status = claim.status.unwrap();
    let devs = status.devices.unwrap();
    let names: Vec<&str> = devs.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(names, ["eth1", "cpu0"]);
    assert_eq!(
        devs[0].network_data.as_ref().unwrap().ips.as_ref().unwrap()[0],
        "192.0.2.6/24"
    );
    assert_eq!(
        status
            .allocation
            .unwrap()
            .devices
            .unwrap()
            .results
            .unwrap()
            .len(),
        3
    );

    // Not allocated, non-canonical IP, duplicate entry: 422 with the field named.
    let r = http::apply(
        addr,
        &path(DRIVER),
        &status_apply(json!([net("eth7", "192.0.2.5/24")])),
    )
    .await;
    let s = assert_status(&r, 422, "Invalid");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("net.drakit.dev/node-1/eth7 is not in status.allocation"),
        "{s}"
    );
    let r = http::apply(
        addr,
        &path(DRIVER),
        &status_apply(json!([net("eth1", "2001:DB8::5/64")])),
    )
    .await;
    let s = assert_status(&r, 422, "Invalid");
    assert_eq!(
        s["details"]["causes"][0]["field"],
        "status.devices[0].networkData.ips[0]"
    );
    let r = http::apply(
        addr,
        &path(DRIVER),
        &status_apply(json!([
            net("eth1", "192.0.2.5/24"),
            net("eth1", "192.0.2.5/24")
        ])),
    )
    .await;
    assert_status(&r, 422, "Invalid");

    // Without force, another manager rewriting the net entry conflicts.
    let r = http::apply(
        addr,
        &format!("{CLAIMS}/c1/status?fieldManager=other"),
        &status_apply(json!([net("eth1", "192.0.2.9/24")])),
    )
    .await;
    assert_status(&r, 409, "Conflict");

    // Status apply on a missing claim: 404.
    let r = http::apply(addr, &format!("{CLAIMS}/nope/status?fieldManager=x"), &json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "nope"}, "status": {}
    })).await;
    assert_status(&r, 404, "NotFound");

    // Merge patch on status works too and never touches the spec.
    let r = http::send_json(
        addr,
        "PATCH",
        &format!("{CLAIMS}/c1/status"),
        "application/merge-patch+json",
        &json!({"status": {"devices": null}, "spec": {"devices": null}}),
    )
    .await;
    assert_eq!(r.status, 200);
    let claim = api.claim("default", "c1").unwrap();
    assert!(claim.status.unwrap().devices.is_none());
    assert!(claim.spec.devices.is_some());
}

#[tokio::test]
async fn request_log_records_exact_shapes() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    let body = slice("s1", "node-1", &["eth1"]);
    http::apply(
        addr,
        &format!("{}&force=true", apply_path("s1", "drakit")),
        &body,
    )
    .await;
    http::get(
        addr,
        &format!("{SLICES}?fieldSelector=spec.nodeName%3Dnode-1"),
    )
    .await;

    let log = api.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "PATCH");
    assert_eq!(log[0].path, format!("{SLICES}/s1"));
    assert_eq!(log[0].param("fieldManager"), Some("drakit"));
    assert_eq!(log[0].param("force"), Some("true"));
    assert_eq!(
        log[0].content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(log[0].body_json().unwrap(), body);
    assert_eq!(log[0].status, 201);
    assert_eq!(log[1].raw_query, "fieldSelector=spec.nodeName%3Dnode-1");
    assert_eq!(log[1].param("fieldSelector"), Some("spec.nodeName=node-1"));
    assert_eq!(api.requests_matching("PATCH", "/resourceslices/").len(), 1);
    api.clear_requests();
    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn injected_faults_and_latency() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    api.insert_node(&node("node-1")).unwrap();

    api.fail_next(2, Fault::status(503).retry_after(1));
    for _ in 0..2 {
        let r = http::get(addr, "/api/v1/nodes/node-1").await;
        let s = assert_status(&r, 503, "ServiceUnavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(s["details"]["retryAfterSeconds"], 1);
    }
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);

    // Only PATCHes to slices fail; the GET in between is served.
    api.fail_next(
        1,
        Fault::too_many_requests(2)
            .method("PATCH")
            .path_contains("/resourceslices/"),
    );
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);
    let r = http::apply(
        addr,
        &apply_path("s1", "drakit"),
        &slice("s1", "node-1", &["eth1"]),
    )
    .await;
    assert_status(&r, 429, "TooManyRequests");
    assert_eq!(r.header("retry-after"), Some("2"));
    let r = http::apply(
        addr,
        &apply_path("s1", "drakit"),
        &slice("s1", "node-1", &["eth1"]),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(api.requests().iter().filter(|r| r.injected).count(), 3);

    api.fail_next(1, Fault::status(500));
    assert_status(
        &http::get(addr, "/api/v1/nodes/node-1").await,
        500,
        "InternalError",
    );
    api.fail_next(5, Fault::status(500));
    api.clear_faults();
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);

    // Latency delays but still serves (a lower bound, which sleeping guarantees).
    api.set_latency(Duration::from_millis(100));
    let start = std::time::Instant::now();
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(100));
    api.set_latency(Duration::ZERO);
}

#[tokio::test]
async fn going_down_and_coming_back() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    api.insert_node(&node("node-1")).unwrap();
    assert!(api.is_up());
    api.go_down();
    assert!(!api.is_up());
    let refused = http::request(addr, "GET", "/api/v1/nodes/node-1", None, b"").await;
    assert!(refused.is_err(), "served while down: {refused:?}");
    api.come_back().await.unwrap();
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);
    // State survives the downtime.
    assert!(api.node("node-1").is_some());

    // The HTTP control: down for a while, then back by itself.
    let r = http::send_json(
        addr,
        "POST",
        "/_drakit/down",
        "application/json",
        &json!({"millis": 300}),
    )
    .await;
    assert_eq!(r.status, 202);
    api.wait_for("the server to go down", Duration::from_secs(10), |a| {
        (!a.is_up()).then_some(())
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http::request(addr, "GET", "/api/v1/nodes/node-1", None, b"").await {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn control_endpoints_seed_and_inspect() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    let claim = serde_json::to_value(
        ClaimBuilder::new("ns1", "c9")
            .uid("uid-c9")
            .device(DRIVER, "p", "d", "r")
            .build(),
    )
    .unwrap();
    let r = http::send_json(addr, "POST", "/_drakit/objects", "application/json", &claim).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["metadata"]["uid"], "uid-c9");
    assert_eq!(
        api.claim("ns1", "c9").unwrap().metadata.uid.as_deref(),
        Some("uid-c9")
    );
    assert!(api.raw(Resource::ResourceClaims, "ns1", "c9").is_some());

    let r = http::send_json(
        addr,
        "POST",
        "/_drakit/faults",
        "application/json",
        &json!({"status": 503, "count": 1, "retryAfter": 3}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = http::get(
        addr,
        "/apis/resource.k8s.io/v1/namespaces/ns1/resourceclaims/c9",
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("3"));

    let log = http::get(addr, "/_drakit/requests").await.json();
    assert_eq!(
        log.as_array().unwrap().len(),
        1,
        "control requests are not logged: {log}"
    );
    assert_eq!(log[0]["status"], 503);
    assert_eq!(log[0]["injected"], true);
    let objects = http::get(addr, "/_drakit/objects").await.json();
    assert_eq!(objects.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn kubeconfig_points_at_the_server() {
    let api = ApiServerSim::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(&format!("server: http://127.0.0.1:{}", api.addr().port())),
        "{text}"
    );
    let parsed: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(parsed["current-context"].as_str(), Some("drakit-sim"));
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    let rv = api.resource_version();
    http::apply(
        addr,
        &apply_path("w1", "drakit"),
        &slice("w1", "node-1", &["eth1"]),
    )
    .await;
    http::apply(
        addr,
        &apply_path("w2", "drakit"),
        &slice("w2", "node-2", &["eth1"]),
    )
    .await;
    http::apply(
        addr,
        &apply_path("w1", "drakit"),
        &slice("w1", "node-1", &["eth1", "eth2"]),
    )
    .await;
    http::request(addr, "DELETE", &format!("{SLICES}/w1"), None, b"")
        .await
        .unwrap();

    // The watch ends by itself after timeoutSeconds; everything after `rv` for node-1 is replayed.
    let r = http::get(
        addr,
        &format!("{SLICES}?watch=true&resourceVersion={rv}&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dnode-1"),
    )
    .await;
    assert_eq!(r.status, 200);
    let events: Vec<Value> = String::from_utf8(r.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    assert!(
        events
            .iter()
            .all(|e| e["object"]["metadata"]["name"] == "w1")
    );
    assert_eq!(events[1]["object"]["metadata"]["generation"], 2);
}

#[tokio::test]
async fn pool_view_follows_generations() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    let with_pool = |name: &str, generation: i64, count: i64, devices: &[&str]| {
        let mut s = slice(name, "node-1", devices);
        s["spec"]["pool"] =
            json!({ "name": "node-1", "generation": generation, "resourceSliceCount": count });
        s
    };
    assert_eq!(api.pool(DRIVER, "node-1").generation, None);
    // Generation 1 in two slices: incomplete until both are there.
    http::apply(
        addr,
        &apply_path("p-a", "drakit"),
        &with_pool("p-a", 1, 2, &["eth1"]),
    )
    .await;
    assert!(!api.pool(DRIVER, "node-1").complete);
    http::apply(
        addr,
        &apply_path("p-b", "drakit"),
        &with_pool("p-b", 1, 2, &["eth2"]),
    )
    .await;
    let pool = api.pool(DRIVER, "node-1");
    assert!(pool.complete);
    assert_eq!(pool.devices, ["eth1", "eth2"]);
    // Generation 2 in one slice: the old slice of generation 1 no longer counts.
    http::apply(
        addr,
        &apply_path("p-a", "drakit"),
        &with_pool("p-a", 2, 1, &["eth1", "eth3"]),
    )
    .await;
    let pool = api.pool(DRIVER, "node-1");
    assert_eq!(pool.generation, Some(2));
    assert!(pool.complete);
    assert_eq!(pool.devices, ["eth1", "eth3"]);
    assert_eq!(api.slices_for("node-1", DRIVER).len(), 2);
    assert!(api.slices_for("node-2", DRIVER).is_empty());
}
