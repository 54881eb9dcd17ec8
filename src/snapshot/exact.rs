//! Exact numbers across batches: building a decimal column at one scale (128 bits while 38
//! digits reach, 256 bits up to 76), and widening one column's batches to one type without loss —
//! integers and decimals meet as decimals, floats beside integers stay floats only while every
//! integer is within 2^53. Casts never turn a value that does not fit into NULL; what cannot be
//! held exactly is an error naming the column.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Decimal128Array, Decimal256Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, TimeUnit, i256};

/// Digits a 128-bit and a 256-bit Arrow decimal hold.
const DIGITS_128: u32 = 38;
const DIGITS_256: u32 = 76;
/// 10^38: the first mantissa a 128-bit decimal of 38 digits does not hold.
const LIMIT_128: u128 = 10u128.pow(DIGITS_128);

/// A decimal column as it is read. While every value has one scale and fits 38 digits — a
/// column with a declared scale, the usual case — values are kept as 128-bit mantissas, 16 bytes
/// each, and become the array without a second pass; the first value that does not fit turns the
/// column into mantissa/scale pairs for [`finish_decimal`]. Either way the array is the same.
pub struct Decimals {
    narrow: Vec<i128>,
    valid: datafusion::arrow::array::BooleanBufferBuilder,
    /// The narrow values' scale (`None` until a value arrives).
    scale: Option<u32>,
    /// Every value, once one did not fit the narrow form.
    wide: Option<Vec<Option<(i256, u32)>>>,
}

impl Decimals {
    pub fn with_capacity(n: usize) -> Decimals {
        Decimals {
            narrow: Vec::with_capacity(n),
            valid: datafusion::arrow::array::BooleanBufferBuilder::new(n),
            scale: None,
            wide: None,
        }
    }

    pub fn len(&self) -> usize {
        self.wide.as_ref().map_or(self.narrow.len(), Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A value as a 128-bit mantissa and its scale: kept as it is while it fits the narrow form.
    #[inline]
    pub fn push_i128(&mut self, mantissa: i128, scale: u32) {
        let fits = self.wide.is_none()
            && scale <= DIGITS_128
            && mantissa.unsigned_abs() < LIMIT_128
            && self.scale.is_none_or(|s| s == scale);
        if fits {
            self.scale = Some(scale);
            self.narrow.push(mantissa);
            self.valid.append(true);
        } else {
            self.push_wide(Some((i256::from_i128(mantissa), scale)));
        }
    }

    /// Mantissas that share one scale, as [`Decimals::push_i128`] would push each: at once
    /// while they all fit the narrow form (a decoder's run of values).
    pub fn push_run(&mut self, mantissas: &[i128], scale: u32) {
        let fits = self.wide.is_none()
            && scale <= DIGITS_128
            && self.scale.is_none_or(|s| s == scale)
            && mantissas.iter().all(|m| m.unsigned_abs() < LIMIT_128);
        match fits {
            true if !mantissas.is_empty() => {
                self.scale = Some(scale);
                self.narrow.extend_from_slice(mantissas);
                self.valid.append_n(mantissas.len(), true);
            }
            true => {}
            false => mantissas.iter().for_each(|m| self.push_i128(*m, scale)),
        }
    }

    pub fn push(&mut self, value: Option<(i256, u32)>) {
        match value {
            None if self.wide.is_none() => {
                self.narrow.push(0);
                self.valid.append(false);
            }
            Some((m, s)) if self.wide.is_none() && m.to_i128().is_some() => {
                self.push_i128(m.as_i128(), s)
            }
            value => self.push_wide(value),
        }
    }

    /// Push a value as a mantissa/scale pair, turning the narrow values into pairs first.
    fn push_wide(&mut self, value: Option<(i256, u32)>) {
        let wide = self.wide.get_or_insert_with(|| {
            let scale = self.scale.unwrap_or(0);
            let mut wide = Vec::with_capacity(self.narrow.len() + 1);
            for (i, m) in self.narrow.iter().enumerate() {
                wide.push(self.valid.get_bit(i).then(|| (i256::from_i128(*m), scale)));
            }
            wide
        });
        wide.push(value);
        self.narrow = Vec::new();
    }

    pub fn finish(mut self) -> std::result::Result<ArrayRef, String> {
        if let Some(wide) = self.wide {
            return finish_decimal(wide);
        }
        let nulls = datafusion::arrow::buffer::NullBuffer::new(self.valid.finish());
        let array = Decimal128Array::new(self.narrow.into(), Some(nulls))
            .with_precision_and_scale(DIGITS_128 as u8, self.scale.unwrap_or(0) as i8)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(array))
    }
}

impl From<Vec<Option<(i256, u32)>>> for Decimals {
    fn from(values: Vec<Option<(i256, u32)>>) -> Decimals {
        let mut decimals = Decimals::with_capacity(values.len());
        for value in values {
            decimals.push(value);
        }
        decimals
    }
}

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
    let limit_128 = i256::from_i128(10).wrapping_pow(DIGITS_128);
    // Most often every value already has the column's scale and fits 38 digits.
    let fits = |(m, s): &(i256, u32)| *s == scale && m.wrapping_abs() < limit_128;
    if scale <= DIGITS_128 && values.iter().flatten().all(fits) {
        let array: Decimal128Array = values.iter().map(|v| v.map(|(m, _)| m.as_i128())).collect();
        return Ok(Arc::new(
            array
                .with_precision_and_scale(DIGITS_128 as u8, scale as i8)
                .map_err(|e| e.to_string())?,
        ));
    }
    let mut rescaled = Vec::with_capacity(values.len());
    let mut wide = scale > DIGITS_128;
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
    // Most values fit 128 bits before and after: no 256-bit arithmetic (10^38 < 2^127 < 10^76).
    if to - from <= 38
        && let Some(m) = mantissa.to_i128()
        && let Some(v) = m.checked_mul(10i128.pow(to - from))
    {
        return Some(i256::from_i128(v));
    }
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

/// Cast without ever turning a value that does not fit into NULL.
pub fn exact_cast(array: &ArrayRef, to: &DataType) -> std::result::Result<ArrayRef, String> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(array, to, &options).map_err(|e| e.to_string())
}

