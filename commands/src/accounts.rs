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

    /// Lets the loaded user decide `command` and appends the result at the version it was loaded at.
    pub(crate) async fn act_on_user(&self, user: UserId, (found, version): (User, i64), command: UserCommand) -> Result<i64, CommandError> {
        let events = found.handle(command)?;
        self.append(user.stream(), version, &events, &Context::new(Some(user))).await
    }
}
