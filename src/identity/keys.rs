//! Ed25519 keys: key files, key ids, and the registry of every platform's public keys.
//!
//! A platform signs with one secret key (its `keypair_path`). Its public keys are published to
//! the `sage_keys` KV bucket with a validity window, so a key can be rotated with an overlap
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
        at: f64,
        not_before: f64,
        not_after: String,
    },
    #[error("key {key_id} of platform {platform} was revoked at {revoked_at:.3}")]
    Revoked {
        platform: String,
        key_id: String,
        revoked_at: f64,
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
    pub not_before: f64,
    /// Unix seconds after which the key may no longer sign; `None` = no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<f64>,
    /// Unix seconds at which the key was revoked; a revoked key verifies nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<f64>,
}

impl KeyRecord {
    /// A record for `key` valid from `not_before` with no end.
    pub fn new(platform: &str, key: &VerifyingKey, not_before: f64) -> Self {
        Self {
            platform: platform.to_owned(),
            key_id: key_id(key),
            public_key: public_key_text(key),
            not_before,
            not_after: None,
            revoked_at: None,
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
    pub fn key_valid_at(&self, at: f64) -> Result<VerifyingKey, KeyError> {
        let key = self.verifying_key()?;
        if let Some(revoked_at) = self.revoked_at {
            return Err(KeyError::Revoked {
                platform: self.platform.clone(),
                key_id: self.key_id.clone(),
                revoked_at,
            });
        }
        let after_end = self.not_after.is_some_and(|end| at > end);
        if at < self.not_before || after_end || !at.is_finite() {
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

/// Every known public key, by platform and key id.
#[derive(Clone, Debug, Default)]
pub struct KeyRegistry {
    records: HashMap<(String, String), KeyRecord>,
}

impl KeyRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a record. Revocation is sticky: a revoked record is never replaced by
    /// one that is not revoked, so a stale copy cannot un-revoke a key.
    pub fn insert(&mut self, record: KeyRecord) {
        let id = (record.platform.clone(), record.key_id.clone());
        if let Some(existing) = self.records.get(&id)
            && existing.revoked_at.is_some()
            && record.revoked_at.is_none()
        {
            return;
        }
        self.records.insert(id, record);
    }

    pub fn get(&self, platform: &str, key_id: &str) -> Option<&KeyRecord> {
        self.records.get(&(platform.to_owned(), key_id.to_owned()))
    }

    /// The key `key_id` of `platform`, if it may sign a message created at `at`.
    pub fn lookup(&self, platform: &str, key_id: &str, at: f64) -> Result<VerifyingKey, KeyError> {
        self.get(platform, key_id)
            .ok_or_else(|| KeyError::Unknown {
                platform: platform.to_owned(),
                key_id: key_id.to_owned(),
            })?
            .key_valid_at(at)
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
    fn registry_enforces_windows_and_sticky_revocation() {
        let key = generate().expect("random").verifying_key();
        let mut record = KeyRecord::new("Thor", &key, 100.0);
        record.not_after = Some(200.0);
        let mut registry = KeyRegistry::new();
        registry.insert(record.clone());
        let id = key_id(&key);
        assert_eq!(registry.lookup("Thor", &id, 150.0).expect("in window"), key);
        assert!(matches!(
            registry.lookup("Thor", &id, 99.0),
            Err(KeyError::OutsideWindow { .. })
        ));
        assert!(matches!(
            registry.lookup("Thor", &id, 201.0),
            Err(KeyError::OutsideWindow { .. })
        ));
        assert!(matches!(
            registry.lookup("Legion", &id, 150.0),
            Err(KeyError::Unknown { .. })
        ));

        let mut revoked = record.clone();
        revoked.revoked_at = Some(160.0);
        registry.insert(revoked);
        assert!(matches!(
            registry.lookup("Thor", &id, 150.0),
            Err(KeyError::Revoked { .. })
        ));
        registry.insert(record);
        assert!(matches!(
            registry.lookup("Thor", &id, 150.0),
            Err(KeyError::Revoked { .. })
        ));
    }

    #[test]
    fn record_with_wrong_key_id_is_refused() {
        let key = generate().expect("random").verifying_key();
        let mut record = KeyRecord::new("Thor", &key, 0.0);
        record.key_id = "0000000000000000".into();
        assert!(matches!(record.verifying_key(), Err(KeyError::IdMismatch { .. })));
    }
}
