//! Persistence of the claim records behind a small key → value trait.
//!
//! [`CheckpointStore`] is the production store: the shared `drakit_types::checkpoint` journal
//! (append-only checksummed records, compacted by atomic replace, boot ID in the header).
//! [`MemoryStore`] serves tests; its clones share one map so a test can "restart" on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use drakit_types::checkpoint::{BootIdSource, Checkpoint, CheckpointError, LoadReport, Options};

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("state value for key {key:?} is not JSON: {source}")]
    NotJson {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("state store lock poisoned")]
    Poisoned,
}

/// Durable key → value storage; `put` and `delete` are durable when they return. Values are JSON.
pub trait StateStore: Send {
    fn load(&mut self) -> Result<BTreeMap<String, Vec<u8>>, StoreError>;
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, key: &str) -> Result<(), StoreError>;
}

/// An in-memory store; clones share the map, so a test can "restart" on the same state.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemoryStore {
    fn load(&mut self) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        Ok(self.map.lock().map_err(|_| StoreError::Poisoned)?.clone())
    }
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.map
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        self.map
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .remove(key);
        Ok(())
    }
}

/// File name of drakit-cpu's checkpoint inside its state directory.
pub const CHECKPOINT_NAME: &str = "cpu.checkpoint";

/// The shared checkpoint journal as a [`StateStore`].
#[derive(Debug)]
pub struct CheckpointStore {
    cp: Checkpoint<serde_json::Value>,
}

impl CheckpointStore {
    /// Opens `<dir>/cpu.checkpoint` (dir created 0700) stamped with `boot_id`. The report says
    /// whether a torn tail was dropped, a corrupt file moved aside, or the boot changed: log
    /// [`LoadReport::warnings`].
    pub fn open(dir: &Path, boot_id: &str) -> Result<(Self, LoadReport), StoreError> {
        let mut opts = Options::new(dir, CHECKPOINT_NAME);
        opts.boot_id = BootIdSource::Fixed(boot_id.to_string());
        let (cp, report) = Checkpoint::open(opts)?;
        Ok((Self { cp }, report))
    }

    pub fn path(&self) -> PathBuf {
        self.cp.path().to_path_buf()
    }
}

impl StateStore for CheckpointStore {
    fn load(&mut self) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        self.cp
            .entries()
            .iter()
            .map(|(k, v)| {
                serde_json::to_vec(v)
                    .map(|b| (k.clone(), b))
                    .map_err(|source| StoreError::NotJson {
                        key: k.clone(),
                        source,
                    })
            })
            .collect()
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let v: serde_json::Value =
            serde_json::from_slice(value).map_err(|source| StoreError::NotJson {
                key: key.to_string(),
                source,
            })?;
        self.cp.put(key, v)?;
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        self.cp.remove(key)?;
        Ok(())
    }
}

/// Creates `dir` (and parents) with mode 0700. An existing directory keeps its mode (it may be
/// shared, e.g. `/tmp`); if others can reach into it, that is logged as a warning.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{:o}", m.permissions().mode() & 0o7777),
                    "directory is accessible to other users; the socket's own 0600 mode and the peer check still apply"
                );
            }
            Ok(())
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            // The umask may have trimmed the mode; the leaf must be exactly 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_store_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut s, report) = CheckpointStore::open(&state, "boot-a").unwrap();
        assert!(report.created);
        assert!(s.load().unwrap().is_empty());
        s.put("a", br#"{"x":1}"#).unwrap();
        s.put("b", b"\"two\"").unwrap();
        assert!(s.put("bin", &[0xff, 0xfe]).is_err());
        s.delete("b").unwrap();
        s.delete("missing").unwrap();
        let path = s.path();
        drop(s);

        let (mut again, report) = CheckpointStore::open(&state, "boot-a").unwrap();
        assert!(!report.boot_changed);
        let map = again.load().unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["a"], br#"{"x":1}"#);
        drop(again);

        // A reboot is reported (the records' own boot IDs decide what is stale).
        let (_, report) = CheckpointStore::open(&state, "boot-b").unwrap();
        assert!(report.boot_changed);

        // Garbage: moved aside, empty state, a warning to log, no error.
        std::fs::write(&path, "not a checkpoint").unwrap();
        let (mut s, report) = CheckpointStore::open(&state, "boot-b").unwrap();
        assert!(report.corruption.is_some());
        assert!(!report.warnings().is_empty());
        assert!(s.load().unwrap().is_empty());
    }

    #[test]
    fn private_dir_is_created_0700_and_existing_dirs_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        create_private_dir(&shared).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode(&shared),
            0o1777,
            "an existing (shared) dir is left alone"
        );
        let new = shared.join("a/b");
        create_private_dir(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(create_private_dir(&file).is_err());
    }
}
