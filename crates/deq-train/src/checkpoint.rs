//! Checkpoints: tensors (weights and optimiser state) in safetensors plus a JSON sidecar
//! (step, epoch, RNG state, config, anything the trainer adds), written atomically.
//!
//! A checkpoint directory holds `step-<N>.safetensors` files and one `latest.json`. Each save
//! writes the tensors to a temporary file, syncs and renames it, then does the same for
//! `latest.json`, which names the tensor file: the rename of `latest.json` is the commit point,
//! so a crash at any moment leaves the previous checkpoint intact and loadable. Older tensor
//! files beyond `keep` are removed after the commit.

use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Optimiser step at which it was written.
    pub step: usize,
    /// The sidecar's JSON (as written by the trainer, plus `step` and `tensors`).
    pub meta: serde_json::Value,
    /// Every tensor by name.
    pub tensors: HashMap<String, Tensor>,
    /// The tensor file it was read from.
    pub path: PathBuf,
}

/// Writes and finds checkpoints in one directory.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    dir: PathBuf,
    keep: usize,
}

/// Writes `path` atomically: `write` fills `<path>.<ext>.tmp`, which is synced to disk and then
/// renamed over `path`, so a crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    write_atomic_at(path, None, write)
}

/// Environment variable naming a crash point for tests: `<point>:<n>` aborts the process (as
/// SIGKILL would stop it, without unwinding) the `n`-th time a checkpoint save reaches
/// `<point>`: `tensors-tmp` (tensor file written, not yet renamed), `tensors` (tensor file in
/// place, sidecar not yet written) or `sidecar-tmp` (new sidecar written, not yet renamed).
pub const FAILPOINT_VAR: &str = "DEQ_FAILPOINT";

fn failpoint(point: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static HITS: [AtomicUsize; 3] = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];
    let Ok(spec) = std::env::var(FAILPOINT_VAR) else { return };
    let Some((name, n)) = spec.split_once(':') else { return };
    let slot = match point {
        "tensors-tmp" => 0,
        "tensors" => 1,
        _ => 2,
    };
    if name == point {
        let hit = HITS[slot].fetch_add(1, Ordering::SeqCst) + 1;
        if n.parse::<usize>().is_ok_and(|n| n == hit) {
            eprintln!("{FAILPOINT_VAR}: aborting at {point} (save {hit})");
            std::process::abort();
        }
    }
}

