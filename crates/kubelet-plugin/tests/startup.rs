//! A prepare that arrives right after the plugin registered, before its backend's first
//! inventory: the kubelet retries pending prepares as soon as a restarted plugin registers, and
//! with `--shared-slots` (the default) the claim names a published slot that only the inventory
//! maps back to the backend's shared device. Found by the soak (`cargo xtask soak`): the slot
//! name went to the backend as a device name and the claim was refused ("not in this node's
//! inventory").

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use drakit_e2e::apiserver::ClaimBuilder;
use drakit_e2e::kubelet::ClaimRef;
use drakit_kubelet_plugin::config::{BackendKind, DriverSpec};
use drakit_proto::drakit::backend_server::{Backend, BackendServer};
use drakit_proto::drakit::*;
use futures::Stream;
use tonic::{Request, Response, Status};

/// A net backend with one shared device whose inventory arrives only after `delay`.
#[derive(Clone)]
struct SlowInventory {
    delay: Duration,
    asked: Arc<Mutex<Vec<(String, String)>>>,
}

type InvStream = Pin<Box<dyn Stream<Item = Result<Inventory, Status>> + Send>>;

#[tonic::async_trait]
impl Backend for SlowInventory {
    type WatchDevicesStream = InvStream;

    async fn watch_devices(
        &self,
        _req: Request<WatchDevicesRequest>,
    ) -> Result<Response<InvStream>, Status> {
        let delay = self.delay;
        let inv = Inventory {
            generation: 1,
            pool: NODE.into(),
            devices: vec![Device {
                name: "netdev-virtual".into(),
                allow_multiple_allocations: true,
                health: Health::Healthy as i32,
                ..Default::default()
            }],
        };
        let s = futures::stream::once(async move {
            tokio::time::sleep(delay).await;
            Ok(inv)
        });
        use futures::StreamExt;
        Ok(Response::new(Box::pin(s.chain(futures::stream::pending()))))
    }

    async fn prepare(
        &self,
        req: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        let req = req.into_inner();
        let mut out = Vec::new();
        for d in &req.devices {
            self.asked
                .lock()
                .unwrap()
                .push((d.device.clone(), d.share_id.clone()));
            if d.device != "netdev-virtual" {
                return Err(Status::invalid_argument(format!(
                    "device {:?} is not in this node's inventory",
                    d.device
                )));
            }
            out.push(PreparedDevice {
                requests: d.requests.clone(),
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
                edits: Some(ContainerEdits {
                    env: vec!["NET=1".into()],
                    ..Default::default()
                }),
                network_data: None,
                conditions: vec![],
            });
        }
        Ok(Response::new(PrepareResponse { devices: out }))
    }

    async fn unprepare(
        &self,
        _req: Request<UnprepareRequest>,
    ) -> Result<Response<UnprepareResponse>, Status> {
        Ok(Response::new(UnprepareResponse {}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_before_the_first_inventory_waits_for_it() {
    let n = TestNode::start(true).await;
    let sock = n.tmp.path().join("run/drakit/slow-netdev.sock");
    let backend = SlowInventory {
        delay: Duration::from_millis(800),
        asked: Arc::default(),
    };
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let svc = BackendServer::new(backend.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await;
    });
    let mut config = n.config.clone();
    config.shared_slots = 16;
    config.drivers = vec![DriverSpec {
        name: NET.into(),
        backend: BackendKind::Socket(sock.clone()),
    }];
    // The claim names slot 3 of the shared device, as the scheduler allocates it.
    n.node
        .api
        .insert_claim(
            &ClaimBuilder::new("default", "early")
                .uid("early-uid")
                .device(NET, NODE, "netdev-virtual-3", "nic")
                .reserved_for_pod("pod-a", "pod-uid-a")
                .build(),
        )
        .unwrap();
    let p = n.launch(config).await;
    n.node
        .kubelet
        .wait_for_driver(NET, Duration::from_secs(10))
        .await
        .unwrap();
    // Registered; the inventory is still ~0.8 s away.
    let c = [ClaimRef::new("default", "early", "early-uid")];
    let r = n.node.kubelet.prepare(NET, &c).await.unwrap();
    let devs = r["early-uid"].clone().expect("prepared");
    assert_eq!(devs[0].device_name, "netdev-virtual-3");
    assert_eq!(
        backend.asked.lock().unwrap().clone(),
        vec![(
            "netdev-virtual".to_owned(),
            "early-uid-netdev-virtual-3".to_owned()
        )],
        "the backend got its shared device and the slot's share ID"
    );
    let u = n.node.kubelet.unprepare(NET, &c).await.unwrap();
    assert_eq!(u["early-uid"], Ok(()));
    p.stop().await.unwrap();
}
