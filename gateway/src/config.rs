//! Configuration: defaults, then a TOML file, then `CLOUDSYNC_*` environment variables, then flags.
//! With nothing set, CloudSync runs on the embedded defaults in `./data`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded backends keep their files (SQLite database, signing key).
    pub data_dir: PathBuf,
    /// `host:port` to listen on.
    pub bind: String,
    /// `sqlite://…` or `postgres://…`; default: `sqlite://<data_dir>/cloudsync.db`.
    pub database_url: Option<String>,
    /// Wraps every user's data key (32 bytes, base64); default: generated once and kept in
    /// `<data_dir>/master-key`.
    pub master_key: Option<SecretString>,
    /// Earlier master keys, still opening what they sealed until `cloudsync keys rewrap` has
    /// re-wrapped everything with the current one (also read from `<data_dir>/master-key.previous`).
    pub master_key_previous: Vec<SecretString>,
    /// The chunk-store key (32 bytes, base64 or hex): wraps each account's key of the chunk store,
    /// apart from the master key. Unset: generated once into `<data_dir>/chunk-store-key`.
    pub chunk_store_key: Option<SecretString>,
    /// Earlier chunk-store keys, until `cloudsync keys rewrap` has re-wrapped every account's key
    /// with the current one (also read from `<data_dir>/chunk-store-key.previous`).
    pub chunk_store_key_previous: Vec<SecretString>,
    /// Lifetime of an access token.
    pub token_ttl_minutes: i64,
    /// How long a refresh token works unless it is exchanged (each exchange starts it again).
    pub refresh_ttl_days: i64,
    /// Where sessions (and, shared by every API process, rate limits) live: unset for this
    /// process's memory, or `redis://host:port/db`.
    pub redis_url: Option<String>,
    /// Prefix of every key CloudSync writes to Redis.
    pub redis_namespace: String,
    /// Origins (`https://app.example.org`) whose browser pages may call the API; none by default.
    pub cors_origins: Vec<String>,
    /// argon2id parameters for new password hashes; a login with a hash made otherwise (older
    /// parameters, or an imported bcrypt or PBKDF2 hash) stores a new one.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// How long a password reset token works.
    pub password_reset_ttl_minutes: i64,
    /// A folder that receives outgoing mail as `.eml` files; unset: mail is written to the log.
    pub mail_outbox: Option<PathBuf>,
    /// A folder that receives outgoing text messages as `.sms` files; unset: they are written to the log.
    pub sms_outbox: Option<PathBuf>,
    /// Where export jobs (`exportAnalytics`) write their files, as `<job id>.<format>`; default
    /// `<data_dir>/exports`. With worker processes on other machines, a folder they all share.
    pub export_dir: Option<PathBuf>,
    /// The origin browsers show when they use passkeys (`https://cloudsync.example.org`); default:
    /// `public_url`, else `http://localhost:<port>`.
    pub webauthn_origin: Option<String>,
    /// GraphQL requests a user (or an anonymous IP address) may make per minute.
    pub rate_limit_api_per_minute: u32,
    /// Password logins, registrations, second-factor answers and password resets per minute, per IP
    /// address and per account.
    pub rate_limit_login_per_minute: u32,
    /// The WebAuthn relying party id, a registrable domain of the origin; default: the origin's host.
    pub webauthn_rp_id: Option<String>,
    /// Serve what the database holds without changing it (a point-in-time replay, see `cloudsync
    /// replay --at`): no jobs, nothing appended to the log, every mutation but signing in refused.
    pub read_only: bool,
    /// `text` or `json`.
    pub log_format: String,
    /// Where errors are reported (a Sentry DSN, `https://<key>@<host>/<project>`): every error logged,
    /// with the request id it served, and every panic. Unset: nothing is sent anywhere.
    pub sentry_dsn: Option<SecretString>,
    /// The environment the reports are filed under (`staging`); default: Sentry's (`production`).
    pub sentry_environment: Option<String>,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a query waits for the read models to reflect the caller's own writes.
    pub consistency_timeout_ms: u64,
    /// The server's certificate chain and private key (PEM files): with both, it speaks HTTPS and
    /// WSS only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The oldest TLS version accepted: `1.3` (the default) or `1.2`.
    pub tls_min_version: String,
    /// `/readyz` answers 503 while the read models are more than this many events behind the log.
    pub ready_max_lag_events: i64,
    /// The address browsers use to reach this server (OAuth providers call back to
    /// `<public_url>/oauth/callback`); default: `http://<bind>`.
    pub public_url: Option<String>,
    /// CloudSync's app registration with each OAuth provider (`gdrive`, `dropbox`, `onedrive`).
    pub oauth: BTreeMap<String, OAuthAppConfig>,
    /// OpenID providers people may sign in with, by name (`oidc.<name>`: `issuer`, `client_id`,
    /// `client_secret`, `scopes`); their callback is `<public_url>/auth/oidc/callback`.
    pub oidc: BTreeMap<String, cloudsync_identity::oidc::OidcConfig>,
    /// SAML 2.0 identity providers people may sign in with, by name (`saml.<name>`: `metadata`,
    /// `trust_email`, `email_attribute`). CloudSync's entity id is `<public_url>/auth/saml/metadata`
    /// (which serves its metadata) and its assertion consumer service `<public_url>/auth/saml/acs`.
    pub saml: BTreeMap<String, cloudsync_identity::saml::SamlConfig>,
    /// OAuth access tokens are renewed when they have less than this left.
    pub oauth_renew_margin_seconds: u64,
    /// Seal the file paths inside new events with their owner's data key (erasing the account then
    /// makes them unreadable in the log too). Sealed paths are read back either way.
    pub seal_paths: bool,
    /// Where the chunk store (file versions, merge bases) is kept: unset for `<data_dir>/chunks`,
    /// or a provider's settings as for `connectProvider` plus `kind` and an optional `folder`, e.g.
    /// `{"kind": "s3", "bucket": "…", "endpoint": "…", "access_key_id": "…", "secret_access_key":
    /// "…", "folder": "cloudsync/chunks"}` (`CLOUDSYNC_CHUNK_STORE` takes it as JSON).
    pub chunk_store: Option<serde_json::Map<String, serde_json::Value>>,
    /// The search index: unset for tantivy in `<data_dir>/search`, or an Elasticsearch 8 cluster
    /// (`http://host:9200`).
    pub elasticsearch_url: Option<String>,
    /// The alias of the live index on Elasticsearch (each rebuild makes `<alias>-<id>` and moves it).
    pub elasticsearch_index: String,
    /// How many files the content pipeline reads at once (beside the job runner's slots).
    pub extract_concurrency: usize,
    /// What reading one file's text may cost: bytes read at most (a larger plain-text file is read
    /// up to this, other formats not at all), bytes of text kept, seconds, and the extractor
    /// process's memory.
    pub extract_max_input_bytes: u64,
    pub extract_max_text_bytes: usize,
    pub extract_timeout_seconds: u64,
    pub extract_memory_bytes: u64,
    /// A file its provider would not serve is read again after this many seconds, then twice as
    /// long each time, `extract_retry_limit` times; then its reading is recorded as failed.
    pub extract_retry_seconds: u64,
    pub extract_retry_limit: u32,
    /// The program run as `<program> extract …` for each file (default: this `cloudsync` binary).
    pub extractor_program: Option<PathBuf>,
    /// Where model files are loaded from (`scripts/models` installs them): unset for
    /// `<data_dir>/models`. A model whose folder is missing is left out (and said so at start-up).
    pub models_dir: Option<PathBuf>,
    /// How many model runs (embedding a file's passages, a query) go at once.
    pub model_concurrency: usize,
    /// Tesseract's languages for OCR of pictures and scanned PDFs, `+`-joined; empty turns OCR off.
    /// OCR runs when the `tesseract` program has these packs and the orientation pack (`osd`).
    pub ocr_languages: String,
    /// The `tesseract` program (found on the `PATH` by default).
    pub tesseract_program: PathBuf,
    /// Pages of a scanned PDF recognised at most.
    pub ocr_max_pages: u32,
    /// How many days a file deleted by `resolveDuplicate` stays restorable (its content kept in
    /// the chunk store) before the garbage collector lets it go.
    pub deleted_keep_days: u32,
    /// The vector index: a PostgreSQL database with pgvector 0.8+ (`postgres://…`) or an
    /// Elasticsearch 8 cluster (`http://host:9200`, index `<elasticsearch_index>-vectors`); unset for
    /// the Elasticsearch cluster of `elasticsearch_url` when that is set, else the embedded index in
    /// `<data_dir>/vectors`.
    pub vector_url: Option<String>,
    /// The job queue: unset for the queue in this process's memory (one process runs the jobs it
    /// records), or a RabbitMQ broker (`amqp://user:password@host:5672/vhost`) that carries jobs to
    /// every `cloudsync worker`.
    pub amqp_url: Option<String>,
    /// How many jobs (scans, sync runs) a worker runs at once.
    pub job_concurrency: usize,
    /// A job whose run fails (or whose worker goes away) is tried again after this many seconds,
    /// then twice as long each time up to `job_retry_max_seconds`, `job_attempts` times in all; then
    /// it fails with the last attempt's reason.
    pub job_attempts: u32,
    pub job_retry_seconds: u64,
    pub job_retry_max_seconds: u64,
}

