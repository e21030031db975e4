//! What each store provides: [`Rows`], the row operations of one
//! transaction in its own SQL, and [`Cols`], reading a result row. Every
//! flow that combines them — and every decision — is written once, in
//! `db.rs`, over these; the SQLite and PostgreSQL stores differ only in
//! their SQL text, their connections and their locking.
//!
//! Every operation returns a future that is `Send`, so one flow serves
//! both: PostgreSQL's really wait on the server, SQLite's are ready at once
//! (its writer thread runs them to the end in one poll).

use super::codec::*;
use super::{Decided, Result, StoreError, TokenRecord};
use crate::model::audit::{AuditEntry, Checkpoint};
use crate::model::throttle::Window;
use crate::model::{
    Account, Assurance, Call, Change, ChannelKind, CodeRow, Contact, Destination, Event, Incident,
    KeyRecord, KeyToken, LinkRow, Message, Notification, Priority, ProofUse, RelatedNotice,
    SecurityLevel, Staff, State, VetoLink, from_millis,
};
use chrono::{DateTime, Utc};
use std::future::Future;

/// A destination as the directory API names it.
#[derive(Debug, Clone, Copy)]
pub struct DestRef<'a> {
    pub account: &'a str,
    pub contact: &'a str,
    pub id: &'a str,
}

/// An event to store, with how many notifications it planned and
/// whether it is indexed by its key (`Planner::keyed`).
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub event: &'a Event,
    /// The event as stored ([`event_json`]), serialised before the
    /// writer's turn.
    pub payload: &'a str,
    pub notifications: usize,
    pub keyed: bool,
}

/// Which waiting notifications a cancellation reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Id,
    /// An event's, except kci's own notices (digests, flap summaries),
    /// which carry other events too.
    Event,
    Destination,
    /// A protected change's reminders, by their key (`kci.change:<id>`).
    Reminders,
}

impl By {
    pub fn column(self) -> &'static str {
        match self {
            By::Id => "id",
            By::Event => "event",
            By::Destination => "destination",
            By::Reminders => "key",
        }
    }
}

/// Which changes to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeWhich<'a> {
    /// One, locked for this transaction.
    Id(&'a str),
    /// One, not locked: to learn which account or address to lock first.
    Peek(&'a str),
    /// An address's (only those pending, if `pending`), oldest first.
    Address { address: &'a str, pending: bool },
    /// An account's, oldest first.
    Account { account: &'a str, pending: bool },
    /// Pending ones whose period is over, oldest first.
    Due { now: i64, limit: i64 },
}

/// Which call verifications to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallWhich<'a> {
    /// One, locked for this transaction.
    Id(&'a str),
    /// The one whose customer link hashes so, locked.
    Link(&'a str),
    /// Open ones past their time, oldest first.
    Due { now: i64, limit: i64 },
    /// Open ones of a contact, not past their time.
    Open {
        account: &'a str,
        contact: &'a str,
        now: i64,
    },
}

/// Which assurances to read (locked for the transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssuranceWhich<'a> {
    /// A change's, oldest first.
    Change(&'a str),
    /// The one whose confirmation link hashes so.
    Link(&'a str),
}

/// Which incidents to read, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentWhich<'a> {
    /// One, locked for this transaction.
    Id(&'a str),
    List {
        open_only: bool,
        account: Option<&'a str>,
        limit: i64,
    },
}

/// Which notifications to read.
#[derive(Debug, Clone, PartialEq)]
pub enum Which<'a> {
    One(&'a str),
    /// An event's, by contact and destination.
    OfEvent(&'a str),
    /// Those still folded into a digest, oldest first.
    InDigest(&'a str),
    /// In a state, newest decision first, decided before `before`.
    InState {
        state: State,
        before: i64,
        limit: i64,
    },
    /// Sent on a channel with the provider's report still to come.
    Awaiting {
        channel: ChannelKind,
        limit: i64,
    },
    /// The one of a channel its provider knows by `reference`.
    ByRef {
        channel: ChannelKind,
        reference: &'a str,
    },
}

/// A finished delivery's columns (see `codec::finish_row`).
pub use super::codec::FinishRow;

/// A provider's report written on a sent notification.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    pub status: &'static str,
    pub at: i64,
    pub state: State,
    pub reason: Option<&'static str>,
    pub detail: String,
}

/// Which due notices to take, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub channel: Option<ChannelKind>,
    pub now: i64,
    pub lease_until: i64,
    pub limit: i64,
}

/// A key of an address moving to `state` (`active` with `at`, `replaced`,
/// `removed`).
#[derive(Debug, Clone, Copy)]
pub struct KeyMove<'a> {
    pub address: &'a str,
    pub fingerprint: &'a str,
    pub state: &'a str,
    pub at: Option<i64>,
}

/// The signing secrets of a webhook destination, as stored (sealed). Its
/// `Debug` names which there are, never them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretsRow {
    pub secret: Option<String>,
    pub previous: Option<String>,
    pub previous_until: Option<i64>,
}

impl std::fmt::Debug for SecretsRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsRow")
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .field("previous", &self.previous.as_ref().map(|_| "…"))
            .field("previous_until", &self.previous_until)
            .finish()
    }
}

/// A destination's count of refusals in a row and since when it is
/// unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRow {
    pub failures: u32,
    pub unhealthy_since: Option<DateTime<Utc>>,
}

/// What a claimed notice comes with: its event, whether its account is
/// paranoid, the active key of its address, a webhook destination's
/// signing secrets (by destination id; none for one that is gone).
#[derive(Debug, Clone, Default)]
pub struct ClaimContext {
    pub events: Vec<Event>,
    pub paranoid: Vec<String>,
    pub keys: Vec<(String, String)>,
    pub secrets: Vec<(String, SecretsRow)>,
}

