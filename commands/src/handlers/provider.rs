//! Provider commands: connecting (credentials checked by a round trip, then sealed), OAuth
//! authorization, renewing credentials, disconnecting, and opening a connected provider.

use std::sync::Arc;

use chrono::Utc;
use cloudsync_domain::provider::{ProviderCommand, ProviderConnection};
use cloudsync_domain::sync_job::{JobKind, SyncJob, SyncJobCommand};
use cloudsync_domain::{Aggregate, DomainEvent, ProviderId, ProviderKind, ProviderPath, ScanSchedule, SyncJobId, UserId};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};
use cloudsync_providers::{LocalProvider, ProviderError, StorageProvider};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::core::{Context, encode};
use crate::oauth::{OAuth, is_oauth_kind};
use crate::{CommandError, Commands};

/// What `connect_provider` created.
#[derive(Debug, Clone)]
pub struct Connected {
    pub provider_id: ProviderId,
    pub kind: ProviderKind,
    pub display_name: String,
    /// The scan job that indexes the provider.
    pub job_id: SyncJobId,
    /// Global position of the last event appended.
    pub position: i64,
}

impl Commands {
    /// Connects a provider and creates the job that scans it. `credentials` are the provider's own
    /// configuration keys (see `cloudsync_providers::open`) plus an optional display `name`. They are
    /// proven by a round trip first; secret settings are sealed with the user's data key and only the
    /// sealed form is recorded.
    ///
    /// # Errors
    /// Unknown kinds, unusable settings and refused credentials are [`CommandError::Invalid`];
    /// nothing is recorded then.
    pub async fn connect_provider(&self, user: UserId, kind: &str, credentials: &Value) -> Result<Connected, CommandError> {
        let kind = ProviderKind::parse(kind)?;
        let Some(fields) = credentials.as_object() else {
            return Err(CommandError::Invalid("credentials must be an object".into()));
        };
        let mut settings = fields.clone();
        let name = match settings.remove("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name.trim().to_owned()),
            Some(_) => return Err(CommandError::Invalid("credentials.name must be a string".into())),
        };
        if kind == ProviderKind::Local {
            // Record the canonical root, so later checks compare like with like.
            let raw = settings.get("root").and_then(Value::as_str).ok_or_else(|| {
                CommandError::Invalid("credentials.root (an absolute folder path) is required for a local provider".into())
            })?;
            let local = LocalProvider::open(raw).map_err(|err| CommandError::Invalid(err.to_string()))?;
            let root = local
                .root()
                .to_str()
                .ok_or_else(|| CommandError::Invalid("the root must be valid UTF-8".into()))?
                .to_owned();
            settings.insert("root".into(), Value::String(root));
        }
        let provider = cloudsync_providers::open(kind, &settings).map_err(|err| CommandError::Invalid(err.to_string()))?;
        provider.check().await.map_err(|err| match err {
            ProviderError::PermissionDenied(why) => CommandError::Invalid(format!("the provider refused the credentials: {why}")),
            other => CommandError::Invalid(format!("the provider cannot be reached with these settings: {other}")),
        })?;
        self.record_connection(user, kind, name, settings, None).await
    }

