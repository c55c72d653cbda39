//! The stub against a hand-driven runtime on a socketpair: ordering corner cases and malformed
//! input. Nothing here may panic; every failure must be a clear error or a clean reply.

use std::time::Duration;

use bytes::BytesMut;
use drakit_proto::nri::{
    ConfigureRequest, ConfigureResponse, CreateContainerRequest, Empty, RegisterPluginRequest,
    SynchronizeRequest, SynchronizeResponse,
};
use drakit_proto::ttrpc::{Request, Response};
use nri::mux;
use nri::ttrpc::{self, Header, MessageType};
use nri::{Event, EventMask, Plugin, Stub, StubConfig};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

struct Quiet;
impl Plugin for Quiet {
    fn events(&self) -> EventMask {
        EventMask::of(Event::CreateContainer) | Event::RunPodSandbox
    }
}

/// The runtime end of a socketpair, speaking raw frames.
struct RawRuntime {
    sock: UnixStream,
    next_id: u32,
}

impl RawRuntime {
    async fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    async fn send_msg(&mut self, conn: u32, stream: u32, ty: MessageType, body: &impl Message) {
        let frame = ttrpc::encode_frame(stream, ty, body);
        let mut out = BytesMut::new();
        mux::encode_message(conn, &frame, &mut out);
        self.send_raw(&out).await;
    }

    /// Send a Plugin-service request on conn 1; returns its stream id.
    async fn request(&mut self, method: &str, payload: Vec<u8>) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let req = ttrpc::request(
            nri::PLUGIN_SERVICE,
            method,
            payload,
            Some(Duration::from_secs(2)),
        );
        self.send_msg(mux::PLUGIN_SERVICE_CONN, id, MessageType::Request, &req)
            .await;
        id
    }

    /// Read one complete ttrpc message (reassembling mux frames).
    async fn read_msg(&mut self) -> (u32, Header, Vec<u8>) {
        let mut acc: Vec<u8> = Vec::new();
        let mut conn = 0;
        loop {
            let mut hdr = [0u8; 8];
            tokio::time::timeout(Duration::from_secs(5), self.sock.read_exact(&mut hdr))
                .await
                .expect("reply within 5 s")
                .unwrap();
            conn = if acc.is_empty() {
                u32::from_be_bytes(hdr[..4].try_into().unwrap())
            } else {
                conn
            };
            let len = u32::from_be_bytes(hdr[4..].try_into().unwrap()) as usize;
            let mut buf = vec![0; len];
            self.sock.read_exact(&mut buf).await.unwrap();
            acc.extend(buf);
            if let Some(h) = Header::parse(&acc)
                && acc.len() >= 10 + h.data_len as usize
            {
                return (conn, h, acc[10..].to_vec());
            }
        }
    }

    async fn read_response(&mut self) -> (u32, Response) {
        let (conn, h, data) = self.read_msg().await;
        assert_eq!(conn, mux::PLUGIN_SERVICE_CONN);
        assert_eq!(h.ty, MessageType::Response);
        (h.stream_id, Response::decode(data.as_slice()).unwrap())
    }
}

fn stub_pair() -> (RawRuntime, tokio::task::JoinHandle<nri::Result<bool>>) {
    let (rt, plugin) = UnixStream::pair().unwrap();
    let mut cfg = StubConfig::new("wire", "10").unwrap();
    cfg.reconnect = None;
    let stub = Stub::new(Quiet, cfg);
    let task = tokio::spawn(async move { stub.serve(plugin).await });
    (
        RawRuntime {
            sock: rt,
            next_id: 1,
        },
        task,
    )
}

