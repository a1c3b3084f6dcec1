//! Who the caller is and what they may do: passwords, access tokens and their signing keys, roles
//! and scopes, API tokens, sessions (in memory or Redis), rate limits (in memory or Redis), the mail
//! and text senders, and single sign-on (OpenID Connect and SAML). No HTTP server and no GraphQL:
//! the gateway adapts these to its API.

pub mod access;
pub mod auth;
pub mod keys;
pub mod limits;
pub mod login;
pub mod mail;
pub mod oidc;
pub mod passwords;
pub mod saml;
pub mod sessions;
pub mod signin;
#[cfg(feature = "testing")]
pub mod testing;

/// The clock identity's rules read (defined in `domain`, where the commands' rules read it too).
pub use cloudsync_domain::clock;
