//! `[compare.options]`: per-column comparison options, applied on both sides (README, "Comparison
//! options"). Text and timestamp options rewrite the compared values; tolerances change the
//! "differs" test of queries/diff.sql. What `apply` writes is never rewritten (the `w…` column).

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::prelude::{Expr, cast, lit};

use super::Mapped;
use crate::config::CompareOptions;

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_number(t: &DataType) -> bool {
    t.is_numeric()
}

fn is_time(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, _)
            | DataType::Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond)
    )
}

/// How many of the type's units make a microsecond.
fn per_micro(t: &DataType) -> i64 {
    match t {
        DataType::Timestamp(TimeUnit::Nanosecond, _) | DataType::Time64(TimeUnit::Nanosecond) => {
            1_000
        }
        _ => 1,
    }
}

/// Why these options do not fit a pair compared as `common`; `None` when they do.
pub fn unfit(options: &CompareOptions, common: &DataType) -> Option<String> {
    let kind = crate::types::describe(common);
    if (options.tolerance.is_some() || options.relative.is_some()) && !is_number(common) {
        return Some(format!(
            "`tolerance` and `relative` apply to numbers; this pair is compared as {kind}"
        ));
    }
    if (options.ignore_case || options.trim || options.nfc) && !is_text(common) {
        return Some(format!(
            "`ignore_case`, `trim` and `normalize` apply to text; this pair is compared as {kind}"
        ));
    }
    if options.precision.is_some() && !is_time(common) {
        return Some(format!(
            "`precision` applies to timestamps and times; this pair is compared as {kind}"
        ));
    }
    None
}

/// A side's compared value with the text and timestamp options applied.
pub fn compared(mut value: Expr, options: &CompareOptions, common: &DataType) -> Expr {
    use datafusion::functions::string::expr_fn::btrim;
    if is_text(common) {
        if options.nfc {
            value = super::stored::TextMap::udf("recon_nfc", nfc).call(vec![value]);
        }
        if options.trim {
            value = btrim(vec![value, lit(" \t\r\n\u{000B}\u{000C}\u{00A0}")]);
        }
        if options.ignore_case {
            value = datafusion::functions::string::expr_fn::lower(value);
        }
    }
    if let Some(micros) = options.precision
        && is_time(common)
    {
        let step = micros.saturating_mul(per_micro(common));
        // Truncated toward the past: 10:00:00.999 at "1s" is 10:00:00 (also before 1970).
        let units = cast(value, DataType::Int64);
        let floor = units.clone() - ((units % lit(step)) + lit(step)) % lit(step);
        value = cast(floor, common.clone());
    }
    value
}

/// The SQL test of whether compared column `i` differs between `left` (the source view) and `d`:
/// NULL-safe, and with a tolerance, numbers within it are equal (inclusive) while NULL is never
/// within a tolerance of a value.
pub fn differs(left: &str, i: usize, m: &Mapped) -> String {
    let (s, d) = (format!("{left}.v{i}"), format!("d.v{i}"));
    let within = match (&m.options.tolerance, m.options.relative) {
        (None, None) => return format!("({s} IS DISTINCT FROM {d})"),
        (Some(t), _) => {
            let bound = match &m.common {
                DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                    format!("CAST('{t}' AS DOUBLE)")
                }
                // Exact for integers and decimals: the tolerance's own digits.
                _ => {
                    let scale = t.split_once('.').map_or(0, |(_, f)| f.len());
                    format!("CAST('{t}' AS DECIMAL(38, {scale}))")
                }
            };
            let mut test = format!("abs({s} - {d}) > {bound}");
            if let Some(r) = m.options.relative {
                // Both set: equal when within either.
                test = format!(
                    "({test} AND abs(CAST({s} AS DOUBLE) - CAST({d} AS DOUBLE)) > {r:e} * greatest(abs(CAST({s} AS DOUBLE)), abs(CAST({d} AS DOUBLE))))"
                );
            }
            test
        }
        (None, Some(r)) => format!(
            "abs(CAST({s} AS DOUBLE) - CAST({d} AS DOUBLE)) > {r:e} * greatest(abs(CAST({s} AS DOUBLE)), abs(CAST({d} AS DOUBLE)))"
        ),
    };
    format!(
        "(CASE WHEN {s} IS NULL OR {d} IS NULL THEN ({s} IS NULL) <> ({d} IS NULL) ELSE {within} END)"
    )
}

/// Unicode normal form C.
fn nfc(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    text.nfc().collect()
}
