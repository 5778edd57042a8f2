//! The embedded Postgres helper starts a real private cluster, answers
//! queries, keeps its data across a restart and stops cleanly.

use jax_csi::db::embedded::{process_alive as alive, EmbeddedPostgres, EmbeddedPostgresOptions};

#[test]
fn temp_cluster_answers_and_stops() {
    let pg = EmbeddedPostgres::start_temp()
        .expect("starting a throwaway cluster (is postgresql installed?)");
    assert_eq!(pg.psql("jax", "SELECT 41+1").unwrap().trim(), "42");
    let url = pg.database_url();
    assert!(
        url.starts_with("postgres://") && url.contains(&format!("port={}", pg.port())),
        "{url}"
    );
    let pid = pg.pid().expect("postmaster.pid");
    assert!(alive(pid));
    let socket = pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port()));
    assert!(socket.exists());
    pg.stop().unwrap();
    assert!(!alive(pid), "postmaster {pid} still running after stop");
    assert!(!socket.exists());
}

#[test]
fn restart_on_the_same_dir_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedPostgresOptions { fsync: false };
    let pg = EmbeddedPostgres::start(dir.path(), opts.clone()).unwrap();
    pg.psql(
        "jax",
        "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)",
    )
    .unwrap();
    pg.stop().unwrap();
    let pg = EmbeddedPostgres::start(dir.path(), opts).unwrap();
    assert_eq!(pg.psql("jax", "SELECT v FROM kept").unwrap().trim(), "7");
    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(!alive(pid), "drop must stop the server");
}

/// As root the server runs as `postgres`; a directory under a parent it
/// cannot enter gets its data in a directory of its own, recorded in
/// `LOCATION` and found again by the next start.
#[test]
fn an_unreachable_state_dir_keeps_its_data_elsewhere() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        return; // Without root the server runs as us: nothing to relocate.
    }
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = parent.path().join("state").join("postgres");
    let opts = EmbeddedPostgresOptions { fsync: false };
    let pg = EmbeddedPostgres::start(&dir, opts.clone()).expect("a 0700 parent is no obstacle");
    assert!(
        !pg.data_dir().starts_with(parent.path()),
        "{} is not reachable by postgres",
        pg.data_dir().display()
    );
    let recorded = std::fs::read_to_string(dir.join("LOCATION")).unwrap();
    assert_eq!(
        Some(std::path::Path::new(recorded.trim())),
        pg.data_dir().parent()
    );
    pg.psql(
        "jax",
        "CREATE TABLE kept (v int); INSERT INTO kept VALUES (9)",
    )
    .unwrap();
    pg.stop().unwrap();
    let pg = EmbeddedPostgres::start(&dir, opts).unwrap();
    assert_eq!(pg.psql("jax", "SELECT v FROM kept").unwrap().trim(), "9");
    let data = pg.data_dir().to_path_buf();
    pg.stop_and_remove_data().unwrap();
    assert!(!data.exists());
}

/// One handle owns a data directory at a time.
#[test]
fn a_second_start_on_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedPostgresOptions { fsync: false };
    let pg = EmbeddedPostgres::start(dir.path(), opts.clone()).unwrap();
    let err = EmbeddedPostgres::start(dir.path(), opts).expect_err("the lock is held");
    assert!(err.to_string().contains("already runs"), "{err}");
    pg.stop().unwrap();
}
