//! The whole content pipeline, measured as a person's server runs it: a mixed tree of
//! `BENCH_PIPELINE_FILES` (default 10,000) files (notes, Markdown and HTML cut from the machine's man
//! pages, PDFs with a text layer, scanned PDFs, Word documents, photographs varied from
//! scikit-image's samples, and files no reader takes) is indexed by `cloudsync scan`, and then
//! `cloudsync serve` reads every file version once: text extraction in the bounded child, OCR of the
//! pictures and scans (tesseract), labels and perceptual hashes of the pictures, and the text model
//! over names and passages. Reported: the files per second from the server's start until the
//! pipeline's checkpoint has passed the tree's last file, by kind of file, and the server's peak
//! memory. (The pipeline reads the files the syncs below record too, after the tree's: their names.)
//!
//! Then how much it slows a sync that runs at the same time: `cloudsync sync` of a mirror pair
//! (`BENCH_PIPELINE_SYNC_FILES`, default 2,000 small files and one file of 64 MiB, local → local)
//! first with nothing else running, then into a second pair of the same shape while the pipeline is
//! busy (once it has read `BENCH_PIPELINE_SYNC_AFTER` files, default 50), in the same data dir (the
//! sync's process and the server share the event store).
//!
//! ```text
//! cargo build --release -p cloudsync-gateway -p cloudsync-bench
//! scripts/bench-tools && scripts/models ~/.cache/cloudsync/models
//! target/release/pipeline        # (in CARGO_TARGET_DIR)
//! ```

mod common;
#[allow(dead_code)]
#[path = "search/corpus.rs"]
mod corpus;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cloudsync_content::samples;
use image::DynamicImage;
use serde_json::json;
use sqlx::Row as _;

use common::{Measured, cloudsync_binary, connect, env_usize, measure, print_heading};

/// What each thousand files of the tree are: (kind, how many, extension).
const MIX: [(&str, usize, &str); 9] = [
    ("note", 400, "txt"),
    ("markdown", 100, "md"),
    ("web page", 100, "html"),
    ("PDF", 50, "pdf"),
    ("scanned PDF", 2, "pdf"),
    ("Word", 20, "docx"),
    ("photograph", 50, "jpg"),
    ("archive", 78, "zip"),
    ("other", 200, "bin"),
];

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
}

/// A deterministic stream of numbers (splitmix64).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `count` words of a man page, from a random place.
fn excerpt(pages: &[corpus::Page], random: &mut Random, count: usize) -> (String, String) {
    let page = &pages[random.below(pages.len())];
    let words: Vec<&str> = page.text.split_whitespace().collect();
    let start = random.below(words.len().saturating_sub(count));
    let text = words[start..(start + count).min(words.len())].join(" ");
    (page.name.clone(), text)
}

/// A photograph: a random crop of one of the samples, scaled to at most 1,024 pixels, as a JPEG.
fn photograph(photos: &[DynamicImage], random: &mut Random) -> anyhow::Result<Vec<u8>> {
    let photo = &photos[random.below(photos.len())];
    let (w, h) = (photo.width(), photo.height());
    let (cw, ch) = (w * (60 + random.below(40) as u32) / 100, h * (60 + random.below(40) as u32) / 100);
    let (x, y) = (
        random.below((w - cw) as usize + 1) as u32,
        random.below((h - ch) as usize + 1) as u32,
    );
    let side = 512 + random.below(512) as u32;
    let picture = photo
        .crop_imm(x, y, cw, ch)
        .resize(side, side, image::imageops::FilterType::Triangle);
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80 + random.below(15) as u8);
    picture.to_rgb8().write_with_encoder(encoder)?;
    Ok(out)
}

/// A one-page scan of a page of text (the page rendered by pdftoppm, as a scanner would see it).
fn scan(text: &str) -> anyhow::Result<Vec<u8>> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let lines: Vec<String> = words.chunks(9).take(30).map(|c| c.join(" ")).collect();
    let page = samples::pdf_lines(&lines.iter().map(String::as_str).collect::<Vec<_>>(), 14, 0);
    samples::scan_of(&page, 150, None).context("pdftoppm is missing (scripts/storage-servers installs poppler-utils)")
}

/// Letters a PDF's Helvetica text can hold as they are.
fn pdf_safe(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_alphanumeric() || " .,-".contains(*c)).collect()
}

