//! The operator's commands: `volume`, `snapshot`, `node`, `mount`. Records
//! come from the control-plane database (what the controller and nodes
//! write); a volume's files, history and restores go through a running
//! node plugin's admin service (what that node holds).

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use jax_csi::csi::admin_proto::{
    HistoryRequest, ListDirRequest, ReadFileRequest, RestoreRequest, RotateSecretRequest, Version,
    VersionSelector,
};
use jax_csi::db::operator::{volume_condition, ReplicaView, VolumeView};
use jax_csi::db::replicas::{Health, DEFAULT_REPLICA_TIMEOUT_SECS};
use serde::Serialize;

use super::operator_db::{node_error, DbArgs, NodeArgs};
use super::output::{bytes, emit, parse_time, time, Table};

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Every volume: size, bytes used, replicas and their heads, condition.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// One volume with each replica's head and mount, and its snapshots.
    Show {
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List a directory of the volume as a node holds it.
    Ls {
        id: String,
        #[arg(default_value = "/")]
        path: String,
        #[command(flatten)]
        at: VersionArgs,
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long, short = 'o', value_enum, default_value_t = super::output::Output::Table)]
        output: super::output::Output,
    },
    /// Print a file of the volume to stdout.
    Cat {
        id: String,
        path: String,
        #[command(flatten)]
        at: VersionArgs,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The volume's versions, newest first, as a node holds them.
    History {
        id: String,
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long, short = 'o', value_enum, default_value_t = super::output::Output::Table)]
        output: super::output::Output,
    },
    /// Make an older version the content of a new head (on the live mount;
    /// every replica follows). The history keeps everything before it.
    Restore {
        id: String,
        #[command(flatten)]
        at: VersionArgs,
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long, short = 'o', value_enum, default_value_t = super::output::Output::Table)]
        output: super::output::Output,
    },
    /// Rotate the volume's secret (on a node that stages it): the new head
    /// and every version after it are sealed under a secret that only the
    /// current members' key shares carry. `node remove` does this for every
    /// volume the removed node held.
    RotateSecret {
        id: String,
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long, short = 'o', value_enum, default_value_t = super::output::Output::Table)]
        output: super::output::Output,
    },
}

/// Which version: a manifest hash or height, or the newest at a time.
#[derive(Args, Debug, Clone)]
pub struct VersionArgs {
    /// A version's height or manifest hash (see `volume history`).
    #[arg(long, conflicts_with = "at")]
    version: Option<String>,
    /// The newest version created at or before this time
    /// (`2026-12-01T10:00` in UTC, RFC 3339, or `@<unix seconds>`).
    #[arg(long, value_parser = parse_time)]
    at: Option<i64>,
}

