//! Catch-up-then-live subscriptions over any [`EventStore`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;

use crate::{EventStore, RecordedEvent, StoreError};

const PAGE: i64 = 500;

struct State {
    store: Arc<dyn EventStore>,
    notified: watch::Receiver<i64>,
    after: i64,
    buffer: VecDeque<RecordedEvent>,
    poll: Duration,
}

/// Every event after position `after`, in global order, each exactly once: first the stored ones
/// (catch-up), then new ones as they are appended (live). It wakes on the store's notifications and
/// polls every `poll` as the fallback. A read error is yielded and the stream retries from where it was.
pub fn subscribe(
    store: Arc<dyn EventStore>,
    after: i64,
    poll: Duration,
) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
    let notified = store.watch();
    let state = State {
        store,
        notified,
        after,
        buffer: VecDeque::new(),
        poll,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffer.pop_front() {
                state.after = event.position;
                return Some((Ok(event), state));
            }
            // Mark the current notification as seen before reading, so an append that lands after the
            // read still wakes us.
            state.notified.borrow_and_update();
            match state.store.read_all(state.after, PAGE).await {
                Ok(page) if !page.is_empty() => state.buffer.extend(page),
                Ok(_) => {
                    // Caught up: wait for a notification, or poll when none comes.
                    if let Ok(Err(_)) = tokio::time::timeout(state.poll, state.notified.changed()).await {
                        // The store was dropped; keep polling on the timer alone.
                        tokio::time::sleep(state.poll).await;
                    }
                }
                Err(error) => {
                    tokio::time::sleep(state.poll).await;
                    return Some((Err(error), state));
                }
            }
        }
    })
}
