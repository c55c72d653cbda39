//! `cargo xtask bench [--quick] [--runs N]`: every benchmark program of the workspace, built once in
//! release, run one after the other (never in parallel: they measure latency on a shared 2-core
//! machine); with `--runs N` the whole suite runs N times over. Each program's full output goes to
//! `target/bench/<name>.txt` (`<name>.run<K>.txt` with several runs); lines of the form
//! `BENCH <metric> <value> <unit>` are gathered into one table of medians (also written to
//! `target/bench/summary.md`), followed by the release binary sizes. BENCHMARKS.md records such
//! medians beside the anchors.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::util::{self, cargo, is_root, root};

/// The cargo profile the kubelet plugin binary is built with (Cargo.toml says why).
pub const KUBELET_PLUGIN_PROFILE: &str = "release-small";

struct Bench {
    name: &'static str,
    example: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    needs_root: bool,
}

fn benches(quick: bool) -> Vec<Bench> {
    let q = |full: &str, short: &str| {
        if quick {
            short.to_string()
        } else {
            full.to_string()
        }
    };
    let mut v = vec![
        Bench {
            name: "config-decode",
            example: "bench_config",
            args: vec![],
            env: vec![],
            needs_root: false,
        },
        Bench {
            name: "checkpoint-and-cdi",
            example: "bench_state",
            args: vec![q("1000", "200")],
            env: vec![],
            needs_root: false,
        },
        Bench {
            name: "nri-library",
            example: "bench",
            args: vec![q("10000", "1000"), q("1000", "100")],
            env: vec![],
            needs_root: false,
        },
        Bench {
            name: "nri-sidecar",
            example: "bench_nri",
            args: vec![q("10000", "1000"), q("1000", "100"), q("500", "100")],
            env: vec![],
            needs_root: false,
        },
        Bench {
            name: "cpu-allocator",
            example: "bench_cpu",
            args: vec![],
            env: vec![],
            needs_root: false,
        },
        Bench {
            name: "kubelet-plugin",
            example: "bench",
            args: vec![],
            env: vec![("BENCH_CLAIMS", q("1000", "200"))],
            needs_root: false,
        },
        Bench {
            name: "netdev-attach",
            example: "bench_attach",
            args: vec![q("500", "50")],
            env: vec![],
            needs_root: true,
        },
        Bench {
            name: "webhook",
            example: "bench_webhook",
            args: vec![q("5000", "500")],
            env: vec![],
            needs_root: false,
        },
        Bench {
            name: "e2e-harness",
            example: "bench_harness",
            args: vec![],
            env: vec![],
            needs_root: false,
        },
    ];
    // Scaling curve: NRI Synchronize at 10 / 100 / 1,000 containers.
    for n in ["10", "100", "1000"] {
        v.push(Bench {
            name: match n {
                "10" => "nri-sync-10",
                "100" => "nri-sync-100",
                _ => "nri-sync-1000",
            },
            example: "bench_nri",
            args: vec!["200".into(), n.into(), "10".into()],
            env: vec![],
            needs_root: false,
        });
    }
    v
}

