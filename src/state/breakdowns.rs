//! The packed rows of the `stats` table: lists of statistics the merge operator adds lists
//! into.
//!
//! - An entity's breakdowns row ([`StatKey::breakdowns_key`]): its month, group, ship, system
//!   and hour buckets. An entry's header is the dimension's [`tag`] (`MONTH`, `GROUP`, `SHIP`,
//!   `SYSTEM`, `HOUR`) and the bucket, big-endian: 5 bytes.
//! - A corporation's member-day row of one day ([`StatKey::member_days_key`]): its members'
//!   statistics that day. An entry's header is the member, big-endian: 8 bytes.
//!
//! Either value is a list of entries sorted by header:
//!
//! | bytes | field |
//! |---|---|
//! | 5 or 8 | the header (so the first bytes order the entries) |
//! | 1 | the length of the statistics that follow (an encoded [`Stats`] is at most [`MAX_STATS_BYTES`], 181) |
//! | n | the bucket's statistics, as every other row ([`encode_stats_into`]) |
//!
//! A merge operand is such a list too: the buckets a checkpoint touched, with their deltas.
//! Merging copies an entry as it is unless several lists have its bucket, so a compaction
//! decodes only the buckets that changed; a bucket whose sum is zero is dropped (a zero
//! statistic reads as absent everywhere).

use super::codec::{decode_stats, encode_stats_into};
use super::*;
use kmflow_dataflows::keys::KeyBytes;

/// The packed row a statistic is stored in, if it is packed: the one place that decides it,
/// for the checkpoint's writes, the point reads and the merge operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Packed {
    /// An entity's breakdowns row.
    Breakdowns(EntityKey),
    /// A corporation's member-day row of one day.
    MemberDays(EntityKey, i32),
}

impl Packed {
    /// The row `k` is stored in, `None` for a statistic stored on its own.
    pub(super) fn of(k: StatKey) -> Option<Packed> {
        match k.dim {
            Dim::MemberDay(day, _) => Some(Packed::MemberDays(k.entity, day)),
            d if d.breakdown().is_some() => Some(Packed::Breakdowns(k.entity)),
            _ => None,
        }
    }

    /// The row a stored key names, `None` for any other key.
    pub(super) fn of_stored(key: &[u8]) -> Option<Packed> {
        StatKey::breakdowns_entity(key)
            .map(Packed::Breakdowns)
            .or_else(|| StatKey::member_days_of(key).map(|(c, d)| Packed::MemberDays(c, d)))
    }

    pub(super) fn entity(self) -> EntityKey {
        match self {
            Packed::Breakdowns(e) | Packed::MemberDays(e, _) => e,
        }
    }

    /// Its stored key, in the `stats` table.
    pub(super) fn key(self) -> KeyBytes {
        match self {
            Packed::Breakdowns(e) => KeyBytes::from_slice(&StatKey::breakdowns_key(e)),
            Packed::MemberDays(c, d) => KeyBytes::from_slice(&StatKey::member_days_key(c, d)),
        }
    }

    /// Appends the entry of statistic dimension `dim` (one of this row's) to `row`.
    pub(super) fn push(row: &mut Vec<u8>, dim: Dim, stats: &Stats, scratch: &mut Vec<u8>) {
        match dim {
            Dim::MemberDay(_, member) => push_entry(row, &member.to_be_bytes(), stats, scratch),
            dim => push(row, dim, stats, scratch),
        }
    }

    /// The statistics of dimension `dim` in a stored row of this kind, if present and
    /// non-zero.
    pub(super) fn find(row: &[u8], dim: Dim) -> Result<Option<Stats>, StateError> {
        match dim {
            Dim::MemberDay(_, member) => find_entry(row, member.to_be_bytes()),
            dim => find(row, dim),
        }
    }

    /// The merge of stored rows of this kind (see [`merge`]).
    pub(super) fn merge<'a>(
        self,
        existing: Option<&'a [u8]>,
        operands: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<Vec<u8>> {
        match self {
            Packed::Breakdowns(_) => merge(existing, operands),
            Packed::MemberDays(..) => merge_members(existing, operands),
        }
    }
}

/// The header width of a breakdowns row's entries.
const BREAKDOWN: usize = 5;
/// The header width of a member-day row's entries.
const MEMBER: usize = 8;

/// An entry: its header and its encoded statistics.
type Entry<'a, const H: usize> = ([u8; H], &'a [u8]);

