//! Issue 2: register, connect a local folder, list, move, delete, watch live, rebuild, replay.

use std::time::{Duration, Instant};

use cloudsync_eventstore::DbPool;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Harness, Scanned, on_both_backends, sample_tree};

on_both_backends!(
    register_login_and_me,
    tokens_are_required_and_checked,
    a_local_folder_is_scanned_into_files,
    move_and_delete_change_the_folder_and_are_read_back_at_once,
    bad_input_gets_a_coded_error_and_changes_nothing,
    another_users_ids_behave_like_unknown_ids,
    file_changes_stream_live_over_websocket,
    a_rebuilt_read_model_equals_the_live_one,
    replay_prints_a_stream_and_a_users_history,
);

mod replicas {
    use super::{a_subscription_on_another_api_process_sees_this_ones_writes, sessions_in_redis};
    use crate::harness::on_both_backends;
    on_both_backends!(with super::sessions_in_redis; a_subscription_on_another_api_process_sees_this_ones_writes);
}

const ME: &str = "{ me { id email } }";

async fn register_login_and_me(h: &Harness) {
    let (token, id) = h.register("Ada@Example.org").await;
    let me = h.ok(Some(&token), ME, json!({})).await;
    assert_eq!(me["me"], json!({ "id": id, "email": "ada@example.org" }));

    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken user { id email } } }";
    let data = h
        .ok(None, login, json!({ "e": "ada@example.org", "p": "correct horse battery" }))
        .await;
    assert_eq!(data["login"]["user"]["id"], json!(id));
    let again = data["login"]["accessToken"].as_str().expect("token");
    assert_eq!(h.ok(Some(again), ME, json!({})).await["me"]["id"], json!(id));

    assert_eq!(
        h.error_code(None, login, json!({ "e": "ada@example.org", "p": "wrong password!" }))
            .await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        h.error_code(None, login, json!({ "e": "nobody@example.org", "p": "correct horse battery" }))
            .await,
        "UNAUTHENTICATED"
    );

    let register = "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { accessToken } }";
    assert_eq!(
        h.error_code(None, register, json!({ "e": "ada@example.org", "p": "another password" }))
            .await,
        "ALREADY_EXISTS"
    );
    assert_eq!(
        h.error_code(None, register, json!({ "e": "not-an-email", "p": "another password" }))
            .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(None, register, json!({ "e": "bob@example.org", "p": "short" })).await,
        "BAD_USER_INPUT"
    );
}

async fn tokens_are_required_and_checked(h: &Harness) {
    let (token, _) = h.register("tokens@example.org").await;
    assert_eq!(h.error_code(None, ME, json!({})).await, "UNAUTHENTICATED");
    assert_eq!(h.error_code(Some("not.a.jwt"), ME, json!({})).await, "UNAUTHENTICATED");
    // A token signed with another key.
    let mut forged = token.clone();
    let last = forged.pop().map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
    forged.push(last);
    assert_eq!(h.error_code(Some(&forged), ME, json!({})).await, "UNAUTHENTICATED");
    // alg: none with the real claims.
    let claims = token.split('.').nth(1).expect("claims");
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    assert_eq!(h.error_code(Some(&none), ME, json!({})).await, "UNAUTHENTICATED");
}

