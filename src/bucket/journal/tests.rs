//! The journal: changes fsynced into it and never saved as a version come
//! back, whole and the same (inode ids, times, xattrs, links), when the
//! bucket is mounted again; whatever a crash did to its tail.

use std::io::Write;

use crate::bucket::mount::test_bucket;
use crate::bucket::{Bucket, FileKind, Mount, RenameFlags, SetAttr, XattrFlags};
use crate::bucket::{Ino, Timestamp, ROOT_INO};

/// Everything a user sees of a tree: each path's kind, inode, mode,
/// owner, size, times, xattrs, link count, and bytes or target.
fn picture(m: &mut Mount) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = stack.pop() {
        let mut entries = m.readdir(dir).unwrap();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            let a = m.getattr(e.ino).unwrap();
            let mut xattrs: Vec<String> = m
                .listxattr(e.ino)
                .unwrap()
                .into_iter()
                .map(|n| {
                    let v = m.getxattr(e.ino, &n).unwrap();
                    format!(
                        "{}={}",
                        String::from_utf8_lossy(&n),
                        String::from_utf8_lossy(&v)
                    )
                })
                .collect();
            xattrs.sort();
            let body = match a.kind {
                FileKind::File => format!("{:?}", m.read(e.ino, 0, a.size as u32).unwrap()),
                FileKind::Symlink => String::from_utf8_lossy(&m.readlink(e.ino).unwrap()).into(),
                _ => String::new(),
            };
            out.push(format!(
                "{p} {:?} ino={} mode={:o} {}:{} size={} nlink={} mtime={:?} ctime={:?} {xattrs:?} {body}",
                a.kind, a.ino, a.mode, a.uid, a.gid, a.size, a.nlink, a.mtime, a.ctime
            ));
            if a.kind == FileKind::Dir {
                stack.push((e.ino, p));
            }
        }
    }
    out
}

/// Append what the mount recorded since the last fsync, as fsync does
/// (never a version: the tests check HEAD did not move).
fn fsync(m: &mut Mount) {
    assert!(m.is_journaled());
    m.sync_to_journal().unwrap();
}

fn lookup(m: &mut Mount, parent: Ino, name: &str) -> Ino {
    m.lookup(parent, name.as_bytes()).unwrap().ino
}

/// Every kind of change a pod makes, fsynced in three batches.
fn busy_day(m: &mut Mount) {
    let dir = m.mkdir(ROOT_INO, b"db", 0o750, 10, 20).unwrap().ino;
    let wal = m.create(dir, b"wal", 0o600, 10, 20).unwrap().ino;
    m.write(wal, 0, &vec![7u8; 10_000]).unwrap();
    m.write(wal, 5_000, b"overwritten in the middle").unwrap();
    fsync(m);
    let data = m.create(ROOT_INO, b"data", 0o644, 0, 0).unwrap().ino;
    m.write(data, 0, b"first").unwrap();
    m.setattr(
        data,
        SetAttr {
            size: Some(3),
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .unwrap();
    m.setxattr(data, b"user.tag", b"blue", XattrFlags::default())
        .unwrap();
    m.symlink(ROOT_INO, b"latest", b"db/wal", 0, 0).unwrap();
    m.link(data, dir, b"data-too").unwrap();
    fsync(m);
    let gone = m.create(ROOT_INO, b"gone", 0o644, 0, 0).unwrap().ino;
    m.write(gone, 0, b"short-lived").unwrap();
    m.unlink(ROOT_INO, b"gone").unwrap();
    m.rename(ROOT_INO, b"data", dir, b"renamed", RenameFlags::default())
        .unwrap();
    m.setattr(
        wal,
        SetAttr {
            mtime: Some(Timestamp {
                secs: 1_000_000,
                nanos: 5,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    m.removexattr(data, b"user.tag").unwrap();
    let sub = m.mkdir(dir, b"sub", 0o755, 0, 0).unwrap().ino;
    m.rmdir(dir, b"sub").unwrap();
    let _ = sub;
    fsync(m);
}

fn journaled(b: &Bucket) -> Mount {
    b.mount_journaled().unwrap()
}

#[test]
fn fsynced_changes_come_back_the_same_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let head = b.head().unwrap();
    let mut m = journaled(&b);
    busy_day(&mut m);
    let before = picture(&mut m);
    // The process dies: no version was written.
    drop(m);
    assert_eq!(b.head().unwrap(), head, "an fsync wrote a version");

    let mut again = journaled(&b);
    assert_ne!(b.head().unwrap(), head, "recovery made a version");
    assert_eq!(picture(&mut again), before);
    assert!(!again.has_unsaved_changes());
    // The journal is empty now: a third mount sees the same and changes nothing.
    drop(again);
    let head = b.head().unwrap();
    let mut third = journaled(&b);
    assert_eq!(b.head().unwrap(), head);
    assert_eq!(picture(&mut third), before);
}

#[test]
fn changes_after_the_last_fsync_are_not_replayed_and_a_torn_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled(&b);
    let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"acknowledged").unwrap();
    fsync(&mut m);
    m.write(f, 0, b"never synced").unwrap();
    drop(m);
    // A crash in the middle of the next append: half a frame at the end.
    let active = dir.path().join("buckets");
    let active = find(&active, "active").expect("an active journal file");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&active)
        .unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(file);

    let mut again = journaled(&b);
    let f = lookup(&mut again, ROOT_INO, "f");
    assert_eq!(again.read(f, 0, 100).unwrap(), b"acknowledged");
}

#[test]
fn a_version_retires_the_journal_and_later_changes_apply_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled(&b);
    let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"one").unwrap();
    fsync(&mut m);
    let v = m.save().unwrap();
    let jdir = find(&dir.path().join("buckets"), "journal").unwrap();
    let names: Vec<String> = std::fs::read_dir(&jdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["spare".to_string()],
        "a saved version leaves only the spare"
    );
    m.write(f, 3, b" two").unwrap();
    fsync(&mut m);
    drop(m);
    let mut again = journaled(&b);
    let f = lookup(&mut again, ROOT_INO, "f");
    assert_eq!(again.read(f, 0, 100).unwrap(), b"one two");
    let history = b.history().unwrap();
    assert!(history.iter().any(|h| h.hash == v.hash));
}

