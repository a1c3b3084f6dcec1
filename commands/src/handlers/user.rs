//! User commands: registration (the address reserved on a stream of its own), the password
//! (changed, reset by a mailed token, rehashed with the configured parameters at login), roles, API
//! tokens, plans, external identities, sealing personal data and erasing the account.
//!
//! Erasing disconnects the providers found in the user's history, releases the address, destroys the
//! user's data key and then records `UserDeleted` (003). Reservation streams are named by a keyed
//! hash of the address or identity, so that a stream's name does not give away whose it is.

use chrono::{DateTime, Utc};
use cloudsync_domain::events::PasswordChange;
use cloudsync_domain::reservation::{EmailReservation, ReservationCommand};
use cloudsync_domain::user::{User, UserCommand};
use cloudsync_domain::{Aggregate as _, UserId};

use cloudsync_domain::events::{ExternalIdentityLinked, Personal, Sealable};
use cloudsync_domain::ids::{email_stream, identity_stream};
use cloudsync_domain::{DomainEvent, Email};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};
use serde_json::Value;
use uuid::Uuid;

use crate::core::{encode, expected};
use crate::{CommandError, Commands, Context};

/// The password hash of an account that has none (it signs in with an external identity): no
/// password matches it.
pub const NO_PASSWORD: &str = "!no-password";

impl Commands {
    /// The user with this id, if registered.
    ///
    /// # Errors
    /// Store failures.
    pub async fn user(&self, user: UserId) -> Result<Option<User>, CommandError> {
        let (found, _) = self.load::<User>(&user.stream()).await?;
        Ok(found.id().map(|_| found))
    }

    /// Records a new password hash, but only while the current one is still `replaces` (the hash
    /// the caller checked the password against): a concurrent change wins over this one.
    ///
    /// # Errors
    /// [`CommandError::Conflict`] when the password changed meanwhile; store failures.
    pub async fn set_password(
        &self,
        user: UserId,
        password_hash: String,
        reason: PasswordChange,
        replaces: &str,
    ) -> Result<i64, CommandError> {
        let (found, version) = self.load::<User>(&user.stream()).await?;
        if found.password_hash() != Some(replaces) {
            return Err(CommandError::Conflict("the password changed meanwhile".into()));
        }
        self.act_on_user(
            user,
            (found, version),
            UserCommand::SetPassword {
                password_hash,
                reason,
                at: Utc::now(),
            },
        )
        .await
    }

    /// Records a password reset request whose token hashes to `token_hash`.
    ///
    /// # Errors
    /// An unknown user; store failures.
    pub async fn request_password_reset(&self, user: UserId, token_hash: String, expires_at: DateTime<Utc>) -> Result<i64, CommandError> {
        let command = UserCommand::RequestReset {
            token_hash,
            expires_at,
            at: Utc::now(),
        };
        self.change_user(user, command).await
    }

    /// Sets a new password with the token of the user's latest reset request.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for a token that is not the latest, has expired or was used;
    /// store failures.
    pub async fn reset_password(&self, user: UserId, token_hash: String, password_hash: String) -> Result<i64, CommandError> {
        let command = UserCommand::Reset {
            token_hash,
            password_hash,
            at: Utc::now(),
        };
        self.change_user(user, command).await
    }

    /// Gives `user` a role (`admin`, `auditor`); nothing happens when it has it already.
    ///
    /// # Errors
    /// An unknown role or user; store failures.
    pub async fn grant_role(&self, user: UserId, role: &str) -> Result<i64, CommandError> {
        let command = UserCommand::GrantRole {
            role: role.to_owned(),
            at: Utc::now(),
        };
        self.change_user(user, command).await
    }

    /// Takes a role from `user`; nothing happens when it does not have it.
    ///
    /// # Errors
    /// An unknown user; store failures.
    pub async fn revoke_role(&self, user: UserId, role: &str) -> Result<i64, CommandError> {
        let command = UserCommand::RevokeRole {
            role: role.to_owned(),
            at: Utc::now(),
        };
        self.change_user(user, command).await
    }

