//! Helpers shared by the bucket integration tests.
#![allow(dead_code)]

use std::path::Path;

use jax_csi::bucket::{Bucket, BucketId, BucketOptions, StateDir};
use jax_csi::crypto::Kek;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub state: StateDir,
    pub kek: Kek,
    pub bucket: Bucket,
}

pub fn fixture(opts: BucketOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    let kek = Kek::generate().unwrap();
    let bucket = state
        .create_bucket(BucketId::generate().unwrap(), &kek, &opts)
        .unwrap();
    Fixture {
        dir,
        state,
        kek,
        bucket,
    }
}

/// Copy every blob of one state dir's store into another's (what sync does).
pub fn copy_blobs(from: &Path, to: &Path) {
    let src = from.join("store/blobs");
    for fan in std::fs::read_dir(&src).unwrap() {
        let fan = fan.unwrap().path();
        let dest = to.join("store/blobs").join(fan.file_name().unwrap());
        std::fs::create_dir_all(&dest).unwrap();
        for blob in std::fs::read_dir(&fan).unwrap() {
            let blob = blob.unwrap().path();
            let target = dest.join(blob.file_name().unwrap());
            if !target.exists() {
                std::fs::copy(&blob, &target).unwrap();
            }
        }
    }
}

/// Copy a bucket's directory (HEAD and wrapped key) between state dirs.
pub fn copy_bucket_dir(from: &Path, to: &Path, id: &BucketId) {
    let src = from.join("buckets").join(id.to_hex());
    let dest = to.join("buckets").join(id.to_hex());
    std::fs::create_dir_all(&dest).unwrap();
    for f in ["HEAD", "key.wrapped"] {
        std::fs::copy(src.join(f), dest.join(f)).unwrap();
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u32) as u8
                ^ (i >> 9) as u8
        })
        .collect()
}
