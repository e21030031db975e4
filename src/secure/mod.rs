//! Secure (DESIGN.md §1): the step between render and deliver that decides
//! what may leave, and under which protection. One function, [`secure`],
//! the scheduler calls for every notice:
//!
//! 1. a one-time secret (a verification code, a key link) is rendered into
//!    the texts only now — or the notice fails (`secret_gone`): what went
//!    out once is never stored to go out again; a protected change's
//!    reminder gets its veto link minted now (only its hash is kept), or
//!    fails (`change_ended`) when the change is no longer pending;
//! 2. a `paranoid` account's notice becomes content-free (no texts, no
//!    event data) wherever content could leak: every channel but mail to
//!    an address with an active key;
//! 3. mail gets the key it must be encrypted to — the one its message
//!    names (a confirmation link goes to the key submitted), else the
//!    address's active key — or fails (`rejected`): mail for a key holder
//!    is never sent in clear;
//! 4. a webhook gets the secrets it is signed with.
//!
//! The cryptography itself — PGP/MIME signing and encryption with the
//! operator's key (`crate::pgp`), S/MIME (`crate::smime`), Standard Webhooks
//! signatures — is applied by the channel that frames the message, with
//! exactly what this step hands it.

use crate::model::{ChannelKind, Event, Reason, Secret};
use crate::render::{Rendered, Renderer};
use crate::store::{Claimed, Result, Store};
use crate::trust::seal::AtRest;

/// What may leave, and with what.
#[derive(Debug, Clone)]
pub struct Secured {
    pub rendered: Rendered,
    /// The event, where its data may go out (not for content-free notices).
    pub event: Option<Event>,
    /// Mail: the armored key it must be encrypted to.
    pub recipient_key: Option<String>,
    /// Webhooks: the destination's own signing secrets, current first.
    pub secrets: Vec<Secret<String>>,
    /// Webhooks: whether the channel's own secret signs too.
    pub channel_secret: bool,
}

/// Why a notice must not leave: the reason recorded and its words.
#[derive(Debug, Clone, PartialEq)]
pub struct Withheld {
    pub reason: Reason,
    pub detail: String,
}

/// kci's own notice types that carry what the customer's events said (a
/// digest folds their notices into one, a flap summary tells of them):
/// content like any event's, not kci's words about the account.
const EVENT_CONTENT: [&str; 2] = [crate::plan::DIGEST_TYPE, crate::plan::flap::SUMMARY_TYPE];

/// Whether a notice of a `paranoid` account must go content-free: its
/// channel is not end-to-end encrypted (anything but mail to an address
/// with an active key), and it carries an event's content (kci's own
/// notices about the account — codes, links, changes — are its words, and
/// must be read to be of use).
pub fn content_free(c: &Claimed) -> bool {
    let n = &c.notification;
    let own = n.type_name.starts_with("kci.") && !EVENT_CONTENT.contains(&n.type_name.as_str());
    !own && c.paranoid && (n.channel != ChannelKind::Email || c.active_key.is_none())
}

