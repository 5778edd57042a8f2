//! A bucket's secrets over time. The *base* secret is the one Postgres
//! records at CreateVolume: it makes the sync proofs (so every holder, blind
//! replicas included, keeps proving the same bucket) and opens every version
//! written before the first rotation. Each rotation adds an *epoch* secret
//! that seals the root key of every version written after it. Epoch secrets
//! travel only inside key shares (sealed to each member's identity), so a
//! node removed before a rotation, which still holds the base secret and
//! the cluster KEK, cannot open the root of what is written after it (what
//! it can still read is said in ARCHITECTURE.md, *Bucket secret rotation*).
//!
//! Epoch numbers grow by one per rotation and a ring never skips one: an
//! epoch more than one above the highest known is refused, so a member
//! cannot plant an epoch that every later rotation would sort below.

use zeroize::Zeroizing;

use super::{CryptoError, SecretKey};

/// Most epochs a ring holds: a share stays small, and a peer cannot make a
/// node keep an unbounded list.
pub const MAX_EPOCHS: usize = 256;

/// One rotation's secret. `number` orders rotations (one more than the
/// highest the rotating node knew); two nodes rotating at once may pick the
/// same number, and then the key's bytes break the tie.
#[derive(Clone, PartialEq, Eq)]
pub struct Epoch {
    pub number: u32,
    pub key: SecretKey,
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Epoch({}, <redacted>)", self.number)
    }
}

impl Epoch {
    fn order(&self) -> (u32, &[u8; 32]) {
        (self.number, self.key.expose())
    }
}

/// The base secret and the epochs after it, oldest first.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Keyring {
    pub base: SecretKey,
    epochs: Vec<Epoch>,
}

impl Keyring {
    /// A bucket never rotated: its base secret alone.
    pub fn of(base: SecretKey) -> Self {
        Self {
            base,
            epochs: Vec::new(),
        }
    }

    pub fn epochs(&self) -> &[Epoch] {
        &self.epochs
    }

    /// The secret new versions are sealed with: the newest epoch's, or the
    /// base before any rotation.
    pub fn current(&self) -> &SecretKey {
        self.epochs.last().map_or(&self.base, |e| &e.key)
    }

    /// Every secret, the current first (what opens a version is most often
    /// the newest).
    pub fn newest_first(&self) -> impl Iterator<Item = &SecretKey> {
        self.epochs
            .iter()
            .rev()
            .map(|e| &e.key)
            .chain(std::iter::once(&self.base))
    }

    fn highest(&self) -> u32 {
        self.epochs.last().map_or(0, |e| e.number)
    }

    /// A new epoch after every one known here.
    pub fn next_epoch(&self) -> Result<Epoch, CryptoError> {
        let number = self
            .highest()
            .checked_add(1)
            .ok_or(CryptoError::Malformed("no epoch number is left"))?;
        Ok(Epoch {
            number,
            key: SecretKey::generate()?,
        })
    }

    /// Add `epoch` in its place; whether it was new. An epoch more than one
    /// above the highest known is refused (rings never skip a number).
    pub fn add(&mut self, epoch: Epoch) -> Result<bool, CryptoError> {
        if self.epochs.iter().any(|e| e.key == epoch.key) {
            return Ok(false);
        }
        if epoch.number == 0 || epoch.number > self.highest().saturating_add(1) {
            return Err(CryptoError::Malformed(
                "an epoch number that skips past the ring's highest",
            ));
        }
        if self.epochs.len() >= MAX_EPOCHS {
            return Err(CryptoError::Malformed(
                "a bucket holds at most 256 epoch secrets",
            ));
        }
        let at = self.epochs.partition_point(|e| e.order() < epoch.order());
        self.epochs.insert(at, epoch);
        Ok(true)
    }

    /// Take in the epochs of `other` (a ring of the same bucket); the ones
    /// that were new here.
    pub fn merge(&mut self, other: &Keyring) -> Result<Vec<Epoch>, CryptoError> {
        if other.base != self.base {
            return Err(CryptoError::WrongKey);
        }
        let mut added = Vec::new();
        for e in &other.epochs {
            if self.add(e.clone())? {
                added.push(e.clone());
            }
        }
        Ok(added)
    }

    /// `base (32) || (number (4, LE) || key (32))*`: a ring with no epoch is
    /// the 32 bytes a share held before rotations existed.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(32 + 36 * self.epochs.len()));
        out.extend_from_slice(self.base.expose());
        for e in &self.epochs {
            out.extend_from_slice(&e.number.to_le_bytes());
            out.extend_from_slice(e.key.expose());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        let malformed = CryptoError::Malformed("a key ring is 32 bytes and 36 per epoch");
        if bytes.len() < 32 || !(bytes.len() - 32).is_multiple_of(36) {
            return Err(malformed);
        }
        let key_at = |at: usize| {
            let arr: [u8; 32] = bytes[at..at + 32].try_into().expect("32 bytes");
            SecretKey::from_bytes(arr)
        };
        let mut ring = Keyring::of(key_at(0));
        for at in (32..bytes.len()).step_by(36) {
            let number = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            ring.add(Epoch {
                number,
                key: key_at(at + 4),
            })?;
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    #[test]
    fn epochs_order_by_number_then_bytes_and_the_newest_seals() {
        let mut ring = Keyring::of(key(0));
        assert_eq!(ring.current(), &key(0));
        let skip = |n: u32| Epoch {
            number: n,
            key: key(8),
        };
        assert!(ring.add(skip(2)).is_err(), "a ring never skips a number");
        assert!(ring.add(skip(u32::MAX)).is_err());
        ring.add(Epoch {
            number: 1,
            key: key(9),
        })
        .unwrap();
        ring.add(Epoch {
            number: 2,
            key: key(5),
        })
        .unwrap();
        ring.add(Epoch {
            number: 2,
            key: key(3),
        })
        .unwrap();
        assert!(!ring
            .add(Epoch {
                number: 1,
                key: key(9)
            })
            .unwrap());
        let order: Vec<u8> = ring.epochs().iter().map(|e| e.key.expose()[0]).collect();
        assert_eq!(order, vec![9, 3, 5]);
        assert_eq!(ring.current(), &key(5));
        assert_eq!(ring.next_epoch().unwrap().number, 3);
        let all: Vec<u8> = ring.newest_first().map(|k| k.expose()[0]).collect();
        assert_eq!(all, vec![5, 3, 9, 0]);
    }

    #[test]
    fn a_ring_round_trips_and_merges_only_its_own_bucket() {
        let mut a = Keyring::of(key(1));
        a.add(Epoch {
            number: 1,
            key: key(2),
        })
        .unwrap();
        let decoded = Keyring::decode(&a.encode()).unwrap();
        assert_eq!(decoded, a);
        assert_eq!(
            Keyring::decode(&key(1).expose()[..]).unwrap(),
            Keyring::of(key(1))
        );
        assert!(Keyring::decode(&[0; 40]).is_err());
        let mut b = Keyring::of(key(1));
        b.add(Epoch {
            number: 1,
            key: key(7),
        })
        .unwrap();
        let added = a.merge(&b).unwrap();
        assert_eq!(added.len(), 1);
        assert_eq!(a.epochs().len(), 2);
        assert!(a.merge(&Keyring::of(key(4))).is_err());
    }
}
