//! The Jetsons' build: `sagefed` cross-built for aarch64 (`cargo build --release --target
//! aarch64-unknown-linux-gnu`, linked by Debian's gcc-aarch64-linux-gnu as
//! `.cargo/config.toml` says) runs Legion's worker under `qemu-aarch64-static` against a
//! local federation and settles a delegation. Installs what it needs (rustup target, apt
//! packages as root) or fails saying how; prints the stripped binary's size and the idle
//! worker's memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::federation::Processes;
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::ledger::model::LockState;
use sage_federation::state::registry::Registry;
use serde_json::json;

const TARGET: &str = "aarch64-unknown-linux-gnu";
/// Debian packages: the cross linker (and the aarch64 C library), the user-mode emulator.
const PACKAGES: [&str; 3] = ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user-static"];
const QEMU: &str = "qemu-aarch64-static";
/// Where Debian's cross C library lives (qemu's `-L`).
const SYSROOT: &str = "/usr/aarch64-linux-gnu";
const STRIP: &str = "aarch64-linux-gnu-strip";
/// How long the emulated worker may take to register (qemu is slow to start it).
const WORKER_UP_TIMEOUT: Duration = Duration::from_secs(120);

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(name).is_file()))
}

/// Installs the rustup target and the Debian packages when missing.
fn ensure_toolchain() {
    if !(on_path("aarch64-linux-gnu-gcc") && on_path(QEMU) && on_path(STRIP)) {
        common::apt::install(&PACKAGES).unwrap_or_else(|e| {
            panic!(
                "the aarch64 test needs {} ({e}); install them: apt-get install {}",
                PACKAGES.join(", "),
                PACKAGES.join(" ")
            )
        });
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .stdout(Stdio::null())
        .status()
        .expect("run rustup (the aarch64 test needs rustup to add the target)");
    assert!(status.success(), "rustup target add {TARGET} failed");
}

/// Cross-builds the release binary into its own target directory (reused across runs, and
/// apart from the one `cargo test` holds).
fn cross_build() -> PathBuf {
    let target_dir = common::repo_dir().join("target/cross");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "sagefed", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(common::repo_dir())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --release --target {TARGET} failed");
    target_dir.join(TARGET).join("release/sagefed")
}

fn stripped_size(binary: &Path, dir: &Path) -> u64 {
    let stripped = dir.join("sagefed-aarch64-stripped");
    let status = Command::new(STRIP)
        .arg("-o")
        .arg(&stripped)
        .arg(binary)
        .status()
        .expect("run strip");
    assert!(status.success());
    std::fs::metadata(&stripped).expect("stripped binary").len()
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

struct Emulated(Child);

impl Drop for Emulated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aarch64_worker_settles_a_delegation_under_qemu() {
    ensure_toolchain();
    let binary = cross_build();
    let mut p = Processes::start().await;
    let size = stripped_size(&binary, p.nats.path());

    // Legion's worker becomes the aarch64 one.
    p.kill_worker("Legion");
    let log = std::fs::File::create(p.nats.path().join("worker-aarch64.log")).expect("log");
    let worker = Emulated(
        Command::new(QEMU)
            .args(["-L", SYSROOT])
            .arg(&binary)
            .args(["worker", "--config"])
            .arg(&p.configs["Legion"])
            // Debug: the worker names each task it settles.
            .env("SAGE_LOG", "info,sage_federation=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run the aarch64 worker under qemu"),
    );
    // Wait for the emulated worker's own heartbeat (the killed one's record goes stale).
    let registry = Registry::open(&p.nats.js().await, p.nats.key_directory().await)
        .await
        .expect("registry");
    let started = sage_federation::protocol::clock::Timestamp::now();
    let deadline = Instant::now() + WORKER_UP_TIMEOUT;
    loop {
        if let Ok(Some(record)) = registry.get("Legion").await
            && record.heartbeat_at > started
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the aarch64 worker never registered:\n{}",
            std::fs::read_to_string(p.nats.path().join("worker-aarch64.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(worker.0.id());

    let thor = p.client("Thor").await;
    let outcome = thor
        .delegate_task(DelegationRequest {
            to: Some("Legion".into()),
            task_type: "consciousness".into(),
            operation: "perception".into(),
            budget: 2.0,
            timeout_seconds: 60,
            parameters: json!({"length": 4096, "seed": 7}).as_object().cloned().expect("object"),
            task_id: None,
        })
        .await
        .expect("delegation");
    assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");
    assert_eq!((outcome.atp_consumed * 1e6).round() as i64, 40_960, "{outcome:?}");
    let log = std::fs::read_to_string(p.nats.path().join("worker-aarch64.log")).unwrap_or_default();
    assert!(
        log.contains(outcome.task_id.as_str()),
        "the aarch64 worker ran it:\n{log}"
    );
    eprintln!(
        "aarch64 sagefed: {size} bytes stripped ({:.1} MiB); idle worker under qemu: {idle_rss} KiB RSS",
        size as f64 / (1024.0 * 1024.0)
    );
    p.assert_audit_clean();
}
