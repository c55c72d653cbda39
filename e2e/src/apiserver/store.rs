//! The in-memory object store and the write operations the API server performs on it (create,
//! replace, server-side apply, merge patch, delete), independent of HTTP so they can be unit-tested.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::resource::Resource;
use super::selector::Selectors;
use super::status::{ApiError, Cause};
use super::validate::{self, DeviceKey};

/// Metadata fields an apply or update of the main resource owns (besides `spec`).
const OWNED_METADATA: [&str; 4] = ["labels", "annotations", "ownerReferences", "finalizers"];

/// The manager recorded for objects and fields written through the seeding API.
pub(crate) const SEED_MANAGER: &str = "drakit-e2e-seed";

/// How many watch events are kept for watches that resume from a resourceVersion.
const EVENT_LOG_LIMIT: usize = 10_000;

type Key = (Resource, String, String);

#[derive(Debug, Clone)]
struct Stored {
    value: Value,
    /// The manager that last wrote `spec` and the owned metadata.
    main_manager: Option<String>,
    /// For claims: which manager owns each `status.devices` entry.
    device_owners: BTreeMap<DeviceKey, String>,
}

/// A watch event (`type` is `ADDED`, `MODIFIED` or `DELETED`).
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub resource_version: u64,
    pub resource: Resource,
    pub kind: &'static str,
    pub object: Value,
}

#[derive(Debug)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Stored>,
    resource_version: u64,
    log: Vec<Arc<Event>>,
    /// The resourceVersion of the newest event dropped from `log`: watches from before it get 410.
    dropped_up_to: u64,
    events: broadcast::Sender<Arc<Event>>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            resource_version: 1000,
            log: Vec::new(),
            dropped_up_to: 0,
            events: broadcast::channel(1024).0,
        }
    }
}

/// How a write came in, for status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Created,
    Updated,
    Unchanged,
}

impl Written {
    pub(crate) fn code(self) -> u16 {
        match self {
            Self::Created => 201,
            Self::Updated | Self::Unchanged => 200,
        }
    }
}

/// Options shared by the write verbs.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOptions {
    pub field_manager: Option<String>,
    pub force: bool,
    pub dry_run: bool,
}

pub(crate) fn new_uid() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    let a = h.finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    let b = h.finish();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

/// `metadata` of `v` as a map, creating it when missing; `None` only when `v` is not an object
/// (callers have checked that it is).
fn metadata_mut(v: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = v.as_object_mut()?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
}

fn set_meta(v: &mut Value, key: &str, value: Value) {
    if let Some(m) = metadata_mut(v) {
        m.insert(key.to_owned(), value);
    }
}

fn remove_meta(v: &mut Value, key: &str) {
    if let Some(m) = metadata_mut(v) {
        m.remove(key);
    }
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Parses into the typed object (checking shape, apiVersion and kind), validates, and returns the
/// normalised JSON.
fn normalize(
    resource: Resource,
    name: &str,
    value: Value,
    status_only: bool,
) -> Result<Value, ApiError> {
    fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
        value: Value,
        resource: Resource,
    ) -> Result<(T, Value), ApiError> {
        let t: T = serde_json::from_value(value).map_err(|e| {
            ApiError::bad_request(format!("unable to decode {} body: {e}", resource.kind()))
        })?;
        let v = serde_json::to_value(&t)
            .map_err(|e| ApiError::new(500, "InternalError", format!("re-encoding: {e}")))?;
        Ok((t, v))
    }
    let (causes, v) = match resource {
        Resource::Nodes => {
            let (_, v) = typed::<Node>(value, resource)?;
            (Vec::new(), v)
        }
        Resource::ResourceSlices => {
            let (s, v) = typed::<ResourceSlice>(value, resource)?;
            (validate::resource_slice(&s), v)
        }
        Resource::ResourceClaims => {
            let (c, v) = typed::<ResourceClaim>(value, resource)?;
            let causes = validate::claim_device_status(&c);
            // Seeded and created claims carry whatever status the test put there; only a driver's
            // status write is held to the device-status rules.
            (if status_only { causes } else { Vec::new() }, v)
        }
    };
    if causes.is_empty() {
        Ok(v)
    } else {
        Err(ApiError::invalid(resource, name, &causes))
    }
}

