//! MySQL/MariaDB writeback: multi-row statements over a derived table of bound rows
//! (`SELECT ? AS k0, ? AS v0 UNION ALL SELECT ?, ?`), one transaction per batch, at most 65,535
//! placeholders a statement. Inserts skip keys that already exist, so a replay writes nothing
//! twice; updates join on the key and set only the changed columns.

use sqlx::mysql::{MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{Op, Target, WriteError, classify};
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
        let sql = statement(target, op);
        let what = format!("writing {}s to `{}`", op.action.name(), target.table);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for change in op.rows {
            let values = if op.action == Action::Delete {
                &[][..]
            } else {
                op.columns
            };
            for cell in change
                .cells
                .key
                .iter()
                .chain(values.iter().map(|i| &change.cells.source[*i]))
            {
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
    let columns = if op.action == Action::Delete {
        &[][..]
    } else {
        op.columns
    };
    let names: Vec<String> = (0..target.keys.len())
        .map(|i| format!("k{i}"))
        .chain(columns.iter().map(|i| format!("v{i}")))
        .collect();
    let first = format!(
        "SELECT {}",
        names
            .iter()
            .map(|n| format!("? AS {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let other = format!(" UNION ALL SELECT {}", vec!["?"; names.len()].join(", "));
    let mut sql = first;
    for _ in 1..op.rows.len() {
        sql.push_str(&other);
    }
    sql
}

fn statement(target: &Target, op: &Op<'_>) -> String {
    let table = quote_table(Dialect::Mysql, &target.table);
    let matches: Vec<String> = target
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("d.{} = w.k{i}", q(k)))
        .collect();
    let matches = matches.join(" AND ");
    let rows = rows(target, op);
    match op.action {
        Action::Insert => {
            let names: Vec<String> = target
                .keys
                .iter()
                .chain(op.columns.iter().map(|i| &target.compared[*i]))
                .map(|c| q(c))
                .collect();
            format!(
                "INSERT INTO {table} ({}) SELECT w.* FROM ({rows}) AS w WHERE NOT EXISTS (SELECT 1 FROM {table} AS d WHERE {matches})",
                names.join(", ")
            )
        }
        Action::Update => {
            let sets: Vec<String> = op
                .columns
                .iter()
                .map(|i| format!("d.{} = w.v{i}", q(&target.compared[*i])))
                .collect();
            format!(
                "UPDATE {table} AS d JOIN ({rows}) AS w ON {matches} SET {}",
                sets.join(", ")
            )
        }
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
