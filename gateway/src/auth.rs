//! Passwords (argon2id) and access tokens (HS256 JWTs with issuer, audience and expiry checked).

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const ISSUER: &str = "cloudsync";
const AUDIENCE: &str = "cloudsync-api";

/// The authenticated user a request acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
}

/// What the request's credentials amount to. Resolvers that need a user turn anything but `User`
/// into an `UNAUTHENTICATED` error.
#[derive(Debug, Clone)]
pub enum Authentication {
    Anonymous,
    User(Caller),
    Invalid(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Issues and checks access tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_minutes: i64,
}

impl Tokens {
    pub fn new(secret: &SecretString, ttl_minutes: i64) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            ttl_minutes,
        }
    }

    /// # Errors
    /// Only if signing fails, which HS256 does not.
    pub fn issue(&self, user_id: Uuid) -> Result<String, jsonwebtoken::errors::Error> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl_minutes * 60,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks signature, algorithm, issuer, audience and expiry.
    ///
    /// # Errors
    /// A message that says what is wrong with the token, without echoing it.
    pub fn verify(&self, token: &str) -> Result<Caller, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind as K;
            match err.kind() {
                K::ExpiredSignature => "the access token has expired".to_owned(),
                K::InvalidSignature => "the access token's signature is invalid".to_owned(),
                K::InvalidAudience | K::InvalidIssuer => "the access token was not issued for this API".to_owned(),
                K::InvalidAlgorithm => "the access token uses an algorithm this API does not accept".to_owned(),
                _ => "the access token is malformed".to_owned(),
            }
        })?;
        let user_id = Uuid::parse_str(&data.claims.sub).map_err(|_| "the access token is malformed".to_owned())?;
        Ok(Caller { user_id })
    }

    /// Interprets an `Authorization` header value (or its absence).
    pub fn authenticate(&self, header: Option<&str>) -> Authentication {
        let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Authentication::Anonymous;
        };
        let Some(token) = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")) else {
            return Authentication::Invalid("the Authorization header must be 'Bearer <token>'".into());
        };
        match self.verify(token.trim()) {
            Ok(caller) => Authentication::User(caller),
            Err(why) => Authentication::Invalid(why),
        }
    }
}

/// Password rules: 8 to 1024 characters.
///
/// # Errors
/// Why the password is refused.
pub fn check_password_rules(password: &str) -> Result<(), String> {
    let length = password.chars().count();
    if length < 8 {
        return Err("the password must have at least 8 characters".into());
    }
    if length > 1024 {
        return Err("the password must have at most 1024 characters".into());
    }
    Ok(())
}

/// Hashes a password with argon2id and a random salt (CPU-heavy: call from a blocking thread).
///
/// # Errors
/// Only if hashing itself fails.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|err| err.to_string())
}

/// Whether `password` matches `hash` (CPU-heavy: call from a blocking thread).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A hash to verify against when the account does not exist, so both cases cost the same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("cloudsync-no-such-account").unwrap_or_default())
}

/// Random secret material, hex-encoded.
pub fn random_secret() -> String {
    use rand::RngCore as _;
    let mut bytes = [0_u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&SecretString::from("test-secret-test-secret-test-secret".to_owned()), 60)
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong horse battery", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn issued_tokens_verify_and_forged_ones_do_not() {
        let user = Uuid::new_v4();
        let token = tokens().issue(user).expect("issue");
        assert_eq!(tokens().verify(&token), Ok(Caller { user_id: user }));
        let other = Tokens::new(&SecretString::from("another-secret-another-secret".to_owned()), 60);
        assert!(other.verify(&token).is_err());
        let mut tampered = token.clone();
        tampered.push('x');
        assert!(tokens().verify(&tampered).is_err());
        // alg: none with the same claims.
        let parts: Vec<&str> = token.split('.').collect();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(tokens().verify(&none).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let expired = Tokens {
            ttl_minutes: -10,
            ..tokens()
        };
        let token = expired.issue(Uuid::new_v4()).expect("issue");
        assert_eq!(tokens().verify(&token), Err("the access token has expired".to_owned()));
    }

    #[test]
    fn headers_are_interpreted() {
        assert!(matches!(tokens().authenticate(None), Authentication::Anonymous));
        assert!(matches!(tokens().authenticate(Some("Basic abc")), Authentication::Invalid(_)));
        assert!(matches!(tokens().authenticate(Some("Bearer nope")), Authentication::Invalid(_)));
    }
}
