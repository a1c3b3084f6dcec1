//! Issue 21, item 6: `/readyz` names each dependency, answers 503 with the reason while one is down
//! (a RabbitMQ node and a Redis of the test's own, stopped and started again), and recovers.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudsync_queue::testing::PrivateBroker;
use serde_json::Value;

use super::{cloudsync, serve_with};

/// A `redis-server` of the test's own on a free port, without persistence.
pub(crate) struct PrivateRedis {
    port: u16,
    server: Option<Child>,
}

impl PrivateRedis {
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut redis = Self { port, server: None };
        redis.start_again();
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub(crate) fn start_again(&mut self) {
        let server = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `/readyz`: (status code, body).
fn ready(addr: &str) -> (u16, Value) {
    let response = reqwest::blocking::get(format!("http://{addr}/readyz")).expect("readyz");
    (response.status().as_u16(), response.json().expect("json"))
}

/// Asks `/readyz` until `wanted` holds, for at most `within`.
fn until(addr: &str, within: Duration, what: &str, wanted: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = ready(addr);
        if wanted(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: /readyz answered {status} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn readiness_names_the_dependency_that_is_down_and_recovers() {
    let broker = PrivateBroker::start();
    let mut redis = PrivateRedis::start();
    let data = std::env::temp_dir().join(format!("cloudsync-ready-{}", uuid::Uuid::new_v4().simple()));
    let mut command = cloudsync(&data);
    command
        .env("CLOUDSYNC_AMQP_URL", broker.url())
        .env("CLOUDSYNC_REDIS_URL", redis.url());
    let (_server, addr) = serve_with(command);

    let all_ok = |status: u16, body: &Value| status == 200 && body["status"] == "ready";
    let body = until(&addr, Duration::from_secs(30), "everything up", all_ok);
    for check in ["database", "redis", "rabbitmq", "search", "projectors"] {
        assert_eq!(body["checks"][check], "ok", "{check}: {body}");
    }

    broker.stop_app();
    let body = until(&addr, Duration::from_secs(10), "the broker stopped", |status, _| status == 503);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["rabbitmq"], "unavailable", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert!(body["reason"].as_str().expect("reason").starts_with("rabbitmq: "), "{body}");
    broker.start_app();
    until(&addr, Duration::from_secs(30), "the broker back", all_ok);

    redis.stop();
    let body = until(&addr, Duration::from_secs(10), "Redis stopped", |status, _| status == 503);
    assert_eq!(body["checks"]["redis"], "unavailable", "{body}");
    assert_eq!(body["checks"]["rabbitmq"], "ok", "{body}");
    assert!(body["reason"].as_str().expect("reason").contains("redis: "), "{body}");
    redis.start_again();
    until(&addr, Duration::from_secs(30), "Redis back", all_ok);
    std::fs::remove_dir_all(&data).ok();
}
