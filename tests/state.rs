//! The RocksDB state in a temp dir: commits, merges across commits, restart, snapshot reads,
//! and a storage failure.

mod common;

use std::collections::BTreeMap;

use kmflow::state::RocksState;
use kmflow_dataflows::store::StateStore;
use kmflow_dataflows::{EntityKey, EntityKind};

fn offsets(o: i64) -> BTreeMap<String, BTreeMap<i32, i64>> {
    BTreeMap::from([(
        "killmails".to_string(),
        BTreeMap::from([(0, o), (1, o + 1)]),
    )])
}

#[test]
fn commits_merge_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let topics = vec!["killmails".to_string()];
    let a = common::killmail(
        1,
        (90_000_001, 98_000_001, 99_000_001),
        &[(90_000_002, 98_000_002, 99_000_002)],
        Some(1000.5),
    );
    let b = common::killmail(
        2,
        (90_000_002, 98_000_002, 99_000_002),
        &[(90_000_001, 98_000_001, 99_000_001)],
        None,
    );
    {
        let s = RocksState::open(dir.path(), 16).unwrap();
        assert_eq!(s.committed_epoch(), None);
        assert!(s.checkpoint_meta().is_none());
        s.write_checkpoint(
            &common::batch_of(&*s, std::slice::from_ref(&a), 0),
            &topics,
            &offsets(1),
            &BTreeMap::new(),
            i64::MAX,
        )
        .unwrap();
        s.write_checkpoint(
            &common::batch_of(&*s, std::slice::from_ref(&b), 1),
            &topics,
            &offsets(2),
            &BTreeMap::new(),
            i64::MAX,
        )
        .unwrap();
        assert_eq!(s.committed_epoch(), Some(1));
    }
    let s = RocksState::open(dir.path(), 16).unwrap();
    assert_eq!(s.committed_epoch(), Some(1));
    let meta = s.checkpoint_meta().unwrap();
    assert_eq!(meta.epoch, 1);
    assert_eq!(meta.offsets, offsets(2));
    assert_eq!(s.offsets(), offsets(2));
    let keys = [
        EntityKey::new(EntityKind::Character, 90_000_002),
        EntityKey::new(EntityKind::Alliance, 99_000_001),
        EntityKey::new(EntityKind::Character, 12345),
    ];
    let (got, as_of) = s.stats_many(&keys).unwrap();
    assert_eq!(as_of.unwrap().epoch, 1);
    let c2 = got[0].unwrap();
    assert_eq!(
        (c2.sums.kills, c2.sums.losses, c2.sums.final_blows),
        (1, 1, 1)
    );
    assert_eq!(c2.sums.isk_destroyed_cents, 100_050);
    assert_eq!(c2.sums.isk_lost_cents, 0, "killmail 2 has no zkb");
    let a1 = got[1].unwrap();
    assert_eq!((a1.sums.kills, a1.sums.losses), (1, 1));
    assert!(got[2].is_none());
    // The upsert state reads back through the store trait and the killmail lookup.
    let stored = s.multi_get(&[1, 2, 3]).unwrap();
    assert_eq!(stored[0].as_ref().unwrap().killmail, a);
    assert_eq!(stored[1].as_ref().unwrap().killmail, b);
    assert!(stored[2].is_none());
    assert_eq!(s.killmail(2).unwrap().unwrap().killmail, b);
    assert_eq!(s.all_stats().unwrap().len(), 6);
    assert!(s.size_bytes() > 0);
}

#[test]
fn retraction_zeroes_counts_and_keeps_times() {
    let dir = tempfile::tempdir().unwrap();
    let topics = vec!["t".to_string()];
    let s = RocksState::open(dir.path(), 16).unwrap();
    let a = common::killmail(
        1,
        (90_000_001, 98_000_001, 99_000_001),
        &[(90_000_002, 98_000_002, 99_000_002)],
        Some(5.0),
    );
    let mut batch = common::batch_of(&*s, std::slice::from_ref(&a), 0);
    s.write_checkpoint(
        &batch,
        &topics,
        &BTreeMap::new(),
        &BTreeMap::new(),
        i64::MAX,
    )
    .unwrap();
    let mut deltas = common::deltas_of(&[a]);
    for d in deltas.values_mut() {
        *d = d.retraction();
    }
    batch.writes = common::writes_of(&*s, &deltas);
    batch.upserts.clear();
    batch.last_epoch = 1;
    s.write_checkpoint(
        &batch,
        &topics,
        &BTreeMap::new(),
        &BTreeMap::new(),
        i64::MAX,
    )
    .unwrap();
    // Times remain (they are never retracted), so the entities stay with zero counts.
    let all = s.all_stats().unwrap();
    assert!(all
        .values()
        .all(|st| st.sums.kills == 0 && st.sums.losses == 0 && st.seen.first.is_some()));
}

#[test]
fn unwritable_state_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = match RocksState::open(&file, 16) {
        Ok(_) => panic!("opening a file as a state directory must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not-a-dir"), "{err}");
}
