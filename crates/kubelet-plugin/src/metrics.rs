//! Prometheus text metrics and the `/metrics`, `/healthz`, `/readyz` endpoints, served by a
//! tiny hyper http1 server (hyper is already in the tree through tonic and kube).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0, 45.0,
];

type Getter = fn(&DriverMetrics) -> &AtomicU64;

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one driver.
#[derive(Debug, Default)]
pub struct DriverMetrics {
    pub prepared_claims: AtomicU64,
    pub prepare_errors: AtomicU64,
    pub unprepared_claims: AtomicU64,
    pub unprepare_errors: AtomicU64,
    pub prepare_latency: Histogram,
    pub unprepare_latency: Histogram,
    pub published_devices: AtomicU64,
    pub slice_publish_errors: AtomicU64,
}

/// All metrics of the process plus readiness.
#[derive(Debug, Default)]
pub struct Metrics {
    drivers: Mutex<BTreeMap<String, Arc<DriverMetrics>>>,
    ready: AtomicBool,
}

impl Metrics {
    pub fn driver(&self, name: &str) -> Arc<DriverMetrics> {
        let mut m = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.to_owned()).or_default().clone()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let drivers: Vec<(String, Arc<DriverMetrics>)> = self
            .drivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = String::new();
        let counters: [(&str, &str, Getter); 6] = [
            (
                "drakit_prepare_claims_total",
                "Claims prepared successfully.",
                |d| &d.prepared_claims,
            ),
            (
                "drakit_prepare_errors_total",
                "Claims whose prepare failed.",
                |d| &d.prepare_errors,
            ),
            (
                "drakit_unprepare_claims_total",
                "Claims unprepared successfully.",
                |d| &d.unprepared_claims,
            ),
            (
                "drakit_unprepare_errors_total",
                "Claims whose unprepare failed.",
                |d| &d.unprepare_errors,
            ),
            (
                "drakit_slice_publish_errors_total",
                "Failed ResourceSlice publish rounds.",
                |d| &d.slice_publish_errors,
            ),
            (
                "drakit_published_devices",
                "Devices in this node's ResourceSlices.",
                |d| &d.published_devices,
            ),
        ];
        for (name, help, get) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (driver, d) in &drivers {
                let _ = writeln!(
                    out,
                    "{name}{{driver=\"{driver}\"}} {}",
                    get(d).load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, pick) in [
            (
                "drakit_prepare_duration_seconds",
                "NodePrepareResources latency per call.",
                0,
            ),
            (
                "drakit_unprepare_duration_seconds",
                "NodeUnprepareResources latency per call.",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (driver, d) in &drivers {
                let h = if pick == 0 {
                    &d.prepare_latency
                } else {
                    &d.unprepare_latency
                };
                h.render(&mut out, name, &format!("driver=\"{driver}\""));
            }
        }
        out
    }
}

fn respond(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, body, ctype) = match path {
        "/metrics" => (
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4",
        ),
        "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/readyz" if metrics.is_ready() => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n".to_owned(),
            "text/plain",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = respond(&metrics, req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        let d = m.driver("a.dev");
        d.prepared_claims.fetch_add(3, Ordering::Relaxed);
        d.prepare_latency.observe(Duration::from_micros(700));
        let t = m.render();
        assert!(
            t.contains("drakit_prepare_claims_total{driver=\"a.dev\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("drakit_prepare_duration_seconds_bucket{driver=\"a.dev\",le=\"0.001\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("drakit_prepare_duration_seconds_bucket{driver=\"a.dev\",le=\"0.0005\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("drakit_prepare_duration_seconds_count{driver=\"a.dev\"} 1"),
            "{t}"
        );
        assert_eq!(
            respond(&m, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_ready(true);
        assert_eq!(respond(&m, "/readyz").status(), StatusCode::OK);
        assert_eq!(respond(&m, "/nope").status(), StatusCode::NOT_FOUND);
    }
}
