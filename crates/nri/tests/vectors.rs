//! Replay of the recorded containerd <-> Go-stub NRI traffic in `../shared/vectors/nri`.
//!
//! 1. Every recorded frame decodes (mux header, ttrpc header, envelope, NRI payload) and
//!    re-encodes to the same length (same bytes where the Go encoding is deterministic).
//! 2. The whole recorded trunk streams (read in the proxy's original chunking, which does not
//!    follow frame boundaries) reassemble into exactly the indexed messages.
//! 3. The runtime's recorded bytes are played to our stub, running a plugin that behaves like the
//!    recorded Go plugin; what the stub sends back must equal the Go plugin's frames byte for byte
//!    (responses), or field by field (RegisterPlugin, whose `timeout_nano` is a clock reading).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use drakit_proto::nri::{self as api, Container, CreateContainerResponse, PodSandbox};
use drakit_proto::ttrpc::{Request, Response};
use nri::mux::FrameDecoder;
use nri::ttrpc::{Header, Incoming, MessageType, StreamDecoder};
use nri::{Adjustment, Event, EventMask, HookResult, Plugin, Status, Stub, StubConfig};
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn vectors_dir() -> Option<PathBuf> {
    let shared = std::env::var_os("DRAKIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = shared.join("vectors/nri");
    if dir.join("index.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: NRI vectors not found at {} (set DRAKIT_SHARED)",
            dir.display()
        );
        None
    }
}

