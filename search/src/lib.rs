//! Full-text search over every indexed file: what a search index holds ([`SearchDoc`]), how it is
//! asked ([`SearchRequest`], parsed from a query string by [`query`]), and the [`SearchIndex`] trait
//! with its embedded backend ([`TantivyIndex`], a folder in the data dir) and its scale backend
//! ([`ElasticIndex`], Elasticsearch 8 over its REST API). Both index the same tokens, made here by
//! [`analysis`] (folding, name splitting, per-language stemming), so they find the same files; the
//! highlights are cut here too ([`highlight`]), from the text each index keeps.
//!
//! The [`projector`] follows the log and keeps one index per installation, its checkpoint stored in
//! that index (a tantivy commit's payload; a document of the Elasticsearch index).

pub mod analysis;
mod cache;
mod doc;
mod elastic;
mod engine;
mod follow;
pub mod highlight;
pub mod meaning;
pub mod projector;
pub mod query;
mod tantivy_index;
pub mod vectors;

pub use cache::QueryCache;
pub use doc::{Content, Picture, SearchDoc, extension_of, kind_of, size_bucket};
pub use elastic::ElasticIndex;
pub use engine::{Engine, Search};
pub use projector::{LiveSearch, SearchProjector, TextSource, rebuild};
pub use tantivy_index::TantivyIndex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudsync_domain::{FileId, ProviderId, UserId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SearchError {
    #[error("the search index: {0}")]
    Index(String),
    #[error("the search server: {0}")]
    Server(String),
    #[error("the query: {0}")]
    Query(String),
    /// The index was made by an earlier version with other fields: a new one is built.
    #[error("the search index has an older layout: {0}")]
    Outdated(String),
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(err: tantivy::TantivyError) -> Self {
        Self::Index(err.to_string())
    }
}

impl From<reqwest::Error> for SearchError {
    fn from(err: reqwest::Error) -> Self {
        Self::Server(err.without_url().to_string())
    }
}

pub type SearchResult<T> = Result<T, SearchError>;

/// What narrows a search besides its query string (all optional; every set one must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub providers: Vec<ProviderId>,
    pub path_prefix: Option<String>,
    /// Lower-case, without the dot.
    pub extensions: Vec<String>,
    pub mime_types: Vec<String>,
    pub kinds: Vec<String>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    pub modified_after: Option<DateTime<Utc>>,
    pub modified_before: Option<DateTime<Utc>>,
    pub languages: Vec<String>,
    /// Pictures with any of these labels (as the classifier names them).
    pub labels: Vec<String>,
    /// Pictures taken in this range (their EXIF time read as UTC).
    pub taken_after: Option<DateTime<Utc>>,
    pub taken_before: Option<DateTime<Utc>>,
    /// Only these files (how searches by meaning ask for the filters and facets of their ranking).
    pub files: Option<Vec<FileId>>,
}

/// One search, always of one owner's files.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub owner: UserId,
    pub query: query::Query,
    pub filters: Filters,
    pub offset: usize,
    pub limit: usize,
}

/// A field of a hit with its matched words wrapped in `<mark>…</mark>` (the rest HTML-escaped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Highlight {
    pub field: String,
    pub snippet: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub file_id: FileId,
    pub score: f32,
    pub highlights: Vec<Highlight>,
}

/// Counts of the matching files by one property, largest first (ties by value).
pub type FacetCounts = Vec<(String, u64)>;

/// Exact counts over every file the search matched (not only the page).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facets {
    pub providers: FacetCounts,
    pub extensions: FacetCounts,
    pub kinds: FacetCounts,
    pub size_buckets: FacetCounts,
    pub years: FacetCounts,
    pub languages: FacetCounts,
    pub labels: FacetCounts,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    pub total: u64,
    pub hits: Vec<Hit>,
    pub facets: Facets,
}

/// One batch of changes, applied together with the checkpoint it reaches.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub upserts: Vec<SearchDoc>,
    pub deletes: Vec<FileId>,
    /// Accounts whose every document goes (erasure).
    pub erased: Vec<UserId>,
    /// Providers whose every document goes (disconnected).
    pub removed_providers: Vec<ProviderId>,
    /// The log position this batch brings the index to.
    pub checkpoint: i64,
}

/// A search index. Both backends pass `tests/it/contract.rs`.
#[async_trait]
pub trait SearchIndex: Send + Sync {
    /// The documents of these files that the index holds (missing ones are left out).
    async fn get(&self, ids: &[FileId]) -> SearchResult<Vec<SearchDoc>>;
    /// Applies a batch: the checkpoint is durable only together with the documents before it (on a
    /// crash the index comes back at an earlier checkpoint, and replaying from there is harmless).
    async fn apply(&self, batch: Batch) -> SearchResult<()>;
    /// The log position everything before which is in the index (0: nothing yet).
    async fn checkpoint(&self) -> SearchResult<i64>;
    async fn search(&self, request: &SearchRequest) -> SearchResult<SearchResults>;
    /// How many documents the index holds, every owner's.
    async fn count(&self) -> SearchResult<u64>;
}
