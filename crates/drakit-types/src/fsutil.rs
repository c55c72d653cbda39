//! Atomic file replacement.
//!
//! [`atomic_write`] writes the new content into a temp file in the target's directory, flushes it
//! to disk, renames it over the target and flushes the directory entry. A reader (a CDI loader,
//! a checkpoint reader) therefore sees either the old file or the complete new one, never a
//! partial file, and after a crash the new name survives only if its data does.
//!
//! Temp files are named `.<target name>.tmp.<pid>.<counter>`: the leading dot and the missing
//! `.json`/`.yaml` extension keep CDI loaders and the kubelet plugin watcher away from them.
//! [`remove_temp_files`] sweeps leftovers of a crashed writer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether writes are flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the file and its directory (the only setting for production).
    #[default]
    Fsync,
    /// Skip every fsync. For benchmarks that want to separate CPU cost from disk cost, and for
    /// files that are rebuilt from a durable record at every start (the kubelet plugin's CDI
    /// specs, rebuilt from its checkpoint): a crash may lose or (for journals) tear what was
    /// written.
    None,
}

/// The step of a file operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateDir,
    CreateTemp,
    Open,
    Write,
    SyncFile,
    Rename,
    OpenDir,
    SyncDir,
    ReadDir,
    Remove,
    Read,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::CreateDir => "create directory",
            Step::CreateTemp => "create temp file",
            Step::Open => "open",
            Step::Write => "write",
            Step::SyncFile => "fsync file",
            Step::Rename => "rename",
            Step::OpenDir => "open directory",
            Step::SyncDir => "fsync directory",
            Step::ReadDir => "list directory",
            Step::Remove => "remove",
            Step::Read => "read",
        })
    }
}

/// A filesystem error naming the path and the step.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct FsError {
    pub step: Step,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(step: Step, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            step,
            path: path.into(),
            source,
        }
    }
}

const TEMP_MARKER: &str = ".tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temp file name used for writing `target_name` (unique within this process).
fn temp_name(target_name: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{target_name}{TEMP_MARKER}{}.{n}", std::process::id())
}

/// If `name` is one of our temp names, returns `(target name, pid)`.
pub fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let idx = rest.rfind(TEMP_MARKER)?;
    let (target, tail) = (&rest[..idx], &rest[idx + TEMP_MARKER.len()..]);
    let (pid, counter) = tail.split_once('.')?;
    if target.is_empty()
        || counter.is_empty()
        || !counter.bytes().all(|b| b.is_ascii_digit())
        || pid.is_empty()
        || !pid.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((target, pid.parse().ok()?))
}

/// Whether `name` is a temp file name of ours.
pub fn is_temp_name(name: &str) -> bool {
    parse_temp_name(name).is_some()
}

/// Atomically replaces `path` with `bytes` (file mode 0644).
pub fn atomic_write(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), FsError> {
    atomic_write_with(path, 0o644, durability, |w| w.write_all(bytes))
}

/// Atomically replaces `path` with what `fill` writes, creating the file with `mode` (before
/// umask). If `fill` fails, the temp file is removed and the target is left untouched.
pub fn atomic_write_with<F>(
    path: &Path,
    mode: u32,
    durability: Durability,
    fill: F,
) -> Result<(), FsError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    atomic_write_hooked(path, mode, durability, fill, || {})
}

/// [`atomic_write_with`] that calls `before_rename` once the temp file is complete (and synced)
/// and before it is renamed over the target: the place of a crash-injection point.
pub(crate) fn atomic_write_hooked<F>(
    path: &Path,
    mode: u32,
    durability: Durability,
    fill: F,
    before_rename: impl FnOnce(),
) -> Result<(), FsError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = parent_dir(path);
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        FsError::new(
            Step::CreateTemp,
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "target has no UTF-8 file name"),
        )
    })?;
    let tmp = dir.join(temp_name(name));
    let result = write_temp(&tmp, mode, durability, fill).and_then(|()| {
        before_rename();
        fs::rename(&tmp, path).map_err(|e| FsError::new(Step::Rename, path, e))
    });
    if let Err(e) = result {
        // Best effort: the temp file must not linger; a failure here is swept by
        // remove_temp_files later.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durability == Durability::Fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

fn write_temp<F>(tmp: &Path, mode: u32, durability: Durability, fill: F) -> Result<(), FsError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| FsError::new(Step::CreateTemp, tmp, e))?;
    {
        let mut w = io::BufWriter::new(&mut file);
        fill(&mut w).map_err(|e| FsError::new(Step::Write, tmp, e))?;
        w.flush().map_err(|e| FsError::new(Step::Write, tmp, e))?;
    }
    if durability == Durability::Fsync {
        file.sync_all()
            .map_err(|e| FsError::new(Step::SyncFile, tmp, e))?;
    }
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes a directory's entries (after a create, rename or unlink in it).
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    let d = File::open(dir).map_err(|e| FsError::new(Step::OpenDir, dir, e))?;
    d.sync_all()
        .map_err(|e| FsError::new(Step::SyncDir, dir, e))
}

/// Creates `dir` and its parents with `mode` for the created components (before umask).
pub fn create_dir_all(dir: &Path, mode: u32) -> Result<(), FsError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| FsError::new(Step::CreateDir, dir, e))
}

/// Like [`create_dir_all`], and if `dir` did not exist, flushes its parent's entry so that the
/// new directory survives a crash together with what is written into it.
pub fn create_dir_durable(dir: &Path, mode: u32, durability: Durability) -> Result<(), FsError> {
    if dir.is_dir() {
        return Ok(());
    }
    create_dir_all(dir, mode)?;
    if durability == Durability::Fsync {
        sync_dir(parent_dir(dir))?;
    }
    Ok(())
}

/// Removes our leftover temp files in `dir` whose target name starts with `target_prefix`
/// (`""` for all of ours). Temp files of the running process are kept: they may belong to a
/// write in progress. A missing directory counts as empty. Returns the removed paths.
pub fn remove_temp_files(dir: &Path, target_prefix: &str) -> Result<Vec<PathBuf>, FsError> {
    remove_temp_files_matching(dir, |target| target.starts_with(target_prefix))
}

/// Like [`remove_temp_files`], for temp files whose target name satisfies `wanted`.
pub fn remove_temp_files_matching(
    dir: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>, FsError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new(Step::ReadDir, dir, e)),
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| FsError::new(Step::ReadDir, dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((target, pid)) = parse_temp_name(name) else {
            continue;
        };
        if pid == me || !wanted(target) {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FsError::new(Step::Remove, path, e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_parse() {
        let n = temp_name("a-b_c.json");
        let (t, pid) = parse_temp_name(&n).unwrap();
        assert_eq!(t, "a-b_c.json");
        assert_eq!(pid, std::process::id());
        assert!(!is_temp_name("a.json"));
        assert!(!is_temp_name(".a.tmp.x.1"));
        assert!(!is_temp_name(".a.tmp.1."));
        assert!(!is_temp_name("..tmp.1.2"));
        assert!(is_temp_name(".a.tmp.b.tmp.1.2"));
    }

    #[test]
    fn write_replaces_and_syncs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        atomic_write(&p, b"one", Durability::Fsync).unwrap();
        atomic_write(&p, b"two", Durability::None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
