//! The sync protocol against peers that misbehave: in-process endpoints on
//! loopback, no Postgres, buckets applied on disk.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proto::{BlobFrame, Request, Response};
use super::*;
use crate::bucket::{path, BucketOptions, Manifest};

use super::on_disk::OnDisk;

struct Node {
    _dir: tempfile::TempDir,
    state: Arc<StateDir>,
    engine: SyncEngine,
}

async fn node(kek: &Arc<Kek>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(StateDir::open(dir.path()).unwrap());
    let cfg = SyncConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        anti_entropy: Duration::from_secs(3600),
        rebuild_bytes_per_sec: None,
        rebuild_yields: false,
    };
    let engine = SyncEngine::start(&cfg, state.identity(), state.clone(), kek.clone())
        .await
        .unwrap();
    engine.set_replicas(Arc::new(OnDisk {
        state: state.clone(),
        kek: kek.clone(),
    }));
    Node {
        _dir: dir,
        state,
        engine,
    }
}

fn peer(n: &Node) -> Peer {
    n.engine.as_peer()
}

fn register(nodes: &[&Node]) {
    let all: HashSet<NodeId> = nodes.iter().map(|n| n.engine.node_id()).collect();
    for n in nodes {
        n.engine.set_registered(all.clone());
    }
}

/// A bucket on `a` with one file, and `b` holding it too (fetched).
async fn shared(a: &Node, b: &Node, kek: &Kek) -> (BucketId, SecretKey) {
    let id = BucketId::generate().unwrap();
    let secret = SecretKey::generate().unwrap();
    let bucket = a
        .state
        .create_bucket_with_secret(id, secret.clone(), kek, &BucketOptions::default())
        .unwrap();
    let mut m = bucket.mount().unwrap();
    path::write_file(&mut m, "/f.txt", b"original").unwrap();
    m.save().unwrap();
    b.engine.set_peers(id, vec![peer(a)]);
    a.engine.set_peers(id, vec![peer(b)]);
    b.engine
        .fetch_bucket(id, secret.clone(), vec![peer(a)])
        .await
        .unwrap();
    (id, secret)
}

/// Two registered nodes sharing a bucket that neither will sync until a
/// test lists the other again: one node's plain Mount can then write
/// without an anti-entropy merge racing it for HEAD.
async fn quiet_pair(kek: &Arc<Kek>) -> (Node, Node, BucketId) {
    let (a, b) = (node(kek).await, node(kek).await);
    register(&[&a, &b]);
    let (id, _) = shared(&a, &b, kek).await;
    a.engine.set_peers(id, vec![]);
    b.engine.set_peers(id, vec![]);
    (a, b, id)
}

