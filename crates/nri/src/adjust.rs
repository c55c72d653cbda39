//! Builders for what a plugin sends back: container adjustments (at CreateContainer) and
//! container updates (from events or unsolicited via `UpdateContainers`).
//!
//! Removal follows the NRI convention: a key, mount destination, device path or net device
//! prefixed with `-` asks the runtime to delete that entry.

use drakit_proto::nri::{
    CdiDevice, ContainerAdjustment, ContainerEviction, ContainerUpdate, CreateContainerResponse,
    Hook, Hooks, KeyValue, LinuxContainerAdjustment, LinuxContainerUpdate, LinuxCpu, LinuxDevice,
    LinuxDeviceCgroup, LinuxMemory, LinuxNamespace, LinuxNetDevice, LinuxPids, LinuxResources,
    Mount, OptionalInt, OptionalInt64, OptionalString, OptionalUInt64, PosixRlimit,
};

/// Prefix that marks a key for removal.
pub const REMOVAL_PREFIX: char = '-';

/// `key` marked for removal (`-key`).
pub fn mark_for_removal(key: &str) -> String {
    format!("{REMOVAL_PREFIX}{key}")
}

/// Split a possibly removal-marked key: `("foo", true)` for `-foo`.
pub fn is_marked_for_removal(key: &str) -> (&str, bool) {
    match key.strip_prefix(REMOVAL_PREFIX) {
        Some(k) => (k, true),
        None => (key, false),
    }
}

/// Mutable access to the resources part of a linux resources message.
macro_rules! resource_setters {
    () => {
        /// Memory limit in bytes.
        pub fn set_memory_limit(&mut self, bytes: i64) -> &mut Self {
            self.memory().limit = Some(OptionalInt64 { value: bytes });
            self
        }
        /// Memory reservation (soft limit) in bytes.
        pub fn set_memory_reservation(&mut self, bytes: i64) -> &mut Self {
            self.memory().reservation = Some(OptionalInt64 { value: bytes });
            self
        }
        /// Memory + swap limit in bytes.
        pub fn set_memory_swap(&mut self, bytes: i64) -> &mut Self {
            self.memory().swap = Some(OptionalInt64 { value: bytes });
            self
        }
        /// CPU shares (cgroup v1 `cpu.shares`).
        pub fn set_cpu_shares(&mut self, shares: u64) -> &mut Self {
            self.cpu().shares = Some(OptionalUInt64 { value: shares });
            self
        }
        /// CFS quota in microseconds.
        pub fn set_cpu_quota(&mut self, quota: i64) -> &mut Self {
            self.cpu().quota = Some(OptionalInt64 { value: quota });
            self
        }
        /// CFS period in microseconds.
        pub fn set_cpu_period(&mut self, period: u64) -> &mut Self {
            self.cpu().period = Some(OptionalUInt64 { value: period });
            self
        }
        /// cpuset CPUs, e.g. `"2-3,6"`.
        pub fn set_cpuset_cpus(&mut self, cpus: impl Into<String>) -> &mut Self {
            self.cpu().cpus = cpus.into();
            self
        }
        /// cpuset memory nodes, e.g. `"0"`.
        pub fn set_cpuset_mems(&mut self, mems: impl Into<String>) -> &mut Self {
            self.cpu().mems = mems.into();
            self
        }
        /// pids limit.
        pub fn set_pids_limit(&mut self, limit: i64) -> &mut Self {
            self.resources().pids = Some(LinuxPids { limit });
            self
        }
        /// A cgroup v2 unified key, e.g. `("io.max", "8:0 rbps=1048576")`.
        pub fn add_unified(
            &mut self,
            key: impl Into<String>,
            value: impl Into<String>,
        ) -> &mut Self {
            self.resources().unified.insert(key.into(), value.into());
            self
        }
        /// Remove a unified key set by an earlier plugin or the runtime.
        pub fn remove_unified(&mut self, key: &str) -> &mut Self {
            self.resources()
                .unified
                .insert(mark_for_removal(key), String::new());
            self
        }
        /// blockio class (`blockio_class`).
        pub fn set_blockio_class(&mut self, class: impl Into<String>) -> &mut Self {
            self.resources().blockio_class = Some(OptionalString {
                value: class.into(),
            });
            self
        }
        /// RDT class (`rdt_class`).
        pub fn set_rdt_class(&mut self, class: impl Into<String>) -> &mut Self {
            self.resources().rdt_class = Some(OptionalString {
                value: class.into(),
            });
            self
        }
        /// A device cgroup rule.
        pub fn add_device_cgroup_rule(&mut self, rule: LinuxDeviceCgroup) -> &mut Self {
            self.resources().devices.push(rule);
            self
        }
        /// Replace the whole resources message.
        pub fn set_resources(&mut self, resources: LinuxResources) -> &mut Self {
            *self.resources() = resources;
            self
        }
        fn memory(&mut self) -> &mut LinuxMemory {
            self.resources().memory.get_or_insert_with(Default::default)
        }
        fn cpu(&mut self) -> &mut LinuxCpu {
            self.resources().cpu.get_or_insert_with(Default::default)
        }
    };
}

