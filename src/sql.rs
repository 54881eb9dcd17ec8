//! Identifier quoting: the one place that turns a name from a job file into SQL. Every column and
//! table name goes through here (DataFusion, PostgreSQL and SQLite use `"…"`, MySQL/MariaDB
//! backticks), so mixed case, spaces and quotes in names are kept as written. Values are never
//! spliced into SQL; they are bound.

/// The SQL dialect a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL, SQLite and DataFusion.
    Standard,
    Mysql,
}

/// Quote one identifier: `Amount Cents` → `"Amount Cents"`, `a"b` → `"a""b"`.
pub fn quote(name: &str) -> String {
    quote_in(Dialect::Standard, name)
}

pub fn quote_in(dialect: Dialect, name: &str) -> String {
    match dialect {
        Dialect::Standard => format!("\"{}\"", name.replace('"', "\"\"")),
        Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
    }
}

/// Quote a possibly schema-qualified table name (`sales.Orders` → `"sales"."Orders"`). A part
/// that *starts* with a quote (`"my.schema".orders`) is read up to its closing quote, so it may hold
/// dots; a quote anywhere else is part of the name (`we"ird` is the table `we"ird`).
pub fn quote_table(dialect: Dialect, name: &str) -> String {
    split_qualified(name)
        .iter()
        .map(|part| quote_in(dialect, part))
        .collect::<Vec<_>>()
        .join(".")
}

/// The table's own name without its schema (`sales.Orders` → `Orders`), as catalog functions
/// such as SQLite's `pragma_table_info` take it.
pub fn table_name(name: &str) -> String {
    split_qualified(name).pop().unwrap_or_default()
}

/// A possibly schema-qualified table name as (schema, table), the schema empty when the name
/// has none (MySQL catalog queries then use the connection's database).
pub fn schema_and_table(name: &str) -> (String, String) {
    let mut parts = split_qualified(name);
    let table = parts.pop().unwrap_or_default();
    (parts.pop().unwrap_or_default(), table)
}

/// The parts of a possibly schema-qualified table name, unquoted (`sales."Or.ders"` →
/// `["sales", "Or.ders"]`).
fn split_qualified(name: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted: Option<char> = None;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        let push = match (quoted, c) {
            (None, '"' | '`') if parts.last().is_some_and(String::is_empty) => {
                quoted = Some(c);
                None
            }
            (Some(q), c) if c == q && chars.peek() == Some(&q) => {
                chars.next();
                Some(q)
            }
            (Some(q), c) if c == q => {
                quoted = None;
                None
            }
            (None, '.') => {
                parts.push(String::new());
                None
            }
            (_, c) => Some(c),
        };
        if let (Some(c), Some(part)) = (push, parts.last_mut()) {
            part.push(c);
        }
    }
    parts
}

/// The statement that reads a side: the table, or the user's query as written.
pub fn relation_select(dialect: Dialect, relation: &crate::config::Relation) -> String {
    match relation {
        crate::config::Relation::Table(t) => format!("SELECT * FROM {}", quote_table(dialect, t)),
        crate::config::Relation::Query(q) => q.trim().trim_end_matches(';').to_string(),
        crate::config::Relation::File | crate::config::Relation::Http => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_names_as_written() {
        assert_eq!(quote("Amount Cents"), "\"Amount Cents\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_in(Dialect::Mysql, "we`ird"), "`we``ird`");
        assert_eq!(
            quote_table(Dialect::Standard, "sales.Orders"),
            "\"sales\".\"Orders\""
        );
        assert_eq!(
            quote_table(Dialect::Standard, "\"my.schema\".t"),
            "\"my.schema\".\"t\""
        );
        assert_eq!(quote_table(Dialect::Standard, "we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_table(Dialect::Mysql, "we\"ird"), "`we\"ird`");
    }
}
