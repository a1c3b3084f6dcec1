//! `cloudsync replay`: a stream's or a user's history as the log holds it (hashes redacted).

use anyhow::bail;
use cloudsync_eventstore::{Database, RecordedEvent};
use uuid::Uuid;

/// Writes a stream's history, or everything a user did, in global order.
///
/// # Errors
/// Store failures, an unknown stream or a write error.
pub async fn replay(
    db: &Database,
    stream: Option<&str>,
    user: Option<Uuid>,
    json: bool,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let mut count = 0_u64;
    let mut print = |event: &RecordedEvent| -> anyhow::Result<()> {
        count += 1;
        write_event(out, event, json)
    };
    match (stream, user) {
        (Some(stream), _) => {
            let events = db.events.read_stream(stream).await?;
            if events.is_empty() {
                bail!("stream {stream:?} has no events");
            }
            events.iter().try_for_each(&mut print)?;
        }
        (None, Some(user)) => {
            let mut after = 0;
            loop {
                let page = db.events.read_by_actor(user, after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.position;
                page.iter().try_for_each(&mut print)?;
            }
        }
        (None, None) => bail!("give --stream or --user"),
    }
    if count == 0 {
        bail!("no events found");
    }
    Ok(())
}

/// Prints every event of the request or job `correlation` (its `X-Request-Id`): the mutation's, and
/// those of the jobs it started, in order.
///
/// # Errors
/// An unreadable log, or no event of that correlation.
pub async fn replay_correlation(db: &Database, correlation: Uuid, json: bool, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let (mut after, mut count) = (0, 0_u64);
    loop {
        let page = db.events.read_all(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in page.iter().filter(|e| e.metadata.correlation_id == correlation) {
            count += 1;
            write_event(out, event, json)?;
        }
    }
    if count == 0 {
        bail!("no events of correlation {correlation}");
    }
    Ok(())
}

/// Prints `event`, hashes of passwords, tokens and codes redacted (they are sealed in the log,
/// and a history is no place for them in the clear).
fn write_event(out: &mut impl std::io::Write, event: &RecordedEvent, json: bool) -> anyhow::Result<()> {
    let event = &RecordedEvent {
        payload: cloudsync_domain::events::redacted(event.payload.clone(), false),
        ..event.clone()
    };
    if json {
        writeln!(out, "{}", serde_json::to_string(event)?)?;
    } else {
        let actor = event.metadata.actor_id.map_or_else(|| "-".to_owned(), |a| a.to_string());
        writeln!(
            out,
            "#{} {} {}@{} {} v{} actor={} correlation={} {}",
            event.position,
            event.metadata.occurred_at.to_rfc3339(),
            event.stream_id,
            event.stream_version,
            event.event_type,
            event.schema_version,
            actor,
            event.metadata.correlation_id,
            event.payload
        )?;
    }
    Ok(())
}
