//! Two node plugins on loopback sharing one volume: a quick end-to-end
//! check of sync (the namespaced multi-node tests are in tests/multinode.rs).

mod cluster;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::Cluster;
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use jax_csi::csi::proto::*;
use tonic::transport::Channel;

fn rwx() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

async fn publish(c: &Cluster, node: &mut NodeClient<Channel>, name: &str, id: &str) -> PathBuf {
    let staging = c.dir.path().join(format!("{name}/staging/{id}"));
    let target = c.dir.path().join(format!("{name}/pods/p/{id}"));
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    })
    .await
    .unwrap();
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    })
    .await
    .unwrap();
    target
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fsync(p: &Path) {
    fs::File::open(p).unwrap().sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_one_across_two_nodes() {
    let mut c = Cluster::start();
    let mut ctl = ControllerClient::new(c.controller(0).await);
    let mut a = NodeClient::new(c.node("node-a").await);
    let mut b = NodeClient::new(c.node("node-b").await);
    let id = ctl
        .create_volume(CreateVolumeRequest {
            name: "shared".into(),
            volume_capabilities: vec![rwx()],
            capacity_range: Some(CapacityRange {
                required_bytes: 256 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let on_a = publish(&c, &mut a, "a", &id).await;
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(on_a.join("big.bin"), &big).unwrap();
    fs::write(on_a.join("hello.txt"), b"from a").unwrap();
    // A hard link and a FIFO travel too (the link table is a node of its own).
    fs::hard_link(on_a.join("hello.txt"), on_a.join("also-hello.txt")).unwrap();
    let fifo =
        std::ffi::CString::new(on_a.join("pipe").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    fsync(&on_a.join("big.bin"));
    fsync(&on_a.join("hello.txt"));
    // Wait until Postgres knows A's head (B looks for holders there).
    wait_for("A's head in Postgres", || {
        c.psql(&format!(
            "SELECT count(*) FROM bucket_heads WHERE volume_id = '{id}'"
        )) == "1"
    });
    let on_b = publish(&c, &mut b, "b", &id).await;
    assert_eq!(fs::read(on_b.join("hello.txt")).unwrap(), b"from a");
    assert_eq!(fs::read(on_b.join("big.bin")).unwrap(), big);
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let linked = fs::metadata(on_b.join("also-hello.txt")).unwrap();
        assert_eq!(linked.nlink(), 2);
        assert_eq!(
            linked.ino(),
            fs::metadata(on_b.join("hello.txt")).unwrap().ino()
        );
        assert!(fs::symlink_metadata(on_b.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
    }
    // B writes: A sees it, and A's writes reach B.
    fs::write(on_b.join("from-b.txt"), b"hello from b").unwrap();
    fsync(&on_b.join("from-b.txt"));
    wait_for("B's file on A", || {
        fs::read(on_a.join("from-b.txt")).ok().as_deref() == Some(b"hello from b")
    });
    fs::write(on_a.join("hello.txt"), b"changed on a").unwrap();
    fsync(&on_a.join("hello.txt"));
    wait_for("A's change on B", || {
        fs::read(on_b.join("hello.txt")).ok().as_deref() == Some(b"changed on a")
    });
    assert_eq!(
        fs::read(on_b.join("also-hello.txt")).unwrap(),
        b"changed on a"
    );
    fs::remove_file(on_a.join("big.bin")).unwrap();
    fs::File::open(&on_a).unwrap().sync_all().unwrap();
    wait_for("the delete on B", || !on_b.join("big.bin").exists());
}
