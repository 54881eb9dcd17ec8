//! PostgreSQL writeback: each batch is one statement that carries its rows as one text array per
//! column (`unnest($1::text[], …)`), casts each value to the destination column's type — so
//! PostgreSQL parses it with that type's own input function, enums, intervals and arrays included
//! (the cast is to the type without its modifier: the assignment to the column then checks length
//! and precision instead of cutting) — and applies them set-based, in its own transaction.
//!
//! Why not `COPY FROM STDIN` into a staging table, as before: it took two client writes per batch
//! (the data, then `CopyDone`), and without `TCP_NODELAY` on the driver's socket the second waited
//! for the server's delayed acknowledgement — 40 ms per batch whatever its size; and an
//! `INSERT … VALUES` list costs the server 6 µs a row to parse. Arrays are bound in binary and
//! cost neither (benches/run.sh).
//!
//! Rows are found by key. When an index of the destination starts with the first match column the
//! table is probed directly; otherwise every destination key is read once, with its row's `ctid`,
//! into an indexed key map when the writer starts, so a run costs one pass over the table whatever
//! indexes it has.

use std::collections::HashMap;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{Op, Target, WriteError, classify, expect_rows};
use crate::changeset::{Action, Cell, Change};
use crate::config::Endpoint;
use crate::error::{Error, Result};
use crate::sql::{Dialect, quote, quote_table};

/// Every destination key with its row's `ctid`, read in one pass when the writer starts and
/// indexed, so each batch finds its rows by index whatever indexes the table has. Always named
/// with its schema (`pg_temp`) so that no table of the user's is mistaken for it; the destination
/// table is named with its schema too, so the batch's name (a CTE, `recon_batch`) hides nothing.
const KEYMAP: &str = "pg_temp.recon_keymap";
const BATCH: &str = "recon_batch";

pub struct Writer {
    conn: PgConnection,
    /// The destination table, schema-qualified as PostgreSQL resolved it.
    table: String,
    lookup: Lookup,
    /// Each key column's type, then each compared column's (without modifiers).
    key_types: Vec<String>,
    compared_types: Vec<String>,
}

/// Where a batch finds destination rows by key: the destination table itself when an index
/// leads with the first match column, else the key map.
struct Lookup {
    relation: String,
    /// The row id column of `relation`: `ctid` of the table, or the key map's copy of it.
    rid: &'static str,
    /// The key columns as `relation` names them, quoted.
    keys: Vec<String>,
    /// A unique index of the destination on match columns (under their own collations) lets no
    /// key match two rows, so statements need not count the matches.
    unique: bool,
}

impl Lookup {
    /// `m."code" = s.k0 AND …`
    fn on(&self, alias: &str, staged: &str) -> String {
        let parts: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{alias}.{k} = {staged}.k{i}"))
            .collect();
        parts.join(" AND ")
    }
}

