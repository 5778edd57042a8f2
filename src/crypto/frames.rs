//! Framed AEAD for file chunks: a chunk is sealed as independent frames of
//! [`FRAME_LEN`] bytes, so a small read opens one frame instead of the whole
//! chunk. Layout of a sealed chunk of `L` plaintext bytes in `n` frames
//! (`n = max(1, ceil(L / FRAME_LEN))`):
//!
//! ```text
//! ct_0 || ct_1 || … || ct_{n-1} || tag_0 … tag_{n-1} || nonce (12)
//! ```
//!
//! Ciphertext frame `j` sits at byte `j * FRAME_LEN`, exactly where its
//! plaintext was, which keeps frames aligned with the blob store's verified
//! slices. Frame `j` uses the chunk's random nonce with `j` XORed into its
//! last four bytes, and authenticates `j` and `n` as associated data, so
//! frames can be neither reordered, dropped nor moved between chunks.

use std::ops::Range;

use ring::aead::{Aad, Nonce, Tag};

use super::secret::{NONCE_LEN, TAG_LEN};
use super::{random_bytes, CryptoError, SecretKey};

/// Plaintext bytes per frame: 64 KiB.
pub const FRAME_LEN: usize = 64 * 1024;

/// Where the parts of a sealed chunk are, derived from its total length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// Plaintext (and ciphertext body) length.
    pub plain_len: usize,
    /// Number of frames.
    pub frames: usize,
}

impl FrameLayout {
    /// The layout for `plain_len` bytes of plaintext.
    pub fn for_plain(plain_len: usize) -> Self {
        Self {
            plain_len,
            frames: plain_len.div_ceil(FRAME_LEN).max(1),
        }
    }

    /// The layout of a sealed chunk of `sealed_len` bytes, if one fits.
    pub fn for_sealed(sealed_len: usize) -> Option<Self> {
        // sealed = L + 16 n + 12 with n = max(1, ceil(L / F)): every frame but
        // the last is F + 16 bytes with its tag, the last 1..=F + 16.
        let body_and_tags = sealed_len.checked_sub(NONCE_LEN)?;
        let rest = body_and_tags.checked_sub(TAG_LEN)?;
        let frames = if rest == 0 {
            1
        } else {
            (rest - 1) / (FRAME_LEN + TAG_LEN) + 1
        };
        let layout = Self {
            plain_len: body_and_tags.checked_sub(TAG_LEN * frames)?,
            frames,
        };
        (layout == Self::for_plain(layout.plain_len) && layout.sealed_len() == sealed_len)
            .then_some(layout)
    }

    pub fn sealed_len(&self) -> usize {
        self.plain_len + TAG_LEN * self.frames + NONCE_LEN
    }

    /// Bytes of frame `j` within the plaintext (and the ciphertext body).
    pub fn frame(&self, j: usize) -> Range<usize> {
        j * FRAME_LEN..((j + 1) * FRAME_LEN).min(self.plain_len)
    }

    /// The tags and the nonce after the body.
    pub fn trailer(&self) -> Range<usize> {
        self.plain_len..self.sealed_len()
    }

    /// The frames holding plaintext bytes `range` (which must be within the body).
    pub fn frames_for(&self, range: &Range<usize>) -> Range<usize> {
        if range.is_empty() {
            return 0..0;
        }
        range.start / FRAME_LEN..(range.end - 1) / FRAME_LEN + 1
    }
}

fn frame_nonce(nonce: &[u8; NONCE_LEN], j: usize) -> Nonce {
    let mut n = *nonce;
    for (b, x) in n[NONCE_LEN - 4..].iter_mut().zip((j as u32).to_be_bytes()) {
        *b ^= x;
    }
    Nonce::assume_unique_for_key(n)
}

fn frame_aad(j: usize, frames: usize) -> [u8; 8] {
    let mut aad = [0u8; 8];
    aad[..4].copy_from_slice(&(j as u32).to_be_bytes());
    aad[4..].copy_from_slice(&(frames as u32).to_be_bytes());
    aad
}

