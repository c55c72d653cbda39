//! `node-e2e`: every scenario of `manifests/examples/` against the real drakit daemons, with the
//! kubelet simulator, the API server stand-in and the NRI runtime simulator. Run by
//! `cargo xtask node-e2e`, and narrated for a newcomer by `cargo xtask demo`.
//!
//! ```text
//! node-e2e --bin-dir target/debug [--workspace .] [--only NAME]... [--demo] [--keep]
//! ```
//!
//! Exit status 0 only when every scenario passed (parts this machine cannot run are reported as
//! `skipped:` with the reason); on failure every daemon's log and state dir is dumped.

mod cel;
mod manifest;
mod node;
mod scenario;
mod sys;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::manifest::Scenario;
use crate::node::{Node, Paths, Profile};

#[derive(Debug, Parser)]
#[command(about = "drakit node-level end-to-end scenarios with the real daemons")]
struct Args {
    /// Directory holding drakit-kubelet-plugin, drakit-netdev, drakit-oci-hook, drakit-cpu, drakit-nri.
    #[arg(long)]
    bin_dir: PathBuf,
    /// The workspace root (examples and fixtures are read from it).
    #[arg(long, default_value = ".")]
    workspace: PathBuf,
    /// CNI plugin binaries.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// Run only these scenarios (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Narrate what each scenario asked for and produced.
    #[arg(long)]
    demo: bool,
    /// `drakit-kubelet-plugin --shared-slots` for every node (0: consumable capacity, the model of
    /// the cpu-grouped example; N: N plain slot devices per shared device).
    #[arg(long, default_value_t = 0)]
    shared_slots: u32,
    /// Keep the temp root (logs, state, CDI files) afterwards.
    #[arg(long)]
    keep: bool,
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The built-in check that is not an example (see `scenario::restart_check`).
const RESTART: &str = "kubelet-plugin-restart";
/// The built-in check of a runtime restart (see `scenario::nri_restart_check`).
const NRI_RESTART: &str = "nri-runtime-restart";

struct Report {
    name: String,
    node: &'static str,
    result: std::result::Result<scenario::Outcome, String>,
    millis: u128,
}

fn hr(c: char) -> String {
    std::iter::repeat_n(c, 78).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    init_logs();
    let a = Args::parse();
    // On SIGINT/SIGTERM the run is dropped: its nodes stop their daemons and delete their
    // network namespaces on the way out.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = run(a) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT): daemons stopped, namespaces deleted"),
        _ = term.recv() => bail!("terminated (SIGTERM): daemons stopped, namespaces deleted"),
    }
}

