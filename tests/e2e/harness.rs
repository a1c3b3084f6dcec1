//! Starts a server on a fresh database and talks GraphQL to it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloudsync_eventstore::testing::{Backend, TestDatabase};
use cloudsync_gateway::{Config, Server, start};
use serde_json::{Value, json};

pub struct Harness {
    pub server: Option<Server>,
    /// The server's database: `db.events` is the log as the server reads it (sealed paths and
    /// hashes opened), `db.stored` as stored.
    pub db: TestDatabase,
    pub client: reqwest::Client,
    pub url: String,
    /// What the server was started with.
    pub config: Config,
}

impl Harness {
    pub async fn new(backend: Backend) -> Self {
        Self::with_config(backend, |_| {}).await
    }

    /// A server whose configuration `adjust` changes first.
    pub async fn with_config(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let db = TestDatabase::new(backend).await;
        let mut config = Config {
            data_dir: db.dir().join("data"),
            bind: "127.0.0.1:0".into(),
            database_url: Some(db.url.clone()),
            // Tests sign in far more often than people do; the rate-limit tests set their own.
            rate_limit_api_per_minute: 1_000_000,
            rate_limit_login_per_minute: 1_000_000,
            extractor_program: Some(PathBuf::from(env!("CARGO_BIN_EXE_cloudsync-test-extract"))),
            ..Config::default()
        };
        adjust(&mut config);
        let server = start(&config).await.expect("server starts");
        // The test reads the log as the server does, through the store that opens what it seals.
        let mut db = db;
        let master = cloudsync_gateway::root::master_key(&config).expect("the master key");
        db.db.events = std::sync::Arc::new(cloudsync_commands::SealingStore::new(
            std::sync::Arc::clone(&db.db.stored),
            cloudsync_commands::Vault::new(master, db.db.pool.clone()),
            config.seal_paths,
        ));
        let url = format!("http://{}", server.addr());
        Self {
            server: Some(server),
            db,
            client: reqwest::Client::new(),
            url,
            config,
        }
    }

