//! The version a bucket's history begins with. Binding the root key to
//! the manifest (format 2) stops a node without the secret from making a
//! history; the genesis check stops a second one from anybody: the node
//! that makes a volume's first version records it (in `genesis/<id>` here and,
//! by the node agent, in Postgres, claimed before it is made so two first
//! stages never make two), a node that fetches the volume writes Postgres's
//! record here before it takes any version, and a chain that reaches any
//! other parentless version is refused (it would merge against nothing and
//! bring back every file as new).

use std::path::PathBuf;

use super::{read_head_file, write_atomic, BucketCore, BucketError, BucketId, Result, StateDir};
use crate::store::Hash;

/// `<state>/genesis/<id>`, beside `buckets/` rather than in the bucket's
/// directory: it is written before the bucket exists here (before a fetch),
/// and a bucket directory with no HEAD would be taken for a broken bucket.
fn genesis_path(bucket_dir: &std::path::Path) -> PathBuf {
    super::beside_buckets(bucket_dir, "genesis")
}

/// Write `version` as the first version recorded at `path`.
fn write_genesis_file(path: &std::path::Path, version: &Hash) -> Result<()> {
    if let Some(dir) = path.parent() {
        crate::durable::create_dir_all(dir).map_err(BucketError::io(dir))?;
    }
    write_atomic(path, version.to_hex().as_bytes())
}

impl BucketCore {
    /// Refuse `version`, a parentless version met on a chain, when it is not
    /// the one this bucket's history begins with (when that is known here).
    pub(super) fn check_genesis(&self, version: &Hash) -> Result<()> {
        let path = genesis_path(&self.dir);
        if !path.exists() {
            return Ok(());
        }
        let genesis = read_head_file(&path)?;
        if genesis != *version {
            return Err(BucketError::ChainBroken {
                at: *version,
                reason: format!(
                    "a second first version: this volume's history begins at {genesis}"
                ),
            });
        }
        Ok(())
    }

    /// Record `version` as the first of this bucket's history.
    pub(super) fn record_genesis(&self, version: &Hash) -> Result<()> {
        write_genesis_file(&genesis_path(&self.dir), version)
    }
}

impl StateDir {
    /// The version `id`'s history begins with, when this node knows it.
    pub fn genesis_of(&self, id: &BucketId) -> Result<Option<Hash>> {
        let path = genesis_path(&self.bucket_dir(id));
        if !path.exists() {
            return Ok(None);
        }
        read_head_file(&path).map(Some)
    }

    /// Record the version `id`'s history begins with (Postgres's record),
    /// before any version of it is taken from a peer. A different one
    /// recorded here already is an error: the two histories cannot both be
    /// the volume's.
    pub fn set_genesis(&self, id: &BucketId, version: &Hash) -> Result<()> {
        match self.genesis_of(id)? {
            Some(known) if known == *version => Ok(()),
            Some(known) => Err(BucketError::ChainBroken {
                at: *version,
                reason: format!("this node's copy of the volume began at {known}"),
            }),
            None => write_genesis_file(&genesis_path(&self.bucket_dir(id)), version),
        }
    }

    /// Forget the first version of `id` (the bucket is removed here).
    pub(super) fn forget_genesis(&self, id: &BucketId) -> Result<()> {
        let path = genesis_path(&self.bucket_dir(id));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BucketError::io(&path)(e)),
            _ => Ok(()),
        }
    }
}
