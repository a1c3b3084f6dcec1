//! The running service: opens the database, starts the projectors and the job runner, and serves
//! GraphQL over HTTP and WebSocket. Everything it starts is owned by [`Server`] and stopped by it.
//!
//! Read-your-writes: each mutation records the log position of its last appended event against the
//! caller; before a query reads a read model it waits (up to `consistency_timeout_ms`) until every
//! projector has passed that position, and the most advanced projector's position, so the read models
//! never disagree between two queries. Another caller's writes are eventually consistent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use async_graphql::parser::parse_query;
use async_graphql::{Data, ServerError};
use async_graphql_axum::{GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use cloudsync_chunks::ProviderStore;
use cloudsync_commands::{Commands, JobRunner, MasterKey, OAuth, OAuthApp, Scheduler, SealingStore, Vault};
use cloudsync_domain::ProviderKind;
use cloudsync_eventstore::Database;
use cloudsync_projections::{Projections, ReadModels};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::config::Config;
use crate::errors::code;
use crate::http::request::RequestInfo;
use crate::schema::{CloudSyncSchema, build};
use cloudsync_identity::auth::{Authentication, Caller, Tokens};
use cloudsync_identity::keys::{KeyRing, RELOAD_EVERY};
use cloudsync_identity::limits::{MemoryLimiter, RateLimiter, RedisLimiter, Rules};
use cloudsync_identity::mail::{LogMailer, LogSms, Mailer, OutboxMailer, OutboxSms, SmsSender};
use cloudsync_identity::passwords::Passwords;
use cloudsync_identity::sessions::{Client, MemorySessions, RedisSessions, SessionStore, Sessions};

/// What every request handler shares.
pub struct App {
    pub db: Database,
    pub commands: Commands,
    pub reads: ReadModels,
    pub projections: Arc<Projections>,
    pub tokens: Tokens,
    written: Mutex<HashMap<uuid::Uuid, i64>>,
    consistency_timeout: Duration,
    token_ttl_minutes: i64,
    pub passwords: Passwords,
    pub mailer: Arc<dyn Mailer>,
    pub sms: Arc<dyn SmsSender>,
    pub password_reset_ttl: chrono::Duration,
    /// The WebAuthn verifier, or why passkeys are not available.
    pub passkeys: Result<Arc<webauthn_rs::Webauthn>, String>,
    pub limiter: Arc<dyn RateLimiter>,
    pub rules: Rules,
    /// OpenID providers people may sign in with (none configured: `None`).
    pub oidc: Option<Arc<cloudsync_identity::oidc::OidcLogin>>,
    pub saml: Option<Arc<cloudsync_identity::saml::SamlLogin>>,
}

impl App {
    /// Waits until the read models reflect everything in the log now, whoever wrote it (for
    /// administrators' views of every account).
    pub async fn caught_up(&self) {
        match self.db.events.head().await {
            Ok(head) if head > 0 && !self.projections.wait_for(head, self.consistency_timeout).await => {
                tracing::warn!(head, "Read models lag behind the log; answering from a stale view.");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "The log's head cannot be read; answering from the current view."),
        }
    }

    /// What an `Authorization` header amounts to: an access token (a JWT of a session) or a
    /// personal API token (`cst1.…`) used from `ip`.
    pub async fn authenticate(&self, header: Option<&str>, ip: Option<&str>) -> Authentication {
        let bearer = header
            .map(str::trim)
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim);
        match bearer {
            Some(token) if token.starts_with(cloudsync_identity::access::API_TOKEN_PREFIX) => self.api_token(token, ip).await,
            _ => self.tokens.authenticate(header).await,
        }
    }

    /// Checks a personal API token against its user's record: the secret's hash, the expiry, the
    /// account's networks; its scopes are those it was created with that the user's roles allow.
    async fn api_token(&self, token: &str, ip: Option<&str>) -> Authentication {
        use cloudsync_identity::access::{allowed_scopes, ip_allowed, parse_api_token, roles_from, scopes_from};
        let invalid = || Authentication::Invalid("the API token is invalid, expired or revoked".into());
        let Some((user_id, token_id, secret)) = parse_api_token(token) else {
            return invalid();
        };
        let user = match self.commands.user(cloudsync_domain::UserId::from_uuid(user_id)).await {
            Ok(Some(user)) => user,
            Ok(None) => return invalid(),
            Err(error) => {
                tracing::error!(error = %error, "An API token cannot be checked.");
                return Authentication::Unavailable("API tokens cannot be checked right now; try again".into());
            }
        };
        let Some(stored) = user.api_token(token_id) else {
            return invalid();
        };
        let matches = cloudsync_identity::sessions::hash(secret) == stored.secret_hash;
        if !matches || stored.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
            return invalid();
        }
        if !ip_allowed(ip, user.ip_allowlist()) {
            return Authentication::Invalid("this account cannot be used from this network".into());
        }
        let roles = roles_from(&user.roles());
        Authentication::User(Caller {
            user_id,
            session_id: None,
            token_id: Some(token_id),
            roles,
            scopes: scopes_from(&stored.scopes) & allowed_scopes(roles),
        })
    }

    /// How long an access token lives.
    pub fn token_ttl_minutes(&self) -> i64 {
        self.token_ttl_minutes
    }

    /// Remembers that `caller` has written up to `position`.
    pub fn wrote(&self, caller: Caller, position: i64) {
        self.wrote_for(caller.user_id, position);
    }

    /// Remembers that user `user_id` has written up to `position`.
    pub fn wrote_for(&self, user_id: uuid::Uuid, position: i64) {
        if let Ok(mut written) = self.written.lock() {
            let entry = written.entry(user_id).or_insert(0);
            *entry = (*entry).max(position);
        }
    }

    /// Waits until the read models reflect everything `caller` has written, and agree with each
    /// other (none behind what the most advanced one has shown), so what one query showed (a finished
    /// scan) the next one sees too (its files).
    pub async fn consistent(&self, caller: Caller) {
        let written = self.written.lock().ok().and_then(|w| w.get(&caller.user_id).copied()).unwrap_or(0);
        let position = written.max(self.projections.max_position());
        if position > 0 && !self.projections.wait_for(position, self.consistency_timeout).await {
            tracing::warn!(user = %caller.user_id, position, "Read models lag behind the caller's writes; answering from a stale view.");
        }
    }
}

