//! An email address's reservation: a stream of its own per address, held by one user at a time,
//! so that two registrations of one address cannot both succeed (the second finds the stream
//! claimed, or loses the race on its expected version). A registration's claim is recorded only
//! while nobody holds the address; erasing the account releases it.

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, DomainError};
use crate::events::{DomainEvent, EmailClaimed, EmailReleased};
use crate::ids::UserId;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmailReservation {
    holder: Option<UserId>,
}

#[derive(Debug, Clone)]
pub enum ReservationCommand {
    /// Records a registration's claim (the `EmailClaimed` that registering produced).
    Claim(EmailClaimed),
    /// Lets the address go, for its holder.
    Release { user_id: UserId, at: DateTime<Utc> },
}

impl EmailReservation {
    /// Who holds the address now: the latest claim, unless a release followed it.
    pub fn holder(&self) -> Option<UserId> {
        self.holder
    }

    /// Whether a claim may be recorded now (a registration asks before it does anything else).
    ///
    /// # Errors
    /// [`DomainError::AlreadyExists`] while someone holds the address.
    pub fn claimable(&self) -> Result<(), DomainError> {
        match self.holder {
            Some(_) => Err(DomainError::AlreadyExists("email address")),
            None => Ok(()),
        }
    }
}

impl Aggregate for EmailReservation {
    type Command = ReservationCommand;
    type Event = DomainEvent;

    fn handle(&self, command: ReservationCommand) -> Result<Vec<DomainEvent>, DomainError> {
        match command {
            ReservationCommand::Claim(claimed) => {
                self.claimable()?;
                Ok(vec![DomainEvent::EmailClaimed(claimed)])
            }
            ReservationCommand::Release { user_id, at } => match self.holder {
                Some(holder) if holder == user_id => Ok(vec![DomainEvent::EmailReleased(EmailReleased { user_id, at })]),
                _ => Err(DomainError::NotFound("email reservation")),
            },
        }
    }

    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::EmailClaimed(claimed) => self.holder = Some(claimed.user_id),
            DomainEvent::EmailReleased(_) => self.holder = None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::events::Personal;
    use crate::testing::given;

    fn user(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    fn claim(n: u128) -> EmailClaimed {
        EmailClaimed {
            email: Personal::Clear("ada@example.org".into()),
            user_id: user(n),
        }
    }

    fn released(n: u128) -> DomainEvent {
        DomainEvent::EmailReleased(EmailReleased {
            user_id: user(n),
            at: DateTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn given_nothing_when_claimed_then_claimed() {
        given::<EmailReservation>([])
            .when(ReservationCommand::Claim(claim(1)))
            .then([DomainEvent::EmailClaimed(claim(1))]);
    }

    #[test]
    fn given_a_claim_when_claimed_again_then_already_registered() {
        given::<EmailReservation>([DomainEvent::EmailClaimed(claim(1))])
            .when(ReservationCommand::Claim(claim(2)))
            .then_error(DomainError::AlreadyExists("email address"));
    }

    #[test]
    fn given_a_released_claim_when_claimed_then_the_new_user_holds_it() {
        let history = [DomainEvent::EmailClaimed(claim(1)), released(1)];
        given::<EmailReservation>(history.clone())
            .when(ReservationCommand::Claim(claim(2)))
            .then([DomainEvent::EmailClaimed(claim(2))]);
        let mut state = EmailReservation::load(&history);
        assert_eq!(state.holder(), None);
        state.apply(&DomainEvent::EmailClaimed(claim(2)));
        assert_eq!(state.holder(), Some(user(2)));
    }

    #[test]
    fn only_the_holder_releases() {
        let held = [DomainEvent::EmailClaimed(claim(1))];
        given::<EmailReservation>(held.clone())
            .when(ReservationCommand::Release {
                user_id: user(1),
                at: DateTime::UNIX_EPOCH,
            })
            .then([released(1)]);
        given::<EmailReservation>(held)
            .when(ReservationCommand::Release {
                user_id: user(2),
                at: DateTime::UNIX_EPOCH,
            })
            .then_error(DomainError::NotFound("email reservation"));
        given::<EmailReservation>([])
            .when(ReservationCommand::Release {
                user_id: user(1),
                at: DateTime::UNIX_EPOCH,
            })
            .then_error(DomainError::NotFound("email reservation"));
    }
}
