//! A real headless Chromium driven over WebDriver: Debian's `chromium` and `chromedriver`
//! (package `chromium-driver`). Missing, they are installed with apt-get when the test runs
//! as root (as on a fresh CI machine); otherwise the test fails saying how to install them.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};

/// Chromium's flags: headless, and quiet on a machine without internet (no first-run,
/// update, sync or QUIC traffic that would fail against refused connections).
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];
/// The browser window, in CSS pixels: wide enough for the dashboard's two columns.
pub const WINDOW_SIZE: (u32, u32) = (1400, 1100);

/// A chromedriver process and a browser session through it; both end when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            // SAFETY: kill has no memory preconditions; -pid names the driver's group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// Debian's packages for the browser test.
const BROWSER_PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];

/// Installs the browser packages, once per test process.
fn install_browser() -> Result<(), String> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| super::apt::install(&BROWSER_PACKAGES)).clone()
}

fn find(program: &str, package: &str) -> PathBuf {
    if let Some(path) = on_path(program) {
        return path;
    }
    let installed = install_browser();
    on_path(program).unwrap_or_else(|| {
        panic!(
            "the browser test needs `{program}` ({installed:?}): install it with `apt-get update && apt-get install -y {package}`"
        )
    })
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a fresh headless Chromium.
    pub async fn start() -> Self {
        let chromium = find("chromium", "chromium");
        let chromedriver = find("chromedriver", "chromium-driver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Its own process group, so that dropping the browser ends chromedriver and every
        // Chromium process it started (they would outlive the test otherwise).
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push(format!("--window-size={},{}", WINDOW_SIZE.0, WINDOW_SIZE.1));
        let mut capabilities = fantoccini::wd::Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({"binary": chromium, "args": args}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no browser session through chromedriver: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Runs `script` (a function body; `arguments[0]` is `arg`) in the page.
    pub async fn eval(&self, script: &str, arg: serde_json::Value) -> serde_json::Value {
        self.client
            .execute(script, vec![arg])
            .await
            .expect("run a script in the page")
    }

    /// Waits until `script` returns something other than null or false; returns it.
    pub async fn wait_for(&self, what: &str, script: &str, arg: serde_json::Value) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let value = self.eval(script, arg.clone()).await;
            if !value.is_null() && value != serde_json::Value::Bool(false) {
                return value;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
