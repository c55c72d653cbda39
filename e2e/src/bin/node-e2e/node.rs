//! One simulated node: the API server stand-in + kubelet simulator (in-process), the NRI runtime
//! simulator (in-process, playing containerd), and the drakit daemons as real processes:
//! `drakit-cpu` on a machine fixture, `drakit-netdev` inside a private network namespace that
//! plays the node's own network (with its own `eth0`, `br0`, ...), `drakit-kubelet-plugin` and
//! `drakit-nri`. Everything lives under `<root>`; dropping the node stops the daemons and
//! deletes its namespaces.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use drakit_e2e::node::{NodeHarness, NodeHarnessConfig};
use nri::simulator::{Runtime, SimConfig};

use crate::sys::{self, Daemon, Netns};

pub const NET: &str = "net.drakit.dev";
pub const CPU: &str = "cpu.drakit.dev";
pub const RUNTIME: &str = "runtime.drakit.dev";

/// What kind of node a scenario needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub what: &'static str,
    /// `None`: the node's real (namespaced) sysfs; `Some(dir)`: a netdev sysfs fixture.
    pub net_fixture: Option<&'static str>,
    /// Links to create in the node's netns: (name, kind) — `veth` gets a peer `<name>p`.
    pub links: &'static [(&'static str, &'static str)],
    pub cpu_fixture: &'static str,
    pub cpu_grouped: bool,
}

pub const MAIN: Profile = Profile {
    name: "node-1",
    what: "this VM's kernel for links (a private netns with eth0 + bridge br0), an Alder Lake CPU fixture",
    net_fixture: None,
    links: &[("eth0", "veth"), ("br0", "bridge")],
    cpu_fixture: "alderlake-8p8e",
    cpu_grouped: false,
};
pub const ROCE: Profile = Profile {
    name: "node-rdma",
    what: "a RoCE NIC sysfs fixture (mlx5_1, uverbs1, netdev ens3f0np0 stood in by a real link), a two-socket Xeon CPU fixture with the grouped device model",
    net_fixture: Some("roce-nic"),
    links: &[("ens3f0np0", "veth"), ("eth0", "veth")],
    cpu_fixture: "xeon-2s-smt",
    cpu_grouped: true,
};
pub const SRIOV: Profile = Profile {
    name: "node-sriov",
    what: "a dual-port SR-IOV NIC sysfs fixture (8 VFs), an Alder Lake CPU fixture",
    net_fixture: Some("sriov-nic"),
    links: &[("eth0", "veth")],
    cpu_fixture: "alderlake-8p8e",
    cpu_grouped: false,
};

/// How a scenario's hardware is covered on this machine (printed with its result).
pub fn coverage(scenario: &str) -> &'static str {
    match scenario {
        "rdma-uverbs" => {
            "drakit-netdev reads a RoCE NIC sysfs fixture: slices, allocation, prepare, the CDI device nodes and teardown are real code paths; the device nodes are not opened (no RDMA hardware)"
        }
        "roce" => {
            "RoCE NIC sysfs fixture; its netdev ens3f0np0 is a real stand-in link, so the move into the pod, rename, address and move back are real; RDMA device nodes checked in the CDI spec only"
        }
        "net-sriov-vf-vlan" => {
            "SR-IOV NIC sysfs fixture: slices, CEL selection, prepare, CDI and claim status are real; VF VLAN/MAC settings and the VF move need a real PF and are not run"
        }
        "cpu-grouped" => {
            "drakit-cpu on a two-socket Xeon machine fixture, grouped device model (consumable capacity)"
        }
        s if s.starts_with("cpu-") => {
            "drakit-cpu on an Alder Lake machine fixture (8 P-cores with SMT + 8 E-cores)"
        }
        s if s.starts_with("runtime-") => {
            "real daemons; the final OCI spec comes from the NRI runtime simulator (no runc here)"
        }
        "cni-macvlan" => {
            "real CNI plugins (containernetworking-plugins) in real network namespaces; the harness runs the CDI createRuntime hook as runc would"
        }
        _ => "real links in real network namespaces (a private netns plays the node)",
    }
}

