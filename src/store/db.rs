//! The store, written once: every operation of the store traits as a flow
//! over [`Rows`] — read the rows, let the rule decide, write what it
//! returns — run in one transaction of a [`Backend`]. The rules themselves
//! are pure and live with their domain (`plan`, `keys::rules`,
//! `trust::codes`, `model::throttle`, and the small ones at the end of this
//! file); a backend knows only its SQL, its connections and its locks.

use super::codec::{current_secrets, finish_row, receipt_detail};
use super::rows::{
    self, AssuranceWhich, By, CallWhich, ChangeWhich, Claim, DestRef, HealthRow, IncidentWhich,
    NewEvent, ReceiptRow, Rows, SecretsRow, Which, event_json,
};
use super::*;
use crate::model::audit::{AuditDraft, AuditEntry, Checkpoint};
use crate::model::{
    AddressKeys, AdmitRule, Audience, Change, ChangeAnswer, ChangeContext, ChangeRule,
    ChangeTarget, ChangeWrite, CheckRule, Confirmed, Incident, IssueRule, KeyRecord, KeyRequest,
    KeyStatus, KeyWrite, LinkRule, Refused, Report, Staff, VetoLink, from_millis, to_millis,
};
use futures_util::future::BoxFuture;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::future::Future;

/// The schema of a backend, by version: `migrations/<db>.sql`, then
/// `migrations/<db>-<n>.sql`.
macro_rules! migrations {
    ($db:literal) => {
        &[
            (1, include_str!(concat!("migrations/", $db, ".sql"))),
            (2, include_str!(concat!("migrations/", $db, "-2.sql"))),
            (3, include_str!(concat!("migrations/", $db, "-3.sql"))),
            (4, include_str!(concat!("migrations/", $db, "-4.sql"))),
            (5, include_str!(concat!("migrations/", $db, "-5.sql"))),
            (6, include_str!(concat!("migrations/", $db, "-6.sql"))),
            (7, include_str!(concat!("migrations/", $db, "-7.sql"))),
            (8, include_str!(concat!("migrations/", $db, "-8.sql"))),
            (9, include_str!(concat!("migrations/", $db, "-9.sql"))),
            (10, include_str!(concat!("migrations/", $db, "-10.sql"))),
            (11, include_str!(concat!("migrations/", $db, "-11.sql"))),
            (12, include_str!(concat!("migrations/", $db, "-12.sql"))),
            (13, include_str!(concat!("migrations/", $db, "-13.sql"))),
            (14, include_str!(concat!("migrations/", $db, "-14.sql"))),
            (15, include_str!(concat!("migrations/", $db, "-15.sql"))),
            (16, include_str!(concat!("migrations/", $db, "-16.sql"))),
            (17, include_str!(concat!("migrations/", $db, "-17.sql"))),
            (18, include_str!(concat!("migrations/", $db, "-18.sql"))),
            (19, include_str!(concat!("migrations/", $db, "-19.sql"))),
            (20, include_str!(concat!("migrations/", $db, "-20.sql"))),
            (21, include_str!(concat!("migrations/", $db, "-21.sql"))),
            (22, include_str!(concat!("migrations/", $db, "-22.sql"))),
            (23, include_str!(concat!("migrations/", $db, "-23.sql"))),
            (24, include_str!(concat!("migrations/", $db, "-24.sql"))),
            (25, include_str!(concat!("migrations/", $db, "-25.sql"))),
            (26, include_str!(concat!("migrations/", $db, "-26.sql"))),
            (27, include_str!(concat!("migrations/", $db, "-27.sql"))),
            (28, include_str!(concat!("migrations/", $db, "-28.sql"))),
        ]
    };
}
pub(crate) use migrations;

/// One unit of work on a backend's rows, in its own transaction.
pub type Job<R, T> = Box<dyn for<'a> FnOnce(&'a mut R) -> BoxFuture<'a, Result<T>> + Send>;

/// What a store engine provides besides its [`Rows`]: transactions, and
/// the facts that tell the flows apart.
pub trait Backend: Send + Sync + 'static {
    type Rows: Rows;
    /// Only this process uses the store (embedded SQLite under its lock):
    /// what it left `sending` when it died can be taken back at once.
    const ONE_PROCESS: bool;
    /// The schema, by version.
    const MIGRATIONS: &'static [(i64, &'static str)];
    /// The newest schema version this build knows.
    const LATEST: i64 = match Self::MIGRATIONS.last() {
        Some(m) => m.0,
        None => 0,
    };
    /// Runs `job` in a transaction, committed (durably) before it answers;
    /// an error takes back everything it wrote.
    fn write<T: Send + 'static>(
        &self,
        job: Job<Self::Rows, T>,
    ) -> impl Future<Output = Result<T>> + Send;
    /// As [`Backend::write`], except that the commit may answer before it
    /// is on the disk. It is still atomic and seen at once by every reader
    /// and node; only a crash of the machine under the store (power, the
    /// kernel; not of kci) just after it can lose it, and then with
    /// everything committed after it, as the store's log is written in
    /// order. Only for writes whose loss costs nothing but doing them
    /// again: a claim's lease (a notice whose claim is lost is pending
    /// again, as when a lease runs out; delivery is at least once either
    /// way).
    fn write_relaxed<T: Send + 'static>(
        &self,
        job: Job<Self::Rows, T>,
    ) -> impl Future<Output = Result<T>> + Send;
    /// Runs `job` for reading.
    fn read<T: Send + 'static>(
        &self,
        job: Job<Self::Rows, T>,
    ) -> impl Future<Output = Result<T>> + Send;
}

/// A store over backend `B`.
pub struct Db<B> {
    pub(crate) backend: B,
    times: WriteTimes,
}

