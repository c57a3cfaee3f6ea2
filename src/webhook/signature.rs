//! Signing of outgoing deliveries per Standard Webhooks v1.
//!
//! A delivery is signed over the exact bytes `"{webhook-id}.{webhook-timestamp}.{body}"`. Symmetric
//! subscriptions (`hmac-sha256`) hold a [`WebhookSecret`] (`whsec_<base64>`) and produce `v1,<base64 HMAC>`;
//! asymmetric ones (`ed25519`) hold an [`Ed25519SigningKey`] and produce `v1a,<base64 signature>` that the
//! receiver checks with the matching [`Ed25519PublicKey`]. While a secret is being rotated several
//! [`Signer`]s sign the same message and [`signature_header`] joins their signatures with spaces, so a
//! receiver holding either the old or the new secret accepts the delivery.
//!
//! Textual forms, all standard base64 with padding:
//! - `whsec_…`: an HMAC secret of 24 to 64 random bytes;
//! - `whsk_…`: an ed25519 private key, the 32-byte seed (the 64-byte seed‖public-key form is accepted too);
//! - `whpk_…`: an ed25519 public key, 32 bytes.
//!
//! Secrets never appear in `Debug` output; [`WebhookSecret::expose`] and [`Ed25519SigningKey::expose`] give
//! the textual form on purpose (to store it, or to show it once to its owner).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, Verifier as _};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

/// Prefix of the textual form of an HMAC secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Prefix of the textual form of an ed25519 private key.
pub const PRIVATE_KEY_PREFIX: &str = "whsk_";
/// Prefix of the textual form of an ed25519 public key.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// Fewest bytes an HMAC secret may hold (Standard Webhooks recommends 24 to 64).
pub const SECRET_MIN_BYTES: usize = 24;
/// Most bytes an HMAC secret may hold.
pub const SECRET_MAX_BYTES: usize = 64;
/// How many random bytes [`WebhookSecret::generate`] draws.
const GENERATED_SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret or key in textual form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not start with the expected prefix.
    #[error("must start with `{expected}` followed by base64")]
    MissingPrefix {
        /// The prefix that was expected (`whsec_`, `whsk_` or `whpk_`).
        expected: &'static str,
    },
    /// The part after the prefix is not standard base64.
    #[error("the part after `{prefix}` is not valid base64")]
    InvalidBase64 {
        /// The prefix of the refused text.
        prefix: &'static str,
    },
    /// An HMAC secret that is too short or too long.
    #[error("a webhook secret must hold {min} to {max} bytes once decoded, this one holds {actual}")]
    SecretLength {
        /// Lower bound in bytes.
        min: usize,
        /// Upper bound in bytes.
        max: usize,
        /// Decoded length of the refused secret.
        actual: usize,
    },
    /// An ed25519 key of the wrong size.
    #[error("an ed25519 {kind} key must decode to {expected}, this one holds {actual} bytes")]
    KeyLength {
        /// `private` or `public`.
        kind: &'static str,
        /// The accepted sizes, in words.
        expected: &'static str,
        /// Decoded length of the refused key.
        actual: usize,
    },
    /// A 64-byte private key whose public half does not belong to its seed, or a public key that is not a
    /// point on the curve.
    #[error("not a valid ed25519 {kind} key")]
    InvalidKey {
        /// `private` or `public`.
        kind: &'static str,
    },
}

fn decode_prefixed(text: &str, prefix: &'static str) -> Result<Vec<u8>, KeyError> {
    let body = text.trim().strip_prefix(prefix).ok_or(KeyError::MissingPrefix { expected: prefix })?;
    BASE64.decode(body).map_err(|_| KeyError::InvalidBase64 { prefix })
}

/// The shared secret of an `hmac-sha256` subscription: 24 to 64 bytes, written `whsec_<base64>`.
#[derive(Clone)]
pub struct WebhookSecret {
    bytes: Vec<u8>,
    /// The HMAC keyed once with `bytes`; each signature starts from a clone of it.
    keyed: HmacSha256,
}

