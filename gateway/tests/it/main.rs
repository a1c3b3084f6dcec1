//! Drives the real `cloudsync` binary: start with nothing configured but a data dir, answer HTTP,
//! stop on SIGTERM, then migrate and replay from the same data dir.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod history;
mod patch;
mod ready;
mod scale;
mod schema;
mod search;
mod sync;
mod tls;
mod trace;
mod verify;

fn cloudsync(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cloudsync"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CLOUDSYNC_DATA_DIR", data_dir);
    command
}

struct Running(Child);

/// Starts `cloudsync serve` on a free port of the data dir `data`: the server and its address.
fn serve(data: &std::path::Path) -> (Running, String) {
    serve_with(cloudsync(data))
}

/// Starts `command` (`cloudsync` with its environment) as `serve` on a free port: the server and its
/// address.
fn serve_with(mut command: Command) -> (Running, String) {
    let mut child = command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let server = Running(child);
    let addr = announced_address(stdout);
    (server, addr)
}

/// The address a server started with `--bind 127.0.0.1:0` announces on its first line of output.
fn announced_address(stdout: std::process::ChildStdout) -> String {
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the banner");
    // `http://host:port/…`, or `https://` over TLS.
    line.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("address in the banner")
        .to_owned()
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server started by [`serve_traced`]: its address and its log (stderr), read line by line as it comes.
struct Traced {
    server: Running,
    addr: String,
    lines: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

/// Starts `command` as `cloudsync serve` on a free port at `CLOUDSYNC_LOG=trace`. Its log is drained
/// from the start, so a full pipe never blocks the server.
fn serve_traced(mut command: Command) -> Traced {
    let mut child = command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("CLOUDSYNC_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let server = Running(child);
    let addr = announced_address(stdout);
    Traced {
        server,
        addr,
        lines,
        reader,
    }
}

impl Traced {
    /// Stops the server with SIGTERM and returns the log lines not yet received.
    fn stop(mut self) -> Vec<String> {
        let pid = self.server.0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let _ = self.server.0.wait();
        self.reader.join().expect("log reader");
        self.lines.try_iter().collect()
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
    let (mut server, addr) = serve(&data);

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
    assert!(data.join("master-key").is_file(), "the master key is generated into the data dir");

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

    // The first signing key was created on the first start; a rotation adds one and retires it.
    let listed = cloudsync(&data).args(["keys", "list"]).output().expect("keys list");
    let listed = String::from_utf8(listed.stdout).expect("utf-8");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("EdDSA") && listed.trim_end().ends_with("signs"), "{listed}");
    let rotated = cloudsync(&data).args(["keys", "rotate"]).output().expect("keys rotate");
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let rotated = String::from_utf8(rotated.stdout).expect("utf-8");
    let lines: Vec<&str> = rotated.lines().collect();
    assert_eq!(lines.len(), 3, "{rotated}");
    assert!(
        lines[1].contains("retired, verifies until") && lines[2].ends_with("signs"),
        "{rotated}"
    );
    assert!(lines[0].contains(lines[2].split_whitespace().next().expect("kid")), "{rotated}");

    let replay = cloudsync(&data).args(["replay", "--user", &user]).output().expect("replay");
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let text = String::from_utf8(replay.stdout).expect("utf-8");
    assert!(text.lines().next().is_some_and(|l| l.contains("UserRegistered")), "{text}");

    let rebuild = cloudsync(&data).args(["projections", "rebuild", "all"]).output().expect("rebuild");
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    let rebuilt = String::from_utf8_lossy(&rebuild.stdout);
    assert!(
        rebuilt.contains("Rebuilt search from") && rebuilt.contains("Rebuilt vectors from"),
        "{rebuilt}"
    );
    // The read-model tables in one pass, with how fast it went.
    let tables = rebuilt
        .lines()
        .find(|l| l.starts_with("Rebuilt users, providers, files,"))
        .unwrap_or_else(|| panic!("{rebuilt}"));
    let events: u64 = tables
        .split(" from ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{tables}"));
    assert!(events > 0 && tables.ends_with(" events/s)."), "{tables}");
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
    let server = serve_traced(cloudsync(&data));
    let addr = server.addr.clone();

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
    let log = server.stop().join("\n");
    assert!(log.contains("Provider connected."), "the log was captured: {log}");
    assert!(log.contains("Scan finished."), "the log covers the scan");
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(&secret)).collect();
    assert!(leaks.is_empty(), "the S3 secret reached the log: {leaks:#?}");
    assert!(!log.contains(&password), "the account password reached the log");
    std::fs::remove_dir_all(&data).ok();
}

fn form_action(html: &str) -> String {
    let start = html.find("action=\"").expect("a form") + "action=\"".len();
    html[start..][..html[start..].find('"').expect("closing quote")].replace("&amp;", "&")
}

/// Every access and refresh token the log holds sealed, opened with the data dir's master key.
fn sealed_tokens(data: &std::path::Path) -> Vec<String> {
    use cloudsync_domain::DomainEvent;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", data.join("cloudsync.db").display());
        let db = cloudsync_eventstore::Database::connect(&url, false).await.expect("database");
        let key = std::fs::read_to_string(data.join("master-key")).expect("master key");
        let vault = cloudsync_commands::Vault::new(cloudsync_commands::MasterKey::parse(&key).expect("key"), db.pool.clone());
        let mut tokens = Vec::new();
        // The raw log: only these events are decoded (others hold sealed hashes, which only the
        // server's store opens).
        let raw = db.events.read_all(0, 100_000).await.expect("log");
        for recorded in raw
            .into_iter()
            .filter(|e| matches!(e.event_type.as_str(), "ProviderConnected" | "ProviderCredentialsRenewed"))
        {
            let sealed = match DomainEvent::decode(&recorded.event_type, recorded.schema_version, &recorded.payload).expect("decodes") {
                DomainEvent::ProviderConnected(c) => c.secrets.map(|s| (c.owner_id, s)),
                DomainEvent::ProviderCredentialsRenewed(r) => Some((r.owner_id, r.secrets)),
                _ => None,
            };
            if let Some((owner, sealed)) = sealed {
                let opened: serde_json::Value = serde_json::from_slice(&vault.open(owner, &sealed).await.expect("opens")).expect("json");
                for key in ["access_token", "refresh_token"] {
                    tokens.push(opened[key].as_str().expect("token").to_owned());
                }
            }
        }
        db.close().await;
        tokens
    })
}

