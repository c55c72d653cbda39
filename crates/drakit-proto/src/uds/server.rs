//! The server side of drakit's internal Unix sockets, shared by drakit-netdev and drakit-cpu.
//!
//! - [`bind`]: the socket's directory is created 0700 when missing (an existing directory keeps
//!   its mode: it may be shared), a stale socket is replaced (anything else at the path is
//!   refused, never deleted), the socket is bound and set to 0600.
//! - [`incoming`]: the accepted connections whose peer credentials (`SO_PEERCRED`) pass a
//!   [`PeerPolicy`]; the others are closed before a byte is read and logged with uid and pid.
//!   This also covers the short moment between `bind` and `chmod`.
//! - [`MAX_REQUEST_BYTES`]: the largest message a drakit gRPC server decodes.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use tokio::net::{UnixListener, UnixStream};

/// Longest path a `sockaddr_un` holds (108 bytes including the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Mode of the socket file.
pub const SOCKET_MODE: u32 = 0o600;

/// Mode of a socket directory this module creates.
pub const DIR_MODE: u32 = 0o700;

/// The largest request message (after decompression) a drakit gRPC server decodes: internal
/// services and the kubelet-facing DRA service alike. A Prepare carries one claim's devices and
/// their merged configs (each config is at most 10 KiB in the API); a kubelet call carries claim
/// references. 1 MiB is far above both; tonic's implicit default would be 4 MiB.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Delay after a failed `accept` (e.g. out of file descriptors) before the next one, so the
/// accept loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Errors of [`bind`]: what was done, to which path, and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct BindError {
    /// What failed, e.g. "binding socket".
    pub op: &'static str,
    /// The path it failed on.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// Which peers may talk to a socket, by uid (`SO_PEERCRED`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    uids: Vec<u32>,
}

impl PeerPolicy {
    /// Root and the given uids.
    pub fn root_and(extra: impl IntoIterator<Item = u32>) -> Self {
        let mut uids = vec![0];
        uids.extend(extra);
        Self::only(uids)
    }

    /// Exactly these uids (root only if listed).
    pub fn only(uids: impl IntoIterator<Item = u32>) -> Self {
        let mut uids: Vec<u32> = uids.into_iter().collect();
        uids.sort_unstable();
        uids.dedup();
        Self { uids }
    }

    /// Whether a peer running as `uid` is admitted.
    pub fn allows(&self, uid: u32) -> bool {
        self.uids.binary_search(&uid).is_ok()
    }

    /// The admitted uids, sorted.
    pub fn uids(&self) -> &[u32] {
        &self.uids
    }
}

/// Binds a Unix socket at `path` for a drakit daemon; see the module docs for the modes.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let err = |op, source| BindError {
        op,
        path: path.to_path_buf(),
        source,
    };
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(err(
            "binding socket",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the path is {len} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket address holds"
                ),
            ),
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir).map_err(|source| BindError {
            op: "creating socket directory",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| err("removing stale socket", e))?;
        }
        Ok(_) => {
            return Err(err(
                "binding socket",
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket; refusing to replace it",
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("inspecting socket path", e)),
    }
    listen_at(path, SOCKET_MODE).map_err(|e| err("binding socket", e))
}

/// Binds a listening socket that appears at `path` only when it already accepts connections
/// and has `mode`: it is bound (bind + listen) and chmod'ed under a temporary dot-name in the
/// same directory, then renamed into place, replacing a stale socket in one step. A client
/// that sees the file (a test polling for it, the kubelet's plugin watcher, which ignores
/// dot-files) can connect at once; binding at the final path directly would let it see the
/// file between `bind` and `listen` and be refused. When the temporary name would not fit a
/// socket address, the socket is bound at `path` directly.
///
/// The caller checks that `path` is not something other than a socket.
pub fn listen_at(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let tmp = path.with_file_name(format!(
        ".{}-{}.sock-tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let staged = tmp.as_os_str().len() <= MAX_SOCKET_PATH;
    let at = if staged { tmp.as_path() } else { path };
    if staged {
        let _ = std::fs::remove_file(at);
    }
    let listener = UnixListener::bind(at)?;
    let published =
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode)).and_then(|()| {
            if staged {
                std::fs::rename(at, path)
            } else {
                Ok(())
            }
        });
    if let Err(e) = published {
        let _ = std::fs::remove_file(at);
        return Err(e);
    }
    Ok(listener)
}