/// One OAuth app. Only `client_id` is required; the endpoints, scopes and extra authorization
/// parameters default to the provider's published ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthAppConfig {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub extra_params: Option<BTreeMap<String, String>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            bind: "127.0.0.1:8080".into(),
            database_url: None,
            master_key: None,
            master_key_previous: Vec::new(),
            chunk_store_key: None,
            chunk_store_key_previous: Vec::new(),
            token_ttl_minutes: 15,
            refresh_ttl_days: 30,
            redis_url: None,
            redis_namespace: "cloudsync:".into(),
            cors_origins: Vec::new(),
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            password_reset_ttl_minutes: 30,
            mail_outbox: None,
            sms_outbox: None,
            export_dir: None,
            webauthn_origin: None,
            rate_limit_api_per_minute: 600,
            rate_limit_login_per_minute: 10,
            webauthn_rp_id: None,
            log_format: "text".into(),
            read_only: false,
            sentry_dsn: None,
            sentry_environment: None,
            max_body_bytes: 1024 * 1024,
            consistency_timeout_ms: 5000,
            ready_max_lag_events: 10_000,
            tls_cert: None,
            tls_key: None,
            tls_min_version: "1.3".into(),
            public_url: None,
            oauth: BTreeMap::new(),
            oidc: BTreeMap::new(),
            saml: BTreeMap::new(),
            oauth_renew_margin_seconds: 300,
            seal_paths: false,
            chunk_store: None,
            elasticsearch_url: None,
            elasticsearch_index: "cloudsync-files".into(),
            extract_concurrency: 2,
            extract_max_input_bytes: 256 << 20,
            extract_max_text_bytes: 4 << 20,
            extract_timeout_seconds: 30,
            extract_memory_bytes: 2 << 30,
            extract_retry_seconds: 60,
            extract_retry_limit: 8,
            extractor_program: None,
            models_dir: None,
            model_concurrency: 1,
            deleted_keep_days: 30,
            ocr_languages: "eng+deu+fra+spa".into(),
            tesseract_program: PathBuf::from("tesseract"),
            ocr_max_pages: 20,
            vector_url: None,
            amqp_url: None,
            job_concurrency: 4,
            job_attempts: 5,
            job_retry_seconds: 10,
            job_retry_max_seconds: 600,
        }
    }
}