impl Writer {
    pub async fn connect(endpoint: &Endpoint, url: &str, target: &Target) -> Result<Writer> {
        let connect_error = |source| Error::Connect {
            side: endpoint.side,
            url: endpoint.location.display(),
            source,
        };
        let options = crate::connect::pg_options(url).map_err(connect_error)?;
        let options = options.application_name("recon");
        let mut conn = crate::connect::within(endpoint.io_timeout, options.connect())
            .await
            .map_err(connect_error)?;
        let table = resolve_table(&mut conn, &target.table).await?;
        let preparing = |e: sqlx::Error| Error::Writeback {
            what: format!("preparing to write `{}`", target.table),
            source: Box::new(e),
        };
        // Each column's type without its modifier — but `character` alone means `char(1)` and
        // `bit` alone `bit(1)`, so those are cast to their unbounded kin and the assignment to
        // the column pads or refuses as the column says.
        let types: HashMap<String, String> = sqlx::query_as(
            "SELECT a.attname::text, CASE t.typname WHEN 'bpchar' THEN 'bpchar' WHEN '_bpchar' THEN 'bpchar[]'
                      WHEN 'bit' THEN 'varbit' WHEN '_bit' THEN 'varbit[]'
                      ELSE format_type(a.atttypid, NULL) END
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(&table)
        .fetch_all(&mut conn)
        .await
        .map_err(preparing)?
        .into_iter()
        .collect();
        let type_of = |column: &String| {
            types.get(column).cloned().ok_or_else(|| Error::Writeback {
                what: format!("preparing to write `{}`", target.table),
                source: format!("the table has no column `{column}`").into(),
            })
        };
        let key_types = target.keys.iter().map(type_of).collect::<Result<_>>()?;
        let compared_types = target.compared.iter().map(type_of).collect::<Result<_>>()?;
        let (indexed, unique) = key_indexes(&mut conn, &table, &target.keys)
            .await
            .map_err(preparing)?;
        let mut prepare = "SET TimeZone = 'UTC';".to_string();
        let lookup = if indexed {
            Lookup {
                relation: table.clone(),
                rid: "ctid",
                keys: target.keys.iter().map(|k| quote(k)).collect(),
                unique,
            }
        } else {
            let (keys, key_names) = target.staged_keys(quote);
            prepare.push_str(&format!(
                "CREATE TEMP TABLE recon_keymap AS SELECT ctid AS rid, {} FROM {table};
                 CREATE INDEX ON {KEYMAP} ({}); ANALYZE {KEYMAP}",
                keys.join(", "),
                key_names.join(", ")
            ));
            Lookup {
                relation: KEYMAP.into(),
                rid: "rid",
                keys: key_names,
                unique: false,
            }
        };
        sqlx::raw_sql(AssertSqlSafe(prepare))
            .execute(&mut conn)
            .await
            .map_err(preparing)?;
        Ok(Writer {
            conn,
            table,
            lookup,
            key_types,
            compared_types,
        })
    }

    /// Whether more writers may share the work: batches then find rows through the table's own
    /// index (a key map is a temporary table, seen by one session only).
    pub fn shareable(&self) -> bool {
        self.lookup.relation == self.table
    }

    /// Why this row cannot be written as the source has it: a NaN or infinite float into a
    /// `numeric` column, which PostgreSQL would store but recon could not read back exactly
    /// (every later plan would stop at it).
    pub fn unstorable(&self, target: &Target, op: &Op<'_>, change: &Change) -> Option<String> {
        let types = self
            .key_types
            .iter()
            .chain(op.written().iter().map(|i| &self.compared_types[*i]));
        let columns = target
            .keys
            .iter()
            .chain(op.written().iter().map(|i| &target.compared[*i]));
        for ((cell, kind), column) in op.cells(change).zip(types).zip(columns) {
            if let Cell::Float(f) = cell
                && !f.is_finite()
                && kind.starts_with("numeric")
            {
                return Some(format!(
                    "{f} into `{column}` (numeric): PostgreSQL would store it, but no exact number stands for it, so recon refuses to write it; filter it in the source `query` or use a float column"
                ));
            }
            if let Cell::Text(t) = cell
                && t.contains('\0')
            {
                return Some(format!(
                    "the value for `{column}` holds a NUL character (U+0000), which PostgreSQL text cannot store; remove it in the source (or its `query`), or use a bytea column"
                ));
            }
        }
        None
    }

    /// `WITH recon_batch AS (SELECT u.k0::bigint AS k0, … FROM unnest($1::text[], …) AS u(k0, …))`
    /// for the key columns and the compared columns `written`.
    fn batch(&self, written: &[usize]) -> String {
        let columns: Vec<(String, &String)> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("k{i}"), t))
            .chain(
                written
                    .iter()
                    .map(|i| (format!("v{i}"), &self.compared_types[*i])),
            )
            .collect();
        let casts: Vec<String> = columns
            .iter()
            .map(|(n, t)| format!("u.{n}::{t} AS {n}"))
            .collect();
        let arrays: Vec<String> = (1..=columns.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "WITH {BATCH} AS (SELECT {} FROM unnest({}) AS u({})) ",
            casts.join(", "),
            arrays.join(", "),
            names.join(", ")
        )
    }

    pub async fn write(&mut self, target: &Target, op: &Op<'_>) -> Result<(), WriteError> {
        let sql = self.batch(op.written()) + &statement(&self.table, &self.lookup, target, op);
        let width = target.keys.len() + op.written().len();
        let mut columns: Vec<TextArray> = (0..width).map(|_| TextArray::default()).collect();
        for change in op.rows {
            for (column, cell) in columns.iter_mut().zip(op.cells(change)) {
                column.push(cell);
            }
        }
        let what = op.what(target);
        let mut tx = self.conn.begin().await.map_err(|e| classify(&what, e))?;
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for column in columns {
            query = query.bind(column);
        }
        let result = query.execute(&mut *tx).await.map(|r| r.rows_affected());
        let checked = result
            .map_err(|e| classify(&what, e))
            .and_then(|n| expect_rows(n, op));
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

    /// How many destination rows the change's key matches, under the destination's collation.
    pub async fn matches(&mut self, target: &Target, change: &Change) -> Result<u64, WriteError> {
        let what = format!("looking up a key in `{}`", target.table);
        let count = format!(
            "{}SELECT count(*) FROM {} d JOIN {BATCH} w ON {}",
            self.batch(&[]),
            self.table,
            super::key_matches(target, quote, "d")
        );
        let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(count));
        for cell in &change.cells.key {
            query = query.bind(vec![text(cell)]);
        }
        let result = query.fetch_one(&mut self.conn).await;
        result.map(|n| n as u64).map_err(|e| classify(&what, e))
    }
}

