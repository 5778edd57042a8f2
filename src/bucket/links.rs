//! The link table: files with several names (hard links).
//!
//! A file with more than one name is stored once, in the table the root
//! directory node links to (`DirNode::links`); each of its names is an
//! [`EntryKind::Shared`] entry carrying only the file's inode id. The table
//! is itself a directory node (so sync and GC walk it like any directory):
//! one entry per shared file, named by its id in hex, holding the file's
//! metadata and content. Its name count (`nlink`) rides in a reserved
//! extended attribute of the table entry (a name with a NUL byte, which no
//! user attribute can have), stripped before the metadata is shown.
//!
//! A merge merges the tables three-way per file (ignoring name counts, so a
//! new name on one side and an edit on the other both survive) and then
//! counts the names in the merged tree again.

use std::collections::BTreeMap;

use super::error::Result;
use super::merge::{ConflictKind, Resolution};
use super::tree::{DirNode, Entry, EntryKind, Meta, Timestamp};
use crate::store::BlobStore;

/// Where a shared file's name count is kept in its table entry.
const NLINK_XATTR: &[u8] = b"\0jax.nlink";

/// The table entry name of shared file `ino`.
pub fn table_name(ino: u64) -> Vec<u8> {
    format!("{ino:016x}").into_bytes()
}

/// The metadata every `Shared` name entry carries: nothing (the file's own
/// lives in the table), so two replicas' names of one file compare equal.
pub fn name_meta() -> Meta {
    Meta {
        mode: 0,
        uid: 0,
        gid: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        xattrs: BTreeMap::new(),
        writer: [0; 8],
        clock: Default::default(),
    }
}

/// A table entry's name count, and its metadata without it.
pub fn split_nlink(mut meta: Meta) -> (Meta, u32) {
    let n = meta
        .xattrs
        .remove(NLINK_XATTR)
        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
        .map(u32::from_le_bytes)
        .unwrap_or(1);
    (meta, n)
}

/// A file's metadata with its name count, as the table stores it.
pub fn with_nlink(meta: &Meta, nlink: u32) -> Meta {
    let mut m = meta.clone();
    m.xattrs
        .insert(NLINK_XATTR.to_vec(), nlink.to_le_bytes().to_vec());
    m
}

/// The table's entries by inode id.
pub fn by_ino(table: DirNode) -> BTreeMap<u64, Entry> {
    table.entries.into_iter().map(|e| (e.ino, e)).collect()
}

/// A table node from entries by id (sorted by name, which is the id in hex).
pub fn to_node(entries: impl IntoIterator<Item = Entry>) -> DirNode {
    let mut entries: Vec<Entry> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    DirNode {
        root_meta: None,
        links: None,
        entries,
    }
}

/// What [`merge_tables`] decided.
#[derive(Default)]
pub struct TableMerge {
    pub entries: BTreeMap<u64, Entry>,
    /// Files both sides changed (or one changed and one removed), by id.
    pub conflicts: Vec<(u64, ConflictKind)>,
    /// Losing versions of files both sides changed, to keep elsewhere.
    pub losers: Vec<(u64, Entry)>,
}

/// Three-way merge of two link tables over their common `base`. Name
/// counts are ignored here (the caller recounts them). Two different
/// changes of one file go to `resolve` (given the sides in an order both
/// replicas agree on, so they converge).
pub fn merge_tables(
    base: &BTreeMap<u64, Entry>,
    local: &BTreeMap<u64, Entry>,
    remote: &BTreeMap<u64, Entry>,
    resolve: &dyn Fn(&Entry, &Entry) -> Resolution,
) -> TableMerge {
    let strip = |e: Option<&Entry>| {
        e.map(|e| Entry {
            meta: split_nlink(e.meta.clone()).0,
            ..e.clone()
        })
    };
    let ids: std::collections::BTreeSet<u64> = base
        .keys()
        .chain(local.keys())
        .chain(remote.keys())
        .copied()
        .collect();
    let mut out = TableMerge::default();
    for id in ids {
        let (b, l, r) = (
            strip(base.get(&id)),
            strip(local.get(&id)),
            strip(remote.get(&id)),
        );
        let chosen = if l == r || r == b {
            l
        } else if l == b {
            r
        } else {
            match (l, r) {
                (Some(l), Some(r)) => {
                    out.conflicts.push((id, ConflictKind::BothChanged));
                    let res = resolve(&l, &r);
                    let (winner, loser) = if res.first_wins { (l, r) } else { (r, l) };
                    if res.keep_loser {
                        out.losers.push((id, loser));
                    }
                    Some(winner)
                }
                // A change beats a delete: nothing is lost.
                (changed, None) | (None, changed) => {
                    out.conflicts.push((id, ConflictKind::ChangedVsDeleted));
                    changed
                }
            }
        };
        if let Some(e) = chosen {
            out.entries.insert(id, e);
        }
    }
    out
}

/// How many `Shared` names each id has in the tree under `root` (the root
/// node given, its subdirectories loaded from `store`).
pub fn count_names(store: &BlobStore, root: &DirNode) -> Result<BTreeMap<u64, u32>> {
    let mut counts = BTreeMap::new();
    let mut tally = |node: &DirNode, stack: &mut Vec<super::tree::Link>| {
        for e in &node.entries {
            match &e.kind {
                EntryKind::Shared => *counts.entry(e.ino).or_insert(0) += 1,
                EntryKind::Dir(l) => stack.push(l.clone()),
                _ => {}
            }
        }
    };
    let mut stack = Vec::new();
    tally(root, &mut stack);
    while let Some(link) = stack.pop() {
        let node = DirNode::load(store, &link)?;
        tally(&node, &mut stack);
    }
    Ok(counts)
}
