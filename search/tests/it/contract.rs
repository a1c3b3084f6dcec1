//! One contract, both backends: tantivy in a temporary folder, and Elasticsearch at
//! `CLOUDSYNC_TEST_ELASTICSEARCH_URL` (scripts/services starts the ES-8 API server `noida-db`), each
//! test on its own alias. Under `CI=true` a missing Elasticsearch fails the suite.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use cloudsync_domain::{FileId, ProviderId, UserId};
use cloudsync_search::query::parse;
use cloudsync_search::{Batch, Content, Engine, Filters, Picture, Search, SearchDoc, SearchIndex, SearchRequest, SearchResults};
use uuid::Uuid;

pub struct Backend {
    pub name: &'static str,
    pub engine: Engine,
    _dir: Option<tempfile::TempDir>,
}

/// The engines every contract test runs on.
pub fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut out = vec![Backend {
        name: "tantivy",
        engine: Engine::tantivy(dir.path().join("search")),
        _dir: Some(dir),
    }];
    match std::env::var("CLOUDSYNC_TEST_ELASTICSEARCH_URL") {
        Ok(url) if !url.is_empty() => {
            let alias = format!("cs-test-{}", Uuid::new_v4().simple());
            out.push(Backend {
                name: "elasticsearch",
                engine: Engine::elastic(&url, &alias).expect("an HTTP client"),
                _dir: None,
            });
        }
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CLOUDSYNC_TEST_ELASTICSEARCH_URL is not set (run scripts/services and source its env file)")
        }
        _ => eprintln!("CLOUDSYNC_TEST_ELASTICSEARCH_URL is not set: Elasticsearch is not tested"),
    }
    out
}

pub fn id<T>(make: fn(Uuid) -> T) -> T {
    make(Uuid::now_v7())
}

pub struct Files {
    pub owner: UserId,
    pub provider: ProviderId,
}

impl Files {
    pub fn new() -> Self {
        Self {
            owner: id(UserId::from_uuid),
            provider: id(ProviderId::from_uuid),
        }
    }

    pub fn doc(&self, path: &str, size: u64, year: i32, text: Option<(&str, &str)>) -> SearchDoc {
        SearchDoc {
            file_id: id(FileId::from_uuid),
            owner_id: self.owner,
            provider_id: self.provider,
            path: path.into(),
            size,
            modified_at: Utc.with_ymd_and_hms(year, 3, 1, 12, 0, 0).single().expect("a date"),
            mime_type: cloudsync_domain::events::guess_mime(path),
            checksum: format!("sum-{path}"),
            content: text.map(|(text, language)| Content {
                checksum: format!("sum-{path}"),
                text: text.into(),
                language: Some(language.into()).filter(|l: &String| !l.is_empty()),
            }),
            picture: None,
        }
    }
}

async fn put(index: &dyn SearchIndex, docs: &[SearchDoc], checkpoint: i64) {
    index
        .apply(Batch {
            upserts: docs.to_vec(),
            checkpoint,
            ..Batch::default()
        })
        .await
        .expect("apply a batch");
}

async fn find(index: &dyn SearchIndex, owner: UserId, query: &str, filters: Filters) -> SearchResults {
    let request = SearchRequest {
        owner,
        query: parse(query),
        filters,
        offset: 0,
        limit: 50,
    };
    index.search(&request).await.unwrap_or_else(|err| panic!("search {query:?}: {err}"))
}

fn names(results: &SearchResults, docs: &[SearchDoc]) -> Vec<String> {
    let mut out: Vec<String> = results
        .hits
        .iter()
        .map(|h| {
            docs.iter()
                .find(|d| d.file_id == h.file_id)
                .map_or_else(|| format!("unknown {}", h.file_id), |d| d.name().to_owned())
        })
        .collect();
    out.sort();
    out
}

fn sorted(mut names: Vec<&str>) -> Vec<String> {
    names.sort_unstable();
    names.into_iter().map(str::to_owned).collect()
}

