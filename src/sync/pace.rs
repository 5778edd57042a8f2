//! How a rebuild yields to the serving nodes' own work (#28: a rebuild
//! must not starve the pods' reads and writes on the nodes it fetches
//! from). The idea is LEDBAT's (the "scavenger" transfers of BitTorrent's
//! uTP and of OS updates): a background transfer watches its own delay
//! and backs off when it grows, so it only uses what others leave idle.
//!
//! Here the delay is the time a group of blobs takes per byte. While it
//! stays within [`SLOWER`] of the fastest seen in the last
//! [`BASE_WINDOW`], the rebuild runs flat out. When it grows (a serving
//! node's disk or CPU is busy with its pods, or the link is loaded), the
//! rebuild rests after each group for a share of the group's time that
//! doubles with each slow group (up to [`REST_MAX`]: it always keeps a
//! ninth of the time) and halves with each fast one. A cap in bytes a
//! second (`--rebuild-mib-per-sec`) applies on top.
//!
//! The serving side yields too, to what it can see directly: a blind
//! replica asks for its blobs with `GetBlobsBackground`, and a node that
//! serves one rests after each blob while its own pods keep its FUSE
//! mounts busy ([`PodLoad`]): for every second of serving, up to
//! [`SERVE_REST_MAX`] seconds of rest, in proportion to how busy.

use std::time::{Duration, Instant};

/// A group this much slower per byte than the base is a sign of load.
pub const SLOWER: f64 = 2.0;
/// The base is the fastest group of the last two windows this long.
pub const BASE_WINDOW: Duration = Duration::from_secs(60);
/// The first rest, as a share of the group's time ...
const REST_MIN: f64 = 0.25;
/// ... and the longest (the rebuild keeps 1 / (1 + 8) of the time).
pub const REST_MAX: f64 = 8.0;
/// Groups smaller than this say little about load (a round trip).
const MEASURED_BYTES: u64 = 256 << 10;

/// A rebuild's pace (see the module docs).
#[derive(Debug)]
pub struct Pace {
    /// Most bytes a second, if capped.
    cap: Option<u64>,
    /// Whether it yields to load at all.
    yields: bool,
    started: Instant,
    fetched: u64,
    /// Seconds per byte: the fastest group of this window and the last.
    base_now: Option<f64>,
    base_before: Option<f64>,
    window_started: Instant,
    /// The share of a group's time rested after it.
    rest: f64,
}

impl Pace {
    pub fn new(cap: Option<u64>, yields: bool) -> Self {
        let now = Instant::now();
        Self {
            cap,
            yields,
            started: now,
            fetched: 0,
            base_now: None,
            base_before: None,
            window_started: now,
            rest: 0.0,
        }
    }

    /// Whether groups are timed and followed by rests at all.
    pub fn is_paced(&self) -> bool {
        self.cap.is_some() || self.yields
    }

