//! Ed25519 keys: key files, key ids, and the registry of every platform's public keys.
//!
//! A platform signs with one secret key (its `keypair_path`). Its public keys are published to
//! the `sage_keys` KV bucket with a validity window and an endorsement that chains them to the
//! federation's root ([`crate::identity::chain`]), so a key can be rotated with an overlap
//! (old and new both valid for a while) and revoked (refused from then on, whatever the
//! message's age). Verifiers look keys up by `(platform, key_id)`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::chain::{self, Endorsement, Endorser, ROTATION_CHAIN_MAX, Revocation, Succession};
use crate::protocol::clock::Timestamp;
use crate::protocol::lct::check_platform;

/// Header line of a secret key file, so a wrong file is recognised as such.
const SECRET_FILE_TAG: &str = "sagefed-ed25519-secret-v1";

/// Errors about key files and key lookups.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} already exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is not a sagefed secret key: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("public key {0:?} is not 32 base64-encoded bytes of a valid Ed25519 point")]
    BadPublicKey(String),
    #[error("no key {key_id} is known for platform {platform}")]
    Unknown { platform: String, key_id: String },
    #[error("key {key_id} of platform {platform} is not valid at {at:.3} (valid {not_before:.3}..{not_after})")]
    OutsideWindow {
        platform: String,
        key_id: String,
        at: Timestamp,
        not_before: Timestamp,
        not_after: String,
    },
    #[error("key {key_id} of platform {platform} was revoked at {revoked_at:.3}")]
    Revoked {
        platform: String,
        key_id: String,
        revoked_at: Timestamp,
    },
    #[error("key record {platform}/{key_id} does not chain to the federation root: {why}")]
    NotEndorsed {
        platform: String,
        key_id: String,
        why: String,
    },
    #[error(
        "key record {platform}/{key_id} refused: the key registry is full ({why}); an operator revokes or removes stale keys"
    )]
    RegistryFull {
        platform: String,
        key_id: String,
        why: String,
    },
    #[error("key record for {platform}/{key_id} does not match its public key (expected key id {expected})")]
    IdMismatch {
        platform: String,
        key_id: String,
        expected: String,
    },
}

/// A short, stable identifier of a public key: 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// Public key as text (standard base64 of the 32 bytes).
pub fn public_key_text(key: &VerifyingKey) -> String {
    BASE64.encode(key.as_bytes())
}

/// Parses [`public_key_text`] output.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bad = || KeyError::BadPublicKey(text.to_owned());
    let bytes = BASE64.decode(text.trim()).map_err(|_| bad())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// A fresh secret key from the operating system's random source.
pub fn generate() -> Result<SigningKey, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to `path` with mode 0600. Refuses to replace an existing file unless `force`.
/// The public key goes beside it in `<path>.pub`.
pub fn write_secret(path: &Path, key: &SigningKey, force: bool) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    if path.exists() && !force {
        return Err(KeyError::Exists { path: path.to_owned() });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(write_err)?;
    }
    let text = format!("{SECRET_FILE_TAG}\n{}\n", BASE64.encode(key.to_bytes()));
    // Write a sibling temp file with 0600 from the start, then rename: the secret is never
    // readable by others, and a crash leaves either the old key or the new one.
    let tmp = path.with_extension("tmp-keygen");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(write_err)?;
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)?;
    let public = format!("{}\n", public_key_text(&key.verifying_key()));
    fs::write(public_path(path), public).map_err(write_err)?;
    Ok(())
}

/// Where the public half of a secret key file is written.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Reads a secret key written by [`write_secret`].
pub fn read_secret(path: &Path) -> Result<SigningKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let malformed = |why: &str| KeyError::Malformed {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(SECRET_FILE_TAG) {
        return Err(malformed(&format!("first line is not {SECRET_FILE_TAG:?}")));
    }
    let encoded = lines.next().ok_or_else(|| malformed("the key line is missing"))?;
    let bytes = BASE64
        .decode(encoded.trim())
        .map_err(|_| malformed("the key line is not base64"))?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| malformed("the key is not 32 bytes"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Where the endorsed key records of the secret key file `secret` are kept: the records of
/// its key and of the keys before it (a rotation's chain), as a JSON array.
pub fn records_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".records.json");
    PathBuf::from(name)
}

