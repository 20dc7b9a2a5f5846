//! Durable mode (`serve --data PATH`): the offline queues, groups, blocks and
//! name claims in SQLite, so a restart or a crash loses nothing that was
//! acknowledged.
//!
//! The in-memory structures stay what routing reads; this module only writes
//! the core's [`Change`]s through to disk. One thread owns the database and
//! commits whatever has arrived since its last commit in one transaction
//! (group commit): while one `fsync` runs, the next batch gathers, so the cost
//! of a commit is shared by every message in it. Each batch has a sequence
//! number; the server holds back the frames of an outcome (the `queued` ack
//! above all) until [`Store::committed`] has passed its number.
//!
//! A queued message is deleted from disk only after the server wrote it to the
//! recipient's socket ([`Store::flushed`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::watch;

use crate::core::claims::TokenHash;
use crate::core::{Change, Disk, DurableState};
use crate::inspection::DiskStats;
use crate::names::{Name, UserId};
use crate::protocol::{Message, Target};

/// The schema this version writes. A file with a higher number came from a
/// newer vivachat and is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 2;

/// Marks the file as vivachat's (`PRAGMA application_id`): "VIVA".
const APPLICATION_ID: i64 = 0x5649_5641;

/// MIGRATIONS[i] takes a database from version i to i + 1.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE offline_messages (
        owner    TEXT    NOT NULL,
        id       INTEGER NOT NULL,
        sender   TEXT    NOT NULL,
        to_group TEXT,
        text     TEXT    NOT NULL,
        ts       INTEGER NOT NULL,
        PRIMARY KEY (owner, id)
    ) WITHOUT ROWID;
    CREATE TABLE group_members (
        grp  TEXT NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (grp, user)
    ) WITHOUT ROWID;
    CREATE TABLE blocked_users (
        by_user TEXT NOT NULL,
        whom    TEXT NOT NULL,
        PRIMARY KEY (by_user, whom)
    ) WITHOUT ROWID;
    CREATE TABLE name_claims (
        user TEXT PRIMARY KEY NOT NULL,
        hash TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
",
    "
    -- v1.1 resume: a message's receipt request, each resuming user's released
    -- position, and the file's epoch (resume positions from another file are
    -- not trusted).
    ALTER TABLE offline_messages ADD COLUMN receipt INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE released (
        user TEXT PRIMARY KEY NOT NULL,
        upto INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', random() & 9223372036854775807);
",
];

/// Message ids are reserved on disk this far ahead, so ids stay unique across
/// a crash without a write per message: a restart continues after the reservation.
const ID_MARGIN: u64 = 100_000;

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 50_000;

/// A batch's place in the commit order; the server holds an outcome's frames
/// until [`Store::committed`] has passed its batch.
pub type Seq = u64;

/// A batch number no commit ever reaches: frames stamped with it are never
/// written, because what they acknowledge was never written either.
pub const NEVER_COMMITTED: Seq = Seq::MAX;

/// The writer thread has stopped (the server is shutting down): nothing more
/// can be written, so nothing more may be acknowledged as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the data file's writer has stopped (the server is shutting down)")]
pub struct StoreStopped;

/// Why the data file cannot be used. Each says what to do; none changes the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not a SQLite database, or damaged ({cause}). It was left untouched; move it aside to start with an empty one")]
    Corrupt { path: String, cause: String },
    #[error("{path} is a SQLite database, but not one of vivachat's (application id {found:#x}); it was left untouched: choose another --data file")]
    Foreign { path: String, found: i64 },
    #[error("{path} was written by a newer vivachat (schema version {found}; this version reads up to {SCHEMA_VERSION}). It was left untouched: upgrade vivachat, or choose another --data file")]
    Newer { path: String, found: i64 },
    #[error("cannot open {path}: {cause}")]
    Open { path: String, cause: String },
    #[error("cannot write {path}: {cause}. A durable server must write every queued message before acknowledging it: make the file and its folder writable by this user (ls -l shows them), or choose another --data path")]
    ReadOnly { path: String, cause: String },
    #[error("{path}: SQLite runs it with journal_mode={journal_mode} and synchronous={synchronous}, which can lose acknowledged messages on a power cut (vivachat needs journal_mode=wal and synchronous=2, FULL). The file system may not support WAL (a network share?): choose a --data path on a local disk")]
    NotDurable {
        path: String,
        journal_mode: String,
        synchronous: i64,
    },
}

