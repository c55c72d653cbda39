//! The checkpoint journal: round trips, torn tails, corruption moved aside, boot-ID changes,
//! compaction, and crash-at-any-byte consistency.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use drakit_types::checkpoint::{
    BootIdSource, Checkpoint, Durability, FORMAT_VERSION, LoadReport, MAGIC, Options,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Claim {
    devices: Vec<String>,
    pods: Vec<String>,
}

fn claim(n: usize) -> Claim {
    Claim {
        devices: vec![format!("eth{n}")],
        pods: vec![format!("pod-{n}")],
    }
}

fn opts(dir: &Path, boot: &str) -> Options {
    Options {
        dir: dir.to_path_buf(),
        name: "netdev.checkpoint".into(),
        boot_id: BootIdSource::Fixed(boot.into()),
        durability: Durability::Fsync,
        compact_after: 1000,
    }
}

fn open(dir: &Path) -> (Checkpoint<Claim>, LoadReport) {
    Checkpoint::open(opts(dir, "boot-1")).unwrap()
}

fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect()
}

/// A record in the documented layout.
fn record(payload: &str) -> Vec<u8> {
    let mut r = (payload.len() as u32).to_le_bytes().to_vec();
    r.extend_from_slice(&crc32fast::hash(payload.as_bytes()).to_le_bytes());
    r.extend_from_slice(payload.as_bytes());
    r
}

