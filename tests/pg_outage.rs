//! Postgres away for a minute (`JAX_OUTAGE_SECS`, default 60): a pod goes on
//! reading and writing its volume with fsyncs and sees no error; the
//! controller answers UNAVAILABLE (quickly, and Probe says not ready) the
//! whole time; when Postgres is back, the controller serves again by itself
//! and the node's records catch up (the head Postgres holds for the volume
//! is the node's latest, written during the outage; the mount record is
//! there), with no process restarted.

mod cluster;

use std::time::{Duration, Instant};

use cluster::{csi, write_synced, Cluster};
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::identity_client::IdentityClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::{CreateVolumeRequest, ProbeRequest};
use jax_csi::db::embedded::EmbeddedPostgresOptions;
use tonic::Code;

fn outage() -> Duration {
    let secs = std::env::var("JAX_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

fn create_req(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![csi::rwx()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_of_a_minute_stops_no_pod_and_heals_by_itself() {
    let mut c = Cluster::start();
    let ch = c.controller(0).await;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(c.node("node-a").await);
    let root = c.dir.path().to_path_buf();
    let id = csi::create_volume(&mut ctl, "steady", 64 << 20).await;
    let target = csi::stage_and_publish(&mut node, &root, &id, "pod-1").await;
    write_synced(&target.join("before"), b"before the outage").unwrap();

    c.pg.as_mut().unwrap().pause().unwrap();
    let down = Instant::now();
    let mut writes = 0;
    let mut refused = 0;
    let mut slowest_refusal = Duration::ZERO;
    let mut rounds = 0;
    while down.elapsed() < outage() {
        // The pod writes on, fsyncs included, for the first half; then it
        // only reads, so the last head is long written when Postgres
        // returns (a reporter that gave up would leave it stale).
        if down.elapsed() < outage() / 2 {
            let name = format!("during-{writes}");
            let data = format!("written {writes} while Postgres was down");
            write_synced(&target.join(&name), data.as_bytes())
                .unwrap_or_else(|e| panic!("write {writes} during the outage failed: {e}"));
            assert_eq!(std::fs::read_to_string(target.join(&name)).unwrap(), data);
            writes += 1;
        }
        assert_eq!(
            std::fs::read(target.join("before")).unwrap(),
            b"before the outage"
        );
        rounds += 1;
        // Every few seconds, the controller: UNAVAILABLE, quickly.
        if rounds % 20 == 1 {
            let asked = Instant::now();
            let err = ctl
                .create_volume(create_req(&format!("during-{writes}")))
                .await
                .expect_err("CreateVolume succeeded without Postgres");
            assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
            slowest_refusal = slowest_refusal.max(asked.elapsed());
            let probe = IdentityClient::new(ch.clone())
                .probe(ProbeRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(probe.ready, Some(false), "not ready without Postgres");
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest_refusal < Duration::from_secs(10),
        "a refusal took {slowest_refusal:?}"
    );
    let outage_took = down.elapsed();

    c.pg.as_mut()
        .unwrap()
        .resume(EmbeddedPostgresOptions { fsync: false })
        .unwrap();
    let up = Instant::now();
    // The controller serves again by itself.
    loop {
        match ctl.create_volume(create_req("after")).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
                assert!(
                    up.elapsed() < Duration::from_secs(30),
                    "the controller did not recover: {}",
                    e.message()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let controller_back = up.elapsed();
    // The node's head, written during the outage, reaches Postgres.
    let head_file = c
        .node_state("node-a")
        .join("buckets")
        .join(&id)
        .join("HEAD");
    let node_head = std::fs::read_to_string(&head_file).unwrap();
    let sql =
        format!("SELECT head FROM bucket_heads WHERE volume_id = '{id}' AND node_id = 'node-a'");
    loop {
        if c.psql(&sql) == node_head.trim() {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "Postgres still has head {:?}, the node {node_head:?}",
            c.psql(&sql)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records_back = up.elapsed();
    let mounts = c.psql(&format!(
        "SELECT status FROM mounts WHERE volume_id = '{id}' AND node_id = 'node-a'"
    ));
    assert_eq!(mounts, "running");
    // Every file the pod wrote is there.
    for n in 0..writes {
        let text = std::fs::read_to_string(target.join(format!("during-{n}"))).unwrap();
        assert_eq!(text, format!("written {n} while Postgres was down"));
    }
    println!(
        "outage {outage_took:?}: {writes} fsynced writes, 0 errors; {refused} controller calls refused \
         (UNAVAILABLE, slowest {slowest_refusal:?}); controller back {controller_back:?} and the \
         node's head in Postgres {records_back:?} after Postgres returned"
    );
}
