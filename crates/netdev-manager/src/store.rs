//! Persistence of claim records behind a small key→value trait, so the manager can switch to
//! `drakit_types::checkpoint` without touching its logic. [`CheckpointStore`] is that journal
//! (checksummed, boot-ID stamped, compacted; what the daemon uses); [`DirStore`] keeps one file
//! per key, each replaced atomically (temp file, fsync, rename, fsync of the directory);
//! [`MemStore`] is for tests.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid key {0:?}")]
    Key(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// Durable key→value records. `put` must be durable when it returns.
pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn remove(&self, key: &str) -> Result<(), StoreError>;
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !k.starts_with('.')
}

/// One file per key under a directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Io {
                op: "create",
                path: dir.clone(),
                source,
            })?;
        Ok(Self { dir })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !key_ok(key) {
            return Err(StoreError::Key(key.into()));
        }
        Ok(self.dir.join(format!("{key}.json")))
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + use<> {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

impl Store for DirStore {
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)
            .map_err(io("read", &self.dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            if !key_ok(key) {
                continue;
            }
            let p = e.path();
            out.push((key.to_string(), fs::read(&p).map_err(io("read", &p))?));
        }
        out.sort();
        Ok(out)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let tmp = self.dir.join(format!(".{key}.tmp"));
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(value).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &self.dir))
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(StoreError::Io {
                    op: "remove",
                    path,
                    source: e,
                });
            }
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &self.dir))
    }
}

/// The shared drakit checkpoint (append-only journal of checksummed records over a key→value
/// map), values kept as JSON text.
#[derive(Debug)]
pub struct CheckpointStore(Mutex<drakit_types::checkpoint::Checkpoint<String>>);

impl CheckpointStore {
    /// Opens `<dir>/<name>`; what the load repaired is logged.
    pub fn open(opts: drakit_types::checkpoint::Options) -> Result<Self, StoreError> {
        let (cp, report) = drakit_types::checkpoint::Checkpoint::open(opts)
            .map_err(|e| StoreError::Checkpoint(e.to_string()))?;
        for w in report.warnings() {
            tracing::warn!(warning = %w, "checkpoint load");
        }
        Ok(Self(Mutex::new(cp)))
    }

    fn cp(&self) -> std::sync::MutexGuard<'_, drakit_types::checkpoint::Checkpoint<String>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Store for CheckpointStore {
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .cp()
            .entries()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect())
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if !key_ok(key) {
            return Err(StoreError::Key(key.into()));
        }
        let text = String::from_utf8(value.to_vec())
            .map_err(|_| StoreError::Checkpoint("value is not UTF-8".into()))?;
        self.cp()
            .put(key, text)
            .map_err(|e| StoreError::Checkpoint(e.to_string()))
    }
    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.cp()
            .remove(key)
            .map(|_| ())
            .map_err(|e| StoreError::Checkpoint(e.to_string()))
    }
}

/// In-memory store (tests, benchmarks); clones share contents, so a "restart" can reuse it.
#[derive(Debug, Clone, Default)]
pub struct MemStore(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl MemStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Store for MemStore {
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if !key_ok(key) {
            return Err(StoreError::Key(key.into()));
        }
        self.map().insert(key.into(), value.to_vec());
        Ok(())
    }
    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.map().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_store_survives_reopen() {
        use drakit_types::checkpoint::{BootIdSource, Options};
        let d = tempfile::tempdir().unwrap();
        let opts = || {
            let mut o = Options::new(d.path(), "netdev.checkpoint");
            o.boot_id = BootIdSource::Fixed("boot-1".into());
            o
        };
        {
            let s = CheckpointStore::open(opts()).unwrap();
            s.put("claim-a", br#"{"x":1}"#).unwrap();
            s.put("claim-b", b"2").unwrap();
            s.remove("claim-b").unwrap();
            assert!(s.put("../x", b"").is_err());
        }
        let s = CheckpointStore::open(opts()).unwrap();
        assert_eq!(
            s.load().unwrap(),
            vec![("claim-a".into(), br#"{"x":1}"#.to_vec())]
        );
    }

    #[test]
    fn dir_store_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::open(d.path().join("state")).unwrap();
        s.put("claim-a", b"1").unwrap();
        s.put("claim-b", b"2").unwrap();
        s.put("claim-a", b"3").unwrap();
        assert_eq!(
            s.load().unwrap(),
            vec![
                ("claim-a".into(), b"3".to_vec()),
                ("claim-b".into(), b"2".to_vec())
            ]
        );
        s.remove("claim-a").unwrap();
        s.remove("claim-a").unwrap();
        assert_eq!(s.load().unwrap().len(), 1);
        assert!(s.put("../x", b"").is_err());
    }
}
