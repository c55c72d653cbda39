//! One DRA driver's claim handling: read the claim, hand it to the backend, write the CDI spec,
//! checkpoint, answer. Idempotent and crash-safe; per-claim errors never fail the other claims.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use drakit_proto::drakit::{Health, Inventory, PrepareRequest, PreparedDevice, UnprepareRequest};
use tracing::Instrument;

use crate::backend::{Backend, BackendError};
use drakit_types::cdi::SpecDir;
use drakit_types::checkpoint::{Durability, Refreshed};

use crate::claims::{ClaimRef, ClaimSource, ClaimWork, FetchError, extract, fetch_with_retry};
use crate::metrics::DriverMetrics;
use crate::sockets::SerializeLock;
use crate::state::{ClaimCheckpoint, ClaimRecord, DeviceRecord, claim_device, claim_spec};

/// Health of one published device, for the kubelet's health stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHealth {
    pub pool: String,
    pub device: String,
    pub health: Health,
    pub message: String,
    /// Unix seconds of the last change.
    pub updated: i64,
}

/// Everything a driver is built from.
pub struct DriverParams {
    pub name: String,
    pub node_name: String,
    pub claims: Arc<dyn ClaimSource>,
    pub backend: Arc<dyn Backend>,
    /// This driver's claim specs in the CDI dir.
    pub cdi: SpecDir,
    /// This driver's claim records.
    pub checkpoint: ClaimCheckpoint,
    /// The node's boot ID, passed to the backend (empty when unreadable).
    pub boot_id: String,
    /// Held around each call when several instances may run (rolling update).
    pub serialize_lock: Option<SerializeLock>,
    /// How long to keep retrying the API server for one call.
    pub api_budget: Duration,
    /// Benchmark switch: skip the CDI file (the checkpoint's durability is the journal's flag).
    pub write_cdi: bool,
    /// Serialize calls within this process (default true).
    pub serialize: bool,
    /// Writer of claim status (`None`: status is not written).
    pub status: Option<StatusSink>,
    pub metrics: Arc<DriverMetrics>,
}

impl std::fmt::Debug for DriverParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverParams")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where claim status goes (the API server, through kube).
#[derive(Clone)]
pub struct StatusSink {
    pub client: crate::lazy::LazyClient,
    pub field_manager: String,
    /// How long one status write may wait for the API server.
    pub timeout: Duration,
}

impl std::fmt::Debug for StatusSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSink")
            .field("field_manager", &self.field_manager)
            .finish()
    }
}

