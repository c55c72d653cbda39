//! Import of the plugin's earlier checkpoint format, from before it moved onto
//! `drakit_types::checkpoint`: `<state dir>/<driver>/checkpoint.journal`, frames of
//! `[u32 LE length][u32 LE CRC-32][JSON]`, the first a header `{"op":"header","version":1,..}`,
//! then `{"op":"prepared",<ClaimRecord>}` and `{"op":"unprepared","uid":..}`; replay stopped at
//! the first torn or corrupt frame.
//!
//! At start-up, if that file exists, its live claims become the content of the new checkpoint
//! (claims the new file holds beyond them are dropped: the old file is the authority while it
//! exists, e.g. after a downgrade and a second upgrade), each CDI spec is re-rendered in the
//! shared format (device names and IDs stay as the kubelet was told), and then the old file is
//! removed and the directory synced. A crash anywhere in between repeats the import at the next
//! start, which gives the same result. A file without a valid header is moved to
//! `checkpoint.unreadable`, as the earlier code did. CDI temp files of the earlier writer
//! (`.<driver>-claim_<uid>.tmp`) are swept by [`remove_old_cdi_temp_files`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::state::{CDI_CLASS, ClaimCheckpoint, ClaimRecord, StateError};

/// The earlier journal's file name.
pub const LEGACY_NAME: &str = "checkpoint.journal";
const FORMAT_VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Entry {
    Header { version: u32 },
    Prepared(ClaimRecord),
    Unprepared { uid: String },
}