/// How SQLite commits, read back from the open file rather than assumed:
/// `PRAGMA journal_mode = WAL` can be refused silently (a file system without
/// shared memory keeps the old mode), and the setting is what a power cut tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// "wal": a commit appends to the log, and readers never block the writer.
    pub journal_mode: String,
    /// 2 (FULL): every commit fsyncs the log before it returns, so a commit
    /// that returned survives a power cut. 1 (NORMAL) in WAL mode fsyncs only
    /// at checkpoints: a process kill loses nothing (the page cache survives
    /// it), a power cut can lose the last commits. 0 (OFF) never fsyncs.
    pub synchronous: i64,
}

impl Durability {
    fn read(conn: &Connection) -> rusqlite::Result<Durability> {
        Ok(Durability {
            journal_mode: conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
            synchronous: conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
        })
    }

    /// Every commit that returned is on the disk, not just in the page cache.
    pub fn survives_power_loss(&self) -> bool {
        self.journal_mode.eq_ignore_ascii_case("wal") && self.synchronous >= 2
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sync = match self.synchronous {
            0 => "OFF",
            1 => "NORMAL",
            2 => "FULL",
            _ => "EXTRA",
        };
        write!(
            f,
            "journal_mode={}, synchronous={sync}: one fsync per commit",
            self.journal_mode
        )
    }
}

/// What was loaded on start.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub state: DurableState,
    pub claims: Vec<(UserId, TokenHash)>,
}

impl Loaded {
    /// "restored 3 groups, 41 queued messages for 5 users, ..."
    pub fn summary(&self) -> String {
        let s = &self.state;
        format!(
            "restored {} group(s), {} queued message(s) for {} user(s), {} block(s), {} claimed name(s)",
            s.groups.len(),
            s.queued_messages(),
            s.queues.len(),
            s.block_count(),
            self.claims.len()
        )
    }
}

enum Job {
    Changes {
        seq: u64,
        changes: Vec<Change>,
        reserve_ids: Option<u64>,
    },
    Claimed {
        seq: u64,
        user: UserId,
        hash: TokenHash,
    },
    Flushed {
        user: UserId,
        id: u64,
    },
}

impl Job {
    /// How many rows this job writes or deletes.
    fn changes(&self) -> u64 {
        match self {
            Job::Changes {
                changes,
                reserve_ids,
                ..
            } => changes.len() as u64 + u64::from(reserve_ids.is_some()),
            Job::Claimed { .. } | Job::Flushed { .. } => 1,
        }
    }

    fn seq(&self) -> u64 {
        match self {
            Job::Changes { seq, .. } | Job::Claimed { seq, .. } => *seq,
            Job::Flushed { .. } => 0,
        }
    }
}

struct Submitter {
    next_seq: Seq,
    /// Ids are reserved on disk up to (not including) this one.
    reserved_ids: u64,
    tx: Option<mpsc::Sender<Job>>,
}

impl Submitter {
    /// Hands a job to the writer; its batch number is taken only if it went.
    fn send(&mut self, job: Job) -> Result<(), StoreStopped> {
        let tx = self.tx.as_ref().ok_or(StoreStopped)?;
        tx.send(job).map_err(|_| StoreStopped)?;
        self.next_seq += 1;
        Ok(())
    }
}

/// The durable store: a handle to the writer thread.
pub struct Store {
    path: PathBuf,
    durability: Durability,
    /// Sequence numbers are taken and sent under one lock, so the writer sees
    /// them in order and "committed up to N" means every batch up to N.
    submitter: Mutex<Submitter>,
    committed: watch::Receiver<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by `close`: a writer stuck retrying a failing disk gives up.
    closing: Arc<AtomicBool>,
    /// Set by the writer while its last commit failed. The server reads it on
    /// every request, so it is one atomic load; the cause is in `stats`.
    failing: Arc<AtomicBool>,
    stats: Arc<Mutex<DiskStats>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// What `serve --data` hands the server: the open store and what it loaded.
#[derive(Debug, Clone)]
pub struct Durable {
    pub store: Arc<Store>,
    pub loaded: Loaded,
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

impl Store {
    /// Opens (or creates) the database, checks it, migrates it, loads it, and
    /// starts the writer thread. A damaged, foreign or newer file is an error
    /// before anything is written to it.
    pub fn open(path: &Path) -> Result<(Arc<Store>, Loaded), StoreError> {
        Store::open_limited(path, None)
    }

