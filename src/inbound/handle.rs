//! What kci does with one submission mail, however it arrived (`kci
//! inbound` from an MTA pipe, or the SMTP listener): the key it carries is
//! registered pending with its confirmation link sent encrypted to it, or
//! the sender is told politely why not.

use super::{InboundError, parse};
use crate::config::Config;
use crate::keys::{Registry, Submitted, normalise};
use crate::store::Store;

/// The outcome, in words fit for a log line or an SMTP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// Registered pending (or a replacement requested); confirmation sent.
    Accepted(String),
    /// Refused; the sender was mailed the reason.
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

/// Handles the submission mail `raw`.
pub async fn handle(store: &dyn Store, config: &Config, raw: &[u8]) -> Handled {
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
    let now = chrono::Utc::now();
    let registry = Registry { store, config, now };
    let outcome = async {
        let Some(key) = &submission.key else {
            let why = "the message carries no OpenPGP public key. Attach it (gpg --export --armor you@example.com), or paste it into the text";
            let told = told(registry.refuse(&from, why).await?);
            return Ok(Handled::Refused(format!("no key from {from}; {told}")));
        };
        // Signed by the address's current key: its holder asks.
        let signed_by_current = match (&submission.signed, store.active_key(&from).await?) {
            (Some(signed), Some(active)) => crate::pgp::verify_signed(
                &signed.data,
                Some(&signed.signature),
                &active.armored,
                now,
            )
            .is_ok(),
            _ => false,
        };
        Ok::<_, crate::store::StoreError>(
            match registry.submit(&from, key, "mail", signed_by_current).await? {
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
                Submitted::Refused(why) => {
                    let told = told(registry.refuse(&from, &why.to_string()).await?);
                    Handled::Refused(format!("key for {from} refused: {why}; {told}"))
                }
            },
        )
    }
    .await;
    outcome.unwrap_or_else(|e| Handled::Unavailable(format!("the store is unavailable ({e})")))
}
