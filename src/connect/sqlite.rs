//! SQLite snapshots. SQLite stores each value with its own type whatever the column declares (a
//! `NUMERIC` column holds integers and reals side by side, timestamps are often text), so each
//! column's Arrow type is chosen from the values actually read: integers → Int64, integers and
//! reals → Float64, any text → Utf8, blobs → Binary. A declared `BOOLEAN` of 0/1 becomes Boolean.
//! The file is opened read-only.

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{
    AssertSqlSafe, Column, ConnectOptions, Executor, Row, SqlSafeStr, Statement, TypeInfo, ValueRef,
};

use crate::config::Endpoint;
use crate::error::{Error, Result, read_error};
use crate::progress::RowCounter;
use crate::snapshot::{ColumnBuilder, batch};
use crate::sql::quote;
use crate::stage::Stager;
use crate::watermark::{Bound, ParamStyle, SourceRead};
use datafusion::arrow::array::*;
use datafusion::arrow::datatypes::i256;

/// The storage classes seen in one column of one batch.
#[derive(Default, Clone, Copy)]
struct Seen {
    integer: bool,
    real: bool,
    text: bool,
    blob: bool,
}

pub async fn open(endpoint: &Endpoint, path: &std::path::Path) -> Result<SqliteConnection> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the {} SQLite file does not exist", endpoint.side),
            ),
        });
    }
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .map_err(|source| Error::Connect {
            side: endpoint.side,
            url: endpoint.location.display(),
            source,
        })
}

