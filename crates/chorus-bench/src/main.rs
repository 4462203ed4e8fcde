//! `chorus-bench`: the load generator on its own, the same scenarios as `chorus bench`.

use clap::Parser;

/// Load benchmarks against a running Chorus cluster.
#[derive(Debug, Parser)]
#[command(name = "chorus-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: chorus_bench::Scenario,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(chorus_bench::run(cli.scenario)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