/// Appends an entry with `stats` under header `h` to `row`; an empty `stats` is left out.
/// `scratch` is a reused buffer.
fn push_entry<const H: usize>(
    row: &mut Vec<u8>,
    h: &[u8; H],
    stats: &Stats,
    scratch: &mut Vec<u8>,
) {
    if stats.is_empty() {
        return;
    }
    encode_stats_into(stats, scratch);
    let len = u8::try_from(scratch.len()).expect("an encoded Stats is at most MAX_STATS_BYTES");
    row.extend_from_slice(h);
    row.push(len);
    row.extend_from_slice(scratch);
}

/// The merge operand of one packed row, built from its buckets as they come (a shard's writes
/// in key order, a share's delta as its buckets): each is encoded once, as it comes. They come
/// in header order but for an entity's ships flown (which sort between its groups and
/// systems) and the shares that add to one month; only then are the entries put in order,
/// each header once (the buckets of one summed), never the 176-byte buckets sorted.
#[derive(Default)]
pub(super) struct RowOperand {
    bytes: Vec<u8>,
    /// Per entry: its header as a number (header order), where it is in `bytes`.
    entries: Vec<(u64, u32, u32)>,
    /// Whether an entry's header is not above the one before.
    out_of_order: bool,
    /// The length of the entries' headers (5 for breakdowns, 8 for member days).
    header: usize,
    scratch: Vec<u8>,
    ordered: Vec<u8>,
}

impl RowOperand {
    /// Adds the bucket of `dim` (a breakdown or a member day) with `stats`; nothing if empty.
    pub(super) fn add(&mut self, dim: Dim, stats: &Stats) {
        if stats.is_empty() {
            return;
        }
        let (order, header) = match (dim, dim.breakdown()) {
            (_, Some((tag, bucket))) => ((tag as u64) << 32 | bucket as u64, 5),
            (Dim::MemberDay(_, member), None) => (member, 8),
            _ => {
                debug_assert!(false, "{dim:?} is not a packed row's");
                return;
            }
        };
        self.out_of_order |= self.entries.last().is_some_and(|&(o, ..)| o >= order);
        self.header = header;
        let start = self.bytes.len() as u32;
        Packed::push(&mut self.bytes, dim, stats, &mut self.scratch);
        self.entries.push((order, start, self.bytes.len() as u32));
    }

    /// The operand (empty if every bucket was), and the builder emptied for the next row.
    pub(super) fn take(&mut self) -> Result<&[u8], StateError> {
        self.entries_in_order()?;
        self.entries.clear();
        self.out_of_order = false;
        Ok(&self.ordered)
    }

    fn entries_in_order(&mut self) -> Result<(), StateError> {
        self.ordered.clear();
        if !self.out_of_order {
            std::mem::swap(&mut self.ordered, &mut self.bytes);
            self.bytes.clear();
            return Ok(());
        }
        // Stable: buckets of one header stay in the order they came.
        self.entries.sort_by_key(|&(o, ..)| o);
        let mut at = 0;
        while at < self.entries.len() {
            let (order, start, end) = self.entries[at];
            let run = self.entries[at..]
                .iter()
                .take_while(|&&(o, ..)| o == order)
                .count();
            let entry = &self.bytes[start as usize..end as usize];
            if run == 1 {
                self.ordered.extend_from_slice(entry);
            } else {
                // The header, then the length byte, then the encoded statistics.
                let header_len = self.header;
                let mut sum = Stats::default();
                for &(_, s, e) in &self.entries[at..at + run] {
                    sum.merge(&decode_stats(
                        &self.bytes[s as usize + header_len + 1..e as usize],
                    )?);
                }
                match header_len {
                    5 => push_entry::<5>(
                        &mut self.ordered,
                        entry[..5].try_into().expect("5 bytes"),
                        &sum,
                        &mut self.scratch,
                    ),
                    _ => push_entry::<8>(
                        &mut self.ordered,
                        entry[..8].try_into().expect("8 bytes"),
                        &sum,
                        &mut self.scratch,
                    ),
                }
            }
            at += run;
        }
        self.bytes.clear();
        Ok(())
    }
}

/// Appends the entry of `dim` (a breakdown dimension) with `stats` to a breakdowns row.
fn push(row: &mut Vec<u8>, dim: Dim, stats: &Stats, scratch: &mut Vec<u8>) {
    let Some((tag, bucket)) = dim.breakdown() else {
        debug_assert!(false, "{dim:?} is not a breakdown");
        return;
    };
    let mut h = [tag, 0, 0, 0, 0];
    h[1..].copy_from_slice(&bucket.to_be_bytes());
    push_entry(row, &h, stats, scratch);
}

