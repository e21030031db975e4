//! The audit log (DESIGN.md §7): every sensitive step, append-only, each
//! entry carrying the hash of the one before it, so an entry edited,
//! removed, inserted or moved breaks the chain at that entry; checkpoints
//! (the head's hash and the count) signed with the operator's key every so
//! often, so a chain rewritten from some entry on does not match the
//! signed heads any more.
//!
//! Everything here is pure: what an entry's hash is, and [`verify`], the
//! walk `kci audit verify` makes over the entries and checkpoints a store
//! read. The store appends (serialised in the database, so several nodes
//! keep one chain); the signing and checking of checkpoints is
//! `crate::audit`'s.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a step wants recorded; the store gives it its place in the chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditDraft {
    /// Who: `staff:<name>`, `token:<id>`, `link:<destination>` (a customer
    /// following a link), `mail:<address>`, `kci` (the scheduler).
    pub actor: String,
    /// What, as a dotted name: `change.requested`, `change.vetoed`,
    /// `change.approval_refused`, `incident.closed`, …
    pub action: String,
    pub account: Option<String>,
    pub address: Option<String>,
    pub change: Option<String>,
    /// The ticket number staff gave, if any.
    pub ticket: Option<String>,
    /// From where: the caller's IP address, `smtp:<ip>`, `cli`.
    pub source: Option<String>,
    /// `ok`, `refused`, `applied`, …
    pub outcome: String,
    /// A few words more (never a secret).
    pub detail: Option<String>,
}

impl AuditDraft {
    pub fn new(actor: &str, action: &str, outcome: &str) -> AuditDraft {
        AuditDraft {
            actor: actor.to_string(),
            action: action.to_string(),
            outcome: outcome.to_string(),
            ..AuditDraft::default()
        }
    }
}

/// An entry as stored: a draft in its place.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    #[serde(serialize_with = "super::ser_time")]
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub draft: AuditDraft,
    pub prev_hash: String,
    pub hash: String,
}

/// A signed statement that the chain had `seq` entries ending in `head`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub head: String,
    #[serde(serialize_with = "super::ser_time")]
    pub at: DateTime<Utc>,
    /// An ASCII-armored OpenPGP signature over [`Checkpoint::statement`].
    pub signature: String,
}

impl Checkpoint {
    /// The text a checkpoint's signature is over.
    pub fn statement(seq: i64, head: &str, at: DateTime<Utc>) -> String {
        format!(
            "kci-audit-checkpoint\nseq: {seq}\nhead: {head}\nat: {}\n",
            super::to_millis(at)
        )
    }
}

/// The hash of an entry: over its place, time, every field and the hash
/// before it, in one unambiguous encoding (a JSON array).
pub fn entry_hash(seq: i64, at: DateTime<Utc>, d: &AuditDraft, prev_hash: &str) -> String {
    let fields = serde_json::json!([
        "kci-audit-1",
        seq,
        super::to_millis(at),
        d.actor,
        d.action,
        d.account,
        d.address,
        d.change,
        d.ticket,
        d.source,
        d.outcome,
        d.detail,
        prev_hash,
    ]);
    super::sha256_hex(fields.to_string().as_bytes())
}

/// The entry `draft` becomes after the entry `(seq, hash)` of the chain
/// (none: it is the first).
pub fn append(last: Option<(i64, &str)>, draft: AuditDraft, at: DateTime<Utc>) -> AuditEntry {
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash.to_string()),
        None => (1, GENESIS.to_string()),
    };
    let hash = entry_hash(seq, at, &draft, &prev_hash);
    AuditEntry {
        seq,
        at,
        draft,
        prev_hash,
        hash,
    }
}

/// The first thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tampered {
    /// The first entry that is not as it was written (for a removal: the
    /// number of the entry that is missing).
    pub seq: i64,
    pub why: String,
}

impl std::fmt::Display for Tampered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {}: {}", self.seq, self.why)
    }
}

/// What a walk found intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    pub entries: i64,
    pub checkpoints: usize,
}

