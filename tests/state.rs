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
    reads_agree_with_a_scan(&s);
}

/// The store's point reads (what a checkpoint's plan and the API ask, in any order, with
/// repeats and absent keys, across both tables and inside breakdowns rows) give what a scan of
/// the whole state gives.
fn reads_agree_with_a_scan(s: &RocksState) {
    use kmflow_dataflows::keys::{Dim, StatKey};
    let scanned: BTreeMap<StatKey, kmflow_dataflows::Stats> = s
        .all_stat_keys()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !matches!(k.dim, Dim::Window(_)))
        .collect();
    let dims: std::collections::BTreeSet<Dim> = scanned.keys().map(|k| k.dim).collect();
    assert!(
        dims.iter().any(|d| d.day().is_some()) && dims.iter().any(|d| d.breakdown().is_some()),
        "the state holds day buckets and breakdowns: {dims:?}"
    );
    let present = EntityKey::new(EntityKind::Character, 90_000_002);
    let absent = EntityKey::new(EntityKind::Character, 12345);
    let mut keys: Vec<StatKey> = scanned.keys().rev().copied().collect();
    keys.extend(scanned.keys().step_by(2).copied());
    for entity in [present, absent] {
        for dim in [Dim::All, Dim::Day(1), Dim::System(1), Dim::Month(190001)] {
            keys.push(StatKey::new(entity, dim));
        }
    }
    // Past one `MultiGet` call's worth of keys (they are read in chunks).
    let keys: Vec<StatKey> = keys
        .iter()
        .cycle()
        .take(keys.len().max(2_500))
        .copied()
        .collect();
    let got = StateStore::get_stats(s, &keys).unwrap();
    assert_eq!(got.len(), keys.len());
    for (k, g) in keys.iter().zip(&got) {
        assert_eq!(*g, scanned.get(k).copied(), "{k:?}");
    }
    // Only the present ones, with their positions, in order.
    let present: Vec<(u32, kmflow_dataflows::Stats)> = (got.iter().enumerate())
        .filter_map(|(i, g)| Some((i as u32, (*g)?)))
        .collect();
    assert!(!present.is_empty() && present.len() < keys.len());
    assert_eq!(StateStore::present_stats(s, &keys).unwrap(), present);
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
    let deltas: kmflow_dataflows::checkpoint::DeltaMap = common::deltas_of(&[a])
        .into_iter()
        .map(|(k, d)| (k, d.retraction()))
        .collect();
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

/// Dead letters: newest first, paged by cursor, filtered by reason and topic, and bounded by
/// the retention (count and bytes), the oldest dropped first and counted.
#[test]
fn dead_letters_page_newest_first_within_the_retention() {
    use kmflow::state::{DeadLetterFilter, DeadLetterLimits};
    use kmflow_dataflows::model::DeadLetter;
    use kmflow_dataflows::SourcePos;
    let dir = tempfile::tempdir().unwrap();
    let topics = vec!["live".to_string(), "history".to_string()];
    let s = RocksState::open(dir.path(), 16).unwrap();
    s.set_dead_letter_limits(DeadLetterLimits {
        count: 25,
        bytes: u64::MAX,
    });
    let letter = |topic: u16, offset: i64| DeadLetter {
        pos: SourcePos {
            topic,
            partition: 0,
            offset,
        },
        reason: if offset % 2 == 0 {
            "malformed_json"
        } else {
            "schema"
        }
        .into(),
        error: "bad".into(),
        payload: b"{".to_vec(),
        payload_len: 1,
    };
    // Four checkpoints of 10 letters: offsets 0..40, alternating topics.
    for epoch in 0..4u64 {
        let mut batch = common::batch_of(&*s, &[], epoch);
        batch.dead_letters = (0..10)
            .map(|i| {
                let o = (epoch * 10 + i) as i64;
                letter((o % 2) as u16, o)
            })
            .collect();
        s.write_checkpoint(&batch, &topics, &offsets(1), &BTreeMap::new(), i64::MAX)
            .unwrap();
    }
    let totals = s.checkpoint_meta().unwrap().dead_letters;
    assert_eq!(
        (totals.count, totals.dropped),
        (25, 15),
        "the 15 oldest dropped"
    );
    // Newest first, in pages of 10, until the cursor runs out.
    let all = DeadLetterFilter::default();
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let (page, next) = s.dead_letters(10, cursor.as_deref(), &all).unwrap();
        seen.extend(page.iter().map(|r| r.offset));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, (15..40).rev().collect::<Vec<i64>>());
    // Filters: by reason and by topic.
    let schema = DeadLetterFilter {
        reason: Some("schema".into()),
        topic: None,
    };
    let (page, _) = s.dead_letters(100, None, &schema).unwrap();
    assert!(page.iter().all(|r| r.reason == "schema") && page.len() == 13);
    let history = DeadLetterFilter {
        reason: None,
        topic: Some("history".into()),
    };
    let (page, _) = s.dead_letters(100, None, &history).unwrap();
    assert!(page
        .iter()
        .all(|r| r.topic == "history" && r.offset % 2 == 1));
    // The retention survives a reopen: the totals are in the checkpoint.
    drop(s);
    let s = RocksState::open(dir.path(), 16).unwrap();
    assert_eq!(s.checkpoint_meta().unwrap().dead_letters.count, 25);
}

