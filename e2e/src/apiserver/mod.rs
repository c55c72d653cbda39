//! The API server stand-in: a real HTTP/1.1 server on 127.0.0.1 that keeps Nodes, ResourceClaims
//! and ResourceSlices in memory and serves what drakit uses, with real Kubernetes JSON shapes
//! (k8s-openapi types), status codes and `Status` error bodies.
//!
//! Served (all JSON; `PATCH` takes `application/apply-patch+yaml` for server-side apply and
//! `application/merge-patch+json`):
//!
//! | path | verbs |
//! |---|---|
//! | `/api/v1/nodes`, `/api/v1/nodes/{name}` | list, watch, get, create, update, patch, delete |
//! | `/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims[/{name}[/status]]` | the same; the `status` subresource takes get, apply, merge, update |
//! | `/apis/resource.k8s.io/v1/resourceclaims` | list and watch across namespaces |
//! | `/apis/resource.k8s.io/v1/resourceslices[/{name}]` | list (field + label selectors), watch, get, create, update, apply, merge, delete, delete collection |
//! | `/version` | get |
//!
//! Tests seed objects ([`ApiServerSim::insert_claim`], [`ClaimBuilder`]), read them back, assert on
//! the exact request log ([`ApiServerSim::requests`]) and inject faults ([`ApiServerSim::fail_next`],
//! [`ApiServerSim::set_latency`], [`ApiServerSim::go_down`]). The same controls are reachable over
//! HTTP under `/_drakit/` for out-of-process use (see the crate README).

mod control;
mod http;
mod resource;
mod seed;
mod selector;
mod status;
mod store;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::wait::Changes;

pub use resource::Resource;
pub use seed::{ClaimBuilder, node};

/// Errors of the stand-in's own API (not HTTP errors, which go to the client as `Status`).
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seeding {kind} {name:?}: {message}")]
    Seed {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("encoding {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("gave up waiting after {after:?} for {what}")]
    WaitTimeout { what: String, after: Duration },
}

/// One request as the server saw it, with the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    /// The raw query string (still percent-encoded), empty when none.
    pub raw_query: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: String,
    /// The HTTP status sent back.
    pub status: u16,
    /// Whether an injected fault produced the answer.
    pub injected: bool,
}

impl RecordedRequest {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (or YAML, for apply patches); `None` when empty or unparsable.
    pub fn body_json(&self) -> Option<Value> {
        if self.body.is_empty() {
            return None;
        }
        serde_json::from_str(&self.body)
            .ok()
            .or_else(|| serde_yaml::from_str(&self.body).ok())
    }
}

/// A pool as the scheduler sees it (see [`ApiServerSim::pool`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    /// The newest `spec.pool.generation` among the pool's slices; `None` when there are none.
    pub generation: Option<i64>,
    /// The slices of that generation, by name.
    pub slices: Vec<ResourceSlice>,
    /// Device names across those slices, in slice order.
    pub devices: Vec<String>,
    /// Whether the newest generation has exactly `resourceSliceCount` slices, all agreeing.
    pub complete: bool,
}

/// A fault to answer requests with instead of serving them, or to hold them first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// HTTP status, e.g. 500, 503, 429; 0 with a `delay` serves the request after the delay.
    pub status: u16,
    /// Hold the request this long before answering (a stalled API server: the client's own
    /// timeout decides; a client that gives up closes the connection and the request is
    /// dropped unserved).
    pub delay: Option<Duration>,
    /// Sent as the `Retry-After` header (seconds) and in the Status details.
    pub retry_after: Option<u64>,
    /// Only requests with this method (e.g. "PATCH"); any when `None`.
    pub method: Option<String>,
    /// Only requests whose path contains this; any when `None`.
    pub path_contains: Option<String>,
}

impl Fault {
    /// A fault for any request.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: None,
            retry_after: None,
            method: None,
            path_contains: None,
        }
    }

    /// 429 TooManyRequests with `Retry-After: seconds`.
    pub fn too_many_requests(seconds: u64) -> Self {
        Self::status(429).retry_after(seconds)
    }

    /// Holds matching requests for `delay`, then serves them normally.
    pub fn stall(delay: Duration) -> Self {
        Self::status(0).delay(delay)
    }

    /// Holds matching requests for `delay` before answering (with the status, or served when
    /// the status is 0).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    pub fn path_contains(mut self, fragment: &str) -> Self {
        self.path_contains = Some(fragment.to_owned());
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

