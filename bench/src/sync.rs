//! Sync benchmark: `cloudsync sync` (a mirror pair, the embedded SQLite store) beside `rclone sync`
//! and `rsync -a` on the same generated tree, in the same run, each tool into its own destination:
//!
//! 1. the initial sync of `BENCH_SYNC_FILES` (default 10,000) small files (0–4 KiB) plus
//!    `BENCH_SYNC_LARGE` (default 3) files of `BENCH_SYNC_LARGE_MIB` (default 200) MiB, local → local;
//! 2. after 1% of each large file changed in scattered 4 KiB blocks, twice (the first change and a
//!    later one): CloudSync writes only the bytes that differ, in place (decision 008), and keeps
//!    the replaced versions; beside it `rsync -a --inplace --no-whole-file` (frugal, not
//!    crash-safe), `rsync -a` (whole files, locally), `rsync -a --no-whole-file` and `rclone sync`;
//!    each run bracketed by `sync(1)` and the bytes the disk wrote (`/proc/diskstats`), and the
//!    chunk store's growth; then the same change of 10 GiB projected from these runs;
//! 3. local → S3 (the moto server of `scripts/services`), initial and after the same change, with
//!    `BENCH_SYNC_S3_FILES` (default 1,000) small files and one large file of the same size. S3 takes
//!    no ranged writes, so CloudSync uploads a changed file whole there, as rclone does.
//!
//! Each process's wall time, peak memory and the blocks the kernel counted as read and written on
//! its behalf come from `/usr/bin/time` (CloudSync's own writes to its event store and chunk store
//! included); CloudSync also reports the bytes it wrote into the target folder. Every timed run
//! starts after `sync(1)`, so that no tool waits on what another left unwritten; CloudSync ends with
//! its copies durable, and rclone, which never flushes, is also timed followed by `sync(1)`.
//!
//! ```text
//! cargo build --release -p cloudsync-gateway -p cloudsync-bench
//! scripts/services && scripts/bench-tools && source ~/.cache/cloudsync/servers/env
//! target/release/sync        # (in CARGO_TARGET_DIR)
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::json;

mod common;

use common::{Measured, cloudsync_binary, connect, env_usize, measure, print_heading, rclone_s3};

fn fill(content: &mut [u8], seed: u64) {
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(content);
}

/// `small` files of 0–4 KiB in nested folders and `large` incompressible files of `large_mib` MiB.
fn generate(root: &Path, small: usize, large: usize, large_mib: usize) -> anyhow::Result<u64> {
    let mut bytes = 0;
    std::fs::create_dir_all(root)?;
    for i in 0..small {
        let folder = root.join(format!("d{:03}/e{}", i % 100, (i / 100) % 10));
        if i < 1000 {
            std::fs::create_dir_all(&folder)?;
        }
        let mut content = vec![0_u8; (i * 7919) % 4096];
        fill(&mut content, i as u64);
        std::fs::write(folder.join(format!("file-{i:06}.bin")), &content)?;
        bytes += content.len() as u64;
    }
    for i in 0..large {
        let mut content = vec![0_u8; large_mib * 1024 * 1024];
        fill(&mut content, 1_000_000 + i as u64);
        std::fs::write(root.join(format!("large-{i}.bin")), &content)?;
        bytes += content.len() as u64;
    }
    Ok(bytes)
}

/// Rewrites 1% of each large file's bytes in place, in scattered 4 KiB blocks at pseudo-random
/// offsets (deterministic in `round`), keeping its size; returns the bytes changed.
fn change_one_percent(root: &Path, large: usize, round: u64) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    const EDIT: usize = 4096;
    let mut changed = 0;
    for i in 0..large {
        let path = root.join(format!("large-{i}.bin"));
        let size = std::fs::metadata(&path)?.len();
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        let blocks = usize::try_from(size / 100).unwrap_or(0) / EDIT;
        let mut block = vec![0_u8; EDIT];
        for k in 0..blocks {
            let seed = 7_000_000 + round * 1_000_000 + (i * 10_000 + k) as u64;
            let at = u64::from_le_bytes(blake3::hash(&seed.to_le_bytes()).as_bytes()[..8].try_into()?) % (size - EDIT as u64);
            fill(&mut block, seed);
            file.write_all_at(&block, at)?;
            changed += EDIT as u64;
        }
    }
    Ok(changed)
}

