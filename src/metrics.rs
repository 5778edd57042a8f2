//! Prometheus metrics: every name the controller and node export, and the
//! one function per event that records it. Recording goes through the
//! `metrics` facade (a no-op until [`serve`] installs the exporter), so
//! libraries and tests pay nothing for it.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub const CSI_REQUESTS: &str = "jax_csi_csi_requests_total";
pub const CSI_REQUEST_SECONDS: &str = "jax_csi_csi_request_duration_seconds";
pub const FUSE_OPS: &str = "jax_csi_fuse_ops_total";
pub const FUSE_OP_SECONDS: &str = "jax_csi_fuse_op_duration_seconds";
pub const FUSE_ERRORS: &str = "jax_csi_fuse_errors_total";
pub const FUSE_READ_BYTES: &str = "jax_csi_fuse_read_bytes_total";
pub const FUSE_WRITTEN_BYTES: &str = "jax_csi_fuse_written_bytes_total";
pub const COMMITS: &str = "jax_csi_commits_total";
pub const JOURNAL_APPENDS: &str = "jax_csi_journal_appends_total";
pub const SYNC_LAG_SECONDS: &str = "jax_csi_sync_lag_seconds";
pub const SYNC_PULLS: &str = "jax_csi_sync_pulls_total";
pub const BLOBS_FETCHED: &str = "jax_csi_sync_blobs_fetched_total";
pub const BYTES_FETCHED: &str = "jax_csi_sync_fetched_bytes_total";
pub const BLOBS_SERVED: &str = "jax_csi_sync_blobs_served_total";
pub const BYTES_SERVED: &str = "jax_csi_sync_served_bytes_total";
pub const CONFLICTS: &str = "jax_csi_sync_conflicts_resolved_total";
pub const MOUNTS: &str = "jax_csi_mounts";
pub const GC_RECLAIMED_BYTES: &str = "jax_csi_gc_reclaimed_bytes_total";
pub const GC_BLOBS_REMOVED: &str = "jax_csi_gc_blobs_removed_total";
pub const ORPHANS: &str = "jax_csi_orphans_total";
pub const REBUILD_BYTES: &str = "jax_csi_replica_rebuild_bytes_total";
pub const UNDER_REPLICATED: &str = "jax_csi_under_replicated_volumes";

/// Latency buckets (seconds): 50 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Install {
        addr: SocketAddr,
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
}

/// Install the Prometheus exporter with an HTTP listener on `addr`
/// (`GET /metrics`). Must be called inside a tokio runtime.
pub fn serve(addr: SocketAddr) -> Result<(), MetricsError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|source| MetricsError::Install { addr, source })?;
    describe();
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CSI_REQUESTS, "CSI requests by method and gRPC code");
    describe_histogram!(
        CSI_REQUEST_SECONDS,
        Unit::Seconds,
        "CSI request latency by method"
    );
    describe_counter!(FUSE_OPS, "FUSE operations by op");
    describe_histogram!(
        FUSE_OP_SECONDS,
        Unit::Seconds,
        "FUSE operation latency by op"
    );
    describe_counter!(FUSE_READ_BYTES, Unit::Bytes, "Bytes read through FUSE");
    describe_counter!(
        FUSE_WRITTEN_BYTES,
        Unit::Bytes,
        "Bytes written through FUSE"
    );
    describe_counter!(COMMITS, "Versions committed by live mounts, by result");
    describe_counter!(
        JOURNAL_APPENDS,
        "fsyncs made durable by one journal append (no version), by result"
    );
    describe_gauge!(
        SYNC_LAG_SECONDS,
        Unit::Seconds,
        "Per volume: how long the last remote head took from first heard to applied"
    );
    describe_counter!(SYNC_PULLS, "Remote heads pulled, by result");
    describe_counter!(BLOBS_FETCHED, "Blobs fetched from peers");
    describe_counter!(BYTES_FETCHED, Unit::Bytes, "Bytes fetched from peers");
    describe_counter!(BLOBS_SERVED, "Blobs served to peers");
    describe_counter!(BYTES_SERVED, Unit::Bytes, "Bytes served to peers");
    describe_counter!(CONFLICTS, "Concurrent edits resolved into conflict copies");
    describe_gauge!(MOUNTS, "Volumes staged on this node, by status");
    describe_counter!(
        GC_RECLAIMED_BYTES,
        Unit::Bytes,
        "Bytes freed by garbage collection"
    );
    describe_counter!(GC_BLOBS_REMOVED, "Blobs removed by garbage collection");
    describe_counter!(
        REBUILD_BYTES,
        Unit::Bytes,
        "Bytes blind replicas on this node fetched to catch up or rebuild"
    );
    describe_gauge!(
        UNDER_REPLICATED,
        "Volumes with fewer replicas in sync than they ask for (the controller leader)"
    );
    describe_counter!(
        ORPHANS,
        "Orphans found (volume without PV, target whose pod is gone) and removed, by kind and action"
    );
}

