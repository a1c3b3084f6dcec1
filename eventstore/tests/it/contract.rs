use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cloudsync_eventstore::testing::TestDatabase;
use cloudsync_eventstore::{
    APPEND_LOCK_KEY, DbPool, EventMetadata, EventStore, ExpectedVersion, NewEvent, Snapshot, StoreError, StreamAppend, append_to, subscribe,
};
use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

crate::on_both!(
    append_then_read_stream_keeps_every_field,
    a_version_mismatch_is_typed_and_writes_nothing,
    many_streams_append_in_one_transaction,
    read_all_pages_in_global_order,
    read_by_actor_returns_only_that_users_events,
    subscribe_catches_up_then_follows_live_appends,
    concurrent_writers_are_seen_exactly_once_in_order,
    a_late_committing_writer_is_never_skipped,
    events_are_immutable,
    malformed_stream_names_are_refused,
    a_mixed_group_commits_the_valid_and_fails_only_the_conflicting,
    a_poisoned_group_fails_only_the_poisoner,
    nothing_of_a_group_is_visible_before_its_commit,
    a_caller_that_drops_its_append_gets_all_or_nothing,
    two_store_instances_keep_dense_positions,
    an_instance_numbers_its_appends_after_what_another_wrote,
    an_expectation_is_checked_where_nothing_is_appended,
    a_group_whose_answer_was_lost_is_answered_from_the_log,
    concurrent_writers_share_transactions,
    a_snapshot_is_kept_until_a_later_one,
);

fn event(kind: &str, n: i64, actor: Option<Uuid>) -> NewEvent {
    NewEvent {
        event_type: kind.into(),
        schema_version: 1,
        payload: json!({ "n": n, "text": "zażółć ✓" }),
        metadata: EventMetadata::new(actor),
    }
}

fn stream() -> String {
    format!("test-{}", Uuid::new_v4())
}