impl WebhookSecret {
    /// Parses the textual form `whsec_<base64>`; anything else (no prefix, bad base64, wrong length) is
    /// refused.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_prefixed(text, SECRET_PREFIX)?;
        if !(SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&bytes.len()) {
            return Err(KeyError::SecretLength { min: SECRET_MIN_BYTES, max: SECRET_MAX_BYTES, actual: bytes.len() });
        }
        Self::from_bytes(bytes)
    }

    /// Draws a fresh secret of 32 random bytes from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; GENERATED_SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        // 32 bytes is within bounds, and HMAC takes keys of any length.
        Self::from_bytes(bytes).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }

    fn from_bytes(bytes: Vec<u8>) -> Result<Self, KeyError> {
        let keyed = HmacSha256::new_from_slice(&bytes).map_err(|_| KeyError::SecretLength {
            min: SECRET_MIN_BYTES,
            max: SECRET_MAX_BYTES,
            actual: bytes.len(),
        })?;
        Ok(Self { bytes, keyed })
    }

    /// The textual form `whsec_<base64>`, for storage or for showing once to the subscription's owner.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.bytes))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for WebhookSecret {}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_…)")
    }
}

impl FromStr for WebhookSecret {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Signs a message with an HMAC secret: `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
pub fn sign_v1(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret.mac(msg_id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", BASE64.encode(tag))
}

/// Checks whether any `v1,` entry of a `webhook-signature` header value was made with `secret` over this
/// message. The comparison runs in constant time. The timestamp's freshness is the caller's business.
pub fn verify_v1(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| BASE64.decode(sig).ok())
        .any(|tag| secret.mac(msg_id, timestamp, body).verify_slice(&tag).is_ok())
}

/// The private key of an `ed25519` subscription, written `whsk_<base64 of the 32-byte seed>`.
#[derive(Clone)]
pub struct Ed25519SigningKey(ed25519_dalek::SigningKey);

impl Ed25519SigningKey {
    /// Parses `whsk_<base64>`, where the base64 holds the 32-byte seed or the 64-byte seed‖public key (whose
    /// public half must then match the seed).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_prefixed(text, PRIVATE_KEY_PREFIX)?;
        match bytes.len() {
            32 => {
                let mut seed = [0u8; 32];
                seed.copy_from_slice(&bytes);
                Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
            64 => {
                let mut pair = [0u8; 64];
                pair.copy_from_slice(&bytes);
                ed25519_dalek::SigningKey::from_keypair_bytes(&pair)
                    .map(Self)
                    .map_err(|_| KeyError::InvalidKey { kind: "private" })
            }
            actual => {
                Err(KeyError::KeyLength { kind: "private", expected: "a 32-byte seed or a 64-byte key pair", actual })
            }
        }
    }

    /// Draws a fresh key from the operating system's generator.
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The textual form `whsk_<base64 seed>`, for storage.
    pub fn expose(&self) -> String {
        format!("{PRIVATE_KEY_PREFIX}{}", BASE64.encode(self.0.to_bytes()))
    }

    /// The public key that receivers use to verify this key's signatures.
    pub fn public_key(&self) -> Ed25519PublicKey {
        Ed25519PublicKey(self.0.verifying_key())
    }
}

impl fmt::Debug for Ed25519SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519SigningKey(public: {})", self.public_key())
    }
}

impl FromStr for Ed25519SigningKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The public half of an [`Ed25519SigningKey`], written `whpk_<base64 of 32 bytes>`; safe to publish.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ed25519PublicKey(ed25519_dalek::VerifyingKey);

impl Ed25519PublicKey {
    /// Parses `whpk_<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_prefixed(text, PUBLIC_KEY_PREFIX)?;
        let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::KeyLength {
            kind: "public",
            expected: "32 bytes",
            actual: bytes.len(),
        })?;
        ed25519_dalek::VerifyingKey::from_bytes(&raw).map(Self).map_err(|_| KeyError::InvalidKey { kind: "public" })
    }

    /// The raw 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Checks whether any `v1a,` entry of a `webhook-signature` header value is this key's signature over
    /// the message. The timestamp's freshness is the caller's business.
    pub fn verify_v1a(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let message = signed_content(msg_id, timestamp, body);
        header
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1a,"))
            .filter_map(|sig| BASE64.decode(sig).ok())
            .filter_map(|raw| ed25519_dalek::Signature::from_slice(&raw).ok())
            .any(|sig| self.0.verify(&message, &sig).is_ok())
    }
}

impl fmt::Display for Ed25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519PublicKey({self})")
    }
}

impl FromStr for Ed25519PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(msg_id.len() + 22 + body.len());
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// Signs a message with an ed25519 key: `v1a,<base64 ed25519 signature over "{id}.{timestamp}.{body}">`.
pub fn sign_v1a(key: &Ed25519SigningKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let signature = key.0.sign(&signed_content(msg_id, timestamp, body));
    format!("v1a,{}", BASE64.encode(signature.to_bytes()))
}

