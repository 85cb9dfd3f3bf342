//! A checkpoint's writes, encoded here in RocksDB's `WriteBatch` format and handed to RocksDB
//! in one copy ([`Batch::into_write_batch`]).
//!
//! The largest killmail's checkpoint is ~95,000 writes. Through the `rocksdb` crate each was a
//! call into RocksDB's C API (a column family lookup, a save point, two length-prefixed
//! appends to a `std::string` and an atomic flag): 3.5 ms for 95,000 writes, against 0.5 ms
//! appended to a buffer here. The format is RocksDB's (`db/write_batch.cc`): a 12-byte header
//! (sequence number, then the record count as a little-endian `u32`), then per record its type,
//! the column family's id as a varint (records of the default family have their own types and
//! no id), the key and the value, each a varint length and its bytes. A test checks the bytes
//! against the crate's `WriteBatch` for arbitrary writes.

use rocksdb::{ColumnFamily, WriteBatch};

/// A column family, by the id RocksDB gave it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Cf(u32);

impl Cf {
    /// The id of `cf`, as RocksDB writes it in a batch (read back from one put).
    pub(super) fn of(cf: &ColumnFamily) -> Option<Cf> {
        let mut wb = WriteBatch::default();
        wb.put_cf(cf, [], []);
        match wb.data().get(HEADER..)? {
            [DEFAULT_PUT, ..] => Some(Cf(0)),
            [CF_PUT, rest @ ..] => read_varint32(rest).map(Cf),
            _ => None,
        }
    }
}

const HEADER: usize = 12;
// Record types (`db/dbformat.h`): the default column family's, then with a column family id.
const DEFAULT_DELETE: u8 = 0x0;
const DEFAULT_PUT: u8 = 0x1;
const DEFAULT_MERGE: u8 = 0x2;
const CF_DELETE: u8 = 0x4;
const CF_PUT: u8 = 0x5;
const CF_MERGE: u8 = 0x6;

fn read_varint32(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for (i, &byte) in b.iter().take(5).enumerate() {
        v |= ((byte & 0x7f) as u32) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Writes in RocksDB's batch format, in the order given.
pub struct Batch {
    rep: Vec<u8>,
    count: u32,
}

impl Batch {
    /// An empty batch in `rep` (a buffer [`Batch::into_write_batch`] gave back: its pages are
    /// touched already), with room for `bytes` of records.
    pub(super) fn in_buffer(mut rep: Vec<u8>, bytes: usize) -> Batch {
        rep.clear();
        rep.reserve(HEADER + bytes);
        rep.extend_from_slice(&[0; HEADER]);
        Batch { rep, count: 0 }
    }

    pub(super) fn put_cf(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.record(cf, DEFAULT_PUT, CF_PUT, key.as_ref());
        self.slice(value.as_ref());
    }

    pub(super) fn merge_cf(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.record(cf, DEFAULT_MERGE, CF_MERGE, key.as_ref());
        self.slice(value.as_ref());
    }

    pub(super) fn delete_cf(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        self.record(cf, DEFAULT_DELETE, CF_DELETE, key.as_ref());
    }

    /// How many writes it holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Its bytes, in RocksDB's batch format (what [`Batch::from_data`] reads back).
    pub fn data(&self) -> &[u8] {
        &self.rep
    }

    /// A batch of `data` (from [`Batch::data`]); `None` if it has no batch header.
    pub fn from_data(data: &[u8]) -> Option<Batch> {
        let count = u32::from_le_bytes(data.get(8..HEADER)?.try_into().ok()?);
        Some(Batch {
            rep: data.to_vec(),
            count,
        })
    }

    /// The `WriteBatch` of these writes (one copy of the bytes), and the buffer, for the next.
    pub(super) fn into_write_batch(self) -> (WriteBatch, Vec<u8>) {
        (WriteBatch::from_data(&self.rep), self.rep)
    }

    fn record(&mut self, Cf(id): Cf, default: u8, with_cf: u8, key: &[u8]) {
        self.count = self
            .count
            .checked_add(1)
            .expect("fewer than 2^32 writes in a batch");
        self.rep[8..HEADER].copy_from_slice(&self.count.to_le_bytes());
        if id == 0 {
            self.rep.push(default);
        } else {
            self.rep.push(with_cf);
            self.varint(id);
        }
        self.slice(key);
    }

    fn slice(&mut self, b: &[u8]) {
        self.varint(u32::try_from(b.len()).expect("a key or value under 4 GiB"));
        self.rep.extend_from_slice(b);
    }

    fn varint(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.rep.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.rep.push(v as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Put(usize, Vec<u8>, Vec<u8>),
        Merge(usize, Vec<u8>, Vec<u8>),
        Delete(usize, Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let bytes = || {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40),
                // Past one byte of varint length.
                proptest::collection::vec(any::<u8>(), 120..400),
            ]
        };
        prop_oneof![
            (0..3usize, bytes(), bytes()).prop_map(|(c, k, v)| Op::Put(c, k, v)),
            (0..3usize, bytes(), bytes()).prop_map(|(c, k, v)| Op::Merge(c, k, v)),
            (0..3usize, bytes()).prop_map(|(c, k)| Op::Delete(c, k)),
        ]
    }

    proptest! {
        /// The same bytes as the crate's `WriteBatch` (default family and others), so RocksDB
        /// reads exactly the writes given.
        #[test]
        fn batches_are_rocksdbs_bytes(ops in proptest::collection::vec(op(), 0..60)) {
            let dir = tempfile::tempdir().unwrap();
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = rocksdb::DB::open_cf(&opts, dir.path(), ["a", "b"]).unwrap();
            let families = [
                db.cf_handle("default").unwrap(),
                db.cf_handle("a").unwrap(),
                db.cf_handle("b").unwrap(),
            ];
            let ids: Vec<Cf> = families.iter().map(|cf| Cf::of(cf).unwrap()).collect();
            prop_assert_eq!(&ids, &[Cf(0), Cf(1), Cf(2)]);
            let mut theirs = WriteBatch::default();
            let mut ours = Batch::in_buffer(vec![1, 2, 3], 0);
            for op in &ops {
                match op {
                    Op::Put(c, k, v) => {
                        theirs.put_cf(families[*c], k, v);
                        ours.put_cf(ids[*c], k, v);
                    }
                    Op::Merge(c, k, v) => {
                        theirs.merge_cf(families[*c], k, v);
                        ours.merge_cf(ids[*c], k, v);
                    }
                    Op::Delete(c, k) => {
                        theirs.delete_cf(families[*c], k);
                        ours.delete_cf(ids[*c], k);
                    }
                }
            }
            let (ours, _) = ours.into_write_batch();
            prop_assert_eq!(ours.data(), theirs.data());
            prop_assert_eq!(ours.len(), theirs.len());
        }
    }
}
