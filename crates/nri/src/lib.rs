//! A Rust library for NRI (Node Resource Interface) plugins, wire-compatible with
//! containerd/nri's Go stub and runtime adaptation.
//!
//! Layers, bottom up:
//! - [`mux`]: the connection multiplexer (one unix stream, virtual conns 1 and 2);
//! - [`ttrpc`]: ttrpc framing, envelopes and status codes;
//! - [`conn`]: one session: ttrpc server on one virtual conn, client on the other;
//! - [`Plugin`], [`Stub`], [`StubHandle`]: the typed plugin API (registration, Configure,
//!   chunked Synchronize, events and `StateChange`, `UpdateContainers`, reconnect);
//! - [`Adjustment`], [`Update`]: builders for what a plugin returns;
//! - `simulator` (feature `simulator`): a containerd-like runtime for tests and benchmarks.
//!
//! Protocol messages are the prost types of [`drakit_proto::nri`].

pub mod adjust;
pub mod conn;
pub mod error;
pub mod event;
pub mod mux;
mod plugin;
mod stub;
pub mod ttrpc;

#[cfg(feature = "simulator")]
pub mod simulator;

pub use adjust::{Adjustment, Update, eviction};
pub use conn::{ConnStats, Connection, Side};
pub use error::{Error, Result};
pub use event::{Event, EventMask};
pub use plugin::{HookResult, Plugin, route_state_change};
pub use stub::{
    Backoff, DEFAULT_REGISTRATION_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SOCKET_PATH,
    ENV_PLUGIN_IDX, ENV_PLUGIN_NAME, ENV_PLUGIN_SOCKET, NRI_VERSION, PLUGIN_SERVICE,
    RUNTIME_SERVICE, Stub, StubConfig, StubHandle, StubState, Transport, validate_index,
    validate_name,
};
pub use ttrpc::{Code, Status};

/// The NRI protocol messages (re-exported from `drakit-proto`).
pub use drakit_proto::nri as api;
