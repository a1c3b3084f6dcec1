//! Issue 17: `duplicates` groups the caller's files that hold the same bytes, across all of their
//! providers, with what resolving each group would free and why; empty files are not duplicates,
//! and another user's copies never join a group. `resolveDuplicate` deletes or moves all but one
//! file of a group on the real providers, keeping what it deletes restorable (`deletedFiles`,
//! `restoreDeletedFile`) until the collector lets it go, and refuses when a file changed.

use std::path::Path;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Harness, on_both_backends};

on_both_backends!(
    exact_copies_on_any_provider_are_grouped_and_explained,
    resolving_a_group_deletes_or_moves_the_others_restorably
);

const DUPLICATES: &str = "query($t: Float, $first: Int!, $after: String) { duplicates(threshold: $t, first: $first, after: $after) { \
    id method score reclaimableBytes explanation cursor files { id path providerId sizeBytes } } }";

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

const RESOLVE: &str = "mutation($g: ID!, $a: DuplicateAction!, $k: ID, $f: String) { \
    resolveDuplicate(groupId: $g, action: $a, keep: $k, folder: $f) }";
const DELETED: &str = "{ deletedFiles { id providerId path name checksum sizeBytes reason deletedAt restorableUntil } }";
const RESTORE: &str = "mutation($f: ID!) { restoreDeletedFile(fileId: $f) { providerId path operation { id } } }";

fn aged(root: &Path, path: &str, data: &[u8], days_ago: u64) {
    write(root, path, data);
    let at = std::time::SystemTime::now() - std::time::Duration::from_secs(days_ago * 86_400);
    std::fs::File::options()
        .write(true)
        .open(root.join(path))
        .and_then(|f| f.set_modified(at))
        .expect("set mtime");
}

fn resolve(group: &Value, action: &str, keep: Option<&str>, folder: Option<&str>) -> Value {
    json!({ "g": group["id"], "a": action, "k": keep, "f": folder })
}

