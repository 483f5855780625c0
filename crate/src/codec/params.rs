//! A statement's parameters as `lib/codec.ts`'s `writeParams` lays them out.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

/// One bound parameter: text (server infers and parses, as node-postgres does) or binary
/// bytes for Buffers.
#[derive(Debug)]
pub(crate) struct Param<'a> {
    /// Sent in binary (bytea) rather than text.
    pub(crate) binary: bool,
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
pub(crate) fn decode_params(buf: &[u8]) -> Result<Vec<Param<'_>>, String> {
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