/// Whether a valid, non-partial btree or hash index of `table` starts with the first match
/// column, and whether a unique one covers only match columns, each under its column's collation.
async fn key_indexes(
    conn: &mut PgConnection,
    table: &str,
    keys: &[String],
) -> std::result::Result<(bool, bool), sqlx::Error> {
    sqlx::query_as::<_, (bool, bool)>(
        "SELECT EXISTS (SELECT 1 FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = $1::regclass AND a.attname = $2[1] AND i.indisvalid
           AND i.indpred IS NULL AND am.amname IN ('btree', 'hash')),
         EXISTS (SELECT 1 FROM pg_index i
         WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indisvalid
           AND i.indpred IS NULL AND i.indexprs IS NULL
           AND NOT EXISTS (SELECT 1 FROM generate_series(0, i.indnkeyatts - 1) n
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[n]
             WHERE a.attname IS NULL OR NOT (a.attname = ANY($2))
               OR i.indcollation[n] <> a.attcollation))",
    )
    .bind(table)
    .bind(keys)
    .fetch_one(conn)
    .await
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

/// The batch's statement. Rows are found through the lookup (keys compared under the
/// destination's own collation); updates and deletes touch a row only when its staged key
/// matches exactly one, so a key that the collation finds twice changes nothing (the row count
/// then tells, see [`expect_rows`]).
fn statement(table: &str, lookup: &Lookup, target: &Target, op: &Op<'_>) -> String {
    let (relation, rid) = (&lookup.relation, lookup.rid);
    let single = if lookup.unique {
        String::new()
    } else {
        format!(
            " WHERE (SELECT count(*) FROM {relation} m2 WHERE {}) = 1",
            lookup.on("m2", "s")
        )
    };
    let found = format!(
        "(SELECT m.{rid} AS rid, s.* FROM {BATCH} s JOIN {relation} m ON {}{single})",
        lookup.on("m", "s"),
    );
    // A unique index on the match columns, on the table itself: each row is found by one probe
    // of it, not by a probe and then a fetch by `ctid` (batches of 1,000 updates of a 1M-row
    // table: the plan loses its Tid Scan, median 4.65 against 5.67 ms on the server, 24 each).
    let direct = lookup.unique && relation == table;
    match op.action {
        Action::Update if direct => format!(
            "UPDATE {table} AS d SET {} FROM {BATCH} AS w WHERE {}",
            op.assignments(target, quote, ""),
            lookup.on("d", "w")
        ),
        Action::Delete if direct => format!(
            "DELETE FROM {table} AS d USING {BATCH} AS w WHERE {}",
            lookup.on("d", "w")
        ),
        Action::Insert => {
            let staged: Vec<String> = op
                .staged_names(target)
                .iter()
                .map(|n| format!("w.{n}"))
                .collect();
            format!(
                "INSERT INTO {table} ({}) SELECT {} FROM {BATCH} w WHERE NOT EXISTS (SELECT 1 FROM {relation} m WHERE {})",
                op.destination_names(target, quote).join(", "),
                staged.join(", "),
                lookup.on("m", "w")
            )
        }
        Action::Update => format!(
            "UPDATE {table} AS d SET {} FROM {found} AS w WHERE d.ctid = w.rid",
            op.assignments(target, quote, "")
        ),
        // Deleted rows leave the key map too, so that an insert of a key equal to one of them
        // under the collation (deletes are written first) is not taken for an existing row.
        Action::Delete if relation == KEYMAP => format!(
            ", recon_gone AS (DELETE FROM {table} AS d USING {found} AS w WHERE d.ctid = w.rid RETURNING d.ctid AS rid)
             DELETE FROM {KEYMAP} AS m USING recon_gone AS g WHERE m.rid = g.rid"
        ),
        Action::Delete => {
            format!("DELETE FROM {table} AS d USING {found} AS w WHERE d.ctid = w.rid")
        }
    }
}

