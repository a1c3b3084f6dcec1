//! Issue 3: OAuth providers connect through the authorization-code flow with PKCE, against a real
//! OpenID provider on loopback (oidc-provider, started by scripts/services), and their tokens are
//! sealed and renewed before they expire. The test plays the user's browser: it signs in on the
//! provider's pages and consents.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cloudsync_commands::{MasterKey, Vault};
use cloudsync_domain::DomainEvent;
use cloudsync_domain::events::{ProviderConnected, SealedSecret};
use cloudsync_eventstore::testing::Backend;
use cloudsync_gateway::OAuthAppConfig;
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use crate::harness::{Harness, on_both_backends};
use crate::providers::assert_never_in_clear;

on_both_backends!(
    with super::oauth_harness;
    an_oauth_provider_connects_with_pkce_and_its_tokens_are_renewed,
    callbacks_that_do_not_complete_an_authorization_change_nothing,
);
mod on_redis {
    use super::{an_oauth_callback_may_reach_another_api_process, oauth_harness_on_redis};
    use crate::harness::on_both_backends;
    on_both_backends!(with super::oauth_harness_on_redis; an_oauth_callback_may_reach_another_api_process);
}

pub(crate) fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the suite through scripts/test"))
}

/// A server with a Google Drive app registered at the test OpenID provider. Tokens are renewed when
/// they have less than (their lifetime − 3 s) left, so the first renewal comes about 3 s after connecting.
async fn oauth_harness(backend: Backend) -> Harness {
    let issuer = var("CLOUDSYNC_TEST_OIDC_ISSUER");
    let ttl: u64 = var("CLOUDSYNC_TEST_OIDC_ACCESS_TOKEN_TTL").parse().expect("seconds");
    Harness::with_config(backend, |config| {
        config.oauth.insert(
            "gdrive".into(),
            OAuthAppConfig {
                client_id: var("CLOUDSYNC_TEST_OIDC_CLIENT_ID"),
                client_secret: Some(SecretString::from(var("CLOUDSYNC_TEST_OIDC_CLIENT_SECRET"))),
                auth_url: Some(format!("{issuer}/auth")),
                token_url: Some(format!("{issuer}/token")),
                scopes: Some(vec!["openid".into(), "offline_access".into(), "files.readwrite".into()]),
                extra_params: Some(BTreeMap::from([("prompt".into(), "consent".into())])),
            },
        );
        config.oauth_renew_margin_seconds = ttl.saturating_sub(3);
    })
    .await
}

/// As [`oauth_harness`], with sessions and ceremony states in Redis (a namespace of the test's own).
async fn oauth_harness_on_redis(backend: Backend) -> Harness {
    let mut h = oauth_harness(backend).await;
    h.config.redis_url = Some("redis://127.0.0.1:6379/0".into());
    h.config.redis_namespace = format!("cloudsync-test-{}:", uuid::Uuid::new_v4().simple());
    h.restart().await;
    h
}

const BEGIN: &str = "mutation($k: String!, $n: String, $r: String) { beginProviderAuthorization(provider: $k, name: $n, root: $r) { authorizationUrl state expiresAt } }";

/// A browser that keeps cookies and follows redirects, except the last one back to CloudSync (a
/// `…/callback` path).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.url().path().ends_with("/callback") {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .build()
        .expect("client")
}

fn form_action(html: &str) -> String {
    let start = html.find("action=\"").expect("a form") + "action=\"".len();
    html[start..][..html[start..].find('"').expect("closing quote")].replace("&amp;", "&")
}

/// Signs in at the provider as `login`, consents, and returns where the provider sends the browser.
pub(crate) async fn authorize(url: &str, login: &str) -> String {
    let browser = browser();
    let page = browser.get(url).send().await.expect("authorization page");
    assert!(page.status().is_success(), "{}", page.status());
    let login_form = page.text().await.expect("html");
    let consent = browser
        .post(form_action(&login_form))
        .form(&[("prompt", "login"), ("login", login), ("password", "any password")])
        .send()
        .await
        .expect("signed in");
    let consent_form = consent.text().await.expect("html");
    assert!(
        consent_form.contains("name=\"prompt\" value=\"consent\""),
        "a consent page: {consent_form}"
    );
    let back = browser
        .post(form_action(&consent_form))
        .form(&[("prompt", "consent")])
        .send()
        .await
        .expect("consented");
    assert!(back.status().is_redirection(), "{}", back.status());
    back.headers()[reqwest::header::LOCATION].to_str().expect("location").to_owned()
}

