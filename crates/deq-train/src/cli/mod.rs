//! The command-line convention every DEQ-zoo binary follows, in one place.
//!
//! | flag | meaning |
//! |---|---|
//! | `--config FILE` | run configuration (TOML); unknown keys are errors naming the key |
//! | `--set section.key=value` | override any key (repeatable; TOML values) |
//! | `--f_solver`, `--f_max_iter`, `--grad`, ... | TorchDEQ's `[deq]` flags |
//! | `--out DIR` | the run folder (training writes it, `eval`/`predict`/`render`/`plot` read it) |
//! | `--resume` | continue a run from its latest checkpoint |
//! | `--seed N` | the configuration's seed |
//! | `--threads N` | compute threads (default: every core) |
//! | `--device cpu\|cuda[:N]` | where to run |
//! | `--dry-run` | validate configuration and data paths, print the resolved configuration, exit |
//!
//! `RUST_LOG` selects log messages ([`init_logging`]). Subcommands that use a finished run read
//! the configuration saved with it ([`ConfigArgs::load_saved`]), so settings used in training
//! are never lost at evaluation. Every binary also has `plot` ([`crate::plot`]).
//!
//! ```
//! use clap::{Parser, Subcommand};
//! use deq_train::cli::{RunDirArgs, TrainArgs};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(subcommand)]
//!     cmd: Cmd,
//! }
//! #[derive(Subcommand)]
//! enum Cmd {
//!     Train(TrainArgs),
//!     Eval(RunDirArgs),
//! }
//! let cli = Cli::parse_from(["bin", "train", "--set", "train.lr=0.1", "--grad", "5", "--threads", "2"]);
//! let Cmd::Train(t) = cli.cmd else { unreachable!() };
//! assert_eq!(t.config.sets, ["train.lr=0.1"]);
//! assert_eq!(t.config.deq.grad, Some(vec![5]));
//! ```

mod args;
mod config_file;
mod device;
mod logging;

pub use args::{print_dry_run, save_config, ConfigArgs, Loaded, RunDirArgs, RuntimeArgs, TrainArgs, TrainerConfig, SAVED_CONFIG};
pub use config_file::{load_with_overrides, parse_with_overrides, Override};
pub use device::DeviceArg;
pub use logging::init_logging;
