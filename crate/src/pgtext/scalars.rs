//! The other built-in scalar types the server prints its own way: char, uuid, inet/cidr,
//! geometry, bit strings, tsvector, int2vector/oidvector, snapshots.

use std::fmt::Write as _;

use tokio_postgres::types::Type;

use super::numbers::float8_text;
use super::{bad, f64_at, fixed, i16_at, i32_at, i64_at, push_hex, push_int, sized, u32_at, Res};

pub(super) fn char_text(b: u8, s: &mut String) {
    match b {
        0 => {}
        b if b & 0x80 != 0 => {
            let _ = write!(s, "\\{:03o}", b);
        }
        b => s.push(b as char),
    }
}

pub(super) fn uuid_text(raw: &[u8], s: &mut String) -> Res {
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

/// inet_out / cidr_out (PostgreSQL's inet_net_ntop: `::` for the first longest run of two
/// or more zero groups, embedded IPv4 for `::a.b.c.d` and `::ffff:a.b.c.d`).
pub(super) fn inet_text(raw: &[u8], cidr: bool, s: &mut String) -> Res {
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

pub(super) fn geometry_text(ty: &Type, raw: &[u8], s: &mut String) -> Res {
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

pub(super) fn bit_text(raw: &[u8], s: &mut String) -> Res {
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
pub(super) fn tsvector_text(raw: &[u8], s: &mut String) -> Res {
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
pub(super) fn vector_text(ty: &Type, raw: &[u8], s: &mut String) -> Res {
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

pub(super) fn snapshot_text(raw: &[u8], s: &mut String) -> Res {
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
