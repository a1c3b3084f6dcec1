//! The search index contract suite (every test on tantivy and on Elasticsearch), the vector index
//! contract suite (embedded and pgvector), and the projector over a real event store.

mod contract;
mod projector;
mod vectors;
