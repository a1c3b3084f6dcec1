//! The login flow. First step ([`first_step`]): the password, checked in the same time whether or
//! not the account exists, decides between a refusal, a session, and a second factor. Second step:
//! once the password (or a single sign-on) is right and the account has a second factor, the login
//! waits as a pending login under a one-use token for five minutes
//! and five wrong answers, kept in the session store (under a hash of the token), so whichever
//! API process receives the answer can complete it. Whoever takes the pending login first has it;
//! a wrong answer puts it back with one attempt fewer.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use cloudsync_domain::user::User;
use cloudsync_domain::{Email, UserId};

use crate::clock::Clock;
use crate::passwords::{Passwords, Verdict};
use crate::sessions::{SessionStore, StoreError, fresh_secret, hash};

/// How long a pending login waits for its second factor.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);
/// Wrong answers a pending login takes before it ends.
pub const MAX_ATTEMPTS: u32 = 5;

/// A login whose first step succeeded, waiting for its second factor. `P` is what a passkey
/// ceremony keeps between its start and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingLogin<P> {
    pub user: UserId,
    pub email: String,
    /// Whether the refresh token goes to a browser cookie once signed in.
    pub cookie: bool,
    pub attempts: u32,
    pub expires_at: DateTime<Utc>,
    pub passkey: Option<P>,
    /// The hash of the code last sent by text message for this login.
    #[serde(default)]
    pub sms_code: Option<String>,
}

/// What the first step of a login decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStep {
    /// No such account, no usable password, or the wrong one (the answer does not say which).
    Refused,
    /// The password is right and the account has no second factor: sign in.
    SignedIn { user: UserId, upgrade: bool },
    /// The password is right; the account's second factor decides.
    SecondFactor { user: UserId, upgrade: bool },
}

impl FirstStep {
    /// Whether the stored hash should be replaced by one made with today's parameters.
    pub fn upgrade(self) -> bool {
        matches!(
            self,
            Self::SignedIn { upgrade: true, .. } | Self::SecondFactor { upgrade: true, .. }
        )
    }
}

/// The password check could not run (its thread failed).
#[derive(Debug, thiserror::Error)]
#[error("the password check failed: {0}")]
pub struct CheckFailed(String);

/// Checks `password` against `stored` on a blocking thread; against a dummy hash when there is no
/// account or no usable hash (one that signs in elsewhere), so every case takes the same time.
///
/// # Errors
/// The blocking thread failed.
pub async fn check_password(passwords: &Passwords, password: String, stored: Option<String>) -> Result<Verdict, CheckFailed> {
    let passwords = passwords.clone();
    let usable = stored.filter(|hash| Passwords::recognised(hash));
    let exists = usable.is_some();
    let verdict = tokio::task::spawn_blocking(move || {
        let hash = usable.unwrap_or_else(|| passwords.dummy().to_owned());
        passwords.verify(&password, &hash)
    })
    .await
    .map_err(|err| CheckFailed(err.to_string()))?;
    Ok(if exists { verdict } else { Verdict::Mismatch })
}

/// The first step of a login: `user` is the account of the address given (if there is one).
///
/// # Errors
/// The password check could not run.
pub async fn first_step(passwords: &Passwords, user: Option<&User>, password: &str) -> Result<FirstStep, CheckFailed> {
    let stored = user.and_then(User::password_hash).map(str::to_owned);
    let verdict = check_password(passwords, password.to_owned(), stored).await?;
    Ok(match (user, user.and_then(User::id), verdict) {
        (Some(account), Some(user), Verdict::Match { upgrade }) if account.mfa_enabled() => FirstStep::SecondFactor { user, upgrade },
        (Some(_), Some(user), Verdict::Match { upgrade }) => FirstStep::SignedIn { user, upgrade },
        _ => FirstStep::Refused,
    })
}

/// Where an identity provider's people are found: accounts by linked identity and by address.
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    type Error;

    /// The account an external identity (`issuer`, `subject`) is linked to.
    async fn linked(&self, issuer: &str, subject: &str) -> Result<Option<UserId>, Self::Error>;

    /// The account that holds `email`.
    async fn holder(&self, email: &Email) -> Result<Option<UserId>, Self::Error>;
}