fn query(url: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(url).expect("url").query_pairs().into_owned().collect()
}

/// The vault of the server under test: the test plays an operator who holds the master key.
fn vault(h: &Harness) -> Vault {
    let key = std::fs::read_to_string(h.db.dir().join("data/master-key")).expect("the generated master key");
    Vault::new(MasterKey::parse(&key).expect("key"), h.db.db.pool.clone())
}

async fn open_tokens(h: &Harness, connected: &ProviderConnected, sealed: &SealedSecret) -> Map<String, Value> {
    serde_json::from_slice(&open_tokens_raw(h, connected, sealed).await).expect("json")
}

async fn open_tokens_raw(h: &Harness, connected: &ProviderConnected, sealed: &SealedSecret) -> Vec<u8> {
    vault(h).open(connected.owner_id, sealed).await.expect("opens")
}

fn sealed_part<T: std::fmt::Debug>(sealable: cloudsync_domain::events::Sealable<T>) -> SealedSecret {
    match sealable {
        cloudsync_domain::events::Sealable::Sealed { sealed } => sealed,
        clear => panic!("in the clear: {clear:?}"),
    }
}

/// The OpenID provider's userinfo for an access token (proves the token works).
async fn userinfo(access_token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/me", var("CLOUDSYNC_TEST_OIDC_ISSUER")))
        .bearer_auth(access_token)
        .send()
        .await
        .expect("userinfo")
}

async fn events(h: &Harness) -> Vec<DomainEvent> {
    let recorded = h.server().app().db.events.read_all(0, 100_000).await.expect("log");
    recorded
        .iter()
        .map(|e| DomainEvent::decode(&e.event_type, e.schema_version, &e.payload).expect("decodes"))
        .collect()
}

