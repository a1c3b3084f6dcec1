//! The benchmark's data: real documents (the machine's man pages, rendered once and cached), a
//! vocabulary drawn from them, a million generated file records named with that vocabulary, the
//! query sets, and the known-item set that ranking is judged on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Documents are cut to this many bytes for every engine alike (PostgreSQL's `tsvector` holds at
/// most 1 MB; a few man pages are longer).
const MAX_TEXT: usize = 400_000;

/// One file as every engine indexes it.
pub struct Record {
    pub provider: u8,
    /// Absolute, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub modified: i64,
    pub mime: &'static str,
    /// The extracted text, for documents.
    pub text: Option<Arc<str>>,
    pub language: Option<String>,
}

impl Record {
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    pub fn folder(&self) -> &str {
        self.path.rfind('/').map_or("", |at| &self.path[..at])
    }

    pub fn extension(&self) -> String {
        cloudsync_search::extension_of(self.name())
    }
}

/// A rendered man page.
pub struct Page {
    pub section: String,
    pub name: String,
    pub text: Arc<str>,
}

/// The man pages of sections 1–8, rendered with `man -l -P cat` and `col -bx` into `cache` (so that
/// later runs read them back), the first `count` of them by file name that render to real text.
pub fn man_pages(cache: &Path, count: usize) -> anyhow::Result<Vec<Page>> {
    let mut sources: Vec<PathBuf> = Vec::new();
    for section in 1..=8 {
        let dir = PathBuf::from(format!("/usr/share/man/man{section}"));
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            // Links and `.so` redirections render another page's text again.
            if entry.file_type().is_ok_and(|t| t.is_file()) && !is_redirect(&path) {
                sources.push(path);
            }
        }
    }
    sources.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    std::fs::create_dir_all(cache)?;
    let mut pages = Vec::new();
    let mut rendered = 0;
    for chunk in sources.chunks(64) {
        if pages.len() >= count {
            break;
        }
        // Two at a time: the machine has two cores and groff is the slow part.
        let results: Vec<anyhow::Result<Option<Page>>> = std::thread::scope(|scope| {
            let halves = chunk.split_at(chunk.len() / 2);
            let handles =
                [halves.0, halves.1].map(|part| scope.spawn(move || part.iter().map(|source| render(cache, source)).collect::<Vec<_>>()));
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|_| vec![Err(anyhow::anyhow!("a render thread panicked"))]))
                .collect()
        });
        for page in results {
            if let Some(page) = page? {
                rendered += 1;
                if pages.len() < count {
                    pages.push(page);
                }
            }
        }
    }
    if pages.len() < count {
        eprintln!("only {} man pages render to text (asked for {count})", pages.len());
    }
    eprintln!("{rendered} man pages ready");
    Ok(pages)
}

fn is_redirect(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return true };
    let mut head = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        use std::io::Read as _;
        let _ = flate2::read::GzDecoder::new(&bytes[..]).take(64).read_to_end(&mut head);
    } else {
        head = bytes.into_iter().take(64).collect();
    }
    head.starts_with(b".so ")
}

pub fn render(cache: &Path, source: &Path) -> anyhow::Result<Option<Page>> {
    let file = source
        .file_name()
        .and_then(|n| n.to_str())
        .context("a man page's name is not UTF-8")?;
    let stem = file.strip_suffix(".gz").unwrap_or(file);
    let (name, section) = stem.rsplit_once('.').unwrap_or((stem, ""));
    let cached = cache.join(format!("{stem}.txt"));
    let text = match std::fs::read_to_string(&cached) {
        Ok(text) => text,
        Err(_) => {
            let mut man = Command::new("man")
                .args(["-l", "-P", "cat"])
                .arg(source)
                .env("MANWIDTH", "80")
                .env("LANG", "C.UTF-8")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("running man")?;
            let stdout = man.stdout.take().context("man's output")?;
            let col = Command::new("col")
                .arg("-bx")
                .stdin(stdout)
                .stderr(Stdio::null())
                .output()
                .context("running col")?;
            man.wait()?;
            let text = String::from_utf8_lossy(&col.stdout).into_owned();
            std::fs::write(&cached, &text)?;
            text
        }
    };
    if text.len() < 400 {
        return Ok(None);
    }
    let mut text = text;
    if text.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Ok(Some(Page {
        section: section.to_owned(),
        name: name.to_owned(),
        text: text.into(),
    }))
}

