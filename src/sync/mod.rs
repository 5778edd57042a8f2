//! Peer-to-peer sync of buckets between nodes, over iroh (QUIC).
//!
//! Each node runs one endpoint keyed by its own Ed25519 identity, so a
//! peer's endpoint id *is* its node id, the one manifests are signed with
//! and key shares are sealed to. Relays, public address lookup and port
//! mapping are off: peers are dialled at the addresses the control plane
//! lists (`set_peers`), and only nodes it lists as registered
//! (`set_registered`) are answered.
//!
//! What moves: a node that commits announces its head to the bucket's
//! peers; a peer that hears of a head it lacks pulls it — the manifest
//! chain (down to a version it has), the directory nodes that changed, and
//! the chunks they name — verifying every blob's BLAKE3 address before
//! storing it and every manifest's signature and chain before the head is
//! used, then hands it to [`Replicas::apply_head`] (a fast-forward or a
//! merge) and announces the merge it made, if any. A periodic comparison
//! of heads (anti-entropy) catches what an announcement missed. A bucket
//! new to a node is fetched whole ([`SyncEngine::fetch_bucket`]): its tree
//! first, its chunks on demand and in the background.
//!
//! Authorization: every request proves the requester holds the bucket's
//! secret (a keyed hash over bucket, requester and responder, unforgeable
//! and useless to replay elsewhere), which is enough to read its blobs;
//! announcements are taken only from members (holders of a share at the
//! responder's head), and a node that proves the secret becomes one by
//! asking (`Enroll`): the responder commits a version that shares the
//! bucket with it. Versions written by non-members fail the chain check
//! wherever they arrive.
//!
//! The sync layer knows buckets and the store, not FUSE, gRPC or Postgres:
//! the node agent (`crate::node`) wires its replicas in as [`Replicas`] and
//! keeps the peer lists current from Postgres.

mod announcements;
mod client;
#[doc(hidden)]
pub mod hostile;
mod journal_copies;
pub mod on_disk;
pub mod pace;
pub mod proto;
mod pulls;
pub mod raw;
pub mod replicate;
mod server;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, RelayMode};

use crate::bucket::{Bucket, BucketId, StateDir};
use crate::crypto::{Identity, Kek, NodeId, SecretKey};
use crate::store::Hash;

/// Why a sync operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("binding the sync endpoint on {addr}: {why}")]
    Bind { addr: SocketAddr, why: String },
    #[error("no peer that holds bucket {0} answered")]
    NoPeer(BucketId),
    #[error("peer {peer}: {why}")]
    Peer { peer: String, why: String },
    /// The peer answered the request with a refusal (it knows the request:
    /// a wrong proof, a bucket it does not hold, a busy node).
    #[error("peer {peer}: refused: {reason}")]
    Refused { peer: String, reason: String },
    #[error("bucket {bucket}: {source}")]
    Bucket {
        bucket: BucketId,
        #[source]
        source: crate::bucket::BucketError,
    },
    /// The node could not take a verified head or grant a member.
    #[error("bucket {bucket}: {source}")]
    Apply {
        bucket: BucketId,
        #[source]
        source: ApplyError,
    },
    /// Fewer replicas than asked confirmed a version in time.
    #[error("bucket {bucket}: {held} of the {wanted} other replicas asked for hold version {version} after {secs} s")]
    ReplicasBehind {
        bucket: BucketId,
        version: Hash,
        held: usize,
        wanted: usize,
        secs: u64,
    },
    /// Fewer replicas than asked confirmed an fsync's journal frames in time.
    #[error("bucket {bucket}: {held} of the {wanted} other replicas asked for hold the fsync's journal frames after {secs} s")]
    JournalNotHeld {
        bucket: BucketId,
        held: usize,
        wanted: usize,
        secs: u64,
    },
    /// A blocking task of the sync engine died.
    #[error("a sync worker failed: {0}")]
    Worker(String),
}

/// How long a peer that failed to answer is asked last.
const DOWN_FOR: Duration = Duration::from_secs(30);

/// A peer: its node id and the addresses it listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: NodeId,
    pub addrs: Vec<SocketAddr>,
}

