//! The checkpoint format shared by all drakit daemons: a durable key → value map.
//!
//! # Why a journal
//!
//! A prepare must be durable before it succeeds. Replacing a whole snapshot file per change costs
//! a file creation (~0.5 ms on the reference disks) plus two fsyncs; appending one record to a
//! long-lived file costs one `write` plus one `fdatasync` (~0.13 ms). So the checkpoint is an
//! append-only journal of checksummed records, compacted now and then into a fresh snapshot by
//! atomic replace (see the crate README for the measured numbers).
//!
//! # File layout (format version 1, all integers little-endian)
//!
//! ```text
//! header:  magic "DRAKITCK" (8) | format version u32 | boot-id length u16 | boot id (UTF-8)
//!          | CRC-32 of everything before it u32
//! record:  payload length u32 (> 0) | CRC-32 of payload u32 | payload (JSON)
//! payload: {"put":[key, value]} or {"del":key}
//! ```
//!
//! The header carries the boot ID of the boot that wrote the file; opening the checkpoint after
//! a reboot reports the change and rewrites the file with the current boot ID.
//!
//! # Loading
//!
//! - A record cut short at the end of the file (crash in the middle of an append: a short
//!   length/payload, a checksum mismatch of the last record, or a zero-filled tail) is dropped,
//!   the file is truncated to the last good record and the report says so.
//! - Anything else (wrong magic, bad header checksum, a newer or unknown format version, a bad
//!   checksum before the last record, a payload that does not parse) moves the file aside to
//!   `<name>.corrupt-<unix seconds>` and starts empty; the report says why and where the file
//!   went. Opening never fails because of the file's *content*, only because of I/O errors.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::fsutil::Durability;
use crate::fsutil::{self, FsError, Step};

/// Magic bytes at the start of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"DRAKITCK";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest accepted record payload (a sanity bound when reading a damaged file).
pub const MAX_RECORD_LEN: u32 = 64 << 20;
/// Longest accepted boot ID.
const MAX_BOOT_ID_LEN: usize = 256;
const RECORD_HEADER_LEN: usize = 8;

/// Errors of the checkpoint: only I/O and serialisation, never the file's content (see
/// [`LoadReport`] for that).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint: {0}")]
    Fs(#[from] FsError),
    #[error("checkpoint {}: cannot read boot ID from {}: {source}", path.display(), boot_id_path.display())]
    BootId {
        path: PathBuf,
        boot_id_path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint {} is in use by another process (lock {} held)", path.display(), lock.display())]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("checkpoint {}: boot ID {boot_id:?} is empty or too long", path.display())]
    BadBootId { path: PathBuf, boot_id: String },
    #[error("checkpoint {}: cannot encode the value of key {key:?}: {source}", path.display())]
    Encode {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("checkpoint {}: record of key {key:?} is {len} bytes, above the {MAX_RECORD_LEN}-byte limit", path.display())]
    TooLarge {
        path: PathBuf,
        key: String,
        len: usize,
    },
}

/// Where the current boot ID comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootIdSource {
    /// `<proc root>/sys/kernel/random/boot_id` (production: `/proc`).
    ProcRoot(PathBuf),
    /// A fixed value (tests, benchmarks).
    Fixed(String),
}

impl BootIdSource {
    /// Reads the boot ID (trimmed).
    pub fn read(&self) -> io::Result<String> {
        match self {
            BootIdSource::Fixed(s) => Ok(s.clone()),
            BootIdSource::ProcRoot(root) => {
                Ok(fs::read_to_string(boot_id_path(root))?.trim().to_string())
            }
        }
    }
}

/// The boot ID file under a procfs root.
pub fn boot_id_path(proc_root: &Path) -> PathBuf {
    proc_root.join("sys/kernel/random/boot_id")
}

