//! The files of attachments (docs/protocol.md §15): sealing a file into a blob this node
//! offers, reading a sealed chunk of one for a peer that asks, and the partial and finished
//! files of downloads. Blocking file I/O, called from `spawn_blocking`; the transfer itself
//! is `service::attachments`.
//!
//! On disk, in the data directory:
//! - `blobs/sent/ROOT`: a whole sealed blob this node offers, the manifest first, then the
//!   data chunks in order ([`blob::offset_of`]); written under `blobs/tmp/` and renamed
//!   into place once complete, so that a half-sealed blob is never offered.
//! - `blobs/partial/ROOT`: the plaintext of a download, the chunks received so far in
//!   order, each checked against the manifest before it was written. A restart resumes
//!   after the last whole chunk.
//! - `attachments/NAME`: finished downloads, renamed from the partial file once every
//!   chunk is in: nothing is written at the final path before the whole file is checked.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::rngs::OsRng;
use sotto_protocol::blob::{self, BlobRef, ChunkAnswer, ChunkRequest, Sealer, CHUNK_BYTES};

/// Sealed blobs this node offers are removed this long after they were sealed.
pub const OFFER_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most bytes of sealed blobs this node keeps on offer; beyond, the oldest go first.
pub const MAX_OFFERED_BYTES: u64 = 4 << 30;