/// The account a single sign-on signs in to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsoAccount {
    /// The account the identity is linked to already.
    Linked(UserId),
    /// The account with the identity's verified address: link the identity to it first.
    Link(UserId, Email),
    /// Nobody has the verified address: register an account for it, linked to the identity.
    Register(Email),
}

/// Why a single sign-on finds no account to sign in to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsoRefusal {
    #[error("the provider did not vouch for an email address of this account; sign in with a password first")]
    Unverified,
    #[error("the provider's address: {0}")]
    BadAddress(String),
    /// An account has the address, and this provider may not link to it.
    #[error("an account with this address exists; this provider may not sign in to it (sign in with its password)")]
    Taken,
}

/// The single-sign-on account lookup: the account `identity` is linked to, else the one with its
/// verified address (when the provider may link to it), else a new one.
///
/// # Errors
/// The directory's failures (outer); a refusal (inner).
pub async fn sso_account<D: Directory>(
    directory: &D,
    identity: &crate::oidc::Identity,
) -> Result<Result<SsoAccount, SsoRefusal>, D::Error> {
    if let Some(user) = directory.linked(&identity.issuer, &identity.subject).await? {
        return Ok(Ok(SsoAccount::Linked(user)));
    }
    let email = match (&identity.email, identity.email_verified) {
        (Some(email), true) => match Email::parse(email) {
            Ok(email) => email,
            Err(err) => return Ok(Err(SsoRefusal::BadAddress(err.to_string()))),
        },
        _ => return Ok(Err(SsoRefusal::Unverified)),
    };
    Ok(match directory.holder(&email).await? {
        Some(_) if !identity.links_existing => Err(SsoRefusal::Taken),
        Some(user) => Ok(SsoAccount::Link(user, email)),
        None => Ok(SsoAccount::Register(email)),
    })
}

/// Why a pending login could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    #[error("this sign-in has expired or was completed already; sign in again")]
    Gone,
    /// A wrong answer too many, or one after the window closed: the login is over.
    #[error("{0}; too many attempts, sign in again")]
    TooMany(String),
    /// A wrong answer; the login waits for another.
    #[error("{0}")]
    Wrong(String),
    #[error("the pending login cannot be stored: {0}")]
    Store(String),
}

impl From<StoreError> for ChallengeError {
    fn from(error: StoreError) -> Self {
        Self::Store(error.to_string())
    }
}

/// What a judge of a second factor found wrong: the answer, or its own work.
#[derive(Debug)]
pub enum Judged<E> {
    /// A wrong answer; the login may get another.
    Wrong(String),
    /// The answer could not be judged (a store failed).
    Failed(E),
}

/// Why [`Challenges::answer`] did not complete a login.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError<E> {
    #[error(transparent)]
    Refused(#[from] ChallengeError),
    #[error("the answer could not be judged")]
    Failed(E),
}

impl<P> PendingLogin<P> {
    /// Whether `code` is the one last texted for this login (none texted: no code is).
    ///
    /// # Errors
    /// Why the code is wrong, as the answer says it.
    pub fn check_texted(&self, code: &str) -> Result<(), String> {
        if self.sms_code.as_deref() == Some(hash(code.trim()).as_str()) {
            Ok(())
        } else {
            Err("the code is wrong (or none was sent: sendMfaSms)".into())
        }
    }
}

/// Pending logins, in a session store, on a clock.
#[derive(Clone)]
pub struct Challenges {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
}

fn key(token: &str) -> String {
    format!("mfa:{}", hash(token))
}

