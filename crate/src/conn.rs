//! One pooled session: the client, its statement cache, what the server reports on it, and
//! the reset that keeps one user's session state from reaching the next.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, TryStreamExt};
use lru::LruCache;
use parking_lot::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use crate::codec::{command_of, decode_params, is_script, Param, ResultWriter};
use crate::endpoint::{CancelTarget, Opened};
use crate::error::{pg_error_text, PoolError};
use crate::status::{SessionStatus, TxStatus};

/// A stand-alone statement ready to run on a shared session (see [`Session::prepare_shared`]).
pub(crate) enum Shared {
    /// A prepared statement from the cache.
    Named(Statement),
    /// No named statements on this session (`statement_cache_size: 0`): one unnamed round trip.
    Unnamed,
    /// The text holds several statements.
    Several,
}

/// A session owned by the pool. Boxed: the pool moves sessions in and out of its idle lists
/// and leases on every checkout, and the client alone is hundreds of bytes.
pub(crate) struct PgConn(Box<Session>);

impl std::ops::Deref for PgConn {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.0
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.0
    }
}

/// What a `PgConn` holds. Its methods run to about 330 lines: every way a statement runs
/// (exclusive, shared, reset, transaction end) works on the same client, cache and status.
pub(crate) struct Session {
    /// The tokio-postgres client.
    pub(crate) client: Client,
    /// Transaction status and reported settings, as the server last said (see `status.rs`).
    pub(crate) status: Arc<SessionStatus>,
    /// How to cancel what runs on this session; shared, not rebuilt, on every checkout.
    pub(crate) cancel_token: Arc<CancelTarget>,
    /// Who polls its connection: the worker, or a JS thread running a statement on it.
    pub(crate) driver: Arc<crate::driver::Driver>,
    /// Index of its endpoint within the group.
    pub(crate) endpoint: usize,
    /// When it was last returned to the pool by a user (for `idle_timeout`).
    pub(crate) last_used: Instant,
    /// When the server last answered on it (for `ping_after_idle`).
    pub(crate) last_alive: Instant,
    /// How many times it was checked out (for `max_uses`); atomic because a lease handed
    /// straight to the next checkout counts a use through a shared reference.
    pub(crate) uses: AtomicU64,
    /// When it must be replaced (`max_lifetime`, jittered).
    pub(crate) expires: Option<Instant>,
    /// Its user ran something that may have changed session state (anything but a plain
    /// one-shot read or write): reset it before the next user. Atomic because a script can
    /// turn up on the shared (pipelined) path.
    used: AtomicBool,
    /// The reset to send in front of the next statement (see [`Session::end_of_user`]).
    reset_due: Option<&'static str>,
    /// Behind a lock because pipelined one-shot queries share the session (see `query_shared`).
    statements: Option<Mutex<LruCache<String, Statement>>>,
}

/// Everything a user can leave on a session, undone, except the pool's own prepared
/// statements (as Npgsql and PgBouncer do when they keep prepared statements; `DISCARD ALL`
/// would drop those too). One simple query, pipelined in front of the next user's statement.
const RESET: &str =
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD SEQUENCES; DISCARD TEMP";
/// The same, after the user ran an SQL-level `PREPARE`: every prepared statement goes, ours
/// too (the cache is emptied with it).
const RESET_AND_DEALLOCATE: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD SEQUENCES; DISCARD TEMP; DEALLOCATE ALL";

/// How long to wait for the ReadyForQuery that follows an error before giving up on the session.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Whether a statement is transaction control that needs no `BEGIN` of ours in front of it on
/// an `autocommit: false` group (it would only turn the user's own `BEGIN ISOLATION LEVEL ...`
/// into a warning). Only a hint for what to send: the transaction state itself is the server's.
fn is_transaction_control(command: &str) -> bool {
    matches!(command, "BEGIN" | "COMMIT" | "ROLLBACK")
}

