//! Issue 21, item 2: one id follows a request. The id a client sends in `X-Request-Id` (or one the
//! server makes) comes back in that header, is on every JSON log line of the request and of the
//! job it started, and is the correlation id of the events both appended, as `cloudsync replay
//! --json` shows them.

use std::time::Duration;

use serde_json::Value;

use super::sync::{ended, register};
use super::{cloudsync, serve_traced};

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