/// Writes the tree; returns how many files of each kind it holds.
fn generate(root: &Path, files: usize, pages: &[corpus::Page], photos: &[DynamicImage]) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let mut random = Random(7);
    let mut counts = BTreeMap::new();
    let per_thousand: usize = MIX.iter().map(|(_, n, _)| n).sum();
    for i in 0..files {
        // The kinds interleave, so that every stretch of the tree is mixed.
        let mut slot = (i * 7919) % per_thousand;
        let (kind, ext) = MIX
            .iter()
            .find_map(|(kind, n, ext)| {
                if slot < *n {
                    Some((*kind, *ext))
                } else {
                    slot -= n;
                    None
                }
            })
            .unwrap_or(("other", "bin"));
        let words = 40 + random.below(360);
        let (topic, text) = excerpt(pages, &mut random, words);
        let bytes = match kind {
            "note" => text.into_bytes(),
            "markdown" => format!("# Notes on {topic}\n\n{text}\n").into_bytes(),
            "web page" => {
                format!("<html><head><title>{topic}</title></head><body><h1>{topic}</h1><p>{text}</p></body></html>").into_bytes()
            }
            "PDF" => {
                let words: Vec<String> = pdf_safe(&text).split_whitespace().map(str::to_owned).collect();
                let lines: Vec<String> = words.chunks(10).take(45).map(|c| c.join(" ")).collect();
                samples::pdf_lines(&lines.iter().map(String::as_str).collect::<Vec<_>>(), 11, 0)
            }
            "scanned PDF" => scan(&pdf_safe(&text))?,
            "Word" => samples::docx_saying(&text),
            "photograph" => photograph(photos, &mut random)?,
            "archive" => samples::zip_of(&[("readme.txt", text.as_bytes())]),
            _ => {
                let mut noise = vec![0u8; 1024 + random.below(64 * 1024)];
                blake3::Hasher::new()
                    .update(&(i as u64).to_le_bytes())
                    .finalize_xof()
                    .fill(&mut noise);
                noise
            }
        };
        let folder = root.join(format!("{:02}/{:02}", i % 50, (i / 50) % 20));
        std::fs::create_dir_all(&folder)?;
        std::fs::write(folder.join(format!("{topic}-{i:05}.{ext}")), bytes)?;
        *counts.entry(kind).or_insert(0) += 1;
    }
    Ok(counts)
}

/// `small` files of 0–4 KiB and one incompressible file of `large_mib` MiB, from `seed`.
fn sync_tree(root: &Path, small: usize, large_mib: usize, seed: u64) -> anyhow::Result<()> {
    for i in 0..small {
        let folder = root.join(format!("d{:02}", i % 40));
        std::fs::create_dir_all(&folder)?;
        let mut content = vec![0u8; (i * 7919) % 4096];
        blake3::Hasher::new()
            .update(&(seed + i as u64).to_le_bytes())
            .finalize_xof()
            .fill(&mut content);
        std::fs::write(folder.join(format!("file-{i:05}.bin")), content)?;
    }
    let mut large = vec![0u8; large_mib * 1024 * 1024];
    blake3::Hasher::new()
        .update(&seed.wrapping_mul(31).to_le_bytes())
        .finalize_xof()
        .fill(&mut large);
    std::fs::write(root.join("large.bin"), large)?;
    Ok(())
}

fn cloudsync(data: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(cloudsync_binary()?);
    command
        .env("CLOUDSYNC_DATA_DIR", data)
        .env("CLOUDSYNC_LOG", "warn")
        .env("CLOUDSYNC_MODELS_DIR", models_dir());
    Ok(command)
}

fn models_dir() -> PathBuf {
    std::env::var_os("CLOUDSYNC_MODELS_DIR").map_or_else(|| home().join(".cache/cloudsync/models"), PathBuf::from)
}

/// `cloudsync sync` of a new mirror pair from `from` to `to` (provider ids), measured.
fn sync(data: &Path, from: &str, to: &str) -> anyhow::Result<Measured> {
    let settled = Command::new("sync").status()?;
    anyhow::ensure!(settled.success(), "sync(1) failed");
    measure(cloudsync(data)?.args([
        "sync",
        "--source",
        &format!("{from}:"),
        "--target",
        &format!("{to}:"),
        "--mode",
        "mirror",
        "--max-delete",
        "100",
    ]))
}

/// The server, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Peak resident memory so far, in MiB.
    fn peak_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

