//! What `pgdbpool/pg` (the drop-in for node-postgres, `lib/pg/`) needs of the core beyond the
//! pool's own API, kept apart from it:
//!
//! - **pg mode** for a statement (a task-local [`PgMode`], set around the statement by the two
//!   pg operations, see `bindings/submission.rs`): columns whose type is in the statement's *fast set* keep
//!   the pool's decoded payloads; every other column comes as PostgreSQL's text, which
//!   `lib/pg/` hands to the pg-types parser in force (a parser the user set, or pg's own for
//!   types the fast path does not decode as pg does). Each result also carries pg's field
//!   metadata in a trailer after the rows ([`trailer`]), so the pool's own decoder reads it
//!   unchanged.
//! - **scripts** (several statements in one simple query, as pg sends a text without values):
//!   every statement's result, read off the session's byte stream while the script runs
//!   ([`SessionTap`], fed by `status.rs`), as pg returns them: an array of results in text format.
//! - **asynchronous messages** of a session a pg client holds: NotificationResponse,
//!   NoticeResponse and the end of the connection, handed to a subscriber (the JS client's
//!   completion queue) as they arrive.
//! - the backend's process id (BackendKeyData), for pg's `client.processID`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use crate::status::SessionStatus;

tokio::task_local! {
    /// Set while a pg-mode statement runs (see the module docs).
    pub(crate) static PG_MODE: Arc<PgMode>;
}

/// How the results of one pg-mode statement are encoded.
#[derive(Debug, Default)]
pub(crate) struct PgMode {
    /// Type OIDs whose columns keep the fast payload (sorted); every other column is text.
    fast: Vec<u32>,
    /// A pg client's BEGIN, held back by `lib/pg` (it cannot fail) to go out in front of this
    /// statement in the same round trip, as the pool does with its own BEGIN.
    begin: Option<String>,
}

