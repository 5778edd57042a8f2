//! Unit tests of the Mount that reach into its inode table, and the
//! `test_bucket` helper the tests of the Mount and of what drives it share.

use super::inodes::Body;
use super::*;
use crate::bucket::chunk_map::ChunkMap;
use crate::bucket::error::BucketError;
use crate::bucket::tree::{DirNode, Entry, EntryKind, FileNode, KeyBytes, Meta};
use crate::bucket::{BucketId, BucketOptions, StateDir};
use crate::crypto::Kek;
use crate::store::Hash;
use test_bucket as bucket;

/// A new bucket in a new state dir at `dir`, with chunks of `chunk_size`
/// bytes (tests of the Mount and of what drives it).
pub(crate) fn test_bucket(dir: &std::path::Path, chunk_size: u32) -> crate::bucket::Bucket {
    let opts = crate::bucket::BucketOptions {
        chunk_size,
        ..Default::default()
    };
    crate::bucket::StateDir::open(dir)
        .unwrap()
        .create_bucket(
            crate::bucket::BucketId::generate().unwrap(),
            &crate::crypto::Kek::generate().unwrap(),
            &opts,
        )
        .unwrap()
}

/// A prepared version that could not be made durable leaves its
/// changes unsaved: the next save writes them on top of it, and HEAD
/// names that one.
#[test]
fn an_unpublished_version_is_saved_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 4096);
    let before = b.head().unwrap();
    let mut m = b.mount().unwrap();
    m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap();
    let prepared = m.prepare_save().unwrap().expect("a change to save");
    assert!(!m.has_unsaved_changes());
    assert_eq!(b.head().unwrap(), before, "HEAD moved before publish");
    let prepared_height = prepared.version().height;
    m.unpublished(prepared, false);
    assert!(m.has_unsaved_changes());
    let saved = m.save().unwrap();
    assert_eq!(b.head().unwrap(), saved.hash);
    let version = b.open_version(&saved.hash).unwrap();
    assert_eq!(version.base().height, prepared_height + 1);
    let mut reopened = b.mount().unwrap();
    reopened.lookup(ROOT_INO, b"f").unwrap();
}

/// Inode numbers are the tree's ids: the same after a reopen, and
/// after the tree is replaced by a later version (as a sync does), so
/// an open file follows its new content.
#[test]
fn inode_numbers_are_stable_across_versions_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 4096);
    let mut m = b.mount().unwrap();
    let d = m.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let f = m.create(d, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"old").unwrap();
    let v1 = m.save().unwrap();
    let mut other = b.mount().unwrap();
    let f2 = crate::bucket::path::resolve(&mut other, "/d/f").unwrap();
    assert_eq!(f2, f, "a second mount of the version numbers it alike");
    other.write(f2, 0, b"new!").unwrap();
    let v2 = other.save().unwrap();
    assert_ne!(v1.hash, v2.hash);
    m.pin(f);
    m.reset_to(v2.hash).unwrap();
    assert_eq!(m.read(f, 0, 100).unwrap(), b"new!");
    assert_eq!(m.lookup(d, b"f").unwrap().ino, f);
}

/// Holes allocate nothing: st_blocks and the usage count chunks that
/// hold data, so a sparse file may be longer than the quota.
#[test]
fn blocks_count_allocated_chunks_only() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 4096);
    let mut m = b.mount().unwrap();
    m.set_quota(Some(1 << 20)).unwrap();
    let f = m.create(ROOT_INO, b"sparse", 0o644, 0, 0).unwrap().ino;
    let huge = SetAttr {
        size: Some(1 << 40),
        ..Default::default()
    };
    m.setattr(f, huge).unwrap();
    assert_eq!(m.getattr(f).unwrap().blocks, 0);
    m.write(f, 1 << 39, &[7; 100]).unwrap();
    let a = m.getattr(f).unwrap();
    assert_eq!((a.size, a.blocks), (1 << 40, 8), "one 4 KiB chunk");
    assert_eq!(m.usage().used_bytes, 4096);
    let saved = m.save().unwrap();
    let mut again = b.open_version(&saved.hash).unwrap();
    let f = crate::bucket::path::resolve(&mut again, "/sparse").unwrap();
    assert_eq!(again.getattr(f).unwrap().blocks, 8);
    assert_eq!(again.read(f, (1 << 39) - 2, 4).unwrap(), [0, 0, 7, 7]);
    assert_eq!(again.usage().used_bytes, 4096);
}

