//! `/_drakit/*`: the seeding, inspection and fault controls over HTTP, for tests that run the
//! stand-in as a separate process (`apiserver-sim`). Not logged and never faulted.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, Response};
use serde_json::{Value, json};

use super::http::{Body, json_response};
use super::resource::Resource;
use super::status::ApiError;
use super::{Fault, RecordedRequest, Shared, lock};

fn request_json(r: &RecordedRequest) -> Value {
    json!({
        "method": r.method,
        "path": r.path,
        "query": r.raw_query,
        "contentType": r.content_type,
        "body": r.body,
        "status": r.status,
        "injected": r.injected,
    })
}

fn millis(body: &[u8]) -> Duration {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    Duration::from_millis(v.get("millis").and_then(Value::as_u64).unwrap_or(0))
}

fn err(e: ApiError) -> Response<Body> {
    json_response(e.code, &e.body)
}

pub(super) async fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    _query: &[(String, String)],
    body: &[u8],
) -> Response<Body> {
    match (method, path.trim_end_matches('/')) {
        (&Method::GET, "requests") => {
            let log: Vec<Value> = lock(&shared.log).iter().map(request_json).collect();
            json_response(200, &Value::Array(log))
        }
        (&Method::DELETE, "requests") => {
            lock(&shared.log).clear();
            json_response(200, &json!({}))
        }
        (&Method::GET, "objects") => {
            let store = shared.store();
            let all: Vec<Value> = Resource::ALL
                .into_iter()
                .flat_map(|r| store.all(r))
                .collect();
            json_response(200, &Value::Array(all))
        }
        (&Method::POST, "objects") => {
            let parsed: Result<Value, _> = serde_json::from_slice(body);
            let Ok(obj) = parsed else {
                return err(ApiError::bad_request("body must be a JSON object"));
            };
            match super::seed_raw(shared, obj) {
                Ok(v) => json_response(201, &v),
                Err(e) => err(e),
            }
        }
        (&Method::POST, "faults") => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let delay = v
                .get("delayMillis")
                .and_then(Value::as_u64)
                .map(Duration::from_millis);
            let status = v
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok());
            let Some(status) = status.or(delay.map(|_| 0)) else {
                return err(ApiError::bad_request(
                    "faults: `status` (HTTP code) or `delayMillis` is required",
                ));
            };
            let count = v.get("count").and_then(Value::as_u64).unwrap_or(1);
            let fault = Fault {
                status,
                delay,
                retry_after: v.get("retryAfter").and_then(Value::as_u64),
                method: v
                    .get("method")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_uppercase),
                path_contains: v
                    .get("pathContains")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            };
            let mut faults = lock(&shared.faults);
            faults
                .queue
                .push((usize::try_from(count).unwrap_or(usize::MAX), fault));
            json_response(200, &json!({}))
        }
        (&Method::DELETE, "faults") => {
            *lock(&shared.faults) = super::Faults::default();
            json_response(200, &json!({}))
        }
        (&Method::POST, "latency") => {
            lock(&shared.faults).latency = millis(body);
            json_response(200, &json!({}))
        }
        (&Method::POST, "down") => {
            let downtime = millis(body);
            let Some(lifecycle) = shared.lifecycle.get().and_then(std::sync::Weak::upgrade) else {
                return err(ApiError::new(
                    500,
                    "InternalError",
                    "server lifecycle unavailable",
                ));
            };
            // Answer first: going down drops this very connection.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                super::go_down_for(&lifecycle, downtime);
            });
            json_response(
                202,
                &json!({ "downForMillis": downtime.as_millis() as u64 }),
            )
        }
        _ => err(ApiError::path_not_found()),
    }
}