/// The row operations of one transaction (see the module's doc).
pub trait Rows: Send + 'static {
    /// Runs shared statement `sql` (written with PostgreSQL's `$N`) with
    /// `args`; how many rows it changed. What is only a statement and its
    /// arguments is written once, as a default method below, on this.
    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = Result<u64>> + Send;

    /// Runs shared query `sql` (`$N` placeholders) with `args`; its rows,
    /// each as its cells (copied out: for listings, not for hot paths).
    /// What is only a query, its arguments and a row mapper is written
    /// once, as a default method below, on this.
    fn query(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Cells>>> + Send;

    /// The schema's version (0 for a new database), holding the lock that
    /// keeps two migrating nodes apart.
    fn schema_version(&mut self) -> impl Future<Output = Result<i64>> + Send;
    fn migrate_to(
        &mut self,
        version: i64,
        sql: &str,
        at: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The database server's clock (ms since the epoch), when it has one
    /// of its own.
    fn server_time(&mut self) -> impl Future<Output = Result<Option<i64>>> + Send;

    fn insert_token(
        &mut self,
        t: &TokenRecord,
        hash: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    fn token(&mut self, hash: &str) -> impl Future<Output = Result<Option<TokenRecord>>> + Send;
    /// One token by id (`Some`), or every one, newest first.
    fn tokens(&mut self, id: Option<&str>)
    -> impl Future<Output = Result<Vec<TokenRecord>>> + Send;
    /// Revokes a token not revoked yet; whether it was.
    fn revoke_token(&mut self, id: &str, at: i64) -> impl Future<Output = Result<bool>> + Send {
        async move {
            Ok(self
                .run(sql::REVOKE_TOKEN, &[Arg::Text(id), Arg::Int(at)])
                .await?
                == 1)
        }
    }
    /// The count of changes to what a token lookup answers (migration 17).
    fn auth_epoch(&mut self) -> impl Future<Output = Result<i64>> + Send;
    fn touch_token(
        &mut self,
        id: &str,
        at: i64,
        from: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let args = [Arg::Text(id), Arg::Int(at), Arg::OptText(from)];
            self.run(sql::TOUCH_TOKEN, &args).await.map(|_| ())
        }
    }

    fn account(&mut self, id: &str) -> impl Future<Output = Result<Option<Account>>> + Send;
    fn upsert_account(&mut self, a: &Account) -> impl Future<Output = Result<()>> + Send;
    fn contacts(&mut self, account: &str) -> impl Future<Output = Result<Vec<Contact>>> + Send;
    fn contact_exists(
        &mut self,
        account: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    fn upsert_contact(
        &mut self,
        account: &str,
        c: &Contact,
    ) -> impl Future<Output = Result<()>> + Send;
    fn destinations(
        &mut self,
        account: &str,
    ) -> impl Future<Output = Result<Vec<Destination>>> + Send;
    fn insert_destination(
        &mut self,
        account: &str,
        d: &Destination,
    ) -> impl Future<Output = Result<()>> + Send;
    fn delete_destination(&mut self, d: DestRef<'_>) -> impl Future<Output = Result<bool>> + Send;
    /// The account a destination id belongs to, if any.
    fn destination_account(
        &mut self,
        id: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Marks a destination verified (an import's, by an operator).
    fn set_verified(&mut self, id: &str) -> impl Future<Output = Result<()>> + Send {
        async move {
            self.run(sql::SET_VERIFIED, &[Arg::Text(id)])
                .await
                .map(|_| ())
        }
    }
    /// Up to `limit` accounts after `after`, by id.
    fn accounts_after(
        &mut self,
        after: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Account>>> + Send;
    /// The contacts of the accounts from `first` to `last` (by id), each
    /// with its account.
    fn contacts_between(
        &mut self,
        first: &str,
        last: &str,
    ) -> impl Future<Output = Result<Vec<(String, Contact)>>> + Send {
        async move {
            let found = self
                .query(
                    &sql::contacts_between(),
                    &[Arg::Text(first), Arg::Text(last)],
                )
                .await?;
            found.iter().map(contact_of).collect()
        }
    }
    /// The destinations of the accounts from `first` to `last`, each with
    /// its account.
    fn destinations_between(
        &mut self,
        first: &str,
        last: &str,
    ) -> impl Future<Output = Result<Vec<(String, Destination)>>> + Send {
        async move {
            let args = [Arg::Text(first), Arg::Text(last)];
            let found = self.query(&sql::destinations_between(), &args).await?;
            found.iter().map(destination_of).collect()
        }
    }
    fn contacts_with_uri(
        &mut self,
        uri: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// A destination's code row, locked for this transaction.
    fn code_row(&mut self, d: DestRef<'_>) -> impl Future<Output = Result<Option<CodeRow>>> + Send;
    fn write_code_row(
        &mut self,
        id: &str,
        row: &CodeRow,
    ) -> impl Future<Output = Result<()>> + Send;
    fn secrets(&mut self, id: &str) -> impl Future<Output = Result<SecretsRow>> + Send;
    fn set_secret(
        &mut self,
        d: DestRef<'_>,
        s: &SecretsRow,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// A destination's health, locked for this transaction.
    fn health(&mut self, id: &str) -> impl Future<Output = Result<Option<HealthRow>>> + Send;
    fn write_health(&mut self, id: &str, h: HealthRow) -> impl Future<Output = Result<()>> + Send;

    /// Serialises the events of one (account, key) across nodes until the
    /// transaction ends (nothing to do where there is one writer).
    fn lock_key(&mut self, account: &str, key: &str) -> impl Future<Output = Result<()>> + Send;
    /// Plans this transaction's statements for the values they are given,
    /// not by a plan kept from earlier calls (where the engine keeps one).
    fn plan_for_values(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// This transaction's statements read tables through their indexes,
    /// never whole (where the engine keeps plans: one kept from when a
    /// table was small must not read all of it once it has grown).
    fn through_indexes(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// How many notifications the event with this id planned, if it is known.
    fn event_count(&mut self, id: &str) -> impl Future<Output = Result<Option<usize>>> + Send;
    /// Stores the event; `false` if its id was taken meanwhile.
    fn insert_event(&mut self, e: NewEvent<'_>) -> impl Future<Output = Result<bool>> + Send;
    fn event(&mut self, id: &str) -> impl Future<Output = Result<Option<Event>>> + Send;
    /// Every pending notice of `types` for (account, key), locked, and
    /// every notice of the latest event of each type.
    fn related(
        &mut self,
        e: &Event,
        types: &[String],
    ) -> impl Future<Output = Result<Vec<RelatedNotice>>> + Send;
    /// Events of `types` for the event's (account, key) received after `since`.
    fn count_events(
        &mut self,
        e: &Event,
        types: &[String],
        since: i64,
    ) -> impl Future<Output = Result<usize>> + Send;
    /// Non-urgent notices to a destination due after `since`.
    fn load(&mut self, destination: &str, since: i64)
    -> impl Future<Output = Result<usize>> + Send;
    /// The digest still pending at a destination of `account`, locked.
    fn pending_digest(
        &mut self,
        account: &str,
        destination: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    fn history(&mut self, event: &str) -> impl Future<Output = Result<Vec<Decided>>> + Send;

    // Every write to a notification's state records the decision in the
    // same statement or transaction (`d`: its state, reason, detail and
    // time; the due time is the notification's).
    /// Stores a notification and records its first decision.
    fn insert_notification(&mut self, n: &Notification) -> impl Future<Output = Result<()>> + Send;
    /// Of these event ids, those already known, with how many
    /// notifications each planned (one round trip for a batch).
    fn event_counts(
        &mut self,
        ids: &[&str],
    ) -> impl Future<Output = Result<std::collections::HashMap<String, usize>>> + Send;
    /// [`Rows::insert_event`] for each, in order, sent together (a
    /// server pipelines them); for each, `false` if its id was taken.
    fn insert_events(
        &mut self,
        events: &[NewEvent<'_>],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    /// [`Rows::insert_notification`] for each, sent together.
    fn insert_notifications(
        &mut self,
        notes: &[&Notification],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Cancels what still waits of `value` (see [`By`]), erasing any
    /// secret; how many.
    fn cancel(
        &mut self,
        by: By,
        value: &str,
        d: &Decided,
    ) -> impl Future<Output = Result<usize>> + Send;
    fn set_paired_from(&mut self, id: &str, from: i64) -> impl Future<Output = Result<()>> + Send;
    fn set_message(&mut self, id: &str, m: &Message) -> impl Future<Output = Result<()>> + Send;
    /// Takes due notices (of `channel`, or all), leased until `lease`.
    fn claim(&mut self, c: Claim) -> impl Future<Output = Result<Vec<Notification>>> + Send;
    /// Whether a notice of `channel` could be claimed at `now` (ms) but
    /// for its turn: pending and due, or sending with its lease run out
    /// ([`sql::DUE_LEFT`], asked after a claim that took fewer than it
    /// could).
    fn due_left(
        &mut self,
        channel: ChannelKind,
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    fn claim_context(
        &mut self,
        notes: &[Notification],
    ) -> impl Future<Output = Result<ClaimContext>> + Send;
    /// Writes each delivery's outcome on its notification if that is
    /// being sent (under the row's lease, where it names one), and clears
    /// its destination's refusals when the row says so; for each, whether
    /// it was written. The ids are distinct.
    fn finish_all(
        &mut self,
        done: &[(String, FinishRow)],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    /// [`Store::next_due`](super::Store::next_due), after `after` ms.
    fn next_due(&mut self, after: i64) -> impl Future<Output = Result<Option<i64>>> + Send;
    /// A channel's shared limits (its rate's arrival time and its pause,
    /// ms), its row created if new and locked for the transaction.
    fn channel_limit(
        &mut self,
        channel: ChannelKind,
    ) -> impl Future<Output = Result<(Option<i64>, Option<i64>)>> + Send;
    fn set_channel_limit(
        &mut self,
        channel: ChannelKind,
        tat: Option<i64>,
        paused_until: Option<i64>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let args = [
                Arg::Text(channel.as_str()),
                Arg::OptInt(tat),
                Arg::OptInt(paused_until),
            ];
            self.run(sql::SET_CHANNEL_LIMIT, &args).await?;
            Ok(())
        }
    }
    /// See [`super::Store::clear_secrets`].
    fn clear_secrets(&mut self) -> impl Future<Output = Result<Vec<super::ClearSecret>>> + Send {
        async move {
            let found = self.query(sql::CLEAR_SECRETS, &[]).await?;
            found
                .iter()
                .map(|r| {
                    let place = match r.text(0)?.as_str() {
                        "notice" => super::SecretPlace::Notice,
                        "webhook" => super::SecretPlace::Webhook,
                        "previous" => super::SecretPlace::WebhookPrevious,
                        other => {
                            return Err(StoreError::Corrupt(format!("secret place `{other}`")));
                        }
                    };
                    Ok(super::ClearSecret {
                        place,
                        id: r.text(1)?,
                        value: crate::model::Secret::new(r.text(2)?),
                    })
                })
                .collect()
        }
    }
    /// See [`super::Store::replace_secret`].
    fn replace_secret(
        &mut self,
        place: super::SecretPlace,
        id: &str,
        old: &str,
        new: &str,
    ) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let sql = match place {
                super::SecretPlace::Notice => sql::REPLACE_NOTICE_SECRET,
                super::SecretPlace::Webhook => sql::REPLACE_WEBHOOK_SECRET,
                super::SecretPlace::WebhookPrevious => sql::REPLACE_PREVIOUS_SECRET,
            };
            let args = [Arg::Text(id), Arg::Text(old), Arg::Text(new)];
            Ok(self.run(sql, &args).await? == 1)
        }
    }
    /// The channels paused beyond `now` (ms), by name.
    fn channel_pauses(
        &mut self,
        now: i64,
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    /// How many notifications the store holds in each state (the states
    /// with none left out, in the order of their names). One pass with
    /// a counter per state: a `GROUP BY` sorted every row first, which
    /// on ten million took 525 MiB of SQLite's temporary store.
    fn count_by_state(&mut self) -> impl Future<Output = Result<Vec<(State, i64)>>> + Send {
        async move {
            let found = self.query(&sql::count_by_state(), &[]).await?;
            let Some(row) = found.first() else {
                return Ok(Vec::new());
            };
            let mut counts = Vec::new();
            for (i, state) in State::ALL.into_iter().enumerate() {
                let n = row.int(i)?;
                if n > 0 {
                    counts.push((state, n));
                }
            }
            counts.sort_by_key(|(s, _)| s.as_str());
            Ok(counts)
        }
    }
    /// The backlog gauges: the oldest pending due time (ms), protected
    /// changes pending, incidents open, destinations unhealthy.
    fn backlog(&mut self) -> impl Future<Output = Result<(Option<i64>, i64, i64, i64)>> + Send;
    fn notifications(
        &mut self,
        which: Which<'_>,
    ) -> impl Future<Output = Result<Vec<Notification>>> + Send;
    /// A failed notification back in the queue, due `d.at`; `false` if
    /// it was not failed.
    fn redrive(&mut self, id: &str, d: &Decided) -> impl Future<Output = Result<bool>> + Send;
    /// Everything `sending` back to `pending`; how many.
    fn requeue_sending(&mut self, d: &Decided) -> impl Future<Output = Result<usize>> + Send;
    /// Writes a report on a sent notification still awaiting one; `false`
    /// if there is none.
    fn receipt(&mut self, id: &str, r: &ReceiptRow) -> impl Future<Output = Result<bool>> + Send;

    /// Serialises the transactions that change one address's keys.
    fn lock_address(&mut self, address: &str) -> impl Future<Output = Result<()>> + Send;
    /// An address's active and pending keys, oldest first.
    fn live_keys(&mut self, address: &str) -> impl Future<Output = Result<Vec<KeyRecord>>> + Send;
    fn changes(
        &mut self,
        which: ChangeWhich<'_>,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;
    fn key(
        &mut self,
        address: &str,
        fingerprint: &str,
    ) -> impl Future<Output = Result<Option<KeyRecord>>> + Send;
    fn upsert_pending_key(&mut self, k: &KeyRecord) -> impl Future<Output = Result<()>> + Send;
    fn refresh_key(&mut self, k: &KeyRecord) -> impl Future<Output = Result<bool>> + Send;
    fn insert_links(&mut self, links: &[KeyToken]) -> impl Future<Output = Result<()>> + Send;
    /// A link by its hash, locked.
    fn link(&mut self, hash: &str) -> impl Future<Output = Result<Option<LinkRow>>> + Send;
    fn use_link(&mut self, hash: &str, at: i64) -> impl Future<Output = Result<()>> + Send;
    fn move_key(&mut self, m: KeyMove<'_>) -> impl Future<Output = Result<()>> + Send;
    /// Stores a change: a new one whole; a known one's state, proofs,
    /// approvals and reason (never its clock or what it asks).
    /// (`at`: when it ended, if it did now.)
    fn upsert_change(&mut self, c: &Change, at: i64) -> impl Future<Output = Result<()>> + Send;
    fn insert_veto_link(
        &mut self,
        hash: &str,
        link: &VetoLink,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A veto link by its hash, locked.
    fn veto_link(&mut self, hash: &str) -> impl Future<Output = Result<Option<VetoLink>>> + Send;
    fn use_veto_link(&mut self, hash: &str, at: i64) -> impl Future<Output = Result<()>> + Send {
        async move {
            let args = [Arg::Text(hash), Arg::Int(at)];
            self.run(sql::USE_VETO_LINK, &args).await.map(|_| ())
        }
    }
    fn set_security(
        &mut self,
        account: &str,
        level: SecurityLevel,
        paranoid: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let args = [
                Arg::Text(account),
                Arg::Text(level.as_str()),
                Arg::Bool(paranoid),
            ];
            self.run(sql::SET_SECURITY, &args).await.map(|_| ())
        }
    }
    /// An account's postal address, as a change sets it.
    fn set_postal_address(
        &mut self,
        account: &str,
        address: Option<&crate::model::PostalAddress>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let json = postal_to_json(address);
            let args = [Arg::Text(account), Arg::OptText(json.as_deref())];
            self.run(sql::SET_POSTAL_ADDRESS, &args).await.map(|_| ())
        }
    }
    fn upsert_incident(&mut self, i: &Incident) -> impl Future<Output = Result<()>> + Send;
    /// Stores a call verification (a new one whole; a known one's state,
    /// confirmations, attempts and reason).
    fn upsert_call(&mut self, c: &Call) -> impl Future<Output = Result<()>> + Send;
    fn calls(&mut self, which: CallWhich<'_>) -> impl Future<Output = Result<Vec<Call>>> + Send;
    /// Stores an assurance (a new one whole; a known one's state,
    /// T-word and attempts).
    fn upsert_assurance(&mut self, a: &Assurance) -> impl Future<Output = Result<()>> + Send;
    fn assurances(
        &mut self,
        which: AssuranceWhich<'_>,
    ) -> impl Future<Output = Result<Vec<Assurance>>> + Send;
    fn incidents(
        &mut self,
        which: IncidentWhich<'_>,
    ) -> impl Future<Output = Result<Vec<Incident>>> + Send;

    /// Serialises appends to the audit log across nodes until the
    /// transaction ends, and answers its last entry (number and hash).
    fn audit_last(&mut self) -> impl Future<Output = Result<Option<(i64, String)>>> + Send;
    fn insert_audit(&mut self, e: &AuditEntry) -> impl Future<Output = Result<()>> + Send;
    /// Entries after `after` (of one account, or all), in order.
    fn audit(
        &mut self,
        account: Option<&str>,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AuditEntry>>> + Send {
        async move {
            let args = [Arg::Int(after), Arg::OptText(account), Arg::Int(limit)];
            let found = self.query(&sql::audit(), &args).await?;
            found.iter().map(audit_entry).collect()
        }
    }
    /// Every checkpoint in order, or only the latest.
    fn checkpoints(&mut self, latest: bool)
    -> impl Future<Output = Result<Vec<Checkpoint>>> + Send;
    fn insert_checkpoint(&mut self, c: &Checkpoint) -> impl Future<Output = Result<bool>> + Send;

    fn insert_staff(&mut self, s: &Staff) -> impl Future<Output = Result<bool>> + Send;
    /// One staff member (`Some(name)`) or all, by name.
    fn staff(&mut self, name: Option<&str>) -> impl Future<Output = Result<Vec<Staff>>> + Send;
    fn disable_staff(&mut self, name: &str, at: i64) -> impl Future<Output = Result<bool>> + Send {
        async move {
            Ok(self
                .run(sql::DISABLE_STAFF, &[Arg::Text(name), Arg::Int(at)])
                .await?
                > 0)
        }
    }
    /// How `name` logs in, if an enrolment was ever issued.
    fn staff_login(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<crate::model::StaffLogin>>> + Send {
        async move {
            let found = self.query(sql::STAFF_LOGIN, &[Arg::Text(name)]).await?;
            found.first().map(staff_login).transpose()
        }
    }
    /// A new enrolment code for `name`: whatever it logged in with is
    /// dropped (a re-enrolment after a lost phone or a leaked password).
    fn put_enrolment(
        &mut self,
        name: &str,
        hash: &str,
        expires_at: i64,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let args = [Arg::Text(name), Arg::Text(hash), Arg::Int(expires_at)];
            self.run(sql::PUT_ENROLMENT, &args).await.map(|_| ())
        }
    }
    /// Revokes every session token of `name`; how many.
    fn revoke_sessions(&mut self, name: &str, at: i64) -> impl Future<Output = Result<u64>> + Send {
        async move {
            self.run(sql::REVOKE_SESSIONS, &[Arg::Text(name), Arg::Int(at)])
                .await
        }
    }
    /// Sets `name`'s password and TOTP secret, using up the enrolment code
    /// hashing to `hash` if it is still there and not expired at `at`;
    /// whether it was.
    fn enrol_staff(
        &mut self,
        name: &str,
        hash: &str,
        password_hash: &str,
        totp_secret: &str,
        at: i64,
    ) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let args = [
                Arg::Text(name),
                Arg::Text(hash),
                Arg::Int(at),
                Arg::Text(password_hash),
                Arg::Text(totp_secret),
            ];
            Ok(self.run(sql::ENROL_STAFF, &args).await? == 1)
        }
    }
    /// Records TOTP step `step` of secret `secret` (sealed, as read) as
    /// used by `name`, if it is later than the last one used and the
    /// secret is still theirs; whether it was (else: a replay, a race
    /// lost, or a new enrolment meanwhile).
    fn use_totp_step(
        &mut self,
        name: &str,
        step: i64,
        secret: &str,
        at: i64,
    ) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let args = [
                Arg::Text(name),
                Arg::Int(step),
                Arg::Int(at),
                Arg::Text(secret),
            ];
            Ok(self.run(sql::USE_TOTP_STEP, &args).await? == 1)
        }
    }
    /// A channel's sealed credential (`channels::credentials`).
    fn credential(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<crate::channels::StoredCredential>>> + Send;
    /// Inserts version 1 unless one is stored; `false` if one was.
    fn insert_credential(
        &mut self,
        name: &str,
        sealed: &str,
        seed: &str,
        at: i64,
    ) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let args = [
                Arg::Text(name),
                Arg::Text(sealed),
                Arg::Text(seed),
                Arg::Int(at),
            ];
            Ok(self.run(sql::INSERT_CREDENTIAL, &args).await? > 0)
        }
    }
    /// Moves `name` from version `expected` to the next with these values;
    /// `false` if it is not at `expected`.
    fn swap_credential(
        &mut self,
        name: &str,
        expected: i64,
        sealed: &str,
        seed: &str,
        at: i64,
    ) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let args = [
                Arg::Text(name),
                Arg::Int(expected),
                Arg::Text(sealed),
                Arg::Text(seed),
                Arg::Int(at),
            ];
            Ok(self.run(sql::SWAP_CREDENTIAL, &args).await? > 0)
        }
    }
    /// Records a proof as used; `false` if it was already (a replay).
    fn use_proof(&mut self, p: &ProofUse, now: i64) -> impl Future<Output = Result<bool>> + Send;

    /// A limit's window, locked.
    fn window(
        &mut self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<Window>>> + Send;
    fn put_window(
        &mut self,
        bucket: &str,
        key: &str,
        w: Window,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A value bound to a shared statement, for either store.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

/// One result row, by column index: a backend says what a cell holds,
/// the rest reads it as the column is meant.
/// A row as its cells, as [`Rows::query`] answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cells(pub Vec<Cell>);

impl Cols for Cells {
    fn cell(&self, i: usize) -> Result<Cell> {
        self.0
            .get(i)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("column {i}: not in the row")))
    }
}

pub trait Cols {
    fn cell(&self, i: usize) -> Result<Cell>;

    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(s) => Ok(Some(s)),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: text expected, not {other:?}"
            ))),
        }
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Int(n) => Ok(Some(n)),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: a number expected, not {other:?}"
            ))),
        }
    }
    fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {i}: text expected, not NULL")))
    }
    fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {i}: a number expected, not NULL")))
    }
    /// A truth value (SQLite keeps them as 0 and 1).
    fn flag(&self, i: usize) -> Result<bool> {
        match self.cell(i)? {
            Cell::Bool(b) => Ok(b),
            Cell::Int(n) => Ok(n != 0),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: true or false expected, not {other:?}"
            ))),
        }
    }
    fn count(&self, i: usize) -> Result<u32> {
        Ok(u32::try_from(self.int(i)?).unwrap_or(u32::MAX))
    }
    fn time(&self, i: usize) -> Result<DateTime<Utc>> {
        Ok(from_millis(self.int(i)?))
    }
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>> {
        Ok(self.opt_int(i)?.map(from_millis))
    }
}

