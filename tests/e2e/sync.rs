//! Issue 4: the sync engine — pairs of folders kept in agreement through the API.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use cloudsync_domain::ProviderPath;
use cloudsync_domain::events::DomainEvent;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};
use crate::providers::{connect, s3_settings, var};
use crate::spine::next_json;

on_both_backends!(
    two_way_sync_propagates_merges_and_settles_conflicts,
    a_mirror_that_would_delete_too_much_waits_for_approval,
    sync_reaches_webdav_and_s3,
    sync_progress_streams_until_the_run_ends,
    bad_sync_requests_change_nothing,
    a_changed_large_file_is_written_as_its_changed_ranges,
    manual_conflicts_wait_for_the_owner,
    pairs_run_on_their_own_on_change_and_on_schedule,
    earlier_versions_are_kept_listed_and_restored,
    garbage_collection_waits_for_runs_and_keeps_what_is_referenced,
    versions_kept_by_writes_in_place_cost_what_changed_and_restore,
    a_long_history_loads_from_its_sealed_snapshot,
);

const SYNC: &str = "mutation($s: FolderInput!, $t: FolderInput!, $m: SyncMode, $c: ConflictPolicy, $d: Int) { \
    syncFolders(source: $s, target: $t, mode: $m, conflictPolicy: $c, maxDeletePercent: $d) { \
    id kind pair { id mode conflictPolicy maxDeletePercent lastOperationId source { providerId path } target { providerId path } } } }";
const RUN: &str = "mutation($p: ID!) { runSync(pairId: $p) { id kind pairId status } }";
const STATUS: &str = "query($o: ID!) { syncStatus(operationId: $o) { status paused held { side deletes } filesDone bytesDone filesTotal bytesTotal error } }";

