//! Issue 5: sessions with rotating refresh tokens and reuse detection, browser cookies, CORS,
//! signing keys that rotate without signing anyone out, and the session stores' contract.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cloudsync_eventstore::testing::{Backend, TestDatabase};
use cloudsync_gateway::root::MasterSealer;
use cloudsync_identity::clock::SystemClock;
use cloudsync_identity::keys::KeyRing;
use cloudsync_identity::testing::{clear_namespace, redis_url};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Harness, on_both_backends, over_socket};

/// The rate-limit test runs on a server of its own kind.
mod limited {
    use super::failed_logins_and_request_floods_are_limited;
    use crate::harness::on_both_backends;

    on_both_backends!(
        with crate::identity::with_tight_limits;
        failed_logins_and_request_floods_are_limited,
    );
}

/// Sealed paths run on a server of their own kind.
mod sealed {
    use super::file_paths_can_be_sealed_in_the_log;
    use crate::harness::on_both_backends;

    on_both_backends!(
        with crate::identity::with_sealed_paths;
        file_paths_can_be_sealed_in_the_log,
    );
}

/// A server that seals the file paths of new events.
pub(crate) async fn with_sealed_paths(backend: Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.seal_paths = true;
        (config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism) = ARGON2;
    })
    .await
}

async fn file_paths_can_be_sealed_in_the_log(h: &Harness) {
    let seed: Vec<(&str, &[u8])> = vec![
        ("secret-plans.txt", b"world domination\n"),
        ("folder-xq/private-diary.md", b"dear diary\n"),
    ];
    let (token, source, a, target, b) = crate::sync::two_folders(h, "sealed@example.org", &seed).await;
    let pair = crate::sync::pair_keeping(h, &token, &source, &target, 10).await;
    let first = crate::sync::run(h, &token, &pair).await;
    assert_eq!(first["status"]["status"], json!("completed"), "{first}");
    assert_eq!(crate::sync::tree(&a), crate::sync::tree(&b), "the sync works on plain paths");
    // A change and a move: kept versions, decisions and moves carry paths too.
    crate::sync::write(&a, "secret-plans.txt", b"world domination, revised\n");
    let second = crate::sync::run(h, &token, &pair).await;
    assert_eq!(second["status"]["status"], json!("completed"), "{second}");
    assert_eq!(crate::sync::tree(&a), crate::sync::tree(&b));
    let files = h.files(&token, &source).await;
    let plans = files
        .iter()
        .find(|(path, _)| path.ends_with("secret-plans.txt"))
        .map(|(_, file)| file["id"].clone())
        .unwrap_or_else(|| panic!("the API shows the paths: {files:?}"));
    h.ok(Some(&token), crate::spine::MOVE, json!({ "ids": [plans], "to": "archive-xq" }))
        .await;
    let moved = h.files(&token, &source).await;
    assert!(moved.keys().any(|path| path.contains("archive-xq/secret-plans.txt")), "{moved:?}");

    // The log itself holds none of them in the clear.
    let raw = h.db.db.stored.read_all(0, 100_000).await.expect("log");
    let text = serde_json::to_string(&raw.iter().map(|e| &e.payload).collect::<Vec<_>>()).expect("JSON");
    for name in ["secret-plans", "private-diary", "folder-xq", "archive-xq", "side-a", "side-b"] {
        assert!(!text.contains(name), "{name} is in the log");
    }
    assert!(text.contains("sealed_path"));

    // Erased: the events stay and replay; their paths read as `erased`.
    let erase = "mutation($p: String) { deleteAccount(password: $p) }";
    h.ok(Some(&token), erase, json!({ "p": PASSWORD })).await;
    let db = &h.server().app().db;
    for projector in cloudsync_projections::PROJECTORS {
        cloudsync_projections::rebuild(db, projector).await.expect("the log replays");
    }
    let events = db.events.read_all(0, 100_000).await.expect("log");
    let discovered: Vec<_> = events.iter().filter(|e| e.event_type == "FileDiscovered").collect();
    assert!(!discovered.is_empty());
    assert!(
        discovered.iter().all(|e| e.payload["path"] == json!("erased")),
        "unreadable for ever"
    );
}

/// A server with tight limits: 5 login attempts and 30 requests a minute.
pub(crate) async fn with_tight_limits(backend: Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.rate_limit_login_per_minute = 5;
        config.rate_limit_api_per_minute = 30;
        (config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism) = ARGON2;
    })
    .await
}

on_both_backends!(
    with crate::identity::with_cors;
    refresh_tokens_rotate_and_a_reused_one_revokes_its_session,
    sessions_are_listed_and_revoked_by_their_owner_only,
    access_tokens_are_checked_to_the_letter,
    browser_clients_keep_the_refresh_token_in_a_strict_cookie,
    passwords_are_imported_upgraded_changed_and_reset,
    second_factors_totp_recovery_codes_and_passkeys,
    codes_by_text_message_are_a_rate_limited_second_factor,
    roles_scopes_and_api_tokens_decide_what_a_credential_may_do,
    an_account_can_be_restricted_to_its_networks,
    an_openid_provider_signs_people_in_and_links_verified_addresses,
    a_saml_identity_provider_signs_people_in,
    a_websocket_checks_its_credential_for_every_operation,
    erasing_an_account_shreds_its_personal_data,
    reservations_made_before_keyed_names_still_hold,
);

/// The origin the test servers' passkeys belong to (what the software authenticator is told).
const ORIGIN: &str = "http://localhost:8443";

/// argon2id parameters the test servers hash with (cheap, to keep tests fast).
const ARGON2: (u32, u32, u32) = (8 * 1024, 1, 1);

/// A server that lets one other origin's pages call it, hashes cheaply and mails into
/// `<test dir>/outbox`.
pub(crate) async fn with_cors(backend: Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.cors_origins = vec!["https://app.example.org".into()];
        (config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism) = ARGON2;
        config.mail_outbox = config.data_dir.parent().map(|dir| dir.join("outbox"));
        config.webauthn_origin = Some(ORIGIN.into());
        config.sms_outbox = config.data_dir.parent().map(|dir| dir.join("sms"));
        config.oidc.insert(
            "test".into(),
            cloudsync_identity::oidc::OidcConfig {
                issuer: crate::oauth::var("CLOUDSYNC_TEST_OIDC_ISSUER"),
                client_id: crate::oauth::var("CLOUDSYNC_TEST_OIDC_CLIENT_ID"),
                client_secret: Some(secrecy::SecretString::from(crate::oauth::var("CLOUDSYNC_TEST_OIDC_CLIENT_SECRET"))),
                scopes: None,
            },
        );
        config.saml.insert(
            "test".into(),
            cloudsync_identity::saml::SamlConfig {
                metadata: crate::oauth::var("CLOUDSYNC_TEST_SAML_METADATA"),
                trust_email: true,
                link_existing: false,
                email_attribute: None,
            },
        );
        // The same provider as far as its metadata file says, but with another signing key.
        if let Some(dir) = config.data_dir.parent() {
            config.saml.insert(
                "impostor".into(),
                cloudsync_identity::saml::SamlConfig {
                    metadata: dir.join("impostor-idp.xml").display().to_string(),
                    trust_email: true,
                    link_existing: false,
                    email_attribute: None,
                },
            );
        }
    })
    .await
}

const ME: &str = "{ me { id email } }";
const LOGIN: &str = "mutation($e: String!, $p: String!, $c: Boolean) { login(email: $e, password: $p, cookie: $c) { accessToken accessTokenExpiresAt refreshToken sessionId user { id email } } }";
const REFRESH: &str = "mutation($r: String) { refresh(refreshToken: $r) { accessToken refreshToken sessionId user { id email } } }";
const SESSIONS: &str = "{ sessions { id userAgent ip current createdAt lastUsedAt expiresAt } }";
const REVOKE: &str = "mutation($id: ID!) { revokeSession(id: $id) }";
const PASSWORD: &str = "correct horse battery";

async fn login(h: &Harness, email: &str) -> Value {
    h.ok(None, LOGIN, json!({ "e": email, "p": PASSWORD })).await["login"].clone()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("a string, not {value}")).to_owned()
}

/// Whether `token` is still accepted.
async fn works(h: &Harness, token: &str) -> bool {
    let response = h.gql(Some(token), ME, json!({})).await;
    match response["errors"][0]["extensions"]["code"].as_str() {
        None => true,
        Some("UNAUTHENTICATED") => false,
        Some(other) => panic!("unexpected error {other}: {response}"),
    }
}

