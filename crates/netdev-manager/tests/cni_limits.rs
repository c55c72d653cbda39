//! CNI plugin output limits, with shell-script plugins that never stop printing (SIGPIPE
//! ignored, so only a kill ends them): the call fails early with a clear error naming the
//! plugin, the stream and the limit, the plugin process is killed and reaped, and DEL rolls
//! back what ran. A plugin that logs a lot on stderr but under the limit still succeeds.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use drakit_netdev::cni::{CniArgs, CniRuntime, MAX_OUTPUT, MAX_STDERR};

/// A plugin script: records its pid and each command in `dir/<name>.log`, answers DEL with
/// success, and runs `body` for anything else.
fn plugin(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    let log = dir.join(format!("{name}.log"));
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\necho \"$CNI_COMMAND $$\" >> '{}'\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\ncat >/dev/null\n{body}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// (command, pid) lines the plugin logged.
fn calls(dir: &Path, name: &str) -> Vec<(String, u32)> {
    std::fs::read_to_string(dir.join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (c, p) = l.split_once(' ')?;
            Some((c.to_owned(), p.parse().ok()?))
        })
        .collect()
}

/// Whether `pid` is gone entirely (not running and not a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn args() -> CniArgs {
    CniArgs {
        container_id: "limits".into(),
        netns: "/proc/self/ns/net".into(),
        ifname: "eth1".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_cut_off_and_the_plugin_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path();
    // 1 KiB lines forever; write errors ignored, so the loop only ends when killed.
    let line = "x".repeat(1023);
    plugin(
        bin,
        "flood-stdout",
        &format!("trap '' PIPE\nwhile :; do echo {line}; done 2>/dev/null"),
    );
    plugin(
        bin,
        "flood-stderr",
        &format!("trap '' PIPE\nwhile :; do echo {line} >&2; done"),
    );
    let rt = CniRuntime {
        bin_dirs: vec![bin.to_path_buf()],
        // Far above what the cut-off takes: a timeout would be the wrong error.
        timeout: Duration::from_secs(60),
    };
    for (name, want) in [
        (
            "flood-stdout",
            format!("stdout larger than the limit of {MAX_OUTPUT} bytes; plugin killed"),
        ),
        (
            "flood-stderr",
            format!("stderr larger than the limit of {MAX_STDERR} bytes; plugin killed"),
        ),
    ] {
        let conf =
            format!(r#"{{"cniVersion":"1.0.0","name":"n","plugins":[{{"type":"{name}"}}]}}"#);
        let started = Instant::now();
        let e = rt.add(&conf, &args()).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("CNI ADD with plugin \"{name}\": ")) && msg.ends_with(&want),
            "{name}: {msg}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name}: cut off by size, not by the timeout ({:?})",
            started.elapsed()
        );
        let c = calls(bin, name);
        assert_eq!(
            c.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
            vec!["ADD", "DEL"],
            "{name}: ADD, then DEL to roll it back"
        );
        let add_pid = c[0].1;
        assert!(
            gone(add_pid),
            "{name}: plugin pid {add_pid} killed and reaped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_under_the_limit_is_drained_and_the_call_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path();
    // 512 KiB of log lines (more than is kept for messages, less than the limit), then a result.
    let line = "y".repeat(1023);
    plugin(
        bin,
        "chatty",
        &format!(
            "i=0\nwhile [ $i -lt 512 ]; do echo {line} >&2; i=$((i+1)); done\necho '{{\"cniVersion\":\"1.0.0\"}}'"
        ),
    );
    let rt = CniRuntime {
        bin_dirs: vec![bin.to_path_buf()],
        timeout: Duration::from_secs(60),
    };
    let conf = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"chatty"}]}"#;
    let out = rt
        .add(conf, &args())
        .await
        .expect("a chatty plugin is fine");
    assert_eq!(out.result, r#"{"cniVersion":"1.0.0"}"#);
    let c = calls(bin, "chatty");
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(gone(c[0].1));
}
