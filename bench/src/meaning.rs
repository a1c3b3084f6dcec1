//! Search by meaning, judged: 60 of the machine's man pages (rendered with `man -l -P cat | col -bx`,
//! cached in `BENCH_CACHE`, default `~/.cache/cloudsync/bench/man`) are indexed as one person's
//! documents by CloudSync's own code (the tantivy index, the text model over names and passages, the
//! embedded vector index), and 36 hand-written paraphrases, each naming what one page is for in
//! other words than the page's own ("give a file a new name" for `mv`), are asked in each mode of
//! `searchFiles`. Reported: MRR@10 and nDCG@10 (one right answer per query), and how many queries
//! find their page at all within ten, for `KEYWORD`, `SEMANTIC` and `HYBRID`; and the time the text
//! model took. `CLOUDSYNC_MODELS_DIR` (default `~/.cache/cloudsync/models`) holds the model
//! (`scripts/models` installs it). `BENCH_EXPLAIN=1` prints each query's top three per mode;
//! `BENCH_DUMP=FILE` writes every query's rankings and the pages' passages as JSON.
//!
//! Then every text (names, passages and queries) is embedded again in one call, beside
//! sentence-transformers on PyTorch running `peers/sentence_transformers_embed.py` over the same
//! texts from the same model folder (`BENCH_ST_VENV`, the virtual environment `scripts/bench-tools`
//! makes, at batches of 16 and of 32): both rates, the floating-point operations per second each
//! reaches in the encoder beside what the matrix kernel alone reaches on this machine, and how far
//! apart the vectors and the queries' scores are.

#[allow(dead_code)]
#[path = "search/corpus.rs"]
mod corpus;

use std::path::PathBuf;
use std::time::Instant;

use chrono::Utc;
use cloudsync_domain::{FileId, ProviderId, UserId};
use cloudsync_ml::{TextEmbedder, name_words, passages};
use cloudsync_search::meaning::{self, Mode};
use cloudsync_search::vectors::{FileVectors, SqliteVectors, VectorBatch, VectorIndex};
use cloudsync_search::{Batch, Content, Filters, SearchDoc, SearchIndex, SearchRequest, TantivyIndex, query};
use uuid::Uuid;

/// (man page, what someone who needs it would type, mostly in other words).
const QUERIES: [(&str, &str); 36] = [
    ("ls", "show what is inside a folder"),
    ("cp", "duplicate a document to another place"),
    ("mv", "give a file a new name"),
    ("rm", "get rid of files for good"),
    ("mkdir", "create a new folder"),
    ("grep", "look for a phrase inside many text files"),
    ("tar", "pack lots of files together into one bundle"),
    ("gzip", "shrink a file so it takes less disk space"),
    ("ssh", "log in to a server far away securely"),
    ("df", "how much room is left on my drives"),
    ("du", "how big is this folder on disk"),
    ("ps", "which programs are running right now"),
    ("kill", "stop a program that hangs"),
    ("chmod", "decide who may read or change a file"),
    ("chown", "hand a file over to another account"),
    ("date", "what time is it now"),
    ("sort", "put lines in alphabetical order"),
    ("uniq", "drop lines that repeat"),
    ("wc", "how many words are in this text"),
    ("head", "show only the beginning of a document"),
    ("tail", "follow the newest lines of a growing log"),
    ("find", "locate files by name anywhere under a folder"),
    ("diff", "what changed between two versions of a text"),
    ("sed", "replace words in a stream of text with a script"),
    ("passwd", "change my login secret"),
    ("ln", "make a shortcut that points to another file"),
    ("touch", "bump a file's timestamp to now"),
    ("sleep", "wait a few seconds before going on"),
    ("tee", "send output to the screen and save it at once"),
    ("whoami", "which account am I using"),
    ("hostname", "what is this computer called"),
    ("cat", "print a document to the terminal"),
    ("seq", "print a range of numbers one per line"),
    ("tr", "turn lowercase letters into capitals"),
    ("split", "cut a huge file into smaller pieces"),
    ("shuf", "put lines in random order"),
];

/// Pages in the collection besides the queries' answers: they compete for every query.
const OTHERS: [&str; 24] = [
    "echo", "env", "id", "uname", "yes", "printf", "basename", "dirname", "cut", "paste", "nl", "od", "stat", "readlink", "realpath",
    "mktemp", "tac", "cmp", "comm", "expand", "fold", "join", "md5sum", "nproc",
];