async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_session(h: &Harness) {
    let (_, user) = h.register("rotate@example.org").await;
    let first = login(h, "rotate@example.org").await;
    assert_eq!(first["user"]["id"], json!(user));
    let (access1, refresh1) = (text(&first["accessToken"]), text(&first["refreshToken"]));
    assert!(refresh1.starts_with("csr1."), "{refresh1}");
    let expires: chrono::DateTime<Utc> = text(&first["accessTokenExpiresAt"]).parse().expect("a time");
    assert!(
        expires > Utc::now() && expires <= Utc::now() + chrono::Duration::minutes(16),
        "short-lived: {expires}"
    );

    // Each exchange gives a new pair; the session stays the same.
    let second = h.ok(None, REFRESH, json!({ "r": refresh1 })).await["refresh"].clone();
    let (access2, refresh2) = (text(&second["accessToken"]), text(&second["refreshToken"]));
    assert_ne!(refresh2, refresh1);
    assert_eq!(second["sessionId"], first["sessionId"]);
    assert_eq!(second["user"], json!({ "id": user, "email": "rotate@example.org" }));
    assert!(works(h, &access2).await);
    let third = h.ok(None, REFRESH, json!({ "r": refresh2 })).await["refresh"].clone();
    let access3 = text(&third["accessToken"]);
    assert!(works(h, &access3).await);

    // The first token again: someone else holds a copy of the session's tokens. The whole session
    // is revoked: its latest refresh token and every access token of it stop working.
    let reused = h.gql(None, REFRESH, json!({ "r": refresh1 })).await;
    assert_eq!(reused["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));
    assert!(text(&reused["errors"][0]["message"]).contains("already used"), "{reused}");
    for token in [&access1, &access2, &access3] {
        assert!(!works(h, token).await, "a revoked session's access token still works");
    }
    let latest = text(&third["refreshToken"]);
    assert_eq!(h.error_code(None, REFRESH, json!({ "r": latest })).await, "UNAUTHENTICATED");

    // Another session of the same user is not affected.
    let other = login(h, "rotate@example.org").await;
    assert!(works(h, &text(&other["accessToken"])).await);

    // Malformed and made-up tokens are refused and change nothing.
    let session = text(&other["sessionId"]).replace('-', "");
    for bad in [
        String::new(),
        "garbage".into(),
        format!("csr1.{session}.{}", "A".repeat(43)),
        format!("csr1.{}.{}", Uuid::new_v4().simple(), "A".repeat(43)),
        format!("csr1.{session}.{}", "A".repeat(5000)),
        format!("csr1.{session}.' OR 1=1 --"),
    ] {
        assert_eq!(
            h.error_code(None, REFRESH, json!({ "r": bad })).await,
            "UNAUTHENTICATED",
            "{bad:.60}"
        );
    }
    assert!(works(h, &text(&other["accessToken"])).await);
    let still = h.ok(None, REFRESH, json!({ "r": other["refreshToken"] })).await;
    assert_eq!(still["refresh"]["sessionId"], other["sessionId"]);
    assert_eq!(
        h.error_code(None, REFRESH, json!({})).await,
        "BAD_USER_INPUT",
        "no token and no cookie"
    );
}

async fn sessions_are_listed_and_revoked_by_their_owner_only(h: &Harness) {
    let (registered, _) = h.register("owner@example.org").await;
    let laptop = login(h, "owner@example.org").await;
    let phone = login(h, "owner@example.org").await;
    let (laptop_token, phone_token) = (text(&laptop["accessToken"]), text(&phone["accessToken"]));

    let listed = h.ok(Some(&phone_token), SESSIONS, json!({})).await["sessions"].clone();
    let ids: Vec<Value> = listed.as_array().expect("list").iter().map(|s| s["id"].clone()).collect();
    assert_eq!(ids.len(), 3, "register and two logins: {listed}");
    assert_eq!(ids[1..], [laptop["sessionId"].clone(), phone["sessionId"].clone()]);
    let current: Vec<bool> = listed
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["current"] == json!(true))
        .collect();
    assert_eq!(current, [false, false, true]);
    assert_eq!(listed[2]["ip"], json!("127.0.0.1"));

    // Another user sees none of them and cannot revoke them: the same answer as an unknown id.
    let (intruder, _) = h.register("intruder@example.org").await;
    let theirs = h.ok(Some(&intruder), SESSIONS, json!({})).await["sessions"].clone();
    assert_eq!(theirs.as_array().map(Vec::len), Some(1));
    assert_ne!(theirs[0]["id"], laptop["sessionId"]);
    let foreign = h.gql(Some(&intruder), REVOKE, json!({ "id": laptop["sessionId"] })).await;
    let unknown = h.gql(Some(&intruder), REVOKE, json!({ "id": Uuid::new_v4() })).await;
    assert_eq!(foreign["errors"][0]["extensions"]["code"], json!("NOT_FOUND"));
    assert_eq!(foreign["errors"][0]["message"], unknown["errors"][0]["message"]);
    assert_eq!(
        h.error_code(Some(&intruder), REVOKE, json!({ "id": "nope" })).await,
        "BAD_USER_INPUT"
    );
    assert!(works(h, &laptop_token).await);

    // The owner signs the laptop out from the phone.
    assert_eq!(
        h.ok(Some(&phone_token), REVOKE, json!({ "id": laptop["sessionId"] })).await["revokeSession"],
        json!(true)
    );
    assert!(!works(h, &laptop_token).await);
    assert_eq!(
        h.error_code(None, REFRESH, json!({ "r": laptop["refreshToken"] })).await,
        "UNAUTHENTICATED"
    );
    assert!(works(h, &phone_token).await);
    assert!(works(h, &registered).await);

    // Logout ends the phone's session only.
    let out = h.ok(Some(&phone_token), "mutation { logout }", json!({})).await;
    assert_eq!(out["logout"], json!(true));
    assert!(!works(h, &phone_token).await);
    assert_eq!(
        h.error_code(None, REFRESH, json!({ "r": phone["refreshToken"] })).await,
        "UNAUTHENTICATED"
    );
    assert!(works(h, &registered).await);
    let left = h.ok(Some(&registered), SESSIONS, json!({})).await["sessions"].clone();
    assert_eq!(left.as_array().map(Vec::len), Some(1));
    assert_eq!(h.error_code(None, "mutation { logout }", json!({})).await, "UNAUTHENTICATED");
}

/// Signs `claims` with the server's current key, under `header`.
fn sign(h: &Harness, mut header: jsonwebtoken::Header, claims: &Value) -> String {
    let key = h.server().app().tokens.keys().current();
    if header.kid.is_none() {
        header.kid = Some(key.kid.clone());
    }
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")
}

async fn access_tokens_are_checked_to_the_letter(h: &Harness) {
    let (token, user) = h.register("letter@example.org").await;
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&decode(parts[0])).expect("header JSON");
    assert_eq!(header["alg"], json!("EdDSA"));
    let kid = text(&header["kid"]);
    let claims: Value = serde_json::from_slice(&decode(parts[1])).expect("claims JSON");
    let session = text(&claims["sid"]);
    assert!(works(h, &token).await);

    let eddsa = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    let now = Utc::now().timestamp();
    let good = json!({ "sub": user, "sid": session, "iss": "cloudsync", "aud": "cloudsync-api", "iat": now, "exp": now + 600 });
    assert!(works(h, &sign(h, eddsa.clone(), &good)).await, "the test's own signing is right");

    let mut refused = vec![
        ("no token at all", "not.a.jwt".to_owned()),
        ("alg none", format!("{}.{}.", encode(br#"{"alg":"none","typ":"JWT"}"#), parts[1])),
        (
            "HS256 with the public key id",
            format!(
                "{}.{}.{}",
                encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#).as_bytes()),
                parts[1],
                parts[2]
            ),
        ),
        (
            "no key id",
            format!("{}.{}.{}", encode(br#"{"alg":"EdDSA","typ":"JWT"}"#), parts[1], parts[2]),
        ),
        (
            "an unknown key id",
            format!(
                "{}.{}.{}",
                encode(br#"{"alg":"EdDSA","typ":"JWT","kid":"0000000000000000"}"#),
                parts[1],
                parts[2]
            ),
        ),
    ];
    // A changed signature, and changed claims under the old signature.
    let mut signature = decode(parts[2]);
    signature[10] ^= 1;
    refused.push(("a changed signature", format!("{}.{}.{}", parts[0], parts[1], encode(&signature))));
    let other_user =
        json!({ "sub": Uuid::new_v4(), "sid": session, "iss": "cloudsync", "aud": "cloudsync-api", "iat": now, "exp": now + 600 });
    refused.push((
        "changed claims",
        format!("{}.{}.{}", parts[0], encode(other_user.to_string().as_bytes()), parts[2]),
    ));
    // Properly signed, but wrong in what they say.
    let mut with = |what: &'static str, change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        refused.push((what, sign(h, eddsa.clone(), &claims)));
    };
    with("expired", &|c| c["exp"] = json!(now - 60));
    with("another audience", &|c| c["aud"] = json!("someone-else"));
    with("another issuer", &|c| c["iss"] = json!("evil"));
    with("no expiry", &|c| {
        c.as_object_mut().map(|o| o.remove("exp"));
    });
    with("an unknown session", &|c| c["sid"] = json!(Uuid::new_v4()));
    with("another user's session", &|c| c["sub"] = json!(Uuid::new_v4()));
    with("a malformed subject", &|c| c["sub"] = json!("' OR 1=1 --"));
    for (what, bad) in &refused {
        let response = h.gql(Some(bad), ME, json!({})).await;
        assert_eq!(
            response["errors"][0]["extensions"]["code"],
            json!("UNAUTHENTICATED"),
            "{what}: {response}"
        );
        assert!(response["data"].is_null() || response["data"]["me"].is_null(), "{what}: {response}");
    }
    assert_eq!(h.error_code(None, ME, json!({})).await, "UNAUTHENTICATED");
    assert!(works(h, &token).await, "nothing above changed the real session");
}

fn encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

async fn browser_clients_keep_the_refresh_token_in_a_strict_cookie(h: &Harness) {
    h.register("browser@example.org").await;
    let post = |body: Value, cookie: Option<&str>| {
        let mut request = h.client.post(format!("{}/graphql", h.url)).json(&body);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    let set_cookie = |response: &reqwest::Response| -> String {
        let values: Vec<&str> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(values.len(), 1, "{values:?}");
        values[0].to_owned()
    };
    let value_of = |set: &str| {
        set.split(';')
            .next()
            .and_then(|p| p.split_once('='))
            .map(|(_, v)| v.to_owned())
            .expect("value")
    };

    let response = post(
        json!({ "query": LOGIN, "variables": { "e": "browser@example.org", "p": PASSWORD, "c": true } }),
        None,
    )
    .await
    .expect("login");
    let cookie = set_cookie(&response);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["data"]["login"]["refreshToken"], Value::Null, "never readable by page scripts");
    for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/graphql"] {
        assert!(cookie.split("; ").any(|p| p == part), "{part} in {cookie}");
    }
    let first = value_of(&cookie);
    assert!(first.starts_with("csr1."));

    // refresh without an argument takes the cookie and renews it.
    let response = post(json!({ "query": REFRESH }), Some(&format!("other=1; cloudsync_refresh={first}")))
        .await
        .expect("refresh");
    let renewed = value_of(&set_cookie(&response));
    let body: Value = response.json().await.expect("JSON");
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(body["data"]["refresh"]["refreshToken"], Value::Null);
    let access = text(&body["data"]["refresh"]["accessToken"]);
    assert_ne!(renewed, first);
    assert!(works(h, &access).await);

    // The old cookie again (a stolen copy): refused, the cookie is cleared, the session revoked.
    let response = post(json!({ "query": REFRESH }), Some(&format!("cloudsync_refresh={first}")))
        .await
        .expect("refresh");
    let cleared = set_cookie(&response);
    assert!(
        cleared.starts_with("cloudsync_refresh=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));
    assert!(!works(h, &access).await);
    let response = post(json!({ "query": REFRESH }), Some(&format!("cloudsync_refresh={renewed}")))
        .await
        .expect("refresh");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));

    // CORS: the configured origin may call with credentials; any other gets no CORS headers.
    let preflight = |origin: &str| {
        h.client
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", h.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, authorization")
            .send()
    };
    let allowed = preflight("https://app.example.org").await.expect("preflight");
    let headers = allowed.headers();
    assert_eq!(
        headers.get("access-control-allow-origin").map(|v| v.to_str().ok()),
        Some(Some("https://app.example.org"))
    );
    assert_eq!(
        headers.get("access-control-allow-credentials").map(|v| v.to_str().ok()),
        Some(Some("true"))
    );
    let refused = preflight("https://evil.example.org").await.expect("preflight");
    assert!(
        refused.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        refused.headers()
    );
    let simple = post(json!({ "query": "{ __typename }" }), None);
    let _ = simple.await.expect("a same-origin call works");
    let cross = h
        .client
        .post(format!("{}/graphql", h.url))
        .header("origin", "https://evil.example.org")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .expect("post");
    assert!(cross.headers().get("access-control-allow-origin").is_none());
}

/// A key rotation (the CLI's `cloudsync keys rotate`) signs nobody out: tokens signed with the
/// retired key keep working for the grace period, new ones name the new key; after the grace the
/// retired key verifies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_without_signing_anyone_out() {
    let h = Harness::new(Backend::Sqlite).await;
    let (token, _) = h.register("keys@example.org").await;
    let first = h.server().app().tokens.keys().current().kid.clone();
    let config = cloudsync_gateway::Config {
        data_dir: h.db.dir().join("data"),
        database_url: Some(h.db.url.clone()),
        ..cloudsync_gateway::Config::default()
    };
    let mut out = Vec::new();
    cloudsync_gateway::cli::keys(&config, &h.db.db, &cloudsync_gateway::cli::KeysCommand::Rotate, &mut out)
        .await
        .expect("rotate");
    let printed = String::from_utf8(out).expect("text");
    assert!(
        printed.contains(&format!("{first}  EdDSA")) && printed.contains("retired, verifies until"),
        "{printed}"
    );
    // The server has not reloaded yet: it still signs with the old key, and knows the new one as
    // soon as a token names it.
    assert!(works(&h, &token).await);
    h.server().app().tokens.keys().reload().await;
    let second = h.server().app().tokens.keys().current().kid.clone();
    assert_ne!(second, first);
    assert!(
        printed.contains(&format!("{second}  EdDSA")) && printed.contains("signs"),
        "{printed}"
    );
    assert!(works(&h, &token).await, "a token of the retired key works until it expires");
    let fresh = login(&h, "keys@example.org").await;
    let fresh = text(&fresh["accessToken"]);
    let header: Value = serde_json::from_slice(&decode(fresh.split('.').next().expect("header"))).expect("JSON");
    assert_eq!(header["kid"], json!(second));
    assert!(works(&h, &fresh).await);
    h.stop().await;

    // The grace period ends: the retired key verifies nothing and the next rotation deletes it.
    let db = TestDatabase::new(Backend::Sqlite).await;
    let (master, _) = cloudsync_commands::MasterKey::generate();
    let grace = Duration::from_millis(300);
    let ring = KeyRing::open(db.db.pool.clone(), Arc::new(MasterSealer(master.clone())), grace)
        .await
        .expect("open");
    let old = ring.current().kid.clone();
    KeyRing::rotate(&db.db.pool, &MasterSealer(master.clone()), grace, &SystemClock)
        .await
        .expect("rotate");
    // From the rotation on, the ring's clock moves only when the test moves it.
    let clock = cloudsync_identity::clock::ManualClock::starting_now();
    let ring = Arc::new(ring.with_clock(clock.clone()));
    // A token of the old key, checked (and so remembered) before the ring learns of the rotation.
    let sessions = cloudsync_identity::sessions::Sessions::new(
        Arc::new(cloudsync_identity::sessions::MemorySessions::with_clock(clock.clone())),
        chrono::Duration::days(30),
    )
    .with_clock(clock.clone());
    let tokens = cloudsync_identity::auth::Tokens::new(Arc::clone(&ring), sessions, 15);
    let user = cloudsync_domain::UserId::from_uuid(Uuid::new_v4());
    let client = cloudsync_identity::sessions::Client {
        user_agent: None,
        ip: None,
    };
    let (session, _) = tokens.sessions().open(user, &client).await.expect("a session");
    let remembered = tokens.issue(user, session.id, &[]).expect("a token").token;
    assert!(tokens.verify(&remembered).await.is_ok());
    ring.reload().await;
    assert!(ring.verifying(&old).await.is_some());
    clock.advance(grace - Duration::from_millis(50));
    assert!(ring.verifying(&old).await.is_some(), "still within its grace period");
    assert!(tokens.verify(&remembered).await.is_ok(), "its tokens too");
    clock.advance(Duration::from_millis(100));
    assert!(ring.verifying(&old).await.is_none());
    assert_eq!(
        tokens.verify(&remembered).await,
        Err(cloudsync_identity::auth::Refused::Invalid(
            "the access token was signed with a key this API does not accept".into()
        )),
        "a token checked before is refused once its key is past its grace"
    );
    KeyRing::rotate(&db.db.pool, &MasterSealer(master.clone()), grace, &*clock)
        .await
        .expect("rotate");
    let kept: Vec<String> = cloudsync_identity::keys::list(&db.db.pool)
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert!(!kept.contains(&old), "{kept:?}");
    assert_eq!(kept.len(), 2);
    // Keys sealed by another master key do not open.
    let (other, _) = cloudsync_commands::MasterKey::generate();
    assert!(
        KeyRing::open(db.db.pool.clone(), Arc::new(MasterSealer(other)), grace)
            .await
            .is_err()
    );
    db.cleanup().await;
}

/// How every login ends, below the API: the access token lives by the sessions' clock (moved here,
/// not waited out), and an account that may not be used from the client's network gets no session,
/// while a refresh from there ends the one it has.
#[tokio::test]
async fn sign_ins_end_in_tokens_that_expire_by_the_clock_and_only_from_allowed_networks() {
    use cloudsync_domain::Aggregate as _;
    use cloudsync_domain::events::{DomainEvent, IpAllowlistSet, Personal, UserRegistered};
    use cloudsync_domain::user::User;
    use cloudsync_identity::auth::{Refused, Tokens};
    use cloudsync_identity::clock::Clock as _;
    use cloudsync_identity::sessions::{Client, MemorySessions, Sessions};
    use cloudsync_identity::signin::{SignInError, resume, sign_in};

    let db = TestDatabase::new(Backend::Sqlite).await;
    let (master, _) = cloudsync_commands::MasterKey::generate();
    let clock = cloudsync_identity::clock::ManualClock::starting_now();
    let ring = KeyRing::open(db.db.pool.clone(), Arc::new(MasterSealer(master)), Duration::from_secs(3600))
        .await
        .expect("open")
        .with_clock(clock.clone());
    let store = Arc::new(MemorySessions::with_clock(clock.clone()));
    let sessions = Sessions::new(store, chrono::Duration::days(30)).with_clock(clock.clone());
    let tokens = Tokens::new(Arc::new(ring), sessions, 15);
    let user_id = cloudsync_domain::UserId::from_uuid(Uuid::new_v4());
    let registered = DomainEvent::UserRegistered(UserRegistered {
        user_id,
        email: Personal::Clear("clock@example.org".into()),
        password_hash: "!no-password".into(),
        registered_at: clock.now(),
    });
    let user = User::load(std::slice::from_ref(&registered));
    let client = |ip: &str| Client {
        user_agent: None,
        ip: Some(ip.into()),
    };

    let signed = sign_in(&tokens, Some(&user), &client("192.0.2.7")).await.expect("signed in");
    assert_eq!(signed.session.user_id, user_id);
    let lives = (signed.access.expires_at - clock.now()).num_seconds();
    assert!((899..=900).contains(&lives), "{lives} s");
    let caller = tokens.verify(&signed.access.token).await.expect("valid");
    assert_eq!(caller.user_id, user_id);
    clock.advance(Duration::from_secs(14 * 60));
    assert!(tokens.verify(&signed.access.token).await.is_ok(), "14 minutes on");
    clock.advance(Duration::from_secs(2 * 60));
    assert_eq!(
        tokens.verify(&signed.access.token).await,
        Err(Refused::Invalid("the access token has expired".into()))
    );

    let networks = DomainEvent::IpAllowlistSet(IpAllowlistSet {
        user_id,
        networks: vec!["10.0.0.0/8".into()],
        at: clock.now(),
    });
    let guarded = User::load(&[registered, networks]);
    let outside = sign_in(&tokens, Some(&guarded), &client("192.0.2.7")).await;
    assert!(matches!(outside, Err(SignInError::Network)), "{outside:?}");
    assert!(matches!(
        sign_in(&tokens, None, &client("10.1.2.3")).await,
        Err(SignInError::NoAccount)
    ));
    let inside = sign_in(&tokens, Some(&guarded), &client("10.1.2.3")).await.expect("from inside");
    let (session, next) = tokens.sessions().refresh(&inside.refresh_token).await.expect("exchanged");
    let id = session.id;
    let moved = resume(&tokens, session, next, Some(&guarded), &client("192.0.2.7")).await;
    assert!(matches!(moved, Err(SignInError::Network)), "{moved:?}");
    assert_eq!(tokens.sessions().store().get(id).await.expect("get"), None, "the session ended");
    db.cleanup().await;
}

/// Two API processes (two servers on one database) sharing sessions through Redis: a session opened
/// on one works on the other, a refresh token exchanged on one is detected as reused on the other,
/// and a revocation on one is seen at once by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_are_shared_by_every_api_process() {
    let namespace = format!("cs_test_{}:", Uuid::new_v4().simple());
    let redis = redis_url();
    let a = Harness::with_config(Backend::Postgres, |c| {
        c.redis_url = Some(redis.clone());
        c.redis_namespace.clone_from(&namespace);
    })
    .await;
    let b_config = cloudsync_gateway::Config {
        data_dir: a.db.dir().join("data-b"),
        bind: "127.0.0.1:0".into(),
        database_url: Some(a.db.url.clone()),
        master_key: None,
        redis_url: Some(redis.clone()),
        redis_namespace: namespace.clone(),
        rate_limit_api_per_minute: 1_000_000,
        rate_limit_login_per_minute: 1_000_000,
        ..cloudsync_gateway::Config::default()
    };
    // Both processes must open the keys with the same master key: the data dir's.
    std::fs::create_dir_all(&b_config.data_dir).expect("mkdir");
    std::fs::copy(a.db.dir().join("data").join("master-key"), b_config.data_dir.join("master-key")).expect("copy the master key");
    let b = cloudsync_gateway::start(&b_config).await.expect("second server");
    let b_url = format!("http://{}", b.addr());
    let on_b = |token: Option<String>, query: &'static str, variables: Value| {
        let client = a.client.clone();
        let url = b_url.clone();
        async move {
            let mut request = client
                .post(format!("{url}/graphql"))
                .json(&json!({ "query": query, "variables": variables }));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.expect("post").json::<Value>().await.expect("JSON")
        }
    };

    a.register("shared@example.org").await;
    let session = login(&a, "shared@example.org").await;
    let access = text(&session["accessToken"]);
    let me = on_b(Some(access.clone()), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], json!("shared@example.org"), "{me}");
    let listed = on_b(Some(access.clone()), SESSIONS, json!({})).await;
    assert_eq!(listed["data"]["sessions"].as_array().map(Vec::len), Some(2), "{listed}");

    // Exchanged on B, reused on A: detected, the session is gone on both.
    let exchanged = on_b(None, REFRESH, json!({ "r": session["refreshToken"] })).await;
    let next = text(&exchanged["data"]["refresh"]["accessToken"]);
    assert!(works(&a, &next).await);
    assert_eq!(
        a.error_code(None, REFRESH, json!({ "r": session["refreshToken"] })).await,
        "UNAUTHENTICATED"
    );
    let after = on_b(Some(next.clone()), ME, json!({})).await;
    assert_eq!(after["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));

    // Revoked on A, refused on B at once.
    let other = login(&a, "shared@example.org").await;
    let other_access = text(&other["accessToken"]);
    assert!(on_b(Some(other_access.clone()), ME, json!({})).await.get("errors").is_none());
    a.ok(Some(&other_access), "mutation { logout }", json!({})).await;
    let refused = on_b(Some(other_access), ME, json!({})).await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));

    b.stop().await;
    a.stop().await;
    clear_namespace(&namespace).await;
}

