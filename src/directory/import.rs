//! What one imported row may change (`kci import directory`). An import
//! is an operator's bulk load, like a `directory:admin` token: it creates
//! accounts, contacts and destinations — verified ones too — and updates
//! what the API would update without asking anyone. What the API
//! protects it never does: it does not lower an account's security, add a
//! destination to a `high` account somebody is told on already, mark an
//! existing destination of such an account verified, change an existing
//! destination, or remove anything. Such a row is refused with the reason,
//! and the API does it with its protection. An identical row is
//! `Unchanged`, so running a file again changes nothing.

use crate::model::{
    ChangeKind, Destination, ImportOutcome, ImportRow, ImportSeen, ImportWrite, kept_security,
};

/// Decides `row` against what the store saw (see the module's doc).
pub fn decide(seen: &ImportSeen<'_>, row: &ImportRow) -> (ImportOutcome, Vec<ImportWrite>) {
    match writes(seen, row) {
        Ok((outcome, writes)) => (outcome, writes),
        Err(why) => (ImportOutcome::Refused(why), Vec::new()),
    }
}

fn writes(
    seen: &ImportSeen<'_>,
    row: &ImportRow,
) -> Result<(ImportOutcome, Vec<ImportWrite>), String> {
    let id = &row.account.id;
    let mut out = Vec::new();
    let (mut created, mut updated) = (false, false);
    // The file has no postal address: an account's stays as stored (the
    // API sets it, and protects changing where letters go).
    let incoming = crate::model::Account {
        postal_address: seen.account.and_then(|a| a.postal_address.clone()),
        ..row.account.clone()
    };
    // The account as it will be after this row.
    let account = match seen.account {
        None => {
            out.push(ImportWrite::Account(incoming.clone()));
            created = true;
            &incoming
        }
        Some(stored) if row.account_given && stored != &incoming => {
            if let Some((level, paranoid)) = kept_security(Some(stored), &incoming) {
                return Err(format!(
                    "account {id} is at {}{}; lowering that is a protected change: make it through the API (PUT /v1/accounts/{id}), which opens it",
                    level.as_str(),
                    if paranoid { ", paranoid" } else { "" }
                ));
            }
            out.push(ImportWrite::Account(incoming.clone()));
            updated = true;
            &incoming
        }
        Some(stored) => stored,
    };
    if let Some(contact) = &row.contact {
        match seen.contacts.iter().find(|c| c.id == contact.id) {
            None => {
                out.push(ImportWrite::Contact(contact.clone()));
                created = true;
            }
            Some(stored) if row.contact_given && stored != contact => {
                out.push(ImportWrite::Contact(contact.clone()));
                updated = true;
            }
            Some(_) => {}
        }
    }
    if let Some(dest) = &row.destination {
        // As the API judges a new destination: on a `high` account that
        // tells somebody already (verified, healthy or not), it is a
        // protected change — unless this import made the account.
        let told = seen.destinations.iter().any(|d| d.verified);
        let protected = !seen.fresh
            && seen.account.is_some()
            && crate::trust::changes::protected(
                ChangeKind::DestinationAdd,
                account.security_level,
                told,
            );
        let level = account.security_level.as_str();
        match existing(seen, row, dest)? {
            None if dest.uri == crate::model::DestinationUri::Postal
                && account.postal_address.is_none() =>
            {
                return Err(format!(
                    "postal:account needs account {id}'s postal address, which an import does not carry: set it with PUT /v1/accounts/{id} (`postal_address`) first"
                ));
            }
            None => {
                if protected {
                    return Err(format!(
                        "adding {} to account {id} (at {level}, with verified destinations) is a protected change: add it through the API, which opens it (or keep a new account's lines together, so the import creates it whole)",
                        dest.uri
                    ));
                }
                out.push(ImportWrite::Destination(dest.clone()));
                created = true;
            }
            Some(stored) if stored.prefs != dest.prefs => {
                return Err(format!(
                    "{} of contact {} exists with other preferences; an import does not change a destination: remove it and add it again through the API, which protects both on high accounts",
                    dest.uri, dest.contact
                ));
            }
            Some(stored) if dest.verified && !stored.verified => {
                if protected {
                    return Err(format!(
                        "{} of contact {} is not verified, and account {id} is at {level} with verified destinations: verifying it takes its code (POST …/destinations/{}/verify)",
                        dest.uri, dest.contact, stored.id
                    ));
                }
                out.push(ImportWrite::Verify(stored.id.clone()));
                updated = true;
            }
            // Verified since (by its code), or as stated: the import never
            // takes verification away.
            Some(_) => {}
        }
    }
    let outcome = if created {
        ImportOutcome::Created
    } else if updated {
        ImportOutcome::Updated
    } else {
        ImportOutcome::Unchanged
    };
    Ok((outcome, out))
}

