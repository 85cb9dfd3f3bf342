//! Whole-state scans for tests, consistency checks and exports.

use super::*;

use super::codec::*;

impl RocksState {
    /// Every entity's all-time statistics (for tests and exports; scans the column family).
    pub fn all_stats(&self) -> Result<BTreeMap<EntityKey, Stats>, StateError> {
        Ok(self
            .all_stat_keys()?
            .into_iter()
            .filter(|(k, _)| k.dim == Dim::All)
            .map(|(k, v)| (k.entity, v))
            .collect())
    }

    /// Every statistic as served: the stored ones (day buckets included) and the windows at
    /// the committed clock (for tests; scans two column families).
    pub fn all_stat_keys(&self) -> Result<BTreeMap<StatKey, Stats>, StateError> {
        let mut out = self.stored_stat_keys()?;
        if let Some(clock) = self.checkpoint_meta().and_then(|m| m.clock.day()) {
            let days: Vec<(StatKey, Stats)> = out
                .iter()
                .filter(|(k, _)| matches!(k.dim, Dim::Day(_)))
                .map(|(k, v)| (*k, *v))
                .collect();
            out.extend(windows_from_days(clock, days));
        }
        Ok(out)
    }

    /// Every stored statistic, day buckets included.
    fn stored_stat_keys(&self) -> Result<BTreeMap<StatKey, Stats>, StateError> {
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf(self.cf(CF_STATS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Some(entity) = StatKey::breakdowns_entity(&k) {
                for (dim, s) in super::breakdowns::decode(&v)? {
                    out.insert(StatKey::new(entity, dim), s);
                }
                continue;
            }
            if let Some((corp, day)) = StatKey::member_days_of(&k) {
                for (member, s) in super::breakdowns::decode_members(&v)? {
                    out.insert(StatKey::new(corp, Dim::MemberDay(day, member)), s);
                }
                continue;
            }
            let key = StatKey::from_bytes(&k).ok_or_else(|| codec_err("bad stats key"))?;
            if let Some(s) = stored_stats(&v)? {
                out.insert(key, s);
            }
        }
        for item in self.db.iterator_cf(self.cf(CF_DAYS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = StatKey::from_day_major_bytes(&k).ok_or_else(|| codec_err("bad day key"))?;
            if let Some(s) = stored_stats(&v)? {
                out.insert(key, s);
            }
        }
        Ok(out)
    }

    /// The leaderboard entries stored and served: the all-time index (each board down to its
    /// floor, see `ranks`) and every window entry ranked from scratch (for tests).
    pub fn all_ranks(&self) -> Result<std::collections::BTreeSet<RankKey>, StateError> {
        let all = self.all_stat_keys()?;
        let windows: BTreeMap<StatKey, Stats> = all
            .into_iter()
            .filter(|(k, _)| matches!(k.dim, Dim::Window(_)))
            .collect();
        let mut out: std::collections::BTreeSet<RankKey> =
            window_rank_entries(&windows).into_iter().collect();
        for item in self.db.iterator_cf(self.cf(CF_RANKS), IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            out.insert(RankKey::from_bytes(&k).ok_or_else(|| codec_err("bad rank key"))?);
        }
        Ok(out)
    }

    /// Every killmail's upsert state (for consistency checks; scans the column family).
    pub fn all_killmails(&self) -> Result<Vec<StoredKillmail>, StateError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_KILLMAILS), IteratorMode::Start)
        {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(bincode::deserialize(&v).map_err(codec_err)?);
        }
        Ok(out)
    }
}

/// The column families a state is made of, for whole-state copies ([`RocksState::scan_raw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Killmails,
    Stats,
    Days,
    Ranks,
    DeadLetters,
    Offsets,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Killmails,
        Table::Stats,
        Table::Days,
        Table::Ranks,
        Table::DeadLetters,
        Table::Offsets,
    ];

    fn cf_name(self) -> &'static str {
        match self {
            Table::Killmails => CF_KILLMAILS,
            Table::Stats => CF_STATS,
            Table::Days => CF_DAYS,
            Table::Ranks => CF_RANKS,
            Table::DeadLetters => CF_DEAD_LETTERS,
            Table::Offsets => CF_OFFSETS,
        }
    }
}

impl RocksState {
    /// Every key and value of a table, merge operands applied (for whole-state copies).
    pub fn scan_raw(
        &self,
        table: Table,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        for item in self
            .db
            .iterator_cf(self.cf(table.cf_name()), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Writes raw entries (not synced: a copy ends with [`RocksState::write_meta`]).
    pub fn put_raw(&self, entries: &[(Table, Vec<u8>, Vec<u8>)]) -> Result<(), StateError> {
        let mut wb = WriteBatch::default();
        for (table, k, v) in entries {
            wb.put_cf(self.cf(table.cf_name()), k, v);
        }
        self.db.write(wb).map_err(|e| self.err(e))
    }

    /// Writes a checkpoint's metadata alone, synced, after flushing everything written before:
    /// the last step of a whole-state copy.
    pub fn write_meta(&self, meta: &CheckpointMeta) -> Result<(), StateError> {
        self.flush()?;
        let mut wb = WriteBatch::default();
        wb.put_cf(
            self.cf(CF_META),
            META_CHECKPOINT,
            serde_json::to_vec(meta).map_err(codec_err)?,
        );
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))?;
        *self.meta.write() = Some(meta.clone());
        self.committed_epoch.store(meta.epoch, Ordering::Release);
        self.flush()
    }
}