impl Challenges {
    pub fn new(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Starts waiting for `user`'s second factor: the token to answer with, and when it ends.
    ///
    /// # Errors
    /// The store's failures.
    pub async fn begin<P: Serialize>(
        &self,
        user: UserId,
        email: String,
        cookie: bool,
        passkey: Option<P>,
    ) -> Result<(String, DateTime<Utc>), ChallengeError> {
        let token = fresh_secret();
        let expires_at = self.clock.now() + chrono::Duration::from_std(CHALLENGE_TTL).unwrap_or_default();
        let pending = PendingLogin {
            user,
            email,
            cookie,
            attempts: 0,
            expires_at,
            passkey,
            sms_code: None,
        };
        self.keep(&token, &pending).await?;
        Ok((token, expires_at))
    }

    /// Keeps (or puts back) the pending login of `token` until it ends.
    ///
    /// # Errors
    /// The store's failures.
    pub async fn keep<P: Serialize>(&self, token: &str, pending: &PendingLogin<P>) -> Result<(), ChallengeError> {
        let left = (pending.expires_at - self.clock.now()).to_std().unwrap_or_default();
        let value = serde_json::to_string(pending).map_err(|err| ChallengeError::Store(err.to_string()))?;
        Ok(self.store.put_state(&key(token), &value, left).await?)
    }

    /// Takes the pending login of `token`: nobody else can answer it until it is put back.
    ///
    /// # Errors
    /// [`ChallengeError::Gone`] when it ended or was taken; the store's failures.
    pub async fn take<P: DeserializeOwned>(&self, token: &str) -> Result<PendingLogin<P>, ChallengeError> {
        let value = self.store.take_state(&key(token)).await?.ok_or(ChallengeError::Gone)?;
        serde_json::from_str(&value).map_err(|err| ChallengeError::Store(err.to_string()))
    }

    /// The second step of a login: takes the pending login of `token` (nobody else can answer it
    /// meanwhile) and lets `judge` decide on the answer. Accepted: the pending login, which is
    /// over, and what `judge` returned. A wrong answer puts it back with one attempt fewer (see
    /// [`Challenges::retry`]); a failure to judge puts it back as it was, since the caller did
    /// nothing wrong.
    ///
    /// # Errors
    /// [`AnswerError::Refused`] for a gone login or a wrong answer; [`AnswerError::Failed`] with
    /// `judge`'s failure.
    pub async fn answer<P, T, E>(
        &self,
        token: &str,
        judge: impl AsyncFnOnce(&PendingLogin<P>) -> Result<T, Judged<E>>,
    ) -> Result<(PendingLogin<P>, T), AnswerError<E>>
    where
        P: Serialize + DeserializeOwned,
    {
        let pending = self.take::<P>(token).await?;
        match judge(&pending).await {
            Ok(accepted) => Ok((pending, accepted)),
            Err(Judged::Wrong(why)) => Err(AnswerError::Refused(self.retry(token, pending, why).await)),
            Err(Judged::Failed(error)) => {
                self.keep(token, &pending).await?;
                Err(AnswerError::Failed(error))
            }
        }
    }

    /// A wrong answer (`why`): the pending login is put back with one attempt fewer, or ends when it
    /// has had [`MAX_ATTEMPTS`] or its time is up. Returns the error to answer with.
    pub async fn retry<P: Serialize>(&self, token: &str, mut pending: PendingLogin<P>, why: String) -> ChallengeError {
        pending.attempts += 1;
        let left = (pending.expires_at - self.clock.now()).to_std().unwrap_or_default();
        if pending.attempts < MAX_ATTEMPTS && !left.is_zero() {
            if let Err(err) = self.keep(token, &pending).await {
                return err;
            }
            return ChallengeError::Wrong(why);
        }
        ChallengeError::TooMany(why)
    }
}

#[cfg(test)]
mod tests {
    use cloudsync_domain::Aggregate as _;
    use cloudsync_domain::events::{DomainEvent, Personal, SealedSecret, TotpEnabled, TotpEnrollmentBegun, UserRegistered};

    use super::*;
    use crate::clock::ManualClock;
    use crate::sessions::MemorySessions;
    use uuid::Uuid;

    fn account(passwords: &Passwords, password: &str, second_factor: bool) -> User {
        let user_id = UserId::from_uuid(Uuid::new_v4());
        let mut events = vec![DomainEvent::UserRegistered(UserRegistered {
            user_id,
            email: Personal::Clear("ada@example.org".into()),
            password_hash: passwords.hash(password).expect("hash"),
            registered_at: DateTime::UNIX_EPOCH,
        })];
        if second_factor {
            events.push(DomainEvent::TotpEnrollmentBegun(TotpEnrollmentBegun {
                user_id,
                secret: SealedSecret {
                    nonce: "n".into(),
                    ciphertext: "c".into(),
                },
                at: DateTime::UNIX_EPOCH,
            }));
            events.push(DomainEvent::TotpEnabled(TotpEnabled {
                user_id,
                recovery_codes: Vec::new(),
                at: DateTime::UNIX_EPOCH,
            }));
        }
        User::load(&events)
    }

    /// Accounts by linked identity and by address, in memory.
    #[derive(Default)]
    struct People {
        linked: std::collections::HashMap<(String, String), UserId>,
        holders: std::collections::HashMap<String, UserId>,
    }

