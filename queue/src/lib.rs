//! Job queues: work handed from the process that records it to the workers that carry it out,
//! behind one trait ([`JobQueue`]) with the in-process [`LocalQueue`] (the embedded default) and
//! [`AmqpQueue`] (RabbitMQ quorum queues, for worker processes elsewhere).
//!
//! The contract both keep (`tests/it/contract.rs`):
//! - a published job is held until a consumer acknowledges it; `publish` returns once the queue
//!   holds it (RabbitMQ's publisher confirm), and publishing to a queue never declared fails;
//! - a consumer has at most its `prefetch` jobs delivered and not settled;
//! - a delivery is settled by [`Delivery::ack`] (done), [`Delivery::retry`] (back to the queue)
//!   or [`Delivery::reject`] (to the dead-letter queue `<queue>.dead`); one left unsettled goes
//!   back to the queue when its consumer is dropped;
//! - every return to the queue counts ([`Delivery::attempt`]); a job returned more than the
//!   queue's delivery limit goes to the dead-letter queue instead.

mod amqp;
mod local;
#[cfg(feature = "testing")]
pub mod testing;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

pub use amqp::AmqpQueue;
pub use local::LocalQueue;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {0:?} was never declared")]
    NoQueue(String),
    #[error("the queue refused the job: {0}")]
    Refused(String),
    #[error("the queue's broker: {0}")]
    Broker(String),
}

/// A job: its id (which a consumer uses to tell a redelivery of work already done) and what the
/// worker needs to carry it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub body: Vec<u8>,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    Retry,
    Reject,
}

/// What settles one delivery with its queue.
#[async_trait]
pub trait Settler: Send {
    async fn settle(self: Box<Self>, how: Settle) -> Result<(), QueueError>;
}

/// A job as a consumer received it.
pub struct Delivery {
    pub job: Job,
    /// How many times the job went back to the queue before this delivery (0 the first time).
    pub attempt: u32,
    settler: Box<dyn Settler>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("job", &self.job.id)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Delivery {
    pub fn new(job: Job, attempt: u32, settler: Box<dyn Settler>) -> Self {
        Self { job, attempt, settler }
    }

    /// Done: the job leaves the queue.
    ///
    /// # Errors
    /// The broker is unreachable (the job comes back later: consumers are idempotent).
    pub async fn ack(self) -> Result<(), QueueError> {
        self.settler.settle(Settle::Ack).await
    }

    /// Back to the queue, for this or another consumer (past the delivery limit, to the
    /// dead-letter queue).
    ///
    /// # Errors
    /// The broker is unreachable.
    pub async fn retry(self) -> Result<(), QueueError> {
        self.settler.settle(Settle::Retry).await
    }

    /// To the dead-letter queue at once.
    ///
    /// # Errors
    /// The broker is unreachable.
    pub async fn reject(self) -> Result<(), QueueError> {
        self.settler.settle(Settle::Reject).await
    }
}

/// Deliveries of one queue to one consumer; dropping it returns what it left unsettled.
pub type Consumer = Pin<Box<dyn Stream<Item = Result<Delivery, QueueError>> + Send>>;

/// The dead-letter queue of `queue`.
pub fn dead_letters(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Where jobs wait for workers.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Makes `queue` and its dead-letter queue, unless they are there: a job returned to `queue`
    /// more than `delivery_limit` times goes to the dead-letter queue.
    ///
    /// # Errors
    /// The broker is unreachable, or holds the queue with other settings.
    async fn declare(&self, queue: &str, delivery_limit: u32) -> Result<(), QueueError>;

    /// Hands `job` to `queue`; returns once the queue holds it.
    ///
    /// # Errors
    /// A queue never declared; the broker is unreachable or refused the job.
    async fn publish(&self, queue: &str, job: Job) -> Result<(), QueueError>;

    /// Deliveries from `queue`, at most `prefetch` of them unsettled at a time.
    ///
    /// # Errors
    /// A queue never declared; the broker is unreachable.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, QueueError>;

    /// Removes `queue` and its dead-letter queue with the jobs they hold.
    ///
    /// # Errors
    /// The broker is unreachable.
    async fn delete(&self, queue: &str) -> Result<(), QueueError>;

    /// Whether jobs it holds outlive this process (a broker's queues do; the in-process queue's
    /// go with it).
    fn durable(&self) -> bool;

    /// Whether the queue can be used now: a broker answers (a channel opens); the in-process queue
    /// always can.
    ///
    /// # Errors
    /// The broker is unreachable.
    async fn check(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