async fn run(a: Args) -> Result<()> {
    let workspace = a.workspace.canonicalize().context("workspace dir")?;
    let bin_dir = a.bin_dir.canonicalize().context("bin dir")?;
    for b in [
        "drakit-kubelet-plugin",
        "drakit-netdev",
        "drakit-oci-hook",
        "drakit-cpu",
        "drakit-nri",
    ] {
        if !bin_dir.join(b).is_file() {
            bail!(
                "{} is missing: build the daemons first (cargo xtask node-e2e does)",
                bin_dir.join(b).display()
            );
        }
    }
    let mut scenarios = manifest::load_all(&workspace.join("manifests/examples"))?;
    if !a.only.is_empty() {
        let unknown: Vec<&String> = a
            .only
            .iter()
            .filter(|o| {
                *o != RESTART && *o != NRI_RESTART && !scenarios.iter().any(|s| &s.name == *o)
            })
            .collect();
        if !unknown.is_empty() {
            bail!("no such scenario: {unknown:?}");
        }
        scenarios.retain(|s| a.only.contains(&s.name));
    }
    let paths = Paths {
        workspace: workspace.clone(),
        bin_dir,
        cni_bin_dir: a.cni_bin_dir.clone(),
        shared_slots: a.shared_slots,
    };
    let run_id = format!("{:x}", std::process::id() % 0xfffff);
    let base = std::env::temp_dir().join(format!("drakit-node-e2e-{run_id}"));
    if base.exists() {
        std::fs::remove_dir_all(&base)?;
    }
    std::fs::create_dir_all(&base)?;
    let install = workspace.join("manifests/install.yaml");
    let mut classes = if install.exists() {
        manifest::device_classes(&install)?
    } else {
        Default::default()
    };
    let class_note = if classes.is_empty() {
        for d in [node::NET, node::CPU, node::RUNTIME] {
            classes.insert(d.to_string(), vec![format!("device.driver == {d:?}")]);
        }
        format!(
            "DeviceClasses: {} has none; using one per driver selecting device.driver",
            install.display()
        )
    } else {
        format!(
            "DeviceClasses from {}: {}",
            install.display(),
            classes.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    let net_ok = sys::netns_usable();
    let cni_ok =
        a.cni_bin_dir.join("macvlan").is_file() && a.cni_bin_dir.join("host-local").is_file();

    println!("{}", hr('='));
    println!(
        "drakit node-e2e: {} scenario(s), state under {}",
        scenarios.len(),
        base.display()
    );
    println!("{class_note}");
    match &net_ok {
        Ok(()) => println!("network: real links in private network namespaces (root)"),
        Err(why) => println!("network: skipped: {why} (net.drakit.dev scenarios are not run)"),
    }
    println!("{}", hr('='));

    // Group by the node profile they need, keeping the examples' order within a node.
    let mut order: Vec<Profile> = Vec::new();
    for s in &scenarios {
        let p = node::profile_for(&s.name);
        if !order.contains(&p) {
            order.push(p);
        }
    }
    let want_restart = a.only.is_empty() || a.only.iter().any(|o| o == RESTART);
    let want_nri_restart = a.only.is_empty() || a.only.iter().any(|o| o == NRI_RESTART);
    if (want_restart || want_nri_restart) && !order.contains(&node::MAIN) {
        order.insert(0, node::MAIN);
    }
    let mut reports = Vec::new();
    let mut failed_dumps = Vec::new();
    let mut final_checks = Vec::new();
    let mut seq = 0;
    for profile in order {
        let mine: Vec<&Scenario> = scenarios
            .iter()
            .filter(|s| node::profile_for(&s.name) == profile)
            .collect();
        // The runtime-restart check attaches a pod late through drakit-netdev.
        let needs_net = mine.iter().any(|s| uses_driver(s, node::NET))
            || (want_nri_restart && profile == node::MAIN);
        if net_ok.is_err() && mine.iter().all(|s| uses_driver(s, node::NET)) {
            // Every scenario of this node needs network namespaces: do not start it at all.
            for s in &mine {
                let why = net_ok.clone().err().unwrap_or_default();
                let rep = Report {
                    name: s.name.clone(),
                    node: profile.name,
                    result: Err(format!("skipped: needs network namespaces: {why}")),
                    millis: 0,
                };
                print_report(&rep, s, a.demo);
                reports.push(rep);
            }
            continue;
        }
        let with_net = if needs_net {
            net_ok.clone()
        } else {
            Err("not needed: no selected scenario on this node uses it".into())
        };
        println!("\n>>> starting node {} ({})", profile.name, profile.what);
        let t = Instant::now();
        let mut node =
            match Node::start(profile.clone(), &base, &paths, &run_id, with_net.clone()).await {
                Ok(n) => n,
                Err(e) => {
                    for s in &mine {
                        reports.push(Report {
                            name: s.name.clone(),
                            node: profile.name,
                            result: Err(format!("node start failed: {e:#}")),
                            millis: 0,
                        });
                    }
                    failed_dumps.push(format!(
                        "node {} failed to start: {e:#}\n(logs under {})",
                        profile.name,
                        base.join(profile.name).display()
                    ));
                    dump_logs(&base.join(profile.name), &mut failed_dumps);
                    continue;
                }
            };
        println!(
            "    daemons up, drivers registered, slices published in {} ms",
            t.elapsed().as_millis()
        );
        for n in &node.notes {
            println!("    {n}");
        }
        if !node.missing_kinds.is_empty() {
            println!(
                "    this kernel cannot create: {} links",
                node.missing_kinds.join(", ")
            );
        }
        let mut node_failed = false;
        for s in mine {
            seq += 1;
            let t = Instant::now();
            let result = if uses_driver(s, node::NET) && !node.net {
                Err(format!(
                    "skipped: needs network namespaces: {}",
                    with_net.clone().err().unwrap_or_default()
                ))
            } else if s.name == "cni-macvlan" && !cni_ok {
                Err(format!(
                    "skipped: CNI plugins macvlan + host-local not found in {}",
                    a.cni_bin_dir.display()
                ))
            } else {
                scenario::run(&mut node, s, seq, &classes)
                    .await
                    .map_err(|e| format!("{e:#}"))
            };
            let rep = Report {
                name: s.name.clone(),
                node: profile.name,
                result,
                millis: t.elapsed().as_millis(),
            };
            print_report(&rep, s, a.demo);
            if matches!(&rep.result, Err(e) if !e.starts_with("skipped:")) {
                node_failed = true;
            }
            reports.push(rep);
        }
        if want_nri_restart && profile == node::MAIN {
            seq += 1;
            let t = Instant::now();
            let result = scenario::nri_restart_check(&node, seq)
                .await
                .map_err(|e| format!("{e:#}"));
            println!("\n{}", hr('-'));
            println!("check {NRI_RESTART} (node {})", profile.name);
            println!(
                "  what: the container runtime restarts; drakit-nri reconnects, resyncs, keeps older containers on the pool and attaches a pod it missed"
            );
            match &result {
                Ok(o) => {
                    for c in &o.checks {
                        println!("  ok   {c}");
                    }
                    for s in &o.skipped {
                        println!("  {s}");
                    }
                    println!("  => PASS ({} ms)", t.elapsed().as_millis());
                }
                Err(e) => {
                    node_failed = true;
                    println!("  => FAIL: {e}");
                }
            }
            reports.push(Report {
                name: NRI_RESTART.into(),
                node: profile.name,
                result,
                millis: t.elapsed().as_millis(),
            });
        }
        if want_restart && profile == node::MAIN {
            seq += 1;
            let t = Instant::now();
            let result = scenario::restart_check(&mut node, seq)
                .await
                .map_err(|e| format!("{e:#}"));
            println!("\n{}", hr('-'));
            println!("check {RESTART} (node {})", profile.name);
            println!(
                "  what: a prepared claim survives a kubelet plugin restart with the CDI dir wiped"
            );
            match &result {
                Ok(o) => {
                    for c in &o.checks {
                        println!("  ok   {c}");
                    }
                    println!("  => PASS ({} ms)", t.elapsed().as_millis());
                }
                Err(e) => {
                    node_failed = true;
                    println!("  => FAIL: {e}");
                }
            }
            reports.push(Report {
                name: RESTART.into(),
                node: profile.name,
                result,
                millis: t.elapsed().as_millis(),
            });
        }
        if node_failed {
            failed_dumps.push(node.dump());
        }
        // Stop the daemons, then nothing may remain in any checkpoint.
        let unclean = node.stop();
        if !unclean.is_empty() {
            final_checks.push(Err(format!(
                "{}: {unclean:?} did not exit on SIGTERM within 10 s",
                profile.name
            )));
        }
        final_checks.push(check_checkpoints(&node));
        final_checks.push(check_logs(&node.root.join("logs"), profile.name));
        drop(node);
    }

    // ---- summary ----
    println!("\n{}", hr('='));
    println!("summary");
    println!("{}", hr('-'));
    let mut failed = 0;
    let mut skipped = 0;
    for r in &reports {
        let (mark, extra) = match &r.result {
            Ok(o) if o.skipped.iter().any(|s| s.starts_with("skipped:")) => {
                ("PASS*", format!("{} checks, parts skipped", o.checks.len()))
            }
            Ok(o) => ("PASS ", format!("{} checks", o.checks.len())),
            Err(e) if e.starts_with("skipped:") => {
                skipped += 1;
                ("SKIP ", e.clone())
            }
            Err(e) => {
                failed += 1;
                ("FAIL ", e.lines().next().unwrap_or_default().to_string())
            }
        };
        println!(
            "{mark} {:<20} {:<11} {:>6} ms  {extra}",
            r.name, r.node, r.millis
        );
    }
    for c in &final_checks {
        match c {
            Ok(s) => println!("PASS  {s}"),
            Err(s) => {
                failed += 1;
                println!("FAIL  {s}");
            }
        }
    }
    println!("{}", hr('='));
    if failed > 0 || !failed_dumps.is_empty() {
        eprintln!(
            "\n{}\nFAILURE DUMP (daemon logs, state dirs, simulators)\n{}",
            hr('#'),
            hr('#')
        );
        for d in &failed_dumps {
            eprintln!("{d}");
        }
    }
    if a.keep || failed > 0 {
        println!("state kept under {}", base.display());
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    if failed > 0 {
        bail!("{failed} scenario(s)/check(s) failed");
    }
    println!(
        "{} scenario(s) passed{}",
        reports.len() - skipped,
        if skipped > 0 {
            format!(", {skipped} skipped")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn uses_driver(s: &Scenario, driver: &str) -> bool {
    s.claim_uses()
        .map(|u| {
            u.iter().any(|c| {
                manifest::requests(&c.spec)
                    .map(|r| r.iter().any(|r| r.class == driver))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

fn print_report(r: &Report, s: &Scenario, demo: bool) {
    println!("\n{}", hr('-'));
    println!(
        "scenario {} (node {})  [{}]",
        r.name,
        r.node,
        s.dir.display()
    );
    println!("  coverage: {}", node::coverage(&r.name));
    match &r.result {
        Ok(o) => {
            if demo {
                for (title, body) in &o.story {
                    println!("\n  ## {title}");
                    for l in body.lines() {
                        for w in wrap(l, 96) {
                            println!("     {w}");
                        }
                    }
                }
                println!();
            }
            for c in &o.checks {
                println!("  ok   {c}");
            }
            for sk in &o.skipped {
                println!("  {sk}");
            }
            println!("  => PASS ({} ms)", r.millis);
        }
        Err(e) if e.starts_with("skipped:") => println!("  {e}"),
        Err(e) => {
            if demo {
                println!("  ## what it asks for\n     {}", s.summary);
            }
            println!("  => FAIL: {e}");
        }
    }
}

/// Word-wraps prose longer than `width` (lines with leading spaces, i.e. YAML and command
/// output, are left alone).
fn wrap(line: &str, width: usize) -> Vec<String> {
    if line.chars().count() <= width || line.starts_with(' ') {
        return vec![line.to_string()];
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in line.split(' ') {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn dump_logs(root: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(root.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out.push(format!(
            "----- {} -----\n{}",
            e.path().display(),
            sys::tail(&e.path(), 200)
        ));
    }
}

/// After the daemons stopped: every checkpoint holds no claim.
fn check_checkpoints(node: &Node) -> std::result::Result<String, String> {
    let mut live: Vec<String> = Vec::new();
    let st = &node.state_dir;
    let boot_netdev = drakit_types::checkpoint::BootIdSource::ProcRoot(node.net_proc_root.clone());
    for (dir, name, boot) in [
        (st.join("netdev"), "netdev.checkpoint", boot_netdev),
        (
            st.join("cpu"),
            "cpu.checkpoint",
            drakit_types::checkpoint::BootIdSource::ProcRoot(PathBuf::from("/proc")),
        ),
    ] {
        if !dir.join(name).exists() {
            continue;
        }
        let mut o = drakit_types::checkpoint::Options::new(&dir, name);
        o.boot_id = boot;
        match drakit_types::checkpoint::Checkpoint::<serde_json::Value>::open(o) {
            Ok((cp, _)) => live.extend(cp.entries().keys().map(|k| format!("{name}: {k}"))),
            Err(e) => return Err(format!("{}: opening {name}: {e}", node.profile.name)),
        }
    }
    // The kubelet plugin: one checkpoint per driver, `<state>/<driver>/claims.checkpoint`.
    let kp = st.join("kubelet-plugin");
    for e in std::fs::read_dir(&kp).into_iter().flatten().flatten() {
        let j = e.path().join("claims.checkpoint");
        if j.exists() {
            let o = drakit_types::checkpoint::Options::new(e.path(), "claims.checkpoint");
            match drakit_types::checkpoint::Checkpoint::<serde_json::Value>::open(o) {
                Ok((cp, _)) => {
                    live.extend(cp.entries().keys().map(|u| format!("{}: {u}", j.display())))
                }
                Err(e) => {
                    return Err(format!(
                        "{}: opening {}: {e}",
                        node.profile.name,
                        j.display()
                    ));
                }
            }
        }
    }
    if live.is_empty() {
        Ok(format!(
            "{}: daemons stopped cleanly; netdev, cpu and kubelet-plugin checkpoints hold no claim",
            node.profile.name
        ))
    } else {
        Err(format!(
            "{}: claims left in checkpoints: {live:?}",
            node.profile.name
        ))
    }
}

/// No daemon panicked (a panic in a spawned task does not always end the process).
fn check_logs(dir: &Path, node: &str) -> std::result::Result<String, String> {
    let mut bad = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("panicked at")) {
            bad.push(format!("{}: {l}", e.path().display()));
        }
    }
    if bad.is_empty() {
        Ok(format!("{node}: no daemon log shows a panic"))
    } else {
        Err(format!("{node}: {}", bad.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_and_leaves_indented_lines() {
        let w = wrap("aaa bbb ccc ddd", 7);
        assert_eq!(w, vec!["aaa bbb", "ccc ddd"]);
        assert_eq!(wrap("  - x y z", 3), vec!["  - x y z"]);
        assert_eq!(wrap("short", 80), vec!["short"]);
    }
}
