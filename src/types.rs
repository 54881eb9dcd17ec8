//! Type reconciliation between the two sides. Each mapped pair of columns is compared in one
//! common type chosen here, so that `10.5` (float) and `10.50` (numeric(10,2)) are equal, `Int32`
//! meets `Int64`, and a zoned timestamp meets a naive one. Pairs with no sensible common type
//! (text vs integer, boolean vs number) are refused rather than compared as text, because a silent
//! text comparison would report phantom changes (`'1.0'` vs `1`).
//!
//! Decisions, also in the README:
//! - a timestamp without a zone is taken to be UTC when compared with a zoned one;
//! - a date meets a timestamp at midnight UTC;
//! - text meets a date or timestamp by parsing the text as a timestamp (SQLite keeps timestamps as
//!   text), so `2017-01-01 00:00:00.123456` is not the date `2017-01-01`;
//! - a float meets any number as a 64-bit float; integers and decimals meet exactly;
//! - a source decimal meets destination text as its exact text at its scale (`12.50`): a long
//!   decimal is written to a SQLite TEXT column that way, and must compare equal next run. Not
//!   the other way round: source text `1.5` in a `numeric(10,2)` column reads back `1.50`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    )
}

fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal128(..)
            | DataType::Decimal256(..)
            | DataType::Decimal64(..)
            | DataType::Decimal32(..)
    )
}

/// The common type in which a source column of type `s` and a destination column of type `d`
/// are compared, or `None` when they cannot be compared.
pub fn common(s: &DataType, d: &DataType) -> Option<DataType> {
    use DataType::*;
    if s == d && !matches!(s, Utf8View | LargeUtf8) {
        return Some(s.clone());
    }
    Some(match (s, d) {
        (Null, x) | (x, Null) => x.clone(),
        (a, b) if is_string(a) && is_string(b) => Utf8,
        (a, b) if a.is_integer() && b.is_integer() => {
            if matches!(a, UInt64) || matches!(b, UInt64) {
                Decimal128(38, 0)
            } else {
                Int64
            }
        }
        (a, b) if a.is_floating() && b.is_numeric() || b.is_floating() && a.is_numeric() => Float64,
        (a, b) if (is_decimal(a) || a.is_integer()) && (is_decimal(b) || b.is_integer()) => {
            exact_common(a, b)
        }
        (a, b) if is_temporal(a) && is_temporal(b) => temporal(a, b),
        (a, b) if is_decimal(a) && is_string(b) => Utf8,
        // Text meets a date as a timestamp, so a time of day in the text is not dropped.
        (a, b) if is_string(a) && is_temporal(b) => {
            temporal(b, &Timestamp(TimeUnit::Microsecond, None))
        }
        (a, b) if is_temporal(a) && is_string(b) => {
            temporal(a, &Timestamp(TimeUnit::Microsecond, None))
        }
        (Boolean, Boolean) => Boolean,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => Binary,
        (Time64(_), Time64(_)) | (Time32(_), Time64(_)) | (Time64(_), Time32(_)) => {
            Time64(TimeUnit::Microsecond)
        }
        _ => return None,
    })
}

/// Integers and decimals meet at the larger scale, in 128 bits when both sides' integer digits
/// still fit 38 digits at that scale, else in 256 bits (76 digits), so no value overflows.
fn exact_common(a: &DataType, b: &DataType) -> DataType {
    let digits = |t: &DataType| match t {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => (*p as i32 - *s as i32, *s as i32),
        DataType::UInt64 => (20, 0),
        _ => (19, 0),
    };
    let ((wa, sa), (wb, sb)) = (digits(a), digits(b));
    let scale = sa.max(sb);
    if wa.max(wb) + scale <= 38
        && !matches!(a, DataType::Decimal256(..))
        && !matches!(b, DataType::Decimal256(..))
    {
        DataType::Decimal128(38, scale as i8)
    } else {
        DataType::Decimal256(76, scale as i8)
    }
}

fn temporal(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    match (a, b) {
        (Date32 | Date64, Date32 | Date64) => Date32,
        _ => {
            let zone = |t: &DataType| match t {
                Timestamp(_, z) => z.clone(),
                _ => None,
            };
            let nanos = |t: &DataType| matches!(t, Timestamp(TimeUnit::Nanosecond, _));
            let unit = if nanos(a) || nanos(b) {
                TimeUnit::Nanosecond
            } else {
                TimeUnit::Microsecond
            };
            let zoned = zone(a).is_some() || zone(b).is_some();
            Timestamp(unit, zoned.then(|| Arc::from("UTC")))
        }
    }
}

/// A short, user-facing name for a type (`decimal(38,2)`, `timestamp with time zone`).
pub fn describe(t: &DataType) -> String {
    use DataType::*;
    match t {
        Utf8 | LargeUtf8 | Utf8View => "text".into(),
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => format!("integer ({t})"),
        Float16 | Float32 | Float64 => format!("float ({t})"),
        Decimal128(p, s) | Decimal256(p, s) => format!("decimal({p},{s})"),
        Timestamp(_, Some(z)) => format!("timestamp with time zone ({z})"),
        Timestamp(_, None) => "timestamp".into(),
        Date32 | Date64 => "date".into(),
        Boolean => "boolean".into(),
        Binary | LargeBinary | BinaryView => "binary".into(),
        Null => "null (no values)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;

    #[test]
    fn numbers_meet_without_loss_where_possible() {
        assert_eq!(common(&Int32, &Int64), Some(Int64));
        assert_eq!(
            common(&Decimal128(10, 1), &Decimal128(12, 2)),
            Some(Decimal128(38, 2))
        );
        assert_eq!(common(&Int64, &Decimal128(10, 2)), Some(Decimal128(38, 2)));
        // Snapshots hold decimals at precision 38: different scales meet in 256 bits.
        assert_eq!(
            common(&Decimal128(38, 0), &Decimal128(38, 10)),
            Some(Decimal256(76, 10))
        );
        assert_eq!(
            common(&Decimal256(76, 2), &Decimal128(38, 2)),
            Some(Decimal256(76, 2))
        );
        assert_eq!(common(&Decimal128(10, 2), &Float64), Some(Float64));
    }

    #[test]
    fn timestamps_meet_in_utc() {
        let zoned = Timestamp(TimeUnit::Microsecond, Some(Arc::from("+02:00")));
        let naive = Timestamp(TimeUnit::Second, None);
        assert_eq!(
            common(&zoned, &naive),
            Some(Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))))
        );
        assert_eq!(
            common(&Utf8, &Date32),
            Some(Timestamp(TimeUnit::Microsecond, None))
        );
    }

    #[test]
    fn text_never_meets_numbers() {
        assert_eq!(common(&Utf8, &Int64), None);
        // Exact decimals written to a text column compare as that text; text into a decimal
        // column would not read back as written.
        assert_eq!(common(&Decimal128(38, 10), &Utf8), Some(Utf8));
        assert_eq!(common(&Utf8, &Decimal128(38, 10)), None);
        assert_eq!(common(&Boolean, &Int64), None);
    }
}
