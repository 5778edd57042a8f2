//! The `jax-csi` binary: one executable, one subcommand per role.

mod cli;

/// Huge blocks (FUSE receive buffers) as their own lazily backed mappings.
#[global_allocator]
static ALLOCATOR: jax_csi::alloc::LargeBlocksMapped = jax_csi::alloc::LargeBlocksMapped;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tune_allocator();
    no_core_dumps();
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

/// Set to `1` to let this process dump core (for debugging a crash).
const ALLOW_CORE_DUMPS: &str = "JAX_CSI_ALLOW_CORE_DUMPS";

/// Keys live in this process's memory (the KEK, unwrapped bucket secrets),
/// so it never dumps core: the core size limit is 0 and the process is not
/// dumpable (which also keeps other users' debuggers out), unless
/// `JAX_CSI_ALLOW_CORE_DUMPS=1`.
fn no_core_dumps() {
    if std::env::var(ALLOW_CORE_DUMPS).is_ok_and(|v| v == "1") {
        return;
    }
    let none = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit and prctl with plain values; no memory is shared.
    unsafe {
        nix::libc::setrlimit(nix::libc::RLIMIT_CORE, &none);
        nix::libc::prctl(nix::libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}