/// Queries both stores run alike, written once: which calls are due or
/// open, which incidents a list holds and in what order, how the audit
/// log pages, and the plain updates. In PostgreSQL's placeholders (`$1`,
/// `$2::TEXT`); SQLite runs them through [`sqlite`]. Row locks
/// (`FOR UPDATE`) are PostgreSQL's own, added there.
pub mod sql {
    use super::{
        ACCOUNT_COLUMNS, AUDIT_COLUMNS, CALL_COLUMNS, CONTACT_COLUMNS, DESTINATION_COLUMNS,
        INCIDENT_COLUMNS, VETO_LINK_COLUMNS,
    };

    /// A claim's condition on candidate `n`: the notices of one key to
    /// one destination (its URI: kci's own mails to an address have no
    /// destination row) go out one at a time, in the order they were
    /// planned (ids are UUIDv7, time-ordered). `n` waits while an earlier
    /// one of its account, key and URI is due at `now` (a placeholder) or
    /// being sent, or is waiting to be tried again — after a transient
    /// failure, a provider's 429, a restart or an operator's redrive. An
    /// earlier one that its policy places later (quiet hours, a hold,
    /// `not_before`) does not hold up one that may go now.
    ///
    /// Asked as two questions, each answered inside an index of its own
    /// on both stores (PostgreSQL since migration 23, SQLite since 24):
    /// is an earlier one due (`notifications_turn`, by due time), and is
    /// one busy (`notifications_busy`, which holds only notices in flight
    /// or waiting for a retry). A key's notices held for later are in
    /// neither question's range, so they cost a claim nothing. One store
    /// cannot search an index for an `OR`: asked as one, SQLite walked
    /// every entry the key held for later for each due candidate (2.5 ms a
    /// claim of 64 with 160 held a key, BENCHMARKS.md stop 39), PostgreSQL
    /// read each of their rows. This is SQLite's form: the indexes are
    /// named (`INDEXED BY`), since after an operator's `ANALYZE` statistics
    /// of one busy key made SQLite plan it another way (`sqlite::tests`);
    /// each `state IN` term repeats the index's condition so that SQLite
    /// may use it.
    pub fn in_turn(now: &str) -> String {
        turn_questions(
            now,
            [
                " INDEXED BY notifications_turn",
                " INDEXED BY notifications_busy",
            ],
            "",
        )
    }

