//! Staff logins (DESIGN.md §9): enrolment with the code of `kci staff
//! enrol`, and logins with a password and a TOTP code that give a session
//! token. The decisions are `trust::staff`'s pure rules; this runs them in
//! order — the bounds, the failure counts, the slow argon2 work outside
//! any transaction, the store's compare-and-set — and audits each outcome.

use crate::config::Config;
use crate::model::audit::AuditDraft;
use crate::model::{Role, Scope};
use crate::store::{Result, Store};
use crate::trust::seal::Sealer;
use crate::trust::staff::{self as rules, Refusal, Shown};
use crate::trust::totp;
use chrono::{DateTime, Utc};
use std::sync::LazyLock;

/// The failure-count bucket of a staff name, and of a client address.
const BY_NAME: &str = "staff_logins";
const BY_SOURCE: &str = "staff_login_sources";

/// What a refused attempt tells its caller: only that, and when to try
/// again if they were counted out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    /// Refused; the reason went to the audit log.
    Refused,
    /// Too many failures for this name or address until then.
    Limited(Limit),
}

/// The failure count that refused an attempt, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// In words: "staff member" or "address".
    pub by: &'static str,
    /// As the `by` label of `kci_limited_total{what="staff_logins"}`:
    /// `name` or `source`.
    pub label: &'static str,
    pub retry_at: DateTime<Utc>,
}

/// One failure count an attempt falls under.
struct Count<'k> {
    bucket: &'static str,
    by: &'static str,
    label: &'static str,
    key: &'k str,
    cap: crate::model::Cap,
}

/// An enrolment done: what the authenticator app takes (shown once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The TOTP secret, base32.
    pub secret: String,
    /// The same as an `otpauth://` URI (a QR code's content).
    pub uri: String,
}

/// A login: its bearer token (shown once) and what it allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub token: String,
    pub id: String,
    pub role: Role,
    pub scopes: Vec<Scope>,
    pub expires_at: DateTime<Utc>,
}

/// An enrolment code issued by `kci staff enrol` (shown once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// A hash no password matches, verified for a name that has none, so
/// that a wrong name costs what a wrong password does.
static NO_PASSWORD: LazyLock<String> = LazyLock::new(|| {
    crate::trust::codes::argon2_hash(&rules::new_enrolment_code()).unwrap_or_default()
});

/// The logins of one moment.
pub struct Logins<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    pub now: DateTime<Utc>,
}

