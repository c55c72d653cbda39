//! The plugin watcher: scans the registry directory and registers / deregisters plugins.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drakit_proto::pluginregistration::registration_client::RegistrationClient;
use drakit_proto::pluginregistration::{
    DRA_PLUGIN_TYPE, InfoRequest, PluginInfo, RegistrationStatus,
};
use tokio::time::Instant;

use super::{DraVersion, Instance, RegisteredPlugin, RegistrationEvent, Shared, slices};
use crate::grpc;

/// Identity of a socket file: a remove + re-create between two scans shows as a new inode, or,
/// when the file system hands out the freed inode number again (a plugin that crashed and
/// re-binds at once), as a new birth time (0 where the file system has none). Not the change
/// time: a chmod after bind changes that, and the kubelet does not see a chmod as a new socket.
type FileId = (u64, u64, u128);

#[derive(Debug)]
enum Seen {
    /// Registered; the instance lives in the shared state under the same path.
    Registered(FileId),
    /// Rejected by validation: not retried until the file is replaced.
    Rejected(FileId),
    /// Talking to it failed: retried at `retry_at`.
    Failed {
        id: FileId,
        retry_at: Instant,
        backoff: Duration,
    },
}

impl Seen {
    fn id(&self) -> FileId {
        match self {
            Self::Registered(id) | Self::Rejected(id) | Self::Failed { id, .. } => *id,
        }
    }
}

pub(super) async fn run(shared: Arc<Shared>) {
    if let Some(link) = &shared.config.api_server {
        let result = slices::wipe(link, None).await;
        shared.record(RegistrationEvent::SlicesWiped {
            driver: None,
            result,
        });
    }
    let mut seen: BTreeMap<PathBuf, Seen> = BTreeMap::new();
    let mut ticker = tokio::time::interval(shared.config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        scan(&shared, &mut seen).await;
    }
}

/// The sockets currently in the registry dir (hidden names and non-sockets skipped).
fn list_sockets(dir: &Path) -> BTreeMap<PathBuf, FileId> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".sock") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.file_type().is_socket() {
            continue;
        }
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        found.insert(entry.path(), (meta.dev(), meta.ino(), born));
    }
    found
}

