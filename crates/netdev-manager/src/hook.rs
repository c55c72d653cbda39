//! drakit-oci-hook's logic: read the OCI state from stdin, call `HookAttach` over the socket
//! with a deadline, and turn every failure into one clear line for the runtime's error message.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use drakit_proto::drakit as pb;

/// Largest OCI state read from stdin.
pub const MAX_STATE: u64 = 1024 * 1024;

/// Hook failures, worded for the user who sees them in the StartContainer error.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("drakit-oci-hook: reading the OCI state from stdin: {0}")]
    Stdin(std::io::Error),
    #[error("drakit-oci-hook: the OCI state on stdin is invalid: {0}")]
    State(String),
    #[error("drakit-oci-hook: cannot reach drakit-netdev at {socket}: {reason}")]
    Connect { socket: String, reason: String },
    #[error("drakit-oci-hook: attaching claim {claim} failed: {reason}")]
    Attach { claim: String, reason: String },
    #[error("drakit-oci-hook: no answer from drakit-netdev within {0:?}")]
    Timeout(Duration),
}

/// Reads at most [`MAX_STATE`] bytes of OCI state.
pub fn read_state(mut r: impl Read) -> Result<String, HookError> {
    let mut s = String::new();
    r.by_ref()
        .take(MAX_STATE + 1)
        .read_to_string(&mut s)
        .map_err(HookError::Stdin)?;
    if s.len() as u64 > MAX_STATE {
        return Err(HookError::State("larger than 1 MiB".into()));
    }
    Ok(s)
}

/// Validates the state locally, then asks drakit-netdev to attach.
pub async fn run(
    claim_uid: &str,
    socket: &Path,
    state: String,
    timeout: Duration,
) -> Result<pb::AttachPodResponse, HookError> {
    crate::manager::parse_oci_state(&state).map_err(HookError::State)?;
    let fut = async {
        let mut c = crate::server::connect_attach(socket, timeout)
            .await
            .map_err(|e| HookError::Connect {
                socket: socket.display().to_string(),
                reason: e.to_string(),
            })?;
        c.hook_attach(pb::HookAttachRequest {
            claim_uid: claim_uid.into(),
            oci_state_json: state,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| HookError::Attach {
            claim: claim_uid.into(),
            reason: s.message().to_string(),
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| HookError::Timeout(timeout))?
}
