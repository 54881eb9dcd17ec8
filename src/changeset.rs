//! The changeset: what the diff found, passed as a value to the report (and to writeback). Values
//! are JSON values so that every output format renders them the same way: integers and floats as
//! numbers, decimals as exact strings (`"10.50"`), timestamps as ISO-8601 text, NULL as `null`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// In the source, missing in the destination.
    Insert,
    /// In both, with at least one compared column different.
    Update,
    /// Only in the destination.
    Delete,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "insert" => Some(Action::Insert),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// Counts, always complete whatever `--limit` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub source_rows: u64,
    pub destination_rows: u64,
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
    pub unchanged: u64,
}

impl Summary {
    pub fn changes(&self) -> u64 {
        self.insert + self.update + self.delete
    }
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub action: Action,
    /// The key, one value per key column.
    pub key: Vec<Value>,
    /// The destination's record id (`Null` for inserts or when no `id` is configured).
    pub id: Value,
    /// Source values of the compared columns (`Null`s for deletes).
    pub source: Vec<Value>,
    /// Destination values of the compared columns (`Null`s for inserts).
    pub destination: Vec<Value>,
    /// Per compared column: does it differ?
    pub changed: Vec<bool>,
    /// The key and the source values as typed cells, for writeback (empty when only reporting).
    pub cells: Cells,
}

/// Typed values of one change, as writeback binds them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cells {
    pub key: Vec<Cell>,
    pub source: Vec<Cell>,
    /// Incremental mode: the source row's cursor value.
    pub cursor: Option<Cell>,
}

/// One typed value, converted from Arrow; what a database driver binds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    /// Spooled by its bits, so NaN and -0 survive (JSON has neither).
    Float(#[serde(with = "f64_bits")] f64),
    /// Exact decimal digits, e.g. `-12.50`.
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    Date(chrono::NaiveDate),
    Time(chrono::NaiveTime),
    Timestamp(chrono::NaiveDateTime),
    TimestampTz(chrono::DateTime<chrono::Utc>),
    /// PostgreSQL's `infinity` (`false`) or `-infinity` (`true`) date or timestamp.
    Infinity(bool),
}

/// The result of a diff.
#[derive(Debug, Clone, PartialEq)]
pub struct Changeset {
    pub job: String,
    /// Key column names, as the destination calls them.
    pub key_columns: Vec<String>,
    /// Compared column names, as the destination calls them.
    pub compared_columns: Vec<String>,
    /// Per compared column: compared as a number (integer, decimal or float).
    pub compared_numeric: Vec<bool>,
    pub summary: Summary,
    /// The listed changes: all of them, or the first `--limit`.
    pub changes: Vec<Change>,
    /// Incremental mode: the highest cursor value in the source window.
    pub cursor_max: Option<Cell>,
}

impl Changeset {
    /// Whether `changes` lists fewer rows than the summary counts.
    pub fn truncated(&self) -> bool {
        (self.changes.len() as u64) < self.summary.changes()
    }

    /// The key of a change as `{column: value}`.
    pub fn key_object(&self, change: &Change) -> serde_json::Map<String, Value> {
        self.key_columns
            .iter()
            .cloned()
            .zip(change.key.iter().cloned())
            .collect()
    }
}

/// Render a value for people: strings bare, NULL as `NULL`.
pub fn display(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An f64 as its IEEE-754 bits.
mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(f.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}