/// Runs `run` between two `sync(1)`s and returns what it gave with the bytes the disk holding
/// `work` wrote meanwhile.
fn on_device<T>(work: &Path, run: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, u64)> {
    settle()?;
    let before = common::device_written(work)?;
    let out = run()?;
    settle()?;
    Ok((out, common::device_written(work)?.saturating_sub(before)))
}

/// `cloudsync sync`: measured, with the bytes it says it wrote into the target, and the pair it made.
fn cloudsync(data: &Path, args: &[&str]) -> anyhow::Result<(Measured, u64, Option<String>)> {
    let out = data.join("last-run.txt");
    let shell = format!(
        "{} {} > {}",
        cloudsync_binary()?.display(),
        args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" "),
        out.display()
    );
    settle()?;
    let measured = measure(
        Command::new("sh")
            .args(["-c", &shell])
            .env("CLOUDSYNC_DATA_DIR", data)
            .env("CLOUDSYNC_LOG", "warn"),
    )?;
    let printed = std::fs::read_to_string(&out)?;
    let written = printed
        .split(" bytes brought across, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no byte count in {printed:?}"))?;
    let pair = printed
        .lines()
        .find_map(|l| l.strip_prefix("Created sync pair "))
        .map(|p| p.trim_end_matches('.').to_owned());
    Ok((measured, written, pair))
}

/// The first run of a new mirror pair from the first provider to the second: measured, with the
/// bytes written into the target and the pair's id.
fn first_sync(data: &Path, ids: &[String]) -> anyhow::Result<(Measured, u64, String)> {
    let (source, target) = (format!("{}:", ids[0]), format!("{}:", ids[1]));
    let args = [
        "sync",
        "--source",
        &source,
        "--target",
        &target,
        "--mode",
        "mirror",
        "--max-delete",
        "100",
    ];
    let (measured, written, pair) = cloudsync(data, &args)?;
    Ok((measured, written, pair.context("the pair's id")?))
}

/// The median of several runs of one tool (by wall time), with every run's time in its label.
fn median(scenario: &str, tool: &str, mut runs: Vec<(Measured, Option<u64>)>) -> Row {
    runs.sort_by(|a, b| a.0.seconds.total_cmp(&b.0.seconds));
    let times: Vec<String> = runs.iter().map(|(m, _)| format!("{:.2}", m.seconds)).collect();
    let (measured, reported) = runs.swap_remove(runs.len() / 2);
    let tool = if times.len() > 1 {
        format!("{tool} (median of {} runs: {} s)", times.len(), times.join(", "))
    } else {
        tool.to_owned()
    };
    Row {
        scenario: scenario.to_owned(),
        tool,
        measured,
        reported,
        device: None,
    }
}

/// Whether two trees hold the same files (by size and BLAKE3).
fn same_tree(a: &Path, b: &Path) -> anyhow::Result<bool> {
    fn walk(root: &Path) -> anyhow::Result<std::collections::BTreeMap<String, blake3::Hash>> {
        let mut out = std::collections::BTreeMap::new();
        let mut folders = vec![root.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder)? {
                let path = entry?.path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
                    out.insert(relative, blake3::hash(&std::fs::read(&path)?));
                }
            }
        }
        Ok(out)
    }
    Ok(walk(a)? == walk(b)?)
}

/// The row of rclone's runs each followed by `sync(1)`.
const RCLONE_DURABLE: &str = "rclone sync, then sync(1) (durable, as CloudSync's copies)";

struct Row {
    scenario: String,
    tool: String,
    measured: Measured,
    /// Bytes the tool says it wrote into the target (CloudSync), where it says.
    reported: Option<u64>,
    /// Bytes the disk wrote during the run (`/proc/diskstats` between two `sync(1)`s), where measured.
    device: Option<u64>,
}

/// Writes every file's dirty pages out (`sync(1)`) before a timed run: CloudSync makes its copies
/// durable, and a flush would otherwise also wait for whatever the generator or the tool before it
/// left in the page cache.
fn settle() -> anyhow::Result<()> {
    if !Command::new("sync").status()?.success() {
        bail!("sync(1) failed");
    }
    Ok(())
}

