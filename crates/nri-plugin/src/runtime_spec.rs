//! The runtime-spec concern: OCI fragments carried from the kubelet plugin's CDI spec in
//! `DRAKIT_RUNTIME_SPEC_<claim>` env vars become one NRI adjustment.
//!
//! For each container:
//! 1. every `DRAKIT_RUNTIME_SPEC_*` entry of the container's env is decoded strictly
//!    (`RuntimeSpecFragment::from_json`) and checked against the admin policy for the pod's
//!    namespace, each on its own, so a refusal names the claim it came from;
//! 2. the fragments are merged in ascending order of their env var names (a stable order that does
//!    not depend on CDI injection order): objects merge key by key, lists are concatenated, and
//!    two claims setting the same scalar (or the same env name / rlimit type / unified key /
//!    sysctl / annotation) to different values is a conflict, refused with both claims named;
//! 3. the merged fragment is translated into an NRI `ContainerAdjustment`. Every field must be
//!    consumed: a field NRI cannot apply (capabilities, AppArmor, OCI `blockIO` weights, ...) is
//!    refused with its path instead of being dropped silently.
//!
//! The transport env vars (`DRAKIT_RUNTIME_SPEC_*` and `DRAKIT_CPUS_*`) are always removed from
//! the container's final env.

use std::collections::BTreeMap;

use drakit_proto::nri as api;
use drakit_types::config::RuntimeSpecFragment;
use drakit_types::constants::{is_cpus_env_name, is_runtime_spec_env_name};
use drakit_types::policy::{self, Policy};
use nri::Adjustment;
use serde_json::{Map, Value};

/// Why a container's runtime-spec edits were refused.
#[derive(Debug, thiserror::Error)]
pub struct EditError {
    /// The env var (and so the claim) the offending fragment came from; two for conflicts.
    pub source_env: String,
    /// Field path, starting at `spec` (empty when `reason` names it itself).
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Decoder and policy errors carry their field path in `reason` already.
        if self.field.is_empty() {
            write!(
                f,
                "runtime-spec edit from {}: {}",
                self.source_env, self.reason
            )
        } else {
            write!(
                f,
                "runtime-spec edit from {}: {}: {}",
                self.source_env, self.field, self.reason
            )
        }
    }
}

fn err(source_env: &str, field: &str, reason: impl Into<String>) -> EditError {
    EditError {
        source_env: source_env.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// One fragment found in a container's env.
#[derive(Debug, Clone)]
pub struct Carried<'a> {
    pub env_name: &'a str,
    pub value: &'a str,
}

/// The `DRAKIT_RUNTIME_SPEC_*` entries of an env list, sorted by name.
pub fn carried(env: &[String]) -> Vec<Carried<'_>> {
    let mut out: Vec<Carried<'_>> = env
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| is_runtime_spec_env_name(k))
        .map(|(k, v)| Carried {
            env_name: k,
            value: v,
        })
        .collect();
    out.sort_by(|a, b| a.env_name.cmp(b.env_name));
    out
}