    /// [`in_turn`] as PostgreSQL asks it. `OFFSET 0` keeps each question a
    /// subplan asked of one candidate at a time, by its account, key and
    /// URI. As anti-joins, a plan made while the table was small (a fresh
    /// hub; a cached generic plan) could scan every due or busy notice
    /// once per candidate instead: a claim took seconds, leases ran out,
    /// and several nodes sent the same notices (`postgres::tests`).
    pub fn in_turn_split(now: &str) -> String {
        turn_questions(now, ["", ""], " OFFSET 0")
    }

    /// The two questions of [`in_turn`], each reading the index named in
    /// `from` (a store's hint, or none) and ending in `tail`.
    fn turn_questions(now: &str, from: [&str; 2], tail: &str) -> String {
        let [due, busy] = from;
        format!(
            "NOT EXISTS (SELECT 1 FROM notifications o{due} WHERE {EARLIER} AND o.due_at <= {now}{tail}) \
             AND NOT EXISTS (SELECT 1 FROM notifications o{busy} WHERE {EARLIER} AND {BUSY}{tail})"
        )
    }

    /// An earlier waiting notice `o` of candidate `n`'s account, key and URI.
    const EARLIER: &str = "o.account = n.account AND o.key = n.key AND o.uri = n.uri \
         AND o.id < n.id AND o.state IN ('pending', 'sending')";
    /// Waiting notice `o` is being sent, or waits to be tried again; the
    /// condition of the `notifications_busy` index, word for word.
    const BUSY: &str =
        "(o.state = 'sending' OR o.reason IN ('retry', 'rate_limit', 'requeued', 'redriven'))";

