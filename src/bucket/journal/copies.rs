//! A replica's copies of other nodes' journals (`syncReplicas`): for
//! each bucket and writer, the bytes of the writer's active journal file,
//! as the writer sent them, fdatasynced before they are confirmed. The
//! frames are sealed with the bucket secret, so a blind replica keeps
//! them without being able to read them; a node that stages the volume
//! after the writer is lost replays them (`Bucket::replay_journal_copy`).
//!
//! One file per writer and journal file:
//! `<state>/journal-copies/<bucket>/<writer>.<base>.<epoch>`. A copy of a
//! newer file of the same writer replaces the older ones once its base is
//! held here: that version holds what the older file held, or the newer
//! file does (the writer moves a version's late changes into it).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::FileId;
use crate::bucket::BucketId;
use crate::crypto::NodeId;
use crate::store::Hash;

const DIR: &str = "journal-copies";

/// One copy read back.
pub struct Copy {
    pub writer: NodeId,
    pub file: FileId,
    pub bytes: Vec<u8>,
}

fn bucket_dir(root: &Path, bucket: &BucketId) -> PathBuf {
    root.join(DIR).join(bucket.to_hex())
}

fn name_of(writer: &NodeId, file: &FileId) -> String {
    format!(
        "{}.{}.{}",
        writer.to_hex(),
        file.base.to_hex(),
        hex::encode(file.epoch)
    )
}

fn parse_name(name: &str) -> Option<(NodeId, FileId)> {
    let mut parts = name.split('.');
    let writer = NodeId::from_hex(parts.next()?).ok()?;
    let base = Hash::from_hex(parts.next()?).ok()?;
    let epoch: [u8; 16] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    parts
        .next()
        .is_none()
        .then_some((writer, FileId { base, epoch }))
}

/// Write `bytes` at `offset` of `writer`'s copy of `file` and fdatasync;
/// how many bytes of the file the copy holds now. A write that would
/// leave a hole is not made (the answer says where to start again).
pub fn write(
    root: &Path,
    bucket: &BucketId,
    writer: &NodeId,
    file: &FileId,
    offset: u64,
    bytes: &[u8],
) -> std::io::Result<u64> {
    let dir = bucket_dir(root, bucket);
    let path = dir.join(name_of(writer, file));
    let is_new = !path.exists();
    if is_new {
        if offset > 0 {
            return Ok(0);
        }
        crate::durable::create_dir_all(&dir)?;
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let len = f.metadata()?.len();
    if offset > len {
        return Ok(len);
    }
    f.write_all_at(bytes, offset)?;
    f.sync_data()?;
    if is_new {
        crate::durable::sync_dir(&dir)?;
        drop_older(&dir, writer, file);
    }
    Ok(len.max(offset + bytes.len() as u64))
}

/// Remove `writer`'s copies of files other than `file` (see the module docs).
fn drop_older(dir: &Path, writer: &NodeId, file: &FileId) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if let Some((w, f)) = parse_name(&name.to_string_lossy()) {
            if w == *writer && f != *file {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "removing a replaced journal copy");
                }
            }
        }
    }
}

/// Every copy held here for `bucket`.
pub fn read_all(root: &Path, bucket: &BucketId) -> Vec<Copy> {
    let Ok(rd) = std::fs::read_dir(bucket_dir(root, bucket)) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let (writer, file) = parse_name(&e.file_name().to_string_lossy())?;
            match std::fs::read(e.path()) {
                Ok(bytes) => Some(Copy {
                    writer,
                    file,
                    bytes,
                }),
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "reading a journal copy");
                    None
                }
            }
        })
        .collect()
}

/// Forget `bucket`'s copies (the bucket left this node).
pub fn remove(root: &Path, bucket: &BucketId) {
    let dir = bucket_dir(root, bucket);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.display(), error = %e, "removing a bucket's journal copies");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (BucketId, NodeId, FileId, FileId) {
        let bucket = BucketId([7; 16]);
        let writer = NodeId([1; 32]);
        let a = FileId {
            base: Hash([2; 32]),
            epoch: [3; 16],
        };
        let b = FileId {
            base: Hash([4; 32]),
            epoch: [5; 16],
        };
        (bucket, writer, a, b)
    }

    #[test]
    fn a_copy_grows_in_order_refuses_holes_and_is_replaced_by_a_newer_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (bucket, writer, a, b) = ids();
        assert_eq!(write(root, &bucket, &writer, &a, 3, b"late").unwrap(), 0);
        assert!(read_all(root, &bucket).is_empty());
        assert_eq!(write(root, &bucket, &writer, &a, 0, b"abc").unwrap(), 3);
        assert_eq!(write(root, &bucket, &writer, &a, 5, b"gap").unwrap(), 3);
        assert_eq!(write(root, &bucket, &writer, &a, 3, b"def").unwrap(), 6);
        // Sent twice (two fsyncs racing): the same bytes, the same length.
        assert_eq!(write(root, &bucket, &writer, &a, 0, b"abc").unwrap(), 6);
        let all = read_all(root, &bucket);
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].writer, all[0].file), (writer, a));
        assert_eq!(all[0].bytes, b"abcdef");

        let other = NodeId([9; 32]);
        write(root, &bucket, &other, &a, 0, b"theirs").unwrap();
        write(root, &bucket, &writer, &b, 0, b"new").unwrap();
        let mut all: Vec<_> = read_all(root, &bucket)
            .into_iter()
            .map(|c| (c.writer, c.file, c.bytes))
            .collect();
        all.sort_by_key(|(w, _, _)| w.0);
        assert_eq!(
            all,
            vec![(writer, b, b"new".to_vec()), (other, a, b"theirs".to_vec())]
        );
        remove(root, &bucket);
        assert!(read_all(root, &bucket).is_empty());
    }
}