/// The stored destination a row's destination is: by its id when the row
/// names one (which must then be the same contact and URI), else by
/// contact and URI (preferring one with the same preferences).
fn existing<'a>(
    seen: &ImportSeen<'a>,
    row: &ImportRow,
    dest: &Destination,
) -> Result<Option<&'a Destination>, String> {
    if row.destination_id_given {
        if let Some(d) = seen.destinations.iter().find(|d| d.id == dest.id) {
            if d.contact != dest.contact || d.uri != dest.uri {
                return Err(format!(
                    "destination {} is {} of contact {}; an import does not move or change a destination",
                    dest.id, d.uri, d.contact
                ));
            }
            return Ok(Some(d));
        }
        if seen.id_elsewhere {
            return Err(format!(
                "destination id {} belongs to another account",
                dest.id
            ));
        }
        return Ok(None);
    }
    let same = |d: &&Destination| d.contact == dest.contact && d.uri == dest.uri;
    Ok(seen
        .destinations
        .iter()
        .filter(same)
        .find(|d| d.prefs == dest.prefs)
        .or_else(|| seen.destinations.iter().find(same)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Account, Contact, ImportOutcome::*, Preferences, SecurityLevel};

    fn account(level: SecurityLevel) -> Account {
        Account {
            id: "A1".into(),
            name: "Alice Ltd".into(),
            timezone: None,
            security_level: level,
            paranoid: false,
            defaults: Preferences::default(),
            prefixes: Vec::new(),
            postal_address: None,
        }
    }

    fn contact(name: &str) -> Contact {
        Contact {
            id: "alice".into(),
            name: name.into(),
            timezone: None,
            prefs: Preferences::default(),
        }
    }

    fn dest(id: &str, uri: &str, verified: bool) -> Destination {
        Destination {
            id: id.into(),
            contact: "alice".into(),
            uri: uri.parse().unwrap(),
            prefs: Preferences::default(),
            verified,
            unhealthy_since: None,
        }
    }

    fn row(level: SecurityLevel, d: Option<Destination>) -> ImportRow {
        ImportRow {
            line: 2,
            account: account(level),
            account_given: true,
            contact: Some(contact("Alice")),
            contact_given: true,
            destination: d,
            destination_id_given: false,
        }
    }

    const MAIL: &str = "mailto:alice@example.com";
    const SMS: &str = "sms:+447700900123";

    /// The stored state of a case: the account (if any), its contact's
    /// name (if any), its destinations, and whether this batch made it.
    struct Stored {
        account: Option<Account>,
        contact: Option<&'static str>,
        dests: Vec<Destination>,
        fresh: bool,
    }

    fn stored(
        level: Option<SecurityLevel>,
        contact: Option<&'static str>,
        dests: Vec<Destination>,
    ) -> Stored {
        Stored {
            account: level.map(account),
            contact,
            dests,
            fresh: false,
        }
    }

    fn run(s: &Stored, r: &ImportRow, id_elsewhere: bool) -> (ImportOutcome, Vec<ImportWrite>) {
        let contacts: Vec<Contact> = s.contact.map(contact).into_iter().collect();
        let seen = ImportSeen {
            account: s.account.as_ref(),
            contacts: &contacts,
            destinations: &s.dests,
            fresh: s.fresh,
            id_elsewhere,
        };
        decide(&seen, r)
    }

    fn kind(o: &ImportOutcome) -> &'static str {
        match o {
            Created => "created",
            Updated => "updated",
            Unchanged => "unchanged",
            Refused(_) => "refused",
        }
    }

    #[test]
    fn each_row_is_created_updated_unchanged_or_refused() {
        use SecurityLevel::*;
        let fresh_high = Stored {
            fresh: true,
            ..stored(Some(High), Some("Alice"), vec![dest("d1", MAIL, true)])
        };
        let mut lower = row(Standard, None);
        lower.account.name = "Alice Ltd".into();
        let mut paranoid_off = row(High, None);
        paranoid_off.account.paranoid = false;
        let paranoid_high = Stored {
            account: Some(Account {
                paranoid: true,
                ..account(High)
            }),
            ..stored(None, Some("Alice"), vec![])
        };
        let mut renamed = row(Standard, None);
        renamed.account.name = "Alice Limited".into();
        let mut silent = row(Standard, Some(dest("new", SMS, true)));
        silent.account_given = false;
        silent.account = account(Standard);
        silent.account.name = "A1".into();
        let mut other_prefs = dest("new", MAIL, true);
        other_prefs.prefs.min_priority = Some(crate::model::Priority::High);
        let mut by_id = row(Standard, Some(dest("d1", MAIL, true)));
        by_id.destination_id_given = true;
        let mut moved = row(Standard, Some(dest("d1", SMS, true)));
        moved.destination_id_given = true;
        let mut taken = row(Standard, Some(dest("d9", SMS, true)));
        taken.destination_id_given = true;
        // (what is stored, the row, the id is another account's, outcome, writes)
        let cases: Vec<(Stored, ImportRow, bool, &str, usize)> = vec![
            // Everything new: account, contact and destination written.
            (
                stored(None, None, vec![]),
                row(High, Some(dest("new", MAIL, true))),
                false,
                "created",
                3,
            ),
            // The same again: nothing to write.
            (
                stored(Some(Standard), Some("Alice"), vec![dest("d1", MAIL, true)]),
                row(Standard, Some(dest("new", MAIL, true))),
                false,
                "unchanged",
                0,
            ),
            // Verified since by its code, stated unverified: unchanged.
            (
                stored(Some(Standard), Some("Alice"), vec![dest("d1", MAIL, true)]),
                row(Standard, Some(dest("new", MAIL, false))),
                false,
                "unchanged",
                0,
            ),
            // A new contact name: updated.
            (
                stored(Some(Standard), Some("Al"), vec![]),
                row(Standard, None),
                false,
                "updated",
                1,
            ),
            (
                stored(Some(Standard), Some("Alice"), vec![]),
                renamed,
                false,
                "updated",
                1,
            ),
            // Raising security is the API's too.
            (
                stored(Some(Standard), Some("Alice"), vec![]),
                row(High, None),
                false,
                "updated",
                1,
            ),
            // Lowering it, or paranoid off, at high: protected.
            (
                stored(Some(High), Some("Alice"), vec![]),
                lower,
                false,
                "refused",
                0,
            ),
            (paranoid_high, paranoid_off, false, "refused", 0),
            // A second destination on a standard account: created.
            (
                stored(Some(Standard), Some("Alice"), vec![dest("d1", MAIL, true)]),
                row(Standard, Some(dest("new", SMS, true))),
                false,
                "created",
                1,
            ),
            // On a high account somebody is told on: protected…
            (
                stored(Some(High), Some("Alice"), vec![dest("d1", MAIL, true)]),
                row(High, Some(dest("new", SMS, true))),
                false,
                "refused",
                0,
            ),
            // …also when the row leaves the account's columns empty…
            (
                stored(Some(High), Some("Alice"), vec![dest("d1", MAIL, true)]),
                silent.clone(),
                false,
                "refused",
                0,
            ),
            // …and when this very row raises it to high.
            (
                stored(Some(Standard), Some("Alice"), vec![dest("d1", MAIL, true)]),
                row(High, Some(dest("new", SMS, true))),
                false,
                "refused",
                0,
            ),
            // …but not while nobody is told there, nor on an account this
            // import created.
            (
                stored(Some(High), Some("Alice"), vec![dest("d1", MAIL, false)]),
                row(High, Some(dest("new", SMS, true))),
                false,
                "created",
                1,
            ),
            (
                fresh_high,
                row(High, Some(dest("new", SMS, true))),
                false,
                "created",
                1,
            ),
            // An existing destination with other preferences: refused.
            (
                stored(Some(Standard), Some("Alice"), vec![dest("d1", MAIL, true)]),
                row(Standard, Some(other_prefs)),
                false,
                "refused",
                0,
            ),
            // Verifying an unverified one: on standard, yes…
            (
                stored(Some(Standard), Some("Alice"), vec![dest("d1", MAIL, false)]),
                row(Standard, Some(dest("new", MAIL, true))),
                false,
                "updated",
                1,
            ),
            // …on high with someone told, no.
            (
                stored(
                    Some(High),
                    Some("Alice"),
                    vec![dest("d1", MAIL, false), dest("d2", SMS, true)],
                ),
                row(High, Some(dest("new", MAIL, true))),
                false,
                "refused",
                0,
            ),
            // By id: the same destination, unchanged; moved, refused; an
            // id of another account's, refused.
            (
                stored(Some(Standard), Some("Alice"), vec![dest("d1", MAIL, true)]),
                by_id,
                false,
                "unchanged",
                0,
            ),
            (
                stored(Some(Standard), Some("Alice"), vec![dest("d1", MAIL, true)]),
                moved,
                false,
                "refused",
                0,
            ),
            (
                stored(Some(Standard), Some("Alice"), vec![]),
                taken,
                true,
                "refused",
                0,
            ),
        ];
        for (i, (s, r, elsewhere, want, n)) in cases.iter().enumerate() {
            let (outcome, writes) = run(s, r, *elsewhere);
            assert_eq!(
                (kind(&outcome), writes.len()),
                (*want, *n),
                "case {i}: {outcome:?} {writes:?}"
            );
        }
    }

    #[test]
    fn a_refusal_says_why_and_where_to_go() {
        let s = stored(
            Some(SecurityLevel::High),
            Some("Alice"),
            vec![dest("d1", MAIL, true)],
        );
        let (o, _) = run(
            &s,
            &row(SecurityLevel::High, Some(dest("n", SMS, true))),
            false,
        );
        let Refused(why) = o else { panic!("{o:?}") };
        assert!(
            why.contains("protected change") && why.contains("API"),
            "{why}"
        );
        let (o, _) = run(&s, &row(SecurityLevel::Standard, None), false);
        let Refused(why) = o else { panic!("{o:?}") };
        assert!(
            why.contains("account A1 is at high") && why.contains("PUT /v1/accounts/A1"),
            "{why}"
        );
    }
}
