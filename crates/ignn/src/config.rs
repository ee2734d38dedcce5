//! Run configuration of the `ignn` binary: `[data]` (which task and where its files are),
//! `[train]` (a [`crate::train::NodeTrainConfig`] for node tasks, a
//! [`crate::graph_train::GraphTrainConfig`] for `task = "tu"`) and `[deq]` (deq-core's
//! [`DeqConfig`]). Unknown keys are errors naming the key.

use anyhow::{Context, Result};
use deq_core::DeqConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[data]`: `task` is `chains` (generated), `planetoid` (text format), `graphsage` (PPI
/// format, files `<prefix>-*`) or `tu` (graph classification, files `<name>_*.txt`). Folders:
/// `dir`, else `$DEQ_DATA_DIR/<name>`, `datasets/<name>` or `$DEQ_DATA_DIR/planetoid/<name>`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `chains`, `planetoid`, `graphsage` or `tu`.
    pub task: String,
    /// Dataset name (folder name; TU file prefix).
    pub name: String,
    /// Explicit folder (overrides the search).
    pub dir: String,
    /// GraphSAGE file prefix (`ppi` for `ppi-G.json`, ...).
    pub prefix: String,
    /// Standardise GraphSAGE features with training statistics.
    pub standardize: bool,
    /// Chains: nodes per chain.
    pub length: usize,
    /// Chains: chains per class.
    pub chains_per_class: usize,
    /// Chains: classes.
    pub classes: usize,
    /// Chains: feature dimension.
    pub feature_dim: usize,
    /// Chains: fraction of nodes for training.
    pub train_frac: f64,
    /// Chains: fraction of nodes for validation.
    pub val_frac: f64,
    /// Chains: seed of the split.
    pub split_seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            task: "chains".into(),
            name: String::new(),
            dir: String::new(),
            prefix: "ppi".into(),
            standardize: false,
            length: 10,
            chains_per_class: 20,
            classes: 2,
            feature_dim: 100,
            train_frac: 0.05,
            val_frac: 0.1,
            split_seed: 42,
        }
    }
}

/// A whole run configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `[data]`.
    pub data: DataConfig,
    /// `[train]`, parsed by [`RunConfig::node_train`] or [`RunConfig::graph_train`].
    #[serde(default = "empty_table")]
    pub train: toml::Value,
    /// `[deq]`.
    #[serde(default)]
    pub deq: DeqConfig,
}

fn empty_table() -> toml::Value {
    toml::Value::Table(Default::default())
}

impl RunConfig {
    /// Reads and parses `path`; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}", path.display()))
    }

    /// `[train]` as node-task settings.
    pub fn node_train(&self) -> Result<crate::train::NodeTrainConfig> {
        self.train.clone().try_into().context("[train]")
    }

    /// `[train]` as graph-classification settings.
    pub fn graph_train(&self) -> Result<crate::graph_train::GraphTrainConfig> {
        self.train.clone().try_into().context("[train]")
    }

    /// Sets `[train] key = value` (command-line overrides).
    pub fn set_train(&mut self, key: &str, value: toml::Value) -> Result<()> {
        self.train.as_table_mut().context("[train] must be a table")?.insert(key.into(), value);
        Ok(())
    }
}

/// The folder of the dataset of `d` (see [`DataConfig`]).
pub fn data_dir(d: &DataConfig) -> Result<PathBuf> {
    if !d.dir.is_empty() {
        return Ok(PathBuf::from(&d.dir));
    }
    deq_train::data::find_dataset_dir(&d.name)
        .or_else(|| std::env::var_os("DEQ_DATA_DIR").map(|r| PathBuf::from(r).join("planetoid").join(&d.name)).filter(|p| p.is_dir()))
        .with_context(|| format!("dataset `{}` not found: set data.dir or DEQ_DATA_DIR", d.name))
}

impl deq_train::cli::TrainerConfig for RunConfig {
    const SEED_SECTION: &'static str = "train";
    fn deq_mut(&mut self) -> &mut DeqConfig {
        &mut self.deq
    }
    /// Parses `[train]` for the task, so unknown `[train]` keys fail at load time too.
    fn validate(&self) -> std::result::Result<(), String> {
        let r = if self.data.task == "tu" { self.graph_train().map(|_| ()) } else { self.node_train().map(|_| ()) };
        r.map_err(|e| format!("{e:#}"))?;
        self.deq.validate().map_err(|e| format!("[deq]: {e}"))?;
        if !["chains", "planetoid", "graphsage", "tu"].contains(&self.data.task.as_str()) {
            return Err(format!("data.task: `{}` is not chains, planetoid, graphsage or tu", self.data.task));
        }
        Ok(())
    }
}
