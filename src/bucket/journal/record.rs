//! What the journal holds: each change a writable mount made, with the
//! inputs it drew (its time, a new inode id, a new key), so that replaying
//! it on the same base gives the same tree, clocks and all.

use serde::{Deserialize, Serialize};

use crate::bucket::mount::{Ino, RenameFlags, SetAttr, XattrFlags};
use crate::bucket::tree::{KeyBytes, SpecialKind, Timestamp};
use crate::crypto::NodeId;
use crate::store::Hash;

/// One change, as the Mount's API took it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Change {
    Create {
        parent: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Mkdir {
        parent: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        parent: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        #[serde(with = "bytes")]
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Mknod {
        parent: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        kind: SpecialKind,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    Link {
        ino: Ino,
        new_parent: Ino,
        #[serde(with = "bytes")]
        new_name: Vec<u8>,
    },
    Unlink {
        parent: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
    },
    Rmdir {
        parent: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
    },
    Rename {
        parent: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        new_parent: Ino,
        #[serde(with = "bytes")]
        new_name: Vec<u8>,
        no_replace: bool,
        exchange: bool,
    },
    Write {
        ino: Ino,
        offset: u64,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    SetAttr {
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Timestamp>,
        mtime: Option<Timestamp>,
    },
    SetXattr {
        ino: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        #[serde(with = "bytes")]
        value: Vec<u8>,
        create: bool,
        replace: bool,
    },
    RemoveXattr {
        ino: Ino,
        #[serde(with = "bytes")]
        name: Vec<u8>,
    },
    SetQuota {
        quota: Option<u64>,
    },
    Grant {
        node: NodeId,
    },
    Restore {
        version: Hash,
    },
}

impl Change {
    /// Bytes of file data the change carries (what bounds a batch in memory).
    pub fn data_len(&self) -> u64 {
        match self {
            Change::Write { data, .. } => data.len() as u64,
            Change::SetXattr { value, .. } => value.len() as u64,
            _ => 0,
        }
    }

    pub fn set_attr(ino: Ino, s: &SetAttr) -> Self {
        Change::SetAttr {
            ino,
            mode: s.mode,
            uid: s.uid,
            gid: s.gid,
            size: s.size,
            atime: s.atime,
            mtime: s.mtime,
        }
    }

    pub fn rename(
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Self {
        Change::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            no_replace: flags.no_replace,
            exchange: flags.exchange,
        }
    }

    pub fn set_xattr(ino: Ino, name: &[u8], value: &[u8], flags: XattrFlags) -> Self {
        Change::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            create: flags.create,
            replace: flags.replace,
        }
    }
}

/// What a change drew that is not in its arguments. Replaying a change
/// hands the same values back, so the replayed tree is the same tree.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Draws {
    /// The time the change happened (one time for the whole change).
    pub at: Option<Timestamp>,
    /// The inode id a new entry got.
    pub ino: Option<Ino>,
    /// The key a new file or directory got.
    pub key: Option<KeyBytes>,
}

/// A change and what it drew.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recorded {
    pub draws: Draws,
    pub change: Change,
}

/// Byte strings as one length and the bytes (serde's default for a
/// `Vec<u8>` is a sequence of single bytes: the same bytes with postcard,
/// but one call per byte).
pub(crate) mod bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_round_trips_through_postcard_with_its_bytes_whole() {
        let r = Recorded {
            draws: Draws {
                at: Some(Timestamp::now()),
                ino: None,
                key: None,
            },
            change: Change::Write {
                ino: 7,
                offset: 4096,
                data: vec![1, 2, 3, 255],
            },
        };
        let bytes = postcard::to_stdvec(&r).unwrap();
        let back: Recorded = postcard::from_bytes(&bytes).unwrap();
        match back.change {
            Change::Write { ino, offset, data } => {
                assert_eq!((ino, offset, data), (7, 4096, vec![1, 2, 3, 255]))
            }
            other => panic!("decoded as {other:?}"),
        }
        assert_eq!(back.draws.at, r.draws.at);
    }
}
