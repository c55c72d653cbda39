//! Test doubles and a node fixture: fake netdev and cpu backends (the internal Backend gRPC
//! service on real unix sockets), the e2e harness (kubelet simulator + API server stand-in) and
//! the plugin itself, all under one temp dir.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drakit_e2e::node::{NodeHarness, NodeHarnessConfig};
use drakit_kubelet_plugin::config::{BackendKind, Config, DriverSpec};
use drakit_kubelet_plugin::plugin::{Plugin, PluginError, kube_client};
use drakit_proto::drakit::backend_server::{Backend, BackendServer};
use drakit_proto::drakit::*;
use futures::Stream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

pub const NODE: &str = "node-1";
pub const NET: &str = "net.drakit.dev";
pub const CPU: &str = "cpu.drakit.dev";
pub const RUNTIME: &str = "runtime.drakit.dev";

/// Which fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Net,
    Cpu,
}

#[derive(Debug)]
pub struct FakeState {
    pub kind: Kind,
    pub inventory: watch::Sender<Inventory>,
    pub prepared: Mutex<BTreeMap<String, PrepareRequest>>,
    pub calls: Mutex<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct FakeBackend(pub Arc<FakeState>);

type InvStream = Pin<Box<dyn Stream<Item = Result<Inventory, Status>> + Send>>;

#[tonic::async_trait]
impl Backend for FakeBackend {
    type WatchDevicesStream = InvStream;

    async fn watch_devices(
        &self,
        _req: Request<WatchDevicesRequest>,
    ) -> Result<Response<InvStream>, Status> {
        let rx = self.0.inventory.subscribe();
        let s = tokio_stream::wrappers::WatchStream::new(rx);
        use futures::StreamExt;
        Ok(Response::new(Box::pin(s.map(Ok))))
    }

    async fn prepare(
        &self,
        req: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        let req = req.into_inner();
        let uid = req
            .claim
            .as_ref()
            .map(|c| c.uid.clone())
            .unwrap_or_default();
        self.0.calls.lock().unwrap().push(format!("prepare {uid}"));
        let mut out = Vec::new();
        for d in &req.devices {
            if d.config_json.contains("\"invalid\"") {
                return Err(Status::invalid_argument(format!(
                    "device {:?}: config field spec.invalid: unknown field",
                    d.device
                )));
            }
            let (edits, network_data, conditions) = match self.0.kind {
                Kind::Net => (
                    ContainerEdits {
                        env: vec![format!("DRAKIT_NET_{}=net1", d.device.replace('-', "_"))],
                        ..Default::default()
                    },
                    Some(NetworkData {
                        interface_name: "net1".into(),
                        ips: vec!["192.0.2.5/24".into()],
                        hardware_address: "02:00:00:00:00:01".into(),
                    }),
                    vec![Condition {
                        r#type: "Ready".into(),
                        status: "True".into(),
                        reason: "Configured".into(),
                        message: String::new(),
                    }],
                ),
                Kind::Cpu => (
                    ContainerEdits {
                        env: vec![format!("DRAKIT_CPUS_{}=2-3", uid.replace('-', "_"))],
                        ..Default::default()
                    },
                    None,
                    Vec::new(),
                ),
            };
            out.push(PreparedDevice {
                requests: d.requests.clone(),
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
                edits: Some(edits),
                network_data,
                conditions,
            });
        }
        self.0.prepared.lock().unwrap().insert(uid, req);
        Ok(Response::new(PrepareResponse { devices: out }))
    }

    async fn unprepare(
        &self,
        req: Request<UnprepareRequest>,
    ) -> Result<Response<UnprepareResponse>, Status> {
        let uid = req.into_inner().claim.map(|c| c.uid).unwrap_or_default();
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("unprepare {uid}"));
        self.0.prepared.lock().unwrap().remove(&uid);
        Ok(Response::new(UnprepareResponse {}))
    }
}

