//! Types shared by every drakit daemon.
//!
//! - [`config`]: the claim-configuration API (`drakit.dev/v1alpha1`), strict decoding, semantic
//!   validation with field paths, and the merge of several configs for one claim.
//! - [`cdi`]: CDI spec emission (minimum version, name validation, atomic write, list, remove).
//! - [`checkpoint`]: the versioned, checksummed, boot-ID-stamped checkpoint format.
//! - [`crash`]: named crash points for the daemons' crash-consistency tests (`DRAKIT_CRASH_AT`).
//! - [`fsutil`]: atomic file replacement (temp file, fsync, rename, fsync dir).
//! - [`policy`]: the admin policy that runtime-spec edits must pass (node and webhook alike).
//! - [`constants`]: driver names, socket paths and environment variable names.

pub mod cdi;
pub mod checkpoint;
pub mod config;
pub mod constants;
pub mod crash;
pub mod fsutil;
#[cfg(feature = "logging")]
pub mod logging;
pub mod policy;