/// Write `/n` `count` times through one Mount of `bucket`, a version each.
fn write_versions(bucket: &Bucket, count: u32) -> Vec<Hash> {
    let mut m = bucket.mount().unwrap();
    (0..count)
        .map(|i| {
            path::write_file(&mut m, "/n", &i.to_le_bytes()).unwrap();
            m.save().unwrap().hash
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_bucket_reads_the_same_and_writes_flow_back() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (id, _) = shared(&a, &b, &kek).await;
    let bb = b.state.open_bucket(&id, &kek).unwrap();
    assert_eq!(b.engine.complete(id).await.unwrap(), 1);
    let mut m = bb.mount().unwrap();
    assert_eq!(path::read_file(&mut m, "/f.txt").unwrap(), b"original");
    // b is a member now: its version is taken by a.
    path::write_file(&mut m, "/g.txt", b"from b").unwrap();
    let v = m.save().unwrap();
    b.engine.announce(id, v.hash).await;
    let ab = a.state.open_bucket(&id, &kek).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ab.head().unwrap() != v.hash {
        assert!(
            Instant::now() < deadline,
            "the announced head never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut m = ab.mount().unwrap();
    assert_eq!(path::read_file(&mut m, "/g.txt").unwrap(), b"from b");
}

/// A node the control plane does not list is not answered at all; a
/// registered node with a wrong proof is refused; neither learns anything.
/// A read of a chunk this node lacks, made before any peer is known (a
/// node just restarted), waits for a peer instead of failing at once, and
/// gets the chunk once the peer is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_before_any_peer_is_known_waits_for_one() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (id, _) = shared(&a, &b, &kek).await;
    b.engine.set_peers(id, Vec::new());
    assert!(b.engine.peers_of(&id).is_empty(), "b still knows a peer");
    let bb = b.state.open_bucket(&id, &kek).unwrap();
    let mut m = bb.mount().unwrap();
    m.set_remote(b.engine.remote_for(id));
    let reader = std::thread::spawn(move || path::read_file(&mut m, "/f.txt"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.engine.stats().fetch_waits.load(Ordering::Relaxed) == 0 {
        if reader.is_finished() {
            panic!("the read ended without waiting: {:?}", reader.join());
        }
        assert!(
            Instant::now() < deadline,
            "the read never waited for a peer"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.engine.set_peers(id, vec![peer(&a)]);
    let read = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert_eq!(read.unwrap(), b"original");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_wrong_proofs_get_nothing() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (id, _) = shared(&a, &b, &kek).await;
    let stranger = node(&kek).await;
    stranger
        .engine
        .set_registered(HashSet::from([a.engine.node_id()]));
    // The stranger even holds the secret (the same KEK): not registered, not answered.
    let head = a.state.open_bucket(&id, &kek).unwrap().head().unwrap();
    let refused_before = a.engine.stats().refused.load(Ordering::Relaxed);
    stranger.engine.set_peers(id, vec![peer(&a)]);
    let got = stranger
        .engine
        .fetch_foreign_version(id, SecretKey::generate().unwrap(), head, vec![peer(&a)])
        .await;
    assert!(got.is_err());
    assert!(!stranger.state.store().contains(&head));
    assert!(a.engine.stats().refused.load(Ordering::Relaxed) > refused_before);
    // A registered node that does not hold the secret: refused.
    let c = node(&kek).await;
    register(&[&a, &b, &c]);
    let wrong = SecretKey::generate().unwrap();
    let got = c.engine.fetch_bucket(id, wrong, vec![peer(&a)]).await;
    assert!(matches!(got, Err(SyncError::NoPeer(_))), "{got:?}");
    assert!(!c.state.has_bucket(&id));
    assert!(!c.state.store().contains(&head));
}

/// A peer that sends bytes that do not hash to what was asked: nothing is
/// stored, the fetch fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_in_transit_is_never_stored() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (id, _) = shared(&a, &b, &kek).await;
    // A liar: serves the right frames with wrong bytes.
    let liar = LiarPeer::start(&b).await;
    let want = Hash::of(b"what b asks for");
    b.engine.set_peers(id, vec![liar.peer.clone()]);
    let missing = client::fetch_blobs(&b.engine.inner, id, &[want])
        .await
        .unwrap();
    assert_eq!(missing, vec![want], "the lie is not taken");
    assert!(!b.state.store().contains(&want));
}

/// Announcements: an old head (replayed) changes nothing; a head whose
/// manifest does not verify is never installed; a node that is not a
/// member is not heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_forged_announcements_change_nothing() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (id, _) = shared(&a, &b, &kek).await;
    let ab = a.state.open_bucket(&id, &kek).unwrap();
    let bb = b.state.open_bucket(&id, &kek).unwrap();
    // Bring a to b's head (the enrollment) so both agree.
    b.engine.announce(id, bb.head().unwrap()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ab.head().unwrap() != bb.head().unwrap() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = ab.head().unwrap();
    let old = ab.history().unwrap().last().unwrap().hash;
    // Replay of an ancestor.
    b.engine.announce(id, old).await;
    // A forgery: b's manifest with a changed body and the old signature.
    let good = bb.manifest(&bb.head().unwrap()).unwrap();
    let mut body = good.body.clone();
    body.used_bytes += 1;
    let forged = Manifest {
        body,
        signature: good.signature,
        format: good.format,
    };
    let fh = b.state.store().put(&forged.to_bytes().unwrap()).unwrap();
    b.engine.announce(id, fh).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ab.head().unwrap(), before, "nothing changed");
    ab.verify().unwrap();
    // A registered node holding the secret but no share: its announcement
    // is refused, its version never becomes a's.
    let c = node(&kek).await;
    register(&[&a, &b, &c]);
    c.engine.set_peers(id, vec![peer(&a)]);
    let refused = a.engine.stats().refused.load(Ordering::Relaxed);
    let req = Request::Announce {
        bucket: id,
        proof: ab
            .proof_key()
            .proof(&id, &c.engine.node_id().0, &a.engine.node_id().0),
        head: before,
    };
    let answer = client::ask_for_tests(&c.engine.inner, &peer(&a), &req).await;
    assert!(matches!(answer, Ok(Response::Refused { .. })), "{answer:?}");
    assert!(a.engine.stats().refused.load(Ordering::Relaxed) > refused);
}

/// A minimal peer that answers every GetBlobs with bytes that do not match.
struct LiarPeer {
    peer: Peer,
    _router: iroh::protocol::Router,
}

#[derive(Debug)]
struct Liar;

impl iroh::protocol::ProtocolHandler for Liar {
    async fn accept(&self, conn: Connection) -> Result<(), iroh::protocol::AcceptError> {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let Ok(Some(Request::GetBlobs { hashes, .. })) =
                wire::read_msg::<Request>(&mut recv).await
            else {
                continue;
            };
            let _ = wire::write_msg(&mut send, &Response::Noted).await;
            for h in hashes {
                let lie = b"not what you asked for".to_vec();
                let _ = wire::write_msg(
                    &mut send,
                    &proto::BlobFrame::Blob {
                        hash: h,
                        len: lie.len() as u32,
                    },
                )
                .await;
                let _ = send.write_all(&lie).await;
            }
            let _ = send.finish();
            let _ = send.stopped().await;
        }
        Ok(())
    }
}

impl LiarPeer {
    async fn start(_victim: &Node) -> Self {
        let ep = bare_endpoint(None).await;
        let peer = peer_at(&ep);
        let router = iroh::protocol::Router::builder(ep)
            .accept(proto::ALPN, Liar)
            .spawn();
        Self {
            peer,
            _router: router,
        }
    }
}

/// Not a test of behaviour: how fast blobs move between two in-process
/// endpoints on loopback (run with --ignored --nocapture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn blob_throughput_on_loopback() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (id, _) = shared(&a, &b, &kek).await;
    // Only blobs of the bucket are served: a 256 MiB file of it.
    {
        let ab = a.state.open_bucket(&id, &kek).unwrap();
        let mut m = ab.mount().unwrap();
        let bytes: Vec<u8> = (0..(256u32 << 20) / 32)
            .flat_map(|i| Hash::of(&i.to_le_bytes()).0)
            .collect();
        path::write_file(&mut m, "/big", &bytes).unwrap();
        m.save().unwrap();
    }
    let hashes: Vec<Hash> = chunks_of(&a, &kek, &id)
        .into_iter()
        .filter(|h| !b.state.store().contains(h))
        .collect();
    let start = Instant::now();
    let missing = client::fetch_blobs(&b.engine.inner, id, &hashes)
        .await
        .unwrap();
    let t = start.elapsed();
    assert!(missing.is_empty());
    eprintln!("256 MiB in {t:?}: {:.0} MiB/s", 256.0 / t.as_secs_f64());
}

#[derive(Debug)]
struct Sink;

impl iroh::protocol::ProtocolHandler for Sink {
    async fn accept(&self, conn: Connection) -> Result<(), iroh::protocol::AcceptError> {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let mut total = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(Some(n)) = recv.read(&mut buf).await {
                total += n as u64;
            }
            let _ = send.write_all(&total.to_le_bytes()).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        }
        Ok(())
    }
}

/// Raw QUIC throughput between two endpoints on loopback (--ignored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn raw_quic_throughput_on_loopback() {
    let bind = || async {
        Endpoint::builder(iroh::endpoint::presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .portmapper_config(iroh::endpoint::PortmapperConfig::Disabled)
            .alpns(vec![b"sink".to_vec()])
            .bind_addr("127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .unwrap()
            .bind()
            .await
            .unwrap()
    };
    let server = bind().await;
    let addr = EndpointAddr::new(server.id()).with_ip_addr(server.bound_sockets()[0]);
    let _router = iroh::protocol::Router::builder(server)
        .accept(b"sink", Sink)
        .spawn();
    let client = bind().await;
    let conn = client.connect(addr, b"sink").await.unwrap();
    for streams in [1usize, 4] {
        let chunk = vec![7u8; 1 << 20];
        let start = Instant::now();
        let per = 256 / streams;
        let tasks: Vec<_> = (0..streams)
            .map(|_| {
                let (conn, chunk) = (conn.clone(), chunk.clone());
                tokio::spawn(async move {
                    let (mut s, mut r) = conn.open_bi().await.unwrap();
                    for _ in 0..per {
                        s.write_all(&chunk).await.unwrap();
                    }
                    s.finish().unwrap();
                    r.read_to_end(64).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let t = start.elapsed();
        eprintln!(
            "{streams} streams: 256 MiB in {t:?}: {:.0} MiB/s",
            256.0 / t.as_secs_f64()
        );
    }
}

/// A peer hundreds of versions behind fetches the whole chain down to the
/// version both share (no history cut at a fixed depth), so its merge has
/// the true base: the file it deleted stays deleted and nothing becomes a
/// conflict. With a 64-deep cut the merge had no base, and the deleted
/// file came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_far_behind_merges_against_the_shared_version() {
    let kek = Arc::new(Kek::generate().unwrap());
    // Neither hears of the other until b pulls.
    let (a, b, id) = quiet_pair(&kek).await;
    let bb = b.state.open_bucket(&id, &kek).unwrap();
    {
        let mut m = bb.mount().unwrap();
        let (parent, name) = path::parent_of(&mut m, "/f.txt").unwrap();
        m.unlink(parent, name).unwrap();
        m.save().unwrap();
    }
    let ab = a.state.open_bucket(&id, &kek).unwrap();
    let head = {
        let mut m = ab.mount().unwrap();
        path::write_file(&mut m, "/log", b"").unwrap();
        let mut last = None;
        for i in 0..200u32 {
            let ino = path::resolve(&mut m, "/log").unwrap();
            let size = m.getattr(ino).unwrap().size;
            m.write(ino, size, &i.to_le_bytes()).unwrap();
            last = Some(m.save().unwrap().hash);
        }
        last.unwrap()
    };
    b.engine.set_peers(id, vec![peer(&a)]);
    b.engine.pull(id, head).await.unwrap();
    let mut m = bb.mount().unwrap();
    let names: Vec<String> = path::walk(&mut m)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(
        !names.iter().any(|p| p == "/f.txt"),
        "the delete stays: {names:?}"
    );
    assert!(
        !names.iter().any(|p| p.contains('@')),
        "no conflict copy: {names:?}"
    );
    assert_eq!(path::read_file(&mut m, "/log").unwrap().len(), 800);
    assert!(bb.has_in_history(&head).unwrap());
}

/// A bucket on `node` with one file of `bytes`, and its secret.
fn bucket_with_file(node: &Node, kek: &Kek, bytes: &[u8]) -> (BucketId, SecretKey, Hash) {
    let id = BucketId::generate().unwrap();
    let secret = SecretKey::generate().unwrap();
    let b = node
        .state
        .create_bucket_with_secret(id, secret.clone(), kek, &BucketOptions::default())
        .unwrap();
    let mut m = b.mount().unwrap();
    path::write_file(&mut m, "/f", bytes).unwrap();
    let head = m.save().unwrap().hash;
    (id, secret, head)
}

/// The chunks of `bucket`'s head on `node` (its root directory's files).
fn chunks_of(node: &Node, kek: &Kek, bucket: &BucketId) -> Vec<Hash> {
    let b = node.state.open_bucket(bucket, kek).unwrap();
    let m = b.manifest(&b.head().unwrap()).unwrap();
    b.dir_contents(&b.root_dir(&m).unwrap()).unwrap().chunks
}

/// Finding 1 of #26: proving one bucket's secret must not open the node's
/// whole store. b holds bucket X with a; a also holds bucket Y, which b
/// was never given. b asks a, with X's proof, for Y's manifest (heads are
/// in Postgres), Y's root directory and Y's chunk: all are answered
/// missing, nothing of Y lands on b; X's own blobs still come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_for_one_bucket_reads_nothing_of_another() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (x, _) = shared(&a, &b, &kek).await;
    let (y, _, y_head) = bucket_with_file(&a, &kek, b"another tenant's file");
    let ya = a.state.open_bucket(&y, &kek).unwrap();
    let y_root = ya.manifest(&y_head).unwrap().body.root;
    let y_chunk = chunks_of(&a, &kek, &y)[0];
    let asked = [y_head, y_root, y_chunk];
    let missing = client::fetch_blobs(&b.engine.inner, x, &asked)
        .await
        .unwrap();
    for h in asked {
        assert!(
            !b.state.store().contains(&h),
            "a blob of another bucket was served under X's proof: {h}"
        );
    }
    assert_eq!(missing.len(), 3, "{missing:?}");
    // X itself still reads: its chunk comes over.
    let x_chunk = chunks_of(&a, &kek, &x)[0];
    let missing = client::fetch_blobs(&b.engine.inner, x, &[x_chunk])
        .await
        .unwrap();
    assert!(missing.is_empty());
    assert!(b.state.store().contains(&x_chunk));
}

/// A rebuild's background blob request (#28) is answered as GetBlobs is,
/// with the same checks: a blob of the proven bucket comes, another
/// bucket's does not, and a wrong proof gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_blob_request_is_served_as_getblobs_is() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (x, secret) = shared(&a, &b, &kek).await;
    let (_, _, y_head) = bucket_with_file(&a, &kek, b"another tenant's file");
    let x_chunk = chunks_of(&a, &kek, &x)[0];
    let ask = |proof| Request::GetBlobsBackground {
        bucket: x,
        proof,
        hashes: vec![x_chunk, y_head],
    };
    let (me, them) = (b.engine.node_id(), a.engine.node_id());
    let proof = crate::bucket::ProofKey::of(&secret).proof(&x, &me.0, &them.0);
    let mut recv = client::blob_answer_for(&b.engine.inner, &them, &ask(proof))
        .await
        .unwrap();
    match wire::read_msg::<BlobFrame>(&mut recv).await.unwrap() {
        Some(BlobFrame::Blob { hash, len }) => {
            assert_eq!(hash, x_chunk);
            let bytes = wire::read_bytes(&mut recv, len as usize).await.unwrap();
            assert_eq!(Hash::of(&bytes), x_chunk);
        }
        other => panic!("the proven bucket's chunk did not come: {other:?}"),
    }
    assert_eq!(
        wire::read_msg::<BlobFrame>(&mut recv).await.unwrap(),
        Some(BlobFrame::Missing { hash: y_head }),
        "another bucket's manifest under X's proof"
    );
    let refused = client::blob_answer_for(&b.engine.inner, &them, &ask([7; 32])).await;
    // A refusal, not a dropped stream: the asker does not take this node
    // for a build from before background requests.
    assert!(
        matches!(refused, Err(SyncError::Refused { .. })),
        "a wrong proof was answered, or not refused: {:?}",
        refused.map(|_| ())
    );
}

/// Finding 4 of #26: a registered peer holding the secret opens hundreds
/// of blob requests over several connections and never reads an answer
/// (a tiny receive window, so every answer stalls at once). A normal
/// peer's fetch must still go through in seconds: the stalled requests
/// hold no blocking thread and are capped per peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_cannot_stall_another_peers_sync() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    let staller = bare_endpoint(Some(16 * 1024)).await;
    let staller_id = NodeId(*staller.id().as_bytes());
    let mut all: HashSet<NodeId> = [a.engine.node_id(), b.engine.node_id()].into();
    all.insert(staller_id);
    a.engine.set_registered(all.clone());
    b.engine.set_registered(all);
    let (x, secret) = shared(&a, &b, &kek).await;
    // A file of its own chunk (40 KiB), which b does not hold yet.
    let x_chunk = {
        let xa = a.state.open_bucket(&x, &kek).unwrap();
        let mut m = xa.mount().unwrap();
        // Incompressible: a hash chain.
        let bytes: Vec<u8> = (0..40 * 1024 / 32u32)
            .flat_map(|i| Hash::of(&i.to_le_bytes()).0)
            .collect();
        path::write_file(&mut m, "/big", &bytes).unwrap();
        m.save().unwrap();
        let m = xa.manifest(&xa.head().unwrap()).unwrap();
        let c = xa.dir_contents(&xa.root_dir(&m).unwrap()).unwrap().chunks;
        *c.iter().find(|h| !b.state.store().contains(h)).unwrap()
    };
    let proof =
        crate::bucket::ProofKey::of(&secret).proof(&x, &staller_id.0, &a.engine.node_id().0);
    let req = Request::GetBlobs {
        bucket: x,
        proof,
        hashes: vec![x_chunk; 8],
    };
    let addr = EndpointAddr::new(iroh::PublicKey::from_bytes(&a.engine.node_id().0).unwrap())
        .with_ip_addr(peer(&a).addrs[0]);
    let mut held = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..6 {
        let conn = staller.connect(addr.clone(), proto::ALPN).await.unwrap();
        for _ in 0..100 {
            let Ok((mut send, recv)) = conn.open_bi().await else {
                break;
            };
            wire::write_msg(&mut send, &req).await.unwrap();
            send.finish().unwrap();
            held.push((send, recv));
        }
        conns.push(conn);
    }
    // Let the node take them all in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "served {} refused {} b-has {}",
        a.engine.stats().blobs_served.load(Ordering::Relaxed),
        a.engine.stats().refused.load(Ordering::Relaxed),
        b.state.store().contains(&x_chunk)
    );
    // (b may have pulled it meanwhile: a first anti-entropy pass.)
    b.state.store().remove(&x_chunk).unwrap();
    let started = Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(15),
        client::fetch_blobs(&b.engine.inner, x, &[x_chunk]),
    )
    .await;
    assert!(
        matches!(&got, Ok(Ok(m)) if m.is_empty()),
        "a normal peer's fetch stalled behind the hostile peer's requests: {got:?}"
    );
    eprintln!(
        "{} stalled requests open; a normal fetch took {:?}",
        held.len(),
        started.elapsed()
    );
    drop(held);
    drop(conns);
}

/// Finding 5 of #26: strangers (ids no registered list names) cost the
/// control plane at most one registry query every few seconds, however
/// many there are; a node that registers is let in once its refusal
/// expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_strangers_costs_a_query_every_few_seconds() {
    let kek = Arc::new(Kek::generate().unwrap());
    let a = node(&kek).await;
    register(&[&a]);
    let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let late = NodeId([9; 32]);
    let late_registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (queries, late_registered) = (queries.clone(), late_registered.clone());
        a.engine.set_registry_check(Arc::new(move |n: NodeId| {
            queries.fetch_add(1, Ordering::SeqCst);
            let yes = n == late && late_registered.load(Ordering::SeqCst);
            Box::pin(async move { yes })
        }));
    }
    let strangers: Vec<NodeId> = (0..1000u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id[31] = 1;
            NodeId(id)
        })
        .collect();
    let asks = strangers.iter().map(|s| a.engine.inner.is_registered(s));
    let answers = futures::future::join_all(asks).await;
    assert!(answers.iter().all(|r| !r));
    for s in &strangers {
        assert!(!a.engine.inner.is_registered(s).await);
    }
    // Real connections from strangers too.
    for _ in 0..5 {
        let ep = bare_endpoint(None).await;
        let addr = EndpointAddr::new(iroh::PublicKey::from_bytes(&a.engine.node_id().0).unwrap())
            .with_ip_addr(peer(&a).addrs[0]);
        if let Ok(conn) = ep.connect(addr, proto::ALPN).await {
            let _ = conn.closed().await;
        }
    }
    let n = queries.load(Ordering::SeqCst);
    eprintln!("1000 strangers asked twice, 5 connected: {n} registry queries");
    assert!(n <= 2, "{n} registry queries for a flood of strangers");
    assert!(!a.engine.inner.is_registered(&late).await);
    late_registered.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !a.engine.inner.is_registered(&late).await {
        assert!(
            Instant::now() < deadline,
            "a node that registered is never let in"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Finding 2 of #26 (in part): a pull whose chain does not verify writes
/// nothing into PRUNED. A member signs a head that names a parent nobody
/// holds and this node's head at the wrong height; a peer serves it and
/// answers the parent missing. Before, the parent went into PRUNED (where
/// it makes later walks skip checks) before the chain was checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_fails_verification_writes_no_cut() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (x, _) = shared(&a, &b, &kek).await;
    let ab = a.state.open_bucket(&x, &kek).unwrap();
    let bb = b.state.open_bucket(&x, &kek).unwrap();
    let ours = ab.head().unwrap();
    let ours_m = ab.manifest(&ours).unwrap();
    let made_up = Hash::of(b"a version nobody holds");
    let mut body = bb.manifest(&bb.head().unwrap()).unwrap().body;
    body.previous = Some(made_up);
    body.merged = Some(ours);
    body.height = ours_m.body.height; // does not follow it
    body.author = b.engine.node_id();
    assert!(body.shares.iter().any(|s| s.recipient == body.author));
    let forged = Manifest::sign(body, b.state.identity()).unwrap();
    let bytes = forged.to_bytes().unwrap();
    let fh = Hash::of(&bytes);
    let scripted = ScriptedPeer::start(HashMap::from([(fh, bytes)]), Vec::new()).await;
    a.engine.set_peers(x, vec![scripted.peer.clone()]);
    let got = a.engine.pull(x, fh).await;
    eprintln!("the pull: {got:?}");
    assert!(
        !ab.pruned_versions().unwrap().contains(&made_up),
        "an unverified pull wrote its cut into PRUNED"
    );
    assert_eq!(ab.head().unwrap(), ours);
}

/// Finding 2 of #26 (in part): a peer's answer to a heads request names
/// only buckets it was asked about; a head for another bucket of this
/// node (one the peer does not share) is ignored, not pulled from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_for_buckets_not_asked_about_are_ignored() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (x, _) = shared(&a, &b, &kek).await;
    let (z, _, _) = bucket_with_file(&a, &kek, b"z");
    a.engine.set_peers(z, vec![peer(&b)]);
    let unsolicited = Hash::of(b"a head of z from a peer not asked");
    let scripted =
        ScriptedPeer::start(HashMap::new(), vec![(x, None), (z, Some(unsolicited))]).await;
    a.engine.set_peers(x, vec![scripted.peer.clone()]);
    a.engine.compare_heads().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !a.engine
            .peers_of(&z)
            .iter()
            .any(|p| p.node == scripted.peer.node),
        "a head for a bucket not asked about was pulled from the peer that sent it"
    );
}

