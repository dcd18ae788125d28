//! Standard Webhooks signatures (https://www.standardwebhooks.com): the signed content
//! is `<webhook-id>.<webhook-timestamp>.<body>`, the MAC is HMAC-SHA256 keyed with the
//! base64-decoded bytes of the `whsec_` secret, and the `webhook-signature` header is
//! `v1,<base64 MAC>`, several of them separated by spaces while a rotated secret is
//! still honoured. Every verifier of the spec (the `standardwebhooks` packages, the
//! `openai` SDK's `webhooks.verify_signature`) accepts what this module makes.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// What every signing secret starts with (as the spec's libraries expect).
pub const SECRET_PREFIX: &str = "whsec_";
/// 256 random bits; the spec asks for 24 to 64 bytes.
const SECRET_BYTES: usize = 32;

/// An endpoint's signing secret, `whsec_<base64>`; redacted in `Debug`.
pub struct WebhookSecret {
    encoded: SecretString,
    key: Vec<u8>,
}

impl WebhookSecret {
    /// A new secret from the OS RNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self {
            encoded: SecretString::from(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))),
            key: bytes.to_vec(),
        }
    }

    /// A stored secret: `whsec_` and the standard base64 of 24 to 64 bytes.
    pub fn parse(raw: &str) -> Option<Self> {
        let key = STANDARD.decode(raw.strip_prefix(SECRET_PREFIX)?).ok()?;
        (24..=64).contains(&key.len()).then(|| Self {
            encoded: SecretString::from(raw.to_owned()),
            key,
        })
    }

    /// `whsec_…`, as shown to its owner and stored.
    pub fn expose(&self) -> &str {
        self.encoded.expose_secret()
    }

    /// The HMAC key: the decoded bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl Clone for WebhookSecret {
    fn clone(&self) -> Self {
        Self {
            encoded: SecretString::from(self.expose().to_owned()),
            key: self.key.clone(),
        }
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_[REDACTED])")
    }
}

/// `v1,<base64 HMAC-SHA256 of "msg_id.timestamp.body">`.
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.key()).expect("HMAC key of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per secret, space-separated, so that
/// a receiver still holding the secret a rotation replaced keeps verifying.
pub fn signature_header(
    secrets: &[&WebhookSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| sign(s, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification (its
    /// reference libraries' tests, e.g. standard-webhooks/standard-webhooks
    /// `libraries/python/standardwebhooks/tests/test_webhooks.py`), not computed here:
    /// matching it is what lets the spec's verifiers accept hone's signatures.
    #[test]
    fn signs_the_specification_s_test_vector() {
        let secret =
            WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        assert_eq!(
            sign(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn any_change_to_id_timestamp_or_body_changes_the_signature() {
        let s = WebhookSecret::generate();
        let base = sign(&s, "evt-1", 10, b"{}");
        assert_ne!(base, sign(&s, "evt-2", 10, b"{}"));
        assert_ne!(base, sign(&s, "evt-1", 11, b"{}"));
        assert_ne!(base, sign(&s, "evt-1", 10, b"{ }"));
        assert_ne!(base, sign(&WebhookSecret::generate(), "evt-1", 10, b"{}"));
    }

    #[test]
    fn rotated_secrets_sign_side_by_side() {
        let (new, old) = (WebhookSecret::generate(), WebhookSecret::generate());
        let header = signature_header(&[&new, &old], "evt-1", 10, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [
                sign(&new, "evt-1", 10, b"{}"),
                sign(&old, "evt-1", 10, b"{}")
            ]
        );
    }

    #[test]
    fn secrets_are_well_formed_parse_back_and_stay_out_of_debug() {
        let s = WebhookSecret::generate();
        assert!(s.expose().starts_with(SECRET_PREFIX));
        assert_eq!(s.key().len(), SECRET_BYTES);
        let back = WebhookSecret::parse(s.expose()).expect("parses");
        assert_eq!(back.key(), s.key());
        assert!(!format!("{s:?}").contains(&s.expose()[SECRET_PREFIX.len()..]));
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_none(), "5 bytes");
        assert!(WebhookSecret::parse("whsec_not base64!").is_none());
        assert!(WebhookSecret::parse(&s.expose()[SECRET_PREFIX.len()..]).is_none());
    }
}
