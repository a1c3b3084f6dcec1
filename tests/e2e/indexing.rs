//! Issue 3: incremental indexing — a rescan records only what changed.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Harness, Scanned, on_both_backends};

on_both_backends!(a_rescan_records_only_what_changed);

const RESCAN: &str = "mutation($p: ID!) { rescanProvider(providerId: $p) { id status } }";

/// Rescans and returns the types of the file events it recorded, sorted.
async fn rescan(h: &Harness, token: &str, provider: &str) -> Vec<String> {
    let app = h.server().app();
    let before = app.db.events.head().await.expect("head");
    let data = h.ok(Some(token), RESCAN, json!({ "p": provider })).await;
    let operation = data["rescanProvider"]["id"].as_str().expect("operation").to_owned();
    h.wait_for_operation(token, &operation).await;
    let head = app.db.events.head().await.expect("head");
    assert!(app.projections.wait_for(head, Duration::from_secs(10)).await);
    let mut types: Vec<String> = app
        .db
        .events
        .read_all(before, 100_000)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.event_type)
        .filter(|t| t.starts_with("File"))
        .collect();
    types.sort();
    types
}

async fn a_rescan_records_only_what_changed(h: &Harness) {
    let Scanned { token, root, provider, files, readme, .. } = h.scanned("rescan@example.org").await;
    assert!(rescan(h, &token, &provider).await.is_empty(), "an unchanged provider records nothing");

    std::fs::write(root.join("readme.txt"), "changed content, longer than before").expect("write");
    std::fs::create_dir_all(root.join("moved")).expect("mkdir");
    std::fs::rename(root.join("docs/report 2024.pdf"), root.join("moved/report 2024.pdf")).expect("move");
    std::fs::remove_file(root.join("photos/2024/cat.jpg")).expect("remove");
    std::fs::write(root.join("new.txt"), "brand new").expect("write");

    assert_eq!(rescan(h, &token, &provider).await, ["FileChanged", "FileDiscovered", "FileMoved", "FileRemoved"]);
    let now = h.files(&token, &provider).await;
    assert_eq!(now.keys().map(String::as_str).collect::<Vec<_>>(), ["docs/zażółć gęślą.md", "moved/report 2024.pdf", "new.txt", "readme.txt"]);
    assert_eq!(now["readme.txt"]["id"], json!(readme), "a change keeps the file's identity");
    assert_eq!(now["readme.txt"]["checksum"], json!(blake3::hash(b"changed content, longer than before").to_hex().to_string()));
    assert_eq!(now["moved/report 2024.pdf"]["id"], files["docs/report 2024.pdf"]["id"], "a move is detected by content");
    assert_eq!(now["new.txt"]["checksum"], json!(blake3::hash(b"brand new").to_hex().to_string()));

    assert!(rescan(h, &token, &provider).await.is_empty(), "settled: nothing more to record");
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(h.error_code(Some(&token), RESCAN, json!({ "p": unknown })).await, "NOT_FOUND");
}
