//! Durable state behind one trait, with an embedded SQLite implementation
//! (the default) and a PostgreSQL one (many nodes, one database). Both pass
//! the same conformance suite (`conformance.rs`).
//!
//! Sending goes through the `notifications` table, never inline in a request:
//! ingest writes the event and its planned notifications in one transaction,
//! and workers claim due rows with a lease, so a crash loses nothing.

pub mod coalesce;
#[cfg(test)]
pub(crate) mod conformance;
mod db;
pub mod postgres;
mod rows;
pub mod sqlite;

pub use db::{Backend, Db, WriteTimes};

use crate::model::{
    Account, AccountView, ChannelKind, Contact, ContactView, Destination, Event, Reason, Scope,
    State,
};
use crate::model::{Load, Planned, Seen};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

/// A failure of the store itself (not of the caller's input).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database was migrated by a newer kci: this one would ignore
    /// what the newer schema holds (a token's certificate binding, say).
    #[error(
        "the database's schema is version {have}, newer than this kci knows ({latest}): a newer kci migrated it; run that version (or newer) on every node"
    )]
    SchemaAhead { have: i64, latest: i64 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// Whether this is the store failing as a whole (unreachable, out of
    /// connections, out of disk, shutting down, locked), which any other
    /// request would meet as well, rather than a failure that may be the
    /// request's own (a statement refused for its values, a row that does
    /// not read back). Only the latter is worth trying again piece by
    /// piece.
    pub fn is_the_stores(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::Unavailable(_) | StoreError::SchemaAhead { .. } => {
                true
            }
            StoreError::Corrupt(_) => false,
            StoreError::Sqlite(e) => e.sqlite_error_code().is_some_and(|code| {
                use rusqlite::ErrorCode::*;
                matches!(
                    code,
                    DatabaseBusy
                        | DatabaseLocked
                        | OutOfMemory
                        | ReadOnly
                        | SystemIoFailure
                        | DatabaseCorrupt
                        | DiskFull
                        | CannotOpen
                        | FileLockingProtocolFailed
                        | NotADatabase
                )
            }),
            // No answer from the server about the statement: the
            // connection is gone.
            StoreError::Postgres(e) => e
                .as_db_error()
                .is_none_or(|db| sqlstate_is_the_servers(db.code().code())),
        }
    }

    /// The same failure again, for a second request that met it.
    pub fn again(&self) -> StoreError {
        match self {
            StoreError::Pool(m) => StoreError::Pool(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::SchemaAhead { have, latest } => StoreError::SchemaAhead {
                have: *have,
                latest: *latest,
            },
            StoreError::Sqlite(_) | StoreError::Postgres(_) => {
                StoreError::Unavailable(self.to_string())
            }
        }
    }
}

/// Whether a PostgreSQL error code (SQLSTATE) is about the server rather
/// than the statement: connection exceptions (08), insufficient resources
/// (53), operator intervention such as a shutdown (57), system errors
/// (58), internal errors (XX). A program limit (54, a statement too
/// complex) can be a batch's own: one event alone may pass.
fn sqlstate_is_the_servers(code: &str) -> bool {
    ["08", "53", "57", "58", "XX"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// A bearer token as stored: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    /// The staff member it acts as, if any.
    pub staff: Option<String>,
    /// It stops working then, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// It stopped working then (`kci token revoke`, or rotated).
    pub revoked_at: Option<DateTime<Utc>>,
    /// When and from where it was last used (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_from: Option<String>,
    /// The networks it may be used from; empty: anywhere.
    pub allow: Vec<ipnet::IpNet>,
    /// The client certificate (SHA-256 of its DER, lower-case hex) it
    /// works only with, over TLS; none: any connection.
    pub cert: Option<String>,
    /// Made by a staff login (password and second factor), not by
    /// `kci token create`.
    pub session: bool,
}

impl TokenRecord {
    /// How often a token's last use is written down: at most once in
    /// this long, so a busy token costs no write per request.
    pub const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

    /// Whether it may be used at `now`: not revoked, not expired.
    pub fn usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none_or(|r| now < r) && self.expires_at.is_none_or(|e| now < e)
    }

    /// Whether a use at `now` from `from` should be written down.
    pub fn needs_touch(&self, now: DateTime<Utc>, from: Option<&str>) -> bool {
        self.last_used_at
            .is_none_or(|t| now - t >= Self::TOUCH_EVERY || now < t)
            || self.last_used_from.as_deref() != from
    }
}

pub use crate::model::Message;

pub use crate::model::Notification;

pub use crate::model::new_id;

/// Decides the notifications of one event inside the store's transaction,
/// so that reading the directory and pending notices and writing the result
/// is atomic.
pub trait Planner: Send + Sync {
    /// The types whose pending notices of the event's key `plan` must see
    /// (pairing partners, the type itself when it supersedes). Empty: the
    /// store does not look them up at all.
    fn related_types(&self, event: &Event) -> Vec<String>;

    /// Whether a later event's planning may look this one up by its
    /// account and key: its type is among some type's
    /// [`Planner::related_types`]. Only such events are indexed by key
    /// (`events_key`), so an event of a type nothing pairs with,
    /// supersedes or counts costs its insert no entry there. An event
    /// stored while its type was not looked up stays out of the index.
    fn keyed(&self, event: &Event) -> bool;

    /// The types whose earlier events of the same key count as changes for
    /// flap damping, and over how long; `None`: the store counts nothing.
    fn flap_window(&self, event: &Event) -> Option<(Vec<String>, chrono::Duration)>;

    /// The destinations of `view` whose load planning needs (a cap or a
    /// digest preference), each with the cap's period if it has a cap.
    fn loads_needed(
        &self,
        event: &Event,
        view: &AccountView,
    ) -> Vec<(String, Option<chrono::Duration>)>;

    /// Plans `event` given what the store read for it; `Err` refuses it with
    /// a field and a message.
    fn plan(
        &self,
        event: &Event,
        view: &AccountView,
        seen: &Seen,
    ) -> std::result::Result<Planned, Rejection>;
}

/// Why an event was refused at ingest (becomes a 422).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

/// The result of ingesting one event.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    Accepted {
        id: String,
        notifications: usize,
        /// When the first of its notices waiting to go out comes due (the
        /// scheduler need not be woken before then); `None`: none waits.
        due: Option<DateTime<Utc>>,
    },
    /// The id was seen before: the first result, nothing new written.
    Duplicate {
        id: String,
        notifications: usize,
    },
    Rejected(Rejection),
}

/// One recorded decision about a notification: its history is the answer
/// to "why did (or didn't) Alice get this?".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decided {
    pub notification: String,
    #[serde(serialize_with = "ser_time")]
    pub at: DateTime<Utc>,
    pub state: State,
    pub reason: Option<Reason>,
    pub detail: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub due_at: DateTime<Utc>,
}

