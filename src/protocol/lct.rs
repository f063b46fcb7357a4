//! LCT identities: `lct:web4:agent:<owner>@<platform>#<task_type>`.
//!
//! Owner and platform are single NATS subject tokens (`[A-Za-z0-9_-]`), so a platform name can
//! be put into `sage.delegate.<platform>` and a KV key without escaping. The task type is one or
//! more such tokens joined by dots (`consciousness.sage`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocol::limits::{LCT_NAME_CHARS_MAX, LCT_TASK_TYPE_CHARS_MAX};

/// The fixed prefix of every LCT we accept.
pub const LCT_PREFIX: &str = "lct:web4:agent:";

/// A parsed, valid LCT identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lct {
    owner: String,
    platform: String,
    task_type: String,
}

/// Which part of an LCT is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LctError {
    #[error("LCT {0:?} must start with \"{LCT_PREFIX}\" (form: {LCT_PREFIX}<owner>@<platform>#<task_type>)")]
    Prefix(String),
    #[error("LCT {0:?} has no '@' between owner and platform")]
    MissingAt(String),
    #[error("LCT {0:?} has no '#' before the task type")]
    MissingHash(String),
    #[error("LCT owner {value:?} is invalid: {why}")]
    Owner { value: String, why: &'static str },
    #[error("platform name {value:?} is invalid: {why}")]
    Platform { value: String, why: &'static str },
    #[error("LCT task type {value:?} is invalid: {why}")]
    TaskType { value: String, why: &'static str },
}

/// Why a name is not a safe subject token, or `None` when it is.
pub fn token_problem(value: &str, chars_max: usize) -> Option<&'static str> {
    if value.is_empty() {
        return Some("it is empty");
    }
    if value.len() > chars_max {
        return Some("it is too long");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Some("only ASCII letters, digits, '_' and '-' are allowed");
    }
    None
}

/// Checks a platform name: it must be a safe NATS subject token.
pub fn check_platform(value: &str) -> Result<(), LctError> {
    match token_problem(value, LCT_NAME_CHARS_MAX) {
        None => Ok(()),
        Some(why) => Err(LctError::Platform {
            value: value.to_owned(),
            why,
        }),
    }
}

/// Checks a task type: dot-separated tokens.
pub fn check_task_type(value: &str) -> Result<(), LctError> {
    let err = |why| LctError::TaskType {
        value: value.to_owned(),
        why,
    };
    if value.len() > LCT_TASK_TYPE_CHARS_MAX {
        return Err(err("it is too long"));
    }
    for token in value.split('.') {
        if let Some(why) = token_problem(token, LCT_TASK_TYPE_CHARS_MAX) {
            return Err(err(if token.is_empty() {
                "it has an empty dot-separated part"
            } else {
                why
            }));
        }
    }
    Ok(())
}

impl Lct {
    /// Builds an LCT from its parts, checking each.
    pub fn new(owner: &str, platform: &str, task_type: &str) -> Result<Self, LctError> {
        if let Some(why) = token_problem(owner, LCT_NAME_CHARS_MAX) {
            return Err(LctError::Owner {
                value: owner.to_owned(),
                why,
            });
        }
        check_platform(platform)?;
        check_task_type(task_type)?;
        Ok(Self {
            owner: owner.to_owned(),
            platform: platform.to_owned(),
            task_type: task_type.to_owned(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn platform(&self) -> &str {
        &self.platform
    }

    pub fn task_type(&self) -> &str {
        &self.task_type
    }

    /// The same owner and task type on another platform.
    pub fn with_platform(&self, platform: &str) -> Result<Self, LctError> {
        Self::new(&self.owner, platform, &self.task_type)
    }

    /// A dot-separated form usable as a KV key suffix: `<platform>.<owner>.<task_type>`.
    /// Reversible because platform and owner are single tokens.
    pub fn key_path(&self) -> String {
        format!("{}.{}.{}", self.platform, self.owner, self.task_type)
    }

    /// Inverse of [`Lct::key_path`].
    pub fn from_key_path(path: &str) -> Result<Self, LctError> {
        let mut parts = path.splitn(3, '.');
        let platform = parts.next().unwrap_or_default();
        let owner = parts.next().unwrap_or_default();
        let task_type = parts.next().unwrap_or_default();
        Self::new(owner, platform, task_type)
    }
}

impl FromStr for Lct {
    type Err = LctError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(LCT_PREFIX)
            .ok_or_else(|| LctError::Prefix(s.to_owned()))?;
        let (owner, rest) = rest.split_once('@').ok_or_else(|| LctError::MissingAt(s.to_owned()))?;
        let (platform, task_type) = rest
            .split_once('#')
            .ok_or_else(|| LctError::MissingHash(s.to_owned()))?;
        Self::new(owner, platform, task_type)
    }
}

impl fmt::Display for Lct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LCT_PREFIX}{}@{}#{}", self.owner, self.platform, self.task_type)
    }
}

impl Serialize for Lct {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_examples_round_trip() {
        for text in [
            "lct:web4:agent:dp@Legion#consciousness",
            "lct:web4:agent:dp@Thor#consciousness.sage",
            "lct:web4:agent:dp@Sprout#consciousness",
        ] {
            let lct: Lct = text.parse().expect(text);
            assert_eq!(lct.to_string(), text);
            assert_eq!(Lct::from_key_path(&lct.key_path()).expect("key path"), lct);
        }
        let lct: Lct = "lct:web4:agent:dp@Thor#consciousness.sage".parse().expect("parse");
        assert_eq!(
            (lct.owner(), lct.platform(), lct.task_type()),
            ("dp", "Thor", "consciousness.sage")
        );
    }

    #[test]
    fn each_wrong_part_is_named() {
        type IsExpected = fn(&LctError) -> bool;
        let cases: [(&str, IsExpected); 9] = [
            ("lct:web4:user:dp@Thor#c", |e| matches!(e, LctError::Prefix(_))),
            ("lct:web4:agent:dpThor#c", |e| matches!(e, LctError::MissingAt(_))),
            ("lct:web4:agent:dp@Thor", |e| matches!(e, LctError::MissingHash(_))),
            ("lct:web4:agent:@Thor#c", |e| matches!(e, LctError::Owner { .. })),
            ("lct:web4:agent:d p@Thor#c", |e| matches!(e, LctError::Owner { .. })),
            ("lct:web4:agent:dp@Th.or#c", |e| matches!(e, LctError::Platform { .. })),
            ("lct:web4:agent:dp@Thor*#c", |e| matches!(e, LctError::Platform { .. })),
            ("lct:web4:agent:dp@Thor#c..sage", |e| {
                matches!(e, LctError::TaskType { .. })
            }),
            ("lct:web4:agent:dp@Thor#", |e| matches!(e, LctError::TaskType { .. })),
        ];
        for (text, is_expected) in cases {
            let err = text.parse::<Lct>().expect_err(text);
            assert!(is_expected(&err), "{text}: {err}");
        }
        let long = format!("lct:web4:agent:dp@{}#c", "x".repeat(LCT_NAME_CHARS_MAX + 1));
        assert!(matches!(long.parse::<Lct>(), Err(LctError::Platform { .. })));
    }

    #[test]
    fn serde_rejects_invalid_lct() {
        let ok: Lct = serde_json::from_str("\"lct:web4:agent:dp@Thor#consciousness\"").expect("valid");
        assert_eq!(ok.platform(), "Thor");
        assert!(serde_json::from_str::<Lct>("\"lct:web4:agent:dp@Th>or#c\"").is_err());
    }
}