#[test]
fn a_head_that_moved_meanwhile_is_merged_with_the_replayed_changes() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled(&b);
    let f = m.create(ROOT_INO, b"mine", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"journaled").unwrap();
    fsync(&mut m);
    drop(m);
    // Before the mount comes back, HEAD moves (a peer's head taken in).
    let mut other = b.mount().unwrap();
    crate::bucket::path::write_file(&mut other, "/theirs", b"from a peer").unwrap();
    other.save().unwrap();
    drop(other);

    let mut again = journaled(&b);
    let mine = lookup(&mut again, ROOT_INO, "mine");
    let theirs = lookup(&mut again, ROOT_INO, "theirs");
    assert_eq!(again.read(mine, 0, 100).unwrap(), b"journaled");
    assert_eq!(again.read(theirs, 0, 100).unwrap(), b"from a peer");
    assert_eq!(again.readdir(ROOT_INO).unwrap().len(), 2 + dots(&mut again));
}

#[test]
fn a_frame_altered_on_disk_stops_the_replay_there() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled(&b);
    let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"first").unwrap();
    fsync(&mut m);
    m.write(f, 0, b"second").unwrap();
    fsync(&mut m);
    drop(m);
    let active = find(&dir.path().join("buckets"), "active").unwrap();
    let mut bytes = std::fs::read(&active).unwrap();
    // Frames: the header, the first batch, the second: alter the second.
    let len_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let first = 4 + len_at(0);
    let second = first + 4 + len_at(first);
    assert!(len_at(second) > 0, "a second frame");
    bytes[second + 10] ^= 1;
    std::fs::write(&active, &bytes).unwrap();

    let mut again = journaled(&b);
    let f = lookup(&mut again, ROOT_INO, "f");
    assert_eq!(
        again.read(f, 0, 100).unwrap(),
        b"first",
        "an altered frame is never applied"
    );
}

/// How many of `.` and `..` readdir lists at the root.
fn dots(m: &mut Mount) -> usize {
    m.readdir(ROOT_INO)
        .unwrap()
        .iter()
        .filter(|e| e.name == b"." || e.name == b"..")
        .count()
}