/// What one column holds across batches whose types differ, gathered batch by batch (the
/// staged snapshot is read back once for it), to choose the one type that holds every value.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    types: Vec<DataType>,
    floats: bool,
    ints: bool,
    decimals: bool,
    /// An integer that a float would round (beyond 2^53).
    ints_beyond_f64: bool,
    /// Most digits before the point, and after it, over every exact value (floats by their
    /// shortest round-trip text).
    whole: u32,
    scale: u32,
    /// Why some float has no exact decimal (NaN, infinity, too many digits).
    inexact_float: Option<String>,
}

impl Facts {
    pub fn observe(&mut self, array: &ArrayRef) -> std::result::Result<(), String> {
        let t = array.data_type();
        if *t == DataType::Null {
            return Ok(());
        }
        if !self.types.contains(t) {
            self.types.push(t.clone());
        }
        if !t.is_numeric() {
            return Ok(());
        }
        self.floats |= t.is_floating();
        self.ints |= t.is_integer();
        self.decimals |= is_decimal(t);
        let scale = decimal_scale(t).max(0) as u32;
        for (m, s) in decimal_values(array)?.into_iter().flatten() {
            if t.is_integer() && m.wrapping_abs() > i256::from_i128(1 << 53) {
                self.ints_beyond_f64 = true;
            }
            let digits = m.wrapping_abs().checked_ilog10().map_or(1, |d| d + 1);
            self.whole = self.whole.max(digits.saturating_sub(s));
            self.scale = self.scale.max(s);
        }
        self.scale = self.scale.max(scale);
        if t.is_floating() && self.inexact_float.is_none() {
            self.inexact_float = float_failure(array);
        }
        Ok(())
    }

    /// The one type for every batch: integers and decimals as a decimal at the largest scale
    /// (256 bits past 38 digits); floats beside integers as floats only while every integer is
    /// within 2^53, else everything as decimals; anything else as [`widen`] says.
    pub fn target(&self) -> std::result::Result<DataType, String> {
        if self.types.len() <= 1 {
            return Ok(self.types.first().cloned().unwrap_or(DataType::Null));
        }
        if self.types.iter().any(|t| !t.is_numeric()) {
            return Ok(self
                .types
                .iter()
                .fold(DataType::Null, |acc, t| widen(&acc, t)));
        }
        let fits_i64 = self.whole < 19;
        match (self.floats, self.decimals, self.ints) {
            (true, false, false) => return Ok(DataType::Float64),
            (false, false, true) if fits_i64 => return Ok(DataType::Int64),
            (true, false, true) if !self.ints_beyond_f64 => return Ok(DataType::Float64),
            _ => {}
        }
        if let Some(why) = self.inexact_float.as_ref().filter(|_| self.floats) {
            return Err(format!(
                "it holds integers or decimals that a float would round beside {why}; cast the column in a `query`"
            ));
        }
        match self.whole + self.scale {
            0..=DIGITS_128 => Ok(DataType::Decimal128(DIGITS_128 as u8, self.scale as i8)),
            39..=DIGITS_256 => Ok(DataType::Decimal256(DIGITS_256 as u8, self.scale as i8)),
            digits => Err(format!(
                "its values need {digits} digits; recon keeps decimals exact up to {DIGITS_256} digits (cast it to text in a `query`)"
            )),
        }
    }
}

/// The first float of an array that no decimal of 76 digits holds, described.
fn float_failure(array: &ArrayRef) -> Option<String> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float64Type;
    let a = exact_cast(array, &DataType::Float64).ok()?;
    let a = a.as_primitive::<Float64Type>();
    (0..a.len())
        .filter(|i| a.is_valid(*i))
        .map(|i| a.value(i))
        .find(|f| float_decimal(*f).is_none())
        .map(|f| format!("the float {f}, which no decimal of 76 digits holds"))
}

