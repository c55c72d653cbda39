//! drakit's node-level e2e harness.
//!
//! Nothing here runs in production: these are the stand-ins for the peers a drakit node daemon talks
//! to, speaking the real wire protocols so that the daemons can be tested end to end on a machine with
//! no kubelet, no API server and no container runtime.
//!
//! | module | plays | wire |
//! |---|---|---|
//! | [`kubelet`] | the kubelet's plugin watcher and DRA manager | gRPC over unix sockets (registration, DRA v1/v1beta1, health) |
//! | [`apiserver`] | the Kubernetes API server, for the objects drakit uses | HTTP/1.1 + JSON on 127.0.0.1 |
//! | [`node`] | both of the above wired together under one root dir, the kubelet's layout | |
//! | [`grpc`] | small helpers: a tonic channel or server on a unix socket | |
//!
//! Every filesystem path (registry dir, sockets, kubeconfig) is a parameter; nothing touches the host
//! outside what the caller points it at.

pub mod apiserver;
pub mod grpc;
pub mod kubelet;
pub mod node;
mod wait;
