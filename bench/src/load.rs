//! Issue 21, item 7: load and soak. One `cloudsync serve` (release build, SQLite, the per-user rate
//! limit lifted) with one user whose local provider holds `BENCH_LOAD_FILES` files (default
//! 100,000, scanned through the API), driven by an open-loop generator: requests are sent at fixed
//! times whatever the answers do, and each latency runs from the moment its request was due, so a
//! slow answer cannot hold the next ones back and hide itself (no coordinated omission). For `me`,
//! `files` (the first page, and a page 50,000 files deep) and `searchFiles`, at each rate of
//! `BENCH_LOAD_RATES` (default 100, 500, 1000 requests/s) for `BENCH_LOAD_SECONDS` (default 10)
//! each: p50, p95, p99, the largest and the errors; beside a bare axum endpoint (an answer of the
//! same size, nothing else) in this process. Then closed-loop throughput (`BENCH_LOAD_CONNECTIONS`
//! loops, default 8, each sending its next request when its answer is in), and a soak at
//! `BENCH_SOAK_RATE` (default 200) requests/s for `BENCH_SOAK_SECONDS` (default 600) mixing the
//! three queries, the server's resident memory sampled every 10 s. `BENCH_LOAD_ONLY=<name>` runs
//! one kind of request alone (with the bare endpoint), to profile the server under it;
//! `BENCH_SERVER_BINARY=<path>` runs another build of the server (`--no-default-features`: the
//! platform's allocator instead of jemalloc); `BENCH_SERVER_PRELOAD=<library>` starts the server
//! with a library preloaded (another allocator, for a build without jemalloc).
//!
//! ```sh
//! cargo build --release -p cloudsync-gateway -p cloudsync-bench
//! target/release/load        # (in CARGO_TARGET_DIR)
//! ```

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use common::{cloudsync_binary, env_usize, print_heading};

/// The server, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(work: &Path) -> anyhow::Result<Self> {
        // Another build of the server (one without jemalloc, `--no-default-features`, say), to
        // compare them on one machine.
        let binary = std::env::var_os("BENCH_SERVER_BINARY").map_or_else(cloudsync_binary, |b| Ok(b.into()))?;
        let mut command = Command::new(binary);
        // Another allocator for a server built without jemalloc (`libmimalloc.so.2`,
        // `libjemalloc.so.2` from Debian's packages); the default build's own symbols come first.
        if let Some(preload) = std::env::var_os("BENCH_SERVER_PRELOAD") {
            command.env("LD_PRELOAD", preload);
        }
        let mut child = command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("CLOUDSYNC_DATA_DIR", work.join("data"))
            .env("CLOUDSYNC_RATE_LIMIT_API_PER_MINUTE", "100000000")
            .env("CLOUDSYNC_MODELS_DIR", work.join("no-models"))
            .env("CLOUDSYNC_OCR_LANGUAGES", "")
            .env("CLOUDSYNC_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(work.join("server.log"))?))
            .spawn()
            .context("starting cloudsync serve")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .context("no address in the banner")?
            .to_owned();
        Ok(Self { child, addr })
    }

    /// Resident memory, MiB.
    fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .context("VmRSS")?
            .parse()?;
        Ok(kib / 1024.0)
    }

    /// CPU seconds used so far (user and system).
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // The fields after the command's name (which may hold spaces, in parentheses).
        let fields: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    /// Waits until the server has been idle (under 5% of a core) for two seconds in a row: the
    /// projectors, the search index and the content pipeline have caught up with the scan.
    async fn settle(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        let mut quiet = 0;
        while quiet < 2 {
            let before = self.cpu_seconds()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            quiet = if self.cpu_seconds()? - before < 0.05 { quiet + 1 } else { 0 };
            if Instant::now() > deadline {
                bail!("the server did not settle");
            }
        }
        Ok(())
    }
}

/// A GraphQL call with a bearer token: its `data`, or an error.
async fn call(client: &reqwest::Client, url: &str, token: &str, query: &str, variables: Value) -> anyhow::Result<Value> {
    let answer: Value = client
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?
        .json()
        .await?;
    if let Some(errors) = answer.get("errors") {
        bail!("{query}: {errors}");
    }
    Ok(answer["data"].clone())
}

/// One kind of request the generator sends: a method, a URL and a body.
#[derive(Clone)]
struct Request {
    name: &'static str,
    url: String,
    token: Option<String>,
    body: Option<Arc<Vec<u8>>>,
}

