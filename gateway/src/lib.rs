//! The `cloudsync` service: configuration, the GraphQL API over HTTP and WebSocket, the server that
//! owns every background task, and the command line. The only crate that serves HTTP; who the
//! caller is and what they may do is `cloudsync-identity`'s.

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod errors;
pub mod graphql;
pub mod history;
pub mod http;
pub mod metrics;
pub mod reporting;
pub mod root;

pub use app::App;
pub use config::{Config, OAuthAppConfig};
pub use root::{Server, start};
