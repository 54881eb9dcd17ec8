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
    /// Changes built so far (a sink may have taken them out of `changes`).
    built: usize,
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
            built: 0,
        }
    }

    /// Whether no change will be built (only counted).
    pub fn counts_only(&self) -> bool {
        self.limit.is_some_and(|n| self.built >= n)
    }

    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let actions = actions(batch)?;
        let actions = actions.as_string::<i32>();
        let listed = match self.limit {
            Some(n) => n.saturating_sub(self.built),
            None => usize::MAX,
        };
        // The output's columns, found, cast and given a formatter once per batch, not per value.
        let prepared = (listed > 0 && batch.num_rows() > 0)
            .then(|| Prepared::new(batch, self.keys, self.compared, self.cells))
            .transpose()?;
        let options = FormatOptions::default();
        let readers = prepared.as_ref().map(|p| p.readers(&options));
        for row in 0..batch.num_rows() {
            let action = Action::parse(actions.value(row)).ok_or_else(|| {
                Error::Internal(format!("diff produced action `{}`", actions.value(row)))
            })?;
            match action {
                Action::Insert => self.summary.insert += 1,
                Action::Update => self.summary.update += 1,
                Action::Delete => self.summary.delete += 1,
            }
            if let Some(r) = &readers
                && self.limit.is_none_or(|n| self.built < n)
            {
                self.changes.push(r.change(row, action, self.cells, true));
                self.built += 1;
            }
        }
        Ok(())
    }
}

/// The changes of one `action` in a batch of the diff's output, each with its typed cells (for
/// writeback): what an apply's spool reads back (see [`crate::writeback::Spool`]). Without
/// `values`, a change's `source` and `destination` are left empty: a writer binds the cells, and
/// building each value's JSON twice over cost an apply more than its writes' own statements.
pub fn changes_of(
    batch: &RecordBatch,
    keys: usize,
    compared: usize,
    action: Action,
    values: bool,
) -> Result<Vec<Change>> {
    let actions = actions(batch)?;
    let actions = actions.as_string::<i32>();
    let rows: Vec<usize> = (0..batch.num_rows())
        .filter(|&row| actions.is_valid(row) && actions.value(row) == action.name())
        .collect();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let prepared = Prepared::new(batch, keys, compared, true)?;
    let options = FormatOptions::default();
    let readers = prepared.readers(&options);
    Ok(rows
        .into_iter()
        .map(|row| readers.change(row, action, true, values))
        .collect())
}

/// The output's `action` column, as text.
fn actions(batch: &RecordBatch) -> Result<ArrayRef> {
    cast(&column(batch, "action")?, &DataType::Utf8).map_err(internal)
}

/// A batch's output columns for building changes: `k…`, `s_v…`, `d_v…`, `c…`, `id`, and for
/// writeback `k…` and `n_v…` cast to the types cells are read from, and `cur`.
struct Prepared {
    keys: Vec<ArrayRef>,
    source: Vec<ArrayRef>,
    destination: Vec<ArrayRef>,
    changed: Vec<ArrayRef>,
    id: ArrayRef,
    cell_keys: Vec<ArrayRef>,
    cell_source: Vec<ArrayRef>,
    cursor: Option<ArrayRef>,
}

impl Prepared {
    fn new(batch: &RecordBatch, keys: usize, compared: usize, cells: bool) -> Result<Prepared> {
        let columns = |prefix: &str, n: usize| -> Result<Vec<ArrayRef>> {
            (0..n)
                .map(|i| column(batch, &format!("{prefix}{i}")))
                .collect()
        };
        let canonical_all =
            |arrays: Vec<ArrayRef>| -> Vec<ArrayRef> { arrays.iter().map(canonical).collect() };
        Ok(Prepared {
            keys: columns("k", keys)?,
            source: columns("s_v", compared)?,
            destination: columns("d_v", compared)?,
            changed: columns("c", compared)?,
            id: column(batch, "id")?,
            cell_keys: if cells {
                canonical_all(columns("k", keys)?)
            } else {
                Vec::new()
            },
            cell_source: if cells {
                canonical_all(columns("n_v", compared)?)
            } else {
                Vec::new()
            },
            cursor: batch.column_by_name("cur").filter(|_| cells).map(canonical),
        })
    }

    fn readers<'a>(&'a self, options: &'a FormatOptions<'a>) -> Readers<'a> {
        let read = |arrays: &'a [ArrayRef]| -> Vec<Reader<'a>> {
            arrays.iter().map(|a| Reader::new(a, options)).collect()
        };
        Readers {
            keys: read(&self.keys),
            source: read(&self.source),
            destination: read(&self.destination),
            changed: self.changed.iter().map(|c| c.as_boolean()).collect(),
            id: Reader::new(&self.id, options),
            cell_keys: read(&self.cell_keys),
            cell_source: read(&self.cell_source),
            cursor: self.cursor.as_ref().map(|c| Reader::new(c, options)),
        }
    }
}

