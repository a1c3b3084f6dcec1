//! Connecting OAuth providers (Google Drive, Dropbox, OneDrive) with the authorization-code flow and
//! PKCE (RFC 7636, S256), and keeping their tokens fresh.
//!
//! 1. [`Commands::begin_authorization`] remembers a pending authorization (the PKCE verifier, who asked,
//!    for which kind) under a random `state` and returns the provider's authorization URL.
//! 2. The user signs in there; the provider redirects the browser to CloudSync's callback with `code`
//!    and `state`. [`Commands::finish_authorization`] takes the pending authorization (once: a state
//!    cannot be replayed), exchanges the code with the verifier, checks the granted scopes, seals the
//!    tokens with the user's data key and records `ProviderConnected` with the token's expiry.
//! 3. Before a token expires, [`Commands::renew_credentials`] exchanges the refresh token and records
//!    `ProviderCredentialsRenewed` (the scheduler does this ahead of time; opening a provider whose
//!    token is about to expire does it on the spot).
//!
//! Pending authorizations live for ten minutes in a [`PendingStore`]: this process's memory by
//! default, or (the server gives its session store's ceremony states, Redis when configured) a store
//! every API process shares, so a callback may reach any of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use chrono::{DateTime, Utc};
use cloudsync_domain::{ProviderKind, UserId};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use serde_json::{Map, Value};

use crate::CommandError;

/// How long a user has to complete an authorization.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// At most this many authorizations may be pending at once (older ones are dropped first).
const MAX_PENDING: usize = 10_000;
/// A token is renewed when it has less than this left.
pub const DEFAULT_RENEW_MARGIN: Duration = Duration::from_secs(300);

/// CloudSync's registration with one OAuth provider.
#[derive(Clone)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_url: String,
    pub token_url: String,
    pub scopes: Vec<String>,
    /// Extra authorization parameters (Google needs `access_type=offline` to issue a refresh token).
    pub extra_params: Vec<(String, String)>,
}

impl std::fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthApp")
            .field("client_id", &self.client_id)
            .field("auth_url", &self.auth_url)
            .field("token_url", &self.token_url)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl OAuthApp {
    /// The provider's published endpoints, scopes and parameters, for an app registered with `client_id`.
    pub fn well_known(kind: ProviderKind, client_id: String, client_secret: Option<String>) -> Option<Self> {
        let (auth_url, token_url, scopes, extra): (&str, &str, &[&str], &[(&str, &str)]) = match kind {
            ProviderKind::Gdrive => (
                "https://accounts.google.com/o/oauth2/v2/auth",
                "https://oauth2.googleapis.com/token",
                &["https://www.googleapis.com/auth/drive"],
                &[("access_type", "offline"), ("prompt", "consent")],
            ),
            ProviderKind::Dropbox => (
                "https://www.dropbox.com/oauth2/authorize",
                "https://api.dropboxapi.com/oauth2/token",
                &["files.content.read", "files.content.write", "files.metadata.read"],
                &[("token_access_type", "offline")],
            ),
            ProviderKind::Onedrive => (
                "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
                "https://login.microsoftonline.com/common/oauth2/v2.0/token",
                &["Files.ReadWrite.All", "offline_access"],
                &[],
            ),
            _ => return None,
        };
        Some(Self {
            client_id,
            client_secret,
            auth_url: auth_url.to_owned(),
            token_url: token_url.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            extra_params: extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        })
    }
}

/// The provider kinds that connect through OAuth.
pub fn is_oauth_kind(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Gdrive | ProviderKind::Dropbox | ProviderKind::Onedrive)
}

/// What the user asked to connect, kept until the provider calls back.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    user: UserId,
    kind: ProviderKind,
    name: Option<String>,
    root: Option<String>,
    /// The PKCE verifier (a secret: it is kept only as long as the authorization).
    verifier: String,
}

/// Where pending authorizations wait for their callback: each under its `state`, taken once.
#[async_trait]
pub trait PendingStore: Send + Sync {
    /// Keeps `value` under `state` for `ttl`.
    async fn put(&self, state: &str, value: String, ttl: Duration) -> Result<(), CommandError>;
    /// Takes what is kept under `state`, if it has not expired: it is gone afterwards.
    async fn take(&self, state: &str) -> Result<Option<String>, CommandError>;
}

