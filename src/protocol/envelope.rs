//! Signed envelopes: the only place that signs and verifies messages.
//!
//! Wire form (compact JSON):
//! `{"kind":"task","signer":"Thor","key_id":"<16 hex>","sig":"<base64>","body":{...}}`.
//! The signature covers `DOMAIN || body`, where `body` is the exact bytes between the braces
//! as they stand on the wire (kept verbatim with `RawValue`), and `DOMAIN` is a per-kind tag
//! such as `sagefed/task/v1\0`: a task signature can never pass as a proof signature.
//!
//! Architecture invariant: [`Verified`] can only be built by [`verify`], so code that takes a
//! `Verified<T>` knows the signature, the key's validity window, the signer's identity and the
//! message's time window were all checked.

use std::ops::Deref;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::identity::keys::{KeyError, KeyRegistry, key_id};
use crate::protocol::clock::Timestamp;
use crate::protocol::lct::check_platform;
use crate::protocol::limits::{CLOCK_SKEW_MAX, ENVELOPE_BYTES_MAX, LEDGER_REQUEST_BYTES_MAX};

/// A message kind that travels signed.
pub trait Signable: Serialize + DeserializeOwned {
    /// Domain separation tag prepended to the body before signing. Ends with NUL.
    const DOMAIN: &'static [u8];
    /// The envelope's `kind` field.
    const KIND: &'static str;
    /// The platform whose key must have signed this message.
    fn signer_platform(&self) -> &str;
    /// When the signer created the message (Unix seconds).
    fn created_at(&self) -> Timestamp;
    /// When the message stops being acceptable (Unix seconds); `None` = no expiry.
    fn expires_at(&self) -> Option<Timestamp>;
    /// Checks the message's own fields (amounts, sizes, names); says what is wrong.
    fn validate(&self) -> Result<(), String>;
    /// The largest envelope of this kind, on the wire.
    const BYTES_MAX: usize = ENVELOPE_BYTES_MAX;
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is {size} bytes, more than the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("message is not a valid envelope: {0}")]
    Malformed(String),
    #[error("message is a {found:?}, expected a {expected:?}")]
    WrongKind { expected: &'static str, found: String },
    #[error("signature is not 64 base64-encoded bytes")]
    SignatureEncoding,
    #[error("signature does not verify with key {key_id} of {signer}")]
    BadSignature { signer: String, key_id: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("message was signed by {signer} but claims to come from {claimed}")]
    SignerMismatch { signer: String, claimed: String },
    #[error("message expired at {expires_at:.3} (now {now:.3})")]
    Expired { expires_at: Timestamp, now: Timestamp },
    #[error("message claims to be created at {created_at:.3}, in the future (now {now:.3})")]
    FromFuture { created_at: Timestamp, now: Timestamp },
    #[error("message body is invalid: {0}")]
    Invalid(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Wire shape of an envelope, borrowing the body verbatim.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    kind: &'a str,
    signer: &'a str,
    key_id: &'a str,
    sig: &'a str,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// A platform's signing identity.
#[derive(Clone)]
pub struct Signer {
    platform: String,
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("platform", &self.platform)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(platform: &str, key: SigningKey) -> Result<Self, EnvelopeError> {
        check_platform(platform).map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        let key_id = key_id(&key.verifying_key());
        Ok(Self {
            platform: platform.to_owned(),
            key,
            key_id,
        })
    }

    pub fn platform(&self) -> &str {
        &self.platform
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    /// Serializes and signs `message`, returning the envelope's wire bytes.
    pub fn sign<T: Signable>(&self, message: &T) -> Result<Bytes, EnvelopeError> {
        if message.signer_platform() != self.platform {
            return Err(EnvelopeError::Sign(format!(
                "{} may not sign a message from {}",
                self.platform,
                message.signer_platform()
            )));
        }
        message.validate().map_err(EnvelopeError::Sign)?;
        let body = serde_json::to_string(message).map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        let signature = self.key.sign(&signed_bytes(T::DOMAIN, body.as_bytes()));
        let sig = BASE64.encode(signature.to_bytes());
        let raw = RawValue::from_string(body).map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        let wire = Wire {
            kind: T::KIND,
            signer: &self.platform,
            key_id: &self.key_id,
            sig: &sig,
            body: &raw,
        };
        let bytes = serde_json::to_vec(&wire).map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        if bytes.len() > T::BYTES_MAX {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                max: T::BYTES_MAX,
            });
        }
        Ok(Bytes::from(bytes))
    }
}

fn signed_bytes(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + body.len());
    bytes.extend_from_slice(domain);
    bytes.extend_from_slice(body);
    bytes
}