    /// [`Store::open`], with the file kept under `max_bytes` (`serve
    /// --max-data-size`): a write that would grow it further fails like a full
    /// disk, and the server refuses what needs the disk until space is freed.
    pub fn open_limited(
        path: &Path,
        max_bytes: Option<u64>,
    ) -> Result<(Arc<Store>, Loaded), StoreError> {
        let shown = text(path);
        // It holds private messages and token hashes: readable by the owner
        // only. SQLite gives its -wal and -shm files the same permissions.
        if !path.exists() {
            create_private_file(path).map_err(|e| StoreError::Open {
                path: shown.clone(),
                cause: e.to_string(),
            })?;
        }
        check_access(path, &shown)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Open {
            path: shown.clone(),
            cause: e.to_string(),
        })?;
        let version = check_file(&conn, &shown)?;
        // WAL: readers never block the writer, and a commit appends to the log
        // instead of rewriting pages. FULL: a commit is on disk when it returns.
        let setup = || -> rusqlite::Result<()> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            if let Some(max) = max_bytes {
                let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
                let pages = (max as i64 / page.max(512)).max(1);
                conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            }
            for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                conn.execute_batch(&format!(
                    "BEGIN; {sql} PRAGMA user_version = {}; PRAGMA application_id = {APPLICATION_ID}; COMMIT;",
                    from + 1
                ))?;
            }
            Ok(())
        };
        setup().map_err(|e| StoreError::Open {
            path: shown.clone(),
            cause: e.to_string(),
        })?;
        prove_writable(&conn, &shown)?;
        let durability = Durability::read(&conn).map_err(|e| StoreError::Open {
            path: shown.clone(),
            cause: e.to_string(),
        })?;
        if !durability.survives_power_loss() {
            return Err(StoreError::NotDurable {
                path: shown,
                journal_mode: durability.journal_mode,
                synchronous: durability.synchronous,
            });
        }
        let loaded = load(&conn).map_err(|cause| StoreError::Corrupt {
            path: shown.clone(),
            cause,
        })?;
        let (tx, rx) = mpsc::channel();
        let (committed_tx, committed) = watch::channel(0);
        let stats = Arc::new(Mutex::new(DiskStats::default()));
        let thread_stats = stats.clone();
        let closing = Arc::new(AtomicBool::new(false));
        let failing = Arc::new(AtomicBool::new(false));
        let flags = (closing.clone(), failing.clone());
        let thread = std::thread::Builder::new()
            .name("vivachat-store".into())
            .spawn(move || write_loop(conn, rx, committed_tx, thread_stats, flags))
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                cause: e.to_string(),
            })?;
        let store = Store {
            path: path.to_path_buf(),
            durability,
            submitter: Mutex::new(Submitter {
                next_seq: 1,
                reserved_ids: loaded.state.next_message_id,
                tx: Some(tx),
            }),
            committed,
            thread: Mutex::new(Some(thread)),
            closing,
            failing,
            stats,
        };
        Ok((Arc::new(store), loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The commit settings in force, as SQLite reported them after opening.
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    fn submitter(&self) -> std::sync::MutexGuard<'_, Submitter> {
        self.submitter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one outcome's changes to disk; returns the batch to wait for, or
    /// None when there was nothing to write, or [`StoreStopped`] when nothing
    /// can be written any more. `next_message_id` is the core's: when it nears
    /// the reserved range, a new range is reserved. Call it under the core
    /// lock, so batches reach the disk in core order.
    pub fn submit(
        &self,
        changes: Vec<Change>,
        next_message_id: u64,
    ) -> Result<Option<Seq>, StoreStopped> {
        let mut s = self.submitter();
        let reserve_ids = (next_message_id + ID_MARGIN > s.reserved_ids).then(|| {
            s.reserved_ids = next_message_id + 2 * ID_MARGIN;
            s.reserved_ids
        });
        if changes.is_empty() && reserve_ids.is_none() {
            return Ok(None);
        }
        let seq = s.next_seq;
        let job = Job::Changes {
            seq,
            changes,
            reserve_ids,
        };
        s.send(job)?;
        Ok(Some(seq))
    }

    /// Records a name claim; wait for the returned batch before admitting it.
    pub fn claim(&self, user: &UserId, hash: &TokenHash) -> Result<Seq, StoreStopped> {
        let mut s = self.submitter();
        let seq = s.next_seq;
        s.send(Job::Claimed {
            seq,
            user: user.clone(),
            hash: hash.clone(),
        })?;
        Ok(seq)
    }

    /// Whether changes can be written now: the core refuses what needs the
    /// disk (`unavailable`) while they cannot.
    pub fn disk(&self) -> Disk {
        if self.closing.load(Ordering::SeqCst) {
            return Disk::Unavailable(StoreStopped.to_string());
        }
        if !self.failing.load(Ordering::SeqCst) {
            return Disk::Writable;
        }
        match &self.stats.lock().unwrap_or_else(|e| e.into_inner()).failing {
            Some(why) => Disk::Unavailable(format!("the data file cannot be written: {why}")),
            None => Disk::Writable,
        }
    }

    /// A queued message was written to `user`'s socket: it may leave the disk.
    pub fn flushed(&self, user: &UserId, id: u64) {
        let s = self.submitter();
        if let Some(tx) = &s.tx {
            let _ = tx.send(Job::Flushed {
                user: user.clone(),
                id,
            });
        }
    }

    /// Resolves once batch `seq` is on disk; false if the store has stopped.
    pub async fn committed(&self, seq: Seq) -> bool {
        let mut rx = self.committed.clone();
        let reached = rx.wait_for(|c| *c >= seq).await.is_ok();
        reached
    }

    /// Changes written and commits made so far (group commit, visible).
    pub fn stats(&self) -> DiskStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The highest batch on disk.
    pub fn committed_now(&self) -> Seq {
        *self.committed.borrow()
    }

    /// Writes everything submitted so far, then stops the writer thread.
    /// Waits at most `grace`; returns false if the writer did not finish in time.
    pub fn close(&self, grace: Duration) -> bool {
        // Closing first: from now on the core refuses what needs the disk.
        self.closing.store(true, Ordering::SeqCst);
        self.submitter().tx = None;
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return true;
        };
        let deadline = std::time::Instant::now() + grace;
        while !thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.join();
        true
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close(Duration::from_secs(5));
    }
}