async fn append_then_read_stream_keeps_every_field(db: &TestDatabase) {
    let store = &*db.db.events;
    let s = stream();
    let mut events = vec![event("Created", 1, Some(Uuid::new_v4())), event("Renamed", 2, None)];
    events[1].metadata.causation_id = Some(events[0].metadata.event_id);
    events[1].schema_version = 3;
    let outcome = append_to(store, &s, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append");
    assert_eq!((outcome.first_position, outcome.last_position), (1, 2));
    assert_eq!(outcome.stream_versions[&s], 2);

    let read = store.read_stream(&s).await.expect("read");
    assert_eq!(read.len(), 2);
    for (i, (stored, sent)) in read.iter().zip(&events).enumerate() {
        assert_eq!(stored.position, i as i64 + 1);
        assert_eq!(stored.stream_version, i as i64 + 1);
        assert_eq!(stored.stream_id, s);
        assert_eq!(stored.event_type, sent.event_type);
        assert_eq!(stored.schema_version, sent.schema_version);
        assert_eq!(stored.payload, sent.payload);
        assert_eq!(stored.metadata.event_id, sent.metadata.event_id);
        assert_eq!(stored.metadata.correlation_id, sent.metadata.correlation_id);
        assert_eq!(stored.metadata.causation_id, sent.metadata.causation_id);
        assert_eq!(stored.metadata.actor_id, sent.metadata.actor_id);
        let drift = (stored.metadata.occurred_at - sent.metadata.occurred_at)
            .num_microseconds()
            .unwrap_or(i64::MAX)
            .abs();
        assert!(drift <= 1, "timestamps survive to the microsecond, drift {drift}µs");
    }
    assert!(store.read_stream("test-nothing").await.expect("read").is_empty());
    assert_eq!(store.head().await.expect("head"), 2);
    // What a caller that has folded the stream so far has not seen.
    let after: Vec<i64> = store
        .read_stream_after(&s, 1)
        .await
        .expect("read")
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(after, [2]);
    assert_eq!(store.read_stream_after(&s, 0).await.expect("read"), read);
    assert!(store.read_stream_after(&s, 2).await.expect("read").is_empty());
}

async fn a_version_mismatch_is_typed_and_writes_nothing(db: &TestDatabase) {
    let store = &*db.db.events;
    let s = stream();
    append_to(store, &s, ExpectedVersion::NoStream, vec![event("A", 1, None)])
        .await
        .expect("first append");

    for wrong in [ExpectedVersion::NoStream, ExpectedVersion::Exact(0), ExpectedVersion::Exact(2)] {
        let err = append_to(store, &s, wrong, vec![event("B", 2, None)])
            .await
            .expect_err("must conflict");
        assert!(
            matches!(&err, StoreError::Concurrency { stream, actual: 1, .. } if stream == &s),
            "expected a concurrency error, got {err:?}"
        );
    }
    // A batch where one stream is fine and another conflicts is refused whole.
    let fresh = stream();
    let err = store
        .append(vec![
            StreamAppend {
                stream: fresh.clone(),
                expected: ExpectedVersion::NoStream,
                events: vec![event("C", 3, None)],
            },
            StreamAppend {
                stream: s.clone(),
                expected: ExpectedVersion::Exact(7),
                events: vec![event("D", 4, None)],
            },
        ])
        .await
        .expect_err("must conflict");
    assert!(err.is_concurrency());
    assert!(
        store.read_stream(&fresh).await.expect("read").is_empty(),
        "nothing of the refused batch was written"
    );
    assert_eq!(store.head().await.expect("head"), 1);

    append_to(store, &s, ExpectedVersion::Exact(1), vec![event("B", 2, None)])
        .await
        .expect("right version");
    append_to(store, &s, ExpectedVersion::Any, vec![event("E", 5, None)])
        .await
        .expect("any version");
    assert_eq!(store.read_stream(&s).await.expect("read").len(), 3);
}

async fn many_streams_append_in_one_transaction(db: &TestDatabase) {
    let store = &*db.db.events;
    let batches: Vec<StreamAppend> = (0..3000)
        .map(|i| StreamAppend {
            stream: stream(),
            expected: ExpectedVersion::NoStream,
            events: vec![event("FileDiscovered", i, None)],
        })
        .collect();
    let names: Vec<String> = batches.iter().map(|b| b.stream.clone()).collect();
    let outcome = store.append(batches).await.expect("append");
    assert_eq!((outcome.first_position, outcome.last_position), (1, 3000));
    assert_eq!(outcome.stream_versions.len(), 3000);
    assert!(names.iter().all(|n| outcome.stream_versions[n] == 1));
    let all = store.read_all(0, 10_000).await.expect("read all");
    assert_eq!(all.len(), 3000);
    assert_eq!(all[1234].stream_id, names[1234]);
    assert_eq!(all[1234].payload["n"], 1234);
}

async fn read_all_pages_in_global_order(db: &TestDatabase) {
    let store = &*db.db.events;
    let (a, b) = (stream(), stream());
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        append_to(store, s, ExpectedVersion::Any, vec![event("E", i, None)])
            .await
            .expect("append");
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 3).await.expect("read");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.position).unwrap_or(after);
        seen.extend(page.into_iter().map(|e| e.payload["n"].as_i64().unwrap_or(-1)));
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_eq!(store.read_all(7, 100).await.expect("read").len(), 3);
}

