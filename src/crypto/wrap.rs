//! Wrapping a bucket secret: by a key-encryption key (cluster or tenant KEK)
//! and as X25519 shares addressed to peer identities (ECIES-style: an
//! ephemeral key agreement, BLAKE3 key derivation, AES-GCM seal).
//!
//! Every wrap is bound to what it is for ([`WrapContext`]: the volume, the
//! clone or snapshot and the head it records), as AES-GCM associated data:
//! a wrapped key copied into another record (someone who can write to
//! Postgres grafting one volume's tree into another) does not open there.
//! A tenant's volume is wrapped twice ([`wrap_layered`]): by the tenant's
//! KEK inside, the cluster KEK outside, so neither key alone opens it. The
//! inner layer is bound to the volume the secret belongs to, the outer one
//! to the record that holds it, so the controller can file a snapshot's
//! copy of a tenant's key ([`rewrap_outer`]) without the tenant's key.

use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{CryptoError, Identity, Keyring, NodeId, SecretKey};

/// The associated data of wraps written before contexts existed (node-local
/// key files only still use it, for buckets made by earlier builds).
const WRAP_AAD: &[u8] = b"jax-csi kek wrap v1";
const WRAP_V2: &[u8] = b"jax-csi kek wrap v2\0";

/// What a wrapped key is bound to (authenticated, not secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrapContext(Vec<u8>);

impl WrapContext {
    fn of(kind: &str, parts: &[&str]) -> Self {
        let mut v = WRAP_V2.to_vec();
        for p in std::iter::once(kind).chain(parts.iter().copied()) {
            v.extend_from_slice(&(p.len() as u32).to_le_bytes());
            v.extend_from_slice(p.as_bytes());
        }
        Self(v)
    }

    /// A volume's own secret, in its Postgres record.
    pub fn volume(volume_id: &str) -> Self {
        Self::of("volume", &[volume_id])
    }

    /// The source's secret a clone starts from, bound to the clone, the
    /// source volume and the head it records.
    pub fn clone_source(clone_id: &str, source_volume_id: &str, source_head: &str) -> Self {
        Self::of("clone source", &[clone_id, source_volume_id, source_head])
    }

    /// The source's secret a snapshot keeps, bound to the snapshot, its
    /// source volume and the head it records.
    pub fn snapshot(snapshot_id: &str, source_volume_id: &str, head: &str) -> Self {
        Self::of("snapshot", &[snapshot_id, source_volume_id, head])
    }

    /// A bucket's proof key (not its secret), for blind replicas: in the
    /// volume's Postgres record and a replica's state dir.
    pub fn replica_proof(volume_id: &str) -> Self {
        Self::of("replica proof", &[volume_id])
    }

    /// A bucket's secret in a node's own state dir.
    pub fn node_local(bucket_id: &str) -> Self {
        Self::of("node local", &[bucket_id])
    }
}

/// Why a layered wrap did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnwrapError {
    #[error("the key is wrapped by a tenant key, and none was given")]
    TenantKeyRequired,
    #[error("the tenant key given does not open the key")]
    WrongTenantKey,
    #[error("the cluster key does not open the key (another KEK, or a record that does not belong here)")]
    WrongClusterKey,
    #[error("the wrapped key is malformed")]
    Malformed,
}

/// Wrap `secret` by `cluster` for the record `outer`, and first by `tenant`
/// (when given) for the volume `inner` the secret belongs to.
pub fn wrap_layered(
    cluster: &Kek,
    tenant: Option<&Kek>,
    secret: &SecretKey,
    inner: &WrapContext,
    outer: &WrapContext,
) -> Result<WrappedKey, CryptoError> {
    let (layer, sealed) = match tenant {
        None => (1u8, Zeroizing::new(secret.expose().to_vec())),
        Some(t) => (2u8, Zeroizing::new(t.seal(secret.expose(), &inner.0)?)),
    };
    seal_outer(cluster, layer, &sealed, outer)
}

fn seal_outer(
    cluster: &Kek,
    layer: u8,
    inner: &[u8],
    outer: &WrapContext,
) -> Result<WrappedKey, CryptoError> {
    let mut out = vec![layer];
    out.extend(cluster.seal(inner, &layered_aad(layer, outer))?);
    Ok(WrappedKey(out))
}

