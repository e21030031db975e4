//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so an answered write survives `kill -9` and power loss alike.
//!
//! All writes go through one writer thread that commits whatever has queued
//! up in a single transaction (group commit): under load, many requests share
//! one fsync, which is what makes durable ingest fast. Each request runs in
//! its own savepoint, so one failing request never undoes another. Reads use
//! a small pool of separate connections.

use super::codec::*;
use super::*;
use crate::model::{from_millis, to_millis};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::mpsc;

type Finisher = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Finisher + Send>;

/// Most jobs committed together.
const MAX_GROUP: usize = 1024;
const READERS: usize = 4;

pub struct SqliteStore {
    writer: Mutex<mpsc::Sender<Job>>,
    readers: Mutex<Vec<Connection>>,
    path: Option<String>,
}

fn open_conn(path: Option<&str>) -> Result<Connection> {
    let conn = match path {
        Some(p) => Connection::open_with_flags(
            p,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?,
        None => Connection::open_in_memory()?,
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA secure_delete = FAST;
         PRAGMA journal_size_limit = 0;
         PRAGMA cache_size = -32000;",
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; `:memory:` gives a
    /// throw-away store for `kci simulate` and tests.
    pub fn open(path: &str) -> Result<Self> {
        let path = (path != ":memory:" && !path.is_empty()).then(|| path.to_string());
        if let Some(p) = &path
            && let Some(dir) = std::path::Path::new(p)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = open_conn(path.as_deref())?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kci-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer: {e}")))?;
        Ok(Self {
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
            path,
        })
    }

    /// Runs `f` on the writer connection inside the current group's
    /// transaction; resolves once that transaction is durably committed.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, "job", f);
            Box::new(move |commit| {
                let out = match (result, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(StoreError::Unavailable(format!("commit failed: {e}"))),
                };
                let _ = tx.send(out);
            })
        });
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?
    }

    /// Runs `f` on a reader connection (on the writer for in-memory stores,
    /// which cannot be shared between connections).
    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let Some(path) = self.path.clone() else {
            return self.write(f).await;
        };
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match pooled {
                Some(c) => c,
                None => open_conn(Some(&path))?,
            };
            let r = f(&conn);
            Ok::<_, StoreError>((conn, r))
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("reader task: {e}")))??;
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        result
    }
}

fn in_savepoint<R>(
    conn: &Connection,
    name: &str,
    f: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
    conn.execute_batch(&format!("SAVEPOINT {name}"))?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch(&format!("RELEASE {name}"))?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"));
            Err(e)
        }
    }
}

/// How long nothing must have changed before the writer folds the
/// write-ahead log into the database and truncates it.
const QUIET: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the write-ahead log into the database and truncates it, if no
/// reader is in the way right now; whether it did.
fn truncate_log(conn: &Connection) -> bool {
    let _ = conn.busy_timeout(std::time::Duration::from_millis(50));
    let done = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok_and(|busy| busy == 0);
    let _ = conn.busy_timeout(std::time::Duration::from_secs(10));
    done
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>) {
    // Rows erased in place (a notice's one-time secret, once it went out)
    // leave no copy in the database file (`secure_delete`), but their old
    // versions stay in the log's frames until the log is restarted. Under
    // load the log restarts often and is truncated each time
    // (`journal_size_limit`); once things are quiet, it is truncated here.
    let (mut seen, mut changed_at, mut dirty) =
        (conn.total_changes(), std::time::Instant::now(), false);
    loop {
        let first = match rx.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            commit_group(&conn, first, &rx);
        }
        let total = conn.total_changes();
        if total != seen {
            (seen, changed_at, dirty) = (total, std::time::Instant::now(), true);
        }
        if dirty && changed_at.elapsed() >= QUIET && truncate_log(&conn) {
            dirty = false;
        }
    }
}

/// Runs `first` and whatever else has queued (up to [`MAX_GROUP`]) in one
/// transaction, each in its savepoint, and tells each how it ended.
fn commit_group(conn: &Connection, first: Job, rx: &mpsc::Receiver<Job>) {
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    let began = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    let finishers: Vec<Finisher> = group.into_iter().map(|job| job(conn)).collect();
    let commit = if began {
        conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        })
    } else {
        Ok(()) // each savepoint committed on its own
    };
    for finish in finishers {
        finish(commit.clone());
    }
}

const NOTIFICATION_COLUMNS: &str = "id, event, account, contact, destination, uri, channel, type, key, priority, \
     state, reason, detail, due_at, expires_at, decided_at, sent_at, attempts, timezone, message, digest, paired_from, \
     provider_ref, receipt, segments, secret";

fn notification_from_row(row: &Row<'_>) -> Result<Notification> {
    Ok(Notification {
        id: row.get(0)?,
        event: row.get(1)?,
        account: row.get(2)?,
        contact: row.get(3)?,
        destination: row.get(4)?,
        uri: row.get(5)?,
        channel: channel_from_text(&row.get::<_, String>(6)?)?,
        type_name: row.get(7)?,
        key: row.get(8)?,
        priority: Priority::from_rank(row.get(9)?),
        state: state_from_text(&row.get::<_, String>(10)?)?,
        reason: reason_from_text(row.get(11)?)?,
        detail: row.get(12)?,
        due_at: from_millis(row.get(13)?),
        expires_at: row.get::<_, Option<i64>>(14)?.map(from_millis),
        decided_at: from_millis(row.get(15)?),
        sent_at: row.get::<_, Option<i64>>(16)?.map(from_millis),
        attempts: row.get::<_, i64>(17)?.try_into().unwrap_or(0),
        timezone: row.get(18)?,
        message: message_from_json(row.get(19)?)?,
        digest: row.get(20)?,
        paired_from: row.get::<_, Option<i64>>(21)?.map(from_millis),
        provider_ref: row.get(22)?,
        receipt: receipt_from_text(row.get(23)?)?,
        segments: row
            .get::<_, Option<i64>>(24)?
            .and_then(|s| u32::try_from(s).ok()),
        secret: row
            .get::<_, Option<String>>(25)?
            .map(crate::model::Secret::new),
    })
}

