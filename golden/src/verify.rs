//! One streamed pass over a WIM: the sha256 of the whole file and, when the WIM has an
//! integrity table, the SHA-1 of each chunk it covers. Memory stays at one read buffer plus
//! the integrity table (capped), whatever the file's size; the pass can be cancelled between
//! reads and reports progress after each.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::header::{HEADER_LEN, WimHeader};

/// Read size: large enough that syscalls do not matter, small enough to stay cache-friendly.
const BUFFER: usize = 4 * 1024 * 1024;
/// The integrity table has one 20-byte SHA-1 per chunk; 10 MiB chunks (the usual size) over a
/// 1 TiB WIM need about 2 MiB. A header claiming more is refused before allocating.
pub const MAX_INTEGRITY_TABLE: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}; check the path and its permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: the file shrank while it was being read (expected {expected} bytes, read {read}); is it still being copied?"
    )]
    Shrank {
        path: PathBuf,
        expected: u64,
        read: u64,
    },
    #[error("{path}: the integrity table is malformed ({why}): the file is damaged; copy it again")]
    BadIntegrityTable { path: PathBuf, why: String },
    #[error("verification of {path} was cancelled")]
    Cancelled { path: PathBuf },
}

/// What the caller wants checked.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Expected sha256 of the whole file (lowercase hex); compared when given.
    pub expected_sha256: Option<String>,
    /// Check the integrity table when the WIM has one.
    pub check_integrity: bool,
    /// Skip the whole-file sha256 (an integrity-only pass; the report's sha256 is then empty).
    pub skip_sha256: bool,
}

/// Progress of the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Integrity table outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Integrity {
    /// The WIM has no integrity table (captured without --check).
    Absent,
    /// Not requested.
    Skipped,
    Ok {
        chunks: u32,
        chunk_size: u32,
    },
    /// A chunk's SHA-1 differs: the bytes in `[offset, offset + len)` changed.
    Mismatch {
        chunk: u32,
        offset: u64,
        len: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamReport {
    pub sha256: String,
    /// None when no sha256 was expected.
    pub sha256_matches: Option<bool>,
    pub integrity: Integrity,
    pub bytes: u64,
}

struct Table {
    chunk_size: u64,
    /// Bytes the table covers, from the end of the header.
    covered_end: u64,
    hashes: Vec<[u8; 20]>,
}

/// Runs the pass. `header` is the file's parsed header (from [`crate::inspect`]).
pub fn stream_verify(
    path: &Path,
    header: &WimHeader,
    options: &StreamOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(Progress),
) -> Result<StreamReport, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let table = if options.check_integrity && header.has_integrity_table() {
        Some(read_table(path, &mut file, header, total)?)
    } else {
        None
    };
    file.seek(SeekFrom::Start(0)).map_err(io)?;

    let mut sha256 = Sha256::new();
    let mut buf = vec![0u8; BUFFER];
    let mut pos: u64 = 0;
    let mut chunk_hasher = Sha1::new();
    let mut chunk_index: usize = 0;
    let mut chunk_filled: u64 = 0;
    let mut mismatch: Option<Integrity> = None;
    progress(Progress { done: 0, total });
    loop {
        let n = read_next(&mut file, &mut buf, cancel, path, io)?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        if !options.skip_sha256 {
            sha256.update(data);
        }
        if let (Some(t), None) = (&table, &mismatch) {
            // Feed the part of this buffer that lies in the covered range, cut at chunk edges.
            let start = pos.max(HEADER_LEN as u64);
            let end = (pos + n as u64).min(t.covered_end);
            let mut at = start;
            while at < end {
                let room = t.chunk_size - chunk_filled;
                let take = room.min(end - at);
                let lo = (at - pos) as usize;
                chunk_hasher.update(&data[lo..lo + take as usize]);
                chunk_filled += take;
                at += take;
                let chunk_end =
                    HEADER_LEN as u64 + (chunk_index as u64) * t.chunk_size + chunk_filled;
                if chunk_filled == t.chunk_size || chunk_end == t.covered_end {
                    let digest: [u8; 20] = chunk_hasher.finalize_reset().into();
                    if t.hashes.get(chunk_index) != Some(&digest) {
                        let offset = HEADER_LEN as u64 + chunk_index as u64 * t.chunk_size;
                        mismatch = Some(Integrity::Mismatch {
                            chunk: chunk_index as u32,
                            offset,
                            len: chunk_filled,
                        });
                        break;
                    }
                    chunk_index += 1;
                    chunk_filled = 0;
                }
            }
        }
        pos += n as u64;
        progress(Progress { done: pos, total });
    }
    if pos != total {
        return Err(VerifyError::Shrank {
            path: path.to_path_buf(),
            expected: total,
            read: pos,
        });
    }
    let sha256 = if options.skip_sha256 {
        String::new()
    } else {
        hex(&sha256.finalize())
    };
    let integrity = match (table, mismatch) {
        (_, Some(m)) => m,
        (Some(t), None) => Integrity::Ok {
            chunks: t.hashes.len() as u32,
            chunk_size: t.chunk_size as u32,
        },
        (None, None) if !header.has_integrity_table() => Integrity::Absent,
        (None, None) => Integrity::Skipped,
    };
    let sha256_matches = options
        .expected_sha256
        .as_ref()
        .filter(|_| !options.skip_sha256)
        .map(|want| want.trim().eq_ignore_ascii_case(&sha256));
    Ok(StreamReport {
        sha256,
        sha256_matches,
        integrity,
        bytes: pos,
    })
}