impl PgConn {
    /// Wraps a fresh session.
    pub(crate) fn new(opened: Opened, endpoint: usize, cache_size: usize, max_lifetime_ms: u64) -> Self {
        Self(Box::new(Session::new(opened, endpoint, cache_size, max_lifetime_ms)))
    }
}

impl Session {
    fn new(opened: Opened, endpoint: usize, cache_size: usize, max_lifetime_ms: u64) -> Self {
        let now = Instant::now();
        let expires = (max_lifetime_ms > 0).then(|| {
            // Up to 10% jitter so connections opened together are not all replaced together.
            let jitter = 1.0 - fastrand::f64() * 0.1;
            now + Duration::from_millis(max_lifetime_ms).mul_f64(jitter)
        });
        Self {
            cancel_token: Arc::new(opened.cancel),
            driver: opened.driver,
            client: opened.client,
            status: opened.status,
            endpoint,
            last_used: now,
            last_alive: now,
            uses: AtomicU64::new(0),
            expires,
            used: AtomicBool::new(false),
            reset_due: None,
            statements: NonZeroUsize::new(cache_size).map(|n| Mutex::new(LruCache::new(n))),
        }
    }

    /// Whether the socket is gone.
    pub(crate) fn is_broken(&self) -> bool {
        self.client.is_closed()
    }

    /// The server's transaction status after the last statement.
    pub(crate) fn tx(&self) -> TxStatus {
        self.status.tx()
    }

    /// An error reaches us before the ReadyForQuery that follows it: wait for that (and for any
    /// other answer still due) so that [`Session::tx`] is current, then pass `result` on.
    async fn settle<T>(&self, result: Result<T, PoolError>) -> Result<T, PoolError> {
        if result.is_ok() {
            return result;
        }
        match tokio::time::timeout(SETTLE_LIMIT, self.status.settled()).await {
            Ok(()) => result,
            Err(_) => Err(PoolError::Connection(format!(
                "the server did not finish its answer within {} s of an error; the connection is dropped",
                SETTLE_LIMIT.as_secs()
            ))),
        }
    }

    /// Its user is done with it: if they may have changed session state, the reset goes out in
    /// front of the next statement (of whoever gets the session next). Returns whether a reset
    /// is now due.
    pub(crate) fn end_of_user(&mut self) -> bool {
        let settings = self.status.take_settings_changed();
        let prepared = self.status.take_prepared();
        let used = std::mem::take(self.used.get_mut());
        if !(used || settings || prepared || self.reset_due.is_some()) {
            return false;
        }
        if prepared || self.reset_due == Some(RESET_AND_DEALLOCATE) {
            // The server forgets every prepared statement; so must we.
            if let Some(cache) = &self.statements {
                cache.lock().clear();
            }
            self.reset_due = Some(RESET_AND_DEALLOCATE);
        } else {
            self.reset_due = Some(RESET);
        }
        true
    }

    /// Whether a reset is waiting for the next statement.
    pub(crate) fn reset_due(&self) -> bool {
        self.reset_due.is_some()
    }

    /// Sends the due reset on its own now (rolling back first when `rollback`), for a session
    /// that must be clean before it goes back to the pool.
    pub(crate) async fn reset_now(&mut self, rollback: bool) -> Result<(), PoolError> {
        let reset = self.reset_due.take();
        let text = match (rollback, reset) {
            (true, Some(reset)) => format!("ROLLBACK; {reset}"),
            (true, None) => "ROLLBACK".to_string(),
            (false, Some(reset)) => reset.to_string(),
            (false, None) => return Ok(()),
        };
        let result = self.client.batch_execute(&text).await.map_err(|e| PoolError::from_pg(&e));
        self.settle(result).await
    }

