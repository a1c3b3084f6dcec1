//! Issue 21, item 4: analytics exports of the log, the files and the sync operations, as Parquet and
//! as CSV, from the command line and as an administrator's job. Every export is read back with
//! pyarrow and with DuckDB (`scripts/export-readers`) and compared with the log and the read models:
//! counts, values, types; sealed fields stay sealed, hashes of secrets are redacted, an erased
//! account is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use cloudsync_domain::events::{ExportFormat, ExportSubject};
use cloudsync_eventstore::RecordedEvent;
use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(exports_read_back_with_pyarrow_and_duckdb_as_the_log_and_read_models_hold_them);

/// Reads an export with pyarrow (every row, the schema) and DuckDB (count, column types).
const READ_BACK: &str = r#"
import datetime, json, sys
import duckdb, pyarrow.csv, pyarrow.parquet
path, fmt = sys.argv[1], sys.argv[2]
if fmt == "parquet":
    table = pyarrow.parquet.read_table(path)
    relation = "read_parquet(?)"
    compression = {pyarrow.parquet.ParquetFile(path).metadata.row_group(0).column(i).compression
                   for i in range(table.num_columns)} if table.num_rows else set()
else:
    table = pyarrow.csv.read_csv(path)
    relation = "read_csv(?, header = true)"
    compression = set()
def plain(value):
    return value.isoformat() if isinstance(value, datetime.datetime) else value
rows = [{k: plain(v) for k, v in row.items()} for row in table.to_pylist()]
con = duckdb.connect()
count = con.execute(f"SELECT count(*) FROM {relation}", [path]).fetchone()[0]
types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {relation})", [path]).fetchall())
print(json.dumps({"rows": rows, "schema": {f.name: str(f.type) for f in table.schema},
                  "duckdb_count": count, "duckdb_types": types, "compression": sorted(compression)}))
"#;

/// The Python that has the readers; `None` (the test says so and passes) outside CI when missing.
fn readers() -> Option<String> {
    let python = std::env::var("CLOUDSYNC_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = std::process::Command::new(&python)
        .args(["-c", "import pyarrow, duckdb"])
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{python} lacks pyarrow or duckdb (scripts/export-readers installs them)"
    );
    eprintln!("skipped: {python} lacks pyarrow or duckdb (run scripts/export-readers)");
    None
}

fn read_back(python: &str, path: &Path, format: ExportFormat) -> Value {
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(READ_BACK)
        .arg(path)
        .arg(format.extension())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "reading {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn micros(value: &Value) -> i64 {
    DateTime::parse_from_rfc3339(value.as_str().expect("a time"))
        .unwrap_or_else(|e| panic!("{value}: {e}"))
        .timestamp_micros()
}

async fn export_cli(h: &Harness, what: ExportSubject, format: ExportFormat, output: &Path, since: Option<DateTime<Utc>>) {
    let config = cloudsync_gateway::Config {
        data_dir: h.db.dir().join("data"),
        database_url: Some(h.db.url.clone()),
        ..cloudsync_gateway::Config::default()
    };
    let command = cloudsync_gateway::cli::Command::Export {
        what,
        format: Some(format),
        output: output.to_path_buf(),
        since,
        until: None,
    };
    cloudsync_gateway::cli::run(command, config).await.expect("the export runs");
}

async fn login(h: &Harness, email: &str) -> String {
    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }";
    let data = h.ok(None, login, json!({ "e": email, "p": "correct horse battery" })).await;
    data["login"]["accessToken"].as_str().expect("token").to_owned()
}

