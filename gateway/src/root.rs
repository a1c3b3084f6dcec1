//! The composition root: every component built from [`Config`] (the database, the master key and
//! what it seals, the command side, the read models, identity's stores and senders, single sign-on),
//! and [`start`], which starts the projectors, the job runner, the scheduler and the HTTP server
//! and hands them to a [`Server`] that stops them all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use cloudsync_chunks::ProviderStore;
use cloudsync_commands::{Commands, JobRelay, JobRunner, MasterKey, OAuth, OAuthApp, PendingStore, Scheduler, SealingStore, Vault};
use cloudsync_domain::ProviderKind;
use cloudsync_eventstore::Database;
use cloudsync_eventstore::leader::Leadership;
use cloudsync_projections::{Projections, ReadModels};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Readiness};
use crate::config::Config;
use crate::http::router;
use cloudsync_identity::auth::Tokens;
use cloudsync_identity::clock::Clock;
use cloudsync_identity::keys::{KeyRing, RELOAD_EVERY};
use cloudsync_identity::limits::{MemoryLimiter, RateLimiter, RedisLimiter, Rules};
use cloudsync_identity::mail::{LogMailer, LogSms, OutboxMailer, OutboxSms};
use cloudsync_identity::passwords::Passwords;
use cloudsync_identity::sessions::{MemorySessions, RedisSessions, SessionStore, Sessions};

/// A started server.
pub struct Server {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// Signs the chain's tip (none on a read-only server).
    signer: Option<Arc<crate::audit::ChainSigner>>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops accepting requests, stops the projectors and the job runner, and waits for all of them;
    /// then signs the event chain's tip, which now covers every event its tasks appended.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(signer) = &self.signer {
            signer.sign_tip(&self.app.db).await;
        }
        self.app.db.close().await;
    }

    /// Waits until `signal` completes, then stops.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("Shutting down.");
        self.stop().await;
    }
}

/// Serves `router` on `listener` until `shutdown`, logging `stopped` if it fails.
async fn serve_http<L>(listener: L, router: axum::Router, shutdown: CancellationToken, stopped: &'static str)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    for<'a> SocketAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let served = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(error = %error, "{stopped}");
    }
}

