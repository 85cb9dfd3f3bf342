//! How statistics, positions and metadata are laid out as RocksDB bytes.

use super::*;

/// Stats are stored with varint integers: most fields of most keys are small or zero.
pub(super) fn stats_codec() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_varint_encoding()
}

pub fn encode_stats(s: &Stats) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32);
    encode_stats_into(s, &mut buf);
    buf
}

/// [`encode_stats`] into a reused buffer, written by hand: the bytes bincode's varint encoding
/// gives (a test checks them on arbitrary values), at a fraction of the cost of its generic
/// serializer, which was a tenth of the largest killmail's commit. The bytes are put together
/// on the stack and copied into `buf` once: a push per byte, each checking `buf`'s capacity,
/// was 2.5% of the largest killmail's work.
pub(super) fn encode_stats_into(s: &Stats, buf: &mut Vec<u8>) {
    let u = &s.sums;
    let mut out = Varints::default();
    for v in [
        u.involved,
        u.kills,
        u.losses,
        u.npc_losses,
        u.final_blows,
        u.solo_kills,
        u.solo_losses,
        u.solo_unknown,
        u.damage_done,
        u.damage_taken,
    ] {
        out.put(zigzag(v as i128));
    }
    out.put(zigzag(u.isk_destroyed_cents));
    out.put(zigzag(u.isk_lost_cents));
    out.put(zigzag(u.points_destroyed as i128));
    out.put(zigzag(u.points_lost as i128));
    for t in [s.seen.first, s.seen.last] {
        match t {
            None => out.byte(0),
            Some(t) => {
                out.byte(1);
                out.put(zigzag(t as i128));
            }
        }
    }
    buf.clear();
    buf.extend_from_slice(out.bytes());
}

/// The longest encoded `Stats` (162 bytes): 12 `i64` sums of at most 9 bytes (a marker and a
/// `u64`), 2 `i128` sums of at most 17, two times of at most 1 + 9. A breakdowns row stores
/// the length in one byte, which this fits.
pub(super) const MAX_STATS_BYTES: usize = 12 * 9 + 2 * 17 + 2 * (1 + 9);
const _: () = assert!(MAX_STATS_BYTES <= u8::MAX as usize);

/// Bincode varints written into a buffer on the stack.
struct Varints {
    bytes: [u8; MAX_STATS_BYTES],
    len: usize,
}

impl Default for Varints {
    fn default() -> Self {
        Varints {
            bytes: [0; MAX_STATS_BYTES],
            len: 0,
        }
    }
}

impl Varints {
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    #[inline(always)]
    fn le(&mut self, marker: u8, le: &[u8]) {
        self.byte(marker);
        self.bytes[self.len..self.len + le.len()].copy_from_slice(le);
        self.len += le.len();
    }

