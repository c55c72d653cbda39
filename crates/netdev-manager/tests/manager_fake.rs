//! Claim lifecycle against the in-memory netlink fake: every kind, every attach mode, bad input,
//! rollback and crash recovery.

use std::collections::BTreeMap;
use std::path::PathBuf;

use drakit_netdev::addr::Mac;
use drakit_netdev::inventory::{CharDev, FoundDevice, HostDevice};
use drakit_netdev::manager::{Manager, ManagerError, ManagerOptions};
use drakit_netdev::netlink::fake::{FakeNetlink, HOST};
use drakit_netdev::netlink::{LinkId, Netlink};
use drakit_netdev::store::{MemStore, Store};
use drakit_proto::drakit as pb;

const POD: &str = "/fake/pod1";

fn dev(name: &str, host: HostDevice) -> FoundDevice {
    FoundDevice {
        name: name.into(),
        host,
        attributes: BTreeMap::new(),
        capacity: BTreeMap::new(),
        shared: false,
    }
}

fn inventory() -> Vec<FoundDevice> {
    vec![
        dev("netdev-virtual", HostDevice::Virtual),
        dev(
            "nic-eth9",
            HostDevice::Nic {
                ifname: "eth9".into(),
                pci: Some("0000:02:00.0".into()),
                mac: Some("3c:00:00:00:00:09".into()),
            },
        ),
        dev(
            "vf-0000-3b-02-1",
            HostDevice::Vf {
                ifname: Some("ens1f0v1".into()),
                pci: "0000:3b:02.1".into(),
                pf: "ens1f0".into(),
                vf_index: 1,
                mac: Some("02:00:00:00:00:21".into()),
            },
        ),
        dev(
            "rdma-mlx5-0",
            HostDevice::Rdma {
                hca: "mlx5_0".into(),
                pci: None,
                netdev: Some("ens3f0".into()),
                roce: true,
                char_devs: vec![CharDev {
                    path: "/dev/infiniband/uverbs0".into(),
                    major: 231,
                    minor: 192,
                }],
            },
        ),
    ]
}

struct World {
    fake: FakeNetlink,
    store: MemStore,
    eth0: u32,
}

fn world() -> World {
    let fake = FakeNetlink::new_world();
    let eth0 = fake.add_physical(HOST, "eth0", Mac([0x3c, 0, 0, 0, 0, 1]), 1500);
    fake.add_physical(HOST, "eth9", Mac([0x3c, 0, 0, 0, 0, 9]), 9000);
    fake.add_physical(HOST, "ens1f0", Mac([0xb4, 0, 0, 0, 0, 0]), 9000);
    fake.add_physical(HOST, "ens1f0v1", Mac([0x02, 0, 0, 0, 0, 0x21]), 9000);
    fake.add_physical(HOST, "ens3f0", Mac([0x0c, 0, 0, 0, 0, 0x10]), 9000);
    fake.add_ns(POD);
    World {
        fake,
        store: MemStore::default(),
        eth0,
    }
}

fn manager(w: &World, f: impl FnOnce(&mut ManagerOptions)) -> Manager<FakeNetlink, MemStore> {
    let mut o = ManagerOptions::new("node-a");
    o.proc_root = PathBuf::from("/fake/proc");
    f(&mut o);
    Manager::new(w.fake.clone(), w.store.clone(), o, inventory()).unwrap()
}

fn req(uid: &str, device: &str, config: &str, pods: &[&str]) -> pb::PrepareRequest {
    pb::PrepareRequest {
        claim: Some(pb::ClaimRef {
            namespace: "ns".into(),
            name: format!("claim-{uid}"),
            uid: uid.into(),
        }),
        devices: vec![pb::AllocatedDevice {
            requests: vec!["nic".into()],
            pool: "node-a".into(),
            device: device.into(),
            config_json: config.into(),
            ..Default::default()
        }],
        reserved_for_pods: pods.iter().map(|s| s.to_string()).collect(),
        boot_id: String::new(),
    }
}

fn attach(pod_uid: &str) -> pb::AttachPodRequest {
    pb::AttachPodRequest {
        pod_uid: pod_uid.into(),
        netns_path: POD.into(),
        sandbox_id: "sb1".into(),
        ..Default::default()
    }
}

const HOST_LINKS: [&str; 6] = ["ens1f0", "ens1f0v1", "ens3f0", "eth0", "eth9", "lo"];

