//! Turning the diff query's output batches into counts and [`Change`] values. Counting looks only
//! at the `action` column; full changes are built for the listed rows only, so `--limit 0` over
//! millions of changes stays cheap.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Number, Value};

use crate::changeset::{Action, Cell, Cells, Change, Summary};
use crate::error::{Error, Result};

/// Accumulates counts and listed changes from diff output batches.
pub struct Collector {
    keys: usize,
    compared: usize,
    limit: Option<usize>,
    /// Also convert each listed change's key and source values to typed cells (for writeback).
    pub cells: bool,
    pub summary: Summary,
    pub changes: Vec<Change>,
}

impl Collector {
    pub fn new(keys: usize, compared: usize, limit: Option<usize>) -> Collector {
        Collector {
            keys,
            compared,
            limit,
            cells: false,
            summary: Summary::default(),
            changes: Vec::new(),
        }
    }

    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let actions = column(batch, "action")?;
        let actions = cast(&actions, &DataType::Utf8).map_err(internal)?;
        let actions = actions.as_string::<i32>();
        for row in 0..batch.num_rows() {
            let action = Action::parse(actions.value(row)).ok_or_else(|| {
                Error::Internal(format!("diff produced action `{}`", actions.value(row)))
            })?;
            match action {
                Action::Insert => self.summary.insert += 1,
                Action::Update => self.summary.update += 1,
                Action::Delete => self.summary.delete += 1,
            }
            if self.limit.is_none_or(|n| self.changes.len() < n) {
                let change = self.change(batch, row, action)?;
                self.changes.push(change);
            }
        }
        Ok(())
    }

    fn change(&self, batch: &RecordBatch, row: usize, action: Action) -> Result<Change> {
        let values = |prefix: &str, n: usize| -> Result<Vec<Value>> {
            (0..n)
                .map(|i| Ok(json_value(&column(batch, &format!("{prefix}{i}"))?, row)))
                .collect()
        };
        let changed = (0..self.compared)
            .map(|i| {
                let c = column(batch, &format!("c{i}"))?;
                let c: &BooleanArray = c.as_boolean();
                Ok(c.is_valid(row) && c.value(row))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Change {
            action,
            key: values("k", self.keys)?,
            id: json_value(&column(batch, "id")?, row),
            source: values("s_v", self.compared)?,
            destination: values("d_v", self.compared)?,
            changed,
            cells: if self.cells {
                self.cells(batch, row)?
            } else {
                Cells::default()
            },
        })
    }

    fn cells(&self, batch: &RecordBatch, row: usize) -> Result<Cells> {
        let cells = |prefix: &str, n: usize| -> Result<Vec<Cell>> {
            (0..n)
                .map(|i| Ok(cell(&column(batch, &format!("{prefix}{i}"))?, row)))
                .collect()
        };
        Ok(Cells {
            key: cells("k", self.keys)?,
            source: cells("n_v", self.compared)?,
            cursor: batch
                .column_by_name("cur")
                .map(|c| cell(c, row))
                .filter(|c| *c != Cell::Null),
        })
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("reading diff output: {e}"))
}

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("diff output lacks column `{name}`")))
}

/// One cell as JSON: numbers stay numbers, decimals become exact strings, the rest is rendered by
/// Arrow's display (ISO-8601 for dates and timestamps).
pub fn json_value(array: &ArrayRef, row: usize) -> Value {
    use DataType::*;
    // A NullArray has no validity buffer: `is_null` says false, so test the type too.
    if array.is_null(row) || array.data_type() == &Null {
        return Value::Null;
    }
    if let Some(text) = far_temporal(array, row) {
        return Value::String(text);
    }
    let number =
        |v: f64| Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number);
    match array.data_type() {
        Boolean => Value::Bool(array.as_boolean().value(row)),
        Int64 => Value::from(
            array
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(row),
        ),
        Int32 | Int16 | Int8 | UInt8 | UInt16 | UInt32 | UInt64 => {
            match cast(&array.slice(row, 1), &Int64) {
                Ok(a) if a.is_valid(0) => json_value(&a, 0),
                _ => display_value(array, row),
            }
        }
        Float64 => number(
            array
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(row),
        ),
        Float32 => number(
            array
                .as_primitive::<datafusion::arrow::datatypes::Float32Type>()
                .value(row) as f64,
        ),
        _ => display_value(array, row),
    }
}

