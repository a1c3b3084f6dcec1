//! End-to-end tests: the real server (router, projectors, job runner) on a loopback port, driven over
//! HTTP and WebSocket, once on SQLite and once on PostgreSQL, each test with its own database.

mod audit;
mod caches;
mod content;
mod duplicates;
mod export;
mod faults;
mod harness;
mod identity;
mod indexing;
mod isolation;
mod meaning;
mod metrics;
mod oauth;
mod pictures;
mod providers;
mod search;
mod spine;
mod sync;