fn index(dir: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("index.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["messages"].as_array().unwrap().clone()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decode `payload` as the named NRI type and check the re-encoding.
fn check_payload(ty: &str, payload: &[u8], deterministic: bool, what: &str) {
    macro_rules! check {
        ($t:ty) => {{
            let m = <$t>::decode(payload).unwrap_or_else(|e| panic!("{what}: decode {ty}: {e}"));
            let again = m.encode_to_vec();
            assert_eq!(
                again.len(),
                payload.len(),
                "{what}: {ty} re-encodes to another length (unknown fields?)"
            );
            if deterministic {
                assert_eq!(again, payload, "{what}: {ty} re-encoding differs");
            }
            assert_eq!(
                <$t>::decode(again.as_slice()).unwrap(),
                m,
                "{what}: round trip"
            );
        }};
    }
    match ty {
        "RegisterPluginRequest" => check!(api::RegisterPluginRequest),
        "ConfigureRequest" => check!(api::ConfigureRequest),
        "ConfigureResponse" => check!(api::ConfigureResponse),
        "SynchronizeRequest" => check!(api::SynchronizeRequest),
        "SynchronizeResponse" => check!(api::SynchronizeResponse),
        "RunPodSandboxRequest" => check!(api::RunPodSandboxRequest),
        "RunPodSandboxResponse" => check!(api::RunPodSandboxResponse),
        "CreateContainerRequest" => check!(api::CreateContainerRequest),
        "CreateContainerResponse" => check!(api::CreateContainerResponse),
        "StartContainerRequest" => check!(api::StartContainerRequest),
        "StartContainerResponse" => check!(api::StartContainerResponse),
        "StopContainerRequest" => check!(api::StopContainerRequest),
        "StopContainerResponse" => check!(api::StopContainerResponse),
        "RemoveContainerRequest" => check!(api::RemoveContainerRequest),
        "RemoveContainerResponse" => check!(api::RemoveContainerResponse),
        "StateChangeEvent" => check!(api::StateChangeEvent),
        "Empty" => check!(api::Empty),
        other => panic!("{what}: payload type {other} not covered by this test"),
    }
}

#[test]
fn every_recorded_frame_decodes() {
    let Some(dir) = vectors_dir() else { return };
    let msgs = index(&dir);
    assert!(msgs.len() >= 70, "index lists {} messages", msgs.len());
    for m in &msgs {
        let file = m["frame_file"].as_str().unwrap();
        let what = format!("{} #{} {}", m["plugin"], m["n"], file);
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let mut dec = FrameDecoder::default();
        dec.extend(&bytes);
        let frame = dec
            .decode()
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: incomplete"));
        assert!(
            dec.decode().unwrap().is_none(),
            "{what}: one frame per file"
        );
        dec.finish().unwrap();
        assert_eq!(
            hex(&bytes[..8]),
            m["mux_header_hex"].as_str().unwrap(),
            "{what}"
        );
        assert_eq!(
            u64::from(frame.conn_id),
            m["mux_conn"].as_u64().unwrap(),
            "{what}"
        );
        let mut sd = StreamDecoder::default();
        sd.push(&frame.payload);
        let Some(Incoming::Message { header, data }) = sd.next_message() else {
            panic!("{what}: no ttrpc message");
        };
        assert_eq!(sd.pending(), 0, "{what}: one ttrpc message per frame");
        assert_eq!(
            hex(&frame.payload[..10]),
            m["ttrpc_header_hex"].as_str().unwrap(),
            "{what}"
        );
        assert_eq!(
            u64::from(header.stream_id),
            m["stream_id"].as_u64().unwrap(),
            "{what}"
        );
        assert_eq!(header.flags, 0, "{what}");
        let deterministic = m["reencode_deterministic_equal"].as_bool().unwrap_or(false);
        let ty = m["payload_type"].as_str().unwrap();
        match m["type"].as_str().unwrap() {
            "request" => {
                assert_eq!(header.ty, MessageType::Request, "{what}");
                let req = Request::decode(data.clone()).unwrap();
                assert_eq!(req.service, m["service"].as_str().unwrap(), "{what}");
                assert_eq!(req.method, m["method"].as_str().unwrap(), "{what}");
                assert_eq!(
                    req.timeout_nano,
                    m["timeout_nano"].as_i64().unwrap(),
                    "{what}"
                );
                match &m["metadata"] {
                    Value::Object(md) => {
                        assert_eq!(req.metadata.len(), md.len(), "{what}");
                        for kv in &req.metadata {
                            assert_eq!(md[&kv.key].as_str(), Some(kv.value.as_str()), "{what}");
                        }
                    }
                    _ => assert!(req.metadata.is_empty(), "{what}"),
                }
                assert_eq!(
                    req.payload.len() as u64,
                    m["payload_len"].as_u64().unwrap(),
                    "{what}"
                );
                check_payload(ty, &req.payload, deterministic, &what);
                // The envelope itself re-encodes to the same bytes when the payload does.
                if deterministic {
                    assert_eq!(req.encode_to_vec(), data.to_vec(), "{what}: envelope");
                }
            }
            "response" => {
                assert_eq!(header.ty, MessageType::Response, "{what}");
                let resp = Response::decode(data.clone()).unwrap();
                match &m["status"] {
                    Value::Object(st) => {
                        let s = resp.status.as_ref().unwrap();
                        assert_eq!(i64::from(s.code), st["code"].as_i64().unwrap(), "{what}");
                        assert_eq!(s.message, st["message"].as_str().unwrap(), "{what}");
                        assert!(resp.payload.is_empty(), "{what}");
                    }
                    _ => {
                        assert!(
                            resp.status.is_none(),
                            "{what}: OK responses carry no status"
                        );
                        check_payload(ty, &resp.payload, deterministic, &what);
                    }
                }
                assert_eq!(resp.encode_to_vec(), data.to_vec(), "{what}: envelope");
            }
            other => panic!("{what}: type {other}"),
        }
        // Payload files, where present, are exactly the embedded payload.
        let stem = file
            .trim_start_matches("frames/")
            .trim_end_matches(".frame");
        let pb = dir.join(format!("{stem}.pb"));
        if pb.is_file() {
            let want = std::fs::read(&pb).unwrap();
            let got = if header.ty == MessageType::Request {
                Request::decode(data.clone()).unwrap().payload
            } else {
                Response::decode(data.clone()).unwrap().payload
            };
            assert_eq!(got, want, "{what}: {}", pb.display());
        }
    }
}

/// Split a `session*.bin` capture into the two directions' chunk lists.
fn chunks(path: &std::path::Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let raw = std::fs::read(path).unwrap();
    let (mut to_runtime, mut to_plugin) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < raw.len() {
        let dir = raw[i];
        let len = u32::from_be_bytes(raw[i + 1..i + 5].try_into().unwrap()) as usize;
        let data = raw[i + 5..i + 5 + len].to_vec();
        i += 5 + len;
        if dir == 0 {
            to_runtime.push(data)
        } else {
            to_plugin.push(data)
        }
    }
    (to_runtime, to_plugin)
}

/// Messages (conn, stream id, type) in a direction's chunk list, reassembled chunk by chunk.
fn reassemble(chunks: &[Vec<u8>]) -> Vec<(u32, Header, Bytes)> {
    let mut dec = FrameDecoder::default();
    let mut streams = [StreamDecoder::default(), StreamDecoder::default()];
    let mut out = Vec::new();
    for c in chunks {
        dec.extend(c);
        while let Some(f) = dec.decode().unwrap() {
            let s = &mut streams[(f.conn_id - 1) as usize];
            s.push(&f.payload);
            while let Some(Incoming::Message { header, data }) = s.next_message() {
                out.push((f.conn_id, header, data));
            }
        }
    }
    dec.finish().unwrap();
    out
}

#[test]
fn whole_sessions_reassemble_into_the_indexed_messages() {
    let Some(dir) = vectors_dir() else { return };
    let msgs = index(&dir);
    for (file, plugin) in [
        ("session.bin", "20-adjuster"),
        ("session-legacy.bin", "30-legacy"),
    ] {
        let (to_runtime, to_plugin) = chunks(&dir.join(file));
        for (dir_name, chunks) in [
            ("plugin->runtime", &to_runtime),
            ("runtime->plugin", &to_plugin),
        ] {
            let got = reassemble(chunks);
            let want: Vec<&Value> = msgs
                .iter()
                .filter(|m| m["plugin"] == plugin && m["dir"] == dir_name)
                .collect();
            assert_eq!(got.len(), want.len(), "{file} {dir_name}");
            for ((conn, h, data), m) in got.iter().zip(want) {
                assert_eq!(u64::from(*conn), m["mux_conn"].as_u64().unwrap());
                assert_eq!(u64::from(h.stream_id), m["stream_id"].as_u64().unwrap());
                let frame = std::fs::read(dir.join(m["frame_file"].as_str().unwrap())).unwrap();
                assert_eq!(&frame[18..], &data[..], "{file} {dir_name} #{}", m["n"]);
            }
        }
    }
}

/// Behaves like the recorded Go test plugin (`nri-adjuster-rec`).
struct Recorded {
    prefix: &'static str,
    unified_match: Option<&'static str>,
    unimplemented: &'static [&'static str],
}

impl Recorded {
    fn gate(&self, method: &str) -> HookResult {
        if self.unimplemented.contains(&method) {
            Err(Status::unimplemented(format!("method {method}")))
        } else {
            Ok(())
        }
    }
}

impl Plugin for Recorded {
    fn events(&self) -> EventMask {
        EventMask::from_events([
            Event::RunPodSandbox,
            Event::CreateContainer,
            Event::StartContainer,
            Event::StopContainer,
            Event::RemoveContainer,
        ])
    }
    async fn run_pod_sandbox(&self, _: &PodSandbox) -> HookResult {
        self.gate("RunPodSandbox")
    }
    async fn start_container(&self, _: &PodSandbox, _: &Container) -> HookResult {
        self.gate("StartContainer")
    }
    async fn remove_container(&self, _: &PodSandbox, _: &Container) -> HookResult {
        self.gate("RemoveContainer")
    }
    async fn state_change(&self, _: &api::StateChangeEvent) -> HookResult {
        Ok(())
    }
    async fn create_container(
        &self,
        _: &PodSandbox,
        c: &Container,
    ) -> HookResult<CreateContainerResponse> {
        let mut a = Adjustment::new();
        if c.name.starts_with(self.prefix) {
            a.add_env("NRI_ADJUSTED", "yes")
                .set_cpuset_cpus("1")
                .set_cpu_shares(512)
                .set_pids_limit(77)
                .add_cdi_device("example.com/dev=dev0");
            if self.unified_match.is_some_and(|m| c.name.contains(m)) {
                a.add_unified("memory.high", "max");
            }
        }
        Ok(a.into())
    }
}

async fn read_frame(sock: &mut UnixStream) -> Vec<u8> {
    let mut hdr = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut hdr))
        .await
        .expect("stub answered within 5 s")
        .unwrap();
    let len = u32::from_be_bytes(hdr[4..8].try_into().unwrap()) as usize;
    let mut buf = vec![0u8; len];
    sock.read_exact(&mut buf).await.unwrap();
    let mut out = hdr.to_vec();
    out.extend(buf);
    out
}