/// A secret: configured, or generated once by `generate` and kept (mode 0600) in `<data_dir>/<file>`.
fn secret(config: &Config, configured: Option<&SecretString>, file: &str, generate: fn() -> String) -> anyhow::Result<SecretString> {
    if let Some(secret) = configured {
        return Ok(secret.clone());
    }
    let path = config.data_dir.join(file);
    let existing = || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|text| !text.trim().is_empty())
            .map(|text| SecretString::from(text.trim().to_owned()))
    };
    if let Some(secret) = existing() {
        return Ok(secret);
    }
    // An empty file (an interrupted write of an older version) holds no key.
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("removing the empty {}", path.display()))?;
    }
    // Written whole under a name of this process, then linked to its name only if that is still
    // free: of two processes starting at once, both end up with the one that was linked first.
    let secret = generate();
    let temporary = config.data_dir.join(format!(".{file}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = options
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .and_then(|mut out| {
            use std::io::Write as _;
            out.write_all(secret.as_bytes())?;
            out.sync_all()
        })
        .and_then(|()| match std::fs::hard_link(&temporary, &path) {
            Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => Err(err),
            _ => Ok(()),
        });
    let _ = std::fs::remove_file(&temporary);
    written.with_context(|| format!("writing {}", path.display()))?;
    existing().with_context(|| format!("reading {}", path.display()))
}

/// A key ring kept apart from the others: its current key (configured, or generated once into the
/// data dir) and the keys it replaced.
#[derive(Clone, Copy)]
pub struct KeyFiles {
    /// What the ring is called in messages.
    what: &'static str,
    /// The data dir's file of the generated key; `<file>.previous` holds the keys it replaced.
    file: &'static str,
    /// The variable that configures it instead.
    variable: &'static str,
    configured: fn(&Config) -> (Option<&SecretString>, &[SecretString]),
    /// Whether it must be configured (not generated) where the master key is: processes that
    /// share a database share the master key, and must share this one too.
    with_master: bool,
}

/// The master key: wraps every user's data key, the server's secrets and the signing keys.
pub const MASTER_KEY: KeyFiles = KeyFiles {
    what: "master key",
    file: "master-key",
    variable: "CLOUDSYNC_MASTER_KEY",
    configured: |config| (config.master_key.as_ref(), &config.master_key_previous),
    with_master: false,
};

/// The chunk-store key: wraps each account's chunk-store key, apart from the master key (the
/// chunk store may be someone else's bucket; its keys rotate on their own).
pub const CHUNK_STORE_KEY: KeyFiles = KeyFiles {
    what: "chunk-store key",
    file: "chunk-store-key",
    variable: "CLOUDSYNC_CHUNK_STORE_KEY",
    configured: |config| (config.chunk_store_key.as_ref(), &config.chunk_store_key_previous),
    with_master: true,
};

impl KeyFiles {
    /// The data dir's file of earlier generated keys (one per line, oldest first).
    pub fn previous_file(&self) -> String {
        format!("{}.previous", self.file)
    }

    /// The ring from configuration (or generated once into the data dir), with the earlier keys
    /// configured or kept in the data dir.
    ///
    /// # Errors
    /// A malformed or unwritable key.
    pub fn ring(&self, config: &Config) -> anyhow::Result<MasterKey> {
        let (configured, configured_previous) = (self.configured)(config);
        if self.with_master && configured.is_none() && config.master_key.is_some() && !config.data_dir.join(self.file).exists() {
            anyhow::bail!(
                "the master key is configured, so the {what} must be too: set {var} (32 random bytes, base64) \
                 on every process, as CLOUDSYNC_MASTER_KEY is, and keep it as safe (it opens every kept version)",
                what = self.what,
                var = self.variable
            );
        }
        let key = secret(config, configured, self.file, || MasterKey::generate().1)?;
        let current = MasterKey::parse(key.expose_secret()).with_context(|| format!("the {}", self.what))?;
        let mut previous = Vec::new();
        for (i, key) in configured_previous.iter().enumerate() {
            previous.push(MasterKey::parse(key.expose_secret()).with_context(|| format!("previous {} {}", self.what, i + 1))?);
        }
        let previous_file = self.previous_file();
        if let Ok(text) = std::fs::read_to_string(config.data_dir.join(&previous_file)) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                previous.push(MasterKey::parse(line).with_context(|| format!("a key in {previous_file}"))?);
            }
        }
        Ok(current.with_previous(previous))
    }

    /// Replaces the data dir's generated key by a new one, keeping the old one in the previous
    /// keys' file (written and synced first, so an interruption anywhere leaves every key that
    /// sealed something on disk). Only for a generated key: a configured one is rotated by
    /// configuration.
    ///
    /// # Errors
    /// A configured key, or files that cannot be written.
    pub fn replace_generated(&self, config: &Config) -> anyhow::Result<MasterKey> {
        use std::io::Write as _;
        if (self.configured)(config).0.is_some() {
            anyhow::bail!(
                "the {what} comes from the configuration: set {var} to a new key and {var}_PREVIOUS to the old \
                 one on every process, run `cloudsync keys rewrap`, then drop the previous key",
                what = self.what,
                var = self.variable
            );
        }
        let path = config.data_dir.join(self.file);
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
        // The folder's entries are made durable too: after a crash, whatever the database holds
        // was sealed by a key that is on disk.
        let sync_folder = || std::fs::File::open(&config.data_dir).and_then(|folder| folder.sync_all());
        let previous_path = config.data_dir.join(self.previous_file());
        let mut previous = private().create(true).append(true).open(&previous_path)?;
        writeln!(previous, "{}", old.trim())?;
        previous.sync_all()?;
        sync_folder()?;
        let (_, text) = MasterKey::generate();
        let temporary = config.data_dir.join(format!(".{}.tmp", self.file));
        let mut file = private().create(true).write(true).truncate(true).open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        sync_folder()?;
        self.ring(config)
    }
}

