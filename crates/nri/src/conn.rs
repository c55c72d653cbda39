//! One NRI session over a unix stream: the mux, a ttrpc server on one virtual connection and a
//! ttrpc client on the other. Used by the plugin stub and by the runtime simulator alike.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use drakit_proto::ttrpc::{KeyValue, Request, Response};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::mux::{self, FrameDecoder};
use crate::ttrpc::{self, Code, Incoming, MessageType, Status};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Which end of the NRI session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Serves conn 1 (Plugin service), calls on conn 2 (Runtime service).
    Plugin,
    /// Serves conn 2 (Runtime service), calls on conn 1 (Plugin service).
    Runtime,
}

impl Side {
    fn server_conn(self) -> u32 {
        match self {
            Side::Plugin => mux::PLUGIN_SERVICE_CONN,
            Side::Runtime => mux::RUNTIME_SERVICE_CONN,
        }
    }
    fn client_conn(self) -> u32 {
        match self {
            Side::Plugin => mux::RUNTIME_SERVICE_CONN,
            Side::Runtime => mux::PLUGIN_SERVICE_CONN,
        }
    }
}

/// A request received by the ttrpc server half.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    /// Fully-qualified service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Encoded request message.
    pub payload: Bytes,
    /// Remaining deadline announced by the caller (`timeout_nano`), if any.
    pub timeout: Option<Duration>,
    /// Request metadata (e.g. `containerd-namespace-ttrpc`).
    pub metadata: Vec<KeyValue>,
}

/// Serves the requests arriving on a connection's server half.
pub trait Handler: Send + Sync + 'static {
    /// Answer one call: the encoded reply message, or a status. Unknown services and methods
    /// must answer [`Code::Unimplemented`] (`"service X"` / `"method X"`).
    fn handle(&self, call: IncomingCall) -> BoxFuture<std::result::Result<Vec<u8>, Status>>;
}

/// Counters of what a connection dropped or refused; for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Frames for a conn id other than 1 and 2 (dropped, as Go does).
    pub unknown_conn_frames: u64,
    /// Requests answered with an error before reaching the handler (bad stream id, oversize,
    /// undecodable envelope).
    pub rejected_requests: u64,
    /// Messages of the wrong type for their conn, or responses nobody waits for.
    pub stray_messages: u64,
    /// Handler calls that ran past the caller's `timeout_nano`.
    pub server_timeouts: u64,
}

#[derive(Default)]
struct Counters {
    unknown_conn_frames: AtomicU64,
    rejected_requests: AtomicU64,
    stray_messages: AtomicU64,
    server_timeouts: AtomicU64,
}

#[derive(Default)]
struct Pending {
    calls: HashMap<u32, oneshot::Sender<Result<Response>>>,
    closed: Option<Error>,
}

struct Shared {
    side: Side,
    /// The trunk's write half; `None` once closed. Each message is written whole under the lock.
    writer: Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>,
    pending: Mutex<Pending>,
    next_stream: AtomicU32,
    closed_tx: watch::Sender<Option<Error>>,
    counters: Counters,
}