/// Why the node could not take what sync brought (the node agent's own
/// error, kept whole for the logs).
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// What the node does with what sync brings. Implemented by the node agent
/// (live mounts merge; buckets not mounted are updated on disk). Both run
/// on blocking threads.
pub trait Replicas: Send + Sync + 'static {
    /// A verified head of `bucket` is in the local store: bring the local
    /// replica to it (fast-forward or merge). Returns the local head after,
    /// when it differs from `head` (a merge to announce).
    fn apply_head(&self, bucket: &BucketId, head: &Hash) -> Result<Option<Hash>, ApplyError>;
    /// Share `bucket` with `node` (a new version) and return the head that does.
    fn grant(&self, bucket: &BucketId, node: &NodeId) -> Result<Hash, ApplyError>;
}

/// Asks the control plane whether a node is registered now.
pub type RegistryCheck =
    Arc<dyn Fn(NodeId) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub blobs_fetched: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub blobs_served: AtomicU64,
    pub bytes_served: AtomicU64,
    pub announcements_sent: AtomicU64,
    pub announcements_received: AtomicU64,
    pub refused: AtomicU64,
    pub heads_applied: AtomicU64,
    /// Reads that found no peer with their chunk and waited for one.
    pub fetch_waits: AtomicU64,
}

/// How a node's sync endpoint is set up.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Where to listen (UDP).
    pub listen: SocketAddr,
    /// How often heads are compared with every peer.
    pub anti_entropy: Duration,
    /// Most bytes a second a blind replica fetches while it catches up (a
    /// rebuild), on top of [`SyncConfig::rebuild_yields`]; `None`: no cap.
    pub rebuild_bytes_per_sec: Option<u64>,
    /// Whether a rebuild yields to load on the nodes it fetches from (its
    /// fetch times grow): see `sync::pace`. On in a node; benchmarks
    /// compare it with a rebuild that does not.
    pub rebuild_yields: bool,
}

struct Inner {
    endpoint: Endpoint,
    state: Arc<StateDir>,
    kek: Arc<Kek>,
    me: NodeId,
    /// Peers per bucket, as the control plane last listed them.
    peers: Mutex<HashMap<BucketId, Vec<Peer>>>,
    /// Every node the control plane lists as registered (None: not known yet).
    registered: Mutex<Option<HashSet<NodeId>>>,
    /// Where each peer was last reached or listed.
    addrs: Mutex<HashMap<NodeId, Vec<SocketAddr>>>,
    replicas: OnceLock<Arc<dyn Replicas>>,
    /// Versions members announced for buckets held blind here, for the
    /// node agent to replicate (see `SyncEngine::blind_announcements`).
    blind_tx: OnceLock<tokio::sync::mpsc::UnboundedSender<(BucketId, Hash)>>,
    /// Asked when a node is not in `registered` (it may have just registered).
    registry: OnceLock<RegistryCheck>,
    /// Requests in progress per peer, and in all (see `server`).
    peer_slots: Mutex<HashMap<NodeId, Arc<tokio::sync::Semaphore>>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// What asking `registry` about strangers costs, bounded.
    strangers: Mutex<Strangers>,
    conns: tokio::sync::Mutex<HashMap<NodeId, Connection>>,
    /// Peers of each bucket learnt from the protocol (not the control plane).
    learnt: Mutex<HashMap<BucketId, HashSet<NodeId>>>,
    /// Peers that failed to answer lately, and when: asked last for a while.
    down: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// One pull per bucket at a time.
    pulls: Mutex<HashMap<BucketId, Arc<tokio::sync::Mutex<()>>>>,
    /// Announced heads waiting for a pull, coalesced per bucket.
    pull_queue: pulls::PullQueue,
    /// Heads this node held lately, per bucket (named in history requests).
    recent: pulls::RecentHeads,
    /// How far each peer's copy of each journal goes (`syncReplicas`).
    journal_shipped: journal_copies::Shipped,
    /// Buckets whose head's tree was last seen with every chunk here: a
    /// pull then walks only what changed since the local head (see
    /// `client::fetch_tree`). Not known after a start, until a full walk.
    complete_trees: Mutex<HashSet<BucketId>>,
    /// Heads waiting to be announced, coalesced per bucket and peer.
    announce_queue: announcements::AnnounceQueue,
    /// See [`SyncConfig::rebuild_bytes_per_sec`].
    rebuild_rate: Option<u64>,
    /// See [`SyncConfig::rebuild_yields`].
    rebuild_yields: bool,
    /// Peers whose background blob request failed lately (a node from
    /// before them drops it), and when: asked plainly for a while.
    plain_blob_peers: Mutex<HashMap<NodeId, std::time::Instant>>,
    stats: SyncStats,
    /// Woken when peers or their addresses change (a read waiting for a
    /// peer tries again at once).
    peers_changed: tokio::sync::Notify,
    rt: tokio::runtime::Handle,
}

