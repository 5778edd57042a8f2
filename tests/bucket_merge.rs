//! Merge properties: two replicas (separate state dirs and identities) diverge
//! from one ancestor with random edits; merging in either order gives the same
//! tree, and every byte either side wrote is still reachable.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{copy_blobs, copy_bucket_dir};
use jax_csi::bucket::{
    path, BucketId, BucketOptions, ConflictFile, FileKind, LastWriterWins, Mount, RenameFlags,
    StateDir, ROOT_INO,
};
use jax_csi::crypto::Kek;
use proptest::prelude::*;

const FILES: [&str; 6] = ["/a", "/b.txt", "/d/x", "/d/y.md", "/e/z", "/d/f/w"];

#[derive(Clone, Debug)]
enum Edit {
    Write { file: usize, byte: u8, len: u16 },
    Append { file: usize, byte: u8 },
    Delete { file: usize },
    Rename { from: usize, to: usize },
    RemoveDir { dir: usize },
    Link { from: usize, to: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    let f = 0usize..FILES.len();
    prop_oneof![
        4 => (f.clone(), any::<u8>(), 1u16..9000).prop_map(|(file, byte, len)| Edit::Write { file, byte, len }),
        1 => (f.clone(), any::<u8>()).prop_map(|(file, byte)| Edit::Append { file, byte }),
        2 => f.clone().prop_map(|file| Edit::Delete { file }),
        1 => (f.clone(), f.clone()).prop_map(|(from, to)| Edit::Rename { from, to }),
        1 => (0usize..3).prop_map(|dir| Edit::RemoveDir { dir }),
        2 => (f.clone(), f.clone()).prop_map(|(from, to)| Edit::Link { from, to }),
    ]
}

fn apply(m: &mut Mount, e: &Edit) {
    match *e {
        Edit::Write { file, byte, len } => {
            path::write_file(m, FILES[file], &vec![byte; len as usize]).unwrap();
        }
        Edit::Append { file, byte } => {
            if let Ok(ino) = path::resolve(m, FILES[file]) {
                let size = m.getattr(ino).unwrap().size;
                m.write(ino, size, &[byte; 100]).unwrap();
            }
        }
        Edit::Delete { file } => {
            if let Ok((parent, name)) = path::parent_of(m, FILES[file]) {
                let _ = m.unlink(parent, name);
            }
        }
        Edit::Rename { from, to } => {
            let (Ok((sp, sn)), Ok(dp)) = (path::parent_of(m, FILES[from]), dir_of(m, FILES[to]))
            else {
                return;
            };
            let dn = FILES[to].rsplit('/').next().unwrap().as_bytes();
            let _ = m.rename(sp, sn, dp, dn, RenameFlags::default());
        }
        Edit::Link { from, to } => {
            let (Ok(src), Ok(dp)) = (path::resolve(m, FILES[from]), dir_of(m, FILES[to])) else {
                return;
            };
            let dn = FILES[to].rsplit('/').next().unwrap().as_bytes();
            let _ = m.link(src, dp, dn);
        }
        Edit::RemoveDir { dir } => {
            let d = ["/d/f", "/e", "/d"][dir];
            if let Ok((parent, name)) = path::parent_of(m, d) {
                let _ = m.rmdir(parent, name);
            }
        }
    }
}

fn dir_of(m: &mut Mount, p: &str) -> Result<u64, jax_csi::bucket::BucketError> {
    let d = &p[..p.rfind('/').unwrap()];
    path::mkdir_all(m, d)
}

/// path -> file content (directories map to None).
fn snapshot(m: &mut Mount) -> BTreeMap<String, Option<Vec<u8>>> {
    path::walk(m)
        .unwrap()
        .into_iter()
        .map(|(p, k)| {
            let content = (k == FileKind::File).then(|| path::read_file(m, &p).unwrap());
            (p, content)
        })
        .collect()
}

struct Replica {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
}

impl Replica {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        StateDir::open(&root).unwrap();
        Self { _tmp: tmp, root }
    }
    fn state(&self) -> StateDir {
        StateDir::open(&self.root).unwrap()
    }
}

/// Build base on A, replicate to B, diverge, and return both replicas and heads.
type Snapshot = BTreeMap<String, Option<Vec<u8>>>;

fn diverge(
    base: &[Edit],
    a_edits: &[Edit],
    b_edits: &[Edit],
) -> (Replica, Replica, Kek, BucketId, Snapshot) {
    let a = Replica::new();
    let b = Replica::new();
    let kek = Kek::generate().unwrap();
    let id = BucketId::generate().unwrap();
    let opts = BucketOptions {
        chunk_size: 4096,
        ..Default::default()
    };
    let bucket = a.state().create_bucket(id, &kek, &opts).unwrap();
    let mut m = bucket.mount().unwrap();
    for e in base {
        apply(&mut m, e);
    }
    m.grant(&b.state().identity().node_id()).unwrap();
    m.save().unwrap();
    let base_snapshot = snapshot(&mut m);
    copy_blobs(&a.root, &b.root);
    copy_bucket_dir(&a.root, &b.root, &id);
    for (replica, edits) in [(&a, a_edits), (&b, b_edits)] {
        let mut m = replica
            .state()
            .open_bucket(&id, &kek)
            .unwrap()
            .mount()
            .unwrap();
        for e in edits {
            apply(&mut m, e);
        }
        m.save().unwrap();
    }
    (a, b, kek, id, base_snapshot)
}

