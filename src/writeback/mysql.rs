//! MySQL/MariaDB writeback: multi-row statements over a derived table of bound rows
//! (`SELECT ? AS k0, ? AS v0 UNION ALL SELECT ?, ?`), one transaction per batch, at most 65,535
//! placeholders a statement. Inserts skip keys that already exist, so a replay writes nothing
//! twice; updates join on the key and set only the changed columns.
//!
//! When no index of the table starts with the first match column, each batch would scan the
//! table; instead, if the table has a primary key, every destination key is read once with its
//! row's primary key into an indexed temporary key map when the writer starts, and batches find
//! their rows through it (one pass over the table per run). A table without a primary key keeps
//! the scans (`recon check` says so).

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
    /// The destination's primary key columns, when batches find rows through the key map.
    keymap: Option<Vec<String>>,
    /// Destination columns of a floating type (`FLOAT`, `DOUBLE`): they store -0 as 0.
    floats: Vec<String>,
}

/// The temporary key map (a session's temporary table hides nothing of the user's: recon names
/// the destination with its database when it is qualified, and the map is looked up unqualified
/// only by recon's own statements).
const KEYMAP: &str = "`recon_keymap`";

fn q(name: &str) -> String {
    quote_in(Dialect::Mysql, name)
}

impl Writer {
    pub fn floats(&self) -> &[String] {
        &self.floats
    }

