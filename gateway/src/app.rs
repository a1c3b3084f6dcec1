//! What every request handler shares ([`App`]): the command side, the read models, identity's
//! stores and senders, and read-your-writes. `root` builds it; `http` and `graphql` use it.
//!
//! Read-your-writes: each mutation records the log position of its last appended event against the
//! caller; before a query reads a read model it waits (up to `consistency_timeout_ms`) until every
//! projector has passed that position, and the most advanced projector's position, so the read models
//! never disagree between two queries. Another caller's writes are eventually consistent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudsync_commands::Commands;
use cloudsync_eventstore::Database;
use cloudsync_projections::{Projections, ReadModels};

use crate::errors::{ApiError, ApiResult};

use cloudsync_identity::auth::{Authentication, Caller, Tokens};
use cloudsync_identity::clock::Clock;
use cloudsync_identity::limits::{RateLimiter, Rules};
use cloudsync_identity::mail::{Mailer, SmsSender};
use cloudsync_identity::passwords::Passwords;

/// What `/readyz` checks besides the database (see `http::readyz`).
pub struct Readiness {
    /// Redis, where configured.
    pub redis: Option<Arc<dyn cloudsync_cache::Cache>>,
    /// The job queue's broker, in processes that run jobs through one.
    pub broker: Option<Arc<dyn cloudsync_queue::JobQueue>>,
    /// Whether this process answers from read models and the search index (the API roles).
    pub serves_api: bool,
    /// Read models further behind the log than this make the process unready.
    pub max_lag_events: i64,
}

/// What every request handler shares.
pub struct App {
    pub db: Database,
    /// Where export jobs write their files (`export_dir`), which `GET /exports/<file>` serves.
    pub exports: std::path::PathBuf,
    /// Serves a replay: every mutation but signing in is refused (see [`crate::history`]).
    pub read_only: bool,
    pub commands: Commands,
    pub reads: ReadModels,
    pub projections: Arc<Projections>,
    /// The search index's projector (and through it the live index).
    pub search: Arc<cloudsync_search::LiveSearch>,
    pub search_cache: cloudsync_search::QueryCache,
    /// The vector index's projector (and through it the index), for searches by meaning.
    pub vectors: Arc<cloudsync_search::vectors::LiveVectors>,
    /// The models this installation loaded (the text model embeds queries).
    pub models: cloudsync_ml::Models,
    pub tokens: Tokens,
    /// The time as identity's stores and the second-factor windows read it.
    pub clock: Arc<dyn Clock>,
    pub(crate) written: Mutex<HashMap<cloudsync_domain::UserId, i64>>,
    pub(crate) consistency_timeout: Duration,
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
    /// What `/readyz` checks besides the database.
    pub readiness: Readiness,
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
        let user = match self.commands.user(user_id).await {
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
        if !matches || stored.expires_at.is_some_and(|at| at <= self.clock.now()) {
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

    /// Remembers that `caller` has written up to `position`.
    pub fn wrote(&self, caller: Caller, position: i64) {
        self.wrote_for(caller.user_id, position);
    }

    /// Remembers that user `user_id` has written up to `position`.
    pub fn wrote_for(&self, user_id: cloudsync_domain::UserId, position: i64) {
        if let Ok(mut written) = self.written.lock() {
            let entry = written.entry(user_id).or_insert(0);
            *entry = (*entry).max(position);
        }
    }

    /// How far the log has got for `user_id`'s writes through this process (0 before any).
    pub fn written_by(&self, user_id: cloudsync_domain::UserId) -> i64 {
        self.written.lock().ok().and_then(|w| w.get(&user_id).copied()).unwrap_or(0)
    }

    /// The tail every mutation repeats once its command has appended: records that `caller` wrote
    /// up to `position`, waits until the read models show it, then reads the result with `read`.
    /// A row the read models do not have is the error `missing` makes. (A query that wrote nothing
    /// passes position 0.)
    ///
    /// # Errors
    /// The read's own errors, and a missing row.
    pub async fn read_back<R, E: Into<ApiError>>(
        &self,
        caller: Caller,
        position: i64,
        read: impl AsyncFnOnce(&ReadModels) -> Result<Option<R>, E>,
        missing: impl FnOnce() -> ApiError,
    ) -> ApiResult<R> {
        self.wrote(caller, position);
        self.consistent(caller).await;
        read(&self.reads).await.map_err(Into::into)?.ok_or_else(missing)
    }

    /// Waits until the read models and the search index reflect everything `caller` has written;
    /// false when the index had not got there in time.
    pub async fn searchable(&self, caller: Caller) -> bool {
        self.consistent(caller).await;
        let written = self.written.lock().ok().and_then(|w| w.get(&caller.user_id).copied()).unwrap_or(0);
        let position = written.max(self.projections.max_position());
        position <= 0 || self.search.wait_for(position, self.consistency_timeout).await
    }

    /// Like [`Self::searchable`], for the vector index too.
    pub async fn searchable_by_meaning(&self, caller: Caller) -> bool {
        let words = self.searchable(caller).await;
        let written = self.written.lock().ok().and_then(|w| w.get(&caller.user_id).copied()).unwrap_or(0);
        let position = written.max(self.projections.max_position());
        words && (position <= 0 || self.vectors.wait_for(position, self.consistency_timeout).await)
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