    /// The count of notifications in each of [`State::ALL`], in one pass.
    pub fn count_by_state() -> String {
        let each: Vec<String> = crate::model::State::ALL
            .iter()
            .map(|s| format!("COUNT(*) FILTER (WHERE state = '{}')", s.as_str()))
            .collect();
        format!("SELECT {} FROM notifications", each.join(", "))
    }
    /// Secrets not in the sealed format (`v1.`), through the partial
    /// indexes on rows that hold one (migration 19).
    pub const CLEAR_SECRETS: &str = "SELECT 'notice', id, secret FROM notifications \
         WHERE secret IS NOT NULL AND substr(secret, 1, 3) <> 'v1.' \
         UNION ALL SELECT 'webhook', id, secret FROM destinations \
         WHERE secret IS NOT NULL AND substr(secret, 1, 3) <> 'v1.' \
         UNION ALL SELECT 'previous', id, previous_secret FROM destinations \
         WHERE secret IS NOT NULL AND substr(previous_secret, 1, 3) <> 'v1.'";
    pub const REPLACE_NOTICE_SECRET: &str =
        "UPDATE notifications SET secret = $3 WHERE id = $1 AND secret = $2";
    pub const REPLACE_WEBHOOK_SECRET: &str =
        "UPDATE destinations SET secret = $3 WHERE id = $1 AND secret = $2";
    pub const REPLACE_PREVIOUS_SECRET: &str =
        "UPDATE destinations SET previous_secret = $3 WHERE id = $1 AND previous_secret = $2";
    /// The earliest due time of a pending notice, as one `t` per channel
    /// each read at the front of its range of `notifications_channel_due`
    /// (channel, due_at): the only index in due order since migration 27
    /// dropped the one on `due_at` alone, which every notice's insert,
    /// claim and finish had to keep as well. `later` narrows the due time.
    ///
    /// Each is the first row in due order (`ORDER BY … LIMIT 1`), not a
    /// `MIN`: PostgreSQL reads a `MIN` from the front of an index only
    /// when its statistics say that is cheaper, and until the table is
    /// analyzed after a burst of ingest they say it holds one row: it
    /// read every pending notice of the channel (5–12 ms with 25,000,
    /// BENCHMARKS.md stop 56). A `LIMIT 1` in index order stops at the
    /// first whatever the statistics.
    fn earliest_due(later: &str) -> String {
        let each = crate::model::ChannelKind::ALL.map(|c| {
            format!(
                "SELECT (SELECT due_at FROM notifications \
                 WHERE state = 'pending' AND channel = '{}'{later} ORDER BY due_at LIMIT 1) AS t",
                c.as_str()
            )
        });
        each.join(" UNION ALL ")
    }

