//! Indexing benchmark: how fast `cloudsync scan` indexes a generated tree (listing plus a BLAKE3 of
//! every file, recorded as events in the embedded SQLite store), next to `rclone lsjson -R
//! --hash-type md5` over the same tree in the same run, with each process's wall time and peak memory
//! (`/usr/bin/time`).
//!
//! Scenarios: the local provider at a tenth of `BENCH_FILES` and at `BENCH_FILES` (default 100,000)
//! files, to show whether memory grows with the tree, each followed by a rescan of the unchanged tree
//! (beside rclone's listing without hashes, since neither reads a file then); and S3 (the moto server that `scripts/services`
//! starts, `CLOUDSYNC_TEST_S3_ENDPOINT`) at `BENCH_S3_FILES` (default 5,000) files, uploaded with
//! `rclone copy` first. On S3 rclone takes MD5 from the listing's ETags while CloudSync reads every
//! object to hash it with BLAKE3, so the S3 rows compare different amounts of work; both are shown.
//!
//! ```text
//! cargo build --release -p cloudsync-gateway -p cloudsync-bench
//! scripts/services && source ~/.cache/cloudsync/servers/env
//! target/release/scan        # (in CARGO_TARGET_DIR)
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::bail;

mod common;

use common::{Measured, cloudsync_binary, connect, env_usize, measure, print_heading, rclone_s3};
use serde_json::json;

/// A deterministic tree: `files` files of 0–4 KiB in 100 × 10 folders.
fn generate(root: &Path, files: usize) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for i in 0..files {
        let folder = root.join(format!("d{:03}/e{}", i % 100, (i / 100) % 10));
        if i < 1000 {
            std::fs::create_dir_all(&folder)?;
        }
        let size = (i * 7919) % 4096;
        let mut content = vec![0_u8; size];
        blake3::Hasher::new()
            .update(&(i as u64).to_le_bytes())
            .finalize_xof()
            .fill(&mut content);
        std::fs::write(folder.join(format!("file-{i:06}.bin")), &content)?;
        bytes += size as u64;
    }
    Ok(bytes)
}

struct Row {
    scenario: String,
    files: usize,
    cloudsync: Measured,
    rclone: Measured,
}

/// The local scenario: a first scan beside `rclone lsjson -R --hash-type md5`; with `rescan`, also a
/// second scan of the unchanged tree (which reads no file) beside `rclone lsjson -R` without hashes.
async fn local(work: &Path, files: usize, rescan: bool) -> anyhow::Result<Vec<Row>> {
    let tree = work.join(format!("tree-{files}"));
    eprintln!("[local {files}] generating");
    let bytes = generate(&tree, files)?;
    eprintln!("[local {files}] {bytes} bytes generated; connecting");
    let data = work.join(format!("data-{files}"));
    let provider = connect(&data, &[("local", json!({ "root": tree }))]).await?.remove(0);
    let scan = || -> anyhow::Result<Measured> {
        measure(
            Command::new(cloudsync_binary()?)
                .args(["scan", &provider])
                .env("CLOUDSYNC_DATA_DIR", &data)
                .env("CLOUDSYNC_LOG", "warn"),
        )
    };
    let rclone = |hashes: bool| {
        let mut command = Command::new("rclone");
        command.arg("lsjson").arg("-R").arg("--files-only");
        if hashes {
            command.args(["--hash-type", "md5"]);
        }
        measure(command.arg(&tree).env("RCLONE_CONFIG", "/dev/null"))
    };
    eprintln!("[local {files}] cloudsync scan");
    let first = scan()?;
    eprintln!("[local {files}] rclone lsjson --hash-type md5");
    let mut rows = vec![Row {
        scenario: "local".into(),
        files,
        cloudsync: first,
        rclone: rclone(true)?,
    }];
    if rescan {
        eprintln!("[local {files}] cloudsync rescan (unchanged)");
        let again = scan()?;
        eprintln!("[local {files}] rclone lsjson (no hashes)");
        rows.push(Row {
            scenario: "local, rescan of the unchanged tree (rclone: listing without hashes)".into(),
            files,
            cloudsync: again,
            rclone: rclone(false)?,
        });
    }
    Ok(rows)
}

async fn s3(work: &Path, files: usize, endpoint: &str) -> anyhow::Result<Row> {
    let tree = work.join(format!("s3-tree-{files}"));
    generate(&tree, files)?;
    let prefix = format!("scan-{}", uuid::Uuid::new_v4().simple());
    eprintln!("[s3 {files}] uploading with rclone copy");
    let upload = rclone_s3(endpoint)
        .args(["copy", "--transfers", "16"])
        .arg(&tree)
        .arg(format!("benchs3:cloudsync-bench/{prefix}"))
        .status()?;
    if !upload.success() {
        bail!("rclone copy to S3 failed");
    }
    let data = work.join(format!("s3-data-{files}"));
    let credentials = json!({
        "endpoint": endpoint, "bucket": "cloudsync-bench", "access_key_id": "bench", "secret_access_key": "bench-secret",
        "root": format!("/{prefix}/"),
    });
    let provider = connect(&data, &[("s3", credentials)]).await?.remove(0);
    eprintln!("[s3 {files}] cloudsync scan");
    let cloudsync = measure(
        Command::new(cloudsync_binary()?)
            .args(["scan", &provider])
            .env("CLOUDSYNC_DATA_DIR", &data)
            .env("CLOUDSYNC_LOG", "warn"),
    )?;
    eprintln!("[s3 {files}] rclone lsjson");
    let rclone = measure(
        rclone_s3(endpoint)
            .args(["lsjson", "-R", "--hash-type", "md5", "--files-only"])
            .arg(format!("benchs3:cloudsync-bench/{prefix}")),
    )?;
    Ok(Row {
        scenario: "s3 (moto)".into(),
        files,
        cloudsync,
        rclone,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let files = env_usize("BENCH_FILES", 100_000)?;
    let s3_files = env_usize("BENCH_S3_FILES", 5_000)?;
    let work = std::env::temp_dir().join(format!("cloudsync-bench-scan-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work)?;
    let started = Instant::now();
    let mut rows = Vec::new();
    let result: anyhow::Result<()> = async {
        rows.extend(local(&work, files / 10, true).await?);
        rows.extend(local(&work, files, true).await?);
        match std::env::var("CLOUDSYNC_TEST_S3_ENDPOINT") {
            Ok(endpoint) if s3_files > 0 => match s3(&work, s3_files, &endpoint).await {
                Ok(row) => rows.push(row),
                Err(error) => eprintln!("S3 scenario failed: {error:#}"),
            },
            _ => eprintln!("CLOUDSYNC_TEST_S3_ENDPOINT is not set: skipping S3 (run scripts/services and source its env)"),
        }
        Ok(())
    }
    .await;
    std::fs::remove_dir_all(&work).ok();
    result?;
    print_heading("scan", started);
    println!("| provider | files | CloudSync s | CloudSync files/s | CloudSync peak MiB | rclone s | rclone files/s | rclone peak MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let rate = |m: &Measured| row.files as f64 / m.seconds.max(0.001);
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            row.scenario,
            row.files,
            row.cloudsync.seconds,
            rate(&row.cloudsync),
            row.cloudsync.peak_mib,
            row.rclone.seconds,
            rate(&row.rclone),
            row.rclone.peak_mib
        );
    }
    Ok(())
}