/// One value as the text its column's input function reads (`None`: NULL). A NUL character
/// makes PostgreSQL refuse the batch, and then that row alone (text cannot hold it).
/// `YYYY-MM-DD`: years past 9999 without chrono's `+` sign, which PostgreSQL does not read.
/// (Written field by field: chrono's `format` parses its pattern for every value.)
fn write_date(out: &mut String, d: &chrono::NaiveDate) {
    use chrono::Datelike;
    use std::fmt::Write;
    let _ = write!(out, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day());
}

/// `HH:MM:SS.ffffff`, as chrono's `%H:%M:%S%.6f` writes it (a leap second as second 60).
fn write_time(out: &mut String, t: &chrono::NaiveTime) {
    use chrono::Timelike;
    use std::fmt::Write;
    let nanos = t.nanosecond();
    let leap = u32::from(nanos >= 1_000_000_000);
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:06}",
        t.hour(),
        t.minute(),
        t.second() + leap,
        (nanos % 1_000_000_000) / 1_000
    );
}

/// A timestamp as `YYYY-MM-DD HH:MM:SS.ffffff`, then `zone`.
fn write_timestamp(out: &mut String, t: &chrono::NaiveDateTime, zone: &str) {
    write_date(out, &t.date());
    out.push(' ');
    write_time(out, &t.time());
    out.push_str(zone);
}

fn text(cell: &Cell) -> Option<String> {
    let mut out = String::new();
    write_text(&mut out, cell).then_some(out)
}

/// Write `cell`'s text to `out`; `false` (nothing written) for NULL.
fn write_text(out: &mut String, cell: &Cell) -> bool {
    use std::fmt::Write;
    match cell {
        Cell::Null => return false,
        Cell::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Cell::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Cell::Float(f) if f.is_nan() => out.push_str("NaN"),
        Cell::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Cell::Float(f) => {
            let _ = write!(out, "{f}");
        }
        Cell::Decimal(d) | Cell::Text(d) => out.push_str(d),
        Cell::Bytes(b) => {
            out.push_str("\\x");
            for x in b {
                let _ = write!(out, "{x:02x}");
            }
        }
        Cell::Date(d) => write_date(out, d),
        Cell::Time(t) => write_time(out, t),
        Cell::Timestamp(t) => write_timestamp(out, t, ""),
        Cell::TimestampTz(t) => write_timestamp(out, &t.naive_utc(), "+00"),
        Cell::Infinity(negative) => out.push_str(if *negative { "-infinity" } else { "infinity" }),
    }
    true
}