/// Pending authorizations in this process's memory, at most [`MAX_PENDING`] (the oldest go first).
#[derive(Default)]
pub struct MemoryPending(Mutex<HashMap<String, (String, Instant)>>);

#[async_trait]
impl PendingStore for MemoryPending {
    async fn put(&self, state: &str, value: String, ttl: Duration) -> Result<(), CommandError> {
        let mut pending = self
            .0
            .lock()
            .map_err(|_| CommandError::Storage("the OAuth state is poisoned".into()))?;
        let now = Instant::now();
        pending.retain(|_, (_, until)| *until > now);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending.iter().min_by_key(|(_, (_, until))| *until).map(|(k, _)| k.clone())
        {
            pending.remove(&oldest);
        }
        pending.insert(state.to_owned(), (value, now + ttl));
        Ok(())
    }

    async fn take(&self, state: &str) -> Result<Option<String>, CommandError> {
        let mut pending = self
            .0
            .lock()
            .map_err(|_| CommandError::Storage("the OAuth state is poisoned".into()))?;
        Ok(pending
            .remove(state)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(value, _)| value))
    }
}

/// Where the user goes to authorize CloudSync.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub expires_at: DateTime<Utc>,
}

/// What [`OAuth::finish`] hands to the connection step: the pending request and the tokens.
pub(crate) struct Granted {
    pub user: UserId,
    pub kind: ProviderKind,
    pub name: Option<String>,
    pub root: Option<String>,
    pub tokens: Tokens,
}

/// Tokens as they are sealed (the keys are OpenDAL's configuration keys).
pub(crate) struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Tokens {
    pub fn to_settings(&self) -> Map<String, Value> {
        let mut settings = Map::new();
        settings.insert("access_token".into(), Value::String(self.access_token.clone()));
        if let Some(refresh) = &self.refresh_token {
            settings.insert("refresh_token".into(), Value::String(refresh.clone()));
        }
        settings
    }
}

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// CloudSync's OAuth apps and the authorizations in flight.
pub struct OAuth {
    /// Each app and its client, built once.
    apps: HashMap<ProviderKind, (Client, OAuthApp)>,
    redirect_url: RedirectUrl,
    renew_margin: Duration,
    http: reqwest::Client,
    pending: Arc<dyn PendingStore>,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("apps", &self.apps.values().map(|(_, app)| app).collect::<Vec<_>>())
            .field("redirect_url", &self.redirect_url.as_str())
            .finish_non_exhaustive()
    }
}

impl OAuth {
    /// `redirect_url` is CloudSync's callback as the provider must call it (registered with the app).
    ///
    /// # Errors
    /// Malformed URLs, or an app for a kind that does not use OAuth.
    pub fn new(apps: HashMap<ProviderKind, OAuthApp>, redirect_url: &str, renew_margin: Duration) -> Result<Self, CommandError> {
        let redirect_url =
            RedirectUrl::new(redirect_url.to_owned()).map_err(|e| CommandError::Invalid(format!("the OAuth redirect URL: {e}")))?;
        let mut clients = HashMap::new();
        for (kind, app) in apps {
            if !is_oauth_kind(kind) {
                return Err(CommandError::Invalid(format!(
                    "{} providers do not connect through OAuth",
                    kind.as_str()
                )));
            }
            let auth_url =
                AuthUrl::new(app.auth_url.clone()).map_err(|e| CommandError::Invalid(format!("{} auth_url: {e}", kind.as_str())))?;
            let token_url =
                TokenUrl::new(app.token_url.clone()).map_err(|e| CommandError::Invalid(format!("{} token_url: {e}", kind.as_str())))?;
            let mut client = BasicClient::new(ClientId::new(app.client_id.clone()))
                .set_auth_uri(auth_url)
                .set_token_uri(token_url)
                .set_redirect_uri(redirect_url.clone());
            if let Some(secret) = &app.client_secret {
                client = client.set_client_secret(ClientSecret::new(secret.clone()));
            }
            clients.insert(kind, (client, app));
        }
        // Following redirects from a token endpoint would open the door to SSRF.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CommandError::Storage(format!("HTTP client: {e}")))?;
        Ok(Self {
            apps: clients,
            redirect_url,
            renew_margin,
            http,
            pending: Arc::new(MemoryPending::default()),
        })
    }

    /// Keeps pending authorizations in `store` (one that every API process shares, so a callback
    /// may reach any of them).
    #[must_use]
    pub fn with_pending(mut self, store: Arc<dyn PendingStore>) -> Self {
        self.pending = store;
        self
    }