fn ser_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::model::fmt_time(*t))
}

/// What the worker does with a claimed notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Sent {
        at: DateTime<Utc>,
        receipt: crate::model::Receipt,
    },
    Retry {
        at: DateTime<Utc>,
        due_at: DateTime<Utc>,
        detail: String,
    },
    Failed {
        at: DateTime<Utc>,
        reason: Reason,
        detail: String,
    },
    Expired {
        at: DateTime<Utc>,
    },
    /// Nothing left to send (a digest whose notices were all cancelled).
    Cancelled {
        at: DateTime<Utc>,
        reason: Reason,
    },
    /// Not attempted: back to the queue until `due_at` (a provider rate
    /// limit's next free slot). The claim's attempt is given back.
    Deferred {
        at: DateTime<Utc>,
        due_at: DateTime<Utc>,
        detail: String,
    },
    /// The provider asked to wait (HTTP 429): pacing, not failure. Back to
    /// the queue until `due_at`, the attempt given back, `paced` counted.
    Paced {
        at: DateTime<Utc>,
        due_at: DateTime<Utc>,
        detail: String,
    },
}

/// One delivery's outcome, as [`Store::finish_all`] takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The notification.
    pub id: String,
    /// The lease it was claimed under: written only while the notice still
    /// carries it ([`Store::finish_leased`]); `None`: whatever its lease
    /// ([`Store::finish`]).
    pub lease_until: Option<DateTime<Utc>>,
    pub finish: Finish,
}

/// A notification claimed for delivery, with its event (if any).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub notification: Notification,
    /// The lease this claim holds it under: its outcome is written only
    /// while the row still carries it ([`Store::finish_leased`]). `None`
    /// for what was read, not claimed (a digest's members).
    pub lease_until: Option<DateTime<Utc>>,
    pub event: Option<Event>,
    /// Its account is `paranoid` (content-free notices where content
    /// could leak).
    pub paranoid: bool,
    /// A mail's: the active OpenPGP key of its address, armored.
    pub active_key: Option<String>,
    /// A letter's: its account as it is now (the postal address it goes
    /// to, the security level `plan::letter` reads).
    pub account: Option<crate::model::Account>,
    /// A webhook's: its destination's signing secrets as read with the
    /// claim ([`claimed_signing`] says whether they may still sign).
    pub signing: Option<ClaimedSigning>,
}

/// What a lane's claim ([`Store::claim_due_on`]) took, and what of its
/// channel it left due.
#[derive(Debug, Clone)]
pub struct LaneClaim {
    pub claimed: Vec<Claimed>,
    pub left: Left,
}

/// What a claim of one channel left due at its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// It took as many as it was asked for: more may be due.
    More,
    /// Due notices are left, each behind an earlier notice of its key to
    /// the same destination (`rows::sql::in_turn`): the end of a delivery
    /// may let the next go.
    InTurn,
    /// Nothing: only what is stored or comes due later can be claimed.
    Nothing,
}

pub use rows::SecretsRow;

/// A webhook destination's signing secrets as stored, read with a claim at
/// `read_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedSigning {
    pub secrets: SecretsRow,
    pub read_at: DateTime<Utc>,
}

/// How long the signing secrets read with a claim may sign: a notice that
/// waited longer for a slot reads them again, so a rotation that ends the
/// old secret at once (`overlap: "0s"`) holds within this — no longer than
/// a request already in flight when it happened. Under load a notice waits
/// milliseconds for its slot (a lane claims twice its slots ahead).
pub const SIGNING_FRESH: chrono::TimeDelta = chrono::TimeDelta::milliseconds(250);

/// What signs a webhook at `now` from the secrets read with its claim, or
/// `None` when they are not fresh enough to (read the store again).
pub fn claimed_signing(claimed: Option<&ClaimedSigning>, now: DateTime<Utc>) -> Option<Signing> {
    let c = claimed?;
    let age = now - c.read_at;
    let s = &c.secrets;
    (age >= chrono::TimeDelta::zero() && age <= SIGNING_FRESH).then(|| {
        codec::current_secrets(s.secret.clone(), s.previous.clone(), s.previous_until, now)
    })
}

/// The address of a `mailto:` notification as the key registry keys it.
pub fn mail_address(n: &Notification) -> Option<String> {
    if n.channel != ChannelKind::Email {
        return None;
    }
    match n.uri.parse::<crate::model::DestinationUri>() {
        Ok(crate::model::DestinationUri::Mailto(a)) => Some(a.as_str().to_string()),
        _ => None,
    }
}

/// What a destination's deliveries are signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    /// The destination's own secrets, current first.
    pub own: Vec<String>,
    /// Also the channel's secret (`[channels.webhook] secret`).
    pub channel: bool,
}

pub use crate::model::{CodeRow, RenewOutcome, VerifyOutcome};

pub use crate::model::PendingCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
    /// The parent (account, or contact) does not exist.
    NoParent,
}

/// Bearer tokens, kept as hashes.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn create_token(&self, token: &TokenRecord, hash: &str) -> Result<()>;

    async fn find_token(&self, hash: &str) -> Result<Option<TokenRecord>>;

    /// A count that moves whenever what [`find_token`](Self::find_token)
    /// answers may have changed, by whichever process or node: a token
    /// revoked, rotated, deleted; its staff member disabled. A token's
    /// last use leaves it. What a cache read at one value stays true while
    /// the value stays the same.
    async fn token_epoch(&self) -> Result<i64>;

    /// Every token, newest first (no secret: only hashes are stored).
    async fn tokens(&self) -> Result<Vec<TokenRecord>>;

    /// Revokes token `id` at `at`; `false` if unknown or revoked already.
    async fn revoke_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool>;

    /// Replaces token `old` by `new` (its secret hashing to `hash`) in one
    /// transaction: `old` revoked at `new.created_at`. `false` if `old` is
    /// unknown or revoked.
    async fn rotate_token(&self, old: &str, new: &TokenRecord, hash: &str) -> Result<bool>;

    /// Records a use of token `id` at `at` from `from`.
    async fn touch_token(&self, id: &str, at: DateTime<Utc>, from: Option<&str>) -> Result<()>;
}

