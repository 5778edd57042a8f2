//! How versions of a bucket are related: a version's whole verified
//! history, the merge base of two, and whether one contains the other.
//!
//! The merge base and ancestor walks go down the version graph by height
//! (a parent is always lower than its child), so they touch only the
//! versions above the answer — what two replicas made since they last
//! agreed — never the whole history. A merge at tens of versions a second
//! stays cheap however long the bucket has lived, and no history has to be
//! cut to keep it so.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use super::error::{BucketError, Result};
use super::manifest::{self, Manifest};
use super::BucketCore;
use crate::store::Hash;

/// Reached from the local head.
const LOCAL: u8 = 1;
/// Reached from the incoming head.
const REMOTE: u8 = 2;
const BOTH: u8 = LOCAL | REMOTE;

/// How an incoming head relates to the local one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ancestry {
    /// The highest version both heads descend from (ties: the larger
    /// hash), the base of a three-way merge; `None` when they share no
    /// version this node still holds.
    pub base: Option<Hash>,
}

impl Ancestry {
    /// The incoming head is already in the local history.
    pub fn contains_incoming(&self, incoming: &Hash) -> bool {
        self.base == Some(*incoming)
    }
}

/// A walk over manifests in decreasing height, each loaded once.
struct Walk<'a> {
    core: &'a BucketCore,
    pruned: std::sync::Arc<HashSet<Hash>>,
    queue: BinaryHeap<(u64, Hash)>,
    flags: HashMap<Hash, u8>,
    loaded: HashMap<Hash, Manifest>,
}

impl<'a> Walk<'a> {
    fn new(core: &'a BucketCore) -> Result<Self> {
        Ok(Self {
            core,
            pruned: core.pruned()?,
            queue: BinaryHeap::new(),
            flags: HashMap::new(),
            loaded: HashMap::new(),
        })
    }

    fn manifest(&mut self, h: &Hash) -> Result<&Manifest> {
        if !self.loaded.contains_key(h) {
            let m = self.core.load_manifest(h)?;
            self.loaded.insert(*h, m);
        }
        Ok(&self.loaded[h])
    }

    /// Mark `h` as reached by `flag`, queueing it the first time.
    fn reach(&mut self, h: Hash, flag: u8) -> Result<()> {
        match self.flags.get_mut(&h) {
            Some(f) => *f |= flag,
            None => {
                let height = self.manifest(&h)?.body.height;
                self.flags.insert(h, flag);
                self.queue.push((height, h));
            }
        }
        Ok(())
    }

    /// The parents of `h` this node holds, in a list; a parent pruned on
    /// purpose (listed in `PRUNED`) ends history there, any other missing
    /// parent breaks the chain.
    fn parents(&mut self, h: &Hash) -> Result<(Vec<Hash>, bool)> {
        let all: Vec<Hash> = self.manifest(h)?.parents().collect();
        let mut held = Vec::new();
        let mut cut = false;
        for p in all {
            if self.pruned.contains(&p) {
                // Pruned here: history ends, even if the version came back.
                cut = true;
                continue;
            }
            match self.manifest(&p).map(|_| ()) {
                Ok(()) => held.push(p),
                Err(BucketError::VersionNotFound(_)) if self.pruned.contains(&p) => cut = true,
                Err(BucketError::VersionNotFound(_)) => {
                    return Err(BucketError::ChainBroken {
                        at: *h,
                        reason: format!("parent {p} is missing"),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok((held, cut))
    }

    /// Check the link from `h` to its parents (a version whose parents were
    /// all pruned was checked when it was written or received).
    fn check(&mut self, h: &Hash, parents: &[Hash], cut: bool) -> Result<()> {
        if cut && parents.is_empty() {
            return Ok(());
        }
        if parents.is_empty() {
            self.core.check_genesis(h)?;
        }
        let ps: Vec<Manifest> = parents.iter().map(|p| self.loaded[p].clone()).collect();
        manifest::check_link_held(*h, &self.loaded[h], &ps, cut)
    }
}

impl BucketCore {
    /// Walk all ancestors of `start` (inclusive, breadth first), verifying
    /// each chain link. History ends where versions were pruned on purpose
    /// (listed in `PRUNED`); any other missing parent breaks the chain.
    pub fn walk(&self, start: Hash) -> Result<Vec<(Hash, Manifest)>> {
        let mut walk = Walk::new(self)?;
        let mut queue = VecDeque::from([start]);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(h) = queue.pop_front() {
            if !seen.insert(h) {
                continue;
            }
            let (parents, cut) = walk.parents(&h)?;
            walk.check(&h, &parents, cut)?;
            queue.extend(parents.iter().copied());
            out.push((h, walk.loaded[&h].clone()));
        }
        Ok(out)
    }

    /// Where `incoming` (fetched, not yet trusted) meets `local` (this
    /// node's head). Every version only `incoming` reaches is link-checked
    /// on the way, so a merge never builds on a chain it did not verify.
    pub fn ancestry(&self, local: Hash, incoming: Hash) -> Result<Ancestry> {
        let mut walk = Walk::new(self)?;
        walk.reach(local, LOCAL)?;
        walk.reach(incoming, REMOTE)?;
        let mut base = None;
        loop {
            let remote_only_left = walk.queue.iter().any(|(_, h)| walk.flags[h] == REMOTE);
            if !remote_only_left
                && (base.is_some() || !walk.queue.iter().any(|(_, h)| walk.flags[h] == BOTH))
            {
                break;
            }
            let Some((_, h)) = walk.queue.pop() else {
                break;
            };
            // Every child of `h` was popped before it: its flags are final.
            let flag = walk.flags[&h];
            if flag == BOTH && base.is_none() {
                base = Some(h);
            }
            let (parents, cut) = walk.parents(&h)?;
            if flag == REMOTE {
                walk.check(&h, &parents, cut)?;
            }
            for p in parents {
                walk.reach(p, flag)?;
            }
        }
        Ok(Ancestry { base })
    }

    /// Whether `ancestor` is `of` or one of its ancestors; walks only the
    /// versions above `ancestor`'s height.
    pub fn is_ancestor(&self, ancestor: &Hash, of: Hash) -> Result<bool> {
        let target = match self.load_manifest(ancestor) {
            Ok(m) => m.body.height,
            Err(BucketError::VersionNotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut walk = Walk::new(self)?;
        walk.reach(of, LOCAL)?;
        while let Some((height, h)) = walk.queue.pop() {
            if h == *ancestor {
                return Ok(true);
            }
            if height <= target {
                continue;
            }
            let (parents, _) = walk.parents(&h)?;
            for p in parents {
                walk.reach(p, LOCAL)?;
            }
        }
        Ok(false)
    }
}