/// rclone's run, and the same run followed by `sync(1)`: rclone never flushes, so its copies are
/// durable (as CloudSync's are when it ends) only once the kernel has written them out.
fn rclone_local(source: &Path, target: &Path) -> anyhow::Result<(Measured, Measured)> {
    settle()?;
    let copied = measure(
        Command::new("rclone")
            .args(["sync", "--config", "/dev/null"])
            .arg(source)
            .arg(target),
    )?;
    let flushed = measure(&mut Command::new("sync"))?;
    let durable = Measured {
        seconds: copied.seconds + flushed.seconds,
        ..copied
    };
    Ok((copied, durable))
}

fn rsync(source: &Path, target: &Path, delta: bool) -> anyhow::Result<Measured> {
    rsync_with(source, target, if delta { &["--no-whole-file"] } else { &[] })
}

fn rsync_with(source: &Path, target: &Path, options: &[&str]) -> anyhow::Result<Measured> {
    settle()?;
    let mut command = Command::new("rsync");
    command.arg("-a").args(options);
    measure(command.arg(format!("{}/", source.display())).arg(target))
}

/// rsync's delta transfer written over the target files where they lie: frugal, not crash-safe.
const RSYNC_INPLACE: [&str; 2] = ["--inplace", "--no-whole-file"];