struct Readers<'a> {
    keys: Vec<Reader<'a>>,
    source: Vec<Reader<'a>>,
    destination: Vec<Reader<'a>>,
    changed: Vec<&'a BooleanArray>,
    id: Reader<'a>,
    cell_keys: Vec<Reader<'a>>,
    cell_source: Vec<Reader<'a>>,
    cursor: Option<Reader<'a>>,
}

impl Readers<'_> {
    /// The change at `row`: with typed `cells` or without, with the compared columns' JSON
    /// `values` or with none (see [`changes_of`]).
    fn change(&self, row: usize, action: Action, cells: bool, values: bool) -> Change {
        let json = |readers: &[Reader<'_>]| readers.iter().map(|r| r.json(row)).collect();
        let typed = |readers: &[Reader<'_>]| readers.iter().map(|r| r.cell(row)).collect();
        let compared = |readers: &[Reader<'_>]| match values {
            true => json(readers),
            false => Vec::new(),
        };
        Change {
            action,
            key: json(&self.keys),
            id: self.id.json(row),
            source: compared(&self.source),
            destination: compared(&self.destination),
            changed: self
                .changed
                .iter()
                .map(|c| c.is_valid(row) && c.value(row))
                .collect(),
            cells: if cells {
                Cells {
                    key: typed(&self.cell_keys),
                    source: typed(&self.cell_source),
                    cursor: self
                        .cursor
                        .as_ref()
                        .map(|c| c.cell(row))
                        .filter(|c| *c != Cell::Null),
                }
            } else {
                Cells::default()
            },
        }
    }
}

/// One column with its display formatter, made once.
struct Reader<'a> {
    array: &'a ArrayRef,
    formatter: Option<ArrayFormatter<'a>>,
}

impl<'a> Reader<'a> {
    fn new(array: &'a ArrayRef, options: &'a FormatOptions<'a>) -> Reader<'a> {
        Reader {
            array,
            formatter: ArrayFormatter::try_new(array.as_ref(), options).ok(),
        }
    }

    fn display(&self, row: usize) -> String {
        match &self.formatter {
            Some(f) => f.value(row).to_string(),
            None => format!("<{}>", self.array.data_type()),
        }
    }

    /// The value at `row` as JSON (see [`json_value`]).
    fn json(&self, row: usize) -> Value {
        use datafusion::arrow::datatypes::*;
        let array = self.array;
        // A NullArray has no validity buffer: `is_null` says false, so test the type too.
        if array.is_null(row) || array.data_type() == &DataType::Null {
            return Value::Null;
        }
        if let Some(text) = far_temporal(array, row) {
            return Value::String(text);
        }
        let number = |v: f64| {
            Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number)
        };
        match array.data_type() {
            DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
            DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
            DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
            DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(row)),
            DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(row)),
            DataType::UInt8 => Value::from(array.as_primitive::<UInt8Type>().value(row)),
            DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(row)),
            DataType::UInt32 => Value::from(array.as_primitive::<UInt32Type>().value(row)),
            DataType::UInt64 => match array.as_primitive::<UInt64Type>().value(row) {
                v if v <= i64::MAX as u64 => Value::from(v),
                _ => Value::String(self.display(row)),
            },
            DataType::Float64 => number(array.as_primitive::<Float64Type>().value(row)),
            DataType::Float32 => number(array.as_primitive::<Float32Type>().value(row) as f64),
            DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
            _ => Value::String(self.display(row)),
        }
    }

    /// As [`cell`], for a column cast by [`canonical`].
    fn cell(&self, row: usize) -> Cell {
        use datafusion::arrow::datatypes::*;
        let array = self.array;
        if array.is_null(row) {
            return Cell::Null;
        }
        match array.data_type() {
            DataType::Int64 => Cell::Int(array.as_primitive::<Int64Type>().value(row)),
            DataType::Float64 => Cell::Float(array.as_primitive::<Float64Type>().value(row)),
            DataType::Utf8 => Cell::Text(array.as_string::<i32>().value(row).to_string()),
            DataType::Boolean => Cell::Bool(array.as_boolean().value(row)),
            DataType::Decimal128(..) | DataType::Decimal256(..) => {
                Cell::Decimal(decimal_text(array, row))
            }
            DataType::UInt64 => Cell::Decimal(self.display(row)),
            DataType::Timestamp(TimeUnit::Microsecond, zone) => timestamp_cell(
                array.as_primitive::<TimestampMicrosecondType>().value(row),
                zone.is_some(),
            ),
            _ => cell(array, row),
        }
    }
}

