//! OCR, measured beside the tesseract CLI on the same pages. Pages of English prose (sentences drawn
//! from a fixed list, 24 lines of Helvetica 11 pt each, as `cloudsync_content::samples::pdf_lines`
//! makes them) are rendered by poppler at 200 dpi as a scanner would give them; every other page
//! lies upside down, as a stack fed into a scanner the wrong way round does. Each page goes through
//! CloudSync's OCR (`Ocr::picture`: orientation detection, the page turned upright, then the words
//! tesseract is sure of) and through `tesseract PAGE stdout` with the same languages (its default
//! segmentation); both with one thread (`OMP_THREAD_LIMIT=1`), as the pipeline runs it. Then the
//! same pages as scanned PDFs (a JPEG per page, no text layer) through the extractor
//! (`extract_with`, rendering with pdftoppm included). Reported: pages per second and word recall
//! (the share of the page's words found, in order-free multiset terms), upright and upside down.
//!
//! Needs tesseract with eng, deu, fra, spa and osd, and poppler-utils (`scripts/storage-servers`
//! installs them). `BENCH_PAGES` (default 12) sets the number of pages.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudsync_content::samples::{pdf_lines, rendered, scan_of};
use cloudsync_content::{Extraction, Format, Ocr, extract_with};

const LANGUAGES: &str = "eng+deu+fra+spa";

const SENTENCES: [&str; 16] = [
    "The committee met on Tuesday to review the budget for the coming year",
    "Payment for the garden shed is due within thirty days of this invoice",
    "Please return the signed contract to our office before the end of May",
    "The library will be closed for renovation during the summer holidays",
    "Our records show that the second instalment has not yet been received",
    "Temperatures are expected to fall sharply over the weekend in the north",
    "The quarterly report describes rising costs and a modest growth in sales",
    "Residents are asked to keep the courtyard free of bicycles and parcels",
    "A copy of your insurance certificate is enclosed with this letter",
    "The train to the coast leaves every hour from the central station",
    "Minutes of the previous meeting were approved without any changes",
    "The warranty covers parts and labour for two years from purchase",
    "Your appointment has been moved to Thursday morning at nine o'clock",
    "The school trip to the museum will take place on the first of June",
    "Interest is charged on balances that remain unpaid after the due date",
    "The new opening hours apply from Monday and are shown at the entrance",
];

fn page_lines(page: usize) -> Vec<&'static str> {
    (0..24).map(|line| SENTENCES[(page * 7 + line * 5) % SENTENCES.len()]).collect()
}

fn words(text: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty()) {
        *out.entry(word.to_lowercase()).or_default() += 1;
    }
    out
}

/// The share of `expected`'s words (with their counts) that `got` has.
fn recall(expected: &str, got: &str) -> f64 {
    let (want, have) = (words(expected), words(got));
    let total: usize = want.values().sum();
    let found: usize = want.iter().map(|(w, n)| (*n).min(have.get(w).copied().unwrap_or(0))).sum();
    found as f64 / total.max(1) as f64
}

fn tesseract_cli(page: &Path) -> anyhow::Result<String> {
    let out = Command::new("tesseract")
        .arg(page)
        .args(["stdout", "-l", LANGUAGES])
        .env("OMP_THREAD_LIMIT", "1")
        .stderr(Stdio::null())
        .output()?;
    anyhow::ensure!(out.status.success(), "tesseract failed on {}", page.display());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Tally {
    time: Duration,
    recall: [Vec<f64>; 2],
}

impl Tally {
    fn new() -> Self {
        Self {
            time: Duration::ZERO,
            recall: [Vec::new(), Vec::new()],
        }
    }

    fn row(&self, who: &str, pages: usize) -> String {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        format!(
            "| {who} | {:.2} | {:.3} | {:.3} |",
            pages as f64 / self.time.as_secs_f64(),
            mean(&self.recall[0]),
            mean(&self.recall[1])
        )
    }
}

fn main() -> anyhow::Result<()> {
    let pages: usize = std::env::var("BENCH_PAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let ocr = Ocr::probe(Path::new("tesseract"), LANGUAGES).map_err(|why| anyhow::anyhow!(why))?;
    let folder = tempfile::tempdir()?;
    let mut ours = Tally::new();
    let mut peer = Tally::new();
    let mut scanned = Tally::new();
    let far = || Instant::now() + Duration::from_secs(600);
    for page in 0..pages {
        let lines = page_lines(page);
        let expected = lines.join(" ");
        let upside_down = page % 2;
        let pdf = pdf_lines(&lines, 11, if upside_down == 1 { 180 } else { 0 });
        let png = rendered(&pdf, 200).ok_or_else(|| anyhow::anyhow!("pdftoppm is missing"))?;
        let path = folder.path().join(format!("page-{page}.png"));
        std::fs::write(&path, &png)?;

        let started = Instant::now();
        let text = ocr.picture(&png, far()).map_err(|why| anyhow::anyhow!(why))?;
        ours.time += started.elapsed();
        ours.recall[upside_down].push(recall(&expected, &text));

        let started = Instant::now();
        let text = tesseract_cli(&path)?;
        peer.time += started.elapsed();
        peer.recall[upside_down].push(recall(&expected, &text));

        let scan = scan_of(&pdf, 200, None).ok_or_else(|| anyhow::anyhow!("pdftoppm is missing"))?;
        let started = Instant::now();
        let text = match extract_with(Format::Pdf, &scan, 4 << 20, Some((&ocr, far()))) {
            Extraction::Text { text, .. } => text,
            other => anyhow::bail!("a scanned PDF gave {other:?}"),
        };
        scanned.time += started.elapsed();
        scanned.recall[upside_down].push(recall(&expected, &text));
    }
    println!("{pages} pages (24 lines of 11 pt Helvetica, 200 dpi, every other one upside down), one thread each, {LANGUAGES}\n");
    println!("| reader | pages/s | word recall, upright | word recall, upside down |\n|---|---|---|---|");
    println!(
        "{}",
        ours.row("CloudSync `Ocr::picture` (orientation, then confident words)", pages)
    );
    println!("{}", peer.row("`tesseract PAGE stdout` (CLI, default segmentation)", pages));
    println!(
        "{}",
        scanned.row("CloudSync, the same pages as scanned PDFs (pdftoppm + OCR)", pages)
    );
    Ok(())
}
