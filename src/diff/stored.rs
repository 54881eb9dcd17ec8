//! The comparison rule: a compared value is changed if and only if writing the source value into
//! the destination column would change what the destination stores. So the source side of each
//! pair is compared *as the destination column would store it* — rounded to the column's scale or
//! fraction digits, narrowed to its float width, a date without its time, `char(n)` without its
//! padding — and JSON columns compare parsed values (key order and spacing are not data).
//!
//! The destination's declared types come from its catalog (PostgreSQL `pg_attribute`,
//! MySQL/MariaDB `information_schema.COLUMNS`) when the destination is a table; a `query` or a
//! file destination stores nothing and is compared as read.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{Expr, cast, lit, when};

use crate::config::{Job, Location, Relation};
use crate::error::{Error, Result};

/// How a destination column stores values, where that differs from how it is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Storage {
    /// Stores what it is given (or the comparison type already says how).
    #[default]
    Plain,
    /// A timestamp or time with this many fraction digits (0–5), rounding half away from zero
    /// (`round`) or truncating.
    Fraction { digits: u8, round: bool },
    /// A decimal with this scale, rounding half away from zero.
    Scale(i8),
    /// A 4-byte float (`real`, `FLOAT`).
    Float4,
    /// JSON (`json`, `jsonb`): compared as parsed values.
    Json,
    /// `char(n)`: trailing spaces are padding.
    Padded,
    /// `varchar(n)`: a longer value whose excess is only spaces is stored cut to n characters
    /// (PostgreSQL and MySQL/MariaDB both do so; other longer values are refused).
    Length(u32),
    /// A date: a timestamp written to it keeps its day.
    Date,
}

impl Storage {
    /// The source value (already in the pair's comparison type `common`) as the destination
    /// stores it.
    pub fn apply(self, value: Expr, common: &DataType) -> Expr {
        use DataType::*;
        match (self, common) {
            (Storage::Padded, Utf8) => {
                datafusion::functions::string::expr_fn::rtrim(vec![value, lit(" ")])
            }
            (Storage::Length(n), Utf8) => {
                use datafusion::functions::string::expr_fn::rtrim;
                use datafusion::functions::unicode::expr_fn::character_length;
                use datafusion::functions::unicode::expr_fn::substr;
                let excess = substr(value.clone(), lit(n as i64 + 1));
                when(
                    character_length(value.clone())
                        .gt(lit(n as i64))
                        .and(rtrim(vec![excess, lit(" ")]).eq(lit(""))),
                    substr_len(value.clone(), n),
                )
                .otherwise(value)
                .unwrap_or_else(|_| lit(ScalarValue::Null))
            }
            (Storage::Float4, Float64) => cast(cast(value, Float32), Float64),
            (Storage::Date, Timestamp(..)) => cast(cast(value, Date32), common.clone()),
            (Storage::Scale(s), Decimal128(p, cs)) if s < *cs => {
                cast(cast(value, Decimal128(*p, s)), common.clone())
            }
            (Storage::Scale(s), Decimal256(p, cs)) if s < *cs => {
                cast(cast(value, Decimal256(*p, s)), common.clone())
            }
            (Storage::Scale(s), Float64) => {
                ScalarUDF::from(RoundFloat::new()).call(vec![value, lit(s as i64)])
            }
            (Storage::Fraction { digits, round }, Timestamp(unit, _) | Time64(unit))
                if digits < 6 && matches!(unit, TimeUnit::Microsecond | TimeUnit::Nanosecond) =>
            {
                let places = if *unit == TimeUnit::Nanosecond { 9 } else { 6 };
                let step = 10i64.pow(places - digits as u32);
                let micros = cast(value, Int64);
                let rounded = if round {
                    // Half away from zero, as PostgreSQL rounds fraction digits.
                    let half = step / 2;
                    when(
                        micros.clone().gt_eq(lit(0i64)),
                        ((micros.clone() + lit(half)) / lit(step)) * lit(step),
                    )
                    .otherwise(-(((-micros + lit(half)) / lit(step)) * lit(step)))
                    .unwrap_or_else(|_| lit(ScalarValue::Null))
                } else {
                    // Toward zero, as MariaDB cuts fraction digits.
                    (micros / lit(step)) * lit(step)
                };
                cast(rounded, common.clone())
            }
            _ => value,
        }
    }

    /// Whether both sides are rewritten (JSON is compared as parsed values on both).
    pub fn both_sides(self) -> bool {
        self == Storage::Json
    }

