//! How statistics, positions and metadata are laid out as RocksDB bytes.

use super::*;
use kmflow_dataflows::stats::Sums;

/// Bincode's varint encoding of [`Stats`], which formats up to 5 stored (still read back, see
/// [`decode_stats`]).
pub(super) fn stats_codec() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_varint_encoding()
}

pub fn encode_stats(s: &Stats) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32);
    encode_stats_into(s, &mut buf);
    buf
}

/// The first byte of a statistic in the compact encoding (format 6). Earlier formats stored
/// bincode's varint encoding, whose first byte (a value below 251, or a width marker up to 254)
/// is never this one: both read back ([`decode_stats`]), and merges write the compact one.
const COMPACT: u8 = 0xFF;

/// [`encode_stats`] into a reused buffer (emptied first). The compact encoding: [`COMPACT`], a 16-bit
/// little-endian map of what follows (bit `i` for the `i`-th field of [`Sums`] in declaration
/// order when it is not zero, bit 14 for the first time seen, bit 15 for the last), then those
/// fields as LEB128 varints of their zigzag, the last time relative to the first. Most fields
/// of most statistics are zero (a day bucket's kills, a system's involvement): in bincode's
/// varints each zero took a byte and each time nine, and a 20,000-attacker killmail's
/// checkpoint was 8.9 MB.
pub(super) fn encode_stats_into(s: &Stats, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(MAX_STATS_BYTES);
    let mut out = Varints {
        bytes: &mut buf.spare_capacity_mut()[..MAX_STATS_BYTES],
        len: 3,
    };
    let mut map = 0u16;
    for (bit, v) in s.sums.fields().into_iter().enumerate() {
        if v != 0 {
            map |= 1 << bit;
            out.put(zigzag(v));
        }
    }
    if let Some(first) = s.seen.first {
        map |= 1 << 14;
        out.put(zigzag(first as i128));
    }
    if let Some(last) = s.seen.last {
        map |= 1 << 15;
        out.put(zigzag(last as i128 - s.seen.first.unwrap_or(0) as i128));
    }
    let [lo, hi] = map.to_le_bytes();
    for (at, b) in [COMPACT, lo, hi].into_iter().enumerate() {
        out.bytes[at].write(b);
    }
    let len = out.len;
    // SAFETY: the first `len` bytes of the spare capacity are written above (the marker and
    // the map, then every varint byte `put` wrote, in order from 3), and `len` is at most
    // MAX_STATS_BYTES, which was reserved.
    unsafe { buf.set_len(len) };
}

/// The longest encoded `Stats` (181 bytes): the marker and the map, 12 `i64` sums of at most
/// 10 bytes, 2 `i128` sums of at most 19, the first time of at most 10 and the last (relative
/// to it, up to 2^65) of at most 10. A breakdowns row stores the length in one byte, which this
/// fits.
pub(super) const MAX_STATS_BYTES: usize = 3 + 12 * 10 + 2 * 19 + 2 * 10;
const _: () = assert!(MAX_STATS_BYTES <= u8::MAX as usize);

/// Varints written into a buffer's spare capacity, which is never zeroed first (on the
/// largest killmail, zeroing a buffer per statistic was a twentieth of its batch).
struct Varints<'a> {
    bytes: &'a mut [std::mem::MaybeUninit<u8>],
    len: usize,
}

impl Varints<'_> {
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.bytes[self.len].write(b);
        self.len += 1;
    }

    /// LEB128: seven bits a byte, low first, the high bit set on every byte but the last.
    #[inline(always)]
    fn put(&mut self, mut v: u128) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }
}

/// The zigzag of a signed integer: small magnitudes, either sign, give small numbers.
fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn unzigzag(v: u128) -> i128 {
    (v >> 1) as i128 ^ -((v & 1) as i128)
}

/// A statistic as stored: the compact encoding, or bincode's (formats up to 5).
pub fn decode_stats(b: &[u8]) -> Result<Stats, StateError> {
    if b.first() == Some(&COMPACT) {
        return decode_compact(b)
            .ok_or_else(|| StateError::Corrupt(format!("a malformed statistic: {b:02x?}")));
    }
    use bincode::Options;
    stats_codec().deserialize(b).map_err(codec_err)
}

