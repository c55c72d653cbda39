//! Real AdmissionReview JSON over HTTPS to the webhook (rustls on both sides, a test CA).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drakit_types::config::{ClaimRef, ConfigSource, decode_parameters};
use drakit_webhook::{CertReloader, Metrics, ServerConfig, Validator, serve};
use http_body_util::{BodyExt, Full};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpStream;

struct Ca {
    pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    Ca {
        pem: issuer.pem(),
        issuer,
    }
}

/// Writes a server cert for localhost signed by `ca` into `dir`.
fn write_server_cert(ca: &Ca, dir: &Path) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    // Write to temp names and rename, as a Secret volume update does (atomic swap).
    std::fs::write(dir.join("tls.crt.tmp"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key.tmp"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).unwrap();
    std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).unwrap();
}

struct Server {
    addr: std::net::SocketAddr,
    certs: Arc<CertReloader>,
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(ca: &Ca, validator: Validator) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    write_server_cert(ca, dir.path());
    let certs = CertReloader::new(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
    let tls = certs.server_config().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(serve(
        listener,
        tls,
        ServerConfig {
            validator: Arc::new(validator),
            metrics: Arc::new(Metrics::default()),
            request_timeout: Duration::from_secs(2),
        },
        async {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        certs,
        dir: dir.path().to_path_buf(),
        _dir: dir,
        stop: Some(tx),
    }
}

/// One HTTPS request trusting only `ca_pem`; returns (status, body).
async fn request(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}

fn review(kind: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f6e5c4d-0000-4000-8000-000000000001",
            "kind": {"group": "resource.k8s.io", "version": "v1", "kind": kind},
            "operation": "CREATE",
            "namespace": "team-a",
            "object": object
        }
    }))
    .unwrap()
}

fn claim(driver: &str, parameters: Value) -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "c1", "namespace": "team-a"},
        "spec": {"devices": {
            "requests": [{"name": "r", "exactly": {"deviceClassName": driver}}],
            "config": [{"requests": ["r"], "opaque": {"driver": driver, "parameters": parameters}}]
        }}
    })
}

async fn decide(s: &Server, ca: &Ca, kind: &str, object: Value) -> (bool, String) {
    let (status, body) = request(s.addr, &ca.pem, "POST", "/validate", review(kind, object))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "0f6e5c4d-0000-4000-8000-000000000001");
    (
        v["response"]["allowed"].as_bool().unwrap(),
        v["response"]["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

fn nd(fields: Value) -> Value {
    let mut n = json!({"kind": "macvlan", "interfaceName": "net1", "parent": "eth0"});
    for (k, v) in fields.as_object().unwrap() {
        n[k] = v.clone();
    }
    json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "NetdevConfig", "netdev": n})
}

fn rt(spec: Value) -> Value {
    json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig", "spec": spec})
}

#[tokio::test]
async fn valid_claims_allowed_malformed_denied_with_the_node_message() {
    let ca = ca("drakit test CA");
    let s = start(&ca, Validator::default()).await;

    for (driver, p) in [
        (
            "net.drakit.dev",
            nd(json!({"addresses": ["192.0.2.10/24"], "mtu": 1500})),
        ),
        (
            "runtime.drakit.dev",
            rt(
                json!({"linux": {"resources": {"unified": {"io.max": "8:0 rbps=1048576", "memory.high": "1073741824", "pids.max": "100"}}}}),
            ),
        ),
        (
            "cpu.drakit.dev",
            json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "CpuConfig", "count": 2}),
        ),
    ] {
        let (ok, m) = decide(&s, &ca, "ResourceClaim", claim(driver, p)).await;
        assert!(ok, "{driver}: {m}");
    }

    // Malformed configs: the denial carries exactly the node's decode message.
    let malformed = [
        json!({"kind": "CpuConfig"}),
        json!({"apiVersion": "dra.runtime-spec.io/v1alpha1", "kind": "RuntimeSpecEditConfig", "spec": {}}),
        json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "GpuConfig"}),
        json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "CpuConfig", "cpus": 4}),
        json!([1, 2]),
        nd(json!({"ipAddress": "10.0.0.1/24"})),
        nd(json!({"routes": [{"dst": "10.0.0.0/8", "via": "10.0.0.1"}]})),
        nd(json!({"mtu": "1500"})),
        nd(json!({"kind": "bond"})),
        nd(json!({"interfaceName": "abcdefghijklmnop"})),
        nd(json!({"interfaceName": "a/b"})),
        nd(json!({"interfaceName": "eth0:1"})),
        nd(json!({"mac": "01:00:5e:00:00:01"})),
        nd(json!({"addresses": ["10.0.0.1/33"]})),
        nd(json!({"mtu": 10})),
        nd(json!({"vlan": 5000})),
        rt(json!({"process": {"cwd": "/"}})),
        rt(json!({"linux": {"resources": {"memoryy": {"limit": 1}}}})),
        rt(json!({"linux": {"resources": {"unified": {"../../x": "1"}}}})),
        rt(json!({"linux": {"resources": {"unified": {"nocontroller": "1"}}}})),
        rt(json!({"mounts": [{"destination": "/a"}, {"destination": "/b", "sourc": "/x"}]})),
    ];
    let mut checked = 0;
    for p in malformed {
        let raw = serde_json::to_vec(&p).unwrap();
        let node = decode_parameters(
            &ClaimRef::new("team-a", "c1", ""),
            0,
            ConfigSource::FromClaim,
            &raw,
        );
        let Err(node_err) = node else {
            // Not malformed for the node either: then the webhook may not deny it on decode.
            continue;
        };
        let driver = if p["kind"] == "RuntimeSpecEditConfig"
            || p["apiVersion"] == "dra.runtime-spec.io/v1alpha1"
        {
            "runtime.drakit.dev"
        } else {
            "net.drakit.dev"
        };
        let (ok, m) = decide(&s, &ca, "ResourceClaim", claim(driver, p.clone())).await;
        assert!(!ok, "allowed: {p}");
        assert!(
            m.contains(&node_err.to_string()),
            "webhook: {m}\nnode: {node_err}"
        );
        assert!(
            m.starts_with("spec.devices.config[0].opaque.parameters"),
            "{m}"
        );
        checked += 1;
    }
    assert!(
        checked >= 18,
        "only {checked} malformed configs were malformed for the node"
    );
}

