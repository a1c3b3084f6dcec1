//! The `cloudsync` binary: the command line is defined and run by the library.

fn main() -> std::process::ExitCode {
    cloudsync_gateway::cli::main()
}
