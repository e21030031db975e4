//! The key registry (DESIGN.md §6 and §7), over the store and the OpenPGP
//! checks: a submitted key is cleaned and stored `pending`, and a
//! single-use link is mailed encrypted to it, so only the holder of its
//! secret key who reads that mailbox can activate it. Replacing or removing
//! an active key is a protected change: it applies at once only with proof
//! from the current key's holder (a link encrypted to the current key, or a
//! fresh request signed by it, used once) — and, for a replacement, from
//! the new key's; without, it stays pending and nothing applies it early.
//!
//! What each step does to the stored keys and changes is decided by the
//! pure rules in [`rules`]; this module builds the mails, counts the limits
//! and says who is told.

pub mod rules;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{
    Change, ChangeKind, ChangeState, Confirmed, Destination, EmailAddr, KeyRecord, KeyRequest,
    KeyState, KeyToken, KeyWrite, Message, Priority, ProofUse, Refused, SECRET_MARK, TokenPurpose,
};
use crate::pgp::{CleanKey, KeyRefusal};
use crate::store::{Notification, Store};
use chrono::{DateTime, Duration, Utc};

/// How long a key link stays valid.
pub const LINK_LIFETIME_HOURS: i64 = 24;

/// What a submission led to.
#[derive(Debug, Clone, PartialEq)]
// Built once per request and moved a few times: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Submitted {
    /// Stored pending; the confirmation link went to the key.
    Pending(CleanKey),
    /// A newer copy of the address's active key: merged into it at once
    /// (nothing it adds can weaken it, and nothing the stored copy knew,
    /// such as a revocation, is lost).
    Refreshed(CleanKey),
    /// The address has another active key: a replacement waits for proof.
    ChangeRequested { key: CleanKey, change: Change },
    /// Refused; the reason says why.
    Refused(KeyRefusal),
    /// Not recorded: a replayed proof, or too many changes waiting.
    NotRecorded(Refused),
    /// Over a limit (`by`: `address` or `source`); nothing was recorded or
    /// sent. Allowed again from `retry_at`.
    Limited {
        by: &'static str,
        retry_at: DateTime<Utc>,
    },
}

/// Where a request came from: how it is recorded (`api`, `mail`), and the
/// source its rate is limited by (`None`: no source kci can trust, such as
/// mail piped in by the MTA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub channel: &'static str,
    pub source: Option<String>,
    /// Who asks, as a change records it (`token:<id>`, `staff:<name>`,
    /// `mail:<address>`).
    pub requested_by: String,
}

/// What a removal request led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Removal {
    /// The address has no active key.
    NoKey,
    /// Waiting for proof (or its cooling-off period).
    Requested(Change),
    /// Applied at once: the request carried the holder's proof.
    Applied(Change),
    NotRecorded(Refused),
    /// Over the limit of requests per address (or source).
    Limited {
        by: &'static str,
        retry_at: DateTime<Utc>,
    },
}

pub struct Registry<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    pub now: DateTime<Utc>,
    /// Where limits hit are counted (a server's; `None` for the CLI).
    pub metrics: Option<&'a Metrics>,
}

