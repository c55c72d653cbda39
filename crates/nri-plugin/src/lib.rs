//! `drakit-nri`: the NRI sidecar of drakit.
//!
//! One NRI plugin ([`Sidecar`]) fans every runtime event out to the enabled concerns, each one
//! module behind the [`Concern`] trait, in a fixed order:
//!
//! | concern | module | events | what it does |
//! |---|---|---|---|
//! | runtime-spec | [`runtime_spec`] | CreateContainer | policy-checked OCI edits carried in `DRAKIT_RUNTIME_SPEC_*` |
//! | cpu | [`cpu`] | Synchronize, CreateContainer, UpdateContainer, Stop/RemoveContainer | exclusive cpusets from `DRAKIT_CPUS_*`, the shared pool for all others |
//! | netdev | [`netdev`] | Run/Stop/RemovePodSandbox | pod network attach through `drakit-netdev` |
//!
//! Whatever the enabled concerns, the transport env vars (`DRAKIT_RUNTIME_SPEC_*`,
//! `DRAKIT_CPUS_*`) are removed from every container's final env. A concern's error fails the
//! event: a refused CreateContainer means the container does not start with half its config.

pub mod cpu;
pub mod cpuset;
pub mod netdev;
pub mod runtime_spec;

use std::sync::Arc;

use drakit_proto::nri::{
    ConfigureRequest, Container, ContainerUpdate, CreateContainerResponse, LinuxResources,
    PodSandbox, UpdateContainerResponse,
};
use drakit_types::policy::Policy;
use futures::future::BoxFuture;
use nri::{Adjustment, Event, EventMask, HookResult, Plugin, Status};

/// One concern of the sidecar. Every hook has a no-op default; [`Concern::events`] says which
/// events the concern needs (the sidecar subscribes to the union).
pub trait Concern: Send + Sync + 'static {
    /// Short name for logs and errors.
    fn name(&self) -> &'static str;
    /// The events this concern acts on.
    fn events(&self) -> EventMask;
    /// The runtime's existing pods and containers; may return updates for them.
    fn synchronize<'a>(
        &'a self,
        _pods: &'a [PodSandbox],
        _containers: &'a [Container],
    ) -> BoxFuture<'a, HookResult<Vec<ContainerUpdate>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn run_pod_sandbox<'a>(&'a self, _pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(async { Ok(()) })
    }
    fn stop_pod_sandbox<'a>(&'a self, _pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(async { Ok(()) })
    }
    fn remove_pod_sandbox<'a>(&'a self, _pod: &'a PodSandbox) -> BoxFuture<'a, HookResult> {
        Box::pin(async { Ok(()) })
    }
    /// Adds this concern's edits for a new container to `adj`.
    fn create_container<'a>(
        &'a self,
        _pod: &'a PodSandbox,
        _container: &'a Container,
        _adj: &'a mut Adjustment,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async { Ok(()) })
    }
    /// A container's resources are about to change; may return updates.
    fn update_container<'a>(
        &'a self,
        _pod: &'a PodSandbox,
        _container: &'a Container,
        _resources: Option<&'a LinuxResources>,
    ) -> BoxFuture<'a, HookResult<Vec<ContainerUpdate>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn stop_container<'a>(
        &'a self,
        _pod: &'a PodSandbox,
        _container: &'a Container,
    ) -> BoxFuture<'a, HookResult<Vec<ContainerUpdate>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn remove_container<'a>(
        &'a self,
        _pod: &'a PodSandbox,
        _container: &'a Container,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async { Ok(()) })
    }
    /// The runtime connection was lost (state is rebuilt at the next Synchronize).
    fn connection_lost(&self) {}
}

/// The NRI plugin: the enabled concerns, in order.
pub struct Sidecar {
    concerns: Vec<Arc<dyn Concern>>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field(
                "concerns",
                &self.concerns.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Sidecar {
    pub fn new(concerns: Vec<Arc<dyn Concern>>) -> Self {
        Self { concerns }
    }

    /// Names of the enabled concerns, in order.
    pub fn concern_names(&self) -> Vec<&'static str> {
        self.concerns.iter().map(|c| c.name()).collect()
    }
}

fn who(pod: &PodSandbox, c: Option<&Container>) -> String {
    match c {
        Some(c) => format!(
            "container {:?} of pod {}/{}",
            c.name, pod.namespace, pod.name
        ),
        None => format!("pod {}/{}", pod.namespace, pod.name),
    }
}

fn failed(concern: &dyn Concern, what: String, e: Status) -> Status {
    Status::new(
        e.code(),
        format!("drakit {} ({what}): {}", concern.name(), e.message()),
    )
}

impl Plugin for Sidecar {
    fn events(&self) -> EventMask {
        // CreateContainer always: the transport env vars are removed from every container.
        self.concerns
            .iter()
            .fold(EventMask::of(Event::CreateContainer), |m, c| m | c.events())
    }