    /// The due time of a notice of channel `$1` due by `$2` (ms), or else
    /// the lease end of one whose lease ran out by then: NULL if none.
    /// Asked after a claim that took fewer than it could, it finds only
    /// notices waiting for their turn. Each read at the front of its
    /// index in order, as [`earliest_due`] and for the same reason.
    pub const DUE_LEFT: &str = "SELECT COALESCE(\
         (SELECT due_at FROM notifications WHERE state = 'pending' AND channel = $1 AND due_at <= $2 \
          ORDER BY due_at LIMIT 1), \
         (SELECT lease_until FROM notifications WHERE state = 'sending' AND lease_until <= $2 \
          AND channel = $1 ORDER BY lease_until LIMIT 1))";
    /// The earliest due time or lease end after `$1` (ms); the lease end,
    /// as the due times, the first in order rather than a `MIN`.
    pub static NEXT_DUE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT MIN(t) FROM ({} \
             UNION ALL SELECT (SELECT lease_until FROM notifications WHERE state = 'sending' AND lease_until > $1 \
             ORDER BY lease_until LIMIT 1)) x",
            earliest_due(" AND due_at > $1")
        )
    });
    pub const MOVE_KEY: &str = "UPDATE keys SET state = $3, activated_at = COALESCE($4, activated_at) \
         WHERE address = $1 AND fingerprint = $2";
    /// A change written whole; a later write keeps the first time it was
    /// decided.
    pub const UPSERT_CHANGE: &str = "INSERT INTO changes (id, kind, account, address, state, proof, requested_at, requested_by, not_before, \
         approvals, approvals_needed, reason, subject, proven_current, proven_new, decided_at, proof_code, factors) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, proof = EXCLUDED.proof, \
         approvals = EXCLUDED.approvals, reason = EXCLUDED.reason, proven_current = EXCLUDED.proven_current, \
         proven_new = EXCLUDED.proven_new, decided_at = COALESCE(changes.decided_at, EXCLUDED.decided_at), \
         proof_code = EXCLUDED.proof_code, factors = EXCLUDED.factors";
    /// What the backlog gauges read, in one round trip.
    /// A channel's rotating credential `$1`, first stored at version 1.
    pub const INSERT_CREDENTIAL: &str = "INSERT INTO credentials (name, version, sealed, seed, updated_at) \
         VALUES ($1, 1, $2, $3, $4) ON CONFLICT DO NOTHING";
    /// Credential `$1` replaced only from the version `$2` read.
    pub const SWAP_CREDENTIAL: &str = "UPDATE credentials SET version = version + 1, sealed = $3, seed = $4, updated_at = $5 \
         WHERE name = $1 AND version = $2";
    /// The row of channel `$1`'s limits, made if missing.
    pub const NEW_CHANNEL_LIMIT: &str =
        "INSERT INTO channel_limits (channel) VALUES ($1) ON CONFLICT (channel) DO NOTHING";
    pub const CHANNEL_LIMIT: &str =
        "SELECT tat, paused_until FROM channel_limits WHERE channel = $1";
    pub const SET_CHANNEL_LIMIT: &str =
        "UPDATE channel_limits SET tat = $2, paused_until = $3 WHERE channel = $1";
    pub const REVOKE_TOKEN: &str =
        "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
    pub const TOUCH_TOKEN: &str =
        "UPDATE tokens SET last_used_at = $2, last_used_from = $3 WHERE id = $1";
    pub const DISABLE_STAFF: &str =
        "UPDATE staff SET disabled_at = $2 WHERE name = $1 AND disabled_at IS NULL";
    pub const STAFF_LOGIN: &str = "SELECT name, password_hash, totp_secret, totp_last_step, enrol_hash, \
         enrol_expires_at, enrolled_at, confirmed_at FROM staff_logins WHERE name = $1";
    /// The step is kept: it only ever moves forward, whatever the secret.
    pub const PUT_ENROLMENT: &str = "INSERT INTO staff_logins (name, enrol_hash, enrol_expires_at) \
         VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET enrol_hash = EXCLUDED.enrol_hash, \
         enrol_expires_at = EXCLUDED.enrol_expires_at, password_hash = NULL, totp_secret = NULL, \
         enrolled_at = NULL, confirmed_at = NULL";
    pub const REVOKE_SESSIONS: &str = "UPDATE tokens SET revoked_at = $2 \
         WHERE staff = $1 AND session AND revoked_at IS NULL";
    /// A new secret starts its own count of steps.
    pub const ENROL_STAFF: &str = "UPDATE staff_logins SET password_hash = $4, totp_secret = $5, \
         totp_last_step = 0, enrolled_at = $3, confirmed_at = NULL, enrol_hash = NULL, enrol_expires_at = NULL \
         WHERE name = $1 AND enrol_hash = $2 AND enrol_expires_at > $3";
    /// Only with the secret the code was checked against (`$4`): a login
    /// checked against a secret replaced meanwhile takes nothing.
    pub const USE_TOTP_STEP: &str = "UPDATE staff_logins SET totp_last_step = $2, \
         confirmed_at = COALESCE(confirmed_at, $3) \
         WHERE name = $1 AND totp_last_step < $2 AND totp_secret = $4";
    pub const AUTH_EPOCH: &str = "SELECT n FROM auth_epoch WHERE id = 1";
    pub const CHANNEL_PAUSES: &str =
        "SELECT channel, paused_until FROM channel_limits WHERE paused_until > $1";
    pub static BACKLOG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT (SELECT MIN(t) FROM ({}) d), \
             (SELECT COUNT(*) FROM changes WHERE state = 'pending'), \
             (SELECT COUNT(*) FROM incidents WHERE state = 'open'), \
             (SELECT COUNT(*) FROM destinations WHERE unhealthy_since IS NOT NULL)",
            earliest_due("")
        )
    });
    /// The account destination `$1` belongs to.
    pub const DESTINATION_ACCOUNT: &str = "SELECT account FROM destinations WHERE id = $1";
    /// An operator's import marks destination `$1` verified.
    pub const SET_VERIFIED: &str = "UPDATE destinations SET verified = TRUE WHERE id = $1";
    pub const USE_VETO_LINK: &str = "UPDATE change_links SET used_at = $2 WHERE hash = $1";
    pub const SET_SECURITY: &str =
        "UPDATE accounts SET security_level = $2, paranoid = $3 WHERE id = $1";
    /// An account's postal address (JSON), as a change sets it.
    pub const SET_POSTAL_ADDRESS: &str = "UPDATE accounts SET postal_address = $2 WHERE id = $1";

    /// Accounts after `$1` (all if NULL) by id, `$2` at most: a page of
    /// an export.
    pub fn accounts_after() -> String {
        format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE ($1::TEXT IS NULL OR id > $1) \
             ORDER BY id LIMIT $2"
        )
    }
    /// The contacts of accounts `$1` to `$2`, their account last.
    pub fn contacts_between() -> String {
        format!(
            "SELECT {CONTACT_COLUMNS}, account FROM contacts WHERE account >= $1 AND account <= $2 \
             ORDER BY account, id"
        )
    }
    /// The destinations of accounts `$1` to `$2`, their account last.
    pub fn destinations_between() -> String {
        format!(
            "SELECT {DESTINATION_COLUMNS}, account FROM destinations \
             WHERE account >= $1 AND account <= $2 ORDER BY account, contact, id"
        )
    }
    pub fn veto_link() -> String {
        format!("SELECT {VETO_LINK_COLUMNS} FROM change_links WHERE hash = $1")
    }
    pub fn call_by_id() -> String {
        format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1")
    }
    pub fn call_by_link() -> String {
        format!("SELECT {CALL_COLUMNS} FROM calls WHERE link_hash = $1")
    }
    /// Open calls past their time (`$1` now), soonest first, `$2` at most.
    pub fn calls_due() -> String {
        format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE state = 'open' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2"
        )
    }
    /// A contact's open, live calls (`$1` account, `$2` contact, `$3` now).
    pub fn calls_open() -> String {
        format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE account = $1 AND contact = $2 AND state = 'open' \
             AND expires_at > $3 ORDER BY opened_at"
        )
    }
    pub fn incident_by_id() -> String {
        format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1")
    }
    /// Incidents (`$1` open only, `$2` of one account or all), newest
    /// first, `$3` at most.
    pub fn incidents() -> String {
        format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE (NOT $1 OR state = 'open') \
             AND ($2::TEXT IS NULL OR account = $2) ORDER BY opened_at DESC, id DESC LIMIT $3"
        )
    }
    /// Audit entries after `$1` (of account `$2`, or all), in order, `$3`
    /// at most.
    pub fn audit() -> String {
        format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > $1 AND ($2::TEXT IS NULL OR account = $2) \
             ORDER BY seq LIMIT $3"
        )
    }
}

/// A query of [`sql`] in SQLite's placeholders: `$N` becomes `?N`, and a
/// PostgreSQL cast after it (`::TEXT`) goes.
pub fn sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' || !chars.peek().is_some_and(char::is_ascii_digit) {
            out.push(c);
            continue;
        }
        out.push('?');
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            out.push(d);
        }
        if chars.next_if_eq(&':').is_some() {
            chars.next_if_eq(&':');
            while chars.next_if(|c| c.is_ascii_alphanumeric()).is_some() {}
        }
    }
    out
}

/// The columns [`notification`] reads, in its order.
pub const NOTIFICATION_COLUMNS: &str = "id, event, account, contact, destination, uri, channel, type, key, priority, \
     state, reason, detail, due_at, expires_at, decided_at, sent_at, attempts, timezone, message, digest, paired_from, \
     provider_ref, receipt, segments, secret, paced";

/// A destination's signing secrets from `secret, previous_secret,
/// previous_until` at columns `from`, `from + 1`, `from + 2`.
pub fn secrets(r: &impl Cols, from: usize) -> Result<SecretsRow> {
    Ok(SecretsRow {
        secret: r.opt_text(from)?,
        previous: r.opt_text(from + 1)?,
        previous_until: r.opt_int(from + 2)?,
    })
}

pub fn notification(r: &impl Cols) -> Result<Notification> {
    Ok(Notification {
        id: r.text(0)?,
        event: r.opt_text(1)?,
        account: r.text(2)?,
        contact: r.text(3)?,
        destination: r.text(4)?,
        uri: r.text(5)?,
        channel: channel_from_text(&r.text(6)?)?,
        type_name: r.text(7)?,
        key: r.text(8)?,
        priority: Priority::from_rank(i32::try_from(r.int(9)?).unwrap_or(0)),
        state: state_from_text(&r.text(10)?)?,
        reason: reason_from_text(r.opt_text(11)?)?,
        detail: r.opt_text(12)?,
        due_at: r.time(13)?,
        expires_at: r.opt_time(14)?,
        decided_at: r.time(15)?,
        sent_at: r.opt_time(16)?,
        attempts: r.count(17)?,
        timezone: r.text(18)?,
        message: message_from_json(r.opt_text(19)?)?,
        digest: r.opt_text(20)?,
        paired_from: r.opt_time(21)?,
        provider_ref: r.opt_text(22)?,
        receipt: receipt_from_text(r.opt_text(23)?)?,
        segments: r.opt_int(24)?.and_then(|s| u32::try_from(s).ok()),
        secret: r.opt_text(25)?.map(crate::model::Secret::new),
        paced: r.count(26)?,
    })
}

