//! The byte formats between `lib/native.ts` and the core, all big-endian. Kept in step with
//! `lib/native.ts`: every module here is a `const enum` there with the same names (`op::PG_QUERY`
//! is `Op.PgQuery`) and values; the test at the bottom fails when they differ.
//!
//! **Submission** (JS → core, one Buffer per tick, records back to back):
//! `u8 op | u32 id | u32 subject | u32 acquire group`, then chunks (`u32 len | bytes`) by op:
//!
//! | op                 | subject           | acquire group | chunks                  |
//! |--------------------|-------------------|---------------|-------------------------|
//! | `QUERY`            | group index       | 0             | SQL, parameters         |
//! | `PG_QUERY`         | group index       | 0             | SQL, parameters, options|
//! | `ACQUIRE`          | handler number    | group index   | —                       |
//! | `HANDLER_QUERY`    | handler number    | 0             | SQL, parameters         |
//! | `PG_HANDLER_QUERY` | handler number    | 0             | SQL, parameters, options|
//! | `COMMIT`           | handler number    | 0             | —                       |
//! | `ROLLBACK`         | handler number    | 0             | —                       |
//!
//! The op byte is an [`op`] code in its low six bits and [`op_flag`]s in the top two. SQL is
//! UTF-8; parameters are laid out as `crate::codec::decode_params` reads them; options as
//! `crate::pgcompat::PgMode::parse` reads them.
//!
//! **Completion** (core → JS, records back to back, see [`completion_field`]):
//! `u32 id | u8 status | u32 len | payload`, the payload by [`status`]. Id 0 is no operation's:
//! it carries [`status::EVENTS`] and [`status::ASYNC_MESSAGE`] records.

/// Operation codes: the low six bits of a submission record's op byte.
pub(crate) mod op {
    /// A one-shot statement on a group's pipelined connections.
    pub(crate) const QUERY: u8 = 1;
    /// A statement on the connection a handler holds.
    pub(crate) const HANDLER_QUERY: u8 = 2;
    /// A handler's checkout: waits for a connection of the group.
    pub(crate) const ACQUIRE: u8 = 3;
    /// Commits a handler's open transaction (nothing to do without one).
    pub(crate) const COMMIT: u8 = 4;
    /// Rolls back a handler's open transaction (nothing to do without one).
    pub(crate) const ROLLBACK: u8 = 5;
    /// `pgdbpool/pg`: a one-shot statement in pg mode (see `crate::pgcompat`).
    pub(crate) const PG_QUERY: u8 = 6;
    /// `pgdbpool/pg`: a handler statement in pg mode.
    pub(crate) const PG_HANDLER_QUERY: u8 = 7;
}

/// Flags in the top two bits of a submission record's op byte.
pub(crate) mod op_flag {
    /// The operation has an `AbortSignal`: `abort` / `cancel` may name its id later.
    pub(crate) const ABORTABLE: u8 = 0x80;
    /// Aborted before the batch was handed over: answered [`ABORTED`](crate::error::PoolError::Aborted)
    /// without running.
    pub(crate) const ABORTED: u8 = 0x40;
}

/// The bits of the op byte that hold the [`op`] code.
pub(crate) const OP_CODE_MASK: u8 = !(op_flag::ABORTABLE | op_flag::ABORTED);

/// The status byte of a completion record: what its payload is.
pub(crate) mod status {
    /// The operation succeeded; the payload is its result (`crate::codec`'s layout, empty for
    /// operations without a result).
    pub(crate) const RESULT: u8 = 0;
    /// The operation failed; the payload is the error as `PoolError::to_json` writes it.
    pub(crate) const ERROR: u8 = 1;
    /// Id 0: the pool's lifecycle events, a JSON array.
    pub(crate) const EVENTS: u8 = 2;
    /// Id 0: an asynchronous message of a session a pg client holds:
    /// `u32 subscription | u8 message type | body`.
    pub(crate) const ASYNC_MESSAGE: u8 = 3;
}

/// Byte offsets of the fields of a completion record.
pub(crate) mod completion_field {
    /// `u32`: the operation's id (0 for events and asynchronous messages).
    pub(crate) const ID: usize = 0;
    /// `u8`: a [`status`](super::status) byte.
    pub(crate) const STATUS: usize = 4;
    /// `u32`: the payload's length.
    pub(crate) const LENGTH: usize = 5;
    /// The payload; also the size of the record's header.
    pub(crate) const PAYLOAD: usize = 9;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    type Enums = BTreeMap<String, BTreeMap<String, u64>>;

    fn number(text: &str) -> u64 {
        let text = text.trim();
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        parsed.unwrap_or_else(|_| panic!("not a number: {text}"))
    }

    /// `pub(crate) mod name { pub(crate) const MEMBER: T = value; }` blocks of this file, under
    /// the TypeScript spelling (`op_flag` → `OpFlag`, `PG_QUERY` → `PgQuery`).
    fn rust_enums() -> Enums {
        let pascal = |snake: &str| -> String {
            snake
                .split('_')
                .map(|w| {
                    let w = w.to_ascii_lowercase();
                    let mut chars = w.chars();
                    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
                })
                .collect()
        };
        let mut enums = Enums::new();
        let mut current: Option<String> = None;
        for line in include_str!("wire.rs").lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("pub(crate) mod ").and_then(|l| l.strip_suffix(" {")) {
                current = Some(pascal(name));
            } else if line == "}" {
                current = None;
            } else if let (Some(module), Some(decl)) = (&current, line.strip_prefix("pub(crate) const ")) {
                let (name, rest) = decl.split_once(':').expect("a typed constant");
                let value = rest.split_once('=').expect("a value").1.trim_end_matches(';');
                enums.entry(module.clone()).or_default().insert(pascal(name), number(value));
            }
        }
        enums
    }

    /// `export const enum Name { Member = value, }` blocks of `lib/native.ts`.
    fn typescript_enums() -> Enums {
        let mut enums = Enums::new();
        let mut current: Option<String> = None;
        for line in include_str!("../../../lib/native.ts").lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("export const enum ").and_then(|l| l.strip_suffix(" {")) {
                current = Some(name.to_string());
            } else if line == "}" {
                current = None;
            } else if let (Some(name), Some((member, value))) = (&current, line.split_once(" = ")) {
                if !member.starts_with("//") && !member.starts_with('*') && !member.starts_with("/*") {
                    enums.entry(name.clone()).or_default().insert(member.to_string(), number(value.trim_end_matches(',')));
                }
            }
        }
        enums
    }

    #[test]
    fn lib_native_ts_mirrors_the_wire_constants() {
        let rust = rust_enums();
        assert!(rust.contains_key("Op") && rust.contains_key("Status"), "{rust:?}");
        assert_eq!(typescript_enums(), rust, "lib/native.ts's const enums differ from crate/src/bindings/wire.rs");
    }
}
