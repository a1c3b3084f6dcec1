//! Issue 16: the content pipeline. Each version of a file is read once, its text kept sealed in the
//! chunk store and named by a `FileContentExtracted` event, and found by `searchFiles`; hostile files
//! cost bounded time and leave the file findable by name with the reason recorded.

use std::path::Path;
use std::time::{Duration, Instant};

use cloudsync_content::samples::{Exif, docx_saying, jpeg, pdf_lines, pdf_saying, rendered, scan_of, scene, zip_of};
use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(
    with super::small_limits;
    contents_are_read_once_and_found,
    pictures_and_scanned_pages_are_read_by_ocr_in_any_orientation,
    hostile_files_cost_bounded_time_and_stay_findable_by_name,
    erasure_and_deletion_let_the_text_go,
);

/// A server whose extractor reads at most 1 MiB per file and gives up after 10 s.
async fn small_limits(backend: cloudsync_eventstore::testing::Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.extract_max_input_bytes = 1 << 20;
        config.extract_max_text_bytes = 64 << 10;
        config.extract_timeout_seconds = 10;
    })
    .await
}

const SEARCH: &str = "query($q: String!) { searchFiles(query: $q, first: 50) { total hits { file { path } highlights { field snippet } } facets { languages { value count } } } }";

fn write(root: &Path, path: &str, data: &[u8]) {
    let host = root.join(path);
    std::fs::create_dir_all(host.parent().expect("a parent")).expect("mkdir");
    std::fs::write(host, data).expect("write");
}

/// The extraction events in the log, by outcome.
async fn extractions(h: &Harness) -> Vec<Value> {
    let events = h.server().app().db.events.read_all(0, 100_000).await.expect("the log");
    events
        .into_iter()
        .filter(|e| e.event_type == "FileContentExtracted")
        .map(|e| e.payload)
        .collect()
}

/// Waits until the pipeline has recorded `count` extractions and the index has them.
async fn extracted(h: &Harness, count: usize) -> Vec<Value> {
    h.contents_indexed(count).await;
    extractions(h).await
}

async fn paths(h: &Harness, token: &str, query: &str) -> (Vec<String>, Value) {
    let data = h.ok(Some(token), SEARCH, json!({ "q": query })).await;
    let mut found: Vec<String> = data["searchFiles"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|hit| hit["file"]["path"].as_str().map(str::to_owned))
        .collect();
    found.sort();
    (found, data["searchFiles"].clone())
}

