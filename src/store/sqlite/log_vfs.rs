//! The writer's log written a transaction at a time: `kci-wal`, SQLite's
//! own `unix` VFS with one change to the `-wal` file.
//!
//! SQLite appends a transaction to its write-ahead log a frame at a time,
//! and each frame with two `write` calls: the frame's 24-byte header, then
//! the page (`walWriteOneFrame`). A commit of a few single events touches
//! about twenty pages (each table's and index's last leaf, and now and then
//! the pages above them), so it made about forty system calls before its
//! sync, a batch's commit hundreds. Through
//! this VFS the `-wal` file gathers what is appended and writes it with one
//! call (one per 124 KiB) when the transaction's commit frame is complete.
//!
//! What stays as SQLite wrote it:
//! * Only appends are gathered: a write that continues what is gathered, or
//!   one at or past the furthest point this handle wrote (or at 0: the
//!   header of a restarted log). A write anywhere else (a frame overwritten
//!   in place, a checksum rewritten) first writes what was gathered, then
//!   goes through as it came.
//! * Every other call on the file (read, sync, size, truncate, file
//!   control, close) first writes what was gathered: SQLite never finds
//!   its file without what it wrote, whether it reads back a spilled
//!   frame, checkpoints or syncs at commit.
//! * A commit reaches other connections through the wal-index, which
//!   SQLite updates after writing the commit frame, and that frame's page
//!   writes what was gathered: the transaction is in the file before any
//!   reader can look for it, and before the process could die believing
//!   it committed, whether or not the commit syncs (`synchronous =
//!   NORMAL` groups do not).
//! * A failed write of what was gathered fails the call that made it, as
//!   SQLite's own write would have failed; the transaction rolls back and
//!   SQLite writes its frames again at the same place.
//! * Gathering needs SQLite's default assumption that writing a sector
//!   does not disturb its neighbours (`SQLITE_IOCAP_POWERSAFE_OVERWRITE`):
//!   without it SQLite pads a commit to a sector with syncs between
//!   writes, and the file is written through unchanged.
//!
//! The main database file, its shared-memory index and every other file
//! are the `unix` VFS's own objects. Only the writer connection uses this
//! VFS; readers read the same files through `unix`.

use rusqlite::ffi;
use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

/// The VFS's registered name.
pub const NAME: &CStr = c"kci-wal";

/// A log frame's header (`WAL_FRAME_HDRSIZE`). Bytes 4..8 of a commit
/// frame's header hold the database's size in pages after the commit;
/// other frames have 0 there.
const FRAME_HEADER: usize = 24;

/// At most this much is held before it is written anyway: bounds what a
/// large transaction holds beside SQLite's own page cache.
const MOST_GATHERED: usize = 4 << 20;

/// Where the inner (`unix`) file starts in the file object SQLite
/// allocates (`szOsFile` bytes, 8-aligned), after ours.
const HEAD: usize = std::mem::size_of::<LogFile>().next_multiple_of(16);

/// The file object SQLite holds for the `-wal` file: ours first, the
/// `unix` VFS's own after it, at `HEAD`.
#[repr(C)]
struct LogFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    log: *mut Gathered,
}

/// What is appended but not yet written.
#[derive(Default)]
struct Gathered {
    /// Whether appends are gathered at all (see the module's last point).
    enabled: bool,
    /// The file offset of `bytes[0]`.
    start: i64,
    bytes: Vec<u8>,
    /// The furthest point this handle wrote or gathered since it was
    /// opened, cut or restarted: a write from here on is an append.
    furthest: i64,
    /// The last append was a commit frame's header: the page right after
    /// it completes the transaction.
    commit_next: bool,
}

