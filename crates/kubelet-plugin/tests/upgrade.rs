//! Upgrade across the checkpoint format change: a checkpoint written by the plugin's earlier
//! journal code (`tests/data/legacy-net-checkpoint.journal`, made by that code: three net claims
//! prepared, one of them unprepared again) and the CDI spec it left are found at start-up. The
//! claims are imported, their specs rebuilt under the device names the kubelet was told, the
//! backend is reconciled, a repeated prepare is answered from the checkpoint (the claims are not
//! in the API server), unprepare cleans up, and a restart brings nothing back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use drakit_e2e::kubelet::ClaimRef;

const UID1: &str = "3f0a7c2e-1b2d-4e5f-8a9b-0c1d2e3f4a5b";
const UID_GONE: &str = "9b8c7d6e-0000-4000-8000-00000000dead";
const UID3: &str = "a1b2c3d4-0000-4000-8000-000000000002";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_checkpoint_is_imported_and_its_claims_served() {
    let n = TestNode::start(true).await;
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let state = n.config.state_dir.join(NET);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(
        data.join("legacy-net-checkpoint.journal"),
        state.join("checkpoint.journal"),
    )
    .unwrap();
    // The earlier version's spec of the first claim is still there (compact JSON); the third
    // claim's is gone (tmpfs after a reboot); a temp file of the earlier writer is left over.
    std::fs::create_dir_all(&n.config.cdi_dir).unwrap();
    let old_spec = format!("{NET}-claim_{UID1}.json");
    std::fs::copy(
        data.join(format!("legacy-{old_spec}")),
        n.config.cdi_dir.join(&old_spec),
    )
    .unwrap();
    std::fs::write(
        n.config.cdi_dir.join(format!(".{NET}-claim_{UID3}.tmp")),
        b"{",
    )
    .unwrap();

    let p = n.launch_registered().await;
    assert!(!state.join("checkpoint.journal").exists());
    assert!(state.join("claims.checkpoint").exists());
    assert_eq!(
        n.cdi_files(),
        vec![
            format!("{NET}-claim_{UID1}.json"),
            format!("{NET}-claim_{UID3}.json")
        ]
    );
    for (uid, dev) in [(UID1, "eth1"), (UID3, "eth3")] {
        let spec = n.cdi_spec(NET, uid).unwrap();
        assert_eq!(spec["kind"], format!("{NET}/claim"));
        assert_eq!(spec["devices"][0]["name"], format!("{uid}-{dev}"));
        assert_eq!(
            spec["devices"][0]["containerEdits"]["env"][0],
            format!("DRAKIT_NET_{dev}=net1")
        );
    }
    // The backend gets the imported claims back (start-up reconcile), not the unprepared one.
    let t = Instant::now();
    while !(n.net.prepared().contains(&UID1.to_owned())
        && n.net.prepared().contains(&UID3.to_owned()))
    {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", n.net.calls());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!n.net.prepared().contains(&UID_GONE.to_owned()));

    // A repeated prepare is answered from the checkpoint with the IDs the kubelet holds.
    let c1 = [ClaimRef::new("default", "nic-eth1", UID1)];
    let r = n.node.kubelet.prepare(NET, &c1).await.unwrap();
    let d = r[UID1].clone().unwrap();
    assert_eq!(
        d[0].cdi_device_ids,
        vec![format!("{NET}/claim={UID1}-eth1")]
    );
    assert_eq!(d[0].device_name, "eth1");

    let c = [
        ClaimRef::new("default", "nic-eth1", UID1),
        ClaimRef::new("default", "nic-eth3", UID3),
    ];
    let u = n.node.kubelet.unprepare(NET, &c).await.unwrap();
    assert!(u.values().all(|r| r.is_ok()), "{u:?}");
    assert!(n.cdi_files().is_empty(), "{:?}", n.cdi_files());
    p.stop().await.unwrap();

    // Nothing comes back after a restart.
    let p = n.launch_registered().await;
    assert!(n.cdi_files().is_empty(), "{:?}", n.cdi_files());
    let calls_before = n.net.calls().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        n.net.calls()[calls_before..]
            .iter()
            .all(|c| !c.starts_with("prepare")),
        "{:?}",
        n.net.calls()
    );
    p.stop().await.unwrap();
}