/// The layer, the inner bytes, and whether the current KEK opened them.
fn open_outer(
    cluster: &Kek,
    wrapped: &WrappedKey,
    outer: &WrapContext,
) -> Result<(u8, Zeroizing<Vec<u8>>, bool), UnwrapError> {
    let (&layer, sealed) = wrapped.0.split_first().ok_or(UnwrapError::Malformed)?;
    if !matches!(layer, 1 | 2) {
        return Err(UnwrapError::Malformed);
    }
    let (inner, current) = cluster
        .open(sealed, &layered_aad(layer, outer))
        .map_err(|_| UnwrapError::WrongClusterKey)?;
    Ok((layer, Zeroizing::new(inner), current))
}

/// The same record's key wrapped by the current KEK, or `None` when it is
/// already (a KEK rotation re-wraps each record once; a tenant's inner
/// layer is kept as it is, so no tenant key is needed).
pub fn rewrap_to_current(
    cluster: &Kek,
    wrapped: &WrappedKey,
    ctx: &WrapContext,
) -> Result<Option<WrappedKey>, UnwrapError> {
    let (layer, inner, current) = open_outer(cluster, wrapped, ctx)?;
    if current {
        return Ok(None);
    }
    seal_outer(cluster, layer, &inner, ctx)
        .map(Some)
        .map_err(|_| UnwrapError::Malformed)
}

/// The same record's key with its tenant (inner) layer sealed by the
/// current key of `tenant` (a ring still opening the tenant key it
/// replaces), and the outer layer by the current cluster KEK. `None` when
/// the inner layer is already the current tenant key's, or when the record
/// has no tenant layer; `WrongTenantKey` when neither tenant key opens it
/// (another tenant's record).
pub fn rewrap_tenant(
    cluster: &Kek,
    tenant: &Kek,
    wrapped: &WrappedKey,
    inner: &WrapContext,
    outer: &WrapContext,
) -> Result<Option<WrappedKey>, UnwrapError> {
    let (layer, sealed, _) = open_outer(cluster, wrapped, outer)?;
    if layer != 2 {
        return Ok(None);
    }
    let (plain, current) = tenant
        .open(&sealed, &inner.0)
        .map_err(|_| UnwrapError::WrongTenantKey)?;
    if current {
        return Ok(None);
    }
    let plain = Zeroizing::new(plain);
    let resealed = tenant
        .seal(&plain, &inner.0)
        .map_err(|_| UnwrapError::Malformed)?;
    seal_outer(cluster, 2, &resealed, outer)
        .map(Some)
        .map_err(|_| UnwrapError::Malformed)
}

/// File a layered key under another record: the outer layer is opened for
/// `from` and sealed again for `to`; a tenant's inner layer is kept as it
/// is (so this needs the cluster KEK only).
pub fn rewrap_outer(
    cluster: &Kek,
    wrapped: &WrappedKey,
    from: &WrapContext,
    to: &WrapContext,
) -> Result<WrappedKey, UnwrapError> {
    let (layer, inner, _) = open_outer(cluster, wrapped, from)?;
    seal_outer(cluster, layer, &inner, to).map_err(|_| UnwrapError::Malformed)
}

fn layered_aad(layer: u8, ctx: &WrapContext) -> Vec<u8> {
    let mut aad = ctx.0.clone();
    aad.push(layer);
    aad
}

/// Open a [`wrap_layered`] key; a tenant-wrapped one needs `tenant`.
pub fn unwrap_layered(
    cluster: &Kek,
    tenant: Option<&Kek>,
    wrapped: &WrappedKey,
    inner: &WrapContext,
    outer: &WrapContext,
) -> Result<SecretKey, UnwrapError> {
    let (layer, sealed, _) = open_outer(cluster, wrapped, outer)?;
    let plain = if layer == 2 {
        let t = tenant.ok_or(UnwrapError::TenantKeyRequired)?;
        Zeroizing::new(
            t.open(&sealed, &inner.0)
                .map_err(|_| UnwrapError::WrongTenantKey)?
                .0,
        )
    } else {
        sealed
    };
    let arr: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| UnwrapError::Malformed)?;
    Ok(SecretKey::from_bytes(arr))
}

/// True when a [`wrap_layered`] key needs a tenant key to open.
pub fn is_tenant_wrapped(wrapped: &WrappedKey) -> bool {
    wrapped.0.first() == Some(&2)
}
const SHARE_CONTEXT: &str = "jax-csi key share v1";