/// Every file below `root` (relative path → content).
pub(crate) fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("readable folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("inside").to_string_lossy().replace('\\', "/");
                out.insert(relative, std::fs::read(&path).expect("readable file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub(crate) fn write(root: &Path, path: &str, content: &[u8]) {
    let host = root.join(path);
    std::fs::create_dir_all(host.parent().expect("parent")).expect("mkdir");
    std::fs::write(host, content).expect("write");
}

fn set_mtime(root: &Path, path: &str, at: SystemTime) {
    let file = std::fs::File::options().write(true).open(root.join(path)).expect("open");
    file.set_modified(at).expect("set mtime");
}

/// Incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0_u64;
    while out.len() < len {
        out.extend_from_slice(blake3::hash(&[seed.to_le_bytes(), counter.to_le_bytes()].concat()).as_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// Two empty local folders of one new user, connected: (token, source provider, source root, target provider, target root).
pub(crate) async fn two_folders(
    h: &Harness,
    email: &str,
    seed: &[(&str, &[u8])],
) -> (String, String, std::path::PathBuf, String, std::path::PathBuf) {
    let (token, _) = h.register(email).await;
    let (a, b) = (h.db.dir().join("side-a"), h.db.dir().join("side-b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    for (path, content) in seed {
        write(&a, path, content);
    }
    let (source, _) = h.connect_local(&token, &a).await;
    let (target, _) = h.connect_local(&token, &b).await;
    (token, source, a, target, b)
}

async fn create_pair(h: &Harness, token: &str, source: &str, target: &str, mode: &str, max_delete: i64) -> (String, String) {
    create_pair_with(h, token, source, target, mode, max_delete, "KEEP_BOTH").await
}

async fn create_pair_with(
    h: &Harness,
    token: &str,
    source: &str,
    target: &str,
    mode: &str,
    max_delete: i64,
    policy: &str,
) -> (String, String) {
    let data = h
        .ok(
            Some(token),
            SYNC,
            json!({ "s": { "providerId": source, "path": "" }, "t": { "providerId": target, "path": "" }, "m": mode, "c": policy, "d": max_delete }),
        )
        .await;
    let pair = data["syncFolders"]["pair"]["id"].as_str().expect("pair id").to_owned();
    let operation = data["syncFolders"]["id"].as_str().expect("first run").to_owned();
    assert_eq!(data["syncFolders"]["kind"], json!("sync"));
    assert_eq!(
        data["syncFolders"]["pair"]["lastOperationId"],
        json!(operation),
        "the pair names its first run"
    );
    assert_eq!(data["syncFolders"]["pair"]["mode"], json!(mode));
    (pair, operation)
}

pub(crate) async fn run(h: &Harness, token: &str, pair: &str) -> Value {
    let data = h.ok(Some(token), RUN, json!({ "p": pair })).await;
    let operation = data["runSync"]["id"].as_str().expect("operation").to_owned();
    assert_eq!(data["runSync"]["kind"], json!("sync"));
    assert_eq!(data["runSync"]["pairId"], json!(pair));
    let status = h.wait_for_operation(token, &operation).await;
    json!({ "id": operation, "status": status })
}

/// The decisions a run recorded, as (path, reason JSON).
async fn decisions(h: &Harness, operation: &str) -> Vec<(String, Value)> {
    let events = h.server().app().db.events.read_all(0, 1_000_000).await.expect("events");
    events
        .into_iter()
        .filter(|e| e.event_type == "SyncDecisionRecorded")
        .filter_map(
            |e| match DomainEvent::decode(&e.event_type, e.schema_version, &e.payload).expect("decodes") {
                DomainEvent::SyncDecisionRecorded(d) if d.job_id.to_string() == operation => Some((
                    d.decision.path.as_str().to_owned(),
                    serde_json::to_value(d.decision.reason).expect("json"),
                )),
                _ => None,
            },
        )
        .collect()
}

async fn two_way_sync_propagates_merges_and_settles_conflicts(h: &Harness) {
    let big = noise(3 * 1024 * 1024 + 17, 1);
    let notes = b"line 1\nline 2\nline 3\nline 4\nline 5\n";
    // A text file too large to copy through memory (3 MiB), still merged line by line.
    let log_lines = |edit: &dyn Fn(usize) -> Option<String>| -> Vec<u8> {
        (0..60_000)
            .map(|i| edit(i).unwrap_or_else(|| format!("entry {i:06}: nothing happened at all this time\n")))
            .collect::<String>()
            .into_bytes()
    };
    let long_log = log_lines(&|_| None);
    assert!(long_log.len() > 2 * 1024 * 1024);
    let seed: Vec<(&str, &[u8])> = vec![
        ("notes.txt", notes),
        ("long.log", &long_log),
        ("photo.jpg", b"JPEG original"),
        ("docs/a.md", b"alpha"),
        ("docs/b.md", b"beta"),
        ("gone.txt", b"to be deleted"),
        ("big.bin", &big),
    ];
    let (token, source, a, target, b) = two_folders(h, "two-way@example.org", &seed).await;
    let (pair, first) = create_pair(h, &token, &source, &target, "TWO_WAY", 50).await;
    let status = h.wait_for_operation(&token, &first).await;
    assert_eq!(tree(&b), tree(&a), "the first run copies everything across");
    assert_eq!(status["filesDone"], json!(7));
    assert_eq!(status["bytesDone"].as_i64(), Some(tree(&a).values().map(|c| c.len() as i64).sum()));

    // Edits on both sides.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    write(&a, "notes.txt", b"LINE 1 from the source\nline 2\nline 3\nline 4\nline 5\n");
    write(&b, "notes.txt", b"line 1\nline 2\nline 3\nline 4\nLINE 5 from the target\n");
    write(&a, "photo.jpg", b"JPEG edited on the source");
    set_mtime(&a, "photo.jpg", hour_ago);
    write(&b, "photo.jpg", b"JPEG edited on the target, later");
    std::fs::rename(a.join("docs/a.md"), a.join("docs/a-renamed.md")).expect("rename");
    std::fs::remove_file(b.join("gone.txt")).expect("delete");
    write(&b, "new-on-target.txt", b"fresh from the target");
    let source_edit = |i: usize| (i == 10).then(|| "entry 000010: edited on the source\n".to_owned());
    let target_edit = |i: usize| (i == 50_000).then(|| "entry 050000: edited on the target\n".to_owned());
    write(&a, "long.log", &log_lines(&source_edit));
    write(&b, "long.log", &log_lines(&target_edit));

    let second = run(h, &token, &pair).await;
    let (after_a, after_b) = (tree(&a), tree(&b));
    assert_eq!(after_a, after_b, "both sides agree after the run");
    assert_eq!(
        after_a["notes.txt"],
        b"LINE 1 from the source\nline 2\nline 3\nline 4\nLINE 5 from the target\n".to_vec(),
        "edits to different lines are merged"
    );
    assert_eq!(
        after_a["long.log"],
        log_lines(&|i| source_edit(i).or_else(|| target_edit(i))),
        "a 3 MiB text file's edits to different lines are merged too"
    );
    assert_eq!(
        after_a["photo.jpg"],
        b"JPEG edited on the target, later".to_vec(),
        "the newer edit keeps the name"
    );
    let conflict: Vec<&String> = after_a
        .keys()
        .filter(|k| k.starts_with("photo.conflict-") && k.ends_with("-source.jpg"))
        .collect();
    assert_eq!(conflict.len(), 1, "the older edit is kept as a conflict copy: {:?}", after_a.keys());
    assert_eq!(after_a[conflict[0]], b"JPEG edited on the source".to_vec());
    assert!(
        after_a.contains_key("docs/a-renamed.md") && !after_a.contains_key("docs/a.md"),
        "the rename is propagated"
    );
    assert!(!after_a.contains_key("gone.txt"), "the delete is propagated");
    assert_eq!(after_a["new-on-target.txt"], b"fresh from the target".to_vec());
    assert_eq!(after_a["big.bin"], big, "the unchanged large file is intact");

    let mut reasons: Vec<(String, String)> = decisions(h, second["id"].as_str().expect("id"))
        .await
        .into_iter()
        .map(|(path, reason)| (path, reason["reason"].as_str().unwrap_or_default().to_owned()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("docs/a.md".to_owned(), "renamed".to_owned()),
            ("gone.txt".to_owned(), "changed".to_owned()),
            ("long.log".to_owned(), "both_changed".to_owned()),
            ("new-on-target.txt".to_owned(), "changed".to_owned()),
            ("notes.txt".to_owned(), "both_changed".to_owned()),
            ("photo.jpg".to_owned(), "conflict".to_owned()),
        ],
        "every decision is recorded with its reason"
    );

    // A file new on one side only is not hashed while listing (its decision names no checksum); it
    // is hashed while copied, and the base records its real checksum.
    let events = h.server().app().db.events.read_all(0, 1_000_000).await.expect("events");
    let mut copy_checksum = None;
    let mut agreed_checksum = None;
    for recorded in &events {
        match DomainEvent::decode(&recorded.event_type, recorded.schema_version, &recorded.payload).expect("decodes") {
            DomainEvent::SyncDecisionRecorded(d) if d.decision.path.as_str() == "new-on-target.txt" => {
                if let Some(cloudsync_domain::merge::Action::Copy { version, .. }) = d.decision.actions.first() {
                    copy_checksum = Some(version.checksum.clone());
                }
            }
            DomainEvent::SyncBaseAdvanced(b) => {
                for change in b.changes.iter().filter(|c| c.path.as_str() == "new-on-target.txt") {
                    agreed_checksum = change.version.as_ref().map(|v| v.checksum.clone());
                }
            }
            _ => {}
        }
    }
    assert_eq!(copy_checksum.as_deref(), Some(""));
    assert_eq!(agreed_checksum, Some(blake3::hash(b"fresh from the target").to_hex().to_string()));

    // Nothing changed since: the next run carries nothing out and moves no byte.
    let events_before = h.server().app().db.events.head().await.expect("head");
    let third = run(h, &token, &pair).await;
    assert_eq!(third["status"]["filesDone"], json!(0));
    assert_eq!(third["status"]["bytesDone"], json!(0));
    let recorded = h.server().app().db.events.read_all(events_before, 10_000).await.expect("events");
    assert!(
        recorded
            .iter()
            .all(|e| !matches!(e.event_type.as_str(), "SyncDecisionRecorded" | "SyncBaseAdvanced")),
        "an idle run records no decision and no new base: {:?}",
        recorded.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    assert_eq!(tree(&a), after_a);
}

async fn a_mirror_that_would_delete_too_much_waits_for_approval(h: &Harness) {
    let contents: Vec<(String, Vec<u8>)> = (0..10).map(|i| (format!("f{i}.txt"), format!("file {i}").into_bytes())).collect();
    let seed: Vec<(&str, &[u8])> = contents.iter().map(|(p, c)| (p.as_str(), c.as_slice())).collect();
    let (token, source, a, target, b) = two_folders(h, "mirror@example.org", &seed).await;
    let (pair, first) = create_pair(h, &token, &source, &target, "MIRROR", 30).await;
    h.wait_for_operation(&token, &first).await;
    assert_eq!(tree(&b), tree(&a), "a mirror makes the target the source");

    for i in 0..5 {
        std::fs::remove_file(a.join(format!("f{i}.txt"))).expect("delete");
    }
    let mut appended = h.server().app().db.events.watch();
    let data = h.ok(Some(&token), RUN, json!({ "p": pair })).await;
    let operation = data["runSync"]["id"].as_str().expect("operation").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let status = h.ok(Some(&token), STATUS, json!({ "o": operation })).await["syncStatus"].clone();
        if !status["held"].is_null() {
            break status;
        }
        assert!(Instant::now() < deadline, "the run was not held: {status}");
        h.next_append(&mut appended, deadline).await;
    };
    assert_eq!(held["held"], json!({ "side": "target", "deletes": 5 }));
    assert_eq!(held["paused"], json!(true));
    assert_eq!(tree(&b).len(), 10, "nothing is deleted before approval");
    // A plain resume does not get past the rail.
    let resume = "mutation($o: ID!) { resumeOperation(operationId: $o) { status } }";
    assert_eq!(h.error_code(Some(&token), resume, json!({ "o": operation })).await, "CONFLICT");

    let approve = "mutation($o: ID!) { approveSync(operationId: $o) { id held { deletes } } }";
    // Only the owner approves.
    let (intruder, _) = h.register("intruder-mirror@example.org").await;
    assert_eq!(h.error_code(Some(&intruder), approve, json!({ "o": operation })).await, "NOT_FOUND");
    let approved = h.ok(Some(&token), approve, json!({ "o": operation })).await;
    assert_eq!(approved["approveSync"]["held"], Value::Null);
    h.wait_for_operation(&token, &operation).await;
    assert_eq!(tree(&b), tree(&a));
    assert_eq!(tree(&b).len(), 5);
    // Approving twice is refused.
    assert_eq!(h.error_code(Some(&token), approve, json!({ "o": operation })).await, "CONFLICT");
}

/// Every file of a provider below its root, as (path → content).
async fn remote_tree(kind: cloudsync_domain::ProviderKind, settings: &Value) -> BTreeMap<String, Vec<u8>> {
    let provider = cloudsync_providers::open(kind, settings.as_object().expect("object")).expect("opens");
    let entries: Vec<_> = provider.list(&ProviderPath::root()).try_collect().await.expect("listed");
    let mut out = BTreeMap::new();
    for entry in entries {
        let pieces: Vec<bytes::Bytes> = provider
            .read(&entry.path, 0..entry.size)
            .await
            .expect("read")
            .try_collect()
            .await
            .expect("content");
        out.insert(entry.path.as_str().to_owned(), pieces.concat());
    }
    out
}

async fn sync_reaches_webdav_and_s3(h: &Harness) {
    let big = noise(2 * 1024 * 1024 + 5, 7);
    let seed: Vec<(&str, &[u8])> = vec![("readme.txt", b"hello"), ("deep/er/data.bin", &big), ("docs/plan.md", b"# plan\n")];
    let (token, source, a, _, _) = two_folders(h, "remote-sync@example.org", &seed).await;

    // WebDAV writes are not atomic: copies land under a temporary name first, then are renamed.
    let dav_settings = json!({
        "endpoint": var("CLOUDSYNC_TEST_WEBDAV_ENDPOINT"), "username": var("CLOUDSYNC_TEST_WEBDAV_USER"),
        "password": var("CLOUDSYNC_TEST_WEBDAV_PASSWORD"), "root": format!("/e2e-sync-{}/", uuid::Uuid::new_v4().simple()),
    });
    let (dav, _) = connect(h, &token, "webdav", &dav_settings).await;
    let (pair, first) = create_pair(h, &token, &source, &dav, "TWO_WAY", 50).await;
    h.wait_for_operation(&token, &first).await;
    let on_dav = remote_tree(cloudsync_domain::ProviderKind::Webdav, &dav_settings).await;
    assert_eq!(on_dav, tree(&a), "no temporary file is left behind");

    // Another client changes a file on the WebDAV side; the next run brings it home.
    let provider =
        cloudsync_providers::open(cloudsync_domain::ProviderKind::Webdav, dav_settings.as_object().expect("object")).expect("opens");
    let data = futures::stream::iter([Ok(bytes::Bytes::from_static(b"# plan, revised on the server\n"))]).boxed();
    provider
        .write(&ProviderPath::parse("docs/plan.md").expect("path"), data)
        .await
        .expect("written");
    run(h, &token, &pair).await;
    assert_eq!(tree(&a)["docs/plan.md"], b"# plan, revised on the server\n".to_vec());

    // S3 uploads are atomic: copies go straight to their names.
    let s3_settings = s3_settings("e2e").await;
    let (s3, _) = connect(h, &token, "s3", &s3_settings).await;
    let (_, copy) = create_pair(h, &token, &source, &s3, "COPY", 50).await;
    h.wait_for_operation(&token, &copy).await;
    assert_eq!(remote_tree(cloudsync_domain::ProviderKind::S3, &s3_settings).await, tree(&a));
}

async fn sync_progress_streams_until_the_run_ends(h: &Harness) {
    let big = noise(4 * 1024 * 1024, 3);
    let seed: Vec<(&str, &[u8])> = vec![("one.bin", &big), ("two.txt", b"two")];
    let (token, source, _, target, _) = two_folders(h, "progress@example.org", &seed).await;
    let (intruder, _) = h.register("progress-intruder@example.org").await;
    let (_, operation) = create_pair(h, &token, &source, &target, "TWO_WAY", 50).await;

    let query = "subscription($o: ID!) { syncProgress(operationId: $o) { status filesDone bytesDone bytesTotal etaSeconds } }";
    let subscribe = |auth: String| {
        let operation = operation.clone();
        async move { h.subscribe(&auth, query, json!({ "o": operation })).await }
    };
    let mut theirs = subscribe(intruder).await;
    let refused = next_json(&mut theirs).await;
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"],
        json!("NOT_FOUND"),
        "{refused}"
    );

    let mut socket = subscribe(token).await;
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), next_json(&mut socket))
            .await
            .expect("progress in time");
        match message["type"].as_str() {
            Some("next") => seen.push(message["payload"]["data"]["syncProgress"].clone()),
            Some("complete") => break,
            other => panic!("unexpected {other:?}: {message}"),
        }
    }
    let last = seen.last().expect("at least one update");
    assert_eq!(last["status"], json!("completed"), "{seen:?}");
    assert_eq!(last["bytesDone"].as_i64(), Some(big.len() as i64 + 3));
    assert_eq!(last["bytesTotal"], last["bytesDone"]);
    let done: Vec<i64> = seen.iter().filter_map(|s| s["bytesDone"].as_i64()).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress never goes back: {done:?}");
}

async fn bad_sync_requests_change_nothing(h: &Harness) {
    let (token, source, _, target, _) = two_folders(h, "bad-sync@example.org", &[("x.txt", b"x")]).await;
    let (other, _) = h.register("other-sync@example.org").await;
    let (pair, first) = create_pair(h, &token, &source, &target, "COPY", 50).await;
    h.wait_for_operation(&token, &first).await;
    let head = h.server().app().db.events.head().await.expect("head");

    let folder = |provider: &str, path: &str| json!({ "providerId": provider, "path": path });
    let refusals = [
        // Overlapping folders of one provider.
        (
            json!({ "s": folder(&source, ""), "t": folder(&source, "sub") }),
            "BAD_USER_INPUT",
            token.as_str(),
        ),
        // Paths that could escape the root, and malformed ids.
        (
            json!({ "s": folder(&source, "../etc"), "t": folder(&target, "") }),
            "BAD_USER_INPUT",
            token.as_str(),
        ),
        (
            json!({ "s": folder("not-an-id", ""), "t": folder(&target, "") }),
            "BAD_USER_INPUT",
            token.as_str(),
        ),
        // Unknown ids and someone else's providers look the same.
        (
            json!({ "s": folder(&uuid::Uuid::new_v4().to_string(), ""), "t": folder(&target, "") }),
            "NOT_FOUND",
            token.as_str(),
        ),
        (
            json!({ "s": folder(&source, ""), "t": folder(&target, "copy") }),
            "NOT_FOUND",
            other.as_str(),
        ),
        (
            json!({ "s": folder(&source, ""), "t": folder(&target, "copy"), "d": 101 }),
            "BAD_USER_INPUT",
            token.as_str(),
        ),
    ];
    for (mut variables, code, who) in refusals {
        for (key, value) in [("m", json!("TWO_WAY")), ("c", json!("KEEP_BOTH")), ("d", json!(50))] {
            variables.as_object_mut().expect("object").entry(key).or_insert(value);
        }
        assert_eq!(h.error_code(Some(who), SYNC, variables.clone()).await, code, "{variables}");
    }
    // Retention out of range.
    let keeping = "mutation($s: FolderInput!, $t: FolderInput!, $k: Int, $days: Int) { \
        syncFolders(source: $s, target: $t, keepVersions: $k, keepDays: $days) { id } }";
    for (keep, days) in [(-1, 30), (1001, 30), (10, -5), (10, 36_501)] {
        let variables = json!({ "s": folder(&source, ""), "t": folder(&target, "kept"), "k": keep, "days": days });
        assert_eq!(
            h.error_code(Some(&token), keeping, variables).await,
            "BAD_USER_INPUT",
            "{keep} {days}"
        );
    }
    assert_eq!(h.error_code(Some(&other), RUN, json!({ "p": pair })).await, "NOT_FOUND");
    assert_eq!(
        h.error_code(Some(&token), RUN, json!({ "p": uuid::Uuid::new_v4() })).await,
        "NOT_FOUND"
    );
    assert_eq!(
        h.error_code(Some(&token), RUN, json!({ "p": "'; DROP TABLE events; --" })).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(h.error_code(None, RUN, json!({ "p": pair })).await, "UNAUTHENTICATED");
    let pairs = "query { syncPairs { id } }";
    assert_eq!(h.ok(Some(&other), pairs, json!({})).await["syncPairs"], json!([]));
    assert_eq!(
        h.server().app().db.events.head().await.expect("head"),
        head,
        "refusals record nothing"
    );
    assert_eq!(h.ok(Some(&token), pairs, json!({})).await["syncPairs"], json!([{ "id": pair }]));
}

async fn a_changed_large_file_is_written_as_its_changed_ranges(h: &Harness) {
    let big = noise(8 * 1024 * 1024, 11);
    let seed: Vec<(&str, &[u8])> = vec![("big.bin", &big), ("small.txt", b"small")];
    let (token, source, a, target, b) = two_folders(h, "delta@example.org", &seed).await;
    let (pair, first) = create_pair(h, &token, &source, &target, "TWO_WAY", 50).await;
    let status = h.wait_for_operation(&token, &first).await;
    let whole = big.len() as i64 + 5;
    assert_eq!(status["bytesDone"].as_i64(), Some(whole));
    let written = "query($o: ID!) { syncStatus(operationId: $o) { bytesDone bytesWritten } }";
    let first_written = h.ok(Some(&token), written, json!({ "o": first })).await;
    assert_eq!(
        first_written["syncStatus"]["bytesWritten"].as_i64(),
        Some(whole),
        "the first copy is whole"
    );

    // Two small edits inside the large file, in place.
    let mut edited = big.clone();
    edited[4_000_000..4_001_000].copy_from_slice(&noise(1000, 12));
    edited[100_000..100_010].copy_from_slice(b"0123456789");
    write(&a, "big.bin", &edited);
    let second = run(h, &token, &pair).await;
    let operation = second["id"].as_str().expect("id");
    let status = h.ok(Some(&token), written, json!({ "o": operation })).await["syncStatus"].clone();
    assert_eq!(
        status["bytesDone"].as_i64(),
        Some(edited.len() as i64),
        "the file counts whole for progress"
    );
    let sent = status["bytesWritten"].as_i64().expect("bytes written");
    assert!(
        sent > 0 && sent <= 4 * 256 * 1024,
        "only the changed chunks are written: {sent} bytes"
    );
    assert_eq!(std::fs::read(b.join("big.bin")).expect("read"), edited);

    // The other way: an edit on the target reaches the source the same way; it grows the file too.
    let mut again = edited.clone();
    again[7_000_000..7_000_004].copy_from_slice(b"WXYZ");
    again.extend_from_slice(b"appended");
    write(&b, "big.bin", &again);
    let third = run(h, &token, &pair).await;
    let status = h.ok(Some(&token), written, json!({ "o": third["id"] })).await["syncStatus"].clone();
    let sent = status["bytesWritten"].as_i64().expect("bytes written");
    assert!(
        sent > 0 && sent <= 2 * 256 * 1024,
        "{sent} bytes written for a 4-byte edit and an append"
    );
    assert_eq!(std::fs::read(a.join("big.bin")).expect("read"), again);
    assert_eq!(tree(&a), tree(&b));

    // An SFTP server that copies data itself (OpenSSH's copy-data) takes ranged writes too.
    let root = std::path::PathBuf::from(var("CLOUDSYNC_TEST_SFTP_ROOT")).join(format!("e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).expect("sftp root");
    let settings = json!({
        "endpoint": var("CLOUDSYNC_TEST_SFTP_ENDPOINT"), "user": var("CLOUDSYNC_TEST_SFTP_USER"),
        "key": var("CLOUDSYNC_TEST_SFTP_KEY"), "root": root.to_string_lossy(),
    });
    let (sftp, _) = connect(h, &token, "sftp", &settings).await;
    let (remote_pair, first) = create_pair(h, &token, &source, &sftp, "MIRROR", 50).await;
    h.wait_for_operation(&token, &first).await;
    assert_eq!(tree(&root), tree(&a));
    let mut edited = again.clone();
    edited[2_000_000..2_000_500].copy_from_slice(&noise(500, 13));
    write(&a, "big.bin", &edited);
    let remote = run(h, &token, &remote_pair).await;
    let status = h.ok(Some(&token), written, json!({ "o": remote["id"] })).await["syncStatus"].clone();
    let sent = status["bytesWritten"].as_i64().expect("bytes written");
    assert!(
        sent > 0 && sent <= 2 * 256 * 1024,
        "{sent} bytes written to the SFTP server for a 500-byte edit"
    );
    assert_eq!(tree(&root), tree(&a), "no temporary file is left on the server");
}

async fn manual_conflicts_wait_for_the_owner(h: &Harness) {
    let seed: Vec<(&str, &[u8])> = vec![("photo.jpg", b"JPEG v1"), ("notes.txt", b"a\nb\nc\n"), ("calm.txt", b"untouched")];
    let (token, source, a, target, b) = two_folders(h, "manual@example.org", &seed).await;
    let (intruder, _) = h.register("manual-intruder@example.org").await;
    let (pair, first) = create_pair_with(h, &token, &source, &target, "TWO_WAY", 50, "MANUAL").await;
    h.wait_for_operation(&token, &first).await;

    write(&a, "photo.jpg", b"JPEG edited on the source");
    write(&b, "photo.jpg", b"JPEG edited on the target");
    write(&a, "notes.txt", b"a\nsource's b\nc\n");
    write(&b, "notes.txt", b"a\ntarget's b\nc\n");
    run(h, &token, &pair).await;
    assert_eq!(
        std::fs::read(a.join("photo.jpg")).expect("read"),
        b"JPEG edited on the source",
        "nothing is decided for the owner"
    );
    assert_eq!(std::fs::read(b.join("photo.jpg")).expect("read"), b"JPEG edited on the target");

    let conflicts =
        "query($p: ID!) { syncConflicts(pairId: $p) { path kind source { checksum sizeBytes } target { checksum sizeBytes } resolution } }";
    let listed = h.ok(Some(&token), conflicts, json!({ "p": pair })).await["syncConflicts"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed[1]["path"], json!("photo.jpg"));
    assert_eq!(listed[1]["kind"], json!("BOTH_MODIFIED"));
    assert_eq!(
        listed[1]["target"]["checksum"],
        json!(blake3::hash(b"JPEG edited on the target").to_hex().to_string())
    );
    assert_eq!(h.error_code(Some(&intruder), conflicts, json!({ "p": pair })).await, "NOT_FOUND");

    let resolve = "mutation($p: ID!, $path: String!, $k: ConflictChoice!, $m: String) { \
        resolveConflict(pairId: $p, path: $path, keep: $k, mergedContent: $m) { id } }";
    assert_eq!(
        h.error_code(Some(&intruder), resolve, json!({ "p": pair, "path": "photo.jpg", "k": "SOURCE" }))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        h.error_code(Some(&token), resolve, json!({ "p": pair, "path": "calm.txt", "k": "SOURCE" }))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        h.error_code(Some(&token), resolve, json!({ "p": pair, "path": "notes.txt", "k": "MERGED" }))
            .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&token), resolve, json!({ "p": pair, "path": "../x", "k": "SOURCE" }))
            .await,
        "BAD_USER_INPUT"
    );

    let chosen = h
        .ok(Some(&token), resolve, json!({ "p": pair, "path": "photo.jpg", "k": "TARGET" }))
        .await;
    let operation = chosen["resolveConflict"]["id"].as_str().expect("a run").to_owned();
    h.wait_for_operation(&token, &operation).await;
    assert_eq!(std::fs::read(a.join("photo.jpg")).expect("read"), b"JPEG edited on the target");
    assert_eq!(std::fs::read(b.join("photo.jpg")).expect("read"), b"JPEG edited on the target");

    let merged = h
        .ok(
            Some(&token),
            resolve,
            json!({ "p": pair, "path": "notes.txt", "k": "MERGED", "m": "a\nboth b's\nc\n" }),
        )
        .await;
    let operation = merged["resolveConflict"]["id"].as_str().expect("a run").to_owned();
    h.wait_for_operation(&token, &operation).await;
    assert_eq!(std::fs::read(a.join("notes.txt")).expect("read"), b"a\nboth b's\nc\n");
    assert_eq!(tree(&a), tree(&b));
    let left = h.ok(Some(&token), conflicts, json!({ "p": pair })).await["syncConflicts"].clone();
    assert_eq!(left, json!([]), "settled conflicts are gone");
}

/// Waits until `check` holds (20 s deadline), looking again after each append to the log (the
/// runs that change the folders record their steps).
async fn eventually(h: &Harness, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut appended = h.server().app().db.events.watch();
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        h.next_append(&mut appended, deadline).await;
    }
}

async fn pairs_run_on_their_own_on_change_and_on_schedule(h: &Harness) {
    let (token, source, a, target, b) = two_folders(h, "auto-sync@example.org", &[("first.txt", b"first")]).await;
    let realtime = "mutation($s: ID!, $t: ID!) { syncFolders(source: { providerId: $s, path: \"\" }, \
        target: { providerId: $t, path: \"\" }, realtime: true) { id pair { id realtime } } }";
    let data = h.ok(Some(&token), realtime, json!({ "s": source, "t": target })).await;
    assert_eq!(data["syncFolders"]["pair"]["realtime"], json!(true));
    let first = data["syncFolders"]["id"].as_str().expect("first run").to_owned();
    h.wait_for_operation(&token, &first).await;
    // A change in either folder starts a run, without any request.
    write(&a, "from-source.txt", b"typed on the source");
    eventually(h, "a run after a change on the source", || b.join("from-source.txt").is_file()).await;
    write(&b, "sub/from-target.txt", b"typed on the target");
    eventually(h, "a run after a change on the target", || a.join("sub/from-target.txt").is_file()).await;

    // A cron schedule (every second) runs a pair of folders that nobody watches.
    let (c, d) = (h.db.dir().join("side-c"), h.db.dir().join("side-d"));
    std::fs::create_dir_all(&c).expect("mkdir");
    std::fs::create_dir_all(&d).expect("mkdir");
    let (third, _) = h.connect_local(&token, &c).await;
    let (fourth, _) = h.connect_local(&token, &d).await;
    let scheduled = "mutation($s: ID!, $t: ID!) { createSyncPair(input: { source: { providerId: $s, path: \"\" }, \
        target: { providerId: $t, path: \"\" }, mode: COPY, schedule: \"* * * * * *\" }) { schedule lastOperationId } }";
    let data = h.ok(Some(&token), scheduled, json!({ "s": third, "t": fourth })).await;
    assert_eq!(data["createSyncPair"]["schedule"], json!("* * * * * *"));
    assert_eq!(
        data["createSyncPair"]["lastOperationId"],
        Value::Null,
        "nothing runs until the schedule says so"
    );
    write(&c, "scheduled.txt", b"copied on schedule");
    eventually(h, "a scheduled run", || d.join("scheduled.txt").is_file()).await;
    assert_eq!(std::fs::read(d.join("scheduled.txt")).expect("read"), b"copied on schedule");
    // Invalid schedules are refused.
    let bad = "mutation($s: ID!, $t: ID!) { syncFolders(source: { providerId: $s, path: \"x\" }, \
        target: { providerId: $t, path: \"y\" }, schedule: \"every tuesday\") { id } }";
    assert_eq!(
        h.error_code(Some(&token), bad, json!({ "s": third, "t": fourth })).await,
        "BAD_USER_INPUT"
    );
    let bad_pair = "mutation($s: ID!, $t: ID!) { createSyncPair(input: { source: { providerId: $s, path: \"x\" }, \
        target: { providerId: $t, path: \"y\" }, schedule: \"every tuesday\" }) { id } }";
    assert_eq!(
        h.error_code(Some(&token), bad_pair, json!({ "s": third, "t": fourth })).await,
        "BAD_USER_INPUT"
    );
}

const VERSIONS: &str = "query($p: ID, $path: String, $f: ID) { fileVersions(providerId: $p, path: $path, fileId: $f) { \
    id pairId providerId path side checksum sizeBytes reason keptAt } }";
const RESTORE: &str =
    "mutation($v: ID!) { restoreFileVersion(versionId: $v) { providerId path side version { id checksum } operation { id } } }";

fn hex(content: &[u8]) -> String {
    blake3::hash(content).to_hex().to_string()
}

/// A two-way pair keeping `keep` versions of each file; waits for its first run.
pub(crate) async fn pair_keeping(h: &Harness, token: &str, source: &str, target: &str, keep: i64) -> String {
    let create = "mutation($s: FolderInput!, $t: FolderInput!, $k: Int) { syncFolders(source: $s, target: $t, keepVersions: $k) { \
        id pair { id keepVersions keepDays } } }";
    let data = h
        .ok(
            Some(token),
            create,
            json!({ "s": { "providerId": source, "path": "" }, "t": { "providerId": target, "path": "" }, "k": keep }),
        )
        .await;
    assert_eq!(data["syncFolders"]["pair"]["keepVersions"], json!(keep));
    assert_eq!(
        data["syncFolders"]["pair"]["keepDays"],
        json!(30),
        "versions are kept 30 days by default"
    );
    h.wait_for_operation(token, data["syncFolders"]["id"].as_str().expect("first run"))
        .await;
    data["syncFolders"]["pair"]["id"].as_str().expect("pair").to_owned()
}

pub(crate) async fn versions_of(h: &Harness, token: &str, provider: &str, path: &str) -> Vec<Value> {
    h.ok(Some(token), VERSIONS, json!({ "p": provider, "path": path })).await["fileVersions"]
        .as_array()
        .expect("list")
        .clone()
}

async fn earlier_versions_are_kept_listed_and_restored(h: &Harness) {
    let big = noise(2 * 1024 * 1024 + 3, 21);
    let seed: Vec<(&str, &[u8])> = vec![("report.txt", b"v1\n"), ("big.bin", &big), ("old.txt", b"will be deleted\n")];
    let (token, source, a, target, b) = two_folders(h, "versions@example.org", &seed).await;
    let pair = pair_keeping(h, &token, &source, &target, 2).await;

    // Three edits on the source, each carried over the target's copy by a run.
    for version in ["v2\n", "v3\n", "v4\n"] {
        write(&a, "report.txt", version.as_bytes());
        run(h, &token, &pair).await;
    }
    let mut edited = big.clone();
    edited[1_000_000..1_000_100].copy_from_slice(&noise(100, 22));
    write(&b, "big.bin", &edited);
    run(h, &token, &pair).await;
    std::fs::remove_file(a.join("old.txt")).expect("delete");
    run(h, &token, &pair).await;
    assert_eq!(tree(&a), tree(&b));

    // The target's report.txt was replaced three times; two versions are kept, newest first.
    let report = versions_of(h, &token, &target, "report.txt").await;
    let kept: Vec<(&str, &str, &str)> = report
        .iter()
        .map(|v| {
            (
                v["checksum"].as_str().unwrap_or(""),
                v["reason"].as_str().unwrap_or(""),
                v["side"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            (hex(b"v3\n").as_str(), "REPLACED", "target"),
            (hex(b"v2\n").as_str(), "REPLACED", "target")
        ],
        "{report:?}"
    );
    assert!(
        report
            .iter()
            .all(|v| v["pairId"] == json!(pair) && v["providerId"] == json!(target))
    );
    assert!(
        versions_of(h, &token, &source, "report.txt").await.is_empty(),
        "the source's copy was never replaced"
    );
    let big_versions = versions_of(h, &token, &source, "big.bin").await;
    assert_eq!(big_versions.len(), 1);
    assert_eq!(big_versions[0]["checksum"], json!(hex(&big)));
    assert_eq!(big_versions[0]["sizeBytes"], json!(big.len()));
    let deleted = versions_of(h, &token, &target, "old.txt").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["reason"], json!("DELETED"));

    // The same list through the file index.
    let rescan = "mutation($p: ID!) { rescanProvider(providerId: $p) { id } }";
    let scan = h.ok(Some(&token), rescan, json!({ "p": target })).await;
    h.wait_for_operation(&token, scan["rescanProvider"]["id"].as_str().expect("scan"))
        .await;
    let file_id = h.files(&token, &target).await["report.txt"]["id"].clone();
    let by_file = h.ok(Some(&token), VERSIONS, json!({ "f": file_id })).await["fileVersions"].clone();
    assert_eq!(by_file, json!(report));

    // Someone else sees none of it and restores nothing; bad requests are refused.
    let (intruder, _) = h.register("versions-intruder@example.org").await;
    assert_eq!(h.error_code(Some(&intruder), VERSIONS, json!({ "f": file_id })).await, "NOT_FOUND");
    assert_eq!(
        h.error_code(Some(&intruder), VERSIONS, json!({ "p": target, "path": "report.txt" }))
            .await,
        "NOT_FOUND"
    );
    let oldest = report[1]["id"].clone();
    assert_eq!(h.error_code(Some(&intruder), RESTORE, json!({ "v": oldest })).await, "NOT_FOUND");
    assert_eq!(h.error_code(Some(&token), VERSIONS, json!({})).await, "BAD_USER_INPUT");
    assert_eq!(
        h.error_code(Some(&token), RESTORE, json!({ "v": "not-an-id" })).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&token), RESTORE, json!({ "v": uuid::Uuid::now_v7().to_string() }))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        tree(&b)["report.txt"],
        b"v4\n".to_vec(),
        "nothing was restored by the refused requests"
    );

    // Restoring v2 writes it over the target's file and a run carries it to the source; what it
    // replaced is kept as a version of its own.
    let restored = h.ok(Some(&token), RESTORE, json!({ "v": oldest })).await["restoreFileVersion"].clone();
    assert_eq!(restored["side"], json!("target"));
    assert_eq!(restored["path"], json!("report.txt"));
    assert_eq!(restored["version"]["checksum"], json!(hex(b"v2\n")));
    h.wait_for_operation(&token, restored["operation"]["id"].as_str().expect("run"))
        .await;
    assert_eq!(tree(&a)["report.txt"], b"v2\n".to_vec());
    assert_eq!(tree(&b)["report.txt"], b"v2\n".to_vec());
    let after = versions_of(h, &token, &target, "report.txt").await;
    assert_eq!(after[0]["reason"], json!("RESTORED"));
    assert_eq!(after[0]["checksum"], json!(hex(b"v4\n")));

    // A deleted file comes back on both sides; so does a large file's earlier content.
    let back = h.ok(Some(&token), RESTORE, json!({ "v": deleted[0]["id"] })).await["restoreFileVersion"].clone();
    h.wait_for_operation(&token, back["operation"]["id"].as_str().expect("run")).await;
    let back = h.ok(Some(&token), RESTORE, json!({ "v": big_versions[0]["id"] })).await["restoreFileVersion"].clone();
    assert_eq!(back["side"], json!("source"));
    h.wait_for_operation(&token, back["operation"]["id"].as_str().expect("run")).await;
    let (after_a, after_b) = (tree(&a), tree(&b));
    assert_eq!(after_a, after_b);
    assert_eq!(after_a["old.txt"], b"will be deleted\n".to_vec());
    assert_eq!(after_a["big.bin"], big);
}