/// Why a file could not be sealed, or a download written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: String },
    #[error("the file is too large: limit {limit} bytes, got {got}")]
    TooLarge { limit: u64, got: u64 },
    #[error("{path} changed while it was read; send it again")]
    Changed { path: String },
    #[error("cannot write in the data directory: {0}")]
    Write(std::io::Error),
    #[error("{path} exists; give a path that does not")]
    Exists { path: String },
    #[error("cannot write {path}: {source}")]
    Out {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Blob(#[from] blob::BlobError),
}

/// A file, sealed and on offer.
#[derive(Clone, Debug)]
pub struct SealedFile {
    pub blob: BlobRef,
    /// The MIME type found in the file's first bytes.
    pub mime: String,
    /// The file's name, without its directories.
    pub name: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn offered_path(blobs_dir: &Path, root: &[u8; 32]) -> PathBuf {
    blobs_dir.join("sent").join(hex(root))
}

/// The partial file of the download of the blob named `root`.
pub fn partial_path(blobs_dir: &Path, root: &[u8; 32]) -> PathBuf {
    blobs_dir.join("partial").join(hex(root))
}

/// The MIME type of a file that starts with `head`: from its bytes, never its name.
pub fn sniff(head: &[u8]) -> String {
    match infer::get(head) {
        Some(t) => t.mime_type().to_owned(),
        None if !head.is_empty() && std::str::from_utf8(head).is_ok() => "text/plain".into(),
        None => "application/octet-stream".into(),
    }
}

/// Seal the file at `path` under a fresh key into `blobs/sent/ROOT`, refusing files over
/// `limit` bytes.
pub fn seal_file(blobs_dir: &Path, path: &Path, limit: u64) -> Result<SealedFile, FileError> {
    let shown = path.display().to_string();
    let read_err = |source| FileError::Read {
        path: shown.clone(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(FileError::NotAFile { path: shown });
    }
    let size = meta.len();
    let limit = limit.min(blob::MAX_BLOB_BYTES);
    if size > limit {
        return Err(FileError::TooLarge { limit, got: size });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| sotto_protocol::content::is_file_name(n))
        .unwrap_or_else(|| "file".into());
    let mut sealer = Sealer::new(size, &mut OsRng)?;
    let tmp_dir = blobs_dir.join("tmp");
    fs::create_dir_all(&tmp_dir).map_err(FileError::Write)?;
    let tmp = tmp_dir.join(format!("{:016x}", rand::random::<u64>()));
    let out = File::create(&tmp).map_err(FileError::Write)?;
    let result = (|| {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut mime = None;
        let mut left = size;
        for index in 0..sealer.chunks() {
            let len = left.min(CHUNK_BYTES as u64) as usize;
            file.read_exact(&mut buf[..len])
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => FileError::Changed {
                        path: shown.clone(),
                    },
                    _ => read_err(e),
                })?;
            if mime.is_none() {
                mime = Some(sniff(&buf[..len.min(8192)]));
            }
            let sealed = sealer.push(&buf[..len])?;
            out.write_all_at(&sealed.bytes, blob::offset_of(index + 1))
                .map_err(FileError::Write)?;
            left -= len as u64;
        }
        let (manifest, blob) = sealer.finish()?;
        out.write_all_at(&manifest.bytes, 0)
            .map_err(FileError::Write)?;
        out.sync_all().map_err(FileError::Write)?;
        let dest = offered_path(blobs_dir, &blob.root);
        fs::create_dir_all(dest.parent().unwrap_or(blobs_dir)).map_err(FileError::Write)?;
        fs::rename(&tmp, &dest).map_err(FileError::Write)?;
        Ok(SealedFile {
            blob,
            mime: mime.unwrap_or_else(|| "application/octet-stream".into()),
            name,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The answer to a chunk request: the sealed chunks asked for (fewer where the blob ends),
/// if this node offers the blob and it has the first position.
pub fn read_chunks(blobs_dir: &Path, request: &ChunkRequest) -> ChunkAnswer {
    if request.count == 0 || request.count > blob::MAX_CHUNKS_PER_ANSWER {
        return ChunkAnswer::Refused(blob::ChunkRefusal::Malformed);
    }
    let Ok(file) = File::open(offered_path(blobs_dir, &request.root)) else {
        return ChunkAnswer::Unknown;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let sealed = blob::SEALED_CHUNK_BYTES as u64;
    let have = u32::try_from(len / sealed).unwrap_or(u32::MAX);
    if request.position >= have {
        return ChunkAnswer::Unknown;
    }
    let count = u32::from(request.count).min(have - request.position);
    let mut bytes = vec![0u8; count as usize * blob::SEALED_CHUNK_BYTES];
    match file.read_exact_at(&mut bytes, blob::offset_of(request.position)) {
        Ok(()) => ChunkAnswer::Chunks(
            bytes
                .chunks(blob::SEALED_CHUNK_BYTES)
                .map(|c| blob::ByteBuf::from(c.to_vec()))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!("cannot read an offered blob: {e}");
            ChunkAnswer::Refused(blob::ChunkRefusal::Internal)
        }
    }
}

/// Open the partial file of a download of `size` bytes to go on with it: the number of
/// whole chunks it holds (what comes after them is cut off), and the file, positioned at
/// its end.
pub fn resume(path: &Path, size: u64) -> Result<(u32, File), FileError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(FileError::Write)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(FileError::Write)?;
    let len = file.metadata().map_err(FileError::Write)?.len().min(size);
    let have = if len == size {
        u32::try_from(size.div_ceil(CHUNK_BYTES as u64)).unwrap_or(u32::MAX)
    } else {
        u32::try_from(len / CHUNK_BYTES as u64).unwrap_or(u32::MAX)
    };
    let keep = (u64::from(have) * CHUNK_BYTES as u64).min(size);
    file.set_len(keep).map_err(FileError::Write)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(keep)).map_err(FileError::Write)?;
    Ok((have, file))
}

/// Append checked plaintext chunks to a partial file and make them durable.
pub fn append(file: &mut File, chunks: &[zeroize::Zeroizing<Vec<u8>>]) -> Result<(), FileError> {
    for c in chunks {
        file.write_all(c).map_err(FileError::Write)?;
    }
    file.sync_data().map_err(FileError::Write)
}

/// Move a finished download to a free name in `dir` (`name`, else `name (2)`, …) and
/// return where it went.
pub fn finish(partial: &Path, dir: &Path, name: &str) -> Result<PathBuf, FileError> {
    fs::create_dir_all(dir).map_err(FileError::Write)?;
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
        _ => (name.to_owned(), String::new()),
    };
    for n in 1..10_000u32 {
        let candidate = if n == 1 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        // A hard link fails if the name is taken, where a rename would replace the file.
        match fs::hard_link(partial, &candidate) {
            Ok(()) => {
                fs::remove_file(partial).map_err(FileError::Write)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(FileError::Write(e)),
        }
    }
    Err(FileError::Write(std::io::Error::other(
        "no free name for the file",
    )))
}

/// Copy a finished download to `out`, through a temporary file beside it: `out` appears
/// whole or not at all. Refuses to replace an existing file.
pub fn copy_out(from: &Path, out: &Path) -> Result<(), FileError> {
    let shown = out.display().to_string();
    if out.exists() {
        return Err(FileError::Exists { path: shown });
    }
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".sotto-{:016x}.part", rand::random::<u64>()));
    let result = (|| {
        fs::copy(from, &tmp)?;
        File::open(&tmp)?.sync_all()?;
        fs::hard_link(&tmp, out)?;
        fs::remove_file(&tmp)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => FileError::Exists {
            path: shown.clone(),
        },
        _ => FileError::Out {
            path: shown.clone(),
            source,
        },
    })
}

/// Remove offered blobs sealed more than [`OFFER_FOR`] ago, then the oldest until at most
/// [`MAX_OFFERED_BYTES`] are left, and temporary files of sealings that never finished.
/// Returns how many blobs went.
pub fn prune_offered(blobs_dir: &Path) -> usize {
    let _ = fs::remove_dir_all(blobs_dir.join("tmp"));
    let Ok(entries) = fs::read_dir(blobs_dir.join("sent")) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut removed = 0;
    for (at, len, path) in files {
        let old = now.duration_since(at).is_ok_and(|age| age > OFFER_FOR);
        if !old && total <= MAX_OFFERED_BYTES {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            total -= len;
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_protocol::blob::Opener;

    #[test]
    fn a_sealed_file_is_offered_chunk_by_chunk_and_opens_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(2 * CHUNK_BYTES + 100))
            .map(|i| (i % 253) as u8)
            .collect();
        let path = dir.path().join("notes.bin");
        fs::write(&path, &data).unwrap();
        let blobs = dir.path().join("blobs");
        let sealed = seal_file(&blobs, &path, u64::MAX).unwrap();
        assert_eq!(sealed.name, "notes.bin");
        assert_eq!(sealed.blob.size, data.len() as u64);
        let chunk = |position| match read_chunks(
            &blobs,
            &ChunkRequest {
                root: sealed.blob.root,
                position,
                count: 1,
            },
        ) {
            ChunkAnswer::Chunks(mut c) if c.len() == 1 => c.remove(0).into_vec(),
            other => panic!("{other:?}"),
        };
        let opener = Opener::new(&sealed.blob, &chunk(0)).unwrap();
        let mut back = Vec::new();
        for i in 0..3 {
            back.extend_from_slice(&opener.open_chunk(i, &chunk(i + 1)).unwrap());
        }
        assert_eq!(back, data);
        // Many at once, cut where the blob ends.
        let many = ChunkRequest {
            root: sealed.blob.root,
            position: 2,
            count: 16,
        };
        match read_chunks(&blobs, &many) {
            ChunkAnswer::Chunks(c) => assert_eq!(c.len(), 2),
            other => panic!("{other:?}"),
        }
        // Beyond the last chunk, and a blob never offered: unknown; no chunk asked: refused.
        let past = ChunkRequest {
            root: sealed.blob.root,
            position: 4,
            count: 1,
        };
        assert_eq!(read_chunks(&blobs, &past), ChunkAnswer::Unknown);
        let other = ChunkRequest {
            root: [0; 32],
            position: 0,
            count: 1,
        };
        assert_eq!(read_chunks(&blobs, &other), ChunkAnswer::Unknown);
        let none = ChunkRequest { count: 0, ..past };
        assert!(matches!(
            read_chunks(&blobs, &none),
            ChunkAnswer::Refused(_)
        ));
        // Nothing is left in the temporary folder.
        assert_eq!(fs::read_dir(blobs.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_file_over_the_limit_or_not_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![1u8; 1000]).unwrap();
        let blobs = dir.path().join("blobs");
        assert!(matches!(
            seal_file(&blobs, &path, 999),
            Err(FileError::TooLarge {
                limit: 999,
                got: 1000
            })
        ));
        assert!(matches!(
            seal_file(&blobs, dir.path(), u64::MAX),
            Err(FileError::NotAFile { .. })
        ));
        assert!(matches!(
            seal_file(&blobs, &dir.path().join("missing"), u64::MAX),
            Err(FileError::Read { .. })
        ));
    }

    #[test]
    fn a_partial_download_resumes_after_its_last_whole_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let size = 3 * CHUNK_BYTES as u64;
        fs::write(&path, vec![5u8; CHUNK_BYTES + 10]).unwrap();
        let (have, file) = resume(&path, size).unwrap();
        assert_eq!(have, 1);
        assert_eq!(file.metadata().unwrap().len(), CHUNK_BYTES as u64);
        // A complete file has every chunk, the short last one too.
        fs::write(&path, vec![5u8; 100]).unwrap();
        assert_eq!(resume(&path, 100).unwrap().0, 1);
    }

    #[test]
    fn a_finished_download_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("a.txt"), b"mine").unwrap();
        let partial = dir.path().join("part");
        fs::write(&partial, b"theirs").unwrap();
        let put = finish(&partial, &out, "a.txt").unwrap();
        assert_eq!(put, out.join("a (2).txt"));
        assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"mine");
        assert_eq!(fs::read(&put).unwrap(), b"theirs");
        assert!(copy_out(&put, &out.join("a.txt")).is_err());
        copy_out(&put, &out.join("copy.txt")).unwrap();
        assert_eq!(fs::read(out.join("copy.txt")).unwrap(), b"theirs");
    }
}
