//! SQL quoting of identifiers and string literals, for the source and for
//! both warehouse targets: Postgres and DuckDB quote alike. Every name that
//! reaches SQL text goes through here.

/// Quotes an SQL identifier: `a"b` becomes `"a""b"`.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `it's` becomes `'it''s'`. Assumes
/// `standard_conforming_strings` (on by default since Postgres 9.1, always
/// in DuckDB), so backslashes are ordinary characters.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_cannot_be_escaped() {
        assert_eq!(ident("Order Items"), "\"Order Items\"");
        assert_eq!(ident("x\"; DROP TABLE t; --"), "\"x\"\"; DROP TABLE t; --\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a'); DROP TABLE t; --"), "'a''); DROP TABLE t; --'");
    }
}
