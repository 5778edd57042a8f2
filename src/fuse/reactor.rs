//! One small set of threads serves the FUSE sessions of every volume on the
//! node: each session's /dev/fuse descriptor is non-blocking and registered
//! one-shot with one epoll. The worker woken for it reads one request,
//! re-arms the registration (so another worker is woken if a second request
//! is already waiting) and answers it. Exactly one worker is woken per
//! request: a level-triggered registration woke a second one for every
//! request, only for it to find nothing to read. A staged volume so costs
//! no thread and no receive buffer of its own, and any worker may serve any
//! volume (two requests of one volume run on two workers at once).
//!
//! Stopping a session ([`Reactor::stop`]) removes it from the epoll and
//! waits until no worker holds it (a worker holds its registration while
//! inside it): every request read from it has been answered, and none
//! other will be read (what a handover needs).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fuser::{Processed, RequestBuffer, SessionDispatcher};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::fs::JaxFs;

/// How long a worker that answered a request polls for the next one
/// before it sleeps. Bounded, and only one worker spins, so an idle node
/// spends nothing and a busy one at most this much per burst.
const SPIN: Duration = Duration::from_micros(100);

/// Worker threads: enough that a slow request (an fsync, a chunk fetched
/// from a peer) on one volume does not hold up the others, and at least two
/// per core so reads of one volume decrypt in parallel.
pub fn worker_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(4)
}

/// The node's FUSE reactor.
pub struct Reactor {
    epoll: Epoll,
    sessions: Mutex<HashMap<u64, Arc<Registration>>>,
    next: AtomicU64,
    /// A worker is polling for the next request instead of sleeping.
    spinning: AtomicBool,
}

/// One session served by the reactor.
struct Registration {
    dispatcher: SessionDispatcher<JaxFs>,
    /// Set by [`Reactor::stop`]: a worker that still got hold of it does
    /// not start another batch.
    removed: AtomicBool,
    /// The connection ended (unmounted or aborted).
    ended: Mutex<bool>,
    ended_cv: Condvar,
}

/// The owner's handle on a served session.
pub struct Served {
    token: u64,
    registration: Arc<Registration>,
}

impl Served {
    /// The descriptor the session reads (open while it is served).
    pub fn raw_fd(&self) -> RawFd {
        self.registration.dispatcher.as_fd().as_raw_fd()
    }

    /// Wait up to `timeout` for the connection to end; true if it did.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let ended = self.registration.ended.lock().unwrap();
        let (ended, _) = self
            .registration
            .ended_cv
            .wait_timeout_while(ended, timeout, |e| !*e)
            .unwrap();
        *ended
    }
}

impl Reactor {
    /// The process's reactor; its workers start on first use.
    pub fn global() -> &'static Reactor {
        static REACTOR: OnceLock<&'static Reactor> = OnceLock::new();
        REACTOR.get_or_init(|| {
            let reactor: &'static Reactor = Box::leak(Box::new(Reactor {
                epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                    .expect("creating the FUSE reactor's epoll"),
                sessions: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
                spinning: AtomicBool::new(false),
            }));
            for i in 0..worker_count() {
                std::thread::Builder::new()
                    .name(format!("fuse-{i}"))
                    .spawn(move || reactor.work())
                    .expect("spawning a FUSE worker");
            }
            reactor
        })
    }

    /// Serve `dispatcher` from now on.
    pub fn serve(&self, dispatcher: SessionDispatcher<JaxFs>) -> std::io::Result<Served> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let registration = Arc::new(Registration {
            dispatcher,
            removed: AtomicBool::new(false),
            ended: Mutex::new(false),
            ended_cv: Condvar::new(),
        });
        self.sessions
            .lock()
            .unwrap()
            .insert(token, registration.clone());
        if let Err(e) = self
            .epoll
            .add(registration.dispatcher.as_fd(), armed(token))
        {
            self.sessions.lock().unwrap().remove(&token);
            return Err(e.into());
        }
        Ok(Served {
            token,
            registration,
        })
    }

    /// Stop serving: returns once no worker is inside the session, with the
    /// session back (to destroy, or to leave mounted for a successor).
    pub fn stop(&self, served: Served) -> SessionDispatcher<JaxFs> {
        let Served {
            token,
            registration,
        } = served;
        registration.removed.store(true, Ordering::SeqCst);
        // ENOENT when a worker already removed an ended session.
        let _ = self.epoll.delete(registration.dispatcher.as_fd());
        self.sessions.lock().unwrap().remove(&token);
        // Out of the map, no worker can take a new reference; the last
        // one a worker holds goes when it leaves the session.
        let mut registration = registration;
        loop {
            match Arc::try_unwrap(registration) {
                Ok(r) => return r.dispatcher,
                Err(still_shared) => {
                    registration = still_shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    fn work(&self) {
        let mut buf = RequestBuffer::new();
        // One event at a time: the sessions ready at once go to different
        // workers, not one after another to the first one woken.
        let mut events = [EpollEvent::empty(); 1];
        // While set, this worker is the reactor's spinner, until then.
        let mut spin_until: Option<Instant> = None;
        loop {
            let timeout = match spin_until {
                Some(_) => EpollTimeout::ZERO,
                None => EpollTimeout::NONE,
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "FUSE reactor: epoll_wait failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if n == 0 {
                if spin_until.is_some_and(|t| Instant::now() >= t) {
                    spin_until = None;
                    self.spinning.store(false, Ordering::Release);
                }
                std::hint::spin_loop();
                continue;
            }
            for ev in &events[..n] {
                let token = ev.data();
                let Some(r) = self.sessions.lock().unwrap().get(&token).cloned() else {
                    continue;
                };
                if !r.removed.load(Ordering::SeqCst) {
                    self.serve_some(token, &r, &mut buf);
                }
            }
            // Having answered a request, look for the next one for a moment
            // before sleeping (one worker at a time): a program that waits
            // for each answer asks again within microseconds, and waking a
            // sleeping worker, on a VM whose idle vCPU halted, costs tens.
            if spin_until.is_some() || !self.spinning.swap(true, Ordering::AcqRel) {
                spin_until = Some(Instant::now() + SPIN);
            }
        }
    }

    /// Read one request of a session, re-arm its registration, answer it.
    fn serve_some(&self, token: u64, r: &Registration, buf: &mut RequestBuffer) {
        // ENOENT once the session was stopped or ended: it stays out.
        let rearm = || {
            let _ = self.epoll.modify(r.dispatcher.as_fd(), &mut armed(token));
        };
        match r.dispatcher.process_one_with(buf, rearm) {
            Ok(Processed::Request | Processed::Idle) => {}
            Ok(Processed::Ended) => self.ended(r),
            Err(e) => {
                tracing::error!(token, error = %e, "FUSE session failed; it is no longer served");
                self.ended(r)
            }
        }
    }

    /// The connection ended: stop watching it (an ended /dev/fuse polls as
    /// an error forever) and tell the owner.
    fn ended(&self, r: &Registration) {
        let _ = self.epoll.delete(r.dispatcher.as_fd());
        *r.ended.lock().unwrap() = true;
        r.ended_cv.notify_all();
    }
}

/// A session's registration: readable, reported to one worker, then off
/// until that worker re-arms it.
fn armed(token: u64) -> EpollEvent {
    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, token)
}
