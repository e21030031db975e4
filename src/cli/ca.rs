//! `kci ca init | issue | revoke`: a small CA for the client certificates
//! source systems present (`[server] client_ca`), with the revocation list
//! kci honours (`[server] client_crl`). Everything lives in one directory:
//! `ca.key` (0600), `ca.crt`, `ca.crl`, and `ca.json` — the certificates
//! issued (name, serial, fingerprint, expiry) and those revoked. Keys are
//! ECDSA P-256 (rcgen, ring). A revocation takes effect when kci reads the
//! list again (`kill -HUP`).

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `ca.json` records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The CA's common name.
    pub name: String,
    pub next_serial: u64,
    pub crl_number: u64,
    pub issued: Vec<Issued>,
}

/// One client certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Issued {
    pub name: String,
    pub serial: u64,
    /// SHA-256 of the DER, lower-case hex (what `kci token create --cert`
    /// takes).
    pub fingerprint: String,
    pub not_after: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// How long the revocation list says it is good for.
const CRL_DAYS: i64 = 30;

fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn load(dir: &Path) -> anyhow::Result<(State, KeyPair)> {
    let json = std::fs::read_to_string(file(dir, "ca.json"))
        .with_context(|| format!("{}: no CA here (run `kci ca init`)", dir.display()))?;
    let state: State = serde_json::from_str(&json).context("ca.json")?;
    let key = std::fs::read_to_string(file(dir, "ca.key")).context("ca.key")?;
    let key = KeyPair::from_pem(&key).context("ca.key")?;
    Ok((state, key))
}

fn save(dir: &Path, state: &State) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(state)?;
    write(dir, "ca.json", json.as_bytes(), false)
}

/// Writes `name` in `dir` through a temporary file, 0600 when `secret`.
fn write(dir: &Path, name: &str, data: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = file(dir, &format!(".{name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("{}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file(dir, name))?;
    Ok(())
}

/// The CA's own parameters: what signs, as `init` made it.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

/// Writes `ca.crl` listing every revoked certificate, its number one up.
fn write_crl(dir: &Path, state: &mut State, issuer: &Issuer<'_, &KeyPair>) -> anyhow::Result<()> {
    state.crl_number += 1;
    let revoked = state
        .issued
        .iter()
        .filter(|i| i.revoked_at.is_some())
        .map(|i| RevokedCertParams {
            serial_number: SerialNumber::from(i.serial),
            revocation_time: time::OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let crl = CertificateRevocationListParams {
        this_update: days(0),
        next_update: days(CRL_DAYS),
        crl_number: SerialNumber::from(state.crl_number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .context("signing the revocation list")?;
    write(
        dir,
        "ca.crl",
        crl.pem().context("ca.crl")?.as_bytes(),
        false,
    )
}

/// `kci ca init --dir DIR [--name NAME] [--days N]`.
pub fn init(dir: PathBuf, name: String, valid_days: i64) -> anyhow::Result<ExitCode> {
    if file(&dir, "ca.json").exists() {
        anyhow::bail!("--dir: {} holds a CA already", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
    let key = KeyPair::generate().context("a CA key")?;
    let mut params = ca_params(&name);
    params.not_before = days(-1);
    params.not_after = days(valid_days);
    let cert = params.self_signed(&key).context("the CA certificate")?;
    write(&dir, "ca.key", key.serialize_pem().as_bytes(), true)?;
    write(&dir, "ca.crt", cert.pem().as_bytes(), false)?;
    let mut state = State {
        name: name.clone(),
        next_serial: 1,
        crl_number: 0,
        issued: Vec::new(),
    };
    let issuer = Issuer::new(ca_params(&name), &key);
    write_crl(&dir, &mut state, &issuer)?;
    save(&dir, &state)?;
    eprintln!(
        "CA {name:?} in {}: point [server] client_ca at ca.crt and client_crl at ca.crl",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `kci ca issue --dir DIR --name NAME [--days N]`: `NAME.crt` and
/// `NAME.key` (0600); the fingerprint on the last line of stdout.
pub fn issue(dir: PathBuf, name: String, valid_days: i64) -> anyhow::Result<ExitCode> {
    crate::model::check_id(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let (mut state, ca_key) = load(&dir)?;
    if state
        .issued
        .iter()
        .any(|i| i.name == name && i.revoked_at.is_none())
    {
        anyhow::bail!("--name: {name} has a certificate already; revoke it first");
    }
    let key = KeyPair::generate().context("a client key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from(state.next_serial));
    params.not_before = days(-1);
    params.not_after = days(valid_days);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = Issuer::new(ca_params(&state.name), &ca_key);
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the certificate")?;
    let fingerprint = crate::model::sha256_hex(cert.der());
    write(
        &dir,
        &format!("{name}.key"),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write(&dir, &format!("{name}.crt"), cert.pem().as_bytes(), false)?;
    state.issued.push(Issued {
        name: name.clone(),
        serial: state.next_serial,
        fingerprint: fingerprint.clone(),
        not_after: crate::model::fmt_time(chrono::Utc::now() + chrono::Duration::days(valid_days)),
        revoked_at: None,
    });
    state.next_serial += 1;
    save(&dir, &state)?;
    eprintln!(
        "issued {name}.crt and {name}.key in {}; bind a token to it with --cert:",
        dir.display()
    );
    println!("{fingerprint}");
    Ok(ExitCode::SUCCESS)
}

/// `kci ca revoke --dir DIR NAME|SERIAL|FINGERPRINT`: listed in `ca.crl`
/// (kci reads it again on SIGHUP).
pub fn revoke(dir: PathBuf, which: String) -> anyhow::Result<ExitCode> {
    let (mut state, ca_key) = load(&dir)?;
    let now = crate::model::fmt_time(chrono::Utc::now());
    let Some(cert) = state.issued.iter_mut().find(|i| {
        i.revoked_at.is_none()
            && (i.name == which || i.serial.to_string() == which || i.fingerprint == which)
    }) else {
        anyhow::bail!("no certificate {which:?} that is not revoked already in ca.json");
    };
    cert.revoked_at = Some(now);
    let what = format!("{} (serial {})", cert.name, cert.serial);
    let issuer = Issuer::new(ca_params(&state.name), &ca_key);
    write_crl(&dir, &mut state, &issuer)?;
    save(&dir, &state)?;
    eprintln!("revoked {what}; tell kci with `kill -HUP` so it reads ca.crl again");
    Ok(ExitCode::SUCCESS)
}