async fn scan(shared: &Arc<Shared>, seen: &mut BTreeMap<PathBuf, Seen>) {
    let present = list_sockets(&shared.config.registry_dir);

    // Gone or replaced: deregister.
    let stale: Vec<PathBuf> = seen
        .iter()
        .filter(|(path, s)| present.get(*path) != Some(&s.id()))
        .map(|(path, _)| path.clone())
        .collect();
    for path in stale {
        if let Some(Seen::Registered(_)) = seen.remove(&path) {
            let removed = shared.lock().instances.remove(&path);
            if let Some(instance) = removed {
                let driver = instance.plugin.driver.clone();
                shared.record(RegistrationEvent::Deregistered(instance.plugin));
                schedule_wipe(shared, &driver);
            }
        }
    }

    // New sockets and due retries are tried concurrently: one plugin that hangs in GetInfo must
    // not hold up the others.
    let now = Instant::now();
    let mut due = Vec::new();
    for (path, id) in present {
        let backoff = match seen.get(&path) {
            Some(Seen::Registered(_) | Seen::Rejected(_)) => continue,
            Some(Seen::Failed {
                retry_at, backoff, ..
            }) => {
                if *retry_at > now {
                    continue;
                }
                *backoff
            }
            None => Duration::ZERO,
        };
        due.push((path, id, backoff));
    }
    let outcomes =
        futures::future::join_all(due.iter().map(|(path, _, _)| register(shared, path))).await;
    for ((path, id, backoff), outcome) in due.into_iter().zip(outcomes) {
        let state = match outcome {
            Outcome::Registered => Seen::Registered(id),
            Outcome::Rejected { driver, error } => {
                shared.record(RegistrationEvent::Rejected {
                    registration_socket: path.clone(),
                    driver,
                    error,
                });
                Seen::Rejected(id)
            }
            Outcome::Failed(error) => {
                shared.record(RegistrationEvent::Failed {
                    registration_socket: path.clone(),
                    error,
                });
                let backoff =
                    (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
                Seen::Failed {
                    id,
                    retry_at: Instant::now() + backoff,
                    backoff,
                }
            }
        };
        seen.insert(path, state);
    }
}

/// After the last instance of `driver` went away: wipe its slices after the delay unless it
/// registers again first.
fn schedule_wipe(shared: &Arc<Shared>, driver: &str) {
    let Some(link) = shared.config.api_server.clone() else {
        return;
    };
    let token = {
        let mut state = shared.lock();
        if state.instances.values().any(|i| i.plugin.driver == driver) {
            return;
        }
        state.next_sequence += 1;
        let token = state.next_sequence;
        state.pending_wipes.insert(driver.to_owned(), token);
        token
    };
    let shared = Arc::clone(shared);
    let driver = driver.to_owned();
    let task_shared = Arc::clone(&shared);
    let task = tokio::spawn(async move {
        let shared = task_shared;
        tokio::time::sleep(link.wipe_delay).await;
        let due = shared.lock().pending_wipes.get(&driver) == Some(&token);
        if !due {
            return;
        }
        shared.lock().pending_wipes.remove(&driver);
        let result = slices::wipe(&link, Some(&driver)).await;
        shared.record(RegistrationEvent::SlicesWiped {
            driver: Some(driver),
            result,
        });
    });
    let mut tasks = shared.lock_tasks();
    tasks.retain(|t| !t.is_finished());
    tasks.push(task.abort_handle());
}

enum Outcome {
    Registered,
    Rejected { driver: String, error: String },
    Failed(String),
}

async fn register(shared: &Shared, socket: &Path) -> Outcome {
    let timeout = shared.config.registration_timeout;
    let channel = match tokio::time::timeout(timeout, grpc::connect_unix(socket)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Outcome::Failed(error_chain(&e)),
        Err(_) => return Outcome::Failed(format!("connect timed out after {timeout:?}")),
    };
    let mut client = RegistrationClient::new(channel);
    let info = match tokio::time::timeout(timeout, client.get_info(InfoRequest {})).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return Outcome::Failed(format!("GetInfo: {status}")),
        Err(_) => return Outcome::Failed(format!("GetInfo timed out after {timeout:?}")),
    };
    let verdict = validate(&info, &shared.config.supported_versions);
    // As in the kubelet, the plugin is registered before it is told so: once a plugin hears
    // "registered", calls can reach it.
    if let Ok(version) = &verdict {
        let plugin = {
            let mut state = shared.lock();
            state.next_sequence += 1;
            let plugin = RegisteredPlugin {
                driver: info.name.clone(),
                registration_socket: socket.to_path_buf(),
                endpoint: PathBuf::from(&info.endpoint),
                version: *version,
                supported_versions: info.supported_versions.clone(),
                sequence: state.next_sequence,
            };
            state.pending_wipes.remove(&plugin.driver);
            state.instances.insert(
                socket.to_path_buf(),
                Instance {
                    plugin: plugin.clone(),
                    channel: grpc::connect_unix_lazy(&plugin.endpoint),
                },
            );
            plugin
        };
        shared.record(RegistrationEvent::Registered(plugin));
    }
    let status = match &verdict {
        Ok(_) => RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        },
        Err(error) => RegistrationStatus {
            plugin_registered: false,
            error: error.clone(),
        },
    };
    // The verdict stands whether or not the plugin takes the notification well (as in the kubelet,
    // which only logs a failed NotifyRegistrationStatus).
    match tokio::time::timeout(timeout, client.notify_registration_status(status)).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => {
            tracing::warn!(socket = %socket.display(), %status, "NotifyRegistrationStatus failed")
        }
        Err(_) => tracing::warn!(socket = %socket.display(), "NotifyRegistrationStatus timed out"),
    }
    match verdict {
        Ok(_) => Outcome::Registered,
        Err(error) => Outcome::Rejected {
            driver: info.name,
            error,
        },
    }
}

