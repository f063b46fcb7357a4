//! Platform configuration: compiled-in defaults < `configs/<platform>.toml` (or `.yaml`) <
//! `SAGE_*` environment (nested keys joined with `__`, e.g. `SAGE_NATS__URL`).
//!
//! Values are checked while they are deserialized (`try_from` newtypes), so figment's error
//! names the key and the file (or environment variable) that held a bad value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml, Yaml};
use serde::{Deserialize, Serialize};

use ed25519_dalek::VerifyingKey;

use crate::identity::keys::parse_public_key;
use crate::ledger::witness::{WITNESS_HOLD_SECONDS_MAX, WITNESS_TOLERANCE_MAX};
use crate::protocol::atp::Atp;
use crate::protocol::lct::{Lct, check_platform, check_task_type, token_problem};
use crate::protocol::limits::{LCT_NAME_CHARS_MAX, OPERATION_CHARS_MAX};

/// Environment variables with this prefix override the file.
pub const ENV_PREFIX: &str = "SAGE_";

/// Top-level sections that the environment may override. Other `SAGE_*` variables (such as
/// `SAGE_TOOLS_DIR`) are not configuration keys and are left alone.
const ENV_SECTIONS: [&str; 6] = ["federation", "nats", "permissions", "settlement", "resources", "worker"];

/// A platform name that is also a safe NATS subject token.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlatformName(String);

impl TryFrom<String> for PlatformName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        check_platform(&value).map_err(|e| e.to_string())?;
        Ok(Self(value))
    }
}

impl From<PlatformName> for String {
    fn from(name: PlatformName) -> String {
        name.0
    }
}

impl PlatformName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlatformName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task type (`consciousness`, `consciousness.sage`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskType(String);

impl TryFrom<String> for TaskType {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        check_task_type(&value).map_err(|e| e.to_string())?;
        Ok(Self(value))
    }
}

impl From<TaskType> for String {
    fn from(t: TaskType) -> String {
        t.0
    }
}

impl TaskType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An LCT owner or operation name: one subject token.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match token_problem(&value, LCT_NAME_CHARS_MAX.max(OPERATION_CHARS_MAX)) {
            None => Ok(Self(value)),
            Some(why) => Err(format!("{value:?} is invalid: {why}")),
        }
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A non-negative ATP amount given as a number.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct AtpAmount(f64);

impl TryFrom<f64> for AtpAmount {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        Atp::from_f64(value, "ATP amount").map_err(|e| e.to_string())?;
        Ok(Self(value))
    }
}

impl From<AtpAmount> for f64 {
    fn from(a: AtpAmount) -> f64 {
        a.0
    }
}

impl AtpAmount {
    pub fn atp(self) -> Atp {
        // Checked in `try_from`; the fallback is unreachable but keeps this total.
        Atp::from_f64(self.0, "ATP amount").unwrap_or(Atp::ZERO)
    }
}

/// A number in 0.0 ..= 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Fraction(f64);

impl TryFrom<f64> for Fraction {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("{value} is outside 0..=1"))
        }
    }
}

impl From<Fraction> for f64 {
    fn from(f: Fraction) -> f64 {
        f.0
    }
}

impl Fraction {
    pub fn get(self) -> f64 {
        self.0
    }
}

/// Who this platform is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    pub platform_name: PlatformName,
    /// The platform part of this platform's LCTs; must equal `platform_name`.
    pub lct_context: PlatformName,
    /// The owner part of this platform's LCTs (`dp` in the seed).
    #[serde(default = "default_owner")]
    pub owner: Name,
    /// The Ed25519 secret key file; relative paths are relative to the config file. Its
    /// endorsed key records are beside it (`<keypair_path>.records.json`).
    pub keypair_path: PathBuf,
    /// The federation root's public key file (`root.pub` in the bundle): the one key this
    /// platform trusts to vouch for every other. Pinned here, never read from the bus.
    #[serde(default)]
    pub root_public_key_path: Option<PathBuf>,
}

fn default_owner() -> Name {
    Name("dp".to_owned())
}

/// How to reach NATS.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nats {
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// This platform's NATS credentials: the nkey seed file `sagefed init` wrote (0600);
    /// relative paths are relative to the config file.
    #[serde(default)]
    pub creds: Option<PathBuf>,
    /// The federation's CA certificate; when set, the connection requires TLS.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// The NATS URL of a local development server.
