//! CNI with the real plugins (Debian containernetworking-plugins in /usr/lib/cni) in test
//! namespaces, plus script plugins that fail or print garbage.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestNs;
use drakit_netdev::cni::{CniArgs, CniRuntime};
use drakit_netdev::inventory::{FoundDevice, HostDevice};
use drakit_netdev::manager::{ClaimRecord, Manager, ManagerOptions};
use drakit_netdev::netlink::fake::FakeNetlink;
use drakit_netdev::store::{MemStore, Store};
use drakit_proto::drakit as pb;

const SYSTEM_CNI: &str = "/usr/lib/cni";

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `f` on a thread that entered the namespace `host`, so the plugin processes it starts
/// (bridge, host-local) treat that namespace as the host, never the machine's own.
fn in_host_ns<T: Send + 'static>(host: &TestNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = host.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn have_plugins() -> bool {
    let ok = ["bridge", "host-local"]
        .iter()
        .all(|p| Path::new(SYSTEM_CNI).join(p).is_file());
    if !ok {
        eprintln!(
            "skipped: CNI plugins not installed in {SYSTEM_CNI} (apt-get install -y containernetworking-plugins)"
        );
    }
    ok
}

fn conflist(bridge: &str, data_dir: &Path, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"dktest","plugins":[
          {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
            "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.77.0.0/24"}}]]}}}}{extra}]}}"#,
        data_dir.display()
    )
}