fn head(root: &Path, id: &BucketId, kek: &Kek) -> jax_csi::store::Hash {
    StateDir::open(root)
        .unwrap()
        .open_bucket(id, kek)
        .unwrap()
        .head()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn merge_converges_and_loses_nothing(
        base in prop::collection::vec(edit(), 0..8),
        a_edits in prop::collection::vec(edit(), 0..10),
        b_edits in prop::collection::vec(edit(), 0..10),
    ) {
        let (a, b, kek, id, base_snap) = diverge(&base, &a_edits, &b_edits);
        let (ha, hb) = (head(&a.root, &id, &kek), head(&b.root, &id, &kek));
        let mut before = Vec::new();
        for r in [&a, &b] {
            let mut m = r.state().open_bucket(&id, &kek).unwrap().mount().unwrap();
            before.push(snapshot(&mut m));
        }
        // Exchange blobs both ways (what sync does), then merge on each side.
        copy_blobs(&a.root, &b.root);
        copy_blobs(&b.root, &a.root);
        let mut after = Vec::new();
        for (r, incoming) in [(&a, hb), (&b, ha)] {
            let bucket = r.state().open_bucket(&id, &kek).unwrap();
            let mut m = bucket.mount().unwrap();
            let report = m.merge_from(&incoming, &ConflictFile).unwrap();
            prop_assert!(report.version.is_some());
            after.push(snapshot(&mut m));
            // The merge is a saved version whose chain verifies.
            bucket.verify().unwrap();
            let reopened = snapshot(&mut bucket.mount().unwrap());
            prop_assert_eq!(&reopened, after.last().unwrap());
        }
        let paths: Vec<BTreeSet<&String>> = after.iter().map(|s| s.keys().collect()).collect();
        prop_assert_eq!(&paths[0], &paths[1], "same set of paths after merging in either order");
        prop_assert_eq!(&after[0], &after[1], "same content after merging in either order");
        // Every file content either side wrote (differs from the base at its
        // path) is still reachable somewhere.
        let merged_contents: BTreeSet<&Vec<u8>> = after[0].values().flatten().collect();
        for side in &before {
            for (p, content) in side {
                if base_snap.get(p) == Some(content) {
                    continue;
                }
                if let Some(c) = content {
                    prop_assert!(merged_contents.contains(c), "content of {} ({} bytes) was lost", p, c.len());
                }
            }
        }
    }
}

#[test]
fn concurrent_edits_of_one_file_keep_a_conflict_copy() {
    let base = [Edit::Write {
        file: 1,
        byte: 1,
        len: 10,
    }];
    let (a, b, kek, id, _) = diverge(
        &base,
        &[Edit::Write {
            file: 1,
            byte: 2,
            len: 20,
        }],
        &[Edit::Write {
            file: 1,
            byte: 3,
            len: 30,
        }],
    );
    copy_blobs(&b.root, &a.root);
    let hb = head(&b.root, &id, &kek);
    let bucket = a.state().open_bucket(&id, &kek).unwrap();
    let mut m = bucket.mount().unwrap();
    let report = m.merge_from(&hb, &ConflictFile).unwrap();
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    let kept = report.conflicts[0].kept_as.clone().expect("loser kept");
    assert!(kept.starts_with("/b@") && kept.ends_with(".txt"), "{kept}");
    let snap = snapshot(&mut m);
    let contents: BTreeSet<Vec<u8>> = snap.values().flatten().cloned().collect();
    assert!(contents.contains(&vec![2; 20]) && contents.contains(&vec![3; 30]));
    // The merge version has both heads as parents.
    let hist = bucket.history().unwrap();
    assert_eq!(hist[0].merged, Some(hb));
    assert!(hist[0].previous.is_some() && hist[0].previous != Some(hb));
    assert!(m.ops_log().is_empty(), "a merge clears the ops log");
}

#[test]
fn last_writer_wins_drops_the_older_edit() {
    let base = [Edit::Write {
        file: 0,
        byte: 1,
        len: 10,
    }];
    let (a, b, kek, id, _) = diverge(
        &base,
        &[Edit::Write {
            file: 0,
            byte: 2,
            len: 20,
        }],
        &[Edit::Write {
            file: 0,
            byte: 3,
            len: 30,
        }],
    );
    copy_blobs(&b.root, &a.root);
    let hb = head(&b.root, &id, &kek);
    let mut m = a.state().open_bucket(&id, &kek).unwrap().mount().unwrap();
    let report = m.merge_from(&hb, &LastWriterWins).unwrap();
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].kept_as, None);
    let snap = snapshot(&mut m);
    // B saved after A, so B's write is newer.
    assert_eq!(snap.get("/a"), Some(&Some(vec![3; 30])));
    assert_eq!(snap.len(), 1, "{snap:?}");
}

