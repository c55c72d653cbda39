//! ttrpc framing: 10-byte header, Request/Response envelopes and status codes.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use drakit_proto::google::rpc::Status as RpcStatus;
use drakit_proto::ttrpc::{Request, Response};
use prost::Message;

/// Size of a ttrpc frame header.
pub const HEADER_LEN: usize = 10;
/// Largest ttrpc message body (`4 << 20`).
pub const MAX_DATA_LEN: usize = 4 << 20;

/// ttrpc message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 0x01: starts a stream.
    Request,
    /// 0x02: ends a stream.
    Response,
    /// 0x03: stream data (never used by NRI).
    Data,
    /// Anything else.
    Other(u8),
}

impl MessageType {
    /// Wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            MessageType::Request => 1,
            MessageType::Response => 2,
            MessageType::Data => 3,
            MessageType::Other(v) => v,
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            1 => MessageType::Request,
            2 => MessageType::Response,
            3 => MessageType::Data,
            v => MessageType::Other(v),
        }
    }
}

/// A decoded 10-byte ttrpc header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length (header excluded).
    pub data_len: u32,
    /// Stream id (odd for client-initiated streams).
    pub stream_id: u32,
    /// Message type.
    pub ty: MessageType,
    /// Type-specific flags (0 for unary calls).
    pub flags: u8,
}

impl Header {
    /// Parse a header from the first 10 bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN {
            return None;
        }
        Some(Header {
            data_len: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ty: MessageType::from_u8(b[8]),
            flags: b[9],
        })
    }
}

/// Encode a complete ttrpc frame (header + body). The caller checks the size limit.
pub fn encode_frame(stream_id: u32, ty: MessageType, body: &impl Message) -> Vec<u8> {
    let len = body.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    out.put_u32(stream_id);
    out.put_u8(ty.as_u8());
    out.put_u8(0);
    // Encoding into a Vec cannot run out of space.
    let _ = body.encode(&mut out);
    out
}

/// One complete message read from a virtual connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message within the size limit.
    Message {
        /// Header.
        header: Header,
        /// Body bytes.
        data: Bytes,
    },
    /// A message whose header announced more than [`MAX_DATA_LEN`]; its body was discarded.
    Oversized {
        /// Header as received.
        header: Header,
    },
}

/// Reassembles ttrpc messages from the chunks of one virtual connection.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: BytesMut,
    discard: usize,
}

impl StreamDecoder {
    /// Feed one mux payload.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut chunk = chunk;
        if self.discard > 0 {
            let n = self.discard.min(chunk.len());
            self.discard -= n;
            chunk = &chunk[n..];
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Next complete message, if any.
    pub fn next_message(&mut self) -> Option<Incoming> {
        if self.discard > 0 {
            return None;
        }
        let header = Header::parse(&self.buf)?;
        let len = header.data_len as usize;
        if len > MAX_DATA_LEN {
            self.buf.advance(HEADER_LEN);
            let have = self.buf.len().min(len);
            self.buf.advance(have);
            self.discard = len - have;
            return Some(Incoming::Oversized { header });
        }
        if self.buf.len() < HEADER_LEN + len {
            return None;
        }
        self.buf.advance(HEADER_LEN);
        let data = self.buf.split_to(len).freeze();
        Some(Incoming::Message { header, data })
    }

    /// Bytes buffered for an incomplete message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// gRPC status codes as used by ttrpc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Code {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    /// A value outside the known range.
    Other(i32),
}

impl Code {
    /// Wire value.
    pub fn as_i32(self) -> i32 {
        match self {
            Code::Ok => 0,
            Code::Cancelled => 1,
            Code::Unknown => 2,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Aborted => 10,
            Code::OutOfRange => 11,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::DataLoss => 15,
            Code::Unauthenticated => 16,
            Code::Other(v) => v,
        }
    }

