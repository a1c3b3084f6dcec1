//! Single sign-on: OpenID Connect and SAML sign-ins, and the account lookup they share.

pub mod oidc;
pub mod saml;