#[tokio::test]
async fn macvlan_nri_lifecycle() {
    let w = world();
    let m = manager(&w, |_| {});
    let cfg = r#"{"kind":"NetdevConfig","linkKind":"macvlan","mode":"bridge","parent":"eth0","interfaceName":"net1",
        "mtu":1400,"mac":"02:aa:00:00:00:01","addresses":["10.1.0.5/24","2001:DB8::5/64"],
        "routes":[{"destination":"10.2.0.0/16","gateway":"10.1.0.1"}]}"#;
    let resp = m
        .prepare(&req("u1", "netdev-virtual", cfg, &["pod-a"]))
        .await
        .unwrap();
    assert_eq!(resp.devices.len(), 1);
    assert_eq!(
        resp.devices[0]
            .network_data
            .as_ref()
            .unwrap()
            .interface_name,
        "net1"
    );
    // Idempotent.
    assert_eq!(
        m.prepare(&req("u1", "netdev-virtual", cfg, &["pod-a"]))
            .await
            .unwrap(),
        resp
    );
    assert_eq!(w.store.load().unwrap().len(), 1);

    let a = m.attach_pod(&attach("pod-a")).await.unwrap();
    assert_eq!(a.interfaces.len(), 1);
    let nd = a.interfaces[0].network_data.clone().unwrap();
    assert_eq!(nd.ips, vec!["10.1.0.5/24", "2001:db8::5/64"]);
    assert_eq!(nd.hardware_address, "02:aa:00:00:00:01");
    let pod = w.fake.handle_for(POD);
    let l = pod
        .find_link(&LinkId::Name("net1".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(l.up);
    assert_eq!(l.mtu, 1400);
    assert_eq!(l.kind.as_deref(), Some("macvlan"));
    assert_eq!(l.alias.as_deref(), Some("drakit:u1"));
    assert_eq!(l.link, Some(w.eth0));
    assert_eq!(pod.routes().len(), 1);
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
    // Attaching again (NRI retry) is a no-op, and says the device was already in place.
    let mut again = a.clone();
    again.interfaces[0].already_attached = true;
    assert_eq!(m.attach_pod(&attach("pod-a")).await.unwrap(), again);

    let d = m
        .detach_pod(&pb::DetachPodRequest {
            pod_uid: "pod-a".into(),
            ..Default::default()
        })
        .await;
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert!(w.fake.names_in(POD).is_empty());
    m.unprepare("u1").await.unwrap();
    m.unprepare("u1").await.unwrap();
    m.unprepare("never-seen").await.unwrap();
    assert!(w.store.load().unwrap().is_empty());
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
}

/// An attachment is written without fdatasync: a restart of the daemon finds it, a reboot (which
/// takes the pod's namespace with it) goes back to the claim as prepared. Detach likewise.
#[tokio::test]
async fn attachments_survive_a_restart_not_a_reboot() {
    let w = world();
    let m = manager(&w, |_| {});
    let cfg = r#"{"netdev":{"kind":"macvlan","parent":"eth0","interfaceName":"net1"}}"#;
    m.prepare(&req("r1", "netdev-virtual", cfg, &["pod-r"]))
        .await
        .unwrap();
    let a = m.attach_pod(&attach("pod-r")).await.unwrap();
    drop(m);
    let m = manager(&w, |_| {});
    let rec = m.claim("r1").await.unwrap();
    assert_eq!(rec.devices[0].attached.as_ref().unwrap().pod_uid, "pod-r");
    let mut again = a.clone();
    again.interfaces[0].already_attached = true;
    assert_eq!(m.attach_pod(&attach("pod-r")).await.unwrap(), again);
    drop(m);
    w.store.reboot();
    let m = manager(&w, |_| {});
    let rec = m.claim("r1").await.unwrap();
    assert!(rec.devices[0].attached.is_none(), "{rec:?}");
    m.unprepare("r1").await.unwrap();
    assert!(w.store.load().unwrap().is_empty());
}

#[tokio::test]
async fn host_network_pods_and_shared_claims_are_refused() {
    let w = world();
    let m = manager(&w, |_| {});
    let cfg = r#"{"netdev":{"kind":"dummy","interfaceName":"net1"}}"#;
    let e = m
        .prepare(&req("u2", "netdev-virtual", cfg, &["p1", "p2"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("one pod only"), "{e}");
    m.prepare(&req("u2", "netdev-virtual", cfg, &["p1"]))
        .await
        .unwrap();
    let mut r = attach("p1");
    r.host_network = true;
    let e = m.attach_pod(&r).await.unwrap_err();
    assert!(matches!(e, ManagerError::HostNetwork { .. }), "{e}");
    assert!(w.fake.names_in(POD).is_empty());
    // A pod without claims is fine either way.
    assert!(
        m.attach_pod(&attach("other"))
            .await
            .unwrap()
            .interfaces
            .is_empty()
    );
}

#[tokio::test]
async fn bad_input_leaves_nothing_behind() {
    let w = world();
    let m = manager(&w, |_| {});
    // Name clash in the pod.
    w.fake.handle_for(POD);
    let pod = w.fake.handle_for(POD);
    use drakit_netdev::netlink::{LinkKind, NewLink};
    pod.create_link(&NewLink {
        name: "net1".into(),
        kind: LinkKind::Dummy,
        mtu: None,
        mac: None,
        up: false,
    })
    .await
    .unwrap();
    m.prepare(&req(
        "c1",
        "netdev-virtual",
        r#"{"netdev":{"kind":"macvlan","parent":"eth0","interfaceName":"net1"}}"#,
        &["p1"],
    ))
    .await
    .unwrap();
    let e = m.attach_pod(&attach("p1")).await.unwrap_err();
    assert!(e.to_string().contains("already exists in the pod"), "{e}");
    assert!(e.to_string().contains("c1"), "{e}");
    assert_eq!(w.fake.names_in(POD), ["net1"]);
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
    m.unprepare("c1").await.unwrap();

    // Parent that does not exist.
    m.prepare(&req(
        "c2",
        "netdev-virtual",
        r#"{"netdev":{"kind":"macvlan","parent":"nope0","interfaceName":"net2"}}"#,
        &["p2"],
    ))
    .await
    .unwrap();
    let e = m.attach_pod(&attach("p2")).await.unwrap_err();
    assert!(
        e.to_string().contains("nope0") && e.to_string().contains("parent"),
        "{e}"
    );
    m.unprepare("c2").await.unwrap();

    // MTU above the parent's.
    m.prepare(&req(
        "c3",
        "netdev-virtual",
        r#"{"netdev":{"kind":"macvlan","parent":"eth0","interfaceName":"net3","mtu":9000}}"#,
        &["p3"],
    ))
    .await
    .unwrap();
    let e = m.attach_pod(&attach("p3")).await.unwrap_err();
    assert!(e.to_string().contains("c3"), "{e}");
    m.unprepare("c3").await.unwrap();

    // A namespace that vanished.
    m.prepare(&req(
        "c4",
        "netdev-virtual",
        r#"{"netdev":{"kind":"veth","interfaceName":"net4"}}"#,
        &["p4"],
    ))
    .await
    .unwrap();
    let mut r = attach("p4");
    r.netns_path = "/fake/gone".into();
    let e = m.attach_pod(&r).await.unwrap_err();
    assert!(e.to_string().contains("/fake/gone"), "{e}");
    m.unprepare("c4").await.unwrap();

    // Failure half-way through configuring: rolled back.
    m.prepare(&req(
        "c5",
        "netdev-virtual",
        r#"{"netdev":{"kind":"veth","interfaceName":"net5","addresses":["10.0.0.1/24"]}}"#,
        &["p5"],
    ))
    .await
    .unwrap();
    w.fake.fail_next("add_address");
    assert!(m.attach_pod(&attach("p5")).await.is_err());
    m.unprepare("c5").await.unwrap();

    // Bad config names the field; unknown device.
    let e = m
        .prepare(&req(
            "c6",
            "netdev-virtual",
            r#"{"netdev":{"kind":"macvlan","mode":"sideways"}}"#,
            &[],
        ))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("mode") && e.to_string().contains("c6"),
        "{e}"
    );
    let e = m
        .prepare(&req("c7", "no-such-device", "", &[]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no-such-device"), "{e}");

    assert_eq!(w.fake.names_in(POD), ["net1"]);
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
    assert!(w.store.load().unwrap().is_empty());
}

#[tokio::test]
async fn kinds_the_kernel_here_lacks_dummy_ipvlan_ipoib() {
    let w = world();
    let m = manager(&w, |_| {});
    let ib = w
        .fake
        .add_physical(HOST, "ib0", Mac([0x80, 0, 0, 0, 0, 1]), 4092);
    let _ = ib;
    for (uid, cfg, kind) in [
        (
            "k1",
            r#"{"netdev":{"kind":"dummy","interfaceName":"d0"}}"#,
            "dummy",
        ),
        (
            "k2",
            r#"{"netdev":{"kind":"ipvlan","mode":"l3s","parent":"eth0","interfaceName":"i0"}}"#,
            "ipvlan",
        ),
        (
            "k3",
            r#"{"netdev":{"kind":"ipoib","parent":"ib0","pkey":"0x7fff","interfaceName":"ib1"}}"#,
            "ipoib",
        ),
    ] {
        m.prepare(&req(uid, "netdev-virtual", cfg, &["pk"]))
            .await
            .unwrap();
        let _ = kind;
    }
    let a = m.attach_pod(&attach("pk")).await.unwrap();
    assert_eq!(a.interfaces.len(), 3);
    assert_eq!(w.fake.names_in(POD), ["d0", "i0", "ib1"]);
    let pod = w.fake.handle_for(POD);
    assert_eq!(
        pod.find_link(&LinkId::Name("i0".into()))
            .await
            .unwrap()
            .unwrap()
            .kind
            .as_deref(),
        Some("ipvlan")
    );
    let d = m
        .detach_pod(&pb::DetachPodRequest {
            pod_uid: "pk".into(),
            ..Default::default()
        })
        .await;
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert!(w.fake.names_in(POD).is_empty());
}

#[tokio::test]
async fn veth_host_end_enslaved_to_bridge() {
    let w = world();
    let host = w.fake.handle_for(HOST);
    use drakit_netdev::netlink::{LinkKind, NewLink};
    let br = host
        .create_link(&NewLink {
            name: "br9".into(),
            kind: LinkKind::Bridge,
            mtu: None,
            mac: None,
            up: false,
        })
        .await
        .unwrap();
    let m = manager(&w, |_| {});
    m.prepare(&req(
        "v1",
        "netdev-virtual",
        r#"{"netdev":{"kind":"veth","bridge":"br9","interfaceName":"eth1"}}"#,
        &["pv"],
    ))
    .await
    .unwrap();
    m.attach_pod(&attach("pv")).await.unwrap();
    let hostend = host
        .links()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.name.starts_with("dk"))
        .unwrap();
    assert_eq!(hostend.master, Some(br));
    assert!(hostend.up);
    m.detach_pod(&pb::DetachPodRequest {
        pod_uid: "pv".into(),
        ..Default::default()
    })
    .await;
    assert!(
        host.links()
            .await
            .unwrap()
            .iter()
            .all(|l| !l.name.starts_with("dk"))
    );
    assert!(w.fake.names_in(POD).is_empty());
}

#[tokio::test]
async fn host_device_moved_and_restored_even_when_the_pod_netns_dies() {
    let w = world();
    let m = manager(&w, |_| {});
    m.prepare(&req(
        "h1",
        "nic-eth9",
        r#"{"netdev":{"kind":"host-device","interfaceName":"data0","addresses":["192.0.2.9/24"]}}"#,
        &["ph"],
    ))
    .await
    .unwrap();
    let a = m.attach_pod(&attach("ph")).await.unwrap();
    assert_eq!(
        a.interfaces[0]
            .network_data
            .as_ref()
            .unwrap()
            .hardware_address,
        "3c:00:00:00:00:09"
    );
    assert_eq!(w.fake.names_in(POD), ["data0"]);
    assert!(!w.fake.names_in(HOST).contains(&"eth9".to_string()));
    m.detach_pod(&pb::DetachPodRequest {
        pod_uid: "ph".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
    let l = w
        .fake
        .find_link(&LinkId::Name("eth9".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.alias, None);

    // Again, but the sandbox is removed first: the NIC falls back as "data0".
    m.attach_pod(&attach("ph")).await.unwrap();
    w.fake.remove_ns(POD);
    assert!(w.fake.names_in(HOST).contains(&"data0".to_string()));
    m.unprepare("h1").await.unwrap();
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
}

#[tokio::test]
async fn sriov_vf_settings_go_to_the_pf() {
    let w = world();
    let m = manager(&w, |_| {});
    m.prepare(&req(
        "s1",
        "vf-0000-3b-02-1",
        r#"{"netdev":{"kind":"sriov-vf","interfaceName":"vf0","vlan":100,"trust":true,"spoofchk":false,"mac":"02:bb:00:00:00:01"}}"#,
        &["ps"],
    ))
    .await
    .unwrap();
    m.attach_pod(&attach("ps")).await.unwrap();
    let pf = w
        .fake
        .find_link(&LinkId::Name("ens1f0".into()))
        .await
        .unwrap()
        .unwrap();
    let s = w.fake.vf_settings(pf.index, 1).unwrap();
    assert_eq!(
        (s.vlan, s.trust, s.spoofchk),
        (Some(100), Some(true), Some(false))
    );
    assert_eq!(s.mac.unwrap().to_string(), "02:bb:00:00:00:01");
    assert_eq!(w.fake.names_in(POD), ["vf0"]);
    m.unprepare("s1").await.unwrap();
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
}

#[tokio::test]
async fn rdma_and_roce_edits() {
    let w = world();
    let m = manager(&w, |_| {});
    let r = m
        .prepare(&req(
            "r1",
            "rdma-mlx5-0",
            r#"{"kind":"RdmaConfig"}"#,
            &["pr"],
        ))
        .await
        .unwrap();
    let e = r.devices[0].edits.clone().unwrap();
    assert_eq!(e.device_nodes[0].path, "/dev/infiniband/uverbs0");
    assert_eq!(
        (e.device_nodes[0].major, e.device_nodes[0].minor),
        (231, 192)
    );
    assert!(r.devices[0].network_data.is_none());
    m.unprepare("r1").await.unwrap();
    let r = m
        .prepare(&req(
            "r2",
            "rdma-mlx5-0",
            r#"{"kind":"RoceConfig","interfaceName":"roce0"}"#,
            &["pr"],
        ))
        .await
        .unwrap();
    assert_eq!(r.devices[0].edits.as_ref().unwrap().device_nodes.len(), 1);
    m.attach_pod(&attach("pr")).await.unwrap();
    assert_eq!(w.fake.names_in(POD), ["roce0"]);
    m.unprepare("r2").await.unwrap();
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
}

#[tokio::test]
async fn cdi_mode_checks_the_runtime_and_prepares_the_host_side() {
    let w = world();
    let m = manager(&w, |o| o.runc = "/nonexistent/runc".into());
    let cfg = r#"{"netdev":{"kind":"macvlan","parent":"eth0","interfaceName":"net1","attachMode":"cdi"}}"#;
    let e = m
        .prepare(&req("d1", "netdev-virtual", cfg, &["pd"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("runc >= 1.4"), "{e}");
    assert!(w.store.load().unwrap().is_empty());
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);

    let dir = tempfile::tempdir().unwrap();
    let runc = dir.path().join("runc");
    std::fs::write(
        &runc,
        "#!/bin/sh\necho '{\"linux\":{\"netDevices\":{\"enabled\":true}}}'\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&runc).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&runc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let m = manager(&w, |o| o.runc = runc.clone());
    let r = m
        .prepare(&req("d1", "netdev-virtual", cfg, &["pd"]))
        .await
        .unwrap();
    let nd = &r.devices[0].edits.as_ref().unwrap().net_devices[0];
    assert_eq!(nd.name, "net1");
    assert!(w.fake.names_in(HOST).contains(&nd.host_interface_name));
    m.unprepare("d1").await.unwrap();
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);

    // Physical device in cdi mode: after the sandbox is gone it is back under the pod-side name.
    let cfg = r#"{"netdev":{"kind":"host-device","interfaceName":"data0","attachMode":"cdi"}}"#;
    let r = m
        .prepare(&req("d2", "nic-eth9", cfg, &["pd"]))
        .await
        .unwrap();
    assert_eq!(
        r.devices[0].edits.as_ref().unwrap().net_devices[0].host_interface_name,
        "eth9"
    );
    let host = w.fake.handle_for(HOST);
    let l = host
        .find_link(&LinkId::Name("eth9".into()))
        .await
        .unwrap()
        .unwrap();
    host.set_link(
        l.index,
        &drakit_netdev::netlink::LinkChange {
            name: Some("data0".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    m.unprepare("d2").await.unwrap();
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
}

#[tokio::test]
async fn hook_mode_edit_and_attach_from_oci_state() {
    let w = world();
    let m = manager(&w, |o| {
        o.hook_binary = "/opt/drakit/drakit-oci-hook".into();
        o.hook_socket = "/run/drakit/netdev.sock".into();
    });
    let cfg = r#"{"netdev":{"kind":"veth","interfaceName":"net7","attachMode":"hook","addresses":["10.7.0.2/24"]}}"#;
    let r = m
        .prepare(&req("k1", "netdev-virtual", cfg, &["pod-h"]))
        .await
        .unwrap();
    let h = &r.devices[0].edits.as_ref().unwrap().hooks[0];
    assert_eq!(h.hook_name, "createRuntime");
    assert_eq!(h.path, "/opt/drakit/drakit-oci-hook");
    assert!(
        h.args
            .windows(2)
            .any(|a| a[0] == "--claim-uid" && a[1] == "k1")
    );
    assert!(!h.env.is_empty() && h.timeout.is_some());
    // NRI does not attach hook-mode devices.
    assert!(
        m.attach_pod(&attach("pod-h"))
            .await
            .unwrap()
            .interfaces
            .is_empty()
    );

    w.fake.add_ns("/fake/proc/4242/ns/net");
    let state = r#"{"ociVersion":"1.2.0","id":"c1","status":"creating","pid":4242,"bundle":"/b",
        "annotations":{"io.kubernetes.cri.sandbox-uid":"pod-h","io.kubernetes.cri.sandbox-id":"sb"}}"#;
    let a = m
        .hook_attach(&pb::HookAttachRequest {
            claim_uid: "k1".into(),
            oci_state_json: state.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        a.interfaces[0].network_data.as_ref().unwrap().ips,
        vec!["10.7.0.2/24"]
    );
    assert_eq!(w.fake.names_in("/fake/proc/4242/ns/net"), ["net7"]);
    // Second container of the same pod: same answer (already in place), nothing new.
    let mut b = m
        .hook_attach(&pb::HookAttachRequest {
            claim_uid: "k1".into(),
            oci_state_json: state.into(),
        })
        .await
        .unwrap();
    assert!(b.interfaces[0].already_attached);
    b.interfaces[0].already_attached = false;
    assert_eq!(a, b);
    // Wrong pod, unknown claim, garbage state.
    let other = state.replace("pod-h", "pod-x");
    assert!(
        m.hook_attach(&pb::HookAttachRequest {
            claim_uid: "k1".into(),
            oci_state_json: other
        })
        .await
        .is_err()
    );
    assert!(matches!(
        m.hook_attach(&pb::HookAttachRequest {
            claim_uid: "zz".into(),
            oci_state_json: state.into()
        })
        .await,
        Err(ManagerError::UnknownClaim(_))
    ));
    assert!(
        m.hook_attach(&pb::HookAttachRequest {
            claim_uid: "k1".into(),
            oci_state_json: "{".into()
        })
        .await
        .is_err()
    );
    m.unprepare("k1").await.unwrap();
    assert!(w.fake.names_in("/fake/proc/4242/ns/net").is_empty());
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
}

#[tokio::test]
async fn crash_between_create_and_move_is_cleaned_up_on_restart() {
    let w = world();
    let m = manager(&w, |o| o.crash_after_create = true);
    m.prepare(&req(
        "x1",
        "netdev-virtual",
        r#"{"netdev":{"kind":"veth","interfaceName":"net1"}}"#,
        &["px"],
    ))
    .await
    .unwrap();
    let e = m.attach_pod(&attach("px")).await.unwrap_err();
    assert!(matches!(e, ManagerError::Crash { .. }), "{e}");
    drop(m);
    // Orphans from the "dead" process: the veth pair, marked.
    assert_eq!(w.fake.names_in(HOST).len(), HOST_LINKS.len() + 2);
    // A link of a claim that no longer exists at all.
    let host = w.fake.handle_for(HOST);
    use drakit_netdev::netlink::{LinkChange, LinkKind, NewLink};
    let i = host
        .create_link(&NewLink {
            name: "dk00000000aap".into(),
            kind: LinkKind::Dummy,
            mtu: None,
            mac: None,
            up: false,
        })
        .await
        .unwrap();
    host.set_link(
        i,
        &LinkChange {
            alias: Some("drakit:gone-claim".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let m = manager(&w, |_| {});
    let rep = m.reconcile().await.unwrap();
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
    // The claim is still prepared and now attaches normally.
    m.attach_pod(&attach("px")).await.unwrap();
    assert_eq!(w.fake.names_in(POD), ["net1"]);
    m.unprepare("x1").await.unwrap();
    assert_eq!(w.fake.names_in(HOST), HOST_LINKS);
}
