//! A pod's workload for tests that disturb the node plugin under it: a
//! thread that keeps a file and a directory of the volume open and works
//! through them, recording each operation's latency and error.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One operation of the pod: when it started, how long it took, and its error.
pub struct Op {
    pub started: Instant,
    pub took: Duration,
    pub error: Option<String>,
}

/// A pod's workload, on its own thread: appends numbered lines to a file it
/// keeps open (fsync every few), reads a file through a directory it keeps
/// open, and stats by path.
pub struct Pod {
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
    /// Lines whose write returned, and how many of them an fsync covered.
    pub written: Arc<AtomicUsize>,
    pub synced: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pod {
    /// Start on the volume at `root`, which must hold a file `before`
    /// containing "written before\n".
    pub fn start(root: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicUsize::new(0));
        let synced = Arc::new(AtomicUsize::new(0));
        let (s, o, w, y) = (stop.clone(), ops.clone(), written.clone(), synced.clone());
        let thread = std::thread::spawn(move || {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(root.join("log"))
                .unwrap();
            let dir = std::fs::File::open(&root).unwrap();
            let mut n = 0usize;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = (|| -> std::io::Result<()> {
                    log.write_all(format!("line {n}\n").as_bytes())?;
                    w.store(n + 1, Ordering::SeqCst);
                    if n % 5 == 4 {
                        log.sync_all()?;
                        y.store(n + 1, Ordering::SeqCst);
                    }
                    let fd = nix::fcntl::openat(
                        dir.as_fd(),
                        "before",
                        nix::fcntl::OFlag::O_RDONLY,
                        nix::sys::stat::Mode::empty(),
                    )?;
                    let mut text = String::new();
                    std::fs::File::from(fd).read_to_string(&mut text)?;
                    if text != "written before\n" {
                        return Err(std::io::Error::other(format!("read {text:?}")));
                    }
                    std::fs::metadata(root.join("log"))?;
                    Ok(())
                })();
                o.lock().unwrap().push(Op {
                    started,
                    took: started.elapsed(),
                    error: result.err().map(|e| e.to_string()),
                });
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Pod {
            stop,
            ops,
            written,
            synced,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.ops.lock().unwrap().len()
    }

    /// Wait until the pod has done `more` operations beyond what it had.
    pub fn wait_more(&self, more: usize) {
        let want = self.count() + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count() < want {
            assert!(Instant::now() < deadline, "the pod's operations stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn finish(mut self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.ops.lock().unwrap())
    }
}

/// Errors and the longest operation among the ops that ended between
/// `from` and `to` (an op in flight across a disturbance ends after it).
/// What a crash of the node plugin may cost a pod: the one request the
/// dead process had read (ECONNABORTED), and the first fsync of its file
/// (EIO, once: writes the dead process had answered but not made durable
/// are lost, and the new one says so). Anything else fails the test.
pub fn assert_crash_errors(errors: &[String]) {
    let aborted = errors.iter().filter(|e| e.contains("os error 103")).count();
    let reported = errors.iter().filter(|e| e.contains("os error 5)")).count();
    assert!(
        aborted <= 1 && reported <= 1 && aborted + reported == errors.len(),
        "a crash may fail the request in flight and, once, the first fsync: {errors:?}"
    );
}

pub fn window(ops: &[Op], from: Instant, to: Instant) -> (Vec<String>, Duration) {
    let inside: Vec<&Op> = ops
        .iter()
        .filter(|o| (from..=to).contains(&(o.started + o.took)))
        .collect();
    let errors = inside.iter().filter_map(|o| o.error.clone()).collect();
    let longest = inside.iter().map(|o| o.took).max().unwrap_or_default();
    (errors, longest)
}
