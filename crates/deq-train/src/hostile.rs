//! Damaged copies of good files, for testing that readers of outside data fail cleanly.
//!
//! [`damaged_variants`] yields every truncation of a file and a number of seeded random
//! mutations of it (bit flips, overwritten bytes, boundary integers written over header
//! fields, inserted and deleted runs, duplicated chunks); [`check_reader`] writes each variant
//! to the reader's file name and demands `Ok` or an error whose message names the file, never
//! a panic. Every crate with readers runs this over its committed fixtures in `cargo test`
//! (the `hostile` integration tests); the `fuzz/` targets search further with libFuzzer.
//!
//! ```
//! use deq_train::data::{read_npy, write_npy_f32};
//! use deq_train::hostile::check_reader;
//! let dir = std::env::temp_dir().join(format!("hostile-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("a.npy");
//! write_npy_f32(&path, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
//! let good = std::fs::read(&path).unwrap();
//! // 88 truncations and 200 mutations: each reads, or fails naming `a.npy`; none panics.
//! let report = check_reader(&path, &good, 200, 7, |p| read_npy(p)).unwrap();
//! assert_eq!(report.variants, good.len() + 200);
//! # std::fs::remove_dir_all(dir).ok();
//! ```

use deq_core::rng::DeqRng;
use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Integers that break size arithmetic when written over a header field.
const BOUNDARY: [u64; 9] = [0, 1, 0x7f, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 40, u64::MAX];

/// Every truncation of `bytes` (lengths `0..len`), then `mutations` seeded random damages.
pub fn damaged_variants(bytes: &[u8], mutations: usize, seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
    let truncations = (0..bytes.len()).map(move |n| bytes[..n].to_vec());
    let mut rng = DeqRng::new(seed);
    let mutated = (0..mutations).map(move |_| mutate(bytes, &mut rng));
    truncations.chain(mutated)
}

fn below(rng: &mut DeqRng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (rng.next_u64() % n as u64) as usize
    }
}

/// One to four random damages applied to a copy of `bytes`.
fn mutate(bytes: &[u8], rng: &mut DeqRng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..1 + below(rng, 4) {
        let at = below(rng, b.len());
        match below(rng, 7) {
            0 if !b.is_empty() => b[at] ^= 1 << below(rng, 8),
            1 if !b.is_empty() => b[at] = rng.next_u64() as u8,
            2 => {
                // A boundary integer over the bytes at `at`, in either byte order and width.
                let v = BOUNDARY[below(rng, BOUNDARY.len())];
                let width = [1usize, 2, 4, 8][below(rng, 4)];
                let raw = if below(rng, 2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                let src = if raw[0] == 0 && width < 8 { &raw[8 - width..] } else { &raw[..width] };
                for (k, &x) in src.iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + k) {
                        *slot = x;
                    }
                }
            }
            3 => {
                let run = 1 + below(rng, 16);
                let fill = rng.next_u64() as u8;
                let at = at.min(b.len());
                b.splice(at..at, std::iter::repeat_n(fill, run));
            }
            4 if !b.is_empty() => {
                let end = (at + 1 + below(rng, 16)).min(b.len());
                b.drain(at..end);
            }
            5 if !b.is_empty() => {
                let end = (at + 1 + below(rng, 64)).min(b.len());
                let chunk = b[at..end].to_vec();
                let to = below(rng, b.len() + 1);
                b.splice(to..to, chunk);
            }
            _ if !b.is_empty() => {
                // A digit or separator in text formats.
                const TEXT: &[u8] = b"0123456789-.,: \n{}[]\"'e";
                b[at] = TEXT[below(rng, TEXT.len())];
            }
            _ => b.push(rng.next_u64() as u8),
        }
    }
    b
}

/// What [`check_reader`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostileReport {
    /// Variants read.
    pub variants: usize,
    /// Of those, read without error.
    pub ok: usize,
}