/// Who signed an envelope, read without verifying anything: lets a caller fetch the key
/// (for example from KV) before calling [`verify`].
pub fn peek_signer(bytes: &[u8]) -> Result<(String, String), EnvelopeError> {
    let wire = parse_wire(bytes, LEDGER_REQUEST_BYTES_MAX)?;
    Ok((wire.signer.to_owned(), wire.key_id.to_owned()))
}

fn parse_wire(bytes: &[u8], max: usize) -> Result<Wire<'_>, EnvelopeError> {
    if bytes.len() > max {
        return Err(EnvelopeError::TooLarge { size: bytes.len(), max });
    }
    serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
}

/// A message whose signature, signer, key window and time window were checked.
#[derive(Clone, Debug)]
pub struct Verified<T> {
    message: T,
    key_id: String,
    wire: Bytes,
}

impl<T> Verified<T> {
    pub fn message(&self) -> &T {
        &self.message
    }

    pub fn into_message(self) -> T {
        self.message
    }

    /// The id of the key that signed it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The envelope exactly as received, to forward it to someone who verifies it again.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.message
    }
}

/// Verifies an envelope of kind `T` at time `now`, in this order: size and shape, kind, key
/// known and signature valid (`verify_strict`), body, signer matches the body's author, key
/// valid when the message was created and not revoked, message not expired or from the future,
/// body fields valid. Nothing of the body is trusted before the signature checks out.
pub fn verify<T: Signable>(bytes: &Bytes, keys: &KeyRegistry, now: Timestamp) -> Result<Verified<T>, EnvelopeError> {
    let verified = verify_ignoring_expiry::<T>(bytes, keys, now)?;
    if let Some(expires_at) = verified.message.expires_at()
        && now > expires_at
    {
        return Err(EnvelopeError::Expired { expires_at, now });
    }
    Ok(verified)
}

/// [`verify`] without the expiry check: every other check runs. For a worker, which must
/// check the signature before the expiry and answer an expired but genuine task with a signed
/// refusal; code that acts on a message must use [`verify`].
pub fn verify_ignoring_expiry<T: Signable>(
    bytes: &Bytes,
    keys: &KeyRegistry,
    now: Timestamp,
) -> Result<Verified<T>, EnvelopeError> {
    let wire = parse_wire(bytes, T::BYTES_MAX)?;
    if wire.kind != T::KIND {
        return Err(EnvelopeError::WrongKind {
            expected: T::KIND,
            found: wire.kind.to_owned(),
        });
    }
    let record = keys.get(wire.signer, wire.key_id).ok_or_else(|| KeyError::Unknown {
        platform: wire.signer.to_owned(),
        key_id: wire.key_id.to_owned(),
    })?;
    let key = record.verifying_key()?;
    debug_assert_eq!(
        key_id(&key),
        wire.key_id,
        "a registry holds records under their own key id"
    );
    let sig = BASE64.decode(wire.sig).map_err(|_| EnvelopeError::SignatureEncoding)?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| EnvelopeError::SignatureEncoding)?;
    let body = wire.body.get().as_bytes();
    key.verify_strict(&signed_bytes(T::DOMAIN, body), &Signature::from_bytes(&sig))
        .map_err(|_| EnvelopeError::BadSignature {
            signer: wire.signer.to_owned(),
            key_id: wire.key_id.to_owned(),
        })?;

    let message: T = serde_json::from_slice(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if message.signer_platform() != wire.signer {
        return Err(EnvelopeError::SignerMismatch {
            signer: wire.signer.to_owned(),
            claimed: message.signer_platform().to_owned(),
        });
    }
    let created_at = message.created_at();
    // Window, rotation end and revocations (the key's own and its chain's).
    keys.lookup(wire.signer, wire.key_id, created_at, now)?;
    if created_at > now + CLOCK_SKEW_MAX {
        return Err(EnvelopeError::FromFuture { created_at, now });
    }
    message.validate().map_err(EnvelopeError::Invalid)?;
    Ok(Verified {
        message,
        key_id: wire.key_id.to_owned(),
        wire: bytes.clone(),
    })
}

/// A stream dedupe id (`Nats-Msg-Id`) for the signed message `wire`: `prefix` and the SHA-256
/// of its bytes. A retry of the same bytes dedupes; nobody can name the digest of a signed
/// message before it is published, so nobody can store a message first under its id and
/// have the real one dropped as a duplicate (ids derived from a task id can be guessed).
pub fn dedupe_id(prefix: &str, wire: &[u8]) -> String {
    format!("{prefix}-{}", digest(wire))
}

