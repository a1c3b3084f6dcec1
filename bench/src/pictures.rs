//! Near-duplicate pictures, judged: scikit-image's sample photographs (`scripts/bench-tools` unpacks
//! them into `BENCH_PICTURES`, default `~/.cache/cloudsync/bench/skimage`), each varied as copies
//! are (resized to half, recompressed as a JPEG of quality 35, re-encoded at three quarters as a
//! JPEG of quality 90, cropped by 8% on every side) and as another shot of the same scene is (the
//! frame moved by 3% and the exposure raised by 8%: a burst), plus the stereo pair of a motorcycle
//! (two cameras, one moment). Every picture goes through CloudSync's own reader
//! (`cloudsync_content::image::read_image`, as the pipeline reads it) and grouping
//! (`cloudsync_domain::near::near_pictures`), without EXIF, so only the hashes decide. For each kind
//! of variant: recall (the variant is grouped with its original) and precision (of the pictures
//! grouped with the variant, how many are copies of the same photograph); and how many burst shots
//! and stereo pairs were wrongly grouped; at thresholds 0.99, 0.98 (the default), 0.95 and 0.9. Also
//! the reading rate. `BENCH_EXPLAIN=1` prints every group.
//!
//! Beside it, the peer: `czkawka_cli image` (`scripts/bench-tools` installs it from crates.io) over
//! the same files written to a folder, with its defaults (16×16 gradient hash, difference up to 5),
//! one thread, no cache: its time and its groups, judged the same way.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use cloudsync_content::image::read_image;
use cloudsync_domain::near::{Picture, near_pictures};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};

const KINDS: [&str; 5] = ["resized", "recompressed", "re-encoded", "cropped", "burst"];

fn jpeg(picture: &DynamicImage, quality: u8) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    picture
        .to_rgb8()
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality))?;
    Ok(out)
}

fn png(picture: &DynamicImage) -> anyhow::Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn variant(kind: &str, picture: &DynamicImage) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (picture.width(), picture.height());
    Ok(match kind {
        "resized" => png(&picture.resize(w / 2, h / 2, FilterType::Lanczos3))?,
        "recompressed" => jpeg(picture, 35)?,
        "re-encoded" => jpeg(&picture.resize(w * 3 / 4, h * 3 / 4, FilterType::Triangle), 90)?,
        "cropped" => png(&picture.crop_imm(w * 8 / 100, h * 8 / 100, w * 84 / 100, h * 84 / 100))?,
        _ => {
            // Another shot: the frame moved a little, the light a little brighter.
            let (dx, dy) = (w * 3 / 100, h * 3 / 100);
            let moved = picture.crop_imm(dx, dy, w - dx, h - dy).resize_exact(w, h, FilterType::Triangle);
            png(&moved.brighten(20))?
        }
    })
}

