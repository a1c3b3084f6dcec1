//! What every [`JobQueue`] does. Each test uses queues of its own name and deletes them after.

use std::time::Duration;

use cloudsync_queue::{AmqpQueue, Consumer, Delivery, Job, JobQueue, LocalQueue, QueueError, dead_letters};
use futures::StreamExt as _;

/// Long enough for a broker on this machine to deliver what it holds; a delivery expected *not*
/// to come is waited for this long.
const SETTLE: Duration = Duration::from_millis(400);
/// How long a delivery that must come may take.
const DELIVERY: Duration = Duration::from_secs(10);

fn amqp_url() -> String {
    std::env::var("CLOUDSYNC_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn rabbitmq() -> AmqpQueue {
    AmqpQueue::connect(&amqp_url())
        .await
        .unwrap_or_else(|err| panic!("RabbitMQ at {} is required for this test (run scripts/services): {err}", amqp_url()))
}

fn unique(what: &str) -> String {
    format!("cloudsync-test-{what}-{}", uuid::Uuid::now_v7().simple())
}

fn job(n: u32) -> Job {
    Job {
        id: format!("job-{n}"),
        body: format!("the body of job {n}").into_bytes(),
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(DELIVERY, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer goes on")
        .expect("a delivery")
}

/// Nothing is delivered to `consumer` for a while, and it goes on.
async fn nothing_for(consumer: &mut Consumer) {
    if let Ok(next) = tokio::time::timeout(SETTLE, consumer.next()).await {
        panic!("nothing should be delivered and the consumer should go on, got {next:?}");
    }
}

async fn jobs_are_held_until_acknowledged(queue: &dyn JobQueue) {
    let name = unique("held");
    queue.declare(&name, 3).await.expect("declared");
    queue.declare(&name, 3).await.expect("declaring again is fine");
    // Published before anyone consumes: held, and delivered in order.
    for n in 0..3 {
        queue.publish(&name, job(n)).await.expect("published");
    }
    let mut consumer = queue.consume(&name, 10).await.expect("consumer");
    for n in 0..3 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.job, job(n));
        assert_eq!(delivery.attempt, 0);
        delivery.ack().await.expect("acked");
    }
    nothing_for(&mut consumer).await;
    drop(consumer);
    // Acknowledged jobs are gone for good: a new consumer gets none of them.
    let mut again = queue.consume(&name, 10).await.expect("consumer");
    nothing_for(&mut again).await;
    drop(again);
    queue.delete(&name).await.expect("deleted");
}

async fn a_queue_never_declared_is_an_error(queue: &dyn JobQueue) {
    let name = unique("missing");
    assert!(matches!(queue.publish(&name, job(1)).await, Err(QueueError::NoQueue(_))));
    assert!(matches!(queue.consume(&name, 1).await.err(), Some(QueueError::NoQueue(_))));
    // The queue stays usable after such an error.
    let real = unique("after-error");
    queue.declare(&real, 1).await.expect("declared");
    queue.publish(&real, job(7)).await.expect("published");
    let mut consumer = queue.consume(&real, 1).await.expect("consumer");
    next(&mut consumer).await.ack().await.expect("acked");
    drop(consumer);
    queue.delete(&real).await.expect("deleted");
}

async fn retries_count_and_end_in_the_dead_letter_queue(queue: &dyn JobQueue) {
    let name = unique("retries");
    queue.declare(&name, 2).await.expect("declared");
    queue.publish(&name, job(1)).await.expect("published");
    let mut consumer = queue.consume(&name, 1).await.expect("consumer");
    // Delivered, returned twice (the limit): the third delivery says so.
    for attempt in 0..3 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.job, job(1));
        assert_eq!(delivery.attempt, attempt, "attempt {attempt}");
        delivery.retry().await.expect("returned");
    }
    // Returned a third time, past the limit: dead-lettered, not delivered again.
    nothing_for(&mut consumer).await;
    let mut dead = queue.consume(&dead_letters(&name), 1).await.expect("dead-letter consumer");
    let delivery = next(&mut dead).await;
    assert_eq!(delivery.job.body, job(1).body);
    delivery.ack().await.expect("acked");
    // Rejected: dead-lettered at once, whatever the limit.
    queue.publish(&name, job(2)).await.expect("published");
    next(&mut consumer).await.reject().await.expect("rejected");
    assert_eq!(next(&mut dead).await.job.body, job(2).body);
    nothing_for(&mut consumer).await;
    drop((consumer, dead));
    queue.delete(&name).await.expect("deleted");
}

