//! Issue 17: pictures. The content pipeline reads each picture once for its size, EXIF and
//! perceptual hash (`FileAnalyzed` of the image reader, the position sealed), `File.image` shows
//! them, and `duplicates` groups copies (resized, recompressed, without EXIF) as `NEAR_IMAGE` while a
//! burst shot of the same scene and another scene stay out.

use std::path::Path;
use std::time::Duration;

use cloudsync_content::samples::{Exif, jpeg, scene};
use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(pictures_are_read_and_copies_grouped_but_not_bursts);
mod labelled {
    use super::*;
    on_both_backends!(with super::super::with_labeler; photographs_are_labelled_with_what_they_show);
}

/// The test models directory when it has the image classifier and scikit-image's photographs are
/// there (`scripts/models`, `scripts/sample-photos`); both required under `CI=true`.
fn labeler_and_photos() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
    let models = std::env::var_os("CLOUDSYNC_TEST_MODELS").map_or_else(|| home.join(".cache/cloudsync/models"), Into::into);
    let photos = std::env::var_os("CLOUDSYNC_TEST_PHOTOS").map_or_else(|| home.join(".cache/cloudsync/photos"), Into::into);
    if models.join("efficientnet-lite0").is_dir() && photos.join("coffee.png").is_file() {
        return Some((models, photos));
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "no image classifier in {} or no photographs in {} (scripts/models, scripts/sample-photos)",
        models.display(),
        photos.display()
    );
    eprintln!("skipped: no image classifier or photographs (run scripts/models and scripts/sample-photos)");
    None
}

/// A server with the test models, its paths (and so its labels) sealed in the log.
async fn with_labeler(backend: cloudsync_eventstore::testing::Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.models_dir = labeler_and_photos()
            .map(|(models, _)| models)
            .or_else(|| Some("/nonexistent".into()));
        config.seal_paths = true;
    })
    .await
}

fn write(root: &Path, path: &str, data: &[u8]) {
    let host = root.join(path);
    std::fs::create_dir_all(host.parent().expect("a parent")).expect("mkdir");
    std::fs::write(host, data).expect("write");
}

