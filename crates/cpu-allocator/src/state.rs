//! Exclusive CPU bookkeeping: prepare, unprepare, the shared pool, restart restore.

use std::collections::BTreeMap;

use drakit_proto::drakit::{
    ClaimRef, ContainerEdits, CpuAssignment, CpuPoolState, Inventory, PrepareRequest,
    PrepareResponse, PreparedDevice,
};
use serde::{Deserialize, Serialize};

use drakit_types::config::{
    ClaimConfig, CoreType as ConfigCoreType, CpuConfig, NumaAlignment, SmtPolicy,
};

use crate::alloc::{self, AllocError, PickOptions};
use crate::cpuset::CpuSet;
use crate::inventory::{self, CPUS_CAPACITY, DeviceModel};
use crate::store::{StateStore, StoreError};
use crate::topology::CoreType;
use crate::topology::Topology;

/// The CDI environment variable that carries a claim's exclusive CPUs to the NRI sidecar:
/// `DRAKIT_CPUS_<sanitised claim uid>=<cpulist>` (names from `drakit_types::constants`).
pub use drakit_types::constants::{CPUS_ENV_PREFIX, cpus_env_name};

/// Node-level settings of the allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub model: DeviceModel,
    /// CPUs never handed out exclusively (kubelet `reservedSystemCPUs` and the like).
    pub reserved: CpuSet,
    /// Reserved CPUs still run shared containers (otherwise only system daemons use them).
    pub reserved_shareable: bool,
    /// Isolated CPUs (isolcpus) run shared containers (default: no, the kernel does not balance
    /// load onto them).
    pub isolated_shareable: bool,
    /// Allow a prepare that leaves the shared pool empty.
    pub allow_empty_shared_pool: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            model: DeviceModel::Individual,
            reserved: CpuSet::new(),
            reserved_shareable: false,
            isolated_shareable: false,
            allow_empty_shared_pool: false,
        }
    }
}

/// A device of a prepared claim, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedDevice {
    pub requests: Vec<String>,
    pub pool: String,
    pub device: String,
    #[serde(default)]
    pub share_id: String,
}

/// What is persisted per prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub cpus: CpuSet,
    pub pods: Vec<String>,
    pub devices: Vec<RecordedDevice>,
    /// Boot the allocation was made in; after a reboot it is stale.
    pub boot_id: String,
}

/// Why a prepare (or unprepare) failed; every variant names the claim.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("claim {claim}: invalid request: {reason}")]
    Invalid { claim: String, reason: String },
    #[error("claim {claim}: request made under boot {request} but the node booted as {node}")]
    BootMismatch {
        claim: String,
        request: String,
        node: String,
    },
    #[error("claim {claim}: device {device}: {reason}")]
    Device {
        claim: String,
        device: String,
        reason: String,
    },
    #[error("claim {claim}: device {device}: cpu{cpu} is already exclusive to claim {holder}")]
    AlreadyExclusive {
        claim: String,
        device: String,
        cpu: u32,
        holder: String,
    },
    #[error("claim {claim}: device {device}: {source}")]
    Alloc {
        claim: String,
        device: String,
        #[source]
        source: AllocError,
    },
    #[error(
        "claim {claim}: taking {cpus} would leave the shared pool empty (the last shared CPU is never handed out)"
    )]
    SharedPoolEmpty { claim: String, cpus: CpuSet },
    #[error("claim {claim}: already prepared with other devices ({recorded}); unprepare it first")]
    Conflict { claim: String, recorded: String },
    #[error("claim {claim}: saving state: {source}")]
    Store {
        claim: String,
        #[source]
        source: StoreError,
    },
}

/// Errors building a manager.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("loading state: {0}")]
    Load(#[source] StoreError),
    #[error("reserved CPUs {reserved} leave no online CPU to allocate")]
    NothingAllocatable { reserved: CpuSet },
}

