//! Exact numbers across batches: building a decimal column at one scale (128 bits while 38
//! digits reach, 256 bits up to 76), and widening one column's batches to one type without loss —
//! integers and decimals meet as decimals, floats beside integers stay floats only while every
//! integer is within 2^53. Casts never turn a value that does not fit into NULL; what cannot be
//! held exactly is an error naming the column.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Decimal128Array, Decimal256Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, i256};
use datafusion::arrow::record_batch::RecordBatch;

use super::ColumnError;

/// Digits a 128-bit and a 256-bit Arrow decimal hold.
const DIGITS_128: u32 = 38;
const DIGITS_256: u32 = 76;

/// The smallest exact decimal array for mantissa/scale pairs: all values at the largest scale,
/// Decimal128(38, s) when every value has at most 38 digits, else Decimal256(76, s). Values
/// beyond 76 digits are refused, never cut.
pub fn finish_decimal(values: Vec<Option<(i256, u32)>>) -> std::result::Result<ArrayRef, String> {
    let scale = values.iter().flatten().map(|(_, s)| *s).max().unwrap_or(0);
    if scale > DIGITS_256 {
        return Err(format!(
            "a value has {scale} digits after the decimal point; recon holds at most {DIGITS_256} exactly (round it or cast it to text in a `query`)"
        ));
    }
    let mut rescaled = Vec::with_capacity(values.len());
    let mut wide = scale > DIGITS_128;
    let limit_128 = i256::from_i128(10).wrapping_pow(DIGITS_128);
    for value in values {
        let Some((m, s)) = value else {
            rescaled.push(None);
            continue;
        };
        let v = rescale(m, s, scale).ok_or_else(|| {
            format!("a value does not fit {DIGITS_256} digits at scale {scale}; recon keeps decimals exact up to {DIGITS_256} digits (cast it to text in a `query`)")
        })?;
        wide |= v.wrapping_abs() >= limit_128;
        rescaled.push(Some(v));
    }
    let array: ArrayRef = if wide {
        let array: Decimal256Array = rescaled.into_iter().collect();
        Arc::new(
            array
                .with_precision_and_scale(DIGITS_256 as u8, scale as i8)
                .map_err(|e| e.to_string())?,
        )
    } else {
        let array: Decimal128Array = rescaled
            .into_iter()
            .map(|v| v.map(|v| v.as_i128()))
            .collect();
        Arc::new(
            array
                .with_precision_and_scale(DIGITS_128 as u8, scale as i8)
                .map_err(|e| e.to_string())?,
        )
    };
    Ok(array)
}

/// `mantissa × 10^-from` expressed with scale `to` (≥ `from`), exactly, or `None` past 76 digits.
pub fn rescale(mantissa: i256, from: u32, to: u32) -> Option<i256> {
    i256::from_i128(10)
        .checked_pow(to - from)
        .and_then(|f| mantissa.checked_mul(f))
        .filter(|v| v.wrapping_abs() < i256::from_i128(10).wrapping_pow(DIGITS_256))
}

/// The type that holds values of both `a` and `b`, for merging batches of one column (exact
/// numbers are settled by [`unify_column`] from the values). Falls back to text.
pub fn widen(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    match (a, b) {
        _ if a == b => a.clone(),
        (Null, x) | (x, Null) => x.clone(),
        (x, y) if is_exact(x) && is_exact(y) && (is_decimal(x) || is_decimal(y)) => {
            Decimal128(38, decimal_scale(x).max(decimal_scale(y)))
        }
        (x, y) if x.is_integer() && y.is_integer() => Int64,
        (x, y) if x.is_numeric() && y.is_numeric() => Float64,
        (Timestamp(_, z1), Timestamp(_, z2)) if z1 == z2 => {
            Timestamp(TimeUnit::Microsecond, z1.clone())
        }
        _ => Utf8,
    }
}