async fn replay(
    dir: &std::path::Path,
    plugin_label: &str,
    plugin: Recorded,
    name: &str,
    idx: &str,
) {
    let msgs: Vec<Value> = index(dir)
        .into_iter()
        .filter(|m| m["plugin"] == plugin_label)
        .collect();
    let (mut runtime, plugin_end) = UnixStream::pair().unwrap();
    let mut cfg = StubConfig::new(name, idx).unwrap();
    cfg.nri_version = "v0.12.0".into();
    cfg.reconnect = None;
    let stub = Stub::new(plugin, cfg);
    let task = tokio::spawn(async move { stub.serve(plugin_end).await });
    for m in &msgs {
        let frame = std::fs::read(dir.join(m["frame_file"].as_str().unwrap())).unwrap();
        let what = format!("{plugin_label} #{} {}", m["n"], m["method"]);
        if m["dir"] == "runtime->plugin" {
            runtime.write_all(&frame).await.unwrap();
            continue;
        }
        let got = read_frame(&mut runtime).await;
        if m["type"] == "response" {
            assert_eq!(
                hex(&got),
                hex(&frame),
                "{what}: stub reply differs from the Go plugin's"
            );
            continue;
        }
        // RegisterPlugin: same framing and envelope, timeout_nano is a clock reading.
        assert_eq!(&got[..4], &frame[..4], "{what}: conn id");
        let gh = Header::parse(&got[8..]).unwrap();
        let wh = Header::parse(&frame[8..]).unwrap();
        assert_eq!(
            (gh.stream_id, gh.ty, gh.flags),
            (wh.stream_id, wh.ty, wh.flags),
            "{what}"
        );
        let gr = Request::decode(&got[18..]).unwrap();
        let wr = Request::decode(&frame[18..]).unwrap();
        assert_eq!(
            (&gr.service, &gr.method, &gr.payload, &gr.metadata),
            (&wr.service, &wr.method, &wr.payload, &wr.metadata),
            "{what}"
        );
        assert!(
            gr.timeout_nano > 4_000_000_000 && gr.timeout_nano <= 5_000_000_000,
            "{what}: timeout {}",
            gr.timeout_nano
        );
        assert_eq!(got.len(), frame.len(), "{what}: same size");
    }
    drop(runtime);
    let res = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(res, Ok(true)), "session ended after sync: {res:?}");
}