/// An endpoint speaking the sync ALPN, keyed at random, with a stream
/// receive window of `window` bytes if given.
/// How a node reaches the test endpoint `ep` (its IPv4 sockets).
fn peer_at(ep: &Endpoint) -> Peer {
    Peer {
        node: NodeId(*ep.id().as_bytes()),
        addrs: ep
            .bound_sockets()
            .into_iter()
            .filter(|a| a.is_ipv4())
            .collect(),
    }
}

async fn bare_endpoint(window: Option<u32>) -> Endpoint {
    let mut b = Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .portmapper_config(iroh::endpoint::PortmapperConfig::Disabled)
        .alpns(vec![proto::ALPN.to_vec()]);
    if let Some(w) = window {
        b = b.transport_config(
            iroh::endpoint::QuicTransportConfig::builder()
                .stream_receive_window(w.into())
                .receive_window((64u32 << 20).into())
                .build(),
        );
    }
    b.bind_addr("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .unwrap()
        .bind()
        .await
        .unwrap()
}

/// A peer answering from a script: blobs from a map (missing otherwise),
/// heads requests with a fixed list.
struct ScriptedPeer {
    peer: Peer,
    _router: iroh::protocol::Router,
}

#[derive(Debug)]
struct Script {
    blobs: HashMap<Hash, Vec<u8>>,
    heads: Vec<(BucketId, Option<Hash>)>,
}

impl iroh::protocol::ProtocolHandler for Script {
    async fn accept(&self, conn: Connection) -> Result<(), iroh::protocol::AcceptError> {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            match wire::read_msg::<Request>(&mut recv).await {
                Ok(Some(Request::GetBlobs { hashes, .. })) => {
                    let _ = wire::write_msg(&mut send, &Response::Noted).await;
                    for h in hashes {
                        match self.blobs.get(&h) {
                            Some(b) => {
                                let f = proto::BlobFrame::Blob {
                                    hash: h,
                                    len: b.len() as u32,
                                };
                                let _ = wire::write_msg(&mut send, &f).await;
                                let _ = send.write_all(b).await;
                            }
                            None => {
                                let f = proto::BlobFrame::Missing { hash: h };
                                let _ = wire::write_msg(&mut send, &f).await;
                            }
                        }
                    }
                }
                Ok(Some(Request::Heads { .. })) => {
                    let _ = wire::write_msg(&mut send, &Response::Heads(self.heads.clone())).await;
                }
                Ok(Some(_)) => {
                    let _ = wire::write_msg(&mut send, &Response::Noted).await;
                }
                _ => continue,
            }
            let _ = send.finish();
            let _ = send.stopped().await;
        }
        Ok(())
    }
}