    /// How the destination stores it, for `recon check`; `None` when as read.
    pub fn describe(self) -> Option<String> {
        Some(match self {
            Storage::Plain => return None,
            Storage::Fraction { digits, round } => format!(
                "{} to {digits} fraction digits",
                if round { "rounded" } else { "cut" }
            ),
            Storage::Scale(s) => format!("rounded to {s} decimal places"),
            Storage::Float4 => "narrowed to a 4-byte float".into(),
            Storage::Json => "parsed as JSON".into(),
            Storage::Padded => "without trailing spaces (char padding)".into(),
            Storage::Length(n) => format!("cut to {n} characters when the excess is spaces"),
            Storage::Date => "as a date (the time of day dropped)".into(),
        })
    }
}

/// JSON text in a canonical form (object keys sorted, no spacing), so that `json` and `jsonb`
/// values compare as parsed values. Text that is not JSON is compared as it is.
pub fn json(value: Expr) -> Expr {
    TextMap::udf("recon_json", canonical_json).call(vec![value])
}

/// The storage of each destination column of a table destination, by column name.
pub async fn destination(job: &Job) -> Result<HashMap<String, Storage>> {
    let Relation::Table(table) = &job.destination.relation else {
        return Ok(HashMap::new());
    };
    let catalog_error = |e: sqlx::Error| Error::Read {
        side: job.destination.side,
        what: format!("reading the column types of `{table}`"),
        source: Box::new(e),
    };
    match &job.destination.location {
        Location::Postgres(url) => {
            let mut conn = crate::connect::pg_connect(&job.destination, url).await?;
            let rows: Vec<(String, String, i32)> = sqlx::query_as(
                "SELECT a.attname::text, t.typname::text, a.atttypmod FROM pg_attribute a
                 JOIN pg_type t ON t.oid = a.atttypid
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            )
            .bind(crate::sql::quote_table(
                crate::sql::Dialect::Standard,
                table,
            ))
            .fetch_all(&mut conn)
            .await
            .map_err(catalog_error)?;
            Ok(rows
                .into_iter()
                .map(|(name, kind, typmod)| (name, postgres(&kind, typmod)))
                .collect())
        }
        Location::Mysql(url) => {
            use sqlx::ConnectOptions;
            let options: sqlx::mysql::MySqlConnectOptions =
                url.parse().map_err(|e| Error::Connect {
                    side: job.destination.side,
                    url: job.destination.location.display(),
                    source: e,
                })?;
            let mut conn = options.connect().await.map_err(|e| Error::Connect {
                side: job.destination.side,
                url: job.destination.location.display(),
                source: e,
            })?;
            let (schema, name) = crate::sql::schema_and_table(table);
            let rows: Vec<MysqlColumn> = sqlx::query_as(
                "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR),
                        CAST(DATETIME_PRECISION AS UNSIGNED), CAST(NUMERIC_SCALE AS UNSIGNED),
                        CAST(CHARACTER_MAXIMUM_LENGTH AS UNSIGNED)
                 FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND TABLE_NAME = ?",
            )
            .bind(&schema)
            .bind(&name)
            .fetch_all(&mut conn)
            .await
            .map_err(catalog_error)?;
            // MariaDB's JSON is a LONGTEXT with a `json_valid` check.
            let json: Vec<String> = sqlx::query_scalar(
                "SELECT CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS
                 WHERE CONSTRAINT_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND TABLE_NAME = ?",
            )
            .bind(&schema)
            .bind(&name)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
            Ok(rows
                .into_iter()
                .map(|(name, kind, fraction, scale, length)| {
                    let checked = format!("json_valid(`{}`)", name.replace('`', "``"));
                    let storage = match json.iter().any(|c| c.contains(&checked)) {
                        true => Storage::Json,
                        false => mysql(&kind, fraction, scale, length),
                    };
                    (name, storage)
                })
                .collect())
        }
        _ => Ok(HashMap::new()),
    }
}

/// A MySQL/MariaDB column: name, data type, fraction digits, decimal scale, character length.
type MysqlColumn = (String, String, Option<u64>, Option<u64>, Option<u64>);

/// A PostgreSQL column's storage from its type name and modifier.
fn postgres(kind: &str, typmod: i32) -> Storage {
    match kind {
        "timestamp" | "timestamptz" | "time" if (0..6).contains(&typmod) => Storage::Fraction {
            digits: typmod as u8,
            round: true,
        },
        "numeric" if typmod >= 4 => Storage::Scale((((typmod - 4) & 0xffff) as i16) as i8),
        "float4" => Storage::Float4,
        "json" | "jsonb" => Storage::Json,
        "bpchar" => Storage::Padded,
        "varchar" if typmod > 4 => Storage::Length((typmod - 4) as u32),
        "date" => Storage::Date,
        _ => Storage::Plain,
    }
}