/// A fresh link secret (256 bits from the OS generator, URL-safe) and the
/// hash kept of it.
fn new_token() -> (String, String) {
    use base64::Engine;
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator");
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

/// A fresh link secret (256 bits from the OS generator, URL-safe).
pub fn new_link_secret() -> String {
    new_token().0
}

/// How a link secret is kept at rest.
pub fn token_hash(token: &str) -> String {
    crate::model::sha256_hex(format!("kci-key-link\u{1f}{token}").as_bytes())
}

/// An address as the registry keys it ([`EmailAddr`]'s normal form).
pub fn normalise(address: &str) -> Option<String> {
    EmailAddr::parse(address)
        .ok()
        .map(|a| a.as_str().to_string())
}

/// The `mailto:` URI of a normalised address, as destinations store it.
fn mailto(address: &str) -> String {
    EmailAddr::parse(address).map_or_else(|_| format!("mailto:{address}"), |a| a.mailto())
}

/// A mail from kci to a registry address (which need not be any
/// account's destination), keyed `<kind>:<address>`.
pub fn address_mail(
    address: &str,
    kind: &str,
    message: Message,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Notification {
    let dest =
        Destination {
            id: String::new(),
            contact: String::new(),
            uri: crate::model::DestinationUri::Mailto(EmailAddr::parse(address).unwrap_or_else(
                |_| EmailAddr::parse("invalid@invalid.invalid").expect("an address"),
            )),
            prefs: Default::default(),
            verified: true,
            unhealthy_since: None,
        };
    let mut n = Notification::own("", &dest, kind, Priority::High, message, now, expires_at);
    n.key = format!("{kind}:{address}");
    n
}

impl Registry<'_> {
    /// `n` carrying link secret `token`, sealed: the store keeps no link
    /// in clear (`trust::seal::AtRest`).
    fn with_link(&self, n: Notification, token: &str) -> Notification {
        crate::trust::seal::AtRest::new(&self.config.code_key).with_secret(n, token)
    }

    /// The link a key mail carries, its secret at [`SECRET_MARK`]: the
    /// secret itself is rendered in when the mail goes out.
    fn link(&self) -> String {
        let mut base = self.config.server.public_base().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        format!("{base}v1/keys/confirm/{SECRET_MARK}")
    }

    fn operator(&self) -> &str {
        self.config.email.sender_name()
    }

    /// A mail from kci to `address` about its keys; `encrypt_to` names
    /// the key it must be encrypted to (never sent in clear when set).
    fn mail(
        &self,
        address: &str,
        kind: &str,
        subject: String,
        body: String,
        encrypt_to: Option<&str>,
    ) -> Notification {
        address_mail(
            address,
            kind,
            Message {
                short: subject.clone(),
                subject,
                body,
                encrypt_to: encrypt_to.map(str::to_string),
            },
            self.now,
            Some(self.now + Duration::hours(LINK_LIFETIME_HOURS)),
        )
    }

    fn record(&self, address: &str, key: &CleanKey, channel: &str) -> KeyRecord {
        KeyRecord {
            address: address.to_string(),
            fingerprint: key.fingerprint.clone(),
            armored: key.armored.clone(),
            state: KeyState::Pending,
            source: channel.to_string(),
            submitted_at: self.now,
            activated_at: None,
            expires_at: key.expires_at,
        }
    }

    fn token(
        &self,
        hash: String,
        address: &str,
        fingerprint: &str,
        purpose: TokenPurpose,
        change: Option<&str>,
    ) -> KeyToken {
        KeyToken {
            hash,
            address: address.to_string(),
            fingerprint: fingerprint.to_string(),
            purpose,
            change: change.map(str::to_string),
            expires_at: self.now + Duration::hours(LINK_LIFETIME_HOURS),
        }
    }

    /// The highest security level among the accounts that use `address`
    /// (standard if none does), and every verified destination of theirs:
    /// who is told of a change to its key.
    async fn concerned(
        &self,
        address: &str,
    ) -> crate::store::Result<(crate::model::SecurityLevel, Vec<crate::model::Audience>)> {
        let mut level = crate::model::SecurityLevel::Standard;
        let mut audience: Vec<crate::model::Audience> = Vec::new();
        for (account, _) in self.store.contacts_with_uri(&mailto(address)).await? {
            let Some(view) = self.store.account_view(&account).await? else {
                continue;
            };
            level = level.max(view.account.security_level);
            for d in view.contacts.iter().flat_map(|c| &c.destinations) {
                if d.usable() && !audience.iter().any(|a| a.destination.id == d.id) {
                    audience.push(crate::model::Audience {
                        account: account.clone(),
                        destination: d.clone(),
                    });
                }
            }
        }
        Ok((level, audience))
    }

    /// A pending change without proof: its reminders (with veto links) to
    /// everyone concerned go with it.
    fn reminders(&self, change: &Change, audience: &[crate::model::Audience]) -> Vec<Notification> {
        let mut base = self.config.server.public_base().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        crate::text::changes::ChangeTexts {
            operator: self.operator().to_string(),
            base,
        }
        .reminders(change, audience)
    }

    /// What the audit log records of a request.
    fn audit(
        &self,
        origin: &Origin,
        action: &str,
        address: &str,
        change: Option<&Change>,
        outcome: &str,
    ) -> crate::model::audit::AuditDraft {
        crate::model::audit::AuditDraft {
            actor: origin.requested_by.clone(),
            action: action.to_string(),
            account: None,
            address: Some(address.to_string()),
            change: change.map(|c| c.id.clone()),
            ticket: None,
            source: origin.source.clone(),
            outcome: outcome.to_string(),
            detail: None,
        }
    }

    fn change(
        &self,
        address: &str,
        kind: ChangeKind,
        fingerprint: Option<&str>,
        proof: Option<&str>,
        origin: &Origin,
        level: crate::model::SecurityLevel,
    ) -> Change {
        let cooling = self.config.cooling_off(level);
        // Times as stored (milliseconds), so the change answered now reads
        // the same as the change read back later.
        use chrono::SubsecRound;
        let now = self.now.trunc_subsecs(3);
        Change {
            id: crate::store::new_id(),
            kind,
            account: None,
            address: Some(address.to_string()),
            state: ChangeState::Pending,
            proof: proof.map(str::to_string),
            requested_at: now,
            requested_by: origin.requested_by.clone(),
            not_before: now + Duration::from_std(cooling).unwrap_or(Duration::days(30)),
            approvals: Vec::new(),
            approvals_needed: self.config.approvals_needed(level),
            reason: None,
            subject: crate::model::Subject {
                fingerprint: fingerprint.map(str::to_string),
                ..Default::default()
            },
            proven_current: proof.is_some(),
            proven_new: false,
            proof_code: None,
            factors: Vec::new(),
        }
    }

    /// Counts an accepted submission against the limits per address and
    /// per source; `Err` with the limit hit.
    async fn within_limits(
        &self,
        address: &str,
        origin: &Origin,
    ) -> crate::store::Result<Result<(), Submitted>> {
        use crate::model::throttle::Counted;
        let keys = &self.config.keys;
        let mut checks = vec![("address", address.to_string(), keys.submissions_per_address)];
        if let Some(source) = &origin.source {
            checks.push(("source", source.clone(), keys.submissions_per_source));
        }
        for (by, key, cap) in checks {
            let bucket = format!("key_submissions:{by}");
            if let Counted::Refused { retry_at } =
                self.store.throttle(&bucket, &key, cap, self.now).await?
            {
                if let Some(m) = self.metrics {
                    m.limit_hit("key_submissions", by);
                }
                return Ok(Err(Submitted::Limited { by, retry_at }));
            }
        }
        Ok(Ok(()))
    }

    /// The mail carrying the holder's approval link for `change`,
    /// encrypted to the active key `active`.
    fn approval_mail(&self, address: &str, change: &Change, active: &str) -> Notification {
        let op = self.operator();
        let what = match (&change.kind, &change.subject.fingerprint) {
            (ChangeKind::KeyReplace, Some(new)) => format!(
                "Someone asked {op} to encrypt the notices for {address} to a new key,\n\n    {new}\n\n\
                 in place of your current key\n\n    {active}"
            ),
            _ => format!(
                "Someone asked {op} to stop encrypting the notices for {address} (to your key {active})."
            ),
        };
        self.mail(
            address,
            "kci.key.approve",
            if change.kind == ChangeKind::KeyReplace {
                format!("A request to replace your OpenPGP key at {op}")
            } else {
                format!("A request to stop encrypting your notices from {op}")
            },
            format!(
                "{what}\n\nIf this was you, approve it within {LINK_LIFETIME_HOURS} hours with this link:\n\n    {link}\n\n\
                 If it was not you, stop it with the link in the notices sent to every address and number on your account: \
                 without your approval the change waits until {when} at the earliest, and you will be told again before then.\n",
                link = self.link(),
                when = crate::model::fmt_time(change.not_before),
            ),
            Some(active),
        )
    }

    /// Takes a key submitted for `address`. `proof`: the request came
    /// signed by the address's active key, fresh (proof from its holder,
    /// recorded so it is never accepted twice).
    pub async fn submit(
        &self,
        address: &str,
        data: &[u8],
        origin: &Origin,
        proof: Option<ProofUse>,
    ) -> crate::store::Result<Submitted> {
        let status = self.store.key_status(address).await?;
        // A newer copy of the active key: merged into it at once.
        if let Some(active) = &status.active
            && let Ok(merged) = crate::pgp::merge_public(&active.armored, data)
        {
            return Ok(
                match crate::pgp::check_submission(merged.as_bytes(), address, self.now) {
                    Ok(clean) => {
                        self.store
                            .refresh_key(
                                address,
                                &clean.fingerprint,
                                &clean.armored,
                                clean.expires_at,
                            )
                            .await?;
                        Submitted::Refreshed(clean)
                    }
                    // Revoked or expired now: kept so, and nothing more is
                    // encrypted to it (such mail fails rather than going out
                    // in clear); a new key replaces it as a change.
                    Err(refusal @ (KeyRefusal::Revoked(_) | KeyRefusal::Expired(_))) => {
                        self.store
                            .refresh_key(address, &active.fingerprint, &merged, active.expires_at)
                            .await?;
                        Submitted::Refused(refusal)
                    }
                    Err(refusal) => Submitted::Refused(refusal),
                },
            );
        }
        let key = match crate::pgp::check_submission(data, address, self.now) {
            Ok(k) => k,
            Err(refusal) => return Ok(Submitted::Refused(refusal)),
        };
        if let Err(limited) = self.within_limits(address, origin).await? {
            return Ok(limited);
        }
        let op = self.operator();
        let (token, hash) = new_token();
        let confirm = self
            .mail(
                address,
                "kci.key.confirm",
                format!("Confirm your OpenPGP key for notices from {op}"),
                format!(
                    "Someone asked {op} to encrypt the notices for {address} to the OpenPGP key\n\n    {fpr}\n\n\
                     You could read this because you hold that key. To confirm, open this link within {LINK_LIFETIME_HOURS} hours:\n\n    {link}\n\n\
                     If you did not ask for this, ignore this message: nothing changes.\n",
                    fpr = key.fingerprint,
                    link = self.link(),
                ),
                Some(&key.fingerprint),
            );
        let confirm = self.with_link(confirm, &token);
        let mut request = KeyRequest {
            address: address.to_string(),
            key: Some(self.record(address, &key, origin.channel)),
            change: None,
            links: vec![self.token(
                hash,
                address,
                &key.fingerprint,
                TokenPurpose::Activate,
                None,
            )],
            notices: vec![confirm],
            proof: None,
            audit: Vec::new(),
        };
        let change = match status.active {
            Some(active) if active.fingerprint != key.fingerprint => {
                let (level, audience) = self.concerned(address).await?;
                let change = self.change(
                    address,
                    ChangeKind::KeyReplace,
                    Some(&key.fingerprint),
                    proof.as_ref().map(|_| "signed_mail"),
                    origin,
                    level,
                );
                request.audit.push(self.audit(
                    origin,
                    "change.requested",
                    address,
                    Some(&change),
                    "pending",
                ));
                if proof.is_none() {
                    request.notices.extend(self.reminders(&change, &audience));
                    let (approve, hash) = new_token();
                    request.links.push(self.token(
                        hash,
                        address,
                        &active.fingerprint,
                        TokenPurpose::Approve,
                        Some(&change.id),
                    ));
                    let mail = self.approval_mail(address, &change, &active.fingerprint);
                    request.notices.push(self.with_link(mail, &approve));
                }
                request.proof = proof;
                request.change = Some(change.clone());
                Some(change)
            }
            _ => {
                request
                    .audit
                    .push(self.audit(origin, "key.submitted", address, None, "pending"));
                None
            }
        };
        match self
            .store
            .record_key_request(&request, self.now, rules::admit_change)
            .await?
        {
            Err(refused) => Ok(Submitted::NotRecorded(refused)),
            Ok(_) => Ok(match change {
                Some(change) => Submitted::ChangeRequested { key, change },
                None => Submitted::Pending(key),
            }),
        }
    }

    /// Asks to remove the address's active key (mail goes unencrypted
    /// afterwards). With `proof` (a fresh request signed by that key) it
    /// applies at once; without, the holder is mailed a link to approve it
    /// and it waits.
    pub async fn remove(
        &self,
        address: &str,
        proof: Option<ProofUse>,
        origin: &Origin,
    ) -> crate::store::Result<Removal> {
        let Some(active) = self.store.active_key(address).await? else {
            return Ok(Removal::NoKey);
        };
        if let Err(Submitted::Limited { by, retry_at }) =
            self.within_limits(address, origin).await?
        {
            return Ok(Removal::Limited { by, retry_at });
        }
        let (level, audience) = self.concerned(address).await?;
        let change = self.change(
            address,
            ChangeKind::KeyRemove,
            None,
            proof.as_ref().map(|_| "signed_mail"),
            origin,
            level,
        );
        let mut request = KeyRequest {
            address: address.to_string(),
            key: None,
            change: Some(change.clone()),
            links: Vec::new(),
            notices: Vec::new(),
            proof: None,
            audit: vec![self.audit(
                origin,
                "change.requested",
                address,
                Some(&change),
                if proof.is_some() { "proven" } else { "pending" },
            )],
        };
        if proof.is_none() {
            request.notices.extend(self.reminders(&change, &audience));
            let (approve, hash) = new_token();
            request.links.push(self.token(
                hash,
                address,
                &active.fingerprint,
                TokenPurpose::Approve,
                Some(&change.id),
            ));
            let mail = self.approval_mail(address, &change, &active.fingerprint);
            request.notices.push(self.with_link(mail, &approve));
        }
        request.proof = proof;
        let writes = match self
            .store
            .record_key_request(&request, self.now, rules::admit_change)
            .await?
        {
            Ok(writes) => writes,
            Err(refused) => return Ok(Removal::NotRecorded(refused)),
        };
        match applied(&writes) {
            Some(change) => {
                self.tell_applied(&change).await?;
                Ok(Removal::Applied(change))
            }
            None => Ok(Removal::Requested(change)),
        }
    }

    /// Answers a submission kci cannot take, politely, saying why — to the
    /// sender only, never with a link, and at most once an hour per
    /// address (the sender of a mail can be forged: kci must not become a
    /// way to flood someone). `why` is kci's own words, never text from the
    /// submission: this mail is signed by the operator. `false` when it
    /// kept quiet.
    pub async fn refuse(&self, address: &str, why: &str) -> crate::store::Result<bool> {
        let once_an_hour = crate::model::Cap {
            count: 1,
            per: crate::model::Span(std::time::Duration::from_secs(3600)),
        };
        if let crate::model::throttle::Counted::Refused { .. } = self
            .store
            .throttle("key_refusals", address, once_an_hour, self.now)
            .await?
        {
            return Ok(false);
        }
        let op = self.operator();
        let mail = self.mail(
            address,
            "kci.key.refused",
            format!("Your key for notices from {op} was not registered"),
            format!(
                "Thank you for sending your key to {op}. We could not register it: {why}.\n\n\
                 Nothing has changed for {address}. You can send a corrected key to the same address.\n"
            ),
            None,
        );
        self.store.enqueue(&mail).await?;
        Ok(true)
    }

    /// Follows a link; tells the address what changed.
    pub async fn confirm(&self, token: &str) -> crate::store::Result<Confirmed> {
        let outcome = self
            .store
            .follow_key_link(&token_hash(token), self.now, rules::follow_link)
            .await?;
        match &outcome {
            Confirmed::Activated(k) => {
                let op = self.operator();
                let n = self.mail(
                    &k.address,
                    "kci.key.active",
                    format!("Your notices from {op} are now encrypted"),
                    format!(
                        "From now on, mail from {op} to {} is encrypted to your key\n\n    {}\n",
                        k.address, k.fingerprint
                    ),
                    Some(&k.fingerprint),
                );
                self.store.enqueue(&n).await?;
            }
            Confirmed::Applied(c) => self.tell_applied(c).await?,
            Confirmed::Proven(_) | Confirmed::Invalid => {}
        }
        Ok(outcome)
    }

    /// Tells the address, and every verified destination of every contact
    /// using it, that `change` was applied.
    async fn tell_applied(&self, c: &Change) -> crate::store::Result<()> {
        let op = self.operator();
        let address = c.address.as_deref().unwrap_or_default();
        let n = match (&c.kind, &c.subject.fingerprint) {
            (ChangeKind::KeyReplace, Some(fpr)) => self.mail(
                address,
                "kci.key.active",
                format!("Your key for notices from {op} was replaced"),
                format!(
                    "From now on, mail from {op} to {} is encrypted to the key\n\n    {fpr}\n\nin place of the one before.\n",
                    address
                ),
                Some(fpr),
            ),
            _ => self.mail(
                address,
                "kci.key.removed",
                format!("Your notices from {op} are no longer encrypted"),
                format!(
                    "The key for {} was removed, as asked with proof from your current key. Mail from {op} to this address is no longer encrypted.\n",
                    address
                ),
                None,
            ),
        };
        self.store.enqueue(&n).await?;
        self.tell_everywhere(c).await
    }

    /// DESIGN.md §7: a change applied with proof is told on every verified
    /// destination of every contact that uses the address, not only to
    /// the address itself — so a change its owner did not make shows up
    /// where the changer cannot hide it.
    async fn tell_everywhere(&self, change: &Change) -> crate::store::Result<()> {
        let op = self.operator();
        let address = change.address.as_deref().unwrap_or_default();
        let what = match (&change.kind, &change.subject.fingerprint) {
            (ChangeKind::KeyReplace, Some(fpr)) => {
                format!("Mail from {op} to {address} is now encrypted to a new key ({fpr}).")
            }
            _ => format!("Mail from {op} to {address} is no longer encrypted."),
        };
        let short = format!("{what} If you did not ask for this, contact {op} now.");
        let uri = mailto(address);
        for (account, contact) in self.store.contacts_with_uri(&uri).await? {
            let Some(view) = self.store.account_view(&account).await? else {
                continue;
            };
            let others = view
                .contacts
                .iter()
                .filter(|c| c.contact.id == contact)
                .flat_map(|c| &c.destinations)
                .filter(|d| d.usable() && d.uri.to_string() != uri);
            for dest in others {
                let mut n = Notification::own(
                    &account,
                    dest,
                    "kci.key.changed",
                    Priority::High,
                    Message {
                        short: short.clone(),
                        subject: format!("Your OpenPGP key at {op} changed"),
                        body: format!(
                            "{short}\n\nThe change was confirmed with the key that was active, so it took effect at once.\n"
                        ),
                        encrypt_to: None,
                    },
                    self.now,
                    None,
                );
                n.key = format!("kci.key.changed:{}", change.id);
                self.store.enqueue(&n).await?;
            }
        }
        Ok(())
    }
}

/// The change the writes applied, if they applied one.
fn applied(writes: &[KeyWrite]) -> Option<Change> {
    writes.iter().find_map(|w| match w {
        KeyWrite::Change(c) if c.state == ChangeState::Applied => Some(c.clone()),
        _ => None,
    })
}
