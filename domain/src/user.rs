//! The `User` aggregate: registration. (Sessions, MFA and roles arrive with the identity work.)

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, DomainError};
use crate::events::{DomainEvent, EmailClaimed, UserRegistered};
use crate::ids::UserId;
use crate::values::Email;

#[derive(Debug, Default, Clone)]
pub struct User {
    registered: Option<UserRegistered>,
}

pub enum UserCommand {
    Register {
        user_id: UserId,
        email: Email,
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

    pub fn password_hash(&self) -> Option<&str> {
        self.registered.as_ref().map(|r| r.password_hash.as_str())
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
        }
    }

    fn apply(&mut self, event: &DomainEvent) {
        if let DomainEvent::UserRegistered(e) = event {
            self.registered = Some(e.clone());
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

    #[test]
    fn given_registered_when_register_then_refused() {
        let user = User::load(&User::default().handle(register()).expect("accepted"));
        assert_eq!(user.handle(register()).err(), Some(DomainError::AlreadyExists("user")));
    }
}
