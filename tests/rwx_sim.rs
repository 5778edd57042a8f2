//! A deterministic simulation of several replicas of one RWX volume: each
//! appends acknowledged lines to its own log, overwrites a shared file and
//! creates and deletes files of its own, while heads travel between them
//! as messages that are delayed, reordered, duplicated and dropped, links
//! are partitioned, and history is pruned. The network is the test: a
//! delivered head brings the sender's blobs, the receiver ends its history
//! where the sender pruned (as a pull does), and merges it. After healing,
//! every replica must hold one tree and one head, every acknowledged line
//! in order with no gap, no conflict copy of a file only one replica wrote,
//! and make no version while nobody writes.
//!
//! `JAX_SIM_SEEDS=N` runs seeds 0..N (default 60); `JAX_SIM_SEED=S` replays
//! one. A failure prints its seed.

mod common;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;

use common::copy_blobs;
use jax_csi::bucket::{
    path, Bucket, BucketId, BucketOptions, ConflictFile, FileKind, Mount, Retention, StateDir,
};
use jax_csi::crypto::Kek;
use jax_csi::store::Hash;

/// SplitMix64: a seeded, dependency-free source of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Replica {
    root: PathBuf,
    /// Last line of its own log a save acknowledged.
    acked: Option<u64>,
    next_line: u64,
    /// Files of its own it created and has not deleted.
    own: Vec<u32>,
    next_own: u32,
}

struct Sim {
    _dir: tempfile::TempDir,
    kek: Kek,
    id: BucketId,
    replicas: Vec<Replica>,
    /// Heads in flight: (from, to, head).
    net: VecDeque<(usize, usize, Hash)>,
    /// Replicas cut off from everyone.
    cut: HashSet<usize>,
    rng: Rng,
    log: Vec<String>,
}

impl Sim {
    fn new(seed: u64, n: usize) -> Self {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let kek = Kek::generate().unwrap();
        let id = BucketId::generate().unwrap();
        let roots: Vec<PathBuf> = (0..n).map(|i| base.path().join(format!("r{i}"))).collect();
        let states: Vec<StateDir> = roots.iter().map(|r| StateDir::open(r).unwrap()).collect();
        let opts = BucketOptions {
            chunk_size: 4096,
            ..Default::default()
        };
        let first = states[0].create_bucket(id, &kek, &opts).unwrap();
        {
            let mut m = first.mount().unwrap();
            for s in &states[1..] {
                m.grant(&s.identity().node_id()).unwrap();
            }
            m.save().unwrap();
        }
        for r in &roots[1..] {
            copy_blobs(&roots[0], r);
            common::copy_bucket_dir(&roots[0], r, &id);
        }
        Self {
            _dir: base,
            kek,
            id,
            replicas: roots
                .into_iter()
                .map(|root| Replica {
                    root,
                    acked: None,
                    next_line: 0,
                    own: Vec::new(),
                    next_own: 0,
                })
                .collect(),
            net: VecDeque::new(),
            cut: HashSet::new(),
            rng: Rng(seed),
            log: Vec::new(),
        }
    }

    fn bucket(&self, r: usize) -> Bucket {
        StateDir::open(&self.replicas[r].root)
            .unwrap()
            .open_bucket(&self.id, &self.kek)
            .unwrap()
    }

    fn head(&self, r: usize) -> Hash {
        self.bucket(r).head().unwrap()
    }

    fn announce(&mut self, from: usize) {
        let head = self.head(from);
        for to in 0..self.replicas.len() {
            if to != from {
                self.net.push_back((from, to, head));
            }
        }
    }

