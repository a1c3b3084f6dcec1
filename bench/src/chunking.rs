//! Chunking benchmark: CloudSync's FastCDC cutting plus BLAKE3 of every chunk and of the whole file,
//! on one core, beside `b3sum` (BLAKE3 of the whole file only) on the same file in the same run,
//! with one thread and with all of them.
//!
//! ```text
//! cargo build --release -p cloudsync-bench
//! target/release/chunking      # (in CARGO_TARGET_DIR); BENCH_CHUNK_MIB sets the file size (default 1024)
//! ```
//!
//! `scripts/bench-tools` installs `b3sum` (Debian) where it is missing.

use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use cloudsync_chunks::Chunker;

/// Incompressible bytes from BLAKE3's extendable output.
fn generate(path: &Path, mib: usize) -> anyhow::Result<()> {
    let mut output = blake3::Hasher::new().update(b"cloudsync chunking benchmark").finalize_xof();
    let mut file = BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0; 1024 * 1024];
    for _ in 0..mib {
        output.fill(&mut block);
        file.write_all(&block)?;
    }
    file.flush()?;
    Ok(())
}

/// Reads the file once so that every contender reads it from the page cache.
fn warm(path: &Path) -> anyhow::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut block = vec![0; 1024 * 1024];
    while file.read(&mut block)? > 0 {}
    Ok(())
}

fn b3sum(path: &Path, threads: Option<usize>) -> anyhow::Result<(f64, String)> {
    let mut command = Command::new("b3sum");
    command.arg("--no-names");
    if let Some(threads) = threads {
        command.args(["--num-threads", &threads.to_string()]);
    }
    let started = Instant::now();
    let output = command
        .arg(path)
        .output()
        .context("running b3sum (scripts/bench-tools installs it)")?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("b3sum failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok((seconds, String::from_utf8_lossy(&output.stdout).trim().to_owned()))
}

fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::var("BENCH_CHUNK_MIB")
        .ok()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(1024);
    let dir = std::env::temp_dir().join(format!("cloudsync-bench-chunking-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("data.bin");
    let result = (|| -> anyhow::Result<()> {
        eprintln!("generating {mib} MiB");
        generate(&path, mib)?;
        warm(&path)?;
        let gib = mib as f64 / 1024.0;

        let chunk = |checksum: bool| -> anyhow::Result<(f64, cloudsync_chunks::Manifest)> {
            let mut best = f64::MAX;
            let mut manifest = None;
            for _ in 0..3 {
                let chunker = if checksum { Chunker::new() } else { Chunker::without_checksum() };
                let started = Instant::now();
                let chunked = cloudsync_chunks::chunk_reader(chunker, std::fs::File::open(&path)?, |_, _| Ok(()))?;
                best = best.min(started.elapsed().as_secs_f64());
                manifest = Some(chunked);
            }
            Ok((best, manifest.context("no run")?))
        };
        let (best, manifest) = chunk(true)?;
        let (ids_only, _) = chunk(false)?;
        let (one_thread, checksum) = (0..3)
            .map(|_| b3sum(&path, Some(1)))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .fold((f64::MAX, String::new()), |(best, _), (seconds, sum)| (best.min(seconds), sum));
        let all_threads = (0..3)
            .map(|_| b3sum(&path, None).map(|r| r.0))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .fold(f64::MAX, f64::min);
        if checksum != manifest.checksum {
            bail!("b3sum says {checksum}, CloudSync {}", manifest.checksum);
        }
        let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        println!("# CloudSync chunking benchmark\n");
        println!(
            "nproc {nproc}, {} UTC, {mib} MiB of incompressible data, best of 3 runs, page-cached\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
        );
        println!("| what | threads | seconds | GiB/s |");
        println!("|---|---:|---:|---:|");
        println!(
            "| CloudSync: FastCDC cut + BLAKE3 of each chunk + BLAKE3 of the file ({} chunks, average {} KiB) | 1 | {best:.2} | {:.2} |",
            manifest.chunks.len(),
            manifest.size / manifest.chunks.len().max(1) as u64 / 1024,
            gib / best
        );
        println!(
            "| CloudSync: FastCDC cut + BLAKE3 of each chunk (the file's checksum known) | 1 | {ids_only:.2} | {:.2} |",
            gib / ids_only
        );
        println!(
            "| b3sum --num-threads 1 (BLAKE3 of the file) | 1 | {one_thread:.2} | {:.2} |",
            gib / one_thread
        );
        println!(
            "| b3sum (BLAKE3 of the file) | {nproc} | {all_threads:.2} | {:.2} |",
            gib / all_threads
        );
        Ok(())
    })();
    std::fs::remove_dir_all(&dir).ok();
    result
}
