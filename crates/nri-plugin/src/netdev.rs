//! The netdev concern (attach mode `nri`): at RunPodSandbox the pod's network namespace is handed
//! to `drakit-netdev` (`NetdevAttach.AttachPod`), which moves/creates, configures and brings up
//! the interfaces of the pod's prepared net claims; at StopPodSandbox and RemovePodSandbox
//! (`DetachPod`, idempotent) they go back to the host or are deleted.
//!
//! A pod without net claims costs one local call that answers at once. If `drakit-netdev` cannot
//! be reached, RunPodSandbox fails with a clear message instead of starting a pod that may be
//! missing its interfaces; the kubelet retries the sandbox.
//!
//! A pod whose sandbox started while this sidecar was not connected to the runtime (a restart of
//! the sidecar, a crash) never had its RunPodSandbox seen. At every Synchronize the runtime's
//! pods that have a network namespace are therefore attached late, in the background (the
//! Synchronize answer does not wait): AttachPod is idempotent, so pods already attached cost one
//! call, and a pod that missed its attach gets its interfaces then, with a warning naming it. A
//! pod stopped or removed after the Synchronize is skipped, and its StopPodSandbox waits for a
//! late attach of it in flight, so `drakit-netdev` always sees the attach before the detach.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drakit_proto::drakit::netdev_attach_client::NetdevAttachClient;
use drakit_proto::drakit::{AttachPodRequest, DetachPodRequest};
use drakit_proto::nri::{Container, ContainerUpdate, PodSandbox};
use futures::future::BoxFuture;
use nri::{Event, EventMask, HookResult, Status};
use tonic::transport::Channel;

use crate::Concern;

/// The netdev concern.
#[derive(Debug, Clone)]
pub struct NetdevConcern {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: PathBuf,
    client: NetdevAttachClient<Channel>,
    /// Per-call deadline; below the runtime's 2 s plugin timeout.
    timeout: Duration,
    /// Bumped at every Synchronize; a late-attach pass of an older one stops.
    sync_generation: AtomicU64,
    /// Pod UIDs of the last Synchronize not yet visited by its late attach; a stop or remove
    /// takes its pod out, so the late attach skips it. Empty once the pass is done.
    pending: Mutex<HashSet<String>>,
    /// Held by the late attach around each AttachPod and by StopPodSandbox/RemovePodSandbox
    /// before their DetachPod, so the two never cross.
    late: tokio::sync::Mutex<()>,
}

/// Interfaces an AttachPod reported.
#[derive(Debug, Clone, Copy)]
struct AttachOutcome {
    interfaces: usize,
    /// Attached by this call (not already in the pod).
    newly_attached: usize,
}

/// What a late-attach pass did (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LateAttach {
    /// Pods asked (those with a network namespace, not ended since the Synchronize).
    pub asked: usize,
    /// Pods that got interfaces only now: their RunPodSandbox was missed.
    pub attached_late: Vec<String>,
    /// Pods whose attach failed, with the reason.
    pub failed: Vec<(String, String)>,
}