/// Lower-case words of 4 to 12 ASCII letters in `text`, in order.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| (4..=12).contains(&w.len()))
        .map(str::to_ascii_lowercase)
}

/// English stopwords of four letters or more (PostgreSQL's `english` configuration drops them from
/// queries, which would make its queries ask less than the other engines').
const STOPWORDS: [&str; 64] = [
    "about", "above", "after", "again", "against", "because", "been", "before", "being", "below", "between", "both", "could", "does",
    "doing", "down", "during", "each", "from", "further", "have", "having", "here", "hers", "herself", "himself", "into", "itself", "just",
    "more", "most", "myself", "once", "only", "other", "ours", "over", "same", "should", "some", "such", "than", "that", "their", "theirs",
    "them", "then", "there", "these", "they", "this", "those", "through", "under", "until", "very", "were", "what", "when", "where",
    "which", "while", "with", "your",
];

/// The `size` most frequent words of the pages (stopwords aside), most frequent first.
pub fn vocabulary(pages: &[Page], size: usize) -> Vec<String> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for page in pages {
        for word in words(&page.text).filter(|w| !STOPWORDS.contains(&w.as_str())) {
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.into_iter().take(size).map(|(w, _)| w).collect()
}

/// Picks vocabulary words with Zipf-like weights (rank r has weight 1 / (r + 10)), so that a few
/// words name many files and most name few, as in real trees.
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|r| {
                total += 1.0 / (r as f64 + 10.0);
                total
            })
            .collect();
        Self { cumulative }
    }

    pub fn sample(&self, rng: &mut StdRng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.r#gen::<f64>() * total;
        self.cumulative.partition_point(|&c| c < x).min(self.cumulative.len() - 1)
    }
}

const TOPS: [&str; 8] = [
    "Documents",
    "Photos",
    "Music",
    "Projects",
    "Work",
    "Archive",
    "Downloads",
    "Backups",
];
const EXTENSIONS: [(&str, &str, u32); 16] = [
    ("pdf", "application/pdf", 14),
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", 8),
    ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", 5),
    (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        2,
    ),
    ("odt", "application/vnd.oasis.opendocument.text", 1),
    ("txt", "text/plain", 6),
    ("md", "text/markdown", 4),
    ("html", "text/html", 2),
    ("csv", "text/csv", 3),
    ("jpg", "image/jpeg", 22),
    ("png", "image/png", 8),
    ("mp3", "audio/mpeg", 7),
    ("mp4", "video/mp4", 4),
    ("zip", "application/zip", 3),
    ("rs", "text/x-rust", 4),
    ("py", "text/x-python", 7),
];

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// `count` file records named and filed with the vocabulary (deterministic for a seed): names
/// such as `budget-report-2019.pdf`, `MeetingNotes7.docx`, `IMG_4821.jpg`, in folders such as
/// `/Documents/budget/2019`, on five providers.
pub fn file_records(count: usize, vocabulary: &[String], seed: u64) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed);
    let zipf = Zipf::new(vocabulary.len());
    let weights: u32 = EXTENSIONS.iter().map(|e| e.2).sum();
    let word = |rng: &mut StdRng| vocabulary[zipf.sample(rng)].as_str();
    let start = 1_325_376_000_i64; // 2012-01-01
    let span = 15 * 365 * 86_400_i64;
    (0..count)
        .map(|_| {
            let mut pick = rng.gen_range(0..weights);
            let (ext, mime, _) = EXTENSIONS
                .iter()
                .find(|e| {
                    if pick < e.2 {
                        true
                    } else {
                        pick -= e.2;
                        false
                    }
                })
                .copied()
                .unwrap_or(EXTENSIONS[0]);
            let modified = start + rng.gen_range(0..span);
            let year = 2012 + (modified - start) / (365 * 86_400);
            let name = match rng.gen_range(0..10) {
                0..=3 => format!("{}-{}-{year}.{ext}", word(&mut rng), word(&mut rng)),
                4..=5 => format!(
                    "{}{}{}.{ext}",
                    capitalised(word(&mut rng)),
                    capitalised(word(&mut rng)),
                    rng.gen_range(1..100)
                ),
                6 => format!("{}_{}_{}.{ext}", word(&mut rng), word(&mut rng), word(&mut rng)),
                7 if ext == "jpg" || ext == "png" => format!("IMG_{:04}.{ext}", rng.gen_range(0..10_000)),
                _ => format!("{} {} ({}).{ext}", word(&mut rng), word(&mut rng), rng.gen_range(1..10)),
            };
            let top = TOPS[rng.gen_range(0..TOPS.len())];
            let folder = if rng.gen_bool(0.5) {
                format!("/{top}/{}/{year}", word(&mut rng))
            } else {
                format!("/{top}/{}/{}", word(&mut rng), word(&mut rng))
            };
            let size = 10f64.powf(rng.gen_range(2.0..8.7)) as u64;
            Record {
                provider: rng.gen_range(0..5),
                path: format!("{folder}/{name}"),
                size,
                modified,
                mime,
                text: None,
                language: None,
            }
        })
        .collect()
}

