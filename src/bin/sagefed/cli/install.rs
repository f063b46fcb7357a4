//! `sagefed install <bundle>`: puts one machine's bundle (from `sagefed init`) where the
//! systemd units in `deploy/systemd/` expect it: `<prefix>/etc/sagefed` (secrets 0600, the
//! rest 0644, the directory 0750) and the state directory `<prefix>/var/lib/sagefed`; owned by
//! the units' user when run as root. Prints the commands that come next.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sage_federation::identity::federation::LEDGER_IDENTITY;
use sage_federation::identity::topology::{LEAF_LINK_FILE, SERVER_CONFIG_FILE};

/// The user the systemd units run as.
pub const SERVICE_USER_DEFAULT: &str = "sagefed";
/// Where a bundle's files go, under the prefix (the units name these paths).
pub const CONFIG_DIR: &str = "etc/sagefed";
/// The services' writable state (JetStream's store), under the prefix.
pub const STATE_DIR: &str = "var/lib/sagefed";
/// Mode of a file holding a secret, and of everything else.
const SECRET_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
/// Mode of the two directories: the services' user and group only.
const DIR_MODE: u32 = 0o750;
/// The system's user database, read to find the service user's ids.
const PASSWD_FILE: &str = "/etc/passwd";

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The machine's bundle directory (`<federation>/bundles/<machine>`, copied here)
    bundle: PathBuf,
    /// Install under this directory instead of / (files go to PREFIX/etc/sagefed)
    #[arg(long, default_value = "/")]
    prefix: PathBuf,
    /// The user the services run as; owns the files when run as root
    #[arg(long, default_value = SERVICE_USER_DEFAULT)]
    user: String,
}

/// Whether a bundle file holds a secret: an nkey seed, a signing or TLS key, the leaf link's
/// seed.
fn is_secret(name: &str) -> bool {
    name.ends_with(".nk") || name.ends_with(".key") || name == LEAF_LINK_FILE
}

/// The uid and gid of `user`, from the system's user database.
fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string(PASSWD_FILE).with_context(|| format!("read {PASSWD_FILE}"))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == user {
            let id = |text: &str| {
                text.parse::<u32>()
                    .with_context(|| format!("{PASSWD_FILE}: {user}'s ids"))
            };
            return Ok((id(fields[2])?, id(fields[3])?));
        }
    }
    bail!(
        "no user {user:?}: create it with `useradd --system --home /var/lib/sagefed --shell /usr/sbin/nologin {user}`, or name another with --user"
    )
}

pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    let bundle = &args.bundle;
    anyhow::ensure!(
        bundle.is_dir(),
        "{} is not a bundle directory (`sagefed init` writes them to <federation>/bundles/<machine>)",
        bundle.display()
    );
    // SAFETY: geteuid has no preconditions and cannot fail.
    let owner = if unsafe { libc::geteuid() } == 0 {
        Some(user_ids(&args.user)?)
    } else {
        None
    };
    let config_dir = args.prefix.join(CONFIG_DIR);
    let state_dir = args.prefix.join(STATE_DIR);
    let mut installed = Vec::new();
    for dir in [&config_dir, &state_dir] {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        set_mode_and_owner(dir, DIR_MODE, owner)?;
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(bundle)
        .with_context(|| format!("read {}", bundle.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("read {}", bundle.display()))?;
    entries.sort();
    for source in entries.iter().filter(|p| p.is_file()) {
        let Some(name) = source.file_name().and_then(|n| n.to_str()) else {
            bail!("{}: a file name that is not UTF-8", source.display());
        };
        let target = config_dir.join(name);
        // Written to a fresh file, then moved: a secret is never readable by others, not
        // even for a moment, and a reinstall replaces the old file at once.
        let staged = config_dir.join(format!(".{name}.installing"));
        let _ = fs::remove_file(&staged);
        let mode = if is_secret(name) { SECRET_MODE } else { PUBLIC_MODE };
        write_new(
            &staged,
            &fs::read(source).with_context(|| format!("read {}", source.display()))?,
            mode,
        )?;
        set_mode_and_owner(&staged, mode, owner)?;
        fs::rename(&staged, &target).with_context(|| format!("install {}", target.display()))?;
        installed.push(name.to_owned());
    }
    println!("installed {} files into {}", installed.len(), config_dir.display());
    print_next_steps(&installed, &config_dir);
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))
}

fn set_mode_and_owner(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("set the mode of {}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// What to run after installing: the units this machine's bundle serves.
fn print_next_steps(installed: &[String], config_dir: &Path) {
    let has = |name: &str| installed.iter().any(|n| n == name);
    let platforms: Vec<&str> = installed
        .iter()
        .filter_map(|n| n.strip_suffix(".records.json"))
        .filter_map(|n| n.strip_suffix(".key"))
        .filter(|p| has(&format!("{p}.nk")) && has("nats.toml"))
        .collect();
    println!("next:");
    println!("  install -m 0644 deploy/systemd/*.service /etc/systemd/system/ && systemctl daemon-reload");
    if has(SERVER_CONFIG_FILE) {
        println!("  systemctl enable --now sagefed-nats");
    }
    if has(&format!("{LEDGER_IDENTITY}.nk")) {
        println!("  systemctl enable --now sagefed-ledger");
    }
    for platform in platforms {
        println!(
            "  # {}/{platform}.toml: configs/{}.toml with this bundle's keys and nats.toml (docs/deployment.md, step 2)",
            config_dir.display(),
            platform.to_lowercase()
        );
        println!("  systemctl enable --now sagefed-worker@{platform}");
    }
}
