//! Who may do what. Every user has the role `user`; `admin` administers users, `auditor` may read
//! what administrators read. A credential carries scopes: a signed-in session has every scope its
//! roles allow, a personal API token only those it was created with (and its user's roles still
//! allow). Resolvers ask for the scope they need; account management needs a signed-in session.
//! An account may also restrict the networks its credentials work from.

use cloudsync_domain::UserId;
use std::net::IpAddr;

/// What a credential allows: a set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

/// A user's roles beyond `user`: a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

macro_rules! bit_set {
    ($set:ident) => {
        impl $set {
            pub const NONE: Self = Self(0);

            /// Whether every member of `other` is in the set.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// Whether the set and `other` share a member.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
        }

        impl std::ops::BitOr for $set {
            type Output = Self;

            fn bitor(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }
        }

        impl std::ops::BitAnd for $set {
            type Output = Self;

            fn bitand(self, other: Self) -> Self {
                Self(self.0 & other.0)
            }
        }
    };
}
bit_set!(Scopes);
bit_set!(Roles);

/// The scopes, by name.
pub mod scope {
    use super::Scopes;

    pub const FILES_READ: Scopes = Scopes(1);
    pub const FILES_WRITE: Scopes = Scopes(2);
    pub const SYNC_RUN: Scopes = Scopes(4);
    pub const ADMIN: Scopes = Scopes(8);
    pub const NAMES: [(&str, Scopes); 4] = [
        ("files:read", FILES_READ),
        ("files:write", FILES_WRITE),
        ("sync:run", SYNC_RUN),
        ("admin", ADMIN),
    ];
}

/// The roles beyond `user`.
pub mod role {
    use super::Roles;

    pub const ADMIN: Roles = Roles(1);
    pub const AUDITOR: Roles = Roles(2);
}

pub fn roles_from(names: &[String]) -> Roles {
    names.iter().fold(Roles::NONE, |roles, name| match name.as_str() {
        "admin" => roles | role::ADMIN,
        "auditor" => roles | role::AUDITOR,
        _ => roles,
    })
}

pub fn scopes_from(names: &[String]) -> Scopes {
    names
        .iter()
        .filter_map(|name| scope::NAMES.iter().find(|(n, _)| n == name).map(|(_, one)| *one))
        .fold(Scopes::NONE, |scopes, one| scopes | one)
}

/// The scopes `roles` allow.
pub fn allowed_scopes(roles: Roles) -> Scopes {
    let user = scope::FILES_READ | scope::FILES_WRITE | scope::SYNC_RUN;
    if roles.intersects(role::ADMIN | role::AUDITOR) {
        user | scope::ADMIN
    } else {
        user
    }
}

pub fn scope_name(one: Scopes) -> &'static str {
    scope::NAMES.iter().find(|(_, s)| *s == one).map_or("?", |(n, _)| n)
}

/// Why a network of an allowlist is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadNetwork {
    #[error("{0:?} is not an IP address or network")]
    Address(String),
    #[error("{0:?} has a bad prefix length")]
    PrefixLength(String),
}

/// `10.0.0.0/8`, `2001:db8::/32` or a single address.
///
/// # Errors
/// What is wrong with it.
pub fn parse_network(text: &str) -> Result<(IpAddr, u8), BadNetwork> {
    let (address, bits) = match text.trim().split_once('/') {
        Some((address, bits)) => (address, Some(bits)),
        None => (text.trim(), None),
    };
    let address: IpAddr = address.parse().map_err(|_| BadNetwork::Address(text.to_owned()))?;
    let width = if address.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(bits) => bits
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= width)
            .ok_or_else(|| BadNetwork::PrefixLength(text.to_owned()))?,
        None => width,
    };
    Ok((address, bits))
}

fn in_network(ip: IpAddr, (network, bits): (IpAddr, u8)) -> bool {
    let prefix = |bytes: &[u8]| -> u128 {
        let mut value = 0_u128;
        for b in bytes {
            value = (value << 8) | u128::from(*b);
        }
        value
    };
    let (ip, network, width) = match (ip, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (prefix(&a.octets()), prefix(&n.octets()), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (prefix(&a.octets()), prefix(&n.octets()), 128),
        (IpAddr::V6(a), IpAddr::V4(n)) => match a.to_ipv4_mapped() {
            Some(a) => (prefix(&a.octets()), prefix(&n.octets()), 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (ip >> shift) == (network >> shift)
}

/// Whether a request from `ip` may use an account restricted to `networks` (none: anywhere).
pub fn ip_allowed(ip: Option<&str>, networks: &[String]) -> bool {
    if networks.is_empty() {
        return true;
    }
    let Some(ip) = ip.and_then(|ip| ip.parse::<IpAddr>().ok()) else {
        return false;
    };
    networks.iter().filter_map(|n| parse_network(n).ok()).any(|n| in_network(ip, n))
}

/// The prefix of personal API tokens: `cst1.<user>.<token>.<secret>`.
pub const API_TOKEN_PREFIX: &str = "cst1.";

pub fn api_token(user: UserId, token: uuid::Uuid, secret: &str) -> String {
    format!("{API_TOKEN_PREFIX}{}.{}.{secret}", user.as_uuid().simple(), token.simple())
}

/// The user, token id and secret of a well-formed API token.
pub fn parse_api_token(text: &str) -> Option<(UserId, uuid::Uuid, &str)> {
    let rest = text.trim().strip_prefix(API_TOKEN_PREFIX)?;
    let mut parts = rest.splitn(3, '.');
    let (user, token, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if secret.len() != 43 || !secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    Some((
        UserId::from_uuid(uuid::Uuid::parse_str(user).ok()?),
        uuid::Uuid::parse_str(token).ok()?,
        secret,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let nets = vec!["10.0.0.0/8".to_owned(), "2001:db8::/32".to_owned(), "192.0.2.7".to_owned()];
        assert!(ip_allowed(Some("10.1.2.3"), &nets));
        assert!(ip_allowed(Some("192.0.2.7"), &nets));
        assert!(!ip_allowed(Some("192.0.2.8"), &nets));
        assert!(ip_allowed(Some("2001:db8::1"), &nets));
        assert!(ip_allowed(Some("::ffff:10.0.0.1"), &nets), "IPv4-mapped");
        assert!(!ip_allowed(Some("11.0.0.1"), &nets));
        assert!(!ip_allowed(None, &nets));
        assert!(ip_allowed(None, &[]));
        assert!(ip_allowed(Some("1.2.3.4"), &["0.0.0.0/0".to_owned()]));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::1/129"] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_allow_scopes() {
        assert_eq!(allowed_scopes(Roles::NONE) & scope::ADMIN, Scopes::NONE);
        assert_ne!(allowed_scopes(role::AUDITOR) & scope::ADMIN, Scopes::NONE);
        assert_eq!(
            scopes_from(&["files:read".into(), "bogus".into(), "admin".into()]),
            scope::FILES_READ | scope::ADMIN
        );
        assert_eq!(roles_from(&["user".into(), "admin".into()]), role::ADMIN);
    }
}
