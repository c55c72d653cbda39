//! `cargo xtask fuzz-smoke [--seconds N] [--sanitizer address|none] [target ...]`: builds every
//! cargo-fuzz crate (`crates/<crate>/fuzz/`) and runs each target (or the ones named) for N
//! seconds (default 60) from its committed seeds. Fails naming the target and its crash
//! artifact when one finds a crash.
//!
//! - Toolchain: cargo-fuzz wants nightly flags (`-Zsanitizer`, ...); the stable toolchain accepts
//!   them with `RUSTC_BOOTSTRAP=1`, set for the cargo-fuzz commands only. AddressSanitizer works
//!   that way (the default); `--sanitizer none` leaves libFuzzer's coverage and Rust's own checks
//!   (panics, debug assertions, overflow checks: cargo-fuzz builds with `-Cdebug-assertions`).
//! - Build output goes to `target/fuzz/` (shared by the three fuzz crates, so common
//!   dependencies build once); each crate's `Cargo.lock` is checked with `--locked` first.
//! - Corpus: libFuzzer reads `target/fuzz/corpus/<target>/` (its working corpus, kept between
//!   runs, never committed) and the seeds in `crates/<crate>/fuzz/corpus/<target>/`, and writes
//!   new inputs to the former only.
//! - Crash inputs land in `crates/<crate>/fuzz/artifacts/<target>/` (git-ignored); each run's
//!   libFuzzer output is kept in `target/fuzz/logs/<target>.log`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{self, cargo, root};

/// Every fuzz target: (fuzz crate directory, target).
const TARGETS: &[(&str, &str)] = &[
    ("crates/drakit-types/fuzz", "config_decode"),
    ("crates/drakit-types/fuzz", "policy_check"),
    ("crates/drakit-types/fuzz", "cdi_build"),
    ("crates/nri/fuzz", "mux_frames"),
    ("crates/nri/fuzz", "ttrpc_frames"),
    ("crates/cpu-allocator/fuzz", "sysfs_topology"),
];

/// The fuzz crate directories (outside the workspace, so `cargo fmt --all` does not see them).
pub fn crate_dirs() -> Vec<&'static str> {
    let mut dirs: Vec<&str> = TARGETS.iter().map(|(d, _)| *d).collect();
    dirs.dedup();
    dirs
}

const CARGO_FUZZ_VERSION: &str = "0.13.2";
const DEFAULT_SECONDS: u64 = 60;
/// A single input running longer than this is reported as a hang.
const INPUT_TIMEOUT_SECS: u64 = 30;

const USAGE: &str = "\
usage: cargo xtask fuzz-smoke [--seconds N] [--sanitizer address|none] [target ...]

Builds the cargo-fuzz crates and runs each target for N seconds (default 60) from its seeds.
targets: config_decode policy_check cdi_build (drakit-types), mux_frames ttrpc_frames (nri),
         sysfs_topology (drakit-cpu)
";

struct Options {
    seconds: u64,
    sanitizer: String,
    targets: Vec<(&'static str, &'static str)>,
}

fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut seconds = DEFAULT_SECONDS;
    let mut sanitizer = "address".to_string();
    let mut wanted = BTreeSet::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value\n{USAGE}"),
            }
        };
        match flag {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--seconds" => {
                let v = value("--seconds")?;
                seconds = v
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .with_context(|| format!("--seconds {v:?}: a positive whole number"))?;
            }
            "--sanitizer" => {
                sanitizer = value("--sanitizer")?;
                if !matches!(sanitizer.as_str(), "address" | "none") {
                    bail!("--sanitizer {sanitizer:?}: address or none");
                }
            }
            f if f.starts_with('-') => bail!("unknown option {f}\n{USAGE}"),
            name => {
                if !TARGETS.iter().any(|(_, t)| *t == name) {
                    bail!("unknown fuzz target {name:?}\n{USAGE}");
                }
                wanted.insert(name.to_string());
            }
        }
    }
    let targets = TARGETS
        .iter()
        .filter(|(_, t)| wanted.is_empty() || wanted.contains(*t))
        .copied()
        .collect();
    Ok(Some(Options {
        seconds,
        sanitizer,
        targets,
    }))
}

