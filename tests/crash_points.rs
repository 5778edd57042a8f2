//! A commit stopped at each of its steps (the process SIGKILLs itself at a
//! named crash point, see `src/crash_point.rs`) loses nothing acknowledged:
//! after the crash, every version that was saved before is there byte for
//! byte, the version chain and every blob verify, the interrupted version is
//! there whole or not at all (whole exactly when HEAD had moved), and the
//! bucket takes the next commit.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use jax_csi::crash_point::{ENV, JOURNAL_POINTS, POINTS, TAIL_POINTS};

const BIN: &str = env!("CARGO_BIN_EXE_jax-csi");

fn bucket(state: &Path, args: &[&str], stdin: &[u8], crash_at: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("bucket")
        .arg("--state-dir")
        .arg(state.join("node"))
        .arg("--kek-file")
        .arg(state.join("kek"))
        .args(args)
        .env_remove(ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(point) = crash_at {
        cmd.env(ENV, point);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A file of `len` bytes unlike any other (several chunks, a partial last one).
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// The process died at crash point `point` (it reached it).
fn assert_killed_at(out: &Output, point: &str) {
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the write never reached crash point {point}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After a crash at `point`, the next writable mount recovers the journal
/// and writes `/next`; the bucket verifies, and every file of `want` (and
/// `/next`) reads back as it was written.
fn recovered_holds(dir: &Path, id: &str, point: &str, want: &[(&str, &[u8])]) {
    let next = content(9, 70_000);
    ok(
        bucket(dir, &["put", id, "/next", "--journal"], &next, None),
        "put /next after the crash",
    );
    ok(
        bucket(dir, &["verify", id], b"", None),
        "verify after recovery",
    );
    for &(path, bytes) in want.iter().chain([("/next", next.as_slice())].iter()) {
        let got = bucket(dir, &["cat", id, path], b"", None);
        assert_eq!(ok(got, path), bytes, "{point}: {path} after recovery");
    }
}

/// A new bucket (64 KiB chunks) in a new state dir, with `/first` saved.
fn bucket_with_first(dir: &Path) -> (String, Vec<u8>) {
    jax_csi::crypto::Kek::generate()
        .unwrap()
        .write_file(&dir.join("kek"))
        .unwrap();
    let id = ok(
        bucket(dir, &["create", "--chunk-size", "65536"], b"", None),
        "create",
    );
    let id = String::from_utf8(id).unwrap().trim().to_string();
    let first = content(1, 200_000);
    ok(
        bucket(dir, &["put", &id, "/first"], &first, None),
        "put /first",
    );
    (id, first)
}

/// An fsync made durable by the journal, then the version after it, each
/// killed at every step: the fsynced bytes are always there once the
/// bucket is mounted again (the journal replayed, or the version named).
#[test]
fn a_journaled_write_killed_at_any_step_loses_nothing_acknowledged() {
    for point in JOURNAL_POINTS {
        let dir = tempfile::tempdir().unwrap();
        let (id, first) = bucket_with_first(dir.path());
        let second = content(2, 300_000);
        let out = bucket(
            dir.path(),
            &["put", &id, "/second", "--journal"],
            &second,
            Some(point),
        );
        assert_killed_at(&out, point);
        let want = [("/first", first.as_slice()), ("/second", &second)];
        recovered_holds(dir.path(), &id, point, &want);
    }
}

/// An fsync that comes while a version is being made durable (it does
/// not wait for it: the journal takes the change on the new version),
/// killed at every step of the append and of the version's retiring:
/// both fsynced files are there once the bucket is mounted again.
#[test]
fn an_fsync_during_a_commit_killed_at_any_step_loses_nothing_acknowledged() {
    for point in TAIL_POINTS {
        let dir = tempfile::tempdir().unwrap();
        let (id, first) = bucket_with_first(dir.path());
        let second = content(2, 300_000);
        let out = bucket(
            dir.path(),
            &["put", &id, "/second", "--journal"],
            &second,
            None,
        );
        ok(out, "put /second");
        let third = content(3, 200_000);
        let out = bucket(
            dir.path(),
            &[
                "put",
                &id,
                "/third",
                "--journal",
                "--fsync-during-commit",
                "/fourth",
            ],
            &third,
            Some(point),
        );
        assert_killed_at(&out, point);
        let want = [
            ("/first", first.as_slice()),
            ("/second", &second),
            ("/third", &third),
            ("/fourth", &third),
        ];
        recovered_holds(dir.path(), &id, point, &want);
    }
    // Not killed: the version is named, and the fsync after its cut is in
    // the journal on it, replayed at the next mount.
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = bucket_with_first(dir.path());
    let third = content(3, 200_000);
    ok(
        bucket(
            dir.path(),
            &[
                "put",
                &id,
                "/third",
                "--journal",
                "--fsync-during-commit",
                "/fourth",
            ],
            &third,
            None,
        ),
        "put with an fsync during the commit",
    );
    let fifth = content(5, 1000);
    ok(
        bucket(
            dir.path(),
            &["put", &id, "/fifth", "--journal"],
            &fifth,
            None,
        ),
        "put /fifth",
    );
    let got = bucket(dir.path(), &["cat", &id, "/fourth"], b"", None);
    assert_eq!(ok(got, "/fourth"), third);
}

#[test]
fn a_commit_killed_at_any_step_loses_nothing_acknowledged() {
    let mut covered = Vec::new();
    for point in POINTS {
        let dir = tempfile::tempdir().unwrap();
        let (id, first) = bucket_with_first(dir.path());
        let id = id.as_str();

        // The commit of /second dies at `point`.
        let second = content(2, 300_000);
        let out = bucket(dir.path(), &["put", id, "/second"], &second, Some(point));
        assert_killed_at(&out, point);

        ok(
            bucket(dir.path(), &["verify", id], b"", None),
            "verify after the crash",
        );
        let got = bucket(dir.path(), &["cat", id, "/first"], b"", None);
        assert_eq!(ok(got, "cat /first"), first, "{point}: /first changed");
        let after_head = POINTS.iter().position(|p| p == point)
            >= POINTS.iter().position(|p| *p == "head-moved");
        let got = bucket(dir.path(), &["cat", id, "/second"], b"", None);
        if after_head {
            assert_eq!(
                ok(got, "cat /second"),
                second,
                "{point}: HEAD moved, so /second is whole"
            );
        } else {
            assert!(
                !got.status.success(),
                "{point}: HEAD had not moved, yet /second is there"
            );
        }

        // The bucket goes on: the next commit works and verifies.
        let third = content(3, 70_000);
        ok(
            bucket(dir.path(), &["put", id, "/third"], &third, None),
            "put /third",
        );
        ok(
            bucket(dir.path(), &["verify", id], b"", None),
            "verify after the next commit",
        );
        let got = bucket(dir.path(), &["cat", id, "/third"], b"", None);
        assert_eq!(ok(got, "cat /third"), third);
        covered.push(*point);
    }
    println!(
        "crash points covered: {} ({})",
        covered.len(),
        covered.join(", ")
    );
}
