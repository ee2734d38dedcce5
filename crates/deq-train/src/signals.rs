//! Clean stops on SIGINT and SIGTERM (what schedulers send before pre-emption).
//!
//! A binary calls [`install`] once at start-up; training loops poll [`requested`] after every
//! optimiser step and, when it is set, write a checkpoint and return
//! [`TrainError::Interrupted`](crate::TrainError::Interrupted), which the binary turns into
//! exit code [`EXIT_INTERRUPTED`]; `--resume` then continues the run as if it had not
//! stopped. A second signal while the first is being handled ends the process at once (the
//! default action), so an impatient Ctrl-C still works. Without [`install`] (library use,
//! tests) nothing is intercepted and [`requested`] stays `None`.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Exit code of a run stopped by SIGINT or SIGTERM after writing its checkpoint (`EX_TEMPFAIL`:
/// try again, with `--resume`).
pub const EXIT_INTERRUPTED: i32 = 75;

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Intercepts SIGINT and SIGTERM for the rest of the process (idempotent). On platforms
/// without POSIX signals it does nothing.
pub fn install() -> std::io::Result<()> {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let seen = std::sync::Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Registered first, so it runs first: a signal after the first one terminates.
            signal_hook::flag::register_conditional_default(sig, seen.clone())?;
            signal_hook::flag::register(sig, seen.clone())?;
            // SAFETY: the action only stores into an atomic, which is async-signal-safe.
            unsafe { signal_hook::low_level::register(sig, move || RECEIVED.store(sig, Ordering::SeqCst)) }?;
        }
    }
    Ok(())
}

/// The signal received since [`install`] (2 for SIGINT, 15 for SIGTERM), if any.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The name of signal `sig` for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Records `sig` as received, as the handler would (for tests of the loops' stop path).
pub fn simulate(sig: i32) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Forgets a received signal (for tests).
pub fn clear() {
    RECEIVED.store(0, Ordering::SeqCst);
}

/// A binary's exit status for the result of its work: success, [`EXIT_INTERRUPTED`] when the
/// error (or one in its chain) is [`TrainError::Interrupted`](crate::TrainError::Interrupted),
/// else 1. Errors are printed to stderr as `Error: {error:?}`, as `main` returning `Result`
/// prints them.
pub fn exit_status<E>(result: Result<(), E>) -> std::process::ExitCode
where
    E: std::fmt::Debug + AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            let top: &(dyn std::error::Error + 'static) = e.as_ref();
            let interrupted = std::iter::successors(Some(top), |e| e.source())
                .any(|e| matches!(e.downcast_ref::<crate::TrainError>(), Some(crate::TrainError::Interrupted { .. })));
            std::process::ExitCode::from(if interrupted { EXIT_INTERRUPTED as u8 } else { 1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Boxed(Box<dyn std::error::Error + Send + Sync + 'static>);
    impl AsRef<dyn std::error::Error + Send + Sync + 'static> for Boxed {
        fn as_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            &*self.0
        }
    }

    #[test]
    fn interrupted_runs_exit_with_their_own_code() {
        let stopped = crate::TrainError::Interrupted { signal: name(15), step: 7, checkpoint: "c/latest.json".into() };
        assert!(stopped.to_string().contains("SIGTERM") && stopped.to_string().contains("--resume"));
        let code = |r: Result<(), Boxed>| format!("{:?}", exit_status(r));
        assert_eq!(code(Err(Boxed(Box::new(stopped)))), format!("{:?}", std::process::ExitCode::from(EXIT_INTERRUPTED as u8)));
        let other = crate::TrainError::Config { key: "k".into(), message: "m".into() };
        assert_eq!(code(Err(Boxed(Box::new(other)))), format!("{:?}", std::process::ExitCode::from(1)));
        assert_eq!(code(Ok(())), format!("{:?}", std::process::ExitCode::SUCCESS));
        assert_eq!(requested(), None, "nothing received without a signal");
        simulate(2);
        assert_eq!(requested().map(name), Some("SIGINT"));
        clear();
    }
}
