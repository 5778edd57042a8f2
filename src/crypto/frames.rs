//! Framed AEAD for file chunks: a chunk is sealed as independent frames of
//! `F` bytes ([`FRAME_LEN`] when written now), so a small read opens one
//! frame instead of the whole chunk. Layout of a sealed chunk of `L`
//! plaintext bytes in `n` frames (`n = max(1, ceil(L / F))`):
//!
//! ```text
//! ct_0 || ct_1 || … || ct_{n-1} || tag_0 … tag_{n-1} || log2(F) (1) || nonce (12)
//! ```
//!
//! Ciphertext frame `j` sits at byte `j * F`, exactly where its plaintext
//! was, which keeps frames aligned with the blob store's verified slices.
//! The frame size is recorded in each chunk, so chunks written with another
//! frame size keep opening if the default ever changes. Frame `j` uses the
//! chunk's random nonce with `j` XORed into its last four bytes, and
//! authenticates `j`, `n` and `log2(F)` as associated data, so frames can be
//! neither reordered, dropped, moved between chunks nor reinterpreted.

use std::ops::Range;

use ring::aead::{Aad, Nonce, Tag};

use super::secret::{NONCE_LEN, TAG_LEN};
use super::{random_bytes, CryptoError, SecretKey};

/// Plaintext bytes per frame for chunks written now: 16 KiB (a 4 KiB read
/// opens one or two frames).
pub const FRAME_LEN: usize = 1 << FRAME_SHIFT;
const FRAME_SHIFT: u8 = 14;
/// Frame sizes a chunk may declare: 4 KiB to 16 MiB.
const FRAME_SHIFTS: std::ops::RangeInclusive<u8> = 12..=24;
/// The frame-size byte and the nonce after the tags.
const TRAILER_FIXED: usize = 1 + NONCE_LEN;

/// Where the parts of a sealed chunk are, derived from its total length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// Plaintext (and ciphertext body) length.
    pub plain_len: usize,
    /// Number of frames.
    pub frames: usize,
    /// log2 of the frame size.
    pub shift: u8,
}

impl FrameLayout {
    /// The layout for `plain_len` bytes of plaintext, framed as written now.
    pub fn for_plain(plain_len: usize) -> Self {
        Self::with_shift(plain_len, FRAME_SHIFT)
    }

    fn with_shift(plain_len: usize, shift: u8) -> Self {
        Self {
            plain_len,
            frames: plain_len.div_ceil(1 << shift).max(1),
            shift,
        }
    }

    /// Where, in a sealed chunk of `sealed_len` bytes, the frame-size byte is.
    pub fn shift_at(sealed_len: usize) -> Option<usize> {
        sealed_len.checked_sub(TRAILER_FIXED)
    }

    /// The layout of a sealed chunk of `sealed_len` bytes whose frame-size
    /// byte is `shift`, if one fits.
    pub fn for_sealed(sealed_len: usize, shift: u8) -> Option<Self> {
        if !FRAME_SHIFTS.contains(&shift) {
            return None;
        }
        let frame_len = 1usize << shift;
        // sealed = L + 16 n + 13 with n = max(1, ceil(L / F)): every frame but
        // the last is F + 16 bytes with its tag, the last 1..=F + 16.
        let body_and_tags = sealed_len.checked_sub(TRAILER_FIXED)?;
        let rest = body_and_tags.checked_sub(TAG_LEN)?;
        let frames = if rest == 0 {
            1
        } else {
            (rest - 1) / (frame_len + TAG_LEN) + 1
        };
        let layout = Self::with_shift(body_and_tags.checked_sub(TAG_LEN * frames)?, shift);
        (layout.frames == frames && layout.sealed_len() == sealed_len).then_some(layout)
    }

    /// The layout of a whole sealed chunk.
    pub fn of_sealed(sealed: &[u8]) -> Option<Self> {
        let at = Self::shift_at(sealed.len())?;
        Self::for_sealed(sealed.len(), sealed[at])
    }

    pub fn sealed_len(&self) -> usize {
        self.plain_len + TAG_LEN * self.frames + TRAILER_FIXED
    }

