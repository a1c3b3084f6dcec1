//! The `User` aggregate: registration and the password (changes, resets, rehashing).

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, DomainError};
use crate::events::{DomainEvent, EmailClaimed, PasswordChange, PasswordResetRequested, UserPasswordChanged, UserRegistered};
use crate::ids::UserId;
use crate::values::Email;

#[derive(Debug, Default, Clone)]
pub struct User {
    registered: Option<UserRegistered>,
    password_hash: Option<String>,
    /// The outstanding reset (token hash, expiry): only the latest request's token works, once.
    reset: Option<(String, DateTime<Utc>)>,
}

pub enum UserCommand {
    Register {
        user_id: UserId,
        email: Email,
        password_hash: String,
        at: DateTime<Utc>,
    },
    /// A new hash: the user changed the password, or the same password was hashed again.
    SetPassword {
        password_hash: String,
        reason: PasswordChange,
        at: DateTime<Utc>,
    },
    RequestReset {
        token_hash: String,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Sets a new password with the token of the latest reset request.
    Reset {
        token_hash: String,
        password_hash: String,
        at: DateTime<Utc>,
    },
}

impl User {
    pub fn id(&self) -> Option<UserId> {
        self.registered.as_ref().map(|r| r.user_id)
    }

    pub fn email(&self) -> Option<&Email> {
        self.registered.as_ref().map(|r| &r.email)
    }

    /// The current password hash.
    pub fn password_hash(&self) -> Option<&str> {
        self.password_hash.as_deref()
    }

    fn registered(&self) -> Result<&UserRegistered, DomainError> {
        self.registered.as_ref().ok_or(DomainError::NotFound("user"))
    }
}

impl Aggregate for User {
    type Command = UserCommand;
    type Event = DomainEvent;

