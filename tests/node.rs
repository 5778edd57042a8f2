//! End to end on one machine: the controller and node binaries on unix
//! sockets against a throwaway Postgres, driven by tonic clients as kubelet
//! and the sidecars drive them; volumes used through real FUSE mounts with
//! ordinary file syscalls.

mod cluster;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::Cluster;
use jax_csi::csi::admin_proto::admin_client::AdminClient;
use jax_csi::csi::admin_proto::{
    HistoryRequest, ListDirRequest, ReadFileRequest, RestoreRequest, VersionSelector,
};
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use jax_csi::csi::proto::volume_content_source::{
    SnapshotSource, Type as SourceType, VolumeSource,
};
use jax_csi::csi::proto::*;
use tonic::transport::Channel;
use tonic::Code;

fn mount_cap(mode: Mode, group: &str, flags: &[&str]) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            volume_mount_group: group.into(),
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn rwx() -> VolumeCapability {
    mount_cap(Mode::MultiNodeMultiWriter, "", &[])
}

struct Env {
    c: Cluster,
    ctl: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    /// The operator's service, on the node's admin socket.
    admin: AdminClient<Channel>,
}

async fn env() -> Env {
    let mut c = Cluster::start();
    let ctl = ControllerClient::new(c.controller(0).await);
    let channel = c.node("node-a").await;
    let node = NodeClient::new(channel);
    let admin = AdminClient::new(c.node_admin("node-a").await);
    Env {
        c,
        ctl,
        node,
        admin,
    }
}

impl Env {
    fn path(&self, rel: &str) -> PathBuf {
        self.c.dir.path().join(rel)
    }

    async fn create(&mut self, name: &str, source: Option<SourceType>) -> String {
        self.ctl
            .create_volume(CreateVolumeRequest {
                name: name.into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 64 << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![rwx()],
                volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id
    }

    /// Stage and publish the tenant volume `id` for `pod` with the tenant
    /// key `key` in both requests' secrets; returns the pod's path.
    async fn publish_with_key(&mut self, id: &str, pod: &str, key: &str) -> PathBuf {
        let secrets: std::collections::HashMap<String, String> =
            [("tenantKey".to_string(), key.to_string())].into();
        let mut stage = self.stage_req(id, rwx());
        stage.secrets = secrets.clone();
        self.node.node_stage_volume(stage).await.unwrap();
        let mut publish = self.publish_req(id, pod, false);
        publish.secrets = secrets;
        let target = PathBuf::from(&publish.target_path);
        self.node.node_publish_volume(publish).await.unwrap();
        target
    }

    /// Run the `jax-csi` binary with `args` and the cluster's database URL.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_jax-csi"))
            .args(args)
            .args(["--database-url", &self.c.url()])
            .output()
            .unwrap()
    }

    /// A request for a 64 MiB RWX volume with StorageClass `parameters`.
    fn volume_req(&self, name: &str, parameters: &[(&str, &str)]) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![rwx()],
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    /// A request for a 64 MiB RWX volume of the tenant whose key is `key`.
    fn tenant_volume_req(&self, name: &str, key: &str) -> CreateVolumeRequest {
        CreateVolumeRequest {
            secrets: [("tenantKey".to_string(), key.to_string())].into(),
            ..self.volume_req(name, &[("tenantKeySecret", "team-a")])
        }
    }

    /// A snapshot of `vol` named `name`; its id.
    async fn snapshot(&mut self, vol: &str, name: &str) -> String {
        self.ctl
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: vol.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap()
            .snapshot_id
    }

    fn stage_req(&self, id: &str, cap: VolumeCapability) -> NodeStageVolumeRequest {
        NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: self.path(&format!("staging/{id}")).display().to_string(),
            volume_capability: Some(cap),
            ..Default::default()
        }
    }

    fn publish_req(&self, id: &str, pod: &str, readonly: bool) -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: self.path(&format!("staging/{id}")).display().to_string(),
            target_path: self.path(&format!("pods/{pod}/vol")).display().to_string(),
            volume_capability: Some(rwx()),
            readonly,
            ..Default::default()
        }
    }

    /// Stage and publish `id` for `pod`; returns the pod's path.
    async fn publish(&mut self, id: &str, pod: &str) -> PathBuf {
        self.node
            .node_stage_volume(self.stage_req(id, rwx()))
            .await
            .unwrap();
        let req = self.publish_req(id, pod, false);
        let target = PathBuf::from(&req.target_path);
        self.node.node_publish_volume(req).await.unwrap();
        target
    }

    async fn unpublish(&mut self, id: &str, pod: &str) {
        let target = self.path(&format!("pods/{pod}/vol"));
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.display().to_string(),
            })
            .await
            .unwrap();
        self.node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: self.path(&format!("staging/{id}")).display().to_string(),
            })
            .await
            .unwrap();
    }

    /// Wait until Postgres has the node's current head of `id` (what a
    /// snapshot records).
    /// Wait until everything fsynced is in a version (the journal has no
    /// active file: a version retired it) and that version is reported.
    fn wait_head_reported(&self, id: &str) {
        let bucket = self.c.node_state("node-a").join("buckets").join(id);
        let head_file = bucket.join("HEAD");
        let journal = bucket.join("journal");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let local = fs::read_to_string(&head_file).unwrap_or_default();
            let reported = self.c.psql(&format!(
                "SELECT head FROM bucket_heads WHERE volume_id = '{id}' AND node_id = 'node-a'"
            ));
            if !local.is_empty()
                && local.trim() == reported
                && !jax_csi::bucket::journal::holds_changes(&journal)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "head of {id} never reported ({local} vs {reported})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Poll `done` every 20 ms until it holds; fail after `secs` seconds.
fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error");
    (s.code(), s.message().to_string())
}

