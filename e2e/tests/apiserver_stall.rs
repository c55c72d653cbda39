//! The stand-in's stall fault: a matching request is held for the delay, then served (status 0)
//! or answered with the fault's status; a client that gives up first leaves it unserved. Also
//! through the HTTP control endpoint (`delayMillis`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::http;
use drakit_e2e::apiserver::{ApiServerSim, Fault, node};
use serde_json::json;

#[tokio::test]
async fn stalled_requests_are_held_then_served_or_failed() {
    let api = ApiServerSim::start().await.unwrap();
    let addr = api.addr();
    api.insert_node(&node("node-1")).unwrap();

    // Held, then served; only the matching request is held.
    api.fail_next(
        1,
        Fault::stall(Duration::from_millis(300)).path_contains("/nodes/node-1"),
    );
    let t = Instant::now();
    assert_eq!(http::get(addr, "/api/v1/nodes").await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(300), "not held");
    let t = Instant::now();
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300), "held");
    let t = Instant::now();
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(300), "one request only");

    // Held, then failed.
    api.fail_next(1, Fault::status(500).delay(Duration::from_millis(200)));
    let t = Instant::now();
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 500);
    assert!(t.elapsed() >= Duration::from_millis(200));

    // A client that gives up first: the request is never served.
    api.clear_requests();
    api.fail_next(1, Fault::stall(Duration::from_secs(30)));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        http::get(addr, "/api/v1/nodes/node-1"),
    )
    .await;
    assert!(gave_up.is_err(), "the stalled request was answered");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        api.requests().is_empty(),
        "a dropped request is not logged as served: {:?}",
        api.requests()
    );

    // Over the HTTP control: delayMillis without a status holds and serves.
    let r = http::send_json(
        addr,
        "POST",
        "/_drakit/faults",
        "application/json",
        &json!({"delayMillis": 250, "pathContains": "/nodes/node-1"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let t = Instant::now();
    assert_eq!(http::get(addr, "/api/v1/nodes/node-1").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
    let r = http::send_json(
        addr,
        "POST",
        "/_drakit/faults",
        "application/json",
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 400);
}