async fn read_by_actor_returns_only_that_users_events(db: &TestDatabase) {
    let store = &*db.db.events;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for i in 0..6 {
        let actor = if i % 3 == 0 { bob } else { alice };
        append_to(store, &stream(), ExpectedVersion::NoStream, vec![event("E", i, Some(actor))])
            .await
            .expect("append");
    }
    let alices: Vec<i64> = store
        .read_by_actor(alice, 0, 100)
        .await
        .expect("read")
        .iter()
        .map(|e| e.payload["n"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(alices, vec![1, 2, 4, 5]);
    assert!(store.read_by_actor(Uuid::new_v4(), 0, 100).await.expect("read").is_empty());
}

async fn subscribe_catches_up_then_follows_live_appends(db: &TestDatabase) {
    let store = db.db.events.clone();
    let s = stream();
    for i in 0..10 {
        append_to(&*store, &s, ExpectedVersion::Any, vec![event("E", i, None)])
            .await
            .expect("append");
    }
    // The poll interval is long, so live delivery within the deadline proves the notification path.
    let mut sub = Box::pin(subscribe(store.clone(), 3, Duration::from_secs(30)));
    for expected in 4..=10 {
        let e = next(&mut sub).await;
        assert_eq!(e.position, expected);
    }
    let writer = {
        let store = store.clone();
        let s = s.clone();
        tokio::spawn(async move {
            for i in 10..15 {
                append_to(&*store, &s, ExpectedVersion::Any, vec![event("E", i, None)])
                    .await
                    .expect("append");
            }
        })
    };
    for expected in 11..=15 {
        let e = next(&mut sub).await;
        assert_eq!(e.position, expected);
        assert_eq!(e.payload["n"], expected - 1);
    }
    writer.await.expect("writer");
}

async fn next<S: futures::Stream<Item = Result<cloudsync_eventstore::RecordedEvent, StoreError>> + Unpin>(
    sub: &mut S,
) -> cloudsync_eventstore::RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("the subscription continues")
        .expect("no read error")
}

async fn concurrent_writers_are_seen_exactly_once_in_order(db: &TestDatabase) {
    const WRITERS: usize = 16;
    const APPENDS: usize = 40;
    let store = db.db.events.clone();
    let shared = stream();
    let mut sub = Box::pin(subscribe(store.clone(), 0, Duration::from_millis(20)));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let own = stream();
                let mut ids = Vec::new();
                for i in 0..APPENDS {
                    // Alternate between the writer's own stream (batches of 1–3) and a stream everyone
                    // fights over with optimistic concurrency (retry on conflict).
                    if i % 4 == 3 {
                        loop {
                            let version = store.read_stream(&shared).await.expect("read").len() as i64;
                            let e = event("Shared", (w * 1000 + i) as i64, None);
                            let id = e.metadata.event_id;
                            match append_to(&*store, &shared, ExpectedVersion::Exact(version), vec![e]).await {
                                Ok(_) => {
                                    ids.push(id);
                                    break;
                                }
                                Err(err) if err.is_concurrency() => continue,
                                Err(err) => panic!("append failed: {err}"),
                            }
                        }
                    } else {
                        let batch: Vec<NewEvent> = (0..1 + i % 3).map(|k| event("Own", (w * 1000 + i * 10 + k) as i64, None)).collect();
                        ids.extend(batch.iter().map(|e| e.metadata.event_id));
                        append_to(&*store, &own, ExpectedVersion::Any, batch).await.expect("append");
                    }
                }
                ids
            })
        })
        .collect();
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.expect("writer"));
    }
    let total = written.len();
    let mut seen = Vec::with_capacity(total);
    while seen.len() < total {
        seen.push(next(&mut sub).await);
    }
    let positions: Vec<i64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=total as i64).collect::<Vec<_>>(),
        "every position exactly once, in order, no gaps"
    );
    let ids: HashSet<Uuid> = seen.iter().map(|e| e.metadata.event_id).collect();
    assert_eq!(ids, written, "the subscriber saw exactly the committed events");
    // Stream versions are dense per stream.
    let mut per_stream: HashMap<&str, Vec<i64>> = HashMap::new();
    for e in &seen {
        per_stream.entry(&e.stream_id).or_default().push(e.stream_version);
    }
    for versions in per_stream.values() {
        assert_eq!(versions, &(1..=versions.len() as i64).collect::<Vec<_>>());
    }
    assert_eq!(per_stream[shared.as_str()].len(), WRITERS * APPENDS / 4);
}

/// The Postgres BIGSERIAL trap: writer A takes position N, writer B takes N+1 and commits first; a reader
/// that sees N+1 moves its checkpoint past N and never sees A's event. Here A holds the append lock (as
/// an append in flight does) while B appends and a subscriber reads: B must wait for A, and the
/// subscriber must see A's event before B's.
async fn a_late_committing_writer_is_never_skipped(db: &TestDatabase) {
    let store = db.db.events.clone();
    append_to(&*store, &stream(), ExpectedVersion::NoStream, vec![event("Before", 0, None)])
        .await
        .expect("append");
    let mut sub = Box::pin(subscribe(store.clone(), 0, Duration::from_millis(20)));
    assert_eq!(next(&mut sub).await.position, 1);

    // Writer A: a transaction that takes the append lock and writes position 2, then stalls.
    let slow_stream = stream();
    let commit_a = hold_append_lock_and_write(db, &slow_stream).await;

    // Writer B starts while A is in flight.
    let b = {
        let store = store.clone();
        tokio::spawn(async move { append_to(&*store, &stream(), ExpectedVersion::NoStream, vec![event("B", 2, None)]).await })
    };
    let early = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(early.is_err(), "nothing is visible while A is uncommitted, got {early:?}");
    assert!(!b.is_finished(), "B waits for A's transaction instead of taking a position past it");

    commit_a.send(()).expect("A still waiting");
    let b_outcome = b.await.expect("B task").expect("B append");
    assert_eq!(b_outcome.last_position, 3, "B is numbered after A");
    let a_seen = next(&mut sub).await;
    let b_seen = next(&mut sub).await;
    assert_eq!((a_seen.position, a_seen.stream_id.as_str()), (2, slow_stream.as_str()));
    assert_eq!(b_seen.position, 3);
}