fn header(version: u32, boot: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&(boot.len() as u16).to_le_bytes());
    h.extend_from_slice(boot.as_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

#[test]
fn round_trip_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state"); // created by open
    {
        let (mut cp, r) = open(&state);
        assert!(r.created && r.warnings().is_empty(), "{r:?}");
        for i in 0..5 {
            cp.put(&format!("claim-{i}"), claim(i)).unwrap();
        }
        cp.put("claim-1", claim(11)).unwrap();
        assert_eq!(cp.remove("claim-2").unwrap(), Some(claim(2)));
        assert_eq!(cp.remove("claim-2").unwrap(), None);
        assert_eq!(cp.journal_records(), 7);
    }
    let (cp, r) = open(&state);
    assert!(!r.created && r.warnings().is_empty(), "{r:?}");
    assert_eq!(r.records, 7);
    assert_eq!(r.keys, 4);
    assert_eq!(cp.get("claim-1"), Some(&claim(11)));
    assert_eq!(cp.get("claim-2"), None);
    assert_eq!(
        cp.entries().keys().cloned().collect::<Vec<_>>(),
        vec!["claim-0", "claim-1", "claim-3", "claim-4"]
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(cp.path()).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn torn_tail_is_dropped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let path = {
        let (mut cp, _) = open(tmp.path());
        cp.put("a", claim(1)).unwrap();
        cp.put("b", claim(2)).unwrap();
        cp.path().to_path_buf()
    };
    let good_len = fs::metadata(&path).unwrap().len();
    let full = record(r#"{"put":["c",{"devices":["x"],"pods":[]}]}"#);
    for tail in [
        full[..3].to_vec(),              // record header cut short
        full[..full.len() - 5].to_vec(), // payload cut short
        vec![0u8; 64],                   // size grew, data never arrived
        {
            let mut t = full.clone(); // complete but garbled last record
            let n = t.len();
            t[n - 2] ^= 0xff;
            t
        },
    ] {
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(good_len as usize);
        bytes.extend_from_slice(&tail);
        fs::write(&path, &bytes).unwrap();
        let (mut cp, r) = open(tmp.path());
        let torn = r.torn_tail.clone().expect("torn tail reported");
        assert_eq!(torn.offset, good_len);
        assert_eq!(torn.dropped_bytes, tail.len() as u64);
        assert!(r.corruption.is_none());
        assert_eq!(r.warnings().len(), 1);
        assert!(r.warnings()[0].contains("torn"), "{:?}", r.warnings());
        assert_eq!(cp.len(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len, "truncated");
        // Appending after the repair yields a clean file.
        cp.put("c", claim(3)).unwrap();
        cp.remove("c").unwrap();
        drop(cp);
        let (cp, r) = open(tmp.path());
        assert!(r.warnings().is_empty(), "{r:?}");
        assert_eq!(cp.len(), 2);
        fs::write(&path, &fs::read(&path).unwrap()[..good_len as usize]).unwrap();
    }
    assert!(corrupt_files(tmp.path()).is_empty());
}

fn assert_moved_aside(dir: &Path, bytes: &[u8], reason: &str) {
    let path = dir.join("netdev.checkpoint");
    fs::write(&path, bytes).unwrap();
    let before = corrupt_files(dir).len();
    let (mut cp, r) = open(dir);
    let c = r.corruption.clone().expect("corruption reported");
    assert!(c.reason.contains(reason), "{:?} lacks {reason:?}", c.reason);
    assert!(r.created);
    assert!(cp.is_empty());
    assert_eq!(fs::read(&c.moved_to).unwrap(), bytes, "original kept aside");
    assert!(
        c.moved_to
            .to_string_lossy()
            .contains("netdev.checkpoint.corrupt-")
    );
    assert_eq!(corrupt_files(dir).len(), before + 1);
    let w = r.warnings().join("\n");
    assert!(
        w.contains("corrupt") && w.contains(&c.moved_to.display().to_string()),
        "{w}"
    );
    // The fresh checkpoint works and reopens clean.
    cp.put("x", claim(9)).unwrap();
    drop(cp);
    let (cp, r) = open(dir);
    assert!(r.warnings().is_empty(), "{r:?}");
    assert_eq!(cp.get("x"), Some(&claim(9)));
}

#[test]
fn corruption_is_moved_aside_with_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let r1 = record(r#"{"put":["a",{"devices":[],"pods":[]}]}"#);
    let r2 = record(r#"{"put":["b",{"devices":[],"pods":[]}]}"#);
    let r3 = record(r#"{"del":"a"}"#);
    let good: Vec<u8> = [
        header(FORMAT_VERSION, "boot-1"),
        r1.clone(),
        r2.clone(),
        r3.clone(),
    ]
    .concat();
    // Sanity: the hand-made file is accepted.
    fs::write(d.join("netdev.checkpoint"), &good).unwrap();
    let (cp, r) = open(d);
    assert!(r.warnings().is_empty(), "{r:?}");
    assert_eq!(cp.entries().keys().collect::<Vec<_>>(), vec!["b"]);
    drop(cp);

    // A bad checksum in the middle.
    let mut mid = good.clone();
    let at = header(FORMAT_VERSION, "boot-1").len() + r1.len() + 12;
    mid[at] ^= 0x20;
    assert_moved_aside(d, &mid, "checksum mismatch");
    // Wrong magic.
    let mut magic = good.clone();
    magic[0] = b'X';
    assert_moved_aside(d, &magic, "magic");
    assert_moved_aside(d, b"", "magic");
    // Bad header checksum (a flipped boot-ID byte).
    let mut hdr = good.clone();
    hdr[15] ^= 1;
    assert_moved_aside(d, &hdr, "header checksum");
    // A header cut short.
    assert_moved_aside(d, &good[..12], "header");
    // A newer format version.
    let future: Vec<u8> = [header(FORMAT_VERSION + 1, "boot-1"), r1.clone()].concat();
    assert_moved_aside(d, &future, "format version 2");
    // A payload with a good checksum that does not parse as a record of this value type.
    let bad_payload: Vec<u8> = [
        header(FORMAT_VERSION, "boot-1"),
        record(r#"{"put":["a",{"devices":"eth0"}]}"#),
        r2.clone(),
    ]
    .concat();
    assert_moved_aside(d, &bad_payload, "does not parse");
    // An impossible length in the middle.
    let mut bad_len = [
        header(FORMAT_VERSION, "boot-1"),
        vec![0, 0, 0, 0, 1, 2, 3, 4],
        r2,
    ]
    .concat();
    bad_len.extend_from_slice(&r3);
    assert_moved_aside(d, &bad_len, "invalid length 0");
}

#[test]
fn boot_id_change_is_reported_once_and_state_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let proc_root = tmp.path().join("proc");
    fs::create_dir_all(proc_root.join("sys/kernel/random")).unwrap();
    let boot_file = proc_root.join("sys/kernel/random/boot_id");
    fs::write(&boot_file, "11111111-aaaa\n").unwrap();
    let state = tmp.path().join("state");
    let o = || Options {
        boot_id: BootIdSource::ProcRoot(proc_root.clone()),
        ..opts(&state, "unused")
    };
    {
        let (mut cp, r) = Checkpoint::<Claim>::open(o()).unwrap();
        assert_eq!(r.boot_id, "11111111-aaaa");
        assert!(!r.boot_changed);
        cp.put("a", claim(1)).unwrap();
    }
    {
        let (_, r) = Checkpoint::<Claim>::open(o()).unwrap();
        assert!(!r.boot_changed);
        assert_eq!(r.previous_boot_id.as_deref(), Some("11111111-aaaa"));
    }
    fs::write(&boot_file, "22222222-bbbb\n").unwrap();
    {
        let (cp, r) = Checkpoint::<Claim>::open(o()).unwrap();
        assert!(r.boot_changed);
        assert_eq!(r.previous_boot_id.as_deref(), Some("11111111-aaaa"));
        assert_eq!(r.boot_id, "22222222-bbbb");
        assert!(r.warnings()[0].contains("22222222-bbbb"));
        assert_eq!(cp.get("a"), Some(&claim(1)));
        assert_eq!(cp.boot_id(), "22222222-bbbb");
    }
    let (_, r) = Checkpoint::<Claim>::open(o()).unwrap();
    assert!(!r.boot_changed, "the file now carries the new boot ID");

    // An unreadable boot ID is an error naming the file, not a silent default.
    fs::remove_file(&boot_file).unwrap();
    let e = Checkpoint::<Claim>::open(o()).unwrap_err();
    assert!(e.to_string().contains("boot_id"), "{e}");
}

#[test]
fn compaction_keeps_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), "boot-1");
    o.compact_after = 8;
    let (mut cp, _) = Checkpoint::<Claim>::open(o.clone()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..200 {
        let k = format!("k{}", i % 7);
        if i % 3 == 0 {
            cp.remove(&k).unwrap();
            model.remove(&k);
        } else {
            cp.put(&k, claim(i)).unwrap();
            model.insert(k, claim(i));
        }
        assert!(cp.journal_records() <= 16, "never compacted");
    }
    assert_eq!(cp.entries(), &model);
    let size_before = fs::metadata(cp.path()).unwrap().len();
    cp.compact().unwrap();
    assert_eq!(cp.journal_records(), model.len());
    assert!(fs::metadata(cp.path()).unwrap().len() <= size_before);
    drop(cp);
    let (cp, r) = Checkpoint::<Claim>::open(o).unwrap();
    assert!(r.warnings().is_empty());
    assert_eq!(cp.entries(), &model);
    let mut names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["netdev.checkpoint", "netdev.checkpoint.lock"],
        "no temp files left"
    );
}

#[test]
fn leftover_compaction_temp_is_removed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    let leftover = tmp.path().join(".netdev.checkpoint.tmp.777777.0");
    fs::write(&leftover, b"DRAKITCK partial").unwrap();
    let (_, r) = open(tmp.path());
    assert_eq!(r.removed_temp_files, vec![leftover.clone()]);
    assert!(!leftover.exists());
}

#[test]
fn durability_none_still_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), "b");
    o.durability = Durability::None;
    let (mut cp, _) = Checkpoint::<u64>::open(o.clone()).unwrap();
    cp.put("a", 1).unwrap();
    drop(cp);
    let (cp, _) = Checkpoint::<u64>::open(o).unwrap();
    assert_eq!(cp.get("a"), Some(&1));
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u32),
    Del(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, any::<u32>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0u8..6).prop_map(Op::Del),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A crash cutting the file at any byte yields exactly the state after some prefix of the
    /// operations (never a mix, never an error), and the checkpoint keeps working after it.
    #[test]
    fn crash_at_any_byte_gives_a_prefix_state(ops in proptest::collection::vec(op(), 1..20), cut in any::<proptest::sample::Index>()) {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = opts(tmp.path(), "b");
        o.durability = Durability::None;
        let (mut cp, _) = Checkpoint::<u32>::open(o.clone()).unwrap();
        let mut states = vec![BTreeMap::new()];
        let mut model = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Put(k, v) => { cp.put(&k.to_string(), *v).unwrap(); model.insert(k.to_string(), *v); }
                Op::Del(k) => { cp.remove(&k.to_string()).unwrap(); model.remove(&k.to_string()); }
            }
            states.push(model.clone());
        }
        let path = cp.path().to_path_buf();
        drop(cp);
        let bytes = fs::read(&path).unwrap();
        let hdr = header(FORMAT_VERSION, "b").len();
        let at = hdr + cut.index(bytes.len() - hdr + 1);
        fs::write(&path, &bytes[..at]).unwrap();
        let (mut cp, r) = Checkpoint::<u32>::open(o.clone()).unwrap();
        prop_assert!(r.corruption.is_none(), "{:?}", r);
        prop_assert!(states.contains(cp.entries()), "{:?} is not a prefix state", cp.entries());
        prop_assert_eq!(r.torn_tail.is_some(), at != bytes.len() && !states.is_empty() && {
            // torn exactly when the cut is not on a record boundary
            let mut boundary = false;
            let mut pos = hdr;
            while pos <= at { if pos == at { boundary = true; break; }
                let len = u32::from_le_bytes(bytes[pos..pos+4].try_into().unwrap()) as usize; pos += 8 + len; }
            !boundary
        });
        cp.put("after", 1).unwrap();
        drop(cp);
        let (cp, r) = Checkpoint::<u32>::open(o).unwrap();
        prop_assert!(r.warnings().is_empty());
        prop_assert_eq!(cp.get("after"), Some(&1));
    }
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut first, _) = open(tmp.path());
    first.put("a", claim(1)).unwrap();
    let e = Checkpoint::<Claim>::open(opts(tmp.path(), "boot-1")).unwrap_err();
    assert!(
        matches!(e, drakit_types::checkpoint::CheckpointError::Locked { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("in use"), "{e}");
    first.compact().unwrap(); // the lock is not on the journal, so it survives a replace
    assert!(Checkpoint::<Claim>::open(opts(tmp.path(), "boot-1")).is_err());
    drop(first);
    let (cp, _) = open(tmp.path());
    assert_eq!(cp.get("a"), Some(&claim(1)));
}

#[test]
fn shared_openers_take_turns_and_see_each_other() {
    use drakit_types::checkpoint::Refreshed;
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(tmp.path(), "boot-1");
    let (mut a, _) = Checkpoint::<Claim>::open_shared(o.clone()).unwrap();
    a.put("a", claim(1)).unwrap();
    // A second shared opener is not refused (the caller serializes), and sees a's record.
    let (mut b, _) = Checkpoint::<Claim>::open_shared(o.clone()).unwrap();
    assert_eq!(b.get("a"), Some(&claim(1)));
    assert_eq!(a.refresh().unwrap(), Refreshed::Unchanged);
    b.put("b", claim(2)).unwrap();
    b.remove("a").unwrap();
    assert_eq!(a.refresh().unwrap(), Refreshed::Appended { records: 2 });
    assert_eq!(a.entries().keys().collect::<Vec<_>>(), vec!["b"]);
    // a appends after b's records, not over them.
    a.put("c", claim(3)).unwrap();
    assert_eq!(b.refresh().unwrap(), Refreshed::Appended { records: 1 });
    assert_eq!(b.len(), 2);
    // A compaction replaces the file: the other handle reads it again and appends to the new one.
    b.compact().unwrap();
    assert!(matches!(
        a.refresh().unwrap(),
        Refreshed::Reloaded { records: 2, .. }
    ));
    a.put("d", claim(4)).unwrap();
    assert_eq!(b.refresh().unwrap(), Refreshed::Appended { records: 1 });
    assert_eq!(a.entries(), b.entries());
    // A torn record left by a writer that died mid-append is cut before the next append.
    let mut f = fs::OpenOptions::new().append(true).open(o.path()).unwrap();
    std::io::Write::write_all(&mut f, &record("{\"put\":[\"x\",")[..10]).unwrap();
    drop(f);
    assert_eq!(a.refresh().unwrap(), Refreshed::Appended { records: 0 });
    a.put("e", claim(5)).unwrap();
    drop((a, b));
    let (cp, r) = open(tmp.path());
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    assert_eq!(
        cp.entries().keys().collect::<Vec<_>>(),
        vec!["b", "c", "d", "e"]
    );
    // An exclusive opener still locks out the next exclusive one; shared ones take no lock.
    let e = Checkpoint::<Claim>::open(o.clone()).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(cp);
}

#[test]
fn a_deferred_remove_is_written_at_once_and_flushed_later() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cp, _) = open(tmp.path());
    cp.put("a", claim(1)).unwrap();
    cp.put("b", claim(2)).unwrap();
    let len = fs::metadata(tmp.path().join("netdev.checkpoint"))
        .unwrap()
        .len();
    assert_eq!(cp.remove_deferred("a").unwrap(), Some(claim(1)));
    assert_eq!(cp.remove_deferred("a").unwrap(), None);
    // The record is in the file right away (a crash of the process keeps it)...
    assert!(
        fs::metadata(tmp.path().join("netdev.checkpoint"))
            .unwrap()
            .len()
            > len
    );
    let syncer = cp.syncer().unwrap();
    // ...and is flushed from another thread while the checkpoint goes on.
    std::thread::spawn(move || syncer.sync().unwrap())
        .join()
        .unwrap();
    cp.put("c", claim(3)).unwrap();
    drop(cp);
    let (cp, r) = open(tmp.path());
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    assert_eq!(cp.entries().keys().collect::<Vec<_>>(), vec!["b", "c"]);
}