/// One DRA driver.
pub struct Driver {
    name: String,
    node_name: String,
    claims: Arc<dyn ClaimSource>,
    backend: Arc<dyn Backend>,
    cdi: SpecDir,
    journal: Mutex<ClaimCheckpoint>,
    boot_id: String,
    call_lock: tokio::sync::Mutex<()>,
    serialize: bool,
    serialize_lock: Option<SerializeLock>,
    api_budget: Duration,
    write_cdi: bool,
    status: Option<StatusSink>,
    metrics: Arc<DriverMetrics>,
    /// Published slot name → (backend device, slot) when shared devices are pre-enumerated.
    slots: RwLock<HashMap<String, String>>,
    pools: RwLock<Vec<String>>,
    health: tokio::sync::watch::Sender<Vec<DeviceHealth>>,
    /// Claim status writes in flight: claim UID → ticket of the newest write (an older writer
    /// and a write for an unprepared claim stop).
    status_pending: Arc<Mutex<HashMap<String, u64>>>,
    status_ticket: std::sync::atomic::AtomicU64,
    /// The background checkpoint flush: (one running, another requested meanwhile).
    flushing: Arc<Mutex<(bool, bool)>>,
    /// True once the backend's first inventory arrived (pools and slot names are known).
    inventory_seen: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One claim's answer: devices or a message naming the claim.
pub type ClaimResult<T> = Result<T, String>;

/// The crash-injection steps of this binary (`DRAKIT_CRASH_AT`, feature `crash-injection`), in
/// the order a prepare and an unprepare reach them. See `drakit_types::crash`.
pub const CRASH_STEPS: &[&str] = &[
    // The backend prepared the claim; no CDI spec, no checkpoint record.
    "prepare-after-backend",
    // The claim's CDI spec is in its temp file, not renamed yet (also on start-up rebuilds).
    "cdi-write-before-rename",
    // The CDI spec is in place; no checkpoint record.
    "prepare-after-cdi-write",
    // The checkpoint record is durable; the kubelet has no answer, the claim status is unwritten.
    "prepare-after-checkpoint",
    // The backend released the claim; CDI spec and checkpoint record still there.
    "unprepare-after-backend",
    // The CDI spec is gone; the checkpoint still holds the claim.
    "unprepare-after-cdi-remove",
    // The checkpoint says unprepared; the kubelet has no answer.
    "unprepare-after-checkpoint",
];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Driver {
    /// Builds the driver and rebuilds every CDI spec recorded in the checkpoint.
    pub fn new(p: DriverParams) -> Arc<Self> {
        let (health, _) = tokio::sync::watch::channel(Vec::new());
        let d = Arc::new(Self {
            pools: RwLock::new(vec![p.node_name.clone()]),
            name: p.name,
            node_name: p.node_name,
            claims: p.claims,
            backend: p.backend,
            cdi: p.cdi,
            journal: Mutex::new(p.checkpoint),
            boot_id: p.boot_id,
            call_lock: tokio::sync::Mutex::new(()),
            serialize: p.serialize,
            serialize_lock: p.serialize_lock,
            api_budget: p.api_budget,
            write_cdi: p.write_cdi,
            status: p.status,
            metrics: p.metrics,
            slots: RwLock::new(HashMap::new()),
            health,
            status_pending: Arc::default(),
            status_ticket: std::sync::atomic::AtomicU64::new(0),
            flushing: Arc::default(),
            inventory_seen: tokio::sync::watch::channel(false).0,
        });
        d.rebuild_cdi();
        d
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn metrics(&self) -> &Arc<DriverMetrics> {
        &self.metrics
    }

    /// UIDs of the claims in the checkpoint.
    pub fn prepared_claims(&self) -> Vec<String> {
        lock(&self.journal).entries().keys().cloned().collect()
    }

    /// Writes every checkpointed claim's CDI spec that is missing or differs, and removes specs
    /// of this driver that the checkpoint does not know (left by a crash between the two).
    pub fn rebuild_cdi(&self) {
        if !self.write_cdi {
            return;
        }
        let j = lock(&self.journal);
        let mut desired = Vec::new();
        for rec in j.entries().values().filter(|r| !r.cdi_spec.is_empty()) {
            match drakit_types::cdi::ClaimSpec::from_json(
                self.cdi.vendor(),
                self.cdi.class(),
                &rec.uid,
                rec.cdi_spec.as_bytes(),
            ) {
                Ok(spec) => desired.push(spec),
                Err(e) => {
                    tracing::error!(driver = %self.name, claim.uid = %rec.uid, error = %e, "rebuilding CDI spec")
                }
            }
        }
        // Missing or different specs written, specs of this driver the checkpoint does not know
        // (a crash between the two) removed, and temp files of a writer that died before its
        // rename swept.
        let report = self.cdi.rebuild(&desired);
        for e in &report.errors {
            tracing::error!(driver = %self.name, error = %e, "rebuilding CDI specs");
        }
        let old_temps = crate::legacy::remove_old_cdi_temp_files(self.cdi.dir(), &self.name);
        if !report.written.is_empty() || !report.removed.is_empty() || old_temps > 0 {
            tracing::info!(driver = %self.name, written = report.written.len(),
                removed = report.removed.len(),
                temp_files = report.removed_temp_files.len() + old_temps, "CDI specs rebuilt");
        }
    }

    /// Re-sends every checkpointed claim to the backend (idempotent prepare), so a backend that
    /// lost its state gets it back. Errors are logged; the checkpoint stays authoritative.
    pub async fn reconcile_backend(&self) {
        let recs: Vec<ClaimRecord> = lock(&self.journal).entries().values().cloned().collect();
        for rec in recs {
            let claim = ClaimRef {
                namespace: rec.namespace.clone(),
                name: rec.name.clone(),
                uid: rec.uid.clone(),
            };
            let req = PrepareRequest {
                claim: Some((&claim).into()),
                devices: rec.allocated.clone(),
                reserved_for_pods: rec.reserved_for_pods.clone(),
                boot_id: self.boot_id.clone(),
            };
            match self.backend.prepare(req).await {
                // The status write of the first prepare may have died with the process: write
                // it again (server-side apply of the same content).
                Ok(resp) => self.queue_status(&claim, &resp.devices, &rec.devices),
                Err(e) => {
                    tracing::warn!(driver = %self.name, claim.uid = %rec.uid, error = %e, "reconciling claim with backend")
                }
            }
        }
    }

    /// Records the latest inventory: pools, slot names and device health.
    pub fn set_inventory(&self, inv: &Inventory, slots: &HashMap<String, String>) {
        let pool = if inv.pool.is_empty() {
            self.node_name.clone()
        } else {
            inv.pool.clone()
        };
        if let Ok(mut p) = self.pools.write() {
            *p = vec![pool.clone()];
        }
        if let Ok(mut s) = self.slots.write() {
            *s = slots.clone();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let old = self.health.borrow().clone();
        let list: Vec<DeviceHealth> = inv
            .devices
            .iter()
            .map(|d| {
                let health = Health::try_from(d.health).unwrap_or(Health::Unknown);
                let updated = old
                    .iter()
                    .find(|o| {
                        o.device == d.name && o.health == health && o.message == d.health_message
                    })
                    .map_or(now, |o| o.updated);
                DeviceHealth {
                    pool: pool.clone(),
                    device: d.name.clone(),
                    health,
                    message: d.health_message.clone(),
                    updated,
                }
            })
            .collect();
        if list != old {
            self.health.send_replace(list);
        }
        self.inventory_seen
            .send_if_modified(|seen| !std::mem::replace(seen, true));
    }

    /// Waits (up to the API budget) for the backend's first inventory: until it arrives the
    /// published slot names cannot be mapped to backend devices, nor the pool checked. The
    /// kubelet retries a pending prepare as soon as a restarted plugin registers, which is
    /// before that.
    async fn wait_inventory(&self, c: &ClaimRef) -> ClaimResult<()> {
        let mut rx = self.inventory_seen.subscribe();
        if *rx.borrow() {
            return Ok(());
        }
        match tokio::time::timeout(self.api_budget, rx.wait_for(|seen| *seen)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "claim {c}: no device inventory from the backend of {} within {:?}",
                self.name, self.api_budget
            )),
        }
    }

    /// Subscribes to device health changes.
    pub fn health(&self) -> tokio::sync::watch::Receiver<Vec<DeviceHealth>> {
        self.health.subscribe()
    }

    async fn serialized(
        &self,
    ) -> Result<
        (
            Option<tokio::sync::MutexGuard<'_, ()>>,
            Option<crate::sockets::SerializeGuard>,
        ),
        String,
    > {
        let local = if self.serialize {
            Some(self.call_lock.lock().await)
        } else {
            None
        };
        let cross = match &self.serialize_lock {
            Some(l) => {
                let g = l.acquire().await.map_err(|e| e.to_string())?;
                // Another instance may have prepared or unprepared claims meanwhile.
                let r = lock(&self.journal).refresh().map_err(|e| e.to_string())?;
                if let Refreshed::Reloaded {
                    torn_tail,
                    corruption,
                    ..
                } = &r
                    && (torn_tail.is_some() || corruption.is_some())
                {
                    tracing::warn!(driver = %self.name, ?torn_tail, ?corruption, "checkpoint repaired after another instance");
                }
                Some(g)
            }
            None => None,
        };
        Ok((local, cross))
    }

    /// NodePrepareResources for this driver: one answer per claim, in order.
    pub async fn prepare(
        &self,
        claims: &[ClaimRef],
    ) -> Vec<(String, ClaimResult<Vec<DeviceRecord>>)> {
        let start = Instant::now();
        let guards = self.serialized().await;
        let mut out = Vec::with_capacity(claims.len());
        match guards {
            Err(e) => {
                for c in claims {
                    out.push((c.uid.clone(), Err(format!("claim {c}: {e}"))));
                }
            }
            Ok(_g) => {
                // Claims not yet checkpointed need their API object: fetch those concurrently.
                let fetches = claims.iter().map(|c| async move {
                    if lock(&self.journal).get(&c.uid).is_some() {
                        return None;
                    }
                    Some(fetch_with_retry(self.claims.as_ref(), c, self.api_budget).await)
                });
                let fetched = futures::future::join_all(fetches).await;
                for (c, f) in claims.iter().zip(fetched) {
                    let span = tracing::info_span!("prepare", driver = %self.name, claim.uid = %c.uid, claim.name = %c.name, claim.namespace = %c.namespace, pod.uid = tracing::field::Empty);
                    let r = self.prepare_one(c, f).instrument(span).await;
                    match &r {
                        Ok(_) => self
                            .metrics
                            .prepared_claims
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(e) => {
                            tracing::warn!(driver = %self.name, claim.uid = %c.uid, error = %e, "prepare failed");
                            self.metrics
                                .prepare_errors
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        }
                    };
                    out.push((c.uid.clone(), r));
                }
            }
        }
        self.metrics.prepare_latency.observe(start.elapsed());
        out
    }

    async fn prepare_one(
        &self,
        c: &ClaimRef,
        fetched: Option<
            Result<k8s_openapi::api::resource::v1::ResourceClaim, crate::claims::ClaimError>,
        >,
    ) -> ClaimResult<Vec<DeviceRecord>> {
        let rc = match fetched {
            None => return self.reprepare(c),
            Some(Ok(rc)) => rc,
            Some(Err(e)) => return Err(e.to_string()),
        };
        self.wait_inventory(c).await?;
        let pools = self.pools.read().map(|p| p.clone()).unwrap_or_default();
        let mut work =
            extract(&rc, c, &self.name, &self.node_name, &pools).map_err(|e| e.to_string())?;
        if !work.reserved_for_pods.is_empty() {
            let pods = work.reserved_for_pods.join(",");
            tracing::Span::current().record("pod.uid", pods.as_str());
        }
        // The names the scheduler allocated, before slot names map to backend devices.
        let allocated: Vec<(String, String)> = work
            .devices
            .iter()
            .map(|d| (d.device.clone(), d.share_id.clone()))
            .collect();
        self.map_slots(&mut work);
        let req = PrepareRequest {
            claim: Some(c.into()),
            devices: work.devices.clone(),
            reserved_for_pods: work.reserved_for_pods.clone(),
            boot_id: self.boot_id.clone(),
        };
        let resp = self.backend.prepare(req).await.map_err(|e| match e {
            BackendError::Refused { message } => format!("claim {c}: {message}"),
            other => format!("claim {c}: {other}"),
        })?;
        drakit_types::crash::point("prepare-after-backend");
        // Answer with the names the scheduler allocated (slot names map back).
        let mut cdi_devices = Vec::new();
        let mut records = Vec::new();
        for (i, pd) in resp.devices.iter().enumerate() {
            // Answer with what was allocated: slot names and share IDs as the scheduler set them.
            let (published, share) = match allocated.get(i) {
                Some((a, share)) if self.is_slot(a) => (a.clone(), share.clone()),
                _ => (pd.device.clone(), pd.share_id.clone()),
            };
            let share = (!share.is_empty()).then_some(share);
            // Devices without edits get no CDI device (CDI refuses empty ones).
            let with_cdi = pd
                .edits
                .as_ref()
                .filter(|e| **e != Default::default())
                .map(|edits| claim_device(&published, share.as_deref(), edits));
            // The ID is filled in from the built spec below, in device order.
            records.push(DeviceRecord {
                requests: pd.requests.clone(),
                pool: pd.pool.clone(),
                device: published,
                share_id: share,
                cdi_device_ids: Vec::with_capacity(usize::from(with_cdi.is_some())),
            });
            if let Some(d) = with_cdi {
                cdi_devices.push((records.len() - 1, d));
            }
        }
        let mut spec_json = Vec::new();
        if !cdi_devices.is_empty() {
            let owners: Vec<usize> = cdi_devices.iter().map(|(i, _)| *i).collect();
            let spec = claim_spec(
                &self.name,
                &c.uid,
                cdi_devices.into_iter().map(|(_, d)| d).collect(),
            )
            .map_err(|e| format!("claim {c}: {e}"))?;
            for (i, id) in owners.into_iter().zip(&spec.device_ids) {
                records[i].cdi_device_ids.push(id.clone());
            }
            spec_json = spec.to_json().map_err(|e| format!("claim {c}: {e}"))?;
            if self.write_cdi {
                self.cdi
                    .write(&spec)
                    .map_err(|e| format!("claim {c}: writing CDI spec: {e}"))?;
                drakit_types::crash::point("prepare-after-cdi-write");
            }
        }
        let rec = ClaimRecord {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            uid: c.uid.clone(),
            devices: records.clone(),
            cdi_spec: String::from_utf8(spec_json).unwrap_or_default(),
            boot_id: self.boot_id.clone(),
            allocated: work.devices.clone(),
            reserved_for_pods: work.reserved_for_pods.clone(),
        };
        lock(&self.journal)
            .put(&c.uid, rec)
            .map_err(|e| format!("claim {c}: {e}"))?;
        drakit_types::crash::point("prepare-after-checkpoint");
        self.queue_status(c, &resp.devices, &records);
        Ok(records)
    }

    /// Writes the claim's device status (network data, conditions) in the background, retrying
    /// until the API server takes it, the claim is gone (404, other 4xx) or unprepared, or a
    /// newer write for the claim replaces it.
    fn queue_status(&self, c: &ClaimRef, devices: &[PreparedDevice], records: &[DeviceRecord]) {
        let Some(sink) = &self.status else { return };
        let mut devs = devices.to_vec();
        // Report the device and share ID exactly as allocated: a slot's backend identity
        // (`<claim uid>-<slot>`) is not in status.allocation, and the API server refuses a
        // status entry that does not match an allocation result.
        for (d, r) in devs.iter_mut().zip(records) {
            d.device = r.device.clone();
            d.share_id = r.share_id.clone().unwrap_or_default();
        }
        let Some(patch) =
            crate::status::status_patch(&self.name, c, &devs, &crate::status::now_rfc3339())
        else {
            return;
        };
        let ticket = self
            .status_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.status_pending).insert(c.uid.clone(), ticket);
        let pending = self.status_pending.clone();
        let sink = sink.clone();
        let claim = c.clone();
        tokio::spawn(async move {
            let current = || lock(&pending).get(&claim.uid) == Some(&ticket);
            let Some(client) = sink.client.get().await else {
                return;
            };
            let mut delay = Duration::from_millis(100);
            while current() {
                match crate::status::apply_status(
                    &client,
                    &sink.field_manager,
                    &claim,
                    patch.clone(),
                    sink.timeout,
                )
                .await
                {
                    Ok(()) => break,
                    Err(kube::Error::Api(ae))
                        if (400..500).contains(&ae.code) && ae.code != 409 && ae.code != 429 =>
                    {
                        tracing::warn!(claim.uid = %claim.uid, error = %ae, "writing claim status: refused, not retried");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(claim.uid = %claim.uid, error = %e, retry_in = ?delay, "writing claim status")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            let mut p = lock(&pending);
            if p.get(&claim.uid) == Some(&ticket) {
                p.remove(&claim.uid);
            }
        });
    }

    /// Claims whose status write has not succeeded yet (diagnostics, tests).
    pub fn status_pending(&self) -> Vec<String> {
        lock(&self.status_pending).keys().cloned().collect()
    }

    /// A claim already in the checkpoint: same answer, CDI spec re-ensured. A claim prepared
    /// during an earlier boot is in use in this one once the kubelet asks for it again: its
    /// record is stamped with this boot, which ends its checks after the reboot.
    fn reprepare(&self, c: &ClaimRef) -> ClaimResult<Vec<DeviceRecord>> {
        let mut j = lock(&self.journal);
        let Some(rec) = j.get(&c.uid) else {
            return Err(format!("claim {c}: vanished from the checkpoint"));
        };
        if self.write_cdi && !rec.cdi_spec.is_empty() {
            self.cdi
                .ensure_json(&c.uid, rec.cdi_spec.as_bytes())
                .map_err(|e| format!("claim {c}: writing CDI spec: {e}"))?;
        }
        let devices = rec.devices.clone();
        if rec.boot_id != self.boot_id {
            let mut rec = rec.clone();
            rec.boot_id = self.boot_id.clone();
            j.put(&c.uid, rec).map_err(|e| format!("claim {c}: {e}"))?;
        }
        Ok(devices)
    }

    /// Claims prepared during an earlier boot that the kubelet has not prepared again yet.
    fn claims_of_earlier_boots(&self) -> Vec<ClaimRef> {
        lock(&self.journal)
            .entries()
            .values()
            .filter(|r| r.boot_id != self.boot_id)
            .map(|r| ClaimRef {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                uid: r.uid.clone(),
            })
            .collect()
    }

    /// After a reboot: claims restored from the checkpoint that were prepared during an earlier
    /// boot, and that the kubelet has not prepared again in this one, are looked up in the API
    /// server every `every`; one that is no longer in use there (the ResourceClaim is gone or
    /// was re-created, is not allocated to this driver, or is reserved for no pod) is released
    /// like an unprepare. An unprepare's record is flushed after the kubelet's answer (see
    /// [`Driver::unprepare`]), so a power loss can bring back a claim the kubelet has let go
    /// of; this is what releases it. Returns once no such claim is left; a node that did not
    /// reboot returns at once, without an API call.
    pub async fn release_unused_after_reboot(&self, every: Duration) {
        loop {
            let earlier = self.claims_of_earlier_boots();
            if earlier.is_empty() {
                return;
            }
            for c in earlier {
                let found =
                    tokio::time::timeout(self.api_budget, self.claims.get(&c.namespace, &c.name))
                        .await;
                let unused = match found {
                    Ok(Err(FetchError::NotFound)) => Some("its ResourceClaim is gone".to_owned()),
                    Ok(Ok(rc)) => unused_reason(&rc, &c, &self.name),
                    // API trouble: keep it, look again next round.
                    Ok(Err(e)) => {
                        tracing::debug!(driver = %self.name, claim = %c, error = %e, "looking up a claim from before the reboot");
                        None
                    }
                    Err(_) => None,
                };
                if let Some(why) = unused {
                    self.release_unused(&c, &why).await;
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn release_unused(&self, c: &ClaimRef, why: &str) {
        let Ok(_guards) = self.serialized().await else {
            return;
        };
        // The kubelet may have prepared it again (or unprepared it) meanwhile.
        let still = lock(&self.journal)
            .get(&c.uid)
            .is_some_and(|r| r.boot_id != self.boot_id);
        if !still {
            return;
        }
        tracing::warn!(driver = %self.name, claim = %c, reason = why,
            "releasing a claim prepared before the reboot that is no longer in use");
        if let Err(e) = self.unprepare_one(c, Flush::Now).await {
            tracing::warn!(driver = %self.name, claim = %c, error = %e, "releasing a claim from before the reboot");
        }
    }

    fn map_slots(&self, work: &mut ClaimWork) {
        let Ok(slots) = self.slots.read() else { return };
        if slots.is_empty() {
            return;
        }
        for d in &mut work.devices {
            if let Some(base) = slots.get(&d.device) {
                if d.share_id.is_empty() {
                    // A stable per-claim, per-slot identity for the backend.
                    d.share_id = format!("{}-{}", work.claim.uid, d.device);
                }
                d.device = base.clone();
            }
        }
    }

    fn is_slot(&self, allocated: &str) -> bool {
        self.slots
            .read()
            .map(|s| s.contains_key(allocated))
            .unwrap_or(false)
    }

    /// NodeUnprepareResources for this driver. Unknown claims succeed.
    pub async fn unprepare(&self, claims: &[ClaimRef]) -> Vec<(String, ClaimResult<()>)> {
        let start = Instant::now();
        let guards = self.serialized().await;
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            let r = match &guards {
                Err(e) => Err(format!("claim {c}: {e}")),
                Ok(_) => {
                    let span =
                        tracing::info_span!("unprepare", driver = %self.name, claim.uid = %c.uid);
                    self.unprepare_one(c, Flush::AfterAnswer)
                        .instrument(span)
                        .await
                }
            };
            match &r {
                Ok(()) => self
                    .metrics
                    .unprepared_claims
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(driver = %self.name, claim.uid = %c.uid, error = %e, "unprepare failed");
                    self.metrics
                        .unprepare_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                }
            };
            out.push((c.uid.clone(), r));
        }
        drop(guards);
        self.flush_in_background();
        self.metrics.unprepare_latency.observe(start.elapsed());
        out
    }

    /// `fdatasync` of the checkpoint on a blocking-pool thread, while the kubelet gets its
    /// answer: the unprepare records just written survive a crash of this process already
    /// (they are in the kernel); this makes them survive a power loss too, a fraction of a
    /// millisecond later. A record lost to a power loss in between is repaired after the
    /// reboot by [`Driver::release_unused_after_reboot`].
    /// The flush starts [`FLUSH_DELAY`] after the first unflushed record and one runs at a time;
    /// records written meanwhile are covered by it or by one more after it, so a burst of
    /// unprepares (a node draining) shares flushes and one thread instead of paying an
    /// `fdatasync` each.
    fn flush_in_background(&self) {
        if lock(&self.journal).durability() == Durability::None {
            return;
        }
        {
            let mut f = lock(&self.flushing);
            if f.0 {
                f.1 = true;
                return;
            }
            *f = (true, false);
        }
        let syncer = match lock(&self.journal).syncer() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(driver = %self.name, error = %e, "flushing the checkpoint");
                *lock(&self.flushing) = (false, false);
                return;
            }
        };
        let name = self.name.clone();
        let flushing = self.flushing.clone();
        tokio::task::spawn_blocking(move || {
            loop {
                std::thread::sleep(FLUSH_DELAY);
                if let Err(e) = syncer.sync() {
                    tracing::error!(driver = %name, error = %e, "flushing the checkpoint after an unprepare");
                }
                let mut f = lock(&flushing);
                if !f.1 {
                    f.0 = false;
                    return;
                }
                f.1 = false;
            }
        });
    }

    async fn unprepare_one(&self, c: &ClaimRef, flush: Flush) -> ClaimResult<()> {
        // Always tell the backend: a prepare that died after the backend acted but before the
        // checkpoint is rolled back here.
        self.backend
            .unprepare(UnprepareRequest {
                claim: Some(c.into()),
            })
            .await
            .map_err(|e| format!("claim {c}: {e}"))?;
        drakit_types::crash::point("unprepare-after-backend");
        lock(&self.status_pending).remove(&c.uid);
        if self.write_cdi {
            match self.cdi.remove(&c.uid) {
                // A UID that cannot name a spec file never got one.
                Ok(_) | Err(drakit_types::cdi::CdiError::InvalidName { .. }) => {}
                Err(e) => return Err(format!("claim {c}: removing CDI spec: {e}")),
            }
            drakit_types::crash::point("unprepare-after-cdi-remove");
        }
        {
            let mut j = lock(&self.journal);
            match flush {
                Flush::Now => j.remove(&c.uid),
                Flush::AfterAnswer => j.remove_deferred(&c.uid),
            }
            .map_err(|e| format!("claim {c}: {e}"))?;
        }
        drakit_types::crash::point("unprepare-after-checkpoint");
        Ok(())
    }
}

/// How long an unprepare's checkpoint record may wait for its flush (it is written at once and
/// survives a crash of the process; the flush makes it survive a power loss).
pub const FLUSH_DELAY: Duration = Duration::from_millis(1);

/// When an unprepare's checkpoint record is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Before returning.
    Now,
    /// By [`Driver::flush_in_background`] once the call's records are written.
    AfterAnswer,
}

/// Why a claim restored from before a reboot is no longer in use, if it is not.
fn unused_reason(
    rc: &k8s_openapi::api::resource::v1::ResourceClaim,
    c: &ClaimRef,
    driver: &str,
) -> Option<String> {
    let uid = rc.metadata.uid.as_deref().unwrap_or_default();
    if uid != c.uid {
        return Some(format!("its ResourceClaim was re-created (UID {uid:?})"));
    }
    let status = rc.status.as_ref();
    let Some(alloc) = status.and_then(|s| s.allocation.as_ref()) else {
        return Some("it is no longer allocated".to_owned());
    };
    let ours = alloc
        .devices
        .as_ref()
        .is_some_and(|d| d.results.iter().flatten().any(|r| r.driver == driver));
    if !ours {
        return Some(format!("it has no device of {driver} allocated"));
    }
    if status
        .and_then(|s| s.reserved_for.as_ref())
        .is_none_or(|r| r.is_empty())
    {
        return Some("it is reserved for no pod".to_owned());
    }
    None
}
