//! Path-based helpers over the inode API, for the CLI, the demo and tests.

use super::error::{BucketError, Result};
use super::mount::{Attr, FileKind, Ino, Mount, ROOT_INO};

/// Split `/a/b/c` into its components (empty components are ignored).
fn components(path: &str) -> impl Iterator<Item = &[u8]> {
    path.split('/').filter(|c| !c.is_empty()).map(str::as_bytes)
}

/// The inode at `path`.
pub fn resolve(m: &mut Mount, path: &str) -> Result<Ino> {
    let mut ino = ROOT_INO;
    for c in components(path) {
        ino = m.lookup(ino, c)?.ino;
    }
    Ok(ino)
}

/// The parent directory's inode and the last component of `path`.
pub fn parent_of<'p>(m: &mut Mount, path: &'p str) -> Result<(Ino, &'p [u8])> {
    let parts: Vec<&[u8]> = components(path).collect();
    let (last, dirs) = parts
        .split_last()
        .ok_or_else(|| BucketError::InvalidArgument("path names the root".into()))?;
    let mut ino = ROOT_INO;
    for c in dirs {
        ino = m.lookup(ino, c)?.ino;
    }
    Ok((ino, last))
}

/// Create directories along `path` as needed (like `mkdir -p`).
pub fn mkdir_all(m: &mut Mount, path: &str) -> Result<Ino> {
    let mut ino = ROOT_INO;
    for c in components(path) {
        ino = match m.lookup(ino, c) {
            Ok(a) if a.kind == FileKind::Dir => a.ino,
            Ok(_) => return Err(BucketError::NotADirectory),
            Err(BucketError::NotFound) => m.mkdir(ino, c, 0o755, 0, 0)?.ino,
            Err(e) => return Err(e),
        };
    }
    Ok(ino)
}

/// Create or replace the file at `path` with `data`, creating parent dirs.
pub fn write_file(m: &mut Mount, path: &str, data: &[u8]) -> Result<Attr> {
    let parts: Vec<&str> = path.rsplitn(2, '/').collect();
    let dir = if parts.len() == 2 { parts[1] } else { "" };
    let parent = mkdir_all(m, dir)?;
    let name = parts[0].as_bytes();
    let ino = match m.lookup(parent, name) {
        Ok(a) => a.ino,
        Err(BucketError::NotFound) => m.create(parent, name, 0o644, 0, 0)?.ino,
        Err(e) => return Err(e),
    };
    m.setattr(
        ino,
        super::SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )?;
    // Write in chunk-sized pieces as a kernel would, never one giant call.
    let step = m.chunk_size() as usize;
    for (i, piece) in data.chunks(step.max(1)).enumerate() {
        m.write(ino, (i * step) as u64, piece)?;
    }
    m.getattr(ino)
}

/// The whole content of the file at `path`.
pub fn read_file(m: &mut Mount, path: &str) -> Result<Vec<u8>> {
    let ino = resolve(m, path)?;
    let size = m.getattr(ino)?.size;
    let mut out = Vec::with_capacity(size as usize);
    let step = m.chunk_size();
    let mut off = 0;
    while off < size {
        let piece = m.read(ino, off, step.min(size - off) as u32)?;
        if piece.is_empty() {
            break;
        }
        off += piece.len() as u64;
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// Every path in the tree with its kind, depth first, sorted.
pub fn walk(m: &mut Mount) -> Result<Vec<(String, FileKind)>> {
    let mut out = Vec::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((ino, prefix)) = stack.pop() {
        for e in m.readdir(ino)? {
            let p = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
            if e.kind == FileKind::Dir {
                stack.push((e.ino, p.clone()));
            }
            out.push((p, e.kind));
        }
    }
    out.sort();
    Ok(out)
}