/// The pages as documents with contents, filed under `/Manuals/<section>/<name>.<section>.txt`.
pub fn document_records(pages: &[Page], seed: u64) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = 1_325_376_000_i64;
    pages
        .iter()
        .map(|page| Record {
            provider: rng.gen_range(0..5),
            path: format!("/Manuals/man{}/{}.{}.txt", page.section, page.name, page.section),
            size: page.text.len() as u64,
            modified: start + rng.gen_range(0..15 * 365 * 86_400_i64),
            mime: "text/plain",
            text: Some(Arc::clone(&page.text)),
            language: cloudsync_content::detect_language(&page.text),
        })
        .collect()
}

/// What a query asks, in a form every engine's own syntax can express.
#[derive(Debug, Clone)]
pub enum Text {
    /// Every word must match.
    Words(Vec<String>),
    /// Names starting with it (FTS5 `pre*`, PostgreSQL `pre:*`).
    Prefix(String),
    Phrase(Vec<String>),
    Or(String, String),
    /// The first without the second.
    Not(String, String),
}

#[derive(Debug, Clone)]
pub struct Query {
    pub text: Text,
    pub extension: Option<String>,
    pub folder: Option<String>,
    pub min_size: Option<u64>,
    /// Facet counts asked for (CloudSync's engines count facets on every query).
    pub facets: bool,
    pub offset: usize,
    pub limit: usize,
}

impl Query {
    pub fn new(text: Text) -> Self {
        Self {
            text,
            extension: None,
            folder: None,
            min_size: None,
            facets: false,
            offset: 0,
            limit: 20,
        }
    }
}

