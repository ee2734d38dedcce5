//! Helpers shared by the fuzz targets: a scratch folder per process for readers that take a
//! path, and the split of one input into the files of a folder format.

use std::path::PathBuf;

/// Separates the files of a multi-file input (`split`); the seeds join fixture files with it.
pub const SEPARATOR: &[u8] = b"\n\x00\xff==\xff\x00\n";

/// A scratch folder for this process (in `/dev/shm` when it exists: the targets write a file
/// per input).
pub fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let d = base.join(format!("deq-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

/// Writes `bytes` to `name` in the scratch folder and returns its path.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("scratch file");
    p
}

/// The input cut at every [`SEPARATOR`] into exactly `n` parts (missing parts are empty,
/// extra separators stay in the last part).
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    while parts.len() + 1 < n {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    while parts.len() < n {
        parts.push(&[]);
    }
    parts
}

/// Writes the `n` parts of `data` as the files `names` of a fresh folder and returns it.
pub fn folder(data: &[u8], names: &[&str]) -> PathBuf {
    let d = scratch().join("folder");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch folder");
    for (name, part) in names.iter().zip(split(data, names.len())) {
        std::fs::write(d.join(name), part).expect("scratch file");
    }
    d
}