async fn an_oauth_provider_connects_with_pkce_and_its_tokens_are_renewed(h: &Harness) {
    let issuer = var("CLOUDSYNC_TEST_OIDC_ISSUER");
    let (token, _) = h.register("oauth@example.org").await;
    let head = h.server().app().db.events.head().await.expect("head");
    let begun = h
        .ok(Some(&token), BEGIN, json!({ "k": "gdrive", "n": "Work drive", "r": "/Work" }))
        .await;
    let url = begun["beginProviderAuthorization"]["authorizationUrl"]
        .as_str()
        .expect("url")
        .to_owned();
    let state = begun["beginProviderAuthorization"]["state"].as_str().expect("state").to_owned();
    assert!(url.starts_with(&format!("{issuer}/auth?")), "{url}");
    let params = query(&url);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], var("CLOUDSYNC_TEST_OIDC_CLIENT_ID"));
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["code_challenge"].len(), 43, "a base64url SHA-256");
    assert_eq!(params["state"], state);
    assert_eq!(params["redirect_uri"], format!("{}/oauth/callback", h.url));
    assert_eq!(params["scope"], "openid offline_access files.readwrite");
    assert_eq!(params["prompt"], "consent");
    assert_eq!(
        h.server().app().db.events.head().await.expect("head"),
        head,
        "beginning records nothing"
    );

    let callback = authorize(&url, "alice").await;
    assert!(callback.starts_with(&format!("{}/oauth/callback?", h.url)), "{callback}");
    let returned = query(&callback);
    assert_eq!(returned["state"], state);
    // The code alone is worth nothing: without CloudSync's PKCE verifier the provider refuses it.
    let stolen = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth(var("CLOUDSYNC_TEST_OIDC_CLIENT_ID"), Some(var("CLOUDSYNC_TEST_OIDC_CLIENT_SECRET")))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", returned["code"].as_str()),
            ("redirect_uri", &format!("{}/oauth/callback", h.url)),
        ])
        .send()
        .await
        .expect("token endpoint");
    assert_eq!(stolen.status(), 400);
    assert_eq!(stolen.json::<Value>().await.expect("json")["error"], "invalid_grant");

    let finished = reqwest::get(&callback).await.expect("callback");
    assert_eq!(finished.status(), 200);
    let page = finished.text().await.expect("html");
    assert!(page.contains("Connected") && page.contains("Work drive"), "{page}");

    let connected = events(h)
        .await
        .into_iter()
        .find_map(|e| match e {
            DomainEvent::ProviderConnected(c) => Some(c),
            _ => None,
        })
        .expect("ProviderConnected recorded");
    assert_eq!(connected.kind.as_str(), "gdrive");
    // The name and the settings are sealed with the owner's key too, the secrets apart from them.
    let name = open_tokens_raw(h, &connected, &sealed_part(connected.display_name.clone())).await;
    assert_eq!(name, b"Work drive");
    let config: Value =
        serde_json::from_slice(&open_tokens_raw(h, &connected, &sealed_part(connected.config.clone())).await).expect("JSON");
    assert_eq!(config, json!({ "root": "/Work" }), "only non-secret settings with the name");
    let ttl: i64 = var("CLOUDSYNC_TEST_OIDC_ACCESS_TOKEN_TTL").parse().expect("seconds");
    let expires = connected.credentials_expire_at.expect("the token's expiry");
    let expected = chrono::Utc::now() + chrono::TimeDelta::seconds(ttl);
    assert!((expires - expected).num_seconds().abs() < 30, "{expires} vs {expected}");
    let sealed = connected.secrets.clone().expect("sealed tokens");
    let tokens = open_tokens(h, &connected, &sealed).await;
    let access = tokens["access_token"].as_str().expect("access token").to_owned();
    let refresh = tokens["refresh_token"].as_str().expect("refresh token").to_owned();
    let me = userinfo(&access).await;
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.expect("json")["sub"], "alice");
    let providers = h.ok(Some(&token), "{ providers { id kind displayName } }", json!({})).await;
    assert_eq!(providers["providers"][0]["kind"], "gdrive");
    assert_eq!(providers["providers"][0]["displayName"], "Work drive");
    assert_never_in_clear(h, &token, &access).await;
    assert_never_in_clear(h, &token, &refresh).await;

    // The callback cannot be replayed.
    let head = h.server().app().db.events.head().await.expect("head");
    let replayed = reqwest::get(&callback).await.expect("callback");
    assert_eq!(replayed.status(), 400);
    assert!(replayed.text().await.expect("html").contains("already used"));

    // The scheduler renews the token before it expires, with the refresh token (rotated by the provider).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut appended = h.server().app().db.events.watch();
    let renewed = loop {
        let found = events(h).await.into_iter().find_map(|e| match e {
            DomainEvent::ProviderCredentialsRenewed(r) if r.provider_id == connected.provider_id => Some(r),
            _ => None,
        });
        if let Some(renewed) = found {
            break renewed;
        }
        assert!(Instant::now() < deadline, "the token was not renewed in time");
        h.next_append(&mut appended, deadline).await;
    };
    assert!(h.server().app().db.events.head().await.expect("head") > head);
    assert!(renewed.expires_at.expect("expiry") > expires);
    let fresh = open_tokens(h, &connected, &renewed.secrets).await;
    let new_access = fresh["access_token"].as_str().expect("access token");
    assert_ne!(new_access, access);
    assert_ne!(fresh["refresh_token"].as_str().expect("refresh token"), refresh, "rotated");
    assert_eq!(userinfo(new_access).await.status(), 200);
    assert_never_in_clear(h, &token, new_access).await;
}