/// A started server.
pub struct Server {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops accepting requests, stops the projectors and the job runner, and waits for all of them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.app.db.close().await;
    }

    /// Waits until `signal` completes, then stops.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("Shutting down.");
        self.stop().await;
    }
}

/// A secret: configured, or generated once by `generate` and kept (mode 0600) in `<data_dir>/<file>`.
fn secret(config: &Config, configured: Option<&SecretString>, file: &str, generate: fn() -> String) -> anyhow::Result<SecretString> {
    if let Some(secret) = configured {
        return Ok(secret.clone());
    }
    let path = config.data_dir.join(file);
    if let Ok(existing) = std::fs::read_to_string(&path)
        && !existing.trim().is_empty()
    {
        return Ok(SecretString::from(existing.trim().to_owned()));
    }
    let secret = generate();
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).ok();
    }
    Ok(SecretString::from(secret))
}

/// The master key from configuration (or generated once into the data dir).
///
/// # Errors
/// A malformed or unwritable master key.
pub fn master_key(config: &Config) -> anyhow::Result<MasterKey> {
    let master = secret(config, config.master_key.as_ref(), "master-key", || MasterKey::generate().1)?;
    let current = MasterKey::parse(master.expose_secret()).context("the master key")?;
    let mut previous = Vec::new();
    for (i, key) in config.master_key_previous.iter().enumerate() {
        previous.push(MasterKey::parse(key.expose_secret()).with_context(|| format!("previous master key {}", i + 1))?);
    }
    if let Ok(text) = std::fs::read_to_string(config.data_dir.join(PREVIOUS_MASTER_KEYS)) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            previous.push(MasterKey::parse(line).with_context(|| format!("a key in {PREVIOUS_MASTER_KEYS}"))?);
        }
    }
    Ok(current.with_previous(previous))
}