#[tokio::test]
async fn policy_other_drivers_templates_classes_and_probes() {
    let ca = ca("drakit test CA");
    let s = start(&ca, Validator::default()).await;
    // A fragment the node policy refuses.
    let (ok, m) = decide(
        &s,
        &ca,
        "ResourceClaim",
        claim(
            "runtime.drakit.dev",
            rt(json!({"hooks": {"prestart": [{"path": "/bin/sh"}]}})),
        ),
    )
    .await;
    assert!(!ok);
    assert!(m.contains("policy") && m.contains("spec.hooks"), "{m}");
    // Another driver's claim, however odd its parameters: allowed untouched.
    let (ok, _) = decide(
        &s,
        &ca,
        "ResourceClaim",
        claim("gpu.example.com", json!({"whatever": [1, {"x": null}]})),
    )
    .await;
    assert!(ok);
    // A template and a DeviceClass.
    let mut tmpl = json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": "t1", "namespace": "team-a"},
        "spec": {"spec": claim("net.drakit.dev", nd(json!({"interfaceName": "bad name"})))["spec"].clone()}
    });
    let (ok, m) = decide(&s, &ca, "ResourceClaimTemplate", tmpl.clone()).await;
    assert!(!ok && m.starts_with("spec.spec.devices.config[0]"), "{m}");
    tmpl["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"] = nd(json!({}));
    assert!(decide(&s, &ca, "ResourceClaimTemplate", tmpl).await.0);
    let class = json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
        "metadata": {"name": "fast-net"},
        "spec": {"config": [{"opaque": {"driver": "net.drakit.dev", "parameters": nd(json!({"mtu": 1}))}}]}
    });
    let (ok, m) = decide(&s, &ca, "DeviceClass", class).await;
    assert!(!ok && m.contains("mtu"), "{m}");

    for p in ["/healthz", "/readyz"] {
        assert_eq!(
            request(s.addr, &ca.pem, "GET", p, vec![]).await.unwrap().0,
            200
        );
    }
    let (st, body) = request(s.addr, &ca.pem, "GET", "/metrics", vec![])
        .await
        .unwrap();
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("drakit_webhook_reviews_total{result=\"denied\"} 3"),
        "{text}"
    );
    // Garbage and oversize bodies: clear errors, the server keeps serving.
    let (st, _) = request(s.addr, &ca.pem, "POST", "/validate", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(st, 400);
    let (st, _) = request(s.addr, &ca.pem, "POST", "/validate", vec![b' '; 4 << 20])
        .await
        .unwrap();
    assert_eq!(st, 413);
    assert_eq!(
        request(s.addr, &ca.pem, "GET", "/healthz", vec![])
            .await
            .unwrap()
            .0,
        200
    );
}

#[tokio::test]
async fn certificate_rotation_is_picked_up_without_restart() {
    let old_ca = ca("old CA");
    let s = start(&old_ca, Validator::default()).await;
    assert_eq!(
        request(s.addr, &old_ca.pem, "GET", "/healthz", vec![])
            .await
            .unwrap()
            .0,
        200
    );
    let new_ca = ca("new CA");
    // The old certificate is served until the files change.
    assert!(
        request(s.addr, &new_ca.pem, "GET", "/healthz", vec![])
            .await
            .is_err()
    );
    // mtime granularity: make sure the new files get a different timestamp.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_server_cert(&new_ca, &s.dir);
    assert!(s.certs.reload_if_changed().unwrap());
    assert!(
        !s.certs.reload_if_changed().unwrap(),
        "no change, no reload"
    );
    assert_eq!(
        request(s.addr, &new_ca.pem, "GET", "/healthz", vec![])
            .await
            .unwrap()
            .0,
        200
    );
    assert!(
        request(s.addr, &old_ca.pem, "GET", "/healthz", vec![])
            .await
            .is_err()
    );
    // A broken pair is refused and the current one kept.
    std::fs::write(s.dir.join("tls.key"), "not a key").unwrap();
    assert!(s.certs.reload_if_changed().is_err());
    assert_eq!(
        request(s.addr, &new_ca.pem, "GET", "/healthz", vec![])
            .await
            .unwrap()
            .0,
        200
    );
}

/// Every claim, template and class in `manifests/examples/` is allowed (what a user applies).
#[tokio::test]
async fn every_example_manifest_is_allowed() {
    let ca = ca("drakit test CA");
    let s = start(&ca, Validator::default()).await;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples");
    let mut files = Vec::new();
    let mut stack = vec![examples.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut n = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            if !["ResourceClaim", "ResourceClaimTemplate", "DeviceClass"].contains(&kind.as_str()) {
                continue;
            }
            let (ok, m) = decide(&s, &ca, &kind, v).await;
            assert!(ok, "{}: {kind} denied: {m}", f.display());
            n += 1;
        }
    }
    if files.is_empty() {
        eprintln!("skipped: no example manifests under {}", examples.display());
    } else {
        assert!(n > 0, "no claim objects in {} files", files.len());
        eprintln!("{n} example objects from {} files allowed", files.len());
    }
}
