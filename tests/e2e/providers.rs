//! Issue 3: remote providers connected through the API, checked by a round trip, indexed, operated
//! on, and their secrets never stored in clear.

use bytes::Bytes;
use cloudsync_domain::{ProviderKind, ProviderPath};
use cloudsync_eventstore::DbPool;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(
    an_s3_bucket_is_indexed_and_its_secret_is_never_stored_in_clear,
    an_azure_container_is_indexed_and_its_key_is_never_stored_in_clear,
    files_on_webdav_move_and_delete_through_the_api,
    refused_credentials_record_nothing,
);

pub(crate) fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the suite through scripts/test"))
}

const CONNECT: &str =
    "mutation($k: String!, $c: JSON!) { connectProvider(provider: $k, credentials: $c) { id kind displayName config scanOperationId } }";

/// Puts files on the server under `settings` (the provider's own root), the way another client would.
async fn seed(kind: ProviderKind, settings: &Value, files: &[(&str, &str)]) {
    let provider = cloudsync_providers::open(kind, settings.as_object().expect("object")).expect("opens");
    for (path, content) in files {
        let data = futures::stream::iter([Ok(Bytes::from(content.to_string()))]).boxed();
        provider
            .write(&ProviderPath::parse(path).expect("path"), data)
            .await
            .expect("seeded");
    }
}

pub(crate) async fn s3_settings(secret: &str) -> Value {
    let endpoint = var("CLOUDSYNC_TEST_S3_ENDPOINT");
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/cloudsync-e2e"))
        .send()
        .await
        .expect("S3 reachable");
    assert!(created.status().is_success() || created.status().as_u16() == 409);
    json!({
        "endpoint": endpoint, "bucket": "cloudsync-e2e", "region": "us-east-1", "access_key_id": "e2e",
        "secret_access_key": secret, "root": format!("/e2e-{}/", uuid::Uuid::new_v4().simple()),
    })
}

/// Connects, waits for the scan, and returns (provider id, files by path).
pub(crate) async fn connect(h: &Harness, token: &str, kind: &str, settings: &Value) -> (String, std::collections::BTreeMap<String, Value>) {
    let data = h.ok(Some(token), CONNECT, json!({ "k": kind, "c": settings })).await;
    let provider = data["connectProvider"]["id"].as_str().expect("id").to_owned();
    let operation = data["connectProvider"]["scanOperationId"].as_str().expect("operation").to_owned();
    h.wait_for_operation(token, &operation).await;
    let files = h.files(token, &provider).await;
    (provider, files)
}

/// Everything the database holds, as text: the SQLite files themselves, or every row of every table.
async fn database_text(h: &Harness) -> String {
    match &h.db.db.pool {
        DbPool::Sqlite(_) => {
            let mut text = String::new();
            for entry in std::fs::read_dir(h.db.dir()).expect("dir").flatten() {
                if entry.file_name().to_string_lossy().starts_with("cloudsync.db") {
                    text.push_str(&String::from_utf8_lossy(&std::fs::read(entry.path()).expect("read")));
                }
            }
            text
        }
        DbPool::Postgres(pool) => {
            let tables: Vec<String> = sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
                .fetch_all(pool)
                .await
                .expect("tables");
            let mut text = String::new();
            for table in tables {
                let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
                    .fetch_all(pool)
                    .await
                    .expect("rows");
                text.push_str(&rows.join("\n"));
            }
            text
        }
    }
}

pub(crate) async fn assert_never_in_clear(h: &Harness, token: &str, secret: &str) {
    let stored = database_text(h).await;
    assert!(stored.contains("ProviderConnected"), "the dump covers the event log");
    assert!(!stored.contains(secret), "the secret is stored in clear");
    let events = h.server().app().db.events.read_all(0, 100_000).await.expect("log");
    assert!(events.iter().all(|e| !e.payload.to_string().contains(secret)));
    let shown = h.ok(Some(token), "{ providers { config } }", json!({})).await;
    assert!(!shown.to_string().contains(secret), "the API shows the secret");
}

async fn an_s3_bucket_is_indexed_and_its_secret_is_never_stored_in_clear(h: &Harness) {
    let (token, _) = h.register("s3@example.org").await;
    let secret = format!("s3-secret-{}", uuid::Uuid::new_v4().simple());
    let settings = s3_settings(&secret).await;
    seed(
        ProviderKind::S3,
        &settings,
        &[("reports/q1.txt", "first quarter"), ("photos/a b.jpg", "jpeg")],
    )
    .await;
    let (_, files) = connect(h, &token, "s3", &settings).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["photos/a b.jpg", "reports/q1.txt"]);
    assert_eq!(
        files["reports/q1.txt"]["checksum"],
        json!(blake3::hash(b"first quarter").to_hex().to_string())
    );
    assert_eq!(files["reports/q1.txt"]["sizeBytes"], json!(13));
    assert_never_in_clear(h, &token, &secret).await;
}

async fn an_azure_container_is_indexed_and_its_key_is_never_stored_in_clear(h: &Harness) {
    let (token, _) = h.register("azure@example.org").await;
    let key = var("CLOUDSYNC_TEST_AZBLOB_KEY");
    let settings = json!({
        "endpoint": var("CLOUDSYNC_TEST_AZBLOB_ENDPOINT"), "container": "cloudsync-test", "account_name": var("CLOUDSYNC_TEST_AZBLOB_ACCOUNT"),
        "account_key": key, "root": format!("/e2e-{}/", uuid::Uuid::new_v4().simple()),
    });
    seed(ProviderKind::Azblob, &settings, &[("notes.md", "# notes")]).await;
    let (_, files) = connect(h, &token, "azblob", &settings).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["notes.md"]);
    assert_never_in_clear(h, &token, &key).await;
}

