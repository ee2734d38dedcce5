//! The command-line flags every trainer binary shares, as `clap` argument groups.

use super::config_file::{load_with_overrides, parse_with_overrides, Override};
use super::device::DeviceArg;
use crate::error::{Result, TrainError};
use deq_core::{DeqArgs, DeqConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What a trainer's configuration type tells the shared loader.
pub trait TrainerConfig: DeserializeOwned + Serialize {
    /// The section whose `seed` key `--seed` sets (`train` or `fit`).
    const SEED_SECTION: &'static str;
    /// The `[deq]` table, which TorchDEQ's flags (`--f_solver`, `--grad`, ...) override.
    fn deq_mut(&mut self) -> &mut DeqConfig;
    /// Checks across sections once every override is in; the message names the key.
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// A configuration with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The configuration, overrides applied.
    pub config: T,
    /// Short name of its source (the file stem, e.g. `mnist-small`), for default run folders.
    pub name: String,
    /// The file it was read from (`None` for a built-in default).
    pub path: Option<PathBuf>,
}

impl<T> Loaded<T> {
    /// Where the configuration came from, for messages: the file, or the built-in default.
    pub fn source(&self) -> String {
        self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("the built-in default configuration ({})", self.name))
    }
}

/// `--config`, `--set` and TorchDEQ's `[deq]` flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Run configuration (TOML; every section denies unknown keys).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Set any configuration key (repeatable), in TOML syntax; a bare word is a string:
    /// `--set train.lr=3e-3 --set deq.f_solver=broyden --set deq.indexing=[5,10]`.
    /// Unknown keys are errors.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// DEQ options with TorchDEQ's flag names (applied to `[deq]` after `--set`).
    #[command(flatten)]
    pub deq: DeqArgs,
}

impl ConfigArgs {
    fn overrides(&self, seed: Option<(&str, u64)>) -> Result<Vec<Override>> {
        let mut out = self.sets.iter().map(|s| Override::parse(s)).collect::<Result<Vec<_>>>()?;
        if let Some((section, seed)) = seed {
            let v = i64::try_from(seed).map_err(|_| TrainError::Config { key: "--seed".into(), message: format!("{seed} is above 2^63 - 1") })?;
            out.push(Override { key: format!("{section}.seed"), value: toml::Value::Integer(v) });
        }
        Ok(out)
    }

    fn finish<T: TrainerConfig>(&self, mut config: T, origin: &str) -> Result<T> {
        self.deq
            .apply(config.deq_mut())
            .map_err(|e| TrainError::Format { path: origin.into(), message: format!("[deq] (with the command-line flags applied): {e}") })?;
        config
            .validate()
            .map_err(|message| TrainError::Format { path: origin.into(), message: format!("after the command-line overrides: {message}") })?;
        Ok(config)
    }

    /// Loads the configuration of a new run: `--config`, else `default_file` if it exists
    /// (relative to the working directory), else `builtin` (TOML text). `seed` sets the `seed`
    /// key of `T::SEED_SECTION`.
    pub fn load<T: TrainerConfig>(&self, default_file: Option<&str>, builtin: Option<&str>, seed: Option<u64>) -> Result<Loaded<T>> {
        let overrides = self.overrides(seed.map(|s| (T::SEED_SECTION, s)))?;
        let path = match (&self.config, default_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(d)) if Path::new(d).exists() || builtin.is_none() => Some(PathBuf::from(d)),
            _ => None,
        };
        match (path, builtin) {
            (Some(p), _) => {
                let config = load_with_overrides(&p, &overrides)?;
                let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
                Ok(Loaded { config: self.finish(config, &p.display().to_string())?, name, path: Some(p) })
            }
            (None, Some(text)) => {
                let name = default_file.and_then(|d| Path::new(d).file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
                let config = parse_with_overrides(text, "the built-in default configuration", &overrides)?;
                Ok(Loaded { config: self.finish(config, "the built-in default configuration")?, name, path: None })
            }
            (None, None) => Err(TrainError::Config { key: "--config".into(), message: "a configuration file is required".into() }),
        }
    }

    /// Loads the configuration saved with the run in `run` (`run/config.toml`), or `--config`
    /// when given; `--set` and the `[deq]` flags apply on top (e.g. a larger evaluation budget).
    pub fn load_saved<T: TrainerConfig>(&self, run: &Path) -> Result<Loaded<T>> {
        let p = self.config.clone().unwrap_or_else(|| run.join(SAVED_CONFIG));
        if !p.exists() {
            return Err(TrainError::Config {
                key: "--out".into(),
                message: format!("{} does not exist: is `{}` a run folder written by training (or give --config)?", p.display(), run.display()),
            });
        }
        let config = load_with_overrides(&p, &self.overrides(None)?)?;
        let name = run.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
        Ok(Loaded { config: self.finish(config, &p.display().to_string())?, name, path: Some(p) })
    }
}

/// File name of the configuration a training run saves in its folder.
pub const SAVED_CONFIG: &str = "config.toml";

/// A configuration as the TOML text that `save_config` writes and `--dry-run` prints.
fn config_text<T: Serialize>(config: &T) -> Result<String> {
    toml::to_string_pretty(config).map_err(|e| TrainError::Config { key: "config".into(), message: e.to_string() })
}