impl Request {
    fn graphql(name: &'static str, url: &str, token: &str, query: &str, variables: Value) -> Self {
        Self {
            name,
            url: url.to_owned(),
            token: Some(token.to_owned()),
            body: Some(Arc::new(json!({ "query": query, "variables": variables }).to_string().into_bytes())),
        }
    }

    /// Sends it: a success without GraphQL errors, or what went wrong.
    async fn send(&self, client: &reqwest::Client) -> Result<(), String> {
        let mut request = match &self.body {
            Some(body) => client
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body.as_ref().clone()),
            None => client.get(&self.url),
        };
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| format!("transport: {err}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|err| format!("reading the answer: {err}"))?;
        // An answer with errors starts its JSON with them or has them after `data`.
        if !status.is_success() || body.windows(9).any(|w| w == b"\"errors\":") {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(format!("HTTP {status}: {text}"));
        }
        Ok(())
    }
}

/// Latencies (from when each request was due) and errors of one run.
struct Run {
    latencies: Vec<Duration>,
    errors: usize,
    /// The first few distinct errors.
    causes: Vec<String>,
    seconds: f64,
}

impl Run {
    fn new(capacity: usize) -> Self {
        Self {
            latencies: Vec::with_capacity(capacity),
            errors: 0,
            causes: Vec::new(),
            seconds: 0.0,
        }
    }

    /// Counts one answer.
    fn count(&mut self, answer: Result<Duration, String>) {
        match answer {
            Ok(latency) => self.latencies.push(latency),
            Err(cause) => {
                self.errors += 1;
                self.keep(cause);
            }
        }
    }

    /// Keeps `cause` if it is new and fewer than three are kept.
    fn keep(&mut self, cause: String) {
        if self.causes.len() < 3 && !self.causes.contains(&cause) {
            self.causes.push(cause);
        }
    }

    /// Adds `other`'s answers.
    fn join(&mut self, other: Self) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        for cause in other.causes {
            self.keep(cause);
        }
    }

    /// The first errors, on standard error.
    fn report_causes(&self, name: &str) {
        for cause in &self.causes {
            eprintln!("{name}: error: {cause}");
        }
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1].as_secs_f64() * 1000.0
    }

    /// A table row: the request, what was offered (a rate, or connections), what was sent per
    /// second, the percentiles and the largest latency (ms), the errors.
    fn row(&self, name: &str, offered: &str) -> String {
        format!(
            "| {name} | {offered} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            (self.latencies.len() + self.errors) as f64 / self.seconds,
            self.percentile(50.0),
            self.percentile(95.0),
            self.percentile(99.0),
            self.latencies.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
            self.errors
        )
    }
}

/// Sends `requests` in turn at `rate` per second for `seconds`, open-loop.
async fn open_loop(client: &reqwest::Client, requests: &[Request], rate: f64, seconds: f64) -> Run {
    let count = (rate * seconds).round() as usize;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (client, request) = (client.clone(), requests[i % requests.len()].clone());
        tasks.push(tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), request.send(&client)).await {
                Ok(Ok(())) => Ok(due.elapsed()),
                Ok(Err(cause)) => Err(cause),
                Err(_) => Err("no answer within 10 s".to_owned()),
            }
        }));
    }
    let mut run = Run::new(count);
    for task in tasks {
        run.count(task.await.unwrap_or_else(|err| Err(format!("the task failed: {err}"))));
    }
    run.seconds = started.elapsed().as_secs_f64().max(seconds);
    run.latencies.sort();
    run
}

