//! Answers kept for repeated searches. An answer is kept for the index position it was computed at;
//! once the index moves past it (any new event indexed), every kept answer is dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::SearchResults;

pub struct QueryCache {
    kept: Mutex<(i64, HashMap<String, SearchResults>)>,
    capacity: usize,
}

impl QueryCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            kept: Mutex::new((0, HashMap::new())),
            capacity,
        }
    }

    /// The answer kept for `key` at index position `position`, if any.
    pub fn get(&self, position: i64, key: &str) -> Option<SearchResults> {
        let mut kept = self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.0 != position {
            *kept = (position, HashMap::new());
            return None;
        }
        kept.1.get(key).cloned()
    }

    pub fn put(&self, position: i64, key: String, results: SearchResults) {
        let mut kept = self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.0 != position {
            *kept = (position, HashMap::new());
        }
        if kept.1.len() >= self.capacity {
            kept.1.clear();
        }
        kept.1.insert(key, results);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_position_drops_what_was_kept() {
        let cache = QueryCache::new(2);
        let answer = SearchResults {
            total: 3,
            ..SearchResults::default()
        };
        cache.put(5, "q".into(), answer.clone());
        assert_eq!(cache.get(5, "q"), Some(answer));
        assert_eq!(cache.get(6, "q"), None);
        assert_eq!(cache.get(5, "q"), None, "gone once the index moved on");
    }
}