async fn library() -> Vec<(Backend, Arc<dyn SearchIndex>, Files, Vec<SearchDoc>)> {
    let mut out = Vec::new();
    for backend in backends() {
        let files = Files::new();
        let docs = vec![
            files.doc(
                "/Finance/invoice-2024_final.pdf",
                120_000,
                2024,
                Some(("Invoice for the garden work. Total due in March.", "en")),
            ),
            files.doc("/Finance/myTaxReturn2023.xlsx", 40_000, 2023, None),
            files.doc(
                "/Notes/receive-notes.txt",
                800,
                2022,
                Some(("Notes on how to receive parcels while running errands.", "en")),
            ),
            files.doc(
                "/Reisen/Altstadt.md",
                5_000,
                2024,
                Some(("Die Häuser in der Altstadt wurden im letzten Jahrhundert gebaut.", "de")),
            ),
            files.doc("/Photos/beach.jpg", 3_000_000, 2021, None),
            files.doc(
                "/Notes/fox.txt",
                300,
                2024,
                Some(("The quick brown fox jumps over the lazy dog.", "en")),
            ),
            files.doc("/Notes/dog.txt", 300, 2024, Some(("The brown dog is quick to sleep.", "en"))),
            files.doc(
                "/日本/東京.txt",
                200,
                2024,
                Some(("東京都に住んでいます。我在北京大学学习。", "ja")),
            ),
        ];
        let (_, index) = backend.engine.open().await.expect("open the index");
        put(&*index, &docs, 10).await;
        out.push((backend, index, files, docs));
    }
    out
}

#[tokio::test]
async fn names_match_by_word_prefix_camel_case_and_typo() {
    for (backend, index, files, docs) in library().await {
        let b = backend.name;
        let got = |q: &'static str| {
            let index = Arc::clone(&index);
            async move { find(&*index, files.owner, q, Filters::default()).await }
        };
        assert_eq!(
            names(&got("invo").await, &docs),
            sorted(vec!["invoice-2024_final.pdf"]),
            "{b}: prefix"
        );
        assert_eq!(
            names(&got("tax").await, &docs),
            sorted(vec!["myTaxReturn2023.xlsx"]),
            "{b}: camelCase"
        );
        assert_eq!(
            names(&got("2023").await, &docs),
            sorted(vec!["myTaxReturn2023.xlsx"]),
            "{b}: digits"
        );
        assert_eq!(names(&got("recieve").await, &docs), sorted(vec!["receive-notes.txt"]), "{b}: typo");
        assert_eq!(
            names(&got("finance").await, &docs),
            sorted(vec!["invoice-2024_final.pdf", "myTaxReturn2023.xlsx"]),
            "{b}: folder"
        );
        let hit = &got("invo").await.hits[0];
        assert!(
            hit.highlights
                .iter()
                .any(|h| h.field == "name" && h.snippet == "<mark>invoice</mark>-2024_final.pdf"),
            "{b}: {:?}",
            hit.highlights
        );
    }
}

