//! A snapshot: the rows of one side as Arrow record batches, and the column builders the
//! database connectors fill. Builders keep values exact (decimals as mantissa + scale, timestamps
//! in microseconds with their zone); batches whose types differ (a SQLite column holding integers
//! in one batch and reals in the next, a numeric column whose scale grows) are widened to one
//! schema by [`unify`].

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Array,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, NullArray,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// Rows per record batch produced by the database connectors.
pub const BATCH_ROWS: usize = 8192;

/// One side's rows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Snapshot {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// Widen the batches to one schema (see [`unify`]). Connectors always pass at least one
    /// batch, empty when the side has no rows, so that the column names and types are known.
    pub fn from_batches(batches: Vec<RecordBatch>) -> Result<Snapshot> {
        let mut batches = batches;
        if batches.len() > 1 {
            batches.retain(|b| b.num_rows() > 0);
        }
        if batches.is_empty() {
            return Err(Error::Internal("a snapshot without a schema".into()));
        }
        let (schema, batches) = unify(batches)?;
        Ok(Snapshot { schema, batches })
    }
}

/// A column being filled row by row.
pub enum ColumnBuilder {
    Null(usize),
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    /// Mantissa and scale per value; the batch takes the largest scale.
    Decimal(Vec<Option<(i128, u32)>>),
    Text(StringBuilder),
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
            ColumnBuilder::Binary(b) => b.len(),
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
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b, _) => b.append_null(),
            ColumnBuilder::Time(b) => b.append_null(),
        }
    }

    /// Build the Arrow array, and its type.
    pub fn finish(self) -> Result<ArrayRef> {
        Ok(match self {
            ColumnBuilder::Null(n) => Arc::new(NullArray::new(n)),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(values) => Arc::new(finish_decimal(values)?),
            ColumnBuilder::Text(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Date(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b, zone) => Arc::new(b.finish().with_timezone_opt(zone)),
            ColumnBuilder::Time(mut b) => Arc::new(b.finish()),
        })
    }
}

/// Largest decimal scale Arrow's Decimal128 can hold.
const MAX_SCALE: u32 = 38;

fn finish_decimal(values: Vec<Option<(i128, u32)>>) -> Result<Decimal128Array> {
    let scale = values
        .iter()
        .flatten()
        .map(|(_, s)| *s)
        .max()
        .unwrap_or(0)
        .min(MAX_SCALE);
    let rescaled = values
        .into_iter()
        .map(|v| {
            v.map(|(m, s)| rescale(m, s, scale))
                .transpose()
                .map(Option::flatten)
        })
        .collect::<Result<Vec<Option<i128>>>>()?;
    let array: Decimal128Array = rescaled.into_iter().collect();
    array
        .with_precision_and_scale(38, scale as i8)
        .map_err(|e| Error::Internal(format!("decimal scale {scale}: {e}")))
}

/// `mantissa × 10^-from` expressed with scale `to` (≥ `from`), exactly.
pub fn rescale(mantissa: i128, from: u32, to: u32) -> Result<Option<i128>> {
    10i128
        .checked_pow(to - from)
        .and_then(|f| mantissa.checked_mul(f))
        .map(Some)
        .ok_or_else(|| {
            Error::Internal(format!(
                "decimal {mantissa}e-{from} does not fit 38 digits at scale {to}"
            ))
        })
}

/// Build a record batch from named builders.
pub fn batch(names: &[String], columns: Vec<ColumnBuilder>) -> Result<RecordBatch> {
    let arrays = columns
        .into_iter()
        .map(ColumnBuilder::finish)
        .collect::<Result<Vec<_>>>()?;
    let fields: Vec<Field> = names
        .iter()
        .zip(&arrays)
        .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| Error::Internal(format!("building a batch: {e}")))
}

/// The type that holds values of both `a` and `b` without loss, for merging batches of one
/// column. Falls back to text, which holds anything.
pub fn widen(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    match (a, b) {
        _ if a == b => a.clone(),
        (Null, x) | (x, Null) => x.clone(),
        (Decimal128(_, s1), Decimal128(_, s2)) => Decimal128(38, (*s1).max(*s2)),
        (Decimal128(_, s), x) | (x, Decimal128(_, s)) if x.is_integer() => Decimal128(38, *s),
        (x, y) if x.is_integer() && y.is_integer() => Int64,
        (x, y) if x.is_numeric() && y.is_numeric() => Float64,
        (Timestamp(_, z1), Timestamp(_, z2)) if z1 == z2 => {
            Timestamp(TimeUnit::Microsecond, z1.clone())
        }
        _ => Utf8,
    }
}

/// Widen every batch to one schema (column by column with [`widen`]) and cast where needed.
pub fn unify(batches: Vec<RecordBatch>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let first = batches[0].schema();
    let mut types: Vec<DataType> = first
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    for b in &batches[1..] {
        for (t, f) in types.iter_mut().zip(b.schema().fields()) {
            *t = widen(t, f.data_type());
        }
    }
    let fields: Vec<Field> = first
        .fields()
        .iter()
        .zip(&types)
        .map(|(f, t)| Field::new(f.name(), t.clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let cast_batch = |b: RecordBatch| -> Result<RecordBatch> {
        let columns = b
            .columns()
            .iter()
            .zip(&types)
            .map(|(c, t)| cast(c, t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("widening a snapshot column: {e}")))?;
        RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("widening a snapshot batch: {e}")))
    };
    let batches = batches.into_iter().map(cast_batch).collect::<Result<_>>()?;
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_take_the_largest_scale_exactly() {
        use datafusion::arrow::array::Array;
        let array = finish_decimal(vec![Some((105, 1)), None, Some((1250, 2))]).unwrap();
        assert_eq!(array.scale(), 2);
        assert_eq!(array.value(0), 1050);
        assert!(array.is_null(1));
        assert_eq!(array.value(2), 1250);
    }

    #[test]
    fn widening_keeps_exactness_where_it_can() {
        use DataType::*;
        assert_eq!(widen(&Int64, &Float64), Float64);
        assert_eq!(
            widen(&Decimal128(38, 1), &Decimal128(10, 3)),
            Decimal128(38, 3)
        );
        assert_eq!(widen(&Null, &Boolean), Boolean);
        assert_eq!(widen(&Int64, &Utf8), Utf8);
    }
}
