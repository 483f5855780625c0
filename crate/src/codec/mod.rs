//! Encoding across the JS boundary: parameters arrive as one Buffer, a result leaves as one
//! Buffer (SPEC §7.2). `lib/codec.ts` is the other half of the result layout.
//!
//! Result layout (big-endian):
//! `u8 version | u32 rows | f64 rowsAffected (-1: none) | u8 len, command | u32 columns |
//! per column: u32 len, name, u32 type oid, u8 kind | per row, per column: i32 len (-1: NULL), payload`.
//! Payloads are already normalized per kind (see [`Kind`]), so TypeScript never parses
//! PostgreSQL's binary formats beyond fixed-width numbers; types that node-postgres returns as
//! the server's text are printed as text here ([`crate::pgtext`]).

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, Format, FromSql, IsNull, Kind as PgKind, ToSql, Type};

use crate::{pgcompat, pgtext};

/// The largest result Buffer built, in bytes: a result record carries its length as a u32,
/// and JS cannot make a Buffer larger than its own limit (which `lib/native.ts` passes in).
static MAX_RESULT: AtomicUsize = AtomicUsize::new(MAX_RECORD);
const MAX_RECORD: usize = u32::MAX as usize - 64;

/// Sets the largest result Buffer (capped at what a result record can carry).
pub fn set_max_result_bytes(bytes: u64) {
    let bytes = usize::try_from(bytes).unwrap_or(MAX_RECORD).clamp(64, MAX_RECORD);
    MAX_RESULT.store(bytes, Ordering::Relaxed);
}

fn too_large(max: usize) -> String {
    format!("result too large: it takes more than {max} bytes, the most one result may take here; fetch it in parts (db.cursor(), or LIMIT and OFFSET)")
}

/// How a column's payload is laid out for the TypeScript decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// 1 byte.
    Bool = 1,
    /// i16.
    Int2 = 2,
    /// i32.
    Int4 = 3,
    /// u32.
    Oid = 4,
    /// f64: the float4 widened through its shortest decimal form, as node-postgres's
    /// `parseFloat` of the server's text gives it (0.1, not 0.10000000149011612).
    Float4 = 5,
    /// f64.
    Float8 = 6,
    /// UTF-8 text, returned as a string: the value itself for text-like types, else the
    /// server's text output rebuilt by [`crate::pgtext`].
    Text = 7,
    /// UTF-8 JSON text, returned parsed.
    Json = 8,
    /// Raw bytes, returned as a Buffer (bytea, and types without a known text form).
    Bytea = 9,
    /// i64 microseconds since 2000-01-01 UTC.
    Timestamptz = 10,
    /// i64 microseconds since 2000-01-01, local wall time.
    Timestamp = 11,
    /// i32 days since 2000-01-01.
    Date = 12,
    /// Decimal text of an int8, a string unless BigInt is asked for.
    Int8 = 13,
    /// i64 microseconds, i32 days, i32 months.
    Interval = 14,
    /// Two f64.
    Point = 15,
    /// u8 element kind, u8 dimensions, i32 per dimension, then elements as cells.
    Array = 16,
    /// Three f64: x, y, radius.
    Circle = 17,
    /// Decimal text returned as a JS number (`numeric[]` elements, which node-postgres
    /// parses with `parseFloat`).
    Number = 18,
}