const TOP: usize = 10;

#[derive(Default)]
struct Score {
    reciprocal: f64,
    gain: f64,
    found: usize,
}

fn models_dir() -> PathBuf {
    std::env::var_os("CLOUDSYNC_MODELS_DIR").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/cloudsync/models"),
        PathBuf::from,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let cache = std::env::var_os("BENCH_CACHE").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/cloudsync/bench/man"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&cache)?;
    let explain = std::env::var("BENCH_EXPLAIN").is_ok_and(|v| v == "1");
    // Every query's rankings in each mode and the pages' passages, as JSON, for studying fusions.
    let dump = std::env::var_os("BENCH_DUMP").map(PathBuf::from);
    let mut dumped = Vec::new();
    let model = TextEmbedder::load(&models_dir().join(TextEmbedder::MODEL))?;
    let mut pages = Vec::new();
    for name in QUERIES.iter().map(|(name, _)| *name).chain(OTHERS) {
        let source = PathBuf::from(format!("/usr/share/man/man1/{name}.1.gz"));
        match corpus::render(&cache, &source)? {
            Some(page) => pages.push(page),
            None => anyhow::bail!("the man page of {name} is missing (scripts/bench-tools installs man-db and the pages)"),
        }
    }
    let dir = tempfile::tempdir()?;
    let index = TantivyIndex::open(&dir.path().join("search"))?;
    let vectors = SqliteVectors::open(&dir.path().join("vectors")).await?;
    let owner = UserId::from_uuid(Uuid::now_v7());
    let provider = ProviderId::from_uuid(Uuid::now_v7());
    let ids: Vec<FileId> = pages.iter().map(|_| FileId::from_uuid(Uuid::now_v7())).collect();
    let (mut docs, mut records) = (Vec::new(), Vec::new());
    let (mut texts_embedded, mut embedding) = (0usize, std::time::Duration::ZERO);
    let mut every_text: Vec<String> = Vec::new();
    for (page, id) in pages.iter().zip(&ids) {
        let name = format!("{}.{}", page.name, page.section);
        let checksum = blake3::hash(page.text.as_bytes()).to_hex().to_string();
        docs.push(SearchDoc {
            file_id: *id,
            owner_id: owner,
            provider_id: provider,
            path: format!("/man/{name}"),
            size: page.text.len() as u64,
            modified_at: Utc::now(),
            mime_type: "text/plain".into(),
            checksum: checksum.clone(),
            content: Some(Content {
                checksum: checksum.clone(),
                text: page.text.to_string(),
                language: Some("en".into()),
            }),
            picture: None,
        });
        let mut texts = vec![name_words(&name)];
        texts.extend(passages(&page.text).into_iter().map(|p| p.text));
        every_text.extend(texts.iter().cloned());
        let at = Instant::now();
        let embedded = model.embed(&texts.iter().map(String::as_str).collect::<Vec<_>>())?;
        embedding += at.elapsed();
        texts_embedded += texts.len();
        records.push(FileVectors {
            file_id: *id,
            owner_id: owner,
            provider_id: provider,
            checksum,
            vectors: Some(embedded),
        });
    }
    index
        .apply(Batch {
            upserts: docs,
            checkpoint: 1,
            ..Batch::default()
        })
        .await?;
    vectors
        .apply(VectorBatch {
            upserts: records,
            checkpoint: 1,
            ..VectorBatch::default()
        })
        .await?;
    println!(
        "{} man pages, {} queries; the text model embedded {texts_embedded} names and passages in {:.1} s ({:.0} per second)",
        pages.len(),
        QUERIES.len(),
        embedding.as_secs_f64(),
        texts_embedded as f64 / embedding.as_secs_f64()
    );
    // Hits as [page, score], for the dump.
    let named = |hits: &[cloudsync_search::Hit]| -> Vec<serde_json::Value> {
        hits.iter()
            .filter_map(|h| {
                ids.iter()
                    .position(|id| *id == h.file_id)
                    .map(|at| serde_json::json!([pages[at].name, h.score]))
            })
            .collect()
    };
    let modes = [("KEYWORD", Mode::Keyword), ("SEMANTIC", Mode::Semantic), ("HYBRID", Mode::Hybrid)];
    let mut scores: Vec<Score> = modes.iter().map(|_| Score::default()).collect();
    for (answer, text) in QUERIES {
        let right = pages.iter().position(|p| p.name == answer).map(|at| ids[at]);
        let vector = model.embed(&[meaning::meaning_text(text).as_str()])?.pop();
        let request = SearchRequest {
            owner,
            query: query::parse(text),
            filters: Filters::default(),
            offset: 0,
            limit: TOP,
        };
        let mut rankings = serde_json::Map::new();
        for ((label, mode), score) in modes.iter().zip(&mut scores) {
            let results = meaning::search(&index, &vectors, &request, vector.as_deref(), *mode).await?;
            if dump.is_some() {
                let deep = SearchRequest {
                    limit: meaning::CANDIDATES,
                    ..request.clone()
                };
                let all = meaning::search(&index, &vectors, &deep, vector.as_deref(), *mode).await?;
                rankings.insert((*label).to_string(), named(&all.hits).into());
            }
            let rank = results.hits.iter().position(|h| Some(h.file_id) == right);
            if let Some(rank) = rank {
                score.reciprocal += 1.0 / (rank as f64 + 1.0);
                score.gain += 1.0 / (rank as f64 + 2.0).log2();
                score.found += 1;
            }
            if explain {
                let top: Vec<&str> = results
                    .hits
                    .iter()
                    .take(3)
                    .filter_map(|h| ids.iter().position(|id| *id == h.file_id).map(|at| pages[at].name.as_str()))
                    .collect();
                println!(
                    "{label:>8} {text:?} → {top:?} (answer {answer}, rank {})",
                    rank.map_or("-".into(), |r| (r + 1).to_string())
                );
            }
        }
        if dump.is_some() {
            // The hybrid mode's keyword arm on its own, with its BM25 scores.
            let arm = meaning::keyword_ranking(&index, &request).await?;
            rankings.insert("KEYWORD_ARM".into(), named(&arm).into());
        }
        dumped.push(serde_json::json!({"query": text, "answer": answer, "rankings": rankings}));
    }
    if let Some(path) = &dump {
        let passages: serde_json::Map<String, serde_json::Value> = pages
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    passages(&p.text).into_iter().map(|x| x.text).collect::<Vec<_>>().into(),
                )
            })
            .collect();
        std::fs::write(
            path,
            serde_json::to_vec(&serde_json::json!({"queries": dumped, "passages": passages}))?,
        )?;
    }
    println!("\n| mode | MRR@10 | nDCG@10 | found in top 10 |\n|---|---|---|---|");
    let n = QUERIES.len() as f64;
    for ((label, _), score) in modes.iter().zip(&scores) {
        println!(
            "| {label} | {:.3} | {:.3} | {}/{} |",
            score.reciprocal / n,
            score.gain / n,
            score.found,
            QUERIES.len()
        );
    }
    every_text.extend(QUERIES.iter().map(|(_, text)| meaning::meaning_text(text)));
    beside_sentence_transformers(&model, &every_text, QUERIES.len())?;
    println!("\n(done in {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Floating-point operations of all-MiniLM-L6-v2's encoder over texts of these lengths in tokens
/// (two per multiply-add): per layer and token the query, key, value and output products (4 × 384²)
/// and the feed-forward pair (2 × 384 × 1536), and per layer and text the attention's two
/// products (2 × len² × 384). Element-wise steps are not counted.
fn encoder_flops(lengths: &[usize]) -> f64 {
    let (hidden, inner, layers) = (384.0, 1536.0, 6.0);
    lengths
        .iter()
        .map(|&len| {
            let len = len as f64;
            layers * 2.0 * (len * (4.0 * hidden * hidden + 2.0 * hidden * inner) + 2.0 * len * len * hidden)
        })
        .sum()
}

/// The GFLOP/s of candle's `matmul` (on `gemm`, as the encoder's dense layers run) on one product
/// of the encoder's largest shape, on every thread, best of five.
fn kernel_gflops() -> anyhow::Result<f64> {
    use candle_core::{Device, Tensor};
    let (m, k, n) = (2048usize, 384usize, 1536usize);
    let lhs = Tensor::from_vec((0..m * k).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<f32>>(), (m, k), &Device::Cpu)?;
    let rhs = Tensor::from_vec((0..k * n).map(|i| (i % 5) as f32 * 0.1).collect::<Vec<f32>>(), (k, n), &Device::Cpu)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let at = Instant::now();
        std::hint::black_box(lhs.matmul(&rhs)?);
        best = best.min(at.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// The Python that has sentence-transformers and PyTorch: the virtual environment
/// `scripts/bench-tools` makes (`BENCH_ST_VENV`).
fn peer_python() -> PathBuf {
    std::env::var_os("BENCH_ST_VENV")
        .map_or_else(
            || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/cloudsync/bench/st-venv"),
            PathBuf::from,
        )
        .join("bin/python")
}

/// Every text (names, passages, then the `queries` last) embedded in one call by CloudSync and by
/// sentence-transformers on the same cores, batched alike; prints both rates and how far apart
/// the vectors and the queries' scores against every text are.
fn beside_sentence_transformers(model: &TextEmbedder, texts: &[String], queries: usize) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let borrowed: Vec<&str> = texts.iter().map(String::as_str).collect();
    model.embed(&borrowed[..16.min(borrowed.len())])?;
    let at = Instant::now();
    let ours = model.embed(&borrowed)?;
    let our_seconds = at.elapsed().as_secs_f64();
    let lengths = model.token_counts(&borrowed)?;
    let flops = encoder_flops(&lengths);
    println!(
        "\nAll {} texts ({} tokens, {:.2e} floating-point operations in the encoder) in one call: CloudSync {our_seconds:.1} s, {:.1} per second, {:.0} GFLOP/s",
        texts.len(),
        lengths.iter().sum::<usize>(),
        flops,
        texts.len() as f64 / our_seconds,
        flops / our_seconds / 1e9
    );
    println!(
        "the matrix kernel's own rate on the encoder's largest product (2048 x 384 by 384 x 1536, {threads} threads): {:.0} GFLOP/s",
        kernel_gflops()?
    );
    let python = peer_python();
    if !python.is_file() {
        println!(
            "sentence-transformers: not run ({} is missing: scripts/bench-tools installs it)",
            python.display()
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (input, output) = (dir.path().join("texts.json"), dir.path().join("vectors.f32"));
    std::fs::write(&input, serde_json::to_vec(texts)?)?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/sentence_transformers_embed.py");
    // The peer at the batch size the previous runs gave it and at its library's default; the
    // faster of the two is the one compared.
    let mut best: Option<(f64, serde_json::Value)> = None;
    for batch in [16, 32] {
        let run = std::process::Command::new(&python)
            .arg(&script)
            .arg(models_dir().join(TextEmbedder::MODEL))
            .arg(&input)
            .arg(&output)
            .arg(threads.to_string())
            .arg(batch.to_string())
            .output()?;
        if !run.status.success() {
            anyhow::bail!("sentence-transformers failed: {}", String::from_utf8_lossy(&run.stderr));
        }
        let report: serde_json::Value = serde_json::from_slice(run.stdout.trim_ascii())?;
        let seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
        println!(
            "sentence-transformers, batches of {batch}: {seconds:.1} s, {:.1} per second, {:.0} GFLOP/s",
            texts.len() as f64 / seconds,
            flops / seconds / 1e9
        );
        if best.as_ref().is_none_or(|(fastest, _)| seconds < *fastest) {
            best = Some((seconds, report));
        }
    }
    let (seconds, report) = best.expect("the peer ran");
    let raw = std::fs::read(&output)?;
    let theirs: Vec<Vec<f32>> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect::<Vec<_>>()
        .chunks(TextEmbedder::DIMS)
        .map(<[f32]>::to_vec)
        .collect();
    anyhow::ensure!(
        theirs.len() == ours.len(),
        "sentence-transformers returned {} vectors for {}",
        theirs.len(),
        ours.len()
    );
    let element = ours
        .iter()
        .zip(&theirs)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    // Every query's score against every text, as a search by meaning would rank them.
    let first_query = texts.len() - queries;
    let mut score = 0f32;
    for q in first_query..texts.len() {
        for t in 0..first_query {
            let delta = cloudsync_ml::cosine(&ours[q], &ours[t]) - cloudsync_ml::cosine(&theirs[q], &theirs[t]);
            score = score.max(delta.abs());
        }
    }
    println!(
        "sentence-transformers {} (torch {}, {} threads) at its best: {seconds:.1} s, {:.1} per second; CloudSync is {:.2}x its rate",
        report["sentence_transformers"].as_str().unwrap_or("?"),
        report["torch"].as_str().unwrap_or("?"),
        report["threads"],
        texts.len() as f64 / seconds,
        seconds / our_seconds
    );
    println!(
        "largest difference of a vector element {element:.1e}; of a query's score against a text {score:.1e} ({} queries x {first_query} texts)",
        queries
    );
    Ok(())
}
