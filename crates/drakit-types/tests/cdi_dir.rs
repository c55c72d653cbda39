//! The spec directory: atomic writes, skip when unchanged, idempotent remove, listing only our
//! own files, rebuild, and crash leftovers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use drakit_types::cdi::{ClaimDevice, ClaimSpec, ContainerEdits, SpecDir, WriteOutcome};

const VENDOR: &str = "net.drakit.dev";

fn spec(uid: &str, value: &str) -> ClaimSpec {
    ClaimSpec::build(
        VENDOR,
        "claim",
        uid,
        vec![ClaimDevice {
            device: "eth1".into(),
            edits: ContainerEdits {
                env: vec![format!("V={value}")],
                ..Default::default()
            },
            ..Default::default()
        }],
        ContainerEdits::default(),
    )
    .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn write_skips_identical_bytes_and_replaces_different_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let cdi = tmp.path().join("run/cdi"); // created on first write
    let dir = SpecDir::new(&cdi, VENDOR, "claim").unwrap();
    let s1 = spec("uid-1", "a");
    assert_eq!(dir.write(&s1).unwrap(), WriteOutcome::Written);
    let p = dir.path_for("uid-1");
    let ino = fs::metadata(&p).unwrap();
    assert_eq!(dir.write(&s1).unwrap(), WriteOutcome::Unchanged);
    // Unchanged means untouched: same inode (no rename happened).
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&p).unwrap().ino(), ino.ino());
    assert_eq!(
        dir.write(&spec("uid-1", "b")).unwrap(),
        WriteOutcome::Written
    );
    assert!(fs::read_to_string(&p).unwrap().contains("V=b"));
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777 & !0o022,
        0o644 & !0o022
    );
    assert_eq!(
        names(&cdi),
        vec!["net.drakit.dev-claim_uid-1.json".to_string()]
    );
}

#[test]
fn write_refuses_a_spec_of_another_vendor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = SpecDir::new(tmp.path(), "cpu.drakit.dev", "claim").unwrap();
    let e = dir.write(&spec("uid-1", "a")).unwrap_err();
    assert!(e.to_string().contains("uid-1"), "{e}");
}

#[test]
fn remove_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = SpecDir::new(tmp.path(), VENDOR, "claim").unwrap();
    dir.write(&spec("uid-1", "a")).unwrap();
    assert!(dir.remove("uid-1").unwrap());
    assert!(!dir.remove("uid-1").unwrap());
    assert!(!dir.remove("never-there").unwrap());
    assert!(dir.remove("../etc").is_err());
    let missing = SpecDir::new(tmp.path().join("nope"), VENDOR, "claim").unwrap();
    assert!(!missing.remove("uid-1").unwrap());
    assert!(missing.list().unwrap().is_empty());
}

#[test]
fn list_sees_only_our_vendor_and_class() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = SpecDir::new(d, VENDOR, "claim").unwrap();
    dir.write(&spec("b-2", "x")).unwrap();
    dir.write(&spec("a-1", "x")).unwrap();
    for other in [
        "cpu.drakit.dev-claim_a-1.json",
        "net.drakit.dev-claim.json",
        "net.drakit.dev-claim_x_y.json", // class "claim_x" of some other writer
        "net.drakit.dev-claim_c-3.yaml",
        "net.drakit.dev-claimx_d-4.json",
        "vendor.com-gpu_e-5.json",
    ] {
        fs::write(d.join(other), "{}").unwrap();
    }
    assert_eq!(
        dir.list().unwrap(),
        vec!["a-1".to_string(), "b-2".to_string()]
    );
}

#[test]
fn rebuild_writes_missing_removes_stale_and_leaves_others_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = SpecDir::new(d, VENDOR, "claim").unwrap();
    dir.write(&spec("keep", "old")).unwrap();
    dir.write(&spec("same", "v")).unwrap();
    dir.write(&spec("stale", "v")).unwrap();
    fs::write(d.join("vendor.com-gpu_stale.json"), "{}").unwrap();
    fs::write(d.join("net.drakit.dev-claim.yaml"), "x").unwrap();
    // Leftovers of a crashed writer (another pid): ours, and another vendor's.
    fs::write(
        d.join(".net.drakit.dev-claim_keep.json.tmp.999999.3"),
        "{\"cdiV",
    )
    .unwrap();
    fs::write(d.join(".vendor.com-gpu_x.json.tmp.999999.1"), "x").unwrap();

    let desired = vec![spec("keep", "new"), spec("same", "v"), spec("fresh", "v")];
    let r = dir.rebuild(&desired).into_result().unwrap();
    assert_eq!(r.written, vec!["keep".to_string(), "fresh".to_string()]);
    assert_eq!(r.unchanged, vec!["same".to_string()]);
    assert_eq!(r.removed, vec!["stale".to_string()]);
    assert_eq!(r.removed_temp_files.len(), 1);
    assert_eq!(
        names(d),
        vec![
            ".vendor.com-gpu_x.json.tmp.999999.1",
            "net.drakit.dev-claim.yaml",
            "net.drakit.dev-claim_fresh.json",
            "net.drakit.dev-claim_keep.json",
            "net.drakit.dev-claim_same.json",
            "vendor.com-gpu_stale.json",
        ]
    );
    // A second rebuild with the same input changes nothing.
    let r = dir.rebuild(&desired).into_result().unwrap();
    assert!(r.written.is_empty() && r.removed.is_empty());
    assert_eq!(r.unchanged.len(), 3);
}

#[test]
fn rebuild_after_reboot_into_an_empty_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let cdi = tmp.path().join("cdi");
    let dir = SpecDir::new(&cdi, VENDOR, "claim").unwrap();
    let r = dir
        .rebuild(&[spec("u1", "a"), spec("u2", "b")])
        .into_result()
        .unwrap();
    assert_eq!(r.written.len(), 2);
    assert_eq!(
        dir.list().unwrap(),
        vec!["u1".to_string(), "u2".to_string()]
    );
}