/// One key that signs deliveries of a subscription.
#[derive(Debug, Clone)]
pub enum Signer {
    /// A shared secret (`hmac-sha256` subscriptions): `v1,` signatures.
    Hmac(WebhookSecret),
    /// A private key (`ed25519` subscriptions): `v1a,` signatures.
    Ed25519(Ed25519SigningKey),
}

impl Signer {
    /// This signer's `v1,…` or `v1a,…` signature of the message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        match self {
            Self::Hmac(secret) => sign_v1(secret, msg_id, timestamp, body),
            Self::Ed25519(key) => sign_v1a(key, msg_id, timestamp, body),
        }
    }
}

/// The `webhook-signature` header value: every signer's signature, in the order given, separated by single
/// spaces (several signers sign while a secret is being rotated). Empty when `signers` is empty.
pub fn signature_header(signers: &[Signer], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    signers.iter().map(|signer| signer.sign(msg_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    const REF_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const REF_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const REF_TS: i64 = 1614265330;
    const REF_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const REF_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reference_vector() {
        let secret = WebhookSecret::parse(REF_SECRET).expect("reference secret parses");
        assert_eq!(sign_v1(&secret, REF_ID, REF_TS, REF_BODY), REF_SIG);
        assert!(verify_v1(&secret, REF_ID, REF_TS, REF_BODY, REF_SIG));
        assert!(!verify_v1(&secret, REF_ID, REF_TS + 1, REF_BODY, REF_SIG));
        assert!(!verify_v1(&secret, REF_ID, REF_TS, b"{}", REF_SIG));
    }

    #[test]
    fn secret_text_round_trips() {
        let secret = WebhookSecret::parse(REF_SECRET).expect("parses");
        assert_eq!(secret.expose(), REF_SECRET);
        assert_eq!(secret.as_bytes().len(), 24);
        let parsed: WebhookSecret = REF_SECRET.parse().expect("FromStr");
        assert_eq!(parsed, secret);
    }

    #[test]
    fn secret_rejects_malformed_text() {
        let cases = [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "prefix"),
            ("", "prefix"),
            ("whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "prefix"),
            ("whsec_not base64!", "base64"),
            ("whsec_", "length"),
            ("whsec_c2hvcnQ=", "length"),
            (&format!("whsec_{}", BASE64.encode([7u8; 65])), "length"),
        ];
        for (text, kind) in cases {
            let err = WebhookSecret::parse(text).expect_err(text);
            let ok = match kind {
                "prefix" => matches!(err, KeyError::MissingPrefix { expected: "whsec_" }),
                "base64" => matches!(err, KeyError::InvalidBase64 { .. }),
                _ => matches!(err, KeyError::SecretLength { .. }),
            };
            assert!(ok, "{text:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let secret = WebhookSecret::parse(REF_SECRET).expect("parses");
        assert!(!format!("{secret:?}").contains("MfKQ9"));
        let key = Ed25519SigningKey::generate();
        let seed = key.expose();
        let seed_b64 = seed.trim_start_matches(PRIVATE_KEY_PREFIX);
        assert!(!format!("{key:?}").contains(seed_b64));
    }

    #[test]
    fn generated_secret_round_trips_and_differs() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 32);
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(&a.expose()).expect("round trip"), a);
    }

    fn headers(id: &str, ts: i64, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_str(id).expect("id"));
        headers.insert("webhook-timestamp", HeaderValue::from(ts));
        headers.insert("webhook-signature", HeaderValue::from_str(signature).expect("signature"));
        headers
    }

    #[test]
    fn standardwebhooks_crate_verifies_our_signatures() {
        let secret = WebhookSecret::generate();
        let id = "msg_2a1b3c";
        let ts = chrono::Utc::now().timestamp();
        let body = br#"{"type":"service.updated","data":{"id":"x"}}"#;
        let ours = sign_v1(&secret, id, ts, body);

        let theirs = standardwebhooks::Webhook::new(&secret.expose()).expect("their parser");
        assert_eq!(theirs.sign(id, ts, body).expect("their signer"), ours);
        theirs.verify(body, &headers(id, ts, &ours)).expect("their verifier accepts ours");
        assert!(theirs.verify(b"{}", &headers(id, ts, &ours)).is_err(), "a changed body must fail");
    }

    #[test]
    fn rotation_header_is_accepted_with_either_secret() {
        let old = WebhookSecret::generate();
        let new = WebhookSecret::generate();
        let id = "msg_rotate";
        let ts = chrono::Utc::now().timestamp();
        let body = b"{}";
        let header = signature_header(&[Signer::Hmac(new.clone()), Signer::Hmac(old.clone())], id, ts, body);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign_v1(&new, id, ts, body));
        assert_eq!(parts[1], sign_v1(&old, id, ts, body));
        for secret in [&old, &new] {
            assert!(verify_v1(secret, id, ts, body, &header));
            let theirs = standardwebhooks::Webhook::new(&secret.expose()).expect("parser");
            theirs.verify(body, &headers(id, ts, &header)).expect("either secret verifies");
        }
        assert!(!verify_v1(&WebhookSecret::generate(), id, ts, body, &header));
        assert_eq!(signature_header(&[], id, ts, body), "");
    }

    #[test]
    fn ed25519_round_trip_with_dalek_verifier() {
        let key = Ed25519SigningKey::generate();
        let public = key.public_key();
        let id = "msg_ed";
        let ts = 1_700_000_000;
        let body = br#"{"type":"phone.updated"}"#;
        let header = sign_v1a(&key, id, ts, body);
        let encoded = header.strip_prefix("v1a,").expect("v1a prefix");

        let raw = BASE64.decode(encoded).expect("base64");
        let sig = ed25519_dalek::Signature::from_slice(&raw).expect("64 bytes");
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(public.as_bytes()).expect("key");
        let message = format!("{id}.{ts}.{}", std::str::from_utf8(body).expect("utf8"));
        verifying.verify_strict(message.as_bytes(), &sig).expect("dalek verifies");
        assert!(verifying.verify_strict(b"msg_ed.1700000000.{}", &sig).is_err());

        assert!(public.verify_v1a(id, ts, body, &header));
        assert!(!public.verify_v1a(id, ts + 1, body, &header));
        let other = Ed25519SigningKey::generate().public_key();
        assert!(!other.verify_v1a(id, ts, body, &header));
        let mixed = format!("v1,abc {header}");
        assert!(public.verify_v1a(id, ts, body, &mixed));
    }

    #[test]
    fn ed25519_key_text_forms() {
        let key = Ed25519SigningKey::generate();
        let text = key.expose();
        assert!(text.starts_with("whsk_"));
        let again = Ed25519SigningKey::parse(&text).expect("seed form");
        assert_eq!(again.public_key(), key.public_key());

        let mut pair = key.0.to_bytes().to_vec();
        pair.extend_from_slice(key.public_key().as_bytes());
        let pair_text = format!("whsk_{}", BASE64.encode(&pair));
        let from_pair = Ed25519SigningKey::parse(&pair_text).expect("pair form");
        assert_eq!(from_pair.public_key(), key.public_key());

        let other = Ed25519SigningKey::generate();
        let mut bad_pair = key.0.to_bytes().to_vec();
        bad_pair.extend_from_slice(other.public_key().as_bytes());
        assert!(matches!(
            Ed25519SigningKey::parse(&format!("whsk_{}", BASE64.encode(&bad_pair))),
            Err(KeyError::InvalidKey { kind: "private" })
        ));
        assert!(matches!(Ed25519SigningKey::parse("whsk_c2hvcnQ="), Err(KeyError::KeyLength { actual: 5, .. })));
        assert!(matches!(Ed25519SigningKey::parse(REF_SECRET), Err(KeyError::MissingPrefix { expected: "whsk_" })));

        let public_text = key.public_key().to_string();
        assert!(public_text.starts_with("whpk_"));
        assert_eq!(Ed25519PublicKey::parse(&public_text).expect("public"), key.public_key());
        assert!(matches!(Ed25519PublicKey::parse("whpk_c2hvcnQ="), Err(KeyError::KeyLength { kind: "public", .. })));
        assert!(Ed25519PublicKey::parse(&text).is_err());
    }

    #[test]
    fn mixed_signers_header() {
        let secret = WebhookSecret::generate();
        let key = Ed25519SigningKey::generate();
        let header =
            signature_header(&[Signer::Hmac(secret.clone()), Signer::Ed25519(key.clone())], "msg_x", 5, b"body");
        assert!(verify_v1(&secret, "msg_x", 5, b"body", &header));
        assert!(key.public_key().verify_v1a("msg_x", 5, b"body", &header));
    }
}

