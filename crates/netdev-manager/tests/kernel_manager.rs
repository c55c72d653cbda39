//! The manager against the real kernel: a namespace playing the host and one playing the pod,
//! both created per test and always deleted; assertions on both namespaces' link lists.

mod common;

use std::collections::BTreeMap;

use common::TestNs;
use drakit_netdev::inventory::{FoundDevice, HostDevice};
use drakit_netdev::manager::{Manager, ManagerError, ManagerOptions};
use drakit_netdev::netlink::real::RtNetlink;
use drakit_netdev::store::{MemStore, Store};
use drakit_proto::drakit as pb;

fn inventory(h: &TestNs) -> Vec<FoundDevice> {
    let mac = h
        .ip(&["-o", "link", "show", "up0"])
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .map(String::from);
    vec![
        FoundDevice {
            name: "netdev-virtual".into(),
            host: HostDevice::Virtual,
            attributes: BTreeMap::new(),
            capacity: BTreeMap::new(),
            shared: true,
        },
        FoundDevice {
            name: "nic-up0".into(),
            host: HostDevice::Nic {
                ifname: "up0".into(),
                pci: None,
                mac,
            },
            attributes: BTreeMap::new(),
            capacity: BTreeMap::new(),
            shared: false,
        },
    ]
}

async fn setup() -> Option<(TestNs, TestNs, RtNetlink)> {
    let h = TestNs::create("mh")?;
    let p = TestNs::create("mp")?;
    assert!(
        !h.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"])
            .starts_with("ERR")
    );
    assert!(!h.ip(&["link", "set", "up0", "up"]).starts_with("ERR"));
    assert!(
        !h.ip(&[
            "link", "add", "up1", "mtu", "1500", "type", "veth", "peer", "name", "up1p"
        ])
        .starts_with("ERR")
    );
    let host = RtNetlink::open(&h.path()).await.unwrap();
    Some((h, p, host))
}

fn req(uid: &str, device: &str, config: &str, pod: &str) -> pb::PrepareRequest {
    pb::PrepareRequest {
        claim: Some(pb::ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: uid.into(),
        }),
        devices: vec![pb::AllocatedDevice {
            device: device.into(),
            pool: "n".into(),
            config_json: config.into(),
            ..Default::default()
        }],
        reserved_for_pods: vec![pod.into()],
        boot_id: String::new(),
    }
}

fn attach(pod: &str, p: &TestNs) -> pb::AttachPodRequest {
    pb::AttachPodRequest {
        pod_uid: pod.into(),
        netns_path: p.path().display().to_string(),
        ..Default::default()
    }
}

fn detach(pod: &str) -> pb::DetachPodRequest {
    pb::DetachPodRequest {
        pod_uid: pod.into(),
        ..Default::default()
    }
}

const HOST: [&str; 5] = ["lo", "up0", "up0p", "up1", "up1p"];

#[tokio::test]
async fn macvlan_and_veth_attach_detach_leave_nothing() {
    let Some((h, p, host)) = setup().await else {
        return;
    };
    let m = Manager::new(
        host,
        MemStore::default(),
        ManagerOptions::new("n"),
        inventory(&h),
    )
    .unwrap();
    m.prepare(&req(
        "km1",
        "netdev-virtual",
        r#"{"netdev":{"kind":"macvlan","parent":"up0","interfaceName":"net1","mtu":1400,
            "addresses":["10.55.0.2/24"],"routes":[{"destination":"10.56.0.0/16","gateway":"10.55.0.1"}]}}"#,
        "pod-1",
    ))
    .await
    .unwrap();
    m.prepare(&req(
        "km2",
        "netdev-virtual",
        r#"{"netdev":{"kind":"veth","interfaceName":"eth1","addresses":["fd00:55::2/64"]}}"#,
        "pod-1",
    ))
    .await
    .unwrap();
    let a = m.attach_pod(&attach("pod-1", &p)).await.unwrap();
    assert_eq!(a.interfaces.len(), 2);
    assert_eq!(p.link_names(), vec!["eth1", "lo", "net1"]);
    let net1 = p.ip(&["-d", "addr", "show", "net1"]);
    assert!(
        net1.contains("10.55.0.2/24")
            && net1.contains("mtu 1400")
            && net1.contains("macvlan")
            && net1.contains("UP"),
        "{net1}"
    );
    assert!(net1.contains("alias drakit:km1"), "{net1}");
    assert!(
        p.ip(&["route", "show", "10.56.0.0/16"])
            .contains("via 10.55.0.1")
    );
    let mac = p.ip(&["-o", "link", "show", "net1"]);
    let nd = a
        .interfaces
        .iter()
        .find(|i| i.network_data.as_ref().unwrap().interface_name == "net1")
        .unwrap()
        .network_data
        .clone()
        .unwrap();
    assert!(mac.contains(&nd.hardware_address), "{mac} vs {nd:?}");
    assert_eq!(nd.ips, vec!["10.55.0.2/24"]);
    // The veth's host end stays on the host.
    assert_eq!(h.link_names().len(), HOST.len() + 1);

    let d = m.detach_pod(&detach("pod-1")).await;
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(p.link_names(), vec!["lo"]);
    assert_eq!(h.link_names(), HOST);
    m.unprepare("km1").await.unwrap();
    m.unprepare("km2").await.unwrap();
}

