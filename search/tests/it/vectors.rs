//! One contract, every vector index: the embedded one in a temporary folder, pgvector at
//! `CLOUDSYNC_TEST_PGVECTOR_URL` (scripts/services starts PostgreSQL 18 with pgvector), each test in
//! a database of its own, and Elasticsearch at `CLOUDSYNC_TEST_ELASTICSEARCH_URL` (the ES-8 API
//! server), each test in an index of its own. Under `CI=true` a missing server fails the suite.

use cloudsync_domain::{FileId, ProviderId, UserId};
use cloudsync_search::vectors::{ElasticVectors, FileVectors, PgVectors, SqliteVectors, VectorBatch, VectorIndex};
use uuid::Uuid;

const DIMS: usize = 384;

struct Backend {
    name: &'static str,
    index: Box<dyn VectorIndex>,
    _dir: Option<tempfile::TempDir>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut out = vec![Backend {
        name: "embedded",
        index: Box::new(SqliteVectors::open(&dir.path().join("vectors")).await.expect("opens")),
        _dir: Some(dir),
    }];
    if let Some(url) = cloudsync_eventstore::testing::pgvector_database().await {
        out.push(Backend {
            name: "pgvector",
            index: Box::new(PgVectors::open(&url, DIMS).await.expect("opens")),
            _dir: None,
        });
    }
    match std::env::var("CLOUDSYNC_TEST_ELASTICSEARCH_URL") {
        Ok(url) if !url.is_empty() => {
            let index = format!("cs-test-vectors-{}", Uuid::new_v4().simple());
            out.push(Backend {
                name: "elasticsearch",
                index: Box::new(ElasticVectors::open(&url, &index, DIMS).await.expect("opens")),
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

/// A unit vector pointing between the axes given (weights as given, then normalised).
fn towards(axes: &[(usize, f32)]) -> Vec<f32> {
    let mut v = vec![0f32; DIMS];
    for (axis, weight) in axes {
        v[*axis] = *weight;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn file(owner: UserId, provider: ProviderId, vectors: Option<Vec<Vec<f32>>>) -> FileVectors {
    FileVectors {
        file_id: FileId::from_uuid(Uuid::now_v7()),
        owner_id: owner,
        provider_id: provider,
        checksum: "c1".into(),
        vectors,
    }
}

fn ids(near: &[cloudsync_search::vectors::Near]) -> Vec<FileId> {
    near.iter().map(|n| n.file_id).collect()
}

#[tokio::test]
async fn files_rank_by_their_nearest_vector_and_only_for_their_owner() {
    for backend in backends().await {
        let (b, index) = (backend.name, &*backend.index);
        let (alice, bob) = (UserId::from_uuid(Uuid::now_v7()), UserId::from_uuid(Uuid::now_v7()));
        let provider = ProviderId::from_uuid(Uuid::now_v7());
        let exact = file(alice, provider, Some(vec![towards(&[(1, 1.0)]), towards(&[(0, 1.0)])]));
        let near = file(alice, provider, Some(vec![towards(&[(0, 1.0), (2, 1.0)])]));
        let far = file(alice, provider, Some(vec![towards(&[(3, 1.0)])]));
        let unembedded = file(alice, provider, Some(Vec::new()));
        let theirs = file(bob, provider, Some(vec![towards(&[(0, 1.0)])]));
        let all = [&exact, &near, &far, &unembedded, &theirs];
        index
            .apply(VectorBatch {
                upserts: all.iter().map(|f| (*f).clone()).collect(),
                checkpoint: 7,
                ..VectorBatch::default()
            })
            .await
            .expect("applied");
        assert_eq!(index.checkpoint().await.expect("checkpoint"), 7, "{b}");
        let query = towards(&[(0, 1.0)]);
        let found = index.nearest(alice, &query, 10, None).await.expect("nearest");
        assert_eq!(
            ids(&found),
            [exact.file_id, near.file_id, far.file_id],
            "{b}: best vector first, one hit a file"
        );
        // Elasticsearch scores a cosine as (1 + c) / 2 over vectors it quantises (int8 by default
        // since 8.14): three places survive.
        assert!((found[0].score - 1.0).abs() < 1e-3, "{b}: {found:?}");
        assert!((found[1].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-3, "{b}: {found:?}");
        assert!(found[2].score.abs() < 1e-3, "{b}: {found:?}");
        assert_eq!(
            ids(&index.nearest(alice, &query, 1, None).await.expect("nearest")),
            [exact.file_id],
            "{b}"
        );
        let others = index.nearest(alice, &query, 10, Some(exact.file_id)).await.expect("nearest");
        assert_eq!(ids(&others)[0], near.file_id, "{b}: the file asked about is left out");
        assert_eq!(
            ids(&index.nearest(bob, &query, 10, None).await.expect("nearest")),
            [theirs.file_id],
            "{b}"
        );
        assert_eq!(index.embedded_files(alice).await.expect("count"), 3, "{b}");
        let mut with = vec![exact.file_id, near.file_id, far.file_id];
        with.sort();
        assert_eq!(
            index.files_with_vectors(alice, 100).await.expect("files"),
            with,
            "{b}: not the unembedded one"
        );
        assert_eq!(index.files_with_vectors(alice, 2).await.expect("files").len(), 2, "{b}");
        assert_eq!(
            index.vectors(alice, exact.file_id).await.expect("vectors"),
            exact.vectors.clone().unwrap_or_default(),
            "{b}"
        );
        assert!(
            index.vectors(bob, exact.file_id).await.expect("vectors").is_empty(),
            "{b}: not bob's file"
        );
        let many = index
            .vectors_of(alice, &[exact.file_id, near.file_id, unembedded.file_id, theirs.file_id])
            .await
            .expect("vectors of several");
        assert_eq!(many.len(), 2, "{b}: not the unembedded one, not bob's: {:?}", many.keys());
        assert_eq!(many.get(&exact.file_id), exact.vectors.as_ref(), "{b}: in order");
        assert_eq!(many.get(&near.file_id), near.vectors.as_ref(), "{b}");
        assert!(index.vectors_of(alice, &[]).await.expect("none asked").is_empty(), "{b}");
        let records = index.records(&[exact.file_id, theirs.file_id]).await.expect("records");
        assert_eq!(records.len(), 2, "{b}");
        assert!(
            records.iter().all(|r| r.vectors.is_none() && r.checksum == "c1"),
            "{b}: {records:?}"
        );
        assert!(
            index.nearest(alice, &[1.0, 0.0], 10, None).await.expect("nearest").is_empty(),
            "{b}: wrong length"
        );
    }
}

#[tokio::test]
async fn a_file_about_the_query_throughout_ranks_before_one_with_a_single_close_passage() {
    for backend in backends().await {
        let (b, index) = (backend.name, &*backend.index);
        let alice = UserId::from_uuid(Uuid::now_v7());
        let provider = ProviderId::from_uuid(Uuid::now_v7());
        let name = towards(&[(9, 1.0)]);
        // One passage is the query itself, the other three are about something else.
        let one_passage = file(
            alice,
            provider,
            Some(vec![
                name.clone(),
                towards(&[(0, 1.0)]),
                towards(&[(3, 1.0)]),
                towards(&[(4, 1.0)]),
                towards(&[(5, 1.0)]),
            ]),
        );
        // Every passage is near the query (a cosine of 0.89).
        let close = towards(&[(0, 1.0), (1, 0.5)]);
        let throughout = file(alice, provider, Some(vec![name, close.clone(), close.clone(), close]));
        index
            .apply(VectorBatch {
                upserts: vec![one_passage.clone(), throughout.clone()],
                checkpoint: 1,
                ..VectorBatch::default()
            })
            .await
            .expect("applied");
        let query = towards(&[(0, 1.0)]);
        let near = index.nearest(alice, &query, 10, None).await.expect("nearest");
        assert_eq!(ids(&near), [one_passage.file_id, throughout.file_id], "{b}: by the nearest vector");
        let ranked = cloudsync_search::meaning::by_meaning(index, alice, &query, near.iter().map(|n| (n.file_id, n.score)).collect())
            .await
            .expect("ranked");
        let order: Vec<FileId> = ranked.iter().map(|(id, _)| *id).collect();
        assert_eq!(order, [throughout.file_id, one_passage.file_id], "{b}: by meaning: {ranked:?}");
        // (1 + 0.5) / 2 for the single passage: its centroid is half the query.
        assert!((ranked[1].1 - 0.75).abs() < 1e-2, "{b}: {ranked:?}");
    }
}

#[tokio::test]
async fn vectors_are_kept_replaced_and_removed_as_batches_say() {
    for backend in backends().await {
        let (b, index) = (backend.name, &*backend.index);
        let (alice, bob) = (UserId::from_uuid(Uuid::now_v7()), UserId::from_uuid(Uuid::now_v7()));
        let (home, work) = (ProviderId::from_uuid(Uuid::now_v7()), ProviderId::from_uuid(Uuid::now_v7()));
        let mut kept = file(alice, home, Some(vec![towards(&[(0, 1.0)])]));
        let mut changed = file(alice, home, Some(vec![towards(&[(1, 1.0)])]));
        let deleted = file(alice, home, Some(vec![towards(&[(2, 1.0)])]));
        let at_work = file(alice, work, Some(vec![towards(&[(3, 1.0)])]));
        let bobs = file(bob, home, Some(vec![towards(&[(4, 1.0)])]));
        let first = vec![kept.clone(), changed.clone(), deleted.clone(), at_work.clone(), bobs.clone()];
        index
            .apply(VectorBatch {
                upserts: first,
                checkpoint: 1,
                ..VectorBatch::default()
            })
            .await
            .expect("applied");
        // A record without vectors keeps the stored ones; an empty list removes them.
        kept.vectors = None;
        kept.checksum = "c2".into();
        changed.vectors = Some(Vec::new());
        index
            .apply(VectorBatch {
                upserts: vec![kept.clone(), changed.clone()],
                deletes: vec![deleted.file_id],
                from: 1,
                checkpoint: 2,
                ..VectorBatch::default()
            })
            .await
            .expect("applied");
        assert_eq!(index.vectors(alice, kept.file_id).await.expect("vectors").len(), 1, "{b}");
        assert!(index.vectors(alice, changed.file_id).await.expect("vectors").is_empty(), "{b}");
        assert!(index.records(&[deleted.file_id]).await.expect("records").is_empty(), "{b}");
        let records = index.records(&[kept.file_id, changed.file_id]).await.expect("records");
        assert!(records.iter().any(|r| r.file_id == kept.file_id && r.checksum == "c2"), "{b}");
        assert_eq!(index.embedded_files(alice).await.expect("count"), 2, "{b}: kept and at work");
        index
            .apply(VectorBatch {
                removed_providers: vec![work],
                erased: vec![bob],
                from: 2,
                checkpoint: 3,
                ..VectorBatch::default()
            })
            .await
            .expect("applied");
        assert_eq!(
            index.embedded_files(alice).await.expect("count"),
            1,
            "{b}: the disconnected provider's went"
        );
        assert_eq!(index.embedded_files(bob).await.expect("count"), 0, "{b}: the erased account's went");
        assert!(
            index.records(&[bobs.file_id, at_work.file_id]).await.expect("records").is_empty(),
            "{b}"
        );
        let query = towards(&[(4, 1.0)]);
        assert!(index.nearest(bob, &query, 10, None).await.expect("nearest").is_empty(), "{b}");
        assert_eq!(index.checkpoint().await.expect("checkpoint"), 3, "{b}");
        // A batch read from another position than the index's changes nothing.
        let stale = index
            .apply(VectorBatch {
                deletes: vec![kept.file_id],
                from: 2,
                checkpoint: 9,
                ..VectorBatch::default()
            })
            .await;
        assert!(stale.is_err(), "{b}: a stale batch is refused");
        assert_eq!(index.checkpoint().await.expect("checkpoint"), 3, "{b}");
        assert_eq!(
            index.vectors(alice, kept.file_id).await.expect("vectors").len(),
            1,
            "{b}: nothing of it applied"
        );
        // A rebuild starts from nothing.
        index.reset().await.expect("reset");
        assert_eq!(index.checkpoint().await.expect("checkpoint"), 0, "{b}");
        assert_eq!(index.embedded_files(alice).await.expect("count"), 0, "{b}");
        assert!(index.records(&[kept.file_id]).await.expect("records").is_empty(), "{b}");
        assert!(
            index
                .nearest(alice, &towards(&[(0, 1.0)]), 10, None)
                .await
                .expect("nearest")
                .is_empty(),
            "{b}"
        );
    }
}