/// The allocator's state: topology, exclusive assignments, persistence.
pub struct Manager {
    topo: Topology,
    cfg: PoolConfig,
    boot_id: String,
    store: Box<dyn StateStore>,
    claims: BTreeMap<String, ClaimRecord>,
    owner: BTreeMap<u32, String>,
    generation: u64,
    inventory_generation: u64,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("cfg", &self.cfg)
            .field("boot_id", &self.boot_id)
            .field("claims", &self.claims.len())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Builds the manager and restores the records of the current boot from `store`; records of
    /// another boot, unreadable ones and ones that conflict are dropped (and deleted) with a log.
    pub fn new(
        topo: Topology,
        cfg: PoolConfig,
        boot_id: &str,
        mut store: Box<dyn StateStore>,
    ) -> Result<Self, StateError> {
        if topo.online.difference(&cfg.reserved).is_empty() {
            return Err(StateError::NothingAllocatable {
                reserved: cfg.reserved.clone(),
            });
        }
        let entries = store.load().map_err(StateError::Load)?;
        let mut m = Self {
            topo,
            cfg,
            boot_id: boot_id.to_string(),
            store,
            claims: BTreeMap::new(),
            owner: BTreeMap::new(),
            generation: 1,
            inventory_generation: 1,
        };
        for (key, value) in entries {
            match m.restore_one(&key, &value) {
                Ok(()) => {}
                Err(reason) => {
                    tracing::warn!(claim.uid = %key, "dropping recorded allocation: {reason}");
                    if let Err(e) = m.store.delete(&key) {
                        tracing::error!(claim.uid = %key, "deleting dropped record: {e}");
                    }
                }
            }
        }
        Ok(m)
    }