/// Issue 19: a large file changed five times on the source; each run writes it in place on the
/// target and keeps only what it destroyed. Every kept version restores byte for byte; once the
/// newest content is gone from both sides, restoring a version that needs it is refused and
/// changes nothing.
async fn versions_kept_by_writes_in_place_cost_what_changed_and_restore(h: &Harness) {
    let mut content = noise(4 * 1024 * 1024, 51);
    let seed: Vec<(&str, &[u8])> = vec![("big.bin", &content)];
    let (token, source, a, target, b) = two_folders(h, "in-place@example.org", &seed).await;
    let pair = pair_keeping(h, &token, &source, &target, 10).await;
    let chunks = h.db.dir().join("data/chunks");
    let mut history = vec![hex(&content)];
    for round in 0..5_u64 {
        let before = folder_bytes(&chunks);
        // 16 KiB in four scattered places, and the last change also cuts the file short.
        for k in 0..4 {
            let at = 100_000 + k * 900_000 + round as usize * 5_000;
            content[at..at + 4096].copy_from_slice(&noise(4096, 60 + round * 10 + k as u64));
        }
        if round == 4 {
            content.truncate(3 * 1024 * 1024);
        }
        write(&a, "big.bin", &content);
        run(h, &token, &pair).await;
        assert_eq!(tree(&b)["big.bin"], content, "round {round}");
        history.push(hex(&content));
        let grew = folder_bytes(&chunks) - before;
        let destroyed = if round == 4 { 1024 * 1024 + 16_384 } else { 16_384 };
        // The undo (compressed, but these bytes are random) and its manifest, plus the new
        // version's chunk manifest (for sides that patch by chunks): not a copy of the file.
        assert!(
            grew < destroyed + 64 * 1024,
            "round {round}: the chunk store grew by {grew} bytes for a change that destroyed {destroyed}"
        );
    }
    let versions = versions_of(h, &token, &target, "big.bin").await;
    let kept: Vec<&str> = versions.iter().map(|v| v["checksum"].as_str().expect("checksum")).collect();
    assert_eq!(kept.len(), 5, "{kept:?}");
    for earlier in &history[..5] {
        assert!(kept.contains(&earlier.as_str()), "{earlier} is kept");
    }
    // Each one restores byte for byte (oldest first: each restore keeps what it replaces whole).
    let mut ordered = versions.clone();
    ordered.sort_by_key(|v| history.iter().position(|c| v["checksum"] == json!(c)));
    for version in &ordered {
        let restored = h.ok(Some(&token), RESTORE, json!({ "v": version["id"] })).await["restoreFileVersion"].clone();
        assert_eq!(restored["side"], json!("target"));
        assert_eq!(hex(&tree(&b)["big.bin"]), version["checksum"].as_str().expect("checksum"));
        h.wait_for_operation(&token, restored["operation"]["id"].as_str().expect("run"))
            .await;
        assert_eq!(tree(&a)["big.bin"], tree(&b)["big.bin"], "the run carried it to the source");
    }

    // Touched, not changed (a newer modification time, the same bytes): the run, which leaves the
    // file's hashing to the write in place, writes nothing and keeps no version.
    let counts = || async {
        (
            versions_of(h, &token, &source, "big.bin").await.len(),
            versions_of(h, &token, &target, "big.bin").await.len(),
        )
    };
    let before = counts().await;
    let (held_a, held_b) = (
        tree(&a)["big.bin"].clone(),
        std::fs::metadata(a.join("big.bin")).expect("stat").modified().expect("mtime"),
    );
    std::fs::File::options()
        .write(true)
        .open(b.join("big.bin"))
        .and_then(|file| file.set_modified(SystemTime::now() + Duration::from_secs(5)))
        .expect("touched");
    let touched = run(h, &token, &pair).await;
    assert_eq!(touched["status"]["status"], json!("completed"), "{touched}");
    // Planned as a copy (the listing left the file's hashing to the write), which found nothing
    // to write.
    let planned = decisions(h, touched["id"].as_str().expect("operation")).await;
    assert!(planned.iter().any(|(path, _)| path == "big.bin"), "{planned:?}");
    assert_eq!(counts().await, before, "no version of a file only touched");
    assert_eq!(tree(&a)["big.bin"], held_a);
    assert_eq!(
        std::fs::metadata(a.join("big.bin")).expect("stat").modified().expect("mtime"),
        held_b,
        "nothing written to the other side"
    );
    assert_eq!(tree(&a)["big.bin"], tree(&b)["big.bin"]);

    // A change written in place, then the file changed outside CloudSync on both sides before a
    // run saw it: the version needs content that is nowhere now, and says so.
    let mut other = noise(2 * 1024 * 1024, 70);
    write(&a, "other.bin", &other);
    run(h, &token, &pair).await;
    let original = hex(&other);
    other[10..4106].copy_from_slice(&noise(4096, 71));
    write(&a, "other.bin", &other);
    run(h, &token, &pair).await;
    let lost = versions_of(h, &token, &target, "other.bin").await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0]["checksum"], json!(original));
    write(&a, "other.bin", b"changed on the source");
    write(&b, "other.bin", b"changed on the target");
    let response = h.gql(Some(&token), RESTORE, json!({ "v": lost[0]["id"] })).await;
    let message = response["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("cannot be rebuilt"), "{response:#}");
    assert_eq!(tree(&a)["other.bin"], b"changed on the source".to_vec(), "nothing changed");
    assert_eq!(tree(&b)["other.bin"], b"changed on the target".to_vec(), "nothing changed");
}

fn folder_bytes(root: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        total += if path.is_dir() {
            folder_bytes(&path)
        } else {
            entry.metadata().map_or(0, |m| m.len())
        };
    }
    total
}