/// One batch's column in `to`, exactly: decimals built from each value's digits (floats by their
/// shortest round-trip text), anything else cast without turning a misfit into NULL.
pub fn convert(array: &ArrayRef, to: &DataType) -> std::result::Result<ArrayRef, String> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    let (wide, scale) = match to {
        DataType::Decimal128(_, s) if array.data_type().is_numeric() => (false, *s as u32),
        DataType::Decimal256(_, s) if array.data_type().is_numeric() => (true, *s as u32),
        _ => return exact_cast(array, to),
    };
    let overflow = || format!("a value does not fit {to}");
    let mut values = Vec::with_capacity(array.len());
    for v in decimal_values(array)? {
        values.push(match v {
            Some((m, s)) => Some(rescale(m, s, scale).ok_or_else(overflow)?),
            None => None,
        });
    }
    Ok(if wide {
        let a: Decimal256Array = values.into_iter().collect();
        Arc::new(
            a.with_precision_and_scale(DIGITS_256 as u8, scale as i8)
                .map_err(|e| e.to_string())?,
        )
    } else {
        let a: Decimal128Array = values.into_iter().map(|v| v.map(|v| v.as_i128())).collect();
        Arc::new(
            a.with_precision_and_scale(DIGITS_128 as u8, scale as i8)
                .map_err(|e| e.to_string())?,
        )
    })
}

/// An array's values as mantissa/scale pairs.
fn decimal_values(array: &ArrayRef) -> std::result::Result<Vec<Option<(i256, u32)>>, String> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, Decimal256Type, Float64Type};
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
                    true => float_decimal(a.value(i)),
                    false => None,
                });
            }
            out
        }
        _ => {
            let a = exact_cast(array, &DataType::Decimal128(38, 0))?;
            return decimal_values(&a);
        }
    })
}

/// A plain decimal text (`-12.3400`) as (mantissa, scale), exactly, if it has at most 76 digits.
pub fn text_decimal(text: &str) -> Option<(i256, u32)> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = format!("{whole}{fraction}");
    if digits.trim_start_matches(['-', '+']).len() > DIGITS_256 as usize
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((i256::from_string(&digits)?, fraction.len() as u32))
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
    fn decimals_read_narrow_or_wide_make_the_same_array() {
        let big = i256::from_string("123456789012345678901234567890123456789").unwrap();
        let columns = [
            vec![d(1050, 2), None, d(-7, 2)],
            vec![None, None],
            vec![d(105, 1), None, d(1250, 2)],
            vec![d(105, 1), d(7, 1), d(1250, 2), d(3, 2), d(4, 0)],
            vec![d(5, 1), Some((big, 0)), None],
            vec![
                d(99_999_999_999_999_999_999_999_999_999_999_999_999, 0),
                d(1, 0),
            ],
            vec![
                d(100_000_000_000_000_000_000_000_000_000_000_000_000, 0),
                d(1, 0),
            ],
        ];
        for values in columns {
            let expected = finish_decimal(values.clone()).unwrap();
            let mut read = Decimals::with_capacity(0);
            for value in &values {
                match value {
                    Some((m, s)) if m.to_i128().is_some() => read.push_i128(m.as_i128(), *s),
                    other => read.push(*other),
                }
            }
            assert_eq!(read.len(), values.len());
            assert_eq!(&read.finish().unwrap(), &expected, "{values:?}");
            assert_eq!(&Decimals::from(values.clone()).finish().unwrap(), &expected);
            // Runs of one scale pushed at once, as a decoder pushes them.
            let mut runs = Decimals::with_capacity(0);
            let (mut run, mut run_scale) = (Vec::new(), 0);
            for value in &values {
                match value {
                    Some((m, s)) if m.to_i128().is_some() => {
                        if *s != run_scale {
                            runs.push_run(&std::mem::take(&mut run), run_scale);
                            run_scale = *s;
                        }
                        run.push(m.as_i128());
                    }
                    other => {
                        runs.push_run(&std::mem::take(&mut run), run_scale);
                        runs.push(*other);
                    }
                }
            }
            runs.push_run(&run, run_scale);
            assert_eq!(&runs.finish().unwrap(), &expected, "runs of {values:?}");
        }
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
        let mut facts = Facts::default();
        facts.observe(&ints).unwrap();
        facts.observe(&floats).unwrap();
        let target = facts.target().unwrap();
        assert_eq!(target, DataType::Decimal128(38, 1));
        let text = |a: &ArrayRef| {
            let a = convert(a, &target).unwrap();
            ArrayFormatter::try_new(a.as_ref(), &FormatOptions::default())
                .unwrap()
                .value(0)
                .to_string()
        };
        assert_eq!(text(&ints), "9007199254740993.0");
        assert_eq!(text(&floats), "0.5");
        let mut small = Facts::default();
        small
            .observe(&(Arc::new(Int64Array::from(vec![3])) as ArrayRef))
            .unwrap();
        small.observe(&floats).unwrap();
        assert_eq!(small.target().unwrap(), DataType::Float64);
        let nan: ArrayRef = Arc::new(Float64Array::from(vec![f64::NAN]));
        facts.observe(&nan).unwrap();
        assert!(facts.target().is_err());
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
