//! Issue 3: incremental indexing — a rescan records only what changed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Harness, Scanned, on_both_backends};

on_both_backends!(
    a_rescan_records_only_what_changed,
    rescans_span_many_batches,
    a_realtime_folder_is_indexed_on_its_own,
    a_cron_schedule_rescans_on_time
);

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
        // The content pipeline's readings go to their own streams, not the scan's.
        .filter(|t| t.starts_with("File") && t != "FileContentExtracted" && t != "FileAnalyzed")
        .collect();
    types.sort();
    types
}

async fn a_rescan_records_only_what_changed(h: &Harness) {
    let Scanned {
        token,
        root,
        provider,
        files,
        readme,
        ..
    } = h.scanned("rescan@example.org").await;
    assert!(
        rescan(h, &token, &provider).await.is_empty(),
        "an unchanged provider records nothing"
    );

    std::fs::write(root.join("readme.txt"), "changed content, longer than before").expect("write");
    std::fs::create_dir_all(root.join("moved")).expect("mkdir");
    std::fs::rename(root.join("docs/report 2024.pdf"), root.join("moved/report 2024.pdf")).expect("move");
    std::fs::remove_file(root.join("photos/2024/cat.jpg")).expect("remove");
    std::fs::write(root.join("new.txt"), "brand new").expect("write");

    assert_eq!(
        rescan(h, &token, &provider).await,
        ["FileChanged", "FileDiscovered", "FileMoved", "FileRemoved"]
    );
    let now = h.files(&token, &provider).await;
    assert_eq!(
        now.keys().map(String::as_str).collect::<Vec<_>>(),
        ["docs/zażółć gęślą.md", "moved/report 2024.pdf", "new.txt", "readme.txt"]
    );
    assert_eq!(now["readme.txt"]["id"], json!(readme), "a change keeps the file's identity");
    assert_eq!(
        now["readme.txt"]["checksum"],
        json!(blake3::hash(b"changed content, longer than before").to_hex().to_string())
    );
    assert_eq!(
        now["moved/report 2024.pdf"]["id"], files["docs/report 2024.pdf"]["id"],
        "a move is detected by content"
    );
    assert_eq!(now["new.txt"]["checksum"], json!(blake3::hash(b"brand new").to_hex().to_string()));

    assert!(rescan(h, &token, &provider).await.is_empty(), "settled: nothing more to record");
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(h.error_code(Some(&token), RESCAN, json!({ "p": unknown })).await, "NOT_FOUND");
}

/// Trees larger than one batch (500 files) are recorded batch by batch; removals and moves are found
/// across batches, and a settled tree records nothing.
async fn rescans_span_many_batches(h: &Harness) {
    let (token, _) = h.register("batches@example.org").await;
    let root = h.db.dir().join("many");
    for i in 0..1200 {
        let folder = root.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&folder).expect("mkdir");
        std::fs::write(folder.join(format!("f{i:04}.txt")), format!("file number {i}")).expect("write");
    }
    let (provider, _) = h.connect_local(&token, &root).await;
    let app = h.server().app();
    let head = app.db.events.head().await.expect("head");
    assert!(app.projections.wait_for(head, Duration::from_secs(10)).await);
    let discovered = app.db.events.read_all(0, 100_000).await.expect("log");
    assert_eq!(discovered.iter().filter(|e| e.event_type == "FileDiscovered").count(), 1200);
    assert!(rescan(h, &token, &provider).await.is_empty());

    for i in (0..1200).filter(|i| i % 2 == 0) {
        std::fs::remove_file(root.join(format!("d{}/f{i:04}.txt", i % 7))).expect("remove");
    }
    std::fs::create_dir_all(root.join("zz")).expect("mkdir");
    std::fs::rename(root.join("d1/f0001.txt"), root.join("zz/last.txt")).expect("move");
    let recorded = rescan(h, &token, &provider).await;
    assert_eq!(recorded.iter().filter(|t| *t == "FileRemoved").count(), 600);
    assert_eq!(recorded.iter().filter(|t| *t == "FileMoved").count(), 1);
    assert_eq!(recorded.len(), 601, "{recorded:?}");
    let files = h.files(&token, &provider).await;
    assert!(files.contains_key("zz/last.txt") && !files.contains_key("d1/f0001.txt"));
    assert!(rescan(h, &token, &provider).await.is_empty(), "settled");
}

const SCHEDULE: &str = "mutation($p: ID!, $s: String, $r: Boolean) { setScanSchedule(providerId: $p, schedule: $s, realtime: $r) { id scanSchedule realtime } }";

/// Reads `files` until `done` holds for the listing (20 s deadline), again after each append to the log.
async fn eventually(
    h: &Harness,
    token: &str,
    provider: &str,
    what: &str,
    done: impl Fn(&std::collections::BTreeMap<String, serde_json::Value>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut appended = h.server().app().db.events.watch();
    loop {
        let files = h.files(token, provider).await;
        if done(&files) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in time: {:?}",
            files.keys().collect::<Vec<_>>()
        );
        h.next_append(&mut appended, deadline).await;
    }
}

async fn a_realtime_folder_is_indexed_on_its_own(h: &Harness) {
    let Scanned { token, root, provider, .. } = h.scanned("realtime@example.org").await;
    let set = h.ok(Some(&token), SCHEDULE, json!({ "p": provider, "r": true })).await;
    assert_eq!(set["setScanSchedule"]["realtime"], json!(true));
    // The watch starts when the scheduler sees the setting: write again every few seconds until the
    // file is indexed, leaving the folder quiet in between so the change settles.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut appended = h.server().app().db.events.watch();
    let mut last_write: Option<Instant> = None;
    loop {
        if last_write.is_none_or(|at| at.elapsed() > Duration::from_secs(3)) {
            std::fs::write(root.join("live.txt"), "written while watched").expect("write");
            last_write = Some(Instant::now());
        }
        if h.files(&token, &provider).await.contains_key("live.txt") {
            break;
        }
        assert!(Instant::now() < deadline, "the new file was not indexed");
        let rewrite = last_write.map_or(deadline, |at| at + Duration::from_secs(3)).min(deadline);
        h.next_append(&mut appended, rewrite).await;
    }
    std::fs::remove_file(root.join("readme.txt")).expect("remove");
    eventually(h, &token, &provider, "the removal", |files| !files.contains_key("readme.txt")).await;
}

async fn a_cron_schedule_rescans_on_time(h: &Harness) {
    let Scanned { token, root, provider, .. } = h.scanned("cron@example.org").await;
    assert_eq!(
        h.error_code(Some(&token), SCHEDULE, json!({ "p": provider, "s": "every tuesday" }))
            .await,
        "BAD_USER_INPUT"
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        h.error_code(Some(&token), SCHEDULE, json!({ "p": unknown, "s": "* * * * *" }))
            .await,
        "NOT_FOUND"
    );
    let set = h.ok(Some(&token), SCHEDULE, json!({ "p": provider, "s": "*/1 * * * * *" })).await;
    assert_eq!(set["setScanSchedule"]["scanSchedule"], json!("*/1 * * * * *"));
    std::fs::write(root.join("scheduled.txt"), "found by the schedule").expect("write");
    eventually(h, &token, &provider, "the scheduled rescan", |files| {
        files.contains_key("scheduled.txt")
    })
    .await;
    // Switched off, nothing more is picked up on its own.
    h.ok(Some(&token), SCHEDULE, json!({ "p": provider, "s": null })).await;
}