/// The compact encoding (see [`encode_stats_into`]); `None` unless `b` is exactly one.
fn decode_compact(b: &[u8]) -> Option<Stats> {
    let map = u16::from_le_bytes(b.get(1..3)?.try_into().ok()?);
    let mut at = 3;
    let mut next = |bit: u32| -> Option<i128> {
        if map & (1 << bit) == 0 {
            return Some(0);
        }
        let mut v: u128 = 0;
        let mut shift = 0;
        loop {
            let byte = *b.get(at)?;
            at += 1;
            // At most 19 bytes: the high bits of the 19th are beyond a u128.
            if shift == 126 && byte > 0b11 {
                return None;
            }
            v |= ((byte & 0x7f) as u128) << shift;
            if byte & 0x80 == 0 {
                return Some(unzigzag(v));
            }
            shift += 7;
            if shift > 126 {
                return None;
            }
        }
    };
    let mut fields = [0i128; 14];
    for (bit, f) in fields.iter_mut().enumerate() {
        *f = next(bit as u32)?;
    }
    let small = |v: i128| i64::try_from(v).ok();
    let mut s = Stats {
        sums: Sums::from_fields(fields)?,
        ..Default::default()
    };
    let first = next(14)?;
    let last = next(15)?;
    if map & (1 << 14) != 0 {
        s.seen.first = Some(small(first)?);
    }
    if map & (1 << 15) != 0 {
        s.seen.last = Some(small(
            (s.seen.first.unwrap_or(0) as i128).checked_add(last)?,
        )?);
    }
    (at == b.len()).then_some(s)
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
    use kmflow_dataflows::stats::Seen;
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

    /// The fields of [`Sums`] that are `i128` (the ISK sums), by position in `Sums::fields`.
    const WIDE: [usize; 2] = [10, 11];

    fn any_stats() -> impl Strategy<Value = Stats> {
        (
            proptest::collection::vec(any_i64(), 14),
            (any_i128(), any_i128()),
            (
                proptest::option::of(any_i64()),
                proptest::option::of(any_i64()),
            ),
        )
            .prop_map(|(small, isk, seen)| {
                let mut fields: [i128; 14] = std::array::from_fn(|i| small[i] as i128);
                (fields[WIDE[0]], fields[WIDE[1]]) = isk;
                let sums = Sums::from_fields(fields).expect("every field fits");
                Stats {
                    sums,
                    seen: Seen {
                        first: seen.0,
                        last: seen.1,
                    },
                }
            })
    }

    /// Every field at its widest encodes to exactly `MAX_STATS_BYTES`, and reads back.
    #[test]
    fn the_widest_stats_fill_the_buffer_exactly() {
        let mut fields = [i64::MIN as i128; 14];
        for i in WIDE {
            fields[i] = i128::MIN;
        }
        let s = Stats {
            sums: Sums::from_fields(fields).unwrap(),
            // The last time as far from the first as two i64 can be.
            seen: Seen {
                first: Some(i64::MIN),
                last: Some(i64::MAX),
            },
        };
        let mut buf = Vec::new();
        encode_stats_into(&s, &mut buf);
        assert_eq!(buf.len(), MAX_STATS_BYTES);
        assert_eq!(decode_stats(&buf).unwrap(), s);
        // Nothing at all is the marker and an empty map.
        encode_stats_into(&Stats::default(), &mut buf);
        assert_eq!(buf, [COMPACT, 0, 0]);
    }

    proptest! {
        /// What the encoder writes reads back, within `MAX_STATS_BYTES`; and what earlier
        /// formats stored (bincode's varints) still reads back.
        #[test]
        fn stats_read_back_in_both_encodings(s in any_stats()) {
            let mut buf = Vec::new();
            encode_stats_into(&s, &mut buf);
            prop_assert!(buf.len() <= MAX_STATS_BYTES);
            prop_assert_eq!(decode_stats(&buf).unwrap(), s);
            use bincode::Options;
            let old = stats_codec().serialize(&s).unwrap();
            prop_assert_ne!(old[0], COMPACT);
            prop_assert_eq!(decode_stats(&old).unwrap(), s);
        }

        /// A compact statistic cut short, run on, or with a flipped byte is an error or
        /// another statistic, never a panic.
        #[test]
        fn damaged_stats_are_errors_not_panics(s in any_stats(), at in any::<prop::sample::Index>(), flip in 1u8..) {
            let mut buf = Vec::new();
            encode_stats_into(&s, &mut buf);
            for cut in 1..buf.len() {
                prop_assert!(decode_stats(&buf[..cut]).is_err());
            }
            let mut longer = buf.clone();
            longer.push(0);
            prop_assert!(decode_stats(&longer).is_err());
            let i = 1 + at.index(buf.len() - 1);
            buf[i] ^= flip;
            let _ = decode_stats(&buf);
        }
    }

    /// A last time that would overflow past the first (a 19-byte varint of i128::MAX) is an
    /// error, not an overflow.
    #[test]
    fn a_last_time_beyond_every_integer_is_an_error() {
        let mut b = vec![COMPACT, 0x00, 0xC0, 0x02];
        b.push(0xFE);
        b.extend([0xFF; 17]);
        b.push(0x03);
        assert!(decode_stats(&b).is_err());
    }
}