/// Read RegisterPlugin, answer Configure before replying to it, then finish the handshake.
async fn handshake(rt: &mut RawRuntime) {
    let (conn, h, data) = rt.read_msg().await;
    assert_eq!(
        (conn, h.stream_id, h.ty),
        (mux::RUNTIME_SERVICE_CONN, 1, MessageType::Request)
    );
    let req = Request::decode(data.as_slice()).unwrap();
    assert_eq!(
        (req.service.as_str(), req.method.as_str()),
        (nri::RUNTIME_SERVICE, "RegisterPlugin")
    );
    let reg = RegisterPluginRequest::decode(req.payload.as_slice()).unwrap();
    assert_eq!(
        (reg.plugin_name.as_str(), reg.plugin_idx.as_str()),
        ("wire", "10")
    );

    // Configure goes out before the RegisterPlugin reply: the stub must serve it anyway.
    let cfg = ConfigureRequest {
        runtime_name: "raw".into(),
        nri_version: "v0.12.0".into(),
        ..Default::default()
    };
    let id = rt.request("Configure", cfg.encode_to_vec()).await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!(sid, id);
    assert!(resp.status.is_none(), "{resp:?}");
    let cr = ConfigureResponse::decode(resp.payload.as_slice()).unwrap();
    assert_eq!(cr.events, 0x9);

    rt.send_msg(
        mux::RUNTIME_SERVICE_CONN,
        1,
        MessageType::Response,
        &ttrpc::ok_response(Vec::new()),
    )
    .await;
    let id = rt
        .request("Synchronize", SynchronizeRequest::default().encode_to_vec())
        .await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!(sid, id);
    assert!(resp.status.is_none());
    assert_eq!(
        SynchronizeResponse::decode(resp.payload.as_slice()).unwrap(),
        SynchronizeResponse::default()
    );
}

async fn still_serving(rt: &mut RawRuntime) {
    let req = CreateContainerRequest::default();
    let id = rt.request("CreateContainer", req.encode_to_vec()).await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!(sid, id);
    assert!(resp.status.is_none(), "{resp:?}");
}

fn code_of(resp: &Response) -> i32 {
    resp.status.as_ref().map(|s| s.code).unwrap_or(0)
}

#[tokio::test]
async fn configure_before_register_reply_and_chunked_sync() {
    let (mut rt, task) = stub_pair();
    handshake(&mut rt).await;
    // A second, chunked sync: intermediate chunks answered with more=true and no updates.
    let chunk = SynchronizeRequest {
        more: true,
        ..Default::default()
    };
    let id = rt.request("Synchronize", chunk.encode_to_vec()).await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!(sid, id);
    let r = SynchronizeResponse::decode(resp.payload.as_slice()).unwrap();
    assert!(r.more && r.update.is_empty());
    let id = rt
        .request("Synchronize", SynchronizeRequest::default().encode_to_vec())
        .await;
    let (_, resp) = rt.read_response().await;
    assert!(
        !SynchronizeResponse::decode(resp.payload.as_slice())
            .unwrap()
            .more,
        "{id}"
    );
    drop(rt);
    assert!(matches!(task.await.unwrap(), Ok(true)));
}

#[tokio::test]
async fn unknown_service_method_and_garbage_get_error_replies() {
    let (mut rt, task) = stub_pair();
    handshake(&mut rt).await;

    // Unknown method / service: Unimplemented with Go's messages.
    let id = rt.request("Frobnicate", Vec::new()).await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!((sid, code_of(&resp)), (id, 12));
    assert_eq!(resp.status.unwrap().message, "method Frobnicate");
    let id = rt.next_id;
    rt.next_id += 2;
    let req = ttrpc::request("some.Other", "X", Vec::new(), None);
    rt.send_msg(1, id, MessageType::Request, &req).await;
    let (_, resp) = rt.read_response().await;
    assert_eq!(code_of(&resp), 12);
    assert_eq!(resp.status.unwrap().message, "service some.Other");

    // Garbage NRI payload in a valid envelope: InvalidArgument naming the call.
    let id = rt
        .request("CreateContainer", vec![0xff, 0xff, 0xff, 0xff, 0x0f])
        .await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!((sid, code_of(&resp)), (id, 3));
    assert!(resp.status.unwrap().message.contains("CreateContainer"));

    // Garbage ttrpc envelope.
    let id = rt.next_id;
    rt.next_id += 2;
    let mut frame = Vec::new();
    frame.extend_from_slice(&5u32.to_be_bytes());
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&[1, 0, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let mut out = BytesMut::new();
    mux::encode_message(1, &frame, &mut out);
    rt.send_raw(&out).await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!((sid, code_of(&resp)), (id, 3));

    // Even and re-used stream ids are refused (InvalidArgument), like Go's server.
    let req = ttrpc::request(nri::PLUGIN_SERVICE, "CreateContainer", Vec::new(), None);
    rt.send_msg(1, 1000, MessageType::Request, &req).await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!((sid, code_of(&resp)), (1000, 3));
    rt.send_msg(1, 1, MessageType::Request, &req).await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!((sid, code_of(&resp)), (1, 3));

    // A ttrpc message over 4 MiB: ResourceExhausted, body skipped, stream stays in sync.
    let id = rt.next_id;
    rt.next_id += 2;
    let big = (5u32 << 20) as usize;
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&(big as u32).to_be_bytes());
    hdr.extend_from_slice(&id.to_be_bytes());
    hdr.extend_from_slice(&[1, 0]);
    let mut out = BytesMut::new();
    mux::encode_message(1, &hdr, &mut out);
    let body = vec![0u8; big];
    for chunk in body.chunks(1 << 20) {
        mux::encode_message(1, chunk, &mut out);
    }
    rt.send_raw(&out).await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!((sid, code_of(&resp)), (id, 8));

    // Frames for unknown virtual connections are dropped.
    let mut out = BytesMut::new();
    mux::encode_message(7, b"whatever", &mut out);
    mux::encode_message(0, b"", &mut out);
    rt.send_raw(&out).await;

    still_serving(&mut rt).await;
    drop(rt);
    assert!(matches!(task.await.unwrap(), Ok(true)));
}