    /// From the wire value.
    pub fn from_i32(v: i32) -> Code {
        match v {
            0 => Code::Ok,
            1 => Code::Cancelled,
            2 => Code::Unknown,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            15 => Code::DataLoss,
            16 => Code::Unauthenticated,
            v => Code::Other(v),
        }
    }
}

/// A ttrpc call status: what a handler returns on failure and what a caller gets back.
///
/// Any `std::error::Error` converts into a status with code `Unknown` (what the Go server does
/// with a plain handler error), so handlers can use `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
}

impl Status {
    /// A status with an explicit code.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// Code 2, the default for handler errors.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(Code::Unknown, message)
    }
    /// Code 3.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    /// Code 5.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    /// Code 9.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }
    /// Code 12. NRI runtimes fall back to `StateChange` when an event RPC answers this.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }
    /// Code 13.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The wire form.
    pub fn to_proto(&self) -> RpcStatus {
        RpcStatus {
            code: self.code.as_i32(),
            message: self.message.clone(),
            details: Vec::new(),
        }
    }
    /// From the wire form; `None` when the status means OK.
    pub fn from_proto(s: &RpcStatus) -> Option<Status> {
        if s.code == 0 {
            return None;
        }
        Some(Status::new(Code::from_i32(s.code), s.message.clone()))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ({}): {}",
            self.code,
            self.code.as_i32(),
            self.message
        )
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Status {
    fn from(e: E) -> Self {
        Status::unknown(e.to_string())
    }
}

/// A successful response: status unset, payload as given (empty for an empty reply message,
/// which makes the whole body zero bytes, exactly like the Go server).
pub fn ok_response(payload: Vec<u8>) -> Response {
    Response {
        status: None,
        payload,
    }
}

/// An error response: status only.
pub fn error_response(status: &Status) -> Response {
    Response {
        status: Some(status.to_proto()),
        payload: Vec::new(),
    }
}

/// Build a request envelope.
pub fn request(
    service: &str,
    method: &str,
    payload: Vec<u8>,
    timeout: Option<std::time::Duration>,
) -> Request {
    Request {
        service: service.to_owned(),
        method: method.to_owned(),
        payload,
        timeout_nano: timeout
            .map(|t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0),
        metadata: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_ok_response_is_zero_bytes() {
        let f = encode_frame(1, MessageType::Response, &ok_response(Vec::new()));
        assert_eq!(f, vec![0, 0, 0, 0, 0, 0, 0, 1, 2, 0]);
    }

    #[test]
    fn decoder_reassembles_and_discards_oversize() {
        let mut d = StreamDecoder::default();
        let f = encode_frame(
            3,
            MessageType::Request,
            &request("s", "m", vec![1; 20], None),
        );
        d.push(&f[..5]);
        assert!(d.next_message().is_none());
        d.push(&f[5..]);
        match d.next_message() {
            Some(Incoming::Message { header, data }) => {
                assert_eq!(header.stream_id, 3);
                assert_eq!(header.ty, MessageType::Request);
                let r = Request::decode(data).unwrap();
                assert_eq!(r.method, "m");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Oversized: header says 5 MiB, body arrives in pieces and is dropped, then a valid one.
        let mut big = Vec::new();
        big.put_u32(5 << 20);
        big.put_u32(5);
        big.put_u8(1);
        big.put_u8(0);
        d.push(&big);
        assert!(matches!(d.next_message(), Some(Incoming::Oversized { .. })));
        d.push(&vec![0u8; 3 << 20]);
        assert!(d.next_message().is_none());
        let mut rest = vec![0u8; 2 << 20];
        rest.extend_from_slice(&f);
        d.push(&rest);
        assert!(matches!(d.next_message(), Some(Incoming::Message { .. })));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn status_codes_round_trip() {
        for v in -1..20 {
            assert_eq!(Code::from_i32(v).as_i32(), v);
        }
        let s = Status::unimplemented("method RunPodSandbox");
        let p = s.to_proto();
        assert_eq!(Status::from_proto(&p), Some(s));
        assert_eq!(Status::from_proto(&RpcStatus::default()), None);
    }
}
