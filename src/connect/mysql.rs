//! MySQL/MariaDB snapshots: a sqlx row stream cut into batches, each column decoded by its
//! declared type. `TIMESTAMP` is zoned (UTC, as sqlx sets the session zone to `+00:00`),
//! `DATETIME` is not; `DECIMAL` keeps its digits and scale; unsigned `BIGINT` becomes a
//! 20-digit decimal so no value wraps.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlRow};
use sqlx::{AssertSqlSafe, Column, ConnectOptions, Executor, Row, SqlSafeStr, Statement, TypeInfo};

use crate::config::Endpoint;
use crate::error::{Error, Result, read_error};
use crate::progress::RowCounter;
use crate::snapshot::{ColumnBuilder, batch};
use crate::sql::{Dialect, quote_in};
use crate::stage::Stager;
use crate::watermark::{Bound, ParamStyle, SourceRead};
use datafusion::arrow::array::*;
use datafusion::arrow::datatypes::i256;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Int,
    /// Unsigned up to `INT UNSIGNED`: read unsigned, fits an i64.
    UInt32,
    UInt,
    Float,
    Double,
    Decimal,
    Date,
    Datetime,
    Timestamp,
    Time,
    Text,
    Binary,
}

fn kind(type_name: &str) -> Option<Kind> {
    Some(match type_name {
        "BOOLEAN" => Kind::Bool,
        "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "YEAR" => Kind::Int,
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED" => {
            Kind::UInt32
        }
        "BIGINT UNSIGNED" => Kind::UInt,
        "FLOAT" => Kind::Float,
        "DOUBLE" => Kind::Double,
        "DECIMAL" => Kind::Decimal,
        "DATE" => Kind::Date,
        "DATETIME" => Kind::Datetime,
        "TIMESTAMP" => Kind::Timestamp,
        "TIME" => Kind::Time,
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "JSON" | "ENUM"
        | "SET" => Kind::Text,
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => Kind::Binary,
        _ => return None,
    })
}

fn builder(kind: Kind) -> ColumnBuilder {
    match kind {
        Kind::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
        Kind::Int | Kind::UInt32 => ColumnBuilder::Int64(Int64Builder::new()),
        Kind::UInt | Kind::Decimal => {
            ColumnBuilder::Decimal(crate::snapshot::Decimals::with_capacity(0))
        }
        Kind::Float => ColumnBuilder::Float32(Float32Builder::new()),
        Kind::Double => ColumnBuilder::Float64(Float64Builder::new()),
        Kind::Date => ColumnBuilder::Date(Date32Builder::new()),
        Kind::Datetime => ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new(), None),
        Kind::Timestamp => {
            ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new(), Some(Arc::from("UTC")))
        }
        Kind::Time => ColumnBuilder::Time(Time64MicrosecondBuilder::new()),
        Kind::Text => ColumnBuilder::Text(StringBuilder::new()),
        Kind::Binary => ColumnBuilder::Binary(BinaryBuilder::new()),
    }
}

pub async fn snapshot(
    endpoint: &Endpoint,
    url: &str,
    limit: Option<usize>,
    counter: &RowCounter,
    read: Option<&SourceRead>,
    out: &mut Stager,
) -> Result<()> {
    let side = endpoint.side;
    let connect_error = |source| Error::Connect {
        side,
        url: endpoint.location.display(),
        source,
    };
    let options: MySqlConnectOptions = url.parse().map_err(connect_error)?;
    let mut conn: MySqlConnection = super::within(endpoint.io_timeout, options.connect())
        .await
        .map_err(connect_error)?;
    let window = read.and_then(|r| r.window.as_ref());
    let (mut select, params) =
        super::state_params(&endpoint.relation, read, ParamStyle::Positional);
    if let Some(w) = window {
        select = format!(
            "SELECT * FROM ({select}) AS w WHERE w.{} >= ?",
            quote_in(Dialect::Mysql, &w.column)
        );
    }
    if let Some(n) = limit {
        select = format!("SELECT * FROM ({select}) AS q LIMIT {n}");
    }
    let described = (&mut conn)
        .prepare(AssertSqlSafe(select.clone()).into_sql_str())
        .await
        .map_err(|e| read_error(side, format!("preparing `{select}`"), e))?;
    let names: Vec<String> = described
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    // Text under a binary collation (`utf8mb4_bin`, and MariaDB's JSON, a LONGTEXT) carries the
    // BINARY flag, so the driver calls it a BLOB; the table's catalog says it is text.
    let text_columns = match &endpoint.relation {
        crate::config::Relation::Table(table) => character_columns(&mut conn, table)
            .await
            .map_err(|e| read_error(side, format!("reading the column types of `{table}`"), e))?,
        _ => Default::default(),
    };
    let mut kinds = Vec::new();
    for c in described.columns() {
        let name = c.type_info().name();
        let found = kind(name).ok_or_else(|| {
            read_error(side, format!("column `{}` has type {name}, which recon does not read; select `CAST({} AS CHAR)` in a `query`", c.name(), c.name()), "unsupported type")
        })?;
        kinds.push(match found {
            Kind::Binary if text_columns.contains(c.name()) => Kind::Text,
            other => other,
        });
    }
    let mut query = sqlx::query(AssertSqlSafe(select.clone()));
    for value in params {
        query = super::bind_json(query, value);
    }
    if let Some(w) = window {
        query = match &w.lower {
            Bound::Int(n) => query.bind(*n),
            Bound::Timestamp(t) => query.bind(*t),
            Bound::TimestampTz(t) => query.bind(*t),
            Bound::Date(d) => query.bind(*d),
        };
    }
    super::batched(
        query.fetch(&mut conn),
        endpoint.io_timeout,
        counter,
        |e| read_error(side, format!("reading `{select}`"), e),
        |rows| to_batch(&names, &kinds, rows),
        |e| read_error(side, "decoding rows", e),
        out,
    )
    .await
}