/// A column cast once to the type its cells are read from (integers to Int64, floats to Float64,
/// strings to Utf8), so that no value is cast alone.
fn canonical(array: &ArrayRef) -> ArrayRef {
    use DataType::*;
    let to = match array.data_type() {
        Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 => Int64,
        Float16 | Float32 => Float64,
        LargeUtf8 | Utf8View => Utf8,
        _ => return array.clone(),
    };
    cast(array, &to).unwrap_or_else(|_| array.clone())
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
/// Arrow's display (ISO-8601 for dates and timestamps). For many values of one column, a
/// [`Reader`] builds the display formatter once.
pub fn json_value(array: &ArrayRef, row: usize) -> Value {
    let options = FormatOptions::default();
    Reader::new(array, &options).json(row)
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

/// One value as Arrow displays it.
fn display_text(array: &ArrayRef, row: usize) -> String {
    let options = FormatOptions::default();
    Reader::new(array, &options).display(row)
}

/// A decimal as arrow displays it (its own digits-to-decimal step), without a formatter made for
/// the value, and a 256-bit value that fits 128 bits written from its i128.
fn decimal_text(array: &ArrayRef, row: usize) -> String {
    use datafusion::arrow::datatypes::*;
    let (digits, precision, scale) = match array.data_type() {
        DataType::Decimal128(precision, scale) => (
            array
                .as_primitive::<Decimal128Type>()
                .value(row)
                .to_string(),
            precision,
            scale,
        ),
        DataType::Decimal256(precision, scale) => {
            let value = array.as_primitive::<Decimal256Type>().value(row);
            let digits = match value.to_i128() {
                Some(narrow) => narrow.to_string(),
                None => value.to_string(),
            };
            (digits, precision, scale)
        }
        _ => return display_text(array, row),
    };
    format_decimal_str(&digits, *precision as usize, *scale)
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
            Cell::Decimal(decimal_text(array, row))
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
                timestamp_cell(us, zone.is_some())
            })
        }
        _ => Cell::Text(display_text(array, row)),
    }
}

/// A timestamp in microseconds as a cell: ±infinity, an instant (`zoned`) or a wall-clock time,
/// or text for years chrono cannot hold.
fn timestamp_cell(us: i64, zoned: bool) -> Cell {
    match (us, chrono::DateTime::from_timestamp_micros(us)) {
        (crate::temporal::TIMESTAMP_INFINITY, _) => Cell::Infinity(false),
        (crate::temporal::TIMESTAMP_NEG_INFINITY, _) => Cell::Infinity(true),
        (_, Some(t)) if zoned => Cell::TimestampTz(t),
        (_, Some(t)) => Cell::Timestamp(t.naive_utc()),
        (_, None) => Cell::Text(crate::temporal::timestamp_text(us, zoned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Decimal128Array, Decimal256Array};
    use datafusion::arrow::datatypes::i256;
    use std::sync::Arc;

    #[test]
    fn decimal_cells_read_as_arrow_displays_them() {
        let narrow = [
            0i128,
            5,
            -5,
            -123_456,
            99_999_999_999_999_999_999_999_999_999_999_999_999,
            i128::MAX,
            i128::MIN + 1,
        ];
        let wide = narrow
            .iter()
            .map(|v| i256::from_i128(*v))
            .chain([
                i256::from_i128(i128::MAX).wrapping_mul(i256::from_i128(1000)),
                i256::from_i128(i128::MIN).wrapping_mul(i256::from_i128(7)),
            ])
            .collect::<Vec<_>>();
        for scale in [0i8, 2, 10, 38, -2] {
            let arrays: [ArrayRef; 2] = [
                Arc::new(
                    Decimal128Array::from(narrow.to_vec())
                        .with_precision_and_scale(38, scale.max(0))
                        .unwrap(),
                ),
                Arc::new(
                    Decimal256Array::from(wide.clone())
                        .with_precision_and_scale(76, scale)
                        .unwrap(),
                ),
            ];
            let options = FormatOptions::default();
            for array in &arrays {
                let reader = Reader::new(array, &options);
                for row in 0..array.len() {
                    assert_eq!(
                        reader.cell(row),
                        Cell::Decimal(reader.display(row)),
                        "{} row {row}",
                        array.data_type()
                    );
                    assert_eq!(cell(array, row), reader.cell(row));
                }
            }
        }
    }
}