/// A crash between creating the temp file and the rename leaves the good spec in place, and
/// the next rebuild sweeps the leftover.
#[test]
fn torn_temp_file_never_replaces_a_good_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = SpecDir::new(d, VENDOR, "claim").unwrap();
    let good = spec("u1", "good");
    dir.write(&good).unwrap();
    let good_bytes = fs::read(dir.path_for("u1")).unwrap();
    let torn = d.join(".net.drakit.dev-claim_u1.json.tmp.424242.0");
    fs::write(&torn, &good_bytes[..good_bytes.len() / 2]).unwrap();
    assert_eq!(fs::read(dir.path_for("u1")).unwrap(), good_bytes);
    assert_eq!(dir.list().unwrap(), vec!["u1".to_string()]);
    let r = dir.rebuild(&[good]).into_result().unwrap();
    assert_eq!(r.removed_temp_files, vec![torn.clone()]);
    assert!(!torn.exists());
    assert_eq!(fs::read(dir.path_for("u1")).unwrap(), good_bytes);
}

/// A write that cannot happen (the directory cannot be created) fails with an error naming the
/// path and leaves existing specs and directories untouched.
#[test]
fn failed_write_reports_the_path_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("cdi");
    let dir = SpecDir::new(&d, VENDOR, "claim").unwrap();
    dir.write(&spec("u1", "good")).unwrap();
    let before = fs::read(dir.path_for("u1")).unwrap();
    // Tests run as root, which ignores directory modes: block the directory with a file.
    let blocker_dir = SpecDir::new(tmp.path().join("missing-parent/cdi"), VENDOR, "claim").unwrap();
    fs::write(tmp.path().join("missing-parent"), "a file, not a dir").unwrap();
    let e = blocker_dir.write(&spec("u1", "new")).unwrap_err();
    assert!(e.to_string().contains("missing-parent"), "{e}");
    assert_eq!(fs::read(dir.path_for("u1")).unwrap(), before);
    assert_eq!(names(&d), vec!["net.drakit.dev-claim_u1.json".to_string()]);
}

#[test]
fn write_rechecks_a_spec_changed_after_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = SpecDir::new(tmp.path(), VENDOR, "claim").unwrap();
    let mut s = spec("u1", "a");
    s.claim_uid = "../escape".into();
    assert!(dir.write(&s).unwrap_err().to_string().contains("claim UID"));
    let mut s = spec("u1", "a");
    s.spec.devices[0].container_edits.env.push("BROKEN".into());
    let e = dir.write(&s).unwrap_err().to_string();
    assert!(e.contains("u1") && e.contains("env[1]"), "{e}");
    let mut s = spec("u1", "a");
    s.spec.cdi_version = "0.2.0".into();
    assert!(
        dir.write(&s)
            .unwrap_err()
            .to_string()
            .contains("cdiVersion")
    );
    assert!(dir.list().unwrap().is_empty());
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn a_spec_read_back_from_its_json_writes_the_same_bytes() {
    let s = spec("uid-7", "a");
    let json = s.to_json().unwrap();
    let back = ClaimSpec::from_json(VENDOR, "claim", "uid-7", &json).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.to_json().unwrap(), json);
    // An older compact rendering with other device names and a higher declared version loads,
    // keeps its names and gets its minimum version.
    let old = br#"{"cdiVersion":"0.5.0","kind":"net.drakit.dev/claim","devices":[{"name":"7d-eth1","containerEdits":{"env":["A=1"]}}],"containerEdits":{}}"#;
    let back = ClaimSpec::from_json(VENDOR, "claim", "7d", old).unwrap();
    assert_eq!(
        back.device_ids,
        vec!["net.drakit.dev/claim=7d-eth1".to_string()]
    );
    assert_eq!(back.spec.cdi_version, "0.5.0"); // the name starts with a digit
    // Refused, naming the claim: another kind, bad JSON, an invalid spec.
    let e = ClaimSpec::from_json("cpu.drakit.dev", "claim", "uid-7", &json).unwrap_err();
    assert!(e.to_string().contains("uid-7"), "{e}");
    let e = ClaimSpec::from_json(VENDOR, "claim", "uid-7", b"{\"cdiVersion\":").unwrap_err();
    assert!(e.to_string().contains("claim uid-7"), "{e}");
    let bad = br#"{"cdiVersion":"0.3.0","kind":"net.drakit.dev/claim","devices":[{"name":"x","containerEdits":{"env":["noequals"]}}]}"#;
    let e = ClaimSpec::from_json(VENDOR, "claim", "uid-7", bad).unwrap_err();
    assert!(e.to_string().contains("claim uid-7"), "{e}");
}

#[test]
fn ensure_json_writes_only_what_is_missing_or_different() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = SpecDir::new(tmp.path(), VENDOR, "claim").unwrap();
    let s = spec("uid-8", "a");
    let json = s.to_json().unwrap();
    assert_eq!(
        dir.ensure_json("uid-8", &json).unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(fs::read(dir.path_for("uid-8")).unwrap(), json);
    assert_eq!(
        dir.ensure_json("uid-8", &json).unwrap(),
        WriteOutcome::Unchanged
    );
    fs::write(dir.path_for("uid-8"), b"{}").unwrap();
    assert_eq!(
        dir.ensure_json("uid-8", &json).unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(fs::read(dir.path_for("uid-8")).unwrap(), json);
    // What does not decode is refused and not written.
    assert!(dir.ensure_json("uid-9", b"{").is_err());
    assert!(!dir.path_for("uid-9").exists());
}