    /// The fastest seconds per byte of this window and the last.
    fn base(&self) -> Option<f64> {
        match (self.base_now, self.base_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A group of `bytes` took `took`: how long to rest before the next.
    pub fn after_group(&mut self, bytes: u64, took: Duration) -> Duration {
        self.fetched += bytes;
        let mut rest = Duration::ZERO;
        if self.yields && bytes >= MEASURED_BYTES {
            self.note(bytes, took, Instant::now());
            rest = took.mul_f64(self.rest);
        }
        if let Some(cap) = self.cap {
            let due = Duration::from_secs_f64(self.fetched as f64 / cap as f64);
            rest = rest.max(due.saturating_sub(self.started.elapsed()));
        }
        rest
    }

    /// Take a group's time per byte into the base and the rest share.
    fn note(&mut self, bytes: u64, took: Duration, now: Instant) {
        let per_byte = took.as_secs_f64() / bytes as f64;
        if now.duration_since(self.window_started) >= BASE_WINDOW {
            self.base_before = self.base_now.take();
            self.window_started = now;
        }
        let slow = self.base().is_some_and(|base| per_byte > base * SLOWER);
        self.base_now = Some(self.base_now.map_or(per_byte, |b| b.min(per_byte)));
        self.rest = if slow {
            (self.rest * 2.0).clamp(REST_MIN, REST_MAX)
        } else if self.rest / 2.0 < REST_MIN {
            0.0
        } else {
            self.rest / 2.0
        };
    }

    /// The share of its time the rebuild rests now.
    pub fn resting(&self) -> f64 {
        self.rest / (1.0 + self.rest)
    }
}

/// Below this share of wall time in FUSE requests, pods are idle enough.
pub const PODS_BUSY: f64 = 0.1;
/// Rest per unit of serving time for each unit of pods' busy share ...
const SERVE_REST_PER_BUSY: f64 = 4.0;
/// ... and at most this much (the rebuild keeps a ninth of the time).
pub const SERVE_REST_MAX: f64 = 8.0;
/// The pods' busy share is measured over at least this long.
const LOAD_WINDOW: Duration = Duration::from_millis(100);

/// How busy this node's pods keep its FUSE mounts, sampled from
/// `metrics::fuse_busy_nanos` (the time FUSE requests took, summed).
#[derive(Debug)]
pub struct PodLoad {
    at: Instant,
    busy_nanos: u64,
    /// The share of wall time in FUSE requests over the last window (more
    /// than 1 with requests in parallel).
    share: f64,
}

impl PodLoad {
    pub fn new(now: Instant, busy_nanos: u64) -> Self {
        Self {
            at: now,
            busy_nanos,
            share: 0.0,
        }
    }

    /// Take a new reading; the busy share of the last whole window.
    pub fn sample(&mut self, now: Instant, busy_nanos: u64) -> f64 {
        let span = now.duration_since(self.at);
        if span >= LOAD_WINDOW {
            let busy = busy_nanos.saturating_sub(self.busy_nanos) as f64 / 1e9;
            self.share = busy / span.as_secs_f64();
            self.at = now;
            self.busy_nanos = busy_nanos;
        }
        self.share
    }

    /// How long to rest after `served` spent serving a rebuild.
    pub fn rest_after(&self, served: Duration) -> Duration {
        if self.share < PODS_BUSY {
            return Duration::ZERO;
        }
        served.mul_f64((self.share * SERVE_REST_PER_BUSY).min(SERVE_REST_MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_idle_serving_node_gets_no_rest() {
        let mut p = Pace::new(None, true);
        for took in [100, 95, 110, 130, 90, 150] {
            assert_eq!(p.after_group(16 * MIB, ms(took)), Duration::ZERO);
        }
        assert_eq!(p.resting(), 0.0);
    }

    #[test]
    fn a_loaded_serving_node_makes_the_rebuild_rest_more_and_more_then_less() {
        let mut p = Pace::new(None, true);
        p.after_group(16 * MIB, ms(100));
        // Three times slower per byte: the pods are busy there.
        let rests: Vec<Duration> = (0..8).map(|_| p.after_group(16 * MIB, ms(300))).collect();
        assert_eq!(rests[0], ms(75), "a quarter of the group's time first");
        assert!(rests.windows(2).all(|w| w[1] >= w[0]), "{rests:?}");
        assert_eq!(
            *rests.last().unwrap(),
            ms(2400),
            "at most eight times the group's time"
        );
        assert!((p.resting() - 8.0 / 9.0).abs() < 1e-9);
        // The load goes: the rests halve, then stop.
        let back: Vec<Duration> = (0..8).map(|_| p.after_group(16 * MIB, ms(100))).collect();
        assert_eq!(back[0], ms(400));
        assert_eq!(*back.last().unwrap(), Duration::ZERO);
        assert!(back.windows(2).all(|w| w[1] <= w[0]), "{back:?}");
    }

    #[test]
    fn a_group_per_byte_is_what_counts_not_its_size() {
        let mut p = Pace::new(None, true);
        p.after_group(16 * MIB, ms(100));
        // Twice the bytes in twice the time: the same pace, no load.
        assert_eq!(p.after_group(32 * MIB, ms(200)), Duration::ZERO);
        // A group too small to tell is not measured.
        assert_eq!(p.after_group(4096, ms(50)), Duration::ZERO);
        assert_eq!(p.resting(), 0.0);
    }

    #[test]
    fn the_base_is_forgotten_after_two_windows() {
        let mut p = Pace::new(None, true);
        let t0 = Instant::now();
        p.note(MIB, ms(10), t0);
        // Much slower for good (another disk): slow at first ...
        p.note(MIB, ms(100), t0 + ms(1));
        assert!(p.rest > 0.0);
        // ... and the new normal two windows later.
        p.note(MIB, ms(100), t0 + BASE_WINDOW + ms(2));
        p.note(MIB, ms(100), t0 + BASE_WINDOW * 2 + ms(3));
        for i in 0..6 {
            p.note(MIB, ms(100), t0 + BASE_WINDOW * 2 + ms(4 + i));
        }
        assert_eq!(p.rest, 0.0);
    }

    #[test]
    fn a_serving_node_rests_in_proportion_to_its_pods_load() {
        let t0 = Instant::now();
        let mut load = PodLoad::new(t0, 0);
        // Idle pods: serve flat out.
        assert_eq!(load.sample(t0 + ms(200), 1_000_000), 0.005);
        assert_eq!(load.rest_after(ms(10)), Duration::ZERO);
        // A reading within the window keeps the last share.
        assert_eq!(load.sample(t0 + ms(250), 90_000_000), 0.005);
        // Pods in FUSE half of the time: two seconds of rest per second served.
        let share = load.sample(t0 + ms(400), 1_000_000 + 100_000_000);
        assert!((share - 0.5).abs() < 1e-9, "{share}");
        assert_eq!(load.rest_after(ms(10)), ms(20));
        // Three requests in parallel all the time: the most rest.
        load.sample(t0 + ms(600), 101_000_000 + 600_000_000);
        assert_eq!(load.rest_after(ms(10)), ms(80));
    }

    #[test]
    fn a_cap_paces_on_top_and_no_yield_means_no_rest_for_load() {
        let mut p = Pace::new(Some(10 * MIB), false);
        assert!(p.is_paced());
        // 10 MiB at 10 MiB/s: due a second after the start.
        let rest = p.after_group(10 * MIB, ms(100));
        assert!(rest > ms(900) && rest <= ms(1000), "{rest:?}");
        let mut flat = Pace::new(None, false);
        assert!(!flat.is_paced());
        flat.after_group(16 * MIB, ms(100));
        assert_eq!(flat.after_group(16 * MIB, ms(1000)), Duration::ZERO);
    }
}
