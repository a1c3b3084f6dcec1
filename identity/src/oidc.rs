//! Signing in with an OpenID Connect provider: the authorization-code flow with PKCE (`oauth2`),
//! a `state` that works once and a `nonce` bound to the ID token, whose signature (the provider's
//! published keys), issuer, audience and expiry are verified. The provider's endpoints come from
//! its discovery document; its keys are fetched again when a token names one not seen yet.
//! When the ID token carries no address, the provider's userinfo endpoint is asked for it (and
//! must be about the same subject).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use oauth2::basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, ExtraTokenFields, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

/// One OpenID provider people may sign in with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL (its discovery document is `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// Default: `openid email profile`.
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdTokenField {
    id_token: String,
}

impl ExtraTokenFields for IdTokenField {}

type TokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;
type Client = oauth2::Client<
    BasicErrorResponse,
    TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
}

struct Provider {
    config: OidcConfig,
    discovery: RwLock<Option<Discovery>>,
    keys: RwLock<JwkSet>,
}

/// What a verified ID token says about the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    /// Whether the verified address may link the identity to an existing account with it (an
    /// OpenID provider's `email_verified`; a SAML provider only where so configured).
    pub links_existing: bool,
}

/// A started sign-in: where to send the browser, and what the callback needs to finish it.
pub struct Started {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    #[serde(default)]
    nonce: Option<String>,
}

/// The client for an identity provider's endpoints. It follows no redirects: following one from a
/// token or metadata endpoint would open the door to SSRF.
pub fn http_client() -> Result<reqwest::Client, SsoError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(invalid)
}

/// The configured OpenID providers.
pub struct OidcLogin {
    providers: HashMap<String, Provider>,
    redirect: RedirectUrl,
    http: reqwest::Client,
}

/// Why a single sign-on (OpenID Connect or SAML) could not begin or finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsoError {
    /// This server's settings for the provider are unusable.
    #[error("{0}")]
    Config(String),
    /// No provider of that name is configured.
    #[error("{0}")]
    Unknown(String),
    /// The provider could not be reached, or answered with something unusable.
    #[error("{0}")]
    Provider(String),
    /// The sign-in is refused: a code, token or assertion that does not verify or does not fit.
    #[error("{0}")]
    Refused(String),
}

/// A setting (or a value built from one) that the library refuses.
pub fn invalid(why: impl std::fmt::Display) -> SsoError {
    SsoError::Config(why.to_string())
}

impl OidcLogin {
    /// The providers of `configs`, calling back to `redirect` (`<public_url>/auth/oidc/callback`).
    ///
    /// # Errors
    /// A malformed redirect URL.
    pub fn new(configs: &BTreeMap<String, OidcConfig>, redirect: &str) -> Result<Self, SsoError> {
        let providers = configs
            .iter()
            .map(|(name, config)| {
                (
                    name.clone(),
                    Provider {
                        config: config.clone(),
                        discovery: RwLock::new(None),
                        keys: RwLock::new(JwkSet { keys: Vec::new() }),
                    },
                )
            })
            .collect();
        let http = http_client()?;
        Ok(Self {
            providers,
            redirect: RedirectUrl::new(redirect.to_owned()).map_err(invalid)?,
            http,
        })
    }

    /// A JSON document of the provider's (`what` names it in errors).
    async fn fetch<T: serde::de::DeserializeOwned>(&self, url: &str, bearer: Option<&str>, what: &str) -> Result<T, SsoError> {
        let mut request = self.http.get(url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|err| SsoError::Provider(format!("the OpenID provider's {what} ({url}): {err}")))?
            .json()
            .await
            .map_err(|err| SsoError::Provider(format!("the OpenID provider's {what} is malformed: {err}")))
    }

    fn provider(&self, name: &str) -> Result<&Provider, SsoError> {
        self.providers
            .get(name)
            .ok_or_else(|| SsoError::Unknown(format!("no OpenID provider named {name:?} is configured on this server")))
    }