fn insert_notification(conn: &Connection, n: &Notification) -> Result<()> {
    let message = n
        .message
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_default());
    conn.prepare_cached(
        "INSERT INTO notifications (id, event, account, contact, destination, uri, channel, type, key, priority, \
         state, reason, detail, due_at, expires_at, decided_at, sent_at, attempts, timezone, message, digest, \
         paired_from, secret) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
    )?
    .execute(params![
        n.id,
        n.event,
        n.account,
        n.contact,
        n.destination,
        n.uri,
        n.channel.as_str(),
        n.type_name,
        n.key,
        n.priority.rank(),
        n.state.as_str(),
        n.reason.map(|r| r.as_str()),
        n.detail,
        to_millis(n.due_at),
        n.expires_at.map(to_millis),
        to_millis(n.decided_at),
        n.sent_at.map(to_millis),
        i64::from(n.attempts),
        n.timezone,
        message,
        n.digest,
        n.paired_from.map(to_millis),
        n.secret.as_ref().map(|s| s.expose()),
    ])?;
    let d = Decided {
        notification: n.id.clone(),
        at: n.decided_at,
        state: n.state,
        reason: n.reason,
        detail: n.detail.clone(),
        due_at: n.due_at,
    };
    record(conn, n.event.as_deref(), &d)
}

fn key_from_row(r: &Row<'_>) -> Result<crate::model::KeyRecord> {
    Ok(crate::model::KeyRecord {
        address: r.get(0)?,
        fingerprint: r.get(1)?,
        armored: r.get(2)?,
        state: key_state(&r.get::<_, String>(3)?)?,
        source: r.get(4)?,
        submitted_at: from_millis(r.get(5)?),
        activated_at: r.get::<_, Option<i64>>(6)?.map(from_millis),
        expires_at: r.get::<_, Option<i64>>(7)?.map(from_millis),
    })
}

fn change_from_row(r: &Row<'_>) -> Result<crate::model::KeyChange> {
    Ok(crate::model::KeyChange {
        id: r.get(0)?,
        address: r.get(1)?,
        kind: change_kind(&r.get::<_, String>(2)?)?,
        fingerprint: r.get(3)?,
        state: change_state(&r.get::<_, String>(4)?)?,
        requested_at: from_millis(r.get(5)?),
        not_before: from_millis(r.get(6)?),
        proven_current: r.get(7)?,
        proven_new: r.get(8)?,
    })
}

fn insert_key_tokens(conn: &Connection, tokens: &[crate::model::KeyToken]) -> Result<()> {
    for t in tokens {
        conn.prepare_cached(
            "INSERT INTO key_tokens (hash, address, fingerprint, purpose, change, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![t.hash, t.address, t.fingerprint, t.purpose.as_str(), t.change, to_millis(t.expires_at)])?;
    }
    Ok(())
}

/// What the key rules see of `address`: its active and pending keys and
/// its pending changes.
fn address_keys(conn: &Connection, address: &str) -> Result<crate::model::AddressKeys> {
    let mut keys = crate::model::AddressKeys::default();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM keys WHERE address = ?1 AND state IN ('active', 'pending') ORDER BY submitted_at"
    ))?;
    let mut rows = stmt.query([address])?;
    while let Some(r) = rows.next()? {
        let k = key_from_row(r)?;
        if k.state == crate::model::KeyState::Active {
            keys.active = Some(k);
        } else {
            keys.pending.push(k);
        }
    }
    drop(rows);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHANGE_COLUMNS} FROM key_changes WHERE address = ?1 AND state = 'pending' ORDER BY requested_at, id"
    ))?;
    let mut rows = stmt.query([address])?;
    while let Some(r) = rows.next()? {
        keys.changes.push(change_from_row(r)?);
    }
    Ok(keys)
}

/// Makes the writes the key rules returned for `address`; `link` is the
/// hash of the link being followed, if any.
fn write_keys(
    conn: &Connection,
    address: &str,
    link: Option<&str>,
    now: DateTime<Utc>,
    writes: &[crate::model::KeyWrite],
) -> Result<()> {
    use crate::model::KeyWrite;
    for w in writes {
        match w {
            KeyWrite::UseLink => {
                conn.prepare_cached("UPDATE key_tokens SET used_at = ?2 WHERE hash = ?1")?
                    .execute(params![link, to_millis(now)])?;
            }
            KeyWrite::Retire { fingerprint, state } => {
                conn.prepare_cached(
                    "UPDATE keys SET state = ?3 WHERE address = ?1 AND fingerprint = ?2",
                )?
                .execute(params![address, fingerprint, state.as_str()])?;
            }
            KeyWrite::Activate { fingerprint, at } => {
                conn.prepare_cached(
                    "UPDATE keys SET state = 'active', activated_at = ?3 WHERE address = ?1 AND fingerprint = ?2",
                )?
                .execute(params![address, fingerprint, to_millis(*at)])?;
            }
            KeyWrite::Change(c) => {
                conn.prepare_cached(
                    "INSERT INTO key_changes (id, address, kind, fingerprint, state, requested_at, not_before, proven_current, proven_new) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, proven_current = excluded.proven_current, \
                     proven_new = excluded.proven_new",
                )?
                .execute(params![
                    c.id,
                    c.address,
                    c.kind.as_str(),
                    c.fingerprint,
                    c.state.as_str(),
                    to_millis(c.requested_at),
                    to_millis(c.not_before),
                    c.proven_current,
                    c.proven_new
                ])?;
            }
        }
    }
    Ok(())
}

/// A destination's verification code row; `None` if there is no such
/// destination under that account and contact.
fn code_row(conn: &Connection, id: &str, account: &str, contact: &str) -> Result<Option<CodeRow>> {
    let row = conn
        .prepare_cached(
            "SELECT verified AND unhealthy_since IS NULL, code_hash, code_expires_at, code_attempts, codes_sent, \
             code_sent_at, wrong_codes, code_window_start FROM destinations WHERE id = ?1 AND account = ?2 AND contact = ?3",
        )?
        .query_row([id, account, contact], |r| {
            Ok(CodeRow {
                usable: r.get(0)?,
                hash: r.get(1)?,
                expires_at: r.get::<_, Option<i64>>(2)?.map(from_millis),
                attempts: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                codes_sent: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
                sent_at: r.get::<_, Option<i64>>(5)?.map(from_millis),
                wrong: u32::try_from(r.get::<_, i64>(6)?).unwrap_or(u32::MAX),
                window_start: r.get::<_, Option<i64>>(7)?.map(from_millis),
            })
        })
        .optional()?;
    Ok(row)
}

