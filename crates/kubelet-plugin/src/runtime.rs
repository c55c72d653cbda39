//! The in-process backend of `runtime.drakit.dev`: a claim's `RuntimeSpecEditConfig` is decoded
//! strictly, checked against the admin policy and the node's cgroup mode, and turned into one
//! environment variable in the claim's CDI spec (`DRAKIT_RUNTIME_SPEC_<uid>=<compact JSON>`),
//! which the NRI sidecar applies at CreateContainer.
//!
//! Decoding and policy live here until `drakit_types::{config, policy}` land; the checks follow
//! the default policy of DESIGN.md: resource fields only (cgroup v2 `unified` with key checks,
//! cpu, memory, pids, hugepage limits, rlimits, env).

use std::path::Path;

use drakit_proto::drakit::{
    ContainerEdits, Device, Health, Inventory, PrepareRequest, PrepareResponse, PreparedDevice,
    UnprepareRequest,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;

use crate::backend::{Backend, BackendError};

/// `apiVersion` of drakit claim configs.
pub const CONFIG_API_VERSION: &str = "drakit.dev/v1alpha1";
/// `kind` of a runtime-spec edit.
pub const KIND: &str = "RuntimeSpecEditConfig";
/// Prefix of the per-claim variable (as `drakit_types::constants`).
pub const ENV_PREFIX: &str = "DRAKIT_RUNTIME_SPEC_";
/// Name of the one shared device the runtime driver publishes.
pub const DEVICE_NAME: &str = "spec-edit";

/// The node's cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v2 mounted at the root (`cgroup.controllers` exists there).
    Unified,
    /// cgroup v1 or hybrid: `unified` keys cannot be applied.
    Legacy,
}

/// Detects the cgroup mode under `cgroupfs_root` (normally `/sys/fs/cgroup`).
pub fn detect_cgroup_mode(cgroupfs_root: &Path) -> CgroupMode {
    if cgroupfs_root.join("cgroup.controllers").is_file() {
        CgroupMode::Unified
    } else {
        CgroupMode::Legacy
    }
}

/// `DRAKIT_RUNTIME_SPEC_<uid with [^A-Za-z0-9_] replaced by _>`.
pub fn env_name(claim_uid: &str) -> String {
    let suffix: String = claim_uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{ENV_PREFIX}{suffix}")
}

fn refuse(field: &str, message: impl std::fmt::Display) -> String {
    format!("{field}: {message}")
}

