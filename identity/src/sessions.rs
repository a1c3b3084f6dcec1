//! Sign-in sessions and their refresh tokens.
//!
//! A login opens a session; the client gets a short-lived access token that names the session and a
//! refresh token `csr1.<session id>.<secret>`. Exchanging the refresh token (`refresh`) rotates it:
//! the session's one valid secret is replaced, and the old one is remembered as used. Presenting a
//! used secret again means two parties hold the session's tokens (one of them stole it), so the
//! whole session is revoked: reuse detection. Access tokens are checked against their session on
//! every request, so a revoked session (logout, `revokeSession`, reuse) stops working at once.
//!
//! Session state lives behind [`SessionStore`]: [`MemorySessions`] by default (sessions end with
//! the process), [`RedisSessions`] when Redis is configured (shared by every API process). Only
//! hashes of the secrets are stored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, TimeZone as _, Utc};
use cloudsync_domain::UserId;
use rand::RngCore as _;
use uuid::Uuid;

use crate::clock::Clock;

const TOKEN_PREFIX: &str = "csr1";
/// How much of a user agent a session keeps.
const MAX_USER_AGENT: usize = 256;

#[derive(Debug, thiserror::Error)]
#[error("the session store is unavailable: {0}")]
pub struct StoreError(pub String);

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    /// Its refresh token stops working then, unless it is exchanged before (which extends it).
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// What exchanging a refresh token secret did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// It was the session's current secret: `next` replaced it.
    Rotated,
    /// It was a secret the session had already exchanged: the session is revoked.
    Reused { user_id: UserId },
    /// No such live session, or a secret it never issued: nothing changed.
    Invalid,
}