/// The password changes of `user`, their hashes opened (the log holds them sealed).
async fn password_events(h: &Harness, user: &str) -> Vec<(String, String)> {
    let events = h.db.db.events.read_stream(&format!("user-{user}")).await.expect("read");
    events
        .iter()
        .filter(|e| e.event_type == "UserPasswordChanged")
        .map(|e| (text(&e.payload["reason"]), text(&e.payload["password_hash"])))
        .collect()
}

async fn import(h: &Harness, lines: &str) -> anyhow::Result<String> {
    let config = cloudsync_gateway::Config {
        data_dir: h.db.dir().join("data"),
        database_url: Some(h.db.url.clone()),
        ..cloudsync_gateway::Config::default()
    };
    let mut out = Vec::new();
    cloudsync_gateway::cli::import_users(&config, &h.db.db, lines, &mut out).await?;
    Ok(String::from_utf8(out).expect("text"))
}

/// The mail in the outbox, oldest first, waiting up to five seconds for `count` of them.
async fn outbox(h: &Harness, count: usize) -> Vec<String> {
    messages(h, "outbox", "eml", count).await
}

/// The messages (`extension` files) in `folder` of the test's directory, oldest first, waiting up
/// to five seconds for `count` of them.
async fn messages(h: &Harness, folder: &str, extension: &str, count: usize) -> Vec<String> {
    let folder = h.db.dir().join(folder);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&folder)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == extension))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if names.len() >= count || std::time::Instant::now() > deadline {
            return names.iter().map(|p| std::fs::read_to_string(p).expect("mail")).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reset_token(mail: &str) -> String {
    mail.split_whitespace()
        .find(|w| w.starts_with("rst1."))
        .expect("a token in the mail")
        .to_owned()
}

const CHANGE: &str = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";
const REQUEST_RESET: &str = "mutation($e: String!) { requestPasswordReset(email: $e) }";
const RESET: &str = "mutation($t: String!, $n: String!) { resetPassword(token: $t, newPassword: $n) }";

async fn passwords_are_imported_upgraded_changed_and_reset(h: &Harness) {
    use base64::Engine as _;
    use pbkdf2::password_hash::{PasswordHasher as _, SaltString};
    let current = format!("$argon2id$v=19$m={},t={},p={}$", ARGON2.0, ARGON2.1, ARGON2.2);

    // Hashes from another system: argon2id with older parameters, bcrypt, PBKDF2 (PHC and Django).
    let older = cloudsync_identity::passwords::Passwords::new(4096, 1, 1)
        .expect("params")
        .hash("old argon2 pw")
        .expect("hash");
    let bcrypt = bcrypt::hash("old bcrypt pw", 4).expect("bcrypt");
    let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").expect("salt");
    let phc = pbkdf2::Pbkdf2.hash_password(b"old pbkdf2 pw", &salt).expect("pbkdf2").to_string();
    let key = pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(b"old django pw", b"djangosalt", 1000);
    let django = format!(
        "pbkdf2_sha256$1000$djangosalt${}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let accounts = [
        ("argon@example.org", "old argon2 pw", &older),
        ("bcrypt@example.org", "old bcrypt pw", &bcrypt),
        ("phc@example.org", "old pbkdf2 pw", &phc),
        ("django@example.org", "old django pw", &django),
    ];
    let lines: String = accounts
        .iter()
        .map(|(email, _, hash)| format!("{}\n", json!({ "email": email, "password_hash": hash })))
        .collect();

    // One bad line: nothing is imported.
    let bad = format!("{lines}{}\n", json!({ "email": "plain@example.org", "password_hash": "hunter2" }));
    let refused = import(h, &bad).await.expect_err("refused");
    assert!(refused.to_string().contains("line 5"), "{refused}");
    let login_refused = h.gql(None, LOGIN, json!({ "e": "bcrypt@example.org", "p": "old bcrypt pw" })).await;
    assert_eq!(login_refused["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));

    let printed = import(h, &lines).await.expect("import");
    assert!(printed.contains("Imported 4 accounts."), "{printed}");
    let again = import(h, &lines).await.expect("import again");
    assert!(
        again.contains("Imported 0 accounts.") && again.contains("Skipped 4 already registered"),
        "{again}"
    );

    for (email, password, hash) in accounts {
        let wrong = h.gql(None, LOGIN, json!({ "e": email, "p": "not the password" })).await;
        assert_eq!(wrong["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"), "{email}");
        let signed_in = h.ok(None, LOGIN, json!({ "e": email, "p": password })).await["login"].clone();
        let user = text(&signed_in["user"]["id"]);
        let changes = password_events(h, &user).await;
        assert_eq!(changes.len(), 1, "{email}: upgraded once, not on the failed attempt: {changes:?}");
        assert_eq!(changes[0].0, "rehashed");
        assert!(
            changes[0].1.starts_with(&current) && changes[0].1 != *hash,
            "{email}: {}",
            changes[0].1
        );
        h.ok(None, LOGIN, json!({ "e": email, "p": password })).await;
        assert_eq!(password_events(h, &user).await.len(), 1, "{email}: a current hash is left alone");
    }

    // A change needs the current password and signs out the other sessions.
    let (registered, user) = h.register("change@example.org").await;
    let second = login(h, "change@example.org").await;
    let second_token = text(&second["accessToken"]);
    let vars = |c: &str, n: &str| json!({ "c": c, "n": n });
    assert_eq!(
        h.error_code(Some(&second_token), CHANGE, vars("wrong password", "a new password"))
            .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&second_token), CHANGE, vars(PASSWORD, "short")).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(None, CHANGE, vars(PASSWORD, "a new password")).await,
        "UNAUTHENTICATED"
    );
    assert!(password_events(h, &user).await.is_empty(), "refusals change nothing");
    assert!(works(h, &registered).await);
    assert_eq!(
        h.ok(Some(&second_token), CHANGE, vars(PASSWORD, "a new password")).await["changePassword"],
        json!(true)
    );
    assert!(works(h, &second_token).await, "the session that changed it stays");
    assert!(!works(h, &registered).await, "the others are signed out");
    let old = h.gql(None, LOGIN, json!({ "e": "change@example.org", "p": PASSWORD })).await;
    assert_eq!(old["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));
    h.ok(None, LOGIN, json!({ "e": "change@example.org", "p": "a new password" })).await;
    assert_eq!(password_events(h, &user).await[0].0, "changed");

    // Reset by mail: unknown addresses get the same answer and no mail.
    let unknown = h.ok(None, REQUEST_RESET, json!({ "e": "nobody@example.org" })).await;
    assert_eq!(unknown["requestPasswordReset"], json!(true));
    assert_eq!(
        h.error_code(None, REQUEST_RESET, json!({ "e": "not an address" })).await,
        "BAD_USER_INPUT"
    );
    h.ok(None, REQUEST_RESET, json!({ "e": "change@example.org" })).await;
    let mails = outbox(h, 1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].starts_with("To: change@example.org\r\n"), "{}", mails[0]);
    let first_token = reset_token(&mails[0]);
    h.ok(None, REQUEST_RESET, json!({ "e": "change@example.org" })).await;
    let mails = outbox(h, 2).await;
    assert_eq!(mails.len(), 2);
    let latest = reset_token(&mails[1]);
    assert_ne!(latest, first_token);
    let session = h.ok(None, LOGIN, json!({ "e": "change@example.org", "p": "a new password" })).await["login"].clone();
    let reset = |t: &str, n: &str| json!({ "t": t, "n": n });
    assert_eq!(
        h.error_code(None, RESET, reset(&first_token, "reset password")).await,
        "BAD_USER_INPUT",
        "superseded"
    );
    assert_eq!(
        h.error_code(None, RESET, reset("rst1.garbage", "reset password")).await,
        "BAD_USER_INPUT"
    );
    let forged = format!("{}{}", &latest[..latest.len() - 3], "AAA");
    assert_eq!(h.error_code(None, RESET, reset(&forged, "reset password")).await, "BAD_USER_INPUT");
    assert_eq!(h.error_code(None, RESET, reset(&latest, "short")).await, "BAD_USER_INPUT");
    assert_eq!(
        h.ok(None, RESET, reset(&latest, "reset password")).await["resetPassword"],
        json!(true)
    );
    assert_eq!(
        h.error_code(None, RESET, reset(&latest, "another password")).await,
        "BAD_USER_INPUT",
        "used"
    );
    assert!(!works(h, &text(&session["accessToken"])).await, "a reset signs every session out");
    h.ok(None, LOGIN, json!({ "e": "change@example.org", "p": "reset password" })).await;
    let reasons: Vec<String> = password_events(h, &user).await.into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, ["changed", "reset"]);
}

const MFA_LOGIN: &str = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken user { id } mfa { token methods passkeyOptions expiresAt } } }";
const COMPLETE: &str = "mutation($t: String!, $c: String!, $m: MfaCodeMethod) { completeMfaLogin(mfaToken: $t, code: $c, method: $m) { accessToken sessionId } }";
const MFA_STATUS: &str = "{ mfa { totpEnabled totpPending recoveryCodesLeft passkeys { id name registeredAt } } }";