/// A stored file node whose chunk list does not fit its size is an
/// integrity error when the directory is read, never an index panic.
#[test]
fn a_file_node_longer_than_its_size_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 4096);
    let mut m = b.mount().unwrap();
    let key = KeyBytes::generate().unwrap();
    let bogus = Entry {
        name: b"bad".to_vec(),
        ino: 99,
        meta: Meta::new(0o644, 0, 0, [0; 8]),
        kind: EntryKind::File(FileNode {
            size: 10,
            key: KeyBytes::generate().unwrap(),
            chunks: ChunkMap::from_dense(vec![Some(Hash::of(b"x")); 5]),
        }),
    };
    let node = DirNode {
        root_meta: None,
        links: None,
        entries: vec![bogus],
    };
    let hash = node.store(&m.core.store, &key).unwrap();
    let d = m.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    if let Body::Dir(dd) = &mut m.inodes.get_mut(&d).unwrap().body {
        dd.children = None;
        dd.stored = Some(hash);
        dd.key = key;
    }
    let err = m.readdir(d).unwrap_err();
    assert!(err.is_integrity(), "{err}");
}

/// An unlinked file that is still referenced keeps its bytes and its
/// inode number, counts on the quota, survives the tree being replaced
/// by another version (as after a sync), and is gone once unpinned.
#[test]
fn orphans_count_on_the_quota_and_survive_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let kek = Kek::generate().unwrap();
    let bucket = state
        .create_bucket(
            BucketId::generate().unwrap(),
            &kek,
            &BucketOptions::default(),
        )
        .unwrap();
    let mut m = bucket.mount().unwrap();
    m.set_quota(Some(10_000)).unwrap();
    for name in [&b"x"[..], b"y", b"z"] {
        m.create(ROOT_INO, name, 0o644, 0, 0).unwrap();
    }
    let a = m.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
    m.write(a, 0, &[1u8; 4000]).unwrap();
    m.pin(a);
    m.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(m.getattr(a).unwrap().nlink, 0);
    assert_eq!(m.usage().used_bytes, 4000);
    let b = m.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap().ino;
    assert!(matches!(
        m.write(b, 0, &[2u8; 7000]),
        Err(BucketError::QuotaExceeded { .. })
    ));
    m.write(a, 4000, &[3u8; 1000]).unwrap();
    assert_eq!(m.usage().used_bytes, 5000);
    m.save().unwrap();
    // Another writer's version with more entries than this mount has
    // handed out numbers: none of them may take the orphan's number.
    let mut other = bucket.mount().unwrap();
    for i in 0..10 {
        other
            .create(ROOT_INO, format!("n{i}").as_bytes(), 0o644, 0, 0)
            .unwrap();
    }
    let theirs = other.save().unwrap();
    m.reset_to(theirs.hash).unwrap();
    let names: Vec<Ino> = m.readdir(ROOT_INO).unwrap().iter().map(|e| e.ino).collect();
    assert_eq!(names.len(), 14, "x, y, z, b and n0..n9");
    assert!(!names.contains(&a), "{names:?} reuses the orphan's {a}");
    let mut want = vec![1u8; 4000];
    want.extend([3u8; 1000]);
    assert_eq!(m.read(a, 0, 6000).unwrap(), want);
    assert_eq!(m.usage().used_bytes, 5000);
    m.unpin(a);
    assert!(m.getattr(a).is_err());
    assert_eq!(m.usage().used_bytes, 0);
}

