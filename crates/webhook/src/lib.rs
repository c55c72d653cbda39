//! `drakit-webhook`: a validating admission webhook for drakit claim configs, running the very
//! decode, validation and policy code of the node daemons (`drakit-types`), so `kubectl apply`
//! and the node can never disagree.
//!
//! - [`validate`]: AdmissionReview in, AdmissionReview out.
//! - [`tls`]: a certificate resolver that reloads the cert/key files when they change.
//! - [`server`]: HTTPS (rustls) with `/validate`, `/healthz`, `/readyz`, `/metrics`.

pub mod server;
pub mod tls;
pub mod validate;

pub use server::{Metrics, ServerConfig, serve};
pub use tls::{CertReloader, TlsError};
pub use validate::{Decision, Validator};
