//! `jax-csi bench fuse --workloads` as a user runs it: the chosen workloads'
//! rows are printed and no others, and an unknown name is refused with the
//! list of known ones. Run on the plain directory target, so no mount is needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_jax-csi");

fn bench_fuse(workloads: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(BIN)
        .args(["bench", "fuse", "--only", "raw", "--size-mib", "2"])
        .args(["--files", "20", "--random-reads", "10", "--mixed-ops", "50"])
        .args(["--fsx-ops", "50"])
        .args(["--idle-volumes", "0", "--workloads", workloads, "--dir"])
        .arg(dir.path())
        .output()
        .unwrap()
}

#[test]
fn workloads_pick_the_rows_printed() {
    let out = bench_fuse("readers,small");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "2 readers cold",
        "cached 2 readers / 1",
        "cores busy, cached 1 reader",
        "cached reader + writer / alone",
        "small ls -lR",
    ] {
        assert!(table.contains(row), "no {row:?} row in:\n{table}");
    }
    for row in [
        "seq write",
        "4K rand big p50",
        "mixed ops",
        "fsx ops",
        "pgbench",
    ] {
        assert!(!table.contains(row), "a {row:?} row in:\n{table}");
    }
}

#[test]
fn an_unknown_workload_is_refused() {
    let out = bench_fuse("seq,bogus");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown workload \"bogus\"")
            && err.contains("seq, random, mixed, fsx, readers, small, pgbench"),
        "{err}"
    );
}