/// How to open a checkpoint.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory of the checkpoint file (created with mode 0700 if missing).
    pub dir: PathBuf,
    /// File name inside `dir`, e.g. `netdev.checkpoint`.
    pub name: String,
    /// Where the current boot ID comes from.
    pub boot_id: BootIdSource,
    /// fsync policy ([`Durability::None`] only for benchmarks).
    pub durability: Durability,
    /// Compact when the journal holds more than this many records beyond the live keys
    /// (at least this many, and more than twice the live key count).
    pub compact_after: usize,
}

impl Options {
    /// Production defaults: boot ID from `/proc`, fsync on, compaction after 1,000 records.
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            name: name.into(),
            boot_id: BootIdSource::ProcRoot(PathBuf::from(crate::constants::PROC_ROOT)),
            durability: Durability::Fsync,
            compact_after: 1000,
        }
    }

    /// The checkpoint file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

/// A dropped, partially written last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first dropped byte (the file was truncated there).
    pub offset: u64,
    /// Number of bytes dropped.
    pub dropped_bytes: u64,
}

/// A corrupt file that was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// What was wrong, in words fit for a log line.
    pub reason: String,
    /// Where the file now is.
    pub moved_to: PathBuf,
}

/// What opening the checkpoint found. Log [`LoadReport::warnings`]; decide on
/// [`LoadReport::boot_changed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The checkpoint file.
    pub path: PathBuf,
    /// No usable file existed (first start, or after moving a corrupt one aside).
    pub created: bool,
    /// Records replayed.
    pub records: usize,
    /// Live keys after replay.
    pub keys: usize,
    /// A torn last record that was dropped.
    pub torn_tail: Option<TornTail>,
    /// A corrupt file that was moved aside (state starts empty).
    pub corruption: Option<Corruption>,
    /// Boot ID stored in the file (None if there was no usable file).
    pub previous_boot_id: Option<String>,
    /// The current boot ID.
    pub boot_id: String,
    /// The file was written during another boot than the current one.
    pub boot_changed: bool,
    /// Leftover temp files (of an interrupted compaction) that were removed.
    pub removed_temp_files: Vec<PathBuf>,
}

impl LoadReport {
    /// Human-readable warnings (empty when all was well).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(t) = &self.torn_tail {
            w.push(format!(
                "checkpoint {}: dropped a torn last record ({} bytes at offset {}), probably a crash during a write",
                self.path.display(),
                t.dropped_bytes,
                t.offset
            ));
        }
        if let Some(c) = &self.corruption {
            w.push(format!(
                "checkpoint {} is corrupt ({}); moved it to {} and started with an empty state",
                self.path.display(),
                c.reason,
                c.moved_to.display()
            ));
        }
        if self.boot_changed {
            w.push(format!(
                "checkpoint {} was written during boot {}, the node now runs boot {}",
                self.path.display(),
                self.previous_boot_id.as_deref().unwrap_or("?"),
                self.boot_id
            ));
        }
        w
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
enum Record<V> {
    #[serde(rename = "put")]
    Put(String, V),
    #[serde(rename = "del")]
    Del(String),
}

#[derive(Serialize)]
enum RecordRef<'a, V> {
    #[serde(rename = "put")]
    Put(&'a str, &'a V),
    #[serde(rename = "del")]
    Del(&'a str),
}

/// A durable key → value map backed by a journal file. Not thread-safe by itself: wrap it in a
/// mutex. Every mutating call is durable (with [`Durability::Fsync`]) when it returns `Ok`.
#[derive(Debug)]
pub struct Checkpoint<V> {
    path: PathBuf,
    opts: Options,
    boot_id: String,
    map: BTreeMap<String, V>,
    file: File,
    /// Length of the valid journal (header + complete records).
    len: u64,
    /// Records in the journal.
    records: usize,
    /// An append failed and could not be undone: rewrite before the next append.
    needs_rewrite: bool,
    /// Exclusive advisory lock on `<name>.lock`, held for the checkpoint's lifetime (none when
    /// opened with [`Checkpoint::open_shared`]).
    _lock: Option<nix::fcntl::Flock<File>>,
}

/// Flushes a checkpoint's journal from another thread (see [`Checkpoint::syncer`]).
#[derive(Debug)]
pub struct Syncer {
    file: File,
    path: PathBuf,
    durability: Durability,
}

