//! Errors of the NRI transport and stub.

use std::sync::Arc;

use crate::ttrpc::Status;

/// Everything that can go wrong between a plugin and a runtime.
///
/// The type is `Clone` so one connection failure can be handed to every waiting caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The socket failed (read, write, connect, accept).
    #[error("{context}: {source}")]
    Io {
        /// What the library was doing.
        context: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The peer closed the connection (EOF on the trunk socket).
    #[error("connection closed by peer")]
    Closed,
    /// The trunk ended in the middle of a mux frame header.
    #[error("truncated mux frame header: {got} of 8 bytes before end of stream")]
    TruncatedHeader {
        /// Header bytes received.
        got: usize,
    },
    /// The trunk ended in the middle of a mux frame payload.
    #[error(
        "truncated mux frame on conn {conn_id}: {got} of {want} payload bytes before end of stream"
    )]
    TruncatedFrame {
        /// Virtual connection of the frame.
        conn_id: u32,
        /// Payload bytes received.
        got: usize,
        /// Payload bytes announced in the header.
        want: usize,
    },
    /// A mux frame announced a payload larger than any valid peer writes.
    #[error("mux frame on conn {conn_id} announces {len} payload bytes, limit is {limit}")]
    FrameTooLarge {
        /// Virtual connection of the frame.
        conn_id: u32,
        /// Announced length.
        len: usize,
        /// Accepted maximum.
        limit: usize,
    },
    /// A message to send is larger than the ttrpc limit.
    #[error("{what}: message of {len} bytes exceeds the ttrpc limit of {limit} bytes")]
    MessageTooLarge {
        /// Which call or reply.
        what: String,
        /// Encoded size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A protobuf message could not be decoded.
    #[error("decoding {what}: {source}")]
    Decode {
        /// Which message (type and call).
        what: String,
        /// The prost error.
        #[source]
        source: prost::DecodeError,
    },
    /// The remote side answered a call with a non-OK status.
    #[error("{call}: {status}")]
    Status {
        /// `Service/Method`.
        call: String,
        /// The status the peer returned.
        status: Status,
    },
    /// A call did not get its answer before its deadline.
    #[error("{call}: no reply within {timeout:?}")]
    DeadlineExceeded {
        /// `Service/Method`.
        call: String,
        /// The deadline that was applied.
        timeout: std::time::Duration,
    },
    /// A peer violated the protocol in a way that ends the session.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Invalid configuration (plugin name, index, socket fd, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The operation needs a registered, synchronized connection and there is none.
    #[error("not connected to a runtime (or not yet synchronized)")]
    NotConnected,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// The ttrpc status code if this error carries one (a remote status, or a local deadline).
    pub fn code(&self) -> Option<crate::ttrpc::Code> {
        match self {
            Error::Status { status, .. } => Some(status.code()),
            Error::DeadlineExceeded { .. } => Some(crate::ttrpc::Code::DeadlineExceeded),
            Error::MessageTooLarge { .. } => Some(crate::ttrpc::Code::ResourceExhausted),
            _ => None,
        }
    }

    /// True when the error means the connection is gone (the runtime treats these as
    /// "plugin died", and a plugin should reconnect).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Closed
                | Error::TruncatedHeader { .. }
                | Error::TruncatedFrame { .. }
                | Error::FrameTooLarge { .. }
                | Error::Protocol(_)
        )
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