/// The SHA-256 of a signed message's exact bytes, in lower-case hex: what a lock names the
/// task it pays for by.
pub fn digest(wire: &[u8]) -> String {
    hex::encode(Sha256::digest(wire))
}

/// Whether `text` reads as a [`digest`] (64 lower-case hex digits).
pub fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keys::{KeyRecord, generate};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Note {
        from: String,
        text: String,
        created_at: Timestamp,
        expires_at: Timestamp,
    }

    impl Signable for Note {
        const DOMAIN: &'static [u8] = b"sagefed/test-note/v1\0";
        const KIND: &'static str = "note";
        fn signer_platform(&self) -> &str {
            &self.from
        }
        fn created_at(&self) -> Timestamp {
            self.created_at
        }
        fn expires_at(&self) -> Option<Timestamp> {
            Some(self.expires_at)
        }
        fn validate(&self) -> Result<(), String> {
            if self.text.is_empty() {
                Err("text is empty".into())
            } else {
                Ok(())
            }
        }
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct OtherNote {
        from: String,
        text: String,
        created_at: Timestamp,
        expires_at: Timestamp,
    }

    impl Signable for OtherNote {
        const DOMAIN: &'static [u8] = b"sagefed/test-other/v1\0";
        const KIND: &'static str = "note";
        fn signer_platform(&self) -> &str {
            &self.from
        }
        fn created_at(&self) -> Timestamp {
            self.created_at
        }
        fn expires_at(&self) -> Option<Timestamp> {
            Some(self.expires_at)
        }
        fn validate(&self) -> Result<(), String> {
            Ok(())
        }
    }

    /// A note as the wire carried it before [`Timestamp`]: times as plain `f64` seconds.
    #[derive(Serialize, Deserialize)]
    struct NoteInSeconds {
        from: String,
        text: String,
        created_at: f64,
        expires_at: f64,
    }

    impl Signable for NoteInSeconds {
        const DOMAIN: &'static [u8] = Note::DOMAIN;
        const KIND: &'static str = Note::KIND;
        fn signer_platform(&self) -> &str {
            &self.from
        }
        fn created_at(&self) -> Timestamp {
            Timestamp::EPOCH
        }
        fn expires_at(&self) -> Option<Timestamp> {
            None
        }
        fn validate(&self) -> Result<(), String> {
            Ok(())
        }
    }

    fn in_seconds(created_at: f64, expires_at: f64) -> NoteInSeconds {
        NoteInSeconds {
            from: "Thor".into(),
            text: "hello".into(),
            created_at,
            expires_at,
        }
    }

    #[test]
    fn timestamps_sign_the_same_bytes_as_seconds_did() {
        let (signer, keys) = setup();
        for (created, expires) in [(1000.0, 1100.0), (1_795_810_869.613_108_6, 1_795_810_989.613_108_6)] {
            let note = Note {
                created_at: Timestamp::from_unix_seconds(created).expect("a time"),
                expires_at: Timestamp::from_unix_seconds(expires).expect("a time"),
                ..note()
            };
            let before = signer.sign(&in_seconds(created, expires)).expect("sign");
            assert_eq!(signer.sign(&note).expect("sign"), before, "the wire changed");
            let verified = verify::<Note>(&before, &keys, note.created_at).expect("verify");
            assert_eq!(verified.message(), &note);
        }
    }

    #[test]
    fn a_signed_negative_time_is_refused_as_malformed() {
        let (signer, keys) = setup();
        for (created, expires) in [(-1.0, 1100.0), (1000.0, -5.0)] {
            let wire = signer.sign(&in_seconds(created, expires)).expect("sign");
            let err = verify::<Note>(&wire, &keys, Timestamp::from_secs(1050)).expect_err("negative time");
            assert!(
                matches!(&err, EnvelopeError::Malformed(why) if why.contains("is not a time")),
                "{err}"
            );
        }
    }

    fn setup() -> (Signer, KeyRegistry) {
        let signer = Signer::new("Thor", generate().expect("random")).expect("signer");
        let mut keys = KeyRegistry::new();
        keys.insert(KeyRecord::new("Thor", &signer.verifying_key(), Timestamp::EPOCH));
        (signer, keys)
    }

    fn note() -> Note {
        Note {
            from: "Thor".into(),
            text: "hello".into(),
            created_at: Timestamp::from_secs(1000),
            expires_at: Timestamp::from_secs(1100),
        }
    }

    #[test]
    fn round_trip() {
        let (signer, keys) = setup();
        let wire = signer.sign(&note()).expect("sign");
        let verified = verify::<Note>(&wire, &keys, Timestamp::from_secs(1050)).expect("verify");
        assert_eq!(verified.message(), &note());
        assert_eq!(verified.key_id(), signer.key_id());
        assert_eq!(verified.wire(), &wire);
    }

    #[test]
    fn a_flipped_byte_anywhere_fails() {
        let (signer, keys) = setup();
        let wire = signer.sign(&note()).expect("sign");
        for i in 0..wire.len() {
            for mask in [0x01u8, 0x20, 0x80] {
                let mut bytes = wire.to_vec();
                bytes[i] ^= mask;
                let result = verify::<Note>(&Bytes::from(bytes), &keys, Timestamp::from_secs(1050));
                assert!(result.is_err(), "flipping byte {i} with {mask:#x} still verified");
            }
        }
    }

    #[test]
    fn a_signature_of_one_kind_does_not_verify_as_another() {
        let (signer, keys) = setup();
        let wire = signer.sign(&note()).expect("sign");
        // Same kind string and same body shape: only the domain tag differs.
        let err = verify::<OtherNote>(&wire, &keys, Timestamp::from_secs(1050)).expect_err("cross-domain");
        assert!(matches!(err, EnvelopeError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn wrong_key_unknown_key_expired_future_and_invalid_fail() {
        let (signer, keys) = setup();
        let impostor = Signer::new("Thor", generate().expect("random")).expect("signer");
        let forged = impostor.sign(&note()).expect("sign");
        assert!(matches!(
            verify::<Note>(&forged, &keys, Timestamp::from_secs(1050)),
            Err(EnvelopeError::Key(KeyError::Unknown { .. }))
        ));

        // A known key id whose key did not make the signature.
        let mut text = String::from_utf8(forged.to_vec()).expect("utf8");
        text = text.replace(impostor.key_id(), signer.key_id());
        let err = verify::<Note>(&Bytes::from(text), &keys, Timestamp::from_secs(1050)).expect_err("wrong key");
        assert!(matches!(err, EnvelopeError::BadSignature { .. }), "{err}");

        let wire = signer.sign(&note()).expect("sign");
        assert!(matches!(
            verify::<Note>(&wire, &keys, Timestamp::from_unix_seconds(1100.5).expect("a time")),
            Err(EnvelopeError::Expired { .. })
        ));
        assert!(matches!(
            verify::<Note>(&wire, &keys, Timestamp::from_secs(900)),
            Err(EnvelopeError::FromFuture { .. })
        ));

        let mut bad = note();
        bad.text.clear();
        assert!(signer.sign(&bad).is_err(), "signer refuses an invalid body");
    }

    #[test]
    fn signer_must_be_the_author_and_revoked_keys_fail() {
        let (signer, mut keys) = setup();
        let mut other = note();
        other.from = "Legion".into();
        assert!(signer.sign(&other).is_err());

        let wire = signer.sign(&note()).expect("sign");
        let root = crate::identity::keys::generate().expect("random");
        let id = crate::identity::keys::key_id(&signer.verifying_key());
        let revocation = crate::identity::chain::Revocation::signed("Thor", &id, Timestamp::from_secs(1020), &root);
        keys.revoke(&revocation, &root.verifying_key()).expect("root-signed");
        let err = verify::<Note>(&wire, &keys, Timestamp::from_secs(1050)).expect_err("revoked");
        assert!(matches!(err, EnvelopeError::Key(KeyError::Revoked { .. })), "{err}");
    }

    #[test]
    fn oversized_and_malformed_envelopes_fail() {
        let (_, keys) = setup();
        let big = Bytes::from(vec![b' '; ENVELOPE_BYTES_MAX + 1]);
        assert!(matches!(
            verify::<Note>(&big, &keys, Timestamp::from_secs(0)),
            Err(EnvelopeError::TooLarge { .. })
        ));
        for junk in ["", "{}", "null", "[1,2]", "{\"kind\":\"note\"}", "\u{0}\u{1}"] {
            let result = verify::<Note>(&Bytes::from(junk), &keys, Timestamp::from_secs(0));
            assert!(matches!(result, Err(EnvelopeError::Malformed(_))), "{junk:?}");
        }
    }
}