/// A metric's labels, as `metrics::Labels`.
type Labels = Vec<(&'static str, String)>;

/// How long the store's writes took, from being asked for to being
/// answered: the wait for the writer or a connection, the work, and the
/// commit (with its sync to the disk for a durable one). It is what the
/// store adds to an event's `202` and to each delivery's outcome, so a
/// slow disk or a writer behind its work shows here before anywhere else
/// (`kci_store_write_seconds`, by `durability`: `durable` writes wait for
/// the disk, `relaxed` ones, the scheduler's claims, do not).
///
/// On SQLite it also holds how long the writer took to fold its
/// write-ahead log into the database (`kci_store_fold_seconds`): the one
/// writer does nothing else meanwhile, so every write queued during a fold
/// waits for it.
#[derive(Clone)]
pub struct WriteTimes {
    family: Family<Labels, Histogram>,
    durable: Histogram,
    relaxed: Histogram,
    folds: Histogram,
}

impl Default for WriteTimes {
    fn default() -> Self {
        // 0.1 ms to 3.3 s: a commit on a fast disk to a stalled one.
        let family = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        let of = |d: &str| {
            family
                .get_or_create(&vec![("durability", d.to_string())])
                .clone()
        };
        let (durable, relaxed) = (of("durable"), of("relaxed"));
        WriteTimes {
            family,
            durable,
            relaxed,
            folds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl WriteTimes {
    /// The histograms, by durability, for a metrics registry.
    pub fn family(&self) -> Family<Labels, Histogram> {
        self.family.clone()
    }

    /// The SQLite writer's folds of its log (none on PostgreSQL).
    pub fn folds(&self) -> Histogram {
        self.folds.clone()
    }

    /// Times `write`, durable or not.
    async fn time<T>(&self, durable: bool, write: impl Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = write.await;
        let took = started.elapsed().as_secs_f64();
        if durable {
            &self.durable
        } else {
            &self.relaxed
        }
        .observe(took);
        out
    }
}

impl<B: Backend> Db<B> {
    pub(crate) fn new(backend: B) -> Self {
        Self::with_times(backend, WriteTimes::default())
    }

    /// A store over `backend` whose writes are timed into `times` (which
    /// the backend may also observe, as SQLite's writer does its folds).
    pub(crate) fn with_times(backend: B, times: WriteTimes) -> Self {
        Db { backend, times }
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut B::Rows) -> BoxFuture<'a, Result<T>> + Send + 'static,
    {
        let write = self.backend.write(Box::new(f));
        self.times.time(true, write).await
    }

    async fn write_relaxed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut B::Rows) -> BoxFuture<'a, Result<T>> + Send + 'static,
    {
        let write = self.backend.write_relaxed(Box::new(f));
        self.times.time(false, write).await
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut B::Rows) -> BoxFuture<'a, Result<T>> + Send + 'static,
    {
        self.backend.read(Box::new(f)).await
    }

    /// One delivery's outcome, under `lease_until` if given.
    async fn finish_one(
        &self,
        id: &str,
        lease_until: Option<DateTime<Utc>>,
        finish: Finish,
    ) -> Result<bool> {
        let one = Outcome {
            id: id.to_string(),
            lease_until,
            finish,
        };
        let mut written = self.finish_all(vec![one]).await?;
        written
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no outcome written for one finish".into()))
    }

    async fn claim(
        &self,
        channel: Option<ChannelKind>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<LaneClaim> {
        let c = Claim {
            channel,
            now: to_millis(now),
            lease_until: to_millis(lease_until),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        // A lease only: lost in a crash of the machine, the notice is
        // pending again and claimed anew (Backend::write_relaxed).
        self.write_relaxed(move |rows| {
            Box::pin(async move {
                // A plan kept from a hub's first claims (a small table, no
                // statistics yet) read the whole table for each claim once
                // it had grown.
                rows.through_indexes().await?;
                let notes = rows.claim(c).await?;
                // Fewer than asked for: whatever of the channel is still
                // due waits for its turn (the claim took all else).
                let left = match channel {
                    _ if notes.len() >= limit => Left::More,
                    Some(kind) if rows.due_left(kind, c.now).await? => Left::InTurn,
                    _ => Left::Nothing,
                };
                let mut out = with_context(rows, notes, Some((now, lease_until))).await?;
                out.sort_by_key(|c| {
                    (
                        std::cmp::Reverse(c.notification.priority),
                        c.notification.due_at,
                    )
                });
                Ok(LaneClaim { claimed: out, left })
            })
        })
        .await
    }
}

/// `items` cut, in order, into runs in which no id comes twice: each run
/// as long as it can be.
fn distinct_runs<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut start = 0;
    for (i, item) in items.iter().enumerate() {
        if !seen.insert(id(item)) {
            runs.push(start..i);
            seen.clear();
            seen.insert(id(item));
            start = i;
        }
    }
    if start < items.len() {
        runs.push(start..items.len());
    }
    runs
}

/// Each notification with its event, whether its account is paranoid,
/// its address's active key, and (claimed at `claim`'s time, under its
/// lease) a webhook's signing secrets, read once for all of them.
async fn with_context(
    rows: &mut impl Rows,
    notes: Vec<Notification>,
    claim: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Result<Vec<Claimed>> {
    let lease_until = claim.map(|(_, lease)| lease);
    if notes.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = rows.claim_context(&notes).await?;
    // A letter's account: where it goes, and whether it may.
    let mut accounts: Vec<Account> = Vec::new();
    for n in &notes {
        if n.channel == ChannelKind::Letter
            && !accounts.iter().any(|a| a.id == n.account)
            && let Some(a) = rows.account(&n.account).await?
        {
            accounts.push(a);
        }
    }
    Ok(notes
        .into_iter()
        .map(|n| {
            let account = (n.channel == ChannelKind::Letter)
                .then(|| accounts.iter().find(|a| a.id == n.account).cloned())
                .flatten();
            let event = n
                .event
                .as_ref()
                .and_then(|id| ctx.events.iter().find(|e| &e.id == id).cloned());
            let paranoid = ctx.paranoid.contains(&n.account);
            let active_key = mail_address(&n).and_then(|a| {
                ctx.keys
                    .iter()
                    .find(|(k, _)| *k == a)
                    .map(|(_, v)| v.clone())
            });
            let signing =
                claim
                    .filter(|_| n.channel == ChannelKind::Webhook)
                    .map(|(read_at, _)| ClaimedSigning {
                        secrets: ctx
                            .secrets
                            .iter()
                            .find(|(id, _)| *id == n.destination)
                            .map(|(_, row)| row.clone())
                            .unwrap_or_default(),
                        read_at,
                    });
            Claimed {
                notification: n,
                lease_until,
                event,
                paranoid,
                active_key,
                account,
                signing,
            }
        })
        .collect())
}

/// What the key rules see of an address.
async fn address_keys(rows: &mut impl Rows, address: &str) -> Result<AddressKeys> {
    let (active, pending): (Vec<_>, Vec<_>) = rows
        .live_keys(address)
        .await?
        .into_iter()
        .partition(|k| k.state == crate::model::KeyState::Active);
    Ok(AddressKeys {
        active: active.into_iter().next(),
        pending,
        changes: rows
            .changes(ChangeWhich::Address {
                address,
                pending: true,
            })
            .await?,
    })
}

/// Appends `draft` to the audit log, after its last entry.
async fn append_audit(
    rows: &mut impl Rows,
    draft: AuditDraft,
    at: DateTime<Utc>,
) -> Result<AuditEntry> {
    let last = rows.audit_last().await?;
    let entry =
        crate::model::audit::append(last.as_ref().map(|(s, h)| (*s, h.as_str())), draft, at);
    rows.insert_audit(&entry).await?;
    Ok(entry)
}

/// The `mailto:` URI destinations store for a registry address.
fn mailto(address: &str) -> String {
    crate::model::EmailAddr::parse(address)
        .map_or_else(|_| format!("mailto:{address}"), |a| a.mailto())
}

/// Every verified, usable destination of `accounts` (each once): who is
/// told of a change.
async fn audience(rows: &mut impl Rows, accounts: &[String]) -> Result<Vec<Audience>> {
    let mut out: Vec<Audience> = Vec::new();
    for account in accounts {
        for destination in rows.destinations(account).await? {
            if destination.usable() && !out.iter().any(|a| a.destination.id == destination.id) {
                out.push(Audience {
                    account: account.clone(),
                    destination,
                });
            }
        }
    }
    Ok(out)
}

/// The accounts whose contacts use the mail address `address`.
async fn accounts_using(rows: &mut impl Rows, address: &str) -> Result<Vec<String>> {
    let mut accounts: Vec<String> = Vec::new();
    for (account, _) in rows.contacts_with_uri(&mailto(address)).await? {
        if !accounts.contains(&account) {
            accounts.push(account);
        }
    }
    Ok(accounts)
}

/// What a step on a change sees (see [`ChangeStore::change_step`]): the
/// account's or address's lock is taken before the change is read locked,
/// in the order the key flows take them.
async fn change_context(rows: &mut impl Rows, target: &ChangeTarget) -> Result<ChangeContext> {
    let first = |mut v: Vec<Change>| v.pop();
    let mut ctx = ChangeContext::default();
    let about = match target {
        ChangeTarget::New(c) => Some(c.clone()),
        ChangeTarget::Id(id) => first(rows.changes(ChangeWhich::Peek(id)).await?),
        ChangeTarget::Link(hash) => {
            ctx.link = rows.veto_link(hash).await?;
            match &ctx.link {
                Some(l) => first(rows.changes(ChangeWhich::Peek(&l.change)).await?),
                None => None,
            }
        }
        ChangeTarget::Incident(id) => {
            ctx.incident = rows.incidents(IncidentWhich::Id(id)).await?.pop();
            None
        }
        ChangeTarget::AssuranceLink(hash) => {
            ctx.assurance = rows.assurances(AssuranceWhich::Link(hash)).await?.pop();
            match &ctx.assurance {
                Some(a) => first(rows.changes(ChangeWhich::Peek(&a.change)).await?),
                None => None,
            }
        }
    };
    let account = about
        .as_ref()
        .and_then(|c| c.account.clone())
        .or_else(|| ctx.incident.as_ref().and_then(|i| i.account.clone()));
    let address = about.as_ref().and_then(|c| c.address.clone());
    if let Some(address) = &address {
        rows.lock_address(address).await?;
    }
    if let Some(account) = &account {
        rows.lock_key(account, "kci.changes").await?;
    }
    if let (Some(c), false) = (&about, matches!(target, ChangeTarget::New(_))) {
        ctx.change = first(rows.changes(ChangeWhich::Id(&c.id)).await?);
        ctx.assurances = rows.assurances(AssuranceWhich::Change(&c.id)).await?;
        let approvers: Vec<String> = ctx
            .change
            .iter()
            .flat_map(|c| c.approvals.iter().map(|a| a.staff.clone()))
            .collect();
        for name in approvers {
            let disabled = rows
                .staff(Some(&name))
                .await?
                .first()
                .is_some_and(|s| s.disabled_at.is_some());
            if disabled {
                ctx.disabled_approvers.push(name);
            }
        }
        if let Some(a) = &ctx.assurance {
            ctx.assurance = ctx.assurances.iter().find(|x| x.id == a.id).cloned();
        }
    }
    let this = about.as_ref().map(|c| c.id.clone());
    let mut accounts = Vec::new();
    if let Some(account) = &account {
        ctx.others = rows
            .changes(ChangeWhich::Account {
                account,
                pending: true,
            })
            .await?;
        ctx.account = account_view(rows, account).await?;
        // The key changes waiting for the addresses it is told at.
        let addresses: Vec<String> = ctx
            .account
            .iter()
            .flat_map(|v| v.contacts.iter().flat_map(|c| &c.destinations))
            .filter_map(|d| match &d.uri {
                crate::model::DestinationUri::Mailto(a) => Some(a.as_str().to_string()),
                _ => None,
            })
            .collect();
        for address in &addresses {
            let waiting = rows
                .changes(ChangeWhich::Address {
                    address,
                    pending: true,
                })
                .await?;
            for c in waiting {
                if !ctx.others.iter().any(|o| o.id == c.id) {
                    ctx.others.push(c);
                }
            }
        }
        accounts.push(account.clone());
    }
    if let Some(address) = &address {
        let keys = address_keys(rows, address).await?;
        ctx.others.extend(keys.changes.iter().cloned());
        ctx.keys = Some(keys);
        accounts.extend(accounts_using(rows, address).await?);
    }
    ctx.others.retain(|c| Some(&c.id) != this.as_ref());
    ctx.audience = audience(rows, &accounts).await?;
    for account in &accounts {
        if let Some(a) = rows.account(account).await? {
            ctx.level = ctx.level.max(a.security_level);
            ctx.prefixes.extend(a.prefixes);
        }
    }
    Ok(ctx)
}

/// What a step on a call sees: the call (locked) and the contact's
/// destinations that reach them at once.
async fn call_context(
    rows: &mut impl Rows,
    target: &crate::model::CallTarget,
) -> Result<crate::model::CallContext> {
    use crate::model::CallTarget;
    let call = match target {
        // A new one is the rule's own; nothing stored yet.
        CallTarget::New(_) => None,
        CallTarget::Id(id) => rows.calls(CallWhich::Id(id)).await?.pop(),
        CallTarget::Link(hash) => rows.calls(CallWhich::Link(hash)).await?.pop(),
    };
    let (account, contact) = match (target, &call) {
        (CallTarget::New(c), _) => (c.account.clone(), c.contact.clone()),
        (_, Some(c)) => (c.account.clone(), c.contact.clone()),
        (_, None) => return Ok(crate::model::CallContext::default()),
    };
    let contact_known = rows.contact_exists(&account, &contact).await?;
    let audience = audience(rows, std::slice::from_ref(&account))
        .await?
        .into_iter()
        .filter(|a| {
            a.destination.contact == contact && a.destination.uri.channel() != ChannelKind::Email
        })
        .collect();
    Ok(crate::model::CallContext {
        call,
        audience,
        contact_known,
    })
}

/// Makes the writes a change step decided.
async fn write_changes(
    rows: &mut impl Rows,
    writes: &[ChangeWrite],
    now: DateTime<Utc>,
) -> Result<()> {
    for w in writes {
        match w {
            ChangeWrite::Change(c) => rows.upsert_change(c, to_millis(now)).await?,
            ChangeWrite::Key { address, write } => {
                write_keys(rows, address, None, now, std::slice::from_ref(write)).await?
            }
            ChangeWrite::UseLink(hash) => rows.use_veto_link(hash, to_millis(now)).await?,
            ChangeWrite::AddDestination {
                account,
                destination,
                code,
                notice,
            } => {
                rows.insert_destination(account, destination).await?;
                if let Some(code) = code {
                    rows.write_code_row(&destination.id, code).await?;
                }
                if let Some(n) = notice {
                    rows.insert_notification(n).await?;
                }
            }
            ChangeWrite::RemoveDestination {
                account,
                contact,
                id,
            } => {
                let at = DestRef {
                    account,
                    contact,
                    id,
                };
                if rows.delete_destination(at).await? {
                    let d = decision(
                        id,
                        State::Cancelled,
                        Some(Reason::DestinationRemoved),
                        None,
                        now,
                    );
                    rows.cancel(By::Destination, id, &d).await?;
                }
            }
            ChangeWrite::SetSecurity {
                account,
                level,
                paranoid,
            } => rows.set_security(account, *level, *paranoid).await?,
            ChangeWrite::SetPostalAddress { account, address } => {
                rows.set_postal_address(account, Some(address)).await?
            }
            ChangeWrite::CancelNotices { key, detail } => {
                let d = decision(
                    "",
                    State::Cancelled,
                    Some(Reason::ChangeEnded),
                    Some(detail),
                    now,
                );
                rows.cancel(By::Reminders, key, &d).await?;
            }
            ChangeWrite::Incident(i) => rows.upsert_incident(i).await?,
            ChangeWrite::Notice(n) => rows.insert_notification(n).await?,
            ChangeWrite::Audit(d) => {
                append_audit(rows, d.clone(), now).await?;
            }
            ChangeWrite::Assurance(a) => rows.upsert_assurance(a).await?,
        }
    }
    Ok(())
}

/// An account with its contacts and their destinations.
async fn account_view(rows: &mut impl Rows, id: &str) -> Result<Option<AccountView>> {
    let Some(account) = rows.account(id).await? else {
        return Ok(None);
    };
    let mut contacts: Vec<ContactView> = rows
        .contacts(id)
        .await?
        .into_iter()
        .map(|contact| ContactView {
            contact,
            destinations: Vec::new(),
        })
        .collect();
    for dest in rows.destinations(id).await? {
        if let Some(cv) = contacts.iter_mut().find(|c| c.contact.id == dest.contact) {
            cv.destinations.push(dest);
        }
    }
    Ok(Some(AccountView { account, contacts }))
}

/// The account an import's rows are at: as stored, with the rows of the
/// batch so far written.
struct Importing {
    id: String,
    account: Option<Account>,
    contacts: Vec<Contact>,
    destinations: Vec<Destination>,
}

/// One import batch in one transaction (see
/// [`DirectoryStore::import_directory`]).
async fn import_batch(
    rows: &mut impl Rows,
    batch: crate::model::ImportBatch,
    rule: crate::model::ImportRule,
) -> Result<Vec<crate::model::ImportOutcome>> {
    use crate::model::{ImportCounts, ImportSeen, ImportWrite};
    let mut outcomes = Vec::with_capacity(batch.rows.len());
    let mut counts = ImportCounts {
        refused: batch.refused_before,
        ..ImportCounts::default()
    };
    // Accounts this batch created: nobody was told on them before.
    let mut fresh: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut at: Option<Importing> = None;
    for row in &batch.rows {
        let id = &row.account.id;
        if at.as_ref().is_none_or(|a| &a.id != id) {
            // As `put_account` and the change steps: one writer per
            // account's directory at a time.
            rows.lock_key(id, "kci.changes").await?;
            at = Some(Importing {
                id: id.clone(),
                account: rows.account(id).await?,
                contacts: rows.contacts(id).await?,
                destinations: rows.destinations(id).await?,
            });
        }
        let Some(cur) = at.as_mut() else {
            continue;
        };
        let id_elsewhere = match &row.destination {
            Some(d)
                if row.destination_id_given && !cur.destinations.iter().any(|x| x.id == d.id) =>
            {
                rows.destination_account(&d.id).await?.is_some()
            }
            _ => false,
        };
        let seen = ImportSeen {
            account: cur.account.as_ref(),
            contacts: &cur.contacts,
            destinations: &cur.destinations,
            fresh: fresh.contains(id),
            id_elsewhere,
        };
        let (outcome, writes) = rule(&seen, row);
        for w in writes {
            match w {
                ImportWrite::Account(a) => {
                    rows.upsert_account(&a).await?;
                    if cur.account.is_none() {
                        fresh.insert(a.id.clone());
                    }
                    cur.account = Some(a);
                }
                ImportWrite::Contact(c) => {
                    rows.upsert_contact(id, &c).await?;
                    match cur.contacts.iter_mut().find(|x| x.id == c.id) {
                        Some(x) => *x = c,
                        None => cur.contacts.push(c),
                    }
                }
                ImportWrite::Destination(d) => {
                    rows.insert_destination(id, &d).await?;
                    cur.destinations.push(d);
                }
                ImportWrite::Verify(did) => {
                    rows.set_verified(&did).await?;
                    if let Some(x) = cur.destinations.iter_mut().find(|x| x.id == did) {
                        x.verified = true;
                    }
                }
            }
        }
        counts.add(&outcome);
        outcomes.push(outcome);
    }
    if counts.created + counts.updated + counts.refused > 0 {
        let mut d = AuditDraft::new(&batch.actor, "directory.imported", "ok");
        d.source = Some("cli".into());
        d.detail = Some(format!("{}: {counts}", batch.what));
        append_audit(rows, d, batch.at).await?;
    }
    Ok(outcomes)
}

/// The directory of `account`, read once per request.
async fn view_of<'v>(
    rows: &mut impl Rows,
    views: &'v mut Vec<(String, Option<AccountView>)>,
    account: &str,
) -> Result<Option<&'v AccountView>> {
    let at = match views.iter().position(|(id, _)| id == account) {
        Some(at) => at,
        None => {
            let view = account_view(rows, account).await?;
            views.push((account.to_string(), view));
            views.len() - 1
        }
    };
    Ok(views.get(at).and_then(|(_, v)| v.as_ref()))
}

fn unknown_account(event: &Event) -> IngestOutcome {
    IngestOutcome::Rejected(Rejection {
        code: "unknown_account",
        message: format!("account: `{}` is not a known account", event.account),
    })
}

/// An event to store and the text it is stored as ([`event_json`]), made
/// before the write, on the caller's thread: SQLite's one writer thread is
/// what every ingest waits for, and a PostgreSQL transaction holds its
/// locks meanwhile.
struct Arriving {
    event: Event,
    payload: String,
}

impl Arriving {
    fn new(event: Event) -> Result<Arriving> {
        let payload = event_json(&event)?;
        Ok(Arriving { event, payload })
    }
}

/// The events of one request, in order, each with the outcome it would
/// have alone. One look-up finds the ids already known. An event whose
/// plan reads nothing but the directory (no pairing, superseding, flap
/// counting, digest or cap: most events) is planned in memory and
/// gathered; the gathered are written together — their events at once,
/// then their notifications at once, one round trip each on PostgreSQL
/// rather than one per row. Any other event is written on its own, after
/// what was gathered before it, so that it sees it.
async fn ingest_all(
    rows: &mut impl Rows,
    events: &[Arriving],
    planner: &dyn Planner,
) -> Result<Vec<IngestOutcome>> {
    // A plan kept from a hub's first minutes (a few events) read the
    // events table whole for each ingest once it had grown.
    rows.through_indexes().await?;
    // A batch's statements take arrays of one to a thousand rows: each is
    // planned for the rows it has.
    if events.len() > 1 {
        rows.plan_for_values().await?;
    }
    let ids: Vec<&str> = events.iter().map(|a| a.event.id.as_str()).collect();
    let mut known = rows.event_counts(&ids).await?;
    let mut views = Vec::new();
    let mut out: Vec<Option<IngestOutcome>> = Vec::with_capacity(events.len());
    let mut gathered: Vec<(usize, Planned)> = Vec::new();
    for (i, arriving) in events.iter().enumerate() {
        let event = &arriving.event;
        if let Some(&n) = known.get(&event.id) {
            out.push(Some(IngestOutcome::Duplicate {
                id: event.id.clone(),
                notifications: n,
            }));
            continue;
        }
        let Some(view) = view_of(rows, &mut views, &event.account).await? else {
            out.push(Some(unknown_account(event)));
            continue;
        };
        let plain = planner.related_types(event).is_empty()
            && planner.flap_window(event).is_none()
            && planner.loads_needed(event, view).is_empty();
        let planned = if plain {
            let seen = Seen {
                related: &[],
                recent: 0,
                loads: &[],
            };
            match planner.plan(event, view, &seen) {
                Ok(p) => Some(p),
                Err(r) => {
                    out.push(Some(IngestOutcome::Rejected(r)));
                    continue;
                }
            }
        } else {
            None
        };
        match planned {
            Some(p) if p.cancels.is_empty() && p.paired.is_empty() && p.updates.is_empty() => {
                known.insert(event.id.clone(), p.notifications.len());
                out.push(None);
                gathered.push((i, p));
            }
            planned => {
                write_gathered(rows, events, planner, &mut gathered, &mut out).await?;
                let outcome = match planned {
                    Some(p) => write_planned(rows, arriving, planner, &p).await?,
                    None => ingest_one(rows, arriving, planner, &mut views).await?,
                };
                if let IngestOutcome::Accepted { notifications, .. } = &outcome {
                    known.insert(event.id.clone(), *notifications);
                }
                out.push(Some(outcome));
            }
        }
    }
    write_gathered(rows, events, planner, &mut gathered, &mut out).await?;
    Ok(out.into_iter().flatten().collect())
}

/// Writes the gathered events of [`ingest_all`] and fills in their
/// outcomes: accepted, or (taken meanwhile by another node) the first
/// result.
async fn write_gathered(
    rows: &mut impl Rows,
    events: &[Arriving],
    planner: &dyn Planner,
    gathered: &mut Vec<(usize, Planned)>,
    out: &mut [Option<IngestOutcome>],
) -> Result<()> {
    if gathered.is_empty() {
        return Ok(());
    }
    let these: Vec<NewEvent<'_>> = gathered
        .iter()
        .map(|(i, p)| NewEvent {
            event: &events[*i].event,
            payload: &events[*i].payload,
            notifications: p.notifications.len(),
            keyed: planner.keyed(&events[*i].event),
        })
        .collect();
    let inserted = rows.insert_events(&these).await?;
    let mut notes = Vec::new();
    for ((i, p), fresh) in gathered.iter().zip(inserted) {
        let id = events[*i].event.id.clone();
        out[*i] = Some(if fresh {
            notes.extend(p.notifications.iter());
            IngestOutcome::Accepted {
                id,
                notifications: p.notifications.len(),
                due: crate::model::first_due(&p.notifications),
            }
        } else {
            let n = rows.event_count(&id).await?.unwrap_or(0);
            IngestOutcome::Duplicate {
                id,
                notifications: n,
            }
        });
    }
    rows.insert_notifications(&notes).await?;
    gathered.clear();
    Ok(())
}

/// One event of an ingest: checked, planned and written, or refused.
async fn ingest_one(
    rows: &mut impl Rows,
    arriving: &Arriving,
    planner: &dyn Planner,
    views: &mut Vec<(String, Option<AccountView>)>,
) -> Result<IngestOutcome> {
    let event = &arriving.event;
    let duplicate = |n: usize| IngestOutcome::Duplicate {
        id: event.id.clone(),
        notifications: n,
    };
    if let Some(n) = rows.event_count(&event.id).await? {
        return Ok(duplicate(n));
    }
    // An event that pairs or supersedes is serialised with the others of
    // its (account, key), so each sees the other.
    let types = planner.related_types(event);
    if !types.is_empty() {
        rows.lock_key(&event.account, &event.key).await?;
    }
    let Some(view) = view_of(rows, views, &event.account).await? else {
        return Ok(unknown_account(event));
    };
    let related = if types.is_empty() {
        Vec::new()
    } else {
        rows.related(event, &types).await?
    };
    let recent = match planner.flap_window(event) {
        Some((types, within)) => {
            let since = to_millis(event.received_at - within);
            rows.count_events(event, &types, since).await?
        }
        None => 0,
    };
    let mut loads = Vec::new();
    for (destination, period) in planner.loads_needed(event, view) {
        let recent = match period {
            Some(p) => {
                rows.load(&destination, to_millis(event.received_at - p))
                    .await?
            }
            None => 0,
        };
        let pending_digest = rows.pending_digest(&event.account, &destination).await?;
        loads.push(Load {
            destination,
            recent,
            pending_digest,
        });
    }
    let seen = Seen {
        related: &related,
        recent,
        loads: &loads,
    };
    let planned = match planner.plan(event, view, &seen) {
        Ok(p) => p,
        Err(r) => return Ok(IngestOutcome::Rejected(r)),
    };
    write_planned(rows, arriving, planner, &planned).await
}

/// Writes what was planned for `event`: the event, its notifications,
/// and the cancels, pairings and digest updates of related notices.
async fn write_planned(
    rows: &mut impl Rows,
    arriving: &Arriving,
    planner: &dyn Planner,
    planned: &Planned,
) -> Result<IngestOutcome> {
    let event = &arriving.event;
    let duplicate = |n: usize| IngestOutcome::Duplicate {
        id: event.id.clone(),
        notifications: n,
    };
    let row = NewEvent {
        event,
        payload: &arriving.payload,
        notifications: planned.notifications.len(),
        keyed: planner.keyed(event),
    };
    if !rows.insert_event(row).await? {
        // Seen meanwhile (by another node, a moment ago): the first result.
        let n = rows.event_count(&event.id).await?.unwrap_or(0);
        return Ok(duplicate(n));
    }
    for note in &planned.notifications {
        rows.insert_notification(note).await?;
    }
    for c in &planned.cancels {
        let d = decision(
            &c.id,
            State::Cancelled,
            Some(c.reason),
            Some(&c.detail),
            event.received_at,
        );
        rows.cancel(By::Id, &c.id, &d).await?;
    }
    for (id, from) in &planned.paired {
        rows.set_paired_from(id, to_millis(*from)).await?;
    }
    for (id, message) in &planned.updates {
        rows.set_message(id, message).await?;
    }
    Ok(IngestOutcome::Accepted {
        id: event.id.clone(),
        notifications: row.notifications,
        due: crate::model::first_due(&planned.notifications),
    })
}

/// A decision to record about notification `id` at `at` (its due time is
/// filled in by the write that knows it).
fn decision(
    id: &str,
    state: State,
    reason: Option<Reason>,
    detail: Option<&str>,
    at: DateTime<Utc>,
) -> Decided {
    Decided {
        notification: id.to_string(),
        at,
        state,
        reason,
        detail: detail.map(str::to_string),
        due_at: at,
    }
}

/// Makes the writes the key rules decided for `address`; `link` is the
/// hash of the link being followed, if any.
async fn write_keys(
    rows: &mut impl Rows,
    address: &str,
    link: Option<&str>,
    now: DateTime<Utc>,
    writes: &[KeyWrite],
) -> Result<()> {
    for w in writes {
        match w {
            KeyWrite::UseLink => {
                if let Some(hash) = link {
                    rows.use_link(hash, to_millis(now)).await?;
                }
            }
            KeyWrite::Retire { fingerprint, state } => {
                let m = rows::KeyMove {
                    address,
                    fingerprint,
                    state: state.as_str(),
                    at: None,
                };
                rows.move_key(m).await?;
            }
            KeyWrite::Activate { fingerprint, at } => {
                let m = rows::KeyMove {
                    address,
                    fingerprint,
                    state: crate::model::KeyState::Active.as_str(),
                    at: Some(to_millis(*at)),
                };
                rows.move_key(m).await?;
            }
            KeyWrite::Change(c) => rows.upsert_change(c, to_millis(now)).await?,
        }
    }
    Ok(())
}

#[async_trait]
impl<B: Backend> TokenStore for Db<B> {
    async fn create_token(&self, token: &TokenRecord, hash: &str) -> Result<()> {
        let (t, hash) = (token.clone(), hash.to_string());
        self.write(move |rows| Box::pin(async move { rows.insert_token(&t, &hash).await }))
            .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(move |rows| Box::pin(async move { rows.tokens(None).await }))
            .await
    }

    async fn revoke_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        let id = id.to_string();
        self.write(move |rows| Box::pin(async move { rows.revoke_token(&id, to_millis(at)).await }))
            .await
    }

    async fn rotate_token(&self, old: &str, new: &TokenRecord, hash: &str) -> Result<bool> {
        let (old, new, hash) = (old.to_string(), new.clone(), hash.to_string());
        self.write(move |rows| {
            Box::pin(async move {
                if !rows.revoke_token(&old, to_millis(new.created_at)).await? {
                    return Ok(false);
                }
                rows.insert_token(&new, &hash).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn touch_token(&self, id: &str, at: DateTime<Utc>, from: Option<&str>) -> Result<()> {
        let (id, from) = (id.to_string(), from.map(str::to_string));
        self.write(move |rows| {
            Box::pin(async move { rows.touch_token(&id, to_millis(at), from.as_deref()).await })
        })
        .await
    }

    async fn token_epoch(&self) -> Result<i64> {
        self.read(|rows| Box::pin(async move { rows.auth_epoch().await }))
            .await
    }

    async fn find_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let hash = hash.to_string();
        self.read(move |rows| {
            Box::pin(async move {
                let Some(mut token) = rows.token(&hash).await? else {
                    return Ok(None);
                };
                if let Some(name) = &token.staff {
                    // Acting as a person: only while they are enabled, and
                    // only with what their role allows now.
                    match rows.staff(Some(name)).await?.pop() {
                        Some(s) if s.disabled_at.is_none() => {
                            token.scopes.retain(|scope| s.role.allows(*scope));
                        }
                        _ => return Ok(None),
                    }
                }
                Ok(Some(token))
            })
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> DirectoryStore for Db<B> {
    async fn put_account(
        &self,
        account: &Account,
    ) -> Result<(PutOutcome, Option<(crate::model::SecurityLevel, bool)>)> {
        let mut a = account.clone();
        self.write(move |rows| {
            Box::pin(async move {
                rows.lock_key(&a.id, "kci.changes").await?;
                let stored = rows.account(&a.id).await?;
                let kept = crate::model::kept_security(stored.as_ref(), &a);
                if let Some((level, paranoid)) = kept {
                    a.security_level = level;
                    a.paranoid = paranoid;
                }
                rows.upsert_account(&a).await?;
                Ok((put_outcome(stored.is_some()), kept))
            })
        })
        .await
    }

    async fn account_view(&self, id: &str) -> Result<Option<AccountView>> {
        let id = id.to_string();
        self.read(move |rows| Box::pin(async move { account_view(rows, &id).await }))
            .await
    }

    async fn put_contact(&self, account: &str, contact: &Contact) -> Result<PutOutcome> {
        let (account, c) = (account.to_string(), contact.clone());
        self.write(move |rows| {
            Box::pin(async move {
                if rows.account(&account).await?.is_none() {
                    return Ok(PutOutcome::NoParent);
                }
                let existed = rows.contact_exists(&account, &c.id).await?;
                rows.upsert_contact(&account, &c).await?;
                Ok(put_outcome(existed))
            })
        })
        .await
    }

    async fn add_destination(
        &self,
        account: &str,
        dest: &Destination,
        code: Option<CodeRow>,
        notice: Option<Notification>,
    ) -> Result<PutOutcome> {
        let (account, d) = (account.to_string(), dest.clone());
        self.write(move |rows| {
            Box::pin(async move {
                if !rows.contact_exists(&account, &d.contact).await? {
                    return Ok(PutOutcome::NoParent);
                }
                rows.insert_destination(&account, &d).await?;
                if let Some(code) = &code {
                    rows.write_code_row(&d.id, code).await?;
                }
                if let Some(n) = &notice {
                    rows.insert_notification(n).await?;
                }
                Ok(PutOutcome::Created)
            })
        })
        .await
    }

    async fn verify_destination(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        code_hash: &str,
        now: DateTime<Utc>,
        rule: CheckRule,
    ) -> Result<VerifyOutcome> {
        let (account, contact, id, hash) = (
            account.to_string(),
            contact.to_string(),
            id.to_string(),
            code_hash.to_string(),
        );
        self.write(move |rows| {
            Box::pin(async move {
                let at = DestRef {
                    account: &account,
                    contact: &contact,
                    id: &id,
                };
                let Some(row) = rows.code_row(at).await? else {
                    return Ok(VerifyOutcome::NotFound);
                };
                let (next, outcome) = rule(&row, &hash, now);
                if let Some(next) = next {
                    rows.write_code_row(&id, &next).await?;
                }
                Ok(outcome)
            })
        })
        .await
    }

    async fn renew_code(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        code: PendingCode,
        notice: Notification,
        now: DateTime<Utc>,
        rule: IssueRule,
    ) -> Result<RenewOutcome> {
        let (account, contact, id) = (account.to_string(), contact.to_string(), id.to_string());
        self.write(move |rows| {
            Box::pin(async move {
                let at = DestRef {
                    account: &account,
                    contact: &contact,
                    id: &id,
                };
                let Some(row) = rows.code_row(at).await? else {
                    return Ok(RenewOutcome::NotFound);
                };
                match rule(&row, &code.hash, code.expires_at, now) {
                    Ok(next) => {
                        rows.write_code_row(&id, &next).await?;
                        rows.insert_notification(&notice).await?;
                        Ok(RenewOutcome::Sent)
                    }
                    Err(refused) => Ok(refused),
                }
            })
        })
        .await
    }

    async fn delete_destination(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let (account, contact, id) = (account.to_string(), contact.to_string(), id.to_string());
        self.write(move |rows| {
            Box::pin(async move {
                let at = DestRef {
                    account: &account,
                    contact: &contact,
                    id: &id,
                };
                if !rows.delete_destination(at).await? {
                    return Ok(false);
                }
                let d = decision(
                    &id,
                    State::Cancelled,
                    Some(Reason::DestinationRemoved),
                    None,
                    now,
                );
                rows.cancel(By::Destination, &id, &d).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn destination_secrets(&self, id: &str, now: DateTime<Utc>) -> Result<Signing> {
        let id = id.to_string();
        self.read(move |rows| {
            Box::pin(async move {
                let s = rows.secrets(&id).await?;
                Ok(current_secrets(s.secret, s.previous, s.previous_until, now))
            })
        })
        .await
    }

    async fn set_destination_secret(
        &self,
        account: &str,
        contact: &str,
        id: &str,
        secret: &str,
        previous_until: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let (account, contact, id, secret) = (
            account.to_string(),
            contact.to_string(),
            id.to_string(),
            secret.to_string(),
        );
        self.write(move |rows| {
            Box::pin(async move {
                let at = DestRef {
                    account: &account,
                    contact: &contact,
                    id: &id,
                };
                let now = rows.secrets(&id).await?;
                rows.set_secret(at, &rotate(now, secret, previous_until))
                    .await
            })
        })
        .await
    }

    async fn contacts_with_uri(&self, uri: &str) -> Result<Vec<(String, String)>> {
        let uri = uri.to_string();
        self.read(move |rows| Box::pin(async move { rows.contacts_with_uri(&uri).await }))
            .await
    }

    async fn import_directory(
        &self,
        batch: crate::model::ImportBatch,
        rule: crate::model::ImportRule,
    ) -> Result<Vec<crate::model::ImportOutcome>> {
        self.write(move |rows| Box::pin(async move { import_batch(rows, batch, rule).await }))
            .await
    }

    async fn directory_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<AccountView>> {
        let after = after.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |rows| {
            Box::pin(async move {
                let accounts = rows.accounts_after(after.as_deref(), limit).await?;
                let (Some(first), Some(last)) = (accounts.first(), accounts.last()) else {
                    return Ok(Vec::new());
                };
                let (first, last) = (first.id.clone(), last.id.clone());
                let mut views: Vec<AccountView> = accounts
                    .into_iter()
                    .map(|account| AccountView {
                        account,
                        contacts: Vec::new(),
                    })
                    .collect();
                let at: std::collections::HashMap<String, usize> = views
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.account.id.clone(), i))
                    .collect();
                for (account, contact) in rows.contacts_between(&first, &last).await? {
                    if let Some(&i) = at.get(&account) {
                        views[i].contacts.push(ContactView {
                            contact,
                            destinations: Vec::new(),
                        });
                    }
                }
                for (account, dest) in rows.destinations_between(&first, &last).await? {
                    let Some(&i) = at.get(&account) else { continue };
                    if let Some(cv) = views[i]
                        .contacts
                        .iter_mut()
                        .find(|c| c.contact.id == dest.contact)
                    {
                        cv.destinations.push(dest);
                    }
                }
                Ok(views)
            })
        })
        .await
    }

    async fn count_outcome(
        &self,
        destination: &str,
        failed: bool,
        threshold: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let destination = destination.to_string();
        self.write(move |rows| {
            Box::pin(async move {
                let Some(h) = rows.health(&destination).await? else {
                    return Ok(false);
                };
                let (next, marked) = count_refusal(h, failed, threshold, now);
                if next != h {
                    rows.write_health(&destination, next).await?;
                }
                Ok(marked)
            })
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> EventStore for Db<B> {
    async fn ingest(
        &self,
        events: Vec<Event>,
        planner: Arc<dyn Planner>,
    ) -> Result<Vec<IngestOutcome>> {
        let events = events
            .into_iter()
            .map(Arriving::new)
            .collect::<Result<Vec<_>>>()?;
        // No savepoint per event: an event writes only after its checks
        // passed, and a store error takes the whole request back.
        self.write(move |rows| {
            Box::pin(async move { ingest_all(rows, &events, planner.as_ref()).await })
        })
        .await
    }

    async fn event(&self, id: &str) -> Result<Option<(Event, Vec<Notification>)>> {
        let id = id.to_string();
        self.read(move |rows| {
            Box::pin(async move {
                let Some(event) = rows.event(&id).await? else {
                    return Ok(None);
                };
                let notes = rows.notifications(Which::OfEvent(&id)).await?;
                Ok(Some((event, notes)))
            })
        })
        .await
    }

    async fn cancel_event(&self, id: &str, now: DateTime<Utc>) -> Result<Option<usize>> {
        let id = id.to_string();
        self.write(move |rows| {
            Box::pin(async move {
                if rows.event_count(&id).await?.is_none() {
                    return Ok(None);
                }
                let d = decision(
                    &id,
                    State::Cancelled,
                    Some(Reason::EventCancelled),
                    Some("DELETE /v1/events"),
                    now,
                );
                Ok(Some(rows.cancel(By::Event, &id, &d).await?))
            })
        })
        .await
    }

    async fn history(&self, event: &str) -> Result<Vec<Decided>> {
        let event = event.to_string();
        self.read(move |rows| Box::pin(async move { rows.history(&event).await }))
            .await
    }
}

#[async_trait]
impl<B: Backend> QueueStore for Db<B> {
    async fn enqueue(&self, n: &Notification) -> Result<()> {
        let n = n.clone();
        self.write(move |rows| Box::pin(async move { rows.insert_notification(&n).await }))
            .await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        Ok(self.claim(None, now, lease_until, limit).await?.claimed)
    }

    async fn claim_due_on(
        &self,
        channel: ChannelKind,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<LaneClaim> {
        self.claim(Some(channel), now, lease_until, limit).await
    }

    async fn finish(&self, id: &str, outcome: Finish) -> Result<()> {
        self.finish_one(id, None, outcome).await.map(drop)
    }

    async fn finish_leased(
        &self,
        id: &str,
        lease_until: DateTime<Utc>,
        outcome: Finish,
    ) -> Result<bool> {
        self.finish_one(id, Some(lease_until), outcome).await
    }

    async fn finish_all(&self, outcomes: Vec<Outcome>) -> Result<Vec<bool>> {
        let done: Vec<(String, super::codec::FinishRow)> = outcomes
            .into_iter()
            .map(|o| {
                let row = super::codec::FinishRow {
                    lease: o.lease_until.map(to_millis),
                    ..finish_row(&o.finish)
                };
                (o.id, row)
            })
            .collect();
        self.write(move |rows| {
            Box::pin(async move {
                // One notice twice: the second written after the first.
                let mut written = Vec::with_capacity(done.len());
                for run in distinct_runs(&done, |(id, _)| id.as_str()) {
                    written.extend(rows.finish_all(&done[run]).await?);
                }
                Ok(written)
            })
        })
        .await
    }

    async fn reserve_rate(
        &self,
        channel: ChannelKind,
        rate: crate::schedule::rate::Gcra,
        now: DateTime<Utc>,
        n: usize,
    ) -> Result<(DateTime<Utc>, Vec<Option<DateTime<Utc>>>)> {
        self.write(move |rows| {
            Box::pin(async move {
                let (tat, paused) = rows.channel_limit(channel).await?;
                let (tat, slots) = rate.reserve(tat.map(from_millis), now, n);
                rows.set_channel_limit(channel, Some(to_millis(tat)), paused)
                    .await?;
                Ok((tat, slots))
            })
        })
        .await
    }

    async fn pause_channel(&self, channel: ChannelKind, until: DateTime<Utc>) -> Result<()> {
        self.write(move |rows| {
            Box::pin(async move {
                let (tat, paused) = rows.channel_limit(channel).await?;
                // A later pause wins.
                let until = paused.map_or(to_millis(until), |p| p.max(to_millis(until)));
                rows.set_channel_limit(channel, tat, Some(until)).await
            })
        })
        .await
    }

    async fn channel_pauses(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(ChannelKind, DateTime<Utc>)>> {
        self.read(move |rows| {
            Box::pin(async move {
                let paused = rows.channel_pauses(to_millis(now)).await?;
                Ok(paused
                    .into_iter()
                    .filter_map(|(c, t)| {
                        Some((super::codec::channel_from_text(&c).ok()?, from_millis(t)))
                    })
                    .collect())
            })
        })
        .await
    }

    async fn next_due(&self, after: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>> {
        let after = after.map_or(i64::MIN, to_millis);
        self.read(move |rows| {
            Box::pin(async move { Ok(rows.next_due(after).await?.map(from_millis)) })
        })
        .await
    }

    async fn count_by_state(&self) -> Result<Vec<(State, i64)>> {
        self.read(|rows| Box::pin(async move { rows.count_by_state().await }))
            .await
    }

    async fn backlog(&self) -> Result<Backlog> {
        self.read(|rows| {
            Box::pin(async move {
                let (oldest, changes, incidents, unhealthy) = rows.backlog().await?;
                Ok(Backlog {
                    oldest_due: oldest.map(from_millis),
                    changes_pending: changes,
                    incidents_open: incidents,
                    destinations_unhealthy: unhealthy,
                })
            })
        })
        .await
    }

    async fn digest_members(&self, id: &str) -> Result<Vec<Claimed>> {
        let id = id.to_string();
        self.read(move |rows| {
            Box::pin(async move {
                let notes = rows.notifications(Which::InDigest(&id)).await?;
                with_context(rows, notes, None).await
            })
        })
        .await
    }

    async fn notifications_in(
        &self,
        state: State,
        before: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let which = Which::InState {
            state,
            before: before.map(to_millis).unwrap_or(i64::MAX),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        self.read(move |rows| Box::pin(async move { rows.notifications(which).await }))
            .await
    }

    async fn redrive(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let id = id.to_string();
        self.write(move |rows| {
            Box::pin(async move {
                let why = Some("POST /v1/deliveries/{id}/retry");
                let d = decision(&id, State::Pending, Some(Reason::Redriven), why, now);
                rows.redrive(&id, &d).await
            })
        })
        .await
    }

    async fn notification(&self, id: &str) -> Result<Option<Notification>> {
        let id = id.to_string();
        self.read(move |rows| {
            Box::pin(async move { Ok(rows.notifications(Which::One(&id)).await?.pop()) })
        })
        .await
    }

    async fn requeue_abandoned(&self, now: DateTime<Utc>) -> Result<usize> {
        if !B::ONE_PROCESS {
            // Other nodes may be sending them: their leases decide.
            return Ok(0);
        }
        self.write(move |rows| {
            Box::pin(async move {
                let why = "kci stopped while sending it; it may arrive twice with the same id";
                let d = decision("", State::Pending, Some(Reason::Requeued), Some(why), now);
                rows.requeue_sending(&d).await
            })
        })
        .await
    }

    async fn record_receipt(&self, id: &str, report: &Report, at: DateTime<Utc>) -> Result<bool> {
        let (id, report) = (id.to_string(), report.clone());
        self.write(move |rows| {
            Box::pin(async move { rows.receipt(&id, &receipt_row(&report, at)).await })
        })
        .await
    }

    async fn awaiting_receipts(
        &self,
        channel: ChannelKind,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let which = Which::Awaiting {
            channel,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        self.read(move |rows| Box::pin(async move { rows.notifications(which).await }))
            .await
    }

    async fn notification_by_ref(
        &self,
        channel: ChannelKind,
        reference: &str,
    ) -> Result<Option<Notification>> {
        let reference = reference.to_string();
        self.read(move |rows| {
            Box::pin(async move {
                let which = Which::ByRef {
                    channel,
                    reference: &reference,
                };
                Ok(rows.notifications(which).await?.pop())
            })
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> KeyStore for Db<B> {
    async fn record_key_request(
        &self,
        request: &KeyRequest,
        now: DateTime<Utc>,
        rule: AdmitRule,
    ) -> Result<std::result::Result<Vec<KeyWrite>, Refused>> {
        let request = request.clone();
        self.write(move |rows| {
            Box::pin(async move {
                let address = request.address.as_str();
                rows.lock_address(address).await?;
                let writes = match &request.change {
                    Some(change) => match rule(&address_keys(rows, address).await?, change, now) {
                        Ok(writes) => writes,
                        Err(refused) => return Ok(Err(refused)),
                    },
                    None => Vec::new(),
                };
                if let Some(proof) = &request.proof
                    && !rows.use_proof(proof, to_millis(now)).await?
                {
                    return Ok(Err(Refused::Replayed));
                }
                if let Some(key) = &request.key {
                    rows.upsert_pending_key(key).await?;
                }
                write_keys(rows, address, None, now, &writes).await?;
                rows.insert_links(&request.links).await?;
                for n in &request.notices {
                    rows.insert_notification(n).await?;
                }
                for d in &request.audit {
                    append_audit(rows, d.clone(), now).await?;
                }
                Ok(Ok(writes))
            })
        })
        .await
    }

    async fn key_status(&self, address: &str) -> Result<KeyStatus> {
        let address = address.to_string();
        self.read(move |rows| {
            Box::pin(async move {
                let AddressKeys {
                    active, pending, ..
                } = address_keys(rows, &address).await?;
                let changes = rows
                    .changes(ChangeWhich::Address {
                        address: &address,
                        pending: false,
                    })
                    .await?;
                Ok(KeyStatus {
                    address,
                    active,
                    pending,
                    changes,
                })
            })
        })
        .await
    }

    async fn active_key(&self, address: &str) -> Result<Option<KeyRecord>> {
        let address = address.to_string();
        self.read(move |rows| {
            Box::pin(async move { Ok(address_keys(rows, &address).await?.active) })
        })
        .await
    }

    async fn refresh_key(
        &self,
        address: &str,
        fingerprint: &str,
        armored: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let k = KeyRecord {
            address: address.to_string(),
            fingerprint: fingerprint.to_string(),
            armored: armored.to_string(),
            state: crate::model::KeyState::Active,
            source: String::new(),
            submitted_at: DateTime::<Utc>::default(),
            activated_at: None,
            expires_at,
        };
        self.write(move |rows| Box::pin(async move { rows.refresh_key(&k).await }))
            .await
    }

    async fn key(&self, address: &str, fingerprint: &str) -> Result<Option<KeyRecord>> {
        let (address, fingerprint) = (address.to_string(), fingerprint.to_string());
        self.read(move |rows| Box::pin(async move { rows.key(&address, &fingerprint).await }))
            .await
    }

    async fn follow_key_link(
        &self,
        hash: &str,
        now: DateTime<Utc>,
        rule: LinkRule,
    ) -> Result<Confirmed> {
        let hash = hash.to_string();
        self.write(move |rows| {
            Box::pin(async move {
                let link = rows.link(&hash).await?;
                let keys = match &link {
                    Some(l) => {
                        rows.lock_address(&l.address).await?;
                        address_keys(rows, &l.address).await?
                    }
                    None => AddressKeys::default(),
                };
                let (writes, outcome) = rule(link.as_ref(), &keys, now);
                if let Some(l) = &link {
                    write_keys(rows, &l.address, Some(&hash), now, &writes).await?;
                }
                Ok(outcome)
            })
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> ChangeStore for Db<B> {
    async fn change_step(
        &self,
        target: ChangeTarget,
        now: DateTime<Utc>,
        rule: Arc<dyn ChangeRule>,
    ) -> Result<ChangeAnswer> {
        self.write(move |rows| {
            Box::pin(async move {
                let ctx = change_context(rows, &target).await?;
                let (writes, answer) = rule.decide(&ctx, now);
                write_changes(rows, &writes, now).await?;
                Ok(answer)
            })
        })
        .await
    }

    async fn changes(&self, filter: ChangeFilter) -> Result<Vec<Change>> {
        self.read(move |rows| {
            Box::pin(async move {
                let mut out = match &filter {
                    ChangeFilter::Address(address) => {
                        rows.changes(ChangeWhich::Address {
                            address,
                            pending: false,
                        })
                        .await?
                    }
                    ChangeFilter::Account(account) | ChangeFilter::PendingOfAccount(account) => {
                        let pending = matches!(filter, ChangeFilter::PendingOfAccount(_));
                        let mut out = rows
                            .changes(ChangeWhich::Account { account, pending })
                            .await?;
                        // The key changes of the addresses its contacts use.
                        let mut addresses: Vec<String> = rows
                            .destinations(account)
                            .await?
                            .iter()
                            .filter_map(|d| match &d.uri {
                                crate::model::DestinationUri::Mailto(a) => {
                                    Some(a.as_str().to_string())
                                }
                                _ => None,
                            })
                            .collect();
                        addresses.dedup();
                        for address in &addresses {
                            out.extend(
                                rows.changes(ChangeWhich::Address { address, pending })
                                    .await?,
                            );
                        }
                        out
                    }
                };
                out.sort_by(|a, b| (b.requested_at, &b.id).cmp(&(a.requested_at, &a.id)));
                out.dedup_by(|a, b| a.id == b.id);
                Ok(out)
            })
        })
        .await
    }

    async fn change(&self, id: &str) -> Result<Option<Change>> {
        let id = id.to_string();
        self.read(move |rows| {
            Box::pin(async move { Ok(rows.changes(ChangeWhich::Peek(&id)).await?.pop()) })
        })
        .await
    }

    async fn due_changes(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<String>> {
        let which = ChangeWhich::Due {
            now: to_millis(now),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        self.read(move |rows| {
            Box::pin(async move {
                Ok(rows
                    .changes(which)
                    .await?
                    .into_iter()
                    .map(|c| c.id)
                    .collect())
            })
        })
        .await
    }

    async fn add_veto_link(&self, hash: &str, link: &VetoLink) -> Result<bool> {
        let (hash, link) = (hash.to_string(), link.clone());
        self.write(move |rows| {
            Box::pin(async move {
                let pending = rows
                    .changes(ChangeWhich::Peek(&link.change))
                    .await?
                    .pop()
                    .is_some_and(|c| c.state == crate::model::ChangeState::Pending);
                if pending {
                    rows.insert_veto_link(&hash, &link).await?;
                }
                Ok(pending)
            })
        })
        .await
    }

    async fn incidents(
        &self,
        open_only: bool,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Incident>> {
        let account = account.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |rows| {
            Box::pin(async move {
                rows.incidents(IncidentWhich::List {
                    open_only,
                    account: account.as_deref(),
                    limit,
                })
                .await
            })
        })
        .await
    }

    async fn incident(&self, id: &str) -> Result<Option<Incident>> {
        let id = id.to_string();
        self.read(move |rows| {
            Box::pin(async move { Ok(rows.incidents(IncidentWhich::Id(&id)).await?.pop()) })
        })
        .await
    }

    async fn assurances(&self, change: &str) -> Result<Vec<crate::model::Assurance>> {
        let change = change.to_string();
        self.read(move |rows| {
            Box::pin(async move { rows.assurances(AssuranceWhich::Change(&change)).await })
        })
        .await
    }

    async fn assurance_by_link(&self, hash: &str) -> Result<Option<crate::model::Assurance>> {
        let hash = hash.to_string();
        self.read(move |rows| {
            Box::pin(async move { Ok(rows.assurances(AssuranceWhich::Link(&hash)).await?.pop()) })
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> CallStore for Db<B> {
    async fn call_step(
        &self,
        target: crate::model::CallTarget,
        now: DateTime<Utc>,
        rule: Arc<dyn crate::model::CallRule>,
    ) -> Result<crate::model::CallAnswer> {
        use crate::model::CallWrite;
        self.write(move |rows| {
            Box::pin(async move {
                let ctx = call_context(rows, &target).await?;
                let (writes, answer) = rule.decide(&ctx, now);
                for w in &writes {
                    match w {
                        CallWrite::Call(c) => rows.upsert_call(c).await?,
                        CallWrite::Notice(n) => rows.insert_notification(n).await?,
                        CallWrite::Incident(i) => rows.upsert_incident(i).await?,
                        CallWrite::Audit(d) => {
                            append_audit(rows, d.clone(), now).await?;
                        }
                    }
                }
                Ok(answer)
            })
        })
        .await
    }

    async fn call(&self, id: &str) -> Result<Option<crate::model::Call>> {
        let id = id.to_string();
        self.read(move |rows| {
            Box::pin(async move { Ok(rows.calls(CallWhich::Id(&id)).await?.pop()) })
        })
        .await
    }

    async fn open_calls(
        &self,
        account: &str,
        contact: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::model::Call>> {
        let (account, contact) = (account.to_string(), contact.to_string());
        self.read(move |rows| {
            Box::pin(async move {
                rows.calls(CallWhich::Open {
                    account: &account,
                    contact: &contact,
                    now: to_millis(now),
                })
                .await
            })
        })
        .await
    }

    async fn due_calls(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<String>> {
        let which = CallWhich::Due {
            now: to_millis(now),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        self.read(move |rows| {
            Box::pin(
                async move { Ok(rows.calls(which).await?.into_iter().map(|c| c.id).collect()) },
            )
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> AuditStore for Db<B> {
    async fn audit(&self, draft: AuditDraft, at: DateTime<Utc>) -> Result<AuditEntry> {
        self.write(move |rows| Box::pin(async move { append_audit(rows, draft, at).await }))
            .await
    }

    async fn audit_entries(
        &self,
        account: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let account = account.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |rows| {
            Box::pin(async move { rows.audit(account.as_deref(), after, limit).await })
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.read(|rows| Box::pin(async move { rows.checkpoints(false).await }))
            .await
    }

    async fn audit_head(&self) -> Result<(Option<(i64, String)>, Option<Checkpoint>)> {
        self.read(|rows| {
            Box::pin(async move {
                let head = rows.audit_last().await?;
                Ok((head, rows.checkpoints(true).await?.pop()))
            })
        })
        .await
    }

    async fn add_checkpoint(&self, c: &Checkpoint) -> Result<bool> {
        let c = c.clone();
        self.write(move |rows| Box::pin(async move { rows.insert_checkpoint(&c).await }))
            .await
    }
}

#[async_trait]
impl<B: Backend> StaffStore for Db<B> {
    async fn add_staff(&self, s: &Staff) -> Result<bool> {
        let s = s.clone();
        self.write(move |rows| Box::pin(async move { rows.insert_staff(&s).await }))
            .await
    }

    async fn staff(&self, name: &str) -> Result<Option<Staff>> {
        let name = name.to_string();
        self.read(move |rows| Box::pin(async move { Ok(rows.staff(Some(&name)).await?.pop()) }))
            .await
    }

    async fn list_staff(&self) -> Result<Vec<Staff>> {
        self.read(|rows| Box::pin(async move { rows.staff(None).await }))
            .await
    }

    async fn disable_staff(&self, name: &str, at: DateTime<Utc>) -> Result<bool> {
        let name = name.to_string();
        self.write(move |rows| {
            Box::pin(async move { rows.disable_staff(&name, to_millis(at)).await })
        })
        .await
    }

    async fn staff_login(
        &self,
        name: &str,
    ) -> Result<(Option<Staff>, Option<crate::model::StaffLogin>)> {
        let name = name.to_string();
        self.read(move |rows| {
            Box::pin(async move {
                let staff = rows.staff(Some(&name)).await?.pop();
                let login = match &staff {
                    Some(_) => rows.staff_login(&name).await?,
                    None => None,
                };
                Ok((staff, login))
            })
        })
        .await
    }

    async fn issue_enrolment(
        &self,
        name: &str,
        hash: &str,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let (name, hash) = (name.to_string(), hash.to_string());
        self.write(move |rows| {
            Box::pin(async move {
                match rows.staff(Some(&name)).await?.pop() {
                    Some(s) if s.disabled_at.is_none() => {}
                    _ => return Ok(false),
                }
                rows.put_enrolment(&name, &hash, to_millis(expires_at))
                    .await?;
                rows.revoke_sessions(&name, to_millis(at)).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn enrol_staff(
        &self,
        name: &str,
        hash: &str,
        password_hash: &str,
        totp_secret: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let args = [name, hash, password_hash, totp_secret].map(str::to_string);
        self.write(move |rows| {
            Box::pin(async move {
                let [name, hash, password_hash, totp_secret] = &args;
                rows.enrol_staff(name, hash, password_hash, totp_secret, to_millis(at))
                    .await
            })
        })
        .await
    }

    async fn start_session(
        &self,
        name: &str,
        step: i64,
        secret: &str,
        token: &TokenRecord,
        hash: &str,
    ) -> Result<bool> {
        let (name, secret, token, hash) = (
            name.to_string(),
            secret.to_string(),
            token.clone(),
            hash.to_string(),
        );
        self.write(move |rows| {
            Box::pin(async move {
                if !rows
                    .use_totp_step(&name, step, &secret, to_millis(token.created_at))
                    .await?
                {
                    return Ok(false);
                }
                rows.insert_token(&token, &hash).await?;
                Ok(true)
            })
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> crate::channels::CredentialStore for Db<B> {
    async fn credential(
        &self,
        name: &str,
    ) -> std::result::Result<
        Option<crate::channels::StoredCredential>,
        crate::channels::CredentialStoreError,
    > {
        let name = name.to_string();
        self.read(move |rows| Box::pin(async move { rows.credential(&name).await }))
            .await
            .map_err(|e| crate::channels::CredentialStoreError(e.to_string()))
    }

    async fn seed_credential(
        &self,
        name: &str,
        sealed: &str,
        seed: &str,
        at: DateTime<Utc>,
    ) -> std::result::Result<bool, crate::channels::CredentialStoreError> {
        let (name, sealed, seed) = (name.to_string(), sealed.to_string(), seed.to_string());
        self.write(move |rows| {
            Box::pin(async move {
                rows.insert_credential(&name, &sealed, &seed, to_millis(at))
                    .await
            })
        })
        .await
        .map_err(|e| crate::channels::CredentialStoreError(e.to_string()))
    }

    async fn swap_credential(
        &self,
        name: &str,
        expected: i64,
        sealed: &str,
        seed: &str,
        at: DateTime<Utc>,
    ) -> std::result::Result<bool, crate::channels::CredentialStoreError> {
        let (name, sealed, seed) = (name.to_string(), sealed.to_string(), seed.to_string());
        self.write(move |rows| {
            Box::pin(async move {
                rows.swap_credential(&name, expected, &sealed, &seed, to_millis(at))
                    .await
            })
        })
        .await
        .map_err(|e| crate::channels::CredentialStoreError(e.to_string()))
    }
}

#[async_trait]
impl<B: Backend> LimitStore for Db<B> {
    async fn throttle(
        &self,
        bucket: &str,
        key: &str,
        cap: crate::model::Cap,
        now: DateTime<Utc>,
    ) -> Result<crate::model::throttle::Counted> {
        use crate::model::throttle::{Counted, count};
        let (bucket, key) = (bucket.to_string(), key.to_string());
        self.write(move |rows| {
            Box::pin(async move {
                let counted = count(rows.window(&bucket, &key).await?, cap, now);
                if let Counted::Allowed(w) = counted {
                    rows.put_window(&bucket, &key, w).await?;
                }
                Ok(counted)
            })
        })
        .await
    }

    async fn throttle_peek(
        &self,
        bucket: &str,
        key: &str,
        cap: crate::model::Cap,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), DateTime<Utc>>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        self.read(move |rows| {
            Box::pin(async move {
                let stored = rows.window(&bucket, &key).await?;
                Ok(crate::model::throttle::peek(stored, cap, now))
            })
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> Store for Db<B> {
    fn write_times(&self) -> WriteTimes {
        self.times.clone()
    }

    async fn migrate(&self) -> Result<()> {
        self.write(|rows| {
            Box::pin(async move {
                let have = rows.schema_version().await?;
                if have > B::LATEST {
                    return Err(StoreError::SchemaAhead {
                        have,
                        latest: B::LATEST,
                    });
                }
                for (version, sql) in B::MIGRATIONS {
                    if *version > have {
                        rows.migrate_to(*version, sql, to_millis(Utc::now()))
                            .await?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    async fn inspect(&self) -> Result<super::StoreInfo> {
        let (schema, server_time) = self
            .write(|rows| {
                Box::pin(
                    async move { Ok((rows.schema_version().await?, rows.server_time().await?)) },
                )
            })
            .await?;
        Ok(super::StoreInfo {
            schema,
            latest: B::LATEST,
            server_time: server_time.and_then(DateTime::from_timestamp_millis),
        })
    }

    async fn clear_secrets(&self) -> Result<Vec<super::ClearSecret>> {
        self.read(|rows| Box::pin(async move { rows.clear_secrets().await }))
            .await
    }

    async fn replace_secret(
        &self,
        place: super::SecretPlace,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool> {
        let (id, old, new) = (id.to_string(), old.to_string(), new.to_string());
        self.write(move |rows| {
            Box::pin(async move { rows.replace_secret(place, &id, &old, &new).await })
        })
        .await
    }
}

fn put_outcome(existed: bool) -> PutOutcome {
    if existed {
        PutOutcome::Updated
    } else {
        PutOutcome::Created
    }
}

/// A destination's health after a delivery: a success clears the count
/// of refusals in a row, a refusal adds one, and the refusal that reaches
/// `threshold` marks it unhealthy (`true`: this one did).
pub fn count_refusal(
    h: HealthRow,
    refused: bool,
    threshold: u32,
    now: DateTime<Utc>,
) -> (HealthRow, bool) {
    if !refused {
        return (HealthRow { failures: 0, ..h }, false);
    }
    let failures = h.failures.saturating_add(1);
    let marks = h.unhealthy_since.is_none() && threshold > 0 && failures >= threshold;
    (
        HealthRow {
            failures,
            unhealthy_since: if marks { Some(now) } else { h.unhealthy_since },
        },
        marks,
    )
}

/// A provider's later word on a sent notice: an undelivered one fails
/// (reason `undelivered`); any other stays sent, the word kept.
pub fn receipt_row(report: &Report, at: DateTime<Utc>) -> ReceiptRow {
    let undelivered = report.status == crate::model::ReceiptStatus::Undelivered;
    ReceiptRow {
        status: report.status.as_str(),
        at: to_millis(at),
        state: if undelivered {
            State::Failed
        } else {
            State::Sent
        },
        reason: undelivered.then_some(Reason::Undelivered.as_str()),
        detail: receipt_detail(report),
    }
}

/// A destination's signing secrets after giving it `secret`: the one it
/// replaces stays beside it until `until` (none: not at all).
pub fn rotate(now: SecretsRow, secret: String, until: Option<DateTime<Utc>>) -> SecretsRow {
    SecretsRow {
        previous: until.and(now.secret),
        previous_until: until.map(to_millis),
        secret: Some(secret),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::minutes(min)
    }

    #[test]
    fn outcomes_are_cut_into_runs_of_distinct_notices() {
        // (case, ids, the runs as (start, end))
        type Case = (
            &'static str,
            &'static [&'static str],
            &'static [(usize, usize)],
        );
        let cases: [Case; 6] = [
            ("none", &[], &[]),
            ("one", &["a"], &[(0, 1)]),
            ("all distinct", &["a", "b", "c"], &[(0, 3)]),
            ("one twice in a row", &["a", "a"], &[(0, 1), (1, 2)]),
            ("again later", &["a", "b", "a", "c"], &[(0, 2), (2, 4)]),
            (
                "a run restarts at the repeat",
                &["a", "b", "b", "a", "c", "a"],
                &[(0, 2), (2, 5), (5, 6)],
            ),
        ];
        for (case, ids, want) in cases {
            let runs: Vec<(usize, usize)> = distinct_runs(ids, |id| id)
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect();
            assert_eq!(runs, want, "{case}");
        }
    }

    #[test]
    fn refusals_in_a_row_and_what_clears_them() {
        let healthy = HealthRow {
            failures: 0,
            unhealthy_since: None,
        };
        let h = |failures, since: Option<i64>| HealthRow {
            failures,
            unhealthy_since: since.map(t),
        };
        // (case, row, refused, threshold, next, marked now)
        let cases = [
            ("a refusal counts", healthy, true, 3, h(1, None), false),
            ("the third marks", h(2, None), true, 3, h(3, Some(0)), true),
            (
                "marked once only",
                h(3, Some(-5)),
                true,
                3,
                h(4, Some(-5)),
                false,
            ),
            (
                "threshold 0: never",
                h(9, None),
                true,
                0,
                h(10, None),
                false,
            ),
            ("a success clears", h(2, None), false, 3, healthy, false),
            (
                "a success keeps the mark",
                h(3, Some(-5)),
                false,
                3,
                h(0, Some(-5)),
                false,
            ),
        ];
        for (case, row, refused, threshold, next, marked) in cases {
            assert_eq!(
                count_refusal(row, refused, threshold, t(0)),
                (next, marked),
                "{case}"
            );
        }
    }

    #[test]
    fn a_report_fails_a_notice_only_when_undelivered() {
        use crate::model::ReceiptStatus::*;
        for (status, state, reason) in [
            (Delivered, State::Sent, None),
            (Acknowledged, State::Sent, None),
            (Unacknowledged, State::Sent, None),
            (Undelivered, State::Failed, Some("undelivered")),
        ] {
            let r = receipt_row(
                &Report {
                    status,
                    detail: Some("x".into()),
                },
                t(0),
            );
            assert_eq!((r.state, r.reason), (state, reason), "{status:?}");
        }
    }

    #[test]
    fn a_rotation_keeps_the_old_secret_only_for_the_overlap() {
        let before = SecretsRow {
            secret: Some("old".into()),
            previous: Some("older".into()),
            previous_until: Some(1),
        };
        let with = rotate(before.clone(), "new".into(), Some(t(60)));
        assert_eq!(
            (
                with.secret.as_deref(),
                with.previous.as_deref(),
                with.previous_until
            ),
            (Some("new"), Some("old"), Some(to_millis(t(60))))
        );
        let without = rotate(before, "new".into(), None);
        assert_eq!((without.previous, without.previous_until), (None, None));
    }
}