/// The transport env names present in `env` (to be removed from the container).
pub fn transport_env_names(env: &[String]) -> Vec<&str> {
    let mut names: Vec<&str> = env
        .iter()
        .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
        .filter(|k| is_runtime_spec_env_name(k) || is_cpus_env_name(k))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Decodes, checks and merges the fragments of one container and adds the result to `adj`.
/// Nothing is added when any fragment is refused.
pub fn apply(
    policy: &Policy,
    namespace: &str,
    env: &[String],
    adj: &mut Adjustment,
) -> Result<(), EditError> {
    let fragments = carried(env);
    if fragments.is_empty() {
        return Ok(());
    }
    let mut merged = Value::Object(Map::new());
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for f in &fragments {
        let frag = RuntimeSpecFragment::from_json(f.value.as_bytes())
            .map_err(|e| err(f.env_name, "", e.to_string()))?;
        policy::check(policy, namespace, &frag).map_err(|e| err(f.env_name, "", e.to_string()))?;
        let tree = serde_json::to_value(&frag)
            .map_err(|e| err(f.env_name, "spec", format!("cannot re-encode: {e}")))?;
        merge(&mut merged, tree, "spec", f.env_name, &mut owners)?;
    }
    let first = fragments.first().map_or("", |f| f.env_name);
    let mut staged = Adjustment::new();
    translate(merged, &mut staged, &owners, first)?;
    absorb(adj, staged);
    Ok(())
}

/// Merges `from` into `into`. `owners` remembers which env var set each scalar path.
fn merge(
    into: &mut Value,
    from: Value,
    path: &str,
    source: &str,
    owners: &mut BTreeMap<String, String>,
) -> Result<(), EditError> {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let p = format!("{path}.{k}");
                match a.get_mut(&k) {
                    Some(slot) => merge(slot, v, &p, source, owners)?,
                    None => {
                        record_owners(&v, &p, source, owners);
                        a.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) => {
            let start = a.len();
            for (i, v) in b.into_iter().enumerate() {
                record_owners(&v, &format!("{path}[{}]", start + i), source, owners);
                a.push(v);
            }
            Ok(())
        }
        (slot, v) => {
            if *slot == v {
                return Ok(());
            }
            let earlier = owners.get(path).cloned().unwrap_or_default();
            Err(err(
                &format!("{earlier} and {source}"),
                path,
                format!("set to {slot} and to {v} by two claims"),
            ))
        }
    }
}

fn record_owners(v: &Value, path: &str, source: &str, owners: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                record_owners(v, &format!("{path}.{k}"), source, owners);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                record_owners(v, &format!("{path}[{i}]"), source, owners);
            }
        }
        _ => {
            owners.insert(path.to_string(), source.to_string());
        }
    }
}

/// Moves what `staged` holds into `adj` (the sidecar's adjustment may already carry other
/// concerns' edits).
fn absorb(adj: &mut Adjustment, staged: Adjustment) {
    let mut a = std::mem::take(adj).into_proto();
    let s = staged.into_proto();
    a.annotations.extend(s.annotations);
    a.mounts.extend(s.mounts);
    a.env.extend(s.env);
    a.rlimits.extend(s.rlimits);
    if let Some(h) = s.hooks {
        let ah = a.hooks.get_or_insert_with(Default::default);
        ah.prestart.extend(h.prestart);
        ah.create_runtime.extend(h.create_runtime);
        ah.create_container.extend(h.create_container);
        ah.start_container.extend(h.start_container);
        ah.poststart.extend(h.poststart);
        ah.poststop.extend(h.poststop);
    }
    if let Some(l) = s.linux {
        let al = a.linux.get_or_insert_with(Default::default);
        al.devices.extend(l.devices);
        al.namespaces.extend(l.namespaces);
        al.sysctl.extend(l.sysctl);
        if l.oom_score_adj.is_some() {
            al.oom_score_adj = l.oom_score_adj;
        }
        if l.io_priority.is_some() {
            al.io_priority = l.io_priority;
        }
        if let Some(r) = l.resources {
            let ar = al.resources.get_or_insert_with(Default::default);
            merge_resources(ar, r);
        }
    }
    *adj = Adjustment::from_proto(a);
}

