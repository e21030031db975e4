//! Configuration: `kci.toml` (or `KCI_CONFIG`), falling back to embedded
//! defaults so `kci serve` with no file runs on SQLite and a Maildir outbox
//! under `./kci-data`. Parsed with serde (unknown keys refused), then
//! `validate()`d; every error names the file and the key.

use crate::channels::ChannelsConfig;
use crate::channels::email::EmailConfig;
use crate::model::Preferences;
use crate::model::{Priority, Secret, Span};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration problem, naming where it was found.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// The whole configuration of a kci node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// How `kci serve` and `kci inbound` log.
    #[serde(default)]
    pub log: LogConfig,
    /// The key short codes are hashed with: `[store] code_key`, or the
    /// file beside an SQLite database (made on first use); random for a
    /// config only parsed (tests, `kci simulate`).
    #[serde(skip)]
    pub code_key: crate::trust::codes::CodeKey,
    /// Outgoing mail.
    #[serde(default)]
    pub email: EmailConfig,
    /// Preferences used where neither destination, contact nor account sets one.
    #[serde(default)]
    pub defaults: Preferences,
    /// Per-channel settings and provider credentials.
    #[serde(default)]
    pub channels: ChannelsConfig,
    /// Retry and concurrency of the delivery workers.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// The key registry (OpenPGP keys per address).
    #[serde(default)]
    pub keys: KeysConfig,
    /// Destinations and their verification.
    #[serde(default)]
    pub directory: DirectoryConfig,
    /// Protected changes (DESIGN.md §7).
    #[serde(default)]
    pub changes: ChangesConfig,
    /// The audit log's signed checkpoints.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Call verification (DESIGN.md §8).
    #[serde(default)]
    pub calls: CallsConfig,
    /// Assurance recovery (DESIGN.md §7).
    #[serde(default)]
    pub assurance: AssuranceConfig,
    /// Staff logins: password and second factor (DESIGN.md §9).
    #[serde(default)]
    pub staff: StaffConfig,
    /// Event types source systems may post, by name (such as `line.down`).
    #[serde(default)]
    pub types: BTreeMap<String, EventType>,
}

/// `[changes]`: protected changes (DESIGN.md §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// How long a change without proof waits before it applies, by the
    /// account's security level (for a key, the highest level among the
    /// accounts using its address): `{ standard = "7d", high = "14d",
    /// maximum = "30d" }`. Any duration is taken, so drills and tests can
    /// use seconds.
    #[serde(default)]
    pub cooling_off: Option<CoolingOff>,
    /// Staff approvals a change needs on a `maximum` account, from as
    /// many different approvers, none of them its requester.
    #[serde(default = "default_approvals")]
    pub approvals_at_maximum: u32,
    /// Veto links that were not valid (unknown, used, expired) one client
    /// address may try: more are answered 429 until the window ends.
    #[serde(default = "default_wrong_links")]
    pub wrong_links_per_source: crate::model::Cap,
    /// The number customers text a code back to (their SMS provider's
    /// inbound number), named in the code's mail.
    #[serde(default)]
    pub reply_number: Option<String>,
}

fn default_wrong_links() -> crate::model::Cap {
    crate::model::Cap {
        count: 30,
        per: crate::model::Span(std::time::Duration::from_secs(3600)),
    }
}

fn default_approvals() -> u32 {
    2
}

impl Default for ChangesConfig {
    fn default() -> Self {
        Self {
            cooling_off: None,
            approvals_at_maximum: default_approvals(),
            wrong_links_per_source: default_wrong_links(),
            reply_number: None,
        }
    }
}

/// `[log]`: the log's form (its level is `KCI_LOG`, an env-filter).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (the default, for people) or `json` (one object a line, for
    /// a log collector); `KCI_LOG_FORMAT` overrides it.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[audit]`: how often the audit log's head is signed with the
/// operator's key (`[email] signing_key`; without one, the chain alone
/// protects it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A checkpoint after this many new entries…
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u32,
    /// …or this long after the last one, if anything was added.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: crate::model::Span,
    /// Operator keys replaced since (their public keys, armored), each
    /// with when it was retired: `kci audit verify` accepts the
    /// checkpoints it signed up to then, and none after (a leaked old key
    /// cannot vouch for later entries).
    #[serde(default)]
    pub previous_keys: Vec<PreviousKey>,
}

/// A retired operator key, `{ key = "FILE", until = "RFC 3339 time" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    pub key: std::path::PathBuf,
    pub until: chrono::DateTime<chrono::Utc>,
}

fn default_checkpoint_every() -> u32 {
    100
}

fn default_checkpoint_interval() -> crate::model::Span {
    crate::model::Span(std::time::Duration::from_secs(600))
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval: default_checkpoint_interval(),
            previous_keys: Vec::new(),
        }
    }
}

/// `[assurance]`: recovery through a person who met the customer
/// (DESIGN.md §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssuranceConfig {
    /// How long ago the meeting may have been when the customer follows
    /// the confirmation link.
    #[serde(default = "days::<30>")]
    pub max_age: Span,
    /// How long the confirmation link sent to the primary address works.
    #[serde(default = "days::<2>")]
    pub link_valid: Span,
    /// How long the T-word works once sent.
    #[serde(default = "days::<7>")]
    pub t_word_valid: Span,
    /// How many different assurers must each complete an assurance, by
    /// the account's security level: `{ standard = 1, high = 1,
    /// maximum = 2 }` asks for a second, independent assurer at
    /// `maximum`.
    #[serde(default)]
    pub assurers: Assurers,
}

impl Default for AssuranceConfig {
    fn default() -> Self {
        Self {
            max_age: days::<30>(),
            link_valid: days::<2>(),
            t_word_valid: days::<7>(),
            assurers: Assurers::default(),
        }
    }
}

/// `[staff]`: how staff log in (DESIGN.md §9): a password and a TOTP code
/// give a session token of `session`'s lifetime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffConfig {
    /// `required`: a staff member's token works only if it came from a
    /// login (`POST /v1/staff/login`); tokens made with `kci token create
    /// --staff` are refused. `optional` (the default) accepts both.
    #[serde(default)]
    pub second_factor: SecondFactor,
    /// How long a login's token works.
    #[serde(default = "default_session")]
    pub session: Span,
    /// How long the enrolment code of `kci staff enrol` works.
    #[serde(default = "days::<3>")]
    pub enrolment: Span,
    /// Failed logins or enrolments per staff name before the name is
    /// refused for the rest of the window.
    #[serde(default = "default_failed_logins")]
    pub failed_logins: crate::model::Cap,
    /// Failed logins or enrolments per client address.
    #[serde(default = "default_failed_logins_per_source")]
    pub failed_logins_per_source: crate::model::Cap,
    /// The issuer an authenticator app shows beside the name; by default
    /// the sender's name of `[email] from`.
    #[serde(default)]
    pub issuer: Option<String>,
}