pub fn run(args: &[String]) -> Result<()> {
    let Some(opts) = parse(args)? else {
        return Ok(());
    };
    let started = Instant::now();
    util::ensure_cargo_tool("fuzz", "cargo-fuzz", CARGO_FUZZ_VERSION)?;
    let target_dir = root().join("target/fuzz");

    // Build each fuzz crate once (all its targets), after checking its lock file.
    let mut crates: Vec<&str> = opts.targets.iter().map(|(c, _)| *c).collect();
    crates.dedup();
    for dir in &crates {
        check_lock(dir)?;
        let t = Instant::now();
        let all = TARGETS.iter().filter(|(c, _)| c == dir).count();
        let picked: Vec<&str> = opts
            .targets
            .iter()
            .filter(|(c, _)| c == dir)
            .map(|(_, t)| *t)
            .collect();
        // `cargo fuzz build` builds one target or all of them.
        let builds: Vec<Option<&str>> = if picked.len() == all {
            vec![None]
        } else {
            picked.into_iter().map(Some).collect()
        };
        for one in builds {
            util::run(fuzz_cmd("build", dir, &opts.sanitizer, &target_dir).args(one))
                .with_context(|| format!("building the fuzz targets of {dir}"))?;
        }
        eprintln!("built {dir} in {} s", t.elapsed().as_secs());
    }
    let built = started.elapsed();

    let mut results = Vec::new();
    for (dir, target) in &opts.targets {
        results.push(run_target(dir, target, &opts, &target_dir)?);
    }

    println!();
    println!(
        "fuzz-smoke: {} target(s), {} s each, sanitizer {}",
        results.len(),
        opts.seconds,
        opts.sanitizer
    );
    println!(
        "{:<16} {:>10} {:>8} {:>8}  result",
        "target", "runs", "exec/s", "corpus"
    );
    for r in &results {
        println!(
            "{:<16} {:>10} {:>8} {:>8}  {}",
            r.target,
            r.runs.as_deref().unwrap_or("?"),
            r.exec_per_sec.as_deref().unwrap_or("?"),
            r.corpus,
            match &r.failure {
                None => "ok".to_string(),
                Some(f) => format!("FAILED: {f}"),
            }
        );
    }
    println!(
        "build {} s, total {} s",
        built.as_secs(),
        started.elapsed().as_secs()
    );
    let failed: Vec<&Outcome> = results.iter().filter(|r| r.failure.is_some()).collect();
    if !failed.is_empty() {
        let mut msg = String::from("fuzz targets failed:");
        for r in failed {
            msg.push_str(&format!(
                "\n  {}: {} (log {})",
                r.target,
                r.failure.as_deref().unwrap_or(""),
                r.log.display()
            ));
            if let Some(a) = &r.artifact {
                msg.push_str(&format!(
                    "\n    reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir {} -s {} \
                     --target-dir target/fuzz {} {}",
                    r.dir,
                    opts.sanitizer,
                    r.target,
                    a.display()
                ));
            }
        }
        msg.push_str("\nSee the crate README's Fuzzing section for turning it into a test.");
        bail!(msg);
    }
    Ok(())
}

/// `RUSTC_BOOTSTRAP=1 cargo fuzz <sub> --fuzz-dir <dir> -s <san> --target-dir <dir>`.
fn fuzz_cmd(sub: &str, dir: &str, sanitizer: &str, target_dir: &Path) -> Command {
    let mut c = cargo();
    c.env("RUSTC_BOOTSTRAP", "1")
        .args([
            "fuzz",
            sub,
            "--fuzz-dir",
            dir,
            "-s",
            sanitizer,
            "--target-dir",
        ])
        .arg(target_dir);
    c
}