async fn pictures_are_read_and_copies_grouped_but_not_bursts(h: &Harness) {
    let (token, _) = h.register("photographer@example.org").await;
    let root = h.db.dir().join("photos");
    let moment = Exif {
        taken_at: Some("2024:05:01 10:00:00"),
        make: Some("Canon"),
        model: Some("Canon EOS 5D"),
        gps: Some((48.8584, 2.2945)),
    };
    let next_moment = Exif {
        taken_at: Some("2024:05:01 10:00:01"),
        ..moment.clone()
    };
    let original = jpeg(&scene(1200, 900, 11, 0.0, 0.0), 92, &moment);
    write(&root, "camera/IMG_0001.jpg", &original);
    write(&root, "phone/small.jpg", &jpeg(&scene(600, 450, 11, 0.0, 0.0), 92, &moment));
    write(
        &root,
        "web/recompressed.jpg",
        &jpeg(&scene(1200, 900, 11, 0.0, 0.0), 35, &Exif::default()),
    );
    write(
        &root,
        "camera/IMG_0002.jpg",
        &jpeg(&scene(1200, 900, 11, 0.01, 0.005), 92, &next_moment),
    );
    write(&root, "camera/IMG_0003.jpg", &jpeg(&scene(1200, 900, 12, 0.0, 0.0), 92, &moment));
    write(&root, "backup/IMG_0001.jpg", &original);
    write(&root, "broken.png", b"\x89PNG\r\n\x1a\n not a picture");
    h.connect_local(&token, &root).await;
    let read = h.analyses("cloudsync-image", 7).await;
    assert_eq!(read.len(), 7, "each picture once: {read:?}");
    let broken: Vec<&Value> = read.iter().filter(|a| a["outcome"] == "failed").collect();
    assert_eq!(broken.len(), 1, "{read:?}");
    assert!(broken[0]["reason"].as_str().is_some_and(|r| r.contains("picture")), "{broken:?}");
    let first = read.iter().find(|a| a["image"]["width"] == 1200).expect("a large picture");
    assert!(first["image"]["phash"].as_str().is_some_and(|h| h.len() == 64), "{first}");
    let sealed = read.iter().find_map(|a| a["image"].get("gps")).expect("a position is recorded");
    assert!(
        sealed["ciphertext"].is_string() && !sealed.to_string().contains("48.85"),
        "the position is sealed: {sealed}"
    );

    let files = h
        .ok(
            Some(&token),
            "query { files(limit: 20) { path sizeBytes image { width height takenAt camera } } }",
            json!({}),
        )
        .await;
    let image_of = |path: &str| {
        files["files"]
            .as_array()
            .and_then(|all| all.iter().find(|f| f["path"] == path))
            .map(|f| f["image"].clone())
            .expect("the file")
    };
    assert_eq!(
        image_of("camera/IMG_0001.jpg"),
        json!({ "width": 1200, "height": 900, "takenAt": "2024-05-01T10:00:00", "camera": "Canon EOS 5D" })
    );
    assert_eq!(image_of("web/recompressed.jpg")["takenAt"], Value::Null);
    assert_eq!(image_of("broken.png"), Value::Null);
    // When a picture was taken narrows a search: the second of the burst is left out.
    h.indexed().await;
    let taken = h
        .ok(
            Some(&token),
            "query($f: SearchFilters) { searchFiles(query: \"\", filters: $f) { hits { file { path } } } }",
            json!({ "f": { "takenAfter": "2024-05-01T09:00:00Z", "takenBefore": "2024-05-01T10:00:00Z" } }),
        )
        .await;
    let mut paths: Vec<&str> = taken["searchFiles"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|hit| hit["file"]["path"].as_str())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "backup/IMG_0001.jpg",
            "camera/IMG_0001.jpg",
            "camera/IMG_0003.jpg",
            "phone/small.jpg"
        ],
        "{taken}"
    );
    let backwards = json!({ "f": { "takenAfter": "2024-05-02T00:00:00Z", "takenBefore": "2024-05-01T00:00:00Z" } });
    assert_eq!(
        h.error_code(
            Some(&token),
            "query($f: SearchFilters) { searchFiles(query: \"\", filters: $f) { total } }",
            backwards
        )
        .await,
        "BAD_USER_INPUT"
    );

    // A picture touched (same bytes, a new time) keeps what was read of it; it is not read again.
    let touched = std::fs::File::options()
        .write(true)
        .open(root.join("phone/small.jpg"))
        .expect("open");
    touched
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(3600))
        .expect("a new time");
    drop(touched);
    let provider = h.ok(Some(&token), "query { providers { id } }", json!({})).await["providers"][0]["id"]
        .as_str()
        .expect("a provider")
        .to_owned();
    h.rescan(&token, &provider).await;
    let again = h
        .ok(Some(&token), "query { files(limit: 20) { path image { width } } }", json!({}))
        .await;
    let small = again["files"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["path"] == "phone/small.jpg"))
        .map(|f| f["image"].clone());
    assert_eq!(small, Some(json!({ "width": 600 })), "{again}");
    assert_eq!(h.analyses("cloudsync-image", 7).await.len(), 7, "not read again");

    let groups = h
        .ok(
            Some(&token),
            "query { duplicates { id method score reclaimableBytes explanation files { path sizeBytes } } }",
            json!({}),
        )
        .await;
    let groups = groups["duplicates"].as_array().cloned().unwrap_or_default();
    let paths = |group: &Value| -> Vec<String> {
        let mut p: Vec<String> = group["files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["path"].as_str().map(str::to_owned))
            .collect();
        p.sort();
        p
    };
    let exact = groups.iter().find(|g| g["method"] == "EXACT").expect("the backup is an exact copy");
    assert_eq!(paths(exact), ["backup/IMG_0001.jpg", "camera/IMG_0001.jpg"]);
    let near: Vec<&Value> = groups.iter().filter(|g| g["method"] == "NEAR_IMAGE").collect();
    assert_eq!(near.len(), 1, "one group of copies: {groups:?}");
    assert_eq!(
        paths(near[0]),
        [
            "backup/IMG_0001.jpg",
            "camera/IMG_0001.jpg",
            "phone/small.jpg",
            "web/recompressed.jpg"
        ],
        "the copies, and neither the burst shot nor the other scene: {groups:?}"
    );
    let sizes: Vec<i64> = near[0]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["sizeBytes"].as_i64())
        .collect();
    let freed = sizes.iter().sum::<i64>() - sizes.iter().max().copied().unwrap_or(0);
    assert_eq!(near[0]["reclaimableBytes"], json!(freed));
    assert!(near[0]["score"].as_f64().is_some_and(|s| s > 0.9 && s <= 1.0), "{}", near[0]);
    let explanation = near[0]["explanation"].as_str().unwrap_or_default();
    assert!(
        explanation.contains("perceptual hash") && explanation.contains("1200×900"),
        "{explanation}"
    );
    // The threshold is the least score a group needs.
    let strict = h
        .ok(Some(&token), "query { duplicates(threshold: 1.0) { method score } }", json!({}))
        .await;
    assert!(
        strict["duplicates"].as_array().into_iter().flatten().all(|g| g["score"] == 1.0),
        "{strict}"
    );
    // However loose the threshold, the burst shot records another moment and stays out.
    let loose = h
        .ok(
            Some(&token),
            "query { duplicates(threshold: 0.8) { method files { path } } }",
            json!({}),
        )
        .await;
    for group in loose["duplicates"].as_array().into_iter().flatten() {
        let members = paths(group);
        assert!(
            !(members.contains(&"camera/IMG_0002.jpg".to_owned()) && members.contains(&"camera/IMG_0001.jpg".to_owned())),
            "{loose}"
        );
    }
    // Another account sees none of it.
    let (stranger, _) = h.register("stranger@example.org").await;
    let theirs = h.ok(Some(&stranger), "query { duplicates { id } }", json!({})).await;
    assert_eq!(theirs["duplicates"], json!([]));
}