/// Issue 3: with trace logging on, connecting an OAuth provider (code exchange) and renewing its token
/// never writes a token, the code or the client secret to the log.
#[test]
fn oauth_tokens_never_reach_the_log() {
    let issuer = std::env::var("CLOUDSYNC_TEST_OIDC_ISSUER").expect("CLOUDSYNC_TEST_OIDC_ISSUER: run through scripts/test");
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}"));
    let ttl: u64 = var("CLOUDSYNC_TEST_OIDC_ACCESS_TOKEN_TTL").parse().expect("seconds");
    let client_secret = var("CLOUDSYNC_TEST_OIDC_CLIENT_SECRET");
    let data = std::env::temp_dir().join(format!("cloudsync-oauth-logs-{}", uuid::Uuid::new_v4().simple()));
    let mut command = cloudsync(&data);
    command
        .env("CLOUDSYNC_OAUTH_GDRIVE_CLIENT_ID", var("CLOUDSYNC_TEST_OIDC_CLIENT_ID"))
        .env("CLOUDSYNC_OAUTH_GDRIVE_CLIENT_SECRET", &client_secret)
        .env("CLOUDSYNC_OAUTH_GDRIVE_AUTH_URL", format!("{issuer}/auth"))
        .env("CLOUDSYNC_OAUTH_GDRIVE_TOKEN_URL", format!("{issuer}/token"))
        .env("CLOUDSYNC_OAUTH_GDRIVE_SCOPES", "openid offline_access files.readwrite")
        .env("CLOUDSYNC_OAUTH_GDRIVE_EXTRA_PARAMS", "prompt=consent")
        .env("CLOUDSYNC_OAUTH_RENEW_MARGIN_SECONDS", ttl.saturating_sub(3).to_string());
    let server = serve_traced(command);
    let addr = server.addr.clone();

    let register = serde_json::json!({ "query": "mutation { register(email: \"oauth-logs@example.org\", password: \"correct horse battery\") { accessToken } }" });
    let token = post(&addr, &register.to_string())["data"]["register"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let begin = serde_json::json!({ "query": "mutation { beginProviderAuthorization(provider: \"gdrive\") { authorizationUrl } }" });
    let begun = post_as(&addr, Some(&token), &begin.to_string());
    let url = begun["data"]["beginProviderAuthorization"]["authorizationUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("{begun}"))
        .to_owned();

    // The browser: sign in, consent, and stop at the redirect back to CloudSync.
    let browser = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::custom(|a| {
            if a.url().path() == "/oauth/callback" {
                a.stop()
            } else {
                a.follow()
            }
        }))
        .build()
        .expect("client");
    let login = browser.get(&url).send().expect("login page").text().expect("html");
    let consent = browser
        .post(form_action(&login))
        .form(&[("prompt", "login"), ("login", "alice"), ("password", "x")])
        .send()
        .expect("signed in")
        .text()
        .expect("html");
    let back = browser
        .post(form_action(&consent))
        .form(&[("prompt", "consent")])
        .send()
        .expect("consented");
    let callback = back.headers()[reqwest::header::LOCATION].to_str().expect("location").to_owned();
    let code: String = reqwest::Url::parse(&callback)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    assert_eq!(reqwest::blocking::get(&callback).expect("callback").status(), 200);

    // Wait for the scheduler's renewal, collecting the log as it comes.
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.iter().any(|l: &String| l.contains("Provider credentials renewed.")) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("the token was renewed in time");
        if let Ok(line) = server.lines.recv_timeout(left) {
            log.push(line);
        }
    }
    log.extend(server.stop());
    let log = log.join("\n");
    assert!(log.contains("Provider connected."), "the log was captured: {log}");

    let tokens = sealed_tokens(&data);
    assert!(tokens.len() >= 4, "tokens from the exchange and from a renewal: {}", tokens.len());
    for secret in tokens.iter().chain([&code, &client_secret]) {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret.as_str())).collect();
        assert!(leaks.is_empty(), "a secret reached the log: {leaks:#?}");
    }
    std::fs::remove_dir_all(&data).ok();
}
