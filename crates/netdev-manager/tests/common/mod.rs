//! Helpers for real-kernel tests: uniquely named network namespaces that are always deleted.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace created for one test (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    /// Creates a fresh namespace, or `None` (after printing `skipped: ...`) when this machine
    /// cannot.
    pub fn create(tag: &str) -> Option<TestNs> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("dkt{}-{}-{tag}", std::process::id(), n);
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(o) if o.status.success() => {
                let ns = TestNs { name };
                ns.ip(&["link", "set", "lo", "up"]);
                Some(ns)
            }
            Ok(o) => {
                eprintln!(
                    "skipped: cannot create a network namespace: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: `ip` not runnable: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `ip -n <ns> args...`; returns stdout, or the error text prefixed with "ERR:".
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        match Command::new("ip").args(&full).output() {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
            Ok(o) => format!("ERR:{}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("ERR:{e}"),
        }
    }

    /// Link names in the namespace, sorted (from `ip -o link`, independent of the code under test).
    pub fn link_names(&self) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect();
        v.sort();
        v
    }

    pub fn delete(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Names with a test-unique suffix, ≤ 15 bytes.
pub fn uniq(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let s = format!("{prefix}{:x}{n}", std::process::id() & 0xffff);
    s.chars().take(15).collect()
}