/// Stores a destination's code row; a row that became usable also makes
/// the destination verified and healthy again.
fn write_code_row(conn: &Connection, id: &str, row: &CodeRow) -> Result<()> {
    conn.prepare_cached(
        "UPDATE destinations SET code_hash = ?2, code_expires_at = ?3, code_attempts = ?4, codes_sent = ?5, \
         code_sent_at = ?6, wrong_codes = ?7, code_window_start = ?8, \
         verified = verified OR ?9, unhealthy_since = CASE WHEN ?9 THEN NULL ELSE unhealthy_since END, \
         failures = CASE WHEN ?9 THEN 0 ELSE failures END WHERE id = ?1",
    )?
    .execute(params![
        id,
        row.hash,
        row.expires_at.map(to_millis),
        i64::from(row.attempts),
        i64::from(row.codes_sent),
        row.sent_at.map(to_millis),
        i64::from(row.wrong),
        row.window_start.map(to_millis),
        row.usable
    ])?;
    Ok(())
}

/// The stored window of `key` in `bucket`.
fn throttle_window(
    conn: &Connection,
    bucket: &str,
    key: &str,
) -> Result<Option<crate::model::throttle::Window>> {
    Ok(conn
        .prepare_cached("SELECT window_start, count FROM throttle WHERE bucket = ?1 AND key = ?2")?
        .query_row([bucket, key], |r| {
            Ok(crate::model::throttle::Window {
                start: from_millis(r.get(0)?),
                count: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
            })
        })
        .optional()?)
}

/// Appends one decision to the record.
fn record(conn: &Connection, event: Option<&str>, d: &Decided) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        d.notification,
        event,
        to_millis(d.at),
        d.state.as_str(),
        d.reason.map(|r| r.as_str()),
        d.detail,
        to_millis(d.due_at),
    ])?;
    Ok(())
}

/// Cancels the pending notifications whose `column` (id, event or
/// destination) is `value` — with the notices folded into a digest that is
/// still pending — recording why; returns how many. By event, kci's own
/// notices (digests, flap summaries) stay: they carry other events too.
fn cancel_pending(
    conn: &Connection,
    column: &str,
    value: &str,
    reason: Reason,
    detail: Option<&str>,
    at: DateTime<Utc>,
) -> Result<usize> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE notifications SET state = 'cancelled', reason = ?2, detail = ?3, decided_at = ?4, secret = NULL \
         WHERE {} RETURNING id, event, due_at",
        cancellable(column, "?1")
    ))?;
    let mut rows = stmt.query(params![value, reason.as_str(), detail, to_millis(at)])?;
    let mut done = Vec::new();
    while let Some(r) = rows.next()? {
        done.push((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
        ));
    }
    drop(rows);
    for (id, event, due_at) in &done {
        let d = Decided {
            notification: id.clone(),
            at,
            state: State::Cancelled,
            reason: Some(reason),
            detail: detail.map(str::to_string),
            due_at: from_millis(*due_at),
        };
        record(conn, event.as_deref(), &d)?;
    }
    Ok(done.len())
}

/// Pairs each notification with its event (read once per event).
fn with_events(conn: &Connection, notes: Vec<Notification>) -> Result<Vec<Claimed>> {
    let mut events: HashMap<String, Option<Event>> = HashMap::new();
    let mut paranoid: HashMap<String, bool> = HashMap::new();
    let mut keys: HashMap<String, Option<String>> = HashMap::new();
    let mut out = Vec::with_capacity(notes.len());
    for n in notes {
        if !paranoid.contains_key(&n.account) {
            let p = conn
                .prepare_cached("SELECT paranoid FROM accounts WHERE id = ?1")?
                .query_row([&n.account], |r| r.get::<_, bool>(0))
                .optional()?
                .unwrap_or(false);
            paranoid.insert(n.account.clone(), p);
        }
        let is_paranoid = paranoid.get(&n.account).copied().unwrap_or(false);
        let active_key = match mail_address(&n) {
            Some(address) => {
                if !keys.contains_key(&address) {
                    let k = conn
                        .prepare_cached(
                            "SELECT armored FROM keys WHERE address = ?1 AND state = 'active'",
                        )?
                        .query_row([&address], |r| r.get::<_, String>(0))
                        .optional()?;
                    keys.insert(address.clone(), k);
                }
                keys.get(&address).cloned().flatten()
            }
            None => None,
        };
        let event = match &n.event {
            Some(id) => {
                if !events.contains_key(id) {
                    let payload: Option<String> = conn
                        .prepare_cached("SELECT payload FROM events WHERE id = ?1")?
                        .query_row([id], |r| r.get(0))
                        .optional()?;
                    events.insert(
                        id.clone(),
                        payload.map(|p| event_from_json(&p)).transpose()?,
                    );
                }
                events.get(id).cloned().flatten()
            }
            None => None,
        };
        out.push(Claimed {
            notification: n,
            event,
            paranoid: is_paranoid,
            active_key,
        });
    }
    Ok(out)
}

fn account_view(conn: &Connection, id: &str) -> Result<Option<AccountView>> {
    let account = conn
        .prepare_cached("SELECT id, name, timezone, security_level, paranoid, defaults FROM accounts WHERE id = ?1")?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .optional()?;
    let Some((id, name, tz, level, paranoid, defaults)) = account else {
        return Ok(None);
    };
    let account = Account {
        id,
        name,
        timezone: tz_from_text(tz)?,
        security_level: level_from_text(&level)?,
        paranoid,
        defaults: prefs_from_json(&defaults)?,
    };
    let mut contacts = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, timezone, prefs FROM contacts WHERE account = ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([&account.id])?;
    while let Some(r) = rows.next()? {
        contacts.push(ContactView {
            contact: Contact {
                id: r.get(0)?,
                name: r.get(1)?,
                timezone: tz_from_text(r.get(2)?)?,
                prefs: prefs_from_json(&r.get::<_, String>(3)?)?,
            },
            destinations: Vec::new(),
        });
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, contact, uri, prefs, verified, unhealthy_since FROM destinations WHERE account = ?1 ORDER BY contact, id",
    )?;
    let mut rows = stmt.query([&account.id])?;
    while let Some(r) = rows.next()? {
        let dest = Destination {
            id: r.get(0)?,
            contact: r.get(1)?,
            uri: uri_from_text(&r.get::<_, String>(2)?)?,
            prefs: prefs_from_json(&r.get::<_, String>(3)?)?,
            verified: r.get(4)?,
            unhealthy_since: r.get::<_, Option<i64>>(5)?.map(from_millis),
        };
        if let Some(cv) = contacts.iter_mut().find(|c| c.contact.id == dest.contact) {
            cv.destinations.push(dest);
        }
    }
    Ok(Some(AccountView { account, contacts }))
}

