//! A 256-bit AES-GCM key. Sealed objects are `ciphertext || tag (16) || nonce (12)`
//! with a fresh random nonce per object. Putting the nonce last lets a buffer
//! be sealed and opened in place (no copy of a 1 MiB chunk), given 28 bytes of
//! spare capacity.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{random_array32, random_bytes, CryptoError};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed object carries beyond its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A symmetric 256-bit key, zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(random_array32()?))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes; callers must not log or persist them unwrapped.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }

    /// Encrypt `plaintext` into a new sealed object.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.seal_with_aad(plaintext, b"")
    }

    /// Encrypt with associated data that must be presented again to open.
    pub fn seal_with_aad(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(&mut buf, aad)?;
        Ok(buf)
    }

    /// Encrypt `buf` in place and append the tag and nonce.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>, aad: &[u8]) -> Result<(), CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let tag = self
            .cipher()
            .encrypt_inout_detached(&Nonce::from(nonce), aad, buf.as_mut_slice().into())
            .map_err(|_| CryptoError::Malformed("plaintext too long"))?;
        buf.extend_from_slice(&tag);
        buf.extend_from_slice(&nonce);
        Ok(())
    }

    /// Decrypt a sealed object; fails with [`CryptoError::Decrypt`] if any byte changed.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.open_with_aad(sealed, b"")
    }

    pub fn open_with_aad(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = sealed.to_vec();
        self.open_in_place(&mut buf, aad)?;
        Ok(buf)
    }

    /// Decrypt a sealed object in place, leaving only the plaintext in `buf`.
    pub fn open_in_place(&self, buf: &mut Vec<u8>, aad: &[u8]) -> Result<(), CryptoError> {
        if buf.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Decrypt);
        }
        let body_len = buf.len() - SEAL_OVERHEAD;
        let (body, trailer) = buf.split_at_mut(body_len);
        let tag: [u8; TAG_LEN] = trailer[..TAG_LEN].try_into().expect("tag length");
        let nonce: [u8; NONCE_LEN] = trailer[TAG_LEN..].try_into().expect("nonce length");
        self.cipher()
            .decrypt_inout_detached(&Nonce::from(nonce), aad, body.into(), &Tag::from(tag))
            .map_err(|_| CryptoError::Decrypt)?;
        buf.truncate(body_len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_fresh_nonces() {
        let key = SecretKey::generate().unwrap();
        let a = key.seal(b"hello").unwrap();
        let b = key.seal(b"hello").unwrap();
        assert_ne!(a, b, "nonces must differ per object");
        assert_eq!(key.open(&a).unwrap(), b"hello");
    }

    #[test]
    fn any_flipped_byte_fails() {
        let key = SecretKey::generate().unwrap();
        let sealed = key.seal(b"some plaintext bytes").unwrap();
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert!(
                matches!(key.open(&t), Err(CryptoError::Decrypt)),
                "byte {i}"
            );
        }
        let other = SecretKey::generate().unwrap();
        assert!(matches!(other.open(&sealed), Err(CryptoError::Decrypt)));
        assert!(matches!(key.open(&sealed[..5]), Err(CryptoError::Decrypt)));
    }

    #[test]
    fn debug_is_redacted() {
        let key = SecretKey::from_bytes([0xAB; 32]);
        let s = format!("{key:?}");
        assert!(!s.contains("171") && !s.to_lowercase().contains("ab,"));
        assert_eq!(s, "SecretKey(<redacted>)");
    }
}
