//! The search index contract suite (every test on tantivy and on Elasticsearch) and the projector
//! over a real event store.

mod contract;
mod projector;