/// Registers `kci-wal` over the process's default VFS, once, and returns
/// its name, or SQLite's code when it could not.
pub fn register() -> Result<&'static CStr, c_int> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    let rc = *REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find` returns SQLite's static default VFS
        // (or null); the copy made from it is leaked, so it outlives
        // every connection, as `sqlite3_vfs_register` requires.
        unsafe {
            let parent = ffi::sqlite3_vfs_find(std::ptr::null());
            if parent.is_null() {
                return ffi::SQLITE_ERROR;
            }
            let mut vfs = *parent;
            vfs.szOsFile = (*parent).szOsFile + HEAD as c_int;
            vfs.zName = NAME.as_ptr();
            vfs.pAppData = parent.cast::<c_void>();
            vfs.pNext = std::ptr::null_mut();
            vfs.xOpen = Some(open);
            ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0)
        }
    });
    if rc == ffi::SQLITE_OK {
        Ok(NAME)
    } else {
        Err(rc)
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Opens a file through the parent VFS; the `-wal` file gets `METHODS`
/// over the parent's file, every other file is the parent's own.
unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes this VFS (whose `pAppData` is the parent it
    // was copied from) and a zeroed file object of `szOsFile` bytes, room
    // for ours and the parent's after it at `HEAD`.
    unsafe {
        let parent = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
        let Some(parent_open) = (*parent).xOpen else {
            return ffi::SQLITE_ERROR;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return parent_open(parent, name, file, flags, out_flags);
        }
        let inner = file.cast::<u8>().add(HEAD).cast::<ffi::sqlite3_file>();
        let rc = parent_open(parent, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // SQLite closes a file whose open failed only if its methods
            // are set: ours are not; close the parent's if it set them.
            if let Some(close) = methods(inner).and_then(|m| m.xClose) {
                close(inner);
            }
            return rc;
        }
        let caps = methods(inner)
            .and_then(|m| m.xDeviceCharacteristics)
            .map_or(0, |f| f(inner));
        let this = file.cast::<LogFile>();
        (*this).inner = inner;
        (*this).log = Box::into_raw(Box::new(Gathered {
            enabled: caps & ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE != 0,
            ..Gathered::default()
        }));
        (*this).base.pMethods = &METHODS;
        rc
    }
}

/// The parent's methods of `file`, if set.
///
/// # Safety
/// `file` points to a file object whose `pMethods` is null or valid.
unsafe fn methods<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a ffi::sqlite3_io_methods> {
    // SAFETY: as the caller promises.
    unsafe { (*file).pMethods.as_ref() }
}

/// Our state and the parent's file and methods behind a `-wal` file.
///
/// # Safety
/// `file` is a file object `open` set `METHODS` on, not yet closed.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (
    &'a mut Gathered,
    *mut ffi::sqlite3_file,
    &'a ffi::sqlite3_io_methods,
) {
    // SAFETY: `open` set `inner` to an open parent file and `log` to a
    // live box; SQLite calls a file's methods from one thread at a time.
    unsafe {
        let this = file.cast::<LogFile>();
        let inner = (*this).inner;
        let m = (*inner).pMethods.as_ref().unwrap_or(&METHODS_NONE);
        (&mut *(*this).log, inner, m)
    }
}

/// Never used: the parent always sets its methods on a file it opened.
static METHODS_NONE: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 0,
    xClose: None,
    xRead: None,
    xWrite: None,
    xTruncate: None,
    xSync: None,
    xFileSize: None,
    xLock: None,
    xUnlock: None,
    xCheckReservedLock: None,
    xFileControl: None,
    xSectorSize: None,
    xDeviceCharacteristics: None,
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Writes `bytes` at `offset` through the parent.
///
/// # Safety
/// `inner` is the parent's open file and `m` its methods.
unsafe fn write_through(
    inner: *mut ffi::sqlite3_file,
    m: &ffi::sqlite3_io_methods,
    bytes: &[u8],
    offset: i64,
) -> c_int {
    let Some(write) = m.xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let Ok(amount) = c_int::try_from(bytes.len()) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: as the caller promises; `bytes` is valid for its length.
    unsafe { write(inner, bytes.as_ptr().cast(), amount, offset) }
}

/// The most the `unix` VFS writes with one call: it masks a write's length
/// to 17 bits (`seekAndWriteFd`; SQLite itself never writes more than a
/// page at a time), so what is gathered goes in pieces of this size.
const MOST_WRITTEN: usize = 0x1f000;

