//! Errors that cross to JavaScript.
//!
//! They cross as the JSON of [`PoolError::to_json`] — the payload of an error completion record,
//! or the reason of an error a napi call throws — which `lib/errors.ts` turns into the matching
//! `PgDbPoolError` subclass. Messages never contain passwords.

use serde::Serialize;
use tokio_postgres::error::{DbError, SqlState};

/// Every failure the pool reports.
#[derive(Debug, Clone)]
pub(crate) enum PoolError {
    /// The configuration was refused (by the core's own checks, after `lib/config.ts`'s).
    Config(String),
    /// The pool was closed.
    Closed,
    /// No connection became free within `acquire_timeout`, or the wait queue was full.
    Timeout(String),
    /// A connection could not be opened or was lost.
    Connection(String),
    /// The connection was found dead before the statement was sent (or the server refused it
    /// before running it): the statement did not run, so a one-shot query may be retried.
    Unsent(String),
    /// No endpoint of the group could be reached; one line per endpoint.
    Offline(Vec<String>),
    /// The server rejected a statement.
    Db(Box<DbError>),
    /// A statement failed on the client side (wrong parameter count, bad protocol state).
    Query(String),
    /// The operation was aborted (its `AbortSignal`) before it reached the server. JS has
    /// already settled its promise; the answer only frees the operation's id.
    Aborted,
    /// A bug in the core (a panic), caught before it could cross N-API.
    Internal(String),
}

impl PoolError {
    /// The error of an operation whose code panicked; `payload` is the panic's.
    pub(crate) fn from_panic(what: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        PoolError::Internal(format!("internal error in pgdbpool's core ({what}): it panicked: {detail}"))
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    causes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db: Option<WireDb<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireDb<'a> {
    sql_state: &'a str,
    severity: &'a str,
    detail: Option<&'a str>,
    hint: Option<&'a str>,
    position: Option<String>,
    schema: Option<&'a str>,
    table: Option<&'a str>,
    column: Option<&'a str>,
    data_type: Option<&'a str>,
    constraint: Option<&'a str>,
    routine: Option<&'a str>,
    r#where: Option<&'a str>,
}

/// Readable text of a tokio-postgres error: its own `Display` says only "db error" for server
/// errors and hides I/O causes.
pub(crate) fn pg_error_text(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Server errors after which the server ends the session: admin shutdown, crash shutdown, not
/// accepting connections now, connection failure, no such connection.
const SESSION_ENDING: [SqlState; 5] = [
    SqlState::ADMIN_SHUTDOWN,
    SqlState::CRASH_SHUTDOWN,
    SqlState::CANNOT_CONNECT_NOW,
    SqlState::CONNECTION_FAILURE,
    SqlState::CONNECTION_DOES_NOT_EXIST,
];

impl PoolError {
    /// Classifies a tokio-postgres error from a statement.
    pub(crate) fn from_pg(err: &tokio_postgres::Error) -> Self {
        if let Some(db) = err.as_db_error() {
            return PoolError::Db(Box::new(db.clone()));
        }
        let text = pg_error_text(err);
        if err.is_closed() {
            return PoolError::Connection(format!("connection lost: {text}"));
        }
        if text.starts_with("error communicating with the server") || text.contains("connection closed") {
            PoolError::Connection(text)
        } else {
            PoolError::Query(text)
        }
    }

    /// For a failure from before the server could have run the statement (while preparing it,
    /// or an error answer ahead of BindComplete): a lost connection becomes [`PoolError::Unsent`].
    pub(crate) fn before_run(err: &tokio_postgres::Error) -> Self {
        match Self::from_pg(err) {
            e @ (PoolError::Connection(_) | PoolError::Db(_)) if e.is_connection_fault() => {
                PoolError::Unsent(format!("connection lost before the statement ran: {}", pg_error_text(err)))
            }
            other => other,
        }
    }

    /// For a failure once the statement may be running: a lost connection says it may have run.
    pub(crate) fn while_running(err: &tokio_postgres::Error) -> Self {
        match Self::from_pg(err) {
            PoolError::Connection(m) => PoolError::Connection(format!("{m} (the statement may have run)")),
            other => other,
        }
    }

    /// Whether the error means the connection itself can no longer be used.
    pub(crate) fn is_connection_fault(&self) -> bool {
        match self {
            PoolError::Connection(_) | PoolError::Unsent(_) => true,
            PoolError::Db(db) => SESSION_ENDING.contains(db.code()),
            _ => false,
        }
    }

    /// The error as JS reads it (`fromWire` in `lib/errors.ts`): in an error completion record,
    /// and as the reason of an error thrown by a napi call. The one way errors cross to JS.
    pub(crate) fn to_json(&self) -> String {
        let (code, message, causes, db) = match self {
            PoolError::Config(m) => ("CONFIG", m.clone(), None, None),
            PoolError::Closed => ("POOL_CLOSED", "the pool is closed".to_string(), None, None),
            PoolError::Timeout(m) => ("POOL_TIMEOUT", m.clone(), None, None),
            PoolError::Connection(m) => ("DB_CONNECTION", m.clone(), None, None),
            PoolError::Unsent(m) => ("DB_CONNECTION", format!("{m} (the statement was not run)"), None, None),
            PoolError::Offline(causes) => {
                ("DB_OFFLINE", format!("no endpoint could be reached: {}", causes.join("; ")), Some(causes.as_slice()), None)
            }
            PoolError::Query(m) => ("DB_QUERY", m.clone(), None, None),
            PoolError::Aborted => ("ABORTED", "the operation was aborted".to_string(), None, None),
            PoolError::Internal(m) => ("INTERNAL", m.clone(), None, None),
            PoolError::Db(db) => {
                let wire = WireDb {
                    sql_state: db.code().code(),
                    severity: db.severity(),
                    detail: db.detail(),
                    hint: db.hint(),
                    position: db.position().map(|p| match p {
                        tokio_postgres::error::ErrorPosition::Original(n) => n.to_string(),
                        tokio_postgres::error::ErrorPosition::Internal { position, .. } => position.to_string(),
                    }),
                    schema: db.schema(),
                    table: db.table(),
                    column: db.column(),
                    data_type: db.datatype(),
                    constraint: db.constraint(),
                    routine: db.routine(),
                    r#where: db.where_(),
                };
                ("DB_QUERY", db.message().to_string(), None, Some(wire))
            }
        };
        serde_json::to_string(&Wire { code, message, causes, db })
            .unwrap_or_else(|_| r#"{"code":"DB_QUERY","message":"unserializable error"}"#.to_string())
    }
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Closed => f.write_str("the pool is closed"),
            PoolError::Config(m)
            | PoolError::Timeout(m)
            | PoolError::Connection(m)
            | PoolError::Unsent(m)
            | PoolError::Query(m)
            | PoolError::Internal(m) => f.write_str(m),
            PoolError::Aborted => f.write_str("the operation was aborted"),
            PoolError::Offline(causes) => write!(f, "no endpoint could be reached: {}", causes.join("; ")),
            PoolError::Db(db) => write!(f, "{} (SQLSTATE {})", db.message(), db.code().code()),
        }
    }
}

impl From<PoolError> for napi::Error {
    fn from(err: PoolError) -> Self {
        napi::Error::from_reason(err.to_json())
    }
}