/// How far the content pipeline has got (its checkpoint), and its results so far.
async fn progress(db: &sqlx::SqlitePool) -> anyhow::Result<(i64, i64, i64)> {
    let checkpoint: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM worker_checkpoints WHERE name LIKE 'content-%'")
        .fetch_one(db)
        .await?;
    let row = sqlx::query(
        "SELECT sum(event_type = 'FileContentExtracted'), sum(event_type = 'FileAnalyzed') FROM events \
         WHERE event_type IN ('FileContentExtracted', 'FileAnalyzed')",
    )
    .fetch_one(db)
    .await?;
    Ok((
        checkpoint.unwrap_or(0),
        row.try_get::<Option<i64>, _>(0)?.unwrap_or(0),
        row.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let files = env_usize("BENCH_PIPELINE_FILES", 10_000)?;
    let sync_files = env_usize("BENCH_PIPELINE_SYNC_FILES", 2_000)?;
    let man = std::env::var_os("BENCH_CACHE").map_or_else(|| home().join(".cache/cloudsync/bench/man"), PathBuf::from);
    let pages = corpus::man_pages(&man, 300)?;
    anyhow::ensure!(pages.len() >= 50, "too few man pages (scripts/bench-tools installs man-db)");
    let pictures = std::env::var_os("BENCH_PICTURES").map_or_else(|| home().join(".cache/cloudsync/bench/skimage"), PathBuf::from);
    let mut photos = Vec::new();
    for entry in std::fs::read_dir(&pictures).with_context(|| format!("{} (scripts/bench-tools unpacks it)", pictures.display()))? {
        if let Ok(photo) = image::open(entry?.path())
            && photo.width() >= 256
            && photo.height() >= 256
        {
            photos.push(photo);
        }
    }
    anyhow::ensure!(photos.len() >= 5, "too few photographs in {}", pictures.display());

    let work = std::env::temp_dir().join(format!("cloudsync-bench-pipeline-{}", uuid::Uuid::new_v4().simple()));
    let (tree, data) = (work.join("tree"), work.join("data"));
    eprintln!("[pipeline] writing {files} files");
    let counts = generate(&tree, files, &pages, &photos)?;
    let mut roots = vec![tree.clone()];
    for (name, seed) in [("alone", 1u64 << 40), ("busy", 2u64 << 40)] {
        let (from, to) = (work.join(format!("sync-{name}-from")), work.join(format!("sync-{name}-to")));
        sync_tree(&from, sync_files, 64, seed)?;
        std::fs::create_dir_all(&to)?;
        roots.extend([from, to]);
    }
    let providers: Vec<(&str, serde_json::Value)> = roots.iter().map(|r| ("local", json!({ "root": r }))).collect();
    let ids = connect(&data, &providers).await?;

    eprintln!("[pipeline] scanning");
    let scanned = measure(cloudsync(&data)?.args(["scan", &ids[0]]))?;
    // The tree's files are in the log up to here; what the syncs record comes after them.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", data.join("cloudsync.db").display())).await?;
    let last: i64 = sqlx::query_scalar("SELECT max(position) FROM events").fetch_one(&db).await?;
    eprintln!("[pipeline] sync with nothing else running");
    let alone = sync(&data, &ids[1], &ids[2])?;

    eprintln!("[pipeline] serving: the content pipeline reads the tree");
    let since = Instant::now();
    let mut child = cloudsync(&data)?
        .args(["serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let server = Server(child);
    let mut banner = String::new();
    BufReader::new(stdout).read_line(&mut banner)?;

    // The second sync starts once the pipeline is busy (it has recorded its first readings), and
    // must end before the pipeline does.
    let sync_after = env_usize("BENCH_PIPELINE_SYNC_AFTER", 50)? as i64;
    let mut busy_sync = None;
    let mut reported = Instant::now();
    let (extracted, analyzed) = loop {
        let (checkpoint, extracted, analyzed) = progress(&db).await?;
        if checkpoint >= last {
            break (extracted, analyzed);
        }
        if busy_sync.is_none() && extracted >= sync_after {
            eprintln!("[pipeline] sync while the pipeline runs ({extracted} files read)");
            let (data, from, to) = (data.clone(), ids[3].clone(), ids[4].clone());
            busy_sync = Some((since.elapsed(), tokio::task::spawn_blocking(move || sync(&data, &from, &to))));
        }
        if reported.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "[pipeline] {:.0} s: {extracted} read, {analyzed} analysed, checkpoint {checkpoint} of {last}",
                since.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        if since.elapsed() > Duration::from_secs(4 * 3600) {
            bail!("the pipeline did not finish in four hours");
        }
        // The server is another process, with nothing to wait on but its database.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let seconds = since.elapsed().as_secs_f64();
    let peak = server.peak_mib();
    let (sync_at, busy_sync) = busy_sync.context("the pipeline ended before it had read BENCH_PIPELINE_SYNC_AFTER files")?;
    let busy = busy_sync.await??;
    let sync_ended_first = sync_at.as_secs_f64() + busy.seconds < seconds;
    drop(server);

    print_heading("content pipeline", started);
    let kinds: Vec<String> = counts.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    println!("Tree: {files} files ({}).\n", kinds.join(", "));
    println!("| step | seconds | files per second | peak MiB |\n|---|---|---|---|");
    println!(
        "| `cloudsync scan` (listing, BLAKE3 of every file) | {:.1} | {:.0} | {:.0} |",
        scanned.seconds,
        files as f64 / scanned.seconds,
        scanned.peak_mib
    );
    println!(
        "| `cloudsync serve` until the content pipeline's checkpoint passed the last file | {seconds:.1} | {:.1} | {peak:.0} |",
        files as f64 / seconds
    );
    println!("\nEvents: {extracted} `FileContentExtracted`, {analyzed} `FileAnalyzed`.\n");
    println!("| sync ({sync_files} small files and one of 64 MiB, local → local) | seconds | peak MiB |\n|---|---|---|");
    println!("| with nothing else running | {:.2} | {:.0} |", alone.seconds, alone.peak_mib);
    println!(
        "| while the pipeline runs (started after {:.0} s, once it had read {sync_after} files{}) | {:.2} | {:.0} |",
        sync_at.as_secs_f64(),
        if sync_ended_first { "" } else { "; the pipeline ended first" },
        busy.seconds,
        busy.peak_mib
    );
    println!("\nThe sync took {:.2}x as long beside the pipeline.", busy.seconds / alone.seconds);
    db.close().await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