/// `connections` loops sending `request` back to back for `seconds`.
async fn closed_loop(client: &reqwest::Client, request: &Request, connections: usize, seconds: f64) -> Run {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..connections {
        let (client, request) = (client.clone(), request.clone());
        loops.push(tokio::spawn(async move {
            let mut run = Run::new(0);
            while Instant::now() < until {
                let sent = Instant::now();
                run.count(request.send(&client).await.map(|()| sent.elapsed()));
            }
            run
        }));
    }
    let mut run = Run::new(0);
    for task in loops {
        match task.await {
            Ok(answers) => run.join(answers),
            Err(err) => run.count(Err(format!("a loop failed: {err}"))),
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    run.latencies.sort();
    run
}

/// The bare endpoint: axum answering every POST to `/graphql` with `answer`, on a runtime of
/// its own (two threads, as the server has two cores to share).
fn bare_endpoint(answer: Vec<u8>) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let answer = bytes_of(answer);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/graphql",
                axum::routing::post(move || {
                    let answer = answer.clone();
                    async move { ([("content-type", "application/json")], answer) }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    Ok(format!("http://{addr}/graphql"))
}

fn bytes_of(answer: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(answer)
}

/// `count` files of 16 bytes in folders of 1,000, named so that a prefix search finds one.
fn make_files(root: &Path, count: usize) -> anyhow::Result<()> {
    for i in 0..count {
        let folder = root.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&folder)?;
        }
        std::fs::write(folder.join(format!("report-{i:06}.bin")), format!("{i:016}"))?;
    }
    Ok(())
}

fn rates() -> anyhow::Result<Vec<f64>> {
    std::env::var("BENCH_LOAD_RATES")
        .unwrap_or_else(|_| "100,500,1000".into())
        .split(',')
        .map(|rate| rate.trim().parse::<f64>().context("BENCH_LOAD_RATES: numbers, comma-separated"))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let files = env_usize("BENCH_LOAD_FILES", 100_000)?;
    let seconds = env_usize("BENCH_LOAD_SECONDS", 10)? as f64;
    let connections = env_usize("BENCH_LOAD_CONNECTIONS", 8)?;
    let soak_rate = env_usize("BENCH_SOAK_RATE", 200)? as f64;
    let soak_seconds = env_usize("BENCH_SOAK_SECONDS", 600)?;
    let rates = rates()?;
    let work: PathBuf = std::env::temp_dir().join(format!("cloudsync-load-{}", uuid::Uuid::new_v4().simple()));
    let root = work.join("files");
    make_files(&root, files)?;
    let server = Server::start(&work)?;
    let url = format!("http://{}/graphql", server.addr);
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;

    // One user, one provider of `files` files, scanned through the API.
    let registered = client
        .post(&url)
        .json(
            &json!({ "query": "mutation { register(email: \"load@example.org\", password: \"correct horse battery\") { accessToken } }" }),
        )
        .send()
        .await?
        .json::<Value>()
        .await?;
    let token = registered["data"]["register"]["accessToken"]
        .as_str()
        .with_context(|| format!("register: {registered}"))?
        .to_owned();
    let scan_started = Instant::now();
    let connected = call(
        &client,
        &url,
        &token,
        "mutation($c: JSON!) { connectProvider(provider: \"local\", credentials: $c) { id scanOperationId } }",
        json!({ "c": { "root": root } }),
    )
    .await?;
    let provider = connected["connectProvider"]["id"].as_str().context("provider")?.to_owned();
    let scan = connected["connectProvider"]["scanOperationId"].as_str().context("scan")?.to_owned();
    loop {
        let status = call(
            &client,
            &url,
            &token,
            "query($o: ID!) { syncStatus(operationId: $o) { status } }",
            json!({ "o": scan }),
        )
        .await?;
        match status["syncStatus"]["status"].as_str() {
            Some("completed") => break,
            Some("failed" | "cancelled") => bail!("the scan ended as {status}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let scanned = scan_started.elapsed().as_secs_f64();
    server.settle().await?;
    let settled = scan_started.elapsed().as_secs_f64();

    // The cursor 50,000 files deep (or half-way), walked in pages of 1,000.
    let page = "query($p: String, $l: Int!, $a: String) { files(provider: $p, limit: $l, after: $a) { cursor } }";
    let (mut after, mut walked) = (Value::Null, 0);
    while walked < (files / 2).min(50_000) {
        let page = call(&client, &url, &token, page, json!({ "p": provider, "l": 1000, "a": after })).await?;
        let items = page["files"].as_array().context("files")?;
        let last = items.last().context("a page")?;
        after = last["cursor"].clone();
        walked += items.len();
    }
    let first_query = "query($p: String) { files(provider: $p, limit: 50) { id name path sizeBytes modifiedAt } }";
    let deep_query = "query($p: String, $a: String) { files(provider: $p, limit: 50, after: $a) { id name path sizeBytes modifiedAt } }";
    let kinds = [
        Request::graphql("me", &url, &token, "{ me { id email } }", json!({})),
        Request::graphql("files, first page", &url, &token, first_query, json!({ "p": provider })),
        Request::graphql("files, 50,000 deep", &url, &token, deep_query, json!({ "p": provider, "a": after })),
        Request::graphql(
            "searchFiles",
            &url,
            &token,
            "query($q: String!) { searchFiles(query: $q, first: 20, mode: KEYWORD) { total hits { file { id path } } } }",
            json!({ "q": "report-004242" }),
        ),
    ];
    // The bare endpoint answers what `files` answers.
    let sample = client
        .post(&url)
        .bearer_auth(&token)
        .body(kinds[1].body.as_deref().cloned().unwrap_or_default())
        .header("content-type", "application/json")
        .send()
        .await?
        .bytes()
        .await?;
    let bare = Request {
        name: "bare axum",
        url: bare_endpoint(sample.to_vec())?,
        token: None,
        body: kinds[1].body.clone(),
    };
    // `BENCH_LOAD_ONLY` (a request's name, such as `files, first page`) measures that one alone, for a
    // profile of the server under it.
    let only = std::env::var("BENCH_LOAD_ONLY").ok();
    let kinds: Vec<Request> = kinds
        .into_iter()
        .filter(|k| only.as_deref().is_none_or(|only| k.name == only))
        .collect();
    // A first pass warms the connections and the caches.
    for kind in kinds.iter().chain([&bare]) {
        open_loop(&client, std::slice::from_ref(kind), 100.0, 1.0).await;
    }

    print_heading("load", started);
    println!(
        "{files} files scanned in {scanned:.1} s (projected, indexed and read by {settled:.1} s); server resident memory {:.0} MiB before the load.\n",
        server.rss_mib()?
    );
    println!("Open loop, {seconds:.0} s per row; latency in ms from when each request was due:\n");
    println!("| request | offered/s | sent/s | p50 | p95 | p99 | max | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for rate in &rates {
        for kind in [&bare].into_iter().chain(kinds.iter()) {
            let run = open_loop(&client, std::slice::from_ref(kind), *rate, seconds).await;
            println!("{}", run.row(kind.name, &format!("{rate:.0}")));
            run.report_causes(kind.name);
        }
    }

    println!("\nClosed loop, {connections} connections, {seconds:.0} s each (each sends its next request once its answer is in):\n");
    println!("| request | connections | answered/s | p50 | p95 | p99 | max | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for kind in [&bare].into_iter().chain(kinds.iter()) {
        let cpu = server.cpu_seconds()?;
        let run = closed_loop(&client, kind, connections, seconds).await;
        let used = server.cpu_seconds()? - cpu;
        println!("{}", run.row(kind.name, &connections.to_string()));
        run.report_causes(kind.name);
        if kind.name != "bare axum" && !run.latencies.is_empty() {
            eprintln!(
                "{}: server CPU {:.3} ms per answer",
                kind.name,
                used * 1000.0 / run.latencies.len() as f64
            );
        }
    }

    if soak_seconds > 0 {
        println!(
            "\nSoak: {soak_rate:.0} requests/s for {soak_seconds} s, `me`, `files` (first and deep page) and `searchFiles` in turn; the server's resident memory every 10 s:\n"
        );
        let mut samples = vec![server.rss_mib()?];
        let mut soak = Run::new(0);
        for _ in 0..soak_seconds.div_ceil(10) {
            soak.join(open_loop(&client, &kinds, soak_rate, 10.0).await);
            samples.push(server.rss_mib()?);
        }
        soak.latencies.sort();
        soak.seconds = soak_seconds as f64;
        println!("| request | offered/s | sent/s | p50 | p95 | p99 | max | errors |");
        println!("|---|---|---|---|---|---|---|---|");
        println!("{}", soak.row("mixed", &format!("{soak_rate:.0}")));
        soak.report_causes("soak");
        let (low, high) = samples
            .iter()
            .fold((f64::MAX, f64::MIN), |(low, high), s| (low.min(*s), high.max(*s)));
        println!(
            "\nResident memory (MiB), every 10 s: {}\nlowest {low:.0}, highest {high:.0}; first minute's end {:.0}, last {:.0}.",
            samples.iter().map(|s| format!("{s:.0}")).collect::<Vec<_>>().join(" "),
            samples.get(6).copied().unwrap_or(f64::NAN),
            samples.last().copied().unwrap_or(f64::NAN)
        );
    }
    drop(server);
    if std::env::var_os("BENCH_KEEP").is_none() {
        std::fs::remove_dir_all(&work).ok();
    } else {
        eprintln!("kept {}", work.display());
    }
    Ok(())
}