    #[async_trait::async_trait]
    impl Directory for People {
        type Error = std::convert::Infallible;

        async fn linked(&self, issuer: &str, subject: &str) -> Result<Option<UserId>, Self::Error> {
            Ok(self.linked.get(&(issuer.to_owned(), subject.to_owned())).copied())
        }

        async fn holder(&self, email: &Email) -> Result<Option<UserId>, Self::Error> {
            Ok(self.holders.get(email.as_str()).copied())
        }
    }

    fn identity(email: Option<&str>, verified: bool, links_existing: bool) -> crate::oidc::Identity {
        crate::oidc::Identity {
            issuer: "https://idp.example".into(),
            subject: "ada".into(),
            email: email.map(str::to_owned),
            email_verified: verified,
            links_existing,
        }
    }

    #[tokio::test]
    async fn single_sign_on_finds_the_linked_account_links_a_verified_address_or_registers() {
        let (ada, bob) = (UserId::from_uuid(Uuid::new_v4()), UserId::from_uuid(Uuid::new_v4()));
        let mut people = People::default();
        people.holders.insert("bob@example.org".into(), bob);
        let lookup = async |people: &People, identity| sso_account(people, &identity).await.expect("infallible");
        let email = |text: &str| Email::parse(text).expect("address");
        assert_eq!(
            lookup(&people, identity(Some("ada@example.org"), true, true)).await,
            Ok(SsoAccount::Register(email("ada@example.org")))
        );
        assert_eq!(
            lookup(&people, identity(Some("bob@example.org"), true, true)).await,
            Ok(SsoAccount::Link(bob, email("bob@example.org")))
        );
        assert_eq!(
            lookup(&people, identity(Some("bob@example.org"), true, false)).await,
            Err(SsoRefusal::Taken),
            "a provider that may not link finds the address taken"
        );
        assert_eq!(
            lookup(&people, identity(Some("ada@example.org"), false, true)).await,
            Err(SsoRefusal::Unverified)
        );
        assert_eq!(lookup(&people, identity(None, true, true)).await, Err(SsoRefusal::Unverified));
        assert!(matches!(
            lookup(&people, identity(Some("not an address"), true, true)).await,
            Err(SsoRefusal::BadAddress(_))
        ));
        people.linked.insert(("https://idp.example".into(), "ada".into()), ada);
        assert_eq!(
            lookup(&people, identity(None, false, false)).await,
            Ok(SsoAccount::Linked(ada)),
            "a linked identity needs no address"
        );
    }

    #[tokio::test]
    async fn the_first_step_refuses_alike_and_asks_for_a_second_factor_where_there_is_one() {
        let passwords = Passwords::new(1024, 1, 1).expect("parameters");
        let older = Passwords::new(2048, 1, 1).expect("parameters");
        let plain = account(&passwords, "correct horse battery", false);
        let dated = account(&older, "correct horse battery", false);
        let guarded = account(&passwords, "correct horse battery", true);
        let step = |user, password| first_step(&passwords, user, password);
        assert_eq!(
            step(Some(&plain), "correct horse battery").await.expect("check"),
            FirstStep::SignedIn {
                user: plain.id().expect("id"),
                upgrade: false,
            }
        );
        assert_eq!(
            step(Some(&dated), "correct horse battery").await.expect("check"),
            FirstStep::SignedIn {
                user: dated.id().expect("id"),
                upgrade: true,
            },
            "hashed with other parameters than the configured ones"
        );
        assert!(matches!(
            step(Some(&guarded), "correct horse battery").await.expect("check"),
            FirstStep::SecondFactor { .. }
        ));
        assert_eq!(step(Some(&plain), "wrong").await.expect("check"), FirstStep::Refused);
        assert_eq!(step(None, "correct horse battery").await.expect("check"), FirstStep::Refused);
    }

    fn challenges() -> (Challenges, Arc<ManualClock>) {
        let clock = ManualClock::starting_now();
        let store = Arc::new(MemorySessions::with_clock(clock.clone()));
        (Challenges::new(store, clock.clone()), clock)
    }

