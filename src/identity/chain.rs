//! Why a key record counts: endorsements that chain every key to the federation's pinned root.
//!
//! A key record is trusted only when it carries an [`Endorsement`]: the root's signature (what
//! `sagefed init` writes for each identity's first key), or the signature of the platform's
//! own current key on its successor (`sagefed keys rotate`). A successor names the key it
//! replaces and when that key's window ends, so the old key's end is signed too. Each key may
//! endorse one successor only. A [`Revocation`] is signed by the root; revoking a key also
//! refuses every key it endorsed (a thief's successor dies with the stolen key). Nothing
//! un-revokes: there is no record that says so, and a verifier keeps a revocation it saw.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::identity::keys::{KeyError, KeyRecord};
use crate::protocol::clock::Timestamp;

/// Domain tag of the bytes an endorsement signs, so no other signed message can pass as one.
const ENDORSEMENT_TAG: &[u8] = b"sagefed-key-record-v1\n";
/// Domain tag of the bytes a revocation signs.
const REVOCATION_TAG: &[u8] = b"sagefed-key-revocation-v1\n";
/// Longest chain of rotations from a root-endorsed key: a bound on the work one lookup does.
pub const ROTATION_CHAIN_MAX: usize = 64;

/// Who vouches for a key record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Endorser {
    /// The federation's root key (pinned in every verifier's config).
    Root,
    /// The platform's own key `key_id`, endorsing its successor.
    Key { key_id: String },
}

/// An endorser's signature over a key record (all its fields but this one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    #[serde(flatten)]
    pub endorser: Endorser,
    /// Base64 of the Ed25519 signature.
    pub signature: String,
}

/// The key a successor replaces, and the end of that key's window (the overlap's end).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Succession {
    pub key_id: String,
    /// Unix seconds after which the replaced key signs nothing.
    pub old_key_ends: Timestamp,
}

/// A root-signed statement that a key signs nothing any more.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    pub platform: String,
    pub key_id: String,
    /// Unix seconds at which the revocation was made (shown to users; it applies to every
    /// message, whatever its age).
    pub revoked_at: Timestamp,
    /// Base64 of the root's Ed25519 signature over the fields above.
    #[serde(default)]
    pub signature: String,
}

/// The bytes an endorsement of `record` signs: the record without its endorsement.
fn endorsed_bytes(record: &KeyRecord) -> Vec<u8> {
    let mut unsigned = record.clone();
    unsigned.endorsement = None;
    let mut bytes = ENDORSEMENT_TAG.to_vec();
    // Serializing a plain struct of strings and numbers cannot fail.
    bytes.extend(serde_json::to_vec(&unsigned).unwrap_or_default());
    bytes
}

fn revocation_bytes(revocation: &Revocation) -> Vec<u8> {
    let mut unsigned = revocation.clone();
    unsigned.signature = String::new();
    let mut bytes = REVOCATION_TAG.to_vec();
    bytes.extend(serde_json::to_vec(&unsigned).unwrap_or_default());
    bytes
}

fn check_signature(key: &VerifyingKey, bytes: &[u8], signature: &str) -> bool {
    let Ok(raw) = BASE64.decode(signature) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&raw) else {
        return false;
    };
    key.verify(bytes, &signature).is_ok()
}

/// `t` in whole seconds, earlier or equal. The signature covers the record as it is
/// serialized again after a read, and serde_json parses a number with a fraction to the
/// nearest f64 only approximately, so a signed time must be one it reads back bit for bit.
fn whole_seconds(t: Timestamp) -> Timestamp {
    t.whole_seconds()
}

/// `record` endorsed by `signer`, who is `endorser`. Its times are cut to whole seconds
/// (earlier: a window never grows).
pub fn endorse(mut record: KeyRecord, endorser: Endorser, signer: &SigningKey) -> KeyRecord {
    record.not_before = whole_seconds(record.not_before);
    record.not_after = record.not_after.map(whole_seconds);
    if let Some(succession) = record.replaces.as_mut() {
        succession.old_key_ends = whole_seconds(succession.old_key_ends);
    }
    let signature = signer.sign(&endorsed_bytes(&record));
    record.endorsement = Some(Endorsement {
        endorser,
        signature: BASE64.encode(signature.to_bytes()),
    });
    record
}

