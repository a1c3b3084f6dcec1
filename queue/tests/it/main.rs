//! The queue contract, run against both backends: the in-process queue and RabbitMQ (the broker
//! `scripts/services` runs on 127.0.0.1:5672, or `CLOUDSYNC_TEST_AMQP_URL`), and a broker's restart
//! on a node of the test's own.

mod broker;
mod contract;