/// The notices of `types` for (account, key) that planning looks at: every
/// one still pending, and every notice of the latest event of each type.
fn related_for_key(
    conn: &Connection,
    account: &str,
    key: &str,
    types: &[String],
) -> Result<Vec<RelatedNotice>> {
    let mut pending = conn.prepare_cached(&format!(
        "SELECT n.id, n.event, n.type, n.destination, 'pending', n.due_at, json_extract(e.payload, '$.occurred_at') \
         FROM notifications n JOIN events e ON e.id = n.event \
         WHERE n.account = ?1 AND n.key = ?2 AND n.type = ?3 AND {}",
        waiting("n.")
    ))?;
    let mut latest = conn.prepare_cached(
        "SELECT n.id, n.event, n.type, n.destination, n.state, n.due_at, json_extract(e.payload, '$.occurred_at') \
         FROM notifications n JOIN events e ON e.id = n.event WHERE n.event = \
         (SELECT id FROM events WHERE account = ?1 AND key = ?2 AND type = ?3 \
          ORDER BY received_at DESC, rowid DESC LIMIT 1)",
    )?;
    let mut out: Vec<RelatedNotice> = Vec::new();
    for t in types {
        for stmt in [&mut pending, &mut latest] {
            let mut rows = stmt.query([account, key, t])?;
            while let Some(r) = rows.next()? {
                let id: String = r.get(0)?;
                if out.iter().any(|n| n.id == id) {
                    continue;
                }
                out.push(RelatedNotice {
                    id,
                    event: r.get(1)?,
                    type_name: r.get(2)?,
                    destination: r.get(3)?,
                    state: state_from_text(&r.get::<_, String>(4)?)?,
                    due_at: from_millis(r.get(5)?),
                    occurred_at: occurred(&r.get::<_, String>(6)?)?,
                });
            }
        }
    }
    Ok(out)
}

fn ingest_one(
    conn: &Connection,
    event: &Event,
    planner: &dyn Planner,
    views: &mut HashMap<String, Option<AccountView>>,
) -> Result<IngestOutcome> {
    let seen: Option<i64> = conn
        .prepare_cached("SELECT notifications FROM events WHERE id = ?1")?
        .query_row([&event.id], |r| r.get(0))
        .optional()?;
    if let Some(n) = seen {
        return Ok(IngestOutcome::Duplicate {
            id: event.id.clone(),
            notifications: n.try_into().unwrap_or(0),
        });
    }
    if !views.contains_key(&event.account) {
        views.insert(event.account.clone(), account_view(conn, &event.account)?);
    }
    let Some(view) = views.get(&event.account).and_then(|v| v.as_ref()) else {
        return Ok(IngestOutcome::Rejected(Rejection {
            code: "unknown_account",
            message: format!("account: `{}` is not a known account", event.account),
        }));
    };
    let types = planner.related_types(event);
    let pending = if types.is_empty() {
        Vec::new()
    } else {
        related_for_key(conn, &event.account, &event.key, &types)?
    };
    let recent = match planner.flap_window(event) {
        Some((types, within)) => {
            let since = to_millis(event.received_at - within);
            let mut stmt = conn.prepare_cached(
                "SELECT COUNT(*) FROM events WHERE account = ?1 AND key = ?2 AND type = ?3 AND received_at > ?4",
            )?;
            let mut n = 0usize;
            for t in &types {
                let c: i64 =
                    stmt.query_row(params![event.account, event.key, t, since], |r| r.get(0))?;
                n += usize::try_from(c).unwrap_or(0);
            }
            n
        }
        None => 0,
    };
    let mut loads = Vec::new();
    for (destination, period) in planner.loads_needed(event, view) {
        let recent = match period {
            Some(p) => conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM notifications WHERE destination = ?1 AND due_at > ?2 AND priority < 3 \
                     AND state IN ('pending', 'sending', 'sent') AND event IS NOT NULL AND type NOT LIKE 'kci.%'",
                )?
                .query_row(params![destination, to_millis(event.received_at - p)], |r| r.get::<_, i64>(0))?,
            None => 0,
        };
        let pending_digest: Option<String> = conn
            .prepare_cached(
                "SELECT id FROM notifications WHERE destination = ?1 AND type = 'kci.digest' AND state = 'pending' \
                 ORDER BY due_at LIMIT 1",
            )?
            .query_row([&destination], |r| r.get(0))
            .optional()?;
        loads.push(Load {
            destination,
            recent: usize::try_from(recent).unwrap_or(0),
            pending_digest,
        });
    }
    let seen = Seen {
        related: &pending,
        recent,
        loads: &loads,
    };
    let plan = match planner.plan(event, view, &seen) {
        Ok(p) => p,
        Err(r) => return Ok(IngestOutcome::Rejected(r)),
    };
    let payload = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO events (id, account, type, key, received_at, notifications, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        event.id,
        event.account,
        event.type_name,
        event.key,
        to_millis(event.received_at),
        plan.notifications.len() as i64,
        payload
    ])?;
    for n in &plan.notifications {
        insert_notification(conn, n)?;
    }
    for c in &plan.cancels {
        cancel_pending(
            conn,
            "id",
            &c.id,
            c.reason,
            Some(&c.detail),
            event.received_at,
        )?;
    }
    for (id, from) in &plan.paired {
        conn.prepare_cached(
            "UPDATE notifications SET paired_from = ?2 WHERE id = ?1 AND state = 'pending'",
        )?
        .execute(params![id, to_millis(*from)])?;
    }
    for (id, message) in &plan.updates {
        let text =
            serde_json::to_string(message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        conn.prepare_cached(
            "UPDATE notifications SET message = ?2 WHERE id = ?1 AND state = 'pending'",
        )?
        .execute(params![id, text])?;
    }
    Ok(IngestOutcome::Accepted {
        id: event.id.clone(),
        notifications: plan.notifications.len(),
    })
}