/// Whether `endorsement`'s signature over `record` is `key`'s.
pub fn endorsement_signed_by(record: &KeyRecord, endorsement: &Endorsement, key: &VerifyingKey) -> bool {
    check_signature(key, &endorsed_bytes(record), &endorsement.signature)
}

impl Revocation {
    /// A revocation of `platform`'s key `key_id` at `revoked_at` (whole seconds), signed by
    /// `root`.
    pub fn signed(platform: &str, key_id: &str, revoked_at: Timestamp, root: &SigningKey) -> Self {
        let mut revocation = Self {
            platform: platform.to_owned(),
            key_id: key_id.to_owned(),
            revoked_at: whole_seconds(revoked_at),
            signature: String::new(),
        };
        revocation.signature = BASE64.encode(root.sign(&revocation_bytes(&revocation)).to_bytes());
        revocation
    }

    /// Checks the root's signature.
    pub fn check(&self, root: &VerifyingKey) -> Result<(), KeyError> {
        if check_signature(root, &revocation_bytes(self), &self.signature) {
            Ok(())
        } else {
            Err(KeyError::NotEndorsed {
                platform: self.platform.clone(),
                key_id: self.key_id.clone(),
                why: "the revocation is not signed by the federation root".to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keys::generate;
    use std::time::Duration;

    #[test]
    fn an_endorsement_covers_every_field() {
        let root = generate().expect("random");
        let key = generate().expect("random").verifying_key();
        let record = endorse(
            KeyRecord::new("Thor", &key, Timestamp::from_secs(10)),
            Endorser::Root,
            &root,
        );
        let endorsement = record.endorsement.clone().expect("endorsed");
        assert!(endorsement_signed_by(&record, &endorsement, &root.verifying_key()));
        let mut moved = record.clone();
        moved.not_before = Timestamp::from_secs(0);
        assert!(!endorsement_signed_by(&moved, &endorsement, &root.verifying_key()));
        let mut renamed = record.clone();
        renamed.platform = "Legion".into();
        assert!(!endorsement_signed_by(&renamed, &endorsement, &root.verifying_key()));
        let other = generate().expect("random").verifying_key();
        assert!(!endorsement_signed_by(&record, &endorsement, &other));
    }

    #[test]
    fn signed_times_survive_a_json_round_trip() {
        let root = generate().expect("random");
        let key = generate().expect("random").verifying_key();
        // Times with a fraction, as `now_seconds` gives them: many would not read back bit
        // for bit, and the signature would fail at random.
        for i in 0..2000 {
            let t = 1_795_810_869.613_108_6 + f64::from(i) * 0.001_37;
            let mut record = KeyRecord::new("Thor", &key, Timestamp::from_unix_seconds(t).expect("a time"));
            record.replaces = Some(Succession {
                key_id: "00".into(),
                old_key_ends: Timestamp::from_unix_seconds(t).expect("a time") + Duration::from_secs_f64(3600.5),
            });
            let record = endorse(record, Endorser::Root, &root);
            let read: KeyRecord = serde_json::from_slice(&serde_json::to_vec(&record).expect("json")).expect("read");
            let endorsement = read.endorsement.clone().expect("endorsed");
            assert!(endorsement_signed_by(&read, &endorsement, &root.verifying_key()), "{t}");
            let revocation = Revocation::signed("Thor", "00", Timestamp::from_unix_seconds(t).expect("a time"), &root);
            let read: Revocation =
                serde_json::from_slice(&serde_json::to_vec(&revocation).expect("json")).expect("read");
            read.check(&root.verifying_key()).expect("round trip");
        }
    }

    #[test]
    fn a_revocation_is_checked_against_the_root() {
        let root = generate().expect("random");
        let revocation = Revocation::signed("Thor", "00", Timestamp::from_secs(5), &root);
        revocation.check(&root.verifying_key()).expect("root-signed");
        let mut later = revocation.clone();
        later.key_id = "01".into();
        assert!(later.check(&root.verifying_key()).is_err());
        let forged = Revocation::signed("Thor", "00", Timestamp::from_secs(5), &generate().expect("random"));
        assert!(forged.check(&root.verifying_key()).is_err());
    }
}