    #[tokio::test]
    async fn a_pending_login_is_taken_once() {
        let (challenges, _) = challenges();
        let user = UserId::from_uuid(Uuid::new_v4());
        let (token, _) = challenges
            .begin::<()>(user, "ada@example.org".into(), true, None)
            .await
            .expect("begin");
        let pending: PendingLogin<()> = challenges.take(&token).await.expect("take");
        assert_eq!((pending.user, pending.cookie, pending.attempts), (user, true, 0));
        assert!(matches!(challenges.take::<()>(&token).await, Err(ChallengeError::Gone)));
        assert!(matches!(challenges.take::<()>("another").await, Err(ChallengeError::Gone)));
    }

    #[tokio::test]
    async fn wrong_answers_put_it_back_until_the_fifth() {
        let (challenges, _) = challenges();
        let (token, _) = challenges
            .begin::<()>(UserId::from_uuid(Uuid::new_v4()), "ada@example.org".into(), false, None)
            .await
            .expect("begin");
        for attempt in 1..MAX_ATTEMPTS {
            let pending: PendingLogin<()> = challenges.take(&token).await.expect("still pending");
            assert_eq!(pending.attempts, attempt - 1);
            let answer = challenges.retry(&token, pending, "the code is wrong".into()).await;
            assert_eq!(answer.to_string(), "the code is wrong", "attempt {attempt}");
        }
        let pending: PendingLogin<()> = challenges.take(&token).await.expect("still pending");
        let answer = challenges.retry(&token, pending, "the code is wrong".into()).await;
        assert!(matches!(answer, ChallengeError::TooMany(_)), "{answer}");
        assert!(matches!(challenges.take::<()>(&token).await, Err(ChallengeError::Gone)));
    }

    #[tokio::test]
    async fn a_pending_login_ends_after_its_window() {
        let (challenges, clock) = challenges();
        let (token, expires_at) = challenges
            .begin::<()>(UserId::from_uuid(Uuid::new_v4()), "ada@example.org".into(), false, None)
            .await
            .expect("begin");
        assert_eq!(expires_at - clock.now(), chrono::Duration::minutes(5));
        clock.advance(CHALLENGE_TTL - Duration::from_secs(1));
        let pending: PendingLogin<()> = challenges.take(&token).await.expect("within the window");
        // Answered wrongly just before the end: put back, but ends with the window all the same.
        assert!(matches!(
            challenges.retry(&token, pending, "wrong".into()).await,
            ChallengeError::Wrong(_)
        ));
        clock.advance(Duration::from_secs(2));
        assert!(matches!(challenges.take::<()>(&token).await, Err(ChallengeError::Gone)));
    }

    #[tokio::test]
    async fn an_answer_is_judged_once_and_only_a_wrong_one_costs_an_attempt() {
        let (challenges, _) = challenges();
        let user = UserId::from_uuid(Uuid::new_v4());
        let (token, _) = challenges
            .begin::<()>(user, "ada@example.org".into(), false, None)
            .await
            .expect("begin");
        // The judge's own failure: put back as it was.
        let failed = challenges
            .answer::<(), (), &str>(&token, async |_| Err(Judged::Failed("the store is down")))
            .await;
        assert!(matches!(failed, Err(AnswerError::Failed("the store is down"))));
        // A wrong answer: put back with one attempt fewer; a texted code that was never sent is wrong.
        let wrong = challenges
            .answer::<(), (), &str>(&token, async |pending| pending.check_texted("123456").map_err(Judged::Wrong))
            .await;
        let Err(AnswerError::Refused(ChallengeError::Wrong(why))) = wrong else {
            panic!("expected a wrong answer, got {wrong:?}")
        };
        assert!(why.contains("sendMfaSms"), "{why}");
        let mut pending: PendingLogin<()> = challenges.take(&token).await.expect("still pending");
        assert_eq!(pending.attempts, 1);
        pending.sms_code = Some(hash("654321"));
        challenges.keep(&token, &pending).await.expect("keep");
        // The right one: the login is over, whoever answers next.
        let (done, seen) = challenges
            .answer::<(), UserId, &str>(&token, async |pending| {
                pending.check_texted(" 654321 ").map_err(Judged::Wrong)?;
                Ok(pending.user)
            })
            .await
            .expect("accepted");
        assert_eq!((done.user, seen), (user, user));
        let again = challenges.answer::<(), (), &str>(&token, async |_| Ok(())).await;
        assert!(matches!(again, Err(AnswerError::Refused(ChallengeError::Gone))), "{again:?}");
    }
}