/// Decides what of the rendered notice `c` may leave, and under which
/// protection (see the module doc).
pub async fn secure(
    c: &Claimed,
    mut rendered: Rendered,
    renderer: &Renderer,
    store: &dyn Store,
    at_rest: &AtRest,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<std::result::Result<Secured, Withheld>> {
    let n = &c.notification;
    if n.needs_secret() {
        let secret = match at_rest.open_notice(n) {
            Ok(s) => s,
            Err(e) => {
                return Ok(Err(Withheld {
                    reason: Reason::SecretGone,
                    detail: format!("its one-time secret {e}; ask for a new one"),
                }));
            }
        };
        match &secret {
            Some(secret) => rendered.reveal(secret.expose()),
            // A change's reminder: its veto link is minted only now, and
            // only while the change is pending.
            None if n.type_name == crate::changes::REMINDER => {
                match crate::changes::mint_veto_link(store, n).await? {
                    Some(token) => rendered.reveal(&token),
                    None => {
                        return Ok(Err(Withheld {
                            reason: Reason::ChangeEnded,
                            detail: "the change it was about is no longer pending".into(),
                        }));
                    }
                }
            }
            None => {
                return Ok(Err(Withheld {
                    reason: Reason::SecretGone,
                    detail: "it carried a one-time code or link that kci no longer holds; ask for a new one".into(),
                }));
            }
        }
    }
    let mut event = c.event.clone();
    if content_free(c) {
        rendered = renderer.content_free();
        event = None;
    }
    let recipient_key = match recipient_key(c, store).await? {
        Ok(key) => key,
        Err(detail) => {
            return Ok(Err(Withheld {
                reason: Reason::Rejected,
                detail,
            }));
        }
    };
    let signing = if n.channel == ChannelKind::Webhook {
        match crate::store::claimed_signing(c.signing.as_ref(), now) {
            Some(signing) => signing,
            None => store.destination_secrets(&n.destination, now).await?,
        }
    } else {
        crate::store::Signing {
            own: Vec::new(),
            channel: true,
        }
    };
    let mut secrets = Vec::with_capacity(signing.own.len());
    for stored in &signing.own {
        match at_rest.open_webhook(&n.destination, stored) {
            Ok(s) => secrets.push(Secret::new(s)),
            Err(e) => {
                return Ok(Err(Withheld {
                    reason: Reason::Rejected,
                    detail: format!(
                        "not sent: the destination's signing secret {e}; rotate it (POST …/secret)"
                    ),
                }));
            }
        }
    }
    Ok(Ok(Secured {
        rendered,
        event,
        recipient_key,
        secrets,
        channel_secret: signing.channel,
    }))
}

/// The key a mail must be encrypted to: the one its message names, else
/// the address's active key. `Err` when the named key is gone.
async fn recipient_key(
    c: &Claimed,
    store: &dyn Store,
) -> Result<std::result::Result<Option<String>, String>> {
    let n = &c.notification;
    let Some(address) = crate::store::mail_address(n) else {
        return Ok(Ok(None));
    };
    match n.message.as_ref().and_then(|m| m.encrypt_to.as_deref()) {
        Some(fpr) => Ok(match store.key(&address, fpr).await? {
            Some(k) => Ok(Some(k.armored)),
            None => Err(format!(
                "not sent (never in clear): the key {fpr} it must be encrypted to is not registered for {address}"
            )),
        }),
        None => Ok(Ok(c.active_key.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Destination, Message, Notification, Priority};

    fn claimed(uri: &str, type_name: &str, paranoid: bool, key: bool) -> Claimed {
        let dest = Destination {
            id: "d1".into(),
            contact: "alice".into(),
            uri: uri.parse().unwrap(),
            prefs: Default::default(),
            verified: true,
            unhealthy_since: None,
        };
        let message = Message {
            short: format!("code {}", crate::model::SECRET_MARK),
            subject: "s".into(),
            body: "b".into(),
            encrypt_to: None,
        };
        let now = chrono::Utc::now();
        let n = Notification::own("A1", &dest, type_name, Priority::High, message, now, None);
        Claimed {
            notification: n,
            lease_until: None,
            event: None,
            paranoid,
            active_key: key.then(|| "KEY".to_string()),
            account: None,
            signing: None,
        }
    }

    #[test]
    fn where_content_could_leak() {
        // (uri, type, paranoid, active key, content-free)
        let cases = [
            ("sms:+447700900123", "line.down", true, false, true),
            ("mailto:a@example.com", "line.down", true, false, true),
            ("mailto:a@example.com", "line.down", true, true, false),
            ("ntfy:alerts", "line.down", false, false, false),
            ("sms:+447700900123", "kci.verify", true, false, false),
            // A digest or a flap summary tells what the events said.
            ("sms:+447700900123", "kci.digest", true, false, true),
            ("telegram:42", "kci.flap", true, false, true),
            ("mailto:a@example.com", "kci.digest", true, true, false),
            ("sms:+447700900123", "kci.digest", false, false, false),
        ];
        for (uri, t, paranoid, key, free) in cases {
            assert_eq!(
                content_free(&claimed(uri, t, paranoid, key)),
                free,
                "{uri} {t}"
            );
        }
    }

    #[tokio::test]
    async fn a_secret_goes_out_once_and_never_after_it_is_erased() {
        let store = crate::store::sqlite::SqliteStore::open(":memory:").unwrap();
        crate::store::Store::migrate(&store).await.unwrap();
        let config = crate::config::Config::load(None).unwrap();
        let renderer = Renderer::new(&config).unwrap();
        let now = chrono::Utc::now();
        let mut c = claimed("ntfy:alerts", "kci.verify", false, false);
        let at_rest = AtRest::new(&config.code_key);
        c.notification = at_rest.with_secret(c.notification, "123456");
        let rendered = renderer.render(&c.notification, None).unwrap();
        let out = secure(&c, rendered.clone(), &renderer, &store, &at_rest, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.rendered.short.as_deref(), Some("code 123456"));
        c.notification.secret = None;
        let withheld = secure(&c, rendered, &renderer, &store, &at_rest, now)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(withheld.reason, Reason::SecretGone);

        // Sealed with another code key (or moved from another notice): it
        // does not open, and nothing goes out.
        let mut c = claimed("ntfy:alerts", "kci.verify", false, false);
        let other_key = AtRest::new(&crate::trust::codes::CodeKey::random());
        c.notification = other_key.with_secret(c.notification, "123456");
        let rendered = renderer.render(&c.notification, None).unwrap();
        let withheld = secure(&c, rendered, &renderer, &store, &at_rest, now)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(withheld.reason, Reason::SecretGone);
        assert!(!withheld.detail.contains("123456"), "{}", withheld.detail);
    }
}
