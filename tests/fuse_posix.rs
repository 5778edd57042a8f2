//! A POSIX conformance suite over a real FUSE mount of a bucket, driven with
//! ordinary file syscalls (and, for permissions, a child process running as
//! an unprivileged user), plus a random-operation comparison with a plain
//! directory on the local file system.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jax_csi::bucket::{BucketOptions, StateDir};
use jax_csi::fuse::{self, FsOptions, FuseSession, LiveMount, SessionOptions};

/// A bucket mounted with FUSE in a temp dir.
struct Mounted {
    _dir: tempfile::TempDir,
    state_path: PathBuf,
    mnt: PathBuf,
    live: LiveMount,
    session: Option<FuseSession>,
    fixture: common::Fixture,
}

fn options(read_only: bool) -> SessionOptions {
    SessionOptions {
        fs_name: "jax:test".into(),
        read_only,
        fs: FsOptions::default(),
    }
}

fn mount_bucket(opts: BucketOptions) -> Mounted {
    let fixture = common::fixture(opts);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let live = LiveMount::new(fixture.bucket.mount().unwrap(), Duration::from_millis(200));
    let session = fuse::mount(live.clone(), &mnt, &options(false)).unwrap();
    Mounted {
        _dir: dir,
        state_path: fixture.state.root().to_path_buf(),
        mnt,
        live,
        session: Some(session),
        fixture,
    }
}

impl Mounted {
    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The bucket, opened afresh from its state directory.
    fn bucket_from_disk(&self) -> jax_csi::bucket::Bucket {
        StateDir::open(&self.state_path)
            .unwrap()
            .open_bucket(&self.fixture.bucket.id(), &self.fixture.kek)
            .unwrap()
    }

    /// The bucket's committed head, opened from disk in a fresh Mount.
    fn head_mount(&self) -> jax_csi::bucket::Mount {
        self.bucket_from_disk().mount().unwrap()
    }

    /// Unmount, then mount the bucket's head again in a fresh Mount.
    fn remount(&mut self, read_only: bool) {
        self.session.take().unwrap().unmount().unwrap();
        self.live.shutdown().unwrap();
        let b = self.bucket_from_disk();
        let m = if read_only {
            b.open_version(&b.head().unwrap()).unwrap()
        } else {
            b.mount().unwrap()
        };
        self.live = LiveMount::new(m, Duration::from_millis(200));
        self.session =
            Some(fuse::mount(self.live.clone(), &self.mnt, &options(read_only)).unwrap());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.unmount().unwrap();
        }
        let _ = self.live.shutdown();
    }
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    common::pattern(len, seed)
}

#[test]
fn files_survive_rename_truncate_fsync_and_remount() {
    let mut t = mount_bucket(BucketOptions::default());
    let big = pattern(3 << 20 | 12345, 3);
    {
        let mut f = File::create(t.p("big.bin")).unwrap();
        f.write_all(&big).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(fs::read(t.p("big.bin")).unwrap(), big);
    fs::create_dir_all(t.p("a/b/c")).unwrap();
    fs::write(t.p("a/b/c/note.txt"), b"hello fuse").unwrap();
    fs::rename(t.p("a/b/c/note.txt"), t.p("a/note.txt")).unwrap();
    assert_eq!(errno(fs::metadata(t.p("a/b/c/note.txt"))), libc::ENOENT);
    // Truncate down and up: the tail reads as zeros.
    let f = OpenOptions::new().write(true).open(t.p("big.bin")).unwrap();
    f.set_len(1000).unwrap();
    f.set_len(5000).unwrap();
    drop(f);
    let got = fs::read(t.p("big.bin")).unwrap();
    assert_eq!(&got[..1000], &big[..1000]);
    assert!(got[1000..].iter().all(|b| *b == 0));
    // Overwrite in the middle, append, seek and read back.
    {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(t.p("big.bin"))
            .unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        f.write_all(b"MIDDLE").unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"END").unwrap();
        f.sync_data().unwrap();
        let mut buf = [0u8; 6];
        f.seek(SeekFrom::Start(10)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"MIDDLE");
    }
    assert_eq!(fs::metadata(t.p("big.bin")).unwrap().len(), 5003);
    std::os::unix::fs::symlink("a/note.txt", t.p("link")).unwrap();
    t.remount(false);
    assert_eq!(fs::read(t.p("a/note.txt")).unwrap(), b"hello fuse");
    assert_eq!(fs::read(t.p("link")).unwrap(), b"hello fuse");
    assert_eq!(fs::read_link(t.p("link")).unwrap(), Path::new("a/note.txt"));
    let got = fs::read(t.p("big.bin")).unwrap();
    assert_eq!(got.len(), 5003);
    assert_eq!(&got[10..16], b"MIDDLE");
    assert_eq!(&got[5000..], b"END");
    let mut names: Vec<_> = fs::read_dir(t.p(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "big.bin", "link"]);
}

