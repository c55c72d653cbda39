//! The CPU concern: exclusive cpusets for containers with CPU claims, the shared pool for every
//! other container.
//!
//! - A container whose env carries `DRAKIT_CPUS_<claim>=<cpulist>` (put there by the CPU
//!   driver's CDI spec) gets exactly the union of those lists as `cpuset.cpus`, and as
//!   `cpuset.mems` the union of the NUMA nodes `drakit-cpu` reports for those claims.
//! - Every other container, including those that existed before the sidecar started (seen at
//!   Synchronize), gets the shared pool (`shared_cpus` / `shared_mems` of `CpuPool.Watch`).
//! - When the pool changes, every tracked shared container whose cpuset differs is sent an
//!   `UpdateContainers` with the new pool.
//!
//! Until the first pool state has arrived from `drakit-cpu`, cpusets are left alone (logged), so
//! a slow CPU daemon never blocks pods; exclusive containers still get their own CPUs, which the
//! env already names. An empty shared pool is never written (it would fail the container).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use drakit_proto::drakit::CpuPoolState;
use drakit_proto::drakit::cpu_pool_client::CpuPoolClient;
use drakit_proto::nri::{Container, ContainerState, ContainerUpdate, LinuxResources, PodSandbox};
use drakit_types::constants::{is_cpus_env_name, sanitize_claim_uid};
use futures::future::BoxFuture;
use nri::{Adjustment, Event, EventMask, HookResult, Status, StubHandle, Update};

use crate::Concern;
use crate::cpuset;

/// What the sidecar knows of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    pub generation: u64,
    pub shared_cpus: String,
    pub shared_mems: String,
    /// NUMA nodes per claim, keyed by the sanitized claim UID (the env var suffix).
    pub mems_by_claim: HashMap<String, String>,
}

impl Pool {
    /// Builds the view from a `CpuPool.Watch` message; lists are canonicalised.
    pub fn from_state(s: &CpuPoolState) -> Result<Self, String> {
        let mut mems_by_claim = HashMap::new();
        for a in &s.assignments {
            if let Some(c) = &a.claim {
                mems_by_claim.insert(sanitize_claim_uid(&c.uid), cpuset::canonical(&a.mems)?);
            }
        }
        Ok(Self {
            generation: s.generation,
            shared_cpus: cpuset::canonical(&s.shared_cpus)?,
            shared_mems: cpuset::canonical(&s.shared_mems)?,
            mems_by_claim,
        })
    }
}

/// The cpuset a container should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cpus: String,
    /// Empty when unknown (left as the runtime set it).
    pub mems: String,
}

#[derive(Debug, Clone)]
struct Tracked {
    /// Sanitized claim UIDs and their CPU lists from `DRAKIT_CPUS_*`.
    claims: Vec<(String, BTreeSet<u32>)>,
    /// What was last applied (or found at Synchronize).
    applied: Option<Target>,
}

#[derive(Debug, Default)]
struct State {
    pool: Option<Pool>,
    containers: HashMap<String, Tracked>,
}

/// The CPU concern.
#[derive(Debug)]
pub struct CpuConcern {
    socket: PathBuf,
    state: Mutex<State>,
    handle: OnceLock<StubHandle>,
}

/// The CPU claims named in a container's env: `(sanitized uid, cpus)`, sorted.
pub fn claims_of(c: &Container) -> Result<Vec<(String, BTreeSet<u32>)>, String> {
    let mut out = Vec::new();
    for e in &c.env {
        let Some((k, v)) = e.split_once('=') else {
            continue;
        };
        if !is_cpus_env_name(k) {
            continue;
        }
        let set = cpuset::parse(v).map_err(|e| format!("{k}: {e}"))?;
        if set.is_empty() {
            return Err(format!("{k}: the claim's CPU list is empty"));
        }
        let suffix = k
            .strip_prefix(drakit_types::constants::CPUS_ENV_PREFIX)
            .unwrap_or(k);
        out.push((suffix.to_string(), set));
    }
    out.sort();
    Ok(out)
}