/// Reads only, until the file is known to be ours, not newer, and whole:
/// returns its schema version, or why it cannot be used (untouched).
/// The file (and SQLite's -wal and -shm beside it, when they exist) must open
/// for reading and writing as this user; SQLite would report a file it may not
/// read as "damaged", and one it may not write as nothing at all.
fn check_access(path: &Path, shown: &str) -> Result<(), StoreError> {
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = std::path::PathBuf::from(side);
        if side.exists() {
            files.push(side);
        }
    }
    for file in files {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
        {
            return Err(StoreError::ReadOnly {
                path: shown.to_string(),
                cause: format!("{}: {e}", file.display()),
            });
        }
    }
    Ok(())
}

/// SQLite opens a file it may not write read-only without a word; a server
/// on it would then upgrade every connection and never welcome one (each
/// welcome waits for a write that never happens). So write once now, in a
/// real transaction, and refuse to start if that fails.
fn prove_writable(conn: &Connection, shown: &str) -> Result<(), StoreError> {
    let refused = |cause: String| StoreError::ReadOnly {
        path: shown.to_string(),
        cause,
    };
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|e| refused(e.to_string()))?
    {
        return Err(refused("the file is read-only for this user".into()));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| refused(e.to_string()))?;
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; PRAGMA user_version = {version}; COMMIT;"
    ))
    .map_err(|e| refused(e.to_string()))
}

fn check_file(conn: &Connection, shown: &str) -> Result<i64, StoreError> {
    // A file SQLite may not write (or whose folder refuses the -wal file) is
    // not damaged: say which it is.
    let corrupt = |e: rusqlite::Error| {
        use rusqlite::ErrorCode::{CannotOpen, PermissionDenied, ReadOnly};
        let cause = e.to_string();
        match e.sqlite_error_code() {
            Some(ReadOnly | CannotOpen | PermissionDenied) => StoreError::ReadOnly {
                path: shown.to_string(),
                cause,
            },
            _ => StoreError::Corrupt {
                path: shown.to_string(),
                cause,
            },
        }
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(corrupt)?;
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(corrupt)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(corrupt)?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
        return Err(StoreError::Foreign {
            path: shown.to_string(),
            found: app_id,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            path: shown.to_string(),
            found: version,
        });
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(corrupt)?;
    if check != "ok" {
        return Err(StoreError::Corrupt {
            path: shown.to_string(),
            cause: check,
        });
    }
    Ok(version)
}

fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

fn name(raw: String) -> Result<UserId, String> {
    Name::parse(&raw).map_err(|e| format!("stored name {raw:?} is invalid: {e}"))
}

fn load(conn: &Connection) -> Result<Loaded, String> {
    let err = |e: rusqlite::Error| e.to_string();
    let mut loaded = Loaded::default();
    let mut stmt = conn
        .prepare(
            "SELECT owner, id, sender, to_group, text, ts, receipt FROM offline_messages ORDER BY owner, id",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, bool>(6)?,
            ))
        })
        .map_err(err)?;
    let queues = &mut loaded.state.queues;
    for row in rows {
        let (owner, id, sender, to_group, body, ts, receipt) = row.map_err(err)?;
        let owner = name(owner)?;
        let target = match to_group {
            Some(g) => Target::Group(name(g)?),
            None => Target::User(owner.clone()),
        };
        let message = Message {
            id: id as u64,
            from: name(sender)?,
            target,
            text: body.into(),
            ts: ts as u64,
            receipt,
        };
        match queues.last_mut() {
            Some((user, queue)) if *user == owner => queue.push(message),
            _ => queues.push((owner, vec![message])),
        }
    }
    let pairs = |sql: &str| -> Result<Vec<(UserId, Vec<UserId>)>, String> {
        let mut stmt = conn.prepare(sql).map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(err)?;
        let mut out: Vec<(UserId, Vec<UserId>)> = Vec::new();
        for row in rows {
            let (key, value) = row.map_err(err)?;
            let (key, value) = (name(key)?, name(value)?);
            match out.last_mut() {
                Some((k, values)) if *k == key => values.push(value),
                _ => out.push((key, vec![value])),
            }
        }
        Ok(out)
    };
    loaded.state.groups = pairs("SELECT grp, user FROM group_members ORDER BY grp, user")?;
    loaded.state.blocks = pairs("SELECT by_user, whom FROM blocked_users ORDER BY by_user, whom")?;
    let mut stmt = conn
        .prepare("SELECT user, hash FROM name_claims ORDER BY user")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(err)?;
    for row in rows {
        let (user, hash) = row.map_err(err)?;
        let hash = crate::tokens::parse(&hash)
            .ok_or_else(|| format!("the claim of {user} has an unreadable hash"))?;
        loaded.claims.push((name(user)?, hash));
    }
    let mut stmt = conn
        .prepare("SELECT user, upto FROM released ORDER BY user")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(err)?;
    for row in rows {
        let (user, upto) = row.map_err(err)?;
        loaded.state.released.push((name(user)?, upto as u64));
    }
    let meta = |key: &str| -> Result<Option<i64>, String> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(err(e)),
            })
    };
    loaded.state.next_message_id = meta("next_message_id")?.map_or(1, |n| n.max(1) as u64);
    loaded.state.epoch = meta("epoch")?.map(|e| format!("{e:x}"));
    Ok(loaded)
}

