//! Search benchmark: CloudSync's search index on tantivy and on the Elasticsearch API server, beside
//! SQLite FTS5 and PostgreSQL full-text search, in one run over the same data.
//!
//! The data: `BENCH_FILES` generated file records (names and folders only; default 1,000,000),
//! named with the vocabulary of the machine's man pages, and `BENCH_DOCS` of those man pages as
//! documents with contents (default 10,000; rendered with `man -l -P cat | col -bx` once, then read
//! back from `BENCH_CACHE`, default `~/.cache/cloudsync/bench/man`). All of it is one person's.
//!
//! For each engine in turn it measures:
//! 1. the indexing rate of the file records, then of the documents, each written in batches of
//!    5,000 that are durable when written (a tantivy commit, a refreshed bulk request, a committed
//!    transaction; PostgreSQL's time includes a `VACUUM ANALYZE` at the end), and the index's size
//!    on disk after each;
//! 2. closed-loop latency (p50/p95/p99) of twelve kinds of query, `BENCH_QUERIES` of each (default
//!    200, after 10 unmeasured ones), each asking for the first page of 20 and the total; CloudSync's
//!    engines also count six facets and make highlights on every query, the peers only where the
//!    kind asks for facets;
//! 3. ranking quality: MRR@10 over a known-item set: the one-line description of `BENCH_KNOWN` man
//!    pages (default 100; their NAME section, such as "copy files and directories") as the query,
//!    the page as the one right answer;
//! 4. open-loop latency: a mix of every kind of query sent at `BENCH_RATE` per second (default 50)
//!    for `BENCH_OPEN_SECONDS` (default 10) whether or not earlier ones have finished, each timed
//!    from when it was due.
//!
//! Knobs: `BENCH_EXPLAIN` (print each known item not ranked first, with what ranks above it),
//! `BENCH_ENGINES` (default `tantivy,elastic,fts5,postgres`); what the Elasticsearch API
//! server (noida-db, a Python implementation of the API that scans its documents for each query) is
//! given: `BENCH_ES_FILES` file records (default 20,000), `BENCH_ES_DOCS` documents (default 500)
//! and `BENCH_ES_QUERIES` queries of each kind (default 10, no open loop); `CLOUDSYNC_TEST_ELASTICSEARCH_URL`
//! (as `scripts/services` exports it), `CLOUDSYNC_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). The report is Markdown on stdout. Run it with:
//!
//! ```text
//! scripts/services && source ~/.cache/cloudsync/servers/env
//! cargo run --release -p cloudsync-bench --bin search
//! ```

#[path = "../common.rs"]
mod common;
mod corpus;
mod engines;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use corpus::{KnownItem, Query, Record, Text};
use engines::{Answer, Target};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const WARM_UP: usize = 10;

struct Config {
    files: usize,
    docs: usize,
    /// What the Elasticsearch API server gets: file records, documents, queries of each kind.
    es: Scope,
    queries: usize,
    known: usize,
    rate: f64,
    open_seconds: f64,
    engines: Vec<String>,
    /// Print each known item that is not ranked first, with what is above it.
    explain: bool,
    elastic: Option<String>,
    postgres: String,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let files = common::env_usize("BENCH_FILES", 1_000_000)?;
        let docs = common::env_usize("BENCH_DOCS", 10_000)?;
        let queries = common::env_usize("BENCH_QUERIES", 200)?;
        if files == 0 || docs == 0 || queries == 0 || common::env_usize("BENCH_RATE", 50)? == 0 {
            bail!("BENCH_FILES, BENCH_DOCS, BENCH_QUERIES and BENCH_RATE must be at least 1");
        }
        Ok(Self {
            files,
            docs,
            es: Scope {
                files: common::env_usize("BENCH_ES_FILES", 20_000)?.min(files),
                docs: common::env_usize("BENCH_ES_DOCS", 500)?.min(docs),
                queries: common::env_usize("BENCH_ES_QUERIES", 10)?.min(queries),
            },
            queries,
            known: common::env_usize("BENCH_KNOWN", 100)?,
            rate: common::env_usize("BENCH_RATE", 50)? as f64,
            open_seconds: common::env_usize("BENCH_OPEN_SECONDS", 10)? as f64,
            engines: std::env::var("BENCH_ENGINES")
                .unwrap_or_else(|_| "tantivy,elastic,fts5,postgres".into())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            explain: std::env::var_os("BENCH_EXPLAIN").is_some(),
            elastic: std::env::var("CLOUDSYNC_TEST_ELASTICSEARCH_URL").ok(),
            postgres: std::env::var("CLOUDSYNC_BENCH_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into()),
        })
    }
}

/// How much of the data and the queries an engine is given.
#[derive(Clone, Copy)]
struct Scope {
    files: usize,
    docs: usize,
    queries: usize,
}