/// Checks that everything the pairs' histories reference can be read back whole: every kept
/// version and every kept text.
async fn all_references_resolve(h: &Harness, pairs: &[String]) -> usize {
    let mut checked = 0;
    for pair in pairs {
        let state = pair_state(h, pair).await;
        let chunks = owner_chunks(h, pair).await;
        for version in state.versions() {
            let manifest = cloudsync_chunks::get_manifest(&*chunks, &version.content)
                .await
                .unwrap_or_else(|err| panic!("version {} of {}: {err}", version.version_id, version.path));
            if manifest.patch.is_some() {
                // Kept as what a write in place destroyed: its bytes are all there (rebuilding
                // it over the newer content is `restoreFileVersion`'s, tested with it).
                cloudsync_chunks::Layer::load(&*chunks, &manifest)
                    .await
                    .unwrap_or_else(|err| panic!("version {} of {}: {err}", version.version_id, version.path));
                assert_eq!(manifest.checksum, version.version.checksum);
            } else {
                let content = cloudsync_chunks::get_content(&*chunks, &version.content)
                    .await
                    .unwrap_or_else(|err| panic!("version {} of {}: {err}", version.version_id, version.path));
                assert_eq!(hex(&content), version.version.checksum);
            }
            checked += 1;
        }
    }
    checked
}