/// Which node runs a scenario.
pub fn profile_for(scenario: &str) -> Profile {
    match scenario {
        "rdma-uverbs" | "roce" | "cpu-grouped" => ROCE,
        "net-sriov-vf-vlan" => SRIOV,
        _ => MAIN,
    }
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub workspace: PathBuf,
    pub bin_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    /// `drakit-kubelet-plugin --shared-slots`: 0 publishes shared devices with consumable
    /// capacity (allocations carry a shareID), N publishes N plain slot devices instead.
    pub shared_slots: u32,
}

pub struct Node {
    pub profile: Profile,
    pub root: PathBuf,
    pub harness: NodeHarness,
    pub rt: Runtime,
    pub cdi_dir: PathBuf,
    pub state_dir: PathBuf,
    pub host_ns: Option<Netns>,
    pub net: bool,
    pub daemons: Vec<Daemon>,
    pub notes: Vec<String>,
    /// Kinds the kernel of this machine cannot create (probed in the node's netns).
    pub missing_kinds: Vec<String>,
    pub run_id: String,
    /// The proc root drakit-netdev reads (its boot ID comes from there).
    pub net_proc_root: PathBuf,
}

impl Node {
    pub fn ns_name(&self) -> Option<&str> {
        self.host_ns.as_ref().map(|n| n.name.as_str())
    }

