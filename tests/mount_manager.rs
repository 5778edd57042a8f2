//! The MountManager API over real FUSE mounts: records and statuses, each
//! error variant, sync events and merges of a newer head, and a restart that
//! brings auto-mounts back from the node-local records.

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jax_csi::bucket::{path, BucketId, BucketOptions, StateDir};
use jax_csi::crypto::Kek;
use jax_csi::fuse::mount_manager::{MountUpdate, SyncEvent};
use jax_csi::fuse::{MountError, MountManager, MountOptions, MountStatus};

struct Setup {
    dir: tempfile::TempDir,
    state: Arc<StateDir>,
    kek: Arc<Kek>,
    volume: BucketId,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(StateDir::open(&dir.path().join("state")).unwrap());
    let kek = Arc::new(Kek::generate().unwrap());
    let id = BucketId::generate().unwrap();
    state
        .create_bucket(id, &kek, &BucketOptions::default())
        .unwrap();
    fs::create_dir(dir.path().join("mnt")).unwrap();
    Setup {
        dir,
        state,
        kek,
        volume: id,
    }
}

impl Setup {
    fn manager(&self) -> MountManager {
        MountManager::new(
            self.state.clone(),
            self.kek.clone(),
            self.dir.path().join("mounts.json"),
            None,
        )
        .unwrap()
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

#[test]
fn lifecycle_statuses_and_restart_from_local_records() {
    let s = setup();
    let m = s.manager();
    let rec = m
        .create_mount(&s.volume, &s.mnt(), MountOptions::default())
        .unwrap();
    assert_eq!(rec.status, MountStatus::Stopped);
    assert_eq!(m.list(), vec![rec.clone()]);
    let running = m.start(&s.volume).unwrap();
    assert_eq!(running.status, MountStatus::Running);
    assert!(jax_csi::fuse::session::is_mount_point(&s.mnt()));
    fs::write(s.mnt().join("kept"), b"across restarts").unwrap();
    assert!(m.get_live_mount(&s.volume).is_some());

    let updated = m
        .update(
            &s.volume,
            MountUpdate {
                cache_chunks: Some(4),
                cache_ttl_ms: Some(250),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(updated.options.cache_chunks, 4);
    assert_eq!(
        m.get_mount_cache(&s.volume).unwrap(),
        (4, Duration::from_millis(250))
    );

    // A node restart: every mount stops (final commit), a new manager reads
    // the records file and starts the auto-mounts.
    m.stop_all();
    assert_eq!(m.get(&s.volume).unwrap().status, MountStatus::Stopped);
    assert!(!jax_csi::fuse::session::is_mount_point(&s.mnt()));
    drop(m);
    let m = s.manager();
    assert_eq!(m.get(&s.volume).unwrap().options.cache_chunks, 4);
    assert!(m.start_auto().is_empty());
    assert_eq!(m.get(&s.volume).unwrap().status, MountStatus::Running);
    assert_eq!(fs::read(s.mnt().join("kept")).unwrap(), b"across restarts");

    // auto_mount off: not started at the next restart.
    m.update(
        &s.volume,
        MountUpdate {
            auto_mount: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    m.stop(&s.volume).unwrap();
    m.stop(&s.volume).unwrap(); // stopping a stopped mount is fine
    let m = s.manager();
    assert!(m.start_auto().is_empty());
    assert_eq!(m.get(&s.volume).unwrap().status, MountStatus::Stopped);
    m.delete(&s.volume).unwrap();
    assert!(matches!(
        m.get(&s.volume),
        Err(MountError::MountNotFound(_))
    ));
    assert!(s.manager().list().is_empty(), "deletion is persisted");
}

#[test]
fn each_error_variant() {
    let s = setup();
    let m = s.manager();
    let unknown = BucketId::generate().unwrap();
    assert!(matches!(
        m.create_mount(&unknown, &s.mnt(), MountOptions::default()),
        Err(MountError::BucketNotFound(_))
    ));
    assert!(matches!(
        m.create_mount(
            &s.volume,
            &s.dir.path().join("absent"),
            MountOptions::default()
        ),
        Err(MountError::MountPointMissing(_))
    ));
    let file = s.dir.path().join("file");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        m.create_mount(&s.volume, &file, MountOptions::default()),
        Err(MountError::MountPointNotADirectory(_))
    ));
    assert!(matches!(m.get(&unknown), Err(MountError::MountNotFound(_))));
    assert!(matches!(
        m.start(&unknown),
        Err(MountError::MountNotFound(_))
    ));
    assert!(matches!(
        m.stop(&unknown),
        Err(MountError::MountNotFound(_))
    ));

    m.create_mount(&s.volume, &s.mnt(), MountOptions::default())
        .unwrap();
    m.start(&s.volume).unwrap();
    assert!(matches!(
        m.start(&s.volume),
        Err(MountError::AlreadyRunning(_))
    ));
    assert!(matches!(
        m.create_mount(&s.volume, &s.mnt(), MountOptions::default()),
        Err(MountError::AlreadyRunning(_))
    ));
    m.stop(&s.volume).unwrap();

    // A bucket whose wrapped key is damaged: LoadFailed, status error.
    let key = s
        .state
        .root()
        .join("buckets")
        .join(s.volume.to_hex())
        .join("key.wrapped");
    let good = fs::read(&key).unwrap();
    let mut bad = good.clone();
    bad[5] ^= 0xff;
    fs::write(&key, &bad).unwrap();
    let err = m.start(&s.volume).unwrap_err();
    assert!(matches!(err, MountError::LoadFailed { .. }), "{err}");
    assert!(matches!(
        m.get(&s.volume).unwrap().status,
        MountStatus::Error(msg) if msg.contains("loading bucket")
    ));
    fs::write(&key, &good).unwrap();

    // The mount point vanished between create and start.
    let gone = s.dir.path().join("gone");
    fs::create_dir(&gone).unwrap();
    let other = BucketId::generate().unwrap();
    s.state
        .create_bucket(other, &s.kek, &BucketOptions::default())
        .unwrap();
    m.create_mount(&other, &gone, MountOptions::default())
        .unwrap();
    fs::remove_dir(&gone).unwrap();
    assert!(matches!(
        m.start(&other),
        Err(MountError::MountPointMissing(_))
    ));

    // Records that cannot be written: Database.
    let broken = MountManager::new(
        s.state.clone(),
        s.kek.clone(),
        s.dir.path().join("no-such-dir/mounts.json"),
        None,
    )
    .unwrap();
    assert!(matches!(
        broken.create_mount(&s.volume, &s.mnt(), MountOptions::default()),
        Err(MountError::Database(_))
    ));
    // And a records file that is not JSON refuses to load.
    fs::write(s.dir.path().join("bad.json"), b"{not json").unwrap();
    assert!(matches!(
        MountManager::new(
            s.state.clone(),
            s.kek.clone(),
            s.dir.path().join("bad.json"),
            None
        ),
        Err(MountError::Database(_))
    ));
}

/// The next sync event, waiting for it up to 10 s.
fn next_event(events: &mut tokio::sync::broadcast::Receiver<SyncEvent>) -> SyncEvent {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match events.try_recv() {
            Ok(ev) => return ev,
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no sync event within 10 s"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("sync events: {e}"),
        }
    }
}

#[test]
fn synced_heads_merge_into_the_live_mount_and_invalidate_caches() {
    let s = setup();
    let m = s.manager();
    // What the node agent applies a head a peer sent with.
    let replicas = jax_csi::node::Replicas::new(m.clone());
    let mut events = m.subscribe_sync_events();
    m.create_mount(&s.volume, &s.mnt(), MountOptions::default())
        .unwrap();
    m.start(&s.volume).unwrap();
    fs::write(s.mnt().join("local.txt"), b"mine").unwrap();
    fs::File::open(s.mnt().join("local.txt"))
        .unwrap()
        .sync_all()
        .unwrap();
    // The fsync went to the journal; the committer's version follows.
    match next_event(&mut events) {
        SyncEvent::Committed { volume, .. } => assert_eq!(volume, s.volume),
        other => panic!("expected a commit event, got {other:?}"),
    }

    // Another writer (what sync delivers) moves the head: a fast-forward.
    let id = s.volume;
    let remote_head = {
        let b = s.state.open_bucket(&id, &s.kek).unwrap();
        let mut other = b.mount().unwrap();
        path::write_file(&mut other, "/remote.txt", b"theirs").unwrap();
        other.save().unwrap().hash
    };
    // The kernel has cached the root listing; the merge must invalidate it.
    let before: Vec<_> = fs::read_dir(s.mnt()).unwrap().collect();
    assert_eq!(before.len(), 1);
    replicas.apply_head(&s.volume, &remote_head).unwrap();
    assert_eq!(fs::read(s.mnt().join("remote.txt")).unwrap(), b"theirs");
    assert_eq!(fs::read(s.mnt().join("local.txt")).unwrap(), b"mine");
    let ev = loop {
        match events.try_recv().unwrap() {
            SyncEvent::MountInvalidated { volume, head, .. } => break (volume, head),
            SyncEvent::Committed { .. } => continue,
        }
    };
    assert_eq!(ev, (s.volume, remote_head));

    // Concurrent edits of one file on both sides: a conflict copy, nothing lost.
    let b = s.state.open_bucket(&id, &s.kek).unwrap();
    let mut other = b.mount().unwrap();
    fs::write(s.mnt().join("both.txt"), b"local version").unwrap();
    path::write_file(&mut other, "/both.txt", b"remote version").unwrap();
    let remote_head = other.save().unwrap().hash;
    replicas.apply_head(&s.volume, &remote_head).unwrap();
    let mut contents: Vec<Vec<u8>> = fs::read_dir(s.mnt())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("both"))
        .map(|p| fs::read(p).unwrap())
        .collect();
    contents.sort();
    assert_eq!(
        contents,
        vec![b"local version".to_vec(), b"remote version".to_vec()]
    );
    m.stop_all();
}

/// A state dir on a small tmpfs of its own, filled up on demand.
struct Full {
    s: Setup,
    state_dir: PathBuf,
}

impl Full {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &state_dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=16m"),
        )
        .unwrap();
        let state = Arc::new(StateDir::open(&state_dir).unwrap());
        let kek = Arc::new(Kek::generate().unwrap());
        let id = BucketId::generate().unwrap();
        state
            .create_bucket(id, &kek, &BucketOptions::default())
            .unwrap();
        fs::create_dir(dir.path().join("mnt")).unwrap();
        Self {
            s: Setup {
                dir,
                state,
                kek,
                volume: id,
            },
            state_dir,
        }
    }