/// The columns of `table` that hold characters (a character set other than `binary`).
async fn character_columns(
    conn: &mut MySqlConnection,
    table: &str,
) -> std::result::Result<std::collections::HashSet<String>, sqlx::Error> {
    let (schema, table) = crate::sql::schema_and_table(table);
    sqlx::query_scalar::<_, String>(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND TABLE_NAME = ?
           AND CHARACTER_SET_NAME IS NOT NULL AND CHARACTER_SET_NAME <> 'binary'",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(conn)
    .await
    .map(|names| names.into_iter().collect())
}

fn to_batch(
    names: &[String],
    kinds: &[Kind],
    rows: &[MySqlRow],
) -> std::result::Result<
    datafusion::arrow::record_batch::RecordBatch,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let mut columns = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let mut b = builder(*kind);
        for row in rows {
            push(row, i, *kind, &mut b).map_err(|e| format!("column `{}`: {e}", names[i]))?;
        }
        columns.push(b);
    }
    Ok(batch(names, columns)?)
}

type DecodeResult = std::result::Result<(), sqlx::Error>;

fn push(row: &MySqlRow, i: usize, kind: Kind, b: &mut ColumnBuilder) -> DecodeResult {
    match (kind, b) {
        (Kind::Bool, ColumnBuilder::Bool(b)) => {
            b.append_option(row.try_get_unchecked::<Option<bool>, _>(i)?)
        }
        (Kind::Int, ColumnBuilder::Int64(b)) => {
            b.append_option(row.try_get_unchecked::<Option<i64>, _>(i)?)
        }
        (Kind::UInt32, ColumnBuilder::Int64(b)) => b.append_option(
            row.try_get_unchecked::<Option<u64>, _>(i)?
                .map(|n| n as i64),
        ),
        (Kind::UInt, ColumnBuilder::Decimal(v)) => v.push(
            row.try_get_unchecked::<Option<u64>, _>(i)?
                .map(|n| (i256::from_i128(n.into()), 0)),
        ),
        // From the server's own text: a 128-bit decimal type keeps 28 digits and would round
        // DECIMAL(38,10) and wider silently.
        (Kind::Decimal, ColumnBuilder::Decimal(v)) => {
            let text = row.try_get_unchecked::<Option<&str>, _>(i)?;
            v.push(match text {
                None => None,
                Some(t) => Some(crate::snapshot::text_decimal(t).ok_or_else(|| {
                    sqlx::Error::Decode(
                        format!("DECIMAL value `{t}` is not a plain decimal").into(),
                    )
                })?),
            })
        }
        (Kind::Float, ColumnBuilder::Float32(b)) => {
            b.append_option(row.try_get_unchecked::<Option<f32>, _>(i)?)
        }
        (Kind::Double, ColumnBuilder::Float64(b)) => {
            b.append_option(row.try_get_unchecked::<Option<f64>, _>(i)?)
        }
        (Kind::Date, ColumnBuilder::Date(b)) => b.append_option(
            row.try_get_unchecked::<Option<NaiveDate>, _>(i)?
                .map(|d| (d - NaiveDate::default()).num_days() as i32),
        ),
        (Kind::Datetime, ColumnBuilder::Timestamp(b, _)) => b.append_option(
            row.try_get_unchecked::<Option<NaiveDateTime>, _>(i)?
                .map(|t| t.and_utc().timestamp_micros()),
        ),
        (Kind::Timestamp, ColumnBuilder::Timestamp(b, _)) => b.append_option(
            row.try_get_unchecked::<Option<DateTime<Utc>>, _>(i)?
                .map(|t| t.timestamp_micros()),
        ),
        (Kind::Time, ColumnBuilder::Time(b)) => {
            b.append_option(row.try_get_unchecked::<Option<NaiveTime>, _>(i)?.map(|t| {
                t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64
            }))
        }
        (Kind::Text, ColumnBuilder::Text(b)) => {
            b.append_option(row.try_get_unchecked::<Option<String>, _>(i)?)
        }
        (Kind::Binary, ColumnBuilder::Binary(b)) => {
            b.append_option(row.try_get_unchecked::<Option<Vec<u8>>, _>(i)?)
        }
        _ => unreachable!("builder made for its kind"),
    }
    Ok(())
}
