//! Incremental mode's watermark: the highest cursor value below which every source row has been
//! written or found unchanged. It lives in the job's state value — under `"watermark"` when the
//! state is an object, or as the whole value when the state is a string or a number (so
//! `recon state set JOB 2024-01-01T00:00:00Z` starts a backfill) — and keeps the cursor's own
//! type and precision: integers as JSON numbers, zoned timestamps as RFC 3339 with microseconds
//! (`2024-03-01T10:00:00.123456Z`), naive timestamps and dates as ISO text, SQLite text cursors
//! as the exact text read.
//!
//! Each run reads `cursor >= watermark - lag`; the bound is always passed to the database as a
//! parameter (or a DataFusion literal), never spliced into SQL.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use serde_json::{Map, Value};

use crate::changeset::Cell;
use crate::config::Lag;
use crate::error::{Error, Result};

/// The lower bound of a run's source window.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Int(i64),
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<Utc>),
    Date(NaiveDate),
}

/// The window a run reads: `column >= lower`.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub column: String,
    pub lower: Bound,
}

/// How this run reads the source: its window (incremental mode) and the saved state that a
/// source `query` may refer to as `$watermark` and `$state.<field>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceRead {
    pub window: Option<Window>,
    pub state: Option<Value>,
    /// For the destination in incremental mode: read only the rows with these keys.
    pub keys: Option<KeyFilter>,
}

/// The keys of the source window, as the destination names its key columns.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFilter {
    pub columns: Vec<String>,
    /// A JSON array with one array of key values per key (bound as one parameter).
    pub json: String,
}

/// The parameter style of a dialect, for [`bind_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamStyle {
    /// PostgreSQL under COPY (which takes no parameters): `NULLIF(current_setting('recon.pN'), '')`,
    /// each set beforehand with a bound `set_config`.
    Setting,
    /// SQLite: `?N`.
    Numbered,
    /// MySQL: `?`, bound in order.
    Positional,
}

/// Replace `$watermark` and `$state.<field>` in a user's query with parameters; returns the
/// rewritten query and the values to bind, in order (`Null` when the state has no such value).
/// Only these placeholders are rewritten; the values themselves never enter the SQL text.
pub fn bind_state(query: &str, state: Option<&Value>, style: ParamStyle) -> (String, Vec<Value>) {
    let mut out = String::with_capacity(query.len());
    let mut values = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let name_len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        let name = tail[..name_len].trim_end_matches('.');
        let value = match name.strip_prefix("state.") {
            _ if name == "watermark" => Some(of_state(state).cloned().unwrap_or(Value::Null)),
            Some(field) => Some(
                state
                    .and_then(|s| s.get(field))
                    .cloned()
                    .unwrap_or(Value::Null),
            ),
            None => None,
        };
        match value {
            Some(v) => {
                values.push(v);
                let n = values.len();
                out.push_str(&match style {
                    ParamStyle::Setting => format!("NULLIF(current_setting('recon.p{n}'), '')"),
                    ParamStyle::Numbered => format!("?{n}"),
                    ParamStyle::Positional => "?".to_string(),
                });
                rest = &tail[name.len()..];
            }
            None => {
                out.push('$');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    (out, values)
}

/// A state value as the text PostgreSQL settings hold ('' for NULL, read back as NULL).
pub fn setting_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The watermark inside a state value.
pub fn of_state(state: Option<&Value>) -> Option<&Value> {
    match state? {
        Value::Object(o) => o.get("watermark").filter(|v| !v.is_null()),
        Value::Null => None,
        other => Some(other),
    }
}

/// The state value with its watermark replaced (other fields of an object state are kept).
pub fn into_state(state: Option<Value>, watermark: Value) -> Value {
    let mut object = match state {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    };
    object.insert("watermark".into(), watermark);
    Value::Object(object)
}

fn invalid(watermark: &Value, why: &str) -> Error {
    Error::Guard {
        message: format!("the saved watermark {watermark} {why}"),
        hint: "set a valid one with `recon state set JOB.toml '{\"watermark\": \"2024-01-01T00:00:00Z\"}'` (or a number for an integer cursor), or `recon state reset JOB.toml` to read everything".into(),
    }
}

/// `watermark - lag`, typed from the watermark's own form.
pub fn lower_bound(watermark: &Value, lag: Lag) -> Result<Bound> {
    let micros = |lag: Lag| match lag {
        Lag::Micros(us) => Ok(TimeDelta::microseconds(us)),
        Lag::None => Ok(TimeDelta::zero()),
        Lag::Number(_) => Err(invalid(
            watermark,
            "is a timestamp or date, but `lag` is a number; write the lag as a duration (\"10m\")",
        )),
    };
    if let Some(n) = watermark.as_i64() {
        return match lag {
            Lag::Number(l) => Ok(Bound::Int(n.saturating_sub(l))),
            Lag::None => Ok(Bound::Int(n)),
            Lag::Micros(_) => Err(invalid(
                watermark,
                "is a number, but `lag` is a duration; write the lag as a number",
            )),
        };
    }
    let Some(text) = watermark.as_str() else {
        return Err(invalid(
            watermark,
            "is neither a number nor a timestamp or date",
        ));
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Bound::TimestampTz(t.with_timezone(&Utc) - micros(lag)?));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Bound::Timestamp(t - micros(lag)?));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let us = micros(lag)?.num_microseconds().unwrap_or(0);
        let days = (us + 86_399_999_999) / 86_400_000_000; // a part of a day re-reads that day
        return Ok(Bound::Date(d - TimeDelta::days(days)));
    }
    Err(invalid(watermark, "is not a timestamp, date or number"))
}