/// Logs in with the password: the challenge of a login that needs a second factor.
async fn challenged(h: &Harness, email: &str) -> Value {
    let data = h.ok(None, MFA_LOGIN, json!({ "e": email, "p": PASSWORD })).await["login"].clone();
    assert_eq!(data["accessToken"], Value::Null, "no token before the second factor: {data}");
    data["mfa"].clone()
}

async fn complete(h: &Harness, token: &Value, code: &str, method: &str) -> Value {
    h.gql(None, COMPLETE, json!({ "t": token, "c": code, "m": method })).await
}

fn totp_now(secret: &[u8], skew: i64) -> String {
    let step = u64::try_from(Utc::now().timestamp()).expect("time") / cloudsync_commands::TOTP_PERIOD;
    cloudsync_commands::totp_code(secret, step.checked_add_signed(skew).expect("step"))
}

/// Begins a passkey registration and has the software authenticator answer it: the registration
/// and the credential to finish it with.
async fn start_passkey(
    h: &Harness,
    token: &str,
    authenticator: &mut webauthn_authenticator_rs::softpasskey::SoftPasskey,
) -> (Value, Value) {
    use webauthn_authenticator_rs::WebauthnAuthenticator as _;
    let begin = "mutation { beginPasskeyRegistration { registrationId options } }";
    let started = h.ok(Some(token), begin, json!({})).await["beginPasskeyRegistration"].clone();
    let options = serde_json::from_value(started["options"].clone()).expect("creation options");
    let origin = webauthn_rs::prelude::Url::parse(ORIGIN).expect("origin");
    let created = authenticator.do_registration(origin, options).expect("the authenticator registers");
    (started, serde_json::to_value(&created).expect("JSON"))
}

async fn second_factors_totp_recovery_codes_and_passkeys(h: &Harness) {
    use webauthn_authenticator_rs::WebauthnAuthenticator as _;
    let (token, _) = h.register("mfa@example.org").await;
    let status = h.ok(Some(&token), MFA_STATUS, json!({})).await;
    assert_eq!(
        status["mfa"],
        json!({ "totpEnabled": false, "totpPending": false, "recoveryCodesLeft": 0, "passkeys": [] })
    );

    // Enrollment: a secret, its URI and QR code; nothing changes for logins until it is confirmed.
    let begun = h
        .ok(
            Some(&token),
            "mutation { beginTotpEnrollment { secret provisioningUri qrCodeSvg } }",
            json!({}),
        )
        .await["beginTotpEnrollment"]
        .clone();
    let secret = data_encoding::BASE32_NOPAD
        .decode(text(&begun["secret"]).as_bytes())
        .expect("base32");
    assert_eq!(secret.len(), 20);
    assert!(text(&begun["provisioningUri"]).starts_with("otpauth://totp/CloudSync:mfa%40example.org?secret="));
    assert!(text(&begun["qrCodeSvg"]).contains("<svg"));
    assert!(
        login(h, "mfa@example.org").await["accessToken"].is_string(),
        "pending is not enabled"
    );
    let confirm = "mutation($c: String!) { confirmTotpEnrollment(code: $c) }";
    assert_eq!(
        h.error_code(Some(&token), confirm, json!({ "c": totp_now(&secret, 5) })).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&token), confirm, json!({ "c": "12ab56" })).await,
        "BAD_USER_INPUT"
    );
    let used = totp_now(&secret, 0);
    let codes = h.ok(Some(&token), confirm, json!({ "c": used })).await["confirmTotpEnrollment"].clone();
    let codes: Vec<String> = codes.as_array().expect("codes").iter().map(text).collect();
    assert_eq!(codes.len(), 10);

    // Now a login is two steps; the confirming code does not sign in, the next step's does, once.
    let mfa = challenged(h, "mfa@example.org").await;
    assert_eq!(mfa["methods"], json!(["TOTP", "RECOVERY_CODE"]));
    let replay = complete(h, &mfa["token"], &used, "TOTP").await;
    assert_eq!(replay["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"), "{replay}");
    assert!(text(&replay["errors"][0]["message"]).contains("already used"), "{replay}");
    let next = totp_now(&secret, 1);
    let done = complete(h, &mfa["token"], &next, "TOTP").await;
    let access = text(&done["data"]["completeMfaLogin"]["accessToken"]);
    assert!(works(h, &access).await);
    let again = complete(h, &mfa["token"], &next, "TOTP").await;
    assert!(
        text(&again["errors"][0]["message"]).contains("expired or was completed"),
        "a challenge completes once: {again}"
    );
    let mfa = challenged(h, "mfa@example.org").await;
    let replay = complete(h, &mfa["token"], &next, "TOTP").await;
    assert!(text(&replay["errors"][0]["message"]).contains("already used"), "{replay}");

    // A recovery code works once, typed any way.
    let typed = codes[0].to_uppercase().replace('-', " ");
    assert!(complete(h, &mfa["token"], &typed, "RECOVERY_CODE").await["data"]["completeMfaLogin"]["accessToken"].is_string());
    let mfa = challenged(h, "mfa@example.org").await;
    let reused = complete(h, &mfa["token"], &codes[0], "RECOVERY_CODE").await;
    assert_eq!(reused["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));
    assert_eq!(
        h.ok(Some(&token), MFA_STATUS, json!({})).await["mfa"]["recoveryCodesLeft"],
        json!(9)
    );

    // Five wrong answers end the challenge; a made-up challenge is refused.
    for attempt in 1..=4 {
        let wrong = complete(h, &mfa["token"], "000000", "TOTP").await;
        assert_eq!(
            wrong["errors"][0]["extensions"]["code"],
            json!("UNAUTHENTICATED"),
            "attempt {attempt}"
        );
    }
    let last = complete(h, &mfa["token"], &codes[1], "RECOVERY_CODE").await;
    assert!(text(&last["errors"][0]["message"]).contains("expired or was completed"), "{last}");
    let forged = complete(h, &json!("made-up"), &codes[1], "RECOVERY_CODE").await;
    assert_eq!(forged["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));
    assert_eq!(
        h.ok(Some(&token), MFA_STATUS, json!({})).await["mfa"]["recoveryCodesLeft"],
        json!(9),
        "refusals use nothing"
    );

    // A passkey, registered and used with a software authenticator.
    let origin = webauthn_rs::prelude::Url::parse(ORIGIN).expect("origin");
    let mut authenticator = webauthn_authenticator_rs::softpasskey::SoftPasskey::new(true);
    let finish =
        "mutation($r: ID!, $c: JSON!, $n: String!) { finishPasskeyRegistration(registrationId: $r, credential: $c, name: $n) { id name } }";
    let (started, credential) = start_passkey(h, &token, &mut authenticator).await;
    // Another user cannot finish it (and the attempt spends it).
    let (intruder, _) = h.register("not-mfa@example.org").await;
    let stolen = h
        .gql(
            Some(&intruder),
            finish,
            json!({ "r": started["registrationId"], "c": credential, "n": "mine" }),
        )
        .await;
    assert_eq!(stolen["errors"][0]["extensions"]["code"], json!("NOT_FOUND"), "{stolen}");
    let (started, credential) = start_passkey(h, &token, &mut authenticator).await;
    let bad = h
        .gql(
            Some(&token),
            finish,
            json!({ "r": started["registrationId"], "c": { "nonsense": true }, "n": "laptop" }),
        )
        .await;
    assert_eq!(bad["errors"][0]["extensions"]["code"], json!("BAD_USER_INPUT"));
    let registered = h
        .ok(
            Some(&token),
            finish,
            json!({ "r": started["registrationId"], "c": credential, "n": "laptop" }),
        )
        .await["finishPasskeyRegistration"]
        .clone();
    assert_eq!(registered["name"], json!("laptop"));
    let status = h.ok(Some(&token), MFA_STATUS, json!({})).await["mfa"].clone();
    assert_eq!(status["passkeys"][0]["id"], registered["id"]);

    let passkey_login = "mutation($t: String!, $c: JSON!) { completePasskeyLogin(mfaToken: $t, credential: $c) { accessToken } }";
    let mfa = challenged(h, "mfa@example.org").await;
    assert_eq!(mfa["methods"], json!(["TOTP", "RECOVERY_CODE", "PASSKEY"]));
    let request = serde_json::from_value(mfa["passkeyOptions"].clone()).expect("request options");
    let assertion = serde_json::to_value(
        authenticator
            .do_authentication(origin.clone(), request)
            .expect("the authenticator signs"),
    )
    .expect("JSON");
    let signed = h.ok(None, passkey_login, json!({ "t": mfa["token"], "c": assertion })).await;
    assert!(works(h, &text(&signed["completePasskeyLogin"]["accessToken"])).await);
    // The same assertion for another challenge does not verify.
    let mfa = challenged(h, "mfa@example.org").await;
    let replayed = h.gql(None, passkey_login, json!({ "t": mfa["token"], "c": assertion })).await;
    assert_eq!(replayed["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"), "{replayed}");

    // Turning factors off: TOTP by a recovery code, the passkey by its id; then one step again.
    let by_text = "mutation { disableTotp(code: \"123456\", method: SMS) }";
    assert_eq!(
        h.error_code(Some(&token), by_text, json!({})).await,
        "BAD_USER_INPUT",
        "no texted code can turn TOTP off"
    );
    let disable = "mutation($c: String!) { disableTotp(code: $c, method: RECOVERY_CODE) }";
    assert_eq!(
        h.error_code(Some(&token), disable, json!({ "c": codes[0] })).await,
        "BAD_USER_INPUT",
        "used"
    );
    h.ok(Some(&token), disable, json!({ "c": codes[2] })).await;
    let mfa = challenged(h, "mfa@example.org").await;
    assert_eq!(mfa["methods"], json!(["PASSKEY"]));
    let remove = "mutation($id: ID!, $p: String) { removePasskey(id: $id, password: $p) }";
    assert_eq!(
        h.error_code(Some(&intruder), remove, json!({ "id": registered["id"], "p": PASSWORD }))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        h.error_code(Some(&token), remove, json!({ "id": registered["id"] })).await,
        "BAD_USER_INPUT",
        "needs the password"
    );
    h.ok(Some(&token), remove, json!({ "id": registered["id"], "p": PASSWORD })).await;
    assert!(login(h, "mfa@example.org").await["accessToken"].is_string());
}

/// The `RATE_LIMITED` error of a response, with its retry-after seconds.
fn limited(response: &Value) -> Option<u64> {
    (response["errors"][0]["extensions"]["code"] == json!("RATE_LIMITED"))
        .then(|| response["errors"][0]["extensions"]["retryAfter"].as_u64().expect("retryAfter"))
}

async fn failed_logins_and_request_floods_are_limited(h: &Harness) {
    // Registering takes a login token of this address: four attempts are left this minute.
    let (token, _) = h.register("limited@example.org").await;
    for attempt in 1..=4 {
        let wrong = h
            .gql(
                None,
                LOGIN,
                json!({ "e": "limited@example.org", "p": format!("guess number {attempt}") }),
            )
            .await;
        assert_eq!(
            wrong["errors"][0]["extensions"]["code"],
            json!("UNAUTHENTICATED"),
            "attempt {attempt}: {wrong}"
        );
    }
    // Now even the right password waits, and so does any other account from this address.
    let right = h.gql(None, LOGIN, json!({ "e": "limited@example.org", "p": PASSWORD })).await;
    let wait = limited(&right).unwrap_or_else(|| panic!("limited: {right}"));
    assert!((1..=12).contains(&wait), "about one interval (12 s at 5 a minute): {wait}");
    assert!(text(&right["errors"][0]["message"]).contains("try again in"));
    let other = h.gql(None, LOGIN, json!({ "e": "other@example.org", "p": PASSWORD })).await;
    assert!(limited(&other).is_some(), "{other}");
    let reset = h.gql(None, REQUEST_RESET, json!({ "e": "limited@example.org" })).await;
    assert!(limited(&reset).is_some(), "resets share the login budget: {reset}");
    // The account's own work is not affected by the login limit.
    assert!(works(h, &token).await);

    // Requests: 30 a minute in bursts of 8 per user, then HTTP 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let response = h
            .client
            .post(format!("{}/graphql", h.url))
            .bearer_auth(&token)
            .json(&json!({ "query": ME }))
            .send()
            .await
            .expect("post");
        statuses.push((response.status().as_u16(), response.headers().get("retry-after").cloned()));
        if response.status() == 429 {
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(body["errors"][0]["extensions"]["code"], json!("RATE_LIMITED"));
        }
    }
    let allowed = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert!((7..=8).contains(&allowed), "a burst of 8, one already spent above: {statuses:?}");
    let (status, retry_after) = statuses.last().expect("some");
    assert_eq!(*status, 429);
    let seconds: u64 = retry_after
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&seconds), "one interval is 2 s at 30 a minute: {seconds}");
}

