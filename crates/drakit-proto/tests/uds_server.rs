//! The server side of drakit's internal sockets (`drakit_proto::uds::server`), through a real
//! socket: directory and socket modes (stat), stale socket replaced, root admitted, a peer
//! running as uid 65534 refused by the file modes and, with the modes opened, by the
//! peer-credential check, and admitted once the policy lists it.
//!
//! The uid-65534 peer is this test binary run again under `setpriv`: with `PROBE_ENV` set, the
//! test connects to that socket, reports what happened on stdout and returns.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drakit_proto::uds::server::{self, PeerPolicy};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const PROBE_ENV: &str = "DRAKIT_UDS_PROBE_SOCKET";
const NOBODY: u32 = 65534;

/// Connects to `socket` and says whether the server wrote a byte ("answered"), closed the
/// connection ("closed"), or refused the connect itself.
fn probe(socket: &Path) -> String {
    match std::os::unix::net::UnixStream::connect(socket) {
        Err(e) => format!("connect error: {:?}", e.kind()),
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 1];
            match s.read(&mut b) {
                Ok(0) => "closed".into(),
                Ok(_) => "answered".into(),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "closed".into(),
                Err(e) => format!("read error: {e}"),
            }
        }
    }
}

/// Runs [`probe`] as uid 65534 in a child process. `Err`: the child could not run at all.
fn probe_as_nobody(socket: &Path) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "bind_modes_and_peer_policy",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, socket)
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("PROBE-RESULT: ").map(|(_, r)| r))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "no probe result (exit {:?}): {}{}",
                out.status.code(),
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Serves `policy` on `socket`: every admitted connection gets one byte and stays open.
fn serve(socket: &Path, policy: PeerPolicy) -> tokio::task::JoinHandle<()> {
    let listener = server::bind(socket).unwrap();
    tokio::spawn(async move {
        let mut conns = Box::pin(server::incoming(listener, policy));
        let mut open = Vec::new();
        while let Some(c) = conns.next().await {
            let mut c = c.unwrap();
            c.write_all(b"k").await.unwrap();
            open.push(c);
        }
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .is_some_and(|u| u == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_modes_and_peer_policy() {
    if let Some(socket) = std::env::var_os(PROBE_ENV) {
        println!("\nPROBE-RESULT: {}", probe(Path::new(&socket)));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run/drakit");
    let socket = dir.join("test.sock");

    // Modes: missing directories are created 0700, the socket is 0600.
    let task = serve(&socket, PeerPolicy::root_and([]));
    assert_eq!(mode(&dir), 0o700, "socket directory");
    assert_eq!(mode(&socket), 0o600, "socket");
    // The socket was staged under a temporary name and renamed: nothing else is left.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["test.sock"], "only the socket in its directory");
    let s = socket.clone();
    let root = tokio::task::spawn_blocking(move || probe(&s))
        .await
        .unwrap();
    assert_eq!(root, "answered", "root is always admitted by root_and");
    task.abort();

    // A stale socket (its server gone) is replaced; an existing directory keeps its mode.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let task = serve(&socket, PeerPolicy::root_and([]));
    assert_eq!(mode(&dir), 0o750);
    assert_eq!(mode(&socket), 0o600);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    if !is_root() {
        eprintln!("skipped: the uid-65534 peer checks need root (to run a child as another uid)");
        task.abort();
        return;
    }
    // With the modes as bound, another uid cannot even reach the socket.
    let s = socket.clone();
    let got = match tokio::task::spawn_blocking(move || probe_as_nobody(&s))
        .await
        .unwrap()
    {
        Ok(got) => got,
        Err(why) => {
            eprintln!("skipped: could not run a peer as uid {NOBODY}: {why}");
            task.abort();
            return;
        }
    };
    assert_eq!(
        got, "connect error: PermissionDenied",
        "modes keep uid 65534 out"
    );
    task.abort();

    // Open the modes so only the peer check stands between uid 65534 and the server.
    let open_modes = |socket: &Path| {
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut p: PathBuf = socket.to_path_buf();
        while let Some(parent) = p.parent() {
            if parent == std::env::temp_dir() || parent == Path::new("/") {
                break;
            }
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
            p = parent.to_path_buf();
        }
    };
    for (policy, nobody_gets) in [
        (PeerPolicy::root_and([]), "closed"),
        (PeerPolicy::root_and([1000]), "closed"),
        (PeerPolicy::root_and([NOBODY]), "answered"),
        (PeerPolicy::only([NOBODY]), "answered"),
    ] {
        let task = serve(&socket, policy.clone());
        open_modes(&socket);
        let s = socket.clone();
        let got = tokio::task::spawn_blocking(move || probe_as_nobody(&s))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, nobody_gets, "uid {NOBODY} under {policy:?}");
        let s = socket.clone();
        let root = tokio::task::spawn_blocking(move || probe(&s))
            .await
            .unwrap();
        let want = if policy.allows(0) {
            "answered"
        } else {
            "closed"
        };
        assert_eq!(root, want, "root under {policy:?}");
        task.abort();
    }
}
