//! `sagefed init`: a federation's keys, credentials, certificates and per-machine bundles.
//!
//! Layout of the directory it writes (secrets 0600, never overwritten without `force`):
//! - `federation.json`: public manifest: root public key, server host names, every identity
//!   with its role and NATS public key. `add_platform` reads it.
//! - `root/root.key`: the root Ed25519 key. Keep it offline; only its public half
//!   (`root/root.key.pub`, `root.pub` in each bundle) is pinned.
//! - `keys/<identity>.key`: each admin's and platform's Ed25519 signing key, with its public
//!   half and `<identity>.key.records.json`, its key record endorsed by the root.
//! - `ca/ca.pem`, `ca/ca.key`: the TLS CA; `server/server.pem`, `server/server.key`: the
//!   server certificate it signed for `hosts`.
//! - `creds/<identity>.nk`: each identity's nkey seed (NATS credentials).
//! - `server/nats-server.conf`: the server config with one nkey user per identity and the
//!   permissions of `subjects.md`.
//! - `bundles/<machine>/`: what to copy to each machine: `hub` (server config and
//!   certificate, the ledger's and admins' credentials and signing keys) and one per platform
//!   (its credentials, signing key and endorsed record, the CA certificate, `root.pub`, and
//!   `nats.toml` to paste into its config).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::identity::chain::{self, Endorser};
use crate::identity::keys::{self, KeyRecord};
use crate::nats::permissions::Role;
use crate::nats::server_config::{self, NatsUser};
use crate::protocol::clock::Timestamp;
use crate::protocol::lct::token_problem;

/// The ledger service's identity name.
pub const LEDGER_IDENTITY: &str = "ledger";
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "federation.json";
/// The topology plan's file name (`identity::topology`).
pub const TOPOLOGY_PLAN_FILE: &str = "topology.json";
/// Longest identity name, in characters (it becomes a subject token).
pub const IDENTITY_CHARS_MAX: usize = 64;
/// Days the CA and the server certificate are valid.
pub const CERT_VALIDITY_DAYS: i64 = 3 * 365;
/// The hub bundle's name (server, ledger, admins).
pub const HUB_BUNDLE: &str = "hub";
/// The root public key file in every bundle.
pub const ROOT_PUBLIC_KEY_FILE: &str = "root.pub";