/// One CSI request finished.
pub fn csi_request(method: &'static str, code: tonic::Code, elapsed: Duration) {
    counter!(CSI_REQUESTS, "method" => method, "code" => code_name(code)).increment(1);
    histogram!(CSI_REQUEST_SECONDS, "method" => method).record(elapsed.as_secs_f64());
}

/// The gRPC code's canonical upper-case name (as grpc-go prints it).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Times one FUSE operation; counted and recorded when dropped.
#[must_use = "the operation is recorded when the guard drops"]
pub struct FuseOp {
    op: &'static str,
    start: std::time::Instant,
}

impl FuseOp {
    pub fn start(op: &'static str) -> Self {
        Self {
            op,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for FuseOp {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        FUSE_BUSY_NANOS.fetch_add(took.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        counter!(FUSE_OPS, "op" => self.op).increment(1);
        histogram!(FUSE_OP_SECONDS, "op" => self.op).record(took.as_secs_f64());
    }
}

/// Nanoseconds FUSE requests have taken in this process, summed: how busy
/// the pods on this node keep it (a rebuild served from here yields to
/// them, see `sync::pace::PodLoad`).
static FUSE_BUSY_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`FUSE_BUSY_NANOS`].
pub fn fuse_busy_nanos() -> u64 {
    FUSE_BUSY_NANOS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A FUSE operation answered with an errno.
pub fn fuse_error(op: &'static str, errno: i32) {
    counter!(FUSE_ERRORS, "op" => op, "errno" => errno.to_string()).increment(1);
}

pub fn fuse_read(bytes: usize) {
    counter!(FUSE_READ_BYTES).increment(bytes as u64);
}

pub fn fuse_written(bytes: usize) {
    counter!(FUSE_WRITTEN_BYTES).increment(bytes as u64);
}

pub fn commit(ok: bool) {
    counter!(COMMITS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn journal_append(ok: bool) {
    counter!(JOURNAL_APPENDS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// A remote head of `volume` was pulled (and applied, if `ok`) `lag` after
/// this node first heard of it.
pub fn sync_pull(volume: String, ok: bool, lag: Duration) {
    counter!(SYNC_PULLS, "result" => if ok { "ok" } else { "error" }).increment(1);
    if ok {
        gauge!(SYNC_LAG_SECONDS, "volume" => volume).set(lag.as_secs_f64());
    }
}

pub fn blob_fetched(bytes: usize) {
    counter!(BLOBS_FETCHED).increment(1);
    counter!(BYTES_FETCHED).increment(bytes as u64);
}

pub fn blob_served(bytes: usize) {
    counter!(BLOBS_SERVED).increment(1);
    counter!(BYTES_SERVED).increment(bytes as u64);
}

pub fn conflicts_resolved(n: usize) {
    counter!(CONFLICTS).increment(n as u64);
}

/// The number of volumes in each mount status (every status, zeros too).
pub fn mounts(by_status: &[(&'static str, usize)]) {
    for (status, n) in by_status {
        gauge!(MOUNTS, "status" => *status).set(*n as f64);
    }
}

pub fn gc_reclaimed(blobs: usize, bytes: u64) {
    counter!(GC_BLOBS_REMOVED).increment(blobs as u64);
    counter!(GC_RECLAIMED_BYTES).increment(bytes);
}

/// A blind replica fetched `bytes` to catch up.
pub fn rebuild_bytes(bytes: u64) {
    counter!(REBUILD_BYTES).increment(bytes);
}

/// Volumes the leader found with fewer replicas in sync than asked.
pub fn under_replicated(volumes: usize) {
    metrics::gauge!(UNDER_REPLICATED).set(volumes as f64);
}

/// The controller's sweep marked and deleted volumes without a PersistentVolume.
pub fn orphans_found(marked: usize, deleted: usize) {
    counter!(ORPHANS, "kind" => "volume", "action" => "found").increment(marked as u64);
    counter!(ORPHANS, "kind" => "volume", "action" => "removed").increment(deleted as u64);
}

/// A node removed a pod target whose pod is gone.
pub fn orphan_target_removed() {
    counter!(ORPHANS, "kind" => "target", "action" => "removed").increment(1);
}
