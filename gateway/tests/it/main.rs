//! Drives the real `cloudsync` binary: start with nothing configured but a data dir, answer HTTP,
//! stop on SIGTERM, then migrate and replay from the same data dir.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn cloudsync(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cloudsync"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CLOUDSYNC_DATA_DIR", data_dir);
    command
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn post(addr: &str, body: &str) -> serde_json::Value {
    post_as(addr, None, body)
}

fn post_as(addr: &str, token: Option<&str>, body: &str) -> serde_json::Value {
    let client = reqwest::blocking::Client::new();
    let mut request = client.post(format!("http://{addr}/graphql"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .expect("request")
        .json()
        .expect("json")
}

#[test]
fn serve_from_an_empty_data_dir_then_migrate_and_replay() {
    let data = std::env::temp_dir().join(format!("cloudsync-bin-{}", uuid::Uuid::new_v4().simple()));
    let mut child = cloudsync(&data)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut server = Running(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the banner");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("address in the banner")
        .to_owned();

    let health = reqwest::blocking::get(format!("http://{addr}/healthz")).expect("healthz");
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = reqwest::blocking::get(format!("http://{addr}/readyz"))
        .expect("readyz")
        .json()
        .expect("json");
    assert_eq!(ready["backend"], "sqlite");
    let graphiql = reqwest::blocking::get(format!("http://{addr}/graphql"))
        .expect("graphiql")
        .text()
        .expect("html");
    assert!(graphiql.to_lowercase().contains("graphiql"));

    let registered = post(
        &addr,
        r#"{"query":"mutation { register(email: \"bin@example.org\", password: \"correct horse battery\") { accessToken user { id } } }"}"#,
    );
    let user = registered["data"]["register"]["user"]["id"].as_str().expect("user id").to_owned();
    let token = registered["data"]["register"]["accessToken"].as_str().expect("token").to_owned();
    let folder = data.with_extension("files");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("a.txt"), "a").expect("write");
    let connect = serde_json::json!({
        "query": "mutation($c: JSON!) { connectProvider(provider: \"local\", credentials: $c) { id } }",
        "variables": { "c": { "root": folder } },
    });
    let connected = post_as(&addr, Some(&token), &connect.to_string());
    let provider = connected["data"]["connectProvider"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{connected}"))
        .to_owned();
    assert!(data.join("cloudsync.db").is_file(), "the embedded database lives in the data dir");
    assert!(data.join("jwt-secret").is_file(), "the signing key is generated into the data dir");

    // SIGTERM: graceful shutdown, exit status 0.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");

    let migrate = cloudsync(&data).arg("migrate").output().expect("migrate");
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));

    let replay = cloudsync(&data).args(["replay", "--user", &user]).output().expect("replay");
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let text = String::from_utf8(replay.stdout).expect("utf-8");
    assert!(text.lines().next().is_some_and(|l| l.contains("UserRegistered")), "{text}");

    let rebuild = cloudsync(&data).args(["projections", "rebuild", "all"]).output().expect("rebuild");
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    let unknown = cloudsync(&data).args(["projections", "rebuild", "nope"]).output().expect("rebuild");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown projector"));

    // `cloudsync scan` with the server stopped: it runs the scan itself and reports the result.
    std::fs::write(folder.join("b.txt"), "b").expect("write");
    let scan = cloudsync(&data).args(["scan", &provider]).output().expect("scan");
    assert!(scan.status.success(), "{}", String::from_utf8_lossy(&scan.stderr));
    assert!(
        String::from_utf8_lossy(&scan.stdout).contains("completed: 2 files"),
        "{}",
        String::from_utf8_lossy(&scan.stdout)
    );
    let history = cloudsync(&data).args(["replay", "--user", &user]).output().expect("replay");
    let discovered = String::from_utf8_lossy(&history.stdout)
        .lines()
        .filter(|l| l.contains(" FileDiscovered "))
        .count();
    assert_eq!(discovered, 2, "the rescan recorded only the new file");
    let unknown = cloudsync(&data)
        .args(["scan", "00000000-0000-0000-0000-000000000000"])
        .output()
        .expect("scan");
    assert!(!unknown.status.success());
    std::fs::remove_dir_all(&folder).ok();

    let bad = cloudsync(&data)
        .env("CLOUDSYNC_TOKEN_TTL_MINUTES", "soon")
        .arg("migrate")
        .output()
        .expect("bad config");
    assert_eq!(bad.status.code(), Some(2));
    std::fs::remove_dir_all(&data).ok();
}

/// Issue 3: with trace logging on, connecting and scanning an S3 provider never writes its secret to
/// the log.
#[test]
fn secrets_never_reach_the_log() {
    let endpoint = std::env::var("CLOUDSYNC_TEST_S3_ENDPOINT").expect("CLOUDSYNC_TEST_S3_ENDPOINT: run through scripts/test");
    let created = reqwest::blocking::Client::new()
        .put(format!("{endpoint}/cloudsync-logs"))
        .send()
        .expect("S3 reachable");
    assert!(created.status().is_success() || created.status().as_u16() == 409);
    let data = std::env::temp_dir().join(format!("cloudsync-logs-{}", uuid::Uuid::new_v4().simple()));
    let mut child = cloudsync(&data)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("CLOUDSYNC_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut server = Running(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the banner");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("address")
        .to_owned();

    let secret = format!("log-secret-{}", uuid::Uuid::new_v4().simple());
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let register = serde_json::json!({
        "query": "mutation($p: String!) { register(email: \"logs@example.org\", password: $p) { accessToken } }",
        "variables": { "p": password },
    });
    let registered = post(&addr, &register.to_string());
    let token = registered["data"]["register"]["accessToken"].as_str().expect("token").to_owned();
    let connect = serde_json::json!({
        "query": "mutation($c: JSON!) { connectProvider(provider: \"s3\", credentials: $c) { scanOperationId } }",
        "variables": { "c": { "endpoint": endpoint, "bucket": "cloudsync-logs", "access_key_id": "logs", "secret_access_key": secret, "root": "/logs/" } },
    });
    let connected = post_as(&addr, Some(&token), &connect.to_string());
    let operation = connected["data"]["connectProvider"]["scanOperationId"]
        .as_str()
        .unwrap_or_else(|| panic!("{connected}"))
        .to_owned();
    let status =
        serde_json::json!({ "query": "query($o: ID!) { syncStatus(operationId: $o) { status } }", "variables": { "o": operation } });
    let deadline = Instant::now() + Duration::from_secs(30);
    while post_as(&addr, Some(&token), &status.to_string())["data"]["syncStatus"]["status"] != "completed" {
        assert!(Instant::now() < deadline, "the scan did not complete");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let _ = server.0.wait();
    let log = log.join().expect("log reader");
    assert!(log.contains("Provider connected."), "the log was captured: {log}");
    assert!(log.contains("Scan finished."), "the log covers the scan");
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(&secret)).collect();
    assert!(leaks.is_empty(), "the S3 secret reached the log: {leaks:#?}");
    assert!(!log.contains(&password), "the account password reached the log");
    std::fs::remove_dir_all(&data).ok();
}
