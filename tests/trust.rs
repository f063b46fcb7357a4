//! `sagefed init` as a user runs it: from a clean directory it makes bundles that the real
//! `nats-server -t` accepts, secrets are 0600, an existing federation is never overwritten
//! without `--force`, and a platform added later leaves everyone else's keys alone.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use sage_federation::identity::federation::{FederationDir, Manifest};

fn sagefed(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run sagefed")
}

fn server_accepts(config: &Path) {
    let output = Command::new(common::server_binary())
        .arg("-t")
        .arg("-c")
        .arg(config)
        .output()
        .expect("run nats-server -t");
    assert!(
        output.status.success(),
        "nats-server -t refused {}:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(all_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn init_makes_bundles_nats_server_accepts_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sagefed(&["init", "--out", "fed", "--host", "hub.lab"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fed = FederationDir::new(&dir.path().join("fed"));
    server_accepts(&fed.server_config());
    server_accepts(&fed.bundle("hub").join("nats-server.conf"));
    let manifest: Manifest = fed.load().expect("manifest");
    let names: Vec<&str> = manifest.identities.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["ledger", "Treasury", "Legion", "Thor", "Sprout"]);
    assert!(manifest.hosts.contains(&"hub.lab".to_owned()));
    for platform in ["Legion", "Thor", "Sprout"] {
        let bundle = fed.bundle(platform);
        for file in [
            format!("{platform}.nk"),
            "ca.pem".into(),
            "nats.toml".into(),
            "root.pub".into(),
            format!("{platform}.key"),
            format!("{platform}.key.records.json"),
        ] {
            assert!(bundle.join(&file).is_file(), "{platform}'s bundle lacks {file}");
        }
    }

    // Every secret is 0600 and no password is in any file.
    #[cfg(unix)]
    for file in all_files(&fed.dir) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let secret = text.contains("PRIVATE KEY") || text.starts_with("SU") || text.contains("sagefed-ed25519-secret");
        if secret {
            assert_eq!(mode(&file), 0o600, "{} is a secret but not 0600", file.display());
        }
        assert!(!text.contains("password"), "{} holds a password", file.display());
    }

    // A second init refuses, and changes nothing.
    let before = std::fs::read(fed.creds("Thor")).expect("creds");
    let again = sagefed(&["init", "--out", "fed"], dir.path());
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read(fed.creds("Thor")).expect("creds"), before);

    // A platform added later: nobody else is re-keyed; the server still accepts the config.
    let added = sagefed(&["init", "--out", "fed", "--add-platform", "Nano"], dir.path());
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let grown = fed.load().expect("manifest");
    assert_eq!(grown.identities[..manifest.identities.len()], manifest.identities[..]);
    assert_eq!(grown.identities.last().map(|i| i.name.as_str()), Some("Nano"));
    assert_eq!(std::fs::read(fed.creds("Thor")).expect("creds"), before);
    assert!(fed.bundle("Nano").join("Nano.nk").is_file());
    server_accepts(&fed.server_config());
    let duplicate = sagefed(&["init", "--out", "fed", "--add-platform", "Thor"], dir.path());
    assert_eq!(duplicate.status.code(), Some(1));

    // A bad name is refused before anything is written.
    let bad = sagefed(&["init", "--out", "bad", "--platform", "a.b"], dir.path());
    assert_eq!(bad.status.code(), Some(1));
    assert!(!dir.path().join("bad").exists());

    // --force replaces every key.
    let forced = sagefed(&["init", "--out", "fed", "--force"], dir.path());
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_ne!(std::fs::read(fed.creds("Thor")).expect("creds"), before);
    server_accepts(&fed.server_config());
}