/// ±infinity and years chrono cannot hold, as text (src/temporal.rs); `None` for ordinary values.
fn far_temporal(array: &ArrayRef, row: usize) -> Option<String> {
    use crate::temporal::*;
    match array.data_type() {
        DataType::Date32 => {
            let days = array
                .as_primitive::<datafusion::arrow::datatypes::Date32Type>()
                .value(row);
            (days == DATE_INFINITY || days == DATE_NEG_INFINITY || !date_in_chrono_range(days))
                .then(|| date_text(days))
        }
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let us = array
                .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
                .value(row);
            (us == TIMESTAMP_INFINITY
                || us == TIMESTAMP_NEG_INFINITY
                || chrono::DateTime::from_timestamp_micros(us).is_none())
            .then(|| timestamp_text(us, zone.is_some()))
        }
        _ => None,
    }
}

fn display_value(array: &ArrayRef, row: usize) -> Value {
    let options = FormatOptions::default();
    match ArrayFormatter::try_new(array.as_ref(), &options) {
        Ok(f) => Value::String(f.value(row).to_string()),
        Err(_) => Value::String(format!("<{}>", array.data_type())),
    }
}

/// One cell as a typed value for writeback.
pub fn cell(array: &ArrayRef, row: usize) -> Cell {
    use DataType::*;
    if array.is_null(row) || array.data_type() == &Null {
        return Cell::Null;
    }
    let one = array.slice(row, 1);
    let as_type = |t: DataType| cast(&one, &t).ok().filter(|a| a.is_valid(0));
    match array.data_type() {
        Boolean => Cell::Bool(array.as_boolean().value(row)),
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 => {
            as_type(Int64).map_or(Cell::Null, |a| {
                Cell::Int(
                    a.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                        .value(0),
                )
            })
        }
        Float16 | Float32 | Float64 => as_type(Float64).map_or(Cell::Null, |a| {
            Cell::Float(
                a.as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                    .value(0),
            )
        }),
        UInt64 | Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) => {
            Cell::Decimal(crate::changeset::display(&display_value(array, row)))
        }
        Utf8 | LargeUtf8 | Utf8View => as_type(Utf8).map_or(Cell::Null, |a| {
            Cell::Text(a.as_string::<i32>().value(0).to_string())
        }),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => as_type(Binary)
            .map_or(Cell::Null, |a| {
                Cell::Bytes(a.as_binary::<i32>().value(0).to_vec())
            }),
        Date32 | Date64 => as_type(Date32).map_or(Cell::Null, |a| {
            let days = a
                .as_primitive::<datafusion::arrow::datatypes::Date32Type>()
                .value(0);
            match days {
                crate::temporal::DATE_INFINITY => Cell::Infinity(false),
                crate::temporal::DATE_NEG_INFINITY => Cell::Infinity(true),
                _ => chrono::NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163))
                    .map_or_else(|| Cell::Text(crate::temporal::date_text(days)), Cell::Date),
            }
        }),
        Time32(_) | Time64(_) => as_type(Time64(TimeUnit::Microsecond)).map_or(Cell::Null, |a| {
            let us = a
                .as_primitive::<datafusion::arrow::datatypes::Time64MicrosecondType>()
                .value(0);
            chrono::NaiveTime::from_num_seconds_from_midnight_opt(
                (us / 1_000_000) as u32,
                ((us % 1_000_000) * 1000) as u32,
            )
            .map_or(Cell::Null, Cell::Time)
        }),
        Timestamp(_, zone) => {
            as_type(Timestamp(TimeUnit::Microsecond, None)).map_or(Cell::Null, |a| {
                let us = a
                    .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
                    .value(0);
                match (us, chrono::DateTime::from_timestamp_micros(us)) {
                    (crate::temporal::TIMESTAMP_INFINITY, _) => Cell::Infinity(false),
                    (crate::temporal::TIMESTAMP_NEG_INFINITY, _) => Cell::Infinity(true),
                    (_, Some(t)) if zone.is_some() => Cell::TimestampTz(t),
                    (_, Some(t)) => Cell::Timestamp(t.naive_utc()),
                    (_, None) => Cell::Text(crate::temporal::timestamp_text(us, zone.is_some())),
                }
            })
        }
        _ => Cell::Text(crate::changeset::display(&display_value(array, row))),
    }
}