fn target_for(claims: &[(String, BTreeSet<u32>)], pool: Option<&Pool>) -> Option<Target> {
    if claims.is_empty() {
        let p = pool?;
        if p.shared_cpus.is_empty() {
            return None;
        }
        return Some(Target {
            cpus: p.shared_cpus.clone(),
            mems: p.shared_mems.clone(),
        });
    }
    let cpus: BTreeSet<u32> = claims.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    let mut mems = BTreeSet::new();
    let mut all_known = pool.is_some();
    if let Some(p) = pool {
        for (uid, _) in claims {
            match p.mems_by_claim.get(uid) {
                Some(m) => mems.extend(cpuset::parse(m).unwrap_or_default()),
                None => all_known = false,
            }
        }
    }
    Some(Target {
        cpus: cpuset::format(&cpus),
        mems: if all_known {
            cpuset::format(&mems)
        } else {
            String::new()
        },
    })
}

fn current_of(c: &Container) -> Option<Target> {
    let cpu = c.linux.as_ref()?.resources.as_ref()?.cpu.as_ref()?;
    Some(Target {
        cpus: cpuset::canonical(&cpu.cpus).unwrap_or_else(|_| cpu.cpus.clone()),
        mems: cpuset::canonical(&cpu.mems).unwrap_or_else(|_| cpu.mems.clone()),
    })
}

fn update_for(id: &str, t: &Target) -> ContainerUpdate {
    let mut u = Update::new(id);
    u.set_cpuset_cpus(t.cpus.clone());
    if !t.mems.is_empty() {
        u.set_cpuset_mems(t.mems.clone());
    }
    u.ignore_failure(true);
    u.into_proto()
}