/// Picks the payload kind for a column type.
pub fn kind_of(ty: &Type) -> Kind {
    match *ty {
        Type::BOOL => Kind::Bool,
        Type::INT2 => Kind::Int2,
        Type::INT4 => Kind::Int4,
        // node-postgres parses oid; the reg* types it returns as names, which the binary
        // format does not carry: they stay OIDs here (see the README's type table).
        Type::OID
        | Type::REGPROC
        | Type::REGPROCEDURE
        | Type::REGOPER
        | Type::REGOPERATOR
        | Type::REGCLASS
        | Type::REGTYPE
        | Type::REGCONFIG
        | Type::REGDICTIONARY
        | Type::REGNAMESPACE
        | Type::REGROLE
        | Type::REGCOLLATION => Kind::Oid,
        Type::FLOAT4 => Kind::Float4,
        Type::FLOAT8 => Kind::Float8,
        Type::INT8 => Kind::Int8,
        Type::JSON | Type::JSONB => Kind::Json,
        Type::BYTEA => Kind::Bytea,
        Type::TIMESTAMPTZ => Kind::Timestamptz,
        Type::TIMESTAMP => Kind::Timestamp,
        Type::DATE => Kind::Date,
        Type::INTERVAL => Kind::Interval,
        Type::POINT => Kind::Point,
        Type::CIRCLE => Kind::Circle,
        // Arrays in the catalog, but node-postgres returns their text ("1 2 3").
        Type::INT2_VECTOR | Type::OID_VECTOR => Kind::Text,
        _ => match ty.kind() {
            PgKind::Array(_) => Kind::Array,
            PgKind::Domain(base) => kind_of(base),
            _ if pgtext::has_text_form(ty) => Kind::Text,
            _ => Kind::Bytea,
        },
    }
}

/// A column value exactly as the server sent it (binary format).
pub struct RawCell<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for RawCell<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawCell(raw))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// One bound parameter: text (server infers and parses, as node-postgres does) or binary
/// bytes for Buffers.
#[derive(Debug)]
pub struct Param<'a> {
    /// Sent in binary (bytea) rather than text.
    pub binary: bool,
    value: Option<&'a [u8]>,
}

impl ToSql for Param<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self.value {
            None => Ok(IsNull::Yes),
            Some(bytes) => {
                out.put_slice(bytes);
                Ok(IsNull::No)
            }
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    fn encode_format(&self, _: &Type) -> Format {
        if self.binary {
            Format::Binary
        } else {
            Format::Text
        }
    }
    to_sql_checked!();
}

/// Splits the parameter Buffer (`u32 count`, then per parameter `u8 tag` — 0 null, 1 text,
/// 2 binary — `u32 len`, bytes).
pub fn decode_params(buf: &[u8]) -> Result<Vec<Param<'_>>, String> {
    let bad = || "malformed parameter buffer".to_string();
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let slice = buf.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        Ok(slice)
    };
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
    let mut params = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = take(1)?[0];
        let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let value = take(len)?;
        params.push(match tag {
            0 => Param { binary: false, value: None },
            1 => Param { binary: false, value: Some(value) },
            2 => Param { binary: true, value: Some(value) },
            _ => return Err(bad()),
        });
    }
    Ok(params)
}

/// Builds one result Buffer.
pub struct ResultWriter {
    buf: Vec<u8>,
    kinds: Vec<(Kind, Type)>,
    rows: u32,
    counted: bool,
    /// For a pg-mode statement (`pgdbpool/pg`), the fields' metadata for the trailer.
    pg: Option<Vec<pgcompat::FieldMeta>>,
    max: usize,
}

