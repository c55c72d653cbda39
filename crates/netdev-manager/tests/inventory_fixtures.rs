//! Inventory from the checked-in sysfs fixtures (see tests/fixtures/gen.py).

use std::path::PathBuf;

use drakit_netdev::inventory::{
    FoundDevice, HostDevice, InventoryOptions, MAX_ATTRS, PCIE_ROOT_ATTR, VirtualMode,
    is_dns_label, scan, to_proto,
};
use drakit_proto::drakit::attribute::Value;

fn fixture(name: &str) -> InventoryOptions {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    InventoryOptions::new(root.join("sys"), root.join("proc"))
}

fn names(devs: &[FoundDevice]) -> Vec<&str> {
    devs.iter().map(|d| d.name.as_str()).collect()
}

fn s<'a>(d: &'a FoundDevice, k: &str) -> Option<&'a str> {
    match d.attributes.get(k) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn i(d: &FoundDevice, k: &str) -> Option<i64> {
    match d.attributes.get(k) {
        Some(Value::Int(v)) => Some(*v),
        _ => None,
    }
}

fn check_limits(devs: &[FoundDevice]) {
    for d in devs {
        assert!(is_dns_label(&d.name), "{}", d.name);
        assert!(
            d.attributes.len() + d.capacity.len() <= MAX_ATTRS,
            "{}",
            d.name
        );
        for (k, v) in &d.attributes {
            let id = k.rsplit('/').next().unwrap();
            assert!(
                id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{k}"
            );
            if let Value::String(s) = v {
                assert!(s.len() <= 64, "{k}={s}");
            }
        }
    }
}

#[test]
fn dual_port_sriov_nic_with_8_vfs() {
    let devs = scan(&fixture("sriov-nic")).unwrap();
    check_limits(&devs);
    let mut n = names(&devs);
    n.sort();
    let mut expected = vec!["netdev-virtual", "nic-eno2"];
    let vfs: Vec<String> = ["02", "0a"]
        .iter()
        .flat_map(|b| (0..4).map(move |f| format!("vf-0000-3b-{b}-{f}")))
        .collect();
    expected.extend(vfs.iter().map(String::as_str));
    expected.sort();
    // Not published: eno1 (default route), lo, br0, bond0, veth1234, the PFs (VFs enabled).
    assert_eq!(n, expected);

    let vf = devs.iter().find(|d| d.name == "vf-0000-3b-0a-2").unwrap();
    assert_eq!(s(vf, "kind"), Some("sriov-vf"));
    assert_eq!(s(vf, "pfName"), Some("ens1f1"));
    assert_eq!(i(vf, "vfIndex"), Some(2));
    assert_eq!(s(vf, "pciAddress"), Some("0000:3b:0a.2"));
    assert_eq!(s(vf, "vendor"), Some("0x8086"));
    assert_eq!(s(vf, "deviceId"), Some("0x154c"));
    assert_eq!(i(vf, "numaNode"), Some(0));
    assert_eq!(s(vf, PCIE_ROOT_ATTR), Some("pci0000:3a"));
    assert_eq!(s(vf, "ifName"), Some("ens1f1v2"));
    assert_eq!(
        vf.host,
        HostDevice::Vf {
            ifname: Some("ens1f1v2".into()),
            pci: "0000:3b:0a.2".into(),
            pf: "ens1f1".into(),
            vf_index: 2,
            mac: Some("02:00:00:00:01:02".into())
        }
    );

    let nic = devs.iter().find(|d| d.name == "nic-eno2").unwrap();
    assert_eq!(s(nic, "kind"), Some("host-device"));
    assert_eq!(s(nic, PCIE_ROOT_ATTR), Some("pci0000:00"));
    assert_eq!(i(nic, "numaNode"), None, "numa_node -1 means unknown");

    let v = devs.iter().find(|d| d.name == "netdev-virtual").unwrap();
    assert!(v.shared);
    assert_eq!(v.capacity["slots"].value, "128");
    assert_eq!(
        v.capacity["slots"].request_policy.as_ref().unwrap().default,
        "1"
    );

    let inv = to_proto(&devs, 7, "node-a");
    assert_eq!(inv.generation, 7);
    assert_eq!(inv.devices.len(), 10);
    assert!(
        inv.devices
            .iter()
            .any(|d| d.allow_multiple_allocations && d.name == "netdev-virtual")
    );
}

#[test]
fn pre_enumerated_virtual_slots() {
    let mut o = fixture("sriov-nic");
    o.virtual_mode = VirtualMode::Slots(3);
    o.exclude = vec!["eno2".into()];
    let devs = scan(&o).unwrap();
    let n = names(&devs);
    assert!(n.contains(&"virtual-0") && n.contains(&"virtual-2") && !n.contains(&"virtual-3"));
    assert!(!n.contains(&"netdev-virtual") && !n.contains(&"nic-eno2"));
    assert!(devs.iter().all(|d| !d.shared));
}

#[test]
fn infiniband_hca_with_ipoib() {
    let devs = scan(&fixture("ib-hca")).unwrap();
    check_limits(&devs);
    let mut n = names(&devs);
    n.sort();
    assert_eq!(n, vec!["ipoib-ibp94s0", "netdev-virtual", "rdma-mlx5-0"]);
    let r = devs.iter().find(|d| d.name == "rdma-mlx5-0").unwrap();
    assert_eq!(s(r, "type"), Some("rdma"));
    assert_eq!(s(r, "linkLayer"), Some("InfiniBand"));
    assert_eq!(s(r, "portState"), Some("ACTIVE"));
    assert_eq!(s(r, "nodeGuid"), Some("b859:9f03:00a1:b2c3"));
    assert_eq!(s(r, "uverbs"), Some("uverbs0"));
    assert_eq!(s(r, "netdev"), Some("ibp94s0"));
    assert_eq!(i(r, "numaNode"), Some(1));
    assert_eq!(s(r, PCIE_ROOT_ATTR), Some("pci0000:5d"));
    let HostDevice::Rdma {
        char_devs, roce, ..
    } = &r.host
    else {
        panic!("{:?}", r.host)
    };
    assert!(!roce);
    assert_eq!(char_devs[0].path, "/dev/infiniband/uverbs0");
    assert_eq!((char_devs[0].major, char_devs[0].minor), (231, 192));
    assert_eq!(char_devs[1].path, "/dev/infiniband/rdma_cm");
    let ib = devs.iter().find(|d| d.name == "ipoib-ibp94s0").unwrap();
    assert_eq!(s(ib, "kind"), Some("ipoib"));
    assert_eq!(s(ib, "pkey"), Some("0xffff"));
    assert_eq!(s(ib, "rdmaDevice"), Some("mlx5_0"));
    assert_eq!(
        s(ib, "mac"),
        None,
        "20-byte IPoIB hardware address is not a MAC"
    );
}

#[test]
fn roce_nic() {
    let devs = scan(&fixture("roce-nic")).unwrap();
    check_limits(&devs);
    let mut n = names(&devs);
    n.sort();
    // The RoCE netdev is part of the RDMA device, not a separate NIC.
    assert_eq!(n, vec!["netdev-virtual", "rdma-mlx5-1"]);
    let r = &devs[0];
    assert_eq!(s(r, "type"), Some("roce"));
    assert_eq!(s(r, "linkLayer"), Some("Ethernet"));
    assert_eq!(s(r, "netdev"), Some("ens3f0np0"));
    assert_eq!(s(r, "uverbs"), Some("uverbs1"));
    assert_eq!(s(r, "vendor"), Some("0x15b3"));
    assert_eq!(r.attributes.get("roce"), Some(&Value::Bool(true)));
}
