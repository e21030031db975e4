//! The key registry's rules (DESIGN.md §6 and §7), over the store and the
//! OpenPGP checks: a submitted key is cleaned and stored `pending`, and a
//! single-use link is mailed encrypted to it, so only the holder of its
//! secret key who reads that mailbox can activate it. Replacing or removing
//! an active key is a protected change: it applies at once only with proof
//! from the current key's holder (a link encrypted to the current key, or a
//! request signed by it) — and, for a replacement, from the new key's;
//! without, it stays pending and nothing applies it early.

use crate::config::Config;
use crate::model::{
    ChangeKind, ChangeState, Confirmed, Destination, KeyChange, KeyRecord, KeyState, KeyToken,
    Message, Priority, TokenPurpose,
};
use crate::pgp::{CleanKey, KeyRefusal};
use crate::store::{Notification, Store};
use chrono::{DateTime, Duration, Utc};

/// How long a key link stays valid.
pub const LINK_LIFETIME_HOURS: i64 = 24;

/// What a submission led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Stored pending; the confirmation link went to the key.
    Pending(CleanKey),
    /// A newer copy of the address's active key: merged into it at once
    /// (nothing it adds can weaken it, and nothing the stored copy knew,
    /// such as a revocation, is lost).
    Refreshed(CleanKey),
    /// The address has another active key: a replacement waits for proof.
    ChangeRequested { key: CleanKey, change: KeyChange },
    /// Refused; the reason says why.
    Refused(KeyRefusal),
}

pub struct Registry<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    pub now: DateTime<Utc>,
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

/// How a link secret is kept at rest.
pub fn token_hash(token: &str) -> String {
    crate::store::sha256_hex(format!("kci-key-link\u{1f}{token}").as_bytes())
}

/// An address as the registry keys it: trimmed, lower-cased.
pub fn normalise(address: &str) -> Option<String> {
    let a = address.trim().to_ascii_lowercase();
    a.parse::<lettre::Address>().ok().map(|_| a)
}

