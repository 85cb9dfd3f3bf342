//! How statistics, positions and metadata are laid out as RocksDB bytes.

use super::*;

/// Stats are stored with varint integers: most fields of most keys are small or zero.
pub(super) fn stats_codec() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_varint_encoding()
}

pub fn encode_stats(s: &Stats) -> Vec<u8> {
    use bincode::Options;
    stats_codec().serialize(s).expect("stats serialize")
}

/// [`encode_stats`] into a reused buffer (the commit path).
pub(super) fn encode_stats_into(s: &Stats, buf: &mut Vec<u8>) {
    use bincode::Options;
    buf.clear();
    stats_codec()
        .serialize_into(&mut *buf, s)
        .expect("stats serialize");
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