/// Two API processes on one Redis: failed logins spread over both count against one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rate_limits_are_global_across_api_processes() {
    let namespace = format!("cs_test_{}:", Uuid::new_v4().simple());
    let redis = redis_url();
    let tight = |c: &mut cloudsync_gateway::Config| {
        c.redis_url = Some(redis.clone());
        c.redis_namespace.clone_from(&namespace);
        c.rate_limit_login_per_minute = 4;
        (c.argon2_memory_kib, c.argon2_iterations, c.argon2_parallelism) = ARGON2;
    };
    let a = Harness::with_config(Backend::Sqlite, tight).await;
    let mut b_config = cloudsync_gateway::Config {
        data_dir: a.db.dir().join("data-b"),
        bind: "127.0.0.1:0".into(),
        database_url: Some(a.db.url.clone()),
        rate_limit_api_per_minute: 1_000_000,
        ..cloudsync_gateway::Config::default()
    };
    tight(&mut b_config);
    std::fs::create_dir_all(&b_config.data_dir).expect("mkdir");
    std::fs::copy(a.db.dir().join("data").join("master-key"), b_config.data_dir.join("master-key")).expect("copy the master key");
    let b = cloudsync_gateway::start(&b_config).await.expect("second server");
    let on = |url: String| {
        let client = a.client.clone();
        async move {
            let body = json!({ "query": LOGIN, "variables": { "e": "global@example.org", "p": "wrong password" } });
            client
                .post(format!("{url}/graphql"))
                .json(&body)
                .send()
                .await
                .expect("post")
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    let b_url = format!("http://{}", b.addr());
    // Two attempts on each: four in all, the budget.
    for url in [&a.url, &b_url, &a.url, &b_url] {
        let answer = on(url.clone()).await;
        assert_eq!(answer["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"), "{answer}");
    }
    for url in [&a.url, &b_url] {
        let answer = on(url.clone()).await;
        assert!(
            limited(&answer).is_some(),
            "the fifth attempt is refused by either process: {answer}"
        );
    }
    b.stop().await;
    a.stop().await;
    clear_namespace(&namespace).await;
}

/// The six-digit code in the latest of `count` text messages.
async fn texted_code(h: &Harness, count: usize) -> String {
    let texts = messages(h, "sms", "sms", count).await;
    assert_eq!(texts.len(), count, "{texts:?}");
    let last = texts.last().expect("a text");
    assert!(last.starts_with("To: +447700900123\n"), "{last}");
    last.split_whitespace()
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .expect("a code")
        .to_owned()
}

async fn codes_by_text_message_are_a_rate_limited_second_factor(h: &Harness) {
    let (token, _) = h.register("sms@example.org").await;
    let begin = "mutation($p: String!) { beginSmsEnrollment(phone: $p) }";
    let confirm = "mutation($c: String!) { confirmSmsEnrollment(code: $c) }";
    assert_eq!(
        h.error_code(Some(&token), begin, json!({ "p": "07700 900123" })).await,
        "BAD_USER_INPUT"
    );
    h.ok(Some(&token), begin, json!({ "p": "+44 7700 900123" })).await;
    let code = texted_code(h, 1).await;
    let wrong = if code == "111111" { "222222" } else { "111111" };
    assert_eq!(h.error_code(Some(&token), confirm, json!({ "c": wrong })).await, "BAD_USER_INPUT");
    assert!(
        login(h, "sms@example.org").await["accessToken"].is_string(),
        "not a factor before it is confirmed"
    );
    h.ok(Some(&token), confirm, json!({ "c": code })).await;
    let status = h
        .ok(
            Some(&token),
            MFA_STATUS.replace("passkeys {", "smsNumber passkeys {").as_str(),
            json!({}),
        )
        .await;
    assert_eq!(status["mfa"]["smsNumber"], json!("+44••••••0123"));

    let send = "mutation($t: String!) { sendMfaSms(mfaToken: $t) }";
    let mfa = challenged(h, "sms@example.org").await;
    assert_eq!(mfa["methods"], json!(["SMS"]));
    let early = complete(h, &mfa["token"], &code, "SMS").await;
    assert_eq!(
        early["errors"][0]["extensions"]["code"],
        json!("UNAUTHENTICATED"),
        "nothing sent for this login yet: {early}"
    );
    h.ok(None, send, json!({ "t": mfa["token"] })).await;
    let sent = texted_code(h, 2).await;
    let done = complete(h, &mfa["token"], &sent, "SMS").await;
    assert!(works(h, &text(&done["data"]["completeMfaLogin"]["accessToken"])).await, "{done}");

    // Three texts at once, then about two a minute.
    let mfa = challenged(h, "sms@example.org").await;
    h.ok(None, send, json!({ "t": mfa["token"] })).await;
    let third = texted_code(h, 3).await;
    let flood = h.gql(None, send, json!({ "t": mfa["token"] })).await;
    assert!(limited(&flood).is_some(), "{flood}");
    assert_eq!(messages(h, "sms", "sms", 4).await.len(), 3, "nothing more was sent");
    let done = complete(h, &mfa["token"], &third, "SMS").await;
    assert!(
        done["data"]["completeMfaLogin"]["accessToken"].is_string(),
        "the challenge survived the refusal: {done}"
    );

    assert_eq!(
        h.error_code(Some(&token), "mutation { disableSms(password: \"wrong password\") }", json!({}))
            .await,
        "BAD_USER_INPUT"
    );
    h.ok(
        Some(&token),
        "mutation($p: String) { disableSms(password: $p) }",
        json!({ "p": PASSWORD }),
    )
    .await;
    assert!(login(h, "sms@example.org").await["accessToken"].is_string());
}

const CREATE_TOKEN: &str = "mutation($n: String!, $s: [String!]!, $d: Int) { createApiToken(name: $n, scopes: $s, expiresInDays: $d) { token info { id name scopes expiresAt } } }";
const USERS: &str = "{ users { id email roles quotaBytes tier } }";

/// The error code of a response, or `OK`.
fn outcome(response: &Value) -> String {
    response["errors"][0]["extensions"]["code"].as_str().unwrap_or("OK").to_owned()
}

pub(crate) async fn grant(h: &Harness, email: &str, role: &str) {
    cli_role(h, email, role, true).await;
}

/// `cloudsync users grant|revoke <email> <role>`.
async fn cli_role(h: &Harness, email: &str, role: &str, grant: bool) {
    let config = cloudsync_gateway::Config {
        data_dir: h.db.dir().join("data"),
        database_url: Some(h.db.url.clone()),
        ..cloudsync_gateway::Config::default()
    };
    let (email, role_name) = (email.to_owned(), role.to_owned());
    let command = if grant {
        cloudsync_gateway::cli::UsersCommand::Grant { email, role: role_name }
    } else {
        cloudsync_gateway::cli::UsersCommand::Revoke { email, role: role_name }
    };
    let mut out = Vec::new();
    cloudsync_gateway::cli::roles(&config, &h.db.db, &command, &mut out)
        .await
        .expect("grant or revoke");
    if grant {
        assert!(String::from_utf8_lossy(&out).contains(&format!("now has the role {role}")));
    }
}

async fn roles_scopes_and_api_tokens_decide_what_a_credential_may_do(h: &Harness) {
    let scanned = h.scanned("owner@example.org").await;
    let session = scanned.token.clone();
    let create = |name: &str, scopes: Value, days: Option<i32>| json!({ "n": name, "s": scopes, "d": days });
    for (bad, why) in [
        (create("x", json!(["bogus"]), None), "unknown scope"),
        (create("x", json!([]), None), "no scope"),
        (create("x", json!(["admin"]), None), "admin scope without the role"),
        (create("", json!(["files:read"]), None), "no name"),
        (create("x", json!(["files:read"]), Some(0)), "no lifetime"),
    ] {
        assert_eq!(h.error_code(Some(&session), CREATE_TOKEN, bad).await, "BAD_USER_INPUT", "{why}");
    }
    let created = h
        .ok(Some(&session), CREATE_TOKEN, create("ci", json!(["files:read"]), Some(30)))
        .await["createApiToken"]
        .clone();
    let reader = text(&created["token"]);
    assert!(reader.starts_with("cst1."));

    // The token reads and does nothing else; account management needs a signed-in session.
    let files = "query($p: String) { files(provider: $p) { id } }";
    let read = h.gql(Some(&reader), files, json!({ "p": scanned.provider })).await;
    assert_eq!(read["data"]["files"].as_array().map(Vec::len), Some(4), "{read}");
    let moving = "mutation($ids: [ID!]!) { moveFiles(fileIds: $ids, targetPath: \"elsewhere\") { id } }";
    let pair = "mutation($s: ID!) { syncFolders(source: { providerId: $s, path: \"a\" }, target: { providerId: $s, path: \"b\" }) { id } }";
    for (query, variables, what) in [
        (moving, json!({ "ids": [scanned.readme] }), "files:write"),
        (pair, json!({ "s": scanned.provider }), "sync:run"),
        (SESSIONS, json!({}), "session"),
        (CREATE_TOKEN, create("more", json!(["files:read"]), None), "session"),
        ("{ apiTokens { id } }", json!({}), "session"),
        (USERS, json!({}), "admin"),
    ] {
        let response = h.gql(Some(&reader), query, variables).await;
        assert_eq!(outcome(&response), "FORBIDDEN", "{what}: {response}");
    }
    assert!(scanned.root.join("readme.txt").exists(), "nothing moved");
    let writer = h
        .ok(
            Some(&session),
            CREATE_TOKEN,
            create("deploy", json!(["files:read", "files:write"]), None),
        )
        .await["createApiToken"]["token"]
        .clone();
    let moved = h.gql(Some(&text(&writer)), moving, json!({ "ids": [scanned.readme] })).await;
    assert_eq!(outcome(&moved), "OK", "{moved}");

    // Listed without secrets, revoked at once, never confused with another's.
    let listed = h.ok(Some(&session), "{ apiTokens { id name scopes } }", json!({})).await["apiTokens"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(!listed.to_string().contains(&reader[reader.len() - 20..]), "no secret in the list");
    let mut tampered = reader.clone();
    tampered.replace_range(tampered.len() - 5.., "AAAAA");
    assert_eq!(outcome(&h.gql(Some(&tampered), ME, json!({})).await), "UNAUTHENTICATED");
    let (other, _) = h.register("other@example.org").await;
    let revoke = "mutation($id: ID!) { revokeApiToken(id: $id) }";
    assert_eq!(
        h.error_code(Some(&other), revoke, json!({ "id": created["info"]["id"] })).await,
        "NOT_FOUND"
    );
    assert_eq!(outcome(&h.gql(Some(&reader), ME, json!({})).await), "OK");
    h.ok(Some(&session), revoke, json!({ "id": created["info"]["id"] })).await;
    assert_eq!(outcome(&h.gql(Some(&reader), ME, json!({})).await), "UNAUTHENTICATED");

    // Administration: refused to users; the first administrator is made with the CLI.
    assert_eq!(outcome(&h.gql(Some(&session), USERS, json!({})).await), "FORBIDDEN");
    grant(h, "owner@example.org", "admin").await;
    assert_eq!(
        outcome(&h.gql(Some(&session), USERS, json!({})).await),
        "FORBIDDEN",
        "roles come with the next token"
    );
    let admin = text(&login(h, "owner@example.org").await["accessToken"]);
    let users = h.ok(Some(&admin), USERS, json!({})).await["users"].clone();
    let emails: Vec<&str> = users
        .as_array()
        .expect("list")
        .iter()
        .map(|u| u["email"].as_str().expect("email"))
        .collect();
    assert_eq!(emails, ["owner@example.org", "other@example.org"]);
    assert_eq!(users[0]["roles"], json!(["user", "admin"]));
    let other_id = users[1]["id"].clone();
    let plan = "mutation($u: ID!, $q: Int, $t: String!) { setUserPlan(userId: $u, quotaBytes: $q, tier: $t) }";
    assert_eq!(
        h.error_code(Some(&admin), plan, json!({ "u": other_id, "q": 1, "t": "platinum" }))
            .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&admin), plan, json!({ "u": other_id, "q": -1, "t": "pro" }))
            .await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&admin), plan, json!({ "u": Uuid::new_v4(), "q": 1, "t": "pro" }))
            .await,
        "NOT_FOUND"
    );
    h.ok(Some(&admin), plan, json!({ "u": other_id, "q": 1_000_000_000, "t": "pro" }))
        .await;
    let users = h.ok(Some(&admin), USERS, json!({})).await["users"].clone();
    assert_eq!(
        (users[1]["quotaBytes"].clone(), users[1]["tier"].clone()),
        (json!(1_000_000_000), json!("pro"))
    );
    let audit = "query($u: ID!) { auditLog(userId: $u) { position eventType stream } }";
    let log = h.ok(Some(&admin), audit, json!({ "u": other_id })).await["auditLog"].clone();
    assert_eq!(log[0]["eventType"], json!("UserRegistered"), "{log}");
    let full = h
        .ok(
            Some(&admin),
            "query($u: ID!) { auditLog(userId: $u) { payload } }",
            json!({ "u": other_id }),
        )
        .await;
    assert_eq!(full["auditLog"][0]["payload"]["password_hash"], json!("[redacted]"));
    assert!(!full.to_string().contains("$argon2"), "no hash in the audit log: {full}");
    // Anyone reads their own history, and only theirs.
    let own = h.ok(Some(&other), audit, json!({ "u": other_id })).await["auditLog"].clone();
    assert_eq!(own, log);
    assert_eq!(h.error_code(Some(&other), audit, json!({ "u": users[0]["id"] })).await, "FORBIDDEN");

    // An auditor reads what administrators read and changes nothing.
    let role = "mutation($u: ID!, $r: String!) { grantRole(userId: $u, role: $r) }";
    assert_eq!(
        h.error_code(Some(&admin), role, json!({ "u": other_id, "r": "emperor" })).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&other), role, json!({ "u": other_id, "r": "admin" })).await,
        "FORBIDDEN",
        "no self-promotion"
    );
    h.ok(Some(&admin), role, json!({ "u": other_id, "r": "auditor" })).await;
    let auditor = text(&login(h, "other@example.org").await["accessToken"]);
    assert_eq!(outcome(&h.gql(Some(&auditor), USERS, json!({})).await), "OK");
    assert_eq!(outcome(&h.gql(Some(&auditor), audit, json!({ "u": other_id })).await), "OK");
    assert_eq!(
        h.error_code(Some(&auditor), plan, json!({ "u": other_id, "q": null, "t": "team" }))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        h.error_code(Some(&auditor), role, json!({ "u": other_id, "r": "admin" })).await,
        "FORBIDDEN"
    );

    // Taking a role away ends the holder's sessions: their tokens carried it.
    let unrole = "mutation($u: ID!, $r: String!) { revokeRole(userId: $u, role: $r) }";
    h.ok(Some(&admin), unrole, json!({ "u": other_id, "r": "auditor" })).await;
    assert_eq!(outcome(&h.gql(Some(&auditor), USERS, json!({})).await), "UNAUTHENTICATED");
    let plain = text(&login(h, "other@example.org").await["accessToken"]);
    assert_eq!(outcome(&h.gql(Some(&plain), USERS, json!({})).await), "FORBIDDEN");

    // An administrator's token with the admin scope administers; without it, it does not.
    let admin_token = h.ok(Some(&admin), CREATE_TOKEN, create("ops", json!(["admin"]), None)).await["createApiToken"]["token"].clone();
    assert_eq!(outcome(&h.gql(Some(&text(&admin_token)), USERS, json!({})).await), "OK");
    assert_eq!(
        outcome(&h.gql(Some(&text(&admin_token)), files, json!({ "p": scanned.provider })).await),
        "FORBIDDEN"
    );
    assert_eq!(outcome(&h.gql(Some(&text(&writer)), USERS, json!({})).await), "FORBIDDEN");

    // A role taken away from the command line (which cannot end sessions in the server) stops
    // working at once: administration checks the role the account holds now.
    cli_role(h, "owner@example.org", "admin", false).await;
    assert_eq!(outcome(&h.gql(Some(&admin), USERS, json!({})).await), "FORBIDDEN");
    assert_eq!(outcome(&h.gql(Some(&text(&admin_token)), USERS, json!({})).await), "FORBIDDEN");
}