/// Walks the entries (in the order of their numbers) and the checkpoints
/// (whose signatures the caller checked) and names the first entry that
/// was edited, removed, inserted or moved. Fed one entry at a time, so a
/// log of any length is checked in constant memory.
///
/// * Each entry's hash must be its own (else it was edited, or moved:
///   the number is part of the hash), and its `prev_hash` the hash of the
///   entry before (else one was removed or inserted before it).
/// * Numbers run 1, 2, 3…: a gap names the missing entry.
/// * The entry at each checkpoint's number must still end in its signed
///   head: a chain rewritten consistently from some entry on fails there,
///   named by the first entry after the last checkpoint that matched;
///   entries removed from the end fail there too.
///
/// Entries after the last checkpoint can be removed from the end unseen;
/// checkpoints every few entries or minutes keep that window short.
#[derive(Debug)]
pub struct Walk {
    prev: String,
    next: i64,
    /// Checkpoints still ahead, by number, the nearest last.
    ahead: Vec<Checkpoint>,
    checkpoints: usize,
    good_until: i64,
}

impl Walk {
    /// A walk against `checkpoints`, each already found signed.
    pub fn new(mut checkpoints: Vec<Checkpoint>) -> Walk {
        checkpoints.sort_by_key(|c| std::cmp::Reverse(c.seq));
        Walk {
            prev: GENESIS.to_string(),
            next: 1,
            checkpoints: checkpoints.len(),
            ahead: checkpoints,
            good_until: 0,
        }
    }

    /// Checks the next entry.
    pub fn step(&mut self, e: &AuditEntry) -> Result<(), Tampered> {
        let expected = self.next;
        if e.seq != expected {
            return Err(Tampered {
                seq: expected.min(e.seq),
                why: if e.seq > expected {
                    "removed (the numbers skip it)".into()
                } else {
                    "out of order".into()
                },
            });
        }
        if e.prev_hash != self.prev {
            return Err(Tampered {
                seq: e.seq,
                why: "does not follow the entry before it (one was removed, inserted or moved)"
                    .into(),
            });
        }
        if entry_hash(e.seq, e.at, &e.draft, &e.prev_hash) != e.hash {
            return Err(Tampered {
                seq: e.seq,
                why: "edited (its hash is not its content's)".into(),
            });
        }
        while let Some(cp) = self.ahead.last().filter(|c| c.seq <= e.seq) {
            if cp.seq == e.seq && cp.head != e.hash {
                return Err(Tampered {
                    seq: self.good_until + 1,
                    why: format!(
                        "rewritten: the entries from here to {} do not end in the head signed at checkpoint {}",
                        cp.seq, cp.seq
                    ),
                });
            }
            self.good_until = cp.seq;
            self.ahead.pop();
        }
        self.prev = e.hash.clone();
        self.next += 1;
        Ok(())
    }

    /// After the last entry: no checkpoint may count more entries.
    pub fn finish(self) -> Result<Intact, Tampered> {
        let entries = self.next - 1;
        if let Some(cp) = self.ahead.first() {
            return Err(Tampered {
                seq: self.next,
                why: format!(
                    "removed: checkpoint {} counted {} entries, {entries} are left",
                    cp.seq, cp.seq
                ),
            });
        }
        Ok(Intact {
            entries,
            checkpoints: self.checkpoints,
        })
    }
}

/// [`Walk`] over a whole chain; `signed` checks each checkpoint's
/// signature (one that fails names the checkpoint's entry).
pub fn verify(
    entries: &[AuditEntry],
    checkpoints: &[Checkpoint],
    signed: impl Fn(&Checkpoint) -> bool,
) -> Result<Intact, Tampered> {
    if let Some(bad) = checkpoints.iter().find(|c| !signed(c)) {
        return Err(Tampered {
            seq: bad.seq,
            why: format!(
                "the checkpoint at entry {} is not signed by the operator's key",
                bad.seq
            ),
        });
    }
    let mut walk = Walk::new(checkpoints.to_vec());
    for e in entries {
        walk.step(e)?;
    }
    walk.finish()
}