/// A pair as its stream tells it.
async fn pair_state(h: &Harness, pair: &str) -> cloudsync_domain::sync_pair::SyncPair {
    let mut state = cloudsync_domain::sync_pair::SyncPair::default();
    for recorded in h
        .server()
        .app()
        .db
        .events
        .read_stream(&format!("pair-{pair}"))
        .await
        .expect("stream")
    {
        let event = DomainEvent::decode(&recorded.event_type, recorded.schema_version, &recorded.payload).expect("decodes");
        cloudsync_domain::Aggregate::apply(&mut state, &event);
    }
    state
}

/// A pair whose run recorded hundreds of decisions is loaded from a snapshot of its stream, sealed
/// with the owner's key, and the events after it; an erased account's snapshot cannot be read.
async fn a_long_history_loads_from_its_sealed_snapshot(h: &Harness) {
    use cloudsync_domain::sync_pair::SyncPair;
    let names: Vec<String> = (0..520).map(|n| format!("notes/private-note-{n:04}.txt")).collect();
    let seed: Vec<(&str, &[u8])> = names.iter().map(|name| (name.as_str(), name.as_bytes())).collect();
    let (token, source, a, target, _) = two_folders(h, "snapshots@example.org", &seed).await;
    let pair = pair_keeping(h, &token, &source, &target, 2).await;
    let (stream, app) = (format!("pair-{pair}"), h.server().app());
    let snapshot = app
        .db
        .events
        .snapshot(&stream)
        .await
        .expect("read")
        .expect("a snapshot after the long run");
    let reached = app.db.events.read_stream(&stream).await.expect("stream").len() as i64;
    assert_eq!(snapshot.version, reached, "the run's events are folded into it");
    assert!(reached > cloudsync_commands::PAIR_SNAPSHOT_EVERY, "{reached} events");
    let full = pair_state(h, &pair).await;
    assert_eq!(SyncPair::from_snapshot(&snapshot.schema, &snapshot.data), Some(full));
    // Stored sealed: no path in the clear.
    let raw: Vec<u8> = cloudsync_eventstore::on_pool!(&h.db.db.pool, |pool| {
        sqlx::query_scalar("SELECT data FROM stream_snapshots WHERE stream_id = $1")
            .bind(&stream)
            .fetch_one(pool)
            .await
            .expect("row")
    });
    assert!(raw.len() > 520 * 20, "{} bytes", raw.len());
    assert!(!String::from_utf8_lossy(&raw).contains("private-note"), "a path in the clear");

    // A later, short run: loading starts from the snapshot and folds the events after it.
    write(&a, "notes/private-note-0001.txt", b"changed");
    run(h, &token, &pair).await;
    let after = app.db.events.snapshot(&stream).await.expect("read").expect("kept");
    assert_eq!(after.version, snapshot.version, "too few events for a new snapshot");
    app.commands.forget_pairs();
    let (loaded, version) = app.commands.load::<SyncPair>(&stream).await.expect("loaded");
    let now = app.db.events.read_stream(&stream).await.expect("stream").len() as i64;
    assert!(now > reached, "the later run recorded its decision");
    assert_eq!((loaded, version), (pair_state(h, &pair).await, now));
    // It does start from the snapshot: one saved in its place (the pair with an empty base) is
    // what loads.
    let mut emptied: Value = serde_json::from_slice(&snapshot.data).expect("JSON");
    emptied["base"] = json!({});
    emptied["agreed"] = json!({});
    let stand_in = cloudsync_eventstore::Snapshot {
        data: serde_json::to_vec(&emptied).expect("encoded"),
        ..snapshot.clone()
    };
    app.db.events.save_snapshot(&stream, stand_in).await.expect("saved");
    app.commands.forget_pairs();
    let (stand_in, _) = app.commands.load::<SyncPair>(&stream).await.expect("loaded");
    assert!(
        stand_in.base().len() < 10,
        "the snapshot's state was taken, then the last run's events"
    );
    app.db.events.save_snapshot(&stream, snapshot).await.expect("put back");

    // A row moved to another stream, naming no owner, or with one byte changed does not open.
    let other = format!("pair-{}", uuid::Uuid::new_v4());
    let copy = "INSERT INTO stream_snapshots (stream_id, stream_version, schema, owner_id, data) \
                SELECT $1, stream_version, schema, owner_id, data FROM stream_snapshots WHERE stream_id = $2";
    by_hand(h, copy, &[other.as_str(), stream.as_str()], None).await;
    assert_eq!(
        app.db.events.snapshot(&other).await.expect("read"),
        None,
        "sealed for its own stream"
    );
    by_hand(
        h,
        "UPDATE stream_snapshots SET owner_id = NULL WHERE stream_id = $1",
        &[other.as_str()],
        None,
    )
    .await;
    assert_eq!(app.db.events.snapshot(&other).await.expect("read"), None, "no owner, no snapshot");
    let mut changed = raw.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 1;
    by_hand(
        h,
        "UPDATE stream_snapshots SET data = $2 WHERE stream_id = $1",
        &[stream.as_str()],
        Some(changed),
    )
    .await;
    assert_eq!(app.db.events.snapshot(&stream).await.expect("read"), None, "one byte changed");
    by_hand(
        h,
        "UPDATE stream_snapshots SET data = $2 WHERE stream_id = $1",
        &[stream.as_str()],
        Some(raw),
    )
    .await;
    assert!(app.db.events.snapshot(&stream).await.expect("read").is_some(), "put back");

    // Once the account is erased, its snapshot cannot be opened: there is none to read, and the
    // pair still loads, from its events.
    h.ok(
        Some(&token),
        "mutation($p: String) { deleteAccount(password: $p) }",
        json!({ "p": "correct horse battery" }),
    )
    .await;
    assert_eq!(app.db.events.snapshot(&stream).await.expect("read"), None);
    app.commands.forget_pairs();
    let (erased, _) = app.commands.load::<SyncPair>(&stream).await.expect("loaded");
    assert_eq!(erased, pair_state(h, &pair).await);
}