async fn resolving_a_group_deletes_or_moves_the_others_restorably(h: &Harness) {
    let (token, _) = h.register("resolve@example.org").await;
    let (a, b) = (h.db.dir().join("resolve-a"), h.db.dir().join("resolve-b"));
    let photo = vec![9_u8; 200_000];
    aged(&b, "old/beach.jpg", &photo, 30);
    aged(&a, "photos/beach.jpg", &photo, 20);
    aged(&a, "backup/beach (1).jpg", &photo, 10);
    let (pa, _) = h.connect_local(&token, &a).await;
    let (pb, _) = h.connect_local(&token, &b).await;
    let groups = duplicates(h, &token, 50, None).await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    let group = &groups[0];
    let id_of = |provider: &str, path: &str| {
        group["files"]
            .as_array()
            .expect("files")
            .iter()
            .find(|f| f["providerId"] == provider && f["path"] == path)
            .map(|f| f["id"].as_str().expect("id").to_owned())
            .expect("a member")
    };
    let oldest = id_of(&pb, "old/beach.jpg");

    // Clear errors that change nothing: a malformed group, a missing or foreign `keep`, a folder
    // for an action that takes none, someone else's group.
    let stranger = h.files(&token, &pa).await["photos/beach.jpg"]["id"].clone();
    assert_ne!(stranger, Value::Null);
    for (variables, code) in [
        (json!({ "g": "nope", "a": "KEEP_NEWEST" }), "BAD_USER_INPUT"),
        (resolve(group, "KEEP_ONE", None, None), "BAD_USER_INPUT"),
        (
            resolve(group, "KEEP_ONE", Some(&Uuid::from_u128(5).to_string()), None),
            "BAD_USER_INPUT",
        ),
        (resolve(group, "KEEP_NEWEST", None, Some("x")), "BAD_USER_INPUT"),
        (resolve(group, "MOVE_OTHERS", None, None), "BAD_USER_INPUT"),
    ] {
        assert_eq!(h.error_code(Some(&token), RESOLVE, variables).await, code);
    }
    let (other, _) = h.register("resolve-other@example.org").await;
    assert_eq!(
        h.error_code(Some(&other), RESOLVE, resolve(group, "KEEP_OLDEST", None, None)).await,
        "NOT_FOUND"
    );

    // A copy that changed behind CloudSync's back (not rescanned yet) refuses the whole group.
    write(&a, "backup/beach (1).jpg", b"edited meanwhile");
    assert_eq!(
        h.error_code(Some(&token), RESOLVE, resolve(group, "KEEP_OLDEST", None, None)).await,
        "CONFLICT"
    );
    assert!(a.join("photos/beach.jpg").exists() && b.join("old/beach.jpg").exists());
    assert!(
        h.ok(Some(&token), DELETED, json!({})).await["deletedFiles"]
            .as_array()
            .expect("list")
            .is_empty()
    );
    aged(&a, "backup/beach (1).jpg", &photo, 10);

    // KEEP_OLDEST: the two later copies go from the disk; their contents are kept, restorable.
    let data = h.ok(Some(&token), RESOLVE, resolve(group, "KEEP_OLDEST", None, None)).await;
    assert_eq!(data["resolveDuplicate"], true);
    assert!(b.join("old/beach.jpg").exists());
    assert!(!a.join("photos/beach.jpg").exists() && !a.join("backup/beach (1).jpg").exists());
    assert!(duplicates(h, &token, 50, None).await.is_empty());
    assert_eq!(h.files(&token, &pa).await.len(), 0);
    let deleted = h.ok(Some(&token), DELETED, json!({})).await["deletedFiles"].clone();
    let deleted = deleted.as_array().expect("list");
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert!(
        deleted
            .iter()
            .all(|d| d["reason"] == "DUPLICATE" && d["sizeBytes"] == 200_000 && d["providerId"] == pa.as_str())
    );
    assert!(
        h.ok(Some(&other), DELETED, json!({})).await["deletedFiles"]
            .as_array()
            .expect("list")
            .is_empty()
    );
    // Resolving it again is refused: its files are gone.
    assert_eq!(
        h.error_code(Some(&token), RESOLVE, resolve(group, "KEEP_OLDEST", None, None)).await,
        "CONFLICT"
    );

    // The collector keeps what is within its retention: the copy comes back byte for byte.
    let app = h.server().app();
    app.commands.collect_garbage(std::time::Duration::from_secs(10)).await.expect("gc");
    let restored_id = deleted.iter().find(|d| d["path"] == "photos/beach.jpg").expect("deleted")["id"].clone();
    assert_eq!(h.error_code(Some(&other), RESTORE, json!({ "f": restored_id })).await, "NOT_FOUND");
    let data = h.ok(Some(&token), RESTORE, json!({ "f": restored_id })).await;
    assert_eq!(data["restoreDeletedFile"]["path"], "photos/beach.jpg");
    h.wait_for_operation(&token, data["restoreDeletedFile"]["operation"]["id"].as_str().expect("a scan"))
        .await;
    assert_eq!(std::fs::read(a.join("photos/beach.jpg")).expect("restored"), photo);
    assert_eq!(h.error_code(Some(&token), RESTORE, json!({ "f": restored_id })).await, "NOT_FOUND");
    let groups = duplicates(h, &token, 50, None).await;
    assert_eq!(groups.len(), 1, "the restored copy is a duplicate again: {groups:?}");

    // Something now at a deleted file's path is never overwritten by a restore.
    let other_copy = deleted.iter().find(|d| d["path"] == "backup/beach (1).jpg").expect("deleted")["id"].clone();
    write(&a, "backup/beach (1).jpg", b"a new file here");
    assert_eq!(h.error_code(Some(&token), RESTORE, json!({ "f": other_copy })).await, "CONFLICT");
    assert_eq!(std::fs::read(a.join("backup/beach (1).jpg")).expect("kept"), b"a new file here");

    // MOVE_OTHERS keeps `keep` where it is and moves the others into the folder.
    h.ok(
        Some(&token),
        RESOLVE,
        resolve(&groups[0], "MOVE_OTHERS", Some(&oldest), Some("duplicates")),
    )
    .await;
    assert!(b.join("old/beach.jpg").exists() && a.join("duplicates/beach.jpg").exists());
    assert!(!a.join("photos/beach.jpg").exists());
    assert!(h.files(&token, &pa).await.contains_key("duplicates/beach.jpg"));

    // Past its retention the collector lets the kept content go: no longer listed or restorable.
    let report = app
        .commands
        .clone()
        .with_deleted_keep_days(0)
        .collect_garbage(std::time::Duration::from_secs(10))
        .await
        .expect("gc");
    assert_eq!(report.deleted_released, 1);
    let head = app.db.events.head().await.expect("head");
    assert!(app.projections.wait_for(head, std::time::Duration::from_secs(10)).await);
    assert!(
        h.ok(Some(&token), DELETED, json!({})).await["deletedFiles"]
            .as_array()
            .expect("list")
            .is_empty()
    );
    std::fs::remove_file(a.join("backup/beach (1).jpg")).expect("rm");
    assert_eq!(h.error_code(Some(&token), RESTORE, json!({ "f": other_copy })).await, "NOT_FOUND");
}
