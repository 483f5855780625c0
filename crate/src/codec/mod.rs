//! The JS codec, the Rust half of `lib/codec.ts`: a statement's parameters arrive as one
//! Buffer ([`params`]), its result leaves as one Buffer built by [`ResultWriter`].
//!
//! Result layout (big-endian):
//! `u8 version | u32 rows | f64 rowsAffected (-1: none) | u8 len, command | u32 columns |
//! per column: u32 len, name, u32 type oid, u8 kind | per row, per column: i32 len (-1: NULL), payload`.
//! Payloads are already normalized per kind (see [`Kind`]), so TypeScript never parses
//! PostgreSQL's binary formats beyond fixed-width numbers; types that node-postgres returns as
//! the server's text are printed as text here ([`crate::pgtext`]). The command word and whether
//! a statement is a script are read off the SQL text ([`command`]).

mod command;
mod params;

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::types::{FromSql, Kind as PgKind, Type};

pub(crate) use self::command::{command_of, has_row_count, is_script};
pub(crate) use self::params::{decode_params, Param};
use crate::{pgcompat, pgtext};

/// The largest result Buffer built, in bytes: a result record carries its length as a u32,
/// and JS cannot make a Buffer larger than its own limit (which `lib/native.ts` passes in).
static MAX_RESULT: AtomicUsize = AtomicUsize::new(MAX_RECORD);
const MAX_RECORD: usize = u32::MAX as usize - 64;

/// Sets the largest result Buffer (capped at what a result record can carry).
pub(crate) fn set_max_result_bytes(bytes: u64) {
    let bytes = usize::try_from(bytes).unwrap_or(MAX_RECORD).clamp(64, MAX_RECORD);
    MAX_RESULT.store(bytes, Ordering::Relaxed);
}

fn too_large(max: usize) -> String {
    format!("result too large: it takes more than {max} bytes, the most one result may take here; fetch it in parts (db.cursor(), or LIMIT and OFFSET)")
}

/// How a column's payload is laid out for the TypeScript decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
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
pub(crate) fn kind_of(ty: &Type) -> Kind {
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
pub(crate) struct RawCell<'a>(pub(crate) &'a [u8]);

impl<'a> FromSql<'a> for RawCell<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawCell(raw))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Builds one result Buffer.
pub(crate) struct ResultWriter {
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
    pub(crate) fn new(command: &str, columns: &[tokio_postgres::Column]) -> Self {
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
    pub(crate) fn push_row(&mut self, row: &tokio_postgres::Row) -> Result<(), String> {
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
    pub(crate) fn finish(mut self, rows_affected: Option<u64>) -> Vec<u8> {
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
}