impl Registry<'_> {
    fn link(&self, token: &str) -> String {
        let base = self.config.server.public_base();
        base.join(&format!("v1/keys/confirm/{token}"))
            .map(|u| u.to_string())
            .unwrap_or_else(|_| format!("{base}v1/keys/confirm/{token}"))
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
        let dest = Destination {
            id: String::new(),
            contact: String::new(),
            uri: crate::model::DestinationUri::Mailto(
                address
                    .parse()
                    .unwrap_or_else(|_| "invalid@invalid.invalid".parse().expect("an address")),
            ),
            prefs: Default::default(),
            verified: true,
            unhealthy_since: None,
        };
        let mut n = Notification::own(
            "",
            &dest,
            kind,
            Priority::High,
            Message {
                short: subject.clone(),
                subject,
                body,
                encrypt_to: encrypt_to.map(str::to_string),
            },
            self.now,
            Some(self.now + Duration::hours(LINK_LIFETIME_HOURS)),
        );
        n.key = format!("{kind}:{address}");
        n
    }

    fn record(&self, address: &str, key: &CleanKey, source: &str) -> KeyRecord {
        KeyRecord {
            address: address.to_string(),
            fingerprint: key.fingerprint.clone(),
            armored: key.armored.clone(),
            state: KeyState::Pending,
            source: source.to_string(),
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
    /// (standard if none does).
    async fn level(&self, address: &str) -> crate::store::Result<crate::model::SecurityLevel> {
        let mut level = crate::model::SecurityLevel::Standard;
        for (account, _) in self
            .store
            .contacts_with_uri(&format!("mailto:{address}"))
            .await?
        {
            if let Some(view) = self.store.account_view(&account).await? {
                level = level.max(view.account.security_level);
            }
        }
        Ok(level)
    }

    fn change(
        &self,
        address: &str,
        kind: ChangeKind,
        fingerprint: Option<&str>,
        level: crate::model::SecurityLevel,
    ) -> KeyChange {
        let cooling = self.config.keys.cooling_off.at(level).0;
        KeyChange {
            id: crate::store::new_id(),
            address: address.to_string(),
            kind,
            fingerprint: fingerprint.map(str::to_string),
            state: ChangeState::Pending,
            requested_at: self.now,
            not_before: self.now + Duration::from_std(cooling).unwrap_or(Duration::days(30)),
            proven_current: false,
            proven_new: false,
        }
    }

    /// Takes a key submitted for `address` (by `source`: `api`, `mail`).
    /// `signed_by_current`: the request came signed by the address's
    /// active key (proof from its holder).
    pub async fn submit(
        &self,
        address: &str,
        data: &[u8],
        source: &str,
        signed_by_current: bool,
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
        let op = self.operator();
        let (token, hash) = new_token();
        let confirm = self.mail(
            address,
            "kci.key.confirm",
            format!("Confirm your OpenPGP key for notices from {op}"),
            format!(
                "Someone asked {op} to encrypt the notices for {address} to the OpenPGP key\n\n    {fpr}\n\n\
                 You could read this because you hold that key. To confirm, open this link within {LINK_LIFETIME_HOURS} hours:\n\n    {link}\n\n\
                 If you did not ask for this, ignore this message: nothing changes.\n",
                fpr = key.fingerprint,
                link = self.link(&token),
            ),
            Some(&key.fingerprint),
        );
        let activate = self.token(
            hash,
            address,
            &key.fingerprint,
            TokenPurpose::Activate,
            None,
        );
        let record = self.record(address, &key, source);
        match status.active {
            Some(active) if active.fingerprint != key.fingerprint => {
                let level = self.level(address).await?;
                let mut change =
                    self.change(address, ChangeKind::Replace, Some(&key.fingerprint), level);
                change.proven_current = signed_by_current;
                let mut tokens = vec![activate];
                let mut notices = vec![confirm];
                if !signed_by_current {
                    let (approve, hash) = new_token();
                    tokens.push(self.token(
                        hash,
                        address,
                        &active.fingerprint,
                        TokenPurpose::Approve,
                        Some(&change.id),
                    ));
                    notices.push(self.mail(
                        address,
                        "kci.key.approve",
                        format!("A request to replace your OpenPGP key at {op}"),
                        format!(
                            "Someone asked {op} to encrypt the notices for {address} to a new key,\n\n    {new}\n\n\
                             in place of your current key\n\n    {old}\n\n\
                             If this was you, approve it within {LINK_LIFETIME_HOURS} hours with this link:\n\n    {link}\n\n\
                             If it was not you, do nothing: without your approval the change waits until {when} at the earliest, \
                             and you will be told again before then.\n",
                            new = key.fingerprint,
                            old = active.fingerprint,
                            link = self.link(&approve),
                            when = crate::model::fmt_time(change.not_before),
                        ),
                        Some(&active.fingerprint),
                    ));
                }
                self.store
                    .submit_key(&record, &tokens, Some(&change), &notices)
                    .await?;
                Ok(Submitted::ChangeRequested { key, change })
            }
            _ => {
                self.store
                    .submit_key(&record, &[activate], None, &[confirm])
                    .await?;
                Ok(Submitted::Pending(key))
            }
        }
    }

    /// Asks to remove the address's active key (mail goes unencrypted
    /// afterwards): a change the current key's holder must approve; `None`
    /// if the address has no active key.
    pub async fn remove(&self, address: &str) -> crate::store::Result<Option<KeyChange>> {
        let Some(active) = self.store.active_key(address).await? else {
            return Ok(None);
        };
        let op = self.operator();
        let level = self.level(address).await?;
        let change = self.change(address, ChangeKind::Remove, None, level);
        let (approve, hash) = new_token();
        let token = self.token(
            hash,
            address,
            &active.fingerprint,
            TokenPurpose::Approve,
            Some(&change.id),
        );
        let mail = self.mail(
            address,
            "kci.key.approve",
            format!("A request to stop encrypting your notices from {op}"),
            format!(
                "Someone asked {op} to stop encrypting the notices for {address} (to your key {fpr}).\n\n\
                 If this was you, approve it within {LINK_LIFETIME_HOURS} hours with this link:\n\n    {link}\n\n\
                 If it was not you, do nothing: without your approval the change waits until {when} at the earliest, \
                 and you will be told again before then.\n",
                fpr = active.fingerprint,
                link = self.link(&approve),
                when = crate::model::fmt_time(change.not_before),
            ),
            Some(&active.fingerprint),
        );
        self.store
            .request_key_change(&change, &[token], &[mail])
            .await?;
        Ok(Some(change))
    }

    /// Answers a submission kci cannot take, politely, saying why — to the
    /// sender only, never with a link, and at most once an hour per
    /// address (the sender of a mail can be forged: kci must not become a
    /// way to flood someone). `false` when it kept quiet.
    pub async fn refuse(&self, address: &str, why: &str) -> crate::store::Result<bool> {
        if !self
            .store
            .may_refuse(address, self.now, Duration::hours(1))
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
            .confirm_key_token(&token_hash(token), self.now)
            .await?;
        let op = self.operator();
        let told = match &outcome {
            Confirmed::Activated(k) => Some(self.mail(
                &k.address,
                "kci.key.active",
                format!("Your notices from {op} are now encrypted"),
                format!(
                    "From now on, mail from {op} to {} is encrypted to your key\n\n    {}\n",
                    k.address, k.fingerprint
                ),
                Some(&k.fingerprint),
            )),
            Confirmed::Applied(c) => Some(match (&c.kind, &c.fingerprint) {
                (ChangeKind::Replace, Some(fpr)) => self.mail(
                    &c.address,
                    "kci.key.active",
                    format!("Your key for notices from {op} was replaced"),
                    format!(
                        "From now on, mail from {op} to {} is encrypted to the key\n\n    {fpr}\n\nin place of the one before.\n",
                        c.address
                    ),
                    Some(fpr),
                ),
                _ => self.mail(
                    &c.address,
                    "kci.key.removed",
                    format!("Your notices from {op} are no longer encrypted"),
                    format!(
                        "The key for {} was removed, as approved with your current key. Mail from {op} to this address is no longer encrypted.\n",
                        c.address
                    ),
                    None,
                ),
            }),
            Confirmed::Proven(_) | Confirmed::Invalid => None,
        };
        if let Some(n) = told {
            self.store.enqueue(&n).await?;
        }
        if let Confirmed::Applied(change) = &outcome {
            self.tell_everywhere(change).await?;
        }
        Ok(outcome)
    }

    /// DESIGN.md §7: a change applied with proof is told on every verified
    /// destination of every contact that uses the address, not only to
    /// the address itself — so a change its owner did not make shows up
    /// where the changer cannot hide it.
    async fn tell_everywhere(&self, change: &KeyChange) -> crate::store::Result<()> {
        let op = self.operator();
        let address = &change.address;
        let what = match (&change.kind, &change.fingerprint) {
            (ChangeKind::Replace, Some(fpr)) => {
                format!("Mail from {op} to {address} is now encrypted to a new key ({fpr}).")
            }
            _ => format!("Mail from {op} to {address} is no longer encrypted."),
        };
        let short = format!("{what} If you did not ask for this, contact {op} now.");
        let uri = format!("mailto:{address}");
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