/// This node's sync endpoint and what it knows of its peers.
#[derive(Clone)]
pub struct SyncEngine {
    inner: Arc<Inner>,
    _router: Arc<Router>,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("me", &self.inner.me)
            .finish()
    }
}

impl SyncEngine {
    /// Bind the endpoint (relays, address lookup and port mapping off) and
    /// start answering peers. Must run inside a tokio runtime.
    pub async fn start(
        cfg: &SyncConfig,
        identity: &Identity,
        state: Arc<StateDir>,
        kek: Arc<Kek>,
    ) -> Result<Self, SyncError> {
        let key = iroh::SecretKey::from_bytes(&identity.seed_bytes());
        let endpoint = bind_endpoint(key, cfg.listen, proto::ALPN).await?;
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            state,
            kek,
            me: identity.node_id(),
            peers: Mutex::new(HashMap::new()),
            registered: Mutex::new(None),
            addrs: Mutex::new(HashMap::new()),
            replicas: OnceLock::new(),
            blind_tx: OnceLock::new(),
            registry: OnceLock::new(),
            strangers: Mutex::new(Strangers::default()),
            peer_slots: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(server::TOTAL)),
            conns: tokio::sync::Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            pull_queue: Default::default(),
            recent: Default::default(),
            journal_shipped: Default::default(),
            complete_trees: Mutex::new(HashSet::new()),
            announce_queue: Default::default(),
            rebuild_rate: cfg.rebuild_bytes_per_sec.filter(|r| *r > 0),
            rebuild_yields: cfg.rebuild_yields,
            plain_blob_peers: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            learnt: Mutex::new(HashMap::new()),
            stats: SyncStats::default(),
            peers_changed: tokio::sync::Notify::new(),
            rt: tokio::runtime::Handle::current(),
        });
        let router = Router::builder(endpoint)
            .accept(proto::ALPN, server::Handler::new(inner.clone()))
            .spawn();
        let engine = Self {
            inner,
            _router: Arc::new(router),
        };
        tokio::spawn(engine.clone().anti_entropy(cfg.anti_entropy));
        tracing::info!(addrs = ?engine.local_addrs(), node = %engine.inner.me, "sync endpoint listening");
        Ok(engine)
    }

    /// This node as a peer of others: its id and its IPv4 addresses
    /// (tools and tests that wire engines together by hand).
    pub fn as_peer(&self) -> Peer {
        Peer {
            node: self.node_id(),
            addrs: self
                .local_addrs()
                .into_iter()
                .filter(|a| a.is_ipv4())
                .collect(),
        }
    }

    /// The addresses this endpoint is bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.endpoint.bound_sockets()
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    pub fn stats(&self) -> &SyncStats {
        &self.inner.stats
    }

    /// What to do with pulled heads and enrollment requests.
    pub fn set_replicas(&self, replicas: Arc<dyn Replicas>) {
        let _ = self.inner.replicas.set(replicas);
    }

    /// The peers that hold `bucket` (this node left out).
    pub fn set_peers(&self, bucket: BucketId, peers: Vec<Peer>) {
        let peers: Vec<Peer> = peers
            .into_iter()
            .filter(|p| p.node != self.inner.me)
            .collect();
        {
            let mut addrs = self.inner.addrs.lock().unwrap();
            for p in &peers {
                if !p.addrs.is_empty() {
                    addrs.insert(p.node, p.addrs.clone());
                }
            }
        }
        // Peers learnt from the protocol itself (they enrolled or announced)
        // stay, ahead of the control plane noticing them.
        let mut all = self.inner.peers.lock().unwrap();
        let learnt: Vec<Peer> = all
            .get(&bucket)
            .map(|old| {
                old.iter()
                    .filter(|o| self.inner.learnt(&bucket, &o.node))
                    .filter(|o| !peers.iter().any(|p| p.node == o.node))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut merged = peers;
        merged.extend(learnt);
        all.insert(bucket, merged);
        drop(all);
        self.inner.peers_changed.notify_waiters();
    }

    /// Every node the control plane knows: only they are answered.
    pub fn set_registered(&self, nodes: HashSet<NodeId>) {
        *self.inner.registered.lock().unwrap() = Some(nodes);
    }

    /// Where `node` listens (from the control plane's registry).
    pub fn set_addresses(&self, node: NodeId, addrs: Vec<SocketAddr>) {
        if !addrs.is_empty() {
            self.inner.addrs.lock().unwrap().insert(node, addrs);
            self.inner.peers_changed.notify_waiters();
        }
    }

    /// Close every connection with a node removed from the cluster (see
    /// `StateDir::revoked`) and forget it as a peer; new ones are refused
    /// (`is_registered`), and a connection it still holds is refused on
    /// its next request (`server`).
    pub async fn drop_revoked(&self) {
        let revoked = self.inner.state.revoked().all();
        if revoked.is_empty() {
            return;
        }
        let mut conns = self.inner.conns.lock().await;
        for node in &revoked {
            if let Some(conn) = conns.remove(node) {
                conn.close(2u32.into(), b"removed from the cluster");
            }
        }
        drop(conns);
        let mut peers = self.inner.peers.lock().unwrap();
        for list in peers.values_mut() {
            list.retain(|p| !revoked.contains(&p.node));
        }
    }

    /// How to ask about a node missing from the last registered list.
    pub fn set_registry_check(&self, check: RegistryCheck) {
        let _ = self.inner.registry.set(check);
    }

    pub fn peers_of(&self, bucket: &BucketId) -> Vec<Peer> {
        self.inner.peers_of(bucket)
    }

    /// Tell the bucket's peers about a new local head (best effort: a peer
    /// that misses it catches up by anti-entropy).
    pub async fn announce(&self, bucket: BucketId, head: Hash) {
        client::announce_all(&self.inner, bucket, head).await
    }

    /// Fetch bucket `bucket`, new to this node, from its peers: the newest
    /// head any of them has (and `hint`, the newest the control plane
    /// knows), after enrolling this node as a member. Its manifest and
    /// whole tree are here when this returns; chunks follow on demand and
    /// in the background. Returns the head imported.
    pub async fn fetch_bucket(
        &self,
        bucket: BucketId,
        secret: SecretKey,
        peers: Vec<Peer>,
    ) -> Result<Hash, SyncError> {
        self.set_peers(bucket, peers);
        client::fetch_new_bucket(&self.inner, bucket, secret).await
    }

    /// Fetch version `head` of `bucket` (manifest and tree, not chunks) into
    /// the store without making the bucket this node's: what cloning from a
    /// snapshot or volume whose source this node does not hold needs.
    pub async fn fetch_foreign_version(
        &self,
        bucket: BucketId,
        secret: SecretKey,
        head: Hash,
        peers: Vec<Peer>,
    ) -> Result<(), SyncError> {
        self.set_peers(bucket, peers);
        client::fetch_foreign(&self.inner, bucket, secret, head).await
    }

    /// Get `bucket`'s key ring from `peers` (see `client::fetch_keyring`;
    /// the driver asks through [`SyncEngine::fetch_foreign_version`]). How
    /// many epochs were new.
    #[cfg(test)]
    pub async fn fetch_keyring(
        &self,
        bucket: BucketId,
        secret: SecretKey,
        peers: Vec<Peer>,
    ) -> Result<usize, SyncError> {
        self.set_peers(bucket, peers);
        client::fetch_keyring(&self.inner, bucket, secret).await
    }

    /// Fetch every chunk of `bucket`'s head this node lacks (after a first
    /// stage; reads fetch what they need sooner).
    pub async fn complete(&self, bucket: BucketId) -> Result<usize, SyncError> {
        client::complete(&self.inner, bucket).await
    }

    /// A blob fetcher for mounts of `bucket` (reads of chunks not here yet).
    pub fn remote_for(&self, bucket: BucketId) -> Arc<dyn crate::bucket::RemoteBlobs> {
        Arc::new(Remote {
            inner: self.inner.clone(),
            bucket,
        })
    }

    /// The versions members announce of buckets held blind here (one
    /// receiver: the node agent's replication loop).
    pub fn blind_announcements(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<(BucketId, Hash)>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner.blind_tx.set(tx).ok().map(|()| rx)
    }

    /// Bring the blind replica of `bucket` to `version` (see
    /// the `replicate` module): fetched from every peer at once, each
    /// blob checked, and the blobs held before not fetched again.
    pub async fn replicate(
        &self,
        bucket: BucketId,
        version: Hash,
        keep: replicate::Keep,
    ) -> Result<replicate::Replicated, SyncError> {
        replicate::replicate(&self.inner, bucket, version, keep).await
    }

    /// Wait until `k` other holders of `bucket` hold `version` (their head
    /// is it or descends from it), at most `timeout` (`syncReplicas`).
    /// Returns how many did.
    pub async fn wait_held(
        &self,
        bucket: BucketId,
        version: Hash,
        k: usize,
        timeout: Duration,
    ) -> Result<usize, SyncError> {
        client::wait_held(&self.inner, bucket, version, k, timeout).await
    }

    /// Wait until `k` other replicas hold a copy of `journal` up to
    /// `upto` (`syncReplicas` on an fsync the journal took).
    pub async fn wait_journal_held(
        &self,
        bucket: BucketId,
        journal: Arc<crate::bucket::journal::Journal>,
        upto: crate::bucket::journal::Position,
        k: usize,
        timeout: Duration,
    ) -> Result<usize, SyncError> {
        journal_copies::wait_journal_held(&self.inner, bucket, journal, upto, k, timeout).await
    }

    /// Replay the journal copies of `bucket` held here and by its peers
    /// (a writer may have been lost with fsyncs only they hold); how many
    /// added changes. `own_too`: this node's own journal copies too (its
    /// state dir was lost).
    pub async fn replay_journal_copies(&self, bucket: BucketId, own_too: bool) -> usize {
        journal_copies::replay_gathered(&self.inner, bucket, own_too).await
    }

    /// Pull `head` of `bucket` now (what an announcement or anti-entropy does).
    pub async fn pull(&self, bucket: BucketId, head: Hash) -> Result<(), SyncError> {
        client::pull(&self.inner, bucket, head, None).await
    }

    /// Compare heads with every peer now.
    pub async fn compare_heads(&self) {
        client::compare_heads(&self.inner).await
    }

    async fn anti_entropy(self, every: Duration) {
        // A first pass soon after start catches up on what happened while
        // this node was away.
        tokio::time::sleep(Duration::from_millis(500)).await;
        loop {
            client::compare_heads(&self.inner).await;
            tokio::time::sleep(every).await;
        }
    }

    /// Close the endpoint (peers see the connections end).
    pub async fn shutdown(&self) {
        let _ = self._router.shutdown().await;
        self.inner.endpoint.close().await;
    }
}

/// How long a peer whose background blob request failed is asked plainly.
const PLAIN_BLOBS_FOR: Duration = Duration::from_secs(600);

impl Inner {
    /// Whether blobs of `bucket` are asked of `peer` as a rebuild the peer
    /// yields to its pods for (`Request::GetBlobsBackground`): this node
    /// holds the bucket blind (its fetches are a replica's catching up),
    /// rebuilds yield, and the peer did not fail such a request lately.
    fn rebuilds_in_background(&self, bucket: &BucketId, peer: &NodeId) -> bool {
        self.rebuild_yields
            && !self.state.has_bucket(bucket)
            && self.state.has_blind(bucket)
            && self
                .plain_blob_peers
                .lock()
                .unwrap()
                .get(peer)
                .is_none_or(|at| at.elapsed() > PLAIN_BLOBS_FOR)
    }

    /// `peer` failed a background blob request: ask it plainly a while.
    fn no_background(&self, peer: &NodeId) {
        self.plain_blob_peers
            .lock()
            .unwrap()
            .insert(*peer, std::time::Instant::now());
    }

    /// The bucket's peers, those that failed lately last.
    fn peers_of(&self, bucket: &BucketId) -> Vec<Peer> {
        let mut peers = self
            .peers
            .lock()
            .unwrap()
            .get(bucket)
            .cloned()
            .unwrap_or_default();
        peers.sort_by_key(|p| self.is_down(&p.node));
        peers
    }

    /// `node` failed to answer in the last [`DOWN_FOR`]: asked last.
    fn is_down(&self, node: &NodeId) -> bool {
        self.down
            .lock()
            .unwrap()
            .get(node)
            .is_some_and(|t| t.elapsed() < DOWN_FOR)
    }

    /// `node` did not answer in time: asked last from now on, and its
    /// connection dropped (a link cut with the connection open leaves it
    /// open until the idle timeout, and each request would wait as long).
    async fn lost(&self, node: &NodeId) {
        self.mark_down(node);
        self.conns.lock().await.remove(node);
    }

    /// `node` holds `bucket` too (it enrolled, or announced to us): it is
    /// told of our heads from now on, before the control plane lists it.
    fn add_peer(&self, bucket: &BucketId, node: &NodeId) {
        if *node == self.me {
            return;
        }
        self.learnt
            .lock()
            .unwrap()
            .entry(*bucket)
            .or_default()
            .insert(*node);
        let mut peers = self.peers.lock().unwrap();
        let list = peers.entry(*bucket).or_default();
        if !list.iter().any(|p| p.node == *node) {
            list.push(Peer {
                node: *node,
                addrs: Vec::new(),
            });
            drop(peers);
            self.peers_changed.notify_waiters();
        }
    }

    /// The request slots of `peer` (shared by its connections).
    fn peer_slots(&self, peer: &NodeId) -> Arc<tokio::sync::Semaphore> {
        let mut all = self.peer_slots.lock().unwrap();
        // Slots of peers with nothing in progress go (a registered peer
        // that reconnects gets fresh ones).
        if all.len() > 1024 {
            all.retain(|_, s| s.available_permits() < server::PER_PEER);
        }
        all.entry(*peer)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(server::PER_PEER)))
            .clone()
    }

    fn learnt(&self, bucket: &BucketId, node: &NodeId) -> bool {
        self.learnt
            .lock()
            .unwrap()
            .get(bucket)
            .is_some_and(|s| s.contains(node))
    }

    fn mark_down(&self, node: &NodeId) {
        self.down
            .lock()
            .unwrap()
            .insert(*node, std::time::Instant::now());
    }

    fn mark_up(&self, node: &NodeId) {
        self.down.lock().unwrap().remove(node);
    }

    fn open(&self, bucket: &BucketId) -> Result<Bucket, SyncError> {
        self.state
            .open_bucket(bucket, &self.kek)
            .map_err(|source| SyncError::Bucket {
                bucket: *bucket,
                source,
            })
    }

    fn open_blind(
        &self,
        bucket: &BucketId,
    ) -> Result<crate::bucket::blind::BlindReplica, SyncError> {
        self.state
            .open_blind(bucket, &self.kek)
            .map_err(|source| SyncError::Bucket {
                bucket: *bucket,
                source,
            })
    }

    /// A member announced `version` of a bucket held blind here.
    fn blind_announced(&self, bucket: BucketId, version: Hash) {
        if let Some(tx) = self.blind_tx.get() {
            let _ = tx.send((bucket, version));
        }
    }

    /// See [`Strangers::warn_refusal`].
    fn warn_refusal(&self, node: &NodeId) -> bool {
        self.strangers.lock().unwrap().warn_refusal(node)
    }

    async fn is_registered(&self, node: &NodeId) -> bool {
        // Removed from the cluster: refused whatever a list says.
        if self.state.revoked().contains(node) {
            return false;
        }
        let known = self
            .registered
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|r| r.contains(node));
        if known {
            return true;
        }
        let Some(check) = self.registry.get().cloned() else {
            return false;
        };
        // Anyone who reaches the port can present a fresh id: each asks
        // the control plane (a full query of the registered nodes) at most
        // once per STRANGER_TTL, and all of them together at most once per
        // REGISTRY_EVERY; the rest are refused without a query (a node that
        // just registered is let in on a later try, or once the node's
        // 2 s refresh of the registered list names it).
        if !self.strangers.lock().unwrap().may_ask(node) {
            return false;
        }
        if check(*node).await {
            if let Some(r) = self.registered.lock().unwrap().as_mut() {
                r.insert(*node);
            }
            self.strangers.lock().unwrap().refused.remove(node);
            return true;
        }
        false
    }

    fn addr_of(&self, node: &NodeId) -> Option<EndpointAddr> {
        let id = iroh::PublicKey::from_bytes(&node.0).ok()?;
        let mut addr = EndpointAddr::new(id);
        for a in self
            .addrs
            .lock()
            .unwrap()
            .get(node)
            .cloned()
            .unwrap_or_default()
        {
            addr = addr.with_ip_addr(a);
        }
        Some(addr)
    }

    /// Whether `bucket`'s head's tree is known to have every chunk here.
    fn tree_complete(&self, bucket: &BucketId) -> bool {
        self.complete_trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(bucket)
    }

    /// A walk of `bucket`'s tree left nothing missing (`complete`), or not.
    fn note_tree_complete(&self, bucket: BucketId, complete: bool) {
        let mut trees = self
            .complete_trees
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match complete {
            true => trees.insert(bucket),
            false => trees.remove(&bucket),
        };
    }

    fn pull_lock(&self, bucket: &BucketId) -> Arc<tokio::sync::Mutex<()>> {
        self.pulls
            .lock()
            .unwrap()
            .entry(*bucket)
            .or_default()
            .clone()
    }
}