fn device_key(entry: &Value) -> DeviceKey {
    let s = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (
        s("driver"),
        s("pool"),
        s("device"),
        entry
            .get("shareID")
            .and_then(Value::as_str)
            .map(str::to_owned),
    )
}

fn key_field(k: &DeviceKey) -> String {
    format!(
        ".status.devices[driver={:?},pool={:?},device={:?}]",
        k.0, k.1, k.2
    )
}

/// The parts of the object a change of which bumps `metadata.generation`.
fn spec_of(v: &Value) -> Option<&Value> {
    v.get("spec")
}

/// The object without server-managed metadata, for "did anything change" checks.
fn content(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "generation",
            "managedFields",
            "creationTimestamp",
            "uid",
        ] {
            m.remove(k);
        }
    }
    c
}

impl Store {
    pub(crate) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Events after `since`, or `None` when the log no longer reaches back that far (410 Gone).
    pub(crate) fn events_since(&self, since: u64) -> Option<Vec<Arc<Event>>> {
        if since < self.dropped_up_to {
            return None;
        }
        Some(
            self.log
                .iter()
                .filter(|e| e.resource_version > since)
                .cloned()
                .collect(),
        )
    }

    pub(crate) fn get(&self, resource: Resource, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource, ns.to_owned(), name.to_owned()))
            .map(|s| &s.value)
    }

    pub(crate) fn get_or_404(
        &self,
        resource: Resource,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.get(resource, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// Objects of `resource` (in `ns` when given) that match `selectors`, ordered by namespace/name.
    pub(crate) fn list(
        &self,
        resource: Resource,
        ns: Option<&str>,
        selectors: &Selectors,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), s)| {
                *r == resource && ns.is_none_or(|ns| ns == n) && selectors.matches(&s.value)
            })
            .map(|(_, s)| s.value.clone())
            .collect()
    }

    fn emit(&mut self, resource: Resource, kind: &'static str, object: Value) {
        let event = Arc::new(Event {
            resource_version: self.resource_version,
            resource,
            kind,
            object,
        });
        if self.log.len() >= EVENT_LOG_LIMIT {
            let dropped = EVENT_LOG_LIMIT / 2;
            self.dropped_up_to = self.log[dropped - 1].resource_version;
            self.log.drain(..dropped);
        }
        self.log.push(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    /// Stores `new` under `key`, assigning server-managed metadata. Returns the stored object.
    fn commit(
        &mut self,
        key: &Key,
        mut new: Value,
        manager: Option<&str>,
        device_owners: Option<BTreeMap<DeviceKey, String>>,
        dry_run: bool,
    ) -> (Value, Written) {
        let old = self.objects.get(key).cloned();
        if let Some(old) = &old
            && content(&old.value) == content(&new)
        {
            return (old.value.clone(), Written::Unchanged);
        }
        let rv = self.resource_version + 1;
        let has_generation = key.0 != Resource::Nodes;
        if let Some(meta) = metadata_mut(&mut new) {
            meta.insert("resourceVersion".to_owned(), json!(rv.to_string()));
            match &old {
                Some(old) => {
                    for k in ["uid", "creationTimestamp", "generation"] {
                        match old.value.get("metadata").and_then(|m| m.get(k)) {
                            Some(v) => meta.insert(k.to_owned(), v.clone()),
                            None => meta.remove(k),
                        };
                    }
                }
                None => {
                    meta.insert("uid".to_owned(), json!(new_uid()));
                    meta.insert("creationTimestamp".to_owned(), json!(now_rfc3339()));
                    if has_generation {
                        meta.insert("generation".to_owned(), json!(1));
                    }
                }
            }
        }
        if has_generation
            && let Some(old) = &old
            && spec_of(&old.value) != spec_of(&new)
        {
            let g = meta_gen(&old.value) + 1;
            set_meta(&mut new, "generation", json!(g));
        }
        if dry_run {
            return (
                new,
                if old.is_some() {
                    Written::Updated
                } else {
                    Written::Created
                },
            );
        }
        self.resource_version = rv;
        let written = if old.is_some() {
            Written::Updated
        } else {
            Written::Created
        };
        let stored = Stored {
            value: new.clone(),
            main_manager: match manager {
                Some(m) => Some(m.to_owned()),
                None => old.as_ref().and_then(|o| o.main_manager.clone()),
            },
            device_owners: device_owners
                .or_else(|| old.as_ref().map(|o| o.device_owners.clone()))
                .unwrap_or_default(),
        };
        self.objects.insert(key.clone(), stored);
        self.emit(
            key.0,
            if written == Written::Created {
                "ADDED"
            } else {
                "MODIFIED"
            },
            new.clone(),
        );
        (new, written)
    }

    /// Inserts or replaces an object as the test seeding API does: no validation beyond the shape,
    /// no ownership (a later apply by any manager does not conflict with it).
    pub(crate) fn seed(&mut self, resource: Resource, value: Value) -> Result<Value, ApiError> {
        let name = meta_str(&value, "name").unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(ApiError::invalid(
                resource,
                "",
                &[Cause::required("metadata.name")],
            ));
        }
        let ns = if resource.namespaced() {
            meta_str(&value, "namespace")
                .unwrap_or("default")
                .to_owned()
        } else {
            String::new()
        };
        let mut value = normalize(resource, &name, value, false)?;
        if resource.namespaced() {
            set_meta(&mut value, "namespace", json!(ns));
        }
        let key = (resource, ns, name);
        // A re-seeded object is a new object (new UID), as after delete + create.
        if let Some(old) = self.objects.remove(&key) {
            self.resource_version += 1;
            self.emit(resource, "DELETED", old.value);
        }
        let (v, _) = self.commit(&key, value, None, Some(BTreeMap::new()), false);
        Ok(v)
    }

    fn check_body_identity(
        resource: Resource,
        body: &Value,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON/YAML object"));
        }
        let api_version = body
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
        if api_version.is_empty() || kind.is_empty() {
            return Err(ApiError::bad_request(
                "Object 'Kind' or 'apiVersion' is missing in the body",
            ));
        }
        if Resource::from_kind(api_version, kind) != Some(resource) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) or kind ({kind}) does not match the expected {} {}",
                resource.api_version(),
                resource.kind()
            )));
        }
        if let Some(n) = meta_str(body, "name")
            && !n.is_empty()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if resource.namespaced()
            && let Some(n) = meta_str(body, "namespace")
            && !n.is_empty()
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Ok(())
    }

    fn check_resource_version(
        resource: Resource,
        name: &str,
        body: &Value,
        stored: &Value,
    ) -> Result<(), ApiError> {
        if let Some(want) = meta_str(body, "resourceVersion")
            && !want.is_empty()
            && Some(want) != meta_str(stored, "resourceVersion")
        {
            return Err(ApiError::conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        Ok(())
    }

    /// POST to the collection.
    pub(crate) fn create(
        &mut self,
        resource: Resource,
        ns: &str,
        mut body: Value,
        opts: &WriteOptions,
    ) -> Result<(Value, Written), ApiError> {
        let name = match meta_str(&body, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_owned(),
            None => match meta_str(&body, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", &new_uid()[..5]),
                None => {
                    return Err(ApiError::invalid(
                        resource,
                        "",
                        &[Cause::required("metadata.name")],
                    ));
                }
            },
        };
        Self::check_body_identity(resource, &body, ns, &name)?;
        let key = (resource, ns.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        if let Some(meta) = metadata_mut(&mut body) {
            meta.insert("name".to_owned(), json!(name));
            if resource.namespaced() {
                meta.insert("namespace".to_owned(), json!(ns));
            }
            for k in ["resourceVersion", "uid", "generation", "creationTimestamp"] {
                meta.remove(k);
            }
        }
        let value = normalize(resource, &name, body, false)?;
        let manager = opts
            .field_manager
            .clone()
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(self.commit(
            &key,
            value,
            Some(&manager),
            Some(BTreeMap::new()),
            opts.dry_run,
        ))
    }

    /// PUT on the object (`status == false`) or on its status subresource.
    pub(crate) fn replace(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        body: Value,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<(Value, Written), ApiError> {
        Self::check_body_identity(resource, &body, ns, name)?;
        let key = (resource, ns.to_owned(), name.to_owned());
        let stored = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(resource, name))?
            .clone();
        Self::check_resource_version(resource, name, &body, &stored.value)?;
        let mut new = stored.value.clone();
        if status {
            set_or_remove(&mut new, "status", body.get("status"));
        } else {
            set_or_remove(&mut new, "spec", body.get("spec"));
            if resource != Resource::ResourceClaims {
                set_or_remove(&mut new, "status", body.get("status"));
            }
            copy_owned_metadata(&mut new, &body);
        }
        let value = normalize(resource, name, new, status)?;
        let manager = opts
            .field_manager
            .clone()
            .unwrap_or_else(|| "unknown".to_owned());
        let owners = status.then(|| owners_for_all(&value, &manager));
        Ok(self.commit(
            &key,
            value,
            (!status).then_some(manager.as_str()),
            owners,
            opts.dry_run,
        ))
    }

    /// Server-side apply (`application/apply-patch+yaml`) on the object or its status subresource.
    pub(crate) fn apply(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        body: Value,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<(Value, Written), ApiError> {
        let manager = opts.field_manager.clone().filter(|m| !m.is_empty()).ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            )
        })?;
        Self::check_body_identity(resource, &body, ns, name)?;
        let key = (resource, ns.to_owned(), name.to_owned());
        let stored = self.objects.get(&key).cloned();
        if let Some(s) = &stored {
            Self::check_resource_version(resource, name, &body, &s.value)?;
        }
        if status {
            let stored = stored.ok_or_else(|| ApiError::not_found(resource, name))?;
            return self.apply_status(resource, &key, stored, &body, &manager, opts);
        }

        let mut new = match &stored {
            Some(s) => s.value.clone(),
            None => {
                let mut v = json!({
                    "apiVersion": resource.api_version(),
                    "kind": resource.kind(),
                    "metadata": { "name": name },
                });
                if resource.namespaced() {
                    set_meta(&mut v, "namespace", json!(ns));
                }
                v
            }
        };
        set_or_remove(&mut new, "spec", body.get("spec"));
        copy_owned_metadata(&mut new, &body);
        if let Some(s) = &stored
            && let Some(other) = &s.main_manager
            && *other != manager
            && !opts.force
        {
            let mut fields = Vec::new();
            if spec_of(&s.value) != spec_of(&new) {
                fields.push(".spec".to_owned());
            }
            for k in OWNED_METADATA {
                let old = s.value.get("metadata").and_then(|m| m.get(k));
                let now = new.get("metadata").and_then(|m| m.get(k));
                if old != now {
                    fields.push(format!(".metadata.{k}"));
                }
            }
            if !fields.is_empty() {
                return Err(ApiError::apply_conflict(resource, name, other, &fields));
            }
        }
        let value = normalize(resource, name, new, false)?;
        Ok(self.commit(&key, value, Some(&manager), None, opts.dry_run))
    }

    fn apply_status(
        &mut self,
        resource: Resource,
        key: &Key,
        stored: Stored,
        body: &Value,
        manager: &str,
        opts: &WriteOptions,
    ) -> Result<(Value, Written), ApiError> {
        let name = key.2.as_str();
        let empty = Map::new();
        let applied = body
            .get("status")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut new = stored.value.clone();
        let mut conflicts = Vec::new();

        // Everything in status but `devices` belongs to the scheduler (or the seeding test).
        for (k, v) in applied.iter().filter(|(k, _)| *k != "devices") {
            let old = stored.value.get("status").and_then(|s| s.get(k));
            if old != Some(v) {
                if !opts.force && old.is_some() {
                    conflicts.push(format!(".status.{k}"));
                }
                if let Some(s) = new.get_mut("status").and_then(Value::as_object_mut) {
                    s.insert(k.clone(), v.clone());
                } else if let Some(obj) = new.as_object_mut() {
                    obj.insert("status".to_owned(), json!({ k.clone(): v.clone() }));
                }
            }
        }

        let applied_devices: Vec<Value> = applied
            .get("devices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let old_devices: Vec<Value> = stored
            .value
            .pointer("/status/devices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut owners = stored.device_owners.clone();
        let applied_keys: Vec<DeviceKey> = applied_devices.iter().map(device_key).collect();
        for (i, k) in applied_keys.iter().enumerate() {
            if applied_keys[..i].contains(k) {
                return Err(ApiError::invalid(
                    resource,
                    name,
                    &[Cause::duplicate(
                        format!("status.devices[{i}]"),
                        format!("{}/{}/{}", k.0, k.1, k.2),
                    )],
                ));
            }
        }
        let mut conflict_owner = None;
        for (d, k) in applied_devices.iter().zip(&applied_keys) {
            if let Some(owner) = owners.get(k)
                && owner != manager
                && owner != SEED_MANAGER
                && !opts.force
                && old_devices.iter().find(|o| device_key(o) == *k) != Some(d)
            {
                conflicts.push(key_field(k));
                conflict_owner = Some(owner.clone());
            }
        }
        if !conflicts.is_empty() {
            let owner = conflict_owner.unwrap_or_else(|| "kube-scheduler".to_owned());
            return Err(ApiError::apply_conflict(resource, name, &owner, &conflicts));
        }
        // Entries this manager applied before and left out now are removed; the rest are merged
        // in place, new ones appended.
        let mut devices: Vec<Value> = old_devices
            .into_iter()
            .filter(|d| {
                let k = device_key(d);
                owners.get(&k).map(String::as_str) != Some(manager) || applied_keys.contains(&k)
            })
            .collect();
        owners.retain(|k, m| m != manager || applied_keys.contains(k));
        for (d, k) in applied_devices.into_iter().zip(applied_keys) {
            match devices.iter_mut().find(|o| device_key(o) == k) {
                Some(slot) => *slot = d,
                None => devices.push(d),
            }
            owners.insert(k, manager.to_owned());
        }
        if let Some(obj) = new.as_object_mut() {
            let status = obj.entry("status").or_insert_with(|| json!({}));
            if let Some(s) = status.as_object_mut() {
                if devices.is_empty() {
                    s.remove("devices");
                } else {
                    s.insert("devices".to_owned(), Value::Array(devices));
                }
            }
        }
        let value = normalize(resource, name, new, true)?;
        Ok(self.commit(key, value, None, Some(owners), opts.dry_run))
    }

    /// `application/merge-patch+json` on the object or its status subresource.
    pub(crate) fn merge(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        patch: &Value,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<(Value, Written), ApiError> {
        let key = (resource, ns.to_owned(), name.to_owned());
        let stored = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(resource, name))?
            .clone();
        Self::check_resource_version(resource, name, patch, &stored.value)?;
        let mut patched = stored.value.clone();
        merge_patch(&mut patched, patch);
        let mut new = stored.value.clone();
        let subresource_status = resource == Resource::ResourceClaims;
        if status {
            set_or_remove(&mut new, "status", patched.get("status"));
        } else {
            new = patched;
            if subresource_status {
                set_or_remove(&mut new, "status", stored.value.get("status"));
            }
        }
        // Identity cannot be patched.
        for k in ["name", "namespace", "uid"] {
            match stored.value.get("metadata").and_then(|m| m.get(k)) {
                Some(v) => set_meta(&mut new, k, v.clone()),
                None => remove_meta(&mut new, k),
            }
        }
        let value = normalize(resource, name, new, status)?;
        let manager = opts
            .field_manager
            .clone()
            .unwrap_or_else(|| "unknown".to_owned());
        let owners = status.then(|| {
            let mut o = stored.device_owners.clone();
            for (k, m) in owners_for_all(&value, &manager) {
                o.entry(k).or_insert(m);
            }
            o
        });
        Ok(self.commit(
            &key,
            value,
            (!status).then_some(manager.as_str()),
            owners,
            opts.dry_run,
        ))
    }

    /// DELETE of one object, with optional `preconditions` from the DeleteOptions body.
    pub(crate) fn delete(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        options: Option<&Value>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = (resource, ns.to_owned(), name.to_owned());
        let stored = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        if let Some(pre) = options.and_then(|o| o.get("preconditions")) {
            for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
                if let Some(want) = pre.get(field).and_then(Value::as_str) {
                    let have = meta_str(&stored.value, field).unwrap_or_default();
                    if want != have {
                        return Err(ApiError::conflict(
                            resource,
                            name,
                            format!(
                                "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                            ),
                        ));
                    }
                }
            }
        }
        if dry_run {
            return Ok(stored.value.clone());
        }
        let Some(removed) = self.objects.remove(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        self.resource_version += 1;
        let mut value = removed.value;
        set_meta(
            &mut value,
            "resourceVersion",
            json!(self.resource_version.to_string()),
        );
        self.emit(resource, "DELETED", value.clone());
        Ok(value)
    }

    /// DELETE on the collection: every matching object; returns them.
    pub(crate) fn delete_collection(
        &mut self,
        resource: Resource,
        ns: Option<&str>,
        selectors: &Selectors,
        dry_run: bool,
    ) -> Vec<Value> {
        let names: Vec<(String, String)> = self
            .objects
            .iter()
            .filter(|((r, n, _), s)| {
                *r == resource && ns.is_none_or(|ns| ns == n) && selectors.matches(&s.value)
            })
            .map(|((_, n, name), _)| (n.clone(), name.clone()))
            .collect();
        names
            .into_iter()
            .filter_map(|(n, name)| self.delete(resource, &n, &name, None, dry_run).ok())
            .collect()
    }

    /// Overwrites the UID of a stored object (seeding only: tests pick claim UIDs to match what
    /// they send through the kubelet).
    pub(crate) fn set_uid(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        uid: &str,
    ) -> Option<Value> {
        let stored = self
            .objects
            .get_mut(&(resource, ns.to_owned(), name.to_owned()))?;
        set_meta(&mut stored.value, "uid", json!(uid));
        Some(stored.value.clone())
    }

    /// Every object, for inspection.
    pub(crate) fn all(&self, resource: Resource) -> Vec<Value> {
        self.list(resource, None, &Selectors::default())
    }
}

fn meta_gen(v: &Value) -> i64 {
    v.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn set_or_remove(target: &mut Value, field: &str, value: Option<&Value>) {
    if let Some(obj) = target.as_object_mut() {
        match value {
            Some(v) if !v.is_null() => {
                obj.insert(field.to_owned(), v.clone());
            }
            _ => {
                obj.remove(field);
            }
        }
    }
}

fn copy_owned_metadata(target: &mut Value, body: &Value) {
    let from = body.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let Some(meta) = metadata_mut(target) else {
        return;
    };
    for k in OWNED_METADATA {
        match from.get(k) {
            Some(v) if !v.is_null() => {
                meta.insert(k.to_owned(), v.clone());
            }
            _ => {
                meta.remove(k);
            }
        }
    }
}

fn owners_for_all(value: &Value, manager: &str) -> BTreeMap<DeviceKey, String> {
    value
        .pointer("/status/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| (device_key(d), manager.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
        let mut scalar = json!("x");
        merge_patch(&mut scalar, &json!({"k": "v"}));
        assert_eq!(scalar, json!({"k": "v"}));
    }

    #[test]
    fn writes_assign_metadata_and_skip_no_ops() {
        let mut store = Store::default();
        let opts = WriteOptions {
            field_manager: Some("t".into()),
            ..Default::default()
        };
        let (created, w) = store
            .create(Resource::Nodes, "", node("n1"), &opts)
            .unwrap();
        assert_eq!(w, Written::Created);
        let rv = meta_str(&created, "resourceVersion").unwrap().to_owned();
        assert!(meta_str(&created, "uid").is_some());
        assert!(meta_str(&created, "creationTimestamp").is_some());
        // Nodes carry no generation.
        assert!(created.pointer("/metadata/generation").is_none());
        let (same, w) = store
            .replace(Resource::Nodes, "", "n1", node("n1"), false, &opts)
            .unwrap();
        assert_eq!(w, Written::Unchanged);
        assert_eq!(meta_str(&same, "resourceVersion"), Some(rv.as_str()));
        let err = store
            .create(Resource::Nodes, "", node("n1"), &opts)
            .unwrap_err();
        assert_eq!(err.code, 409);
        // Dry run changes nothing.
        let dry = WriteOptions {
            dry_run: true,
            ..opts.clone()
        };
        store
            .delete(Resource::Nodes, "", "n1", None, dry.dry_run)
            .unwrap();
        assert!(store.get(Resource::Nodes, "", "n1").is_some());
        store
            .delete(Resource::Nodes, "", "n1", None, false)
            .unwrap();
        assert!(store.get(Resource::Nodes, "", "n1").is_none());
    }

    #[test]
    fn watch_log_expires_old_resource_versions() {
        let mut store = Store::default();
        let start = store.resource_version();
        store.seed(Resource::Nodes, node("first")).unwrap();
        assert_eq!(store.events_since(start).unwrap().len(), 1);
        for i in 0..EVENT_LOG_LIMIT {
            store.seed(Resource::Nodes, node(&format!("n{i}"))).unwrap();
        }
        assert!(store.events_since(start).is_none(), "410 Gone expected");
        let recent = store.resource_version() - 1;
        assert_eq!(store.events_since(recent).unwrap().len(), 1);
    }
}
