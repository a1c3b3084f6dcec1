//! The shape of an aggregate's tests: `given(history).when(command).then(events)`, or
//! `.then_error(error)`, or `.events()` for what a test checks field by field.

use std::fmt::Debug;

use crate::aggregate::{Aggregate, DomainError};

/// An aggregate loaded from `history`.
pub fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let history: Vec<A::Event> = history.into_iter().collect();
    Given { state: A::load(&history) }
}

pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// What the aggregate decides on `command`.
    pub fn when(self, command: A::Command) -> Then<A::Event> {
        Then {
            decided: self.state.handle(command),
        }
    }
}

pub struct Then<E> {
    decided: Result<Vec<E>, DomainError>,
}

impl<E: PartialEq + Debug> Then<E> {
    /// The command was accepted with exactly `expected`.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = E>) {
        let expected: Vec<E> = expected.into_iter().collect();
        assert_eq!(self.decided, Ok(expected));
    }

    /// The command was refused with `error`.
    #[track_caller]
    pub fn then_error(self, error: DomainError) {
        assert_eq!(self.decided, Err(error));
    }

    /// What the aggregate decided, for tests that check a refusal's kind or an outcome by pattern.
    pub fn decided(self) -> Result<Vec<E>, DomainError> {
        self.decided
    }

    /// The events of an accepted command.
    #[track_caller]
    pub fn events(self) -> Vec<E> {
        match self.decided {
            Ok(events) => events,
            Err(error) => panic!("the command was refused: {error}"),
        }
    }
}

/// An aggregate walked through several commands: each accepted command's events are applied to
/// its state, as the store would append and load them.
pub struct Story<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> Default for Story<A> {
    fn default() -> Self {
        Self { state: A::default() }
    }
}

impl<A: Aggregate> Story<A> {
    /// What the aggregate decides on `command`; an accepted command's events are applied.
    ///
    /// # Errors
    /// The aggregate's refusal, which changes nothing.
    pub fn when(&mut self, command: A::Command) -> Result<Vec<A::Event>, DomainError> {
        let decided = self.state.handle(command);
        if let Ok(events) = &decided {
            for event in events {
                self.state.apply(event);
            }
        }
        decided
    }

    /// The state after the accepted commands.
    pub fn state(&self) -> &A {
        &self.state
    }
}