async fn a_dropped_consumer_gives_back_what_it_left_unsettled(queue: &dyn JobQueue) {
    let name = unique("dropped");
    queue.declare(&name, 5).await.expect("declared");
    queue.publish(&name, job(1)).await.expect("published");
    queue.publish(&name, job(2)).await.expect("published");
    let mut first = queue.consume(&name, 5).await.expect("consumer");
    let one = next(&mut first).await;
    let two = next(&mut first).await;
    assert_eq!((one.attempt, two.attempt), (0, 0));
    one.ack().await.expect("acked");
    // The second is neither acknowledged nor returned when its consumer goes (a worker that died).
    drop(first);
    let mut second = queue.consume(&name, 5).await.expect("consumer");
    let again = next(&mut second).await;
    assert_eq!(again.job, job(2));
    assert_eq!(again.attempt, 1, "the return counts");
    // Given back and delivered again: acknowledging the first delivery does not pass for done.
    assert!(two.ack().await.is_err(), "an ack after the consumer went back is an error");
    again.ack().await.expect("acked");
    nothing_for(&mut second).await;
    drop(second);
    queue.delete(&name).await.expect("deleted");
}

async fn a_consumer_holds_at_most_its_prefetch(queue: &dyn JobQueue) {
    let name = unique("prefetch");
    queue.declare(&name, 5).await.expect("declared");
    for n in 0..3 {
        queue.publish(&name, job(n)).await.expect("published");
    }
    let mut consumer = queue.consume(&name, 2).await.expect("consumer");
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    // Two unsettled: the third waits, for this consumer, until one is settled.
    nothing_for(&mut consumer).await;
    first.ack().await.expect("acked");
    let third = next(&mut consumer).await;
    assert_eq!(third.job, job(2));
    nothing_for(&mut consumer).await;
    // Returned, the second comes back (room was made for it by its own return).
    second.retry().await.expect("returned");
    let again = next(&mut consumer).await;
    assert_eq!((again.job.clone(), again.attempt), (job(1), 1));
    again.ack().await.expect("acked");
    third.ack().await.expect("acked");
    nothing_for(&mut consumer).await;
    drop(consumer);
    queue.delete(&name).await.expect("deleted");
}

async fn a_deleted_queue_ends_its_consumers(queue: &dyn JobQueue) {
    let name = unique("deleted");
    queue.declare(&name, 1).await.expect("declared");
    let mut consumer = queue.consume(&name, 1).await.expect("consumer");
    queue.delete(&name).await.expect("deleted");
    // At most one error, then the end (a worker's loop does not spin on a queue that is gone).
    let mut errors = 0;
    loop {
        match tokio::time::timeout(DELIVERY, consumer.next())
            .await
            .expect("the consumer ends in time")
        {
            None => break,
            Some(Err(_)) => errors += 1,
            Some(Ok(delivery)) => panic!("nothing to deliver from a deleted queue, got {delivery:?}"),
        }
        assert!(errors <= 1, "one error at most");
    }
}

async fn many_publishers_and_consumers_lose_nothing_and_double_nothing(queue: std::sync::Arc<dyn JobQueue>) {
    let name = unique("many");
    queue.declare(&name, 5).await.expect("declared");
    let publishers: Vec<_> = (0..4_u32)
        .map(|p| {
            let (queue, name) = (std::sync::Arc::clone(&queue), name.clone());
            tokio::spawn(async move {
                for n in 0..50 {
                    queue.publish(&name, job(p * 1000 + n)).await.expect("published");
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let (queue, name) = (std::sync::Arc::clone(&queue), name.clone());
            tokio::spawn(async move {
                let mut consumer = queue.consume(&name, 4).await.expect("consumer");
                let mut seen = Vec::new();
                while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
                    let delivery = delivery.expect("a delivery");
                    seen.push(delivery.job.id.clone());
                    delivery.ack().await.expect("acked");
                }
                seen
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let mut seen = Vec::new();
    for consumer in consumers {
        seen.extend(consumer.await.expect("consumer"));
    }
    seen.sort();
    let mut expected: Vec<String> = (0..4_u32).flat_map(|p| (0..50).map(move |n| job(p * 1000 + n).id)).collect();
    expected.sort();
    assert_eq!(seen, expected, "every job once");
    queue.delete(&name).await.expect("deleted");
}

macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&super::LocalQueue::new()).await;
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&super::rabbitmq().await).await;
                }
            )*
        }
    };
}

on_both!(
    jobs_are_held_until_acknowledged,
    a_queue_never_declared_is_an_error,
    retries_count_and_end_in_the_dead_letter_queue,
    a_dropped_consumer_gives_back_what_it_left_unsettled,
    a_consumer_holds_at_most_its_prefetch,
    a_deleted_queue_ends_its_consumers,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_many_publishers_and_consumers_lose_nothing_and_double_nothing() {
    many_publishers_and_consumers_lose_nothing_and_double_nothing(std::sync::Arc::new(LocalQueue::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_many_publishers_and_consumers_lose_nothing_and_double_nothing() {
    many_publishers_and_consumers_lose_nothing_and_double_nothing(std::sync::Arc::new(rabbitmq().await)).await;
}