async fn an_account_can_be_restricted_to_its_networks(h: &Harness) {
    let (token, _) = h.register("fenced@example.org").await;
    let api = h.ok(Some(&token), CREATE_TOKEN, json!({ "n": "ci", "s": ["files:read"] })).await["createApiToken"]["token"].clone();
    let api = text(&api);
    let set = "mutation($n: [String!]!) { setIpAllowlist(networks: $n) }";
    assert_eq!(
        h.error_code(Some(&token), set, json!({ "n": ["nonsense"] })).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.error_code(Some(&token), set, json!({ "n": ["192.0.2.0/24"] })).await,
        "BAD_USER_INPUT",
        "would lock the caller out"
    );
    h.ok(Some(&token), set, json!({ "n": ["127.0.0.1/32", "2001:db8::/32"] })).await;
    assert_eq!(
        h.ok(Some(&token), "{ ipAllowlist }", json!({})).await["ipAllowlist"],
        json!(["127.0.0.1/32", "2001:db8::/32"])
    );

    // From 127.0.0.1: everything works. From 127.0.0.2 (another loopback address): nothing does.
    let session = login(h, "fenced@example.org").await;
    assert_eq!(outcome(&h.gql(Some(&api), ME, json!({})).await), "OK");
    let outside = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().expect("address")))
        .build()
        .expect("client");
    let post = |token: Option<String>, query: &'static str, variables: Value| {
        let mut request = outside
            .post(format!("{}/graphql", h.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("post").json::<Value>().await.expect("JSON") }
    };
    let refused = post(None, LOGIN, json!({ "e": "fenced@example.org", "p": PASSWORD })).await;
    assert_eq!(outcome(&refused), "UNAUTHENTICATED", "{refused}");
    assert!(text(&refused["errors"][0]["message"]).contains("this network"));
    assert_eq!(outcome(&post(Some(api.clone()), ME, json!({})).await), "UNAUTHENTICATED");
    let refresh = post(None, REFRESH, json!({ "r": session["refreshToken"] })).await;
    assert_eq!(outcome(&refresh), "UNAUTHENTICATED", "{refresh}");
    // A refresh from outside ends the session.
    assert_eq!(
        h.error_code(None, REFRESH, json!({ "r": session["refreshToken"] })).await,
        "UNAUTHENTICATED"
    );

    h.ok(Some(&token), set, json!({ "n": [] })).await;
    assert_eq!(
        outcome(&post(None, LOGIN, json!({ "e": "fenced@example.org", "p": PASSWORD })).await),
        "OK"
    );
    assert_eq!(outcome(&post(Some(api), ME, json!({})).await), "OK");
}

const BEGIN_OIDC: &str =
    "mutation($p: String!, $c: Boolean) { beginOidcLogin(provider: $p, cookie: $c) { authorizationUrl state expiresAt } }";

/// Begins a sign-in with the test OpenID provider and signs in there as `login`: the URL the
/// provider sends the browser back to.
async fn oidc_redirect(h: &Harness, login: &str, cookie: bool) -> String {
    let begun = h.ok(None, BEGIN_OIDC, json!({ "p": "test", "c": cookie })).await["beginOidcLogin"].clone();
    let url = text(&begun["authorizationUrl"]);
    assert!(url.contains("code_challenge_method=S256") && url.contains("nonce="), "{url}");
    crate::oauth::authorize(&url, login).await
}

/// Begins a browser's sign-in with the test provider: the answer and the binding cookie it set.
async fn begin_in_browser(h: &Harness) -> (Value, String) {
    let (begun, set_cookie) = begin_in_browser_with(h, BEGIN_OIDC).await;
    (begun, set_cookie.split(';').next().expect("a cookie").to_owned())
}

/// Begins a browser's sign-in with `begin` (provider "test"): the answer and the whole
/// `Set-Cookie` of its binding cookie.
async fn begin_in_browser_with(h: &Harness, begin: &str) -> (Value, String) {
    let begun = h
        .client
        .post(format!("{}/graphql", h.url))
        .json(&json!({ "query": begin, "variables": { "p": "test", "c": true } }))
        .send()
        .await
        .expect("begin");
    let binding = begun
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a binding cookie")
        .to_owned();
    (begun.json().await.expect("JSON"), binding)
}

async fn get_json(url: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::get(url).await.expect("callback");
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, cookie, response.json().await.expect("JSON"))
}

async fn an_openid_provider_signs_people_in_and_links_verified_addresses(h: &Harness) {
    assert_eq!(h.error_code(None, BEGIN_OIDC, json!({ "p": "nope" })).await, "BAD_USER_INPUT");

    // A new person: an account is made for the verified address.
    let back = oidc_redirect(h, "alice", false).await;
    assert!(back.contains("/auth/oidc/callback?"), "{back}");
    let (status, _, body) = get_json(&back).await;
    assert_eq!(status, 200, "{body}");
    let token = text(&body["accessToken"]);
    let me = h.ok(Some(&token), ME, json!({})).await;
    assert_eq!(me["me"]["email"], json!("alice@example.test"));
    let alice = me["me"]["id"].clone();
    assert!(text(&body["refreshToken"]).starts_with("csr1."));
    // The state works once.
    let (status, _, again) = get_json(&back).await;
    assert_eq!(status, 400, "{again}");
    assert!(text(&again["errors"][0]["message"]).contains("already used"), "{again}");
    // That account has no password.
    let password = h.gql(None, LOGIN, json!({ "e": "alice@example.test", "p": PASSWORD })).await;
    assert_eq!(outcome(&password), "UNAUTHENTICATED");

    // The same person again: the same account, through the linked identity.
    let (_, _, body) = get_json(&oidc_redirect(h, "alice", false).await).await;
    assert_eq!(body["user"]["id"], alice);

    // Someone who registered with a password: their verified address links the identity.
    let (_, bob) = h.register("bob@example.test").await;
    let (status, _, body) = get_json(&oidc_redirect(h, "bob", false).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], json!(bob));

    // A code is bound to the sign-in that asked for it (PKCE): another sign-in's state refuses it.
    let first = h.ok(None, BEGIN_OIDC, json!({ "p": "test" })).await["beginOidcLogin"].clone();
    let second = h.ok(None, BEGIN_OIDC, json!({ "p": "test" })).await["beginOidcLogin"].clone();
    let back = crate::oauth::authorize(&text(&first["authorizationUrl"]), "carol").await;
    let swapped = back.replace(
        &format!("state={}", text(&first["state"])),
        &format!("state={}", text(&second["state"])),
    );
    assert_ne!(swapped, back);
    let (status, _, body) = get_json(&swapped).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"));
    let (status, _, _) = get_json(&back).await;
    assert_eq!(status, 200, "the first sign-in still completes");

    // The provider's refusal, a made-up state and a missing code change nothing.
    let refused = h.ok(None, BEGIN_OIDC, json!({ "p": "test" })).await["beginOidcLogin"].clone();
    let callback = format!("{}/auth/oidc/callback", h.url);
    let (status, _, body) = get_json(&format!("{callback}?state={}&error=access_denied", text(&refused["state"]))).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = get_json(&format!("{callback}?state=made-up&code=abc")).await;
    assert_eq!(status, 400);
    let (status, _, _) = get_json(&format!("{callback}?code=abc")).await;
    assert_eq!(status, 400);

    // Browsers get the refresh token in the cookie only, in the browser that began the sign-in.
    let (begun, binding) = begin_in_browser(h).await;
    assert!(binding.starts_with("cloudsync_oidc="), "{binding}");
    let back = crate::oauth::authorize(&text(&begun["data"]["beginOidcLogin"]["authorizationUrl"]), "alice").await;
    let (status, _, body) = get_json(&back).await;
    assert_eq!(status, 400, "another browser cannot finish it: {body}");
    let (begun, binding) = begin_in_browser(h).await;
    let back = crate::oauth::authorize(&text(&begun["data"]["beginOidcLogin"]["authorizationUrl"]), "alice").await;
    let response = h.client.get(&back).header("cookie", binding).send().await.expect("callback");
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refreshToken"], Value::Null);
    let cookie = cookie.expect("a refresh cookie");
    assert!(
        cookie.starts_with("cloudsync_refresh=csr1.") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // An account without a password is erased with a fresh sign-in; its identity then signs in
    // to nothing.
    let (_, _, fresh) = get_json(&oidc_redirect(h, "alice", false).await).await;
    let erase = "mutation { deleteAccount }";
    assert_eq!(
        h.ok(Some(&text(&fresh["accessToken"])), erase, json!({})).await["deleteAccount"],
        json!(true)
    );
    let (status, _, body) = get_json(&oidc_redirect(h, "alice", false).await).await;
    assert_eq!(status, 401, "{body}");
    assert!(text(&body["errors"][0]["message"]).contains("erased"), "{body}");
}

const BEGIN_SAML: &str = "mutation($p: String!, $c: Boolean) { beginSamlLogin(provider: $p, cookie: $c) { redirectUrl expiresAt } }";

/// The value of the hidden form field `name` in `html` (the identity provider's answer page).
fn form_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\"");
    let at = html.find(&marker).unwrap_or_else(|| panic!("no field {name} in {html}"));
    let rest = &html[at..];
    let start = rest.find("value=\"").expect("a value") + "value=\"".len();
    let end = rest[start..].find('"').expect("the value's end");
    rest[start..start + end].to_owned()
}

/// Signs in at the test SAML identity provider as `login`, for the request in `redirect_url`: the
/// `SAMLResponse` and `RelayState` its page would post to CloudSync.
async fn saml_answer(redirect_url: &str, login: &str) -> (String, String) {
    let url = reqwest::Url::parse(redirect_url).expect("a URL");
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let idp = format!(
        "{}://{}",
        url.scheme(),
        url.host_str().zip(url.port()).map(|(h, p)| format!("{h}:{p}")).expect("host")
    );
    let page = reqwest::Client::new()
        .post(format!("{idp}/login"))
        .form(&[
            ("SAMLRequest", query["SAMLRequest"].as_str()),
            ("RelayState", query["RelayState"].as_str()),
            ("login", login),
            ("password", &crate::oauth::var("CLOUDSYNC_TEST_SAML_PASSWORD")),
        ])
        .send()
        .await
        .expect("the identity provider");
    assert_eq!(page.status().as_u16(), 200, "the identity provider refused the sign-in");
    let html = page.text().await.expect("its page");
    assert!(html.contains("/auth/saml/acs"), "{html}");
    (form_field(&html, "SAMLResponse"), form_field(&html, "RelayState"))
}

