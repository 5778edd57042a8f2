//! Progress of long work (a large sync, a big fetch) as log lines: at most
//! one every few seconds while it runs, and one at the end if it took long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a running task reports.
const EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    what: &'static str,
    subject: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    last: Mutex<Instant>,
}

impl Progress {
    /// `what` names the work ("fetching blobs"), `subject` what it is for.
    pub fn new(what: &'static str, subject: impl Into<String>, total: u64) -> Self {
        let now = Instant::now();
        Self {
            what,
            subject: subject.into(),
            total,
            done: AtomicU64::new(0),
            started: now,
            last: Mutex::new(now),
        }
    }

    /// `n` more items done; logs when the last report is old enough.
    pub fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last.lock().unwrap();
        if last.elapsed() >= EVERY && done < self.total {
            *last = Instant::now();
            tracing::info!(
                subject = %self.subject,
                done,
                total = self.total,
                percent = done * 100 / self.total.max(1),
                secs = self.started.elapsed().as_secs(),
                "{}",
                self.what
            );
        }
    }

    /// The end: reported when the work took longer than one interval.
    pub fn finish(&self) {
        if self.started.elapsed() >= EVERY {
            tracing::info!(
                subject = %self.subject,
                done = self.done.load(Ordering::Relaxed),
                total = self.total,
                secs = self.started.elapsed().as_secs_f64(),
                "{}: done",
                self.what
            );
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_done() {
        let p = Progress::new("testing", "here", 10);
        p.advance(3);
        p.advance(4);
        assert_eq!(p.done(), 7);
        p.finish();
    }
}
