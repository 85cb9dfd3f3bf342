//! The prepared checkpoint of a cluster process: its part of a checkpoint, durable before any
//! process writes the checkpoint to RocksDB, so that after a crash a process that had not
//! written it yet can (see [`super::decide`]).
//!
//! One file, `prepared-checkpoint` in `state.dir`, written to a temporary name, synced and
//! renamed: it is whole or absent. Layout: `KMFLOWP1`, the length of the metadata (u32 BE), the
//! metadata (JSON [`CheckpointMeta`], clock unset), the RocksDB `WriteBatch` bytes, and an
//! FNV-1a checksum of everything before it (u64 BE).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::source::fnv1a;
use crate::state::{Batch, CheckpointMeta, PreparedCheckpoint};

const MAGIC: &[u8; 8] = b"KMFLOWP1";
const FILE: &str = "prepared-checkpoint";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Makes `p` durable at [`path`].
pub fn save(state_dir: &Path, p: &PreparedCheckpoint) -> std::io::Result<()> {
    let meta = serde_json::to_vec(&p.meta)?;
    let data = p.batch.data();
    let mut bytes = Vec::with_capacity(8 + 4 + meta.len() + 9 + data.len() + 8);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&meta);
    bytes.extend_from_slice(&max_time_bytes(p.max_time));
    bytes.extend_from_slice(data);
    let sum = fnv1a(&bytes);
    bytes.extend_from_slice(&sum.to_be_bytes());
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path(state_dir))?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// The prepared checkpoint at [`path`], if there is a whole one.
pub fn load(state_dir: &Path) -> std::io::Result<Option<PreparedCheckpoint>> {
    let bytes = match std::fs::read(path(state_dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path(state_dir).display()),
        )
    };
    if bytes.len() < 8 + 4 + 9 + 8 || &bytes[..8] != MAGIC {
        return Err(bad("not a prepared checkpoint"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if fnv1a(body).to_be_bytes() != sum {
        return Err(bad("checksum mismatch"));
    }
    let meta_len = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    let meta_end = 12 + meta_len;
    if body.len() < meta_end + 9 {
        return Err(bad("truncated"));
    }
    let meta: CheckpointMeta =
        serde_json::from_slice(&body[12..meta_end]).map_err(|e| bad(&e.to_string()))?;
    let max_time = (body[meta_end] == 1).then(|| {
        i64::from_be_bytes(
            body[meta_end + 1..meta_end + 9]
                .try_into()
                .expect("8 bytes"),
        )
    });
    Ok(Some(PreparedCheckpoint {
        batch: Batch::from_data(&body[meta_end + 9..]).ok_or_else(|| bad("no batch header"))?,
        meta,
        max_time,
    }))
}

/// Deletes the prepared checkpoint (written, or dropped).
pub fn remove(state_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path(state_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn max_time_bytes(t: Option<i64>) -> [u8; 9] {
    let mut b = [0u8; 9];
    if let Some(t) = t {
        b[0] = 1;
        b[1..].copy_from_slice(&t.to_be_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_checkpoint_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut wb = rocksdb::WriteBatch::default();
        wb.put(b"k", b"v");
        let batch = Batch::from_data(wb.data()).unwrap();
        let meta = CheckpointMeta {
            epoch: 41,
            ..Default::default()
        };
        let p = PreparedCheckpoint {
            batch,
            meta: meta.clone(),
            max_time: Some(1_638_000_000),
        };
        save(dir.path(), &p).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.meta, meta);
        assert_eq!(back.max_time, Some(1_638_000_000));
        assert_eq!(back.batch.data(), p.batch.data());
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        let n = bytes.len();
        bytes[n - 12] ^= 1;
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let err = load(dir.path()).err().expect("a damaged file is refused");
        assert!(err.to_string().contains("checksum"), "{err}");
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert!(load(dir.path()).unwrap().is_none());
    }
}
