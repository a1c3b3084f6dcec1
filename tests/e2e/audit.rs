//! Issue 21, item 3: `auditLog` narrowed by user, stream, event types and time, paged by position;
//! a user reads their own history only.

use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(the_audit_log_filters_and_pages_and_keeps_to_the_callers_own_history);

const AUDIT: &str = "query($f: AuditFilter, $first: Int, $after: Int! = 0) { auditLog(filter: $f, first: $first, after: $after) { \
                     position eventType stream streamVersion occurredAt actorId correlationId } }";

async fn audit(h: &Harness, token: &str, filter: Value, first: i64, after: i64) -> Vec<Value> {
    let data = h
        .ok(Some(token), AUDIT, json!({ "f": filter, "first": first, "after": after }))
        .await;
    data["auditLog"].as_array().expect("list").clone()
}

async fn the_audit_log_filters_and_pages_and_keeps_to_the_callers_own_history(h: &Harness) {
    let scanned = h.scanned("audited@example.org").await;
    let (other, other_id) = h.register("someone-else@example.org").await;

    // Everything the caller did, page by page, in order.
    let everything = audit(h, &scanned.token, json!({}), 1000, 0).await;
    assert!(everything.len() >= 6, "{everything:?}");
    assert!(
        everything.iter().all(|e| e["actorId"] == json!(scanned.user)),
        "only their own events"
    );
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = audit(h, &scanned.token, json!({}), 2, after).await;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = last["position"].as_i64().expect("position");
        paged.extend(page);
    }
    assert_eq!(paged, everything, "pages join up");

    let connected = audit(
        h,
        &scanned.token,
        json!({ "eventTypes": ["ProviderConnected", "NoSuchEvent"] }),
        100,
        0,
    )
    .await;
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0]["stream"], json!(format!("provider-{}", scanned.provider)));
    let stream = format!("user-{}", scanned.user);
    let own_stream = audit(h, &scanned.token, json!({ "streamId": stream }), 100, 0).await;
    assert!(!own_stream.is_empty() && own_stream.iter().all(|e| e["stream"] == json!(stream)));
    let versions: Vec<i64> = own_stream.iter().map(|e| e["streamVersion"].as_i64().expect("version")).collect();
    assert_eq!(versions, (1..=i64::try_from(versions.len()).expect("small")).collect::<Vec<_>>());

    // A window of time: from the third event's time on, and before it.
    let from = everything[2]["occurredAt"].clone();
    let later = audit(h, &scanned.token, json!({ "from": from }), 1000, 0).await;
    let earlier = audit(h, &scanned.token, json!({ "to": from }), 1000, 0).await;
    assert_eq!(earlier.len() + later.len(), everything.len(), "the window splits the history");
    assert!(
        later
            .first()
            .is_some_and(|e| e["position"].as_i64() <= everything[2]["position"].as_i64())
    );
    // The events of one request share its correlation id.
    assert!(
        everything
            .iter()
            .all(|e| e["correlationId"].as_str().is_some_and(|c| c.len() == 36))
    );

    // Someone else's history is not theirs to read; bad input changes nothing and says why.
    let code = h
        .error_code(Some(&scanned.token), AUDIT, json!({ "f": { "userId": other_id } }))
        .await;
    assert_eq!(code, "FORBIDDEN");
    let theirs = audit(h, &other, json!({}), 100, 0).await;
    assert!(!theirs.is_empty() && theirs.iter().all(|e| e["actorId"] == json!(other_id)));
    for (filter, first) in [(json!({}), 0), (json!({}), 1001), (json!({ "from": from, "to": from }), 10)] {
        let code = h
            .error_code(Some(&scanned.token), AUDIT, json!({ "f": filter, "first": first }))
            .await;
        assert_eq!(code, "BAD_USER_INPUT", "{filter} {first}");
    }
    assert_eq!(h.error_code(None, AUDIT, json!({})).await, "UNAUTHENTICATED");
}
