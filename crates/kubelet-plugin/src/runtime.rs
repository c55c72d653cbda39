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
use std::sync::Arc;

use drakit_types::config::ClaimConfig;
use drakit_types::policy::Policy;

use crate::backend::{Backend, BackendError};

/// `apiVersion` of drakit claim configs.
pub const CONFIG_API_VERSION: &str = "drakit.dev/v1alpha1";
/// `kind` of a runtime-spec edit.
pub const KIND: &str = "RuntimeSpecEditConfig";
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

/// `DRAKIT_RUNTIME_SPEC_<uid with [^A-Za-z0-9_] replaced by _>` (`drakit_types::constants`).
pub fn env_name(claim_uid: &str) -> String {
    drakit_types::constants::runtime_spec_env_name(claim_uid)
}

/// Decodes a merged config strictly (`drakit_types::config`), checks it against the admin
/// policy for the claim's namespace (`drakit_types::policy`) and the node's cgroup mode, and
/// returns the fragment as compact JSON for the per-claim environment variable.
pub fn check_config(
    config_json: &str,
    namespace: &str,
    mode: CgroupMode,
    policy: &Policy,
) -> Result<String, String> {
    if config_json.is_empty() {
        return Err(
            "no RuntimeSpecEditConfig given (an opaque config for this driver is required)".into(),
        );
    }
    let cfg = ClaimConfig::from_json(config_json.as_bytes()).map_err(|e| e.to_string())?;
    let ClaimConfig::RuntimeSpecEdit(c) = &cfg else {
        return Err(format!(
            "parameters.kind: this driver takes {KIND}, not another kind"
        ));
    };
    drakit_types::policy::check_config(policy, namespace, &cfg).map_err(|e| e.to_string())?;
    let unified = c
        .spec
        .linux
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.unified().as_ref())
        .is_some_and(|u| !u.is_empty());
    if unified && mode == CgroupMode::Legacy {
        return Err(
            "spec.linux.resources.unified: this node runs cgroup v1, where runc refuses \
             unified cgroup v2 keys; schedule the pod on a cgroup v2 node"
                .into(),
        );
    }
    serde_json::to_string(&c.spec).map_err(|e| format!("spec: cannot encode: {e}"))
}

/// The in-process runtime-spec backend.
#[derive(Debug, Clone)]
pub struct RuntimeBackend {
    mode: CgroupMode,
    policy: Arc<Policy>,
}

impl RuntimeBackend {
    /// With the built-in default policy.
    pub fn new(mode: CgroupMode) -> Self {
        Self::with_policy(mode, Policy::default())
    }

    pub fn with_policy(mode: CgroupMode, policy: Policy) -> Self {
        Self {
            mode,
            policy: Arc::new(policy),
        }
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
        let namespace = req
            .claim
            .as_ref()
            .map(|c| c.namespace.as_str())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (i, d) in req.devices.iter().enumerate() {
            let value =
                check_config(&d.config_json, namespace, self.mode, &self.policy).map_err(|m| {
                    BackendError::Refused {
                        message: format!("device {:?} (results[{i}]): {m}", d.device),
                    }
                })?;
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
    use serde_json::{Value, json};

    fn cfg(spec: Value) -> String {
        json!({"apiVersion": CONFIG_API_VERSION, "kind": KIND, "spec": spec}).to_string()
    }

    fn check(spec: Value, mode: CgroupMode) -> Result<String, String> {
        check_config(&cfg(spec), "default", mode, &Policy::default())
    }

    #[test]
    fn accepts_resource_edits() {
        let s = json!({"linux":{"resources":{"unified":{"io.max":"259:0 rbps=2097152","memory.high":"268435456"},"pids":{"limit":100}}}});
        let out: Value = serde_json::from_str(&check(s, CgroupMode::Unified).unwrap()).unwrap();
        assert_eq!(
            out["linux"]["resources"]["unified"]["io.max"],
            "259:0 rbps=2097152"
        );
        assert_eq!(out["linux"]["resources"]["pids"]["limit"], 100);
    }

    #[test]
    fn refuses_outside_policy_with_field_paths() {
        for (spec, field) in [
            (
                json!({"hooks":{"prestart":[{"path":"/bin/true"}]}}),
                "spec.hooks",
            ),
            (
                json!({"linux":{"resources":{"unified":{"cgroup.procs":"1"}}}}),
                "unified",
            ),
            (
                json!({"process":{"env":["DRAKIT_X=1"]}}),
                "spec.process.env",
            ),
        ] {
            let e = check(spec, CgroupMode::Unified).unwrap_err();
            assert!(e.contains(field), "{e} should name {field}");
        }
        let e = check_config(
            r#"{"apiVersion":"drakit.dev/v1alpha1","kind":"RuntimeSpecEditConfig","spec":{},"extra":1}"#,
            "default",
            CgroupMode::Unified,
            &Policy::default(),
        )
        .unwrap_err();
        assert!(e.contains("extra"), "{e}");
        assert!(check_config("", "d", CgroupMode::Unified, &Policy::default()).is_err());
        assert!(check_config("[1,2", "d", CgroupMode::Unified, &Policy::default()).is_err());
    }

    #[test]
    fn unified_refused_on_cgroup_v1() {
        let s = json!({"linux":{"resources":{"unified":{"io.max":"8:0 rbps=1"}}}});
        let e = check(s, CgroupMode::Legacy).unwrap_err();
        assert!(e.contains("cgroup v1"), "{e}");
        let s = json!({"linux":{"resources":{"pids":{"limit":5}}}});
        assert!(check(s, CgroupMode::Legacy).is_ok());
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
