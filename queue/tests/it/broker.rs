//! A broker that restarts: jobs it held are still there, and the queue connects again by itself.
//! On a RabbitMQ node of the test's own, so nothing else on the machine sees the restart.

use std::time::Duration;

use cloudsync_queue::testing::PrivateBroker;
use cloudsync_queue::{AmqpQueue, Job, JobQueue};
use futures::StreamExt as _;

fn job(n: u32) -> Job {
    Job {
        id: format!("job-{n}"),
        body: format!("the body of job {n}").into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_outlive_a_broker_restart_and_the_queue_connects_again() {
    let broker = tokio::task::spawn_blocking(PrivateBroker::start).await.expect("started");
    let queue = AmqpQueue::connect(&broker.url()).await.expect("connected");
    let name = "restarted";
    queue.declare(name, 5).await.expect("declared");
    queue.publish(name, job(1)).await.expect("published");
    let mut consumer = queue.consume(name, 1).await.expect("consumer");
    let first = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("in time")
        .expect("a delivery")
        .expect("no error");
    assert_eq!(first.job, job(1));

    // The broker goes away with the delivery unsettled: the consumer ends (or fails), and so does
    // publishing while it is away.
    let broker = tokio::task::spawn_blocking(move || {
        broker.stop_app();
        broker
    })
    .await
    .expect("stopped");
    let ended = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("the consumer sees it");
    assert!(!matches!(ended, Some(Ok(_))), "nothing is delivered by a stopped broker");
    assert!(queue.publish(name, job(2)).await.is_err(), "publishing to a stopped broker fails");
    drop(first);

    // Back: the same queue object reconnects, and the unsettled job is delivered again.
    let broker = tokio::task::spawn_blocking(move || {
        broker.start_app();
        broker
    })
    .await
    .expect("started again");
    let mut published = queue.publish(name, job(2)).await;
    for _ in 0..50 {
        if published.is_ok() {
            break;
        }
        // The node takes connections a moment before its queues are back.
        tokio::time::sleep(Duration::from_millis(200)).await;
        published = queue.publish(name, job(2)).await;
    }
    published.expect("published after the restart");
    let mut consumer = queue.consume(name, 5).await.expect("consumer after the restart");
    let mut got = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("in time")
            .expect("a delivery")
            .expect("no error");
        got.push(delivery.job.id.clone());
        delivery.ack().await.expect("acknowledged");
    }
    got.sort();
    assert_eq!(
        got,
        ["job-1", "job-2"],
        "the job held over the restart, and the one published after it"
    );
    drop(consumer);
    drop(broker);
}
