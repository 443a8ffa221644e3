//! The `tagger` binary: daemon, local cluster and operator CLI in one.
use clap::Parser;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = tagger::cli::Cli::parse();
    tagger::cli::init_tracing(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tagger::cli::run(cli))
}