/// The columns [`key`] reads.
pub const KEY_COLUMNS: &str =
    "address, fingerprint, armored, state, source, submitted_at, activated_at, expires_at";

pub fn key(r: &impl Cols) -> Result<KeyRecord> {
    Ok(KeyRecord {
        address: r.text(0)?,
        fingerprint: r.text(1)?,
        armored: r.text(2)?,
        state: key_state(&r.text(3)?)?,
        source: r.text(4)?,
        submitted_at: r.time(5)?,
        activated_at: r.opt_time(6)?,
        expires_at: r.opt_time(7)?,
    })
}

/// The columns [`change`] reads.
pub const CHANGE_COLUMNS: &str = "id, kind, account, address, state, proof, requested_at, requested_by, not_before, \
     approvals, approvals_needed, reason, subject, proven_current, proven_new, proof_code, factors";

pub fn change(r: &impl Cols) -> Result<Change> {
    Ok(Change {
        id: r.text(0)?,
        kind: change_kind(&r.text(1)?)?,
        account: r.opt_text(2)?,
        address: r.opt_text(3)?,
        state: change_state(&r.text(4)?)?,
        proof: r.opt_text(5)?,
        requested_at: r.time(6)?,
        requested_by: r.text(7)?,
        not_before: r.time(8)?,
        approvals: json_column(&r.text(9)?, "approvals")?,
        approvals_needed: r.count(10)?,
        reason: r.opt_text(11)?,
        subject: json_column(&r.text(12)?, "subject")?,
        proven_current: r.flag(13)?,
        proven_new: r.flag(14)?,
        proof_code: r
            .opt_text(15)?
            .map(|s| json_column(&s, "proof_code"))
            .transpose()?,
        factors: json_column(&r.text(16)?, "factors")?,
    })
}

/// A change's columns as written as JSON.
pub struct ChangeJson {
    pub approvals: String,
    pub subject: String,
    pub code: Option<String>,
    pub factors: String,
    /// When it ended: `at` once it is no longer pending (a store keeps the
    /// first such time).
    pub decided_at: Option<i64>,
}

/// A change's columns as written as JSON: approvals, subject, proof code,
/// factors.
pub fn change_json(c: &Change, at: i64) -> Result<ChangeJson> {
    let json = |v: serde_json::Result<String>| v.map_err(|e| StoreError::Corrupt(e.to_string()));
    Ok(ChangeJson {
        approvals: json(serde_json::to_string(&c.approvals))?,
        subject: json(serde_json::to_string(&c.subject))?,
        code: c
            .proof_code
            .as_ref()
            .map(|p| json(serde_json::to_string(p)))
            .transpose()?,
        factors: json(serde_json::to_string(&c.factors))?,
        decided_at: (c.state != crate::model::ChangeState::Pending).then_some(at),
    })
}

fn json_column<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The columns [`veto_link`] reads.
pub const VETO_LINK_COLUMNS: &str = "change, destination, expires_at, used_at IS NOT NULL";

pub fn veto_link(r: &impl Cols) -> Result<VetoLink> {
    Ok(VetoLink {
        change: r.text(0)?,
        destination: r.text(1)?,
        expires_at: r.time(2)?,
        used: r.flag(3)?,
    })
}

/// The columns [`incident`] reads.
pub const INCIDENT_COLUMNS: &str =
    "id, account, change, kind, opened_at, state, note, closed_at, closed_by";

pub fn incident(r: &impl Cols) -> Result<Incident> {
    Ok(Incident {
        id: r.text(0)?,
        account: r.opt_text(1)?,
        change: r.opt_text(2)?,
        kind: r.text(3)?,
        opened_at: r.time(4)?,
        state: r.text(5)?,
        note: r.opt_text(6)?,
        closed_at: r.opt_time(7)?,
        closed_by: r.opt_text(8)?,
    })
}

/// The columns [`call`] reads.
pub const CALL_COLUMNS: &str = "id, account, contact, staff, state, opened_at, expires_at, staff_code_hash, \
     customer_code_hash, link_hash, staff_confirmed, customer_confirmed, attempts, reason";

pub fn call(r: &impl Cols) -> Result<Call> {
    let state = r.text(4)?;
    let staff_confirmed = r.flag(10)?;
    let customer_confirmed = r.flag(11)?;
    Ok(Call {
        id: r.text(0)?,
        account: r.text(1)?,
        contact: r.text(2)?,
        staff: r.text(3)?,
        state: crate::model::CallState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("call state `{state}`")))?,
        opened_at: r.time(5)?,
        expires_at: r.time(6)?,
        staff_code: crate::model::CallCode {
            hash: r.text(7)?,
            matched: customer_confirmed,
        },
        customer_code: crate::model::CallCode {
            hash: r.text(8)?,
            matched: staff_confirmed,
        },
        link_hash: r.text(9)?,
        staff_confirmed,
        customer_confirmed,
        attempts: r.count(12)?,
        reason: r.opt_text(13)?,
    })
}

/// The columns [`assurance`] reads.
pub const ASSURANCE_COLUMNS: &str = "id, change, account, address, assurer, ticket, met_on, recorded_at, state, \
     a_hash, link_hash, link_expires_at, t_hash, t_expires_at, attempts";

pub fn assurance(r: &impl Cols) -> Result<Assurance> {
    let state = r.text(8)?;
    Ok(Assurance {
        id: r.text(0)?,
        change: r.text(1)?,
        account: r.opt_text(2)?,
        address: r.text(3)?,
        assurer: r.text(4)?,
        ticket: r.text(5)?,
        met_on: r.time(6)?,
        recorded_at: r.time(7)?,
        state: crate::model::AssuranceState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("assurance state `{state}`")))?,
        a_hash: r.text(9)?,
        link_hash: r.text(10)?,
        link_expires_at: r.time(11)?,
        t_hash: r.opt_text(12)?,
        t_expires_at: r.opt_time(13)?,
        attempts: r.count(14)?,
    })
}

/// The columns [`audit_entry`] reads.
pub const AUDIT_COLUMNS: &str = "seq, at, actor, action, account, address, change, ticket, source, outcome, detail, prev_hash, hash";

pub fn audit_entry(r: &impl Cols) -> Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.int(0)?,
        at: r.time(1)?,
        draft: crate::model::audit::AuditDraft {
            actor: r.text(2)?,
            action: r.text(3)?,
            account: r.opt_text(4)?,
            address: r.opt_text(5)?,
            change: r.opt_text(6)?,
            ticket: r.opt_text(7)?,
            source: r.opt_text(8)?,
            outcome: r.text(9)?,
            detail: r.opt_text(10)?,
        },
        prev_hash: r.text(11)?,
        hash: r.text(12)?,
    })
}

/// The columns [`checkpoint`] reads.
pub const CHECKPOINT_COLUMNS: &str = "seq, head, at, signature";

pub fn checkpoint(r: &impl Cols) -> Result<Checkpoint> {
    Ok(Checkpoint {
        seq: r.int(0)?,
        head: r.text(1)?,
        at: r.time(2)?,
        signature: r.text(3)?,
    })
}

/// The columns [`credential`] reads.
pub const CREDENTIAL_COLUMNS: &str = "version, sealed, seed, updated_at";

pub fn credential(r: &impl Cols) -> Result<crate::channels::StoredCredential> {
    Ok(crate::channels::StoredCredential {
        version: r.int(0)?,
        sealed: r.text(1)?,
        seed: r.text(2)?,
        updated_at: r.time(3)?,
    })
}

/// The columns [`staff`] reads.
pub const STAFF_COLUMNS: &str = "name, role, created_at, disabled_at";