/// The master key ring as what seals the private halves of the access tokens' signing keys.
pub struct MasterSealer(pub MasterKey);

impl cloudsync_identity::keys::Sealer for MasterSealer {
    fn seal(&self, purpose: &str, plaintext: &[u8]) -> anyhow::Result<String> {
        Ok(self.0.seal(purpose, plaintext)?)
    }

    fn open(&self, purpose: &str, sealed: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.open(purpose, sealed)?)
    }

    fn is_current(&self, sealed: &str) -> bool {
        self.0.is_current(sealed)
    }
}

/// The data dir's file of earlier generated master keys (one per line, oldest first).
pub const PREVIOUS_MASTER_KEYS: &str = "master-key.previous";

/// Replaces the data dir's generated master key by a new one, keeping the old one in
/// [`PREVIOUS_MASTER_KEYS`] (written and synced first, so an interruption anywhere leaves every key
/// that sealed something on disk). Only for the generated key: a configured one is rotated by
/// configuration.
///
/// # Errors
/// A configured master key, or files that cannot be written.
pub fn replace_generated_master_key(config: &Config) -> anyhow::Result<MasterKey> {
    use std::io::Write as _;
    if config.master_key.is_some() {
        anyhow::bail!(
            "the master key comes from the configuration: set CLOUDSYNC_MASTER_KEY to a new key and \
             CLOUDSYNC_MASTER_KEY_PREVIOUS to the old one on every process, run `cloudsync keys rewrap`, \
             then drop the previous key"
        );
    }
    let path = config.data_dir.join("master-key");
    let old = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let private = || {
        let mut options = std::fs::OpenOptions::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        options
    };
    // The folder's entries are made durable too: after a crash, whatever the database holds was
    // sealed by a key that is on disk.
    let sync_folder = || std::fs::File::open(&config.data_dir).and_then(|folder| folder.sync_all());
    let previous_path = config.data_dir.join(PREVIOUS_MASTER_KEYS);
    let mut previous = private().create(true).append(true).open(&previous_path)?;
    writeln!(previous, "{}", old.trim())?;
    previous.sync_all()?;
    sync_folder()?;
    let (_, text) = MasterKey::generate();
    let temporary = config.data_dir.join(".master-key.tmp");
    let mut file = private().create(true).write(true).truncate(true).open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    sync_folder()?;
    master_key(config)
}

/// How long a retired signing key keeps verifying: every token it signed, including those signed by
/// processes that have not reloaded the keys yet, has expired by then.
pub fn key_grace(config: &Config) -> Duration {
    let ttl = u64::try_from(config.token_ttl_minutes).unwrap_or(0) * 60;
    Duration::from_secs(ttl) + RELOAD_EVERY + Duration::from_secs(60)
}

/// The WebAuthn verifier for the configured origin (see `Config::webauthn_origin`), or why
/// passkeys cannot work with it.
pub fn passkeys(config: &Config, addr: SocketAddr) -> Result<Arc<webauthn_rs::Webauthn>, String> {
    use webauthn_rs::prelude::Url;
    let origin = config
        .webauthn_origin
        .clone()
        .or_else(|| config.public_url.clone())
        .unwrap_or_else(|| format!("http://localhost:{}", addr.port()));
    let origin = Url::parse(&origin).map_err(|err| format!("passkeys are not available: webauthn_origin {origin:?}: {err}"))?;
    let rp_id = config
        .webauthn_rp_id
        .clone()
        .or_else(|| origin.host_str().map(str::to_owned))
        .unwrap_or_default();
    let built = webauthn_rs::WebauthnBuilder::new(&rp_id, &origin).and_then(|builder| builder.rp_name("CloudSync").build());
    match built {
        Ok(webauthn) => Ok(Arc::new(webauthn)),
        Err(err) => {
            let why = format!("passkeys are not available: origin {origin} with relying party {rp_id:?}: {err}");
            tracing::warn!("{why}");
            Err(why)
        }
    }
}

