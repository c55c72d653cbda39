//! The node harness: layout, kubeconfig, Node object, kubelet wired to the stand-in, dump.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{FakeOptions, FakePlugin};
use drakit_e2e::kubelet::{ClaimRef, RegistrationEvent};
use drakit_e2e::node::{NodeHarness, NodeHarnessConfig};

#[tokio::test]
async fn node_harness_wires_kubelet_and_api_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = NodeHarness::start(NodeHarnessConfig::new(tmp.path(), "node-1"))
        .await
        .unwrap();
    assert!(
        node.registry_dir
            .ends_with("var/lib/kubelet/plugins_registry")
    );
    assert!(node.plugins_dir.is_dir());
    assert!(node.api.node("node-1").is_some());
    let kubeconfig = std::fs::read_to_string(&node.kubeconfig).unwrap();
    assert!(kubeconfig.contains(&node.api.url()));
    node.kubelet
        .wait_for_event(Duration::from_secs(20), |e| {
            matches!(
                e,
                RegistrationEvent::SlicesWiped {
                    driver: None,
                    result: Ok(200)
                }
            )
        })
        .await
        .unwrap();

    let plugin = FakePlugin::start(
        &node.registry_dir,
        &node.plugins_dir,
        FakeOptions::new("net.drakit.dev"),
    )
    .await;
    node.kubelet
        .wait_for_driver("net.drakit.dev", Duration::from_secs(20))
        .await
        .unwrap();
    let r = node
        .kubelet
        .prepare("net.drakit.dev", &[ClaimRef::new("default", "c", "uid-c")])
        .await
        .unwrap();
    assert!(r["uid-c"].is_ok());

    // A kubelet restart registers the plugin again from its socket.
    node.restart_kubelet().await.unwrap();
    node.kubelet
        .wait_for_driver("net.drakit.dev", Duration::from_secs(20))
        .await
        .unwrap();
    let notes = plugin.notifications(2).await;
    assert!(notes.iter().all(|n| n.plugin_registered));

    let dump = node.dump();
    assert!(dump.contains("registered #"), "{dump}");
    assert!(dump.contains("DELETE /apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3Dnode-1 -> 200"), "{dump}");
    assert!(dump.contains("Node {"), "{dump}");
}
