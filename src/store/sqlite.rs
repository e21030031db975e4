//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so an answered write survives `kill -9` and power loss alike. A group
//! of only relaxed writes (a claim's lease, see `Backend::write_relaxed`)
//! commits with `synchronous=NORMAL`: it survives `kill -9`, not always
//! the machine's own crash.
//!
//! All writes go through one writer thread that commits whatever has queued
//! up in a single transaction (group commit): under load, many requests share
//! one fsync, which is what makes durable ingest fast. Each request runs in
//! its own savepoint, so one failing request never undoes another. Reads use
//! a small pool of separate connections. The writer writes its log through
//! `log_vfs` (a transaction's frames with one call, not two a page). What
//! this file knows is SQLite's SQL and its connections; every flow and
//! decision is in `db.rs`.

pub mod log_vfs;

use super::codec::*;
use super::db::{Backend, Db, Job, WriteTimes, migrations};
use super::rows::{self, *};
use super::{Decided, Result, StoreError, TokenRecord};
use crate::model::audit::{AuditEntry, Checkpoint};
use crate::model::throttle::Window;
use crate::model::{
    Account, Change, CodeRow, Contact, Destination, Event, Incident, KeyRecord, KeyToken, LinkRow,
    Message, Notification, ProofUse, RelatedNotice, Staff, VetoLink, to_millis,
};
use prometheus_client::metrics::histogram::Histogram;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, Params, Row, params};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

type Finisher = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// A job for the writer thread, and whether its commit must be on the
/// disk before it answers (see [`Backend::write_relaxed`]).
struct WriterJob {
    durable: bool,
    /// Runs the job in the group's transaction: in a savepoint of its own,
    /// unless it is alone in the transaction (`true`), whose rollback
    /// then takes back what it wrote if it failed.
    run: Run,
}
type Run = Box<dyn FnOnce(&mut Lite, bool) -> Ran + Send>;

/// A job that ran: whether it failed, and what tells it how its group
/// ended.
struct Ran {
    failed: bool,
    finish: Finisher,
}

/// Most jobs committed together.
const MAX_GROUP: usize = 1024;
const READERS: usize = 4;

/// The embedded store.
pub type SqliteStore = Db<Sqlite>;

/// SQLite's transactions: the writer thread and the readers.
pub struct Sqlite {
    writer: Mutex<mpsc::Sender<WriterJob>>,
    readers: Mutex<Vec<Connection>>,
    /// One permit per reader connection: a read waits for one to be free
    /// rather than opening a connection of its own (opening one costs
    /// more than most reads, and under many concurrent requests every
    /// read beyond the pool used to pay it).
    reading: tokio::sync::Semaphore,
    path: Option<String>,
}

/// SQLite's rows: one connection.
pub struct Lite(Connection);

/// A reader connection's page cache, in KiB.
const READER_CACHE_KIB: i64 = 32_000;

/// The writer connection's page cache, in KiB: smaller than a reader's.
/// At a commit after a B-tree split that reordered its new pages (which
/// SQLite does through the locking page's number, 2^30 / page size), the
/// pager walks every page the writer's cache holds; with 32 MB that walk
/// was a tenth of the writer's time in webhook delivery (BENCHMARKS.md,
/// stop 48). The pages it writes are the indexes' hot ends, which 8 MB
/// holds; the rest come from the OS's cache.
const WRITER_CACHE_KIB: i64 = 8_000;

/// Which connection is opened: the one writer or a reader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

/// A connection to `path` (in memory without). The writer writes its log
/// through `log_vfs` (a transaction's frames with one call) and keeps a
/// smaller page cache than a reader.
fn open_conn(path: Option<&str>, role: Role) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match (path, role) {
        (Some(p), Role::Writer) => {
            let vfs = log_vfs::register().map_err(|rc| {
                StoreError::Unavailable(format!("cannot register SQLite's log VFS (code {rc})"))
            })?;
            Connection::open_with_flags_and_vfs(p, flags, vfs)?
        }
        (Some(p), Role::Reader) => Connection::open_with_flags(p, flags)?,
        (None, _) => Connection::open_in_memory()?,
    };
    if role == Role::Writer {
        writer_lookaside(&conn);
    }
    let cache_kib = match role {
        Role::Writer => WRITER_CACHE_KIB,
        Role::Reader => READER_CACHE_KIB,
    };
    conn.busy_timeout(Duration::from_secs(10))?;
    // Plans never depend on the values bound: otherwise SQLite prepares a
    // statement again each time a value it planned by changes (such as
    // the scheduler's claim, whose `LIMIT ?` differs from call to call).
    // A query that needs a partial index names the value it filters on in
    // its text, not as a parameter.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // More statements than rusqlite's default 16 run in turn on the
    // writer (planning, inserts, claims): each would be parsed again.
    conn.set_prepared_statement_cache_capacity(64);
    // A restarted log is written over at its size (cut back to 64 MiB if it
    // grew past that), not grown from nothing each cycle; the writer
    // truncates it on its own clock (`LogClock`), so that what was erased
    // does not stay in its frames.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA secure_delete = FAST;
         PRAGMA journal_size_limit = 67108864;",
    )?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    Ok(conn)
}

/// The writer's lookaside (SQLite's own allocator for a connection's
/// small, short-lived allocations): [`LOOKASIDE_SLOTS`] times
/// [`LOOKASIDE_SLOT`] bytes, 1.2 MB, which SQLite divides into about 750
/// slots of 1,200 bytes and 2,300 of 128; its default is 48 KB (30 and
/// 93). Every value bound to a statement is copied into SQLite's memory
/// and freed when the statement goes back to the cache; a batch's 32-row
/// insert of notices binds 896 values, so with the default most of those
/// copies were `malloc` and `free` calls, 6–7% of the writer's time
/// (BENCHMARKS.md, stop 55).
const LOOKASIDE_SLOT: std::ffi::c_int = 1200;
const LOOKASIDE_SLOTS: std::ffi::c_int = 1000;

/// Gives the writer connection its larger lookaside; on refusal (SQLite
/// keeps its default), says so at debug level and goes on.
fn writer_lookaside(conn: &Connection) {
    // SAFETY: `handle` is this open connection's, used on this thread;
    // the call is made just after opening, before the connection runs any
    // statement (SQLite refuses with SQLITE_BUSY while lookaside memory is
    // in use), and the null buffer makes SQLite allocate the slots itself.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            LOOKASIDE_SLOT,
            LOOKASIDE_SLOTS,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(
            code = rc,
            "SQLite kept its default lookaside for the writer"
        );
    }
}

impl Db<Sqlite> {
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
        if let Some(p) = &path {
            create_private(std::path::Path::new(p))?;
        }
        let conn = open_conn(path.as_deref(), Role::Writer)?;
        conn.wal_hook(Some(fold_when_due));
        let times = WriteTimes::default();
        let folds = times.folds();
        let (tx, rx) = mpsc::channel::<WriterJob>();
        std::thread::Builder::new()
            .name("kci-sqlite-writer".into())
            .spawn(move || writer_loop(Lite(conn), rx, folds))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer: {e}")))?;
        let sqlite = Sqlite {
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
            reading: tokio::sync::Semaphore::new(READERS),
            path,
        };
        Ok(Db::with_times(sqlite, times))
    }
}

/// Creates a new database file readable by its owner only, whatever the
/// umask: it holds the directory, hashes and the audit log. SQLite gives
/// the `-wal` and `-shm` files it makes beside it the same mode. An
/// existing file is left as it is (`kci doctor` names a loose mode).
fn create_private(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// Runs a job's future, which SQLite's rows never make wait, to its end.
fn now<F: std::future::Future<Output = Result<T>>, T>(f: F) -> Result<T> {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => Err(StoreError::Unavailable(
            "a SQLite step waited for something; it must not".into(),
        )),
    }
}

impl Sqlite {
    /// Hands `job` to the writer thread; resolves once its group committed.
    async fn queue<T: Send + 'static>(&self, job: Job<Lite, T>, durable: bool) -> Result<T> {
        let (job, answer) = writer_job(job, durable);
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?
    }
}

/// `job` as the writer thread runs it, and where its answer comes once its
/// group ended.
fn writer_job<T: Send + 'static>(
    job: Job<Lite, T>,
    durable: bool,
) -> (WriterJob, tokio::sync::oneshot::Receiver<Result<T>>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = WriterJob {
        durable,
        run: Box::new(move |lite, alone| {
            let result = if alone {
                now(job(lite))
            } else {
                in_savepoint(lite, job)
            };
            let failed = result.is_err();
            let finish: Finisher = Box::new(move |commit| {
                let out = match (result, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(StoreError::Unavailable(format!("commit failed: {e}"))),
                };
                let _ = tx.send(out);
            });
            Ran { failed, finish }
        }),
    };
    (job, rx)
}

impl Backend for Sqlite {
    type Rows = Lite;
    const ONE_PROCESS: bool = true;
    const MIGRATIONS: &'static [(i64, &'static str)] = migrations!("sqlite");

    /// Runs `job` on the writer connection in a savepoint of the current
    /// group's transaction; resolves once that is durably committed.
    async fn write<T: Send + 'static>(&self, job: Job<Lite, T>) -> Result<T> {
        self.queue(job, true).await
    }

    /// As `write`; a group of only such jobs commits without waiting for
    /// the disk (`synchronous = NORMAL`: nothing is lost if kci dies, and
    /// a crash of the machine loses at most the last such commits, never
    /// one before a durable commit).
    async fn write_relaxed<T: Send + 'static>(&self, job: Job<Lite, T>) -> Result<T> {
        self.queue(job, false).await
    }

    /// Runs `job` on a reader connection (on the writer for in-memory
    /// stores, which cannot be shared between connections).
    async fn read<T: Send + 'static>(&self, job: Job<Lite, T>) -> Result<T> {
        let Some(path) = self.path.clone() else {
            return self.write(job).await;
        };
        let _turn = self
            .reading
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("sqlite readers closed".into()))?;
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let mut lite = Lite(match pooled {
                Some(c) => c,
                None => open_conn(Some(&path), Role::Reader)?,
            });
            let r = now(job(&mut lite));
            Ok::<_, StoreError>((lite.0, r))
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