/// Begins a transaction that holds the backend's append lock and inserts one event at head + 1, then
/// waits for the returned sender before committing.
async fn hold_append_lock_and_write(db: &TestDatabase, stream_id: &str) -> tokio::sync::oneshot::Sender<()> {
    let (commit, wait) = tokio::sync::oneshot::channel::<()>();
    let (locked, is_locked) = tokio::sync::oneshot::channel::<()>();
    let stream_id = stream_id.to_owned();
    let id = Uuid::new_v4();
    let sql = "INSERT INTO events (position, stream_id, stream_version, event_type, schema_version, payload, event_id, \
               correlation_id, occurred_at) VALUES ((SELECT COALESCE(MAX(position), 0) + 1 FROM events), $1, 1, 'A', 1, $2, $3, $4, $5)";
    match db.db.pool.clone() {
        DbPool::Postgres(pool) => {
            tokio::spawn(async move {
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(APPEND_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .expect("lock");
                sqlx::query(sql)
                    .bind(&stream_id)
                    .bind(sqlx::types::Json(json!({})))
                    .bind(id)
                    .bind(id)
                    .bind(chrono::Utc::now())
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                locked.send(()).expect("test waiting");
                wait.await.expect("commit signal");
                tx.commit().await.expect("commit");
            });
        }
        DbPool::Sqlite(pool) => {
            tokio::spawn(async move {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
                sqlx::query(sql)
                    .bind(&stream_id)
                    .bind("{}")
                    .bind(id.to_string())
                    .bind(id.to_string())
                    .bind(chrono::Utc::now())
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                locked.send(()).expect("test waiting");
                wait.await.expect("commit signal");
                tx.commit().await.expect("commit");
            });
        }
    }
    is_locked.await.expect("writer A took the lock");
    commit
}

async fn events_are_immutable(db: &TestDatabase) {
    let store = &*db.db.events;
    append_to(store, &stream(), ExpectedVersion::NoStream, vec![event("E", 1, None)])
        .await
        .expect("append");
    let update = "UPDATE events SET event_type = 'Forged'";
    let delete = "DELETE FROM events";
    match &db.db.pool {
        DbPool::Postgres(p) => {
            assert!(sqlx::query(update).execute(p).await.is_err());
            assert!(sqlx::query(delete).execute(p).await.is_err());
        }
        DbPool::Sqlite(p) => {
            assert!(sqlx::query(update).execute(p).await.is_err());
            assert!(sqlx::query(delete).execute(p).await.is_err());
        }
    }
    assert_eq!(store.read_all(0, 10).await.expect("read")[0].event_type, "E");
}

async fn malformed_stream_names_are_refused(db: &TestDatabase) {
    let store: Arc<dyn EventStore> = db.db.events.clone();
    for bad in ["", "nodash", "user-../../x", "user-a b"] {
        let err = append_to(&*store, bad, ExpectedVersion::Any, vec![event("E", 1, None)])
            .await
            .expect_err("refused");
        assert!(matches!(err, StoreError::Invalid(_)), "{bad:?}: {err:?}");
    }
    assert_eq!(store.head().await.expect("head"), 0);
}

type Append = tokio::task::JoinHandle<Result<cloudsync_eventstore::AppendOutcome, StoreError>>;

type Queued = std::pin::Pin<Box<dyn std::future::Future<Output = Result<cloudsync_eventstore::AppendOutcome, StoreError>> + Send>>;

/// An append polled once: its request is in the writer's queue when this returns (an append
/// queues its request before it first waits), and it is still waiting for its answer.
async fn queued(store: &Arc<dyn EventStore>, stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Queued {
    let (store, stream) = (store.clone(), stream.to_owned());
    let mut append: Queued = Box::pin(async move { append_to(&*store, &stream, expected, events).await });
    assert!(
        futures::poll!(&mut append).is_pending(),
        "an append is not answered before its commit"
    );
    append
}

/// An append queued now and driven on from a task of its own.
async fn spawn_append(store: &Arc<dyn EventStore>, stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Append {
    tokio::spawn(queued(store, stream, expected, events).await)
}

/// Stops the store's writer before the commit of an append of its own, so that the appends queued
/// meanwhile make up the next group; returns that first append and the release.
async fn hold_the_writer(store: &Arc<dyn EventStore>) -> (Append, tokio::sync::oneshot::Sender<()>) {
    let (reached, release) = store.pause_before_next_commit().expect("the store has a group writer");
    let first = spawn_append(store, &stream(), ExpectedVersion::NoStream, vec![event("First", 0, None)]).await;
    reached.await.expect("the writer reached its commit");
    (first, release)
}

/// Appends queued one after another, so that they reach the queue in this order.
async fn in_order(store: &Arc<dyn EventStore>, appends: Vec<(String, ExpectedVersion, Vec<NewEvent>)>) -> Vec<Append> {
    let mut handles = Vec::new();
    for (stream, expected, events) in appends {
        handles.push(spawn_append(store, &stream, expected, events).await);
    }
    handles
}

/// Queues `appends` while the writer is held, so that they are written as one group; their results.
async fn as_one_group(
    store: &Arc<dyn EventStore>,
    appends: Vec<(String, ExpectedVersion, Vec<NewEvent>)>,
) -> Vec<Result<cloudsync_eventstore::AppendOutcome, StoreError>> {
    let (first, release) = hold_the_writer(store).await;
    let queued = in_order(store, appends).await;
    release.send(()).expect("the writer waits");
    first.await.expect("task").expect("the first append");
    let mut results = Vec::new();
    for handle in queued {
        results.push(handle.await.expect("task"));
    }
    results
}

async fn positions(store: &dyn EventStore) -> Vec<i64> {
    store.read_all(0, 100_000).await.expect("read").iter().map(|e| e.position).collect()
}

async fn a_mixed_group_commits_the_valid_and_fails_only_the_conflicting(db: &TestDatabase) {
    let store = db.db.events.clone();
    let s = stream();
    append_to(&*store, &s, ExpectedVersion::NoStream, vec![event("Created", 1, None)])
        .await
        .expect("append");
    let before = store.commit_stats();
    // A is valid; B expects the version A replaces; C is valid only once A is written.
    let results = as_one_group(
        &store,
        vec![
            (s.clone(), ExpectedVersion::Exact(1), vec![event("A", 2, None)]),
            (s.clone(), ExpectedVersion::Exact(1), vec![event("B", 3, None)]),
            (s.clone(), ExpectedVersion::Exact(2), vec![event("C", 4, None), event("C", 5, None)]),
        ],
    )
    .await;
    let a = results[0].as_ref().expect("A commits");
    assert!(
        matches!(&results[1], Err(StoreError::Concurrency { actual: 2, .. })),
        "B fails on the version A left: {:?}",
        results[1]
    );
    let c = results[2].as_ref().expect("C commits after A");
    assert_eq!((a.first_position, c.first_position, c.last_position), (3, 4, 5));
    assert_eq!(c.stream_versions[&s], 4);
    let kinds: Vec<String> = store
        .read_stream(&s)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(kinds, ["Created", "A", "C", "C"], "B wrote nothing");
    assert_eq!(positions(&*store).await, (1..=5).collect::<Vec<_>>());
    let after = store.commit_stats();
    assert_eq!(after.requests - before.requests, 4);
    assert_eq!(
        after.transactions - before.transactions,
        2,
        "A, B and C were one group: {before:?} -> {after:?}"
    );
}

async fn a_poisoned_group_fails_only_the_poisoner(db: &TestDatabase) {
    let store = db.db.events.clone();
    let taken = event("Taken", 0, None);
    append_to(&*store, &stream(), ExpectedVersion::NoStream, vec![taken.clone()])
        .await
        .expect("append");
    // The poisoner reuses an event id that is stored already: its insert breaks the transaction.
    let mut poison = event("Poison", 1, None);
    poison.metadata.event_id = taken.metadata.event_id;
    let (a, c) = (stream(), stream());
    let results = as_one_group(
        &store,
        vec![
            (a.clone(), ExpectedVersion::NoStream, vec![event("A", 2, None)]),
            (stream(), ExpectedVersion::NoStream, vec![event("Fine", 3, None), poison]),
            (c.clone(), ExpectedVersion::NoStream, vec![event("C", 4, None)]),
        ],
    )
    .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(StoreError::Database(_))),
        "the poisoner fails: {:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let all = store.read_all(0, 100).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "dense, nothing of the poisoner"
    );
    assert!(all.iter().all(|e| e.event_type != "Fine" && e.event_type != "Poison"));
    assert_eq!(store.read_stream(&a).await.expect("read").len(), 1);
    assert_eq!(store.read_stream(&c).await.expect("read").len(), 1);
}

async fn nothing_of_a_group_is_visible_before_its_commit(db: &TestDatabase) {
    let store = db.db.events.clone();
    let (reached, release) = store.pause_before_next_commit().expect("the store has a group writer");
    let mut appends = Vec::new();
    for i in 0..3 {
        let events = vec![event("E", i, None), event("E", i, None)];
        appends.push(queued(&store, &stream(), ExpectedVersion::NoStream, events).await);
    }
    reached.await.expect("the writer reached its commit");
    for append in &mut appends {
        assert!(futures::poll!(append).is_pending(), "no caller is answered before the commit");
    }
    assert_eq!(
        store.read_all(0, 100).await.expect("read").len(),
        0,
        "nothing is visible before the commit"
    );
    assert_eq!(store.head().await.expect("head"), 0);
    release.send(()).expect("the writer waits");
    for append in appends {
        append.await.expect("append");
    }
    // Once appends returned, another connection reads every event.
    let other = cloudsync_eventstore::Database::connect(&db.url, false).await.expect("connect");
    assert_eq!(positions(&*other.events).await, (1..=6).collect::<Vec<_>>());
    other.close().await;
}

async fn a_caller_that_drops_its_append_gets_all_or_nothing(db: &TestDatabase) {
    let store = db.db.events.clone();
    // Dropped while its group is being written: the group commits, with all of it.
    let (reached, release) = store.pause_before_next_commit().expect("the store has a group writer");
    let taken = stream();
    let in_flight = queued(
        &store,
        &taken,
        ExpectedVersion::NoStream,
        (0..3).map(|i| event("Taken", i, None)).collect(),
    )
    .await;
    reached.await.expect("the writer reached its commit");
    drop(in_flight);
    // Dropped while it waits in the queue behind a group: nothing of it is written.
    let (first, release_first) = {
        release.send(()).expect("the writer waits");
        hold_the_writer(&store).await
    };
    let queued_stream = stream();
    let waiting = queued(
        &store,
        &queued_stream,
        ExpectedVersion::NoStream,
        (0..3).map(|i| event("Queued", i, None)).collect(),
    )
    .await;
    drop(waiting);
    release_first.send(()).expect("the writer waits");
    first.await.expect("task").expect("the first append");
    // One more append, so the writer has surely passed the dropped one.
    append_to(&*store, &stream(), ExpectedVersion::NoStream, vec![event("After", 0, None)])
        .await
        .expect("append");
    for (s, expected) in [(&taken, 3), (&queued_stream, 0)] {
        let stored = store.read_stream(s).await.expect("read").len();
        assert!(stored == 0 || stored == 3, "all or nothing, found {stored} of 3");
        assert_eq!(stored, expected);
    }
    let all = positions(&*store).await;
    assert_eq!(all, (1..=all.len() as i64).collect::<Vec<_>>());
}

/// `writers` tasks, taking turns over `stores`, each appending `appends` single events to a stream of
/// its own, one after another.
async fn write_concurrently(stores: &[Arc<dyn EventStore>], writers: usize, appends: i64) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = stores[w % stores.len()].clone();
            tokio::spawn(async move {
                let s = stream();
                for i in 0..appends {
                    append_to(&*store, &s, ExpectedVersion::Exact(i), vec![event("E", i, None)])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
}

async fn two_store_instances_keep_dense_positions(db: &TestDatabase) {
    let other = cloudsync_eventstore::Database::connect(&db.url, false).await.expect("connect");
    let stores = [db.db.events.clone(), other.events.clone()];
    write_concurrently(&stores, 16, 20).await;
    let all = stores[0].read_all(0, 10_000).await.expect("read");
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=320).collect::<Vec<_>>());
    let mut per_stream: HashMap<&str, Vec<i64>> = HashMap::new();
    for e in &all {
        per_stream.entry(&e.stream_id).or_default().push(e.stream_version);
    }
    assert!(per_stream.values().all(|v| *v == (1..=20).collect::<Vec<_>>()));
    other.close().await;
}

/// Two store instances append to one stream in turns, each without having seen the other's last
/// append (on PostgreSQL a writer plans a group on the head and the versions it last saw, so this
/// covers a group planned again on versions the database returned, and one written under the lock
/// after another process wrote).
async fn an_instance_numbers_its_appends_after_what_another_wrote(db: &TestDatabase) {
    let other = cloudsync_eventstore::Database::connect(&db.url, false).await.expect("connect");
    let (a, b) = (db.db.events.clone(), other.events.clone());
    let s = stream();
    let version = |outcome: Result<cloudsync_eventstore::AppendOutcome, StoreError>| outcome.expect("append").stream_versions[&s];
    assert_eq!(
        version(append_to(&*a, &s, ExpectedVersion::Any, vec![event("A", 1, None)]).await),
        1
    );
    append_to(&*b, &stream(), ExpectedVersion::NoStream, vec![event("B", 0, None)])
        .await
        .expect("append");
    let two = vec![event("B", 2, None), event("B", 3, None)];
    assert_eq!(version(append_to(&*b, &s, ExpectedVersion::Any, two).await), 3);
    assert_eq!(
        version(append_to(&*a, &s, ExpectedVersion::Any, vec![event("A", 4, None)]).await),
        4
    );
    let stale = append_to(&*b, &s, ExpectedVersion::Exact(3), vec![event("B", 5, None)]).await;
    assert!(matches!(stale, Err(StoreError::Concurrency { actual: 4, .. })), "{stale:?}");
    assert_eq!(
        version(append_to(&*b, &s, ExpectedVersion::Exact(4), vec![event("B", 5, None)]).await),
        5
    );
    let events = a.read_stream(&s).await.expect("read");
    assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(
        events.iter().map(|e| e.payload["n"].as_i64()).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3), Some(4), Some(5)]
    );
    assert_eq!(positions(&*a).await, (1..=6).collect::<Vec<_>>());
    other.close().await;
}

