//! Socket paths (including the rolling-update names), binding with stale-file removal, the
//! cross-instance serialize lock, and the unix-socket connector for internal gRPC clients.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Longest path a `sockaddr_un` holds (108 bytes including the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Errors of socket handling.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("socket path {path} is {len} bytes, longer than {MAX_SOCKET_PATH}")]
    TooLong { path: PathBuf, len: usize },
    #[error("connecting to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("serialize lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where one driver's two sockets live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPaths {
    /// `<registry>/<driver>-reg.sock` (rolling update: `<driver>-<podUID>-reg.sock`).
    pub registration: PathBuf,
    /// `<plugins>/<driver>/dra.sock` (rolling update: `dra-<podUID>.sock`).
    pub dra: PathBuf,
    /// `<plugins>/<driver>/serialize.lock`, shared by every instance of the driver.
    pub lock: PathBuf,
}

/// 64-bit FNV-1a, used for the short stand-in of an over-long socket name.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Picks `dir/name`, or when that passes the `sockaddr_un` limit, `dir/<prefix>-<hash>.sock`
/// where the hash covers the full name (so distinct names stay distinct).
fn fit(dir: &Path, name: &str, short_prefix: &str) -> PathBuf {
    let full = dir.join(name);
    if full.as_os_str().len() <= MAX_SOCKET_PATH {
        return full;
    }
    dir.join(format!(
        "{short_prefix}-{:016x}.sock",
        fnv1a64(name.as_bytes())
    ))
}

impl SocketPaths {
    /// Computes the paths of `driver`; with `pod_uid` (rolling update) the names carry it.
    pub fn new(
        registry_dir: &Path,
        plugins_dir: &Path,
        driver: &str,
        pod_uid: Option<&str>,
    ) -> Self {
        let driver_dir = plugins_dir.join(driver);
        let (registration, dra) = match pod_uid {
            None => (
                fit(registry_dir, &format!("{driver}-reg.sock"), "r"),
                fit(&driver_dir, "dra.sock", "d"),
            ),
            Some(uid) => (
                fit(registry_dir, &format!("{driver}-{uid}-reg.sock"), "r"),
                fit(&driver_dir, &format!("dra-{uid}.sock"), "dra"),
            ),
        };
        Self {
            registration,
            dra,
            lock: driver_dir.join("serialize.lock"),
        }
    }
}

/// Binds a unix listener at `path`: creates the parent dir, removes a stale socket (never a
/// regular file), binds and sets mode `mode` before the socket appears at `path`.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SocketError::Dir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(_) => {}
    }
    // Bound and chmod'ed under a dot-name, then renamed: the kubelet's plugin watcher never
    // sees a socket that does not listen yet.
    drakit_proto::uds::server::listen_at(path, mode).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes a socket file we created; a missing file is fine.
pub fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing socket"),
    }
}

/// A lazily connecting tonic channel to a unix socket (tower `service_fn` connector).
pub fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    // The URI is required by tonic but never used for the connection itself.
    Endpoint::from_static("http://[::]:50051").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(&path).await.map(TokioIo::new) }
        },
    ))
}

/// An exclusive `flock` on a file shared by every instance of one driver, so two instances
/// (rolling update) never prepare or unprepare at the same time.
#[derive(Debug)]
pub struct SerializeLock {
    path: PathBuf,
}

/// A held [`SerializeLock`]; released on drop.
#[derive(Debug)]
pub struct SerializeGuard {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl SerializeLock {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks (on a blocking thread) until the lock is ours.
    pub async fn acquire(&self) -> Result<SerializeGuard, SocketError> {
        let path = self.path.clone();
        let res = tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, errno)| io::Error::from(errno))
        })
        .await;
        match res {
            Ok(Ok(lock)) => Ok(SerializeGuard { _lock: lock }),
            Ok(Err(source)) => Err(SocketError::Lock {
                path: self.path.clone(),
                source,
            }),
            Err(join) => Err(SocketError::Lock {
                path: self.path.clone(),
                source: io::Error::other(join.to_string()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_rolling_names() {
        let p = SocketPaths::new(Path::new("/r"), Path::new("/p"), "net.drakit.dev", None);
        assert_eq!(p.registration, Path::new("/r/net.drakit.dev-reg.sock"));
        assert_eq!(p.dra, Path::new("/p/net.drakit.dev/dra.sock"));
        let p = SocketPaths::new(Path::new("/r"), Path::new("/p"), "a.b", Some("uid1"));
        assert_eq!(p.registration, Path::new("/r/a.b-uid1-reg.sock"));
        assert_eq!(p.dra, Path::new("/p/a.b/dra-uid1.sock"));
        assert_eq!(p.lock, Path::new("/p/a.b/serialize.lock"));
    }

    #[test]
    fn long_paths_are_hashed_and_distinct() {
        let dir = "/".to_owned() + &"x".repeat(60);
        let a = SocketPaths::new(
            Path::new(&dir),
            Path::new(&dir),
            "runtime.drakit.dev",
            Some("0b1c2d3e-aaaa-bbbb-cccc-0123456789ab"),
        );
        let b = SocketPaths::new(
            Path::new(&dir),
            Path::new(&dir),
            "runtime.drakit.dev",
            Some("0b1c2d3e-aaaa-bbbb-cccc-0123456789ac"),
        );
        assert!(a.registration.as_os_str().len() <= MAX_SOCKET_PATH);
        assert!(a.dra.as_os_str().len() <= MAX_SOCKET_PATH);
        assert_ne!(a.registration, b.registration);
        assert_ne!(a.dra, b.dra);
        assert!(a.registration.to_string_lossy().ends_with(".sock"));
    }

    #[tokio::test]
    async fn bind_replaces_stale_socket_but_not_files() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("s/x.sock");
        let l = bind(&sock, 0o600).unwrap();
        drop(l);
        // The file is left behind: a second bind must replace it.
        let _l = bind(&sock, 0o600).unwrap();
        let file = tmp.path().join("plain");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            bind(&file, 0o600),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
