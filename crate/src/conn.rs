//! One pooled session: the client, its statement cache and its transaction state.

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, TryStreamExt};
use lru::LruCache;
use parking_lot::Mutex;
use tokio_postgres::types::Type;
use tokio_postgres::{CancelToken, Client, Statement};

use crate::error::{pg_error_text, PoolError};
use crate::protocol::{command_of, decode_params, Param, ResultWriter};

/// Transaction state as tracked from the statements we ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// No transaction open.
    Idle,
    /// A transaction is open and healthy.
    Open,
    /// A statement failed inside the transaction; only ROLLBACK can end it.
    Failed,
}

/// A stand-alone statement ready to run on a shared session (see [`Session::prepare_shared`]).
pub enum Shared {
    /// A prepared statement from the cache.
    Named(Statement),
    /// No named statements on this session (`statement_cache_size: 0`): one unnamed round trip.
    Unnamed,
    /// The text holds several statements.
    Several,
}

/// A session owned by the pool. Boxed: the pool moves sessions in and out of its idle lists
/// and leases on every checkout, and the client alone is hundreds of bytes.
pub struct PgConn(Box<Session>);

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

/// What a `PgConn` holds.
pub struct Session {
    /// The tokio-postgres client.
    pub client: Client,
    /// How to cancel what runs on this session; shared, not rebuilt, on every checkout.
    pub cancel_token: Arc<CancelToken>,
    /// Index of its endpoint within the group.
    pub endpoint: usize,
    /// When it was last returned to the pool by a user (for `idle_timeout`).
    pub last_used: Instant,
    /// When the server last answered on it (for `ping_after_idle`).
    pub last_alive: Instant,
    /// How many times it was checked out (for `max_uses`); atomic because a lease handed
    /// straight to the next checkout counts a use through a shared reference.
    pub uses: AtomicU64,
    /// When it must be replaced (`max_lifetime`, jittered).
    pub expires: Option<Instant>,
    /// Transaction state.
    pub tx: TxState,
    /// Behind a lock because pipelined one-shot queries share the session (see `query_shared`).
    statements: Option<Mutex<LruCache<String, Statement>>>,
}

impl PgConn {
    /// Wraps a fresh session.
    pub fn new(client: Client, endpoint: usize, cache_size: usize, max_lifetime_ms: u64) -> Self {
        Self(Box::new(Session::new(client, endpoint, cache_size, max_lifetime_ms)))
    }
}

impl Session {
    fn new(client: Client, endpoint: usize, cache_size: usize, max_lifetime_ms: u64) -> Self {
        let now = Instant::now();
        let expires = (max_lifetime_ms > 0).then(|| {
            // Up to 10% jitter so connections opened together are not all replaced together.
            let jitter = 1.0 - fastrand::f64() * 0.1;
            now + Duration::from_millis(max_lifetime_ms).mul_f64(jitter)
        });
        Self {
            cancel_token: Arc::new(client.cancel_token()),
            client,
            endpoint,
            last_used: now,
            last_alive: now,
            uses: AtomicU64::new(0),
            expires,
            tx: TxState::Idle,
            statements: NonZeroUsize::new(cache_size).map(|n| Mutex::new(LruCache::new(n))),
        }
    }