/// An expected version is checked even on a stream the append adds no event to, or one no stream
/// can be at.
async fn an_expectation_is_checked_where_nothing_is_appended(db: &TestDatabase) {
    let store = &*db.db.events;
    let (s, t) = (stream(), stream());
    append_to(store, &s, ExpectedVersion::NoStream, vec![event("A", 1, None)])
        .await
        .expect("append");
    append_to(store, &s, ExpectedVersion::Exact(1), vec![event("A", 2, None)])
        .await
        .expect("append");
    let stale = store
        .append(vec![
            StreamAppend {
                stream: t.clone(),
                expected: ExpectedVersion::NoStream,
                events: vec![event("T", 1, None)],
            },
            StreamAppend {
                stream: s.clone(),
                expected: ExpectedVersion::Exact(1),
                events: vec![],
            },
        ])
        .await;
    assert!(matches!(stale, Err(StoreError::Concurrency { actual: 2, .. })), "{stale:?}");
    let absent = store
        .append(vec![StreamAppend {
            stream: s.clone(),
            expected: ExpectedVersion::NoStream,
            events: vec![],
        }])
        .await;
    assert!(matches!(absent, Err(StoreError::Concurrency { actual: 2, .. })), "{absent:?}");
    let below = append_to(store, &s, ExpectedVersion::Exact(-1), vec![event("A", 3, None)]).await;
    assert!(matches!(below, Err(StoreError::Concurrency { actual: 2, .. })), "{below:?}");
    assert!(store.read_stream(&t).await.expect("read").is_empty());
    let versions: Vec<i64> = store
        .read_stream(&s)
        .await
        .expect("read")
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(positions(store).await, [1, 2]);
}

