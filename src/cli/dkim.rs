//! `kci dkim generate | dns`: a DKIM key for a selector, and the DNS
//! records to publish for the configured ones.

use super::ConfigArg;
use crate::channels::email::dkim;
use std::path::PathBuf;
use std::process::ExitCode;

/// Writes a new key (0600, never overwritten) and prints its record and
/// the config lines.
pub fn generate(
    arg: ConfigArg,
    selector: String,
    out: PathBuf,
    rsa: Option<u32>,
) -> anyhow::Result<ExitCode> {
    check_selector(&selector)?;
    let config = super::load_config(&arg)?;
    let pem = dkim::generate(rsa).map_err(|e| anyhow::anyhow!("--rsa: {e}"))?;
    super::keys::write_secret(&out, &String::from_utf8_lossy(&pem))?;
    let key = dkim::read_key(&out).map_err(anyhow::Error::msg)?;
    let record = dkim::public_record(&key).map_err(anyhow::Error::msg)?;
    let domain = signing_domain(&config)?;
    println!("Secret key written to {} (mode 0600).", out.display());
    println!();
    println!("Publish in DNS:");
    println!();
    print_record(&selector, &domain, &record);
    println!();
    println!("Then sign with it (a selector per key; Ed25519 and RSA side by side):");
    println!();
    println!("  [email.dkim]");
    println!(
        "  selectors = [{{ name = \"{selector}\", key = \"{}\" }}]",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints the record of every configured selector.
pub fn dns(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let Some(cfg) = &config.email.dkim else {
        anyhow::bail!("email.dkim: not configured (kci dkim generate makes a key)");
    };
    let domain = signing_domain(&config)?;
    for s in &cfg.selectors {
        let key = dkim::read_key(&s.key)
            .map_err(|e| anyhow::anyhow!("email.dkim selector {}: {e}", s.name))?;
        let record = dkim::public_record(&key).map_err(anyhow::Error::msg)?;
        print_record(&s.name, &domain, &record);
    }
    Ok(ExitCode::SUCCESS)
}

/// `name._domainkey.domain. IN TXT "…"`, the text split in strings of at
/// most 255 characters as DNS requires (an RSA record is longer).
fn print_record(selector: &str, domain: &str, record: &dkim::PublicRecord) {
    let txt = record.txt();
    let strings: Vec<String> = txt
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    println!(
        "{selector}._domainkey.{domain}. IN TXT {}",
        strings.join(" ")
    );
}

fn signing_domain(config: &crate::config::Config) -> anyhow::Result<String> {
    if let Some(d) = config.email.dkim.as_ref().and_then(|d| d.domain.clone()) {
        return Ok(d);
    }
    let from: lettre::message::Mailbox = config
        .email
        .from
        .parse()
        .map_err(|e| anyhow::anyhow!("email.from: {e}"))?;
    Ok(from.email.domain().to_string())
}

/// A selector is a DNS label (RFC 6376 §3.1): letters, digits, hyphens.
fn check_selector(s: &str) -> anyhow::Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    anyhow::ensure!(
        ok,
        "--selector: `{s}` is not a DNS label (letters, digits, hyphens)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_dns_labels() {
        for good in ["kci", "ed2026", "kci-rsa", "a.b"] {
            assert!(check_selector(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "x;y", "a..b", "é"] {
            assert!(check_selector(bad).is_err(), "{bad}");
        }
    }
}