/// Bind an endpoint as every sync endpoint is set up: relays, public
/// address lookup and port mapping off, quick keep-alives, jumbo frames
/// where the path has them.
async fn bind_endpoint(
    key: iroh::SecretKey,
    listen: SocketAddr,
    alpn: &[u8],
) -> Result<Endpoint, SyncError> {
    Endpoint::builder(iroh::endpoint::presets::Minimal)
        .secret_key(key)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .portmapper_config(iroh::endpoint::PortmapperConfig::Disabled)
        .net_report_config(iroh::endpoint::NetReportConfig::minimal())
        .alpns(vec![alpn.to_vec()])
        // A peer that died is noticed within seconds, not at the QUIC
        // default, so requests move on to the others.
        .transport_config(
            iroh::endpoint::QuicTransportConfig::builder()
                // Jumbo frames where the network has them (a datacenter
                // network often does): far fewer packets per chunk.
                .mtu_discovery_config(Some({
                    let mut m = iroh::endpoint::MtuDiscoveryConfig::default();
                    m.upper_bound(8952);
                    m
                }))
                .keep_alive_interval(Duration::from_secs(2))
                .max_idle_timeout(Some(
                    Duration::from_secs(8)
                        .try_into()
                        .expect("8 s is a valid idle timeout"),
                ))
                .build(),
        )
        .bind_addr(listen)
        .map_err(|e| SyncError::Bind {
            addr: listen,
            why: e.to_string(),
        })?
        .bind()
        .await
        .map_err(|e| SyncError::Bind {
            addr: listen,
            why: e.to_string(),
        })
}