struct Entry {
    photo: usize,
    kind: &'static str,
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::var_os("BENCH_PICTURES").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/cloudsync/bench/skimage"),
        PathBuf::from,
    );
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|err| anyhow::anyhow!("{}: {err} (scripts/bench-tools unpacks the photographs)", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut photos: Vec<(String, DynamicImage)> = Vec::new();
    for path in names {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let Ok(picture) = image::open(&path) else { continue };
        // Tiny test patterns are not photographs.
        if picture.width() >= 256 && picture.height() >= 256 && !name.starts_with("chessboard") {
            photos.push((name, picture));
        }
    }
    anyhow::ensure!(photos.len() >= 10, "too few photographs in {}", dir.display());
    let mut files: Vec<(Entry, Vec<u8>)> = Vec::new();
    for (at, (_, picture)) in photos.iter().enumerate() {
        files.push((
            Entry {
                photo: at,
                kind: "original",
            },
            png(picture)?,
        ));
        for kind in KINDS {
            files.push((Entry { photo: at, kind }, variant(kind, picture)?));
        }
    }
    let started = Instant::now();
    let mut readings = Vec::new();
    for (_, bytes) in &files {
        readings.push(read_image(bytes).map_err(|err| anyhow::anyhow!(err))?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let megapixels: f64 = readings.iter().map(|r| f64::from(r.width) * f64::from(r.height) / 1e6).sum();
    println!(
        "{} photographs, {} pictures read (decode, EXIF, 256-bit hash) in {elapsed:.2} s: {:.0} pictures/s, {:.0} megapixels/s\n",
        photos.len(),
        files.len(),
        files.len() as f64 / elapsed,
        megapixels / elapsed
    );
    let stereo = (
        photos.iter().position(|(n, _)| n == "motorcycle_left"),
        photos.iter().position(|(n, _)| n == "motorcycle_right"),
    );
    let pictures: Vec<Picture> = readings
        .iter()
        .enumerate()
        .map(|(index, r)| Picture {
            index,
            checksum: index.to_string(),
            phash: r.phash.clone(),
            taken_at: None,
        })
        .collect();
    println!("| threshold | kind | recall | precision |\n|---|---|---|---|");
    for threshold in [0.99, 0.98, 0.95, 0.9] {
        let reach = ((1.0 - threshold) * 256.0_f64).floor() as u32;
        let mut group_of: HashMap<usize, usize> = HashMap::new();
        for (g, group) in near_pictures(&pictures, reach).iter().enumerate() {
            for m in &group.members {
                group_of.insert(*m, g);
            }
        }
        if std::env::var("BENCH_EXPLAIN").is_ok_and(|v| v == "1") {
            for group in near_pictures(&pictures, reach) {
                let members: Vec<String> = group
                    .members
                    .iter()
                    .map(|m| format!("{}/{}", photos[files[*m].0.photo].0, files[*m].0.kind))
                    .collect();
                println!("  {threshold}: {} bits: {}", group.distance, members.join(" "));
            }
        }
        judge(&threshold.to_string(), &files, &group_of, stereo);
    }
    czkawka(&files, &photos, stereo)
}

/// The peer over the same files: `czkawka_cli image` with its defaults, one thread, no cache.
fn czkawka(files: &[(Entry, Vec<u8>)], photos: &[(String, DynamicImage)], stereo: (Option<usize>, Option<usize>)) -> anyhow::Result<()> {
    let program = std::env::var("BENCH_CZKAWKA").unwrap_or_else(|_| "czkawka_cli".into());
    let folder = tempfile::tempdir()?;
    for (at, (entry, bytes)) in files.iter().enumerate() {
        let extension = if bytes.starts_with(&[0xff, 0xd8]) { "jpg" } else { "png" };
        std::fs::write(
            folder
                .path()
                .join(format!("{at}-{}-{}.{extension}", photos[entry.photo].0, entry.kind)),
            bytes,
        )?;
    }
    println!("\nczkawka_cli image (16×16 gradient hash, one thread, no cache) on the same pictures in a folder:\n");
    println!("| max difference | kind | recall | precision |\n|---|---|---|---|");
    let mut times = Vec::new();
    for difference in [5, 10, 20] {
        let results = folder.path().join(format!("groups-{difference}.json"));
        let started = Instant::now();
        let status = std::process::Command::new(&program)
            .arg("image")
            .arg("-d")
            .arg(folder.path())
            .args([
                "-m",
                "1",
                "-H",
                "-T",
                "1",
                "-N",
                "-M",
                "-W",
                "-x",
                "png,jpg",
                "-s",
                &difference.to_string(),
            ])
            .arg("-C")
            .arg(&results)
            .status();
        times.push(started.elapsed().as_secs_f64());
        match status {
            Ok(status) if status.success() => {}
            other => {
                println!("czkawka_cli did not run ({other:?}): `scripts/bench-tools` installs it");
                return Ok(());
            }
        }
        let groups: Vec<Vec<serde_json::Value>> = serde_json::from_slice(&std::fs::read(&results)?)?;
        let mut group_of: HashMap<usize, usize> = HashMap::new();
        for (g, group) in groups.iter().enumerate() {
            for member in group {
                let name = std::path::Path::new(member["path"].as_str().unwrap_or_default())
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(at) = name.split('-').next().and_then(|n| n.parse::<usize>().ok()) {
                    group_of.insert(at, g);
                }
            }
        }
        judge(&difference.to_string(), files, &group_of, stereo);
    }
    let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "\nczkawka_cli took {} s per run (decode, hash, compare), {:.0} pictures/s at best",
        times.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(", "),
        files.len() as f64 / fastest
    );
    Ok(())
}

/// Prints, for the groups `group_of` (picture → group) made at `label`, each variant kind's recall
/// and precision, and whether the burst shots and the stereo pair stayed apart.
fn judge(label: &str, files: &[(Entry, Vec<u8>)], group_of: &HashMap<usize, usize>, stereo: (Option<usize>, Option<usize>)) {
    let threshold = label;
    let together = |a: usize, b: usize| group_of.get(&a).is_some_and(|g| group_of.get(&b) == Some(g));
    for kind in KINDS {
        let (mut found, mut total, mut right, mut grouped) = (0, 0, 0, 0);
        for (i, (entry, _)) in files.iter().enumerate().filter(|(_, (e, _))| e.kind == kind) {
            let original = files
                .iter()
                .position(|(e, _)| e.photo == entry.photo && e.kind == "original")
                .unwrap_or(i);
            total += 1;
            if together(i, original) {
                found += 1;
            }
            for (j, (other, _)) in files.iter().enumerate() {
                if j != i && together(i, j) {
                    grouped += 1;
                    if other.photo == entry.photo && other.kind != "burst" {
                        right += 1;
                    }
                }
            }
        }
        if kind == "burst" {
            println!("| {threshold} | burst shots (must stay apart) | {found} of {total} wrongly grouped with their scene | |");
        } else {
            let precision = if grouped == 0 { 1.0 } else { f64::from(right) / f64::from(grouped) };
            println!(
                "| {threshold} | {kind} | {:.2} ({found}/{total}) | {precision:.2} |",
                f64::from(found) / f64::from(total)
            );
        }
    }
    if let (Some(left), Some(right)) = stereo {
        let index = |photo: usize| {
            files
                .iter()
                .position(|(e, _)| e.photo == photo && e.kind == "original")
                .unwrap_or(0)
        };
        println!(
            "| {threshold} | stereo pair (must stay apart) | {} | |",
            if together(index(left), index(right)) {
                "wrongly grouped"
            } else {
                "apart"
            }
        );
    }
}