    async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(stmt) = self.statements.as_ref().and_then(|cache| cache.lock().get(sql).cloned()) {
            return Ok(stmt);
        }
        let stmt = self.client.prepare(sql).await?;
        if let Some(cache) = self.statements.as_ref() {
            cache.lock().put(sql.to_string(), stmt.clone());
        }
        Ok(stmt)
    }

    /// Forgets the cached statement of `sql` if `result` says the server no longer has it as
    /// prepared (`INVALID_SQL_STATEMENT_NAME`, after `DEALLOCATE` / `DISCARD`) or its result
    /// shape changed (`FEATURE_NOT_SUPPORTED`, after `ALTER TABLE`); returns whether it did, so that the caller may run it again.
    fn forget_stale(&self, sql: &str, result: &Result<Vec<u8>, PoolError>) -> bool {
        let Err(PoolError::Db(db)) = result else { return false };
        let stale = *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME
            || (*db.code() == SqlState::FEATURE_NOT_SUPPORTED && db.message().contains("cached plan must not change result type"));
        stale && self.statements.as_ref().is_some_and(|cache| cache.lock().pop(sql).is_some())
    }

    /// Prepares a stand-alone statement for [`Session::execute_shared`] on a session that other
    /// stand-alone statements may be using at the same time (tokio-postgres pipelines them on
    /// the socket). Only for statements that leave no session state behind (see
    /// [`pipelinable`]), on a session outside any transaction with no reset due. The prepare
    /// round trip (on a cache miss) is a step of its own, so that the statement itself goes to
    /// the socket in one write at the first poll of `execute_shared`: the pool orders the
    /// statements sharing a session by those writes.
    pub(crate) async fn prepare_shared(&self, sql: &str, params: &[u8]) -> Result<Shared, PoolError> {
        if self.client.is_closed() {
            return Err(PoolError::Unsent("connection closed before the statement was sent".into()));
        }
        // No parameters (the parameter buffer is empty) and several statements: a script.
        if params.is_empty() && is_script(sql) {
            return Ok(Shared::Several);
        }
        if self.statements.is_none() {
            return Ok(Shared::Unnamed);
        }
        match self.statement(sql).await {
            Ok(stmt) => Ok(Shared::Named(stmt)),
            Err(e) if params.is_empty() && is_multi_statement_error(&e) => Ok(Shared::Several),
            Err(e) => Err(PoolError::before_run(&e)),
        }
    }

    /// Runs a statement prepared by [`Session::prepare_shared`]; everything it sends goes out
    /// at its first poll. `Ok(None)`: the text holds several statements, which must run on an
    /// exclusive session.
    pub(crate) async fn execute_shared(&self, prepared: Shared, sql: &str, params: &[u8]) -> Result<Option<Vec<u8>>, PoolError> {
        let params = decode_params(params).map_err(PoolError::Query)?;
        let command = command_of(sql);
        let result = match prepared {
            Shared::Several => return Ok(None),
            Shared::Unnamed => match execute_unnamed(&self.client, sql, &params, &command).await {
                Err(Unnamed::MultiStatement) => return Ok(None),
                Err(Unnamed::Failed(e)) => Err(e),
                Ok(bytes) => Ok(bytes),
            },
            Shared::Named(stmt) => {
                let result = execute(&self.client, &stmt, &params, &command).await;
                // Shared sessions run outside transactions: a stale statement may run again at once.
                if self.forget_stale(sql, &result) {
                    match self.statement(sql).await {
                        Ok(stmt) => execute(&self.client, &stmt, &params, &command).await,
                        Err(e) => Err(PoolError::before_run(&e)),
                    }
                } else {
                    result
                }
            }
        };
        self.check_encoding(result).await.map(Some)
    }

    /// Runs one statement and returns the encoded result. With `begin`, a `BEGIN` is sent in
    /// the same pipeline first (one round trip for both), unless the statement is transaction
    /// control itself. `plain`: a one-shot read or write that leaves no session state (no reset
    /// needed for it). A due reset goes out in front of it, in the same pipeline.
    ///
    /// A failure from before the statement could run is [`PoolError::Unsent`]; a lost
    /// connection after that is a [`PoolError::Connection`] that says it may have run.
    pub(crate) async fn query(&mut self, sql: &str, params: &[u8], begin: bool, plain: bool) -> Result<Vec<u8>, PoolError> {
        if self.client.is_closed() {
            // tokio-postgres would fail this at once without writing anything.
            return Err(PoolError::Unsent("connection closed before the statement was sent".into()));
        }
        if !plain {
            *self.used.get_mut() = true;
        }
        let command = command_of(sql);
        let begin = begin && !is_transaction_control(&command);
        let result = match self.reset_due.take() {
            None => self.run(sql, params, &command, begin).await,
            Some(reset) => {
                let (reset, result) = tokio::join!(self.client.batch_execute(reset), self.run(sql, params, &command, begin));
                match (reset, result) {
                    (Ok(()), result) => result,
                    // The session died under both: the statement's own error says whether it ran.
                    (Err(_), Err(e)) if e.is_connection_fault() => Err(e),
                    // The statement ran on a session that kept the last user's state: say so,
                    // and the connection error makes the caller discard the session.
                    (Err(e), _) => Err(PoolError::Connection(format!(
                        "resetting the session for a new user failed ({}); the statement may have run",
                        pg_error_text(&e)
                    ))),
                }
            }
        };
        let result = self.settle(result).await;
        // Outside a transaction a stale cached statement may simply run again.
        let result = if self.forget_stale(sql, &result) && self.tx() == TxStatus::Idle {
            let again = self.run(sql, params, &command, false).await;
            self.settle(again).await
        } else {
            result
        };
        self.check_encoding(result).await
    }

    /// Results are decoded as UTF-8, which is what the session was opened with: a statement
    /// that changed `client_encoding` fails, and the setting goes back to UTF8 at once.
    async fn check_encoding(&self, result: Result<Vec<u8>, PoolError>) -> Result<Vec<u8>, PoolError> {
        if !self.status.foreign_encoding() {
            return result;
        }
        self.client.batch_execute("SET client_encoding TO 'UTF8'").await.map_err(|e| PoolError::from_pg(&e))?;
        Err(PoolError::Query("client_encoding must stay UTF8 (results are decoded as UTF-8); it has been set back to UTF8".into()))
    }

    async fn run(&self, sql: &str, params: &[u8], command: &str, begin: bool) -> Result<Vec<u8>, PoolError> {
        let params = decode_params(params).map_err(PoolError::Query)?;
        // A pg client's own BEGIN (deferred to go out with this statement, see `pgcompat`).
        let mode = crate::pgcompat::current();
        let begin_sql = mode.as_ref().and_then(|m| m.begin()).unwrap_or("BEGIN");
        if command == "COMMIT" && self.tx() == TxStatus::Failed {
            if crate::pgcompat::current().is_some() {
                // pg's answer: the server's, a ROLLBACK tag and no error (Kysely and others
                // look for that tag).
                let rolled_back = self.client.batch_execute("ROLLBACK").await.map_err(|e| PoolError::while_running(&e));
                return rolled_back.map(|()| ResultWriter::new("ROLLBACK", &[]).finish(None));
            }
            // The server would answer ROLLBACK without an error; a lost commit must be loud.
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(PoolError::Query("COMMIT failed: the transaction was aborted by an earlier error and has been rolled back".into()));
        }
        if params.is_empty() && is_script(sql) {
            // Several statements: the simple protocol at once (a failed prepare of the text would
            // abort an open transaction).
            if begin {
                self.client.batch_execute(begin_sql).await.map_err(|e| PoolError::from_pg(&e))?;
            }
            return self.run_script(sql, command).await;
        }
        if self.statements.is_none() {
            // No named statements at all (PgBouncer in transaction mode): one unnamed
            // Parse/Bind/Execute per statement, pipelined behind the BEGIN when there is one.
            let run = execute_unnamed(&self.client, sql, &params, command);
            let result = if begin {
                let (began, result) = tokio::join!(self.client.batch_execute(begin_sql), run);
                began.map_err(|e| PoolError::while_running(&e))?;
                result
            } else {
                run.await
            };
            return match result {
                Ok(bytes) => Ok(bytes),
                Err(Unnamed::Failed(e)) => Err(e),
                Err(Unnamed::MultiStatement) => self.run_script(sql, command).await,
            };
        }
        let stmt = match self.statement(sql).await {
            Ok(stmt) => stmt,
            // Scripts with several statements cannot be prepared; run them as a simple query.
            Err(e) if params.is_empty() && is_multi_statement_error(&e) => {
                if begin {
                    self.client.batch_execute(begin_sql).await.map_err(|e| PoolError::from_pg(&e))?;
                }
                return self.run_script(sql, command).await;
            }
            // Parse and Describe never run anything.
            Err(e) => return Err(PoolError::before_run(&e)),
        };
        if begin {
            let (began, result) = tokio::join!(self.client.batch_execute(begin_sql), execute(&self.client, &stmt, &params, command));
            began.map_err(|e| PoolError::while_running(&e))?;
            result
        } else {
            execute(&self.client, &stmt, &params, command).await
        }
    }

    /// Runs a text of several statements through the simple protocol.
    async fn run_script(&self, sql: &str, command: &str) -> Result<Vec<u8>, PoolError> {
        self.used.store(true, Ordering::Relaxed);
        if crate::pgcompat::current().is_some() {
            return self.run_script_pg(sql).await;
        }
        self.client.batch_execute(sql).await.map_err(|e| PoolError::while_running(&e))?;
        Ok(ResultWriter::new(command, &[]).finish(None))
    }

    /// A script for `pgdbpool/pg`: every statement's result, as pg returns them (text format),
    /// read off the byte stream while the script runs (see `pgcompat`).
    async fn run_script_pg(&self, sql: &str) -> Result<Vec<u8>, PoolError> {
        // Whatever went out before (a failed prepare of this text, a reset) must be answered
        // first, so that what is captured up to the next ReadyForQuery is the script's answer.
        if tokio::time::timeout(SETTLE_LIMIT, self.status.settled()).await.is_err() {
            return Err(PoolError::Connection("the server did not finish an earlier answer; the connection is dropped".into()));
        }
        self.status.pg.begin_capture();
        let result = self.client.batch_execute(sql).await;
        let captured = self.status.pg.end_capture();
        result.map_err(|e| PoolError::while_running(&e))?;
        crate::pgcompat::script_results(&captured).map_err(PoolError::Query)
    }

    /// Commits; an aborted transaction or a failing COMMIT is an error. Outside a transaction
    /// (the user ended it in SQL, or never began one) there is nothing to send.
    pub(crate) async fn commit(&mut self) -> Result<(), PoolError> {
        match self.tx() {
            TxStatus::Idle => Ok(()),
            TxStatus::Failed => {
                let rolled_back = self.client.batch_execute("ROLLBACK").await.map_err(|e| PoolError::from_pg(&e));
                self.settle(rolled_back).await?;
                Err(PoolError::Query("commit failed: the transaction was aborted by an earlier error and has been rolled back".into()))
            }
            TxStatus::InTransaction => {
                let committed = self.client.batch_execute("COMMIT").await.map_err(|e| PoolError::while_running(&e));
                self.settle(committed).await
            }
        }
    }

    /// Rolls back an open or failed transaction.
    pub(crate) async fn rollback(&mut self) -> Result<(), PoolError> {
        if self.tx() == TxStatus::Idle {
            return Ok(());
        }
        let result = self.client.batch_execute("ROLLBACK").await.map_err(|e| PoolError::from_pg(&e));
        self.settle(result).await
    }
}