/// Splits the rest of `CLOUDSYNC_<GROUP>_<ENTRY>_<FIELD>` (`name`, after `<GROUP>_`) into the
/// entry's name (lower case) and one of `fields`.
/// Keys given as one comma-separated value.
fn keys(value: &str) -> Vec<SecretString> {
    value
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| SecretString::from(k.to_owned()))
        .collect()
}

fn named_setting(group: &str, entry: &str, name: &str, fields: &[&'static str]) -> anyhow::Result<(String, &'static str)> {
    fields
        .iter()
        .find_map(|f| {
            name.strip_suffix(f)
                .and_then(|k| k.strip_suffix('_'))
                .filter(|k| !k.is_empty())
                .map(|k| (k.to_ascii_lowercase(), *f))
        })
        .with_context(|| {
            format!(
                "CLOUDSYNC_{group}_{name} is not a known setting (CLOUDSYNC_{group}_<{entry}>_{{{}}})",
                fields.join(",")
            )
        })
}

impl Config {
    /// `https` when the server speaks TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() { "https" } else { "http" }
    }

    /// Reads the optional file and then the environment (`vars` is normally `std::env::vars()`).
    ///
    /// # Errors
    /// An unreadable or malformed file, or a malformed variable.
    pub fn load(file: Option<&Path>, vars: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading the configuration file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing the configuration file {}", path.display()))?
            }
            None => Self::default(),
        };
        for (key, value) in vars {
            let Some(name) = key.strip_prefix("CLOUDSYNC_") else { continue };
            match name {
                "DATA_DIR" => config.data_dir = PathBuf::from(value),
                "BIND" => config.bind = value,
                "DATABASE_URL" => config.database_url = Some(value),
                "MASTER_KEY" => config.master_key = Some(SecretString::from(value)),
                "MASTER_KEY_PREVIOUS" => config.master_key_previous = keys(&value),
                "CHUNK_STORE_KEY" => config.chunk_store_key = Some(SecretString::from(value)),
                "CHUNK_STORE_KEY_PREVIOUS" => config.chunk_store_key_previous = keys(&value),
                "TOKEN_TTL_MINUTES" => config.token_ttl_minutes = value.parse().context("CLOUDSYNC_TOKEN_TTL_MINUTES must be a number")?,
                "REFRESH_TTL_DAYS" => config.refresh_ttl_days = value.parse().context("CLOUDSYNC_REFRESH_TTL_DAYS must be a number")?,
                "REDIS_URL" => config.redis_url = Some(value).filter(|v| !v.is_empty()),
                "REDIS_NAMESPACE" => config.redis_namespace = value,
                "ARGON2_MEMORY_KIB" => config.argon2_memory_kib = value.parse().context("CLOUDSYNC_ARGON2_MEMORY_KIB must be a number")?,
                "ARGON2_ITERATIONS" => config.argon2_iterations = value.parse().context("CLOUDSYNC_ARGON2_ITERATIONS must be a number")?,
                "ARGON2_PARALLELISM" => {
                    config.argon2_parallelism = value.parse().context("CLOUDSYNC_ARGON2_PARALLELISM must be a number")?
                }
                "PASSWORD_RESET_TTL_MINUTES" => {
                    config.password_reset_ttl_minutes = value.parse().context("CLOUDSYNC_PASSWORD_RESET_TTL_MINUTES must be a number")?;
                }
                "RATE_LIMIT_API_PER_MINUTE" => {
                    config.rate_limit_api_per_minute = value.parse().context("CLOUDSYNC_RATE_LIMIT_API_PER_MINUTE must be a number")?;
                }
                "RATE_LIMIT_LOGIN_PER_MINUTE" => {
                    config.rate_limit_login_per_minute = value.parse().context("CLOUDSYNC_RATE_LIMIT_LOGIN_PER_MINUTE must be a number")?;
                }
                "WEBAUTHN_ORIGIN" => config.webauthn_origin = Some(value),
                "WEBAUTHN_RP_ID" => config.webauthn_rp_id = Some(value),
                "SMS_OUTBOX" => config.sms_outbox = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty()),
                "EXPORT_DIR" => config.export_dir = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty()),
                "MAIL_OUTBOX" => config.mail_outbox = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty()),
                "CORS_ORIGINS" => {
                    config.cors_origins = value.split([',', ' ']).filter(|o| !o.is_empty()).map(str::to_owned).collect();
                }
                "LOG_FORMAT" => config.log_format = value,
                "READ_ONLY" => config.read_only = value.parse().context("CLOUDSYNC_READ_ONLY must be true or false")?,
                "SENTRY_DSN" => config.sentry_dsn = Some(SecretString::from(value)).filter(|v| !v.expose_secret().is_empty()),
                "SENTRY_ENVIRONMENT" => config.sentry_environment = Some(value).filter(|v| !v.is_empty()),
                "MAX_BODY_BYTES" => config.max_body_bytes = value.parse().context("CLOUDSYNC_MAX_BODY_BYTES must be a number")?,
                "TLS_CERT" => config.tls_cert = Some(PathBuf::from(value)).filter(|v| !v.as_os_str().is_empty()),
                "TLS_KEY" => config.tls_key = Some(PathBuf::from(value)).filter(|v| !v.as_os_str().is_empty()),
                "TLS_MIN_VERSION" => config.tls_min_version = value,
                "READY_MAX_LAG_EVENTS" => {
                    config.ready_max_lag_events = value.parse().context("CLOUDSYNC_READY_MAX_LAG_EVENTS must be a number")?;
                }
                "CONSISTENCY_TIMEOUT_MS" => {
                    config.consistency_timeout_ms = value.parse().context("CLOUDSYNC_CONSISTENCY_TIMEOUT_MS must be a number")?;
                }
                "PUBLIC_URL" => config.public_url = Some(value),
                "CHUNK_STORE" => {
                    config.chunk_store =
                        Some(serde_json::from_str(&value).context("CLOUDSYNC_CHUNK_STORE must be a JSON object of provider settings")?);
                }
                "ELASTICSEARCH_URL" => config.elasticsearch_url = Some(value).filter(|v| !v.is_empty()),
                "ELASTICSEARCH_INDEX" => config.elasticsearch_index = value,
                "VECTOR_URL" => config.vector_url = Some(value).filter(|v| !v.is_empty()),
                "AMQP_URL" => config.amqp_url = Some(value).filter(|v| !v.is_empty()),
                "JOB_CONCURRENCY" => config.job_concurrency = value.parse().context("CLOUDSYNC_JOB_CONCURRENCY must be a number")?,
                "JOB_ATTEMPTS" => config.job_attempts = value.parse().context("CLOUDSYNC_JOB_ATTEMPTS must be a number")?,
                "JOB_RETRY_SECONDS" => config.job_retry_seconds = value.parse().context("CLOUDSYNC_JOB_RETRY_SECONDS must be a number")?,
                "JOB_RETRY_MAX_SECONDS" => {
                    config.job_retry_max_seconds = value.parse().context("CLOUDSYNC_JOB_RETRY_MAX_SECONDS must be a number")?;
                }
                "MODELS_DIR" => config.models_dir = Some(PathBuf::from(value)).filter(|v| !v.as_os_str().is_empty()),
                "MODEL_CONCURRENCY" => config.model_concurrency = value.parse().context("CLOUDSYNC_MODEL_CONCURRENCY must be a number")?,
                "DELETED_KEEP_DAYS" => config.deleted_keep_days = value.parse().context("CLOUDSYNC_DELETED_KEEP_DAYS must be a number")?,
                "EXTRACT_CONCURRENCY" => {
                    config.extract_concurrency = value.parse().context("CLOUDSYNC_EXTRACT_CONCURRENCY must be a number")?
                }
                "EXTRACT_MAX_INPUT_BYTES" => {
                    config.extract_max_input_bytes = value.parse().context("CLOUDSYNC_EXTRACT_MAX_INPUT_BYTES must be a number")?
                }
                "EXTRACT_MAX_TEXT_BYTES" => {
                    config.extract_max_text_bytes = value.parse().context("CLOUDSYNC_EXTRACT_MAX_TEXT_BYTES must be a number")?
                }
                "EXTRACT_TIMEOUT_SECONDS" => {
                    config.extract_timeout_seconds = value.parse().context("CLOUDSYNC_EXTRACT_TIMEOUT_SECONDS must be a number")?
                }
                "EXTRACT_MEMORY_BYTES" => {
                    config.extract_memory_bytes = value.parse().context("CLOUDSYNC_EXTRACT_MEMORY_BYTES must be a number")?
                }
                "EXTRACT_RETRY_SECONDS" => {
                    config.extract_retry_seconds = value.parse().context("CLOUDSYNC_EXTRACT_RETRY_SECONDS must be a number")?
                }
                "EXTRACT_RETRY_LIMIT" => {
                    config.extract_retry_limit = value.parse().context("CLOUDSYNC_EXTRACT_RETRY_LIMIT must be a number")?
                }
                "EXTRACTOR_PROGRAM" => config.extractor_program = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty()),
                "SEAL_PATHS" => {
                    config.seal_paths = value.parse().context("CLOUDSYNC_SEAL_PATHS must be true or false")?;
                }
                "OAUTH_RENEW_MARGIN_SECONDS" => {
                    config.oauth_renew_margin_seconds = value.parse().context("CLOUDSYNC_OAUTH_RENEW_MARGIN_SECONDS must be a number")?;
                }
                other => {
                    if let Some(rest) = other.strip_prefix("OAUTH_") {
                        config.set_oauth(rest, value)?;
                    } else if let Some(rest) = other.strip_prefix("OIDC_") {
                        config.set_oidc(rest, value)?;
                    } else if let Some(rest) = other.strip_prefix("SAML_") {
                        config.set_saml(rest, value)?;
                    }
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// `CLOUDSYNC_OAUTH_<KIND>_<FIELD>`: FIELD is CLIENT_ID, CLIENT_SECRET, AUTH_URL, TOKEN_URL, SCOPES
    /// (space-separated) or EXTRA_PARAMS (`key=value&key=value`).
    fn set_oauth(&mut self, name: &str, value: String) -> anyhow::Result<()> {
        const FIELDS: [&str; 6] = ["CLIENT_ID", "CLIENT_SECRET", "AUTH_URL", "TOKEN_URL", "SCOPES", "EXTRA_PARAMS"];
        let (kind, field) = named_setting("OAUTH", "KIND", name, &FIELDS)?;
        let app = self.oauth.entry(kind).or_default();
        match field {
            "CLIENT_ID" => app.client_id = value,
            "CLIENT_SECRET" => app.client_secret = Some(SecretString::from(value)),
            "AUTH_URL" => app.auth_url = Some(value),
            "TOKEN_URL" => app.token_url = Some(value),
            "SCOPES" => app.scopes = Some(value.split_whitespace().map(str::to_owned).collect()),
            _ => {
                let mut params = BTreeMap::new();
                for pair in value.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .with_context(|| format!("CLOUDSYNC_OAUTH_{name}: {pair:?} is not key=value"))?;
                    params.insert(k.to_owned(), v.to_owned());
                }
                app.extra_params = Some(params);
            }
        }
        Ok(())
    }

    /// `CLOUDSYNC_OIDC_<NAME>_<FIELD>`: FIELD is ISSUER, CLIENT_ID, CLIENT_SECRET or SCOPES
    /// (space-separated).
    fn set_oidc(&mut self, name: &str, value: String) -> anyhow::Result<()> {
        const FIELDS: [&str; 4] = ["ISSUER", "CLIENT_ID", "CLIENT_SECRET", "SCOPES"];
        let (provider, field) = named_setting("OIDC", "NAME", name, &FIELDS)?;
        let entry = self.oidc.entry(provider).or_default();
        match field {
            "ISSUER" => entry.issuer = value,
            "CLIENT_ID" => entry.client_id = value,
            "CLIENT_SECRET" => entry.client_secret = Some(SecretString::from(value)),
            _ => entry.scopes = Some(value.split_whitespace().map(str::to_owned).collect()),
        }
        Ok(())
    }

    /// `CLOUDSYNC_SAML_<NAME>_<FIELD>`: FIELD is METADATA, TRUST_EMAIL, LINK_EXISTING or EMAIL_ATTRIBUTE.
    fn set_saml(&mut self, name: &str, value: String) -> anyhow::Result<()> {
        const FIELDS: [&str; 4] = ["METADATA", "TRUST_EMAIL", "LINK_EXISTING", "EMAIL_ATTRIBUTE"];
        let (provider, field) = named_setting("SAML", "NAME", name, &FIELDS)?;
        let entry = self.saml.entry(provider).or_default();
        match field {
            "METADATA" => entry.metadata = value,
            "TRUST_EMAIL" | "LINK_EXISTING" => {
                let flag = value
                    .parse()
                    .with_context(|| format!("CLOUDSYNC_SAML_{name} must be true or false"))?;
                if field == "TRUST_EMAIL" {
                    entry.trust_email = flag;
                } else {
                    entry.link_existing = flag;
                }
            }
            _ => entry.email_attribute = Some(value),
        }
        Ok(())
    }

    /// # Errors
    /// A value that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.bind.parse::<std::net::SocketAddr>().is_err() && !self.bind.contains(':') {
            bail!("bind must be host:port, got {:?}", self.bind);
        }
        if !(1..=24 * 60).contains(&self.token_ttl_minutes) {
            bail!("token_ttl_minutes must be between 1 and 1440 (access tokens are short-lived; refresh tokens last)");
        }
        if !(1..=365).contains(&self.refresh_ttl_days) {
            bail!("refresh_ttl_days must be between 1 and 365");
        }
        cloudsync_identity::passwords::Passwords::new(self.argon2_memory_kib, self.argon2_iterations, self.argon2_parallelism)
            .map_err(anyhow::Error::msg)?;
        if self.rate_limit_api_per_minute == 0 || self.rate_limit_login_per_minute == 0 {
            bail!("rate limits must be at least 1 per minute");
        }
        if !(1..=24 * 60).contains(&self.password_reset_ttl_minutes) {
            bail!("password_reset_ttl_minutes must be between 1 and 1440");
        }
        if let Some(url) = &self.elasticsearch_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("elasticsearch_url must be an http:// or https:// URL");
        }
        if self.extract_retry_seconds == 0 {
            bail!("extract_retry_seconds must be positive");
        }
        if let Some(url) = &self.vector_url
            && !["postgres://", "postgresql://", "http://", "https://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
        {
            bail!("vector_url must be a postgres:// URL (a database with pgvector) or an http(s):// Elasticsearch URL");
        }
        if !(1..=10_000).contains(&self.ocr_max_pages) {
            bail!("ocr_max_pages must be between 1 and 10000");
        }
        if !self
            .ocr_languages
            .split('+')
            .all(|l| l.is_empty() || l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            bail!("ocr_languages is tesseract's language names joined by '+', such as eng+deu");
        }
        if !(1..=36_500).contains(&self.deleted_keep_days) {
            bail!("deleted_keep_days must be between 1 and 36500");
        }
        if !(1..=64).contains(&self.model_concurrency) {
            bail!("model_concurrency must be between 1 and 64");
        }
        if !(1..=64).contains(&self.extract_concurrency) {
            bail!("extract_concurrency must be between 1 and 64");
        }
        if self.extract_timeout_seconds == 0 || self.extract_max_text_bytes == 0 || self.extract_memory_bytes < (64 << 20) {
            bail!("extract_timeout_seconds and extract_max_text_bytes must be positive, extract_memory_bytes at least 64 MiB");
        }
        if self.elasticsearch_index.is_empty()
            || !self
                .elasticsearch_index
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            bail!("elasticsearch_index must be lower-case letters, digits, '-' and '_'");
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            bail!("redis_url must be a redis:// or rediss:// URL");
        }
        if let Some(url) = &self.amqp_url
            && !(url.starts_with("amqp://") || url.starts_with("amqps://"))
        {
            bail!("amqp_url must be an amqp:// or amqps:// URL");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("tls_cert and tls_key go together: give both or neither");
        }
        if !matches!(self.tls_min_version.as_str(), "1.3" | "1.2") {
            bail!("tls_min_version must be 1.3 or 1.2");
        }
        if self.ready_max_lag_events < 0 {
            bail!("ready_max_lag_events must not be negative");
        }
        if self.job_concurrency == 0 || self.job_attempts == 0 {
            bail!("job_concurrency and job_attempts must be at least 1");
        }
        if !(1..=86_400).contains(&self.job_retry_seconds) || !(1..=7 * 86_400).contains(&self.job_retry_max_seconds) {
            bail!("job_retry_seconds must be between 1 and 86400, job_retry_max_seconds between 1 and 604800");
        }
        for origin in &self.cors_origins {
            let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin.parse::<axum::http::HeaderValue>().is_ok();
            if !valid {
                bail!("cors_origins: {origin:?} is not an origin like https://app.example.org");
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be text or json");
        }
        if let Some(dsn) = &self.sentry_dsn
            && dsn.expose_secret().parse::<sentry::types::Dsn>().is_err()
        {
            bail!("sentry_dsn must be a Sentry DSN like https://<key>@<host>/<project>");
        }
        for (kind, app) in &self.oauth {
            if !matches!(kind.as_str(), "gdrive" | "dropbox" | "onedrive") {
                bail!("oauth.{kind}: OAuth apps are for gdrive, dropbox and onedrive");
            }
            if app.client_id.trim().is_empty() {
                bail!("oauth.{kind}.client_id is required");
            }
        }
        for (name, provider) in &self.oidc {
            if !(provider.issuer.starts_with("https://") || provider.issuer.starts_with("http://")) {
                bail!("oidc.{name}.issuer must be an http(s) URL");
            }
            if provider.client_id.trim().is_empty() {
                bail!("oidc.{name}.client_id is required");
            }
        }
        for (name, provider) in &self.saml {
            if provider.metadata.trim().is_empty() {
                bail!("saml.{name}.metadata is required (the identity provider's metadata URL or file)");
            }
            if !cloudsync_identity::saml::metadata_source_allowed(&provider.metadata) {
                bail!("saml.{name}.metadata: plain http:// is accepted from loopback only; use https:// or a file");
            }
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("public_url must be an http:// or https:// URL");
        }
        Ok(())
    }

    /// Where export jobs write their files.
    pub fn exports(&self) -> PathBuf {
        self.export_dir.clone().unwrap_or_else(|| self.data_dir.join("exports"))
    }

    /// The database to use.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("cloudsync.db").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn nothing_set_means_embedded_defaults_in_data() {
        let config = Config::load(None, vars(&[])).expect("defaults");
        assert_eq!(config.database_url(), "sqlite://data/cloudsync.db");
        assert_eq!(config.bind, "127.0.0.1:8080");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("cloudsync-config-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("cloudsync.toml");
        std::fs::write(&file, "bind = \"0.0.0.0:9000\"\ndata_dir = \"/var/lib/cloudsync\"\n").expect("write");
        let config = Config::load(Some(&file), vars(&[("CLOUDSYNC_BIND", "127.0.0.1:9001"), ("OTHER", "x")])).expect("loads");
        assert_eq!(config.bind, "127.0.0.1:9001");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/cloudsync"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn oauth_apps_come_from_the_environment() {
        let config = Config::load(
            None,
            vars(&[
                ("CLOUDSYNC_OAUTH_GDRIVE_CLIENT_ID", "app.apps.googleusercontent.com"),
                ("CLOUDSYNC_OAUTH_GDRIVE_SCOPES", "openid  files.readwrite"),
                ("CLOUDSYNC_OAUTH_GDRIVE_EXTRA_PARAMS", "prompt=consent&access_type=offline"),
            ]),
        )
        .expect("loads");
        let app = &config.oauth["gdrive"];
        assert_eq!(app.client_id, "app.apps.googleusercontent.com");
        assert_eq!(
            app.scopes.as_deref(),
            Some(&["openid".to_owned(), "files.readwrite".to_owned()][..])
        );
        assert_eq!(app.extra_params.as_ref().map(BTreeMap::len), Some(2));
        assert!(Config::load(None, vars(&[("CLOUDSYNC_OAUTH_GDRIVE_CLIENT_ID", "")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_OAUTH_S3_CLIENT_ID", "x")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_OAUTH_GDRIVE_COLOUR", "x")])).is_err());
    }

    #[test]
    fn malformed_settings_are_refused() {
        assert!(Config::load(None, vars(&[("CLOUDSYNC_TOKEN_TTL_MINUTES", "soon")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_LOG_FORMAT", "xml")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_TOKEN_TTL_MINUTES", "0")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_ARGON2_MEMORY_KIB", "1")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_ARGON2_ITERATIONS", "0")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_REDIS_URL", "localhost:6379")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_CORS_ORIGINS", "https://a.example.org/")])).is_err());
        assert!(Config::load(None, vars(&[("CLOUDSYNC_SENTRY_DSN", "sentry.example.org")])).is_err());
        let reporting = Config::load(None, vars(&[("CLOUDSYNC_SENTRY_DSN", "https://key@sentry.example.org/42")])).expect("loads");
        assert!(reporting.sentry_dsn.is_some());
        assert!(
            Config::load(None, vars(&[("CLOUDSYNC_SENTRY_DSN", "")]))
                .expect("loads")
                .sentry_dsn
                .is_none()
        );
        let cors = Config::load(
            None,
            vars(&[("CLOUDSYNC_CORS_ORIGINS", "https://a.example.org, http://localhost:3000")]),
        )
        .expect("loads");
        assert_eq!(cors.cors_origins, ["https://a.example.org", "http://localhost:3000"]);
        let dir = std::env::temp_dir().join(format!("cloudsync-config-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("bad.toml");
        std::fs::write(&file, "bnd = 1\n").expect("write");
        assert!(Config::load(Some(&file), vars(&[])).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