/// The OpenID providers for sign-in, calling back to `<public_url>/auth/oidc/callback`.
///
/// # Errors
/// A public URL that is not a URL.
pub fn oidc_login(config: &Config, addr: SocketAddr) -> anyhow::Result<Option<Arc<cloudsync_identity::oidc::OidcLogin>>> {
    if config.oidc.is_empty() {
        return Ok(None);
    }
    let public = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let callback = format!("{}/auth/oidc/callback", public.trim_end_matches('/'));
    let login = cloudsync_identity::oidc::OidcLogin::new(&config.oidc, &callback).map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(login)))
}

/// The SAML identity providers for sign-in, answering to `<public_url>/auth/saml/acs`.
///
/// # Errors
/// A public URL the service provider's endpoints cannot be made of.
pub fn saml_login(config: &Config, addr: SocketAddr) -> anyhow::Result<Option<Arc<cloudsync_identity::saml::SamlLogin>>> {
    if config.saml.is_empty() {
        return Ok(None);
    }
    let public = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    if !public.starts_with("https://") {
        tracing::warn!(
            public_url = %public,
            "SAML sign-ins from browsers need an https:// public_url (their binding cookie is Secure); API clients work without one."
        );
    }
    let login = cloudsync_identity::saml::SamlLogin::new(&config.saml, &public).map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(login)))
}

/// Password hashing with the configured argon2id parameters.
///
/// # Errors
/// Parameters argon2 refuses.
pub fn passwords(config: &Config) -> anyhow::Result<Passwords> {
    Passwords::new(config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism).map_err(anyhow::Error::msg)
}

/// Where sessions and rate-limit buckets live: in Redis when configured (one connection for
/// both), else in this process's memory.
///
/// # Errors
/// An unreachable Redis.
pub async fn shared_state(config: &Config) -> anyhow::Result<(Arc<dyn SessionStore>, Arc<dyn RateLimiter>)> {
    let Some(url) = &config.redis_url else {
        return Ok((Arc::new(MemorySessions::default()), Arc::new(MemoryLimiter::default())));
    };
    let connection = cloudsync_identity::sessions::redis_connection(url)
        .await
        .with_context(|| format!("connecting to Redis ({})", redact(url)))?;
    Ok((
        Arc::new(RedisSessions::new(connection.clone(), &config.redis_namespace)),
        Arc::new(RedisLimiter::new(connection, &config.redis_namespace)),
    ))
}

/// The command side on `db`, with the master key from configuration (or the data dir).
///
/// # Errors
/// A malformed or unwritable master key.
pub fn commands(config: &Config, db: &Database) -> anyhow::Result<Commands> {
    let master = master_key(config)?;
    let chunks = match &config.chunk_store {
        None => ProviderStore::in_folder(&config.data_dir.join("chunks")).context("the chunk store in the data dir")?,
        Some(settings) => ProviderStore::from_settings(settings).context("the chunk store's settings")?,
    };
    Ok(Commands::new(Arc::clone(&db.events), Vault::new(master, db.pool.clone())).with_chunks(Arc::new(chunks)))
}

