//! Tampering, wrong keys, forged signatures, broken chains, bad names and the
//! quota: each gives its own clear error, never wrong bytes, never a panic.

mod common;

use common::{fixture, pattern};
use jax_csi::bucket::{
    path, BucketError, BucketOptions, Manifest, ManifestBody, SetAttr, StateDir, ROOT_INO,
};
use jax_csi::crypto::{Identity, Kek};
use jax_csi::store::Hash;

/// Read every file of the head; Ok only if all bytes match what was written.
fn read_all(
    state: &std::path::Path,
    id: &jax_csi::bucket::BucketId,
    kek: &Kek,
    expected: &[(String, Vec<u8>)],
) -> Result<(), BucketError> {
    let sd = StateDir::open(state)?;
    let bucket = sd.open_bucket(id, kek)?;
    bucket.verify()?;
    let mut m = bucket.mount()?;
    for (p, want) in expected {
        let got = path::read_file(&mut m, p)?;
        assert_eq!(&got, want, "tampering must never yield wrong bytes ({p})");
    }
    Ok(())
}

#[test]
fn flipping_a_byte_of_any_blob_gives_an_integrity_error() {
    let f = fixture(BucketOptions {
        chunk_size: 4096,
        ..Default::default()
    });
    let mut m = f.bucket.mount().unwrap();
    let files = vec![
        ("/a.bin".to_string(), pattern(10_000, 1)),
        ("/dir/b.txt".to_string(), b"hello".to_vec()),
        ("/dir/sub/c".to_string(), pattern(5000, 7)),
    ];
    for (p, data) in &files {
        path::write_file(&mut m, p, data).unwrap();
    }
    m.save().unwrap();
    // Only the head's blobs: drop the genesis version's.
    f.state.gc(&[&f.bucket]).unwrap();
    let state = f.state.root().to_path_buf();
    read_all(&state, &f.bucket.id(), &f.kek, &files).unwrap();

    let blobs = f.state.store().list().unwrap();
    assert!(
        blobs.len() >= 8,
        "manifests, 4 dir nodes and chunks: {}",
        blobs.len()
    );
    let live_after_head: Vec<Hash> = blobs;
    for h in live_after_head {
        let p = f.state.store().path_of(&h);
        let original = std::fs::read(&p).unwrap();
        for pos in [0, original.len() / 2, original.len() - 1] {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x01;
            std::fs::write(&p, &bytes).unwrap();
            let r = read_all(&state, &f.bucket.id(), &f.kek, &files);
            match r {
                Err(e) if e.is_integrity() => {}
                // The old genesis manifest is not needed by the head.
                Ok(()) => panic!("blob {h} tampered at {pos} went unnoticed"),
                Err(e) => {
                    panic!("blob {h} tampered at {pos}: expected an integrity error, got {e}")
                }
            }
        }
        std::fs::write(&p, &original).unwrap();
    }
    read_all(&state, &f.bucket.id(), &f.kek, &files).unwrap();
}

#[test]
fn truncated_blob_is_an_integrity_error() {
    let f = fixture(BucketOptions::default());
    let mut m = f.bucket.mount().unwrap();
    path::write_file(&mut m, "/x", &pattern(3000, 3)).unwrap();
    m.save().unwrap();
    f.state.gc(&[&f.bucket]).unwrap();
    for h in f.state.store().list().unwrap() {
        let p = f.state.store().path_of(&h);
        let original = std::fs::read(&p).unwrap();
        std::fs::write(&p, &original[..original.len() / 3]).unwrap();
        let r = read_all(
            f.state.root(),
            &f.bucket.id(),
            &f.kek,
            &[("/x".into(), pattern(3000, 3))],
        );
        assert!(matches!(r, Err(ref e) if e.is_integrity()), "{h}: {r:?}");
        std::fs::write(&p, &original).unwrap();
    }
}

#[test]
fn wrong_kek_is_its_own_error() {
    let f = fixture(BucketOptions::default());
    let other = Kek::generate().unwrap();
    let err = f.state.open_bucket(&f.bucket.id(), &other).unwrap_err();
    assert!(matches!(err, BucketError::WrongKey(_)), "{err}");
    assert_eq!(
        err.to_string(),
        format!("wrong key for bucket {}", f.bucket.id())
    );
}

