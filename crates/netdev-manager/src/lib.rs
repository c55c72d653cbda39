//! drakit-netdev: the network-device and RDMA manager behind the `net.drakit.dev` DRA driver.
//!
//! - [`netlink`]: typed facade over rtnetlink (+ an in-memory fake with feature `fake`).
//! - [`addr`]: CIDR and MAC parsing with the canonical text networkData needs.

pub mod addr;
pub mod cni;
pub mod config;
pub mod hook;
pub mod inventory;
pub mod manager;
pub mod netlink;
pub mod server;
pub mod store;