/// How deep the boards go in the floors tests (a few, so small streams move the floors).
const DEPTH: usize = 3;

/// Checks every all-time board of `s` (at depth [`DEPTH`]) against the ranking from its
/// all-time rows: the index is exactly the ranking down to the floor, at least the depth of it
/// (or all of it), its count is what it holds, and a page as deep as the depth is the
/// ranking's first entries. Returns the boards.
fn assert_boards_are_the_ranking(s: &RocksState) -> kmflow::state::RankBoards {
    use kmflow_dataflows::keys::RankKey;
    let boards = s.check_rank_boards().expect("boards agree with the index");
    let all = s.all_stats().unwrap();
    let index = s.all_ranks().unwrap();
    for b in &boards.0 {
        let mut want: Vec<RankKey> = all
            .iter()
            .filter(|(e, _)| e.kind == b.kind)
            .filter_map(|(e, st)| {
                let value = b.metric.value(st);
                (value > 0).then_some(RankKey {
                    kind: b.kind,
                    window: 0,
                    metric: b.metric,
                    value,
                    id: e.id,
                })
            })
            .collect();
        want.sort_by_key(RankKey::store_order);
        let mut got: Vec<RankKey> = index
            .iter()
            .filter(|r| r.window == 0 && r.kind == b.kind && r.metric == b.metric)
            .copied()
            .collect();
        got.sort_by_key(RankKey::store_order);
        let n = got.len();
        assert_eq!(n as u64, b.count, "{b:?}");
        assert_eq!(got[..], want[..n], "{b:?}: the index is the ranking's top");
        assert!(
            n >= DEPTH.min(want.len()),
            "{b:?} holds {n} of {}",
            want.len()
        );
        // A board without a floor holds every entry (one with a floor may too: entries
        // below it can fall to zero without moving it).
        assert!(b.floor.is_some() || n == want.len(), "{b:?}");
        let (page, _) = s.leaderboard(b.kind, 0, b.metric, DEPTH).unwrap();
        let page: Vec<kmflow_dataflows::keys::RankKey> = page.into_iter().map(|(r, _)| r).collect();
        assert_eq!(page[..], want[..DEPTH.min(want.len())], "{b:?}");
    }
    boards
}

/// Killmails committed to a state one checkpoint at a time, new versions replacing the old,
/// and how often a board's floor moved up or down.
#[derive(Default)]
struct Appraisals {
    committed: BTreeMap<u64, kmflow_dataflows::Killmail>,
    epoch: u64,
    raised: usize,
    lowered: usize,
}