impl Syncer {
    /// `fdatasync` of everything written to the journal before this call (a no-op with
    /// [`Durability::None`]). A journal compacted since the handle was taken was written
    /// durably by the compaction; flushing the old file then is harmless.
    pub fn sync(&self) -> Result<(), CheckpointError> {
        if self.durability == Durability::Fsync {
            self.file
                .sync_data()
                .map_err(|e| FsError::new(Step::SyncFile, &self.path, e))?;
        }
        Ok(())
    }
}

/// What [`Checkpoint::refresh`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The file is as this handle left it.
    Unchanged,
    /// Another process appended these many records; they were applied.
    Appended { records: usize },
    /// Another process replaced the file (compaction, repair): it was read again as a whole.
    /// A torn tail was cut off, a corrupt file moved aside (the state is then empty), as on open.
    Reloaded {
        records: usize,
        torn_tail: Option<TornTail>,
        corruption: Option<Corruption>,
    },
}

impl<V: Serialize + DeserializeOwned> Checkpoint<V> {
    /// Opens (or creates) the checkpoint. Fails only on I/O errors or an unreadable boot ID;
    /// content problems are repaired and described in the report.
    pub fn open(opts: Options) -> Result<(Self, LoadReport), CheckpointError> {
        Self::open_inner(opts, true)
    }

    /// Like [`Checkpoint::open`], for a file that several processes take turns at: the old and
    /// the new instance of a daemon side by side during a rolling update with surge. No lock is
    /// taken; the caller serializes across processes with its own lock, holds it around `open`
    /// and every mutation, and calls [`Checkpoint::refresh`] each time it acquires it.
    pub fn open_shared(opts: Options) -> Result<(Self, LoadReport), CheckpointError> {
        Self::open_inner(opts, false)
    }

    fn open_inner(opts: Options, exclusive: bool) -> Result<(Self, LoadReport), CheckpointError> {
        let path = opts.path();
        let boot_id = opts
            .boot_id
            .read()
            .map_err(|source| CheckpointError::BootId {
                path: path.clone(),
                boot_id_path: match &opts.boot_id {
                    BootIdSource::ProcRoot(r) => boot_id_path(r),
                    BootIdSource::Fixed(_) => PathBuf::new(),
                },
                source,
            })?;
        if boot_id.is_empty() || boot_id.len() > MAX_BOOT_ID_LEN {
            return Err(CheckpointError::BadBootId { path, boot_id });
        }
        fsutil::create_dir_durable(&opts.dir, 0o700, opts.durability)?;
        let lock = if exclusive {
            Some(lock_file(
                &opts.dir.join(format!("{}.lock", opts.name)),
                &path,
            )?)
        } else {
            None
        };
        let removed_temp_files =
            fsutil::remove_temp_files_matching(&opts.dir, |target| target == opts.name)?;

        let mut report = LoadReport {
            path: path.clone(),
            created: false,
            records: 0,
            keys: 0,
            torn_tail: None,
            corruption: None,
            previous_boot_id: None,
            boot_id: boot_id.clone(),
            boot_changed: false,
            removed_temp_files,
        };

        let bytes = match fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(FsError::new(Step::Read, &path, e).into()),
        };

        let mut map = BTreeMap::new();
        let mut valid_len = 0u64;
        let mut records = 0usize;
        let mut rewrite = true;
        if let Some(bytes) = bytes {
            match parse::<V>(&bytes) {
                Ok(parsed) => {
                    report.previous_boot_id = Some(parsed.boot_id.clone());
                    report.boot_changed = parsed.boot_id != boot_id;
                    report.records = parsed.records;
                    if parsed.valid_len < bytes.len() {
                        report.torn_tail = Some(TornTail {
                            offset: parsed.valid_len as u64,
                            dropped_bytes: (bytes.len() - parsed.valid_len) as u64,
                        });
                    }
                    map = parsed.map;
                    valid_len = parsed.valid_len as u64;
                    records = parsed.records;
                    // The header must carry the current boot ID: rewrite after a reboot.
                    rewrite = report.boot_changed;
                }
                Err(reason) => {
                    let moved_to = move_aside(&path)?;
                    report.corruption = Some(Corruption { reason, moved_to });
                    report.created = true;
                }
            }
        } else {
            report.created = true;
        }
        report.keys = map.len();

