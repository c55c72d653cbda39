//! The HTTP side: accept loop, routing, request log, faults, and the list/watch/get/write verbs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;

use super::resource::Resource;
use super::selector::{FieldSelector, LabelSelector, Selectors};
use super::status::ApiError;
use super::store::{Event, WriteOptions, Written};
use super::{RecordedRequest, Shared, control};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body accepted (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

pub(super) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// Accepts connections until aborted; aborting drops the listener and every open connection.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, req).await) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(error = %e, "connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(err: &ApiError) -> Response<Body> {
    let mut resp = json_response(err.code, &err.body);
    if let Some(s) = err.retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        resp.headers_mut().insert(RETRY_AFTER, v);
    }
    resp
}

/// Percent-decoding of a query component (`+` is a space).
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// What a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub resource: Resource,
    /// Empty for cluster-scoped resources; `None` for a cross-namespace list of a namespaced one.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
}

pub(crate) fn route(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let t = |resource, namespace: Option<&str>, name: Option<&str>, status| {
        Some(Target {
            resource,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            status,
        })
    };
    match segs.as_slice() {
        ["api", "v1", "nodes"] => t(Resource::Nodes, Some(""), None, false),
        ["api", "v1", "nodes", name] => t(Resource::Nodes, Some(""), Some(name), false),
        ["api", "v1", "nodes", name, "status"] => t(Resource::Nodes, Some(""), Some(name), true),
        ["apis", "resource.k8s.io", "v1", "resourceslices"] => {
            t(Resource::ResourceSlices, Some(""), None, false)
        }
        ["apis", "resource.k8s.io", "v1", "resourceslices", name] => {
            t(Resource::ResourceSlices, Some(""), Some(name), false)
        }
        ["apis", "resource.k8s.io", "v1", "resourceclaims"] => {
            t(Resource::ResourceClaims, None, None, false)
        }
        [
            "apis",
            "resource.k8s.io",
            "v1",
            "namespaces",
            ns,
            "resourceclaims",
        ] => t(Resource::ResourceClaims, Some(ns), None, false),
        [
            "apis",
            "resource.k8s.io",
            "v1",
            "namespaces",
            ns,
            "resourceclaims",
            name,
        ] => t(Resource::ResourceClaims, Some(ns), Some(name), false),
        [
            "apis",
            "resource.k8s.io",
            "v1",
            "namespaces",
            ns,
            "resourceclaims",
            name,
            "status",
        ] => t(Resource::ResourceClaims, Some(ns), Some(name), true),
        _ => None,
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let query = parse_query(&raw_query);
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("reading the request body: {e}"),
            ));
        }
    };

    if let Some(rest) = path.strip_prefix("/_drakit/") {
        return control::handle(&shared, &method, rest, &query, &body).await;
    }

    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let mut record = RecordedRequest {
        at: SystemTime::now(),
        method: method.to_string(),
        path: path.clone(),
        raw_query,
        query: query.clone(),
        content_type: content_type.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
        injected: false,
    };

    let fault = shared.take_fault(method.as_str(), &path);
    if let Some(delay) = fault.as_ref().and_then(|f| f.delay) {
        tokio::time::sleep(delay).await;
    }
    if let Some(fault) = fault.filter(|f| f.status != 0) {
        let err = ApiError::injected(
            fault.status,
            fault.retry_after,
            &format!("injected fault: {} for {method} {path}", fault.status),
        );
        record.status = err.code;
        record.injected = true;
        shared.record(record);
        return error_response(&err);
    }

    let response = match dispatch(
        &shared,
        &method,
        &path,
        &query,
        content_type.as_deref(),
        &body,
    ) {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    };
    record.status = response.status().as_u16();
    shared.record(record);
    shared.changes.bump();
    response
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn flag(query: &[(String, String)], name: &str) -> bool {
    matches!(param(query, name), Some("true" | "1"))
}

