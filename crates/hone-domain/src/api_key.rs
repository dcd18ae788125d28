//! API keys and project names. A key is `hone_sk_` and 43 base64url characters of 32
//! bytes from the OS RNG: 256 bits, so the server keeps only its SHA-256 (no slow hash
//! is needed against guessing) and finds a presented key by looking that digest up.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::ApiKeyId;

/// What every key starts with, so that a leaked one is recognisable (secret scanners,
/// logs) and a header holding something else is refused without a lookup.
pub const KEY_PREFIX: &str = "hone_sk_";
const SECRET_CHARS: usize = 43;
/// Characters of the key kept in clear for lists: the prefix and six of the secret.
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 6;

/// A key just made: the secret is shown to its owner once and never stored.
#[derive(Debug)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    /// Redacted in `Debug`, so it cannot reach a log by accident.
    pub secret: SecretString,
    pub prefix: String,
    pub hash: String,
}

impl NewApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let prefix = secret[..SHOWN_CHARS].to_owned();
        let hash = hash_key(&secret);
        Self {
            id: ApiKeyId::generate(),
            secret: SecretString::from(secret),
            prefix,
            hash,
        }
    }

    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

/// Whether `raw` has the shape of a key this server issues.
pub fn is_well_formed(raw: &str) -> bool {
    raw.strip_prefix(KEY_PREFIX).is_some_and(|s| {
        s.len() == SECRET_CHARS
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The digest a key is stored and looked up by.
pub fn hash_key(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

/// A project's name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, so it is safe in a shell, a
/// URL and a log line.
pub fn valid_project_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_distinct_and_hash_to_what_is_stored() {
        let a = NewApiKey::generate();
        let b = NewApiKey::generate();
        assert!(is_well_formed(a.expose()), "{}", a.expose());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(hash_key(a.expose()), a.hash);
        assert!(a.expose().starts_with(&a.prefix));
        assert!(
            !format!("{a:?}").contains(a.expose()),
            "Debug leaks the key"
        );
    }

    #[test]
    fn malformed_keys_are_recognised() {
        let key = NewApiKey::generate();
        assert!(!is_well_formed(&key.expose()[1..]));
        assert!(!is_well_formed(&format!("{}x", key.expose())));
        assert!(!is_well_formed("hone_sk_"));
        assert!(!is_well_formed(&key.expose().replace("hone_sk_", "sk-")));
    }

    #[test]
    fn project_names_are_plain() {
        assert!(valid_project_name("default"));
        assert!(valid_project_name("team-a_2"));
        assert!(!valid_project_name(""));
        assert!(!valid_project_name("Team A"));
        assert!(!valid_project_name(&"a".repeat(65)));
    }
}