/// The entries of a row or operand, one by one: header and encoded statistics; an `Err` item
/// (then nothing) if malformed. Nothing is collected, so skipping entries costs only their
/// headers.
struct Entries<'a, const H: usize>(&'a [u8]);

impl<'a, const H: usize> Iterator for Entries<'a, H> {
    type Item = Result<Entry<'a, H>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.is_empty() {
            return None;
        }
        let entry = (|| {
            let header: [u8; H] = b.get(..H)?.try_into().ok()?;
            let len = *b.get(H)? as usize;
            Some((header, b.get(H + 1..H + 1 + len)?, H + 1 + len))
        })();
        match entry {
            Some((header, stats, n)) => {
                self.0 = &b[n..];
                Some(Ok((header, stats)))
            }
            None => {
                self.0 = &[];
                Some(Err(()))
            }
        }
    }
}

/// Appends an entry as it is.
fn copy_entry<const H: usize>(out: &mut Vec<u8>, h: &[u8; H], stats: &[u8]) {
    out.extend_from_slice(h);
    out.push(stats.len() as u8);
    out.extend_from_slice(stats);
}

fn dim_of(h: &[u8; BREAKDOWN]) -> Option<Dim> {
    Dim::from_breakdown(h[0], u32::from_be_bytes(h[1..].try_into().ok()?))
}

/// Every non-empty bucket of a stored breakdowns row, in tag and bucket order.
pub(super) fn decode(b: &[u8]) -> Result<Vec<(Dim, Stats)>, StateError> {
    decode_tags(b, |_| true, usize::MAX).map(|(buckets, _)| buckets)
}

/// Breakdown buckets read, and the tags of which only the first buckets were.
pub(super) type Buckets = (Vec<(Dim, Stats)>, Vec<u8>);

/// The non-empty buckets of a stored row whose tag is `wanted`, at most `cap` of each tag (the
/// first by bucket), in tag and bucket order, and the tags that had more (in tag order). Only
/// those are decoded: a row has as many buckets as its entity has distinct systems and ships,
/// which a producer decides, so what a read costs beyond skipping entries is bounded by `cap`.
pub(super) fn decode_tags(
    b: &[u8],
    wanted: impl Fn(u8) -> bool,
    cap: usize,
) -> Result<Buckets, StateError> {
    let bad = || codec_err("bad breakdowns row");
    let mut out = Vec::new();
    let mut taken = [0usize; 256];
    let mut truncated = Vec::new();
    for entry in Entries::<BREAKDOWN>(b) {
        let (h, s) = entry.map_err(|()| bad())?;
        if !wanted(h[0]) {
            continue;
        }
        if taken[h[0] as usize] >= cap {
            if !truncated.contains(&h[0]) {
                truncated.push(h[0]);
            }
            continue;
        }
        let stats = decode_stats(s)?;
        if !stats.is_empty() {
            taken[h[0] as usize] += 1;
            out.push((dim_of(&h).ok_or_else(bad)?, stats));
        }
    }
    out.sort_by_key(|(d, _)| d.breakdown());
    truncated.sort_unstable();
    Ok((out, truncated))
}

/// Every non-empty member of a stored member-day row, in member order.
pub(super) fn decode_members(b: &[u8]) -> Result<Vec<(u64, Stats)>, StateError> {
    let mut out = Vec::new();
    for entry in Entries::<MEMBER>(b) {
        let (h, s) = entry.map_err(|()| codec_err("bad member-day row"))?;
        let stats = decode_stats(s)?;
        if !stats.is_empty() {
            out.push((u64::from_be_bytes(h), stats));
        }
    }
    Ok(out)
}

/// The sum of the entries under header `want` in a stored row, if present and non-zero.
fn find_entry<const H: usize>(b: &[u8], want: [u8; H]) -> Result<Option<Stats>, StateError> {
    let mut sum: Option<Stats> = None;
    for entry in Entries::<H>(b) {
        let (h, s) = entry.map_err(|()| codec_err("bad packed row"))?;
        if h == want {
            sum.get_or_insert_with(Stats::default)
                .merge(&decode_stats(s)?);
        }
    }
    Ok(sum.filter(|s| !s.is_empty()))
}

