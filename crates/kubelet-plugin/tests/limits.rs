//! The kubelet plugin's own sockets and size limits: registration and DRA sockets are 0600 and
//! owned by the plugin's uid; a DRA request over `MAX_REQUEST_BYTES` is refused by its length;
//! an opaque config over the API's 10,240-byte limit is refused naming claim, entry and field.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;
use drakit_e2e::apiserver::ClaimBuilder;
use drakit_e2e::kubelet::ClaimRef;
use drakit_kubelet_plugin::sockets::SocketPaths;
use drakit_proto::dra::v1::dra_plugin_client::DraPluginClient;
use drakit_proto::dra::v1::{Claim, NodePrepareResourcesRequest};
use drakit_proto::uds::server::MAX_REQUEST_BYTES;
use serde_json::json;

fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_dra_sockets_are_private() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    for driver in [NET, CPU, RUNTIME] {
        let paths = SocketPaths::new(&n.config.registry_dir, &n.config.plugins_dir, driver, None);
        for sock in [&paths.registration, &paths.dra] {
            let m = std::fs::symlink_metadata(sock).unwrap();
            assert!(m.file_type().is_socket(), "{}", sock.display());
            assert_eq!(
                m.permissions().mode() & 0o7777,
                0o600,
                "mode of {}",
                sock.display()
            );
            assert_eq!(m.uid(), own_uid(), "owner of {}", sock.display());
        }
    }
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_dra_request_is_refused() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    let paths = SocketPaths::new(&n.config.registry_dir, &n.config.plugins_dir, RUNTIME, None);
    let ch = drakit_proto::uds::connect(&paths.dra, Duration::from_secs(10))
        .await
        .unwrap();
    let mut dra = DraPluginClient::new(ch);
    let big = NodePrepareResourcesRequest {
        claims: vec![Claim {
            namespace: "default".into(),
            uid: "u".into(),
            name: "n".repeat(MAX_REQUEST_BYTES + 1),
        }],
    };
    let err = dra.node_prepare_resources(big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("the limit is: {MAX_REQUEST_BYTES} bytes")),
        "{err:?}"
    );
    // The plugin goes on serving, on that connection and for the kubelet.
    let small = NodePrepareResourcesRequest {
        claims: vec![Claim {
            namespace: "default".into(),
            uid: "missing-uid".into(),
            name: "missing".into(),
        }],
    };
    let r = dra
        .node_prepare_resources(small)
        .await
        .unwrap()
        .into_inner();
    assert!(
        !r.claims["missing-uid"].error.is_empty(),
        "a claim that does not exist fails alone: {r:?}"
    );
    n.node
        .api
        .insert_claim(
            &ClaimBuilder::new("default", "ok")
                .uid("ok-uid")
                .device(RUNTIME, NODE, "spec-edit-0", "edit")
                .config_from_claim(RUNTIME, &["edit"], runtime_config(json!({})))
                .reserved_for_pod("pod-a", "pod-uid-a")
                .build(),
        )
        .unwrap();
    let r = n
        .node
        .kubelet
        .prepare(RUNTIME, &[ClaimRef::new("default", "ok", "ok-uid")])
        .await
        .unwrap();
    assert!(r["ok-uid"].is_ok(), "{r:?}");
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_opaque_config_is_refused_naming_claim_and_field() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    // The API server refuses such a claim; the stand-in stores it as given, so the node's own
    // check is what is tested here.
    let annotations: serde_json::Map<String, serde_json::Value> = (0..400)
        .map(|i| (format!("example.com/k{i}"), json!("v".repeat(20))))
        .collect();
    let config = runtime_config(json!({ "annotations": annotations }));
    let len = serde_json::to_vec(&config).unwrap().len();
    assert!(len > 10_240, "{len}");
    n.node
        .api
        .insert_claim(
            &ClaimBuilder::new("default", "big")
                .uid("big-uid")
                .device(RUNTIME, NODE, "spec-edit-0", "edit")
                .config_from_claim(RUNTIME, &["edit"], config)
                .reserved_for_pod("pod-a", "pod-uid-a")
                .build(),
        )
        .unwrap();
    let r = n
        .node
        .kubelet
        .prepare(RUNTIME, &[ClaimRef::new("default", "big", "big-uid")])
        .await
        .unwrap();
    let e = r["big-uid"].clone().unwrap_err();
    assert!(e.contains("claim default/big"), "names the claim: {e}");
    assert!(e.contains("config[0] (FromClaim)"), "names the entry: {e}");
    assert!(
        e.contains(&format!(
            "parameters are {len} bytes, more than the limit of 10240 bytes"
        )),
        "names the field and the limit: {e}"
    );
    assert!(n.cdi_files().is_empty(), "{:?}", n.cdi_files());
    p.stop().await.unwrap();
}
