//! drakit-cpu: CPU topology discovery from sysfs and exclusive, topology-aware CPU allocation for
//! the `cpu.drakit.dev` DRA driver.
//!
//! - [`cpuset`]: CPU sets and the kernel list format.
//! - [`topology`]: discovery below a configurable sysfs root.
//! - [`fixture`]: machine descriptions materialised as real sysfs trees (tests, benchmarks).
//! - [`alloc`]: the topology-aware picker of the grouped device model.
//! - [`inventory`]: the published devices (individual or grouped model).
//! - [`state`]: prepare / unprepare, the shared pool, restart restore.
//! - [`store`]: persistence behind a key → value trait.
//! - [`server`]: the `Backend` and `CpuPool` gRPC services on a Unix socket.
//! - [`daemon`]: command line, plain `Config`, and `run` for the `drakit-cpu` binary.

pub mod alloc;
pub mod cpuset;
pub mod daemon;
pub mod fixture;
pub mod inventory;
pub mod server;
pub mod state;
pub mod store;
pub mod topology;

pub use cpuset::CpuSet;
pub use state::{Manager, PoolConfig};
pub use topology::Topology;