/// Where sessions live. Every implementation passes the same contract suite.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session whose current secret hashes to `secret`.
    async fn create(&self, session: &Session, secret: &str) -> Result<(), StoreError>;
    /// Atomically: if `presented` is the session's current secret, replaces it by `next`, remembers
    /// it as used, and moves `last_used_at` to `now` and the expiry to `expires_at`; if it is a used
    /// one, revokes the session.
    async fn rotate(
        &self,
        id: Uuid,
        presented: &str,
        next: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Rotation, StoreError>;
    /// The session, unless it is revoked or expired.
    async fn get(&self, id: Uuid) -> Result<Option<Session>, StoreError>;
    /// The user's live sessions, oldest first.
    async fn list(&self, user_id: UserId) -> Result<Vec<Session>, StoreError>;
    /// Revokes the session if it is the user's; false otherwise (another user's, unknown, gone).
    async fn revoke(&self, user_id: UserId, id: Uuid) -> Result<bool, StoreError>;
    /// Revokes every session of the user; returns how many there were.
    async fn revoke_all(&self, user_id: UserId) -> Result<u64, StoreError>;
    /// Keeps short-lived state of a ceremony (a login waiting for its second factor, a passkey
    /// registration) under `key` for `ttl`.
    async fn put_state(&self, key: &str, value: &str, ttl: std::time::Duration) -> Result<(), StoreError>;
    /// Removes and returns the state under `key`, unless it expired: whoever takes it first has it.
    async fn take_state(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// The state under `key`, unless it expired, left in place.
    async fn peek_state(&self, key: &str) -> Result<Option<String>, StoreError>;
}

/// The time now by `clock`, to the millisecond: what every store keeps.
fn now(clock: &dyn Clock) -> DateTime<Utc> {
    from_ms(clock.now_ms())
}

/// What is stored of a token's secret.
pub fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// 32 random bytes, base64url (43 characters).
pub fn fresh_secret() -> String {
    let mut bytes = [0_u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    B64URL.encode(bytes)
}

/// The id and secret of a `<prefix>.<uuid>.<secret>` token, if it is well-formed.
pub fn split_token<'a>(token: &'a str, prefix: &str) -> Option<(Uuid, &'a str)> {
    let mut parts = token.trim().splitn(3, '.');
    let (found, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if found != prefix || secret.len() != 43 || !secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    Some((Uuid::parse_str(id).ok()?, secret))
}

/// `<prefix>.<uuid>.<secret>`.
pub fn join_token(prefix: &str, id: Uuid, secret: &str) -> String {
    format!("{prefix}.{}.{secret}", id.simple())
}

/// A refresh token's parts, if it is well-formed.
fn parse(token: &str) -> Option<(Uuid, &str)> {
    split_token(token, TOKEN_PREFIX)
}

fn token(id: Uuid, secret: &str) -> String {
    join_token(TOKEN_PREFIX, id, secret)
}

/// Why a refresh token was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the refresh token is invalid, expired or revoked")]
    Invalid,
    /// The token had been exchanged before: its session is revoked.
    #[error("the refresh token was already used; its session has been revoked, sign in again")]
    Reused { user_id: UserId, session_id: Uuid },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who is signing in, as the request tells.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// Sessions with their lifetime.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    ttl: chrono::Duration,
    clock: Arc<dyn Clock>,
}

impl Sessions {
    /// `ttl`: how long a refresh token works unless it is exchanged.
    pub fn new(store: Arc<dyn SessionStore>, ttl: chrono::Duration) -> Self {
        Self {
            store,
            ttl,
            clock: crate::clock::system(),
        }
    }

    /// Sessions whose times come from `clock` (give the store the same clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The clock the sessions' times come from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Opens a session for `user_id`; returns it and its first refresh token.
    ///
    /// # Errors
    /// The store is unavailable.
    pub async fn open(&self, user_id: UserId, client: &Client) -> Result<(Session, String), StoreError> {
        let now = now(&*self.clock);
        let session = Session {
            id: Uuid::new_v4(),
            user_id,
            created_at: now,
            last_used_at: now,
            expires_at: now + self.ttl,
            user_agent: client.user_agent.as_ref().map(|ua| ua.chars().take(MAX_USER_AGENT).collect()),
            ip: client.ip.clone(),
        };
        let secret = fresh_secret();
        self.store.create(&session, &hash(&secret)).await?;
        Ok((session.clone(), token(session.id, &secret)))
    }

    /// Exchanges a refresh token for its session and the next refresh token.
    ///
    /// # Errors
    /// A malformed, unknown, expired or revoked token; a reused one (which revokes its session).
    pub async fn refresh(&self, refresh_token: &str) -> Result<(Session, String), RefreshError> {
        let (id, secret) = parse(refresh_token).ok_or(RefreshError::Invalid)?;
        let next = fresh_secret();
        let now = now(&*self.clock);
        match self.store.rotate(id, &hash(secret), &hash(&next), now, now + self.ttl).await? {
            Rotation::Rotated => {}
            Rotation::Reused { user_id } => {
                tracing::warn!(user = %user_id, session = %id, "A refresh token was used twice; its session is revoked.");
                return Err(RefreshError::Reused { user_id, session_id: id });
            }
            Rotation::Invalid => return Err(RefreshError::Invalid),
        }
        let session = self.store.get(id).await?.ok_or(RefreshError::Invalid)?;
        Ok((session, token(id, &next)))
    }

    /// The session a refresh token belongs to, if it is well-formed (not whether it is valid).
    pub fn session_of(refresh_token: &str) -> Option<Uuid> {
        parse(refresh_token).map(|(id, _)| id)
    }
}

struct Stored {
    session: Session,
    current: String,
    used: HashSet<String>,
}

/// Sessions in this process's memory: the embedded default. They end when the process does.
pub struct MemorySessions {
    sessions: Mutex<HashMap<Uuid, Stored>>,
    states: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
    clock: Arc<dyn Clock>,
}

impl Default for MemorySessions {
    fn default() -> Self {
        Self::with_clock(crate::clock::system())
    }
}

impl MemorySessions {
    /// Sessions and ceremony states that expire by `clock`'s time.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Stored>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.clock.now();
        sessions.retain(|_, stored| stored.session.expires_at > now);
        sessions
    }
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn create(&self, session: &Session, secret: &str) -> Result<(), StoreError> {
        self.locked().insert(
            session.id,
            Stored {
                session: session.clone(),
                current: secret.to_owned(),
                used: HashSet::new(),
            },
        );
        Ok(())
    }

    async fn rotate(
        &self,
        id: Uuid,
        presented: &str,
        next: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Rotation, StoreError> {
        let mut sessions = self.locked();
        let Some(stored) = sessions.get_mut(&id) else {
            return Ok(Rotation::Invalid);
        };
        if stored.current == presented {
            stored.used.insert(std::mem::replace(&mut stored.current, next.to_owned()));
            stored.session.last_used_at = now;
            stored.session.expires_at = expires_at;
            return Ok(Rotation::Rotated);
        }
        if stored.used.contains(presented) {
            let user_id = stored.session.user_id;
            sessions.remove(&id);
            return Ok(Rotation::Reused { user_id });
        }
        Ok(Rotation::Invalid)
    }

    async fn get(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        Ok(self.locked().get(&id).map(|s| s.session.clone()))
    }

    async fn list(&self, user_id: UserId) -> Result<Vec<Session>, StoreError> {
        let mut found: Vec<Session> = self
            .locked()
            .values()
            .filter(|s| s.session.user_id == user_id)
            .map(|s| s.session.clone())
            .collect();
        found.sort_by_key(|s| (s.created_at, s.id));
        Ok(found)
    }

    async fn revoke(&self, user_id: UserId, id: Uuid) -> Result<bool, StoreError> {
        let mut sessions = self.locked();
        if sessions.get(&id).is_some_and(|s| s.session.user_id == user_id) {
            sessions.remove(&id);
            return Ok(true);
        }
        Ok(false)
    }

    async fn revoke_all(&self, user_id: UserId) -> Result<u64, StoreError> {
        let mut sessions = self.locked();
        let before = sessions.len();
        sessions.retain(|_, s| s.session.user_id != user_id);
        Ok((before - sessions.len()) as u64)
    }

    async fn put_state(&self, key: &str, value: &str, ttl: std::time::Duration) -> Result<(), StoreError> {
        let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.clock.now();
        states.retain(|_, (_, until)| *until > now);
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        states.insert(key.to_owned(), (value.to_owned(), until));
        Ok(())
    }

    async fn take_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(states
            .remove(key)
            .filter(|(_, until)| *until > self.clock.now())
            .map(|(value, _)| value))
    }

    async fn peek_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(states
            .get(key)
            .filter(|(_, until)| *until > self.clock.now())
            .map(|(value, _)| value.clone()))
    }
}

