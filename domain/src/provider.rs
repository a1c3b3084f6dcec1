//! The `ProviderConnection` aggregate: a user's connection to one storage provider.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::aggregate::{Aggregate, DomainError};
use crate::events::{
    DomainEvent, Personal, ProviderConnected, ProviderCredentialsRenewed, ProviderDisconnected, ProviderScheduleSet, Sealable, SealedSecret,
};
use crate::ids::{ProviderId, UserId};
use crate::values::{ProviderKind, ScanSchedule};

#[derive(Debug, Default, Clone)]
pub struct ProviderConnection {
    connected: Option<ProviderConnected>,
    disconnected: bool,
}

pub enum ProviderCommand {
    Connect {
        provider_id: ProviderId,
        owner_id: UserId,
        kind: ProviderKind,
        display_name: Personal,
        config: Sealable<Value>,
        secrets: Option<SealedSecret>,
        credentials_expire_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    /// Replaces the sealed credentials with renewed ones (an OAuth refresh).
    RenewCredentials {
        by: UserId,
        secrets: SealedSecret,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    Disconnect {
        by: UserId,
        at: DateTime<Utc>,
    },
    SetSchedule {
        by: UserId,
        schedule: Option<ScanSchedule>,
        realtime: bool,
        at: DateTime<Utc>,
    },
}

/// A provider's display name: 1 to 200 characters, not all blank.
///
/// # Errors
/// [`DomainError::Invalid`] otherwise.
pub fn check_display_name(name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(DomainError::Invalid("a display name of 1 to 200 characters is required".into()));
    }
    Ok(())
}

impl ProviderConnection {
    /// The connection, if it exists, is still connected and belongs to `user`.
    pub fn active_for(&self, user: UserId) -> Option<&ProviderConnected> {
        self.connected.as_ref().filter(|c| c.owner_id == user && !self.disconnected)
    }
}

impl Aggregate for ProviderConnection {
    type Command = ProviderCommand;
    type Event = DomainEvent;