/// A key-encryption key. Bucket secrets are stored only wrapped by one.
///
/// During a rotation it also holds the keys it replaces: it wraps with the
/// current key only, and opens with the current key or, failing that, with
/// a previous one (see [`Kek::still_opening`]).
#[derive(Clone, Debug)]
pub struct Kek {
    current: SecretKey,
    previous: Vec<SecretKey>,
}

impl Kek {
    pub fn new(key: SecretKey) -> Self {
        Self {
            current: key,
            previous: Vec::new(),
        }
    }

    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::new(SecretKey::generate()?))
    }

    /// This KEK, still opening what `older` (and the keys it still opened)
    /// wrapped: what every process runs with while records are re-wrapped
    /// from `older` to this one.
    pub fn still_opening(mut self, older: Kek) -> Self {
        self.previous.push(older.current);
        self.previous.extend(older.previous);
        self
    }

    /// Whether this KEK opens keys of an earlier one too.
    pub fn is_rotating(&self) -> bool {
        !self.previous.is_empty()
    }

    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.current.seal_with_aad(plaintext, aad)
    }

    /// Open with the current key, else with a previous one; whether it was
    /// the current key that opened it.
    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<(Vec<u8>, bool), CryptoError> {
        match self.current.open_with_aad(sealed, aad) {
            Ok(plain) => Ok((plain, true)),
            Err(e) => self
                .previous
                .iter()
                .find_map(|k| k.open_with_aad(sealed, aad).ok())
                .map(|plain| (plain, false))
                .ok_or(e),
        }
    }

    /// Read a KEK file: 32 raw bytes, or 64 hex characters (whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|source| CryptoError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?);
        let bytes: [u8; 32] = if raw.len() == 32 {
            raw.as_slice().try_into().expect("checked length")
        } else {
            let text = Zeroizing::new(
                String::from_utf8_lossy(&raw)
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect::<String>(),
            );
            let decoded = Zeroizing::new(hex::decode(text.as_bytes()).map_err(|_| {
                CryptoError::Malformed("KEK file must hold 32 bytes or 64 hex characters")
            })?);
            decoded.as_slice().try_into().map_err(|_| {
                CryptoError::Malformed("KEK file must hold 32 bytes or 64 hex characters")
            })?
        };
        Ok(Self::new(SecretKey::from_bytes(bytes)))
    }

    /// Write this KEK as hex to `path` (mode 0600); for the local mode and tests.
    pub fn write_file(&self, path: &Path) -> Result<(), CryptoError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = Zeroizing::new(hex::encode(self.current.expose()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| CryptoError::KeyFile {
                path: path.to_path_buf(),
                source,
            })?;
        f.write_all(text.as_bytes())
            .map_err(|source| CryptoError::KeyFile {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Wrap `secret` for `ctx` (one layer: this KEK).
    pub fn wrap_for(
        &self,
        secret: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, CryptoError> {
        Ok(WrappedKey(self.seal(secret.expose(), &ctx.0)?))
    }

    /// Wrap as builds before bound wraps did (tests of the migration).
    #[cfg(test)]
    pub fn wrap_unbound(&self, secret: &SecretKey) -> WrappedKey {
        WrappedKey(self.seal(secret.expose(), WRAP_AAD).unwrap())
    }

    /// Whether the current key opens this [`Kek::wrap_for`] wrap for `ctx`
    /// (not a previous key, not the unbound form of earlier builds).
    pub fn wrapped_current(&self, wrapped: &WrappedKey, ctx: &WrapContext) -> bool {
        self.current.open_with_aad(&wrapped.0, &ctx.0).is_ok()
    }

    /// Open a [`Kek::wrap_for`] key; `legacy` also accepts the unbound wraps
    /// of earlier builds (node-local files only).
    pub fn unwrap_for(
        &self,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
        legacy: bool,
    ) -> Result<SecretKey, CryptoError> {
        let (opened, _) = self
            .open(&wrapped.0, &ctx.0)
            .or_else(|e| {
                if legacy {
                    self.open(&wrapped.0, WRAP_AAD)
                } else {
                    Err(e)
                }
            })
            .map_err(|_| CryptoError::WrongKey)?;
        let bytes = Zeroizing::new(opened);
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("wrapped key is not 32 bytes"))?;
        Ok(SecretKey::from_bytes(arr))
    }
}

/// A secret sealed under a KEK. Safe to store anywhere (disk, Postgres).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey(pub Vec<u8>);

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// A bucket secret sealed to one peer identity.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyShare {
    /// The identity that can open this share.
    pub recipient: NodeId,
    /// The sender's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The secret sealed under the derived key.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyShare(to {:?})", self.recipient)
    }
}

