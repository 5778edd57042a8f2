//! A node's Ed25519 identity. It signs manifests; its X25519 form opens key
//! shares addressed to the node.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{random_array32, CryptoError};

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The public half of an identity: an Ed25519 verifying key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Verify `signature` over `message` as signed by this node.
    pub fn verify(
        &self,
        message: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), CryptoError> {
        let key =
            VerifyingKey::from_bytes(&self.0).map_err(|_| CryptoError::BadSignature(*self))?;
        key.verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| CryptoError::BadSignature(*self))
    }

    /// First eight bytes, used as a compact writer tag in tree entries.
    pub fn short(&self) -> [u8; 8] {
        self.0[..8].try_into().expect("32 > 8")
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(s).map_err(|_| CryptoError::Malformed("node id is not hex"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::Malformed("node id is not 32 bytes"))?;
        Ok(Self(arr))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({})", &self.to_hex()[..16])
    }
}

/// A node's signing identity. The secret half never leaves the node.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({:?}, <secret redacted>)", self.node_id())
    }
}

impl Identity {
    pub fn generate() -> Result<Self, CryptoError> {
        let seed = Zeroizing::new(random_array32()?);
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Load the identity stored at `path`, or create one there (mode 0600).
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let io_err = |source| CryptoError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let seed: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| CryptoError::Malformed("identity file is not 32 bytes"))?;
                let seed = Zeroizing::new(seed);
                Ok(Self {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate()?;
                let seed = Zeroizing::new(id.key.to_bytes());
                crate::durable::write_atomic(path, seed.as_slice(), 0o600).map_err(io_err)?;
                Ok(id)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// The secret seed, for the sync endpoint's key (the same Ed25519 key,
    /// so the endpoint id is the node id). Callers must not keep or log it.
    pub fn seed_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(message).to_bytes()
    }

    /// The X25519 secret matching this identity's Montgomery public key.
    pub(super) fn x25519_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.key.to_scalar_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_forgery() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let sig = a.sign(b"manifest");
        a.node_id().verify(b"manifest", &sig).unwrap();
        assert!(a.node_id().verify(b"manifesT", &sig).is_err());
        assert!(b.node_id().verify(b"manifest", &sig).is_err());
    }

    #[test]
    fn identity_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("identity.key");
        let a = Identity::load_or_create(&p).unwrap();
        let b = Identity::load_or_create(&p).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert!(!format!("{a:?}").contains(&hex::encode(a.key.to_bytes())));
    }
}
