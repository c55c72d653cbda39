//! After a reboot: an unprepare's checkpoint record is flushed just after the kubelet's answer,
//! so a power loss in between can leave a claim in the checkpoint that the kubelet has let go
//! of. Such claims are restored from an earlier boot; the plugin looks them up in the API
//! server until the kubelet prepares them again, and releases (backend, CDI spec, checkpoint)
//! those no longer in use. Here four net claims are prepared during boot "boot-1"; the plugin
//! stops; the checkpoint keeps all four while the API server says: one claim deleted, one
//! reserved for no pod, two still reserved. The node comes back as "boot-2".

mod common;

use std::time::{Duration, Instant};

use common::*;
use drakit_e2e::apiserver::{ClaimBuilder, Resource};
use drakit_e2e::kubelet::ClaimRef;

fn claim(
    name: &str,
    device: &str,
    reserved: bool,
) -> k8s_openapi::api::resource::v1::ResourceClaim {
    let b = ClaimBuilder::new("default", name)
        .uid(&format!("{name}-uid"))
        .device(NET, NODE, device, "nic");
    if reserved {
        b.reserved_for_pod("pod-a", "pod-uid-a").build()
    } else {
        b.build()
    }
}

fn set_boot(n: &TestNode, id: &str) {
    let f = n.config.proc_root.join("sys/kernel/random/boot_id");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, format!("{id}\n")).unwrap();
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_from_before_a_reboot_are_released_once_unused() {
    let n = TestNode::start(true).await;
    set_boot(&n, "boot-1");
    let names = ["gone", "unreserved", "kept", "waiting"];
    for (i, name) in names.iter().enumerate() {
        n.node
            .api
            .insert_claim(&claim(name, &format!("eth{i}"), true))
            .unwrap();
    }
    let refs: Vec<ClaimRef> = names
        .iter()
        .map(|c| ClaimRef::new("default", *c, format!("{c}-uid")))
        .collect();
    let p = n.launch_registered().await;
    let r = n.node.kubelet.prepare(NET, &refs).await.unwrap();
    assert!(r.values().all(|r| r.is_ok()), "{r:?}");
    let kept_before = r["kept-uid"].clone().unwrap();
    p.stop().await.unwrap();
    assert_eq!(n.cdi_files().len(), 4);

    // While the node was down: "gone" was deleted, "unreserved" lost its pod; the kubelet had
    // unprepared both, but (power loss) the checkpoint still holds them.
    assert!(
        n.node
            .api
            .remove(Resource::ResourceClaims, "default", "gone")
    );
    n.node
        .api
        .insert_claim(&claim("unreserved", "eth1", false))
        .unwrap();
    set_boot(&n, "boot-2");
    let mut config = n.config.clone();
    config.reboot_recheck = Duration::from_millis(100);
    let p = n.launch(config).await;
    n.node
        .kubelet
        .wait_for_driver(NET, Duration::from_secs(10))
        .await
        .unwrap();

    let has = |uid: &str| n.net.prepared().contains(&uid.to_owned());
    until("the two unused claims are released", || {
        !has("gone-uid") && !has("unreserved-uid") && n.cdi_files().len() == 2
    })
    .await;
    assert_eq!(
        n.cdi_files(),
        vec![
            format!("{NET}-claim_kept-uid.json"),
            format!("{NET}-claim_waiting-uid.json")
        ]
    );
    // The two in use stay, and the backend has them (start-up reconcile).
    assert!(has("kept-uid") && has("waiting-uid"), "{:?}", n.net.calls());

    // The kubelet prepares "kept" again after the reboot: same answer, and from now on it is a
    // claim of this boot, released only by an unprepare.
    let kept = [refs[2].clone()];
    let again = n.node.kubelet.prepare(NET, &kept).await.unwrap();
    assert_eq!(again["kept-uid"].clone().unwrap(), kept_before);
    n.node
        .api
        .insert_claim(&claim("kept", "eth2", false))
        .unwrap();
    // "waiting" was never prepared again: once its pod is gone, it is released too.
    n.node
        .api
        .insert_claim(&claim("waiting", "eth3", false))
        .unwrap();
    until("the waiting claim is released", || !has("waiting-uid")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(has("kept-uid"), "{:?}", n.net.calls());
    assert_eq!(n.cdi_files(), vec![format!("{NET}-claim_kept-uid.json")]);
    let u = n.node.kubelet.unprepare(NET, &kept).await.unwrap();
    assert!(u["kept-uid"].is_ok(), "{u:?}");
    assert!(n.cdi_files().is_empty());
    p.stop().await.unwrap();

    // Nothing comes back at the next start.
    let p = n.launch_registered().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(n.cdi_files().is_empty(), "{:?}", n.cdi_files());
    assert!(n.net.prepared().is_empty(), "{:?}", n.net.prepared());
    p.stop().await.unwrap();
}
