//! The `cloudsync` binary: the command line is defined and run by the library.

/// jemalloc takes every allocation of the process on Linux (decision 017): Rust's through this,
/// and the C code's (SQLite, the vendored OpenSSL, glibc's own) through its unprefixed `malloc`,
/// which the binary defines and exports ahead of libc's. Under load `files` answered 1.6 to 1.7
/// times as many requests as with glibc's allocator, in a quarter to a third of the resident memory
/// (`BENCHMARKS.md`, "Load and soak").
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cloudsync_gateway::cli::main()
}