/// The OAuth apps from configuration, calling back to `<public_url>/oauth/callback` (`addr` stands in
/// for an unset public URL). `None` when no app is configured.
///
/// # Errors
/// An app whose settings cannot work.
pub fn oauth(config: &Config, addr: SocketAddr) -> anyhow::Result<Option<Arc<OAuth>>> {
    if config.oauth.is_empty() {
        return Ok(None);
    }
    let mut apps = HashMap::new();
    for (name, app) in &config.oauth {
        let kind = ProviderKind::parse(name).map_err(|e| anyhow::anyhow!("oauth.{name}: {e}"))?;
        let secret = app.client_secret.as_ref().map(|s| s.expose_secret().to_owned());
        let mut resolved = OAuthApp::well_known(kind, app.client_id.clone(), secret)
            .with_context(|| format!("oauth.{name}: {name} providers do not connect through OAuth"))?;
        if let Some(url) = &app.auth_url {
            resolved.auth_url.clone_from(url);
        }
        if let Some(url) = &app.token_url {
            resolved.token_url.clone_from(url);
        }
        if let Some(scopes) = &app.scopes {
            resolved.scopes.clone_from(scopes);
        }
        if let Some(params) = &app.extra_params {
            resolved.extra_params = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        apps.insert(kind, resolved);
    }
    let public = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let callback = format!("{}/oauth/callback", public.trim_end_matches('/'));
    let margin = Duration::from_secs(config.oauth_renew_margin_seconds);
    Ok(Some(Arc::new(OAuth::new(apps, &callback, margin).context("the OAuth settings")?)))
}

/// Opens (creating when needed) the data dir and the database, migrated.
///
/// # Errors
/// An unusable data dir or database.
pub async fn open_database(config: &Config) -> anyhow::Result<Database> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    let url = config.database_url();
    let mut db = Database::connect(&url, true)
        .await
        .with_context(|| format!("opening the database ({})", redact(&url)))?;
    // Paths are sealed in new events when configured, and sealed ones opened always.
    let vault = Vault::new(master_key(config)?, db.pool.clone());
    db.events = Arc::new(SealingStore::new(Arc::clone(&db.events), vault, config.seal_paths));
    Ok(db)
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Starts the whole service on `config.bind` (port 0 picks a free port).
///
/// # Errors
/// An unusable database, data dir or address.
pub async fn start(config: &Config) -> anyhow::Result<Server> {
    let db = open_database(config).await?;
    let keys = KeyRing::open(db.pool.clone(), Arc::new(MasterSealer(master_key(config)?)), key_grace(config))
        .await
        .context("the token-signing keys")?;
    let (session_store, limiter) = shared_state(config).await?;
    let sessions = Sessions::new(session_store, chrono::Duration::days(config.refresh_ttl_days));
    let tokens = Tokens::new(Arc::new(keys), sessions, config.token_ttl_minutes);
    let projections = Projections::new(db.clone());
    let listener = tokio::net::TcpListener::bind(&config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    let mut commands = commands(config, &db)?;
    if let Some(oauth) = oauth(config, addr)? {
        commands = commands.with_oauth(oauth);
    }
    let app = Arc::new(App {
        reads: ReadModels::new(db.pool.clone()),
        commands: commands.clone(),
        projections: Arc::clone(&projections),
        tokens,
        written: Mutex::new(HashMap::new()),
        consistency_timeout: Duration::from_millis(config.consistency_timeout_ms),
        token_ttl_minutes: config.token_ttl_minutes,
        passwords: passwords(config)?,
        mailer: match &config.mail_outbox {
            Some(folder) => Arc::new(OutboxMailer::new(folder.clone())),
            None => Arc::new(LogMailer),
        },
        sms: match &config.sms_outbox {
            Some(folder) => Arc::new(OutboxSms::new(folder.clone())),
            None => Arc::new(LogSms),
        },
        password_reset_ttl: chrono::Duration::minutes(config.password_reset_ttl_minutes),
        passkeys: passkeys(config, addr),
        limiter,
        oidc: oidc_login(config, addr)?,
        saml: saml_login(config, addr)?,
        rules: Rules::new(config.rate_limit_api_per_minute, config.rate_limit_login_per_minute),
        db: db.clone(),
    });
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(Arc::clone(&projections).run(shutdown.child_token()));
    let scheduler = Scheduler::new(commands.clone());
    tasks.spawn(scheduler.run(shutdown.child_token()));
    let jobs = JobRunner::new(commands, db.pool.clone());
    let jobs_shutdown = shutdown.child_token();
    tasks.spawn(async move {
        if let Err(error) = jobs.run(jobs_shutdown).await {
            tracing::error!(error = %error, "The job runner stopped.");
        }
    });

    let keys = Arc::clone(app.tokens.keys());
    let keys_shutdown = shutdown.child_token();
    tasks.spawn(async move {
        // Picks up a key rotation done by another process (or the CLI).
        loop {
            tokio::select! {
                () = keys_shutdown.cancelled() => break,
                () = tokio::time::sleep(RELOAD_EVERY) => keys.reload().await,
            }
        }
    });

    let router = router(Arc::clone(&app), config)?;
    let http_shutdown = shutdown.child_token();
    tasks.spawn(async move {
        let served = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "The HTTP server stopped.");
        }
    });
    if config.public_url.as_deref().is_some_and(|url| url.starts_with("https://")) {
        if config.mail_outbox.is_none() {
            tracing::warn!("Mail (password reset tokens) goes to the log: set mail_outbox for a public server.");
        }
        if config.sms_outbox.is_none() {
            tracing::warn!("Text messages (second-factor codes) go to the log: set sms_outbox for a public server.");
        }
    }
    tracing::info!(addr = %addr, backend = db.backend(), "CloudSync is listening.");
    Ok(Server {
        addr,
        app,
        shutdown,
        tasks,
    })
}