/// The first file or directory named `name` under `dir`.
fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if p.is_dir() {
            if let Some(found) = find(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

/// The spare is written over by the next active file: neither its earlier
/// frames nor its header (a crash right after it is renamed back) bring
/// back changes a version already took, such as a file since removed.
#[test]
fn a_reused_spare_never_replays_its_earlier_life() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled(&b);
    let x = m.create(ROOT_INO, b"x", 0o644, 0, 0).unwrap().ino;
    m.write(x, 0, &vec![1u8; 20_000]).unwrap();
    fsync(&mut m);
    m.save().unwrap();
    let jdir = find(&dir.path().join("buckets"), "journal").unwrap();
    assert!(jdir.join("spare").exists());

    // A crash after the spare became `active` again, before a frame.
    std::fs::rename(jdir.join("spare"), jdir.join("active")).unwrap();
    drop(m);
    let mut m = journaled(&b);
    assert_eq!(m.readdir(ROOT_INO).unwrap().len(), 1 + dots(&mut m));

    // Later changes, shorter than the earlier ones, in the reused file.
    m.unlink(ROOT_INO, b"x").unwrap();
    fsync(&mut m);
    drop(m);
    let mut again = journaled(&b);
    assert!(
        again.lookup(ROOT_INO, b"x").is_err(),
        "the removed file came back from the spare's earlier frames"
    );
}

/// #26: a rotation between an fsync and the next version (the process
/// dies after the new epoch is kept, before a version is sealed under it):
/// the frames sealed under the older secret still replay, and the version
/// recovery writes is sealed under the new one.
#[test]
fn frames_sealed_before_a_rotation_replay_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled(&b);
    busy_day(&mut m);
    let before = picture(&mut m);
    assert_eq!(m.rotate_secret().unwrap(), 1);
    drop(m);
    // Opened again from disk, as after a restart.
    let state = crate::bucket::StateDir::open(dir.path()).unwrap();
    let base = crate::crypto::SecretKey::from_bytes(b.secret_for_audit());
    let reopened = state.bucket_with_secret(&b.id(), base.clone());
    assert_eq!(
        reopened.epochs(),
        1,
        "the epoch was kept before any version"
    );
    let mut again = journaled(&reopened);
    assert_eq!(picture(&mut again), before);
    drop(again);
    let head = reopened.head().unwrap();
    let m = crate::bucket::Manifest::load(state.store(), &head).unwrap();
    assert!(reopened.can_open(&m));
    let base_only = state.core_with(b.id(), crate::crypto::Keyring::of(base));
    assert!(
        base_only.try_open_root_key(&m).unwrap().is_none(),
        "recovery sealed its version with the old secret"
    );
}

/// A batch of changes on a version that was cut and then handed back
/// (its commit failed, so it may never be durable) is refused: no journal
/// file names such a version as its base, and the fsync writes a version.
#[test]
fn changes_on_a_version_handed_back_are_not_journaled_on_it() {
    use crate::bucket::Appended;
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled(&b);
    let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"cut").unwrap();
    let prepared = m.prepare_save().unwrap().expect("a change to save");
    m.write(f, 3, b" after").unwrap();
    // Taken on the cut version; the commit then fails before it is durable.
    let batch = m.take_journal_batch();
    m.unpublished(prepared, false);
    assert!(matches!(batch.append(), Appended::Failed));
    let jdir = find(&dir.path().join("buckets"), "journal").unwrap();
    assert!(
        !jdir.join("active").exists(),
        "a journal file was started on a version that is not durable"
    );
    // What a failed append leads to: a version holds everything.
    m.journal_breaks();
    m.save().unwrap();
    drop(m);
    let mut again = journaled(&b);
    let f = lookup(&mut again, ROOT_INO, "f");
    assert_eq!(again.read(f, 0, 100).unwrap(), b"cut after");
}

fn copied(
    journal: &crate::bucket::journal::Journal,
    have: Option<(super::FileId, u64)>,
) -> super::CopiedBytes {
    let at = journal.position().expect("an active file");
    match journal.copy_for(&at.file, have, usize::MAX) {
        super::Copyable::Bytes(c) => c,
        other => panic!("the active file's bytes: {other:?}"),
    }
}

/// A journaled mount whose journal keeps its files' bytes for replicas
/// (what a mount whose fsyncs wait for replicas asks).
fn journaled_for_copies(b: &Bucket) -> Mount {
    let m = journaled(b);
    m.journal().unwrap().keep_copies(true);
    m
}