#[derive(Default)]
struct Report {
    label: String,
    files: usize,
    files_seconds: f64,
    files_bytes: u64,
    docs: usize,
    docs_seconds: f64,
    total_bytes: u64,
    /// Per kind: latencies and totals.
    kinds: Vec<(Vec<Duration>, Vec<u64>)>,
    mrr: f64,
    found: usize,
    known: usize,
    open: Vec<Duration>,
    open_errors: usize,
    open_late_start: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 { format!("{v:.1}") } else { format!("{v:.0}") }
}

async fn measure(
    config: &Config,
    target: Target,
    records: &[Record],
    scope: Scope,
    sets: &[(&'static str, Vec<Query>)],
    known: &[KnownItem],
) -> anyhow::Result<Report> {
    let Scope { files, docs, queries } = scope;
    let known: Vec<&KnownItem> = known.iter().filter(|k| k.page < docs).collect();
    let mut report = Report {
        label: target.label().to_owned(),
        files,
        docs,
        known: known.len(),
        ..Report::default()
    };
    eprintln!("{}: indexing {files} file records", report.label);
    let started = Instant::now();
    target.index(records, 0..files).await?;
    target.settle().await?;
    report.files_seconds = started.elapsed().as_secs_f64();
    report.files_bytes = target.size_bytes().await?;
    eprintln!(
        "{}: {files} records in {:.1} s, {:.0} MiB; indexing {} documents",
        report.label,
        report.files_seconds,
        report.files_bytes as f64 / 1_048_576.0,
        report.docs
    );
    let started = Instant::now();
    target.index(records, config.files..config.files + docs).await?;
    target.settle().await?;
    report.docs_seconds = started.elapsed().as_secs_f64();
    report.total_bytes = target.size_bytes().await?;

    for (name, queries_of) in sets {
        let measured = &queries_of[..queries.min(queries_of.len())];
        for q in measured.iter().cycle().take(WARM_UP.min(queries)) {
            target.run(q).await.with_context(|| format!("{name}: {q:?}"))?;
        }
        let mut latencies = Vec::new();
        let mut totals = Vec::new();
        for q in measured {
            let started = Instant::now();
            let answer = target.run(q).await.with_context(|| format!("{name}: {q:?}"))?;
            latencies.push(started.elapsed());
            totals.push(answer.total);
        }
        latencies.sort();
        totals.sort_unstable();
        eprintln!(
            "{}: {name}: p50 {} ms, p95 {} ms",
            report.label,
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 95.0))
        );
        report.kinds.push((latencies, totals));
    }

    let mut reciprocal = 0.0;
    for item in &known {
        let q = Query {
            limit: 10,
            ..Query::new(Text::Words(item.query.clone()))
        };
        let Answer { top, .. } = target.run(&q).await?;
        let wanted = config.files + item.page;
        let rank = top.iter().position(|&r| r == wanted);
        if let Some(rank) = rank {
            reciprocal += 1.0 / (rank as f64 + 1.0);
            report.found += 1;
        }
        if config.explain && rank != Some(0) {
            let above: Vec<&str> = top
                .iter()
                .take(rank.unwrap_or(3).min(3))
                .map(|&r| records[r].path.as_str())
                .collect();
            eprintln!(
                "{}: {:?} ranks {} at {:?}, below {above:?}",
                report.label,
                item.query.join(" "),
                records[wanted].path,
                rank.map(|r| r + 1)
            );
        }
    }
    report.mrr = reciprocal / known.len().max(1) as f64;

    let target = Arc::new(target);
    let mix: Vec<Query> = (0..queries)
        .flat_map(|i| sets.iter().map(move |(_, qs)| qs[i % qs.len()].clone()))
        .collect();
    let count = if queries < config.queries {
        0
    } else {
        (config.rate * config.open_seconds) as usize
    };
    let interval = Duration::from_secs_f64(1.0 / config.rate);
    let begin = Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let due = begin + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        report.open_late_start = report.open_late_start.max(Instant::now().saturating_duration_since(due));
        let target = Arc::clone(&target);
        let q = mix[i % mix.len()].clone();
        tasks.spawn(async move { target.run(&q).await.map(|_| due.elapsed()) });
    }
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok(latency) => report.open.push(latency),
            Err(_) => report.open_errors += 1,
        }
    }
    report.open.sort();
    eprintln!(
        "{}: MRR@10 {:.3}; open loop p95 {} ms",
        report.label,
        report.mrr,
        ms(percentile(&report.open, 95.0))
    );
    match Arc::try_unwrap(target) {
        Ok(target) => target.drop_all().await?,
        Err(_) => bail!("a query task still holds the engine"),
    }
    Ok(report)
}