/// Fails early, with the fix, when a fuzz crate's Cargo.lock no longer matches its manifests
/// (e.g. after a dependency of the crate under test changed).
fn check_lock(dir: &str) -> Result<()> {
    let manifest = format!("{dir}/Cargo.toml");
    let out = cargo()
        .current_dir(root())
        .args([
            "tree",
            "--locked",
            "--depth",
            "0",
            "--quiet",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("running cargo tree for {manifest}"))?;
    if !out.status.success() {
        bail!(
            "{dir}/Cargo.lock is out of date: {}\nupdate it with `cargo update --workspace \
             --manifest-path {manifest}` and commit it",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

struct Outcome {
    dir: String,
    target: String,
    /// The crash input, when there is one.
    artifact: Option<PathBuf>,
    runs: Option<String>,
    exec_per_sec: Option<String>,
    corpus: usize,
    failure: Option<String>,
    log: PathBuf,
}

fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn run_target(dir: &str, target: &str, opts: &Options, target_dir: &Path) -> Result<Outcome> {
    let root = root();
    let seeds = root.join(dir).join("corpus").join(target);
    if files_in(&seeds).is_empty() {
        bail!("{target}: no seed files in {}", seeds.display());
    }
    let work = target_dir.join("corpus").join(target);
    let logs = target_dir.join("logs");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let artifacts = root.join(dir).join("artifacts").join(target);
    let before = files_in(&artifacts);
    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    eprintln!(
        "fuzzing {target} for {} s ({dir}, log {})",
        opts.seconds,
        log_path.display()
    );
    let mut cmd = fuzz_cmd("run", dir, &opts.sanitizer, target_dir);
    cmd.current_dir(&root)
        .arg(target)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", opts.seconds))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .stdout(log.try_clone().context("log file")?)
        .stderr(log);
    let status = cmd
        .status()
        .with_context(|| format!("could not start cargo fuzz run for {target}"))?;
    sweep_scratch();

    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let stat = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let new_artifacts: Vec<PathBuf> = files_in(&artifacts).difference(&before).cloned().collect();
    let mut artifact = None;
    let failure = if status.success() && new_artifacts.is_empty() {
        None
    } else {
        // Show what it was: the panic message or the sanitizer report, and the input.
        eprintln!("---- {target} ({}):", log_path.display());
        for l in excerpt(&text) {
            eprintln!("{l}");
        }
        eprintln!("----");
        // libFuzzer says where it wrote the input (a crash seen before keeps its old file name,
        // so the directory may not have changed).
        let written = text.lines().find_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| root.join(p.trim()))
        });
        artifact = written.or_else(|| new_artifacts.first().cloned());
        Some(match &artifact {
            Some(a) => format!("crash input {}", a.display()),
            None => format!("cargo fuzz run exited with {status}, no crash input written"),
        })
    };
    Ok(Outcome {
        dir: dir.to_string(),
        target: target.to_string(),
        artifact,
        runs: stat("stat::number_of_executed_units:"),
        exec_per_sec: stat("stat::average_exec_per_sec:"),
        corpus: files_in(&work).len(),
        failure,
        log: log_path,
    })
}

/// Removes the scratch trees the targets leave (`drakit-fuzz-<what>-<pid>` in /dev/shm or the
/// temp dir; libFuzzer ends with `exit`, so they cannot remove them) once their process is gone.
fn sweep_scratch() {
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        for path in files_in(&base) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(pid) = name
                .strip_prefix("drakit-fuzz-")
                .and_then(|rest| rest.rsplit_once('-'))
                .map(|(_, pid)| pid)
            else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

/// The lines of a libFuzzer log that say what went wrong: a Rust panic (the `panicked at` line
/// and its message), a sanitizer or libFuzzer error (its first lines), and where the input went.
fn excerpt(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        out.extend(
            lines[i..]
                .iter()
                .take(12)
                .take_while(|l| !l.starts_with("stack backtrace") && !l.starts_with("note:")),
        );
    }
    if let Some(i) = lines
        .iter()
        .position(|l| l.starts_with("==") && l.contains("ERROR"))
    {
        let n = if out.is_empty() { 30 } else { 1 };
        out.extend(lines[i..].iter().take(n));
    }
    out.extend(lines.iter().filter(|l| {
        l.starts_with("SUMMARY:")
            || l.contains("Test unit written to")
            || l.starts_with("Base64:")
            || l.starts_with("MS:")
    }));
    if out.is_empty() {
        out.extend(lines.iter().skip(lines.len().saturating_sub(30)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse(&[]).unwrap().unwrap();
        assert_eq!(o.seconds, 60);
        assert_eq!(o.sanitizer, "address");
        assert_eq!(o.targets.len(), TARGETS.len());

        let o = parse(&args(&["--seconds", "10", "mux_frames", "config_decode"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.seconds, 10);
        // In table order, whatever the order asked.
        let names: Vec<&str> = o.targets.iter().map(|(_, t)| *t).collect();
        assert_eq!(names, ["config_decode", "mux_frames"]);

        let o = parse(&args(&["--seconds=5", "--sanitizer=none"]))
            .unwrap()
            .unwrap();
        assert_eq!((o.seconds, o.sanitizer.as_str()), (5, "none"));

        for bad in [
            &["--seconds"][..],
            &["--seconds", "0"],
            &["--seconds", "x"],
            &["--sanitizer", "memory"],
            &["no_such_target"],
            &["--bogus"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
        assert!(parse(&args(&["--help"])).unwrap().is_none());
    }

    #[test]
    fn crash_excerpt() {
        let log = "INFO: Seed: 1\n#2 NEW cov: 3\n\
thread '<unnamed>' (1) panicked at fuzz_targets/x.rs:89:19:\n\
lone entry: decode gave Err(..)\n\
stack backtrace:\n   0: frame\n\
==21523== ERROR: libFuzzer: deadly signal\n    #0 0x1 in f\n\
SUMMARY: libFuzzer: deadly signal\nMS: 1 CopyPart-\n\
artifact_prefix='a/'; Test unit written to a/crash-9f39\nBase64: eyJ9\n";
        assert_eq!(
            excerpt(log),
            [
                "thread '<unnamed>' (1) panicked at fuzz_targets/x.rs:89:19:",
                "lone entry: decode gave Err(..)",
                "==21523== ERROR: libFuzzer: deadly signal",
                "SUMMARY: libFuzzer: deadly signal",
                "MS: 1 CopyPart-",
                "artifact_prefix='a/'; Test unit written to a/crash-9f39",
                "Base64: eyJ9",
            ]
        );
        // A sanitizer report without a panic: its first lines.
        let asan = "==7==ERROR: AddressSanitizer: heap-buffer-overflow\n    #0 0x1 in f\n";
        assert_eq!(excerpt(asan).len(), 2);
        // Nothing recognisable: the tail.
        assert_eq!(excerpt("a\nb").len(), 2);
    }

    #[test]
    fn every_target_has_a_fuzz_crate_and_seeds() {
        for (dir, target) in TARGETS {
            let d = root().join(dir);
            let manifest = fs::read_to_string(d.join("Cargo.toml")).unwrap();
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{dir}/Cargo.toml has no bin {target}"
            );
            assert!(
                d.join(format!("fuzz_targets/{target}.rs")).is_file(),
                "{target}"
            );
            assert!(d.join("Cargo.lock").is_file(), "{dir}: no Cargo.lock");
            assert!(
                !files_in(&d.join("corpus").join(target)).is_empty(),
                "{target}: no seeds"
            );
            // And no target of the crate is missing from the table.
            let bins = manifest.matches("[[bin]]").count();
            let listed = TARGETS.iter().filter(|(c, _)| c == dir).count();
            assert_eq!(bins, listed, "{dir}: {bins} targets, {listed} in TARGETS");
        }
    }
}