async fn a_local_folder_is_scanned_into_files(h: &Harness) {
    let (token, _) = h.register("scan@example.org").await;
    let root = sample_tree(h.db.dir());
    let (provider, operation) = h.connect_local(&token, &root).await;
    let status = h.wait_for_operation(&token, &operation).await;
    assert_eq!(status["filesDone"], json!(4));
    assert_eq!(status["filesTotal"], json!(4));

    let files = h.files(&token, &provider).await;
    let paths: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        ["docs/report 2024.pdf", "docs/zażółć gęślą.md", "photos/2024/cat.jpg", "readme.txt"]
    );
    let readme = &files["readme.txt"];
    assert_eq!(readme["checksum"], json!(blake3::hash(b"hello cloudsync\n").to_hex().to_string()));
    assert_eq!(readme["sizeBytes"], json!(16));
    assert_eq!(readme["mimeType"], json!("text/plain"));
    assert_eq!(readme["name"], json!("readme.txt"));
    assert_eq!(files["docs/report 2024.pdf"]["mimeType"], json!("application/pdf"));

    // `path` narrows to a folder, recursively.
    let data = h
        .ok(
            Some(&token),
            "query($p: String) { files(provider: $p, path: \"photos\") { path } }",
            json!({ "p": provider }),
        )
        .await;
    assert_eq!(data["files"], json!([{ "path": "photos/2024/cat.jpg" }]));
    // `provider` may also be a kind: every provider of that kind the caller has.
    let by_kind = "query($p: String) { files(provider: $p, path: \"photos\") { path } }";
    assert_eq!(h.ok(Some(&token), by_kind, json!({ "p": "local" })).await, data);
    assert_eq!(h.ok(Some(&token), by_kind, json!({ "p": "s3" })).await["files"], json!([]));
    let providers = h.ok(Some(&token), "{ providers { id kind status config } }", json!({})).await;
    assert_eq!(providers["providers"][0]["id"], json!(provider));
    assert_eq!(providers["providers"][0]["status"], json!("connected"));
}

pub(crate) const MOVE: &str = "mutation($ids: [ID!]!, $to: String!) { moveFiles(fileIds: $ids, targetPath: $to) { id path name } }";
const DELETE: &str = "mutation($ids: [ID!]!) { deleteFiles(fileIds: $ids) }";

async fn move_and_delete_change_the_folder_and_are_read_back_at_once(h: &Harness) {
    let Scanned {
        token,
        root,
        provider,
        files,
        readme,
        ..
    } = h.scanned("move@example.org").await;
    let report = files["docs/report 2024.pdf"]["id"].as_str().expect("id").to_owned();

    let moved = h
        .ok(Some(&token), MOVE, json!({ "ids": [readme, report], "to": "archive/2024" }))
        .await;
    let mut paths: Vec<&str> = moved["moveFiles"]
        .as_array()
        .expect("list")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["archive/2024/readme.txt", "archive/2024/report 2024.pdf"]);
    assert!(root.join("archive/2024/readme.txt").is_file());
    assert!(!root.join("readme.txt").exists());
    // Read-your-writes: the very next query sees the move.
    let files = h.files(&token, &provider).await;
    assert_eq!(files["archive/2024/readme.txt"]["id"], json!(readme));
    assert!(!files.contains_key("readme.txt"));

    let deleted = h.ok(Some(&token), DELETE, json!({ "ids": [readme] })).await;
    assert_eq!(deleted["deleteFiles"], json!(true));
    assert!(!root.join("archive/2024/readme.txt").exists());
    let files = h.files(&token, &provider).await;
    assert!(!files.contains_key("archive/2024/readme.txt"));
    assert_eq!(files.len(), 3);
    // Deleting it again: it no longer exists.
    assert_eq!(h.error_code(Some(&token), DELETE, json!({ "ids": [readme] })).await, "NOT_FOUND");
}

