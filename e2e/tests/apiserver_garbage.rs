//! Malformed requests get 4xx answers, never a panic and never a dead server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::http;
use drakit_e2e::apiserver::{ApiServerSim, ClaimBuilder, node};

const SLICE: &str = "/apis/resource.k8s.io/v1/resourceslices/s1?fieldManager=x";
const STATUS: &str =
    "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/c1/status?fieldManager=x";

/// A tiny deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() & 0xff) as u8).collect()
    }
}

#[tokio::test]
async fn malformed_requests_never_panic() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    api.insert_node(&node("node-1")).unwrap();
    api.insert_claim(
        &ClaimBuilder::new("default", "c1")
            .device("d.x", "p", "dev", "r")
            .build(),
    )
    .unwrap();

    let apply = "application/apply-patch+yaml";
    let merge = "application/merge-patch+json";
    let mut cases: Vec<(&str, String, Option<&str>, Vec<u8>)> = vec![
        ("PATCH", SLICE.into(), Some(apply), b"".to_vec()),
        ("PATCH", SLICE.into(), Some(apply), b"null".to_vec()),
        ("PATCH", SLICE.into(), Some(apply), b"[]".to_vec()),
        ("PATCH", SLICE.into(), Some(apply), b"{}".to_vec()),
        ("PATCH", SLICE.into(), Some(apply), br#"{"apiVersion":1,"kind":[]}"#.to_vec()),
        ("PATCH", SLICE.into(), Some(apply), br#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceSlice","spec":5}"#.to_vec()),
        ("PATCH", SLICE.into(), Some(apply), br#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceSlice","metadata":"x"}"#.to_vec()),
        ("PATCH", SLICE.into(), Some(apply), "[".repeat(10_000).into_bytes()),
        ("PATCH", SLICE.into(), Some(apply), b"a: &a [*a, *a]\nb: *a".to_vec()),
        ("PATCH", SLICE.into(), Some(merge), b"{}".to_vec()),
        ("PATCH", STATUS.into(), Some(apply), br#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","status":"x"}"#.to_vec()),
        ("PATCH", STATUS.into(), Some(apply), br#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","status":{"devices":"x"}}"#.to_vec()),
        ("PATCH", STATUS.into(), Some(apply), br#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","status":{"devices":[1,null,{"driver":7}]}}"#.to_vec()),
        ("PATCH", STATUS.into(), Some(apply), br#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","status":{"devices":[{"driver":"d.x","pool":"p","device":"dev","networkData":{"ips":["::ffff:1.2.3.4/200"]},"data":[1]}]}}"#.to_vec()),
        ("PATCH", STATUS.into(), Some(merge), br#"{"metadata":null,"status":[]}"#.to_vec()),
        ("PUT", STATUS.into(), Some("application/json"), br#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","metadata":{"name":"c1","resourceVersion":"x"}}"#.to_vec()),
        ("POST", "/apis/resource.k8s.io/v1/resourceslices".into(), Some("application/json"), br#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceSlice","metadata":{}}"#.to_vec()),
        ("DELETE", "/api/v1/nodes/node-1".into(), Some("application/json"), b"{not json".to_vec()),
        ("DELETE", "/api/v1/nodes/node-1".into(), Some("application/json"), br#"{"preconditions":{"uid":5}}"#.to_vec()),
        ("GET", "/apis/resource.k8s.io/v1/resourceslices?labelSelector=a%20in%20(".into(), None, vec![]),
        ("GET", "/apis/resource.k8s.io/v1/resourceslices?labelSelector=!!,%3D%3D".into(), None, vec![]),
        ("GET", "/apis/resource.k8s.io/v1/resourceslices?fieldSelector=%ff%fe".into(), None, vec![]),
        ("GET", "/apis/resource.k8s.io/v1/resourceslices?watch=true&resourceVersion=abc".into(), None, vec![]),
        ("GET", "/apis/resource.k8s.io/v1/namespaces//resourceclaims/".into(), None, vec![]),
        ("GET", "/apis/resource.k8s.io/v1/namespaces/%00/resourceclaims/%00".into(), None, vec![]),
        ("OPTIONS", "/api/v1/nodes".into(), None, vec![]),
        ("POST", "/_drakit/faults".into(), Some("application/json"), b"{\"status\":99999}".to_vec()),
        ("POST", "/_drakit/objects".into(), Some("application/json"), b"{\"kind\":\"Pod\"}".to_vec()),
    ];
    let mut rng = Lcg(0x5eed);
    for i in 0..64 {
        let n = (rng.next() % 512) as usize;
        let path = if i % 2 == 0 { SLICE } else { STATUS };
        let ct = if i % 3 == 0 { merge } else { apply };
        cases.push(("PATCH", path.into(), Some(ct), rng.bytes(n)));
    }

    for (method, path, ct, body) in &cases {
        let r = http::request(addr, method, path, *ct, body).await.unwrap();
        assert!(
            (200..500).contains(&r.status),
            "{method} {path} {:?}: {} {}",
            String::from_utf8_lossy(&body[..body.len().min(80)]),
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    // Still serving, state intact.
    assert_eq!(
        http::get(
            addr,
            "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/c1"
        )
        .await
        .status,
        200
    );
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a handler panicked");
}
