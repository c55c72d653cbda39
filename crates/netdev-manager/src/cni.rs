//! Runs real CNI plugin binaries for a network configuration list: ADD (in order, each getting
//! the previous result), DEL (reverse order), CHECK. Plugin output is size- and time-limited
//! and parsed strictly; a failed ADD is rolled back with DEL for the plugins already run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::addr::{IpNet, Mac};

/// Largest plugin stdout accepted; more kills the plugin and fails the call.
pub const MAX_OUTPUT: usize = 256 * 1024;
/// Largest plugin stderr read; more kills the plugin and fails the call.
pub const MAX_STDERR: usize = 1024 * 1024;
/// How much of stderr is kept for error messages.
const STDERR_KEPT: usize = 16 * 1024;

/// Reads `r` to its end, keeping the first `keep` bytes in `buf`; fails once more than `cap`
/// bytes came (the caller then kills the writer).
async fn read_capped(
    r: Option<impl tokio::io::AsyncRead + Unpin>,
    what: &str,
    keep: usize,
    cap: usize,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let Some(mut r) = r else { return Ok(()) };
    let mut chunk = vec![0u8; 16 * 1024];
    let mut total = 0usize;
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading {what}: {e}")),
        };
        total += n;
        if total > cap {
            return Err(format!("{what} larger than the limit of {cap} bytes"));
        }
        let room = keep.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Errors from a CNI run.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI config: {0}")]
    Config(String),
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    NotFound { plugin: String, dirs: String },
    #[error("CNI {command} with plugin {plugin:?}: {reason}")]
    Plugin {
        command: &'static str,
        plugin: String,
        reason: String,
    },
    #[error("CNI {command} with plugin {plugin:?} returned an invalid result: {reason}")]
    BadResult {
        command: &'static str,
        plugin: String,
        reason: String,
    },
}

/// Where plugins live and how long they may run.
#[derive(Debug, Clone)]
pub struct CniRuntime {
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

/// Identity of one attachment.
#[derive(Debug, Clone, Default)]
pub struct CniArgs {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// Extra `CNI_ARGS` pairs (`K=V;K2=V2`), in key order.
    pub extra_args: std::collections::BTreeMap<String, String>,
    /// Capability arguments: each plugin that declares a capability (`"capabilities":
    /// {"mac": true}`) gets its value under `runtimeConfig`, as the CNI spec says.
    pub capability_args: Map<String, Value>,
}

/// What a successful ADD reported for the pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniOutcome {
    pub ips: Vec<IpNet>,
    pub mac: Option<Mac>,
    /// The final result JSON (kept for DEL/CHECK's prevResult).
    pub result: String,
}

