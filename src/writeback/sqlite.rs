//! SQLite writeback: one `BEGIN IMMEDIATE` transaction per batch, rows bound into a `VALUES`
//! common table expression (at most 32,766 variables a statement). Inserts skip keys that
//! already exist; updates use `UPDATE … FROM` and set only the changed columns. The destination
//! table is always named with its schema (`"main"."t"`), so the staging CTE can never stand in for
//! a table of the same name.
//!
//! SQLite converts what it is given by the column's *affinity*, and some values do not survive:
//! NaN becomes NULL, `-0.0` becomes `0` outside BLOB affinity, text numbers keep 15 significant
//! digits in REAL/NUMERIC/INTEGER affinity, integers past 2^53 are rounded in REAL affinity. Such a
//! row is failed with a message before anything is sent ([`Writer::unstorable`]); every other
//! value is bound in the form the affinity keeps exactly.

use std::path::Path;

use sqlx::query::Query;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{Op, Target, WriteError, classify, expect_rows, key_matches};
use crate::changeset::{Action, Cell, Change};
use crate::config::Endpoint;
use crate::error::{Error, Result};
use crate::sql::{Dialect, quote, quote_table};

/// SQLite's type affinity of a column, from its declared type (sqlite.org/datatype3.html, 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub fn of(declared: &str) -> Affinity {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.trim().is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    fn name(self) -> &'static str {
        match self {
            Affinity::Integer => "INTEGER",
            Affinity::Text => "TEXT",
            Affinity::Blob => "BLOB",
            Affinity::Real => "REAL",
            Affinity::Numeric => "NUMERIC",
        }
    }
}

/// Largest integer every f64 holds exactly.
const EXACT_IN_F64: i64 = 1 << 53;

pub struct Writer {
    conn: SqliteConnection,
    /// The destination table, schema-qualified and quoted.
    table: String,
    /// Whether rows are found through the key map (tables with a rowid).
    keymap: bool,
    /// Each key column's affinity, then each compared column's.
    keys: Vec<Affinity>,
    compared: Vec<Affinity>,
}