    /// Bincode's varint: one byte below 251, else a marker and the little-endian integer.
    #[inline(always)]
    fn put(&mut self, v: u128) {
        if v < 251 {
            self.byte(v as u8);
        } else if v <= u16::MAX as u128 {
            self.le(251, &(v as u16).to_le_bytes());
        } else if v <= u32::MAX as u128 {
            self.le(252, &(v as u32).to_le_bytes());
        } else if v <= u64::MAX as u128 {
            self.le(253, &(v as u64).to_le_bytes());
        } else {
            self.le(254, &v.to_le_bytes());
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Bincode's zigzag of a signed integer (the same for every width it fits in).
fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

pub fn decode_stats(b: &[u8]) -> Result<Stats, StateError> {
    use bincode::Options;
    stats_codec().deserialize(b).map_err(codec_err)
}

/// The RocksDB merge operator of the statistics column families: a merge operand is a delta,
/// and merging adds it ([`Stats::merge`]). Statistics no leaderboard depends on are written as
/// merges, without reading them first. `None` (a corrupt operand) makes RocksDB report
/// corruption rather than guess.
pub(super) fn merge_stats(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut acc = match existing {
        Some(v) => decode_stats(v).ok()?,
        None => Stats::default(),
    };
    for op in operands {
        acc.merge(&decode_stats(op).ok()?);
    }
    Some(encode_stats(&acc))
}

/// The merge operator of the `stats` column family: an entity's breakdowns row and a
/// corporation's member-day rows merge as lists ([`super::breakdowns`]), every other row as
/// [`merge_stats`].
pub(super) fn merge_stats_table(
    key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    match super::breakdowns::Packed::of_stored(key) {
        Some(p) => p.merge(existing, operands),
        None => merge_stats(key, existing, operands),
    }
}

/// A stored statistic; a merge can leave an all-zero value behind, which reads as absent.
pub(super) fn stored_stats(b: &[u8]) -> Result<Option<Stats>, StateError> {
    decode_stats(b).map(|s| (!s.is_empty()).then_some(s))
}

pub(super) fn position_key(topic: &str, partition: i32, offset: Option<i64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 13);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    if let Some(o) = offset {
        k.extend_from_slice(&o.to_be_bytes());
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Where bincode's varint changes width (zigzag 250/251, the u16, u32 and u64 steps).
    const EDGES: [i128; 12] = [
        125,
        -126,
        32767,
        32768,
        -32768,
        -32769,
        (1 << 31) - 1,
        1 << 31,
        -(1 << 31) - 1,
        (1 << 63) - 1,
        1 << 63,
        -(1 << 63) - 1,
    ];

    fn any_i64() -> impl Strategy<Value = i64> {
        prop_oneof![
            proptest::sample::select(&EDGES[..9]).prop_map(|e| e as i64),
            Just(i64::MAX),
            -300i64..300,
            -70_000i64..70_000,
            any::<i32>().prop_map(i64::from),
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MAX),
        ]
    }

    fn any_i128() -> impl Strategy<Value = i128> {
        prop_oneof![
            proptest::sample::select(&EDGES[..]),
            any_i64().prop_map(i128::from),
            any::<i128>(),
            Just(i128::MIN),
            Just(i128::MAX),
        ]
    }

    /// Every field at its widest encodes to exactly `MAX_STATS_BYTES`, bincode's bytes.
    #[test]
    fn the_widest_stats_fill_the_buffer_exactly() {
        let mut s = Stats::default();
        let u = &mut s.sums;
        for f in [
            &mut u.involved,
            &mut u.kills,
            &mut u.losses,
            &mut u.npc_losses,
            &mut u.final_blows,
            &mut u.solo_kills,
            &mut u.solo_losses,
            &mut u.solo_unknown,
            &mut u.damage_done,
            &mut u.damage_taken,
            &mut u.points_destroyed,
            &mut u.points_lost,
        ] {
            *f = i64::MIN;
        }
        (u.isk_destroyed_cents, u.isk_lost_cents) = (i128::MIN, i128::MIN);
        (s.seen.first, s.seen.last) = (Some(i64::MIN), Some(i64::MIN));
        let mut buf = Vec::new();
        encode_stats_into(&s, &mut buf);
        use bincode::Options;
        assert_eq!(buf.len(), MAX_STATS_BYTES);
        assert_eq!(buf, stats_codec().serialize(&s).unwrap());
    }

    proptest! {
        /// The hand-written encoder writes exactly bincode's bytes, so what it stores decodes
        /// (and stores written before it still read back).
        #[test]
        fn encode_stats_into_is_bincode(
            small in proptest::collection::vec(any_i64(), 12),
            isk in (any_i128(), any_i128()),
            seen in (proptest::option::of(any_i64()), proptest::option::of(any_i64())),
        ) {
            let mut s = Stats::default();
            let u = &mut s.sums;
            for (f, v) in [
                &mut u.involved, &mut u.kills, &mut u.losses, &mut u.npc_losses,
                &mut u.final_blows, &mut u.solo_kills, &mut u.solo_losses, &mut u.solo_unknown,
                &mut u.damage_done, &mut u.damage_taken, &mut u.points_destroyed,
                &mut u.points_lost,
            ].into_iter().zip(small) {
                *f = v;
            }
            (u.isk_destroyed_cents, u.isk_lost_cents) = isk;
            (s.seen.first, s.seen.last) = seen;
            let mut buf = Vec::new();
            encode_stats_into(&s, &mut buf);
            use bincode::Options;
            prop_assert_eq!(&buf, &stats_codec().serialize(&s).unwrap());
            prop_assert_eq!(decode_stats(&buf).unwrap(), s);
        }
    }
}