impl Shared {
    fn close(&self, reason: Error) {
        let waiters = {
            let Ok(mut p) = self.pending.lock() else {
                return;
            };
            if p.closed.is_some() {
                return;
            }
            p.closed = Some(reason.clone());
            std::mem::take(&mut p.calls)
        };
        for (_, tx) in waiters {
            let _ = tx.send(Err(reason.clone()));
        }
        self.closed_tx.send_replace(Some(reason));
        // Dropping the write half shuts down our sending direction: the peer sees EOF.
        match self.writer.try_lock() {
            Ok(mut w) => drop(w.take()),
            Err(_) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let writer = self.writer.clone();
                    rt.spawn(async move { drop(writer.lock().await.take()) });
                }
            }
        }
    }

    /// Queue one ttrpc message (as mux frames) on the trunk. Never blocks and cannot be
    /// cancelled half-way: when the socket takes the whole message at once (the common case) it
    /// is written right here; otherwise a task finishes the write while holding the writer lock,
    /// so messages are never interleaved.
    fn send(self: &Arc<Self>, conn_id: u32, frame: &[u8]) {
        let mut buf = BytesMut::with_capacity(frame.len() + 2 * mux::HEADER_LEN);
        mux::encode_message(conn_id, frame, &mut buf);
        let guard = match self.writer.clone().try_lock_owned() {
            Ok(mut guard) => {
                let Some(w) = guard.as_mut() else {
                    return;
                };
                match w.try_write(&buf) {
                    Ok(n) if n == buf.len() => return,
                    Ok(n) => {
                        let _ = buf.split_to(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        drop(guard);
                        self.close(Error::io("writing to the NRI socket", e));
                        return;
                    }
                }
                Some(guard)
            }
            Err(_) => None,
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mut guard = match guard {
                Some(g) => g,
                None => me.writer.clone().lock_owned().await,
            };
            let Some(w) = guard.as_mut() else {
                return;
            };
            if let Err(e) = w.write_all(&buf).await {
                drop(guard);
                me.close(Error::io("writing to the NRI socket", e));
            }
        });
    }

    fn response_frame(stream_id: u32, resp: &Response) -> Vec<u8> {
        let mut frame = ttrpc::encode_frame(stream_id, MessageType::Response, resp);
        if frame.len() - ttrpc::HEADER_LEN > ttrpc::MAX_DATA_LEN {
            let st = Status::new(
                Code::ResourceExhausted,
                format!(
                    "reply of {} bytes exceeds maximum message size of {}",
                    frame.len() - ttrpc::HEADER_LEN,
                    ttrpc::MAX_DATA_LEN
                ),
            );
            frame = ttrpc::encode_frame(
                stream_id,
                MessageType::Response,
                &ttrpc::error_response(&st),
            );
        }
        frame
    }
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.close(Error::Closed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A running NRI session. Cheap to clone; the session ends when [`Connection::close`] is called,
/// the peer closes, a fatal framing error occurs, or the last clone is dropped.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.inner.shared.side)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Start serving `stream` as `side`, dispatching incoming calls to `handler`.
    /// Must be called inside a tokio runtime.
    pub fn spawn(stream: UnixStream, side: Side, handler: Arc<dyn Handler>) -> Connection {
        let (rd, wr) = stream.into_split();
        let (closed_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            side,
            writer: Arc::new(tokio::sync::Mutex::new(Some(wr))),
            pending: Mutex::new(Pending::default()),
            next_stream: AtomicU32::new(1),
            closed_tx,
            counters: Counters::default(),
        });
        let reader = tokio::spawn(read_loop(rd, shared.clone(), handler));
        Connection {
            inner: Arc::new(Inner {
                shared,
                tasks: vec![reader.abort_handle()],
            }),
        }
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.inner.shared.side
    }

    /// Call `service/method` on the peer with an encoded request; returns the encoded reply.
    pub async fn call_raw(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>> {
        let shared = &self.inner.shared;
        let call = || format!("{service}/{method}");
        let req = ttrpc::request(service, method, payload, timeout);
        let stream_id = shared.next_stream.fetch_add(2, Ordering::Relaxed);
        let frame = ttrpc::encode_frame(stream_id, MessageType::Request, &req);
        let len = frame.len() - ttrpc::HEADER_LEN;
        if len > ttrpc::MAX_DATA_LEN {
            return Err(Error::MessageTooLarge {
                what: call(),
                len,
                limit: ttrpc::MAX_DATA_LEN,
            });
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut p = shared
                .pending
                .lock()
                .map_err(|_| Error::Protocol("connection state poisoned".into()))?;
            if let Some(e) = &p.closed {
                return Err(e.clone());
            }
            p.calls.insert(stream_id, tx);
        }
        shared.send(shared.side.client_conn(), &frame);
        let resp = match timeout {
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r,
                Err(_) => {
                    if let Ok(mut p) = shared.pending.lock() {
                        p.calls.remove(&stream_id);
                    }
                    return Err(Error::DeadlineExceeded {
                        call: call(),
                        timeout: t,
                    });
                }
            },
            None => rx.await,
        };
        let resp = resp.map_err(|_| Error::Closed)??;
        if let Some(status) = resp.status.as_ref().and_then(Status::from_proto) {
            return Err(Error::Status {
                call: call(),
                status,
            });
        }
        Ok(resp.payload)
    }

    /// Typed call: encode `req`, decode the reply as `R`.
    pub async fn call<Q: Message, R: Message + Default>(
        &self,
        service: &str,
        method: &str,
        req: &Q,
        timeout: Option<Duration>,
    ) -> Result<R> {
        let payload = self
            .call_raw(service, method, req.encode_to_vec(), timeout)
            .await?;
        R::decode(payload.as_slice()).map_err(|source| Error::Decode {
            what: format!("reply of {service}/{method}"),
            source,
        })
    }

    /// Close the session (the socket is shut down once both IO tasks have stopped).
    pub fn close(&self) {
        self.inner.shared.close(Error::Closed);
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed_tx.borrow().is_some()
    }

    /// Wait until the session ends; returns why.
    pub async fn closed(&self) -> Error {
        let mut rx = self.inner.shared.closed_tx.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return Error::Closed;
            }
        }
    }

    /// What the connection dropped or refused so far.
    pub fn stats(&self) -> ConnStats {
        let c = &self.inner.shared.counters;
        ConnStats {
            unknown_conn_frames: c.unknown_conn_frames.load(Ordering::Relaxed),
            rejected_requests: c.rejected_requests.load(Ordering::Relaxed),
            stray_messages: c.stray_messages.load(Ordering::Relaxed),
            server_timeouts: c.server_timeouts.load(Ordering::Relaxed),
        }
    }
}