impl Writer {
    pub async fn connect(endpoint: &Endpoint, path: &Path, target: &Target) -> Result<Writer> {
        if !path.exists() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the destination SQLite file does not exist",
                ),
            });
        }
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(std::time::Duration::from_secs(30))
            .connect()
            .await
            .map_err(|source| Error::Connect {
                side: endpoint.side,
                url: endpoint.location.display(),
                source,
            })?;
        let table = qualified(&target.table);
        let declared = declared_types(&mut conn, &target.table).await?;
        let affinity = |c: &String| Affinity::of(declared.get(c).map_or("", String::as_str));
        let keymap = build_keymap(&mut conn, &table, target).await?;
        Ok(Writer {
            conn,
            keymap,
            table,
            keys: target.keys.iter().map(affinity).collect(),
            compared: target.compared.iter().map(affinity).collect(),
        })
    }

    /// The affinity of each value bound for a row of `op`: key columns, then written columns.
    fn affinities(&self, op: &Op<'_>) -> Vec<Affinity> {
        let written = op.written().iter().map(|i| self.compared[*i]);
        self.keys.iter().copied().chain(written).collect()
    }

    /// Why SQLite would not store this row's values as they are, or `None`.
    pub fn unstorable(&self, target: &Target, op: &Op<'_>, change: &Change) -> Option<String> {
        let columns = target
            .keys
            .iter()
            .chain(op.written().iter().map(|i| &target.compared[*i]));
        for ((cell, affinity), column) in op.cells(change).zip(self.affinities(op)).zip(columns) {
            if let Some(why) = lossy(cell, affinity) {
                return Some(format!(
                    "SQLite cannot store this value of `{column}` ({} affinity) exactly: {why}; nothing written for this row",
                    affinity.name()
                ));
            }
        }
        None
    }

    /// How many destination rows the change's key matches, under the columns' collations.
    pub async fn matches(&mut self, target: &Target, change: &Change) -> Result<u64, WriteError> {
        let what = format!("looking up a key in `{}`", target.table);
        let keys: Vec<String> = target
            .keys
            .iter()
            .map(|k| format!("{} = ?", quote(k)))
            .collect();
        let count = format!(
            "SELECT count(*) FROM {} WHERE {}",
            self.table,
            keys.join(" AND ")
        );
        let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(count));
        for (cell, affinity) in change.cells.key.iter().zip(&self.keys) {
            query = match value(cell, *affinity) {
                Bound::Null => query.bind(None::<String>),
                Bound::Int(n) => query.bind(n),
                Bound::Float(f) => query.bind(f),
                Bound::Text(t) => query.bind(t),
                Bound::Bytes(b) => query.bind(b),
            };
        }
        let n = query
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(n as u64)
    }

    pub async fn write(&mut self, target: &Target, op: &Op<'_>) -> Result<(), WriteError> {
        let what = op.what(target);
        let affinities = self.affinities(op);
        let mut query = sqlx::query(AssertSqlSafe(statement(
            &self.table,
            target,
            op,
            self.keymap,
        )));
        for change in op.rows {
            for (cell, affinity) in op.cells(change).zip(&affinities) {
                query = bind(query, cell, *affinity);
            }
        }
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| classify(&what, e))?;
        let checked = match query.execute(&mut *tx).await {
            Ok(done) => expect_rows(done.rows_affected(), op),
            Err(e) => Err(classify(&what, e)),
        };
        match checked {
            Ok(()) => {
                crate::failpoint::hit("mid-batch");
                tx.commit().await.map_err(|e| classify(&what, e))
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// `"main"."t"` for `t`; a name that already says its schema is kept.
fn qualified(table: &str) -> String {
    let quoted = quote_table(Dialect::Standard, table);
    if quoted.contains("\".\"") {
        quoted
    } else {
        format!("\"main\".{quoted}")
    }
}

/// Each column's declared type (`PRAGMA table_xinfo`), for its affinity.
async fn declared_types(
    conn: &mut SqliteConnection,
    table: &str,
) -> Result<std::collections::HashMap<String, String>> {
    let pragma = "SELECT name, type FROM pragma_table_xinfo(?)";
    let name = crate::sql::table_name(table);
    let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(pragma))
        .bind(name)
        .fetch_all(conn)
        .await
        .map_err(|e| Error::Writeback {
            what: format!("reading the columns of `{table}`"),
            source: Box::new(e),
        })?;
    Ok(rows.into_iter().collect())
}

/// A value in the form it is bound.
enum Bound {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// Why `cell` would not survive a column of `affinity`, or `None`.
fn lossy(cell: &Cell, affinity: Affinity) -> Option<String> {
    let numeric = !matches!(affinity, Affinity::Text | Affinity::Blob);
    match cell {
        Cell::Infinity(negative) => Some(format!(
            "SQLite has no {}infinite dates or timestamps",
            if *negative { "negative " } else { "" }
        )),
        Cell::Float(f) if f.is_nan() => Some("SQLite stores NaN as NULL".into()),
        Cell::Float(f) if *f == 0.0 && f.is_sign_negative() && affinity != Affinity::Blob => {
            Some("SQLite stores -0 as 0 unless the column has no declared type".into())
        }
        Cell::Int(n) if affinity == Affinity::Real && n.unsigned_abs() > EXACT_IN_F64 as u64 => {
            Some(format!("{n} is beyond 2^53 and a REAL column rounds it"))
        }
        Cell::Decimal(d) if affinity != Affinity::Text => match decimal(d) {
            Bound::Int(n)
                if affinity == Affinity::Real && n.unsigned_abs() > EXACT_IN_F64 as u64 =>
            {
                Some(format!("{d} is beyond 2^53 and a REAL column rounds it"))
            }
            Bound::Text(_) if numeric || affinity == Affinity::Blob => Some(format!(
                "{d} has more than 15 significant digits, and SQLite keeps 15 of a number; declare the column TEXT or cast the value in the source query"
            )),
            _ => None,
        },
        _ => None,
    }
}

/// A decimal's exact form for a numeric column: an integer when it is whole and fits 64 bits, a
/// float when it has at most 15 significant digits (SQLite's own conversion keeps those), else
/// its text (which [`lossy`] refuses outside TEXT affinity).
fn decimal(d: &str) -> Bound {
    let (whole, fraction) = d.split_once('.').unwrap_or((d, ""));
    if fraction.bytes().all(|b| b == b'0')
        && let Ok(n) = whole.parse::<i64>()
    {
        return Bound::Int(n);
    }
    let significant = d
        .bytes()
        .filter(u8::is_ascii_digit)
        .skip_while(|b| *b == b'0')
        .count();
    let trailing_zeros = fraction.bytes().rev().take_while(|b| *b == b'0').count();
    match d.parse::<f64>() {
        Ok(f) if significant.saturating_sub(trailing_zeros) <= 15 => Bound::Float(f),
        _ => Bound::Text(d.to_string()),
    }
}

/// The bound form of a cell for a column of `affinity`.
fn value(cell: &Cell, affinity: Affinity) -> Bound {
    match cell.clone() {
        Cell::Null | Cell::Infinity(_) => Bound::Null,
        Cell::Bool(b) => Bound::Int(i64::from(b)),
        Cell::Int(n) => Bound::Int(n),
        Cell::Float(f) => Bound::Float(f),
        Cell::Decimal(s) if affinity == Affinity::Text => Bound::Text(s),
        Cell::Decimal(s) => decimal(&s),
        Cell::Text(s) => Bound::Text(s),
        Cell::Bytes(b) => Bound::Bytes(b),
        Cell::Date(d) => Bound::Text(d.format("%Y-%m-%d").to_string()),
        Cell::Time(t) => Bound::Text(t.format("%H:%M:%S%.f").to_string()),
        Cell::Timestamp(t) => Bound::Text(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
        Cell::TimestampTz(t) => Bound::Text(t.format("%Y-%m-%d %H:%M:%S%.f+00:00").to_string()),
    }
}

/// The batch's statement; updates and deletes touch a row only when the staged key matches
/// exactly one destination row under the columns' collations (see [`expect_rows`]).
fn statement(table: &str, target: &Target, op: &Op<'_>, keymap: bool) -> String {
    if keymap {
        return by_rowid(table, target, op);
    }
    let names = op.staged_names(target);
    let row = format!("({})", vec!["?"; names.len()].join(", "));
    let with = format!(
        "WITH w({}) AS (VALUES {})",
        names.join(", "),
        vec![row; op.rows.len()].join(", ")
    );
    let single = format!(
        "(SELECT count(*) FROM {table} AS d2 WHERE {}) = 1",
        key_matches(target, quote, "d2")
    );
    match op.action {
        Action::Insert => format!(
            "{with} INSERT INTO {table} ({}) SELECT {} FROM w WHERE NOT EXISTS (SELECT 1 FROM {table} AS d WHERE {})",
            op.destination_names(target, quote).join(", "),
            names.join(", "),
            key_matches(target, quote, "d")
        ),
        Action::Update => format!(
            "{with} UPDATE {table} AS d SET {} FROM w WHERE {} AND {single}",
            op.assignments(target, quote, ""),
            key_matches(target, quote, "d")
        ),
        Action::Delete => format!(
            "{with} DELETE FROM {table} AS d WHERE EXISTS (SELECT 1 FROM w WHERE {} AND {single})",
            key_matches(target, quote, "d")
        ),
    }
}

/// The key map: every destination key with its rowid, read in one pass when the writer starts
/// and indexed, so that each batch finds its rows by index whatever indexes the table has.
const KEYMAP: &str = "temp.recon_keymap";

/// Build the key map; `false` when the table has no rowid (`WITHOUT ROWID`), which then is
/// matched by key directly.
async fn build_keymap(conn: &mut SqliteConnection, table: &str, target: &Target) -> Result<bool> {
    let probe = format!("SELECT rowid FROM {table} LIMIT 0");
    if sqlx::query(AssertSqlSafe(probe))
        .execute(&mut *conn)
        .await
        .is_err()
    {
        return Ok(false);
    }
    let (keys, names) = target.staged_keys(quote);
    let build = format!(
        "DROP TABLE IF EXISTS {KEYMAP}; CREATE TABLE {KEYMAP} AS SELECT rowid AS rid, {} FROM {table}; CREATE INDEX temp.recon_keymap_keys ON recon_keymap ({})",
        keys.join(", "),
        names.join(", ")
    );
    sqlx::raw_sql(AssertSqlSafe(build))
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::Writeback {
            what: format!("reading the keys of `{}`", target.table),
            source: Box::new(e),
        })?;
    Ok(true)
}

/// Statements through the key map: a staged key finds its one row by rowid (keys are compared
/// exactly, as the diff compares them, so keys equal only under a collation never meet).
fn by_rowid(table: &str, target: &Target, op: &Op<'_>) -> String {
    let names = op.staged_names(target);
    let row = format!("({})", vec!["?"; names.len()].join(", "));
    let with = format!(
        "WITH staged({}) AS (VALUES {})",
        names.join(", "),
        vec![row; op.rows.len()].join(", ")
    );
    let on: Vec<String> = (0..target.keys.len())
        .map(|i| format!("m.k{i} = s.k{i}"))
        .collect();
    let found = format!("staged AS s JOIN {KEYMAP} AS m ON {}", on.join(" AND "));
    match op.action {
        Action::Insert => format!(
            "{with} INSERT INTO {table} ({}) SELECT {} FROM staged AS s WHERE NOT EXISTS (SELECT 1 FROM {KEYMAP} AS m WHERE {})",
            op.destination_names(target, quote).join(", "),
            names.join(", "),
            on.join(" AND ")
        ),
        Action::Update => format!(
            "{with} UPDATE {table} AS d SET {} FROM (SELECT m.rid AS rid, s.* FROM {found}) AS w WHERE d.rowid = w.rid",
            op.assignments(target, quote, "")
        ),
        Action::Delete => {
            format!("{with} DELETE FROM {table} WHERE rowid IN (SELECT m.rid FROM {found})")
        }
    }
}

fn bind<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    cell: &Cell,
    affinity: Affinity,
) -> Query<'q, Sqlite, SqliteArguments> {
    match value(cell, affinity) {
        Bound::Null => query.bind(None::<String>),
        Bound::Int(n) => query.bind(n),
        Bound::Float(f) => query.bind(f),
        Bound::Text(t) => query.bind(t),
        Bound::Bytes(b) => query.bind(b),
    }
}
