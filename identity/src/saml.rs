//! Signing in with a SAML 2.0 identity provider: the Web Browser SSO profile, begun by CloudSync
//! (the service provider) with an `AuthnRequest` over HTTP-Redirect and answered by the provider
//! with a `Response` posted to `<public_url>/auth/saml/acs`. `saml-rs` (pure Rust, XML-DSig through
//! `bergshamra`) checks the signature against the provider's metadata key (RSA-SHA2 only, one
//! `#id` reference, exclusive canonicalisation; the Response or the Assertion signed), that the
//! answer is to this very request (`InResponseTo`), for this service provider (audience), at this
//! endpoint (destination, recipient), from the expected issuer and within its validity window.
//! Each request can be answered once: its correlation state is taken when the answer arrives.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use saml_rs::{
    AcsEndpoint, AudienceValidationPolicy, BrowserInput, EntityId, FormField, IdpDescriptor, MetadataTrustPolicy, PendingAuthnRequest,
    PendingSnapshot, RelayStateParam, ReplayPolicy, Saml, SamlInstant, SamlValidationContext, Sp, SpConfig, SpValidationPolicy,
    SsoResponse, StartSso, XmlSignatureProfile,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::oidc::{Identity, SsoError, invalid};

/// One SAML identity provider people may sign in with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamlConfig {
    /// The provider's metadata: an `http(s)://` URL, or a file. Its signing certificate is the
    /// one trusted, so it must come from a source the operator trusts.
    pub metadata: String,
    /// Whether the address the provider asserts is taken as verified: it then links the identity
    /// to the account with that address, or opens a new account. Default: no (the person signs in
    /// with a password once and links the identity from there).
    pub trust_email: bool,
    /// Whether the trusted address also links the identity to an existing account with that
    /// address. Default: no (only for a provider that verifies every address it asserts: otherwise
    /// whoever can sign up there with someone's address takes over their account here).
    pub link_existing: bool,
    /// The attribute holding the address. Default: the usual ones (`mail`, `email`, the OID
    /// `0.9.2342.19200300.100.1.3` and the WS-Federation `emailaddress` claim).
    pub email_attribute: Option<String>,
}

/// Attributes that usually carry the address, in the order they are tried.
const EMAIL_ATTRIBUTES: [&str; 5] = [
    "urn:oid:0.9.2342.19200300.100.1.3",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    "mail",
    "email",
    "emailAddress",
];

/// How long the provider's metadata is used before it is read again (its keys may rotate).
const METADATA_TTL: std::time::Duration = std::time::Duration::from_secs(60 * 60);

struct Provider {
    config: SamlConfig,
    /// The metadata, and when it was read.
    idp: RwLock<Option<(std::time::Instant, Arc<IdpDescriptor>)>>,
}

/// Whether the metadata may come from `source`: a file, an `https://` URL, or plain `http://` only
/// on this machine's loopback (anyone on the path could swap in their own key otherwise).
pub fn metadata_source_allowed(source: &str) -> bool {
    match source.strip_prefix("http://") {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
            matches!(host, "127.0.0.1" | "localhost" | "[::1]")
        }
        None => true,
    }
}

/// A started sign-in: where to send the browser, and what the answer is checked against.
pub struct Started {
    pub url: String,
    pub relay_state: String,
    pub request: PendingRequest,
}

/// The correlation state of one `AuthnRequest`, kept until its answer arrives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRequest {
    id: String,
    idp: String,
    relay_state: String,
    issued_at: Option<String>,
}

/// The configured SAML identity providers, and CloudSync as their service provider.
pub struct SamlLogin {
    sp: Saml<Sp>,
    entity_id: String,
    acs: String,
    providers: HashMap<String, Provider>,
    http: reqwest::Client,
}