async fn bad_input_gets_a_coded_error_and_changes_nothing(h: &Harness) {
    let Scanned {
        token,
        root,
        provider,
        files,
        readme,
        ..
    } = h.scanned("bad@example.org").await;
    let head = h.server().app().db.events.head().await.expect("head");

    // Malformed GraphQL and malformed bodies.
    assert_eq!(h.error_code(Some(&token), "{ me { id ", json!({})).await, "GRAPHQL_PARSE_FAILED");
    assert_eq!(
        h.error_code(Some(&token), "{ me { nope } }", json!({})).await,
        "GRAPHQL_VALIDATION_FAILED"
    );
    let raw = h
        .client
        .post(format!("{}/graphql", h.url))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("sent");
    assert_eq!(raw.status(), 400);
    let body: Value = raw.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], json!("BAD_REQUEST"));

    // Invalid paths, ids and providers.
    for target in ["../outside", "a/../../b", "bad\u{0}name"] {
        assert_eq!(
            h.error_code(Some(&token), MOVE, json!({ "ids": [readme], "to": target })).await,
            "BAD_USER_INPUT",
            "{target:?}"
        );
    }
    assert_eq!(
        h.error_code(Some(&token), MOVE, json!({ "ids": ["not-a-uuid"], "to": "x" })).await,
        "BAD_USER_INPUT"
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        h.error_code(Some(&token), MOVE, json!({ "ids": [readme, unknown], "to": "x" }))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(h.error_code(Some(&token), DELETE, json!({ "ids": [unknown] })).await, "NOT_FOUND");
    assert_eq!(h.error_code(Some(&token), DELETE, json!({ "ids": [] })).await, "BAD_USER_INPUT");
    let connect = "mutation($k: String!, $c: JSON!) { connectProvider(provider: $k, credentials: $c) { id } }";
    assert_eq!(
        h.error_code(
            Some(&token),
            connect,
            json!({ "k": "local", "c": { "root": "/no/such/folder/cloudsync" } })
        )
        .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&token), connect, json!({ "k": "local", "c": { "root": "relative" } }))
            .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&token), connect, json!({ "k": "floppy", "c": {} })).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(
            Some(&token),
            "query($o: ID!) { syncStatus(operationId: $o) { status } }",
            json!({ "o": unknown })
        )
        .await,
        "NOT_FOUND"
    );
    assert_eq!(
        h.error_code(
            Some(&token),
            "query($p: String) { files(provider: $p) { id } }",
            json!({ "p": unknown })
        )
        .await,
        "NOT_FOUND"
    );
    assert_eq!(
        h.error_code(Some(&token), "{ files(provider: \"floppy\") { id } }", json!({}))
            .await,
        "BAD_USER_INPUT",
        "a provider is an id or a kind"
    );
    assert_eq!(
        h.error_code(Some(&token), "{ files(limit: 0) { id } }", json!({})).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&token), "{ files(path: \"../etc\") { id } }", json!({})).await,
        "BAD_USER_INPUT"
    );
    let disconnect = "mutation($p: ID!) { disconnectProvider(providerId: $p) }";
    assert_eq!(h.error_code(Some(&token), disconnect, json!({ "p": unknown })).await, "NOT_FOUND");

    // Nothing changed: the log, the folder and the read model are as before.
    assert_eq!(h.server().app().db.events.head().await.expect("head"), head);
    assert!(root.join("readme.txt").is_file());
    assert_eq!(h.files(&token, &provider).await, files);

    // An oversized body is refused from its declared length, before it is read or parsed. (Over a raw
    // socket: the server answers without reading the body, which an HTTP client still sending would
    // see as a broken pipe.)
    let addr = h.url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
        .await
        .expect("headers sent");
    let mut answer = vec![0_u8; 64];
    let read = tokio::io::AsyncReadExt::read(&mut socket, &mut answer).await.expect("answer");
    let status_line = String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
}

async fn another_users_ids_behave_like_unknown_ids(h: &Harness) {
    let Scanned {
        token: alice,
        root,
        provider,
        operation,
        files,
        readme,
        ..
    } = h.scanned("alice@example.org").await;
    let (bob, _) = h.register("bob@example.org").await;
    let unknown = uuid::Uuid::new_v4().to_string();

    // Bob sees nothing of Alice's, and every error is the one an unknown id gets.
    assert_eq!(
        h.ok(Some(&bob), "{ files { id } providers { id } }", json!({})).await,
        json!({ "files": [], "providers": [] })
    );
    for (query, variables) in [
        ("query($p: String) { files(provider: $p) { id } }", json!({ "p": provider })),
        (
            "query($o: ID!) { syncStatus(operationId: $o) { status } }",
            json!({ "o": operation }),
        ),
        (MOVE, json!({ "ids": [readme], "to": "stolen" })),
        (DELETE, json!({ "ids": [readme] })),
        ("mutation($p: ID!) { disconnectProvider(providerId: $p) }", json!({ "p": provider })),
    ] {
        let theirs = h.gql(Some(&bob), query, variables.clone()).await;
        let as_text = variables
            .to_string()
            .replace(&provider, &unknown)
            .replace(&operation, &unknown)
            .replace(&readme, &unknown);
        let missing = h.gql(Some(&bob), query, serde_json::from_str(&as_text).expect("json")).await;
        assert_eq!(theirs["errors"][0]["extensions"]["code"], json!("NOT_FOUND"), "{query}: {theirs}");
        assert_eq!(theirs["errors"][0]["message"], missing["errors"][0]["message"], "{query}");
    }
    // Alice's files are untouched.
    assert!(root.join("readme.txt").is_file());
    assert_eq!(h.files(&alice, &provider).await, files);
}