#[test]
fn bridge_and_host_local_add_then_del() {
    if !have_plugins() {
        return;
    }
    let (Some(h), Some(p)) = (TestNs::create("ch"), TestNs::create("cp")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ipam");
    let conf = conflist(&common::uniq("dkb"), &data, "");
    let args = CniArgs {
        container_id: "dk-cni-test-1".into(),
        netns: p.path(),
        ifname: "eth1".into(),
        ..Default::default()
    };
    let rt = CniRuntime {
        bin_dirs: vec![PathBuf::from(SYSTEM_CNI)],
        timeout: Duration::from_secs(30),
    };
    let (rt2, conf2, args2) = (rt.clone(), conf.clone(), args.clone());
    let out = in_host_ns(&h, move || block_on(rt2.add(&conf2, &args2))).unwrap();
    assert_eq!(out.ips.len(), 1);
    assert!(
        out.ips[0].to_string().starts_with("10.77.0."),
        "{:?}",
        out.ips
    );
    assert!(out.mac.is_some());
    assert_eq!(p.link_names(), vec!["eth1", "lo"]);
    assert!(
        p.ip(&["addr", "show", "eth1"])
            .contains(&out.ips[0].to_string())
    );

    let (rt2, conf2, args2, res) = (rt.clone(), conf.clone(), args.clone(), out.result.clone());
    in_host_ns(&h, move || block_on(rt2.check(&conf2, &args2, &res))).unwrap();
    let (rt2, conf2, args2, res) = (rt.clone(), conf.clone(), args.clone(), out.result.clone());
    in_host_ns(&h, move || block_on(rt2.del(&conf2, &args2, Some(&res)))).unwrap();
    assert_eq!(p.link_names(), vec!["lo"]);
    let reserved: Vec<_> = std::fs::read_dir(data.join("dktest"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(reserved.is_empty(), "IP still reserved: {reserved:?}");
}

#[test]
fn failing_or_garbage_plugin_gives_clear_error_and_no_leftover() {
    if !have_plugins() {
        return;
    }
    let (Some(h), Some(p)) = (TestNs::create("fh"), TestNs::create("fp")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for b in ["bridge", "host-local"] {
        std::os::unix::fs::symlink(Path::new(SYSTEM_CNI).join(b), bin.join(b)).unwrap();
    }
    script(
        &bin,
        "failing",
        r#"[ "$CNI_COMMAND" = DEL ] && exit 0; echo '{"cniVersion":"1.0.0","code":11,"msg":"no luck","details":"test plugin"}'; exit 1"#,
    );
    script(
        &bin,
        "garbage",
        r#"[ "$CNI_COMMAND" = DEL ] && exit 0; cat >/dev/null; echo 'this is not json'"#,
    );
    script(
        &bin,
        "badip",
        r#"[ "$CNI_COMMAND" = DEL ] && exit 0; echo '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1"}]}'"#,
    );
    let rt = CniRuntime {
        bin_dirs: vec![bin.clone()],
        timeout: Duration::from_secs(30),
    };
    for (plugin, needle) in [
        ("failing", "no luck (test plugin)"),
        ("garbage", "not JSON"),
        ("badip", "CIDR"),
    ] {
        let data = tmp.path().join(format!("ipam-{plugin}"));
        let conf = conflist(
            &common::uniq("dkf"),
            &data,
            &format!(r#",{{"type":"{plugin}"}}"#),
        );
        let args = CniArgs {
            container_id: format!("dk-{plugin}"),
            netns: p.path(),
            ifname: "eth1".into(),
            ..Default::default()
        };
        let rt2 = rt.clone();
        let e = in_host_ns(&h, move || block_on(rt2.add(&conf, &args))).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(plugin) && msg.contains(needle),
            "{plugin}: {msg}"
        );
        // The bridge plugin's veth was rolled back with DEL.
        assert_eq!(p.link_names(), vec!["lo"], "{plugin}");
    }
    // A plugin that does not exist.
    let conf = r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"does-not-exist"}]}"#;
    let args = CniArgs {
        container_id: "x".into(),
        netns: p.path(),
        ifname: "eth1".into(),
        ..Default::default()
    };
    let e = block_on(rt.add(conf, &args)).unwrap_err();
    assert!(e.to_string().contains("does-not-exist"), "{e}");
}

#[test]
fn cni_claim_through_the_manager() {
    let tmp = tempfile::tempdir().unwrap();
    script(
        tmp.path(),
        "fakeipam",
        r#"cat >/dev/null
case "$CNI_COMMAND" in
  ADD) echo "{\"cniVersion\":\"1.0.0\",\"interfaces\":[{\"name\":\"$CNI_IFNAME\",\"mac\":\"02:CC:00:00:00:01\",\"sandbox\":\"$CNI_NETNS\"}],\"ips\":[{\"address\":\"2001:DB8::0:7/64\",\"interface\":0}]}" ;;
  *) echo "$CNI_COMMAND $CNI_CONTAINERID" >> "$(dirname "$0")/calls" ;;
esac"#,
    );
    let fake = FakeNetlink::new_world();
    fake.add_ns("/fake/pod");
    let mut o = ManagerOptions::new("n");
    o.cni = CniRuntime {
        bin_dirs: vec![tmp.path().to_path_buf()],
        timeout: Duration::from_secs(10),
    };
    let inv = vec![FoundDevice {
        name: "netdev-virtual".into(),
        host: HostDevice::Virtual,
        attributes: BTreeMap::new(),
        capacity: BTreeMap::new(),
        shared: true,
    }];
    let store = MemStore::default();
    let m = Manager::new(fake, store.clone(), o, inv).unwrap();
    block_on(async {
        let cfg = r#"{"kind":"CniConfig","interfaceName":"net3","conflist":{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"fakeipam"}]}}"#;
        let req = pb::PrepareRequest {
            claim: Some(pb::ClaimRef {
                uid: "cni1".into(),
                ..Default::default()
            }),
            devices: vec![pb::AllocatedDevice {
                device: "netdev-virtual".into(),
                config_json: cfg.into(),
                ..Default::default()
            }],
            reserved_for_pods: vec!["pod".into()],
            boot_id: String::new(),
        };
        m.prepare(&req).await.unwrap();
        let a = m
            .attach_pod(&pb::AttachPodRequest {
                pod_uid: "pod".into(),
                netns_path: "/fake/pod".into(),
                sandbox_id: "sb-1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let nd = a.interfaces[0].network_data.clone().unwrap();
        assert_eq!(nd.interface_name, "net3");
        assert_eq!(nd.ips, vec!["2001:db8::7/64"]);
        assert_eq!(nd.hardware_address, "02:cc:00:00:00:01");
        // A CNI attachment is durable: the plugins' state outlives a reboot and needs its DEL.
        store.reboot();
        let (_, rec) = store.load().unwrap().pop().unwrap();
        let rec: ClaimRecord = serde_json::from_slice(&rec).unwrap();
        assert!(rec.devices[0].attached.is_some(), "{rec:?}");
        m.cni_check("cni1").await.unwrap();
        m.unprepare("cni1").await.unwrap();
    });
    let calls = std::fs::read_to_string(tmp.path().join("calls")).unwrap();
    assert_eq!(calls, "CHECK sb-1\nDEL sb-1\n");
}

/// `args` reach the plugins as `CNI_ARGS`, `capabilityArgs` as `runtimeConfig` of exactly the
/// plugins that declare the capability (CNI spec), decoded from a drakit `CniConfig`.
#[test]
fn cni_args_and_capability_args_reach_the_plugins() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let rec = tmp.path().join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    // Each plugin records its stdin and CNI_ARGS, then answers a minimal 1.0.0 result.
    for name in ["capable", "plain"] {
        script(
            &bin,
            name,
            &format!(
                r#"cat > {rec}/{name}.stdin
printf '%s' "$CNI_ARGS" > {rec}/{name}.args
printf '{{"cniVersion":"1.0.0","interfaces":[{{"name":"net2","sandbox":"%s"}}],"ips":[{{"address":"10.9.0.2/24","interface":0}}]}}' "$CNI_NETNS""#,
                rec = rec.display()
            ),
        );
    }
    let cfg = drakit_netdev::config::decode(
        r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"CniConfig","interfaceName":"net2",
            "config":{"cniVersion":"1.0.0","name":"n","plugins":[
              {"type":"capable","capabilities":{"mac":true,"ips":false}},
              {"type":"plain"}]},
            "args":{"K8S_POD_NETWORK":"data","B":"2"},
            "capabilityArgs":{"mac":"02:00:00:00:00:42","ips":["10.9.0.2/24"]}}"#,
    )
    .unwrap();
    let rt = CniRuntime {
        bin_dirs: vec![bin],
        timeout: Duration::from_secs(10),
    };
    let args = CniArgs {
        container_id: "dk-args".into(),
        netns: PathBuf::from("/var/run/netns/none"),
        ifname: "net2".into(),
        extra_args: cfg.cni_args.clone(),
        capability_args: cfg.cni_capability_args.clone(),
    };
    let out = block_on(rt.add(cfg.cni_conflist.as_deref().unwrap(), &args)).unwrap();
    assert_eq!(out.ips.len(), 1);
    let read = |f: &str| std::fs::read_to_string(rec.join(f)).unwrap();
    assert_eq!(read("capable.args"), "B=2;K8S_POD_NETWORK=data");
    assert_eq!(read("plain.args"), "B=2;K8S_POD_NETWORK=data");
    let capable: serde_json::Value = serde_json::from_str(&read("capable.stdin")).unwrap();
    assert_eq!(
        capable["runtimeConfig"],
        serde_json::json!({"mac": "02:00:00:00:00:42"}),
        "only the declared, enabled capability is passed"
    );
    let plain: serde_json::Value = serde_json::from_str(&read("plain.stdin")).unwrap();
    assert!(plain.get("runtimeConfig").is_none(), "{plain}");
}