/// A running fake backend.
#[derive(Debug)]
pub struct FakeHandle {
    pub state: Arc<FakeState>,
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeHandle {
    pub fn set_devices(&self, n: usize, prefix: &str) {
        let devices = (0..n)
            .map(|i| Device {
                name: format!("{prefix}{i}"),
                attributes: [(
                    "index".to_owned(),
                    Attribute {
                        value: Some(attribute::Value::Int(i as i64)),
                    },
                )]
                .into(),
                health: Health::Healthy as i32,
                ..Default::default()
            })
            .collect();
        self.state.inventory.send_modify(|inv| {
            inv.generation += 1;
            inv.devices = devices;
        });
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn prepared(&self) -> Vec<String> {
        self.state
            .prepared
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn start_fake(kind: Kind, socket: &Path, devices: usize, prefix: &str) -> FakeHandle {
    let (inventory, _) = watch::channel(Inventory::default());
    let state = Arc::new(FakeState {
        kind,
        inventory,
        prepared: Mutex::default(),
        calls: Mutex::default(),
    });
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let (stop, rx) = oneshot::channel();
    let svc = BackendServer::new(FakeBackend(state.clone()));
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await;
    });
    let h = FakeHandle {
        state,
        socket: socket.to_path_buf(),
        stop: Some(stop),
        task: Some(task),
    };
    h.set_devices(devices, prefix);
    h
}

/// The node: harness, fakes and config.
pub struct TestNode {
    pub tmp: tempfile::TempDir,
    pub node: NodeHarness,
    pub net: FakeHandle,
    pub cpu: FakeHandle,
    pub config: Config,
}

/// A running plugin instance.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), PluginError>>,
}

impl Running {
    pub async fn stop(mut self) -> Result<(), PluginError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => panic!("plugin task: {e}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl TestNode {
    pub async fn start(cgroup_v2: bool) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .try_init();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let node = NodeHarness::start(NodeHarnessConfig::new(&root, NODE))
            .await
            .unwrap();
        let mut config = Config::under_root(&root, NODE);
        config.kubeconfig = Some(node.kubeconfig.clone());
        config.registry_dir = node.registry_dir.clone();
        config.plugins_dir = node.plugins_dir.clone();
        config.api_budget = Duration::from_secs(5);
        config.shutdown_grace = Duration::from_secs(5);
        config.health_resend = Duration::from_secs(1);
        std::fs::create_dir_all(&config.cgroupfs_root).unwrap();
        if cgroup_v2 {
            std::fs::write(
                config.cgroupfs_root.join("cgroup.controllers"),
                "cpu io memory pids\n",
            )
            .unwrap();
        }
        let run = root.join("run/drakit");
        let net = start_fake(Kind::Net, &run.join("netdev.sock"), 4, "eth");
        let cpu = start_fake(Kind::Cpu, &run.join("cpu.sock"), 4, "cpu");
        config.drivers = vec![
            DriverSpec {
                name: NET.into(),
                backend: BackendKind::Socket(net.socket.clone()),
            },
            DriverSpec {
                name: CPU.into(),
                backend: BackendKind::Socket(cpu.socket.clone()),
            },
            DriverSpec {
                name: RUNTIME.into(),
                backend: BackendKind::Runtime,
            },
        ];
        Self {
            tmp,
            node,
            net,
            cpu,
            config,
        }
    }

    pub async fn launch(&self, config: Config) -> Running {
        let client = kube_client(config.kubeconfig.as_deref()).await.unwrap();
        let plugin = Plugin::start(config, client).await.unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(plugin.run(async {
            let _ = rx.await;
        }));
        Running {
            stop: Some(stop),
            task,
        }
    }

    pub async fn launch_registered(&self) -> Running {
        let r = self.launch(self.config.clone()).await;
        for d in [NET, CPU, RUNTIME] {
            self.node
                .kubelet
                .wait_for_driver(d, Duration::from_secs(10))
                .await
                .unwrap();
        }
        r
    }

    pub fn cdi_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.config.cdi_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn cdi_spec(&self, driver: &str, uid: &str) -> Option<serde_json::Value> {
        let p = self
            .config
            .cdi_dir
            .join(format!("{driver}-claim_{uid}.json"));
        let b = std::fs::read(p).ok()?;
        serde_json::from_slice(&b).ok()
    }
}

pub fn runtime_config(spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "drakit.dev/v1alpha1", "kind": "RuntimeSpecEditConfig", "spec": spec})
}
