//! Looking into a bucket for people (the operator CLI and the node's admin
//! service): pick a version by hash, height or time, list a directory.

use super::error::{BucketError, Result};
use super::mount::{FileKind, Mount};
use super::VersionInfo;
use crate::store::Hash;

/// Which version to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionSpec {
    /// The current head (a live mount's, with its unsaved changes).
    Head,
    Hash(Hash),
    Height(u64),
    /// The newest version created at or before this Unix time.
    At(i64),
}

impl VersionSpec {
    /// From the CLI's / the admin request's fields: `version` is empty, a
    /// manifest hash or a height; `at` a Unix time. Both at once is refused.
    pub fn parse(version: &str, at: Option<i64>) -> Result<Self> {
        let version = version.trim();
        match (version.is_empty(), at) {
            (true, None) => Ok(Self::Head),
            (true, Some(t)) => Ok(Self::At(t)),
            (false, Some(_)) => Err(BucketError::InvalidArgument(
                "give a version or a time, not both".into(),
            )),
            (false, None) => {
                if let Ok(h) = version.parse::<u64>() {
                    return Ok(Self::Height(h));
                }
                version.parse::<Hash>().map(Self::Hash).map_err(|_| {
                    BucketError::InvalidArgument(format!(
                        "version {version:?} is neither a height nor a 64-hex manifest hash"
                    ))
                })
            }
        }
    }

    /// The version this names in `history` (newest first); `None` for the head.
    pub fn pick<'h>(&self, history: &'h [VersionInfo]) -> Result<Option<&'h VersionInfo>> {
        let not_found = |what: String| Err(BucketError::InvalidArgument(what));
        match *self {
            Self::Head => Ok(None),
            Self::Hash(h) => match history.iter().find(|v| v.hash == h) {
                Some(v) => Ok(Some(v)),
                None => not_found(format!("no version {h} in this volume's history")),
            },
            Self::Height(n) => {
                let at: Vec<&VersionInfo> = history.iter().filter(|v| v.height == n).collect();
                match at.as_slice() {
                    [one] => Ok(Some(one)),
                    [] => not_found(format!("no version at height {n}")),
                    many => not_found(format!(
                        "{} versions at height {n} (concurrent edits): give one of {}",
                        many.len(),
                        many.iter()
                            .map(|v| v.hash.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
            Self::At(t) => history
                .iter()
                .filter(|v| v.created_at.secs <= t)
                .max_by_key(|v| (v.created_at.secs, v.created_at.nanos, v.height))
                .map(Some)
                .map_or_else(
                    || not_found(format!("no version was created at or before {t}")),
                    Ok,
                ),
        }
    }
}

/// One directory entry as people see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub kind: FileKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_secs: i64,
}

/// The entries of the directory at `path`, sorted by name.
pub fn list_dir(m: &mut Mount, path: &str) -> Result<Vec<Listed>> {
    let dir = super::path::resolve(m, path)?;
    if m.getattr(dir)?.kind != FileKind::Dir {
        return Err(BucketError::InvalidArgument(format!(
            "{path} is not a directory"
        )));
    }
    let mut out = Vec::new();
    for e in m.readdir(dir)? {
        let a = m.getattr(e.ino)?;
        let mtime_secs = a
            .mtime
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        out.push(Listed {
            name: String::from_utf8_lossy(&e.name).into_owned(),
            kind: a.kind,
            mode: a.mode,
            size: a.size,
            mtime_secs,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The kind's name in listings ("file", "dir", "symlink", "fifo", ...).
pub fn kind_name(kind: FileKind) -> &'static str {
    kind.name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Timestamp;
    use crate::crypto::NodeId;

    fn v(n: u8, height: u64, secs: i64) -> VersionInfo {
        VersionInfo {
            hash: Hash([n; 32]),
            height,
            previous: None,
            merged: None,
            author: NodeId([0; 32]),
            created_at: Timestamp { secs, nanos: 0 },
            used_bytes: 0,
            entries: 0,
        }
    }

    #[test]
    fn versions_by_hash_height_and_time() {
        let history = vec![v(3, 3, 300), v(4, 2, 200), v(5, 2, 210), v(1, 1, 100)];
        let pick = |spec: VersionSpec| spec.pick(&history).map(|o| o.map(|v| v.hash));
        assert_eq!(pick(VersionSpec::Head).unwrap(), None);
        assert_eq!(pick(VersionSpec::Height(1)).unwrap(), Some(history[3].hash));
        let err = pick(VersionSpec::Height(2)).unwrap_err().to_string();
        assert!(err.contains("2 versions at height 2"), "{err}");
        assert!(pick(VersionSpec::Height(9)).is_err());
        assert_eq!(pick(VersionSpec::At(250)).unwrap(), Some(history[2].hash));
        assert_eq!(pick(VersionSpec::At(300)).unwrap(), Some(history[0].hash));
        assert!(pick(VersionSpec::At(99)).is_err());
        assert_eq!(
            pick(VersionSpec::Hash(history[1].hash)).unwrap(),
            Some(history[1].hash)
        );
        assert!(pick(VersionSpec::Hash(Hash([9; 32]))).is_err());
    }

    #[test]
    fn specs_parse() {
        assert_eq!(VersionSpec::parse("", None).unwrap(), VersionSpec::Head);
        assert_eq!(
            VersionSpec::parse("12", None).unwrap(),
            VersionSpec::Height(12)
        );
        assert_eq!(VersionSpec::parse("", Some(5)).unwrap(), VersionSpec::At(5));
        let h = Hash([7; 32]);
        assert_eq!(
            VersionSpec::parse(&h.to_string(), None).unwrap(),
            VersionSpec::Hash(h)
        );
        assert!(VersionSpec::parse("zz", None).is_err());
        assert!(VersionSpec::parse("3", Some(5)).is_err());
    }
}
