//! The `tagger` binary: daemon, local cluster and operator CLI in one.
use clap::Parser;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = tagger::cli::Cli::parse();
    tagger::cli::init_tracing(&cli);
    // On one core (a pinned daemon), a single-threaded runtime does the
    // same work without cross-thread wake-ups.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(tagger::cli::run(cli))
}
