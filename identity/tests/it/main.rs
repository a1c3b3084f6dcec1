//! The contract suites of the identity crate's stores: every session store and every rate limiter
//! (in memory, and on the Redis that `scripts/services` starts) passes the same tests.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cloudsync_domain::UserId;
use cloudsync_identity::clock::ManualClock;
use cloudsync_identity::limits::{MemoryLimiter, RateLimiter, RedisLimiter, Rule};
use cloudsync_identity::sessions::{MemorySessions, RedisSessions, Rotation, Session, SessionStore};
use cloudsync_identity::testing::{clear_namespace, test_redis};
use uuid::Uuid;

/// How a contract test lets time pass: a store in memory runs on a clock the test moves; Redis
/// keeps time on its server, so there the test waits.
enum Time {
    Moved(Arc<ManualClock>),
    Server,
}

impl Time {
    async fn pass(&self, by: Duration) {
        match self {
            Self::Moved(clock) => clock.advance(by),
            Self::Server => tokio::time::sleep(by).await,
        }
    }
}

/// The contract every session store passes.
async fn session_store_contract(store: Arc<dyn SessionStore>, time: Time) {
    // Stores keep times to the millisecond.
    let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("now");
    let session = |user: UserId, ttl: chrono::Duration| Session {
        id: Uuid::new_v4(),
        user_id: user,
        created_at: now,
        last_used_at: now,
        expires_at: now + ttl,
        user_agent: Some("test agent".into()),
        ip: Some("192.0.2.1".into()),
    };
    let (ada, bob) = (UserId::from_uuid(Uuid::new_v4()), UserId::from_uuid(Uuid::new_v4()));
    let day = chrono::Duration::days(1);
    let first = session(ada, day);
    store.create(&first, "h1").await.expect("create");
    assert_eq!(store.get(first.id).await.expect("get"), Some(first.clone()));
    assert_eq!(store.get(Uuid::new_v4()).await.expect("get"), None);

    // Rotation: the current secret only, once.
    let later = now + chrono::Duration::seconds(5);
    assert_eq!(
        store.rotate(first.id, "nope", "h9", later, later + day).await.expect("rotate"),
        Rotation::Invalid
    );
    assert_eq!(
        store.rotate(Uuid::new_v4(), "h1", "h9", later, later + day).await.expect("rotate"),
        Rotation::Invalid
    );
    assert_eq!(
        store.rotate(first.id, "h1", "h2", later, later + day).await.expect("rotate"),
        Rotation::Rotated
    );
    let rotated = store.get(first.id).await.expect("get").expect("live");
    assert_eq!(rotated.last_used_at.timestamp_millis(), later.timestamp_millis());
    assert_eq!(rotated.expires_at.timestamp_millis(), (later + day).timestamp_millis());
    assert_eq!(rotated.created_at.timestamp_millis(), now.timestamp_millis());
    assert_eq!(
        store.rotate(first.id, "h2", "h3", later, later + day).await.expect("rotate"),
        Rotation::Rotated
    );
    // A used secret: reuse, and the session is gone.
    assert_eq!(
        store.rotate(first.id, "h1", "h4", later, later + day).await.expect("rotate"),
        Rotation::Reused { user_id: ada }
    );
    assert_eq!(store.get(first.id).await.expect("get"), None);
    assert_eq!(
        store.rotate(first.id, "h3", "h5", later, later + day).await.expect("rotate"),
        Rotation::Invalid
    );

    // Listing and revoking, per user.
    let (a1, a2, b1) = (session(ada, day), session(ada, day), session(bob, day));
    for s in [&a1, &a2, &b1] {
        store.create(s, &format!("secret-{}", s.id)).await.expect("create");
    }
    let mut expected = vec![a1.id, a2.id];
    expected.sort_by_key(|id| (now, *id));
    let listed: Vec<Uuid> = store.list(ada).await.expect("list").into_iter().map(|s| s.id).collect();
    assert_eq!(listed, expected);
    assert!(!store.revoke(bob, a1.id).await.expect("revoke"), "not bob's");
    assert!(store.get(a1.id).await.expect("get").is_some());
    assert!(store.revoke(ada, a1.id).await.expect("revoke"));
    assert!(!store.revoke(ada, a1.id).await.expect("revoke"), "already gone");
    assert_eq!(store.revoke_all(ada).await.expect("revoke all"), 1);
    assert!(store.list(ada).await.expect("list").is_empty());
    assert_eq!(store.list(bob).await.expect("list").len(), 1);

    // Expiry: an expired session is neither found nor listed, and its token does not rotate.
    let short = session(bob, chrono::Duration::milliseconds(300));
    store.create(&short, "short").await.expect("create");
    assert!(store.get(short.id).await.expect("get").is_some());
    time.pass(Duration::from_millis(400)).await;
    assert_eq!(store.get(short.id).await.expect("get"), None);
    assert_eq!(store.list(bob).await.expect("list").len(), 1);
    let at = Utc::now();
    assert_eq!(
        store.rotate(short.id, "short", "x", at, at + day).await.expect("rotate"),
        Rotation::Invalid
    );

    // Racing exchanges of one token: exactly one wins, and the losers' attempts read as reuse.
    let raced = session(bob, day);
    store.create(&raced, "race").await.expect("create");
    let attempts = (0..8).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let at = Utc::now();
            store
                .rotate(raced.id, "race", &format!("next-{i}"), at, at + day)
                .await
                .expect("rotate")
        })
    });
    let outcomes: Vec<Rotation> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(outcomes.iter().filter(|o| **o == Rotation::Rotated).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|o| matches!(o, Rotation::Reused { .. })), "{outcomes:?}");
    assert_eq!(store.get(raced.id).await.expect("get"), None, "reuse revoked it");

    // Ceremony state: taken once, gone after its time.
    store.put_state("mfa:a", "one", Duration::from_secs(60)).await.expect("put");
    store.put_state("mfa:b", "two", Duration::from_millis(200)).await.expect("put");
    assert_eq!(store.peek_state("mfa:a").await.expect("peek").as_deref(), Some("one"));
    assert_eq!(
        store.peek_state("mfa:a").await.expect("peek").as_deref(),
        Some("one"),
        "left in place"
    );
    assert_eq!(store.take_state("mfa:a").await.expect("take").as_deref(), Some("one"));
    assert_eq!(store.peek_state("mfa:a").await.expect("peek"), None);
    assert_eq!(store.take_state("mfa:a").await.expect("take"), None, "taken once");
    time.pass(Duration::from_millis(300)).await;
    assert_eq!(store.take_state("mfa:b").await.expect("take"), None, "expired");
    assert_eq!(store.take_state("mfa:nothing").await.expect("take"), None);
    store.put_state("mfa:c", "first", Duration::from_secs(60)).await.expect("put");
    store.put_state("mfa:c", "second", Duration::from_secs(60)).await.expect("put");
    let takers = (0..6).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.take_state("mfa:c").await.expect("take") })
    });
    let taken: Vec<String> = futures::future::join_all(takers)
        .await
        .into_iter()
        .filter_map(|r| r.expect("task"))
        .collect();
    assert_eq!(taken, ["second"], "exactly one taker gets the latest value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sessions_pass_the_contract() {
    let clock = ManualClock::starting_now();
    session_store_contract(Arc::new(MemorySessions::with_clock(clock.clone())), Time::Moved(clock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_pass_the_contract() {
    let (connection, namespace) = test_redis().await;
    session_store_contract(Arc::new(RedisSessions::new(connection, &namespace)), Time::Server).await;
    clear_namespace(&namespace).await;
}

/// The user's password events: (reason, hash).
/// The contract every rate limiter passes.
async fn limiter_contract(limiter: Arc<dyn RateLimiter>, time: Time) {
    let rule = Rule {
        class: "contract",
        per_minute: 60,
        burst: 3,
    };
    let key = Uuid::new_v4().to_string();
    for i in 0..3 {
        assert_eq!(limiter.take(&key, rule).await.expect("take"), None, "token {i} of the burst");
    }
    let wait = limiter.take(&key, rule).await.expect("take").expect("empty");
    assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(500), "{wait:?}");
    assert_eq!(
        limiter.take(&format!("{key}-other"), rule).await.expect("take"),
        None,
        "keys are separate"
    );
    let other_class = Rule {
        class: "contract-b",
        ..rule
    };
    assert_eq!(limiter.take(&key, other_class).await.expect("take"), None, "classes are separate");
    time.pass(wait + Duration::from_millis(50)).await;
    assert_eq!(limiter.take(&key, rule).await.expect("take"), None, "a token came back");
    assert!(limiter.take(&key, rule).await.expect("take").is_some());

    // Racing takers: exactly the burst gets through.
    let raced = Uuid::new_v4().to_string();
    let racers = (0..20).map(|_| {
        let limiter = Arc::clone(&limiter);
        let raced = raced.clone();
        let rule = Rule { burst: 5, ..rule };
        tokio::spawn(async move { limiter.take(&raced, rule).await.expect("take").is_none() })
    });
    let passed = futures::future::join_all(racers)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().expect("task"))
        .count();
    assert_eq!(passed, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limiter_passes_the_contract() {
    let clock = ManualClock::starting_now();
    limiter_contract(Arc::new(MemoryLimiter::with_clock(clock.clone())), Time::Moved(clock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_limiter_passes_the_contract() {
    let (connection, namespace) = test_redis().await;
    limiter_contract(Arc::new(RedisLimiter::new(connection, &namespace)), Time::Server).await;
    clear_namespace(&namespace).await;
}
