//! Malformed CSI requests, table-driven over every RPC of Identity,
//! Controller, GroupController, Node and the node's Admin service (on its
//! own socket; the CSI socket answers it UNIMPLEMENTED): each
//! required field missing, ids that are not ours (malformed, unknown, 1 MiB,
//! NUL, odd unicode), capacity ranges inverted, negative and huge, bad
//! capabilities, unknown and malformed parameters and secrets, paths that are
//! relative, climb with `..`, leave the kubelet dir, go through a symlink,
//! overlap another volume's paths or the node's state dir, and bytes that are
//! not the message at all (INTERNAL, gRPC's code for a request that does
//! not parse, with a message saying so). Each row names the gRPC code the CSI spec asks
//! for and a word the message must contain; after the table both servers
//! still answer, and /proc/self/mountinfo is what it was before it.

mod cluster;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Instant;

use cluster::Cluster;
use jax_csi::csi::admin_proto::admin_client::AdminClient;
use jax_csi::csi::admin_proto::{
    HistoryRequest, ListDirRequest, ReadFileRequest, RestoreRequest, VersionSelector,
};
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::group_controller_client::GroupControllerClient;
use jax_csi::csi::proto::identity_client::IdentityClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use jax_csi::csi::proto::volume_content_source::{
    SnapshotSource, Type as SourceType, VolumeSource,
};
use jax_csi::csi::proto::*;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// One bad (or, where the spec says it is fine, odd) request.
struct Case {
    rpc: &'static str,
    what: String,
    expect: Code,
    /// The message must contain this (the field or thing that is wrong).
    needle: String,
    call: Call,
}

#[derive(Default)]
struct Table {
    cases: Vec<Case>,
}

impl Table {
    fn add<T, F>(&mut self, rpc: &'static str, what: &str, expect: Code, needle: &str, call: F)
    where
        F: Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
    {
        self.cases.push(Case {
            rpc,
            what: what.to_string(),
            expect,
            needle: needle.to_string(),
            call: Box::pin(async move { call.await.map(|_| ()) }),
        });
    }
}

/// Add a row calling `$client.$method($req)`.
macro_rules! row {
    ($t:expr, $client:expr, $method:ident, $rpc:literal, $what:expr, $code:expr, $needle:expr, $req:expr) => {{
        let mut c = $client.clone();
        let req = $req;
        $t.add(
            $rpc,
            &$what,
            $code,
            $needle,
            async move { c.$method(req).await },
        );
    }};
}

fn mount_cap(mode: i32, group: &str, flags: &[&str]) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            volume_mount_group: group.into(),
        })),
        access_mode: Some(AccessMode { mode }),
    }
}

fn rwx() -> VolumeCapability {
    mount_cap(Mode::MultiNodeMultiWriter as i32, "", &[])
}

/// Capabilities that are wrong, with the word their error must name.
fn bad_caps() -> Vec<(&'static str, VolumeCapability, &'static str)> {
    let rw = Some(AccessMode {
        mode: Mode::SingleNodeWriter as i32,
    });
    vec![
        (
            "block access",
            VolumeCapability {
                access_type: Some(AccessType::Block(BlockVolume {})),
                access_mode: rw,
            },
            "block",
        ),
        (
            "no access type",
            VolumeCapability {
                access_type: None,
                access_mode: rw,
            },
            "access_type",
        ),
        (
            "no access mode",
            VolumeCapability {
                access_type: rwx().access_type,
                access_mode: None,
            },
            "access_mode",
        ),
        (
            "access mode UNKNOWN",
            mount_cap(Mode::Unknown as i32, "", &[]),
            "access_mode",
        ),
        ("access mode 42", mount_cap(42, "", &[]), "access_mode"),
        ("access mode -1", mount_cap(-1, "", &[]), "access_mode"),
    ]
}

/// Ids that name no volume (or snapshot) of ours, each with whether the
/// spec makes it INVALID_ARGUMENT (beyond its size limit, or a NUL) rather
/// than simply unknown.
fn bad_ids() -> Vec<(&'static str, String, bool)> {
    vec![
        ("a made-up id", "not-a-volume".into(), false),
        (
            "an unknown well-formed id",
            "00112233445566778899aabbccddeeff".into(),
            false,
        ),
        (
            "an upper-case hex id",
            "00112233445566778899AABBCCDDEEFF".into(),
            false,
        ),
        ("a traversal", "../../../etc/passwd".into(), false),
        (
            "odd unicode",
            "vol-\u{202e}\u{fffd}\u{1F4A9}\u{200b}\u{0301}".into(),
            false,
        ),
        ("a newline", "abc\ndef".into(), false),
        ("a 1 MiB id", "v".repeat(1 << 20), true),
        ("a 129-byte id", "a".repeat(129), true),
        ("a NUL byte", "abc\0def".into(), true),
    ]
}

fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn range(required_bytes: i64, limit_bytes: i64) -> Option<CapacityRange> {
    Some(CapacityRange {
        required_bytes,
        limit_bytes,
    })
}

/// Mounts as (mount point, source, fstype), sorted.
fn mounts() -> Vec<(String, String, String)> {
    let mut v: Vec<_> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| {
            let point = l.split(' ').nth(4).unwrap_or("").to_string();
            let after = l.split_once(" - ").map(|x| x.1).unwrap_or("");
            let mut f = after.split(' ');
            let fstype = f.next().unwrap_or("").to_string();
            let source = f.next().unwrap_or("").to_string();
            (point, source, fstype)
        })
        .collect();
    v.sort();
    v
}

/// A codec that sends and receives raw bytes: requests that are not the
/// message the method takes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn raw_call(ch: Channel, method: &'static str, body: Vec<u8>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(method),
        Raw,
    )
    .await
    .map(|_| ())
}

