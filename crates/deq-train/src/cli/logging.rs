//! Logging setup shared by every binary: `tracing` to standard error, filtered by `RUST_LOG`.

/// Installs the `tracing` subscriber: messages go to standard error, `RUST_LOG` selects them
/// (`RUST_LOG=debug`, `RUST_LOG=deq_core=trace,info`), the default is `info`. Calling it twice
/// is harmless (the second call does nothing).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
