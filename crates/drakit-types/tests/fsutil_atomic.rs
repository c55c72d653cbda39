//! Atomic replacement: a failing writer or a crash before the rename never damages the target.

use std::fs;
use std::io;

use drakit_types::fsutil::{
    Durability, Step, atomic_write, atomic_write_with, is_temp_name, remove_temp_files,
};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn failing_writer_leaves_target_and_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("spec.json");
    atomic_write(&p, b"good", Durability::Fsync).unwrap();
    let e = atomic_write_with(&p, 0o644, Durability::Fsync, |w| {
        w.write_all(b"half of the new con")?;
        Err(io::Error::other("disk full"))
    })
    .unwrap_err();
    assert_eq!(e.step, Step::Write);
    let msg = e.to_string();
    assert!(
        msg.contains("disk full") && msg.contains("spec.json"),
        "{msg}"
    );
    assert_eq!(fs::read(&p).unwrap(), b"good");
    assert_eq!(names(tmp.path()), vec!["spec.json".to_string()]);
}

#[test]
fn missing_directory_names_the_step_and_path() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("no/such/dir/f");
    let e = atomic_write(&p, b"x", Durability::Fsync).unwrap_err();
    assert_eq!(e.step, Step::CreateTemp);
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}

#[test]
fn mode_is_applied() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("state");
    atomic_write_with(&p, 0o600, Durability::None, |w| w.write_all(b"s")).unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn leftover_temp_files_are_swept_by_prefix_except_our_own() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(d.join("a.json"), "ok").unwrap();
    fs::write(d.join(".a.json.tmp.123456.0"), "torn").unwrap();
    fs::write(d.join(".b.json.tmp.123456.7"), "torn").unwrap();
    fs::write(d.join(".a.json.tmp.notapid.0"), "not ours").unwrap();
    let mine = format!(".a.json.tmp.{}.99", std::process::id());
    fs::write(d.join(&mine), "in flight").unwrap();
    assert!(is_temp_name(".a.json.tmp.123456.0"));

    let removed = remove_temp_files(d, "a.").unwrap();
    assert_eq!(removed, vec![d.join(".a.json.tmp.123456.0")]);
    let removed = remove_temp_files(d, "").unwrap();
    assert_eq!(removed, vec![d.join(".b.json.tmp.123456.7")]);
    let mut want = vec![
        ".a.json.tmp.notapid.0".to_string(),
        mine,
        "a.json".to_string(),
    ];
    want.sort();
    assert_eq!(names(d), want);
    assert!(
        remove_temp_files(&d.join("missing"), "")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn concurrent_writers_never_expose_a_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("f");
    atomic_write(&p, &[b'a'; 4096], Durability::None).unwrap();
    std::thread::scope(|s| {
        for byte in [b'b', b'c'] {
            let p = p.clone();
            s.spawn(move || {
                for _ in 0..200 {
                    atomic_write(&p, &[byte; 4096], Durability::None).unwrap();
                }
            });
        }
        let p = p.clone();
        s.spawn(move || {
            for _ in 0..400 {
                let b = fs::read(&p).unwrap();
                assert_eq!(b.len(), 4096);
                assert!(b.iter().all(|&x| x == b[0]));
            }
        });
    });
    assert_eq!(names(tmp.path()), vec!["f".to_string()]);
}
