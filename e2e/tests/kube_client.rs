//! A real kube 5 client, configured from the kubeconfig the stand-in writes, does what drakit's
//! kubelet plugin does: read a claim, server-side-apply slices, list them with a field selector,
//! delete, apply claim status, and watch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use drakit_e2e::apiserver::{ApiServerSim, ClaimBuilder, Fault, node};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

const DRIVER: &str = "net.drakit.dev";

async fn client(api: &ApiServerSim, dir: &std::path::Path) -> kube::Client {
    // Two rustls providers are linked in a workspace build; choose one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = dir.join("kubeconfig");
    api.write_kubeconfig(&path).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn slice(name: &str, node: &str, devices: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": { "name": name },
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": { "name": node, "generation": 0, "resourceSliceCount": 1 },
            "devices": devices.iter().map(|d| json!({ "name": d })).collect::<Vec<_>>()
        }
    })
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn kube_client_round_trip() {
    let api = ApiServerSim::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&api, dir.path()).await;
    api.insert_node(&node("node-1")).unwrap();
    api.insert_claim(
        &ClaimBuilder::new("default", "c1")
            .uid("0f0e0d0c-0b0a-4908-8706-050403020100")
            .device(DRIVER, "node-1", "eth1", "nic")
            .reserved_for_pod("pod-a", "pod-uid-a")
            .build(),
    )
    .unwrap();

    // GET node and claim.
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes.get("node-1").await.unwrap().metadata.name.as_deref(),
        Some("node-1")
    );
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let claim = claims.get("c1").await.unwrap();
    assert_eq!(
        claim.metadata.uid.as_deref(),
        Some("0f0e0d0c-0b0a-4908-8706-050403020100")
    );
    let err = claims.get("missing").await.unwrap_err();
    assert_eq!(api_code(&err), Some(404), "{err}");

    // Server-side apply two slices on two nodes.
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let pp = PatchParams::apply(DRIVER).force();
    let s1 = slices
        .patch(
            "node-1-net",
            &pp,
            &Patch::Apply(slice("node-1-net", "node-1", &["eth1", "eth2"])),
        )
        .await
        .unwrap();
    assert_eq!(s1.metadata.generation, Some(1));
    slices
        .patch(
            "node-2-net",
            &pp,
            &Patch::Apply(slice("node-2-net", "node-2", &["eth1"])),
        )
        .await
        .unwrap();
    let s1b = slices
        .patch(
            "node-1-net",
            &pp,
            &Patch::Apply(slice("node-1-net", "node-1", &["eth1"])),
        )
        .await
        .unwrap();
    assert_eq!(s1b.metadata.generation, Some(2));
    let applied = api.requests_matching("PATCH", "/resourceslices/node-1-net");
    assert_eq!(applied[0].param("fieldManager"), Some(DRIVER));
    assert_eq!(applied[0].param("force"), Some("true"));
    assert_eq!(
        applied[0].content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );

    // List with a field selector.
    let lp = ListParams::default().fields(&format!("spec.nodeName=node-1,spec.driver={DRIVER}"));
    let listed = slices.list(&lp).await.unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["node-1-net"]);
    assert!(listed.metadata.resource_version.is_some());

    // Invalid slice: kube surfaces the 422.
    let err = slices
        .patch(
            "bad",
            &pp,
            &Patch::Apply(slice("bad", "node-1", &["Not_A_Label"])),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(422), "{err}");

    // Delete one, then the collection for node-2.
    slices
        .delete("node-1-net", &DeleteParams::default())
        .await
        .unwrap();
    assert!(api.slice("node-1-net").is_none());
    let err = slices
        .delete("node-1-net", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(404));
    slices
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().fields("spec.nodeName=node-2"),
        )
        .await
        .unwrap();
    assert!(api.slices().is_empty());

    // Apply claim status as the driver does.
    let status = json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": { "name": "c1", "namespace": "default" },
        "status": { "devices": [{
            "driver": DRIVER, "pool": "node-1", "device": "eth1",
            "networkData": { "interfaceName": "net1", "ips": ["10.1.2.3/24"], "hardwareAddress": "02:11:22:33:44:55" }
        }]}
    });
    let updated = claims
        .patch_status(
            "c1",
            &PatchParams::apply(DRIVER).force(),
            &Patch::Apply(status),
        )
        .await
        .unwrap();
    let devices = updated.status.unwrap().devices.unwrap();
    assert_eq!(
        devices[0]
            .network_data
            .as_ref()
            .unwrap()
            .interface_name
            .as_deref(),
        Some("net1")
    );
    let stored = api.claim("default", "c1").unwrap();
    assert_eq!(
        stored.status.unwrap().reserved_for.unwrap()[0].uid,
        "pod-uid-a"
    );

    // Merge and strategic patches of the status work too.
    let cleared = claims
        .patch_status(
            "c1",
            &PatchParams::default(),
            &Patch::Strategic(json!({ "status": { "devices": null } })),
        )
        .await
        .unwrap();
    assert!(cleared.status.unwrap().devices.is_none());
    let merged = claims
        .patch_status(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "devices": [{ "driver": DRIVER, "pool": "node-1", "device": "eth1" }] } })),
        )
        .await
        .unwrap();
    assert_eq!(merged.status.unwrap().devices.unwrap().len(), 1);
    let ct = api
        .requests_matching("PATCH", "/c1/status")
        .iter()
        .map(|r| r.content_type.clone().unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(
        ct,
        [
            "application/apply-patch+yaml",
            "application/strategic-merge-patch+json",
            "application/merge-patch+json"
        ]
    );
}

