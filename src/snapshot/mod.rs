//! A snapshot: the rows of one side as Arrow record batches, and the column builders the
//! database connectors fill. Builders keep values exact (decimals as mantissa + scale, timestamps
//! in microseconds with their zone); batches whose types differ (a SQLite column holding integers
//! in one batch and reals in the next, a numeric column whose scale grows) are widened to one
//! schema by [`unify`].

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, NullArray, StringArray,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;

mod exact;

pub use exact::{
    Decimals, Facts, convert, finish_decimal, float_decimal, rescale, text_decimal, widen,
};

/// Rows per record batch produced by the database connectors.
pub const BATCH_ROWS: usize = 8192;

/// A column being filled row by row.
pub enum ColumnBuilder {
    Null(usize),
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    /// Mantissa and scale per value; the batch takes the largest scale, as a 128-bit decimal
    /// when every value fits 38 digits, else a 256-bit one (76 digits).
    Decimal(Decimals),
    Text(StringBuilder),
    /// Text gathered as bytes, its UTF-8 checked once, when the array is built (a decoder's:
    /// one check per batch rather than one per value).
    Utf8(BinaryBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    /// Microseconds since the epoch; `Some(zone)` for zoned timestamps.
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Time(Time64MicrosecondBuilder),
}

impl ColumnBuilder {
    pub fn len(&self) -> usize {
        match self {
            ColumnBuilder::Null(n) => *n,
            ColumnBuilder::Bool(b) => b.len(),
            ColumnBuilder::Int16(b) => b.len(),
            ColumnBuilder::Int32(b) => b.len(),
            ColumnBuilder::Int64(b) => b.len(),
            ColumnBuilder::Float32(b) => b.len(),
            ColumnBuilder::Float64(b) => b.len(),
            ColumnBuilder::Decimal(v) => v.len(),
            ColumnBuilder::Text(b) => b.len(),
            ColumnBuilder::Binary(b) | ColumnBuilder::Utf8(b) => b.len(),
            ColumnBuilder::Date(b) => b.len(),
            ColumnBuilder::Timestamp(b, _) => b.len(),
            ColumnBuilder::Time(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append a NULL, whatever the type.
    pub fn push_null(&mut self) {
        match self {
            ColumnBuilder::Null(n) => *n += 1,
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(v) => v.push(None),
            ColumnBuilder::Text(b) => b.append_null(),
            ColumnBuilder::Binary(b) | ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b, _) => b.append_null(),
            ColumnBuilder::Time(b) => b.append_null(),
        }
    }

    /// Build the Arrow array; an error says what does not fit (the caller names the column).
    pub fn finish(self) -> std::result::Result<ArrayRef, String> {
        Ok(match self {
            ColumnBuilder::Null(n) => Arc::new(NullArray::new(n)),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(values) => values.finish()?,
            ColumnBuilder::Text(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(mut b) => {
                let (offsets, values, nulls) = b.finish().into_parts();
                let text = StringArray::try_new(offsets, values, nulls)
                    .map_err(|e| format!("text that is not UTF-8 ({e})"))?;
                Arc::new(text)
            }
            ColumnBuilder::Date(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b, zone) => Arc::new(b.finish().with_timezone_opt(zone)),
            ColumnBuilder::Time(mut b) => Arc::new(b.finish()),
        })
    }
}

/// A value of one column that a snapshot cannot hold as it is; the column is named.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {message}")]
pub struct ColumnError {
    pub column: String,
    pub message: String,
}

/// Build a record batch from named builders.
pub fn batch(
    names: &[String],
    columns: Vec<ColumnBuilder>,
) -> std::result::Result<RecordBatch, ColumnError> {
    let arrays = names
        .iter()
        .zip(columns)
        .map(|(name, c)| {
            c.finish().map_err(|message| ColumnError {
                column: name.clone(),
                message,
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fields: Vec<Field> = names
        .iter()
        .zip(&arrays)
        .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| ColumnError {
        column: names.first().cloned().unwrap_or_default(),
        message: format!("building a batch: {e}"),
    })
}
