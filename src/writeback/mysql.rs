//! MySQL/MariaDB writeback: multi-row statements over a derived table of bound rows
//! (`SELECT ? AS k0, ? AS v0 UNION ALL SELECT ?, ?`), one transaction per batch, at most 65,535
//! placeholders a statement. Inserts skip keys that already exist, so a replay writes nothing
//! twice; updates join on the key and set only the changed columns.

use sqlx::mysql::{MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{Op, Target, WriteError, classify, expect_rows, key_matches};
use crate::changeset::{Action, Cell, Change};
use crate::config::Endpoint;
use crate::error::{Error, Result};
use crate::sql::{Dialect, quote_in, quote_table};

pub struct Writer {
    conn: MySqlConnection,
}

fn q(name: &str) -> String {
    quote_in(Dialect::Mysql, name)
}

impl Writer {
    pub async fn connect(endpoint: &Endpoint, url: &str) -> Result<Writer> {
        let connect_error = |source| Error::Connect {
            side: endpoint.side,
            url: endpoint.location.display(),
            source,
        };
        let options: MySqlConnectOptions = url.parse().map_err(connect_error)?;
        let conn = options.connect().await.map_err(connect_error)?;
        Ok(Writer { conn })
    }

    pub async fn write(&mut self, target: &Target, op: &Op<'_>) -> Result<(), WriteError> {
        let what = op.what(target);
        let mut query = sqlx::query(AssertSqlSafe(statement(target, op)));
        for change in op.rows {
            for cell in op.cells(change) {
                query = bind(query, cell);
            }
        }
        let mut tx = self.conn.begin().await.map_err(|e| classify(&what, e))?;
        let checked = match single_matches(&mut tx, target, op).await {
            Err(e) => Err(classify(&what, e)),
            Ok(false) => Err(WriteError::Mismatch(0)),
            Ok(true) => match query.execute(&mut *tx).await {
                Ok(done) => expect_rows(done.rows_affected(), op),
                Err(e) => Err(classify(&what, e)),
            },
        };
        match checked {
            Ok(()) => tx.commit().await.map_err(|e| classify(&what, e)),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// How many destination rows the change's key matches, under the table's collation.
    pub async fn matches(&mut self, target: &Target, change: &Change) -> Result<u64, WriteError> {
        let what = format!("looking up a key in `{}`", target.table);
        let keys: Vec<String> = target
            .keys
            .iter()
            .map(|k| format!("{} = ?", q(k)))
            .collect();
        let count = format!(
            "SELECT count(*) FROM {} WHERE {}",
            quote_table(Dialect::Mysql, &target.table),
            keys.join(" AND ")
        );
        let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(count));
        for cell in &change.cells.key {
            query = bind_cell(query, cell);
        }
        let n = query
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(n as u64)
    }
}

/// For updates and deletes: whether every staged key matches exactly one destination row under
/// the table's collation (MariaDB refuses a subquery on the table being changed, so this is
/// asked before the statement, in its transaction). Inserts: always true.
async fn single_matches(
    tx: &mut MySqlConnection,
    target: &Target,
    op: &Op<'_>,
) -> std::result::Result<bool, sqlx::Error> {
    if op.action == Action::Insert {
        return Ok(true);
    }
    let table = quote_table(Dialect::Mysql, &target.table);
    let derived = rows(target, op, true);
    let check = format!(
        "SELECT count(*) FROM (SELECT w.r FROM ({derived}) AS w LEFT JOIN {table} AS d ON {} GROUP BY w.r HAVING count(d.{}) <> 1) AS bad",
        key_matches(target, q, "d"),
        q(&target.keys[0])
    );
    let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(check));
    for change in op.rows {
        for cell in op.cells(change) {
            query = bind_cell(query, cell);
        }
    }
    Ok(query.fetch_one(&mut *tx).await? == 0)
}

/// Values MySQL/MariaDB cannot hold: ±infinity dates and timestamps, NaN and infinite floats.
pub fn unstorable(target: &Target, op: &Op<'_>, change: &Change) -> Option<String> {
    let columns = target
        .keys
        .iter()
        .chain(op.written().iter().map(|i| &target.compared[*i]));
    for (cell, column) in op.cells(change).zip(columns) {
        let what = match cell {
            Cell::Infinity(true) => "-infinity",
            Cell::Infinity(false) => "infinity",
            Cell::Float(f) if f.is_nan() => "NaN",
            Cell::Float(f) if f.is_infinite() => "an infinite number",
            _ => continue,
        };
        return Some(format!(
            "MySQL/MariaDB cannot hold {what} in column `{column}`; nothing written for this row"
        ));
    }
    None
}

/// `SELECT ? AS k0, ? AS v1 UNION ALL SELECT ?, ? …`: the batch as a derived table.
/// With `numbered`, each row also carries its position as `r` (a literal, not a bound value).
fn rows(target: &Target, op: &Op<'_>, numbered: bool) -> String {
    let names = op.staged_names(target);
    let mut first: Vec<String> = names.iter().map(|n| format!("? AS {n}")).collect();
    let other = vec!["?"; names.len()].join(", ");
    if numbered {
        first.insert(0, "0 AS r".into());
    }
    let mut text = format!("SELECT {}", first.join(", "));
    for i in 1..op.rows.len() {
        let position = if numbered {
            format!("{i}, ")
        } else {
            String::new()
        };
        text.push_str(&format!(" UNION ALL SELECT {position}{other}"));
    }
    text
}

/// The batch's statement (updates and deletes run only after [`single_matches`]).
fn statement(target: &Target, op: &Op<'_>) -> String {
    let table = quote_table(Dialect::Mysql, &target.table);
    let matches = key_matches(target, q, "d");
    let rows = rows(target, op, false);
    match op.action {
        Action::Insert => format!(
            "INSERT INTO {table} ({}) SELECT w.* FROM ({rows}) AS w WHERE NOT EXISTS (SELECT 1 FROM {table} AS d WHERE {matches})",
            op.destination_names(target, q).join(", ")
        ),
        Action::Update => format!(
            "UPDATE {table} AS d JOIN ({rows}) AS w ON {matches} SET {}",
            op.assignments(target, q, "d.")
        ),
        Action::Delete => format!("DELETE d FROM {table} AS d JOIN ({rows}) AS w ON {matches}"),
    }
}

fn bind<'q>(
    query: Query<'q, MySql, MySqlArguments>,
    cell: &Cell,
) -> Query<'q, MySql, MySqlArguments> {
    bind_cell(query, cell)
}

