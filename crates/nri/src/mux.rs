//! The NRI connection multiplexer: one unix stream carrying several virtual byte streams.
//!
//! Every write on the trunk is `[conn id u32 BE][payload length u32 BE][payload]`. Conn 1 carries
//! the Plugin service (runtime calls plugin), conn 2 the Runtime service (plugin calls runtime).
//! Frames are chunks of a byte stream: a ttrpc message may span several frames, so the receiver
//! reassembles per conn id (see [`crate::ttrpc::StreamDecoder`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::ttrpc;

/// Size of a mux frame header.
pub const HEADER_LEN: usize = 8;
/// Virtual connection serving `nri.pkg.api.v1alpha1.Plugin` (runtime is the ttrpc client).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// Virtual connection serving `nri.pkg.api.v1alpha1.Runtime` (plugin is the ttrpc client).
pub const RUNTIME_SERVICE_CONN: u32 = 2;
/// Largest payload a Go peer puts into one frame: a ttrpc header plus the largest ttrpc message.
pub const MAX_FRAME_PAYLOAD: usize = ttrpc::HEADER_LEN + ttrpc::MAX_DATA_LEN;
/// Size of the Go ttrpc channel's buffered reader and writer. A Go receiver accepts a frame larger
/// than this only while it is reading the rest of a large message body, so every ttrpc message
/// is sent as at most two frames: its first 4096 bytes, then the remainder.
pub const GO_BUFFER_SIZE: usize = 4096;

/// Append the mux frames for one complete ttrpc message (header included) to `out`, split
/// exactly as the Go side writes it (first 4096 bytes, then the rest).
pub fn encode_message(conn_id: u32, message: &[u8], out: &mut BytesMut) {
    out.reserve(message.len() + 2 * HEADER_LEN);
    if message.len() <= GO_BUFFER_SIZE {
        put_frame(conn_id, message, out);
    } else {
        let (first, rest) = message.split_at(GO_BUFFER_SIZE);
        put_frame(conn_id, first, out);
        // `rest` is at most MAX_FRAME_PAYLOAD because callers refuse larger messages; split
        // further anyway so this function never writes an invalid frame.
        for chunk in rest.chunks(MAX_FRAME_PAYLOAD) {
            put_frame(conn_id, chunk, out);
        }
    }
}

fn put_frame(conn_id: u32, payload: &[u8], out: &mut BytesMut) {
    out.put_u32(conn_id);
    // Lengths never exceed MAX_FRAME_PAYLOAD (< u32::MAX), see encode_message.
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
}

/// One received mux frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Virtual connection id.
    pub conn_id: u32,
    /// Payload bytes (a chunk of that connection's byte stream).
    pub payload: Bytes,
}

/// Incremental decoder of the trunk byte stream into mux frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_PAYLOAD)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames whose payload exceeds `max_payload`.
    pub fn new(max_payload: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            max_payload,
        }
    }

    /// The buffer to read socket bytes into (keeps at least 8 KiB of spare capacity so reads
    /// are never tiny).
    pub fn buffer(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < 8 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        &mut self.buf
    }

    /// Append received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Next complete frame, `Ok(None)` if more bytes are needed. An oversize length is an error:
    /// the stream cannot be resynchronized after it.
    pub fn decode(&mut self) -> Result<Option<Frame>> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let conn_id = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > self.max_payload {
            return Err(Error::FrameTooLarge {
                conn_id,
                len,
                limit: self.max_payload,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { conn_id, payload }))
    }

    /// Call at end of stream: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<()> {
        let have = self.buf.len();
        if have == 0 {
            return Ok(());
        }
        if have < HEADER_LEN {
            return Err(Error::TruncatedHeader { got: have });
        }
        let conn_id = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let want =
            u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        Err(Error::TruncatedFrame {
            conn_id,
            got: have - HEADER_LEN,
            want,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_message_is_one_frame() {
        let mut out = BytesMut::new();
        encode_message(2, &[1, 2, 3], &mut out);
        assert_eq!(&out[..], &[0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3]);
    }

    #[test]
    fn large_message_is_split_like_go() {
        let msg = vec![7u8; 10_000];
        let mut out = BytesMut::new();
        encode_message(1, &msg, &mut out);
        let mut dec = FrameDecoder::default();
        dec.extend(&out);
        let a = dec.decode().unwrap().unwrap();
        let b = dec.decode().unwrap().unwrap();
        assert!(dec.decode().unwrap().is_none());
        assert_eq!(a.payload.len(), 4096);
        assert_eq!(b.payload.len(), 10_000 - 4096);
        assert_eq!((a.conn_id, b.conn_id), (1, 1));
    }

    #[test]
    fn exactly_4096_is_one_frame() {
        let msg = vec![7u8; 4096];
        let mut out = BytesMut::new();
        encode_message(1, &msg, &mut out);
        assert_eq!(out.len(), 4096 + 8);
    }

    #[test]
    fn byte_by_byte_reassembly() {
        let mut out = BytesMut::new();
        encode_message(1, b"hello", &mut out);
        encode_message(2, b"", &mut out);
        let mut dec = FrameDecoder::default();
        let mut frames = Vec::new();
        for b in out.iter() {
            dec.extend(&[*b]);
            while let Some(f) = dec.decode().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].payload[..], b"hello");
        assert!(frames[1].payload.is_empty());
        dec.finish().unwrap();
    }

    #[test]
    fn oversize_and_truncation_are_errors() {
        let mut dec = FrameDecoder::default();
        dec.extend(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            dec.decode(),
            Err(Error::FrameTooLarge { conn_id: 1, .. })
        ));

        let mut dec = FrameDecoder::default();
        dec.extend(&[0, 0, 0]);
        assert!(dec.decode().unwrap().is_none());
        assert!(matches!(
            dec.finish(),
            Err(Error::TruncatedHeader { got: 3 })
        ));

        let mut dec = FrameDecoder::default();
        dec.extend(&[0, 0, 0, 1, 0, 0, 0, 9, 1]);
        assert!(dec.decode().unwrap().is_none());
        assert!(matches!(
            dec.finish(),
            Err(Error::TruncatedFrame {
                conn_id: 1,
                got: 1,
                want: 9
            })
        ));
    }
}
