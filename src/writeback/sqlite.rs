//! SQLite writeback: one `BEGIN IMMEDIATE` transaction per batch, rows bound into a `VALUES`
//! common table expression (at most 32,766 variables a statement). Inserts skip keys that
//! already exist; updates use `UPDATE … FROM` and set only the changed columns.

use std::path::Path;

use sqlx::query::Query;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{Op, Target, WriteError, classify, key_matches};
use crate::changeset::{Action, Cell};
use crate::config::Endpoint;
use crate::error::{Error, Result};
use crate::sql::{Dialect, quote, quote_table};

pub struct Writer {
    conn: SqliteConnection,
}

impl Writer {
    pub async fn connect(endpoint: &Endpoint, path: &Path) -> Result<Writer> {
        if !path.exists() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the destination SQLite file does not exist",
                ),
            });
        }
        let conn = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(std::time::Duration::from_secs(30))
            .connect()
            .await
            .map_err(|source| Error::Connect {
                side: endpoint.side,
                url: endpoint.location.display(),
                source,
            })?;
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
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| classify(&what, e))?;
        match query.execute(&mut *tx).await {
            Ok(_) => tx.commit().await.map_err(|e| classify(&what, e)),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(classify(&what, e))
            }
        }
    }
}

fn statement(target: &Target, op: &Op<'_>) -> String {
    let table = quote_table(Dialect::Standard, &target.table);
    let names = op.staged_names(target);
    let row = format!("({})", vec!["?"; names.len()].join(", "));
    let with = format!(
        "WITH w({}) AS (VALUES {})",
        names.join(", "),
        vec![row; op.rows.len()].join(", ")
    );
    match op.action {
        Action::Insert => format!(
            "{with} INSERT INTO {table} ({}) SELECT {} FROM w WHERE NOT EXISTS (SELECT 1 FROM {table} AS d WHERE {})",
            op.destination_names(target, quote).join(", "),
            names.join(", "),
            key_matches(target, quote, "d")
        ),
        Action::Update => format!(
            "{with} UPDATE {table} SET {} FROM w WHERE {}",
            op.assignments(target, quote, ""),
            key_matches(target, quote, &table)
        ),
        Action::Delete => format!(
            "{with} DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM w WHERE {})",
            key_matches(target, quote, &table)
        ),
    }
}

fn bind<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    cell: &Cell,
) -> Query<'q, Sqlite, SqliteArguments> {
    match cell.clone() {
        Cell::Null => query.bind(None::<String>),
        Cell::Bool(b) => query.bind(b),
        Cell::Int(n) => query.bind(n),
        Cell::Float(f) => query.bind(f),
        Cell::Decimal(s) | Cell::Text(s) => query.bind(s),
        Cell::Bytes(b) => query.bind(b),
        Cell::Date(d) => query.bind(d.format("%Y-%m-%d").to_string()),
        Cell::Time(t) => query.bind(t.format("%H:%M:%S%.f").to_string()),
        Cell::Timestamp(t) => query.bind(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
        Cell::TimestampTz(t) => query.bind(t.format("%Y-%m-%d %H:%M:%S%.f+00:00").to_string()),
    }
}
