//! A bucket's rotated secrets on this node (see `crypto::keyring`).
//!
//! Each epoch secret is kept in `epochs/<id>/<number>-<tag>.sealed` (beside
//! `buckets/`: a clone's node keeps its source's ring without holding the
//! source, and a bucket directory with no HEAD is taken for a broken one),
//! sealed with the bucket's base secret (itself wrapped by the KEK in
//! `key.wrapped`) and bound to the bucket and the epoch's number. An epoch is
//! written here, durably, before any version sealed with it is, so a crash
//! never leaves a head this node cannot open.

use std::path::{Path, PathBuf};

use crate::crypto::{Epoch, Keyring, SecretKey};

use super::{BucketCore, BucketError, BucketId, Manifest, Result};

const AAD: &[u8] = b"jax-csi epoch secret v1\0";

fn epochs_dir(bucket_dir: &Path) -> PathBuf {
    super::beside_buckets(bucket_dir, "epochs")
}

/// Forget the epochs kept for the bucket in `bucket_dir` (it is removed).
pub(super) fn forget(bucket_dir: &Path) -> Result<()> {
    let dir = epochs_dir(bucket_dir);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BucketError::io(&dir)(e)),
        _ => Ok(()),
    }
}

fn binding(id: &BucketId, number: u32) -> Vec<u8> {
    let mut aad = AAD.to_vec();
    aad.extend_from_slice(&id.0);
    aad.extend_from_slice(&number.to_le_bytes());
    aad
}

/// The ring of `id`: `base` and the epochs kept in `bucket_dir`. A file
/// that does not open is logged and left out (a share brings the epoch
/// back when a version needs it).
pub(super) fn load(bucket_dir: &Path, id: &BucketId, base: SecretKey) -> Keyring {
    let mut ring = Keyring::of(base);
    let Ok(entries) = std::fs::read_dir(epochs_dir(bucket_dir)) else {
        return ring;
    };
    // In number order: a ring takes no epoch above the highest plus one.
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let Some(number) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sealed"))
            .and_then(|n| n.split('-').next())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let opened = std::fs::read(&path)
            .ok()
            .and_then(|sealed| ring.base.open_with_aad(&sealed, &binding(id, number)).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok());
        match opened {
            Some(key) => {
                let epoch = Epoch {
                    number,
                    key: SecretKey::from_bytes(key),
                };
                if let Err(e) = ring.add(epoch) {
                    tracing::warn!(bucket = %id, error = %e, "an epoch secret left out");
                }
            }
            None => {
                tracing::warn!(bucket = %id, file = %path.display(), "an epoch secret does not open with the bucket's secret; left out")
            }
        }
    }
    ring
}

/// Keep `epoch` of `id` in `bucket_dir`, durably.
fn save(bucket_dir: &Path, id: &BucketId, base: &SecretKey, epoch: &Epoch) -> Result<()> {
    let dir = epochs_dir(bucket_dir);
    crate::durable::create_dir_all(&dir).map_err(BucketError::io(&dir))?;
    let tag = crate::store::Hash::of(epoch.key.expose()).to_hex();
    let path = dir.join(format!("{:010}-{}.sealed", epoch.number, &tag[..16]));
    let sealed = base.seal_with_aad(epoch.key.expose(), &binding(id, epoch.number))?;
    crate::durable::write_atomic(&path, &sealed, 0o600).map_err(BucketError::io(&path))
}

impl BucketCore {
    /// Every secret of the bucket this node knows.
    pub fn ring(&self) -> Keyring {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The secret new versions, shares and journal frames are sealed with.
    pub fn current_secret(&self) -> SecretKey {
        self.ring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current()
            .clone()
    }

    /// How many rotations this node knows of.
    pub fn epoch_count(&self) -> usize {
        self.ring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .epochs()
            .len()
    }

    /// Take in the epochs of `other` (kept on disk first); how many were new.
    pub fn learn_ring(&self, other: &Keyring) -> Result<usize> {
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        let mut probe = ring.clone();
        let added = probe.merge(other)?;
        for epoch in &added {
            save(&self.dir, &self.id, &ring.base, epoch)?;
        }
        *ring = probe;
        if !added.is_empty() {
            tracing::info!(bucket = %self.id, epochs = added.len(), "learned rotated bucket secrets from a key share");
        }
        Ok(added.len())
    }

    /// Rotate the bucket secret: a new epoch, kept on disk, that seals what
    /// is written from now on. Returns its number.
    pub fn rotate_secret(&self) -> Result<u32> {
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        let epoch = ring.next_epoch()?;
        save(&self.dir, &self.id, &ring.base, &epoch)?;
        let number = epoch.number;
        ring.add(epoch)?;
        Ok(number)
    }

    /// Learn the epochs `m`'s share for this node carries, when it has one
    /// of this bucket; whether any was new.
    pub(super) fn learn_from_share(&self, m: &Manifest) -> Result<bool> {
        let Some(share) = m.body.share_for(&self.identity.node_id()) else {
            return Ok(false);
        };
        let Ok(ring) = share.open(&self.identity) else {
            return Ok(false);
        };
        if ring.base != self.secret {
            return Ok(false);
        }
        Ok(self.learn_ring(&ring)? > 0)
    }
}