/// Unless copies are asked for, a journal file's bytes are not kept in
/// memory; asked for, they are from the next file on.
#[test]
fn a_journal_keeps_its_bytes_only_when_copies_are_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled(&b);
    let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"not copied").unwrap();
    fsync(&mut m);
    let journal = m.journal().unwrap();
    let at = journal.position().unwrap();
    journal.keep_copies(true);
    assert!(matches!(
        journal.copy_for(&at.file, None, usize::MAX),
        super::Copyable::NotKept
    ));
    m.save().unwrap();
    assert!(matches!(
        journal.copy_for(&at.file, None, usize::MAX),
        super::Copyable::NotKept
    ));
    m.write(f, 0, b"copied").unwrap();
    fsync(&mut m);
    assert_eq!(
        copied(&journal, None).bytes.len() as u64,
        journal.position().unwrap().end
    );
}

/// A replica's copy of a journal whose changes HEAD already holds (the
/// writer made its version, then changed the file again) is replayed by
/// the next node to stage: nothing goes back, and no conflict copy.
#[test]
fn a_copy_whose_changes_head_holds_changes_nothing_when_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled_for_copies(&b);
    let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"first").unwrap();
    fsync(&mut m);
    let journal = m.journal().expect("journaled");
    let copy = copied(&journal, None);
    assert_eq!(copy.offset, 0);
    // What the replica gets is what the file holds.
    let active = find(&dir.path().join("buckets"), "active").unwrap();
    let on_disk = std::fs::read(active).unwrap();
    assert_eq!(&on_disk[..copy.bytes.len()], &copy.bytes[..]);
    m.save().unwrap();
    m.write(f, 0, b"second, later").unwrap();
    m.save().unwrap();
    let want = picture(&mut m);
    drop(m);

    b.replay_journal_copy(&copy.bytes).unwrap();
    let mut after = b.mount().unwrap();
    assert_eq!(
        picture(&mut after),
        want,
        "the copy's stale bytes came back"
    );
}

/// The bytes a peer lacks are sent from where its copy ends, and a file
/// a version took over is still sent (one version back, not two).
#[test]
fn a_copy_grows_from_where_it_ends_and_outlives_its_file_by_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled_for_copies(&b);
    let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"whole").unwrap();
    fsync(&mut m);
    let journal = m.journal().unwrap();
    let whole = copied(&journal, None);
    let first = journal.position().unwrap();
    m.write(f, 5, b" and more").unwrap();
    fsync(&mut m);
    let rest = copied(&journal, Some((first.file, first.end)));
    assert_eq!(
        (rest.file, rest.offset),
        (first.file, first.end),
        "from where the copy left off"
    );
    assert_eq!(whole.bytes.len() as u64, first.end);

    // A version takes the file over: it is still there for a replica
    // that lacks its end, until the next version.
    m.save().unwrap();
    assert!(
        journal.position().is_none(),
        "no active file after the version"
    );
    assert!(matches!(
        journal.copy_for(&first.file, Some((first.file, first.end)), usize::MAX),
        super::Copyable::Bytes(c) if c.bytes == rest.bytes
    ));
    m.write(f, 0, b"W").unwrap();
    fsync(&mut m);
    m.save().unwrap();
    assert!(matches!(
        journal.copy_for(&first.file, None, usize::MAX),
        super::Copyable::Gone
    ));
    drop(m);
}

/// A copy that a peer holds only in part (a frame cut short by the
/// copy's end) is replayed up to its last whole frame.
#[test]
fn a_copy_cut_short_replays_its_whole_frames() {
    let dir = tempfile::tempdir().unwrap();
    let b = test_bucket(dir.path(), 4096);
    let mut m = journaled_for_copies(&b);
    let f = m.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"whole").unwrap();
    fsync(&mut m);
    let journal = m.journal().unwrap();
    let whole = copied(&journal, None);
    m.write(f, 5, b" and more").unwrap();
    fsync(&mut m);
    let all = copied(&journal, None);
    drop(m);
    let mut bytes = whole.bytes.clone();
    bytes.extend_from_slice(
        &all.bytes[whole.bytes.len()..(whole.bytes.len() + all.bytes.len()) / 2],
    );
    // (This bucket's own journal, with both frames, is not read by a
    // plain mount: what HEAD gets is the copy's doing.)
    b.replay_journal_copy(&bytes).unwrap();
    let mut after = b.mount().unwrap();
    let f = lookup(&mut after, ROOT_INO, "f");
    assert_eq!(after.read(f, 0, 100).unwrap(), b"whole");
}
