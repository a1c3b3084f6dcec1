//! The in-process queue: jobs in memory, for workers of the same process. It keeps nothing across
//! a restart; what must survive one is recorded in the event log, from which jobs are published
//! again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::{Consumer, Delivery, Job, JobQueue, QueueError, Settle, Settler, dead_letters};

/// Queues in this process's memory.
#[derive(Clone, Default)]
pub struct LocalQueue {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken whenever a job becomes ready or a consumer's unsettled count drops.
    changed: Notify,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    next_consumer: u64,
    next_tag: u64,
}

struct Queue {
    /// Returns past which a job goes to the dead-letter queue (`None`: no limit, no dead letters).
    limit: Option<u32>,
    ready: VecDeque<Held>,
    /// Delivered and not settled, by tag: the consumer it went to, and the job.
    unsettled: HashMap<u64, (u64, Held)>,
}

struct Held {
    job: Job,
    /// How many times it went back to the queue.
    returns: u32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Puts `held` back in `queue` after a return, or in its dead-letter queue past the limit
    /// (or when `dead`).
    fn give_back(&mut self, queue: &str, mut held: Held, dead: bool) {
        let Some(limit) = self.queues.get(queue).map(|q| q.limit) else {
            return;
        };
        if !dead {
            held.returns += 1;
        }
        if dead || limit.is_some_and(|limit| held.returns > limit) {
            if let Some(dead) = self.queues.get_mut(&dead_letters(queue)) {
                dead.ready.push_back(Held { job: held.job, returns: 0 });
            }
        } else if let Some(queue) = self.queues.get_mut(queue) {
            queue.ready.push_front(held);
        }
    }
}

impl LocalQueue {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Settles one delivery of a [`LocalQueue`].
struct LocalSettler {
    shared: Arc<Shared>,
    queue: String,
    tag: u64,
}

#[async_trait]
impl Settler for LocalSettler {
    async fn settle(self: Box<Self>, how: Settle) -> Result<(), QueueError> {
        let mut state = self.shared.lock();
        let Some((_, held)) = state.queues.get_mut(&self.queue).and_then(|q| q.unsettled.remove(&self.tag)) else {
            return Err(QueueError::Broker(
                "the delivery's consumer is gone (or its queue deleted): the job went back to the queue".into(),
            ));
        };
        match how {
            Settle::Ack => {}
            Settle::Retry => state.give_back(&self.queue, held, false),
            Settle::Reject => state.give_back(&self.queue, held, true),
        }
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }
}

/// A consumer's place in a [`LocalQueue`]: dropped, it gives back what it left unsettled.
struct Registration {
    shared: Arc<Shared>,
    queue: String,
    consumer: u64,
    prefetch: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(queue) = state.queues.get_mut(&self.queue) else { return };
        let mut tags: Vec<u64> = queue
            .unsettled
            .iter()
            .filter(|(_, (consumer, _))| *consumer == self.consumer)
            .map(|(tag, _)| *tag)
            .collect();
        // Back in the order they were delivered: each goes to the front, so the last first.
        tags.sort_unstable_by(|a, b| b.cmp(a));
        let mine: Vec<Held> = tags
            .iter()
            .filter_map(|tag| queue.unsettled.remove(tag))
            .map(|(_, held)| held)
            .collect();
        for held in mine {
            state.give_back(&self.queue, held, false);
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }
}

impl Registration {
    /// The next job for this consumer, once one is ready and it has room under its prefetch.
    async fn next(&self) -> Result<Delivery, QueueError> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.shared.lock();
                state.next_tag += 1;
                let tag = state.next_tag;
                let queue = state
                    .queues
                    .get_mut(&self.queue)
                    .ok_or_else(|| QueueError::NoQueue(self.queue.clone()))?;
                let held = queue.unsettled.values().filter(|(consumer, _)| *consumer == self.consumer).count();
                if held < self.prefetch
                    && let Some(next) = queue.ready.pop_front()
                {
                    let delivery = Delivery::new(
                        next.job.clone(),
                        next.returns,
                        Box::new(LocalSettler {
                            shared: Arc::clone(&self.shared),
                            queue: self.queue.clone(),
                            tag,
                        }),
                    );
                    queue.unsettled.insert(tag, (self.consumer, next));
                    return Ok(delivery);
                }
            }
            changed.await;
        }
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn declare(&self, queue: &str, delivery_limit: u32) -> Result<(), QueueError> {
        let mut state = self.shared.lock();
        for (name, limit) in [(queue.to_owned(), Some(delivery_limit)), (dead_letters(queue), None)] {
            match state.queues.get(&name) {
                Some(existing) if existing.limit != limit => {
                    return Err(QueueError::Refused(format!(
                        "queue {name:?} exists with another delivery limit ({:?})",
                        existing.limit
                    )));
                }
                Some(_) => {}
                None => {
                    state.queues.insert(
                        name,
                        Queue {
                            limit,
                            ready: VecDeque::new(),
                            unsettled: HashMap::new(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, queue: &str, job: Job) -> Result<(), QueueError> {
        let mut state = self.shared.lock();
        let target = state.queues.get_mut(queue).ok_or_else(|| QueueError::NoQueue(queue.to_owned()))?;
        target.ready.push_back(Held { job, returns: 0 });
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, QueueError> {
        let consumer = {
            let mut state = self.shared.lock();
            if !state.queues.contains_key(queue) {
                return Err(QueueError::NoQueue(queue.to_owned()));
            }
            state.next_consumer += 1;
            state.next_consumer
        };
        let registration = Registration {
            shared: Arc::clone(&self.shared),
            queue: queue.to_owned(),
            consumer,
            prefetch: usize::from(prefetch.max(1)),
        };
        // Ends after an error (its queue was deleted), as a broker cancels such a consumer.
        Ok(Box::pin(futures::stream::unfold(Some(registration), |registration| async move {
            let registration = registration?;
            match registration.next().await {
                Ok(delivery) => Some((Ok(delivery), Some(registration))),
                Err(err) => Some((Err(err), None)),
            }
        })))
    }

    async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        let mut state = self.shared.lock();
        state.queues.remove(queue);
        state.queues.remove(&dead_letters(queue));
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    fn durable(&self) -> bool {
        false
    }
}