pub fn staff(r: &impl Cols) -> Result<Staff> {
    let role = r.text(1)?;
    Ok(Staff {
        name: r.text(0)?,
        role: role
            .parse()
            .map_err(|e: crate::model::ParseError| StoreError::Corrupt(e.0))?,
        created_at: r.time(2)?,
        disabled_at: r.opt_time(3)?,
    })
}

/// A row of [`sql::STAFF_LOGIN`].
pub fn staff_login(r: &impl Cols) -> Result<crate::model::StaffLogin> {
    Ok(crate::model::StaffLogin {
        name: r.text(0)?,
        password_hash: r.opt_text(1)?,
        totp_secret: r.opt_text(2)?,
        totp_last_step: r.int(3)?,
        enrol_hash: r.opt_text(4)?,
        enrol_expires_at: r.opt_time(5)?,
        enrolled_at: r.opt_time(6)?,
        confirmed_at: r.opt_time(7)?,
    })
}

/// The columns [`link`] reads.
pub const LINK_COLUMNS: &str =
    "address, fingerprint, purpose, change, expires_at, used_at IS NOT NULL";

pub fn link(r: &impl Cols) -> Result<LinkRow> {
    Ok(LinkRow {
        address: r.text(0)?,
        fingerprint: r.text(1)?,
        purpose: token_purpose(&r.text(2)?)?,
        change: r.opt_text(3)?,
        expires_at: r.time(4)?,
        used: r.flag(5)?,
    })
}

/// The columns [`code_row`] reads.
pub const CODE_COLUMNS: &str = "verified AND unhealthy_since IS NULL, code_hash, code_expires_at, code_attempts, \
     codes_sent, code_sent_at, wrong_codes, code_window_start";

pub fn code_row(r: &impl Cols) -> Result<CodeRow> {
    Ok(CodeRow {
        usable: r.flag(0)?,
        hash: r.opt_text(1)?,
        expires_at: r.opt_time(2)?,
        attempts: r.count(3)?,
        codes_sent: r.count(4)?,
        sent_at: r.opt_time(5)?,
        wrong: r.count(6)?,
        window_start: r.opt_time(7)?,
    })
}

/// The columns [`account`] reads.
pub const ACCOUNT_COLUMNS: &str =
    "id, name, timezone, security_level, paranoid, defaults, prefixes, postal_address";

pub fn account(r: &impl Cols) -> Result<Account> {
    Ok(Account {
        id: r.text(0)?,
        name: r.text(1)?,
        timezone: tz_from_text(r.opt_text(2)?)?,
        security_level: level_from_text(&r.text(3)?)?,
        paranoid: r.flag(4)?,
        defaults: prefs_from_json(&r.text(5)?)?,
        prefixes: prefixes_from_json(&r.text(6)?)?,
        postal_address: postal_from_json(r.opt_text(7)?)?,
    })
}

/// The columns [`contact`] reads.
pub const CONTACT_COLUMNS: &str = "id, name, timezone, prefs";

pub fn contact(r: &impl Cols) -> Result<Contact> {
    Ok(Contact {
        id: r.text(0)?,
        name: r.text(1)?,
        timezone: tz_from_text(r.opt_text(2)?)?,
        prefs: prefs_from_json(&r.text(3)?)?,
    })
}

/// A contact read by [`sql::contacts_between`], with its account.
pub fn contact_of(r: &impl Cols) -> Result<(String, Contact)> {
    Ok((r.text(4)?, contact(r)?))
}

/// The columns [`destination`] reads.
pub const DESTINATION_COLUMNS: &str = "id, contact, uri, prefs, verified, unhealthy_since";

pub fn destination(r: &impl Cols) -> Result<Destination> {
    Ok(Destination {
        id: r.text(0)?,
        contact: r.text(1)?,
        uri: uri_from_text(&r.text(2)?)?,
        prefs: prefs_from_json(&r.text(3)?)?,
        verified: r.flag(4)?,
        unhealthy_since: r.opt_time(5)?,
    })
}

/// A destination read by [`sql::destinations_between`], with its account.
pub fn destination_of(r: &impl Cols) -> Result<(String, Destination)> {
    Ok((r.text(6)?, destination(r)?))
}

/// The columns [`token`] reads.
pub const TOKEN_COLUMNS: &str = "id, name, scopes, created_at, staff, expires_at, revoked_at, last_used_at, last_used_from, allow, cert, session";

pub fn token(r: &impl Cols) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.text(0)?,
        name: r.text(1)?,
        scopes: scopes_from_text(&r.text(2)?)?,
        created_at: r.time(3)?,
        staff: r.opt_text(4)?,
        expires_at: r.opt_time(5)?,
        revoked_at: r.opt_time(6)?,
        last_used_at: r.opt_time(7)?,
        last_used_from: r.opt_text(8)?,
        allow: prefixes_from_json(&r.text(9)?)?,
        cert: r.opt_text(10)?,
        session: r.flag(11)?,
    })
}

/// The columns [`decided`] reads.
pub const DECIDED_COLUMNS: &str = "notification, at, state, reason, detail, due_at";

/// Event `$1`'s history, as [`decided`] reads it. The decision that made
/// a notice is kept in the notice's row (`first_*`, since migration 28)
/// and every later one in `decisions`; a notice stored before that
/// migration has its first decision in `decisions` and none in its row.
/// By time; at the same instant a notice's first decision comes before
/// the ones written after it, which keep the order they were written in
/// (`seq`: SQLite's `rowid`, PostgreSQL's `seq`).
pub fn history(seq: &str) -> String {
    format!(
        "SELECT {DECIDED_COLUMNS} FROM ( \
           SELECT id AS notification, first_at AS at, first_state AS state, first_reason AS reason, \
             first_detail AS detail, first_due_at AS due_at, 0 AS later, id AS notice, 0 AS seq \
           FROM notifications WHERE event = $1 AND first_at IS NOT NULL \
           UNION ALL \
           SELECT {DECIDED_COLUMNS}, 1, '', {seq} FROM decisions WHERE event = $1) h \
         ORDER BY at, later, notice, seq"
    )
}

pub fn decided(r: &impl Cols) -> Result<Decided> {
    Ok(Decided {
        notification: r.text(0)?,
        at: r.time(1)?,
        state: state_from_text(&r.text(2)?)?,
        reason: reason_from_text(r.opt_text(3)?)?,
        detail: r.opt_text(4)?,
        due_at: r.time(5)?,
    })
}

/// A related notice: id, event, type, destination, state, due, and the
/// `occurred_at` of its event's stored payload.
pub fn related(r: &impl Cols) -> Result<RelatedNotice> {
    Ok(RelatedNotice {
        id: r.text(0)?,
        event: r.text(1)?,
        type_name: r.text(2)?,
        destination: r.text(3)?,
        state: state_from_text(&r.text(4)?)?,
        due_at: r.time(5)?,
        occurred_at: occurred(&r.text(6)?)?,
    })
}

/// A window: its start and count.
pub fn window(r: &impl Cols) -> Result<Window> {
    Ok(Window {
        start: r.time(0)?,
        count: r.count(1)?,
    })
}

/// An event as stored (its JSON payload).
pub fn event_json(e: &Event) -> Result<String> {
    serde_json::to_string(e).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A message as stored (JSON).
pub fn message_json(m: &Message) -> Result<String> {
    serde_json::to_string(m).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_queries_read_as_sqlite() {
        assert_eq!(
            sqlite("WHERE a = $1 AND ($2::TEXT IS NULL OR b = $2) LIMIT $10"),
            "WHERE a = ?1 AND (?2 IS NULL OR b = ?2) LIMIT ?10"
        );
        assert_eq!(sqlite("price $ and $x stay"), "price $ and $x stay");
        assert!(!sqlite(&sql::incidents()).contains('$'));
        assert!(!sqlite(&sql::audit()).contains("::"));
        assert!(!sqlite(&sql::accounts_after()).contains("::"));
    }
}