/// Pictures and PDFs without a text layer are read by tesseract (which `scripts/storage-servers`
/// installs), upside down or not; a PDF's text layer is its text, the scan under it not read.
async fn pictures_and_scanned_pages_are_read_by_ocr_in_any_orientation(h: &Harness) {
    let (token, _) = h.register("scans@example.org").await;
    let root = h.db.dir().join("scans");
    let lines = ["Invoice number 4711 for the garden shed", "Payment is due within thirty days"];
    let page = pdf_lines(&lines, 20, 0);
    let upside_down = rendered(&pdf_lines(&lines, 20, 180), 150).expect("pdftoppm renders the page");
    write(&root, "inbox/upside-down.png", &upside_down);
    write(&root, "inbox/scan.pdf", &scan_of(&page, 150, None).expect("a scan"));
    write(
        &root,
        "inbox/minutes.pdf",
        &scan_of(&page, 150, Some("Minutes of the allotment committee meeting")).expect("a scan"),
    );
    write(
        &root,
        "photos/garden.jpg",
        &jpeg(&scene(640, 480, 3, 0.0, 0.0), 90, &Exif::default()),
    );
    let (provider, _) = h.connect_local(&token, &root).await;
    let events = extracted(h, 4).await;
    let files = h.files(&token, &provider).await;
    let outcome = |path: &str| {
        events
            .iter()
            .find(|e| e["file_id"] == files[path]["id"])
            .map(|e| e["outcome"].clone())
    };
    assert_eq!(outcome("inbox/upside-down.png"), Some(json!("extracted")), "{events:?}");
    assert_eq!(
        outcome("photos/garden.jpg"),
        Some(json!("unsupported")),
        "no text in a photograph: {events:?}"
    );

    let (found, result) = paths(h, &token, "invoice").await;
    assert_eq!(found, ["inbox/scan.pdf", "inbox/upside-down.png"], "{result}");
    let snippets: Vec<&str> = result["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|hit| hit["highlights"].as_array()?.iter().find(|h| h["field"] == "content")?["snippet"].as_str())
        .collect();
    assert_eq!(snippets.len(), 2, "{result}");
    assert!(
        snippets.iter().all(|s| s.contains("<mark>Invoice</mark> number 4711")),
        "{snippets:?}"
    );
    assert_eq!(paths(h, &token, "allotment").await.0, ["inbox/minutes.pdf"], "its text layer");
    assert_eq!(paths(h, &token, "thirty").await.0, ["inbox/scan.pdf", "inbox/upside-down.png"]);
}

async fn contents_are_read_once_and_found(h: &Harness) {
    let (token, _) = h.register("reader@example.org").await;
    let root = h.db.dir().join("documents");
    write(
        &root,
        "notes/garden.md",
        b"# Garden\n\nThe tomatoes were receiving too much water this summer.\n",
    );
    write(
        &root,
        "reisen/altstadt.txt",
        "Die Häuser in der Altstadt wurden im letzten Jahrhundert von den Bürgern gebaut.".as_bytes(),
    );
    write(
        &root,
        "web/page.html",
        b"<html><head><script>var hiddenword = 1;</script><style>.x{}</style></head><body><p>Visible lighthouse story</p></body></html>",
    );
    write(&root, "invoices/march.pdf", &pdf_saying("Quarterly invoice for plumbing"));
    write(
        &root,
        "letters/offer.docx",
        &docx_saying("Employment offer for the gardener position"),
    );
    write(&root, "photos/cat.jpg", b"\xff\xd8\xff not a text");
    let (provider, _) = h.connect_local(&token, &root).await;
    let events = extracted(h, 6).await;
    assert_eq!(
        events.len(),
        6,
        "five files hold text, and the photo is read as a picture: {events:?}"
    );
    let (texts, photos): (Vec<&Value>, Vec<&Value>) = events.iter().partition(|e| e["outcome"] == "extracted");
    // OCR (on wherever tesseract is, as under scripts/test) makes a new version for the one PDF.
    let versions: Vec<i64> = texts.iter().filter_map(|e| e["extractor_version"].as_i64()).collect();
    assert_eq!(versions.iter().filter(|v| **v == 2).count(), 1, "{events:?}");
    assert_eq!(versions.iter().filter(|v| **v == 1).count(), 4, "{events:?}");
    assert_eq!(photos.len(), 1, "{events:?}");
    assert_eq!(photos[0]["outcome"], "failed", "the photo is not a real picture: {events:?}");
    assert!(
        texts.iter().all(|e| e.get("text").is_some_and(|t| t["reference"].is_string())),
        "text is referenced, not inline"
    );

    let (found, result) = paths(h, &token, "haus").await;
    assert_eq!(found, ["reisen/altstadt.txt"], "{result}");
    let snippet = result["hits"][0]["highlights"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["field"] == "content"))
        .map(|h| h["snippet"].clone());
    assert_eq!(
        snippet,
        Some(json!(
            "Die <mark>Häuser</mark> in der Altstadt wurden im letzten Jahrhundert von den Bürgern gebaut."
        ))
    );
    assert_eq!(paths(h, &token, "receive").await.0, ["notes/garden.md"], "stemmed");
    assert_eq!(paths(h, &token, "plumbing").await.0, ["invoices/march.pdf"], "PDF text layer");
    assert_eq!(paths(h, &token, "employment").await.0, ["letters/offer.docx"], "DOCX");
    assert_eq!(paths(h, &token, "lighthouse").await.0, ["web/page.html"], "visible HTML text");
    assert!(paths(h, &token, "hiddenword").await.0.is_empty(), "no script text");
    let languages = paths(h, &token, "").await.1["facets"]["languages"].clone();
    assert!(
        languages.as_array().is_some_and(|l| l.iter().any(|v| v["value"] == "de")),
        "{languages}"
    );

    // Nothing changed: nothing is read again. One file changed: that one is read again, and only
    // that one (the pipeline follows the log in order, so it is past the unchanged rescan by then).
    h.rescan(&token, &provider).await;
    write(&root, "notes/garden.md", b"# Garden\n\nNow about cucumbers.\n");
    h.rescan(&token, &provider).await;
    assert_eq!(extracted(h, 7).await.len(), 7, "an unchanged file is not read again");
    assert_eq!(paths(h, &token, "cucumbers").await.0, ["notes/garden.md"]);
    assert!(
        paths(h, &token, "tomatoes").await.0.is_empty(),
        "the old text is gone from the index"
    );
}

