//! ResourceSlice publishing: each backend inventory becomes this node's pool, split into slices
//! of at most 128 devices, applied server-side under a stable field manager with an owner
//! reference to the Node; the pool generation bumps on every change; stale slices are deleted;
//! slices deleted under us are re-published.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use drakit_proto::drakit::{Inventory, attribute::Value as AttrValue};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Device, DeviceAttribute, DeviceCapacity,
    ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::driver::Driver;

/// Devices per slice without taints or counters (`ResourceSliceMaxDevices`).
pub const MAX_DEVICES: usize = 128;
/// Devices per slice when taints or counters are used.
pub const MAX_DEVICES_ADVANCED: usize = 64;
/// Label put on every slice this plugin owns.
pub const DRIVER_LABEL: &str = "drakit.dev/driver";

/// How to shape slices.
#[derive(Debug, Clone)]
pub struct SliceOptions {
    pub driver: String,
    pub node_name: String,
    pub node_uid: String,
    /// Publish each shared device as this many plain slot devices (0: publish it shared, with
    /// `allowMultipleAllocations`, which needs DRAConsumableCapacity).
    pub shared_slots: u32,
}

/// The built slices and the slot-name → backend-device map.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltSlices {
    pub pool: String,
    pub slices: Vec<ResourceSlice>,
    pub slots: HashMap<String, String>,
    pub device_count: usize,
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn convert(d: &drakit_proto::drakit::Device, name: String, shared: bool) -> Device {
    let attributes: BTreeMap<String, DeviceAttribute> = d
        .attributes
        .iter()
        .filter_map(|(k, a)| {
            let v = a.value.as_ref()?;
            let mut out = DeviceAttribute::default();
            match v {
                AttrValue::Int(i) => out.int = Some(*i),
                AttrValue::Bool(b) => out.bool = Some(*b),
                AttrValue::String(s) => out.string = Some(s.clone()),
                AttrValue::Version(s) => out.version = Some(s.clone()),
            }
            Some((k.clone(), out))
        })
        .collect();
    let capacity: BTreeMap<String, DeviceCapacity> = d
        .capacity
        .iter()
        .map(|(k, c)| {
            let policy =
                c.request_policy
                    .as_ref()
                    .filter(|_| shared)
                    .map(|p| CapacityRequestPolicy {
                        default: (!p.default.is_empty()).then(|| quantity(&p.default)),
                        valid_values: (!p.valid_values.is_empty())
                            .then(|| p.valid_values.iter().map(|v| quantity(v)).collect()),
                        valid_range: p.valid_range.as_ref().map(|r| CapacityRequestPolicyRange {
                            min: quantity(&r.min),
                            max: (!r.max.is_empty()).then(|| quantity(&r.max)),
                            step: (!r.step.is_empty()).then(|| quantity(&r.step)),
                        }),
                    });
            (
                k.clone(),
                DeviceCapacity {
                    value: quantity(&c.value),
                    request_policy: policy,
                },
            )
        })
        .collect();
    Device {
        name,
        attributes: (!attributes.is_empty()).then_some(attributes),
        capacity: (!capacity.is_empty()).then_some(capacity),
        allow_multiple_allocations: shared.then_some(true),
        ..Default::default()
    }
}

