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

/// As root the server runs as `postgres`; a data directory under a parent it
/// cannot enter is refused up front with a message naming that parent.
#[test]
fn an_unreachable_state_dir_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        return; // Without root the server runs as us: nothing to check.
    }
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let started = EmbeddedPostgres::start(
        &parent.path().join("state").join("postgres"),
        EmbeddedPostgresOptions { fsync: false },
    );
    let Err(err) = started else {
        panic!("the postgres user cannot enter a 0700 root-owned directory");
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&parent.path().display().to_string()) && msg.contains("chmod o+x"),
        "{msg}"
    );
}
