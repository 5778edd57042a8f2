//! Canonical, versioned binary encoding for everything the bucket persists.
//!
//! Every object starts with a format version byte and a type tag, then the
//! postcard encoding of the value. Postcard is deterministic for our types
//! (sorted maps, fixed field order), and [`decode`] re-encodes to reject
//! non-canonical input, so equal values always have equal bytes.

use serde::{de::DeserializeOwned, Serialize};

use super::error::{BucketError, Result};

/// Format version of manifests written now: the sealed root key is bound
/// to the rest of the body (see `manifest::root_key_binding`), so only a
/// holder of the bucket secret can make a manifest whose tree opens.
pub const MANIFEST_VERSION: u8 = 2;
/// Manifests from before the binding: still read (history written before
/// the upgrade), never taken as a head from a peer.
pub const MANIFEST_UNBOUND: u8 = 1;
/// Format version of directory nodes written now: entries carry a stable
/// inode id (version 1 had none) and a change clock (version 2 had none);
/// both older versions still decode, see `tree::legacy`.
pub const DIR_VERSION: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Manifest = 1,
    Dir = 2,
    /// A blob set statement (`blob_set`).
    BlobSet = 3,
}

/// Encode `value` as format `version` of `tag`.
pub fn encode<T: Serialize>(version: u8, tag: Tag, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![version, tag as u8];
    let body = postcard::to_stdvec(value).map_err(|e| BucketError::Format {
        what: "object",
        reason: e.to_string(),
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// The format version of an encoded object of type `tag` (checked to be
/// one of `known`), and its body.
pub fn version_of<'b>(
    known: &[u8],
    tag: Tag,
    bytes: &'b [u8],
    what: &'static str,
) -> Result<(u8, &'b [u8])> {
    let bad = |reason: String| BucketError::Format { what, reason };
    match bytes {
        [v, t, body @ ..] if known.contains(v) && *t == tag as u8 => Ok((*v, body)),
        [v, _, ..] if !known.contains(v) => Err(bad(format!("unsupported format version {v}"))),
        [_, t, ..] => Err(bad(format!("unexpected type tag {t}"))),
        _ => Err(bad("truncated".into())),
    }
}

/// Decode a body (after [`version_of`]), rejecting non-canonical bytes.
pub fn decode_body<T: Serialize + DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T> {
    let bad = |reason: String| BucketError::Format { what, reason };
    let value: T = postcard::from_bytes(body).map_err(|e| bad(e.to_string()))?;
    let again = postcard::to_stdvec(&value).map_err(|e| bad(e.to_string()))?;
    if again != body {
        return Err(bad("non-canonical encoding".into()));
    }
    Ok(value)
}