/// Runs `statement` on the database itself (a change made by hand), with `text` bound first and then
/// `bytes`.
async fn by_hand(h: &Harness, statement: &str, text: &[&str], bytes: Option<Vec<u8>>) {
    cloudsync_eventstore::on_pool!(&h.db.db.pool, |pool| {
        let mut query = sqlx::query(statement);
        for value in text {
            query = query.bind(*value);
        }
        if let Some(bytes) = bytes {
            query = query.bind(bytes);
        }
        query.execute(pool).await.map(|_| ())
    })
    .expect("changed by hand");
}

/// The chunk store as the owner of `pair` sees it (its chunks sealed under its key).
async fn owner_chunks(h: &Harness, pair: &str) -> std::sync::Arc<dyn cloudsync_chunks::ChunkStore> {
    let owner = pair_state(h, pair).await.settings().expect("a created pair").owner_id;
    h.server()
        .app()
        .commands
        .chunks_for(owner)
        .await
        .expect("the owner's key")
        .expect("a chunk store")
}

/// Asserts that no file under `folder` holds 32 bytes in a row of `content` (taken every 4 KiB,
/// so that any chunk of it, compressed but not sealed, would show).
fn holds_no_plaintext(folder: &std::path::Path, content: &[u8]) -> usize {
    let needles: std::collections::HashSet<&[u8]> = content.chunks(4096).filter(|c| c.len() >= 32).map(|c| &c[..32]).collect();
    let mut files = 0;
    for entry in walkdir::WalkDir::new(folder).into_iter().filter_map(Result::ok) {
        if entry.file_type().is_file() {
            let stored = std::fs::read(entry.path()).expect("read a chunk file");
            assert!(
                !stored.windows(32).any(|w| needles.contains(w)),
                "{} holds plaintext of a synced file",
                entry.path().display()
            );
            files += 1;
        }
    }
    files
}

