//! The two binaries as processes: `apiserver-sim` serves and takes seeds; `kubelet-sim prepare`
//! talks to a fake plugin and prints per-claim results.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{FakeOptions, FakePlugin, http};

/// Kills (and reaps) the child on drop, so a failing assertion does not leak the process.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn apiserver_sim_process_serves_seeds_and_writes_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(
        &seed,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n---\n\
         apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\nmetadata:\n  name: c1\n  namespace: default\n  uid: uid-c1\nspec: {}\n",
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_apiserver-sim"))
            .arg("--seed")
            .arg(&seed)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    // The first line comes once the server listens; read it off the runtime's threads.
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let first = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&first).unwrap();
    let url = info["url"].as_str().unwrap();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    assert!(std::fs::read_to_string(&kubeconfig).unwrap().contains(url));

    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);
    let claim = http::get(
        addr,
        "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/c1",
    )
    .await;
    assert_eq!(claim.status, 200);
    assert_eq!(claim.json()["metadata"]["uid"], "uid-c1");
    assert_eq!(http::get(addr, "/version").await.status, 200);
}

#[tokio::test]
async fn kubelet_sim_process_prepares_through_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let _plugin = FakePlugin::start(
        &registry,
        &dir.path().join("plugins"),
        FakeOptions::new("net.drakit.dev"),
    )
    .await;
    // The process gives up by itself after --wait-secs; the plugin keeps serving on this runtime.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelet-sim"));
    cmd.arg("--registry-dir")
        .arg(&registry)
        .arg("--wait-secs")
        .arg("30")
        .args(["prepare", "--driver", "net.drakit.dev"])
        .args([
            "--claim",
            "default/good/uid-1",
            "--claim",
            "default/bad/uid-2",
        ])
        .args(["--api-version", "v1beta1"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    // One claim failed: exit status 1, both results printed.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["uid-1"]["devices"][0]["deviceName"], "dev-good");
    assert_eq!(v["uid-1"]["devices"][0]["shareID"], serde_json::Value::Null);
    assert!(v["uid-2"]["error"].as_str().unwrap().contains("refused"));
}