/// Unmounts a test tmpfs even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A failed append (disk full in the middle of a record) leaves no garbage behind: the next
/// append and a reopen see a clean journal without the failed change.
#[test]
fn failed_append_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=256k",
            "drakit-test",
            mnt.to_str().unwrap(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipped: cannot mount a small tmpfs (needs root) to simulate a full disk");
        return;
    }
    let _guard = Mounted(mnt.clone());
    let o = Options {
        durability: Durability::Fsync,
        ..opts(&mnt, "boot-1")
    };
    let (mut cp, _) = Checkpoint::<String>::open(o.clone()).unwrap();
    cp.put("small", "v".into()).unwrap();
    let len_before = fs::metadata(cp.path()).unwrap().len();
    // Fill the filesystem.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    let e = cp.put("big", "x".repeat(64 * 1024)).unwrap_err();
    assert!(e.to_string().contains("netdev.checkpoint"), "{e}");
    assert_eq!(cp.get("big"), None);
    assert_eq!(fs::metadata(cp.path()).unwrap().len(), len_before);
    fs::remove_file(&filler).unwrap();
    cp.put("after", "a".into()).unwrap();
    drop(cp);
    let (cp, r) = Checkpoint::<String>::open(o).unwrap();
    assert!(r.warnings().is_empty(), "{r:?}");
    assert_eq!(
        cp.entries().keys().cloned().collect::<Vec<_>>(),
        vec!["after", "small"]
    );
}