    /// Take every free byte of the state dir's file system.
    fn fill(&self) {
        let mut f = fs::File::create(self.state_dir.join("filler")).unwrap();
        use std::io::Write;
        // Down to the last byte: even a small journal append finds no room.
        for size in [1 << 16, 4096, 512, 1] {
            let block = vec![0u8; size];
            while f.write_all(&block).is_ok() {}
        }
        let _ = f.sync_all();
    }

    fn free(&self) {
        fs::remove_file(self.state_dir.join("filler")).unwrap();
    }
}

impl Drop for Full {
    fn drop(&mut self) {
        let _ = jax_csi::fuse::session::lazy_unmount(&self.s.mnt());
        let _ = nix::mount::umount2(&self.state_dir, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A disk that fills up: the writer gets ENOSPC (not EIO), a final commit
/// that cannot be written fails the stop and keeps the mount with its
/// changes, a failed background commit is retried, and once there is room
/// again every acknowledged byte is committed.
#[test]
fn a_full_disk_loses_nothing_and_says_so() {
    let f = Full::new();
    let s = &f.s;
    let m = s.manager();
    m.create_mount(&s.volume, &s.mnt(), MountOptions::default())
        .unwrap();
    m.start(&s.volume).unwrap();
    fs::write(s.mnt().join("committed.txt"), b"safe").unwrap();
    fs::File::open(s.mnt().join("committed.txt"))
        .unwrap()
        .sync_all()
        .unwrap();
    f.fill();
    // Less than a chunk: it stays in memory, so the write itself succeeds...
    fs::write(
        s.mnt().join("pending.txt"),
        b"written while the disk was full",
    )
    .unwrap();
    // ...and fsync is a journal append: it fits in the journal file's last
    // block (durable, then) or has nowhere to go: ENOSPC, never EIO.
    let synced = fs::File::open(s.mnt().join("pending.txt"))
        .unwrap()
        .sync_all();
    if let Err(err) = synced {
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
    // A long writer meets it once its chunks in flight come back unsealed.
    let big = vec![1u8; 12 << 20];
    let err = fs::write(s.mnt().join("big.bin"), &big).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    fs::remove_file(s.mnt().join("big.bin")).unwrap();
    // The final commit fails: the stop fails, the mount stays.
    match m.stop(&s.volume) {
        Err(MountError::CommitFailed { source, .. }) => {
            assert!(
                matches!(source, jax_csi::bucket::BucketError::NoSpace(_)),
                "{source}"
            )
        }
        other => panic!("expected CommitFailed, got {other:?}"),
    }
    assert!(m.get_live_mount(&s.volume).is_some());
    assert_eq!(
        fs::read(s.mnt().join("pending.txt")).unwrap(),
        b"written while the disk was full"
    );
    assert_eq!(fs::read(s.mnt().join("committed.txt")).unwrap(), b"safe");
    let live = m.get_live_mount(&s.volume).unwrap();
    assert!(live.has_pending_changes());
    // Room again: the committer retries on its own, without a new write.
    f.free();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while live.has_pending_changes() {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed commit was never retried"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    m.stop(&s.volume).unwrap();
    let bucket = s.state.open_bucket(&s.volume, &s.kek).unwrap();
    let mut head = bucket.mount().unwrap();
    assert_eq!(
        path::read_file(&mut head, "/pending.txt").unwrap(),
        b"written while the disk was full"
    );
    assert_eq!(
        path::read_file(&mut head, "/committed.txt").unwrap(),
        b"safe"
    );
    bucket.verify().unwrap();
}

/// Below the kubelet dir every mount goes through a descriptor opened
/// without following links (`fuse::safe_path`): the FUSE staging mount and
/// a read-only bind land at their paths (mountinfo), unmount cleanly, and a
/// target through a symlink is refused with nothing mounted outside.
#[test]
fn mounts_below_the_kubelet_dir_go_through_descriptors() {
    use jax_csi::fuse::safe_path::SafePathError;
    use jax_csi::fuse::session::{is_mount_point, mount_source, source_of};
    use jax_csi::fuse::Target;
    let s = setup();
    let kubelet = s.dir.path().join("kubelet");
    fs::create_dir(&kubelet).unwrap();
    let m = s.manager().with_kubelet_dir(Some(kubelet.clone()));
    let staging = kubelet.join("plugins/staging/vol");
    m.make_mount_point(&staging).unwrap();
    m.create_mount(&s.volume, &staging, MountOptions::default())
        .unwrap();
    m.start(&s.volume).unwrap();
    assert_eq!(mount_source(&staging), Some(source_of(&s.volume)));
    fs::write(staging.join("hello"), b"through the descriptor").unwrap();

    let target = kubelet.join("pods/p/volumes/vol");
    let t = Target {
        path: target.clone(),
        read_only: true,
        pod: None,
    };
    m.add_target(&s.volume, t).unwrap();
    assert_eq!(mount_source(&target), Some(source_of(&s.volume)));
    assert_eq!(
        fs::read(target.join("hello")).unwrap(),
        b"through the descriptor"
    );
    let e = fs::write(target.join("nope"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "the bind is read-only");

    // A pod dir swapped for a link out of the kubelet dir is refused.
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), kubelet.join("pods/evil")).unwrap();
    let evil = Target {
        path: kubelet.join("pods/evil/vol"),
        read_only: false,
        pod: None,
    };
    let e = m.add_target(&s.volume, evil).unwrap_err();
    assert!(
        matches!(e, MountError::UnsafePath(SafePathError::Symlink(_))),
        "{e}"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(&*outside.path().to_string_lossy()));
    // And a mount point outside the kubelet dir is not one.
    assert!(matches!(
        m.create_mount(&s.volume, &s.mnt(), MountOptions::default()),
        Err(MountError::UnsafePath(SafePathError::Outside { .. }))
    ));

    assert!(m.remove_target(&s.volume, &target).unwrap());
    assert!(!is_mount_point(&target));
    m.stop(&s.volume).unwrap();
    assert!(!is_mount_point(&staging));
}