impl StaffConfig {
    /// The issuer an authenticator app shows (without colons: the app
    /// splits its label at one).
    pub fn issuer(&self, email: &EmailConfig) -> String {
        let name = self.issuer.as_deref().unwrap_or(email.sender_name());
        let name: String = name
            .chars()
            .filter(|c| *c != ':' && !c.is_control())
            .take(64)
            .collect();
        if name.trim().is_empty() {
            "kci".into()
        } else {
            name.trim().to_string()
        }
    }
}

/// `[staff] second_factor`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactor {
    #[default]
    Optional,
    Required,
}

fn default_session() -> Span {
    Span(std::time::Duration::from_secs(12 * 3600))
}

fn default_failed_logins() -> crate::model::Cap {
    crate::model::Cap {
        count: 10,
        per: crate::model::Span(std::time::Duration::from_secs(900)),
    }
}

fn default_failed_logins_per_source() -> crate::model::Cap {
    crate::model::Cap {
        count: 30,
        per: crate::model::Span(std::time::Duration::from_secs(900)),
    }
}

impl Default for StaffConfig {
    fn default() -> Self {
        Self {
            second_factor: SecondFactor::default(),
            session: default_session(),
            enrolment: days::<3>(),
            failed_logins: default_failed_logins(),
            failed_logins_per_source: default_failed_logins_per_source(),
            issuer: None,
        }
    }
}

/// `[assurance] assurers`, per security level (at least 1 each).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assurers {
    #[serde(default = "one")]
    pub standard: u32,
    #[serde(default = "one")]
    pub high: u32,
    #[serde(default = "one")]
    pub maximum: u32,
}

fn one() -> u32 {
    1
}

impl Default for Assurers {
    fn default() -> Self {
        Self {
            standard: 1,
            high: 1,
            maximum: 1,
        }
    }
}

impl AssuranceConfig {
    /// The rules' limits at `level`.
    pub fn limits(&self, level: crate::model::SecurityLevel) -> crate::trust::assurance::Limits {
        use crate::model::SecurityLevel::*;
        let span = |s: Span| chrono::Duration::from_std(s.0).unwrap_or(chrono::Duration::days(30));
        let assurers = match level {
            Standard => self.assurers.standard,
            High => self.assurers.high,
            Maximum => self.assurers.maximum,
        };
        crate::trust::assurance::Limits {
            max_age: span(self.max_age),
            link_valid: span(self.link_valid),
            t_valid: span(self.t_word_valid),
            assurers: assurers.clamp(1, crate::trust::assurance::MAX_PER_CHANGE as u32),
        }
    }
}

/// `[calls]`: how many call verifications may be opened.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsConfig {
    /// Per account (each one rings the customer's phone).
    #[serde(default = "default_calls_per_account")]
    pub per_account: crate::model::Cap,
    /// Per staff member.
    #[serde(default = "default_calls_per_staff")]
    pub per_staff: crate::model::Cap,
}

fn default_calls_per_account() -> crate::model::Cap {
    crate::model::Cap {
        count: 5,
        per: crate::model::Span(std::time::Duration::from_secs(3600)),
    }
}

fn default_calls_per_staff() -> crate::model::Cap {
    crate::model::Cap {
        count: 60,
        per: crate::model::Span(std::time::Duration::from_secs(3600)),
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            per_account: default_calls_per_account(),
            per_staff: default_calls_per_staff(),
        }
    }
}

/// `[directory]`: destinations and their verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Wrong verification codes one token may submit, across all
    /// destinations, such as `30/1h` (each destination also allows only a
    /// few a day, whoever asks).
    #[serde(default = "default_wrong_codes_per_token")]
    pub wrong_codes_per_token: crate::model::Cap,
}

fn cap(count: u32, secs: u64) -> crate::model::Cap {
    crate::model::Cap {
        count,
        per: Span(std::time::Duration::from_secs(secs)),
    }
}

fn default_wrong_codes_per_token() -> crate::model::Cap {
    cap(30, 3600)
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            wrong_codes_per_token: default_wrong_codes_per_token(),
        }
    }
}

/// `[keys]`: the key registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Older name of `[changes] cooling_off`, still read when that is not
    /// set.
    #[serde(default)]
    pub cooling_off: Option<CoolingOff>,
    /// The address customers mail their keys to.
    #[serde(default)]
    pub submission_address: Option<String>,
    /// Where kci's own SMTP listener takes mail for that address (behind
    /// the MTA); absent: only `kci inbound` from an MTA pipe.
    #[serde(default)]
    pub smtp_listen: Option<SocketAddr>,
    /// STARTTLS on that listener, and the MTAs' client certificates.
    #[serde(default)]
    pub smtp_tls: Option<SmtpTlsConfig>,
    /// How fresh a signed request must be to count as its signer's proof:
    /// its signature made at most this long before it arrives (and not
    /// more than 5 minutes in the future). Each is accepted once.
    #[serde(default = "default_proof_window")]
    pub proof_window: Span,
    /// Accepted key submissions per address, such as `3/1h`: each sends
    /// mail to the address, so a forged sender cannot flood it.
    #[serde(default = "default_submissions_per_address")]
    pub submissions_per_address: crate::model::Cap,
    /// Accepted key submissions per source (an API token, an SMTP
    /// client's address), such as `30/1h`. Mail piped in by the MTA
    /// (`kci inbound`) has no source kci can trust: only the per-address
    /// limit applies to it.
    #[serde(default = "default_submissions_per_source")]
    pub submissions_per_source: crate::model::Cap,
}

/// `[keys.smtp_tls]`: the listener's certificate (read again on SIGHUP),
/// whether TLS is required before mail, and the CA whose certificates the
/// MTAs present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpTlsConfig {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// No mail before STARTTLS (the default): 530 to MAIL in clear.
    #[serde(default = "yes")]
    pub required: bool,
    /// MTAs present a certificate from this CA (PEM) …
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
    /// … not revoked by this list (PEM) …
    #[serde(default)]
    pub client_crl: Option<std::path::PathBuf>,
    /// … always (`required`, the default) or when they have one.
    #[serde(default)]
    pub client_auth: crate::web::tls::ClientAuth,
}

fn yes() -> bool {
    true
}