/// Reads the endorsed key records kept beside the secret key file `secret`.
pub fn read_records(secret: &Path) -> Result<Vec<KeyRecord>, KeyError> {
    let path = records_path(secret);
    let text = fs::read_to_string(&path).map_err(|source| KeyError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| KeyError::Malformed {
        path,
        why: e.to_string(),
    })
}

/// Writes the endorsed key records beside the secret key file `secret` (public: no secret).
pub fn write_records(secret: &Path, records: &[KeyRecord]) -> Result<(), KeyError> {
    let path = records_path(secret);
    let text = serde_json::to_string_pretty(records).map_err(|e| KeyError::Malformed {
        path: path.clone(),
        why: e.to_string(),
    })?;
    fs::write(&path, text + "\n").map_err(|source| KeyError::Write { path, source })
}

/// Reads the secret key at `path`, creating it first when it does not exist. Used by
/// `sagefed up`, which must work on a fresh machine without a keygen step.
pub fn read_or_create_secret(path: &Path) -> Result<SigningKey, KeyError> {
    if path.exists() {
        return read_secret(path);
    }
    let key = generate().map_err(|e| KeyError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_secret(path, &key, false)?;
    Ok(key)
}

/// One public key of one platform, with the window in which it may sign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub platform: String,
    pub key_id: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// Unix seconds from which the key may sign.
    pub not_before: Timestamp,
    /// Unix seconds after which the key may no longer sign; `None` = no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    /// `federation:delegate`, granted by the endorser: the root at `sagefed init` (platforms
    /// not made `--executor-only`), or a previous key that holds it. Never claimed: a worker
    /// reads it from the record of the key that signed the task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delegate: bool,
    /// `federation:critical`, granted like `delegate` (the root at `sagefed init --critical`,
    /// or a previous key that holds it): tasks signed by this key may be critical, and so
    /// overtake queued normal tasks. A worker reads it from the record, never from the task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    /// For a rotated key: the key it replaces and that key's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Succession>,
    /// Who vouches for this record; a record without one is refused by every verifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement: Option<Endorsement>,
}

impl KeyRecord {
    /// A record for `key` valid from `not_before` with no end.
    pub fn new(platform: &str, key: &VerifyingKey, not_before: Timestamp) -> Self {
        Self {
            platform: platform.to_owned(),
            key_id: key_id(key),
            public_key: public_key_text(key),
            not_before,
            not_after: None,
            delegate: false,
            critical: false,
            replaces: None,
            endorsement: None,
        }
    }

    /// Parses the public key and checks that the record is self-consistent.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        let key = parse_public_key(&self.public_key)?;
        let expected = key_id(&key);
        if expected != self.key_id {
            return Err(KeyError::IdMismatch {
                platform: self.platform.clone(),
                key_id: self.key_id.clone(),
                expected,
            });
        }
        if check_platform(&self.platform).is_err() {
            return Err(KeyError::Unknown {
                platform: self.platform.clone(),
                key_id: self.key_id.clone(),
            });
        }
        Ok(key)
    }

    /// The key, if it may sign a message created at `at`.
    pub fn key_valid_at(&self, at: Timestamp) -> Result<VerifyingKey, KeyError> {
        let key = self.verifying_key()?;
        let after_end = self.not_after.is_some_and(|end| at > end);
        if at < self.not_before || after_end {
            return Err(KeyError::OutsideWindow {
                platform: self.platform.clone(),
                key_id: self.key_id.clone(),
                at,
                not_before: self.not_before,
                not_after: self
                    .not_after
                    .map_or_else(|| "no end".to_owned(), |t| format!("{t:.3}")),
            });
        }
        Ok(key)
    }
}

/// Key records one platform may have in a registry: as many as one rotation chain a lookup
/// follows. A platform rotating without end is refused past it (an operator revokes its old
/// keys' records or re-initialises it).
pub const KEY_RECORDS_PER_PLATFORM_MAX: usize = ROTATION_CHAIN_MAX;
/// Key records a registry holds over all platforms. A record is a few hundred bytes (names
/// and ids are length-checked tokens, keys and signatures fixed size), so this bounds the
/// registry's memory to a few MiB.
pub const KEY_RECORDS_MAX: usize = 16 * 1024;