fn is_decimal(t: &DataType) -> bool {
    matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

fn is_exact(t: &DataType) -> bool {
    t.is_integer() || is_decimal(t)
}

fn decimal_scale(t: &DataType) -> i8 {
    match t {
        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => *s,
        _ => 0,
    }
}

/// Widen every batch to one schema, column by column ([`unify_column`]).
pub fn unify(
    batches: Vec<RecordBatch>,
) -> std::result::Result<(SchemaRef, Vec<RecordBatch>), ColumnError> {
    let first = batches[0].schema();
    let mut fields = Vec::with_capacity(first.fields().len());
    let mut columns = Vec::with_capacity(first.fields().len());
    for (i, field) in first.fields().iter().enumerate() {
        let arrays = batches.iter().map(|b| b.column(i).clone()).collect();
        let arrays = unify_column(arrays).map_err(|message| ColumnError {
            column: field.name().clone(),
            message,
        })?;
        fields.push(Field::new(
            field.name(),
            arrays[0].data_type().clone(),
            true,
        ));
        columns.push(arrays);
    }
    let schema = Arc::new(Schema::new(fields));
    let batches = (0..batches.len())
        .map(|b| {
            let arrays = columns.iter().map(|c| c[b].clone()).collect();
            RecordBatch::try_new(schema.clone(), arrays).map_err(|e| ColumnError {
                column: String::new(),
                message: format!("widening a batch: {e}"),
            })
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok((schema, batches))
}

/// Cast without ever turning a value that does not fit into NULL.
fn exact_cast(array: &ArrayRef, to: &DataType) -> std::result::Result<ArrayRef, String> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(array, to, &options).map_err(|e| e.to_string())
}

/// One column's batches in one type, exactly: integers and decimals as a decimal at the largest
/// scale (256-bit when 38 digits do not reach); floats beside integers as floats only when every
/// integer is within 2^53, else everything as decimals (each float by its shortest exact text).
pub fn unify_column(arrays: Vec<ArrayRef>) -> std::result::Result<Vec<ArrayRef>, String> {
    let first = arrays[0].data_type().clone();
    if arrays.iter().all(|a| a.data_type() == &first) {
        return Ok(arrays);
    }
    let typed = || {
        arrays
            .iter()
            .map(|a| a.data_type())
            .filter(|t| **t != DataType::Null)
    };
    let target = typed().fold(DataType::Null, |acc, t| widen(&acc, t));
    let floats = typed().any(DataType::is_floating);
    let exact = typed().any(is_exact);
    if floats && exact && !arrays.iter().all(within_f64) {
        return as_decimals(&arrays);
    }
    if is_decimal(&target) {
        let narrow: std::result::Result<Vec<_>, _> =
            arrays.iter().map(|a| exact_cast(a, &target)).collect();
        if let Ok(done) = narrow {
            return Ok(done);
        }
        let wide = DataType::Decimal256(76, decimal_scale(&target));
        return arrays.iter().map(|a| exact_cast(a, &wide)).collect();
    }
    arrays.iter().map(|a| exact_cast(a, &target)).collect()
}

/// Whether every value of an integer array is exact as an f64 (other arrays: yes).
fn within_f64(array: &ArrayRef) -> bool {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;
    if is_decimal(array.data_type()) {
        return false;
    }
    if !array.data_type().is_integer() {
        return true;
    }
    match exact_cast(array, &DataType::Int64) {
        Ok(a) => {
            let a = a.as_primitive::<Int64Type>();
            (0..a.len()).all(|i| a.is_null(i) || a.value(i).unsigned_abs() <= 1 << 53)
        }
        Err(_) => false,
    }
}

/// Every array as exact decimals (floats by their shortest round-trip text), one scale and width.
fn as_decimals(arrays: &[ArrayRef]) -> std::result::Result<Vec<ArrayRef>, String> {
    let mut values: Vec<Vec<Option<(i256, u32)>>> = Vec::with_capacity(arrays.len());
    for array in arrays {
        values.push(decimal_values(array)?);
    }
    let scale = values
        .iter()
        .flatten()
        .flatten()
        .map(|(_, s)| *s)
        .max()
        .unwrap_or(0);
    let mut out = Vec::with_capacity(values.len());
    for mut v in values {
        // A zero at the common scale makes every batch take that scale.
        v.push(Some((i256::ZERO, scale)));
        let array = finish_decimal(v)?;
        out.push(array.slice(0, array.len() - 1));
    }
    let widest = out
        .iter()
        .map(|a| a.data_type().clone())
        .fold(DataType::Null, |acc, t| match (&acc, &t) {
            (DataType::Decimal256(..), _) => acc,
            _ => t,
        });
    out.iter().map(|a| exact_cast(a, &widest)).collect()
}

/// An array's values as mantissa/scale pairs.
fn decimal_values(array: &ArrayRef) -> std::result::Result<Vec<Option<(i256, u32)>>, String> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, Decimal256Type, Float64Type, Int64Type};
    let n = array.len();
    Ok(match array.data_type() {
        DataType::Decimal128(_, s) => {
            let a = array.as_primitive::<Decimal128Type>();
            (0..n)
                .map(|i| {
                    a.is_valid(i)
                        .then(|| (i256::from_i128(a.value(i)), *s as u32))
                })
                .collect()
        }
        DataType::Decimal256(_, s) => {
            let a = array.as_primitive::<Decimal256Type>();
            (0..n)
                .map(|i| a.is_valid(i).then(|| (a.value(i), *s as u32)))
                .collect()
        }
        t if t.is_floating() => {
            let a = exact_cast(array, &DataType::Float64)?;
            let a = a.as_primitive::<Float64Type>();
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match a.is_valid(i) {
                    true => Some(float_decimal(a.value(i)).ok_or_else(|| format!(
                        "it holds integers beyond 2^53 (which a float would round) beside the float {}, which no decimal of 76 digits holds; cast the column in a `query`",
                        a.value(i)
                    ))?),
                    false => None,
                });
            }
            out
        }
        _ => {
            let a = exact_cast(array, &DataType::Int64)?;
            let a = a.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| {
                    a.is_valid(i)
                        .then(|| (i256::from_i128(a.value(i).into()), 0))
                })
                .collect()
        }
    })
}