/// Creates `dir` (and missing parents) with mode 0700. An existing directory keeps its mode.
fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::debug!(
                    dir = %dir.display(),
                    mode = format!("{:o}", m.permissions().mode() & 0o7777),
                    "socket directory is reachable by other users; the socket's 0600 mode and the peer check still apply"
                );
            }
            Ok(())
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)?;
            // The umask may have trimmed the mode; the leaf must be exactly 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
        }
        Err(e) => Err(e),
    }
}

/// The connections accepted on `listener` whose peer passes `policy`, for
/// `tonic::transport::Server::serve_with_incoming*`. Refused peers are closed at once and
/// logged; a failed `accept` is logged and retried after a short pause. The stream never ends.
pub fn incoming(
    listener: UnixListener,
    policy: PeerPolicy,
) -> impl Stream<Item = io::Result<UnixStream>> + Send + 'static {
    futures::stream::unfold((listener, policy), |(listener, policy)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(cred) if policy.allows(cred.uid()) => {
                        return Some((Ok(stream), (listener, policy)));
                    }
                    Ok(cred) => tracing::warn!(
                        uid = cred.uid(),
                        pid = ?cred.pid(),
                        allowed = ?policy.uids(),
                        "refused a connection from a uid that is not allowed"
                    ),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "refused a connection whose peer credentials could not be read"
                    ),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    })
}

/// Removes a socket this process bound (at shutdown); a missing file is fine, other failures
/// are logged.
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing socket"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listen_at_publishes_a_listening_socket_and_falls_back_when_the_stage_is_too_long() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.sock");
        let l = listen_at(&p, 0o600).unwrap();
        // Listening before it appears: a connect right after the call is accepted.
        let c = std::os::unix::net::UnixStream::connect(&p).unwrap();
        let _ = l.accept().await.unwrap();
        drop(c);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.sock"]);
        // A one-letter name in a directory that fills the address: the stage name would not
        // fit, the socket is bound in place.
        let base = tmp.path().as_os_str().len() + 1;
        let dir = tmp.path().join("d".repeat(MAX_SOCKET_PATH - base - 2));
        std::fs::create_dir(&dir).unwrap();
        let p = dir.join("s");
        assert_eq!(p.as_os_str().len(), MAX_SOCKET_PATH);
        let _l = listen_at(&p, 0o600).unwrap();
        std::os::unix::net::UnixStream::connect(&p).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s"]);
    }

    #[test]
    fn policies() {
        let p = PeerPolicy::root_and([1000, 1000, 5]);
        assert_eq!(p.uids(), &[0, 5, 1000]);
        assert!(p.allows(0) && p.allows(5) && p.allows(1000) && !p.allows(65534));
        let p = PeerPolicy::only([7]);
        assert!(p.allows(7) && !p.allows(0));
        assert!(!PeerPolicy::default().allows(0));
    }

    #[tokio::test]
    async fn bind_refuses_too_long_paths_and_non_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("x".repeat(120));
        let e = bind(&long).unwrap_err();
        assert!(e.to_string().contains("longer than the 107"), "{e}");
        let file = tmp.path().join("plain");
        std::fs::write(&file, b"keep").unwrap();
        let e = bind(&file).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        let under_file = file.join("s.sock");
        let e = bind(&under_file).unwrap_err();
        assert!(
            e.to_string().starts_with("creating socket directory"),
            "{e}"
        );
    }
}
