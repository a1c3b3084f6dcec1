//! Issue 21, item 2: one id follows a request. The id a client sends in `X-Request-Id` (or one the
//! server makes) comes back in that header, is on every JSON log line of the request and of the
//! job it started, and is the correlation id of the events both appended, as `cloudsync replay
//! --json` shows them. With a Sentry DSN, the errors a request logs are reported, tagged with it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ready::PrivateRedis;
use super::sync::{ended, register};
use super::{cloudsync, serve_traced, serve_with};

#[test]
fn a_request_id_follows_a_connection_from_the_mutation_to_its_scans_last_event() {
    let data = std::env::temp_dir().join(format!("cloudsync-trace-{}", uuid::Uuid::new_v4().simple()));
    let root = data.with_extension("files");
    std::fs::create_dir_all(root.join("docs")).expect("folders");
    std::fs::write(root.join("a.txt"), "alpha").expect("file");
    std::fs::write(root.join("docs/b.txt"), "beta").expect("file");
    let mut command = cloudsync(&data);
    command.env("CLOUDSYNC_LOG_FORMAT", "json");
    let server = serve_traced(command);
    let addr = server.addr.clone();
    let token = register(&addr);

    let id = uuid::Uuid::new_v4();
    let response = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(&token)
        .header("X-Request-Id", id.to_string())
        .json(&serde_json::json!({
            "query": "mutation($c: JSON!) { connectProvider(provider: \"local\", credentials: $c) { id scanOperationId } }",
            "variables": { "c": { "root": root } },
        }))
        .send()
        .expect("connect");
    assert_eq!(response.headers()["x-request-id"], id.to_string().as_str(), "the id comes back");
    let answer: Value = response.json().expect("json");
    let operation = answer["data"]["connectProvider"]["scanOperationId"]
        .as_str()
        .expect("operation")
        .to_owned();
    assert_eq!(
        ended(&addr, &token, &operation, Duration::from_secs(30), "the scan")["status"],
        "completed"
    );

    // Without an id (or with one that is no UUID) the server makes one.
    for sent in [None, Some("not-a-uuid")] {
        let mut request = reqwest::blocking::Client::new().get(format!("http://{addr}/healthz"));
        if let Some(sent) = sent {
            request = request.header("X-Request-Id", sent);
        }
        let made = request.send().expect("healthz").headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
        assert_ne!(made, id.to_string());
    }

    let lines = server.stop();
    let tagged: Vec<Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.to_string().contains(&id.to_string()))
        .collect();
    let in_span = |span: &str| {
        tagged.iter().any(|line| {
            line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["name"] == span && s["request_id"] == id.to_string()))
        })
    };
    assert!(in_span("request"), "no log line of the request carries its id");
    assert!(in_span("job"), "no log line of the scan carries the request's id");

    // The events of the mutation and of the scan it started share the id, and `replay
    // --correlation` finds them all.
    let replayed = cloudsync(&data)
        .args(["replay", "--correlation", &id.to_string(), "--json"])
        .output()
        .expect("replay");
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    let events: Vec<Value> = String::from_utf8(replayed.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().expect("type")).collect();
    for wanted in ["ProviderConnected", "SyncJobCreated", "FileDiscovered", "SyncJobCompleted"] {
        assert!(types.contains(&wanted), "{wanted} is not in {types:?}");
    }
    assert_eq!(types.iter().filter(|t| **t == "FileDiscovered").count(), 2, "{types:?}");
    assert_eq!(types.last(), Some(&"SyncJobCompleted"), "the scan's last event ends the story");
    assert!(events.iter().all(|e| e["metadata"]["correlation_id"] == id.to_string()));
    let unknown = cloudsync(&data)
        .args(["replay", "--correlation", &uuid::Uuid::new_v4().to_string()])
        .output()
        .expect("replay");
    assert!(!unknown.status.success(), "an id nothing carries is an error");
    std::fs::remove_dir_all(&data).ok();
    std::fs::remove_dir_all(&root).ok();
}

/// A Sentry ingestion endpoint of the test's own: it keeps the body of every envelope posted to
/// it and answers as Sentry does.
struct SentryInbox {
    port: u16,
    envelopes: Mutex<std::sync::mpsc::Receiver<String>>,
}

impl SentryInbox {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("addr").port();
        let (kept, envelopes) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().expect("content-length");
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok() {
                    let _ = kept.send(String::from_utf8_lossy(&body).into_owned());
                }
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
            }
        });
        Self {
            port,
            envelopes: Mutex::new(envelopes),
        }
    }

    fn dsn(&self) -> String {
        format!("http://public-key@127.0.0.1:{}/7", self.port)
    }

    /// The first event reported whose message contains `text`, waited for up to `within`.
    fn event(&self, text: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let envelopes = self.envelopes.lock().expect("lock");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let envelope = envelopes
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no event reporting {text:?} reached Sentry"));
            // An envelope: a header line, then items, each a header line and a payload line.
            if let Some(event) = envelope
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|item| item["message"].as_str().is_some_and(|m| m.contains(text)))
            {
                return event;
            }
        }
    }
}

#[test]
fn errors_a_request_logs_are_reported_to_sentry_with_its_id() {
    let inbox = SentryInbox::start();
    let mut redis = PrivateRedis::start();
    let data = std::env::temp_dir().join(format!("cloudsync-sentry-{}", uuid::Uuid::new_v4().simple()));
    let mut command = cloudsync(&data);
    command
        .env("CLOUDSYNC_REDIS_URL", redis.url())
        .env("CLOUDSYNC_SENTRY_DSN", inbox.dsn())
        .env("CLOUDSYNC_SENTRY_ENVIRONMENT", "test");
    let (_server, addr) = serve_with(command);

    // With Redis gone, the API cannot check rate limits: it logs an error and lets the request through.
    redis.stop();
    let id = uuid::Uuid::new_v4();
    let response = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/graphql"))
        .header("X-Request-Id", id.to_string())
        .header("X-Forwarded-For", "203.0.113.9")
        .json(&serde_json::json!({ "query": "{ __typename }" }))
        .send()
        .expect("graphql");
    assert!(response.status().is_success(), "{}", response.status());

    let event = inbox.event("Rate limits cannot be checked", Duration::from_secs(20));
    // Sentry's events are errors unless they say otherwise.
    assert!(event.get("level").is_none_or(|level| level == "error"), "{event}");
    assert_eq!(event["tags"]["request_id"], id.to_string(), "the report names the request: {event}");
    assert_eq!(event["environment"], "test");
    assert!(event["release"].as_str().is_some_and(|r| r.starts_with("cloudsync@")), "{event}");
    // The cause is in the report; nothing personal is.
    let fields = event["contexts"].to_string();
    assert!(fields.contains("error"), "the logged error's fields are reported: {event}");
    assert!(event.get("user").is_none_or(Value::is_null), "{event}");
    assert!(!event.to_string().contains("203.0.113.9"), "no address is reported: {event}");
    std::fs::remove_dir_all(&data).ok();
}