/// Sessions in Redis, shared by every API process. Keys (under `namespace`):
/// `session:<id>` a hash of the session and its current secret's hash, `session:<id>:used` the
/// set of used secrets' hashes, `user:<id>:sessions` the set of a user's session ids. All expire
/// with the session; rotation is one Lua script, so two processes exchanging the same token
/// cannot both win.
pub struct RedisSessions {
    connection: redis::aio::ConnectionManager,
    namespace: String,
}

impl RedisSessions {
    /// Ceremony state under `key`, read with `command` (`GET`, or `GETDEL` to take it).
    async fn read_state(&self, command: &str, key: &str) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd(command)
            .arg(format!("{}state:{key}", self.namespace))
            .query_async(&mut connection)
            .await
            .map_err(redis_error)
    }
}

const ROTATE: &str = r"
local current = redis.call('HGET', KEYS[1], 'current')
if not current then return {'0'} end
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'current', ARGV[2], 'last_used', ARGV[3], 'expires', ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  redis.call('PEXPIREAT', KEYS[2], ARGV[4])
  local user_key = ARGV[5] .. 'user:' .. redis.call('HGET', KEYS[1], 'user') .. ':sessions'
  if redis.call('PEXPIRETIME', user_key) < tonumber(ARGV[4]) then redis.call('PEXPIREAT', user_key, ARGV[4]) end
  return {'1'}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  local user = redis.call('HGET', KEYS[1], 'user')
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', ARGV[5] .. 'user:' .. user .. ':sessions', ARGV[6])
  return {'2', user}
end
return {'0'}
";

const REVOKE: &str = r"
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
";

/// A connection to the Redis at `url` that reconnects on its own.
///
/// # Errors
/// A malformed URL or an unreachable server.
pub async fn redis_connection(url: &str) -> Result<redis::aio::ConnectionManager, StoreError> {
    let client = redis::Client::open(url).map_err(redis_error)?;
    client.get_connection_manager().await.map_err(redis_error)
}

