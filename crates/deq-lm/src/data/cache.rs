//! The token streams of a corpus cached as binary files next to the data
//! (`<corpus>/deq-lm-cache/`), so that a second run does not tokenize again. A file holds one
//! split's ids for one tokenizer: a 32-byte header (`DEQLMTOK`, version, the fingerprint of the
//! split's files and the tokenizer, the id count) and the ids as little-endian `u32`. The
//! fingerprint covers the source files' names, sizes and modification times and the whole
//! tokenizer, so an edited corpus or another vocabulary never reads a stale stream. A file whose
//! size disagrees with its header is rejected before anything is allocated; a stale or damaged
//! cache is rebuilt (with a warning), never trusted.

use super::corpus::{Corpus, Split};
use super::vocab::Vocab;
use crate::error::{LmError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"DEQLMTOK";
const VERSION: u32 = 1;
const HEADER: usize = 32;

/// FNV-1a over bytes (stable across runs and platforms, unlike `std`'s hasher).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The fingerprint of `files` (names, sizes, modification times), a tag and extra bytes.
pub fn fingerprint(files: &[&Path], tag: &str, extra: &[u8]) -> Result<u64> {
    let mut h = fnv(0xcbf2_9ce4_8422_2325, tag.as_bytes());
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| LmError::data(f, e))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        h = fnv(h, f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b""));
        h = fnv(h, &meta.len().to_le_bytes());
        h = fnv(h, &mtime.to_le_bytes());
    }
    Ok(fnv(h, extra))
}

/// Reads a cache file written with `fp`; `Ok(None)` when it is missing or stale, an error
/// naming the file when it is damaged (wrong magic or version, a size that disagrees with its
/// header).
pub fn read_ids(path: &Path, fp: u64) -> Result<Option<Vec<u32>>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LmError::data(path, e)),
    };
    let len = f.metadata().map_err(|e| LmError::data(path, e))?.len();
    let mut head = [0u8; HEADER];
    f.read_exact(&mut head).map_err(|e| LmError::data(path, format!("token cache header: {e}")))?;
    if &head[..8] != MAGIC || u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) != VERSION {
        return Err(LmError::data(path, "not a deq-lm token cache of this version"));
    }
    if u64::from_le_bytes(head[16..24].try_into().expect("8 bytes")) != fp {
        return Ok(None);
    }
    let count = u64::from_le_bytes(head[24..32].try_into().expect("8 bytes"));
    let want = count.checked_mul(4).and_then(|n| n.checked_add(HEADER as u64));
    if want != Some(len) {
        return Err(LmError::data(path, format!("token cache of {len} bytes declares {count} ids")));
    }
    let mut bytes = Vec::with_capacity(len as usize - HEADER);
    f.read_to_end(&mut bytes).map_err(|e| LmError::data(path, e))?;
    if bytes.len() as u64 != count * 4 {
        return Err(LmError::data(path, "token cache changed while it was read"));
    }
    Ok(Some(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()))
}

/// Writes `ids` with fingerprint `fp` (a temporary file, then a rename).
pub fn write_ids(path: &Path, fp: u64, ids: &[u32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(HEADER + 4 * ids.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&fp.to_le_bytes());
    bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    let tmp = path.with_extension("ids.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| LmError::data(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LmError::data(path, e))
}

/// The cache folder of a corpus, created if needed; `None` (with a warning) when the data
/// folder is not writable.
pub fn cache_dir(corpus: &Corpus) -> Option<PathBuf> {
    let d = corpus.dir().join("deq-lm-cache");
    match std::fs::create_dir_all(&d) {
        Ok(()) => Some(d),
        Err(e) => {
            tracing::warn!("no token cache: cannot create {} ({e})", d.display());
            None
        }
    }
}

/// The ids of `split` under `vocab`: from the cache when it is current, else tokenized (and
/// cached when `cache` is set). Returns the ids and whether they came from the cache.
pub fn split_ids(corpus: &Corpus, split: Split, vocab: &Vocab, cache: bool) -> Result<(Vec<u32>, bool)> {
    let dir = if cache { cache_dir(corpus) } else { None };
    let Some(dir) = dir else {
        return Ok((vocab.encode_lines(&corpus.lines(split)?)?, false));
    };
    let fp = fingerprint(&corpus.files(split), &format!("{split:?}"), vocab.json()?.as_bytes())?;
    let path = dir.join(format!("{}-{fp:016x}.ids", format!("{split:?}").to_lowercase()));
    match read_ids(&path, fp) {
        Ok(Some(ids)) => return Ok((ids, true)),
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}: tokenizing again"),
    }
    let ids = vocab.encode_lines(&corpus.lines(split)?)?;
    if let Err(e) = write_ids(&path, fp, &ids) {
        tracing::warn!("token cache not written: {e}");
    }
    Ok((ids, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_damage_is_named_or_stale() {
        let d = std::env::temp_dir().join(format!("deq-lm-cache-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("train.ids");
        let ids: Vec<u32> = (0..1000).map(|i| i * 7919 % 100_003).collect();
        write_ids(&p, 42, &ids).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 32 + 4000);
        assert_eq!(read_ids(&p, 42).unwrap().unwrap(), ids);
        assert!(read_ids(&p, 43).unwrap().is_none(), "another fingerprint is stale");
        assert!(read_ids(&d.join("none.ids"), 42).unwrap().is_none());
        // Truncated: the size disagrees with the header.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = read_ids(&p, 42).unwrap_err().to_string();
        assert!(e.contains("train.ids") && e.contains("declares 1000 ids"), "{e}");
        // An absurd count is refused before allocating.
        let mut huge = bytes.clone();
        huge[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(read_ids(&p, 42).unwrap_err().to_string().contains("declares"));
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(read_ids(&p, 42).is_err());
        std::fs::write(&p, b"DEQLMTO").unwrap();
        assert!(read_ids(&p, 42).unwrap_err().to_string().contains("header"));
        std::fs::write(&p, [b"NOTMAGIC".as_slice(), &[0u8; 24]].concat()).unwrap();
        assert!(read_ids(&p, 42).unwrap_err().to_string().contains("not a deq-lm token cache"));
        // The fingerprint follows the files' sizes and the extra bytes.
        let f = d.join("a.txt");
        std::fs::write(&f, "abc").unwrap();
        let a = fingerprint(&[&f], "Train", b"tok").unwrap();
        assert_eq!(a, fingerprint(&[&f], "Train", b"tok").unwrap());
        assert_ne!(a, fingerprint(&[&f], "Valid", b"tok").unwrap());
        assert_ne!(a, fingerprint(&[&f], "Train", b"tok2").unwrap());
        std::fs::write(&f, "abcd").unwrap();
        assert_ne!(a, fingerprint(&[&f], "Train", b"tok").unwrap());
        assert!(fingerprint(&[&d.join("missing")], "Train", b"").unwrap_err().to_string().contains("missing"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
