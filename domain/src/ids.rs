//! Typed identifiers. Each aggregate kind has its own id type and stream name `<kind>-<uuid>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::ValueError;

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// The stream prefix for this kind of aggregate.
            pub const STREAM_PREFIX: &'static str = $prefix;

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// The event stream that holds this aggregate: `<kind>-<uuid>`.
            pub fn stream(&self) -> String {
                format!("{}-{}", $prefix, self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim())
                    .map(Self)
                    .map_err(|_| ValueError::MalformedId(s.chars().take(64).collect()))
            }
        }
    };
}

id_type!(UserId, "user");
id_type!(ProviderId, "provider");
id_type!(FileId, "file");
id_type!(SyncJobId, "sync");
id_type!(SyncPairId, "pair");

/// The stream that reserves an email address for one user, so two registrations cannot claim it.
pub fn email_stream(email: &crate::values::Email) -> String {
    let reservation = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("mailto:{}", email.as_str()).as_bytes());
    format!("email-{reservation}")
}

/// The reservation stream of an external identity (an OpenID provider's issuer and subject), so
/// that it belongs to at most one user.
pub fn identity_stream(issuer: &str, subject: &str) -> String {
    let reservation = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("{issuer}#{subject}").as_bytes());
    format!("identity-{reservation}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_carry_the_kind() {
        let id = UserId::from_uuid(Uuid::nil());
        assert_eq!(id.stream(), "user-00000000-0000-0000-0000-000000000000");
        assert_eq!(
            SyncJobId::from_uuid(Uuid::nil()).stream(),
            "sync-00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn malformed_ids_are_rejected() {
        assert!("not-a-uuid".parse::<FileId>().is_err());
        assert!("".parse::<FileId>().is_err());
        let id: FileId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().expect("valid uuid");
        assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
    }
}