/// Writes what is gathered, if anything, with as few calls as the `unix`
/// VFS takes (one per `MOST_WRITTEN` bytes). Whatever the outcome,
/// nothing stays gathered: after a failure SQLite writes the
/// transaction's frames again, and what was not written counts as never
/// written (`furthest`).
///
/// # Safety
/// As `write_through`.
unsafe fn flush(
    g: &mut Gathered,
    inner: *mut ffi::sqlite3_file,
    m: &ffi::sqlite3_io_methods,
) -> c_int {
    let mut offset = g.start;
    for piece in g.bytes.chunks(MOST_WRITTEN) {
        // SAFETY: as the caller promises.
        let rc = unsafe { write_through(inner, m, piece, offset) };
        if rc != ffi::SQLITE_OK {
            g.bytes.clear();
            g.furthest = g.furthest.min(offset);
            return rc;
        }
        offset += piece.len() as i64;
    }
    g.bytes.clear();
    ffi::SQLITE_OK
}

/// `parts` of a `-wal` file after writing what it gathered, or the code
/// of the failed write.
///
/// # Safety
/// As `parts`.
unsafe fn flushed<'a>(
    file: *mut ffi::sqlite3_file,
) -> Result<
    (
        &'a mut Gathered,
        *mut ffi::sqlite3_file,
        &'a ffi::sqlite3_io_methods,
    ),
    c_int,
> {
    // SAFETY: as the caller promises.
    unsafe {
        let (g, inner, m) = parts(file);
        match flush(g, inner, m) {
            ffi::SQLITE_OK => Ok((g, inner, m)),
            rc => Err(rc),
        }
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls this on a file `open` set up, with `buf` valid
    // for `amount` bytes.
    unsafe {
        let (g, inner, m) = parts(file);
        let Ok(len) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), len);
        if !g.enabled {
            return write_through(inner, m, bytes, offset);
        }
        if offset == 0 {
            // A restarted log: written again from its start.
            let rc = flush(g, inner, m);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            g.furthest = 0;
        }
        if offset < g.furthest {
            // A frame overwritten in place or a checksum rewritten: after
            // what is gathered, as it came.
            let rc = flush(g, inner, m);
            g.commit_next = false;
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            return write_through(inner, m, bytes, offset);
        }
        // An append: gathered, after what is gathered if it leaves a gap.
        let completes_commit = g.commit_next && offset == g.furthest;
        if !g.bytes.is_empty() && offset != g.start + g.bytes.len() as i64 {
            let rc = flush(g, inner, m);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if g.bytes.is_empty() {
            g.start = offset;
        }
        g.bytes.extend_from_slice(bytes);
        g.furthest = offset.saturating_add(i64::from(amount));
        g.commit_next = len == FRAME_HEADER && bytes[4..8] != [0; 4];
        if completes_commit || g.bytes.len() >= MOST_GATHERED {
            return flush(g, inner, m);
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = match flushed(file) {
            Ok(ours) => ours,
            Err(rc) => return rc,
        };
        m.xRead
            .map_or(ffi::SQLITE_IOERR_READ, |f| f(inner, buf, amount, offset))
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (g, inner, m) = match flushed(file) {
            Ok(ours) => ours,
            Err(rc) => return rc,
        };
        g.furthest = g.furthest.min(size);
        m.xTruncate
            .map_or(ffi::SQLITE_IOERR_TRUNCATE, |f| f(inner, size))
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = match flushed(file) {
            Ok(ours) => ours,
            Err(rc) => return rc,
        };
        m.xSync.map_or(ffi::SQLITE_IOERR_FSYNC, |f| f(inner, flags))
    }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = match flushed(file) {
            Ok(ours) => ours,
            Err(rc) => return rc,
        };
        m.xFileSize
            .map_or(ffi::SQLITE_IOERR_FSTAT, |f| f(inner, size))
    }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = match flushed(file) {
            Ok(ours) => ours,
            Err(rc) => return rc,
        };
        m.xFileControl
            .map_or(ffi::SQLITE_NOTFOUND, |f| f(inner, op, arg))
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as `write`; after this SQLite never uses the file again, so
    // the box is freed here.
    unsafe {
        let (g, inner, m) = parts(file);
        let flushed = flush(g, inner, m);
        let closed = m.xClose.map_or(ffi::SQLITE_OK, |f| f(inner));
        let this = file.cast::<LogFile>();
        drop(Box::from_raw((*this).log));
        (*this).log = std::ptr::null_mut();
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = parts(file);
        m.xLock.map_or(ffi::SQLITE_OK, |f| f(inner, level))
    }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = parts(file);
        m.xUnlock.map_or(ffi::SQLITE_OK, |f| f(inner, level))
    }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = parts(file);
        m.xCheckReservedLock
            .map_or(ffi::SQLITE_OK, |f| f(inner, out))
    }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = parts(file);
        m.xSectorSize.map_or(4096, |f| f(inner))
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as `write`.
    unsafe {
        let (_, inner, m) = parts(file);
        m.xDeviceCharacteristics.map_or(0, |f| f(inner))
    }
}