/// The kinds of query measured, each with `per_kind` instances drawn from the data.
pub fn query_sets(
    records: &[Record],
    pages: &[Page],
    vocabulary: &[String],
    per_kind: usize,
    seed: u64,
) -> Vec<(&'static str, Vec<Query>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let zipf = Zipf::new(vocabulary.len());
    let files: Vec<&Record> = records.iter().filter(|r| r.text.is_none()).collect();
    // Two words that stand next to each other in a file's name.
    let adjacent = |rng: &mut StdRng| loop {
        let record = files[rng.gen_range(0..files.len())];
        let name = record.name();
        if name.contains('-') || name.contains(' ') {
            let parts: Vec<String> = words(name).collect();
            if parts.len() >= 2 && parts[0] != parts[1] {
                return (parts[0].clone(), parts[1].clone());
            }
        }
    };
    let long_word = |rng: &mut StdRng| loop {
        let w = &vocabulary[zipf.sample(rng)];
        if w.len() >= 6 {
            return w.clone();
        }
    };
    let mut sets: Vec<(&'static str, Vec<Query>)> = Vec::new();
    let mut set = |name: &'static str, make: &mut dyn FnMut(&mut StdRng) -> Query| {
        let queries = (0..per_kind).map(|_| make(&mut rng)).collect();
        sets.push((name, queries));
    };
    set("one word", &mut |rng| {
        Query::new(Text::Words(vec![vocabulary[zipf.sample(rng)].clone()]))
    });
    set("two words from one name", &mut |rng| {
        let (a, b) = adjacent(rng);
        Query::new(Text::Words(vec![b, a]))
    });
    set("prefix of a name word (4 letters)", &mut |rng| {
        Query::new(Text::Prefix(long_word(rng)[..4].to_owned()))
    });
    set("phrase of two name words", &mut |rng| {
        let (a, b) = adjacent(rng);
        Query::new(Text::Phrase(vec![a, b]))
    });
    set("typo (one letter changed)", &mut |rng| {
        let mut w: Vec<u8> = long_word(rng).into_bytes();
        let at = rng.gen_range(1..w.len() - 1);
        let old = w[at];
        while w[at] == old {
            w[at] = rng.gen_range(b'a'..=b'z');
        }
        Query::new(Text::Words(vec![String::from_utf8_lossy(&w).into_owned()]))
    });
    set("a OR b", &mut |rng| {
        Query::new(Text::Or(vocabulary[zipf.sample(rng)].clone(), vocabulary[zipf.sample(rng)].clone()))
    });
    set("a -b (exclusion)", &mut |rng| {
        Query::new(Text::Not(
            vocabulary[rng.gen_range(0..50)].clone(),
            vocabulary[zipf.sample(rng)].clone(),
        ))
    });
    set("word + ext:pdf", &mut |rng| Query {
        extension: Some("pdf".into()),
        ..Query::new(Text::Words(vec![vocabulary[zipf.sample(rng)].clone()]))
    });
    set("word in /Documents, size >= 1 MiB", &mut |rng| Query {
        folder: Some("/Documents".into()),
        min_size: Some(1 << 20),
        ..Query::new(Text::Words(vec![vocabulary[zipf.sample(rng)].clone()]))
    });
    set("word, with facet counts", &mut |rng| Query {
        facets: true,
        ..Query::new(Text::Words(vec![vocabulary[zipf.sample(rng)].clone()]))
    });
    set("deep page (results 1001-1020)", &mut |rng| Query {
        offset: 1000,
        ..Query::new(Text::Words(vec![vocabulary[rng.gen_range(0..20)].clone()]))
    });
    set("phrase of three words from a document", &mut |rng| loop {
        let page = &pages[rng.gen_range(0..pages.len())];
        // Every word in order, so that the three stand next to each other in the text.
        let all: Vec<&str> = page.text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
        if all.len() > 20 {
            let at = rng.gen_range(0..all.len() - 3);
            let three = &all[at..at + 3];
            if three.iter().all(|w| w.len() >= 3 && w.chars().all(|c| c.is_ascii_alphabetic())) {
                break Query::new(Text::Phrase(three.iter().map(|w| w.to_ascii_lowercase()).collect()));
            }
        }
    });
    sets
}

/// One known-item query: a page's one-line description (its NAME section) and the page.
pub struct KnownItem {
    pub query: Vec<String>,
    /// Index of the page among the documents.
    pub page: usize,
}

/// Up to `count` known items, evenly spread over the pages: those whose description has 3 to 8
/// words and is shared by no other page.
pub fn known_items(pages: &[Page], count: usize) -> anyhow::Result<Vec<KnownItem>> {
    let mut by_description: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
    for (at, page) in pages.iter().enumerate() {
        if let Some(description) = description(&page.text) {
            let words: Vec<String> = description
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect();
            if (3..=8).contains(&words.len()) {
                by_description.entry(words).or_default().push(at);
            }
        }
    }
    let mut candidates: Vec<KnownItem> = by_description
        .into_iter()
        .filter(|(_, at)| at.len() == 1)
        .map(|(query, at)| KnownItem { query, page: at[0] })
        .collect();
    candidates.sort_by_key(|k| k.page);
    if candidates.len() < count.min(50) {
        bail!("only {} man pages have a usable one-line description", candidates.len());
    }
    let step = candidates.len() as f64 / count.min(candidates.len()) as f64;
    Ok((0..count.min(candidates.len()))
        .map(|i| (i as f64 * step) as usize)
        .map(|at| {
            std::mem::replace(
                &mut candidates[at],
                KnownItem {
                    query: Vec::new(),
                    page: 0,
                },
            )
        })
        .collect())
}

/// The text after the dash of a man page's NAME section (`cp - copy files and directories`).
fn description(text: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| l.trim() != "NAME").skip(1);
    let mut joined = String::new();
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
        joined.push(' ');
        joined.push_str(line.trim());
    }
    let (_, after) = joined.split_once(" - ").or_else(|| joined.split_once(" \u{2014} "))?;
    Some(after.trim().to_owned())
}
