//! Account commands beyond registration: the password (changed, reset by a mailed token, rehashed
//! with the configured parameters at login).

use chrono::{DateTime, Utc};
use cloudsync_domain::events::PasswordChange;
use cloudsync_domain::user::{User, UserCommand};
use cloudsync_domain::{Aggregate as _, UserId};

use crate::{CommandError, Commands, Context};

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
        let loaded = self.load::<User>(&user.stream()).await?;
        let command = UserCommand::RequestReset {
            token_hash,
            expires_at,
            at: Utc::now(),
        };
        self.act_on_user(user, loaded, command).await
    }

    /// Sets a new password with the token of the user's latest reset request.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for a token that is not the latest, has expired or was used;
    /// store failures.
    pub async fn reset_password(&self, user: UserId, token_hash: String, password_hash: String) -> Result<i64, CommandError> {
        let loaded = self.load::<User>(&user.stream()).await?;
        let command = UserCommand::Reset {
            token_hash,
            password_hash,
            at: Utc::now(),
        };
        self.act_on_user(user, loaded, command).await
    }

    /// Gives `user` a role (`admin`, `auditor`); nothing happens when it has it already.
    ///
    /// # Errors
    /// An unknown role or user; store failures.
    pub async fn grant_role(&self, user: UserId, role: &str) -> Result<i64, CommandError> {
        let loaded = self.load::<User>(&user.stream()).await?;
        let command = UserCommand::GrantRole {
            role: role.to_owned(),
            at: Utc::now(),
        };
        self.act_on_user(user, loaded, command).await
    }

    /// Takes a role from `user`; nothing happens when it does not have it.
    ///
    /// # Errors
    /// An unknown user; store failures.
    pub async fn revoke_role(&self, user: UserId, role: &str) -> Result<i64, CommandError> {
        let loaded = self.load::<User>(&user.stream()).await?;
        let command = UserCommand::RevokeRole {
            role: role.to_owned(),
            at: Utc::now(),
        };
        self.act_on_user(user, loaded, command).await
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
        let loaded = self.load::<User>(&user.stream()).await?;
        let command = UserCommand::CreateApiToken {
            token_id,
            name,
            scopes,
            secret_hash,
            expires_at,
            at: Utc::now(),
        };
        self.act_on_user(user, loaded, command).await
    }

    /// Revokes one of the user's API tokens.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for a token that is not the user's; store failures.
    pub async fn revoke_api_token(&self, user: UserId, token_id: uuid::Uuid) -> Result<i64, CommandError> {
        let loaded = self.load::<User>(&user.stream()).await?;
        self.act_on_user(user, loaded, UserCommand::RevokeApiToken { token_id, at: Utc::now() })
            .await
    }

    /// Sets `user`'s quota and tier, as administrator `by`.
    ///
    /// # Errors
    /// An unknown tier or user; store failures.
    pub async fn set_plan(&self, user: UserId, quota_bytes: Option<u64>, tier: &str, by: UserId) -> Result<i64, CommandError> {
        let loaded = self.load::<User>(&user.stream()).await?;
        let command = UserCommand::SetPlan {
            quota_bytes,
            tier: tier.to_owned(),
            by,
            at: Utc::now(),
        };
        self.act_on_user(user, loaded, command).await
    }

    /// Sets the networks the user's credentials work from (validated by the caller).
    ///
    /// # Errors
    /// Too many networks; store failures.
    pub async fn set_ip_allowlist(&self, user: UserId, networks: Vec<String>) -> Result<i64, CommandError> {
        let loaded = self.load::<User>(&user.stream()).await?;
        self.act_on_user(user, loaded, UserCommand::SetIpAllowlist { networks, at: Utc::now() })
            .await
    }

    /// Lets the loaded user decide `command` and appends the result at the version it was loaded at.
    pub(crate) async fn act_on_user(&self, user: UserId, (found, version): (User, i64), command: UserCommand) -> Result<i64, CommandError> {
        let events = found.handle(command)?;
        self.append(user.stream(), version, &events, &Context::new(Some(user))).await
    }
}
