//! The netdev concern (attach mode `nri`): at RunPodSandbox the pod's network namespace is handed
//! to `drakit-netdev` (`NetdevAttach.AttachPod`), which moves/creates, configures and brings up
//! the interfaces of the pod's prepared net claims; at StopPodSandbox and RemovePodSandbox
//! (`DetachPod`, idempotent) they go back to the host or are deleted.
//!
//! A pod without net claims costs one local call that answers at once. If `drakit-netdev` cannot
//! be reached, RunPodSandbox fails with a clear message instead of starting a pod that may be
//! missing its interfaces; the kubelet retries the sandbox.

use std::path::PathBuf;
use std::time::Duration;

use drakit_proto::drakit::netdev_attach_client::NetdevAttachClient;
use drakit_proto::drakit::{AttachPodRequest, DetachPodRequest};
use drakit_proto::nri::PodSandbox;
use futures::future::BoxFuture;
use nri::{Event, EventMask, HookResult, Status};
use tonic::transport::Channel;

use crate::Concern;

/// The netdev concern.
#[derive(Debug)]
pub struct NetdevConcern {
    socket: PathBuf,
    client: NetdevAttachClient<Channel>,
    /// Per-call deadline; below the runtime's 2 s plugin timeout.
    timeout: Duration,
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
            socket,
            client,
            timeout,
        }
    }

    async fn detach(&self, pod: &PodSandbox) -> HookResult {
        let mut client = self.client.clone();
        let mut req = tonic::Request::new(DetachPodRequest {
            pod_uid: pod.uid.clone(),
            sandbox_id: pod.id.clone(),
            netns_path: netns_of(pod).unwrap_or_default().to_string(),
        });
        req.set_timeout(self.timeout);
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
                self.socket.display(),
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

    fn run_pod_sandbox<'a>(&'a self, pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            let netns = netns_of(pod);
            let mut req = tonic::Request::new(AttachPodRequest {
                pod_uid: pod.uid.clone(),
                pod_namespace: pod.namespace.clone(),
                pod_name: pod.name.clone(),
                netns_path: netns.unwrap_or_default().to_string(),
                sandbox_id: pod.id.clone(),
                host_network: netns.is_none(),
            });
            req.set_timeout(self.timeout);
            let mut client = self.client.clone();
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
            Ok(())
        })
    }

    fn stop_pod_sandbox<'a>(&'a self, pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(self.detach(pod))
    }

    fn remove_pod_sandbox<'a>(&'a self, pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(self.detach(pod))
    }
}