async fn garbage_collection_waits_for_runs_and_keeps_what_is_referenced(h: &Harness) {
    let big = noise(3 * 1024 * 1024, 31);
    let seed: Vec<(&str, &[u8])> = vec![("big.bin", &big), ("notes.txt", b"one\n")];
    let (token, source, a, target, b) = two_folders(h, "gc@example.org", &seed).await;
    let pair = pair_keeping(h, &token, &source, &target, 1).await;
    let app = h.server().app();
    let chunks = owner_chunks(h, &pair).await;
    let owner = pair_state(h, &pair).await.settings().expect("created").owner_id;
    let store = std::sync::Arc::clone(app.commands.chunk_store().expect("a chunk store"));
    let wait = Duration::from_secs(30);

    // Two rounds of edits: the first round's versions fall out of the retention (keep 1).
    for round in 0..2_u64 {
        let mut edited = big.clone();
        edited[500_000..600_000].copy_from_slice(&noise(100_000, 40 + round));
        write(&a, "big.bin", &edited);
        write(&a, "notes.txt", format!("round {round}\n").as_bytes());
        run(h, &token, &pair).await;
    }
    assert_eq!(versions_of(h, &token, &target, "big.bin").await.len(), 1);
    // Versions, texts and manifests are all sealed: the chunk files hold no plaintext.
    if h.db.dir().join("data/chunks").exists() {
        assert!(holds_no_plaintext(&h.db.dir().join("data/chunks"), &big) > 10);
    }
    let orphan = b"a chunk nobody references".to_vec();
    let orphan_id = hex(&orphan);
    chunks.put(&orphan_id, &orphan).await.expect("put");

    // A chunk write a killed process left half-done (only the default folder store is on disk here).
    // (A process id above Linux's largest, so surely not running.)
    let abandoned = h.db.dir().join("data/chunks/ab/.ab12.zst.cloudsync-4194999-0.tmp");
    let on_disk = h.db.dir().join("data/chunks").exists();
    if on_disk {
        std::fs::create_dir_all(abandoned.parent().expect("folder")).expect("mkdir");
        std::fs::write(&abandoned, b"half a chunk").expect("write");
    }

    // Work in progress holds a lease: the collector waits for it, and gives up after its wait.
    let cancel = tokio_util::sync::CancellationToken::new();
    let held = app
        .commands
        .chunk_lease("e2e-in-flight".into(), &cancel)
        .await
        .expect("lease")
        .expect("taken");
    let unrecorded = b"stored by work in progress, not yet recorded".to_vec();
    chunks.put(&hex(&unrecorded), &unrecorded).await.expect("put");
    let refused = app.commands.collect_garbage(Duration::from_millis(500)).await;
    assert!(matches!(refused, Err(cloudsync_commands::CommandError::Conflict(_))), "{refused:?}");
    assert!(
        chunks.has(&hex(&unrecorded)).await.expect("has"),
        "nothing is collected while work is in progress"
    );
    assert!(chunks.has(&orphan_id).await.expect("has"));

    // While the collector waits, no new work starts; once the work in progress ends, it collects.
    let collector = {
        let app = std::sync::Arc::clone(app);
        tokio::spawn(async move { app.commands.collect_garbage(Duration::from_secs(30)).await })
    };
    let collecting = Instant::now() + Duration::from_secs(10);
    loop {
        // Asked for 300 ms, then given up through the token (never mid-write, as a dropped future
        // could be): a lease still granted means the collector has not taken its own yet.
        let probe = tokio_util::sync::CancellationToken::new();
        let timer = probe.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            timer.cancel();
        });
        match app.commands.chunk_lease("e2e-probe".into(), &probe).await.expect("lease") {
            // The collector has not taken its lease yet: let go and look again.
            Some(lease) => {
                lease.release().await;
                assert!(Instant::now() < collecting, "the collector never started");
            }
            None => break,
        }
    }
    held.release().await;
    let report = collector.await.expect("joined").expect("collected");
    if on_disk {
        assert!(!abandoned.exists(), "an interrupted chunk write is cleared away");
        assert!(report.temporaries >= 1, "{report:?}");
    }
    assert!(
        report.deleted >= 3,
        "the orphan, the unrecorded chunk and the pruned versions' chunks: {report:?}"
    );
    assert!(!chunks.has(&orphan_id).await.expect("has"));
    assert!(!chunks.has(&hex(&unrecorded)).await.expect("has"));
    assert!(all_references_resolve(h, std::slice::from_ref(&pair)).await >= 2);

    // Runs and collections at the same time: every run's references survive.
    let mut runs = Vec::new();
    for round in 2..5_u64 {
        let mut edited = big.clone();
        edited[(round as usize) * 300_000..(round as usize) * 300_000 + 50_000].copy_from_slice(&noise(50_000, 50 + round));
        write(&b, "big.bin", &edited);
        write(&b, "notes.txt", format!("round {round} on the target\n").as_bytes());
        let data = h.ok(Some(&token), RUN, json!({ "p": pair })).await;
        let operation = data["runSync"]["id"].as_str().expect("operation").to_owned();
        let collections = async {
            let mut done = 0;
            for _ in 0..3 {
                if app.commands.collect_garbage(wait).await.is_ok() {
                    done += 1;
                }
            }
            done
        };
        let (status, done) = tokio::join!(h.wait_for_operation(&token, &operation), collections);
        assert_eq!(status["status"], json!("completed"), "{status}");
        assert!(done > 0, "collections went on beside the run");
        runs.push(operation);
        assert_eq!(tree(&a), tree(&b));
        assert!(all_references_resolve(h, std::slice::from_ref(&pair)).await >= 1);
    }
    let restore = versions_of(h, &token, &source, "big.bin").await;
    let back = h.ok(Some(&token), RESTORE, json!({ "v": restore[0]["id"] })).await["restoreFileVersion"].clone();
    h.wait_for_operation(&token, back["operation"]["id"].as_str().expect("run")).await;
    assert_eq!(hex(&tree(&a)["big.bin"]), restore[0]["checksum"].as_str().expect("checksum"));

    // An erased account's versions go with it: its key of the chunk store is destroyed at once
    // (what it kept can no longer be opened), and the next collection keeps nothing of its pair.
    assert!(!store.list().await.expect("listed").is_empty());
    let erase = "mutation($p: String) { deleteAccount(password: $p) }";
    h.ok(Some(&token), erase, json!({ "p": "correct horse battery" })).await;
    assert!(matches!(
        app.commands.chunks_for(owner).await,
        Err(cloudsync_commands::CommandError::NotFound(_))
    ));
    let report = app.commands.collect_garbage(wait).await.expect("collected");
    assert_eq!(report.erased_pairs, 1, "{report:?}");
    assert_eq!(store.list().await.expect("listed"), Vec::new());
    assert_eq!(
        app.commands.collect_garbage(wait).await.expect("collected").pairs,
        0,
        "and forgotten"
    );
}

