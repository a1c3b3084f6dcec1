//! The hash chain on both backends: every event is linked in its own transaction (also by two store
//! instances on one database, and for events written before the chain), and `chain::verify` names
//! the first event changed, removed, inserted or reordered by hand in the database.

use cloudsync_eventstore::chain::{self, Finding};
use cloudsync_eventstore::testing::{Backend, TestDatabase};
use cloudsync_eventstore::{DbPool, EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend, on_pool};
use serde_json::json;
use uuid::Uuid;

crate::on_both!(
    every_event_is_linked_and_the_log_verifies,
    links_cannot_be_changed_or_removed,
    numbers_as_the_database_gives_them_back_still_verify,
    events_written_without_links_are_linked_by_the_next_append,
    a_changed_event_is_found,
    a_removed_event_is_found,
    a_removed_last_event_is_found,
    an_inserted_event_is_found,
    reordered_events_are_found,
    a_log_cut_back_under_a_running_store_is_appended_to_at_its_end,
);

/// Appends `count` events over three streams, some as one batch, with nested payloads.
async fn fill(store: &dyn EventStore, count: i64) {
    let streams = [
        format!("a-{}", Uuid::new_v4()),
        format!("b-{}", Uuid::new_v4()),
        format!("c-{}", Uuid::new_v4()),
    ];
    for n in 0..count {
        let event = NewEvent {
            event_type: "Tested".into(),
            schema_version: 1,
            payload: json!({ "n": n, "z": { "b": [1.5, null, "✓"], "a": true }, "sealed": "v1.abc==" }),
            metadata: EventMetadata::new(Some(Uuid::new_v4())),
        };
        let append = StreamAppend {
            stream: streams[usize::try_from(n % 3).expect("small")].clone(),
            expected: ExpectedVersion::Any,
            events: vec![event],
        };
        store.append(vec![append]).await.expect("append");
    }
}

async fn verified(db: &TestDatabase) -> Result<chain::Verified, Finding> {
    chain::verify(&db.db, &[3]).await.expect("readable")
}

/// Runs `statements` against the database with the events' immutability switched off, as someone
/// with the database's password could.
async fn by_hand(db: &TestDatabase, statements: &[&str]) {
    let (off, on): (&[&str], &[&str]) = match db.db.pool {
        DbPool::Postgres(_) => (
            &[
                "ALTER TABLE events DISABLE TRIGGER events_no_update",
                "ALTER TABLE event_chain DISABLE TRIGGER event_chain_no_update",
            ],
            &[
                "ALTER TABLE events ENABLE TRIGGER events_no_update",
                "ALTER TABLE event_chain ENABLE TRIGGER event_chain_no_update",
            ],
        ),
        DbPool::Sqlite(_) => (
            &[
                "DROP TRIGGER IF EXISTS events_no_update",
                "DROP TRIGGER IF EXISTS events_no_delete",
                "DROP TRIGGER IF EXISTS event_chain_no_delete",
            ],
            &[],
        ),
    };
    for sql in off.iter().chain(statements).chain(on) {
        on_pool!(&db.db.pool, |p| sqlx::query(sql).execute(p).await.map(drop)).unwrap_or_else(|err| panic!("{sql}: {err}"));
    }
}

/// Moves the events at `from` and after by `by` places (through negative positions, so that no two
/// rows ever share one).
fn shift(from: i64, by: i64) -> [String; 2] {
    [
        format!("UPDATE events SET position = -position WHERE position >= {from}"),
        format!("UPDATE events SET position = -position + ({by}) WHERE position < 0"),
    ]
}

async fn every_event_is_linked_and_the_log_verifies(db: &TestDatabase) {
    assert_eq!(verified(db).await.expect("an empty log verifies").events, 0);
    fill(&*db.db.events, 10).await;
    // A second store on the same database goes on from the first one's links.
    let other = cloudsync_eventstore::Database::connect(&db.url, false).await.expect("connect");
    fill(&*other.events, 5).await;
    fill(&*db.db.events, 5).await;
    other.close().await;
    let verified = verified(db).await.expect("verifies");
    assert_eq!(verified.events, 20);
    let (position, tip) = chain::tip(&db.db.pool).await.expect("tip");
    assert_eq!((position, tip), (20, verified.head));
    assert!(verified.links_at.contains_key(&3));
    // The links are the events as read back (key order, times to the microsecond).
    let events = db.db.events.read_all(0, 100).await.expect("read");
    let mut previous = chain::GENESIS;
    for event in &events {
        previous = chain::link(&previous, event);
    }
    assert_eq!(previous, tip);
}

async fn links_cannot_be_changed_or_removed(db: &TestDatabase) {
    fill(&*db.db.events, 3).await;
    for sql in [
        "UPDATE event_chain SET hash = hash WHERE position = 2",
        "DELETE FROM event_chain WHERE position = 3",
    ] {
        let refused = on_pool!(&db.db.pool, |p| sqlx::query(sql).execute(p).await.map(drop));
        assert!(refused.is_err(), "{sql} went through");
    }
    assert_eq!(verified(db).await.expect("verifies").events, 3);
}

async fn numbers_as_the_database_gives_them_back_still_verify(db: &TestDatabase) {
    // Classifier scores are f32 widened to f64; JSONB rewrites whole floats and negative zero.
    for (n, score) in [0.449_491_05_f32, 0.1, 0.333_333_34, 0.999_999_94].into_iter().enumerate() {
        let event = NewEvent {
            event_type: "Scored".into(),
            schema_version: 1,
            payload: json!({ "score": f64::from(score), "big": 1e16, "huge": 1e20, "neg": -0.0, "whole": 3.0, "third": 1.0 / 3.0, "n": n }),
            metadata: EventMetadata::new(None),
        };
        let append = StreamAppend {
            stream: format!("scored-{}", Uuid::new_v4()),
            expected: ExpectedVersion::Any,
            events: vec![event],
        };
        db.db.events.append(vec![append]).await.expect("append");
    }
    assert_eq!(verified(db).await.expect("verifies").events, 4);
}