fn fsync_file(p: &Path) {
    fs::File::open(p).unwrap().sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_write_republish_and_clones_from_a_snapshot() {
    let mut e = env().await;
    let id = e.create("data", None).await;
    let target = e.publish(&id, "pod-1").await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(target.join("big.bin"), &big).unwrap();
    fs::create_dir_all(target.join("dir/sub")).unwrap();
    fs::write(target.join("dir/sub/a.txt"), b"first").unwrap();
    fs::rename(target.join("dir/sub/a.txt"), target.join("dir/a.txt")).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(target.join("big.bin"))
        .unwrap();
    f.set_len(2_000_000).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // Stats: bytes used and a healthy condition, on both paths.
    for path in [&target, &e.path(&format!("staging/{id}"))] {
        let stats = e
            .node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: path.display().to_string(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let bytes = &stats.usage[0];
        assert_eq!(bytes.total, 64 << 20);
        assert_eq!(bytes.used, 2_000_000 + 5);
        assert_eq!(bytes.available, (64 << 20) - 2_000_005);
        assert!(!stats.volume_condition.unwrap().abnormal);
    }
    // The controller sees the node publishing it.
    let got = e
        .ctl
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut published = got.status.unwrap().published_node_ids;
    while published != ["node-a"] {
        assert!(
            Instant::now() < deadline,
            "mount record never mirrored: {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        published = e
            .ctl
            .controller_get_volume(ControllerGetVolumeRequest {
                volume_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
            .published_node_ids;
    }

    e.unpublish(&id, "pod-1").await;
    assert!(!target.exists(), "unpublish removes the pod path");
    // Idempotent repeats.
    e.unpublish(&id, "pod-1").await;

    let target = e.publish(&id, "pod-2").await;
    assert_eq!(fs::read(target.join("big.bin")).unwrap(), &big[..2_000_000]);
    assert_eq!(fs::read(target.join("dir/a.txt")).unwrap(), b"first");

    // Snapshot, then keep writing to the source.
    fsync_file(&target.join("big.bin"));
    e.wait_head_reported(&id);
    let snap = e
        .ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    fs::write(target.join("dir/a.txt"), b"changed after the snapshot").unwrap();
    fsync_file(&target.join("dir/a.txt"));

    let clone = e
        .create(
            "from-snap",
            Some(SourceType::Snapshot(SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            })),
        )
        .await;
    let clone_target = e.publish(&clone, "pod-3").await;
    assert_eq!(fs::read(clone_target.join("dir/a.txt")).unwrap(), b"first");
    assert_eq!(
        fs::read(clone_target.join("big.bin")).unwrap(),
        &big[..2_000_000]
    );
    // They diverge independently.
    fs::write(clone_target.join("only-in-clone"), b"c").unwrap();
    fs::remove_file(clone_target.join("big.bin")).unwrap();
    fsync_file(&clone_target.join("only-in-clone"));
    assert!(!target.join("only-in-clone").exists());
    assert_eq!(fs::read(target.join("big.bin")).unwrap().len(), 2_000_000);
    assert_eq!(
        fs::read(target.join("dir/a.txt")).unwrap(),
        b"changed after the snapshot"
    );

    // A volume cloned from a volume starts at the source's current head.
    e.wait_head_reported(&id);
    let vclone = e
        .create(
            "from-volume",
            Some(SourceType::Volume(VolumeSource {
                volume_id: id.clone(),
            })),
        )
        .await;
    let vclone_target = e.publish(&vclone, "pod-4").await;
    assert_eq!(
        fs::read(vclone_target.join("dir/a.txt")).unwrap(),
        b"changed after the snapshot"
    );
    e.unpublish(&vclone, "pod-4").await;
    e.unpublish(&clone, "pod-3").await;
    e.unpublish(&id, "pod-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_requests_get_the_spec_error_codes() {
    let mut e = env().await;
    let id = e.create("errs", None).await;
    let caps = e
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 5);
    let info = e
        .node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-a");
    assert_eq!(info.max_volumes_per_node, 256);

    let mut r = e.stage_req(&id, rwx());
    r.volume_id.clear();
    let (c, m) = code(e.node.node_stage_volume(r).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("volume_id"), "{m}");
    let mut r = e.stage_req(&id, rwx());
    r.staging_target_path.clear();
    let (c, m) = code(e.node.node_stage_volume(r).await);
    assert_eq!(
        (c, m.contains("staging_target_path")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let mut r = e.stage_req(&id, rwx());
    r.volume_capability = None;
    let (c, m) = code(e.node.node_stage_volume(r).await);
    assert_eq!(
        (c, m.contains("volume_capability")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let block = VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    };
    let (c, _) = code(e.node.node_stage_volume(e.stage_req(&id, block)).await);
    assert_eq!(c, Code::InvalidArgument);
    let (c, m) = code(
        e.node
            .node_stage_volume(
                e.stage_req(&id, mount_cap(Mode::MultiNodeMultiWriter, "staff", &[])),
            )
            .await,
    );
    assert_eq!(
        (c, m.contains("volume_mount_group")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (c, m) = code(
        e.node
            .node_stage_volume(
                e.stage_req(&id, mount_cap(Mode::MultiNodeMultiWriter, "", &["bogus"])),
            )
            .await,
    );
    assert_eq!(
        (c, m.contains("bogus")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (c, _) = code(
        e.node
            .node_stage_volume(e.stage_req("00112233445566778899aabbccddeeff", rwx()))
            .await,
    );
    assert_eq!(c, Code::NotFound);

    // Publish before stage: FAILED_PRECONDITION.
    let (c, _) = code(
        e.node
            .node_publish_volume(e.publish_req(&id, "p", false))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    e.node
        .node_stage_volume(e.stage_req(&id, rwx()))
        .await
        .unwrap();
    // Stage again: idempotent; with another capability: ALREADY_EXISTS.
    e.node
        .node_stage_volume(e.stage_req(&id, rwx()))
        .await
        .unwrap();
    let (c, _) = code(
        e.node
            .node_stage_volume(e.stage_req(&id, mount_cap(Mode::MultiNodeReaderOnly, "", &[])))
            .await,
    );
    assert_eq!(c, Code::AlreadyExists);
    let mut r = e.publish_req(&id, "p", false);
    r.target_path.clear();
    let (c, m) = code(e.node.node_publish_volume(r).await);
    assert_eq!(
        (c, m.contains("target_path")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    e.node
        .node_publish_volume(e.publish_req(&id, "p", false))
        .await
        .unwrap();
    e.node
        .node_publish_volume(e.publish_req(&id, "p", false))
        .await
        .unwrap();
    let (c, _) = code(
        e.node
            .node_publish_volume(e.publish_req(&id, "p", true))
            .await,
    );
    assert_eq!(c, Code::AlreadyExists);

    // A read-only publish of the same volume: EROFS for the pod.
    let ro = e.publish_req(&id, "reader", true);
    let ro_path = PathBuf::from(&ro.target_path);
    e.node.node_publish_volume(ro).await.unwrap();
    fs::write(e.path("pods/p/vol/x"), b"rw").unwrap();
    assert_eq!(fs::read(ro_path.join("x")).unwrap(), b"rw");
    let err = fs::write(ro_path.join("y"), b"no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    let (c, _) = code(
        e.node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: e.path("nowhere").display().to_string(),
                staging_target_path: String::new(),
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let (c, _) = code(
        e.node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: String::new(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);

    // Expansion takes effect without a remount.
    let before = nix::sys::statvfs::statvfs(&ro_path).unwrap();
    assert_eq!(before.blocks() * before.fragment_size(), 64 << 20);
    let r = e
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: ro_path.display().to_string(),
            capacity_range: Some(CapacityRange {
                required_bytes: 128 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 128 << 20);
    let after = nix::sys::statvfs::statvfs(&ro_path).unwrap();
    assert_eq!(after.blocks() * after.fragment_size(), 128 << 20);

    // Unpublish / unstage of paths that are already gone: fine.
    e.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: e.path("pods/never/vol").display().to_string(),
        })
        .await
        .unwrap();
    e.node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: e.path("staging/never").display().to_string(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_group_gives_a_non_root_pod_write_access() {
    use std::os::unix::process::CommandExt;
    let mut e = env().await;
    let id = e.create("group", None).await;
    e.node
        .node_stage_volume(e.stage_req(&id, mount_cap(Mode::SingleNodeWriter, "4242", &[])))
        .await
        .unwrap();
    let mut p = e.publish_req(&id, "nonroot", false);
    p.volume_capability = Some(mount_cap(Mode::SingleNodeWriter, "4242", &["noexec"]));
    let target = PathBuf::from(&p.target_path);
    e.node.node_publish_volume(p).await.unwrap();
    let md = fs::metadata(&target).unwrap();
    assert_eq!(md.gid(), 4242);
    assert_eq!(md.mode() & 0o2070, 0o2070);
    // A pod user (uid 5000) in the fsGroup can write; the file is the group's.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("echo hello > data && mkdir d && echo x > d/f && cat data")
        .current_dir(&target);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let groups = [4242 as libc::gid_t];
            if libc::setgroups(1, groups.as_ptr()) != 0
                || libc::setgid(5000) != 0
                || libc::setuid(5000) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(target.join("d/f")).unwrap().gid(), 4242);
    // noexec is honoured on the pod's mount.
    fs::write(target.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(target.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let err = std::process::Command::new(target.join("run.sh"))
        .output()
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_fsynced_and_remounts_on_restart() {
    let mut e = env().await;
    let id = e.create("survivor", None).await;
    let target = e.publish(&id, "pod").await;
    {
        let mut f = fs::File::create(target.join("acked")).unwrap();
        f.write_all(b"fsync acknowledged").unwrap();
        f.sync_all().unwrap();
    }
    e.c.kill_node("node-a");
    let staging = e.path(&format!("staging/{id}"));
    let err = fs::metadata(&staging).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "the FUSE mount is dead"
    );

    // The restarted node brings the mount and the pod's bind back by itself.
    e.node = NodeClient::new(e.c.node("node-a").await);
    assert_eq!(
        fs::read(staging.join("acked")).unwrap(),
        b"fsync acknowledged"
    );
    assert_eq!(
        fs::read(target.join("acked")).unwrap(),
        b"fsync acknowledged"
    );
    let stats = e
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.volume_condition.unwrap().abnormal);
    fs::write(target.join("after"), b"writable again").unwrap();

    // A clean stop unmounts everything (after a final commit).
    assert!(e.c.stop_node("node-a").success());
    assert!(!jax_csi::fuse::session::is_mount_point(&staging));
    e.node = NodeClient::new(e.c.node("node-a").await);
    assert_eq!(fs::read(target.join("after")).unwrap(), b"writable again");
    e.unpublish(&id, "pod").await;
    assert!(!jax_csi::fuse::session::is_mount_point(&staging));
}

/// Whether anything is mounted exactly at `p`.
fn mounted(p: &Path) -> usize {
    let want = p.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

fn tmpfs_at(p: &Path) {
    fs::create_dir_all(p).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        p,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
}

/// Paths must be clean and under the kubelet dir, and a node unmounts only
/// what it mounted for the volume named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_checked_and_only_our_mounts_are_undone() {
    let mut e = env().await;
    let id = e.create("paths", None).await;
    let outside = std::env::temp_dir().join(format!("jax-outside-{id}"));
    for bad in [
        outside.display().to_string(),
        format!("{}/staging/../../escape", e.c.dir.path().display()),
        "relative/staging".into(),
    ] {
        let mut r = e.stage_req(&id, rwx());
        r.staging_target_path = bad.clone();
        let (c, m) = code(e.node.node_stage_volume(r).await);
        assert_eq!(c, Code::InvalidArgument, "{bad}: {m}");
    }
    assert!(!outside.exists(), "nothing is created for a refused path");
    let mut p = e.publish_req(&id, "pod", false);
    p.target_path = "/etc/jax-should-not-exist".into();
    assert_eq!(
        code(e.node.node_publish_volume(p).await).0,
        Code::InvalidArgument
    );

    // Something else mounted where kubelet says our staging path is.
    let foreign = e.path("staging/foreign");
    tmpfs_at(&foreign);
    e.node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: foreign.display().to_string(),
        })
        .await
        .unwrap();
    assert_eq!(
        mounted(&foreign),
        1,
        "a mount that is not ours is left alone"
    );
    e.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: foreign.display().to_string(),
        })
        .await
        .unwrap();
    assert_eq!(mounted(&foreign), 1);
    // Another volume's target is not undone by an unpublish naming this one.
    let other = e.create("paths-other", None).await;
    let other_target = e.publish(&other, "other-pod").await;
    e.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: other_target.display().to_string(),
        })
        .await
        .unwrap();
    assert_eq!(mounted(&other_target), 1, "another volume's bind stays");
    fs::write(other_target.join("still"), b"here").unwrap();
    nix::mount::umount(&foreign).unwrap();

    // Concurrent stages of one volume: each is done or ABORTED, and one
    // FUSE mount results.
    let staging = e.path(&format!("staging/{id}"));
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut n = e.node.clone();
        let r = e.stage_req(&id, rwx());
        calls.push(tokio::spawn(async move { n.node_stage_volume(r).await }));
    }
    for c in calls {
        if let Err(s) = c.await.unwrap() {
            assert_eq!(s.code(), Code::Aborted, "{s:?}");
        }
    }
    e.node
        .node_stage_volume(e.stage_req(&id, rwx()))
        .await
        .unwrap();
    assert_eq!(mounted(&staging), 1, "one mount at the staging path");
}

/// A tenant's volume stages only with the tenant's key, a clone keeps the
/// tenant, and a Postgres row edited to graft another tree in does not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_keys_and_record_bindings_protect_volumes() {
    let mut e = env().await;
    let key = hex::encode([7u8; 32]);
    let wrong = hex::encode([9u8; 32]);
    let secrets = |k: &str| -> std::collections::HashMap<String, String> {
        [("tenantKey".to_string(), k.to_string())].into()
    };
    let mut req = e.tenant_volume_req("tenant", &key);
    let id = e
        .ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let staging = e.path(&format!("staging/{id}"));
    let (c, m) = code(e.node.node_stage_volume(e.stage_req(&id, rwx())).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("tenant key"), "{m}");
    let mut r = e.stage_req(&id, rwx());
    r.secrets = secrets(&wrong);
    let (c, m) = code(e.node.node_stage_volume(r).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(
        !m.contains(&wrong) && !m.contains(&key),
        "no key material in {m}"
    );
    assert_eq!(mounted(&staging), 0, "nothing mounted without the key");
    let mut r = e.stage_req(&id, rwx());
    r.secrets = secrets(&key);
    e.node.node_stage_volume(r.clone()).await.unwrap();
    // A repeat still needs the key.
    let mut again = r.clone();
    again.secrets.clear();
    assert_eq!(
        code(e.node.node_stage_volume(again).await).0,
        Code::InvalidArgument
    );
    let mut p = e.publish_req(&id, "t", false);
    p.secrets = secrets(&key);
    e.node.node_publish_volume(p).await.unwrap();
    fs::write(e.path("pods/t/vol/secret.txt"), b"tenant data").unwrap();
    fsync_file(&e.path("pods/t/vol/secret.txt"));
    e.wait_head_reported(&id);

    // A clone keeps its source's tenant: the key is needed to make it and to stage it.
    req.name = "tenant-clone".into();
    req.parameters.clear();
    req.secrets.clear();
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(SourceType::Volume(VolumeSource {
            volume_id: id.clone(),
        })),
    });
    let (c, m) = code(e.ctl.create_volume(req.clone()).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    req.secrets = secrets(&wrong);
    assert_eq!(
        code(e.ctl.create_volume(req.clone()).await).0,
        Code::PermissionDenied
    );
    req.secrets = secrets(&key);
    let clone = e
        .ctl
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    assert_eq!(
        code(e.node.node_stage_volume(e.stage_req(&clone, rwx())).await).0,
        Code::InvalidArgument
    );
    e.publish_with_key(&clone, "tc", &key).await;
    assert_eq!(
        fs::read(e.path("pods/tc/vol/secret.txt")).unwrap(),
        b"tenant data"
    );

    // Grafting: point a plain volume's clone record at the tenant's tree.
    let plain = e.create("plain", None).await;
    let plain_clone = e
        .create(
            "plain-clone",
            Some(SourceType::Volume(VolumeSource {
                volume_id: plain.clone(),
            })),
        )
        .await;
    let head = e.c.psql(&format!(
        "SELECT head FROM bucket_heads WHERE volume_id = '{id}'"
    ));
    e.c.psql(&format!(
        "UPDATE volumes SET source_volume_id = '{id}', source_head = '{head}', \
         source_wrapped_key = (SELECT wrapped_key FROM volumes WHERE id = '{id}') WHERE id = '{plain_clone}'"
    ));
    let (c, m) = code(
        e.node
            .node_stage_volume(e.stage_req(&plain_clone, rwx()))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert_eq!(mounted(&e.path(&format!("staging/{plain_clone}"))), 0);

    // #26 finding 7: the operator service serves the tenant's volume while
    // a NodeStage (which brought the key) holds it, and nothing of it after
    // the unstage, though the node still holds it and the cluster KEK
    // alone would open it: no files, no history, no old version, no restore.
    let list = |id: &str| ListDirRequest {
        volume_id: id.into(),
        path: "/".into(),
        select: None,
    };
    let names: Vec<String> = e
        .admin
        .list_dir(list(&id))
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(names.contains(&"secret.txt".to_string()), "{names:?}");
    e.unpublish(&id, "t").await;
    assert!(e.c.node_state("node-a").join("buckets").join(&id).exists());
    let (c, m) = code(e.admin.list_dir(list(&id)).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert!(m.contains("not staged on this node"), "{m}");
    let (c, m) = code(
        e.admin
            .history(HistoryRequest {
                volume_id: id.clone(),
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    let read = e
        .admin
        .read_file(ReadFileRequest {
            volume_id: id.clone(),
            path: "/secret.txt".into(),
            select: Some(VersionSelector {
                version: "1".into(),
                at_unix_seconds: None,
            }),
        })
        .await;
    assert_eq!(
        read.map(|_| ()).unwrap_err().code(),
        Code::FailedPrecondition
    );
    let (c, _) = code(
        e.admin
            .restore(RestoreRequest {
                volume_id: id.clone(),
                select: Some(VersionSelector {
                    version: "1".into(),
                    at_unix_seconds: None,
                }),
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
}

/// Expansion the way the resizer and kubelet drive it: the controller says
/// node expansion is required, kubelet calls NodeExpandVolume with the
/// volume path (capacity_range optional), the running mount grows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expansion_reaches_running_mounts() {
    let mut e = env().await;
    let id = e.create("grow", None).await;
    let target = e.publish(&id, "g").await;
    let size = |p: &Path| {
        let s = nix::sys::statvfs::statvfs(p).unwrap();
        s.blocks() * s.fragment_size()
    };
    assert_eq!(size(&target), 64 << 20);
    let r = e
        .ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 256 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.node_expansion_required);
    let got = e
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.capacity_bytes, 256 << 20);
    assert_eq!(size(&target), 256 << 20);
    // Never shrinks.
    let got = e
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: Some(CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.capacity_bytes, 256 << 20);
    assert_eq!(size(&target), 256 << 20);
    // An unknown volume is NOT_FOUND, capacity_range or not.
    let (c, _) = code(
        e.node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: "00112233445566778899aabbccddeeff".into(),
                volume_path: target.display().to_string(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
}

/// A deleted volume's bucket and blobs leave the node; the node records
/// that it collected it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_volumes_are_collected_on_the_node() {
    let mut c = Cluster::start();
    c.gc_grace = "2";
    let ctl = ControllerClient::new(c.controller(0).await);
    let channel = c.node("node-a").await;
    let (node, admin) = (
        NodeClient::new(channel),
        AdminClient::new(c.node_admin("node-a").await),
    );
    let mut e = Env {
        c,
        ctl,
        node,
        admin,
    };
    let keep = e.create("keep", None).await;
    let gone = e.create("gone", None).await;
    for (id, pod) in [(&keep, "k"), (&gone, "g")] {
        let t = e.publish(id, pod).await;
        fs::write(t.join("data.bin"), vec![id.as_bytes()[0]; 3 << 20]).unwrap();
        fsync_file(&t.join("data.bin"));
        e.wait_head_reported(id);
    }
    let store = e.c.node_state("node-a").join("store");
    let usage = || {
        jax_csi::store::BlobStore::open(&store)
            .unwrap()
            .disk_usage()
            .unwrap()
    };
    let before = usage();
    e.unpublish(&gone, "g").await;
    e.ctl
        .delete_volume(DeleteVolumeRequest {
            volume_id: gone.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let bucket_dir = e.c.node_state("node-a").join("buckets").join(&gone);
    let deadline = Instant::now() + Duration::from_secs(30);
    while bucket_dir.exists()
        || e.c.psql(&format!(
            "SELECT count(*) FROM gc_done WHERE volume_id = '{gone}'"
        )) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the deleted volume was never collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its blobs go once they are older than the grace period (2 s here);
    // the kept volume's data is untouched.
    while usage() + (3 << 20) > before {
        assert!(
            Instant::now() < deadline,
            "the deleted volume's blobs stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        fs::read(e.path("pods/k/vol/data.bin")).unwrap().len(),
        3 << 20
    );
}

/// Run `jax-csi kek rotate` against the cluster's database.
fn rotate_kek(e: &Env, kek: &Path, previous: &Path) -> std::process::Output {
    e.cli(&[
        "kek",
        "rotate",
        "-o",
        "json",
        "--kek-file",
        kek.to_str().unwrap(),
        "--previous-kek-file",
        previous.to_str().unwrap(),
    ])
}

/// #26: the cluster KEK rotates without copying data. Every process is
/// given the new KEK still opening the old one (the node re-wraps its
/// local keys at start), `jax-csi kek rotate` re-wraps every record in
/// Postgres (a volume's key, a clone's source key, a snapshot's key) once,
/// and then the new KEK alone stages the volume, its clone and a volume
/// restored from the snapshot, with every byte. A rotation with a KEK that
/// opens nothing changes nothing and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_kek_rotates_without_copying_data() {
    let mut e = env().await;
    let vol = e.create("rot", None).await;
    let pod = e.publish(&vol, "r").await;
    fs::write(pod.join("kept.txt"), b"before the rotation").unwrap();
    fsync_file(&pod.join("kept.txt"));
    e.wait_head_reported(&vol);
    let snap = e.snapshot(&vol, "rot-snap").await;
    let clone = e
        .create(
            "rot-clone",
            Some(SourceType::Volume(VolumeSource {
                volume_id: vol.clone(),
            })),
        )
        .await;
    e.unpublish(&vol, "r").await;

    // 1. Every process: the new KEK, still opening the old one.
    let kek = e.path("kek");
    let old = e.path("kek.old");
    fs::rename(&kek, &old).unwrap();
    jax_csi::crypto::Kek::generate()
        .unwrap()
        .write_file(&kek)
        .unwrap();
    let previous = ["--previous-kek-file", old.to_str().unwrap()];
    e.c.stop_node("node-a");
    let ch =
        e.c.node_with("node-a", "127.0.0.1:0", |cmd| {
            cmd.args(previous);
        })
        .await;
    e.node = NodeClient::new(ch);
    e.ctl = ControllerClient::new(e.c.controller_with(1, &previous).await);

    // 2. Postgres, in one transaction; a second run changes nothing.
    let out = rotate_kek(&e, &kek, &old);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two volumes' keys and proof keys, the clone's source key, the snapshot's key.
    assert_eq!(report["rewrapped"], 6, "{report}");
    let again: serde_json::Value =
        serde_json::from_slice(&rotate_kek(&e, &kek, &old).stdout).unwrap();
    assert_eq!(
        (
            again["rewrapped"].as_u64(),
            again["already_current"].as_u64()
        ),
        (Some(0), Some(6))
    );

    // 3. The new KEK alone.
    e.c.stop_node("node-a");
    e.node = NodeClient::new(e.c.node("node-a").await);
    e.ctl = ControllerClient::new(e.c.controller(2).await);
    let pod = e.publish(&vol, "r2").await;
    assert_eq!(
        fs::read(pod.join("kept.txt")).unwrap(),
        b"before the rotation"
    );
    let pod = e.publish(&clone, "c2").await;
    assert_eq!(
        fs::read(pod.join("kept.txt")).unwrap(),
        b"before the rotation"
    );
    let restored = e
        .create(
            "rot-restored",
            Some(SourceType::Snapshot(SnapshotSource { snapshot_id: snap })),
        )
        .await;
    let pod = e.publish(&restored, "s2").await;
    assert_eq!(
        fs::read(pod.join("kept.txt")).unwrap(),
        b"before the rotation"
    );

    // 4. The old KEK opens none of it any more: a rotation back refuses.
    let out = rotate_kek(&e, &old, &old);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was changed"), "{err}");
}

/// #26 finding 6: `jax-csi node remove` takes a node out for good. The
/// other node lists its sync identity as revoked within seconds (the time
/// is printed), the removed node's heartbeat cannot register it again,
/// and removing a node nobody registered is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_and_cannot_register_again() {
    let mut e = env().await;
    let mut node_b = NodeClient::new(e.c.node("node-b").await);
    // A volume both nodes hold: node-b enrolls (gets a key share) when it
    // stages it.
    let vol = e.create("shared-with-b", None).await;
    let pod = e.publish(&vol, "a").await;
    fs::write(pod.join("f.txt"), b"from a").unwrap();
    fsync_file(&pod.join("f.txt"));
    e.wait_head_reported(&vol);
    let mut on_b = e.stage_req(&vol, rwx());
    on_b.staging_target_path = e.path(&format!("staging-b/{vol}")).display().to_string();
    node_b.node_stage_volume(on_b).await.unwrap();
    let members = |e: &Env| -> Vec<String> {
        jax_csi::bucket::StateDir::open(&e.c.node_state("node-a"))
            .unwrap()
            .members_at_head(&vol.parse().unwrap())
            .unwrap()
            .iter()
            .map(|m| m.to_hex())
            .collect()
    };
    let endpoint = |e: &Env| {
        e.c.psql("SELECT endpoint_id FROM nodes WHERE id = 'node-b'")
    };
    wait_until("node-b registers its sync endpoint", 20, || {
        !endpoint(&e).is_empty()
    });
    let gone = endpoint(&e);
    assert!(
        members(&e).contains(&gone),
        "node-b enrolled: a member at node-a's head"
    );
    let remove = |id: &str| e.cli(&["node", "remove", id, "-o", "json"]);
    let removed_at = Instant::now();
    let out = remove("node-b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = e.c.node_state("node-a").join("REVOKED");
    wait_until("node-a revokes node-b", 20, || {
        fs::read_to_string(&revoked)
            .unwrap_or_default()
            .contains(&gone)
    });
    println!(
        "node remove -> revoked on the other node after {} ms",
        removed_at.elapsed().as_millis()
    );
    // node-a's head of the shared volume drops node-b's key share.
    wait_until("node-b's share leaves node-a's head", 20, || {
        !members(&e).contains(&gone)
    });
    println!(
        "node remove -> a version without its share after {} ms",
        removed_at.elapsed().as_millis()
    );
    assert!(!members(&e).is_empty());
    // That version is sealed under a new secret: node-b, with the base
    // secret (Postgres's, under the cluster KEK) and its old share, opens
    // what it held and not node-a's head; node-a's pod reads and writes on.
    let kek = jax_csi::crypto::Kek::from_file(&e.path("kek")).unwrap();
    let id: jax_csi::bucket::BucketId = vol.parse().unwrap();
    let on_a = jax_csi::bucket::StateDir::open(&e.c.node_state("node-a")).unwrap();
    let head_on_a = |on_a: &jax_csi::bucket::StateDir| {
        let bucket = on_a.open_bucket(&id, &kek).unwrap();
        let head = bucket.head().unwrap();
        (
            bucket.epochs(),
            head,
            jax_csi::bucket::Manifest::load(on_a.store(), &head).unwrap(),
        )
    };
    let (epochs, _, rotated) = head_on_a(&on_a);
    assert_eq!(epochs, 1, "node-a rotated the secret once");
    let held_by_b = jax_csi::bucket::StateDir::open(&e.c.node_state("node-b"))
        .unwrap()
        .open_bucket(&id, &kek)
        .unwrap();
    assert!(
        !held_by_b.can_open(&rotated),
        "the removed node opens a version written after its removal"
    );
    fs::write(pod.join("after.txt"), b"after the removal").unwrap();
    fsync_file(&pod.join("after.txt"));
    assert_eq!(fs::read(pod.join("f.txt")).unwrap(), b"from a");
    // On demand: `volume rotate-secret` on the node that stages it.
    let asked = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jax-csi"))
        .args([
            "volume",
            "rotate-secret",
            &vol,
            "-o",
            "json",
            "--node-endpoint",
        ])
        .arg(format!(
            "unix://{}",
            e.c.node_state("node-a").join("admin.sock").display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "volume rotate-secret: {} ms, the CLI process included",
        asked.elapsed().as_millis()
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (epochs, head, _) = head_on_a(&on_a);
    assert_eq!(epochs, 2, "rotated again on demand");
    assert_eq!(shown["head"]["hash"], head.to_hex());
    assert_eq!(
        fs::read(pod.join("after.txt")).unwrap(),
        b"after the removal"
    );
    // node-b's heartbeat is refused, and says so.
    wait_until("node-b's heartbeat is refused", 30, || {
        fs::read_to_string(e.c.node_log("node-b"))
            .unwrap_or_default()
            .contains("this node is not registered")
    });
    assert_eq!(
        e.c.psql("SELECT count(*) FROM nodes WHERE id = 'node-b'"),
        "0"
    );
    let out = remove("node-nobody");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node node-nobody"));
}

/// #26: a tenant rotates its key without copying data. `kek rotate-tenant`
/// re-seals the tenant layer of the tenant's records (its volume and a
/// snapshot of it) and leaves the cluster's other volumes alone; the new
/// key then stages the volume and a restore of the snapshot, and the old
/// key no longer opens them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_rotates_without_copying_data() {
    let mut e = env().await;
    let (old_key, new_key) = (hex::encode([3u8; 32]), hex::encode([4u8; 32]));
    let secrets = |k: &str| -> std::collections::HashMap<String, String> {
        [("tenantKey".to_string(), k.to_string())].into()
    };
    let id = e
        .ctl
        .create_volume(e.tenant_volume_req("tenant-rot", &old_key))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let plain = e.create("not-a-tenant", None).await;
    e.publish_with_key(&id, "t", &old_key).await;
    fs::write(e.path("pods/t/vol/data.txt"), b"tenant bytes").unwrap();
    fsync_file(&e.path("pods/t/vol/data.txt"));
    e.wait_head_reported(&id);
    let snap = e.snapshot(&id, "tenant-rot-snap").await;
    e.unpublish(&id, "t").await;

    let (old_file, new_file) = (e.path("tenant-old.hex"), e.path("tenant-new.hex"));
    fs::write(&old_file, &old_key).unwrap();
    fs::write(&new_file, &new_key).unwrap();
    let kek = e.path("kek");
    let rotate = || {
        e.cli(&[
            "kek",
            "rotate-tenant",
            "-o",
            "json",
            "--kek-file",
            kek.to_str().unwrap(),
            "--tenant-key-file",
            new_file.to_str().unwrap(),
            "--previous-tenant-key-file",
            old_file.to_str().unwrap(),
        ])
    };
    let out = rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["rewrapped"], 2,
        "the volume and its snapshot: {report}"
    );
    assert_eq!(
        report["other_tenant"], 1,
        "the plain volume is left alone: {report}"
    );
    let again: serde_json::Value = serde_json::from_slice(&rotate().stdout).unwrap();
    assert_eq!(again["rewrapped"], 0, "{again}");

    // The old key opens nothing now; the new one stages it, data intact.
    let mut with_old = e.stage_req(&id, rwx());
    with_old.secrets = secrets(&old_key);
    let (c, m) = code(e.node.node_stage_volume(with_old).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");
    e.publish_with_key(&id, "t2", &new_key).await;
    assert_eq!(
        fs::read(e.path("pods/t2/vol/data.txt")).unwrap(),
        b"tenant bytes"
    );
    // A restore of the snapshot, with the new key.
    let restored = e
        .ctl
        .create_volume(CreateVolumeRequest {
            name: "tenant-rot-restored".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![rwx()],
            volume_content_source: Some(VolumeContentSource {
                r#type: Some(SourceType::Snapshot(SnapshotSource { snapshot_id: snap })),
            }),
            secrets: secrets(&new_key),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    e.publish_with_key(&restored, "r2", &new_key).await;
    assert_eq!(
        fs::read(e.path("pods/r2/vol/data.txt")).unwrap(),
        b"tenant bytes"
    );
    // The plain volume still stages with no key at all.
    e.publish(&plain, "p").await;
}

/// #26: a volume has one first version. Two nodes stage a new volume at
/// the same moment: one claims the making of its first version in Postgres
/// and makes it, the other waits for it and fetches it, instead of each
/// making its own (two histories that would merge against nothing). Both
/// end up recording the same first version, the one Postgres holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_first_stages_make_one_first_version() {
    let mut e = env().await;
    let mut node_b = NodeClient::new(e.c.node("node-b").await);
    for round in 0..3 {
        let vol = e.create(&format!("born-once-{round}"), None).await;
        let on_a = e.stage_req(&vol, rwx());
        let mut on_b = e.stage_req(&vol, rwx());
        on_b.staging_target_path = e.path(&format!("staging-b/{vol}")).display().to_string();
        let mut node_a = e.node.clone();
        let (a, b) = tokio::join!(
            node_a.node_stage_volume(on_a),
            node_b.node_stage_volume(on_b)
        );
        a.unwrap();
        b.unwrap();
        let recorded =
            e.c.psql(&format!("SELECT genesis FROM volumes WHERE id = '{vol}'"));
        assert_eq!(
            recorded.len(),
            64,
            "the first version is recorded: {recorded:?}"
        );
        for node in ["node-a", "node-b"] {
            let local =
                fs::read_to_string(e.c.node_state(node).join("genesis").join(&vol)).unwrap();
            assert_eq!(local.trim(), recorded, "{node}'s copy begins elsewhere");
        }
    }
}

/// #28: `replicas` changes through ControllerModifyVolume (a
/// VolumeAttributesClass): raised, the leader places a copy on the idle
/// node, which holds it blind; lowered again, the copy is taken back once
/// the others are in sync. And a replica timeout shorter than three node
/// heartbeats is refused at the controller's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_change_through_modify_volume() {
    let mut e = env().await;
    let _node_b = NodeClient::new(e.c.node("node-b").await);
    let vol = e
        .ctl
        .create_volume(e.volume_req("modified", &[("replicas", "1")]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let pod = e.publish(&vol, "a").await;
    fs::write(pod.join("f.txt"), b"kept twice").unwrap();
    fsync_file(&pod.join("f.txt"));
    e.wait_head_reported(&vol);
    let assigned = |e: &Env| {
        e.c.psql(&format!(
            "SELECT string_agg(node_id, ',') FROM replicas WHERE volume_id = '{vol}'"
        ))
    };
    assert_eq!(assigned(&e), "", "one copy asked for, one held");
    let modify = |replicas: &str| ControllerModifyVolumeRequest {
        volume_id: vol.clone(),
        mutable_parameters: [("replicas".to_string(), replicas.to_string())].into(),
        ..Default::default()
    };
    e.ctl.controller_modify_volume(modify("2")).await.unwrap();
    wait_until("the leader places a second copy on node-b", 30, || {
        assigned(&e) == "node-b"
    });
    let held =
        e.c.node_state("node-b")
            .join("replicas")
            .join(&vol)
            .join("HEAD");
    wait_until("node-b holds the volume blind", 30, || held.exists());
    e.ctl.controller_modify_volume(modify("1")).await.unwrap();
    wait_until("the second copy is taken back", 30, || {
        assigned(&e).is_empty()
    });
    assert_eq!(fs::read(pod.join("f.txt")).unwrap(), b"kept twice");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jax-csi"))
        .args(["controller", "--replica-timeout-secs", "10", "--endpoint"])
        .arg(format!("unix://{}", e.path("refused.sock").display()))
        .args(["--database-url", &e.c.url(), "--kek-file"])
        .arg(e.path("kek"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--replica-timeout-secs 10: must be at least 15"),
        "{err}"
    );
}
