//! A storage failure (disk full) stops ingestion cleanly with a clear error, and the state on
//! disk is exactly the last committed epoch: its statistics equal a from-scratch fold of its
//! own upsert state, so nothing half-applied exists to be served.
//!
//! Fills a real, size-limited filesystem (a 48 MiB tmpfs; the test mounts it, so it needs root,
//! as the README's test command has).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Kmflow;
use kmflow::state::RocksState;
use kmflow_dataflows::reference::ReferenceFold;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_stops_ingestion_with_the_last_commit_intact() {
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("small-disk");
    std::fs::create_dir(&mnt).unwrap();
    let _mount = Mount::tmpfs(&mnt, "96m");
    let state_dir = mnt.join("state");
    let env = [
        ("KMFLOW__SOURCE__KIND", "generator".to_string()),
        ("KMFLOW__GENERATOR__COUNT", "0".to_string()),
        ("KMFLOW__GENERATOR__RATE_PER_SEC", "0".to_string()),
        // Small epochs, so many commits succeed before the disk fills.
        ("KMFLOW__PIPELINE__EPOCH_MAX_RECORDS", "500".to_string()),
    ];
    let mut k = Kmflow::new(&state_dir, &env);
    let stderr = work.path().join("stderr.txt");
    k.stderr_file = Some(stderr.clone());
    k.spawn();
    let status = k
        .wait_exit(Duration::from_secs(300))
        .expect("kmflow stops by itself when the disk is full");
    assert!(!status.success(), "a storage failure is an error exit");
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(log.contains("ingestion stopped"), "{log}");
    assert!(log.contains("last committed epoch"), "{log}");
    assert!(
        log.contains("No space left on device") || log.contains("IO error"),
        "{log}"
    );

    // Copy the state off the full disk and check it is one whole committed epoch.
    let copy = work.path().join("copy");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&state_dir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    let state = RocksState::open(&copy, 16).unwrap();
    let meta = state
        .checkpoint_meta()
        .expect("at least one epoch was committed before the disk filled");
    assert!(
        log.contains(&format!("last committed epoch ({})", meta.epoch)),
        "{log}"
    );
    let mut fold = ReferenceFold::default();
    let stored = state.all_killmails().unwrap();
    assert!(stored.len() > 1000, "{} killmails", stored.len());
    for s in &stored {
        assert!(s.epoch <= meta.epoch);
        fold.apply(&s.killmail, s.applied_from.topic == 0);
    }
    assert_eq!(state.all_stats().unwrap(), fold.stats());
    // The stored offsets are exactly the killmails applied (the generator is deterministic:
    // one killmail per offset, each new).
    let offsets: i64 = meta.offsets.values().flat_map(|m| m.values()).sum();
    assert_eq!(offsets as usize, stored.len());
}

/// In a cluster, a full disk on one process stops both (no process waits forever for a peer
/// whose checkpoint failed), and what they leave is recoverable: at one checkpoint, or the
/// laggard holding the last one prepared (what `cluster::decide` rolls forward).
#[test]
fn disk_full_on_one_cluster_process_stops_both_recoverably() {
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("small-disk");
    std::fs::create_dir(&mnt).unwrap();
    let _mount = Mount::tmpfs(&mnt, "96m");
    let (big, small) = (work.path().join("p0"), mnt.join("p1"));
    let env = [
        ("KMFLOW__SOURCE__KIND", "generator".to_string()),
        ("KMFLOW__GENERATOR__COUNT", "0".to_string()),
        ("KMFLOW__GENERATOR__RATE_PER_SEC", "0".to_string()),
        ("KMFLOW__PIPELINE__WORKERS", "1".to_string()),
        ("KMFLOW__PIPELINE__EPOCH_MAX_RECORDS", "500".to_string()),
    ];
    let mut two = common::cluster(&[&big, &small], &env, work.path());
    for k in &mut two {
        let status = k
            .wait_exit(Duration::from_secs(300))
            .expect("every process stops by itself");
        assert!(!status.success(), "an error exit");
    }
    let log1 = std::fs::read_to_string(two[1].stderr_file.as_ref().unwrap()).unwrap();
    assert!(log1.contains("checkpoint failed"), "{log1}");
    let copy = work.path().join("p1-copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&small)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    let holdings: Vec<kmflow::cluster::Holding> = [&big, &copy]
        .iter()
        .map(|dir| {
            let meta = RocksState::open(dir, 16).unwrap().checkpoint_meta();
            let prepared = kmflow::cluster::prepared::load(dir).ok().flatten();
            kmflow::cluster::Holding {
                committed: meta.as_ref().map(|m| m.epoch),
                clock: meta.map(|m| m.clock).unwrap_or_default(),
                prepared: prepared.map(|p| p.meta.epoch),
                shape: "same".into(),
            }
        })
        .collect();
    assert!(holdings[0].committed.is_some(), "checkpoints were written");
    for me in 0..2 {
        kmflow::cluster::decide(me, &holdings).unwrap_or_else(|e| panic!("{holdings:?}: {e}"));
    }
}
