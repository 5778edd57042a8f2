//! Merging a concurrent head into a live mount.
//!
//! A three-way merge over the persisted trees: for each name, the base
//! (common ancestor), local and remote entries are compared. A side that did
//! not change an entry takes the other side's version; when both changed it,
//! directories merge recursively, a change beats a delete (nothing is lost),
//! and two different contents go to the [`Resolver`]. Resolvers decide from
//! the entries alone, never from which side is local, so merging A into B and
//! B into A give the same tree.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{BucketError, Result};
use super::links;
use super::mount::Mount;
use super::tree::{derived_ino, DirNode, Entry, EntryKind, KeyBytes, Link, Meta, Timestamp};
use super::BucketCore;
use crate::store::{BlobStore, Hash};

/// What the resolver sees of one side of a conflict.
#[derive(Clone, Debug)]
pub struct ConflictSide {
    pub mtime: Timestamp,
    pub writer: [u8; 8],
    /// A digest of the entry's content and metadata, equal on every replica.
    pub digest: Hash,
    pub is_dir: bool,
}

/// A resolver's decision for two different concurrent versions of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// True when the first side passed to [`Resolver::resolve`] wins the name.
    pub first_wins: bool,
    /// Keep the loser under a conflict name (`name@<hash8>.ext`).
    pub keep_loser: bool,
}

/// Decides concurrent edits. Must be symmetric: swapping the arguments must
/// swap the winner, so both replicas converge.
pub trait Resolver: Send + Sync {
    fn resolve(&self, a: &ConflictSide, b: &ConflictSide) -> Resolution;
}

/// Order two sides by (mtime, writer, digest): the later one is "newer".
fn a_is_newer(a: &ConflictSide, b: &ConflictSide) -> bool {
    (a.mtime, a.writer, a.digest) > (b.mtime, b.writer, b.digest)
}

/// The newer edit keeps the name; the other is kept as `name@<hash8>.ext`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConflictFile;

impl Resolver for ConflictFile {
    fn resolve(&self, a: &ConflictSide, b: &ConflictSide) -> Resolution {
        Resolution {
            first_wins: a_is_newer(a, b),
            keep_loser: true,
        }
    }
}

/// The newer edit (by modification time, then node id) wins; the other is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct LastWriterWins;

impl Resolver for LastWriterWins {
    fn resolve(&self, a: &ConflictSide, b: &ConflictSide) -> Resolution {
        Resolution {
            first_wins: a_is_newer(a, b),
            keep_loser: false,
        }
    }
}

/// One conflict a merge resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Path of the contested entry.
    pub path: String,
    /// Where the losing version now lives, if it was kept.
    pub kept_as: Option<String>,
    pub kind: ConflictKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// Both sides changed the content differently.
    BothChanged,
    /// One side changed what the other deleted: the change was kept.
    ChangedVsDeleted,
    /// Both sides changed metadata only: the newer metadata was kept.
    Metadata,
}

/// The outcome of [`Mount::merge_from`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Entry changes taken from the incoming head.
    pub operations_added: usize,
    pub conflicts: Vec<Conflict>,
    /// The version the mount is at after the merge.
    pub version: Option<Hash>,
    /// True when the local side had nothing new and simply moved to the incoming head.
    pub fast_forward: bool,
}

struct MergeCtx<'a> {
    store: &'a BlobStore,
    resolver: &'a dyn Resolver,
    report: MergeReport,
}