    pub async fn start(
        profile: Profile,
        base: &Path,
        paths: &Paths,
        run_id: &str,
        with_net: std::result::Result<(), String>,
    ) -> Result<Node> {
        let root = base.join(profile.name);
        std::fs::create_dir_all(&root)?;
        let mut cfg = NodeHarnessConfig::new(&root, profile.name);
        cfg.slice_wipe_delay = Duration::from_secs(30);
        let harness = NodeHarness::start(cfg)
            .await
            .context("starting kubelet + API server simulators")?;
        let run = root.join("run");
        let cdi_dir = root.join("cdi");
        let state_dir = root.join("state");
        let logs = root.join("logs");
        for d in [&cdi_dir, &state_dir, &logs] {
            std::fs::create_dir_all(d)?;
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            // Internal sockets live in a 0700 dir, as under /run/drakit.
            std::fs::DirBuilder::new().mode(0o700).create(&run)?;
        }
        let mut node = Node {
            profile: profile.clone(),
            root: root.clone(),
            harness,
            rt: Runtime::new(SimConfig::default()),
            cdi_dir: cdi_dir.clone(),
            state_dir: state_dir.clone(),
            host_ns: None,
            net: with_net.is_ok(),
            daemons: Vec::new(),
            notes: Vec::new(),
            missing_kinds: Vec::new(),
            run_id: run_id.into(),
            net_proc_root: PathBuf::from("/proc"),
        };
        if let Err(why) = &with_net {
            let tag = if why.starts_with("not needed") {
                "note"
            } else {
                "skipped"
            };
            node.notes
                .push(format!("{tag}: net.drakit.dev on {}: {why}", profile.name));
        }
        let bin = |n: &str| paths.bin_dir.join(n);

        // drakit-cpu on its machine fixture.
        let cpu_sock = run.join("cpu.sock");
        let mut cmd = Command::new(bin("drakit-cpu"));
        cmd.arg("--fixture")
            .arg(
                paths
                    .workspace
                    .join("crates/cpu-allocator/fixtures")
                    .join(format!("{}.json", profile.cpu_fixture)),
            )
            .arg("--socket")
            .arg(&cpu_sock)
            .arg("--state-dir")
            .arg(state_dir.join("cpu"))
            .args(["--rescan-secs", "0"]);
        if let Some(uid) = sys::uid().filter(|u| *u != 0) {
            // Not root: the kubelet plugin and drakit-nri run as this uid too.
            cmd.args(["--allowed-uids", &uid.to_string()]);
        }
        if profile.cpu_grouped {
            cmd.args(["--device-model", "grouped"]);
        }
        let mut d = Daemon::spawn("drakit-cpu", &logs, cmd)?;
        d.wait_for_path(&cpu_sock, Duration::from_secs(30))?;
        node.daemons.push(d);

        // drakit-netdev in the node's own network namespace.
        let netdev_sock = run.join("netdev.sock");
        if node.net {
            let ns = Netns::create(&format!("dke{run_id}-{}", profile.name))?;
            for (name, kind) in profile.links {
                if *kind == "veth" {
                    sys::ip(&[
                        "-n",
                        &ns.name,
                        "link",
                        "add",
                        name,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &format!("{name}p"),
                    ])?;
                    sys::ip(&["-n", &ns.name, "link", "set", &format!("{name}p"), "up"])?;
                } else {
                    sys::ip(&["-n", &ns.name, "link", "add", name, "type", kind])?;
                }
                sys::ip(&["-n", &ns.name, "link", "set", name, "up"])?;
            }
            for kind in ["dummy", "ipvlan", "macvlan"] {
                let works = if kind == "ipvlan" || kind == "macvlan" {
                    sys::ip(&[
                        "-n", &ns.name, "link", "add", "dkprobe0", "link", "eth0", "type", kind,
                    ])
                    .map(|_| {
                        let _ = sys::ip(&["-n", &ns.name, "link", "del", "dkprobe0"]);
                    })
                    .is_ok()
                } else {
                    sys::link_kind_works(&ns.name, kind)
                };
                if !works {
                    node.missing_kinds.push(kind.to_string());
                }
            }
            let (sys_root, proc_root) = match profile.net_fixture {
                None => (PathBuf::from("/sys"), PathBuf::from("/proc")),
                Some(f) => {
                    let dir = paths
                        .workspace
                        .join("crates/netdev-manager/tests/fixtures")
                        .join(f);
                    (dir.join("sys"), dir.join("proc"))
                }
            };
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns.name])
                .arg(bin("drakit-netdev"))
                .arg("--socket")
                .arg(&netdev_sock)
                .arg("--state-dir")
                .arg(state_dir.join("netdev"))
                .arg("--sys-root")
                .arg(&sys_root)
                .arg("--proc-root")
                .arg(&proc_root)
                .args(["--pool", profile.name])
                .args(["--exclude", "eth0p,ens3f0np0p"])
                .arg("--hook-binary")
                .arg(bin("drakit-oci-hook"))
                .arg("--cni-bin-dirs")
                .arg(&paths.cni_bin_dir)
                .args(["--rescan-seconds", "3600"]);
            node.net_proc_root = proc_root.clone();
            node.host_ns = Some(ns);
            let mut d = Daemon::spawn("drakit-netdev", &logs, cmd)?;
            d.wait_for_path(&netdev_sock, Duration::from_secs(30))?;
            node.daemons.push(d);
        }

        // The kubelet plugin. cgroup v2 detection reads <cgroupfs-root>/cgroup.controllers: use the
        // real cgroup2 mount when the host has one (hybrid hosts mount it at .../unified).
        let cgroup_root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.controllers").is_file());
        let cgroup_root = match cgroup_root {
            Some(p) => p,
            None => {
                let fake = root.join("cgroup2");
                std::fs::create_dir_all(&fake)?;
                std::fs::write(fake.join("cgroup.controllers"), "cpu io memory pids\n")?;
                node.notes.push(format!(
                    "no cgroup v2 mount on this host: the kubelet plugin reads a stand-in cgroup root {}",
                    fake.display()
                ));
                fake
            }
        };
        let h = &node.harness;
        let mut cmd = Command::new(bin("drakit-kubelet-plugin"));
        cmd.args(["--node-name", profile.name])
            .arg("--kubeconfig")
            .arg(&h.kubeconfig)
            .arg("--registry-dir")
            .arg(&h.registry_dir)
            .arg("--plugins-dir")
            .arg(&h.plugins_dir)
            .arg("--cdi-dir")
            .arg(&cdi_dir)
            .arg("--state-dir")
            .arg(state_dir.join("kubelet-plugin"))
            .arg("--run-dir")
            .arg(&run)
            .arg("--cgroupfs-root")
            .arg(&cgroup_root)
            .arg("--cpu-socket")
            .arg(&cpu_sock)
            .args(["--shutdown-grace-seconds", "2"])
            .args(["--shared-slots", &paths.shared_slots.to_string()]);
        if node.net {
            cmd.arg("--netdev-socket").arg(&netdev_sock);
        } else {
            cmd.args(["--net-driver", "false"]);
        }
        let d = Daemon::spawn("drakit-kubelet-plugin", &logs, cmd)?;
        node.daemons.push(d);
        let mut drivers = vec![CPU, RUNTIME];
        if node.net {
            drivers.push(NET);
        }
        for drv in &drivers {
            if let Err(e) = node
                .harness
                .kubelet
                .wait_for_driver(drv, Duration::from_secs(30))
                .await
            {
                node.check_daemons()?;
                bail!("driver {drv} did not register: {e}");
            }
        }
        for drv in [CPU, NET] {
            if drv == NET && !node.net {
                continue;
            }
            let name = node.profile.name;
            node.harness
                .api
                .wait_for(
                    &format!("{drv} ResourceSlices"),
                    Duration::from_secs(30),
                    |api| (!api.slices_for(name, drv).is_empty()).then_some(()),
                )
                .await
                .with_context(|| format!("{drv}: no ResourceSlice published"))?;
        }

        // The NRI runtime simulator and the drakit-nri sidecar.
        let nri_sock = run.join("nri.sock");
        node.rt
            .listen(&nri_sock)
            .await
            .context("NRI simulator listen")?;
        let mut cmd = Command::new(bin("drakit-nri"));
        cmd.arg("--nri-socket")
            .arg(&nri_sock)
            .arg("--cpu-socket")
            .arg(&cpu_sock);
        if node.net {
            cmd.arg("--netdev-socket").arg(&netdev_sock);
        } else {
            cmd.args(["--netdev", "false"]);
        }
        let d = Daemon::spawn("drakit-nri", &logs, cmd)?;
        node.daemons.push(d);
        if let Err(e) = node.rt.wait_synced(1, Duration::from_secs(30)).await {
            node.check_daemons()?;
            bail!("drakit-nri did not register with the NRI runtime: {e}");
        }
        Ok(node)
    }

    /// Restarts one daemon by name (SIGTERM, same command line).
    pub fn restart_daemon(
        &mut self,
        name: &str,
        between: impl FnOnce() -> Result<()>,
    ) -> Result<bool> {
        let d = self
            .daemons
            .iter_mut()
            .find(|d| d.name == name)
            .with_context(|| format!("no daemon {name}"))?;
        d.restart(between)
    }

    pub fn check_daemons(&mut self) -> Result<()> {
        for d in &mut self.daemons {
            d.check_alive()?;
        }
        Ok(())
    }

    /// Everything a reader needs after a failure: daemon logs, state dir listing, simulators.
    pub fn dump(&self) -> String {
        let mut s = format!(
            "===== node {} ({}) =====\n",
            self.profile.name,
            self.root.display()
        );
        for d in &self.daemons {
            s.push_str(&format!(
                "----- {} log ({}) -----\n",
                d.name,
                d.log.display()
            ));
            s.push_str(&sys::tail(&d.log, 200));
            s.push('\n');
        }
        s.push_str("----- files under state/, cdi/, run/ -----\n");
        for dir in [&self.state_dir, &self.cdi_dir, &self.root.join("run")] {
            list(dir, &mut s);
        }
        for f in std::fs::read_dir(&self.cdi_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            s.push_str(&format!("----- {} -----\n", f.path().display()));
            s.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
            s.push('\n');
        }
        if let Some(ns) = self.ns_name() {
            s.push_str("----- links in the node netns -----\n");
            s.push_str(&sys::ip(&["-n", ns, "-d", "link"]).unwrap_or_else(|e| e.to_string()));
        }
        s.push_str("----- NRI runtime log -----\n");
        for l in self.rt.log() {
            s.push_str(&l);
            s.push('\n');
        }
        s.push_str("----- kubelet + API server -----\n");
        s.push_str(&self.harness.dump());
        s
    }

    /// Stops every daemon (SIGTERM), last started first.
    pub fn stop(&mut self) -> Vec<String> {
        let mut unclean = Vec::new();
        self.rt.shutdown();
        while let Some(mut d) = self.daemons.pop() {
            if !d.stop() {
                unclean.push(d.name.clone());
            }
        }
        self.harness.kubelet.stop();
        unclean
    }
}

fn list(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        out.push_str(&format!("{} ({size} bytes)\n", p.display()));
        if p.is_dir() {
            list(&p, out);
        }
    }
}
