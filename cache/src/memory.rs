//! The embedded cache: a map in this process, bounded by a number of entries. When it is full, the
//! expired entries go first, then the oldest written.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{Cache, CacheError};

pub struct MemoryCache {
    capacity: usize,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Key → (value, when it expires, the write's number).
    entries: HashMap<String, (Vec<u8>, Instant, u64)>,
    /// Keys in the order written, with the write's number (an older write of a key written again is
    /// skipped when evicting).
    order: VecDeque<(String, u64)>,
    writes: u64,
}

impl MemoryCache {
    /// A cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            kept: Mutex::new(Kept::default()),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Kept {
    fn make_room(&mut self, capacity: usize) {
        if self.entries.len() < capacity {
            return;
        }
        let now = Instant::now();
        self.entries.retain(|_, (_, expires, _)| *expires > now);
        let entries = &self.entries;
        self.order
            .retain(|(key, write)| entries.get(key).is_some_and(|(_, _, w)| w == write));
        while self.entries.len() >= capacity {
            let Some((key, write)) = self.order.pop_front() else { break };
            if self.entries.get(&key).is_some_and(|(_, _, w)| *w == write) {
                self.entries.remove(&key);
            }
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let mut kept = self.kept();
        match kept.entries.get(key) {
            Some((value, expires, _)) if *expires > Instant::now() => Ok(Some(value.clone())),
            Some(_) => {
                kept.entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let mut guard = self.kept();
        let kept = &mut *guard;
        if !kept.entries.contains_key(key) {
            kept.make_room(self.capacity);
        }
        kept.writes += 1;
        let write = kept.writes;
        let now = Instant::now();
        // A time to live past what `Instant` can hold is as good as forever: a year.
        let expires = now
            .checked_add(ttl.max(Duration::from_millis(1)))
            .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
        kept.entries.insert(key.to_owned(), (value.to_vec(), expires, write));
        kept.order.push_back((key.to_owned(), write));
        // Rewrites of hot keys leave older order entries behind; drop them now and then.
        if kept.order.len() > 2 * self.capacity {
            let entries = &kept.entries;
            let order = std::mem::take(&mut kept.order);
            let order: VecDeque<_> = order
                .into_iter()
                .filter(|(key, write)| entries.get(key).is_some_and(|(_, _, w)| w == write))
                .collect();
            kept.order = order;
        }
        Ok(())
    }

    async fn remove(&self, keys: &[String]) -> Result<(), CacheError> {
        let mut kept = self.kept();
        for key in keys {
            kept.entries.remove(key);
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        false
    }
}
