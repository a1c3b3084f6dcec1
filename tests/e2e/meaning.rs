//! Issue 17: search by meaning. The content pipeline embeds each file's name and text once
//! (`FileAnalyzed`), the vector index follows the log, and `searchFiles(mode:)` and `similarFiles`
//! find files whose words differ from the query's; a changed or deleted file loses its old vectors,
//! and a rebuild takes the vectors from the log without running the model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudsync_domain::{FileId, UserId};
use cloudsync_search::vectors::{SqliteVectors, VectorIndex, VectorProjector};
use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(
    with super::with_models;
    files_are_found_by_meaning_and_lose_old_vectors,
    documents_that_say_nearly_the_same_are_grouped,
);

/// The models directory the tests load from (installed by `scripts/models`). Under `CI=true` a
/// missing model fails the run; elsewhere the test says so and passes.
fn models_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CLOUDSYNC_TEST_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/cloudsync/models")))?;
    if dir.join("all-minilm-l6-v2").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the text model is not in {} (scripts/models installs it)",
        dir.display()
    );
    eprintln!("skipped: no text model in {} (run scripts/models)", dir.display());
    None
}

/// A server with the text model; on PostgreSQL its vectors go to pgvector (a database of its own on
/// `CLOUDSYNC_TEST_PGVECTOR_URL`, which `scripts/services` starts; required under `CI=true`).
async fn with_models(backend: cloudsync_eventstore::testing::Backend) -> Harness {
    let vector_url = match backend {
        cloudsync_eventstore::testing::Backend::Postgres => cloudsync_eventstore::testing::pgvector_database().await,
        cloudsync_eventstore::testing::Backend::Sqlite => None,
    };
    Harness::with_config(backend, |config| {
        config.models_dir = models_dir().or_else(|| Some(PathBuf::from("/nonexistent")));
        config.vector_url = vector_url;
    })
    .await
}

const SEARCH: &str = "query($q: String!, $m: SearchMode, $f: SearchFilters) { searchFiles(query: $q, mode: $m, filters: $f, first: 10) { total hits { score file { id path } } } }";

fn write(root: &Path, path: &str, data: &str) {
    let host = root.join(path);
    std::fs::create_dir_all(host.parent().expect("a parent")).expect("mkdir");
    std::fs::write(host, data).expect("write");
}

async fn search(h: &Harness, token: &str, query: &str, mode: Option<&str>, filters: Value) -> (Vec<String>, Value) {
    let data = h.ok(Some(token), SEARCH, json!({ "q": query, "m": mode, "f": filters })).await;
    let found = data["searchFiles"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|hit| hit["file"]["path"].as_str().map(str::to_owned))
        .collect();
    (found, data["searchFiles"].clone())
}

/// Waits until the text model has recorded `count` analyses in all and the vector index has them.
async fn analysed(h: &Harness, count: usize) -> Vec<Value> {
    let analyses = h.analyses("all-minilm-l6-v2", count).await;
    let app = h.server().app();
    let head = app.db.events.head().await.expect("head");
    assert!(
        app.vectors.wait_for(head, Duration::from_secs(20)).await,
        "the vector index catches up"
    );
    assert!(
        app.search.wait_for(head, Duration::from_secs(20)).await,
        "the search index catches up"
    );
    analyses
}