/// Everything that can go wrong making a federation.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already holds a federation; pass --force to replace it (every key changes)")]
    Exists(PathBuf),
    #[error("{0} holds no federation ({MANIFEST_FILE} is missing); run `sagefed init` first")]
    NoFederation(PathBuf),
    #[error("identity name {name:?}: {why}")]
    BadName { name: String, why: String },
    #[error("identity {0} already exists in this federation")]
    Duplicate(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("cannot make the TLS certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot make or read a signing key: {0}")]
    Key(#[from] keys::KeyError),
    #[error("the system's random source failed: {0}")]
    Random(#[source] getrandom::Error),
    #[error("cannot make an nkey: {0}")]
    Nkey(#[source] nkeys::error::Error),
    #[error("cannot read a machine's nkey: {0}")]
    Creds(#[source] crate::nats::connection::ConnectError),
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot lay out the machines: {0}")]
    Topology(#[from] crate::identity::topology::PlanError),
    #[error("the topology plan names no machine {0}")]
    UnknownMachine(String),
}

/// The public manifest of a federation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The root's Ed25519 public key (base64): pinned in every machine's config.
    pub root_public_key: String,
    /// Host names and addresses the server certificate is valid for.
    pub hosts: Vec<String>,
    /// The NATS URL written into the platforms' bundles.
    pub url: String,
    pub identities: Vec<NatsUser>,
}

/// What `sagefed init` makes.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub platforms: Vec<String>,
    /// Platforms among `platforms` not granted `federation:delegate` (execute only).
    pub executors: Vec<String>,
    /// Platforms among `platforms` granted `federation:critical` (critical tasks) besides
    /// `federation:delegate`.
    pub critical: Vec<String>,
    pub admins: Vec<String>,
    /// Extra host names or addresses for the server certificate (loopback is always in).
    pub hosts: Vec<String>,
    /// The NATS URL the platforms' bundles point at.
    pub url: String,
    /// The server config the generated one starts from (limits, JetStream, durability).
    pub server_base: String,
    pub force: bool,
}

/// Paths inside a federation directory.
#[derive(Clone, Debug)]
pub struct FederationDir {
    pub dir: PathBuf,
}

impl FederationDir {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }
    pub fn root_key(&self) -> PathBuf {
        self.dir.join("root/root.key")
    }
    /// The root's public key, as every verifier pins it.
    pub fn root_public_key(&self) -> PathBuf {
        keys::public_path(&self.root_key())
    }
    /// The Ed25519 signing key of an admin or platform identity.
    pub fn signing_key(&self, identity: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{identity}.key"))
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca/ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca/ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server/server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server/server.key")
    }
    pub fn server_config(&self) -> PathBuf {
        self.dir.join("server/nats-server.conf")
    }
    /// The server config's base (everything but authorization and TLS), kept for re-rendering.
    pub fn server_base(&self) -> PathBuf {
        self.dir.join("server/base.conf")
    }
    /// NATS credentials (nkey seed) of `identity`.
    pub fn creds(&self, identity: &str) -> PathBuf {
        self.dir.join("creds").join(format!("{identity}.nk"))
    }
    /// The machines' layout `sagefed init --topology` chose (absent for one server), kept so
    /// that `--add-platform` can regenerate every server config that names the platforms.
    pub fn topology_plan(&self) -> PathBuf {
        self.dir.join(TOPOLOGY_PLAN_FILE)
    }
    pub fn bundle(&self, machine: &str) -> PathBuf {
        self.dir.join("bundles").join(machine)
    }
    pub fn exists(&self) -> bool {
        self.manifest().is_file()
    }
    pub fn load(&self) -> Result<Manifest, InitError> {
        if !self.exists() {
            return Err(InitError::NoFederation(self.dir.clone()));
        }
        let read = |why: String| InitError::Read {
            path: self.manifest(),
            why,
        };
        let text = fs::read_to_string(self.manifest()).map_err(|e| read(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| read(e.to_string()))
    }
}

fn check_name(name: &str) -> Result<(), InitError> {
    if let Some(why) = token_problem(name, IDENTITY_CHARS_MAX) {
        return Err(InitError::BadName {
            name: name.to_owned(),
            why: why.to_owned(),
        });
    }
    Ok(())
}

pub(crate) fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), InitError> {
    let err = |source| InitError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(err)?;
    // A file that existed keeps its old mode through `open`; make a secret's 0600 sure.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    file.write_all(text.as_bytes()).map_err(err)
}

pub(crate) fn read_text(path: &Path) -> Result<String, InitError> {
    fs::read_to_string(path).map_err(|e| InitError::Read {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

/// A new identity: its nkey seed written under `creds/`.
fn new_identity(fed: &FederationDir, name: &str, role: Role) -> Result<NatsUser, InitError> {
    check_name(name)?;
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().map_err(InitError::Nkey)?;
    write_file(&fed.creds(name), &format!("{seed}\n"), true)?;
    Ok(NatsUser {
        name: name.to_owned(),
        role,
        nkey: pair.public_key(),
    })
}

/// The CA's parameters: the same every time, so that the CA can sign again later from its
/// key alone ([`issue_certificate`]).
fn ca_params(now: time::OffsetDateTime) -> Result<rcgen::CertificateParams, InitError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sagefed federation CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now;
    ca_params.not_after = now + time::Duration::days(CERT_VALIDITY_DAYS);
    Ok(ca_params)
}

/// A server certificate for `hosts` signed by `issuer`, as (certificate PEM, key PEM).
/// `route`: it also authenticates its server to others (cluster routes, mutual TLS).
fn server_certificate<S: rcgen::SigningKey>(
    issuer: &rcgen::Issuer<'_, S>,
    hosts: &[String],
    route: bool,
) -> Result<(String, String), InitError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "sagefed nats-server");
    params.not_before = now;
    params.not_after = now + time::Duration::days(CERT_VALIDITY_DAYS);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if route {
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes the CA, and the server certificate it signs for `hosts` plus loopback.
fn make_certificates(fed: &FederationDir, hosts: &[String]) -> Result<(), InitError> {
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params(time::OffsetDateTime::now_utc())?, ca_key)?;
    let (server_pem, server_key) = server_certificate(&ca, hosts, false)?;
    write_file(&fed.ca_cert(), &ca.pem(), false)?;
    write_file(&fed.ca_key(), &ca.key().serialize_pem(), true)?;
    write_file(&fed.server_cert(), &server_pem, false)?;
    write_file(&fed.server_key(), &server_key, true)?;
    Ok(())
}

/// What a throwaway server (`sagefed bench`) is secured with: a CA made for it, a loopback
/// server certificate the CA signed, and one nkey user, all written into one directory.
#[derive(Clone, Debug)]
pub struct ThrowawayServer {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The user's nkey seed file (0600).
    pub creds: PathBuf,
    /// The user's NATS public key (`U...`).
    pub nkey: String,
}

/// Makes [`ThrowawayServer`]'s files in `dir`: not a federation (no root, no identities),
/// only what keeps other local users off a server that lives for one run.
pub fn throwaway_server(dir: &Path) -> Result<ThrowawayServer, InitError> {
    let fed = FederationDir::new(dir);
    let hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect();
    make_certificates(&fed, &hosts)?;
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().map_err(InitError::Nkey)?;
    let creds = fed.creds("throwaway");
    write_file(&creds, &format!("{seed}\n"), true)?;
    Ok(ThrowawayServer {
        ca_cert: fed.ca_cert(),
        server_cert: fed.server_cert(),
        server_key: fed.server_key(),
        creds,
        nkey: pair.public_key(),
    })
}

/// What the root grants a key: the permissions a worker reads from the key's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// `federation:delegate`: its tasks and locks are accepted.
    pub delegate: bool,
    /// `federation:critical`: its tasks may be critical.
    pub critical: bool,
}

impl Grants {
    /// Nothing: an admin's key.
    pub const NONE: Grants = Grants {
        delegate: false,
        critical: false,
    };

    /// What an identity of `role` is granted.
    pub fn of(role: Role) -> Grants {
        Grants {
            delegate: role.delegates(),
            critical: role.critical(),
        }
    }
}

/// Reads the signing key at `key_path` (creating it when missing) and makes sure the records
/// file beside it holds its record endorsed by `root` for `identity`, granting what `grants`
/// says. Returns that record.
pub fn endorse_key_file(
    root: &ed25519_dalek::SigningKey,
    identity: &str,
    key_path: &Path,
    grants: Grants,
) -> Result<KeyRecord, InitError> {
    let key = keys::read_or_create_secret(key_path)?;
    let id = keys::key_id(&key.verifying_key());
    // No records yet is normal (a key made just now); a file that cannot be read or does not
    // decode is refused, not overwritten: it may hold endorsements worth keeping.
    let existing = match keys::read_records(key_path) {
        Ok(records) => records,
        Err(keys::KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if let Some(record) = existing.iter().find(|r| {
        r.key_id == id && r.platform == identity && r.delegate == grants.delegate && r.critical == grants.critical
    }) {
        return Ok(record.clone());
    }
    let mut record = KeyRecord::new(identity, &key.verifying_key(), Timestamp::EPOCH);
    record.delegate = grants.delegate;
    record.critical = grants.critical;
    let record = chain::endorse(record, Endorser::Root, root);
    keys::write_records(key_path, std::slice::from_ref(&record))?;
    Ok(record)
}

/// Endorses `identity`'s signing key at `key_path` with the root of `fed`, granting what the
/// manifest gives its role (`federation:delegate` to a `platform`, not to an executor-only
/// one or an admin).
pub fn endorse_identity_key(fed: &FederationDir, identity: &str, key_path: &Path) -> Result<KeyRecord, InitError> {
    let manifest = fed.load()?;
    let role = manifest
        .identities
        .iter()
        .find(|i| i.name == identity)
        .map(|i| i.role)
        .ok_or_else(|| InitError::Read {
            path: fed.manifest(),
            why: format!("no identity {identity}; add it with `sagefed init --add-platform {identity}`"),
        })?;
    endorse_key_file(&read_root(fed)?, identity, key_path, Grants::of(role))
}

/// Reads the root key of the federation in `fed`.
pub fn read_root(fed: &FederationDir) -> Result<ed25519_dalek::SigningKey, InitError> {
    keys::read_secret(&fed.root_key()).map_err(InitError::Key)
}

/// A certificate for one more server of the federation (a leaf, a cluster node), signed by
/// the CA in `fed` for `hosts` plus loopback: (certificate PEM, key PEM).
pub fn issue_certificate(fed: &FederationDir, hosts: &[String], route: bool) -> Result<(String, String), InitError> {
    let ca_key = rcgen::KeyPair::from_pem(&read_text(&fed.ca_key())?)?;
    let issuer = rcgen::Issuer::new(ca_params(time::OffsetDateTime::now_utc())?, ca_key);
    let mut all: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect();
    all.extend(hosts.iter().filter(|h| !all.contains(h)).cloned().collect::<Vec<_>>());
    server_certificate(&issuer, &all, route)
}

/// Host names the server certificate always covers.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Creates a federation in `options.dir`.
pub fn init(options: &InitOptions) -> Result<Manifest, InitError> {
    let fed = FederationDir::new(&options.dir);
    if fed.exists() && !options.force {
        return Err(InitError::Exists(options.dir.clone()));
    }
    let mut names: Vec<&str> = vec![LEDGER_IDENTITY];
    names.extend(options.admins.iter().map(String::as_str));
    names.extend(options.platforms.iter().map(String::as_str));
    for (i, name) in names.iter().enumerate() {
        check_name(name)?;
        if names[..i].contains(name) {
            return Err(InitError::Duplicate((*name).to_owned()));
        }
    }
    // A replaced federation's layout is the new one's only if `init_topology` writes it again.
    if let Err(e) = fs::remove_file(fed.topology_plan())
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(InitError::Write {
            path: fed.topology_plan(),
            source: e,
        });
    }
    let root = keys::generate().map_err(InitError::Random)?;
    keys::write_secret(&fed.root_key(), &root, true)?;
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect();
    hosts.extend(
        options
            .hosts
            .iter()
            .filter(|h| !hosts.contains(h))
            .cloned()
            .collect::<Vec<_>>(),
    );
    make_certificates(&fed, &hosts)?;
    let mut identities = vec![new_identity(&fed, LEDGER_IDENTITY, Role::Ledger)?];
    for admin in &options.admins {
        identities.push(new_identity(&fed, admin, Role::Admin)?);
        endorse_key_file(&root, admin, &fed.signing_key(admin), Grants::NONE)?;
    }
    for platform in &options.platforms {
        let role = Role::platform(
            !options.executors.contains(platform),
            options.critical.contains(platform),
        );
        identities.push(new_identity(&fed, platform, role)?);
        endorse_key_file(&root, platform, &fed.signing_key(platform), Grants::of(role))?;
    }
    let manifest = Manifest {
        root_public_key: keys::public_key_text(&root.verifying_key()),
        hosts,
        url: options.url.clone(),
        identities,
    };
    write_file(&fed.server_base(), &options.server_base, false)?;
    write_outputs(&fed, &manifest)?;
    Ok(manifest)
}

/// Adds a platform to an existing federation: a new identity, the server config and the
/// hub bundle rewritten; nobody else's keys change. Reload the server afterwards
/// (`nats-server --signal reload`). A federation laid out on several machines needs its
/// servers' configs regenerated too: `identity::topology::add_platform` does both.
pub fn add_platform(dir: &Path, platform: &str, role: Role) -> Result<Manifest, InitError> {
    debug_assert!(role.is_platform(), "add_platform adds platforms");
    let fed = FederationDir::new(dir);
    let mut manifest = fed.load()?;
    check_name(platform)?;
    if manifest.identities.iter().any(|i| i.name == platform) {
        return Err(InitError::Duplicate(platform.to_owned()));
    }
    let root = read_root(&fed)?;
    manifest.identities.push(new_identity(&fed, platform, role)?);
    endorse_key_file(&root, platform, &fed.signing_key(platform), Grants::of(role))?;
    write_outputs(&fed, &manifest)?;
    Ok(manifest)
}

/// Copies `from` into `bundle`, keeping it secret when it is.
fn copy_into(from: &Path, bundle: &Path, secret: bool) -> Result<PathBuf, InitError> {
    let name = from.file_name().map(PathBuf::from).unwrap_or_default();
    let to = bundle.join(name);
    write_file(&to, &read_text(from)?, secret)?;
    Ok(to)
}

/// `bundles/<platform>/nats.toml`: the `[nats]` section of the platform's config.
pub fn write_platform_nats_toml(fed: &FederationDir, platform: &str, url: &str) -> Result<(), InitError> {
    write_file(
        &fed.bundle(platform).join("nats.toml"),
        &format!(
            "# Paste into {platform}'s sagefed config; paths are relative to that file.\n# Under [federation]:\n#   keypair_path = \"{platform}.key\"\n#   root_public_key_path = \"root.pub\"\n[nats]\nurl = {url}\ncreds = \"{platform}.nk\"\nca = \"ca.pem\"\n",
            url = serde_json::Value::String(url.to_owned()),
        ),
        false,
    )
}

/// The manifest, the server config and every bundle, from the manifest.
fn write_outputs(fed: &FederationDir, manifest: &Manifest) -> Result<(), InitError> {
    let manifest_text = serde_json::to_string_pretty(manifest).map_err(|source| InitError::Encode {
        what: "the manifest",
        source,
    })?;
    write_file(&fed.manifest(), &(manifest_text + "\n"), false)?;
    let base = read_text(&fed.server_base())?;
    let absolute = |p: PathBuf| fs::canonicalize(&p).unwrap_or(p);
    let config = server_config::render(
        &base,
        &manifest.identities,
        &absolute(fed.server_cert()),
        &absolute(fed.server_key()),
    );
    write_file(&fed.server_config(), &config, false)?;

    let root_pub = format!("{}\n", manifest.root_public_key);
    let hub = fed.bundle(HUB_BUNDLE);
    copy_into(&fed.ca_cert(), &hub, false)?;
    // On several machines the hub's (or each node's) certificate and config are the
    // topology's, issued once for its host: never replaced by the single server's.
    if !fed.topology_plan().is_file() {
        let cert = copy_into(&fed.server_cert(), &hub, false)?;
        let key = copy_into(&fed.server_key(), &hub, true)?;
        write_file(
            &hub.join("nats-server.conf"),
            &server_config::render(&base, &manifest.identities, &absolute(cert), &absolute(key)),
            false,
        )?;
    }
    write_file(&hub.join(ROOT_PUBLIC_KEY_FILE), &root_pub, false)?;
    for identity in &manifest.identities {
        let bundle = if identity.role.is_platform() {
            fed.bundle(&identity.name)
        } else {
            hub.clone()
        };
        copy_into(&fed.creds(&identity.name), &bundle, true)?;
        if identity.role != Role::Ledger {
            let key = fed.signing_key(&identity.name);
            copy_into(&key, &bundle, true)?;
            copy_into(&keys::public_path(&key), &bundle, false)?;
            copy_into(&keys::records_path(&key), &bundle, false)?;
        }
        if identity.role.is_platform() {
            copy_into(&fed.ca_cert(), &bundle, false)?;
            write_file(&bundle.join(ROOT_PUBLIC_KEY_FILE), &root_pub, false)?;
            write_platform_nats_toml(fed, &identity.name, &manifest.url)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        Grants {
            delegate: true,
            critical: false,
        }
    }

    #[test]
    fn a_key_without_records_is_endorsed_and_a_corrupt_records_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = keys::generate().expect("root key");
        let key_path = dir.path().join("Thor.key");
        let record = endorse_key_file(&root, "Thor", &key_path, grants()).expect("a new key is endorsed");
        assert_eq!(record.platform, "Thor");
        // The same key again: the record on file is kept.
        assert_eq!(
            endorse_key_file(&root, "Thor", &key_path, grants()).expect("kept"),
            record
        );
        let records = keys::records_path(&key_path);
        fs::write(&records, "{ not json").expect("corrupt the records");
        let refused = endorse_key_file(&root, "Thor", &key_path, grants()).expect_err("corrupt file refused");
        assert!(
            refused.to_string().contains(&records.display().to_string()),
            "the error names the file: {refused}"
        );
        assert_eq!(fs::read_to_string(&records).expect("still there"), "{ not json");
    }
}
