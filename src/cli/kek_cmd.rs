//! `jax-csi kek …`: KEK files, and the rotation of the cluster KEK.
//!
//! A rotation, without copying data: (1) give every controller and node
//! the new KEK with `--previous-kek-file` naming the old one (they wrap with
//! the new one, open with either; a node re-wraps its local keys at start);
//! (2) `jax-csi kek rotate` re-wraps every Postgres record in one
//! transaction; (3) drop `--previous-kek-file`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use jax_csi::crypto::Kek;

use super::operator_db::DbArgs;

#[derive(Subcommand, Debug)]
pub enum KekCommand {
    /// Write a new random 256-bit KEK (64 hex characters, mode 0600).
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-wrap every key record in Postgres (volumes, clone sources,
    /// snapshots) by the KEK in `--kek-file`; `--previous-kek-file` names
    /// the KEK they are wrapped by now. Run again, it changes nothing.
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        /// The new cluster KEK.
        #[arg(long, env = "JAX_KEK_FILE")]
        kek_file: PathBuf,
        /// The cluster KEK being replaced.
        #[arg(long, env = "JAX_PREVIOUS_KEK_FILE")]
        previous_kek_file: PathBuf,
    },
    /// A tenant's key rotation: re-seal the tenant layer of every record
    /// the previous tenant key opens (volumes, clone sources, snapshots) by
    /// the new one, in one transaction; other tenants' records are left as
    /// they are. Then put the new key in the tenant's Secret: the next
    /// NodeStage brings it, and the node refreshes its own check.
    RotateTenant {
        #[command(flatten)]
        db: DbArgs,
        /// The cluster KEK (to open and re-seal the outer layer).
        #[arg(long, env = "JAX_KEK_FILE")]
        kek_file: PathBuf,
        /// The tenant's new key (64 hex characters, as in its Secret).
        #[arg(long)]
        tenant_key_file: PathBuf,
        /// The tenant key being replaced.
        #[arg(long)]
        previous_tenant_key_file: PathBuf,
    },
}

/// The cluster KEK of `kek_file`, still opening what the one in
/// `previous` wrapped when given (a rotation in progress).
pub fn load(kek_file: &Path, previous: Option<&Path>) -> anyhow::Result<Kek> {
    let kek = Kek::from_file(kek_file).context("reading the KEK file")?;
    Ok(match previous {
        Some(p) => kek.still_opening(Kek::from_file(p).context("reading the previous KEK file")?),
        None => kek,
    })
}

pub fn run(command: KekCommand) -> anyhow::Result<()> {
    match command {
        KekCommand::Generate { out } => {
            if out.exists() {
                anyhow::bail!("{} exists; refusing to overwrite a key", out.display());
            }
            Kek::generate()?.write_file(&out)?;
            println!("wrote a new KEK to {}", out.display());
            Ok(())
        }
        KekCommand::Rotate {
            db,
            kek_file,
            previous_kek_file,
        } => rewrap(
            &db,
            Rotation::Cluster(load(&kek_file, Some(&previous_kek_file))?),
        ),
        KekCommand::RotateTenant {
            db,
            kek_file,
            tenant_key_file,
            previous_tenant_key_file,
        } => {
            let tenant = Kek::from_file(&tenant_key_file)
                .context("reading the tenant key file")?
                .still_opening(
                    Kek::from_file(&previous_tenant_key_file)
                        .context("reading the previous tenant key file")?,
                );
            rewrap(
                &db,
                Rotation::Tenant {
                    cluster: load(&kek_file, None)?,
                    tenant,
                },
            )
        }
    }
}

/// Which layer a rotation re-seals.
enum Rotation {
    /// The outer layer of every record, by the new cluster KEK.
    Cluster(Kek),
    /// The tenant layer of one tenant's records, by its new key.
    Tenant { cluster: Kek, tenant: Kek },
}

/// Run one re-wrapping transaction and print what it did.
fn rewrap(db: &DbArgs, rotation: Rotation) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let conn = db.connect().await?;
        let started = std::time::Instant::now();
        let report = match &rotation {
            Rotation::Cluster(kek) => conn.rewrap_keys(kek).await,
            Rotation::Tenant { cluster, tenant } => conn.rewrap_tenant_keys(cluster, tenant).await,
        }
        .context("re-wrapping the keys")?;
        let ms = started.elapsed().as_millis() as u64;
        if !report.committed {
            anyhow::bail!(
                "nothing was changed: {} record(s) open with neither key: {}",
                report.unreadable.len(),
                report.unreadable.join("; ")
            );
        }
        match db.output {
            super::output::Output::Json => println!(
                "{}",
                serde_json::json!({
                    "rewrapped": report.rewrapped,
                    "already_current": report.already_current,
                    "other_tenant": report.other_tenant,
                    "ms": ms,
                })
            ),
            super::output::Output::Table => println!(
                "re-wrapped {} key(s) by the new key in {ms} ms ({} were already, {} belong to no tenant or another one)",
                report.rewrapped, report.already_current, report.other_tenant
            ),
        }
        Ok(())
    })
}