pub const NATS_URL_DEFAULT: &str = "nats://127.0.0.1:4222";

fn default_nats_url() -> String {
    NATS_URL_DEFAULT.to_owned()
}

impl Default for Nats {
    fn default() -> Self {
        Self {
            url: default_nats_url(),
            creds: None,
            ca: None,
        }
    }
}

/// ATP budget and concurrency for one task type (the seed's `resources.<task_type>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// ATP granted to this platform's LCT of this task type.
    pub atp_budget: AtpAmount,
    /// Most tasks of this type this platform executes at once.
    pub max_concurrent: u32,
}

/// The seed's LUPS permissions, as this platform applies them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// `federation:delegate`: may this platform delegate tasks to others.
    #[serde(default = "yes")]
    pub delegate: bool,
    /// `federation:critical`: may this platform queue critical tasks, which overtake queued
    /// normal ones at the executor. The root grants it when `sagefed up` makes the federation
    /// (`sagefed init --critical NAME` otherwise); this line alone grants nothing.
    #[serde(default)]
    pub critical: bool,
    /// Operations this platform executes for others (`<operation>:execute`).
    #[serde(default = "default_execute")]
    pub execute: Vec<Name>,
    /// Platforms allowed to delegate to this one; empty = every platform with a known key.
    #[serde(default)]
    pub delegators: Vec<PlatformName>,
    /// Requests per minute accepted from one delegator.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
    /// Memory limit of one task's execution, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Longest `timeout_seconds` a task may ask for here.
    #[serde(default = "default_timeout_seconds_max")]
    pub timeout_seconds_max: u64,
}

fn default_timeout_seconds_max() -> u64 {
    600
}

fn yes() -> bool {
    true
}

fn default_execute() -> Vec<Name> {
    ["perception", "planning", "execution"]
        .map(|n| Name(n.to_owned()))
        .to_vec()
}

fn default_requests_per_minute() -> u32 {
    60
}

fn default_memory_mb() -> u64 {
    512
}

impl Default for Permissions {
    fn default() -> Self {
        Self {
            delegate: true,
            critical: false,
            execute: default_execute(),
            delegators: Vec::new(),
            requests_per_minute: default_requests_per_minute(),
            memory_mb: default_memory_mb(),
            timeout_seconds_max: default_timeout_seconds_max(),
        }
    }
}

/// How this platform settles the tasks it delegates.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settlement {
    /// Proofs with a quality at or above this are paid; below, the lock is rolled back.
    #[serde(default = "default_quality_threshold")]
    pub quality_threshold: Fraction,
    /// As an executor: the highest quality threshold this platform accepts in a delegator's
    /// lock. A stricter lock would make it work for a payment it may never reach, so it is
    /// refused before any work.
    #[serde(default = "default_accepted_threshold_max")]
    pub accepted_threshold_max: Fraction,
    /// As a delegator: the share of a task's budget a witness is paid when the ledger samples
    /// the task for one (operations without a cheap check; ARCHITECTURE.md, "Witnesses"),
    /// out of this delegator's refund: on agreement at most what the executor left.
    #[serde(default = "default_witness_share")]
    pub witness_share: Fraction,
    /// As a delegator: how long a sampled commit is held for its witness's answer before the
    /// executor is paid anyway (at most the ledger's `WITNESS_HOLD_SECONDS_MAX`). Seconds, as
    /// the config file and the lock request spell the span.
    #[serde(default = "default_witness_hold_seconds")]
    pub witness_hold_seconds: f64,
}

fn default_witness_share() -> Fraction {
    Fraction(0.1)
}

fn default_witness_hold_seconds() -> f64 {
    60.0
}

fn default_accepted_threshold_max() -> Fraction {
    Fraction(0.9)
}

fn default_quality_threshold() -> Fraction {
    Fraction(0.7)
}

impl Default for Settlement {
    fn default() -> Self {
        Self {
            quality_threshold: default_quality_threshold(),
            accepted_threshold_max: default_accepted_threshold_max(),
            witness_share: default_witness_share(),
            witness_hold_seconds: default_witness_hold_seconds(),
        }
    }
}

/// A platform this one knows (the seed's `servers`), and what it can do.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownPlatform {
    pub name: PlatformName,
    pub capabilities: Vec<TaskType>,
}

