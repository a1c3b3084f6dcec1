//! Issue 16: searchFiles over the caller's files, on tantivy (the default) and on Elasticsearch,
//! with read-your-writes, facets, highlights and paging; `files` walks any number of files by cursor;
//! a rebuild swaps the index under a running server.

use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Harness, on_both_backends};

on_both_backends!(
    files_are_found_by_name_and_path_with_highlights_and_facets,
    a_search_right_after_a_change_sees_it,
    files_pages_walk_every_file_once,
    a_rebuilt_index_takes_over_while_the_server_runs,
);

mod elasticsearch {
    use super::*;

    /// A server whose search index is on the Elasticsearch API server of scripts/services.
    async fn harness(backend: cloudsync_eventstore::testing::Backend) -> Harness {
        let url = match std::env::var("CLOUDSYNC_TEST_ELASTICSEARCH_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => panic!("CLOUDSYNC_TEST_ELASTICSEARCH_URL is not set (run scripts/services and source its env file)"),
        };
        Harness::with_config(backend, |config| {
            config.elasticsearch_url = Some(url);
            config.elasticsearch_index = format!("cs-e2e-{}", Uuid::new_v4().simple());
        })
        .await
    }

    on_both_backends!(with super::harness;
        files_are_found_by_name_and_path_with_highlights_and_facets,
        a_search_right_after_a_change_sees_it,
    );

    async fn files_are_found_by_name_and_path_with_highlights_and_facets(h: &Harness) {
        super::files_are_found_by_name_and_path_with_highlights_and_facets(h).await;
    }

    async fn a_search_right_after_a_change_sees_it(h: &Harness) {
        super::a_search_right_after_a_change_sees_it(h).await;
    }
}

const SEARCH: &str = "query($q: String!, $f: SearchFilters, $first: Int, $after: String) { searchFiles(query: $q, filters: $f, first: $first, after: $after) { \
    total stale indexedPosition hits { file { id path } score highlights { field snippet } } \
    facets { providers { value count } extensions { value count } kinds { value count } sizeBuckets { value count } years { value count } languages { value count } } \
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }";

async fn search(h: &Harness, token: &str, query: &str, filters: Value) -> Value {
    let data = h.ok(Some(token), SEARCH, json!({ "q": query, "f": filters, "first": 20 })).await;
    data["searchFiles"].clone()
}