impl ScriptedPeer {
    async fn start(blobs: HashMap<Hash, Vec<u8>>, heads: Vec<(BucketId, Option<Hash>)>) -> Self {
        let ep = bare_endpoint(None).await;
        let peer = peer_at(&ep);
        let router = iroh::protocol::Router::builder(ep)
            .accept(proto::ALPN, Script { blobs, heads })
            .spawn();
        Self {
            peer,
            _router: router,
        }
    }
}

/// A history answer brings the versions the asker lacks in one round trip
/// (down to the head it holds, not below), and, asked under one bucket's
/// proof for another bucket's head, brings nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_answer_stops_at_the_askers_head_and_at_its_bucket() {
    let kek = Arc::new(Kek::generate().unwrap());
    // b must not pull while a writes (its head is what the answer stops at).
    let (a, b, x) = quiet_pair(&kek).await;
    let xa = a.state.open_bucket(&x, &kek).unwrap();
    let xb = b.state.open_bucket(&x, &kek).unwrap();
    let held = xb.head().unwrap();
    let written: HashSet<Hash> = write_versions(&xa, 30).into_iter().collect();
    let head = xa.head().unwrap();
    let ask = |head, asking| {
        client::ask_history(&b.engine.inner, &xb, head, Some(a.engine.node_id()), asking)
    };
    let got: HashSet<Hash> = ask(head, client::Ask::History).await.into_keys().collect();
    assert!(!got.contains(&held), "the asker's own head came back");
    assert_eq!(got, written, "exactly the versions b lacks");

    // A bundle: the same history, and the head's tree where it differs
    // from b's head (its root and the one chunk of /n), nothing more.
    let bundle: HashSet<Hash> = ask(head, client::Ask::Bundle).await.into_keys().collect();
    let tree: HashSet<Hash> = bundle.difference(&written).copied().collect();
    let root = xa.manifest(&head).unwrap().body.root;
    assert!(bundle.is_superset(&written));
    assert!(
        tree.contains(&root),
        "the head's root directory is not in the bundle"
    );
    assert_eq!(tree.len(), 2, "the root and /n's chunk: {tree:?}");
    assert!(!tree.iter().any(|h| b.state.store().contains(h)));

    let (_, _, y_head) = bucket_with_file(&a, &kek, b"another tenant's file");
    for asking in [client::Ask::History, client::Ask::Bundle] {
        assert!(
            ask(y_head, asking).await.is_empty(),
            "another bucket's blobs came under X's proof"
        );
    }
}