/// An operation run by an external program: JSON on stdin, JSON on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalOperation {
    /// Program and arguments; relative program paths are relative to the config file.
    pub command: Vec<String>,
    /// ATP charged per second of execution, capped by the task's budget.
    #[serde(default = "default_atp_per_second")]
    pub atp_per_second: AtpAmount,
    /// The unprivileged user the program runs as when the worker runs as root, so that it
    /// cannot read the platform's secret key. A worker that is not root runs it as itself.
    #[serde(default = "default_run_as")]
    pub run_as: String,
    /// Relative difference under which a witness's numbers agree with the executor's (0:
    /// exact), named in the witness terms of the tasks this platform delegates for it.
    #[serde(default)]
    pub witness_tolerance: f64,
}

fn default_atp_per_second() -> AtpAmount {
    AtpAmount(1.0)
}

fn default_run_as() -> String {
    "nobody".to_owned()
}

/// How this platform's workers pull tasks and retry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Deliveries of one task before it goes to the dead-letter stream.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Seconds a worker has to acknowledge (or report progress on) a task before it is
    /// delivered again.
    #[serde(default = "default_ack_wait_seconds")]
    pub ack_wait_seconds: u64,
}

fn default_max_deliver() -> i64 {
    5
}

fn default_ack_wait_seconds() -> u64 {
    30
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_deliver: default_max_deliver(),
            ack_wait_seconds: default_ack_wait_seconds(),
        }
    }
}

/// A platform's whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub federation: Federation,
    #[serde(default)]
    pub nats: Nats,
    #[serde(default)]
    pub resources: BTreeMap<TaskType, Resource>,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub settlement: Settlement,
    /// Other platforms this one knows (the seed's `servers`).
    #[serde(default)]
    pub platforms: Vec<KnownPlatform>,
    /// Operations run by external programs, by operation name.
    #[serde(default)]
    pub operations: BTreeMap<Name, ExternalOperation>,
    /// How this platform's workers pull tasks.
    #[serde(default)]
    pub worker: WorkerSettings,
    /// Directory the config file was read from; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// A configuration that could not be loaded: the message names the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Figment(Box<figment::Error>),
    #[error("{key} in {source_name}: {why}")]
    Invalid {
        key: String,
        source_name: String,
        why: String,
    },
    #[error(
        "{platform}'s config pins no federation root: set federation.root_public_key_path to the root.pub of its bundle (made by `sagefed init`)"
    )]
    NoRoot { platform: String },
    #[error("the federation root's public key {path}: {why}")]
    Root { path: PathBuf, why: String },
}

/// The layered configuration for the file at `path`.
pub fn figment(path: &Path) -> Figment {
    let is_yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let file = if is_yaml {
        Figment::from(Yaml::file_exact(path))
    } else {
        Figment::from(Toml::file_exact(path))
    };
    file.merge(Env::prefixed(ENV_PREFIX).split("__").filter(|key| {
        // After the split, nested keys read `<section>.<key>`; anything else with the prefix
        // (SAGE_TOOLS_DIR, SAGE_LOG) is not configuration.
        let key = key.as_str().to_ascii_lowercase();
        ENV_SECTIONS
            .iter()
            .any(|section| key.starts_with(&format!("{section}.")))
    }))
}

