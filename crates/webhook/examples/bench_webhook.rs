//! Benchmark of drakit-webhook: admission latency over HTTPS keep-alive for a claim with three
//! drakit configs (netdev, CPU, runtime-spec), and the idle RSS of the release binary.
//!
//! ```text
//! cargo build --release -p drakit-webhook --bins
//! cargo run --release -p drakit-webhook --example bench_webhook [reviews=5000]
//! ```
//! Targets: p99 <= 5 ms, idle RSS <= 15 MiB. Prints `BENCH <name> <value> <unit>` lines too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use drakit_webhook::{CertReloader, Metrics, ServerConfig, Validator, serve};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn certs(dir: &std::path::Path) -> Res<String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &ca)?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca.pem())
}

fn review() -> Vec<u8> {
    let cfg = |req: &str, driver: &str, p: serde_json::Value| json!({"requests": [req], "opaque": {"driver": driver, "parameters": p}});
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "b0000000-0000-4000-8000-000000000001",
            "kind": {"group": "resource.k8s.io", "version": "v1", "kind": "ResourceClaim"},
            "operation": "CREATE", "namespace": "bench",
            "object": {
                "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": "three-configs", "namespace": "bench"},
                "spec": {"devices": {
                    "requests": [
                        {"name": "nic", "exactly": {"deviceClassName": "net.drakit.dev"}},
                        {"name": "cpus", "exactly": {"deviceClassName": "cpu.drakit.dev", "count": 4}},
                        {"name": "io", "exactly": {"deviceClassName": "runtime.drakit.dev"}}
                    ],
                    "config": [
                        cfg("nic", "net.drakit.dev", json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig",
                            "netdev": {"kind": "macvlan", "interfaceName": "data0", "parent": "eth1", "mtu": 9000,
                                       "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                                       "routes": [{"dst": "198.51.100.0/24", "gateway": "192.0.2.1"}]}})),
                        cfg("cpus", "cpu.drakit.dev", json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "CpuConfig", "count": 4})),
                        cfg("io", "runtime.drakit.dev", json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig",
                            "spec": {"linux": {"resources": {"unified": {"io.max": "8:0 rbps=1048576", "memory.high": "1073741824", "pids.max": "100"}}}}}))
                    ]
                }}
            }
        }
    }))
    .unwrap_or_default()
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

fn main() -> Res<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let ca_pem = certs(dir.path())?;
    // The server on its own thread and runtime (as the binary: one thread).
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let d = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(c) = CertReloader::new(d.join("tls.crt"), d.join("tls.key")) else {
                return;
            };
            let Ok(tls) = c.server_config() else { return };
            let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                return;
            };
            let _ = addr_tx.send(l.local_addr().ok());
            serve(
                l,
                tls,
                ServerConfig {
                    validator: Arc::new(Validator::default()),
                    metrics: Arc::new(Metrics::default()),
                    request_timeout: Duration::from_secs(2),
                },
                std::future::pending::<()>(),
            )
            .await;
        });
    });
    let addr = addr_rx.recv()?.ok_or("no address")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lat = rt.block_on(async move {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let body = Bytes::from(review());
        let mut lat = Vec::with_capacity(n);
        for i in 0..n + 200 {
            let req = hyper::Request::builder()
                .method("POST")
                .uri("/validate")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))?;
            let t = Instant::now();
            let resp = send.send_request(req).await?;
            let out = resp.into_body().collect().await?.to_bytes();
            let el = t.elapsed();
            if !out.windows(14).any(|w| w == b"\"allowed\":true") {
                return Err(format!("not allowed: {}", String::from_utf8_lossy(&out)).into());
            }
            if i >= 200 {
                lat.push(el);
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(lat)
    })?;
    let mut lat = lat;
    lat.sort();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    println!(
        "admission review, claim with 3 drakit configs, HTTPS keep-alive, {n} reviews: p50 {p50:?}  p99 {p99:?}  max {:?}",
        lat[lat.len() - 1]
    );
    println!("BENCH webhook_review_p50 {} us", p50.as_micros());
    println!("BENCH webhook_review_p99 {} us", p99.as_micros());
    idle_rss(dir.path())
}

fn idle_rss(dir: &std::path::Path) -> Res<()> {
    let exe = std::env::current_exe()?;
    let Some(bin) = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("drakit-webhook"))
    else {
        return Ok(());
    };
    if !bin.exists() {
        println!(
            "idle RSS: skipped: {} not built (cargo build --release -p drakit-webhook --bins)",
            bin.display()
        );
        return Ok(());
    }
    let mut child = std::process::Command::new(&bin)
        .args(["--listen", "127.0.0.1:0"])
        .arg("--cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--key-file")
        .arg(dir.join("tls.key"))
        .env("DRAKIT_LOG", "warn")
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let _ = child.kill();
    let _ = child.wait();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    println!(
        "idle RSS of drakit-webhook: {:.1} MiB; binary {:.1} MB",
        kb as f64 / 1024.0,
        std::fs::metadata(&bin)?.len() as f64 / 1e6
    );
    println!("BENCH webhook_idle_rss {kb} KiB");
    Ok(())
}