/// A node asked about and refused is not asked about again for this long.
const STRANGER_TTL: Duration = Duration::from_secs(5);
/// The registry is asked about strangers at most this often, all together.
const REGISTRY_EVERY: Duration = Duration::from_secs(2);
/// Refusals remembered at most (a flood of ids cannot grow the map
/// without bound; past it, the oldest go).
const STRANGERS_KEPT: usize = 4096;

/// Strangers refused lately, and when the registry was last asked.
#[derive(Default)]
struct Strangers {
    refused: HashMap<NodeId, std::time::Instant>,
    last_ask: Option<std::time::Instant>,
    /// When a refusal of each node was last logged as a warning.
    warned: HashMap<NodeId, std::time::Instant>,
}

/// A node refused again and again (one that connects before its
/// registration is seen here tries dozens of times a second) is warned
/// about at most this often; the other refusals are logged at debug.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(60);

impl Strangers {
    /// Whether a refusal of `node` now is worth a warning (see
    /// [`REFUSAL_WARN_EVERY`]).
    fn warn_refusal(&mut self, node: &NodeId) -> bool {
        let now = std::time::Instant::now();
        let due = |t: &std::time::Instant| now.duration_since(*t) >= REFUSAL_WARN_EVERY;
        if self.warned.get(node).is_some_and(|t| !due(t)) {
            return false;
        }
        if self.warned.len() >= STRANGERS_KEPT {
            self.warned.retain(|_, t| !due(t));
            if self.warned.len() >= STRANGERS_KEPT {
                return false;
            }
        }
        self.warned.insert(*node, now);
        true
    }