impl Config {
    /// Loads and checks the configuration at `path` (with the environment on top).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        let figment = figment(path);
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Figment(Box::new(e)))?;
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        config.check(&figment)?;
        Ok(config)
    }

    /// Checks relations between keys that no single value can check.
    /// Checks the witness terms this platform names as a delegator against the ledger's
    /// limits (ARCHITECTURE.md, "Witnesses"), so a bad value fails at load, not at a lock.
    fn check_witness_terms(&self, invalid: &impl Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let share = self.settlement.witness_share.get();
        if share == 0.0 {
            return Err(invalid(
                "settlement.witness_share",
                "must be more than 0 (a witness is paid for its work) and at most 1".to_owned(),
            ));
        }
        let hold = self.settlement.witness_hold_seconds;
        if !(hold > 0.0 && hold <= WITNESS_HOLD_SECONDS_MAX) {
            return Err(invalid(
                "settlement.witness_hold_seconds",
                format!("{hold} is outside the ledger's limit, more than 0 and at most {WITNESS_HOLD_SECONDS_MAX}"),
            ));
        }
        for (name, op) in &self.operations {
            if !(0.0..=WITNESS_TOLERANCE_MAX).contains(&op.witness_tolerance) {
                return Err(invalid(
                    &format!("operations.{}.witness_tolerance", name.as_str()),
                    format!(
                        "{} is outside the ledger's limit 0..={WITNESS_TOLERANCE_MAX}",
                        op.witness_tolerance
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: String| ConfigError::Invalid {
            key: key.to_owned(),
            source_name: figment
                .find_metadata(key)
                .and_then(|m| m.source.as_ref().map(|s| s.to_string()))
                .unwrap_or_else(|| "the defaults".to_owned()),
            why,
        };
        if self.federation.lct_context != self.federation.platform_name {
            return Err(invalid(
                "federation.lct_context",
                format!(
                    "must equal federation.platform_name ({})",
                    self.federation.platform_name
                ),
            ));
        }
        for (task_type, resource) in &self.resources {
            if resource.max_concurrent == 0 {
                let key = format!("resources.{}.max_concurrent", task_type.as_str());
                return Err(invalid(&key, "must be at least 1".to_owned()));
            }
        }
        if !(1..=100).contains(&self.worker.max_deliver) {
            return Err(invalid("worker.max_deliver", "must be within 1..=100".to_owned()));
        }
        if !(1..=3600).contains(&self.worker.ack_wait_seconds) {
            return Err(invalid("worker.ack_wait_seconds", "must be within 1..=3600".to_owned()));
        }
        if self.permissions.requests_per_minute == 0 {
            return Err(invalid(
                "permissions.requests_per_minute",
                "must be at least 1".to_owned(),
            ));
        }
        self.check_witness_terms(&invalid)?;
        for (name, op) in &self.operations {
            if op.command.is_empty() {
                return Err(invalid(
                    &format!("operations.{}.command", name.as_str()),
                    "is empty".to_owned(),
                ));
            }
            if op.run_as.is_empty() {
                return Err(invalid(
                    &format!("operations.{}.run_as", name.as_str()),
                    "is empty; name an unprivileged user such as nobody".to_owned(),
                ));
            }
        }
        if let Some(known) = self.platforms.iter().find(|p| p.name == self.federation.platform_name) {
            return Err(invalid(
                "platforms",
                format!("lists this platform itself ({})", known.name),
            ));
        }
        Ok(())
    }

    pub fn platform(&self) -> &str {
        self.federation.platform_name.as_str()
    }

    /// The tolerance a witness's result of `operation` is compared with, as this platform
    /// declares it (an external program's `witness_tolerance`; 0, exact, otherwise).
    pub fn witness_tolerance(&self, operation: &str) -> f64 {
        self.operations
            .iter()
            .find(|(name, _)| name.as_str() == operation)
            .map_or(0.0, |(_, op)| op.witness_tolerance)
    }

    /// This platform's LCT for `task_type`.
    pub fn lct(&self, task_type: &str) -> Result<Lct, crate::protocol::lct::LctError> {
        Lct::new(self.federation.owner.as_str(), self.platform(), task_type)
    }

    /// Resolves a path from the config file: `~/` is the home directory, relative paths are
    /// relative to the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if let Ok(rest) = path.strip_prefix("~")
            && let Some(home) = std::env::var_os("HOME")
        {
            return PathBuf::from(home).join(rest);
        }
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The federation root's public key this platform trusts ([`Federation::root_public_key_path`]).
    pub fn root_public_key(&self) -> Result<VerifyingKey, ConfigError> {
        let path = self
            .federation
            .root_public_key_path
            .as_ref()
            .map(|p| self.resolve(p))
            .ok_or_else(|| ConfigError::NoRoot {
                platform: self.platform().to_owned(),
            })?;
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Root {
            path: path.clone(),
            why: e.to_string(),
        })?;
        parse_public_key(&text).map_err(|e| ConfigError::Root {
            path,
            why: e.to_string(),
        })
    }

    /// The secret key file of this platform.
    pub fn keypair_path(&self) -> PathBuf {
        self.resolve(&self.federation.keypair_path)
    }

    /// How this platform connects: URL, credentials and CA with paths resolved.
    pub fn nats_access(&self) -> crate::nats::connection::NatsAccess {
        crate::nats::connection::NatsAccess {
            url: self.nats.url.clone(),
            creds: self.nats.creds.as_ref().map(|p| self.resolve(p)),
            ca: self.nats.ca.as_ref().map(|p| self.resolve(p)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    const THOR: &str = r#"
[federation]
platform_name = "Thor"
lct_context = "Thor"
keypair_path = "keys/thor.key"

[resources.consciousness]
atp_budget = 1000.0
max_concurrent = 10

[resources."consciousness.sage"]
atp_budget = 2000.0
max_concurrent = 5

[[platforms]]
name = "Legion"
capabilities = ["consciousness", "consciousness.sage"]
"#;

    fn load(jail: &Jail, name: &str) -> Result<Config, String> {
        Config::load(&jail.directory().join(name)).map_err(|e| e.to_string())
    }

    #[test]
    fn file_then_environment_over_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file("thor.toml", THOR)?;
            let config = load(jail, "thor.toml")?;
            assert_eq!(config.platform(), "Thor");
            assert_eq!(config.nats.url, NATS_URL_DEFAULT);
            assert_eq!(config.settlement.quality_threshold.get(), 0.7);
            assert_eq!(config.permissions.requests_per_minute, 60);
            assert_eq!(config.resources.len(), 2);
            assert_eq!(config.keypair_path(), jail.directory().join("keys/thor.key"));
            assert_eq!(
                config.lct("consciousness.sage").map_err(|e| e.to_string())?.to_string(),
                "lct:web4:agent:dp@Thor#consciousness.sage"
            );

            jail.set_env("SAGE_NATS__URL", "nats://127.0.0.1:5222");
            jail.set_env("SAGE_SETTLEMENT__QUALITY_THRESHOLD", "0.8");
            jail.set_env("SAGE_TOOLS_DIR", "/somewhere");
            jail.set_env("SAGE_NATS_URL", "not a config key");
            let config = load(jail, "thor.toml")?;
            assert_eq!(config.nats.url, "nats://127.0.0.1:5222");
            assert_eq!(config.settlement.quality_threshold.get(), 0.8);
            Ok(())
        });
    }

    #[test]
    fn yaml_works_like_toml() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "sprout.yaml",
                "federation:\n  platform_name: Sprout\n  lct_context: Sprout\n  keypair_path: s.key\nresources:\n  consciousness:\n    atp_budget: 500.0\n    max_concurrent: 2\n",
            )?;
            let config = load(jail, "sprout.yaml")?;
            assert_eq!(config.platform(), "Sprout");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_file() {
        let cases = [
            ("platform_name = \"Thor\"", "platform_name = \"Th.or\"", "platform_name"),
            ("max_concurrent = 10", "max_concurrent = -3", "max_concurrent"),
            ("atp_budget = 1000.0", "atp_budget = -1000.0", "atp_budget"),
            (
                "max_concurrent = 10",
                "max_concurrent = 0",
                "resources.consciousness.max_concurrent",
            ),
            (
                "lct_context = \"Thor\"",
                "lct_context = \"Legion\"",
                "federation.lct_context",
            ),
            ("[[platforms]]", "[[platformz]]", "platformz"),
            (
                "[[platforms]]",
                "[settlement]\nwitness_hold_seconds = 601.0\n\n[[platforms]]",
                "settlement.witness_hold_seconds",
            ),
            (
                "[[platforms]]",
                "[settlement]\nwitness_share = 0.0\n\n[[platforms]]",
                "settlement.witness_share",
            ),
        ];
        for (from, to, key) in cases {
            Jail::expect_with(|jail| {
                jail.create_file("thor.toml", &THOR.replacen(from, to, 1))?;
                let err = load(jail, "thor.toml").expect_err(to);
                assert!(err.contains(key), "{err:?} should name {key}");
                assert!(err.contains("thor.toml"), "{err:?} should name the file");
                Ok(())
            });
        }
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.create_file("thor.toml", THOR)?;
            jail.set_env("SAGE_SETTLEMENT__QUALITY_THRESHOLD", "1.5");
            let err = load(jail, "thor.toml").expect_err("out of range");
            assert!(
                err.to_lowercase().contains("settlement.quality_threshold") && err.contains("SAGE_"),
                "{err}"
            );
            Ok(())
        });
    }
}