/// Builder of a [`ContainerAdjustment`] (the changes a plugin asks for at CreateContainer).
///
/// ```
/// use nri::Adjustment;
/// let mut a = Adjustment::new();
/// a.add_env("NRI_ADJUSTED", "yes").set_cpuset_cpus("1").set_cpu_shares(512).set_pids_limit(77);
/// let response: drakit_proto::nri::CreateContainerResponse = a.into();
/// assert!(response.adjust.is_some());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adjustment(ContainerAdjustment);

impl Adjustment {
    /// An empty adjustment (changes nothing).
    pub fn new() -> Self {
        Self::default()
    }
    /// Wrap an existing message.
    pub fn from_proto(a: ContainerAdjustment) -> Self {
        Self(a)
    }
    /// The message.
    pub fn as_proto(&self) -> &ContainerAdjustment {
        &self.0
    }
    /// The message, consuming the builder.
    pub fn into_proto(self) -> ContainerAdjustment {
        self.0
    }
    /// True when nothing is adjusted.
    pub fn is_empty(&self) -> bool {
        self.0 == ContainerAdjustment::default()
    }

    /// Set (or override) an environment variable.
    pub fn add_env(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.env.push(KeyValue {
            key: key.into(),
            value: value.into(),
        });
        self
    }
    /// Remove an environment variable.
    pub fn remove_env(&mut self, key: &str) -> &mut Self {
        self.0.env.push(KeyValue {
            key: mark_for_removal(key),
            value: String::new(),
        });
        self
    }
    /// Add (or override) an annotation.
    pub fn add_annotation(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> &mut Self {
        self.0.annotations.insert(key.into(), value.into());
        self
    }
    /// Remove an annotation.
    pub fn remove_annotation(&mut self, key: &str) -> &mut Self {
        self.0
            .annotations
            .insert(mark_for_removal(key), String::new());
        self
    }
    /// Add a mount.
    pub fn add_mount(&mut self, mount: Mount) -> &mut Self {
        self.0.mounts.push(mount);
        self
    }
    /// Add a bind mount `source` -> `destination` with `options` (e.g. `["rbind", "ro"]`).
    pub fn add_bind_mount(
        &mut self,
        source: impl Into<String>,
        destination: impl Into<String>,
        options: &[&str],
    ) -> &mut Self {
        self.add_mount(Mount {
            destination: destination.into(),
            r#type: "bind".into(),
            source: source.into(),
            options: options.iter().map(|s| (*s).to_owned()).collect(),
        })
    }
    /// Remove the mount at `destination`.
    pub fn remove_mount(&mut self, destination: &str) -> &mut Self {
        self.0.mounts.push(Mount {
            destination: mark_for_removal(destination),
            ..Default::default()
        });
        self
    }
    /// Append OCI hooks.
    pub fn add_hooks(&mut self, hooks: Hooks) -> &mut Self {
        let h = self.0.hooks.get_or_insert_with(Default::default);
        h.prestart.extend(hooks.prestart);
        h.create_runtime.extend(hooks.create_runtime);
        h.create_container.extend(hooks.create_container);
        h.start_container.extend(hooks.start_container);
        h.poststart.extend(hooks.poststart);
        h.poststop.extend(hooks.poststop);
        self
    }
    /// Append one `createRuntime` hook.
    pub fn add_create_runtime_hook(&mut self, hook: Hook) -> &mut Self {
        self.add_hooks(Hooks {
            create_runtime: vec![hook],
            ..Default::default()
        })
    }
    /// Add a POSIX rlimit, e.g. `("RLIMIT_NOFILE", 1024, 1024)`.
    pub fn add_rlimit(&mut self, ty: impl Into<String>, hard: u64, soft: u64) -> &mut Self {
        self.0.rlimits.push(PosixRlimit {
            r#type: ty.into(),
            hard,
            soft,
        });
        self
    }
    /// Inject a CDI device by fully-qualified name (`vendor.com/class=name`).
    pub fn add_cdi_device(&mut self, name: impl Into<String>) -> &mut Self {
        self.0.cdi_devices.push(CdiDevice { name: name.into() });
        self
    }
    /// Replace the container's argv.
    pub fn set_args(&mut self, args: impl IntoIterator<Item = impl Into<String>>) -> &mut Self {
        self.0.args = args.into_iter().map(Into::into).collect();
        self
    }
    /// Add a device node.
    pub fn add_device(&mut self, device: LinuxDevice) -> &mut Self {
        self.linux().devices.push(device);
        self
    }
    /// Remove the device node at `path`.
    pub fn remove_device(&mut self, path: &str) -> &mut Self {
        self.linux().devices.push(LinuxDevice {
            path: mark_for_removal(path),
            ..Default::default()
        });
        self
    }
    /// Set the cgroups path.
    pub fn set_cgroups_path(&mut self, path: impl Into<String>) -> &mut Self {
        self.linux().cgroups_path = path.into();
        self
    }
    /// Set the OOM score adjustment.
    pub fn set_oom_score_adj(&mut self, value: i64) -> &mut Self {
        self.linux().oom_score_adj = Some(OptionalInt { value });
        self
    }
    /// Add or replace a namespace (e.g. `("network", "/var/run/netns/x")`).
    pub fn add_or_replace_namespace(
        &mut self,
        ty: impl Into<String>,
        path: impl Into<String>,
    ) -> &mut Self {
        self.linux().namespaces.push(LinuxNamespace {
            r#type: ty.into(),
            path: path.into(),
        });
        self
    }
    /// Set a sysctl.
    pub fn add_sysctl(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.linux().sysctl.insert(key.into(), value.into());
        self
    }
    /// Move host interface `host_name` into the container as `name` (runtime-spec 1.3 netDevices).
    pub fn add_net_device(
        &mut self,
        host_name: impl Into<String>,
        name: impl Into<String>,
    ) -> &mut Self {
        self.linux()
            .net_devices
            .insert(host_name.into(), LinuxNetDevice { name: name.into() });
        self
    }
    /// Remove a net device entry.
    pub fn remove_net_device(&mut self, host_name: &str) -> &mut Self {
        self.linux()
            .net_devices
            .insert(mark_for_removal(host_name), LinuxNetDevice::default());
        self
    }

    fn linux(&mut self) -> &mut LinuxContainerAdjustment {
        self.0.linux.get_or_insert_with(Default::default)
    }
    fn resources(&mut self) -> &mut LinuxResources {
        self.linux().resources.get_or_insert_with(Default::default)
    }

    resource_setters!();
}

impl From<Adjustment> for ContainerAdjustment {
    fn from(a: Adjustment) -> Self {
        a.0
    }
}

impl From<Adjustment> for CreateContainerResponse {
    /// An empty adjustment becomes an empty response (no `adjust` field), like the Go stub.
    fn from(a: Adjustment) -> Self {
        CreateContainerResponse {
            adjust: if a.is_empty() { None } else { Some(a.0) },
            update: Vec::new(),
            evict: Vec::new(),
        }
    }
}

/// Builder of a [`ContainerUpdate`] (resource changes to an existing container).
///
/// ```
/// use nri::Update;
/// let mut u = Update::new("ctr-1");
/// u.set_cpuset_cpus("0-3").set_memory_limit(1 << 30);
/// let msg = u.into_proto();
/// assert_eq!(msg.container_id, "ctr-1");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update(ContainerUpdate);

impl Update {
    /// An update of container `container_id`.
    pub fn new(container_id: impl Into<String>) -> Self {
        Self(ContainerUpdate {
            container_id: container_id.into(),
            ..Default::default()
        })
    }
    /// Let the runtime ignore a failure of this update.
    pub fn ignore_failure(&mut self, ignore: bool) -> &mut Self {
        self.0.ignore_failure = ignore;
        self
    }
    /// The message.
    pub fn as_proto(&self) -> &ContainerUpdate {
        &self.0
    }
    /// The message, consuming the builder.
    pub fn into_proto(self) -> ContainerUpdate {
        self.0
    }
    fn resources(&mut self) -> &mut LinuxResources {
        self.0
            .linux
            .get_or_insert_with(LinuxContainerUpdate::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    resource_setters!();
}

impl From<Update> for ContainerUpdate {
    fn from(u: Update) -> Self {
        u.0
    }
}

/// Ask the runtime to evict (stop) a container.
pub fn eviction(container_id: impl Into<String>, reason: impl Into<String>) -> ContainerEviction {
    ContainerEviction {
        container_id: container_id.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The adjustment of recorded message #10 (`10-plugin-to-runtime-CreateContainer`).
    #[test]
    fn builder_reproduces_the_recorded_go_adjustment() {
        let mut a = Adjustment::new();
        a.add_env("NRI_ADJUSTED", "yes")
            .set_cpuset_cpus("1")
            .set_cpu_shares(512)
            .set_pids_limit(77)
            .add_cdi_device("example.com/dev=dev0");
        let resp: CreateContainerResponse = a.into();
        let hex: String = resp
            .encode_to_vec()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "0a3f22130a0c4e52495f41444a555354454412037965733210120e12080a030880043201314202084d42160a146578616d706c652e636f6d2f6465763d64657630"
        );
    }

    #[test]
    fn removal_markers() {
        let mut a = Adjustment::new();
        a.remove_env("FOO")
            .remove_annotation("bar")
            .remove_mount("/x")
            .remove_device("/dev/y");
        let p = a.into_proto();
        assert_eq!(p.env[0].key, "-FOO");
        assert!(p.annotations.contains_key("-bar"));
        assert_eq!(p.mounts[0].destination, "-/x");
        assert_eq!(p.linux.unwrap().devices[0].path, "-/dev/y");
        assert_eq!(is_marked_for_removal("-k"), ("k", true));
        assert_eq!(is_marked_for_removal("k"), ("k", false));
        assert!(
            CreateContainerResponse::from(Adjustment::new())
                .adjust
                .is_none()
        );
    }
}
