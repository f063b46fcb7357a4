//! The Python client's pytest suite (`python/tests`), so that `cargo test` runs the whole test
//! suite: the package is installed from the repository into a fresh venv (as a SAGE user would)
//! and tested against a real `sagefed up` that its `conftest.py` starts with this build's
//! binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

mod common;

/// The system's interpreter, which every user can run: a root worker runs the Python
/// operation as `nobody`, who cannot reach one installed under /root (pyenv).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Creates a venv at `dir` from the system's python3 (or the one on `PATH` when there is none),
/// installing Debian's `python3-venv` first when it lacks the module (see [`common::apt`]).
fn fresh_venv(dir: &Path) {
    let python = if Path::new(SYSTEM_PYTHON).exists() {
        SYSTEM_PYTHON
    } else {
        "python3"
    };
    let create = || Command::new(python).args(["-m", "venv"]).arg(dir).status();
    if create().is_ok_and(|s| s.success()) {
        return;
    }
    if let Err(why) = common::apt::install(&["python3-venv"]) {
        panic!(
            "python3 cannot create a venv and python3-venv could not be installed ({why}): apt-get install -y python3-venv"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        create().expect("run python3 -m venv").success(),
        "python3 -m venv {}",
        dir.display()
    );
}

#[test]
fn the_python_client_passes_its_pytest_suite_against_a_real_federation() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().expect("a scratch directory");
    // The venv's python runs the Python operation, as `nobody` when the worker is root.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the scratch directory");
    let venv = scratch.path().join("venv");
    fresh_venv(&venv);
    let python = venv.join("bin/python");
    let install = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .arg(repo.join("python"))
        .arg("pytest")
        .status()
        .expect("run pip");
    assert!(install.success(), "pip install ./python pytest: {install}");
    // pytest exits 5 when it collects nothing: only 0 passes.
    let pytest = Command::new(&python)
        .args(["-m", "pytest", "-q", "python/tests"])
        .current_dir(repo)
        .env("SAGEFED_BIN", env!("CARGO_BIN_EXE_sagefed"))
        .status()
        .expect("run pytest");
    assert_eq!(pytest.code(), Some(0), "pytest python/tests: {pytest}");
}
