//! The rtnetlink facade against the real kernel, each test in fresh namespaces ("host" + "pod").

mod common;

use common::TestNs;
use drakit_netdev::addr::{IpNet, Mac};
use drakit_netdev::netlink::real::RtNetlink;
use drakit_netdev::netlink::{
    LinkChange, LinkId, LinkKind, MacvlanMode, Netlink, NetlinkError, NewLink, RouteSpec,
};

fn pair() -> Option<(TestNs, TestNs)> {
    let h = TestNs::create("h")?;
    let p = TestNs::create("p")?;
    Some((h, p))
}

/// A veth pair in the fake host namespace to act as an uplink/parent NIC.
fn uplink(h: &TestNs) {
    assert!(
        !h.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"])
            .starts_with("ERR")
    );
    assert!(!h.ip(&["link", "set", "up0", "up"]).starts_with("ERR"));
    assert!(!h.ip(&["link", "set", "up0p", "up"]).starts_with("ERR"));
}

fn new(name: &str, kind: LinkKind) -> NewLink {
    NewLink {
        name: name.into(),
        kind,
        mtu: None,
        mac: None,
        up: false,
    }
}

#[tokio::test]
async fn macvlan_create_move_configure_delete() {
    let Some((h, p)) = pair() else { return };
    uplink(&h);
    let host = RtNetlink::open(&h.path()).await.unwrap();
    let pod = RtNetlink::open(&p.path()).await.unwrap();
    let parent = host
        .find_link(&LinkId::Name("up0".into()))
        .await
        .unwrap()
        .unwrap();
    let mut req = new(
        "dkmv0",
        LinkKind::Macvlan {
            parent: parent.index,
            mode: MacvlanMode::Bridge,
        },
    );
    req.mtu = Some(1400);
    let idx = host.create_link(&req).await.unwrap();
    host.set_link(
        idx,
        &LinkChange {
            alias: Some("drakit:test".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let l = host.find_link(&LinkId::Index(idx)).await.unwrap().unwrap();
    assert_eq!(l.kind.as_deref(), Some("macvlan"));
    assert_eq!(l.alias.as_deref(), Some("drakit:test"));
    assert_eq!(l.mtu, 1400);

    host.move_link(idx, &host.open_target(&p.path()).unwrap(), "net1")
        .await
        .unwrap();
    assert_eq!(h.link_names(), vec!["lo", "up0", "up0p"]);
    let inpod = pod
        .find_link(&LinkId::Name("net1".into()))
        .await
        .unwrap()
        .unwrap();
    let mac = Mac([0x02, 0, 0, 0, 0x11, 0x22]);
    pod.set_link(
        inpod.index,
        &LinkChange {
            mac: Some(mac),
            mtu: Some(1300),
            up: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a: IpNet = "10.99.0.2/24".parse().unwrap();
    pod.add_address(inpod.index, a).await.unwrap();
    pod.add_route(&RouteSpec {
        metric: Some(77),
        dst: "10.100.0.0/16".parse().unwrap(),
        gateway: Some("10.99.0.1".parse().unwrap()),
        oif: inpod.index,
    })
    .await
    .unwrap();
    assert!(pod.addresses(inpod.index).await.unwrap().contains(&a));
    let routes = p.ip(&["route", "show", "10.100.0.0/16"]);
    assert!(routes.contains("via 10.99.0.1"), "{routes}");
    assert!(
        routes.contains("metric 77"),
        "route metric not applied: {routes}"
    );
    let l = pod.find_link(&LinkId::Mac(mac)).await.unwrap().unwrap();
    assert!(l.up);
    assert_eq!(l.mtu, 1300);
    assert_eq!(l.name, "net1");

    pod.delete_link(inpod.index).await.unwrap();
    assert_eq!(p.link_names(), vec!["lo"]);
    assert_eq!(h.link_names(), vec!["lo", "up0", "up0p"]);
}

#[tokio::test]
async fn veth_pair_pod_end_moved_and_torn_down() {
    let Some((h, p)) = pair() else { return };
    let host = RtNetlink::open(&h.path()).await.unwrap();
    let pod = RtNetlink::open(&p.path()).await.unwrap();
    let br = host
        .create_link(&new("dkbr0", LinkKind::Bridge))
        .await
        .unwrap();
    let idx = host
        .create_link(&new(
            "dkvp0",
            LinkKind::Veth {
                peer: "dkvh0".into(),
            },
        ))
        .await
        .unwrap();
    let hostend = host
        .find_link(&LinkId::Name("dkvh0".into()))
        .await
        .unwrap()
        .unwrap();
    host.set_link(
        hostend.index,
        &LinkChange {
            master: Some(br),
            up: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        host.find_link(&LinkId::Index(hostend.index))
            .await
            .unwrap()
            .unwrap()
            .master,
        Some(br)
    );
    host.move_link(idx, &host.open_target(&p.path()).unwrap(), "eth1")
        .await
        .unwrap();
    let e = pod
        .find_link(&LinkId::Name("eth1".into()))
        .await
        .unwrap()
        .unwrap();
    pod.add_address(e.index, "fd00:99::2/64".parse().unwrap())
        .await
        .unwrap();
    pod.set_link(
        e.index,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(p.link_names(), vec!["eth1", "lo"]);
    // Deleting the host end destroys the pod end.
    host.delete_link(hostend.index).await.unwrap();
    host.delete_link(br).await.unwrap();
    assert_eq!(p.link_names(), vec!["lo"]);
    assert_eq!(h.link_names(), vec!["lo"]);
}

#[tokio::test]
async fn host_device_moved_into_pod_and_back_with_name_restored() {
    let Some((h, p)) = pair() else { return };
    uplink(&h);
    let host = RtNetlink::open(&h.path()).await.unwrap();
    let pod = RtNetlink::open(&p.path()).await.unwrap();
    let dev = host
        .find_link(&LinkId::Name("up0".into()))
        .await
        .unwrap()
        .unwrap();
    host.move_link(dev.index, &host.open_target(&p.path()).unwrap(), "net0")
        .await
        .unwrap();
    assert_eq!(h.link_names(), vec!["lo", "up0p"]);
    let inpod = pod
        .find_link(&LinkId::Mac(dev.mac.unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inpod.name, "net0");
    pod.move_link(inpod.index, &pod.open_target(&h.path()).unwrap(), "up0")
        .await
        .unwrap();
    assert_eq!(h.link_names(), vec!["lo", "up0", "up0p"]);
    assert_eq!(p.link_names(), vec!["lo"]);
}

#[tokio::test]
async fn kinds_this_kernel_may_lack() {
    let Some((h, p)) = pair() else { return };
    uplink(&h);
    let host = RtNetlink::open(&h.path()).await.unwrap();
    let parent = host
        .find_link(&LinkId::Name("up0".into()))
        .await
        .unwrap()
        .unwrap();
    for kind in [
        LinkKind::Dummy,
        LinkKind::Ipvlan {
            parent: parent.index,
            mode: drakit_netdev::netlink::IpvlanMode::L2,
        },
    ] {
        let name = format!("dk{}", kind.kernel_kind());
        match host.create_link(&new(&name, kind.clone())).await {
            Ok(idx) => {
                host.move_link(idx, &host.open_target(&p.path()).unwrap(), "net9")
                    .await
                    .unwrap();
                assert_eq!(p.link_names(), vec!["lo", "net9"]);
                let pod = RtNetlink::open(&p.path()).await.unwrap();
                let l = pod
                    .find_link(&LinkId::Name("net9".into()))
                    .await
                    .unwrap()
                    .unwrap();
                pod.delete_link(l.index).await.unwrap();
            }
            Err(e) if e.is_unsupported_kind() => {
                eprintln!(
                    "skipped: {} links: this kernel lacks the kind ({e}); covered by the fake",
                    kind.kernel_kind()
                );
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(h.link_names(), vec!["lo", "up0", "up0p"]);
}

#[tokio::test]
async fn bad_input_gives_clear_errors() {
    let Some((h, p)) = pair() else { return };
    uplink(&h);
    let host = RtNetlink::open(&h.path()).await.unwrap();
    // Parent that does not exist.
    let e = host
        .create_link(&new(
            "dkx0",
            LinkKind::Macvlan {
                parent: 999_999,
                mode: MacvlanMode::Bridge,
            },
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("dkx0"), "{e}");
    // MTU above the parent's.
    let parent = host
        .find_link(&LinkId::Name("up0".into()))
        .await
        .unwrap()
        .unwrap();
    let mut req = new(
        "dkx1",
        LinkKind::Macvlan {
            parent: parent.index,
            mode: MacvlanMode::Bridge,
        },
    );
    req.mtu = Some(parent.mtu + 1000);
    let e = host.create_link(&req).await.unwrap_err();
    assert!(e.errno().is_some(), "{e}");
    assert_eq!(h.link_names(), vec!["lo", "up0", "up0p"]);
    // A namespace that vanished.
    let path = p.path();
    p.delete();
    let e = host.open_target(&path).unwrap_err();
    assert!(matches!(e, NetlinkError::NetnsGone { .. }), "{e}");
    let e = RtNetlink::open(&path).await.unwrap_err();
    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
}

/// One request creates the link in the pod, under its final name, up, with MTU and MAC.
#[tokio::test]
async fn create_in_other_namespace_up_with_mtu_and_mac() {
    let Some((h, p)) = pair() else { return };
    uplink(&h);
    let host = RtNetlink::open(&h.path()).await.unwrap();
    let pod = RtNetlink::open(&p.path()).await.unwrap();
    let parent = host
        .find_link(&LinkId::Name("up0".into()))
        .await
        .unwrap()
        .unwrap();
    let mac = Mac([0x02, 0, 0, 0, 0x33, 0x44]);
    let mut req = new(
        "net1",
        LinkKind::Macvlan {
            parent: parent.index,
            mode: MacvlanMode::Bridge,
        },
    );
    req.mtu = Some(1400);
    req.mac = Some(mac);
    req.up = true;
    host.create_link_in(&req, &pod.self_target().unwrap())
        .await
        .unwrap();
    assert_eq!(h.link_names(), vec!["lo", "up0", "up0p"]);
    let l = pod
        .find_link(&LinkId::Name("net1".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(l.up, "{l:?}");
    assert_eq!((l.mtu, l.mac), (1400, Some(mac)));
    let err = host
        .create_link_in(&req, &pod.self_target().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(drakit_netdev::netlink::EEXIST), "{err}");
}

/// Opening a handle in another namespace leaves the calling thread in its own.
#[tokio::test]
async fn open_returns_the_thread_to_its_namespace() {
    let Some(p) = TestNs::create("ret") else {
        return;
    };
    let own = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let before = own();
    let pod = RtNetlink::open(&p.path()).await.unwrap();
    assert_eq!(own(), before);
    // The handle works in the pod (only lo there), not here.
    let names: Vec<String> = pod
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, vec!["lo"]);
    assert!(
        RtNetlink::open(std::path::Path::new("/nonexistent/ns"))
            .await
            .is_err()
    );
    assert_eq!(own(), before);
}