async fn file_changes_stream_live_over_websocket(h: &Harness) {
    let Scanned {
        token, provider, readme, ..
    } = h.scanned("live@example.org").await;
    let (intruder, _) = h.register("intruder@example.org").await;

    let query = "subscription($p: ID!) { fileChanges(providerId: $p) { kind fileId providerId path previousPath } }";
    let subscribe = |auth: String| {
        let provider = provider.clone();
        async move { h.subscribe(&auth, query, json!({ "p": provider })).await }
    };

    // Someone else cannot watch this provider.
    let mut theirs = subscribe(intruder).await;
    let refused = next_json(&mut theirs).await;
    assert_eq!(refused["type"], json!("next"), "{refused}");
    assert_eq!(refused["payload"]["data"], Value::Null);
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"],
        json!("NOT_FOUND"),
        "{refused}"
    );

    let mut socket = subscribe(token.clone()).await;
    // Move the file back and forth until the subscription (which starts at the log's head once it is
    // set up) reports a move.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut folders = ["a", "b"].into_iter().cycle();
    let change = loop {
        assert!(Instant::now() < deadline, "no change arrived");
        h.ok(Some(&token), MOVE, json!({ "ids": [readme], "to": folders.next() })).await;
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(500), next_json(&mut socket)).await {
            break message;
        }
    };
    assert_eq!(change["type"], json!("next"), "{change}");
    let event = &change["payload"]["data"]["fileChanges"];
    assert_eq!(event["kind"], json!("MOVED"));
    assert_eq!(event["fileId"], json!(readme));
    assert_eq!(event["providerId"], json!(provider));
    assert!(event["path"].as_str().is_some_and(|p| p.ends_with("/readme.txt")), "{event}");
}

/// A server whose sessions live in Redis (a namespace of the test's own), so that a second API
/// process takes its tokens.
async fn sessions_in_redis(backend: cloudsync_eventstore::testing::Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.redis_url = Some("redis://127.0.0.1:6379/0".into());
        config.redis_namespace = format!("cloudsync-test-{}:", uuid::Uuid::new_v4().simple());
    })
    .await
}

/// Events reach every API process: a subscription made on a second one reports a move made
/// through the first.
async fn a_subscription_on_another_api_process_sees_this_ones_writes(h: &Harness) {
    let Scanned {
        token, provider, readme, ..
    } = h.scanned("replicas@example.org").await;
    let second = h.second_api_process().await;
    let query = "subscription($p: ID!) { fileChanges(providerId: $p) { kind fileId } }";
    let mut socket = crate::harness::subscribe_at(&format!("http://{}", second.addr()), &token, query, json!({ "p": provider })).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut folders = ["a", "b"].into_iter().cycle();
    let change = loop {
        assert!(Instant::now() < deadline, "no change arrived at the second process");
        h.ok(Some(&token), MOVE, json!({ "ids": [readme], "to": folders.next() })).await;
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(500), next_json(&mut socket)).await {
            break message;
        }
    };
    assert_eq!(change["type"], json!("next"), "{change}");
    assert_eq!(change["payload"]["data"]["fileChanges"]["kind"], json!("MOVED"), "{change}");
    assert_eq!(change["payload"]["data"]["fileChanges"]["fileId"], json!(readme));
    drop(socket);
    second.stop().await;
}

pub(crate) async fn next_json<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match socket.next().await.expect("socket open").expect("message") {
            Message::Text(text) => return serde_json::from_str(&text).expect("json message"),
            Message::Close(frame) => panic!("socket closed: {frame:?}"),
            _ => {}
        }
    }
}

