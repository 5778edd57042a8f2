//! The ops log: what a live mount changed since it last synced with its peers.
//!
//! The log is what a merge reports and what operators see of pending local
//! work; it is cleared when the head is known to the peers (a merge, or an
//! announcement they acknowledged) and bounded meanwhile: past
//! [`MAX_RECORDS`] the oldest records are dropped and only counted.

use serde::{Deserialize, Serialize};

use super::tree::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Create {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Symlink {
        path: String,
    },
    /// A FIFO, socket or device node.
    Mknod {
        path: String,
    },
    Write {
        path: String,
        offset: u64,
        len: u64,
    },
    Truncate {
        path: String,
        size: u64,
    },
    SetAttr {
        path: String,
    },
    SetXattr {
        path: String,
        name: String,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Restore {
        version: String,
    },
    /// A new name for an existing file (a hard link).
    Link {
        from: String,
        to: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    pub at: Timestamp,
    pub op: Op,
}

/// Most records the log keeps.
pub const MAX_RECORDS: usize = 10_000;

/// Local edits since the last synced head.
#[derive(Clone, Debug, Default)]
pub struct OpsLog {
    records: std::collections::VecDeque<OpRecord>,
    /// Records dropped to stay within [`MAX_RECORDS`] since the last clear.
    dropped: u64,
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
        ) = (self.records.back_mut(), &op)
        {
            if path == p2 && *offset + *len == *o2 {
                *len += l2;
                *at = Timestamp::now();
                return;
            }
        }
        if self.records.len() >= MAX_RECORDS {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(OpRecord {
            at: Timestamp::now(),
            op,
        });
    }

    /// True when nothing was logged since the last clear.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.dropped == 0
    }

    /// Records kept (at most [`MAX_RECORDS`]).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Records dropped to stay within the bound since the last clear.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn records(&self) -> impl Iterator<Item = &OpRecord> {
        self.records.iter()
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_stays_bounded_and_counts_what_it_drops() {
        let mut log = OpsLog::default();
        for i in 0..MAX_RECORDS + 500 {
            log.push(Op::Create {
                path: format!("/f{i}"),
            });
        }
        assert_eq!(log.len(), MAX_RECORDS);
        assert_eq!(log.dropped(), 500);
        assert_eq!(
            log.records().next().map(|r| &r.op),
            Some(&Op::Create {
                path: "/f500".into()
            })
        );
        log.clear();
        assert!(log.is_empty());
    }
}
