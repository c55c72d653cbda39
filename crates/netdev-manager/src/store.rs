//! Persistence of claim records behind a small key→value trait, so the manager can switch to
//! `drakit_types::checkpoint` without touching its logic. [`CheckpointStore`] is that journal
//! (checksummed, boot-ID stamped, compacted; what the daemon uses); [`DirStore`] keeps one file
//! per key, each replaced atomically (temp file, fsync, rename, fsync of the directory);
//! [`MemStore`] is for tests.
//!
//! Two strengths of write: [`Store::put`] survives a crash of the process and of the machine
//! (fdatasync before it returns); [`Store::put_until_reboot`] survives a crash of the process
//! (the bytes are in the file, i.e. in the page cache, before it returns) but not necessarily a
//! reboot. The second is for state that means nothing after a reboot: where a claim's links are
//! attached, since every pod network namespace is gone with the boot. Under disk load an
//! fdatasync costs milliseconds (it waits for the whole device cache flush), a plain write
//! microseconds.

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

/// Durable key→value records.
pub trait Store: Send + Sync + 'static {
    /// Every key with its newest value (the one a reboot did not take back).
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Durable when it returns: a crash of the process or of the machine keeps it.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Kept by a crash of the process when it returns, not necessarily by a reboot: after a
    /// reboot `load` may give the value the last `put` stored instead (stores may drop such
    /// values at a reboot on purpose). For keys that a `put` created; a key that only ever saw
    /// this call may be forgotten. The default is `put`.
    fn put_until_reboot(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.put(key, value)
    }
    /// Durable when it returns.
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
/// map), values kept as JSON text, in two files:
///
/// - `<name>` (e.g. `netdev.checkpoint`), fdatasync'd on every change: what [`Store::put`] and
///   [`Store::remove`] write;
/// - `<name>.boot`, the same format written without fdatasync: what
///   [`Store::put_until_reboot`] writes, and a copy of every `put` (written first, so this file
///   is never older than the other for any key). At open it is emptied when it was written
///   during another boot (its boot ID), and keys the durable file does not have (a crash between
///   the two removes of `remove`) are dropped from it.
///
/// `load` gives the durable file's keys, each with the `.boot` file's value where it has one.
#[derive(Debug)]
pub struct CheckpointStore(Mutex<Files>);

#[derive(Debug)]
struct Files {
    durable: drakit_types::checkpoint::Checkpoint<String>,
    boot: drakit_types::checkpoint::Checkpoint<String>,
}

fn cp_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Checkpoint(e.to_string())
}

