//! Processes, network namespaces and `ip` for the run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs `ip` with `args`; stdout on success, the error text otherwise.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> -j <args>` parsed.
pub fn ip_json(ns: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut a = vec!["-n", ns, "-j"];
    a.extend_from_slice(args);
    let out = ip(&a)?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).with_context(|| format!("parsing ip {} output", a.join(" ")))
}

/// This process's real uid (from /proc, no libc binding needed).
pub fn uid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        })
}

pub fn is_root() -> bool {
    uid() == Some(0)
}

/// Whether `ip netns add` works here (root, iproute2 installed).
pub fn netns_usable() -> std::result::Result<(), String> {
    if !is_root() {
        return Err("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("iproute2 (`ip`) is not installed".into()),
    }
}

/// Whether the kernel can create a link of `kind` (tried in a scratch namespace).
pub fn link_kind_works(scratch_ns: &str, kind: &str) -> bool {
    let name = "dkprobe0";
    let ok = ip(&["-n", scratch_ns, "link", "add", name, "type", kind]).is_ok();
    if ok {
        let _ = ip(&["-n", scratch_ns, "link", "del", name]);
    }
    ok
}

/// A named network namespace deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A daemon process with its log file; SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    /// Program and arguments, to start it again.
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
}

impl Daemon {
    pub fn spawn(name: &str, log_dir: &Path, mut cmd: Command) -> Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let f = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let f2 = f.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .env("RUST_LOG", "info")
            .env("DRAKIT_LOG", "info");
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {:?}", cmd.get_program()))?;
        Ok(Daemon {
            name: name.into(),
            log,
            child: Some(child),
            program: cmd.get_program().to_owned(),
            args: cmd.get_args().map(ToOwned::to_owned).collect(),
        })
    }

    /// Stops it (SIGTERM), runs `between`, and starts it again with the same command line; the
    /// log is appended. Returns whether it exited on SIGTERM.
    pub fn restart(&mut self, between: impl FnOnce() -> Result<()>) -> Result<bool> {
        let clean = self.stop();
        between()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        let dir = self.log.parent().map(Path::to_path_buf).unwrap_or_default();
        let fresh = Daemon::spawn(&self.name, &dir, cmd)?;
        *self = fresh;
        Ok(clean)
    }

    /// The process id while it runs (for `/proc/<pid>` and signals; the soak runner uses it).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(st) = c.try_wait()?
        {
            bail!("{} exited ({st}); log:\n{}", self.name, tail(&self.log, 40));
        }
        Ok(())
    }

    /// Waits until `path` exists (a socket the daemon binds).
    pub fn wait_for_path(&mut self, path: &Path, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while !path.exists() {
            self.check_alive()?;
            if start.elapsed() > timeout {
                bail!(
                    "{} did not create {} within {timeout:?}; log:\n{}",
                    self.name,
                    path.display(),
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns whether it exited on SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A process sitting in a pod's network namespace (the container's pid for the OCI state).
#[derive(Debug)]
pub struct PodProcess {
    child: Child,
}

impl PodProcess {
    pub fn start(ns: &str) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a process in the pod netns")?;
        let me = PodProcess { child };
        // `ip netns exec` execs the command after setns: wait until the pid is in the netns.
        let want = std::fs::read_link(format!("/var/run/netns/{ns}"))
            .ok()
            .map(|_| ());
        let _ = want;
        let target = std::fs::metadata(format!("/var/run/netns/{ns}"))?;
        let start = Instant::now();
        loop {
            let link = std::fs::metadata(format!("/proc/{}/ns/net", me.pid()));
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = link
                && m.ino() == target.ino()
                && m.dev() == target.dev()
            {
                return Ok(me);
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!("process did not enter netns {ns}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