/// The exact decimal of a float's shortest round-trip text (`0.1` → 1e-1), if it has one of at
/// most 76 digits.
pub fn float_decimal(f: f64) -> Option<(i256, u32)> {
    if !f.is_finite() {
        return None;
    }
    let text = format!("{f}");
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let digits = format!("{whole}{fraction}");
    if digits.trim_start_matches('-').len() > DIGITS_256 as usize {
        return None;
    }
    Some((i256::from_string(&digits)?, fraction.len() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(m: i128, s: u32) -> Option<(i256, u32)> {
        Some((i256::from_i128(m), s))
    }

    #[test]
    fn decimals_take_the_largest_scale_exactly() {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::Decimal128Type;
        let array = finish_decimal(vec![d(105, 1), None, d(1250, 2)]).unwrap();
        let array = array.as_primitive::<Decimal128Type>();
        assert_eq!(array.scale(), 2);
        assert_eq!(array.value(0), 1050);
        assert!(array.is_null(1));
        assert_eq!(array.value(2), 1250);
    }

    #[test]
    fn decimals_past_38_digits_are_256_bit_never_cut() {
        use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
        // 39 digits: 123456789012345678901234567890123456789
        let big = i256::from_string("123456789012345678901234567890123456789").unwrap();
        let array = finish_decimal(vec![Some((big, 0)), d(5, 1)]).unwrap();
        assert_eq!(array.data_type(), &DataType::Decimal256(76, 1));
        let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).unwrap();
        assert_eq!(
            f.value(0).to_string(),
            "123456789012345678901234567890123456789.0"
        );
        let past = i256::from_i128(10).wrapping_pow(76);
        assert!(finish_decimal(vec![Some((past, 0))]).is_err());
    }

    #[test]
    fn integers_beyond_2_53_beside_floats_stay_exact() {
        use datafusion::arrow::array::{Float64Array, Int64Array};
        use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![9_007_199_254_740_993]));
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![0.5]));
        let out = unify_column(vec![ints, floats]).unwrap();
        let text = |a: &ArrayRef| {
            ArrayFormatter::try_new(a.as_ref(), &FormatOptions::default())
                .unwrap()
                .value(0)
                .to_string()
        };
        assert_eq!(text(&out[0]), "9007199254740993.0");
        assert_eq!(text(&out[1]), "0.5");
        let small: ArrayRef = Arc::new(Int64Array::from(vec![3]));
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![0.5]));
        assert_eq!(
            unify_column(vec![small, floats]).unwrap()[0].data_type(),
            &DataType::Float64
        );
        assert_eq!(float_decimal(0.1), Some((i256::from_i128(1), 1)));
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