/// A pull that failed part way leaves manifests whose parents this node
/// never got. A later pull must walk on through them (they are not in this
/// node's history) instead of stopping at the first one held: it stopped,
/// and every merge after it failed with a broken chain, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_left_half_fetched_is_completed_by_the_next_pull() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b, id) = quiet_pair(&kek).await;
    let ab = a.state.open_bucket(&id, &kek).unwrap();
    let bb = b.state.open_bucket(&id, &kek).unwrap();
    let versions = write_versions(&ab, 6);
    // What the failed pull left: two manifests, not the ones below them.
    for v in &versions[3..5] {
        let bytes = a.state.store().get(v).unwrap();
        assert_eq!(b.state.store().put(&bytes).unwrap(), *v);
    }
    b.state.store().sync().unwrap();
    b.engine.set_peers(id, vec![peer(&a)]);
    b.engine.pull(id, versions[5]).await.unwrap();
    assert!(bb.has_in_history(&versions[5]).unwrap());
    let mut m = bb.mount().unwrap();
    assert_eq!(path::read_file(&mut m, "/n").unwrap(), 5u32.to_le_bytes());
    // The whole chain walks (GC's walk failed on it too).
    assert!(bb.has_in_history(&versions[0]).unwrap());
}

/// #26 finding 2: a peer that holds no secret of the bucket (here a
/// scripted endpoint) serves a self-signed genesis made of a real version's
/// tree and sealed root key, itself among the shares. Before, the pull
/// took it (a parentless height-0 manifest links to nothing) and the merge
/// against no base brought back a deleted file and made the forger a
/// member. Now it is refused as not written by a member, bound or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_genesis_from_a_peer_without_the_secret_is_refused() {
    let kek = Arc::new(Kek::generate().unwrap());
    let a = node(&kek).await;
    let (x, secret, _) = bucket_with_file(&a, &kek, b"kept");
    let ab = a.state.open_bucket(&x, &kek).unwrap();
    let mut m = ab.mount().unwrap();
    path::write_file(&mut m, "/gone.txt", b"deleted later").unwrap();
    let with_gone = m.save().unwrap().hash;
    m.unlink(crate::bucket::ROOT_INO, b"gone.txt").unwrap();
    let ours = m.save().unwrap().hash;
    drop(m);
    let genuine = ab.manifest(&with_gone).unwrap();
    let stranger = crate::crypto::Identity::generate().unwrap();
    let mut body = genuine.body.claimed_by(stranger.node_id(), None, 0);
    let bound = Manifest::sign(body.clone(), &stranger).unwrap();
    // Format 1, as copied from history written before the binding.
    let key = ab.root_key_for_tests(&genuine);
    body.root_key = secret.seal(&key).unwrap();
    let unbound = Manifest::sign_unbound(body, &stranger).unwrap();
    for forged in [bound, unbound] {
        let bytes = forged.to_bytes().unwrap();
        let fh = Hash::of(&bytes);
        let scripted = ScriptedPeer::start(HashMap::from([(fh, bytes)]), Vec::new()).await;
        a.engine.set_peers(x, vec![scripted.peer.clone()]);
        let err = a.engine.pull(x, fh).await.unwrap_err().to_string();
        assert!(
            err.contains("not written by a member") || err.contains("unbound manifest"),
            "{err}"
        );
        assert_eq!(ab.head().unwrap(), ours, "the head moved");
        let mut m = ab.mount().unwrap();
        assert!(
            path::read_file(&mut m, "/gone.txt").is_err(),
            "a deleted file came back"
        );
        assert!(!m.members().contains(&stranger.node_id()));
    }
}

