//! Keys never leak: a full scenario (a volume with a tenant key, staged,
//! written, snapshotted, restored into a new volume, requests with wrong
//! keys refused) runs with known secrets, then every Postgres row, every
//! log line, every gRPC error, the metrics and the node's state directory
//! are searched for the cluster KEK, the tenant key and the bucket secret,
//! in raw bytes, hex, base64 and Rust's debug form.

mod cluster;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use base64::Engine;
use cluster::Cluster;
use jax_csi::bucket::StateDir;
use jax_csi::crypto::{Kek, SecretKey};
use jax_csi::csi::proto::controller_client::ControllerClient;
use jax_csi::csi::proto::node_client::NodeClient;
use jax_csi::csi::proto::volume_capability::access_mode::Mode;
use jax_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use jax_csi::csi::proto::*;

const KEK: [u8; 32] = [0xA7; 32];
const TENANT: [u8; 32] = [
    0x5c, 0x11, 0xe0, 0x3d, 0x42, 0x9a, 0x07, 0xbb, 0x6f, 0x18, 0xc4, 0x2e, 0x91, 0x3a, 0x77, 0x0d,
    0xe5, 0x62, 0x19, 0xfa, 0x8b, 0x34, 0xc0, 0x5e, 0x2d, 0x93, 0x4f, 0x81, 0x16, 0xab, 0x70, 0xc9,
];