#[derive(Debug, Default)]
struct Faults {
    /// (remaining count, fault), consumed in order.
    queue: Vec<(usize, Fault)>,
    latency: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    store: Mutex<store::Store>,
    log: Mutex<Vec<RecordedRequest>>,
    faults: Mutex<Faults>,
    changes: Changes,
    /// For the HTTP control endpoints that take the server down and back.
    lifecycle: std::sync::OnceLock<std::sync::Weak<Lifecycle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, store::Store> {
        lock(&self.store)
    }

    fn record(&self, request: RecordedRequest) {
        lock(&self.log).push(request);
        self.changes.bump();
    }

    fn latency(&self) -> Duration {
        lock(&self.faults).latency
    }

    /// Takes one injected fault matching the request, if any.
    fn take_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let idx = faults
            .queue
            .iter()
            .position(|(n, f)| *n > 0 && f.matches(method, path))?;
        let (n, fault) = &mut faults.queue[idx];
        *n -= 1;
        let fault = fault.clone();
        faults.queue.retain(|(n, _)| *n > 0);
        Some(fault)
    }
}

/// The accept loop, restartable on the same address.
#[derive(Debug)]
struct Lifecycle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Lifecycle {
    fn go_down(&self) {
        if let Some(h) = lock(&self.server).take() {
            h.abort();
            tracing::info!(addr = %self.addr, "API server stand-in down");
        }
        self.shared.changes.bump();
    }

    fn is_up(&self) -> bool {
        lock(&self.server).is_some()
    }

    async fn come_back(&self) -> Result<(), ApiServerError> {
        if self.is_up() {
            return Ok(());
        }
        let listener = http::bind(self.addr)
            .await
            .map_err(|source| ApiServerError::Bind {
                addr: self.addr,
                source,
            })?;
        let handle = tokio::spawn(http::serve(listener, self.shared.clone()));
        let mut server = lock(&self.server);
        match server.as_ref() {
            // Someone else brought it back meanwhile.
            Some(_) => handle.abort(),
            None => *server = Some(handle),
        }
        drop(server);
        self.shared.changes.bump();
        tracing::info!(addr = %self.addr, "API server stand-in back up");
        Ok(())
    }
}

/// A running API server stand-in. Dropping it stops the server.
#[derive(Debug)]
pub struct ApiServerSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    lifecycle: Arc<Lifecycle>,
}

impl Drop for ApiServerSim {
    fn drop(&mut self) {
        self.lifecycle.go_down();
    }
}