    /// Whether the socket is gone.
    pub fn is_broken(&self) -> bool {
        self.client.is_closed()
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

    /// Prepares a stand-alone statement for [`Session::execute_shared`] on a session that other
    /// stand-alone statements may be using at the same time (tokio-postgres pipelines them on
    /// the socket). Only for statements that leave no session state behind (see
    /// [`pipelinable`]). The prepare round trip (on a cache miss) is a step of its own, so that
    /// the statement itself goes to the socket in one write at the first poll of
    /// `execute_shared`: the pool orders the statements sharing a session by those writes.
    pub async fn prepare_shared(&self, sql: &str, params: &[u8]) -> Result<Shared, PoolError> {
        if self.client.is_closed() {
            return Err(PoolError::Unsent("connection closed before the statement was sent".into()));
        }
        if self.statements.is_none() {
            return Ok(Shared::Unnamed);
        }
        match self.statement(sql).await {
            Ok(stmt) => Ok(Shared::Named(stmt)),
            // No parameters: the parameter buffer is empty.
            Err(e) if params.is_empty() && is_multi_statement_error(&e) => Ok(Shared::Several),
            Err(e) => Err(PoolError::before_run(&e)),
        }
    }

    /// Runs a statement prepared by [`Session::prepare_shared`]; everything it sends goes out
    /// at its first poll. `Ok(None)`: the text holds several statements, which must run on an
    /// exclusive session.
    pub async fn execute_shared(&self, prepared: Shared, sql: &str, params: &[u8]) -> Result<Option<Vec<u8>>, PoolError> {
        let params = decode_params(params).map_err(PoolError::Query)?;
        match prepared {
            Shared::Several => Ok(None),
            Shared::Unnamed => match execute_unnamed(&self.client, sql, &params, command_of(sql).as_str()).await {
                Err(Unnamed::MultiStatement) => Ok(None),
                Err(Unnamed::Failed(e)) => Err(e),
                Ok(bytes) => Ok(Some(bytes)),
            },
            Shared::Named(stmt) => execute(&self.client, &stmt, &params, command_of(sql).as_str()).await.map(Some),
        }
    }

    /// Runs one statement and returns the encoded result. With `begin`, a `BEGIN` is sent in
    /// the same pipeline first (one round trip for both).
    ///
    /// A failure from before the statement could run is [`PoolError::Unsent`]; a lost
    /// connection after that is a [`PoolError::Connection`] that says it may have run.
    pub async fn query(&mut self, sql: &str, params: &[u8], begin: bool) -> Result<Vec<u8>, PoolError> {
        if self.client.is_closed() {
            // tokio-postgres would fail this at once without writing anything.
            return Err(PoolError::Unsent("connection closed before the statement was sent".into()));
        }
        let command = command_of(sql);
        let result = self.run(sql, params, &command, begin).await;
        self.track_tx(&command, result.is_ok());
        result
    }

    async fn run(&mut self, sql: &str, params: &[u8], command: &str, begin: bool) -> Result<Vec<u8>, PoolError> {
        let params = decode_params(params).map_err(PoolError::Query)?;
        if command == "COMMIT" && self.tx == TxState::Failed {
            // The server would answer ROLLBACK without an error; a lost commit must be loud.
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(PoolError::Query(
                "COMMIT failed: the transaction was aborted by an earlier error and has been rolled back".into(),
            ));
        }
        if self.statements.is_none() {
            // No named statements at all (PgBouncer in transaction mode): one unnamed
            // Parse/Bind/Execute per statement, pipelined behind the BEGIN when there is one.
            let run = execute_unnamed(&self.client, sql, &params, command);
            let result = if begin {
                let (began, result) = tokio::join!(self.client.batch_execute("BEGIN"), run);
                began.map_err(|e| PoolError::while_running(&e))?;
                self.tx = TxState::Open;
                result
            } else {
                run.await
            };
            return match result {
                Ok(bytes) => Ok(bytes),
                Err(Unnamed::Failed(e)) => Err(e),
                Err(Unnamed::MultiStatement) => {
                    self.client.batch_execute(sql).await.map_err(|e| PoolError::while_running(&e))?;
                    Ok(ResultWriter::new(command, &[]).finish(None))
                }
            };
        }
        let stmt = match self.statement(sql).await {
            Ok(stmt) => stmt,
            // Scripts with several statements cannot be prepared; run them as a simple query.
            Err(e) if params.is_empty() && is_multi_statement_error(&e) => {
                if begin {
                    self.begin().await?;
                }
                self.client.batch_execute(sql).await.map_err(|e| PoolError::while_running(&e))?;
                return Ok(ResultWriter::new(command, &[]).finish(None));
            }
            // Parse and Describe never run anything.
            Err(e) => return Err(PoolError::before_run(&e)),
        };
        if begin {
            let (began, result) = tokio::join!(self.client.batch_execute("BEGIN"), execute(&self.client, &stmt, &params, command));
            began.map_err(|e| PoolError::while_running(&e))?;
            self.tx = TxState::Open;
            result
        } else {
            execute(&self.client, &stmt, &params, command).await
        }
    }

    async fn begin(&mut self) -> Result<(), PoolError> {
        self.client.batch_execute("BEGIN").await.map_err(|e| PoolError::from_pg(&e))?;
        self.tx = TxState::Open;
        Ok(())
    }

    fn track_tx(&mut self, command: &str, ok: bool) {
        self.tx = match (command, ok, self.tx) {
            ("BEGIN", true, _) => TxState::Open,
            ("COMMIT" | "ROLLBACK", _, _) => TxState::Idle,
            (_, false, TxState::Open) => TxState::Failed,
            (_, _, state) => state,
        };
    }

    /// Commits; an aborted transaction or a failing COMMIT is an error.
    pub async fn commit(&mut self) -> Result<(), PoolError> {
        match self.tx {
            TxState::Idle => Ok(()),
            TxState::Failed => {
                let rolled_back = self.client.batch_execute("ROLLBACK").await;
                self.tx = TxState::Idle;
                rolled_back.map_err(|e| PoolError::from_pg(&e))?;
                Err(PoolError::Query(
                    "commit failed: the transaction was aborted by an earlier error and has been rolled back".into(),
                ))
            }
            TxState::Open => {
                let result = self.client.batch_execute("COMMIT").await;
                // Whatever happened, the server has ended the transaction (or the socket is gone).
                self.tx = TxState::Idle;
                result.map_err(|e| PoolError::while_running(&e))
            }
        }
    }

    /// Rolls back an open or failed transaction.
    pub async fn rollback(&mut self) -> Result<(), PoolError> {
        if self.tx == TxState::Idle {
            return Ok(());
        }
        let result = self.client.batch_execute("ROLLBACK").await;
        self.tx = TxState::Idle;
        result.map_err(|e| PoolError::from_pg(&e))
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
pub fn pipelinable(sql: &str) -> bool {
    matches!(command_of(sql).as_str(), "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "WITH" | "VALUES" | "TABLE" | "MERGE")
}

/// Whether `e` says one of tokio-postgres's own statements (`s0`, `s1`, ...) is missing. With
/// `statement_cache_size: 0` we prepare none, but tokio-postgres still prepares one to look up
/// a result type it does not know, the first time it meets it (and keeps it for later lookups).
fn is_lost_type_lookup(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code().code() == "26000"
            && db
                .message()
                .strip_prefix("prepared statement \"s")
                .and_then(|rest| rest.strip_suffix("\" does not exist"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn is_multi_statement_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| db.code().code() == "42601" && db.message().contains("multiple commands"))
}
