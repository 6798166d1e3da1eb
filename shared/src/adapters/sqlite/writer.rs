//! One writer thread per database with group commit.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. Instead of every request paying for
//! its own, concurrent writes queue here; the thread takes everything queued (up to a bound), runs each write in
//! its own savepoint inside one transaction, commits once, and only then answers each caller. So a caller's
//! write is durable when it gets its answer, a failing write rolls back alone, and throughput grows with load.

use std::path::Path;
use std::thread;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::ports::{PortError, PortResult};

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Op = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

const MAX_BATCH: usize = 1024;

/// How hard a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the WAL on every commit: survives power loss (the default).
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the last commits on power loss.
    Normal,
}

impl Durability {
    /// From the value of `CALLFLOW_SQLITE_SYNC`: `normal`, or anything else (or nothing) for `full`.
    pub fn parse(value: Option<&str>) -> Self {
        if value == Some("normal") { Self::Normal } else { Self::Full }
    }
}

pub fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durability == Durability::Full { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Erased and expired personal data is overwritten in the file, not left in free pages (SQLite's default keeps
    // deleted bytes until the page is reused). The cost is writing zeros over what a delete frees.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

impl Writer {
    /// Start the writer thread on `conn`. It stops when the last `Writer` clone is dropped.
    pub fn start(conn: Connection, name: &str) -> Self {
        let (tx, mut rx) = mpsc::channel::<Op>(8 * MAX_BATCH);
        thread::Builder::new()
            .name(format!("sqlite-writer-{name}"))
            .spawn(move || {
                let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    run_batch(&conn, &mut batch);
                }
            })
            .expect("spawn the SQLite writer thread");
        Self { tx }
    }

    /// Run `f` inside the next group transaction; resolves after that transaction is committed.
    pub async fn write<R, F>(&self, f: F) -> PortResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<R, String>>();
        let op: Op = Box::new(move |conn| match f(conn) {
            Ok(value) => (true, Box::new(move |commit: Result<(), String>| drop(tx.send(commit.map(|()| value))))),
            Err(e) => {
                let msg = e.to_string();
                (false, Box::new(move |_| drop(tx.send(Err(msg)))))
            }
        });
        self.tx.send(op).await.map_err(|_| PortError::retryable("the SQLite writer has stopped"))?;
        rx.await
            .map_err(|_| PortError::retryable("the SQLite writer dropped a write"))?
            .map_err(|e| PortError::retryable(format!("sqlite: {e}")))
    }
}

fn run_batch(conn: &Connection, batch: &mut Vec<Op>) {
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let began = conn.execute_batch("BEGIN IMMEDIATE");
    if let Err(e) = began {
        // Dropping an op drops its reply channel: each caller gets a retryable error.
        batch.clear();
        tracing::error!(error = %e, "sqlite: could not begin a transaction");
        return;
    }
    for op in batch.drain(..) {
        // Cached statements: a savepoint per op is on the hot path, so it should not be re-parsed each time.
        let savepoint = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        if let Err(e) = savepoint("SAVEPOINT op") {
            tracing::error!(error = %e, "sqlite: savepoint failed");
            drop(op);
            continue;
        }
        let (ok, reply) = op(conn);
        let ended = if ok { savepoint("RELEASE op") } else { savepoint("ROLLBACK TO op").and(savepoint("RELEASE op")) };
        if let Err(e) = ended {
            tracing::error!(error = %e, "sqlite: savepoint release failed");
        }
        replies.push(reply);
    }
    let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for reply in replies {
        reply(committed.clone());
    }
}