impl SmtpTlsConfig {
    pub fn files(&self) -> crate::web::tls::TlsFiles {
        crate::web::tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
            client_crl: self.client_crl.clone(),
            client_auth: self.client_auth,
            names: crate::web::tls::TlsNames::SMTP,
            http: false,
        }
    }
}

fn default_proof_window() -> Span {
    Span(std::time::Duration::from_secs(3600))
}

fn default_submissions_per_address() -> crate::model::Cap {
    cap(3, 3600)
}

fn default_submissions_per_source() -> crate::model::Cap {
    cap(30, 3600)
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            cooling_off: None,
            submission_address: None,
            smtp_listen: None,
            smtp_tls: None,
            proof_window: default_proof_window(),
            submissions_per_address: default_submissions_per_address(),
            submissions_per_source: default_submissions_per_source(),
        }
    }
}

/// `[changes] cooling_off`, per security level.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoolingOff {
    #[serde(default = "days::<7>")]
    pub standard: Span,
    #[serde(default = "days::<14>")]
    pub high: Span,
    #[serde(default = "days::<30>")]
    pub maximum: Span,
}

fn days<const N: u64>() -> Span {
    Span(std::time::Duration::from_secs(N * 86_400))
}

impl Default for CoolingOff {
    fn default() -> Self {
        Self {
            standard: days::<7>(),
            high: days::<14>(),
            maximum: days::<30>(),
        }
    }
}

impl CoolingOff {
    /// The period at `level`.
    pub fn at(&self, level: crate::model::SecurityLevel) -> Span {
        use crate::model::SecurityLevel::*;
        match level {
            Standard => self.standard,
            High => self.high,
            Maximum => self.maximum,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (batches included).
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// Serve `/metrics` without a token (default: needs the `admin` scope).
    #[serde(default)]
    pub public_metrics: bool,
    /// The address customers and providers reach kci at (behind its TLS
    /// proxy), for links in mails; default `http://{listen}/`.
    #[serde(default)]
    pub public_url: Option<url::Url>,
    /// The customer portal, named in content-free notices to `paranoid`
    /// accounts ("read it in your portal").
    #[serde(default)]
    pub portal_url: Option<url::Url>,
    /// Longest a client may take to send a request's headers, and longest
    /// a kept-alive connection may sit idle before its next request: then
    /// the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Span,
    /// Longest a request body may go without a byte arriving: then the
    /// request is refused and the connection closed.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Span,
    /// Longest a whole request may take, its body and kci's work
    /// included: then kci answers 408 and closes the connection.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Span,
    /// TLS: the listener's certificate chain and private key (PEM files,
    /// read again on SIGHUP). Without them kci speaks plain HTTP.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    /// With TLS: the CA (PEM) whose certificates clients present.
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
    /// With a client CA: its revocation list (PEM, such as `kci ca`'s
    /// `ca.crl`), read again on SIGHUP.
    #[serde(default)]
    pub client_crl: Option<std::path::PathBuf>,
    /// `required` (the default: no certificate, no connection) or
    /// `optional`.
    #[serde(default)]
    pub client_auth: crate::web::tls::ClientAuth,
    /// Client networks that may use this listener (CIDR, such as
    /// `["192.0.2.0/24"]`); empty: any.
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
    /// Proxies in front of kci whose `X-Forwarded-For` is believed (CIDR);
    /// from anyone else the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Requests one client address may make, such as `"200/1s"`; none:
    /// unlimited. Counted per node.
    #[serde(default)]
    pub rate_per_source: Option<crate::model::Cap>,
    /// Requests one token may make, such as `"1000/1s"`; none: unlimited.
    #[serde(default)]
    pub rate_per_token: Option<crate::model::Cap>,
    /// Connections open at once; a new one over this is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A second listener for what customers and providers reach, with its
    /// own address, TLS and networks; `listen` then can be kept to the
    /// source systems' and staff's networks.
    #[serde(default)]
    pub public: Option<PublicListener>,
}

/// `[server.public]`: serves only what customers and providers reach —
/// the links in mails (key confirmation, veto, recovery, call
/// verification), the Web Key Directory, delivery callbacks and inbound
/// SMS, and `/healthz`; the API answers 404 there. Links in mails point
/// to it unless `[server] public_url` says otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicListener {
    pub listen: SocketAddr,
    /// Its certificate chain and key (PEM, read again on SIGHUP); without
    /// them it speaks plain HTTP (behind a TLS proxy).
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    /// Client networks that may use it (CIDR); empty: any.
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
}

impl PublicListener {
    pub fn tls_files(&self) -> Result<Option<crate::web::tls::TlsFiles>, String> {
        let names = crate::web::tls::TlsNames::PUBLIC;
        Ok(
            cert_and_key(&self.tls_cert, &self.tls_key, names)?.map(|(cert, key)| {
                crate::web::tls::TlsFiles {
                    cert,
                    key,
                    client_ca: None,
                    client_crl: None,
                    client_auth: Default::default(),
                    names,
                    http: true,
                }
            }),
        )
    }
}

/// A listener's certificate and key: both, or neither.
fn cert_and_key(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    names: crate::web::tls::TlsNames,
) -> Result<Option<(std::path::PathBuf, std::path::PathBuf)>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(format!("{}: needs {} too", names.cert, names.key)),
        (None, Some(_)) => Err(format!("{}: needs {} too", names.key, names.cert)),
    }
}

impl ServerConfig {
    /// The listener's TLS files, when both are given; an error when only
    /// one is, or a client CA without them.
    pub fn tls_files(&self) -> Result<Option<crate::web::tls::TlsFiles>, String> {
        let names = crate::web::tls::TlsNames::SERVER;
        if self.tls_cert.is_none() && self.tls_key.is_none() && self.client_ca.is_some() {
            return Err("server.client_ca: needs server.tls_cert and server.tls_key".into());
        }
        // A revocation list without its CA was ignored when TLS was on.
        if self.client_crl.is_some() && self.client_ca.is_none() {
            return Err("server.client_crl: needs server.client_ca".into());
        }
        Ok(
            cert_and_key(&self.tls_cert, &self.tls_key, names)?.map(|(cert, key)| {
                crate::web::tls::TlsFiles {
                    cert,
                    key,
                    client_ca: self.client_ca.clone(),
                    client_crl: self.client_crl.clone(),
                    client_auth: self.client_auth,
                    names,
                    http: true,
                }
            }),
        )
    }

    /// Where links in mails point: `public_url`, else the public
    /// listener, else the one listener.
    pub fn public_base(&self) -> url::Url {
        self.public_url.clone().unwrap_or_else(|| {
            let (listen, tls) = match &self.public {
                Some(p) => (p.listen, p.tls_cert.is_some()),
                None => (self.listen, self.tls_cert.is_some()),
            };
            let scheme = if tls { "https" } else { "http" };
            url::Url::parse(&format!("{scheme}://{listen}/")).expect("a socket address makes a URL")
        })
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8460))
}