    async fn discovery(&self, provider: &Provider) -> Result<Discovery, SsoError> {
        if let Some(found) = provider.discovery.read().await.clone() {
            return Ok(found);
        }
        let url = format!("{}/.well-known/openid-configuration", provider.config.issuer.trim_end_matches('/'));
        let found: Discovery = self.fetch(&url, None, "discovery document").await?;
        if found.issuer.trim_end_matches('/') != provider.config.issuer.trim_end_matches('/') {
            return Err(SsoError::Provider(format!(
                "the discovery document names another issuer ({})",
                found.issuer
            )));
        }
        *provider.discovery.write().await = Some(found.clone());
        Ok(found)
    }

    fn client(&self, provider: &Provider, discovery: &Discovery) -> Result<Client, SsoError> {
        let mut client = oauth2::Client::new(ClientId::new(provider.config.client_id.clone()))
            .set_auth_uri(AuthUrl::new(discovery.authorization_endpoint.clone()).map_err(invalid)?)
            .set_token_uri(TokenUrl::new(discovery.token_endpoint.clone()).map_err(invalid)?)
            .set_redirect_uri(self.redirect.clone());
        if let Some(secret) = &provider.config.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        Ok(client)
    }

    /// Starts signing in with provider `name`.
    ///
    /// # Errors
    /// An unknown provider, or one whose discovery document cannot be read.
    pub async fn begin(&self, name: &str) -> Result<Started, SsoError> {
        let provider = self.provider(name)?;
        let discovery = self.discovery(provider).await?;
        let client = self.client(provider, &discovery)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random();
        let scopes = provider
            .config
            .scopes
            .clone()
            .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scopes.into_iter().map(Scope::new))
            .set_pkce_challenge(challenge)
            .add_extra_param("nonce", nonce.secret().clone())
            .url();
        Ok(Started {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges the code and verifies the ID token it brings.
    ///
    /// # Errors
    /// A refused exchange or a token that does not verify, saying why.
    pub async fn finish(&self, name: &str, code: &str, verifier: &str, nonce: &str) -> Result<Identity, SsoError> {
        let provider = self.provider(name)?;
        let discovery = self.discovery(provider).await?;
        let client = self.client(provider, &discovery)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|err| SsoError::Refused(format!("the OpenID provider refused the code: {err}")))?;
        let mut identity = self.verify(provider, &discovery, &response.extra_fields().id_token, nonce).await?;
        if identity.email.is_none()
            && let Some(userinfo) = &discovery.userinfo_endpoint
        {
            // Providers may keep claims out of the ID token when an access token can fetch them.
            let bearer = oauth2::TokenResponse::access_token(&response).secret();
            let info: Claims = self.fetch(userinfo, Some(bearer), "userinfo").await?;
            if info.sub != identity.subject {
                return Err(SsoError::Refused("the provider's userinfo is about someone else".into()));
            }
            identity.email = info.email;
            identity.email_verified = info.email_verified.unwrap_or(false);
        }
        Ok(identity)
    }

    async fn key(&self, provider: &Provider, discovery: &Discovery, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, SsoError> {
        let pick = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None => set.keys.first().cloned(),
        };
        if let Some(key) = pick(&*provider.keys.read().await) {
            return Ok(key);
        }
        let fetched: JwkSet = self.fetch(&discovery.jwks_uri, None, "keys").await?;
        let key = pick(&fetched);
        *provider.keys.write().await = fetched;
        key.ok_or_else(|| SsoError::Refused("the ID token was signed with a key the provider does not publish".into()))
    }

    async fn verify(&self, provider: &Provider, discovery: &Discovery, id_token: &str, nonce: &str) -> Result<Identity, SsoError> {
        let header = jsonwebtoken::decode_header(id_token).map_err(|_| SsoError::Refused("the ID token is malformed".into()))?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(SsoError::Refused(format!(
                "the ID token's algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let jwk = self.key(provider, discovery, header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|err| SsoError::Provider(format!("the provider's key is unusable: {err}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[discovery.issuer.as_str()]);
        validation.set_audience(&[provider.config.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<Claims>(id_token, &key, &validation)
            .map_err(|err| SsoError::Refused(format!("the ID token does not verify: {err}")))?
            .claims;
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(SsoError::Refused("the ID token was not issued for this sign-in (nonce)".into()));
        }
        Ok(Identity {
            issuer: discovery.issuer.clone(),
            subject: claims.sub,
            email: claims.email,
            email_verified: claims.email_verified.unwrap_or(false),
            links_existing: true,
        })
    }
}
