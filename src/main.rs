//! The `jax-csi` binary: one executable, one subcommand per role.

mod cli;

/// Huge blocks (FUSE receive buffers) as their own lazily backed mappings.
#[global_allocator]
static ALLOCATOR: jax_csi::alloc::LargeBlocksMapped = jax_csi::alloc::LargeBlocksMapped;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let args = cli::Cli::parse();
    cli::init_tracing(args.log_format);
    cli::run(args)
}

/// Keep 1 MiB chunk buffers on the heap instead of fresh mmaps: glibc would
/// otherwise map, fault in and unmap every chunk buffer, which cost more
/// than encrypting it.
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator tunables; called before any threads start.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 64 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