fn default_body_limit() -> usize {
    16 * 1024 * 1024
}

fn default_header_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

fn default_body_timeout() -> Span {
    Span(std::time::Duration::from_secs(30))
}

fn default_request_timeout() -> Span {
    Span(std::time::Duration::from_secs(60))
}

fn default_max_connections() -> usize {
    1024
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_body_limit(),
            public_metrics: false,
            public_url: None,
            portal_url: None,
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            request_timeout: default_request_timeout(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            client_crl: None,
            client_auth: Default::default(),
            allow: Vec::new(),
            trusted_proxies: Vec::new(),
            rate_per_source: None,
            rate_per_token: None,
            max_connections: default_max_connections(),
            public: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (embedded, default) or `postgres://…` (multi-node).
    /// Kept secret because a PostgreSQL URL may carry a password.
    #[serde(default = "default_store_url")]
    pub url: Secret<String>,
    /// The key verification, proof and call codes are hashed with, 64 hex
    /// digits (`openssl rand -hex 32`), the same on every node; give it as
    /// `code_key_file`. Kept out of the database so that a copy of it
    /// cannot be searched for live codes. Without it, on SQLite, kci keeps
    /// one in `code.key` beside the database (made on first use, 0600);
    /// PostgreSQL needs it set.
    #[serde(default)]
    pub code_key: Option<Secret<String>>,
    /// PostgreSQL: the most connections `kci serve` keeps open to the
    /// database (opened as needed). Every node has its own, so the nodes
    /// together need the server's `max_connections` (100 by default) to
    /// hold this times the number of nodes, and room for other clients.
    /// Not used on SQLite.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

fn default_pool_size() -> usize {
    crate::store::DEFAULT_POOL_SIZE
}

fn default_store_url() -> Secret<String> {
    Secret::new("sqlite://kci-data/kci.db".into())
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_store_url(),
            code_key: None,
            pool_size: default_pool_size(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Notifications delivered at once by one node, per channel: each
    /// channel is its own queue, so a slow provider fills only its own.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Attempts before a transient failure becomes `failed`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Times a provider may ask to wait for one notice (HTTP 429) before
    /// it fails; waiting is not an attempt.
    #[serde(default = "default_max_paced")]
    pub max_paced: u32,
    /// First retry delay; doubles each attempt, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff: Span,
    /// Longest retry delay.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Span,
    /// How long a node owns a notification it is sending; after that another
    /// node (or this one, restarted) may take it over.
    #[serde(default = "default_lease")]
    pub lease: Span,
    /// Permanent failures in a row after which a destination is marked
    /// unhealthy (nothing more is sent there until it is verified again,
    /// and the contact is told through its other destinations); 0: never.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// How often providers are asked about messages whose delivery report
    /// or acknowledgement is still due (Pushover emergency receipts).
    #[serde(default = "default_receipt_poll")]
    pub receipt_poll: Span,
}

fn default_unhealthy_after() -> u32 {
    5
}
fn default_receipt_poll() -> Span {
    Span(std::time::Duration::from_secs(30))
}

fn default_concurrency() -> usize {
    32
}
fn default_max_attempts() -> u32 {
    8
}
fn default_max_paced() -> u32 {
    50
}
fn default_backoff() -> Span {
    Span(std::time::Duration::from_secs(5))
}
fn default_backoff_max() -> Span {
    Span(std::time::Duration::from_secs(3600))
}
fn default_lease() -> Span {
    Span(std::time::Duration::from_secs(120))
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            max_attempts: default_max_attempts(),
            max_paced: default_max_paced(),
            backoff: default_backoff(),
            backoff_max: default_backoff_max(),
            lease: default_lease(),
            unhealthy_after: default_unhealthy_after(),
            receipt_poll: default_receipt_poll(),
        }
    }
}

/// A configured event type (DESIGN.md §4).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventType {
    /// Category used by destination filters (default: the part of the type
    /// name before the first dot).
    #[serde(default)]
    pub category: Option<String>,
    /// Priority unless the event says otherwise.
    #[serde(default)]
    pub priority: Priority,
    /// Wait this long after `occurred_at` before delivering.
    #[serde(default)]
    pub hold: Option<Span>,
    /// Never deliver later than this after `occurred_at`.
    #[serde(default)]
    pub expires_after: Option<Span>,
    /// Short form (SMS, push, chat), minijinja.
    #[serde(default)]
    pub short: Option<String>,
    /// Mail subject, minijinja.
    #[serde(default)]
    pub subject: Option<String>,
    /// Long form (mail body), minijinja.
    #[serde(default)]
    pub body: Option<String>,
    /// Pair-and-cancel partners: types whose pending notices this one cancels.
    #[serde(default)]
    pub cancels: Vec<String>,
    /// A newer event of this type and key replaces a pending older one.
    #[serde(default)]
    pub supersedes: bool,
    /// Flap damping.
    #[serde(default)]
    pub flap: Option<Flap>,
    /// What a completed pair tells: nothing (`silence`, the default), or
    /// one message from `pair_summary` (`summary`).
    #[serde(default)]
    pub on_pair: OnPair,
    /// With `on_pair = "summary"`: the message, minijinja, with
    /// `started_at` (the partner's `occurred_at`) and `ended_at` (this
    /// event's).
    #[serde(default)]
    pub pair_summary: Option<String>,
    /// Longest SMS for this type, in segments (parts billed); a longer
    /// short text is cut to fit. Default: `[channels.sms] max_segments`.
    #[serde(default)]
    pub max_segments: Option<usize>,
    /// Also by letter to `postal:` destinations (paper, for what must be on
    /// record: a contract's end, say). Off, a type never goes by post.
    #[serde(default)]
    pub letter: bool,
}

/// What a completed pair tells the customer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPair {
    #[default]
    Silence,
    Summary,
}