#[tokio::test]
async fn mux_length_over_the_limit_ends_the_session_with_a_clear_error() {
    let (mut rt, task) = stub_pair();
    handshake(&mut rt).await;
    rt.send_raw(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).await;
    let err = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            nri::Error::FrameTooLarge {
                conn_id: 1,
                len: 0xffff_ffff,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("limit"), "{err}");
}

#[tokio::test]
async fn truncated_header_and_truncated_frame_are_reported() {
    let (mut rt, task) = stub_pair();
    handshake(&mut rt).await;
    rt.send_raw(&[0, 0, 0]).await;
    drop(rt);
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(err, nri::Error::TruncatedHeader { got: 3 }),
        "{err}"
    );

    let (mut rt, task) = stub_pair();
    handshake(&mut rt).await;
    rt.send_raw(&[0, 0, 0, 1, 0, 0, 0, 100, 1, 2]).await;
    drop(rt);
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            nri::Error::TruncatedFrame {
                conn_id: 1,
                got: 2,
                want: 100
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_before_registration_does_not_panic() {
    // Random bytes as the very first thing the stub hears.
    let (mut rt, task) = stub_pair();
    let (_, h, _) = rt.read_msg().await; // RegisterPlugin
    assert_eq!(h.ty, MessageType::Request);
    rt.send_raw(b"\x00\x00\x00\x02\x00\x00\x00\x04\xde\xad\xbe\xef\x00\x00\x00\x02\x00\x00\x00\x06\x00\x00\x00\x01\x02\x00").await;
    drop(rt);
    let res = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(res.is_err(), "{res:?}");
}

#[tokio::test]
async fn shutdown_request_is_answered_and_stops_the_stub() {
    let (mut rt, plugin) = {
        let (rt, plugin) = UnixStream::pair().unwrap();
        (
            RawRuntime {
                sock: rt,
                next_id: 1,
            },
            plugin,
        )
    };
    let cfg = StubConfig::new("wire", "10").unwrap();
    let stub = Stub::new(Quiet, cfg);
    let handle = stub.handle();
    let task = tokio::spawn(async move {
        // run() would dial; drive one session and report whether shutdown was requested.
        stub.serve(plugin).await
    });
    handshake(&mut rt).await;
    let id = rt
        .request("Shutdown", Empty::default().encode_to_vec())
        .await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!(sid, id);
    assert!(resp.status.is_none() && resp.payload.is_empty());
    let res = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(res, Ok(true)), "{res:?}");
    assert_eq!(handle.state(), nri::StubState::Disconnected);
}

#[tokio::test]
async fn registration_refused_by_the_runtime_is_an_error() {
    let (mut rt, task) = stub_pair();
    let _ = rt.read_msg().await;
    let st = nri::Status::invalid_argument("plugin name taken");
    rt.send_msg(2, 1, MessageType::Response, &ttrpc::error_response(&st))
        .await;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(nri::Code::InvalidArgument));
    assert!(
        err.to_string().contains("RegisterPlugin") && err.to_string().contains("plugin name taken"),
        "{err}"
    );
    let _ = Empty::default();
}