/// Every known public key, by platform and key id, and every revocation seen.
///
/// Bounded: past [`KEY_RECORDS_PER_PLATFORM_MAX`] records of one platform, or
/// [`KEY_RECORDS_MAX`] in all, a new record is refused ([`KeyError::RegistryFull`]); known
/// records are never evicted, so a flood cannot push out a genuine key.
#[derive(Clone, Debug, Default)]
pub struct KeyRegistry {
    records: HashMap<(String, String), KeyRecord>,
    /// Revoked keys and when; never removed, so nothing un-revokes a key in a running verifier.
    revoked: HashMap<(String, String), Timestamp>,
}

fn id(platform: &str, key_id: &str) -> (String, String) {
    (platform.to_owned(), key_id.to_owned())
}

impl KeyRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a record without checking its endorsement: for unit tests of the
    /// envelope, whose keys need no root. Verifiers use [`KeyRegistry::admit`].
    pub fn insert(&mut self, record: KeyRecord) {
        self.records.insert(id(&record.platform, &record.key_id), record);
    }

    /// Adds or replaces `record` if it chains to `root`: endorsed by the root, or by a known,
    /// unrevoked key of the same platform whose one successor it is (and which it names in
    /// `replaces`). Anything else is refused, whoever wrote it.
    pub fn admit(&mut self, record: KeyRecord, root: &VerifyingKey) -> Result<(), KeyError> {
        record.verifying_key()?;
        self.check_room(&record)?;
        let refuse = |why: &str| KeyError::NotEndorsed {
            platform: record.platform.clone(),
            key_id: record.key_id.clone(),
            why: why.to_owned(),
        };
        let endorsement = record
            .endorsement
            .as_ref()
            .ok_or_else(|| refuse("it carries no endorsement"))?;
        let endorser_key = match &endorsement.endorser {
            Endorser::Root => *root,
            Endorser::Key { key_id } => {
                if record.replaces.as_ref().map(|s| &s.key_id) != Some(key_id) || *key_id == record.key_id {
                    return Err(refuse(
                        "a key endorses only its successor, which names it in `replaces`",
                    ));
                }
                let endorser = self
                    .get(&record.platform, key_id)
                    .ok_or_else(|| refuse("its endorsing key is not known (yet)"))?;
                self.check_not_revoked(&record.platform, key_id)?;
                if self
                    .successor(&record.platform, key_id)
                    .is_some_and(|other| other.key_id != record.key_id)
                {
                    return Err(refuse("its endorsing key already endorsed another successor"));
                }
                if record.delegate && !endorser.delegate {
                    return Err(refuse(
                        "it claims federation:delegate, which the key that endorsed it does not hold",
                    ));
                }
                if record.critical && !endorser.critical {
                    return Err(refuse(
                        "it claims federation:critical, which the key that endorsed it does not hold",
                    ));
                }
                endorser.verifying_key()?
            }
        };
        if !chain::endorsement_signed_by(&record, endorsement, &endorser_key) {
            return Err(refuse("the endorsement is not signed by the endorser it names"));
        }
        self.insert(record);
        Ok(())
    }

    /// Refuses a record new to the registry when it is at one of its bounds.
    fn check_room(&self, record: &KeyRecord) -> Result<(), KeyError> {
        if self.get(&record.platform, &record.key_id).is_some() {
            return Ok(());
        }
        let full = |why: String| KeyError::RegistryFull {
            platform: record.platform.clone(),
            key_id: record.key_id.clone(),
            why,
        };
        if self.records.len() >= KEY_RECORDS_MAX {
            return Err(full(format!("{KEY_RECORDS_MAX} records in all")));
        }
        let of_platform = self.records.keys().filter(|(p, _)| *p == record.platform).count();
        if of_platform >= KEY_RECORDS_PER_PLATFORM_MAX {
            return Err(full(format!(
                "{KEY_RECORDS_PER_PLATFORM_MAX} records of {}",
                record.platform
            )));
        }
        Ok(())
    }

    /// Records a revocation the root signed. Revoking a key also refuses every key it
    /// endorsed, down the rotation chain.
    pub fn revoke(&mut self, revocation: &Revocation, root: &VerifyingKey) -> Result<(), KeyError> {
        revocation.check(root)?;
        self.revoked
            .entry(id(&revocation.platform, &revocation.key_id))
            .or_insert(revocation.revoked_at);
        Ok(())
    }

    /// When `platform`'s key `key_id` was revoked, if it was (itself, not through its chain).
    pub fn revoked_at(&self, platform: &str, key_id: &str) -> Option<Timestamp> {
        self.revoked.get(&id(platform, key_id)).copied()
    }

    /// The record that names `key_id` as the key it replaces.
    pub fn successor(&self, platform: &str, key_id: &str) -> Option<&KeyRecord> {
        self.records
            .values()
            .find(|r| r.platform == platform && r.replaces.as_ref().is_some_and(|s| s.key_id == key_id))
    }

    /// Refuses `key_id` when it, or a key up its rotation chain, is revoked.
    fn check_not_revoked(&self, platform: &str, key_id: &str) -> Result<(), KeyError> {
        let mut current = key_id.to_owned();
        for _ in 0..ROTATION_CHAIN_MAX {
            if let Some(revoked_at) = self.revoked_at(platform, &current) {
                return Err(KeyError::Revoked {
                    platform: platform.to_owned(),
                    key_id: current,
                    revoked_at,
                });
            }
            match self
                .get(platform, &current)
                .and_then(|r| r.endorsement.as_ref())
                .map(|e| &e.endorser)
            {
                Some(Endorser::Key { key_id }) => current = key_id.clone(),
                _ => return Ok(()),
            }
        }
        Err(KeyError::NotEndorsed {
            platform: platform.to_owned(),
            key_id: key_id.to_owned(),
            why: format!("its rotation chain is longer than {ROTATION_CHAIN_MAX} keys"),
        })
    }

    pub fn get(&self, platform: &str, key_id: &str) -> Option<&KeyRecord> {
        self.records.get(&id(platform, key_id))
    }

    /// The key `key_id` of `platform`, if it may sign a message created at `at`, checked at
    /// `now`: known, not revoked (nor any key up its chain), inside its window at `at`, and
    /// not past the end its successor set at `now` (after a rotation's overlap the old key
    /// verifies nothing, whatever date a message claims).
    pub fn lookup(
        &self,
        platform: &str,
        key_id: &str,
        at: Timestamp,
        now: Timestamp,
    ) -> Result<VerifyingKey, KeyError> {
        let record = self.get(platform, key_id).ok_or_else(|| KeyError::Unknown {
            platform: platform.to_owned(),
            key_id: key_id.to_owned(),
        })?;
        self.check_not_revoked(platform, key_id)?;
        let key = record.key_valid_at(at)?;
        if let Some(succession) = self.successor(platform, key_id).and_then(|s| s.replaces.as_ref())
            && (at > succession.old_key_ends || now > succession.old_key_ends)
        {
            return Err(KeyError::OutsideWindow {
                platform: platform.to_owned(),
                key_id: key_id.to_owned(),
                at: at.max(now),
                not_before: record.not_before,
                not_after: format!("{:.3} (rotated)", succession.old_key_ends),
            });
        }
        Ok(key)
    }

    pub fn records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.records.values()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_round_trips_with_mode_0600_and_refuses_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/thor.key");
        let key = generate().expect("random");
        write_secret(&path, &key, false).expect("write");
        assert_eq!(read_secret(&path).expect("read").to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let public = fs::read_to_string(public_path(&path)).expect("pub");
        assert_eq!(parse_public_key(&public).expect("parse"), key.verifying_key());

        let other = generate().expect("random");
        assert!(matches!(
            write_secret(&path, &other, false),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(read_secret(&path).expect("still old").to_bytes(), key.to_bytes());
        write_secret(&path, &other, true).expect("force");
        assert_eq!(read_secret(&path).expect("new").to_bytes(), other.to_bytes());
    }

    #[test]
    fn unreadable_or_foreign_key_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.key");
        assert!(matches!(read_secret(&missing), Err(KeyError::Read { .. })));
        let foreign = dir.path().join("foreign.key");
        fs::write(&foreign, "-----BEGIN OPENSSH PRIVATE KEY-----\n").expect("write");
        assert!(matches!(read_secret(&foreign), Err(KeyError::Malformed { .. })));
    }

    #[test]
    fn registry_enforces_windows() {
        let key = generate().expect("random").verifying_key();
        let mut record = KeyRecord::new("Thor", &key, Timestamp::from_secs(100));
        record.not_after = Some(Timestamp::from_secs(200));
        let mut registry = KeyRegistry::new();
        registry.insert(record);
        let id = key_id(&key);
        assert_eq!(
            registry
                .lookup("Thor", &id, Timestamp::from_secs(150), Timestamp::from_secs(150))
                .expect("in window"),
            key
        );
        assert!(matches!(
            registry.lookup("Thor", &id, Timestamp::from_secs(99), Timestamp::from_secs(99)),
            Err(KeyError::OutsideWindow { .. })
        ));
        assert!(matches!(
            registry.lookup("Thor", &id, Timestamp::from_secs(201), Timestamp::from_secs(201)),
            Err(KeyError::OutsideWindow { .. })
        ));
        assert!(matches!(
            registry.lookup("Legion", &id, Timestamp::from_secs(150), Timestamp::from_secs(150)),
            Err(KeyError::Unknown { .. })
        ));
    }

    /// A root, Thor's root-endorsed first key, and a registry that admitted it.
    fn rooted() -> (SigningKey, SigningKey, KeyRegistry) {
        let root = generate().expect("random");
        let first = generate().expect("random");
        let mut registry = KeyRegistry::new();
        let record = chain::endorse(
            KeyRecord::new("Thor", &first.verifying_key(), Timestamp::EPOCH),
            Endorser::Root,
            &root,
        );
        registry.admit(record, &root.verifying_key()).expect("root-endorsed");
        (root, first, registry)
    }

    /// `next` as the successor of `old`, endorsed by `old`, the old key ending at `ends`.
    fn successor(old: &SigningKey, next: &SigningKey, ends: Timestamp) -> KeyRecord {
        let mut record = KeyRecord::new("Thor", &next.verifying_key(), Timestamp::EPOCH);
        record.replaces = Some(Succession {
            key_id: key_id(&old.verifying_key()),
            old_key_ends: ends,
        });
        chain::endorse(
            record,
            Endorser::Key {
                key_id: key_id(&old.verifying_key()),
            },
            old,
        )
    }

    #[test]
    fn only_records_that_chain_to_the_root_are_admitted() {
        let (root, first, mut registry) = rooted();
        let root = root.verifying_key();
        let stranger = generate().expect("random");
        let unsigned = KeyRecord::new("Thor", &stranger.verifying_key(), Timestamp::EPOCH);
        assert!(matches!(
            registry.admit(unsigned.clone(), &root),
            Err(KeyError::NotEndorsed { .. })
        ));
        // Signed by a key that is not the root, claiming to be the root.
        let forged = chain::endorse(unsigned.clone(), Endorser::Root, &stranger);
        assert!(matches!(
            registry.admit(forged, &root),
            Err(KeyError::NotEndorsed { .. })
        ));
        // Another platform's key endorsing a Thor key.
        let legion = generate().expect("random");
        registry
            .admit(
                chain::endorse(
                    KeyRecord::new("Legion", &legion.verifying_key(), Timestamp::EPOCH),
                    Endorser::Root,
                    &first,
                ),
                &root,
            )
            .expect_err("Thor's key is not the root");
        let mut cross = successor(&legion, &stranger, Timestamp::from_secs(10));
        cross.platform = "Thor".into();
        assert!(registry.admit(cross, &root).is_err());
        // A self-endorsement.
        let mut own = KeyRecord::new("Thor", &stranger.verifying_key(), Timestamp::EPOCH);
        own.replaces = Some(Succession {
            key_id: key_id(&stranger.verifying_key()),
            old_key_ends: Timestamp::from_secs(0),
        });
        let own = chain::endorse(
            own,
            Endorser::Key {
                key_id: key_id(&stranger.verifying_key()),
            },
            &stranger,
        );
        assert!(registry.admit(own, &root).is_err());
        assert_eq!(registry.len(), 1, "only the root-endorsed key was admitted");
    }

    #[test]
    fn a_rotation_overlaps_then_ends_the_old_key() {
        let (root, first, mut registry) = rooted();
        let next = generate().expect("random");
        registry
            .admit(
                successor(&first, &next, Timestamp::from_secs(500)),
                &root.verifying_key(),
            )
            .expect("a successor endorsed by the current key");
        let (old_id, new_id) = (key_id(&first.verifying_key()), key_id(&next.verifying_key()));
        assert!(
            registry
                .lookup("Thor", &old_id, Timestamp::from_secs(499), Timestamp::from_secs(499))
                .is_ok(),
            "the overlap"
        );
        assert!(
            registry
                .lookup("Thor", &new_id, Timestamp::from_secs(499), Timestamp::from_secs(499))
                .is_ok(),
            "the overlap"
        );
        assert!(matches!(
            registry.lookup("Thor", &old_id, Timestamp::from_secs(501), Timestamp::from_secs(501)),
            Err(KeyError::OutsideWindow { .. })
        ));
        assert!(
            registry
                .lookup("Thor", &new_id, Timestamp::from_secs(501), Timestamp::from_secs(501))
                .is_ok()
        );
        assert!(
            registry
                .lookup("Thor", &old_id, Timestamp::from_secs(499), Timestamp::from_secs(501))
                .is_err(),
            "a message dated inside the overlap but verified after it"
        );
        // A successor cannot grant itself more than its endorser holds.
        let mut greedy = KeyRecord::new("Thor", &generate().expect("random").verifying_key(), Timestamp::EPOCH);
        greedy.delegate = true;
        greedy.replaces = Some(Succession {
            key_id: new_id.clone(),
            old_key_ends: Timestamp::from_secs(9000000000),
        });
        let greedy = chain::endorse(greedy, Endorser::Key { key_id: new_id.clone() }, &next);
        assert!(matches!(
            registry.admit(greedy, &root.verifying_key()),
            Err(KeyError::NotEndorsed { .. })
        ));
        // Nor federation:critical (its endorser holds neither).
        let mut pushy = KeyRecord::new("Thor", &generate().expect("random").verifying_key(), Timestamp::EPOCH);
        pushy.critical = true;
        pushy.replaces = Some(Succession {
            key_id: new_id.clone(),
            old_key_ends: Timestamp::from_secs(9000000000),
        });
        let pushy = chain::endorse(pushy, Endorser::Key { key_id: new_id.clone() }, &next);
        assert!(matches!(
            registry.admit(pushy, &root.verifying_key()),
            Err(KeyError::NotEndorsed { why, .. }) if why.contains("federation:critical")
        ));
        // One successor per key: a second one (a thief's) is refused.
        let thief = generate().expect("random");
        assert!(matches!(
            registry.admit(
                successor(&first, &thief, Timestamp::from_unix_seconds(9e9).expect("a time")),
                &root.verifying_key()
            ),
            Err(KeyError::NotEndorsed { .. })
        ));
    }

    #[test]
    fn a_revocation_refuses_the_key_and_every_key_it_endorsed() {
        let (root, first, mut registry) = rooted();
        let next = generate().expect("random");
        registry
            .admit(
                successor(&first, &next, Timestamp::from_unix_seconds(9e9).expect("a time")),
                &root.verifying_key(),
            )
            .expect("successor");
        let old_id = key_id(&first.verifying_key());
        let forged = Revocation::signed("Thor", &old_id, Timestamp::from_secs(1), &first);
        assert!(
            registry.revoke(&forged, &root.verifying_key()).is_err(),
            "only the root revokes"
        );
        assert!(
            registry
                .lookup("Thor", &old_id, Timestamp::from_secs(10), Timestamp::from_secs(10))
                .is_ok()
        );
        registry
            .revoke(
                &Revocation::signed("Thor", &old_id, Timestamp::from_secs(1), &root),
                &root.verifying_key(),
            )
            .expect("root-signed");
        for key in [&first, &next] {
            assert!(matches!(
                registry.lookup(
                    "Thor",
                    &key_id(&key.verifying_key()),
                    Timestamp::from_secs(10),
                    Timestamp::from_secs(10)
                ),
                Err(KeyError::Revoked { .. })
            ));
        }
        // A revoked key endorses nothing more.
        let thief = generate().expect("random");
        let mut registry_without_successor = KeyRegistry::new();
        let record = chain::endorse(
            KeyRecord::new("Thor", &first.verifying_key(), Timestamp::EPOCH),
            Endorser::Root,
            &root,
        );
        registry_without_successor
            .admit(record, &root.verifying_key())
            .expect("root");
        registry_without_successor
            .revoke(
                &Revocation::signed("Thor", &old_id, Timestamp::from_secs(1), &root),
                &root.verifying_key(),
            )
            .expect("revoke");
        assert!(matches!(
            registry_without_successor.admit(
                successor(&first, &thief, Timestamp::from_unix_seconds(9e9).expect("a time")),
                &root.verifying_key()
            ),
            Err(KeyError::Revoked { .. })
        ));
    }

    #[test]
    fn record_with_wrong_key_id_is_refused() {
        let key = generate().expect("random").verifying_key();
        let mut record = KeyRecord::new("Thor", &key, Timestamp::EPOCH);
        record.key_id = "0000000000000000".into();
        assert!(matches!(record.verifying_key(), Err(KeyError::IdMismatch { .. })));
    }
}
