//! PostgreSQL's text output, rebuilt from the binary format tokio-postgres receives.
//!
//! node-postgres asks for text results and returns many types as the server's text (box, bit,
//! tsvector, ranges, composites, hstore, inet, ...). tokio-postgres always asks for binary
//! results, so for those types this module prints the binary value the way the server's output
//! function would (DateStyle ISO, IntervalStyle postgres, extra_float_digits ≥ 1, C-locale
//! money). Time stamps with time zone inside composite and range values are printed in UTC
//! (`+00`): the session's TimeZone is not known here.

mod containers;
mod datetime;
mod numbers;
mod scalars;

use std::cell::Cell;
use std::fmt::Write as _;

use tokio_postgres::types::{Kind as PgKind, Type};

use self::containers::{array_text, hstore_text, range_text, record_text};
use self::datetime::{date_text, interval_text, time_text, timestamp_text, timetz_text};
use self::numbers::{float8_text, float_text, money_text};
pub(crate) use self::numbers::{numeric_text, widen_float4};
use self::scalars::{bit_text, char_text, geometry_text, inet_text, snapshot_text, tsvector_text, uuid_text, vector_text};

type Res = Result<(), String>;

fn bad(what: &str) -> String {
    format!("malformed {what} value")
}

/// Reads `N` bytes at `at`.
fn fixed<const N: usize>(raw: &[u8], at: usize, what: &str) -> Result<[u8; N], String> {
    raw.get(at..at + N).and_then(|b| b.try_into().ok()).ok_or_else(|| bad(what))
}

fn i16_at(raw: &[u8], at: usize, what: &str) -> Result<i16, String> {
    fixed(raw, at, what).map(i16::from_be_bytes)
}

fn i32_at(raw: &[u8], at: usize, what: &str) -> Result<i32, String> {
    fixed(raw, at, what).map(i32::from_be_bytes)
}

fn u32_at(raw: &[u8], at: usize, what: &str) -> Result<u32, String> {
    fixed(raw, at, what).map(u32::from_be_bytes)
}

fn i64_at(raw: &[u8], at: usize, what: &str) -> Result<i64, String> {
    fixed(raw, at, what).map(i64::from_be_bytes)
}

fn f64_at(raw: &[u8], at: usize, what: &str) -> Result<f64, String> {
    fixed(raw, at, what).map(f64::from_be_bytes)
}

/// A length-prefixed (`i32`, -1 for NULL) value at `*pos`; advances `*pos`.
fn sized<'a>(raw: &'a [u8], pos: &mut usize, what: &str) -> Result<Option<&'a [u8]>, String> {
    let len = i32_at(raw, *pos, what)?;
    *pos += 4;
    if len < 0 {
        return Ok(None);
    }
    let end = *pos + len as usize;
    let value = raw.get(*pos..end).ok_or_else(|| bad(what))?;
    *pos = end;
    Ok(Some(value))
}

/// Domains are sent in their base type's format.
pub(crate) fn base_type(mut ty: &Type) -> &Type {
    while let PgKind::Domain(base) = ty.kind() {
        ty = base;
    }
    ty
}

/// Types whose binary form is their text (UTF-8): copied through unchanged.
pub(crate) fn is_plain_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::XML
            | Type::JSON
            | Type::REFCURSOR
            | Type::VOID
            | Type::CSTRING
    ) || matches!(ty.kind(), PgKind::Enum(_))
        || ty.name() == "citext"
}

/// Whether [`text_out`] prints this type as the server would.
pub(crate) fn has_text_form(ty: &Type) -> bool {
    is_plain_text(ty)
        || matches!(
            *ty,
            Type::BOOL
                | Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::OID
                | Type::XID
                | Type::CID
                | Type::XID8
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::NUMERIC
                | Type::MONEY
                | Type::BYTEA
                | Type::CHAR
                | Type::UUID
                | Type::JSONB
                | Type::JSONPATH
                | Type::DATE
                | Type::TIME
                | Type::TIMETZ
                | Type::TIMESTAMP
                | Type::TIMESTAMPTZ
                | Type::INTERVAL
                | Type::INET
                | Type::CIDR
                | Type::MACADDR
                | Type::MACADDR8
                | Type::POINT
                | Type::LSEG
                | Type::BOX
                | Type::PATH
                | Type::POLYGON
                | Type::LINE
                | Type::CIRCLE
                | Type::BIT
                | Type::VARBIT
                | Type::TS_VECTOR
                | Type::INT2_VECTOR
                | Type::OID_VECTOR
                | Type::TID
                | Type::PG_LSN
                | Type::PG_SNAPSHOT
                | Type::TXID_SNAPSHOT
                | Type::RECORD
        )
        || matches!(ty.kind(), PgKind::Array(_) | PgKind::Range(_) | PgKind::Multirange(_) | PgKind::Composite(_) | PgKind::Domain(_))
        || matches!(ty.name(), "hstore" | "ltree" | "lquery" | "ltxtquery")
}

/// How deep values may nest (records in records, arrays of ranges of ...): the server sends
/// the nesting, so a hostile one could otherwise overflow the stack.
const MAX_NESTING: u32 = 100;

thread_local! {
    static NESTING: Cell<u32> = const { Cell::new(0) };
}

/// One level of [`text_out`]'s recursion, counted while it lives.
struct Nested;

