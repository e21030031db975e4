//! What kci does with one submission mail, however it arrived (`kci
//! inbound` from an MTA pipe, or the SMTP listener): the key it carries is
//! registered pending with its confirmation link sent encrypted to it, or
//! the sender is told politely why not.
//!
//! A mail signed by the address's active key is its holder's proof only
//! for what it says and only once: the signed entity must carry the
//! request (the new key, or a `kci-request:` statement naming the address,
//! the new key's fingerprint and the action), the signature must be fresh
//! (`[keys] proof_window`, default 1 h) and never seen before.

use super::{InboundError, Statement, parse};
use crate::config::Config;
use crate::keys::{Origin, Registry, Removal, Submitted, normalise};
use crate::metrics::Metrics;
use crate::model::{ChangeKind, ProofUse};
use crate::store::Store;
use chrono::{DateTime, Duration, Utc};

/// How far in the future a signature may claim to be made (clock skew).
const SKEW_MINUTES: i64 = 5;

/// The outcome, in words fit for a log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// Registered pending (or a change requested or applied); the owner
    /// of the address was mailed.
    Accepted(String),
    /// Refused; the sender was mailed the reason (at most hourly).
    Refused(String),
    /// A mail kci cannot read at all (bounce it).
    Unreadable(InboundError),
    /// kci cannot handle mail now (try again later).
    Unavailable(String),
}

fn told(sent: bool) -> &'static str {
    if sent {
        "the sender was told"
    } else {
        "the sender was told within the hour already, so not again"
    }
}

/// Handles the submission mail `raw` piped in by the MTA.
pub async fn handle(store: &dyn Store, config: &Config, raw: &[u8]) -> Handled {
    handle_from(store, config, raw, None, None).await
}

/// Handles the submission mail `raw`; `source` names where it came from
/// for the per-source limit (an SMTP client's address), `metrics` counts
/// limits hit.
pub async fn handle_from(
    store: &dyn Store,
    config: &Config,
    raw: &[u8],
    source: Option<String>,
    metrics: Option<&Metrics>,
) -> Handled {
    if config.email.signing_key.is_none() {
        return Handled::Unavailable(
            "this hub signs no mail ([email] signing_key is not set), so it registers no keys"
                .into(),
        );
    }
    let submission = match parse(raw) {
        Ok(s) => s,
        Err(e) => return Handled::Unreadable(e),
    };
    let Some(from) = normalise(&submission.from) else {
        return Handled::Unreadable(InboundError::NoSender);
    };
    let now = Utc::now();
    let registry = Registry {
        store,
        config,
        now,
        metrics,
    };
    let origin = Origin {
        channel: "mail",
        source,
        requested_by: format!("mail:{from}"),
    };
    let outcome = async {
        // Refused with kci's own words (never the submission's: the
        // refusal is signed by the operator's key).
        let (reg, sender) = (&registry, &from);
        let refuse = move |why: String| async move {
            let told = told(reg.refuse(sender, &why).await?);
            Ok::<_, crate::store::StoreError>(Handled::Refused(format!(
                "refused from {sender}: {why}; {told}"
            )))
        };
        let proof = match signed_proof(store, config, &submission, &from, now).await? {
            Ok(proof) => proof,
            Err(why) => return refuse(why).await,
        };
        if let Some(st) = &submission.statement
            && let Some(why) = statement_mismatch(st, &from, submission.key.as_deref(), now)
        {
            return refuse(why).await;
        }
        let removal = submission
            .statement
            .as_ref()
            .is_some_and(|s| s.action == ChangeKind::KeyRemove);
        if removal {
            return Ok(match registry.remove(&from, proof, &origin).await? {
                Removal::NoKey => return refuse("the address has no active key to remove".into()).await,
                Removal::Requested(c) => Handled::Accepted(format!(
                    "removal {} of the key for {from} requested; its holder was asked",
                    c.id
                )),
                Removal::Applied(c) => Handled::Accepted(format!(
                    "removal {} of the key for {from} applied with its holder's signed request",
                    c.id
                )),
                Removal::NotRecorded(why) => return refuse(why.to_string()).await,
                Removal::Limited { by, retry_at } => Handled::Refused(limited(&from, by, retry_at)),
            });
        }
        let Some(key) = &submission.key else {
            return refuse(
                "the message carries no OpenPGP public key. Attach it (gpg --export --armor you@example.com), or paste it into the text"
                    .into(),
            )
            .await;
        };
        Ok(match registry.submit(&from, key, &origin, proof).await? {
            Submitted::Pending(k) => Handled::Accepted(format!(
                "key {} for {from} pending; confirmation sent",
                k.fingerprint
            )),
            Submitted::Refreshed(k) => Handled::Accepted(format!(
                "key {} for {from} refreshed (merged into the active copy)",
                k.fingerprint
            )),
            Submitted::ChangeRequested { key, change } => Handled::Accepted(format!(
                "key {} for {from}: replacement {} requested (proof from the current key: {})",
                key.fingerprint, change.id, change.proven_current
            )),
            Submitted::Refused(why) => return refuse(why.mail_reason()).await,
            Submitted::NotRecorded(why) => return refuse(why.to_string()).await,
            Submitted::Limited { by, retry_at } => Handled::Refused(limited(&from, by, retry_at)),
        })
    }
    .await;
    outcome.unwrap_or_else(|e| Handled::Unavailable(format!("the store is unavailable ({e})")))
}

