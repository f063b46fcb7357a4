//! The gateway's local token: a secret in a 0600 file next to the platform's config, which
//! every HTTP call must present (`Authorization: Bearer <token>`). The gateway spends the
//! platform's ATP and signs as it, so only a caller that can read that file (the platform's
//! own user) may use it; any other local user can reach the port but not the API.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Random bytes in a token (printed as hex, so the file holds twice as many characters).
pub const TOKEN_BYTES: usize = 32;

/// File name suffix of the token next to a config: `configs/thor.toml` ->
/// `configs/thor.gateway-token`.
pub const TOKEN_FILE_SUFFIX: &str = "gateway-token";

/// Why the token could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the gateway token {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create the gateway token {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "the gateway token {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` or delete it to get a new one"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the gateway token {path} is not {TOKEN_BYTES} bytes of hex; delete it to get a new one")]
    Malformed { path: PathBuf },
}

/// The secret callers present.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Compares in time independent of where the first difference is, so that a caller
    /// cannot find the token byte by byte from response times.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the token of the platform configured in `config_path` lives.
pub fn token_path(config_path: &Path) -> PathBuf {
    config_path.with_extension(TOKEN_FILE_SUFFIX)
}

/// Reads the token at `path`, creating it (mode 0600 from the start) when it is absent.
/// Refuses a token file other users can read: anyone holding it can spend the ATP.
pub fn read_or_create(path: &Path) -> Result<Token, TokenError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            check_private(path)?;
            let token = text.trim();
            if token.len() != TOKEN_BYTES * 2 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(TokenError::Malformed { path: path.to_owned() });
            }
            Ok(Token(token.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(source) => Err(TokenError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn create(path: &Path) -> Result<Token, TokenError> {
    let write_err = |source| TokenError::Write {
        path: path.to_owned(),
        source,
    };
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
    let token = hex::encode(bytes);
    let mut options = fs::OpenOptions::new();
    // create_new: two gateways starting at once do not overwrite each other's token.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes()).map_err(write_err)?;
            file.sync_all().map_err(write_err)?;
            Ok(Token(token))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_or_create(path),
        Err(e) => Err(write_err(e)),
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), TokenError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_then_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = token_path(&dir.path().join("thor.toml"));
        assert_eq!(path, dir.path().join("thor.gateway-token"));
        let first = read_or_create(&path).expect("created");
        let again = read_or_create(&path).expect("read");
        assert!(again.matches(first.as_str()));
        assert!(!again.matches(&first.as_str()[1..]));
        assert!(!again.matches(""));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(read_or_create(&path), Err(TokenError::Exposed { .. })));
        }
    }

    #[test]
    fn malformed_token_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.gateway-token");
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(&path).expect("open").write_all(b"short\n").expect("write");
        assert!(matches!(read_or_create(&path), Err(TokenError::Malformed { .. })));
    }
}