/// `cloudsync keys rotate-chunk-store` replaces the generated chunk-store key and re-wraps the
/// accounts' keys of the chunk store, and only those: the master key stays, no chunk is rewritten,
/// and kept versions restore once the old key is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chunk_store_key_rotates_on_its_own_and_versions_still_restore() {
    let mut h = Harness::new(cloudsync_eventstore::testing::Backend::Sqlite).await;
    let big = noise(1024 * 1024 + 5, 61);
    let seed: Vec<(&str, &[u8])> = vec![("big.bin", &big)];
    let (token, source, a, target, b) = two_folders(&h, "chunk-keys@example.org", &seed).await;
    let pair = pair_keeping(&h, &token, &source, &target, 3).await;
    let mut edited = big.clone();
    edited[10..20].copy_from_slice(b"0123456789");
    write(&b, "big.bin", &edited);
    run(&h, &token, &pair).await;
    let kept = versions_of(&h, &token, &source, "big.bin").await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["checksum"], json!(hex(&big)));

    let data = h.db.dir().join("data");
    let read = |file: &str| std::fs::read_to_string(data.join(file)).unwrap_or_default();
    let (master, old) = (read("master-key"), read("chunk-store-key"));
    assert!(!old.trim().is_empty(), "a chunk-store key was generated beside the master key");
    assert_ne!(master, old);
    let chunk_files = || {
        walkdir::WalkDir::new(data.join("chunks"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.path().to_owned(), hex(&std::fs::read(e.path()).expect("read"))))
            .collect::<BTreeMap<_, _>>()
    };
    let before = chunk_files();
    if let Some(server) = h.server.take() {
        server.stop().await;
    }
    let mut out = Vec::new();
    cloudsync_gateway::cli::keys(
        &h.config,
        &h.db.db,
        &cloudsync_gateway::cli::KeysCommand::RotateChunkStore,
        &mut out,
    )
    .await
    .expect("rotated");
    let printed = String::from_utf8(out).expect("text");
    assert!(printed.contains("(1 re-wrapped)"), "{printed}");
    assert_eq!(read("master-key"), master, "the master key is not touched");
    assert_ne!(read("chunk-store-key").trim(), old.trim());
    assert_eq!(read("chunk-store-key.previous").trim(), old.trim());
    assert_eq!(chunk_files(), before, "no chunk is rewritten");
    let new = cloudsync_commands::MasterKey::parse(&read("chunk-store-key")).expect("key");
    let previous = cloudsync_commands::MasterKey::parse(&old).expect("key");
    let cloudsync_eventstore::DbPool::Sqlite(pool) = &h.db.db.pool else {
        panic!("a SQLite test database")
    };
    let (user, wrapped): (String, String) = sqlx::query_as("SELECT user_id, wrapped_key FROM chunk_store_keys")
        .fetch_one(pool)
        .await
        .expect("the account's chunk-store key");
    assert!(new.is_current(&wrapped));
    assert!(previous.open(&format!("chunk-store:{user}"), &wrapped).is_err());

    // A server given another chunk-store key refuses to start, rather than fail every account.
    std::fs::remove_file(data.join("chunk-store-key.previous")).expect("drop the old key");
    let right = read("chunk-store-key");
    std::fs::write(data.join("chunk-store-key"), cloudsync_commands::MasterKey::generate().1).expect("another key");
    let refused = cloudsync_gateway::start(&h.config).await.err().map(|err| format!("{err:#}"));
    assert!(refused.as_deref().is_some_and(|err| err.contains("does not open")), "{refused:?}");
    std::fs::write(data.join("chunk-store-key"), &right).expect("the right key");

    // Without the old key, on the new one: the kept version restores byte for byte.
    h.restart().await;
    // Sessions lived in the stopped process's memory: sign in again.
    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }";
    let signed_in = h
        .ok(None, login, json!({ "e": "chunk-keys@example.org", "p": "correct horse battery" }))
        .await;
    let token = signed_in["login"]["accessToken"].as_str().expect("token").to_owned();
    let back = h.ok(Some(&token), RESTORE, json!({ "v": kept[0]["id"] })).await["restoreFileVersion"].clone();
    h.wait_for_operation(&token, back["operation"]["id"].as_str().expect("run")).await;
    assert_eq!(tree(&a)["big.bin"], big);
    assert_eq!(tree(&b)["big.bin"], big);

    // A configured chunk-store key is rotated by configuration, not by this command.
    let configured = cloudsync_gateway::Config {
        chunk_store_key: Some(secrecy::SecretString::from(read("chunk-store-key").trim().to_owned())),
        ..h.config.clone()
    };
    let mut out = Vec::new();
    let refused = cloudsync_gateway::cli::keys(
        &configured,
        &h.db.db,
        &cloudsync_gateway::cli::KeysCommand::RotateChunkStore,
        &mut out,
    )
    .await;
    assert!(refused.is_err_and(|e| e.to_string().contains("CLOUDSYNC_CHUNK_STORE_KEY_PREVIOUS")));
    // Processes that share a configured master key must share a configured chunk-store key too:
    // none is generated beside a configured master key.
    let fresh = h.db.dir().join("fresh-data");
    std::fs::create_dir_all(&fresh).expect("mkdir");
    let shared = cloudsync_gateway::Config {
        master_key: Some(secrecy::SecretString::from(read("master-key").trim().to_owned())),
        data_dir: fresh.clone(),
        ..h.config.clone()
    };
    let refused = cloudsync_gateway::root::CHUNK_STORE_KEY
        .ring(&shared)
        .err()
        .map(|err| err.to_string());
    assert!(
        refused.as_deref().is_some_and(|err| err.contains("CLOUDSYNC_CHUNK_STORE_KEY")),
        "{refused:?}"
    );
    assert!(!fresh.join("chunk-store-key").exists());
    h.stop().await;
}

/// The chunk store in an S3 bucket instead of the data dir: the same versions and restores.
mod chunks_on_s3 {
    use super::*;

    async fn harness(backend: cloudsync_eventstore::testing::Backend) -> Harness {
        let mut settings = s3_settings("chunk-store").await.as_object().expect("object").clone();
        settings.insert("kind".into(), json!("s3"));
        settings.insert("folder".into(), json!("cloudsync/chunks"));
        Harness::with_config(backend, |config| config.chunk_store = Some(settings)).await
    }

    async fn versions_live_in_the_configured_store(h: &Harness) {
        earlier_versions_are_kept_listed_and_restored(h).await;
        let stored = h
            .server()
            .app()
            .commands
            .chunk_store()
            .expect("store")
            .list()
            .await
            .expect("listed");
        assert!(stored.len() > 10, "the versions' chunks are in the bucket: {}", stored.len());
        assert!(!h.db.dir().join("data").join("chunks").exists(), "nothing went to the data dir");
    }

    on_both_backends!(with crate::sync::chunks_on_s3::harness; versions_live_in_the_configured_store);
}