    /// Whether `node` may be asked about now; if so, counts as asked
    /// (the answer `false` stays in force for [`STRANGER_TTL`]).
    fn may_ask(&mut self, node: &NodeId) -> bool {
        let now = std::time::Instant::now();
        if self
            .refused
            .get(node)
            .is_some_and(|t| now.duration_since(*t) < STRANGER_TTL)
        {
            return false;
        }
        if self
            .last_ask
            .is_some_and(|t| now.duration_since(t) < REGISTRY_EVERY)
        {
            return false;
        }
        self.last_ask = Some(now);
        if self.refused.len() >= STRANGERS_KEPT {
            self.refused
                .retain(|_, t| now.duration_since(*t) < STRANGER_TTL);
            if self.refused.len() >= STRANGERS_KEPT {
                self.refused.clear();
            }
        }
        // Noted before the answer: concurrent tries of the same id wait
        // for the TTL instead of asking again.
        self.refused.insert(*node, now);
        true
    }
}

/// How long a read of a chunk this node lacks waits for a peer to give
/// it: just after a node (re)starts, its peers are not known or connected
/// yet, and an EIO then would be wrong. Past it, the read fails (EIO).
const FETCH_PATIENCE: Duration = Duration::from_secs(10);
/// While waiting, the fetch is tried again this often, and at once when
/// the peers change.
const FETCH_RETRY: Duration = Duration::from_millis(500);