impl Logins<'_> {
    fn sealer(&self) -> Sealer {
        Sealer::new(&self.config.code_key, "staff totp secret")
    }

    async fn audit(
        &self,
        name: &str,
        action: &str,
        outcome: &str,
        detail: Option<String>,
        source: Option<&str>,
    ) -> Result<()> {
        let mut d = AuditDraft::new(&format!("staff:{name}"), action, outcome);
        d.detail = detail;
        d.source = source.map(str::to_string);
        self.store.audit(d, self.now).await?;
        Ok(())
    }

    /// Issues `name` a new enrolment code (`kci staff enrol`): what they
    /// logged in with stops working, and so do their sessions. `None` if
    /// there is no such enabled staff member.
    pub async fn issue(&self, name: &str) -> Result<Option<Issued>> {
        let code = rules::new_enrolment_code();
        let expires_at = self.now + self.config.staff.enrolment.chrono();
        let hash = rules::enrolment_hash(&code);
        if !self
            .store
            .issue_enrolment(name, &hash, expires_at, self.now)
            .await?
        {
            return Ok(None);
        }
        self.audit(name, "staff.enrolment_issued", "ok", None, Some("cli"))
            .await?;
        Ok(Some(Issued { code, expires_at }))
    }

    /// The failure counts of an attempt by `name` from `source`: per name,
    /// and per address when it is known.
    fn counts<'k>(&self, name: &'k str, source: Option<&'k str>) -> Vec<Count<'k>> {
        let staff = &self.config.staff;
        let by_name = Count {
            bucket: BY_NAME,
            by: "staff member",
            label: "name",
            key: name,
            cap: staff.failed_logins,
        };
        let by_source = source.map(|key| Count {
            bucket: BY_SOURCE,
            by: "address",
            label: "source",
            key,
            cap: staff.failed_logins_per_source,
        });
        std::iter::once(by_name).chain(by_source).collect()
    }

    /// Whether `name` or `source` has failed too often to try now.
    async fn limited(&self, name: &str, source: Option<&str>) -> Result<Option<Limit>> {
        for c in self.counts(name, source) {
            if let Err(retry_at) = self
                .store
                .throttle_peek(c.bucket, c.key, c.cap, self.now)
                .await?
            {
                return Ok(Some(Limit {
                    by: c.by,
                    label: c.label,
                    retry_at,
                }));
            }
        }
        Ok(None)
    }

    /// Counts a failure against `name` and `source`, and audits why.
    async fn failed(
        &self,
        name: &str,
        source: Option<&str>,
        action: &str,
        why: Refusal,
    ) -> Result<()> {
        for c in self.counts(name, source) {
            self.store
                .throttle(c.bucket, c.key, c.cap, self.now)
                .await?;
        }
        tracing::warn!(staff = name, source, reason = %why, "{action} refused");
        self.audit(name, action, "refused", Some(why.as_str().into()), source)
            .await
    }

    /// Enrols `name` with the enrolment `code` they were given, setting
    /// `password` (checked by the caller with [`rules::check_password`]):
    /// the TOTP secret for their authenticator.
    pub async fn enrol(
        &self,
        name: &str,
        code: &str,
        password: &str,
        source: Option<&str>,
    ) -> Result<Outcome<Enrolled>> {
        if let Some(limit) = self.limited(name, source).await? {
            return Ok(Outcome::Limited(limit));
        }
        let hash = rules::enrolment_hash(code);
        let (staff, login) = self.store.staff_login(name).await?;
        if let Err(why) = rules::may_enrol(staff.as_ref(), login.as_ref(), &hash, self.now) {
            self.failed(name, source, "staff.enrol", why).await?;
            return Ok(Outcome::Refused);
        }
        let password = password.to_string();
        let password_hash =
            crate::slow::argon2(move || crate::trust::codes::argon2_hash(&password))
                .await?
                .map_err(crate::store::StoreError::Unavailable)?;
        let secret = rules::new_totp_secret();
        let sealed = self
            .sealer()
            .seal(&totp::base32(&secret), &rules::seal_context(name))
            .map_err(|e| crate::store::StoreError::Unavailable(e.to_string()))?;
        if !self
            .store
            .enrol_staff(name, &hash, &password_hash, &sealed, self.now)
            .await?
        {
            // Used by a request that came first, or expired meanwhile.
            self.failed(name, source, "staff.enrol", Refusal::NoEnrolment)
                .await?;
            return Ok(Outcome::Refused);
        }
        self.audit(name, "staff.enrolled", "ok", None, source)
            .await?;
        Ok(Outcome::Done(Enrolled {
            secret: totp::base32(&secret),
            uri: totp::uri(&self.config.staff.issuer(&self.config.email), name, &secret),
        }))
    }

    /// Logs `name` in with `password` and the authenticator's `code`.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        code: &str,
        source: Option<&str>,
    ) -> Result<Outcome<Session>> {
        if let Some(limit) = self.limited(name, source).await? {
            return Ok(Outcome::Limited(limit));
        }
        let (staff, login) = self.store.staff_login(name).await?;
        // The password is checked whatever else is wrong, against a hash
        // no password matches if there is none: every refusal costs the
        // same.
        let phc = login.as_ref().and_then(|l| l.password_hash.clone());
        let typed = password.to_string();
        let password_ok = crate::slow::argon2(move || {
            let phc = phc.as_deref().unwrap_or(NO_PASSWORD.as_str());
            crate::trust::codes::argon2_matches(&typed, phc)
        })
        .await?;
        let step = login.as_ref().and_then(|l| {
            let sealed = l.totp_secret.as_deref()?;
            let opened = self
                .sealer()
                .open(sealed, &rules::seal_context(name))
                .inspect_err(|e| tracing::error!(staff = name, error = %e, "a staff TOTP secret does not open: re-enrol them with `kci staff enrol`"))
                .ok()?;
            let secret = totp::base32_decode(&opened)?;
            totp::verify(&secret, code, self.now.timestamp(), l.totp_last_step)
        });
        let shown = Shown { password_ok, step };
        let (staff, step) = match rules::may_log_in(staff.as_ref(), login.as_ref(), shown) {
            Ok(ok) => ok,
            Err(why) => {
                self.failed(name, source, "staff.login", why).await?;
                return Ok(Outcome::Refused);
            }
        };
        let sealed = login
            .as_ref()
            .and_then(|l| l.totp_secret.as_deref())
            .unwrap_or_default();
        let token = crate::trust::codes::new_token();
        let record = rules::session(staff, self.now, self.config.staff.session.chrono());
        let hash = crate::trust::codes::hash_token(&token);
        if !self
            .store
            .start_session(name, step, sealed, &record, &hash)
            .await?
        {
            // The same code used by a login that came first: a replay.
            self.failed(name, source, "staff.login", Refusal::WrongCode)
                .await?;
            return Ok(Outcome::Refused);
        }
        self.audit(
            name,
            "staff.login",
            "ok",
            Some(format!("session:{}", record.id)),
            source,
        )
        .await?;
        Ok(Outcome::Done(Session {
            token,
            id: record.id,
            role: staff.role,
            scopes: record.scopes,
            expires_at: self.now + self.config.staff.session.chrono(),
        }))
    }
}
