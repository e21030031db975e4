//! Letters (`postal:` destinations): paper costs money and days, so a
//! routine notice never goes by post. A letter is sent only for
//!
//! * an event type whose config asks for it (`[types.X] letter = true`),
//! * kci's own security notices — a protected change (`kci.change.*`:
//!   its reminders with the veto link, its end, a code proving it) and an
//!   assurance recovery (`kci.assurance.*`) — on an account at
//!   `security_level = "maximum"`, where a customer asked for every
//!   channel to be told, paper too.
//!
//! Everything else at a `postal:` destination is `suppressed` with reason
//! `not_by_letter` when planned, and cancelled with it should it still
//! come to the letter channel (a notice kci writes itself, a type whose
//! config changed since). Other channels are not this rule's concern.

use crate::model::{ChannelKind, SecurityLevel};

/// The types of kci's own notices that are about the account's security.
const SECURITY_NOTICES: [&str; 2] = ["kci.change.", "kci.assurance."];

/// Whether a notice of type `type_name` may go to a destination of `kind`
/// on an account at `level`; `asks`: the type's config says `letter = true`.
pub fn admits(kind: ChannelKind, type_name: &str, asks: bool, level: SecurityLevel) -> bool {
    if kind != ChannelKind::Letter {
        return true;
    }
    let security = SECURITY_NOTICES.iter().any(|p| type_name.starts_with(p));
    asks || (security && level == SecurityLevel::Maximum)
}

/// What the record says when [`admits`] says no.
pub fn explain(type_name: &str, level: SecurityLevel) -> String {
    format!(
        "type {type_name} is not sent by letter (only types with `letter = true`, and kci's security notices at security_level maximum; the account is at {})",
        level.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChannelKind::*;
    use SecurityLevel::*;

    #[test]
    fn table() {
        // (channel, type, the type asks, level, admitted)
        let cases: &[(ChannelKind, &str, bool, SecurityLevel, bool)] = &[
            // Other channels: not this rule's concern.
            (Email, "line.down", false, Standard, true),
            (Sms, "kci.call.calling", false, Maximum, true),
            // A routine type never goes by post, whatever the level.
            (Letter, "line.down", false, Standard, false),
            (Letter, "line.down", false, Maximum, false),
            // …unless it asks.
            (Letter, "contract.terminated", true, Standard, true),
            (Letter, "contract.terminated", true, High, true),
            // kci's security notices: at maximum only.
            (Letter, "kci.change.pending", false, Maximum, true),
            (Letter, "kci.change.applied", false, Maximum, true),
            (Letter, "kci.change.code", false, Maximum, true),
            (Letter, "kci.assurance.locked", false, Maximum, true),
            (Letter, "kci.change.pending", false, High, false),
            (Letter, "kci.assurance.locked", false, Standard, false),
            // kci's other notices: never (a call is now, a code lives a
            // day, a digest or flap summary is routine).
            (Letter, "kci.call.calling", false, Maximum, false),
            (Letter, "kci.verify", false, Maximum, false),
            (Letter, "kci.incident.closed", false, Maximum, false),
            (Letter, "kci.key.changed", false, Maximum, false),
            (Letter, "kci.unhealthy", false, Maximum, false),
            (Letter, "kci.digest", false, Maximum, false),
            // A prefix is a prefix, not a look-alike.
            (Letter, "kci.changes", false, Maximum, false),
            (Letter, "kci.change", false, Maximum, false),
        ];
        for &(kind, type_name, asks, level, want) in cases {
            assert_eq!(
                admits(kind, type_name, asks, level),
                want,
                "{kind} {type_name} asks={asks} {level:?}"
            );
        }
    }

    #[test]
    fn the_refusal_names_the_type_and_the_level() {
        let words = explain("line.down", High);
        assert!(
            words.contains("line.down") && words.contains("at high"),
            "{words}"
        );
    }
}