/// Reads and checks the integrity table: `u32 size, u32 entries, u32 chunk size`, then one
/// SHA-1 per chunk of the bytes from the end of the header to the end of the blob table.
fn read_table(
    path: &Path,
    file: &mut File,
    header: &WimHeader,
    file_len: u64,
) -> Result<Table, VerifyError> {
    let bad = |why: String| VerifyError::BadIntegrityTable {
        path: path.to_path_buf(),
        why,
    };
    let res = header.integrity;
    if res.is_compressed() {
        return Err(bad("it is marked compressed".into()));
    }
    if res.size_in_wim < 12 || res.size_in_wim > MAX_INTEGRITY_TABLE {
        return Err(bad(format!("{} bytes long", res.size_in_wim)));
    }
    let covered_end = header
        .blob_table
        .end()
        .filter(|&e| e >= HEADER_LEN as u64 && e <= file_len)
        .ok_or_else(|| bad("the blob table it covers lies outside the file".into()))?;
    file.seek(SeekFrom::Start(res.offset))
        .map_err(|source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut raw = Vec::with_capacity(res.size_in_wim as usize);
    file.take(res.size_in_wim)
        .read_to_end(&mut raw)
        .map_err(|source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if (raw.len() as u64) < res.size_in_wim {
        return Err(bad("the file ends inside it".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let (size, entries, chunk_size) = (u32_at(0) as u64, u32_at(4) as u64, u32_at(8) as u64);
    if size != res.size_in_wim {
        return Err(bad(format!(
            "it says it is {size} bytes, the header says {}",
            res.size_in_wim
        )));
    }
    if chunk_size == 0 {
        return Err(bad("chunk size 0".into()));
    }
    if 12 + entries * 20 != size {
        return Err(bad(format!("{entries} entries do not fit in {size} bytes")));
    }
    let covered = covered_end - HEADER_LEN as u64;
    let expected_entries = covered.div_ceil(chunk_size);
    if entries != expected_entries {
        return Err(bad(format!(
            "{entries} chunks of {chunk_size} bytes, but {covered} covered bytes need {expected_entries}"
        )));
    }
    let hashes = raw[12..]
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok(Table {
        chunk_size,
        covered_end,
        hashes,
    })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// sha256 of a whole file, streamed (for benchmarks and callers without a WIM header).
pub fn sha256_file(
    path: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(Progress),
) -> Result<String, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BUFFER];
    let mut done = 0u64;
    loop {
        let n = read_next(&mut file, &mut buf, cancel, path, io)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        done += n as u64;
        progress(Progress { done, total });
    }
    Ok(hex(&sha.finalize()))
}

/// The next bytes of a streamed check: 0 at the end of the file, the cancellation as an error
/// between reads, and interrupted reads retried.
fn read_next(
    file: &mut File,
    buf: &mut [u8],
    cancel: &AtomicBool,
    path: &Path,
    io: impl Fn(std::io::Error) -> VerifyError,
) -> Result<usize, VerifyError> {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(VerifyError::Cancelled {
                path: path.to_path_buf(),
            });
        }
        match file.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        }
    }
}