    /// Records a provider whose settings were proven: secret settings are sealed with the user's data
    /// key, the rest is recorded as it is, and the scan job that indexes it is created with it.
    async fn record_connection(
        &self,
        user: UserId,
        kind: ProviderKind,
        name: Option<String>,
        settings: Map<String, Value>,
        credentials_expire_at: Option<chrono::DateTime<Utc>>,
    ) -> Result<Connected, CommandError> {
        let (config, secret_settings): (Map<String, Value>, Map<String, Value>) =
            settings.into_iter().partition(|(key, _)| !SECRET_KEYS.contains(&key.as_str()));
        let secrets = if secret_settings.is_empty() {
            None
        } else {
            let plaintext = serde_json::to_vec(&secret_settings).map_err(|err| CommandError::Invalid(err.to_string()))?;
            Some(self.vault.seal(user, &plaintext).await?)
        };
        let display_name = name.unwrap_or_else(|| default_name(kind, &config));
        cloudsync_domain::provider::check_display_name(&display_name)?;
        // The name and the settings are personal data: sealed like the secrets.
        let sealed_name = self.seal_personal(user, &display_name).await?;
        let config = self.seal_value(user, &Value::Object(config)).await?;
        let provider_id = ProviderId::from_uuid(Uuid::new_v4());
        let job_id = SyncJobId::from_uuid(Uuid::new_v4());
        let at = Utc::now();
        let ctx = Context::new(Some(user));
        let connected = ProviderConnection::default().handle(ProviderCommand::Connect {
            provider_id,
            owner_id: user,
            kind,
            display_name: sealed_name,
            config,
            secrets,
            credentials_expire_at,
            at,
        })?;
        let created = SyncJob::default().handle(SyncJobCommand::Create {
            job_id,
            owner_id: user,
            kind: JobKind::Scan { provider_id },
            at,
        })?;
        let outcome = self
            .store
            .append(vec![
                StreamAppend {
                    stream: provider_id.stream(),
                    expected: ExpectedVersion::NoStream,
                    events: connected.iter().map(|e| encode(e, &ctx)).collect(),
                },
                StreamAppend {
                    stream: job_id.stream(),
                    expected: ExpectedVersion::NoStream,
                    events: created.iter().map(|e| encode(e, &ctx)).collect(),
                },
            ])
            .await?;
        tracing::info!(provider = %provider_id, user = %user, kind = kind.as_str(), job = %job_id, "Provider connected.");
        Ok(Connected {
            provider_id,
            kind,
            display_name,
            job_id,
            position: outcome.last_position,
        })
    }

    fn any_oauth(&self) -> Result<&Arc<OAuth>, CommandError> {
        self.oauth
            .as_ref()
            .ok_or_else(|| CommandError::Invalid("OAuth is not configured on this server".into()))
    }

    fn oauth_for(&self, kind: ProviderKind) -> Result<&Arc<OAuth>, CommandError> {
        self.oauth
            .as_ref()
            .filter(|o| o.configured(kind))
            .ok_or_else(|| CommandError::Invalid(format!("no OAuth app is configured for {} on this server", kind.as_str())))
    }