impl EventType {
    /// The category of this type named `name`.
    pub fn category_for<'a>(&'a self, name: &'a str) -> &'a str {
        self.category
            .as_deref()
            .unwrap_or_else(|| name.split('.').next().unwrap_or(name))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flap {
    /// Changes within `within` that count as flapping.
    pub threshold: u32,
    pub within: Span,
}

/// The configuration kci runs on when given none.
pub const EMBEDDED_DEFAULTS: &str = include_str!("defaults.toml");

/// Any key `NAME_file = "PATH"` becomes `NAME` with the file's content
/// (one trailing newline dropped), so secrets — a provider's token, a
/// database URL with its password — need not be in the config file. A
/// bare file name is looked up in `credentials` (systemd's
/// `$CREDENTIALS_DIRECTORY`) when given. `Err` names the key.
/// Writes `text` to a new file only its owner can read; if another process
/// made it meanwhile, that one stands and is read back by the caller.
fn write_new_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn read_secret_files(
    table: &mut toml::Table,
    prefix: &str,
    credentials: Option<&std::path::Path>,
) -> Result<(), (String, String)> {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let path = format!("{prefix}{key}");
        match table.get_mut(&key) {
            Some(toml::Value::Table(inner)) => {
                read_secret_files(inner, &format!("{path}."), credentials)?;
                continue;
            }
            Some(toml::Value::String(file)) if key.ends_with("_file") && key.len() > 5 => {
                let name = key.trim_end_matches("_file").to_string();
                if table.contains_key(&name) {
                    return Err((path, format!("give `{name}` or `{key}`, not both")));
                }
                let file = std::path::PathBuf::from(table_string(table, &key));
                let file = match credentials {
                    Some(dir) if file.components().count() == 1 && file.is_relative() => {
                        dir.join(file)
                    }
                    _ => file,
                };
                let mut value = std::fs::read_to_string(&file)
                    .map_err(|e| (path.clone(), format!("cannot read {}: {e}", file.display())))?;
                if value.ends_with('\n') {
                    value.pop();
                    if value.ends_with('\r') {
                        value.pop();
                    }
                }
                table.remove(&key);
                table.insert(name, toml::Value::String(value));
            }
            _ => {}
        }
    }
    Ok(())
}

fn table_string(table: &toml::Table, key: &str) -> String {
    table
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Config {
    /// How long a change without proof waits at `level`.
    pub fn cooling_off(&self, level: crate::model::SecurityLevel) -> std::time::Duration {
        self.changes
            .cooling_off
            .as_ref()
            .or(self.keys.cooling_off.as_ref())
            .cloned()
            .unwrap_or_default()
            .at(level)
            .0
    }

    /// Staff approvals a change needs on an account at `level`.
    pub fn approvals_needed(&self, level: crate::model::SecurityLevel) -> u32 {
        if level == crate::model::SecurityLevel::Maximum {
            self.changes.approvals_at_maximum
        } else {
            0
        }
    }
    /// The channel that may take longest to answer one delivery, and how
    /// long (its configured timeout).
    pub fn longest_delivery_timeout(&self) -> (&'static str, std::time::Duration) {
        let c = &self.channels;
        let timeouts = [
            ("email.timeout", Some(self.email.timeout)),
            ("channels.webhook.timeout", Some(c.webhook.timeout)),
            (
                "channels.sms.http.timeout",
                c.sms.http.as_ref().map(|x| x.timeout),
            ),
            (
                "channels.sms.twilio.timeout",
                c.sms.twilio.as_ref().map(|x| x.timeout),
            ),
            ("channels.ntfy.timeout", c.ntfy.as_ref().map(|x| x.timeout)),
            (
                "channels.telegram.timeout",
                c.telegram.as_ref().map(|x| x.timeout),
            ),
            (
                "channels.pushover.timeout",
                c.pushover.as_ref().map(|x| x.timeout),
            ),
            (
                "channels.signal.timeout",
                c.signal.as_ref().map(|x| x.timeout),
            ),
            (
                "channels.matrix.timeout",
                c.matrix.as_ref().map(|x| x.timeout),
            ),
            (
                "channels.apprise.timeout",
                c.apprise.as_ref().map(|x| x.timeout),
            ),
            (
                "channels.letter.timeout",
                c.letter.as_ref().map(|x| x.timeout),
            ),
            // A delivery may refresh the access token, then send (twice
            // after a 401): up to three requests.
            (
                "channels.x.timeout",
                c.x.as_ref().map(|x| Span(x.timeout.0 * 3)),
            ),
            (
                "channels.whatsapp.timeout",
                c.whatsapp.as_ref().map(|x| x.timeout),
            ),
        ];
        timeouts
            .into_iter()
            .filter_map(|(k, t)| t.map(|t| (k, t.0)))
            .max_by_key(|(_, t)| *t)
            .unwrap_or(("email.timeout", self.email.timeout.0))
    }

    /// Loads `path`, or the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: p.display().to_string(),
                    key: "(file)".into(),
                    message: format!("cannot read: {e}"),
                })?;
                Config::parse(&text, &p.display().to_string())
            }
            None => Config::parse(EMBEDDED_DEFAULTS, "(embedded defaults)"),
        }
    }

    /// The config with its code key, for the commands that hash codes
    /// (`serve`, `inbound`): `[store] code_key`, or the SQLite database's
    /// `code.key` (read, or made 0600 on first use).
    pub fn with_code_key(mut self, file: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_string(),
            key: "store.code_key".into(),
            message,
        };
        if let Some(hex) = &self.store.code_key {
            self.code_key = crate::trust::codes::CodeKey::from_hex(hex.expose()).map_err(err)?;
            return Ok(self);
        }
        let Some(db) = crate::store::sqlite_path(self.store.url.expose()) else {
            return Err(err(
                "set it for PostgreSQL, the same on every node: 64 hex digits (openssl rand -hex 32) in a file named by code_key_file".into(),
            ));
        };
        let db = Path::new(db);
        let path = db.with_file_name("code.key");
        self.code_key = match std::fs::read_to_string(&path) {
            Ok(text) => crate::trust::codes::CodeKey::from_hex(&text)
                .map_err(|e| err(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Beside a database that exists already, a new key means
                // the codes and T-words issued with the lost one no longer
                // match: say so (a backup restored without it, say).
                if db.metadata().is_ok_and(|m| m.len() > 0) {
                    tracing::warn!(
                        key = %path.display(),
                        "no code key beside an existing database: made a new one; codes and recovery words issued before no longer match (restore code.key from the backup if it exists)"
                    );
                }
                let key = crate::trust::codes::CodeKey::random();
                write_new_secret(&path, &key.to_hex())
                    .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
                key
            }
            Err(e) => return Err(err(format!("cannot read {}: {e}", path.display()))),
        };
        Ok(self)
    }

    /// Parses and validates config text; `file` is only used in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            file: file.into(),
            key: "(syntax)".into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        // systemd's LoadCredential= puts credentials here.
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        read_secret_files(&mut table, "", credentials.as_deref()).map_err(|(key, message)| {
            ConfigError {
                file: file.into(),
                key,
                message,
            }
        })?;
        Config::from_table(table, file)
    }

    /// Builds a config from an already parsed TOML table (the simulator
    /// strips its own keys first).
    pub fn from_table(table: toml::Table, file: &str) -> Result<Config, ConfigError> {
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError {
                    file: file.into(),
                    key: display_path(e.path()),
                    message: e.inner().to_string().trim().replace('\n', " "),
                }
            })?;
        config.validate().map_err(|(key, message)| ConfigError {
            file: file.into(),
            key,
            message,
        })?;
        Ok(config)
    }

    /// Cross-field checks that serde cannot express. Pure: no I/O.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, span) in [
            ("server.header_timeout", self.server.header_timeout),
            ("server.body_timeout", self.server.body_timeout),
            ("server.request_timeout", self.server.request_timeout),
            ("staff.session", self.staff.session),
            ("staff.enrolment", self.staff.enrolment),
        ] {
            if span.0.is_zero() {
                return Err((key.into(), "must be longer than zero".into()));
            }
        }
        if let Some(issuer) = &self.staff.issuer
            && (issuer.trim().is_empty()
                || issuer.len() > 64
                || issuer.contains(':')
                || issuer.chars().any(char::is_control))
        {
            return Err((
                "staff.issuer".into(),
                "must be 1 to 64 characters without a colon (authenticator apps split the label at it)".into(),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(("server.max_connections".into(), "must be at least 1".into()));
        }
        let url = self.store.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err((
                "store.url".into(),
                "must start with sqlite:// or postgres://".into(),
            ));
        }
        self.email
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| {
                (
                    "email.from".to_string(),
                    format!("`{}` is not a mailbox ({e})", self.email.from),
                )
            })?;
        if let Some(smtp) = self.email.smtp.as_ref().filter(|s| s.expose() != "mx") {
            let parsed = url::Url::parse(smtp.expose())
                .map_err(|e| ("email.smtp".to_string(), format!("not a URL ({e})")))?;
            if !matches!(parsed.scheme(), "smtp" | "smtps") {
                return Err((
                    "email.smtp".into(),
                    "must be smtp://…, smtps://… or mx".into(),
                ));
            }
        }
        match (&self.email.smime_cert, &self.email.smime_key) {
            (Some(_), None) => {
                return Err((
                    "email.smime_key".into(),
                    "set it with email.smime_cert".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    "email.smime_cert".into(),
                    "set it with email.smime_key".into(),
                ));
            }
            (Some(_), Some(_)) if self.email.signing_key.is_some() => {
                return Err((
                    "email.smime_cert".into(),
                    "one signature per mail: with email.signing_key every mail is OpenPGP-signed; set one or the other".into(),
                ));
            }
            _ => {}
        }
        if let Some(a) = &self.keys.submission_address
            && a.parse::<lettre::Address>().is_err()
        {
            return Err((
                "keys.submission_address".into(),
                format!("`{a}` is not an email address"),
            ));
        }
        if self.keys.smtp_listen.is_some() && self.keys.submission_address.is_none() {
            return Err((
                "keys.submission_address".into(),
                "set it with keys.smtp_listen: the listener takes mail for that address only"
                    .into(),
            ));
        }
        self.channels.sms.validate()?;
        for (name, t) in &self.types {
            if t.max_segments.is_some_and(|m| !(1..=10).contains(&m)) {
                return Err((
                    format!("types.{name}.max_segments"),
                    "must be between 1 and 10".into(),
                ));
            }
        }
        if let Some(secret) = &self.channels.webhook.secret {
            crate::channels::webhook::decode_secret(secret.expose())
                .map_err(|e| ("channels.webhook.secret".to_string(), e.to_string()))?;
        }
        if let Some(apprise) = &self.channels.apprise {
            apprise
                .validate()
                .map_err(|(key, message)| (format!("channels.apprise.{key}"), message))?;
        }
        if let Some(letter) = &self.channels.letter {
            letter
                .validate()
                .map_err(|(key, message)| (format!("channels.letter.{key}"), message))?;
        }
        if let Some(x) = &self.channels.x {
            x.validate()
                .map_err(|(key, message)| (format!("channels.x.{key}"), message))?;
        }
        if let Some(whatsapp) = &self.channels.whatsapp {
            whatsapp
                .validate()
                .map_err(|(key, message)| (format!("channels.whatsapp.{key}"), message))?;
            if let Some(ty) = whatsapp
                .templates
                .keys()
                .find(|ty| !self.types.contains_key(*ty) && !ty.starts_with("kci."))
            {
                return Err((
                    format!("channels.whatsapp.templates.\"{ty}\""),
                    "is neither a configured type nor one of kci's own notices (kci.…)".into(),
                ));
            }
        }
        if !(1..=1000).contains(&self.store.pool_size) {
            return Err((
                "store.pool_size".into(),
                "must be between 1 and 1000 connections".into(),
            ));
        }
        if self.delivery.concurrency == 0 {
            return Err(("delivery.concurrency".into(), "must be at least 1".into()));
        }
        if self.delivery.max_attempts == 0 {
            return Err(("delivery.max_attempts".into(), "must be at least 1".into()));
        }
        // A claimed notice is started only while half its lease is left,
        // so that half must cover the slowest provider's timeout.
        let (slowest, timeout) = self.longest_delivery_timeout();
        if self.delivery.lease.0 < timeout * 2 {
            return Err((
                "delivery.lease".into(),
                format!(
                    "{} is too short to deliver within the channels' timeouts: {slowest} allows {}, so the lease must be at least {}",
                    self.delivery.lease,
                    Span(timeout),
                    Span(timeout * 2)
                ),
            ));
        }
        if self.keys.proof_window.0.is_zero()
            || self.keys.proof_window.0 > std::time::Duration::from_secs(7 * 86_400)
        {
            return Err((
                "keys.proof_window".into(),
                "must be longer than zero and at most 7d (a signed request is proof only while fresh)".into(),
            ));
        }
        for (name, t) in &self.types {
            let key = |field: &str| format!("types.\"{name}\".{field}");
            crate::model::check_id(name)
                .map_err(|e| (format!("types.\"{name}\""), e.to_string()))?;
            for partner in &t.cancels {
                if !self.types.contains_key(partner) {
                    return Err((
                        key("cancels"),
                        format!("`{partner}` is not a configured type"),
                    ));
                }
            }
            if let Some(flap) = &t.flap {
                if flap.threshold < 2 {
                    return Err((key("flap.threshold"), "must be at least 2".into()));
                }
                if flap.within.0.is_zero() {
                    return Err((key("flap.within"), "must be longer than zero".into()));
                }
            }
            if t.on_pair == OnPair::Summary {
                if t.cancels.is_empty() {
                    return Err((
                        key("on_pair"),
                        "a summary needs a pair: set `cancels`".into(),
                    ));
                }
                if t.pair_summary.is_none() {
                    return Err((
                        key("pair_summary"),
                        "required with on_pair = \"summary\"".into(),
                    ));
                }
            }
            for (field, source) in [
                ("short", &t.short),
                ("subject", &t.subject),
                ("body", &t.body),
                ("pair_summary", &t.pair_summary),
            ] {
                if let Some(source) = source {
                    crate::text::template::check(source).map_err(|e| (key(field), e))?;
                }
            }
        }
        Ok(())
    }

    /// The data directory used for the embedded defaults.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let url = self.store.url.expose();
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        Some(PathBuf::from(rest))
    }
}

