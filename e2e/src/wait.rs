//! Waiting on shared state without blind sleeps: a generation counter that is bumped on every
//! change, and a helper that re-checks a condition each time it moves.

use std::time::Duration;

use tokio::sync::watch;

/// Bumped whenever the state it guards changes.
#[derive(Debug)]
pub(crate) struct Changes {
    tx: watch::Sender<u64>,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            tx: watch::channel(0).0,
        }
    }
}

impl Changes {
    pub(crate) fn bump(&self) {
        self.tx.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Calls `check` now and after every change until it returns `Some`, or until `timeout`.
    pub(crate) async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.mark_unchanged();
            if let Some(v) = check() {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`: a closed channel cannot happen, but stop anyway.
                Ok(Err(_)) | Err(_) => return check(),
            }
        }
    }
}