#[tokio::test]
async fn host_device_into_the_pod_and_back_with_its_name() {
    let Some((h, p, host)) = setup().await else {
        return;
    };
    let m = Manager::new(
        host,
        MemStore::default(),
        ManagerOptions::new("n"),
        inventory(&h),
    )
    .unwrap();
    m.prepare(&req(
        "kh1",
        "nic-up0",
        r#"{"netdev":{"kind":"host-device","interfaceName":"data0","addresses":["192.0.2.7/24"]}}"#,
        "pod-2",
    ))
    .await
    .unwrap();
    m.attach_pod(&attach("pod-2", &p)).await.unwrap();
    assert_eq!(p.link_names(), vec!["data0", "lo"]);
    assert_eq!(h.link_names(), vec!["lo", "up0p", "up1", "up1p"]);
    let d = m.detach_pod(&detach("pod-2")).await;
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(p.link_names(), vec!["lo"]);
    assert_eq!(h.link_names(), HOST);
    assert!(!h.ip(&["-d", "link", "show", "up0"]).contains("alias"));
    m.unprepare("kh1").await.unwrap();
}

#[tokio::test]
async fn bad_input_on_the_real_kernel_leaves_no_link() {
    let Some((h, p, host)) = setup().await else {
        return;
    };
    let m = Manager::new(
        host,
        MemStore::default(),
        ManagerOptions::new("n"),
        inventory(&h),
    )
    .unwrap();
    assert!(
        !p.ip(&[
            "link", "add", "net1", "type", "veth", "peer", "name", "other"
        ])
        .starts_with("ERR")
    );
    let cases = [
        (
            "b1",
            r#"{"netdev":{"kind":"macvlan","parent":"up0","interfaceName":"net1"}}"#,
            "already exists",
        ),
        (
            "b2",
            r#"{"netdev":{"kind":"macvlan","parent":"missing0","interfaceName":"net2"}}"#,
            "missing0",
        ),
        (
            "b3",
            r#"{"netdev":{"kind":"macvlan","parent":"up1","interfaceName":"net3","mtu":9000}}"#,
            "b3",
        ),
        (
            "b4",
            r#"{"netdev":{"kind":"veth","interfaceName":"net1"}}"#,
            "already exists",
        ),
    ];
    for (i, (uid, cfg, needle)) in cases.iter().enumerate() {
        let pod = format!("bp{i}");
        m.prepare(&req(uid, "netdev-virtual", cfg, &pod))
            .await
            .unwrap();
        let e = m.attach_pod(&attach(&pod, &p)).await.unwrap_err();
        assert!(e.to_string().contains(needle), "{uid}: {e}");
        assert_eq!(p.link_names(), vec!["lo", "net1", "other"], "{uid}");
        assert_eq!(h.link_names(), HOST, "{uid}");
        m.unprepare(uid).await.unwrap();
    }
    // A namespace that vanished.
    let gone = TestNs::create("gone").unwrap();
    let gone_path = gone.path();
    gone.delete();
    m.prepare(&req(
        "b5",
        "netdev-virtual",
        r#"{"netdev":{"kind":"veth","interfaceName":"net5"}}"#,
        "pod-g",
    ))
    .await
    .unwrap();
    let mut r = attach("pod-g", &p);
    r.netns_path = gone_path.display().to_string();
    let e = m.attach_pod(&r).await.unwrap_err();
    assert!(
        matches!(e, ManagerError::Netlink { .. }) && e.to_string().contains("gone"),
        "{e}"
    );
    assert_eq!(h.link_names(), HOST);
}

#[tokio::test]
async fn crash_between_create_and_move_then_restart_removes_the_orphan() {
    let Some((h, p, host)) = setup().await else {
        return;
    };
    let store = MemStore::default();
    let mut o = ManagerOptions::new("n");
    o.crash_after_create = true;
    let m = Manager::new(host.clone(), store.clone(), o, inventory(&h)).unwrap();
    // veth: created on the host, then moved; "killed" in between.
    m.prepare(&req(
        "kc1",
        "netdev-virtual",
        r#"{"netdev":{"kind":"veth","interfaceName":"net1"}}"#,
        "pod-c",
    ))
    .await
    .unwrap();
    assert!(matches!(
        m.attach_pod(&attach("pod-c", &p)).await,
        Err(ManagerError::Crash { .. })
    ));
    // macvlan: created directly in the pod, "killed" before it was configured.
    let cfg = r#"{"netdev":{"kind":"macvlan","parent":"up0","interfaceName":"net2","addresses":["10.9.9.2/24"]}}"#;
    m.prepare(&req("kc2", "netdev-virtual", cfg, "pod-d"))
        .await
        .unwrap();
    assert!(matches!(
        m.attach_pod(&attach("pod-d", &p)).await,
        Err(ManagerError::Crash { .. })
    ));
    drop(m);
    assert_eq!(
        h.link_names().len(),
        HOST.len() + 2,
        "the orphan veth pair exists"
    );
    assert_eq!(
        p.link_names(),
        vec!["lo", "net2"],
        "the half-configured macvlan exists"
    );
    assert_eq!(store.load().unwrap().len(), 2);

    let m = Manager::new(host, store, ManagerOptions::new("n"), inventory(&h)).unwrap();
    let rep = m.reconcile().await.unwrap();
    assert!(!rep.removed.is_empty() && rep.errors.is_empty(), "{rep:?}");
    assert_eq!(h.link_names(), HOST);
    m.attach_pod(&attach("pod-c", &p)).await.unwrap();
    // The marked leftover in the pod is adopted by replacing it.
    m.attach_pod(&attach("pod-d", &p)).await.unwrap();
    assert_eq!(p.link_names(), vec!["lo", "net1", "net2"]);
    assert!(p.ip(&["addr", "show", "net2"]).contains("10.9.9.2/24"));
    m.unprepare("kc1").await.unwrap();
    m.unprepare("kc2").await.unwrap();
    assert_eq!(p.link_names(), vec!["lo"]);
    assert_eq!(h.link_names(), HOST);
}
