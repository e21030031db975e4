//! `kci inbound < message.eml`: a mail to the key submission address, as
//! an MTA pipes it (Postfix `pipe`, Exim `pipe`, procmail). The key it
//! carries is checked for the sender's address and registered pending; the
//! confirmation link goes out encrypted to it. A key kci cannot take gets a
//! polite answer saying why. A request signed (PGP/MIME) by the address's
//! current key counts as that holder's proof for a replacement.
//!
//! Exit codes follow sysexits(3), which MTAs understand: 0 handled (also
//! when refused with an answer), 65 a mail kci cannot read (the MTA
//! bounces it with the reason), 75 kci's store is unavailable (the MTA
//! tries again later).

use super::ConfigArg;
use crate::inbound::{self, InboundError};
use crate::keys::{Registry, Submitted, normalise};
use std::io::Read;
use std::process::ExitCode;

const EX_DATAERR: u8 = 65;
const EX_TEMPFAIL: u8 = 75;

pub async fn run(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    if config.email.signing_key.is_none() {
        eprintln!(
            "kci inbound: this hub signs no mail ([email] signing_key is not set), so it registers no keys"
        );
        return Ok(ExitCode::from(EX_TEMPFAIL));
    }
    let mut raw = Vec::new();
    std::io::stdin()
        .take(inbound::MAX_MAIL as u64 + 1)
        .read_to_end(&mut raw)?;
    let submission = match inbound::parse(&raw) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kci inbound: {e}");
            return Ok(ExitCode::from(EX_DATAERR));
        }
    };
    let Some(from) = normalise(&submission.from) else {
        eprintln!("kci inbound: {}", InboundError::NoSender);
        return Ok(ExitCode::from(EX_DATAERR));
    };
    let store = match crate::store::open(config.store.url.expose()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kci inbound: the store is unavailable ({e}); try again later");
            return Ok(ExitCode::from(EX_TEMPFAIL));
        }
    };
    let now = chrono::Utc::now();
    let registry = Registry {
        store: store.as_ref(),
        config: &config,
        now,
    };
    let outcome = async {
        let Some(key) = &submission.key else {
            registry
                .refuse(
                    &from,
                    "the message carries no OpenPGP public key. Attach it (gpg --export --armor you@example.com), or paste it into the text",
                )
                .await?;
            return Ok(None);
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
        let done = registry.submit(&from, key, "mail", signed_by_current).await?;
        if let Submitted::Refused(why) = &done {
            registry.refuse(&from, &why.to_string()).await?;
        }
        Ok::<_, crate::store::StoreError>(Some(done))
    }
    .await;
    match outcome {
        Ok(Some(Submitted::Pending(k))) => {
            eprintln!(
                "kci inbound: key {} for {from} pending; confirmation sent",
                k.fingerprint
            );
        }
        Ok(Some(Submitted::ChangeRequested { key, change })) => {
            eprintln!(
                "kci inbound: key {} for {from}: replacement {} requested (proof from the current key: {})",
                key.fingerprint, change.id, change.proven_current
            );
        }
        Ok(Some(Submitted::Refused(why))) => {
            eprintln!("kci inbound: key for {from} refused: {why}; the sender was told");
        }
        Ok(None) => eprintln!("kci inbound: no key from {from}; the sender was told"),
        Err(e) => {
            eprintln!("kci inbound: the store is unavailable ({e}); try again later");
            return Ok(ExitCode::from(EX_TEMPFAIL));
        }
    }
    Ok(ExitCode::SUCCESS)
}