async fn photographs_are_labelled_with_what_they_show(h: &Harness) {
    let Some((_, photos)) = labeler_and_photos() else { return };
    let (token, _) = h.register("labels@example.org").await;
    let root = h.db.dir().join("labelled");
    for name in ["coffee.png", "chelsea.png"] {
        write(
            &root,
            &format!("kitchen/{name}"),
            &std::fs::read(photos.join(name)).expect("a photograph"),
        );
    }
    let (provider, _) = h.connect_local(&token, &root).await;
    let analyses = h.analyses("efficientnet-lite0", 2).await;
    assert!(
        analyses.iter().all(|a| a["labels"].as_array().is_some_and(|l| !l.is_empty())),
        "{analyses:?}"
    );
    // In the log itself the labels are sealed, like the paths: they tell what a picture shows.
    let raw = h.db.db.stored.read_all(0, 100_000).await.expect("log");
    let stored: Vec<&Value> = raw
        .iter()
        .filter(|e| e.event_type == "FileAnalyzed" && e.payload["model"] == "efficientnet-lite0")
        .map(|e| &e.payload)
        .collect();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|a| a["labels"].as_array().is_some_and(|l| l.iter().all(|l| l["label"].is_object()))),
        "{stored:?}"
    );
    assert!(!serde_json::to_string(&stored).expect("JSON").contains("espresso"));
    let labels = |path: &'static str| file_labels(h, &token, &provider, path);
    assert_eq!(labels("kitchen/coffee.png").await.first().map(String::as_str), Some("espresso"));
    let cat = labels("kitchen/chelsea.png").await;
    assert!(
        cat.iter()
            .any(|l| ["tabby cat", "Egyptian Mau", "a cat having a striped coat"].contains(&l.as_str())),
        "{cat:?}"
    );
    // Labels are searched like words, faceted and filtered on.
    h.indexed().await;
    let search = "query($q: String!, $f: SearchFilters) { searchFiles(query: $q, filters: $f, mode: KEYWORD) { \
        hits { file { path } } facets { labels { value count } } } }";
    let found = h.ok(Some(&token), search, json!({ "q": "espresso", "f": null })).await;
    assert_eq!(
        found["searchFiles"]["hits"],
        json!([{ "file": { "path": "kitchen/coffee.png" } }]),
        "{found}"
    );
    let all = h.ok(Some(&token), search, json!({ "q": "", "f": null })).await;
    let facet = all["searchFiles"]["facets"]["labels"].as_array().cloned().unwrap_or_default();
    assert!(facet.contains(&json!({ "value": "espresso", "count": 1 })), "{all}");
    let cats = h.ok(Some(&token), search, json!({ "q": "", "f": { "labels": [cat[0]] } })).await;
    assert_eq!(
        cats["searchFiles"]["hits"],
        json!([{ "file": { "path": "kitchen/chelsea.png" } }]),
        "{cats}"
    );
    // A new version of a picture is looked at again.
    write(
        &root,
        "kitchen/coffee.png",
        &std::fs::read(photos.join("camera.png")).expect("a photograph"),
    );
    h.rescan(&token, &provider).await;
    h.analyses("efficientnet-lite0", 3).await;
    assert_eq!(labels("kitchen/coffee.png").await.first().map(String::as_str), Some("tripod"));
}

/// The labels `files` shows for the picture at `path`.
async fn file_labels(h: &Harness, token: &str, provider: &str, path: &str) -> Vec<String> {
    let files = h
        .ok(
            Some(token),
            "query($p: String) { files(provider: $p) { path image { labels } } }",
            json!({ "p": provider }),
        )
        .await;
    files["files"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["path"] == path)
        .and_then(|f| f["image"]["labels"].as_array())
        .map(|l| l.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}
