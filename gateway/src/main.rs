//! The `cloudsync` binary: the command line is defined and run by the library.

/// jemalloc takes every allocation of the process (decision 017): Rust's through this, and the C
/// code's (SQLite, OpenSSL) through its unprefixed `malloc`, which the binary's own symbols give
/// ahead of libc's. Under load it gave twice the answers per second of glibc's allocator and a
/// third of its resident memory (`BENCHMARKS.md`, "Load and soak").
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cloudsync_gateway::cli::main()
}
