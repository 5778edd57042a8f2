//! Command-line interface: argument parsing and dispatch to each subcommand.

mod bench;
mod bench_controller;
mod bench_fsx;
mod bench_fuse;
mod bench_pgbench;
mod bench_rebuild;
mod bench_sync;
mod bucket_cmd;
mod controller_cmd;
mod csi_cmd;
mod demo;
mod kek_cmd;
mod local_cmd;
mod local_layout;
mod local_supervisor;
mod node_cmd;
mod operator_cmd;
mod operator_db;
mod output;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "jax-csi",
    version,
    about = "CSI driver for end-to-end encrypted, peer-to-peer replicated buckets"
)]
pub struct Cli {
    /// Log lines as human-readable text or as JSON objects (one per line).
    /// The level comes from `RUST_LOG` (default `info`).
    #[arg(long, global = true, env = "JAX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A short tour of the bucket engine: create, write, read, history, restore, verify.
    Demo {
        /// State directory for the demo (created if missing; reused if present).
        #[arg(long, default_value = "jax-demo")]
        state_dir: PathBuf,
    },
    /// Key-encryption key files, and rotating the cluster KEK.
    Kek {
        #[command(subcommand)]
        command: kek_cmd::KekCommand,
    },
    /// Operate on buckets in a node's state directory.
    Bucket(bucket_cmd::BucketArgs),
    /// The CSI controller (Identity + Controller services) on a unix socket.
    Controller(controller_cmd::ControllerArgs),
    /// A small CSI client: one RPC per command, as kubelet and the sidecars make them.
    Csi(csi_cmd::CsiArgs),
    /// The CSI node plugin (Identity + Node services, FUSE mounts) on a
    /// unix socket; `node list` shows the registered nodes.
    Node(Box<node_cmd::NodeCli>),
    /// Hold a clone of every mount's FUSE connection for the node plugins
    /// on this host, so their mounts outlive a plugin's upgrade or crash
    /// (`jax-csi node --handover-socket`). Stopping it ends mounts whose
    /// plugin is not running.
    FdKeeper {
        /// The unix socket to serve (mode 0600).
        #[arg(long, env = "JAX_HANDOVER_SOCKET")]
        socket: PathBuf,
    },
    /// Volumes: list and show their records; browse, read, see the history
    /// of and restore their contents through a node.
    Volume {
        #[command(subcommand)]
        command: operator_cmd::VolumeCommand,
    },
    /// Snapshots recorded by the controller.
    Snapshot {
        #[command(subcommand)]
        command: operator_cmd::SnapshotCommand,
    },
    /// Mount records of the nodes.
    Mount {
        #[command(subcommand)]
        command: operator_cmd::MountCommand,
    },
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

/// Log to stderr, as text (coloured on a terminal) or JSON; `RUST_LOG`
/// overrides the default `info` level.
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,fuser::mnt=error,fuser::session=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { state_dir } => demo::run(&state_dir),
        Command::Kek { command } => kek_cmd::run(command),
        Command::Bucket(args) => bucket_cmd::run(args),
        Command::Bench { command } => bench::run(command),
        Command::Controller(args) => controller_cmd::run(args),
        Command::Node(args) => node_cmd::run(*args),
        Command::Csi(args) => csi_cmd::run(args),
        Command::FdKeeper { socket } => jax_csi::fuse::keeper::serve(&socket)
            .with_context(|| format!("serving the fd-keeper on {}", socket.display())),
        Command::Local { command } => local_cmd::run(command),
        Command::Volume { command } => operator_cmd::run_volume(command),
        Command::Snapshot { command } => operator_cmd::run_snapshot(command),
        Command::Mount { command } => operator_cmd::run_mount(command),
    }
}
