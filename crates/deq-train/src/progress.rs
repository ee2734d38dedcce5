//! Progress reporting for long loops: a redrawn bar on a terminal, plain lines otherwise
//! (logs, CI), at most every `interval` seconds.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress of a loop of `total` items.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    start: Instant,
    last: Option<Instant>,
    interval: Duration,
    tty: bool,
    enabled: bool,
}

impl Progress {
    /// A new report for `total` items; `enabled = false` (e.g. on ranks other than 0) silences it.
    pub fn new(label: impl Into<String>, total: usize, enabled: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            label: label.into(),
            total,
            done: 0,
            start: Instant::now(),
            last: None,
            interval: Duration::from_secs_f64(if tty { 0.2 } else { 10.0 }),
            tty,
            enabled,
        }
    }

    /// Advances by `n` items; `status` is appended to the line (e.g. the running loss).
    pub fn inc(&mut self, n: usize, status: &str) {
        self.done = (self.done + n).min(self.total.max(self.done + n));
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let due = self.last.map_or(true, |t| now - t >= self.interval) || self.done >= self.total;
        if !due {
            return;
        }
        self.last = Some(now);
        let line = self.line(status);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            if self.done >= self.total {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// The status line: label, count, percentage, rate and ETA.
    pub fn line(&self, status: &str) -> String {
        let el = self.start.elapsed().as_secs_f64();
        let rate = self.done as f64 / el.max(1e-9);
        let eta = if rate > 0.0 { (self.total.saturating_sub(self.done)) as f64 / rate } else { f64::NAN };
        let pct = 100.0 * self.done as f64 / self.total.max(1) as f64;
        let width = 24;
        let filled = ((pct / 100.0) * width as f64).round() as usize;
        let bar: String = (0..width).map(|i| if i < filled { '#' } else { '.' }).collect();
        format!("{} [{bar}] {}/{} {pct:5.1}% {rate:.1}/s eta {eta:.0}s {status}", self.label, self.done, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts() {
        let mut p = Progress::new("epoch 1", 10, false);
        p.inc(5, "");
        let l = p.line("loss 0.5");
        assert!(l.contains("5/10") && l.contains("50.0%") && l.contains("loss 0.5"), "{l}");
    }
}
