//! The `relaylog` binary: parse the command line, run it, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: under the 64-connection HTTP load, malloc, free
/// and their consolidation took a tenth of the relay threads' CPU (`perf`), most of it
/// many small, short-lived buffers freed on another thread than the one that made them.
///
/// No transparent huge pages: with them each 2 MiB page of mimalloc's arena that is
/// touched becomes resident whole, which put `serve`'s anonymous memory at 30 MiB idle
/// (8 without) and its peak under load at 98-109 MiB. mimalloc is built with `no_thp`
/// (it no longer asks for them with `madvise`), and `main` turns them off for the
/// process (where the kernel gives them unasked, THP `always`): see
/// `relaylog::cli::no_huge_pages`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    relaylog::cli::no_huge_pages();
    let cli = relaylog::cli::Cli::parse();
    match relaylog::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
