//! The request size limit of drakit-cpu's socket (`drakit_proto::uds::server::MAX_REQUEST_BYTES`):
//! an over-limit Prepare is refused by its frame header, allocates nothing, and the server keeps
//! serving on the same connection.

use std::collections::HashMap;
use std::time::Duration;

use drakit_cpu::fixture::materialize_named;
use drakit_cpu::inventory::{DeviceModel, GroupBy};
use drakit_cpu::server::{self, CpuService, PeerPolicy};
use drakit_cpu::store::MemoryStore;
use drakit_cpu::{CpuSet, Manager, PoolConfig, Topology};
use drakit_proto::drakit::backend_client::BackendClient;
use drakit_proto::drakit::{AllocatedDevice, ClaimRef, PrepareRequest};
use drakit_proto::uds::server::MAX_REQUEST_BYTES;

const BOOT: &str = "89da862f-7ffd-412e-82ca-c8b2773928da";

fn request(uid: &str, config_json: String) -> PrepareRequest {
    PrepareRequest {
        claim: Some(ClaimRef {
            namespace: "ns".into(),
            name: uid.into(),
            uid: uid.into(),
        }),
        devices: vec![AllocatedDevice {
            requests: vec!["cpus".into()],
            pool: "node".into(),
            device: "numa0".into(),
            share_id: format!("s-{uid}"),
            consumed_capacity: HashMap::from([("cpus".to_string(), "2".to_string())]),
            config_json,
            ..Default::default()
        }],
        reserved_for_pods: vec!["pod-1".into()],
        boot_id: BOOT.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_prepare_is_refused_and_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    materialize_named("xeon-2s-smt", &sys).unwrap();
    let cfg = PoolConfig {
        model: DeviceModel::Grouped(GroupBy::Numa),
        reserved: CpuSet::parse("0,40").unwrap(),
        ..Default::default()
    };
    let m = Manager::new(
        Topology::discover(&sys).unwrap(),
        cfg,
        BOOT,
        Box::new(MemoryStore::new()),
    )
    .unwrap();
    let service = CpuService::new(m);
    let socket = dir.path().join("run/cpu.sock");
    let listener = server::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (svc, path) = (service.clone(), socket.clone());
    let task = tokio::spawn(async move {
        server::serve(svc, listener, &path, PeerPolicy::default(), async {
            let _ = stopped.await;
        })
        .await
    });
    let ch = drakit_proto::uds::connect(&socket, Duration::from_secs(10))
        .await
        .unwrap();
    let mut client = BackendClient::new(ch);

    // Over the limit: refused by the message length, before the body is read.
    let big = request("big", "x".repeat(MAX_REQUEST_BYTES + 1));
    let err = client.prepare(big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("the limit is: {MAX_REQUEST_BYTES} bytes")),
        "{err:?}"
    );
    // Just under it: decoded, then refused by the config check (not by size).
    let under = request("under", "x".repeat(MAX_REQUEST_BYTES - 4096));
    let err = client.prepare(under).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        service.with_manager(|m| m.claims().count()).unwrap(),
        0,
        "nothing allocated for refused requests"
    );
    // The same connection still serves a normal request.
    client
        .prepare(request("small", String::new()))
        .await
        .expect("a normal prepare after the refusals");
    assert_eq!(
        service.with_manager(|m| m.claims().count()).unwrap(),
        1,
        "exactly the normal claim is allocated"
    );
    drop(client);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}