/// The statistics of bucket `dim` in a stored breakdowns row, if present and non-zero.
fn find(b: &[u8], dim: Dim) -> Result<Option<Stats>, StateError> {
    let (tag, bucket) = dim
        .breakdown()
        .ok_or_else(|| codec_err("bad breakdowns row"))?;
    let mut want = [tag, 0, 0, 0, 0];
    want[1..].copy_from_slice(&bucket.to_be_bytes());
    find_entry(b, want)
}

/// The merge of breakdowns rows: `existing` (if any) and the `operands`, in that order, bucket
/// by bucket. `None` (a malformed row, or an unknown tag) makes RocksDB report corruption
/// rather than guess.
pub(super) fn merge<'a>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    merge_lists::<BREAKDOWN>(existing, operands, |h| dim_of(h).is_some())
}

/// The merge of member-day rows, member by member (see [`merge`]).
fn merge_members<'a>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    merge_lists::<MEMBER>(existing, operands, |_| true)
}

/// The merge of lists with `H`-byte headers, each header checked by `valid`.
///
/// Every list is in header order, so they are merged in one pass, each entry copied as bytes
/// unless several lists have its header: a compaction of a large row costs about a copy of
/// it. Many operands at once, or a list out of order, take a sort instead.
fn merge_lists<'a, const H: usize>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
    valid: fn(&[u8; H]) -> bool,
) -> Option<Vec<u8>> {
    let lists: Vec<&[u8]> = existing.into_iter().chain(operands).collect();
    let size = lists.iter().map(|l| l.len()).sum();
    let mut out = Vec::with_capacity(size);
    if lists.len() <= MERGE_LISTS && merge_sorted(&lists, &mut out, valid)? {
        return Some(out);
    }
    out.clear();
    let mut all: Vec<Entry<H>> = Vec::new();
    for b in &lists {
        for entry in Entries::<H>(b) {
            all.push(entry.ok()?);
        }
    }
    // Stable: the lists' order is kept among the entries of one header.
    all.sort_by_key(|(h, _)| *h);
    let mut scratch = Vec::with_capacity(64);
    let mut rest = &all[..];
    while let Some(((h, first), tail)) = rest.split_first() {
        let same = tail.iter().take_while(|(t, _)| t == h).count();
        let group = std::iter::once(*first).chain(tail[..same].iter().map(|(_, s)| *s));
        emit(&mut out, h, group, &mut scratch, valid)?;
        rest = &tail[same..];
    }
    Some(out)
}

/// Lists merged in one pass at most (each step looks at every list's next entry).
const MERGE_LISTS: usize = 16;

/// Merges `lists`, each in header order, into `out` in one pass. `Some(false)` if a list is
/// out of order (`out` is then incomplete), `None` if one is malformed.
fn merge_sorted<const H: usize>(
    lists: &[&[u8]],
    out: &mut Vec<u8>,
    valid: fn(&[u8; H]) -> bool,
) -> Option<bool> {
    let mut cursors: Vec<(Entries<H>, Option<Entry<H>>)> = Vec::with_capacity(lists.len());
    for b in lists {
        let mut it = Entries::<H>(b);
        let head = it.next().transpose().ok()?;
        cursors.push((it, head));
    }
    let mut scratch = Vec::with_capacity(64);
    let mut group: Vec<&[u8]> = Vec::with_capacity(lists.len());
    while let Some(h) = cursors
        .iter()
        .filter_map(|(_, head)| head.map(|(h, _)| h))
        .min()
    {
        group.clear();
        for (it, head) in cursors.iter_mut() {
            while let Some((hh, s)) = *head {
                if hh != h {
                    break;
                }
                group.push(s);
                *head = it.next().transpose().ok()?;
                if head.is_some_and(|(next, _)| next < hh) {
                    return Some(false);
                }
            }
        }
        emit(out, &h, group.iter().copied(), &mut scratch, valid)?;
    }
    Some(true)
}

