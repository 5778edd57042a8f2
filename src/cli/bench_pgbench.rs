//! The database workload of `bench fuse`: a PostgreSQL cluster whose data
//! directory is on the file system under test (fsync on, as in
//! production), loaded with `pgbench -i` and driven with TPC-B-like
//! transactions from several clients. Every commit is an fsync of the WAL,
//! so this measures what a database pod gets from the volume.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use jax_csi::db::embedded::{EmbeddedPostgres, EmbeddedPostgresOptions, DATABASE};

/// How hard to drive it.
#[derive(Clone, Copy, Debug)]
pub struct Pgbench {
    pub clients: usize,
    pub seconds: u64,
    /// `pgbench -s`: 1 is 100,000 accounts (about 16 MiB of table).
    pub scale: usize,
}

/// Transactions per second of a `pgbench` run on a cluster in `root`.
pub fn run(root: &Path, p: Pgbench) -> anyhow::Result<f64> {
    // Postgres runs as its own user: it must reach the data directory.
    open_up_to(root)?;
    let pg = EmbeddedPostgres::start(&root.join("pg"), EmbeddedPostgresOptions { fsync: true })
        .context("starting PostgreSQL on the file system under test")?;
    if !pg.data_dir().starts_with(root) {
        bail!(
            "PostgreSQL put its data in {}, not under {}",
            pg.data_dir().display(),
            root.display()
        );
    }
    let pgbench = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(pg.bin_dir().join("pgbench"))
            .arg("-h")
            .arg(pg.socket_dir())
            .args(["-p", &pg.port().to_string(), "-U", pg.user()])
            .args(args)
            .arg(DATABASE)
            .output()
            .context("running pgbench")?;
        if !out.status.success() {
            bail!("pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    pgbench(&["-i", "-q", "-s", &p.scale.to_string()])?;
    let clients = p.clients.to_string();
    let threads = p.clients.min(2).to_string();
    let out = pgbench(&[
        "-c",
        &clients,
        "-j",
        &threads,
        "-T",
        &p.seconds.to_string(),
        "-n",
    ])?;
    let tps = parse_tps(&out).with_context(|| format!("no tps in pgbench's output: {out}"))?;
    pg.stop_and_remove_data()
        .context("stopping PostgreSQL on the file system under test")?;
    Ok(tps)
}

/// `tps = 1234.5 (without initial connection time)` → 1234.5.
fn parse_tps(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Let every user enter `dir` and its ancestors (a work dir is 0700).
fn open_up_to(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let meta = std::fs::metadata(d).with_context(|| format!("reading {}", d.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o755))
                .with_context(|| format!("opening {} to the database's user", d.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tps_is_read_from_pgbench_output() {
        let out = "pgbench (15.8)\nnumber of transactions actually processed: 100\nlatency average = 3.1 ms\ntps = 1234.567890 (without initial connection time)\n";
        assert_eq!(super::parse_tps(out), Some(1234.56789));
        assert_eq!(super::parse_tps("nothing"), None);
    }
}