/// A DNS-label-safe name of a slice.
fn slice_name(node: &str, driver: &str, index: usize) -> String {
    let mut base: String = format!("{node}-{driver}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    base.truncate(240);
    format!("{base}-{index}")
}

/// Builds the slices of one inventory.
pub fn build(inv: &Inventory, opts: &SliceOptions, generation: i64) -> BuiltSlices {
    let pool = if inv.pool.is_empty() {
        opts.node_name.clone()
    } else {
        inv.pool.clone()
    };
    let mut devices = Vec::new();
    let mut slots = HashMap::new();
    for d in &inv.devices {
        if d.allow_multiple_allocations && opts.shared_slots > 0 {
            for i in 0..opts.shared_slots {
                let mut name = format!("{}-{i}", d.name);
                if name.len() > 63 {
                    let suffix = format!("-{i}");
                    name = format!(
                        "{}{suffix}",
                        &d.name[..63usize.saturating_sub(suffix.len()).min(d.name.len())]
                    );
                }
                slots.insert(name.clone(), d.name.clone());
                devices.push(convert(d, name, false));
            }
        } else {
            devices.push(convert(d, d.name.clone(), d.allow_multiple_allocations));
        }
    }
    let advanced = devices
        .iter()
        .any(|d| d.taints.is_some() || d.consumes_counters.is_some());
    let per = if advanced {
        MAX_DEVICES_ADVANCED
    } else {
        MAX_DEVICES
    };
    let device_count = devices.len();
    let chunks: Vec<Vec<Device>> = if devices.is_empty() {
        vec![Vec::new()]
    } else {
        devices.chunks(per).map(<[Device]>::to_vec).collect()
    };
    let count = chunks.len() as i64;
    let slices = chunks
        .into_iter()
        .enumerate()
        .map(|(i, devs)| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(&opts.node_name, &opts.driver, i)),
                labels: Some(BTreeMap::from([(
                    DRIVER_LABEL.to_owned(),
                    opts.driver.clone(),
                )])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: opts.node_name.clone(),
                    uid: opts.node_uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            spec: ResourceSliceSpec {
                driver: opts.driver.clone(),
                node_name: Some(opts.node_name.clone()),
                pool: ResourcePool {
                    name: pool.clone(),
                    generation,
                    resource_slice_count: count,
                },
                devices: Some(devs),
                ..Default::default()
            },
        })
        .collect();
    BuiltSlices {
        pool,
        slices,
        slots,
        device_count,
    }
}

/// Errors of one publish round.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("ResourceSlice {name}: {source}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing ResourceSlices of node {node}: {source}")]
    List {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading Node {node}: {source}")]
    Node {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("no answer from the API server within {0:?}")]
    TimedOut(Duration),
}

/// Publishes one driver's inventory for as long as `shutdown` is pending.
#[derive(Clone)]
pub struct SlicePublisher {
    pub client: crate::lazy::LazyClient,
    pub driver: Arc<Driver>,
    pub field_manager: String,
    pub shared_slots: u32,
    /// How long one publish round (Node GET, list, applies, deletes) may wait for the API
    /// server before it counts as failed and is retried (the kube client waits forever).
    pub round_timeout: Duration,
}

impl std::fmt::Debug for SlicePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlicePublisher")
            .field("driver", &self.driver.name())
            .finish()
    }
}

struct State {
    generation: i64,
    last_devices: Option<Vec<Device>>,
    last_pool: String,
}

impl SlicePublisher {
    fn api(&self, client: &kube::Client) -> kube::Api<ResourceSlice> {
        kube::Api::all(client.clone())
    }

    fn selector(&self) -> String {
        format!(
            "spec.nodeName={},spec.driver={}",
            self.driver.node_name(),
            self.driver.name()
        )
    }

    async fn existing(&self, client: &kube::Client) -> Result<Vec<ResourceSlice>, PublishError> {
        let lp = ListParams::default().fields(&self.selector());
        self.api(client)
            .list(&lp)
            .await
            .map(|l| l.items)
            .map_err(|source| PublishError::List {
                node: self.driver.node_name().to_owned(),
                source,
            })
    }