fn selectors(query: &[(String, String)], resource: Resource) -> Result<Selectors, ApiError> {
    let field = match param(query, "fieldSelector") {
        Some(s) => FieldSelector::parse(s, resource).map_err(ApiError::bad_request)?,
        None => FieldSelector::default(),
    };
    let label = match param(query, "labelSelector") {
        Some(s) => LabelSelector::parse(s).map_err(ApiError::bad_request)?,
        None => LabelSelector::default(),
    };
    Ok(Selectors { field, label })
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice::<Value>(body))
        .map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON or YAML: {e}"))
        })
}

fn write_options(query: &[(String, String)]) -> WriteOptions {
    WriteOptions {
        field_manager: param(query, "fieldManager").map(str::to_owned),
        force: flag(query, "force"),
        dry_run: param(query, "dryRun") == Some("All"),
    }
}

fn written(result: (Value, Written)) -> Response<Body> {
    let (v, w) = result;
    json_response(w.code(), &v)
}

fn list_body(resource: Resource, rv: u64, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": resource.api_version(),
        "kind": format!("{}List", resource.kind()),
        "metadata": { "resourceVersion": rv.to_string() },
        "items": items,
    })
}

fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    if path == "/version" || path == "/version/" {
        return Ok(json_response(
            200,
            &json!({
                "major": "1", "minor": "34", "gitVersion": "v1.34.0-drakit-e2e",
                "platform": "linux/amd64"
            }),
        ));
    }
    let target = route(path).ok_or_else(ApiError::path_not_found)?;
    let resource = target.resource;
    let ns = target.namespace.clone();
    let opts = write_options(query);
    match (method, &target.name) {
        (&Method::GET, None) => {
            let sel = selectors(query, resource)?;
            if flag(query, "watch") {
                return watch(shared, resource, ns, sel, query);
            }
            let store = shared.store();
            let items = store.list(resource, ns.as_deref(), &sel);
            Ok(json_response(
                200,
                &list_body(resource, store.resource_version(), items),
            ))
        }
        (&Method::GET, Some(name)) => {
            let v = shared
                .store()
                .get_or_404(resource, ns.as_deref().unwrap_or_default(), name)?;
            Ok(json_response(200, &v))
        }
        (&Method::POST, None) => {
            let ns = ns.ok_or_else(|| ApiError::method_not_allowed("POST"))?;
            let body = parse_body(body)?;
            Ok(written(shared.store().create(resource, &ns, body, &opts)?))
        }
        (&Method::PUT, Some(name)) => {
            let body = parse_body(body)?;
            let ns = ns.unwrap_or_default();
            Ok(written(shared.store().replace(
                resource,
                &ns,
                name,
                body,
                target.status,
                &opts,
            )?))
        }
        (&Method::PATCH, Some(name)) => {
            let ns = ns.unwrap_or_default();
            let ct = content_type.unwrap_or_default();
            let ct = ct.split(';').next().unwrap_or_default().trim();
            match ct {
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                    let body = parse_body(body)?;
                    Ok(written(shared.store().apply(
                        resource,
                        &ns,
                        name,
                        body,
                        target.status,
                        &opts,
                    )?))
                }
                // Strategic merge is taken as a JSON merge patch: for the fields drakit writes
                // (maps, and `listType=map` lists with several keys, which strategic merge
                // replaces whole) the two agree.
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    let body = parse_body(body)?;
                    Ok(written(shared.store().merge(
                        resource,
                        &ns,
                        name,
                        &body,
                        target.status,
                        &opts,
                    )?))
                }
                other => Err(ApiError::unsupported_media_type(other)),
            }
        }
        (&Method::DELETE, Some(name)) => {
            let options = if body.is_empty() {
                None
            } else {
                Some(parse_body(body)?)
            };
            let ns = ns.unwrap_or_default();
            let v = shared
                .store()
                .delete(resource, &ns, name, options.as_ref(), opts.dry_run)?;
            Ok(json_response(200, &v))
        }
        (&Method::DELETE, None) => {
            let sel = selectors(query, resource)?;
            let mut store = shared.store();
            let items = store.delete_collection(resource, ns.as_deref(), &sel, opts.dry_run);
            Ok(json_response(
                200,
                &list_body(resource, store.resource_version(), items),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

fn event_json(e: &Event) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": e.kind, "object": e.object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A watch: past events after `resourceVersion` (or synthetic ADDED events for every current
/// object when it is absent or "0", or with `sendInitialEvents=true`, which also ends them with
/// a bookmark marked `k8s.io/initial-events-end`), then live ones, until `timeoutSeconds`
/// (default 30 min).
fn watch(
    shared: &Arc<Shared>,
    resource: Resource,
    ns: Option<String>,
    sel: Selectors,
    query: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let timeout = param(query, "timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let send_initial = flag(query, "sendInitialEvents");
    let since =
        param(query, "resourceVersion").filter(|s| !s.is_empty() && *s != "0" && !send_initial);
    let relevant = move |e: &Event| {
        e.resource == resource
            && ns.as_deref().is_none_or(|ns| {
                e.object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    == ns
            })
            && sel.matches(&e.object)
    };
    let (backlog, mut live): (Vec<Bytes>, _) = {
        let store = shared.store();
        let live = store.subscribe();
        let backlog = match since {
            Some(rv) => {
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?;
                match store.events_since(rv) {
                    Some(events) => events
                        .iter()
                        .filter(|e| relevant(e))
                        .map(|e| event_json(e))
                        .collect(),
                    None => {
                        let gone = json!({
                            "type": "ERROR",
                            "object": {
                                "kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "reason": "Expired", "code": 410,
                                "message": format!("too old resource version: {rv} ({})", store.resource_version()),
                            }
                        });
                        let mut line = serde_json::to_vec(&gone).unwrap_or_default();
                        line.push(b'\n');
                        vec![Bytes::from(line)]
                    }
                }
            }
            None => {
                let mut lines: Vec<Bytes> = store
                    .list(resource, None, &Selectors::default())
                    .into_iter()
                    .map(|object| Event {
                        resource_version: 0,
                        resource,
                        kind: "ADDED",
                        object,
                    })
                    .filter(|e| relevant(e))
                    .map(|e| event_json(&e))
                    .collect();
                // Streaming lists: the end of the initial events is a marked bookmark.
                if send_initial {
                    lines.push(event_json(&Event {
                        resource_version: 0,
                        resource,
                        kind: "BOOKMARK",
                        object: json!({
                            "apiVersion": resource.api_version(),
                            "kind": resource.kind(),
                            "metadata": {
                                "resourceVersion": store.resource_version().to_string(),
                                "annotations": { "k8s.io/initial-events-end": "true" },
                            },
                        }),
                    }));
                }
                lines
            }
        };
        (backlog, live)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, live.recv()).await;
            match next {
                Ok(Ok(e)) => {
                    if relevant(&e) && tx.send(event_json(&e)).await.is_err() {
                        return;
                    }
                }
                // Fell behind: end the watch, the client re-lists.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => return,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(
            "fieldSelector=spec.nodeName%3Dnode-1%2Cspec.driver%3Dnet.drakit.dev&force=true&x=a+b&bad=%zz&end=%4",
        );
        assert_eq!(
            q[0],
            (
                "fieldSelector".into(),
                "spec.nodeName=node-1,spec.driver=net.drakit.dev".into()
            )
        );
        assert_eq!(q[1], ("force".into(), "true".into()));
        assert_eq!(q[2], ("x".into(), "a b".into()));
        assert_eq!(q[3], ("bad".into(), "%zz".into()));
        assert_eq!(q[4], ("end".into(), "%4".into()));
    }

    #[test]
    fn routes() {
        let t = route("/apis/resource.k8s.io/v1/namespaces/ns1/resourceclaims/c1/status").unwrap();
        assert_eq!(t.resource, Resource::ResourceClaims);
        assert_eq!(t.namespace.as_deref(), Some("ns1"));
        assert_eq!(t.name.as_deref(), Some("c1"));
        assert!(t.status);
        assert_eq!(
            route("/apis/resource.k8s.io/v1/resourceslices")
                .unwrap()
                .name,
            None
        );
        assert!(route("/apis/resource.k8s.io/v1beta1/resourceslices").is_none());
        assert!(route("/api/v1/pods").is_none());
    }
}