/// Hard links: one file, several names; nlink counts them, data and
/// metadata are shared, removing one name leaves the others, and all of
/// it survives a save and a reopen (names loaded lazily, in any order).
#[test]
fn hard_links_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 4096);
    let mut m = b.mount().unwrap();
    let d = m.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let f = m.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"shared bytes").unwrap();
    assert!(matches!(
        m.link(d, ROOT_INO, b"dirlink"),
        Err(BucketError::NotPermitted(_))
    ));
    m.link(f, d, b"a").unwrap();
    assert!(matches!(
        m.link(f, ROOT_INO, b"a"),
        Err(BucketError::Exists)
    ));
    let a = m.link(f, ROOT_INO, b"c").unwrap();
    assert_eq!((a.ino, a.nlink), (f, 3));
    assert_eq!(m.usage().entries, 4, "d and three names");
    m.write(f, 0, b"SHARED").unwrap();
    let via_d = m.lookup(d, b"a").unwrap().ino;
    assert_eq!(m.read(via_d, 0, 64).unwrap(), b"SHARED bytes");
    m.setattr(
        f,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    m.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(m.getattr(f).unwrap().nlink, 2);
    // Renaming one name over another name of the same file does nothing.
    m.rename(ROOT_INO, b"c", d, b"a", RenameFlags::default())
        .unwrap();
    assert_eq!(m.getattr(f).unwrap().nlink, 2);
    let used = m.usage().used_bytes;
    let saved = m.save().unwrap();
    assert_eq!(saved.used_bytes, used);

    // A fresh mount: load the subdirectory's name first.
    let mut again = b.open_version(&saved.hash).unwrap();
    let d2 = again.lookup(ROOT_INO, b"d").unwrap().ino;
    let via_d = again.lookup(d2, b"a").unwrap();
    assert_eq!((via_d.ino, via_d.nlink, via_d.mode), (f, 2, 0o600));
    assert_eq!(again.lookup(ROOT_INO, b"c").unwrap().ino, f);
    assert_eq!(again.read(f, 0, 64).unwrap(), b"SHARED bytes");
    assert_eq!(again.usage().used_bytes, used);
    b.verify().unwrap();

    // Removing every name removes the file and its table entry.
    let mut m = b.mount().unwrap();
    let d = m.lookup(ROOT_INO, b"d").unwrap().ino;
    m.unlink(ROOT_INO, b"c").unwrap();
    assert_eq!(m.getattr(f).unwrap().nlink, 1);
    m.unlink(d, b"a").unwrap();
    assert!(m.getattr(f).is_err());
    let saved = m.save().unwrap();
    assert_eq!(saved.used_bytes, 0);
    let mut last = b.open_version(&saved.hash).unwrap();
    assert!(last
        .readdir(ROOT_INO)
        .unwrap()
        .iter()
        .all(|e| e.name != b"c"));
    assert!(last.link_table.is_empty());
}

/// A pin is a flag, not a count (counting references is the user's job):
/// one unpin releases it. `names_to` leads from the root to an inode in
/// the tree, and to no orphan.
#[test]
fn a_pin_is_released_by_one_unpin_and_orphans_have_no_names() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = b.mount().unwrap();
    let d = m.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let f = m.create(d, b"f", 0o644, 0, 0).unwrap().ino;
    assert_eq!(m.names_to(f), Some(vec![b"d".to_vec(), b"f".to_vec()]));
    assert_eq!(m.names_to(ROOT_INO), Some(Vec::new()));
    assert_eq!(m.names_to(12345), None);
    m.pin(f);
    m.pin(f);
    m.unlink(d, b"f").unwrap();
    assert!(m.getattr(f).is_ok(), "pinned: an orphan");
    assert_eq!(m.names_to(f), None);
    m.unpin(f);
    assert!(m.getattr(f).is_err(), "one unpin releases it");
    m.unpin(f);
}

/// A head at the largest height (any member may sign one) cannot make a
/// save or a merge overflow: the next version is an error, not a wrap to 0
/// (release) or a panic (debug).
#[test]
fn a_save_on_top_of_the_largest_height_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 1 << 16);
    let head = b.head().unwrap();
    let m = b.core.load_manifest(&head).unwrap();
    let mut body = m.body.clone();
    body.height = u64::MAX;
    body.previous = Some(head);
    let key = b.core.open_root_key(&m).unwrap();
    body.seal_root_key(&b.core.secret, &key.0).unwrap();
    let top = Manifest::sign(body, &b.core.identity).unwrap();
    let hash = top.store(&b.core.store).unwrap();
    b.core.write_head(&hash).unwrap();
    let mut m = b.mount().unwrap();
    crate::bucket::path::write_file(&mut m, "/x", b"1").unwrap();
    let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.save()));
    assert!(
        matches!(saved, Ok(Err(_))),
        "a save past the largest height must fail cleanly"
    );
}