/// Appends the sum of one header's entries: the entry itself if it is alone (its header
/// checked), else the decoded sum, unless it is zero.
fn emit<'a, const H: usize>(
    out: &mut Vec<u8>,
    h: &[u8; H],
    mut stats: impl Iterator<Item = &'a [u8]>,
    scratch: &mut Vec<u8>,
    valid: fn(&[u8; H]) -> bool,
) -> Option<()> {
    if !valid(h) {
        return None;
    }
    let first = stats.next()?;
    let Some(second) = stats.next() else {
        copy_entry(out, h, first);
        return Some(());
    };
    let mut sum = decode_stats(first).ok()?;
    for s in std::iter::once(second).chain(stats) {
        sum.merge(&decode_stats(s).ok()?);
    }
    push_entry(out, h, &sum, scratch);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmflow_dataflows::stats::Sums;
    use proptest::prelude::*;

    fn dim(t: u8, bucket: u32) -> Dim {
        let tag = [tag::MONTH, tag::GROUP, tag::SHIP, tag::SYSTEM, tag::HOUR][t as usize % 5];
        Dim::from_breakdown(
            tag,
            if tag == tag::HOUR {
                bucket % 168
            } else {
                bucket
            },
        )
        .expect("a breakdown")
    }

    fn stats(kills: i64, isk: i128) -> Stats {
        Stats {
            sums: Sums {
                kills,
                isk_destroyed_cents: isk,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    proptest! {
        /// A row operand built from buckets in any order, some repeated, some empty, holds
        /// each non-empty sum once, in bucket order: what a sorted fold gives.
        #[test]
        fn a_row_operand_is_the_sorted_sum_of_its_buckets(
            buckets in proptest::collection::vec((0u8..5, 0u32..6, -2i64..3), 0..40),
            members in proptest::collection::vec((0u64..6, -2i64..3), 0..20),
        ) {
            let mut operand = RowOperand::default();
            let mut want: BTreeMap<(u8, u32), Stats> = BTreeMap::new();
            for &(t, b, kills) in &buckets {
                let d = dim(t, b);
                operand.add(d, &stats(kills, 0));
                want.entry(d.breakdown().unwrap()).or_default().merge(&stats(kills, 0));
            }
            let got = decode(operand.take().unwrap()).unwrap();
            let want: Vec<(Dim, Stats)> = want
                .into_iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|((t, b), s)| (Dim::from_breakdown(t, b).unwrap(), s))
                .collect();
            prop_assert_eq!(got, want);
            // Emptied for the next row, which may be a member-day row.
            let mut want: BTreeMap<u64, Stats> = BTreeMap::new();
            for &(m, kills) in &members {
                operand.add(Dim::MemberDay(3, m), &stats(kills, 0));
                want.entry(m).or_default().merge(&stats(kills, 0));
            }
            let got = decode_members(operand.take().unwrap()).unwrap();
            let want: Vec<(u64, Stats)> = want.into_iter().filter(|(_, s)| !s.is_empty()).collect();
            prop_assert_eq!(got, want);
        }
    }

    fn row(deltas: &[(Dim, Stats)]) -> Vec<u8> {
        let mut sorted = deltas.to_vec();
        sorted.sort_by_key(|(d, _)| d.breakdown());
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        for (d, s) in sorted {
            push(&mut out, d, &s, &mut scratch);
        }
        out
    }

    proptest! {
        /// Merging operands (whole, or in partial merges grouped any way, as RocksDB may) reads
        /// back as the buckets' sums, zero sums absent: what unpacked rows would read.
        #[test]
        fn merges_are_bucket_sums(
            ops in proptest::collection::vec(
                proptest::collection::btree_map(
                    (0u8..5, 0u32..6),
                    (-2i64..3, prop_oneof![Just(0i128), Just(i128::MAX / 4), -5i128..5]),
                    0..8,
                ),
                1..24,
            ),
            split in 0usize..6,
        ) {
            let ops: Vec<Vec<(Dim, Stats)>> = ops
                .iter()
                .map(|m| m.iter().map(|(&(t, b), &(k, i))| (dim(t, b), stats(k, i))).collect())
                .collect();
            let mut expected: BTreeMap<Option<(u8, u32)>, (Dim, Stats)> = BTreeMap::new();
            for (d, s) in ops.iter().flatten() {
                expected.entry(d.breakdown()).or_insert((*d, Stats::default())).1.merge(s);
            }
            let expected: Vec<(Dim, Stats)> =
                expected.into_values().filter(|(_, s)| !s.is_empty()).collect();
            let rows: Vec<Vec<u8>> = ops.iter().map(|o| row(o)).collect();
            let whole = merge(None, rows.iter().map(|r| &r[..])).unwrap();
            prop_assert_eq!(decode(&whole).unwrap(), expected.clone());
            // A partial merge of the first operands, then a full merge onto it.
            let split = split.min(rows.len());
            let partial = merge(None, rows[..split].iter().map(|r| &r[..])).unwrap();
            let full = merge(Some(&partial), rows[split..].iter().map(|r| &r[..])).unwrap();
            prop_assert_eq!(decode(&full).unwrap(), expected.clone());
            for (d, s) in &expected {
                prop_assert_eq!(find(&full, *d).unwrap(), Some(*s));
            }
        }
    }

    proptest! {
        /// Member-day rows merge the same way, member by member, over the whole id range.
        #[test]
        fn member_merges_are_member_sums(
            ops in proptest::collection::vec(
                proptest::collection::btree_map(
                    prop_oneof![0u64..6, Just(u64::MAX), Just(1u64 << 63)],
                    (-2i64..3, -5i128..5),
                    0..8,
                ),
                1..24,
            ),
            split in 0usize..6,
        ) {
            let mut expected: BTreeMap<u64, Stats> = BTreeMap::new();
            for (m, &(k, i)) in ops.iter().flatten() {
                expected.entry(*m).or_default().merge(&stats(k, i));
            }
            expected.retain(|_, s| !s.is_empty());
            let expected: Vec<(u64, Stats)> = expected.into_iter().collect();
            let rows: Vec<Vec<u8>> = ops
                .iter()
                .map(|o| {
                    let (mut out, mut scratch) = (Vec::new(), Vec::new());
                    for (m, &(k, i)) in o {
                        Packed::push(&mut out, Dim::MemberDay(0, *m), &stats(k, i), &mut scratch);
                    }
                    out
                })
                .collect();
            let whole = merge_members(None, rows.iter().map(|r| &r[..])).unwrap();
            prop_assert_eq!(decode_members(&whole).unwrap(), expected.clone());
            let split = split.min(rows.len());
            let partial = merge_members(None, rows[..split].iter().map(|r| &r[..])).unwrap();
            let full = merge_members(Some(&partial), rows[split..].iter().map(|r| &r[..])).unwrap();
            prop_assert_eq!(decode_members(&full).unwrap(), expected.clone());
            for (m, s) in &expected {
                prop_assert_eq!(Packed::find(&full, Dim::MemberDay(0, *m)).unwrap(), Some(*s));
            }
            prop_assert_eq!(Packed::find(&full, Dim::MemberDay(0, 7)).unwrap(), None);
        }
    }

    /// A read decodes the wanted tags, at most `cap` buckets each, the first by bucket, from
    /// however large a row.
    #[test]
    fn reads_are_capped_per_tag() {
        let mut deltas: Vec<(Dim, Stats)> =
            (0..50_000).map(|i| (Dim::System(i), stats(1, 0))).collect();
        deltas.extend((0..30).map(|i| (Dim::Ship(i), stats(2, 0))));
        deltas.push((Dim::Hour(3), stats(0, 0)));
        let r = row(&deltas);
        let (got, truncated) = decode_tags(&r, |t| t == tag::SHIP || t == tag::SYSTEM, 10).unwrap();
        let expected: Vec<(Dim, Stats)> = (0..10)
            .map(|i| (Dim::Ship(i), stats(2, 0)))
            .chain((0..10).map(|i| (Dim::System(i), stats(1, 0))))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(truncated, vec![tag::SHIP, tag::SYSTEM]);
        let (_, truncated) = decode_tags(&r, |t| t == tag::SHIP, 30).unwrap();
        assert!(truncated.is_empty(), "30 ships fit a cap of 30");
        assert_eq!(
            decode(&r).unwrap().len(),
            50_030,
            "the empty hour bucket is not stored"
        );
    }

    /// A list out of bucket order (which no writer makes) is merged by sorting, not misread.
    #[test]
    fn a_list_out_of_order_is_sorted() {
        let (a, b) = (Dim::System(1), Dim::System(2));
        let mut unsorted = row(&[(b, stats(1, 0))]);
        unsorted.extend(row(&[(a, stats(1, 0))]));
        let other = row(&[(a, stats(2, 0)), (b, stats(3, 0))]);
        let merged = merge(Some(&other), [&unsorted[..]]).unwrap();
        assert_eq!(
            decode(&merged).unwrap(),
            vec![(a, stats(3, 0)), (b, stats(4, 0))]
        );
    }

    #[test]
    fn a_malformed_row_is_an_error_not_a_guess() {
        let good = row(&[(Dim::System(30000142), stats(1, 5))]);
        for cut in 1..good.len() {
            assert!(merge(Some(&good[..cut]), []).is_none(), "cut at {cut}");
            assert!(decode(&good[..cut]).is_err());
        }
        let mut bad_tag = good.clone();
        bad_tag[0] = 99;
        assert!(decode(&bad_tag).is_err());
    }
}