fn merge_resources(a: &mut api::LinuxResources, r: api::LinuxResources) {
    if let Some(m) = r.memory {
        let am = a.memory.get_or_insert_with(Default::default);
        macro_rules! take {
            ($($f:ident),*) => { $( if m.$f.is_some() { am.$f = m.$f; } )* };
        }
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
    if let Some(c) = r.cpu {
        let ac = a.cpu.get_or_insert_with(Default::default);
        macro_rules! take {
            ($($f:ident),*) => { $( if c.$f.is_some() { ac.$f = c.$f; } )* };
        }
        take!(shares, quota, period, realtime_runtime, realtime_period);
        if !c.cpus.is_empty() {
            ac.cpus = c.cpus;
        }
        if !c.mems.is_empty() {
            ac.mems = c.mems;
        }
    }
    a.hugepage_limits.extend(r.hugepage_limits);
    a.unified.extend(r.unified);
    a.devices.extend(r.devices);
    if r.pids.is_some() {
        a.pids = r.pids;
    }
}

/// Translates the merged fragment. `first` names the source in errors that cannot be pinned to
/// one claim more precisely (owners gives the exact one for scalars).
fn translate(
    merged: Value,
    adj: &mut Adjustment,
    owners: &BTreeMap<String, String>,
    first: &str,
) -> Result<(), EditError> {
    let mut t = Translator { owners, first };
    let Value::Object(mut root) = merged else {
        return Ok(());
    };
    if let Some(Value::Object(mut process)) = root.remove("process") {
        t.process(&mut process, adj)?;
        t.leftover(&process, "spec.process")?;
    }
    if let Some(Value::Object(mut linux)) = root.remove("linux") {
        t.linux(&mut linux, adj)?;
        t.leftover(&linux, "spec.linux")?;
    }
    if let Some(Value::Array(mounts)) = root.remove("mounts") {
        for (i, m) in mounts.into_iter().enumerate() {
            let p = format!("spec.mounts[{i}]");
            let mut m = t.object(m, &p)?;
            let mount = api::Mount {
                destination: t.take_str(&mut m, "destination", &p)?.unwrap_or_default(),
                r#type: t.take_str(&mut m, "type", &p)?.unwrap_or_default(),
                source: t.take_str(&mut m, "source", &p)?.unwrap_or_default(),
                options: t.take_strings(&mut m, "options", &p)?,
            };
            t.leftover(&m, &p)?;
            adj.add_mount(mount);
        }
    }
    if let Some(Value::Object(mut hooks)) = root.remove("hooks") {
        let mut out = api::Hooks::default();
        for (name, list) in [
            ("prestart", &mut out.prestart),
            ("createRuntime", &mut out.create_runtime),
            ("createContainer", &mut out.create_container),
            ("startContainer", &mut out.start_container),
            ("poststart", &mut out.poststart),
            ("poststop", &mut out.poststop),
        ] {
            if let Some(Value::Array(hs)) = hooks.remove(name) {
                for (i, h) in hs.into_iter().enumerate() {
                    let p = format!("spec.hooks.{name}[{i}]");
                    let mut h = t.object(h, &p)?;
                    let hook = api::Hook {
                        path: t.take_str(&mut h, "path", &p)?.unwrap_or_default(),
                        args: t.take_strings(&mut h, "args", &p)?,
                        env: t.take_strings(&mut h, "env", &p)?,
                        timeout: t
                            .take_i64(&mut h, "timeout", &p)?
                            .map(|v| api::OptionalInt { value: v }),
                    };
                    t.leftover(&h, &p)?;
                    list.push(hook);
                }
            }
        }
        t.leftover(&hooks, "spec.hooks")?;
        adj.add_hooks(out);
    }
    if let Some(Value::Object(ann)) = root.remove("annotations") {
        for (k, v) in ann {
            let p = format!("spec.annotations[{k:?}]");
            let v = t.string(v, &p)?;
            adj.add_annotation(k, v);
        }
    }
    t.leftover(&root, "spec")
}

struct Translator<'a> {
    owners: &'a BTreeMap<String, String>,
    first: &'a str,
}