/// #26 finding 2: a signature proves nothing of membership (any identity
/// signs). A root key copied from a real version into another body (a
/// self-made genesis, new shares) no longer opens; a format 1 manifest
/// (root key unbound) is refused as a peer's head even when it opens.
#[test]
fn only_a_holder_of_the_secret_makes_a_head_a_peer_takes() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 1 << 16);
    let mut m = b.mount().unwrap();
    crate::bucket::path::write_file(&mut m, "/gone", b"deleted later").unwrap();
    let real = m.save().unwrap().hash;
    b.check_written_by_member(&real).unwrap();
    let stranger = crate::crypto::Identity::generate().unwrap();
    let genuine = b.core.load_manifest(&real).unwrap();
    // A forged genesis by a stranger: the real tree and sealed root key,
    // no parent, the stranger among the shares.
    let mut body = genuine.body.claimed_by(stranger.node_id(), None, 0);
    let bound = Manifest::sign(body.clone(), &stranger).unwrap();
    let h = bound.store(&b.core.store).unwrap();
    let err = b.check_written_by_member(&h).unwrap_err();
    assert!(err.to_string().contains("not written by a member"), "{err}");
    // The same forgery as format 1, its root key sealed without binding as
    // history from before the binding holds it: it opens, and is refused.
    let key = b.core.open_root_key(&genuine).unwrap();
    body.root_key = b.core.secret.seal(&key.0).unwrap();
    let unbound = Manifest::sign_unbound(body, &stranger).unwrap();
    let h = unbound.store(&b.core.store).unwrap();
    assert!(b
        .core
        .open_root_key(&b.core.load_manifest(&h).unwrap())
        .is_ok());
    let err = b.check_written_by_member(&h).unwrap_err();
    assert!(err.to_string().contains("unbound manifest"), "{err}");
}

/// A head written before the binding (format 1) is written again as a
/// bound version by the first writable mount, the same tree on top of
/// it, so peers of this release take this node's history.
#[test]
fn the_first_writable_mount_binds_an_unbound_head() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 1 << 16);
    let mut m = b.mount().unwrap();
    crate::bucket::path::write_file(&mut m, "/kept", b"from before").unwrap();
    let bound = m.save().unwrap().hash;
    drop(m);
    let genuine = b.core.load_manifest(&bound).unwrap();
    let key = b.core.open_root_key(&genuine).unwrap();
    let mut body = genuine.body.clone();
    body.root_key = b.core.secret.seal(&key.0).unwrap();
    let old = Manifest::sign_unbound(body, &b.core.identity).unwrap();
    let old_hash = old.store(&b.core.store).unwrap();
    b.core.write_head(&old_hash).unwrap();
    assert!(b.check_written_by_member(&old_hash).is_err());
    let mut m = b.mount().unwrap();
    let head = b.head().unwrap();
    assert_ne!(head, old_hash, "a bound version was written");
    let top = b.core.load_manifest(&head).unwrap();
    assert!(top.is_bound());
    assert_eq!(top.body.previous, Some(old_hash));
    assert_eq!(top.body.root, genuine.body.root, "the same tree");
    b.check_written_by_member(&head).unwrap();
    assert_eq!(
        crate::bucket::path::read_file(&mut m, "/kept").unwrap(),
        b"from before"
    );
    drop(m);
    // Once bound, a mount writes nothing.
    let _again = b.mount().unwrap();
    assert_eq!(b.head().unwrap(), head);
}

/// #26 finding 6: a node removed from the cluster loses its key share in
/// the next version, and a merge with a version that still shares with it
/// (written where the removal was not known yet) does not bring it back.
#[test]
fn a_removed_member_gets_no_share_of_later_versions() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(dir.path(), 1 << 16);
    let gone = crate::crypto::Identity::generate().unwrap().node_id();
    let mut old_side = b.mount().unwrap();
    let mut granting = b.mount().unwrap();
    granting.grant(&gone).unwrap();
    let shared = granting.save().unwrap().hash;
    assert!(b
        .core
        .load_manifest(&shared)
        .unwrap()
        .body
        .shares
        .iter()
        .any(|s| s.recipient == gone));
    drop(granting);
    b.core.revoked.add([gone]).unwrap();
    // A mount of the head with the share: dropping it makes a version.
    let mut m = b.mount().unwrap();
    assert!(m.drop_revoked_members().unwrap());
    let without = m.save().unwrap().hash;
    let members = |h: &Hash| -> Vec<crate::crypto::NodeId> {
        b.core
            .load_manifest(h)
            .unwrap()
            .body
            .shares
            .iter()
            .map(|s| s.recipient)
            .collect()
    };
    assert!(!members(&without).contains(&gone));
    drop(m);
    // A sibling written from before the grant, then merged with the
    // version that shares with the removed node: no share comes back.
    crate::bucket::path::write_file(&mut old_side, "/x", b"concurrent").unwrap();
    old_side.save().unwrap();
    old_side
        .merge_from(&shared, &crate::bucket::ConflictFile)
        .unwrap();
    let merged = b.head().unwrap();
    assert_ne!(merged, shared);
    assert!(
        !members(&merged).contains(&gone),
        "a merge brought the removed node's share back"
    );
    assert!(!old_side.members().contains(&gone));
}
