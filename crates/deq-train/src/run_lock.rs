//! One writer per run folder: a lock file holding the owner's pid and host.
//!
//! [`RunLock::acquire`] creates `<dir>/run.lock` exclusively. When the file already exists,
//! the owner is checked: a live process on this host (or any owner on another host, which
//! cannot be checked from here) makes the call fail with an error naming the pid, the host and
//! the lock file; a dead owner on this host (a run that was killed) is a stale lock, which is
//! replaced with a warning. Dropping the lock removes the file.

use crate::error::{Result, TrainError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the lock inside a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// Held while a run writes into its folder; removes the lock file when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` is alive on this machine.
fn alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        return Path::new(&format!("/proc/{pid}")).exists();
    }
    std::process::Command::new("kill").args(["-0", &pid.to_string()]).stderr(std::process::Stdio::null()).status().map(|s| s.success()).unwrap_or(true)
}

impl RunLock {
    /// Takes the lock of run folder `dir` (created if missing).
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let me = format!("pid {}\nhost {}\n", std::process::id(), host());
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(me.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| TrainError::io(&path, e))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()));
                    let pid = field("pid ").and_then(|p| p.parse::<u32>().ok());
                    let owner_host = field("host ").unwrap_or_default();
                    match pid {
                        Some(pid) if owner_host == host() && !alive(pid) => {
                            tracing::warn!("{}: stale lock of pid {pid} (no longer running), taking over", path.display());
                            let _ = std::fs::remove_file(&path);
                        }
                        Some(pid) => {
                            return Err(TrainError::Config {
                                key: "--out".into(),
                                message: format!(
                                    "{} is in use by pid {pid} on {owner_host} (lock file {}); wait for that run, use another --out, or delete the lock if that run is gone",
                                    dir.display(),
                                    path.display()
                                ),
                            })
                        }
                        None => {
                            // Written by nothing we know, or cut short while being written: stale.
                            tracing::warn!("{}: unreadable lock file, taking over", path.display());
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(TrainError::io(&path, e)),
            }
        }
        Err(TrainError::io(&path, std::io::Error::new(std::io::ErrorKind::AlreadyExists, "could not take the run lock")))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_owner_refused_stale_lock_replaced_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("deq-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = RunLock::acquire(&dir).unwrap();
        let text = std::fs::read_to_string(a.path()).unwrap();
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert!(!h.trim().is_empty() && text.contains(&format!("host {}\n", h.trim())), "{text}");
        }
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.contains("in use by pid") && e.contains(LOCK_FILE), "{e}");
        drop(a);
        assert!(!dir.join(LOCK_FILE).exists(), "released");
        // A dead owner on this host: a child that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(dir.join(LOCK_FILE), format!("pid {dead}\nhost {}\n", host())).unwrap();
        let b = RunLock::acquire(&dir).unwrap();
        assert!(std::fs::read_to_string(b.path()).unwrap().contains(&format!("pid {}", std::process::id())));
        drop(b);
        // A live owner on another host cannot be checked: refused.
        std::fs::write(dir.join(LOCK_FILE), format!("pid {}\nhost elsewhere\n", std::process::id())).unwrap();
        assert!(RunLock::acquire(&dir).unwrap_err().to_string().contains("elsewhere"));
        // An empty (torn) lock file is stale.
        std::fs::write(dir.join(LOCK_FILE), "").unwrap();
        drop(RunLock::acquire(&dir).unwrap());
        std::fs::remove_dir_all(dir).ok();
    }
}