    pub fn renew_margin(&self) -> Duration {
        self.renew_margin
    }

    pub fn configured(&self, kind: ProviderKind) -> bool {
        self.apps.contains_key(&kind)
    }

    fn client(&self, kind: ProviderKind) -> Result<(&Client, &OAuthApp), CommandError> {
        self.apps
            .get(&kind)
            .map(|(client, app)| (client, app))
            .ok_or_else(|| CommandError::Invalid(format!("no OAuth app is configured for {} on this server", kind.as_str())))
    }

    pub(crate) async fn begin(
        &self,
        user: UserId,
        kind: ProviderKind,
        name: Option<String>,
        root: Option<String>,
    ) -> Result<Authorization, CommandError> {
        let (client, app) = self.client(kind)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(app.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        for (key, value) in &app.extra_params {
            request = request.add_extra_param(key.clone(), value.clone());
        }
        let (url, state) = request.url();
        let pending = Pending {
            user,
            kind,
            name,
            root,
            verifier: verifier.secret().clone(),
        };
        let value = serde_json::to_string(&pending).map_err(|e| CommandError::Storage(format!("a pending authorization: {e}")))?;
        self.pending.put(state.secret(), value, PENDING_TTL).await?;
        let ttl = chrono::Duration::from_std(PENDING_TTL).unwrap_or_default();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            expires_at: Utc::now() + ttl,
        })
    }

    /// Takes the pending authorization for `state`: whatever happens next, it cannot be used again.
    async fn take(&self, state: &str) -> Result<Pending, CommandError> {
        let unknown = || CommandError::Invalid("this authorization is unknown, expired or already used; start connecting again".into());
        let value = self.pending.take(state).await?.ok_or_else(unknown)?;
        serde_json::from_str(&value).map_err(|_| unknown())
    }

    /// The provider refused or the user declined: forget the pending authorization.
    pub(crate) async fn abandon(&self, state: &str) -> Result<UserId, CommandError> {
        Ok(self.take(state).await?.user)
    }

    pub(crate) async fn finish(&self, state: &str, code: &str) -> Result<Granted, CommandError> {
        let pending = self.take(state).await?;
        let (client, app) = self.client(pending.kind)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        if let Some(granted) = response.scopes() {
            let missing: Vec<&str> = app
                .scopes
                .iter()
                .filter(|s| !granted.iter().any(|g| g.as_str() == s.as_str()))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(CommandError::Invalid(format!(
                    "the provider did not grant the access CloudSync needs (missing: {})",
                    missing.join(", ")
                )));
            }
        }
        Ok(Granted {
            user: pending.user,
            kind: pending.kind,
            name: pending.name,
            root: pending.root,
            tokens: tokens(&response, None),
        })
    }

    pub(crate) async fn refresh(&self, kind: ProviderKind, refresh_token: &str) -> Result<Tokens, CommandError> {
        let (client, _) = self.client(kind)?;
        let response = client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        // A provider that does not rotate refresh tokens keeps the old one valid.
        Ok(tokens(&response, Some(refresh_token)))
    }
}

fn tokens(response: &oauth2::basic::BasicTokenResponse, old_refresh: Option<&str>) -> Tokens {
    Tokens {
        access_token: response.access_token().secret().clone(),
        refresh_token: response
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| old_refresh.map(str::to_owned)),
        expires_at: response
            .expires_in()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| Utc::now() + d),
    }
}

/// A token endpoint's refusal, without echoing anything secret.
fn token_error<RE: std::error::Error + 'static>(
    error: RequestTokenError<RE, oauth2::StandardErrorResponse<oauth2::basic::BasicErrorResponseType>>,
) -> CommandError {
    match error {
        RequestTokenError::ServerResponse(response) => CommandError::Invalid(format!(
            "the provider refused the authorization: {}{}",
            response.error().as_ref(),
            response.error_description().map(|d| format!(" ({d})")).unwrap_or_default()
        )),
        RequestTokenError::Request(e) => CommandError::Storage(format!("the provider's token endpoint cannot be reached: {e}")),
        RequestTokenError::Parse(e, _) => {
            CommandError::Storage(format!("the provider's token endpoint answered something unreadable: {e}"))
        }
        RequestTokenError::Other(e) => CommandError::Storage(format!("the token exchange failed: {e}")),
    }
}