async fn files_on_webdav_move_and_delete_through_the_api(h: &Harness) {
    let (token, _) = h.register("dav@example.org").await;
    let settings = json!({
        "endpoint": var("CLOUDSYNC_TEST_WEBDAV_ENDPOINT"), "username": var("CLOUDSYNC_TEST_WEBDAV_USER"),
        "password": var("CLOUDSYNC_TEST_WEBDAV_PASSWORD"), "root": format!("/e2e-{}/", uuid::Uuid::new_v4().simple()),
    });
    seed(
        ProviderKind::Webdav,
        &settings,
        &[("inbox/letter.txt", "dear"), ("inbox/old.txt", "old")],
    )
    .await;
    let (provider, files) = connect(h, &token, "webdav", &settings).await;
    let letter = files["inbox/letter.txt"]["id"].as_str().expect("id").to_owned();
    let old = files["inbox/old.txt"]["id"].as_str().expect("id").to_owned();
    let moved = h
        .ok(
            Some(&token),
            "mutation($ids: [ID!]!) { moveFiles(fileIds: $ids, targetPath: \"archive\") { path } }",
            json!({ "ids": [letter] }),
        )
        .await;
    assert_eq!(moved["moveFiles"], json!([{ "path": "archive/letter.txt" }]));
    h.ok(
        Some(&token),
        "mutation($ids: [ID!]!) { deleteFiles(fileIds: $ids) }",
        json!({ "ids": [old] }),
    )
    .await;

    let server: Map<String, Value> = settings.as_object().expect("object").clone();
    let direct = cloudsync_providers::open(ProviderKind::Webdav, &server).expect("opens");
    let on_server: Vec<String> = direct
        .list(&ProviderPath::root())
        .map(|e| e.expect("entry").path.as_str().to_owned())
        .collect()
        .await;
    assert_eq!(on_server, ["archive/letter.txt"]);
    let listed = h.files(&token, &provider).await;
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["archive/letter.txt"]);
}

async fn refused_credentials_record_nothing(h: &Harness) {
    let (token, _) = h.register("refused@example.org").await;
    let head = h.server().app().db.events.head().await.expect("head");
    let wrong_password = json!({
        "endpoint": var("CLOUDSYNC_TEST_WEBDAV_ENDPOINT"), "username": var("CLOUDSYNC_TEST_WEBDAV_USER"), "password": "not the password",
    });
    assert_eq!(
        h.error_code(Some(&token), CONNECT, json!({ "k": "webdav", "c": wrong_password }))
            .await,
        "BAD_USER_INPUT"
    );
    let unreachable = json!({ "endpoint": "http://127.0.0.1:9", "username": "x", "password": "y" });
    assert_eq!(
        h.error_code(Some(&token), CONNECT, json!({ "k": "webdav", "c": unreachable }))
            .await,
        "BAD_USER_INPUT"
    );
    let typo = json!({ "endpoint": var("CLOUDSYNC_TEST_WEBDAV_ENDPOINT"), "pasword": "x" });
    let response = h.gql(Some(&token), CONNECT, json!({ "k": "webdav", "c": typo })).await;
    assert_eq!(response["errors"][0]["extensions"]["code"], json!("BAD_USER_INPUT"));
    assert!(
        response["errors"][0]["message"].as_str().is_some_and(|m| m.contains("pasword")),
        "{response}"
    );
    let bad_quota = json!({
        "endpoint": var("CLOUDSYNC_TEST_WEBDAV_ENDPOINT"), "username": var("CLOUDSYNC_TEST_WEBDAV_USER"),
        "password": var("CLOUDSYNC_TEST_WEBDAV_PASSWORD"), "max_requests_per_second": "as fast as you can",
    });
    assert_eq!(
        h.error_code(Some(&token), CONNECT, json!({ "k": "webdav", "c": bad_quota })).await,
        "BAD_USER_INPUT"
    );
    let missing_bucket = json!({ "endpoint": var("CLOUDSYNC_TEST_S3_ENDPOINT"), "bucket": "cloudsync-no-such-bucket", "access_key_id": "a", "secret_access_key": "b" });
    assert_eq!(
        h.error_code(Some(&token), CONNECT, json!({ "k": "s3", "c": missing_bucket })).await,
        "BAD_USER_INPUT"
    );
    // A server that checks signatures (s3s-fs) refuses a wrong secret.
    let wrong_secret = json!({
        "endpoint": var("CLOUDSYNC_TEST_S3S_ENDPOINT"), "bucket": "cloudsync-test", "region": "us-east-1",
        "access_key_id": var("CLOUDSYNC_TEST_S3S_ACCESS_KEY_ID"), "secret_access_key": "not-the-secret",
    });
    let response = h.gql(Some(&token), CONNECT, json!({ "k": "s3", "c": wrong_secret })).await;
    assert_eq!(response["errors"][0]["extensions"]["code"], json!("BAD_USER_INPUT"), "{response}");
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused the credentials")),
        "{response}"
    );
    assert!(
        !response.to_string().contains("not-the-secret"),
        "the error echoes the secret: {response}"
    );
    assert_eq!(h.server().app().db.events.head().await.expect("head"), head);
    assert_eq!(
        h.ok(Some(&token), "{ providers { id } }", json!({})).await,
        json!({ "providers": [] })
    );
}