    /// Stops the server (if running) and starts it again on the same configuration and data.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        let server = start(&self.config).await.expect("server starts again");
        self.url = format!("http://{}", server.addr());
        self.server = Some(server);
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.db.cleanup().await;
    }

    /// Posts a GraphQL request and returns the whole JSON response.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent").json().await.expect("JSON response")
    }

    /// The `data` of a response that must have no errors.
    pub async fn ok(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let response = self.gql(token, query, variables).await;
        assert!(response.get("errors").is_none(), "unexpected errors: {response:#}");
        response["data"].clone()
    }

    /// The `code` of the first error of a response that must fail.
    pub async fn error_code(&self, token: Option<&str>, query: &str, variables: Value) -> String {
        let response = self.gql(token, query, variables).await;
        let code = response["errors"][0]["extensions"]["code"].as_str();
        code.unwrap_or_else(|| panic!("expected an error with a code, got {response:#}"))
            .to_owned()
    }

    /// Registers a user; returns (access token, user id).
    pub async fn register(&self, email: &str) -> (String, String) {
        let data = self
            .ok(
                None,
                "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { accessToken user { id email } } }",
                json!({ "e": email, "p": "correct horse battery" }),
            )
            .await;
        let token = data["register"]["accessToken"].as_str().expect("token").to_owned();
        let id = data["register"]["user"]["id"].as_str().expect("id").to_owned();
        (token, id)
    }

    /// Connects a local folder and waits for its scan to complete; returns (provider id, operation id).
    pub async fn connect_local(&self, token: &str, root: &Path) -> (String, String) {
        let data = self
            .ok(
                Some(token),
                "mutation($c: JSON!) { connectProvider(provider: \"local\", credentials: $c) { id kind status scanOperationId } }",
                json!({ "c": { "root": root } }),
            )
            .await;
        let provider = data["connectProvider"]["id"].as_str().expect("provider id").to_owned();
        let operation = data["connectProvider"]["scanOperationId"]
            .as_str()
            .expect("operation id")
            .to_owned();
        self.wait_for_operation(token, &operation).await;
        (provider, operation)
    }

    /// Rescans one of the caller's providers and waits for the scan to complete.
    pub async fn rescan(&self, token: &str, provider: &str) {
        let data = self
            .ok(
                Some(token),
                "mutation($p: ID!) { rescanProvider(providerId: $p) { id } }",
                json!({ "p": provider }),
            )
            .await;
        self.wait_for_operation(token, data["rescanProvider"]["id"].as_str().expect("id"))
            .await;
    }

    /// Waits until the event log grows past what `appended` has seen (or `until` passes), then until the
    /// read models reflect the new head: what a query answers next includes every append so far.
    pub async fn next_append(&self, appended: &mut tokio::sync::watch::Receiver<i64>, until: Instant) {
        let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(until), appended.changed()).await;
        let head = *appended.borrow_and_update();
        self.server().app().projections.wait_for(head, Duration::from_secs(10)).await;
    }

    /// Follows `syncStatus` until the operation has completed (30 s deadline), asking again after each
    /// append to the log.
    pub async fn wait_for_operation(&self, token: &str, operation: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut appended = self.server().app().db.events.watch();
        loop {
            let data = self
                .ok(
                    Some(token),
                    "query($o: ID!) { syncStatus(operationId: $o) { status filesDone bytesDone filesTotal error } }",
                    json!({ "o": operation }),
                )
                .await;
            let status = &data["syncStatus"];
            match status["status"].as_str() {
                Some("completed") => return status.clone(),
                Some("failed" | "cancelled") => panic!("the operation ended badly: {status}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "the operation did not complete in time: {status}");
            self.next_append(&mut appended, deadline).await;
        }
    }

    /// Opens a GraphQL subscription over WebSocket as `auth` and returns the socket once the
    /// subscription is sent.
    pub async fn subscribe(
        &self,
        auth: &str,
        query: &str,
        variables: Value,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
        subscribe_at(&self.url, auth, query, variables).await
    }

    /// A second API process (`serve --role api`) beside this server: the same database, Redis and
    /// keys, its own data dir, behind the same public address (callbacks name this server's).
    pub async fn second_api_process(&self) -> Server {
        let mut config = self.config.clone();
        config.data_dir = self.db.dir().join("second");
        config.public_url = Some(self.url.clone());
        let key = |file: &str| {
            let text = std::fs::read_to_string(self.config.data_dir.join(file)).expect("a generated key");
            Some(secrecy::SecretString::from(text.trim().to_owned()))
        };
        config.master_key = key("master-key");
        config.chunk_store_key = key("chunk-store-key");
        cloudsync_gateway::root::start_as(&config, cloudsync_gateway::root::Role::Api)
            .await
            .expect("a second API process")
    }
}

/// Opens a GraphQL subscription over WebSocket to the server at `base` (`http://…`) as `auth` and
/// returns the socket once the subscription is sent.
pub async fn subscribe_at(
    base: &str,
    auth: &str,
    query: &str,
    variables: Value,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    {
        use futures::SinkExt as _;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

        let url = base.replace("http://", "ws://") + "/graphql/ws";
        let mut request = url.into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().expect("header"));
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
        let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {auth}") } });
        socket.send(Message::text(init.to_string())).await.expect("init");
        let ack = crate::spine::next_json(&mut socket).await;
        assert_eq!(ack["type"], json!("connection_ack"), "{ack}");
        let start = json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } });
        socket.send(Message::text(start.to_string())).await.expect("subscribe");
        socket
    }
}

impl Harness {
    /// Files of a provider, as (path → file JSON).
    pub async fn files(&self, token: &str, provider: &str) -> std::collections::BTreeMap<String, Value> {
        let data = self
            .ok(
                Some(token),
                "query($p: String) { files(provider: $p, limit: 1000) { id providerId path name sizeBytes mimeType checksum modifiedAt } }",
                json!({ "p": provider }),
            )
            .await;
        data["files"]
            .as_array()
            .expect("list")
            .iter()
            .map(|f| (f["path"].as_str().expect("path").to_owned(), f.clone()))
            .collect()
    }
}

/// A registered user with a scanned local provider (the files of [`sample_tree`]).
pub struct Scanned {
    pub token: String,
    pub user: String,
    pub root: PathBuf,
    pub provider: String,
    pub operation: String,
    pub files: std::collections::BTreeMap<String, Value>,
    /// The id of `readme.txt`.
    pub readme: String,
}

impl Harness {
    pub async fn scanned(&self, email: &str) -> Scanned {
        let (token, user) = self.register(email).await;
        let root = sample_tree(self.db.dir());
        let (provider, operation) = self.connect_local(&token, &root).await;
        let files = self.files(&token, &provider).await;
        let readme = files["readme.txt"]["id"].as_str().expect("id").to_owned();
        self.contents_read(4).await;
        Scanned {
            token,
            user,
            root,
            provider,
            operation,
            files,
            readme,
        }
    }
}

impl Harness {
    /// Waits until the content pipeline has recorded `count` readings in all, so that tests which
    /// compare the log before and after see only what they did (the sample tree has four: three
    /// files with text, and the photo, read as a picture).
    pub async fn contents_read(&self, count: usize) {
        self.recorded("FileContentExtracted", None, count, Duration::from_secs(60)).await;
    }