/// What the kubelet's DRA registration handler checks; the error text goes back to the plugin.
pub(super) fn validate(info: &PluginInfo, supported: &[DraVersion]) -> Result<DraVersion, String> {
    if info.r#type != DRA_PLUGIN_TYPE {
        return Err(format!(
            "plugin type {:?} is not handled (expected {DRA_PLUGIN_TYPE:?})",
            info.r#type
        ));
    }
    if info.name.is_empty() {
        return Err("plugin name is empty".to_owned());
    }
    let endpoint = Path::new(&info.endpoint);
    if !endpoint.is_absolute() {
        return Err(format!(
            "plugin {}: endpoint {:?} is not an absolute path",
            info.name, info.endpoint
        ));
    }
    match std::fs::metadata(endpoint) {
        Ok(meta) if meta.file_type().is_socket() => {}
        Ok(_) => {
            return Err(format!(
                "plugin {}: endpoint {} is not a socket",
                info.name, info.endpoint
            ));
        }
        Err(e) => {
            return Err(format!(
                "plugin {}: endpoint {}: {e}",
                info.name, info.endpoint
            ));
        }
    }
    info.supported_versions
        .iter()
        .filter_map(|v| DraVersion::from_advertised(v))
        .find(|v| supported.contains(v))
        .ok_or_else(|| {
            format!(
                "plugin {}: none of the supported versions {:?} is one of {:?}",
                info.name,
                info.supported_versions,
                supported.iter().map(|v| v.advertised()).collect::<Vec<_>>()
            )
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(endpoint: &str, versions: &[&str]) -> PluginInfo {
        PluginInfo {
            r#type: DRA_PLUGIN_TYPE.to_owned(),
            name: "net.drakit.dev".to_owned(),
            endpoint: endpoint.to_owned(),
            supported_versions: versions.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn with_socket(f: impl FnOnce(&str)) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("dra.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        f(sock.to_str().unwrap());
    }

    #[test]
    fn first_supported_version_wins() {
        with_socket(|ep| {
            let both = [DraVersion::V1, DraVersion::V1beta1];
            let i = info(ep, &["v1beta1.DRAPlugin", "v1.DRAPlugin"]);
            assert_eq!(validate(&i, &both), Ok(DraVersion::V1beta1));
            let i = info(ep, &["1.0.0", "v1.DRAPlugin", "v1beta1.DRAPlugin"]);
            assert_eq!(validate(&i, &both), Ok(DraVersion::V1));
            let i = info(ep, &["v1.DRAPlugin", "v1beta1.DRAPlugin"]);
            assert_eq!(
                validate(&i, &[DraVersion::V1beta1]),
                Ok(DraVersion::V1beta1)
            );
        });
    }

    #[test]
    fn rejections_say_why() {
        with_socket(|ep| {
            let both = [DraVersion::V1, DraVersion::V1beta1];
            let err = validate(&info(ep, &["v2.DRAPlugin"]), &both).unwrap_err();
            assert!(err.contains("none of the supported versions"), "{err}");
            let mut wrong_type = info(ep, &["v1.DRAPlugin"]);
            wrong_type.r#type = "CSIPlugin".into();
            assert!(
                validate(&wrong_type, &both)
                    .unwrap_err()
                    .contains("CSIPlugin")
            );
            let err =
                validate(&info("/nonexistent/dra.sock", &["v1.DRAPlugin"]), &both).unwrap_err();
            assert!(err.contains("/nonexistent/dra.sock"), "{err}");
            let err = validate(&info("relative.sock", &["v1.DRAPlugin"]), &both).unwrap_err();
            assert!(err.contains("absolute"), "{err}");
        });
    }
}