/// A group's call that goes unanswered (a dropped connection) after it committed is answered as
/// committed, and one lost before it reached the database is written once; on a backend whose
/// answers cannot be lost so, there is nothing to test.
async fn a_group_whose_answer_was_lost_is_answered_from_the_log(db: &TestDatabase) {
    let store = &*db.db.events;
    let s = stream();
    append_to(store, &s, ExpectedVersion::NoStream, vec![event("A", 1, None)])
        .await
        .expect("append");
    let hooked = store.lose_next_answer(true);
    if store.backend() == "sqlite" {
        assert!(!hooked);
        return;
    }
    assert!(hooked, "the PostgreSQL store loses an answer when asked");
    let two = vec![event("A", 2, None), event("A", 3, None)];
    let outcome = append_to(store, &s, ExpectedVersion::Exact(1), two).await.expect("it committed");
    assert_eq!(
        (outcome.first_position, outcome.last_position, outcome.stream_versions[&s]),
        (2, 3, 3)
    );
    assert!(store.lose_next_answer(false));
    let outcome = append_to(store, &s, ExpectedVersion::Exact(3), vec![event("A", 4, None)])
        .await
        .expect("written once");
    assert_eq!((outcome.first_position, outcome.stream_versions[&s]), (4, 4));
    let outcome = append_to(store, &s, ExpectedVersion::Exact(4), vec![event("A", 5, None)])
        .await
        .expect("append");
    assert_eq!(outcome.first_position, 5);
    let events = store.read_stream(&s).await.expect("read");
    assert_eq!(
        events.iter().map(|e| e.payload["n"].as_i64()).collect::<Vec<_>>(),
        (1..=5).map(Some).collect::<Vec<_>>()
    );
    assert_eq!(positions(store).await, (1..=5).collect::<Vec<_>>());
}