impl PgMode {
    /// Reads the options chunk of a pg operation: `u32 count | u32 oid...` (the fast set), then
    /// optionally `u32 len | BEGIN text`.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let bad = || "malformed pg options".to_string();
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let count = u32::from_be_bytes(bytes.get(0..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
        let end = 4 + count.checked_mul(4).ok_or_else(bad)?;
        let body = bytes.get(4..end).ok_or_else(bad)?;
        let mut fast: Vec<u32> = body.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
        fast.sort_unstable();
        fast.dedup();
        let mut begin = None;
        if let Some(rest) = bytes.get(end..).filter(|r| !r.is_empty()) {
            let len = u32::from_be_bytes(rest.get(0..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
            let text = rest.get(4..4 + len).ok_or_else(bad)?;
            begin = Some(String::from_utf8(text.to_vec()).map_err(|_| bad())?);
        }
        Ok(Self { fast, begin })
    }

    /// The held-back BEGIN to send in front of this statement, if any.
    pub(crate) fn begin(&self) -> Option<&str> {
        self.begin.as_deref()
    }

    /// Whether columns of type `oid` keep the fast payload.
    pub(crate) fn is_fast(&self, oid: u32) -> bool {
        self.fast.binary_search(&oid).is_ok()
    }
}

/// The pg mode of the running statement, if it is one.
pub(crate) fn current() -> Option<Arc<PgMode>> {
    PG_MODE.try_with(Arc::clone).ok()
}

/// pg's `dataTypeSize` (the type's `typlen`) for the built-in types; -1 (variable) otherwise.
fn type_size(oid: u32) -> i16 {
    match oid {
        16 | 18 => 1,
        21 => 2,
        23 | 26 | 28 | 29 | 700 | 1082 | 24 | 2202 | 2203 | 2204 | 2205 | 2206 | 3734 | 3769 | 4089 | 4096 | 4191 => 4,
        20 | 701 | 790 | 1083 | 1114 | 1184 | 3220 | 5069 => 8,
        27 => 6,
        829 => 6,
        774 => 8,
        1266 => 12,
        1186 | 2950 | 600 => 16,
        601 | 603 | 628 => 32,
        718 => 24,
        19 => 64,
        2275 => -2,
        _ => -1,
    }
}

/// Field metadata for a result's trailer (the type OID is in the result's header).
pub(crate) struct FieldMeta {
    /// `tableID`.
    pub(crate) table: u32,
    /// `columnID`.
    pub(crate) column: i16,
    /// `dataTypeSize`.
    pub(crate) size: i16,
    /// `dataTypeModifier`.
    pub(crate) modifier: i32,
    /// The payload is the fast one (else PostgreSQL's text).
    pub(crate) fast: bool,
}

impl FieldMeta {
    /// From a tokio-postgres column.
    pub(crate) fn of(column: &tokio_postgres::Column, fast: bool) -> Self {
        let oid = column.type_().oid();
        Self {
            table: column.table_oid().unwrap_or(0),
            column: column.column_id().unwrap_or(0),
            size: type_size(oid),
            modifier: column.type_modifier(),
            fast,
        }
    }
}

/// Result flag: every cell is PostgreSQL's text (a script's result).
pub(crate) const ALL_TEXT: u8 = 1;

/// Appends the trailer: `u8 flags | per column: u32 table, i16 column, i16 size, i32 modifier,
/// u8 fast | u32 trailer length` (the length, last, lets the reader find the start).
pub(crate) fn trailer(out: &mut Vec<u8>, flags: u8, fields: &[FieldMeta]) {
    let start = out.len();
    out.push(flags);
    for f in fields {
        out.extend_from_slice(&f.table.to_be_bytes());
        out.extend_from_slice(&f.column.to_be_bytes());
        out.extend_from_slice(&f.size.to_be_bytes());
        out.extend_from_slice(&f.modifier.to_be_bytes());
        out.push(u8::from(f.fast));
    }
    let len = (out.len() - start) as u32;
    out.extend_from_slice(&len.to_be_bytes());
}

// ---------- scripts: results read off the byte stream ----------

/// A subscriber to a session's asynchronous messages: called with the message type (`A`
/// notification, `N` notice, `X` the connection ended) and its body.
pub(crate) type Subscriber = Arc<dyn Fn(u8, &[u8]) + Send + Sync>;

/// What `status.rs` records for this module on each session.
#[derive(Default)]
pub(crate) struct SessionTap {
    pid: AtomicU32,
    subscribed: AtomicBool,
    subscriber: Mutex<Option<Subscriber>>,
    ended: AtomicBool,
    capturing: AtomicBool,
    /// Captured messages, `u8 type | u32 len | body` each.
    captured: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for SessionTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTap").field("pid", &self.pid).field("capturing", &self.capturing).finish_non_exhaustive()
    }
}

impl SessionTap {
    /// The backend's process id, 0 before BackendKeyData.
    pub(crate) fn pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire)
    }

    /// Whether NotificationResponse / NoticeResponse bodies are wanted.
    pub(crate) fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Whether the answer of a script is being captured.
    pub(crate) fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Acquire)
    }

    /// Sends this session's asynchronous messages to `subscriber` (replacing any earlier one),
    /// or to nobody.
    pub(crate) fn subscribe(&self, subscriber: Option<Subscriber>) {
        let on = subscriber.is_some();
        *self.subscriber.lock() = subscriber;
        self.subscribed.store(on, Ordering::Release);
        if on && self.ended.load(Ordering::Acquire) {
            self.deliver(b'X', &[]);
        }
    }

    /// A message read off the stream (called by `status.rs` for the types it keeps for us).
    pub(crate) fn message(&self, kind: u8, body: &[u8]) {
        match kind {
            b'K' => {
                if let Some(pid) = body.get(0..4) {
                    self.pid.store(u32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]), Ordering::Release);
                }
            }
            b'A' | b'N' => self.deliver(kind, body),
            b'T' | b'D' | b'C' | b'I' if self.capturing() => {
                let mut captured = self.captured.lock();
                captured.push(kind);
                captured.extend_from_slice(&(body.len() as u32).to_be_bytes());
                captured.extend_from_slice(body);
            }
            b'Z' => self.capturing.store(false, Ordering::Release),
            _ => {}
        }
    }

    /// The stream ended: tell the subscriber, once.
    pub(crate) fn end(&self) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            self.deliver(b'X', &[]);
        }
    }

    fn deliver(&self, kind: u8, body: &[u8]) {
        if !self.subscribed() {
            return;
        }
        let subscriber = self.subscriber.lock().clone();
        if let Some(subscriber) = subscriber {
            subscriber(kind, body);
        }
    }

    /// Starts capturing; call only when every answer due on the session has arrived, so that
    /// what is captured up to the next ReadyForQuery is the script's answer alone.
    pub(crate) fn begin_capture(&self) {
        self.captured.lock().clear();
        self.capturing.store(true, Ordering::Release);
    }

    /// Stops capturing and returns what was captured.
    pub(crate) fn end_capture(&self) -> Vec<u8> {
        self.capturing.store(false, Ordering::Release);
        std::mem::take(&mut *self.captured.lock())
    }
}