#[test]
fn errno_semantics() {
    let t = mount_bucket(BucketOptions::default());
    fs::write(t.p("file"), b"x").unwrap();
    fs::create_dir(t.p("dir")).unwrap();
    fs::write(t.p("dir/inner"), b"y").unwrap();
    assert_eq!(errno(fs::read(t.p("missing"))), libc::ENOENT);
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(t.p("file"))
        ),
        libc::EEXIST
    );
    assert_eq!(errno(fs::create_dir(t.p("dir"))), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(t.p("dir"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_dir(t.p("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(t.p("dir"))), libc::EISDIR);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(t.p("dir"))),
        libc::EISDIR
    );
    assert_eq!(errno(fs::write(t.p("file/sub"), b"z")), libc::ENOTDIR);
    let long = "n".repeat(256);
    assert_eq!(errno(fs::write(t.p(&long), b"z")), libc::ENAMETOOLONG);
    fs::write(t.p(&"n".repeat(255)), b"ok").unwrap();
    assert_eq!(errno(fs::hard_link(t.p("dir"), t.p("hard"))), libc::EPERM);
    assert_eq!(errno(fs::hard_link(t.p("file"), t.p("dir"))), libc::EEXIST);
    // rename(2) of a directory over a non-empty directory, and into itself.
    fs::create_dir(t.p("other")).unwrap();
    fs::write(t.p("other/f"), b"").unwrap();
    assert_eq!(errno(fs::rename(t.p("dir"), t.p("other"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::rename(t.p("dir"), t.p("dir/sub"))), libc::EINVAL);
    // renameat2 flags.
    assert_eq!(
        renameat2(&t.p("file"), &t.p("dir/inner"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    renameat2(&t.p("file"), &t.p("dir/inner"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(t.p("file")).unwrap(), b"y");
    assert_eq!(fs::read(t.p("dir/inner")).unwrap(), b"x");
    // Opens carry no FUSE message (ENOSYS turns on zero-message opens), so
    // O_TRUNC must still reach the file as a size change.
    fs::write(t.p("file"), b"a longer first content").unwrap();
    fs::write(t.p("file"), b"short").unwrap();
    assert_eq!(fs::read(t.p("file")).unwrap(), b"short");
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), i32> {
    let a = CString::new(from.as_os_str().as_bytes()).unwrap();
    let b = CString::new(to.as_os_str().as_bytes()).unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn attributes_xattrs_and_statfs() {
    let t = mount_bucket(BucketOptions {
        quota: Some(64 << 20),
        ..Default::default()
    });
    fs::write(t.p("f"), b"data").unwrap();
    fs::set_permissions(t.p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(t.p("f")).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(t.p("f"), Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(t.p("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    File::options()
        .write(true)
        .open(t.p("f"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(when).set_accessed(when))
        .unwrap();
    let md = fs::metadata(t.p("f")).unwrap();
    assert_eq!(md.mtime(), 1_600_000_000);
    assert_eq!(md.atime(), 1_600_000_000);

    // Extended attributes.
    let path = CString::new(t.p("f").as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.color").unwrap();
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            b"blue".as_ptr().cast(),
            4,
            libc::XATTR_CREATE,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            b"red".as_ptr().cast(),
            3,
            libc::XATTR_CREATE,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    let mut buf = [0u8; 64];
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert_eq!(&buf[..n as usize], b"blue");
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 2) };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert_eq!(&buf[..n as usize], b"user.color\0");
    let missing = CString::new("user.none").unwrap();
    let n = unsafe { libc::getxattr(path.as_ptr(), missing.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );
    assert_eq!(
        unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) },
        0
    );

    // statfs: the quota is the size, free = quota - used.
    fs::write(t.p("eight"), vec![1u8; 8 << 20]).unwrap();
    let st = nix::sys::statvfs::statvfs(&t.mnt).unwrap();
    let total = st.blocks() * st.fragment_size();
    let free = st.blocks_available() * st.fragment_size();
    assert_eq!(total, 64 << 20);
    assert_eq!(free, (64 << 20) - (8 << 20) - 4096);
    // Past the quota: ENOSPC, and the file system keeps working.
    let mut f = File::create(t.p("huge")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut err = None;
    for _ in 0..80 {
        if let Err(e) = f.write_all(&chunk) {
            err = Some(e);
            break;
        }
    }
    let err = err
        .or_else(|| f.sync_all().err())
        .expect("writes past the quota must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    drop(f);
    fs::remove_file(t.p("huge")).unwrap();
    fs::write(t.p("after"), b"still works").unwrap();
}

/// Run `sh -c script` as uid/gid 4242 in `dir`; returns (success, stderr).
fn as_user(dir: &Path, script: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .uid(4242)
        .gid(4242)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn permissions_follow_mode_bits_and_set_group_id_directories() {
    let t = mount_bucket(BucketOptions::default());
    fs::set_permissions(t.p(""), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(t.p("private"), b"secret").unwrap();
    fs::set_permissions(t.p("private"), fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = as_user(&t.mnt, "cat private");
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = as_user(&t.mnt, "echo hi > new");
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = as_user(&t.mnt, "chmod 777 private");
    assert!(!ok && err.contains("Operation not permitted"), "{err}");

    // An fsGroup-style directory: group 4242, setgid, group-writable.
    fs::create_dir(t.p("shared")).unwrap();
    std::os::unix::fs::chown(t.p("shared"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(t.p("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    let (ok, err) = as_user(
        &t.mnt,
        "mkdir shared/sub && echo hi > shared/sub/f && cat shared/sub/f",
    );
    assert!(ok, "{err}");
    let md = fs::metadata(t.p("shared/sub")).unwrap();
    assert_eq!(md.gid(), 4242);
    assert_eq!(
        md.mode() & 0o2000,
        0o2000,
        "setgid propagates to new directories"
    );
    assert_eq!(fs::metadata(t.p("shared/sub/f")).unwrap().uid(), 4242);
    // Root creating in the setgid dir still gets the directory's group.
    fs::write(t.p("shared/by-root"), b"").unwrap();
    assert_eq!(fs::metadata(t.p("shared/by-root")).unwrap().gid(), 4242);

    // Supplementary groups count: group 5151 may read a 0640 file and
    // write in a 0770 directory of that group; the same user without the
    // group may not.
    fs::write(t.p("team-file"), b"for the team").unwrap();
    std::os::unix::fs::chown(t.p("team-file"), Some(0), Some(5151)).unwrap();
    fs::set_permissions(t.p("team-file"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(t.p("team")).unwrap();
    std::os::unix::fs::chown(t.p("team"), Some(0), Some(5151)).unwrap();
    fs::set_permissions(t.p("team"), fs::Permissions::from_mode(0o770)).unwrap();
    let script = "cat team-file && echo hi > team/new";
    let (ok, err) = as_user_with_groups(&t.mnt, script, "5151");
    assert!(ok, "a member of group 5151 by a supplementary group: {err}");
    assert_eq!(fs::read(t.p("team/new")).unwrap(), b"hi\n");
    let (ok, err) = as_user_with_groups(&t.mnt, "cat team-file", "6161");
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = as_user_with_groups(&t.mnt, "ls team", "6161");
    assert!(!ok && err.contains("Permission denied"), "{err}");
}

/// Run `sh -c script` as uid/gid 4343 with supplementary `groups` (comma
/// separated) in `dir`; returns (success, stderr).
fn as_user_with_groups(dir: &Path, script: &str, groups: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=4343",
            "--regid=4343",
            &format!("--groups={groups}"),
            "sh",
            "-c",
        ])
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn read_only_mount_gives_erofs() {
    let mut t = mount_bucket(BucketOptions::default());
    fs::write(t.p("f"), b"kept").unwrap();
    t.remount(true);
    assert_eq!(fs::read(t.p("f")).unwrap(), b"kept");
    assert_eq!(errno(fs::write(t.p("f"), b"no")), libc::EROFS);
    assert_eq!(errno(fs::create_dir(t.p("d"))), libc::EROFS);
    assert_eq!(errno(fs::remove_file(t.p("f"))), libc::EROFS);
}

#[test]
fn a_tampered_chunk_reads_as_eio_never_wrong_bytes() {
    let mut t = mount_bucket(BucketOptions::default());
    let big = pattern(3 << 20, 9);
    fs::write(t.p("big"), &big).unwrap();
    fs::write(t.p("small"), b"fine").unwrap();
    File::open(t.p("big")).unwrap().sync_all().unwrap();
    // Chunk blobs are the only ones of a MiB or more.
    let store = t.fixture.state.store().clone();
    let mut flipped = 0;
    for h in store.list().unwrap() {
        let p = store.path_of(&h);
        let mut bytes = fs::read(&p).unwrap();
        if bytes.len() >= 1 << 20 {
            bytes[100] ^= 1;
            fs::write(&p, &bytes).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 3);
    t.remount(false);
    let err = fs::read(t.p("big")).expect_err("a tampered chunk must not read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(fs::read(t.p("small")).unwrap(), b"fine");
}

#[test]
fn debounced_commit_writes_a_version_without_fsync() {
    let t = mount_bucket(BucketOptions::default());
    let before = t.fixture.bucket.head().unwrap();
    fs::write(t.p("lazy"), b"committed later").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.fixture.bucket.head().unwrap() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no commit within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut m = t.head_mount();
    assert_eq!(
        jax_csi::bucket::path::read_file(&mut m, "/lazy").unwrap(),
        b"committed later"
    );
}

/// Deterministic xorshift for the random-operation test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The type letter of what is at `p` (`ls -l` style), if anything.
fn kind_at(p: &Path) -> Option<char> {
    use std::os::unix::fs::FileTypeExt;
    let ft = fs::symlink_metadata(p).ok()?.file_type();
    Some(if ft.is_dir() {
        'd'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_symlink() {
        'l'
    } else {
        '-'
    })
}

/// Open `p` without blocking on a FIFO (a writer with no reader gets ENXIO,
/// a reader sees end of file), as both sides of the comparison must.
fn open_nonblocking(p: &Path, write: bool, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .create(create)
        .truncate(create)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
}

/// Apply one random operation under `root`; returns a comparable outcome.
/// Device nodes are never opened (our mount is nodev, the reference may
/// not be): an open-based operation on one reports only that it is one.
fn random_op(root: &Path, op: u64, a: &str, b: &str, n: u64) -> String {
    let pa = root.join(a);
    let pb = root.join(b);
    let outcome = |r: std::io::Result<String>| match r {
        Ok(s) => format!("ok {s}"),
        Err(e) => match e.raw_os_error() {
            Some(code) => format!("errno {code}"),
            None => format!("error {:?}", e.kind()),
        },
    };
    if matches!(op, 0 | 1 | 6 | 7) && matches!(kind_at(&pa), Some('c' | 'b')) {
        return "device".into();
    }
    outcome(match op {
        0 => open_nonblocking(&pa, true, true)
            .and_then(|mut f| f.write_all(&pattern(n as usize, n as u8)))
            .map(|_| String::new()),
        1 => open_nonblocking(&pa, false, false)
            .and_then(|mut f| {
                let mut d = Vec::new();
                f.read_to_end(&mut d)?;
                Ok(d)
            })
            .map(|d| format!("{} {:x}", d.len(), d.iter().map(|b| *b as u64).sum::<u64>())),
        2 => fs::create_dir(&pa).map(|_| String::new()),
        3 => fs::remove_file(&pa).map(|_| String::new()),
        4 => fs::remove_dir(&pa).map(|_| String::new()),
        5 => fs::rename(&pa, &pb).map(|_| String::new()),
        6 => open_nonblocking(&pa, true, false)
            .and_then(|f| f.set_len(n))
            .map(|_| String::new()),
        7 => open_nonblocking(&pa, true, false)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(n))?;
                f.write_all(b"patch")
            })
            .map(|_| String::new()),
        8 => fs::symlink_metadata(&pa).map(|m| {
            let kind = kind_at(&pa).unwrap_or('?');
            let len = if kind == '-' { m.len() } else { 0 };
            let nlink = if kind == 'd' { 0 } else { m.nlink() };
            format!("{kind} {len} {:o} {} {nlink}", m.mode() & 0o7777, m.rdev())
        }),
        13 => fs::hard_link(&pa, &pb).map(|_| String::new()),
        10 => mknod(&pa, libc::S_IFIFO | 0o640, 0)
            .map(|_| String::new())
            .map_err(std::io::Error::from_raw_os_error),
        11 => std::os::unix::net::UnixListener::bind(&pa).map(|_| String::new()),
        12 => mknod(&pa, libc::S_IFCHR | 0o600, libc::makedev(240, n as u32 % 4))
            .map(|_| String::new())
            .map_err(std::io::Error::from_raw_os_error),
        _ => fs::read_dir(&pa).map(|d| {
            let mut v: Vec<_> = d
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v.join(",")
        }),
    })
}

/// Every path under `root` with its content (files), or its kind, mode
/// and device number (special files); directories as `None`.
fn tree_of(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            match kind_at(&e.path()) {
                Some('d') => {
                    out.push((rel, None));
                    stack.push(e.path());
                }
                Some('-') => out.push((rel, Some(fs::read(e.path()).unwrap()))),
                kind => {
                    let m = fs::symlink_metadata(e.path()).unwrap();
                    let desc = format!("{kind:?} {:o} {}", m.mode() & 0o7777, m.rdev());
                    out.push((rel, Some(desc.into_bytes())));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn random_operations_match_a_plain_directory() {
    let mut t = mount_bucket(BucketOptions {
        chunk_size: 4096,
        ..Default::default()
    });
    // The reference is a directory on tmpfs when there is one.
    let shm = Path::new("/dev/shm");
    let reference = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let names = [
        "a", "b", "d1", "d1/a", "d1/b", "d2", "d2/x", "d1/d3", "d1/d3/y",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut succeeded = std::collections::BTreeSet::new();
    for step in 0..600 {
        let op = rng.below(14);
        let a = names[rng.below(names.len() as u64) as usize];
        let b = names[rng.below(names.len() as u64) as usize];
        let n = rng.below(12_000);
        let ours = random_op(&t.mnt, op, a, b, n);
        let theirs = random_op(reference.path(), op, a, b, n);
        assert_eq!(ours, theirs, "step {step}: op {op} {a} {b} {n}");
        if ours.starts_with("ok") {
            succeeded.insert(op);
        }
        if step % 150 == 149 {
            t.remount(false);
        }
    }
    assert_eq!(tree_of(&t.mnt), tree_of(reference.path()));
    assert_eq!(
        succeeded.len(),
        14,
        "every kind of operation succeeded at least once: {succeeded:?}"
    );
}

/// The integrity workload of `bench fuse` (`fsx`): random reads, writes,
/// truncates, and reads and writes through shared mappings with
/// `msync(MS_SYNC)`, every byte compared with a model. Run by the binary in
/// a child process (a process that maps a file of a mount it serves can
/// deadlock on its own address space); small chunks put many chunk edges
/// under the 4 MiB file.
#[test]
fn the_integrity_workload_reads_back_every_byte_written() {
    let t = mount_bucket(BucketOptions {
        chunk_size: 16 << 10,
        ..Default::default()
    });
    for seed in [1u64, 0xfeed] {
        let out = Command::new(env!("CARGO_BIN_EXE_jax-csi"))
            .args([
                "bench",
                "fsx-ops",
                "--ops",
                "1500",
                "--seed",
                &seed.to_string(),
            ])
            .arg("--path")
            .arg(t.p("fsx.bin"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "seed {seed}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_directory_read_while_its_entries_are_removed_loses_none() {
    // rm -r reads a directory in batches while unlinking from it: offsets
    // must stay stable, or entries are skipped and rmdir fails ENOTEMPTY.
    let t = mount_bucket(BucketOptions::default());
    fs::create_dir_all(t.p("tree/sub")).unwrap();
    for i in 0..600 {
        fs::write(t.p(&format!("tree/file-with-a-long-name-{i:04}")), b"x").unwrap();
        fs::write(t.p(&format!("tree/sub/{i}")), b"y").unwrap();
    }
    assert_eq!(fs::read_dir(t.p("tree")).unwrap().count(), 601);
    fs::remove_dir_all(t.p("tree")).unwrap();
    assert_eq!(errno(fs::metadata(t.p("tree"))), libc::ENOENT);
}

/// POSIX: a file unlinked while open stays readable and writable through its
/// descriptor (the kernel's references pin it), reports no links, and is in
/// no later version; a new file under its name is a different file.
/// Log lines written while a test runs (every test of this binary).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every Python `open()` asks the file whether it is a terminal (TCGETS):
/// the answer is ENOTTY, as from a local file system, and no warning
/// (fuser's default logs one for each, thousands a minute).
#[test]
fn an_ioctl_gets_enotty_without_a_warning() {
    let logs = Captured::default();
    let writer = logs.clone();
    // Warnings of fuser (the `log` crate) and ours, as the node logs them.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .try_init();
    let t = mount_bucket(BucketOptions::default());
    fs::write(t.p("f"), b"x").unwrap();
    fs::create_dir(t.p("d")).unwrap();
    for p in [t.p("f"), t.p("d")] {
        let f = File::open(&p).unwrap();
        for _ in 0..3 {
            let mut tio: libc::termios = unsafe { std::mem::zeroed() };
            let r =
                unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::TCGETS, &mut tio) };
            assert_eq!(r, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOTTY),
                "{}",
                p.display()
            );
        }
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        !logged.lines().any(|l| l.contains("ioctl")),
        "an ioctl was logged:\n{logged}"
    );
}

#[test]
fn an_open_file_survives_unlink_until_closed() {
    let t = mount_bucket(BucketOptions::default());
    let data = pattern(300_000, 9);
    fs::write(t.p("tmp.bin"), &data).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.p("tmp.bin"))
        .unwrap();
    fs::remove_file(t.p("tmp.bin")).unwrap();
    assert_eq!(errno(fs::metadata(t.p("tmp.bin"))), libc::ENOENT);
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // Drop the cached pages so the reads below reach the file system.
    let drop_pages = |f: &File| {
        use std::os::fd::AsRawFd;
        assert_eq!(
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) },
            0
        );
    };
    drop_pages(&f);
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    f.write_all(b"more").unwrap();
    f.sync_all().unwrap();
    drop_pages(&f);
    f.seek(SeekFrom::Start(299_998)).unwrap();
    let mut tail = [0u8; 6];
    f.read_exact(&mut tail).unwrap();
    assert_eq!(tail, [data[299_998], data[299_999], b'm', b'o', b'r', b'e']);
    assert_eq!(f.metadata().unwrap().len(), 300_004);
    fs::write(t.p("tmp.bin"), b"new").unwrap();
    assert_eq!(fs::read(t.p("tmp.bin")).unwrap(), b"new");
    drop(f);
    t.live.commit_now().unwrap();
    let mut m = t.head_mount();
    assert_eq!(
        jax_csi::bucket::path::read_file(&mut m, "/tmp.bin").unwrap(),
        b"new"
    );
    let names: Vec<String> = jax_csi::bucket::path::walk(&mut m)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(names, ["/tmp.bin"]);
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// mknod(2) at `p`; the errno on failure.
fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) -> Result<(), i32> {
    let c = cstr(p);
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// FIFOs pipe through the kernel, unix sockets bind and connect on a path
/// in the volume, device nodes keep their numbers, and all of them persist
/// as what they are across a remount.
#[test]
fn fifos_sockets_and_device_nodes() {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    let mut t = mount_bucket(BucketOptions::default());
    fs::set_permissions(t.p(""), fs::Permissions::from_mode(0o777)).unwrap();

    // A FIFO: a writer thread and a reader meet in the kernel's pipe.
    mknod(&t.p("pipe"), libc::S_IFIFO | 0o644, 0).unwrap();
    let path = t.p("pipe");
    let writer = std::thread::spawn(move || {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all(b"through the pipe").unwrap();
    });
    let mut got = String::new();
    File::open(t.p("pipe"))
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    writer.join().unwrap();
    assert_eq!(got, "through the pipe");
    // Non-blocking opens behave as on any FIFO: a writer with no reader
    // gets ENXIO.
    let nonblock_write = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(t.p("pipe"));
    assert_eq!(errno(nonblock_write), libc::ENXIO);
    // truncate(2) of anything but a regular file is EINVAL.
    let c = cstr(&t.p("pipe"));
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 0) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EINVAL)
    );

    // A unix socket bound in the volume, as a server sharing it with a sidecar.
    let listener = UnixListener::bind(t.p("server.sock")).unwrap();
    let sock_path = t.p("server.sock");
    let client = std::thread::spawn(move || {
        let mut s = UnixStream::connect(sock_path).unwrap();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        back
    });
    let (mut conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    conn.write_all(b"pong").unwrap();
    assert_eq!(&client.join().unwrap(), b"pong");
    drop(listener);
    assert_eq!(errno(File::open(t.p("server.sock"))), libc::ENXIO);

    // Device nodes: root may make them (metadata only); the mount is
    // nodev, so opening one is refused and never reaches a device.
    let dev = libc::makedev(240, 7);
    mknod(&t.p("chr"), libc::S_IFCHR | 0o600, dev).unwrap();
    mknod(&t.p("blk"), libc::S_IFBLK | 0o600, libc::makedev(241, 3)).unwrap();
    assert_eq!(errno(File::open(t.p("chr"))), libc::EACCES);
    // An unprivileged user makes FIFOs and sockets but no devices.
    let (ok, err) = as_user(&t.mnt, "mkfifo user-pipe");
    assert!(ok, "{err}");
    let (ok, err) = as_user(&t.mnt, "mknod user-chr c 240 8");
    assert!(!ok && err.contains("Operation not permitted"), "{err}");
    // chmod, chown and rename work on every kind.
    fs::set_permissions(t.p("pipe"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(t.p("chr"), Some(7), Some(8)).unwrap();
    fs::rename(t.p("blk"), t.p("blk2")).unwrap();

    let check = |t: &Mounted| {
        let md = fs::symlink_metadata(t.p("pipe")).unwrap();
        assert!(md.file_type().is_fifo());
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert!(fs::symlink_metadata(t.p("server.sock"))
            .unwrap()
            .file_type()
            .is_socket());
        let chr = fs::symlink_metadata(t.p("chr")).unwrap();
        assert!(chr.file_type().is_char_device());
        assert_eq!((chr.rdev(), chr.uid(), chr.gid()), (dev, 7, 8));
        let blk = fs::symlink_metadata(t.p("blk2")).unwrap();
        assert!(blk.file_type().is_block_device());
        assert_eq!(blk.rdev(), libc::makedev(241, 3));
        assert_eq!(fs::symlink_metadata(t.p("user-pipe")).unwrap().uid(), 4242);
        let mut kinds: Vec<String> = fs::read_dir(t.p(""))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                let k = if ft.is_fifo() {
                    "p"
                } else if ft.is_socket() {
                    "s"
                } else if ft.is_char_device() {
                    "c"
                } else if ft.is_block_device() {
                    "b"
                } else {
                    "?"
                };
                format!("{k}{}", e.file_name().to_string_lossy())
            })
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            ["bblk2", "cchr", "ppipe", "puser-pipe", "sserver.sock"]
        );
    };
    check(&t);
    t.remount(false);
    check(&t);
    // Unlinking removes the node; the pipe's name can be reused by a file.
    fs::remove_file(t.p("pipe")).unwrap();
    fs::write(t.p("pipe"), b"now a file").unwrap();
    assert_eq!(fs::read(t.p("pipe")).unwrap(), b"now a file");
}

/// Hard links: `ln` gives a file a second name; both show one inode with
/// nlink 2, a write through one reads through the other, removing one name
/// leaves the other, and all of it persists across a remount.
#[test]
fn hard_links() {
    let mut t = mount_bucket(BucketOptions::default());
    fs::set_permissions(t.p(""), fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(t.p("d")).unwrap();
    fs::write(t.p("orig"), b"first").unwrap();
    fs::hard_link(t.p("orig"), t.p("d/second")).unwrap();
    let (a, b) = (
        fs::metadata(t.p("orig")).unwrap(),
        fs::metadata(t.p("d/second")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    OpenOptions::new()
        .append(true)
        .open(t.p("d/second"))
        .unwrap()
        .write_all(b" and more")
        .unwrap();
    assert_eq!(fs::read(t.p("orig")).unwrap(), b"first and more");
    fs::set_permissions(t.p("orig"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(t.p("d/second")).unwrap().mode() & 0o777, 0o640);
    // A third name made by an unprivileged user of their own file.
    let (ok, err) = as_user(&t.mnt, "echo mine > own && ln own own2 && stat -c %h own2");
    assert!(ok, "{err}");
    assert_eq!(fs::metadata(t.p("own")).unwrap().nlink(), 2);
    fs::hard_link(t.p("orig"), t.p("third")).unwrap();
    fs::remove_file(t.p("orig")).unwrap();
    assert_eq!(fs::metadata(t.p("third")).unwrap().nlink(), 2);
    // Renaming over another file replaces it; renaming one name over
    // another of the same file does nothing (rename(2)).
    fs::write(t.p("victim"), b"gone").unwrap();
    fs::rename(t.p("third"), t.p("victim")).unwrap();
    fs::rename(t.p("victim"), t.p("d/second")).unwrap();
    assert!(t.p("victim").exists(), "same-file rename keeps both names");
    File::open(t.p("victim")).unwrap().sync_all().unwrap();
    t.remount(false);
    let (a, b) = (
        fs::metadata(t.p("d/second")).unwrap(),
        fs::metadata(t.p("victim")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink(), b.nlink()), (b.ino(), 2, 2));
    assert_eq!(fs::read(t.p("victim")).unwrap(), b"first and more");
    assert_eq!(a.mode() & 0o777, 0o640);
    // The last name goes: the file is gone.
    fs::remove_file(t.p("victim")).unwrap();
    assert_eq!(fs::metadata(t.p("d/second")).unwrap().nlink(), 1);
    fs::remove_file(t.p("d/second")).unwrap();
    fs::remove_dir(t.p("d")).unwrap();
    t.fixture.bucket.verify().unwrap();
}

/// utimensat(2) at `p` with the two timespecs given.
fn utimens(p: &Path, atime: libc::timespec, mtime: libc::timespec) -> Result<(), i32> {
    let c = cstr(p);
    let times = [atime, mtime];
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

/// The rules around the data path: times to the nanosecond with
/// UTIME_NOW/UTIME_OMIT, set-id bits cleared by chown and by another
/// user's write, the sticky directory, open flags, renames between kinds,
/// and EFBIG (not ENOSPC) for an enormous length.
#[test]
fn times_set_id_bits_sticky_directories_and_open_flags() {
    let t = mount_bucket(BucketOptions {
        quota: Some(16 << 20),
        ..Default::default()
    });
    fs::set_permissions(t.p(""), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(t.p("f"), b"data").unwrap();

    // Nanosecond times; UTIME_OMIT leaves one alone, UTIME_NOW sets now.
    utimens(
        &t.p("f"),
        ts(1_000_000_000, 123_456_789),
        ts(1_500_000_000, 987_654_321),
    )
    .unwrap();
    let md = fs::metadata(t.p("f")).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 987_654_321));
    utimens(&t.p("f"), ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_NOW)).unwrap();
    let md = fs::metadata(t.p("f")).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (md.mtime() - now).abs() < 60,
        "UTIME_NOW set mtime {}",
        md.mtime()
    );
    // Another user may not set times they did not own...
    let (ok, err) = as_user(&t.mnt, "touch -d 2001-01-01 f");
    assert!(!ok && err.contains("cannot touch"), "{err}");
    assert_eq!(fs::metadata(t.p("f")).unwrap().atime(), 1_000_000_000);

    // chown clears set-user-id and set-group-id (group-executable) bits.
    fs::write(t.p("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(t.p("suid"), fs::Permissions::from_mode(0o6755)).unwrap();
    std::os::unix::fs::chown(t.p("suid"), Some(4242), None).unwrap();
    assert_eq!(fs::metadata(t.p("suid")).unwrap().mode() & 0o7777, 0o755);
    // A write by someone else clears set-user-id too.
    fs::write(t.p("shared-suid"), b"x").unwrap();
    fs::set_permissions(t.p("shared-suid"), fs::Permissions::from_mode(0o4777)).unwrap();
    let (ok, err) = as_user(&t.mnt, "echo more >> shared-suid");
    assert!(ok, "{err}");
    assert_eq!(
        fs::metadata(t.p("shared-suid")).unwrap().mode() & 0o7777,
        0o777
    );

    // A sticky directory: users remove only their own entries.
    fs::create_dir(t.p("tmp")).unwrap();
    fs::set_permissions(t.p("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(t.p("tmp/theirs"), b"").unwrap();
    std::os::unix::fs::chown(t.p("tmp/theirs"), Some(4343), Some(4343)).unwrap();
    let (ok, err) = as_user(&t.mnt, "rm -f tmp/theirs");
    assert!(!ok && err.contains("Operation not permitted"), "{err}");
    let (ok, err) = as_user(
        &t.mnt,
        "echo x > tmp/mine && mv tmp/mine tmp/mine2 && rm tmp/mine2",
    );
    assert!(ok, "{err}");
    assert!(t.p("tmp/theirs").exists());

    // Open flags.
    std::os::unix::fs::symlink("f", t.p("sym")).unwrap();
    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(t.p("f"));
    assert_eq!(errno(excl), libc::EEXIST);
    let nofollow = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(t.p("sym"));
    assert_eq!(errno(nofollow), libc::ELOOP);
    let directory = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(t.p("f"));
    assert_eq!(errno(directory), libc::ENOTDIR);
    assert!(OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(t.p("tmp"))
        .is_ok());

    // Renames between kinds: a non-directory over a directory is EISDIR,
    // the other way ENOTDIR; a FIFO, a symlink and a file replace each other.
    mknod(&t.p("fifo"), libc::S_IFIFO | 0o644, 0).unwrap();
    assert_eq!(errno(fs::rename(t.p("fifo"), t.p("tmp"))), libc::EISDIR);
    fs::create_dir(t.p("empty")).unwrap();
    assert_eq!(errno(fs::rename(t.p("empty"), t.p("fifo"))), libc::ENOTDIR);
    fs::rename(t.p("fifo"), t.p("sym")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(t.p("sym"))
        .unwrap()
        .file_type()
        .is_fifo());
    fs::rename(t.p("f"), t.p("sym")).unwrap();
    assert_eq!(fs::read(t.p("sym")).unwrap(), b"data");

    // An enormous length: EFBIG past the largest file; a sparse terabyte
    // is fine under a 16 MiB quota (holes cost nothing).
    let f = OpenOptions::new().write(true).open(t.p("sym")).unwrap();
    assert_eq!(
        f.set_len(1 << 60).unwrap_err().raw_os_error(),
        Some(libc::EFBIG)
    );
    f.set_len(1 << 40).unwrap();
    assert_eq!(fs::metadata(t.p("sym")).unwrap().len(), 1 << 40);
}