/// Applies a batch of jobs in one transaction.
fn apply(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut queue = tx.prepare_cached(
            "INSERT OR REPLACE INTO offline_messages (owner, id, sender, to_group, text, ts, receipt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut release =
            tx.prepare_cached("DELETE FROM offline_messages WHERE owner = ?1 AND id <= ?2")?;
        let mut released = tx.prepare_cached(
            "INSERT INTO released (user, upto) VALUES (?1, ?2)
             ON CONFLICT(user) DO UPDATE SET upto = max(upto, excluded.upto)",
        )?;
        let mut unqueue =
            tx.prepare_cached("DELETE FROM offline_messages WHERE owner = ?1 AND id = ?2")?;
        let mut join =
            tx.prepare_cached("INSERT OR IGNORE INTO group_members (grp, user) VALUES (?1, ?2)")?;
        let mut leave =
            tx.prepare_cached("DELETE FROM group_members WHERE grp = ?1 AND user = ?2")?;
        let mut block = tx.prepare_cached(
            "INSERT OR IGNORE INTO blocked_users (by_user, whom) VALUES (?1, ?2)",
        )?;
        let mut unblock =
            tx.prepare_cached("DELETE FROM blocked_users WHERE by_user = ?1 AND whom = ?2")?;
        let mut claim =
            tx.prepare_cached("INSERT OR REPLACE INTO name_claims (user, hash) VALUES (?1, ?2)")?;
        let mut reserve = tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('next_message_id', ?1)
             ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
        )?;
        for job in jobs {
            match job {
                Job::Changes {
                    changes,
                    reserve_ids,
                    ..
                } => {
                    if let Some(ids) = reserve_ids {
                        reserve.execute([*ids as i64])?;
                    }
                    for change in changes {
                        match change {
                            Change::Queued { user, message } => {
                                let group = match &message.target {
                                    Target::Group(g) => Some(g.as_str()),
                                    Target::User(_) => None,
                                };
                                queue.execute(params![
                                    user.as_str(),
                                    message.id as i64,
                                    message.from.as_str(),
                                    group,
                                    &*message.text,
                                    message.ts as i64,
                                    message.receipt
                                ])?;
                            }
                            Change::Released { user, upto } => {
                                release.execute(params![user.as_str(), *upto as i64])?;
                                released.execute(params![user.as_str(), *upto as i64])?;
                            }
                            Change::Joined { group, user } => {
                                join.execute([group.as_str(), user.as_str()])?;
                            }
                            Change::Left { group, user } => {
                                leave.execute([group.as_str(), user.as_str()])?;
                            }
                            Change::Blocked { by, whom } => {
                                block.execute([by.as_str(), whom.as_str()])?;
                            }
                            Change::Unblocked { by, whom } => {
                                unblock.execute([by.as_str(), whom.as_str()])?;
                            }
                        }
                    }
                }
                Job::Claimed { user, hash, .. } => {
                    claim.execute([user.as_str(), hash.as_phc()])?;
                }
                Job::Flushed { user, id } => {
                    unqueue.execute(params![user.as_str(), *id as i64])?;
                }
            }
        }
    }
    tx.commit()
}

