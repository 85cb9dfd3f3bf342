//! An entity's breakdowns row ([`StatKey::breakdowns_key`]): its month, group, ship, system and
//! hour buckets in one value, which the merge operator adds lists into.
//!
//! The value is a list of entries sorted by tag, then bucket:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | the dimension's [`tag`] (`MONTH`, `GROUP`, `SHIP`, `SYSTEM`, `HOUR`) |
//! | 4 | the bucket, big-endian (so the first five bytes order the entries) |
//! | 1 | the length of the statistics that follow (an encoded [`Stats`] is at most [`MAX_STATS_BYTES`], 162) |
//! | n | the bucket's statistics, as every other row ([`encode_stats_into`]) |
//!
//! A merge operand is such a list too: the buckets a checkpoint touched, with their deltas.
//! Merging copies an entry as it is unless several lists have its bucket, so a compaction
//! decodes only the buckets that changed; a bucket whose sum is zero is dropped (a zero
//! statistic reads as absent everywhere).

use super::codec::{decode_stats, encode_stats_into};
use super::*;

/// The header of an entry: tag and big-endian bucket, in the entries' order.
type Header = [u8; 5];

/// An entry: its header and its encoded statistics.
type Entry<'a> = (Header, &'a [u8]);

/// Appends the entry of `dim` (a breakdown dimension) with `stats` to `row`; an empty `stats`
/// is left out. `scratch` is a reused buffer.
pub(super) fn push(row: &mut Vec<u8>, dim: Dim, stats: &Stats, scratch: &mut Vec<u8>) {
    let Some((tag, bucket)) = dim.breakdown() else {
        debug_assert!(false, "{dim:?} is not a breakdown");
        return;
    };
    if stats.is_empty() {
        return;
    }
    encode_stats_into(stats, scratch);
    let len = u8::try_from(scratch.len()).expect("an encoded Stats is at most MAX_STATS_BYTES");
    row.push(tag);
    row.extend_from_slice(&bucket.to_be_bytes());
    row.push(len);
    row.extend_from_slice(scratch);
}

