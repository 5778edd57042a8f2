//! Canonical, versioned binary encoding for everything the bucket persists.
//!
//! Every object starts with a format version byte and a type tag, then the
//! postcard encoding of the value. Postcard is deterministic for our types
//! (sorted maps, fixed field order), and [`decode`] re-encodes to reject
//! non-canonical input, so equal values always have equal bytes.

use serde::{de::DeserializeOwned, Serialize};

use super::error::{BucketError, Result};

/// Current on-disk format version.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Manifest = 1,
    Dir = 2,
}

pub fn encode<T: Serialize>(tag: Tag, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_VERSION, tag as u8];
    let body = postcard::to_stdvec(value).map_err(|e| BucketError::Format {
        what: "object",
        reason: e.to_string(),
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: Serialize + DeserializeOwned>(
    tag: Tag,
    bytes: &[u8],
    what: &'static str,
) -> Result<T> {
    let bad = |reason: String| BucketError::Format { what, reason };
    match bytes {
        [FORMAT_VERSION, t, body @ ..] if *t == tag as u8 => {
            let value: T = postcard::from_bytes(body).map_err(|e| bad(e.to_string()))?;
            let again = postcard::to_stdvec(&value).map_err(|e| bad(e.to_string()))?;
            if again != body {
                return Err(bad("non-canonical encoding".into()));
            }
            Ok(value)
        }
        [v, ..] if *v != FORMAT_VERSION => Err(bad(format!("unsupported format version {v}"))),
        [_, t, ..] => Err(bad(format!("unexpected type tag {t}"))),
        _ => Err(bad("truncated".into())),
    }
}
