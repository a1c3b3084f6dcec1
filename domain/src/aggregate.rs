//! The aggregate contract: `handle` decides, `apply` only changes state.

use thiserror::Error;

/// Why a command was refused. Every variant is the caller's fault or a state conflict, never infrastructure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// The target does not exist, or belongs to someone else (the two are indistinguishable on purpose).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The stream already holds this aggregate.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// The command is valid but not in the aggregate's current state.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The command carries a value that the domain rejects.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// An event-sourced aggregate. `Default` is the state of an empty stream.
pub trait Aggregate: Default {
    type Command;
    type Event;

    /// Decides which events a command produces, without changing state.
    ///
    /// # Errors
    /// A [`DomainError`] when the command is refused; nothing is then appended.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// Folds one event into the state. Never fails: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Rebuilds the state from a history.
    fn load<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        let mut state = Self::default();
        for event in events {
            state.apply(event);
        }
        state
    }
}