impl Appraisals {
    /// Commits `kms` (each a new killmail or a new version of a committed one) as one
    /// checkpoint, through a shard's plan, and checks the boards after it.
    fn commit(&mut self, s: &RocksState, kms: Vec<kmflow_dataflows::Killmail>) {
        use kmflow_dataflows::checkpoint::{CheckpointBatch, DeltaMap};
        use kmflow_dataflows::contrib::{contributions, StatsLevel};
        let mut deltas = DeltaMap::default();
        for km in &kms {
            if let Some(old) = self.committed.insert(km.killmail_id, km.clone()) {
                for (k, st) in contributions(&old, StatsLevel::Full) {
                    deltas.merge(k, &st.retraction());
                }
            }
            for (k, st) in contributions(km, StatsLevel::Full) {
                deltas.merge(k, &st);
            }
        }
        let b = CheckpointBatch::<()> {
            last_epoch: self.epoch,
            writes: common::writes_of(s, &deltas),
            ..Default::default()
        };
        let before = s.rank_boards();
        let topics = vec!["killmails".to_string()];
        s.write_checkpoint(
            &b,
            &topics,
            &offsets(self.epoch as i64),
            &BTreeMap::new(),
            i64::MAX,
        )
        .unwrap();
        self.epoch += 1;
        let rank = |f: Option<kmflow_dataflows::keys::RankKey>| {
            f.map_or((0, 0), |f| (f.value, u64::MAX - f.id))
        };
        for (a, b) in before.0.iter().zip(&s.rank_boards().0) {
            match rank(b.floor).cmp(&rank(a.floor)) {
                std::cmp::Ordering::Greater => self.raised += 1,
                std::cmp::Ordering::Less => self.lowered += 1,
                std::cmp::Ordering::Equal => {}
            }
        }
        assert_boards_are_the_ranking(s);
    }

    /// `n` new killmails (ids after the committed ones), of up to 7 attackers each drawn
    /// from 80 characters in 25 corporations and 9 alliances, each its own checkpoint.
    fn rise(&mut self, s: &RocksState, rng: &mut rand::rngs::SmallRng, n: u64) {
        use rand::Rng;
        let attacker = |rng: &mut rand::rngs::SmallRng| {
            let c: u64 = rng.random_range(0..80);
            (90_000_000 + c, 98_000_000 + c % 25, 99_000_000 + c % 9)
        };
        let first = self.committed.keys().last().map_or(1, |id| id + 1);
        for id in first..first + n {
            let k = rng.random_range(1..8);
            let attackers: Vec<_> = (0..k).map(|_| attacker(rng)).collect();
            let isk = rng.random_range(1..1_000) as f64 * 1e6;
            let km = common::killmail(id, attacker(rng), &attackers, Some(isk));
            self.commit(s, vec![km]);
        }
    }
}

/// The all-time leaderboards keep the top of each board as the floors rise (more entries than
/// four times the depth) and fall (re-appraisals lower ISK and points, and take them away):
/// after every checkpoint, and after a reopen, each board is the ranking from the all-time
/// rows down to its floor ([`assert_boards_are_the_ranking`]).
#[test]
fn leaderboards_keep_their_top_as_floors_rise_and_fall() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let s = RocksState::open(dir.path(), 16).unwrap();
    s.set_leaderboard_depth(DEPTH);
    let mut a = Appraisals::default();
    // Rising: new killmails, many characters each.
    a.rise(&s, &mut rng, 60);
    // Falling: re-appraisals to less, then to nothing (no zkb: no ISK, no points).
    let ids: Vec<u64> = a.committed.keys().copied().collect();
    for (i, chunk) in ids.chunks(4).enumerate() {
        let kms = chunk
            .iter()
            .map(|id| {
                let mut km = a.committed[id].clone();
                if i % 2 == 0 {
                    km.zkb = None;
                } else if let Some(z) = km.zkb.as_mut() {
                    z.total_value_cents /= 1000;
                }
                km
            })
            .collect();
        a.commit(&s, kms);
    }
    assert!(
        a.raised > 0 && a.lowered > 0,
        "raised {}, lowered {}",
        a.raised,
        a.lowered
    );
    // The boards are stored with the checkpoint.
    let boards = assert_boards_are_the_ranking(&s);
    drop(s);
    let s = RocksState::open(dir.path(), 16).unwrap();
    s.set_leaderboard_depth(DEPTH);
    assert_eq!(assert_boards_are_the_ranking(&s), boards);
}

