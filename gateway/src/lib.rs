//! The `cloudsync` service: configuration, authentication, the GraphQL API over HTTP and WebSocket,
//! the server that owns every background task, and the command line. The only crate that speaks HTTP.

pub mod access;
pub mod auth;
pub mod cli;
pub mod config;
pub mod errors;
pub mod keys;
pub mod limits;
pub mod mail;
pub mod oidc;
pub mod passwords;
pub mod saml;
pub mod schema;
pub mod server;
pub mod sessions;

pub use config::{Config, OAuthAppConfig};
pub use server::{App, Server, start};