/// Writes every variant of `original` ([`damaged_variants`]) to `path` and calls `read(path)`
/// on it. Fails (with the variant's length and the message) when `read` panics or returns an
/// error whose message does not contain `path`'s file name; other files `read` opens (a
/// folder reader's siblings) stay as they are. Restores `original` at the end.
pub fn check_reader<T, E: Display>(
    path: &Path,
    original: &[u8],
    mutations: usize,
    seed: u64,
    read: impl Fn(&Path) -> Result<T, E>,
) -> Result<HostileReport, String> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let mut report = HostileReport::default();
    let mut failure = None;
    for (i, v) in damaged_variants(original, mutations, seed).enumerate() {
        if let Err(e) = std::fs::write(path, &v) {
            failure = Some(format!("{}: {e}", path.display()));
            break;
        }
        report.variants += 1;
        match catch_unwind(AssertUnwindSafe(|| read(path))) {
            Ok(Ok(_)) => report.ok += 1,
            Ok(Err(e)) => {
                let msg = e.to_string();
                if !msg.contains(name) {
                    failure = Some(format!("variant {i} ({} bytes): the error does not name {name}: {msg}", v.len()));
                    break;
                }
            }
            Err(p) => {
                let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                failure = Some(format!("variant {i} ({} bytes) of {name} panicked: {what}", v.len()));
                break;
            }
        }
    }
    std::fs::write(path, original).map_err(|e| format!("{}: {e}", path.display()))?;
    match failure {
        Some(f) => Err(f),
        None => Ok(report),
    }
}

/// The committed format fixtures of the workspace (`tests/fixtures/formats/`).
pub const FORMAT_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/formats");

