//! Issue 17: `duplicates` groups the caller's files that hold the same bytes, across all of their
//! providers, with what resolving each group would free and why; empty files are not duplicates,
//! and another user's copies never join a group.

use std::path::Path;

use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(exact_copies_on_any_provider_are_grouped_and_explained);

const DUPLICATES: &str = "query($t: Float, $first: Int!, $after: String) { duplicates(threshold: $t, first: $first, after: $after) { \
    id method score reclaimableBytes explanation cursor files { path providerId sizeBytes } } }";

fn write(root: &Path, path: &str, data: &[u8]) {
    let host = root.join(path);
    std::fs::create_dir_all(host.parent().expect("a parent")).expect("mkdir");
    std::fs::write(host, data).expect("write");
}

async fn duplicates(h: &Harness, token: &str, first: i64, after: Option<&str>) -> Vec<Value> {
    let data = h
        .ok(Some(token), DUPLICATES, json!({ "t": null, "first": first, "after": after }))
        .await;
    data["duplicates"].as_array().expect("a list").clone()
}

async fn exact_copies_on_any_provider_are_grouped_and_explained(h: &Harness) {
    let (token, _) = h.register("dupes@example.org").await;
    let (a, b) = (h.db.dir().join("dupes-a"), h.db.dir().join("dupes-b"));
    let photo = vec![7_u8; 300_000];
    let report = b"the quarterly report, twice".to_vec();
    write(&a, "photos/beach.jpg", &photo);
    write(&a, "backup/beach (1).jpg", &photo);
    write(&b, "old/beach.jpg", &photo);
    write(&a, "report.txt", &report);
    write(&b, "copies/report.txt", &report);
    write(&a, "unique.txt", b"only once");
    write(&a, "empty-1.txt", b"");
    write(&b, "empty-2.txt", b"");
    let (pa, _) = h.connect_local(&token, &a).await;
    let (pb, _) = h.connect_local(&token, &b).await;

    let groups = duplicates(h, &token, 50, None).await;
    assert_eq!(groups.len(), 2, "the photo and the report, not the empty files: {groups:?}");
    let photos = &groups[0];
    assert_eq!(photos["method"], "EXACT");
    assert_eq!(photos["score"], 1.0);
    assert_eq!(photos["reclaimableBytes"], 600_000, "two of three copies go");
    let mut paths: Vec<(String, String)> = photos["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["providerId"].as_str().expect("provider").to_owned(),
                f["path"].as_str().expect("path").to_owned(),
            )
        })
        .collect();
    paths.sort();
    let mut expected = vec![
        (pa.clone(), "backup/beach (1).jpg".to_owned()),
        (pa.clone(), "photos/beach.jpg".to_owned()),
        (pb.clone(), "old/beach.jpg".to_owned()),
    ];
    expected.sort();
    assert_eq!(paths, expected);
    let explanation = photos["explanation"].as_str().expect("explanation");
    assert!(
        explanation.contains("3 files on 2 providers") && explanation.contains("BLAKE3"),
        "{explanation}"
    );
    assert_eq!(groups[1]["reclaimableBytes"], report.len());

    // Paging: one group at a time walks both, in the same order.
    let first = duplicates(h, &token, 1, None).await;
    let second = duplicates(h, &token, 1, first[0]["cursor"].as_str()).await;
    assert_eq!(
        (first[0]["id"].clone(), second[0]["id"].clone()),
        (groups[0]["id"].clone(), groups[1]["id"].clone())
    );
    assert!(duplicates(h, &token, 1, second[0]["cursor"].as_str()).await.is_empty());

    // Another user's copy of the same photo joins none of this user's groups, and theirs has none.
    let (other, _) = h.register("other-dupes@example.org").await;
    let c = h.db.dir().join("dupes-c");
    write(&c, "beach.jpg", &photo);
    h.connect_local(&other, &c).await;
    assert!(duplicates(h, &other, 50, None).await.is_empty());
    assert_eq!(duplicates(h, &token, 50, None).await[0]["reclaimableBytes"], 600_000);

    // A changed copy leaves its group; a bad threshold or cursor is a clear error.
    write(&b, "copies/report.txt", b"edited since");
    h.rescan(&token, &pb).await;
    assert_eq!(duplicates(h, &token, 50, None).await.len(), 1);
    for variables in [
        json!({ "t": 1.5, "first": 10, "after": null }),
        json!({ "t": null, "first": 0, "after": null }),
        json!({ "t": null, "first": 10, "after": "not a cursor" }),
    ] {
        assert_eq!(h.error_code(Some(&token), DUPLICATES, variables).await, "BAD_USER_INPUT");
    }
}