async fn read_loop(mut rd: OwnedReadHalf, shared: Arc<Shared>, handler: Arc<dyn Handler>) {
    let reason = read_frames(&mut rd, &shared, &handler).await;
    if let Err(e) = &reason {
        tracing::debug!(error = %e, "NRI connection ended");
    }
    shared.close(reason.err().unwrap_or(Error::Closed));
}

async fn read_frames(
    rd: &mut OwnedReadHalf,
    shared: &Arc<Shared>,
    handler: &Arc<dyn Handler>,
) -> Result<()> {
    let mut closed = shared.closed_tx.subscribe();
    let mut dec = FrameDecoder::default();
    let mut streams = [
        ttrpc::StreamDecoder::default(),
        ttrpc::StreamDecoder::default(),
    ];
    let mut last_request_id = 0u32;
    loop {
        let n = tokio::select! {
            r = rd.read_buf(dec.buffer()) => r.map_err(|e| Error::io("reading from the NRI socket", e))?,
            _ = closed.wait_for(Option::is_some) => return Ok(()),
        };
        if n == 0 {
            dec.finish()?;
            return Err(Error::Closed);
        }
        while let Some(frame) = dec.decode()? {
            let idx = match frame.conn_id {
                mux::PLUGIN_SERVICE_CONN => 0,
                mux::RUNTIME_SERVICE_CONN => 1,
                other => {
                    shared
                        .counters
                        .unknown_conn_frames
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        conn_id = other,
                        len = frame.payload.len(),
                        "dropping NRI mux frame for unknown virtual connection"
                    );
                    continue;
                }
            };
            streams[idx].push(&frame.payload);
            while let Some(msg) = streams[idx].next_message() {
                if frame.conn_id == shared.side.server_conn() {
                    on_request(shared, handler, msg, &mut last_request_id);
                } else {
                    on_response(shared, msg);
                }
            }
        }
    }
}

fn reject(shared: &Arc<Shared>, stream_id: u32, status: Status) {
    shared
        .counters
        .rejected_requests
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(stream_id, %status, "rejecting ttrpc request");
    let frame = Shared::response_frame(stream_id, &ttrpc::error_response(&status));
    shared.send(shared.side.server_conn(), &frame);
}