/// A table with a row for each kind of query and a column for each engine.
fn per_kind(title: &str, reports: &[Report], sets: &[(&'static str, Vec<Query>)], cell: impl Fn(&(Vec<Duration>, Vec<u64>)) -> String) {
    println!("\n### {title}\n");
    print!("| query |");
    for r in reports {
        print!(" {} |", r.label);
    }
    println!("\n|---|{}", "---:|".repeat(reports.len()));
    for (k, (name, _)) in sets.iter().enumerate() {
        print!("| {name} |");
        for r in reports {
            print!(" {} |", cell(&r.kinds[k]));
        }
        println!();
    }
}

fn print(config: &Config, reports: &[Report], sets: &[(&'static str, Vec<Query>)], known: usize) {
    let es = config.es;
    println!(
        "BENCH_FILES={} file records, BENCH_DOCS={} man pages as documents, {} queries of each kind, {known} known-item queries, open loop at {} queries/s for {} s\n",
        config.files, config.docs, config.queries, config.rate, config.open_seconds
    );
    if reports.iter().any(|r| r.files < config.files) {
        println!(
            "The Elasticsearch API server is given BENCH_ES_FILES={} file records, BENCH_ES_DOCS={} documents and BENCH_ES_QUERIES={} queries of each kind (no open loop): it answers one query in seconds at these sizes, so its figures show what its API costs, not what Elasticsearch would.\n",
            es.files, es.docs, es.queries
        );
    }
    println!("### Indexing\n");
    println!("| engine | file records | records/s | size after records (MiB) | documents | documents/s | size after all (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        println!(
            "| {} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} |",
            r.label,
            r.files,
            r.files as f64 / r.files_seconds.max(1e-9),
            r.files_bytes as f64 / 1_048_576.0,
            r.docs,
            r.docs as f64 / r.docs_seconds.max(1e-9),
            r.total_bytes as f64 / 1_048_576.0
        );
    }
    per_kind("Query latency, closed loop (ms, p50 / p95 / p99)", reports, sets, |(l, _)| {
        format!(
            "{} / {} / {}",
            ms(percentile(l, 50.0)),
            ms(percentile(l, 95.0)),
            ms(percentile(l, 99.0))
        )
    });
    per_kind("Matches per query (median total)", reports, sets, |(_, t)| {
        t.get(t.len() / 2).copied().unwrap_or(0).to_string()
    });
    println!("\n### Ranking (known items: a man page's one-line description finds the page)\n");
    println!("| engine | MRR@10 | found in the top 10 |");
    println!("|---|---:|---:|");
    for r in reports {
        println!("| {} | {:.3} | {} of {} |", r.label, r.mrr, r.found, r.known);
    }
    println!(
        "\n### Open loop: the mix of all kinds at {} queries/s (ms from when each was due)\n",
        config.rate
    );
    println!("| engine | queries | p50 | p95 | p99 | max | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.open.len(),
            ms(percentile(&r.open, 50.0)),
            ms(percentile(&r.open, 95.0)),
            ms(percentile(&r.open, 99.0)),
            ms(r.open.last().copied().unwrap_or_default()),
            r.open_errors
        );
    }
    if reports.iter().any(|r| r.open_late_start > Duration::from_millis(5)) {
        println!(
            "\n(the sender fell behind its schedule by up to {} ms; latencies count from when each query was due)",
            ms(reports.iter().map(|r| r.open_late_start).max().unwrap_or_default())
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let config = Config::from_env()?;
    let cache = std::env::var("BENCH_CACHE").map_or_else(
        |_| std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/cloudsync/bench/man"),
        std::path::PathBuf::from,
    );
    eprintln!("rendering or reading {} man pages in {}", config.docs, cache.display());
    let pages = corpus::man_pages(&cache, config.docs)?;
    let vocabulary = corpus::vocabulary(&pages, 3000);
    let mut records = corpus::file_records(config.files, &vocabulary, 1);
    records.extend(corpus::document_records(&pages, 2));
    let sets = corpus::query_sets(&records, &pages, &vocabulary, config.queries, 3);
    let known = corpus::known_items(&pages, config.known)?;
    eprintln!("{} records, {} known items", records.len(), known.len());

    let scratch = tempfile::tempdir()?;
    let mut reports = Vec::new();
    for engine in &config.engines {
        let full = Scope {
            files: config.files,
            docs: config.docs,
            queries: config.queries,
        };
        let (target, scope) = match engine.as_str() {
            "tantivy" => (Target::tantivy(&scratch.path().join("tantivy")).await?, full),
            "elastic" => {
                let Some(url) = &config.elastic else {
                    eprintln!("no CLOUDSYNC_TEST_ELASTICSEARCH_URL: the Elasticsearch API server is left out (scripts/services starts it)");
                    continue;
                };
                (Target::elastic(url).await?, config.es)
            }
            "fts5" => (Target::fts5(&scratch.path().join("fts5")).await?, full),
            "postgres" => (Target::postgres(&config.postgres).await?, full),
            other => bail!("unknown engine {other:?} in BENCH_ENGINES"),
        };
        reports.push(measure(&config, target, &records, scope, &sets, &known).await?);
    }
    common::print_heading("search", started);
    print(&config, &reports, &sets, known.len());
    Ok(())
}