fn share_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &NodeId) -> SecretKey {
    let mut material = Zeroizing::new(Vec::with_capacity(96));
    material.extend_from_slice(shared);
    material.extend_from_slice(ephemeral);
    material.extend_from_slice(&recipient.0);
    SecretKey::from_bytes(blake3::derive_key(SHARE_CONTEXT, &material))
}

impl KeyShare {
    /// Seal `ring` (the bucket's secrets) so that only `recipient`'s
    /// identity can open it. A ring never rotated seals its base secret
    /// alone, as shares did before rotations.
    pub fn create(ring: &Keyring, recipient: &NodeId) -> Result<Self, CryptoError> {
        let their = ed25519_dalek::VerifyingKey::from_bytes(&recipient.0)
            .map_err(|_| CryptoError::Malformed("recipient is not an Ed25519 key"))?
            .to_montgomery()
            .to_bytes();
        let eph = x25519_dalek::StaticSecret::from(super::random_array32()?);
        let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
        let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(their));
        let key = share_key(shared.as_bytes(), &eph_pub, recipient);
        Ok(Self {
            recipient: *recipient,
            ephemeral: eph_pub,
            sealed: key.seal(&ring.encode())?,
        })
    }

    /// Open the share with the recipient's identity.
    pub fn open(&self, identity: &Identity) -> Result<Keyring, CryptoError> {
        if identity.node_id() != self.recipient {
            return Err(CryptoError::WrongKey);
        }
        let shared = identity
            .x25519_secret()
            .diffie_hellman(&x25519_dalek::PublicKey::from(self.ephemeral));
        let key = share_key(shared.as_bytes(), &self.ephemeral, &self.recipient);
        let bytes = Zeroizing::new(key.open(&self.sealed).map_err(|_| CryptoError::WrongKey)?);
        Keyring::decode(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rotation: the new KEK still opening the old one opens what the old
    /// one wrapped, re-wraps it once (a tenant's inner layer kept as it is,
    /// no tenant key needed), and the new KEK alone opens the result.
    #[test]
    fn a_rotation_rewraps_the_outer_layer_once() {
        let (old, new) = (Kek::generate().unwrap(), Kek::generate().unwrap());
        let tenant = Kek::generate().unwrap();
        let secret = SecretKey::generate().unwrap();
        let ctx = WrapContext::volume("v1");
        let wrapped = wrap_layered(&old, Some(&tenant), &secret, &ctx, &ctx).unwrap();
        let ring = new.clone().still_opening(old.clone());
        assert!(ring.is_rotating());
        let opened = unwrap_layered(&ring, Some(&tenant), &wrapped, &ctx, &ctx).unwrap();
        assert_eq!(opened, secret);
        let rewrapped = rewrap_to_current(&ring, &wrapped, &ctx).unwrap().unwrap();
        assert_eq!(rewrap_to_current(&ring, &rewrapped, &ctx).unwrap(), None);
        assert_eq!(
            unwrap_layered(&new, Some(&tenant), &rewrapped, &ctx, &ctx).unwrap(),
            secret
        );
        assert_eq!(
            unwrap_layered(&old, Some(&tenant), &rewrapped, &ctx, &ctx),
            Err(UnwrapError::WrongClusterKey)
        );
        // Bound to its record still: another context does not open it.
        assert!(rewrap_to_current(&ring, &wrapped, &WrapContext::volume("v2")).is_err());
    }

    #[test]
    fn kek_wrap_and_wrong_kek() {
        let kek = Kek::generate().unwrap();
        let secret = SecretKey::generate().unwrap();
        let ctx = WrapContext::volume("v1");
        let w = kek.wrap_for(&secret, &ctx).unwrap();
        assert_eq!(kek.unwrap_for(&w, &ctx, false).unwrap(), secret);
        let other = Kek::generate().unwrap();
        assert!(matches!(
            other.unwrap_for(&w, &ctx, false),
            Err(CryptoError::WrongKey)
        ));
        // Bound to its context: another volume's record does not open it.
        assert!(kek
            .unwrap_for(&w, &WrapContext::volume("v2"), false)
            .is_err());
        // Unbound wraps of earlier builds open only where allowed.
        let old = kek.wrap_unbound(&secret);
        assert!(kek.unwrap_for(&old, &ctx, false).is_err());
        assert_eq!(kek.unwrap_for(&old, &ctx, true).unwrap(), secret);
    }

    /// A tenant's key needs both KEKs and its own context; a plain one the
    /// cluster KEK alone.
    #[test]
    fn layered_wraps_need_every_layer() {
        let cluster = Kek::generate().unwrap();
        let tenant = Kek::generate().unwrap();
        let wrong = Kek::generate().unwrap();
        let secret = SecretKey::generate().unwrap();
        let vol = WrapContext::volume("v");
        let ctx = WrapContext::clone_source("c", "v", "h");
        let w = wrap_layered(&cluster, Some(&tenant), &secret, &vol, &ctx).unwrap();
        assert!(is_tenant_wrapped(&w));
        assert_eq!(
            unwrap_layered(&cluster, Some(&tenant), &w, &vol, &ctx).unwrap(),
            secret
        );
        let err = |t: Option<&Kek>, c: &Kek, i: &WrapContext, o: &WrapContext| {
            unwrap_layered(c, t, &w, i, o).unwrap_err()
        };
        assert_eq!(
            err(None, &cluster, &vol, &ctx),
            UnwrapError::TenantKeyRequired
        );
        assert_eq!(
            err(Some(&wrong), &cluster, &vol, &ctx),
            UnwrapError::WrongTenantKey
        );
        assert_eq!(
            err(Some(&tenant), &wrong, &vol, &ctx),
            UnwrapError::WrongClusterKey
        );
        let other = WrapContext::clone_source("c", "v", "another head");
        assert_eq!(
            err(Some(&tenant), &cluster, &vol, &other),
            UnwrapError::WrongClusterKey
        );
        assert_eq!(
            err(Some(&tenant), &cluster, &WrapContext::volume("x"), &ctx),
            UnwrapError::WrongTenantKey
        );
        // Refiled under a snapshot without the tenant key; still needs it.
        let snap = WrapContext::snapshot("s", "v", "h");
        let filed = rewrap_outer(&cluster, &w, &ctx, &snap).unwrap();
        assert_eq!(
            unwrap_layered(&cluster, Some(&tenant), &filed, &vol, &snap).unwrap(),
            secret
        );
        assert!(unwrap_layered(&cluster, None, &filed, &vol, &snap).is_err());
        assert!(rewrap_outer(&cluster, &w, &snap, &ctx).is_err());
        let plain = wrap_layered(&cluster, None, &secret, &vol, &ctx).unwrap();
        assert!(!is_tenant_wrapped(&plain));
        assert_eq!(
            unwrap_layered(&cluster, None, &plain, &vol, &ctx).unwrap(),
            secret
        );
        assert_eq!(
            unwrap_layered(&cluster, Some(&tenant), &plain, &vol, &ctx).unwrap(),
            secret
        );
    }

    #[test]
    fn share_opens_only_for_recipient() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let secret = SecretKey::generate().unwrap();
        let share = KeyShare::create(&Keyring::of(secret.clone()), &a.node_id()).unwrap();
        assert_eq!(share.open(&a).unwrap(), Keyring::of(secret));
        assert!(matches!(share.open(&b), Err(CryptoError::WrongKey)));
        let mut forged = share.clone();
        forged.recipient = b.node_id();
        assert!(matches!(forged.open(&b), Err(CryptoError::WrongKey)));
    }

    #[test]
    fn kek_file_hex_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kek");
        let kek = Kek::generate().unwrap();
        kek.write_file(&p).unwrap();
        let back = Kek::from_file(&p).unwrap();
        let s = SecretKey::generate().unwrap();
        let ctx = WrapContext::volume("x");
        let w = kek.wrap_for(&s, &ctx).unwrap();
        assert_eq!(back.unwrap_for(&w, &ctx, false).unwrap(), s);
        std::fs::write(&p, "nothex").unwrap();
        assert!(matches!(Kek::from_file(&p), Err(CryptoError::Malformed(_))));
    }
}
