//! What the benchmarks share: running a command under `/usr/bin/time`, finding the `cloudsync`
//! binary beside the benchmark, and reading settings from the environment.

// Each benchmark binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use cloudsync_commands::{Commands, MasterKey, Vault};
use cloudsync_domain::Email;
use cloudsync_eventstore::Database;
use serde_json::Value;

/// One process's cost, from `/usr/bin/time`.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub seconds: f64,
    pub peak_mib: f64,
    /// What the kernel counted as read from and written to storage on the process's behalf (file
    /// system input and output blocks of 512 bytes), in MiB.
    pub read_mib: f64,
    pub written_mib: f64,
}

/// Runs a command under `/usr/bin/time`, returning its wall time, peak resident memory and I/O.
pub fn measure(command: &mut Command) -> anyhow::Result<Measured> {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    let envs: Vec<_> = command.get_envs().map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned))).collect();
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg("BENCH %e %M %I %O").arg(program).args(args);
    for (key, value) in envs {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    let output = timed.output().context("running /usr/bin/time")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("{:?} failed: {stderr}", command.get_program());
    }
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("BENCH "))
        .context("no /usr/bin/time line")?;
    let numbers: Vec<f64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    let [seconds, kib, blocks_in, blocks_out] = numbers[..] else {
        bail!("unexpected /usr/bin/time line {line:?}");
    };
    Ok(Measured {
        seconds,
        peak_mib: kib / 1024.0,
        read_mib: blocks_in * 512.0 / 1_048_576.0,
        written_mib: blocks_out * 512.0 / 1_048_576.0,
    })
}

/// The `cloudsync` binary built beside the benchmark.
pub fn cloudsync_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("cloudsync");
    if !path.is_file() {
        bail!("{} is missing: cargo build --release --bin cloudsync", path.display());
    }
    Ok(path)
}

pub fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    std::env::var(name)
        .ok()
        .map_or(Ok(default), |v| v.parse().with_context(|| format!("{name} must be a number")))
}

/// A data dir with one user who has connected these providers (kind, credentials); returns their ids.
pub async fn connect(data: &Path, providers: &[(&str, Value)]) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(data)?;
    let (master, text) = MasterKey::generate();
    std::fs::write(data.join("master-key"), text)?;
    let db = Database::connect(&format!("sqlite://{}", data.join("cloudsync.db").display()), true).await?;
    let commands = Commands::new(db.events.clone(), Vault::new(master, db.pool.clone()));
    let (user, _) = commands.register(Email::parse("bench@example.org")?, "not-a-login".into()).await?;
    let mut ids = Vec::new();
    for (kind, credentials) in providers {
        ids.push(commands.connect_provider(user, kind, credentials).await?.provider_id.to_string());
    }
    db.close().await;
    Ok(ids)
}

/// `rclone` with the remote `benchs3:` pointing at the S3 server at `endpoint` (credentials
/// `bench`/`bench-secret`), and no configuration file.
pub fn rclone_s3(endpoint: &str) -> Command {
    let mut command = Command::new("rclone");
    command
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_BENCHS3_TYPE", "s3")
        .env("RCLONE_CONFIG_BENCHS3_PROVIDER", "Other")
        .env("RCLONE_CONFIG_BENCHS3_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID", "bench")
        .env("RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY", "bench-secret")
        // A CA bundle meant for real AWS makes rclone refuse a plain-HTTP endpoint.
        .env_remove("AWS_CA_BUNDLE");
    command
}

/// The report's heading: the benchmark, the machine's cores, the time and how long it took.
pub fn print_heading(name: &str, started: std::time::Instant) {
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!("# CloudSync {name} benchmark\n");
    println!(
        "nproc {nproc}, {} UTC, total {:.0} s\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
        started.elapsed().as_secs_f64()
    );
}

/// The bytes of every file below `root` (0 when it does not exist).
pub fn folder_bytes(root: &Path) -> anyhow::Result<u64> {
    if !root.exists() {
        return Ok(0);
    }
    let mut total = 0;
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        if entry.file_type().is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// Bytes the block device that holds `path` has written since it started (`/proc/diskstats`,
/// sectors of 512 bytes): what a run cost the disk, journal and metadata included. Every process
/// of the machine counts, so a measurement brackets one run with `sync(1)` on a quiet machine.
///
/// # Errors
/// `path`'s file system is not on a block device `/proc/diskstats` lists (tmpfs, overlay).
pub fn device_written(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(path)?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stats = std::fs::read_to_string("/proc/diskstats")?;
    for line in stats.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 9 && fields[0].parse() == Ok(major) && fields[1].parse() == Ok(minor) {
            let sectors: u64 = fields[9].parse()?;
            return Ok(sectors * 512);
        }
    }
    bail!(
        "{} is on device {major}:{minor}, which /proc/diskstats does not list (not a block device)",
        path.display()
    )
}