/// Whether a new checkpoint is due: entries were added since the last
/// one, and either `every` of them or `interval` has passed.
pub fn checkpoint_due(
    last: Option<(i64, DateTime<Utc>)>,
    head: i64,
    now: DateTime<Utc>,
    every: i64,
    interval: chrono::Duration,
) -> bool {
    match last {
        None => head > 0,
        Some((seq, at)) => head > seq && (head - seq >= every || now - at >= interval),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::seconds(s)
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let mut d = AuditDraft::new("staff:ann", "change.requested", "ok");
            d.account = Some(format!("acct-{i}"));
            let last = out.last().map(|e| (e.seq, e.hash.as_str()));
            out.push(append(last, d, t(i)));
        }
        out
    }

    fn cp(entries: &[AuditEntry], seq: i64) -> Checkpoint {
        Checkpoint {
            seq,
            head: entries[usize::try_from(seq - 1).unwrap()].hash.clone(),
            at: t(100),
            signature: "sig".into(),
        }
    }

    /// Re-hashes every entry from `from` on, as someone covering an edit
    /// would.
    fn rehash(entries: &mut [AuditEntry], from: usize) {
        for i in from..entries.len() {
            let prev = if i == 0 {
                GENESIS.to_string()
            } else {
                entries[i - 1].hash.clone()
            };
            let e = &mut entries[i];
            e.prev_hash = prev;
            e.hash = entry_hash(e.seq, e.at, &e.draft, &e.prev_hash);
        }
    }

    #[test]
    fn every_kind_of_tampering_names_the_first_bad_entry() {
        let good = chain(6);
        let cps = vec![cp(&good, 3), cp(&good, 6)];
        let signed = |c: &Checkpoint| c.signature == "sig";
        type Case = (
            &'static str,
            fn(&mut Vec<AuditEntry>, &mut Vec<Checkpoint>),
            Option<i64>,
        );
        let cases: Vec<Case> = vec![
            ("intact", |_, _| {}, None),
            (
                "edited",
                |e, _| e[3].draft.outcome = "refused".into(),
                Some(4),
            ),
            ("edited time", |e, _| e[1].at = t(-5), Some(2)),
            (
                "removed in the middle",
                |e, _| {
                    e.remove(2);
                },
                Some(3),
            ),
            (
                "removed and renumbered",
                |e, _| {
                    e.remove(2);
                    for (i, x) in e.iter_mut().enumerate() {
                        x.seq = i64::try_from(i).unwrap() + 1;
                    }
                },
                Some(3),
            ),
            (
                "inserted",
                |e, _| {
                    let mut extra = e[1].clone();
                    extra.draft.actor = "staff:mallory".into();
                    e.insert(2, extra);
                    for (i, x) in e.iter_mut().enumerate() {
                        x.seq = i64::try_from(i).unwrap() + 1;
                    }
                },
                Some(3),
            ),
            (
                "swapped",
                |e, _| {
                    let (a, b) = (e[1].draft.clone(), e[2].draft.clone());
                    e[1].draft = b;
                    e[2].draft = a;
                },
                Some(2),
            ),
            (
                "rewritten and re-hashed",
                |e, _| {
                    e[4].draft.actor = "staff:mallory".into();
                    rehash(e, 4);
                },
                Some(4),
            ),
            (
                "removed from the end",
                |e, _| {
                    e.truncate(4);
                },
                Some(5),
            ),
            (
                "a checkpoint forged",
                |_, c| c[1].signature = "forged".into(),
                Some(6),
            ),
        ];
        for (case, tamper, bad) in cases {
            let (mut e, mut c) = (good.clone(), cps.clone());
            tamper(&mut e, &mut c);
            let got = verify(&e, &c, signed).err().map(|t| t.seq);
            assert_eq!(got, bad, "{case}");
        }
    }

    #[test]
    fn checkpoints_fall_due_by_count_or_time() {
        let m = chrono::Duration::minutes;
        // (case, last checkpoint, head, now, due)
        let cases = [
            ("empty log", None, 0, 0, false),
            ("first entries", None, 1, 0, true),
            ("nothing new", Some((5, t(0))), 5, 3600, false),
            ("few, soon", Some((5, t(0))), 6, 60, false),
            ("enough entries", Some((5, t(0))), 105, 60, true),
            ("enough time", Some((5, t(0))), 6, 600, true),
        ];
        for (case, last, head, now, due) in cases {
            assert_eq!(
                checkpoint_due(last, head, t(now), 100, m(10)),
                due,
                "{case}"
            );
        }
    }

    #[test]
    fn an_intact_chain_counts_what_it_checked() {
        let good = chain(4);
        let intact = verify(&good, &[cp(&good, 4)], |_| true).unwrap();
        assert_eq!(
            intact,
            Intact {
                entries: 4,
                checkpoints: 1
            }
        );
        assert_eq!(verify(&[], &[], |_| true).unwrap().entries, 0);
    }
}
