//! The projector over a real event store (SQLite and PostgreSQL), into both backends.

use std::sync::Arc;

use chrono::Utc;
use cloudsync_domain::events::{FileDeleted, FileDiscovered, FileMoved, ProviderDisconnected, UserDeleted};
use cloudsync_domain::{DomainEvent, FileId, ProviderPath};
use cloudsync_eventstore::testing::{Backend as Db, TestDatabase};
use cloudsync_eventstore::{EventMetadata, EventStore, ExpectedVersion, NewEvent, append_to};
use cloudsync_search::query::parse;
use cloudsync_search::{Batch, Filters, SearchProjector, SearchRequest};

use crate::contract::{Files, backends, id};

async fn record(store: &dyn EventStore, stream: &str, event: DomainEvent) {
    let encoded = event.encode();
    let new = NewEvent {
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        metadata: EventMetadata::new(None),
    };
    append_to(store, stream, ExpectedVersion::Any, vec![new]).await.expect("append");
}

fn discovered(files: &Files, id: FileId, path: &str) -> DomainEvent {
    DomainEvent::FileDiscovered(FileDiscovered {
        file_id: id,
        provider_id: files.provider,
        owner_id: files.owner,
        path: ProviderPath::parse(path).expect("a valid path"),
        size_bytes: 10,
        modified_at: Utc::now(),
        mime_type: "text/plain".into(),
        checksum: "c".into(),
        job_id: None,
        etag: None,
    })
}

#[tokio::test]
async fn the_log_becomes_documents_and_a_replayed_page_changes_nothing() {
    for db in [Db::Sqlite, Db::Postgres] {
        let test = TestDatabase::new(db).await;
        let store = Arc::clone(&test.db.events);
        let files = Files::new();
        let (a, b, c) = (id(FileId::from_uuid), id(FileId::from_uuid), id(FileId::from_uuid));
        record(&*store, &a.stream(), discovered(&files, a, "/inbox/quarterly-report.txt")).await;
        record(&*store, &b.stream(), discovered(&files, b, "/inbox/holiday.txt")).await;
        record(&*store, &c.stream(), discovered(&files, c, "/inbox/draft.txt")).await;
        let moved = FileMoved {
            file_id: a,
            provider_id: files.provider,
            owner_id: files.owner,
            from: ProviderPath::parse("/inbox/quarterly-report.txt").expect("a valid path"),
            to: ProviderPath::parse("/archive/quarterly-report.txt").expect("a valid path"),
            moved_at: Utc::now(),
        };
        record(&*store, &a.stream(), DomainEvent::FileMoved(moved)).await;
        let deleted = FileDeleted {
            file_id: c,
            provider_id: files.provider,
            owner_id: files.owner,
            path: ProviderPath::parse("/inbox/draft.txt").expect("a valid path"),
            deleted_at: Utc::now(),
            kept: None,
        };
        record(&*store, &c.stream(), DomainEvent::FileDeleted(deleted)).await;
        for backend in backends() {
            let label = format!("{db:?}/{}", backend.name);
            let (_, index) = backend.engine.open().await.expect("the search backend answers");
            let projector = SearchProjector::new(Arc::clone(&store), None);
            assert_eq!(projector.catch_up(&*index).await.expect("the search backend answers"), 5, "{label}");
            let ask = |q: &str| SearchRequest {
                owner: files.owner,
                query: parse(q),
                filters: Filters::default(),
                offset: 0,
                limit: 10,
            };
            let report = index
                .search(&ask("path:/archive report"))
                .await
                .expect("the search backend answers");
            assert_eq!(report.hits.iter().map(|h| h.file_id).collect::<Vec<_>>(), vec![a], "{label}");
            assert_eq!(
                index.search(&ask("")).await.expect("the search backend answers").total,
                2,
                "{label}"
            );
            // A crash after the documents and before the checkpoint: the page is replayed.
            index
                .apply(Batch {
                    checkpoint: 0,
                    ..Batch::default()
                })
                .await
                .expect("the search backend answers");
            assert_eq!(projector.catch_up(&*index).await.expect("the search backend answers"), 5, "{label}");
            assert_eq!(
                index.count().await.expect("the search backend answers"),
                2,
                "{label}: no document twice"
            );
            assert_eq!(
                index
                    .search(&ask("path:/inbox"))
                    .await
                    .expect("the search backend answers")
                    .hits
                    .iter()
                    .map(|h| h.file_id)
                    .collect::<Vec<_>>(),
                vec![b],
                "{label}"
            );
        }
        let gone = ProviderDisconnected {
            provider_id: files.provider,
            owner_id: files.owner,
            disconnected_at: Utc::now(),
        };
        let other = Files {
            owner: files.owner,
            provider: id(cloudsync_domain::ProviderId::from_uuid),
        };
        let d = id(FileId::from_uuid);
        record(&*store, &files.provider.stream(), DomainEvent::ProviderDisconnected(gone)).await;
        record(&*store, &d.stream(), discovered(&other, d, "/kept.txt")).await;
        for backend in backends() {
            let label = format!("{db:?}/{}", backend.name);
            let (_, index) = backend.engine.open().await.expect("the search backend answers");
            let projector = SearchProjector::new(Arc::clone(&store), None);
            projector.catch_up(&*index).await.expect("the search backend answers");
            assert_eq!(
                index
                    .get(&[a, b, d])
                    .await
                    .expect("the search backend answers")
                    .iter()
                    .map(|x| x.file_id)
                    .collect::<Vec<_>>(),
                vec![d],
                "{label}"
            );
        }
        record(
            &*store,
            &files.owner.stream(),
            DomainEvent::UserDeleted(UserDeleted {
                user_id: files.owner,
                at: Utc::now(),
            }),
        )
        .await;
        for backend in backends() {
            let label = format!("{db:?}/{}", backend.name);
            let (_, index) = backend.engine.open().await.expect("the search backend answers");
            SearchProjector::new(Arc::clone(&store), None)
                .catch_up(&*index)
                .await
                .expect("the search backend answers");
            assert_eq!(
                index.count().await.expect("the search backend answers"),
                0,
                "{label}: an erased account leaves nothing"
            );
        }
    }
}
