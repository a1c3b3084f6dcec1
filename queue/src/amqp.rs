//! RabbitMQ: each queue a durable quorum queue with a delivery limit, dead-lettering through the
//! default exchange to a quorum queue `<queue>.dead`. Jobs are published persistent and mandatory
//! on a channel in confirm mode, so `publish` returns once the broker holds the job (a queue that
//! does not exist returns it: an error). Each consumer has a channel of its own, its prefetch as
//! the channel's QoS, and acknowledges by hand; dropping it closes the channel, which returns its
//! unsettled jobs. A return counts in the quorum queue's `x-delivery-count`.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::{Consumer, Delivery, Job, JobQueue, QueueError, Settle, Settler, dead_letters};

/// AMQP's reply code for a normal close.
const REPLY_SUCCESS: u16 = 200;

/// Numbers this process's consumers (their tags).
static CONSUMERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Queues on a RabbitMQ broker. A lost connection (the broker restarted, the network failed) is
/// made again by the next call that needs it.
pub struct AmqpQueue {
    url: String,
    connection: Mutex<Connection>,
    /// The channel jobs are published on (in confirm mode), made again when an error closed it.
    publisher: Mutex<Option<Channel>>,
}

fn broker(err: lapin::Error) -> QueueError {
    QueueError::Broker(err.to_string())
}

/// Whether the broker answered that the queue does not exist.
fn not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

impl AmqpQueue {
    /// Connects to the broker at `url` (`amqp://user:password@host:5672/vhost`).
    ///
    /// # Errors
    /// The broker is unreachable or refuses the credentials.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await.map_err(broker)?;
        Ok(Self {
            url: url.to_owned(),
            connection: Mutex::new(connection),
            publisher: Mutex::new(None),
        })
    }

    /// A channel of its own, for work whose failure closes it, on the connection (connected again
    /// if it was lost).
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut connection = self.connection.lock().await;
        if !connection.status().connected() {
            tracing::info!("Connecting to the job queue's broker again.");
            *connection = Connection::connect(&self.url, ConnectionProperties::default())
                .await
                .map_err(broker)?;
        }
        connection.create_channel().await.map_err(broker)
    }

    /// The publishing channel, opened (in confirm mode) when there is none or it was closed.
    async fn publisher(&self) -> Result<Channel, QueueError> {
        let mut held = self.publisher.lock().await;
        if let Some(channel) = held.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(broker)?;
        *held = Some(channel.clone());
        Ok(channel)
    }
}

/// Arguments of a quorum queue.
fn quorum(delivery_limit: Option<u32>, dead_letter_to: Option<&str>) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    if let Some(limit) = delivery_limit {
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(limit)));
    }
    if let Some(to) = dead_letter_to {
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(to.into()));
    }
    arguments
}

/// How many times the broker says a delivery's message went back to its queue.
fn returns(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else { return 0 };
    let count = headers
        .inner()
        .iter()
        .find(|(key, _)| key.as_str() == "x-delivery-count")
        .map(|(_, value)| value);
    let count = match count {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count).unwrap_or(0)
}

/// Settles a delivery on its consumer's channel.
struct AmqpSettler(lapin::Acker);

#[async_trait]
impl Settler for AmqpSettler {
    async fn settle(self: Box<Self>, how: Settle) -> Result<(), QueueError> {
        match how {
            Settle::Ack => self.0.ack(BasicAckOptions::default()).await,
            // A reject, not a nack: RabbitMQ (4.3 and later) counts only rejected returns in
            // `x-delivery-count`.
            Settle::Retry => self.0.reject(BasicRejectOptions { requeue: true }).await,
            Settle::Reject => self.0.reject(BasicRejectOptions { requeue: false }).await,
        }
        .map_err(broker)
        .and_then(|settled| {
            // Not sent: the consumer's channel is closed, and the broker has given the job back.
            settled
                .then_some(())
                .ok_or_else(|| QueueError::Broker("the delivery's channel is closed: the job went back to the queue".into()))
        })
    }
}

/// A consumer's deliveries; dropped, it closes its channel, which returns what it left unsettled.
struct AmqpConsumer {
    deliveries: lapin::Consumer,
    channel: Channel,
}

impl Stream for AmqpConsumer {
    type Item = Result<Delivery, QueueError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.poll_next_unpin(cx).map(|next| {
            next.map(|delivery| {
                let delivery = delivery.map_err(broker)?;
                let job = Job {
                    id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    body: delivery.data,
                };
                Ok(Delivery::new(
                    job,
                    returns(&delivery.properties),
                    Box::new(AmqpSettler(delivery.acker)),
                ))
            })
        })
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel.close(REPLY_SUCCESS, "consumer dropped".into()).await;
            });
        }
    }
}

#[async_trait]
impl JobQueue for AmqpQueue {
    async fn declare(&self, queue: &str, delivery_limit: u32) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        let dead = dead_letters(queue);
        let declared = async {
            channel
                .queue_declare(dead.as_str().into(), QueueDeclareOptions::durable(), quorum(None, None))
                .await?;
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions::durable(),
                    quorum(Some(delivery_limit), Some(&dead)),
                )
                .await?;
            Ok::<(), lapin::Error>(())
        }
        .await;
        // Closed either way (a refused declare has closed it already).
        let _ = channel.close(REPLY_SUCCESS, "declared".into()).await;
        declared.map_err(|err| match err.kind() {
            lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)) => {
                QueueError::Refused(format!("queue {queue:?} exists with other settings: {err}"))
            }
            _ => broker(err),
        })
    }

    async fn publish(&self, queue: &str, job: Job) -> Result<(), QueueError> {
        let channel = self.publisher().await?;
        let properties = BasicProperties::default()
            .with_message_id(job.id.as_str().into())
            // Persistent.
            .with_delivery_mode(2);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish("".into(), queue.into(), options, &job.body, properties)
            .await
            .map_err(broker)?
            .await
            .map_err(broker)?;
        if confirm.is_nack() {
            return Err(QueueError::Refused(format!("the broker did not take job {} for {queue:?}", job.id)));
        }
        if confirm.take_message().is_some() {
            return Err(QueueError::NoQueue(queue.to_owned()));
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, QueueError> {
        let channel = self.channel().await?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let deliveries = channel
            .basic_consume(
                queue.into(),
                format!(
                    "cloudsync-{}-{}",
                    std::process::id(),
                    CONSUMERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                )
                .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|err| {
                if not_found(&err) {
                    QueueError::NoQueue(queue.to_owned())
                } else {
                    broker(err)
                }
            })?;
        Ok(Box::pin(AmqpConsumer { deliveries, channel }))
    }

    async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        let deleted = async {
            for name in [queue.to_owned(), dead_letters(queue)] {
                channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await?;
            }
            Ok::<(), lapin::Error>(())
        }
        .await;
        let _ = channel.close(REPLY_SUCCESS, "deleted".into()).await;
        deleted.map_err(broker)
    }

    fn durable(&self) -> bool {
        true
    }

    async fn check(&self) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        channel.close(REPLY_SUCCESS, "checked".into()).await.map_err(broker)
    }
}