/// #26 finding 2: a first stage asks every peer, not only the first to
/// answer. The first listed peer is behind (it missed a version); the
/// head taken must contain what the other peer offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_stage_takes_every_offered_head_not_the_first_answer() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b, c) = (node(&kek).await, node(&kek).await, node(&kek).await);
    register(&[&a, &b, &c]);
    let (id, secret) = shared(&a, &b, &kek).await;
    a.engine.set_peers(id, vec![]);
    b.engine.set_peers(id, vec![]);
    let ab = a.state.open_bucket(&id, &kek).unwrap();
    let mut m = ab.mount().unwrap();
    path::write_file(&mut m, "/new.txt", b"only on a").unwrap();
    m.save().unwrap();
    drop(m);
    let head = c
        .engine
        .fetch_bucket(id, secret, vec![peer(&b), peer(&a)])
        .await
        .unwrap();
    let cb = c.state.open_bucket(&id, &kek).unwrap();
    assert_eq!(cb.head().unwrap(), head);
    c.engine.complete(id).await.unwrap();
    let mut m = cb.mount().unwrap();
    assert_eq!(
        path::read_file(&mut m, "/new.txt").unwrap(),
        b"only on a",
        "the stage took the behind peer's head and rolled the volume back"
    );
}

/// #26 finding 3: a peer cannot fill a node's disk with a chain below a
/// head that does not verify. A stranger serves a head and 40 manifests
/// below it (each naming the next as its parent); the head is checked
/// before anything below it is fetched, and removed when it fails: the
/// node's store holds none of them afterwards. Before, the whole chain
/// was stored (64 levels, each up to the blob cap) and the links checked
/// after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_head_costs_no_disk_below_it() {
    let kek = Arc::new(Kek::generate().unwrap());
    let a = node(&kek).await;
    let (x, _, ours) = bucket_with_file(&a, &kek, b"kept");
    let ab = a.state.open_bucket(&x, &kek).unwrap();
    let genuine = ab.manifest(&ours).unwrap();
    let stranger = crate::crypto::Identity::generate().unwrap();
    let mut blobs = HashMap::new();
    let mut below: Option<Hash> = None;
    for height in 0..=40u64 {
        let body = genuine.body.claimed_by(stranger.node_id(), below, height);
        let bytes = Manifest::sign(body, &stranger).unwrap().to_bytes().unwrap();
        let h = Hash::of(&bytes);
        blobs.insert(h, bytes);
        below = Some(h);
    }
    let head = below.unwrap();
    let forged: Vec<Hash> = blobs.keys().copied().collect();
    let scripted = ScriptedPeer::start(blobs, Vec::new()).await;
    a.engine.set_peers(x, vec![scripted.peer.clone()]);
    assert!(a.engine.pull(x, head).await.is_err());
    let stored: Vec<&Hash> = forged
        .iter()
        .filter(|h| a.state.store().contains(h))
        .collect();
    assert!(
        stored.is_empty(),
        "{} forged manifests stored",
        stored.len()
    );
    assert_eq!(ab.head().unwrap(), ours);
}

/// #26 finding 6: a node removed from the cluster is refused at once, on
/// the connection it already holds too (registration used to be checked
/// only when a connection opened), and a new connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_on_its_open_connection() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    register(&[&a, &b]);
    let (x, _) = shared(&a, &b, &kek).await;
    let bb = b.state.open_bucket(&x, &kek).unwrap();
    let heads = || Request::Heads {
        buckets: vec![(
            x,
            bb.proof_key()
                .proof(&x, &b.engine.node_id().0, &a.engine.node_id().0),
        )],
    };
    let answer = client::ask_for_tests(&b.engine.inner, &peer(&a), &heads()).await;
    assert!(matches!(answer, Ok(Response::Heads(_))), "{answer:?}");
    let refused = a.engine.stats().refused.load(Ordering::Relaxed);
    a.state.revoked().add([b.engine.node_id()]).unwrap();
    // b's connection to a is still open: its next request is refused.
    let answer = client::ask_for_tests(&b.engine.inner, &peer(&a), &heads()).await;
    assert!(!matches!(answer, Ok(Response::Heads(_))), "{answer:?}");
    assert!(a.engine.stats().refused.load(Ordering::Relaxed) > refused);
    // And so is every later one, on a new connection.
    let answer = client::ask_for_tests(&b.engine.inner, &peer(&a), &heads()).await;
    assert!(!matches!(answer, Ok(Response::Heads(_))), "{answer:?}");
    // a drops its own connections to b and forgets it as a peer.
    a.engine.drop_revoked().await;
    assert!(a
        .engine
        .peers_of(&x)
        .iter()
        .all(|p| p.node != b.engine.node_id()));
}

/// Hold `id` blind on `n` with the proof key of `secret` (what the
/// controller records and an assigned node starts from).
fn hold_blind(n: &Node, kek: &Kek, id: &BucketId, secret: &SecretKey) {
    let wrapped = crate::db::replicas::wrap_proof_key(
        kek,
        &id.to_hex(),
        &crate::bucket::ProofKey::of(secret),
    )
    .unwrap();
    n.state.create_blind(id, &wrapped, kek).unwrap();
}

