//! Applying NRI adjustments and updates to an OCI runtime spec held as JSON, the way a runtime
//! would before handing the spec to runc.

use drakit_proto::nri::{
    Container, ContainerAdjustment, Hook, Hooks, LinuxContainer, LinuxResources, Mount,
};
use serde_json::{Map, Value, json};

use crate::adjust::is_marked_for_removal;

/// A minimal OCI spec for a container running `args`.
pub fn default_spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.2.0",
        "process": {"args": args, "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"resources": {}, "namespaces": [{"type": "pid"}, {"type": "mount"}]}
    })
}

type Obj = Map<String, Value>;

/// Run `f` on the object at `parent[key]`, creating (or replacing a non-object with) `{}`.
fn with_obj(parent: &mut Obj, key: &str, f: impl FnOnce(&mut Obj)) {
    let e = parent
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !e.is_object() {
        *e = Value::Object(Map::new());
    }
    if let Value::Object(m) = e {
        f(m);
    }
}

/// Run `f` on the array at `parent[key]`, creating (or replacing a non-array with) `[]`.
fn with_arr(parent: &mut Obj, key: &str, f: impl FnOnce(&mut Vec<Value>)) {
    let e = parent
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !e.is_array() {
        *e = Value::Array(Vec::new());
    }
    if let Value::Array(a) = e {
        f(a);
    }
}

/// Run `f` on `v` as an object, replacing a non-object with `{}`.
fn as_obj(v: &mut Value, f: impl FnOnce(&mut Obj)) {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    if let Value::Object(m) = v {
        f(m);
    }
}

/// Set or (for `-key`) remove entries of the map at `parent[key]`.
fn set_map(parent: &mut Obj, key: &str, entries: impl IntoIterator<Item = (String, Value)>) {
    with_obj(parent, key, |m| {
        for (k, v) in entries {
            let (k, remove) = is_marked_for_removal(&k);
            if remove {
                m.remove(k);
            } else {
                m.insert(k.to_owned(), v);
            }
        }
    });
}

fn hook_json(h: &Hook) -> Value {
    let mut o = json!({"path": h.path});
    if !h.args.is_empty() {
        o["args"] = json!(h.args);
    }
    if !h.env.is_empty() {
        o["env"] = json!(h.env);
    }
    if let Some(t) = &h.timeout {
        o["timeout"] = json!(t.value);
    }
    o
}