/// Accounts, contacts and destinations, their verification, signing secrets and health.
#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// Creates or replaces an account — except that a replacement lowering
    /// the security of an account at `high` or above keeps the stored
    /// security (`model::kept_security`, decided in the same
    /// transaction): the lowering is a protected change. Answers what it
    /// kept, if it kept anything.
    async fn put_account(
        &self,
        account: &Account,
    ) -> Result<(PutOutcome, Option<(crate::model::SecurityLevel, bool)>)>;

    async fn account_view(&self, id: &str) -> Result<Option<AccountView>>;

    async fn put_contact(&self, account: &str, contact: &Contact) -> Result<PutOutcome>;

    /// Adds a destination; an unverified one gets `code` (its first code's
    /// row), and `notice` (the code's message to it) is queued in the same
    /// transaction.
    async fn add_destination(
        &self,
        account: &str,
        dest: &Destination,
        code: Option<CodeRow>,
        notice: Option<Notification>,
    ) -> Result<PutOutcome>;

    /// Checks a code's hash against the destination's row with `rule`
    /// (`trust::codes::check`) and stores what it decides.
    async fn verify_destination(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        code_hash: &str,
        now: DateTime<Utc>,
        rule: crate::model::CheckRule,
    ) -> Result<VerifyOutcome>;

    /// Issues a new verification code for a destination that is not
    /// verified or is unhealthy, if `rule` (`trust::codes::issue`) allows
    /// it now, queueing `notice` (the code's message) in the same
    /// transaction.
    #[allow(clippy::too_many_arguments)]
    async fn renew_code(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        code: PendingCode,
        notice: Notification,
        now: DateTime<Utc>,
        rule: crate::model::IssueRule,
    ) -> Result<RenewOutcome>;

    /// Removes a destination and cancels what is pending for it.
    async fn delete_destination(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// What a destination's deliveries are signed with at `now`.
    async fn destination_secrets(&self, id: &str, now: DateTime<Utc>) -> Result<Signing>;

    /// Gives a destination a new signing secret; the one it replaces stays
    /// valid until `previous_until` (`None`: not at all). `false` if there
    /// is no such destination.
    async fn set_destination_secret(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        secret: &str,
        previous_until: Option<DateTime<Utc>>,
    ) -> Result<bool>;

    /// The (account, contact) pairs with a destination `uri`.
    async fn contacts_with_uri(&self, uri: &str) -> Result<Vec<(String, String)>>;

    /// Imports a batch of rows (`kci import directory`) in one
    /// transaction: each decided by `rule` (`directory::import::decide`)
    /// against its account as it stands, earlier rows written, and its
    /// writes made; one audit entry `directory.imported` with the counts,
    /// if anything was written or refused. The outcomes, in row order.
    async fn import_directory(
        &self,
        batch: crate::model::ImportBatch,
        rule: crate::model::ImportRule,
    ) -> Result<Vec<crate::model::ImportOutcome>>;

    /// Up to `limit` accounts after `after` in the order of their ids,
    /// each with its contacts and destinations (no secret): a page of
    /// `kci export directory`.
    async fn directory_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<AccountView>>;

    /// Counts a delivery's outcome against its destination: a success
    /// clears the count, a permanent failure adds one, and the failure
    /// that reaches `threshold` marks the destination unhealthy — only then
    /// is the answer `true`.
    async fn count_outcome(
        &self,
        destination: &str,
        failed: bool,
        threshold: u32,
        now: DateTime<Utc>,
    ) -> Result<bool>;
}

/// Events, planned as they are stored, and the record of every decision.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores events durably with what `planner` decides for each, one
    /// atomic step per event; duplicates of known ids change nothing.
    async fn ingest(
        &self,
        events: Vec<Event>,
        planner: Arc<dyn Planner>,
    ) -> Result<Vec<IngestOutcome>>;

    async fn event(&self, id: &str) -> Result<Option<(Event, Vec<Notification>)>>;

    /// Cancels whatever of the event is still pending; `None` if unknown.
    async fn cancel_event(&self, id: &str, now: DateTime<Utc>) -> Result<Option<usize>>;

    /// Every recorded decision about the notifications of `event`, in order.
    async fn history(&self, event: &str) -> Result<Vec<Decided>>;
}