#[tokio::test]
async fn contents_match_folded_stemmed_phrases_and_cjk() {
    for (backend, index, files, docs) in library().await {
        let b = backend.name;
        let owner = files.owner;
        for q in ["Haus", "hauser", "Häuser"] {
            assert_eq!(
                names(&find(&*index, owner, q, Filters::default()).await, &docs),
                sorted(vec!["Altstadt.md"]),
                "{b}: {q}"
            );
        }
        assert_eq!(
            names(&find(&*index, owner, "run", Filters::default()).await, &docs),
            sorted(vec!["receive-notes.txt"]),
            "{b}: stem"
        );
        let phrase = find(&*index, owner, "\"quick brown\"", Filters::default()).await;
        assert_eq!(names(&phrase, &docs), sorted(vec!["fox.txt"]), "{b}: phrase");
        let words = find(&*index, owner, "quick brown", Filters::default()).await;
        assert_eq!(names(&words, &docs), sorted(vec!["dog.txt", "fox.txt"]), "{b}: words");
        let content = phrase.hits[0]
            .highlights
            .iter()
            .find(|h| h.field == "content")
            .expect("a content highlight");
        assert_eq!(
            content.snippet, "The <mark>quick</mark> <mark>brown</mark> fox jumps over the lazy dog.",
            "{b}"
        );
        for q in ["東京", "住んでいます", "います", "大学", "北京大学", "学习", "\"大学学习\""] {
            assert_eq!(
                names(&find(&*index, owner, q, Filters::default()).await, &docs),
                sorted(vec!["東京.txt"]),
                "{b}: {q}"
            );
        }
        // Chinese is cut into words, not pairs of characters: 京大 is not a word of 北京大学.
        for q in ["京大", "在北"] {
            assert!(find(&*index, owner, q, Filters::default()).await.hits.is_empty(), "{b}: {q}");
        }
    }
}

#[tokio::test]
async fn or_not_and_field_filters() {
    for (backend, index, files, docs) in library().await {
        let b = backend.name;
        let q = |s: &'static str| find(&*index, files.owner, s, Filters::default());
        assert_eq!(
            names(&q("fox OR invoice").await, &docs),
            sorted(vec!["fox.txt", "invoice-2024_final.pdf"]),
            "{b}: OR"
        );
        assert_eq!(names(&q("brown -fox").await, &docs), sorted(vec!["dog.txt"]), "{b}: -term");
        assert_eq!(
            names(&q("brown -\"quick brown\"").await, &docs),
            sorted(vec!["dog.txt"]),
            "{b}: -phrase"
        );
        assert_eq!(
            names(&q("ext:txt path:/Notes").await, &docs),
            sorted(vec!["dog.txt", "fox.txt", "receive-notes.txt"]),
            "{b}: filters"
        );
        assert_eq!(names(&q("path:/Notes -ext:txt").await, &docs), Vec::<String>::new(), "{b}: -ext");
        assert_eq!(names(&q("kind:image").await, &docs), sorted(vec!["beach.jpg"]), "{b}: kind");
        assert_eq!(names(&q("lang:de").await, &docs), sorted(vec!["Altstadt.md"]), "{b}: lang");
        assert_eq!(
            names(&q("path:/Not").await, &docs),
            Vec::<String>::new(),
            "{b}: a folder, not a string prefix"
        );
    }
}

#[tokio::test]
async fn filters_and_exact_facets() {
    for (backend, index, files, docs) in library().await {
        let b = backend.name;
        let all = find(&*index, files.owner, "", Filters::default()).await;
        assert_eq!(all.total, 8, "{b}");
        assert_eq!(all.facets.providers, vec![(files.provider.to_string(), 8)], "{b}");
        assert_eq!(
            all.facets.years,
            vec![("2024".into(), 5), ("2021".into(), 1), ("2022".into(), 1), ("2023".into(), 1)],
            "{b}"
        );
        assert_eq!(
            all.facets.languages,
            vec![("en".into(), 4), ("de".into(), 1), ("ja".into(), 1)],
            "{b}"
        );
        assert_eq!(all.facets.extensions[0], ("txt".into(), 4), "{b}");
        let filters = Filters {
            min_size: Some(1_000),
            max_size: Some(200_000),
            modified_after: Some(Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).single().expect("a date")),
            ..Filters::default()
        };
        let some = find(&*index, files.owner, "", filters).await;
        assert_eq!(
            names(&some, &docs),
            sorted(vec!["Altstadt.md", "invoice-2024_final.pdf", "myTaxReturn2023.xlsx"]),
            "{b}"
        );
        assert_eq!(some.total, 3, "{b}");
        assert_eq!(
            some.facets.kinds,
            vec![("document".into(), 1), ("spreadsheet".into(), 1), ("text".into(), 1)],
            "{b}"
        );
        assert_eq!(
            some.facets.size_buckets,
            vec![("10KiB-1MiB".into(), 2), ("0-10KiB".into(), 1)],
            "{b}"
        );
        let typed = find(
            &*index,
            files.owner,
            "",
            Filters {
                extensions: vec!["PDF".into(), "md".into()],
                providers: vec![files.provider],
                path_prefix: Some("/Finance/".into()),
                ..Filters::default()
            },
        )
        .await;
        assert_eq!(names(&typed, &docs), sorted(vec!["invoice-2024_final.pdf"]), "{b}");
        // Searches by meaning ask for exactly their ranked files (issue 17).
        let chosen: Vec<_> = some.hits.iter().take(2).map(|h| h.file_id).collect();
        let only = find(
            &*index,
            files.owner,
            "",
            Filters {
                files: Some(chosen.clone()),
                ..Filters::default()
            },
        )
        .await;
        assert_eq!(only.total, 2, "{b}");
        assert!(only.hits.iter().all(|h| chosen.contains(&h.file_id)), "{b}");
        let none = find(
            &*index,
            files.owner,
            "",
            Filters {
                files: Some(Vec::new()),
                ..Filters::default()
            },
        )
        .await;
        assert_eq!(none.total, 0, "{b}");
    }
}

