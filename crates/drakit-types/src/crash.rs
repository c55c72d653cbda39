//! Crash injection for the daemons' crash-consistency tests.
//!
//! A daemon names the steps of its state changes (`prepare-after-cdi-write`, ...) and calls
//! [`point`] at each. When the daemon binary was built with its `crash-injection` cargo feature
//! and started with `DRAKIT_CRASH_AT=<step>`, the first time that step is reached the process
//! prints one line to stderr (`drakit crash-injection: <daemon> aborting at <step>`) and calls
//! [`std::process::abort`]: a real crash, no destructors, no flushing, no clean shutdown.
//!
//! The variable is read once, by [`init`] at start-up. A binary built without the feature
//! (every production build) ignores it and logs that it did; a library used in-process (tests,
//! benchmarks) never arms it because only the binaries call [`init`]. An unknown step name is
//! refused at start-up, so a typo cannot make a crash test pass without crashing; the tests also
//! require the marker line, which proves the step was reached.

use std::sync::OnceLock;

/// The environment variable naming the step to crash at.
pub const ENV: &str = "DRAKIT_CRASH_AT";
/// Start of the line printed just before the abort.
pub const MARKER: &str = "drakit crash-injection:";

struct Armed {
    daemon: String,
    step: String,
}

static ARMED: OnceLock<Armed> = OnceLock::new();

/// What [`init`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// `DRAKIT_CRASH_AT` is not set.
    Off,
    /// Set, and this build honours it: the process aborts at this step.
    Armed(String),
    /// Set, but this binary was built without the `crash-injection` feature.
    Ignored(String),
}

/// Reads `DRAKIT_CRASH_AT` once. `steps` are the daemon's step names; `enabled` is whether this
/// build honours the variable (`cfg!(feature = "crash-injection")` of the daemon). An unknown
/// step is an error naming the known ones. Call it once, first thing in `main`.
pub fn init(daemon: &str, steps: &[&str], enabled: bool) -> Result<Setting, String> {
    let value = std::env::var_os(ENV).map(|v| v.to_string_lossy().into_owned());
    let setting = parse(value.as_deref(), daemon, steps, enabled)?;
    if let Setting::Armed(step) = &setting {
        let _ = ARMED.set(Armed {
            daemon: daemon.to_owned(),
            step: step.clone(),
        });
    }
    Ok(setting)
}

/// What `DRAKIT_CRASH_AT=value` means for this daemon and build (no side effects).
pub fn parse(
    value: Option<&str>,
    daemon: &str,
    steps: &[&str],
    enabled: bool,
) -> Result<Setting, String> {
    let step = value.unwrap_or_default().trim();
    if step.is_empty() {
        return Ok(Setting::Off);
    }
    if !enabled {
        return Ok(Setting::Ignored(step.to_owned()));
    }
    if !steps.contains(&step) {
        return Err(format!(
            "{ENV}={step:?} is not a crash step of {daemon}; known steps: {}",
            steps.join(", ")
        ));
    }
    Ok(Setting::Armed(step.to_owned()))
}

/// A named crash point: aborts the process when [`init`] armed this step. Otherwise a single
/// atomic load.
#[inline]
pub fn point(step: &str) {
    if let Some(a) = ARMED.get()
        && a.step == step
    {
        // One write(2) of the whole line (stderr is unbuffered; `eprintln!` may split it into
        // pieces that another thread's log lines interleave with): out before the abort.
        let line = format!("{}\n", marker(&a.daemon, step));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        std::process::abort();
    }
}

/// The marker line [`point`] prints for `daemon` at `step` (what tests look for).
pub fn marker(daemon: &str, step: &str) -> String {
    format!("{MARKER} {daemon} aborting at {step}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_arms_known_steps_only_when_enabled() {
        let steps = ["a", "b"];
        assert_eq!(parse(None, "d", &steps, true), Ok(Setting::Off));
        assert_eq!(parse(Some(" "), "d", &steps, true), Ok(Setting::Off));
        assert_eq!(
            parse(Some("b"), "d", &steps, true),
            Ok(Setting::Armed("b".into()))
        );
        assert_eq!(
            parse(Some("b"), "d", &steps, false),
            Ok(Setting::Ignored("b".into()))
        );
        let e = parse(Some("c"), "d", &steps, true).unwrap_err();
        assert!(
            e.contains("\"c\"") && e.contains("a, b") && e.contains(ENV),
            "{e}"
        );
    }

    #[test]
    fn unarmed_points_do_nothing() {
        // Nothing in this test process calls init with the variable set.
        point("anything");
        assert_eq!(
            marker("d", "s"),
            "drakit crash-injection: d aborting at s".to_owned()
        );
    }
}