fn only_keys(v: &Value, field: &str, allowed: &[&str]) -> Result<(), String> {
    let Some(obj) = v.as_object() else {
        return Err(refuse(field, "must be an object"));
    };
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(refuse(
                &format!("{field}.{k}"),
                format!(
                    "not allowed by the node policy (allowed here: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn check_unified_key(key: &str) -> bool {
    let Some((controller, rest)) = key.split_once('.') else {
        return false;
    };
    !controller.is_empty()
        && controller.bytes().all(|b| b.is_ascii_lowercase())
        && controller != "cgroup"
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && !key.contains("..")
}

/// Decodes and checks one config; returns the `spec` fragment to hand to the NRI sidecar.
pub fn check_config(config_json: &str, mode: CgroupMode) -> Result<Value, String> {
    if config_json.is_empty() {
        return Err(
            "no RuntimeSpecEditConfig given (opaque config for this driver is required)".into(),
        );
    }
    let v: Value = serde_json::from_str(config_json).map_err(|e| refuse("parameters", e))?;
    only_keys(&v, "parameters", &["apiVersion", "kind", "spec"])?;
    match v.get("apiVersion").and_then(Value::as_str) {
        Some(CONFIG_API_VERSION) => {}
        other => {
            return Err(refuse(
                "parameters.apiVersion",
                format!("must be {CONFIG_API_VERSION:?}, got {other:?}"),
            ));
        }
    }
    match v.get("kind").and_then(Value::as_str) {
        Some(KIND) => {}
        other => {
            return Err(refuse(
                "parameters.kind",
                format!("must be {KIND:?}, got {other:?}"),
            ));
        }
    }
    let Some(spec) = v.get("spec") else {
        return Err(refuse("parameters.spec", "is required"));
    };
    only_keys(spec, "spec", &["linux", "process"])?;
    if let Some(linux) = spec.get("linux") {
        only_keys(linux, "spec.linux", &["resources"])?;
        if let Some(res) = linux.get("resources") {
            only_keys(
                res,
                "spec.linux.resources",
                &["unified", "cpu", "memory", "pids", "hugepageLimits"],
            )?;
            if let Some(unified) = res.get("unified") {
                let Some(map) = unified.as_object() else {
                    return Err(refuse(
                        "spec.linux.resources.unified",
                        "must be a map of strings",
                    ));
                };
                if mode == CgroupMode::Legacy && !map.is_empty() {
                    return Err(refuse(
                        "spec.linux.resources.unified",
                        "this node runs cgroup v1, where runc refuses unified cgroup v2 keys; schedule the pod on a cgroup v2 node",
                    ));
                }
                for (k, val) in map {
                    let field = format!("spec.linux.resources.unified[{k:?}]");
                    if !check_unified_key(k) {
                        return Err(refuse(
                            &field,
                            "not a cgroup v2 interface file name (<controller>.<name>, cgroup.* refused)",
                        ));
                    }
                    match val.as_str() {
                        Some(s) if !s.contains(['\n', '\0']) => {}
                        _ => return Err(refuse(&field, "value must be a one-line string")),
                    }
                }
            }
            for (key, allowed) in [
                (
                    "cpu",
                    &[
                        "shares",
                        "quota",
                        "burst",
                        "period",
                        "realtimeRuntime",
                        "realtimePeriod",
                        "cpus",
                        "mems",
                        "idle",
                    ][..],
                ),
                (
                    "memory",
                    &[
                        "limit",
                        "reservation",
                        "swap",
                        "kernel",
                        "kernelTCP",
                        "swappiness",
                        "disableOOMKiller",
                        "useHierarchy",
                        "checkBeforeUpdate",
                    ][..],
                ),
                ("pids", &["limit"][..]),
            ] {
                if let Some(sub) = res.get(key) {
                    only_keys(sub, &format!("spec.linux.resources.{key}"), allowed)?;
                }
            }
            if let Some(h) = res.get("hugepageLimits")
                && !h.is_array()
            {
                return Err(refuse(
                    "spec.linux.resources.hugepageLimits",
                    "must be a list",
                ));
            }
        }
    }
    if let Some(process) = spec.get("process") {
        only_keys(process, "spec.process", &["rlimits", "env"])?;
        if let Some(env) = process.get("env") {
            let Some(list) = env.as_array() else {
                return Err(refuse(
                    "spec.process.env",
                    "must be a list of NAME=value strings",
                ));
            };
            for (i, e) in list.iter().enumerate() {
                let field = format!("spec.process.env[{i}]");
                let Some(s) = e.as_str() else {
                    return Err(refuse(&field, "must be a string"));
                };
                let Some((name, _)) = s.split_once('=') else {
                    return Err(refuse(&field, "must be NAME=value"));
                };
                if name.is_empty() || name.starts_with("DRAKIT_") || s.contains('\0') {
                    return Err(refuse(&field, "empty, reserved (DRAKIT_*) or invalid name"));
                }
            }
        }
        if let Some(r) = process.get("rlimits") {
            let Some(list) = r.as_array() else {
                return Err(refuse("spec.process.rlimits", "must be a list"));
            };
            for (i, item) in list.iter().enumerate() {
                only_keys(
                    item,
                    &format!("spec.process.rlimits[{i}]"),
                    &["type", "hard", "soft"],
                )?;
            }
        }
    }
    Ok(spec.clone())
}

/// The in-process runtime-spec backend.
#[derive(Debug, Clone)]
pub struct RuntimeBackend {
    mode: CgroupMode,
}

impl RuntimeBackend {
    pub fn new(mode: CgroupMode) -> Self {
        Self { mode }
    }

    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// The inventory: one shared device that any number of claims may hold.
    pub fn inventory() -> Inventory {
        Inventory {
            generation: 1,
            pool: String::new(),
            devices: vec![Device {
                name: DEVICE_NAME.into(),
                allow_multiple_allocations: true,
                health: Health::Healthy as i32,
                ..Default::default()
            }],
        }
    }

    fn prepare_sync(&self, req: &PrepareRequest) -> Result<PrepareResponse, BackendError> {
        let uid = req
            .claim
            .as_ref()
            .map(|c| c.uid.as_str())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (i, d) in req.devices.iter().enumerate() {
            let spec =
                check_config(&d.config_json, self.mode).map_err(|m| BackendError::Refused {
                    message: format!("device {:?} (results[{i}]): {m}", d.device),
                })?;
            let value = serde_json::to_string(&spec).unwrap_or_default();
            out.push(PreparedDevice {
                requests: d.requests.clone(),
                pool: d.pool.clone(),
                device: d.device.clone(),
                share_id: d.share_id.clone(),
                edits: Some(ContainerEdits {
                    env: vec![format!("{}={value}", env_name(uid))],
                    ..Default::default()
                }),
                network_data: None,
                conditions: Vec::new(),
            });
        }
        Ok(PrepareResponse { devices: out })
    }
}

impl Backend for RuntimeBackend {
    fn name(&self) -> &str {
        "runtime (in-process)"
    }

    fn prepare(&self, req: PrepareRequest) -> BoxFuture<'_, Result<PrepareResponse, BackendError>> {
        let r = self.prepare_sync(&req);
        Box::pin(async move { r })
    }

    fn unprepare(&self, _req: UnprepareRequest) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn watch_devices(
        &self,
        _driver: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Inventory, BackendError>>, BackendError>>
    {
        Box::pin(async {
            // Sends the inventory once, then stays open (it never changes).
            let s = futures::stream::once(async { Ok(Self::inventory()) })
                .chain(futures::stream::pending());
            Ok(s.boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(spec: Value) -> String {
        json!({"apiVersion": CONFIG_API_VERSION, "kind": KIND, "spec": spec}).to_string()
    }

    #[test]
    fn accepts_resource_edits() {
        let s = json!({"linux":{"resources":{"unified":{"io.max":"259:0 rbps=2097152","memory.high":"268435456"},"pids":{"limit":100}}},
                       "process":{"env":["A=b"],"rlimits":[{"type":"RLIMIT_NOFILE","hard":10,"soft":10}]}});
        assert_eq!(
            check_config(&cfg(s.clone()), CgroupMode::Unified).unwrap(),
            s
        );
    }

    #[test]
    fn refuses_outside_policy_with_field_paths() {
        for (spec, field) in [
            (json!({"hooks":{}}), "spec.hooks"),
            (json!({"mounts":[]}), "spec.mounts"),
            (json!({"linux":{"namespaces":[]}}), "spec.linux.namespaces"),
            (
                json!({"linux":{"resources":{"devices":[]}}}),
                "spec.linux.resources.devices",
            ),
            (
                json!({"linux":{"resources":{"unified":{"cgroup.procs":"1"}}}}),
                "cgroup.procs",
            ),
            (
                json!({"linux":{"resources":{"unified":{"../x":"1"}}}}),
                "unified",
            ),
            (
                json!({"process":{"env":["DRAKIT_X=1"]}}),
                "spec.process.env[0]",
            ),
            (
                json!({"process":{"capabilities":{}}}),
                "spec.process.capabilities",
            ),
        ] {
            let e = check_config(&cfg(spec), CgroupMode::Unified).unwrap_err();
            assert!(e.contains(field), "{e} should name {field}");
        }
        let e = check_config(r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"RuntimeSpecEditConfig","spec":{},"extra":1}"#, CgroupMode::Unified).unwrap_err();
        assert!(e.contains("parameters.extra"), "{e}");
        let e = check_config(
            r#"{"apiVersion":"x/v1","kind":"RuntimeSpecEditConfig","spec":{}}"#,
            CgroupMode::Unified,
        )
        .unwrap_err();
        assert!(e.contains("apiVersion"), "{e}");
        assert!(check_config("", CgroupMode::Unified).is_err());
        assert!(check_config("[1,2", CgroupMode::Unified).is_err());
    }

    #[test]
    fn unified_refused_on_cgroup_v1() {
        let s = json!({"linux":{"resources":{"unified":{"io.max":"8:0 rbps=1"}}}});
        let e = check_config(&cfg(s), CgroupMode::Legacy).unwrap_err();
        assert!(e.contains("cgroup v1"), "{e}");
        let s = json!({"linux":{"resources":{"pids":{"limit":5}}}});
        assert!(check_config(&cfg(s), CgroupMode::Legacy).is_ok());
    }

    #[test]
    fn cgroup_mode_from_root() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(detect_cgroup_mode(tmp.path()), CgroupMode::Legacy);
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        assert_eq!(detect_cgroup_mode(tmp.path()), CgroupMode::Unified);
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("ab-cd.1"), "DRAKIT_RUNTIME_SPEC_ab_cd_1");
    }
}
