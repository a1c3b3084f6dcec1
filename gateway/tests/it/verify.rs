//! Issue 21, item 3 (tamper evidence): a server signs its chain's tip as it stops; `cloudsync verify`
//! passes on the log as written, names the event someone changed by hand, and, when the forger
//! also rewrote the whole chain to match, finds the rewrite through the signed checkpoint. A
//! checkpoint no configured master key signed is refused too.

use std::process::Output;

use cloudsync_eventstore::chain;

use super::sync::{connect, register};
use super::{cloudsync, serve_traced};

fn verify(data: &std::path::Path, master_key: Option<&str>) -> (bool, String) {
    let mut command = cloudsync(data);
    if let Some(key) = master_key {
        command.env("CLOUDSYNC_MASTER_KEY", key);
    }
    let Output { status, stdout, stderr } = command.arg("verify").output().expect("verify");
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
    let server = serve_traced(cloudsync(&data));
    let addr = server.addr.clone();
    let (token, provider) = tokio::task::spawn_blocking(move || {
        let token = register(&addr);
        let provider = connect(&addr, &token, &root, None);
        (token, provider)
    })
    .await
    .expect("requests");
    assert!(!token.is_empty() && !provider.is_empty());
    // Stopping signs the tip.
    server.stop();

    let (ok, text) = verify(&data, None);
    assert!(ok, "{text}");
    assert!(text.starts_with("intact: ") && text.contains("1 signed checkpoints"), "{text}");

    let url = format!("sqlite://{}", data.join("cloudsync.db").display());
    by_hand(
        &url,
        &[
            "DROP TRIGGER events_no_update",
            "UPDATE events SET payload = '{\"forged\": true}' WHERE position = 2",
        ],
    )
    .await;
    let (ok, text) = verify(&data, None);
    assert!(!ok);
    assert!(text.contains("tampered: event 2 was changed"), "{text}");

    // The forger recomputes every link after the change: the chain agrees with the log, the signed
    // checkpoint does not.
    let db = cloudsync_eventstore::Database::connect(&url, false).await.expect("connect");
    let events = db.events.read_all(0, 100_000).await.expect("events");
    let mut link = chain::GENESIS;
    let mut statements = vec!["DELETE FROM event_chain".to_owned()];
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
    let (ok, text) = verify(&data, None);
    assert!(!ok);
    // (The one checkpoint was signed as the server stopped, perhaps before its last events.)
    assert!(text.contains("tampered: the log was rewritten between events 1 and "), "{text}");
    assert!(text.contains("its chain differs from the one signed at "), "{text}");

    // Checked with another master key, the checkpoint is nobody's.
    let (ok, text) = verify(&data, Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="));
    assert!(!ok);
    assert!(text.contains("which no configured master key makes"), "{text}");
    std::fs::remove_dir_all(&data).ok();
}
