//! Persistence of the claim records behind a small key → value trait.
//!
//! `drakit_types::checkpoint` (the shared append-only journal) had not landed when this crate was
//! written, so [`FileStore`] is an interim implementation: the whole map in one JSON document with
//! a format version and a CRC-32, replaced atomically (temp file, fsync, rename, fsync of the
//! directory). The records are few (one per claim) and small, so a full rewrite per change costs
//! about one file creation plus two fsyncs. Switching to the shared journal means one more
//! implementation of [`StateStore`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors of a store; they name the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state store lock poisoned")]
    Poisoned,
}

/// Durable key → value storage; `put` and `delete` are durable when they return.
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

const FORMAT_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    version: u32,
    /// CRC-32 of the canonical JSON of `entries`.
    crc32: u32,
    entries: BTreeMap<String, String>,
}

/// The whole map in one atomically replaced file (interim, see the module docs).
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    map: BTreeMap<String, Vec<u8>>,
}

impl FileStore {
    /// A store at `path`; the parent directory is created (0700) if missing.
    pub fn new(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            map: BTreeMap::new(),
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        let entries: BTreeMap<String, String> = self
            .map
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let body = serde_json::to_vec(&entries).map_err(|e| self.corrupt(e.to_string()))?;
        let doc = FileDoc {
            version: FORMAT_VERSION,
            crc32: crc32fast::hash(&body),
            entries,
        };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| self.corrupt(e.to_string()))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&bytes).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            d.sync_all().map_err(|e| self.io(e))?;
        }
        Ok(())
    }
}

impl StateStore for FileStore {
    fn load(&mut self) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.map.clear();
                return Ok(BTreeMap::new());
            }
            Err(e) => return Err(self.io(e)),
        };
        let doc: FileDoc =
            serde_json::from_slice(&bytes).map_err(|e| self.corrupt(e.to_string()))?;
        if doc.version != FORMAT_VERSION {
            return Err(self.corrupt(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                doc.version
            )));
        }
        let body = serde_json::to_vec(&doc.entries).map_err(|e| self.corrupt(e.to_string()))?;
        if crc32fast::hash(&body) != doc.crc32 {
            return Err(self.corrupt("checksum mismatch"));
        }
        self.map = doc
            .entries
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        Ok(self.map.clone())
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if std::str::from_utf8(value).is_err() {
            return Err(self.corrupt(format!(
                "value for {key:?} is not UTF-8 (this store keeps text)"
            )));
        }
        let old = self.map.insert(key.to_string(), value.to_vec());
        if let Err(e) = self.flush() {
            match old {
                Some(v) => self.map.insert(key.to_string(), v),
                None => self.map.remove(key),
            };
            return Err(e);
        }
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        let Some(old) = self.map.remove(key) else {
            return Ok(());
        };
        if let Err(e) = self.flush() {
            self.map.insert(key.to_string(), old);
            return Err(e);
        }
        Ok(())
    }
}

/// Creates `dir` (and parents) and makes it 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/cpu.json");
        let mut s = FileStore::new(&path).unwrap();
        assert!(s.load().unwrap().is_empty());
        s.put("a", b"{\"x\":1}").unwrap();
        s.put("b", b"two").unwrap();
        assert!(s.put("bin", &[0xff, 0xfe]).is_err());
        s.delete("b").unwrap();
        s.delete("missing").unwrap();
        let mut again = FileStore::new(&path).unwrap();
        let map = again.load().unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["a"], b"{\"x\":1}");

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\\\"x\\\":1", "\\\"x\\\":2")).unwrap();
        let err = FileStore::new(&path).unwrap().load().unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");

        std::fs::write(&path, "not json").unwrap();
        let err = FileStore::new(&path).unwrap().load().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