fn redis_error(err: redis::RedisError) -> StoreError {
    StoreError(err.to_string())
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl RedisSessions {
    /// On an open connection (see `sessions::redis_connection`); every key goes under `namespace`
    /// (e.g. `cloudsync:`).
    pub fn new(connection: redis::aio::ConnectionManager, namespace: &str) -> Self {
        Self {
            connection,
            namespace: namespace.to_owned(),
        }
    }

    fn session_key(&self, id: Uuid) -> String {
        format!("{}session:{}", self.namespace, id.simple())
    }

    fn used_key(&self, id: Uuid) -> String {
        format!("{}session:{}:used", self.namespace, id.simple())
    }

    fn user_key(&self, user_id: UserId) -> String {
        format!("{}user:{}:sessions", self.namespace, user_id.as_uuid().simple())
    }

    fn decode(id: Uuid, fields: &HashMap<String, String>) -> Option<Session> {
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
        let expires_at = from_ms(number("expires")?);
        if expires_at <= Utc::now() {
            return None;
        }
        Some(Session {
            id,
            user_id: UserId::from_uuid(Uuid::parse_str(fields.get("user")?).ok()?),
            created_at: from_ms(number("created")?),
            last_used_at: from_ms(number("last_used")?),
            expires_at,
            user_agent: fields.get("ua").filter(|v| !v.is_empty()).cloned(),
            ip: fields.get("ip").filter(|v| !v.is_empty()).cloned(),
        })
    }
}

#[async_trait]
impl SessionStore for RedisSessions {
    async fn create(&self, session: &Session, secret: &str) -> Result<(), StoreError> {
        let key = self.session_key(session.id);
        let user_key = self.user_key(session.user_id);
        let expires = session.expires_at.timestamp_millis();
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("user", session.user_id.as_uuid().simple().to_string()),
                    ("created", session.created_at.timestamp_millis().to_string()),
                    ("last_used", session.last_used_at.timestamp_millis().to_string()),
                    ("expires", expires.to_string()),
                    ("ua", session.user_agent.clone().unwrap_or_default()),
                    ("ip", session.ip.clone().unwrap_or_default()),
                    ("current", secret.to_owned()),
                ],
            )
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(expires)
            .sadd(&user_key, session.id.simple().to_string())
            .cmd("PEXPIREAT")
            .arg(&user_key)
            .arg(expires)
            .arg("GT")
            .cmd("PEXPIREAT")
            .arg(&user_key)
            .arg(expires)
            .arg("NX")
            .query_async::<()>(&mut connection)
            .await
            .map_err(redis_error)
    }

    async fn rotate(
        &self,
        id: Uuid,
        presented: &str,
        next: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Rotation, StoreError> {
        let mut connection = self.connection.clone();
        let answer: Vec<String> = redis::Script::new(ROTATE)
            .key(self.session_key(id))
            .key(self.used_key(id))
            .arg(presented)
            .arg(next)
            .arg(now.timestamp_millis())
            .arg(expires_at.timestamp_millis())
            .arg(&self.namespace)
            .arg(id.simple().to_string())
            .invoke_async(&mut connection)
            .await
            .map_err(redis_error)?;
        Ok(match answer.as_slice() {
            [one] if one == "1" => Rotation::Rotated,
            [two, user] if two == "2" => Rotation::Reused {
                user_id: UserId::from_uuid(Uuid::parse_str(user).map_err(|_| StoreError("a stored session is malformed".into()))?),
            },
            _ => Rotation::Invalid,
        })
    }

    async fn get(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        let mut connection = self.connection.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.session_key(id))
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        Ok(Self::decode(id, &fields))
    }

    async fn list(&self, user_id: UserId) -> Result<Vec<Session>, StoreError> {
        let mut connection = self.connection.clone();
        let user_key = self.user_key(user_id);
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&user_key)
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        let mut found = Vec::new();
        for raw in ids {
            let Ok(id) = Uuid::parse_str(&raw) else { continue };
            match self.get(id).await? {
                Some(session) if session.user_id == user_id => found.push(session),
                // Expired on its own: its id goes too.
                _ => {
                    redis::cmd("SREM")
                        .arg(&user_key)
                        .arg(&raw)
                        .query_async::<()>(&mut connection)
                        .await
                        .map_err(redis_error)?;
                }
            }
        }
        found.sort_by_key(|s| (s.created_at, s.id));
        Ok(found)
    }

    async fn revoke(&self, user_id: UserId, id: Uuid) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let revoked: i64 = redis::Script::new(REVOKE)
            .key(self.session_key(id))
            .key(self.used_key(id))
            .key(self.user_key(user_id))
            .arg(user_id.as_uuid().simple().to_string())
            .arg(id.simple().to_string())
            .invoke_async(&mut connection)
            .await
            .map_err(redis_error)?;
        Ok(revoked == 1)
    }

    async fn put_state(&self, key: &str, value: &str, ttl: std::time::Duration) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("SET")
            .arg(format!("{}state:{key}", self.namespace))
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async::<()>(&mut connection)
            .await
            .map_err(redis_error)
    }

    async fn take_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read_state("GETDEL", key).await
    }

    async fn peek_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read_state("GET", key).await
    }

    async fn revoke_all(&self, user_id: UserId) -> Result<u64, StoreError> {
        let mut count = 0;
        for session in self.list(user_id).await? {
            if self.revoke(user_id, session.id).await? {
                count += 1;
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_parse_only_when_well_formed() {
        let id = Uuid::new_v4();
        let secret = fresh_secret();
        assert_eq!(parse(&token(id, &secret)), Some((id, secret.as_str())));
        assert_eq!(parse(""), None);
        assert_eq!(parse("csr1.nope.nope"), None);
        assert_eq!(parse(&format!("csr2.{}.{secret}", id.simple())), None);
        assert_eq!(parse(&format!("csr1.{}.{}", id.simple(), &secret[1..])), None);
        assert_eq!(parse(&format!("csr1.{}.{}!", id.simple(), &secret[1..])), None);
    }
}
