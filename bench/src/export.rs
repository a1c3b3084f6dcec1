//! Analytics export: `cloudsync export` of a large log (`BENCH_EXPORT_EVENTS` domain events of a
//! scanned tree, 1,000,000 by default) and of the files read model it projects to, as Parquet and as
//! CSV, on SQLite and on PostgreSQL. Each export is its own process under `/usr/bin/time`, so its
//! peak memory is the export's alone: it must stay flat however long the log is.
//!
//! Peers in the same run, on the same data: the database's own CSV writer (`psql \copy` of the
//! events table, `sqlite3 -csv`), and DuckDB (PyPI, `scripts/export-readers`) turning that CSV into
//! zstd Parquet, a columnar engine's encoder. Every export is read back with DuckDB and its row count
//! checked against the log.
//!
//! ```text
//! cargo build --release -p cloudsync-gateway --bin cloudsync
//! cargo run --release -p cloudsync-bench --bin export
//! ```
//!
//! Settings: `BENCH_EXPORT_EVENTS`, `CLOUDSYNC_BENCH_POSTGRES_URL` (an admin URL; a database of the
//! benchmark's own is made and dropped), `BENCH_BACKENDS` (`sqlite,postgres`), `BENCH_KEEP` (keep the
//! SQLite run's folder, to profile an export of it).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use cloudsync_eventstore::Database;
use common::{Measured, cloudsync_binary, env_usize, measure};

mod common;
mod tree;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The events table's columns, as the peers write them.
const EVENT_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, schema_version, occurred_at, actor_id, correlation_id, causation_id, payload";

struct Row {
    backend: &'static str,
    what: String,
    rows: u64,
    measured: Measured,
    out_mib: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = env_usize("BENCH_EXPORT_EVENTS", 1_000_000)? as u64;
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let admin = std::env::var("CLOUDSYNC_BENCH_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
    let python = std::env::var("CLOUDSYNC_PYTHON").unwrap_or_else(|_| "python3".into());
    let binary = cloudsync_binary()?;
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let work = tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()))?;
        let (url, backend, drop_database) = match backend {
            "sqlite" => (format!("sqlite://{}", work.path().join("cloudsync.db").display()), "SQLite", None),
            "postgres" => {
                let name = format!("cs_bench_export_{}", uuid::Uuid::new_v4().simple());
                psql(&admin, &format!("CREATE DATABASE {name}"))?;
                let (base, _) = admin.rsplit_once('/').context("a PostgreSQL URL ends in a database")?;
                (format!("{base}/{name}"), "PostgreSQL", Some(name))
            }
            other => bail!("unknown backend {other}"),
        };
        let result = run(backend, &url, events, &binary, &python, work.path(), &mut rows).await;
        if std::env::var_os("BENCH_KEEP").is_some() && drop_database.is_none() {
            eprintln!("[{backend}] kept in {}", work.keep().display());
            continue;
        }
        if let Some(name) = drop_database {
            psql(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        }
        result?;
    }
    common::print_heading("Analytics export", started);
    println!("| backend | export | rows | seconds | rows/s | output MiB | peak memory MiB |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.0} |",
            row.backend,
            row.what,
            row.rows,
            row.measured.seconds,
            row.rows as f64 / row.measured.seconds.max(0.001),
            row.out_mib,
            row.measured.peak_mib
        );
    }
    Ok(())
}

async fn run(
    backend: &'static str,
    url: &str,
    events: u64,
    binary: &Path,
    python: &str,
    work: &Path,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    eprintln!("[{backend}] appending {events} domain events and projecting them");
    let db = Database::connect(url, true).await.context("open the database")?;
    let head = {
        tree::append_tree(db.events.as_ref(), events).await?;
        cloudsync_projections::rebuild_many(&db, &cloudsync_projections::PROJECTORS)
            .await
            .context("project the read models")?;
        db.events.head().await?
    };
    let files: i64 = cloudsync_eventstore::on_pool!(&db.pool, |p| sqlx::query_scalar("SELECT count(*) FROM files").fetch_one(p).await)?;
    db.close().await;

    let data = work.join("data");
    for (what, format, expected) in [
        ("events", "parquet", head),
        ("events", "csv", head),
        ("files", "parquet", files),
        ("files", "csv", files),
    ] {
        eprintln!("[{backend}] cloudsync export --what {what} --format {format}");
        let output = work.join(format!("{what}.{format}"));
        let measured = measure(
            Command::new(binary)
                .args(["export", "--what", what, "--format", format, "--output"])
                .arg(&output)
                .env("CLOUDSYNC_DATA_DIR", &data)
                .env("CLOUDSYNC_DATABASE_URL", url)
                .env("CLOUDSYNC_LOG", "warn"),
        )?;
        check_count(python, &output, format, expected)?;
        rows.push(Row {
            backend,
            what: format!("CloudSync {what} → {format}"),
            rows: u64::try_from(expected)?,
            measured,
            out_mib: mib(&output)?,
        });
    }

    // The peers: the database's own CSV of the events table, then DuckDB's Parquet of that CSV.
    let csv = work.join("peer-events.csv");
    let query = format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY position");
    let measured = if url.starts_with("sqlite:") {
        let file = url.trim_start_matches("sqlite://");
        let shell = format!("sqlite3 -csv -header '{file}' \"{query}\" > '{}'", csv.display());
        measure(Command::new("sh").args(["-c", &shell]))?
    } else {
        measure(Command::new("psql").args([url, "-qc", &format!("\\copy ({query}) TO '{}' CSV HEADER", csv.display())]))?
    };
    check_count(python, &csv, "csv", head)?;
    rows.push(Row {
        backend,
        what: if url.starts_with("sqlite:") {
            "peer: sqlite3 -csv events"
        } else {
            "peer: psql \\copy events CSV"
        }
        .into(),
        rows: u64::try_from(head)?,
        measured,
        out_mib: mib(&csv)?,
    });
    let parquet = work.join("peer-events.parquet");
    let convert = "import duckdb, sys; duckdb.connect().execute(f\"COPY (SELECT * FROM read_csv('{sys.argv[1]}', header = true)) TO '{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd)\")";
    let measured = measure(Command::new(python).args(["-c", convert]).arg(&csv).arg(&parquet))?;
    check_count(python, &parquet, "parquet", head)?;
    rows.push(Row {
        backend,
        what: "peer: DuckDB that CSV → zstd parquet".into(),
        rows: u64::try_from(head)?,
        measured,
        out_mib: mib(&parquet)?,
    });
    Ok(())
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let status = Command::new("psql").args([url, "-qc", sql]).status().context("running psql")?;
    anyhow::ensure!(status.success(), "psql {sql:?} failed");
    Ok(())
}

fn mib(path: &Path) -> anyhow::Result<f64> {
    Ok(std::fs::metadata(path)?.len() as f64 / 1_048_576.0)
}

/// Reads the export back with DuckDB and checks its row count.
fn check_count(python: &str, path: &Path, format: &str, expected: i64) -> anyhow::Result<()> {
    let reader = if format == "parquet" { "read_parquet" } else { "read_csv" };
    let script =
        format!("import duckdb, sys; print(duckdb.connect().execute(f\"SELECT count(*) FROM {reader}('{{sys.argv[1]}}')\").fetchone()[0])");
    let out = Command::new(python).args(["-c", &script]).arg(path).output()?;
    anyhow::ensure!(
        out.status.success(),
        "DuckDB could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let count: i64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    anyhow::ensure!(count == expected, "{} holds {count} rows, not {expected}", path.display());
    Ok(())
}
