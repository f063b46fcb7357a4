//! The one place a connection to NATS is set up: URL, credentials (an nkey seed), the CA that
//! signed the server's certificate, and the inbox prefix the server lets this identity read.
//!
//! Every command, the workers, the ledger, `sagefed up` and anything built on the library
//! (gateway, dashboard) connect through [`connect`] with a [`NatsAccess`], so credentials and
//! TLS cannot be forgotten in one of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::nats::subjects;

/// How long a process waits to connect to NATS before it says so.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a NATS server is and how to prove who we are to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsAccess {
    pub url: String,
    /// An nkey seed file (`S...`, written 0600 by `sagefed init`); `None` connects without
    /// credentials, which a federation made by `sagefed init` refuses.
    pub creds: Option<PathBuf>,
    /// The federation's CA certificate (PEM); when set, TLS is required.
    pub ca: Option<PathBuf>,
}

impl NatsAccess {
    /// No credentials and no TLS: for a throwaway server (benchmarks, library tests).
    pub fn open(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            creds: None,
            ca: None,
        }
    }

    /// Credentials and TLS from `sagefed init`'s files.
    pub fn secure(url: &str, creds: &Path, ca: &Path) -> Self {
        Self {
            url: url.to_owned(),
            creds: Some(creds.to_owned()),
            ca: Some(ca.to_owned()),
        }
    }
}

/// Why a connection could not be made, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read NATS credentials {path}: {source}; run `sagefed init` or pass --creds")]
    ReadCreds { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an nkey seed ({why}); pass the `.nk` file `sagefed init` wrote")]
    BadCreds { path: PathBuf, why: String },
    #[error("the CA certificate {0} does not exist; run `sagefed init` or pass --ca")]
    MissingCa(PathBuf),
    #[error(
        "cannot connect to NATS at {url} ({why}); is `sagefed up` (or nats-server) running? \
         Use --nats to point elsewhere, --creds and --ca for a federation made by `sagefed init`"
    )]
    Unreachable { url: String, why: String },
}

/// The seed and NATS public key (`U...`) of the nkey seed file at `path`.
pub fn read_nkey(path: &Path) -> Result<(String, String), ConnectError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConnectError::ReadCreds {
        path: path.to_owned(),
        source,
    })?;
    let seed = text.trim().to_owned();
    let pair = nkeys::KeyPair::from_seed(&seed).map_err(|e| ConnectError::BadCreds {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    Ok((seed, pair.public_key()))
}

/// The options for `access`, named `name` (shown by `nats server report connections`).
pub fn connect_options(access: &NatsAccess, name: &str) -> Result<async_nats::ConnectOptions, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT);
    if let Some(creds) = &access.creds {
        let (seed, public) = read_nkey(creds)?;
        // The server lets this identity subscribe only under its own prefix.
        options = options.nkey(seed).custom_inbox_prefix(subjects::inbox_prefix(&public));
    }
    if let Some(ca) = &access.ca {
        if !ca.is_file() {
            return Err(ConnectError::MissingCa(ca.clone()));
        }
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(options)
}

/// Connects as `access` says, failing within [`CONNECT_TIMEOUT`] with a message that says
/// what to do.
pub async fn connect(access: &NatsAccess, name: &str) -> Result<async_nats::Client, ConnectError> {
    connect_options(access, name)?
        .connect(access.url.as_str())
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: access.url.clone(),
            why: e.to_string(),
        })
}