/// Fetches single blobs for a mount, from the FUSE threads (not async).
struct Remote {
    inner: Arc<Inner>,
    bucket: BucketId,
}

impl Remote {
    /// One try at `hash`: from the bucket's peers, then (a clone reading
    /// its source's chunks) the source's; what is still missing.
    async fn fetch_once(
        inner: &Inner,
        bucket: BucketId,
        hash: Hash,
        source: Option<&(BucketId, SecretKey)>,
    ) -> Result<Vec<Hash>, SyncError> {
        let missing = client::fetch_blobs(inner, bucket, &[hash])
            .await
            .unwrap_or_else(|_| vec![hash]);
        match source {
            Some((src, secret)) if !missing.is_empty() => {
                client::fetch_blobs_with(inner, *src, &missing, Some(secret)).await
            }
            _ => Ok(missing),
        }
    }
}

impl crate::bucket::RemoteBlobs for Remote {
    fn fetch(&self, hash: &Hash) -> Result<(), String> {
        let (inner, bucket, hash) = (self.inner.clone(), self.bucket, *hash);
        // A clone reads chunks of its source's tree: those come from the
        // source's peers, asked with the source's secret.
        let source = self
            .inner
            .state
            .source_of(&bucket, &self.inner.kek)
            .ok()
            .flatten();
        let fetch = async move {
            let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
            let mut waited = false;
            loop {
                // Registered before the try, so a change during it is seen.
                let changed = inner.peers_changed.notified();
                let got = Self::fetch_once(&inner, bucket, hash, source.as_ref()).await;
                let done = matches!(&got, Ok(missing) if missing.is_empty());
                if done || tokio::time::Instant::now() >= deadline {
                    return got;
                }
                if !waited {
                    waited = true;
                    inner.stats.fetch_waits.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%bucket, blob = %hash, "no peer gave a chunk a read needs yet; waiting for one");
                }
                let _ = tokio::time::timeout_at(
                    deadline.min(tokio::time::Instant::now() + FETCH_RETRY),
                    changed,
                )
                .await;
            }
        };
        let got = if tokio::runtime::Handle::try_current().is_ok() {
            // Inside the runtime (a blocking task): wait on another thread.
            let rt = self.inner.rt.clone();
            std::thread::scope(|s| s.spawn(|| rt.block_on(fetch)).join())
                .map_err(|_| "fetch thread panicked".to_string())?
        } else {
            self.inner.rt.block_on(fetch)
        };
        match got {
            Ok(missing) if missing.is_empty() => Ok(()),
            Ok(_) => Err("no peer has it".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}