fn in_savepoint<T>(lite: &mut Lite, job: Job<Lite, T>) -> Result<T> {
    // Prepared once per connection, not parsed again for every job.
    lite.exec("SAVEPOINT job", [])?;
    match now(job(lite)) {
        Ok(v) => {
            lite.exec("RELEASE job", [])?;
            Ok(v)
        }
        Err(e) => {
            let _ = lite.0.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

/// How long nothing must have changed before the writer folds the
/// write-ahead log into the database and truncates it.
const QUIET: Duration = Duration::from_secs(5);
/// The longest a change waits for that under writes that never stop for
/// [`QUIET`]: the bound on how long an erased row's old version stays in
/// the log's frames.
const AT_MOST: Duration = Duration::from_secs(10);
/// How soon the writer tries again after a reader was in the way.
const RETRY: Duration = Duration::from_millis(250);

/// When the writer truncates the write-ahead log. Rows erased in place (a
/// notice's one-time secret, once it went out) leave no copy in the
/// database file (`secure_delete`), but their old versions stay in the
/// log's frames, also after the log restarts (it is reused at its size,
/// `journal_size_limit`, rather than grown again from nothing each cycle),
/// until the log is truncated: after [`QUIET`] without changes, and at the
/// latest [`AT_MOST`] after the oldest change it holds, however steadily
/// writes come.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct LogClock {
    /// The oldest change the log may hold, and the latest.
    changes: Option<(Instant, Instant)>,
    /// The last try a reader was in the way of.
    tried: Option<Instant>,
}

impl LogClock {
    fn changed(&mut self, now: Instant) {
        let oldest = self.changes.map_or(now, |(oldest, _)| oldest);
        self.changes = Some((oldest, now));
    }

    fn due(&self, now: Instant) -> bool {
        let Some((oldest, latest)) = self.changes else {
            return false;
        };
        let waited = |since: Instant, long: Duration| now.saturating_duration_since(since) >= long;
        self.tried.is_none_or(|at| waited(at, RETRY))
            && (waited(latest, QUIET) || waited(oldest, AT_MOST))
    }

    fn truncated(&mut self, done: bool, now: Instant) {
        *self = if done {
            LogClock::default()
        } else {
            LogClock {
                tried: Some(now),
                ..*self
            }
        };
    }
}

/// Folds the write-ahead log into the database and truncates it, if no
/// reader is in the way right now; whether it did.
fn truncate_log(conn: &Connection) -> bool {
    let _ = conn.busy_timeout(Duration::from_millis(50));
    let done = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok_and(|busy| busy == 0);
    let _ = conn.busy_timeout(Duration::from_secs(10));
    done
}

thread_local! {
    /// Where the writer running on this thread times its folds of the log
    /// (set by [`writer_loop`]; SQLite's log hook is a plain function).
    static FOLDS: std::cell::RefCell<Option<Histogram>> = const { std::cell::RefCell::new(None) };
}

/// The log's length, in pages, at which the writer folds it into the
/// database: SQLite's own default (`wal_autocheckpoint`).
const FOLD_AT: std::ffi::c_int = 1000;

/// The writer connection's log hook, run by SQLite inside each `COMMIT`
/// once the commit is in the log: SQLite's own (a passive fold once the
/// log is [`FOLD_AT`] pages long, its outcome ignored: a fold that could
/// not copy everything is tried again at the next commit), timed into
/// `kci_store_fold_seconds`, so that a slow `COMMIT` is told apart as the
/// fold or the log's own write and sync. The commit's jobs are answered
/// after it, as before (answering them first was tried: BENCHMARKS.md,
/// stop 46).
fn fold_when_due(wal: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    if pages >= FOLD_AT
        && let Err(e) = timed_fold(|| wal.checkpoint())
    {
        tracing::debug!(error = %e, "the SQLite log's fold stopped early");
    }
    Ok(())
}

/// Runs `fold` (SQLite's, or the writer's truncation of the log), timed
/// into this thread's writer's `kci_store_fold_seconds`.
fn timed_fold<T>(fold: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = fold();
    FOLDS.with_borrow(|folds| {
        if let Some(folds) = folds {
            folds.observe(started.elapsed().as_secs_f64());
        }
    });
    out
}

fn writer_loop(mut lite: Lite, rx: mpsc::Receiver<WriterJob>, folds: Histogram) {
    FOLDS.set(Some(folds));
    let (mut seen, mut log) = (lite.0.total_changes(), LogClock::default());
    // `open_conn` set `synchronous = FULL`.
    let mut full = true;
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            commit_group(&mut lite, first, &rx, &mut full);
        }
        let (total, now) = (lite.0.total_changes(), Instant::now());
        if total != seen {
            seen = total;
            log.changed(now);
        }
        if log.due(now) {
            let done = timed_fold(|| truncate_log(&lite.0));
            log.truncated(done, Instant::now());
        }
    }
}

/// Puts the writer's commits in `synchronous = FULL` (each waits for the
/// disk) or `NORMAL` (none does) mode, as `durable` asks; `full` is the
/// mode it is in. Only failing to wait for the disk is an error.
fn synchronous(
    conn: &Connection,
    full: &mut bool,
    durable: bool,
) -> std::result::Result<(), String> {
    if *full != durable {
        // From the statement cache: a group of claims and ingest switches
        // twice, and parsing the pragma each time was 1% of the writer's
        // time under delivery.
        let sql = if durable {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        match conn.prepare_cached(sql).and_then(|mut s| s.raw_execute()) {
            Ok(_) => *full = durable,
            Err(e) if durable => return Err(format!("cannot make the commit durable: {e}")),
            Err(_) => {} // stays durable
        }
    }
    Ok(())
}

/// Runs `first` and whatever else has queued (up to [`MAX_GROUP`]): the
/// relaxed jobs in one transaction that does not wait for the disk, then
/// the others in one that does (see [`commit`]). A relaxed job (a claim's
/// lease) queued among durable ones is so answered without waiting for
/// their sync; jobs in one group were queued by callers independent of
/// each other (a caller awaits its job), so their order between the two
/// is free. A relaxed commit is still atomic and in the log's order: the
/// next durable commit makes it durable too.
fn commit_group(
    lite: &mut Lite,
    first: WriterJob,
    rx: &mpsc::Receiver<WriterJob>,
    full: &mut bool,
) {
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    let (durable, relaxed): (Vec<_>, Vec<_>) = group.into_iter().partition(|job| job.durable);
    for jobs in [relaxed, durable] {
        if !jobs.is_empty() {
            commit(lite, jobs, full);
        }
    }
}

/// Runs `group` in one transaction, each job in its savepoint (a job
/// alone in it needs none: the transaction is its savepoint), and tells
/// each how it ended. The commit waits for the disk if any job must.
fn commit(lite: &mut Lite, group: Vec<WriterJob>, full: &mut bool) {
    let durable = group.iter().any(|job| job.durable);
    let mode = synchronous(&lite.0, full, durable);
    let began = lite.exec("BEGIN IMMEDIATE", []).is_ok();
    // Without a transaction, each job's savepoint is its transaction.
    let alone = began && group.len() == 1;
    let ran: Vec<Ran> = group
        .into_iter()
        .map(|job| (job.run)(lite, alone))
        .collect();
    let commit = match (began, mode) {
        // Nothing else to keep: its failure answers it.
        (true, _) if alone && ran.iter().any(|r| r.failed) => {
            let _ = lite.0.execute_batch("ROLLBACK");
            Ok(())
        }
        (true, Ok(())) => lite.exec("COMMIT", []).map(|_| ()).map_err(|e| {
            let _ = lite.0.execute_batch("ROLLBACK");
            e.to_string()
        }),
        (true, Err(e)) => {
            let _ = lite.0.execute_batch("ROLLBACK");
            Err(e)
        }
        // Each savepoint committed on its own; durably only if the mode
        // could be set (otherwise the jobs are told so, never "done").
        (false, mode) => mode,
    };
    for ran in ran {
        (ran.finish)(commit.clone());
    }
}

/// An account's destinations, in the order of its index (migration 21):
/// read at every planned event, without a sort.
fn destinations_sql() -> String {
    format!(
        "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE account = ?1 ORDER BY contact, id"
    )
}

/// Every notice of the latest keyed event of type `?3` for account `?1`
/// and key `?2`, through `events_key` (whose condition, `keyed = 1`, it
/// repeats so that SQLite may use the partial index).
const LATEST_OF_TYPE: &str = "SELECT n.id, n.event, n.type, n.destination, n.state, n.due_at, \
     json_extract(e.payload, '$.occurred_at') \
     FROM notifications n JOIN events e ON e.id = n.event WHERE n.event = \
     (SELECT id FROM events WHERE account = ?1 AND key = ?2 AND type = ?3 AND keyed = 1 \
      ORDER BY received_at DESC, rowid DESC LIMIT 1)";

/// How many keyed events of type `?3` account `?1` and key `?2` received
/// after `?4`, through `events_key`.
const KEYED_SINCE: &str = "SELECT COUNT(*) FROM events \
     WHERE account = ?1 AND key = ?2 AND type = ?3 AND keyed = 1 AND received_at > ?4";

/// Pairing's statement: the notices of account `$1`, key `$2` and type
/// `$3` still waiting, pending or folded into an open digest, in one.
fn related_waiting_sql() -> String {
    let [pending, folded] =
        related_waiting("json_extract(e.payload, '$.occurred_at')", "n.type = $3");
    format!("{pending} UNION ALL {folded}")
}

/// The claim's statement: notices of one channel (`?4`) or of all.
fn claim_sql(of_channel: bool) -> String {
    // The longest-waiting first, as on PostgreSQL: notices whose lease
    // ran out, then pending ones by due time, ties in the order stored
    // (the order of the (channel, due_at) index). One statement per case:
    // with `(?4 IS NULL OR channel = ?4)`, SQLite planned it again on
    // every call and could not use the (channel, due_at) index. Without
    // a channel (`kci simulate`'s claim) the pending notices are sorted:
    // no index is in due order across channels (migration 27).
    let channel = if of_channel { "AND channel = ?4" } else { "" };
    // Each key's notices to a destination in turn (sql::in_turn).
    let in_turn = rows::sql::in_turn("?1");
    format!(
        "UPDATE notifications SET state = 'sending', attempts = attempts + 1, lease_until = ?2 \
         WHERE id IN ( \
           SELECT id FROM (SELECT id FROM notifications n WHERE state = 'sending' AND lease_until <= ?1 \
             {channel} AND {in_turn} ORDER BY lease_until LIMIT ?3) \
           UNION ALL \
           SELECT id FROM (SELECT id FROM notifications n WHERE state = 'pending' AND due_at <= ?1 \
             {channel} AND {in_turn} ORDER BY due_at, n.rowid LIMIT ?3) \
           LIMIT ?3) \
         RETURNING {NOTIFICATION_COLUMNS}"
    )
}

/// Rows a statement of `Lite::insert_notices` (and of
/// `insert_new_events`) writes when it has that many: 32 notices take 896
/// parameters, far under SQLite's 32,766. A batch's rows go in statements
/// of this many and the rest one by one, so the writer's statement cache
/// holds two texts per table.
const ROWS_PER_INSERT: usize = 32;

/// `OR FAIL`: a row that breaks a constraint fails its statement without
/// SQLite taking back the rows before it, which the job's own rollback
/// does (its savepoint, or the group's transaction); so SQLite keeps no
/// statement journal, a copy of every page the statement changes that an
/// earlier statement of the transaction had changed already. (A single
/// row is checked whole before any of it is written: there `OR FAIL` is
/// the default `ABORT`.)
const NOTICE_INSERT: &str = "INSERT OR FAIL INTO notifications (id, event, account, contact, destination, uri, channel, \
     type, key, priority, state, reason, detail, due_at, expires_at, decided_at, sent_at, attempts, timezone, \
     message, digest, paired_from, secret, first_at, first_state, first_reason, first_detail, first_due_at)";
const NOTICE_COLUMNS: usize = 28;
/// Without `OR FAIL`: a batch's events go in together only if none is
/// stored already (`Lite::insert_new_events`); one alone, unless it is
/// (`Rows::insert_event`).
const EVENT_INSERT: &str =
    "INSERT INTO events (id, account, type, key, received_at, notifications, payload, keyed)";
const EVENT_COLUMNS: usize = 8;
/// One decision after the one that made its notice (that one is in the
/// notice's row, `first_*`): decisions are written a row at a time.
const DECISION_INSERT: &str = "INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// A table's insert of many rows: `insert`, then the rows' parameters,
/// then `tail`. Its texts for one row and for [`ROWS_PER_INSERT`] rows,
/// the two counts written, are made once, not at every write.
struct RowsInsert {
    insert: &'static str,
    columns: usize,
    tail: &'static str,
    one: std::sync::OnceLock<String>,
    chunk: std::sync::OnceLock<String>,
}

impl RowsInsert {
    const fn new(insert: &'static str, columns: usize, tail: &'static str) -> RowsInsert {
        RowsInsert {
            insert,
            columns,
            tail,
            one: std::sync::OnceLock::new(),
            chunk: std::sync::OnceLock::new(),
        }
    }

    /// The statement for `rows` rows.
    fn sql(&self, rows: usize) -> std::borrow::Cow<'_, str> {
        let make = || {
            let row = format!("({})", vec!["?"; self.columns].join(", "));
            let values = vec![row; rows].join(", ");
            format!("{} VALUES {values}{}", self.insert, self.tail)
        };
        match rows {
            1 => self.one.get_or_init(make).into(),
            ROWS_PER_INSERT => self.chunk.get_or_init(make).into(),
            _ => make().into(),
        }
    }
}