fn display_path(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." || s.is_empty() {
        "(top level)".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key codes are hashed with comes from the config, or from a
    /// file beside the SQLite database made once and then kept; PostgreSQL
    /// without one is refused, naming the setting.
    #[test]
    fn the_code_key_lives_outside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/kci.db");
        let sqlite = format!("[store]\nurl = \"sqlite://{}\"\n", db.display());
        let first = Config::parse(&sqlite, "t")
            .unwrap()
            .with_code_key("t")
            .unwrap();
        let file = dir.path().join("data/code.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Config::parse(&sqlite, "t")
            .unwrap()
            .with_code_key("t")
            .unwrap();
        assert_eq!(first.code_key.to_hex(), again.code_key.to_hex());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            first.code_key.to_hex()
        );

        let hex = "ab".repeat(32);
        let given = Config::parse(
            &format!("[store]\nurl = \"postgres://h/db\"\ncode_key = \"{hex}\"\n"),
            "t",
        )
        .unwrap()
        .with_code_key("t")
        .unwrap();
        assert_eq!(given.code_key.to_hex(), hex);
        for bad in [
            "[store]\nurl = \"postgres://h/db\"\n",
            "[store]\nurl = \"postgres://h/db\"\ncode_key = \"abc\"\n",
            "[store]\nurl = \"postgres://h/db\"\ncode_key = \"zz\"\n",
        ] {
            let e = Config::parse(bad, "t")
                .unwrap()
                .with_code_key("t")
                .unwrap_err();
            assert_eq!(e.key, "store.code_key", "{bad}");
        }
        assert!(!format!("{given:?}").contains(&hex), "never in Debug");
    }

    #[test]
    fn retired_operator_keys_are_read_with_their_retirement() {
        let c = Config::parse(
            "[audit]\nprevious_keys = [{ key = \"/etc/kci/op-2025.pub\", until = \"2026-12-02T10:00:00Z\" }]\n",
            "t",
        )
        .unwrap();
        let p = &c.audit.previous_keys[0];
        assert_eq!(p.key, Path::new("/etc/kci/op-2025.pub"));
        assert_eq!(p.until.to_rfc3339(), "2026-12-02T10:00:00+00:00");
        let e = Config::parse(
            "[audit]\nprevious_keys = [{ key = \"/k\", until = \"yesterday\" }]\n",
            "t",
        )
        .unwrap_err();
        assert!(e.key.starts_with("audit"), "{e}");
    }

    /// Links in mails point to the public listener when there is one.
    #[test]
    fn links_point_to_the_public_listener() {
        let server: ServerConfig = toml::from_str(
            "listen = \"10.0.0.5:8460\"\n[public]\nlisten = \"0.0.0.0:8443\"\ntls_cert = \"c\"\ntls_key = \"k\"\n",
        )
        .unwrap();
        assert_eq!(server.public_base().as_str(), "https://0.0.0.0:8443/");
        let server: ServerConfig = toml::from_str("listen = \"10.0.0.5:8460\"\n").unwrap();
        assert_eq!(server.public_base().as_str(), "http://10.0.0.5:8460/");
    }

    #[test]
    fn embedded_defaults_load() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.server.listen.port(), 8460);
        assert!(c.sqlite_path().is_some());
        assert!(c.email.smtp.is_none());
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kci.example.toml");
        let c = Config::load(Some(&path)).unwrap();
        assert!(c.types.contains_key("line.down"));
    }

    /// The X and WhatsApp sections as the example shows them load; a
    /// template for a type that does not exist is named.
    #[test]
    fn x_and_whatsapp_sections_load_and_name_their_mistakes() {
        let x = "[channels.x]\nclient_id = \"M1M5R3BMVy13QmpScXkzTUt5OE46MTpjaQ\"\nrefresh_token = \"rt\"\ntimeout = \"10s\"\n";
        let wa = |ty: &str| {
            format!(
                "[channels.whatsapp]\nphone_number_id = \"106540352242922\"\naccess_token = \"EAA\"\n\
                 [channels.whatsapp.templates.\"{ty}\"]\nname = \"line_down\"\nlanguage = \"en_GB\"\n\
                 parameters = [\"service\", \"occurred_at | time\", \"data.ticket\"]\n\
                 [types.\"line.down\"]\nshort = \"x\"\n"
            )
        };
        let c = Config::parse(&format!("{x}{}", wa("line.down")), "kci.toml").unwrap();
        assert_eq!(c.channels.rate(crate::model::ChannelKind::X), None);
        // A delivery on X may take three timeouts.
        assert_eq!(
            c.longest_delivery_timeout(),
            ("channels.x.timeout", std::time::Duration::from_secs(30))
        );
        assert!(Config::parse(&wa("kci.change.pending"), "kci.toml").is_ok());
        let e = Config::parse(&wa("line.dwon"), "kci.toml").unwrap_err();
        assert_eq!(e.key, "channels.whatsapp.templates.\"line.dwon\"", "{e}");
        let e = Config::parse(
            &wa("line.down").replace("data.ticket", "data.("),
            "kci.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.key, "channels.whatsapp.templates.\"line.down\".parameters[2]",
            "{e}"
        );
        let e = Config::parse(
            "[channels.x]\nclient_id = \"\"\nrefresh_token = \"r\"\n",
            "kci.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "channels.x.client_id", "{e}");
    }

    /// A pool of no connections, or of more than any server takes, is
    /// refused naming the key; the default is 16.
    #[test]
    fn a_pool_size_out_of_range_is_refused() {
        for bad in ["0", "1001"] {
            let e =
                Config::parse(&format!("[store]\npool_size = {bad}\n"), "kci.toml").unwrap_err();
            assert_eq!(e.key, "store.pool_size", "{e}");
        }
        let c = Config::parse("[store]\npool_size = 4\n", "kci.toml").unwrap();
        assert_eq!(c.store.pool_size, 4);
        assert_eq!(Config::parse("", "kci.toml").unwrap().store.pool_size, 16);
    }

    /// With a lease shorter than twice the slowest channel's timeout a
    /// claimed notice could never be started in time, and nothing was
    /// ever delivered: refused, naming the key and what it must be.
    #[test]
    fn a_lease_too_short_for_the_channels_is_refused() {
        let e = Config::parse("[delivery]\nlease = \"10s\"\n", "kci.toml").unwrap_err();
        assert_eq!(e.key, "delivery.lease", "{e}");
        assert!(e.message.contains("at least 1m"), "{e}");
        let e = Config::parse(
            "[delivery]\nlease = \"2m\"\n[channels.webhook]\ntimeout = \"90s\"\n",
            "kci.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("channels.webhook.timeout"), "{e}");
        assert!(Config::parse("[delivery]\nlease = \"1m\"\n", "kci.toml").is_ok());
    }

    #[test]
    fn secrets_come_from_files_named_by_a_file_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg-url"), "postgres://kci:s3cret@db/kci\n").unwrap();
        std::fs::write(dir.path().join("token"), "f00dcafe").unwrap();
        let text = format!(
            "[store]\nurl_file = \"{}\"\n[channels.pushover]\ntoken_file = \"token\"\n",
            dir.path().join("pg-url").display()
        );
        let mut table: toml::Table = toml::from_str(&text).unwrap();
        read_secret_files(&mut table, "", Some(dir.path())).unwrap();
        assert_eq!(
            table["store"]["url"].as_str(),
            Some("postgres://kci:s3cret@db/kci")
        );
        assert!(table["store"].get("url_file").is_none());
        assert_eq!(
            table["channels"]["pushover"]["token"].as_str(),
            Some("f00dcafe")
        );
        // (config, key named, words)
        for (text, key, words) in [
            (
                "[store]\nurl = \"x\"\nurl_file = \"/etc/passwd\"\n",
                "store.url_file",
                "not both",
            ),
            (
                "[store]\nurl_file = \"/nonexistent/kci-url\"\n",
                "store.url_file",
                "cannot read /nonexistent/kci-url",
            ),
        ] {
            let mut table: toml::Table = toml::from_str(text).unwrap();
            let (k, m) = read_secret_files(&mut table, "", None).unwrap_err();
            assert_eq!(k, key);
            assert!(m.contains(words), "{m}");
        }
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::parse("[types.\"line.down\"]\nhold = \"soon\"\n", "kci.toml").unwrap_err();
        assert_eq!(e.file, "kci.toml");
        assert!(e.key.contains("line.down") && e.key.contains("hold"), "{e}");

        let e = Config::parse("[server]\nlisten = \"x\"\n", "kci.toml").unwrap_err();
        assert_eq!(e.key, "server.listen", "{e}");

        for key in ["header_timeout", "body_timeout", "request_timeout"] {
            let e = Config::parse(&format!("[server]\n{key} = \"0s\"\n"), "kci.toml").unwrap_err();
            assert_eq!(e.key, format!("server.{key}"), "{e}");
        }
        let e = Config::parse("[server]\nmax_connections = 0\n", "kci.toml").unwrap_err();
        assert_eq!(e.key, "server.max_connections", "{e}");

        let e = Config::parse("[serverr]\n", "kci.toml").unwrap_err();
        assert!(e.message.contains("serverr"), "{e}");

        let e = Config::parse("[types.a]\ncancels = [\"b\"]\n", "kci.toml").unwrap_err();
        assert_eq!(e.key, "types.\"a\".cancels");

        let e = Config::parse(
            "[types.a]\non_pair = \"summary\"\npair_summary = \"x\"\n",
            "kci.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "types.\"a\".on_pair", "{e}");
        let e = Config::parse(
            "[types.a]\n[types.b]\ncancels = [\"a\"]\non_pair = \"summary\"\n",
            "kci.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "types.\"b\".pair_summary", "{e}");
        let e = Config::parse("[types.a]\nshort = \"{{ oops\"\n", "kci.toml").unwrap_err();
        assert_eq!(e.key, "types.\"a\".short");

        let e = Config::parse("[defaults]\nwindow = \"Mo-Fr 99:00\"\n", "kci.toml").unwrap_err();
        assert_eq!(e.key, "defaults.window");

        let e = Config::parse("[defaults]\ntimezone = \"Mars/Olympus\"\n", "kci.toml").unwrap_err();
        assert_eq!(e.key, "defaults.timezone");
        // S/MIME: cert and key together, and not beside an OpenPGP key.
        let e = Config::parse("[email]\nsmime_cert = \"c.pem\"\n", "kci.toml").unwrap_err();
        assert_eq!(e.key, "email.smime_key");
        let e = Config::parse(
            "[email]\nsmime_cert = \"c.pem\"\nsmime_key = \"k.pem\"\nsigning_key = \"op.asc\"\n",
            "kci.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "email.smime_cert");
        assert!(e.message.contains("one signature per mail"), "{e}");
    }

    #[test]
    fn apprise_config_errors_name_the_key_not_the_url() {
        let e = Config::parse(
            "[channels.apprise]\nurl = \"http://127.0.0.1:8000\"\nurls = [\"json://ok\", \"a.b=tgram://hunter7/1\"]\n",
            "kci.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "channels.apprise.urls[1]");
        assert!(!e.to_string().contains("hunter7"), "{e}");
        let c = Config::parse(
            "[channels.apprise]\nurl = \"http://127.0.0.1:8000\"\nkey = \"kci-ops\"\nrate = \"1/s\"\n",
            "kci.toml",
        )
        .unwrap();
        assert!(
            c.channels
                .rate(crate::model::ChannelKind::Apprise)
                .is_some()
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::parse(
            "[email]\nsmtp = \"smtp://u:hunter2@127.0.0.1:25\"\n\
             [channels.webhook]\nsecret = \"whsec_aHVudGVyMmh1bnRlcjJodW50ZXIy\"\n\
             [channels.ntfy]\ntoken = \"tk_hunter3hunter3\"\n\
             [channels.telegram]\nbot_token = \"110201543:hunter4hunter4\"\n\
             [channels.apprise]\nurl = \"http://127.0.0.1:8000\"\n\
             urls = [\"ops=tgram://110201543:hunter5hunter5/1/\"]\npassword = \"hunter6\"\n",
            "t",
        )
        .unwrap();
        let dump = format!("{c:?}");
        for secret in [
            "hunter2", "aHVudGVy", "hunter3", "hunter4", "hunter5", "hunter6",
        ] {
            assert!(!dump.contains(secret), "{secret} leaked");
        }
    }
}