#[tokio::test]
async fn another_owner_sees_nothing_and_pages_walk_every_hit() {
    for (backend, index, files, docs) in library().await {
        let b = backend.name;
        let stranger = Files::new();
        let theirs = vec![stranger.doc("/Finance/invoice-other.pdf", 10, 2024, Some(("brown invoice", "en")))];
        put(&*index, &theirs, 11).await;
        let mine = find(&*index, files.owner, "invoice", Filters::default()).await;
        assert_eq!(names(&mine, &docs), sorted(vec!["invoice-2024_final.pdf"]), "{b}");
        assert_eq!(find(&*index, files.owner, "", Filters::default()).await.total, 8, "{b}");
        let them = find(&*index, stranger.owner, "", Filters::default()).await;
        assert_eq!((them.total, them.hits.len()), (1, 1), "{b}");
        assert_eq!(them.facets.providers, vec![(stranger.provider.to_string(), 1)], "{b}");

        let mut seen = Vec::new();
        for offset in (0..8).step_by(3) {
            let request = SearchRequest {
                owner: files.owner,
                query: parse(""),
                filters: Filters::default(),
                offset,
                limit: 3,
            };
            let page = index.search(&request).await.expect("a page");
            assert_eq!(page.total, 8, "{b}");
            seen.extend(page.hits.into_iter().map(|h| h.file_id));
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 8, "{b}: every file once over the pages");
    }
}

#[tokio::test]
async fn deletes_erasure_and_disconnection_remove_documents_and_checkpoints_persist() {
    for (backend, index, files, docs) in library().await {
        let b = backend.name;
        assert_eq!(index.checkpoint().await.expect("the search backend answers"), 10, "{b}");
        let other = Files::new();
        let second = Files {
            owner: files.owner,
            provider: other.provider,
        };
        let extra = vec![
            second.doc("/x/on-the-second.txt", 1, 2024, None),
            other.doc("/y/someone-else.txt", 1, 2024, None),
        ];
        put(&*index, &extra, 12).await;
        index
            .apply(Batch {
                deletes: vec![docs[0].file_id],
                removed_providers: vec![files.provider],
                checkpoint: 13,
                ..Batch::default()
            })
            .await
            .expect("the search backend answers");
        let left = find(&*index, files.owner, "", Filters::default()).await;
        assert_eq!(names(&left, &extra), sorted(vec!["on-the-second.txt"]), "{b}");
        index
            .apply(Batch {
                erased: vec![files.owner],
                checkpoint: 14,
                ..Batch::default()
            })
            .await
            .expect("the search backend answers");
        assert_eq!(find(&*index, files.owner, "", Filters::default()).await.total, 0, "{b}");
        assert_eq!(
            index.count().await.expect("the search backend answers"),
            1,
            "{b}: someone else's file stays"
        );
        assert_eq!(
            index
                .get(&[extra[1].file_id, docs[1].file_id])
                .await
                .expect("the search backend answers"),
            vec![extra[1].clone()],
            "{b}"
        );
        drop(index);
        let (_, reopened) = backend.engine.open().await.expect("the search backend answers");
        assert_eq!(
            reopened.checkpoint().await.expect("the search backend answers"),
            14,
            "{b}: the checkpoint is kept with the index"
        );
    }
}