static NOTICES: RowsInsert = RowsInsert::new(NOTICE_INSERT, NOTICE_COLUMNS, "");
/// A batch's events, none stored yet (`Lite::insert_new_events`).
static NEW_EVENTS: RowsInsert = RowsInsert::new(EVENT_INSERT, EVENT_COLUMNS, "");
/// An event, unless its id is stored already (`Rows::insert_event`).
static EVENT_UNLESS_STORED: RowsInsert =
    RowsInsert::new(EVENT_INSERT, EVENT_COLUMNS, " ON CONFLICT (id) DO NOTHING");

/// A statement parameter: a notice's text borrowed, a number or null.
mod param {
    use rusqlite::types::{ToSqlOutput, Value, ValueRef};

    pub type Param<'a> = ToSqlOutput<'a>;

    pub fn text(s: &str) -> Param<'_> {
        ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
    }

    pub fn some_text(s: Option<&str>) -> Param<'_> {
        s.map_or(ToSqlOutput::Owned(Value::Null), text)
    }

    pub fn int(i: i64) -> Param<'static> {
        ToSqlOutput::Owned(Value::Integer(i))
    }

    pub fn some_int(i: Option<i64>) -> Param<'static> {
        i.map_or(ToSqlOutput::Owned(Value::Null), int)
    }
}

/// A notice's row, in `NOTICE_INSERT`'s order; `message` is its JSON.
fn notice_row<'a>(
    n: &'a Notification,
    message: Option<&'a str>,
) -> [param::Param<'a>; NOTICE_COLUMNS] {
    use param::*;
    [
        text(&n.id),
        some_text(n.event.as_deref()),
        text(&n.account),
        text(&n.contact),
        text(&n.destination),
        text(&n.uri),
        text(n.channel.as_str()),
        text(&n.type_name),
        text(&n.key),
        int(i64::from(n.priority.rank())),
        text(n.state.as_str()),
        some_text(n.reason.map(|r| r.as_str())),
        some_text(n.detail.as_deref()),
        int(to_millis(n.due_at)),
        some_int(n.expires_at.map(to_millis)),
        int(to_millis(n.decided_at)),
        some_int(n.sent_at.map(to_millis)),
        int(i64::from(n.attempts)),
        text(&n.timezone),
        some_text(message),
        some_text(n.digest.as_deref()),
        some_int(n.paired_from.map(to_millis)),
        some_text(n.secret.as_ref().map(|s| s.expose().as_str())),
        // The decision that made it (`first_*`), kept as it is.
        int(to_millis(n.decided_at)),
        text(n.state.as_str()),
        some_text(n.reason.map(|r| r.as_str())),
        some_text(n.detail.as_deref()),
        int(to_millis(n.due_at)),
    ]
}

/// An event's row, in `EVENT_INSERT`'s order.
fn event_row<'a>(row: &NewEvent<'a>) -> [param::Param<'a>; EVENT_COLUMNS] {
    use param::*;
    let e = row.event;
    [
        text(&e.id),
        text(&e.account),
        text(&e.type_name),
        text(&e.key),
        int(to_millis(e.received_at)),
        int(i64::try_from(row.notifications).unwrap_or(i64::MAX)),
        text(row.payload),
        int(i64::from(row.keyed)),
    ]
}

impl Cols for Row<'_> {
    fn cell(&self, i: usize) -> Result<Cell> {
        use rusqlite::types::ValueRef;
        Ok(match self.get_ref(i)? {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(n) => Cell::Int(n),
            ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "column {i}: {:?}",
                    other.data_type()
                )));
            }
        })
    }
}

impl Lite {
    fn all<T>(
        &self,
        sql: &str,
        p: impl Params,
        f: impl Fn(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(p)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(f(r)?);
        }
        Ok(out)
    }

    fn one<T>(
        &self,
        sql: &str,
        p: impl Params,
        f: impl Fn(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(p)?;
        rows.next()?.map(f).transpose()
    }

    fn exec(&self, sql: &str, p: impl Params) -> Result<usize> {
        Ok(self.0.prepare_cached(sql)?.execute(p)?)
    }

    /// Records decision `d` about notification `id` of `event`.
    fn record(&self, id: &str, event: Option<&str>, d: &Decided, due_at: i64) -> Result<()> {
        self.exec(
            DECISION_INSERT,
            params![
                id,
                event,
                to_millis(d.at),
                d.state.as_str(),
                d.reason.map(|r| r.as_str()),
                d.detail,
                due_at
            ],
        )?;
        Ok(())
    }

    /// Records `d` for each (id, event, due) a write returned.
    fn record_all(&self, done: &[(String, Option<String>, i64)], d: &Decided) -> Result<usize> {
        for (id, event, due_at) in done {
            self.record(id, event.as_deref(), d, *due_at)?;
        }
        Ok(done.len())
    }

    /// Writes `events` with one statement if none of their ids is stored
    /// (nor given twice), the common case; whether it did. A statement
    /// that meets a stored id is taken back whole (SQLite's `ABORT`, the
    /// default), and the caller writes the events one by one instead.
    fn insert_new_events(&self, events: &[NewEvent<'_>]) -> Result<bool> {
        let sql = NEW_EVENTS.sql(events.len());
        let values = rusqlite::params_from_iter(events.iter().flat_map(event_row));
        match self.0.prepare_cached(&sql)?.execute(values) {
            Ok(_) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `notes`, each with the decision that made it in its own
    /// row (`first_*`), with one statement: a statement's fixed cost
    /// (preparing from the cache, binding, stepping, resetting) is paid
    /// once for the lot.
    fn insert_notices(&self, notes: &[&Notification]) -> Result<()> {
        let messages = notes
            .iter()
            .map(|n| n.message.as_ref().map(message_json).transpose())
            .collect::<Result<Vec<_>>>()?;
        let notices = notes
            .iter()
            .zip(&messages)
            .flat_map(|(n, m)| notice_row(n, m.as_deref()));
        let sql = NOTICES.sql(notes.len());
        self.0
            .prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(notices))?;
        Ok(())
    }

    /// One delivery's outcome (`Rows::finish_all`).
    fn finish(&self, id: &str, f: &FinishRow) -> Result<bool> {
        let sql = "UPDATE notifications SET state = ?2, reason = ?3, detail = ?4, sent_at = COALESCE(?5, sent_at), \
             due_at = COALESCE(?6, due_at), decided_at = ?7, lease_until = NULL, attempts = attempts + ?8, \
             provider_ref = COALESCE(?9, provider_ref), receipt = ?10, segments = COALESCE(?11, segments), \
             secret = CASE WHEN ?12 THEN secret END, paced = paced + ?13 \
             WHERE id = ?1 AND state = 'sending' AND (?14 IS NULL OR lease_until = ?14) \
             RETURNING id, event, due_at, destination";
        let p = params![
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
            f.segments,
            f.keeps_secret,
            f.paced_delta,
            f.lease
        ];
        let Some((done, destination)) = self.one(sql, p, |r| Ok((touched(r)?, r.text(3)?)))? else {
            return Ok(false);
        };
        let sql = "UPDATE destinations SET failures = 0 WHERE ?2 AND id = ?1 AND failures > 0";
        self.exec(sql, params![destination, f.clears_refusals])?;
        let d = Decided {
            notification: done.0.clone(),
            at: crate::model::from_millis(f.decided_at),
            state: f.state,
            reason: f.reason,
            detail: f.detail.clone(),
            due_at: crate::model::from_millis(done.2),
        };
        self.record_all(&[done], &d)?;
        Ok(true)
    }
}

/// (id, event, due) of a notification a write returned.
fn touched(r: &Row<'_>) -> Result<(String, Option<String>, i64)> {
    Ok((r.text(0)?, r.opt_text(1)?, r.int(2)?))
}

impl rusqlite::ToSql for rows::Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            rows::Arg::Text(t) => t.to_sql(),
            rows::Arg::OptText(t) => t.to_sql(),
            rows::Arg::Int(n) => n.to_sql(),
            rows::Arg::OptInt(n) => n.to_sql(),
            rows::Arg::Bool(b) => b.to_sql(),
        }
    }
}