/// A submission over a limit: nobody is mailed (that is the point).
fn limited(from: &str, by: &str, retry_at: DateTime<Utc>) -> String {
    format!(
        "refused from {from}: over the limit of key requests per {by} until {}; nothing sent",
        crate::model::fmt_time(retry_at)
    )
}

/// The proof a signed mail gives: `Ok(Some)` when the address's active key
/// signed the entity, recently, and it carries a request; `Ok(None)` when
/// the mail proves nothing (unsigned, signed by another key, or there is no
/// active key — it is then an ordinary unproven request); `Err` with kci's
/// words when it is signed by the active key but cannot count (stale, or
/// the signed part asks for nothing).
async fn signed_proof(
    store: &dyn Store,
    config: &Config,
    submission: &super::Submission,
    from: &str,
    now: DateTime<Utc>,
) -> crate::store::Result<Result<Option<ProofUse>, String>> {
    let (Some(signed), Some(active)) = (&submission.signed, store.active_key(from).await?) else {
        return Ok(Ok(None));
    };
    // Verified as of the latest moment a signature may claim (clock skew):
    // a signature from a clock a little ahead is still good.
    let skew = Duration::minutes(SKEW_MINUTES);
    let Ok(verified) = crate::pgp::verify_signed(
        &signed.data,
        Some(&signed.signature),
        &active.armored,
        now + skew,
    ) else {
        return Ok(Ok(None));
    };
    let window = Duration::from_std(config.keys.proof_window.0).unwrap_or(Duration::hours(1));
    let Some(signed_at) = verified.signed_at else {
        return Ok(Err(
            "the signature carries no creation time; sign a new request".into(),
        ));
    };
    if signed_at > now + skew {
        return Ok(Err(format!(
            "the signature claims to be made at {}, in the future; check the clock and sign again",
            crate::model::fmt_time(signed_at)
        )));
    }
    if now - signed_at > window {
        return Ok(Err(format!(
            "the signature was made at {}; a signed request counts only within {} of being made, so sign a new one",
            crate::model::fmt_time(signed_at),
            config.keys.proof_window
        )));
    }
    if submission.key.is_none() && submission.statement.is_none() {
        return Ok(Err(
            "the signed part asks for nothing: put the new key, or a kci-request statement, inside what you sign"
                .into(),
        ));
    }
    Ok(Ok(Some(ProofUse {
        hash: proof_hash(&verified.signing_key, signed_at, &signed.data),
        keep_until: signed_at + window + skew,
    })))
}

/// What identifies a signed request, whatever the armor or transport
/// around it: the signing key, the signature's time and what was signed.
/// (The signature packet itself is not hashed: its unhashed area can be
/// changed by anyone without breaking it.)
pub fn proof_hash(signing_key: &str, signed_at: DateTime<Utc>, data: &[u8]) -> String {
    let content = crate::model::sha256_hex(data);
    crate::model::sha256_hex(
        format!(
            "kci-proof\u{1f}{signing_key}\u{1f}{}\u{1f}{content}",
            signed_at.timestamp()
        )
        .as_bytes(),
    )
}

/// Why a statement does not fit the mail it is in, if it does not: another
/// address than the sender's, a removal beside a key, or a fingerprint that
/// is not the enclosed key's.
fn statement_mismatch(
    st: &Statement,
    from: &str,
    key: Option<&[u8]>,
    now: DateTime<Utc>,
) -> Option<String> {
    if st.address.as_deref().is_some_and(|a| a != from) {
        return Some("the kci-request statement names another address than the sender's".into());
    }
    match (st.action, key) {
        (ChangeKind::KeyRemove, Some(_)) => {
            Some("the mail asks to remove the key and carries a key: ask for one thing".into())
        }
        (ChangeKind::KeyReplace, None) => {
            Some("the kci-request asks to replace the key, but the mail carries no new key".into())
        }
        (ChangeKind::KeyReplace, Some(key)) => {
            let want = st.fingerprint.as_deref()?;
            match crate::pgp::check_submission(key, from, now) {
                Ok(k) if k.fingerprint == want => None,
                Ok(_) => Some(
                    "the kci-request statement names another fingerprint than the key enclosed"
                        .into(),
                ),
                // The registry refuses the key itself, with its reason.
                Err(_) => None,
            }
        }
        (ChangeKind::KeyRemove, None) => None,
        // The statement parser reads only key actions.
        (_, _) => Some("the kci-request asks for something that is not a key change".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_is_the_same_whatever_wraps_it() {
        let t: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        let a = proof_hash("ABC", t, b"request");
        assert_eq!(
            a,
            proof_hash("ABC", t + Duration::milliseconds(300), b"request")
        );
        assert_ne!(a, proof_hash("ABC", t + Duration::seconds(1), b"request"));
        assert_ne!(a, proof_hash("ABD", t, b"request"));
        assert_ne!(a, proof_hash("ABC", t, b"requesT"));
    }
}