    /// Waits until `model` has recorded `count` analyses in all and the read models have reached
    /// the log's head; their payloads.
    pub async fn analyses(&self, model: &str, count: usize) -> Vec<Value> {
        let analyses = self.recorded("FileAnalyzed", Some(model), count, Duration::from_secs(120)).await;
        let head = self.server().app().db.events.head().await.expect("head");
        assert!(self.server().app().projections.wait_for(head, Duration::from_secs(20)).await);
        analyses
    }

    /// The payloads of the log's `event_type` events (of `model`, where given), once there are at
    /// least `count`, waiting on the log's appends up to `within`.
    async fn recorded(&self, event_type: &str, model: Option<&str>, count: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut appended = self.server().app().db.events.watch();
        loop {
            let events = self.server().app().db.events.read_all(0, 100_000).await.expect("the log");
            let found: Vec<Value> = events
                .into_iter()
                .filter(|e| e.event_type == event_type && model.is_none_or(|m| e.payload["model"] == m))
                .map(|e| e.payload)
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} {event_type} events ({model:?}) were recorded",
                found.len()
            );
            self.next_append(&mut appended, deadline).await;
        }
    }
}

impl Harness {
    /// As [`Harness::contents_read`], and then until the search index has caught up with the log.
    pub async fn contents_indexed(&self, count: usize) {
        self.contents_read(count).await;
        self.indexed().await;
    }

    /// Waits until the search index has caught up with the log as it is now.
    pub async fn indexed(&self) {
        let app = self.server().app();
        let head = app.db.events.head().await.expect("head");
        assert!(app.search.wait_for(head, Duration::from_secs(20)).await, "the index catches up");
    }
}

/// A folder with a few files: nested, unicode, spaces.
pub fn sample_tree(base: &Path) -> PathBuf {
    let root = base.join("provider-root");
    for (path, content) in [
        ("readme.txt", "hello cloudsync\n"),
        ("docs/report 2024.pdf", "%PDF-1.4 not really"),
        ("docs/zażółć gęślą.md", "# unicode\n"),
        ("photos/2024/cat.jpg", "\u{ff}\u{d8}\u{ff} jpeg-ish"),
    ] {
        let host = root.join(path);
        std::fs::create_dir_all(host.parent().expect("parent")).expect("mkdir");
        std::fs::write(host, content).expect("write");
    }
    root
}

/// Runs a test body once per backend, on a server from `Harness::new` or from the given constructor
/// (`with path::to::constructor; tests…`, the path as seen from a module inside the caller's).
macro_rules! on_both_backends {
    (with $ctor:path; $($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { let h = $ctor(cloudsync_eventstore::testing::Backend::Sqlite).await; super::$name(&h).await; h.stop().await; } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { let h = $ctor(cloudsync_eventstore::testing::Backend::Postgres).await; super::$name(&h).await; h.stop().await; } )*
        }
    };
    ($($name:ident),* $(,)?) => {
        on_both_backends!(with $crate::harness::Harness::new; $($name),*);
    };
}
pub(crate) use on_both_backends;

/// A GraphQL WebSocket (graphql-transport-ws).
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Harness {
    /// A WebSocket to the server, initialised with `token` and acknowledged.
    pub async fn socket(&self, token: &str) -> Socket {
        use futures::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = format!("{}/graphql/ws", self.url.replace("http://", "ws://"))
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "graphql-transport-ws".parse().expect("header"));
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("websocket");
        let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
        socket.send(Message::Text(init.to_string().into())).await.expect("init");
        loop {
            let message = socket.next().await.expect("open").expect("message");
            if let Message::Text(text) = message
                && text.contains("connection_ack")
            {
                return socket;
            }
        }
    }
}

/// Runs one operation over `socket` as `id`: its first `next` payload (data or errors), or its error.
pub async fn over_socket(socket: &mut Socket, id: &str, query: &str, variables: Value) -> Value {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let start = json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } });
    socket.send(Message::Text(start.to_string().into())).await.expect("send");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer")
            .expect("open")
            .expect("message");
        let Message::Text(text) = message else { continue };
        let parsed: Value = serde_json::from_str(&text).expect("JSON");
        match (parsed["type"].as_str(), parsed["id"].as_str()) {
            (Some("next"), Some(got)) if got == id => return parsed["payload"].clone(),
            (Some("error"), Some(got)) if got == id => return json!({ "errors": parsed["payload"] }),
            _ => {}
        }
    }
}
