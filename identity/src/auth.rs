//! Password rules and access tokens: EdDSA JWTs with the signing key's id in the header
//! (keys in [`crate::keys`]), issuer, audience and expiry checked, each naming the session it
//! belongs to ([`crate::sessions`]), which must still be live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use cloudsync_domain::UserId;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keys::KeyRing;
use crate::sessions::Sessions;

const ISSUER: &str = "cloudsync";
const AUDIENCE: &str = "cloudsync-api";
/// Seconds a token is still accepted after its expiry, for clocks that disagree a little.
const LEEWAY_SECS: u64 = 5;

/// The authenticated user a request acts for, and what its credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    /// The sign-in session the access token belongs to (none for an API token).
    pub session_id: Option<Uuid>,
    /// The personal API token used, if any.
    pub token_id: Option<Uuid>,
    /// Roles beyond `user` (`crate::access::role`).
    pub roles: crate::access::Roles,
    /// What the credential allows (`crate::access::scope`).
    pub scopes: crate::access::Scopes,
}

/// What the request's credentials amount to. Resolvers that need a user turn anything but `User`
/// into an `UNAUTHENTICATED` error (`Unavailable`: an internal one).
#[derive(Debug, Clone)]
pub enum Authentication {
    Anonymous,
    User(Caller),
    Invalid(String),
    /// The credentials could not be checked (the session store is down).
    Unavailable(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    /// The user's roles when the token was issued.
    #[serde(default)]
    roles: Vec<String>,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Issues and checks access tokens.
pub struct Tokens {
    keys: Arc<KeyRing>,
    sessions: Sessions,
    ttl_minutes: i64,
    /// Tokens whose signature and claims were checked, by their whole text (signature included),
    /// so that a client's next requests skip the signature check; the signing key's standing, the
    /// expiry and the session are checked on every request all the same. At most
    /// [`VERIFIED_AT_MOST`] of them.
    verified: Mutex<HashMap<String, Verified>>,
}

/// What a token's signature and claims were found to say.
#[derive(Debug, Clone)]
struct Verified {
    kid: String,
    user_id: UserId,
    session_id: Uuid,
    roles: crate::access::Roles,
    exp: i64,
}

/// How many checked tokens [`Tokens`] remembers (a few MiB at most).
const VERIFIED_AT_MOST: usize = 10_000;

/// An access token and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Why an access token was refused (the message says it without echoing the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Invalid(String),
    Unavailable(String),
}

impl Tokens {
    pub fn new(keys: Arc<KeyRing>, sessions: Sessions, ttl_minutes: i64) -> Self {
        Self {
            keys,
            sessions,
            ttl_minutes,
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// An access token for `user_id` in session `session_id` with the user's `roles`, signed with
    /// the current key, valid for the configured minutes from now by the sessions' clock.
    ///
    /// # Errors
    /// Only if signing fails.
    pub fn issue(&self, user_id: UserId, session_id: Uuid, roles: &[String]) -> Result<AccessToken, jsonwebtoken::errors::Error> {
        let issued_at = self.sessions.clock().now();
        let now = issued_at.timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            roles: roles.to_vec(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl_minutes * 60,
        };
        let key = self.keys.current();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        Ok(AccessToken {
            token: jsonwebtoken::encode(&header, &claims, &key.encoding)?,
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or(issued_at),
        })
    }

    /// Checks the algorithm, the key id, the signature, issuer, audience and expiry, and that the
    /// token's session is still live.
    ///
    /// # Errors
    /// What is wrong with the token, or that sessions cannot be checked right now.
    pub async fn verify(&self, token: &str) -> Result<Caller, Refused> {
        let invalid = |why: &str| Refused::Invalid(why.to_owned());
        let known = self.verified.lock().unwrap_or_else(PoisonError::into_inner).get(token).cloned();
        let verified = match known {
            Some(verified) => verified,
            None => {
                let verified = self.check_signature(token).await?;
                let mut remembered = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
                if remembered.len() >= VERIFIED_AT_MOST {
                    let now = self.sessions.clock().now().timestamp();
                    remembered.retain(|_, v| v.exp.saturating_add(LEEWAY_SECS.cast_signed()) > now);
                    if remembered.len() >= VERIFIED_AT_MOST {
                        remembered.clear();
                    }
                }
                remembered.insert(token.to_owned(), verified.clone());
                verified
            }
        };
        // A key retired since (past its grace) no longer vouches for its tokens.
        if self.keys.verifying(&verified.kid).await.is_none() {
            return Err(invalid("the access token was signed with a key this API does not accept"));
        }
        if verified.exp.saturating_add(LEEWAY_SECS.cast_signed()) <= self.sessions.clock().now().timestamp() {
            return Err(invalid("the access token has expired"));
        }
        let Verified {
            user_id,
            session_id,
            roles,
            ..
        } = verified;
        match self.sessions.store().get(session_id).await {
            Ok(Some(session)) if session.user_id == user_id => Ok(Caller {
                user_id,
                session_id: Some(session_id),
                token_id: None,
                roles,
                scopes: crate::access::allowed_scopes(roles),
            }),
            Ok(_) => Err(invalid(
                "the access token's session has ended (signed out or revoked); sign in again",
            )),
            Err(err) => {
                tracing::error!(error = %err, "Sessions cannot be checked.");
                Err(Refused::Unavailable("sessions cannot be checked right now; try again".into()))
            }
        }
    }

    /// Checks a token's algorithm, key id, signature, issuer and audience, and reads its claims.
    async fn check_signature(&self, token: &str) -> Result<Verified, Refused> {
        let invalid = |why: &str| Refused::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("the access token is malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("the access token uses an algorithm this API does not accept"));
        }
        let kid = header.kid.ok_or_else(|| invalid("the access token names no signing key"))?;
        let key = self
            .keys
            .verifying(&kid)
            .await
            .ok_or_else(|| invalid("the access token was signed with a key this API does not accept"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        // Expiry is judged by `verify`, on the sessions' clock rather than the system's.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match err.kind() {
                K::ExpiredSignature => "the access token has expired",
                K::InvalidSignature => "the access token's signature is invalid",
                K::InvalidAudience | K::InvalidIssuer => "the access token was not issued for this API",
                K::InvalidAlgorithm => "the access token uses an algorithm this API does not accept",
                _ => "the access token is malformed",
            })
        })?;
        Ok(Verified {
            kid,
            user_id: UserId::from_uuid(Uuid::parse_str(&data.claims.sub).map_err(|_| invalid("the access token is malformed"))?),
            session_id: Uuid::parse_str(&data.claims.sid).map_err(|_| invalid("the access token is malformed"))?,
            roles: crate::access::roles_from(&data.claims.roles),
            exp: data.claims.exp,
        })
    }

    /// Interprets an `Authorization` header value (or its absence).
    pub async fn authenticate(&self, header: Option<&str>) -> Authentication {
        let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Authentication::Anonymous;
        };
        let Some(token) = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")) else {
            return Authentication::Invalid("the Authorization header must be 'Bearer <token>'".into());
        };
        match self.verify(token.trim()).await {
            Ok(caller) => Authentication::User(caller),
            Err(Refused::Invalid(why)) => Authentication::Invalid(why),
            Err(Refused::Unavailable(why)) => Authentication::Unavailable(why),
        }
    }
}

/// Password rules: 8 to 1024 characters.
///
/// # Errors
/// Why the password is refused.
pub fn check_password_rules(password: &str) -> Result<(), PasswordRule> {
    let length = password.chars().count();
    if length < 8 {
        return Err(PasswordRule::TooShort);
    }
    if length > 1024 {
        return Err(PasswordRule::TooLong);
    }
    Ok(())
}

/// The password rule a new password breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRule {
    #[error("the password must have at least 8 characters")]
    TooShort,
    #[error("the password must have at most 1024 characters")]
    TooLong,
}