async fn hostile_files_cost_bounded_time_and_stay_findable_by_name(h: &Harness) {
    let (token, _) = h.register("hostile@example.org").await;
    let root = h.db.dir().join("hostile");
    write(&root, "bomb.docx", &zip_of(&[("word/document.xml", &vec![b'a'; 16 << 20])]));
    write(
        &root,
        "broken.pdf",
        b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
    );
    write(&root, "sheet.xlsx", b"PK\x03\x04 this is not a spreadsheet");
    let huge = std::fs::File::create(root.join("huge.txt")).expect("create");
    huge.set_len(2 << 30).expect("a 2 GiB sparse file");
    drop(huge);
    write(&root, "fine.txt", b"an ordinary harmless note");
    let started = Instant::now();
    let (_, _) = h.connect_local(&token, &root).await;
    let events = extracted(h, 5).await;
    let failed: Vec<&Value> = events.iter().filter(|e| e["outcome"] == "failed").collect();
    assert_eq!(
        failed.len(),
        3,
        "the bomb, the broken PDF and the broken spreadsheet fail: {events:?}"
    );
    assert!(
        failed.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("zip bomb"))),
        "{failed:?}"
    );
    let huge = events
        .iter()
        .find(|e| e["text"]["truncated"] == true)
        .expect("the huge file is read in part");
    assert!(huge["text"]["bytes"].as_u64().is_some_and(|b| b <= 64 << 10), "{huge}");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "bounded time: {:?}",
        started.elapsed()
    );
    for name in ["bomb", "broken", "sheet", "huge", "fine"] {
        let (found, result) = paths(h, &token, name).await;
        assert_eq!(found.len(), 1, "{name} is findable by name: {result}");
    }
    assert_eq!(paths(h, &token, "harmless").await.0, ["fine.txt"], "the pipeline went on");
}

async fn erasure_and_deletion_let_the_text_go(h: &Harness) {
    let (token, user) = h.register("leaver@example.org").await;
    let root = h.db.dir().join("leaving");
    write(&root, "a/keep.txt", b"kept words of the first file");
    write(&root, "a/drop.txt", b"dropped words of the second file");
    let (_, _) = h.connect_local(&token, &root).await;
    let events = extracted(h, 2).await;
    let app = h.server().app();
    let owner: cloudsync_domain::UserId = user.parse().expect("a user id");
    let reference = |name: &str| -> String {
        let file = events
            .iter()
            .find(|e| e["text"]["bytes"].as_u64() == Some(if name == "keep" { 28 } else { 32 }))
            .expect("its extraction");
        file["text"]["reference"].as_str().expect("a reference").to_owned()
    };
    let (keep, drop) = (reference("keep"), reference("drop"));
    assert_eq!(
        app.commands.extracted_text(owner, &keep).await.expect("readable").as_deref(),
        Some("kept words of the first file")
    );
    let ids = app
        .reads
        .files(owner, cloudsync_projections::Providers::All, None, None, 10)
        .await
        .expect("files");
    let dropped = ids.iter().find(|f| f.path == "a/drop.txt").expect("the file");
    h.ok(
        Some(&token),
        "mutation($ids: [ID!]!) { deleteFiles(fileIds: $ids) }",
        json!({ "ids": [dropped.id.to_string()] }),
    )
    .await;
    let report = app.commands.collect_garbage(Duration::from_secs(10)).await.expect("collected");
    assert_eq!(report.texts_released, 1, "{report:?}");
    assert_eq!(app.commands.extracted_text(owner, &drop).await.expect("answers"), None, "collected");
    assert!(
        app.commands.extracted_text(owner, &keep).await.expect("answers").is_some(),
        "the live file's text is kept"
    );

    h.ok(
        Some(&token),
        "mutation { deleteAccount(password: \"correct horse battery\") }",
        json!({}),
    )
    .await;
    assert_eq!(
        app.commands.extracted_text(owner, &keep).await.expect("answers"),
        None,
        "unreadable once erased"
    );
}
