//! HTTPS server: `POST /validate` (AdmissionReview v1), `GET /healthz`, `GET /readyz`,
//! `GET /metrics` (Prometheus text). HTTP/1.1 with keep-alive, a body limit, and a per-request
//! deadline well under the API server's webhook timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::validate::Validator;

/// Largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub errors: AtomicU64,
    pub latency_us_sum: AtomicU64,
    pub tls_reloads: AtomicU64,
}

impl Metrics {
    fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let total = g(&self.allowed) + g(&self.denied);
        format!(
            "# TYPE drakit_webhook_reviews_total counter\n\
             drakit_webhook_reviews_total{{result=\"allowed\"}} {}\n\
             drakit_webhook_reviews_total{{result=\"denied\"}} {}\n\
             # TYPE drakit_webhook_errors_total counter\ndrakit_webhook_errors_total {}\n\
             # TYPE drakit_webhook_review_seconds summary\n\
             drakit_webhook_review_seconds_sum {}\ndrakit_webhook_review_seconds_count {}\n\
             # TYPE drakit_webhook_tls_reloads_total counter\ndrakit_webhook_tls_reloads_total {}\n",
            g(&self.allowed),
            g(&self.denied),
            g(&self.errors),
            g(&self.latency_us_sum) as f64 / 1e6,
            total,
            g(&self.tls_reloads),
        )
    }
}

/// What the server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub validator: Arc<Validator>,
    pub metrics: Arc<Metrics>,
    /// Deadline of one request (reading the body through writing the answer).
    pub request_timeout: Duration,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    cfg: ServerConfig,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") | (&Method::GET, "/readyz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => text(StatusCode::OK, cfg.metrics.render()),
        (&Method::POST, "/validate") => {
            let start = Instant::now();
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    cfg.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    return Ok(text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("reading the AdmissionReview: {e}\n"),
                    ));
                }
            };
            match cfg.validator.review(&body) {
                Ok(out) => {
                    let allowed = out["response"]["allowed"] == true;
                    let m = &cfg.metrics;
                    if allowed { &m.allowed } else { &m.denied }.fetch_add(1, Ordering::Relaxed);
                    m.latency_us_sum.fetch_add(
                        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    if !allowed {
                        tracing::info!(
                            uid = %out["response"]["uid"],
                            "denied: {}",
                            out["response"]["status"]["message"]
                        );
                    }
                    let mut r = text(StatusCode::OK, out.to_string());
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => {
                    cfg.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// Serves HTTPS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
                Err(_) => return,
            };
            let timeout = cfg.request_timeout;
            let svc = hyper::service::service_fn(move |req| {
                let cfg = cfg.clone();
                async move {
                    match tokio::time::timeout(timeout, handle(cfg, req)).await {
                        Ok(r) => r,
                        Err(_) => Ok(text(StatusCode::SERVICE_UNAVAILABLE, "timed out\n")),
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}
