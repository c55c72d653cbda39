//! Benchmark (not a test): NodePrepareResources / NodeUnprepareResources latency through the
//! real DRA socket for runtime-spec claims, with the API server stand-in on loopback; plus the
//! pieces a prepare is made of, prepare latency with 1/10/100/1,000 claims live on the node,
//! idle RSS, RSS with every claim prepared, binary size and launch-to-registered time of the
//! release binary. Headline figures are also printed as `BENCH <name> <value> <unit>` lines for
//! `cargo xtask bench`.
//!
//! `cargo build --profile release-small -p drakit-kubelet-plugin && cargo run --profile release-small -p drakit-kubelet-plugin --example bench`
//! Options (env): BENCH_CLAIMS (default 1000), BENCH_LAUNCHES (launches of the binary, default
//! 5), BENCH_ONLY=launch (only the binary: launch time and RSS).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drakit_e2e::apiserver::{ApiServerSim, ClaimBuilder, node};
use drakit_kubelet_plugin::config::{BackendKind, Config, DriverSpec};
use drakit_kubelet_plugin::plugin::{BLOCKING_THREAD_NAME, Plugin, kube_client, runtime};
use drakit_kubelet_plugin::state::{
    ClaimRecord, DeviceRecord, StateOptions, claim_device, claim_spec, open_checkpoint, spec_dir,
};
use drakit_proto::dra::v1;
use drakit_proto::pluginregistration::InfoRequest;
use drakit_proto::pluginregistration::registration_client::RegistrationClient;

const DRIVER: &str = "runtime.drakit.dev";

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Prints one table row and returns (p50, p99).
fn report(label: &str, v: &mut [Duration]) -> (Duration, Duration) {
    let (a, b, c) = (pct(v, 0.5), pct(v, 0.9), pct(v, 0.99));
    println!(
        "| {label} | {} | {} | {} | {} |",
        v.len(),
        ms(a),
        ms(b),
        ms(c)
    );
    (a, c)
}

fn bench_line(name: &str, d: Duration) {
    println!("BENCH {name} {} us", d.as_micros());
}

struct Setup {
    _tmp: tempfile::TempDir,
    api: ApiServerSim,
    config: Config,
}

async fn setup(state_parent: &Path, cdi_parent: &Path, claims: usize, prefix: &str) -> Setup {
    let tmp = tempfile::tempdir_in(state_parent).expect("tempdir");
    let root = tmp.path();
    let api = ApiServerSim::start().await.expect("api");
    api.insert_node(&node("node-1")).expect("node");
    let kc = root.join("kubeconfig");
    api.write_kubeconfig(&kc).expect("kubeconfig");
    let spec = serde_json::json!({"apiVersion":"drakit.dev/v1alpha1","kind":"RuntimeSpecEditConfig",
        "spec":{"linux":{"resources":{"unified":{"io.max":"259:0 rbps=2097152 wiops=120"}}}}});
    for i in 0..claims {
        api.insert_claim(
            &ClaimBuilder::new("bench", &format!("{prefix}{i}"))
                .uid(&format!("{prefix}-uid-{i:05}"))
                .device(DRIVER, "node-1", "spec-edit-0", "edit")
                .config_from_claim(DRIVER, &["edit"], spec.clone())
                .reserved_for_pod("p", "pod-uid")
                .build(),
        )
        .expect("claim");
    }
    let mut config = Config::under_root(root, "node-1");
    config.kubeconfig = Some(kc);
    config.cdi_dir = tempfile::tempdir_in(cdi_parent).expect("cdi").keep();
    std::fs::create_dir_all(&config.cgroupfs_root).expect("cgroupfs");
    std::fs::write(config.cgroupfs_root.join("cgroup.controllers"), "io\n").expect("controllers");
    config.drivers = vec![DriverSpec {
        name: DRIVER.into(),
        backend: BackendKind::Runtime,
    }];
    Setup {
        _tmp: tmp,
        api,
        config,
    }
}