        let file = if rewrite {
            let (file, len) = write_snapshot(&path, &boot_id, &map, opts.durability)?;
            valid_len = len;
            records = map.len();
            file
        } else {
            let file = open_append(&path)?;
            if report.torn_tail.is_some() {
                file.set_len(valid_len)
                    .map_err(|e| FsError::new(Step::Write, &path, e))?;
                if opts.durability == Durability::Fsync {
                    file.sync_data()
                        .map_err(|e| FsError::new(Step::SyncFile, &path, e))?;
                }
            }
            file
        };

        let cp = Checkpoint {
            path,
            opts,
            boot_id,
            map,
            file,
            len: valid_len,
            records,
            needs_rewrite: false,
            _lock: lock,
        };
        Ok((cp, report))
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fsync policy the checkpoint was opened with.
    pub fn durability(&self) -> Durability {
        self.opts.durability
    }

    /// The current boot ID (as written in the file's header).
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    /// All entries, ordered by key.
    pub fn entries(&self) -> &BTreeMap<String, V> {
        &self.map
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records currently in the journal (snapshot + appended).
    pub fn journal_records(&self) -> usize {
        self.records
    }

    /// Stores `value` under `key`, durably.
    pub fn put(&mut self, key: &str, value: V) -> Result<(), CheckpointError> {
        let payload = self.encode(key, &RecordRef::Put(key, &value))?;
        self.append(&payload)?;
        self.map.insert(key.to_string(), value);
        self.maybe_compact()
    }

    /// Removes `key`, durably. Returns the old value; removing a missing key writes nothing.
    pub fn remove(&mut self, key: &str) -> Result<Option<V>, CheckpointError> {
        if !self.map.contains_key(key) {
            return Ok(None);
        }
        let payload = self.encode(key, &RecordRef::<V>::Del(key))?;
        self.append(&payload)?;
        let old = self.map.remove(key);
        self.maybe_compact()?;
        Ok(old)
    }

    /// Like [`Checkpoint::remove`], but the record is only written, not `fdatasync`'d: it
    /// survives a crash of the process (the write is in the kernel's page cache) but not a power
    /// loss until the file's next flush — [`Syncer::sync`] from any thread, or the next durable
    /// `put`/`remove`, whose `fdatasync` covers every record before it. For a change the caller
    /// can repair after a reboot and whose latency matters (see the kubelet plugin's unprepare).
    pub fn remove_deferred(&mut self, key: &str) -> Result<Option<V>, CheckpointError> {
        if !self.map.contains_key(key) {
            return Ok(None);
        }
        let payload = self.encode(key, &RecordRef::<V>::Del(key))?;
        self.append_with(&payload, false)?;
        let old = self.map.remove(key);
        self.maybe_compact()?;
        Ok(old)
    }

    /// A handle that flushes what has been written to the journal so far, usable from another
    /// thread while this checkpoint goes on (it holds its own descriptor of the file).
    pub fn syncer(&self) -> Result<Syncer, CheckpointError> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| FsError::new(Step::Open, &self.path, e))?;
        Ok(Syncer {
            file,
            path: self.path.clone(),
            durability: self.opts.durability,
        })
    }

    /// Rewrites the journal as a snapshot of the current map (atomic replace).
    pub fn compact(&mut self) -> Result<(), CheckpointError> {
        let (file, len) =
            write_snapshot(&self.path, &self.boot_id, &self.map, self.opts.durability)?;
        self.file = file;
        self.len = len;
        self.records = self.map.len();
        self.needs_rewrite = false;
        Ok(())
    }

    /// Picks up what another process did to the file since this handle last touched it (see
    /// [`Checkpoint::open_shared`]; call it with the cross-process lock held). Records appended
    /// to the same file are applied; a replaced file (the other process compacted it) is read
    /// again as a whole. A torn last record, which only a writer that died mid-append leaves, is
    /// cut off so that the next append does not follow it.
    pub fn refresh(&mut self) -> Result<Refreshed, CheckpointError> {
        use std::os::unix::fs::MetadataExt;
        let on_disk = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Nobody removes the file; if it is gone, write it again from what we hold.
                self.needs_rewrite = true;
                return Ok(Refreshed::Unchanged);
            }
            Err(e) => return Err(FsError::new(Step::Read, &self.path, e).into()),
        };
        let ours = self
            .file
            .metadata()
            .map_err(|e| FsError::new(Step::Read, &self.path, e))?;
        // The open handle keeps our inode allocated, so an equal number is the same file.
        let same_file = on_disk.dev() == ours.dev() && on_disk.ino() == ours.ino();
        if same_file && on_disk.len() == self.len && !self.needs_rewrite {
            return Ok(Refreshed::Unchanged);
        }
        let bytes = fs::read(&self.path).map_err(|e| FsError::new(Step::Read, &self.path, e))?;
        if same_file && bytes.len() as u64 > self.len {
            let start = self.len as usize;
            let mut map = std::mem::take(&mut self.map);
            let parsed = parse_records::<V>(&bytes, start, self.records, &mut map);
            self.map = map;
            if let Ok((valid_len, records)) = parsed {
                let appended = records - self.records;
                self.records = records;
                self.len = valid_len as u64;
                if valid_len < bytes.len() {
                    self.cut_torn_tail()?;
                }
                return Ok(Refreshed::Appended { records: appended });
            }
            // Garbage after good records: read the whole file again (moves it aside).
        }
        self.reload(&bytes)
    }

    /// Reads the whole file again after another process replaced or damaged it.
    fn reload(&mut self, bytes: &[u8]) -> Result<Refreshed, CheckpointError> {
        match parse::<V>(bytes) {
            Ok(parsed) => {
                let torn_tail = (parsed.valid_len < bytes.len()).then(|| TornTail {
                    offset: parsed.valid_len as u64,
                    dropped_bytes: (bytes.len() - parsed.valid_len) as u64,
                });
                self.map = parsed.map;
                self.records = parsed.records;
                self.len = parsed.valid_len as u64;
                self.file = open_append(&self.path)?;
                self.needs_rewrite = false;
                if torn_tail.is_some() {
                    self.cut_torn_tail()?;
                }
                Ok(Refreshed::Reloaded {
                    records: parsed.records,
                    torn_tail,
                    corruption: None,
                })
            }
            Err(reason) => {
                let moved_to = move_aside(&self.path)?;
                self.map.clear();
                self.compact()?;
                Ok(Refreshed::Reloaded {
                    records: 0,
                    torn_tail: None,
                    corruption: Some(Corruption { reason, moved_to }),
                })
            }
        }
    }

    /// Truncates the file to the valid length (durably with [`Durability::Fsync`]).
    fn cut_torn_tail(&mut self) -> Result<(), CheckpointError> {
        self.file
            .set_len(self.len)
            .map_err(|e| FsError::new(Step::Write, &self.path, e))?;
        if self.opts.durability == Durability::Fsync {
            self.file
                .sync_data()
                .map_err(|e| FsError::new(Step::SyncFile, &self.path, e))?;
        }
        Ok(())
    }

    fn encode(&self, key: &str, rec: &RecordRef<'_, V>) -> Result<Vec<u8>, CheckpointError> {
        let mut buf = vec![0u8; RECORD_HEADER_LEN];
        serde_json::to_writer(&mut buf, rec).map_err(|source| CheckpointError::Encode {
            path: self.path.clone(),
            key: key.to_string(),
            source,
        })?;
        let len = buf.len() - RECORD_HEADER_LEN;
        let len32 = u32::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_RECORD_LEN)
            .ok_or_else(|| CheckpointError::TooLarge {
                path: self.path.clone(),
                key: key.to_string(),
                len,
            })?;
        let crc = crc32fast::hash(&buf[RECORD_HEADER_LEN..]);
        buf[0..4].copy_from_slice(&len32.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        Ok(buf)
    }

    fn append(&mut self, record: &[u8]) -> Result<(), CheckpointError> {
        self.append_with(record, true)
    }

    fn append_with(&mut self, record: &[u8], sync: bool) -> Result<(), CheckpointError> {
        if self.needs_rewrite {
            self.compact()?;
        }
        let res = self
            .file
            .write_all(record)
            .map_err(|e| FsError::new(Step::Write, &self.path, e))
            .and_then(|()| match self.opts.durability {
                Durability::Fsync if sync => self
                    .file
                    .sync_data()
                    .map_err(|e| FsError::new(Step::SyncFile, &self.path, e)),
                _ => Ok(()),
            });
        match res {
            Ok(()) => {
                self.len += record.len() as u64;
                self.records += 1;
                Ok(())
            }
            Err(e) => {
                // Cut off whatever part of the record reached the file so the next append
                // does not follow garbage; if even that fails, rewrite before the next append.
                if self.file.set_len(self.len).is_err() {
                    self.needs_rewrite = true;
                }
                Err(e.into())
            }
        }
    }

    fn maybe_compact(&mut self) -> Result<(), CheckpointError> {
        let limit = self
            .opts
            .compact_after
            .max(1)
            .max(self.map.len().saturating_mul(2));
        if self.records > limit {
            self.compact()?;
        }
        Ok(())
    }
}