impl CpuConcern {
    pub fn new(socket: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            socket,
            state: Mutex::new(State::default()),
            handle: OnceLock::new(),
        })
    }

    /// Gives the concern the stub handle it sends `UpdateContainers` through.
    pub fn set_handle(&self, handle: StubHandle) {
        let _ = self.handle.set(handle);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another hook panicked mid-update; the map is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool currently known (None before the first state).
    pub fn pool(&self) -> Option<Pool> {
        self.lock().pool.clone()
    }

    /// Applies a new pool; returns the updates the tracked containers need.
    pub fn set_pool(&self, pool: Pool) -> Vec<ContainerUpdate> {
        let mut st = self.lock();
        if pool.shared_cpus.is_empty() {
            tracing::warn!(
                generation = pool.generation,
                "drakit-cpu reports an empty shared pool; shared containers keep their cpusets"
            );
        }
        st.pool = Some(pool);
        let State { pool, containers } = &mut *st;
        let mut out = Vec::new();
        for (id, t) in containers.iter_mut() {
            let Some(target) = target_for(&t.claims, pool.as_ref()) else {
                continue;
            };
            if t.applied.as_ref() != Some(&target) {
                out.push(update_for(id, &target));
                t.applied = Some(target);
            }
        }
        out.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        out
    }

    /// Number of containers tracked.
    pub fn tracked(&self) -> usize {
        self.lock().containers.len()
    }

    /// Follows `CpuPool.Watch` for ever: reconnects with backoff, applies each state and sends
    /// the resulting updates once the runtime is synchronized.
    pub async fn watch_pool(self: Arc<Self>) {
        let mut attempt: u32 = 0;
        loop {
            match self.watch_once().await {
                Ok(()) => {
                    tracing::warn!("drakit-cpu closed the pool stream; reconnecting");
                    attempt = 0;
                }
                Err(e) => {
                    if attempt.is_multiple_of(30) {
                        tracing::warn!(socket = %self.socket.display(), "pool watch: {e}");
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
            let delay = Duration::from_millis(100u64 << attempt.min(4));
            tokio::time::sleep(delay).await;
        }
    }

    async fn watch_once(&self) -> Result<(), String> {
        let ch = drakit_proto::uds::connect(&self.socket, Duration::from_secs(2))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = CpuPoolClient::new(ch);
        let mut stream = client
            .watch(drakit_proto::drakit::CpuPoolWatchRequest {})
            .await
            .map_err(|e| format!("watch: {}", e.message()))?
            .into_inner();
        loop {
            let Some(state) = stream
                .message()
                .await
                .map_err(|e| format!("stream: {}", e.message()))?
            else {
                return Ok(());
            };
            let pool = match Pool::from_state(&state) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(
                        generation = state.generation,
                        "ignoring a bad pool state: {e}"
                    );
                    continue;
                }
            };
            tracing::info!(
                generation = pool.generation,
                shared = %pool.shared_cpus,
                "pool state"
            );
            self.apply_pool(pool).await;
        }
    }

    /// Takes a new pool and sends the resulting updates (after the runtime sync); returns how
    /// many containers were updated.
    pub async fn apply_pool(&self, pool: Pool) -> usize {
        let updates = self.set_pool(pool);
        let n = updates.len();
        self.send(updates).await;
        n
    }

    async fn send(&self, updates: Vec<ContainerUpdate>) {
        if updates.is_empty() {
            return;
        }
        let Some(h) = self.handle.get() else {
            return;
        };
        // Updates wait for the sync: Synchronize itself applies the current pool.
        if h.wait_synchronized().await.is_err() {
            return;
        }
        let n = updates.len();
        match h.update_containers(updates, Vec::new()).await {
            Ok(failed) if failed.is_empty() => tracing::info!(containers = n, "pool applied"),
            Ok(failed) => tracing::warn!(
                containers = n,
                failed = ?failed.iter().map(|u| &u.container_id).collect::<Vec<_>>(),
                "pool update failed for some containers"
            ),
            Err(e) => tracing::warn!("UpdateContainers: {e}"),
        }
    }

    fn track(&self, c: &Container, applied: Option<Target>) -> Result<Option<Target>, String> {
        let claims = claims_of(c)?;
        let mut st = self.lock();
        let target = target_for(&claims, st.pool.as_ref());
        st.containers.insert(
            c.id.clone(),
            Tracked {
                claims,
                applied: target.clone().or(applied),
            },
        );
        Ok(target)
    }
}

impl Concern for CpuConcern {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn events(&self) -> EventMask {
        EventMask::from_events([
            Event::CreateContainer,
            Event::UpdateContainer,
            Event::StopContainer,
            Event::RemoveContainer,
        ])
    }

    fn synchronize<'a>(
        &'a self,
        _pods: &'a [PodSandbox],
        containers: &'a [Container],
    ) -> BoxFuture<'a, HookResult<Vec<ContainerUpdate>>> {
        Box::pin(async move {
            self.lock().containers.clear();
            let mut out = Vec::new();
            for c in containers {
                if c.state == ContainerState::ContainerStopped as i32 {
                    continue;
                }
                let current = current_of(c);
                match self.track(c, current.clone()) {
                    Ok(Some(target)) if current.as_ref() != Some(&target) => {
                        out.push(update_for(&c.id, &target));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(container = %c.id, "cannot place at sync: {e}"),
                }
            }
            if self.lock().pool.is_none() {
                tracing::warn!(
                    "no pool from drakit-cpu yet: existing containers keep their cpusets until it arrives"
                );
            }
            Ok(out)
        })
    }

    fn create_container<'a>(
        &'a self,
        _pod: &'a PodSandbox,
        container: &'a Container,
        adj: &'a mut Adjustment,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            match self.track(container, None) {
                Ok(Some(t)) => {
                    adj.set_cpuset_cpus(t.cpus);
                    if !t.mems.is_empty() {
                        adj.set_cpuset_mems(t.mems);
                    }
                    Ok(())
                }
                Ok(None) => {
                    tracing::debug!(container = %container.id, "no pool yet; cpuset left alone");
                    Ok(())
                }
                Err(e) => Err(Status::invalid_argument(e)),
            }
        })
    }

    fn update_container<'a>(
        &'a self,
        _pod: &'a PodSandbox,
        container: &'a Container,
        _resources: Option<&'a LinuxResources>,
    ) -> BoxFuture<'a, HookResult<Vec<ContainerUpdate>>> {
        // Someone (the kubelet) changes the container's resources: keep our cpuset in them.
        Box::pin(async move {
            let st = self.lock();
            let Some(t) = st.containers.get(&container.id) else {
                return Ok(Vec::new());
            };
            Ok(target_for(&t.claims, st.pool.as_ref())
                .map(|target| vec![update_for(&container.id, &target)])
                .unwrap_or_default())
        })
    }

    fn stop_container<'a>(
        &'a self,
        _pod: &'a PodSandbox,
        container: &'a Container,
    ) -> BoxFuture<'a, HookResult<Vec<ContainerUpdate>>> {
        Box::pin(async move {
            self.lock().containers.remove(&container.id);
            Ok(Vec::new())
        })
    }

    fn remove_container<'a>(
        &'a self,
        _pod: &'a PodSandbox,
        container: &'a Container,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            self.lock().containers.remove(&container.id);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drakit_proto::drakit::{ClaimRef, CpuAssignment};

    fn ctr(id: &str, env: &[&str]) -> Container {
        Container {
            id: id.into(),
            env: env.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn state(generation: u64, shared: &str, assignments: &[(&str, &str, &str)]) -> CpuPoolState {
        CpuPoolState {
            generation,
            shared_cpus: shared.into(),
            shared_mems: "0".into(),
            assignments: assignments
                .iter()
                .map(|(uid, cpus, mems)| CpuAssignment {
                    claim: Some(ClaimRef {
                        uid: uid.to_string(),
                        ..Default::default()
                    }),
                    cpus: cpus.to_string(),
                    mems: mems.to_string(),
                    pod_uids: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn two_claims_get_the_union_and_their_nodes() {
        let cc = CpuConcern::new("/nonexistent".into());
        cc.set_pool(
            Pool::from_state(&state(
                1,
                "0-1,6-7",
                &[("a-1", "2-3", "0"), ("b-2", "4-5", "1")],
            ))
            .unwrap(),
        );
        let c = ctr("c1", &["DRAKIT_CPUS_a_1=2-3", "DRAKIT_CPUS_b_2=5,4"]);
        let t = cc.track(&c, None).unwrap().unwrap();
        assert_eq!(
            t,
            Target {
                cpus: "2-5".into(),
                mems: "0-1".into()
            }
        );
    }

    #[test]
    fn pool_change_updates_only_shared_containers_that_differ() {
        let cc = CpuConcern::new("/nonexistent".into());
        assert!(
            cc.set_pool(Pool::from_state(&state(1, "0-7", &[])).unwrap())
                .is_empty()
        );
        cc.track(&ctr("shared", &[]), None).unwrap();
        cc.track(&ctr("excl", &["DRAKIT_CPUS_x=4-5"]), None)
            .unwrap();
        let u = cc.set_pool(Pool::from_state(&state(2, "0-3,6-7", &[("x", "4-5", "0")])).unwrap());
        let ids: Vec<_> = u.iter().map(|u| u.container_id.as_str()).collect();
        // the exclusive one learns its mems; the shared one gets the smaller pool
        assert_eq!(ids, vec!["excl", "shared"]);
        assert!(
            cc.set_pool(Pool::from_state(&state(3, "0-3,6-7", &[("x", "4-5", "0")])).unwrap())
                .is_empty()
        );
    }

    #[test]
    fn bad_env_is_a_clear_error() {
        let e = claims_of(&ctr("c", &["DRAKIT_CPUS_x=1-"])).unwrap_err();
        assert!(e.contains("DRAKIT_CPUS_x"), "{e}");
        let e = claims_of(&ctr("c", &["DRAKIT_CPUS_x="])).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn empty_pool_is_never_applied() {
        let cc = CpuConcern::new("/nonexistent".into());
        cc.set_pool(Pool::from_state(&state(1, "", &[])).unwrap());
        assert_eq!(cc.track(&ctr("s", &[]), None).unwrap(), None);
    }
}