/// #28: a blind replica fetches a version's blobs from every holder at
/// once; one that stopped part way fetches only what it lacks; and a peer
/// that claims a version it does not fully hold does not make a replica
/// call itself in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_replicas_fetch_from_every_holder_resume_and_are_not_fooled() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b) = (node(&kek).await, node(&kek).await);
    let (c, d, liar, fooled) = (
        node(&kek).await,
        node(&kek).await,
        node(&kek).await,
        node(&kek).await,
    );
    register(&[&a, &b, &c, &d, &liar, &fooled]);
    // Many chunks (64 KiB each, several batches), on both members.
    let id = BucketId::generate().unwrap();
    let secret = SecretKey::generate().unwrap();
    let opts = BucketOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    };
    let bucket = a
        .state
        .create_bucket_with_secret(id, secret.clone(), &kek, &opts)
        .unwrap();
    let mut m = bucket.mount().unwrap();
    let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 251) as u8).collect();
    path::write_file(&mut m, "/big.bin", &data).unwrap();
    let head = m.save().unwrap().hash;
    b.engine
        .fetch_bucket(id, secret.clone(), vec![peer(&a)])
        .await
        .unwrap();
    b.engine.complete(id).await.unwrap();
    let head = b
        .state
        .open_bucket(&id, &kek)
        .unwrap()
        .head()
        .unwrap_or(head);
    // The member b's enrollment made is the version to follow; a has it too.
    a.engine.set_peers(id, vec![peer(&b)]);
    a.engine.pull(id, head).await.unwrap();
    let holders = vec![peer(&a), peer(&b)];

    hold_blind(&c, &kek, &id, &secret);
    c.engine.set_peers(id, holders.clone());
    let served = |n: &Node| n.engine.stats().blobs_served.load(Ordering::Relaxed);
    let (a0, b0) = (served(&a), served(&b));
    let done = c
        .engine
        .replicate(id, head, replicate::Keep::Head)
        .await
        .unwrap();
    assert_eq!(done.fetched, done.blobs, "nothing was here before");
    assert!(done.blobs > 96, "{done:?}");
    assert!(
        served(&a) > a0 && served(&b) > b0,
        "both holders served: a {} b {}",
        served(&a) - a0,
        served(&b) - b0
    );
    let blind = c.state.open_blind(&id, &kek).unwrap();
    assert_eq!(blind.head().unwrap().map(|(v, _)| v), Some(head));

    // A rebuild that stopped: half the blobs are here already.
    hold_blind(&d, &kek, &id, &secret);
    d.engine.set_peers(id, holders.clone());
    let (_, statement) = blind.head().unwrap().unwrap();
    let set = blind.read_set(&statement).unwrap();
    let mut members: Vec<Hash> = set.members.iter().copied().collect();
    members.sort();
    let half = members.len() / 2;
    for h in &members[..half] {
        d.state
            .store()
            .put(&c.state.store().get(h).unwrap())
            .unwrap();
    }
    let resumed = d
        .engine
        .replicate(id, head, replicate::Keep::Head)
        .await
        .unwrap();
    assert_eq!(
        resumed.fetched,
        (members.len() - half) as u64,
        "what was here is not fetched again"
    );

    // A peer that lost a blob of the version it says it holds.
    hold_blind(&liar, &kek, &id, &secret);
    liar.engine.set_peers(id, holders);
    liar.engine
        .replicate(id, head, replicate::Keep::Head)
        .await
        .unwrap();
    let missing = members[half];
    liar.state.store().remove(&missing).unwrap();
    hold_blind(&fooled, &kek, &id, &secret);
    fooled.engine.set_peers(id, vec![peer(&liar)]);
    let err = fooled
        .engine
        .replicate(id, head, replicate::Keep::Head)
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::NoPeer(_)), "{err}");
    let f = fooled.state.open_blind(&id, &kek).unwrap();
    assert_eq!(f.head().unwrap(), None, "not in sync without every blob");
    assert!(!fooled.state.store().contains(&missing));

    // And a node that holds the secret stages from a blind copy alone.
    let e = node(&kek).await;
    register(&[&a, &b, &c, &d, &liar, &fooled, &e]);
    let imported = e
        .engine
        .fetch_bucket(id, secret.clone(), vec![peer(&c)])
        .await
        .unwrap();
    let mine = e.state.open_bucket(&id, &kek).unwrap();
    assert!(
        mine.is_member_at(&imported, &e.engine.node_id()).unwrap(),
        "it made itself a member"
    );
    e.engine.complete(id).await.unwrap();
    let mut m = mine.mount().unwrap();
    assert!(path::read_file(&mut m, "/big.bin").unwrap() == data);
}