impl Bound {
    /// The bound as text in the form PostgreSQL and SQLite compare correctly: space-separated,
    /// trailing zeros of the fraction dropped (so it is never above a stored value it equals).
    pub fn text(&self) -> String {
        fn trimmed(t: &NaiveDateTime) -> String {
            let text = t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        match self {
            Bound::Int(n) => n.to_string(),
            Bound::Timestamp(t) => trimmed(t),
            Bound::TimestampTz(t) => trimmed(&t.naive_utc()),
            Bound::Date(d) => d.format("%Y-%m-%d").to_string(),
        }
    }
}

/// A cursor value as a watermark, in the cursor's own type and full precision.
pub fn to_json(cell: &Cell) -> Option<Value> {
    Some(match cell {
        Cell::Int(n) => Value::from(*n),
        Cell::TimestampTz(t) => Value::String(format!("{}Z", iso(&t.naive_utc()))),
        Cell::Timestamp(t) => Value::String(iso(t)),
        Cell::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        Cell::Text(s) => Value::String(s.clone()),
        Cell::Decimal(s) => Value::String(s.clone()),
        _ => return None,
    })
}

/// ISO text with microseconds when the value has a fraction (the snapshot's precision), none
/// when it falls on a whole second.
fn iso(t: &NaiveDateTime) -> String {
    use chrono::Timelike;
    if t.nanosecond() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    }
}

/// Order two cursor values of one column (NULLs and unlike kinds compare equal).
pub fn compare(a: &Cell, b: &Cell) -> Ordering {
    match (a, b) {
        (Cell::Int(x), Cell::Int(y)) => x.cmp(y),
        (Cell::TimestampTz(x), Cell::TimestampTz(y)) => x.cmp(y),
        (Cell::Timestamp(x), Cell::Timestamp(y)) => x.cmp(y),
        (Cell::Date(x), Cell::Date(y)) => x.cmp(y),
        (Cell::Text(x), Cell::Text(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounds_keep_precision_and_subtract_the_lag() {
        let b = lower_bound(
            &json!("2024-03-01T10:00:00.123456Z"),
            Lag::Micros(600_000_000),
        )
        .unwrap();
        assert_eq!(b.text(), "2024-03-01 09:50:00.123456");
        let b = lower_bound(&json!("2024-03-01 10:00:00"), Lag::None).unwrap();
        assert_eq!(
            b,
            Bound::Timestamp(
                NaiveDate::from_ymd_opt(2024, 3, 1)
                    .unwrap()
                    .and_hms_opt(10, 0, 0)
                    .unwrap()
            )
        );
        assert_eq!(b.text(), "2024-03-01 10:00:00");
        assert_eq!(
            lower_bound(&json!(100), Lag::Number(5)).unwrap(),
            Bound::Int(95)
        );
        assert!(lower_bound(&json!("x'; DROP TABLE t; --"), Lag::None).is_err());
    }

    #[test]
    fn state_placeholders_become_parameters() {
        let state = json!({"watermark": "2024-01-01", "page": 3});
        let (sql, values) = bind_state(
            "SELECT * FROM t WHERE at >= $watermark AND p = $state.page AND x = $1",
            Some(&state),
            ParamStyle::Numbered,
        );
        assert_eq!(sql, "SELECT * FROM t WHERE at >= ?1 AND p = ?2 AND x = $1");
        assert_eq!(values, vec![json!("2024-01-01"), json!(3)]);
        let (sql, values) = bind_state("SELECT $state.missing", None, ParamStyle::Setting);
        assert_eq!(sql, "SELECT NULLIF(current_setting('recon.p1'), '')");
        assert_eq!(values, vec![Value::Null]);
    }

    #[test]
    fn the_watermark_lives_in_the_state() {
        assert_eq!(
            of_state(Some(&json!({"watermark": 5, "page": 2}))),
            Some(&json!(5))
        );
        assert_eq!(
            of_state(Some(&json!("2024-01-01"))),
            Some(&json!("2024-01-01"))
        );
        assert_eq!(
            into_state(Some(json!({"page": 2})), json!(7)),
            json!({"page": 2, "watermark": 7})
        );
        let t = DateTime::parse_from_rfc3339("2024-03-01T10:00:00.000001Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            to_json(&Cell::TimestampTz(t)),
            Some(json!("2024-03-01T10:00:00.000001Z"))
        );
    }
}
