//! The `tagger` binary: daemon, local cluster and operator CLI in one.
use clap::Parser;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = tagger::cli::Cli::parse();
    if !matches!(cli.command, tagger::cli::Command::Daemon(_)) {
        // A command whose output is piped into `head` ends quietly when the
        // reader goes, as Unix tools do, instead of panicking on EPIPE. (The
        // daemon keeps ignoring SIGPIPE: a peer gone is an error to handle.)
        // SAFETY: restoring a signal's default disposition at start, before
        // any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
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
