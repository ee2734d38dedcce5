//! Run configuration: `[data]`, `[model]` (the DEQ-INR), `[siren]` (the baseline), `[fit]` and
//! `[deq]` (deq-core's options: solver, `f_max_iter`, `grad`, norm). Unknown keys are errors
//! naming the key.

use crate::error::{InrError, Result};
use crate::fit::FitConfig;
use crate::model::InrModelConfig;
use deq_core::DeqConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `image`, `audio` or `video`.
    pub kind: String,
    /// File (image, audio) or folder of frames (video). Relative paths are tried as given,
    /// then under `$DEQ_DATA_DIR/inr/`, then under the repository's `datasets/inr/`.
    pub path: String,
    /// Images: resize to `size x size` first (0: keep).
    pub size: usize,
    /// Images: `representation` (all pixels train and test) or `generalization` (train on the
    /// even grid, test on the odd grid).
    pub task: String,
    /// Video: use at most this many frames (0: all).
    pub max_frames: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { kind: "image".into(), path: "images/camera.png".into(), size: 256, task: "representation".into(), max_frames: 0 }
    }
}

/// `[siren]`: the explicit baseline, sized to the DEQ's parameter count. `layers = 0` means
/// `L + 1` sine layers: the depth of one pass of the DEQ's `f` (the zoo's explicit
/// counterpart, a one-pass network with the same filters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SirenConfig {
    /// Sine layers (0: the DEQ's `L + 1`).
    pub layers: usize,
    /// Frequency of the first layer.
    pub omega_first: f64,
    /// Frequency of the later layers.
    pub omega: f64,
}

impl Default for SirenConfig {
    fn default() -> Self {
        Self { layers: 0, omega_first: 30.0, omega: 30.0 }
    }
}

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `[data]`.
    #[serde(default)]
    pub data: DataConfig,
    /// `[model]`.
    #[serde(default)]
    pub model: InrModelConfig,
    /// `[siren]`.
    #[serde(default)]
    pub siren: SirenConfig,
    /// `[fit]`.
    #[serde(default)]
    pub fit: FitConfig,
    /// `[deq]`.
    #[serde(default = "default_deq")]
    pub deq: DeqConfig,
}

fn default_deq() -> DeqConfig {
    crate::model::zoo_deq(100)
}

impl RunConfig {
    /// Reads `path`; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &[])
    }

    /// Reads `path` and applies `section.key=value` overrides (values in TOML syntax; a bare
    /// word is a string), e.g. `fit.lr=3e-3`, `model.input_scale=128`, `fit.lr_schedule=cosine`
    /// (the shared rules of `deq_train::cli`). Unknown sections or keys are errors naming them.
    pub fn load_with(path: &Path, sets: &[String]) -> Result<Self> {
        let overrides = sets.iter().map(|s| deq_train::cli::Override::parse(s)).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(deq_train::cli::load_with_overrides(path, &overrides)?)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The data file or folder (see [`DataConfig::path`]).
    pub fn data_path(&self) -> Result<PathBuf> {
        resolve(&self.data.path)
    }
}

/// Resolves a data path: as given, then `$DEQ_DATA_DIR/inr/<p>`, then `datasets/inr/<p>`.
pub fn resolve(p: &str) -> Result<PathBuf> {
    let given = PathBuf::from(p);
    let mut tried = vec![given.clone()];
    if given.is_relative() {
        if let Some(root) = std::env::var_os("DEQ_DATA_DIR") {
            tried.push(PathBuf::from(root).join("inr").join(p));
        }
        tried.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/inr")).join(p));
    }
    tried.iter().find(|c| c.exists()).cloned().ok_or_else(|| InrError::Config {
        key: "data.path".into(),
        message: format!("`{p}` not found (tried {})", tried.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(", ")),
    })
}

impl deq_train::cli::TrainerConfig for RunConfig {
    const SEED_SECTION: &'static str = "fit";
    fn deq_mut(&mut self) -> &mut DeqConfig {
        &mut self.deq
    }
    fn validate(&self) -> std::result::Result<(), String> {
        if !["image", "audio", "video"].contains(&self.data.kind.as_str()) {
            return Err(format!("data.kind: `{}` is not image, audio or video", self.data.kind));
        }
        self.deq.validate().map_err(|e| format!("[deq]: {e}"))
    }
}