async fn execute(client: &Client, stmt: &Statement, params: &[Param<'_>], command: &str) -> Result<Vec<u8>, PoolError> {
    let mut writer = ResultWriter::new(command, stmt.columns());
    let stream = client.query_raw(stmt, params.iter()).await.map_err(|e| {
        // An error answer before BindComplete means the server did not execute the statement;
        // a lost connection here may have lost a BindComplete, so it may have run.
        if e.as_db_error().is_some() {
            PoolError::before_run(&e)
        } else {
            PoolError::while_running(&e)
        }
    })?;
    pin_mut!(stream);
    while let Some(row) = stream.try_next().await.map_err(|e| PoolError::while_running(&e))? {
        writer.push_row(&row).map_err(PoolError::Query)?;
    }
    Ok(writer.finish(stream.rows_affected()))
}

enum Unnamed {
    /// The text holds several statements.
    MultiStatement,
    Failed(PoolError),
}

/// Runs a statement as the unnamed statement, in one round trip. Parameters are typed
/// `unknown` (the server infers them, as for a prepared statement), bytea ones `bytea` since
/// they are sent in binary. The column list comes with the first row, so an empty result has
/// no `fields`.
async fn execute_unnamed(client: &Client, sql: &str, params: &[Param<'_>], command: &str) -> Result<Vec<u8>, Unnamed> {
    let failed = |e: tokio_postgres::Error| {
        if params.is_empty() && is_multi_statement_error(&e) {
            Unnamed::MultiStatement
        } else if is_lost_type_lookup(&e) {
            Unnamed::Failed(PoolError::Query(format!(
                "{}: a result column has a type that is not built in (enum, composite, extension type); looking it \
                 up takes a prepared statement, which a transaction-mode pooler such as PgBouncer may have left on \
                 another server session. Cast such columns to text (or to a built-in type) when statement_cache_size is 0",
                pg_error_text(&e)
            )))
        } else {
            // An error answer before the rows (Parse or Bind failed) means nothing ran; a lost
            // connection here may have lost the server's answers, so it may have run.
            Unnamed::Failed(if e.as_db_error().is_some() { PoolError::before_run(&e) } else { PoolError::while_running(&e) })
        }
    };
    let typed = params.iter().map(|p| (p, if p.binary { Type::BYTEA } else { Type::UNKNOWN }));
    let stream = client.query_typed_raw(sql, typed).await.map_err(failed)?;
    pin_mut!(stream);
    let mut writer: Option<ResultWriter> = None;
    while let Some(row) = stream.try_next().await.map_err(|e| Unnamed::Failed(PoolError::while_running(&e)))? {
        let writer = writer.get_or_insert_with(|| ResultWriter::new(command, row.columns()));
        writer.push_row(&row).map_err(|e| Unnamed::Failed(PoolError::Query(e)))?;
    }
    Ok(writer.unwrap_or_else(|| ResultWriter::new(command, &[])).finish(stream.rows_affected()))
}

/// Whether a stand-alone statement may share its session with others in flight: plain reads
/// and writes, which cannot open a transaction or change session state. Scripts of several
/// statements cannot be prepared, so they never get here (they fail to prepare and take the
/// exclusive path's fallback instead).
pub(crate) fn pipelinable(sql: &str) -> bool {
    matches!(command_of(sql).as_str(), "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "WITH" | "VALUES" | "TABLE" | "MERGE")
}

/// Whether `e` says one of tokio-postgres's own statements (`s0`, `s1`, ...) is missing. With
/// `statement_cache_size: 0` we prepare none, but tokio-postgres still prepares one to look up
/// a result type it does not know, the first time it meets it (and keeps it for later lookups).
fn is_lost_type_lookup(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME
            && db
                .message()
                .strip_prefix("prepared statement \"s")
                .and_then(|rest| rest.strip_suffix("\" does not exist"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn is_multi_statement_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| *db.code() == SqlState::SYNTAX_ERROR && db.message().contains("multiple commands"))
}
