//! Command handlers: load the aggregate from its stream, let it decide, append what it decided with
//! the version it was loaded at. Nothing here reads a read model.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use cloudsync_chunks::ChunkStore;
use cloudsync_domain::file::{File, FileCommand};
use cloudsync_domain::ids::email_stream;
use cloudsync_domain::provider::{ProviderCommand, ProviderConnection};
use cloudsync_domain::sync_job::{JobKind, SyncJob, SyncJobCommand};
use cloudsync_domain::user::{User, UserCommand};
use cloudsync_domain::{Aggregate, DomainEvent, Email, FileId, ProviderId, ProviderKind, ProviderPath, ScanSchedule, SyncJobId, UserId};
use cloudsync_eventstore::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend};
use cloudsync_providers::{LocalProvider, ProviderError, StorageProvider};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::CommandError;
use crate::oauth::{OAuth, is_oauth_kind};
use crate::secrets::Vault;

/// Who issues a command and which request it belongs to; stamped on every event it causes.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub actor: Option<UserId>,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl Context {
    /// A new correlation on behalf of `actor`.
    pub fn new(actor: Option<UserId>) -> Self {
        Self {
            actor,
            correlation_id: Uuid::new_v4(),
            causation_id: None,
        }
    }

    pub(crate) fn metadata(&self) -> EventMetadata {
        EventMetadata {
            event_id: Uuid::now_v7(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor_id: self.actor.map(|u| u.as_uuid()),
            occurred_at: Utc::now(),
        }
    }
}

pub(crate) fn encode(event: &DomainEvent, ctx: &Context) -> NewEvent {
    let encoded = event.encode();
    NewEvent {
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        metadata: ctx.metadata(),
    }
}

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

/// One file that `move_files` moved.
#[derive(Debug, Clone)]
pub struct Moved {
    pub file_id: FileId,
    pub to: ProviderPath,
}

/// The state of an address's reservation stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// Nobody holds it; `version` is the stream's (0: never claimed).
    Free {
        stream: String,
        version: i64,
    },
    Held {
        stream: String,
        user: UserId,
        version: i64,
    },
}

impl Reservation {
    /// The stream a new claim goes to and the version it must find, or why it cannot be made.
    pub(crate) fn claimable(self) -> Result<(String, ExpectedVersion), CommandError> {
        match self {
            Self::Free { stream, version: 0 } => Ok((stream, ExpectedVersion::NoStream)),
            Self::Free { stream, version } => Ok((stream, ExpectedVersion::Exact(version))),
            Self::Held { .. } => Err(CommandError::AlreadyExists("this email address is already registered".into())),
        }
    }

    /// Who holds it, after the claims and releases recorded on `stream`.
    fn of(stream: String, recorded: &[cloudsync_eventstore::RecordedEvent]) -> Result<Self, CommandError> {
        let version = recorded.last().map_or(0, |e| e.stream_version);
        let mut holder = None;
        for event in recorded {
            match DomainEvent::decode(&event.event_type, event.schema_version, &event.payload)? {
                DomainEvent::EmailClaimed(claimed) => holder = Some(claimed.user_id),
                DomainEvent::EmailReleased(_) => holder = None,
                _ => {}
            }
        }
        Ok(match holder {
            Some(user) => Self::Held { stream, user, version },
            None => Self::Free { stream, version },
        })
    }
}

/// The command side of CloudSync.
#[derive(Clone)]
pub struct Commands {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) vault: Vault,
    oauth: Option<Arc<OAuth>>,
    chunks: Option<Arc<dyn ChunkStore>>,
}

impl Commands {
    pub fn new(store: Arc<dyn EventStore>, vault: Vault) -> Self {
        Self {
            store,
            vault,
            oauth: None,
            chunks: None,
        }
    }

    /// Keeps sync contents (the agreed text of synced files, for line merges) in `chunks`.
    #[must_use]
    pub fn with_chunks(mut self, chunks: Arc<dyn ChunkStore>) -> Self {
        self.chunks = Some(chunks);
        self
    }