    pub async fn connect(endpoint: &Endpoint, url: &str, target: &Target) -> Result<Writer> {
        let connect_error = |source| Error::Connect {
            side: endpoint.side,
            url: endpoint.location.display(),
            source,
        };
        let options: MySqlConnectOptions = url.parse().map_err(connect_error)?;
        let mut conn = crate::connect::within(endpoint.io_timeout, options.connect())
            .await
            .map_err(connect_error)?;
        let preparing = |e: sqlx::Error| Error::Writeback {
            what: format!("preparing to write `{}`", target.table),
            source: Box::new(e),
        };
        let (schema, table) = crate::sql::schema_and_table(&target.table);
        let floats: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND TABLE_NAME = ?
               AND DATA_TYPE IN ('float', 'double', 'real')",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(&mut conn)
        .await
        .map_err(preparing)?;
        let keymap = match key_map_columns(&mut conn, target)
            .await
            .map_err(preparing)?
        {
            None => None,
            Some((primary, text_keys)) => {
                let (keys, key_names) = target.staged_keys(q);
                let indexed: Vec<String> = key_names
                    .iter()
                    .zip(&text_keys)
                    .map(|(n, text)| {
                        if *text {
                            format!("{n}(255)")
                        } else {
                            n.clone()
                        }
                    })
                    .collect();
                let primaries: Vec<String> = primary
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("{} AS p{i}", q(p)))
                    .collect();
                let create = format!(
                    "CREATE TEMPORARY TABLE {KEYMAP} (INDEX ({})) ENGINE = InnoDB AS SELECT {}, {} FROM {}",
                    indexed.join(", "),
                    keys.join(", "),
                    primaries.join(", "),
                    quote_table(Dialect::Mysql, &target.table)
                );
                sqlx::raw_sql(AssertSqlSafe(create))
                    .execute(&mut conn)
                    .await
                    .map_err(preparing)?;
                Some(primary)
            }
        };
        Ok(Writer {
            conn,
            keymap,
            floats,
        })
    }

    pub async fn write(&mut self, target: &Target, op: &Op<'_>) -> Result<(), WriteError> {
        let what = op.what(target);
        let keymap = self.keymap.as_deref();
        let mut query = sqlx::query(AssertSqlSafe(statement(target, op, keymap)));
        for change in op.rows {
            for cell in op.cells(change) {
                query = bind(query, cell);
            }
        }
        let mut tx = self.conn.begin().await.map_err(|e| classify(&what, e))?;
        let mut checked = match single_matches(&mut tx, target, op, keymap.is_some()).await {
            Err(e) => Err(classify(&what, e)),
            Ok(false) => Err(WriteError::Mismatch(0)),
            Ok(true) => match query.execute(&mut *tx).await {
                Ok(done) => expect_rows(done.rows_affected(), op),
                Err(e) => Err(classify(&what, e)),
            },
        };
        // Deleted keys leave the key map too, so that an insert of a key equal to one of them
        // under the collation (deletes are written first) is not taken for an existing row.
        if checked.is_ok() && keymap.is_some() && op.action == Action::Delete {
            let forget = format!(
                "DELETE m FROM {KEYMAP} AS m JOIN ({}) AS w ON {}",
                rows(target, op, false),
                staged_matches(target, "m", "w")
            );
            let mut query = sqlx::query(AssertSqlSafe(forget));
            for change in op.rows {
                for cell in op.cells(change) {
                    query = bind(query, cell);
                }
            }
            checked = query
                .execute(&mut *tx)
                .await
                .map(|_| ())
                .map_err(|e| classify(&what, e));
        }
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
    keymap: bool,
) -> std::result::Result<bool, sqlx::Error> {
    if op.action == Action::Insert {
        return Ok(true);
    }
    let derived = rows(target, op, true);
    let (relation, on, first) = if keymap {
        (
            KEYMAP.to_string(),
            staged_matches(target, "d", "w"),
            "k0".into(),
        )
    } else {
        (
            quote_table(Dialect::Mysql, &target.table),
            key_matches(target, q, "d"),
            q(&target.keys[0]),
        )
    };
    let check = format!(
        "SELECT count(*) FROM (SELECT w.r FROM ({derived}) AS w LEFT JOIN {relation} AS d ON {on} GROUP BY w.r HAVING count(d.{first}) <> 1) AS bad"
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
pub fn unstorable(
    target: &Target,
    op: &Op<'_>,
    change: &Change,
    floats: &[String],
) -> Option<String> {
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
            // A floating column would store 0: the sign is lost (a decimal has no -0 to lose).
            Cell::Float(f) if *f == 0.0 && f.is_sign_negative() && floats.contains(column) => {
                "-0 (a FLOAT or DOUBLE column stores it as 0)"
            }
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

/// `m.k0 = w.k0 AND …`: the key map's keys (`alias`) against the staged ones (`staged`).
fn staged_matches(target: &Target, alias: &str, staged: &str) -> String {
    let parts: Vec<String> = (0..target.keys.len())
        .map(|i| format!("{alias}.k{i} = {staged}.k{i}"))
        .collect();
    parts.join(" AND ")
}

/// The batch's statement (updates and deletes run only after [`single_matches`]). With a key
/// map (`primary`: the table's primary key), rows are found through it and then by primary key.
fn statement(target: &Target, op: &Op<'_>, primary: Option<&[String]>) -> String {
    let table = quote_table(Dialect::Mysql, &target.table);
    let rows = rows(target, op, false);
    let Some(primary) = primary else {
        let matches = key_matches(target, q, "d");
        return match op.action {
            Action::Insert => format!(
                "INSERT INTO {table} ({}) SELECT w.* FROM ({rows}) AS w WHERE NOT EXISTS (SELECT 1 FROM {table} AS d WHERE {matches})",
                op.destination_names(target, q).join(", ")
            ),
            Action::Update => format!(
                "UPDATE {table} AS d JOIN ({rows}) AS w ON {matches} SET {}",
                op.assignments(target, q, "d.")
            ),
            Action::Delete => {
                format!("DELETE d FROM {table} AS d JOIN ({rows}) AS w ON {matches}")
            }
        };
    };
    let picked: Vec<String> = (0..primary.len())
        .map(|i| format!("m.p{i} AS recon_p{i}"))
        .collect();
    let by_primary: Vec<String> = primary
        .iter()
        .enumerate()
        .map(|(i, p)| format!("d.{} = w.recon_p{i}", q(p)))
        .collect();
    let found = format!(
        "(SELECT {}, s.* FROM ({rows}) AS s JOIN {KEYMAP} AS m ON {}) AS w ON {}",
        picked.join(", "),
        staged_matches(target, "m", "s"),
        by_primary.join(" AND ")
    );
    match op.action {
        Action::Insert => format!(
            "INSERT INTO {table} ({}) SELECT w.* FROM ({rows}) AS w WHERE NOT EXISTS (SELECT 1 FROM {KEYMAP} AS m WHERE {})",
            op.destination_names(target, q).join(", "),
            staged_matches(target, "m", "w")
        ),
        Action::Update => format!(
            "UPDATE {table} AS d JOIN {found} SET {}",
            op.assignments(target, q, "d.")
        ),
        Action::Delete => format!("DELETE d FROM {table} AS d JOIN {found}"),
    }
}

/// When batches should find rows through a key map: no index of the table starts with the first
/// match column, and the table has a primary key. Returns the primary key's columns and, per
/// match column, whether it is a text or blob column (indexed by a 255-character prefix).
async fn key_map_columns(
    conn: &mut MySqlConnection,
    target: &Target,
) -> std::result::Result<Option<(Vec<String>, Vec<bool>)>, sqlx::Error> {
    // `db.table` names its database; a bare name is in the connection's.
    let (schema, table) = &crate::sql::schema_and_table(&target.table);
    let indexed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.STATISTICS
           WHERE TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND TABLE_NAME = ?
             AND COLUMN_NAME = ? AND SEQ_IN_INDEX = 1)",
    )
    .bind(schema)
    .bind(table)
    .bind(&target.keys[0])
    .fetch_one(&mut *conn)
    .await?;
    if indexed {
        return Ok(None);
    }
    let primary: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE
         WHERE TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND TABLE_NAME = ?
           AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    if primary.is_empty() {
        return Ok(None);
    }
    let mut text = Vec::with_capacity(target.keys.len());
    for key in &target.keys {
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT CAST(DATA_TYPE AS CHAR) FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND TABLE_NAME = ?
               AND COLUMN_NAME = ?",
        )
        .bind(schema)
        .bind(table)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        let kind = kind.unwrap_or_default().to_ascii_lowercase();
        text.push(kind.ends_with("text") || kind.ends_with("blob"));
    }
    Ok(Some((primary, text)))
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
        // As text: a bound DATETIME gives the batch's derived table a column without fraction
        // digits (MariaDB types it from the parameter), so microseconds were lost; text is
        // parsed by the destination column itself, at its own precision.
        Cell::Time(t) => query.bind(t.format("%H:%M:%S%.6f").to_string()),
        Cell::Timestamp(t) => query.bind(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
        Cell::TimestampTz(t) => query.bind(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
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
