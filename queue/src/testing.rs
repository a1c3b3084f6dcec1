//! A RabbitMQ node of a test's own, on ports of its own, so that a test may restart or stop its
//! broker without disturbing anything else on the machine. It runs the machine's `rabbitmq-server`
//! (Debian's package, which `scripts/services` installs) with its data in a temporary folder, and is
//! stopped and removed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to start.
const START: Duration = Duration::from_secs(60);

pub struct PrivateBroker {
    node: String,
    port: u16,
    dir: PathBuf,
    server: Option<std::process::Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl PrivateBroker {
    /// Starts a node and waits until it takes connections.
    ///
    /// # Panics
    /// `rabbitmq-server` is missing or the node does not start in time: the test fails, it never
    /// skips.
    pub fn start() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("cloudsync-rabbitmq-{id}"));
        std::fs::create_dir_all(&dir).expect("a folder for the broker");
        let (port, dist) = (free_port(), free_port());
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = {port}\nloopback_users = none\n"),
        )
        .expect("configuration file");
        // Run as root, the server drops to the `rabbitmq` user, which must own its folders.
        let _ = Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&dir).status();
        let mut broker = Self {
            node: format!("cloudsync-test-{}@localhost", &id[..12]),
            port,
            dir,
            server: None,
        };
        let log = std::fs::File::create(broker.dir.join("server.log")).expect("log file");
        let server = Command::new("rabbitmq-server")
            .envs(broker.environment())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("rabbitmq-server is required for this test (run scripts/services): {err}"));
        broker.server = Some(server);
        broker.wait_until_up();
        broker
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        let dir = self.dir.display();
        vec![
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_MNESIA_BASE", format!("{dir}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{dir}/log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{dir}/enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE", format!("{dir}/rabbitmq")),
            ("RABBITMQ_PID_FILE", format!("{dir}/pid")),
        ]
    }

    /// `amqp://` URL of the node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn ctl(&self, args: &[&str]) {
        let output = Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + START;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test's RabbitMQ node did not start; its log:\n{}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The port opens before the broker has finished booting: wait for that too.
        self.ctl(&["await_startup"]);
    }

    /// Stops the broker (every connection to it drops; durable queues keep their jobs).
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// Starts a stopped broker again and waits until it takes connections.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.wait_until_up();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut server) = self.server.take() {
            // `stop` has halted the node; its process ends on its own, or is killed.
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(server.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