    fn handle(&self, command: ProviderCommand) -> Result<Vec<DomainEvent>, DomainError> {
        match command {
            ProviderCommand::Connect {
                provider_id,
                owner_id,
                kind,
                display_name,
                config,
                secrets,
                credentials_expire_at,
                at,
            } => {
                if self.connected.is_some() {
                    return Err(DomainError::AlreadyExists("provider"));
                }
                // A sealed name was checked (`check_display_name`) before it was sealed.
                if let Sealable::Clear(name) = &display_name {
                    check_display_name(name)?;
                }
                Ok(vec![DomainEvent::ProviderConnected(ProviderConnected {
                    provider_id,
                    owner_id,
                    kind,
                    display_name,
                    config,
                    secrets,
                    credentials_expire_at,
                    connected_at: at,
                })])
            }
            ProviderCommand::RenewCredentials {
                by,
                secrets,
                expires_at,
                at,
            } => {
                let connected = self.active_for(by).ok_or(DomainError::NotFound("provider"))?;
                if connected.secrets.is_none() {
                    return Err(DomainError::Invalid("this provider has no credentials to renew".into()));
                }
                Ok(vec![DomainEvent::ProviderCredentialsRenewed(ProviderCredentialsRenewed {
                    provider_id: connected.provider_id,
                    owner_id: by,
                    secrets,
                    expires_at,
                    at,
                })])
            }
            ProviderCommand::SetSchedule {
                by,
                schedule,
                realtime,
                at,
            } => {
                let connected = self.active_for(by).ok_or(DomainError::NotFound("provider"))?;
                if realtime && connected.kind != ProviderKind::Local {
                    return Err(DomainError::Invalid(format!(
                        "{} providers cannot report changes in real time; use a schedule",
                        connected.kind.as_str()
                    )));
                }
                Ok(vec![DomainEvent::ProviderScheduleSet(ProviderScheduleSet {
                    provider_id: connected.provider_id,
                    owner_id: by,
                    schedule,
                    realtime,
                    at,
                })])
            }
            ProviderCommand::Disconnect { by, at } => {
                let connected = self.active_for(by).ok_or(DomainError::NotFound("provider"))?;
                Ok(vec![DomainEvent::ProviderDisconnected(ProviderDisconnected {
                    provider_id: connected.provider_id,
                    owner_id: by,
                    disconnected_at: at,
                })])
            }
        }
    }

    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::ProviderConnected(e) => self.connected = Some(e.clone()),
            DomainEvent::ProviderDisconnected(_) => self.disconnected = true,
            DomainEvent::ProviderCredentialsRenewed(e) => {
                if let Some(connected) = &mut self.connected {
                    connected.secrets = Some(e.secrets.clone());
                    connected.credentials_expire_at = e.expires_at;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::testing::given;

    fn alice() -> UserId {
        UserId::from_uuid(Uuid::from_u128(1))
    }

    fn connect() -> ProviderCommand {
        ProviderCommand::Connect {
            provider_id: ProviderId::from_uuid(Uuid::from_u128(9)),
            owner_id: alice(),
            kind: ProviderKind::Local,
            display_name: "photos".into(),
            config: json!({"root": "/srv/photos"}).into(),
            secrets: None,
            credentials_expire_at: None,
            at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn given_nothing_when_connect_then_connected() {
        let events = given::<ProviderConnection>([]).when(connect()).events();
        assert!(ProviderConnection::load(&events).active_for(alice()).is_some());
        given::<ProviderConnection>(events)
            .when(connect())
            .then_error(DomainError::AlreadyExists("provider"));
    }

    #[test]
    fn given_connected_when_someone_else_disconnects_then_not_found() {
        let mallory = UserId::from_uuid(Uuid::from_u128(2));
        given::<ProviderConnection>(given::<ProviderConnection>([]).when(connect()).events())
            .when(ProviderCommand::Disconnect {
                by: mallory,
                at: DateTime::UNIX_EPOCH,
            })
            .then_error(DomainError::NotFound("provider"));
    }

    #[test]
    fn given_disconnected_when_disconnect_again_then_not_found() {
        let disconnect = || ProviderCommand::Disconnect {
            by: alice(),
            at: DateTime::UNIX_EPOCH,
        };
        let mut history = given::<ProviderConnection>([]).when(connect()).events();
        history.extend(given::<ProviderConnection>(history.clone()).when(disconnect()).events());
        assert!(ProviderConnection::load(&history).active_for(alice()).is_none());
        given::<ProviderConnection>(history)
            .when(disconnect())
            .then_error(DomainError::NotFound("provider"));
    }

    #[test]
    fn given_connected_when_schedule_set_then_recorded_and_realtime_only_for_local() {
        let connected = || given::<ProviderConnection>(given::<ProviderConnection>([]).when(connect()).events());
        let schedule = ScanSchedule::parse("0 * * * *").expect("cron");
        let events = connected()
            .when(ProviderCommand::SetSchedule {
                by: alice(),
                schedule: Some(schedule.clone()),
                realtime: true,
                at: DateTime::UNIX_EPOCH,
            })
            .events();
        assert!(matches!(events.as_slice(), [DomainEvent::ProviderScheduleSet(e)] if e.schedule == Some(schedule.clone()) && e.realtime));
        let mallory = UserId::from_uuid(Uuid::from_u128(2));
        connected()
            .when(ProviderCommand::SetSchedule {
                by: mallory,
                schedule: None,
                realtime: false,
                at: DateTime::UNIX_EPOCH,
            })
            .then_error(DomainError::NotFound("provider"));
        let ProviderCommand::Connect {
            provider_id,
            owner_id,
            display_name,
            config,
            secrets,
            credentials_expire_at,
            at,
            ..
        } = connect()
        else {
            unreachable!()
        };
        let s3 = ProviderCommand::Connect {
            provider_id,
            owner_id,
            kind: ProviderKind::S3,
            display_name,
            config,
            secrets,
            credentials_expire_at,
            at,
        };
        let realtime = given::<ProviderConnection>(given::<ProviderConnection>([]).when(s3).events())
            .when(ProviderCommand::SetSchedule {
                by: alice(),
                schedule: None,
                realtime: true,
                at: DateTime::UNIX_EPOCH,
            })
            .decided();
        assert!(matches!(realtime, Err(DomainError::Invalid(_))));
    }

    #[test]
    fn given_oauth_tokens_when_renewed_then_the_new_ones_replace_them_for_the_owner_only() {
        let sealed = |n: &str| SealedSecret {
            nonce: n.into(),
            ciphertext: n.into(),
        };
        let without = given::<ProviderConnection>([]).when(connect()).events();
        let renew = |by| ProviderCommand::RenewCredentials {
            by,
            secrets: sealed("new"),
            expires_at: Some(DateTime::UNIX_EPOCH + chrono::TimeDelta::hours(2)),
            at: DateTime::UNIX_EPOCH,
        };
        assert!(
            matches!(
                given::<ProviderConnection>(without).when(renew(alice())).decided(),
                Err(DomainError::Invalid(_))
            ),
            "nothing to renew"
        );
        let ProviderCommand::Connect {
            provider_id,
            owner_id,
            config,
            ..
        } = connect()
        else {
            unreachable!()
        };
        let drive = ProviderCommand::Connect {
            provider_id,
            owner_id,
            kind: ProviderKind::Gdrive,
            display_name: "drive".into(),
            config,
            secrets: Some(sealed("old")),
            credentials_expire_at: Some(DateTime::UNIX_EPOCH + chrono::TimeDelta::hours(1)),
            at: DateTime::UNIX_EPOCH,
        };
        let mut history = given::<ProviderConnection>([]).when(drive).events();
        let mallory = UserId::from_uuid(Uuid::from_u128(2));
        given::<ProviderConnection>(history.clone())
            .when(renew(mallory))
            .then_error(DomainError::NotFound("provider"));
        history.extend(given::<ProviderConnection>(history.clone()).when(renew(alice())).events());
        let renewed = ProviderConnection::load(&history);
        let connected = renewed.active_for(alice()).expect("connected");
        assert_eq!(connected.secrets, Some(sealed("new")));
        assert_eq!(
            connected.credentials_expire_at,
            Some(DateTime::UNIX_EPOCH + chrono::TimeDelta::hours(2))
        );
    }
}