/// A batch's column as PostgreSQL's binary `text[]`, each value's text written into one buffer:
/// a `String` a value, then sqlx's copy of each into its own buffer, was a fifth of an initial
/// load's CPU (allocating, zeroing, copying).
#[derive(Default)]
struct TextArray {
    /// Each value: its length (-1: NULL), then its bytes.
    values: Vec<u8>,
    count: i32,
    /// A value's text while it is written (reused).
    scratch: String,
}

/// `text`'s type id, the array's element type.
const TEXT_OID: i32 = 25;

impl TextArray {
    fn push(&mut self, cell: &Cell) {
        self.count += 1;
        let text = match cell {
            Cell::Decimal(d) | Cell::Text(d) => Some(d.as_str()),
            _ => {
                self.scratch.clear();
                write_text(&mut self.scratch, cell).then_some(self.scratch.as_str())
            }
        };
        // A value too long for a length is refused by the server as the batch too large.
        let len = text.map_or(-1, |t| i32::try_from(t.len()).unwrap_or(i32::MAX));
        self.values.extend_from_slice(&len.to_be_bytes());
        self.values
            .extend_from_slice(text.map_or(&[][..], |t| t.as_bytes()));
    }
}

impl sqlx::Type<sqlx::Postgres> for TextArray {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Vec<String> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for TextArray {
    /// One dimension of `count` values from 1, no NULL flag (the server reads each length),
    /// `text` elements (PostgreSQL's `array_recv`).
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        for field in [1, 0, TEXT_OID, self.count, 1] {
            buf.extend_from_slice(&i32::to_be_bytes(field));
        }
        buf.extend_from_slice(&self.values);
        Ok(sqlx::encode::IsNull::No)
    }

    fn size_hint(&self) -> usize {
        20 + self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, NaiveTime};

    /// What PostgreSQL is sent for dates, times and timestamps, against chrono's patterns.
    #[test]
    fn temporal_text_is_what_chrono_writes_with_four_digit_years() {
        let dates = [
            (1, 1, 1),
            (1970, 1, 1),
            (2024, 2, 29),
            (9999, 12, 31),
            (10000, 1, 1),
            (-44, 3, 15),
        ]
        .map(|(y, m, d)| NaiveDate::from_ymd_opt(y, m, d).unwrap());
        let times = [
            NaiveTime::from_hms_opt(0, 0, 0).unwrap(),
            NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap(),
            NaiveTime::from_hms_micro_opt(12, 5, 7, 10).unwrap(),
            NaiveTime::from_hms_nano_opt(23, 59, 59, 1_000_500_000).unwrap(),
        ];
        for d in dates {
            let year = format!("{:04}-", d.year());
            assert_eq!(
                text(&Cell::Date(d)).unwrap(),
                year.clone() + &d.format("%m-%d").to_string()
            );
            for t in times {
                let at = d.and_time(t);
                let expected = year.clone() + &at.format("%m-%d %H:%M:%S%.6f").to_string();
                assert_eq!(text(&Cell::Timestamp(at)).unwrap(), expected);
                assert_eq!(
                    text(&Cell::TimestampTz(at.and_utc())).unwrap(),
                    expected + "+00"
                );
                assert_eq!(
                    text(&Cell::Time(t)).unwrap(),
                    t.format("%H:%M:%S%.6f").to_string()
                );
            }
        }
        assert_eq!(text(&Cell::Date(dates[5])).unwrap(), "-044-03-15");
        assert_eq!(text(&Cell::Time(times[3])).unwrap(), "23:59:60.000500");
    }
}
