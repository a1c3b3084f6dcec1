//! How every login ends, whichever way it began (password, second factor, single sign-on, a
//! refresh token): the account must still exist and may be used from the client's address (its IP
//! allowlist); then a session opens with its first refresh token and an access token that carries
//! the account's roles.

use chrono::{DateTime, Utc};
use cloudsync_domain::UserId;
use cloudsync_domain::user::User;

use crate::auth::{AccessToken, Tokens};
use crate::sessions::{Client, Session, StoreError};

/// What a finished sign-in hands the client.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub session: Session,
    /// Exchange it for the next tokens (it works once).
    pub refresh_token: String,
    pub access: AccessToken,
}

impl SignedIn {
    /// Seconds until the session's refresh token stops working, by `now` (a cookie's max-age).
    pub fn refresh_seconds_left(&self, now: DateTime<Utc>) -> i64 {
        (self.session.expires_at - now).num_seconds().max(0)
    }
}

/// Why a sign-in ended without tokens.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the account no longer exists")]
    NoAccount,
    #[error("this account cannot be used from this network")]
    Network,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the access token cannot be signed: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

/// The account and the roles its tokens carry, if `user` exists and may be used from `client`'s
/// address.
///
/// # Errors
/// [`SignInError::NoAccount`], [`SignInError::Network`].
pub fn admit(user: Option<&User>, client: &Client) -> Result<(UserId, Vec<String>), SignInError> {
    let (user, id) = user.and_then(|u| Some((u, u.id()?))).ok_or(SignInError::NoAccount)?;
    if !crate::access::ip_allowed(client.ip.as_deref(), user.ip_allowlist()) {
        tracing::info!(user = %id, "A sign-in from outside the account's networks was refused.");
        return Err(SignInError::Network);
    }
    Ok((id, user.roles()))
}

/// Ends a login: opens a session of `user` for `client`, once [`admit`] lets it in.
///
/// # Errors
/// [`admit`]'s refusals; the session store's and the signing key's failures.
pub async fn sign_in(tokens: &Tokens, user: Option<&User>, client: &Client) -> Result<SignedIn, SignInError> {
    let (id, roles) = admit(user, client)?;
    let (session, refresh_token) = tokens.sessions().open(id, client).await?;
    let access = tokens.issue(id, session.id, &roles)?;
    Ok(SignedIn {
        session,
        refresh_token,
        access,
    })
}

/// Goes on with a session whose refresh token was just exchanged (`refresh_token` is the next one):
/// a new access token, if `user` still exists and may be used from `client`'s address; otherwise
/// the session ends too.
///
/// # Errors
/// [`admit`]'s refusals; the session store's and the signing key's failures.
pub async fn resume(
    tokens: &Tokens,
    session: Session,
    refresh_token: String,
    user: Option<&User>,
    client: &Client,
) -> Result<SignedIn, SignInError> {
    let roles = match admit(user, client) {
        Ok((_, roles)) => roles,
        Err(refused) => {
            if let Err(err) = tokens.sessions().store().revoke(session.user_id, session.id).await {
                tracing::warn!(error = %err, session = %session.id, "A refused session could not be revoked.");
            }
            return Err(refused);
        }
    };
    let access = tokens.issue(session.user_id, session.id, &roles)?;
    Ok(SignedIn {
        session,
        refresh_token,
        access,
    })
}