impl ApiServerSim {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Result<Self, ApiServerError> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (port 0 for an ephemeral one).
    pub async fn start_on(addr: SocketAddr) -> Result<Self, ApiServerError> {
        let listener = http::bind(addr)
            .await
            .map_err(|source| ApiServerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ApiServerError::Bind { addr, source })?;
        let shared = Arc::new(Shared::default());
        let server = tokio::spawn(http::serve(listener, shared.clone()));
        tracing::info!(%addr, "API server stand-in listening");
        let lifecycle = Arc::new(Lifecycle {
            addr,
            shared: shared.clone(),
            server: Mutex::new(Some(server)),
        });
        let _ = shared.lifecycle.set(Arc::downgrade(&lifecycle));
        Ok(Self {
            shared,
            addr,
            lifecycle,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) pointing at this server without authentication.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.url())
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), ApiServerError> {
        std::fs::write(path, self.kubeconfig_yaml()).map_err(|source| ApiServerError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })
    }

    // ---- seeding and inspection -------------------------------------------------------------

    fn seed<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        resource: Resource,
        name: &str,
        object: &T,
    ) -> Result<T, ApiServerError> {
        let seed_err = |message: String| ApiServerError::Seed {
            kind: resource.kind(),
            name: name.to_owned(),
            message,
        };
        let value = serde_json::to_value(object).map_err(|source| ApiServerError::Encode {
            what: resource.kind(),
            source,
        })?;
        let stored = self
            .shared
            .store()
            .seed(resource, value)
            .map_err(|e| seed_err(e.body.to_string()))?;
        self.shared.changes.bump();
        serde_json::from_value(stored).map_err(|e| seed_err(e.to_string()))
    }

    /// Inserts (or replaces, as a new object) a Node.
    pub fn insert_node(&self, node: &Node) -> Result<Node, ApiServerError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.seed(Resource::Nodes, &name, node)
    }

    /// Inserts (or replaces) a ResourceClaim as it is, status included (see [`ClaimBuilder`]).
    /// A UID set in the object is kept; otherwise one is assigned.
    pub fn insert_claim(&self, claim: &ResourceClaim) -> Result<ResourceClaim, ApiServerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let stored = self.seed(Resource::ResourceClaims, &name, claim)?;
        self.keep_uid(
            Resource::ResourceClaims,
            claim.metadata.uid.as_deref(),
            stored,
        )
    }

    /// Inserts (or replaces) a ResourceSlice without validation.
    pub fn insert_slice(&self, slice: &ResourceSlice) -> Result<ResourceSlice, ApiServerError> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.seed(Resource::ResourceSlices, &name, slice)
    }

    /// Seeding assigns a fresh UID; a test that chose one (to match a kubelet `Claim.uid`) keeps it.
    fn keep_uid<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        resource: Resource,
        uid: Option<&str>,
        stored: T,
    ) -> Result<T, ApiServerError> {
        let Some(uid) = uid.filter(|u| !u.is_empty()) else {
            return Ok(stored);
        };
        let value = serde_json::to_value(&stored).map_err(|source| ApiServerError::Encode {
            what: resource.kind(),
            source,
        })?;
        let ns = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let updated = self.shared.store().set_uid(resource, &ns, &name, uid);
        match updated {
            Some(v) => serde_json::from_value(v).map_err(|e| ApiServerError::Seed {
                kind: resource.kind(),
                name,
                message: e.to_string(),
            }),
            None => Ok(stored),
        }
    }

    /// Inserts (or replaces) any served object given as JSON (`apiVersion` + `kind` pick the
    /// resource); a UID in the object is kept. Returns the stored JSON.
    pub fn insert_raw(&self, object: Value) -> Result<Value, ApiServerError> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let stored = seed_raw(&self.shared, object).map_err(|e| ApiServerError::Seed {
            kind: "object",
            name,
            message: e
                .body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        })?;
        Ok(stored)
    }

    /// Removes an object the way DELETE does (watchers see it go). Returns whether it existed.
    pub fn remove(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let ns = if resource.namespaced() { namespace } else { "" };
        let removed = self
            .shared
            .store()
            .delete(resource, ns, name, None, false)
            .is_ok();
        self.shared.changes.bump();
        removed
    }

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Option<T> {
        serde_json::from_value(v).ok()
    }

    pub fn claim(&self, namespace: &str, name: &str) -> Option<ResourceClaim> {
        let v = self
            .shared
            .store()
            .get(Resource::ResourceClaims, namespace, name)
            .cloned()?;
        Self::typed(v)
    }

    pub fn node(&self, name: &str) -> Option<Node> {
        let v = self
            .shared
            .store()
            .get(Resource::Nodes, "", name)
            .cloned()?;
        Self::typed(v)
    }

    pub fn slice(&self, name: &str) -> Option<ResourceSlice> {
        let v = self
            .shared
            .store()
            .get(Resource::ResourceSlices, "", name)
            .cloned()?;
        Self::typed(v)
    }

    /// Every stored ResourceSlice, by name.
    pub fn slices(&self) -> Vec<ResourceSlice> {
        let all = self.shared.store().all(Resource::ResourceSlices);
        all.into_iter().filter_map(Self::typed).collect()
    }

    /// The stored ResourceSlices of `driver` on `node` (`spec.nodeName`), by name.
    pub fn slices_for(&self, node: &str, driver: &str) -> Vec<ResourceSlice> {
        self.slices()
            .into_iter()
            .filter(|s| s.spec.driver == driver && s.spec.node_name.as_deref() == Some(node))
            .collect()
    }

    /// How a pool looks to the scheduler: the slices of its newest generation, and whether that
    /// generation is complete (as many slices as `resourceSliceCount` says, all agreeing on it).
    pub fn pool(&self, driver: &str, pool: &str) -> PoolView {
        let slices: Vec<ResourceSlice> = self
            .slices()
            .into_iter()
            .filter(|s| s.spec.driver == driver && s.spec.pool.name == pool)
            .collect();
        let generation = slices.iter().map(|s| s.spec.pool.generation).max();
        let newest: Vec<ResourceSlice> = slices
            .into_iter()
            .filter(|s| Some(s.spec.pool.generation) == generation)
            .collect();
        let counts: std::collections::BTreeSet<i64> = newest
            .iter()
            .map(|s| s.spec.pool.resource_slice_count)
            .collect();
        let complete = counts.len() == 1
            && counts
                .iter()
                .next()
                .is_some_and(|c| usize::try_from(*c).ok() == Some(newest.len()));
        let devices = newest
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .map(|d| d.name.clone())
            .collect();
        PoolView {
            generation,
            slices: newest,
            devices,
            complete,
        }
    }

    /// Every stored ResourceClaim, by namespace/name.
    pub fn claims(&self) -> Vec<ResourceClaim> {
        let all = self.shared.store().all(Resource::ResourceClaims);
        all.into_iter().filter_map(Self::typed).collect()
    }

    /// The raw stored JSON of an object, exactly as served.
    pub fn raw(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let ns = if resource.namespaced() { namespace } else { "" };
        self.shared.store().get(resource, ns, name).cloned()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Every request served so far (control requests under `/_drakit/` excluded), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    /// The requests with `method` whose path contains `path_fragment`.
    pub fn requests_matching(&self, method: &str, path_fragment: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_fragment))
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Waits until `check` (called now and after every request or change) returns `Some`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T, ApiServerError> {
        self.shared
            .changes
            .wait_for(timeout, || check(self))
            .await
            .ok_or_else(|| ApiServerError::WaitTimeout {
                what: what.to_owned(),
                after: timeout,
            })
    }

    /// A readable account of the request log and every stored object.
    pub fn dump(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "--- apiserver-sim {} (resourceVersion {})
",
            self.url(),
            self.resource_version()
        );
        for r in self.requests() {
            let q = if r.raw_query.is_empty() {
                String::new()
            } else {
                format!("?{}", r.raw_query)
            };
            let body: String = r.body.chars().take(400).collect();
            let _ = writeln!(
                out,
                "{} {}{q} -> {}{} {body}",
                r.method,
                r.path,
                r.status,
                if r.injected { " (injected)" } else { "" }
            );
        }
        let store = self.shared.store();
        for resource in Resource::ALL {
            for obj in store.all(resource) {
                let _ = writeln!(out, "{} {}", resource.kind(), obj);
            }
        }
        out
    }

    // ---- fault injection --------------------------------------------------------------------

    /// Answers the next `count` requests matching `fault` with its status instead of serving them.
    /// Several calls queue up; the first matching entry is used.
    pub fn fail_next(&self, count: usize, fault: Fault) {
        if count > 0 {
            lock(&self.shared.faults).queue.push((count, fault));
        }
    }

    /// Drops every queued fault and the latency.
    pub fn clear_faults(&self) {
        *lock(&self.shared.faults) = Faults::default();
    }

    /// Delays every request by `latency` before it is served.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.faults).latency = latency;
    }

    /// Stops accepting connections and drops the open ones (clients see connection refused).
    pub fn go_down(&self) {
        self.lifecycle.go_down();
    }

    pub fn is_up(&self) -> bool {
        self.lifecycle.is_up()
    }

    /// Listens again on the same address (no-op when already up).
    pub async fn come_back(&self) -> Result<(), ApiServerError> {
        self.lifecycle.come_back().await
    }

    /// Goes down now and comes back after `downtime` (in a background task).
    pub fn go_down_for(&self, downtime: Duration) {
        go_down_for(&self.lifecycle, downtime);
    }
}

