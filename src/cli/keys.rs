//! `kci keys generate`: make the operator's OpenPGP key (Ed25519 signing,
//! Cv25519 encryption, SEIPDv1 only), write its secret form to a new file
//! only the owner can read, and print what to publish and configure.

use super::ConfigArg;
use crate::pgp::OperatorKey;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the secret key goes without `--out`.
pub const DEFAULT_OUT: &str = "kci-data/operator-secret.asc";

pub fn generate(
    arg: ConfigArg,
    out: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let user_id = config.email.from.trim().to_string();
    let out = out.unwrap_or_else(|| PathBuf::from(DEFAULT_OUT));
    let passphrase = passphrase_file
        .as_deref()
        .map(read_passphrase)
        .transpose()?;
    let (key, secret, revocation) =
        OperatorKey::generate_with_revocation(&user_id, None, passphrase.as_deref())?;
    write_secret(&out, &secret)?;
    let revocation_file = out.with_extension("revocation.asc");
    write_secret(&revocation_file, &revocation)?;
    let from: lettre::message::Mailbox = user_id
        .parse()
        .map_err(|e| anyhow::anyhow!("email.from: {e}"))?;
    let address = from.email.to_string();
    println!("Generated the operator key for {user_id}");
    println!("Fingerprint: {}", key.fingerprint());
    println!("Secret key written to {} (mode 0600).", out.display());
    println!(
        "Its revocation certificate: {} (0600). Keep it offline, away from the key: \
         publishing it (gpg --import, or in the Web Key Directory) revokes the key, \
         for when it is lost or leaked.",
        revocation_file.display()
    );
    println!();
    println!("To sign every mail, set in the config:");
    println!();
    println!("  [email]");
    println!("  signing_key = \"{}\"", out.display());
    if let Some(file) = &passphrase_file {
        println!("  signing_key_passphrase_file = \"{}\"", file.display());
    }
    println!();
    if let Some([advanced, direct]) = crate::pgp::wkd::urls(&address) {
        println!("kci serves it as a Web Key Directory; route these to kci over HTTPS:");
        println!("  {direct}");
        println!("  {advanced}");
        println!();
    }
    println!("The public key:");
    println!();
    print!("{}", key.public_armored());
    Ok(ExitCode::SUCCESS)
}

/// The first line of `path`: a passphrase of at least 12 characters.
fn read_passphrase(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--passphrase-file: cannot read {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    anyhow::ensure!(
        line.chars().count() >= 12,
        "--passphrase-file: {}: the passphrase is shorter than 12 characters",
        path.display()
    );
    Ok(line)
}

/// Creates `path` with mode 0600; never overwrites.
pub(super) fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("--out: cannot create {}: {e}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "--out: {} exists; kci does not overwrite a key (move it away first)",
                path.display()
            )
        } else {
            anyhow::anyhow!("--out: cannot create {}: {e}", path.display())
        }
    })?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_private_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/op.asc");
        write_secret(&path, "secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = write_secret(&path, "other").unwrap_err().to_string();
        assert!(e.contains("does not overwrite"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
    }
}