fn on_request(shared: &Arc<Shared>, handler: &Arc<dyn Handler>, msg: Incoming, last_id: &mut u32) {
    let (header, data) = match msg {
        Incoming::Oversized { header } => {
            if header.ty == MessageType::Request {
                reject(
                    shared,
                    header.stream_id,
                    Status::new(
                        Code::ResourceExhausted,
                        format!(
                            "message length {} exceed maximum message size of {}",
                            header.data_len,
                            ttrpc::MAX_DATA_LEN
                        ),
                    ),
                );
            }
            return;
        }
        Incoming::Message { header, data } => (header, data),
    };
    if header.ty != MessageType::Request {
        shared
            .counters
            .stray_messages
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(stream_id = header.stream_id, ty = ?header.ty, "unexpected ttrpc message type on server connection, dropped");
        return;
    }
    let id = header.stream_id;
    if id % 2 == 0 {
        reject(
            shared,
            id,
            Status::invalid_argument(format!(
                "StreamID must be odd for client initiated streams, got {id}"
            )),
        );
        return;
    }
    if id <= *last_id {
        reject(
            shared,
            id,
            Status::invalid_argument(format!(
                "StreamID cannot be re-used and must increment: {id} after {last_id}"
            )),
        );
        return;
    }
    *last_id = id;
    let req = match Request::decode(data) {
        Ok(r) => r,
        Err(e) => {
            reject(
                shared,
                id,
                Status::invalid_argument(format!("unmarshal ttrpc request: {e}")),
            );
            return;
        }
    };
    let timeout = u64::try_from(req.timeout_nano)
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_nanos);
    let call = IncomingCall {
        service: req.service,
        method: req.method,
        payload: Bytes::from(req.payload),
        timeout,
        metadata: req.metadata,
    };
    let what = format!("{}/{}", call.service, call.method);
    let fut = handler.handle(call);
    let shared = shared.clone();
    tokio::spawn(async move {
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => {
                    shared
                        .counters
                        .server_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(call = %what, timeout = ?t, "handler missed the caller's deadline");
                    Err(Status::new(
                        Code::DeadlineExceeded,
                        format!("{what}: deadline of {t:?} exceeded"),
                    ))
                }
            },
            None => fut.await,
        };
        let resp = match result {
            Ok(payload) => ttrpc::ok_response(payload),
            Err(st) => ttrpc::error_response(&st),
        };
        let frame = Shared::response_frame(id, &resp);
        shared.send(shared.side.server_conn(), &frame);
    });
}

fn on_response(shared: &Shared, msg: Incoming) {
    let (stream_id, result) = match msg {
        Incoming::Oversized { header } => (
            header.stream_id,
            Err(Error::MessageTooLarge {
                what: format!("reply on stream {}", header.stream_id),
                len: header.data_len as usize,
                limit: ttrpc::MAX_DATA_LEN,
            }),
        ),
        Incoming::Message { header, data } => {
            if header.ty != MessageType::Response {
                shared
                    .counters
                    .stray_messages
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stream_id = header.stream_id, ty = ?header.ty, "unexpected ttrpc message type on client connection, dropped");
                return;
            }
            (
                header.stream_id,
                Response::decode(data).map_err(|source| Error::Decode {
                    what: format!("ttrpc response on stream {}", header.stream_id),
                    source,
                }),
            )
        }
    };
    let waiter = shared
        .pending
        .lock()
        .ok()
        .and_then(|mut p| p.calls.remove(&stream_id));
    match waiter {
        Some(tx) => {
            let _ = tx.send(result);
        }
        None => {
            shared
                .counters
                .stray_messages
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(stream_id, "response for unknown or expired stream, dropped");
        }
    }
}

/// A handler answering `Unimplemented` to everything (for a side that serves nothing).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoService;

impl Handler for NoService {
    fn handle(&self, call: IncomingCall) -> BoxFuture<std::result::Result<Vec<u8>, Status>> {
        Box::pin(async move { Err(Status::unimplemented(format!("service {}", call.service))) })
    }
}