/// The first `n` characters of `value`.
fn substr_len(value: Expr, n: u32) -> Expr {
    datafusion::functions::unicode::expr_fn::substring(value, lit(1i64), lit(n as i64))
}

/// A MySQL/MariaDB column's storage from `information_schema.COLUMNS`.
fn mysql(kind: &str, fraction: Option<u64>, scale: Option<u64>, length: Option<u64>) -> Storage {
    match kind.to_ascii_lowercase().as_str() {
        "datetime" | "timestamp" | "time" => match fraction {
            Some(d) if d < 6 => Storage::Fraction {
                digits: d as u8,
                round: false,
            },
            _ => Storage::Plain,
        },
        "decimal" => scale.map_or(Storage::Plain, |s| Storage::Scale(s as i8)),
        "float" => Storage::Float4,
        "json" => Storage::Json,
        "date" => Storage::Date,
        "char" => Storage::Padded,
        "varchar" => length.map_or(Storage::Plain, |n| Storage::Length(n as u32)),
        _ => Storage::Plain,
    }
}

/// `recon_round_float(x, scale)`: a float rounded to `scale` decimal places as a decimal column
/// stores it — from its shortest decimal text, half away from zero — not by float arithmetic.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RoundFloat {
    signature: Signature,
}

impl RoundFloat {
    fn new() -> RoundFloat {
        RoundFloat {
            signature: Signature::exact(
                vec![DataType::Float64, DataType::Int64],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for RoundFloat {
    fn name(&self) -> &str {
        "recon_round_float"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let scale = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(s))) => *s as u32,
            _ => return Ok(args.args[0].clone()),
        };
        let values = args.args[0].clone().into_array(args.number_rows)?;
        let values = values
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("not a float".into()))?;
        let out: Float64Array = values
            .iter()
            .map(|v| v.map(|x| round_float(x, scale)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

/// `x` rounded to `scale` places from its shortest decimal text, half away from zero.
pub fn round_float(x: f64, scale: u32) -> f64 {
    use rust_decimal::prelude::*;
    if !x.is_finite() {
        return x;
    }
    match Decimal::from_str(&x.to_string()) {
        Ok(d) => d
            .round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero)
            .to_string()
            .parse()
            .unwrap_or(x),
        // Beyond 28 digits: rounding to a handful of places leaves such a value unchanged.
        Err(_) => x,
    }
}

/// A scalar function of one text argument that maps each value through `map` (NULL stays NULL):
/// `recon_json` (canonical JSON) and `recon_nfc` (src/diff/options.rs).
#[derive(Debug)]
pub struct TextMap {
    name: &'static str,
    map: fn(&str) -> String,
    signature: Signature,
}

impl TextMap {
    pub fn udf(name: &'static str, map: fn(&str) -> String) -> ScalarUDF {
        ScalarUDF::from(TextMap {
            name,
            map,
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        })
    }
}

// A function is known by its name (recon registers each name with one map).
impl PartialEq for TextMap {
    fn eq(&self, other: &TextMap) -> bool {
        self.name == other.name
    }
}

impl Eq for TextMap {}

impl std::hash::Hash for TextMap {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for TextMap {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let values = args.args[0].clone().into_array(args.number_rows)?;
        let values = values
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("not text".into()))?;
        let out: StringArray = values.iter().map(|v| v.map(self.map)).collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

/// JSON text with object keys sorted and no spacing; text that is not JSON, unchanged.
pub fn canonical_json(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => sorted(value).to_string(),
        Err(_) => text.to_string(),
    }
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_as_decimals_do() {
        assert_eq!(round_float(0.125, 2), 0.13);
        assert_eq!(round_float(-0.125, 2), -0.13);
        assert_eq!(round_float(2.675, 2), 2.68, "2.675 is 2.67499… in binary");
        assert_eq!(round_float(1e-30, 3), 0.0);
        assert_eq!(round_float(1e300, 3), 1e300);
    }

    #[test]
    fn json_compares_parsed() {
        assert_eq!(
            canonical_json(r#"{"b": [1, {"d": 1, "c": 2}], "a": null}"#),
            r#"{"a":null,"b":[1,{"c":2,"d":1}]}"#
        );
        assert_eq!(canonical_json("not json"), "not json");
    }

    #[test]
    fn postgres_modifiers() {
        assert_eq!(
            postgres("timestamp", 3),
            Storage::Fraction {
                digits: 3,
                round: true
            }
        );
        assert_eq!(postgres("timestamp", -1), Storage::Plain);
        // numeric(6,3): typmod = (6 << 16 | 3) + 4
        assert_eq!(postgres("numeric", (6 << 16 | 3) + 4), Storage::Scale(3));
        assert_eq!(postgres("numeric", -1), Storage::Plain);
    }
}
