//! `kci inbound < message.eml`: a mail to the key submission address, as
//! an MTA pipes it (Postfix `pipe`, Exim `pipe`, procmail); see
//! [`crate::inbound::handle`].
//!
//! Exit codes follow sysexits(3), which MTAs understand: 0 handled (also
//! when refused with an answer), 65 a mail kci cannot read (the MTA
//! bounces it with the reason), 75 kci cannot take mail now (the MTA
//! tries again later).

use super::ConfigArg;
use crate::inbound::{self, Handled};
use std::io::Read;
use std::process::ExitCode;

const EX_DATAERR: u8 = 65;
const EX_TEMPFAIL: u8 = 75;

pub async fn run(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    // A config kci cannot load is the operator's to fix, not the
    // sender's fault: the MTA keeps the mail and tries again (an error
    // exit would be 1, which MTAs take as permanent and bounce).
    let config = match super::load_config_with_code_key(&arg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kci inbound: the configuration cannot be used ({e:#}); try again later");
            return Ok(ExitCode::from(EX_TEMPFAIL));
        }
    };
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(inbound::MAX_MAIL as u64 + 1)
        .read_to_end(&mut raw)
    {
        eprintln!("kci inbound: cannot read the mail ({e}); try again later");
        return Ok(ExitCode::from(EX_TEMPFAIL));
    }
    let store = match crate::store::open(config.store.url.expose()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kci inbound: the store is unavailable ({e}); try again later");
            return Ok(ExitCode::from(EX_TEMPFAIL));
        }
    };
    Ok(match inbound::handle(store.as_ref(), &config, &raw).await {
        Handled::Accepted(words) | Handled::Refused(words) => {
            eprintln!("kci inbound: {words}");
            ExitCode::SUCCESS
        }
        Handled::Unreadable(e) => {
            eprintln!("kci inbound: {e}");
            ExitCode::from(EX_DATAERR)
        }
        Handled::Unavailable(words) => {
            eprintln!("kci inbound: {words}; try again later");
            ExitCode::from(EX_TEMPFAIL)
        }
    })
}