fn write_atomic_at(path: &Path, point: Option<&str>, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    write(&tmp)?;
    if let Some(p) = point {
        failpoint(p);
    }
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
    // Make the rename itself durable (best effort: not every platform can sync a directory).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

impl Checkpointer {
    /// Uses (and creates) `dir`, keeping the `keep` most recent tensor files (at least 1).
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        Ok(Self { dir, keep: keep.max(1) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the sidecar that names the latest checkpoint.
    pub fn latest_path(&self) -> PathBuf {
        self.dir.join("latest.json")
    }

    /// Saves `tensors` and `meta` (a JSON object) as the checkpoint of `step`.
    pub fn save(&self, step: usize, tensors: &[(String, Tensor)], meta: serde_json::Value) -> Result<PathBuf> {
        let name = format!("step-{step:08}.safetensors");
        let path = self.dir.join(&name);
        let map: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.clone(), t.detach())).collect();
        // Serialised here and written with std (candle's writer goes through its own temporary
        // file), so that a failed write (a full disk) is an error on our temporary file.
        let bytes = safetensors::serialize(map.iter(), None).map_err(|e| TrainError::format(&path, format!("serialising tensors: {e}")))?;
        write_atomic_at(&path, Some("tensors-tmp"), |tmp| std::fs::write(tmp, &bytes).map_err(|e| TrainError::io(tmp, e)))?;
        failpoint("tensors");
        let mut meta = match meta {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => serde_json::Map::new(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("meta".into(), other);
                m
            }
        };
        meta.insert("step".into(), step.into());
        meta.insert("tensors".into(), name.clone().into());
        let latest = self.latest_path();
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(meta)).expect("JSON values serialise");
        write_atomic_at(&latest, Some("sidecar-tmp"), |tmp| std::fs::write(tmp, text.as_bytes()).map_err(|e| TrainError::io(tmp, e)))?;
        self.prune(&name)?;
        Ok(path)
    }

    fn prune(&self, current: &str) -> Result<()> {
        let mut files: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| TrainError::io(&self.dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
            .collect();
        files.sort();
        let excess = files.len().saturating_sub(self.keep);
        for old in files.into_iter().take(excess).filter(|n| n != current) {
            let p = self.dir.join(&old);
            std::fs::remove_file(&p).map_err(|e| TrainError::io(&p, e))?;
        }
        Ok(())
    }

    /// The latest checkpoint, or `None` when the directory has none.
    pub fn load_latest(&self, device: &Device) -> Result<Option<Checkpoint>> {
        let latest = self.latest_path();
        if !latest.exists() {
            return Ok(None);
        }
        Self::load(&latest, device).map(Some)
    }

    /// Loads the checkpoint described by the sidecar `json_path`.
    pub fn load(json_path: &Path, device: &Device) -> Result<Checkpoint> {
        let text = std::fs::read_to_string(json_path).map_err(|e| TrainError::io(json_path, e))?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::format(json_path, format!("not valid JSON: {e}")))?;
        let step = meta.get("step").and_then(|v| v.as_u64()).ok_or_else(|| TrainError::format(json_path, "no integer `step`"))? as usize;
        let name = meta.get("tensors").and_then(|v| v.as_str()).ok_or_else(|| TrainError::format(json_path, "no `tensors` file name"))?;
        // A plain file name beside the sidecar: `../x` or an absolute path would read outside
        // the checkpoint folder.
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
            return Err(TrainError::format(json_path, format!("`tensors` must name a file beside the sidecar, got `{name}`")));
        }
        let path = json_path.parent().unwrap_or(Path::new(".")).join(name);
        if !path.exists() {
            return Err(TrainError::io(
                json_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("names the tensor file {}, which is missing", path.display())),
            ));
        }
        let tensors = candle_core::safetensors::load(&path, device).map_err(|e| TrainError::format(&path, format!("reading tensors: {e}")))?;
        Ok(Checkpoint { step, meta, tensors, path })
    }
}

/// Sets every variable `name -> var` from `tensors[prefix + name]`; a missing tensor or a shape
/// mismatch is an error naming the key and the file.
pub fn load_vars(vars: &[(String, Var)], ckpt: &Checkpoint, prefix: &str) -> Result<()> {
    for (name, var) in vars {
        let key = format!("{prefix}{name}");
        let t = ckpt.tensors.get(&key).ok_or_else(|| TrainError::format(&ckpt.path, format!("no tensor `{key}`")))?;
        if t.shape() != var.as_tensor().shape() {
            return Err(TrainError::format(&ckpt.path, format!("tensor `{key}` has shape {:?}, the model expects {:?}", t.dims(), var.as_tensor().dims())));
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.as_tensor().dtype())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("deq-train-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn save_load_prune_and_errors() {
        let dir = tmpdir("a");
        let ck = Checkpointer::new(&dir, 2).unwrap();
        assert!(ck.load_latest(&Device::Cpu).unwrap().is_none());
        let w = Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        for step in 1..=3 {
            w.set(&(w.as_tensor() * 2.0).unwrap()).unwrap();
            ck.save(step, &[("model.w".into(), w.as_tensor().clone())], serde_json::json!({"epoch": step})).unwrap();
        }
        let c = ck.load_latest(&Device::Cpu).unwrap().unwrap();
        assert_eq!(c.step, 3);
        assert_eq!(c.meta["epoch"], 3);
        let v = Var::new(&[[0.0f32, 0.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        load_vars(&[("w".into(), v.clone())], &c, "model.").unwrap();
        assert_eq!(v.as_tensor().to_vec2::<f32>().unwrap(), vec![vec![8.0, 16.0], vec![24.0, 32.0]]);
        let n = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".safetensors")).count();
        assert_eq!(n, 2, "older tensor files are pruned");
        // Wrong shape and missing key name the key.
        let bad = Var::new(&[0.0f32; 3], &Device::Cpu).unwrap();
        let e = load_vars(&[("w".into(), bad)], &c, "model.").unwrap_err().to_string();
        assert!(e.contains("model.w") && e.contains("shape"), "{e}");
        // A corrupt tensor file is an error naming it.
        std::fs::write(&c.path, b"garbage").unwrap();
        let e = ck.load_latest(&Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("step-00000003.safetensors"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
