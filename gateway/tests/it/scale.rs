//! Issue 20: the API and the workers as separate processes on PostgreSQL, RabbitMQ (a broker node of
//! the test's own), Redis and the Elasticsearch API server: a scan and a two-way sync run carry on
//! over a SIGKILLed worker and a broker restart and end once; two API processes read each other's
//! writes, one takes over projecting when the other is killed, and the read models equal a rebuild.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cloudsync_eventstore::testing::TestDatabase;
use cloudsync_queue::testing::PrivateBroker;

use super::sync::{LOG, connect, ended, gql, register};
use super::{Running, announced_address};

/// What every process of the deployment shares: the database, the broker, the keys and the chunk
/// store (each has a data dir of its own).
struct Deployment {
    database_url: String,
    amqp_url: String,
    master_key: String,
    chunk_store_key: String,
    chunks: PathBuf,
    base: PathBuf,
    /// A Redis namespace of the test's own (sessions, ceremony states).
    redis_namespace: String,
}

impl Deployment {
    fn command(&self, name: &str) -> Command {
        let data = self.base.with_extension(name);
        let mut command = Command::new(env!("CARGO_BIN_EXE_cloudsync"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CLOUDSYNC_DATA_DIR", &data)
            .env("CLOUDSYNC_DATABASE_URL", &self.database_url)
            .env("CLOUDSYNC_AMQP_URL", &self.amqp_url)
            .env("CLOUDSYNC_MASTER_KEY", &self.master_key)
            .env("CLOUDSYNC_CHUNK_STORE_KEY", &self.chunk_store_key)
            .env(
                "CLOUDSYNC_CHUNK_STORE",
                serde_json::json!({ "kind": "local", "root": self.chunks }).to_string(),
            )
            .env("CLOUDSYNC_JOB_RETRY_SECONDS", "1")
            .env("CLOUDSYNC_REDIS_URL", "redis://127.0.0.1:6379/0")
            .env("CLOUDSYNC_REDIS_NAMESPACE", &self.redis_namespace)
            .env("CLOUDSYNC_LOG", "info,cloudsync=debug");
        // The search index on the Elasticsearch API server where the suite has one (an index of
        // the test's own), shared by the API processes.
        if let Ok(url) = std::env::var("CLOUDSYNC_TEST_ELASTICSEARCH_URL") {
            command
                .env("CLOUDSYNC_ELASTICSEARCH_URL", url)
                .env("CLOUDSYNC_ELASTICSEARCH_INDEX", self.redis_namespace.trim_end_matches(':'));
        }
        command
    }

    /// Starts `cloudsync <args…> --bind 127.0.0.1:0` as `name`: the process, its pid and address.
    fn start(&self, name: &str, args: &[&str]) -> (Running, u32, String) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.with_extension("log"))
            .expect("log file");
        let mut child = self
            .command(name)
            .args(args)
            .args(["--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let pid = child.id();
        let running = Running(child);
        (running, pid, announced_address(stdout))
    }
}

fn key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// Who holds the job's lease now: the pid in its holder name `<host>/<pid>/<unique>`.
async fn lease_holder(db: &TestDatabase, job: &str) -> Option<u32> {
    let cloudsync_eventstore::DbPool::Postgres(pool) = &db.db.pool else {
        panic!("a PostgreSQL test")
    };
    let holder: Option<String> = sqlx::query_scalar("SELECT holder FROM job_leases WHERE job_id = $1")
        .bind(job)
        .fetch_optional(pool)
        .await
        .expect("job_leases");
    holder.and_then(|h| h.split('/').nth(1).and_then(|pid| pid.parse().ok()))
}

async fn events_of(db: &TestDatabase, stream: &str) -> Vec<(String, serde_json::Value)> {
    let cloudsync_eventstore::DbPool::Postgres(pool) = &db.db.pool else {
        panic!("a PostgreSQL test")
    };
    sqlx::query_as("SELECT event_type, payload FROM events WHERE stream_id = $1 ORDER BY stream_version")
        .bind(stream)
        .fetch_all(pool)
        .await
        .expect("events")
}

fn write_tree(root: &Path, files: usize) {
    for i in 0..files {
        let path = root.join(format!("dir{}/file-{i}.txt", i % 8));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("file {i} ").repeat(200 + i)).expect("write");
    }
}

#[test]
fn two_api_processes_and_three_workers_carry_a_scan_and_a_sync_over_a_killed_worker_and_a_broker_restart() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDatabase::postgres());
    let broker = PrivateBroker::start();
    let base = std::env::temp_dir().join(format!("cloudsync-scale-{}", uuid::Uuid::new_v4().simple()));
    LOG.set(base.with_extension("log")).ok();
    let deployment = Deployment {
        database_url: db.url.clone(),
        amqp_url: broker.url(),
        master_key: key(),
        chunk_store_key: key(),
        chunks: base.with_extension("chunks"),
        base: base.clone(),
        redis_namespace: format!("cloudsync-test-{}:", uuid::Uuid::new_v4().simple()),
    };
    let (source_dir, target_dir) = (base.with_extension("source"), base.with_extension("target"));
    write_tree(&source_dir, 400);
    std::fs::create_dir_all(&target_dir).expect("mkdir");
    std::fs::create_dir_all(&deployment.chunks).expect("mkdir");

    let (api, _, addr) = deployment.start("api", &["serve", "--role", "api"]);
    let (api_2, _, addr_2) = deployment.start("api-2", &["serve", "--role", "api"]);
    let mut workers = vec![
        deployment.start("worker-1", &["worker"]),
        deployment.start("worker-2", &["worker"]),
        deployment.start("worker-3", &["worker"]),
    ];
    let ready: serde_json::Value = reqwest::blocking::get(format!("http://{}/readyz", workers[0].2))
        .expect("a worker's readyz")
        .json()
        .expect("json");
    assert_eq!(ready["backend"], "postgres", "{ready}");
    let no_api = reqwest::blocking::Client::new()
        .post(format!("http://{}/graphql", workers[0].2))
        .json(&serde_json::json!({ "query": "{ __typename }" }))
        .send()
        .expect("a worker answers");
    assert_eq!(no_api.status(), 404, "a worker serves no API");

    let token = register(&addr);
    // The target takes 40 requests a second: the run lasts long enough to be interrupted. Each
    // connection starts a scan on a worker; the pair (two-way, as by default) starts a run.
    let (source, target) = (
        connect(&addr, &token, &source_dir, None),
        connect(&addr_2, &token, &target_dir, Some(40)),
    );
    let pair = gql(
        &addr_2,
        &token,
        "mutation($s: ID!, $t: ID!) { syncFolders(source: { providerId: $s, path: \"\" }, target: { providerId: $t, path: \"\" }) { id } }",
        serde_json::json!({ "s": source, "t": target }),
    );
    let operation = pair["syncFolders"]["id"].as_str().expect("run").to_owned();

    // The run starts on one of the workers: kill that one once it has done some of the work.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = "query($o: ID!) { syncStatus(operationId: $o) { status filesDone attempts } }";
    let victim = loop {
        let now = gql(&addr, &token, status, serde_json::json!({ "o": operation }))["syncStatus"].clone();
        let holder = runtime.block_on(lease_holder(&db, &operation));
        if let Some(pid) = holder
            && now["filesDone"].as_i64().unwrap_or(0) >= 20
        {
            break pid;
        }
        assert_ne!(now["status"], "completed", "the run ended before a worker could be killed: {now}");
        assert!(Instant::now() < deadline, "the run did not start on a worker: {now}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let index = workers
        .iter()
        .position(|(_, pid, _)| *pid == victim)
        .expect("the run is on one of the workers");
    let (killed, _, _) = workers.remove(index);
    super::sync::kill(killed);

    // The broker restarts while the job is handed over.
    // (It is down while its application starts again: every connection drops meanwhile.)
    broker.stop_app();
    broker.start_app();

    let outcome = ended(
        &addr_2,
        &token,
        &operation,
        Duration::from_secs(180),
        "a worker killed, the broker restarted",
    );
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert_eq!(
        super::sync::tree(&target_dir),
        super::sync::tree(&source_dir),
        "the target holds the source"
    );

    // Every job (the two scans, the run) ended exactly once, the run as completed.
    let events = runtime.block_on(events_of(&db, &format!("sync-{operation}")));
    let ends: Vec<&String> = events
        .iter()
        .map(|(kind, _)| kind)
        .filter(|kind| matches!(kind.as_str(), "SyncJobCompleted" | "SyncJobFailed" | "SyncJobCancelled"))
        .collect();
    assert_eq!(ends, ["SyncJobCompleted"], "{events:?}");
    let jobs: Vec<(String, i64, i64)> = runtime.block_on(async {
        let cloudsync_eventstore::DbPool::Postgres(pool) = &db.db.pool else {
            unreachable!()
        };
        sqlx::query_as(
            "SELECT stream_id, COUNT(*) FILTER (WHERE event_type = 'SyncJobCreated'), \
                    COUNT(*) FILTER (WHERE event_type IN ('SyncJobCompleted', 'SyncJobFailed', 'SyncJobCancelled')) \
             FROM events WHERE stream_id LIKE 'sync-%' GROUP BY stream_id",
        )
        .fetch_all(pool)
        .await
        .expect("jobs")
    });
    assert_eq!(jobs.len(), 3, "two scans and a run: {jobs:?}");
    assert!(jobs.iter().all(|(_, created, ended)| (*created, *ended) == (1, 1)), "{jobs:?}");

    // The read models the API processes built are the ones a rebuild of the log makes.
    let live = runtime.block_on(read_models(&db));
    drop(workers);
    drop(api);
    drop(api_2);
    // Into the shared search and vector indexes, one API process projected at a time: none found
    // the other had moved the index on.
    let log = std::fs::read_to_string(base.with_extension("log")).unwrap_or_default();
    let clashes: Vec<&str> = log.lines().filter(|l| l.contains("indexing failed")).collect();
    assert!(clashes.is_empty(), "{clashes:?}");
    equal_to_a_rebuild(&runtime, &db, &deployment, &live);
    drop(broker);

    runtime.block_on(db.cleanup());
    for suffix in [
        "api", "api-2", "worker-1", "worker-2", "worker-3", "rebuild", "source", "target", "chunks",
    ] {
        let _ = std::fs::remove_dir_all(base.with_extension(suffix));
    }
}

/// `docker-compose.yml` runs the roles this binary has, with flags it takes: each service built
/// from the `cloudsync` anchor has a command that the command line parses.
#[test]
fn docker_compose_runs_the_binarys_roles_with_its_flags() {
    use clap::Parser as _;
    let compose = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml")).expect("docker-compose.yml");
    let (mut service, mut ours, mut commands) = (String::new(), false, Vec::new());
    for line in compose.lines() {
        if let Some(name) = line
            .strip_prefix("  ")
            .and_then(|l| l.strip_suffix(':'))
            .filter(|n| !n.starts_with(' '))
        {
            (service, ours) = (name.to_owned(), false);
        } else if line.trim() == "<<: *cloudsync" {
            ours = true;
        } else if let Some(command) = line.trim().strip_prefix("command: ")
            && ours
        {
            let args: Vec<String> = serde_json::from_str(command).unwrap_or_else(|e| panic!("{service}: {command}: {e}"));
            commands.push((service.clone(), args));
        }
    }
    let roles: Vec<(&str, &str)> = commands
        .iter()
        .map(|(service, args)| {
            let parsed = cloudsync_gateway::cli::Cli::try_parse_from(std::iter::once("cloudsync".to_owned()).chain(args.iter().cloned()))
                .unwrap_or_else(|e| panic!("{service}: {args:?} is not a command of the binary: {e}"));
            let role = match parsed.command {
                cloudsync_gateway::cli::Command::Serve { role, .. } => format!("{role:?}"),
                cloudsync_gateway::cli::Command::Worker { .. } => "Worker".to_owned(),
                other => panic!("{service} runs {other:?}"),
            };
            (
                service.as_str(),
                if role == "Api" {
                    "api"
                } else if role == "Worker" {
                    "worker"
                } else {
                    "all"
                },
            )
        })
        .collect();
    assert_eq!(roles, [("api", "api"), ("worker", "worker")], "{commands:?}");
}

/// A GraphQL request to `addr` as `token`, after `after` (`X-CloudSync-After`) where given: the
/// answer's data and its `X-CloudSync-Position`.
fn gql_after(addr: &str, token: &str, after: Option<i64>, query: &str, variables: serde_json::Value) -> (serde_json::Value, i64) {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .json(&serde_json::json!({ "query": query, "variables": variables }));
    if let Some(after) = after {
        request = request.header("X-CloudSync-After", after.to_string());
    }
    let response = request.send().expect("an answer");
    let position: i64 = response
        .headers()
        .get("x-cloudsync-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("every answer says its position");
    let body: serde_json::Value = response.json().expect("json");
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(
        body["extensions"]["position"], position,
        "the header and the extension agree: {body}"
    );
    (body["data"].clone(), position)
}

/// `live` (the read models as the processes built them, all stopped now) is what `cloudsync
/// projections rebuild all` makes of the log.
fn equal_to_a_rebuild(runtime: &tokio::runtime::Runtime, db: &TestDatabase, deployment: &Deployment, live: &[Vec<Vec<Option<String>>>]) {
    let rebuild = deployment
        .command("rebuild")
        .args(["projections", "rebuild", "all"])
        .output()
        .expect("rebuild");
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    let rebuilt = runtime.block_on(read_models(db));
    for ((name, live), rebuilt) in cloudsync_projections::PROJECTORS.iter().zip(live).zip(&rebuilt) {
        assert_eq!(live, rebuilt, "{name}: the live read model is what a rebuild makes");
    }
}

/// The eight read-model tables as rows of text.
async fn read_models(db: &TestDatabase) -> Vec<Vec<Vec<Option<String>>>> {
    let reads = cloudsync_projections::ReadModels::new(db.db.pool.clone());
    let mut tables = Vec::new();
    for table in cloudsync_projections::PROJECTORS {
        tables.push(reads.dump(table).await.expect("a read model"));
    }
    tables
}

#[test]
fn two_api_processes_read_their_writes_and_one_takes_over_projecting_when_the_other_is_killed() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDatabase::postgres());
    let base = std::env::temp_dir().join(format!("cloudsync-replicas-{}", uuid::Uuid::new_v4().simple()));
    LOG.set(base.with_extension("log")).ok();
    let deployment = Deployment {
        database_url: db.url.clone(),
        // No worker runs here: the broker is never asked.
        amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        master_key: key(),
        chunk_store_key: key(),
        chunks: base.with_extension("chunks"),
        base: base.clone(),
        redis_namespace: format!("cloudsync-test-{}:", uuid::Uuid::new_v4().simple()),
    };
    std::fs::create_dir_all(&deployment.chunks).expect("mkdir");
    let start = |name: &str| {
        let (running, _, addr) = deployment.start(name, &["serve", "--role", "api"]);
        (running, addr)
    };
    // The first process projects (it took the lock before the second started).
    let leads = "This process projects the read models now.";
    let log_lines = |line: &str| {
        std::fs::read_to_string(base.with_extension("log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(line))
            .count()
    };
    let (first, first_addr) = start("api-1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_lines(leads) == 0 {
        assert!(Instant::now() < deadline, "the first process did not take the projectors' lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_second, second_addr) = start("api-2");
    let token = register(&first_addr);
    let folders: Vec<PathBuf> = (0..12).map(|i| base.with_extension(format!("folder-{i}"))).collect();
    for folder in &folders {
        std::fs::create_dir_all(folder).expect("mkdir");
    }
    let connect = "mutation($c: JSON!) { connectProvider(provider: \"local\", credentials: $c) { id } }";
    let listed = "query { providers { id } }";

    // Written on one process, read on the other with the position the first gave.
    let mut position = 0;
    for (i, folder) in folders.iter().take(6).enumerate() {
        let (writer, reader) = if i % 2 == 0 {
            (&first_addr, &second_addr)
        } else {
            (&second_addr, &first_addr)
        };
        let (_, written) = gql_after(writer, &token, None, connect, serde_json::json!({ "c": { "root": folder } }));
        assert!(
            written > position,
            "a write moves the caller's position on: {written} after {position}"
        );
        position = written;
        let (seen, _) = gql_after(reader, &token, Some(position), listed, serde_json::json!({}));
        assert_eq!(
            seen["providers"].as_array().map(Vec::len),
            Some(i + 1),
            "the other process shows the write: {seen}"
        );
    }

    // The projecting process is killed: the other takes over, and writes and reads go on there.
    super::sync::kill(first);
    for (i, folder) in folders.iter().enumerate().skip(6) {
        let (_, written) = gql_after(&second_addr, &token, None, connect, serde_json::json!({ "c": { "root": folder } }));
        let (seen, _) = gql_after(&second_addr, &token, Some(written), listed, serde_json::json!({}));
        assert_eq!(seen["providers"].as_array().map(Vec::len), Some(i + 1), "{seen}");
    }
    assert_eq!(log_lines(leads), 2, "the second process took over projecting");
    for (after, why) in [("soon", "a malformed position"), ("999999999", "a position beyond the log's head")] {
        let refused = reqwest::blocking::Client::new()
            .post(format!("http://{second_addr}/graphql"))
            .bearer_auth(&token)
            .header("X-CloudSync-After", after)
            .json(&serde_json::json!({ "query": listed }))
            .send()
            .expect("an answer");
        assert_eq!(refused.status(), 400, "{why} is refused");
    }

    // The read models the processes built are the ones a rebuild of the log makes.
    let live = runtime.block_on(read_models(&db));
    drop(_second);
    equal_to_a_rebuild(&runtime, &db, &deployment, &live);
    runtime.block_on(db.cleanup());
    for suffix in ["api-1", "api-2", "rebuild", "chunks"] {
        let _ = std::fs::remove_dir_all(base.with_extension(suffix));
    }
    for folder in folders {
        let _ = std::fs::remove_dir_all(folder);
    }
}

/// The Kubernetes example (`deploy/kubernetes`), checked offline: every reference resolves, each
/// container runs a command of this binary with probes on ports it declares, and the configuration
/// it gives is one the binary accepts.
#[test]
fn the_kubernetes_example_holds_together_and_runs_the_binarys_roles() {
    use clap::Parser as _;
    use serde::Deserialize as _;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");
    let mut docs: Vec<serde_json::Value> = Vec::new();
    for file in ["config.yaml", "api.yaml", "worker.yaml"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap_or_else(|e| panic!("{file}: {e}"));
        for doc in serde_norway::Deserializer::from_str(&text) {
            docs.push(serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}")));
        }
    }
    for doc in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].is_string(), "every manifest has {field}: {doc}");
        }
        assert!(doc["metadata"]["name"].is_string(), "every manifest is named: {doc}");
    }
    let of_kind = |kind: &str| docs.iter().filter(move |d| d["kind"] == kind).collect::<Vec<_>>();
    let config_maps: Vec<&str> = of_kind("ConfigMap").iter().filter_map(|d| d["metadata"]["name"].as_str()).collect();

    // The configuration is one the binary takes.
    for map in of_kind("ConfigMap") {
        let vars: Vec<(String, String)> = map["data"]
            .as_object()
            .expect("data")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("text").to_owned()))
            .collect();
        assert!(vars.iter().all(|(k, _)| k.starts_with("CLOUDSYNC_")), "{vars:?}");
        let config = cloudsync_gateway::Config::load(None, vars.clone()).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(config.amqp_url.is_some(), "the workers are reached through RabbitMQ");
        assert!(config.database_url.as_deref().is_some_and(|u| u.starts_with("postgres://")));
    }

    let mut roles = Vec::new();
    for deployment in of_kind("Deployment") {
        let name = deployment["metadata"]["name"].as_str().expect("name");
        let spec = &deployment["spec"];
        let labels = spec["template"]["metadata"]["labels"].as_object().expect("pod labels");
        for (key, value) in spec["selector"]["matchLabels"].as_object().expect("selector") {
            assert_eq!(labels.get(key), Some(value), "{name}: its selector picks its own pods");
        }
        for container in spec["template"]["spec"]["containers"].as_array().expect("containers") {
            let args: Vec<String> = container["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("text").to_owned())
                .collect();
            let parsed = cloudsync_gateway::cli::Cli::try_parse_from(std::iter::once("cloudsync".to_owned()).chain(args.iter().cloned()))
                .unwrap_or_else(|e| panic!("{name}: {args:?} is not a command of the binary: {e}"));
            roles.push(match parsed.command {
                cloudsync_gateway::cli::Command::Serve { role, .. } => format!("{name}: {role:?}"),
                cloudsync_gateway::cli::Command::Worker { .. } => format!("{name}: Worker"),
                other => panic!("{name} runs {other:?}"),
            });
            let ports: Vec<&str> = container["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            for probe in ["readinessProbe", "livenessProbe"] {
                let port = container[probe]["httpGet"]["port"].as_str().expect("a named port");
                assert!(ports.contains(&port), "{name}: {probe} on a port it declares");
            }
            let bind = args.iter().skip_while(|a| *a != "--bind").nth(1).expect("--bind");
            let declared: Vec<String> = container["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .map(|p| p["containerPort"].to_string())
                .collect();
            assert!(
                declared.iter().any(|p| bind.ends_with(&format!(":{p}"))),
                "{name}: it listens on the port it declares"
            );
            for source in container["envFrom"].as_array().into_iter().flatten() {
                let map = source["configMapRef"]["name"].as_str().expect("a config map");
                assert!(config_maps.contains(&map), "{name}: the config map {map} is in the example");
            }
        }
    }
    roles.sort();
    assert_eq!(roles, ["cloudsync-api: Api", "cloudsync-worker: Worker"]);

    for service in of_kind("Service") {
        let selector = service["spec"]["selector"].as_object().expect("selector");
        let targets: Vec<_> = of_kind("Deployment")
            .into_iter()
            .filter(|d| {
                let labels = &d["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| &labels[k] == v)
            })
            .collect();
        assert_eq!(targets.len(), 1, "a service reaches one deployment: {service}");
        let port = service["spec"]["ports"][0]["targetPort"].as_str().expect("a named target port");
        let container = &targets[0]["spec"]["template"]["spec"]["containers"][0];
        assert!(
            container["ports"].as_array().expect("ports").iter().any(|p| p["name"] == port),
            "the service's target port is the container's"
        );
    }
    let autoscalers = of_kind("HorizontalPodAutoscaler");
    assert!(!autoscalers.is_empty(), "the API scales on its own");
    for hpa in autoscalers {
        let target = &hpa["spec"]["scaleTargetRef"];
        assert_eq!(target["kind"], "Deployment");
        assert!(
            of_kind("Deployment").iter().any(|d| d["metadata"]["name"] == target["name"]),
            "the autoscaler scales a deployment of the example: {hpa}"
        );
        assert!(hpa["spec"]["minReplicas"].as_u64() <= hpa["spec"]["maxReplicas"].as_u64());
    }
}
