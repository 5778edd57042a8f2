//! The ops log: what a live mount changed since it last synced with its peers.
//!
//! The log decides whether an incoming head can simply replace the local tree
//! (log empty) or must be merged with it, and it is what a merge reports.

use serde::{Deserialize, Serialize};

use super::tree::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Create { path: String },
    Mkdir { path: String },
    Symlink { path: String },
    Write { path: String, offset: u64, len: u64 },
    Truncate { path: String, size: u64 },
    SetAttr { path: String },
    SetXattr { path: String, name: String },
    RemoveXattr { path: String, name: String },
    Unlink { path: String },
    Rmdir { path: String },
    Rename { from: String, to: String },
    Restore { version: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    pub at: Timestamp,
    pub op: Op,
}

/// Local edits since the last synced head.
#[derive(Clone, Debug, Default)]
pub struct OpsLog {
    records: Vec<OpRecord>,
}

impl OpsLog {
    /// Append `op`, folding a write that continues the previous one into it so
    /// a long sequential write is one record.
    pub fn push(&mut self, op: Op) {
        if let (
            Some(OpRecord {
                op: Op::Write { path, offset, len },
                at,
            }),
            Op::Write {
                path: p2,
                offset: o2,
                len: l2,
            },
        ) = (self.records.last_mut(), &op)
        {
            if path == p2 && *offset + *len == *o2 {
                *len += l2;
                *at = Timestamp::now();
                return;
            }
        }
        self.records.push(OpRecord {
            at: Timestamp::now(),
            op,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn records(&self) -> &[OpRecord] {
        &self.records
    }

    pub fn clear(&mut self) {
        self.records.clear();
    }
}