async fn exports_read_back_with_pyarrow_and_duckdb_as_the_log_and_read_models_hold_them(h: &Harness) {
    let Some(python) = readers() else { return };
    let scanned = h.scanned("analyst@example.org").await;
    // Someone who leaves: everything of theirs is left out of every export.
    let (leaver, leaver_id) = h.register("leaver@example.org").await;
    let theirs = h.db.dir().join("leaver");
    std::fs::create_dir_all(&theirs).expect("folder");
    std::fs::write(theirs.join("secret-plans.txt"), "the leaver's file").expect("file");
    h.connect_local(&leaver, &theirs).await;
    h.ok(
        Some(&leaver),
        "mutation { deleteAccount(password: \"correct horse battery\") }",
        json!({}),
    )
    .await;
    h.server().app().caught_up().await;

    let out = h.db.dir().join("exports");
    std::fs::create_dir_all(&out).expect("folder");
    let log: Vec<RecordedEvent> = h.server().app().db.stored.read_all(0, 100_000).await.expect("the log");
    let head = log.last().expect("events").position;
    let erased = uuid::Uuid::parse_str(&leaver_id).expect("id");
    let about_leaver = |e: &RecordedEvent| {
        e.metadata.actor_id == Some(erased)
            || ["owner_id", "user_id"]
                .iter()
                .any(|key| e.payload.get(*key).and_then(Value::as_str) == Some(leaver_id.as_str()))
    };
    assert!(log.iter().any(about_leaver), "the leaver did things");

    for format in [ExportFormat::Parquet, ExportFormat::Csv] {
        // The log: every event up to (at least) the head before the export, in order, as stored.
        let path = out.join(format!("events.{}", format.extension()));
        export_cli(h, ExportSubject::Events, format, &path, None).await;
        let read = read_back(&python, &path, format);
        let all = read["rows"].as_array().expect("rows");
        assert_eq!(
            read["duckdb_count"].as_u64(),
            Some(all.len() as u64),
            "DuckDB counts what pyarrow reads"
        );
        // (The log may have grown since it was read here: what came later is compared below.)
        let rows: Vec<&Value> = all.iter().filter(|r| r["position"].as_i64() <= Some(head)).collect();
        let expected: Vec<&RecordedEvent> = log.iter().filter(|e| !about_leaver(e)).collect();
        assert_eq!(rows.len(), expected.len(), "{format:?}: every event but the erased account's");
        for (row, event) in rows.iter().zip(&expected) {
            assert_eq!(row["position"], json!(event.position));
            assert_eq!(row["event_type"], json!(event.event_type));
            assert_eq!(row["stream_id"], json!(event.stream_id));
            assert_eq!(row["stream_version"], json!(event.stream_version));
            assert_eq!(micros(&row["occurred_at"]), event.metadata.occurred_at.timestamp_micros());
            assert_eq!(row["correlation_id"], json!(event.metadata.correlation_id.to_string()));
            let payload: Value = serde_json::from_str(row["payload"].as_str().expect("payload")).expect("json");
            let stored = cloudsync_domain::events::redacted(event.payload.clone(), false);
            assert_eq!(payload, stored, "the payload as stored, hashes redacted");
        }
        let text = serde_json::to_string(all).expect("json");
        assert!(
            !text.contains("leaver@example.org") && !text.contains(&leaver_id),
            "nothing of the erased account"
        );
        assert!(!text.contains("analyst@example.org"), "addresses stay sealed");
        assert!(!text.contains("$argon2"), "password hashes are redacted");
        let registered = rows.iter().find(|r| r["event_type"] == "UserRegistered").expect("a registration");
        let payload: Value = serde_json::from_str(registered["payload"].as_str().expect("payload")).expect("json");
        assert_eq!(payload["password_hash"], "[redacted]");
        // Typed columns: integers, UTC timestamps, nullable ids.
        assert_eq!(read["schema"]["position"], "int64");
        assert_eq!(read["duckdb_types"]["position"], "BIGINT");
        assert_eq!(read["duckdb_types"]["occurred_at"], "TIMESTAMP WITH TIME ZONE");
        if format == ExportFormat::Parquet {
            assert_eq!(read["schema"]["occurred_at"], "timestamp[us, tz=UTC]");
            assert_eq!(read["schema"]["schema_version"], "int32");
            assert_eq!(read["compression"], json!(["ZSTD"]));
        }

        // A window: only what happened from a moment on.
        let since = expected[expected.len() / 2].metadata.occurred_at;
        let path = out.join(format!("events-since.{}", format.extension()));
        export_cli(h, ExportSubject::Events, format, &path, Some(since)).await;
        let windowed = read_back(&python, &path, format);
        let rows = windowed["rows"].as_array().expect("rows");
        let in_window = log.iter().filter(|e| !about_leaver(e) && e.metadata.occurred_at >= since).count();
        assert_eq!(rows.iter().filter(|r| r["position"].as_i64() <= Some(head)).count(), in_window);
        assert!(rows.iter().all(|r| micros(&r["occurred_at"]) >= since.timestamp_micros()));

        // An empty window is an empty table with its columns (a CSV with its header).
        let path = out.join(format!("nothing.{}", format.extension()));
        export_cli(
            h,
            ExportSubject::Events,
            format,
            &path,
            Some(Utc::now() + chrono::Duration::days(1)),
        )
        .await;
        let empty = read_back(&python, &path, format);
        assert_eq!(empty["rows"], json!([]));
        assert_eq!(empty["duckdb_count"], json!(0));
        assert!(empty["schema"]["payload"].is_string(), "{empty}");

        // The files read model: the analyst's files, the leaver's none.
        let path = out.join(format!("files.{}", format.extension()));
        export_cli(h, ExportSubject::Files, format, &path, None).await;
        let read = read_back(&python, &path, format);
        let rows = read["rows"].as_array().expect("rows");
        assert_eq!(read["duckdb_count"].as_u64(), Some(rows.len() as u64));
        let exported: BTreeMap<String, &Value> = rows.iter().map(|r| (r["path"].as_str().expect("path").to_owned(), r)).collect();
        let listed: BTreeSet<String> = scanned.files.keys().cloned().collect();
        assert_eq!(
            exported.keys().cloned().collect::<BTreeSet<_>>(),
            listed,
            "{format:?}: every file, and only the analyst's"
        );
        for (path, file) in &scanned.files {
            let row = exported[path];
            assert_eq!(row["file_id"], file["id"]);
            assert_eq!(row["user_id"], json!(scanned.user));
            assert_eq!(row["provider_id"], json!(scanned.provider));
            assert_eq!(row["size_bytes"], file["sizeBytes"]);
        }
        assert_eq!(read["duckdb_types"]["size_bytes"], "BIGINT");
        assert_eq!(read["duckdb_types"]["modified_at"], "TIMESTAMP WITH TIME ZONE");

        // Sync operations: the analyst's scan, with its counts.
        let path = out.join(format!("ops.{}", format.extension()));
        export_cli(h, ExportSubject::SyncOperations, format, &path, None).await;
        let read = read_back(&python, &path, format);
        let rows = read["rows"].as_array().expect("rows");
        assert_eq!(read["duckdb_count"].as_u64(), Some(rows.len() as u64));
        assert!(rows.iter().all(|r| r["user_id"] == json!(scanned.user)), "{rows:?}");
        let scan = rows
            .iter()
            .find(|r| r["operation_id"] == json!(scanned.operation))
            .expect("the scan");
        assert_eq!(scan["kind"], "scan");
        assert_eq!(scan["status"], "completed");
        assert_eq!(scan["files_done"], json!(scanned.files.len()));
        assert!(scan["completed_at"].is_string());
        assert_eq!(read["duckdb_types"]["paused"], "BOOLEAN");
    }

    // As a job: administrators only; bad input changes nothing.
    let export = "mutation($w: ExportSubject!, $f: ExportFormat, $s: DateTime, $u: DateTime) { \
                  exportAnalytics(what: $w, format: $f, since: $s, until: $u) { id kind status exportFile } }";
    assert_eq!(
        h.error_code(Some(&scanned.token), export, json!({ "w": "FILES" })).await,
        "FORBIDDEN"
    );
    crate::identity::grant(h, "analyst@example.org", "admin").await;
    let admin = login(h, "analyst@example.org").await;
    let now = Utc::now();
    let jobs = async || {
        let log = h.server().app().db.events.read_all(0, 100_000).await.expect("the log");
        log.iter().filter(|e| e.event_type == "SyncJobCreated").count()
    };
    let before = jobs().await;
    assert_eq!(
        h.error_code(Some(&admin), export, json!({ "w": "EVENTS", "s": now, "u": now }))
            .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(jobs().await, before, "no job was started");
    let started = h.ok(Some(&admin), export, json!({ "w": "SYNC_OPERATIONS", "f": "PARQUET" })).await["exportAnalytics"].clone();
    assert_eq!(started["kind"], "export");
    let operation = started["id"].as_str().expect("id");
    assert_eq!(started["exportFile"], json!(format!("{operation}.parquet")));
    let done = h.wait_for_operation(&admin, operation).await;
    let file = h.config.exports().join(started["exportFile"].as_str().expect("file"));
    let read = read_back(&python, &file, ExportFormat::Parquet);
    let rows = read["rows"].as_array().expect("rows");
    assert_eq!(done["filesDone"], json!(rows.len()), "the job counts the rows it wrote");
    assert!(rows.iter().any(|r| r["operation_id"] == json!(scanned.operation)));
    // Downloaded by administrators and auditors only, byte for byte.
    let url = format!("{}/exports/{}", h.url, started["exportFile"].as_str().expect("file"));
    let got = h.client.get(&url).bearer_auth(&admin).send().await.expect("download");
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.expect("body"), std::fs::read(&file).expect("file"));
    let refused = h.client.get(&url).bearer_auth(&scanned.token).send().await.expect("download");
    assert_eq!(refused.status(), 403, "the role comes with the token");
    assert_eq!(h.client.get(&url).send().await.expect("download").status(), 401);
    let other = format!("{}/exports/{}.csv", h.url, uuid::Uuid::new_v4());
    assert_eq!(
        h.client.get(&other).bearer_auth(&admin).send().await.expect("download").status(),
        404
    );
    let leftovers: Vec<_> = std::fs::read_dir(h.config.exports())
        .expect("folder")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left: {leftovers:?}");
}