    /// One local edit, saved (an fsync), then announced.
    fn edit(&mut self, r: usize) {
        let bucket = self.bucket(r);
        let mut m = bucket.mount().unwrap();
        let what = self.rng.below(10);
        match what {
            0..=5 => {
                let line = self.replicas[r].next_line;
                append(
                    &mut m,
                    &format!("/w{r}.log"),
                    format!("r{r} {line}\n").as_bytes(),
                );
                m.save().unwrap();
                self.replicas[r].acked = Some(line);
                self.replicas[r].next_line += 1;
            }
            6 => {
                let body = format!("r{r} wrote this at {}\n", self.replicas[r].next_line);
                path::write_file(&mut m, "/shared.txt", body.as_bytes()).unwrap();
                m.save().unwrap();
            }
            7 | 8 => {
                let k = self.replicas[r].next_own;
                self.replicas[r].next_own += 1;
                path::write_file(&mut m, &format!("/own{r}-{k}"), b"mine").unwrap();
                m.save().unwrap();
                self.replicas[r].own.push(k);
            }
            _ => {
                if self.replicas[r].own.is_empty() {
                    return;
                }
                let i = self.rng.below(self.replicas[r].own.len() as u64) as usize;
                let k = self.replicas[r].own.swap_remove(i);
                let own = format!("/own{r}-{k}");
                let (parent, name) = path::parent_of(&mut m, &own).unwrap();
                m.unlink(parent, name).unwrap();
                m.save().unwrap();
            }
        }
        self.log.push(format!("edit r{r} kind {what}"));
        self.announce(r);
    }

    /// Deliver one message (or lose it to a cut link); returns false when
    /// none is in flight.
    fn deliver_one(&mut self) -> bool {
        if self.net.is_empty() {
            return false;
        }
        // Reordering: any message in flight may arrive next.
        let i = self.rng.below(self.net.len() as u64) as usize;
        let (from, to, head) = self.net.remove(i).unwrap();
        if self.cut.contains(&from) || self.cut.contains(&to) {
            self.log.push(format!("drop r{from}->r{to}"));
            return true;
        }
        if self.rng.chance(5) {
            self.net.push_back((from, to, head)); // duplicated
        }
        self.receive(from, to, head);
        true
    }

    /// `to` pulls `head` from `from`: the sender's blobs arrive, history
    /// ends where the sender pruned, and the head is merged.
    fn receive(&mut self, from: usize, to: usize, head: Hash) {
        let target = self.bucket(to);
        if target.head().unwrap() == head || target.has_in_history(&head).unwrap() {
            return;
        }
        copy_blobs(
            &self.replicas[from].root.clone(),
            &self.replicas[to].root.clone(),
        );
        // History ends where neither side holds a version any more (what
        // a pull notes as cut when every peer answers it is gone).
        let state = StateDir::open(&self.replicas[to].root).unwrap();
        let has = |h: &Hash| state.store().contains(h);
        if !has(&head) {
            self.log
                .push(format!("r{to}: r{from}'s head {head} is gone"));
            return;
        }
        let pruned = target.pruned_versions().unwrap();
        let mut stack = vec![head];
        let mut cut = Vec::new();
        let mut seen = HashSet::new();
        while let Some(h) = stack.pop() {
            if !seen.insert(h) {
                continue;
            }
            for p in target.manifest(&h).unwrap().parents() {
                if has(&p) {
                    stack.push(p);
                } else if !pruned.contains(&p) {
                    cut.push(p);
                }
            }
        }
        if !cut.is_empty() {
            self.log.push(format!("r{to} notes cut {cut:?}"));
            target.note_cut(&cut).unwrap();
        }
        let mut m = target.mount().unwrap();
        let before = target.head().unwrap();
        let report = m.merge_from(&head, &ConflictFile).unwrap_or_else(|e| {
            let tail = self.log.len().saturating_sub(40);
            panic!(
                "r{to} merging r{from}'s {head}: {e}\nlast steps:\n{}",
                self.log[tail..].join("\n")
            )
        });
        self.log.push(format!(
            "r{to} merged r{from}'s head: conflicts {:?}",
            report.conflicts
        ));
        let after = target.head().unwrap();
        if after != before && after != head {
            self.announce(to); // a merge of ours: everyone must hear of it
        }
    }

    fn prune(&mut self, r: usize) {
        let retention = Retention {
            count: Some(8),
            age: None,
        };
        self.bucket(r).prune(&retention, &HashSet::new()).unwrap();
        self.log.push(format!("prune r{r}"));
    }