impl SamlLogin {
    /// The providers of `configs`, with CloudSync's entity id `<public>/auth/saml/metadata` and its
    /// assertion consumer service `<public>/auth/saml/acs`.
    ///
    /// # Errors
    /// A public URL the endpoints cannot be made of.
    pub fn new(configs: &BTreeMap<String, SamlConfig>, public: &str) -> Result<Self, SsoError> {
        let public = public.trim_end_matches('/');
        let entity_id = format!("{public}/auth/saml/metadata");
        let acs = format!("{public}/auth/saml/acs");
        let policy = SpValidationPolicy {
            xml_signatures: XmlSignatureProfile::StrictRsaSha2,
            audience: AudienceValidationPolicy::Validate,
            ..SpValidationPolicy::recommended()
        };
        let config = SpConfig::builder(EntityId::try_new(entity_id.clone()).map_err(invalid)?)
            .acs_endpoint(AcsEndpoint::post(acs.clone()).map_err(invalid)?)
            .validation(policy)
            .build()
            .map_err(invalid)?;
        let sp = Saml::sp(config).map_err(invalid)?;
        let providers = configs
            .iter()
            .map(|(name, config)| {
                (
                    name.clone(),
                    Provider {
                        config: config.clone(),
                        idp: RwLock::new(None),
                    },
                )
            })
            .collect();
        let http = crate::oidc::http_client()?;
        Ok(Self {
            sp,
            entity_id,
            acs,
            providers,
            http,
        })
    }

    /// CloudSync's service-provider metadata, for the identity provider's administrator.
    #[must_use]
    pub fn metadata_xml(&self) -> &str {
        self.sp.metadata_xml()
    }

    #[must_use]
    pub fn entity_id(&self) -> &str {
        &self.entity_id
    }

    #[must_use]
    pub fn acs(&self) -> &str {
        &self.acs
    }

    fn provider(&self, name: &str) -> Result<&Provider, SsoError> {
        self.providers
            .get(name)
            .ok_or_else(|| SsoError::Unknown(format!("no SAML identity provider named {name:?} is configured on this server")))
    }

    /// The provider's metadata, read from its URL or file and kept for [`METADATA_TTL`] (the last
    /// good one is used while it cannot be read again). The details of a failure go to the log.
    async fn idp(&self, provider: &Provider) -> Result<Arc<IdpDescriptor>, SsoError> {
        let kept = provider.idp.read().await.clone();
        if let Some((at, found)) = &kept
            && at.elapsed() < METADATA_TTL
        {
            return Ok(Arc::clone(found));
        }
        match self.read_metadata(provider).await {
            Ok(descriptor) => {
                let descriptor = Arc::new(descriptor);
                *provider.idp.write().await = Some((std::time::Instant::now(), Arc::clone(&descriptor)));
                Ok(descriptor)
            }
            Err(why) => {
                tracing::warn!(metadata = %provider.config.metadata, why = %why, "A SAML identity provider's metadata cannot be read.");
                kept.map(|(_, found)| found)
                    .ok_or_else(|| SsoError::Provider("the SAML identity provider cannot be reached now; try again later".into()))
            }
        }
    }