async fn events_written_without_links_are_linked_by_the_next_append(db: &TestDatabase) {
    fill(&*db.db.events, 6).await;
    // A log from before the chain: no links at all.
    by_hand(db, &["DELETE FROM event_chain"]).await;
    // A fresh store (no link remembered) adds them under the append lock, then its own.
    let other = cloudsync_eventstore::Database::connect(&db.url, false).await.expect("connect");
    fill(&*other.events, 2).await;
    other.close().await;
    assert_eq!(verified(db).await.expect("verifies").events, 8);
}

async fn a_changed_event_is_found(db: &TestDatabase) {
    fill(&*db.db.events, 10).await;
    by_hand(db, &["UPDATE events SET payload = '{\"n\": 999}' WHERE position = 6"]).await;
    assert_eq!(verified(db).await.expect_err("tampered"), Finding::Changed(6));
}

async fn a_removed_event_is_found(db: &TestDatabase) {
    fill(&*db.db.events, 10).await;
    let [down, up] = shift(6, -1);
    by_hand(db, &["DELETE FROM events WHERE position = 5", &down, &up]).await;
    assert_eq!(verified(db).await.expect_err("tampered"), Finding::Removed(5));
    // Without closing the gap, too.
    let other = TestDatabase::new(backend(db)).await;
    fill(&*other.db.events, 10).await;
    by_hand(&other, &["DELETE FROM events WHERE position = 7"]).await;
    assert_eq!(verified(&other).await.expect_err("tampered"), Finding::Removed(7));
    other.cleanup().await;
}

async fn a_removed_last_event_is_found(db: &TestDatabase) {
    fill(&*db.db.events, 10).await;
    by_hand(db, &["DELETE FROM events WHERE position = 10"]).await;
    assert_eq!(verified(db).await.expect_err("tampered"), Finding::Removed(10));
}

async fn an_inserted_event_is_found(db: &TestDatabase) {
    fill(&*db.db.events, 10).await;
    let [down, up] = shift(4, 1);
    let id = match backend(db) {
        Backend::Postgres => format!("'{}'::uuid", Uuid::new_v4()),
        Backend::Sqlite => format!("'{}'", Uuid::new_v4()),
    };
    let forged = format!(
        "INSERT INTO events (position, stream_id, stream_version, event_type, schema_version, payload, event_id, correlation_id, \
         causation_id, actor_id, occurred_at) SELECT 4, 'forged-1', 1, event_type, schema_version, payload, {id}, correlation_id, \
         causation_id, actor_id, occurred_at FROM events WHERE position = 3"
    );
    by_hand(db, &[&down, &up, &forged]).await;
    assert_eq!(verified(db).await.expect_err("tampered"), Finding::Inserted(4));
}

async fn reordered_events_are_found(db: &TestDatabase) {
    fill(&*db.db.events, 10).await;
    by_hand(
        db,
        &[
            "UPDATE events SET position = -5 WHERE position = 5",
            "UPDATE events SET position = 5 WHERE position = 6",
            "UPDATE events SET position = 6 WHERE position = -5",
        ],
    )
    .await;
    assert_eq!(verified(db).await.expect_err("tampered"), Finding::Reordered(5));
}

fn backend(db: &TestDatabase) -> Backend {
    match db.db.pool {
        DbPool::Sqlite(_) => Backend::Sqlite,
        DbPool::Postgres(_) => Backend::Postgres,
    }
}

/// The log cut back under a running store (an older copy of the database restored, say): the
/// store's next appends go on from the log's real end, densely and linked to its real last event,
/// not from the head and link it last wrote (PostgreSQL's writer plans a group on those: the
/// database finds the link before the plan's first position missing and the group is written
/// under the lock instead).
async fn a_log_cut_back_under_a_running_store_is_appended_to_at_its_end(db: &TestDatabase) {
    let store = &*db.db.events;
    fill(store, 5).await;
    let last = store.read_all(4, 1).await.expect("read").remove(0);
    assert_eq!((last.position, last.stream_version), (5, 2));
    by_hand(
        db,
        &[
            "DELETE FROM event_chain WHERE position = 5",
            "DELETE FROM events WHERE position = 5",
        ],
    )
    .await;
    let new = format!("d-{}", Uuid::new_v4());
    let appended = cloudsync_eventstore::append_to(store, &new, ExpectedVersion::NoStream, vec![last_like(&last)])
        .await
        .expect("append after the cut");
    assert_eq!(appended.first_position, 5, "the log's end, not the head the store last wrote");
    let again = cloudsync_eventstore::append_to(store, &last.stream_id, ExpectedVersion::Exact(1), vec![last_like(&last)])
        .await
        .expect("the cut stream goes on from its version");
    assert_eq!((again.first_position, again.stream_versions[&last.stream_id]), (6, 2));
    let verified = verified(db).await.expect("the log verifies after the cut");
    assert_eq!(verified.events, 6);
}

fn last_like(event: &cloudsync_eventstore::RecordedEvent) -> NewEvent {
    NewEvent {
        event_type: event.event_type.clone(),
        schema_version: 1,
        payload: event.payload.clone(),
        metadata: EventMetadata::new(None),
    }
}