    async fn publish(
        &self,
        client: &kube::Client,
        inv: &Inventory,
        st: &mut State,
    ) -> Result<(), PublishError> {
        let node = self.driver.node_name().to_owned();
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        let node_uid = nodes
            .get(&node)
            .await
            .map_err(|source| PublishError::Node {
                node: node.clone(),
                source,
            })?
            .metadata
            .uid
            .unwrap_or_default();
        let opts = SliceOptions {
            driver: self.driver.name().to_owned(),
            node_name: node.clone(),
            node_uid,
            shared_slots: self.shared_slots,
        };
        let existing = self.existing(client).await?;
        if st.last_devices.is_none() {
            // Continue above whatever a previous instance published.
            let max = existing
                .iter()
                .map(|s| s.spec.pool.generation)
                .max()
                .unwrap_or(0);
            st.generation = st.generation.max(max);
        }
        let probe = build(inv, &opts, st.generation);
        let devices: Vec<Device> = probe
            .slices
            .iter()
            .flat_map(|s| s.spec.devices.clone().unwrap_or_default())
            .collect();
        let changed = st.last_devices.as_ref() != Some(&devices) || st.last_pool != probe.pool;
        // A slice missing or differing from what we built (deleted under us) also counts.
        let drifted = probe.slices.iter().any(|want| {
            !existing.iter().any(|have| {
                have.metadata.name == want.metadata.name
                    && have.spec.devices == want.spec.devices
                    && have.spec.pool.name == want.spec.pool.name
            })
        }) || existing.iter().any(|have| {
            !probe
                .slices
                .iter()
                .any(|want| want.metadata.name == have.metadata.name)
        });
        if changed || drifted {
            st.generation += 1;
        }
        let built = build(inv, &opts, st.generation);
        self.driver.set_inventory(inv, &built.slots);
        let pp = PatchParams::apply(&self.field_manager).force();
        for s in &built.slices {
            let name = s.metadata.name.clone().unwrap_or_default();
            self.api(client)
                .patch(&name, &pp, &Patch::Apply(s))
                .await
                .map_err(|source| PublishError::Apply {
                    name: name.clone(),
                    source,
                })?;
        }
        for old in existing {
            let Some(name) = old.metadata.name else {
                continue;
            };
            if built
                .slices
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            {
                continue;
            }
            match self
                .api(client)
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(PublishError::Apply { name, source }),
            }
        }
        self.driver
            .metrics()
            .published_devices
            .store(built.device_count as u64, Ordering::Relaxed);
        st.last_devices = Some(devices);
        st.last_pool = built.pool;
        tracing::info!(driver = %self.driver.name(), devices = built.device_count,
            slices = built.slices.len(), generation = st.generation, "published ResourceSlices");
        Ok(())
    }

    /// Runs until `shutdown` resolves: follows the backend inventory and the slices in the API.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let client = tokio::select! {
            () = &mut shutdown => return,
            c = self.client.get() => match c {
                Some(c) => c,
                None => return,
            },
        };
        let mut st = State {
            generation: 0,
            last_devices: None,
            last_pool: String::new(),
        };
        let mut inventory: Option<Inventory> = None;
        let mut backoff = Duration::from_millis(100);
        // Slice events (deleted under us, kubelet wipe) trigger a re-check.
        let wc = watcher::Config::default().fields(&self.selector());
        let mut slice_events = watcher(self.api(&client), wc).default_backoff().boxed();
        let driver_name = self.driver.name().to_owned();
        let mut inv_stream = None;
        let mut retry = tokio::time::interval(Duration::from_secs(30));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        // After a failed round, wait before the next (growing up to 5 s).
        let mut hold_until = tokio::time::Instant::now();
        let mut fail_backoff = Duration::from_millis(100);
        loop {
            if inv_stream.is_none() {
                match self
                    .driver
                    .backend()
                    .watch_devices(driver_name.clone())
                    .await
                {
                    Ok(s) => {
                        inv_stream = Some(s);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(driver = %driver_name, error = %e, "inventory watch failed; retrying");
                        tokio::select! {
                            () = &mut shutdown => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let Some(stream) = inv_stream.as_mut() else {
                continue;
            };
            tokio::select! {
                () = &mut shutdown => return,
                next = stream.next() => match next {
                    Some(Ok(inv)) => { inventory = Some(inv); dirty = true; }
                    Some(Err(e)) => {
                        tracing::warn!(driver = %driver_name, error = %e, "inventory stream error");
                        inv_stream = None;
                        continue;
                    }
                    None => { inv_stream = None; continue; }
                },
                ev = slice_events.next() => match ev {
                    Some(Ok(watcher::Event::Delete(_))) | Some(Ok(watcher::Event::InitDone)) => dirty = true,
                    Some(Ok(watcher::Event::Apply(s))) => {
                        // Someone else changed one of our slices.
                        if let Some(last) = &st.last_devices {
                            let ours = s.spec.devices.clone().unwrap_or_default();
                            if !ours.iter().all(|d| last.contains(d)) { dirty = true; }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::debug!(driver = %driver_name, error = %e, "slice watch"),
                    None => {}
                },
                _ = retry.tick() => dirty = true,
                // A failed round is retried soon, not only at the next event.
                () = tokio::time::sleep_until(hold_until), if dirty => {}
            }
            if dirty
                && tokio::time::Instant::now() >= hold_until
                && let Some(inv) = &inventory
            {
                let round =
                    tokio::time::timeout(self.round_timeout, self.publish(&client, inv, &mut st));
                match round
                    .await
                    .unwrap_or(Err(PublishError::TimedOut(self.round_timeout)))
                {
                    Ok(()) => {
                        dirty = false;
                        fail_backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        hold_until = tokio::time::Instant::now() + fail_backoff;
                        fail_backoff = (fail_backoff * 2).min(Duration::from_secs(5));
                        self.driver
                            .metrics()
                            .slice_publish_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(driver = %driver_name, error = %e, "publishing ResourceSlices failed; will retry");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drakit_proto::drakit::{Attribute, Capacity, RequestPolicy};

    fn inv(n: usize) -> Inventory {
        Inventory {
            generation: 1,
            pool: String::new(),
            devices: (0..n)
                .map(|i| drakit_proto::drakit::Device {
                    name: format!("dev-{i}"),
                    attributes: [(
                        "index".to_owned(),
                        Attribute {
                            value: Some(AttrValue::Int(i as i64)),
                        },
                    )]
                    .into(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn opts() -> SliceOptions {
        SliceOptions {
            driver: "net.drakit.dev".into(),
            node_name: "node-1".into(),
            node_uid: "nu".into(),
            shared_slots: 0,
        }
    }

    #[test]
    fn splits_300_devices_into_three_slices() {
        let b = build(&inv(300), &opts(), 4);
        assert_eq!(b.slices.len(), 3);
        let sizes: Vec<usize> = b
            .slices
            .iter()
            .map(|s| s.spec.devices.as_ref().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![128, 128, 44]);
        for s in &b.slices {
            assert_eq!(s.spec.pool.resource_slice_count, 3);
            assert_eq!(s.spec.pool.generation, 4);
            assert_eq!(s.spec.pool.name, "node-1");
            assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].uid, "nu");
        }
        assert_eq!(
            b.slices[0].metadata.name.as_deref(),
            Some("node-1-net-drakit-dev-0")
        );
    }

    #[test]
    fn shared_device_or_slots() {
        let mut i = inv(0);
        i.devices.push(drakit_proto::drakit::Device {
            name: "spec-edit".into(),
            allow_multiple_allocations: true,
            capacity: [(
                "slots".to_owned(),
                Capacity {
                    value: "8".into(),
                    request_policy: Some(RequestPolicy {
                        default: "1".into(),
                        ..Default::default()
                    }),
                },
            )]
            .into(),
            ..Default::default()
        });
        let b = build(&i, &opts(), 1);
        let d = &b.slices[0].spec.devices.as_ref().unwrap()[0];
        assert_eq!(d.allow_multiple_allocations, Some(true));
        assert!(
            d.capacity.as_ref().unwrap()["slots"]
                .request_policy
                .is_some()
        );
        let mut o = opts();
        o.shared_slots = 3;
        let b = build(&i, &o, 1);
        let devs = b.slices[0].spec.devices.as_ref().unwrap();
        assert_eq!(devs.len(), 3);
        assert_eq!(devs[2].name, "spec-edit-2");
        assert!(devs[2].allow_multiple_allocations.is_none());
        assert_eq!(b.slots["spec-edit-1"], "spec-edit");
    }

    #[test]
    fn empty_inventory_publishes_one_empty_slice() {
        let b = build(&inv(0), &opts(), 1);
        assert_eq!(b.slices.len(), 1);
        assert_eq!(b.device_count, 0);
    }
}