/// The durable queue of notifications: claims with a lease, outcomes, receipts, the dead letters.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Queues a notification not planned from an event (kci's own notices).
    async fn enqueue(&self, n: &Notification) -> Result<()>;

    /// Claims up to `limit` notifications due at `now` (or whose lease ran
    /// out), marking them `sending` until `lease_until`.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>>;

    /// Like [`Store::claim_due`], for one channel only: each channel is its
    /// own queue, so a slow or busy provider holds up only its own. Says
    /// too what it left due, so that the scheduler asks again only when
    /// something may be there to take.
    async fn claim_due_on(
        &self,
        channel: ChannelKind,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<LaneClaim>;

    /// Records the outcome of delivering a claimed notification; a `sent`
    /// one also clears its destination's count of refusals in a row.
    async fn finish(&self, id: &str, outcome: Finish) -> Result<()>;

    /// As [`Store::finish`], for a notice claimed under `lease_until`:
    /// written only if it is still that claim's (`sending` with that
    /// lease). `false` when it is not — its lease ran out and another
    /// claim took it, or someone else wrote its outcome — and then nothing
    /// is written: a node that outlived its lease must not overwrite the
    /// outcome of the node that took the notice over.
    async fn finish_leased(
        &self,
        id: &str,
        lease_until: DateTime<Utc>,
        outcome: Finish,
    ) -> Result<bool>;

    /// Several outcomes in one transaction, each as [`Store::finish`] or
    /// [`Store::finish_leased`] would write it alone, in order (one notice
    /// twice: the second sees the first); for each, whether it was
    /// written. An error: none was.
    async fn finish_all(&self, outcomes: Vec<Outcome>) -> Result<Vec<bool>>;

    /// Reserves `n` sends on `channel` at `now` under its provider rate,
    /// shared by every node on this store (see [`crate::schedule::rate`]):
    /// the new arrival time, and for each send `None` (go now) or the slot
    /// it must wait for.
    async fn reserve_rate(
        &self,
        channel: ChannelKind,
        rate: crate::schedule::rate::Gcra,
        now: DateTime<Utc>,
        n: usize,
    ) -> Result<(DateTime<Utc>, Vec<Option<DateTime<Utc>>>)>;

    /// Every node leaves `channel` alone until `until` (its provider asked
    /// to wait); a later pause already set stands.
    async fn pause_channel(&self, channel: ChannelKind, until: DateTime<Utc>) -> Result<()>;

    /// The channels paused beyond `now`, and until when.
    async fn channel_pauses(&self, now: DateTime<Utc>)
    -> Result<Vec<(ChannelKind, DateTime<Utc>)>>;

    /// The earliest time something will be due (pending, or a lease
    /// running out), of what comes due after `after` if given — what the
    /// scheduler waits for, besides what is due already but waits its turn
    /// (`rows::sql::in_turn`) or for a free slot.
    async fn next_due(&self, after: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>>;

    /// Notifications per state, for metrics.
    async fn count_by_state(&self) -> Result<Vec<(State, i64)>>;

    /// What waits, for metrics and `kci status`.
    async fn backlog(&self) -> Result<Backlog>;

    /// The notices still folded into digest `id`, with their events.
    async fn digest_members(&self, id: &str) -> Result<Vec<Claimed>>;

    /// Notifications in `state`, newest decision first, at most `limit`,
    /// those decided before `before` if given (paging).
    async fn notifications_in(
        &self,
        state: State,
        before: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<Notification>>;

    /// Puts a failed notification back in the queue, due `now`, its
    /// attempts counted afresh; `false` if there is no such failed one.
    async fn redrive(&self, id: &str, now: DateTime<Utc>) -> Result<bool>;

    /// One notification by id.
    async fn notification(&self, id: &str) -> Result<Option<Notification>>;

    /// Called once by a server that knows it is the only one using this
    /// store (embedded SQLite, under its lock): whatever was `sending` when
    /// the last process died goes back to the queue at once instead of
    /// waiting for its lease. Returns how many.
    async fn requeue_abandoned(&self, now: DateTime<Utc>) -> Result<usize>;

    /// Records a provider's later word on a sent notification; an
    /// `undelivered` one becomes `failed` (reason `undelivered`). `false`
    /// if there is no sent notification `id` still open to a receipt.
    async fn record_receipt(
        &self,
        id: &str,
        report: &crate::model::Report,
        at: DateTime<Utc>,
    ) -> Result<bool>;

    /// Sent notifications of `channel` whose provider is still to report,
    /// longest waiting first.
    async fn awaiting_receipts(
        &self,
        channel: ChannelKind,
        limit: usize,
    ) -> Result<Vec<Notification>>;

    /// The notification of `channel` the provider knows as `reference`
    /// (WhatsApp's wamid), for a provider that reports by its own id only.
    async fn notification_by_ref(
        &self,
        channel: ChannelKind,
        reference: &str,
    ) -> Result<Option<Notification>>;
}

/// The key registry: keys per address, their links and changes.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Records a key request in one transaction, for the address it is
    /// about: the submitted key (pending), the change it asks for as
    /// `rule` (`keys::rules::admit_change`) admits it, the links and the
    /// mails carrying them, and its proof — refused, with nothing written,
    /// when the proof was used before or the rule refuses. Returns the
    /// writes made to keys and changes.
    async fn record_key_request(
        &self,
        request: &crate::model::KeyRequest,
        now: DateTime<Utc>,
        rule: crate::model::AdmitRule,
    ) -> Result<std::result::Result<Vec<crate::model::KeyWrite>, crate::model::Refused>>;

    /// The keys and changes of an address (lower-cased).
    async fn key_status(&self, address: &str) -> Result<crate::model::KeyStatus>;

    /// The active key of an address, if it has one.
    async fn active_key(&self, address: &str) -> Result<Option<crate::model::KeyRecord>>;

    /// Replaces the material of the address's active key `fingerprint`
    /// (a refreshed copy); `false` if that is not its active key.
    async fn refresh_key(
        &self,
        address: &str,
        fingerprint: &str,
        armored: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool>;

    /// One key of an address, in any state.
    async fn key(
        &self,
        address: &str,
        fingerprint: &str,
    ) -> Result<Option<crate::model::KeyRecord>>;

    /// Follows the link whose secret hashes to `hash`: loads it and its
    /// address's keys and pending changes, lets `rule`
    /// (`keys::rules::follow_link`) decide, and writes what it returns.
    async fn follow_key_link(
        &self,
        hash: &str,
        now: DateTime<Utc>,
        rule: crate::model::LinkRule,
    ) -> Result<crate::model::Confirmed>;
}

/// Limits on what outsiders can make kci do.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Counts one occurrence of `key` in `bucket` against `cap`
    /// (`model::throttle::count`); refused occurrences are not counted.
    async fn throttle(
        &self,
        bucket: &str,
        key: &str,
        cap: crate::model::Cap,
        now: DateTime<Utc>,
    ) -> Result<crate::model::throttle::Counted>;

    /// Whether one more occurrence would be allowed, without counting it.
    async fn throttle_peek(
        &self,
        bucket: &str,
        key: &str,
        cap: crate::model::Cap,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), DateTime<Utc>>>;
}

/// Protected changes and their incidents (DESIGN.md §7).
#[async_trait]
pub trait ChangeStore: Send + Sync {
    /// One step on a change, in one transaction: reads what `target`
    /// names and its context (the change locked, with its account's or
    /// address's lock held), lets `rule` decide, and makes the writes it
    /// returns — so a change is applied once, on one node.
    async fn change_step(
        &self,
        target: crate::model::ChangeTarget,
        now: DateTime<Utc>,
        rule: Arc<dyn crate::model::ChangeRule>,
    ) -> Result<crate::model::ChangeAnswer>;

    /// Changes of an account (with the key changes of its mail
    /// addresses) or of an address, newest first.
    async fn changes(&self, filter: ChangeFilter) -> Result<Vec<crate::model::Change>>;

    async fn change(&self, id: &str) -> Result<Option<crate::model::Change>>;

    /// Ids of pending changes whose cooling-off period is over.
    async fn due_changes(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<String>>;

    /// Stores a veto link for the notice about `link.change` going to
    /// `link.destination`, if the change is still pending (`false`: it is
    /// not; the notice must not go).
    async fn add_veto_link(&self, hash: &str, link: &crate::model::VetoLink) -> Result<bool>;

    /// Incidents, newest first.
    async fn incidents(
        &self,
        open_only: bool,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::model::Incident>>;

    async fn incident(&self, id: &str) -> Result<Option<crate::model::Incident>>;
    /// A change's assurances, oldest first.
    async fn assurances(&self, change: &str) -> Result<Vec<crate::model::Assurance>>;
    /// The assurance whose confirmation link hashes so.
    async fn assurance_by_link(&self, hash: &str) -> Result<Option<crate::model::Assurance>>;
}

/// Call verifications (DESIGN.md §8).
#[async_trait]
pub trait CallStore: Send + Sync {
    /// One step on a call verification, in one transaction: the call read
    /// locked (by id or the hash of its customer link) with who is told,
    /// `rule` decides, its writes are made.
    async fn call_step(
        &self,
        target: crate::model::CallTarget,
        now: DateTime<Utc>,
        rule: Arc<dyn crate::model::CallRule>,
    ) -> Result<crate::model::CallAnswer>;

    async fn call(&self, id: &str) -> Result<Option<crate::model::Call>>;

    /// The open verifications of a contact, not past their time.
    async fn open_calls(
        &self,
        account: &str,
        contact: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::model::Call>>;

    /// Ids of open verifications past their time.
    async fn due_calls(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<String>>;
}

/// Which changes to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeFilter {
    Account(String),
    /// The pending ones only, of an account (and its addresses' keys).
    PendingOfAccount(String),
    Address(String),
}

/// The audit log (`model::audit`).
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an entry after the last one (serialised in the database).
    async fn audit(
        &self,
        draft: crate::model::audit::AuditDraft,
        at: DateTime<Utc>,
    ) -> Result<crate::model::audit::AuditEntry>;

    /// Entries after number `after` (of one account, or all), in order.
    async fn audit_entries(
        &self,
        account: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::model::audit::AuditEntry>>;

    async fn checkpoints(&self) -> Result<Vec<crate::model::audit::Checkpoint>>;

    /// The last entry (number and hash) and the latest checkpoint.
    async fn audit_head(
        &self,
    ) -> Result<(
        Option<(i64, String)>,
        Option<crate::model::audit::Checkpoint>,
    )>;

    /// Stores a signed checkpoint; `false` if one for that entry exists.
    async fn add_checkpoint(&self, c: &crate::model::audit::Checkpoint) -> Result<bool>;
}

/// Staff members (tokens act as one of them).
#[async_trait]
pub trait StaffStore: Send + Sync {
    /// `false` if the name is taken.
    async fn add_staff(&self, s: &crate::model::Staff) -> Result<bool>;
    async fn staff(&self, name: &str) -> Result<Option<crate::model::Staff>>;
    async fn list_staff(&self) -> Result<Vec<crate::model::Staff>>;
    /// `false` if unknown or disabled already.
    async fn disable_staff(&self, name: &str, at: DateTime<Utc>) -> Result<bool>;
    /// A staff member and how they log in, read together.
    async fn staff_login(
        &self,
        name: &str,
    ) -> Result<(
        Option<crate::model::Staff>,
        Option<crate::model::StaffLogin>,
    )>;
    /// Issues an enrolment code (its hash) to an enabled staff member: their
    /// password and TOTP secret are dropped and their sessions revoked, in
    /// one transaction. `false` if there is no such enabled member.
    async fn issue_enrolment(
        &self,
        name: &str,
        hash: &str,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool>;
    /// Enrols with the code hashing to `hash` (used up by it): `false` if
    /// it is not the current one or has expired at `at`.
    async fn enrol_staff(
        &self,
        name: &str,
        hash: &str,
        password_hash: &str,
        totp_secret: &str,
        at: DateTime<Utc>,
    ) -> Result<bool>;
    /// A login: TOTP step `step` of the (sealed) `secret` it was checked
    /// against used up and session `token` stored, in one transaction;
    /// `false` (and nothing stored) if that step, or a later one, was used
    /// already, or the secret is no longer theirs.
    async fn start_session(
        &self,
        name: &str,
        step: i64,
        secret: &str,
        token: &TokenRecord,
        hash: &str,
    ) -> Result<bool>;
}

/// Durable state: every aggregate's store, and the schema they share.
#[async_trait]
pub trait Store:
    TokenStore
    + DirectoryStore
    + EventStore
    + QueueStore
    + KeyStore
    + LimitStore
    + ChangeStore
    + CallStore
    + AuditStore
    + StaffStore
    + crate::channels::CredentialStore
    + 'static
{
    /// Brings the schema up to date; safe to call on every start.
    async fn migrate(&self) -> Result<()>;

    /// How long this store's writes have taken (`/metrics`).
    fn write_times(&self) -> WriteTimes;

    /// What `kci doctor` checks: the schema version and the server's clock.
    async fn inspect(&self) -> Result<StoreInfo>;

    /// The secrets kept in clear (by a version before they were sealed,
    /// `trust::seal::AtRest`): pending notices' one-time secrets and
    /// webhook signing secrets. Read through partial indexes: only rows
    /// that hold a secret at all are looked at.
    async fn clear_secrets(&self) -> Result<Vec<ClearSecret>>;

    /// Replaces the secret at `place` of row `id` by `new`, if it is still
    /// `old`; whether it was.
    async fn replace_secret(
        &self,
        place: SecretPlace,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool>;
}

/// Where a secret kci uses again is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPlace {
    /// A pending notice's one-time secret (`notifications.secret`).
    Notice,
    /// A webhook destination's signing secret.
    Webhook,
    /// Its previous one, during a rotation's overlap.
    WebhookPrevious,
}

/// A secret found in clear by [`Store::clear_secrets`].
#[derive(Debug, Clone)]
pub struct ClearSecret {
    pub place: SecretPlace,
    /// The notification's or the destination's id.
    pub id: String,
    pub value: crate::model::Secret<String>,
}

/// What waits: the oldest pending notification's due time, protected
/// changes pending, incidents open, destinations marked unhealthy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlog {
    pub oldest_due: Option<DateTime<Utc>>,
    pub changes_pending: i64,
    pub incidents_open: i64,
    pub destinations_unhealthy: i64,
}

/// The state of a database, as found (nothing changed but the version
/// table, created empty where it was missing).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreInfo {
    /// The schema version the database has (0: none yet).
    pub schema: i64,
    /// The newest version this build knows.
    pub latest: i64,
    /// The database server's clock, when it has its own (PostgreSQL).
    pub server_time: Option<DateTime<Utc>>,
}

/// The store traits, for `use crate::store::prelude::*` where a store is
/// called.
pub mod prelude {
    pub use super::{
        AuditStore, CallStore, ChangeStore, DirectoryStore, EventStore, KeyStore, LimitStore,
        QueueStore, StaffStore, Store, TokenStore,
    };
    pub use crate::channels::CredentialStore;
}

/// Connections to PostgreSQL one process keeps at most, unless `[store]
/// pool_size` says otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Opens the store named by a config `store.url`, its schema brought up
/// to date.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_sized(url, DEFAULT_POOL_SIZE).await
}

/// As [`open`], with at most `pool_size` connections to PostgreSQL.
pub async fn open_sized(url: &str, pool_size: usize) -> Result<Arc<dyn Store>> {
    let store = open_as_is_sized(url, pool_size).await?;
    store.migrate().await?;
    Ok(store)
}

/// Opens the store without migrating it (to inspect it).
pub async fn open_as_is(url: &str) -> Result<Arc<dyn Store>> {
    open_as_is_sized(url, DEFAULT_POOL_SIZE).await
}

async fn open_as_is_sized(url: &str, pool_size: usize) -> Result<Arc<dyn Store>> {
    match sqlite_path(url) {
        Some(path) => Ok(Arc::new(sqlite::SqliteStore::open(path)?)),
        None => Ok(Arc::new(
            postgres::PgStore::connect_sized(url, pool_size).await?,
        )),
    }
}

/// The file of a `sqlite://` URL; `None` for another store.
pub fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
}

pub use crate::model::sha256_hex;

/// Column helpers shared by both implementations.
pub(crate) mod codec {
    use super::*;
    use crate::model::Preferences;

    pub fn scopes_to_text(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn scopes_from_text(s: &str) -> Result<Vec<Scope>> {
        s.split_whitespace()
            .map(|s| {
                s.parse()
                    .map_err(|e: crate::model::ParseError| StoreError::Corrupt(e.0))
            })
            .collect()
    }

    pub fn prefs_to_json(p: &Preferences) -> String {
        serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
    }

    /// An account's postal address as stored: JSON, or NULL for none.
    pub fn postal_to_json(a: Option<&crate::model::PostalAddress>) -> Option<String> {
        a.and_then(|a| serde_json::to_string(a).ok())
    }

    pub fn postal_from_json(s: Option<String>) -> Result<Option<crate::model::PostalAddress>> {
        s.map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| StoreError::Corrupt(format!("postal_address: {e}")))
        })
        .transpose()
    }

    pub fn prefixes_to_json(p: &[ipnet::IpNet]) -> String {
        serde_json::to_string(p).unwrap_or_else(|_| "[]".into())
    }

    pub fn prefixes_from_json(s: &str) -> Result<Vec<ipnet::IpNet>> {
        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("prefixes: {e}")))
    }

    pub fn prefs_from_json(s: &str) -> Result<Preferences> {
        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("preferences: {e}")))
    }

    pub fn event_from_json(s: &str) -> Result<Event> {
        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("event: {e}")))
    }

    pub fn message_from_json(s: Option<String>) -> Result<Option<Message>> {
        s.map(|s| {
            serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("message: {e}")))
        })
        .transpose()
    }

    pub fn channel_from_text(s: &str) -> Result<ChannelKind> {
        ChannelKind::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("channel `{s}`")))
    }

    pub fn receipt_from_text(s: Option<String>) -> Result<Option<crate::model::ReceiptStatus>> {
        s.map(|s| {
            crate::model::ReceiptStatus::parse(&s)
                .ok_or_else(|| StoreError::Corrupt(format!("receipt `{s}`")))
        })
        .transpose()
    }

    pub fn state_from_text(s: &str) -> Result<State> {
        s.parse().map_err(StoreError::Corrupt)
    }

    pub fn reason_from_text(s: Option<String>) -> Result<Option<Reason>> {
        s.map(|s| Reason::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("reason `{s}`"))))
            .transpose()
    }

    pub fn tz_from_text(s: Option<String>) -> Result<Option<crate::model::TimeZoneName>> {
        s.map(|s| {
            s.parse()
                .map_err(|e: crate::model::ParseError| StoreError::Corrupt(e.0))
        })
        .transpose()
    }

    pub fn uri_from_text(s: &str) -> Result<crate::model::DestinationUri> {
        s.parse()
            .map_err(|e: crate::model::ParseError| StoreError::Corrupt(e.0))
    }

    /// SQL: the notification (columns prefixed `prefix`, e.g. `n.`) is still
    /// waiting to go out — pending, or folded into a digest that is. A
    /// folded notice's own digest is read by its key (before migration 23
    /// it was looked for among every pending notice: a list of the whole
    /// backlog, built again by each statement that met a folded notice).
    pub fn waiting(prefix: &str) -> String {
        // The `IN` term is the condition of the indexes of waiting notices
        // (`notifications_turn`, `notifications_busy`), repeated so that
        // SQLite sees the index may serve the first case.
        format!(
            "(({prefix}state IN ('pending', 'sending') AND {prefix}state = 'pending') \
             OR ({prefix}state = 'digested' AND EXISTS (SELECT 1 FROM notifications d \
               WHERE d.id = {prefix}digest AND d.state = 'pending')))"
        )
    }

    /// SQL: the digest still pending at destination `$2` of account `$1`,
    /// the earliest due, found among the open digests
    /// (`notifications_open_digests`, migration 23). Searched by
    /// destination alone, it walked the destination's whole history in
    /// due order at every event planned for it (2.3 ms at 20,000 notices).
    pub const PENDING_DIGEST: &str = "SELECT id FROM notifications \
         WHERE account = $1 AND destination = $2 AND type = 'kci.digest' AND state = 'pending' \
         ORDER BY due_at LIMIT 1";

    /// SQL: pairing's search for the notices of account `$1`, key `$2`
    /// and a type that `type_is` admits (an SQL condition on `n.type`,
    /// naming `$3`) that are still waiting, as [`waiting`] says: each as
    /// a [`RelatedNotice`](super::RelatedNotice) row, its event's
    /// occurrence read by `occurred_at` (an expression on `e.payload`).
    /// Two statements, each searched through its own index: pending ones
    /// through `notifications_turn` (whose entries hold the type: the
    /// key's pending entries are read, not their rows), folded ones
    /// through the account's open digests (`notifications_open_digests`,
    /// migration 23) and their members (`notifications_digest`). One `OR`
    /// in one statement read every pending notice of the hub on SQLite
    /// (to list them) and the whole table on PostgreSQL, for each pairing
    /// event.
    pub fn related_waiting(occurred_at: &str, type_is: &str) -> [String; 2] {
        let columns = format!(
            "SELECT n.id, n.event, n.type, n.destination, 'pending', n.due_at, {occurred_at}"
        );
        [
            format!(
                "{columns} FROM notifications n JOIN events e ON e.id = n.event \
                 WHERE n.account = $1 AND n.key = $2 AND {type_is} \
                 AND n.state IN ('pending', 'sending') AND n.state = 'pending'"
            ),
            format!(
                "{columns} FROM notifications d JOIN notifications n ON n.digest = d.id \
                 JOIN events e ON e.id = n.event \
                 WHERE d.account = $1 AND d.state = 'pending' AND d.type = '{}' \
                 AND n.account = $1 AND n.key = $2 AND {type_is} AND n.state = 'digested'",
                crate::plan::DIGEST_TYPE
            ),
        ]
    }

    /// SQL: the notifications a cancellation by `column` (id, event or
    /// destination) reaches — `column` equal to the placeholder `param`, and
    /// still waiting. By event, kci's own notices (digests, flap summaries)
    /// stay: they carry other events too.
    pub fn cancellable(by: super::rows::By, param: &str) -> String {
        use super::rows::By;
        let own = match by {
            By::Event => " AND type NOT LIKE 'kci.%'",
            By::Reminders => " AND type = 'kci.change.pending'",
            By::Id | By::Destination => "",
        };
        format!(
            "{} = {param}{own} AND {}",
            by.column(),
            waiting("notifications.")
        )
    }

    /// What a receipt writes as the notification's detail: an excerpt
    /// of the provider's words.
    pub fn receipt_detail(r: &crate::model::Report) -> String {
        match &r.detail {
            Some(words) => {
                crate::model::delivery_excerpt(&format!("{}: {words}", r.status.as_str()))
            }
            None => r.status.as_str().to_string(),
        }
    }

    /// The signing secrets of a destination at `now`: its own, current
    /// first, the previous one only until its rotation ends; the channel's
    /// secret while it has none, and during the overlap of its first.
    pub fn current_secrets(
        secret: Option<String>,
        previous: Option<String>,
        previous_until: Option<i64>,
        now: DateTime<Utc>,
    ) -> Signing {
        let overlap = previous_until.is_some_and(|until| crate::model::to_millis(now) < until);
        match secret {
            None => Signing {
                own: Vec::new(),
                channel: true,
            },
            Some(current) => Signing {
                channel: overlap && previous.is_none(),
                own: std::iter::once(current)
                    .chain(previous.filter(|_| overlap))
                    .collect(),
            },
        }
    }

    pub fn key_state(s: &str) -> Result<crate::model::KeyState> {
        crate::model::KeyState::parse(s)
            .ok_or_else(|| StoreError::Corrupt(format!("key state `{s}`")))
    }

    pub fn change_kind(s: &str) -> Result<crate::model::ChangeKind> {
        crate::model::ChangeKind::parse(s)
            .ok_or_else(|| StoreError::Corrupt(format!("change kind `{s}`")))
    }

    pub fn change_state(s: &str) -> Result<crate::model::ChangeState> {
        crate::model::ChangeState::parse(s)
            .ok_or_else(|| StoreError::Corrupt(format!("change state `{s}`")))
    }

    pub fn token_purpose(s: &str) -> Result<crate::model::TokenPurpose> {
        crate::model::TokenPurpose::parse(s)
            .ok_or_else(|| StoreError::Corrupt(format!("token purpose `{s}`")))
    }

    /// An event's `occurred_at` as kept in its stored payload.
    pub fn occurred(s: &str) -> Result<DateTime<Utc>> {
        crate::model::parse_time(s).map_err(|e| StoreError::Corrupt(format!("occurred_at: {e}")))
    }

    pub fn level_from_text(s: &str) -> Result<crate::model::SecurityLevel> {
        s.parse()
            .map_err(|e: crate::model::ParseError| StoreError::Corrupt(e.0))
    }

    /// What a finished delivery writes: the notification's new columns,
    /// which are also the decision recorded.
    pub struct FinishRow {
        pub state: State,
        pub reason: Option<Reason>,
        pub detail: Option<String>,
        pub sent_at: Option<i64>,
        /// A new due time (retries); `None` keeps the old one.
        pub due_at: Option<i64>,
        pub decided_at: i64,
        /// Added to `attempts` (-1 gives back the claim's attempt).
        pub attempts_delta: i64,
        /// Added to `paced` (1: the provider asked to wait).
        pub paced_delta: i64,
        pub provider_ref: Option<String>,
        /// `awaiting` when the provider will report later.
        pub receipt: Option<&'static str>,
        pub segments: Option<i64>,
        /// The notice still waits (a retry, a rate limit): it keeps its
        /// one-time secret; a final one loses it.
        pub keeps_secret: bool,
        /// It went out: its destination's refusals in a row are over.
        pub clears_refusals: bool,
        /// Written only if the row still carries this lease (ms), where
        /// given.
        pub lease: Option<i64>,
    }

    impl FinishRow {
        /// No provider reference, receipt or segments.
        fn none() -> FinishRow {
            FinishRow {
                state: State::Pending,
                reason: None,
                detail: None,
                sent_at: None,
                due_at: None,
                decided_at: 0,
                attempts_delta: 0,
                paced_delta: 0,
                provider_ref: None,
                receipt: None,
                segments: None,
                keeps_secret: false,
                clears_refusals: false,
                lease: None,
            }
        }
    }

    /// Every outcome of a delivery passes here, so this is where the
    /// provider's words are cut to an excerpt
    /// ([`crate::model::MAX_DETAIL`] characters) whatever the channel.
    pub fn finish_row(f: &Finish) -> FinishRow {
        use crate::model::to_millis;
        let row = match f {
            Finish::Sent { at, receipt } => FinishRow {
                state: State::Sent,
                reason: None,
                detail: receipt.detail.clone(),
                sent_at: Some(to_millis(*at)),
                due_at: None,
                decided_at: to_millis(*at),
                attempts_delta: 0,
                paced_delta: 0,
                provider_ref: receipt.provider_ref.clone(),
                receipt: receipt
                    .awaiting
                    .then_some(crate::model::ReceiptStatus::Awaiting.as_str()),
                segments: receipt.segments.map(i64::from),
                keeps_secret: false,
                clears_refusals: true,
                lease: None,
            },
            Finish::Retry { at, due_at, detail } => FinishRow {
                state: State::Pending,
                reason: Some(Reason::Retry),
                detail: Some(detail.clone()),
                sent_at: None,
                due_at: Some(to_millis(*due_at)),
                decided_at: to_millis(*at),
                attempts_delta: 0,
                ..FinishRow::none()
            },
            Finish::Failed { at, reason, detail } => FinishRow {
                state: State::Failed,
                reason: Some(*reason),
                detail: Some(detail.clone()),
                sent_at: None,
                due_at: None,
                decided_at: to_millis(*at),
                attempts_delta: 0,
                ..FinishRow::none()
            },
            // Not attempted (a rate limit's slot), or the provider asked to
            // wait: back to the queue, the claim's attempt given back.
            Finish::Deferred { at, due_at, detail } | Finish::Paced { at, due_at, detail } => {
                FinishRow {
                    state: State::Pending,
                    reason: Some(Reason::RateLimit),
                    detail: Some(detail.clone()),
                    sent_at: None,
                    due_at: Some(to_millis(*due_at)),
                    decided_at: to_millis(*at),
                    attempts_delta: -1,
                    paced_delta: i64::from(matches!(f, Finish::Paced { .. })),
                    ..FinishRow::none()
                }
            }
            Finish::Cancelled { at, reason } => FinishRow {
                state: State::Cancelled,
                reason: Some(*reason),
                detail: None,
                sent_at: None,
                due_at: None,
                decided_at: to_millis(*at),
                attempts_delta: 0,
                ..FinishRow::none()
            },
            Finish::Expired { at } => FinishRow {
                state: State::Expired,
                reason: Some(Reason::Expired),
                detail: None,
                sent_at: None,
                due_at: None,
                decided_at: to_millis(*at),
                attempts_delta: 0,
                ..FinishRow::none()
            },
        };
        FinishRow {
            detail: row.detail.as_deref().map(crate::model::delivery_excerpt),
            keeps_secret: row.state == State::Pending,
            ..row
        }
    }
}