/// The pod's network namespace path; `None` for a host-network pod.
pub fn netns_of(pod: &PodSandbox) -> Option<&str> {
    pod.linux
        .as_ref()?
        .namespaces
        .iter()
        .find(|n| n.r#type == "network")
        .map(|n| n.path.as_str())
        .filter(|p| !p.is_empty())
}

impl NetdevConcern {
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        let client = NetdevAttachClient::new(drakit_proto::uds::lazy_channel(&socket));
        Self {
            inner: Arc::new(Inner {
                socket,
                client,
                timeout,
                sync_generation: AtomicU64::new(0),
                pending: Mutex::new(HashSet::new()),
                late: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Starts a late-attach pass over the pods of a Synchronize: those with a network
    /// namespace, in the background. Returns the pass, for the caller to spawn (or await).
    pub fn late_attach_pass(
        &self,
        pods: &[PodSandbox],
    ) -> impl std::future::Future<Output = LateAttach> + Send + 'static {
        let me = &self.inner;
        let pods: Vec<PodSandbox> = pods
            .iter()
            .filter(|p| netns_of(p).is_some())
            .cloned()
            .collect();
        let generation = {
            let mut pending = me.pending.lock().unwrap();
            *pending = pods.iter().map(|p| p.uid.clone()).collect();
            me.sync_generation.fetch_add(1, Ordering::SeqCst) + 1
        };
        let this = self.clone();
        async move { this.attach_late(pods, generation).await }
    }

    /// Attaches `pods` one by one, skipping those stopped or removed since the Synchronize and
    /// stopping when a newer Synchronize starts its own pass.
    async fn attach_late(&self, pods: Vec<PodSandbox>, generation: u64) -> LateAttach {
        let me = &self.inner;
        let mut out = LateAttach::default();
        for pod in &pods {
            let _turn = me.late.lock().await;
            if me.sync_generation.load(Ordering::SeqCst) != generation {
                break;
            }
            if !me.pending.lock().unwrap().remove(&pod.uid) {
                continue;
            }
            out.asked += 1;
            let who = format!("{}/{}", pod.namespace, pod.name);
            match self.attach(pod).await {
                Ok(resp) => {
                    if resp.newly_attached > 0 {
                        tracing::warn!(
                            pod = %who,
                            interfaces = resp.interfaces,
                            "attached late: the pod started while drakit-nri was not connected to the runtime"
                        );
                        out.attached_late.push(who);
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %who, error = %e.message(), "late attach failed");
                    out.failed.push((who, e.message().to_string()));
                }
            }
        }
        out
    }

    async fn attach(&self, pod: &PodSandbox) -> HookResult<AttachOutcome> {
        let me = &self.inner;
        let netns = netns_of(pod);
        let mut req = tonic::Request::new(AttachPodRequest {
            pod_uid: pod.uid.clone(),
            pod_namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            netns_path: netns.unwrap_or_default().to_string(),
            sandbox_id: pod.id.clone(),
            host_network: netns.is_none(),
        });
        req.set_timeout(me.timeout);
        let mut client = me.client.clone();
        let resp = client
            .attach_pod(req)
            .await
            .map_err(|e| self.rpc_error("AttachPod", &e))?
            .into_inner();
        for i in &resp.interfaces {
            let claim = i.claim.as_ref().map(|c| c.uid.as_str()).unwrap_or_default();
            let nd = i.network_data.as_ref();
            tracing::info!(
                pod = %format!("{}/{}", pod.namespace, pod.name),
                claim,
                device = %i.device,
                interface = nd.map(|n| n.interface_name.as_str()).unwrap_or_default(),
                ips = ?nd.map(|n| &n.ips),
                "attached"
            );
        }
        Ok(AttachOutcome {
            interfaces: resp.interfaces.len(),
            newly_attached: resp
                .interfaces
                .iter()
                .filter(|i| !i.already_attached)
                .count(),
        })
    }

    async fn detach(&self, pod: &PodSandbox) -> HookResult {
        let me = &self.inner;
        if me.pending.lock().unwrap().remove(&pod.uid) {
            tracing::debug!(pod.uid = %pod.uid, "ended before its late attach");
        }
        // A late attach of this pod in flight finishes first.
        drop(me.late.lock().await);
        let mut client = me.client.clone();
        let mut req = tonic::Request::new(DetachPodRequest {
            pod_uid: pod.uid.clone(),
            sandbox_id: pod.id.clone(),
            netns_path: netns_of(pod).unwrap_or_default().to_string(),
        });
        req.set_timeout(me.timeout);
        let resp = client
            .detach_pod(req)
            .await
            .map_err(|e| self.rpc_error("DetachPod", &e))?;
        let errors = resp.into_inner().errors;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Status::internal(format!(
                "detaching interfaces: {}",
                errors.join("; ")
            )))
        }
    }

    fn rpc_error(&self, call: &str, e: &tonic::Status) -> Status {
        let msg = if e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown {
            format!(
                "{call}: drakit-netdev is not reachable on {}: {}",
                self.inner.socket.display(),
                e.message()
            )
        } else {
            format!("{call}: {}", e.message())
        };
        match e.code() {
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                Status::failed_precondition(msg)
            }
            _ => Status::internal(msg),
        }
    }
}

impl Concern for NetdevConcern {
    fn name(&self) -> &'static str {
        "netdev"
    }

    fn events(&self) -> EventMask {
        EventMask::from_events([
            Event::RunPodSandbox,
            Event::StopPodSandbox,
            Event::RemovePodSandbox,
        ])
    }

    fn synchronize<'a>(
        &'a self,
        pods: &'a [PodSandbox],
        _containers: &'a [Container],
    ) -> BoxFuture<'a, HookResult<Vec<ContainerUpdate>>> {
        let pass = self.late_attach_pass(pods);
        tokio::spawn(async move {
            let r = pass.await;
            tracing::info!(
                pods = r.asked,
                attached_late = r.attached_late.len(),
                failed = r.failed.len(),
                "late attach after Synchronize done"
            );
        });
        Box::pin(async { Ok(Vec::new()) })
    }

    fn run_pod_sandbox<'a>(&'a self, pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(async move { self.attach(pod).await.map(|_| ()) })
    }

    fn stop_pod_sandbox<'a>(&'a self, pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(self.detach(pod))
    }

    fn remove_pod_sandbox<'a>(&'a self, pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(self.detach(pod))
    }
}