/// The plugin on a thread and runtime of its own, built as the binary builds its runtime
/// (`plugin::runtime()`): its calls cross threads as they cross processes in production (the
/// kubelet stand-in and the API server stand-in stay on the bench's runtime), and its CPU time
/// can be read apart from theirs.
struct PluginThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    tid: i32,
}

/// On-CPU time of one thread of this process (`/proc/self/task/<tid>/schedstat`, ns).
fn thread_cpu(tid: i32) -> Duration {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

impl PluginThread {
    async fn start(config: Config) -> Self {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready, ready_rx) = tokio::sync::oneshot::channel::<i32>();
        let thread = std::thread::Builder::new()
            .name("plugin".into())
            .spawn(move || {
                let rt = runtime().expect("plugin runtime");
                rt.block_on(async move {
                    let client = kube_client(config.kubeconfig.as_deref())
                        .await
                        .expect("client");
                    let plugin = Plugin::start(config, client).await.expect("plugin");
                    let _ = ready.send(nix::unistd::gettid().as_raw());
                    let _ = stop_rx.await;
                    plugin.shutdown().await;
                });
            })
            .expect("plugin thread");
        let tid = ready_rx.await.expect("plugin started");
        Self {
            stop: Some(stop),
            thread: Some(thread),
            tid,
        }
    }

    /// CPU time of the plugin's thread plus its blocking pool (threads named by `runtime()`).
    fn cpu(&self) -> Duration {
        let mut t = thread_cpu(self.tid);
        for e in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim() == BLOCKING_THREAD_NAME
                && let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok())
            {
                t += thread_cpu(tid);
            }
        }
        t
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .expect("join")
                .expect("plugin thread");
        }
    }
}

async fn run_prepare(s: &Setup, files: bool, claims: usize, prefix: &str) {
    let mut config = s.config.clone();
    config.durable_checkpoint = files;
    config.write_cdi = files;
    config.publish_slices = false;
    let dra_sock = config.plugins_dir.join(DRIVER).join("dra.sock");
    let plugin = PluginThread::start(config.clone()).await;
    let mut c = v1::dra_plugin_client::DraPluginClient::new(
        drakit_kubelet_plugin::sockets::unix_channel(&dra_sock),
    );
    let claim = |i: usize| v1::Claim {
        namespace: "bench".into(),
        uid: format!("{prefix}-uid-{i:05}"),
        name: format!("{prefix}{i}"),
    };
    // Warm-up: connection, kube client pool.
    let _ = c
        .node_unprepare_resources(v1::NodeUnprepareResourcesRequest {
            claims: vec![claim(0)],
        })
        .await;
    let mut prep = Vec::new();
    let cpu0 = plugin.cpu();
    for i in 0..claims {
        let t = Instant::now();
        let r = c
            .node_prepare_resources(v1::NodePrepareResourcesRequest {
                claims: vec![claim(i)],
            })
            .await
            .expect("prepare")
            .into_inner();
        prep.push(t.elapsed());
        let e = &r.claims[&claim(i).uid].error;
        assert!(e.is_empty(), "{e}");
    }
    let cpu1 = plugin.cpu();
    let mut unprep = Vec::new();
    for i in 0..claims {
        let t = Instant::now();
        c.node_unprepare_resources(v1::NodeUnprepareResourcesRequest {
            claims: vec![claim(i)],
        })
        .await
        .expect("unprepare");
        unprep.push(t.elapsed());
    }
    let cpu2 = plugin.cpu();
    let mut batch = Vec::new();
    for chunk in (0..claims).collect::<Vec<_>>().chunks(10) {
        let t = Instant::now();
        let r = c
            .node_prepare_resources(v1::NodePrepareResourcesRequest {
                claims: chunk.iter().map(|i| claim(*i)).collect(),
            })
            .await
            .expect("prepare batch")
            .into_inner();
        batch.push(t.elapsed());
        assert!(r.claims.values().all(|c| c.error.is_empty()));
    }
    let mode = if files { "files on" } else { "files off" };
    let p = report(&format!("prepare, 1 claim/call, {mode}"), &mut prep);
    let u = report(&format!("unprepare, 1 claim/call, {mode}"), &mut unprep);
    let b = report(&format!("prepare, 10 claims/call, {mode}"), &mut batch);
    // The plugin's own share: CPU of its thread (and blocking pool) per call, the rest of a
    // call's latency being the kubelet and API server stand-ins and the waits between them.
    let per = |d: Duration| d / claims.max(1) as u32;
    let (pc, uc) = (per(cpu1 - cpu0), per(cpu2 - cpu1));
    println!(
        "| plugin CPU per prepare / unprepare, 1 claim/call, {mode} | {claims} | {} / {} | | |",
        ms(pc),
        ms(uc)
    );
    // The headline (checkpoint on disk, CDI on tmpfs) and the no-files variant go to the table.
    let key = match prefix {
        "a" => Some("kp"),
        "b" => Some("kp_nofiles"),
        _ => None,
    };
    if let Some(k) = key {
        bench_line(&format!("{k}_prepare_p50"), p.0);
        bench_line(&format!("{k}_prepare_p99"), p.1);
        bench_line(&format!("{k}_unprepare_p50"), u.0);
        bench_line(&format!("{k}_prepare10_p50"), b.0);
        bench_line(&format!("{k}_prepare_plugin_cpu"), pc);
        bench_line(&format!("{k}_unprepare_plugin_cpu"), uc);
    }
    plugin.stop().await;
}