/// Posts an identity provider's answer to CloudSync's assertion consumer service.
async fn post_acs(h: &Harness, response: &str, relay_state: &str, cookie: Option<&str>) -> (u16, Option<String>, Value) {
    let mut request = h
        .client
        .post(format!("{}/auth/saml/acs", h.url))
        .form(&[("SAMLResponse", response), ("RelayState", relay_state)]);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let answer = request.send().await.expect("the assertion consumer service");
    let status = answer.status().as_u16();
    let set_cookie = answer.headers().get("set-cookie").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, set_cookie, answer.json().await.expect("JSON"))
}

/// A self-signed certificate (base64 DER) of a key nobody else has.
fn another_certificate() -> String {
    use base64::Engine as _;
    use openssl::{asn1::Asn1Time, bn::BigNum, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509::X509, x509::X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).expect("RSA")).expect("key");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", "not the identity provider").expect("CN");
    let name = name.build();
    let mut builder = X509::builder().expect("builder");
    builder.set_version(2).expect("version");
    builder.set_subject_name(&name).expect("subject");
    builder.set_issuer_name(&name).expect("issuer");
    builder.set_pubkey(&key).expect("public key");
    builder
        .set_not_before(&Asn1Time::days_from_now(0).expect("now"))
        .expect("not before");
    builder
        .set_not_after(&Asn1Time::days_from_now(1).expect("tomorrow"))
        .expect("not after");
    let serial = BigNum::from_u32(1).and_then(|n| n.to_asn1_integer()).expect("serial");
    builder.set_serial_number(&serial).expect("serial");
    builder.sign(&key, MessageDigest::sha256()).expect("signed");
    base64::engine::general_purpose::STANDARD.encode(builder.build().to_der().expect("DER"))
}

async fn begin_saml(h: &Harness) -> String {
    begin_saml_with(h, "test").await
}

async fn begin_saml_with(h: &Harness, provider: &str) -> String {
    let begun = h.ok(None, BEGIN_SAML, json!({ "p": provider })).await["beginSamlLogin"].clone();
    let url = text(&begun["redirectUrl"]);
    assert!(url.contains("SAMLRequest=") && url.contains("RelayState="), "{url}");
    url
}

async fn a_saml_identity_provider_signs_people_in(h: &Harness) {
    use base64::Engine as _;
    assert_eq!(h.error_code(None, BEGIN_SAML, json!({ "p": "nope" })).await, "BAD_USER_INPUT");
    // CloudSync's service-provider metadata, for the provider's administrator.
    let metadata = h
        .client
        .get(format!("{}/auth/saml/metadata", h.url))
        .send()
        .await
        .expect("metadata")
        .text()
        .await
        .expect("XML");
    assert!(
        metadata.contains(&format!("entityID=\"{}/auth/saml/metadata\"", h.url)) && metadata.contains(&format!("{}/auth/saml/acs", h.url)),
        "{metadata}"
    );

    // A new person: an account is made for the address the provider asserts.
    let (response, relay_state) = saml_answer(&begin_saml(h).await, "dora").await;
    let (status, _, body) = post_acs(h, &response, &relay_state, None).await;
    assert_eq!(status, 200, "{body}");
    let me = h.ok(Some(&text(&body["accessToken"])), ME, json!({})).await;
    assert_eq!(me["me"]["email"], json!("dora@example.test"));
    let dora = me["me"]["id"].clone();
    // The identity's subject (the NameID) is sealed like the address.
    let log = h.db.db.events.read_all(0, 100_000).await.expect("log");
    let linked: Vec<_> = log.iter().filter(|e| e.event_type == "ExternalIdentityLinked").collect();
    assert!(
        !linked.is_empty() && linked.iter().all(|e| e.payload["subject"]["sealed"].is_object()),
        "{linked:?}"
    );
    assert!(text(&body["refreshToken"]).starts_with("csr1."));
    // An answer works once.
    let (status, _, again) = post_acs(h, &response, &relay_state, None).await;
    assert_eq!(status, 400, "{again}");
    assert!(text(&again["errors"][0]["message"]).contains("already used"), "{again}");
    // The same person again: the same account, through the linked identity.
    let (response, relay_state) = saml_answer(&begin_saml(h).await, "dora").await;
    let (_, _, body) = post_acs(h, &response, &relay_state, None).await;
    assert_eq!(body["user"]["id"], dora);

    // Someone who registered with a password: an address the provider asserts does not link the
    // identity to that account (unless the provider is configured to verify addresses).
    let (frank_token, _) = h.register("frank@example.test").await;
    let (response, relay_state) = saml_answer(&begin_saml(h).await, "frank").await;
    let (status, _, body) = post_acs(h, &response, &relay_state, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(works(h, &frank_token).await, "the account is untouched");

    // A changed assertion does not verify (here: someone else's address slipped in).
    let (response, relay_state) = saml_answer(&begin_saml(h).await, "mallory").await;
    let xml = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&response).expect("base64")).expect("XML");
    assert!(xml.contains("mallory@example.test"), "{xml}");
    let forged = base64::engine::general_purpose::STANDARD.encode(xml.replace("mallory@example.test", "frank@example.test"));
    let (status, _, body) = post_acs(h, &forged, &relay_state, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(text(&body["errors"][0]["message"]).contains("does not verify"), "{body}");
    // Answers are checked against the key in the provider's metadata: metadata naming another key
    // refuses the real provider's answers.
    let real = reqwest::get(crate::oauth::var("CLOUDSYNC_TEST_SAML_METADATA"))
        .await
        .expect("metadata")
        .text()
        .await
        .expect("XML");
    let (start, end) = (
        real.find("<X509Certificate>").expect("a certificate") + "<X509Certificate>".len(),
        real.find("</X509Certificate>").expect("its end"),
    );
    let impostor = format!("{}{}{}", &real[..start], another_certificate(), &real[end..]);
    std::fs::write(h.db.dir().join("impostor-idp.xml"), impostor).expect("written");
    let (response, relay_state) = saml_answer(&begin_saml_with(h, "impostor").await, "mallory").await;
    let (status, _, body) = post_acs(h, &response, &relay_state, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(text(&body["errors"][0]["message"]).contains("does not verify"), "{body}");
    // An answer is bound to the request it answers: another sign-in's RelayState refuses it.
    let (first, _) = saml_answer(&begin_saml(h).await, "gina").await;
    let (_, second_relay) = saml_answer(&begin_saml(h).await, "gina").await;
    let (status, _, body) = post_acs(h, &first, &second_relay, None).await;
    assert_eq!(status, 401, "{body}");
    // A junk answer under someone's RelayState does not use up their sign-in.
    let (genuine, relay_state) = saml_answer(&begin_saml(h).await, "dora").await;
    let junk = base64::engine::general_purpose::STANDARD.encode("<samlp:Response/>");
    let (status, _, body) = post_acs(h, &junk, &relay_state, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = post_acs(h, &genuine, &relay_state, None).await;
    assert_eq!(status, 200, "{body}");
    // Unsolicited answers, made-up states and empty posts change nothing.
    let (status, _, _) = post_acs(h, &first, "", None).await;
    assert_eq!(status, 400);
    let (status, _, _) = post_acs(h, &first, "made-up", None).await;
    assert_eq!(status, 400);
    let (status, _, _) = post_acs(h, "", "made-up", None).await;
    assert_eq!(status, 400);
    // No account was made for the refused answers: their addresses are still free.
    h.register("mallory@example.test").await;
    h.register("gina@example.test").await;

    // Browsers: the sign-in is tied to the browser that began it, and the refresh token goes to a
    // cookie only.
    let (begun, binding) = begin_in_browser_with(h, BEGIN_SAML).await;
    assert!(
        binding.starts_with("cloudsync_saml=") && binding.contains("SameSite=None") && binding.contains("Secure"),
        "{binding}"
    );
    let binding = binding.split(';').next().expect("cookie").to_owned();
    let (elsewhere, _) = begin_in_browser_with(h, BEGIN_SAML).await;
    let (response, relay_state) = saml_answer(&text(&elsewhere["data"]["beginSamlLogin"]["redirectUrl"]), "dora").await;
    let (status, _, body) = post_acs(h, &response, &relay_state, None).await;
    assert_eq!(status, 400, "another browser cannot finish it: {body}");
    let (response, relay_state) = saml_answer(&text(&begun["data"]["beginSamlLogin"]["redirectUrl"]), "dora").await;
    let (status, cookie, body) = post_acs(h, &response, &relay_state, Some(&binding)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refreshToken"], Value::Null);
    assert!(cookie.expect("a refresh cookie").starts_with("cloudsync_refresh=csr1."));
}

/// `cloudsync keys rotate-master` replaces the generated master key and re-wraps every user key and
/// signing key: sealed secrets still open, tokens still sign, and the old key opens nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_rotates_and_everything_still_opens() {
    let mut h = Harness::new(Backend::Sqlite).await;
    let (token, _) = h.register("rotation@example.org").await;
    let begun = h.ok(Some(&token), "mutation { beginTotpEnrollment { secret } }", json!({})).await;
    let secret = data_encoding::BASE32_NOPAD
        .decode(text(&begun["beginTotpEnrollment"]["secret"]).as_bytes())
        .expect("base32");
    let data = h.db.dir().join("data");
    let old_key = std::fs::read_to_string(data.join("master-key")).expect("the generated key");
    if let Some(server) = h.server.take() {
        server.stop().await;
    }
    let config = cloudsync_gateway::Config {
        data_dir: data.clone(),
        bind: "127.0.0.1:0".into(),
        database_url: Some(h.db.url.clone()),
        ..cloudsync_gateway::Config::default()
    };
    let run = |command: cloudsync_gateway::cli::KeysCommand| {
        let (config, db) = (config.clone(), h.db.db.clone());
        async move {
            let mut out = Vec::new();
            let result = cloudsync_gateway::cli::keys(&config, &db, &command, &mut out).await;
            result.map(|()| String::from_utf8(out).expect("text"))
        }
    };
    let printed = run(cloudsync_gateway::cli::KeysCommand::RotateMaster).await.expect("rotate");
    assert!(printed.contains("1 user keys and 1 signing keys re-wrapped"), "{printed}");
    let new_key = std::fs::read_to_string(data.join("master-key")).expect("the new key");
    assert_ne!(new_key.trim(), old_key.trim());
    let previous = std::fs::read_to_string(data.join("master-key.previous")).expect("the old key is kept");
    assert_eq!(previous.trim(), old_key.trim());

    // Everything is wrapped by the new key: the old one alone opens nothing.
    let old = cloudsync_commands::MasterKey::parse(&old_key).expect("key");
    let new = cloudsync_commands::MasterKey::parse(&new_key).expect("key");
    let cloudsync_eventstore::DbPool::Sqlite(pool) = &h.db.db.pool else {
        panic!("a SQLite test database")
    };
    let (user, wrapped): (String, String) = sqlx::query_as("SELECT user_id, wrapped_key FROM user_keys")
        .fetch_one(pool)
        .await
        .expect("a user key");
    assert!(new.is_current(&wrapped), "{wrapped}");
    assert!(old.open(&user, &wrapped).is_err());
    assert!(new.open(&user, &wrapped).is_ok());
    assert!(
        run(cloudsync_gateway::cli::KeysCommand::Rewrap)
            .await
            .expect("again")
            .contains("0 user keys and 0 signing keys")
    );

    // A server on the new key: the sealed TOTP secret opens (its code confirms), tokens sign.
    std::fs::remove_file(data.join("master-key.previous")).expect("drop the old key");
    let server = cloudsync_gateway::start(&config).await.expect("restart");
    let url = format!("http://{}/graphql", server.addr());
    let post = |token: Option<String>, query: &'static str, variables: Value| {
        let (client, url) = (h.client.clone(), url.clone());
        async move {
            let mut request = client.post(url).json(&json!({ "query": query, "variables": variables }));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.expect("post").json::<Value>().await.expect("JSON")
        }
    };
    let signed_in = post(None, LOGIN, json!({ "e": "rotation@example.org", "p": PASSWORD })).await;
    let token = text(&signed_in["data"]["login"]["accessToken"]);
    let confirmed = post(
        Some(token),
        "mutation($c: String!) { confirmTotpEnrollment(code: $c) }",
        json!({ "c": totp_now(&secret, 0) }),
    )
    .await;
    assert_eq!(
        confirmed["data"]["confirmTotpEnrollment"].as_array().map(Vec::len),
        Some(10),
        "{confirmed}"
    );
    server.stop().await;

    // A configured master key is rotated by configuration, not by this command.
    let configured = cloudsync_gateway::Config {
        master_key: Some(secrecy::SecretString::from(new_key.trim().to_owned())),
        ..config.clone()
    };
    let mut out = Vec::new();
    let refused = cloudsync_gateway::cli::keys(&configured, &h.db.db, &cloudsync_gateway::cli::KeysCommand::RotateMaster, &mut out).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("CLOUDSYNC_MASTER_KEY_PREVIOUS")));
    h.stop().await;
}