#[cfg(test)]
mod token_tests {
    use super::TokenRecord;
    use chrono::{DateTime, Duration, Utc};

    fn t(min: i64) -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(min)
    }

    fn token(expires: Option<i64>, revoked: Option<i64>, used: Option<(i64, &str)>) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            name: "billing".into(),
            scopes: Vec::new(),
            created_at: t(0),
            staff: None,
            expires_at: expires.map(t),
            revoked_at: revoked.map(t),
            last_used_at: used.map(|u| t(u.0)),
            last_used_from: used.map(|u| u.1.to_string()),
            allow: Vec::new(),
            cert: None,
            session: false,
        }
    }

    #[test]
    fn a_token_is_usable_until_it_expires_or_is_revoked() {
        // (token, now, usable)
        for (tok, now, want) in [
            (token(None, None, None), 10_000, true),
            (token(Some(60), None, None), 59, true),
            (token(Some(60), None, None), 60, false),
            (token(None, Some(5), None), 4, true),
            (token(None, Some(5), None), 5, false),
            (token(Some(60), Some(5), None), 30, false),
        ] {
            assert_eq!(tok.usable(t(now)), want, "{tok:?} at {now}");
        }
    }

    #[test]
    fn a_use_is_written_down_once_a_minute_or_from_a_new_address() {
        // (token, now, from, write)
        for (tok, now, from, want) in [
            (token(None, None, None), 0, Some("192.0.2.1"), true),
            (
                token(None, None, Some((10, "192.0.2.1"))),
                10,
                Some("192.0.2.1"),
                false,
            ),
            (
                token(None, None, Some((10, "192.0.2.1"))),
                10,
                Some("192.0.2.9"),
                true,
            ),
            (
                token(None, None, Some((10, "192.0.2.1"))),
                11,
                Some("192.0.2.1"),
                true,
            ),
            // A clock that went back: written again.
            (
                token(None, None, Some((10, "192.0.2.1"))),
                9,
                Some("192.0.2.1"),
                true,
            ),
        ] {
            assert_eq!(
                tok.needs_touch(t(now), from),
                want,
                "{tok:?} at {now} from {from:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// The secrets read with a claim sign for [`SIGNING_FRESH`] after it,
    /// by the rotation rule at the time of sending; older (or from a clock
    /// that went back), the store is read again.
    #[test]
    fn secrets_read_with_a_claim_sign_while_fresh() {
        let at = DateTime::parse_from_rfc3339("2026-03-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let ms = chrono::TimeDelta::milliseconds;
        let until = crate::model::to_millis(at + ms(250));
        let claimed = |secret: Option<&str>, previous: Option<&str>| ClaimedSigning {
            secrets: SecretsRow {
                secret: secret.map(str::to_string),
                previous: previous.map(str::to_string),
                previous_until: previous.map(|_| until),
            },
            read_at: at,
        };
        let own = |s: &[&str], channel: bool| Signing {
            own: s.iter().map(|s| s.to_string()).collect(),
            channel,
        };
        let rotated = claimed(Some("new"), Some("old"));
        let first = claimed(Some("first"), None);
        let cases = [
            (None, ms(0), None),
            (Some(&rotated), ms(0), Some(own(&["new", "old"], false))),
            // The overlap ends while the claim is fresh: the rule at send time.
            (Some(&rotated), ms(200), Some(own(&["new", "old"], false))),
            (Some(&rotated), ms(250), Some(own(&["new"], false))),
            (Some(&rotated), ms(251), None),
            (Some(&rotated), ms(-1), None),
            (Some(&first), ms(10), Some(own(&["first"], false))),
            (Some(&claimed(None, None)), ms(10), Some(own(&[], true))),
        ];
        for (i, (c, after, want)) in cases.into_iter().enumerate() {
            assert_eq!(claimed_signing(c, at + after), want, "case {i}");
        }
        let shown = format!("{rotated:?}");
        assert!(!shown.contains("new") && !shown.contains("old"), "{shown}");
    }

    use super::*;

    /// A kci older than the schema refuses the database rather than run
    /// on it ignoring what it does not know (the same generic code runs
    /// on PostgreSQL).
    #[tokio::test]
    async fn an_older_kci_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let url = format!("sqlite://{}", path.display());
        let latest = open(&url).await.unwrap().inspect().await.unwrap().latest;
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute(
            "INSERT INTO kci_schema (version, applied_at) VALUES (?1, 0)",
            [latest + 1],
        )
        .unwrap();
        drop(db);
        match open(&url).await.map(|_| ()) {
            Err(StoreError::SchemaAhead { have, latest: l }) => {
                assert_eq!((have, l), (latest + 1, latest));
            }
            other => panic!("{other:?}"),
        }
        // Made for its owner only, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        for f in ["kci.db", "kci.db-wal"] {
            let p = dir.path().join(f);
            if let Ok(m) = std::fs::metadata(&p) {
                assert_eq!(m.permissions().mode() & 0o077, 0, "{f}");
            }
        }
        // Inspecting it (kci doctor, kci status) still works.
        let info = open_as_is(&url).await.unwrap().inspect().await.unwrap();
        assert_eq!(info.schema, latest + 1);
    }

    /// Which failures are the store's as a whole (met by any request), and
    /// which may be one request's own.
    #[test]
    fn a_failure_of_the_whole_store_is_told_from_one_of_a_request() {
        let sqlite = |code| {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        let cases = [
            (StoreError::Pool("timed out".into()), true),
            (StoreError::Unavailable("writer stopped".into()), true),
            (StoreError::SchemaAhead { have: 9, latest: 8 }, true),
            (StoreError::Corrupt("bad json".into()), false),
            (sqlite(rusqlite::ffi::SQLITE_BUSY), true),
            (sqlite(rusqlite::ffi::SQLITE_FULL), true),
            (sqlite(rusqlite::ffi::SQLITE_IOERR), true),
            (sqlite(rusqlite::ffi::SQLITE_READONLY), true),
            (sqlite(rusqlite::ffi::SQLITE_CONSTRAINT), false),
            (sqlite(rusqlite::ffi::SQLITE_TOOBIG), false),
            (sqlite(rusqlite::ffi::SQLITE_MISMATCH), false),
            (
                StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows),
                false,
            ),
        ];
        for (error, whole) in cases {
            assert_eq!(error.is_the_stores(), whole, "{error}");
            // Told again to another request, it says the same.
            let again = error.again();
            assert!(again.to_string().ends_with(&error.to_string()), "{again}");
            if whole {
                assert!(again.is_the_stores(), "{again}");
            }
        }
        for (code, servers) in [
            ("08006", true),  // connection failure
            ("53300", true),  // too many connections
            ("57P01", true),  // admin shutdown
            ("58030", true),  // I/O error
            ("XX000", true),  // internal error
            ("23505", false), // unique violation
            ("22P02", false), // invalid text representation
            ("54001", false), // statement too complex: one alone may pass
            ("40001", false), // serialization failure: retried alone
        ] {
            assert_eq!(sqlstate_is_the_servers(code), servers, "{code}");
        }
    }
}
