//! The `relaylog` binary: parse the command line, run it, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: under the 64-connection HTTP load, malloc, free
/// and their consolidation took a tenth of the relay threads' CPU (`perf`), most of it
/// many small, short-lived buffers freed on another thread than the one that made them.
///
/// Built with `no_thp`: otherwise mimalloc asks for transparent huge pages on its arena,
/// and each 2 MiB page it touches becomes resident whole. That held 28 MiB at idle
/// (8 MiB without) and put the peak under load at 98-109 MiB (65-69 without).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = relaylog::cli::Cli::parse();
    match relaylog::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
