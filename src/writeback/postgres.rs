//! PostgreSQL writeback: each batch is copied (`COPY … FROM STDIN`, CSV) into a temporary table
//! created from the destination table itself — so every column has the destination's own type and
//! PostgreSQL parses each value with that type's input function, enums, intervals and arrays
//! included — and then applied with one set-based statement, all in one transaction.
//!
//! Why CSV rather than binary COPY: binary COPY needs an encoder per PostgreSQL type and cannot
//! carry the types recon reads as text (enums, intervals, arrays); CSV goes through each type's
//! own parser. benches/apply_pg.sh measures it.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};

use super::{Op, Target, WriteError, classify, key_matches};
use crate::changeset::{Action, Cell};
use crate::config::Endpoint;
use crate::error::{Error, Result};
use crate::sql::{Dialect, quote, quote_table};

const TEMP: &str = "recon_w";

pub struct Writer {
    conn: PgConnection,
}

impl Writer {
    pub async fn connect(endpoint: &Endpoint, url: &str, target: &Target) -> Result<Writer> {
        let connect_error = |source| Error::Connect {
            side: endpoint.side,
            url: endpoint.location.display(),
            source,
        };
        let options = crate::connect::pg_options(url).map_err(connect_error)?;
        let mut conn = options
            .application_name("recon")
            .connect()
            .await
            .map_err(connect_error)?;
        let columns: Vec<String> = target
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS k{i}", quote(k)))
            .chain(
                target
                    .compared
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{} AS v{i}", quote(c))),
            )
            .collect();
        let create = format!(
            "SET TimeZone = 'UTC'; CREATE TEMP TABLE {TEMP} AS SELECT {} FROM {} WITH NO DATA",
            columns.join(", "),
            quote_table(Dialect::Standard, &target.table)
        );
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&mut conn)
            .await
            .map_err(|e| Error::Writeback {
                what: format!("preparing to write `{}`", target.table),
                source: Box::new(e),
            })?;
        Ok(Writer { conn })
    }

    pub async fn write(&mut self, target: &Target, op: &Op<'_>) -> Result<(), WriteError> {
        let statement = statement(target, op);
        let names = op.staged_names(target).join(", ");
        let copy = format!("COPY {TEMP} ({names}) FROM STDIN (FORMAT csv)");
        let data = csv(op);
        let what = op.what(target);
        let mut tx = self.conn.begin().await.map_err(|e| classify(&what, e))?;
        let result = async {
            tx.execute(AssertSqlSafe(format!("TRUNCATE {TEMP}")))
                .await?;
            let mut copy_in = tx.copy_in_raw(&copy).await?;
            if let Err(e) = copy_in.send(data.into_bytes()).await {
                let _ = copy_in.abort("recon: send failed").await;
                return Err(e);
            }
            copy_in.finish().await?;
            tx.execute(AssertSqlSafe(statement)).await?;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        match result {
            Ok(()) => tx.commit().await.map_err(|e| classify(&what, e)),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(classify(&what, e))
            }
        }
    }
}

fn statement(target: &Target, op: &Op<'_>) -> String {
    let table = quote_table(Dialect::Standard, &target.table);
    let matches = key_matches(target, quote, "d");
    match op.action {
        Action::Insert => {
            let staged: Vec<String> = op
                .staged_names(target)
                .iter()
                .map(|n| format!("w.{n}"))
                .collect();
            format!(
                "INSERT INTO {table} ({}) SELECT {} FROM {TEMP} w WHERE NOT EXISTS (SELECT 1 FROM {table} d WHERE {matches})",
                op.destination_names(target, quote).join(", "),
                staged.join(", ")
            )
        }
        Action::Update => format!(
            "UPDATE {table} AS d SET {} FROM {TEMP} w WHERE {matches}",
            op.assignments(target, quote, "")
        ),
        Action::Delete => format!("DELETE FROM {table} AS d USING {TEMP} w WHERE {matches}"),
    }
}

/// The batch as CSV: key cells, then the written columns' source cells. An unquoted empty field
/// is NULL; text is always quoted, so an empty string stays an empty string.
fn csv(op: &Op<'_>) -> String {
    let mut out = String::new();
    for change in op.rows {
        let fields: Vec<String> = op.cells(change).map(field).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn field(cell: &Cell) -> String {
    match cell {
        Cell::Null => String::new(),
        Cell::Bool(b) => if *b { "t" } else { "f" }.into(),
        Cell::Int(n) => n.to_string(),
        Cell::Float(f) if f.is_nan() => "NaN".into(),
        Cell::Float(f) if f.is_infinite() => if *f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        Cell::Float(f) => f.to_string(),
        Cell::Decimal(d) => d.clone(),
        Cell::Text(s) => quoted(s),
        Cell::Bytes(b) => quoted(&format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
        Cell::Date(d) => d.format("%Y-%m-%d").to_string(),
        Cell::Time(t) => t.format("%H:%M:%S%.6f").to_string(),
        Cell::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        Cell::TimestampTz(t) => t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
    }
}