/// A parsed configuration list.
#[derive(Debug, Clone)]
pub struct ConfList {
    name: String,
    version: String,
    plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    pub fn parse(text: &str) -> Result<Self, CniError> {
        if text.len() > MAX_OUTPUT {
            return Err(CniError::Config("configuration list too large".into()));
        }
        let v: Value = serde_json::from_str(text).map_err(|e| CniError::Config(e.to_string()))?;
        let o = v
            .as_object()
            .ok_or_else(|| CniError::Config("must be a JSON object".into()))?;
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::Config("name is required".into()))?;
        let version = o
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::Config("cniVersion is required".into()))?;
        let plugins = match (o.get("plugins"), o.get("type")) {
            (Some(Value::Array(a)), _) => a
                .iter()
                .map(|p| p.as_object().cloned())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| CniError::Config("plugins must be objects".into()))?,
            (None, Some(Value::String(_))) => vec![o.clone()],
            _ => return Err(CniError::Config("plugins (a list) is required".into())),
        };
        if plugins.is_empty() {
            return Err(CniError::Config("plugins is empty".into()));
        }
        for p in &plugins {
            let t = p.get("type").and_then(Value::as_str).unwrap_or("");
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(CniError::Config(format!(
                    "plugin type {t:?} is not a plain binary name"
                )));
            }
        }
        Ok(Self {
            name: name.into(),
            version: version.into(),
            plugins,
        })
    }

    fn plugin_type(p: &Map<String, Value>) -> String {
        p.get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

impl CniRuntime {
    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::NotFound {
                plugin: plugin.into(),
                dirs: self
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    async fn exec(
        &self,
        command: &'static str,
        conf: &ConfList,
        plugin: &Map<String, Value>,
        args: &CniArgs,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let ptype = ConfList::plugin_type(plugin);
        let perr = |reason: String| CniError::Plugin {
            command,
            plugin: ptype.clone(),
            reason,
        };
        let bin = self.find(&ptype)?;
        let mut stdin_conf = plugin.clone();
        stdin_conf.insert("name".into(), Value::String(conf.name.clone()));
        stdin_conf.insert("cniVersion".into(), Value::String(conf.version.clone()));
        if let Some(p) = prev {
            stdin_conf.insert("prevResult".into(), p.clone());
        }
        let runtime_config: Map<String, Value> = plugin
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|caps| {
                caps.iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .filter_map(|(k, _)| {
                        args.capability_args.get(k).map(|v| (k.clone(), v.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !runtime_config.is_empty() {
            stdin_conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        let cni_args = args
            .extra_args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let input = Value::Object(stdin_conf).to_string();
        let path = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &args.container_id)
            .env("CNI_NETNS", &args.netns)
            .env("CNI_IFNAME", &args.ifname)
            .env("CNI_PATH", &path)
            .env("CNI_ARGS", &cni_args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| perr(format!("starting {}: {e}", bin.display())))?;
        let run = async {
            if let Some(mut si) = child.stdin.take() {
                // A plugin may exit without reading its config; its output still decides.
                if let Err(e) = si.write_all(input.as_bytes()).await
                    && e.kind() != std::io::ErrorKind::BrokenPipe
                {
                    return Err(format!("writing stdin: {e}"));
                }
            }
            let mut out = Vec::new();
            let mut err = Vec::new();
            let so = child.stdout.take();
            let se = child.stderr.take();
            // Both pipes are drained together (a plugin blocked on a full stderr pipe would
            // never finish its stdout); either one over its cap ends the run.
            tokio::try_join!(
                read_capped(so, "stdout", MAX_OUTPUT, MAX_OUTPUT, &mut out),
                read_capped(se, "stderr", STDERR_KEPT, MAX_STDERR, &mut err),
            )?;
            let status = child.wait().await.map_err(|e| format!("waiting: {e}"))?;
            Ok((status, out, err))
        };
        let ended = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        };
        let (status, out, err) = match ended {
            Ok(done) => done,
            Err(reason) => {
                // Killed and reaped here, not left to a best-effort reaper.
                let _ = child.start_kill();
                let reaped = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await
                {
                    Ok(Ok(_)) => "plugin killed",
                    _ => "plugin killed, not yet reaped",
                };
                return Err(perr(format!("{reason}; {reaped}")));
            }
        };
        if !status.success() {
            // CNI error object: {"code":N,"msg":"...","details":"..."}
            let msg = serde_json::from_slice::<Value>(&out)
                .ok()
                .and_then(|v| {
                    let m = v.get("msg")?.as_str()?.to_string();
                    let d = v
                        .get("details")
                        .and_then(Value::as_str)
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default();
                    Some(format!("{m}{d}"))
                })
                .unwrap_or_else(|| {
                    let e = String::from_utf8_lossy(&err);
                    let o = String::from_utf8_lossy(&out);
                    format!("{} {}", e.trim(), o.trim())
                        .trim()
                        .chars()
                        .take(512)
                        .collect()
                });
            return Err(perr(format!("{status}: {msg}")));
        }
        if command != "ADD" {
            return Ok(None);
        }
        let v: Value = serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
            command,
            plugin: ptype.clone(),
            reason: format!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out)
                    .chars()
                    .take(120)
                    .collect::<String>()
            ),
        })?;
        if !v.is_object() {
            return Err(CniError::BadResult {
                command,
                plugin: ptype,
                reason: "not a JSON object".into(),
            });
        }
        Ok(Some(v))
    }

    /// ADD through the whole list; on failure, DEL for what ran and return the error.
    pub async fn add(&self, conflist: &str, args: &CniArgs) -> Result<CniOutcome, CniError> {
        let conf = ConfList::parse(conflist)?;
        let mut prev: Option<Value> = None;
        for (i, p) in conf.plugins.iter().enumerate() {
            let res = self
                .exec("ADD", &conf, p, args, prev.as_ref())
                .await
                .and_then(|r| {
                    let r = r.unwrap_or(Value::Null);
                    parse_result(&r, &args.ifname).map_err(|reason| CniError::BadResult {
                        command: "ADD",
                        plugin: ConfList::plugin_type(p),
                        reason,
                    })?;
                    Ok(r)
                });
            match res {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    for q in conf.plugins[..=i].iter().rev() {
                        let _ = self.exec("DEL", &conf, q, args, prev.as_ref()).await;
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let (ips, mac) =
            parse_result(&result, &args.ifname).map_err(|reason| CniError::BadResult {
                command: "ADD",
                plugin: conf.name.clone(),
                reason,
            })?;
        Ok(CniOutcome {
            ips,
            mac,
            result: result.to_string(),
        })
    }

    /// DEL in reverse order; goes on past errors and reports them all.
    pub async fn del(
        &self,
        conflist: &str,
        args: &CniArgs,
        prev_result: Option<&str>,
    ) -> Result<(), Vec<CniError>> {
        let conf = ConfList::parse(conflist).map_err(|e| vec![e])?;
        let prev: Option<Value> = prev_result.and_then(|s| serde_json::from_str(s).ok());
        let mut errs = Vec::new();
        for p in conf.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", &conf, p, args, prev.as_ref()).await {
                errs.push(e);
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// CHECK in order with the recorded result.
    pub async fn check(
        &self,
        conflist: &str,
        args: &CniArgs,
        prev_result: &str,
    ) -> Result<(), CniError> {
        let conf = ConfList::parse(conflist)?;
        let prev: Value = serde_json::from_str(prev_result)
            .map_err(|e| CniError::Config(format!("recorded result: {e}")))?;
        for p in &conf.plugins {
            self.exec("CHECK", &conf, p, args, Some(&prev)).await?;
        }
        Ok(())
    }
}

/// Parses a CNI (≥ 0.4/1.x) result strictly: IPs in CIDR form, at most 16; the MAC of the
/// interface named `ifname` inside the sandbox.
pub fn parse_result(v: &Value, ifname: &str) -> Result<(Vec<IpNet>, Option<Mac>), String> {
    let o = v.as_object().ok_or("result is not an object")?;
    let ifaces = match o.get("interfaces") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) if a.len() <= 64 => a.clone(),
        Some(_) => return Err("interfaces must be a list of at most 64".into()),
    };
    let mut pod_iface_idx = None;
    let mut mac = None;
    for (i, it) in ifaces.iter().enumerate() {
        let io = it
            .as_object()
            .ok_or(format!("interfaces[{i}] is not an object"))?;
        let name = io
            .get("name")
            .and_then(Value::as_str)
            .ok_or(format!("interfaces[{i}].name missing"))?;
        let sandbox = io.get("sandbox").and_then(Value::as_str).unwrap_or("");
        if name == ifname && !sandbox.is_empty() {
            pod_iface_idx = Some(i);
            if let Some(m) = io.get("mac").and_then(Value::as_str) {
                mac = Some(
                    m.parse::<Mac>()
                        .map_err(|e| format!("interfaces[{i}].mac: {e}"))?,
                );
            }
        }
    }
    let mut ips = Vec::new();
    match o.get("ips") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            if a.len() > 16 {
                return Err("more than 16 ips".into());
            }
            for (i, ip) in a.iter().enumerate() {
                let io = ip.as_object().ok_or(format!("ips[{i}] is not an object"))?;
                let addr = io
                    .get("address")
                    .and_then(Value::as_str)
                    .ok_or(format!("ips[{i}].address missing"))?;
                let n: IpNet = addr.parse().map_err(|e| format!("ips[{i}].address: {e}"))?;
                if let Some(g) = io.get("gateway")
                    && g.as_str()
                        .and_then(|g| g.parse::<std::net::IpAddr>().ok())
                        .is_none()
                {
                    return Err(format!("ips[{i}].gateway is not an IP address"));
                }
                let on_pod = match io.get("interface") {
                    Some(x) => x
                        .as_u64()
                        .map(|x| Some(x as usize) == pod_iface_idx)
                        .ok_or(format!("ips[{i}].interface is not an index"))?,
                    None => true,
                };
                if on_pod && !ips.contains(&n) {
                    ips.push(n);
                }
            }
        }
        Some(_) => return Err("ips must be a list".into()),
    }
    Ok((ips, mac))
}

/// The plugin directory to use when none is configured.
pub fn default_bin_dirs() -> Vec<PathBuf> {
    ["/opt/cni/bin", "/usr/lib/cni"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| Path::new(p).is_dir())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_result_parsing() {
        let r: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"02:00:00:00:00:01"},
            {"name":"eth1","mac":"0A:58:0A:01:00:05","sandbox":"/run/netns/x"}],
            "ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":1}]}"#,
        )
        .unwrap();
        let (ips, mac) = parse_result(&r, "eth1").unwrap();
        assert_eq!(ips[0].to_string(), "10.1.0.5/24");
        assert_eq!(mac.unwrap().to_string(), "0a:58:0a:01:00:05");
        for bad in [
            r#"[]"#,
            r#"{"ips":[{"address":"10.1.0.5"}]}"#,
            r#"{"ips":"x"}"#,
            r#"{"interfaces":[{"name":"eth1","sandbox":"x","mac":"zz"}]}"#,
            r#"{"ips":[{"address":"10.1.0.5/24","gateway":"nope"}]}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(parse_result(&v, "eth1").is_err(), "{bad}");
        }
    }

    #[test]
    fn conflist_checks() {
        assert!(
            ConfList::parse(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#)
                .is_err()
        );
        assert!(
            ConfList::parse(r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#).is_err()
        );
        assert!(ConfList::parse(r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#).is_err());
        assert!(ConfList::parse(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#).is_ok());
    }
}