fn rwo() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Every way a 32-byte secret could be written down.
fn forms(name: &str, key: &[u8; 32]) -> Vec<(String, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let b64_nopad = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key);
    let b64_url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let debug = format!("{:?}", &key[..8]);
    let debug = debug.trim_end_matches(']').to_string();
    vec![
        (format!("{name} raw"), key.to_vec()),
        (format!("{name} hex"), hex::encode(key).into_bytes()),
        (format!("{name} HEX"), hex::encode_upper(key).into_bytes()),
        (format!("{name} base64"), b64.into_bytes()),
        (format!("{name} base64 unpadded"), b64_nopad.into_bytes()),
        (format!("{name} base64url"), b64_url.into_bytes()),
        (format!("{name} debug"), debug.into_bytes()),
    ]
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` (what a disk holds), excluding `skip`.
fn files_under(dir: &Path, skip: &[&Path]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_postgres_logs_errors_metrics_or_disk() {
    let mut c = Cluster::start();
    // Known keys: the cluster KEK (the file every process reads) and a tenant key.
    let kek = Kek::new(SecretKey::from_bytes(KEK));
    kek.write_file(&c.dir.path().join("kek")).unwrap();
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut ctl = ControllerClient::new(c.controller(0).await);
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut node = NodeClient::new(
        c.node_with("n1", "127.0.0.1:0", |cmd| {
            cmd.args(["--metrics-addr", &metrics_addr])
                .env("RUST_LOG", "debug");
        })
        .await,
    );
    let tenant_hex = hex::encode(TENANT);
    let secrets: HashMap<String, String> = [("tenantKey".to_string(), tenant_hex.clone())].into();
    let mut errors: Vec<String> = Vec::new();

    let id = ctl
        .create_volume(CreateVolumeRequest {
            name: "secret-test".into(),
            volume_capabilities: vec![rwo()],
            parameters: [("tenantKeySecret".to_string(), "tenant-secret".to_string())].into(),
            secrets: secrets.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let staging = c.dir.path().join(format!("n1/staging/{id}"));
    let target = c.dir.path().join(format!("n1/pods/p/{id}"));
    // Wrong and missing tenant keys are refused, with messages we keep.
    for bad in [
        HashMap::new(),
        [("tenantKey".to_string(), hex::encode([0x11u8; 32]))].into(),
        [("tenantKey".to_string(), format!("{}zz", &tenant_hex[..62]))].into(),
    ] {
        let err = node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(rwo()),
                secrets: bad,
                ..Default::default()
            })
            .await
            .expect_err("a wrong tenant key must not stage");
        errors.push(format!("{err:?}"));
    }
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        secrets: secrets.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwo()),
        ..Default::default()
    })
    .await
    .unwrap();
    fs::write(target.join("doc.txt"), b"tenant data").unwrap();
    fs::File::open(target.join("doc.txt"))
        .unwrap()
        .sync_all()
        .unwrap();
    let snap = ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: "secret-snap".into(),
            secrets: secrets.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let restore = ctl
        .create_volume(CreateVolumeRequest {
            name: "secret-restore".into(),
            volume_capabilities: vec![rwo()],
            volume_content_source: Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Snapshot(
                    volume_content_source::SnapshotSource {
                        snapshot_id: snap.snapshot_id.clone(),
                    },
                )),
            }),
            ..Default::default()
        })
        .await;
    if let Err(e) = restore {
        errors.push(format!("{e:?}"));
    }
    // Malformed requests on every service add their messages too.
    for e in [
        ctl.create_volume(CreateVolumeRequest::default())
            .await
            .err(),
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: "../../etc".into(),
            ..Default::default()
        })
        .await
        .err(),
    ]
    .into_iter()
    .flatten()
    {
        errors.push(format!("{e:?}"));
    }
    let metrics = reqwest_metrics(&format!("http://{metrics_addr}/metrics")).await;

    // The bucket secret itself, as this node holds it (wrapped) on disk.
    let bucket = StateDir::open(&c.node_state("n1"))
        .unwrap()
        .open_bucket(&id.parse().unwrap(), &kek)
        .unwrap();
    let bucket_secret = bucket.secret_for_audit();

    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();

    // What Postgres holds: every row of every table, as text.
    let tables = c.psql(
        "SELECT string_agg(table_name, ' ') FROM information_schema.tables WHERE table_schema = 'public'",
    );
    let mut db = String::new();
    for t in tables.split_whitespace() {
        db += &c.psql(&format!(
            "SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM {t} x"
        ));
        db.push('\n');
    }
    assert!(db.contains(&id), "the dump holds the volume's rows");

    let mut haystacks: Vec<(String, Vec<u8>)> = vec![
        ("postgres rows".into(), db.into_bytes()),
        ("gRPC errors".into(), errors.join("\n").into_bytes()),
        ("metrics".into(), metrics.into_bytes()),
    ];
    for log in [c.log(0), c.node_log("n1")] {
        haystacks.push((log.display().to_string(), fs::read(&log).unwrap()));
    }
    // Every file the node keeps on disk (blobs, heads, wrapped keys).
    for f in files_under(&c.node_state("n1"), &[]) {
        haystacks.push((f.display().to_string(), fs::read(&f).unwrap_or_default()));
    }
    assert!(errors.len() >= 4, "{errors:#?}");
    // Core dumps: the processes holding keys cannot write one.
    let pids = c
        .controllers
        .iter()
        .map(|p| p.id())
        .chain(c.nodes.iter().map(|(_, p)| p.id()));
    for pid in pids {
        let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        let fields: Vec<&str> = core.split_whitespace().collect();
        assert_eq!(&fields[4..6], ["0", "0"], "pid {pid} may dump core: {core}");
    }
    let mut needles = forms("cluster KEK", &KEK);
    needles.extend(forms("tenant key", &TENANT));
    needles.extend(forms("bucket secret", &bucket_secret));
    let mut leaks = Vec::new();
    for (where_, hay) in &haystacks {
        for (what, needle) in &needles {
            if find(hay, needle) {
                leaks.push(format!("{what} in {where_}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets leaked ({} places searched, {} forms):\n{}",
        haystacks.len(),
        needles.len(),
        leaks.join("\n")
    );
    // The search itself works: the node log is not empty and a known
    // non-secret value (the volume id) is found where it should be.
    let node_log = fs::read(c.node_log("n1")).unwrap();
    assert!(
        find(&node_log, id.as_bytes()),
        "the node log names the volume"
    );
}

/// GET a Prometheus text page with a plain HTTP/1.0 request.
async fn reqwest_metrics(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("jax_csi_"), "metrics answered: {out:.200}");
    out
}
