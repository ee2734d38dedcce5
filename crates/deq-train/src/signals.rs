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
