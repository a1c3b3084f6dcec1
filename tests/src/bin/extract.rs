//! The content pipeline's extractor for the end-to-end tests, which run the server inside the test
//! binary: the same `extract` command as `cloudsync extract`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("extract") {
        eprintln!("usage: cloudsync-test-extract extract --format F --max-text N --memory M");
        return std::process::ExitCode::from(2);
    }
    std::process::ExitCode::from(u8::try_from(cloudsync_content::child_main(&args[2..])).unwrap_or(2))
}