async fn a_websocket_checks_its_credential_for_every_operation(h: &Harness) {
    let (token, user) = h.register("socket@example.org").await;
    let mut socket = h.socket(&token).await;
    let me = over_socket(&mut socket, "1", "{ me { id } }", json!({})).await;
    assert_eq!(me["data"]["me"]["id"], json!(user), "{me}");
    // Signed out elsewhere: the open connection stops working too.
    h.ok(Some(&token), "mutation { logout }", json!({})).await;
    let after = over_socket(&mut socket, "2", "{ me { id } }", json!({})).await;
    assert_eq!(after["errors"][0]["extensions"]["code"], json!("UNAUTHENTICATED"), "{after}");
    let late = "mutation { createApiToken(name: \"late\", scopes: [\"files:read\"]) { token } }";
    let token_mutation = over_socket(&mut socket, "3", late, json!({})).await;
    assert_eq!(
        token_mutation["errors"][0]["extensions"]["code"],
        json!("UNAUTHENTICATED"),
        "{token_mutation}"
    );

    // A mutation that ends its own session over the socket gets its answer.
    let again = text(&login(h, "socket@example.org").await["accessToken"]);
    let mut own = h.socket(&again).await;
    let out = over_socket(&mut own, "1", "mutation { logout }", json!({})).await;
    assert_eq!(out["data"]["logout"], json!(true), "{out}");

    // A subscription started before its session was revoked sends an error with its next event,
    // and ends.
    let scanned = h.scanned("watcher@example.org").await;
    let other = text(&login(h, "watcher@example.org").await["accessToken"]);
    let query = "subscription($p: ID!) { fileChanges(providerId: $p) { kind path } }";
    let mut watching = h.subscribe(&scanned.token, query, json!({ "p": scanned.provider })).await;
    let mut folders = ["a", "b"].into_iter().cycle();
    let mut next_change = async |token: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(std::time::Instant::now() < deadline, "no change arrived");
            let moved = json!({ "ids": [scanned.readme], "to": folders.next() });
            h.ok(Some(token), crate::spine::MOVE, moved).await;
            if let Ok(message) = tokio::time::timeout(Duration::from_millis(500), crate::spine::next_json(&mut watching)).await {
                return message;
            }
        }
    };
    let change = next_change(&other).await;
    assert_eq!(change["payload"]["data"]["fileChanges"]["kind"], json!("MOVED"), "{change}");
    h.ok(Some(&scanned.token), "mutation { logout }", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = next_change(&other).await;
    assert_eq!(refused["type"], json!("next"), "{refused}");
    assert_eq!(refused["payload"]["data"], Value::Null, "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"],
        json!("UNAUTHENTICATED"),
        "{refused}"
    );
    let complete = crate::spine::next_json(&mut watching).await;
    assert_eq!(complete["type"], json!("complete"), "{complete}");
}

async fn erasing_an_account_shreds_its_personal_data(h: &Harness) {
    let (token, user) = h.register("erase.me@example.org").await;
    let folder = h.db.dir().join("erased-files");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("diary.txt"), "private").expect("write");
    h.connect_local(&token, &folder).await;
    h.ok(Some(&token), "mutation { beginTotpEnrollment { secret } }", json!({})).await;
    let (other, _) = h.register("stays@example.org").await;
    // The address is sealed in the events; the account sees it in the clear.
    let stream = format!("user-{user}");
    let events = h.db.db.stored.read_stream(&stream).await.expect("read");
    assert!(
        events.iter().all(|e| !e.payload.to_string().contains("erase.me@example.org")),
        "the address is sealed"
    );
    // So is the password's hash, in the log as stored; the account still signs in with it.
    let stored: String = events.iter().map(|e| e.payload.to_string()).collect();
    assert!(
        !stored.contains("$argon2") && stored.contains("sealed_hash"),
        "the hash is sealed: {stored}"
    );
    let opened = h.db.db.events.read_stream(&stream).await.expect("read");
    assert!(
        text(&opened[0].payload["password_hash"]).starts_with("$argon2"),
        "and opens for the account"
    );
    assert!(login(h, "erase.me@example.org").await["accessToken"].is_string());
    assert_eq!(
        h.ok(Some(&token), ME, json!({})).await["me"]["email"],
        json!("erase.me@example.org")
    );
    // So are the provider's name and settings (here: the folder's path).
    let providers = h.ok(Some(&token), "{ providers { id displayName config } }", json!({})).await;
    assert_eq!(providers["providers"][0]["displayName"], json!("erased-files"));
    assert_eq!(providers["providers"][0]["config"]["root"], json!(folder.display().to_string()));
    let provider_stream = format!("provider-{}", text(&providers["providers"][0]["id"]));
    let connected = h.db.db.events.read_stream(&provider_stream).await.expect("read");
    assert!(
        !connected.is_empty() && connected.iter().all(|e| !e.payload.to_string().contains("erased-files")),
        "the name and the path are sealed"
    );

    let erase = "mutation($p: String) { deleteAccount(password: $p) }";
    assert_eq!(
        h.error_code(Some(&token), erase, json!({ "p": "wrong password" })).await,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        h.ok(Some(&token), erase, json!({ "p": PASSWORD })).await["deleteAccount"],
        json!(true)
    );

    // Signed out and gone: its token, its password, its read-model rows.
    assert!(!works(h, &token).await);
    let login = h.gql(None, LOGIN, json!({ "e": "erase.me@example.org", "p": PASSWORD })).await;
    assert_eq!(outcome(&login), "UNAUTHENTICATED");
    let key = "SELECT wrapped_key FROM user_keys WHERE user_id = $1";
    let wrapped: Option<String> = match &h.db.db.pool {
        cloudsync_eventstore::DbPool::Sqlite(p) => sqlx::query_scalar(key).bind(&user).fetch_optional(p).await.expect("key"),
        cloudsync_eventstore::DbPool::Postgres(p) => sqlx::query_scalar(key).bind(&user).fetch_optional(p).await.expect("key"),
    };
    assert_eq!(wrapped.as_deref(), Some("erased"), "the data key is destroyed");

    // A scan that was still going when the account was erased and records a file afterwards
    // writes no row for it.
    let all = h.db.db.events.read_all(0, 100_000).await.expect("log");
    let discovered = all
        .iter()
        .find(|e| e.event_type == "FileDiscovered" && e.payload["owner_id"] == json!(user))
        .expect("the diary was discovered");
    let mut late = discovered.payload.clone();
    let late_file = Uuid::now_v7();
    late["file_id"] = json!(late_file);
    let late = cloudsync_eventstore::NewEvent {
        event_type: discovered.event_type.clone(),
        schema_version: discovered.schema_version,
        payload: late,
        metadata: discovered.metadata.next(),
    };
    cloudsync_eventstore::append_to(
        &*h.db.db.events,
        &format!("file-{late_file}"),
        cloudsync_eventstore::ExpectedVersion::NoStream,
        vec![late],
    )
    .await
    .expect("appended");
    h.server().app().caught_up().await;
    let count = "SELECT COUNT(*) FROM files WHERE user_id = $1";
    let rows: i64 = match &h.db.db.pool {
        cloudsync_eventstore::DbPool::Sqlite(p) => sqlx::query_scalar(count).bind(&user).fetch_one(p).await.expect("count"),
        cloudsync_eventstore::DbPool::Postgres(p) => sqlx::query_scalar(count)
            .bind(Uuid::parse_str(&user).expect("uuid"))
            .fetch_one(p)
            .await
            .expect("count"),
    };
    assert_eq!(rows, 0, "no row comes back for an erased account");

    // The events remain, replay works, and what they sealed cannot be read any more.
    let events = h.db.db.events.read_stream(&stream).await.expect("read");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"UserRegistered"));
    assert_eq!(types.last(), Some(&"UserDeleted"));
    // (Read through the server's store, which let the key go as it recorded the erasure; another
    // process's lets it go within 30 s.)
    let opened = h.server().app().db.events.read_stream(&stream).await.expect("read");
    assert_eq!(opened[0].payload["password_hash"], json!("erased"), "no hash opens any more");
    let key_text = std::fs::read_to_string(h.db.dir().join("data/master-key")).expect("master key");
    let vault = cloudsync_commands::Vault::new(cloudsync_commands::MasterKey::parse(&key_text).expect("key"), h.db.db.pool.clone());
    let sealed: cloudsync_domain::events::SealedSecret =
        serde_json::from_value(events[0].payload["email"]["sealed"].clone()).expect("a sealed address");
    let user_id = cloudsync_domain::UserId::from_uuid(Uuid::parse_str(&user).expect("uuid"));
    assert!(vault.open(user_id, &sealed).await.is_err(), "unreadable for ever");
    let name: cloudsync_domain::events::SealedSecret =
        serde_json::from_value(connected[0].payload["display_name"]["sealed"].clone()).expect("a sealed name");
    assert!(vault.open(user_id, &name).await.is_err(), "the provider's name too");
    assert!(vault.seal(user_id, b"new").await.is_err(), "and nothing new is sealed for it");
    let mut out = Vec::new();
    cloudsync_gateway::cli::replay(&h.db.db, Some(&stream), None, true, &mut out)
        .await
        .expect("the history replays");
    let replayed = String::from_utf8(out).expect("text");
    assert!(
        replayed.contains("UserDeleted") && !replayed.contains("erase.me@example.org") && replayed.contains("[redacted]"),
        "{replayed}"
    );
    let rebuilt = cloudsync_projections::rebuild(&h.db.db, "users")
        .await
        .expect("the read model rebuilds");
    assert!(rebuilt > 0);
    let admin_view = "SELECT COUNT(*) FROM users WHERE email LIKE '%erase.me%' OR CAST(id AS TEXT) = $1";
    let left: i64 = match &h.db.db.pool {
        cloudsync_eventstore::DbPool::Sqlite(p) => sqlx::query_scalar(admin_view).bind(&user).fetch_one(p).await.expect("count"),
        cloudsync_eventstore::DbPool::Postgres(p) => sqlx::query_scalar(admin_view).bind(&user).fetch_one(p).await.expect("count"),
    };
    assert_eq!(left, 0, "no row of the erased account after a rebuild");
    // The live projectors have applied everything up to now.
    h.server().app().caught_up().await;
    let provider_rows = "SELECT COUNT(*) FROM providers WHERE CAST(user_id AS TEXT) = $1";
    let providers: i64 = match &h.db.db.pool {
        cloudsync_eventstore::DbPool::Sqlite(p) => sqlx::query_scalar(provider_rows).bind(&user).fetch_one(p).await.expect("count"),
        cloudsync_eventstore::DbPool::Postgres(p) => sqlx::query_scalar(provider_rows).bind(&user).fetch_one(p).await.expect("count"),
    };
    assert_eq!(providers, 0, "its providers left the read model");
    let disconnected = h.db.db.events.read_all(0, 10_000).await.expect("log");
    assert!(
        disconnected.iter().any(|e| e.event_type == "ProviderDisconnected"),
        "its provider was disconnected first"
    );
    assert!(folder.join("diary.txt").exists(), "its files stay where they are");
    // Everyone else is untouched.
    assert_eq!(h.ok(Some(&other), ME, json!({})).await["me"]["email"], json!("stays@example.org"));

    // The address was released: someone can register it again, as a new account.
    let (again, new_user) = h.register("erase.me@example.org").await;
    assert_ne!(new_user, user);
    assert_eq!(
        h.ok(Some(&again), ME, json!({})).await["me"]["email"],
        json!("erase.me@example.org")
    );
    let taken = "mutation { register(email: \"erase.me@example.org\", password: \"another password\") { accessToken } }";
    assert_eq!(h.error_code(None, taken, json!({})).await, "ALREADY_EXISTS");
    // The reservation's stream is not named after the address alone (a keyed hash is): nobody can
    // tell from the log whether an address ever had an account.
    let address = cloudsync_domain::Email::parse("erase.me@example.org").expect("address");
    let unkeyed = cloudsync_domain::ids::email_stream(&address);
    assert!(h.db.db.events.read_stream(&unkeyed).await.expect("read").is_empty());
}

/// Addresses reserved before reservation streams were keyed (on the address's plain UUIDv5 stream)
/// still belong to their accounts: the account signs in, and nobody else can register the address.
async fn reservations_made_before_keyed_names_still_hold(h: &Harness) {
    use cloudsync_domain::events::{EmailClaimed, Personal, UserRegistered};
    let user = cloudsync_domain::UserId::from_uuid(Uuid::new_v4());
    let address = cloudsync_domain::Email::parse("legacy@example.org").expect("address");
    let event = |event: cloudsync_domain::DomainEvent| {
        let encoded = event.encode();
        cloudsync_eventstore::NewEvent {
            event_type: encoded.event_type,
            schema_version: encoded.schema_version,
            payload: encoded.payload,
            metadata: cloudsync_eventstore::EventMetadata::new(Some(user.as_uuid())),
        }
    };
    let registered = event(cloudsync_domain::DomainEvent::UserRegistered(UserRegistered {
        user_id: user,
        email: Personal::Clear(address.as_str().to_owned()),
        password_hash: bcrypt::hash(PASSWORD, 4).expect("bcrypt"),
        registered_at: Utc::now(),
    }));
    let claimed = event(cloudsync_domain::DomainEvent::EmailClaimed(EmailClaimed {
        email: Personal::Clear(address.as_str().to_owned()),
        user_id: user,
    }));
    h.db.db
        .events
        .append(vec![
            cloudsync_eventstore::StreamAppend {
                stream: user.stream(),
                expected: cloudsync_eventstore::ExpectedVersion::NoStream,
                events: vec![registered],
            },
            cloudsync_eventstore::StreamAppend {
                stream: cloudsync_domain::ids::email_stream(&address),
                expected: cloudsync_eventstore::ExpectedVersion::NoStream,
                events: vec![claimed],
            },
        ])
        .await
        .expect("appended");
    let signed_in = login(h, "legacy@example.org").await;
    assert_eq!(signed_in["user"]["id"], json!(user.to_string()));
    let taken = "mutation { register(email: \"legacy@example.org\", password: \"another password\") { accessToken } }";
    assert_eq!(h.error_code(None, taken, json!({})).await, "ALREADY_EXISTS");
}
