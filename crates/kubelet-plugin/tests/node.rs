//! End to end through real unix sockets: the kubelet simulator calls the plugin, the plugin
//! reads claims from the API server stand-in and talks to fake netdev/cpu backends.

mod common;

use std::time::Duration;

use common::*;
use drakit_e2e::apiserver::{ClaimBuilder, Fault};
use drakit_e2e::kubelet::{ClaimRef, DraVersion, HealthVersion};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

fn runtime_claim(
    name: &str,
    uid: &str,
    spec: serde_json::Value,
) -> k8s_openapi::api::resource::v1::ResourceClaim {
    ClaimBuilder::new("default", name)
        .uid(uid)
        .device(RUNTIME, NODE, "spec-edit-0", "edit")
        .config_from_claim(RUNTIME, &["edit"], runtime_config(spec))
        .reserved_for_pod("pod-a", "pod-uid-a")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_all_three_drivers() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    for d in [NET, CPU, RUNTIME] {
        let r = n.node.kubelet.driver(d).unwrap();
        assert_eq!(r.version, DraVersion::V1);
        assert_eq!(r.supported_versions[0], "v1.DRAPlugin");
        assert_eq!(r.endpoint, n.config.plugins_dir.join(d).join("dra.sock"));
    }
    p.stop().await.unwrap();
    // Shutdown removes every socket.
    for d in [NET, CPU, RUNTIME] {
        n.node.kubelet.wait_for_driver_gone(d, T).await.unwrap();
        assert!(!n.config.plugins_dir.join(d).join("dra.sock").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_claim_prepare_is_idempotent_and_reensures_cdi() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    let spec = json!({"linux":{"resources":{"unified":{"io.max":"259:0 rbps=2097152"}}}});
    let uid = "6f3c1a9e-0000-4000-8000-000000000001";
    n.node
        .api
        .insert_claim(&runtime_claim("io", uid, spec.clone()))
        .unwrap();
    let c = [ClaimRef::new("default", "io", uid)];
    for version in [DraVersion::V1, DraVersion::V1beta1] {
        let r = n
            .node
            .kubelet
            .prepare_with(RUNTIME, &c, Some(version))
            .await
            .unwrap();
        let devs = r[uid].clone().unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].device_name, "spec-edit-0");
        assert_eq!(devs[0].pool_name, NODE);
        assert_eq!(devs[0].request_names, vec!["edit".to_owned()]);
        assert_eq!(
            devs[0].cdi_device_ids,
            vec![format!("{RUNTIME}/claim=claim-{uid}-spec-edit-0")]
        );
    }
    let cdi = n.cdi_spec(RUNTIME, uid).expect("CDI spec written");
    let env = cdi["devices"][0]["containerEdits"]["env"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let (name, value) = env.split_once('=').unwrap();
    assert_eq!(
        name,
        "DRAKIT_RUNTIME_SPEC_6f3c1a9e_0000_4000_8000_000000000001"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(value).unwrap(),
        spec
    );
    // Only one GET: the repeat answered from the checkpoint.
    assert_eq!(
        n.node
            .api
            .requests_matching("GET", "/resourceclaims/io")
            .len(),
        1
    );
    // CDI file deleted under us: the next prepare writes it again.
    std::fs::remove_file(n.config.cdi_dir.join(format!("{RUNTIME}-claim_{uid}.json"))).unwrap();
    let r = n.node.kubelet.prepare(RUNTIME, &c).await.unwrap();
    assert!(r[uid].is_ok());
    assert!(n.cdi_spec(RUNTIME, uid).is_some());
    // Unprepare removes it; a second unprepare (unknown claim) succeeds.
    for _ in 0..2 {
        let u = n.node.kubelet.unprepare(RUNTIME, &c).await.unwrap();
        assert_eq!(u[uid], Ok(()));
    }
    assert!(n.cdi_spec(RUNTIME, uid).is_none());
    let u = n
        .node
        .kubelet
        .unprepare_with(
            RUNTIME,
            &[ClaimRef::new("default", "never", "no-such-uid")],
            Some(DraVersion::V1beta1),
        )
        .await
        .unwrap();
    assert_eq!(u["no-such-uid"], Ok(()));
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_and_cpu_claims_through_backends_both_versions() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    for (i, version) in [DraVersion::V1, DraVersion::V1beta1]
        .into_iter()
        .enumerate()
    {
        let nuid = format!("net-uid-{i}");
        let cuid = format!("cpu-uid-{i}");
        let nname = format!("nic-{i}");
        let cname = format!("cpus-{i}");
        n.node
            .api
            .insert_claim(
                &ClaimBuilder::new("default", &nname)
                    .uid(&nuid)
                    .device(NET, NODE, &format!("eth{i}"), "nic")
                    .config_from_claim(NET, &["nic"], json!({"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"macvlan","interfaceName":"net1","parent":"eth0"}}))
                    .reserved_for_pod("pod-a", "pod-uid-a")
                    .build(),
            )
            .unwrap();
        n.node
            .api
            .insert_claim(
                &ClaimBuilder::new("default", &cname)
                    .uid(&cuid)
                    .device(CPU, NODE, &format!("cpu{i}"), "cpus")
                    .build(),
            )
            .unwrap();
        let r = n
            .node
            .kubelet
            .prepare_with(
                NET,
                &[ClaimRef::new("default", &nname, &nuid)],
                Some(version),
            )
            .await
            .unwrap();
        let d = r[&nuid].clone().unwrap();
        assert_eq!(d[0].device_name, format!("eth{i}"));
        assert_eq!(
            d[0].cdi_device_ids,
            vec![format!("{NET}/claim=claim-{nuid}-eth{i}")]
        );
        let r = n
            .node
            .kubelet
            .prepare_with(
                CPU,
                &[ClaimRef::new("default", &cname, &cuid)],
                Some(version),
            )
            .await
            .unwrap();
        assert!(r[&cuid].is_ok(), "{r:?}");
        // The backend saw the merged config and the reserving pod.
        let req = n.net.state.prepared.lock().unwrap()[&nuid].clone();
        assert_eq!(req.reserved_for_pods, vec!["pod-uid-a".to_owned()]);
        assert!(req.devices[0].config_json.contains("interfaceName"));
        // Network data lands in the claim status.
        let status = n
            .node
            .api
            .wait_for("claim status", T, |api| {
                api.claim("default", &nname)
                    .and_then(|c| c.status?.devices)
                    .filter(|d| !d.is_empty())
            })
            .await
            .unwrap();
        assert_eq!(status[0].driver, NET);
        assert_eq!(
            status[0]
                .network_data
                .as_ref()
                .unwrap()
                .interface_name
                .as_deref(),
            Some("net1")
        );
        let u = n
            .node
            .kubelet
            .unprepare_with(
                NET,
                &[ClaimRef::new("default", &nname, &nuid)],
                Some(version),
            )
            .await
            .unwrap();
        assert_eq!(u[&nuid], Ok(()));
        let u = n
            .node
            .kubelet
            .unprepare_with(
                CPU,
                &[ClaimRef::new("default", &cname, &cuid)],
                Some(version),
            )
            .await
            .unwrap();
        assert_eq!(u[&cuid], Ok(()));
    }
    assert!(n.net.prepared().is_empty());
    assert!(n.cpu.prepared().is_empty());
    assert!(n.cdi_files().is_empty(), "{:?}", n.cdi_files());
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_claims_fail_alone() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    let api = &n.node.api;
    api.insert_claim(&runtime_claim(
        "good",
        "good-uid",
        json!({"process":{"env":["A=1"]}}),
    ))
    .unwrap();
    api.insert_claim(&runtime_claim("wrong-uid", "real-uid", json!({})))
        .unwrap();
    api.insert_claim(&runtime_claim(
        "hooks",
        "hooks-uid",
        json!({"hooks":{"prestart":[]}}),
    ))
    .unwrap();
    api.insert_claim(
        &ClaimBuilder::new("default", "elsewhere")
            .uid("elsewhere-uid")
            .device(RUNTIME, "node-2", "spec-edit-0", "edit")
            .config_from_claim(RUNTIME, &[], runtime_config(json!({})))
            .build(),
    )
    .unwrap();
    api.insert_claim(
        &ClaimBuilder::new("default", "pending")
            .uid("pending-uid")
            .unallocated()
            .build(),
    )
    .unwrap();
    let claims = [
        ClaimRef::new("default", "good", "good-uid"),
        ClaimRef::new("default", "wrong-uid", "stale-uid"),
        ClaimRef::new("default", "hooks", "hooks-uid"),
        ClaimRef::new("default", "elsewhere", "elsewhere-uid"),
        ClaimRef::new("default", "pending", "pending-uid"),
        ClaimRef::new("default", "missing", "missing-uid"),
    ];
    let r = n.node.kubelet.prepare(RUNTIME, &claims).await.unwrap();
    assert!(r["good-uid"].is_ok(), "{r:?}");
    let err = |uid: &str| r[uid].clone().unwrap_err();
    assert!(
        err("stale-uid").contains("UID") && err("stale-uid").contains("default/wrong-uid"),
        "{}",
        err("stale-uid")
    );
    assert!(
        err("hooks-uid").contains("spec.hooks") && err("hooks-uid").contains("default/hooks"),
        "{}",
        err("hooks-uid")
    );
    assert!(
        err("elsewhere-uid").contains("node-2"),
        "{}",
        err("elsewhere-uid")
    );
    assert!(
        err("pending-uid").contains("not allocated"),
        "{}",
        err("pending-uid")
    );
    assert!(
        err("missing-uid").contains("not found"),
        "{}",
        err("missing-uid")
    );
    // A backend refusing a config: per-claim error too.
    api.insert_claim(
        &ClaimBuilder::new("default", "badnet")
            .uid("badnet-uid")
            .device(NET, NODE, "eth1", "nic")
            .config_from_claim(
                NET,
                &[],
                json!({"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","invalid":true}),
            )
            .build(),
    )
    .unwrap();
    api.insert_claim(
        &ClaimBuilder::new("default", "goodnet")
            .uid("goodnet-uid")
            .device(NET, NODE, "eth2", "nic")
            .build(),
    )
    .unwrap();
    let r = n
        .node
        .kubelet
        .prepare(
            NET,
            &[
                ClaimRef::new("default", "badnet", "badnet-uid"),
                ClaimRef::new("default", "goodnet", "goodnet-uid"),
            ],
        )
        .await
        .unwrap();
    assert!(
        r["badnet-uid"]
            .clone()
            .unwrap_err()
            .contains("invalid: unknown field"),
        "{r:?}"
    );
    assert!(r["goodnet-uid"].is_ok());
    // A valid config the backend refuses (the fake refuses interface name "invalid").
    api.insert_claim(
        &ClaimBuilder::new("default", "refused")
            .uid("refused-uid")
            .device(NET, NODE, "eth3", "nic")
            .config_from_claim(
                NET,
                &[],
                json!({"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig",
                "netdev":{"kind":"macvlan","interfaceName":"invalid","parent":"eth0"}}),
            )
            .build(),
    )
    .unwrap();
    let r = n
        .node
        .kubelet
        .prepare(NET, &[ClaimRef::new("default", "refused", "refused-uid")])
        .await
        .unwrap();
    let e = r["refused-uid"].clone().unwrap_err();
    assert!(
        e.contains("spec.invalid: unknown field") && e.contains("default/refused"),
        "{e}"
    );
    // Failed claims left nothing behind.
    let files = n.cdi_files();
    assert_eq!(files.len(), 2, "{files:?}");
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unified_keys_refused_on_cgroup_v1_node() {
    let n = TestNode::start(false).await;
    let p = n.launch_registered().await;
    n.node
        .api
        .insert_claim(&runtime_claim(
            "io",
            "io-uid",
            json!({"linux":{"resources":{"unified":{"io.max":"8:0 rbps=1"}}}}),
        ))
        .unwrap();
    n.node
        .api
        .insert_claim(&runtime_claim(
            "pids",
            "pids-uid",
            json!({"linux":{"resources":{"pids":{"limit":10}}}}),
        ))
        .unwrap();
    let r = n
        .node
        .kubelet
        .prepare(
            RUNTIME,
            &[
                ClaimRef::new("default", "io", "io-uid"),
                ClaimRef::new("default", "pids", "pids-uid"),
            ],
        )
        .await
        .unwrap();
    let e = r["io-uid"].clone().unwrap_err();
    assert!(
        e.contains("cgroup v1") && e.contains("spec.linux.resources.unified"),
        "{e}"
    );
    assert!(r["pids-uid"].is_ok());
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_prepare_and_unprepare() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    n.node
        .api
        .insert_claim(&runtime_claim(
            "rt",
            "rt-uid",
            json!({"process":{"env":["X=1"]}}),
        ))
        .unwrap();
    n.node
        .api
        .insert_claim(
            &ClaimBuilder::new("default", "nic")
                .uid("nic-uid")
                .device(NET, NODE, "eth1", "nic")
                .build(),
        )
        .unwrap();
    let rt = [ClaimRef::new("default", "rt", "rt-uid")];
    let nic = [ClaimRef::new("default", "nic", "nic-uid")];
    let before = n.node.kubelet.prepare(RUNTIME, &rt).await.unwrap();
    assert!(n.node.kubelet.prepare(NET, &nic).await.unwrap()["nic-uid"].is_ok());
    p.stop().await.unwrap();
    // A reboot empties the tmpfs CDI dir; the checkpoint survives.
    std::fs::remove_dir_all(&n.config.cdi_dir).unwrap();
    // The netdev backend forgot the claim too (restarted): reconcile re-sends it.
    n.net.state.prepared.lock().unwrap().clear();
    let p = n.launch(n.config.clone()).await;
    for d in [NET, CPU, RUNTIME] {
        n.node.kubelet.wait_for_driver(d, T).await.unwrap();
    }
    assert!(
        n.cdi_spec(RUNTIME, "rt-uid").is_some(),
        "rebuilt from the checkpoint"
    );
    assert!(n.cdi_spec(NET, "nic-uid").is_some());
    n.node
        .api
        .wait_for("backend reconciled", T, |_| {
            n.net
                .prepared()
                .contains(&"nic-uid".to_owned())
                .then_some(())
        })
        .await
        .unwrap();
    // The claim object is gone from the API by now: the answer comes from the checkpoint.
    n.node.api.remove(
        drakit_e2e::apiserver::Resource::ResourceClaims,
        "default",
        "rt",
    );
    let again = n.node.kubelet.prepare(RUNTIME, &rt).await.unwrap();
    assert_eq!(again, before);
    for (d, c, uid) in [(RUNTIME, &rt, "rt-uid"), (NET, &nic, "nic-uid")] {
        assert_eq!(n.node.kubelet.unprepare(d, c).await.unwrap()[uid], Ok(()));
    }
    assert!(n.cdi_files().is_empty(), "{:?}", n.cdi_files());
    assert!(n.net.prepared().is_empty());
    p.stop().await.unwrap();
    // And nothing comes back after another restart.
    let p = n.launch(n.config.clone()).await;
    n.node.kubelet.wait_for_driver(RUNTIME, T).await.unwrap();
    assert!(n.cdi_files().is_empty());
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_unavailable_gives_clear_error_then_recovers() {
    let mut n = TestNode::start(true).await;
    n.config.api_budget = Duration::from_secs(2);
    let p = n.launch_registered().await;
    n.node
        .api
        .insert_claim(&runtime_claim("a", "a-uid", json!({})))
        .unwrap();
    let c = [ClaimRef::new("default", "a", "a-uid")];
    n.node.api.go_down();
    let r = n.node.kubelet.prepare(RUNTIME, &c).await.unwrap();
    let e = r["a-uid"].clone().unwrap_err();
    assert!(e.contains("unavailable") && e.contains("default/a"), "{e}");
    n.node.api.come_back().await.unwrap();
    // Down for a while, then back, within the budget: retries succeed.
    n.node.api.fail_next(
        3,
        Fault::status(500)
            .method("GET")
            .path_contains("/resourceclaims/a"),
    );
    let r = n.node.kubelet.prepare(RUNTIME, &c).await.unwrap();
    assert!(r["a-uid"].is_ok(), "{r:?}");
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_published_split_updated_and_restored() {
    let n = TestNode::start(true).await;
    n.net.set_devices(300, "eth");
    let p = n.launch_registered().await;
    let api = &n.node.api;
    let net_slices = |api: &drakit_e2e::apiserver::ApiServerSim| {
        let mut v: Vec<_> = api
            .slices()
            .into_iter()
            .filter(|s| s.spec.driver == NET)
            .collect();
        v.sort_by_key(|s| s.metadata.name.clone());
        v
    };
    let slices = api
        .wait_for("3 net slices", T, |api| {
            let v = net_slices(api);
            (v.len() == 3
                && v.iter()
                    .map(|s| s.spec.devices.as_ref().map_or(0, Vec::len))
                    .sum::<usize>()
                    == 300)
                .then_some(v)
        })
        .await
        .unwrap();
    let node_uid = api.node(NODE).unwrap().metadata.uid.unwrap();
    let g0 = slices[0].spec.pool.generation;
    for s in &slices {
        assert!(s.spec.devices.as_ref().unwrap().len() <= 128);
        assert_eq!(s.spec.pool.resource_slice_count, 3);
        assert_eq!(s.spec.pool.generation, g0);
        assert_eq!(s.spec.node_name.as_deref(), Some(NODE));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", node_uid.as_str())
        );
    }
    // The runtime driver's shared device is published as slots.
    api.wait_for("runtime slots", T, |api| {
        api.slices().into_iter().find(|s| {
            s.spec.driver == RUNTIME && s.spec.devices.as_ref().is_some_and(|d| d.len() == 16)
        })
    })
    .await
    .unwrap();
    // Inventory change: fewer devices → 2 slices, the third deleted, generation bumped.
    n.net.set_devices(200, "eth");
    let slices = api
        .wait_for("2 net slices", T, |api| {
            let v = net_slices(api);
            (v.len() == 2
                && v.iter()
                    .all(|s| s.spec.pool.generation > g0 && s.spec.pool.resource_slice_count == 2))
            .then_some(v)
        })
        .await
        .unwrap();
    let g1 = slices[0].spec.pool.generation;
    // Deleted under us (as the kubelet's wipe does): re-published.
    let name = slices[1].metadata.name.clone().unwrap();
    let old_uid = slices[1].metadata.uid.clone();
    assert!(api.remove(drakit_e2e::apiserver::Resource::ResourceSlices, "", &name));
    let again = api
        .wait_for("re-published", T, |api| {
            api.slice(&name).filter(|s| s.metadata.uid != old_uid)
        })
        .await
        .unwrap();
    assert!(again.spec.pool.generation >= g1);
    assert_eq!(again.spec.devices, slices[1].spec.devices);
    // Field manager stays the same across applies.
    assert!(
        api.requests_matching("PATCH", "/resourceslices/")
            .iter()
            .all(
                |r| r.param("fieldManager") == Some("drakit-kubelet-plugin/net.drakit.dev")
                    || r.path.contains("runtime")
                    || r.path.contains("cpu")
            )
    );
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_streams_both_versions() {
    let n = TestNode::start(true).await;
    let p = n.launch_registered().await;
    for v in [HealthVersion::V1alpha1, HealthVersion::V1] {
        let w = n.node.kubelet.watch_health(NET, v).await.unwrap();
        // A report with the inventory and at least one periodic resend after it (resend is
        // 1 s here; under load the backend's first inventory may come after a resend).
        let mut want = 2;
        let updates = loop {
            let u = w.wait_for_updates(want, T).await.unwrap();
            if u.iter()
                .position(|x| x.devices.len() == 4)
                .is_some_and(|i| u.len() > i + 1)
            {
                break u;
            }
            want = u.len() + 1;
        };
        let last = updates.last().unwrap();
        assert_eq!(last.devices.len(), 4, "{updates:?}");
        assert_eq!(last.devices[0].pool_name, NODE);
        assert_eq!(last.devices[0].health, drakit_e2e::kubelet::Health::Healthy);
    }
    p.stop().await.unwrap();
}

/// Stop hands the checkpoints back at once, even with the kubelet's health streams still open:
/// the next instance in the same process (or a restart that reuses the state dir) opens every
/// driver's checkpoint without `Locked`, and stop does not sit out the drain grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_releases_every_checkpoint_with_health_streams_open() {
    let n = TestNode::start(true).await;
    for round in 0..5 {
        let p = n.launch_registered().await;
        let mut watches = Vec::new();
        for d in [NET, CPU, RUNTIME] {
            watches.push(
                n.node
                    .kubelet
                    .watch_health(d, HealthVersion::V1)
                    .await
                    .unwrap(),
            );
        }
        for w in &watches {
            w.wait_for_updates(1, T).await.unwrap();
        }
        let t0 = std::time::Instant::now();
        p.stop().await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "round {round}: stop waited {:?} for open health streams",
            t0.elapsed()
        );
        for d in [NET, CPU, RUNTIME] {
            let j = drakit_kubelet_plugin::state::open_checkpoint(
                &drakit_kubelet_plugin::state::StateOptions {
                    dir: n.config.state_dir.join(d),
                    driver: d.into(),
                    boot_id: drakit_kubelet_plugin::state::read_boot_id(&n.config.proc_root),
                    durability: drakit_types::checkpoint::Durability::None,
                    shared: false,
                },
            );
            assert!(j.is_ok(), "round {round}: {d}: {:?}", j.err());
        }
        drop(watches);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_with_two_instances() {
    let n = TestNode::start(true).await;
    let mut a = n.config.clone();
    a.rolling_update_pod_uid = Some("pod-old".into());
    let mut b = n.config.clone();
    b.rolling_update_pod_uid = Some("pod-new".into());
    let old = n.launch(a).await;
    let reg_old = n.node.kubelet.wait_for_driver(RUNTIME, T).await.unwrap();
    assert!(
        reg_old.endpoint.ends_with("dra-pod-old.sock"),
        "{reg_old:?}"
    );
    n.node
        .api
        .insert_claim(&runtime_claim("one", "one-uid", json!({})))
        .unwrap();
    n.node
        .api
        .insert_claim(&runtime_claim("two", "two-uid", json!({})))
        .unwrap();
    assert!(
        n.node
            .kubelet
            .prepare(RUNTIME, &[ClaimRef::new("default", "one", "one-uid")])
            .await
            .unwrap()["one-uid"]
            .is_ok()
    );
    let new = n.launch(b).await;
    n.node
        .kubelet
        .wait_for_event(T, |e| matches!(e, drakit_e2e::kubelet::RegistrationEvent::Registered(r) if r.driver == RUNTIME && r.endpoint.ends_with("dra-pod-new.sock")))
        .await
        .unwrap();
    // Both registration sockets exist side by side.
    assert!(
        n.config
            .registry_dir
            .join(format!("{RUNTIME}-pod-old-reg.sock"))
            .exists()
    );
    assert!(
        n.config
            .registry_dir
            .join(format!("{RUNTIME}-pod-new-reg.sock"))
            .exists()
    );
    assert!(
        n.node
            .kubelet
            .prepare(RUNTIME, &[ClaimRef::new("default", "two", "two-uid")])
            .await
            .unwrap()["two-uid"]
            .is_ok()
    );
    // The old instance leaves; the new one serves and knows the old one's claim.
    old.stop().await.unwrap();
    assert!(
        !n.config
            .registry_dir
            .join(format!("{RUNTIME}-pod-old-reg.sock"))
            .exists()
    );
    let u = n
        .node
        .kubelet
        .unprepare(
            RUNTIME,
            &[
                ClaimRef::new("default", "one", "one-uid"),
                ClaimRef::new("default", "two", "two-uid"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(u["one-uid"], Ok(()));
    assert_eq!(u["two-uid"], Ok(()));
    assert!(n.cdi_spec(RUNTIME, "one-uid").is_none());
    assert!(n.cdi_spec(RUNTIME, "two-uid").is_none());
    new.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_calls() {
    let mut n = TestNode::start(true).await;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    n.config.metrics_addr = Some(addr);
    let p = n.launch_registered().await;
    n.node
        .api
        .insert_claim(&runtime_claim("m", "m-uid", json!({})))
        .unwrap();
    assert!(
        n.node
            .kubelet
            .prepare(RUNTIME, &[ClaimRef::new("default", "m", "m-uid")])
            .await
            .unwrap()["m-uid"]
            .is_ok()
    );
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let m = get("/metrics").await;
    assert!(
        m.contains("drakit_prepare_claims_total{driver=\"runtime.drakit.dev\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("drakit_prepare_duration_seconds_count{driver=\"runtime.drakit.dev\"} 1"),
        "{m}"
    );
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_registration_is_retried_then_fatal() {
    use drakit_e2e::kubelet::{KubeletSim, KubeletSimConfig};
    let n = TestNode::start(true).await;
    // A kubelet that speaks no DRAPlugin version this plugin offers: it rejects.
    let reg = n.tmp.path().join("other-registry");
    std::fs::create_dir_all(&reg).unwrap();
    let mut kc = KubeletSimConfig::new(&reg);
    kc.supported_versions = vec![];
    let kubelet = KubeletSim::start(kc).await.unwrap();
    let mut config = n.config.clone();
    config.registry_dir = reg.clone();
    config.drivers.retain(|d| d.name == RUNTIME);
    config.registration_retries = 1;
    config.registration_retry_delay = Duration::from_millis(50);
    let p = n.launch(config).await;
    let first = kubelet
        .wait_for_rejection(format!("{RUNTIME}-reg.sock"), T)
        .await
        .unwrap();
    assert!(!first.is_empty());
    // Re-offered once, rejected again: the plugin gives up with an error naming the driver.
    let mut p = p;
    let r = match tokio::time::timeout(T, &mut p.task).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!(
            "plugin still running; kubelet events: {:#?}",
            kubelet.events()
        ),
    };
    let e = r.unwrap_err().to_string();
    assert!(e.contains(RUNTIME) && e.contains("rejected"), "{e}");
    assert!(!reg.join(format!("{RUNTIME}-reg.sock")).exists());
    kubelet.stop();
}

/// `--policy-file`: the runtime driver checks claims against the admin's policy (the file
/// drakit-nri also enforces), not only the built-in default; a bad file stops start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_policy_file_is_the_one_enforced_at_prepare() {
    let mut n = TestNode::start(true).await;
    let policy = n.config.state_dir.with_file_name("policy.yaml");
    std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
    // Environment edits only: the built-in default would refuse them and allow io.max.
    std::fs::write(
        &policy,
        "apiVersion: drakit.dev/v1alpha1\nkind: RuntimeSpecPolicy\ndefault:\n  allowedFields: [process.env]\n",
    )
    .unwrap();
    n.config.runtime_policy_file = Some(policy.clone());
    let p = n.launch_registered().await;
    let env = json!({"process":{"env":["TEAM=a"]}});
    let io = json!({"linux":{"resources":{"unified":{"io.max":"8:0 rbps=1"}}}});
    n.node
        .api
        .insert_claim(&runtime_claim("env", "env-uid", env))
        .unwrap();
    n.node
        .api
        .insert_claim(&runtime_claim("io", "io-uid", io))
        .unwrap();
    let r = n
        .node
        .kubelet
        .prepare(
            RUNTIME,
            &[
                ClaimRef::new("default", "env", "env-uid"),
                ClaimRef::new("default", "io", "io-uid"),
            ],
        )
        .await
        .unwrap();
    assert!(r["env-uid"].is_ok(), "{:?}", r["env-uid"]);
    let e = r["io-uid"].clone().unwrap_err();
    assert!(
        e.contains("claim default/io (io-uid)")
            && e.contains("spec.linux")
            && e.contains("not allowed by the node policy"),
        "{e}"
    );
    assert!(n.cdi_spec(RUNTIME, "env-uid").is_some());
    assert!(n.cdi_spec(RUNTIME, "io-uid").is_none());
    p.stop().await.unwrap();

    // A policy file that does not parse: start-up fails naming the file and the field.
    std::fs::write(
        &policy,
        "apiVersion: drakit.dev/v1alpha1\nkind: RuntimeSpecPolicy\ndefault:\n  allowedFieldz: [process.env]\n",
    )
    .unwrap();
    let client = drakit_kubelet_plugin::plugin::kube_client(n.config.kubeconfig.as_deref())
        .await
        .unwrap();
    let err = match drakit_kubelet_plugin::plugin::Plugin::start(n.config.clone(), client).await {
        Ok(_) => panic!("a malformed policy file must stop start-up"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&policy.display().to_string()) && err.contains("allowedFieldz"),
        "{err}"
    );
    // A missing file likewise.
    n.config.runtime_policy_file = Some(policy.with_file_name("absent.yaml"));
    let client = drakit_kubelet_plugin::plugin::kube_client(n.config.kubeconfig.as_deref())
        .await
        .unwrap();
    let err = match drakit_kubelet_plugin::plugin::Plugin::start(n.config.clone(), client).await {
        Ok(_) => panic!("a missing policy file must stop start-up"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("absent.yaml"), "{err}");
}
