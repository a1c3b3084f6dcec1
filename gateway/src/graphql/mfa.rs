//! Second factors: TOTP enrollment (secret, provisioning URI, QR code, confirmation, recovery
//! codes), passkeys (WebAuthn registration and removal), and the second step of a login that needs
//! one (`completeMfaLogin`, `completePasskeyLogin`).
//!
//! A login that needs a second factor answers with an `mfa` challenge instead of tokens. The
//! challenge lives in the session store for five minutes and is taken by whoever completes it;
//! a wrong code puts it back, at most five times.

use std::time::Duration;

use async_graphql::{Context, Enum, ID, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use cloudsync_commands::{CodeKind, CommandError};
use cloudsync_domain::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;
use webauthn_rs::prelude::{AuthenticationResult, Passkey, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential};

use super::signin::{
    AuthPayload, CHALLENGE_TTL, MAX_ATTEMPTS, PendingLogin, answer_error, challenges, confirm_password, keep, passkeys_of, retry,
    signed_in, store_error, take,
};
use super::{app, client_ip, limit, load_user, parse_id, session_caller};
use crate::app::App;
use crate::errors::{ApiError, ApiResult};
use cloudsync_identity::login::Judged;
use cloudsync_identity::sessions::hash as secret_hash;

const ISSUER: &str = "CloudSync";

#[derive(Serialize, Deserialize)]
struct PendingSms {
    phone: String,
    code: String,
    attempts: u32,
}

/// A six-digit code to send by text message.
fn sms_code() -> String {
    use rand::Rng as _;
    format!("{:06}", rand::thread_rng().gen_range(0..1_000_000))
}

/// Whether `phone` is an E.164 number: `+`, then 8 to 15 digits.
fn e164(phone: &str) -> Option<String> {
    let compact: String = phone.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')')).collect();
    let digits = compact.strip_prefix('+')?;
    ((8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')).then_some(compact)
}

/// `+44•••••7890`: enough to recognise one's own number.
fn masked(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    let keep_start = 3.min(chars.len());
    let keep_end = 4.min(chars.len() - keep_start);
    let hidden = chars.len() - keep_start - keep_end;
    format!(
        "{}{}{}",
        chars[..keep_start].iter().collect::<String>(),
        "•".repeat(hidden),
        chars[chars.len() - keep_end..].iter().collect::<String>()
    )
}

#[derive(Serialize, Deserialize)]
struct PendingRegistration {
    user: UserId,
    state: PasskeyRegistration,
}

fn webauthn(app: &App) -> ApiResult<&webauthn_rs::Webauthn> {
    app.passkeys.as_deref().map_err(|why| ApiError::BadInput(why.clone()))
}

/// Hands a text message to the configured sender.
async fn text(app: &App, phone: &str, message: &str) -> ApiResult<()> {
    app.sms.send(phone, message).await.map_err(|err| ApiError::internal(&err))
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum MfaCodeMethod {
    Totp,
    RecoveryCode,
    /// The code `sendMfaSms` sent.
    Sms,
}

impl From<MfaCodeMethod> for CodeKind {
    fn from(method: MfaCodeMethod) -> Self {
        match method {
            MfaCodeMethod::Totp => CodeKind::Totp,
            MfaCodeMethod::RecoveryCode => CodeKind::RecoveryCode,
            MfaCodeMethod::Sms => CodeKind::Sms,
        }
    }
}

#[derive(SimpleObject)]
pub struct MfaStatus {
    totp_enabled: bool,
    /// An enrollment waits for its confirming code.
    totp_pending: bool,
    recovery_codes_left: i32,
    passkeys: Vec<PasskeyInfo>,
    /// The number second-factor codes are texted to, mostly hidden.
    sms_number: Option<String>,
}

#[derive(SimpleObject)]
pub struct PasskeyInfo {
    id: ID,
    name: String,
    registered_at: DateTime<Utc>,
}

#[derive(SimpleObject)]
pub struct TotpEnrollment {
    /// The secret in base32, for typing into an authenticator app.
    secret: String,
    /// `otpauth://totp/…`, what the QR code holds.
    provisioning_uri: String,
    /// The provisioning URI as a QR code, an SVG image.
    qr_code_svg: String,
}

#[derive(SimpleObject)]
pub struct PasskeyRegistrationStart {
    registration_id: ID,
    /// The options to pass to `navigator.credentials.create`.
    options: Json<Value>,
}

fn code_error(err: CommandError) -> ApiError {
    match err {
        CommandError::Invalid(why) | CommandError::Conflict(why) => ApiError::BadInput(why),
        other => ApiError::from(other),
    }
}

#[derive(Default)]
pub struct MfaQuery;

#[Object]
impl MfaQuery {
    /// The caller's second factors.
    async fn mfa(&self, ctx: &Context<'_>) -> async_graphql::Result<MfaStatus> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        let user = load_user(app, caller.user_id).await?;
        let phone = app.commands.sms_phone(caller.user_id).await.map_err(ApiError::from)?;
        Ok(MfaStatus {
            sms_number: phone.as_deref().map(masked),
            totp_enabled: user.totp_secret().is_some(),
            totp_pending: user.totp_pending().is_some(),
            recovery_codes_left: i32::try_from(user.recovery_codes_left()).unwrap_or(i32::MAX),
            passkeys: user
                .passkeys()
                .map(|p| PasskeyInfo {
                    id: ID(p.credential_id.clone()),
                    name: p.name.clone(),
                    registered_at: p.registered_at,
                })
                .collect(),
        })
    }
}

#[derive(Default)]
pub struct MfaMutation;

#[Object]
impl MfaMutation {
    /// Starts TOTP enrollment: add the secret to an authenticator app, then confirm with a code.
    async fn begin_totp_enrollment(&self, ctx: &Context<'_>) -> async_graphql::Result<TotpEnrollment> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        let email = app
            .commands
            .email_of(caller.user_id)
            .await
            .map_err(ApiError::from)?
            .unwrap_or_default();
        let secret = app.commands.begin_totp(caller.user_id).await.map_err(ApiError::from)?;
        let uri = cloudsync_commands::totp_uri(&secret, &email, ISSUER);
        let qr = qrcode::QrCode::new(uri.as_bytes()).map_err(store_error)?;
        let svg = qr.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).build();
        Ok(TotpEnrollment {
            secret: cloudsync_commands::totp_base32(&secret),
            provisioning_uri: uri,
            qr_code_svg: svg,
        })
    }

    /// Confirms TOTP enrollment with a current code; returns ten single-use recovery codes, shown
    /// only now. From then on, logins need a second factor.
    async fn confirm_totp_enrollment(&self, ctx: &Context<'_>, code: String) -> async_graphql::Result<Vec<String>> {
        let caller = session_caller(ctx)?;
        limit(ctx, app(ctx).rules.login, &format!("account-id:{}", caller.user_id)).await?;
        let codes = app(ctx).commands.confirm_totp(caller.user_id, &code).await.map_err(code_error)?;
        Ok(codes)
    }

    /// Turns TOTP off, proven by a current TOTP code or a recovery code.
    async fn disable_totp(
        &self,
        ctx: &Context<'_>,
        code: String,
        #[graphql(default_with = "MfaCodeMethod::Totp")] method: MfaCodeMethod,
    ) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
        limit(ctx, app(ctx).rules.login, &format!("account-id:{}", caller.user_id)).await?;
        app(ctx)
            .commands
            .disable_totp(caller.user_id, method.into(), &code)
            .await
            .map_err(code_error)?;
        Ok(true)
    }

    /// Starts registering a passkey: pass `options` to `navigator.credentials.create`, then give
    /// the result to `finishPasskeyRegistration` within five minutes.
    async fn begin_passkey_registration(&self, ctx: &Context<'_>) -> async_graphql::Result<PasskeyRegistrationStart> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        let webauthn = webauthn(app)?;
        let user = load_user(app, caller.user_id).await?;
        let email = app
            .commands
            .email_of(caller.user_id)
            .await
            .map_err(ApiError::from)?
            .unwrap_or_default();
        let existing = passkeys_of(&user).iter().map(|p| p.cred_id().clone()).collect::<Vec<_>>();
        let (options, state) = webauthn
            .start_passkey_registration(caller.user_id.as_uuid(), &email, &email, Some(existing))
            .map_err(store_error)?;
        let id = Uuid::new_v4();
        let pending = serde_json::to_string(&PendingRegistration {
            user: caller.user_id,
            state,
        })
        .map_err(store_error)?;
        app.tokens
            .sessions()
            .store()
            .put_state(&format!("passkey-registration:{id}"), &pending, CHALLENGE_TTL)
            .await
            .map_err(store_error)?;
        Ok(PasskeyRegistrationStart {
            registration_id: ID(id.to_string()),
            options: Json(serde_json::to_value(options).map_err(store_error)?),
        })
    }

    /// Finishes registering a passkey with what the authenticator returned.
    async fn finish_passkey_registration(
        &self,
        ctx: &Context<'_>,
        registration_id: ID,
        credential: Json<Value>,
        name: String,
    ) -> async_graphql::Result<PasskeyInfo> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        let webauthn = webauthn(app)?;
        let id = parse_id(&registration_id, "registrationId")?;
        let credential: RegisterPublicKeyCredential = serde_json::from_value(credential.0)
            .map_err(|err| ApiError::BadInput(format!("credential is not a WebAuthn registration response: {err}")))?;
        let unknown = || ApiError::not_found("passkey registration");
        let pending = app
            .tokens
            .sessions()
            .store()
            .take_state(&format!("passkey-registration:{id}"))
            .await
            .map_err(store_error)?
            .ok_or_else(unknown)?;
        let pending: PendingRegistration = serde_json::from_str(&pending).map_err(store_error)?;
        if pending.user != caller.user_id {
            return Err(unknown().into());
        }
        let passkey = webauthn
            .finish_passkey_registration(&credential, &pending.state)
            .map_err(|err| ApiError::BadInput(format!("the passkey could not be verified: {err}")))?;
        let credential_id = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(passkey.cred_id())
        };
        let record = serde_json::to_value(&passkey).map_err(store_error)?;
        let name_kept = name.trim().to_owned();
        let position = app
            .commands
            .register_passkey(caller.user_id, credential_id.clone(), name, record)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(PasskeyInfo {
            id: ID(credential_id),
            name: name_kept,
            registered_at: Utc::now(),
        })
    }

    /// Removes one of the caller's passkeys; confirmed with the account's password.
    async fn remove_passkey(&self, ctx: &Context<'_>, id: ID, password: Option<String>) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
        confirm_password(ctx, app(ctx), caller.user_id, password).await?;
        app(ctx)
            .commands
            .remove_passkey(caller.user_id, id.to_string())
            .await
            .map_err(ApiError::from)?;
        Ok(true)
    }

    /// The second step of a login: a TOTP code (or a recovery code) for the challenge `login`
    /// returned.
    async fn complete_mfa_login(
        &self,
        ctx: &Context<'_>,
        mfa_token: String,
        code: String,
        #[graphql(default_with = "MfaCodeMethod::Totp")] method: MfaCodeMethod,
    ) -> async_graphql::Result<AuthPayload> {
        let app = app(ctx);
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        // A texted code is checked against the one sent for this login first; then the code itself,
        // once (a TOTP step or a recovery code is used up by the check).
        let (pending, ()) = challenges(app)
            .answer(&mfa_token, async |pending: &PendingLogin| {
                if method == MfaCodeMethod::Sms {
                    pending.check_texted(&code).map_err(Judged::Wrong)?;
                }
                match app.commands.use_mfa_code(pending.user, method.into(), &code).await {
                    Ok(_) => Ok(()),
                    Err(CommandError::Invalid(why) | CommandError::Conflict(why)) => Err(Judged::Wrong(why)),
                    Err(err) => Err(Judged::Failed(ApiError::from(err))),
                }
            })
            .await
            .map_err(answer_error)?;
        Ok(signed_in(ctx, app, pending.user, pending.email, pending.cookie).await?)
    }

    /// Texts a code for the login's challenge to the account's phone (a few a minute at most); then
    /// `completeMfaLogin(method: SMS)`.
    async fn send_mfa_sms(&self, ctx: &Context<'_>, mfa_token: String) -> async_graphql::Result<bool> {
        let app = app(ctx);
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        let mut pending = take(app, &mfa_token).await?;
        let user_id = pending.user;
        let Some(phone) = app.commands.sms_phone(user_id).await.map_err(ApiError::from)? else {
            return Err(retry(app, &mfa_token, pending, "this account has no phone number for codes".into())
                .await
                .into());
        };
        if let Err(err) = limit(ctx, app.rules.sms, &format!("user:{}", pending.user)).await {
            // Refused, not failed: the login can still be completed another way.
            keep(app, &mfa_token, &pending).await?;
            return Err(err.into());
        }
        let code = sms_code();
        pending.sms_code = Some(secret_hash(&code));
        keep(app, &mfa_token, &pending).await?;
        text(app, &phone, &format!("{code} is your CloudSync sign-in code.")).await?;
        Ok(true)
    }

    /// Starts receiving second-factor codes by text message: sends a code to `phone` (E.164, such
    /// as +447700900123) to confirm with `confirmSmsEnrollment` within ten minutes.
    async fn begin_sms_enrollment(&self, ctx: &Context<'_>, phone: String) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        let phone = e164(&phone).ok_or_else(|| ApiError::BadInput("phone must be an international number such as +447700900123".into()))?;
        limit(ctx, app.rules.sms, &format!("user:{}", caller.user_id)).await?;
        let code = sms_code();
        let pending = serde_json::to_string(&PendingSms {
            phone: phone.clone(),
            code: secret_hash(&code),
            attempts: 0,
        })
        .map_err(store_error)?;
        app.tokens
            .sessions()
            .store()
            .put_state(&format!("sms-enrollment:{}", caller.user_id), &pending, Duration::from_secs(600))
            .await
            .map_err(store_error)?;
        text(app, &phone, &format!("{code} is your CloudSync code to confirm this number.")).await?;
        Ok(true)
    }

    /// Confirms the number with the code it received; from then on it is a second factor.
    async fn confirm_sms_enrollment(&self, ctx: &Context<'_>, code: String) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        let key = format!("sms-enrollment:{}", caller.user_id);
        let store = app.tokens.sessions().store();
        let pending = store
            .take_state(&key)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::BadInput("no number is waiting for its code (begin again)".into()))?;
        let mut pending: PendingSms = serde_json::from_str(&pending).map_err(store_error)?;
        if pending.code != secret_hash(code.trim()) {
            pending.attempts += 1;
            if pending.attempts < MAX_ATTEMPTS {
                let value = serde_json::to_string(&pending).map_err(store_error)?;
                store.put_state(&key, &value, Duration::from_secs(600)).await.map_err(store_error)?;
                return Err(ApiError::BadInput("the code is wrong".into()).into());
            }
            return Err(ApiError::BadInput("the code is wrong; too many attempts, begin again".into()).into());
        }
        let position = app
            .commands
            .enable_sms(caller.user_id, &pending.phone)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(true)
    }

    /// Stops sending second-factor codes by text message; confirmed with the account's password.
    async fn disable_sms(&self, ctx: &Context<'_>, password: Option<String>) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
        confirm_password(ctx, app(ctx), caller.user_id, password).await?;
        app(ctx).commands.disable_sms(caller.user_id).await.map_err(code_error)?;
        Ok(true)
    }

    /// The second step of a login with a passkey: what `navigator.credentials.get` returned for
    /// the challenge's `passkeyOptions`.
    async fn complete_passkey_login(
        &self,
        ctx: &Context<'_>,
        mfa_token: String,
        credential: Json<Value>,
    ) -> async_graphql::Result<AuthPayload> {
        let app = app(ctx);
        let webauthn = webauthn(app)?;
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        let (pending, ()) = challenges(app)
            .answer(&mfa_token, async |pending: &PendingLogin| {
                let Some(state) = pending.passkey.as_ref() else {
                    return Err(Judged::Wrong("this account has no passkey".into()));
                };
                let credential = serde_json::from_value::<PublicKeyCredential>(credential.0.clone())
                    .map_err(|err| Judged::Wrong(format!("credential is not a WebAuthn authentication response: {err}")))?;
                let result = webauthn
                    .finish_passkey_authentication(&credential, state)
                    .map_err(|err| Judged::Wrong(format!("the passkey did not verify: {err}")))?;
                count_use(app, pending.user, &result).await.map_err(Judged::Failed)
            })
            .await
            .map_err(answer_error)?;
        Ok(signed_in(ctx, app, pending.user, pending.email, pending.cookie).await?)
    }
}

/// Records a passkey's moved signature counter, so that a cloned authenticator shows.
async fn count_use(app: &App, user_id: UserId, result: &AuthenticationResult) -> ApiResult<()> {
    let user = load_user(app, user_id).await?;
    for stored in user.passkeys() {
        let Ok(mut passkey) = serde_json::from_value::<Passkey>(stored.record.clone()) else {
            continue;
        };
        if passkey.update_credential(result) == Some(true) {
            let record = serde_json::to_value(&passkey).map_err(store_error)?;
            app.commands
                .update_passkey(user_id, stored.credential_id.clone(), record)
                .await
                .map_err(ApiError::from)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_e164_and_shown_masked() {
        assert_eq!(e164("+44 7700 900123").as_deref(), Some("+447700900123"));
        assert_eq!(e164("+1 (555) 010-9999").as_deref(), Some("+15550109999"));
        for bad in ["07700900123", "+44", "+0447700900123", "+44abc7700900", "+1234567890123456"] {
            assert_eq!(e164(bad), None, "{bad}");
        }
        assert_eq!(masked("+447700900123"), "+44••••••0123");
        assert!(sms_code().len() == 6 && sms_code().bytes().all(|b| b.is_ascii_digit()));
    }
}
