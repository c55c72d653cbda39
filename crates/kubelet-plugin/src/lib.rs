//! drakit's kubelet plugin: one process hosting one DRA driver per enabled concern
//! (`net.drakit.dev`, `cpu.drakit.dev`, `runtime.drakit.dev` by default).
//!
//! | module | what |
//! |---|---|
//! | [`config`] | plain [`config::Config`] + clap [`config::Args`] |
//! | [`plugin`] | wiring: sockets, servers, publishers, shutdown |
//! | [`driver`] | prepare/unprepare of one driver (claims → backend → CDI → checkpoint) |
//! | [`grpc`] | kubelet services: registration, DRA v1/v1beta1, health v1alpha1/v1 |
//! | [`claims`] | reading ResourceClaims with retry, picking this driver's devices and configs |
//! | [`backend`] | the internal Backend service client and the [`backend::Backend`] seam |
//! | [`runtime`] | the in-process runtime-spec backend (policy, cgroup mode, CDI env) |
//! | [`state`] | the claim records in a `drakit_types::checkpoint`, CDI specs by `drakit_types::cdi` |
//! | [`legacy`] | import of the earlier checkpoint format |
//! | [`slices`], [`status`] | ResourceSlice publishing, claim status, by server-side apply |
//! | [`metrics`] | Prometheus text, `/healthz`, `/readyz` |
//! | [`lazy`] | a kube client that registration does not wait for |
//! | [`sockets`] | socket names (rolling update), binding, serialize lock, unix connector |

pub mod backend;
pub mod claims;
pub mod config;
pub mod driver;
pub mod grpc;
pub mod lazy;
pub mod legacy;
pub mod metrics;
pub mod plugin;
pub mod runtime;
pub mod slices;
pub mod sockets;
pub mod state;
pub mod status;
