//! The [`Plugin`] trait: one async method per NRI request, each with a default.

use std::future::Future;

use drakit_proto::nri::{
    ConfigureRequest, Container, ContainerUpdate, CreateContainerResponse, Event, LinuxResources,
    PodSandbox, StateChangeEvent, UpdateContainerResponse, UpdatePodSandboxRequest,
    ValidateContainerAdjustmentRequest,
};

use crate::event::EventMask;
use crate::ttrpc::Status;

/// Result of a plugin hook: an error becomes the ttrpc status the runtime sees.
pub type HookResult<T = ()> = Result<T, Status>;

/// An NRI plugin. Implement [`Plugin::events`] and the hooks you need; every other hook has a
/// no-op default.
///
/// **Subscription.** Rust cannot tell which default methods an implementation overrides, so the
/// subscription mask is not derived from the implemented hooks (as Go's stub does with interface
/// assertions). Instead [`Plugin::events`] is required and says it explicitly; it is called once
/// per connection, right after [`Plugin::configure`], so it may depend on the configuration the
/// runtime delivered. The runtime only sends subscribed events; hooks for other events are never
/// called.
///
/// **Old runtimes.** NRI <= v0.11 runtimes deliver the notification-style events (RunPodSandbox,
/// StopPodSandbox, RemovePodSandbox, PostUpdatePodSandbox, PostCreateContainer, StartContainer,
/// PostStartContainer, PostUpdateContainer, RemoveContainer) through `StateChange`. The default
/// [`Plugin::state_change`] routes those to the same typed hooks, so one implementation works with
/// every runtime. Returning [`Status::unimplemented`] from a dedicated hook makes a v0.12 runtime
/// fall back to `StateChange` for that event.
///
/// Hooks run concurrently with each other and with the rest of the program; the runtime's request
/// timeout (2 s by default) applies to each call: a hook that misses it is cancelled and the
/// runtime drops the connection (the stub then reconnects).
#[allow(unused_variables)]
pub trait Plugin: Send + Sync + 'static {
    /// The events to subscribe to. Called after [`Plugin::configure`] on every (re)connection.
    /// Bits the runtime does not know (by its NRI version) are dropped with a warning. An empty
    /// result fails Configure (a runtime would read 0 as "all events"); use [`EventMask::ALL`]
    /// to get everything.
    fn events(&self) -> EventMask;

    /// The runtime's configuration call (runtime name/version, timeouts, config blob).
    fn configure(&self, req: &ConfigureRequest) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }

    /// The full list of existing pods and containers (chunked transfers are reassembled by the
    /// stub); may return updates for existing containers.
    fn synchronize(
        &self,
        pods: Vec<PodSandbox>,
        containers: Vec<Container>,
    ) -> impl Future<Output = HookResult<Vec<ContainerUpdate>>> + Send {
        async { Ok(Vec::new()) }
    }

    /// The runtime asks the plugin to shut down (current runtimes never call this).
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A pod sandbox was created (notification).
    fn run_pod_sandbox(&self, pod: &PodSandbox) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A pod sandbox is being stopped (notification).
    fn stop_pod_sandbox(&self, pod: &PodSandbox) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A pod sandbox was removed (notification).
    fn remove_pod_sandbox(&self, pod: &PodSandbox) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A pod sandbox's resources are about to change.
    fn update_pod_sandbox(
        &self,
        req: &UpdatePodSandboxRequest,
    ) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A pod sandbox's resources changed (notification).
    fn post_update_pod_sandbox(&self, pod: &PodSandbox) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A container is being created: return adjustments, updates to other containers, evictions.
    /// `Ok(Adjustment::new().into())` (or `Ok(Default::default())`) changes nothing.
    fn create_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> impl Future<Output = HookResult<CreateContainerResponse>> + Send {
        async { Ok(CreateContainerResponse::default()) }
    }
    /// A container was created (notification).
    fn post_create_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A container is being started (notification).
    fn start_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A container was started (notification).
    fn post_start_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A container's resources are about to be updated: may return updates and evictions.
    fn update_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
        resources: Option<&LinuxResources>,
    ) -> impl Future<Output = HookResult<UpdateContainerResponse>> + Send {
        async { Ok(UpdateContainerResponse::default()) }
    }
    /// A container's resources were updated (notification).
    fn post_update_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// A container is being stopped: may return updates to other containers.
    fn stop_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> impl Future<Output = HookResult<Vec<ContainerUpdate>>> + Send {
        async { Ok(Vec::new()) }
    }
    /// A container was removed (notification).
    fn remove_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// Validate the combined adjustment of all plugins; an error rejects the container with the
    /// error message as reason.
    fn validate_container_adjustment(
        &self,
        req: &ValidateContainerAdjustmentRequest,
    ) -> impl Future<Output = HookResult> + Send {
        async { Ok(()) }
    }
    /// The legacy event entry point. The default routes to the typed hooks above.
    fn state_change(&self, ev: &StateChangeEvent) -> impl Future<Output = HookResult> + Send {
        async move { route_state_change(self, ev).await }
    }
    /// The connection to the runtime was lost (the stub reconnects unless told otherwise).
    fn on_connection_lost(&self) {}
}

/// Deliver a `StateChangeEvent` to the matching typed hook of `plugin`.
pub async fn route_state_change<P: Plugin + ?Sized>(
    plugin: &P,
    ev: &StateChangeEvent,
) -> HookResult {
    let default_pod = PodSandbox::default();
    let default_ctr = Container::default();
    let pod = ev.pod.as_ref().unwrap_or(&default_pod);
    let ctr = ev.container.as_ref().unwrap_or(&default_ctr);
    match Event::try_from(ev.event) {
        Ok(Event::RunPodSandbox) => plugin.run_pod_sandbox(pod).await,
        Ok(Event::StopPodSandbox) => plugin.stop_pod_sandbox(pod).await,
        Ok(Event::RemovePodSandbox) => plugin.remove_pod_sandbox(pod).await,
        Ok(Event::PostUpdatePodSandbox) => plugin.post_update_pod_sandbox(pod).await,
        Ok(Event::PostCreateContainer) => plugin.post_create_container(pod, ctr).await,
        Ok(Event::StartContainer) => plugin.start_container(pod, ctr).await,
        Ok(Event::PostStartContainer) => plugin.post_start_container(pod, ctr).await,
        Ok(Event::PostUpdateContainer) => plugin.post_update_container(pod, ctr).await,
        Ok(Event::RemoveContainer) => plugin.remove_container(pod, ctr).await,
        _ => {
            tracing::debug!(
                event = ev.event,
                "ignoring StateChange for an event that has its own RPC"
            );
            Ok(())
        }
    }
}