/// `BENCH <metric> <value> <unit>` → (metric, value, unit).
fn bench_line(l: &str) -> Option<(String, f64, String)> {
    let mut it = l.split_whitespace();
    if it.next() != Some("BENCH") {
        return None;
    }
    let (m, v, u) = (it.next()?, it.next()?, it.next()?);
    Some((m.to_string(), v.parse().ok()?, u.to_string()))
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n >= 1)
            .context("--runs needs a number ≥ 1")?,
        None => 1,
    };
    // The `bench` examples of two packages collide in their examples dir: build each, copy.
    // The kubelet plugin is built, benched and shipped with its own profile (Cargo.toml); its
    // bench finds the binary beside its own directory, so both come from that profile.
    for (pkg, feats, name, profile) in [
        ("nri", Some("simulator"), "nri-library", "release"),
        (
            "drakit-kubelet-plugin",
            None,
            "kubelet-plugin",
            KUBELET_PLUGIN_PROFILE,
        ),
    ] {
        let mut c = cargo();
        c.args([
            "build",
            "--profile",
            profile,
            "--locked",
            "-p",
            pkg,
            "--example",
            "bench",
        ]);
        if profile == KUBELET_PLUGIN_PROFILE {
            c.arg("--bins");
        }
        if let Some(f) = feats {
            c.args(["--features", f]);
        }
        util::run(&mut c)?;
        let dir = root().join("target").join(profile).join("examples");
        std::fs::copy(dir.join("bench"), dir.join(format!("bench-{name}")))
            .with_context(|| format!("copying the {pkg} bench"))?;
    }
    util::run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--bins",
        "-p",
        "drakit-nri",
        "-p",
        "drakit-netdev",
        "-p",
        "drakit-cpu",
        "-p",
        "drakit-webhook",
        "--example",
        "bench_config",
        "--example",
        "bench_state",
        "--example",
        "bench_nri",
        "--example",
        "bench_cpu",
        "--example",
        "bench_attach",
        "--example",
        "bench_webhook",
        "-p",
        "drakit-types",
        "-p",
        "drakit-e2e",
        "--example",
        "bench_harness",
    ]))?;
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    // (bench, metric) in first-seen order, with the unit and one value per run.
    let mut table: Vec<((String, String), String, Vec<f64>)> = Vec::new();
    let mut notes = Vec::new();
    for run in 1..=runs {
        for b in benches(quick) {
            if b.needs_root && !is_root() {
                if run == 1 {
                    notes.push(format!(
                        "{}: skipped: needs root (network namespaces)",
                        b.name
                    ));
                }
                continue;
            }
            let profile = if b.name == "kubelet-plugin" {
                KUBELET_PLUGIN_PROFILE
            } else {
                "release"
            };
            let dir = root().join("target").join(profile).join("examples");
            let exe = if b.example == "bench" {
                dir.join(format!("bench-{}", b.name))
            } else {
                dir.join(b.example)
            };
            eprintln!(
                "== run {run}/{runs}: {} ({} {})",
                b.name,
                exe.display(),
                b.args.join(" ")
            );
            let t = Instant::now();
            let out = Command::new(&exe)
                .args(&b.args)
                .envs(b.env.iter().map(|(k, v)| (*k, v.as_str())))
                .current_dir(root())
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let file = if runs == 1 {
                format!("{}.txt", b.name)
            } else {
                format!("{}.run{run}.txt", b.name)
            };
            std::fs::write(out_dir.join(&file), &text)?;
            print!("{text}");
            if !out.status.success() {
                notes.push(format!(
                    "{} (run {run}): FAILED ({}) after {:.1?}",
                    b.name,
                    out.status,
                    t.elapsed()
                ));
                continue;
            }
            let mut found = false;
            for (m, v, u) in text.lines().filter_map(bench_line) {
                let key = (b.name.to_string(), m);
                match table.iter_mut().find(|(k, _, _)| *k == key) {
                    Some((_, _, vals)) => vals.push(v),
                    None => table.push((key, u, vec![v])),
                }
                found = true;
            }
            if !found && run == 1 {
                notes.push(format!(
                    "{}: see target/bench/{file} (its own report, {:.1?})",
                    b.name,
                    t.elapsed()
                ));
            }
        }
    }
    let mut summary = format!(
        "| bench | metric | median of {runs} | min | max | unit |\n|---|---|---|---|---|---|\n"
    );
    for ((b, m), u, vals) in &mut table {
        vals.sort_by(f64::total_cmp);
        let med = vals[vals.len() / 2];
        let (lo, hi) = (vals[0], vals[vals.len() - 1]);
        summary.push_str(&format!("| {b} | {m} | {med} | {lo} | {hi} | {u} |\n"));
    }
    std::fs::write(out_dir.join("summary.md"), &summary)?;
    println!("\n{summary}");
    println!("\nrelease binaries:");
    for bin in [
        "drakit-kubelet-plugin",
        "drakit-nri",
        "drakit-netdev",
        "drakit-cpu",
        "drakit-webhook",
    ] {
        let profile = if bin == "drakit-kubelet-plugin" {
            KUBELET_PLUGIN_PROFILE
        } else {
            "release"
        };
        if let Ok(m) = std::fs::metadata(root().join("target").join(profile).join(bin)) {
            println!("  {bin:<24} {:>6.1} MB ({profile})", m.len() as f64 / 1e6);
        }
    }
    for n in &notes {
        println!("note: {n}");
    }
    if notes.iter().any(|n| n.contains("FAILED")) {
        anyhow::bail!("some benchmarks failed");
    }
    Ok(())
}