fn cstr(body: &[u8], pos: &mut usize) -> Result<String, String> {
    let rest = body.get(*pos..).ok_or("malformed message")?;
    let end = rest.iter().position(|&b| b == 0).ok_or("malformed message")?;
    let s = String::from_utf8_lossy(&rest[..end]).into_owned();
    *pos += end + 1;
    Ok(s)
}

fn be<const N: usize>(body: &[u8], pos: &mut usize) -> Result<[u8; N], String> {
    let bytes: [u8; N] = body.get(*pos..*pos + N).and_then(|b| b.try_into().ok()).ok_or("malformed message")?;
    *pos += N;
    Ok(bytes)
}

/// One statement's result of a script, being built.
struct ScriptResult {
    header: Vec<u8>,
    rows: Vec<u8>,
    count: u32,
    fields: Vec<FieldMeta>,
}

impl ScriptResult {
    fn new(description: Option<&[u8]>) -> Result<Self, String> {
        let mut header = Vec::new();
        let mut fields = Vec::new();
        if let Some(body) = description {
            let mut pos = 0;
            let n = i16::from_be_bytes(be(body, &mut pos)?).max(0) as usize;
            header.extend_from_slice(&(n as u32).to_be_bytes());
            for _ in 0..n {
                let name = cstr(body, &mut pos)?;
                let table = u32::from_be_bytes(be(body, &mut pos)?);
                let column = i16::from_be_bytes(be(body, &mut pos)?);
                let type_oid = u32::from_be_bytes(be(body, &mut pos)?);
                let size = i16::from_be_bytes(be(body, &mut pos)?);
                let modifier = i32::from_be_bytes(be(body, &mut pos)?);
                let _format = i16::from_be_bytes(be(body, &mut pos)?);
                header.extend_from_slice(&(name.len() as u32).to_be_bytes());
                header.extend_from_slice(name.as_bytes());
                header.extend_from_slice(&type_oid.to_be_bytes());
                header.push(crate::codec::Kind::Text as u8);
                fields.push(FieldMeta { table, column, size, modifier, fast: false });
            }
        } else {
            header.extend_from_slice(&0u32.to_be_bytes());
        }
        Ok(Self { header, rows: Vec::new(), count: 0, fields })
    }

    /// The result Buffer (the pool's layout, plus the trailer) for the command tag `tag`.
    fn finish(self, tag: Option<&str>) -> Vec<u8> {
        let tag = tag.unwrap_or("");
        let mut words = tag.split(' ');
        let command = words.next().unwrap_or("");
        let numbers: Vec<&str> = words.collect();
        // pg: `INSERT oid rows`; other tags carry at most a count.
        let affected = numbers.last().and_then(|n| n.parse::<f64>().ok()).unwrap_or(-1.0);
        let mut out = Vec::with_capacity(32 + self.header.len() + self.rows.len());
        out.push(1u8);
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&affected.to_be_bytes());
        let command = &command.as_bytes()[..command.len().min(255)];
        out.push(command.len() as u8);
        out.extend_from_slice(command);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.rows);
        trailer(&mut out, ALL_TEXT, &self.fields);
        out
    }
}

