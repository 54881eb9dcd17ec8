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

use super::{Op, Target, WriteError, classify, expect_rows, key_matches};
use crate::changeset::{Action, Cell, Change};
use crate::config::Endpoint;
use crate::error::{Error, Result};
use crate::sql::{Dialect, quote, quote_table};

/// The staging table, always named with its schema (`pg_temp`) so that no table of the user's,
/// whatever its name, is mistaken for it; the destination table is named with its schema too.
const TEMP: &str = "pg_temp.recon_staging";
/// Every destination key with its row's `ctid`, read in one pass when the writer starts and
/// indexed, so each batch finds its rows by index whatever indexes the table has.
const KEYMAP: &str = "pg_temp.recon_keymap";

pub struct Writer {
    conn: PgConnection,
    /// The destination table, schema-qualified as PostgreSQL resolved it.
    table: String,
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
        let table = resolve_table(&mut conn, &target.table).await?;
        let (keys, key_names) = target.staged_keys(quote);
        let create = format!(
            "SET TimeZone = 'UTC'; CREATE TEMP TABLE {TEMP} AS SELECT {} FROM {table} WITH NO DATA;
             CREATE TEMP TABLE recon_keymap AS SELECT ctid AS rid, {} FROM {table};
             CREATE INDEX ON {KEYMAP} ({}); ANALYZE {KEYMAP}",
            columns.join(", "),
            keys.join(", "),
            key_names.join(", ")
        );
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&mut conn)
            .await
            .map_err(|e| Error::Writeback {
                what: format!("preparing to write `{}`", target.table),
                source: Box::new(e),
            })?;
        Ok(Writer { conn, table })
    }

    pub async fn write(&mut self, target: &Target, op: &Op<'_>) -> Result<(), WriteError> {
        let statement = statement(&self.table, target, op);
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
            Ok::<u64, sqlx::Error>(tx.execute(AssertSqlSafe(statement)).await?.rows_affected())
        }
        .await;
        let checked = result
            .map_err(|e| classify(&what, e))
            .and_then(|n| expect_rows(n, op));
        match checked {
            Ok(()) => tx.commit().await.map_err(|e| classify(&what, e)),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// How many destination rows the change's key matches (the key is staged like a batch).
    pub async fn matches(&mut self, target: &Target, change: &Change) -> Result<u64, WriteError> {
        let what = format!("looking up a key in `{}`", target.table);
        let keys = (0..target.keys.len()).map(|i| format!("k{i}"));
        let copy = format!(
            "COPY {TEMP} ({}) FROM STDIN (FORMAT csv)",
            keys.collect::<Vec<_>>().join(", ")
        );
        let row: Vec<String> = change.cells.key.iter().map(field).collect();
        let count = format!(
            "SELECT count(*) FROM {} d JOIN {TEMP} w ON {}",
            self.table,
            key_matches(target, quote, "d")
        );
        let mut tx = self.conn.begin().await.map_err(|e| classify(&what, e))?;
        let result = async {
            tx.execute(AssertSqlSafe(format!("TRUNCATE {TEMP}")))
                .await?;
            let mut copy_in = tx.copy_in_raw(&copy).await?;
            copy_in
                .send(format!("{}\n", row.join(",")).into_bytes())
                .await?;
            copy_in.finish().await?;
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(count))
                .fetch_one(&mut *tx)
                .await
        }
        .await;
        let _ = tx.rollback().await;
        result.map(|n| n as u64).map_err(|e| classify(&what, e))
    }
}

/// The destination table as PostgreSQL resolves it now, schema-qualified and quoted, so that
/// statements never reach another object of the same name (the staging table included).
async fn resolve_table(conn: &mut PgConnection, table: &str) -> Result<String> {
    let resolved: Option<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
    )
    .bind(quote_table(Dialect::Standard, table))
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| Error::Writeback {
        what: format!("looking up the destination table `{table}`"),
        source: Box::new(e),
    })?;
    resolved.ok_or_else(|| Error::Writeback {
        what: format!("looking up the destination table `{table}`"),
        source: "the table does not exist (or this user cannot see it)".into(),
    })
}

/// The batch's statement. Rows are found through the key map (keys compared under the
/// destination's own collation); updates and deletes touch a row only when its staged key
/// matches exactly one, so a key that the collation finds twice changes nothing (the row count
/// then tells, see [`expect_rows`]).
fn statement(table: &str, target: &Target, op: &Op<'_>) -> String {
    let on = |a: &str, b: &str| {
        let parts: Vec<String> = (0..target.keys.len())
            .map(|i| format!("{a}.k{i} = {b}.k{i}"))
            .collect();
        parts.join(" AND ")
    };
    let found = format!(
        "(SELECT m.rid, s.* FROM {TEMP} s JOIN {KEYMAP} m ON {} WHERE (SELECT count(*) FROM {KEYMAP} m2 WHERE {}) = 1)",
        on("m", "s"),
        on("m2", "s")
    );
    match op.action {
        Action::Insert => {
            let staged: Vec<String> = op
                .staged_names(target)
                .iter()
                .map(|n| format!("w.{n}"))
                .collect();
            format!(
                "INSERT INTO {table} ({}) SELECT {} FROM {TEMP} w WHERE NOT EXISTS (SELECT 1 FROM {KEYMAP} m WHERE {})",
                op.destination_names(target, quote).join(", "),
                staged.join(", "),
                on("m", "w")
            )
        }
        Action::Update => format!(
            "UPDATE {table} AS d SET {} FROM {found} AS w WHERE d.ctid = w.rid",
            op.assignments(target, quote, "")
        ),
        Action::Delete => {
            format!("DELETE FROM {table} AS d USING {found} AS w WHERE d.ctid = w.rid")
        }
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
        Cell::Infinity(negative) => if *negative { "-infinity" } else { "infinity" }.into(),
    }
}