/// Live claims of an earlier journal; `None` when it has no valid header.
fn replay(data: &[u8]) -> Option<BTreeMap<String, ClaimRecord>> {
    let mut claims = BTreeMap::new();
    let mut off = 0usize;
    let mut first = true;
    while let Some(head) = data.get(off..off + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = data.get(off + 8..off + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(payload) else {
            break;
        };
        match entry {
            Entry::Header { version } if first => {
                if version != FORMAT_VERSION {
                    return None;
                }
            }
            _ if first => return None,
            Entry::Header { .. } => {}
            Entry::Prepared(rec) => {
                claims.insert(rec.uid.clone(), rec);
            }
            Entry::Unprepared { uid } => {
                claims.remove(&uid);
            }
        }
        first = false;
        off += 8 + len;
    }
    (!first).then_some(claims)
}

/// The CDI spec of an imported record in the shared rendering (the earlier one was compact
/// JSON); unchanged if it does not decode (logged).
fn rerender(driver: &str, rec: &mut ClaimRecord) {
    if rec.cdi_spec.is_empty() {
        return;
    }
    let json = drakit_types::cdi::ClaimSpec::from_json(
        driver,
        CDI_CLASS,
        &rec.uid,
        rec.cdi_spec.as_bytes(),
    )
    .and_then(|s| s.to_json());
    match json.map(String::from_utf8) {
        Ok(Ok(s)) => rec.cdi_spec = s,
        Ok(Err(e)) => {
            tracing::error!(driver, claim.uid = %rec.uid, error = %e, "imported CDI spec")
        }
        Err(e) => tracing::error!(driver, claim.uid = %rec.uid, error = %e, "imported CDI spec"),
    }
}

/// Imports `<dir>/checkpoint.journal` into `cp` if it exists (see the module docs).
pub fn import(dir: &Path, driver: &str, cp: &mut ClaimCheckpoint) -> Result<(), StateError> {
    let path = dir.join(LEGACY_NAME);
    let err = |source| StateError::Legacy {
        path: path.clone(),
        source,
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    match replay(&data) {
        None if !data.is_empty() => {
            let aside = path.with_extension("unreadable");
            tracing::warn!(driver, path = %path.display(), aside = %aside.display(),
                "earlier checkpoint has no valid header; not imported");
            std::fs::rename(&path, &aside).map_err(err)?;
        }
        None => std::fs::remove_file(&path).map_err(err)?,
        Some(claims) => {
            let stale: Vec<String> = cp
                .entries()
                .keys()
                .filter(|k| !claims.contains_key(*k))
                .cloned()
                .collect();
            for uid in stale {
                cp.remove(&uid)?;
            }
            let n = claims.len();
            for (uid, mut rec) in claims {
                rerender(driver, &mut rec);
                if cp.get(&uid) != Some(&rec) {
                    cp.put(&uid, rec)?;
                }
            }
            tracing::info!(driver, claims = n, from = %path.display(), to = %cp.path().display(),
                "imported the earlier checkpoint");
            std::fs::remove_file(&path).map_err(err)?;
        }
    }
    // The earlier journal's compaction temp file.
    match std::fs::remove_file(path.with_extension("tmp")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    // The removal must not be undone by a power loss: the old file would be imported again
    // over whatever changed since.
    drakit_types::fsutil::sync_dir(dir).map_err(|e| err(e.source))?;
    Ok(())
}

/// Removes temp files the earlier CDI writer left (`.<driver>-claim_<uid>.tmp`, a writer that
/// died before its rename). Returns how many.
pub fn remove_old_cdi_temp_files(cdi_dir: &Path, driver: &str) -> usize {
    let prefix = format!(".{driver}-{CDI_CLASS}_");
    let Ok(rd) = std::fs::read_dir(cdi_dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{DeviceRecord, StateOptions, open_checkpoint};
    use drakit_types::checkpoint::Durability;

    const DRIVER: &str = "net.drakit.dev";

    fn frame(v: serde_json::Value) -> Vec<u8> {
        let payload = serde_json::to_vec(&v).unwrap();
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// A record as the earlier code serialised it (`{"op":"prepared", ..fields}`).
    fn prepared(uid: &str) -> serde_json::Value {
        let spec = format!(
            r#"{{"cdiVersion":"0.5.0","kind":"{DRIVER}/claim","devices":[{{"name":"{uid}-eth1","containerEdits":{{"env":["A=1"],"netDevices":[{{"hostInterfaceName":"eth1","name":"net1"}}]}}}}],"containerEdits":{{}}}}"#
        );
        serde_json::json!({"op": "prepared", "namespace": "ns", "name": format!("c-{uid}"),
            "uid": uid, "devices": [{"requests": ["r"], "pool": "node", "device": "eth1",
            "cdi_device_ids": [format!("{DRIVER}/claim={uid}-eth1")]}], "cdi_spec": spec,
            "boot_id": "b", "allocated": [allocated_hex()], "reserved_for_pods": ["pod"]})
    }

    fn allocated_hex() -> String {
        use prost::Message;
        let d = drakit_proto::drakit::AllocatedDevice {
            device: "eth1".into(),
            ..Default::default()
        };
        d.encode_to_vec()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn opts(dir: &Path) -> StateOptions {
        StateOptions {
            dir: dir.to_path_buf(),
            driver: DRIVER.into(),
            boot_id: "b2".into(),
            durability: Durability::Fsync,
            shared: false,
        }
    }

    #[test]
    fn an_earlier_journal_is_imported_once_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(DRIVER);
        std::fs::create_dir_all(&dir).unwrap();
        // What the earlier code left: header, three claims, one unprepared, a torn tail, and a
        // compaction temp file.
        let mut data =
            frame(serde_json::json!({"op":"header","version":1,"driver":DRIVER,"boot_id":"b"}));
        for uid in ["1a", "2b", "3c"] {
            data.extend(frame(prepared(uid)));
        }
        data.extend(frame(serde_json::json!({"op":"unprepared","uid":"2b"})));
        data.extend(&frame(prepared("4d"))[..20]);
        std::fs::write(dir.join(LEGACY_NAME), &data).unwrap();
        std::fs::write(dir.join("checkpoint.tmp"), b"x").unwrap();
        // A claim the new checkpoint holds that the earlier one does not (unprepared after a
        // downgrade) is dropped.
        {
            let mut co =
                drakit_types::checkpoint::Options::new(&dir, crate::state::CHECKPOINT_NAME);
            co.boot_id = drakit_types::checkpoint::BootIdSource::Fixed("b2".into());
            let (mut raw, _) = ClaimCheckpoint::open(co).unwrap();
            let mut zz: ClaimRecord = serde_json::from_value(prepared("zz")).unwrap();
            zz.cdi_spec.clear();
            raw.put("zz", zz).unwrap();
        }
        let cp = open_checkpoint(&opts(&dir)).unwrap();
        assert_eq!(cp.entries().keys().collect::<Vec<_>>(), vec!["1a", "3c"]);
        let r = cp.get("1a").unwrap();
        assert_eq!(
            r.devices,
            vec![DeviceRecord {
                requests: vec!["r".into()],
                pool: "node".into(),
                device: "eth1".into(),
                share_id: None,
                cdi_device_ids: vec![format!("{DRIVER}/claim=1a-eth1")],
            }]
        );
        assert_eq!(r.allocated.len(), 1);
        assert_eq!(r.allocated[0].device, "eth1");
        // Re-rendered in the shared format, same device name and content.
        let spec =
            drakit_types::cdi::ClaimSpec::from_json(DRIVER, CDI_CLASS, "1a", r.cdi_spec.as_bytes())
                .unwrap();
        assert_eq!(spec.to_json().unwrap(), r.cdi_spec.as_bytes());
        assert_eq!(spec.device_ids, vec![format!("{DRIVER}/claim=1a-eth1")]);
        assert_eq!(spec.spec.cdi_version, "1.1.0");
        assert!(!dir.join(LEGACY_NAME).exists());
        assert!(!dir.join("checkpoint.tmp").exists());
        drop(cp);
        // Nothing to import any more; the state stays.
        let cp = open_checkpoint(&opts(&dir)).unwrap();
        assert_eq!(cp.len(), 2);
    }

    #[test]
    fn an_unreadable_earlier_journal_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(LEGACY_NAME), b"not a journal at all").unwrap();
        let cp = open_checkpoint(&opts(tmp.path())).unwrap();
        assert!(cp.is_empty());
        assert!(tmp.path().join("checkpoint.unreadable").exists());
        assert!(!tmp.path().join(LEGACY_NAME).exists());
    }

    #[test]
    fn old_cdi_temp_files_of_the_driver_only() {
        let tmp = tempfile::tempdir().unwrap();
        for n in [
            ".net.drakit.dev-claim_u1.tmp",
            ".cpu.drakit.dev-claim_u1.tmp",
            "net.drakit.dev-claim_u2.json",
        ] {
            std::fs::write(tmp.path().join(n), b"{}").unwrap();
        }
        assert_eq!(remove_old_cdi_temp_files(tmp.path(), DRIVER), 1);
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                ".cpu.drakit.dev-claim_u1.tmp",
                "net.drakit.dev-claim_u2.json"
            ]
        );
    }
}
