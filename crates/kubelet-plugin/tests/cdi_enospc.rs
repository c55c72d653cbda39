//! A full CDI directory (a 16 KiB tmpfs, filled up): prepare fails with an error naming the
//! claim and the cause, leaves no spec or temp file, and checkpoints nothing; once space is
//! freed the kubelet's retry succeeds. Needs root to mount; says `skipped:` otherwise.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use drakit_e2e::apiserver::ClaimBuilder;
use drakit_e2e::kubelet::ClaimRef;
use drakit_kubelet_plugin::state::{StateOptions, open_checkpoint, read_boot_id};
use serde_json::json;

/// A tmpfs mounted for the test; lazily unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file until a write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler.bin");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = [0u8; 1024];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return p,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cdi_dir_fails_prepare_cleanly_and_the_retry_succeeds() {
    let n = TestNode::start(true).await;
    let cdi = n.config.cdi_dir.clone();
    let _mount = match Tmpfs::mount(&cdi, "16k") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: cannot mount a small tmpfs as the CDI dir ({why})");
            return;
        }
    };
    let p = n.launch_registered().await;
    n.node
        .api
        .insert_claim(
            &ClaimBuilder::new("default", "nic")
                .uid("nic-uid")
                .device(NET, NODE, "eth1", "nic")
                .config_from_claim(NET, &["nic"], json!({"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"macvlan","interfaceName":"net1","parent":"eth0"}}))
                .reserved_for_pod("pod-a", "pod-uid-a")
                .build(),
        )
        .unwrap();
    let filler = fill(&cdi);
    let c = [ClaimRef::new("default", "nic", "nic-uid")];

    let r = n.node.kubelet.prepare(NET, &c).await.unwrap();
    let e = r["nic-uid"].clone().unwrap_err();
    assert!(e.contains("claim default/nic"), "names the claim: {e}");
    assert!(
        e.contains("writing CDI spec") && e.contains("No space left on device"),
        "says what failed and why: {e}"
    );
    assert_eq!(
        names(&cdi),
        vec!["filler.bin"],
        "no spec and no temp file left behind"
    );
    // Nothing checkpointed: the journal, read after the plugin stopped, does not know the claim.
    p.stop().await.unwrap();
    let j = open_checkpoint(&StateOptions {
        dir: n.config.state_dir.join(NET),
        driver: NET.into(),
        boot_id: read_boot_id(&n.config.proc_root),
        durability: drakit_types::checkpoint::Durability::None,
        shared: false,
    })
    .unwrap();
    assert!(
        j.get("nic-uid").is_none(),
        "the checkpoint does not claim a CDI spec that was never written"
    );
    drop(j);

    // Space back, plugin back: the kubelet's retry goes through the backend again and succeeds.
    std::fs::remove_file(&filler).unwrap();
    let p = n.launch_registered().await;
    let r = n.node.kubelet.prepare(NET, &c).await.unwrap();
    let d = r["nic-uid"].clone().unwrap();
    assert_eq!(
        d[0].cdi_device_ids,
        vec![format!("{NET}/claim=claim-nic-uid-eth1")]
    );
    assert_eq!(names(&cdi), vec![format!("{NET}-claim_nic-uid.json")]);
    assert!(n.cdi_spec(NET, "nic-uid").is_some());
    let prepares = n
        .net
        .calls()
        .iter()
        .filter(|c| *c == "prepare nic-uid")
        .count();
    assert_eq!(prepares, 2, "{:?}", n.net.calls());
    let u = n.node.kubelet.unprepare(NET, &c).await.unwrap();
    assert!(u["nic-uid"].is_ok(), "{u:?}");
    assert!(names(&cdi).is_empty(), "{:?}", names(&cdi));
    p.stop().await.unwrap();
}
