//! `kci doctor`: checks an installation and says what to fix — secret
//! files others can read, certificates expired or about to, keys kci
//! cannot use, DNS records for DKIM and the Web Key Directory, providers
//! out of reach, the database's schema and clock. Changes nothing that
//! `kci serve` would not make too (the Maildir outbox, the empty
//! schema-version table of a database without one).
//!
//! The rules (a file mode, a certificate's dates, a clock's skew, a
//! schema version → a finding) are pure functions with table tests; the
//! rest gathers what they judge.

use super::ConfigArg;
use crate::channels::email::dkim;
use crate::config::Config;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's verdict: what was checked, and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub detail: String,
}

fn finding(level: Level, what: &str, detail: impl Into<String>) -> Finding {
    Finding {
        level,
        what: what.to_string(),
        detail: detail.into(),
    }
}

/// A secret file (`mode`, Unix permission bits): only its owner may read
/// it.
pub fn secret_file_mode(what: &str, path: &Path, mode: u32) -> Finding {
    let shown = format!("{} (mode {:04o})", path.display(), mode & 0o7777);
    if mode & 0o077 == 0 {
        finding(Level::Ok, what, shown)
    } else {
        finding(
            Level::Fail,
            what,
            format!(
                "{shown} is open to {}: chmod 600 {}",
                if mode & 0o007 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                path.display()
            ),
        )
    }
}

/// The database file: customers' addresses and the audit log. Never
/// world-readable; group-readable is a choice worth a warning.
pub fn database_file_mode(path: &Path, mode: u32) -> Finding {
    let what = "store.file";
    let shown = format!("{} (mode {:04o})", path.display(), mode & 0o7777);
    match mode {
        m if m & 0o007 != 0 => finding(
            Level::Fail,
            what,
            format!(
                "{shown} is readable by everyone: chmod 600 {}",
                path.display()
            ),
        ),
        m if m & 0o070 != 0 => finding(
            Level::Warn,
            what,
            format!("{shown} is open to its group: chmod 600 unless that is meant"),
        ),
        _ => finding(Level::Ok, what, shown),
    }
}

/// The letters' spool directory (`[channels.letter] spool`): customers'
/// names and addresses. Never open to everyone; the print room's group is
/// a choice worth a warning.
pub fn spool_directory_mode(path: &Path, mode: u32) -> Finding {
    let what = "channels.letter.spool";
    let shown = format!("{} (mode {:04o})", path.display(), mode & 0o7777);
    match mode {
        m if m & 0o007 != 0 => finding(
            Level::Fail,
            what,
            format!(
                "{shown} is open to everyone, and letters carry customers' addresses: chmod 700 {} (or 770 for a print room's group)",
                path.display()
            ),
        ),
        m if m & 0o070 != 0 => finding(
            Level::Warn,
            what,
            format!("{shown} is open to its group: right for a print room's group, else chmod 700"),
        ),
        _ => finding(Level::Ok, what, shown),
    }
}

