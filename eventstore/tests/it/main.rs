//! The event store contract suite: every test runs against SQLite and PostgreSQL.

mod contract;