impl Rows for Lite {
    async fn run(&mut self, sql: &str, args: &[rows::Arg<'_>]) -> Result<u64> {
        let n = self.exec(&rows::sqlite(sql), rusqlite::params_from_iter(args))?;
        Ok(n as u64)
    }

    async fn query(&mut self, sql: &str, args: &[rows::Arg<'_>]) -> Result<Vec<rows::Cells>> {
        self.all(&rows::sqlite(sql), rusqlite::params_from_iter(args), |r| {
            (0..r.as_ref().column_count())
                .map(|i| r.cell(i))
                .collect::<Result<_>>()
                .map(rows::Cells)
        })
    }

    async fn schema_version(&mut self) -> Result<i64> {
        self.0.execute_batch(
            "CREATE TABLE IF NOT EXISTS kci_schema (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )?;
        Ok(self.0.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM kci_schema",
            [],
            |r| r.get(0),
        )?)
    }

    async fn server_time(&mut self) -> Result<Option<i64>> {
        Ok(None) // in this process: its clock is kci's
    }

    async fn migrate_to(&mut self, version: i64, sql: &str, at: i64) -> Result<()> {
        self.0.execute_batch(sql)?;
        self.exec(
            "INSERT INTO kci_schema (version, applied_at) VALUES (?1, ?2)",
            params![version, at],
        )?;
        Ok(())
    }

    async fn insert_token(&mut self, t: &TokenRecord, hash: &str) -> Result<()> {
        self.exec(
            "INSERT INTO tokens (id, name, secret_hash, scopes, created_at, staff, expires_at, allow, cert, session) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                t.id,
                t.name,
                hash,
                scopes_to_text(&t.scopes),
                to_millis(t.created_at),
                t.staff,
                t.expires_at.map(to_millis),
                prefixes_to_json(&t.allow),
                t.cert,
                t.session
            ],
        )?;
        Ok(())
    }

    async fn tokens(&mut self, id: Option<&str>) -> Result<Vec<TokenRecord>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE ?1 IS NULL OR id = ?1 ORDER BY created_at DESC, id"
        );
        self.all(&sql, [id], |r| rows::token(r))
    }

    async fn auth_epoch(&mut self) -> Result<i64> {
        self.one(&rows::sqlite(rows::sql::AUTH_EPOCH), [], |r| r.int(0))?
            .ok_or_else(|| StoreError::Corrupt("auth_epoch has no row".into()))
    }

    async fn token(&mut self, hash: &str) -> Result<Option<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE secret_hash = ?1");
        self.one(&sql, [hash], |r| rows::token(r))
    }

    async fn account(&mut self, id: &str) -> Result<Option<Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1");
        self.one(&sql, [id], |r| rows::account(r))
    }

    async fn upsert_account(&mut self, a: &Account) -> Result<()> {
        self.exec(
            "INSERT INTO accounts (id, name, timezone, security_level, paranoid, defaults, prefixes, postal_address) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, timezone = excluded.timezone, \
             security_level = excluded.security_level, paranoid = excluded.paranoid, defaults = excluded.defaults, \
             prefixes = excluded.prefixes, postal_address = excluded.postal_address",
            params![
                a.id,
                a.name,
                a.timezone.map(|t| t.to_string()),
                a.security_level.as_str(),
                a.paranoid,
                prefs_to_json(&a.defaults),
                prefixes_to_json(&a.prefixes),
                postal_to_json(a.postal_address.as_ref())
            ],
        )?;
        Ok(())
    }

    async fn contacts(&mut self, account: &str) -> Result<Vec<Contact>> {
        let sql = format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE account = ?1 ORDER BY id");
        self.all(&sql, [account], |r| rows::contact(r))
    }

    async fn contact_exists(&mut self, account: &str, id: &str) -> Result<bool> {
        let sql = "SELECT 1 FROM contacts WHERE account = ?1 AND id = ?2";
        Ok(self.one(sql, [account, id], |_| Ok(()))?.is_some())
    }

    async fn upsert_contact(&mut self, account: &str, c: &Contact) -> Result<()> {
        self.exec(
            "INSERT INTO contacts (account, id, name, timezone, prefs) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (account, id) DO UPDATE SET name = excluded.name, timezone = excluded.timezone, \
             prefs = excluded.prefs",
            params![account, c.id, c.name, c.timezone.map(|t| t.to_string()), prefs_to_json(&c.prefs)],
        )?;
        Ok(())
    }

    async fn destinations(&mut self, account: &str) -> Result<Vec<Destination>> {
        self.all(&destinations_sql(), [account], |r| rows::destination(r))
    }

    async fn insert_destination(&mut self, account: &str, d: &Destination) -> Result<()> {
        self.exec(
            "INSERT INTO destinations (id, account, contact, uri, prefs, verified) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![d.id, account, d.contact, d.uri.to_string(), prefs_to_json(&d.prefs), d.verified],
        )?;
        Ok(())
    }

    async fn delete_destination(&mut self, d: DestRef<'_>) -> Result<bool> {
        let sql = "DELETE FROM destinations WHERE id = ?1 AND account = ?2 AND contact = ?3";
        Ok(self.exec(sql, [d.id, d.account, d.contact])? > 0)
    }

    async fn destination_account(&mut self, id: &str) -> Result<Option<String>> {
        self.one(&rows::sqlite(rows::sql::DESTINATION_ACCOUNT), [id], |r| {
            r.text(0)
        })
    }

    async fn accounts_after(&mut self, after: Option<&str>, limit: i64) -> Result<Vec<Account>> {
        self.all(
            &rows::sqlite(&rows::sql::accounts_after()),
            params![after, limit],
            |r| rows::account(r),
        )
    }

    async fn contacts_with_uri(&mut self, uri: &str) -> Result<Vec<(String, String)>> {
        let sql = "SELECT DISTINCT account, contact FROM destinations WHERE uri = ?1 ORDER BY account, contact";
        self.all(sql, [uri], |r| Ok((r.text(0)?, r.text(1)?)))
    }

    async fn code_row(&mut self, d: DestRef<'_>) -> Result<Option<CodeRow>> {
        let sql = format!(
            "SELECT {CODE_COLUMNS} FROM destinations WHERE id = ?1 AND account = ?2 AND contact = ?3"
        );
        self.one(&sql, [d.id, d.account, d.contact], |r| rows::code_row(r))
    }

    async fn write_code_row(&mut self, id: &str, row: &CodeRow) -> Result<()> {
        self.exec(
            "UPDATE destinations SET code_hash = ?2, code_expires_at = ?3, code_attempts = ?4, codes_sent = ?5, \
             code_sent_at = ?6, wrong_codes = ?7, code_window_start = ?8, \
             verified = verified OR ?9, unhealthy_since = CASE WHEN ?9 THEN NULL ELSE unhealthy_since END, \
             failures = CASE WHEN ?9 THEN 0 ELSE failures END WHERE id = ?1",
            params![
                id,
                row.hash,
                row.expires_at.map(to_millis),
                i64::from(row.attempts),
                i64::from(row.codes_sent),
                row.sent_at.map(to_millis),
                i64::from(row.wrong),
                row.window_start.map(to_millis),
                row.usable
            ],
        )?;
        Ok(())
    }

    async fn secrets(&mut self, id: &str) -> Result<SecretsRow> {
        let sql = "SELECT secret, previous_secret, previous_until FROM destinations WHERE id = ?1";
        let row = self.one(sql, [id], |r| rows::secrets(r, 0))?;
        Ok(row.unwrap_or_default())
    }

    async fn set_secret(&mut self, d: DestRef<'_>, s: &SecretsRow) -> Result<bool> {
        let n = self.exec(
            "UPDATE destinations SET secret = ?4, previous_secret = ?5, previous_until = ?6 \
             WHERE id = ?1 AND account = ?2 AND contact = ?3",
            params![
                d.id,
                d.account,
                d.contact,
                s.secret,
                s.previous,
                s.previous_until
            ],
        )?;
        Ok(n > 0)
    }

    async fn health(&mut self, id: &str) -> Result<Option<HealthRow>> {
        let sql = "SELECT failures, unhealthy_since FROM destinations WHERE id = ?1";
        self.one(sql, [id], |r| {
            Ok(HealthRow {
                failures: r.count(0)?,
                unhealthy_since: r.opt_time(1)?,
            })
        })
    }

    async fn write_health(&mut self, id: &str, h: HealthRow) -> Result<()> {
        let sql = "UPDATE destinations SET failures = ?2, unhealthy_since = ?3 WHERE id = ?1";
        self.exec(
            sql,
            params![id, i64::from(h.failures), h.unhealthy_since.map(to_millis)],
        )?;
        Ok(())
    }

    async fn lock_key(&mut self, _account: &str, _key: &str) -> Result<()> {
        Ok(()) // the one writer serialises everything
    }

    async fn plan_for_values(&mut self) -> Result<()> {
        Ok(()) // plans do not depend on the values bound (see `open_conn`)
    }

    async fn through_indexes(&mut self) -> Result<()> {
        Ok(()) // SQLite's plans do not follow a table's size (no statistics)
    }

    async fn event_count(&mut self, id: &str) -> Result<Option<usize>> {
        let sql = "SELECT notifications FROM events WHERE id = ?1";
        self.one(sql, [id], |r| Ok(usize::try_from(r.int(0)?).unwrap_or(0)))
    }

    async fn insert_event(&mut self, row: NewEvent<'_>) -> Result<bool> {
        let values = rusqlite::params_from_iter(event_row(&row));
        let n = self
            .0
            .prepare_cached(&EVENT_UNLESS_STORED.sql(1))?
            .execute(values)?;
        Ok(n > 0)
    }

    async fn event(&mut self, id: &str) -> Result<Option<Event>> {
        let sql = "SELECT payload FROM events WHERE id = ?1";
        self.one(sql, [id], |r| event_from_json(&r.text(0)?))
    }

    async fn related(&mut self, e: &Event, types: &[String]) -> Result<Vec<RelatedNotice>> {
        let waiting = related_waiting_sql();
        let latest = LATEST_OF_TYPE;
        let mut out: Vec<RelatedNotice> = Vec::new();
        for t in types {
            for sql in [waiting.as_str(), latest] {
                for n in self.all(sql, [&e.account, &e.key, t], |r| rows::related(r))? {
                    if !out.iter().any(|o| o.id == n.id) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn count_events(&mut self, e: &Event, types: &[String], since: i64) -> Result<usize> {
        let sql = KEYED_SINCE;
        let mut n = 0;
        for t in types {
            let c = self.one(sql, params![e.account, e.key, t, since], |r| r.int(0))?;
            n += usize::try_from(c.unwrap_or(0)).unwrap_or(0);
        }
        Ok(n)
    }

    async fn load(&mut self, destination: &str, since: i64) -> Result<usize> {
        let sql = "SELECT COUNT(*) FROM notifications WHERE destination = ?1 AND due_at > ?2 AND priority < 3 \
             AND state IN ('pending', 'sending', 'sent') AND event IS NOT NULL AND type NOT LIKE 'kci.%'";
        let n = self.one(sql, params![destination, since], |r| r.int(0))?;
        Ok(usize::try_from(n.unwrap_or(0)).unwrap_or(0))
    }

    async fn pending_digest(&mut self, account: &str, destination: &str) -> Result<Option<String>> {
        self.one(PENDING_DIGEST, [account, destination], |r| r.text(0))
    }

    async fn history(&mut self, event: &str) -> Result<Vec<Decided>> {
        let sql = rows::sqlite(&rows::history("rowid"));
        self.all(&sql, [event], |r| rows::decided(r))
    }

    async fn event_counts(
        &mut self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, usize>> {
        // In process, a statement per id costs no round trip.
        let mut known = std::collections::HashMap::new();
        for id in ids {
            if let Some(n) = self.event_count(id).await? {
                known.insert(id.to_string(), n);
            }
        }
        Ok(known)
    }

    async fn insert_events(&mut self, events: &[NewEvent<'_>]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(events.len());
        let mut full = events.chunks_exact(ROWS_PER_INSERT);
        for chunk in &mut full {
            if self.insert_new_events(chunk)? {
                out.extend(std::iter::repeat_n(true, chunk.len()));
                continue;
            }
            for row in chunk {
                out.push(self.insert_event(*row).await?);
            }
        }
        for row in full.remainder() {
            out.push(self.insert_event(*row).await?);
        }
        Ok(out)
    }

    async fn insert_notifications(&mut self, notes: &[&Notification]) -> Result<()> {
        let mut full = notes.chunks_exact(ROWS_PER_INSERT);
        for chunk in &mut full {
            self.insert_notices(chunk)?;
        }
        for n in full.remainder() {
            self.insert_notices(std::slice::from_ref(n))?;
        }
        Ok(())
    }

    async fn insert_notification(&mut self, n: &Notification) -> Result<()> {
        self.insert_notices(&[n])
    }

    async fn cancel(&mut self, by: By, value: &str, d: &Decided) -> Result<usize> {
        let sql = format!(
            "UPDATE notifications SET state = 'cancelled', reason = ?2, detail = ?3, decided_at = ?4, secret = NULL \
             WHERE {} RETURNING id, event, due_at",
            cancellable(by, "?1")
        );
        let p = params![
            value,
            d.reason.map(|r| r.as_str()),
            d.detail,
            to_millis(d.at)
        ];
        let done = self.all(&sql, p, touched)?;
        self.record_all(&done, d)
    }

    async fn set_paired_from(&mut self, id: &str, from: i64) -> Result<()> {
        let sql = "UPDATE notifications SET paired_from = ?2 WHERE id = ?1 AND state = 'pending'";
        self.exec(sql, params![id, from])?;
        Ok(())
    }

    async fn set_message(&mut self, id: &str, m: &Message) -> Result<()> {
        let sql = "UPDATE notifications SET message = ?2 WHERE id = ?1 AND state = 'pending'";
        self.exec(sql, params![id, message_json(m)?])?;
        Ok(())
    }

    async fn claim(&mut self, c: Claim) -> Result<Vec<Notification>> {
        let sql = claim_sql(c.channel.is_some());
        match c.channel {
            Some(kind) => self.all(
                &sql,
                params![c.now, c.lease_until, c.limit, kind.as_str()],
                |r| rows::notification(r),
            ),
            None => self.all(&sql, params![c.now, c.lease_until, c.limit], |r| {
                rows::notification(r)
            }),
        }
    }

    async fn due_left(&mut self, channel: crate::model::ChannelKind, now: i64) -> Result<bool> {
        // Asked after most claims: its SQLite text made once.
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| rows::sqlite(rows::sql::DUE_LEFT));
        let due = self.one(&SQL, params![channel.as_str(), now], |r| r.opt_int(0))?;
        Ok(due.flatten().is_some())
    }

    async fn claim_context(&mut self, notes: &[Notification]) -> Result<ClaimContext> {
        let mut ctx = ClaimContext::default();
        for n in notes {
            if let Some(id) = &n.event
                && !ctx.events.iter().any(|e| &e.id == id)
                && let Some(e) =
                    self.one("SELECT payload FROM events WHERE id = ?1", [id], |r| {
                        event_from_json(&r.text(0)?)
                    })?
            {
                ctx.events.push(e);
            }
            let sql = "SELECT 1 FROM accounts WHERE id = ?1 AND paranoid";
            if !ctx.paranoid.contains(&n.account)
                && self.one(sql, [&n.account], |_| Ok(()))?.is_some()
            {
                ctx.paranoid.push(n.account.clone());
            }
            if let Some(address) = super::mail_address(n)
                && !ctx.keys.iter().any(|(a, _)| *a == address)
            {
                let sql = "SELECT armored FROM keys WHERE address = ?1 AND state = 'active'";
                if let Some(k) = self.one(sql, [&address], |r| r.text(0))? {
                    ctx.keys.push((address, k));
                }
            }
            if n.channel == crate::model::ChannelKind::Webhook
                && !ctx.secrets.iter().any(|(id, _)| *id == n.destination)
            {
                let row = self.secrets(&n.destination).await?;
                ctx.secrets.push((n.destination.clone(), row));
            }
        }
        Ok(ctx)
    }

    async fn finish_all(&mut self, done: &[(String, FinishRow)]) -> Result<Vec<bool>> {
        done.iter().map(|(id, f)| self.finish(id, f)).collect()
    }

    async fn next_due(&mut self, after: i64) -> Result<Option<i64>> {
        let sql = rows::sqlite(&rows::sql::NEXT_DUE);
        Ok(self.one(&sql, [after], |r| r.opt_int(0))?.flatten())
    }

    async fn channel_limit(
        &mut self,
        channel: crate::model::ChannelKind,
    ) -> Result<(Option<i64>, Option<i64>)> {
        // The writer holds the database's one write lock: the row is ours.
        let name = channel.as_str();
        self.exec(&rows::sqlite(rows::sql::NEW_CHANNEL_LIMIT), [name])?;
        let map = |r: &Row<'_>| Ok((r.opt_int(0)?, r.opt_int(1)?));
        Ok(self
            .one(&rows::sqlite(rows::sql::CHANNEL_LIMIT), [name], map)?
            .unwrap_or((None, None)))
    }

    async fn channel_pauses(&mut self, now: i64) -> Result<Vec<(String, i64)>> {
        let map = |r: &Row<'_>| Ok((r.text(0)?, r.int(1)?));
        self.all(&rows::sqlite(rows::sql::CHANNEL_PAUSES), [now], map)
    }

    async fn backlog(&mut self) -> Result<(Option<i64>, i64, i64, i64)> {
        let map = |r: &Row<'_>| Ok((r.opt_int(0)?, r.int(1)?, r.int(2)?, r.int(3)?));
        self.one(&rows::sqlite(&rows::sql::BACKLOG), [], map)?
            .ok_or_else(|| StoreError::Unavailable("the backlog query answered no row".into()))
    }

    async fn notifications(&mut self, which: Which<'_>) -> Result<Vec<Notification>> {
        let from = format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE");
        let map = |r: &Row<'_>| rows::notification(r);
        match which {
            Which::One(id) => self.all(&format!("{from} id = ?1"), [id], map),
            Which::OfEvent(id) => {
                self.all(&format!("{from} event = ?1 ORDER BY contact, destination"), [id], map)
            }
            Which::InDigest(id) => self.all(
                &format!("{from} digest = ?1 AND state = 'digested' ORDER BY due_at, id"),
                [id],
                map,
            ),
            // The state in the text (one of `State`'s names), so that the
            // partial index of failed notices serves it.
            Which::InState { state, before, limit } => self.all(
                &format!(
                    "{from} state = '{}' AND decided_at < ?1 ORDER BY decided_at DESC, id DESC LIMIT ?2",
                    state.as_str()
                ),
                params![before, limit],
                map,
            ),
            Which::Awaiting { channel, limit } => self.all(
                &format!("{from} receipt = 'awaiting' AND channel = ?1 ORDER BY sent_at LIMIT ?2"),
                params![channel.as_str(), limit],
                map,
            ),
            Which::ByRef { channel, reference } => self.all(
                &format!("{from} provider_ref = ?1 AND channel = ?2 LIMIT 1"),
                params![reference, channel.as_str()],
                map,
            ),
        }
    }

    async fn redrive(&mut self, id: &str, d: &Decided) -> Result<bool> {
        let sql = "UPDATE notifications SET state = 'pending', reason = 'redriven', due_at = ?2, decided_at = ?2, \
             attempts = 0, paced = 0 WHERE id = ?1 AND state = 'failed' RETURNING id, event, due_at";
        let done = self.all(sql, params![id, to_millis(d.at)], touched)?;
        Ok(self.record_all(&done, d)? > 0)
    }

    async fn requeue_sending(&mut self, d: &Decided) -> Result<usize> {
        let sql = "UPDATE notifications SET state = 'pending', reason = 'requeued', lease_until = NULL \
             WHERE state = 'sending' RETURNING id, event, due_at";
        let done = self.all(sql, [], touched)?;
        self.record_all(&done, d)
    }

    async fn receipt(&mut self, id: &str, r: &ReceiptRow) -> Result<bool> {
        let sql = "UPDATE notifications SET receipt = ?2, receipt_at = ?3, state = ?4, reason = ?5, \
             detail = ?6, decided_at = CASE WHEN ?4 = 'failed' THEN ?3 ELSE decided_at END \
             WHERE id = ?1 AND state = 'sent' AND (receipt IS NULL OR receipt = 'awaiting') \
             RETURNING id, event, due_at";
        let p = params![id, r.status, r.at, r.state.as_str(), r.reason, r.detail];
        let done = self.all(sql, p, touched)?;
        let d = Decided {
            notification: id.to_string(),
            at: crate::model::from_millis(r.at),
            state: r.state,
            reason: r.reason.and_then(crate::model::Reason::parse),
            detail: Some(r.detail.clone()),
            due_at: crate::model::from_millis(r.at),
        };
        Ok(self.record_all(&done, &d)? > 0)
    }

    async fn lock_address(&mut self, _address: &str) -> Result<()> {
        Ok(()) // the one writer serialises everything
    }

    async fn live_keys(&mut self, address: &str) -> Result<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE address = ?1 AND state IN ('active', 'pending') ORDER BY submitted_at"
        );
        self.all(&sql, [address], |r| rows::key(r))
    }

    async fn changes(&mut self, which: ChangeWhich<'_>) -> Result<Vec<Change>> {
        let read = |r: &rusqlite::Row<'_>| rows::change(r);
        match which {
            ChangeWhich::Id(id) | ChangeWhich::Peek(id) => {
                let sql = format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE id = ?1");
                self.all(&sql, [id], read)
            }
            ChangeWhich::Address { address, pending } => {
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes WHERE address = ?1 AND (NOT ?2 OR state = 'pending') \
                     ORDER BY requested_at, id"
                );
                self.all(&sql, params![address, pending], read)
            }
            ChangeWhich::Account { account, pending } => {
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes WHERE account = ?1 AND (NOT ?2 OR state = 'pending') \
                     ORDER BY requested_at, id"
                );
                self.all(&sql, params![account, pending], read)
            }
            ChangeWhich::Due { now, limit } => {
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes WHERE state = 'pending' AND not_before <= ?1 \
                     ORDER BY not_before, id LIMIT ?2"
                );
                self.all(&sql, params![now, limit], read)
            }
        }
    }

    async fn key(&mut self, address: &str, fingerprint: &str) -> Result<Option<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE address = ?1 AND fingerprint = ?2");
        self.one(&sql, [address, fingerprint], |r| rows::key(r))
    }

    async fn upsert_pending_key(&mut self, k: &KeyRecord) -> Result<()> {
        self.exec(
            "INSERT INTO keys (address, fingerprint, armored, state, source, submitted_at, expires_at) \
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6) \
             ON CONFLICT (address, fingerprint) DO UPDATE SET armored = excluded.armored, \
             submitted_at = excluded.submitted_at, expires_at = excluded.expires_at \
             WHERE keys.state = 'pending'",
            params![k.address, k.fingerprint, k.armored, k.source, to_millis(k.submitted_at), k.expires_at.map(to_millis)],
        )?;
        Ok(())
    }

    async fn refresh_key(&mut self, k: &KeyRecord) -> Result<bool> {
        let n = self.exec(
            "UPDATE keys SET armored = ?3, expires_at = ?4 WHERE address = ?1 AND fingerprint = ?2 AND state = 'active'",
            params![k.address, k.fingerprint, k.armored, k.expires_at.map(to_millis)],
        )?;
        Ok(n > 0)
    }

    async fn insert_links(&mut self, links: &[KeyToken]) -> Result<()> {
        for t in links {
            self.exec(
                "INSERT INTO key_tokens (hash, address, fingerprint, purpose, change, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    t.hash,
                    t.address,
                    t.fingerprint,
                    t.purpose.as_str(),
                    t.change,
                    to_millis(t.expires_at)
                ],
            )?;
        }
        Ok(())
    }

    async fn link(&mut self, hash: &str) -> Result<Option<LinkRow>> {
        let sql = format!("SELECT {LINK_COLUMNS} FROM key_tokens WHERE hash = ?1");
        self.one(&sql, [hash], |r| rows::link(r))
    }

    async fn use_link(&mut self, hash: &str, at: i64) -> Result<()> {
        self.exec(
            "UPDATE key_tokens SET used_at = ?2 WHERE hash = ?1",
            params![hash, at],
        )?;
        Ok(())
    }

    async fn move_key(&mut self, m: KeyMove<'_>) -> Result<()> {
        self.exec(
            &rows::sqlite(rows::sql::MOVE_KEY),
            params![m.address, m.fingerprint, m.state, m.at],
        )?;
        Ok(())
    }

    async fn upsert_change(&mut self, c: &Change, at: i64) -> Result<()> {
        let j = rows::change_json(c, at)?;
        self.exec(
            &rows::sqlite(rows::sql::UPSERT_CHANGE),
            params![
                c.id,
                c.kind.as_str(),
                c.account,
                c.address,
                c.state.as_str(),
                c.proof,
                to_millis(c.requested_at),
                c.requested_by,
                to_millis(c.not_before),
                j.approvals,
                c.approvals_needed,
                c.reason,
                j.subject,
                c.proven_current,
                c.proven_new,
                j.decided_at,
                j.code,
                j.factors,
            ],
        )?;
        Ok(())
    }

    async fn insert_veto_link(&mut self, hash: &str, l: &VetoLink) -> Result<()> {
        self.exec(
            "INSERT INTO change_links (hash, change, destination, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, l.change, l.destination, to_millis(l.expires_at)],
        )?;
        Ok(())
    }

    async fn veto_link(&mut self, hash: &str) -> Result<Option<VetoLink>> {
        let sql = rows::sqlite(&rows::sql::veto_link());
        self.one(&sql, [hash], |r| rows::veto_link(r))
    }

    async fn upsert_incident(&mut self, i: &Incident) -> Result<()> {
        self.exec(
            "INSERT INTO incidents (id, account, change, kind, opened_at, state, note, closed_at, closed_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, note = excluded.note, \
             closed_at = excluded.closed_at, closed_by = excluded.closed_by",
            params![
                i.id,
                i.account,
                i.change,
                i.kind,
                to_millis(i.opened_at),
                i.state,
                i.note,
                i.closed_at.map(to_millis),
                i.closed_by
            ],
        )?;
        Ok(())
    }

    async fn upsert_call(&mut self, c: &crate::model::Call) -> Result<()> {
        self.exec(
            "INSERT INTO calls (id, account, contact, staff, state, opened_at, expires_at, staff_code_hash, \
             customer_code_hash, link_hash, staff_confirmed, customer_confirmed, attempts, reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, staff_confirmed = excluded.staff_confirmed, \
             customer_confirmed = excluded.customer_confirmed, attempts = excluded.attempts, reason = excluded.reason",
            params![
                c.id,
                c.account,
                c.contact,
                c.staff,
                c.state.as_str(),
                to_millis(c.opened_at),
                to_millis(c.expires_at),
                c.staff_code.hash,
                c.customer_code.hash,
                c.link_hash,
                c.staff_confirmed,
                c.customer_confirmed,
                c.attempts,
                c.reason
            ],
        )?;
        Ok(())
    }

    async fn calls(&mut self, which: CallWhich<'_>) -> Result<Vec<crate::model::Call>> {
        let read = |r: &rusqlite::Row<'_>| rows::call(r);
        match which {
            CallWhich::Id(id) => self.all(&rows::sqlite(&rows::sql::call_by_id()), [id], read),
            CallWhich::Link(hash) => {
                self.all(&rows::sqlite(&rows::sql::call_by_link()), [hash], read)
            }
            CallWhich::Due { now, limit } => {
                let sql = rows::sqlite(&rows::sql::calls_due());
                self.all(&sql, params![now, limit], read)
            }
            CallWhich::Open {
                account,
                contact,
                now,
            } => {
                let sql = rows::sqlite(&rows::sql::calls_open());
                self.all(&sql, params![account, contact, now], read)
            }
        }
    }

    async fn upsert_assurance(&mut self, a: &crate::model::Assurance) -> Result<()> {
        self.exec(
            "INSERT INTO assurances (id, change, account, address, assurer, ticket, met_on, recorded_at, state, \
             a_hash, link_hash, link_expires_at, t_hash, t_expires_at, attempts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, t_hash = excluded.t_hash, \
             t_expires_at = excluded.t_expires_at, attempts = excluded.attempts",
            params![
                a.id,
                a.change,
                a.account,
                a.address,
                a.assurer,
                a.ticket,
                to_millis(a.met_on),
                to_millis(a.recorded_at),
                a.state.as_str(),
                a.a_hash,
                a.link_hash,
                to_millis(a.link_expires_at),
                a.t_hash,
                a.t_expires_at.map(to_millis),
                a.attempts
            ],
        )?;
        Ok(())
    }

    async fn assurances(
        &mut self,
        which: AssuranceWhich<'_>,
    ) -> Result<Vec<crate::model::Assurance>> {
        let read = |r: &rusqlite::Row<'_>| rows::assurance(r);
        match which {
            AssuranceWhich::Change(id) => {
                let sql = format!(
                    "SELECT {ASSURANCE_COLUMNS} FROM assurances WHERE change = ?1 ORDER BY recorded_at, id"
                );
                self.all(&sql, [id], read)
            }
            AssuranceWhich::Link(hash) => {
                let sql =
                    format!("SELECT {ASSURANCE_COLUMNS} FROM assurances WHERE link_hash = ?1");
                self.all(&sql, [hash], read)
            }
        }
    }

    async fn incidents(&mut self, which: IncidentWhich<'_>) -> Result<Vec<Incident>> {
        let read = |r: &rusqlite::Row<'_>| rows::incident(r);
        match which {
            IncidentWhich::Id(id) => {
                self.all(&rows::sqlite(&rows::sql::incident_by_id()), [id], read)
            }
            IncidentWhich::List {
                open_only,
                account,
                limit,
            } => {
                let sql = rows::sqlite(&rows::sql::incidents());
                self.all(&sql, params![open_only, account, limit], read)
            }
        }
    }

    async fn audit_last(&mut self) -> Result<Option<(i64, String)>> {
        // The one writer serialises the appends.
        self.one(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.int(0)?, r.text(1)?)),
        )
    }

    async fn insert_audit(&mut self, e: &AuditEntry) -> Result<()> {
        let d = &e.draft;
        self.exec(
            "INSERT INTO audit (seq, at, actor, action, account, address, change, ticket, source, outcome, detail, \
             prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                e.seq,
                to_millis(e.at),
                d.actor,
                d.action,
                d.account,
                d.address,
                d.change,
                d.ticket,
                d.source,
                d.outcome,
                d.detail,
                e.prev_hash,
                e.hash
            ],
        )?;
        Ok(())
    }

    async fn checkpoints(&mut self, latest: bool) -> Result<Vec<Checkpoint>> {
        let sql = format!(
            "SELECT * FROM (SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC \
             LIMIT CASE WHEN ?1 THEN 1 ELSE -1 END) ORDER BY seq"
        );
        self.all(&sql, [latest], |r| rows::checkpoint(r))
    }

    async fn insert_checkpoint(&mut self, c: &Checkpoint) -> Result<bool> {
        let n = self.exec(
            "INSERT INTO audit_checkpoints (seq, head, at, signature) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT DO NOTHING",
            params![c.seq, c.head, to_millis(c.at), c.signature],
        )?;
        Ok(n > 0)
    }

    async fn insert_staff(&mut self, st: &Staff) -> Result<bool> {
        let n = self.exec(
            "INSERT INTO staff (name, role, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![st.name, st.role.as_str(), to_millis(st.created_at)],
        )?;
        Ok(n > 0)
    }

    async fn staff(&mut self, name: Option<&str>) -> Result<Vec<Staff>> {
        let sql = format!(
            "SELECT {STAFF_COLUMNS} FROM staff WHERE ?1 IS NULL OR name = ?1 ORDER BY name"
        );
        self.all(&sql, [name], |r| rows::staff(r))
    }

    async fn credential(
        &mut self,
        name: &str,
    ) -> Result<Option<crate::channels::StoredCredential>> {
        let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE name = ?1");
        self.one(&sql, [name], |r| rows::credential(r))
    }

    async fn use_proof(&mut self, p: &ProofUse, now: i64) -> Result<bool> {
        self.exec("DELETE FROM used_proofs WHERE keep_until < ?1", [now])?;
        let sql =
            "INSERT INTO used_proofs (hash, keep_until) VALUES (?1, ?2) ON CONFLICT DO NOTHING";
        Ok(self.exec(sql, params![p.hash, to_millis(p.keep_until)])? > 0)
    }

    async fn window(&mut self, bucket: &str, key: &str) -> Result<Option<Window>> {
        let sql = "SELECT window_start, count FROM throttle WHERE bucket = ?1 AND key = ?2";
        self.one(sql, [bucket, key], |r| rows::window(r))
    }

    async fn put_window(&mut self, bucket: &str, key: &str, w: Window) -> Result<()> {
        self.exec(
            "INSERT INTO throttle (bucket, key, window_start, count) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (bucket, key) DO UPDATE SET window_start = excluded.window_start, count = excluded.count",
            params![bucket, key, to_millis(w.start), i64::from(w.count)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use rusqlite::StatementStatus;

    /// The writer connection's `synchronous` mode, read inside a job.
    fn mode(lite: &mut Lite) -> Result<i64> {
        Ok(lite.0.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    /// The SQLite kci bundles is built as `.cargo/config.toml` says: no
    /// memory statistics (a global mutex around each allocation), no
    /// STAT4, and no memory management, which made every connection's
    /// page cache one cache behind a global mutex that the writer took on
    /// each page it touched (BENCHMARKS.md, stops 30 and 52). A build
    /// that lost the flags (run from outside the repository, where cargo
    /// does not read `.cargo/config.toml`, or with a `LIBSQLITE3_FLAGS` of
    /// its own) is slower without failing anything else.
    #[test]
    fn the_bundled_sqlite_is_built_for_kci() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for unwanted in ["ENABLE_MEMORY_MANAGEMENT", "ENABLE_STAT4"] {
            assert!(
                !options.iter().any(|o| o == unwanted),
                "{unwanted}: {options:?}"
            );
        }
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    /// The log is truncated once nothing changed for 5 s, and at the
    /// latest 10 s after the oldest change it holds, however steadily
    /// writes come; a try a reader was in the way of is not repeated for
    /// 250 ms. Each row: seconds after a start of the changes, of the
    /// latest change and of the last failed try (if any), at which second
    /// the writer looks, and whether it truncates then.
    #[test]
    fn the_log_is_truncated_when_quiet_and_at_the_latest_ten_seconds_after_a_change() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        type Row = (Option<(f64, f64)>, Option<f64>, f64, bool);
        let rows: &[Row] = &[
            (None, None, 100.0, false),                  // nothing changed
            (Some((0.0, 0.0)), None, 4.9, false),        // not quiet long enough
            (Some((0.0, 0.0)), None, 5.0, true),         // quiet
            (Some((0.0, 9.5)), None, 9.9, false),        // a steady trickle...
            (Some((0.0, 9.5)), None, 10.0, true),        // ...still gets it
            (Some((0.0, 9.9)), Some(10.0), 10.1, false), // a reader was in the way
            (Some((0.0, 9.9)), Some(10.0), 10.25, true), // tried again
            (Some((0.0, 1.0)), Some(2.0), 6.0, true),    // quiet after a failed try
        ];
        for &(changes, tried, look, due) in rows {
            let clock = LogClock {
                changes: changes.map(|(oldest, latest)| (at(oldest), at(latest))),
                tried: tried.map(at),
            };
            assert_eq!(clock.due(at(look)), due, "{changes:?} {tried:?} at {look}");
        }
        // The clock itself: the oldest change stays, the latest moves; a
        // failed try is remembered, a truncation starts afresh.
        let mut clock = LogClock::default();
        clock.changed(at(0.0));
        clock.changed(at(3.0));
        assert_eq!(clock.changes, Some((at(0.0), at(3.0))));
        clock.truncated(false, at(10.0));
        assert_eq!(clock.tried, Some(at(10.0)));
        assert_eq!(clock.changes, Some((at(0.0), at(3.0))));
        clock.truncated(true, at(10.3));
        assert_eq!(clock, LogClock::default());
    }

    /// A migrated store in a file of its own (readers get connections of
    /// their own, unlike `:memory:`), kept while the directory is.
    async fn on_disk() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let store = SqliteStore::open(path.to_str().unwrap()).unwrap();
        store.migrate().await.unwrap();
        (dir, store)
    }

    /// The decision that made a notice is written in the notice's row,
    /// not as a row of `decisions` (migration 28): an ingest writes no
    /// decision row, and the history reads it from the notice. A notice
    /// stored before migration 28 (no `first_*`, its first decision a row
    /// of `decisions`) reads the same.
    #[tokio::test]
    async fn a_notices_first_decision_is_read_from_its_row_or_from_before() {
        use crate::model::State;
        use crate::store::EventStore;
        use crate::store::conformance::{event, planner, seed};
        let (dir, store) = on_disk().await;
        seed(&store).await;
        let at = chrono::Utc::now();
        store
            .ingest(vec![event("e1", "A1", "L1", at)], planner())
            .await
            .unwrap();
        let lite = Lite(open_conn(dir.path().join("kci.db").to_str(), Role::Reader).unwrap());
        let count = |sql: &str| -> i64 { lite.0.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM decisions"), 0);
        assert_eq!(
            count("SELECT COUNT(*) FROM notifications WHERE event = 'e1' AND first_at IS NOT NULL"),
            2
        );
        let now = store.history("e1").await.unwrap();
        assert_eq!(now.len(), 2);
        assert!(now.iter().all(|d| d.state == State::Pending));
        // As a store migrated from before 28 holds it.
        lite.0
            .execute_batch(
                "INSERT INTO decisions (notification, event, at, state, reason, detail, due_at) \
                   SELECT id, event, first_at, first_state, first_reason, first_detail, first_due_at \
                   FROM notifications ORDER BY rowid; \
                 UPDATE notifications SET first_at = NULL, first_state = NULL, first_reason = NULL, \
                   first_detail = NULL, first_due_at = NULL;",
            )
            .unwrap();
        assert_eq!(store.history("e1").await.unwrap(), now);
    }

    /// The writer folds its log into the database once it is 1,000 pages
    /// long, SQLite's own rule, and times each fold
    /// (`kci_store_fold_seconds`); a shorter log is not folded.
    #[tokio::test]
    async fn the_writer_folds_a_long_log_and_times_the_fold() {
        let (_dir, store) = on_disk().await;
        let metrics = crate::metrics::Metrics::new().with_store(&store);
        let folds = || metrics.value_of("kci_store_fold_seconds_count");
        // Pages of 4 KiB, each row a page of its own in the log.
        let write = |rows: i64| -> Job<Lite, ()> {
            Box::new(move |l| {
                Box::pin(async move {
                    l.0.execute(
                        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
                         INSERT INTO scratch SELECT randomblob(4000) FROM n",
                        [rows],
                    )?;
                    Ok(())
                })
            })
        };
        let table: Job<Lite, ()> = Box::new(|l| {
            Box::pin(async move { Ok(l.0.execute_batch("CREATE TABLE scratch (x BLOB)")?) })
        });
        store.backend.write(table).await.unwrap();
        let before = folds();
        store.backend.write(write(100)).await.unwrap();
        assert_eq!(
            folds(),
            before,
            "a log of a few hundred pages (the migrations' and these 100) is not folded"
        );
        store.backend.write(write(1_200)).await.unwrap();
        assert_eq!(
            folds(),
            before + 1,
            "one fold, inside the commit that made it due"
        );
    }

    /// The writer writes a commit's log frames with one call (`log_vfs`);
    /// a reader's connection would make two a page.
    #[test]
    fn the_writer_writes_its_log_through_kci_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let commit = |conn: &Connection| -> u64 {
            let tx = conn.unchecked_transaction().unwrap();
            for i in 0..50 {
                tx.execute("INSERT INTO t (v) VALUES (zeroblob(1000 + ?1))", [i])
                    .unwrap();
            }
            let before = log_vfs::writes_so_far();
            tx.commit().unwrap();
            log_vfs::writes_so_far() - before
        };
        let writer = open_conn(path.to_str(), Role::Writer).unwrap();
        writer
            .execute_batch("CREATE TABLE t (v BLOB); PRAGMA wal_autocheckpoint = 0")
            .unwrap();
        let reader = open_conn(path.to_str(), Role::Reader).unwrap();
        reader
            .execute_batch("PRAGMA wal_autocheckpoint = 0")
            .unwrap();
        assert_eq!(commit(&writer), 1);
        assert!(commit(&reader) >= 24);
    }

    /// A full chunk of notice-sized rows ([`ROWS_PER_INSERT`] rows of
    /// [`NOTICE_COLUMNS`] text values) binds all its values within the
    /// writer's lookaside; a reader's connection, with SQLite's default
    /// lookaside, runs out of it and falls back to `malloc`.
    #[test]
    fn the_writers_lookaside_holds_a_full_chunks_bound_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let columns: Vec<String> = (0..NOTICE_COLUMNS).map(|c| format!("c{c}")).collect();
        let writer = open_conn(path.to_str(), Role::Writer).unwrap();
        writer
            .execute_batch(&format!("CREATE TABLE t ({})", columns.join(", ")))
            .unwrap();
        let reader = open_conn(path.to_str(), Role::Reader).unwrap();
        // Allocations lookaside could have served but had no free slot
        // (SQLite counts them in the "highwater" value), read and reset.
        let misses = |conn: &Connection| -> i32 {
            let (mut now, mut most) = (0, 0);
            // SAFETY: an open connection's handle and two live integers.
            let rc = unsafe {
                rusqlite::ffi::sqlite3_db_status(
                    conn.handle(),
                    rusqlite::ffi::SQLITE_DBSTATUS_LOOKASIDE_MISS_FULL,
                    &mut now,
                    &mut most,
                    1,
                )
            };
            assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
            most
        };
        let chunk = RowsInsert::new("INSERT INTO t", NOTICE_COLUMNS, "");
        let insert = |conn: &Connection| {
            let sql = chunk.sql(ROWS_PER_INSERT);
            let values: Vec<String> = (0..ROWS_PER_INSERT * NOTICE_COLUMNS)
                .map(|i| format!("{i:0>36}{}", "x".repeat(i % 300)))
                .collect();
            let tx = conn.unchecked_transaction().unwrap();
            misses(conn);
            tx.prepare_cached(&sql)
                .unwrap()
                .execute(rusqlite::params_from_iter(&values))
                .unwrap();
            let missed = misses(conn);
            tx.rollback().unwrap();
            missed
        };
        assert_eq!(insert(&writer), 0);
        assert!(
            insert(&reader) > 0,
            "a reader's lookaside is SQLite's default"
        );
    }

    /// The writer's page cache is the smaller one; readers keep theirs.
    #[tokio::test]
    async fn the_writer_keeps_a_smaller_page_cache_than_the_readers() {
        let (_dir, store) = on_disk().await;
        let cache = || -> Job<Lite, i64> {
            Box::new(|l| {
                Box::pin(async move { Ok(l.0.query_row("PRAGMA cache_size", [], |r| r.get(0))?) })
            })
        };
        assert_eq!(
            store.backend.write(cache()).await.unwrap(),
            -WRITER_CACHE_KIB
        );
        assert_eq!(store.backend.read(cache()).await.unwrap(), -32_000);
    }

    /// A relaxed write (a claim's lease) commits without waiting for the
    /// disk (`NORMAL` = 1); any other write does (`FULL` = 2), also after
    /// a relaxed one. Queued together, the relaxed ones commit first on
    /// their own, then the others.
    #[tokio::test]
    async fn relaxed_writes_commit_apart_without_waiting_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let path = path.to_str().unwrap();
        let store = SqliteStore::open(path).unwrap();
        store.migrate().await.unwrap();
        let read_mode = || -> Job<Lite, i64> { Box::new(|l| Box::pin(async move { mode(l) })) };
        assert_eq!(store.backend.write(read_mode()).await.unwrap(), 2);
        assert_eq!(store.backend.write_relaxed(read_mode()).await.unwrap(), 1);
        assert_eq!(store.backend.write_relaxed(read_mode()).await.unwrap(), 1);
        assert_eq!(store.backend.write(read_mode()).await.unwrap(), 2);
        // Again, each pragma now from the writer's statement cache.
        assert_eq!(store.backend.write_relaxed(read_mode()).await.unwrap(), 1);
        assert_eq!(store.backend.write(read_mode()).await.unwrap(), 2);

        // The store's claim is a relaxed write: queued behind a job that
        // holds the writer, the claim and a relaxed job reading the mode
        // commit as one group, which would be FULL were the claim not
        // relaxed. (Should the claim come late and make a group of its
        // own, the reading is 1 either way: this can pass wrongly on a
        // stalled machine, never fail wrongly.)
        let store = std::sync::Arc::new(store);
        let (release, held) = mpsc::channel::<()>();
        let hold = {
            let s = store.clone();
            tokio::spawn(async move {
                s.backend
                    .write_relaxed(Box::new(move |_| {
                        Box::pin(async move {
                            let _ = held.recv();
                            Ok(())
                        })
                    }))
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let claim = {
            let s = store.clone();
            tokio::spawn(async move {
                let now = chrono::Utc::now();
                crate::store::QueueStore::claim_due(&*s, now, now, 10).await
            })
        };
        let read = {
            let s = store.clone();
            tokio::spawn(async move { s.backend.write_relaxed(read_mode()).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release.send(()).unwrap();
        hold.await.unwrap().unwrap();
        assert!(claim.await.unwrap().unwrap().is_empty());
        assert_eq!(read.await.unwrap().unwrap(), 1);

        // Queued together, a relaxed job and a durable one on each side
        // of it: the relaxed one commits first, without waiting.
        let mut lite = Lite(open_conn(Some(path), Role::Writer).unwrap());
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let job = |durable: bool| {
            let seen = seen.clone();
            WriterJob {
                durable,
                run: Box::new(move |lite: &mut Lite, _| {
                    seen.lock().unwrap().push(mode(lite).unwrap());
                    Ran {
                        failed: false,
                        finish: Box::new(|commit| commit.unwrap()),
                    }
                }),
            }
        };
        let (tx, rx) = mpsc::channel();
        tx.send(job(false)).unwrap();
        tx.send(job(true)).unwrap();
        let mut full = true;
        commit_group(&mut lite, job(true), &rx, &mut full);
        assert_eq!(*seen.lock().unwrap(), [1, 2, 2]);
        assert!(full);
        tx.send(job(false)).unwrap();
        commit_group(&mut lite, job(false), &rx, &mut full);
        assert_eq!(*seen.lock().unwrap(), [1, 2, 2, 1, 1]);
        assert!(!full);
    }

    /// A failing job takes back everything it wrote and nothing else:
    /// alone in its group (no savepoint: the group's transaction is
    /// rolled back), first, between or last among others (its savepoint
    /// is), and the others commit.
    #[test]
    fn a_failing_job_takes_back_what_it_wrote_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let mut lite = Lite(open_conn(path.to_str(), Role::Writer).unwrap());
        lite.0.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        // Inserts `x`, then fails if asked to, after its write.
        fn inserting(x: i64, fails: bool) -> Job<Lite, i64> {
            Box::new(move |lite| {
                Box::pin(async move {
                    lite.exec("INSERT INTO t (x) VALUES (?1)", [x])?;
                    if fails {
                        return Err(StoreError::Unavailable(format!("job {x} failed")));
                    }
                    Ok(x)
                })
            })
        }
        let job = |x: i64, fails: bool| writer_job(inserting(x, fails), true);
        let groups: &[&[(i64, bool)]] = &[
            &[(1, false)],
            &[(2, true)],
            &[(3, true), (4, false)],
            &[(5, false), (6, true), (7, false)],
            &[(8, false), (9, true)],
            &[(10, true), (11, true)],
        ];
        let mut full = true;
        for group in groups {
            let (tx, rx) = mpsc::channel();
            let mut answers = Vec::new();
            let mut jobs = group.iter().map(|&(x, fails)| {
                let (job, answer) = job(x, fails);
                answers.push((x, fails, answer));
                job
            });
            let first = jobs.next().unwrap();
            jobs.for_each(|job| tx.send(job).unwrap());
            commit_group(&mut lite, first, &rx, &mut full);
            for (x, fails, mut answer) in answers {
                let got = answer.try_recv().unwrap();
                assert_eq!(got.is_err(), fails, "job {x}: {got:?}");
            }
        }
        let kept: Vec<i64> = lite
            .0
            .prepare("SELECT x FROM t ORDER BY x")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|x| x.unwrap())
            .collect();
        assert_eq!(kept, [1, 4, 5, 7, 8]);
        // And the connection is out of any transaction.
        assert!(lite.0.is_autocommit());
    }

    /// A connection of its own to a new, migrated database file (kept
    /// while the directory is).
    async fn migrated() -> (tempfile::TempDir, Lite) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let path = path.to_str().unwrap();
        SqliteStore::open(path).unwrap().migrate().await.unwrap();
        let lite = Lite(open_conn(Some(path), Role::Reader).unwrap());
        (dir, lite)
    }

    /// Flap counting and pairing's latest event read events through
    /// `events_key`, the partial index of keyed events (migration 26):
    /// each query repeats the index's condition. Without it SQLite would
    /// read every event of the account.
    #[tokio::test]
    async fn events_are_looked_up_by_key_through_the_partial_index() {
        let (_dir, lite) = migrated().await;
        for sql in [LATEST_OF_TYPE, KEYED_SINCE] {
            let mut plan = lite
                .0
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let mut rows = plan.raw_query();
            let mut details = Vec::new();
            while let Some(r) = rows.next().unwrap() {
                details.push(r.get::<_, String>(3).unwrap());
            }
            let events: Vec<&String> = details
                .iter()
                .filter(|d| d.contains(" events") || d.contains("events_key"))
                .collect();
            assert!(
                !events.is_empty() && events.iter().all(|d| d.contains("INDEX events_key")),
                "{sql}: {details:?}"
            );
        }
    }

    /// A batch's events go in 32 to a statement when none is stored yet;
    /// a statement that meets a stored id (or one id twice) is taken back
    /// whole and its events written one by one: each is said written or
    /// not as one statement apiece would say.
    #[tokio::test]
    async fn a_batchs_events_meeting_a_stored_id_are_written_one_by_one() {
        let (_dir, mut lite) = migrated().await;
        let at = chrono::Utc::now();
        let mut events: Vec<Event> = (0..70)
            .map(|i| crate::store::conformance::event(&format!("e{i}"), "A1", "L1", at))
            .collect();
        // The second chunk holds e40 twice.
        events[45].id = "e40".into();
        let payloads: Vec<String> = events.iter().map(|e| event_json(e).unwrap()).collect();
        let row = |i: usize| NewEvent {
            event: &events[i],
            payload: &payloads[i],
            notifications: 0,
            keyed: false,
        };
        assert!(lite.insert_event(row(7)).await.unwrap());
        let rows: Vec<NewEvent<'_>> = (0..70).map(row).collect();
        let written = lite.insert_events(&rows).await.unwrap();
        let expected: Vec<bool> = (0..70).map(|i| i != 7 && i != 45).collect();
        assert_eq!(written, expected);
        let stored: i64 = lite
            .0
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 69);
        // A chunk of new events: one statement, every one written.
        let fresh: Vec<Event> = (0..32)
            .map(|i| crate::store::conformance::event(&format!("f{i}"), "A1", "L1", at))
            .collect();
        let payloads: Vec<String> = fresh.iter().map(|e| event_json(e).unwrap()).collect();
        let rows: Vec<NewEvent<'_>> = fresh
            .iter()
            .zip(&payloads)
            .map(|(event, payload)| NewEvent {
                event,
                payload,
                notifications: 0,
                keyed: false,
            })
            .collect();
        assert!(lite.insert_new_events(&rows).unwrap());
        let back = lite.event("f31").await.unwrap().expect("f31 is stored");
        assert_eq!(back.id, "f31");
    }

    /// The next due time and the backlog gauge read the front of each
    /// channel's range of `notifications_channel_due` (migration 27
    /// dropped the index on `due_at` alone): their work does not grow
    /// with the notices held for later. Counted in SQLite's virtual
    /// machine steps, which are the same on every run.
    #[tokio::test]
    async fn the_next_due_time_is_read_without_walking_the_backlog() {
        async fn steps(held: usize) -> (i32, i32) {
            let (_dir, lite) = migrated().await;
            let insert = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?1) \
                 INSERT INTO notifications (id, account, contact, destination, uri, channel, type, key, \
                   priority, state, due_at, decided_at, attempts, timezone, paced) \
                 SELECT printf('n-%08d', i), 'A1', 'C1', 'D1', 'mailto:a@example.com', \
                   CASE WHEN i % 2 = 0 THEN 'email' ELSE 'webhook' END, 'line.down', \
                   'L' || i, 1, 'pending', 4000000000000 + i, 0, 0, 'UTC', 0 FROM c";
            assert_eq!(lite.0.execute(insert, [held]).unwrap(), held);
            let mut next = lite.0.prepare(&rows::sqlite(&rows::sql::NEXT_DUE)).unwrap();
            let due: Option<i64> = next.query_row([1_000], |r| r.get(0)).unwrap();
            assert_eq!(due, Some(4_000_000_000_001));
            let mut backlog = lite.0.prepare(&rows::sqlite(&rows::sql::BACKLOG)).unwrap();
            let oldest: Option<i64> = backlog.query_row([], |r| r.get(0)).unwrap();
            assert_eq!(oldest, Some(4_000_000_000_001));
            (
                next.get_status(StatementStatus::VmStep),
                backlog.get_status(StatementStatus::VmStep),
            )
        }
        let (few, more) = (steps(300).await, steps(3_000).await);
        // The same work for ten times the notices held (a few hundred
        // steps); a walk of the index would take thousands more.
        assert!(
            more.0 < few.0 + 100,
            "next due: {few:?} with 300, {more:?} with 3,000"
        );
        assert!(
            more.1 < few.1 + 100,
            "backlog: {few:?} with 300, {more:?} with 3,000"
        );
    }

    /// A statement run again with other values keeps its plan: SQLite
    /// does not prepare it anew (the query planner stability guarantee,
    /// see `open_conn`). Without it, every claim was prepared again, as
    /// its `LIMIT` differs from one call to the next.
    #[tokio::test]
    async fn a_claim_is_not_prepared_again_for_other_values() {
        let (_dir, mut lite) = migrated().await;
        for (now, limit) in [(1_000, 1), (2_000, 7), (3_000, 64)] {
            let claim = Claim {
                channel: Some(crate::model::ChannelKind::Email),
                now,
                lease_until: now + 60_000,
                limit,
            };
            lite.claim(claim).await.unwrap();
        }
        let stmt = lite.0.prepare_cached(&claim_sql(true)).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
        assert_eq!(stmt.get_status(StatementStatus::Run), 3);
    }

    /// An account's destinations, read at every planned event, come in
    /// their index's order: SQLite sorts nothing (it counts a sort even
    /// when there is no row to sort).
    #[tokio::test]
    async fn an_accounts_destinations_are_read_without_a_sort() {
        let (_dir, mut lite) = migrated().await;
        assert!(lite.destinations("A1").await.unwrap().is_empty());
        let stmt = lite.0.prepare_cached(&destinations_sql()).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::Run), 1);
        assert_eq!(stmt.get_status(StatementStatus::Sort), 0);
    }

    /// A claim asks, for each candidate, whether an earlier notice of its
    /// key to the same destination is still waiting (`rows::sql::in_turn`).
    /// Through an index in (account, key, type) order alone, each blocked
    /// candidate read the table row of every notice its key holds for later
    /// before it met the due one in its way: a key holding 5,000 for later
    /// and 1,000 due made one claim 1.3 s of the writer's time (BENCHMARKS.md,
    /// stop 37). With the state, due time and reason in the index (migration
    /// 22) a blocked candidate met the due one before its key's held ones,
    /// but one that nothing blocks — a key's only due notice, the common
    /// case — still walked every entry its key held. Asked as two
    /// questions (migration 24), each a range of its own index, a key's
    /// held notices are in neither: the claim's work does not grow with
    /// them. Also after an `ANALYZE`, which without `INDEXED BY` brought
    /// the walk back (69,637 steps with 10 due, 555,297 with 80). Counted
    /// in SQLite's virtual machine steps, which are the same on every run.
    #[tokio::test]
    async fn a_keys_notices_held_for_later_do_not_slow_each_claim_of_its_due_ones() {
        async fn claim_steps(held: usize, due: usize, analyzed: bool) -> i32 {
            let (_dir, lite) = migrated().await;
            // Ids in the order planned: the held ones first.
            let insert = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?1 + ?2) \
                 INSERT INTO notifications (id, account, contact, destination, uri, channel, type, key, \
                   priority, state, due_at, decided_at, attempts, timezone, paced) \
                 SELECT printf('n-%08d', i), 'A1', 'C1', 'D1', 'mailto:a@example.com', 'email', 'line.down', \
                   'L1', 1, 'pending', CASE WHEN i <= ?1 THEN 4000000000000 ELSE 1 END, 0, 0, 'UTC', 0 FROM c";
            let rows = lite.0.execute(insert, params![held, due]).unwrap();
            assert_eq!(rows, held + due);
            if analyzed {
                // What an operator's `ANALYZE` leaves: statistics of one
                // key holding every notice.
                lite.0.execute_batch("ANALYZE").unwrap();
            }
            // The lane's claim, as `kci serve` makes it.
            let mut stmt = lite.0.prepare(&claim_sql(true)).unwrap();
            let claimed = stmt
                .query_map(params![1000, 2000, 64, "email"], |_| Ok(()))
                .unwrap()
                .count();
            // One at a time for a key and destination: the earliest due.
            assert_eq!(claimed, 1);
            stmt.get_status(StatementStatus::VmStep)
        }
        for analyzed in [false, true] {
            let few_due = claim_steps(300, 10, analyzed).await;
            let many_due = claim_steps(300, 80, analyzed).await;
            // Each due notice more is a candidate that meets the one due
            // before it at once: under 100 steps each (45 here; through
            // the (account, key, type) index each walked all 300 held rows).
            assert!(
                many_due - few_due < 70 * 100,
                "{few_due} steps with 10 due, {many_due} with 80 (analyzed: {analyzed})"
            );
            // Ten times the held notices: the same work (764 steps here).
            // Through migration 22's index the candidate nothing blocks
            // walked every entry its key held: 4,351 steps with 300 held,
            // 36,751 with 3,000.
            let more_held = claim_steps(3_000, 10, analyzed).await;
            assert!(
                more_held < few_due + 100,
                "{few_due} steps with 300 held, {more_held} with 3,000 (analyzed: {analyzed})"
            );
        }
    }

    /// Pairing's search and a cancellation that meets a notice folded
    /// into a digest ask after that digest alone: their work does not
    /// grow with the notices the hub holds for later (before migration
    /// 23 each built a list of every pending notice). Counted in SQLite's
    /// virtual machine steps, which are the same on every run.
    #[tokio::test]
    async fn pairing_and_cancelling_a_folded_notice_do_not_read_the_backlog() {
        async fn steps(backlog: usize) -> (i32, i32) {
            let (_dir, lite) = migrated().await;
            let held = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?1) \
                 INSERT INTO notifications (id, account, contact, destination, uri, channel, type, key, \
                   priority, state, due_at, decided_at, attempts, timezone, paced) \
                 SELECT printf('h-%08d', i), 'A' || (i % 50), 'C1', 'D1', 'mailto:a@example.com', 'email', \
                   'line.down', 'L' || i, 1, 'pending', 4000000000000, 0, 0, 'UTC', 0 FROM c";
            assert_eq!(lite.0.execute(held, [backlog]).unwrap(), backlog);
            let folded = "INSERT INTO notifications (id, event, account, contact, destination, uri, channel, \
                   type, key, priority, state, due_at, decided_at, attempts, timezone, paced, digest) \
                 VALUES ('d1', NULL, 'A1', 'C1', 'D1', 'mailto:a@example.com', 'email', 'kci.digest', \
                   'L1', 1, 'pending', 4000000000000, 0, 0, 'UTC', 0, NULL), \
                   ('n1', 'e1', 'A1', 'C1', 'D1', 'mailto:a@example.com', 'email', 'line.down', \
                   'L1', 1, 'digested', 4000000000000, 0, 0, 'UTC', 0, 'd1')";
            lite.0.execute(folded, []).unwrap();
            let event = "INSERT INTO events (id, account, type, key, received_at, notifications, payload) \
                 VALUES ('e1', 'A1', 'line.down', 'L1', 0, 1, '{}')";
            lite.0.execute(event, []).unwrap();

            let mut related = lite.0.prepare(&related_waiting_sql()).unwrap();
            let found: Vec<String> = related
                .query_map(params!["A1", "L1", "line.down"], |r| r.get(0))
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
            assert_eq!(found, ["n1"]);
            let cancel = format!(
                "UPDATE notifications SET state = 'cancelled' WHERE {} RETURNING id",
                cancellable(By::Event, "?1")
            );
            let mut cancel = lite.0.prepare(&cancel).unwrap();
            let cancelled: Vec<String> = cancel
                .query_map(["e1"], |r| r.get(0))
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
            assert_eq!(cancelled, ["n1"]);
            (
                related.get_status(StatementStatus::VmStep),
                cancel.get_status(StatementStatus::VmStep),
            )
        }
        let small = steps(100).await;
        let large = steps(3_000).await;
        // Thirty times the backlog, the same work (through the old list:
        // thirty times as much for both).
        assert!(
            large.0 < small.0 + 50 && large.1 < small.1 + 50,
            "steps (pairing, cancel): {small:?} with 100 held, {large:?} with 3,000"
        );
    }

    /// An event planned for a destination that takes digests finds the
    /// digest open there among the open digests alone: the destination's
    /// history does not slow it (searched by destination, it walked every
    /// notice the destination ever had, in due order).
    #[tokio::test]
    async fn a_destinations_history_does_not_slow_finding_its_open_digest() {
        async fn steps(history: usize) -> i32 {
            let (_dir, lite) = migrated().await;
            let sent = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?1) \
                 INSERT INTO notifications (id, account, contact, destination, uri, channel, type, key, \
                   priority, state, due_at, decided_at, attempts, timezone, paced) \
                 SELECT printf('s-%08d', i), 'A1', 'C1', 'D1', 'mailto:a@example.com', 'email', \
                   'line.down', 'L1', 1, 'sent', i, 0, 1, 'UTC', 0 FROM c \
                 UNION ALL SELECT 'd1', 'A1', 'C1', 'D1', 'mailto:a@example.com', 'email', 'kci.digest', \
                   'L1', 1, 'pending', 4000000000000, 0, 0, 'UTC', 0";
            assert_eq!(lite.0.execute(sent, [history]).unwrap(), history + 1);
            let mut stmt = lite.0.prepare(PENDING_DIGEST).unwrap();
            let found: Vec<String> = stmt
                .query_map(["A1", "D1"], |r| r.get(0))
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
            assert_eq!(found, ["d1"]);
            stmt.get_status(StatementStatus::VmStep)
        }
        let (short, long) = (steps(100).await, steps(3_000).await);
        assert!(
            long < short + 20,
            "{short} steps after 100 notices, {long} after 3,000"
        );
    }
}
