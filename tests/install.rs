//! `sagefed install <bundle> --prefix DIR`: a machine's bundle from `sagefed init --topology
//! hub-leaf` lands where the systemd units in `deploy/systemd/` and the bundle's own server
//! config expect it, secrets 0600 and owned by the service user (when run as root), and the
//! installed server config passes `nats-server -t`.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{repo_dir, server_binary};

/// The unit files' own spelling of the installed directory.
const UNIT_CONFIG_DIR: &str = "/etc/sagefed/";
/// The service user of the test when it runs as root: one every Debian system has.
const TEST_USER: &str = "nobody";

fn sagefed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .args(args)
        .output()
        .expect("run sagefed")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn install(bundle: &Path, prefix: &Path) -> Output {
    let output = sagefed(&["install", s(bundle), "--prefix", s(prefix), "--user", TEST_USER]);
    assert!(output.status.success(), "{}", text(&output));
    output
}

/// The uid of `user` in /etc/passwd.
fn uid_of(user: &str) -> u32 {
    std::fs::read_to_string("/etc/passwd")
        .expect("/etc/passwd")
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == user).then(|| f[2].parse().expect("uid"))
        })
        .expect("the test user exists")
}

/// Every `/etc/sagefed/...` path a unit names, `%i` as `platform`; an optional
/// `EnvironmentFile=-` and the platform's own config (installed by hand, as `install` says)
/// left out.
fn unit_paths(unit: &str, platform: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_dir().join("deploy/systemd").join(unit)).expect("unit");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("EnvironmentFile=-"))
        .flat_map(|l| l.split([' ', '=']))
        .filter(|w| w.starts_with(UNIT_CONFIG_DIR))
        .map(|w| w.replace("%i", platform))
        .filter(|p| !p.ends_with(&format!("{platform}.toml")))
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("installed").permissions().mode() & 0o777
}

#[test]
fn a_bundle_installs_where_the_units_and_its_server_config_expect_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fed = dir.path().join("fed");
    let init = sagefed(&[
        "init",
        "--out",
        s(&fed),
        "--topology",
        "hub-leaf",
        "--node",
        "Legion=legion.local",
        "--node",
        "Thor=thor.local",
        "--node",
        "Sprout=sprout.local",
    ]);
    assert!(init.status.success(), "{}", text(&init));
    let bundles = fed.join("bundles");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;

    // Refused, and nothing written: a bundle that is not there; as root, a user that is not.
    let legion = dir.path().join("legion");
    let missing = sagefed(&["install", s(&bundles.join("Nobody")), "--prefix", s(&legion)]);
    assert!(
        !missing.status.success() && text(&missing).contains("not a bundle"),
        "{}",
        text(&missing)
    );
    if root {
        let no_user = sagefed(&[
            "install",
            s(&bundles.join("hub")),
            "--prefix",
            s(&legion),
            "--user",
            "no-such-user-x",
        ]);
        assert!(
            !no_user.status.success() && text(&no_user).contains("useradd"),
            "{}",
            text(&no_user)
        );
    }
    assert!(!legion.exists(), "a refused install wrote {}", legion.display());

    // Legion: the hub's bundle and its platform's; a Jetson: its own.
    let hub_out = install(&bundles.join("hub"), &legion);
    install(&bundles.join("Legion"), &legion);
    let thor = dir.path().join("thor");
    let thor_out = install(&bundles.join("Thor"), &thor);
    assert!(
        text(&hub_out).contains("systemctl enable --now sagefed-nats"),
        "{}",
        text(&hub_out)
    );
    assert!(
        text(&hub_out).contains("systemctl enable --now sagefed-ledger"),
        "{}",
        text(&hub_out)
    );
    assert!(
        text(&thor_out).contains("systemctl enable --now sagefed-worker@Thor"),
        "{}",
        text(&thor_out)
    );
    assert!(!text(&thor_out).contains("sagefed-ledger"), "{}", text(&thor_out));

    let owner = if root {
        uid_of(TEST_USER)
    } else {
        std::fs::metadata(dir.path()).expect("dir").uid()
    };
    for (machine, prefix, sources) in [
        ("Legion", &legion, vec!["hub", "Legion"]),
        ("Thor", &thor, vec!["Thor"]),
    ] {
        let etc = prefix.join("etc/sagefed");
        assert_eq!(mode(&etc), 0o750);
        assert_eq!(mode(&prefix.join("var/lib/sagefed")), 0o750);
        for source in sources {
            for entry in std::fs::read_dir(bundles.join(source)).expect("bundle") {
                let source = entry.expect("entry").path();
                let name = source.file_name().and_then(|n| n.to_str()).expect("name").to_owned();
                let installed = etc.join(&name);
                assert_eq!(
                    std::fs::read(&installed).ok(),
                    std::fs::read(&source).ok(),
                    "{machine}: {name}"
                );
                let secret = name.ends_with(".nk") || name.ends_with(".key") || name == "leaf-link.conf";
                assert_eq!(
                    mode(&installed),
                    if secret { 0o600 } else { 0o644 },
                    "{machine}: {name}"
                );
                assert_eq!(
                    std::fs::metadata(&installed).expect("meta").uid(),
                    owner,
                    "{machine}: {name}"
                );
            }
        }
        // Every file the units name is there.
        let mut units = vec![("sagefed-nats.service", machine), ("sagefed-worker@.service", machine)];
        if machine == "Legion" {
            units.push(("sagefed-ledger.service", machine));
        }
        for (unit, platform) in units {
            let paths = unit_paths(unit, platform);
            assert!(!paths.is_empty(), "{unit} names no file");
            for path in paths {
                let installed = prefix.join(path.trim_start_matches('/'));
                assert!(
                    installed.is_file(),
                    "{machine}: {unit} needs {path}, which install did not write"
                );
            }
        }
        // The server config names its files under /etc/sagefed: with that read as the
        // prefix's, nats-server accepts it (the copy beside it: includes are relative).
        let config = std::fs::read_to_string(etc.join("nats-server.conf")).expect("server config");
        let local: PathBuf = etc.join("checked-nats-server.conf");
        std::fs::write(&local, config.replace(UNIT_CONFIG_DIR, &format!("{}/", etc.display()))).expect("write");
        let checked = Command::new(server_binary())
            .args(["-t", "-c", s(&local)])
            .output()
            .expect("nats-server -t");
        assert!(checked.status.success(), "{machine}: {}", text(&checked));
    }
}