#[tokio::test]
async fn a_rebuilt_index_replaces_the_live_one_which_answers_until_the_swap() {
    for backend in backends() {
        let b = backend.name;
        let files = Files::new();
        let search = Search::open(backend.engine.clone()).await.expect("the search backend answers");
        let old = files.doc("/old-report.txt", 1, 2024, None);
        put(&*search.index().await, std::slice::from_ref(&old), 5).await;
        let (name, next) = backend.engine.create().await.expect("the search backend answers");
        let new = files.doc("/new-report.txt", 1, 2024, None);
        put(&*next, std::slice::from_ref(&new), 6).await;
        drop(next);
        let live = find(&*search.index().await, files.owner, "report", Filters::default()).await;
        assert_eq!(
            live.hits.iter().map(|h| h.file_id).collect::<Vec<_>>(),
            vec![old.file_id],
            "{b}: the old one answers"
        );
        backend.engine.swap(&name).await.expect("the search backend answers");
        search.refresh().await;
        let swapped = find(&*search.index().await, files.owner, "report", Filters::default()).await;
        assert_eq!(
            swapped.hits.iter().map(|h| h.file_id).collect::<Vec<_>>(),
            vec![new.file_id],
            "{b}: the new one answers"
        );
        assert_eq!(
            search.index().await.checkpoint().await.expect("the search backend answers"),
            6,
            "{b}"
        );
        assert_eq!(
            backend.engine.current().await.expect("the search backend answers").as_deref(),
            Some(name.as_str()),
            "{b}"
        );
    }
}

