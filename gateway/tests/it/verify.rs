//! Issue 21, item 3 (tamper evidence): a server signs its chain's tip as it stops; `cloudsync verify`
//! passes on the log as written, names the event someone changed by hand, and, when the forger
//! also rewrote the whole chain to match, finds the rewrite through the signed checkpoint. A
//! checkpoint no configured master key signed is refused too.

use std::process::Output;

use cloudsync_eventstore::chain;

use super::sync::{connect, login, register};
use super::{cloudsync, serve_traced};

fn verify(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    verify_as(data, None, args)
}

fn verify_as(data: &std::path::Path, master_key: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut command = cloudsync(data);
    if let Some(key) = master_key {
        command.env("CLOUDSYNC_MASTER_KEY", key);
    }
    let Output { status, stdout, stderr } = command.arg("verify").args(args).output().expect("verify");
    let text = format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    (status.success(), text)
}

async fn by_hand(url: &str, statements: &[&str]) {
    let db = cloudsync_eventstore::Database::connect(url, false).await.expect("connect");
    for sql in statements {
        cloudsync_eventstore::on_pool!(&db.pool, |p| sqlx::query(sql).execute(p).await.map(drop)).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_changes_and_rewritten_chains_through_signed_checkpoints() {
    let data = std::env::temp_dir().join(format!("cloudsync-verify-{}", uuid::Uuid::new_v4().simple()));
    let root = data.with_extension("files");
    std::fs::create_dir_all(&root).expect("folder");
    std::fs::write(root.join("a.txt"), "alpha").expect("file");
    // Two runs of the server, each signing the tip as it stops: two chained checkpoints.
    let mut logged = Vec::new();
    for run in 0..2 {
        let mut command = cloudsync(&data);
        command.env("CLOUDSYNC_LOG_FORMAT", "json");
        let server = serve_traced(command);
        let addr = server.addr.clone();
        let root = root.clone();
        let provider = tokio::task::spawn_blocking(move || {
            let token = if run == 0 { register(&addr) } else { login(&addr) };
            connect(&addr, &token, &root, None)
        })
        .await
        .expect("requests");
        assert!(!provider.is_empty());
        logged.extend(server.stop());
    }
    // Each checkpoint is logged too: a record of the chain kept outside the database.
    let kept: Vec<String> = logged
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "Event chain checkpoint signed.")
        .map(|line| {
            format!(
                "{}:{}",
                line["fields"]["position"],
                line["fields"]["link"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(kept.len(), 2, "{logged:?}");

    let (ok, text) = verify(&data, &[]);
    assert!(ok, "{text}");
    assert!(text.starts_with("intact: ") && text.contains("2 signed checkpoints"), "{text}");
    let (ok, text) = verify(&data, &["--expect", &kept[1]]);
    assert!(ok, "{text}");
    let (position, _) = kept[1].split_once(':').expect("kept");
    let (ok, text) = verify(&data, &["--expect", &format!("{position}:{}", "ab".repeat(32))]);
    assert!(
        !ok && text.contains(&format!("tampered: the log's link at event {position} is not the one you kept")),
        "{text}"
    );

    let url = format!("sqlite://{}", data.join("cloudsync.db").display());
    by_hand(
        &url,
        &[
            "DROP TRIGGER events_no_update",
            "UPDATE events SET payload = '{\"forged\": true}' WHERE position = 2",
        ],
    )
    .await;
    let (ok, text) = verify(&data, &[]);
    assert!(!ok);
    assert!(text.contains("tampered: event 2 was changed"), "{text}");

    // The forger recomputes every link after the change: the chain agrees with the log, the signed
    // checkpoint does not.
    let db = cloudsync_eventstore::Database::connect(&url, false).await.expect("connect");
    let events = db.events.read_all(0, 100_000).await.expect("events");
    let mut link = chain::GENESIS;
    let mut statements = vec![
        "DROP TRIGGER event_chain_no_delete".to_owned(),
        "DELETE FROM event_chain".to_owned(),
    ];
    for event in &events {
        link = chain::link(&link, event);
        statements.push(format!(
            "INSERT INTO event_chain (position, hash) VALUES ({}, X'{}')",
            event.position,
            data_encoding::HEXUPPER.encode(&link)
        ));
    }
    db.close().await;
    by_hand(&url, &statements.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (ok, text) = verify(&data, &[]);
    assert!(!ok);
    // (The first checkpoint was signed as the server stopped, perhaps before its last events.)
    assert!(text.contains("tampered: the log was rewritten between events 1 and "), "{text}");
    assert!(text.contains("its chain differs from the one signed at "), "{text}");

    // Checked with another master key, the checkpoint is nobody's.
    let (ok, text) = verify_as(&data, Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), &[]);
    assert!(!ok);
    assert!(text.contains("which no configured master key makes"), "{text}");

    // Checkpoints cannot be removed quietly either: each signature covers the one before it.
    let (first, _) = kept[0].split_once(':').expect("kept");
    by_hand(
        &url,
        &[
            "DROP TRIGGER chain_checkpoints_no_delete",
            &format!("DELETE FROM chain_checkpoints WHERE position = {first}"),
        ],
    )
    .await;
    let (ok, text) = verify(&data, &[]);
    assert!(!ok);
    assert!(
        text.contains("does not carry a valid signature (it, or the checkpoint before it, was changed or removed)"),
        "{text}"
    );
    std::fs::remove_dir_all(&data).ok();
}