async fn files_are_found_by_meaning_and_lose_old_vectors(h: &Harness) {
    if models_dir().is_none() {
        return;
    }
    assert!(h.server().app().models.text().is_some(), "the text model loads");
    let (token, user) = h.register("meaning@example.org").await;
    let owner: UserId = user.parse().expect("a user id");
    let root = h.db.dir().join("library");
    // Neutral names, so that what is found is found by the texts.
    write(
        &root,
        "a/one.txt",
        "Income tax return for the fiscal year, filed with the revenue service in April.",
    );
    write(
        &root,
        "a/two.md",
        "Layer the pasta sheets with tomato sauce and cheese, then bake for forty minutes.",
    );
    write(
        &root,
        "b/three.txt",
        "We visited temples and gardens in Kyoto during the cherry blossom season.",
    );
    write(
        &root,
        "b/four.txt",
        "The mechanic changed the oil and replaced the worn brake pads.",
    );
    write(&root, "photos/beach_sunset.jpg", "\u{ff}\u{d8}\u{ff} not really a photo");
    let (provider, _) = h.connect_local(&token, &root).await;
    let analyses = analysed(h, 5).await;
    assert_eq!(analyses.len(), 5, "four texts and a photo's name, each once: {analyses:?}");
    assert!(
        analyses
            .iter()
            .all(|a| a["model"] == "all-minilm-l6-v2" && a["outcome"] == "analyzed"),
        "{analyses:?}"
    );
    let photo = analyses
        .iter()
        .find(|a| a["vectors"]["count"] == 1)
        .expect("the photo has its name's vector only");
    assert!(photo["vectors"]["reference"].is_string(), "vectors are referenced, not inline");

    // The query's words are not the document's.
    let (keyword, _) = search(h, &token, "tax papers", Some("KEYWORD"), Value::Null).await;
    assert!(keyword.is_empty(), "no file holds both words: {keyword:?}");
    let (semantic, result) = search(h, &token, "tax papers", Some("SEMANTIC"), Value::Null).await;
    assert_eq!(semantic.first().map(String::as_str), Some("a/one.txt"), "{result}");
    let (hybrid, result) = search(h, &token, "tax papers", None, Value::Null).await;
    assert_eq!(
        hybrid.first().map(String::as_str),
        Some("a/one.txt"),
        "hybrid is the default: {result}"
    );
    let (cooking, result) = search(h, &token, "what to cook for dinner", Some("HYBRID"), Value::Null).await;
    assert_eq!(cooking.first().map(String::as_str), Some("a/two.md"), "{result}");
    let (sea, result) = search(h, &token, "evening at the seaside", Some("SEMANTIC"), Value::Null).await;
    assert_eq!(
        sea.first().map(String::as_str),
        Some("photos/beach_sunset.jpg"),
        "a name has meaning too: {result}"
    );
    // Filters hold in every mode.
    let (filtered, result) = search(h, &token, "tax papers", Some("SEMANTIC"), json!({ "extensions": ["md"] })).await;
    assert!(!filtered.contains(&"a/one.txt".to_owned()), "{result}");
    let (written, result) = search(h, &token, "tax papers ext:md", Some("HYBRID"), Value::Null).await;
    assert!(
        !written.contains(&"a/one.txt".to_owned()),
        "filters in the query string hold too: {result}"
    );
    // A keyword query still finds what embeddings would rank low.
    let (exact, result) = search(h, &token, "mechanic", Some("HYBRID"), Value::Null).await;
    assert_eq!(exact.first().map(String::as_str), Some("b/four.txt"), "{result}");

    let files = h.files(&token, &provider).await;
    let id_of = |path: &str| files[path]["id"].as_str().expect("an id").to_owned();
    let similar = h
        .ok(
            Some(&token),
            "query($f: ID!) { similarFiles(fileId: $f, first: 5) { score file { path } } }",
            json!({ "f": id_of("a/two.md") }),
        )
        .await;
    let similar: Vec<&str> = similar["similarFiles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|hit| hit["file"]["path"].as_str())
        .collect();
    assert!(!similar.contains(&"a/two.md"), "a file is not similar to itself: {similar:?}");

    // Another account sees none of it.
    let (stranger, _) = h.register("stranger@example.org").await;
    let (theirs, _) = search(h, &stranger, "tax papers", Some("SEMANTIC"), Value::Null).await;
    assert!(theirs.is_empty(), "{theirs:?}");
    let code = h
        .error_code(
            Some(&stranger),
            "query($f: ID!) { similarFiles(fileId: $f) { score } }",
            json!({ "f": id_of("a/two.md") }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");

    // A changed file loses its old vectors and gets new ones; a deleted one loses them all.
    let index = Arc::clone(h.server().app().vectors.index());
    let temples: FileId = id_of("b/three.txt").parse().expect("a file id");
    let before = index.vectors(owner, temples).await.expect("vectors");
    assert_eq!(before.len(), 2, "the name's and one passage's");
    write(
        &root,
        "b/three.txt",
        "Receipt for the quarterly tax prepayment sent to the revenue service.",
    );
    h.rescan(&token, &provider).await;
    analysed(h, 6).await;
    let after = index.vectors(owner, temples).await.expect("vectors");
    assert_eq!(after.len(), 2);
    assert_ne!(before[1], after[1], "the passage's vector is the new text's");
    let (temple_search, result) = search(h, &token, "temples and cherry blossoms", Some("SEMANTIC"), Value::Null).await;
    assert!(
        !temple_search.contains(&"b/three.txt".to_owned()),
        "the old text's meaning is gone: {result}"
    );
    let embedded = index.embedded_files(owner).await.expect("count");
    assert_eq!(embedded, 5);
    h.ok(
        Some(&token),
        "mutation($f: [ID!]!) { deleteFiles(fileIds: $f) }",
        json!({ "f": [id_of("b/four.txt")] }),
    )
    .await;
    let head = h.server().app().db.events.head().await.expect("head");
    assert!(h.server().app().vectors.wait_for(head, Duration::from_secs(20)).await);
    assert_eq!(index.embedded_files(owner).await.expect("count"), 4);

    // A rebuild takes every vector from the log (through the chunk store), never from the model.
    let fresh = SqliteVectors::open(&h.db.dir().join("rebuilt-vectors")).await.expect("an index");
    let source = Arc::new(cloudsync_gateway::root::StoredVectors(h.server().app().commands.clone()));
    VectorProjector::new(Arc::clone(&h.server().app().db.events), source)
        .catch_up(&fresh)
        .await
        .expect("rebuilt");
    assert_eq!(fresh.embedded_files(owner).await.expect("count"), 4);
    assert_eq!(fresh.vectors(owner, temples).await.expect("vectors"), after);
}

async fn documents_that_say_nearly_the_same_are_grouped(h: &Harness) {
    if models_dir().is_none() {
        return;
    }
    let (token, _) = h.register("drafts@example.org").await;
    let root = h.db.dir().join("drafts");
    let letter = "Dear landlord, the heating in the flat has not worked since Monday and the rooms are cold. \
                  Please send someone to repair the boiler this week. Kind regards, Ada.";
    write(&root, "letters/heating.txt", letter);
    write(
        &root,
        "letters/heating-final.md",
        &letter.replace("this week", "this week if you can"),
    );
    write(
        &root,
        "letters/other.txt",
        "Our team won the chess tournament in the spring after five long rounds.",
    );
    write(&root, "letters/copy.txt", letter);
    h.connect_local(&token, &root).await;
    analysed(h, 4).await;
    let groups = h
        .ok(
            Some(&token),
            "query { duplicates { method score explanation files { path } } }",
            json!({}),
        )
        .await;
    let groups = groups["duplicates"].as_array().cloned().unwrap_or_default();
    let near: Vec<&Value> = groups.iter().filter(|g| g["method"] == "NEAR_DOCUMENT").collect();
    assert_eq!(near.len(), 1, "{groups:?}");
    let mut paths: Vec<&str> = near[0]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["path"].as_str())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        ["letters/copy.txt", "letters/heating-final.md", "letters/heating.txt"],
        "the edited letter with both copies, not the other text: {groups:?}"
    );
    assert!(near[0]["score"].as_f64().is_some_and(|s| (0.98..=1.0).contains(&s)), "{}", near[0]);
    assert!(near[0]["explanation"].as_str().is_some_and(|e| e.contains("nearly the same")));
    assert!(
        groups.iter().any(|g| g["method"] == "EXACT"),
        "the identical copy is an exact group too"
    );
}