    pub fn chunks(&self) -> Option<&Arc<dyn ChunkStore>> {
        self.chunks.as_ref()
    }

    /// Enables connecting OAuth providers through `oauth`'s apps.
    #[must_use]
    pub fn with_oauth(mut self, oauth: Arc<OAuth>) -> Self {
        self.oauth = Some(oauth);
        self
    }

    pub fn oauth(&self) -> Option<&Arc<OAuth>> {
        self.oauth.as_ref()
    }

    /// The database of the write side's own bookkeeping (leases, checkpoints, wrapped keys).
    pub(crate) fn pool(&self) -> &cloudsync_eventstore::DbPool {
        self.vault.pool()
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// An aggregate and the version of its stream.
    ///
    /// # Errors
    /// Store failures and undecodable events.
    pub async fn load<A: Aggregate<Event = DomainEvent>>(&self, stream: &str) -> Result<(A, i64), CommandError> {
        let recorded = self.store.read_stream(stream).await?;
        let version = recorded.last().map_or(0, |e| e.stream_version);
        let events = recorded
            .iter()
            .map(|e| DomainEvent::decode(&e.event_type, e.schema_version, &e.payload))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((A::load(&events), version))
    }

    /// Appends one stream's events at the version it was loaded at; returns the last position.
    pub(crate) async fn append(&self, stream: String, version: i64, events: &[DomainEvent], ctx: &Context) -> Result<i64, CommandError> {
        let events = events.iter().map(|e| encode(e, ctx)).collect();
        let outcome = self
            .store
            .append(vec![StreamAppend {
                stream,
                expected: expected(version),
                events,
            }])
            .await?;
        Ok(outcome.last_position)
    }

    /// Registers a user whose password was already hashed. The address is reserved on its own stream,
    /// so two registrations of one address cannot both succeed.
    ///
    /// # Errors
    /// [`CommandError::AlreadyExists`] when the address is taken.
    pub async fn register(&self, email: Email, password_hash: String) -> Result<(UserId, i64), CommandError> {
        let (reservation, claim) = self.reservation(&email).await?.claimable()?;
        let user_id = UserId::from_uuid(Uuid::new_v4());
        let ctx = Context::new(Some(user_id));
        let events = User::default().handle(UserCommand::Register {
            user_id,
            email: self.seal_personal(user_id, email.as_str()).await?,
            password_hash,
            at: Utc::now(),
        })?;
        let (registered, claimed): (Vec<_>, Vec<_>) = events.iter().partition(|e| matches!(e, DomainEvent::UserRegistered(_)));
        let batches = vec![
            StreamAppend {
                stream: user_id.stream(),
                expected: ExpectedVersion::NoStream,
                events: registered.iter().map(|e| encode(e, &ctx)).collect(),
            },
            StreamAppend {
                stream: reservation,
                expected: claim,
                events: claimed.iter().map(|e| encode(e, &ctx)).collect(),
            },
        ];
        match self.store.append(batches).await {
            Ok(outcome) => Ok((user_id, outcome.last_position)),
            Err(err) if err.is_concurrency() => Err(CommandError::AlreadyExists("this email address is already registered".into())),
            Err(err) => Err(err.into()),
        }
    }

    /// The user who claimed `email`, read from the reservation stream and the user's own stream (so a
    /// login right after registering never depends on a projection).
    ///
    /// # Errors
    /// Store failures.
    pub async fn user_by_email(&self, email: &Email) -> Result<Option<User>, CommandError> {
        let Reservation::Held { user: holder, .. } = self.reservation(email).await? else {
            return Ok(None);
        };
        let (user, _) = self.load::<User>(&holder.stream()).await?;
        Ok(user.id().map(|_| user))
    }

    /// Who holds `email` now: the latest claim, unless a release followed it. The reservation
    /// stream's name is keyed (see [`Commands::reservation_stream`]); an address reserved before
    /// names were keyed keeps its old stream while it is held.
    pub(crate) async fn reservation(&self, email: &Email) -> Result<Reservation, CommandError> {
        let keyed = self.reservation_stream("email", &format!("mailto:{}", email.as_str())).await?;
        let recorded = self.store.read_stream(&keyed).await?;
        if !recorded.is_empty() {
            return Reservation::of(keyed, &recorded);
        }
        let legacy = email_stream(email);
        match Reservation::of(legacy.clone(), &self.store.read_stream(&legacy).await?)? {
            held @ Reservation::Held { .. } => Ok(held),
            Reservation::Free { .. } => Ok(Reservation::Free { stream: keyed, version: 0 }),
        }
    }

    /// The name of the reservation stream of `name` (an address, an external identity): a UUID
    /// from a keyed BLAKE3 hash, so the name does not tell whose address it reserves, even once the
    /// account is erased.
    ///
    /// # Errors
    /// The installation's reservation key cannot be read.
    pub(crate) async fn reservation_stream(&self, kind: &str, name: &str) -> Result<String, CommandError> {
        let key = self.vault.reservation_key().await?;
        let hash = blake3::keyed_hash(&key, name.as_bytes());
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&hash.as_bytes()[..16]);
        Ok(format!("{kind}-{}", uuid::Builder::from_custom_bytes(bytes).into_uuid()))
    }

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
    pub fn begin_authorization(
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
        self.oauth_for(kind)?.begin(user, kind, name, root)
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
    pub fn abandon_authorization(&self, state: &str) -> Result<UserId, CommandError> {
        let oauth = self.any_oauth()?;
        oauth.abandon(state)
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
        let opened = cloudsync_providers::open(connected.kind, &settings)
            .map_err(|err| CommandError::Storage(format!("the provider cannot be opened: {err}")))?;
        Ok(Arc::from(opened))
    }

    /// Loads every file and checks that each is `user`'s and live; nothing changes when one is not.
    async fn live_files(&self, user: UserId, ids: &[FileId]) -> Result<Vec<(FileId, File, i64)>, CommandError> {
        if ids.is_empty() {
            return Err(CommandError::Invalid("no file ids given".into()));
        }
        if ids.len() > 1000 {
            return Err(CommandError::Invalid("at most 1000 files per request".into()));
        }
        let mut seen = HashSet::new();
        let mut files = Vec::new();
        for &id in ids {
            if !seen.insert(id) {
                continue;
            }
            let (file, version) = self.load::<File>(&id.stream()).await?;
            if file.live_for(user).is_none() {
                return Err(CommandError::NotFound("file"));
            }
            files.push((id, file, version));
        }
        Ok(files)
    }

    /// Moves files into `folder` (relative to each file's provider root), keeping their names: the real
    /// file moves first, then `FileMoved` is recorded. Every id is checked before anything changes.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] when any id is unknown or not the caller's; conflicts when a
    /// destination is taken (files moved before it stay moved and recorded).
    pub async fn move_files(&self, user: UserId, ids: &[FileId], folder: &ProviderPath) -> Result<(Vec<Moved>, i64), CommandError> {
        let files = self.live_files(user, ids).await?;
        let mut plans = Vec::new();
        for (id, file, version) in files {
            let (facts, from) = file.live_for(user).ok_or(CommandError::NotFound("file"))?;
            let to = file.move_target(user, folder)?;
            let provider = self.provider(user, facts.provider_id).await.map_err(file_not_found)?;
            plans.push((id, file.clone(), version, from.clone(), to, provider));
        }
        let ctx = Context::new(Some(user));
        let mut moved = Vec::new();
        let mut position = self.store.head().await?;
        for (id, file, version, from, to, provider) in plans {
            let events = file.handle(FileCommand::Move {
                by: user,
                folder: folder.clone(),
                at: Utc::now(),
            })?;
            if events.is_empty() {
                moved.push(Moved { file_id: id, to });
                continue;
            }
            provider.rename(&from, &to).await.map_err(storage_error)?;
            match self.append(id.stream(), version, &events, &ctx).await {
                Ok(p) => position = p,
                Err(err) => {
                    // Put the file back so the provider and the log agree.
                    if let Err(undo) = provider.rename(&to, &from).await {
                        tracing::error!(file = %id, error = %undo, "Could not undo a move whose event was refused.");
                    }
                    return Err(err);
                }
            }
            moved.push(Moved { file_id: id, to });
        }
        Ok((moved, position))
    }

    /// Deletes files from their providers and records `FileDeleted`. Every id is checked first.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] when any id is unknown or not the caller's.
    pub async fn delete_files(&self, user: UserId, ids: &[FileId]) -> Result<(Vec<FileId>, i64), CommandError> {
        let files = self.live_files(user, ids).await?;
        let mut plans = Vec::new();
        for (id, file, version) in files {
            let (facts, path) = file.live_for(user).ok_or(CommandError::NotFound("file"))?;
            let provider = self.provider(user, facts.provider_id).await.map_err(file_not_found)?;
            plans.push((id, file.clone(), version, path.clone(), provider));
        }
        let ctx = Context::new(Some(user));
        let mut deleted = Vec::new();
        let mut position = self.store.head().await?;
        for (id, file, version, path, provider) in plans {
            let events = file.handle(FileCommand::Delete { by: user, at: Utc::now() })?;
            provider.delete(&path).await.map_err(storage_error)?;
            position = self.append(id.stream(), version, &events, &ctx).await?;
            deleted.push(id);
        }
        Ok((deleted, position))
    }

    /// Starts a rescan of one of `user`'s providers; the job runner (or whoever calls
    /// [`Commands::run_job`]) carries it out.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown, disconnected or someone else's providers.
    pub async fn request_scan(&self, user: UserId, provider_id: ProviderId) -> Result<(SyncJobId, i64), CommandError> {
        // An erased account's providers are not scanned again.
        self.user(user).await?.ok_or(CommandError::NotFound("provider"))?;
        let (provider, _) = self.load::<ProviderConnection>(&provider_id.stream()).await?;
        provider.active_for(user).ok_or(CommandError::NotFound("provider"))?;
        let job_id = SyncJobId::from_uuid(Uuid::new_v4());
        let created = SyncJob::default().handle(SyncJobCommand::Create {
            job_id,
            owner_id: user,
            kind: JobKind::Scan { provider_id },
            at: Utc::now(),
        })?;
        let position = self.append(job_id.stream(), 0, &created, &Context::new(Some(user))).await?;
        Ok((job_id, position))
    }

    /// Runs a job to its end in this task (the CLI does this; the server's job runner does the same)
    /// under the job's lease: while another live worker holds it, waits, and carries the job on
    /// from its last recorded step once that worker has gone (its lease lapsed, or its process on
    /// this machine ended). A run that loses the lease (a stall) stops, and this worker stands by
    /// again in the same way. Returns quietly when the job has ended (whoever ran it), or when
    /// `cancel` fires.
    ///
    /// # Errors
    /// What stopped the job.
    pub async fn run_job(&self, job_id: SyncJobId, cancel: &tokio_util::sync::CancellationToken) -> Result<(), CommandError> {
        self.run_job_in(job_id, cancel, None).await
    }

    /// [`Commands::run_job`], taking one of `slots` (where given) once it holds the job's lease:
    /// a job that waits for another worker takes no slot meanwhile.
    pub(crate) async fn run_job_in(
        &self,
        job_id: SyncJobId,
        cancel: &tokio_util::sync::CancellationToken,
        slots: Option<&tokio::sync::Semaphore>,
    ) -> Result<(), CommandError> {
        let (job, _) = self.load::<SyncJob>(&job_id.stream()).await?;
        if job.kind().is_none() {
            return Err(CommandError::NotFound("sync job"));
        }
        loop {
            // One worker at a time: the others wait, and take over if it goes away.
            let Some(lease) = crate::leases::JobLease::take(self, job_id, cancel).await? else {
                return Ok(());
            };
            let run = lease.token().clone();
            let slot = match slots {
                Some(slots) => tokio::select! {
                    () = run.cancelled() => None,
                    slot = slots.acquire() => Some(slot.map_err(|_| CommandError::Conflict("the job runner is stopping".into()))?),
                },
                None => None,
            };
            let result = if run.is_cancelled() {
                Ok(())
            } else {
                match job.kind() {
                    Some(JobKind::Scan { .. }) => crate::scan::run_scan(self, job_id, &run).await,
                    _ => crate::sync::run_sync(self, job_id, &run).await,
                }
            };
            drop(slot);
            lease.release().await;
            // The run stopped because the lease was lost, not because it ended or was cancelled:
            // stand by for the job again (another worker may be carrying it on).
            if result.is_ok() && run.is_cancelled() && !cancel.is_cancelled() {
                tracing::warn!(job = %job_id, "A run lost its job lease; standing by to take the job up again.");
                continue;
            }
            return result;
        }
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

    /// Cancels one of `user`'s jobs.
    ///
    /// # Errors
    /// Not found, or a job that has already ended.
    pub async fn cancel_job(&self, user: UserId, job_id: SyncJobId) -> Result<i64, CommandError> {
        self.act_on_job(user, job_id, SyncJobCommand::Cancel { by: user, at: Utc::now() })
            .await
    }

    /// Pauses one of `user`'s jobs at its next step.
    ///
    /// # Errors
    /// Not found, or a job that has already ended.
    pub async fn pause_job(&self, user: UserId, job_id: SyncJobId) -> Result<i64, CommandError> {
        self.act_on_job(user, job_id, SyncJobCommand::Pause { by: user, at: Utc::now() })
            .await
    }

    /// Resumes one of `user`'s paused jobs.
    ///
    /// # Errors
    /// Not found, a job that has already ended, or a run held for approval.
    pub async fn resume_job(&self, user: UserId, job_id: SyncJobId) -> Result<i64, CommandError> {
        self.act_on_job(user, job_id, SyncJobCommand::Resume { by: user, at: Utc::now() })
            .await
    }

    /// Applies `user`'s command to one of their jobs; returns the last position (0 when the command
    /// changed nothing).
    pub(crate) async fn act_on_job(&self, user: UserId, job_id: SyncJobId, command: SyncJobCommand) -> Result<i64, CommandError> {
        let (job, version) = self.load::<SyncJob>(&job_id.stream()).await?;
        let events = job.handle(command)?;
        if events.is_empty() {
            return Ok(0);
        }
        self.append(job_id.stream(), version, &events, &Context::new(Some(user))).await
    }

    /// Applies a job command on behalf of the job runner; returns the job's new version.
    pub(crate) async fn job_step(
        &self,
        job_id: SyncJobId,
        version: i64,
        job: &mut SyncJob,
        command: SyncJobCommand,
        ctx: &Context,
    ) -> Result<i64, CommandError> {
        let events = job.handle(command)?;
        if events.is_empty() {
            return Ok(version);
        }
        self.append(job_id.stream(), version, &events, ctx).await?;
        events.iter().for_each(|e| job.apply(e));
        Ok(version + i64::try_from(events.len()).unwrap_or(1))
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

/// A file's provider that is gone or unusable makes the file unreachable, as if unknown.
fn file_not_found(error: CommandError) -> CommandError {
    match error {
        CommandError::NotFound(_) => CommandError::NotFound("file"),
        other => other,
    }
}

/// How a provider's refusal reaches the caller.
pub(crate) fn storage_error(error: ProviderError) -> CommandError {
    match error {
        ProviderError::NotFound(_) => CommandError::NotFound("file"),
        ProviderError::AlreadyExists(what) => CommandError::Conflict(format!("{what} already exists")),
        ProviderError::PermissionDenied(why) | ProviderError::Invalid(why) => CommandError::Invalid(why),
        other => CommandError::Storage(other.to_string()),
    }
}

pub(crate) fn expected(version: i64) -> ExpectedVersion {
    if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(version)
    }
}