impl Mount {
    /// Merge the concurrent head `incoming` (already in the local store) into
    /// this mount, writing a merge version whose parents are both heads.
    pub fn merge_from(&mut self, incoming: &Hash, resolver: &dyn Resolver) -> Result<MergeReport> {
        if self.is_read_only() {
            return Err(BucketError::ReadOnly);
        }
        let core = self.core().clone();
        let remote = core.load_manifest(incoming)?;
        let local_base = self.base().hash;
        let ancestry = core.ancestry(local_base, *incoming)?;
        if ancestry.contains_incoming(incoming) {
            // Already part of our history: nothing to merge.
            return Ok(MergeReport {
                version: Some(local_base),
                ..Default::default()
            });
        }
        let base_hash = ancestry.base;

        let local_root = self.persist_root()?;
        let remote_root = Link {
            hash: remote.body.root,
            key: core.open_root_key(&remote)?,
        };
        let base_node = match base_hash {
            Some(h) => {
                let m = core.load_manifest(&h)?;
                let link = Link {
                    hash: m.body.root,
                    key: core.open_root_key(&m)?,
                };
                match DirNode::load_cached(&core.store, &link) {
                    Ok(node) => Some(node),
                    // The base's tree is gone everywhere (pruned): merge as
                    // if there were none. Clocks still order one writer's
                    // edits; only deletes may come back.
                    Err(BucketError::Store(crate::store::StoreError::NotFound(_))) => {
                        tracing::warn!(bucket = %core.id, base = %h, "the merge base's tree is not here; merging without a base");
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let mut ctx = MergeCtx {
            store: &core.store,
            resolver,
            report: MergeReport::default(),
        };
        let local_node = DirNode::load_cached(&core.store, &local_root)?;
        let remote_node = DirNode::load_cached(&core.store, &remote_root)?;
        // Both replicas must write the same merged tree, so every choice
        // is made from the two sides alone (never "which side is local").
        let root_key = min_key(&local_root.key, &remote_root.key);
        let mut merged = ctx.merge_dirs("", base_node.as_ref(), &local_node, &remote_node)?;
        merged.root_meta = merge_meta(
            base_node.as_ref().and_then(|b| b.root_meta.as_ref()),
            local_node.root_meta.as_ref(),
            remote_node.root_meta.as_ref(),
        );
        ctx.merge_link_tables(base_node.as_ref(), &local_node, &remote_node, &mut merged)?;
        let mut report = ctx.report;

        let root_hash = merged.store(&core.store, &root_key)?;
        // Counted and installed next: from memory, not decrypted again.
        let merged_link = Link {
            hash: root_hash,
            key: root_key.clone(),
        };
        super::dir_cache::keep(&merged_link, std::sync::Arc::new(merged));
        let fast_forward = base_hash == Some(local_base) && !self.has_unsaved_changes();
        // Two heads with the same tree (each side merged the other already):
        // both replicas settle on the higher head instead of merging again,
        // so concurrent merges converge instead of answering each other.
        let members = |m: &crate::bucket::Manifest| {
            m.body
                .shares
                .iter()
                .map(|s| s.recipient)
                .collect::<std::collections::BTreeSet<_>>()
        };
        let local_manifest = core.load_manifest(&local_base)?;
        let same_tree = root_hash == local_root.hash
            && root_hash == remote_root.hash
            && members(&local_manifest) == members(&remote);
        let remote_wins = (remote.body.height, *incoming) > (self.base().height, local_base);
        tracing::debug!(
            bucket = %core.id,
            merged = %root_hash,
            local = %local_root.hash,
            remote = %remote_root.hash,
            same_members = members(&local_manifest) == members(&remote),
            unsaved = self.has_unsaved_changes(),
            "merge result"
        );
        if fast_forward || (same_tree && remote_wins && !self.has_unsaved_changes()) {
            self.reset_to(*incoming)?;
            core.write_head(incoming)?;
            report.fast_forward = true;
            report.version = Some(*incoming);
        } else if same_tree && !self.has_unsaved_changes() {
            report.version = Some(local_base);
        } else {
            // Members of either side stay members of the merge.
            // A merge's tree is no recorded change: until a version holds
            // it, the journal cannot stand for it.
            self.journal_breaks();
            self.adopt_shares(&remote.body.shares);
            let cs = self.chunk_size();
            let (used, entries) = totals(&core, &merged_link, cs)?;
            self.replace_tree(merged_link, used, entries)?;
            let saved = self.commit(Some((*incoming, remote.body.height)))?;
            report.version = Some(saved.hash);
        }
        self.mark_synced();
        tracing::info!(
            bucket = %core.id,
            incoming = %incoming,
            added = report.operations_added,
            conflicts = report.conflicts.len(),
            fast_forward = report.fast_forward,
            "merged concurrent head"
        );
        Ok(report)
    }
}

/// Allocated bytes and entry count of a whole tree.
fn totals(core: &BucketCore, root: &Link, cs: u64) -> Result<(u64, u64)> {
    let mut used = 0;
    let mut entries = 0;
    let mut stack = vec![root.clone()];
    while let Some(link) = stack.pop() {
        let node = DirNode::load_cached(&core.store, &link)?;
        if let Some(table) = &node.links {
            // Hard-linked files: their bytes count once, their names below.
            for e in DirNode::load(&core.store, table)?.entries {
                if let EntryKind::File(f) = e.kind {
                    used += super::chunks::allocated(&f, cs);
                }
            }
        }
        for e in node.entries {
            entries += 1;
            match e.kind {
                EntryKind::File(f) => used += super::chunks::allocated(&f, cs),
                EntryKind::Dir(l) => stack.push(l),
                EntryKind::Symlink(_) | EntryKind::Special { .. } | EntryKind::Shared => {}
            }
        }
    }
    Ok((used, entries))
}

/// One file id under two names of a merged directory (one side renamed the
/// file, the other changed it under its old name, and both are kept): the
/// name the file moved to keeps the id, the other is numbered apart, the
/// same way on every replica.
fn renumber_duplicates(path: &str, base: Option<&DirNode>, out: &mut BTreeMap<Vec<u8>, Entry>) {
    let mut by_id: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, e) in out.iter() {
        if !matches!(e.kind, EntryKind::Shared) {
            by_id.entry(e.ino).or_default().push(name.clone());
        }
    }
    for (id, mut names) in by_id {
        if names.len() < 2 {
            continue;
        }
        // Names the id already had in the base lose it first.
        let at_base = |n: &Vec<u8>| base.and_then(|b| b.get(n)).is_some_and(|e| e.ino == id);
        names.sort_by_key(|n| (at_base(n), n.clone()));
        for name in &names[1..] {
            let e = out.get_mut(name).expect("listed from the map");
            e.ino = derived_ino(&[b"renamed apart", path.as_bytes(), name, &id.to_le_bytes()]);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Local,
    Remote,
}

/// Which side's version of one file (or symlink, or special file) has seen
/// every change of the other's, by their clocks (equal clocks are the
/// same edits); `None` when they are concurrent, are different files (a new file under an old name), or
/// carry no clocks (written before clocks: the base decides).
fn later_by_clock(l: Option<&Entry>, r: Option<&Entry>) -> Option<Side> {
    let (l, r) = (l?, r?);
    let comparable = l.ino == r.ino
        && !l.kind.is_dir()
        && !r.kind.is_dir()
        && !matches!(l.kind, EntryKind::Shared)
        && !l.meta.clock.is_empty()
        && !r.meta.clock.is_empty();
    if !comparable {
        None
    } else if l.meta.clock.is_before(&r.meta.clock) {
        Some(Side::Remote)
    } else if r.meta.clock.is_before(&l.meta.clock) {
        Some(Side::Local)
    } else if l.meta.clock == r.meta.clock {
        // The same edits, made twice: a journal replayed beside a version
        // that already held them seals the same content apart. Both
        // replicas pick the same one.
        Some(if digest(l) <= digest(r) {
            Side::Local
        } else {
            Side::Remote
        })
    } else {
        None
    }
}

/// The smaller of two keys: a choice both replicas make the same way.
fn min_key(a: &KeyBytes, b: &KeyBytes) -> KeyBytes {
    if a.0 <= b.0 {
        a.clone()
    } else {
        b.clone()
    }
}

fn digest(entry: &Entry) -> Hash {
    // A hard link's entry is only its file's id: that is its content.
    // (Other entries hash as before, so replicas of older versions agree.)
    // The clock is not content: two replicas holding the same bytes name
    // a conflict copy the same, and as nodes without clocks did.
    let meta = entry.meta.without_clock();
    let bytes = if matches!(entry.kind, EntryKind::Shared) {
        postcard::to_stdvec(&(&entry.kind, &meta, entry.ino))
    } else {
        postcard::to_stdvec(&(&entry.kind, &meta))
    }
    .unwrap_or_default();
    Hash::of(&bytes)
}

fn side(entry: &Entry) -> ConflictSide {
    ConflictSide {
        mtime: entry.meta.mtime,
        writer: entry.meta.writer,
        digest: digest(entry),
        is_dir: entry.kind.is_dir(),
    }
}

/// `name@<hash8>.ext`, keeping the extension and the 255-byte limit.
pub fn conflict_name(name: &[u8], digest: &Hash) -> Vec<u8> {
    let tag = format!("@{}", digest.short());
    let dot = name.iter().rposition(|&c| c == b'.').filter(|&i| i > 0);
    let (stem, ext) = match dot {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, &b""[..]),
    };
    let room = super::NAME_MAX.saturating_sub(tag.len() + ext.len());
    let mut out = stem[..stem.len().min(room)].to_vec();
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&ext[..ext.len().min(super::NAME_MAX - out.len())]);
    out
}

/// Merge of metadata: a side whose clock has seen the other's wins, then an
/// unchanged side (against the base) takes the other; else the newer wins
/// (ties broken by the encoding, so both replicas agree) with a clock that
/// has seen both.
fn merge_meta(base: Option<&Meta>, local: Option<&Meta>, remote: Option<&Meta>) -> Option<Meta> {
    match (local, remote) {
        (Some(l), Some(r)) => {
            let clocked = !l.clock.is_empty() && !r.clock.is_empty();
            if l == r || Some(r) == base || (clocked && r.clock.is_before(&l.clock)) {
                Some(l.clone())
            } else if Some(l) == base || (clocked && l.clock.is_before(&r.clock)) {
                Some(r.clone())
            } else {
                let order = |m: &Meta| {
                    (
                        m.ctime,
                        m.writer,
                        postcard::to_stdvec(m).unwrap_or_default(),
                    )
                };
                let mut newer = if order(l) >= order(r) {
                    l.clone()
                } else {
                    r.clone()
                };
                newer.clock = l.clock.join(&r.clock);
                Some(newer)
            }
        }
        (l, r) => l.or(r).cloned(),
    }
}

fn join(dir: &str, name: &[u8]) -> String {
    format!("{dir}/{}", String::from_utf8_lossy(name))
}

impl MergeCtx<'_> {
    /// Merge the two sides' link tables into the merged root `merged`, and
    /// count each shared file's names in the merged tree again. A file
    /// one side changed while the other removed its last name is kept at
    /// the root as `unlinked@<id>`.
    fn merge_link_tables(
        &mut self,
        base: Option<&DirNode>,
        local: &DirNode,
        remote: &DirNode,
        merged: &mut DirNode,
    ) -> Result<()> {
        if local.links.is_none() && remote.links.is_none() {
            return Ok(());
        }
        let load = |n: Option<&DirNode>| -> Result<BTreeMap<u64, Entry>> {
            match n.and_then(|n| n.links.as_ref()) {
                Some(l) => Ok(links::by_ino(DirNode::load(self.store, l)?)),
                None => Ok(BTreeMap::new()),
            }
        };
        let base_table = load(base)?;
        let resolver = self.resolver;
        let resolve = |a: &Entry, b: &Entry| resolver.resolve(&side(a), &side(b));
        let links::TableMerge {
            entries: table,
            conflicts,
            losers,
        } = links::merge_tables(
            &base_table,
            &load(Some(local))?,
            &load(Some(remote))?,
            &resolve,
        );
        for (id, kind) in conflicts {
            self.report.conflicts.push(Conflict {
                path: format!("<hard-linked file {id:016x}>"),
                kept_as: None,
                kind,
            });
        }
        // A losing edit of a hard-linked file is kept as a file of its own.
        for (id, loser) in losers {
            let name = format!("conflict@{id:016x}@{}", digest(&loser).short()).into_bytes();
            if merged.entries.iter().any(|e| e.name == name) {
                continue;
            }
            if let Some(c) = self
                .report
                .conflicts
                .iter_mut()
                .find(|c| c.path.contains(&format!("{id:016x}")))
            {
                c.kept_as = Some(join("", &name));
            }
            let ino = derived_ino(&[b"link table conflict copy", &name]);
            let (meta, _) = links::split_nlink(loser.meta);
            merged.entries.push(Entry {
                name,
                ino,
                meta,
                kind: loser.kind,
            });
        }
        let counts = links::count_names(self.store, merged)?;
        let mut kept = BTreeMap::new();
        for (id, entry) in table {
            let names = counts.get(&id).copied().unwrap_or(0);
            if names > 0 {
                let meta = links::with_nlink(&entry.meta, names);
                kept.insert(id, Entry { meta, ..entry });
                continue;
            }
            let unchanged = base_table.get(&id).is_some_and(|b| {
                links::split_nlink(b.meta.clone()).0 == entry.meta && b.kind == entry.kind
            });
            let name = format!("unlinked@{id:016x}").into_bytes();
            if unchanged || merged.entries.iter().any(|e| e.name == name) {
                continue;
            }
            self.report.conflicts.push(Conflict {
                path: format!("<hard-linked file {id:016x}>"),
                kept_as: Some(join("", &name)),
                kind: ConflictKind::ChangedVsDeleted,
            });
            merged.entries.push(Entry { name, ..entry });
        }
        merged.entries.sort_by(|a, b| a.name.cmp(&b.name));
        merged.links = if kept.is_empty() {
            None
        } else {
            let key = match (&local.links, &remote.links) {
                (Some(l), Some(r)) => min_key(&l.key, &r.key),
                (Some(k), None) | (None, Some(k)) => k.key.clone(),
                (None, None) => unreachable!("checked above"),
            };
            let hash = links::to_node(kept.into_values()).store(self.store, &key)?;
            Some(Link { hash, key })
        };
        Ok(())
    }

    fn merge_dirs(
        &mut self,
        path: &str,
        base: Option<&DirNode>,
        local: &DirNode,
        remote: &DirNode,
    ) -> Result<DirNode> {
        let names: BTreeSet<&[u8]> = local
            .entries
            .iter()
            .chain(&remote.entries)
            .chain(base.map(|b| b.entries.as_slice()).unwrap_or(&[]))
            .map(|e| e.name.as_slice())
            .collect();
        let mut out: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut losers: Vec<(Vec<u8>, Entry)> = Vec::new();
        for name in names {
            let b = base.and_then(|n| n.get(name));
            let l = local.get(name);
            let r = remote.get(name);
            let chosen = if l == r {
                l.cloned()
            } else if let Some(later) = later_by_clock(l, r) {
                // One side's edit already saw the other's: no conflict,
                // whatever the base says (it may be far back, or missing).
                if later == Side::Remote {
                    self.report.operations_added += 1;
                    r.cloned()
                } else {
                    l.cloned()
                }
            } else if l == b {
                self.report.operations_added += 1;
                r.cloned()
            } else if r == b {
                l.cloned()
            } else {
                self.both_changed(path, name, b, l, r, &mut losers)?
            };
            if let Some(e) = chosen {
                out.insert(name.to_vec(), e);
            }
        }
        for (name, entry) in losers {
            let copy = conflict_name(&name, &digest(&entry));
            let copy = match out.get(&copy) {
                Some(existing) if *existing == entry => continue,
                Some(_) => {
                    let mut longer = copy.clone();
                    longer.extend_from_slice(
                        format!("-{}", &digest(&entry).to_hex()[8..16]).as_bytes(),
                    );
                    longer
                }
                None => copy,
            };
            if let Some(c) = self
                .report
                .conflicts
                .iter_mut()
                .rev()
                .find(|c| c.path == join(path, &name))
            {
                c.kept_as = Some(join(path, &copy));
            }
            // The copy is a file of its own: a number both replicas derive
            // alike (a hard link's copy is one more name of its file).
            let ino = if matches!(entry.kind, EntryKind::Shared) {
                entry.ino
            } else {
                derived_ino(&[b"conflict copy", path.as_bytes(), &copy, &digest(&entry).0])
            };
            out.insert(
                copy.clone(),
                Entry {
                    name: copy,
                    ino,
                    ..entry
                },
            );
        }
        renumber_duplicates(path, base, &mut out);
        Ok(DirNode {
            root_meta: None,
            links: None,
            entries: out.into_values().collect(),
        })
    }

    fn both_changed(
        &mut self,
        path: &str,
        name: &[u8],
        b: Option<&Entry>,
        l: Option<&Entry>,
        r: Option<&Entry>,
        losers: &mut Vec<(Vec<u8>, Entry)>,
    ) -> Result<Option<Entry>> {
        let full = join(path, name);
        let record = |kind| Conflict {
            path: full.clone(),
            kept_as: None,
            kind,
        };
        let base_dir = b.and_then(|e| match &e.kind {
            EntryKind::Dir(link) => Some(link),
            _ => None,
        });
        match (l, r) {
            (Some(le), Some(re)) => match (&le.kind, &re.kind) {
                (EntryKind::Dir(ll), EntryKind::Dir(rl)) => {
                    let entry =
                        self.merge_dir_entry(&full, base_dir, b, le, Some(ll), re, Some(rl))?;
                    Ok(Some(entry))
                }
                // Two names of different hard-linked files are different
                // content, whatever the (empty) entries say.
                (lk, rk) if lk == rk && (le.ino == re.ino || !matches!(lk, EntryKind::Shared)) => {
                    // Same content, different metadata (or id): both
                    // replicas pick the same.
                    self.report.conflicts.push(record(ConflictKind::Metadata));
                    let meta = merge_meta(b.map(|e| &e.meta), Some(&le.meta), Some(&re.meta))
                        .expect("both present");
                    Ok(Some(Entry {
                        meta,
                        ino: le.ino.min(re.ino),
                        ..le.clone()
                    }))
                }
                _ => {
                    let (winner, loser) = if le.kind.is_dir() != re.kind.is_dir() {
                        // A directory always keeps its name; the other entry moves aside.
                        if le.kind.is_dir() {
                            (le, re)
                        } else {
                            (re, le)
                        }
                    } else {
                        let res = self.resolver.resolve(&side(le), &side(re));
                        if res.first_wins {
                            (le, re)
                        } else {
                            (re, le)
                        }
                    };
                    let keep = self
                        .resolver
                        .resolve(&side(winner), &side(loser))
                        .keep_loser;
                    if keep {
                        losers.push((name.to_vec(), loser.clone()));
                    }
                    self.report
                        .conflicts
                        .push(record(ConflictKind::BothChanged));
                    // The name's next edit follows both, so no replica
                    // sees this conflict again.
                    let mut winner = winner.clone();
                    winner.meta.clock = le.meta.clock.join(&re.meta.clock);
                    Ok(Some(winner))
                }
            },
            (Some(changed), None) | (None, Some(changed)) => {
                self.report
                    .conflicts
                    .push(record(ConflictKind::ChangedVsDeleted));
                if l.is_none() {
                    self.report.operations_added += 1;
                }
                match (&changed.kind, base_dir) {
                    // Keep what the changing side has under a deleted directory,
                    // but let the delete win for entries it did not touch.
                    (EntryKind::Dir(link), Some(_)) => {
                        let (ll, rl) = if l.is_some() {
                            (Some(link), None)
                        } else {
                            (None, Some(link))
                        };
                        let entry =
                            self.merge_dir_entry(&full, base_dir, b, changed, ll, changed, rl)?;
                        Ok(Some(entry))
                    }
                    _ => Ok(Some(changed.clone())),
                }
            }
            (None, None) => Ok(None),
        }
    }

    /// Merge two directory versions (`None` link = that side deleted it).
    #[allow(clippy::too_many_arguments)]
    fn merge_dir_entry(
        &mut self,
        path: &str,
        base_dir: Option<&Link>,
        b: Option<&Entry>,
        le: &Entry,
        ll: Option<&Link>,
        re: &Entry,
        rl: Option<&Link>,
    ) -> Result<Entry> {
        let load = |link: Option<&Link>| -> Result<DirNode> {
            match link {
                Some(l) => DirNode::load_cached(self.store, l),
                None => Ok(DirNode::default()),
            }
        };
        let base_node = match base_dir {
            Some(l) => Some(DirNode::load_cached(self.store, l)?),
            None => None,
        };
        let ln = load(ll)?;
        let rn = load(rl)?;
        let merged = self.merge_dirs(path, base_node.as_ref(), &ln, &rn)?;
        // Both sides' directory (or the one side's, if the other deleted it):
        // the same id and key on both replicas.
        let (ino, key) = match (ll, rl) {
            (Some(l), Some(r)) => (le.ino.min(re.ino), min_key(&l.key, &r.key)),
            (Some(l), None) => (le.ino, l.key.clone()),
            (None, Some(r)) => (re.ino, r.key.clone()),
            (None, None) => unreachable!("one side has the directory"),
        };
        let hash = merged.store(self.store, &key)?;
        let meta = merge_meta(
            b.map(|e| &e.meta),
            ll.map(|_| &le.meta),
            rl.map(|_| &re.meta),
        )
        .expect("one side present");
        Ok(Entry {
            name: le.name.clone(),
            ino,
            meta,
            kind: EntryKind::Dir(Link { hash, key }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names() {
        let h = Hash([0xab; 32]);
        assert_eq!(conflict_name(b"report.txt", &h), b"report@abababab.txt");
        assert_eq!(conflict_name(b"Makefile", &h), b"Makefile@abababab");
        assert_eq!(conflict_name(b".bashrc", &h), b".bashrc@abababab");
        assert_eq!(conflict_name(&[b'x'; 255], &h).len(), 255);
    }
}
