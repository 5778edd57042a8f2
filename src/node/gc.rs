//! The node agent's garbage collection: deleted volumes' buckets leave this node,
//! old versions go by each volume's `historyRetention` (snapshots, clone
//! sources and reported heads pinned), and the blobs nothing retained uses
//! any more are removed. It needs Postgres to know what is deleted and
//! pinned; without it, nothing is pruned and nothing is removed.

use std::collections::HashSet;
use std::time::Duration;

use crate::bucket::{Bucket, BucketId, StateDir};
use crate::crypto::Kek;
use crate::db::Db;
use crate::fuse::MountManager;
use crate::store::{GcReport, Hash};

/// Blobs younger than this are never collected by default: chunks a live
/// mount sealed before its next commit, blobs a sync stored before their
/// manifest.
pub const GRACE: Duration = Duration::from_secs(600);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcPass {
    pub buckets_removed: usize,
    pub versions_pruned: usize,
    pub blobs: GcReport,
}

/// Run a pass every `interval` until the task is dropped.
pub async fn run(
    db: Db,
    node_id: String,
    manager: MountManager,
    kek: std::sync::Arc<Kek>,
    interval: Duration,
    grace: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let started = std::time::Instant::now();
        match pass(&db, &node_id, &manager, &kek, grace).await {
            Ok(p) => {
                crate::metrics::gc_reclaimed(p.blobs.removed, p.blobs.bytes_freed);
                // One line a pass (every 10 minutes by default): what it
                // cost is worth seeing even when it freed nothing.
                tracing::info!(
                    buckets_removed = p.buckets_removed,
                    versions_pruned = p.versions_pruned,
                    blobs_removed = p.blobs.removed,
                    bytes_freed = p.blobs.bytes_freed,
                    ms = started.elapsed().as_millis() as u64,
                    "garbage collection"
                )
            }
            Err(e) => tracing::warn!(error = %e, "garbage collection skipped"),
        }
    }
}

/// One pass: deleted volumes, retention, then blobs (older than `grace`).
pub async fn pass(
    db: &Db,
    node_id: &str,
    manager: &MountManager,
    kek: &std::sync::Arc<Kek>,
    grace: Duration,
) -> anyhow::Result<GcPass> {
    let state = manager.state().clone();
    let mut out = GcPass::default();
    for vid in db.gc_pending_for(node_id).await? {
        let Ok(id) = BucketId::from_hex(&vid) else {
            db.mark_gc_done(&vid, node_id).await?;
            continue;
        };
        if manager.get(&id).is_ok() {
            continue; // still staged here: collected once unstaged
        }
        if state.has_blind(&id) {
            state.remove_blind(&id)?;
        }
        if state.has_bucket(&id) {
            if db.has_snapshots(&vid).await? {
                continue; // its snapshots still need their versions
            }
            state.remove_bucket(&id)?;
            out.buckets_removed += 1;
        }
        db.mark_gc_done(&vid, node_id).await?;
    }
    // Retention needs each volume's policy and pins from Postgres.
    let mut plans = Vec::new();
    for id in state.list_buckets()? {
        let vid = id.to_hex();
        let Some(vol) = db.volume_by_id(&vid).await? else {
            plans.push((id, None));
            continue;
        };
        let retention = vol.retention();
        let pinned: HashSet<Hash> = db
            .pinned_heads(&vid)
            .await?
            .iter()
            .filter_map(|h| h.parse().ok())
            .collect();
        plans.push((id, Some((retention, pinned))));
    }
    let kek = kek.clone();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("jax-gc".into())
        .spawn(move || {
            in_background();
            let _ = done.send(collect(&state, &kek, plans, grace));
        })?;
    let (pruned, blobs) = result.await??;
    out.versions_pruned = pruned;
    out.blobs = blobs;
    Ok(out)
}

/// Lower this thread's CPU and disk priority (nice 10, the lowest
/// best-effort I/O level): a pass walks and deletes for hundreds of
/// milliseconds, and a pod's reads, writes and the sync must not wait
/// behind it on a busy node. Best effort: a refusal changes nothing else.
fn in_background() {
    // SAFETY: plain syscalls on the calling thread, with no pointers.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) != 0 {
            tracing::debug!("garbage collection runs at normal CPU priority");
        }
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_BEST_EFFORT_LOWEST: libc::c_long = (2 << 13) | 7;
        if libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid as libc::c_long,
            IOPRIO_BEST_EFFORT_LOWEST,
        ) != 0
        {
            tracing::debug!("garbage collection runs at normal I/O priority");
        }
    }
}

type Plan = (BucketId, Option<(crate::bucket::Retention, HashSet<Hash>)>);

fn collect(
    state: &StateDir,
    kek: &Kek,
    plans: Vec<Plan>,
    grace: Duration,
) -> anyhow::Result<(usize, GcReport)> {
    let started = std::time::Instant::now();
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut pruned = 0;
    for (id, plan) in plans {
        // Every bucket must open, or blobs it uses could be taken for garbage.
        let b = state.open_bucket(&id, kek)?;
        if let Some((retention, pinned)) = plan {
            pruned += b.prune(&retention, &pinned)?;
        }
        buckets.push(b);
    }
    // Blind replicas' blobs: the version each holds and the one it fetches.
    let mut blind = HashSet::new();
    for id in state.list_blind()? {
        blind.extend(state.open_blind(&id, kek)?.live()?.iter().copied());
    }
    let prune_ms = started.elapsed().as_millis() as u64;
    let refs: Vec<&Bucket> = buckets.iter().collect();
    let report = state.gc_keeping(&refs, &blind, grace)?;
    tracing::debug!(prune_ms, "retention and blob collection");
    Ok((pruned, report))
}