/// The floor under any prepare that reads its claim: a bare DRA server on a thread and
/// runtime like the plugin's, whose NodePrepareResources does the kube GET of the claim and
/// nothing else (`get: false`: not even that, the gRPC round trip alone). Measured through the
/// same client and API server stand-in as the plugin.
struct Floor {
    kube: Option<kube::Api<k8s_openapi::api::resource::v1::ResourceClaim>>,
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for Floor {
    async fn node_prepare_resources(
        &self,
        req: tonic::Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<tonic::Response<v1::NodePrepareResourcesResponse>, tonic::Status> {
        let mut out = v1::NodePrepareResourcesResponse::default();
        for c in req.into_inner().claims {
            if let Some(api) = &self.kube {
                api.get(&c.name)
                    .await
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
            }
            out.claims.insert(c.uid, Default::default());
        }
        Ok(tonic::Response::new(out))
    }
    async fn node_unprepare_resources(
        &self,
        _: tonic::Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<tonic::Response<v1::NodeUnprepareResourcesResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
}

async fn floor(s: &Setup, n: usize, get: bool) -> Duration {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("floor.sock");
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (kc, path) = (s.config.kubeconfig.clone(), sock.clone());
    let thread = std::thread::spawn(move || {
        let rt = runtime().expect("runtime");
        rt.block_on(async move {
            let kube = if get {
                let c = kube_client(kc.as_deref()).await.expect("client");
                Some(kube::Api::namespaced(c, "bench"))
            } else {
                None
            };
            let listener = tokio::net::UnixListener::bind(&path).expect("bind");
            let _ = ready.send(());
            tonic::transport::Server::builder()
                .add_service(v1::dra_plugin_server::DraPluginServer::new(Floor { kube }))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await
                .expect("serve");
        });
    });
    ready_rx.await.expect("floor server");
    let mut c = v1::dra_plugin_client::DraPluginClient::new(
        drakit_kubelet_plugin::sockets::unix_channel(&sock),
    );
    let claim = |i: usize| v1::Claim {
        namespace: "bench".into(),
        uid: format!("a-uid-{:05}", i % n),
        name: format!("a{}", i % n),
    };
    let _ = c
        .node_prepare_resources(v1::NodePrepareResourcesRequest {
            claims: vec![claim(0)],
        })
        .await;
    let mut v = Vec::new();
    for i in 0..n.max(300) {
        let t = Instant::now();
        c.node_prepare_resources(v1::NodePrepareResourcesRequest {
            claims: vec![claim(i)],
        })
        .await
        .expect("floor prepare");
        v.push(t.elapsed());
    }
    drop(c);
    let _ = stop.send(());
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("floor thread");
    let label = if get {
        "floor: bare DRA server, prepare = one kube GET, 1 claim/call"
    } else {
        "floor: bare DRA server, prepare does nothing (gRPC round trip)"
    };
    report(label, &mut v).0
}

async fn pieces(s: &Setup, n: usize, state_parent: &Path, cdi_parent: &Path) {
    // API GET of a claim through kube.
    let client = kube_client(s.config.kubeconfig.as_deref())
        .await
        .expect("client");
    let api: kube::Api<k8s_openapi::api::resource::v1::ResourceClaim> =
        kube::Api::namespaced(client, "bench");
    let mut get = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        api.get(&format!("a{}", i % n)).await.expect("get");
        get.push(t.elapsed());
    }
    report("piece: kube GET ResourceClaim", &mut get);
    // Journal append + fdatasync.
    let tmp = tempfile::tempdir_in(state_parent).expect("tmp");
    let mut j = open_checkpoint(&StateOptions {
        dir: tmp.path().join("j"),
        driver: DRIVER.into(),
        boot_id: "boot".into(),
        durability: drakit_types::checkpoint::Durability::Fsync,
        shared: false,
    })
    .expect("checkpoint");
    let mut app = Vec::new();
    for i in 0..300 {
        let rec = ClaimRecord {
            namespace: "bench".into(),
            name: format!("c{i}"),
            uid: format!("uid-{i}"),
            devices: vec![DeviceRecord {
                requests: vec!["edit".into()],
                pool: "node-1".into(),
                device: "spec-edit-0".into(),
                share_id: None,
                cdi_device_ids: vec![format!("{DRIVER}/claim=uid-{i}-spec-edit-0")],
            }],
            cdi_spec: "{\"cdiVersion\":\"0.5.0\"}".repeat(8),
            boot_id: "boot".into(),
            allocated: Vec::new(),
            reserved_for_pods: vec!["pod-uid".into()],
        };
        let t = Instant::now();
        j.put(&format!("uid-{i}"), rec).expect("append");
        app.push(t.elapsed());
    }
    report("piece: checkpoint append + fdatasync (ext4)", &mut app);
    for (label, dir) in [("ext4", state_parent), ("tmpfs", cdi_parent)] {
        let tmp = tempfile::tempdir_in(dir).expect("tmp");
        let w = spec_dir(tmp.path(), DRIVER).expect("spec dir");
        let edits = drakit_proto::drakit::ContainerEdits {
            env: vec![format!("DRAKIT_RUNTIME_SPEC_x={}", "y".repeat(400))],
            ..Default::default()
        };
        let mut wr = Vec::new();
        for i in 0..300 {
            let spec = claim_spec(
                DRIVER,
                &format!("uid-{i}"),
                vec![claim_device("spec-edit-0", None, &edits)],
            )
            .expect("spec");
            let t = Instant::now();
            w.write(&spec).expect("write");
            wr.push(t.elapsed());
        }
        report(
            &format!("piece: CDI spec write (check, encode, temp + rename, no fsync, {label})"),
            &mut wr,
        );
    }
}

/// Prepare latency as the node fills up: with 1, 10, 100 and 1,000 claims prepared and live, 100
/// further claims are each prepared and unprepared again; the median per level shows how a
/// prepare's cost grows with the live claims (the checkpoint journal and the CDI dir both grow).
async fn scaling(state_parent: &Path, cdi_parent: &Path, max_live: usize) {
    const PROBES: usize = 100;
    let s = setup(state_parent, cdi_parent, max_live + PROBES, "s").await;
    let mut config = s.config.clone();
    config.publish_slices = false;
    let dra_sock = config.plugins_dir.join(DRIVER).join("dra.sock");
    let plugin = PluginThread::start(config.clone()).await;
    let mut c = v1::dra_plugin_client::DraPluginClient::new(
        drakit_kubelet_plugin::sockets::unix_channel(&dra_sock),
    );
    let claim = |i: usize| v1::Claim {
        namespace: "bench".into(),
        uid: format!("s-uid-{i:05}"),
        name: format!("s{i}"),
    };
    println!("| (prepare with N claims live; checkpoint on ext4, CDI on tmpfs) | | | | |");
    let mut live = 0;
    for level in [1usize, 10, 100, 1000]
        .into_iter()
        .filter(|l| *l <= max_live)
    {
        while live < level {
            let r = c
                .node_prepare_resources(v1::NodePrepareResourcesRequest {
                    claims: vec![claim(live)],
                })
                .await
                .expect("prepare")
                .into_inner();
            assert!(r.claims.values().all(|c| c.error.is_empty()));
            live += 1;
        }
        let mut prep = Vec::new();
        for i in max_live..max_live + PROBES {
            let t = Instant::now();
            let r = c
                .node_prepare_resources(v1::NodePrepareResourcesRequest {
                    claims: vec![claim(i)],
                })
                .await
                .expect("prepare")
                .into_inner();
            prep.push(t.elapsed());
            assert!(r.claims.values().all(|c| c.error.is_empty()));
            c.node_unprepare_resources(v1::NodeUnprepareResourcesRequest {
                claims: vec![claim(i)],
            })
            .await
            .expect("unprepare");
        }
        let (p50, _) = report(&format!("prepare with {level} live claims"), &mut prep);
        bench_line(&format!("kp_prepare_live_{level}_p50"), p50);
    }
    plugin.stop().await;
    let _ = std::fs::remove_dir_all(&s.config.cdi_dir);
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A KiB field of /proc/<pid>/status (`VmRSS:` now, `VmHWM:` the peak so far).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn binary(state_parent: &Path, claims: usize) {
    let exe = std::env::current_exe().ok().and_then(|p| {
        // target/<profile>/examples/bench → target/<profile>/drakit-kubelet-plugin
        Some(p.parent()?.parent()?.join("drakit-kubelet-plugin"))
    });
    let Some(exe) = exe.filter(|p| p.exists()) else {
        println!(
            "binary: not built (cargo build --profile release-small -p drakit-kubelet-plugin); skipped"
        );
        return;
    };
    let size = std::fs::metadata(&exe).map(|m| m.len()).unwrap_or(0);
    println!("binary: {} ({:.1} MB)", exe.display(), size as f64 / 1e6);
    let s = setup(state_parent, Path::new("/dev/shm"), claims, "l").await;
    let c = &s.config;
    let reg = c.registry_dir.join(format!("{DRIVER}-reg.sock"));
    let mut launches = Vec::new();
    let mut sockets = Vec::new();
    let mut rss = Vec::new();
    let mut loaded = None;
    let mut peak = None;
    let rounds: usize = std::env::var("BENCH_LAUNCHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    for round in 0..rounds {
        let t = Instant::now();
        let mut child = std::process::Command::new(&exe)
            .args([
                "--node-name",
                "node-1",
                "--net-driver",
                "false",
                "--cpu-driver",
                "false",
            ])
            .arg("--kubeconfig")
            .arg(c.kubeconfig.as_ref().expect("kc"))
            .arg("--registry-dir")
            .arg(&c.registry_dir)
            .arg("--plugins-dir")
            .arg(&c.plugins_dir)
            .arg("--cdi-dir")
            .arg(&c.cdi_dir)
            .arg("--state-dir")
            .arg(&c.state_dir)
            .arg("--cgroupfs-root")
            .arg(&c.cgroupfs_root)
            .arg("--proc-root")
            .arg(&c.proc_root)
            .env("RUST_LOG", "error")
            .spawn()
            .expect("spawn");
        // Registered = the registration socket answers GetInfo. Polled every 50 µs with a
        // thread sleep (a tokio sleep rounds up to the timer's 1 ms tick).
        let mut appeared = None;
        loop {
            if appeared.is_none() && reg.exists() {
                appeared = Some(t.elapsed());
            }
            if appeared.is_some()
                && let Ok(ch) = tonic::transport::Endpoint::from_static("http://[::]:1")
                    .connect_with_connector({
                        let reg = reg.clone();
                        tower::service_fn(move |_| {
                            let reg = reg.clone();
                            async move {
                                tokio::net::UnixStream::connect(reg)
                                    .await
                                    .map(hyper_util::rt::TokioIo::new)
                            }
                        })
                    })
                    .await
                && RegistrationClient::new(ch)
                    .get_info(InfoRequest {})
                    .await
                    .is_ok()
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                println!("launch: not registered within 10 s");
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        launches.push(t.elapsed());
        sockets.push(appeared.unwrap_or_default());
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(r) = rss_kib(child.id()) {
            rss.push(r);
        }
        if round == rounds - 1 {
            // RSS with every claim prepared (checkpoint and CDI specs for all of them).
            let dra_sock = c.plugins_dir.join(DRIVER).join("dra.sock");
            let mut dra = v1::dra_plugin_client::DraPluginClient::new(
                drakit_kubelet_plugin::sockets::unix_channel(&dra_sock),
            );
            let mut ok = 0;
            for i in 0..claims {
                let claim = v1::Claim {
                    namespace: "bench".into(),
                    uid: format!("l-uid-{i:05}"),
                    name: format!("l{i}"),
                };
                if let Ok(r) = dra
                    .node_prepare_resources(v1::NodePrepareResourcesRequest {
                        claims: vec![claim],
                    })
                    .await
                    && r.into_inner().claims.values().all(|c| c.error.is_empty())
                {
                    ok += 1;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            loaded = rss_kib(child.id()).map(|r| (ok, r));
            peak = status_kib(child.id(), "VmHWM:");
            for i in 0..claims {
                let _ = dra
                    .node_unprepare_resources(v1::NodeUnprepareResourcesRequest {
                        claims: vec![v1::Claim {
                            namespace: "bench".into(),
                            uid: format!("l-uid-{i:05}"),
                            name: format!("l{i}"),
                        }],
                    })
                    .await;
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
        let _ = std::fs::remove_file(&reg);
    }
    report(
        "launch to registration socket in place (spawn, exec, start-up)",
        &mut sockets,
    );
    let (launch, _) = report("launch to registered (GetInfo answered)", &mut launches);
    bench_line("kp_launch_p50", launch);
    rss.sort();
    println!("idle RSS after registration (KiB, {rounds} launches): {rss:?}");
    if let Some(r) = rss.get(rss.len() / 2) {
        println!("BENCH kp_idle_rss {r} KiB");
    }
    match loaded {
        Some((ok, r)) if ok == claims => {
            println!("RSS with {claims} claims prepared: {r} KiB");
            println!("BENCH kp_rss_{claims}_claims {r} KiB");
            if let Some(p) = peak {
                println!("peak RSS (VmHWM) over start-up and {claims} prepares: {p} KiB");
                println!("BENCH kp_peak_rss {p} KiB");
            }
        }
        Some((ok, _)) => {
            println!("RSS with claims prepared: only {ok} of {claims} prepared; not reported")
        }
        None => println!("RSS with claims prepared: could not read /proc status"),
    }
    // The CDI dir was kept outside the temp root (on tmpfs): remove it too.
    let _ = std::fs::remove_dir_all(&s.config.cdi_dir);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let claims: usize = std::env::var("BENCH_CLAIMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let disk = PathBuf::from("/var/tmp");
    let shm = PathBuf::from("/dev/shm");
    println!("| what | n | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|");
    if std::env::var("BENCH_ONLY").as_deref() == Ok("launch") {
        binary(&disk, claims).await;
        return;
    }
    for (files, prefix, cdi) in [(true, "a", &shm), (false, "b", &shm), (true, "c", &disk)] {
        let s = setup(&disk, cdi, claims, prefix).await;
        if files {
            println!(
                "| (checkpoint on ext4, CDI dir on {}) | | | | |",
                if cdi == &shm { "tmpfs" } else { "ext4" }
            );
        }
        run_prepare(&s, files, claims, prefix).await;
        if prefix == "a" {
            pieces(&s, claims, &disk, &shm).await;
            bench_line("kp_floor_grpc_p50", floor(&s, claims, false).await);
            bench_line("kp_floor_grpc_get_p50", floor(&s, claims, true).await);
        }
        let _ = std::fs::remove_dir_all(&s.config.cdi_dir);
        drop(s.api);
    }
    scaling(&disk, &shm, claims).await;
    binary(&disk, claims).await;
}