    /// Records a personal API token whose secret hashes to `secret_hash`.
    ///
    /// # Errors
    /// A bad name, unknown or unallowed scopes, a past expiry; store failures.
    pub async fn create_api_token(
        &self,
        user: UserId,
        token_id: uuid::Uuid,
        name: String,
        scopes: Vec<String>,
        secret_hash: String,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<i64, CommandError> {
        let command = UserCommand::CreateApiToken {
            token_id,
            name,
            scopes,
            secret_hash,
            expires_at,
            at: Utc::now(),
        };
        self.change_user(user, command).await
    }

    /// Revokes one of the user's API tokens.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for a token that is not the user's; store failures.
    pub async fn revoke_api_token(&self, user: UserId, token_id: uuid::Uuid) -> Result<i64, CommandError> {
        self.change_user(user, UserCommand::RevokeApiToken { token_id, at: Utc::now() })
            .await
    }

    /// Sets `user`'s quota and tier, as administrator `by`.
    ///
    /// # Errors
    /// An unknown tier or user; store failures.
    pub async fn set_plan(&self, user: UserId, quota_bytes: Option<u64>, tier: &str, by: UserId) -> Result<i64, CommandError> {
        let command = UserCommand::SetPlan {
            quota_bytes,
            tier: tier.to_owned(),
            by,
            at: Utc::now(),
        };
        self.change_user(user, command).await
    }

    /// Sets the networks the user's credentials work from (validated by the caller).
    ///
    /// # Errors
    /// Too many networks; store failures.
    pub async fn set_ip_allowlist(&self, user: UserId, networks: Vec<String>) -> Result<i64, CommandError> {
        self.change_user(user, UserCommand::SetIpAllowlist { networks, at: Utc::now() })
            .await
    }

    /// The user an external identity (an OpenID provider's `issuer` and `subject`) belongs to.
    ///
    /// # Errors
    /// Store failures.
    pub async fn user_by_identity(&self, issuer: &str, subject: &str) -> Result<Option<UserId>, CommandError> {
        Ok(self.identity_reservation(issuer, subject).await?.1)
    }

    /// An external identity's reservation stream and who it belongs to: the keyed stream, or one
    /// from before names were keyed.
    async fn identity_reservation(&self, issuer: &str, subject: &str) -> Result<(String, Option<UserId>), CommandError> {
        let keyed = self.reservation_stream("identity", &format!("{issuer}#{subject}")).await?;
        let legacy = identity_stream(issuer, subject);
        for stream in [&keyed, &legacy] {
            let claims = self.store.read_stream(stream).await?;
            if let Some(claim) = claims.first()
                && let DomainEvent::ExternalIdentityLinked(linked) =
                    DomainEvent::decode(&claim.event_type, claim.schema_version, &claim.payload)?
            {
                return Ok((stream.clone(), Some(linked.user_id)));
            }
        }
        Ok((keyed, None))
    }

    /// The stream a new link of an identity goes to, or why it cannot be made.
    async fn identity_claimable(&self, issuer: &str, subject: &str) -> Result<String, CommandError> {
        match self.identity_reservation(issuer, subject).await? {
            (_, Some(_)) => Err(CommandError::AlreadyExists("this external account is linked already".into())),
            (stream, None) => Ok(stream),
        }
    }

    /// Links an external identity to `user` (whose verified address it carries).
    ///
    /// # Errors
    /// [`CommandError::AlreadyExists`] when the identity belongs to someone already; store failures.
    pub async fn link_identity(&self, user: UserId, issuer: &str, subject: &str) -> Result<i64, CommandError> {
        let reservation = self.identity_claimable(issuer, subject).await?;
        let linked = DomainEvent::ExternalIdentityLinked(ExternalIdentityLinked {
            user_id: user,
            issuer: issuer.to_owned(),
            subject: self.seal_personal(user, subject).await?,
            at: Utc::now(),
        });
        let ctx = Context::new(Some(user));
        let batches = vec![
            StreamAppend {
                stream: user.stream(),
                expected: ExpectedVersion::Any,
                events: vec![encode(&linked, &ctx)],
            },
            StreamAppend {
                stream: reservation,
                expected: ExpectedVersion::NoStream,
                events: vec![encode(&linked, &ctx)],
            },
        ];
        match self.store.append(batches).await {
            Ok(outcome) => Ok(outcome.last_position),
            Err(err) if err.is_concurrency() => Err(CommandError::AlreadyExists("this external account is linked already".into())),
            Err(err) => Err(err.into()),
        }
    }

    /// Registers a user who signs in with an external identity only (no password: one can be set
    /// through a reset), in one transaction with the identity's link.
    ///
    /// # Errors
    /// [`CommandError::AlreadyExists`] when the address or the identity is taken; store failures.
    pub async fn register_external(&self, email: Email, issuer: &str, subject: &str) -> Result<(UserId, i64), CommandError> {
        let reservation = self.reservation(&email).await?;
        reservation.ensure_free()?;
        let identity = self.identity_claimable(issuer, subject).await?;
        let user_id = UserId::from_uuid(uuid::Uuid::new_v4());
        let ctx = Context::new(Some(user_id));
        let at = Utc::now();
        let events = User::default().handle(UserCommand::Register {
            user_id,
            email: self.seal_personal(user_id, email.as_str()).await?,
            password_hash: NO_PASSWORD.to_owned(),
            at,
        })?;
        let linked = DomainEvent::ExternalIdentityLinked(ExternalIdentityLinked {
            user_id,
            issuer: issuer.to_owned(),
            subject: self.seal_personal(user_id, subject).await?,
            at,
        });
        let claim = reservation.claim(&events, &ctx)?;
        let registered = events.iter().filter(|e| matches!(e, DomainEvent::UserRegistered(_)));
        let mut on_user: Vec<_> = registered.map(|e| encode(e, &ctx)).collect();
        on_user.push(encode(&linked, &ctx));
        let batches = vec![
            StreamAppend {
                stream: user_id.stream(),
                expected: ExpectedVersion::NoStream,
                events: on_user,
            },
            claim,
            StreamAppend {
                stream: identity,
                expected: ExpectedVersion::NoStream,
                events: vec![encode(&linked, &ctx)],
            },
        ];
        match self.store.append(batches).await {
            Ok(outcome) => Ok((user_id, outcome.last_position)),
            Err(err) if err.is_concurrency() => Err(CommandError::AlreadyExists(
                "this address or external account is registered already".into(),
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// Personal data for an event about `user`, sealed with the user's data key.
    ///
    /// # Errors
    /// The key store is unreachable.
    pub(crate) async fn seal_personal(&self, user: UserId, text: &str) -> Result<Personal, CommandError> {
        Ok(Personal::Sealed {
            sealed: self.vault.seal(user, text.as_bytes()).await?,
        })
    }

    /// Personal data of `user` in the clear; `None` once the account was erased (its key is gone).
    ///
    /// # Errors
    /// The key store is unreachable.
    pub async fn reveal(&self, user: UserId, personal: &Personal) -> Result<Option<String>, CommandError> {
        match personal {
            Personal::Clear(text) => Ok(Some(text.clone())),
            Personal::Sealed { sealed } => Ok(self
                .vault
                .open_if_kept(user, sealed)
                .await?
                .map(|plain| String::from_utf8_lossy(&plain).into_owned())),
        }
    }

    /// A personal JSON value of `user` (such as a provider's settings) sealed with the user's
    /// data key.
    ///
    /// # Errors
    /// The key store is unreachable.
    pub(crate) async fn seal_value(&self, user: UserId, value: &Value) -> Result<Sealable<Value>, CommandError> {
        let plaintext = serde_json::to_vec(value).map_err(|err| CommandError::Invalid(err.to_string()))?;
        Ok(Sealable::Sealed {
            sealed: self.vault.seal(user, &plaintext).await?,
        })
    }

    /// A personal JSON value of `user` in the clear; `None` once the account was erased.
    ///
    /// # Errors
    /// The key store is unreachable, or the value is not JSON.
    pub async fn reveal_value(&self, user: UserId, value: &Sealable<Value>) -> Result<Option<Value>, CommandError> {
        match value {
            Sealable::Clear(value) => Ok(Some(value.clone())),
            Sealable::Sealed { sealed } => match self.vault.open_if_kept(user, sealed).await? {
                Some(plain) => serde_json::from_slice(&plain)
                    .map(Some)
                    .map_err(|_| CommandError::Storage("a sealed value is not JSON".into())),
                None => Ok(None),
            },
        }
    }

    /// The user's address in the clear, if the account exists.
    ///
    /// # Errors
    /// Store failures.
    pub async fn email_of(&self, user: UserId) -> Result<Option<String>, CommandError> {
        let Some(found) = self.user(user).await? else { return Ok(None) };
        match found.email() {
            Some(email) => self.reveal(user, email).await,
            None => Ok(None),
        }
    }

    /// Erases the account: disconnects its providers, destroys its data key (so the personal data
    /// sealed in its events can never be read again), then records `UserDeleted` (its read-model
    /// rows go) and releases its address. The events stay.
    ///
    /// # Errors
    /// An unknown or already erased account; store failures.
    pub async fn delete_account(&self, user: UserId) -> Result<i64, CommandError> {
        let (found, version) = self.load::<User>(&user.stream()).await?;
        if found.id().is_none() {
            return Err(CommandError::NotFound("user"));
        }
        // Nothing of the account runs after it is erased: its providers are disconnected first.
        for provider in self.providers_of(user).await? {
            self.disconnect_provider(user, provider).await?;
        }
        // The address is read while it still can be: its reservation is released with the erasure.
        let email = match found.email() {
            Some(sealed) => self.reveal(user, sealed).await?,
            None => None,
        };
        // The key first: should anything below fail, the account is already unreadable, and
        // asking again finishes the erasure (destroying is idempotent).
        self.vault.destroy(user).await?;
        // The chunk store's key too: the account's kept versions and texts can no longer be
        // opened, and the collector lets them go.
        if let Some(chunks) = &self.chunks {
            chunks.keys.destroy(user).await?;
        }
        self.forget_pairs();
        let at = Utc::now();
        let deleted = found.handle(UserCommand::Delete { at })?;
        let ctx = Context::new(Some(user));
        let mut batches = vec![StreamAppend {
            stream: user.stream(),
            expected: if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            },
            events: deleted.iter().map(|e| encode(e, &ctx)).collect(),
        }];
        if let Some(email) = email.and_then(|e| Email::parse(&e).ok()) {
            let reservation = self.reservation(&email).await?;
            // Released only by its holder (an address claimed since by someone else stays theirs).
            if let Ok(released) = reservation.state.handle(ReservationCommand::Release { user_id: user, at }) {
                batches.push(StreamAppend {
                    stream: reservation.stream,
                    expected: ExpectedVersion::Exact(reservation.version),
                    events: released.iter().map(|e| encode(e, &ctx)).collect(),
                });
            }
        }
        let position = self.store.append(batches).await?.last_position;
        // Again once the sealing store has dropped the key: nothing loaded meanwhile stays.
        self.forget_pairs();
        Ok(position)
    }

    /// The user's connected providers, from everything the user did (the log, not a read model).
    async fn providers_of(&self, user: UserId) -> Result<Vec<cloudsync_domain::ProviderId>, CommandError> {
        let mut connected = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.read_by_actor(user.as_uuid(), after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for event in &page {
                if event.event_type != "ProviderConnected" {
                    continue;
                }
                if let DomainEvent::ProviderConnected(e) = DomainEvent::decode(&event.event_type, event.schema_version, &event.payload)?
                    && e.owner_id == user
                {
                    connected.push(e.provider_id);
                }
            }
        }
        let mut live = Vec::new();
        for id in connected {
            let (provider, _) = self.load::<cloudsync_domain::provider::ProviderConnection>(&id.stream()).await?;
            if provider.active_for(user).is_some() {
                live.push(id);
            }
        }
        Ok(live)
    }

    /// Loads the user, lets it decide `command` and appends the result at the version it was loaded at.
    pub(crate) async fn change_user(&self, user: UserId, command: UserCommand) -> Result<i64, CommandError> {
        let loaded = self.load::<User>(&user.stream()).await?;
        self.act_on_user(user, loaded, command).await
    }

    /// Lets the user, as loaded at `version`, decide `command` and appends the result there (for
    /// callers that looked at the user before deciding what to ask).
    pub(crate) async fn act_on_user(&self, user: UserId, (found, version): (User, i64), command: UserCommand) -> Result<i64, CommandError> {
        let events = found.handle(command)?;
        self.append(user.stream(), version, &events, &Context::new(Some(user))).await
    }
}

fn already_registered() -> CommandError {
    CommandError::AlreadyExists("this email address is already registered".into())
}

/// An address's reservation stream: its name, its version (0: never claimed) and who holds it.
#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    pub(crate) stream: String,
    pub(crate) version: i64,
    pub(crate) state: EmailReservation,
}

impl Reservation {
    /// The reservation after the claims and releases recorded on `stream`.
    fn of(stream: String, recorded: &[cloudsync_eventstore::RecordedEvent]) -> Result<Self, CommandError> {
        let version = recorded.last().map_or(0, |e| e.stream_version);
        let events = recorded
            .iter()
            .map(|e| DomainEvent::decode(&e.event_type, e.schema_version, &e.payload))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            stream,
            version,
            state: EmailReservation::load(&events),
        })
    }

    /// [`CommandError::AlreadyExists`] while someone holds the address: asked before a
    /// registration seals anything, so a refused one leaves nothing behind.
    fn ensure_free(&self) -> Result<(), CommandError> {
        self.state.claimable().map_err(|_| already_registered())
    }

    /// The batch that records a registration's claim (from `events`, the registration's), or
    /// [`CommandError::AlreadyExists`] when someone holds the address.
    fn claim(self, events: &[DomainEvent], ctx: &Context) -> Result<StreamAppend, CommandError> {
        let claimed = events
            .iter()
            .find_map(|e| match e {
                DomainEvent::EmailClaimed(claimed) => Some(claimed.clone()),
                _ => None,
            })
            .ok_or_else(|| CommandError::Invalid("a registration without a claim of its address".into()))?;
        let decided = self
            .state
            .handle(ReservationCommand::Claim(claimed))
            .map_err(|_| already_registered())?;
        Ok(StreamAppend {
            stream: self.stream,
            expected: expected(self.version),
            events: decided.iter().map(|e| encode(e, ctx)).collect(),
        })
    }
}

impl Commands {
    /// Registers a user whose password was already hashed. The address is reserved on its own stream,
    /// so two registrations of one address cannot both succeed.
    ///
    /// # Errors
    /// [`CommandError::AlreadyExists`] when the address is taken.
    pub async fn register(&self, email: Email, password_hash: String) -> Result<(UserId, i64), CommandError> {
        let reservation = self.reservation(&email).await?;
        reservation.ensure_free()?;
        let user_id = UserId::from_uuid(Uuid::new_v4());
        let ctx = Context::new(Some(user_id));
        let events = User::default().handle(UserCommand::Register {
            user_id,
            email: self.seal_personal(user_id, email.as_str()).await?,
            password_hash,
            at: Utc::now(),
        })?;
        let claim = reservation.claim(&events, &ctx)?;
        let registered = events.iter().filter(|e| matches!(e, DomainEvent::UserRegistered(_)));
        let batches = vec![
            StreamAppend {
                stream: user_id.stream(),
                expected: ExpectedVersion::NoStream,
                events: registered.map(|e| encode(e, &ctx)).collect(),
            },
            claim,
        ];
        match self.store.append(batches).await {
            Ok(outcome) => Ok((user_id, outcome.last_position)),
            Err(err) if err.is_concurrency() => Err(already_registered()),
            Err(err) => Err(err.into()),
        }
    }

    /// The user who claimed `email`, read from the reservation stream and the user's own stream (so a
    /// login right after registering never depends on a projection).
    ///
    /// # Errors
    /// Store failures.
    pub async fn user_by_email(&self, email: &Email) -> Result<Option<User>, CommandError> {
        let Some(holder) = self.reservation(email).await?.state.holder() else {
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
        let old = Reservation::of(legacy.clone(), &self.store.read_stream(&legacy).await?)?;
        if old.state.holder().is_some() {
            return Ok(old);
        }
        Ok(Reservation {
            stream: keyed,
            version: 0,
            state: EmailReservation::default(),
        })
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
}