/// Takes an exclusive, non-blocking flock on the lock file (never deleted: removing lock files
/// races). A second process (e.g. the next instance during a rolling update) gets `Locked` and
/// may retry once the first one exits.
fn lock_file(lock: &Path, path: &Path) -> Result<nix::fcntl::Flock<File>, CheckpointError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock)
        .map_err(|e| FsError::new(Step::Open, lock, e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            CheckpointError::Locked {
                path: path.to_path_buf(),
                lock: lock.to_path_buf(),
            }
        } else {
            FsError::new(Step::Open, lock, io::Error::from(errno)).into()
        }
    })
}

fn open_append(path: &Path) -> Result<File, CheckpointError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| FsError::new(Step::Open, path, e).into())
}

fn header_bytes(boot_id: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(18 + boot_id.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    // The boot ID length was checked against MAX_BOOT_ID_LEN (< u16::MAX) on open.
    h.extend_from_slice(&(boot_id.len() as u16).to_le_bytes());
    h.extend_from_slice(boot_id.as_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

fn write_snapshot<V: Serialize>(
    path: &Path,
    boot_id: &str,
    map: &BTreeMap<String, V>,
    durability: Durability,
) -> Result<(File, u64), CheckpointError> {
    let mut out = header_bytes(boot_id);
    for (k, v) in map {
        let start = out.len();
        out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        serde_json::to_writer(&mut out, &RecordRef::Put(k, v)).map_err(|source| {
            CheckpointError::Encode {
                path: path.to_path_buf(),
                key: k.clone(),
                source,
            }
        })?;
        let len = out.len() - start - RECORD_HEADER_LEN;
        let len32 = u32::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_RECORD_LEN)
            .ok_or_else(|| CheckpointError::TooLarge {
                path: path.to_path_buf(),
                key: k.clone(),
                len,
            })?;
        let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
        out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    fsutil::atomic_write_with(path, 0o600, durability, |w| w.write_all(&out))?;
    let file = open_append(path)?;
    Ok((file, out.len() as u64))
}

/// Moves a corrupt file to `<name>.corrupt-<unix seconds>[.<n>]`.
fn move_aside(path: &Path) -> Result<PathBuf, CheckpointError> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{}.corrupt-{ts}", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    fs::rename(path, &target).map_err(|e| FsError::new(Step::Rename, path, e))?;
    Ok(target)
}

struct Parsed<V> {
    boot_id: String,
    map: BTreeMap<String, V>,
    records: usize,
    valid_len: usize,
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses a whole checkpoint file. `Err` carries the reason the file is corrupt.
fn parse<V: DeserializeOwned>(b: &[u8]) -> Result<Parsed<V>, String> {
    if b.len() < MAGIC.len() || &b[..MAGIC.len()] != MAGIC {
        return Err("wrong magic: not a drakit checkpoint".to_string());
    }
    let version = read_u32(b, 8).ok_or("header cut short")?;
    // Checked before anything else of the header: a newer version may lay it out differently.
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
        ));
    }
    let id_len = b
        .get(12..14)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
        .ok_or("header cut short")?;
    let hdr_end = 14 + id_len;
    let stored_crc = read_u32(b, hdr_end).ok_or("header cut short")?;
    if crc32fast::hash(&b[..hdr_end]) != stored_crc {
        return Err("header checksum mismatch".to_string());
    }
    let boot_id = std::str::from_utf8(&b[14..hdr_end])
        .map_err(|_| "boot ID in the header is not UTF-8".to_string())?
        .to_string();

    let mut map = BTreeMap::new();
    let (valid_len, records) = parse_records(b, hdr_end + 4, 0, &mut map)?;
    Ok(Parsed {
        boot_id,
        map,
        records,
        valid_len,
    })
}