impl ResultWriter {
    /// Starts a result with its header.
    pub fn new(command: &str, columns: &[tokio_postgres::Column]) -> Self {
        let counted = has_row_count(command);
        let mut buf = Vec::with_capacity(256);
        buf.push(1u8);
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&(-1f64).to_be_bytes());
        let command = &command.as_bytes()[..command.len().min(255)];
        buf.push(command.len() as u8);
        buf.extend_from_slice(command);
        buf.extend_from_slice(&(columns.len() as u32).to_be_bytes());
        let mut kinds = Vec::with_capacity(columns.len());
        let mode = pgcompat::current();
        let mut pg = mode.as_ref().map(|_| Vec::with_capacity(columns.len()));
        for column in columns {
            let mut kind = kind_of(column.type_());
            if let (Some(mode), Some(pg)) = (&mode, pg.as_mut()) {
                // pg mode: types outside the fast set come as PostgreSQL's text.
                let fast = mode.is_fast(column.type_().oid());
                if !fast {
                    kind = Kind::Text;
                }
                pg.push(pgcompat::FieldMeta::of(column, fast));
            }
            buf.extend_from_slice(&(column.name().len() as u32).to_be_bytes());
            buf.extend_from_slice(column.name().as_bytes());
            buf.extend_from_slice(&column.type_().oid().to_be_bytes());
            buf.push(kind as u8);
            kinds.push((kind, pgtext::base_type(column.type_()).clone()));
        }
        Self { buf, kinds, rows: 0, counted, pg, max: MAX_RESULT.load(Ordering::Relaxed) }
    }

    /// Appends one row. A value the core cannot read (the server sent something malformed) or
    /// a result that outgrows [`MAX_RESULT`] is that statement's error.
    pub fn push_row(&mut self, row: &tokio_postgres::Row) -> Result<(), String> {
        for (i, (kind, ty)) in self.kinds.iter().enumerate() {
            let cell: Option<RawCell<'_>> = row.try_get(i).map_err(|e| e.to_string())?;
            match cell {
                None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(RawCell(raw)) => {
                    if raw.len() > self.max.saturating_sub(self.buf.len()) {
                        return Err(too_large(self.max));
                    }
                    write_cell(&mut self.buf, *kind, ty, raw)
                        .map_err(|e| format!("column \"{}\": {e}", row.columns().get(i).map_or("?", |c| c.name())))?;
                }
            }
            if self.buf.len() > self.max {
                return Err(too_large(self.max));
            }
        }
        self.rows = self.rows.checked_add(1).ok_or_else(|| too_large(self.max))?;
        Ok(())
    }

    /// Seals the header and returns the bytes. `rows_affected` is tokio-postgres's reading of
    /// the command tag, 0 for tags without a count: those become null, as in node-postgres.
    pub fn finish(mut self, rows_affected: Option<u64>) -> Vec<u8> {
        self.buf[1..5].copy_from_slice(&self.rows.to_be_bytes());
        let affected = rows_affected.filter(|_| self.counted).map_or(-1f64, |n| n as f64);
        self.buf[5..13].copy_from_slice(&affected.to_be_bytes());
        if let Some(fields) = &self.pg {
            pgcompat::trailer(&mut self.buf, 0, fields);
        }
        self.buf
    }
}

/// Writes `i32 len` + normalized payload.
fn write_cell(out: &mut Vec<u8>, kind: Kind, ty: &Type, raw: &[u8]) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    write_payload(out, kind, ty, raw)?;
    let len = i32::try_from(out.len() - start - 4).map_err(|_| "value too large (over 2 GiB)".to_string())?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The size of a fixed-size kind's binary value; 0 for the others.
fn fixed_size(kind: Kind) -> usize {
    match kind {
        Kind::Bool => 1,
        Kind::Int2 => 2,
        Kind::Int4 | Kind::Oid | Kind::Date => 4,
        Kind::Float8 | Kind::Timestamptz | Kind::Timestamp => 8,
        Kind::Interval | Kind::Point => 16,
        Kind::Circle => 24,
        _ => 0,
    }
}

/// `ty` is already stripped of domains. A value whose size does not fit its type is refused:
/// the decoder reads fixed-size values by their type, and would read into the next one.
fn write_payload(out: &mut Vec<u8>, kind: Kind, ty: &Type, raw: &[u8]) -> Result<(), String> {
    let size = fixed_size(kind);
    if size != 0 && raw.len() != size {
        return Err(format!("malformed {} value: {} bytes, not {size}", ty.name(), raw.len()));
    }
    match kind {
        Kind::Text if pgtext::is_plain_text(ty) => out.extend_from_slice(raw),
        Kind::Text => {
            let mut s = String::with_capacity(32);
            pgtext::text_out(ty, raw, &mut s)?;
            out.extend_from_slice(s.as_bytes());
        }
        Kind::Json if *ty == Type::JSONB => match raw.split_first() {
            Some((1, text)) => out.extend_from_slice(text),
            _ => return Err("malformed jsonb value (unknown format version)".into()),
        },
        Kind::Int8 => {
            let v = i64::from_be_bytes(raw.try_into().map_err(|_| "bad int8")?);
            out.extend_from_slice(v.to_string().as_bytes());
        }
        Kind::Float4 => {
            let f = f32::from_be_bytes(raw.try_into().map_err(|_| "bad float4")?);
            out.extend_from_slice(&pgtext::widen_float4(f).to_be_bytes());
        }
        Kind::Number => {
            let mut s = String::with_capacity(32);
            pgtext::numeric_text(raw, &mut s)?;
            out.extend_from_slice(s.as_bytes());
        }
        Kind::Array => write_array(out, ty, raw)?,
        _ => out.extend_from_slice(raw),
    }
    Ok(())
}