impl Nested {
    fn enter() -> Result<Self, String> {
        NESTING.with(|depth| {
            if depth.get() >= MAX_NESTING {
                return Err(format!("malformed value: nested more than {MAX_NESTING} levels deep"));
            }
            depth.set(depth.get() + 1);
            Ok(Nested)
        })
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        NESTING.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// Appends the server's text output of one binary value of type `ty`.
pub(crate) fn text_out(ty: &Type, raw: &[u8], s: &mut String) -> Res {
    let _level = Nested::enter()?;
    let ty = base_type(ty);
    if is_plain_text(ty) {
        s.push_str(&String::from_utf8_lossy(raw));
        return Ok(());
    }
    match *ty {
        Type::BOOL => s.push(if raw.first().copied().unwrap_or(0) != 0 { 't' } else { 'f' }),
        Type::INT2 => push_int(s, i16_at(raw, 0, "int2")?),
        Type::INT4 => push_int(s, i32_at(raw, 0, "int4")?),
        Type::INT8 => push_int(s, i64_at(raw, 0, "int8")?),
        Type::XID8 => push_int(s, u64::from_be_bytes(fixed(raw, 0, "xid8")?)),
        Type::OID
        | Type::XID
        | Type::CID
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
        | Type::REGCOLLATION => push_int(s, u32_at(raw, 0, "oid")?),
        Type::FLOAT4 => {
            let f = f32::from_be_bytes(fixed(raw, 0, "float4")?);
            float_text(f.into(), &format!("{:e}", f.abs()), 6, s);
        }
        Type::FLOAT8 => float8_text(f64_at(raw, 0, "float8")?, s),
        Type::NUMERIC => numeric_text(raw, s)?,
        Type::MONEY => money_text(i64_at(raw, 0, "money")?, s),
        Type::BYTEA => {
            s.push_str("\\x");
            push_hex(s, raw);
        }
        Type::CHAR => char_text(raw.first().copied().unwrap_or(0), s),
        Type::UUID => uuid_text(raw, s)?,
        Type::JSONB | Type::JSONPATH => s.push_str(&String::from_utf8_lossy(raw.get(1..).unwrap_or_default())),
        Type::DATE => date_text(i32_at(raw, 0, "date")?, s),
        Type::TIME => time_text(i64_at(raw, 0, "time")?, s),
        Type::TIMETZ => timetz_text(raw, s)?,
        Type::TIMESTAMP => timestamp_text(i64_at(raw, 0, "timestamp")?, false, s),
        Type::TIMESTAMPTZ => timestamp_text(i64_at(raw, 0, "timestamptz")?, true, s),
        Type::INTERVAL => interval_text(raw, s)?,
        Type::INET | Type::CIDR => inet_text(raw, *ty == Type::CIDR, s)?,
        Type::MACADDR | Type::MACADDR8 => {
            for (i, b) in raw.iter().enumerate() {
                if i > 0 {
                    s.push(':');
                }
                let _ = write!(s, "{b:02x}");
            }
        }
        Type::POINT | Type::LSEG | Type::BOX | Type::PATH | Type::POLYGON | Type::LINE | Type::CIRCLE => geometry_text(ty, raw, s)?,
        Type::BIT | Type::VARBIT => bit_text(raw, s)?,
        Type::TS_VECTOR => tsvector_text(raw, s)?,
        Type::INT2_VECTOR | Type::OID_VECTOR => vector_text(ty, raw, s)?,
        Type::TID => {
            let _ = write!(s, "({},{})", u32_at(raw, 0, "tid")?, u16::from_be_bytes(fixed(raw, 4, "tid")?));
        }
        Type::PG_LSN => {
            let lsn = u64::from_be_bytes(fixed(raw, 0, "pg_lsn")?);
            let _ = write!(s, "{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff);
        }
        Type::PG_SNAPSHOT | Type::TXID_SNAPSHOT => snapshot_text(raw, s)?,
        Type::RECORD => record_text(None, raw, s)?,
        _ => match ty.kind() {
            PgKind::Array(elem) => array_text(elem, raw, s)?,
            PgKind::Range(sub) => range_text(sub, raw, s)?,
            PgKind::Multirange(sub) => {
                let count = i32_at(raw, 0, "multirange")?;
                let mut pos = 4;
                s.push('{');
                for i in 0..count {
                    if i > 0 {
                        s.push(',');
                    }
                    let range = sized(raw, &mut pos, "multirange")?.ok_or_else(|| bad("multirange"))?;
                    range_text(sub, range, s)?;
                }
                s.push('}');
            }
            PgKind::Composite(fields) => record_text(Some(fields), raw, s)?,
            _ if ty.name() == "hstore" => hstore_text(raw, s)?,
            // ltree's types: a version byte, then the text.
            _ if matches!(ty.name(), "ltree" | "lquery" | "ltxtquery") => {
                s.push_str(&String::from_utf8_lossy(raw.get(1..).unwrap_or_default()))
            }
            // No known text form: the bytes as UTF-8 (right for text-like extension types).
            _ => s.push_str(&String::from_utf8_lossy(raw)),
        },
    }
    Ok(())
}

fn push_int(s: &mut String, v: impl std::fmt::Display) {
    let _ = write!(s, "{v}");
}

fn push_hex(s: &mut String, raw: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    s.reserve(raw.len() * 2);
    for b in raw {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
}