/// A state of format 4 (before floors, no boards stored) has its index rebuilt at open, to
/// the same answers; so have boards stored in another shape (another build's), which are
/// never read at the wrong place.
#[test]
fn leaderboard_indexes_are_rebuilt_when_their_boards_are_not_this_builds() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let s = RocksState::open(dir.path(), 16).unwrap();
    s.set_leaderboard_depth(DEPTH);
    Appraisals::default().rise(&s, &mut rng, 40);
    let mut meta = s.checkpoint_meta().unwrap();
    meta.ranks = None;
    meta.format = 4;
    s.write_meta(&meta).unwrap();
    drop(s);
    let s = RocksState::open(dir.path(), 16).unwrap();
    assert_eq!(
        s.checkpoint_meta().unwrap().format,
        kmflow::state::STATE_FORMAT
    );
    let rebuilt = s.check_rank_boards().unwrap();
    assert!(rebuilt.0.iter().all(|b| b.floor.is_none()), "{rebuilt:?}");
    s.set_leaderboard_depth(DEPTH);
    assert_boards_are_the_ranking(&s);
    let mut meta = s.checkpoint_meta().unwrap();
    meta.ranks.as_mut().unwrap().0.truncate(3);
    s.write_meta(&meta).unwrap();
    drop(s);
    let s = RocksState::open(dir.path(), 16).unwrap();
    assert_eq!(s.rank_boards().0.len(), 12);
    s.set_leaderboard_depth(DEPTH);
    assert_boards_are_the_ranking(&s);
}

/// A state of format 5 (floors, statistics in bincode's varint encoding) opens as it is: its
/// index and boards are kept (no rebuild) and its format becomes this build's; its values read
/// back, and merges onto them give exactly what a state written by this build alone holds
/// after the same killmails (every statistic, day buckets and windows included).
#[test]
fn a_format_5_state_keeps_its_index_and_values_when_opened() {
    use kmflow::state::Table;
    use kmflow_dataflows::keys::StatKey;
    use rand::SeedableRng;
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: &tempfile::TempDir| {
        let s = RocksState::open(dir.path(), 16).unwrap();
        s.set_leaderboard_depth(DEPTH);
        s
    };
    let (old, new) = (open(&old_dir), open(&new_dir));
    let (mut a, mut b) = (Appraisals::default(), Appraisals::default());
    let (mut ra, mut rb) = (
        rand::rngs::SmallRng::seed_from_u64(5),
        rand::rngs::SmallRng::seed_from_u64(5),
    );
    a.rise(&old, &mut ra, 40);
    b.rise(&new, &mut rb, 40);
    let boards = assert_boards_are_the_ranking(&old);
    assert!(boards.0.iter().any(|b| b.floor.is_some()), "{boards:?}");
    // Every plain statistic rewritten as format 5 stored it.
    use bincode::Options;
    let bincode = bincode::DefaultOptions::new().with_varint_encoding();
    let mut legacy = Vec::new();
    for table in [Table::Stats, Table::Days] {
        old.scan_raw(table, |k, v| {
            let plain = match table {
                Table::Days => StatKey::from_day_major_bytes(k).is_some(),
                _ => {
                    StatKey::breakdowns_entity(k).is_none()
                        && StatKey::member_days_of(k).is_none()
                        && StatKey::from_bytes(k).is_some()
                }
            };
            if plain {
                let stats = kmflow::state::decode_stats(v)?;
                legacy.push((table, k.to_vec(), bincode.serialize(&stats).unwrap()));
            }
            Ok(())
        })
        .unwrap();
    }
    assert!(legacy.len() > 100, "{} plain statistics", legacy.len());
    assert!(legacy.iter().any(|(t, ..)| *t == Table::Days));
    let before = old.all_stat_keys().unwrap();
    old.put_raw(&legacy).unwrap();
    let mut meta = old.checkpoint_meta().unwrap();
    meta.format = 5;
    old.write_meta(&meta).unwrap();
    assert_eq!(
        old.all_stat_keys().unwrap(),
        before,
        "bincode values read back"
    );
    drop(old);
    let old = open(&old_dir);
    assert_eq!(
        old.checkpoint_meta().unwrap().format,
        kmflow::state::STATE_FORMAT
    );
    assert_eq!(old.rank_boards(), boards);
    assert_boards_are_the_ranking(&old);
    a.rise(&old, &mut ra, 20);
    b.rise(&new, &mut rb, 20);
    assert_eq!(old.all_stat_keys().unwrap(), new.all_stat_keys().unwrap());
    assert_eq!(old.rank_boards(), new.rank_boards());
}