/// #26: a rotation of the bucket secret after a node's removal. The
/// removed node keeps the base secret (Postgres's, under the cluster KEK)
/// and every version it held, but opens no version written after; the
/// remaining member learns the new secret from its share on the next pull;
/// a node that stages the volume later, starting from the base secret as
/// NodeStage does, gets it by enrolling; versions from before the rotation
/// still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_reaches_members_but_not_a_removed_node() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b, gone) = (node(&kek).await, node(&kek).await, node(&kek).await);
    register(&[&a, &b, &gone]);
    let (id, secret) = shared(&a, &b, &kek).await;
    gone.engine
        .fetch_bucket(id, secret.clone(), vec![peer(&a)])
        .await
        .unwrap();
    let ab = a.state.open_bucket(&id, &kek).unwrap();
    let before = ab.head().unwrap();
    assert!(a
        .state
        .members_at_head(&id)
        .unwrap()
        .contains(&gone.engine.node_id()));
    a.state.revoked().add([gone.engine.node_id()]).unwrap();
    let mut m = ab.mount().unwrap();
    assert!(m.drop_revoked_members().unwrap());
    assert_eq!(m.rotate_secret().unwrap(), 1);
    path::write_file(&mut m, "/after.txt", b"written after the removal").unwrap();
    let rotated = m.save().unwrap().hash;
    drop(m);
    assert_eq!(ab.epochs(), 1);
    let manifest = Manifest::load(a.state.store(), &rotated).unwrap();
    assert!(!manifest.body.shares_with(&gone.engine.node_id()));

    // The removed node, with the base secret and its old share, opens what
    // it held and not the rotated version.
    let held = gone.state.open_bucket(&id, &kek).unwrap();
    assert!(held.can_open(&Manifest::load(a.state.store(), &before).unwrap()));
    assert!(
        !held.can_open(&manifest),
        "the removed node opens a version written after"
    );
    assert_eq!(held.epochs(), 0);
    let base_only = a.state.bucket_with_secret(&id, secret.clone());
    assert_eq!(base_only.epochs(), 1, "a's own epochs are on its disk");

    // b, a member, takes the rotated head and learns the secret from its share.
    a.engine.announce(id, rotated).await;
    let bb = b.state.open_bucket(&id, &kek).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bb.head().unwrap() != rotated {
        assert!(Instant::now() < deadline, "b never took the rotated head");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bb = b.state.open_bucket(&id, &kek).unwrap();
    assert_eq!(bb.epochs(), 1, "b keeps the learned epoch on its disk");
    let mut m = bb.mount().unwrap();
    assert_eq!(
        path::read_file(&mut m, "/after.txt").unwrap(),
        b"written after the removal"
    );
    // b writes on: its version is sealed under the new secret too.
    path::write_file(&mut m, "/from-b.txt", b"b").unwrap();
    let from_b = m.save().unwrap().hash;
    drop(m);
    let from_b = Manifest::load(b.state.store(), &from_b).unwrap();
    assert!(!held.can_open(&from_b));
    assert!(a.state.open_bucket(&id, &kek).unwrap().can_open(&from_b));

    // A node staging the volume later starts from the base secret.
    let late = node(&kek).await;
    register(&[&a, &b, &late]);
    late.engine
        .fetch_bucket(id, secret.clone(), vec![peer(&a)])
        .await
        .unwrap();
    let lb = late.state.open_bucket(&id, &kek).unwrap();
    late.engine.complete(id).await.unwrap();
    let mut m = lb.mount().unwrap();
    assert_eq!(
        path::read_file(&mut m, "/after.txt").unwrap(),
        b"written after the removal"
    );
    assert_eq!(path::read_file(&mut m, "/f.txt").unwrap(), b"original");
    assert_eq!(lb.epochs(), 1);

    // A node cloning the rotated version (a snapshot's) starts from the
    // base secret too, and is not made a member: a member seals it the
    // key ring. The removed node asking the same is refused.
    let cloner = node(&kek).await;
    register(&[&a, &b, &late, &cloner, &gone]);
    a.state.revoked().add([gone.engine.node_id()]).unwrap();
    let base_only = cloner.state.bucket_with_secret(&id, secret.clone());
    assert_eq!(base_only.epochs(), 0);
    cloner
        .engine
        .fetch_foreign_version(id, secret.clone(), rotated, vec![peer(&a)])
        .await
        .unwrap();
    let source = cloner.state.bucket_with_secret(&id, secret.clone());
    assert!(source.can_open_version(&rotated).unwrap());
    let clone_id = BucketId::generate().unwrap();
    let clone = cloner
        .state
        .clone_bucket_with_secret(
            clone_id,
            SecretKey::generate().unwrap(),
            &source,
            &rotated,
            &kek,
        )
        .unwrap();
    // The clone's tree opens (its chunks come from the source's peers on read).
    let mut m = clone.mount().unwrap();
    let after = m.lookup(crate::bucket::ROOT_INO, b"after.txt").unwrap();
    assert_eq!(after.size, b"written after the removal".len() as u64);
    assert!(!a
        .state
        .members_at_head(&id)
        .unwrap()
        .contains(&cloner.engine.node_id()));
    let refused = gone
        .engine
        .fetch_keyring(id, secret.clone(), vec![peer(&a)])
        .await;
    assert!(refused.is_err(), "a removed node got the key ring");
    assert_eq!(held.epochs(), 0);

    // Versions from before the rotation still open on a.
    let ab = a.state.open_bucket(&id, &kek).unwrap();
    let mut old = ab.open_version(&before).unwrap();
    assert_eq!(path::read_file(&mut old, "/f.txt").unwrap(), b"original");
    assert!(path::read_file(&mut old, "/after.txt").is_err());
}

/// #26: a second first version. A node holding the secret makes a history
/// of its own for the bucket (a genesis bound like any, so it verifies) and
/// announces its head: a node that knows where the bucket's history begins
/// (what Postgres recorded) refuses the chain and keeps its head. Without
/// that record, the same announcement merges the made-up history in (the
/// control: the check is what refuses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_first_version_is_refused() {
    let kek = Arc::new(Kek::generate().unwrap());
    let (a, b, m) = (node(&kek).await, node(&kek).await, node(&kek).await);
    register(&[&a, &b, &m]);
    let (id, secret) = shared(&a, &b, &kek).await;
    let ab = a.state.open_bucket(&id, &kek).unwrap();
    assert!(
        a.state.genesis_of(&id).unwrap().is_some(),
        "the maker records it"
    );
    // m is a member (it enrolled), then throws its copy away and makes a
    // history of its own under the same secret.
    m.engine
        .fetch_bucket(id, secret.clone(), vec![peer(&a)])
        .await
        .unwrap();
    std::fs::remove_dir_all(m._dir.path().join("buckets").join(id.to_hex())).unwrap();
    let before = ab.head().unwrap();
    let made_up = m
        .state
        .create_bucket_with_secret(id, secret.clone(), &kek, &BucketOptions::default())
        .unwrap();
    let mut mm = made_up.mount().unwrap();
    path::write_file(&mut mm, "/resurrected.txt", b"deleted long ago").unwrap();
    let forged = mm.save().unwrap().hash;
    drop(mm);
    m.engine.set_peers(id, vec![peer(&a)]);
    a.engine.set_peers(id, vec![peer(&b), peer(&m)]);
    m.engine.announce(id, forged).await;
    // The announcement is pulled and refused: a's head stays.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(ab.head().unwrap(), before, "a took a second history");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut am = ab.mount().unwrap();
    assert!(path::read_file(&mut am, "/resurrected.txt").is_err());
    drop(am);

    // The control: with no record of the first version, it merges.
    let genesis_file = a._dir.path().join("genesis").join(id.to_hex());
    std::fs::remove_file(genesis_file).unwrap();
    m.engine.announce(id, forged).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ab.head().unwrap() == before {
        assert!(Instant::now() < deadline, "the control never merged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut am = ab.mount().unwrap();
    assert_eq!(
        path::read_file(&mut am, "/resurrected.txt").unwrap(),
        b"deleted long ago"
    );
}

/// A node that connects before its registration is seen here tries dozens
/// of times a second: one warning a minute per node, not one per try.
#[test]
fn a_node_refused_again_and_again_is_warned_about_once_a_minute() {
    let mut strangers = Strangers::default();
    let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
    assert!(strangers.warn_refusal(&a));
    assert!(!strangers.warn_refusal(&a));
    assert!(!strangers.warn_refusal(&a));
    assert!(strangers.warn_refusal(&b), "each node is warned about once");
    // A minute later, a refusal of `a` is worth a warning again.
    let warned = strangers.warned.get_mut(&a).unwrap();
    *warned = warned.checked_sub(REFUSAL_WARN_EVERY).unwrap();
    assert!(strangers.warn_refusal(&a));
    assert!(!strangers.warn_refusal(&a));
}