fn go_down_for(lifecycle: &Arc<Lifecycle>, downtime: Duration) {
    lifecycle.go_down();
    let weak = Arc::downgrade(lifecycle);
    tokio::spawn(async move {
        tokio::time::sleep(downtime).await;
        if let Some(l) = weak.upgrade()
            && let Err(e) = l.come_back().await
        {
            tracing::warn!(error = %e, "API server stand-in could not come back");
        }
    });
}

/// Seeds one object of any served kind, keeping a UID it carries.
pub(crate) fn seed_raw(shared: &Shared, object: Value) -> Result<Value, status::ApiError> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(resource) = Resource::from_kind(api_version, kind) else {
        return Err(status::ApiError::bad_request(format!(
            "cannot seed {api_version:?} {kind:?}: only v1 Node, resource.k8s.io/v1 ResourceClaim and ResourceSlice are served"
        )));
    };
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    let result = {
        let mut store = shared.store();
        store.seed(resource, object).map(|stored| {
            let ns = stored
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let name = stored
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            match &uid {
                Some(uid) => store.set_uid(resource, &ns, &name, uid).unwrap_or(stored),
                None => stored,
            }
        })
    };
    shared.changes.bump();
    result
}

/// A kubeconfig for `server` with no authentication.
pub fn kubeconfig_yaml(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: drakit-sim
  cluster:
    server: {server}
contexts:
- name: drakit-sim
  context:
    cluster: drakit-sim
    user: drakit-sim
    namespace: default
current-context: drakit-sim
users:
- name: drakit-sim
  user: {{}}
"
    )
}
