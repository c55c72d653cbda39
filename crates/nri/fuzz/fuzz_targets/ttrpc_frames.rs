//! Arbitrary bytes of one virtual connection into the ttrpc stream decoder, and every message
//! it yields into the envelope and NRI message decoders.
//!
//! Input: `<control byte> <stream bytes>`; the control byte says how the stream is cut into
//! mux payloads.
//!
//! Checked, besides "no panic":
//! - cutting the stream at other places gives the same messages and leaves the same bytes
//!   pending (oversize messages included: their bodies are discarded across chunks);
//! - requests and responses that decode re-encode to an equal value (prost round trip), and so
//!   does the payload of a request, decoded as the message its method takes (both NRI services);
//! - a response status converts to a `Status` and back;
//! - Configure's runtime name/version strings go through the event-mask negotiation.

#![no_main]

use bytes::Bytes;
use drakit_proto::ttrpc::{Request, Response};
use libfuzzer_sys::fuzz_target;
use nri::api;
use nri::ttrpc::{Incoming, MessageType, Status, StreamDecoder};
use prost::Message;

fn drain(data: &[u8], cuts: &mut dyn FnMut() -> usize) -> (Vec<Incoming>, usize) {
    let mut dec = StreamDecoder::default();
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let step = cuts().clamp(1, data.len() - i);
        dec.push(&data[i..i + step]);
        i += step;
        while let Some(m) = dec.next_message() {
            out.push(m);
        }
    }
    (out, dec.pending())
}

/// Decodes `bytes` as `M`; when it decodes, re-encoding must give an equal message.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert_eq!(
        again,
        m,
        "prost round trip of {}",
        std::any::type_name::<M>()
    );
    Some(m)
}

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let _ = round_trip::<M>(bytes);
}

fn plugin_request(method: &str, payload: &[u8]) {
    match method {
        "Configure" => {
            if let Some(r) = round_trip::<api::ConfigureRequest>(payload) {
                let mask = nri::event::valid_for_runtime_info(
                    &r.runtime_name,
                    &r.runtime_version,
                    &r.nri_version,
                );
                assert!(!mask.is_empty(), "a runtime accepts some events");
            }
        }
        "Synchronize" => check::<api::SynchronizeRequest>(payload),
        "Shutdown" => check::<api::Empty>(payload),
        "RunPodSandbox" => check::<api::RunPodSandboxRequest>(payload),
        "UpdatePodSandbox" => check::<api::UpdatePodSandboxRequest>(payload),
        "PostUpdatePodSandbox" => check::<api::PostUpdatePodSandboxRequest>(payload),
        "StopPodSandbox" => check::<api::StopPodSandboxRequest>(payload),
        "RemovePodSandbox" => check::<api::RemovePodSandboxRequest>(payload),
        "CreateContainer" => check::<api::CreateContainerRequest>(payload),
        "PostCreateContainer" => check::<api::PostCreateContainerRequest>(payload),
        "StartContainer" => check::<api::StartContainerRequest>(payload),
        "PostStartContainer" => check::<api::PostStartContainerRequest>(payload),
        "UpdateContainer" => check::<api::UpdateContainerRequest>(payload),
        "PostUpdateContainer" => check::<api::PostUpdateContainerRequest>(payload),
        "StopContainer" => check::<api::StopContainerRequest>(payload),
        "RemoveContainer" => check::<api::RemoveContainerRequest>(payload),
        "StateChange" => check::<api::StateChangeEvent>(payload),
        "ValidateContainerAdjustment" => check::<api::ValidateContainerAdjustmentRequest>(payload),
        // The runtime service (plugin → runtime).
        "RegisterPlugin" => check::<api::RegisterPluginRequest>(payload),
        "UpdateContainers" => check::<api::UpdateContainersRequest>(payload),
        _ => {}
    }
}

/// A response does not say which call it answers: try the replies the two sides parse.
fn response_payload(payload: &[u8]) {
    check::<api::ConfigureResponse>(payload);
    check::<api::SynchronizeResponse>(payload);
    check::<api::CreateContainerResponse>(payload);
    check::<api::UpdateContainerResponse>(payload);
    check::<api::StopContainerResponse>(payload);
    check::<api::UpdateContainersResponse>(payload);
    check::<api::ValidateContainerAdjustmentResponse>(payload);
}

fn message(ty: MessageType, data: &Bytes) {
    match ty {
        MessageType::Request => {
            if let Some(req) = round_trip::<Request>(data) {
                plugin_request(&req.method, &req.payload);
            }
        }
        MessageType::Response => {
            if let Some(resp) = round_trip::<Response>(data) {
                if let Some(st) = resp.status.as_ref().and_then(Status::from_proto) {
                    let back = st.to_proto();
                    assert_eq!(Status::from_proto(&back), Some(st.clone()));
                    let _ = st.to_string();
                }
                response_payload(&resp.payload);
            }
        }
        // NRI never uses stream data; a receiver ignores it.
        MessageType::Data | MessageType::Other(_) => {}
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    let (msgs, pending) = drain(data, &mut || usize::MAX);
    let mut state = u32::from(ctl) | 1;
    let (msgs2, pending2) = drain(data, &mut || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (state >> 16) as usize % 61 + 1
    });
    assert_eq!(msgs, msgs2, "messages depend on how the stream was cut");
    assert_eq!(
        pending, pending2,
        "pending bytes depend on how the stream was cut"
    );

    for m in &msgs {
        if let Incoming::Message { header, data } = m {
            assert_eq!(header.data_len as usize, data.len());
            message(header.ty, data);
        }
    }
});