/// The entries of a row or operand, one by one: header and encoded statistics; an `Err` item
/// (then nothing) if malformed. Nothing is collected, so skipping entries costs only their
/// headers.
struct Entries<'a>(&'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.is_empty() {
            return None;
        }
        let entry = (|| {
            let header: Header = b.get(..5)?.try_into().ok()?;
            let len = *b.get(5)? as usize;
            Some((header, b.get(6..6 + len)?, 6 + len))
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
fn copy_entry(out: &mut Vec<u8>, h: &Header, stats: &[u8]) {
    out.extend_from_slice(h);
    out.push(stats.len() as u8);
    out.extend_from_slice(stats);
}

fn dim_of(h: &Header) -> Option<Dim> {
    Dim::from_breakdown(h[0], u32::from_be_bytes(h[1..].try_into().ok()?))
}

/// Every non-empty bucket of a stored row, in tag and bucket order.
pub(super) fn decode(b: &[u8]) -> Result<Vec<(Dim, Stats)>, StateError> {
    decode_tags(b, |_| true, usize::MAX)
}

/// The non-empty buckets of a stored row whose tag is `wanted`, at most `cap` of each tag (the
/// first by bucket), in tag and bucket order. Only those are decoded: a row has as many buckets
/// as its entity has distinct systems and ships, which a producer decides, so what a read costs
/// beyond skipping entries is bounded by `cap`.
pub(super) fn decode_tags(
    b: &[u8],
    wanted: impl Fn(u8) -> bool,
    cap: usize,
) -> Result<Vec<(Dim, Stats)>, StateError> {
    let bad = || codec_err("bad breakdowns row");
    let mut out = Vec::new();
    let mut taken = [0usize; 256];
    for entry in Entries(b) {
        let (h, s) = entry.map_err(|()| bad())?;
        if !wanted(h[0]) || taken[h[0] as usize] >= cap {
            continue;
        }
        let stats = decode_stats(s)?;
        if !stats.is_empty() {
            taken[h[0] as usize] += 1;
            out.push((dim_of(&h).ok_or_else(bad)?, stats));
        }
    }
    out.sort_by_key(|(d, _)| d.breakdown());
    Ok(out)
}

/// The statistics of bucket `dim` in a stored row, if present and non-zero.
pub(super) fn find(b: &[u8], dim: Dim) -> Result<Option<Stats>, StateError> {
    let bad = || codec_err("bad breakdowns row");
    let (tag, bucket) = dim.breakdown().ok_or_else(bad)?;
    let mut want = [tag, 0, 0, 0, 0];
    want[1..].copy_from_slice(&bucket.to_be_bytes());
    let mut sum: Option<Stats> = None;
    for entry in Entries(b) {
        let (h, s) = entry.map_err(|()| bad())?;
        if h == want {
            sum.get_or_insert_with(Stats::default)
                .merge(&decode_stats(s)?);
        }
    }
    Ok(sum.filter(|s| !s.is_empty()))
}

/// The merge of breakdowns rows: `existing` (if any) and the `operands`, in that order, bucket
/// by bucket. `None` (a malformed row) makes RocksDB report corruption rather than guess.
///
/// Every list is in bucket order, so they are merged in one pass, each entry copied as bytes
/// unless several lists have its bucket: a compaction of a large row costs about a copy of
/// it. Many operands at once, or a list out of order, take a sort instead.
pub(super) fn merge<'a>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let lists: Vec<&[u8]> = existing.into_iter().chain(operands).collect();
    let size = lists.iter().map(|l| l.len()).sum();
    let mut out = Vec::with_capacity(size);
    if lists.len() <= MERGE_LISTS && merge_sorted(&lists, &mut out)? {
        return Some(out);
    }
    out.clear();
    let mut all: Vec<(Header, &[u8])> = Vec::new();
    for b in &lists {
        for entry in Entries(b) {
            all.push(entry.ok()?);
        }
    }
    // Stable: the lists' order is kept among the entries of one bucket.
    all.sort_by_key(|(h, _)| *h);
    let mut scratch = Vec::with_capacity(64);
    let mut rest = &all[..];
    while let Some(((h, first), tail)) = rest.split_first() {
        let same = tail.iter().take_while(|(t, _)| t == h).count();
        let group = std::iter::once(*first).chain(tail[..same].iter().map(|(_, s)| *s));
        emit(&mut out, h, group, &mut scratch)?;
        rest = &tail[same..];
    }
    Some(out)
}

/// Lists merged in one pass at most (each step looks at every list's next entry).
const MERGE_LISTS: usize = 16;

/// Merges `lists`, each in bucket order, into `out` in one pass. `Some(false)` if a list is
/// out of order (`out` is then incomplete), `None` if one is malformed.
fn merge_sorted(lists: &[&[u8]], out: &mut Vec<u8>) -> Option<bool> {
    let mut cursors: Vec<(Entries, Option<Entry>)> = Vec::with_capacity(lists.len());
    for b in lists {
        let mut it = Entries(b);
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
        emit(out, &h, group.iter().copied(), &mut scratch)?;
    }
    Some(true)
}

/// Appends the sum of one bucket's entries: the entry itself if it is alone (its tag checked),
/// else the decoded sum, unless it is zero.
fn emit<'a>(
    out: &mut Vec<u8>,
    h: &Header,
    mut stats: impl Iterator<Item = &'a [u8]>,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    let dim = dim_of(h)?;
    let first = stats.next()?;
    let Some(second) = stats.next() else {
        copy_entry(out, h, first);
        return Some(());
    };
    let mut sum = decode_stats(first).ok()?;
    for s in std::iter::once(second).chain(stats) {
        sum.merge(&decode_stats(s).ok()?);
    }
    push(out, dim, &sum, scratch);
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

    /// A read decodes the wanted tags, at most `cap` buckets each, the first by bucket, from
    /// however large a row.
    #[test]
    fn reads_are_capped_per_tag() {
        let mut deltas: Vec<(Dim, Stats)> =
            (0..50_000).map(|i| (Dim::System(i), stats(1, 0))).collect();
        deltas.extend((0..30).map(|i| (Dim::Ship(i), stats(2, 0))));
        deltas.push((Dim::Hour(3), stats(0, 0)));
        let r = row(&deltas);
        let got = decode_tags(&r, |t| t == tag::SHIP || t == tag::SYSTEM, 10).unwrap();
        let expected: Vec<(Dim, Stats)> = (0..10)
            .map(|i| (Dim::Ship(i), stats(2, 0)))
            .chain((0..10).map(|i| (Dim::System(i), stats(1, 0))))
            .collect();
        assert_eq!(got, expected);
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