pub async fn snapshot(
    endpoint: &Endpoint,
    path: &std::path::Path,
    limit: Option<usize>,
    counter: &RowCounter,
    read: Option<&SourceRead>,
    out: &mut Stager,
) -> Result<()> {
    let side = endpoint.side;
    let mut conn = open(endpoint, path).await?;
    let window = read.and_then(|r| r.window.as_ref());
    let (mut select, params) = super::state_params(&endpoint.relation, read, ParamStyle::Numbered);
    if let Some(w) = window {
        select = format!("SELECT * FROM ({select}) WHERE {} >= ?", quote(&w.column));
    }
    let keys = read.and_then(|r| r.keys.as_ref());
    if let Some(k) = keys {
        let columns: Vec<String> = k.columns.iter().map(|c| quote(c)).collect();
        let values: Vec<String> = (0..k.columns.len())
            .map(|i| format!("json_extract(value, '$[{i}]')"))
            .collect();
        select = format!(
            "SELECT * FROM ({select}) WHERE ({}) IN (SELECT {} FROM json_each(?))",
            columns.join(", "),
            values.join(", ")
        );
    }
    if let Some(n) = limit {
        select = format!("SELECT * FROM ({select}) LIMIT {n}");
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
    let declared: Vec<String> = described
        .columns()
        .iter()
        .map(|c| c.type_info().name().to_ascii_uppercase())
        .collect();
    let mut query = sqlx::query(AssertSqlSafe(select.clone()));
    for value in params {
        query = super::bind_json(query, value);
    }
    if let Some(w) = window {
        // Text timestamps compare as text: the bound is written space-separated with no trailing
        // zeros, so it is never above a stored value it equals (over-reading is harmless).
        query = match &w.lower {
            Bound::Int(n) => query.bind(*n),
            other => query.bind(other.text()),
        };
    }
    if let Some(k) = keys {
        query = query.bind(k.json.clone());
    }
    let read_error = |e| read_error(side, format!("reading `{select}`"), e);
    super::batched(
        query.fetch(&mut conn),
        endpoint.io_timeout,
        counter,
        &read_error,
        |rows| to_batch(&names, &declared, rows),
        &read_error,
        out,
    )
    .await
}

fn to_batch(
    names: &[String],
    declared: &[String],
    rows: &[SqliteRow],
) -> std::result::Result<datafusion::arrow::record_batch::RecordBatch, sqlx::Error> {
    let mut columns = Vec::with_capacity(names.len());
    for (i, declared) in declared.iter().enumerate() {
        let seen = classes(rows, i)?;
        columns.push(column(rows, i, seen, declared)?);
    }
    batch(names, columns).map_err(|e| sqlx::Error::Decode(e.to_string().into()))
}

fn classes(rows: &[SqliteRow], i: usize) -> std::result::Result<Seen, sqlx::Error> {
    let mut seen = Seen::default();
    for row in rows {
        let value = row.try_get_raw(i)?;
        if value.is_null() {
            continue;
        }
        match value.type_info().name() {
            "INTEGER" | "BOOLEAN" => seen.integer = true,
            "REAL" => seen.real = true,
            "BLOB" => seen.blob = true,
            _ => seen.text = true,
        }
    }
    Ok(seen)
}

fn column(
    rows: &[SqliteRow],
    i: usize,
    seen: Seen,
    declared: &str,
) -> std::result::Result<ColumnBuilder, sqlx::Error> {
    let n = rows.len();
    if let Seen {
        integer: true,
        real: true,
        text: false,
        blob: false,
    } = seen
    {
        return mixed_numbers(rows, i);
    }
    let mut b = match seen {
        Seen { text: true, .. } => ColumnBuilder::Text(StringBuilder::new()),
        Seen { blob: true, .. } => ColumnBuilder::Binary(BinaryBuilder::new()),
        Seen { real: true, .. } => ColumnBuilder::Float64(Float64Builder::new()),
        Seen { integer: true, .. } if declared.starts_with("BOOL") => {
            ColumnBuilder::Bool(BooleanBuilder::new())
        }
        Seen { integer: true, .. } => ColumnBuilder::Int64(Int64Builder::new()),
        _ => ColumnBuilder::Null(0),
    };
    for row in rows {
        if row.try_get_raw(i)?.is_null() {
            b.push_null();
            continue;
        }
        match &mut b {
            ColumnBuilder::Text(t) => t.append_value(text_of(row, i)?),
            ColumnBuilder::Binary(t) => t.append_value(row.try_get_unchecked::<Vec<u8>, _>(i)?),
            ColumnBuilder::Float64(t) => t.append_value(row.try_get_unchecked::<f64, _>(i)?),
            ColumnBuilder::Bool(t) => t.append_value(row.try_get_unchecked::<i64, _>(i)? != 0),
            ColumnBuilder::Int64(t) => t.append_value(row.try_get_unchecked::<i64, _>(i)?),
            _ => b.push_null(),
        }
    }
    debug_assert_eq!(b.len(), n);
    Ok(b)
}

/// Integers and reals side by side: floats when every integer is within 2^53 (a float holds it
/// exactly), else exact decimals — each integer as it is, each real by its shortest round-trip
/// text — so `9007199254740993` never becomes `9007199254740992`.
fn mixed_numbers(rows: &[SqliteRow], i: usize) -> std::result::Result<ColumnBuilder, sqlx::Error> {
    let mut values = Vec::with_capacity(rows.len());
    for row in rows {
        let value = row.try_get_raw(i)?;
        values.push(match (value.is_null(), value.type_info().name()) {
            (true, _) => None,
            (false, "INTEGER" | "BOOLEAN") => Some(Ok(row.try_get_unchecked::<i64, _>(i)?)),
            _ => Some(Err(row.try_get_unchecked::<f64, _>(i)?)),
        });
    }
    let exact_as_float = values
        .iter()
        .flatten()
        .all(|v| v.as_ref().map_or(true, |n| n.unsigned_abs() <= 1 << 53));
    if exact_as_float {
        let mut b = Float64Builder::with_capacity(values.len());
        for v in values {
            b.append_option(v.map(|v| v.map_or_else(|f| f, |n| n as f64)));
        }
        return Ok(ColumnBuilder::Float64(b));
    }
    let mut decimals = Vec::with_capacity(values.len());
    for v in values {
        decimals.push(match v {
            None => None,
            Some(Ok(n)) => Some((i256::from_i128(n.into()), 0)),
            Some(Err(f)) => Some(crate::snapshot::float_decimal(f).ok_or_else(|| {
                sqlx::Error::Decode(
                    format!("it holds integers beyond 2^53 beside the real {f}, which no exact decimal of 76 digits holds; cast the column in a `query`").into(),
                )
            })?),
        });
    }
    Ok(ColumnBuilder::Decimal(decimals.into()))
}

/// A value as text, whatever its storage class (numbers in a column that also holds text).
fn text_of(row: &SqliteRow, i: usize) -> std::result::Result<String, sqlx::Error> {
    let value = row.try_get_raw(i)?;
    Ok(match value.type_info().name() {
        "INTEGER" | "BOOLEAN" => row.try_get_unchecked::<i64, _>(i)?.to_string(),
        "REAL" => row.try_get_unchecked::<f64, _>(i)?.to_string(),
        _ => {
            let bytes = row.try_get_unchecked::<Vec<u8>, _>(i)?;
            String::from_utf8(bytes).map_err(|e| {
                let at = e.utf8_error().valid_up_to();
                let first = row
                    .try_get_unchecked::<String, _>(0)
                    .or_else(|_| row.try_get_unchecked::<i64, _>(0).map(|n| n.to_string()))
                    .unwrap_or_default();
                sqlx::Error::Decode(
                    format!(
                        "column `{}` holds text that is not UTF-8 (byte 0x{:02x} at {at}, in the row whose `{}` is {first:?}); SQLite stores what it is given: convert that text to UTF-8, or store it as a BLOB",
                        row.columns()[i].name(),
                        e.as_bytes()[at],
                        row.columns()[0].name()
                    )
                    .into(),
                )
            })?
        }
    })
}