fn mount_json(m: &Mount) -> Value {
    json!({"destination": m.destination, "type": m.r#type, "source": m.source, "options": m.options})
}

/// Apply `adj` to `spec`. Entries whose key starts with `-` remove the named entry.
pub fn apply_adjustment(spec: &mut Value, adj: &ContainerAdjustment) {
    as_obj(spec, |root| apply_adjustment_obj(root, adj));
}

fn apply_adjustment_obj(root: &mut Obj, adj: &ContainerAdjustment) {
    if !adj.annotations.is_empty() {
        set_map(
            root,
            "annotations",
            adj.annotations.iter().map(|(k, v)| (k.clone(), json!(v))),
        );
    }
    if !adj.mounts.is_empty() {
        with_arr(root, "mounts", |mounts| {
            for m in &adj.mounts {
                let (dest, remove) = is_marked_for_removal(&m.destination);
                mounts.retain(|x| x.get("destination").and_then(Value::as_str) != Some(dest));
                if !remove {
                    mounts.push(mount_json(m));
                }
            }
        });
    }
    with_obj(root, "process", |process| {
        if !adj.env.is_empty() {
            with_arr(process, "env", |env| {
                for kv in &adj.env {
                    let (key, remove) = is_marked_for_removal(&kv.key);
                    let prefix = format!("{key}=");
                    env.retain(|e| {
                        !e.as_str()
                            .is_some_and(|s| s.starts_with(&prefix) || s == key)
                    });
                    if !remove {
                        env.push(json!(format!("{key}={}", kv.value)));
                    }
                }
            });
        }
        if !adj.args.is_empty() {
            process.insert("args".into(), json!(adj.args));
        }
        if !adj.rlimits.is_empty() {
            with_arr(process, "rlimits", |rl| {
                for r in &adj.rlimits {
                    rl.retain(|x| x.get("type").and_then(Value::as_str) != Some(r.r#type.as_str()));
                    rl.push(json!({"type": r.r#type, "hard": r.hard, "soft": r.soft}));
                }
            });
        }
        if let Some(oom) = adj.linux.as_ref().and_then(|l| l.oom_score_adj.as_ref()) {
            process.insert("oomScoreAdj".into(), json!(oom.value));
        }
    });
    if let Some(h) = &adj.hooks {
        with_obj(root, "hooks", |hooks| apply_hooks(hooks, h));
    }
    let Some(l) = &adj.linux else { return };
    with_obj(root, "linux", |linux| {
        if !l.devices.is_empty() {
            with_arr(linux, "devices", |devs| {
                for d in &l.devices {
                    let (path, remove) = is_marked_for_removal(&d.path);
                    devs.retain(|x| x.get("path").and_then(Value::as_str) != Some(path));
                    if !remove {
                        let mut o = json!({"path": d.path, "type": d.r#type, "major": d.major, "minor": d.minor});
                        if let Some(m) = &d.file_mode {
                            o["fileMode"] = json!(m.value);
                        }
                        if let Some(u) = &d.uid {
                            o["uid"] = json!(u.value);
                        }
                        if let Some(g) = &d.gid {
                            o["gid"] = json!(g.value);
                        }
                        devs.push(o);
                    }
                }
            });
        }
        if !l.cgroups_path.is_empty() {
            linux.insert("cgroupsPath".into(), json!(l.cgroups_path));
        }
        if !l.namespaces.is_empty() {
            with_arr(linux, "namespaces", |ns| {
                for n in &l.namespaces {
                    let (ty, remove) = is_marked_for_removal(&n.r#type);
                    ns.retain(|x| x.get("type").and_then(Value::as_str) != Some(ty));
                    if !remove {
                        let mut o = json!({"type": ty});
                        if !n.path.is_empty() {
                            o["path"] = json!(n.path);
                        }
                        ns.push(o);
                    }
                }
            });
        }
        if !l.sysctl.is_empty() {
            set_map(
                linux,
                "sysctl",
                l.sysctl.iter().map(|(k, v)| (k.clone(), json!(v))),
            );
        }
        if !l.net_devices.is_empty() {
            set_map(
                linux,
                "netDevices",
                l.net_devices
                    .iter()
                    .map(|(k, v)| (k.clone(), json!({"name": v.name}))),
            );
        }
        if let Some(r) = &l.resources {
            with_obj(linux, "resources", |res| apply_resources_obj(res, r));
        }
    });
}

fn apply_hooks(hooks: &mut Obj, h: &Hooks) {
    for (name, list) in [
        ("prestart", &h.prestart),
        ("createRuntime", &h.create_runtime),
        ("createContainer", &h.create_container),
        ("startContainer", &h.start_container),
        ("poststart", &h.poststart),
        ("poststop", &h.poststop),
    ] {
        if !list.is_empty() {
            with_arr(hooks, name, |a| a.extend(list.iter().map(hook_json)));
        }
    }
}

/// Merge `r` into an OCI `linux.resources` object: only the fields set in `r` change.
pub fn apply_resources(res: &mut Value, r: &LinuxResources) {
    as_obj(res, |res| apply_resources_obj(res, r));
}

fn insert_set(m: &mut Obj, pairs: &[(&str, Option<Value>)]) {
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert((*k).to_owned(), v.clone());
        }
    }
}

fn apply_resources_obj(res: &mut Obj, r: &LinuxResources) {
    if let Some(m) = &r.memory {
        with_obj(res, "memory", |mem| {
            insert_set(
                mem,
                &[
                    ("limit", m.limit.as_ref().map(|v| json!(v.value))),
                    (
                        "reservation",
                        m.reservation.as_ref().map(|v| json!(v.value)),
                    ),
                    ("swap", m.swap.as_ref().map(|v| json!(v.value))),
                    ("kernel", m.kernel.as_ref().map(|v| json!(v.value))),
                    ("kernelTCP", m.kernel_tcp.as_ref().map(|v| json!(v.value))),
                    ("swappiness", m.swappiness.as_ref().map(|v| json!(v.value))),
                    (
                        "disableOOMKiller",
                        m.disable_oom_killer.as_ref().map(|v| json!(v.value)),
                    ),
                ],
            );
        });
    }
    if let Some(c) = &r.cpu {
        with_obj(res, "cpu", |cpu| {
            insert_set(
                cpu,
                &[
                    ("shares", c.shares.as_ref().map(|v| json!(v.value))),
                    ("quota", c.quota.as_ref().map(|v| json!(v.value))),
                    ("period", c.period.as_ref().map(|v| json!(v.value))),
                    (
                        "realtimeRuntime",
                        c.realtime_runtime.as_ref().map(|v| json!(v.value)),
                    ),
                    (
                        "realtimePeriod",
                        c.realtime_period.as_ref().map(|v| json!(v.value)),
                    ),
                    ("cpus", (!c.cpus.is_empty()).then(|| json!(c.cpus))),
                    ("mems", (!c.mems.is_empty()).then(|| json!(c.mems))),
                ],
            );
        });
    }
    if let Some(p) = &r.pids {
        with_obj(res, "pids", |pids| {
            pids.insert("limit".into(), json!(p.limit));
        });
    }
    if !r.unified.is_empty() {
        set_map(
            res,
            "unified",
            r.unified.iter().map(|(k, v)| (k.clone(), json!(v))),
        );
    }
    if !r.hugepage_limits.is_empty() {
        with_arr(res, "hugepageLimits", |h| {
            for l in &r.hugepage_limits {
                h.retain(|x| {
                    x.get("pageSize").and_then(Value::as_str) != Some(l.page_size.as_str())
                });
                h.push(json!({"pageSize": l.page_size, "limit": l.limit}));
            }
        });
    }
    if !r.devices.is_empty() {
        with_arr(res, "devices", |d| {
            for rule in &r.devices {
                let mut o = json!({"allow": rule.allow, "access": rule.access});
                if !rule.r#type.is_empty() {
                    o["type"] = json!(rule.r#type);
                }
                if let Some(m) = &rule.major {
                    o["major"] = json!(m.value);
                }
                if let Some(m) = &rule.minor {
                    o["minor"] = json!(m.value);
                }
                d.push(o);
            }
        });
    }
}

/// Apply `adj` to the NRI view of a container, so that later plugins see earlier plugins'
/// changes (as containerd does).
pub fn apply_adjustment_to_container(c: &mut Container, adj: &ContainerAdjustment) {
    for (k, v) in &adj.annotations {
        let (key, remove) = is_marked_for_removal(k);
        if remove {
            c.annotations.remove(key);
        } else {
            c.annotations.insert(key.to_owned(), v.clone());
        }
    }
    for kv in &adj.env {
        let (key, remove) = is_marked_for_removal(&kv.key);
        let prefix = format!("{key}=");
        c.env.retain(|e| !(e.starts_with(&prefix) || e == key));
        if !remove {
            c.env.push(format!("{key}={}", kv.value));
        }
    }
    for m in &adj.mounts {
        let (dest, remove) = is_marked_for_removal(&m.destination);
        c.mounts.retain(|x| x.destination != dest);
        if !remove {
            c.mounts.push(m.clone());
        }
    }
    if !adj.args.is_empty() {
        c.args = adj.args.clone();
    }
    c.cdi_devices.extend(adj.cdi_devices.iter().cloned());
    if let Some(r) = adj.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        let linux = c.linux.get_or_insert_with(LinuxContainer::default);
        merge_resources(linux.resources.get_or_insert_with(Default::default), r);
    }
}

/// Merge set fields of `src` into `dst` (NRI view).
pub fn merge_resources(dst: &mut LinuxResources, src: &LinuxResources) {
    if let Some(m) = &src.memory {
        let d = dst.memory.get_or_insert_with(Default::default);
        macro_rules! take { ($($f:ident),*) => { $( if m.$f.is_some() { d.$f = m.$f.clone(); } )* } }
        take!(
            limit,
            reservation,
            swap,
            kernel,
            kernel_tcp,
            swappiness,
            disable_oom_killer,
            use_hierarchy
        );
    }
    if let Some(c) = &src.cpu {
        let d = dst.cpu.get_or_insert_with(Default::default);
        macro_rules! take { ($($f:ident),*) => { $( if c.$f.is_some() { d.$f = c.$f.clone(); } )* } }
        take!(shares, quota, period, realtime_runtime, realtime_period);
        if !c.cpus.is_empty() {
            d.cpus = c.cpus.clone();
        }
        if !c.mems.is_empty() {
            d.mems = c.mems.clone();
        }
    }
    if src.pids.is_some() {
        dst.pids = src.pids;
    }
    for (k, v) in &src.unified {
        let (key, remove) = is_marked_for_removal(k);
        if remove {
            dst.unified.remove(key);
        } else {
            dst.unified.insert(key.to_owned(), v.clone());
        }
    }
    if !src.hugepage_limits.is_empty() {
        dst.hugepage_limits = src.hugepage_limits.clone();
    }
    if !src.devices.is_empty() {
        dst.devices.extend(src.devices.iter().cloned());
    }
    if src.blockio_class.is_some() {
        dst.blockio_class = src.blockio_class.clone();
    }
    if src.rdt_class.is_some() {
        dst.rdt_class = src.rdt_class.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Adjustment;

    #[test]
    fn adjustment_lands_in_the_spec() {
        let mut spec = default_spec(&["sh"]);
        spec["process"]["env"] = json!(["PATH=/bin", "DROP=1"]);
        let mut a = Adjustment::new();
        a.add_env("A", "1")
            .remove_env("DROP")
            .add_annotation("x", "y")
            .set_cpuset_cpus("2-3")
            .set_cpuset_mems("0")
            .set_cpu_shares(512)
            .set_memory_limit(1 << 20)
            .set_pids_limit(7)
            .add_unified("io.max", "8:0 rbps=1")
            .add_rlimit("RLIMIT_NOFILE", 10, 5)
            .add_bind_mount("/h", "/c", &["rbind", "ro"])
            .remove_mount("/proc")
            .add_net_device("eth9", "net1")
            .add_sysctl("net.ipv4.ip_forward", "1")
            .set_oom_score_adj(-500)
            .add_create_runtime_hook(Hook {
                path: "/bin/hook".into(),
                ..Default::default()
            });
        apply_adjustment(&mut spec, a.as_proto());
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(spec["annotations"]["x"], "y");
        let r = &spec["linux"]["resources"];
        assert_eq!(r["cpu"], json!({"cpus": "2-3", "mems": "0", "shares": 512}));
        assert_eq!(r["memory"]["limit"], 1 << 20);
        assert_eq!(r["pids"]["limit"], 7);
        assert_eq!(r["unified"]["io.max"], "8:0 rbps=1");
        assert_eq!(spec["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(spec["process"]["oomScoreAdj"], -500);
        assert_eq!(spec["mounts"].as_array().map(Vec::len), Some(1));
        assert_eq!(spec["mounts"][0]["destination"], "/c");
        assert_eq!(spec["linux"]["netDevices"]["eth9"]["name"], "net1");
        assert_eq!(spec["linux"]["sysctl"]["net.ipv4.ip_forward"], "1");
        assert_eq!(spec["hooks"]["createRuntime"][0]["path"], "/bin/hook");

        let mut b = Adjustment::new();
        b.remove_unified("io.max")
            .remove_annotation("x")
            .remove_net_device("eth9");
        apply_adjustment(&mut spec, b.as_proto());
        assert!(
            spec["linux"]["resources"]["unified"]
                .get("io.max")
                .is_none()
        );
        assert!(spec["annotations"].get("x").is_none());
        assert!(spec["linux"]["netDevices"].get("eth9").is_none());
    }
}