    async fn configure(&self, req: &ConfigureRequest) -> HookResult {
        tracing::info!(
            runtime = %req.runtime_name,
            version = %req.runtime_version,
            concerns = ?self.concern_names(),
            "configured by the runtime"
        );
        Ok(())
    }

    async fn synchronize(
        &self,
        pods: Vec<PodSandbox>,
        containers: Vec<Container>,
    ) -> HookResult<Vec<ContainerUpdate>> {
        let mut out = Vec::new();
        for c in &self.concerns {
            let u = c
                .synchronize(&pods, &containers)
                .await
                .map_err(|e| failed(c.as_ref(), "synchronize".into(), e))?;
            out.extend(u);
        }
        tracing::info!(
            pods = pods.len(),
            containers = containers.len(),
            updates = out.len(),
            "synchronized"
        );
        Ok(out)
    }

    async fn run_pod_sandbox(&self, pod: &PodSandbox) -> HookResult {
        for c in &self.concerns {
            c.run_pod_sandbox(pod)
                .await
                .map_err(|e| failed(c.as_ref(), who(pod, None), e))?;
        }
        Ok(())
    }

    async fn stop_pod_sandbox(&self, pod: &PodSandbox) -> HookResult {
        let mut first = None;
        // Every concern gets to clean up even when an earlier one failed.
        for c in &self.concerns {
            if let Err(e) = c.stop_pod_sandbox(pod).await {
                first.get_or_insert(failed(c.as_ref(), who(pod, None), e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn remove_pod_sandbox(&self, pod: &PodSandbox) -> HookResult {
        let mut first = None;
        for c in &self.concerns {
            if let Err(e) = c.remove_pod_sandbox(pod).await {
                first.get_or_insert(failed(c.as_ref(), who(pod, None), e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn create_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> HookResult<CreateContainerResponse> {
        let mut adj = Adjustment::new();
        for c in &self.concerns {
            c.create_container(pod, container, &mut adj)
                .await
                .map_err(|e| failed(c.as_ref(), who(pod, Some(container)), e))?;
        }
        for name in runtime_spec::transport_env_names(&container.env) {
            adj.remove_env(name);
        }
        Ok(adj.into())
    }

    async fn update_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
        resources: Option<&LinuxResources>,
    ) -> HookResult<UpdateContainerResponse> {
        let mut update = Vec::new();
        for c in &self.concerns {
            let u = c
                .update_container(pod, container, resources)
                .await
                .map_err(|e| failed(c.as_ref(), who(pod, Some(container)), e))?;
            update.extend(u);
        }
        Ok(UpdateContainerResponse {
            update,
            evict: Vec::new(),
        })
    }

    async fn stop_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> HookResult<Vec<ContainerUpdate>> {
        let mut out = Vec::new();
        for c in &self.concerns {
            match c.stop_container(pod, container).await {
                Ok(u) => out.extend(u),
                Err(e) => tracing::warn!(
                    concern = c.name(),
                    container = %container.id,
                    "stop: {}",
                    e.message()
                ),
            }
        }
        Ok(out)
    }

    async fn remove_container(&self, pod: &PodSandbox, container: &Container) -> HookResult {
        for c in &self.concerns {
            if let Err(e) = c.remove_container(pod, container).await {
                tracing::warn!(concern = c.name(), container = %container.id, "remove: {}", e.message());
            }
        }
        Ok(())
    }

    fn on_connection_lost(&self) {
        tracing::warn!("lost the runtime connection; reconnecting");
        for c in &self.concerns {
            c.connection_lost();
        }
    }
}

/// The runtime-spec concern: see [`runtime_spec`].
#[derive(Debug)]
pub struct RuntimeSpecConcern {
    policy: Policy,
}

impl RuntimeSpecConcern {
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }
}

impl Concern for RuntimeSpecConcern {
    fn name(&self) -> &'static str {
        "runtime-spec"
    }

    fn events(&self) -> EventMask {
        EventMask::of(Event::CreateContainer)
    }

    fn create_container<'a>(
        &'a self,
        pod: &'a PodSandbox,
        container: &'a Container,
        adj: &'a mut Adjustment,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            runtime_spec::apply(&self.policy, &pod.namespace, &container.env, adj).map_err(|e| {
                tracing::warn!(
                    pod = %format!("{}/{}", pod.namespace, pod.name),
                    container = %container.name,
                    "refused: {e}"
                );
                Status::invalid_argument(e.to_string())
            })
        })
    }
}