async fn a_rebuilt_read_model_equals_the_live_one(h: &Harness) {
    let Scanned {
        token,
        files,
        readme,
        provider,
        ..
    } = h.scanned("rebuild@example.org").await;
    let cat = files["photos/2024/cat.jpg"]["id"].as_str().expect("id").to_owned();
    h.ok(Some(&token), MOVE, json!({ "ids": [readme], "to": "moved" })).await;
    h.ok(Some(&token), DELETE, json!({ "ids": [cat] })).await;
    // A duplicate resolved, for the deleted files kept restorable.
    for copy in ["twice/a.txt", "twice/b.txt"] {
        let host = h.db.dir().join("provider-root").join(copy);
        std::fs::create_dir_all(host.parent().expect("a parent")).expect("mkdir");
        std::fs::write(host, "the same words, twice").expect("write");
    }
    // …and two files moved together, so that a rebuild joins two updates in one statement.
    for (name, text) in [("pair/x.txt", "the first of a pair"), ("pair/y.txt", "the second of a pair")] {
        let host = h.db.dir().join("provider-root").join(name);
        std::fs::create_dir_all(host.parent().expect("a parent")).expect("mkdir");
        std::fs::write(host, text).expect("write");
    }
    h.rescan(&token, &provider).await;
    let listed = h.files(&token, &provider).await;
    let pair: Vec<&str> = ["pair/x.txt", "pair/y.txt"]
        .iter()
        .map(|p| listed[*p]["id"].as_str().expect("scanned"))
        .collect();
    h.ok(Some(&token), MOVE, json!({ "ids": pair, "to": "moved-pair" })).await;
    let groups = h.ok(Some(&token), "{ duplicates { id } }", json!({})).await;
    h.ok(
        Some(&token),
        "mutation($g: ID!) { resolveDuplicate(groupId: $g, action: KEEP_OLDEST) }",
        json!({ "g": groups["duplicates"][0]["id"] }),
    )
    .await;
    // A sync pair and its first run, for the sync read models.
    let copy = h.db.dir().join("copy");
    std::fs::create_dir_all(&copy).expect("mkdir");
    let (target, _) = h.connect_local(&token, &copy).await;
    let pair = h
        .ok(
            Some(&token),
            "mutation($s: ID!, $t: ID!) { syncFolders(source: { providerId: $s, path: \"\" }, target: { providerId: $t, path: \"\" }, \
             conflictPolicy: MANUAL) { id pair { id } } }",
            json!({ "s": provider, "t": target }),
        )
        .await;
    let run = pair["syncFolders"]["id"].as_str().expect("first run").to_owned();
    h.wait_for_operation(&token, &run).await;
    // …a conflict left for the owner, and an earlier version kept.
    std::fs::write(copy.join("docs/report 2024.pdf"), "edited in the copy").expect("write");
    std::fs::write(h.db.dir().join("provider-root/docs/report 2024.pdf"), "edited in the original").expect("write");
    std::fs::write(h.db.dir().join("provider-root/docs/zażółć gęślą.md"), "# edited\n").expect("write");
    let pair_id = pair["syncFolders"]["pair"]["id"].as_str().expect("pair");
    let again = h
        .ok(
            Some(&token),
            "mutation($p: ID!) { runSync(pairId: $p) { id } }",
            json!({ "p": pair_id }),
        )
        .await;
    h.wait_for_operation(&token, again["runSync"]["id"].as_str().expect("run")).await;
    let app = h.server().app();
    let head = app.db.events.head().await.expect("head");
    assert!(app.projections.wait_for(head, Duration::from_secs(10)).await);

    let reads = &app.reads;
    for name in cloudsync_projections::PROJECTORS {
        let live = reads.dump(name).await.expect("dump");
        assert!(!live.is_empty(), "{name} is empty");
        // Rebuilt while the server (and its live projector) keeps running.
        let replayed = cloudsync_projections::rebuild(&h.db.db, name).await.expect("rebuild");
        assert!(
            replayed >= u64::try_from(head).expect("positive"),
            "{name}: replayed {replayed} of {head}"
        );
        assert_eq!(reads.dump(name).await.expect("dump"), live, "{name} differs after the rebuild");
    }
    // Every read model at once, in one pass over the log, still while the server runs; the indexes it
    // drops for the while are all back afterwards.
    let indexes = || async {
        let sql = match &h.db.db.pool {
            DbPool::Sqlite(_) => "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
            DbPool::Postgres(_) => {
                "SELECT indexname::TEXT, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname"
            }
        };
        cloudsync_eventstore::on_pool!(&h.db.db.pool, |p| sqlx::query_as::<_, (String, String)>(sql)
            .fetch_all(p)
            .await
            .expect("the indexes"))
    };
    let before = indexes().await;
    assert!(before.iter().any(|(name, _)| name == "files_checksum"), "{before:?}");
    let live: Vec<_> = futures::future::join_all(cloudsync_projections::PROJECTORS.map(|name| reads.dump(name))).await;
    let rebuilt = cloudsync_projections::rebuild_many(&h.db.db, &cloudsync_projections::PROJECTORS)
        .await
        .expect("rebuild all");
    assert!(rebuilt.events >= u64::try_from(head).expect("positive"), "{rebuilt:?}");
    for (name, live) in cloudsync_projections::PROJECTORS.iter().zip(live) {
        assert_eq!(
            reads.dump(name).await.expect("dump"),
            live.expect("dump"),
            "{name} differs after rebuilding them all"
        );
    }
    assert_eq!(indexes().await, before);
    // A rebuild killed before its end leaves its dropped indexes remembered; they are built again
    // when projectors start (or at the next rebuild).
    let definition = before.iter().find(|(name, _)| name == "files_checksum").expect("listed").1.clone();
    cloudsync_eventstore::on_pool!(&h.db.db.pool, |p| {
        sqlx::query("INSERT INTO rebuild_indexes (name, table_name, definition) VALUES ($1, 'files', $2)")
            .bind("files_checksum")
            .bind(&definition)
            .execute(p)
            .await
            .expect("remember");
        sqlx::query("DROP INDEX files_checksum").execute(p).await.expect("drop");
    });
    assert!(!indexes().await.iter().any(|(name, _)| name == "files_checksum"));
    cloudsync_projections::restore_indexes(&h.db.db).await.expect("restore");
    assert_eq!(indexes().await, before);
    assert!(matches!(
        cloudsync_projections::rebuild(&h.db.db, "nope").await,
        Err(cloudsync_projections::ProjectionError::Unknown(_))
    ));
}