#[derive(Clone)]
struct HttpState {
    app: Arc<App>,
    schema: CloudSyncSchema,
}

/// The HTTP routes, with the body limit and CORS from `config`.
///
/// # Errors
/// An origin that is not a valid header value.
pub fn router(app: Arc<App>, config: &Config) -> anyhow::Result<Router> {
    let schema = build(Arc::clone(&app));
    Ok(Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/oauth/callback", get(oauth_callback))
        .route("/auth/oidc/callback", get(oidc_callback))
        .route("/auth/saml/acs", post(saml_acs))
        .route("/auth/saml/metadata", get(saml_metadata))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(cors(config)?)
        .with_state(HttpState { app, schema }))
}

/// Browser pages of the configured origins may call the API, with credentials (the refresh
/// cookie); any other origin gets no CORS headers, so its browser withholds the answer.
fn cors(config: &Config) -> anyhow::Result<CorsLayer> {
    let origins = config
        .cors_origins
        .iter()
        .map(|o| o.parse::<HeaderValue>().with_context(|| format!("cors_origins: {o:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_credentials(true)
        .max_age(Duration::from_secs(600)))
}

/// What resolvers may need of the HTTP request besides its credentials.
fn request_info(headers: &HeaderMap, peer: Option<SocketAddr>) -> RequestInfo {
    RequestInfo {
        client: Client {
            user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned),
            ip: peer.map(|p| p.ip().to_string()),
        },
        refresh_cookie: crate::http::request::cookie(headers, crate::http::request::REFRESH_COOKIE),
    }
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })),
    )
        .into_response()
}

async fn graphql(State(state): State<HttpState>, extensions: axum::http::Extensions, headers: HeaderMap, body: Bytes) -> Response {
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                &format!("the body must be a GraphQL request in JSON: {err}"),
            );
        }
    };
    if let Err(err) = parse_query(&request.query) {
        return error_response(StatusCode::BAD_REQUEST, code::PARSE_FAILED, &err.to_string());
    }
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let peer = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let info = request_info(&headers, peer);
    let authentication = state.app.authenticate(authorization, info.client.ip.as_deref()).await;
    let key = match &authentication {
        Authentication::User(caller) => format!("user:{}", caller.user_id),
        _ => format!("ip:{}", info.client.ip.as_deref().unwrap_or("unknown")),
    };
    match state.app.limiter.take(&key, state.app.rules.api).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                code::RATE_LIMITED,
                &format!("too many requests; try again in {seconds} s"),
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
        // Limits are a protection, not a dependency: an unreachable store lets requests through.
        Err(error) => tracing::error!(error = %error, "Rate limits cannot be checked; the request goes through."),
    }
    let mut response = state.schema.execute(request.data(authentication).data(info)).await;
    for error in &mut response.errors {
        tag_validation_error(error);
    }
    GraphQLResponse::from(response).into_response()
}

/// Errors that no resolver raised (validation, limits) get the validation code.
fn tag_validation_error(error: &mut ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code::VALIDATION_FAILED);
    }
}

async fn graphql_ws(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let app = state.app;
    let ip = extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let schema = state.schema;
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let header = payload
                        .get("Authorization")
                        .or_else(|| payload.get("authorization"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                        .or_else(|| payload.get("token").and_then(|v| v.as_str()).map(|t| format!("Bearer {t}")));
                    let mut data = Data::default();
                    match app.authenticate(header.as_deref(), ip.as_deref()).await {
                        Authentication::Invalid(why) | Authentication::Unavailable(why) => return Err(async_graphql::Error::new(why)),
                        authentication => data.insert(authentication),
                    }
                    // Every operation on this connection is checked again (see `schema::Recheck`).
                    data.insert(crate::schema::SocketCredential { header, ip });
                    Ok(data)
                })
                .serve()
        })
}

