//! What the SQL text of a statement says about its result and how it must be sent: the command
//! word a result reports, whether it has a row count, whether the text is a script.

/// The command word node-postgres reports (`SELECT`, `INSERT`, ...), taken from the SQL text
/// because tokio-postgres does not expose the server's command tag.
pub(crate) fn command_of(sql: &str) -> String {
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
pub(crate) fn is_script(sql: &str) -> bool {
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
pub(crate) fn has_row_count(command: &str) -> bool {
    matches!(command, "INSERT" | "UPDATE" | "DELETE" | "SELECT" | "MERGE" | "MOVE" | "FETCH" | "COPY")
}

#[cfg(test)]
mod tests {
    use super::*;

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