#[tokio::test]
async fn churn_does_not_grow_the_tantivy_index_without_bound() {
    let backend = backends().remove(0);
    let files = Files::new();
    let (_, index) = backend.engine.open().await.expect("the search backend answers");
    let text = "lorem ipsum dolor sit amet ".repeat(40);
    let mut docs: Vec<SearchDoc> = (0..1000)
        .map(|i| files.doc(&format!("/churn/file-{i}.txt"), 1000, 2024, Some((&text, "en"))))
        .collect();
    put(&*index, &docs, 1).await;
    let first = backend.engine.disk_bytes().await.expect("the search backend answers");
    for round in 0..10 {
        for doc in &mut docs {
            doc.size += 1;
            doc.checksum = format!("{}-{round}", doc.checksum);
            if let Some(c) = &mut doc.content {
                c.checksum.clone_from(&doc.checksum);
            }
        }
        put(&*index, &docs, 2 + round).await;
    }
    // Merges run in the background: wait (at most 20 s) until the old segments' files are gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut round = 20;
    let last = loop {
        put(&*index, &[], round).await;
        let size = backend.engine.disk_bytes().await.expect("the search backend answers");
        if size < first * 2 || std::time::Instant::now() > deadline {
            break size;
        }
        round += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(index.count().await.expect("the search backend answers"), 1000);
    eprintln!("tantivy index: {first} bytes after the first round, {last} after 10 rounds of changing every file");
    assert!(
        last < first * 4,
        "after 10 rounds of changing every file the index holds {last} bytes, {first} after the first"
    );
}

#[tokio::test]
async fn pictures_are_found_by_label_filtered_by_label_and_time_taken_and_faceted() {
    for backend in backends() {
        let b = backend.name;
        let files = Files::new();
        let search = Search::open(backend.engine.clone()).await.expect("the search backend answers");
        let picture = |path: &str, labels: &[&str], taken: Option<&str>| {
            let mut doc = files.doc(path, 50_000, 2024, None);
            doc.picture = Some(Picture {
                checksum: doc.checksum.clone(),
                labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                taken_at: taken.map(str::to_owned),
            });
            doc
        };
        let mut stale = picture("/camera/old-version.jpg", &["espresso"], None);
        stale.checksum = "a newer version".into();
        let docs = vec![
            picture("/camera/IMG_1.jpg", &["espresso", "tea cup"], Some("2024-05-01T10:00:00")),
            picture("/camera/IMG_2.jpg", &["tabby cat"], Some("2023-12-24T18:30:00")),
            picture("/camera/IMG_3.jpg", &["tabby cat", "Egyptian Mau"], None),
            stale,
            files.doc("/notes/espresso-machine.txt", 10, 2024, None),
        ];
        put(&*search.index().await, &docs, 1).await;
        let index = search.index().await;
        // A label is found like a word of the file; the labels of an older version are not.
        assert_eq!(
            names(&find(&*index, files.owner, "espresso", Filters::default()).await, &docs),
            sorted(vec!["IMG_1.jpg", "espresso-machine.txt"]),
            "{b}"
        );
        assert_eq!(
            names(&find(&*index, files.owner, "\"tea cup\"", Filters::default()).await, &docs),
            sorted(vec!["IMG_1.jpg"]),
            "{b}"
        );
        let all = find(&*index, files.owner, "", Filters::default()).await;
        assert_eq!(
            all.facets.labels,
            vec![
                ("tabby cat".into(), 2),
                ("Egyptian Mau".into(), 1),
                ("espresso".into(), 1),
                ("tea cup".into(), 1)
            ],
            "{b}"
        );
        let filtered = |labels: &[&str], after: Option<(i32, u32, u32)>, before: Option<(i32, u32, u32)>| Filters {
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            taken_after: after.and_then(|(y, m, d)| Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).single()),
            taken_before: before.and_then(|(y, m, d)| Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).single()),
            ..Filters::default()
        };
        assert_eq!(
            names(&find(&*index, files.owner, "", filtered(&["tabby cat"], None, None)).await, &docs),
            sorted(vec!["IMG_2.jpg", "IMG_3.jpg"]),
            "{b}"
        );
        assert_eq!(
            names(
                &find(&*index, files.owner, "", filtered(&[], Some((2024, 1, 1)), None)).await,
                &docs
            ),
            sorted(vec!["IMG_1.jpg"]),
            "{b}"
        );
        assert_eq!(
            names(
                &find(
                    &*index,
                    files.owner,
                    "",
                    filtered(&["tabby cat"], Some((2023, 12, 1)), Some((2024, 1, 1)))
                )
                .await,
                &docs
            ),
            sorted(vec!["IMG_2.jpg"]),
            "{b}"
        );
    }
}

#[tokio::test]
async fn a_tantivy_index_of_an_older_layout_is_replaced_by_a_new_one() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = dir.path().join("search");
    let old = root.join("index-0000");
    std::fs::create_dir_all(&old).expect("mkdir");
    let mut schema = tantivy::schema::Schema::builder();
    schema.add_text_field("id", tantivy::schema::STRING);
    tantivy::Index::create_in_dir(&old, schema.build()).expect("an index of another layout");
    std::fs::write(root.join("CURRENT"), "index-0000").expect("CURRENT");
    let engine = Engine::tantivy(root.clone());
    let (name, index) = engine.open().await.expect("a new index takes its place");
    assert_ne!(name, "index-0000");
    assert_eq!(index.checkpoint().await.expect("a checkpoint"), 0, "filled from the log's start");
    assert_eq!(engine.current().await.expect("CURRENT").as_deref(), Some(name.as_str()));
    assert!(!old.exists(), "the old index is let go");
}
