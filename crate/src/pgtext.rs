//! PostgreSQL's text output, rebuilt from the binary format tokio-postgres receives.
//!
//! node-postgres asks for text results and returns many types as the server's text (box, bit,
//! tsvector, ranges, composites, hstore, inet, ...). tokio-postgres always asks for binary
//! results, so for those types this module prints the binary value the way the server's output
//! function would (DateStyle ISO, IntervalStyle postgres, extra_float_digits ≥ 1, C-locale
//! money). Time stamps with time zone inside composite and range values are printed in UTC
//! (`+00`): the session's TimeZone is not known here.

use std::cell::Cell;
use std::fmt::Write as _;

use tokio_postgres::types::{Field, Kind as PgKind, Type};

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
pub fn base_type(mut ty: &Type) -> &Type {
    while let PgKind::Domain(base) = ty.kind() {
        ty = base;
    }
    ty
}

/// Types whose binary form is their text (UTF-8): copied through unchanged.
pub fn is_plain_text(ty: &Type) -> bool {
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
pub fn has_text_form(ty: &Type) -> bool {
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
pub fn text_out(ty: &Type, raw: &[u8], s: &mut String) -> Res {
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

/// float8out with extra_float_digits ≥ 1 (the default since PostgreSQL 12): the shortest
/// representation that reads back exactly, in `%g`-like layout.
pub fn float8_text(v: f64, s: &mut String) {
    float_text(v, &format!("{:e}", v.abs()), 15, s)
}

/// `exp_form` is Rust's shortest `{:e}` output of |v| (`1.25e-7`); `sci_from` is the decimal
/// exponent from which PostgreSQL switches to scientific notation (15 for float8, 6 for float4).
fn float_text(v: f64, exp_form: &str, sci_from: i32, s: &mut String) {
    if v.is_nan() {
        s.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        s.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if v.is_sign_negative() {
        s.push('-');
    }
    if v == 0.0 {
        s.push('0');
        return;
    }
    let (mantissa, exp) = exp_form.split_once('e').unwrap_or((exp_form, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..sci_from).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            for _ in 0..(-exp - 1) {
                s.push('0');
            }
            s.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                for _ in digits.len()..int_len {
                    s.push('0');
                }
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// The double nearest to a float4's shortest decimal form: what node-postgres's
/// `parseFloat` makes of the server's text (0.1::float4 → 0.1, not 0.10000000149011612).
pub fn widen_float4(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    let mut text = String::with_capacity(24);
    let _ = write!(text, "{f:e}");
    text.parse().unwrap_or(f64::from(f))
}

/// PostgreSQL's binary numeric (base-10000 digits) to its text form.
pub fn numeric_text(raw: &[u8], s: &mut String) -> Res {
    let rd = |at: usize| -> Result<u16, String> { fixed(raw, at, "numeric").map(u16::from_be_bytes) };
    let ndigits = rd(0)? as usize;
    let weight = rd(2)? as i16 as i32;
    let sign = rd(4)?;
    let dscale = rd(6)? as i32;
    match sign {
        0xC000 => {
            s.push_str("NaN");
            return Ok(());
        }
        0xD000 => {
            s.push_str("Infinity");
            return Ok(());
        }
        0xF000 => {
            s.push_str("-Infinity");
            return Ok(());
        }
        _ => {}
    }
    let digit = |i: i32| -> Result<u16, String> {
        if i < 0 || i as usize >= ndigits {
            Ok(0)
        } else {
            rd(8 + 2 * i as usize)
        }
    };
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            if i == 0 {
                let _ = write!(s, "{d}");
            } else {
                let _ = write!(s, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut written = 0;
        let mut i = weight + 1;
        while written < dscale {
            let group = format!("{:04}", digit(i)?);
            for c in group.chars() {
                if written < dscale {
                    s.push(c);
                    written += 1;
                }
            }
            i += 1;
        }
    }
    Ok(())
}

/// cash_out in the C / en_US locale: `-$1,234.56`.
pub fn money_text(cents: i64, s: &mut String) {
    let abs = cents.unsigned_abs();
    if cents < 0 {
        s.push('-');
    }
    s.push('$');
    let whole = (abs / 100).to_string();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(c);
    }
    let _ = write!(s, ".{:02}", abs % 100);
}

fn char_text(b: u8, s: &mut String) {
    match b {
        0 => {}
        b if b & 0x80 != 0 => {
            let _ = write!(s, "\\{:03o}", b);
        }
        b => s.push(b as char),
    }
}

pub fn uuid_text(raw: &[u8], s: &mut String) -> Res {
    if raw.len() != 16 {
        return Err(bad("uuid"));
    }
    for (range, dash) in [(0..4, true), (4..6, true), (6..8, true), (8..10, true), (10..16, false)] {
        push_hex(s, &raw[range]);
        if dash {
            s.push('-');
        }
    }
    Ok(())
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); year 0 is 1 BC.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// `YYYY-MM-DD`, and whether the year is BC.
fn push_ymd(days_since_2000: i64, s: &mut String) -> bool {
    let (year, month, day) = civil_from_days(days_since_2000 + PG_EPOCH_DAYS);
    let (year, bc) = if year <= 0 { (1 - year, true) } else { (year, false) };
    let _ = write!(s, "{year:04}-{month:02}-{day:02}");
    bc
}

fn date_text(days: i32, s: &mut String) {
    match days {
        i32::MAX => s.push_str("infinity"),
        i32::MIN => s.push_str("-infinity"),
        _ => {
            if push_ymd(days.into(), s) {
                s.push_str(" BC");
            }
        }
    }
}

/// `HH:MM:SS[.ffffff]` with trailing zeros of the fraction dropped.
fn push_hms(hours: i64, minutes: i64, seconds: i64, micros: i64, s: &mut String) {
    let _ = write!(s, "{hours:02}:{minutes:02}:{seconds:02}");
    if micros != 0 {
        let frac = format!("{micros:06}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
}

pub fn time_text(micros: i64, s: &mut String) {
    let secs = micros / 1_000_000;
    push_hms(secs / 3600, (secs / 60) % 60, secs % 60, micros % 1_000_000, s);
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` for a zone given in seconds west of Greenwich.
fn push_zone(west: i32, s: &mut String) {
    let abs = west.unsigned_abs();
    let (hours, minutes, seconds) = (abs / 3600, (abs / 60) % 60, abs % 60);
    s.push(if west <= 0 { '+' } else { '-' });
    let _ = write!(s, "{hours:02}");
    if seconds != 0 {
        let _ = write!(s, ":{minutes:02}:{seconds:02}");
    } else if minutes != 0 {
        let _ = write!(s, ":{minutes:02}");
    }
}

pub fn timetz_text(raw: &[u8], s: &mut String) -> Res {
    time_text(i64_at(raw, 0, "timetz")?, s);
    push_zone(i32_at(raw, 8, "timetz")?, s);
    Ok(())
}

fn timestamp_text(micros: i64, utc: bool, s: &mut String) {
    match micros {
        i64::MAX => s.push_str("infinity"),
        i64::MIN => s.push_str("-infinity"),
        _ => {
            let bc = push_ymd(micros.div_euclid(86_400_000_000), s);
            let time = micros.rem_euclid(86_400_000_000);
            let secs = time / 1_000_000;
            s.push(' ');
            push_hms(secs / 3600, (secs / 60) % 60, secs % 60, time % 1_000_000, s);
            if utc {
                s.push_str("+00");
            }
            if bc {
                s.push_str(" BC");
            }
        }
    }
}

/// IntervalStyle `postgres`: `1 year 2 mons -3 days +04:05:06.5`.
fn interval_text(raw: &[u8], s: &mut String) -> Res {
    let time = i64_at(raw, 0, "interval")?;
    let days = i32_at(raw, 8, "interval")?;
    let months = i32_at(raw, 12, "interval")?;
    if months == i32::MAX && days == i32::MAX && time == i64::MAX {
        s.push_str("infinity");
        return Ok(());
    }
    if months == i32::MIN && days == i32::MIN && time == i64::MIN {
        s.push_str("-infinity");
        return Ok(());
    }
    let mut is_zero = true;
    let mut is_before = false;
    let mut part = |value: i64, unit: &str, s: &mut String| {
        if value == 0 {
            return;
        }
        let _ = write!(
            s,
            "{}{}{value} {unit}{}",
            if is_zero { "" } else { " " },
            if is_before && value > 0 { "+" } else { "" },
            if value != 1 { "s" } else { "" }
        );
        is_before = value < 0;
        is_zero = false;
    };
    part(i64::from(months / 12), "year", s);
    part(i64::from(months % 12), "mon", s);
    part(i64::from(days), "day", s);
    let hours = time / 3_600_000_000;
    let minutes = (time / 60_000_000) % 60;
    let seconds = (time / 1_000_000) % 60;
    let micros = time % 1_000_000;
    if is_zero || time != 0 {
        let minus = time < 0;
        let _ = write!(
            s,
            "{}{}",
            if is_zero { "" } else { " " },
            if minus {
                "-"
            } else if is_before {
                "+"
            } else {
                ""
            }
        );
        push_hms(hours.abs(), minutes.abs(), seconds.abs(), micros.abs(), s);
    }
    Ok(())
}

/// inet_out / cidr_out (PostgreSQL's inet_net_ntop: `::` for the first longest run of two
/// or more zero groups, embedded IPv4 for `::a.b.c.d` and `::ffff:a.b.c.d`).
pub fn inet_text(raw: &[u8], cidr: bool, s: &mut String) -> Res {
    let (family, bits, nb) = match raw {
        [f, b, _, n, ..] => (*f, *b, *n as usize),
        _ => return Err(bad("inet")),
    };
    let addr = raw.get(4..4 + nb).ok_or_else(|| bad("inet"))?;
    let max_bits = if family == 2 {
        if addr.len() != 4 {
            return Err(bad("inet"));
        }
        let _ = write!(s, "{}.{}.{}.{}", addr[0], addr[1], addr[2], addr[3]);
        32
    } else {
        if addr.len() != 16 {
            return Err(bad("inet"));
        }
        let words: Vec<u16> = addr.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]])).collect();
        // First longest run of zero words, if at least two long.
        let (mut best, mut best_len, mut cur, mut cur_len) = (None, 0, None, 0);
        for (i, w) in words.iter().enumerate() {
            if *w == 0 {
                if cur.is_none() {
                    cur = Some(i);
                    cur_len = 0;
                }
                cur_len += 1;
            } else if let Some(c) = cur.take() {
                if best.is_none() || cur_len > best_len {
                    best = Some(c);
                    best_len = cur_len;
                }
            }
        }
        if let Some(c) = cur {
            if best.is_none() || cur_len > best_len {
                best = Some(c);
                best_len = cur_len;
            }
        }
        if best_len < 2 {
            best = None;
        }
        for i in 0..8 {
            if let Some(b) = best {
                if i >= b && i < b + best_len {
                    if i == b {
                        s.push(':');
                    }
                    continue;
                }
            }
            if i != 0 {
                s.push(':');
            }
            if i == 6 && best == Some(0) && (best_len == 6 || (best_len == 7 && words[7] != 1) || (best_len == 5 && words[5] == 0xffff)) {
                let _ = write!(s, "{}.{}.{}.{}", addr[12], addr[13], addr[14], addr[15]);
                break;
            }
            let _ = write!(s, "{:x}", words[i]);
        }
        if best.is_some_and(|b| b + best_len == 8) {
            s.push(':');
        }
        128
    };
    if cidr || bits != max_bits {
        let _ = write!(s, "/{bits}");
    }
    Ok(())
}

fn push_pair(raw: &[u8], at: usize, s: &mut String) -> Res {
    s.push('(');
    float8_text(f64_at(raw, at, "geometric")?, s);
    s.push(',');
    float8_text(f64_at(raw, at + 8, "geometric")?, s);
    s.push(')');
    Ok(())
}

fn push_points(raw: &[u8], at: usize, count: usize, s: &mut String) -> Res {
    for i in 0..count {
        if i > 0 {
            s.push(',');
        }
        push_pair(raw, at + 16 * i, s)?;
    }
    Ok(())
}

fn geometry_text(ty: &Type, raw: &[u8], s: &mut String) -> Res {
    match *ty {
        Type::POINT => push_pair(raw, 0, s)?,
        Type::BOX => push_points(raw, 0, 2, s)?,
        Type::LSEG => {
            s.push('[');
            push_points(raw, 0, 2, s)?;
            s.push(']');
        }
        Type::PATH => {
            let closed = raw.first().copied().unwrap_or(0) != 0;
            let count = i32_at(raw, 1, "path")?.max(0) as usize;
            s.push(if closed { '(' } else { '[' });
            push_points(raw, 5, count, s)?;
            s.push(if closed { ')' } else { ']' });
        }
        Type::POLYGON => {
            let count = i32_at(raw, 0, "polygon")?.max(0) as usize;
            s.push('(');
            push_points(raw, 4, count, s)?;
            s.push(')');
        }
        Type::LINE => {
            s.push('{');
            for i in 0..3 {
                if i > 0 {
                    s.push(',');
                }
                float8_text(f64_at(raw, 8 * i, "line")?, s);
            }
            s.push('}');
        }
        _ => {
            s.push('<');
            push_pair(raw, 0, s)?;
            s.push(',');
            float8_text(f64_at(raw, 16, "circle")?, s);
            s.push('>');
        }
    }
    Ok(())
}

fn bit_text(raw: &[u8], s: &mut String) -> Res {
    let len = i32_at(raw, 0, "bit")?.max(0) as usize;
    let bytes = raw.get(4..).unwrap_or_default();
    if bytes.len() * 8 < len {
        return Err(bad("bit"));
    }
    s.reserve(len);
    for i in 0..len {
        s.push(if bytes[i / 8] & (0x80 >> (i % 8)) != 0 { '1' } else { '0' });
    }
    Ok(())
}

/// tsvectorout: `'lexeme':1A,2 'other'`.
fn tsvector_text(raw: &[u8], s: &mut String) -> Res {
    let count = i32_at(raw, 0, "tsvector")?;
    let mut pos = 4;
    for i in 0..count {
        if i > 0 {
            s.push(' ');
        }
        let end = raw.get(pos..).and_then(|r| r.iter().position(|b| *b == 0)).ok_or_else(|| bad("tsvector"))? + pos;
        let lexeme = String::from_utf8_lossy(&raw[pos..end]);
        pos = end + 1;
        s.push('\'');
        for c in lexeme.chars() {
            if c == '\'' || c == '\\' {
                s.push(c);
            }
            s.push(c);
        }
        s.push('\'');
        let npos = u16::from_be_bytes(fixed(raw, pos, "tsvector")?);
        pos += 2;
        for p in 0..npos {
            let entry = u16::from_be_bytes(fixed(raw, pos, "tsvector")?);
            pos += 2;
            s.push(if p == 0 { ':' } else { ',' });
            let _ = write!(s, "{}", entry & 0x3fff);
            match entry >> 14 {
                3 => s.push('A'),
                2 => s.push('B'),
                1 => s.push('C'),
                _ => {}
            }
        }
    }
    Ok(())
}

/// int2vector / oidvector: the elements separated by spaces.
fn vector_text(ty: &Type, raw: &[u8], s: &mut String) -> Res {
    let ndim = i32_at(raw, 0, "vector")?;
    if ndim == 0 {
        return Ok(());
    }
    if ndim != 1 {
        return Err(bad("vector"));
    }
    let count = i32_at(raw, 12, "vector")?.max(0);
    let mut pos = 20;
    for i in 0..count {
        if i > 0 {
            s.push(' ');
        }
        let value = sized(raw, &mut pos, "vector")?.ok_or_else(|| bad("vector"))?;
        if *ty == Type::INT2_VECTOR {
            push_int(s, i16_at(value, 0, "int2vector")?);
        } else {
            push_int(s, u32_at(value, 0, "oidvector")?);
        }
    }
    Ok(())
}

fn snapshot_text(raw: &[u8], s: &mut String) -> Res {
    let nxip = i32_at(raw, 0, "snapshot")?.max(0) as usize;
    let _ = write!(s, "{}:{}:", i64_at(raw, 4, "snapshot")?, i64_at(raw, 12, "snapshot")?);
    for i in 0..nxip {
        if i > 0 {
            s.push(',');
        }
        push_int(s, i64_at(raw, 20 + 8 * i, "snapshot")?);
    }
    Ok(())
}

/// hstore_out: `"k"=>"v", "n"=>NULL`.
fn hstore_text(raw: &[u8], s: &mut String) -> Res {
    let quoted = |bytes: &[u8], s: &mut String| {
        s.push('"');
        for c in String::from_utf8_lossy(bytes).chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('"');
    };
    let count = i32_at(raw, 0, "hstore")?;
    let mut pos = 4;
    for i in 0..count {
        if i > 0 {
            s.push_str(", ");
        }
        quoted(sized(raw, &mut pos, "hstore")?.ok_or_else(|| bad("hstore"))?, s);
        s.push_str("=>");
        match sized(raw, &mut pos, "hstore")? {
            None => s.push_str("NULL"),
            Some(value) => quoted(value, s),
        }
    }
    Ok(())
}

/// Appends `value`, in double quotes when `needs_quotes`, escaping `"` and `\` by doubling them
/// (`doubled`, as in record and range output) or with a backslash (array output).
fn push_quoted(value: &str, needs_quotes: bool, doubled: bool, s: &mut String) {
    if !needs_quotes {
        s.push_str(value);
        return;
    }
    s.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            s.push(if doubled { c } else { '\\' });
        }
        s.push(c);
    }
    s.push('"');
}

/// C `isspace` in the C locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// record_out: `(1,"a b",,"{1,2}")`.
fn record_text(fields: Option<&[Field]>, raw: &[u8], s: &mut String) -> Res {
    let count = i32_at(raw, 0, "record")?.max(0) as usize;
    let mut pos = 4;
    s.push('(');
    let mut value = String::new();
    for i in 0..count {
        if i > 0 {
            s.push(',');
        }
        let oid = u32_at(raw, pos, "record")?;
        pos += 4;
        let Some(data) = sized(raw, &mut pos, "record")? else { continue };
        let declared = fields.and_then(|f| f.get(i)).map(|f| f.type_().clone());
        let ty = declared.or_else(|| Type::from_oid(oid)).unwrap_or(Type::UNKNOWN);
        value.clear();
        text_out(&ty, data, &mut value)?;
        let needs = value.is_empty() || value.chars().any(|c| matches!(c, '"' | '\\' | '(' | ')' | ',') || is_c_space(c));
        push_quoted(&value, needs, true, s);
    }
    s.push(')');
    Ok(())
}

/// range_out: `[1,10)`, `empty`, `(,5]`, `["2020-01-01 00:00:00+00",infinity)`.
fn range_text(sub: &Type, raw: &[u8], s: &mut String) -> Res {
    let flags = raw.first().copied().ok_or_else(|| bad("range"))?;
    if flags & 0x01 != 0 {
        s.push_str("empty");
        return Ok(());
    }
    let mut pos = 1;
    let mut bound = |has: bool, s: &mut String| -> Res {
        if !has {
            return Ok(());
        }
        let data = sized(raw, &mut pos, "range")?.ok_or_else(|| bad("range"))?;
        let mut value = String::new();
        text_out(sub, data, &mut value)?;
        let needs = value.is_empty() || value.chars().any(|c| matches!(c, '"' | '\\' | '(' | ')' | '[' | ']' | ',') || is_c_space(c));
        push_quoted(&value, needs, true, s);
        Ok(())
    };
    s.push(if flags & 0x02 != 0 { '[' } else { '(' });
    bound(flags & (0x08 | 0x20) == 0, s)?;
    s.push(',');
    bound(flags & (0x10 | 0x40) == 0, s)?;
    s.push(if flags & 0x04 != 0 { ']' } else { ')' });
    Ok(())
}

/// array_out: `{1,NULL,"a b"}`, `{{1,2},{3,4}}`, `[0:1]={1,2}`.
fn array_text(elem: &Type, raw: &[u8], s: &mut String) -> Res {
    let ndim = i32_at(raw, 0, "array")?;
    if !(0..=6).contains(&ndim) {
        return Err(bad("array"));
    }
    if ndim == 0 {
        s.push_str("{}");
        return Ok(());
    }
    let ndim = ndim as usize;
    let mut dims = Vec::with_capacity(ndim);
    // Each dimension at least 1 and their product no more elements than the data can hold
    // (4 bytes each at least): a hostile server's dimensions must not make this loop for ever.
    let mut elements: usize = 1;
    for d in 0..ndim {
        let len = i32_at(raw, 12 + 8 * d, "array")?;
        if len < 1 {
            return Err(bad("array"));
        }
        elements = elements.checked_mul(len as usize).filter(|&n| n <= raw.len() / 4).ok_or_else(|| bad("array"))?;
        dims.push((len as usize, i32_at(raw, 16 + 8 * d, "array")?));
    }
    if dims.iter().any(|(_, lower)| *lower != 1) {
        for (len, lower) in &dims {
            let _ = write!(s, "[{}:{}]", lower, i64::from(*lower) + *len as i64 - 1);
        }
        s.push('=');
    }
    let delim = if *base_type(elem) == Type::BOX { ';' } else { ',' };
    let mut pos = 12 + 8 * ndim;
    let mut value = String::new();
    array_level(elem, raw, &dims, 0, delim, &mut pos, &mut value, s)
}

#[allow(clippy::too_many_arguments)]
fn array_level(
    elem: &Type,
    raw: &[u8],
    dims: &[(usize, i32)],
    d: usize,
    delim: char,
    pos: &mut usize,
    value: &mut String,
    s: &mut String,
) -> Res {
    s.push('{');
    for i in 0..dims[d].0 {
        if i > 0 {
            s.push(delim);
        }
        if d + 1 < dims.len() {
            array_level(elem, raw, dims, d + 1, delim, pos, value, s)?;
            continue;
        }
        match sized(raw, pos, "array")? {
            None => s.push_str("NULL"),
            Some(data) => {
                value.clear();
                text_out(elem, data, value)?;
                let needs = value.is_empty()
                    || value.eq_ignore_ascii_case("NULL")
                    || value.chars().any(|c| {
                        matches!(c, '"' | '\\' | '{' | '}') || c == delim || matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
                    });
                push_quoted(value, needs, false, s);
            }
        }
    }
    s.push('}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f8(v: f64) -> String {
        let mut s = String::new();
        float8_text(v, &mut s);
        s
    }

    #[test]
    fn floats_like_float8out() {
        assert_eq!(f8(1.0), "1");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(0.1), "0.1");
        assert_eq!(f8(1e20), "1e+20");
        assert_eq!(f8(1e-300), "1e-300");
        assert_eq!(f8(123456789012345.0), "123456789012345");
        assert_eq!(f8(1234567890123456.0), "1.234567890123456e+15");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001234), "1.234e-05");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn numeric_to_text() {
        let numeric = |raw: &[u8]| {
            let mut s = String::new();
            // A test: a failure here is the test failing.
            numeric_text(raw, &mut s).expect("numeric");
            s
        };
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3
        assert_eq!(numeric(&[0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c]), "12345.678");
        // -0.05 = digits [500], weight -1, dscale 2
        assert_eq!(numeric(&[0, 1, 0xff, 0xff, 0x40, 0, 0, 2, 0x01, 0xf4]), "-0.05");
        assert_eq!(numeric(&[0, 0, 0, 0, 0, 0, 0, 0]), "0");
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-719_528), (0, 1, 1));
        let mut s = String::new();
        date_text(-730_485, &mut s);
        assert_eq!(s, "0001-01-01 BC");
    }
}
