//! `sagefed keygen`.

use std::path::PathBuf;

use anyhow::Context;

use sage_federation::identity::keys::{self, key_id, public_key_text};
use sage_federation::protocol::lct::check_platform;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Platform the key belongs to (Legion, Thor, Sprout, ...)
    #[arg(long)]
    platform: String,
    /// Where to write the secret key [default: keys/<platform>.key]; the public key goes to
    /// <out>.pub
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite an existing key file
    #[arg(long)]
    force: bool,
}

pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    check_platform(&args.platform)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("keys/{}.key", args.platform.to_lowercase())));
    let key = keys::generate().context("reading the operating system's random source")?;
    keys::write_secret(&out, &key, args.force)?;
    let public = key.verifying_key();
    eprintln!(
        "wrote {} (secret, mode 0600) and {} for platform {}, key id {}",
        out.display(),
        keys::public_path(&out).display(),
        args.platform,
        key_id(&public)
    );
    println!("{}", public_key_text(&public));
    Ok(())
}