    /// Starts connecting an OAuth provider: returns the URL where `user` authorizes CloudSync. The
    /// provider then sends the browser to CloudSync's callback, which calls
    /// [`Commands::finish_authorization`]. `root` is the folder inside the account to index.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for kinds that do not use OAuth or have no app configured here.
    pub async fn begin_authorization(
        &self,
        user: UserId,
        kind: &str,
        name: Option<String>,
        root: Option<String>,
    ) -> Result<crate::oauth::Authorization, CommandError> {
        let kind = ProviderKind::parse(kind)?;
        if !is_oauth_kind(kind) {
            return Err(CommandError::Invalid(format!(
                "{} providers connect with credentials (connectProvider), not OAuth",
                kind.as_str()
            )));
        }
        let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
        if name.as_ref().is_some_and(|n| n.chars().count() > 200) {
            return Err(CommandError::Invalid("a display name has at most 200 characters".into()));
        }
        let root = match root.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty() && r != "/") {
            None => None,
            Some(r) => Some(format!("/{}", ProviderPath::parse(r.trim_start_matches('/'))?.as_str())),
        };
        self.oauth_for(kind)?.begin(user, kind, name, root).await
    }

    /// Completes an authorization begun by [`Commands::begin_authorization`]: exchanges `code` (with
    /// the PKCE verifier) for tokens and records the connection, tokens sealed. A `state` works once.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for unknown, expired or reused states and codes the provider refuses;
    /// nothing is recorded then.
    pub async fn finish_authorization(&self, state: &str, code: &str) -> Result<(UserId, Connected), CommandError> {
        let oauth = self.any_oauth()?;
        let granted = oauth.finish(state, code).await?;
        let mut settings = granted.tokens.to_settings();
        if let Some(root) = granted.root {
            settings.insert("root".into(), Value::String(root));
        }
        let connected = self
            .record_connection(granted.user, granted.kind, granted.name, settings, granted.tokens.expires_at)
            .await?;
        Ok((granted.user, connected))
    }

    /// The provider reported an error instead of a code (the user declined, for example): the pending
    /// authorization is dropped. Returns whose it was.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for unknown, expired or reused states.
    pub async fn abandon_authorization(&self, state: &str) -> Result<UserId, CommandError> {
        let oauth = self.any_oauth()?;
        oauth.abandon(state).await
    }

    /// Renews an OAuth provider's access token with its refresh token and records the new tokens.
    ///
    /// # Errors
    /// Not found for unknown or someone else's providers; [`CommandError::Invalid`] when the provider
    /// has no refresh token or refuses it (the user must authorize again then).
    pub async fn renew_credentials(&self, user: UserId, provider_id: ProviderId) -> Result<i64, CommandError> {
        let (provider, version) = self.load::<ProviderConnection>(&provider_id.stream()).await?;
        let connected = provider.active_for(user).ok_or(CommandError::NotFound("provider"))?;
        let oauth = self.oauth_for(connected.kind)?;
        let mut secrets = self.secrets_of(user, connected).await?;
        let refresh_token = secrets
            .get("refresh_token")
            .and_then(Value::as_str)
            .ok_or_else(|| CommandError::Invalid("this provider has no refresh token; authorize it again".into()))?;
        let renewed = oauth.refresh(connected.kind, refresh_token).await?;
        secrets.extend(renewed.to_settings());
        let plaintext = serde_json::to_vec(&secrets).map_err(|err| CommandError::Invalid(err.to_string()))?;
        let sealed = self.vault.seal(user, &plaintext).await?;
        let events = provider.handle(ProviderCommand::RenewCredentials {
            by: user,
            secrets: sealed,
            expires_at: renewed.expires_at,
            at: Utc::now(),
        })?;
        let position = self
            .append(provider_id.stream(), version, &events, &Context::new(Some(user)))
            .await?;
        tracing::info!(provider = %provider_id, user = %user, "Provider credentials renewed.");
        Ok(position)
    }

    async fn secrets_of(
        &self,
        user: UserId,
        connected: &cloudsync_domain::events::ProviderConnected,
    ) -> Result<Map<String, Value>, CommandError> {
        let Some(sealed) = &connected.secrets else { return Ok(Map::new()) };
        let plaintext = self.vault.open(user, sealed).await?;
        serde_json::from_slice(&plaintext).map_err(|_| CommandError::Storage("the provider's secrets are unreadable".into()))
    }

    /// Disconnects one of `user`'s providers. Its files stay where they are.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown, disconnected or someone else's providers.
    pub async fn disconnect_provider(&self, user: UserId, provider_id: ProviderId) -> Result<i64, CommandError> {
        let (provider, version) = self.load::<ProviderConnection>(&provider_id.stream()).await?;
        let events = provider.handle(ProviderCommand::Disconnect { by: user, at: Utc::now() })?;
        self.append(provider_id.stream(), version, &events, &Context::new(Some(user))).await
    }

    /// One of `user`'s connected providers, opened with its secrets.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] when it is not connected or not `user`'s; storage errors when its
    /// secrets cannot be opened.
    pub async fn provider(&self, user: UserId, provider_id: ProviderId) -> Result<Arc<dyn StorageProvider>, CommandError> {
        let (mut provider, _) = self.load::<ProviderConnection>(&provider_id.stream()).await?;
        let connected = provider.active_for(user).ok_or(CommandError::NotFound("provider"))?;
        // An OAuth token about to expire is renewed first (the scheduler normally does it earlier).
        if let (Some(expires), Some(oauth)) = (connected.credentials_expire_at, &self.oauth)
            && oauth.configured(connected.kind)
            && expires - chrono::Duration::from_std(oauth.renew_margin()).unwrap_or_default() <= Utc::now()
        {
            self.renew_credentials(user, provider_id).await?;
            provider = self.load::<ProviderConnection>(&provider_id.stream()).await?.0;
        }
        let connected = provider.active_for(user).ok_or(CommandError::NotFound("provider"))?;
        let mut settings = self
            .reveal_value(user, &connected.config)
            .await?
            .and_then(|config| config.as_object().cloned())
            .ok_or_else(|| CommandError::Storage("the provider's settings are unreadable".into()))?;
        settings.extend(self.secrets_of(user, connected).await?);
        // OpenDAL can only use a refresh token with the app's client id and secret; tokens from
        // CloudSync's own authorization flow are renewed by CloudSync instead.
        if !settings.contains_key("client_id") {
            settings.remove("refresh_token");
        }
        let opened: Arc<dyn StorageProvider> = cloudsync_providers::open(connected.kind, &settings)
            .map_err(|err| CommandError::Storage(format!("the provider cannot be opened: {err}")))?
            .into();
        Ok(match &self.layer {
            Some(layer) => layer(provider_id, opened),
            None => opened,
        })
    }

    /// The owner of a provider connection, for operators' tools that act on a provider by id.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or disconnected providers.
    pub async fn provider_owner(&self, provider_id: ProviderId) -> Result<UserId, CommandError> {
        let recorded = self.store.read_stream(&provider_id.stream()).await?;
        let first = recorded.first().ok_or(CommandError::NotFound("provider"))?;
        match DomainEvent::decode(&first.event_type, first.schema_version, &first.payload)? {
            DomainEvent::ProviderConnected(connected) => {
                let (provider, _) = self.load::<ProviderConnection>(&provider_id.stream()).await?;
                provider.active_for(connected.owner_id).ok_or(CommandError::NotFound("provider"))?;
                Ok(connected.owner_id)
            }
            _ => Err(CommandError::NotFound("provider")),
        }
    }

    /// Sets when one of `user`'s providers is rescanned on its own: a cron schedule (or none), and
    /// real time (local folders only).
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's providers; real time for a remote kind
    /// is [`CommandError::Invalid`].
    pub async fn set_scan_schedule(
        &self,
        user: UserId,
        provider_id: ProviderId,
        schedule: Option<ScanSchedule>,
        realtime: bool,
    ) -> Result<i64, CommandError> {
        let (provider, version) = self.load::<ProviderConnection>(&provider_id.stream()).await?;
        let events = provider.handle(ProviderCommand::SetSchedule {
            by: user,
            schedule,
            realtime,
            at: Utc::now(),
        })?;
        self.append(provider_id.stream(), version, &events, &Context::new(Some(user))).await
    }
}

/// Settings that are secrets: sealed before they are recorded, never shown.
const SECRET_KEYS: &[&str] = &[
    "password",
    "secret_access_key",
    "session_token",
    "account_key",
    "sas_token",
    "token",
    "access_token",
    "refresh_token",
    "client_secret",
];

fn default_name(kind: ProviderKind, config: &Map<String, Value>) -> String {
    let text = |key: &str| config.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let name = match kind {
        ProviderKind::Local => std::path::Path::new(&text("root"))
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned(),
        ProviderKind::S3 => text("bucket"),
        ProviderKind::Azblob => text("container"),
        ProviderKind::Webdav | ProviderKind::Sftp => text("endpoint"),
        _ => String::new(),
    };
    if name.is_empty() {
        kind.as_str().to_owned()
    } else {
        name.chars().take(200).collect()
    }
}
