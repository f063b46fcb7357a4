//! Debian packages a test needs, installed with apt-get when the test runs as root (a fresh
//! machine, CI), so that `cargo test` sets up what it needs; otherwise the caller fails
//! saying what to install.

use std::process::{Command, Stdio};

/// Installs `packages` with `apt-get update` then `apt-get install -y`. Refuses (without
/// trying) when not root.
pub fn install(packages: &[&str]) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!("not root, so not installing {}", packages.join(" ")));
    }
    eprintln!("installing {} with apt-get for the tests", packages.join(" "));
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    Err(format!("apt-get {} exited with {s}", args[0]))
                }
            })
    };
    run(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q"];
    install.extend_from_slice(packages);
    run(&install)
}