    fn restore_one(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        let rec: ClaimRecord =
            serde_json::from_slice(value).map_err(|e| format!("unreadable record: {e}"))?;
        if rec.uid != key {
            return Err(format!("record key {key} holds claim {}", rec.uid));
        }
        if rec.boot_id != self.boot_id {
            return Err(format!(
                "stale: recorded under boot {} but the node booted as {}; the allocation \
                 cannot have survived the reboot",
                rec.boot_id, self.boot_id
            ));
        }
        let reserved = rec.cpus.intersection(&self.cfg.reserved);
        if !reserved.is_empty() {
            return Err(format!("holds reserved CPUs {reserved}"));
        }
        for cpu in rec.cpus.iter() {
            if let Some(holder) = self.owner.get(&cpu) {
                return Err(format!("cpu{cpu} is already exclusive to claim {holder}"));
            }
        }
        let offline = rec.cpus.difference(&self.topo.online);
        if !offline.is_empty() {
            tracing::warn!(claim.uid = %key, "restored allocation holds offline CPUs {offline}");
        }
        for cpu in rec.cpus.iter() {
            self.owner.insert(cpu, rec.uid.clone());
        }
        tracing::info!(claim.uid = %key, cpus = %rec.cpus, "restored exclusive allocation");
        self.claims.insert(rec.uid.clone(), rec);
        Ok(())
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Bumped on every change of the exclusive assignments.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn claims(&self) -> impl Iterator<Item = &ClaimRecord> {
        self.claims.values()
    }

    pub fn claim(&self, uid: &str) -> Option<&ClaimRecord> {
        self.claims.get(uid)
    }

    /// All CPUs held exclusively.
    pub fn exclusive(&self) -> CpuSet {
        self.owner.keys().copied().collect()
    }

    /// Online CPUs that may be handed out: online minus reserved.
    pub fn allocatable(&self) -> CpuSet {
        self.topo.online.difference(&self.cfg.reserved)
    }

    /// online − exclusive − (reserved unless shareable) − (isolated unless shareable).
    pub fn shared_pool(&self) -> CpuSet {
        let mut pool = self.topo.online.difference(&self.exclusive());
        if !self.cfg.reserved_shareable {
            pool = pool.difference(&self.cfg.reserved);
        }
        if !self.cfg.isolated_shareable {
            pool = pool.difference(&self.topo.isolated);
        }
        pool
    }

    /// What the NRI sidecar needs: the shared pool and every exclusive assignment.
    pub fn pool_state(&self) -> CpuPoolState {
        let shared = self.shared_pool();
        CpuPoolState {
            generation: self.generation,
            shared_mems: self.topo.mems_of(&shared).to_string(),
            shared_cpus: shared.to_string(),
            assignments: self
                .claims
                .values()
                .map(|r| CpuAssignment {
                    claim: Some(ClaimRef {
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        uid: r.uid.clone(),
                    }),
                    cpus: r.cpus.to_string(),
                    mems: self.topo.mems_of(&r.cpus).to_string(),
                    pod_uids: r.pods.clone(),
                })
                .collect(),
        }
    }

    /// The published devices (static while the topology is).
    pub fn inventory(&self) -> Inventory {
        inventory::build(
            &self.topo,
            self.cfg.model,
            &self.allocatable(),
            self.inventory_generation,
        )
    }

    /// Takes a freshly discovered topology (CPU hotplug, isolcpus change). Returns whether
    /// anything changed; then the inventory generation and the pool generation are bumped.
    /// Claims keep their CPUs; those holding CPUs that went offline are logged.
    pub fn refresh_topology(&mut self, topo: Topology) -> bool {
        if topo == self.topo {
            return false;
        }
        let went_offline = self.topo.online.difference(&topo.online);
        let came_online = topo.online.difference(&self.topo.online);
        tracing::info!(
            offline = %went_offline,
            online = %came_online,
            "CPU topology changed; republishing devices"
        );
        for rec in self.claims.values() {
            let lost = rec.cpus.difference(&topo.online);
            if !lost.is_empty() {
                tracing::warn!(
                    claim.uid = %rec.uid,
                    "exclusive CPUs {lost} of the claim are no longer online"
                );
            }
        }
        self.topo = topo;
        self.inventory_generation += 1;
        self.generation += 1;
        true
    }

    /// Records the exclusive CPUs of a claim. Idempotent: a repeat returns the same answer.
    pub fn prepare(&mut self, req: &PrepareRequest) -> Result<PrepareResponse, PrepareError> {
        let claim = req.claim.clone().unwrap_or_default();
        let uid = claim.uid.clone();
        let invalid = |reason: String| PrepareError::Invalid {
            claim: if uid.is_empty() {
                "<no uid>".into()
            } else {
                uid.clone()
            },
            reason,
        };
        if uid.is_empty() || uid.len() > 128 {
            return Err(invalid("claim uid must be 1-128 characters".into()));
        }
        if !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid(format!(
                "claim uid {uid:?} has characters other than [A-Za-z0-9-]"
            )));
        }
        if !req.boot_id.is_empty() && req.boot_id != self.boot_id {
            return Err(PrepareError::BootMismatch {
                claim: uid,
                request: req.boot_id.clone(),
                node: self.boot_id.clone(),
            });
        }
        let wanted: Vec<RecordedDevice> = req
            .devices
            .iter()
            .map(|d| RecordedDevice {
                requests: d.requests.clone(),
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
            })
            .collect();
        if let Some(rec) = self.claims.get(&uid) {
            if same_devices(&rec.devices, &wanted) {
                return Ok(response(rec));
            }
            return Err(PrepareError::Conflict {
                claim: uid,
                recorded: rec
                    .devices
                    .iter()
                    .map(|d| d.device.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        if req.devices.is_empty() {
            return Err(invalid("no devices".into()));
        }

        let allocatable = self.allocatable();
        let groups = match self.cfg.model {
            DeviceModel::Grouped(by) => inventory::groups(&self.topo, by, &allocatable),
            DeviceModel::Individual => Vec::new(),
        };
        let mut chosen = CpuSet::new();
        // Individual model: CPUs of the devices sharing one config, checked against it below.
        let mut per_config: BTreeMap<String, (CpuConfig, Vec<String>, CpuSet)> = BTreeMap::new();
        for d in &req.devices {
            let dev_err = |reason: String| PrepareError::Device {
                claim: uid.clone(),
                device: d.device.clone(),
                reason,
            };
            let config =
                decode_config(&d.config_json).map_err(|r| dev_err(format!("config: {r}")))?;
            if d.admin_access {
                return Err(dev_err(
                    "adminAccess is not supported for exclusive CPUs".into(),
                ));
            }
            let cpus = match self.cfg.model {
                DeviceModel::Individual => {
                    let cpu = d
                        .device
                        .strip_prefix("cpu")
                        .and_then(|n| n.parse::<u32>().ok())
                        .filter(|n| format!("cpu{n}") == d.device)
                        .ok_or_else(|| {
                            dev_err("not a device of this driver (want cpu<N>)".into())
                        })?;
                    if !self.topo.online.contains(cpu) {
                        return Err(dev_err(format!("cpu{cpu} is offline or absent")));
                    }
                    if self.cfg.reserved.contains(cpu) {
                        return Err(dev_err(format!("cpu{cpu} is reserved")));
                    }
                    if chosen.contains(cpu) {
                        return Err(dev_err(format!("cpu{cpu} is allocated twice in the claim")));
                    }
                    if let Some(c) = &config {
                        let entry = per_config
                            .entry(d.config_json.clone())
                            .or_insert_with(|| (c.clone(), Vec::new(), CpuSet::new()));
                        entry.1.push(d.device.clone());
                        entry.2.insert(cpu);
                    }
                    [cpu].into_iter().collect::<CpuSet>()
                }
                DeviceModel::Grouped(_) => {
                    let group = groups.iter().find(|g| g.name == d.device).ok_or_else(|| {
                        dev_err(format!(
                            "no such group (have {})",
                            groups
                                .iter()
                                .map(|g| g.name.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        ))
                    })?;
                    let capacity = match d.consumed_capacity.get(CPUS_CAPACITY) {
                        Some(q) => Some(parse_count(q).map_err(|r| {
                            dev_err(format!("consumed_capacity[{CPUS_CAPACITY:?}]: {r}"))
                        })?),
                        None => None,
                    };
                    let from_config = config.as_ref().and_then(|c| c.count).map(|n| n as usize);
                    let count = match (capacity, from_config) {
                        (Some(a), Some(b)) if a != b => {
                            return Err(dev_err(format!(
                                "config count {b} differs from the allocated capacity {a} \
                                 (the scheduler accounted {a})"
                            )));
                        }
                        (Some(n), _) | (None, Some(n)) => n,
                        (None, None) => 1, // the request policy's default
                    };
                    let free = group.cpus.difference(&self.exclusive()).difference(&chosen);
                    let opts = pick_options(config.as_ref());
                    alloc::pick_with(&self.topo, &free, count, opts).map_err(|source| {
                        PrepareError::Alloc {
                            claim: uid.clone(),
                            device: d.device.clone(),
                            source,
                        }
                    })?
                }
            };
            for cpu in cpus.iter() {
                if let Some(holder) = self.owner.get(&cpu) {
                    return Err(PrepareError::AlreadyExclusive {
                        claim: uid.clone(),
                        device: d.device.clone(),
                        cpu,
                        holder: holder.clone(),
                    });
                }
            }
            chosen = chosen.union(&cpus);
        }
        for (config, devices, cpus) in per_config.values() {
            self.check_individual(config, cpus)
                .map_err(|reason| PrepareError::Device {
                    claim: uid.clone(),
                    device: devices.join(","),
                    reason: format!("config: {reason}"),
                })?;
        }
        if !self.cfg.allow_empty_shared_pool && self.shared_pool().difference(&chosen).is_empty() {
            return Err(PrepareError::SharedPoolEmpty {
                claim: uid,
                cpus: chosen,
            });
        }
        let rec = ClaimRecord {
            namespace: claim.namespace,
            name: claim.name,
            uid: uid.clone(),
            cpus: chosen,
            pods: req.reserved_for_pods.clone(),
            devices: wanted,
            boot_id: self.boot_id.clone(),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| PrepareError::Invalid {
            claim: uid.clone(),
            reason: format!("encoding record: {e}"),
        })?;
        self.store
            .put(&uid, &bytes)
            .map_err(|source| PrepareError::Store {
                claim: uid.clone(),
                source,
            })?;
        for cpu in rec.cpus.iter() {
            self.owner.insert(cpu, uid.clone());
        }
        self.generation += 1;
        tracing::info!(claim.uid = %uid, cpus = %rec.cpus, "prepared exclusive CPUs");
        let resp = response(&rec);
        self.claims.insert(uid, rec);
        Ok(resp)
    }

    /// The scheduler chose the CPUs of the individual model; a `CpuConfig` can only refuse them.
    fn check_individual(&self, config: &CpuConfig, cpus: &CpuSet) -> Result<(), String> {
        if let Some(want) = wanted_core_type(config) {
            for id in cpus.iter() {
                let got = self.topo.cpus.get(&id).and_then(|c| c.core_type);
                if got != Some(want) {
                    let got = got.map_or("not typed (no hybrid part)", |t| t.as_str());
                    return Err(format!(
                        "coreType asks for {want} but cpu{id} is {got}; select by the coreType attribute"
                    ));
                }
            }
        }
        if config.smt == Some(SmtPolicy::FullCores) {
            for id in cpus.iter() {
                if let Some(c) = self.topo.cpus.get(&id)
                    && !c.siblings.is_subset(cpus)
                {
                    return Err(format!(
                        "smt full-cores: cpu{id} is allocated without its siblings {}",
                        c.siblings
                    ));
                }
            }
        }
        if config.numa_alignment == Some(NumaAlignment::Require) {
            let nodes = self.topo.mems_of(cpus);
            if nodes.len() > 1 {
                return Err(format!(
                    "numaAlignment require: CPUs {cpus} span NUMA nodes {nodes}"
                ));
            }
        }
        Ok(())
    }

    /// Returns a claim's CPUs to the pool; unknown claims succeed. Returns whether anything changed.
    pub fn unprepare(&mut self, uid: &str) -> Result<bool, PrepareError> {
        if !self.claims.contains_key(uid) {
            return Ok(false);
        }
        self.store
            .delete(uid)
            .map_err(|source| PrepareError::Store {
                claim: uid.to_string(),
                source,
            })?;
        if let Some(rec) = self.claims.remove(uid) {
            for cpu in rec.cpus.iter() {
                self.owner.remove(&cpu);
            }
            tracing::info!(claim.uid = %uid, cpus = %rec.cpus, "released exclusive CPUs");
        }
        self.generation += 1;
        Ok(true)
    }
}

fn same_devices(a: &[RecordedDevice], b: &[RecordedDevice]) -> bool {
    let key = |v: &[RecordedDevice]| {
        let mut k: Vec<(String, String, String)> = v
            .iter()
            .map(|d| (d.pool.clone(), d.device.clone(), d.share_id.clone()))
            .collect();
        k.sort();
        k
    };
    key(a) == key(b)
}

fn response(rec: &ClaimRecord) -> PrepareResponse {
    let env = format!("{}={}", cpus_env_name(&rec.uid), rec.cpus);
    PrepareResponse {
        devices: rec
            .devices
            .iter()
            .map(|d| PreparedDevice {
                requests: d.requests.clone(),
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
                edits: Some(ContainerEdits {
                    env: vec![env.clone()],
                    ..Default::default()
                }),
                network_data: None,
                conditions: Vec::new(),
            })
            .collect(),
    }
}

/// Parses a CPU count quantity: `4`, or `4000m` (whole CPUs only).
pub fn parse_count(q: &str) -> Result<usize, String> {
    let q = q.trim();
    let (digits, milli) = match q.strip_suffix('m') {
        Some(d) => (d, true),
        None => (q, false),
    };
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{q:?} is not a whole number of CPUs"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{q:?} is out of range"))?;
    let n = if milli {
        if !n.is_multiple_of(1000) {
            return Err(format!("{q:?} is not a whole number of CPUs"));
        }
        n / 1000
    } else {
        n
    };
    if n == 0 || n > u64::from(crate::cpuset::MAX_CPUS) {
        return Err(format!("{q:?} is out of range"));
    }
    Ok(n as usize)
}

/// Decodes a device's claim config (drakit-types JSON, as the kubelet plugin merged and
/// validated it): `None` when empty, an error for any kind other than `CpuConfig`.
pub fn decode_config(json: &str) -> Result<Option<CpuConfig>, String> {
    if json.trim().is_empty() {
        return Ok(None);
    }
    match ClaimConfig::from_json(json.as_bytes()) {
        Ok(ClaimConfig::Cpu(c)) => Ok(Some(c)),
        Ok(other) => Err(format!("kind {} is not CpuConfig", other.kind())),
        Err(e) => Err(e.to_string()),
    }
}

fn wanted_core_type(config: &CpuConfig) -> Option<CoreType> {
    match config.core_type {
        Some(ConfigCoreType::Performance) => Some(CoreType::Performance),
        Some(ConfigCoreType::Efficiency) => Some(CoreType::Efficiency),
        Some(ConfigCoreType::Any) | None => None,
    }
}

/// Maps a `CpuConfig` to picker options. `smt: any` and `numaAlignment: none` behave like
/// `prefer`: packing whole cores and one node costs nothing when the caller does not care.
pub fn pick_options(config: Option<&CpuConfig>) -> PickOptions {
    let Some(c) = config else {
        return PickOptions::default();
    };
    PickOptions {
        smt: match c.smt {
            Some(SmtPolicy::FullCores) => alloc::SmtPolicy::FullCores,
            _ => alloc::SmtPolicy::Prefer,
        },
        core_type: wanted_core_type(c),
        single_numa_node: c.numa_alignment == Some(NumaAlignment::Require),
    }
}