impl SqliteStore {
    /// Claims due notifications (of `channel`, or of all), urgent first.
    async fn claim(
        &self,
        channel: Option<ChannelKind>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        self.write(move |conn| {
            let (now, lease) = (to_millis(now), to_millis(lease_until));
            let mut stmt = conn.prepare_cached(&format!(
                "UPDATE notifications SET state = 'sending', attempts = attempts + 1, lease_until = ?2 \
                 WHERE id IN ( \
                   SELECT id FROM notifications WHERE state = 'pending' AND due_at <= ?1 \
                     AND (?4 IS NULL OR channel = ?4) \
                   UNION ALL \
                   SELECT id FROM notifications WHERE state = 'sending' AND lease_until <= ?1 \
                     AND (?4 IS NULL OR channel = ?4) \
                   LIMIT ?3) \
                 RETURNING {NOTIFICATION_COLUMNS}"
            ))?;
            let mut rows = stmt.query(params![now, lease, limit as i64, channel.map(|c| c.as_str())])?;
            let mut claimed = Vec::new();
            while let Some(r) = rows.next()? {
                claimed.push(notification_from_row(r)?);
            }
            drop(rows);
            let mut out = with_events(conn, claimed)?;
            out.sort_by_key(|c| (std::cmp::Reverse(c.notification.priority), c.notification.due_at));
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        self.write(|conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS kci_schema (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )?;
            let have: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM kci_schema", [], |r| r.get(0))?;
            for (version, sql) in MIGRATIONS {
                if *version > have {
                    conn.execute_batch(sql)?;
                    conn.execute(
                        "INSERT INTO kci_schema (version, applied_at) VALUES (?1, ?2)",
                        params![version, to_millis(Utc::now())],
                    )?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn create_token(&self, token: &TokenRecord, hash: &str) -> Result<()> {
        let (t, hash) = (token.clone(), hash.to_string());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO tokens (id, name, secret_hash, scopes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.id, t.name, hash, scopes_to_text(&t.scopes), to_millis(t.created_at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn find_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let hash = hash.to_string();
        self.read(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT id, name, scopes, created_at FROM tokens WHERE secret_hash = ?1",
                )?
                .query_row([&hash], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()?;
            row.map(|(id, name, scopes, created)| {
                Ok(TokenRecord {
                    id,
                    name,
                    scopes: scopes_from_text(&scopes)?,
                    created_at: from_millis(created),
                })
            })
            .transpose()
        })
        .await
    }

    async fn put_account(&self, a: &Account) -> Result<PutOutcome> {
        let a = a.clone();
        self.write(move |conn| {
            let exists = conn.query_row("SELECT 1 FROM accounts WHERE id = ?1", [&a.id], |_| Ok(())).optional()?.is_some();
            conn.execute(
                "INSERT INTO accounts (id, name, timezone, security_level, paranoid, defaults) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, timezone = excluded.timezone, \
                 security_level = excluded.security_level, paranoid = excluded.paranoid, defaults = excluded.defaults",
                params![
                    a.id,
                    a.name,
                    a.timezone.map(|t| t.to_string()),
                    a.security_level.as_str(),
                    a.paranoid,
                    prefs_to_json(&a.defaults)
                ],
            )?;
            Ok(if exists { PutOutcome::Updated } else { PutOutcome::Created })
        })
        .await
    }

    async fn account_view(&self, id: &str) -> Result<Option<AccountView>> {
        let id = id.to_string();
        self.read(move |conn| account_view(conn, &id)).await
    }

    async fn put_contact(&self, account: &str, c: &Contact) -> Result<PutOutcome> {
        let (account, c) = (account.to_string(), c.clone());
        self.write(move |conn| {
            if conn.query_row("SELECT 1 FROM accounts WHERE id = ?1", [&account], |_| Ok(())).optional()?.is_none() {
                return Ok(PutOutcome::NoParent);
            }
            let exists = conn
                .query_row("SELECT 1 FROM contacts WHERE account = ?1 AND id = ?2", [&account, &c.id], |_| Ok(()))
                .optional()?
                .is_some();
            conn.execute(
                "INSERT INTO contacts (account, id, name, timezone, prefs) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (account, id) DO UPDATE SET name = excluded.name, timezone = excluded.timezone, \
                 prefs = excluded.prefs",
                params![account, c.id, c.name, c.timezone.map(|t| t.to_string()), prefs_to_json(&c.prefs)],
            )?;
            Ok(if exists { PutOutcome::Updated } else { PutOutcome::Created })
        })
        .await
    }

    async fn add_destination(
        &self,
        account: &str,
        d: &Destination,
        code: Option<CodeRow>,
        notice: Option<Notification>,
    ) -> Result<PutOutcome> {
        let (account, d) = (account.to_string(), d.clone());
        self.write(move |conn| {
            let contact = conn
                .query_row("SELECT 1 FROM contacts WHERE account = ?1 AND id = ?2", [&account, &d.contact], |_| Ok(()))
                .optional()?;
            if contact.is_none() {
                return Ok(PutOutcome::NoParent);
            }
            conn.execute(
                "INSERT INTO destinations (id, account, contact, uri, prefs, verified) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![d.id, account, d.contact, d.uri.to_string(), prefs_to_json(&d.prefs), d.verified],
            )?;
            if let Some(code) = &code {
                write_code_row(conn, &d.id, code)?;
            }
            if let Some(n) = &notice {
                insert_notification(conn, n)?;
            }
            Ok(PutOutcome::Created)
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
        rule: crate::model::CheckRule,
    ) -> Result<VerifyOutcome> {
        let (account, contact, id, code_hash) = (
            account.to_string(),
            contact.to_string(),
            id.to_string(),
            code_hash.to_string(),
        );
        self.write(move |conn| {
            let Some(row) = code_row(conn, &id, &account, &contact)? else {
                return Ok(VerifyOutcome::NotFound);
            };
            let (next, outcome) = rule(&row, &code_hash, now);
            if let Some(next) = next {
                write_code_row(conn, &id, &next)?;
            }
            Ok(outcome)
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
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM destinations WHERE id = ?1 AND account = ?2 AND contact = ?3",
                [&id, &account, &contact],
            )?;
            if n > 0 {
                cancel_pending(
                    conn,
                    "destination",
                    &id,
                    Reason::DestinationRemoved,
                    None,
                    now,
                )?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn ingest(
        &self,
        events: Vec<Event>,
        planner: Arc<dyn Planner>,
    ) -> Result<Vec<IngestOutcome>> {
        self.write(move |conn| {
            // No savepoint per event: an event writes only after all its
            // checks passed, and a store error fails the whole request,
            // whose own savepoint then takes every event of it back.
            let mut views = HashMap::new();
            events
                .iter()
                .map(|ev| ingest_one(conn, ev, &*planner, &mut views))
                .collect()
        })
        .await
    }

    async fn event(&self, id: &str) -> Result<Option<(Event, Vec<Notification>)>> {
        let id = id.to_string();
        self.read(move |conn| {
            let payload: Option<String> = conn
                .prepare_cached("SELECT payload FROM events WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?;
            let Some(payload) = payload else { return Ok(None) };
            let event = event_from_json(&payload)?;
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE event = ?1 ORDER BY contact, destination"
            ))?;
            let mut rows = stmt.query([&id])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(notification_from_row(r)?);
            }
            Ok(Some((event, out)))
        })
        .await
    }

    async fn cancel_event(&self, id: &str, now: DateTime<Utc>) -> Result<Option<usize>> {
        let id = id.to_string();
        self.write(move |conn| {
            if conn
                .query_row("SELECT 1 FROM events WHERE id = ?1", [&id], |_| Ok(()))
                .optional()?
                .is_none()
            {
                return Ok(None);
            }
            let n = cancel_pending(
                conn,
                "event",
                &id,
                Reason::EventCancelled,
                Some("DELETE /v1/events"),
                now,
            )?;
            Ok(Some(n))
        })
        .await
    }

    async fn enqueue(&self, n: &Notification) -> Result<()> {
        let n = n.clone();
        self.write(move |conn| insert_notification(conn, &n)).await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        self.claim(None, now, lease_until, limit).await
    }

    async fn claim_due_on(
        &self,
        channel: ChannelKind,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        self.claim(Some(channel), now, lease_until, limit).await
    }

    async fn finish(&self, id: &str, outcome: Finish) -> Result<()> {
        let id = id.to_string();
        self.write(move |conn| {
            let f = finish_row(&outcome);
            let done = conn
                .prepare_cached(
                    "UPDATE notifications SET state = ?2, reason = ?3, detail = ?4, sent_at = COALESCE(?5, sent_at), \
                     due_at = COALESCE(?6, due_at), decided_at = ?7, lease_until = NULL, attempts = attempts + ?8, \
                     provider_ref = COALESCE(?9, provider_ref), receipt = ?10, segments = COALESCE(?11, segments), \
                     secret = CASE WHEN ?2 = 'pending' THEN secret END \
                     WHERE id = ?1 AND state = 'sending' RETURNING event, due_at, destination",
                )?
                .query_row(
                    params![
                        id,
                        f.state.as_str(),
                        f.reason.map(|r| r.as_str()),
                        f.detail,
                        f.sent_at,
                        f.due_at,
                        f.decided_at,
                        f.attempts_delta,
                        f.provider_ref,
                        f.receipt,
                        f.segments
                    ],
                    |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)),
                )
                .optional()?;
            if let Some((event, due_at, destination)) = done {
                if f.state == State::Sent {
                    conn.prepare_cached("UPDATE destinations SET failures = 0 WHERE id = ?1 AND failures > 0")?
                        .execute([&destination])?;
                }
                let d = Decided {
                    notification: id,
                    at: from_millis(f.decided_at),
                    state: f.state,
                    reason: f.reason,
                    detail: f.detail,
                    due_at: from_millis(due_at),
                };
                record(conn, event.as_deref(), &d)?;
            }
            Ok(())
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        self.read(|conn| {
            let t: Option<i64> = conn.query_row(
                "SELECT MIN(t) FROM (SELECT MIN(due_at) AS t FROM notifications WHERE state = 'pending' \
                 UNION ALL SELECT MIN(lease_until) FROM notifications WHERE state = 'sending')",
                [],
                |r| r.get(0),
            )?;
            Ok(t.map(from_millis))
        })
        .await
    }

    async fn requeue_abandoned(&self, now: DateTime<Utc>) -> Result<usize> {
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE notifications SET state = 'pending', reason = 'requeued', lease_until = NULL \
                 WHERE state = 'sending' RETURNING id, event, due_at",
            )?;
            let mut rows = stmt.query([])?;
            let mut done = Vec::new();
            while let Some(r) = rows.next()? {
                done.push((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, i64>(2)?));
            }
            drop(rows);
            for (id, event, due_at) in &done {
                let d = Decided {
                    notification: id.clone(),
                    at: now,
                    state: State::Pending,
                    reason: Some(Reason::Requeued),
                    detail: Some("kci stopped while sending it; it may arrive twice with the same id".into()),
                    due_at: from_millis(*due_at),
                };
                record(conn, event.as_deref(), &d)?;
            }
            Ok(done.len())
        })
        .await
    }

    async fn digest_members(&self, id: &str) -> Result<Vec<Claimed>> {
        let id = id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE digest = ?1 AND state = 'digested' ORDER BY due_at, id"
            ))?;
            let mut rows = stmt.query([&id])?;
            let mut notes = Vec::new();
            while let Some(r) = rows.next()? {
                notes.push(notification_from_row(r)?);
            }
            drop(rows);
            with_events(conn, notes)
        })
        .await
    }

    async fn notifications_in(
        &self,
        state: State,
        before: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE state = ?1 AND decided_at < ?2 \
                 ORDER BY decided_at DESC, id DESC LIMIT ?3"
            ))?;
            let before = before.map(to_millis).unwrap_or(i64::MAX);
            let mut rows = stmt.query(params![state.as_str(), before, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(notification_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn redrive(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let id = id.to_string();
        self.write(move |conn| {
            let done = conn
                .prepare_cached(
                    "UPDATE notifications SET state = 'pending', reason = 'redriven', due_at = ?2, decided_at = ?2, \
                     attempts = 0 WHERE id = ?1 AND state = 'failed' RETURNING event",
                )?
                .query_row(params![id, to_millis(now)], |r| r.get::<_, Option<String>>(0))
                .optional()?;
            let Some(event) = done else { return Ok(false) };
            let d = Decided {
                notification: id,
                at: now,
                state: State::Pending,
                reason: Some(Reason::Redriven),
                detail: Some("POST /v1/deliveries/{id}/retry".into()),
                due_at: now,
            };
            record(conn, event.as_deref(), &d)?;
            Ok(true)
        })
        .await
    }

    async fn record_receipt(
        &self,
        id: &str,
        report: &crate::model::Report,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let (id, report) = (id.to_string(), report.clone());
        self.write(move |conn| {
            let undelivered = report.status == crate::model::ReceiptStatus::Undelivered;
            let (state, reason) = if undelivered { (State::Failed, Some(Reason::Undelivered)) } else { (State::Sent, None) };
            let detail = receipt_detail(&report);
            let done = conn
                .prepare_cached(
                    "UPDATE notifications SET receipt = ?2, receipt_at = ?3, state = ?4, reason = ?5, \
                     detail = ?6, decided_at = CASE WHEN ?4 = 'failed' THEN ?3 ELSE decided_at END \
                     WHERE id = ?1 AND state = 'sent' AND (receipt IS NULL OR receipt = 'awaiting') \
                     RETURNING event, due_at",
                )?
                .query_row(
                    params![id, report.status.as_str(), to_millis(at), state.as_str(), reason.map(|r| r.as_str()), detail],
                    |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?;
            let Some((event, due_at)) = done else { return Ok(false) };
            let d = Decided { notification: id, at, state, reason, detail: Some(detail), due_at: from_millis(due_at) };
            record(conn, event.as_deref(), &d)?;
            Ok(true)
        })
        .await
    }

    async fn notification(&self, id: &str) -> Result<Option<Notification>> {
        let id = id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = ?1"
            ))?;
            let mut rows = stmt.query([&id])?;
            rows.next()?.map(notification_from_row).transpose()
        })
        .await
    }

    async fn awaiting_receipts(
        &self,
        channel: ChannelKind,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE receipt = 'awaiting' AND channel = ?1 \
                 ORDER BY sent_at LIMIT ?2"
            ))?;
            let mut rows = stmt.query(params![channel.as_str(), limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(notification_from_row(r)?);
            }
            Ok(out)
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
        self.write(move |conn| {
            if !failed {
                conn.prepare_cached("UPDATE destinations SET failures = 0 WHERE id = ?1 AND failures > 0")?
                    .execute([&destination])?;
                return Ok(false);
            }
            let marked = conn
                .prepare_cached(
                    "UPDATE destinations SET failures = failures + 1, \
                     unhealthy_since = CASE WHEN unhealthy_since IS NULL AND failures + 1 >= ?2 THEN ?3 ELSE unhealthy_since END \
                     WHERE id = ?1 RETURNING unhealthy_since = ?3",
                )?
                .query_row(params![destination, i64::from(threshold), to_millis(now)], |r| r.get::<_, Option<bool>>(0))
                .optional()?;
            Ok(marked.flatten().unwrap_or(false))
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
        rule: crate::model::IssueRule,
    ) -> Result<RenewOutcome> {
        let (account, contact, id) = (account.to_string(), contact.to_string(), id.to_string());
        self.write(move |conn| {
            let Some(row) = code_row(conn, &id, &account, &contact)? else {
                return Ok(RenewOutcome::NotFound);
            };
            match rule(&row, &code.hash, code.expires_at, now) {
                Ok(next) => {
                    write_code_row(conn, &id, &next)?;
                    insert_notification(conn, &notice)?;
                    Ok(RenewOutcome::Sent)
                }
                Err(refused) => Ok(refused),
            }
        })
        .await
    }

    async fn throttle(
        &self,
        bucket: &str,
        key: &str,
        cap: crate::model::Cap,
        now: DateTime<Utc>,
    ) -> Result<crate::model::throttle::Counted> {
        use crate::model::throttle::{Counted, count};
        let (bucket, key) = (bucket.to_string(), key.to_string());
        self.write(move |conn| {
            let counted = count(throttle_window(conn, &bucket, &key)?, cap, now);
            if let Counted::Allowed(w) = counted {
                conn.prepare_cached(
                    "INSERT INTO throttle (bucket, key, window_start, count) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (bucket, key) DO UPDATE SET window_start = excluded.window_start, count = excluded.count",
                )?
                .execute(params![bucket, key, to_millis(w.start), i64::from(w.count)])?;
            }
            Ok(counted)
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
        self.read(move |conn| {
            Ok(crate::model::throttle::peek(
                throttle_window(conn, &bucket, &key)?,
                cap,
                now,
            ))
        })
        .await
    }

    async fn destination_secrets(&self, id: &str, now: DateTime<Utc>) -> Result<Signing> {
        let id = id.to_string();
        self.read(move |conn| {
            let row = conn
                .prepare_cached("SELECT secret, previous_secret, previous_until FROM destinations WHERE id = ?1")?
                .query_row([&id], |r| {
                    Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<i64>>(2)?))
                })
                .optional()?;
            let (s, p, until) = row.unwrap_or_default();
            Ok(current_secrets(s, p, until, now))
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
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE destinations SET previous_secret = CASE WHEN ?5 IS NULL THEN NULL ELSE secret END, \
                 previous_until = ?5, secret = ?4 WHERE id = ?1 AND account = ?2 AND contact = ?3",
                params![id, account, contact, secret, previous_until.map(to_millis)],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn record_key_request(
        &self,
        request: &crate::model::KeyRequest,
        now: DateTime<Utc>,
        rule: crate::model::AdmitRule,
    ) -> Result<std::result::Result<Vec<crate::model::KeyWrite>, crate::model::Refused>> {
        let request = request.clone();
        self.write(move |conn| {
            let address = request.address.as_str();
            let writes = match &request.change {
                Some(change) => match rule(&address_keys(conn, address)?, change, now) {
                    Ok(writes) => writes,
                    Err(refused) => return Ok(Err(refused)),
                },
                None => Vec::new(),
            };
            if let Some(proof) = &request.proof {
                conn.prepare_cached("DELETE FROM used_proofs WHERE keep_until < ?1")?
                    .execute([to_millis(now)])?;
                let fresh = conn
                    .prepare_cached("INSERT INTO used_proofs (hash, keep_until) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
                    .execute(params![proof.hash, to_millis(proof.keep_until)])?;
                if fresh == 0 {
                    return Ok(Err(crate::model::Refused::Replayed));
                }
            }
            if let Some(key) = &request.key {
                conn.execute(
                    "INSERT INTO keys (address, fingerprint, armored, state, source, submitted_at, expires_at) \
                     VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6) \
                     ON CONFLICT (address, fingerprint) DO UPDATE SET armored = excluded.armored, \
                     submitted_at = excluded.submitted_at, expires_at = excluded.expires_at \
                     WHERE keys.state = 'pending'",
                    params![key.address, key.fingerprint, key.armored, key.source, to_millis(key.submitted_at), key.expires_at.map(to_millis)],
                )?;
            }
            write_keys(conn, address, None, now, &writes)?;
            insert_key_tokens(conn, &request.links)?;
            for n in &request.notices {
                insert_notification(conn, n)?;
            }
            Ok(Ok(writes))
        })
        .await
    }

    async fn key_status(&self, address: &str) -> Result<crate::model::KeyStatus> {
        let address = address.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE address = ?1 AND state IN ('active', 'pending') ORDER BY submitted_at"
            ))?;
            let mut rows = stmt.query([&address])?;
            let (mut active, mut pending) = (None, Vec::new());
            while let Some(r) = rows.next()? {
                let k = key_from_row(r)?;
                if k.state == crate::model::KeyState::Active {
                    active = Some(k);
                } else {
                    pending.push(k);
                }
            }
            drop(rows);
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CHANGE_COLUMNS} FROM key_changes WHERE address = ?1 ORDER BY requested_at, id"
            ))?;
            let mut rows = stmt.query([&address])?;
            let mut changes = Vec::new();
            while let Some(r) = rows.next()? {
                changes.push(change_from_row(r)?);
            }
            Ok(crate::model::KeyStatus { address, active, pending, changes })
        })
        .await
    }

