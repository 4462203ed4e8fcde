//! `chorus`: the one binary. `chorus node` runs a cluster node; `chorus dev` a local
//! 3-node cluster; `chorus token` mints a client token; `chorus cluster` administers;
//! `chorus client` subscribes, publishes and reads history over QUIC.

mod cli;
mod client_cli;
mod config;
mod dev;
mod log_limit;
mod node;

use clap::Parser;

/// mimalloc instead of glibc's malloc: under publish load a node spent about 10 % of its CPU
/// in glibc's allocator (many small, short-lived buffers moved between tokio worker threads),
/// which mimalloc's per-thread free lists make cheap (docs/benchmarks.md has the figures).
/// The `system-allocator` feature keeps glibc's, for heap profilers that hook malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
