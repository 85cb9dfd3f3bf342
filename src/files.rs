//! Reads killmail messages from files: EVE Ref daily archives (`.tar.bz2` of
//! `killmails/<id>.json`), JSON Lines, JSON arrays (zKillboard API responses), single JSON
//! files, and directories of those. Each message is yielded as the bytes to produce.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::value::RawValue;

/// Where a message came from, for error reports.
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: PathBuf,
    /// Entry name in an archive, or `line N` / `element N`.
    pub within: String,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.file.display(), self.within)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not JSON: {1}")]
    Json(String, serde_json::Error),
    #[error("{0}: unsupported file type (expected .tar.bz2, .tar, .jsonl, .ndjson or .json)")]
    Unsupported(PathBuf),
}

/// Receives each message read (or the error reading it).
pub type MessageSink<'a> = dyn FnMut(Result<(Origin, Vec<u8>), FileError>) + 'a;

/// Calls `f` with every message under `paths`, in order (directories sorted by name).
/// Unreadable records are passed as errors and reading goes on.
pub fn for_each_message(paths: &[PathBuf], f: &mut MessageSink<'_>) {
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    f(Err(FileError::Io(path.clone(), e)));
                    continue;
                }
            };
            entries.sort();
            let supported: Vec<PathBuf> = entries
                .into_iter()
                .filter(|p| p.is_dir() || kind(p).is_some())
                .collect();
            for_each_message(&supported, f);
            continue;
        }
        if let Err(e) = read_file(path, f) {
            f(Err(e));
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    TarBz2,
    Tar,
    Lines,
    Json,
}

fn kind(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".tar.bz2") || name.ends_with(".tbz2") {
        Some(Kind::TarBz2)
    } else if name.ends_with(".tar") {
        Some(Kind::Tar)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Some(Kind::Lines)
    } else if name.ends_with(".json") {
        Some(Kind::Json)
    } else {
        None
    }
}

fn read_file(path: &Path, f: &mut MessageSink<'_>) -> Result<(), FileError> {
    let io = |e| FileError::Io(path.to_path_buf(), e);
    let k = kind(path).ok_or_else(|| FileError::Unsupported(path.to_path_buf()))?;
    let file = File::open(path).map_err(io)?;
    match k {
        Kind::TarBz2 => read_tar(path, bzip2::read::BzDecoder::new(BufReader::new(file)), f),
        Kind::Tar => read_tar(path, BufReader::new(file), f),
        Kind::Lines => {
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let origin = Origin {
                    file: path.to_path_buf(),
                    within: format!("line {}", i + 1),
                };
                match line {
                    Ok(l) if l.trim().is_empty() => {}
                    Ok(l) => f(Ok((origin, l.into_bytes()))),
                    Err(e) => return Err(io(e)),
                }
            }
            Ok(())
        }
        Kind::Json => {
            let mut bytes = Vec::new();
            BufReader::new(file).read_to_end(&mut bytes).map_err(io)?;
            split_json(path, "whole file", &bytes, f);
            Ok(())
        }
    }
}

/// A JSON array becomes one message per element; anything else is one message.
fn split_json(path: &Path, within: &str, bytes: &[u8], f: &mut MessageSink<'_>) {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        match serde_json::from_slice::<Vec<Box<RawValue>>>(bytes) {
            Ok(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let origin = Origin {
                        file: path.to_path_buf(),
                        within: format!("element {i}"),
                    };
                    f(Ok((origin, item.get().as_bytes().to_vec())));
                }
            }
            Err(e) => f(Err(FileError::Json(
                format!("{} ({within})", path.display()),
                e,
            ))),
        }
    } else {
        let origin = Origin {
            file: path.to_path_buf(),
            within: within.to_string(),
        };
        f(Ok((origin, bytes.to_vec())));
    }
}

fn read_tar<R: Read>(path: &Path, reader: R, f: &mut MessageSink<'_>) -> Result<(), FileError> {
    let io = |e| FileError::Io(path.to_path_buf(), e);
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(io)?;
        split_json(path, &name, &bytes, f);
    }
    Ok(())
}