async fn replay_prints_a_stream_and_a_users_history(h: &Harness) {
    let Scanned { token, user, readme, .. } = h.scanned("replay@example.org").await;
    h.ok(Some(&token), MOVE, json!({ "ids": [readme], "to": "moved" })).await;

    let mut out = Vec::new();
    cloudsync_gateway::cli::replay(&h.db.db, Some(&format!("file-{readme}")), None, false, &mut out)
        .await
        .expect("replay");
    let text = String::from_utf8(out).expect("utf-8");
    let types: Vec<&str> = text.lines().map(|l| l.split(' ').nth(3).expect("type")).collect();
    assert_eq!(types, ["FileDiscovered", "FileMoved"], "{text}");
    assert!(text.contains(&format!("actor={user}")));

    let mut out = Vec::new();
    let user_id: uuid::Uuid = user.parse().expect("uuid");
    cloudsync_gateway::cli::replay(&h.db.db, None, Some(user_id), true, &mut out)
        .await
        .expect("replay");
    let events: Vec<Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(events[0]["event_type"], json!("UserRegistered"));
    assert!(events.iter().any(|e| e["event_type"] == json!("ProviderConnected")));
    // (The content pipeline's readings of the user's files may come after.)
    let last = events
        .iter()
        .rev()
        .find(|e| e["event_type"] != json!("FileContentExtracted") && e["event_type"] != json!("FileAnalyzed"));
    assert_eq!(last.expect("some")["event_type"], json!("FileMoved"));
    let positions: Vec<i64> = events.iter().map(|e| e["position"].as_i64().expect("position")).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in global order");

    let unknown = cloudsync_gateway::cli::replay(
        &h.db.db,
        Some("file-00000000-0000-0000-0000-000000000000"),
        None,
        false,
        &mut Vec::new(),
    )
    .await;
    assert!(unknown.is_err());
}