#[test]
fn incoming_head_without_local_changes_fast_forwards() {
    let (a, b, kek, id, _) = diverge(
        &[],
        &[],
        &[Edit::Write {
            file: 2,
            byte: 9,
            len: 5000,
        }],
    );
    copy_blobs(&b.root, &a.root);
    let hb = head(&b.root, &id, &kek);
    let bucket = a.state().open_bucket(&id, &kek).unwrap();
    // A's own save had no edits, so its head is still the shared base.
    let mut m = bucket.mount().unwrap();
    let report = m.merge_from(&hb, &ConflictFile).unwrap();
    assert!(report.fast_forward, "{report:?}");
    assert_eq!(report.operations_added, 1);
    assert_eq!(bucket.head().unwrap(), hb);
    assert_eq!(path::read_file(&mut m, "/d/x").unwrap(), vec![9; 5000]);
    // Merging the same head again is a no-op.
    let again = m.merge_from(&hb, &ConflictFile).unwrap();
    assert_eq!(again.operations_added, 0);
    assert!(m.lookup(ROOT_INO, b"d").is_ok());
}

/// A file only node A writes gets no conflict copy even when the merge base
/// the graph yields is older than B's copy of the file (a criss-cross of
/// merges, as three writers make all the time): its clock says A's edit
/// already saw B's copy. Without clocks this invents a conflict.
#[test]
fn a_file_one_node_writes_never_conflicts_across_criss_cross_merges() {
    let write = |byte, len| Edit::Write { file: 0, byte, len };
    let own = |byte| Edit::Write {
        file: 2,
        byte,
        len: 10,
    };
    // H1: /a = v1 on both; then A: /a = v2 (H2); B: /d/x twice (HB2, higher).
    let (a, b, kek, id, _) = diverge(&[write(1, 10)], &[write(2, 20)], &[own(7)]);
    {
        let mut m = b.state().open_bucket(&id, &kek).unwrap().mount().unwrap();
        apply(&mut m, &own(8));
        m.save().unwrap();
    }
    let (h2, hb2) = (head(&a.root, &id, &kek), head(&b.root, &id, &kek));
    copy_blobs(&a.root, &b.root);
    copy_blobs(&b.root, &a.root);
    // Each side merges the other's head (a criss-cross) ...
    for (r, incoming) in [(&a, hb2), (&b, h2)] {
        let mut m = r.state().open_bucket(&id, &kek).unwrap().mount().unwrap();
        let report = m.merge_from(&incoming, &ConflictFile).unwrap();
        assert!(report.conflicts.is_empty(), "{report:?}");
    }
    // ... then A writes its file again, and B merges that.
    {
        let mut m = a.state().open_bucket(&id, &kek).unwrap().mount().unwrap();
        apply(&mut m, &write(3, 30));
        m.save().unwrap();
    }
    copy_blobs(&a.root, &b.root);
    let h3 = head(&a.root, &id, &kek);
    let mut m = b.state().open_bucket(&id, &kek).unwrap().mount().unwrap();
    let report = m.merge_from(&h3, &ConflictFile).unwrap();
    assert!(report.conflicts.is_empty(), "{report:?}");
    let snap = snapshot(&mut m);
    assert_eq!(snap.get("/a"), Some(&Some(vec![3; 30])), "{snap:?}");
    assert_eq!(snap.get("/d/x"), Some(&Some(vec![8; 10])), "{snap:?}");
    assert!(
        !snap.keys().any(|p| p.contains('@')),
        "no conflict copy: {snap:?}"
    );
}

/// A peer hundreds of versions behind still finds the version both sides
/// share (history is not cut at a fixed depth), so a file it deleted stays
/// deleted instead of coming back from an empty base.
#[test]
fn a_merge_far_behind_finds_the_shared_version() {
    let (a, b, kek, id, _) = diverge(
        &[
            Edit::Write {
                file: 0,
                byte: 1,
                len: 10,
            },
            Edit::Write {
                file: 1,
                byte: 1,
                len: 10,
            },
        ],
        &[],
        &[Edit::Delete { file: 1 }],
    );
    {
        let bucket = a.state().open_bucket(&id, &kek).unwrap();
        let mut m = bucket.mount().unwrap();
        for i in 0..300u32 {
            let ino = path::resolve(&mut m, "/a").unwrap();
            let size = m.getattr(ino).unwrap().size;
            m.write(ino, size, &i.to_le_bytes()).unwrap();
            m.save().unwrap();
        }
    }
    copy_blobs(&a.root, &b.root);
    let ha = head(&a.root, &id, &kek);
    let mut m = b.state().open_bucket(&id, &kek).unwrap().mount().unwrap();
    let report = m.merge_from(&ha, &ConflictFile).unwrap();
    assert!(report.conflicts.is_empty(), "{report:?}");
    let snap = snapshot(&mut m);
    assert_eq!(snap.get("/b.txt"), None, "the delete stays: {snap:?}");
    assert_eq!(
        snap.get("/a").unwrap().as_ref().unwrap().len(),
        10 + 4 * 300
    );
}