/// Builds pg's results from a captured script answer: `u8 2 | u32 count | per result: u32 len,
/// result` (each result as [`ScriptResult::finish`] lays it out).
pub(crate) fn script_results(captured: &[u8]) -> Result<Vec<u8>, String> {
    let mut results: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<ScriptResult> = None;
    let mut pos = 0;
    while pos < captured.len() {
        let kind = captured[pos];
        let len = u32::from_be_bytes(captured.get(pos + 1..pos + 5).and_then(|b| b.try_into().ok()).ok_or("malformed capture")?) as usize;
        let body = captured.get(pos + 5..pos + 5 + len).ok_or("malformed capture")?;
        pos += 5 + len;
        match kind {
            b'T' => current = Some(ScriptResult::new(Some(body))?),
            b'D' => {
                let result = match current.as_mut() {
                    Some(result) => result,
                    None => current.insert(ScriptResult::new(None)?),
                };
                // A DataRow's cells (`i32 len | bytes`, -1 for NULL) are the pool's cell layout.
                result.rows.extend_from_slice(body.get(2..).unwrap_or_default());
                result.count += 1;
            }
            b'C' => {
                let mut at = 0;
                let tag = cstr(body, &mut at)?;
                let result = match current.take() {
                    Some(result) => result,
                    None => ScriptResult::new(None)?,
                };
                results.push(result.finish(Some(&tag)));
            }
            b'I' => {
                current = None;
                results.push(ScriptResult::new(None)?.finish(None));
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(5 + results.iter().map(|r| r.len() + 4).sum::<usize>());
    out.push(2u8);
    out.extend_from_slice(&(results.len() as u32).to_be_bytes());
    for result in results {
        out.extend_from_slice(&(result.len() as u32).to_be_bytes());
        out.extend_from_slice(&result);
    }
    Ok(out)
}

// ---------- sessions held by pg clients ----------

/// Sessions of handlers held by pg clients, by (JS pool object number, handler number), so that
/// subscriptions reach them while a statement runs (the lease is then with its task).
type Attached = HashMap<(u32, u32), Arc<SessionStatus>>;
static ATTACHED: LazyLock<Mutex<Attached>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Remembers `status` as the session of `(core, handler)`; returns the backend's pid.
pub(crate) fn attach(core: u32, handler: u32, status: Arc<SessionStatus>) -> u32 {
    let pid = status.pg.pid();
    if let Some(old) = ATTACHED.lock().insert((core, handler), status) {
        old.pg.subscribe(None);
    }
    pid
}

/// Subscribes the session of `(core, handler)`; false if there is none.
pub(crate) fn subscribe(core: u32, handler: u32, subscriber: Option<Subscriber>) -> bool {
    let status = ATTACHED.lock().get(&(core, handler)).cloned();
    match status {
        Some(status) => {
            status.pg.subscribe(subscriber);
            true
        }
        None => false,
    }
}

/// Forgets the session of `(core, handler)` and unsubscribes it.
pub(crate) fn detach(core: u32, handler: u32) {
    let status = ATTACHED.lock().remove(&(core, handler));
    if let Some(status) = status {
        status.pg.subscribe(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }

    #[test]
    fn scripts_give_one_result_per_statement() {
        let mut captured = Vec::new();
        msg(&mut captured, b'C', b"LISTEN\0");
        let mut desc = vec![0, 1];
        desc.extend_from_slice(b"a\0");
        desc.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0]);
        msg(&mut captured, b'T', &desc);
        msg(&mut captured, b'D', &[0, 1, 0, 0, 0, 1, b'7']);
        msg(&mut captured, b'C', b"SELECT 1\0");
        let out = script_results(&captured).expect("parses");
        assert_eq!(out[0], 2);
        assert_eq!(u32::from_be_bytes(out[1..5].try_into().expect("4 bytes")), 2);
    }

    #[test]
    fn mode_parses_fast_set() {
        let mut bytes = 2u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&23u32.to_be_bytes());
        bytes.extend_from_slice(&16u32.to_be_bytes());
        let mode = PgMode::parse(&bytes).expect("parses");
        assert!(mode.is_fast(16) && mode.is_fast(23) && !mode.is_fast(1184));
    }
}