/// Copies an array as `u8 element kind | u8 ndim | i32 per dimension | elements as cells`. The
/// dimensions are checked against the data (each at least 1, their product the number of
/// elements, at most 6 of them as in PostgreSQL), so that the decoder can trust them.
fn write_array(out: &mut Vec<u8>, ty: &Type, raw: &[u8]) -> Result<(), String> {
    let elem = match ty.kind() {
        PgKind::Array(elem) => elem,
        _ => return Err("array without element type".into()),
    };
    // node-postgres parses numeric[] elements with parseFloat, though a scalar numeric stays a
    // string (and so do the elements of arrays of numeric domains, which it does not parse).
    let elem_kind = if *elem == Type::NUMERIC { Kind::Number } else { kind_of(elem) };
    let elem_ty = pgtext::base_type(elem).clone();
    let bad = |why: &str| format!("malformed array value ({why})");
    let rd_i32 = |at: usize| -> Result<i32, String> {
        raw.get(at..at + 4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes).ok_or_else(|| bad("truncated"))
    };
    let ndim = rd_i32(0)?;
    if !(0..=6).contains(&ndim) {
        return Err(bad("more than 6 dimensions"));
    }
    out.push(elem_kind as u8);
    out.push(ndim as u8);
    let mut pos = 12usize;
    let mut expected: usize = 1;
    for _ in 0..ndim {
        let len = rd_i32(pos)?;
        if len < 1 {
            return Err(bad("a dimension below 1"));
        }
        expected = expected.checked_mul(len as usize).filter(|&n| n <= raw.len() / 4).ok_or_else(|| bad("more elements than data"))?;
        out.extend_from_slice(&len.to_be_bytes());
        pos += 8;
    }
    if ndim == 0 {
        expected = 0;
    }
    let mut count = 0usize;
    while pos < raw.len() {
        let len = rd_i32(pos)?;
        pos += 4;
        count += 1;
        if count > expected {
            return Err(bad("more elements than its dimensions"));
        }
        if len == -1 {
            out.extend_from_slice(&(-1i32).to_be_bytes());
        } else {
            let end = usize::try_from(len).ok().and_then(|n| pos.checked_add(n)).ok_or_else(|| bad("negative length"))?;
            write_cell(out, elem_kind, &elem_ty, raw.get(pos..end).ok_or_else(|| bad("truncated"))?)?;
            pos = end;
        }
    }
    if count != expected {
        return Err(bad("fewer elements than its dimensions"));
    }
    Ok(())
}

/// The command word node-postgres reports (`SELECT`, `INSERT`, ...), taken from the SQL text
/// because tokio-postgres does not expose the server's command tag.
pub fn command_of(sql: &str) -> String {
    let first = strip_leading_comments(sql)
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .find(|w| !w.is_empty())
        .unwrap_or_default()
        .to_ascii_uppercase();
    match first.as_str() {
        "WITH" => main_verb_after_with(sql),
        "START" => "BEGIN".into(),
        "END" => "COMMIT".into(),
        "ABORT" => "ROLLBACK".into(),
        "VALUES" | "TABLE" => "SELECT".into(),
        "CREATE" if is_create_as(sql) => "SELECT".into(),
        _ => first,
    }
}

fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s;
        }
    }
}

/// The words of `sql` at parenthesis depth 0, outside quotes, upper-cased.
fn top_level_words(sql: &str) -> impl Iterator<Item = String> + '_ {
    let bytes = sql.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    let mut in_quote: Option<u8> = None;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let c = bytes[i];
            if let Some(q) = in_quote {
                if c == q {
                    in_quote = None;
                }
                i += 1;
                continue;
            }
            match c {
                b'\'' | b'"' => in_quote = Some(c),
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ if depth == 0 && c.is_ascii_alphabetic() => {
                    let start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                        i += 1;
                    }
                    return Some(sql[start..i].to_ascii_uppercase());
                }
                _ => {}
            }
            i += 1;
        }
        None
    })
}