impl CheckpointStore {
    /// Opens `<dir>/<name>` and `<dir>/<name>.boot`; what the loads repaired is logged.
    pub fn open(opts: drakit_types::checkpoint::Options) -> Result<Self, StoreError> {
        use drakit_types::checkpoint::{Checkpoint, Durability};
        let mut boot_opts = opts.clone();
        boot_opts.name = format!("{}.boot", opts.name);
        boot_opts.durability = Durability::None;
        let (durable, report) = Checkpoint::open(opts).map_err(cp_err)?;
        for w in report.warnings() {
            tracing::warn!(warning = %w, "checkpoint load");
        }
        let (mut boot, breport) = Checkpoint::<String>::open(boot_opts).map_err(cp_err)?;
        if breport.torn_tail.is_some() || breport.corruption.is_some() {
            for w in breport.warnings() {
                tracing::warn!(warning = %w, "checkpoint load");
            }
        }
        let stale: Vec<String> = boot
            .entries()
            .keys()
            .filter(|k| breport.boot_changed || durable.get(k).is_none())
            .cloned()
            .collect();
        if breport.boot_changed && !stale.is_empty() {
            tracing::info!(
                records = stale.len(),
                "the node rebooted: attachment state of the previous boot dropped"
            );
        }
        for k in &stale {
            boot.remove(k).map_err(cp_err)?;
        }
        Ok(Self(Mutex::new(Files { durable, boot })))
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

fn text(value: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(value.to_vec())
        .map_err(|_| StoreError::Checkpoint("value is not UTF-8".into()))
}

impl Store for CheckpointStore {
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let f = self.files();
        Ok(f.durable
            .entries()
            .iter()
            .map(|(k, v)| {
                let v = f.boot.get(k).unwrap_or(v);
                (k.clone(), v.clone().into_bytes())
            })
            .collect())
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if !key_ok(key) {
            return Err(StoreError::Key(key.into()));
        }
        let text = text(value)?;
        let mut f = self.files();
        f.boot.put(key, text.clone()).map_err(cp_err)?;
        if let Err(e) = f.durable.put(key, text) {
            // Take the copy back so that a restart does not see what the caller was told failed.
            let _ = match f.durable.get(key).cloned() {
                Some(old) => f.boot.put(key, old),
                None => f.boot.remove(key).map(|_| ()),
            };
            return Err(cp_err(e));
        }
        Ok(())
    }
    fn put_until_reboot(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if !key_ok(key) {
            return Err(StoreError::Key(key.into()));
        }
        let text = text(value)?;
        self.files().boot.put(key, text).map_err(cp_err)
    }
    fn remove(&self, key: &str) -> Result<(), StoreError> {
        let mut f = self.files();
        f.durable.remove(key).map_err(cp_err)?;
        f.boot.remove(key).map(|_| ()).map_err(cp_err)
    }
}

/// In-memory store (tests, benchmarks); clones share contents, so a "restart" can reuse it.
/// [`MemStore::reboot`] plays a reboot: values of `put_until_reboot` fall back to the last `put`.
#[derive(Debug, Clone, Default)]
pub struct MemStore(Arc<Mutex<MemMaps>>);

#[derive(Debug, Default)]
struct MemMaps {
    durable: BTreeMap<String, Vec<u8>>,
    boot: BTreeMap<String, Vec<u8>>,
}

impl MemStore {
    fn maps(&self) -> std::sync::MutexGuard<'_, MemMaps> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Forgets everything written with `put_until_reboot` since the last `put` of each key.
    pub fn reboot(&self) {
        self.maps().boot.clear();
    }
}

impl Store for MemStore {
    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let m = self.maps();
        Ok(m.durable
            .iter()
            .map(|(k, v)| (k.clone(), m.boot.get(k).unwrap_or(v).clone()))
            .collect())
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if !key_ok(key) {
            return Err(StoreError::Key(key.into()));
        }
        let mut m = self.maps();
        m.boot.remove(key);
        m.durable.insert(key.into(), value.to_vec());
        Ok(())
    }
    fn put_until_reboot(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if !key_ok(key) {
            return Err(StoreError::Key(key.into()));
        }
        self.maps().boot.insert(key.into(), value.to_vec());
        Ok(())
    }
    fn remove(&self, key: &str) -> Result<(), StoreError> {
        let mut m = self.maps();
        m.durable.remove(key);
        m.boot.remove(key);
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
    fn checkpoint_store_until_reboot() {
        use drakit_types::checkpoint::{BootIdSource, Options};
        let d = tempfile::tempdir().unwrap();
        let opts = |boot: &str| {
            let mut o = Options::new(d.path(), "netdev.checkpoint");
            o.boot_id = BootIdSource::Fixed(boot.into());
            o
        };
        {
            let s = CheckpointStore::open(opts("boot-1")).unwrap();
            s.put("a", b"a1").unwrap();
            s.put_until_reboot("a", b"a2").unwrap();
            s.put("b", b"b1").unwrap();
            s.put_until_reboot("b", b"b2").unwrap();
            s.put("b", b"b3").unwrap();
            s.put("c", b"c1").unwrap();
            s.put_until_reboot("c", b"c2").unwrap();
            s.remove("c").unwrap();
            assert!(s.put_until_reboot("../x", b"").is_err());
            let want = vec![("a".into(), b"a2".to_vec()), ("b".into(), b"b3".to_vec())];
            assert_eq!(s.load().unwrap(), want);
        }
        // A restart in the same boot (the process died): everything written is there.
        {
            let s = CheckpointStore::open(opts("boot-1")).unwrap();
            let want = vec![("a".into(), b"a2".to_vec()), ("b".into(), b"b3".to_vec())];
            assert_eq!(s.load().unwrap(), want);
        }
        // A reboot: back to the last durable values, and the boot file starts over.
        let s = CheckpointStore::open(opts("boot-2")).unwrap();
        let want = vec![("a".into(), b"a1".to_vec()), ("b".into(), b"b3".to_vec())];
        assert_eq!(s.load().unwrap(), want);
        drop(s);
        let s = CheckpointStore::open(opts("boot-2")).unwrap();
        assert_eq!(s.load().unwrap(), want);
    }

    #[test]
    fn checkpoint_store_drops_boot_values_of_removed_keys() {
        use drakit_types::checkpoint::{BootIdSource, Checkpoint, Options};
        let d = tempfile::tempdir().unwrap();
        let opts = || {
            let mut o = Options::new(d.path(), "netdev.checkpoint");
            o.boot_id = BootIdSource::Fixed("boot-1".into());
            o
        };
        {
            let s = CheckpointStore::open(opts()).unwrap();
            s.put("a", b"a1").unwrap();
            s.put_until_reboot("a", b"a2").unwrap();
        }
        // As if the process died between the two removes: gone from the durable file only.
        {
            let (mut cp, _) = Checkpoint::<String>::open(opts()).unwrap();
            cp.remove("a").unwrap();
        }
        let s = CheckpointStore::open(opts()).unwrap();
        assert!(s.load().unwrap().is_empty());
        s.put("a", b"a3").unwrap();
        drop(s);
        let s = CheckpointStore::open(opts()).unwrap();
        assert_eq!(s.load().unwrap(), vec![("a".into(), b"a3".to_vec())]);
    }

    #[test]
    fn mem_store_reboot() {
        let s = MemStore::default();
        s.put("a", b"1").unwrap();
        s.put_until_reboot("a", b"2").unwrap();
        assert_eq!(s.load().unwrap(), vec![("a".into(), b"2".to_vec())]);
        s.clone().reboot();
        assert_eq!(s.load().unwrap(), vec![("a".into(), b"1".to_vec())]);
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