async fn concurrent_writers_share_transactions(db: &TestDatabase) {
    let store = db.db.events.clone();
    let before = store.commit_stats();
    write_concurrently(std::slice::from_ref(&store), 16, 50).await;
    let after = store.commit_stats();
    let (appends, transactions) = (after.requests - before.requests, after.transactions - before.transactions);
    assert_eq!(appends, 800);
    assert!(
        transactions < appends,
        "16 writers took {transactions} transactions for {appends} appends"
    );
    assert_eq!(positions(&*store).await, (1..=800).collect::<Vec<_>>());
}

async fn a_snapshot_is_kept_until_a_later_one(db: &TestDatabase) {
    let store = &*db.db.events;
    let (s, other) = (stream(), stream());
    let owner = Uuid::new_v4();
    let at = |version: i64, data: &[u8]| Snapshot {
        version,
        schema: "test/1".into(),
        owner: Some(owner),
        data: data.to_vec(),
    };
    assert_eq!(store.snapshot(&s).await.expect("none yet"), None);
    let refused = store.save_snapshot(&s, at(1, b"ahead")).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "a stream without events has no snapshot: {refused:?}"
    );
    append_to(
        store,
        &s,
        ExpectedVersion::NoStream,
        (1..=3).map(|n| event("Counted", n, None)).collect(),
    )
    .await
    .expect("append");
    let ahead = store.save_snapshot(&s, at(4, b"ahead")).await;
    assert!(
        matches!(ahead, Err(StoreError::Invalid(_))),
        "no snapshot of a version not reached: {ahead:?}"
    );
    assert!(matches!(store.save_snapshot(&s, at(0, b"none")).await, Err(StoreError::Invalid(_))));
    // Bytes of every value survive, NUL included.
    let bytes: Vec<u8> = (0..=255).collect();
    store.save_snapshot(&s, at(2, &bytes)).await.expect("save");
    assert_eq!(store.snapshot(&s).await.expect("read"), Some(at(2, &bytes)));
    store.save_snapshot(&s, at(3, b"three")).await.expect("a later one");
    store.save_snapshot(&s, at(1, b"one")).await.expect("an earlier one is no error");
    assert_eq!(
        store.snapshot(&s).await.expect("read"),
        Some(at(3, b"three")),
        "the later one stays"
    );
    let anyone = Snapshot {
        owner: None,
        ..at(3, b"again")
    };
    store.save_snapshot(&s, anyone.clone()).await.expect("the same version again");
    assert_eq!(store.snapshot(&s).await.expect("read"), Some(anyone));
    assert_eq!(store.snapshot(&other).await.expect("another stream"), None);
}