/// Properties against the independent `standardwebhooks` implementation, for arbitrary secrets, message ids
/// and bodies; and header and key parsing over arbitrary text.
#[cfg(test)]
mod properties {
    use axum::http::{HeaderMap, HeaderValue};
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn secret() -> impl Strategy<Value = WebhookSecret> {
        vec(any::<u8>(), SECRET_MIN_BYTES..=SECRET_MAX_BYTES).prop_map(|bytes| {
            WebhookSecret::parse(&format!("{SECRET_PREFIX}{}", BASE64.encode(bytes))).expect("in bounds")
        })
    }

    /// A message id as it can travel in a header: visible ASCII without spaces.
    fn msg_id() -> impl Strategy<Value = String> {
        "[!-~]{1,40}"
    }

    fn headers(id: &str, ts: i64, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_str(id).expect("visible ASCII"));
        headers.insert("webhook-timestamp", HeaderValue::from(ts));
        headers.insert("webhook-signature", HeaderValue::from_str(signature).expect("base64"));
        headers
    }

    proptest! {
        #[test]
        fn standardwebhooks_verifies_what_we_sign(
            secret in secret(),
            id in msg_id(),
            body in any::<String>().prop_map(String::into_bytes),
            flip in any::<prop::sample::Index>(),
        ) {
            // The reference verifier refuses timestamps more than five minutes away from now.
            let ts = chrono::Utc::now().timestamp();
            let ours = sign_v1(&secret, &id, ts, &body);
            let theirs = standardwebhooks::Webhook::new(&secret.expose()).expect("their parser takes our secret");
            prop_assert_eq!(theirs.sign(&id, ts, &body).expect("their signer"), ours.clone());
            prop_assert!(theirs.verify(&body, &headers(&id, ts, &ours)).is_ok());
            prop_assert!(verify_v1(&secret, &id, ts, &body, &ours));

            let mut changed = body.clone();
            if changed.is_empty() {
                changed.push(b'x');
            } else {
                let at = flip.index(changed.len());
                changed[at] ^= 0x01;
            }
            prop_assert!(theirs.verify(&changed, &headers(&id, ts, &ours)).is_err());
            prop_assert!(!verify_v1(&secret, &id, ts, &changed, &ours));
        }

        #[test]
        fn a_rotation_header_verifies_with_each_secret(
            old in secret(),
            new in secret(),
            id in msg_id(),
            body in any::<String>().prop_map(String::into_bytes),
        ) {
            let ts = chrono::Utc::now().timestamp();
            let header = signature_header(&[Signer::Hmac(new.clone()), Signer::Hmac(old.clone())], &id, ts, &body);
            for secret in [&old, &new] {
                let theirs = standardwebhooks::Webhook::new(&secret.expose()).expect("parser");
                prop_assert!(theirs.verify(&body, &headers(&id, ts, &header)).is_ok());
                prop_assert!(verify_v1(secret, &id, ts, &body, &header));
            }
        }

        #[test]
        fn parsing_headers_and_keys_never_panics(
            secret in secret(),
            header in prop_oneof![any::<String>(), "((v1|v1a|v2),[A-Za-z0-9+/=]{0,90} ?){0,4}"],
            key_text in prop_oneof![any::<String>(), "(whsec_|whsk_|whpk_)[A-Za-z0-9+/=]{0,100}"],
            body in vec(any::<u8>(), 0..64),
            ts in any::<i64>(),
        ) {
            let _ = verify_v1(&secret, "msg_x", ts, &body, &header);
            let _ = WebhookSecret::parse(&key_text);
            let _ = Ed25519SigningKey::parse(&key_text);
            if let Ok(public) = Ed25519PublicKey::parse(&key_text) {
                let _ = public.verify_v1a("msg_x", ts, &body, &header);
                prop_assert_eq!(Ed25519PublicKey::parse(&public.to_string()), Ok(public));
            }
            if let Ok(parsed) = WebhookSecret::parse(&key_text) {
                prop_assert_eq!(WebhookSecret::parse(&parsed.expose()), Ok(parsed));
            }
        }

        #[test]
        fn ed25519_signatures_verify_only_the_signed_message(
            seed in any::<[u8; 32]>(),
            id in msg_id(),
            ts in any::<i64>(),
            body in vec(any::<u8>(), 0..256),
        ) {
            let key = Ed25519SigningKey::parse(&format!("{PRIVATE_KEY_PREFIX}{}", BASE64.encode(seed))).expect("seed");
            let header = sign_v1a(&key, &id, ts, &body);
            let public = key.public_key();
            prop_assert!(public.verify_v1a(&id, ts, &body, &header));
            prop_assert!(!public.verify_v1a(&id, ts.wrapping_add(1), &body, &header));
        }
    }
}