    fn handle(&self, command: UserCommand) -> Result<Vec<DomainEvent>, DomainError> {
        match command {
            UserCommand::Register {
                user_id,
                email,
                password_hash,
                at,
            } => {
                if self.registered.is_some() {
                    return Err(DomainError::AlreadyExists("user"));
                }
                if password_hash.is_empty() {
                    return Err(DomainError::Invalid("a password hash is required".into()));
                }
                Ok(vec![
                    DomainEvent::UserRegistered(UserRegistered {
                        user_id,
                        email: email.clone(),
                        password_hash,
                        registered_at: at,
                    }),
                    DomainEvent::EmailClaimed(EmailClaimed { email, user_id }),
                ])
            }
            UserCommand::SetPassword { password_hash, reason, at } => {
                let user_id = self.registered()?.user_id;
                if password_hash.is_empty() {
                    return Err(DomainError::Invalid("a password hash is required".into()));
                }
                Ok(vec![DomainEvent::UserPasswordChanged(UserPasswordChanged {
                    user_id,
                    password_hash,
                    reason,
                    at,
                })])
            }
            UserCommand::RequestReset {
                token_hash,
                expires_at,
                at,
            } => {
                let user_id = self.registered()?.user_id;
                if expires_at <= at {
                    return Err(DomainError::Invalid("a reset must expire after it is requested".into()));
                }
                Ok(vec![DomainEvent::PasswordResetRequested(PasswordResetRequested {
                    user_id,
                    token_hash,
                    expires_at,
                    at,
                })])
            }
            UserCommand::Reset {
                token_hash,
                password_hash,
                at,
            } => {
                let user_id = self.registered()?.user_id;
                let invalid = || DomainError::Invalid("the reset token is invalid, expired or already used".into());
                let (expected, expires_at) = self.reset.as_ref().ok_or_else(invalid)?;
                if *expected != token_hash || *expires_at <= at {
                    return Err(invalid());
                }
                if password_hash.is_empty() {
                    return Err(DomainError::Invalid("a password hash is required".into()));
                }
                Ok(vec![DomainEvent::UserPasswordChanged(UserPasswordChanged {
                    user_id,
                    password_hash,
                    reason: PasswordChange::Reset,
                    at,
                })])
            }
        }
    }

    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::UserRegistered(e) => {
                self.registered = Some(e.clone());
                self.password_hash = Some(e.password_hash.clone());
            }
            DomainEvent::UserPasswordChanged(e) => {
                self.password_hash = Some(e.password_hash.clone());
                // Any new password ends an outstanding reset: its link must not work afterwards.
                self.reset = None;
            }
            DomainEvent::PasswordResetRequested(e) => self.reset = Some((e.token_hash.clone(), e.expires_at)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn register() -> UserCommand {
        UserCommand::Register {
            user_id: UserId::from_uuid(Uuid::nil()),
            email: Email::parse("ada@example.org").expect("valid"),
            password_hash: "$argon2id$…".into(),
            at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn given_nothing_when_register_then_registered_and_email_claimed() {
        let events = User::default().handle(register()).expect("accepted");
        assert!(matches!(
            events.as_slice(),
            [DomainEvent::UserRegistered(_), DomainEvent::EmailClaimed(_)]
        ));
        let user = User::load(&events);
        assert_eq!(user.email().map(Email::as_str), Some("ada@example.org"));
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + chrono::Duration::minutes(minutes)
    }

    fn registered() -> Vec<DomainEvent> {
        User::default().handle(register()).expect("accepted")
    }

    fn then(mut history: Vec<DomainEvent>, command: UserCommand) -> Result<Vec<DomainEvent>, DomainError> {
        let events = User::load(&history).handle(command)?;
        history.extend(events);
        Ok(history)
    }

    fn request(token: &str, at_minute: i64) -> UserCommand {
        UserCommand::RequestReset {
            token_hash: token.into(),
            expires_at: at(at_minute + 30),
            at: at(at_minute),
        }
    }

    fn reset(token: &str, at_minute: i64) -> UserCommand {
        UserCommand::Reset {
            token_hash: token.into(),
            password_hash: format!("$argon2id$new-{token}"),
            at: at(at_minute),
        }
    }

    #[test]
    fn a_reset_token_works_once_before_it_expires_and_only_the_latest() {
        let history = then(registered(), request("t1", 0)).expect("requested");
        assert!(then(history.clone(), reset("t2", 1)).is_err(), "a token never issued");
        assert!(then(history.clone(), reset("t1", 30)).is_err(), "expired at 30 minutes");
        let done = then(history.clone(), reset("t1", 29)).expect("reset");
        assert_eq!(User::load(&done).password_hash(), Some("$argon2id$new-t1"));
        assert!(then(done, reset("t1", 29)).is_err(), "used");
        let again = then(history, request("t2", 5)).expect("requested again");
        assert!(then(again.clone(), reset("t1", 6)).is_err(), "superseded by the later request");
        let changed = then(
            again.clone(),
            UserCommand::SetPassword {
                password_hash: "$argon2id$changed".into(),
                reason: PasswordChange::Changed,
                at: at(7),
            },
        )
        .expect("changed");
        assert!(
            then(changed, reset("t2", 8)).is_err(),
            "a password change ends the outstanding reset"
        );
        assert!(then(again, reset("t2", 8)).is_ok());
    }

    #[test]
    fn password_commands_need_a_registered_user() {
        let nobody = User::default();
        assert_eq!(nobody.handle(request("t", 0)).err(), Some(DomainError::NotFound("user")));
        let set = UserCommand::SetPassword {
            password_hash: "$argon2id$x".into(),
            reason: PasswordChange::Rehashed,
            at: at(0),
        };
        assert_eq!(nobody.handle(set).err(), Some(DomainError::NotFound("user")));
    }

    #[test]
    fn given_registered_when_register_then_refused() {
        let user = User::load(&User::default().handle(register()).expect("accepted"));
        assert_eq!(user.handle(register()).err(), Some(DomainError::AlreadyExists("user")));
    }
}