    async fn read_metadata(&self, provider: &Provider) -> Result<IdpDescriptor, SsoError> {
        let source = provider.config.metadata.as_str();
        if !metadata_source_allowed(source) {
            return Err(SsoError::Config(
                "plain http:// metadata is accepted from loopback only; use https:// or a file".into(),
            ));
        }
        let xml = if source.starts_with("https://") || source.starts_with("http://") {
            self.http
                .get(source)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|err| SsoError::Provider(format!("the SAML identity provider's metadata ({source}): {err}")))?
                .text()
                .await
                .map_err(|err| SsoError::Provider(format!("the SAML identity provider's metadata ({source}): {err}")))?
        } else {
            tokio::fs::read_to_string(Path::new(source))
                .await
                .map_err(|err| SsoError::Provider(format!("the SAML identity provider's metadata ({source}): {err}")))?
        };
        // The metadata's authenticity is that of its source (the operator's URL or file).
        IdpDescriptor::from_metadata_xml(&xml, MetadataTrustPolicy::UnsignedForCompatibility)
            .map_err(|err| SsoError::Provider(format!("the SAML identity provider's metadata is unusable: {err}")))
    }

    /// Starts signing in with provider `name`: an `AuthnRequest` for the browser to carry there.
    ///
    /// # Errors
    /// An unknown provider, or one whose metadata cannot be read.
    pub async fn begin(&self, name: &str) -> Result<Started, SsoError> {
        let provider = self.provider(name)?;
        let idp = self.idp(provider).await?;
        let relay_state = crate::sessions::fresh_secret();
        let started = self
            .sp
            .start_sso(
                &idp,
                StartSso::redirect().relay_state(RelayStateParam::try_from_option(Some(relay_state.clone())).map_err(invalid)?),
            )
            .map_err(|err| SsoError::Config(format!("the sign-in request cannot be made: {err}")))?;
        let url = started.outbound.redirect_url().map_err(invalid)?.to_owned();
        let snapshot = started.pending.snapshot();
        Ok(Started {
            url,
            relay_state,
            request: PendingRequest {
                id: snapshot.id,
                idp: snapshot.peer_entity_id,
                relay_state: snapshot.relay_state.as_deref().unwrap_or_default().to_owned(),
                issued_at: snapshot.issued_at.map(|at| at.as_str().to_owned()),
            },
        })
    }

    fn pending(&self, request: &PendingRequest) -> Result<PendingAuthnRequest, SsoError> {
        let mut snapshot = PendingSnapshot::authn_request(
            request.id.clone(),
            RelayStateParam::try_from_option(Some(request.relay_state.clone())).map_err(invalid)?,
            request.idp.clone(),
            "post",
            self.acs.clone(),
            "post",
        );
        snapshot.request_binding = Some("redirect".into());
        snapshot.issued_at = request.issued_at.clone().map(SamlInstant::try_new).transpose().map_err(invalid)?;
        PendingAuthnRequest::from_snapshot(snapshot).map_err(invalid)
    }

    /// Checks the provider's answer to `request` (the posted `SAMLResponse` and `RelayState`).
    ///
    /// # Errors
    /// An answer that does not verify, saying why.
    pub async fn finish(&self, name: &str, request: &PendingRequest, saml_response: &str, relay_state: &str) -> Result<Identity, SsoError> {
        let provider = self.provider(name)?;
        let idp = self.idp(provider).await?;
        if idp.entity_id().as_str() != request.idp {
            return Err(SsoError::Refused("the sign-in was begun with another identity provider".into()));
        }
        let pending = self.pending(request)?;
        let input = BrowserInput::<SsoResponse>::post(vec![
            FormField::new("SAMLResponse", saml_response),
            FormField::new("RelayState", relay_state),
        ]);
        let session = self
            .sp
            .finish_sso(
                &idp,
                &pending,
                input,
                // Replay: the request's state is taken before this runs, so its answer works once.
                SamlValidationContext::new(SystemTime::now(), ReplayPolicy::DisabledForCompatibility),
            )
            .map_err(|err| SsoError::Refused(format!("the identity provider's answer does not verify: {err}")))?;
        let subject = session.name_id().value().to_owned();
        if subject.trim().is_empty() {
            return Err(SsoError::Refused("the identity provider's answer names nobody".into()));
        }
        if matches!(session.name_id().format(), Some(saml_rs::NameIdFormat::Transient)) {
            return Err(SsoError::Refused(
                "the identity provider names the person by a transient NameID, new at every sign-in; configure a persistent one".into(),
            ));
        }
        let attributes = session.attributes();
        let names: Vec<&str> = match &provider.config.email_attribute {
            Some(name) => vec![name.as_str()],
            None => EMAIL_ATTRIBUTES.to_vec(),
        };
        let email = names
            .iter()
            .find_map(|name| attributes.get(name))
            .and_then(|attribute| attribute.values().first())
            .map(|value| value.as_str().trim().to_owned())
            .filter(|value| !value.is_empty());
        Ok(Identity {
            issuer: idp.entity_id().as_str().to_owned(),
            subject,
            email_verified: email.is_some() && provider.config.trust_email,
            links_existing: provider.config.trust_email && provider.config.link_existing,
            email,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::metadata_source_allowed;

    #[test]
    fn metadata_comes_over_https_from_a_file_or_from_loopback() {
        for allowed in [
            "https://idp.example.com/metadata",
            "/etc/cloudsync/idp.xml",
            "http://127.0.0.1:9101/metadata",
            "http://localhost/metadata",
        ] {
            assert!(metadata_source_allowed(allowed), "{allowed}");
        }
        for refused in [
            "http://idp.example.com/metadata",
            "http://127.0.0.1.evil.example/x",
            "http://10.0.0.1/m",
        ] {
            assert!(!metadata_source_allowed(refused), "{refused}");
        }
    }
}
