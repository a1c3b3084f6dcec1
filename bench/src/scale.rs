//! Issue 20: throughput as workers are added. `BENCH_SCALE_PROVIDERS` local folders (default 6) of
//! `BENCH_SCALE_FILES` files each (default 2,000, 1 to 8 KiB) are connected (each connection starts a
//! scan) and then synced into empty folders (one pair each), on PostgreSQL, first by one `cloudsync
//! serve` (everything in one process, the in-process queue), then by one `cloudsync serve --role
//! api` and 1, 2 and 3 `cloudsync worker` processes taking jobs from RabbitMQ (a broker node of the
//! benchmark's own). Files per second from the first request to the last job's end, for scans and
//! for sync runs; each setting on a fresh database and fresh targets.
//!
//! ```sh
//! cargo build --release -p cloudsync-gateway -p cloudsync-bench
//! target/release/scale        # (in CARGO_TARGET_DIR); needs PostgreSQL (CLOUDSYNC_TEST_POSTGRES_URL) and rabbitmq-server
//! ```

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use cloudsync_queue::testing::PrivateBroker;
use serde_json::{Value, json};
use sqlx::Connection as _;

use common::{cloudsync_binary, env_usize, print_heading};

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn admin_url() -> String {
    std::env::var("CLOUDSYNC_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// One deployment's environment: a fresh database, the broker, keys and a shared chunk store.
struct Setting {
    database_url: String,
    amqp_url: Option<String>,
    keys: (String, String),
    work: PathBuf,
}

impl Setting {
    fn command(&self, name: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(cloudsync_binary()?);
        command
            .env("CLOUDSYNC_DATA_DIR", self.work.join(name))
            .env("CLOUDSYNC_DATABASE_URL", &self.database_url)
            .env("CLOUDSYNC_MASTER_KEY", &self.keys.0)
            .env("CLOUDSYNC_CHUNK_STORE_KEY", &self.keys.1)
            .env(
                "CLOUDSYNC_CHUNK_STORE",
                json!({ "kind": "local", "root": self.work.join("chunks") }).to_string(),
            )
            // No models and no OCR: the content pipeline reads texts only.
            .env("CLOUDSYNC_MODELS_DIR", self.work.join("no-models"))
            .env("CLOUDSYNC_OCR_LANGUAGES", "")
            .env("CLOUDSYNC_RATE_LIMIT_API_PER_MINUTE", "1000000")
            .env("CLOUDSYNC_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().create(true).append(true).open(self.work.join("log"))?,
            ));
        if let Some(url) = &self.amqp_url {
            command.env("CLOUDSYNC_AMQP_URL", url);
        }
        Ok(command)
    }

    /// Starts `cloudsync <args> --bind 127.0.0.1:0`: the process and the address it announced.
    fn start(&self, name: &str, args: &[&str]) -> anyhow::Result<(Child, String)> {
        let mut child = self.command(name)?.args(args).args(["--bind", "127.0.0.1:0"]).spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .with_context(|| format!("no address in {line:?}"))?
            .to_owned();
        Ok((child, addr))
    }
}

async fn gql(client: &reqwest::Client, addr: &str, token: Option<&str>, query: &str, variables: Value) -> anyhow::Result<Value> {
    let mut request = client
        .post(format!("http://{addr}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer: Value = request.send().await?.json().await?;
    if let Some(errors) = answer.get("errors") {
        bail!("{errors}");
    }
    Ok(answer["data"].clone())
}

/// Waits until every operation has completed; fails on one that failed.
async fn all_completed(client: &reqwest::Client, addr: &str, token: &str, operations: &[String]) -> anyhow::Result<()> {
    let query = "query($o: ID!) { syncStatus(operationId: $o) { status error } }";
    let deadline = Instant::now() + Duration::from_secs(1800);
    for operation in operations {
        loop {
            let status = gql(client, addr, Some(token), query, json!({ "o": operation })).await?["syncStatus"].clone();
            match status["status"].as_str() {
                Some("completed") => break,
                Some("failed" | "cancelled") => bail!("operation {operation} ended badly: {status}"),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!("operation {operation} did not end: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Scans and syncs `sources` with `workers` worker processes (0: one `cloudsync serve`): seconds
/// for the scans and for the sync runs.
async fn run(workers: usize, broker: &PrivateBroker, sources: &[PathBuf], base: &Path) -> anyhow::Result<(f64, f64)> {
    let database = format!("cs_bench_scale_{}", uuid::Uuid::new_v4().simple());
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.context("PostgreSQL")?;
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut conn).await?;
    let base_url = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    let work = base.join(format!("workers-{workers}"));
    std::fs::create_dir_all(work.join("chunks"))?;
    let setting = Setting {
        database_url: format!("{base_url}/{database}"),
        amqp_url: (workers > 0).then(|| broker.url()),
        keys: (key(), key()),
        work: work.clone(),
    };
    let mut processes = Processes(Vec::new());
    let addr = if workers == 0 {
        let (child, addr) = setting.start("serve", &["serve"])?;
        processes.0.push(child);
        addr
    } else {
        let (child, addr) = setting.start("api", &["serve", "--role", "api"])?;
        processes.0.push(child);
        for n in 0..workers {
            let (child, _) = setting.start(&format!("worker-{n}"), &["worker"])?;
            processes.0.push(child);
        }
        addr
    };
    let client = reqwest::Client::new();
    let registered = gql(
        &client,
        &addr,
        None,
        "mutation { register(email: \"scale@example.org\", password: \"correct horse battery\") { accessToken } }",
        json!({}),
    )
    .await?;
    let token = registered["register"]["accessToken"].as_str().context("token")?.to_owned();
    let connect = "mutation($c: JSON!) { connectProvider(provider: \"local\", credentials: $c) { id scanOperationId } }";

    let started = Instant::now();
    let (mut ids, mut scans) = (Vec::new(), Vec::new());
    for source in sources {
        let connected = gql(&client, &addr, Some(&token), connect, json!({ "c": { "root": source } })).await?;
        ids.push(connected["connectProvider"]["id"].as_str().context("id")?.to_owned());
        scans.push(connected["connectProvider"]["scanOperationId"].as_str().context("scan")?.to_owned());
    }
    all_completed(&client, &addr, &token, &scans).await?;
    let scanned = started.elapsed().as_secs_f64();

    let (mut targets, mut target_scans) = (Vec::new(), Vec::new());
    for n in 0..sources.len() {
        let folder = work.join(format!("target-{n}"));
        std::fs::create_dir_all(&folder)?;
        let connected = gql(&client, &addr, Some(&token), connect, json!({ "c": { "root": folder } })).await?;
        targets.push(connected["connectProvider"]["id"].as_str().context("id")?.to_owned());
        target_scans.push(connected["connectProvider"]["scanOperationId"].as_str().context("scan")?.to_owned());
    }
    all_completed(&client, &addr, &token, &target_scans).await?;

    let started = Instant::now();
    let mut runs = Vec::new();
    for (source, target) in ids.iter().zip(&targets) {
        let pair = gql(
            &client,
            &addr,
            Some(&token),
            "mutation($s: ID!, $t: ID!) { syncFolders(source: { providerId: $s, path: \"\" }, target: { providerId: $t, path: \"\" }) { id } }",
            json!({ "s": source, "t": target }),
        )
        .await?;
        runs.push(pair["syncFolders"]["id"].as_str().context("run")?.to_owned());
    }
    all_completed(&client, &addr, &token, &runs).await?;
    let synced = started.elapsed().as_secs_f64();

    drop(processes);
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    let _ = std::fs::remove_dir_all(&work);
    Ok((scanned, synced))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let began = Instant::now();
    let providers = env_usize("BENCH_SCALE_PROVIDERS", 6)?;
    let files = env_usize("BENCH_SCALE_FILES", 2000)?;
    let base = std::env::temp_dir().join(format!("cloudsync-bench-scale-{}", uuid::Uuid::new_v4().simple()));
    let mut sources = Vec::new();
    for p in 0..providers {
        let root = base.join(format!("source-{p}"));
        for f in 0..files {
            let path = root.join(format!("dir{}/file-{f}.bin", f % 20));
            std::fs::create_dir_all(path.parent().context("parent")?)?;
            let len = 1024 + (f * 37 + p * 101) % 7168;
            let mut bytes = vec![0_u8; len];
            blake3::Hasher::new()
                .update(&(p as u64).to_le_bytes())
                .update(&(f as u64).to_le_bytes())
                .finalize_xof()
                .fill(&mut bytes);
            std::fs::write(path, bytes)?;
        }
        sources.push(root);
    }
    let broker = tokio::task::spawn_blocking(PrivateBroker::start).await?;
    let total = (providers * files) as f64;
    print_heading("scale", began);
    println!("{providers} providers of {files} files each (1 to 8 KiB), local folders, PostgreSQL, RabbitMQ");
    println!();
    println!("| processes | scans: seconds | scans: files/s | sync runs: seconds | sync runs: files/s |");
    println!("|---|---:|---:|---:|---:|");
    for workers in [0, 1, 2, 3] {
        let (scanned, synced) = run(workers, &broker, &sources, &base).await?;
        let name = if workers == 0 {
            "one `cloudsync serve`".to_owned()
        } else {
            format!("api + {workers} worker{}", if workers > 1 { "s" } else { "" })
        };
        println!(
            "| {name} | {scanned:.1} | {:.0} | {synced:.1} | {:.0} |",
            total / scanned,
            total / synced
        );
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