    /// Until quiet: every replica announces to every other, all delivered.
    fn heal(&mut self) -> usize {
        self.cut.clear();
        for round in 0..30 {
            let heads: Vec<Hash> = (0..self.replicas.len()).map(|r| self.head(r)).collect();
            for r in 0..self.replicas.len() {
                self.announce(r);
            }
            while self.deliver_one() {}
            let now: Vec<Hash> = (0..self.replicas.len()).map(|r| self.head(r)).collect();
            if now == heads && now.iter().all(|h| *h == now[0]) {
                return round;
            }
        }
        panic!("no single head after 30 rounds of anti-entropy");
    }
}

fn append(m: &mut Mount, p: &str, bytes: &[u8]) {
    let ino = match path::resolve(m, p) {
        Ok(ino) => ino,
        Err(_) => {
            path::write_file(m, p, b"").unwrap();
            path::resolve(m, p).unwrap()
        }
    };
    let size = m.getattr(ino).unwrap().size;
    m.write(ino, size, bytes).unwrap();
}

fn tree(b: &Bucket) -> BTreeMap<String, Vec<u8>> {
    let mut m = b.mount().unwrap();
    path::walk(&mut m)
        .unwrap()
        .into_iter()
        .map(|(p, k)| {
            let content = if k == FileKind::File {
                path::read_file(&mut m, &p).unwrap()
            } else {
                Vec::new()
            };
            (p, content)
        })
        .collect()
}

fn run(seed: u64) {
    let mut rng = Rng(seed ^ 0xA5A5);
    let n = 3 + rng.below(3) as usize;
    let steps = 40 + rng.below(80);
    let mut sim = Sim::new(seed, n);
    for _ in 0..steps {
        match sim.rng.below(100) {
            0..=44 => {
                let r = sim.rng.below(n as u64) as usize;
                sim.edit(r);
            }
            45..=84 => {
                sim.deliver_one();
            }
            85..=89 => {
                // Lost: a message that never arrives.
                if !sim.net.is_empty() {
                    let i = sim.rng.below(sim.net.len() as u64) as usize;
                    sim.net.remove(i);
                }
            }
            90..=94 => {
                let r = sim.rng.below(n as u64) as usize;
                if !sim.cut.remove(&r) {
                    sim.cut.insert(r);
                }
            }
            _ => {
                let r = sim.rng.below(n as u64) as usize;
                sim.prune(r);
            }
        }
    }
    sim.heal();
    let trees: Vec<_> = (0..n).map(|r| tree(&sim.bucket(r))).collect();
    for r in 1..n {
        assert_eq!(
            trees[r], trees[0],
            "replica {r}'s tree differs from replica 0's"
        );
    }
    let t = &trees[0];
    for (r, rep) in sim.replicas.iter().enumerate() {
        let expected: Vec<u8> = match rep.acked {
            None => continue,
            Some(last) => (0..=last)
                .flat_map(|l| format!("r{r} {l}\n").into_bytes())
                .collect(),
        };
        let got = t.get(&format!("/w{r}.log")).cloned().unwrap_or_default();
        assert!(
            got == expected,
            "/w{r}.log lost acknowledged lines: {} bytes, {} expected",
            got.len(),
            expected.len()
        );
        for k in &rep.own {
            assert!(
                t.contains_key(&format!("/own{r}-{k}")),
                "/own{r}-{k} is gone"
            );
        }
    }
    let copies: Vec<&String> = t
        .keys()
        .filter(|p| p.contains('@') && !p.starts_with("/shared@"))
        .collect();
    assert!(
        copies.is_empty(),
        "conflict copies of single-writer files: {copies:?}"
    );
    // Idle: another round of anti-entropy makes nothing new.
    let heads: Vec<Hash> = (0..n).map(|r| sim.head(r)).collect();
    for r in 0..n {
        sim.announce(r);
    }
    while sim.deliver_one() {}
    let again: Vec<Hash> = (0..n).map(|r| sim.head(r)).collect();
    assert_eq!(again, heads, "a version was made while nobody wrote");
}

#[test]
fn replicas_converge_keep_every_acknowledged_write_and_invent_no_conflicts() {
    let seeds: Vec<u64> = match std::env::var("JAX_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("JAX_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("JAX_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(60);
            (0..n).collect()
        }
    };
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| run(seed));
        if let Err(e) = outcome {
            eprintln!("rwx simulation failed at seed {seed}; replay with JAX_SIM_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}