/// Applies the records of `b` from offset `pos` on to `map`; `records` counts those before
/// `pos`. Returns the end of the last good record and the record count, or why the file is
/// corrupt. A damaged last record (a torn append) ends the valid part without an error.
fn parse_records<V: DeserializeOwned>(
    b: &[u8],
    mut pos: usize,
    mut records: usize,
    map: &mut BTreeMap<String, V>,
) -> Result<(usize, usize), String> {
    while pos < b.len() {
        let rest = &b[pos..];
        let bad = |what: String| -> Result<(), String> {
            // A damaged record that reaches the end of the file, or a zero-filled tail, is a
            // write cut short by a crash; anything followed by more data is corruption.
            if rest.iter().all(|&x| x == 0) {
                Ok(())
            } else {
                Err(format!("record {} at offset {pos}: {what}", records + 1))
            }
        };
        if rest.len() < RECORD_HEADER_LEN {
            break; // torn: the record header itself was cut short
        }
        let len = read_u32(rest, 0).ok_or("unreachable")? as usize;
        let crc = read_u32(rest, 4).ok_or("unreachable")?;
        if len == 0 || len > MAX_RECORD_LEN as usize {
            bad(format!("invalid length {len}"))?;
            break;
        }
        let end = RECORD_HEADER_LEN + len;
        if end > rest.len() {
            break; // torn: the payload was cut short
        }
        let payload = &rest[RECORD_HEADER_LEN..end];
        if crc32fast::hash(payload) != crc {
            // The last record with a bad checksum is a torn write.
            if end != rest.len() {
                bad("checksum mismatch".to_string())?;
            }
            break;
        }
        match serde_json::from_slice::<Record<V>>(payload) {
            Ok(Record::Put(k, v)) => {
                map.insert(k, v);
            }
            Ok(Record::Del(k)) => {
                map.remove(&k);
            }
            Err(e) => {
                return Err(format!(
                    "record {} at offset {pos}: payload does not parse: {e}",
                    records + 1
                ));
            }
        }
        records += 1;
        pos += end;
    }
    Ok((pos.min(b.len()), records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_never_panics_on_prefixes_and_flips() {
        let mut b = header_bytes("boot");
        for i in 0..3 {
            let payload = format!("{{\"put\":[\"k{i}\",{i}]}}");
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            b.extend_from_slice(&crc32fast::hash(payload.as_bytes()).to_le_bytes());
            b.extend_from_slice(payload.as_bytes());
        }
        let full = parse::<u32>(&b).unwrap();
        assert_eq!(full.map.len(), 3);
        assert_eq!(full.valid_len, b.len());
        for cut in 0..b.len() {
            let _ = parse::<u32>(&b[..cut]);
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x55;
            let _ = parse::<u32>(&c);
        }
    }
}