#[tokio::test]
async fn stub_reconnects_after_a_malformed_trunk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nri.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let mut cfg = StubConfig::new("wire", "10").unwrap().with_socket(&path);
    cfg.reconnect = Some(nri::Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    });
    let stub = Stub::new(Quiet, cfg);
    let handle = stub.handle();
    let task = tokio::spawn(stub.run());

    // First connection: a mux frame announcing 4 GiB. The stub must drop it and dial again.
    let (s, _) = listener.accept().await.unwrap();
    let mut rt = RawRuntime {
        sock: s,
        next_id: 1,
    };
    let _ = rt.read_msg().await;
    rt.send_raw(&[0, 0, 0, 2, 0xff, 0xff, 0xff, 0xf0]).await;

    // Second connection: a normal handshake works.
    let (s, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut rt = RawRuntime {
        sock: s,
        next_id: 1,
    };
    handshake(&mut rt).await;
    still_serving(&mut rt).await;
    handle.wait_synchronized().await.unwrap();
    assert_eq!(handle.connections(), 2);
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Returns an adjustment with a 10 KB annotation.
struct Big;
impl Plugin for Big {
    fn events(&self) -> EventMask {
        EventMask::of(Event::CreateContainer)
    }
    async fn create_container(
        &self,
        _: &drakit_proto::nri::PodSandbox,
        _: &drakit_proto::nri::Container,
    ) -> nri::HookResult<drakit_proto::nri::CreateContainerResponse> {
        let mut a = nri::Adjustment::new();
        a.add_annotation("big", "b".repeat(10_000));
        Ok(a.into())
    }
}

#[tokio::test]
async fn large_replies_are_split_like_go_writes_them() {
    let (rt, plugin) = UnixStream::pair().unwrap();
    let mut rt = RawRuntime {
        sock: rt,
        next_id: 1,
    };
    let mut cfg = StubConfig::new("wire", "10").unwrap();
    cfg.reconnect = None;
    let task = tokio::spawn(async move { Stub::new(Big, cfg).serve(plugin).await });
    // Minimal handshake (Big subscribes to CreateContainer only).
    let _ = rt.read_msg().await;
    rt.send_msg(2, 1, MessageType::Response, &ttrpc::ok_response(Vec::new()))
        .await;
    let id = rt
        .request("Configure", ConfigureRequest::default().encode_to_vec())
        .await;
    let (sid, _) = rt.read_response().await;
    assert_eq!(sid, id);
    let _ = rt
        .request("Synchronize", SynchronizeRequest::default().encode_to_vec())
        .await;
    let _ = rt.read_response().await;

    let _ = rt
        .request(
            "CreateContainer",
            CreateContainerRequest::default().encode_to_vec(),
        )
        .await;
    // Read raw mux frames: a Go reader accepts > 4096 bytes only as the rest of a long body, so the
    // reply must arrive as exactly [first 4096 bytes][remainder].
    let mut frames = Vec::new();
    let mut total = 0usize;
    let mut want = None;
    while want != Some(total) {
        let mut hdr = [0u8; 8];
        rt.sock.read_exact(&mut hdr).await.unwrap();
        let len = u32::from_be_bytes(hdr[4..].try_into().unwrap()) as usize;
        let mut buf = vec![0; len];
        rt.sock.read_exact(&mut buf).await.unwrap();
        if want.is_none() {
            want = Some(10 + Header::parse(&buf).unwrap().data_len as usize);
        }
        total += len;
        frames.push(len);
    }
    assert!(want.unwrap() > 10_000);
    assert_eq!(frames, vec![4096, want.unwrap() - 4096]);
    drop(rt);
    assert!(task.await.unwrap().is_ok());
}

struct Nothing;
impl Plugin for Nothing {
    fn events(&self) -> EventMask {
        EventMask::EMPTY
    }
}

#[tokio::test]
async fn empty_subscription_fails_configure_instead_of_meaning_all() {
    let (rt, plugin) = UnixStream::pair().unwrap();
    let mut rt = RawRuntime {
        sock: rt,
        next_id: 1,
    };
    let mut cfg = StubConfig::new("wire", "10").unwrap();
    cfg.reconnect = None;
    let _task = tokio::spawn(async move { Stub::new(Nothing, cfg).serve(plugin).await });
    let _ = rt.read_msg().await;
    let id = rt
        .request("Configure", ConfigureRequest::default().encode_to_vec())
        .await;
    let (sid, resp) = rt.read_response().await;
    assert_eq!((sid, code_of(&resp)), (id, 9));
    assert!(resp.status.unwrap().message.contains("no events"));
}

/// CreateContainer waits until RunPodSandbox has been handled.
#[derive(Default)]
struct SlowCreate(tokio::sync::Notify);
impl Plugin for SlowCreate {
    fn events(&self) -> EventMask {
        EventMask::of(Event::CreateContainer) | Event::RunPodSandbox
    }
    async fn create_container(
        &self,
        _: &drakit_proto::nri::PodSandbox,
        _: &drakit_proto::nri::Container,
    ) -> nri::HookResult<drakit_proto::nri::CreateContainerResponse> {
        self.0.notified().await;
        Ok(Default::default())
    }
    async fn run_pod_sandbox(&self, _: &drakit_proto::nri::PodSandbox) -> nri::HookResult {
        self.0.notify_one();
        Ok(())
    }
}

#[tokio::test]
async fn requests_are_served_concurrently_and_answered_out_of_order() {
    let (rt, plugin) = UnixStream::pair().unwrap();
    let mut rt = RawRuntime {
        sock: rt,
        next_id: 1,
    };
    let mut cfg = StubConfig::new("wire", "10").unwrap();
    cfg.reconnect = None;
    let _task =
        tokio::spawn(async move { Stub::new(SlowCreate::default(), cfg).serve(plugin).await });
    let _ = rt.read_msg().await;
    rt.send_msg(2, 1, MessageType::Response, &ttrpc::ok_response(Vec::new()))
        .await;
    let _ = rt
        .request("Configure", ConfigureRequest::default().encode_to_vec())
        .await;
    let _ = rt.read_response().await;
    let _ = rt
        .request("Synchronize", SynchronizeRequest::default().encode_to_vec())
        .await;
    let _ = rt.read_response().await;

    let slow = rt
        .request(
            "CreateContainer",
            CreateContainerRequest::default().encode_to_vec(),
        )
        .await;
    let fast = rt
        .request(
            "RunPodSandbox",
            drakit_proto::nri::RunPodSandboxRequest::default().encode_to_vec(),
        )
        .await;
    let (first, _) = rt.read_response().await;
    let (second, _) = rt.read_response().await;
    assert_eq!((first, second), (fast, slow));
}

/// The ttrpc size limit is enforced from the header alone: a header announcing more than
/// `MAX_DATA_LEN` (here the largest length a header can carry) is reported at once, before any
/// of its body arrived, and the body is counted off as it comes instead of being buffered.
/// The mux frame decoder likewise refuses a frame length over its limit from the 8-byte header.
#[test]
fn over_limit_lengths_are_refused_from_the_header_without_buffering() {
    use nri::ttrpc::{Incoming, MAX_DATA_LEN, StreamDecoder};
    assert_eq!(MAX_DATA_LEN, 4 << 20, "ttrpc's limit");

    let mut d = StreamDecoder::default();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&u32::MAX.to_be_bytes());
    hdr.extend_from_slice(&7u32.to_be_bytes());
    hdr.extend_from_slice(&[1, 0]);
    d.push(&hdr);
    match d.next_message() {
        Some(Incoming::Oversized { header }) => {
            assert_eq!((header.data_len, header.stream_id), (u32::MAX, 7));
        }
        other => panic!("expected Oversized from the header alone, got {other:?}"),
    }
    // 64 MiB of its (4 GiB) body go by in 1 MiB chunks: nothing is kept.
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..64 {
        d.push(&chunk);
        assert_eq!(
            d.pending(),
            0,
            "the body of an oversized message is not buffered"
        );
        assert!(d.next_message().is_none());
    }

    // Just at the limit the message is accepted (and buffered until complete).
    let mut d = StreamDecoder::default();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&(MAX_DATA_LEN as u32).to_be_bytes());
    hdr.extend_from_slice(&9u32.to_be_bytes());
    hdr.extend_from_slice(&[1, 0]);
    d.push(&hdr);
    assert!(d.next_message().is_none(), "waits for the body");
    d.push(&vec![0u8; MAX_DATA_LEN]);
    match d.next_message() {
        Some(Incoming::Message { header, data }) => {
            assert_eq!(header.stream_id, 9);
            assert_eq!(data.len(), MAX_DATA_LEN);
        }
        other => panic!("expected the at-limit message, got {other:?}"),
    }

    // Mux: one byte over the largest frame payload is an error from the header alone.
    let mut f = mux::FrameDecoder::default();
    f.extend(&3u32.to_be_bytes());
    f.extend(&((mux::MAX_FRAME_PAYLOAD + 1) as u32).to_be_bytes());
    let err = f.decode().unwrap_err();
    assert!(
        matches!(err, nri::Error::FrameTooLarge { conn_id: 3, .. }),
        "{err}"
    );
}
