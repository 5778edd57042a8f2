//! Wrapping a bucket secret: by a key-encryption key (cluster or tenant KEK)
//! and as X25519 shares addressed to peer identities (ECIES-style: an
//! ephemeral key agreement, BLAKE3 key derivation, AES-GCM seal).

use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{CryptoError, Identity, NodeId, SecretKey};

const WRAP_AAD: &[u8] = b"jax-csi kek wrap v1";
const SHARE_CONTEXT: &str = "jax-csi key share v1";

/// A key-encryption key. Bucket secrets are stored only wrapped by one.
#[derive(Clone, Debug)]
pub struct Kek(SecretKey);

impl Kek {
    pub fn new(key: SecretKey) -> Self {
        Self(key)
    }

    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(SecretKey::generate()?))
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
        Ok(Self(SecretKey::from_bytes(bytes)))
    }

    /// Write this KEK as hex to `path` (mode 0600); for the local mode and tests.
    pub fn write_file(&self, path: &Path) -> Result<(), CryptoError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = Zeroizing::new(hex::encode(self.0.expose()));
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

    pub fn wrap(&self, secret: &SecretKey) -> Result<WrappedKey, CryptoError> {
        Ok(WrappedKey(self.0.seal_with_aad(secret.expose(), WRAP_AAD)?))
    }

    pub fn unwrap(&self, wrapped: &WrappedKey) -> Result<SecretKey, CryptoError> {
        let bytes = Zeroizing::new(
            self.0
                .open_with_aad(&wrapped.0, WRAP_AAD)
                .map_err(|_| CryptoError::WrongKey)?,
        );
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
    /// Seal `secret` so that only `recipient`'s identity can open it.
    pub fn create(secret: &SecretKey, recipient: &NodeId) -> Result<Self, CryptoError> {
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
            sealed: key.seal(secret.expose())?,
        })
    }

    /// Open the share with the recipient's identity.
    pub fn open(&self, identity: &Identity) -> Result<SecretKey, CryptoError> {
        if identity.node_id() != self.recipient {
            return Err(CryptoError::WrongKey);
        }
        let shared = identity
            .x25519_secret()
            .diffie_hellman(&x25519_dalek::PublicKey::from(self.ephemeral));
        let key = share_key(shared.as_bytes(), &self.ephemeral, &self.recipient);
        let bytes = Zeroizing::new(key.open(&self.sealed).map_err(|_| CryptoError::WrongKey)?);
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("share does not hold 32 bytes"))?;
        Ok(SecretKey::from_bytes(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_wrap_and_wrong_kek() {
        let kek = Kek::generate().unwrap();
        let secret = SecretKey::generate().unwrap();
        let w = kek.wrap(&secret).unwrap();
        assert_eq!(kek.unwrap(&w).unwrap(), secret);
        let other = Kek::generate().unwrap();
        assert!(matches!(other.unwrap(&w), Err(CryptoError::WrongKey)));
    }

    #[test]
    fn share_opens_only_for_recipient() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let secret = SecretKey::generate().unwrap();
        let share = KeyShare::create(&secret, &a.node_id()).unwrap();
        assert_eq!(share.open(&a).unwrap(), secret);
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
        assert_eq!(back.unwrap(&kek.wrap(&s).unwrap()).unwrap(), s);
        std::fs::write(&p, "nothex").unwrap();
        assert!(matches!(Kek::from_file(&p), Err(CryptoError::Malformed(_))));
    }
}