/// What an OAuth provider sends the browser back with.
#[derive(serde::Deserialize)]
struct CallbackParams {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The OAuth redirect target: exchanges the code and connects the provider, then tells the person in
/// the browser what happened. Authenticated by `state` alone (it was issued to one user, works once,
/// and expires), because the browser arrives without CloudSync's access token.
async fn oauth_callback(State(state): State<HttpState>, axum::extract::Query(params): axum::extract::Query<CallbackParams>) -> Response {
    let page = |status: StatusCode, title: &str, detail: &str| {
        let body = format!(
            "<!doctype html><meta charset=utf-8><title>{0}</title><h1>{0}</h1><p>{1}</p>",
            html_escape(title),
            html_escape(detail)
        );
        (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
    };
    let Some(oauth_state) = params.state.as_deref().filter(|s| !s.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "The provider's answer lacks the state parameter.",
        );
    };
    if let Some(error) = params.error.as_deref() {
        let detail = params.error_description.as_deref().unwrap_or(error);
        return match state.app.commands.abandon_authorization(oauth_state) {
            Ok(_) => page(
                StatusCode::BAD_REQUEST,
                "Not connected",
                &format!("The provider did not authorize CloudSync: {detail}"),
            ),
            Err(error) => page(StatusCode::BAD_REQUEST, "Not connected", &error.to_string()),
        };
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "The provider's answer lacks the code parameter.",
        );
    };
    match state.app.commands.finish_authorization(oauth_state, code).await {
        Ok((user, connected)) => {
            state.app.wrote_for(user.as_uuid(), connected.position);
            page(
                StatusCode::OK,
                "Connected",
                &format!(
                    "{} ({}) is connected as provider {}; indexing has started. You can close this window.",
                    connected.display_name,
                    connected.kind.as_str(),
                    connected.provider_id
                ),
            )
        }
        Err(error) => {
            tracing::info!(error = %error, "An OAuth authorization could not be completed.");
            page(StatusCode::BAD_REQUEST, "Not connected", &error.to_string())
        }
    }
}

/// Where an OpenID provider sends the browser back after a sign-in (see `schema::oidc`).
async fn oidc_callback(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<crate::schema::OidcCallbackParams>,
) -> Response {
    let peer = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let binding = crate::http::request::cookie(&headers, crate::schema::OIDC_BINDING_COOKIE);
    crate::schema::oidc_callback(&state.app, params, request_info(&headers, peer), binding).await
}

/// Where a SAML identity provider posts its answer to a sign-in (see `schema::saml`).
async fn saml_acs(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    axum::extract::Form(params): axum::extract::Form<crate::schema::SamlAcsParams>,
) -> Response {
    let peer = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let binding = crate::http::request::cookie(&headers, crate::schema::SAML_BINDING_COOKIE);
    crate::schema::saml_acs(&state.app, params, request_info(&headers, peer), binding).await
}

/// CloudSync's SAML service-provider metadata, for the identity provider's administrator.
async fn saml_metadata(State(state): State<HttpState>) -> Response {
    match &state.app.saml {
        Some(login) => (
            [(header::CONTENT_TYPE, "application/samlmetadata+xml")],
            login.metadata_xml().to_owned(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no SAML identity provider is configured on this server").into_response(),
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.app.db.events.head().await {
        Ok(head) => {
            let projected = state.app.projections.position();
            axum::Json(json!({ "status": "ready", "backend": state.app.db.backend(), "head": head, "projected": projected }))
                .into_response()
        }
        Err(error) => {
            tracing::warn!(error = %error, "Not ready: the database is unreachable.");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "unavailable" }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn database_passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/cloudsync"),
            "postgres://app:***@db:5432/cloudsync"
        );
        assert_eq!(redact("postgres://postgres@127.0.0.1/x"), "postgres://postgres@127.0.0.1/x");
        assert_eq!(redact("sqlite://data/cloudsync.db"), "sqlite://data/cloudsync.db");
    }
}
