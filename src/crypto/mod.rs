//! Keys and ciphers: node identities (Ed25519), symmetric secrets (AES-256-GCM)
//! and the ways a bucket secret is wrapped (a key-encryption key, X25519 shares).
//!
//! Every type that holds key bytes zeroizes them on drop and prints
//! `<redacted>` from `Debug`, so a stray `{:?}` never leaks a key.

mod frames;
mod identity;
mod keyring;
mod secret;
mod wrap;

pub use frames::{FrameLayout, FRAME_LEN};
pub use identity::{Identity, NodeId, SIGNATURE_LEN};
pub use keyring::{Epoch, Keyring, MAX_EPOCHS};
pub use secret::{SecretKey, SEAL_OVERHEAD};
pub use wrap::{
    is_tenant_wrapped, rewrap_outer, rewrap_tenant, rewrap_to_current, unwrap_layered,
    wrap_layered, Kek, KeyShare, UnwrapError, WrapContext, WrappedKey,
};

/// What can go wrong with keys and ciphertexts.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// AEAD authentication failed: the ciphertext was altered or the key is wrong.
    #[error("authenticated decryption failed (tampered data or wrong key)")]
    Decrypt,
    /// A wrapped key or share could not be opened with the key we hold.
    #[error("wrong key: the wrapped secret does not open with this key")]
    WrongKey,
    /// A signature did not verify against the claimed signer.
    #[error("signature does not verify for signer {0}")]
    BadSignature(NodeId),
    /// Bytes that should hold a key or signature have the wrong shape.
    #[error("malformed key material: {0}")]
    Malformed(&'static str),
    /// The operating system's random source failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Fill `buf` from the OS CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// A fresh random 32-byte array.
pub fn random_array32() -> Result<[u8; 32], CryptoError> {
    let mut out = [0u8; 32];
    random_bytes(&mut out)?;
    Ok(out)
}