async fn callbacks_that_do_not_complete_an_authorization_change_nothing(h: &Harness) {
    let (token, _) = h.register("declined@example.org").await;
    let head = h.server().app().db.events.head().await.expect("head");
    let callback = |query: &str| {
        let url = format!("{}/oauth/callback{query}", h.url);
        async move {
            let response = reqwest::get(url).await.expect("callback");
            (response.status().as_u16(), response.text().await.expect("html"))
        }
    };
    let (status, page) = callback("?state=made-up&code=abc").await;
    assert_eq!(status, 400);
    assert!(page.contains("unknown, expired or already used"), "{page}");
    assert_eq!(callback("").await.0, 400);
    assert_eq!(callback("?code=abc").await.0, 400);

    // A forged code is refused by the provider, and the authorization is spent.
    let begun = h.ok(Some(&token), BEGIN, json!({ "k": "gdrive" })).await;
    let state = begun["beginProviderAuthorization"]["state"].as_str().expect("state").to_owned();
    let (status, page) = callback(&format!("?state={state}&code=forged")).await;
    assert_eq!(status, 400);
    assert!(page.contains("refused the authorization"), "{page}");
    let (status, page) = callback(&format!("?state={state}&code=forged")).await;
    assert_eq!(status, 400);
    assert!(page.contains("already used"), "{page}");

    // The user declines at the provider.
    let begun = h.ok(Some(&token), BEGIN, json!({ "k": "gdrive" })).await;
    let state = begun["beginProviderAuthorization"]["state"].as_str().expect("state").to_owned();
    let (status, page) = callback(&format!("?state={state}&error=access_denied&error_description=End-User%20aborted")).await;
    assert_eq!(status, 400);
    assert!(page.contains("did not authorize") && page.contains("End-User aborted"), "{page}");
    assert_eq!(callback(&format!("?state={state}&code=late")).await.0, 400);

    for (kind, root) in [("s3", None), ("nonsense", None), ("dropbox", None), ("gdrive", Some("../etc"))] {
        let code = h.error_code(Some(&token), BEGIN, json!({ "k": kind, "r": root })).await;
        assert_eq!(code, "BAD_USER_INPUT", "{kind} {root:?}");
    }
    assert_eq!(h.error_code(None, BEGIN, json!({ "k": "gdrive" })).await, "UNAUTHENTICATED");
    // A page never echoes markup it was given.
    let (_, page) = callback("?state=%3Cscript%3E&error=%3Cscript%3Ealert(1)%3C/script%3E").await;
    assert!(!page.contains("<script>"), "{page}");

    assert_eq!(h.server().app().db.events.head().await.expect("head"), head);
    assert_eq!(
        h.ok(Some(&token), "{ providers { id } }", json!({})).await,
        json!({ "providers": [] })
    );
}

/// Two API processes behind one address: the authorization begun on one completes on the other.
async fn an_oauth_callback_may_reach_another_api_process(h: &Harness) {
    let (token, _) = h.register("replicas@example.org").await;
    let begun = h.ok(Some(&token), BEGIN, json!({ "k": "gdrive", "n": "Shared drive" })).await;
    let url = begun["beginProviderAuthorization"]["authorizationUrl"]
        .as_str()
        .expect("url")
        .to_owned();

    // A second API process on the same database and Redis, with the same keys, behind the same
    // public address (its callback is the first one's).
    let second = h.second_api_process().await;
    let callback = authorize(&url, "bob").await;
    assert!(callback.starts_with(&format!("{}/oauth/callback?", h.url)), "{callback}");
    let elsewhere = callback.replacen(&h.url, &format!("http://{}", second.addr()), 1);
    let finished = reqwest::get(&elsewhere).await.expect("callback");
    let status = finished.status();
    let page = finished.text().await.expect("html");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Connected") && page.contains("Shared drive"), "{page}");
    // Spent there, it cannot be used again here.
    let again = reqwest::get(&callback).await.expect("callback");
    assert_eq!(again.status(), 400);
    second.stop().await;
    // Written through the other process (whose position this client did not carry over): here once
    // this process's read models pass it.
    let head = h.server().app().db.events.head().await.expect("head");
    assert!(
        h.server()
            .app()
            .projections
            .wait_for(head, std::time::Duration::from_secs(10))
            .await
    );
    assert_eq!(
        h.ok(Some(&token), "{ providers { displayName } }", json!({})).await,
        json!({ "providers": [{ "displayName": "Shared drive" }] })
    );
}