impl SecretKey {
    /// Seal `buf` (plaintext) in place as a framed chunk.
    pub fn seal_frames_in_place(&self, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        let layout = FrameLayout::for_plain(buf.len());
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let cipher = self.cipher();
        let mut tags = Vec::with_capacity(TAG_LEN * layout.frames);
        for j in 0..layout.frames {
            let tag = cipher
                .key()
                .seal_in_place_separate_tag(
                    frame_nonce(&nonce, j),
                    Aad::from(frame_aad(j, layout.frames)),
                    &mut buf[layout.frame(j)],
                )
                .map_err(|_| CryptoError::Malformed("frame too long"))?;
            tags.extend_from_slice(tag.as_ref());
        }
        buf.extend_from_slice(&tags);
        buf.extend_from_slice(&nonce);
        Ok(())
    }

    /// Open a whole framed chunk in place, leaving only the plaintext.
    pub fn open_frames_in_place(&self, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        let layout = FrameLayout::for_sealed(buf.len()).ok_or(CryptoError::Decrypt)?;
        let (body, trailer) = buf.split_at_mut(layout.plain_len);
        let frames: Vec<usize> = (0..layout.frames).collect();
        self.open_frames(&layout, &frames, body, trailer)?;
        buf.truncate(layout.plain_len);
        Ok(())
    }

    /// Open frames `frames` (ascending, contiguous) of a chunk with `layout`
    /// in place. `body` holds exactly those frames' ciphertext, back to back;
    /// `trailer` is the chunk's tags and nonce.
    pub fn open_frames(
        &self,
        layout: &FrameLayout,
        frames: &[usize],
        body: &mut [u8],
        trailer: &[u8],
    ) -> Result<(), CryptoError> {
        if trailer.len() != TAG_LEN * layout.frames + NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let nonce: [u8; NONCE_LEN] = trailer[TAG_LEN * layout.frames..]
            .try_into()
            .expect("nonce length");
        let cipher = self.cipher();
        let mut at = 0;
        for &j in frames {
            let len = layout.frame(j).len();
            let ct = body.get_mut(at..at + len).ok_or(CryptoError::Decrypt)?;
            let tag: [u8; TAG_LEN] = trailer[j * TAG_LEN..(j + 1) * TAG_LEN]
                .try_into()
                .expect("tag length");
            cipher
                .key()
                .open_in_place_separate_tag(
                    frame_nonce(&nonce, j),
                    Aad::from(frame_aad(j, layout.frames)),
                    Tag::from(tag),
                    ct,
                    0..,
                )
                .map_err(|_| CryptoError::Decrypt)?;
            at += len;
        }
        if at != body.len() {
            return Err(CryptoError::Decrypt);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_for_every_interesting_length() {
        let f = FRAME_LEN;
        for len in [0, 1, f - 1, f, f + 1, 2 * f, 16 * f - 5, 16 * f, 16 * f + 1] {
            let l = FrameLayout::for_plain(len);
            assert_eq!(
                FrameLayout::for_sealed(l.sealed_len()),
                Some(l),
                "len {len}"
            );
        }
        assert_eq!(FrameLayout::for_sealed(27), None);
        // Just past a full frame: too long for one frame, too short for two.
        assert_eq!(FrameLayout::for_sealed(f + 29), None);
    }

    #[test]
    fn whole_and_partial_opens_agree() {
        let key = SecretKey::generate().unwrap();
        let plain: Vec<u8> = (0..3 * FRAME_LEN + 777).map(|i| (i * 7) as u8).collect();
        let mut sealed = plain.clone();
        key.seal_frames_in_place(&mut sealed).unwrap();
        let layout = FrameLayout::for_sealed(sealed.len()).unwrap();
        assert_eq!(layout.frames, 4);
        let trailer = sealed[layout.trailer()].to_vec();
        // Frames 1..=2 alone.
        let mut body = sealed[layout.frame(1).start..layout.frame(2).end].to_vec();
        key.open_frames(&layout, &[1, 2], &mut body, &trailer)
            .unwrap();
        assert_eq!(body, plain[layout.frame(1).start..layout.frame(2).end]);
        // A frame presented as another fails.
        let mut wrong = sealed[layout.frame(1)].to_vec();
        assert!(key
            .open_frames(&layout, &[0], &mut wrong, &trailer)
            .is_err());
        // The whole chunk.
        let mut all = sealed.clone();
        key.open_frames_in_place(&mut all).unwrap();
        assert_eq!(all, plain);
        // Any flipped byte fails the whole open.
        for at in [0, FRAME_LEN, sealed.len() - 13, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[at] ^= 1;
            assert!(key.open_frames_in_place(&mut t).is_err(), "byte {at}");
        }
    }
}
