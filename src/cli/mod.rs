//! Command-line interface: argument parsing and dispatch to each subcommand.

mod bench;
mod bench_controller;
mod bench_fuse;
mod bench_sync;
mod bucket_cmd;
mod controller_cmd;
mod csi_cmd;
mod demo;
mod local_cmd;
mod node_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "jax-csi",
    version,
    about = "CSI driver for end-to-end encrypted, peer-to-peer replicated buckets"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A short tour of the bucket engine: create, write, read, history, restore, verify.
    Demo {
        /// State directory for the demo (created if missing; reused if present).
        #[arg(long, default_value = "jax-demo")]
        state_dir: PathBuf,
    },
    /// Key-encryption key files.
    Kek {
        #[command(subcommand)]
        command: KekCommand,
    },
    /// Operate on buckets in a node's state directory.
    Bucket(bucket_cmd::BucketArgs),
    /// The CSI controller (Identity + Controller services) on a unix socket.
    Controller(controller_cmd::ControllerArgs),
    /// A small CSI client: one RPC per command, as kubelet and the sidecars make them.
    Csi(csi_cmd::CsiArgs),
    /// The CSI node plugin (Identity + Node services, FUSE mounts) on a unix socket.
    Node(node_cmd::NodeArgs),
    /// A local cluster on one machine (embedded Postgres, controller, nodes).
    Local {
        #[command(subcommand)]
        command: local_cmd::LocalCommand,
    },
    /// Benchmarks that print a table of ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum KekCommand {
    /// Write a new random 256-bit KEK (64 hex characters, mode 0600).
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

/// Log to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser::mnt=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { state_dir } => demo::run(&state_dir),
        Command::Kek {
            command: KekCommand::Generate { out },
        } => {
            if out.exists() {
                anyhow::bail!("{} exists; refusing to overwrite a key", out.display());
            }
            jax_csi::crypto::Kek::generate()?.write_file(&out)?;
            println!("wrote a new KEK to {}", out.display());
            Ok(())
        }
        Command::Bucket(args) => bucket_cmd::run(args),
        Command::Bench { command } => bench::run(command),
        Command::Controller(args) => controller_cmd::run(args),
        Command::Node(args) => node_cmd::run(args),
        Command::Csi(args) => csi_cmd::run(args),
        Command::Local { command } => local_cmd::run(command),
    }
}