/// The master key from configuration (or generated once into the data dir).
///
/// # Errors
/// A malformed or unwritable master key.
pub fn master_key(config: &Config) -> anyhow::Result<MasterKey> {
    MASTER_KEY.ring(config)
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
    let public = config.public_url.clone().unwrap_or_else(|| format!("{}://{addr}", config.scheme()));
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
    let public = config.public_url.clone().unwrap_or_else(|| format!("{}://{addr}", config.scheme()));
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

/// What every API process and worker shares where Redis is configured, else what this process
/// keeps in its own memory.
pub struct SharedState {
    pub sessions: Arc<dyn SessionStore>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Search answers; with Redis, also the chunk store's metadata (`cache.shared()`).
    pub cache: Arc<dyn cloudsync_cache::Cache>,
}

/// Kept search answers live at most this long (a new event makes them unreachable before that).
const SEARCH_CACHE_TTL: Duration = Duration::from_secs(300);
/// The chunk store's metadata kept in Redis lives at most this long (its own writes and deletes
/// drop it before that).
const METADATA_CACHE_TTL: Duration = Duration::from_secs(60);

/// Where sessions, rate-limit buckets and caches live: in Redis when configured (one connection
/// for all, on the server's clock), else in this process's memory (on `clock`).
///
/// # Errors
/// An unreachable Redis.
pub async fn shared_state(config: &Config, clock: &Arc<dyn Clock>) -> anyhow::Result<SharedState> {
    let Some(url) = &config.redis_url else {
        return Ok(SharedState {
            sessions: Arc::new(MemorySessions::with_clock(Arc::clone(clock))),
            limiter: Arc::new(MemoryLimiter::with_clock(Arc::clone(clock))),
            cache: Arc::new(cloudsync_cache::MemoryCache::new(1000)),
        });
    };
    let connection = cloudsync_identity::sessions::redis_connection(url)
        .await
        .with_context(|| format!("connecting to Redis ({})", redact(url)))?;
    Ok(SharedState {
        sessions: Arc::new(RedisSessions::new(connection.clone(), &config.redis_namespace)),
        limiter: Arc::new(RedisLimiter::new(connection.clone(), &config.redis_namespace)),
        cache: Arc::new(cloudsync_cache::RedisCache::new(connection, &config.redis_namespace)),
    })
}

/// The command side on `db`, with the master key and the chunk-store key from configuration (or
/// the data dir).
///
/// # Errors
/// A malformed or unwritable key.
pub fn commands(config: &Config, db: &Database) -> anyhow::Result<Commands> {
    commands_sharing(config, db, None)
}

/// [`commands`], the metadata of the chunk store's files kept in `shared` when every process shares
/// it.
///
/// # Errors
/// As [`commands`].
pub fn commands_sharing(config: &Config, db: &Database, shared: Option<Arc<dyn cloudsync_cache::Cache>>) -> anyhow::Result<Commands> {
    let master = master_key(config)?;
    let metadata = shared.map(|cache| (cache, METADATA_CACHE_TTL));
    let chunks = match &config.chunk_store {
        None => ProviderStore::in_folder_cached(&config.data_dir.join("chunks"), metadata).context("the chunk store in the data dir")?,
        Some(settings) => ProviderStore::from_settings_cached(settings, metadata).context("the chunk store's settings")?,
    };
    Ok(Commands::new(Arc::clone(&db.events), Vault::new(master, db.pool.clone()))
        .with_chunks(Arc::new(chunks), CHUNK_STORE_KEY.ring(config)?)
        .with_deleted_keep_days(config.deleted_keep_days)
        .with_exporter(Arc::new(cloudsync_export::Folder::new(db.clone(), config.exports()))))
}

/// The OAuth apps from configuration, calling back to `<public_url>/oauth/callback` (`addr` stands in
/// for an unset public URL). `None` when no app is configured.
///
/// # Errors
/// An app whose settings cannot work.
pub fn oauth(config: &Config, addr: SocketAddr, pending: Arc<dyn PendingStore>) -> anyhow::Result<Option<Arc<OAuth>>> {
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
    let public = config.public_url.clone().unwrap_or_else(|| format!("{}://{addr}", config.scheme()));
    let callback = format!("{}/oauth/callback", public.trim_end_matches('/'));
    let margin = Duration::from_secs(config.oauth_renew_margin_seconds);
    Ok(Some(Arc::new(
        OAuth::new(apps, &callback, margin)
            .context("the OAuth settings")?
            .with_pending(pending),
    )))
}

/// Pending OAuth authorizations kept as the session store's ceremony states (in Redis where
/// sessions are), so that a provider's callback may reach any API process.
struct PendingStates(Arc<dyn SessionStore>);

#[async_trait::async_trait]
impl PendingStore for PendingStates {
    async fn put(&self, state: &str, value: String, ttl: Duration) -> Result<(), cloudsync_commands::CommandError> {
        self.0
            .put_state(&format!("oauth:{}", cloudsync_identity::sessions::hash(state)), &value, ttl)
            .await
            .map_err(|e| cloudsync_commands::CommandError::Storage(format!("pending authorizations: {e}")))
    }

    async fn take(&self, state: &str) -> Result<Option<String>, cloudsync_commands::CommandError> {
        self.0
            .take_state(&format!("oauth:{}", cloudsync_identity::sessions::hash(state)))
            .await
            .map_err(|e| cloudsync_commands::CommandError::Storage(format!("pending authorizations: {e}")))
    }
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

/// The search engine configured: Elasticsearch when `elasticsearch_url` is set, else tantivy in
/// `<data_dir>/search`.
///
/// # Errors
/// An HTTP client that cannot be built.
pub fn search_engine(config: &Config) -> anyhow::Result<cloudsync_search::Engine> {
    Ok(match &config.elasticsearch_url {
        Some(url) => cloudsync_search::Engine::elastic(url, &config.elasticsearch_index)?,
        None => cloudsync_search::Engine::tantivy(config.data_dir.join("search")),
    })
}

/// The search index's view of extracted texts: the chunk store, opened with the owner's key.
pub struct Texts(pub Commands);

#[async_trait::async_trait]
impl cloudsync_search::TextSource for Texts {
    async fn text(&self, owner: cloudsync_domain::UserId, reference: &str) -> Result<Option<String>, String> {
        self.0.extracted_text(owner, reference).await.map_err(|err| err.to_string())
    }
}

/// The vector index's view of stored vectors: the chunk store, opened with the owner's key.
pub struct StoredVectors(pub Commands);

#[async_trait::async_trait]
impl cloudsync_search::vectors::VectorSource for StoredVectors {
    async fn vectors(&self, owner: cloudsync_domain::UserId, reference: &str) -> Result<Option<Vec<Vec<f32>>>, String> {
        self.0.stored_vectors(owner, reference).await.map_err(|err| err.to_string())
    }
}

/// The models in `models_dir` (default `<data_dir>/models`); a missing one is left out.
///
/// # Errors
/// A model that is there but does not load.
pub fn models(config: &Config) -> anyhow::Result<cloudsync_ml::Models> {
    let dir = config.models_dir.clone().unwrap_or_else(|| config.data_dir.join("models"));
    cloudsync_ml::Models::load(&dir, config.model_concurrency).with_context(|| format!("loading the models in {}", dir.display()))
}

/// The vector index: pgvector or Elasticsearch as `vector_url` says (unset: the Elasticsearch cluster
/// of `elasticsearch_url` if any), else embedded in `<data_dir>/vectors`.
///
/// # Errors
/// The index cannot be opened.
pub async fn vector_index(config: &Config) -> anyhow::Result<Arc<dyn cloudsync_search::vectors::VectorIndex>> {
    let dims = cloudsync_ml::TextEmbedder::DIMS;
    let url = config.vector_url.as_ref().or(config.elasticsearch_url.as_ref());
    Ok(match url {
        Some(url) if url.starts_with("postgres") => Arc::new(
            cloudsync_search::vectors::PgVectors::open(url, dims)
                .await
                .with_context(|| format!("the vector index ({})", redact(url)))?,
        ),
        Some(url) => Arc::new(
            cloudsync_search::vectors::ElasticVectors::open(url, &format!("{}-vectors", config.elasticsearch_index), dims)
                .await
                .with_context(|| format!("the vector index ({})", redact(url)))?,
        ),
        None => Arc::new(
            cloudsync_search::vectors::SqliteVectors::open(&config.data_dir.join("vectors"))
                .await
                .context("the vector index")?,
        ),
    })
}

/// The content pipeline's extractor: this binary's `extract` command (or the configured program),
/// within the configured limits.
///
/// # Errors
/// This binary's own path cannot be told.
pub fn extractor(config: &Config) -> anyhow::Result<cloudsync_content::Extractor> {
    let program = match &config.extractor_program {
        Some(program) => program.clone(),
        None => std::env::current_exe().context("the path of this binary, to run its extract command")?,
    };
    Ok(cloudsync_content::Extractor {
        program,
        args: Vec::new(),
        limits: cloudsync_content::Limits {
            max_input_bytes: config.extract_max_input_bytes,
            max_text_bytes: config.extract_max_text_bytes,
            timeout: Duration::from_secs(config.extract_timeout_seconds),
            memory_bytes: config.extract_memory_bytes,
        },
        ocr: ocr(config),
    })
}

/// OCR as configured, when tesseract can run it here (else it is off, and said so).
fn ocr(config: &Config) -> Option<cloudsync_content::Ocr> {
    if config.ocr_languages.is_empty() {
        return None;
    }
    match cloudsync_content::Ocr::probe(&config.tesseract_program, &config.ocr_languages) {
        Ok(mut ocr) => {
            ocr.max_pages = config.ocr_max_pages;
            if ocr.pdftoppm.is_none() {
                tracing::warn!("OCR reads pictures but not scanned PDFs: pdftoppm (Debian's poppler-utils) is missing.");
            }
            Some(ocr)
        }
        Err(why) => {
            tracing::warn!(reason = %why, "OCR is off: pictures and scanned PDFs are found by name only.");
            None
        }
    }
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

/// The advisory locks whose holders project into a shared search index and a shared vector index
/// (beside the read models' `cloudsync_projections::LEAD_LOCK`).
const SEARCH_LOCK: i64 = cloudsync_projections::LEAD_LOCK + 1;
const VECTORS_LOCK: i64 = cloudsync_projections::LEAD_LOCK + 2;

/// What one process of CloudSync does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Everything: the API with its read models, and the workers.
    All,
    /// The API and the read models it answers from: jobs it records run in worker processes.
    Api,
    /// The job relay, the job runner, the scheduler and the content pipeline (those that one process
    /// at a time may do, in one worker of those running); its HTTP port serves only `/healthz` and
    /// `/readyz`.
    Worker,
}

impl Role {
    fn serves_api(self) -> bool {
        matches!(self, Self::All | Self::Api)
    }

    fn works(self) -> bool {
        matches!(self, Self::All | Self::Worker)
    }
}

/// The file in a replay's folder that says where its log ends (position and link): a read-only
/// server started on that folder checks that its database is the replay's (see `crate::history`).
pub const REPLAY_MARKER: &str = "replay.json";

/// The configuration a read-only server runs on: everything in its data dir and database (no
/// shared search or vector engine, cache or broker that the environment may still name).
pub fn read_only_config(config: &Config) -> Config {
    Config {
        elasticsearch_url: None,
        vector_url: None,
        redis_url: None,
        amqp_url: None,
        ..config.clone()
    }
}

/// On a replay's folder, checks that the database configured is the replay's (its log ends where
/// the replay's marker says), so that a leftover `CLOUDSYNC_DATABASE_URL` does not serve today's
/// log as the past.
///
/// # Errors
/// Another database, or an unreadable marker or chain.
pub async fn check_replay(config: &Config, db: &Database) -> anyhow::Result<()> {
    let Ok(marker) = std::fs::read_to_string(config.data_dir.join(REPLAY_MARKER)) else {
        return Ok(());
    };
    let marker: serde_json::Value = serde_json::from_str(&marker).context("the replay's marker")?;
    let (tip, link) = cloudsync_eventstore::chain::tip(&db.pool).await?;
    if marker["position"].as_i64() != Some(tip) || marker["link"].as_str() != Some(data_encoding::HEXLOWER.encode(&link).as_str()) {
        anyhow::bail!(
            "{} holds a replay up to position {}, but the database configured ({}) ends at {tip}: serve the replay \
             from its own database (unset CLOUDSYNC_DATABASE_URL, or give the replay's)",
            config.data_dir.display(),
            marker["position"],
            redact(&config.database_url())
        );
    }
    Ok(())
}

/// The job queue of `config`: RabbitMQ at `amqp_url`, else this process's memory.
async fn job_queue(config: &Config) -> anyhow::Result<Arc<dyn cloudsync_queue::JobQueue>> {
    Ok(match &config.amqp_url {
        Some(url) => Arc::new(
            cloudsync_queue::AmqpQueue::connect(url)
                .await
                .with_context(|| format!("the job queue's broker at {}", redact(url)))?,
        ),
        None => Arc::new(cloudsync_queue::LocalQueue::new()),
    })
}

/// Starts the whole service on `config.bind` (port 0 picks a free port).
///
/// # Errors
/// An unusable database, data dir or address.
pub async fn start(config: &Config) -> anyhow::Result<Server> {
    start_as(config, Role::All).await
}

/// Starts what `role` does; see [`Role`].
///
/// # Errors
/// An unusable database, data dir, address or job queue.
pub async fn start_as(config: &Config, role: Role) -> anyhow::Result<Server> {
    // Installed before anything records.
    crate::metrics::recorder();
    // A read-only server (a replay) answers from what is there, all of it in its data dir and
    // database: the API without jobs or projectors, and a log that refuses appends.
    let read_only = config.read_only.then(|| read_only_config(config));
    let config = read_only.as_ref().unwrap_or(config);
    let role = if config.read_only { Role::Api } else { role };
    let mut db = open_database(config).await?;
    if config.read_only {
        check_replay(config, &db).await?;
        db.events = Arc::new(cloudsync_eventstore::ReadOnlyStore(Arc::clone(&db.events)));
    }
    // One clock for the rules that read the time (sessions, limits, second-factor windows, access
    // tokens, keys).
    let clock = cloudsync_identity::clock::system();
    let keys = KeyRing::open(db.pool.clone(), Arc::new(MasterSealer(master_key(config)?)), key_grace(config))
        .await
        .context("the token-signing keys")?
        .with_clock(Arc::clone(&clock));
    let SharedState {
        sessions: session_store,
        limiter,
        cache,
    } = shared_state(config, &clock).await?;
    // Pending OAuth authorizations are ceremony states like the others: shared where sessions are.
    let pending: Arc<dyn PendingStore> = Arc::new(PendingStates(Arc::clone(&session_store)));
    let sessions = Sessions::new(session_store, chrono::Duration::days(config.refresh_ttl_days)).with_clock(Arc::clone(&clock));
    let tokens = Tokens::new(Arc::new(keys), sessions, config.token_ttl_minutes);
    let projections = Projections::new(db.clone());
    let search = cloudsync_search::Search::open(search_engine(config)?)
        .await
        .context("the search index")?;
    // The chunk store's metadata is shared only where every process sees the cache; otherwise its
    // provider keeps its own.
    let shared_metadata = cache.shared().then(|| Arc::clone(&cache));
    let mut commands = commands_sharing(config, &db, shared_metadata)?.with_clock(Arc::clone(&clock));
    if let Some(keys) = commands.chunk_keys() {
        keys.check().await.context(
            "the chunk-store key does not open the accounts' keys of the chunk store: start with the key that \
             wrapped them (CLOUDSYNC_CHUNK_STORE_KEY or <data_dir>/chunk-store-key, earlier ones as _PREVIOUS)",
        )?;
    }
    let texts: Arc<dyn cloudsync_search::TextSource> = Arc::new(Texts(commands.clone()));
    let search = cloudsync_search::LiveSearch::new(search, Arc::clone(&db.events), Some(texts));
    let models = models(config)?;
    let vectors = cloudsync_search::vectors::LiveVectors::new(
        vector_index(config).await?,
        Arc::clone(&db.events),
        Arc::new(StoredVectors(commands.clone())),
    );
    // Read before binding: a bad certificate stops the start, not the first connection.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls::server_config(cert, key, &config.tls_min_version)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    if let Some(oauth) = oauth(config, addr, pending)? {
        commands = commands.with_oauth(oauth);
    }
    let queue = match role.works() {
        true => Some(job_queue(config).await?),
        false => None,
    };
    let app = Arc::new(App {
        reads: ReadModels::new(db.pool.clone()),
        commands: commands.clone(),
        projections: Arc::clone(&projections),
        search: Arc::clone(&search),
        search_cache: cloudsync_search::QueryCache::new(Arc::clone(&cache), SEARCH_CACHE_TTL),
        vectors: Arc::clone(&vectors),
        models: models.clone(),
        tokens,
        clock,
        written: Mutex::new(HashMap::new()),
        consistency_timeout: Duration::from_millis(config.consistency_timeout_ms),
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
        readiness: Readiness {
            redis: cache.shared().then(|| Arc::clone(&cache)),
            broker: queue.as_ref().filter(|queue| queue.durable()).map(Arc::clone),
            serves_api: role.serves_api(),
            max_lag_events: config.ready_max_lag_events,
        },
        rules: Rules::new(config.rate_limit_api_per_minute, config.rate_limit_login_per_minute),
        db: db.clone(),
        exports: config.exports(),
        read_only: config.read_only,
    });
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(crate::metrics::upkeep(shutdown.child_token()));
    let signer = match config.read_only {
        false => Some(Arc::new(crate::audit::ChainSigner::new(&master_key(config)?))),
        true => None,
    };
    if let Some(signer) = &signer {
        tasks.spawn(Arc::clone(signer).run(db.clone(), shutdown.child_token()));
    }
    if role.serves_api() {
        tasks.spawn(crate::metrics::sample_lag(Arc::clone(&app), shutdown.child_token()));
    }
    if role.serves_api() && !config.read_only {
        tasks.spawn(Arc::clone(&projections).run(shutdown.child_token()));
        // An index that every API process shares is projected into by one of them at a time.
        let shared = |shared: bool, key: i64| match &db.pool {
            cloudsync_eventstore::DbPool::Postgres(pool) if shared => Some(Leadership::new(pool.clone(), key)),
            _ => None,
        };
        let search_shared = shared(config.elasticsearch_url.is_some(), SEARCH_LOCK);
        let vectors_shared = shared(config.vector_url.is_some() || config.elasticsearch_url.is_some(), VECTORS_LOCK);
        tasks.spawn(search.run(shutdown.child_token(), search_shared));
        tasks.spawn(vectors.run(shutdown.child_token(), vectors_shared));
    }
    if let Some(queue) = queue {
        let retries = cloudsync_commands::JobRetries {
            attempts: config.job_attempts,
            first_wait: Duration::from_secs(config.job_retry_seconds),
            max_wait: Duration::from_secs(config.job_retry_max_seconds.max(config.job_retry_seconds)),
            ..cloudsync_commands::JobRetries::default()
        };
        tasks.spawn(JobRelay::new(commands.clone(), Arc::clone(&queue), retries).run(shutdown.child_token()));
        tasks.spawn(Scheduler::new(commands.clone()).lead(shutdown.child_token()));
        let pipeline =
            cloudsync_commands::ContentPipeline::new(commands.clone(), db.pool.clone(), extractor(config)?, config.extract_concurrency)
                .with_models(models)
                .with_retries(cloudsync_commands::ContentRetries {
                    first: std::time::Duration::from_secs(config.extract_retry_seconds),
                    limit: config.extract_retry_limit,
                });
        tasks.spawn(pipeline.lead(shutdown.child_token()));
        let jobs = JobRunner::new(commands, queue, config.job_concurrency, retries);
        let jobs_shutdown = shutdown.child_token();
        tasks.spawn(async move {
            if let Err(error) = jobs.run(jobs_shutdown).await {
                tracing::error!(error = %error, "The job runner stopped.");
            }
        });
    }

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

    let router = if role.serves_api() {
        router(Arc::clone(&app), config)?
    } else {
        crate::http::health_router(Arc::clone(&app))
    };
    let http_shutdown = shutdown.child_token();
    match tls {
        Some(tls) => {
            use axum::serve::ListenerExt as _;
            let router = router.layer(axum::middleware::from_fn(crate::http::tls::strict_transport));
            let listener = crate::http::tls::TlsListener::new(listener, tls)?.tap_io(|_| {});
            tasks.spawn(serve_http(listener, router, http_shutdown, "The HTTPS server stopped."));
        }
        None => {
            tasks.spawn(serve_http(listener, router, http_shutdown, "The HTTP server stopped."));
        }
    }
    if config.public_url.as_deref().is_some_and(|url| url.starts_with("https://")) {
        if config.mail_outbox.is_none() {
            tracing::warn!("Mail (password reset tokens) goes to the log: set mail_outbox for a public server.");
        }
        if config.sms_outbox.is_none() {
            tracing::warn!("Text messages (second-factor codes) go to the log: set sms_outbox for a public server.");
        }
    }
    tracing::info!(addr = %addr, backend = db.backend(), role = ?role, "CloudSync is listening.");
    Ok(Server {
        addr,
        app,
        shutdown,
        tasks,
        signer,
    })
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