    fn frame_len(&self) -> usize {
        1 << self.shift
    }

    /// Bytes of frame `j` within the plaintext (and the ciphertext body).
    pub fn frame(&self, j: usize) -> Range<usize> {
        let f = self.frame_len();
        (j * f).min(self.plain_len)..((j + 1) * f).min(self.plain_len)
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
        range.start / self.frame_len()..(range.end - 1) / self.frame_len() + 1
    }
}

fn frame_nonce(nonce: &[u8; NONCE_LEN], j: usize) -> Nonce {
    let mut n = *nonce;
    for (b, x) in n[NONCE_LEN - 4..].iter_mut().zip((j as u32).to_be_bytes()) {
        *b ^= x;
    }
    Nonce::assume_unique_for_key(n)
}

fn frame_aad(j: usize, layout: &FrameLayout) -> [u8; 9] {
    let mut aad = [0u8; 9];
    aad[..4].copy_from_slice(&(j as u32).to_be_bytes());
    aad[4..8].copy_from_slice(&(layout.frames as u32).to_be_bytes());
    aad[8] = layout.shift;
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
                    Aad::from(frame_aad(j, &layout)),
                    &mut buf[layout.frame(j)],
                )
                .map_err(|_| CryptoError::Malformed("frame too long"))?;
            tags.extend_from_slice(tag.as_ref());
        }
        buf.extend_from_slice(&tags);
        buf.push(layout.shift);
        buf.extend_from_slice(&nonce);
        Ok(())
    }

    /// Open a whole framed chunk in place, leaving only the plaintext.
    pub fn open_frames_in_place(&self, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        let layout = FrameLayout::of_sealed(buf).ok_or(CryptoError::Decrypt)?;
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
        if trailer.len() != TAG_LEN * layout.frames + TRAILER_FIXED
            || trailer[TAG_LEN * layout.frames] != layout.shift
        {
            return Err(CryptoError::Decrypt);
        }
        let nonce: [u8; NONCE_LEN] = trailer[TAG_LEN * layout.frames + 1..]
            .try_into()
            .expect("nonce length");
        let cipher = self.cipher();
        let mut at = 0;
        for &j in frames {
            if j >= layout.frames {
                return Err(CryptoError::Decrypt);
            }
            let len = layout.frame(j).len();
            let ct = body.get_mut(at..at + len).ok_or(CryptoError::Decrypt)?;
            let tag: [u8; TAG_LEN] = trailer[j * TAG_LEN..(j + 1) * TAG_LEN]
                .try_into()
                .expect("tag length");
            cipher
                .key()
                .open_in_place_separate_tag(
                    frame_nonce(&nonce, j),
                    Aad::from(frame_aad(j, layout)),
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
                FrameLayout::for_sealed(l.sealed_len(), FRAME_SHIFT),
                Some(l),
                "len {len}"
            );
            // Another frame size recorded in the chunk parses as that size.
            let big = FrameLayout::with_shift(len, 16);
            assert_eq!(FrameLayout::for_sealed(big.sealed_len(), 16), Some(big));
        }
        assert_eq!(FrameLayout::for_sealed(28, FRAME_SHIFT), None);
        assert_eq!(FrameLayout::for_sealed(f + 100, 40), None);
        // Just past a full frame: too long for one frame, too short for two.
        assert_eq!(FrameLayout::for_sealed(f + 30, FRAME_SHIFT), None);
    }

    #[test]
    fn whole_and_partial_opens_agree() {
        let key = SecretKey::generate().unwrap();
        let plain: Vec<u8> = (0..3 * FRAME_LEN + 777).map(|i| (i * 7) as u8).collect();
        let mut sealed = plain.clone();
        key.seal_frames_in_place(&mut sealed).unwrap();
        let layout = FrameLayout::of_sealed(&sealed).unwrap();
        assert_eq!(layout.frames, 4);
        assert!(key
            .open_frames(&layout, &[4], &mut [], &sealed[layout.trailer()])
            .is_err());
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