async fn local(work: &Path, small: usize, large: usize, large_mib: usize) -> anyhow::Result<Vec<Row>> {
    let source = work.join("source");
    eprintln!("[local] generating {small} small and {large} × {large_mib} MiB files");
    let bytes = generate(&source, small, large, large_mib)?;
    let (ours, theirs, rsynced, delta) = (
        work.join("dst-cloudsync"),
        work.join("dst-rclone"),
        work.join("dst-rsync"),
        work.join("dst-rsync-delta"),
    );
    let scenario = format!("local → local, initial ({} files, {} MiB)", small + large, bytes / 1_048_576);
    // The initial copy is short and this machine's disk is noisy: each tool copies into a fresh
    // folder `runs` times, taking turns, and the median run is reported.
    let runs = env_usize("BENCH_SYNC_RUNS", 3)?.max(1);
    let (mut ours_runs, mut rclone_runs, mut durable_runs, mut rsync_runs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut first = None;
    let mut extra = Vec::new();
    for run in 0..runs {
        let (target, data) = if run == 0 {
            (ours.clone(), work.join("data"))
        } else {
            (work.join(format!("dst-cloudsync-{run}")), work.join(format!("data-{run}")))
        };
        let (rclone_target, rsync_target) = if run == 0 {
            (theirs.clone(), rsynced.clone())
        } else {
            (work.join(format!("dst-rclone-{run}")), work.join(format!("dst-rsync-{run}")))
        };
        // The tools take turns going first: whichever creates the first 10,000 files of a round
        // pays for ext4's inode allocator walking past inodes freed shortly before.
        for tool in (0..3).map(|k| (k + run) % 3) {
            match tool {
                0 => {
                    std::fs::create_dir_all(&target)?;
                    let ids = connect(&data, &[("local", json!({ "root": source })), ("local", json!({ "root": target }))]).await?;
                    eprintln!("[local] cloudsync initial, run {}", run + 1);
                    let (measured, written, pair) = first_sync(&data, &ids)?;
                    ours_runs.push((measured, Some(written)));
                    first.get_or_insert((data.clone(), pair));
                }
                1 => {
                    eprintln!("[local] rclone initial, run {}", run + 1);
                    let (copied, durable) = rclone_local(&source, &rclone_target)?;
                    rclone_runs.push((copied, None));
                    durable_runs.push((durable, None));
                }
                _ => {
                    eprintln!("[local] rsync initial, run {}", run + 1);
                    rsync_runs.push((rsync(&source, &rsync_target, false)?, None));
                }
            }
        }
        // Kept until every run is done: ext4 allocates inodes more slowly right after a large
        // delete, which would slow whichever tool came next.
        if run > 0 {
            extra.extend([target, rclone_target, rsync_target]);
        }
    }
    for folder in extra {
        std::fs::remove_dir_all(folder)?;
    }
    let (data, pair) = first.context("at least one run")?;
    let mut rows = Vec::new();
    for (tool, measured) in [
        ("CloudSync", ours_runs),
        ("rclone sync", rclone_runs),
        (RCLONE_DURABLE, durable_runs),
        ("rsync -a", rsync_runs),
    ] {
        rows.push(median(&scenario, tool, measured));
    }
    rsync(&source, &delta, false)?;
    for target in [&ours, &theirs, &rsynced] {
        if !same_tree(&source, target)? {
            bail!("{} differs from the source after the initial sync", target.display());
        }
    }

    // Two rounds of changes: 1% of each large file in scattered 4 KiB blocks. Each tool's run is
    // bracketed by sync(1) and the disk's own count of bytes written.
    let inplace = work.join("dst-rsync-inplace");
    rsync(&source, &inplace, false)?;
    let mut projected = Vec::new();
    for round in 1..=2_u64 {
        let changed = change_one_percent(&source, large, round)?;
        let which = if round == 1 { "first" } else { "later" };
        let scenario = format!(
            "local → local, {which} change: 1% of the large files in 4 KiB blocks ({:.1} MiB)",
            changed as f64 / 1_048_576.0
        );
        eprintln!("[local] cloudsync change {round}");
        let kept_before = common::folder_bytes(&data.join("chunks"))?;
        let ((measured, written, _), device) = on_device(work, || cloudsync(&data, &["sync", &pair]))?;
        let kept = common::folder_bytes(&data.join("chunks"))?.saturating_sub(kept_before);
        rows.push(Row {
            scenario: scenario.clone(),
            tool: format!(
                "CloudSync (versions kept: chunk store +{:.1} MiB, {:.2}x the changed bytes)",
                kept as f64 / 1_048_576.0,
                kept as f64 / changed as f64
            ),
            measured,
            reported: Some(written),
            device: Some(device),
        });
        projected.push(("CloudSync", round, measured.seconds, device));
        eprintln!("[local] rsync --inplace change {round}");
        let (measured, device) = on_device(work, || rsync_with(&source, &inplace, &RSYNC_INPLACE))?;
        projected.push(("rsync -a --inplace --no-whole-file", round, measured.seconds, device));
        rows.push(Row {
            scenario: scenario.clone(),
            tool: "rsync -a --inplace --no-whole-file".into(),
            measured,
            reported: None,
            device: Some(device),
        });
        eprintln!("[local] rsync change {round}");
        for (tool, target, options) in [
            ("rsync -a", &rsynced, &[][..]),
            ("rsync -a --no-whole-file", &delta, &["--no-whole-file"][..]),
        ] {
            let (measured, device) = on_device(work, || rsync_with(&source, target, options))?;
            rows.push(Row {
                scenario: scenario.clone(),
                tool: tool.into(),
                measured,
                reported: None,
                device: Some(device),
            });
        }
        eprintln!("[local] rclone change {round}");
        let ((copied, durable), device) = on_device(work, || rclone_local(&source, &theirs))?;
        for (tool, measured) in [("rclone sync", copied), (RCLONE_DURABLE, durable)] {
            rows.push(Row {
                scenario: scenario.clone(),
                tool: tool.into(),
                measured,
                reported: None,
                device: Some(device),
            });
        }
        for target in [&ours, &theirs, &rsynced, &delta, &inplace] {
            if !same_tree(&source, target)? {
                bail!("{} differs from the source after the change", target.display());
            }
        }
    }
    // What the same change of 10 GiB of large files would cost, from these runs: time and bytes
    // grow with the bytes read and the bytes changed, both 1% apart (the small files left out).
    let scale = 10.0 * 1024.0 / (large * large_mib) as f64;
    for (tool, round, seconds, device) in projected {
        rows.push(Row {
            scenario: format!(
                "projection: the {} change of 10 GiB of large files (x{scale:.1} the measured run)",
                if round == 1 { "first" } else { "later" }
            ),
            tool: tool.into(),
            measured: Measured {
                seconds: seconds * scale,
                peak_mib: 0.0,
                read_mib: 0.0,
                written_mib: 0.0,
            },
            reported: None,
            device: Some((device as f64 * scale) as u64),
        });
    }
    Ok(rows)
}

async fn s3(work: &Path, endpoint: &str, small: usize, large_mib: usize) -> anyhow::Result<Vec<Row>> {
    let source = work.join("s3-source");
    eprintln!("[s3] generating {small} small files and one of {large_mib} MiB");
    let bytes = generate(&source, small, 1, large_mib)?;
    let bucket = "cloudsync-bench";
    let prefix = format!("sync-{}", uuid::Uuid::new_v4().simple());
    let created = rclone_s3(endpoint).args(["mkdir", &format!("benchs3:{bucket}")]).status()?;
    if !created.success() {
        bail!("cannot create the bucket");
    }
    let data = work.join("s3-data");
    let credentials = json!({
        "endpoint": endpoint, "bucket": bucket, "access_key_id": "bench", "secret_access_key": "bench-secret",
        "root": format!("/{prefix}/cloudsync/"),
    });
    let ids = connect(&data, &[("local", json!({ "root": source })), ("s3", credentials)]).await?;
    let rclone = |label: &str| -> anyhow::Result<Row> {
        eprintln!("[s3] rclone {label}");
        settle()?;
        let measured = measure(
            rclone_s3(endpoint)
                .args(["sync", "--transfers", "8"])
                .arg(&source)
                .arg(format!("benchs3:{bucket}/{prefix}/rclone")),
        )?;
        Ok(Row {
            scenario: String::new(),
            tool: "rclone sync".into(),
            measured,
            reported: None,
            device: None,
        })
    };
    let scenario = format!("local → S3 (moto), initial ({} files, {} MiB)", small + 1, bytes / 1_048_576);
    eprintln!("[s3] cloudsync initial");
    let (measured, written, pair) = first_sync(&data, &ids)?;
    let mut rows = vec![Row {
        scenario: scenario.clone(),
        tool: "CloudSync".into(),
        measured,
        reported: Some(written),
        device: None,
    }];
    rows.push(Row {
        scenario,
        ..rclone("initial")?
    });
    let changed = change_one_percent(&source, 1, 2)?;
    let scenario = format!(
        "local → S3 (moto), 1% of the large file's bytes changed ({} MiB)",
        changed / 1_048_576
    );
    eprintln!("[s3] cloudsync incremental");
    let (measured, written, _) = cloudsync(&data, &["sync", &pair])?;
    rows.push(Row {
        scenario: scenario.clone(),
        tool: "CloudSync".into(),
        measured,
        reported: Some(written),
        device: None,
    });
    rows.push(Row {
        scenario,
        ..rclone("incremental")?
    });
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let small = env_usize("BENCH_SYNC_FILES", 10_000)?;
    let large = env_usize("BENCH_SYNC_LARGE", 3)?;
    let large_mib = env_usize("BENCH_SYNC_LARGE_MIB", 200)?;
    let s3_files = env_usize("BENCH_SYNC_S3_FILES", 1_000)?;
    let work = std::env::temp_dir().join(format!("cloudsync-bench-sync-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work)?;
    let started = Instant::now();
    let mut rows = Vec::new();
    let result: anyhow::Result<()> = async {
        rows.extend(local(&work, small, large, large_mib).await?);
        match std::env::var("CLOUDSYNC_TEST_S3_ENDPOINT") {
            Ok(endpoint) if s3_files > 0 => match s3(&work, &endpoint, s3_files, large_mib).await {
                Ok(more) => rows.extend(more),
                Err(error) => eprintln!("S3 scenario failed: {error:#}"),
            },
            _ => eprintln!("CLOUDSYNC_TEST_S3_ENDPOINT is not set: skipping S3 (run scripts/services and source its env)"),
        }
        Ok(())
    }
    .await;
    if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
        eprintln!("kept {} (BENCH_KEEP=1)", work.display());
    } else {
        std::fs::remove_dir_all(&work).ok();
    }
    result?;
    print_heading("sync", started);
    println!(
        "| scenario | tool | wall s | peak MiB | read MiB (kernel) | written MiB (kernel) | written into the target MiB (reported) | disk wrote MiB (/proc/diskstats) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mib = |b: Option<u64>| b.map_or_else(|| "—".to_owned(), |b| format!("{:.1}", b as f64 / 1_048_576.0));
    for row in rows {
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {} | {} |",
            row.scenario,
            row.tool,
            row.measured.seconds,
            row.measured.peak_mib,
            row.measured.read_mib,
            row.measured.written_mib,
            mib(row.reported),
            mib(row.device)
        );
    }
    Ok(())
}
