//! The controller binary on a real unix socket and a real Postgres, driven
//! with a tonic client exactly as the CSI sidecars drive it.

mod cluster;

use cluster::Cluster;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use jax_csi::crypto::{unwrap_layered, Kek, SecretKey, WrapContext, WrappedKey};
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::identity_client::IdentityClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use jax_csi::csi::proto::volume_content_source::{
    SnapshotSource, Type as SourceType, VolumeSource,
};
use jax_csi::csi::proto::*;
use tonic::Code;

fn cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_capabilities() {
    let mut c = Cluster::start();
    let ch = c.controller(0).await;
    let mut id = IdentityClient::new(ch.clone());
    let info = id
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.jax.dev");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = id
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let debug = format!("{caps:?}");
    assert!(
        debug.contains("VolumeExpansion") && debug.contains("Service"),
        "{debug}"
    );
    let mut ctl = ControllerClient::new(ch);
    let caps = ctl
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let types: HashSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    use controller_service_capability::rpc::Type as T;
    for t in [
        T::CreateDeleteVolume,
        T::CreateDeleteSnapshot,
        T::ListVolumes,
        T::ListSnapshots,
        T::CloneVolume,
        T::ExpandVolume,
        T::GetVolume,
        T::GetCapacity,
    ] {
        assert!(types.contains(&(t as i32)), "{t:?} not advertised");
    }
    assert!(!types.contains(&(T::PublishUnpublishVolume as i32)));
    let (c1, _) = code(
        ctl.controller_publish_volume(ControllerPublishVolumeRequest::default())
            .await,
    );
    let (c2, _) = code(
        ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest::default())
            .await,
    );
    assert_eq!((c1, c2), (Code::Unimplemented, Code::Unimplemented));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_volume_rules() {
    let mut c = Cluster::start();
    let mut ctl = ControllerClient::new(c.controller(0).await);
    let v = ctl
        .create_volume(create_req("pvc-1", 5 << 30))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.capacity_bytes, 5 << 30);
    assert_eq!(v.volume_id.len(), 32);
    // Idempotent repeat.
    let again = ctl
        .create_volume(create_req("pvc-1", 5 << 30))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    // Same name, incompatible request.
    let (code1, msg) = code(ctl.create_volume(create_req("pvc-1", 9 << 30)).await);
    assert_eq!(code1, Code::AlreadyExists, "{msg}");
    let mut other_params = create_req("pvc-1", 5 << 30);
    other_params
        .parameters
        .insert("chunkSize".into(), "262144".into());
    assert_eq!(
        code(ctl.create_volume(other_params).await).0,
        Code::AlreadyExists
    );
    // Missing and malformed fields name the field.
    let (k, m) = code(ctl.create_volume(create_req("", 1 << 30)).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("name"), "{m}");
    let mut no_caps = create_req("pvc-2", 1 << 30);
    no_caps.volume_capabilities.clear();
    let (k, m) = code(ctl.create_volume(no_caps).await);
    assert!(
        k == Code::InvalidArgument && m.contains("volume_capabilities"),
        "{m}"
    );
    let mut block = create_req("pvc-2", 1 << 30);
    block.volume_capabilities[0].access_type = Some(AccessType::Block(BlockVolume {}));
    let (k, m) = code(ctl.create_volume(block).await);
    assert!(k == Code::InvalidArgument && m.contains("block"), "{m}");
    let mut unknown_mode = create_req("pvc-2", 1 << 30);
    unknown_mode.volume_capabilities[0].access_mode = Some(AccessMode { mode: 0 });
    assert_eq!(
        code(ctl.create_volume(unknown_mode).await).0,
        Code::InvalidArgument
    );
    let mut bad_param = create_req("pvc-2", 1 << 30);
    bad_param.parameters.insert("chunkSise".into(), "1".into());
    let (k, m) = code(ctl.create_volume(bad_param).await);
    assert!(k == Code::InvalidArgument && m.contains("chunkSise"), "{m}");
    // Capacity the plugin cannot provide.
    let mut tiny = create_req("pvc-2", 10);
    tiny.capacity_range.as_mut().unwrap().limit_bytes = 100;
    assert_eq!(code(ctl.create_volume(tiny).await).0, Code::OutOfRange);
    assert_eq!(
        code(ctl.create_volume(create_req("pvc-2", 1 << 60)).await).0,
        Code::OutOfRange
    );
    // Every access mode we support, together.
    let mut all = create_req("pvc-modes", 1 << 30);
    all.volume_capabilities = vec![
        cap(Mode::SingleNodeWriter),
        cap(Mode::SingleNodeSingleWriter),
        cap(Mode::MultiNodeReaderOnly),
        cap(Mode::MultiNodeMultiWriter),
    ];
    ctl.create_volume(all).await.unwrap();
    // Unknown content sources.
    let mut from_missing = create_req("pvc-3", 1 << 30);
    from_missing.volume_content_source = Some(VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: "snap-nope".into(),
        })),
    });
    assert_eq!(
        code(ctl.create_volume(from_missing).await).0,
        Code::NotFound
    );

    // The bucket secret is stored only wrapped, and the KEK unwraps it.
    let hex_key = c.psql(&format!(
        "SELECT encode(wrapped_key, 'hex') FROM volumes WHERE id = '{}'",
        v.volume_id
    ));
    let wrapped = WrappedKey(hex::decode(hex_key).unwrap());
    assert_eq!(
        wrapped.0.len(),
        1 + 32 + 28,
        "layer tag, secret, tag and nonce"
    );
    let ctx = WrapContext::volume(&v.volume_id);
    unwrap_layered(&c.kek, None, &wrapped, &ctx, &ctx).expect("KEK opens the volume's secret");
    // Bound to its volume: the record copied under another id does not open.
    let elsewhere = WrapContext::volume("0123456789abcdef0123456789abcdef");
    assert!(unwrap_layered(&c.kek, None, &wrapped, &elsewhere, &elsewhere).is_err());

    // Tenant key: required when the StorageClass names one; wraps the same secret.
    let mut tenant = create_req("pvc-tenant", 1 << 30);
    tenant
        .parameters
        .insert("tenantKeySecret".into(), "team-a-key".into());
    let (k, m) = code(ctl.create_volume(tenant.clone()).await);
    assert!(k == Code::InvalidArgument && m.contains("tenantKey"), "{m}");
    assert!(!m.contains("deadbeef"));
    let tenant_key = SecretKey::generate().unwrap();
    tenant
        .secrets
        .insert("tenantKey".into(), hex::encode(tenant_key.expose()));
    let tv = ctl
        .create_volume(tenant)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let row = c.psql(&format!(
        "SELECT encode(wrapped_key, 'hex') || ',' || encode(tenant_wrapped_key, 'hex') FROM volumes WHERE id = '{}'",
        tv.volume_id
    ));
    let (by_kek, by_tenant) = row.split_once(',').unwrap();
    let ctx = WrapContext::volume(&tv.volume_id);
    let layered = WrappedKey(hex::decode(by_kek).unwrap());
    let tenant_kek = Kek::new(tenant_key);
    // Neither key alone opens a tenant's volume; both do.
    assert_eq!(
        unwrap_layered(&c.kek, None, &layered, &ctx, &ctx).unwrap_err(),
        jax_csi::crypto::UnwrapError::TenantKeyRequired
    );
    let s1 = unwrap_layered(&c.kek, Some(&tenant_kek), &layered, &ctx, &ctx).unwrap();
    let s2 = tenant_kek
        .unwrap_for(&WrappedKey(hex::decode(by_tenant).unwrap()), &ctx, false)
        .unwrap();
    assert_eq!(s1, s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_make_one_volume() {
    let mut c = Cluster::start();
    let ch = c.controller(0).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut ctl = ControllerClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            ctl.create_volume(create_req("racy", 1 << 30)).await
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(
            t.await
                .unwrap()
                .expect("every racer succeeds")
                .into_inner()
                .volume
                .unwrap()
                .volume_id,
        );
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        c.psql("SELECT count(*) FROM volumes WHERE name = 'racy'"),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_volumes_pages_without_loss_or_duplicates() {
    let mut c = Cluster::start();
    let mut ctl = ControllerClient::new(c.controller(0).await);
    let mut created = HashSet::new();
    for i in 0..250 {
        let v = ctl
            .create_volume(create_req(&format!("pv-{i:03}"), 1 << 30))
            .await
            .unwrap();
        created.insert(v.into_inner().volume.unwrap().volume_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = ctl
            .list_volumes(ListVolumesRequest {
                max_entries: 7,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 7);
        pages += 1;
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(pages, 36);
    assert_eq!(seen.len(), 250);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);
    let (k, _) = code(
        ctl.list_volumes(ListVolumesRequest {
            max_entries: 7,
            starting_token: "garbage".into(),
        })
        .await,
    );
    assert_eq!(k, Code::Aborted);
    let (k, _) = code(
        ctl.list_volumes(ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await,
    );
    assert_eq!(k, Code::InvalidArgument);
    let all = ctl
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.entries.len(), all.next_token.as_str()), (250, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_clones_and_deletes() {
    let mut c = Cluster::start();
    let mut ctl = ControllerClient::new(c.controller(0).await);
    let src = ctl
        .create_volume(create_req("src", 2 << 30))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // A node reported a head for the source volume.
    c.psql(&format!(
        "INSERT INTO bucket_heads (volume_id, node_id, head, height) VALUES ('{}', 'node-a', '{}', 3)",
        src.volume_id,
        "ab".repeat(32)
    ));
    let snap_req = |name: &str, source: &str| CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        ..Default::default()
    };
    let snap = ctl
        .create_snapshot(snap_req("snap-1", &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.source_volume_id, src.volume_id);
    assert!(snap.creation_time.is_some());
    let again = ctl
        .create_snapshot(snap_req("snap-1", &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    let other = ctl
        .create_volume(create_req("other", 1 << 30))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        code(
            ctl.create_snapshot(snap_req("snap-1", &other.volume_id))
                .await
        )
        .0,
        Code::AlreadyExists
    );
    assert_eq!(
        code(ctl.create_snapshot(snap_req("snap-x", "nope")).await).0,
        Code::NotFound
    );
    let (k, m) = code(ctl.create_snapshot(snap_req("", &src.volume_id)).await);
    assert!(k == Code::InvalidArgument && m.contains("name"));
    assert_eq!(
        c.psql(&format!(
            "SELECT head FROM snapshots WHERE id = '{}'",
            snap.snapshot_id
        )),
        "ab".repeat(32)
    );

    // Clone from the volume and restore from the snapshot: O(1) records of the source tree.
    let mut clone = create_req("clone", 2 << 30);
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(SourceType::Volume(VolumeSource {
            volume_id: src.volume_id.clone(),
        })),
    });
    let cv = ctl
        .create_volume(clone)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(matches!(
        cv.content_source.unwrap().r#type,
        Some(SourceType::Volume(_))
    ));
    let mut small = create_req("restore-small", 1 << 30);
    small.volume_content_source = Some(VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    assert_eq!(
        code(ctl.create_volume(small).await).0,
        Code::OutOfRange,
        "smaller than the snapshot"
    );

    // ListSnapshots filters and pages.
    for i in 0..5 {
        ctl.create_snapshot(snap_req(&format!("o-{i}"), &other.volume_id))
            .await
            .unwrap();
    }
    let by_source = ctl
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: other.volume_id.clone(),
            max_entries: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_source.entries.len(), 2);
    assert!(!by_source.next_token.is_empty());
    let rest = ctl
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: other.volume_id.clone(),
            starting_token: by_source.next_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len(), 3);
    let by_id = ctl
        .list_snapshots(ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.entries.len(), 1);
    let none = ctl
        .list_snapshots(ListSnapshotsRequest {
            snapshot_id: "snap-missing".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.entries.is_empty());
    assert_eq!(
        code(
            ctl.list_snapshots(ListSnapshotsRequest {
                starting_token: "x".into(),
                ..Default::default()
            })
            .await
        )
        .0,
        Code::Aborted
    );

    // Deleting the source keeps the snapshot usable.
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: src.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: src.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        c.psql(&format!(
            "SELECT count(*) FROM gc_queue WHERE volume_id = '{}'",
            src.volume_id
        )),
        "1"
    );
    let mut restore = create_req("restore", 2 << 30);
    restore.volume_content_source = Some(VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    let rv = ctl
        .create_volume(restore)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        c.psql(&format!(
            "SELECT source_head FROM volumes WHERE id = '{}'",
            rv.volume_id
        )),
        "ab".repeat(32)
    );
    let (k, _) = code(ctl.delete_volume(DeleteVolumeRequest::default()).await);
    assert_eq!(k, Code::InvalidArgument);
    ctl.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: snap.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    ctl.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: snap.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        code(ctl.delete_snapshot(DeleteSnapshotRequest::default()).await).0,
        Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_expand_get_and_capacity() {
    let mut c = Cluster::start();
    let mut ctl = ControllerClient::new(c.controller(0).await);
    let v = ctl
        .create_volume(create_req("vol", 1 << 30))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let ok = ctl
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
    // The volume was made for RWO: RWX is not confirmed.
    let other_mode = ctl
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![cap(Mode::MultiNodeMultiWriter)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        other_mode.confirmed.is_none() && other_mode.message.contains("access mode"),
        "{other_mode:?}"
    );
    // CreateVolume's idempotency compares the access modes too.
    let mut again = create_req("vol", 1 << 30);
    again.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter)];
    let (k, m) = code(ctl.create_volume(again).await);
    assert!(
        k == Code::AlreadyExists && m.contains("access modes"),
        "{m}"
    );
    let mut block = cap(Mode::SingleNodeWriter);
    block.access_type = Some(AccessType::Block(BlockVolume {}));
    let no = ctl
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![block],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty());
    let (k, _) = code(
        ctl.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: "missing".into(),
            volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(k, Code::NotFound);
    let (k, m) = code(
        ctl.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await,
    );
    assert!(k == Code::InvalidArgument && m.contains("volume_capabilities"));

    let grown = ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 3 << 30,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Running mounts learn the new size through NodeExpandVolume.
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (3 << 30, true)
    );
    let (k, m) = code(
        ctl.controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await,
    );
    assert!(k == Code::InvalidArgument && m.contains("capacity_range"));
    let (k, _) = code(
        ctl.controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: "missing".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 3 << 30,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(k, Code::NotFound);

    // A node publishes it, another node's mount failed.
    // Staged but not published on node-c: not in published_node_ids.
    c.psql(&format!(
        "INSERT INTO mounts (volume_id, node_id, staging_path, status, published) VALUES ('{0}', 'node-a', '/s', 'running', true); \
         INSERT INTO mounts (volume_id, node_id, staging_path, status) VALUES ('{0}', 'node-c', '/s', 'running'); \
         INSERT INTO mounts (volume_id, node_id, staging_path, status, message) VALUES ('{0}', 'node-b', '/s', 'error', 'fuse died')",
        v.volume_id
    ));
    let got = ctl
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 3 << 30);
    let status = got.status.unwrap();
    assert_eq!(status.published_node_ids, vec!["node-a".to_string()]);
    let cond = status.volume_condition.unwrap();
    assert!(
        cond.abnormal && cond.message.contains("fuse died"),
        "{cond:?}"
    );
    let listed = ctl
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let listed_status = listed.entries[0].status.as_ref().unwrap();
    assert_eq!(listed_status.published_node_ids, vec!["node-a".to_string()]);
    let listed_condition = listed_status.volume_condition.as_ref().unwrap();
    assert!(
        listed_condition.abnormal && listed_condition.message.contains("fuse died"),
        "ListVolumes fills the condition it advertises: {listed_condition:?}"
    );
    assert_eq!(
        code(
            ctl.controller_get_volume(ControllerGetVolumeRequest {
                volume_id: "x".into()
            })
            .await
        )
        .0,
        Code::NotFound
    );
    assert_eq!(
        code(
            ctl.controller_get_volume(ControllerGetVolumeRequest::default())
                .await
        )
        .0,
        Code::InvalidArgument
    );

    // Each node reports its own free space; a stale node does not count.
    c.psql(
        "INSERT INTO nodes (id, capacity_bytes, free_bytes) VALUES ('node-a', 10737418240, 4294967296), \
         ('node-b', 5368709120, 2147483648); \
         INSERT INTO nodes (id, capacity_bytes, free_bytes, last_seen) VALUES \
         ('node-gone', 1099511627776, 1099511627776, now() - interval '1 hour')",
    );
    let capacity = ctl
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capacity.available_capacity, 4 << 30);
    assert_eq!(capacity.maximum_volume_size, Some(4 << 30));

    // VolumeAttributesClass: the mutable parameters change, others do not.
    let modify = |params: &[(&str, &str)]| ControllerModifyVolumeRequest {
        volume_id: v.volume_id.clone(),
        mutable_parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    ctl.controller_modify_volume(modify(&[("historyRetention", "count=5,age=1d")]))
        .await
        .unwrap();
    assert_eq!(
        c.psql(&format!(
            "SELECT mutable_parameters FROM volumes WHERE id = '{}'",
            v.volume_id
        )),
        r#"{"historyRetention":"count=5,age=1d"}"#
    );
    for bad in [
        &[("chunkSize", "65536")][..],
        &[("bogus", "1")],
        &[("historyRetention", "forever")],
        &[("syncReplicas", "one")],
        // As many as the volume's replicas (2): no other replica to wait for.
        &[("syncReplicas", "2")],
    ] {
        let (k, m) = code(ctl.controller_modify_volume(modify(bad)).await);
        assert_eq!(k, Code::InvalidArgument, "{bad:?}: {m}");
    }
    // An empty map asks for no change (proto3 cannot tell it from a missing
    // one, and csi-sanity expects OK): the volume keeps what it had.
    ctl.controller_modify_volume(modify(&[])).await.unwrap();
    assert_eq!(
        c.psql(&format!(
            "SELECT mutable_parameters FROM volumes WHERE id = '{}'",
            v.volume_id
        )),
        r#"{"historyRetention":"count=5,age=1d"}"#
    );
    let mut missing = modify(&[("historyRetention", "count=1")]);
    missing.volume_id = "nope".into();
    assert_eq!(
        code(ctl.controller_modify_volume(missing).await).0,
        Code::NotFound
    );
    let caps = ctl
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.iter().any(|c| matches!(
        &c.r#type,
        Some(controller_service_capability::Type::Rpc(r))
            if r.r#type == controller_service_capability::rpc::Type::ModifyVolume as i32
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_gives_unavailable_not_a_hang() {
    let mut c = Cluster::start();
    let ch = c.controller(0).await;
    let mut ctl = ControllerClient::new(ch.clone());
    ctl.create_volume(create_req("before", 1 << 30))
        .await
        .unwrap();
    c.pg.take().unwrap().stop().unwrap();
    let start = Instant::now();
    let (k, m) = code(ctl.create_volume(create_req("after", 1 << 30)).await);
    assert_eq!(k, Code::Unavailable, "{m}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let (k, _) = code(ctl.list_volumes(ListVolumesRequest::default()).await);
    assert_eq!(k, Code::Unavailable);
    let probe = IdentityClient::new(ch)
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_and_replicas() {
    let mut c = Cluster::start();
    // A stale socket file (nobody listening) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(c.socket(0)).unwrap();
    drop(stale);
    assert!(c.socket(0).exists());
    let ch0 = c.controller(0).await;
    // A second process on a live socket refuses to start.
    let log0 = std::fs::read_to_string(c.log(0)).unwrap();
    let mut dup = c.spawn(0);
    let status = dup.wait().unwrap();
    assert!(!status.success());
    let err = std::fs::read_to_string(c.log(0)).unwrap();
    assert!(err.contains("already serving"), "{err}");
    assert!(log0.contains("removed a stale socket"), "{log0}");
    // Two replicas answer consistently; exactly one holds the leader lock.
    let ch1 = c.controller(1).await;
    let a = ControllerClient::new(ch0)
        .create_volume(create_req("shared", 1 << 30))
        .await
        .unwrap()
        .into_inner();
    let b = ControllerClient::new(ch1)
        .create_volume(create_req("shared", 1 << 30))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.volume.unwrap().volume_id, b.volume.unwrap().volume_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders =
            c.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted");
        if leaders == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "leaders: {leaders}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGTERM stops a controller cleanly and removes its socket.
    let mut first = c.controllers.remove(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(first.wait().unwrap().success());
    assert!(!c.socket(0).exists());
}

/// Clients of the C-core gRPC family (Python grpcio here) send the
/// percent-encoded socket path as `:authority`; every call must still work,
/// several on one connection (so the HPACK state is exercised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_core_grpc_client_is_answered() {
    let mut c = Cluster::start();
    c.controller(0).await;
    let socket = c.socket(0);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/grpcio_client.py"
            ))
            .arg(&socket)
            .args([
                "/csi.v1.Identity/GetPluginInfo",
                "/csi.v1.Identity/Probe",
                "/csi.v1.Controller/ListVolumes",
                "/csi.v1.Identity/GetPluginInfo",
            ])
            .output()
            .expect("python3 runs (scripts/install-deps.sh installs grpcio)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcio client failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(
        stdout.contains("GetPluginInfo ok 'csi.jax.dev'"),
        "{stdout}"
    );
}
