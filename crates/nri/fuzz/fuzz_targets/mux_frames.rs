//! Arbitrary trunk bytes into the NRI connection multiplexer's frame decoder.
//!
//! Input: `<control byte> <trunk bytes>`. The control byte chooses the payload limit (the
//! default one or a small one, so oversize frames are reached) and how the bytes are cut into
//! reads.
//!
//! Checked, besides "no panic":
//! - cutting the stream into reads at other places gives the same frames and the same error;
//! - re-encoding the decoded frames gives back exactly the bytes they were decoded from, and
//!   `finish` complains exactly when bytes are left over;
//! - frame payloads fed into per-connection ttrpc stream decoders do not panic;
//! - `encode_message` of the input (repeated to pass the 4096-byte split point) decodes back to
//!   the same message, in at most two frames, the first of at most 4096 bytes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nri::mux::{FrameDecoder, GO_BUFFER_SIZE, HEADER_LEN, MAX_FRAME_PAYLOAD, encode_message};
use nri::ttrpc::StreamDecoder;

/// Decodes all frames; `cuts` yields read sizes (the whole input at once when empty).
fn decode_all(
    data: &[u8],
    max: usize,
    cuts: &mut dyn FnMut() -> usize,
) -> (Vec<nri::mux::Frame>, Option<String>, String) {
    let mut dec = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let step = cuts().clamp(1, data.len() - i);
        // Alternate between the two ways of feeding bytes the crate offers.
        if step.is_multiple_of(2) {
            dec.extend(&data[i..i + step]);
        } else {
            dec.buffer().extend_from_slice(&data[i..i + step]);
        }
        i += step;
        loop {
            match dec.decode() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(format!("{e:?}")), String::new()),
            }
        }
    }
    let fin = format!("{:?}", dec.finish());
    (frames, None, fin)
}

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    let max = if ctl & 1 == 0 {
        MAX_FRAME_PAYLOAD
    } else {
        usize::from(ctl >> 1)
    };

    // Whole input at once vs. reads of pseudo-random sizes.
    let (frames, err, fin) = decode_all(data, max, &mut || usize::MAX);
    let mut state = u32::from(ctl) | 1;
    let (frames2, err2, fin2) = decode_all(data, max, &mut || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (state >> 16) as usize % 97 + 1
    });
    assert_eq!(frames, frames2, "frames depend on how reads were cut");
    assert_eq!(err, err2, "error depends on how reads were cut");
    if err.is_none() {
        assert_eq!(fin, fin2, "finish depends on how reads were cut");
    }

    // The frames are exactly the bytes they came from.
    let mut again = Vec::new();
    for f in &frames {
        assert!(f.payload.len() <= max, "frame above the limit {max}");
        again.extend_from_slice(&f.conn_id.to_be_bytes());
        again.extend_from_slice(&(f.payload.len() as u32).to_be_bytes());
        again.extend_from_slice(&f.payload);
    }
    assert_eq!(&data[..again.len()], &again[..], "re-encoded frames differ");
    if err.is_none() {
        assert_eq!(
            fin == "Ok(())",
            again.len() == data.len(),
            "finish() = {fin} with {} of {} bytes consumed",
            again.len(),
            data.len()
        );
    }

    // Payloads into the ttrpc reassembly of conns 1 and 2.
    let mut streams = [StreamDecoder::default(), StreamDecoder::default()];
    for f in &frames {
        if let Some(s) = streams.get_mut(f.conn_id.wrapping_sub(1) as usize) {
            s.push(&f.payload);
            while s.next_message().is_some() {}
        }
    }

    // encode_message → decode is the identity; large messages are split like the Go side.
    let conn = u32::from(ctl % 3);
    let repeat = usize::from(ctl >> 6) + 1;
    let msg: Vec<u8> = data
        .iter()
        .copied()
        .cycle()
        .take(data.len() * repeat)
        .collect();
    let mut out = BytesMut::new();
    encode_message(conn, &msg, &mut out);
    let mut dec = FrameDecoder::default();
    dec.extend(&out);
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    while let Some(f) = dec.decode().expect("our own frames decode") {
        assert_eq!(f.conn_id, conn);
        sizes.push(f.payload.len());
        got.extend_from_slice(&f.payload);
    }
    dec.finish().expect("our own frames are complete");
    assert_eq!(got, msg, "encode_message round trip");
    assert_eq!(out.len(), msg.len() + HEADER_LEN * sizes.len());
    if msg.len() <= GO_BUFFER_SIZE {
        assert_eq!(sizes, vec![msg.len()], "a small message is one frame");
    } else {
        assert_eq!(sizes.len(), 2, "a large message is two frames: {sizes:?}");
        assert_eq!(sizes[0], GO_BUFFER_SIZE);
    }
});