#[tokio::test]
async fn stub_answers_like_the_go_plugin() {
    let Some(dir) = vectors_dir() else { return };
    let adjuster = Recorded {
        prefix: "adj",
        unified_match: Some("uni"),
        unimplemented: &[],
    };
    replay(&dir, "20-adjuster", adjuster, "adjuster", "20").await;
}

#[tokio::test]
async fn stub_answers_like_the_go_plugin_legacy() {
    let Some(dir) = vectors_dir() else { return };
    let legacy = Recorded {
        prefix: "zzz-nomatch",
        unified_match: None,
        unimplemented: &["RunPodSandbox", "StartContainer", "RemoveContainer"],
    };
    replay(&dir, "30-legacy", legacy, "legacy", "30").await;
}

fn payload_of(frame: &[u8]) -> Vec<u8> {
    match Header::parse(&frame[8..]).unwrap().ty {
        MessageType::Request => Request::decode(&frame[18..]).unwrap().payload,
        _ => Response::decode(&frame[18..]).unwrap().payload,
    }
}

/// The simulator plays containerd's side against the recorded Go plugin bytes: its frames must
/// match what containerd sent (byte-exact where deterministic, decoded otherwise), and the
/// recorded adjustment must land in the container's OCI spec.
#[tokio::test]
async fn simulator_talks_like_containerd() {
    use nri::simulator::{Runtime, SimConfig, default_spec};
    let Some(dir) = vectors_dir() else { return };
    let frame = |n: &str| {
        let name = std::fs::read_dir(dir.join("frames"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|f| f.starts_with(&format!("{n}-")))
            .unwrap();
        std::fs::read(dir.join("frames").join(name)).unwrap()
    };
    let sync = api::SynchronizeRequest::decode(payload_of(&frame("05")).as_slice()).unwrap();
    let rt = Runtime::new(SimConfig::default());
    for p in &sync.pods {
        rt.add_pod(p.clone());
    }
    for c in &sync.containers {
        rt.add_container(c.clone(), default_spec(&["sleep"]));
    }
    let (ours, mut plugin) = UnixStream::pair().unwrap();
    let rt2 = rt.clone();
    let attach = tokio::spawn(async move { rt2.attach(ours).await });

    // RegisterPlugin as the Go plugin sent it; the reply must be containerd's exact bytes.
    // Configure may overtake the reply (containerd does that too), so take both in any order.
    plugin.write_all(&frame("01")).await.unwrap();
    let (a, b) = (read_frame(&mut plugin).await, read_frame(&mut plugin).await);
    let (reply, got) = if a[3] == 2 { (a, b) } else { (b, a) };
    assert_eq!(hex(&reply), hex(&frame("02")), "RegisterPlugin reply");

    // Configure: same header, envelope and payload bytes (timeouts in ms, versions, name).
    let want = frame("03");
    assert_eq!(&got[..18], &want[..18], "Configure framing");
    let (gr, wr) = (
        Request::decode(&got[18..]).unwrap(),
        Request::decode(&want[18..]).unwrap(),
    );
    assert_eq!(
        (&gr.service, &gr.method, &gr.payload),
        (&wr.service, &wr.method, &wr.payload)
    );
    assert!(gr.timeout_nano > 1_000_000_000 && gr.timeout_nano <= 2_000_000_000);
    plugin.write_all(&frame("04")).await.unwrap();

    // Synchronize: stream 3, the same pods and containers.
    let got = read_frame(&mut plugin).await;
    let gh = Header::parse(&got[8..]).unwrap();
    assert_eq!((gh.stream_id, gh.ty), (3, MessageType::Request));
    assert_eq!(
        api::SynchronizeRequest::decode(payload_of(&got).as_slice()).unwrap(),
        sync
    );
    plugin.write_all(&frame("06")).await.unwrap();
    let info = attach.await.unwrap().unwrap();
    assert_eq!(
        (info.name.as_str(), info.index.as_str(), info.events.bits()),
        ("adjuster", "20", 1577)
    );

    // RunPodSandbox with the recorded pod.
    let run = api::RunPodSandboxRequest::decode(payload_of(&frame("07")).as_slice()).unwrap();
    let rt2 = rt.clone();
    let pod = run.pod.clone().unwrap();
    let task = tokio::spawn(async move { rt2.run_pod_sandbox(pod).await });
    let got = read_frame(&mut plugin).await;
    assert_eq!(Header::parse(&got[8..]).unwrap().stream_id, 5);
    assert_eq!(Request::decode(&got[18..]).unwrap().method, "RunPodSandbox");
    assert_eq!(
        api::RunPodSandboxRequest::decode(payload_of(&got).as_slice()).unwrap(),
        run
    );
    plugin.write_all(&frame("08")).await.unwrap();
    task.await.unwrap().unwrap();

    // CreateContainer with the recorded container; the Go plugin's recorded reply is applied.
    let create = api::CreateContainerRequest::decode(payload_of(&frame("09")).as_slice()).unwrap();
    let rt2 = rt.clone();
    let ctr = create.container.clone().unwrap();
    let task =
        tokio::spawn(async move { rt2.create_container(ctr, default_spec(&["/bin/sh"])).await });
    let got = read_frame(&mut plugin).await;
    assert_eq!(Header::parse(&got[8..]).unwrap().stream_id, 7);
    let sent = api::CreateContainerRequest::decode(payload_of(&got).as_slice()).unwrap();
    assert_eq!(
        sent.container, create.container,
        "container as containerd showed it"
    );
    assert_eq!(
        sent.pod.as_ref().map(|p| &p.id),
        create.pod.as_ref().map(|p| &p.id)
    );
    plugin.write_all(&frame("10")).await.unwrap();
    let c = task.await.unwrap().unwrap();
    let env = c.spec["process"]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "NRI_ADJUSTED=yes"), "{env:?}");
    let res = &c.spec["linux"]["resources"];
    assert_eq!(
        (
            res["cpu"]["cpus"].as_str(),
            res["cpu"]["shares"].as_u64(),
            res["pids"]["limit"].as_i64()
        ),
        (Some("1"), Some(512), Some(77))
    );
    assert_eq!(c.container.cdi_devices[0].name, "example.com/dev=dev0");
    assert!(c.container.env.iter().any(|e| e == "NRI_ADJUSTED=yes"));

    // StartContainer: stream 9, the container now in state CREATED.
    let rt2 = rt.clone();
    let id = c.container.id.clone();
    let task = tokio::spawn(async move { rt2.start_container(&id).await });
    let got = read_frame(&mut plugin).await;
    assert_eq!(Header::parse(&got[8..]).unwrap().stream_id, 9);
    let start = api::StartContainerRequest::decode(payload_of(&got).as_slice()).unwrap();
    let want = api::StartContainerRequest::decode(payload_of(&frame("11")).as_slice()).unwrap();
    let (s, w) = (start.container.unwrap(), want.container.unwrap());
    assert_eq!((s.id.as_str(), s.state), (w.id.as_str(), w.state));
    plugin.write_all(&frame("12")).await.unwrap();
    task.await.unwrap().unwrap();
}