impl Translator<'_> {
    /// The env var that set `path` (or one below it).
    fn source_of(&self, path: &str) -> &str {
        self.owners
            .range(path.to_string()..)
            .next()
            .filter(|(k, _)| k.starts_with(path))
            .map_or(self.first, |(_, v)| v.as_str())
    }

    fn fail(&self, path: &str, reason: impl Into<String>) -> EditError {
        err(self.source_of(path), path, reason)
    }

    fn leftover(&self, m: &Map<String, Value>, path: &str) -> Result<(), EditError> {
        match m.iter().find(|(_, v)| !v.is_null()) {
            None => Ok(()),
            Some((k, _)) => {
                let p = format!("{path}.{k}");
                Err(self.fail(
                    &p,
                    "cannot be applied through NRI (no adjustment field for it); remove it from the claim",
                ))
            }
        }
    }

    fn object(&self, v: Value, path: &str) -> Result<Map<String, Value>, EditError> {
        match v {
            Value::Object(m) => Ok(m),
            other => Err(self.fail(path, format!("must be an object, not {other}"))),
        }
    }

    fn string(&self, v: Value, path: &str) -> Result<String, EditError> {
        match v {
            Value::String(s) => Ok(s),
            other => Err(self.fail(path, format!("must be a string, not {other}"))),
        }
    }

    fn take_str(
        &self,
        m: &mut Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Option<String>, EditError> {
        match m.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.string(v, &format!("{path}.{key}")).map(Some),
        }
    }

    fn take_strings(
        &self,
        m: &mut Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Vec<String>, EditError> {
        match m.remove(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .into_iter()
                .enumerate()
                .map(|(i, v)| self.string(v, &format!("{path}.{key}[{i}]")))
                .collect(),
            Some(other) => Err(self.fail(
                &format!("{path}.{key}"),
                format!("must be a list of strings, not {other}"),
            )),
        }
    }

    fn take_i64(
        &self,
        m: &mut Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Option<i64>, EditError> {
        match m.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                self.fail(
                    &format!("{path}.{key}"),
                    format!("must be an integer, not {v}"),
                )
            }),
        }
    }

    fn take_u64(
        &self,
        m: &mut Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Option<u64>, EditError> {
        match m.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.fail(
                    &format!("{path}.{key}"),
                    format!("must be a non-negative integer, not {v}"),
                )
            }),
        }
    }

    fn take_bool(
        &self,
        m: &mut Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Option<bool>, EditError> {
        match m.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(self.fail(
                &format!("{path}.{key}"),
                format!("must be true or false, not {v}"),
            )),
        }
    }

    fn process(
        &mut self,
        p: &mut Map<String, Value>,
        adj: &mut Adjustment,
    ) -> Result<(), EditError> {
        let env = self.take_strings(p, "env", "spec.process")?;
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (i, e) in env.iter().enumerate() {
            let path = format!("spec.process.env[{i}]");
            let (k, v) = e
                .split_once('=')
                .ok_or_else(|| self.fail(&path, "must be NAME=value"))?;
            if let Some(prev) = seen.get(k) {
                if prev != v {
                    return Err(self.fail(
                        &path,
                        format!("{k} is set to two different values by the container's claims"),
                    ));
                }
                continue;
            }
            seen.insert(k.to_string(), v.to_string());
            adj.add_env(k, v);
        }
        if let Some(Value::Array(rl)) = p.remove("rlimits") {
            let mut types: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for (i, r) in rl.into_iter().enumerate() {
                let path = format!("spec.process.rlimits[{i}]");
                let mut r = self.object(r, &path)?;
                let ty = self.take_str(&mut r, "type", &path)?.unwrap_or_default();
                let hard = self.take_u64(&mut r, "hard", &path)?.unwrap_or(0);
                let soft = self.take_u64(&mut r, "soft", &path)?.unwrap_or(0);
                self.leftover(&r, &path)?;
                match types.get(&ty) {
                    Some(prev) if *prev != (hard, soft) => {
                        return Err(self.fail(
                            &path,
                            format!("{ty} is limited differently by two of the container's claims"),
                        ));
                    }
                    Some(_) => continue,
                    None => {
                        types.insert(ty.clone(), (hard, soft));
                        adj.add_rlimit(ty, hard, soft);
                    }
                }
            }
        }
        if let Some(v) = self.take_i64(p, "oomScoreAdj", "spec.process")? {
            adj.set_oom_score_adj(v);
        }
        if let Some(Value::Object(mut io)) = p.remove("ioPriority") {
            let path = "spec.process.ioPriority";
            let class = self.take_str(&mut io, "class", path)?.unwrap_or_default();
            let priority = self.take_i64(&mut io, "priority", path)?.unwrap_or(0);
            self.leftover(&io, path)?;
            let class = match class.as_str() {
                "IOPRIO_CLASS_RT" => api::IoPrioClass::IoprioClassRt,
                "IOPRIO_CLASS_BE" => api::IoPrioClass::IoprioClassBe,
                "IOPRIO_CLASS_IDLE" => api::IoPrioClass::IoprioClassIdle,
                other => {
                    return Err(self.fail(
                        &format!("{path}.class"),
                        format!("unknown I/O priority class {other:?}"),
                    ));
                }
            };
            let priority = i32::try_from(priority)
                .map_err(|_| self.fail(&format!("{path}.priority"), "out of range"))?;
            let mut a = std::mem::take(adj).into_proto();
            a.linux.get_or_insert_with(Default::default).io_priority = Some(api::LinuxIoPriority {
                class: class as i32,
                priority,
            });
            *adj = Adjustment::from_proto(a);
        }
        Ok(())
    }

    fn linux(&mut self, l: &mut Map<String, Value>, adj: &mut Adjustment) -> Result<(), EditError> {
        if let Some(Value::Object(mut r)) = l.remove("resources") {
            self.resources(&mut r, adj)?;
            self.leftover(&r, "spec.linux.resources")?;
        }
        if let Some(Value::Array(devs)) = l.remove("devices") {
            for (i, d) in devs.into_iter().enumerate() {
                let path = format!("spec.linux.devices[{i}]");
                let mut d = self.object(d, &path)?;
                let dev = api::LinuxDevice {
                    path: self.take_str(&mut d, "path", &path)?.unwrap_or_default(),
                    r#type: self.take_str(&mut d, "type", &path)?.unwrap_or_default(),
                    major: self.take_i64(&mut d, "major", &path)?.unwrap_or(0),
                    minor: self.take_i64(&mut d, "minor", &path)?.unwrap_or(0),
                    file_mode: self.take_u64(&mut d, "fileMode", &path)?.map(|v| {
                        api::OptionalFileMode {
                            value: u32::try_from(v).unwrap_or(u32::MAX),
                        }
                    }),
                    uid: self
                        .take_u64(&mut d, "uid", &path)?
                        .map(|v| api::OptionalUInt32 {
                            value: u32::try_from(v).unwrap_or(u32::MAX),
                        }),
                    gid: self
                        .take_u64(&mut d, "gid", &path)?
                        .map(|v| api::OptionalUInt32 {
                            value: u32::try_from(v).unwrap_or(u32::MAX),
                        }),
                };
                self.leftover(&d, &path)?;
                adj.add_device(dev);
            }
        }
        if let Some(Value::Array(nss)) = l.remove("namespaces") {
            for (i, n) in nss.into_iter().enumerate() {
                let path = format!("spec.linux.namespaces[{i}]");
                let mut n = self.object(n, &path)?;
                let ty = self.take_str(&mut n, "type", &path)?.unwrap_or_default();
                let p = self.take_str(&mut n, "path", &path)?.unwrap_or_default();
                self.leftover(&n, &path)?;
                adj.add_or_replace_namespace(ty, p);
            }
        }
        if let Some(Value::Object(sysctl)) = l.remove("sysctl") {
            for (k, v) in sysctl {
                let path = format!("spec.linux.sysctl[{k:?}]");
                let v = self.string(v, &path)?;
                adj.add_sysctl(k, v);
            }
        }
        Ok(())
    }

    fn resources(
        &mut self,
        r: &mut Map<String, Value>,
        adj: &mut Adjustment,
    ) -> Result<(), EditError> {
        let base = "spec.linux.resources";
        let mut res = api::LinuxResources::default();
        if let Some(Value::Object(mut m)) = r.remove("memory") {
            let p = format!("{base}.memory");
            let mem = res.memory.get_or_insert_with(Default::default);
            let i64v = |v: Option<i64>| v.map(|value| api::OptionalInt64 { value });
            mem.limit = i64v(self.take_i64(&mut m, "limit", &p)?);
            mem.reservation = i64v(self.take_i64(&mut m, "reservation", &p)?);
            mem.swap = i64v(self.take_i64(&mut m, "swap", &p)?);
            mem.swappiness = self
                .take_u64(&mut m, "swappiness", &p)?
                .map(|value| api::OptionalUInt64 { value });
            mem.disable_oom_killer = self
                .take_bool(&mut m, "disableOOMKiller", &p)?
                .map(|value| api::OptionalBool { value });
            self.leftover(&m, &p)?;
        }
        if let Some(Value::Object(mut m)) = r.remove("cpu") {
            let p = format!("{base}.cpu");
            let cpu = res.cpu.get_or_insert_with(Default::default);
            cpu.shares = self
                .take_u64(&mut m, "shares", &p)?
                .map(|value| api::OptionalUInt64 { value });
            cpu.quota = self
                .take_i64(&mut m, "quota", &p)?
                .map(|value| api::OptionalInt64 { value });
            cpu.period = self
                .take_u64(&mut m, "period", &p)?
                .map(|value| api::OptionalUInt64 { value });
            cpu.realtime_runtime = self
                .take_i64(&mut m, "realtimeRuntime", &p)?
                .map(|value| api::OptionalInt64 { value });
            cpu.realtime_period = self
                .take_u64(&mut m, "realtimePeriod", &p)?
                .map(|value| api::OptionalUInt64 { value });
            cpu.cpus = self.take_str(&mut m, "cpus", &p)?.unwrap_or_default();
            cpu.mems = self.take_str(&mut m, "mems", &p)?.unwrap_or_default();
            self.leftover(&m, &p)?;
        }
        if let Some(Value::Object(mut m)) = r.remove("pids") {
            let p = format!("{base}.pids");
            if let Some(limit) = self.take_i64(&mut m, "limit", &p)? {
                res.pids = Some(api::LinuxPids { limit });
            }
            self.leftover(&m, &p)?;
        }
        if let Some(Value::Array(hp)) = r.remove("hugepageLimits") {
            for (i, h) in hp.into_iter().enumerate() {
                let p = format!("{base}.hugepageLimits[{i}]");
                let mut h = self.object(h, &p)?;
                let page_size = self.take_str(&mut h, "pageSize", &p)?.unwrap_or_default();
                let limit = self.take_u64(&mut h, "limit", &p)?.unwrap_or(0);
                self.leftover(&h, &p)?;
                res.hugepage_limits
                    .push(api::HugepageLimit { page_size, limit });
            }
        }
        if let Some(Value::Object(u)) = r.remove("unified") {
            for (k, v) in u {
                let p = format!("{base}.unified[{k:?}]");
                let v = self.string(v, &p)?;
                res.unified.insert(k, v);
            }
        }
        if let Some(Value::Array(devs)) = r.remove("devices") {
            for (i, d) in devs.into_iter().enumerate() {
                let p = format!("{base}.devices[{i}]");
                let mut d = self.object(d, &p)?;
                let rule = api::LinuxDeviceCgroup {
                    allow: self.take_bool(&mut d, "allow", &p)?.unwrap_or(false),
                    r#type: self.take_str(&mut d, "type", &p)?.unwrap_or_default(),
                    major: self
                        .take_i64(&mut d, "major", &p)?
                        .map(|value| api::OptionalInt64 { value }),
                    minor: self
                        .take_i64(&mut d, "minor", &p)?
                        .map(|value| api::OptionalInt64 { value }),
                    access: self.take_str(&mut d, "access", &p)?.unwrap_or_default(),
                };
                self.leftover(&d, &p)?;
                res.devices.push(rule);
            }
        }
        if r.contains_key("blockIO") {
            return Err(self.fail(
                &format!("{base}.blockIO"),
                "NRI cannot apply OCI blockIO weights or throttles; use linux.resources.unified \
                 (io.max, io.weight) on a cgroup v2 node instead",
            ));
        }
        let mut a = std::mem::take(adj).into_proto();
        let ar = a
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default);
        merge_resources(ar, res);
        *adj = Adjustment::from_proto(a);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(entries: &[(&str, &str)]) -> Vec<String> {
        entries.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    fn run(entries: &[(&str, &str)]) -> Result<api::ContainerAdjustment, EditError> {
        let mut adj = Adjustment::new();
        apply(&Policy::default(), "default", &env(entries), &mut adj)?;
        Ok(adj.into_proto())
    }

    #[test]
    fn io_max_memory_high_pids_max() {
        let a = run(&[(
            "DRAKIT_RUNTIME_SPEC_c1",
            r#"{"linux":{"resources":{"unified":{"io.max":"8:0 rbps=1048576","memory.high":"1073741824","pids.max":"100"}}}}"#,
        )])
        .unwrap();
        let r = a.linux.unwrap().resources.unwrap();
        assert_eq!(r.unified["io.max"], "8:0 rbps=1048576");
        assert_eq!(r.unified["memory.high"], "1073741824");
        assert_eq!(r.unified["pids.max"], "100");
    }

    #[test]
    fn no_fragments_no_edits() {
        let a = run(&[("PATH", "/bin")]).unwrap();
        assert!(a.linux.is_none() && a.env.is_empty());
    }

    #[test]
    fn merge_is_ordered_and_conflicts_are_refused() {
        let a = run(&[
            (
                "DRAKIT_RUNTIME_SPEC_b",
                r#"{"linux":{"resources":{"unified":{"pids.max":"100"}}}}"#,
            ),
            (
                "DRAKIT_RUNTIME_SPEC_a",
                r#"{"linux":{"resources":{"unified":{"memory.high":"1000000"}}}}"#,
            ),
        ])
        .unwrap();
        let r = a.linux.unwrap().resources.unwrap();
        assert_eq!(r.unified.len(), 2);
        let e = run(&[
            (
                "DRAKIT_RUNTIME_SPEC_b",
                r#"{"linux":{"resources":{"unified":{"pids.max":"100"}}}}"#,
            ),
            (
                "DRAKIT_RUNTIME_SPEC_a",
                r#"{"linux":{"resources":{"unified":{"pids.max":"200"}}}}"#,
            ),
        ])
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("DRAKIT_RUNTIME_SPEC_a and DRAKIT_RUNTIME_SPEC_b"),
            "{msg}"
        );
        assert!(
            msg.contains("spec.linux.resources.unified.pids.max"),
            "{msg}"
        );
    }

    #[test]
    fn refusals_name_the_claim_and_field() {
        for (frag, field) in [
            (
                r#"{"mounts":[{"destination":"/host","source":"/","type":"bind","options":["rbind"]}]}"#,
                "spec.mounts",
            ),
            (
                r#"{"hooks":{"prestart":[{"path":"/bin/sh"}]}}"#,
                "spec.hooks",
            ),
            (
                r#"{"process":{"capabilities":{"bounding":["CAP_SYS_ADMIN"]}}}"#,
                "spec.process.capabilities",
            ),
            (
                r#"{"linux":{"resources":{"unified":{"../../x":"1"}}}}"#,
                "unified",
            ),
            ("not json", "spec"),
            (
                r#"{"linux":{"resources":{"unified":{"io.max":"1"}}},"linux":{}}"#,
                "linux",
            ),
        ] {
            let e = run(&[("DRAKIT_RUNTIME_SPEC_claim_1", frag)]).unwrap_err();
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains("DRAKIT_RUNTIME_SPEC_claim_1"), "{msg}");
            assert!(msg.contains(field), "{field}: {msg}");
        }
    }

    #[test]
    fn transport_env_names_are_found() {
        let e = env(&[
            ("PATH", "/bin"),
            ("DRAKIT_RUNTIME_SPEC_a", "{}"),
            ("DRAKIT_CPUS_b", "1-2"),
        ]);
        assert_eq!(
            transport_env_names(&e),
            vec!["DRAKIT_CPUS_b", "DRAKIT_RUNTIME_SPEC_a"]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let policy = Policy::default();
        for v in [
            "",
            "{",
            "null",
            "[]",
            "1",
            "\"x\"",
            "{\"linux\":null}",
            "{\"linux\":{\"resources\":[]}}",
            "{\"process\":{\"env\":[1]}}",
            "\u{0}",
            "{\"a\":{\"b\":{\"c\":{}}}}",
        ] {
            let mut adj = Adjustment::new();
            let _ = apply(
                &policy,
                "ns",
                &[format!("DRAKIT_RUNTIME_SPEC_x={v}")],
                &mut adj,
            );
        }
    }
}