/// For `WITH ... <verb>`, the first keyword at parenthesis depth 0 after the CTE list.
fn main_verb_after_with(sql: &str) -> String {
    for word in top_level_words(sql) {
        match word.as_str() {
            "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" => return word,
            "VALUES" | "TABLE" => return "SELECT".into(),
            _ => {}
        }
    }
    "SELECT".into()
}

/// `CREATE [TEMP] TABLE ... AS` and `CREATE MATERIALIZED VIEW ... AS`, whose command tag is
/// `SELECT n`.
fn is_create_as(sql: &str) -> bool {
    let mut words = top_level_words(strip_leading_comments(sql)).skip(1).peekable();
    while words.peek().is_some_and(|w| matches!(w.as_str(), "GLOBAL" | "LOCAL" | "TEMP" | "TEMPORARY" | "UNLOGGED")) {
        words.next();
    }
    match words.next().as_deref() {
        Some("TABLE") => {}
        Some("MATERIALIZED") if words.next().as_deref() == Some("VIEW") => {}
        _ => return false,
    }
    words.any(|w| w == "AS")
}

/// Whether `sql` certainly holds more than one statement (something other than blanks and
/// comments after a top-level `;`), read as PostgreSQL's lexer reads quotes, comments and dollar
/// quotes. Such a text goes to the simple protocol at once: preparing it fails, and inside a
/// transaction that failure aborts the transaction. When in doubt (an unterminated quote) it says
/// no, and the server decides. (A `BEGIN ATOMIC` body counts as several: the simple protocol runs
/// it as the one statement it is.)
pub fn is_script(sql: &str) -> bool {
    let b = sql.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut seen_end = false;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    while i < n {
        let c = b[i];
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 1;
            i += 2;
            while i < n && depth > 0 {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            if depth > 0 {
                return false;
            }
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if seen_end && c != b';' {
            return true;
        }
        match c {
            b';' => {
                seen_end = true;
                i += 1;
            }
            b'\'' => {
                let escapes = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e') && (i < 2 || !ident(b[i - 2]));
                i += 1;
                loop {
                    if i >= n {
                        return false;
                    }
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                loop {
                    if i >= n {
                        return false;
                    }
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            }
            b'$' if !(i > 0 && ident(b[i - 1])) => {
                // `$tag$ ... $tag$` (tag empty or an identifier not starting with a digit); `$1` is a parameter.
                let mut j = i + 1;
                if j < n && b[j].is_ascii_digit() {
                    i = j;
                    continue;
                }
                while j < n && ident(b[j]) && b[j] != b'$' {
                    j += 1;
                }
                if j >= n || b[j] != b'$' {
                    i += 1;
                    continue;
                }
                let tag = &b[i..=j];
                let body = j + 1;
                match b[body..].windows(tag.len()).position(|w| w == tag) {
                    Some(at) => i = body + at + tag.len(),
                    None => return false,
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// Whether node-postgres reports a row count for this command: only tags that carry one
/// (`INSERT 0 n`, `UPDATE n`, `SELECT n`, ...); `CREATE TABLE`, `SHOW`, `EXPLAIN` give null.
pub fn has_row_count(command: &str) -> bool {
    matches!(command, "INSERT" | "UPDATE" | "DELETE" | "SELECT" | "MERGE" | "MOVE" | "FETCH" | "COPY")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type, fed random bytes, truncated values and lying array headers, gives a cell or
    /// an error — never a panic, never a hang, never a wrong length.
    #[test]
    fn hostile_values_never_panic() {
        let types = [
            Type::BOOL,
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::TEXT,
            Type::BYTEA,
            Type::JSON,
            Type::JSONB,
            Type::DATE,
            Type::TIME,
            Type::TIMETZ,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
            Type::INTERVAL,
            Type::POINT,
            Type::LSEG,
            Type::BOX,
            Type::PATH,
            Type::POLYGON,
            Type::LINE,
            Type::CIRCLE,
            Type::INET,
            Type::CIDR,
            Type::MACADDR,
            Type::BIT,
            Type::VARBIT,
            Type::TS_VECTOR,
            Type::UUID,
            Type::MONEY,
            Type::INT4_RANGE,
            Type::RECORD,
            Type::INT4_ARRAY,
            Type::TEXT_ARRAY,
            Type::NUMERIC_ARRAY,
            Type::RECORD_ARRAY,
            Type::INT2_VECTOR,
            Type::OID_VECTOR,
            Type::PG_SNAPSHOT,
            Type::TID,
            Type::PG_LSN,
            Type::INT4MULTI_RANGE,
            Type::XID8,
            Type::JSONPATH,
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for ty in &types {
            let kind = kind_of(ty);
            let base = pgtext::base_type(ty).clone();
            for round in 0..3000 {
                let len = rng.usize(0..48);
                let mut raw: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                if round % 3 == 0 && len >= 20 {
                    // A plausible array / record header: small counts, so the walk goes deep.
                    raw[..4].copy_from_slice(&rng.i32(-1..8).to_be_bytes());
                    raw[12..16].copy_from_slice(&rng.i32(-2..5).to_be_bytes());
                }
                let mut out = Vec::new();
                if write_cell(&mut out, kind, &base, &raw).is_ok() {
                    let len = i32::from_be_bytes(out[..4].try_into().expect("a test"));
                    assert_eq!(len as usize, out.len() - 4, "{ty}: cell length");
                }
            }
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut inner = [1i32.to_be_bytes(), 23u32.to_be_bytes(), 4i32.to_be_bytes(), 1i32.to_be_bytes()].concat();
        for _ in 0..1000 {
            let mut outer = [1i32.to_be_bytes(), 2249u32.to_be_bytes(), (inner.len() as i32).to_be_bytes()].concat();
            outer.extend_from_slice(&inner);
            inner = outer;
        }
        let mut out = Vec::new();
        let err = write_cell(&mut out, kind_of(&Type::RECORD), &Type::RECORD, &inner).expect_err("too deep");
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn scripts_are_told_apart() {
        assert!(!is_script("SELECT 1"));
        assert!(!is_script("SELECT 1;"));
        assert!(!is_script("SELECT 1; -- done\n /* really */ ;"));
        assert!(is_script("SELECT 1; SELECT 2"));
        assert!(is_script("--! breaking\ncreate table a (x int);\ncreate index on a (x);"));
        assert!(!is_script("SELECT ';' AS a, \"x;y\" FROM t"));
        assert!(!is_script("SELECT E'it\\'s; fine', 'a''; b'"));
        assert!(!is_script("DO $$ BEGIN PERFORM 1; PERFORM 2; END $$"));
        assert!(!is_script("CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql"));
        assert!(is_script("DO $f$ BEGIN PERFORM 1; END $f$; SELECT 2"));
        assert!(!is_script("SELECT $1::int; "));
        assert!(!is_script("SELECT 'unterminated; SELECT 2"));
        assert!(!is_script("SELECT 1 /* a; /* nested; */ still */"));
    }

    #[test]
    fn commands() {
        assert_eq!(command_of("  select 1"), "SELECT");
        assert_eq!(command_of("-- c\nINSERT INTO t VALUES (1)"), "INSERT");
        assert_eq!(command_of("WITH a AS (SELECT 1) UPDATE t SET x = 1"), "UPDATE");
        assert_eq!(command_of("start transaction"), "BEGIN");
        assert_eq!(command_of("CREATE TEMP TABLE t AS SELECT 1"), "SELECT");
        assert_eq!(command_of("create materialized view v as values (1)"), "SELECT");
        assert_eq!(command_of("CREATE TABLE t (a int GENERATED ALWAYS AS (1) STORED, b text DEFAULT ' AS ')"), "CREATE");
        assert_eq!(command_of("CREATE VIEW v AS SELECT 1"), "CREATE");
    }
}