/// How long before a certificate's end it is worth a warning.
const RENEW_WITHIN: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// A certificate's validity at `now`.
pub fn certificate_dates(
    what: &str,
    subject: &str,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Finding {
    let until = not_after.format("%Y-%m-%d %H:%M UTC");
    if now > not_after {
        finding(
            Level::Fail,
            what,
            format!("{subject}: expired {until}: renew it"),
        )
    } else if now < not_before {
        finding(
            Level::Fail,
            what,
            format!(
                "{subject}: not valid before {} (is the clock right?)",
                not_before.format("%Y-%m-%d %H:%M UTC")
            ),
        )
    } else if not_after - now < RENEW_WITHIN {
        let days = (not_after - now).num_days();
        finding(
            Level::Warn,
            what,
            format!("{subject}: expires {until}, in {days} days: renew it"),
        )
    } else {
        finding(Level::Ok, what, format!("{subject}: valid until {until}"))
    }
}

/// The store's clock against ours: leases, holds and expiry rest on it.
pub fn clock_skew(skew: chrono::TimeDelta) -> Finding {
    let ms = skew.num_milliseconds().abs();
    let detail = format!("the database's clock is {ms} ms from this machine's");
    match ms {
        0..=1_999 => finding(Level::Ok, "clock", detail),
        2_000..=29_999 => finding(Level::Warn, "clock", format!("{detail}: run NTP on both")),
        _ => finding(
            Level::Fail,
            "clock",
            format!("{detail}: leases and deadlines go wrong; run NTP on both"),
        ),
    }
}

/// The schema the database has against the one this build knows.
pub fn schema(have: i64, latest: i64) -> Finding {
    match have.cmp(&latest) {
        std::cmp::Ordering::Equal => finding(Level::Ok, "store.schema", format!("version {have}")),
        std::cmp::Ordering::Less if have == 0 => finding(
            Level::Warn,
            "store.schema",
            format!("no schema yet: kci migrate (or kci serve) creates version {latest}"),
        ),
        std::cmp::Ordering::Less => finding(
            Level::Warn,
            "store.schema",
            format!("version {have}, this kci knows {latest}: kci migrate"),
        ),
        std::cmp::Ordering::Greater => finding(
            Level::Fail,
            "store.schema",
            format!(
                "version {have} is newer than this kci knows ({latest}): a newer kci wrote it; upgrade this one"
            ),
        ),
    }
}

/// A published DKIM record against the key kci signs with.
pub fn dkim_record(name: &str, published: Option<&str>, ours: &dkim::PublicRecord) -> Finding {
    let what = "dns.dkim";
    let want = ours.txt();
    let Some(txt) = published else {
        return finding(
            Level::Fail,
            what,
            format!("{name}: no record; publish: {name}. IN TXT \"{want}\""),
        );
    };
    let p = txt
        .split(';')
        .filter_map(|tag| tag.trim().split_once('='))
        .find(|(k, _)| k.trim() == "p")
        .map(|(_, v)| v.split_whitespace().collect::<String>());
    if p.as_deref() == Some(ours.p.as_str()) {
        finding(Level::Ok, what, format!("{name}: publishes kci's key"))
    } else {
        finding(
            Level::Fail,
            what,
            format!("{name}: publishes another key; publish: {name}. IN TXT \"{want}\""),
        )
    }
}

/// Runs every check and prints them; exit 1 when any failed.
pub async fn run(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = match super::load_config(&arg) {
        Ok(c) => c,
        Err(e) => {
            println!("[FAIL] config: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut findings = vec![finding(
        Level::Ok,
        "config",
        arg.config
            .as_ref()
            .map_or("embedded defaults".to_string(), |p| p.display().to_string()),
    )];
    findings.extend(files(&config));
    findings.extend(certificates(&config, Utc::now()));
    findings.extend(keys(&config));
    findings.extend(dns(&config).await);
    findings.extend(store(&config).await);
    findings.extend(providers(&config).await);
    for f in &findings {
        let tag = match f.level {
            Level::Ok => "[ok]  ",
            Level::Warn => "[warn]",
            Level::Fail => "[FAIL]",
        };
        println!("{tag} {}: {}", f.what, f.detail);
    }
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    println!(
        "{} checks: {} ok, {} warnings, {} failures",
        findings.len(),
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    );
    Ok(if count(Level::Fail) > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every file of the config that holds a secret, by its setting.
fn secret_files(config: &Config) -> Vec<(String, PathBuf)> {
    let e = &config.email;
    let mut out: Vec<(String, PathBuf)> = [
        ("email.signing_key", &e.signing_key),
        ("email.smime_key", &e.smime_key),
        ("email.client_key", &e.client_key),
        ("server.tls_key", &config.server.tls_key),
    ]
    .into_iter()
    .filter_map(|(what, p)| p.clone().map(|p| (what.to_string(), p)))
    .collect();
    for (domain, policy) in &e.domains {
        if let Some(p) = &policy.client_key {
            out.push((format!("email.domains.{domain}.client_key"), p.clone()));
        }
    }
    for s in e.dkim.iter().flat_map(|d| &d.selectors) {
        out.push((format!("email.dkim.{}", s.name), s.key.clone()));
    }
    if let Some(t) = &config.keys.smtp_tls {
        out.push(("keys.smtp_tls.key".into(), t.key.clone()));
    }
    if let Some(db) = crate::store::sqlite_path(config.store.url.expose()) {
        let key = Path::new(db).with_file_name("code.key");
        if key.exists() {
            out.push(("store.code_key".into(), key));
        }
    }
    if let Some(key) = config
        .server
        .public
        .as_ref()
        .and_then(|p| p.tls_key.clone())
    {
        out.push(("server.public.tls_key".into(), key));
    }
    out
}

fn files(config: &Config) -> Vec<Finding> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for (what, path) in secret_files(config) {
        out.push(match std::fs::metadata(&path) {
            Ok(m) => secret_file_mode(&what, &path, m.mode()),
            Err(e) => finding(
                Level::Fail,
                &what,
                format!("cannot read {}: {e}", path.display()),
            ),
        });
    }
    if let Some(spool) = config
        .channels
        .letter
        .as_ref()
        .and_then(|l| l.spool.as_ref())
    {
        // Whether it is there and writable is the channel's health check.
        if let Ok(m) = std::fs::metadata(spool) {
            out.push(spool_directory_mode(spool, m.mode()));
        }
    }
    if let Some(db) = crate::store::sqlite_path(config.store.url.expose()) {
        let path = Path::new(db);
        match std::fs::metadata(path) {
            Ok(m) => out.push(database_file_mode(path, m.mode())),
            Err(_) => out.push(finding(
                Level::Warn,
                "store.file",
                format!(
                    "{} does not exist yet: kci migrate (or kci serve) creates it",
                    path.display()
                ),
            )),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(m) = std::fs::metadata(dir)
            && m.mode() & 0o002 != 0
        {
            out.push(finding(
                Level::Fail,
                "store.file",
                format!(
                    "{} is writable by everyone: anyone can replace the database; chmod o-w {}",
                    dir.display(),
                    dir.display()
                ),
            ));
        }
    }
    out
}

/// Every certificate file of the config, by its setting.
fn certificate_files(config: &Config) -> Vec<(String, PathBuf)> {
    let e = &config.email;
    let mut out: Vec<(String, PathBuf)> = [
        ("server.tls_cert", &config.server.tls_cert),
        ("server.client_ca", &config.server.client_ca),
        ("email.tls_ca", &e.tls_ca),
        ("email.client_cert", &e.client_cert),
        ("email.smime_cert", &e.smime_cert),
    ]
    .into_iter()
    .filter_map(|(what, p)| p.clone().map(|p| (what.to_string(), p)))
    .collect();
    for (domain, policy) in &e.domains {
        for (name, p) in [
            ("tls_ca", &policy.tls_ca),
            ("client_cert", &policy.client_cert),
        ] {
            if let Some(p) = p {
                out.push((format!("email.domains.{domain}.{name}"), p.clone()));
            }
        }
    }
    out
}

fn certificates(config: &Config, now: DateTime<Utc>) -> Vec<Finding> {
    let mut out = Vec::new();
    for (what, path) in certificate_files(config) {
        let certs = std::fs::read(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|pem| {
                openssl::x509::X509::stack_from_pem(&pem)
                    .map_err(|_| format!("{}: not PEM certificates", path.display()))
            });
        let certs = match certs {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                out.push(finding(
                    Level::Fail,
                    &what,
                    format!("{}: no certificate in it", path.display()),
                ));
                continue;
            }
            Err(e) => {
                out.push(finding(Level::Fail, &what, e));
                continue;
            }
        };
        for cert in &certs {
            let subject = subject_name(cert);
            match (asn1_time(cert.not_before()), asn1_time(cert.not_after())) {
                (Some(nb), Some(na)) => out.push(certificate_dates(&what, &subject, nb, na, now)),
                _ => out.push(finding(
                    Level::Fail,
                    &what,
                    format!("{subject}: unreadable validity dates"),
                )),
            }
        }
    }
    // The listener's key must be the certificate's.
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        let pair = std::fs::read(cert).ok().zip(std::fs::read(key).ok());
        if let Some((cert_pem, key_pem)) = pair {
            let matches = openssl::x509::X509::from_pem(&cert_pem)
                .ok()
                .zip(openssl::pkey::PKey::private_key_from_pem(&key_pem).ok())
                .and_then(|(c, k)| c.public_key().ok().map(|p| p.public_eq(&k)));
            out.push(match matches {
                Some(true) => finding(Level::Ok, "server.tls_key", "matches server.tls_cert"),
                Some(false) => finding(
                    Level::Fail,
                    "server.tls_key",
                    "is not the key of server.tls_cert",
                ),
                None => finding(Level::Fail, "server.tls_key", "not a PEM private key"),
            });
        }
    }
    out
}

/// What a certificate is for: its first DNS name, else its common name.
fn subject_name(cert: &openssl::x509::X509) -> String {
    let dns = cert
        .subject_alt_names()
        .and_then(|names| names.iter().find_map(|n| n.dnsname().map(str::to_string)));
    if let Some(name) = dns {
        return name;
    }
    cert.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_else(|| "a certificate".into())
}

fn asn1_time(t: &openssl::asn1::Asn1TimeRef) -> Option<DateTime<Utc>> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    DateTime::from_timestamp(i64::from(d.days) * 86_400 + i64::from(d.secs), 0)
}

/// The operator's key and the DKIM keys: usable as configured.
fn keys(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    match crate::channels::email::load_signing_key(&config.email) {
        Ok(Some(key)) => out.push(finding(
            Level::Ok,
            "email.signing_key",
            format!("usable, fingerprint {}", key.fingerprint()),
        )),
        Ok(None) => out.push(finding(
            Level::Warn,
            "email.signing_key",
            "not set: mail is neither signed nor encrypted (kci keys generate)",
        )),
        Err(e) => out.push(finding(Level::Fail, "email.signing_key", e.to_string())),
    }
    for s in config.email.dkim.iter().flat_map(|d| &d.selectors) {
        let what = format!("email.dkim.{}", s.name);
        if let Err(e) = dkim::read_key(&s.key) {
            out.push(finding(Level::Fail, &what, e));
        }
    }
    out
}

/// The sender's domain (DKIM's default `d=`, the WKD's domain).
fn from_domain(config: &Config) -> Option<String> {
    config
        .email
        .from
        .parse::<lettre::message::Mailbox>()
        .ok()
        .map(|m| m.email.domain().to_ascii_lowercase())
}

async fn dns(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(domain) = from_domain(config) else {
        return out;
    };
    let wants_dkim = config.email.dkim.is_some();
    let wants_wkd = config.email.signing_key.is_some();
    if !wants_dkim && !wants_wkd {
        return out;
    }
    let resolver = match resolver() {
        Ok(r) => r,
        Err(e) => {
            out.push(finding(Level::Warn, "dns", format!("cannot resolve: {e}")));
            return out;
        }
    };
    if let Some(cfg) = &config.email.dkim {
        let d = cfg.domain.clone().unwrap_or_else(|| domain.clone());
        for s in &cfg.selectors {
            let Ok(key) = dkim::read_key(&s.key) else {
                continue; // named by the key check
            };
            let Ok(ours) = dkim::public_record(&key) else {
                continue;
            };
            let name = format!("{}._domainkey.{d}", s.name);
            out.push(match resolver.txt_raw_lookup(format!("{name}.")).await {
                Ok(txt) => dkim_record(&name, Some(&String::from_utf8_lossy(&txt)), &ours),
                Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => {
                    dkim_record(&name, None, &ours)
                }
                Err(e) => finding(
                    Level::Warn,
                    "dns.dkim",
                    format!("{name}: could not check ({e})"),
                ),
            });
        }
    }
    if wants_wkd {
        // The advanced method needs openpgpkey.<domain>; without it mail
        // clients ask the domain itself (the direct method).
        let name = format!("openpgpkey.{domain}");
        let found = resolver.resolver().lookup_ip(format!("{name}.")).await;
        out.push(match found {
            Ok(_) => finding(
                Level::Ok,
                "dns.wkd",
                format!("{name} resolves: route https://{name}/.well-known/openpgpkey/ to kci"),
            ),
            Err(e) => finding(
                Level::Warn,
                "dns.wkd",
                format!(
                    "{name} does not resolve ({e}): mail clients try https://{domain}/.well-known/openpgpkey/, route it to kci"
                ),
            ),
        });
    }
    out
}

/// The system's resolver, quick to give up: a doctor that waits minutes
/// for an unreachable DNS server helps nobody.
fn resolver() -> Result<mail_auth::MessageAuthenticator, String> {
    let (conf, mut opts) =
        mail_auth::hickory_resolver::system_conf::read_system_conf().map_err(|e| e.to_string())?;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    mail_auth::MessageAuthenticator::new(conf, opts).map_err(|e| e.to_string())
}

async fn store(config: &Config) -> Vec<Finding> {
    let url = config.store.url.expose();
    if let Some(path) = crate::store::sqlite_path(url)
        && !Path::new(path).exists()
    {
        return Vec::new(); // named by the file check
    }
    let opened = tokio::time::timeout(Duration::from_secs(10), async {
        let store = crate::store::open_as_is(url).await?;
        let info = store.inspect().await?;
        Ok::<_, crate::store::StoreError>((store, info))
    })
    .await;
    let (opened, info) = match opened {
        Ok(Ok(both)) => both,
        Ok(Err(e)) => return vec![finding(Level::Fail, "store", format!("cannot open: {e}"))],
        Err(_) => return vec![finding(Level::Fail, "store", "no answer within 10 s")],
    };
    let mut out = vec![schema(info.schema, info.latest)];
    if let Some(theirs) = info.server_time {
        out.push(clock_skew(theirs - Utc::now()));
    }
    if crate::store::sqlite_path(url).is_none() {
        out.push(code_key(
            config.store.code_key.as_ref().map(|k| k.expose().as_str()),
        ));
    }
    // The credentials table came with schema 14.
    if config.channels.x.is_some() && info.schema >= 14 {
        let stored = tokio::time::timeout(
            Duration::from_secs(10),
            opened.credential(crate::channels::x::REFRESH_TOKEN),
        )
        .await;
        out.push(match stored {
            Ok(Ok(stored)) => {
                let opens = stored
                    .as_ref()
                    .zip(existing_code_key(config))
                    .map(|(c, key)| {
                        crate::trust::seal::Sealer::new(&key, crate::channels::x::REFRESH_TOKEN)
                            .open(
                                &c.sealed,
                                &crate::channels::x::refresh_token_context(c.version),
                            )
                            .map(|_| ())
                    });
                x_refresh_token(stored.map(|c| (c.version, c.updated_at)), opens)
            }
            Ok(Err(e)) => finding(Level::Fail, "channels.x.refresh_token", e.to_string()),
            Err(_) => finding(
                Level::Fail,
                "channels.x.refresh_token",
                "no answer within 10 s",
            ),
        });
    }
    out
}

/// The code key as `kci serve` would read it, without making one: `[store]
/// code_key`, or the SQLite database's `code.key`.
fn existing_code_key(config: &Config) -> Option<crate::trust::codes::CodeKey> {
    if let Some(hex) = &config.store.code_key {
        return crate::trust::codes::CodeKey::from_hex(hex.expose()).ok();
    }
    let db = crate::store::sqlite_path(config.store.url.expose())?;
    let text = std::fs::read_to_string(Path::new(db).with_file_name("code.key")).ok()?;
    crate::trust::codes::CodeKey::from_hex(&text).ok()
}

/// X's stored refresh token (its version and when it was stored, and
/// whether it opens with the code key, when there is one to try): none yet
/// is fine (the configured one seeds it); one that does not open needs a
/// new authorization.
fn x_refresh_token(
    stored: Option<(i64, DateTime<Utc>)>,
    opens: Option<Result<(), crate::trust::seal::SealError>>,
) -> Finding {
    let what = "channels.x.refresh_token";
    match (stored, opens) {
        (None, _) => finding(
            Level::Ok,
            what,
            "none stored yet: the configured one seeds the store at the first delivery",
        ),
        (Some((version, at)), Some(Ok(()))) => finding(
            Level::Ok,
            what,
            format!(
                "stored (version {version}, {}), opens with the code key",
                crate::model::fmt_time(at)
            ),
        ),
        (Some(_), Some(Err(e))) => finding(
            Level::Fail,
            what,
            format!(
                "the stored one {e}: authorize kci's X app again and put the new refresh token in [channels.x] refresh_token"
            ),
        ),
        (Some((version, _)), None) => finding(
            Level::Warn,
            what,
            format!("stored (version {version}), but there is no code key here to open it with"),
        ),
    }
}

/// PostgreSQL's code key: set, and 64 hex digits (`kci serve` refuses to
/// start otherwise; every node must hold the same one).
fn code_key(hex: Option<&str>) -> Finding {
    match hex.map(crate::trust::codes::CodeKey::from_hex) {
        None => finding(
            Level::Fail,
            "store.code_key",
            "not set: kci serve refuses PostgreSQL without it; put 64 hex digits (openssl rand -hex 32), the same on every node, in a file named by [store] code_key_file",
        ),
        Some(Err(e)) => finding(Level::Fail, "store.code_key", e),
        Some(Ok(_)) => finding(Level::Ok, "store.code_key", "set"),
    }
}

/// Every configured channel's own health check (the SMTP server answers
/// EHLO, an HTTP provider is reachable), each within 10 s.
async fn providers(config: &Config) -> Vec<Finding> {
    let channels =
        match crate::channels::Channels::from_config(&config.channels, &config.email, None) {
            Ok(c) => c,
            Err(e) => return vec![finding(Level::Fail, "channels", e.to_string())],
        };
    let mut kinds: Vec<_> = channels.kinds().collect();
    kinds.sort_by_key(|k| k.as_str());
    let mut out = Vec::new();
    for kind in kinds {
        let Some(channel) = channels.get(kind) else {
            continue;
        };
        let what = format!("channel.{}", kind.as_str());
        out.push(
            match tokio::time::timeout(Duration::from_secs(10), channel.healthcheck()).await {
                Ok(Ok(())) => finding(Level::Ok, &what, "reachable"),
                Ok(Err(e)) => finding(Level::Fail, &what, e),
                Err(_) => finding(Level::Fail, &what, "no answer within 10 s"),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn xs_stored_refresh_token_opens_or_says_what_to_do() {
        use crate::trust::seal::SealError;
        let at = "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let rows = [
            (None, None, Level::Ok, "none stored yet"),
            (
                Some((3, at)),
                Some(Ok(())),
                Level::Ok,
                "version 3, 2026-12-02T10:00:00Z",
            ),
            (
                Some((3, at)),
                Some(Err(SealError::Wrong)),
                Level::Fail,
                "authorize kci's X app again",
            ),
            (Some((3, at)), None, Level::Warn, "no code key"),
        ];
        for (stored, opens, level, words) in rows {
            let f = x_refresh_token(stored, opens);
            assert_eq!(f.level, level, "{f:?}");
            assert!(f.detail.contains(words), "{f:?}");
        }
    }

    #[test]
    fn postgresql_needs_a_code_key() {
        let good = "ab".repeat(32);
        let rows = [
            (None, Level::Fail),
            (Some("not hex"), Level::Fail),
            (Some("abcd"), Level::Fail),
            (Some(good.as_str()), Level::Ok),
        ];
        for (hex, level) in rows {
            assert_eq!(code_key(hex).level, level, "{hex:?}");
        }
    }

    #[test]
    fn secret_files_are_the_owners_alone() {
        let p = Path::new("/etc/kci/op.asc");
        let rows = [
            (0o100600, Level::Ok, ""),
            (0o100400, Level::Ok, ""),
            (0o100640, Level::Fail, "its group"),
            (0o100604, Level::Fail, "everyone"),
            (0o100644, Level::Fail, "chmod 600 /etc/kci/op.asc"),
        ];
        for (mode, level, says) in rows {
            let f = secret_file_mode("email.signing_key", p, mode);
            assert_eq!(f.level, level, "{mode:o}: {f:?}");
            assert!(f.detail.contains(says), "{mode:o}: {f:?}");
        }
    }

    #[test]
    fn the_database_is_never_world_readable() {
        let p = Path::new("kci-data/kci.db");
        for (mode, level) in [
            (0o100600, Level::Ok),
            (0o100640, Level::Warn),
            (0o100644, Level::Fail),
            (0o100606, Level::Fail),
        ] {
            assert_eq!(database_file_mode(p, mode).level, level, "{mode:o}");
        }
    }

    #[test]
    fn the_letters_spool_is_never_open_to_everyone() {
        let p = Path::new("/var/spool/kci-letters");
        for (mode, level) in [
            (0o040700, Level::Ok),
            (0o040770, Level::Warn),
            (0o040750, Level::Warn),
            (0o040755, Level::Fail),
            (0o041777, Level::Fail),
        ] {
            assert_eq!(spool_directory_mode(p, mode).level, level, "{mode:o}");
        }
    }

    #[test]
    fn certificates_by_their_dates() {
        let day = chrono::TimeDelta::days;
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        let rows = [
            (
                now - day(400),
                now + day(365),
                Level::Ok,
                "valid until 2027-12-02",
            ),
            (now - day(400), now + day(29), Level::Warn, "in 29 days"),
            (
                now - day(400),
                now - day(1),
                Level::Fail,
                "expired 2026-12-01",
            ),
            (
                now + day(1),
                now + day(400),
                Level::Fail,
                "not valid before",
            ),
        ];
        for (nb, na, level, says) in rows {
            let f = certificate_dates("server.tls_cert", "kci.isp.example", nb, na, now);
            assert_eq!(f.level, level, "{f:?}");
            assert!(f.detail.contains(says), "{f:?}");
        }
    }

    #[test]
    fn clocks_and_schemas() {
        let ms = chrono::TimeDelta::milliseconds;
        assert_eq!(clock_skew(ms(300)).level, Level::Ok);
        assert_eq!(clock_skew(ms(-5_000)).level, Level::Warn);
        assert_eq!(clock_skew(ms(120_000)).level, Level::Fail);
        assert_eq!(schema(12, 12).level, Level::Ok);
        assert_eq!(schema(0, 12).level, Level::Warn);
        assert!(schema(10, 12).detail.contains("kci migrate"));
        assert_eq!(schema(13, 12).level, Level::Fail);
    }

    #[test]
    fn dkim_records_must_publish_the_key_kci_signs_with() {
        let ours = dkim::PublicRecord {
            k: "ed25519",
            p: "AbC=".into(),
        };
        let name = "kci._domainkey.isp.example";
        assert_eq!(
            dkim_record(name, Some("v=DKIM1; k=ed25519; p=AbC="), &ours).level,
            Level::Ok
        );
        // Split strings and spaces inside p= are one value.
        assert_eq!(
            dkim_record(name, Some("v=DKIM1;k=ed25519;p=Ab C="), &ours).level,
            Level::Ok
        );
        let other = dkim_record(name, Some("v=DKIM1; k=ed25519; p=XyZ="), &ours);
        assert_eq!(other.level, Level::Fail);
        assert!(other.detail.contains("another key") && other.detail.contains("p=AbC="));
        let none = dkim_record(name, None, &ours);
        assert!(none.level == Level::Fail && none.detail.contains("no record"));
    }
}
