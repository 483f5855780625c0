//! Values made of other values, printed with the server's quoting rules: records
//! (composites), ranges, arrays, hstore.

use std::fmt::Write as _;

use tokio_postgres::types::{Field, Type};

use super::{bad, base_type, i32_at, sized, text_out, u32_at, Res};

pub(super) fn hstore_text(raw: &[u8], s: &mut String) -> Res {
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
pub(super) fn record_text(fields: Option<&[Field]>, raw: &[u8], s: &mut String) -> Res {
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
pub(super) fn range_text(sub: &Type, raw: &[u8], s: &mut String) -> Res {
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
pub(super) fn array_text(elem: &Type, raw: &[u8], s: &mut String) -> Res {
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

// The recursion carries the walk's whole state; a struct for it would only rename the arguments.
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
