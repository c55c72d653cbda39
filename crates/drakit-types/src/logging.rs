//! Logging set-up shared by the daemon binaries (feature `logging`): tracing to stderr, level from
//! `DRAKIT_LOG` (an EnvFilter, default `info`), text or JSON lines.

/// Installs the global subscriber; call once at start-up.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRAKIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}
