//! Answers kept for repeated searches, in a [`Cache`] that every API process shares when Redis is
//! configured. An answer is kept under the index position it was computed at (part of the key): once
//! an event is indexed the position moves and no later search finds the answers of before, so the
//! log's events are what invalidate them, on every replica at once. What is left behind expires.

use std::sync::Arc;
use std::time::Duration;

use cloudsync_cache::Cache;

use crate::SearchResults;

/// Answers larger than this are not kept (a page of hits with highlights is a few kilobytes).
const MAX_KEPT: usize = 1 << 20;

pub struct QueryCache {
    cache: Arc<dyn Cache>,
    ttl: Duration,
}

impl QueryCache {
    /// Answers kept in `cache` for at most `ttl`.
    pub fn new(cache: Arc<dyn Cache>, ttl: Duration) -> Self {
        Self { cache, ttl }
    }

    fn key(position: i64, key: &str) -> String {
        format!("search:{position}:{}", blake3::hash(key.as_bytes()).to_hex())
    }

    /// The answer kept for `key` at index position `position`, if any.
    pub async fn get(&self, position: i64, key: &str) -> Option<SearchResults> {
        match self.cache.get(&Self::key(position, key)).await {
            Ok(Some(kept)) => serde_json::from_slice(&kept).ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!(error = %err, "Search cache unavailable; searching.");
                None
            }
        }
    }

    pub async fn put(&self, position: i64, key: &str, results: &SearchResults) {
        let Ok(encoded) = serde_json::to_vec(results) else { return };
        if encoded.len() > MAX_KEPT {
            return;
        }
        if let Err(err) = self.cache.put(&Self::key(position, key), &encoded, self.ttl).await {
            tracing::debug!(error = %err, "Search answer not kept.");
        }
    }
}

#[cfg(test)]
mod tests {
    use cloudsync_cache::MemoryCache;

    use super::*;

    #[tokio::test]
    async fn a_new_position_finds_nothing_of_before() {
        let cache = QueryCache::new(Arc::new(MemoryCache::new(10)), Duration::from_secs(60));
        let answer = SearchResults {
            total: 3,
            hits: vec![crate::Hit {
                file_id: cloudsync_domain::FileId::from_uuid(uuid::Uuid::now_v7()),
                score: 1.5,
                highlights: vec![crate::Highlight {
                    field: "name".into(),
                    snippet: "<mark>a</mark>".into(),
                }],
            }],
            facets: crate::Facets {
                labels: vec![("cat".into(), 2)],
                ..crate::Facets::default()
            },
        };
        cache.put(5, "q", &answer).await;
        assert_eq!(cache.get(5, "q").await, Some(answer.clone()), "kept whole");
        assert_eq!(cache.get(6, "q").await, None, "not found once the index moved on");
        assert_eq!(cache.get(5, "other").await, None);
    }
}
