//! MySQL/MariaDB writeback: multi-row statements over a derived table of bound rows
//! (`SELECT ? AS k0, ? AS v0 UNION ALL SELECT ?, ?`), one transaction per batch, at most 65,535
//! placeholders a statement. Inserts skip keys that already exist, so a replay writes nothing
//! twice; updates join on the key and set only the changed columns.

use sqlx::mysql::{MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{Op, Target, WriteError, classify, key_matches};
use crate::changeset::{Action, Cell};
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
        match query.execute(&mut *tx).await {
            Ok(_) => tx.commit().await.map_err(|e| classify(&what, e)),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(classify(&what, e))
            }
        }
    }
}

/// `SELECT ? AS k0, ? AS v1 UNION ALL SELECT ?, ? …`: the batch as a derived table.
fn rows(target: &Target, op: &Op<'_>) -> String {
    let names = op.staged_names(target);
    let first: Vec<String> = names.iter().map(|n| format!("? AS {n}")).collect();
    let other = format!(" UNION ALL SELECT {}", vec!["?"; names.len()].join(", "));
    format!(
        "SELECT {}{}",
        first.join(", "),
        other.repeat(op.rows.len().saturating_sub(1))
    )
}

fn statement(target: &Target, op: &Op<'_>) -> String {
    let table = quote_table(Dialect::Mysql, &target.table);
    let matches = key_matches(target, q, "d");
    let rows = rows(target, op);
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
    }
}
