//! Rate limits: a token bucket per key (a user, an IP address, an account being logged into) and
//! route class, kept as GCRA's "theoretical arrival time" so one number per key is the whole
//! state. In this process's memory by default; in Redis when configured, where one Lua script
//! decides on the server's clock, so every API process shares the same buckets.
//!
//! The HTTP handler charges every request to its user or IP address (429 with `Retry-After` when
//! empty); resolvers also charge logins, registrations, second factors and resets per IP address
//! and per account. An unreachable store lets requests through, logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::sessions::StoreError;

/// A class of requests and its budget: `per_minute` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub class: &'static str,
    pub per_minute: u32,
    pub burst: u32,
}

impl Rule {
    /// Milliseconds between two requests at the average rate.
    fn interval_ms(self) -> i64 {
        60_000 / i64::from(self.per_minute.max(1))
    }

    /// How far ahead of now the bucket may be booked: a full burst.
    fn tolerance_ms(self) -> i64 {
        self.interval_ms() * i64::from(self.burst.max(1))
    }
}

/// One decision step of GCRA on `tat` (the stored time, ms) at `now`: the new time to store, or
/// how long to wait.
fn decide(tat: Option<i64>, now: i64, rule: Rule) -> Result<i64, Duration> {
    let booked = tat.unwrap_or(now).max(now) + rule.interval_ms();
    let allowed_from = booked - rule.tolerance_ms();
    if now < allowed_from {
        return Err(Duration::from_millis(u64::try_from(allowed_from - now).unwrap_or(0)));
    }
    Ok(booked)
}

/// Where buckets live. Both implementations pass one contract suite.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Takes one token from `key`'s bucket under `rule`; `Some(wait)` when it is empty.
    async fn take(&self, key: &str, rule: Rule) -> Result<Option<Duration>, StoreError>;
}

/// Buckets in this process's memory.
pub struct MemoryLimiter {
    buckets: Mutex<HashMap<String, i64>>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::with_clock(crate::clock::system())
    }
}

impl MemoryLimiter {
    /// Buckets that fill up by `clock`'s time.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            clock,
        }
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn take(&self, key: &str, rule: Rule) -> Result<Option<Duration>, StoreError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Read under the lock: a time read before it may be older than the one another request
        // stored meanwhile, and would wait for it.
        let now = self.clock.now_ms();
        if buckets.len() > 100_000 {
            // Buckets whose time has passed are full again: forgetting them changes nothing.
            buckets.retain(|_, tat| *tat > now);
        }
        let full_key = format!("{}:{key}", rule.class);
        match decide(buckets.get(&full_key).copied(), now, rule) {
            Ok(tat) => {
                buckets.insert(full_key, tat);
                Ok(None)
            }
            Err(wait) => Ok(Some(wait)),
        }
    }
}

/// Buckets in Redis (`<namespace>rate:<class>:<key>`), each expiring when it would be full again.
pub struct RedisLimiter {
    connection: redis::aio::ConnectionManager,
    namespace: String,
}

const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local booked = tat + interval
local allowed_from = booked - tolerance
if now < allowed_from then return allowed_from - now end
redis.call('SET', KEYS[1], booked, 'PX', booked - now)
return -1
";

impl RedisLimiter {
    /// On an open connection (see `sessions::redis_connection`); every key goes under `namespace`
    /// (e.g. `cloudsync:`).
    pub fn new(connection: redis::aio::ConnectionManager, namespace: &str) -> Self {
        Self {
            connection,
            namespace: namespace.to_owned(),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn take(&self, key: &str, rule: Rule) -> Result<Option<Duration>, StoreError> {
        let mut connection = self.connection.clone();
        let wait: i64 = redis::Script::new(TAKE)
            .key(format!("{}rate:{}:{key}", self.namespace, rule.class))
            .arg(rule.interval_ms())
            .arg(rule.tolerance_ms())
            .invoke_async(&mut connection)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok((wait >= 0).then(|| Duration::from_millis(u64::try_from(wait).unwrap_or(0))))
    }
}

/// The budgets of each route class.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Every GraphQL request, per user (or per IP address when anonymous).
    pub api: Rule,
    /// Password logins, registrations, second factors and password resets: per IP address, and
    /// per account for logins and resets (what slows a password guesser down).
    pub login: Rule,
    /// Text messages (second-factor codes), per user.
    pub sms: Rule,
}

impl Rules {
    pub fn new(api_per_minute: u32, login_per_minute: u32) -> Self {
        Self {
            api: Rule {
                class: "api",
                per_minute: api_per_minute,
                burst: api_per_minute.div_ceil(4).max(1),
            },
            login: Rule {
                class: "login",
                per_minute: login_per_minute,
                burst: login_per_minute.max(1),
            },
            sms: Rule {
                class: "sms",
                per_minute: 2,
                burst: 3,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rule = Rule {
            class: "t",
            per_minute: 60,
            burst: 3,
        };
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(decide(tat, 0, rule).expect("within the burst"));
        }
        assert_eq!(decide(tat, 0, rule), Err(Duration::from_secs(1)));
        assert_eq!(decide(tat, 999, rule), Err(Duration::from_millis(1)));
        let later = decide(tat, 1000, rule).expect("a token came back after a second");
        assert!(decide(Some(later), 1000, rule).is_err());
        assert!(decide(Some(later), 60_000, rule).is_ok(), "full again");
    }
}
