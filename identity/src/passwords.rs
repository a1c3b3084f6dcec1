//! Password hashing: argon2id with the configured parameters for every new hash; hashes made with
//! older parameters, and bcrypt or PBKDF2 hashes imported from another system, still verify and
//! are reported for upgrade, so the next successful login stores an argon2id hash instead.
//!
//! Hashing is CPU-heavy: call [`Passwords::hash`] and [`Passwords::verify`] from a blocking thread.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;

/// What checking a password against a stored hash found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Mismatch,
    /// The password is right; `upgrade`: the hash is not argon2id with today's parameters.
    Match {
        upgrade: bool,
    },
}

/// The hash formats CloudSync accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `$argon2id$…` (also argon2i and argon2d), PHC strings.
    Argon2,
    /// `$2a$`, `$2b$`, `$2y$` (bcrypt's modular crypt format).
    Bcrypt,
    /// `$pbkdf2-sha256$…` or `$pbkdf2-sha512$…`, PHC strings.
    Pbkdf2Phc,
    /// `pbkdf2_sha256$<iterations>$<salt>$<base64 key>`, as Django stores it.
    Pbkdf2Django,
}

fn format_of(hash: &str) -> Option<Format> {
    if hash.starts_with("$argon2") {
        Some(Format::Argon2)
    } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        Some(Format::Bcrypt)
    } else if hash.starts_with("$pbkdf2-sha256$") || hash.starts_with("$pbkdf2-sha512$") {
        Some(Format::Pbkdf2Phc)
    } else if hash.starts_with("pbkdf2_sha256$") {
        Some(Format::Pbkdf2Django)
    } else {
        None
    }
}

/// Hashes and checks passwords.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    dummy: Arc<OnceLock<String>>,
}

/// Why passwords cannot be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("argon2 parameters: {0}")]
    Parameters(String),
    #[error("{0}")]
    Hashing(String),
}

impl Passwords {
    /// argon2id with `memory_kib` of memory, `iterations` passes and `parallelism` lanes.
    ///
    /// # Errors
    /// Parameters argon2 refuses (say, less memory than 8 KiB per lane).
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, PasswordError> {
        let params = Params::new(memory_kib, iterations, parallelism, None).map_err(|err| PasswordError::Parameters(err.to_string()))?;
        Ok(Self {
            params,
            dummy: Arc::new(OnceLock::new()),
        })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A new argon2id hash of `password` with a random salt.
    ///
    /// # Errors
    /// Only if hashing itself fails.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|err| PasswordError::Hashing(err.to_string()))
    }

    /// Whether `password` matches `hash`, in any accepted format, and whether the hash should be
    /// replaced by a fresh argon2id one.
    pub fn verify(&self, password: &str, hash: &str) -> Verdict {
        let matched = match format_of(hash) {
            Some(Format::Argon2) => PasswordHash::new(hash).ok().and_then(|parsed| {
                // The hash names its own algorithm and parameters.
                Argon2::default().verify_password(password.as_bytes(), &parsed).ok()?;
                let current = parsed.algorithm.as_str() == "argon2id"
                    && Params::try_from(&parsed).is_ok_and(|p| {
                        (p.m_cost(), p.t_cost(), p.p_cost()) == (self.params.m_cost(), self.params.t_cost(), self.params.p_cost())
                    });
                Some(!current)
            }),
            Some(Format::Bcrypt) => bcrypt::verify(password, hash).ok().filter(|ok| *ok).map(|_| true),
            Some(Format::Pbkdf2Phc) => PasswordHash::new(hash)
                .ok()
                .and_then(|parsed| pbkdf2::Pbkdf2.verify_password(password.as_bytes(), &parsed).ok())
                .map(|()| true),
            Some(Format::Pbkdf2Django) => verify_django(password, hash).then_some(true),
            None => None,
        };
        match matched {
            Some(upgrade) => Verdict::Match { upgrade },
            None => Verdict::Mismatch,
        }
    }

    /// Whether `hash` is in a format CloudSync can check (for imports).
    pub fn recognised(hash: &str) -> bool {
        match format_of(hash) {
            Some(Format::Argon2 | Format::Pbkdf2Phc) => PasswordHash::new(hash).is_ok_and(|p| p.salt.is_some() && p.hash.is_some()),
            Some(Format::Bcrypt) => hash.len() == 60,
            Some(Format::Pbkdf2Django) => django_parts(hash).is_some(),
            None => false,
        }
    }

    /// A hash to verify against when the account does not exist, so both cases cost the same time.
    pub fn dummy(&self) -> &str {
        self.dummy
            .get_or_init(|| self.hash("cloudsync-no-such-account").unwrap_or_default())
    }
}

fn django_parts(hash: &str) -> Option<(u32, &str, Vec<u8>)> {
    let mut parts = hash.split('$');
    let (_, iterations, salt, key) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let iterations: u32 = iterations.parse().ok().filter(|i| (1..=10_000_000).contains(i))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .ok()
        .filter(|k| k.len() == 32)?;
    Some((iterations, salt, key))
}

fn verify_django(password: &str, hash: &str) -> bool {
    let Some((iterations, salt, key)) = django_parts(hash) else {
        return false;
    };
    let derived = pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(password.as_bytes(), salt.as_bytes(), iterations);
    // Constant time: every byte is compared whatever the first difference.
    derived.iter().zip(&key).fold(0_u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Passwords {
        Passwords::new(8 * 1024, 1, 1).expect("params")
    }

    #[test]
    fn new_hashes_are_argon2id_with_the_configured_parameters() {
        let hash = cheap().hash("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{hash}");
        assert_eq!(cheap().verify("correct horse battery", &hash), Verdict::Match { upgrade: false });
        assert_eq!(cheap().verify("wrong horse battery", &hash), Verdict::Mismatch);
        let stronger = Passwords::new(16 * 1024, 2, 1).expect("params");
        assert_eq!(stronger.verify("correct horse battery", &hash), Verdict::Match { upgrade: true });
        assert!(Passwords::new(1, 1, 1).is_err());
    }

    #[test]
    fn imported_hashes_verify_and_ask_for_an_upgrade() {
        let bcrypt = bcrypt::hash("hunter22", 4).expect("bcrypt");
        let salt = SaltString::generate(&mut OsRng);
        let phc = pbkdf2::Pbkdf2
            .hash_password_customized(
                b"hunter22",
                None,
                None,
                pbkdf2::Params {
                    rounds: 1000,
                    output_length: 32,
                },
                &salt,
            )
            .expect("pbkdf2")
            .to_string();
        let key = pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(b"hunter22", b"saltsalt", 1000);
        let django = format!(
            "pbkdf2_sha256$1000$saltsalt${}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        for hash in [&bcrypt, &phc, &django] {
            assert!(Passwords::recognised(hash), "{hash}");
            assert_eq!(cheap().verify("hunter22", hash), Verdict::Match { upgrade: true }, "{hash}");
            assert_eq!(cheap().verify("hunter23", hash), Verdict::Mismatch, "{hash}");
        }
        for bad in ["", "plain", "$2b$04$short", "pbkdf2_sha256$0$s$x", "$md5$abc", "$argon2id$garbage"] {
            assert!(!Passwords::recognised(bad), "{bad}");
            assert_eq!(cheap().verify("hunter22", bad), Verdict::Mismatch, "{bad}");
        }
    }
}