    async fn contacts_with_uri(&self, uri: &str) -> Result<Vec<(String, String)>> {
        let uri = uri.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT account, contact FROM destinations WHERE uri = ?1 ORDER BY account, contact",
            )?;
            let mut rows = stmt.query([&uri])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((r.get(0)?, r.get(1)?));
            }
            Ok(out)
        })
        .await
    }

    async fn active_key(&self, address: &str) -> Result<Option<crate::model::KeyRecord>> {
        let address = address.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE address = ?1 AND state = 'active'"
            ))?;
            let mut rows = stmt.query([&address])?;
            rows.next()?.map(key_from_row).transpose()
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
        let (address, fingerprint, armored) = (
            address.to_string(),
            fingerprint.to_string(),
            armored.to_string(),
        );
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE keys SET armored = ?3, expires_at = ?4 WHERE address = ?1 AND fingerprint = ?2 AND state = 'active'",
                params![address, fingerprint, armored, expires_at.map(to_millis)],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn key(
        &self,
        address: &str,
        fingerprint: &str,
    ) -> Result<Option<crate::model::KeyRecord>> {
        let (address, fingerprint) = (address.to_string(), fingerprint.to_string());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE address = ?1 AND fingerprint = ?2"
            ))?;
            let mut rows = stmt.query([&address, &fingerprint])?;
            rows.next()?.map(key_from_row).transpose()
        })
        .await
    }

    async fn follow_key_link(
        &self,
        hash: &str,
        now: DateTime<Utc>,
        rule: crate::model::LinkRule,
    ) -> Result<crate::model::Confirmed> {
        let hash = hash.to_string();
        self.write(move |conn| {
            let link = conn
                .prepare_cached(
                    "SELECT address, fingerprint, purpose, change, expires_at, used_at IS NOT NULL FROM key_tokens WHERE hash = ?1",
                )?
                .query_row([&hash], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, bool>(5)?,
                    ))
                })
                .optional()?
                .map(|(address, fingerprint, purpose, change, expires_at, used)| {
                    Ok::<_, StoreError>(crate::model::LinkRow {
                        address,
                        fingerprint,
                        purpose: token_purpose(&purpose)?,
                        change,
                        expires_at: from_millis(expires_at),
                        used,
                    })
                })
                .transpose()?;
            let keys = match &link {
                Some(l) => address_keys(conn, &l.address)?,
                None => Default::default(),
            };
            let (writes, outcome) = rule(link.as_ref(), &keys, now);
            if let Some(l) = &link {
                write_keys(conn, &l.address, Some(&hash), now, &writes)?;
            }
            Ok(outcome)
        })
        .await
    }

    async fn history(&self, event: &str) -> Result<Vec<Decided>> {
        let event = event.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT notification, at, state, reason, detail, due_at FROM decisions \
                 WHERE event = ?1 ORDER BY at, rowid",
            )?;
            let mut rows = stmt.query([&event])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(Decided {
                    notification: r.get(0)?,
                    at: from_millis(r.get(1)?),
                    state: state_from_text(&r.get::<_, String>(2)?)?,
                    reason: reason_from_text(r.get(3)?)?,
                    detail: r.get(4)?,
                    due_at: from_millis(r.get(5)?),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn count_by_state(&self) -> Result<Vec<(State, i64)>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT state, COUNT(*) FROM notifications GROUP BY state")?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((state_from_text(&r.get::<_, String>(0)?)?, r.get(1)?));
            }
            Ok(out)
        })
        .await
    }
}

/// The versioned schema.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite.sql")),
    (2, include_str!("migrations/sqlite-2.sql")),
    (3, include_str!("migrations/sqlite-3.sql")),
    (4, include_str!("migrations/sqlite-4.sql")),
    (5, include_str!("migrations/sqlite-5.sql")),
];