/// The writer thread: take everything waiting, commit it as one transaction,
/// announce the highest sequence number, repeat. Ends when the sender is dropped.
fn write_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Job>,
    committed: watch::Sender<u64>,
    stats: Arc<Mutex<DiskStats>>,
    (closing, failing): (Arc<AtomicBool>, Arc<AtomicBool>),
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let high = jobs.iter().map(Job::seq).max().unwrap_or(0);
        // Nothing is acknowledged until it is written, so a failing disk
        // stalls this batch's acks rather than losing messages, and marks the
        // store failing, so the core refuses new work that needs the disk.
        let mut wait = Duration::from_millis(100);
        while let Err(e) = apply(&mut conn, &jobs) {
            let first = {
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.failing.replace(e.to_string()).is_none()
            };
            failing.store(true, Ordering::SeqCst);
            if first {
                eprintln!(
                    "vivachat: cannot write to the data file ({e}); what needs the disk is refused \
                     with `unavailable` and this batch's acks wait until a write works. Retrying."
                );
            }
            if closing.load(Ordering::SeqCst) {
                eprintln!(
                    "vivachat: stopping with {} change(s) unwritten; none of them was acknowledged.",
                    jobs.iter().map(Job::changes).sum::<u64>()
                );
                return;
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(1));
        }
        let changes: u64 = jobs.iter().map(Job::changes).sum();
        {
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            failing.store(false, Ordering::SeqCst);
            if s.failing.take().is_some() {
                eprintln!(
                    "vivachat: the data file can be written again; durable requests are accepted."
                );
            }
            s.changes += changes;
            s.commits += 1;
            s.largest_commit = s.largest_commit.max(changes);
        }
        committed.send_modify(|c| *c = (*c).max(high));
    }
    // A clean stop folds the log back into the database file.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::hash as hash_token;

    fn n(s: &str) -> UserId {
        Name::parse(s).unwrap()
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vivachat-store-{tag}-{}-{}",
            std::process::id(),
            crate::tokens::generate().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("chat.db")
    }

    fn message(id: u64, from: &str, target: Target) -> Message {
        Message {
            id,
            from: n(from),
            target,
            text: format!("text {id}").into(),
            ts: 1_000 + id,
            receipt: id % 2 == 0,
        }
    }

    fn wait(store: &Store, seq: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.committed_now() < seq {
            assert!(std::time::Instant::now() < deadline, "commit timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every kind of change, for queues, windows, groups and blocks, with
    /// some undone again, as routing makes them.
    fn one_of_each_change() -> Vec<Change> {
        let g = Target::Group(n("g1"));
        vec![
            Change::Queued {
                user: n("bob"),
                message: message(3, "ann", Target::User(n("bob"))),
            },
            Change::Queued {
                user: n("bob"),
                message: message(5, "cy", g.clone()),
            },
            Change::Queued {
                user: n("cy"),
                message: message(4, "ann", Target::User(n("cy"))),
            },
            Change::Queued {
                user: n("dan"),
                message: message(1, "ann", Target::User(n("dan"))),
            },
            Change::Queued {
                user: n("dan"),
                message: message(2, "ann", Target::User(n("dan"))),
            },
            // dan resumes: confirming 1 releases it from the disk too.
            Change::Released {
                user: n("dan"),
                upto: 1,
            },
            Change::Joined {
                group: n("g1"),
                user: n("bob"),
            },
            Change::Joined {
                group: n("g1"),
                user: n("cy"),
            },
            Change::Joined {
                group: n("g2"),
                user: n("cy"),
            },
            Change::Left {
                group: n("g2"),
                user: n("cy"),
            },
            Change::Blocked {
                by: n("bob"),
                whom: n("eve"),
            },
            Change::Blocked {
                by: n("bob"),
                whom: n("dan"),
            },
            Change::Unblocked {
                by: n("bob"),
                whom: n("dan"),
            },
        ]
    }

    #[test]
    fn changes_survive_a_reopen_in_order_and_flushed_ones_do_not() {
        let path = temp("reopen");
        let (store, loaded) = Store::open(&path).unwrap();
        let epoch = loaded.state.epoch.clone();
        assert!(epoch.is_some(), "a new file draws its epoch");
        assert_eq!(
            loaded.state,
            DurableState {
                next_message_id: 1,
                epoch: epoch.clone(),
                ..Default::default()
            }
        );
        let g = Target::Group(n("g1"));
        let changes = one_of_each_change();
        let seq = store.submit(changes, 6).unwrap().unwrap();
        let hash = hash_token("t");
        let claim = store.claim(&n("bob"), &hash).unwrap();
        assert!(claim > seq);
        store.flushed(&n("cy"), 4);
        assert!(store.close(Duration::from_secs(10)));
        drop(store);

        let (store, loaded) = Store::open(&path).unwrap();
        let s = &loaded.state;
        assert_eq!(s.queues.len(), 2, "cy's flushed message is gone");
        assert_eq!(s.queues[0].0, n("bob"));
        let ids: Vec<u64> = s.queues[0].1.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![3, 5]);
        assert_eq!(s.queues[0].1[1], message(5, "cy", g));
        assert_eq!(
            s.queues[1],
            (n("dan"), vec![message(2, "ann", Target::User(n("dan")))])
        );
        assert_eq!(s.released, vec![(n("dan"), 1)]);
        assert_eq!(
            s.epoch, epoch,
            "the epoch is the file's, kept across restarts"
        );
        assert_eq!(s.groups, vec![(n("g1"), vec![n("bob"), n("cy")])]);
        assert_eq!(s.blocks, vec![(n("bob"), vec![n("eve")])]);
        assert_eq!(loaded.claims, vec![(n("bob"), hash)]);
        // Ids were reserved ahead: a restart never reuses one.
        assert!(s.next_message_id >= 6 + ID_MARGIN, "{}", s.next_message_id);
        assert!(loaded.summary().contains(
            "1 group(s), 3 queued message(s) for 2 user(s), 1 block(s), 1 claimed name(s)"
        ));
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A kill -9 leaves the page cache to the kernel, so the kill tests would
    /// pass with synchronous=OFF too; what a power cut needs is this setting
    /// in force on the writer's own connection, read back, not assumed.
    #[test]
    fn the_store_commits_with_wal_and_a_full_fsync() {
        let path = temp("pragmas");
        let (store, _) = Store::open(&path).unwrap();
        let d = store.durability().clone();
        assert_eq!(d.journal_mode.to_ascii_lowercase(), "wal", "{d:?}");
        assert_eq!(d.synchronous, 2, "FULL: {d:?}");
        assert!(d.survives_power_loss());
        assert!(d.to_string().contains("synchronous=FULL"), "{d}");
        // WAL is a property of the file: a second connection sees it too.
        let other = Connection::open(&path).unwrap();
        let mode: String = other
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode.to_ascii_lowercase(), "wal");
        drop(other);
        drop(store);
        // The settings that lose commits on a power cut are refused at start.
        for (journal_mode, synchronous) in [("wal", 1), ("wal", 0), ("delete", 2), ("memory", 3)] {
            let weak = Durability {
                journal_mode: journal_mode.into(),
                synchronous,
            };
            assert!(!weak.survives_power_loss(), "{weak:?}");
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_new_data_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp("private");
        let (store, _) = Store::open(&path).unwrap();
        store.submit(Vec::new(), 1).unwrap();
        drop(store);
        for file in [path.clone(), path.with_extension("db-wal")] {
            if let Ok(meta) = std::fs::metadata(&file) {
                assert_eq!(
                    meta.permissions().mode() & 0o777,
                    0o600,
                    "{}",
                    file.display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_stopped_store_refuses_every_write_instead_of_pretending() {
        let path = temp("stopped");
        let (store, _) = Store::open(&path).unwrap();
        assert_eq!(store.disk(), Disk::Writable);
        assert!(store.close(Duration::from_secs(5)));
        let change = Change::Queued {
            user: n("bob"),
            message: message(1, "ann", Target::User(n("bob"))),
        };
        assert_eq!(store.submit(vec![change], 2), Err(StoreStopped));
        assert!(store.claim(&n("bob"), &hash_token("t")).is_err());
        assert!(matches!(store.disk(), Disk::Unavailable(why) if why.contains("stopped")));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_full_data_file_stops_commits_says_why_and_recovers_when_space_is_freed() {
        let path = temp("full");
        let (store, _) = Store::open_limited(&path, Some(64 * 1024)).unwrap();
        let big = "x".repeat(4_000);
        let mut last_committed = 0;
        let mut failing = None;
        for i in 0..200u64 {
            let change = Change::Queued {
                user: n("bob"),
                message: Message {
                    text: big.as_str().into(),
                    ..message(i + 1, "ann", Target::User(n("bob")))
                },
            };
            let seq = store.submit(vec![change], i + 2).unwrap().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while store.committed_now() < seq && failing.is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "neither committed nor failing"
                );
                if let Disk::Unavailable(why) = store.disk() {
                    failing = Some(why);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if failing.is_some() {
                break;
            }
            last_committed = seq;
        }
        let why = failing.expect("64 KiB cannot hold 200 messages of 4 KB");
        assert!(why.contains("full"), "{why}");
        assert!(store.stats().failing.is_some());
        // What failed was never committed, so its acks were never released.
        assert_eq!(store.committed_now(), last_committed);

        // Space is freed (here: another process deletes old rows): the writer's
        // retry succeeds, the stuck batch commits, and the store is healthy again.
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(Duration::from_secs(5)).unwrap();
        other
            .execute("DELETE FROM offline_messages WHERE id <= 8", [])
            .unwrap();
        drop(other);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.committed_now() == last_committed || store.disk() != Disk::Writable {
            assert!(std::time::Instant::now() < deadline, "never recovered");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(store.stats().failing.is_none());
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn group_commit_acknowledges_every_batch_in_order() {
        let path = temp("batches");
        let (store, _) = Store::open(&path).unwrap();
        let mut last = 0;
        for i in 0..2_000u64 {
            let change = Change::Queued {
                user: n("bob"),
                message: message(i + 1, "ann", Target::User(n("bob"))),
            };
            let seq = store.submit(vec![change], i + 2).unwrap().unwrap();
            assert!(seq > last, "sequence numbers increase");
            last = seq;
        }
        assert_eq!(store.submit(Vec::new(), 10), Ok(None), "nothing to write");
        wait(&store, last);
        let stats = store.stats();
        assert!(stats.changes >= 2_000, "{stats:?}");
        // Group commit: far fewer commits than changes (each batch waited for the last fsync).
        assert!(
            stats.commits >= 1 && stats.commits <= stats.changes,
            "{stats:?}"
        );
        assert!(stats.largest_commit >= 1, "{stats:?}");
        drop(store);
        let (_, loaded) = Store::open(&path).unwrap();
        assert_eq!(loaded.state.queued_messages(), 2_000);
        let ids: Vec<u64> = loaded.state.queues[0].1.iter().map(|m| m.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn damaged_foreign_and_newer_files_are_refused_and_left_untouched() {
        let path = temp("bad");
        std::fs::write(
            &path,
            b"this is not a database, it is a text file. ".repeat(200),
        )
        .unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path).expect_err("refused");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("left untouched"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);

        let foreign = temp("foreign");
        let conn = Connection::open(&foreign).unwrap();
        conn.execute_batch("CREATE TABLE recipes (name TEXT)")
            .unwrap();
        drop(conn);
        let before = std::fs::read(&foreign).unwrap();
        let err = Store::open(&foreign).expect_err("refused");
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        assert_eq!(std::fs::read(&foreign).unwrap(), before);

        let newer = temp("newer");
        let (store, _) = Store::open(&newer).unwrap();
        drop(store);
        let conn = Connection::open(&newer).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let before = std::fs::read(&newer).unwrap();
        let err = Store::open(&newer).expect_err("refused");
        assert!(matches!(err, StoreError::Newer { found: 99, .. }), "{err}");
        assert!(err.to_string().contains("newer vivachat"), "{err}");
        assert_eq!(std::fs::read(&newer).unwrap(), before);
        for p in [path, foreign, newer] {
            let _ = std::fs::remove_dir_all(p.parent().unwrap());
        }
    }

    #[test]
    fn a_version_1_file_keeps_its_queues_and_gains_an_epoch() {
        let path = temp("v1");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "{} PRAGMA user_version = 1; PRAGMA application_id = {APPLICATION_ID};
                 INSERT INTO offline_messages VALUES ('bob', 7, 'ann', NULL, 'hi', 1000);
                 INSERT INTO meta VALUES ('next_message_id', 200000);",
                MIGRATIONS[0]
            ))
            .unwrap();
        }
        let (store, loaded) = Store::open(&path).unwrap();
        let s = &loaded.state;
        assert_eq!(s.queues.len(), 1);
        let m = &s.queues[0].1[0];
        assert_eq!((m.id, m.text.as_ref(), m.receipt), (7, "hi", false));
        assert_eq!(s.next_message_id, 200000);
        assert!(s.epoch.is_some() && s.released.is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn an_older_schema_is_migrated() {
        // Version 0 is an empty file: migrating it is creating the schema.
        let path = temp("migrate");
        std::fs::write(&path, b"").unwrap();
        let (store, _) = Store::open(&path).unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