/// [`check_reader`] on a committed fixture without touching it: copies the plain files of
/// `fixture`'s folder (so that a reader finds the siblings it opens) into a private scratch
/// folder, demands that the undamaged copy reads, runs [`check_reader`] on the copy of
/// `fixture`, checks that every variant was read, and removes the scratch folder.
pub fn check_fixture<T, E: Display>(fixture: &Path, mutations: usize, seed: u64, read: impl Fn(&Path) -> Result<T, E>) -> Result<HostileReport, String> {
    static SCRATCH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let from = fixture.parent().ok_or_else(|| format!("{}: no folder", fixture.display()))?;
    let name = fixture.file_name().ok_or_else(|| format!("{}: not a file name", fixture.display()))?;
    let k = SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("deq-hostile-{}-{k}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = (|| {
        for e in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
            let p = e.map_err(|e| format!("{}: {e}", from.display()))?.path();
            if p.is_file() {
                std::fs::copy(&p, dir.join(p.file_name().expect("a file"))).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        let path = dir.join(name);
        let good = std::fs::read(&path).map_err(|e| format!("{}: {e}", fixture.display()))?;
        read(&path).map_err(|e| format!("the fixture {} itself does not read: {e}", fixture.display()))?;
        let report = check_reader(&path, &good, mutations, seed, &read)?;
        if report.variants != good.len() + mutations {
            return Err(format!("{}: {} of {} variants read", fixture.display(), report.variants, good.len() + mutations));
        }
        Ok(report)
    })();
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// A copy of the PNG file `png` whose header (IHDR) declares `width x height` pixels, its
/// checksum fixed so that decoders read the header instead of rejecting its CRC: a file that
/// lies about its size.
pub fn png_with_size(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut b = png.to_vec();
    if b.len() < 33 {
        return b;
    }
    b[16..20].copy_from_slice(&width.to_be_bytes());
    b[20..24].copy_from_slice(&height.to_be_bytes());
    let mut c = !0u32;
    for &x in &b[12..29] {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    b[29..33].copy_from_slice(&(!c).to_be_bytes());
    b
}

/// Environment variable that tells a re-run test binary which case to run
/// ([`run_under_memory_limit`]).
pub const CASE_VAR: &str = "DEQ_HOSTILE_CASE";

/// Runs test `entry` of the current test binary again in a child process under
/// `ulimit -v limit_kib`, with [`CASE_VAR`] set to `case`; `Ok` when the child exits with 0.
/// The child entry reads the case with [`child_case`] (and does nothing when the
/// variable is unset, in the normal run). An allocation that the limit refuses aborts the
/// child, so a reader that sizes a buffer by a header it has not checked fails the parent.
pub fn run_under_memory_limit(entry: &str, case: &str, limit_kib: u64) -> Result<(), String> {
    run_child(entry, case, &format!("ulimit -v {limit_kib} && "), &format!(" under a {limit_kib} KiB memory limit"))
}

/// Runs test `entry` of the current test binary again in a child process of its own, with
/// [`CASE_VAR`] set to `case` (read there with [`child_case`]); `Ok` when the child
/// exits with 0. For tests that change process-wide state, such as a simulated signal
/// ([`crate::signals::simulate`]), which would reach the other tests of the binary.
pub fn run_in_child(entry: &str, case: &str) -> Result<(), String> {
    run_child(entry, case, "", "")
}

fn run_child(entry: &str, case: &str, shell_prefix: &str, what: &str) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{shell_prefix}exec \"$0\" --exact {entry} --test-threads 1 --nocapture"))
        .arg(&exe)
        .env(CASE_VAR, case)
        .output()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("case `{case}`{what}: {}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The case a [`run_under_memory_limit`] or [`run_in_child`] child was started for (`None` in
/// a normal run).
pub fn child_case() -> Option<String> {
    std::env::var(CASE_VAR).ok()
}

/// Loads `path` as the binaries load `--config path` (overrides none, validation on).
pub fn load_config<T: crate::cli::TrainerConfig>(path: &Path) -> crate::Result<T> {
    let args = crate::cli::ConfigArgs { config: Some(path.to_path_buf()), ..Default::default() };
    args.load::<T>(None, None, None).map(|l| l.config)
}

/// Runs [`check_reader`] with [`load_config`] over every `.toml` file of `dir` (a crate's
/// folder under `configs/`), each copied to a scratch folder first; `mutations` per file.
pub fn check_configs<T: crate::cli::TrainerConfig>(dir: &Path, mutations: usize) -> Result<usize, String> {
    let scratch = std::env::temp_dir().join(format!("deq-hostile-configs-{}-{}", std::process::id(), dir.display().to_string().len()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let mut files: Vec<_> = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    let mut checked = 0;
    for (k, f) in files.iter().enumerate() {
        let good = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let to = scratch.join(f.file_name().unwrap_or_default());
        std::fs::write(&to, &good).map_err(|e| format!("{}: {e}", to.display()))?;
        load_config::<T>(&to).map_err(|e| format!("the committed {} does not load: {e}", f.display()))?;
        check_reader(&to, &good, mutations, 1000 + k as u64, load_config::<T>)?;
        checked += 1;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_every_truncation_then_seeded_mutations() {
        let good: Vec<u8> = (0..40u8).collect();
        let a: Vec<Vec<u8>> = damaged_variants(&good, 50, 3).collect();
        assert_eq!(a.len(), 40 + 50);
        for (n, v) in a[..40].iter().enumerate() {
            assert_eq!(v[..], good[..n]);
        }
        assert!(a[40..].iter().all(|v| v != &good), "every mutation changes the file");
        assert_eq!(a, damaged_variants(&good, 50, 3).collect::<Vec<_>>(), "seeded");
        assert_ne!(a[40..], damaged_variants(&good, 50, 4).collect::<Vec<_>>()[40..]);
    }

    #[test]
    fn a_panicking_or_anonymous_reader_is_caught() {
        let dir = std::env::temp_dir().join(format!("hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("thing.bin");
        let good = b"0123456789".to_vec();
        let strict = |p: &Path| -> Result<(), String> {
            let b = std::fs::read(p).unwrap();
            if b.len() == 10 { Ok(()) } else { Err(format!("{}: wrong length", p.display())) }
        };
        let r = check_reader(&p, &good, 30, 1, strict).unwrap();
        assert_eq!(r.variants, 40);
        assert!(r.ok < 40);
        let panics = |p: &Path| -> Result<(), String> {
            let b = std::fs::read(p).unwrap();
            let _ = b[9];
            Ok(())
        };
        let e = check_reader(&p, &good, 0, 1, panics).unwrap_err();
        assert!(e.contains("panicked"), "{e}");
        let anonymous = |p: &Path| -> Result<(), String> { if std::fs::read(p).unwrap().len() == 10 { Ok(()) } else { Err("bad".into()) } };
        let e = check_reader(&p, &good, 0, 1, anonymous).unwrap_err();
        assert!(e.contains("does not name"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), good, "the original is restored");
        std::fs::remove_dir_all(dir).ok();
    }
}