#[tokio::test]
async fn kube_client_sees_faults_and_recovers() {
    let api = ApiServerSim::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&api, dir.path()).await;
    api.insert_node(&node("node-1")).unwrap();
    let nodes: Api<Node> = Api::all(client);

    // kube 5 retries 429/503/504 itself (honouring backoff): the call succeeds on the third try.
    api.fail_next(2, Fault::status(503).retry_after(0));
    assert!(nodes.get("node-1").await.is_ok());
    let statuses: Vec<u16> = api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    // A 500 is not retried: the caller sees it.
    api.fail_next(1, Fault::status(500));
    let err = nodes.get("node-1").await.unwrap_err();
    assert_eq!(api_code(&err), Some(500), "{err}");
    assert!(nodes.get("node-1").await.is_ok());

    api.go_down();
    assert!(nodes.get("node-1").await.is_err());
    api.come_back().await.unwrap();
    assert!(nodes.get("node-1").await.is_ok());
}

#[tokio::test]
async fn kube_runtime_watcher_sees_slice_changes() {
    watcher_sees_slice_changes(false).await;
}

#[tokio::test]
async fn kube_runtime_watcher_with_streaming_lists() {
    watcher_sees_slice_changes(true).await;
}

async fn watcher_sees_slice_changes(streaming: bool) {
    let api = ApiServerSim::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&api, dir.path()).await;
    let slices: Api<ResourceSlice> = Api::all(client);
    let pp = PatchParams::apply(DRIVER).force();
    slices
        .patch(
            "before",
            &pp,
            &Patch::Apply(slice("before", "node-1", &["eth1"])),
        )
        .await
        .unwrap();

    let mut config = kube::runtime::watcher::Config::default().fields("spec.nodeName=node-1");
    if streaming {
        config = config.streaming_lists();
    }
    let mut events = kube::runtime::watcher(slices.clone(), config).boxed();
    let mut seen = Vec::new();
    let deadline = Duration::from_secs(20);
    // Initial list: `before` shows up.
    let mut initial = Vec::new();
    tokio::time::timeout(deadline, async {
        while let Some(ev) = events.next().await {
            match ev.unwrap() {
                kube::runtime::watcher::Event::InitApply(s) => {
                    initial.push(s.metadata.name.unwrap())
                }
                kube::runtime::watcher::Event::InitDone => break,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(initial, ["before"]);
    if streaming {
        let watch = &api.requests_matching("GET", "/resourceslices")[0];
        assert_eq!(watch.param("sendInitialEvents"), Some("true"));
    }

    slices
        .patch(
            "after",
            &pp,
            &Patch::Apply(slice("after", "node-1", &["eth1"])),
        )
        .await
        .unwrap();
    slices
        .patch(
            "elsewhere",
            &pp,
            &Patch::Apply(slice("elsewhere", "node-2", &["eth1"])),
        )
        .await
        .unwrap();
    slices
        .delete("before", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(deadline, async {
        while let Some(ev) = events.next().await {
            match ev.unwrap() {
                kube::runtime::watcher::Event::Apply(s) => {
                    seen.push(format!("apply {}", s.metadata.name.unwrap()))
                }
                kube::runtime::watcher::Event::Delete(s) => {
                    seen.push(format!("delete {}", s.metadata.name.unwrap()));
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen, ["apply after", "delete before"]);
}
