//! `jax-csi bucket …`: the operator's view of buckets in a state directory.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use jax_csi::bucket::{path, BucketId, BucketOptions, StateDir};
use jax_csi::store::Hash;

#[derive(Args, Debug)]
pub struct BucketArgs {
    /// The node's state directory.
    #[arg(long, env = "JAX_STATE_DIR")]
    state_dir: PathBuf,
    /// File holding the key-encryption key (32 bytes or 64 hex characters).
    #[arg(long, env = "JAX_KEK_FILE")]
    kek_file: PathBuf,
    /// During a KEK rotation: the KEK being replaced (keys it wrapped still
    /// open; everything is wrapped anew by `--kek-file`).
    #[arg(long, env = "JAX_PREVIOUS_KEK_FILE")]
    previous_kek_file: Option<PathBuf>,
    #[command(subcommand)]
    command: BucketCommand,
}

#[derive(Subcommand, Debug)]
enum BucketCommand {
    /// Create a bucket; prints its id.
    Create {
        /// Byte quota (default: unlimited).
        #[arg(long)]
        quota: Option<u64>,
        /// Chunk size in bytes.
        #[arg(long, default_value_t = jax_csi::bucket::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
    },
    /// List the buckets in the state directory.
    List,
    /// List a directory of a bucket (at the head, or at `--version`).
    Ls {
        id: BucketId,
        #[arg(default_value = "/")]
        path: String,
        #[arg(long)]
        version: Option<Hash>,
    },
    /// Print a file to stdout.
    Cat {
        id: BucketId,
        path: String,
        #[arg(long)]
        version: Option<Hash>,
    },
    /// Write stdin to a file in the bucket and save a new version.
    Put {
        id: BucketId,
        path: String,
        /// Make the write durable with one journal append first (what an
        /// fsync in a mounted volume does), then save the version.
        #[arg(long)]
        journal: bool,
        /// Tests: after the journal append, cut the version, then write
        /// stdin again to this path and fsync it while the version is not
        /// yet durable (what a live mount's fsync does during a commit),
        /// and then name the version.
        #[arg(long, hide = true, requires = "journal")]
        fsync_during_commit: Option<String>,
    },
    /// Show the version history, newest first.
    History { id: BucketId },
    /// Make an old version the content of a new head.
    Restore { id: BucketId, version: Hash },
    /// Check every blob of every version.
    Verify { id: BucketId },
}

pub fn run(args: BucketArgs) -> anyhow::Result<()> {
    let state = StateDir::open(&args.state_dir)
        .with_context(|| format!("opening state dir {}", args.state_dir.display()))?;
    let kek = super::kek_cmd::load(&args.kek_file, args.previous_kek_file.as_deref())?;
    let open = |id: &BucketId| {
        state
            .open_bucket(id, &kek)
            .with_context(|| format!("opening bucket {id}"))
    };
    let out = &mut std::io::stdout().lock();
    match args.command {
        BucketCommand::Create { quota, chunk_size } => {
            let id = BucketId::generate()?;
            let opts = BucketOptions {
                quota,
                chunk_size,
                ..Default::default()
            };
            state.create_bucket(id, &kek, &opts)?;
            writeln!(out, "{id}")?;
        }
        BucketCommand::List => {
            for id in state.list_buckets()? {
                writeln!(out, "{id}")?;
            }
        }
        BucketCommand::Ls {
            id,
            path: p,
            version,
        } => {
            let bucket = open(&id)?;
            let mut m = match version {
                Some(v) => bucket.open_version(&v)?,
                None => bucket.mount()?,
            };
            let dir = path::resolve(&mut m, &p).with_context(|| format!("{p} in bucket {id}"))?;
            for e in m.readdir(dir)? {
                let a = m.getattr(e.ino)?;
                let kind = a.kind.ls_char();
                writeln!(
                    out,
                    "{kind}{:o} {:>12} {}",
                    a.mode,
                    a.size,
                    String::from_utf8_lossy(&e.name)
                )?;
            }
        }
        BucketCommand::Cat {
            id,
            path: p,
            version,
        } => {
            let bucket = open(&id)?;
            let mut m = match version {
                Some(v) => bucket.open_version(&v)?,
                None => bucket.mount()?,
            };
            let ino = path::resolve(&mut m, &p).with_context(|| format!("{p} in bucket {id}"))?;
            let size = m.getattr(ino)?.size;
            let mut off = 0;
            while off < size {
                let piece = m.read(ino, off, m.chunk_size() as u32)?;
                if piece.is_empty() {
                    break;
                }
                off += piece.len() as u64;
                out.write_all(&piece)?;
            }
        }
        BucketCommand::Put {
            id,
            path: p,
            journal,
            fsync_during_commit,
        } => {
            let bucket = open(&id)?;
            // A journal a crash left is replayed first, whatever the flag.
            let mut m = bucket.mount_journaled()?;
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data)?;
            path::write_file(&mut m, &p, &data)?;
            if journal {
                m.sync_to_journal()?;
            }
            let saved = match fsync_during_commit {
                Some(later) => {
                    let prepared = m.prepare_save()?.context("nothing to save")?;
                    path::write_file(&mut m, &later, &data)?;
                    m.sync_to_journal()?;
                    m.blob_store().sync()?;
                    let saved = prepared.version();
                    prepared.name_head().map_err(|e| e.error)?;
                    saved
                }
                None => m.save()?,
            };
            writeln!(out, "{} (height {})", saved.hash, saved.height)?;
        }
        BucketCommand::History { id } => {
            writeln!(
                out,
                "{:>6}  {:<64}  {:>12}  {:>7}  author",
                "height", "version", "bytes", "entries"
            )?;
            for v in open(&id)?.history()? {
                writeln!(
                    out,
                    "{:>6}  {}  {:>12}  {:>7}  {}{}",
                    v.height,
                    v.hash,
                    v.used_bytes,
                    v.entries,
                    &v.author.to_hex()[..16],
                    if v.merged.is_some() { "  (merge)" } else { "" }
                )?;
            }
        }
        BucketCommand::Restore { id, version } => {
            let saved = open(&id)?.restore(&version)?;
            writeln!(out, "{} (height {})", saved.hash, saved.height)?;
        }
        BucketCommand::Verify { id } => {
            let r = open(&id)?.verify()?;
            writeln!(
                out,
                "ok: {} versions, {} directories, {} chunks, {} chunk patches verified",
                r.versions, r.directories, r.chunks, r.patches
            )?;
        }
    }
    Ok(())
}