/// A length-delimited protobuf field.
fn field(n: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(n, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_malformed_requests_clearly_and_mounts_nothing() {
    let started = Instant::now();
    let mut c = Cluster::start();
    let ctl_ch = c.controller(0).await;
    let node_ch = c.node("node-a").await;
    let mut ctl = ControllerClient::new(ctl_ch.clone());
    let group = GroupControllerClient::new(ctl_ch.clone());
    let mut node = NodeClient::new(node_ch.clone());
    let admin_ch = c.node_admin("node-a").await;
    let admin = AdminClient::new(admin_ch.clone());
    let id_ctl = IdentityClient::new(ctl_ch.clone());
    let id_node = IdentityClient::new(node_ch.clone());
    let dir = c.dir.path().to_path_buf();
    let p = |rel: &str| dir.join(rel).display().to_string();

    // Two volumes staged and published, one created and never staged, and
    // a snapshot; then a symlink out of the kubelet dir and a plain file.
    let ctl_for_create = ctl.clone();
    let create = |name: &'static str| {
        let mut ctl = ctl_for_create.clone();
        async move {
            ctl.create_volume(CreateVolumeRequest {
                name: name.into(),
                capacity_range: range(64 << 20, 0),
                volume_capabilities: vec![rwx()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id
        }
    };
    let good = create("good").await;
    let second = create("second").await;
    let never = create("never-staged").await;
    let staging = |id: &str| p(&format!("staging/{id}"));
    for (id, pod) in [(&good, "p"), (&second, "q")] {
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging(id),
            volume_capability: Some(rwx()),
            ..Default::default()
        })
        .await
        .unwrap();
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging(id),
            target_path: p(&format!("pods/{pod}/vol")),
            volume_capability: Some(rwx()),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    std::fs::write(dir.join("pods/p/vol/file"), b"hello").unwrap();
    let snap = ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: never.clone(),
            name: "snap".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap()
        .snapshot_id;
    let outside =
        std::env::temp_dir().join(format!("jax-malformed-outside-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(dir.join("links")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("links/out")).unwrap();
    std::fs::write(dir.join("a-file"), b"not a directory").unwrap();
    let before = mounts();
    let outside_before: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(outside_before.is_empty());

    let huge = "x".repeat(1 << 20);
    let mut t = Table::default();
    let ia = Code::InvalidArgument;
    let nf = Code::NotFound;

    // ---- Identity (no fields: each answers on both sockets) ----
    for (sock, id) in [("controller", &id_ctl), ("node", &id_node)] {
        row!(
            t,
            id,
            get_plugin_info,
            "GetPluginInfo",
            sock,
            Code::Ok,
            "",
            GetPluginInfoRequest {}
        );
        row!(
            t,
            id,
            get_plugin_capabilities,
            "GetPluginCapabilities",
            sock,
            Code::Ok,
            "",
            GetPluginCapabilitiesRequest {}
        );
        row!(t, id, probe, "Probe", sock, Code::Ok, "", ProbeRequest {});
    }

    // ---- CreateVolume ----
    let cv = |name: &str| CreateVolumeRequest {
        name: name.into(),
        capacity_range: range(64 << 20, 0),
        volume_capabilities: vec![rwx()],
        ..Default::default()
    };
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "no name",
        ia,
        "name",
        CreateVolumeRequest {
            name: String::new(),
            ..cv("")
        }
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "empty request",
        ia,
        "name",
        CreateVolumeRequest::default()
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "1 MiB name",
        ia,
        "name",
        cv(&huge)
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "129-byte name",
        ia,
        "name",
        cv(&"n".repeat(129))
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "NUL in name",
        ia,
        "name",
        cv("a\0b")
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "escape in name",
        ia,
        "name",
        cv("a\u{1b}[31mred")
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "odd unicode name is a name",
        Code::Ok,
        "",
        cv("vol-\u{202e}\u{fffd}\u{1F4A9}\u{200b}")
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "no capabilities",
        ia,
        "volume_capabilities",
        CreateVolumeRequest {
            volume_capabilities: vec![],
            ..cv("nocaps")
        }
    );
    for (what, cap, needle) in bad_caps() {
        row!(
            t,
            ctl,
            create_volume,
            "CreateVolume",
            what,
            ia,
            needle,
            CreateVolumeRequest {
                volume_capabilities: vec![cap.clone()],
                ..cv("badcap")
            }
        );
        row!(
            t,
            ctl,
            create_volume,
            "CreateVolume",
            format!("{what} next to a good one"),
            ia,
            needle,
            CreateVolumeRequest {
                volume_capabilities: vec![rwx(), cap],
                ..cv("badcap2")
            }
        );
    }
    for (what, r, code, needle) in [
        (
            "required above limit",
            range(2 << 30, 1 << 30),
            Code::OutOfRange,
            "required_bytes",
        ),
        ("negative required", range(-1, 0), ia, "capacity_range"),
        ("negative limit", range(0, -1), ia, "capacity_range"),
        (
            "i64::MIN required",
            range(i64::MIN, 0),
            ia,
            "capacity_range",
        ),
        (
            "limit below the smallest volume",
            range(0, 10),
            Code::OutOfRange,
            "limit_bytes",
        ),
        (
            "required above the largest volume",
            range((1 << 50) + 1, 0),
            Code::OutOfRange,
            "largest",
        ),
        (
            "i64::MAX required",
            range(i64::MAX, 0),
            Code::OutOfRange,
            "largest",
        ),
        (
            "i64::MAX both",
            range(i64::MAX, i64::MAX),
            Code::OutOfRange,
            "largest",
        ),
    ] {
        row!(
            t,
            ctl,
            create_volume,
            "CreateVolume",
            what,
            code,
            needle,
            CreateVolumeRequest {
                capacity_range: r,
                ..cv("cap")
            }
        );
    }
    let big_key = format!("k{}", "y".repeat(1 << 20));
    for (what, params, needle) in [
        ("unknown parameter", map(&[("color", "red")]), "color"),
        ("empty parameter name", map(&[("", "x")]), "parameter"),
        (
            "chunkSize not a number",
            map(&[("chunkSize", "lots")]),
            "chunkSize",
        ),
        (
            "chunkSize not a power of two",
            map(&[("chunkSize", "100000")]),
            "chunkSize",
        ),
        (
            "chunkSize negative",
            map(&[("chunkSize", "-65536")]),
            "chunkSize",
        ),
        (
            "chunkSize too small",
            map(&[("chunkSize", "4096")]),
            "chunkSize",
        ),
        (
            "chunkSize too large",
            map(&[("chunkSize", "33554432")]),
            "chunkSize",
        ),
        (
            "chunkSize 1 MiB of digits",
            map(&[("chunkSize", &"9".repeat(1 << 20))]),
            "chunkSize",
        ),
        ("replicas 0", map(&[("replicas", "0")]), "replicas"),
        ("replicas 17", map(&[("replicas", "17")]), "replicas"),
        (
            "syncReplicas as many as replicas",
            map(&[("syncReplicas", "2")]),
            "syncReplicas",
        ),
        (
            "replicas not a number",
            map(&[("replicas", "one")]),
            "replicas",
        ),
        (
            "historyRetention garbage",
            map(&[("historyRetention", "lots")]),
            "historyRetention",
        ),
        (
            "historyRetention negative",
            map(&[("historyRetention", "count=-1")]),
            "historyRetention",
        ),
        (
            "tenantKeySecret empty",
            map(&[("tenantKeySecret", "")]),
            "tenantKeySecret",
        ),
        (
            "tenantKeySecret without the key",
            map(&[("tenantKeySecret", "s")]),
            "tenantKey",
        ),
        ("1 MiB parameter name", map(&[(&big_key, "v")]), "parameter"),
        (
            "NUL in a parameter name",
            map(&[("chunk\0Size", "65536")]),
            "parameter",
        ),
    ] {
        row!(
            t,
            ctl,
            create_volume,
            "CreateVolume",
            what,
            ia,
            needle,
            CreateVolumeRequest {
                parameters: params,
                ..cv("params")
            }
        );
    }
    for (what, params, needle) in [
        (
            "unknown mutable parameter",
            map(&[("color", "red")]),
            "color",
        ),
        (
            "immutable chunkSize as mutable",
            map(&[("chunkSize", "65536")]),
            "chunkSize",
        ),
        (
            "mutable historyRetention garbage",
            map(&[("historyRetention", "x")]),
            "historyRetention",
        ),
    ] {
        row!(
            t,
            ctl,
            create_volume,
            "CreateVolume",
            what,
            ia,
            needle,
            CreateVolumeRequest {
                mutable_parameters: params,
                ..cv("mutable")
            }
        );
    }
    for (what, secrets) in [
        ("tenantKey not hex", map(&[("tenantKey", "zz")])),
        ("tenantKey 63 hex", map(&[("tenantKey", &"a".repeat(63))])),
        ("tenantKey 66 hex", map(&[("tenantKey", &"a".repeat(66))])),
        ("tenantKey 1 MiB", map(&[("tenantKey", &huge)])),
    ] {
        row!(
            t,
            ctl,
            create_volume,
            "CreateVolume",
            what,
            ia,
            "tenantKey",
            CreateVolumeRequest {
                secrets,
                parameters: map(&[("tenantKeySecret", "s")]),
                ..cv("secrets")
            }
        );
    }
    let src = |t: Option<SourceType>| Some(VolumeContentSource { r#type: t });
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "content source without a type",
        ia,
        "volume_content_source",
        CreateVolumeRequest {
            volume_content_source: src(None),
            ..cv("src")
        }
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "empty snapshot source",
        ia,
        "snapshot_id",
        CreateVolumeRequest {
            volume_content_source: src(Some(SourceType::Snapshot(SnapshotSource::default()))),
            ..cv("src")
        }
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "empty volume source",
        ia,
        "volume_id",
        CreateVolumeRequest {
            volume_content_source: src(Some(SourceType::Volume(VolumeSource::default()))),
            ..cv("src")
        }
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "snapshot_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            ctl,
            create_volume,
            "CreateVolume",
            format!("snapshot source: {what}"),
            code,
            needle,
            CreateVolumeRequest {
                volume_content_source: src(Some(SourceType::Snapshot(SnapshotSource {
                    snapshot_id: id.clone()
                }))),
                ..cv("src")
            }
        );
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            ctl,
            create_volume,
            "CreateVolume",
            format!("volume source: {what}"),
            code,
            needle,
            CreateVolumeRequest {
                volume_content_source: src(Some(SourceType::Volume(VolumeSource {
                    volume_id: id
                }))),
                ..cv("src")
            }
        );
    }
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "clone smaller than its source",
        Code::OutOfRange,
        "smaller",
        CreateVolumeRequest {
            capacity_range: range(1 << 20, 0),
            volume_content_source: src(Some(SourceType::Volume(VolumeSource {
                volume_id: good.clone()
            }))),
            ..cv("small-clone")
        }
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "existing name, other capacity",
        Code::AlreadyExists,
        "capacity",
        CreateVolumeRequest {
            capacity_range: range(128 << 20, 128 << 20),
            ..cv("good")
        }
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "existing name, other parameters",
        Code::AlreadyExists,
        "parameters",
        CreateVolumeRequest {
            parameters: map(&[("chunkSize", "65536")]),
            ..cv("good")
        }
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "existing name, other access modes",
        Code::AlreadyExists,
        "access modes",
        CreateVolumeRequest {
            volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter as i32, "", &[])],
            ..cv("good")
        }
    );
    row!(
        t,
        ctl,
        create_volume,
        "CreateVolume",
        "existing name, other source",
        Code::AlreadyExists,
        "content source",
        CreateVolumeRequest {
            volume_content_source: src(Some(SourceType::Snapshot(SnapshotSource {
                snapshot_id: snap.clone()
            }))),
            ..cv("good")
        }
    );

    // ---- DeleteVolume ----
    row!(
        t,
        ctl,
        delete_volume,
        "DeleteVolume",
        "no volume_id",
        ia,
        "volume_id",
        DeleteVolumeRequest::default()
    );
    for (what, id, invalid) in bad_ids() {
        // Deleting what does not exist is done (idempotent), unless the id
        // is not even a valid string for the spec.
        let code = if invalid { ia } else { Code::Ok };
        row!(
            t,
            ctl,
            delete_volume,
            "DeleteVolume",
            what,
            code,
            "volume_id",
            DeleteVolumeRequest {
                volume_id: id,
                secrets: HashMap::new()
            }
        );
    }

    // ---- ControllerPublish / Unpublish (no attach step) ----
    row!(
        t,
        ctl,
        controller_publish_volume,
        "ControllerPublishVolume",
        "empty request",
        Code::Unimplemented,
        "attach",
        ControllerPublishVolumeRequest::default()
    );
    row!(
        t,
        ctl,
        controller_publish_volume,
        "ControllerPublishVolume",
        "1 MiB node id",
        Code::Unimplemented,
        "attach",
        ControllerPublishVolumeRequest {
            volume_id: good.clone(),
            node_id: huge.clone(),
            ..Default::default()
        }
    );
    row!(
        t,
        ctl,
        controller_unpublish_volume,
        "ControllerUnpublishVolume",
        "empty request",
        Code::Unimplemented,
        "attach",
        ControllerUnpublishVolumeRequest::default()
    );

    // ---- ValidateVolumeCapabilities ----
    let vvc = |id: &str| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: vec![rwx()],
        ..Default::default()
    };
    row!(
        t,
        ctl,
        validate_volume_capabilities,
        "ValidateVolumeCapabilities",
        "no volume_id",
        ia,
        "volume_id",
        vvc("")
    );
    row!(
        t,
        ctl,
        validate_volume_capabilities,
        "ValidateVolumeCapabilities",
        "no capabilities",
        ia,
        "volume_capabilities",
        ValidateVolumeCapabilitiesRequest {
            volume_capabilities: vec![],
            ..vvc(&good)
        }
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            ctl,
            validate_volume_capabilities,
            "ValidateVolumeCapabilities",
            what,
            code,
            needle,
            vvc(&id)
        );
    }
    for (what, cap, _) in bad_caps() {
        // Not confirmed, which is an answer, not an error.
        row!(
            t,
            ctl,
            validate_volume_capabilities,
            "ValidateVolumeCapabilities",
            what,
            Code::Ok,
            "",
            ValidateVolumeCapabilitiesRequest {
                volume_capabilities: vec![cap],
                ..vvc(&good)
            }
        );
    }
    row!(
        t,
        ctl,
        validate_volume_capabilities,
        "ValidateVolumeCapabilities",
        "unknown mutable parameter",
        ia,
        "color",
        ValidateVolumeCapabilitiesRequest {
            mutable_parameters: map(&[("color", "red")]),
            ..vvc(&good)
        }
    );

    // ---- ListVolumes / ListSnapshots ----
    for (what, token) in [
        ("token not a number", "garbage".to_string()),
        ("negative token", "-5".into()),
        ("1 MiB token", huge.clone()),
        ("NUL token", "1\u{0}2".into()),
        ("odd unicode token", "\u{0661}\u{0662}".into()),
    ] {
        row!(
            t,
            ctl,
            list_volumes,
            "ListVolumes",
            what,
            Code::Aborted,
            "starting_token",
            ListVolumesRequest {
                max_entries: 0,
                starting_token: token.clone()
            }
        );
        row!(
            t,
            ctl,
            list_snapshots,
            "ListSnapshots",
            what,
            Code::Aborted,
            "starting_token",
            ListSnapshotsRequest {
                starting_token: token,
                ..Default::default()
            }
        );
    }
    row!(
        t,
        ctl,
        list_volumes,
        "ListVolumes",
        "negative max_entries",
        ia,
        "max_entries",
        ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new()
        }
    );
    row!(
        t,
        ctl,
        list_volumes,
        "ListVolumes",
        "token past the end",
        Code::Ok,
        "",
        ListVolumesRequest {
            max_entries: 0,
            starting_token: i64::MAX.to_string()
        }
    );
    row!(
        t,
        ctl,
        list_snapshots,
        "ListSnapshots",
        "negative max_entries",
        ia,
        "max_entries",
        ListSnapshotsRequest {
            max_entries: i32::MIN,
            ..Default::default()
        }
    );
    for (what, id, invalid) in bad_ids() {
        // Filters that match nothing list nothing.
        let code = if invalid { ia } else { Code::Ok };
        row!(
            t,
            ctl,
            list_snapshots,
            "ListSnapshots",
            format!("snapshot_id filter: {what}"),
            code,
            "snapshot_id",
            ListSnapshotsRequest {
                snapshot_id: id.clone(),
                ..Default::default()
            }
        );
        row!(
            t,
            ctl,
            list_snapshots,
            "ListSnapshots",
            format!("source filter: {what}"),
            code,
            "source_volume_id",
            ListSnapshotsRequest {
                source_volume_id: id,
                ..Default::default()
            }
        );
    }

    // ---- GetCapacity ----
    row!(
        t,
        ctl,
        get_capacity,
        "GetCapacity",
        "unknown parameter",
        ia,
        "color",
        GetCapacityRequest {
            parameters: map(&[("color", "red")]),
            ..Default::default()
        }
    );
    row!(
        t,
        ctl,
        get_capacity,
        "GetCapacity",
        "bad chunkSize",
        ia,
        "chunkSize",
        GetCapacityRequest {
            parameters: map(&[("chunkSize", "7")]),
            ..Default::default()
        }
    );
    for (what, cap, _) in bad_caps() {
        // Capabilities we cannot serve have no capacity (an answer of 0).
        row!(
            t,
            ctl,
            get_capacity,
            "GetCapacity",
            what,
            Code::Ok,
            "",
            GetCapacityRequest {
                volume_capabilities: vec![cap],
                ..Default::default()
            }
        );
    }
    row!(
        t,
        ctl,
        controller_get_capabilities,
        "ControllerGetCapabilities",
        "empty",
        Code::Ok,
        "",
        ControllerGetCapabilitiesRequest {}
    );

    // ---- CreateSnapshot / DeleteSnapshot ----
    let cs = |source: &str, name: &str| CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        ..Default::default()
    };
    row!(
        t,
        ctl,
        create_snapshot,
        "CreateSnapshot",
        "no source_volume_id",
        ia,
        "source_volume_id",
        cs("", "s1")
    );
    row!(
        t,
        ctl,
        create_snapshot,
        "CreateSnapshot",
        "no name",
        ia,
        "name",
        cs(&good, "")
    );
    row!(
        t,
        ctl,
        create_snapshot,
        "CreateSnapshot",
        "1 MiB name",
        ia,
        "name",
        cs(&good, &huge)
    );
    row!(
        t,
        ctl,
        create_snapshot,
        "CreateSnapshot",
        "NUL in name",
        ia,
        "name",
        cs(&good, "s\0x")
    );
    row!(
        t,
        ctl,
        create_snapshot,
        "CreateSnapshot",
        "existing name, other source",
        Code::AlreadyExists,
        "another source",
        cs(&good, "snap")
    );
    row!(
        t,
        ctl,
        create_snapshot,
        "CreateSnapshot",
        "unknown parameter",
        ia,
        "color",
        CreateSnapshotRequest {
            parameters: map(&[("color", "red")]),
            ..cs(&good, "s-params")
        }
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "source_volume_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            ctl,
            create_snapshot,
            "CreateSnapshot",
            what,
            code,
            needle,
            cs(&id, "s-bad")
        );
    }
    row!(
        t,
        ctl,
        delete_snapshot,
        "DeleteSnapshot",
        "no snapshot_id",
        ia,
        "snapshot_id",
        DeleteSnapshotRequest::default()
    );
    for (what, id, invalid) in bad_ids() {
        let code = if invalid { ia } else { Code::Ok };
        row!(
            t,
            ctl,
            delete_snapshot,
            "DeleteSnapshot",
            what,
            code,
            "snapshot_id",
            DeleteSnapshotRequest {
                snapshot_id: id,
                secrets: HashMap::new()
            }
        );
    }

    // ---- ControllerExpandVolume ----
    let cev = |id: &str, r: Option<CapacityRange>| ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: r,
        ..Default::default()
    };
    row!(
        t,
        ctl,
        controller_expand_volume,
        "ControllerExpandVolume",
        "no volume_id",
        ia,
        "volume_id",
        cev("", range(128 << 20, 0))
    );
    row!(
        t,
        ctl,
        controller_expand_volume,
        "ControllerExpandVolume",
        "no capacity_range",
        ia,
        "capacity_range",
        cev(&good, None)
    );
    for (what, r, code, needle) in [
        (
            "required above limit",
            range(2 << 30, 1 << 30),
            Code::OutOfRange,
            "required_bytes",
        ),
        ("negative required", range(-1, 0), ia, "capacity_range"),
        ("negative limit", range(0, -5), ia, "capacity_range"),
        (
            "i64::MAX required",
            range(i64::MAX, 0),
            Code::OutOfRange,
            "largest",
        ),
        (
            "limit below the current size",
            range(0, 2 << 20),
            Code::OutOfRange,
            "limit_bytes",
        ),
    ] {
        row!(
            t,
            ctl,
            controller_expand_volume,
            "ControllerExpandVolume",
            what,
            code,
            needle,
            cev(&good, r)
        );
    }
    for (what, cap, needle) in bad_caps() {
        row!(
            t,
            ctl,
            controller_expand_volume,
            "ControllerExpandVolume",
            what,
            ia,
            needle,
            ControllerExpandVolumeRequest {
                volume_capability: Some(cap),
                ..cev(&good, range(128 << 20, 0))
            }
        );
    }
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            ctl,
            controller_expand_volume,
            "ControllerExpandVolume",
            what,
            code,
            needle,
            cev(&id, range(128 << 20, 0))
        );
    }

    // ---- ControllerGetVolume / ControllerModifyVolume ----
    row!(
        t,
        ctl,
        controller_get_volume,
        "ControllerGetVolume",
        "no volume_id",
        ia,
        "volume_id",
        ControllerGetVolumeRequest::default()
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            ctl,
            controller_get_volume,
            "ControllerGetVolume",
            what,
            code,
            needle,
            ControllerGetVolumeRequest { volume_id: id }
        );
    }
    let cmv = |id: &str, kv: &[(&str, &str)]| ControllerModifyVolumeRequest {
        volume_id: id.into(),
        mutable_parameters: map(kv),
        ..Default::default()
    };
    let keep = [("historyRetention", "count=5")];
    row!(
        t,
        ctl,
        controller_modify_volume,
        "ControllerModifyVolume",
        "no volume_id",
        ia,
        "volume_id",
        cmv("", &keep)
    );
    // The spec calls mutable_parameters REQUIRED, but a proto3 map cannot
    // be told missing from empty, and SPs "MUST NOT modify volumes based on
    // the absence of keys": an empty map changes nothing, and only whether
    // the volume exists is answered (csi-sanity sends it, expecting OK or
    // NOT_FOUND).
    row!(
        t,
        ctl,
        controller_modify_volume,
        "ControllerModifyVolume",
        "no mutable_parameters",
        Code::Ok,
        "",
        cmv(&good, &[])
    );
    row!(
        t,
        ctl,
        controller_modify_volume,
        "ControllerModifyVolume",
        "no mutable_parameters, unknown volume",
        nf,
        "does not exist",
        cmv("00112233445566778899aabbccddeeff", &[])
    );
    row!(
        t,
        ctl,
        controller_modify_volume,
        "ControllerModifyVolume",
        "unknown parameter",
        ia,
        "color",
        cmv(&good, &[("color", "red")])
    );
    row!(
        t,
        ctl,
        controller_modify_volume,
        "ControllerModifyVolume",
        "immutable chunkSize",
        ia,
        "chunkSize",
        cmv(&good, &[("chunkSize", "65536")])
    );
    row!(
        t,
        ctl,
        controller_modify_volume,
        "ControllerModifyVolume",
        "immutable tenantKeySecret",
        ia,
        "tenantKeySecret",
        cmv(&good, &[("tenantKeySecret", "s")])
    );
    row!(
        t,
        ctl,
        controller_modify_volume,
        "ControllerModifyVolume",
        "historyRetention garbage",
        ia,
        "historyRetention",
        cmv(&good, &[("historyRetention", "forever!")])
    );
    row!(
        t,
        ctl,
        controller_modify_volume,
        "ControllerModifyVolume",
        "1 MiB parameter name",
        ia,
        "mutable parameter",
        cmv(&good, &[(&big_key, "v")])
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            ctl,
            controller_modify_volume,
            "ControllerModifyVolume",
            what,
            code,
            needle,
            cmv(&id, &keep)
        );
    }

    // ---- GroupController ----
    row!(
        t,
        group,
        group_controller_get_capabilities,
        "GroupControllerGetCapabilities",
        "empty",
        Code::Ok,
        "",
        GroupControllerGetCapabilitiesRequest {}
    );
    let cg = |name: &str, ids: &[&str]| CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: ids.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    row!(
        t,
        group,
        create_volume_group_snapshot,
        "CreateVolumeGroupSnapshot",
        "no name",
        ia,
        "name",
        cg("", &[&good])
    );
    row!(
        t,
        group,
        create_volume_group_snapshot,
        "CreateVolumeGroupSnapshot",
        "1 MiB name",
        ia,
        "name",
        cg(&huge, &[&good])
    );
    row!(
        t,
        group,
        create_volume_group_snapshot,
        "CreateVolumeGroupSnapshot",
        "NUL in name",
        ia,
        "name",
        cg("g\0", &[&good])
    );
    row!(
        t,
        group,
        create_volume_group_snapshot,
        "CreateVolumeGroupSnapshot",
        "no source_volume_ids",
        ia,
        "source_volume_ids",
        cg("g1", &[])
    );
    row!(
        t,
        group,
        create_volume_group_snapshot,
        "CreateVolumeGroupSnapshot",
        "an empty member id",
        ia,
        "source_volume_ids",
        cg("g1", &[&good, ""])
    );
    row!(
        t,
        group,
        create_volume_group_snapshot,
        "CreateVolumeGroupSnapshot",
        "unknown parameter",
        ia,
        "color",
        CreateVolumeGroupSnapshotRequest {
            parameters: map(&[("color", "red")]),
            ..cg("g-params", &[&good])
        }
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "source_volume_ids")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            group,
            create_volume_group_snapshot,
            "CreateVolumeGroupSnapshot",
            format!("a member that is {what}"),
            code,
            needle,
            cg("g-bad", &[&good, &id])
        );
    }
    let gdel = |id: &str| DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        ..Default::default()
    };
    row!(
        t,
        group,
        delete_volume_group_snapshot,
        "DeleteVolumeGroupSnapshot",
        "no group_snapshot_id",
        ia,
        "group_snapshot_id",
        gdel("")
    );
    row!(
        t,
        group,
        get_volume_group_snapshot,
        "GetVolumeGroupSnapshot",
        "no group_snapshot_id",
        ia,
        "group_snapshot_id",
        GetVolumeGroupSnapshotRequest::default()
    );
    for (what, id, invalid) in bad_ids() {
        let code = if invalid { ia } else { Code::Ok };
        row!(
            t,
            group,
            delete_volume_group_snapshot,
            "DeleteVolumeGroupSnapshot",
            what,
            code,
            "group_snapshot_id",
            gdel(&id)
        );
        let (code, needle) = if invalid {
            (ia, "group_snapshot_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            group,
            get_volume_group_snapshot,
            "GetVolumeGroupSnapshot",
            what,
            code,
            needle,
            GetVolumeGroupSnapshotRequest {
                group_snapshot_id: id,
                ..Default::default()
            }
        );
    }

    // ---- Node: paths ----
    let outside_s = outside.display().to_string();
    let bad_paths: Vec<(&str, String, Code, &str)> = vec![
        ("relative", "staging/x".into(), ia, "absolute"),
        (
            "dot-dot traversal",
            format!("{}/staging/../../escape", dir.display()),
            ia,
            "clean",
        ),
        (
            "dot component",
            format!("{}/staging/./x", dir.display()),
            ia,
            "clean",
        ),
        (
            "double slash",
            format!("{}//staging/x", dir.display()),
            ia,
            "clean",
        ),
        (
            "outside the kubelet dir",
            outside_s.clone(),
            ia,
            "kubelet directory",
        ),
        ("/etc", "/etc".into(), ia, "kubelet directory"),
        ("the root", "/".into(), ia, "kubelet directory"),
        (
            "the kubelet dir itself",
            dir.display().to_string(),
            ia,
            "kubelet directory",
        ),
        (
            "a sibling with the kubelet dir as prefix",
            format!("{}x/staging", dir.display()),
            ia,
            "kubelet directory",
        ),
        (
            "NUL byte",
            format!("{}/staging/a\0b", dir.display()),
            ia,
            "NUL",
        ),
        (
            "1 MiB path",
            format!("{}/{}", dir.display(), "p".repeat(1 << 20)),
            ia,
            "4096",
        ),
        (
            "a symlink out of the kubelet dir",
            p("links/out/x"),
            ia,
            "symbolic link",
        ),
        ("a symlink itself", p("links/out"), ia, "symbolic link"),
        ("the node's state dir", p("nodes/node-a"), ia, "state"),
        (
            "inside the node's state dir",
            p("nodes/node-a/store"),
            ia,
            "state",
        ),
        ("above the node's state dir", p("nodes"), ia, "state"),
    ];

    // ---- NodeStageVolume ----
    let stage = |id: &str, path: &str| NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: path.into(),
        volume_capability: Some(rwx()),
        ..Default::default()
    };
    let never_staging = staging(&never);
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "empty request",
        ia,
        "volume_id",
        NodeStageVolumeRequest::default()
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "no volume_id",
        ia,
        "volume_id",
        stage("", &never_staging)
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "no staging_target_path",
        ia,
        "staging_target_path",
        stage(&never, "")
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "no volume_capability",
        ia,
        "volume_capability",
        NodeStageVolumeRequest {
            volume_capability: None,
            ..stage(&never, &never_staging)
        }
    );
    for (what, cap, needle) in bad_caps() {
        row!(
            t,
            node,
            node_stage_volume,
            "NodeStageVolume",
            what,
            ia,
            needle,
            NodeStageVolumeRequest {
                volume_capability: Some(cap),
                ..stage(&never, &never_staging)
            }
        );
    }
    for (what, group, flags, needle) in [
        (
            "mount group not a number",
            "staff",
            vec![],
            "volume_mount_group",
        ),
        ("mount group negative", "-1", vec![], "volume_mount_group"),
        (
            "mount group too big",
            "4294967296",
            vec![],
            "volume_mount_group",
        ),
        (
            "mount group 1 MiB",
            huge.as_str(),
            vec![],
            "volume_mount_group",
        ),
        ("unknown mount flag", "", vec!["bogus"], "mount_flags"),
        ("bind as a mount flag", "", vec!["bind"], "mount_flags"),
        (
            "remount as a mount flag",
            "",
            vec!["remount"],
            "mount_flags",
        ),
        ("option with a value", "", vec!["uid=0"], "mount_flags"),
        ("1 MiB mount flag", "", vec![huge.as_str()], "mount_flags"),
    ] {
        row!(
            t,
            node,
            node_stage_volume,
            "NodeStageVolume",
            what,
            ia,
            needle,
            NodeStageVolumeRequest {
                volume_capability: Some(mount_cap(
                    Mode::MultiNodeMultiWriter as i32,
                    group,
                    &flags
                )),
                ..stage(&never, &never_staging)
            }
        );
    }
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            node,
            node_stage_volume,
            "NodeStageVolume",
            what,
            code,
            needle,
            stage(&id, &p("staging/bad"))
        );
    }
    for (what, path, code, needle) in &bad_paths {
        row!(
            t,
            node,
            node_stage_volume,
            "NodeStageVolume",
            *what,
            *code,
            needle,
            stage(&never, path)
        );
    }
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "staging path is a file",
        Code::FailedPrecondition,
        "not a directory",
        stage(&never, &p("a-file"))
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "below a file",
        Code::FailedPrecondition,
        "staging_target_path",
        stage(&never, &p("a-file/x"))
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "another volume's staging path",
        Code::FailedPrecondition,
        &good,
        stage(&never, &staging(&good))
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "inside another volume's staging path",
        Code::FailedPrecondition,
        &good,
        stage(&never, &format!("{}/sub", staging(&good)))
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "another volume's target",
        Code::FailedPrecondition,
        &good,
        stage(&never, &p("pods/p/vol"))
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "over other volumes' paths",
        Code::FailedPrecondition,
        "staging_target_path",
        stage(&never, &p("pods"))
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "staged volume at a second path",
        Code::FailedPrecondition,
        "already staged",
        stage(&good, &p("staging/second-path"))
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "tenantKey not hex",
        ia,
        "tenantKey",
        NodeStageVolumeRequest {
            secrets: map(&[("tenantKey", "zz")]),
            ..stage(&never, &never_staging)
        }
    );
    row!(
        t,
        node,
        node_stage_volume,
        "NodeStageVolume",
        "tenantKey 1 MiB",
        ia,
        "tenantKey",
        NodeStageVolumeRequest {
            secrets: map(&[("tenantKey", &huge)]),
            ..stage(&never, &never_staging)
        }
    );

    // ---- NodeUnstageVolume ----
    let unstage = |id: &str, path: &str| NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: path.into(),
    };
    row!(
        t,
        node,
        node_unstage_volume,
        "NodeUnstageVolume",
        "empty request",
        ia,
        "volume_id",
        NodeUnstageVolumeRequest::default()
    );
    row!(
        t,
        node,
        node_unstage_volume,
        "NodeUnstageVolume",
        "no staging_target_path",
        ia,
        "staging_target_path",
        unstage(&good, "")
    );
    for (what, id, invalid) in bad_ids() {
        // Not staged here: done (idempotent); good's mount is left alone.
        let code = if invalid { ia } else { Code::Ok };
        row!(
            t,
            node,
            node_unstage_volume,
            "NodeUnstageVolume",
            format!("{what} at a staged path"),
            code,
            "volume_id",
            unstage(&id, &staging(&good))
        );
    }
    row!(
        t,
        node,
        node_unstage_volume,
        "NodeUnstageVolume",
        "another volume's id for a staged path",
        Code::Ok,
        "",
        unstage(&never, &staging(&good))
    );
    row!(
        t,
        node,
        node_unstage_volume,
        "NodeUnstageVolume",
        "another volume's id for its target",
        Code::Ok,
        "",
        unstage(&never, &p("pods/p/vol"))
    );
    row!(
        t,
        node,
        node_unstage_volume,
        "NodeUnstageVolume",
        "its own target as the staging path",
        Code::Ok,
        "",
        unstage(&good, &p("pods/p/vol"))
    );
    for (what, path, code, needle) in &bad_paths {
        row!(
            t,
            node,
            node_unstage_volume,
            "NodeUnstageVolume",
            *what,
            *code,
            needle,
            unstage(&good, path)
        );
    }

    // ---- NodePublishVolume ----
    let publish = |id: &str, staging_path: &str, target: &str| NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging_path.into(),
        target_path: target.into(),
        volume_capability: Some(rwx()),
        ..Default::default()
    };
    let good_staging = staging(&good);
    let fresh = p("pods/fresh/vol");
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "empty request",
        ia,
        "volume_id",
        NodePublishVolumeRequest::default()
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "no target_path",
        ia,
        "target_path",
        publish(&good, &good_staging, "")
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "no staging_target_path",
        Code::FailedPrecondition,
        "staging_target_path",
        publish(&good, "", &fresh)
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "no volume_capability",
        ia,
        "volume_capability",
        NodePublishVolumeRequest {
            volume_capability: None,
            ..publish(&good, &good_staging, &fresh)
        }
    );
    // Both missing (csi-sanity's request): the capability's INVALID_ARGUMENT
    // comes first; FAILED_PRECONDITION is the spec's code for a missing
    // staging path only.
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "no volume_capability and no staging_target_path",
        ia,
        "volume_capability",
        NodePublishVolumeRequest {
            volume_capability: None,
            ..publish(&good, "", &fresh)
        }
    );
    for (what, cap, needle) in bad_caps() {
        row!(
            t,
            node,
            node_publish_volume,
            "NodePublishVolume",
            what,
            ia,
            needle,
            NodePublishVolumeRequest {
                volume_capability: Some(cap),
                ..publish(&good, &good_staging, &fresh)
            }
        );
    }
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "unknown mount flag",
        ia,
        "mount_flags",
        NodePublishVolumeRequest {
            volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter as i32, "", &["bogus"])),
            ..publish(&good, &good_staging, &fresh)
        }
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else if what == "an unknown well-formed id" || what == "an upper-case hex id" {
            (Code::FailedPrecondition, "not staged")
        } else {
            (nf, "does not exist")
        };
        row!(
            t,
            node,
            node_publish_volume,
            "NodePublishVolume",
            what,
            code,
            needle,
            publish(&id, &good_staging, &fresh)
        );
    }
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "a volume never staged",
        Code::FailedPrecondition,
        "not staged",
        publish(&never, &never_staging, &fresh)
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "another volume's staged path",
        Code::FailedPrecondition,
        "not staged",
        publish(&never, &good_staging, &fresh)
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "a staged volume, wrong staging path",
        Code::FailedPrecondition,
        "not staged",
        publish(&good, &staging(&second), &fresh)
    );
    for (what, path, code, needle) in &bad_paths {
        row!(
            t,
            node,
            node_publish_volume,
            "NodePublishVolume",
            format!("target {what}"),
            *code,
            needle,
            publish(&good, &good_staging, path)
        );
        row!(
            t,
            node,
            node_publish_volume,
            "NodePublishVolume",
            format!("staging {what}"),
            *code,
            needle,
            publish(&good, path, &fresh)
        );
    }
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "target equal to staging",
        ia,
        "target_path",
        publish(&good, &good_staging, &good_staging)
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "target inside staging",
        ia,
        "target_path",
        publish(&good, &good_staging, &format!("{good_staging}/t"))
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "staging inside target",
        ia,
        "target_path",
        publish(&good, &good_staging, &p("staging"))
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "another volume's target",
        Code::AlreadyExists,
        &second,
        publish(&good, &good_staging, &p("pods/q/vol"))
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "inside another volume's target",
        Code::FailedPrecondition,
        &second,
        publish(&good, &good_staging, &p("pods/q/vol/sub"))
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "inside its own target",
        Code::FailedPrecondition,
        &good,
        publish(&good, &good_staging, &p("pods/p/vol/sub"))
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "another volume's staging path",
        Code::FailedPrecondition,
        &second,
        publish(&good, &good_staging, &staging(&second))
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "over other volumes' targets",
        Code::FailedPrecondition,
        "target_path",
        publish(&good, &good_staging, &p("pods"))
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "published read-write, asked read-only",
        Code::AlreadyExists,
        "read-only",
        NodePublishVolumeRequest {
            readonly: true,
            ..publish(&good, &good_staging, &p("pods/p/vol"))
        }
    );
    row!(
        t,
        node,
        node_publish_volume,
        "NodePublishVolume",
        "target is a file",
        Code::FailedPrecondition,
        "target_path",
        publish(&good, &good_staging, &p("a-file"))
    );

    // ---- NodeUnpublishVolume ----
    let unpublish = |id: &str, target: &str| NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
    };
    row!(
        t,
        node,
        node_unpublish_volume,
        "NodeUnpublishVolume",
        "empty request",
        ia,
        "volume_id",
        NodeUnpublishVolumeRequest::default()
    );
    row!(
        t,
        node,
        node_unpublish_volume,
        "NodeUnpublishVolume",
        "no target_path",
        ia,
        "target_path",
        unpublish(&good, "")
    );
    for (what, id, invalid) in bad_ids() {
        let code = if invalid { ia } else { Code::Ok };
        row!(
            t,
            node,
            node_unpublish_volume,
            "NodeUnpublishVolume",
            format!("{what} at a published target"),
            code,
            "volume_id",
            unpublish(&id, &p("pods/p/vol"))
        );
    }
    row!(
        t,
        node,
        node_unpublish_volume,
        "NodeUnpublishVolume",
        "another volume's id for a target",
        Code::Ok,
        "",
        unpublish(&second, &p("pods/p/vol"))
    );
    row!(
        t,
        node,
        node_unpublish_volume,
        "NodeUnpublishVolume",
        "a staging path as the target",
        Code::Ok,
        "",
        unpublish(&good, &good_staging)
    );
    for (what, path, code, needle) in &bad_paths {
        row!(
            t,
            node,
            node_unpublish_volume,
            "NodeUnpublishVolume",
            *what,
            *code,
            needle,
            unpublish(&good, path)
        );
    }

    // ---- NodeGetVolumeStats ----
    let stats = |id: &str, path: &str| NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    row!(
        t,
        node,
        node_get_volume_stats,
        "NodeGetVolumeStats",
        "empty request",
        ia,
        "volume_id",
        NodeGetVolumeStatsRequest::default()
    );
    row!(
        t,
        node,
        node_get_volume_stats,
        "NodeGetVolumeStats",
        "no volume_path",
        ia,
        "volume_path",
        stats(&good, "")
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "not staged")
        };
        row!(
            t,
            node,
            node_get_volume_stats,
            "NodeGetVolumeStats",
            what,
            code,
            needle,
            stats(&id, &p("pods/p/vol"))
        );
    }
    row!(
        t,
        node,
        node_get_volume_stats,
        "NodeGetVolumeStats",
        "another volume's path",
        nf,
        "not a path",
        stats(&good, &p("pods/q/vol"))
    );
    row!(
        t,
        node,
        node_get_volume_stats,
        "NodeGetVolumeStats",
        "a path of nothing",
        nf,
        "not a path",
        stats(&good, &p("nowhere"))
    );
    // volume_path is only looked up here (nothing is mounted at it): a path
    // that is not one of the volume's is the spec's NOT_FOUND ("does not
    // exist on the specified volume_path"), which csi-sanity asks for a
    // relative path; the message still says what is wrong with it.
    for (what, path, _, needle) in &bad_paths {
        row!(
            t,
            node,
            node_get_volume_stats,
            "NodeGetVolumeStats",
            *what,
            nf,
            needle,
            stats(&good, path)
        );
    }
    row!(
        t,
        node,
        node_get_volume_stats,
        "NodeGetVolumeStats",
        "an unknown volume at a relative path",
        nf,
        "not staged",
        stats("00112233445566778899aabbccddeeff", "some/path")
    );

    // ---- NodeExpandVolume ----
    let nev = |id: &str, path: &str, r: Option<CapacityRange>| NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        capacity_range: r,
        ..Default::default()
    };
    let gp = p("pods/p/vol");
    row!(
        t,
        node,
        node_expand_volume,
        "NodeExpandVolume",
        "empty request",
        ia,
        "volume_id",
        NodeExpandVolumeRequest::default()
    );
    row!(
        t,
        node,
        node_expand_volume,
        "NodeExpandVolume",
        "no volume_path",
        ia,
        "volume_path",
        nev(&good, "", range(64 << 20, 0))
    );
    for (what, r, code, needle) in [
        ("negative required", range(-1, 0), ia, "capacity_range"),
        ("negative limit", range(0, i64::MIN), ia, "capacity_range"),
        (
            "required above limit",
            range(2 << 30, 1 << 30),
            Code::OutOfRange,
            "required_bytes",
        ),
        (
            "i64::MAX required",
            range(i64::MAX, 0),
            Code::OutOfRange,
            "largest",
        ),
        (
            "above the largest volume",
            range(0, (1 << 50) + 1),
            Code::OutOfRange,
            "largest",
        ),
    ] {
        row!(
            t,
            node,
            node_expand_volume,
            "NodeExpandVolume",
            what,
            code,
            needle,
            nev(&good, &gp, r)
        );
    }
    for (what, cap, needle) in bad_caps() {
        row!(
            t,
            node,
            node_expand_volume,
            "NodeExpandVolume",
            what,
            ia,
            needle,
            NodeExpandVolumeRequest {
                volume_capability: Some(cap),
                ..nev(&good, &gp, range(64 << 20, 0))
            }
        );
    }
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "not staged")
        };
        row!(
            t,
            node,
            node_expand_volume,
            "NodeExpandVolume",
            what,
            code,
            needle,
            nev(&id, &gp, range(64 << 20, 0))
        );
    }
    row!(
        t,
        node,
        node_expand_volume,
        "NodeExpandVolume",
        "another volume's path",
        nf,
        "not a path",
        nev(&good, &p("pods/q/vol"), range(64 << 20, 0))
    );
    // As for NodeGetVolumeStats: volume_path is a lookup, so NOT_FOUND.
    for (what, path, _, needle) in &bad_paths {
        row!(
            t,
            node,
            node_expand_volume,
            "NodeExpandVolume",
            *what,
            nf,
            needle,
            nev(&good, path, range(64 << 20, 0))
        );
    }
    row!(
        t,
        node,
        node_expand_volume,
        "NodeExpandVolume",
        "an unknown volume at a relative path",
        nf,
        "not staged",
        nev("00112233445566778899aabbccddeeff", "some/path", None)
    );
    row!(
        t,
        node,
        node_get_capabilities,
        "NodeGetCapabilities",
        "empty",
        Code::Ok,
        "",
        NodeGetCapabilitiesRequest {}
    );
    row!(
        t,
        node,
        node_get_info,
        "NodeGetInfo",
        "empty",
        Code::Ok,
        "",
        NodeGetInfoRequest {}
    );

    // ---- Admin (the operator's service on the node socket) ----
    let sel = |version: &str, at: Option<i64>| {
        Some(VersionSelector {
            version: version.into(),
            at_unix_seconds: at,
        })
    };
    let ld = |id: &str, path: &str| ListDirRequest {
        volume_id: id.into(),
        path: path.into(),
        select: None,
    };
    row!(
        t,
        admin,
        list_dir,
        "Admin.ListDir",
        "no volume_id",
        ia,
        "volume_id",
        ld("", "/")
    );
    for (what, id, invalid) in bad_ids() {
        let (code, needle) = if invalid {
            (ia, "volume_id")
        } else {
            (nf, "no replica")
        };
        row!(
            t,
            admin,
            list_dir,
            "Admin.ListDir",
            what,
            code,
            needle,
            ld(&id, "/")
        );
        row!(
            t,
            admin,
            history,
            "Admin.History",
            what,
            code,
            needle,
            HistoryRequest {
                volume_id: id.clone()
            }
        );
        row!(
            t,
            admin,
            read_file,
            "Admin.ReadFile",
            what,
            code,
            needle,
            ReadFileRequest {
                volume_id: id.clone(),
                path: "/file".into(),
                select: None
            }
        );
        row!(
            t,
            admin,
            restore,
            "Admin.Restore",
            what,
            code,
            needle,
            RestoreRequest {
                volume_id: id,
                select: sel("1", None)
            }
        );
    }
    for (what, path, code, needle) in [
        ("a traversal", "/../../../etc", ia, "reserved"),
        ("dot-dot", "..", ia, "reserved"),
        ("a file", "/file", ia, "not a directory"),
        ("a missing directory", "/nope", nf, "no such file"),
        ("NUL", "/a\0b", ia, "NUL"),
        ("1 MiB path", huge.as_str(), ia, "255"),
    ] {
        row!(
            t,
            admin,
            list_dir,
            "Admin.ListDir",
            what,
            code,
            needle,
            ld(&good, path)
        );
    }
    for (what, s, needle) in [
        ("version garbage", sel("garbage", None), "version"),
        ("version and time", sel("1", Some(5)), "not both"),
        ("version 1 MiB", sel(&huge, None), "version"),
        ("no such height", sel("999999", None), "height"),
        ("no such hash", sel(&"ab".repeat(32), None), "no version"),
        ("a time before any version", sel("", Some(-1)), "no version"),
    ] {
        row!(
            t,
            admin,
            list_dir,
            "Admin.ListDir",
            what,
            ia,
            needle,
            ListDirRequest {
                select: s.clone(),
                ..ld(&good, "/")
            }
        );
        row!(
            t,
            admin,
            restore,
            "Admin.Restore",
            what,
            ia,
            needle,
            RestoreRequest {
                volume_id: good.clone(),
                select: s
            }
        );
    }
    row!(
        t,
        admin,
        read_file,
        "Admin.ReadFile",
        "no volume_id",
        ia,
        "volume_id",
        ReadFileRequest::default()
    );
    row!(
        t,
        admin,
        read_file,
        "Admin.ReadFile",
        "no path",
        ia,
        "path",
        ReadFileRequest {
            volume_id: good.clone(),
            ..Default::default()
        }
    );
    row!(
        t,
        admin,
        read_file,
        "Admin.ReadFile",
        "a directory",
        ia,
        "regular file",
        ReadFileRequest {
            volume_id: good.clone(),
            path: "/".into(),
            select: None
        }
    );
    row!(
        t,
        admin,
        read_file,
        "Admin.ReadFile",
        "a traversal",
        ia,
        "reserved",
        ReadFileRequest {
            volume_id: good.clone(),
            path: "/../../etc/passwd".into(),
            select: None
        }
    );
    row!(
        t,
        admin,
        read_file,
        "Admin.ReadFile",
        "a missing file",
        nf,
        "no such file",
        ReadFileRequest {
            volume_id: good.clone(),
            path: "/nope".into(),
            select: None
        }
    );
    row!(
        t,
        admin,
        history,
        "Admin.History",
        "no volume_id",
        ia,
        "volume_id",
        HistoryRequest::default()
    );
    row!(
        t,
        admin,
        restore,
        "Admin.Restore",
        "no volume_id",
        ia,
        "volume_id",
        RestoreRequest::default()
    );
    row!(
        t,
        admin,
        restore,
        "Admin.Restore",
        "no selector",
        ia,
        "needs a version",
        RestoreRequest {
            volume_id: good.clone(),
            select: None
        }
    );

    // ---- Bytes that are not the message ----
    let name_as_varint = vec![0x08, 0x01];
    let bad_utf8 = field(1, &[0xff, 0xfe, 0x00]);
    let truncated = vec![0x0a, 0x05, b'a'];
    let capacity_as_string = [field(1, b"raw"), field(2, &field(1, b"lots"))].concat();
    let mount = rwx().encode_to_vec();
    let block = VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: None,
    }
    .encode_to_vec();
    let mount_then_block = [
        field(1, b"both-mb"),
        field(3, &[mount.clone(), block.clone()].concat()),
    ]
    .concat();
    // Protobuf's oneof: the last member on the wire wins, so this is a mount.
    let block_then_mount = [field(1, b"both-bm"), field(3, &[block, mount].concat())].concat();
    for (rpc, method, what, body, code, needle) in [
        (
            "CreateVolume",
            "/csi.v1.Controller/CreateVolume",
            "name sent as a varint",
            name_as_varint.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "CreateVolume",
            "/csi.v1.Controller/CreateVolume",
            "name not UTF-8",
            bad_utf8.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "CreateVolume",
            "/csi.v1.Controller/CreateVolume",
            "truncated message",
            truncated.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "CreateVolume",
            "/csi.v1.Controller/CreateVolume",
            "capacity sent as a string",
            capacity_as_string,
            Code::Internal,
            "decode",
        ),
        (
            "CreateVolume",
            "/csi.v1.Controller/CreateVolume",
            "capability: mount, then block",
            mount_then_block,
            ia,
            "block",
        ),
        (
            "CreateVolume",
            "/csi.v1.Controller/CreateVolume",
            "capability: block, then mount",
            block_then_mount,
            Code::Ok,
            "",
        ),
        (
            "DeleteVolume",
            "/csi.v1.Controller/DeleteVolume",
            "volume_id not UTF-8",
            bad_utf8.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "NodeStageVolume",
            "/csi.v1.Node/NodeStageVolume",
            "volume_id not UTF-8",
            bad_utf8.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "NodeStageVolume",
            "/csi.v1.Node/NodeStageVolume",
            "volume_id sent as a varint",
            name_as_varint.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "NodePublishVolume",
            "/csi.v1.Node/NodePublishVolume",
            "truncated message",
            truncated.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "CreateVolumeGroupSnapshot",
            "/csi.v1.GroupController/CreateVolumeGroupSnapshot",
            "name not UTF-8",
            bad_utf8.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "Admin.ListDir",
            "/jaxcsi.admin.v1.Admin/ListDir",
            "volume_id not UTF-8",
            bad_utf8.clone(),
            Code::Internal,
            "decode",
        ),
        (
            "Probe",
            "/csi.v1.Identity/Probe",
            "junk",
            vec![0xff; 8],
            Code::Internal,
            "decode",
        ),
    ] {
        let ch = if method.starts_with("/csi.v1.Node") {
            node_ch.clone()
        } else if method.starts_with("/jaxcsi") {
            admin_ch.clone()
        } else {
            ctl_ch.clone()
        };
        t.cases.push(Case {
            rpc,
            what: what.to_string(),
            expect: code,
            needle: needle.to_string(),
            call: Box::pin(raw_call(ch, method, body)),
        });
    }

    // The CSI socket (what the sidecars reach) does not serve Admin.
    t.cases.push(Case {
        rpc: "Admin.ListDir",
        what: "on the CSI socket".into(),
        expect: Code::Unimplemented,
        needle: String::new(),
        call: Box::pin(raw_call(
            node_ch.clone(),
            "/jaxcsi.admin.v1.Admin/ListDir",
            ListDirRequest {
                volume_id: good.clone(),
                path: "/".into(),
                select: None,
            }
            .encode_to_vec(),
        )),
    });

    // ---- Run the table ----
    let inputs = t.cases.len();
    let mut rpcs: Vec<&str> = t.cases.iter().map(|c| c.rpc).collect();
    rpcs.sort();
    rpcs.dedup();
    let mut failures = Vec::new();
    for case in t.cases {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), case.call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in 10 s")));
        let (code, message) = match &got {
            Ok(()) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_string()),
        };
        let short: String = message.chars().take(300).collect();
        let wrong = if code != case.expect {
            Some(format!("code {code:?}, expected {:?}", case.expect))
        } else if code != Code::Ok && !message.contains(&case.needle) {
            Some(format!("message does not name {:?}", case.needle))
        } else if message.len() > 1024 {
            Some(format!("message of {} bytes", message.len()))
        } else {
            None
        };
        if let Some(why) = wrong {
            failures.push(format!("{} / {}: {why}: {short:?}", case.rpc, case.what));
        }
    }

    // ---- Still alive, nothing mounted, nothing created outside ----
    // Only mounts of this cluster: other tests may mount and unmount
    // on this machine meanwhile.
    let ids: Vec<String> = c
        .psql("SELECT id FROM volumes")
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    let ours = |m: &&(String, String, String)| {
        Path::new(&m.0).starts_with(&dir)
            || Path::new(&m.0).starts_with(&outside)
            || m.1
                .strip_prefix("jax:")
                .is_some_and(|v| ids.iter().any(|i| i == v))
    };
    let before: Vec<_> = before.iter().filter(ours).cloned().collect();
    let after: Vec<_> = mounts().iter().filter(ours).cloned().collect();
    let added: Vec<_> = after.iter().filter(|m| !before.contains(m)).collect();
    let removed: Vec<_> = before.iter().filter(|m| !after.contains(m)).collect();
    if !added.is_empty() || !removed.is_empty() {
        failures.push(format!(
            "mounts changed: added {added:?}, removed {removed:?}"
        ));
    }
    let fuse =
        |m: &[(String, String, String)]| m.iter().filter(|x| x.2.starts_with("fuse")).count();
    assert_eq!(fuse(&before), fuse(&after), "no new FUSE mounts");
    let outside_after: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    if !outside_after.is_empty() {
        failures.push(format!(
            "created outside the kubelet dir: {outside_after:?}"
        ));
    }
    assert_eq!(
        std::fs::read(dir.join("pods/p/vol/file")).unwrap(),
        b"hello"
    );
    for id in [&id_ctl, &id_node] {
        let r = id
            .clone()
            .probe(ProbeRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.ready, Some(true));
    }
    let fresh_vol = create("after-the-table").await;
    node.node_stage_volume(stage(&fresh_vol, &staging(&fresh_vol)))
        .await
        .expect("a valid stage after the table");
    node.node_publish_volume(publish(
        &fresh_vol,
        &staging(&fresh_vol),
        &p("pods/after/vol"),
    ))
    .await
    .expect("a valid publish after the table");
    std::fs::write(dir.join("pods/after/vol/x"), b"ok").unwrap();
    node.node_unpublish_volume(unpublish(&fresh_vol, &p("pods/after/vol")))
        .await
        .unwrap();
    node.node_unstage_volume(unstage(&fresh_vol, &staging(&fresh_vol)))
        .await
        .unwrap();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: fresh_vol,
        secrets: HashMap::new(),
    })
    .await
    .unwrap();
    std::fs::remove_dir_all(&outside).ok();

    println!(
        "malformed requests: {inputs} inputs over {} RPCs ({}), {} failures, {:.1} s",
        rpcs.len(),
        rpcs.join(", "),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {inputs} inputs answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
