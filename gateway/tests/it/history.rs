//! Issue 21, item 3 (point-in-time replay): `cloudsync replay --at <time> --into <folder>` builds the
//! read models as they were at that time, from a copy of the log up to then, while the server
//! goes on; `cloudsync --config <folder>/cloudsync.toml serve` answers from them read-only (signing
//! in works, every other mutation is refused, nothing is recorded); `--position` does the same by
//! position; a cut-off outside the log and a folder already used are refused.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::sync::{ended, gql, login, register};
use super::{cloudsync, serve_with};

const FILES: &str = "{ files(limit: 50) { id path } }";

fn paths(addr: &str, token: &str) -> Vec<String> {
    let mut paths: Vec<String> = gql(addr, token, FILES, json!({}))["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| file["path"].as_str().expect("path").to_owned())
        .collect();
    paths.sort();
    paths
}

/// Runs `cloudsync` on the data dir `data` with `args`: whether it succeeded, and what it printed.
fn run(data: &Path, args: &[&str]) -> (bool, String) {
    let output = cloudsync(data).args(args).output().expect("cloudsync");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Connects the folder `root` as `token`'s local provider and waits for its scan to complete.
fn connect_and_scan(addr: &str, token: &str, root: &Path) {
    let connected = gql(
        addr,
        token,
        "mutation($c: JSON!) { connectProvider(provider: \"local\", credentials: $c) { scanOperationId } }",
        json!({ "c": { "root": root } }),
    );
    let scan = connected["connectProvider"]["scanOperationId"].as_str().expect("scan");
    assert_eq!(ended(addr, token, scan, Duration::from_secs(30), "the scan")["status"], "completed");
}

#[test]
fn a_replay_at_a_time_serves_the_read_models_of_then_read_only() {
    let data = std::env::temp_dir().join(format!("cloudsync-history-{}", uuid::Uuid::new_v4().simple()));
    let root = data.with_extension("files");
    std::fs::create_dir_all(&root).expect("folder");
    std::fs::write(root.join("kept.txt"), "alpha").expect("file");
    std::fs::write(root.join("plans.txt"), "beta").expect("file");
    let (_server, addr) = serve_with(cloudsync(&data));
    let token = register(&addr);
    connect_and_scan(&addr, &token, &root);
    assert_eq!(paths(&addr, &token), ["kept.txt", "plans.txt"]);
    // Someone else, erased after the moment the replay goes back to.
    let other_root = data.with_extension("other");
    std::fs::create_dir_all(&other_root).expect("folder");
    std::fs::write(other_root.join("secret-diary.txt"), "dear diary").expect("file");
    let registered: Value = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/graphql"))
        .json(
            &json!({ "query": "mutation { register(email: \"gone@example.org\", password: \"correct horse battery\") { accessToken } }" }),
        )
        .send()
        .expect("register")
        .json()
        .expect("json");
    let other = registered["data"]["register"]["accessToken"].as_str().expect("token").to_owned();
    connect_and_scan(&addr, &other, &other_root);

    // The moment to go back to; then a change.
    let then = chrono::Utc::now();
    let plans = gql(&addr, &token, FILES, json!({}))["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|file| file["path"] == "plans.txt")
        .map(|file| file["id"].clone())
        .expect("plans.txt");
    gql(
        &addr,
        &token,
        "mutation($ids: [ID!]!, $to: String!) { moveFiles(fileIds: $ids, targetPath: $to) { id } }",
        json!({ "ids": [plans], "to": "archive" }),
    );
    assert_eq!(paths(&addr, &token), ["archive/plans.txt", "kept.txt"]);
    gql(
        &addr,
        &other,
        "mutation($p: String) { deleteAccount(password: $p) }",
        json!({ "p": "correct horse battery" }),
    );

    // Replayed while the server runs.
    let into = data.with_extension("replay");
    let (ok, text) = run(
        &data,
        &["replay", "--at", &then.to_rfc3339(), "--into", &into.display().to_string()],
    );
    assert!(ok, "{text}");
    let position: i64 = text
        .split("up to position ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let config = into.join("cloudsync.toml");
    let config = config.display().to_string();

    // Its log is the log up to then, chain and all; the source's goes on past it.
    let (ok, verified) = run(&into, &["--config", &config, "verify"]);
    assert!(ok && verified.starts_with(&format!("intact: {position} events")), "{verified}");
    let (ok, source) = run(&data, &["verify"]);
    assert!(ok, "{source}");
    let source_events: i64 = source
        .trim_start_matches("intact: ")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("events");
    assert!(source_events > position, "{source} / {verified}");

    // The account erased since is in none of the replay's indexes.
    let indexed = tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let (_, index) = cloudsync_search::Engine::tantivy(into.join("search")).open().await.expect("index");
        index.count().await.expect("count")
    });
    assert_eq!(indexed, 2, "only the files of the account that is still there");

    // A replay's folder with another database (a leftover CLOUDSYNC_DATABASE_URL) does not serve.
    let source_url = format!("sqlite://{}", data.join("cloudsync.db").display());
    let wrong = cloudsync(&into)
        .env("CLOUDSYNC_DATABASE_URL", &source_url)
        .args(["--config", &config, "serve", "--bind", "127.0.0.1:0"])
        .output()
        .expect("serve");
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && said.contains("holds a replay up to position"), "{said}");

    // Served read-only: the files as they were; signing in works; changes are refused.
    let mut command = cloudsync(&into);
    command.args(["--config", &config]);
    let (_replay, replay_addr) = serve_with(command);
    let replay_token = login(&replay_addr);
    assert_eq!(paths(&replay_addr, &replay_token), ["kept.txt", "plans.txt"]);
    let hits = gql(
        &replay_addr,
        &replay_token,
        "{ searchFiles(query: \"plans\", mode: KEYWORD) { total hits { file { path } } } }",
        json!({}),
    );
    assert_eq!(hits["searchFiles"]["hits"][0]["file"]["path"], "plans.txt", "{hits}");
    let refused: Value = reqwest::blocking::Client::new()
        .post(format!("http://{replay_addr}/graphql"))
        .bearer_auth(&replay_token)
        .json(&json!({
            "query": "mutation($ids: [ID!]!, $to: String!) { moveFiles(fileIds: $ids, targetPath: $to) { id } }",
            "variables": { "ids": [plans], "to": "elsewhere" },
        }))
        .send()
        .expect("mutation")
        .json()
        .expect("json");
    assert_eq!(refused["errors"][0]["extensions"]["code"], "FORBIDDEN", "{refused}");
    assert!(root.join("archive/plans.txt").is_file(), "nothing moved");
    let (ok, after) = run(&into, &["--config", &config, "verify"]);
    assert!(
        ok && after.starts_with(&format!("intact: {position} events")),
        "nothing recorded: {after}"
    );

    // By position: the same log.
    let by_position = data.with_extension("replay-position");
    let (ok, text) = run(
        &data,
        &[
            "replay",
            "--position",
            &position.to_string(),
            "--into",
            &by_position.display().to_string(),
        ],
    );
    assert!(ok, "{text}");
    let (ok, again) = run(
        &by_position,
        &["--config", &by_position.join("cloudsync.toml").display().to_string(), "verify"],
    );
    assert!(ok, "{again}");
    let head = |text: &str| text.split(", ").take(2).collect::<Vec<_>>().join(", ");
    assert_eq!(head(&again), head(&verified), "the same events, the same chain head");

    // Refused, and nothing made: a used folder, positions outside the log, a time before it.
    let (then, into_text) = (then.to_rfc3339(), into.display().to_string());
    let refusals = [
        (vec!["replay", "--at", &then, "--into", &into_text], "already holds a log"),
        (
            vec!["replay", "--position", "0", "--into", "unused"],
            "--position must be between 1 and",
        ),
        (
            vec!["replay", "--position", "99999999", "--into", "unused"],
            "--position must be between 1 and",
        ),
        (
            vec!["replay", "--at", "2000-01-01T00:00:00Z", "--into", "unused"],
            "nothing had happened by",
        ),
    ];
    for (args, why) in refusals {
        let (ok, text) = run(&data, &args);
        assert!(!ok && text.contains(why), "{args:?}: {text}");
    }
    assert!(!Path::new("unused").exists());
    for folder in [&data, &root, &other_root, &into, &by_position] {
        std::fs::remove_dir_all(folder).ok();
    }
}