impl VersionArgs {
    fn selector(&self) -> Option<VersionSelector> {
        Some(VersionSelector {
            version: self.version.clone().unwrap_or_default(),
            at_unix_seconds: self.at,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Every snapshot (or those of one volume).
    List {
        #[arg(long)]
        volume: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Every registered node: addresses, last heartbeat, volumes held, sync lag.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove a node for good (a lost or compromised machine): every node
    /// refuses its sync identity within a few seconds, open connections
    /// included, and drops its key share from the volumes it held in a new
    /// version; it cannot register again. It keeps what it already held.
    Remove {
        /// The node's id (`node list`).
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum MountCommand {
    /// Mount records per node, with their status.
    List {
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// A volume with its replicas, as printed.
#[derive(Debug, Serialize)]
struct VolumeReport {
    #[serde(flatten)]
    volume: VolumeView,
    used_bytes: Option<i64>,
    head: Option<String>,
    height: Option<i64>,
    /// Every node with a copy: its head and mount, its role, in sync or not.
    replicas: Vec<ReplicaReport>,
    /// Replicas the volume asks for.
    replicas_wanted: u32,
    /// Live replicas at the newest height.
    replicas_in_sync: usize,
    abnormal: bool,
    condition: String,
    in_sync: bool,
}

/// One node's copy as printed.
#[derive(Debug, Serialize)]
struct ReplicaReport {
    #[serde(flatten)]
    view: ReplicaView,
    /// The node id again, under the name the replicas issue gives it.
    node: String,
    /// `stages` (a mount runs there), `replica` (assigned, held blind), or
    /// `holder` (a copy kept from an earlier stage, not counted).
    role: &'static str,
    in_sync: bool,
}

fn report(volume: VolumeView, all: &[ReplicaView], health: Option<&Health>) -> VolumeReport {
    let views: Vec<ReplicaView> = all
        .iter()
        .filter(|r| r.volume_id == volume.id)
        .cloned()
        .collect();
    let held = |node: &str| health.and_then(|h| h.holders.iter().find(|x| x.node == node));
    let mut replicas: Vec<ReplicaReport> = views
        .into_iter()
        .map(|view| {
            let h = held(&view.node_id);
            ReplicaReport {
                node: view.node_id.clone(),
                role: h.map_or("holder", |h| h.role),
                in_sync: h.is_some_and(|h| h.in_sync && h.live),
                view,
            }
        })
        .collect();
    // Assigned nodes that have reported nothing yet.
    for h in health.map(|h| h.holders.as_slice()).unwrap_or(&[]) {
        if !replicas.iter().any(|r| r.node == h.node) {
            replicas.push(ReplicaReport {
                node: h.node.clone(),
                role: h.role,
                in_sync: false,
                view: ReplicaView {
                    volume_id: volume.id.clone(),
                    node_id: h.node.clone(),
                    head: None,
                    height: h.height,
                    used_bytes: None,
                    head_updated_secs: None,
                    status: None,
                    message: None,
                    published: None,
                },
            });
        }
    }
    let replicas_wanted = health.map_or(0, |h| h.wanted);
    let replicas_in_sync = health.map_or(0, Health::in_sync);
    let newest = replicas
        .iter()
        .map(|r| &r.view)
        .filter(|r| r.height.is_some())
        .max_by_key(|r| (r.height, r.head_updated_secs));
    let states: Vec<(String, String, Option<String>)> = replicas
        .iter()
        .map(|r| &r.view)
        .filter_map(|r| Some((r.node_id.clone(), r.status.clone()?, r.message.clone())))
        .collect();
    let (mut abnormal, mut condition) = volume_condition(&states);
    if let Some(h) = health {
        let (under, message) = h.condition();
        abnormal |= under;
        condition = format!("{condition}; {message}");
    }
    let height = newest.and_then(|r| r.height);
    VolumeReport {
        used_bytes: newest.and_then(|r| r.used_bytes),
        head: newest.and_then(|r| r.head.clone()),
        height,
        in_sync: replicas
            .iter()
            .filter(|r| r.view.height.is_some())
            .all(|r| r.view.height == height),
        abnormal,
        condition,
        replicas,
        replicas_wanted,
        replicas_in_sync,
        volume,
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

fn short(hash: &Option<String>) -> String {
    hash.as_deref()
        .map_or_else(|| "-".into(), |h| h.chars().take(12).collect())
}

/// Run one operator command's async work on a current-thread runtime.
fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

pub fn run_volume(cmd: VolumeCommand) -> anyhow::Result<()> {
    block_on(volume(cmd))
}

async fn volume(cmd: VolumeCommand) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::List { db: args } => {
            let db = args.connect().await?;
            let volumes = db.volume_views(None).await?;
            let replicas = db.replica_views(None).await?;
            let ids: Vec<String> = volumes.iter().map(|v| v.id.clone()).collect();
            let health = db
                .replica_health(Some(&ids), DEFAULT_REPLICA_TIMEOUT_SECS as i64)
                .await?;
            let reports: Vec<VolumeReport> = volumes
                .into_iter()
                .map(|v| {
                    let h = health.get(&v.id);
                    report(v, &replicas, h)
                })
                .collect();
            emit(args.output, &reports, |reports| {
                let mut t = Table::new(&[
                    "ID",
                    "NAME",
                    "SIZE",
                    "USED",
                    "REPLICAS",
                    "HEIGHT",
                    "IN SYNC",
                    "CONDITION",
                ]);
                for r in reports {
                    t.row(vec![
                        r.volume.id.clone(),
                        r.volume.name.clone(),
                        bytes(r.volume.capacity_bytes),
                        r.used_bytes.map_or_else(|| "-".into(), bytes),
                        r.replicas
                            .iter()
                            .filter(|x| x.view.head.is_some())
                            .map(|x| x.node.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        opt(&r.height),
                        if r.in_sync { "yes" } else { "no" }.into(),
                        r.condition.clone(),
                    ]);
                }
                t
            })
        }
        VolumeCommand::Show { id, db: args } => {
            let db = args.connect().await?;
            let Some(volume) = db.volume_views(Some(&id)).await?.into_iter().next() else {
                anyhow::bail!("no volume {id}");
            };
            let replicas = db.replica_views(Some(&id)).await?;
            let snapshots = db.list_snapshots(None, Some(&id), 0, i64::MAX).await?;
            #[derive(Serialize)]
            struct Shown {
                #[serde(flatten)]
                report: VolumeReport,
                snapshots: Vec<SnapshotRow>,
            }
            let health = db
                .replica_health(
                    Some(std::slice::from_ref(&id)),
                    DEFAULT_REPLICA_TIMEOUT_SECS as i64,
                )
                .await?;
            let shown = Shown {
                report: report(volume, &replicas, health.get(&id)),
                snapshots: snapshots.iter().map(SnapshotRow::from).collect(),
            };
            emit(args.output, &shown, |s| {
                let r = &s.report;
                let v = &r.volume;
                let mut t = Table::new(&["FIELD", "VALUE"]);
                t.row(vec!["id".into(), v.id.clone()]);
                t.row(vec!["name".into(), v.name.clone()]);
                t.row(vec!["size".into(), bytes(v.capacity_bytes)]);
                t.row(vec![
                    "used".into(),
                    r.used_bytes.map_or_else(|| "-".into(), bytes),
                ]);
                t.row(vec!["created".into(), time(v.created_secs)]);
                t.row(vec![
                    "source".into(),
                    match (&v.source_snapshot_id, &v.source_volume_id) {
                        (Some(s), _) => format!("snapshot {s}"),
                        (None, Some(src)) => format!("volume {src}"),
                        (None, None) => "-".into(),
                    },
                ]);
                t.row(vec!["head".into(), opt(&r.head)]);
                t.row(vec!["condition".into(), r.condition.clone()]);
                for r in &r.replicas {
                    let x = &r.view;
                    t.row(vec![
                        format!("replica {}", x.node_id),
                        format!(
                            "{}{} height {} head {} mount {}{}{}",
                            r.role,
                            if r.in_sync { ", in sync," } else { "," },
                            opt(&x.height),
                            short(&x.head),
                            x.status.as_deref().unwrap_or("none"),
                            if x.published == Some(true) {
                                ", published"
                            } else {
                                ""
                            },
                            x.message
                                .as_deref()
                                .map(|m| format!(" ({m})"))
                                .unwrap_or_default()
                        ),
                    ]);
                }
                for snap in &s.snapshots {
                    t.row(vec![
                        format!("snapshot {}", snap.name),
                        format!("{} at {}", snap.id, time(snap.created_secs)),
                    ]);
                }
                t
            })
        }
        VolumeCommand::Ls {
            id,
            path,
            at,
            node,
            output,
        } => {
            let mut admin = node.admin().await?;
            let listed = admin
                .list_dir(ListDirRequest {
                    volume_id: id,
                    path,
                    select: at.selector(),
                })
                .await
                .map_err(node_error)?
                .into_inner();
            #[derive(Serialize)]
            struct Entry {
                name: String,
                kind: String,
                mode: String,
                size: u64,
                modified: String,
            }
            #[derive(Serialize)]
            struct Listing {
                version: String,
                entries: Vec<Entry>,
            }
            let listing = Listing {
                version: listed.version,
                entries: listed
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        name: e.name,
                        kind: e.kind,
                        mode: format!("{:o}", e.mode),
                        size: e.size,
                        modified: time(e.mtime_unix_seconds),
                    })
                    .collect(),
            };
            emit(output, &listing, |l| {
                let mut t = Table::new(&["KIND", "MODE", "SIZE", "MODIFIED", "NAME"]);
                for e in &l.entries {
                    t.row(vec![
                        e.kind.clone(),
                        e.mode.clone(),
                        e.size.to_string(),
                        e.modified.clone(),
                        e.name.clone(),
                    ]);
                }
                t
            })
        }
        VolumeCommand::Cat { id, path, at, node } => {
            let mut admin = node.admin().await?;
            let mut stream = admin
                .read_file(ReadFileRequest {
                    volume_id: id,
                    path,
                    select: at.selector(),
                })
                .await
                .map_err(node_error)?
                .into_inner();
            let out = &mut std::io::stdout().lock();
            while let Some(piece) = stream.message().await.map_err(node_error)? {
                out.write_all(&piece.data)?;
            }
            out.flush()?;
            Ok(())
        }
        VolumeCommand::History { id, node, output } => {
            let mut admin = node.admin().await?;
            let versions = admin
                .history(HistoryRequest { volume_id: id })
                .await
                .map_err(node_error)?
                .into_inner()
                .versions;
            let rows: Vec<VersionRow> = versions.iter().map(VersionRow::from).collect();
            emit(output, &rows, |rows| {
                let mut t = Table::new(&[
                    "HEIGHT", "VERSION", "CREATED", "USED", "ENTRIES", "AUTHOR", "KIND",
                ]);
                for v in rows {
                    t.row(vec![
                        v.height.to_string(),
                        v.hash.clone(),
                        time(v.created_unix_seconds),
                        bytes(v.used_bytes as i64),
                        v.entries.to_string(),
                        v.author.chars().take(16).collect(),
                        if v.merged.is_some() { "merge" } else { "" }.into(),
                    ]);
                }
                t
            })
        }
        VolumeCommand::Restore {
            id,
            at,
            node,
            output,
        } => {
            if at.version.is_none() && at.at.is_none() {
                anyhow::bail!("restore needs --version (height or hash) or --at (a time)");
            }
            let mut admin = node.admin().await?;
            eprintln!("restoring volume {id} …");
            let r = admin
                .restore(RestoreRequest {
                    volume_id: id.clone(),
                    select: at.selector(),
                })
                .await
                .map_err(node_error)?
                .into_inner();
            #[derive(Serialize)]
            struct Restored {
                volume: String,
                restored: Option<VersionRow>,
                head: Option<VersionRow>,
            }
            let restored = Restored {
                volume: id,
                restored: r.restored.as_ref().map(VersionRow::from),
                head: r.head.as_ref().map(VersionRow::from),
            };
            emit(output, &restored, |r| {
                let mut t = Table::new(&["", "HEIGHT", "VERSION", "CREATED"]);
                for (label, v) in [("restored", &r.restored), ("new head", &r.head)] {
                    if let Some(v) = v {
                        t.row(vec![
                            label.into(),
                            v.height.to_string(),
                            v.hash.clone(),
                            time(v.created_unix_seconds),
                        ]);
                    }
                }
                t
            })
        }
        VolumeCommand::RotateSecret { id, node, output } => {
            let mut admin = node.admin().await?;
            let r = admin
                .rotate_secret(RotateSecretRequest {
                    volume_id: id.clone(),
                })
                .await
                .map_err(node_error)?
                .into_inner();
            #[derive(Serialize)]
            struct Rotated {
                volume: String,
                head: Option<VersionRow>,
            }
            let rotated = Rotated {
                volume: id,
                head: r.head.as_ref().map(VersionRow::from),
            };
            emit(output, &rotated, |r| {
                let mut t = Table::new(&["VOLUME", "NEW HEAD", "HEIGHT"]);
                if let Some(v) = &r.head {
                    t.row(vec![r.volume.clone(), v.hash.clone(), v.height.to_string()]);
                }
                t
            })
        }
    }
}

/// A version as printed (JSON keeps the full hashes).
#[derive(Debug, Serialize)]
struct VersionRow {
    hash: String,
    height: u64,
    previous: Option<String>,
    merged: Option<String>,
    author: String,
    created_unix_seconds: i64,
    created: String,
    used_bytes: u64,
    entries: u64,
}

impl From<&Version> for VersionRow {
    fn from(v: &Version) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Self {
            hash: v.hash.clone(),
            height: v.height,
            previous: some(&v.previous),
            merged: some(&v.merged),
            author: v.author.clone(),
            created_unix_seconds: v.created_unix_seconds,
            created: time(v.created_unix_seconds),
            used_bytes: v.used_bytes,
            entries: v.entries,
        }
    }
}

/// A snapshot as printed (never its wrapped key).
#[derive(Debug, Serialize)]
struct SnapshotRow {
    id: String,
    name: String,
    source_volume_id: String,
    head: Option<String>,
    size_bytes: i64,
    ready: bool,
    group_snapshot_id: Option<String>,
    created_secs: i64,
}

impl From<&jax_csi::db::SnapshotRecord> for SnapshotRow {
    fn from(s: &jax_csi::db::SnapshotRecord) -> Self {
        Self {
            id: s.id.clone(),
            name: s.name.clone(),
            source_volume_id: s.source_volume_id.clone(),
            head: s.head.clone(),
            size_bytes: s.size_bytes,
            ready: s.ready,
            group_snapshot_id: s.group_snapshot_id.clone(),
            created_secs: s.created_secs,
        }
    }
}

pub fn run_snapshot(cmd: SnapshotCommand) -> anyhow::Result<()> {
    let SnapshotCommand::List { volume, db: args } = cmd;
    block_on(async {
        let db = args.connect().await?;
        let snaps = db
            .list_snapshots(None, volume.as_deref(), 0, i64::MAX)
            .await
            .context("listing snapshots")?;
        let rows: Vec<SnapshotRow> = snaps.iter().map(SnapshotRow::from).collect();
        emit(args.output, &rows, |rows| {
            let mut t = Table::new(&["ID", "NAME", "VOLUME", "SIZE", "READY", "HEAD", "CREATED"]);
            for s in rows {
                t.row(vec![
                    s.id.clone(),
                    s.name.clone(),
                    s.source_volume_id.clone(),
                    bytes(s.size_bytes),
                    if s.ready { "yes" } else { "no" }.into(),
                    short(&s.head),
                    time(s.created_secs),
                ]);
            }
            t
        })
    })
}

pub fn run_node(cmd: NodeCommand) -> anyhow::Result<()> {
    let args = match cmd {
        NodeCommand::List { db } => db,
        NodeCommand::Remove { id, db } => return remove_node(&id, &db),
    };
    block_on(async {
        let db = args.connect().await?;
        let nodes = db.node_views().await.context("listing nodes")?;
        emit(args.output, &nodes, |nodes| {
            let mut t = Table::new(&[
                "ID",
                "ADDRESSES",
                "LAST SEEN",
                "VOLUMES",
                "BEHIND",
                "FREE",
                "ENDPOINT",
            ]);
            for n in nodes {
                let addrs: Vec<String> = serde_json::from_str(&n.addresses).unwrap_or_default();
                t.row(vec![
                    n.id.clone(),
                    if addrs.is_empty() {
                        "-".into()
                    } else {
                        addrs.join(",")
                    },
                    time(n.last_seen_secs),
                    n.volumes_held.to_string(),
                    n.versions_behind.to_string(),
                    bytes(n.free_bytes),
                    short(&n.endpoint_id),
                ]);
            }
            t
        })
    })
}

pub fn run_mount(cmd: MountCommand) -> anyhow::Result<()> {
    let MountCommand::List { node, db: args } = cmd;
    block_on(async {
        let db = args.connect().await?;
        let mounts = db
            .mount_views(node.as_deref())
            .await
            .context("listing mounts")?;
        emit(args.output, &mounts, |mounts| {
            let mut t = Table::new(&[
                "NODE",
                "VOLUME",
                "STATUS",
                "PUBLISHED",
                "UPDATED",
                "STAGING PATH",
            ]);
            for m in mounts {
                t.row(vec![
                    m.node_id.clone(),
                    m.volume_id.clone(),
                    match &m.message {
                        Some(msg) => format!("{} ({msg})", m.status),
                        None => m.status.clone(),
                    },
                    if m.published { "yes" } else { "no" }.into(),
                    time(m.updated_secs),
                    m.staging_path.clone(),
                ]);
            }
            t
        })
    })
}

/// `node remove ID`.
fn remove_node(id: &str, args: &DbArgs) -> anyhow::Result<()> {
    block_on(async {
        let db = args.connect().await?;
        let Some(endpoint) = db.remove_node(id).await.context("removing the node")? else {
            anyhow::bail!("no node {id} is registered (jax-csi node list)");
        };
        match args.output {
            super::output::Output::Json => {
                println!("{}", serde_json::json!({"removed": id, "endpoint": endpoint}))
            }
            super::output::Output::Table => println!(
                "removed node {id} (sync identity {}): the other nodes refuse it at their next refresh of the registry",
                short(&Some(endpoint))
            ),
        }
        Ok(())
    })
}