#[test]
fn forged_signature_is_rejected() {
    let f = fixture(BucketOptions::default());
    let head = f.bucket.head().unwrap();
    let good = f.bucket.manifest(&head).unwrap();

    // 1. Change the body but keep the old signature.
    let mut body = good.body.clone();
    body.used_bytes += 1;
    let forged = Manifest {
        body,
        signature: good.signature,
        format: good.format,
    };
    let h = f.state.store().put(&forged.to_bytes().unwrap()).unwrap();
    let err = f.bucket.manifest(&h).unwrap_err();
    assert!(matches!(err, BucketError::BadSignature { .. }), "{err}");

    // 2. A valid signature by an identity that holds no share of the bucket.
    let stranger = Identity::generate().unwrap();
    let mut body: ManifestBody = good.body.clone();
    body.author = stranger.node_id();
    let signed = Manifest::sign(body, &stranger).unwrap();
    let h = f.state.store().put(&signed.to_bytes().unwrap()).unwrap();
    let err = f.bucket.manifest(&h).unwrap_err();
    assert!(matches!(err, BucketError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains("holds no key share"), "{err}");

    // 3. Pointing HEAD at the forgery makes mounting fail, not succeed.
    std::fs::write(
        f.state
            .root()
            .join("buckets")
            .join(f.bucket.id().to_hex())
            .join("HEAD"),
        h.to_hex(),
    )
    .unwrap();
    assert!(matches!(
        f.bucket.mount(),
        Err(BucketError::BadSignature { .. })
    ));
}

#[test]
fn chain_that_does_not_link_is_rejected() {
    let f = fixture(BucketOptions::default());
    let genesis = f.bucket.head().unwrap();
    let mut m = f.bucket.mount().unwrap();
    path::write_file(&mut m, "/a", b"1").unwrap();
    let v1 = m.save().unwrap();
    let good = f.bucket.manifest(&v1.hash).unwrap();

    // Height that skips a version, validly signed by the bucket's own node.
    let mut body = good.body.clone();
    body.height = 5;
    let bad = Manifest::sign(body, f.state.identity())
        .unwrap()
        .store(f.state.store())
        .unwrap();
    std::fs::write(
        f.state
            .root()
            .join("buckets")
            .join(f.bucket.id().to_hex())
            .join("HEAD"),
        bad.to_hex(),
    )
    .unwrap();
    let err = f.bucket.history().unwrap_err();
    assert!(matches!(err, BucketError::ChainBroken { .. }), "{err}");

    // A previous link to a version that is not in the store.
    let mut body = good.body.clone();
    body.previous = Some(Hash::of(b"missing"));
    let bad = Manifest::sign(body, f.state.identity())
        .unwrap()
        .store(f.state.store())
        .unwrap();
    std::fs::write(
        f.state
            .root()
            .join("buckets")
            .join(f.bucket.id().to_hex())
            .join("HEAD"),
        bad.to_hex(),
    )
    .unwrap();
    let err = f.bucket.history().unwrap_err();
    assert!(matches!(err, BucketError::ChainBroken { .. }), "{err}");

    // A previous link into another bucket's chain.
    let other = fixture(BucketOptions::default());
    let foreign = other.bucket.head().unwrap();
    let foreign_bytes = std::fs::read(other.state.store().path_of(&foreign)).unwrap();
    f.state.store().put(&foreign_bytes).unwrap();
    let mut body = good.body.clone();
    body.previous = Some(foreign);
    let bad = Manifest::sign(body, f.state.identity())
        .unwrap()
        .store(f.state.store())
        .unwrap();
    std::fs::write(
        f.state
            .root()
            .join("buckets")
            .join(f.bucket.id().to_hex())
            .join("HEAD"),
        bad.to_hex(),
    )
    .unwrap();
    let err = f.bucket.history().unwrap_err();
    assert!(matches!(err, BucketError::ChainBroken { .. }), "{err}");

    // Restoring the genuine head makes history whole again.
    std::fs::write(
        f.state
            .root()
            .join("buckets")
            .join(f.bucket.id().to_hex())
            .join("HEAD"),
        v1.hash.to_hex(),
    )
    .unwrap();
    let hist = f.bucket.history().unwrap();
    assert_eq!(
        hist.iter().map(|v| v.hash).collect::<Vec<_>>(),
        vec![v1.hash, genesis]
    );
}

#[test]
fn bad_names_are_rejected_everywhere() {
    let f = fixture(BucketOptions::default());
    let mut m = f.bucket.mount().unwrap();
    let long = vec![b'n'; 256];
    let bad: Vec<&[u8]> = vec![b"", b".", b"..", b"a/b", b"a\0b", &long];
    m.create(ROOT_INO, b"ok", 0o644, 0, 0).unwrap();
    for name in bad {
        let expect = |r: Result<_, BucketError>| match r {
            Err(BucketError::InvalidName(_)) | Err(BucketError::NameTooLong) => {}
            other => panic!("{name:?}: {other:?}"),
        };
        expect(m.create(ROOT_INO, name, 0o644, 0, 0).map(|_| ()));
        expect(m.mkdir(ROOT_INO, name, 0o755, 0, 0).map(|_| ()));
        expect(m.symlink(ROOT_INO, name, b"t", 0, 0).map(|_| ()));
        expect(m.lookup(ROOT_INO, name).map(|_| ()));
        expect(m.unlink(ROOT_INO, name));
        expect(m.rename(ROOT_INO, b"ok", ROOT_INO, name, Default::default()));
    }
    assert!(matches!(
        m.create(ROOT_INO, &long, 0o644, 0, 0),
        Err(BucketError::NameTooLong)
    ));
    m.create(ROOT_INO, &vec![b'n'; 255], 0o644, 0, 0).unwrap();
}

#[test]
fn quota_refuses_growth_with_a_distinct_error() {
    let f = fixture(BucketOptions {
        quota: Some(10_000),
        chunk_size: 4096,
        ..Default::default()
    });
    let mut m = f.bucket.mount().unwrap();
    let a = m.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
    m.write(a, 0, &[1; 8000]).unwrap();
    let err = m.write(a, 8000, &[1; 3000]).unwrap_err();
    assert!(
        matches!(
            err,
            BucketError::QuotaExceeded {
                quota: 10_000,
                needed: 11_000
            }
        ),
        "{err}"
    );
    // The quota counts allocated bytes, as a block file system does: a
    // sparse file may be longer than the quota, its holes cost nothing...
    m.setattr(
        a,
        SetAttr {
            size: Some(20_000),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.getattr(a).unwrap().size, 20_000);
    assert_eq!(m.usage().used_bytes, 8192, "two whole 4 KiB chunks");
    // ...but filling a hole past the quota does not fit.
    let err = m.write(a, 16_384, &[1; 100]).unwrap_err();
    assert!(matches!(err, BucketError::QuotaExceeded { .. }), "{err}");
    // An absurd size is EFBIG, never ENOSPC.
    let err = m
        .setattr(
            a,
            SetAttr {
                size: Some(1 << 62),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, BucketError::FileTooLarge), "{err}");
    assert!(matches!(
        m.write(a, (1 << 62) - 10, b"x"),
        Err(BucketError::FileTooLarge)
    ));
    // Overwriting in place and shrinking still work.
    m.write(a, 0, &[2; 8000]).unwrap();
    m.setattr(
        a,
        SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    let b = m.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap().ino;
    m.write(b, 0, &[3; 9000]).unwrap();
    assert_eq!(m.usage().used_bytes, 10_000);
    // Deleting frees quota; raising the quota takes effect at once.
    m.unlink(ROOT_INO, b"b").unwrap();
    assert_eq!(m.usage().used_bytes, 1000);
    m.set_quota(Some(50_000)).unwrap();
    m.write(a, 0, &[4; 40_000]).unwrap();
    let saved = m.save().unwrap();
    let mut again = f.bucket.open_version(&saved.hash).unwrap();
    assert_eq!(again.usage().quota, Some(50_000));
    assert_eq!(again.usage().used_bytes, 40_000);
    assert_eq!(path::read_file(&mut again, "/a").unwrap(), vec![4; 40_000]);
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let f = fixture(BucketOptions::default());
    let kek_text = format!("{:?}", f.kek);
    assert!(kek_text.contains("redacted"), "{kek_text}");
    let head = f.bucket.head().unwrap();
    let m = f.bucket.manifest(&head).unwrap();
    let dbg = format!("{m:?}");
    assert!(
        !dbg.contains("sealed"),
        "shares print only their recipient: {dbg}"
    );
}

/// A small read far from the last one opens only the 16 KiB frames it needs
/// (verified against the chunk's address through the blob's outboard): it
/// returns the right bytes, a flipped byte in its frame is an integrity
/// error, and frames elsewhere in the chunk stay readable.
#[test]
fn small_reads_verify_their_frames_and_catch_a_flipped_one() {
    const MIB: usize = 1 << 20;
    let f = fixture(BucketOptions::default());
    let mut m = f.bucket.mount().unwrap();
    let data = pattern(3 * MIB, 3);
    path::write_file(&mut m, "/big.bin", &data).unwrap();
    m.save().unwrap();
    drop(m);
    // Chunk 2 holds bytes 2..3 MiB; its frame 20 starts 320 KiB in.
    let frame5 = 2 * MIB + 5 * 65536;
    let fresh_read = |offset: usize, len: u32| {
        let sd = StateDir::open(f.state.root()).unwrap();
        let mut m = sd
            .open_bucket(&f.bucket.id(), &f.kek)
            .unwrap()
            .mount()
            .unwrap();
        let ino = m.lookup(ROOT_INO, b"big.bin").unwrap().ino;
        m.read(ino, offset as u64, len)
    };
    assert_eq!(
        fresh_read(frame5 + 100, 4096).unwrap(),
        data[frame5 + 100..frame5 + 100 + 4096]
    );
    // A read across two frames.
    assert_eq!(
        fresh_read(frame5 - 2000, 4096).unwrap(),
        data[frame5 - 2000..frame5 + 2096]
    );
    // Flip a byte in frame 5 of every full chunk (the three of big.bin).
    let mut flipped = 0;
    for h in f.state.store().list().unwrap() {
        let blob = f.state.store().path_of(&h);
        let mut bytes = std::fs::read(&blob).unwrap();
        if bytes.len() > MIB {
            bytes[5 * 65536 + 7] ^= 0x20;
            std::fs::write(&blob, &bytes).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 3);
    let err = fresh_read(frame5 + 100, 4096).unwrap_err();
    assert!(err.is_integrity(), "expected an integrity error, got {err}");
    assert_eq!(
        fresh_read(2 * MIB + 9 * 65536, 4096).unwrap(),
        data[2 * MIB + 9 * 65536..2 * MIB + 9 * 65536 + 4096]
    );
    // Reading the whole chunk checks every byte.
    let err = fresh_read(2 * MIB, MIB as u32).unwrap_err();
    assert!(err.is_integrity(), "expected an integrity error, got {err}");
}

fn point_head(f: &common::Fixture, h: &Hash) {
    std::fs::write(
        f.state
            .root()
            .join("buckets")
            .join(f.bucket.id().to_hex())
            .join("HEAD"),
        h.to_hex(),
    )
    .unwrap();
}

/// A node that is not a member cannot sign its way in by listing itself in
/// the shares of the version it writes: the version it follows must share
/// the bucket with it.
#[test]
fn an_author_must_be_allowed_by_the_version_it_follows() {
    let f = fixture(BucketOptions::default());
    let head = f.bucket.head().unwrap();
    let good = f.bucket.manifest(&head).unwrap();
    let intruder = Identity::generate().unwrap();
    let mut body: ManifestBody = good.body.clone();
    body.height += 1;
    body.previous = Some(head);
    body.author = intruder.node_id();
    // A share to itself of some secret: enough to pass the manifest's own check.
    let any = jax_csi::crypto::SecretKey::generate().unwrap();
    body.shares.push(
        jax_csi::crypto::KeyShare::create(
            &jax_csi::crypto::Keyring::of(any.clone()),
            &intruder.node_id(),
        )
        .unwrap(),
    );
    let h = Manifest::sign(body, &intruder)
        .unwrap()
        .store(f.state.store())
        .unwrap();
    f.bucket.manifest(&h).expect("self-consistent on its own");
    point_head(&f, &h);
    let err = f.bucket.history().unwrap_err();
    assert!(matches!(err, BucketError::ChainBroken { .. }), "{err}");
    assert!(err.to_string().contains("holds no share"), "{err}");
}

/// A HEAD that is lost, garbled or names a version that is not in the
/// store falls back to the newest version that verifies (and is repaired);
/// a HEAD naming a version that is there but tampered stays an error.
#[test]
fn a_broken_head_falls_back_to_the_newest_verifiable_version() {
    let f = fixture(BucketOptions::default());
    let mut m = f.bucket.mount().unwrap();
    path::write_file(&mut m, "/a", b"first").unwrap();
    m.save().unwrap();
    path::write_file(&mut m, "/a", b"second").unwrap();
    let newest = m.save().unwrap();
    drop(m);
    let head_file = f
        .state
        .root()
        .join("buckets")
        .join(f.bucket.id().to_hex())
        .join("HEAD");
    let reopen = || {
        let b = f.state.open_bucket(&f.bucket.id(), &f.kek).unwrap();
        let mut m = b.mount().unwrap();
        (b.head().unwrap(), path::read_file(&mut m, "/a").unwrap())
    };
    for garble in [&b"not a hash"[..], b""] {
        std::fs::write(&head_file, garble).unwrap();
        assert_eq!(reopen(), (newest.hash, b"second".to_vec()));
        assert_eq!(
            std::fs::read_to_string(&head_file).unwrap(),
            newest.hash.to_hex(),
            "HEAD is repaired"
        );
    }
    std::fs::remove_file(&head_file).unwrap();
    assert!(f.state.has_bucket(&f.bucket.id()));
    assert_eq!(reopen(), (newest.hash, b"second".to_vec()));
    // HEAD names a manifest that is gone: the newest one left wins.
    point_head(&f, &Hash::of(b"a version that was never stored"));
    assert_eq!(reopen().0, newest.hash);
    // Tampered, not missing: an error, never the older version.
    let p = f.state.store().path_of(&newest.hash);
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let b = f.state.open_bucket(&f.bucket.id(), &f.kek).unwrap();
    assert!(b.head().unwrap_err().is_integrity());
}

/// Stored values that would make a careless reader divide by zero or index
/// out of bounds are format errors.
#[test]
fn a_manifest_with_an_absurd_chunk_size_is_refused() {
    let f = fixture(BucketOptions::default());
    let head = f.bucket.head().unwrap();
    let good = f.bucket.manifest(&head).unwrap();
    for cs in [0, 1, 3000, 1 << 30, u32::MAX] {
        let mut body = good.body.clone();
        body.chunk_size = cs;
        let h = Manifest::sign(body, f.state.identity())
            .unwrap()
            .store(f.state.store())
            .unwrap();
        let err = f.bucket.manifest(&h).unwrap_err();
        assert!(matches!(err, BucketError::Format { .. }), "{cs}: {err}");
        point_head(&f, &h);
        assert!(f.bucket.mount().is_err(), "{cs}");
    }
}

/// Retention removes versions it does not keep (and GC their blobs), keeps
/// the newest ones and every pinned one, and the history that is left
/// still verifies; a pinned version cut off from the head stays readable.
#[test]
fn retention_prunes_history_but_keeps_pins() {
    use jax_csi::bucket::Retention;
    use std::collections::HashSet;
    let f = fixture(BucketOptions::default());
    let mut m = f.bucket.mount().unwrap();
    let mut versions = Vec::new();
    for i in 0..10u8 {
        // Each version replaces the file: older chunks are only in old versions.
        path::write_file(&mut m, "/f", &pattern(300_000, i)).unwrap();
        versions.push(m.save().unwrap().hash);
    }
    let pinned_old = versions[2];
    let usage_before = f.state.store().disk_usage().unwrap();
    let keep3: Retention = "count=3".parse().unwrap();
    let removed = f
        .bucket
        .prune(&keep3, &HashSet::from([pinned_old]))
        .unwrap();
    assert_eq!(
        removed,
        11 - 3 - 1,
        "genesis and 10 versions, 3 newest and one pin kept"
    );
    f.state.gc(&[&f.bucket]).unwrap();
    assert!(f.state.store().disk_usage().unwrap() < usage_before / 2);
    let hist = f.bucket.history().unwrap();
    assert_eq!(
        hist.iter().map(|v| v.hash).collect::<Vec<_>>(),
        versions[7..].iter().rev().copied().collect::<Vec<_>>()
    );
    f.bucket.verify().unwrap();
    let mut old = f.bucket.open_version(&pinned_old).unwrap();
    assert_eq!(
        path::read_file(&mut old, "/f").unwrap(),
        pattern(300_000, 2)
    );
    // The mount goes on; a reopened bucket still sees the same.
    path::write_file(&mut m, "/g", b"after pruning").unwrap();
    m.save().unwrap();
    let again = f.state.open_bucket(&f.bucket.id(), &f.kek).unwrap();
    again.verify().unwrap();
    // Unpinned, the old version goes at the next pass.
    again.prune(&keep3, &HashSet::new()).unwrap();
    f.state.gc(&[&again]).unwrap();
    assert!(again.open_version(&pinned_old).is_err());
    again.verify().unwrap();
}
