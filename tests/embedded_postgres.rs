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