/// Bind one cell to any MySQL query (statement or scalar lookup).
fn bind_cell<'q, Q: Bindable<'q>>(query: Q, cell: &Cell) -> Q {
    match cell.clone() {
        Cell::Null => query.bind(None::<String>),
        Cell::Bool(b) => query.bind(b),
        Cell::Int(n) => query.bind(n),
        Cell::Float(f) => query.bind(f),
        Cell::Decimal(s) | Cell::Text(s) => query.bind(s),
        Cell::Bytes(b) => query.bind(b),
        Cell::Date(d) => query.bind(d),
        Cell::Time(t) => query.bind(t),
        Cell::Timestamp(t) => query.bind(t),
        Cell::TimestampTz(t) => query.bind(t),
        Cell::Infinity(negative) => query.bind(if negative { "-infinity" } else { "infinity" }),
    }
}

/// The `bind` of sqlx's query kinds, so one function binds cells to all of them.
trait Bindable<'q>: Sized {
    fn bind<T: 'q + sqlx::Encode<'q, MySql> + sqlx::Type<MySql>>(self, value: T) -> Self;
}

impl<'q> Bindable<'q> for Query<'q, MySql, MySqlArguments> {
    fn bind<T: 'q + sqlx::Encode<'q, MySql> + sqlx::Type<MySql>>(self, value: T) -> Self {
        Query::bind(self, value)
    }
}

impl<'q, O> Bindable<'q> for sqlx::query::QueryScalar<'q, MySql, O, MySqlArguments> {
    fn bind<T: 'q + sqlx::Encode<'q, MySql> + sqlx::Type<MySql>>(self, value: T) -> Self {
        sqlx::query::QueryScalar::bind(self, value)
    }
}