/// Writes `config` as `dir/config.toml` (through a temporary file and a rename).
pub fn save_config<T: Serialize>(dir: &Path, config: &T) -> Result<PathBuf> {
    let text = config_text(config)?;
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let path = dir.join(SAVED_CONFIG);
    let tmp = dir.join(format!(".{SAVED_CONFIG}.tmp"));
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))?;
    Ok(path)
}

/// What `--dry-run` reports, the same in every binary: on standard error the configuration's
/// source, the run folder (`run folder: DIR`, a line the README-command test reads) and the
/// data; on standard output the resolved configuration as TOML.
pub fn print_dry_run<T: Serialize>(source: &str, run_folder: &Path, data: &str, config: &T) -> Result<()> {
    let text = config_text(config)?;
    eprintln!("configuration: {source}\nrun folder: {}\ndata: {data}", run_folder.display());
    println!("{text}");
    Ok(())
}

/// `--threads` and `--device`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RuntimeArgs {
    /// Compute threads (default: every core, or the configuration's value where it has one).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceArg,
}

impl RuntimeArgs {
    /// Sets up the CPU thread pools (see [`crate::runtime::configure_cpu`]): `--threads`, else
    /// `config_threads` when positive, else every core. Returns the thread count in use.
    pub fn configure(&self, config_threads: usize) -> usize {
        let n = self.threads.filter(|&n| n > 0).or(Some(config_threads).filter(|&n| n > 0));
        crate::runtime::configure_cpu(n);
        n.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }
}

/// The flags of a training subcommand.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// Configuration, overrides and DEQ flags.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Run folder: config.toml, metrics.jsonl, checkpoints/, plots.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in the run folder (bit-identical to an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
    /// Seed of initialisation, shuffling and augmentation (the configuration's `seed` key).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Threads and device.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Check the configuration and the data paths, print the resolved configuration, and exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// The flags of a subcommand that uses a finished run (`eval`, `predict`, `render`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunDirArgs {
    /// The run folder written by training (its config.toml and checkpoints are used).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Configuration: the run's saved config.toml unless --config is given; --set and the
    /// DEQ flags apply on top (e.g. `--f_max_iter 30` for a larger evaluation budget).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Threads and device.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Check the configuration and the run folder, print the resolved configuration, and exit.
    #[arg(long)]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde::Deserialize;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        train: Train,
        #[serde(default)]
        deq: DeqConfig,
    }
    #[derive(Debug, Deserialize, Serialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Train {
        seed: u64,
        lr: f64,
    }
    impl TrainerConfig for Cfg {
        const SEED_SECTION: &'static str = "train";
        fn deq_mut(&mut self) -> &mut DeqConfig {
            &mut self.deq
        }
        fn validate(&self) -> std::result::Result<(), String> {
            if self.train.lr < 0.0 {
                return Err("train.lr must be non-negative".into());
            }
            Ok(())
        }
    }

    #[test]
    fn shared_flags_load_override_save_and_reload() {
        let dir = std::env::temp_dir().join(format!("deq-train-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("small.toml");
        std::fs::write(&file, "[train]\nlr = 0.1\n[deq]\ngrad = 5\n").unwrap();
        let cli = Cli::parse_from([
            "x", "--config", file.to_str().unwrap(), "--set", "train.lr=0.5", "--seed", "7", "--f_solver", "anderson",
            "--set", "deq.f_max_iter=12", "--threads", "3", "--device", "cpu", "--out", "o",
        ]);
        let l: Loaded<Cfg> = cli.train.config.load(None, None, cli.train.seed).unwrap();
        assert_eq!((l.config.train.lr, l.config.train.seed, l.name.as_str()), (0.5, 7, "small"));
        assert_eq!((l.config.deq.f_solver.as_str(), l.config.deq.f_max_iter, l.config.deq.grad.clone()), ("anderson", 12, vec![5]));
        assert_eq!(cli.train.runtime.threads, Some(3));

        // The run folder keeps the resolved configuration; evaluation reads it back.
        let run = dir.join("run");
        save_config(&run, &l.config).unwrap();
        let again: Loaded<Cfg> = ConfigArgs::default().load_saved(&run).unwrap();
        assert_eq!(again.config, l.config);
        let e = ConfigArgs::default().load_saved::<Cfg>(&dir.join("nope")).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("nope"), "{e}");

        // Built-in text when the default file is missing; cross-field validation after overrides.
        let args = ConfigArgs { sets: vec!["train.lr=-1".into()], ..Default::default() };
        let e = args.load::<Cfg>(Some("missing.toml"), Some("[train]\nlr = 1.0\n"), None).unwrap_err().to_string();
        assert!(e.contains("train.lr must be non-negative") && e.contains("built-in"), "{e}");
        let l: Loaded<Cfg> = ConfigArgs::default().load(Some("missing.toml"), Some("[train]\nlr = 1.0\n"), None).unwrap();
        assert_eq!((l.config.train.lr, l.name.as_str(), l.path), (1.0, "missing", None));
        let e = ConfigArgs::default().load::<Cfg>(None, None, None).unwrap_err().to_string();
        assert!(e.contains("--config"), "{e}");
        let e = ConfigArgs { sets: vec!["deq.f_solvr=x".into()], ..Default::default() }.load::<Cfg>(Some(file.to_str().unwrap()), None, None).unwrap_err().to_string();
        assert!(e.contains("f_solvr"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