fn paths(result: &Value) -> Vec<String> {
    let mut out: Vec<String> = result["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["file"]["path"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

async fn files_are_found_by_name_and_path_with_highlights_and_facets(h: &Harness) {
    let scanned = h.scanned("finder@example.org").await;
    let token = &scanned.token;
    let report = search(h, token, "repo", Value::Null).await;
    assert_eq!(paths(&report), ["docs/report 2024.pdf"], "{report}");
    assert_eq!(report["stale"], false);
    assert_eq!(
        report["hits"][0]["highlights"][0],
        json!({ "field": "name", "snippet": "<mark>report</mark> 2024.pdf" })
    );
    assert_eq!(
        paths(&search(h, token, "zazolc", Value::Null).await),
        ["docs/zażółć gęślą.md"],
        "folded"
    );
    assert_eq!(
        paths(&search(h, token, "photos", Value::Null).await),
        ["photos/2024/cat.jpg"],
        "by folder"
    );
    assert_eq!(
        paths(&search(h, token, "ext:pdf OR ext:md", Value::Null).await),
        ["docs/report 2024.pdf", "docs/zażółć gęślą.md"]
    );

    let all = search(h, token, "", Value::Null).await;
    assert_eq!(all["total"], 4, "{all}");
    assert_eq!(all["facets"]["providers"], json!([{ "value": scanned.provider, "count": 4 }]));
    assert_eq!(all["facets"]["sizeBuckets"], json!([{ "value": "0-10KiB", "count": 4 }]));
    let docs = search(h, token, "", json!({ "pathPrefix": "docs", "providerIds": [scanned.provider] })).await;
    assert_eq!(docs["total"], 2, "{docs}");
    assert_eq!(
        docs["facets"]["extensions"],
        json!([{ "value": "md", "count": 1 }, { "value": "pdf", "count": 1 }])
    );

    let bad = h
        .gql(
            Some(token),
            SEARCH,
            json!({ "q": "x", "first": 5, "f": { "minSize": 10, "maxSize": 1 } }),
        )
        .await;
    assert_eq!(bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{bad}");
    let code = h
        .error_code(Some(token), SEARCH, json!({ "q": "x", "first": 5, "after": "not a cursor" }))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
}

async fn a_search_right_after_a_change_sees_it(h: &Harness) {
    let scanned = h.scanned("changer@example.org").await;
    let token = &scanned.token;
    let moved = h
        .ok(
            Some(token),
            "mutation($ids: [ID!]!) { moveFiles(fileIds: $ids, targetPath: \"archive\") { path } }",
            json!({ "ids": [scanned.readme] }),
        )
        .await;
    assert_eq!(moved["moveFiles"][0]["path"], "archive/readme.txt");
    let found = search(h, token, "path:archive readme", Value::Null).await;
    assert_eq!(paths(&found), ["archive/readme.txt"], "{found}");
    assert_eq!(found["stale"], false);
    h.ok(
        Some(token),
        "mutation($ids: [ID!]!) { deleteFiles(fileIds: $ids) }",
        json!({ "ids": [scanned.readme] }),
    )
    .await;
    let after = search(h, token, "readme", Value::Null).await;
    assert_eq!(after["total"], 0, "a deleted file is gone from the index at once: {after}");
}

async fn files_pages_walk_every_file_once(h: &Harness) {
    let scanned = h.scanned("walker@example.org").await;
    let token = &scanned.token;
    let query = "query($after: String) { files(limit: 3, after: $after) { path cursor } }";
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = h.ok(Some(token), query, json!({ "after": after })).await;
        let files = page["files"].as_array().cloned().unwrap_or_default();
        if files.is_empty() {
            break;
        }
        seen.extend(files.iter().filter_map(|f| f["path"].as_str().map(str::to_owned)));
        after = files.last().map(|f| f["cursor"].clone()).unwrap_or(Value::Null);
    }
    assert_eq!(
        seen,
        ["docs/report 2024.pdf", "docs/zażółć gęślą.md", "photos/2024/cat.jpg", "readme.txt"]
    );
    let code = h.error_code(Some(token), query, json!({ "after": "garbage" })).await;
    assert_eq!(code, "BAD_USER_INPUT");

    // Search pages too: first 1, then after its cursor.
    let first = h.ok(Some(token), SEARCH, json!({ "q": "", "first": 3 })).await;
    assert_eq!(first["searchFiles"]["pageInfo"]["hasNextPage"], true);
    let cursor = first["searchFiles"]["pageInfo"]["endCursor"].clone();
    let next = h.ok(Some(token), SEARCH, json!({ "q": "", "first": 3, "after": cursor })).await;
    assert_eq!(next["searchFiles"]["hits"].as_array().map(Vec::len), Some(1), "{next}");
    assert_eq!(next["searchFiles"]["pageInfo"]["hasNextPage"], false);
}

async fn a_rebuilt_index_takes_over_while_the_server_runs(h: &Harness) {
    let scanned = h.scanned("rebuild@example.org").await;
    let token = &scanned.token;
    let engine = cloudsync_search::Engine::tantivy(h.db.dir().join("data").join("search"));
    let before = engine.current().await.expect("the live index").expect("one exists");
    let app = h.server().app();
    let texts: Arc<dyn cloudsync_search::TextSource> = Arc::new(cloudsync_gateway::root::Texts(app.commands.clone()));
    let read = cloudsync_search::rebuild(&engine, Arc::clone(&app.db.events), Some(texts))
        .await
        .expect("rebuild");
    assert!(read > 0);
    let after = engine.current().await.expect("the live index").expect("one exists");
    assert_ne!(before, after, "a new index is live");
    // The server moves over (within a second on its own; here at once) and goes on indexing into it.
    app.search.search().refresh().await;
    std::fs::write(scanned.root.join("fresh-notes.txt"), "new").expect("write");
    h.rescan(token, &scanned.provider).await;
    let found = search(h, token, "fresh", Value::Null).await;
    assert_eq!(paths(&found), ["fresh-notes.txt"], "{found}");
    assert_eq!(search(h, token, "", Value::Null).await["total"], 5);
}
