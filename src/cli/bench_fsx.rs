//! The random-operation integrity workload (after `fsx`, the file system
//! exerciser): on one file of up to 4 MiB, reads, writes, truncates, reads
//! through a mapping and writes through a mapping followed by
//! `msync(MS_SYNC)`, each drawn at random; every byte read, either way, is
//! compared with an in-memory model of what the file must hold. It is both
//! a benchmark (`bench fuse --workloads fsx`: its time against the peers')
//! and a check (a wrong byte fails the run with its offset).

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

/// Largest size the file grows to.
const MAX_FILE: u64 = 4 << 20;
/// Largest read, write or mapped span.
const MAX_OP: u64 = 64 << 10;
const PAGE: u64 = 4096;

/// One run: `ops` operations drawn from `seed`. Returns the time taken.
pub fn fsx_ops(path: &Path, ops: usize, seed: u64) -> anyhow::Result<Duration> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut model = Model {
        f,
        good: Vec::new(),
        rng: seed | 1,
        op: 0,
    };
    let t = Instant::now();
    for i in 0..ops {
        model.op = i;
        model.step()?;
    }
    // The whole file, read back once more at the end.
    model.check_all()?;
    let took = t.elapsed();
    drop(model);
    fs::remove_file(path)?;
    Ok(took)
}

/// The file under test and the bytes it must hold.
struct Model {
    f: File,
    good: Vec<u8>,
    rng: u64,
    /// The operation being run, for error messages.
    op: usize,
}

impl Model {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn step(&mut self) -> anyhow::Result<()> {
        let size = self.good.len() as u64;
        let len = 1 + self.next() % MAX_OP;
        match self.next() % 5 {
            0 if size > 0 => {
                let off = self.next() % size;
                self.read(off, len.min(size - off))
            }
            1 => {
                let off = self.next() % (MAX_FILE - len);
                self.write(off, len)
            }
            2 if size > 0 => {
                let off = self.next() % size;
                self.map_read(off, len.min(size - off))
            }
            3 => {
                let off = self.next() % (MAX_FILE - len);
                self.map_write(off, len)
            }
            4 => {
                let to = self.next() % MAX_FILE;
                self.truncate(to)
            }
            _ => Ok(()), // a read of an empty file: nothing to do
        }
    }

    fn read(&mut self, off: u64, len: u64) -> anyhow::Result<()> {
        let mut buf = vec![0u8; len as usize];
        self.f
            .read_exact_at(&mut buf, off)
            .with_context(|| format!("op {}: read {len} at {off}", self.op))?;
        self.compare("read", off, &buf)
    }

    fn write(&mut self, off: u64, len: u64) -> anyhow::Result<()> {
        let data = self.fresh_bytes(len);
        self.f
            .write_all_at(&data, off)
            .with_context(|| format!("op {}: write {len} at {off}", self.op))?;
        self.put(off, &data);
        Ok(())
    }

    fn truncate(&mut self, to: u64) -> anyhow::Result<()> {
        self.f
            .set_len(to)
            .with_context(|| format!("op {}: truncate to {to}", self.op))?;
        self.good.resize(to as usize, 0);
        Ok(())
    }

    fn map_read(&mut self, off: u64, len: u64) -> anyhow::Result<()> {
        let mut buf = vec![0u8; len as usize];
        let map = Mapping::new(&self.f, off, len, false)
            .with_context(|| format!("op {}: map {len} at {off} to read", self.op))?;
        buf.copy_from_slice(map.bytes());
        drop(map);
        self.compare("mapped read", off, &buf)
    }

    /// Extend the file first if the span passes its end (a mapping cannot
    /// grow a file), write through the mapping, then `msync(MS_SYNC)`.
    fn map_write(&mut self, off: u64, len: u64) -> anyhow::Result<()> {
        if off + len > self.good.len() as u64 {
            self.truncate(off + len)?;
        }
        let data = self.fresh_bytes(len);
        let mut map = Mapping::new(&self.f, off, len, true)
            .with_context(|| format!("op {}: map {len} at {off} to write", self.op))?;
        map.bytes_mut().copy_from_slice(&data);
        map.sync()
            .with_context(|| format!("op {}: msync {len} at {off}", self.op))?;
        drop(map);
        self.put(off, &data);
        Ok(())
    }

    fn check_all(&mut self) -> anyhow::Result<()> {
        let meta = self.f.metadata()?;
        ensure!(
            meta.len() == self.good.len() as u64,
            "the file is {} bytes, the model {}",
            meta.len(),
            self.good.len()
        );
        let mut buf = vec![0u8; self.good.len()];
        self.f.read_exact_at(&mut buf, 0)?;
        self.compare("final read", 0, &buf)
    }

    /// Bytes no earlier operation wrote at any offset: the operation's
    /// number in every byte pair, so a stale byte shows where it came from.
    fn fresh_bytes(&mut self, len: u64) -> Vec<u8> {
        let tag = (self.op as u16).to_le_bytes();
        (0..len as usize).map(|i| tag[i % 2] ^ (i as u8)).collect()
    }

    fn put(&mut self, off: u64, data: &[u8]) {
        let end = off as usize + data.len();
        if self.good.len() < end {
            self.good.resize(end, 0);
        }
        self.good[off as usize..end].copy_from_slice(data);
    }

    fn compare(&self, what: &str, off: u64, got: &[u8]) -> anyhow::Result<()> {
        let want = &self.good[off as usize..off as usize + got.len()];
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            anyhow::bail!(
                "op {}: {what} of {} bytes at {off}: byte {} is {:#04x}, expected {:#04x}",
                self.op,
                got.len(),
                off + i as u64,
                got[i],
                want[i]
            );
        }
        Ok(())
    }
}

/// A shared mapping of a span of a file, page-aligned as mmap needs.
struct Mapping {
    base: *mut libc::c_void,
    map_len: usize,
    /// Where the span starts within the mapping.
    skip: usize,
    len: usize,
}

impl Mapping {
    fn new(f: &File, off: u64, len: u64, write: bool) -> std::io::Result<Self> {
        let start = off - off % PAGE;
        let skip = (off - start) as usize;
        let map_len = skip + len as usize;
        let prot = libc::PROT_READ | if write { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of our own open file, within its
        // length (the caller extends the file first), unmapped on drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            base,
            map_len,
            skip,
            len: len as usize,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the span lies within the live mapping.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.skip), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the span lies within the live, writable mapping.
        unsafe { std::slice::from_raw_parts_mut(self.base.cast::<u8>().add(self.skip), self.len) }
    }

    /// Write the mapping's dirty pages back and wait for them to be durable.
    fn sync(&self) -> std::io::Result<()> {
        // SAFETY: the whole live mapping.
        if unsafe { libc::msync(self.base, self.map_len, libc::MS_SYNC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping we made, once.
        unsafe { libc::munmap(self.base, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_passes_on_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        fsx_ops(&dir.path().join("f"), 1500, 7).unwrap();
        assert!(!dir.path().join("f").exists());
    }

    #[test]
    fn a_wrong_byte_fails_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let mut m = Model {
            f,
            good: Vec::new(),
            rng: 3,
            op: 0,
        };
        m.write(0, 100).unwrap();
        // Another writer changes byte 42 behind the model's back.
        m.f.write_all_at(&[m.good[42] ^ 0xff], 42).unwrap();
        let err = m.read(0, 100).unwrap_err().to_string();
        assert!(err.contains("byte 42 is"), "{err}");
        let err = m.map_read(40, 10).unwrap_err().to_string();
        assert!(
            err.contains("mapped read") && err.contains("byte 42"),
            "{err}"
        );
    }
}