/// Write system calls this thread has made so far (`/proc/thread-self/io`).
#[cfg(test)]
pub(super) fn writes_so_far() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("syscw: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};
    use std::path::Path;

    fn flags() -> OpenFlags {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    }

    /// A connection writing through `kci-wal`, in WAL mode with `sync`.
    fn writer(path: &Path, sync: &str) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(path, flags(), register().unwrap()).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT, v BLOB);
             CREATE INDEX IF NOT EXISTS t_k ON t (k);"
        ))
        .unwrap();
        conn
    }

    /// The rows' count and total size as another connection sees them.
    fn seen(conn: &Connection) -> (i64, i64) {
        conn.query_row(
            "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// What a process killed now would leave: the database and its log
    /// copied as they are in the file system, opened through `unix` (which
    /// recovers the log, checking every frame's checksum).
    fn left_behind(path: &Path) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.db");
        std::fs::copy(path, &copy).unwrap();
        let log = path.with_extension("db-wal");
        if log.exists() {
            std::fs::copy(&log, copy.with_extension("db-wal")).unwrap();
        }
        let conn = Connection::open(&copy).unwrap();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        (dir, conn)
    }

    /// The size of the log beside the database at `path`.
    fn log_size(path: &str) -> u64 {
        std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len())
    }

    /// The write calls a commit of `rows` rows spread over the table's
    /// pages makes, and the bytes it adds to the log.
    fn writes_of_a_commit(conn: &Connection, rows: i64) -> (u64, u64) {
        let log = conn.path().unwrap().to_string();
        let size = || log_size(&log);
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..rows {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, zeroblob(600))",
                [format!("{:08x}", i.wrapping_mul(2_654_435_761) % 100_000)],
            )
            .unwrap();
        }
        let (before, logged) = (writes_so_far(), size());
        tx.commit().unwrap();
        (writes_so_far() - before, size() - logged)
    }

    #[test]
    fn a_commit_is_written_to_the_log_in_one_call_per_124_kib() {
        let dir = tempfile::tempdir().unwrap();
        let gathered = writer(&dir.path().join("a.db"), "FULL");
        let plain = Connection::open(dir.path().join("b.db")).unwrap();
        plain
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB);
                 CREATE INDEX t_k ON t (k);",
            )
            .unwrap();
        for conn in [&gathered, &plain] {
            writes_of_a_commit(conn, 2_000);
        }
        let frame = 4_096 + FRAME_HEADER as u64;
        for rows in [40, 400] {
            let (through_unix, logged) = writes_of_a_commit(&plain, rows);
            assert_eq!(through_unix, 2 * logged / frame, "{rows} rows through unix");
            let (through_kci, logged) = writes_of_a_commit(&gathered, rows);
            assert!(logged > 5 * frame, "{rows} rows logged only {logged} bytes");
            assert_eq!(
                through_kci,
                logged.div_ceil(MOST_WRITTEN as u64),
                "{rows} rows, {logged} bytes through kci-wal"
            );
        }
    }

    #[test]
    fn every_commit_is_in_the_file_before_its_readers_look() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        // NORMAL: no sync at commit, so nothing but the commit frame
        // writes what was gathered.
        let w = writer(&path, "NORMAL");
        let reader = Connection::open(&path).unwrap();
        let mut expected = (0, 0);
        for i in 0..300_i64 {
            let size = 100 + (i * 37) % 3_000;
            w.execute(
                "INSERT INTO t (k, v) VALUES (?1, zeroblob(?2))",
                [i.to_string(), size.to_string()],
            )
            .unwrap();
            expected = (expected.0 + 1, expected.1 + size);
            assert_eq!(seen(&reader), expected);
            if i % 60 == 0 {
                let (_copy, after) = left_behind(&path);
                assert_eq!(seen(&after), expected);
            }
        }
    }

    #[test]
    fn a_transaction_larger_than_the_cache_spills_and_reads_back() {
        // NORMAL too: a checksum rewritten at commit must be in the file
        // with no sync to write it.
        for sync in ["FULL", "NORMAL"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kci.db");
            let w = writer(&path, sync);
            w.execute_batch("PRAGMA cache_size = -64").unwrap();
            writes_of_a_commit(&w, 10);
            // Two megabytes in one transaction through a 64 KiB cache:
            // pages spill to the log, are read back, changed and
            // overwritten in place, and their checksums rewritten at commit.
            let tx = w.unchecked_transaction().unwrap();
            for i in 0..4_000_i64 {
                tx.execute(
                    "INSERT INTO t (k, v) VALUES (?1, randomblob(500))",
                    [format!("{:08x}", i.wrapping_mul(2_654_435_761) % 1_000_000)],
                )
                .unwrap();
            }
            tx.execute("UPDATE t SET v = randomblob(480) WHERE id % 3 = 0", [])
                .unwrap();
            tx.commit().unwrap();
            // Copied before anything else touches the log (the writer's
            // own reads would write what is gathered).
            let (_copy, after) = left_behind(&path);
            let expected = seen(&w);
            assert_eq!(expected.0, 4_010, "{sync}");
            assert_eq!(seen(&Connection::open(&path).unwrap()), expected, "{sync}");
            assert_eq!(seen(&after), expected, "{sync}");
        }
    }

    #[test]
    fn a_transaction_larger_than_what_is_gathered_is_written_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let w = writer(&path, "NORMAL");
        // A cache that holds it all: nothing spills, so only the bound on
        // what is gathered writes before the commit frame.
        w.execute_batch("PRAGMA cache_size = -65536").unwrap();
        let tx = w.unchecked_transaction().unwrap();
        for i in 0..3_000_i64 {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, randomblob(3000))",
                [i.to_string()],
            )
            .unwrap();
        }
        let (before, logged) = (writes_so_far(), log_size(path.to_str().unwrap()));
        tx.commit().unwrap();
        let writes = writes_so_far() - before;
        let (_copy, after) = left_behind(&path);
        let expected = seen(&w);
        assert_eq!(expected.0, 3_000);
        assert_eq!(seen(&after), expected);
        assert!(
            logged < (MOST_GATHERED as u64),
            "{logged} bytes in the log before the commit"
        );
        assert!(
            writes > (MOST_GATHERED / MOST_WRITTEN) as u64,
            "{writes} writes"
        );
    }

    #[test]
    fn a_restarted_log_is_written_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kci.db");
        let w = writer(&path, "FULL");
        for round in 0..3 {
            for _ in 0..5 {
                writes_of_a_commit(&w, 20);
            }
            let mode = if round == 0 { "RESTART" } else { "TRUNCATE" };
            w.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                .unwrap();
        }
        writes_of_a_commit(&w, 20);
        let expected = seen(&w);
        assert_eq!(expected.0, 320);
        let (_copy, after) = left_behind(&path);
        assert_eq!(seen(&after), expected);
    }
}
