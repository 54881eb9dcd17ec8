//! `recon audit`: how far the destination has drifted from the source, read-only. The audit runs
//! the same diff as `plan` (same `[compare]` options, same memory bounds, the whole source even
//! in incremental mode), streams every change through [`Tally`] — counts per category, per
//! compared column the rows that differ, of which NULL↔value, and for numeric columns the
//! largest and total absolute difference — keeps `samples` changes per category, reads the rows
//! earlier applies failed to write, and records itself in the state store as a run (`audit`), so
//! that later audits show the trend. src/report/audit.rs renders it.
//!
//! Categories: **missing** (in the source only: `insert`), **changed** (`update`), **extra** (in
//! the destination only: `delete`, whether or not deletes are on), **unchanged**. Shares are of
//! the rows compared: every key of either side (unchanged + changed + missing + extra).

use std::str::FromStr;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde_json::Value;

use crate::changeset::{Action, Change, Changeset};
use crate::config::Job;
use crate::error::Result;
use crate::progress::Progress;
use crate::state::{FailedRow, Run, State};

/// Earlier audits shown in the trend.
const TREND: usize = 30;

/// A finished audit.
#[derive(Debug, Clone)]
pub struct Audit {
    /// The job, columns and counts; `changes` holds the samples (up to N per category).
    pub changeset: Changeset,
    pub audited_at: String,
    pub columns: Vec<ColumnDrift>,
    /// Rows the last apply failed to write, each with how many applies in a row it has failed.
    pub failing: Vec<FailedRow>,
    /// `[write] persistent_after`.
    pub persistent_after: u64,
    /// Earlier audits then this one, oldest first.
    pub trend: Vec<TrendPoint>,
}

/// One compared column's drift among the rows on both sides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnDrift {
    pub column: String,
    /// Changed rows where this column differs.
    pub rows: u64,
    /// Of those, NULL on one side and a value on the other.
    pub null_vs_value: u64,
    /// For a numeric column, over the rows where both sides hold numbers.
    pub max_abs_difference: Option<f64>,
    pub total_abs_difference: Option<f64>,
}

/// One audit in the trend.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrendPoint {
    pub audited_at: String,
    pub drift_share: f64,
}

impl Audit {
    /// Rows compared: every key of either side.
    pub fn compared(&self) -> u64 {
        let s = &self.changeset.summary;
        s.unchanged + s.update + s.insert + s.delete
    }

    /// Rows that are missing, changed or extra.
    pub fn drift(&self) -> u64 {
        self.changeset.summary.changes()
    }

    /// `rows` as a share (0–1) of the rows compared.
    pub fn share(&self, rows: u64) -> f64 {
        share(rows, self.compared())
    }

    /// The drift share of the audit before this one, if any.
    pub fn previous(&self) -> Option<f64> {
        let n = self.trend.len();
        (n >= 2).then(|| self.trend[n - 2].drift_share)
    }

    /// `up`, `down` or `same` against the previous audit.
    pub fn direction(&self) -> Option<&'static str> {
        let now = self.share(self.drift());
        self.previous().map(|before| {
            if (now - before).abs() < 1e-12 {
                "same"
            } else if now > before {
                "up"
            } else {
                "down"
            }
        })
    }

    /// The samples of one action.
    pub fn samples(&self, action: Action) -> impl Iterator<Item = &Change> {
        self.changeset
            .changes
            .iter()
            .filter(move |c| c.action == action)
    }
}

fn share(rows: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        rows as f64 / of as f64
    }
}

/// Audit `job`, keeping `samples` changes per category, and record the audit.
pub async fn audit(job: &Job, samples: usize, progress: &Progress) -> Result<Audit> {
    let started_at = crate::state::now();
    // The whole source, even in incremental mode: drift is about every row.
    let mut whole = job.clone();
    whole.source.cursor = None;
    let state = match crate::uses_state(job) {
        true => State::peek(job).await?,
        false => None,
    };
    let read = crate::source_read(&whole, state)?;
    let mut tally = Tally::new(samples);
    let mut sink = |shape: &Changeset, change: Change| {
        tally.add(shape, change);
        Ok(())
    };
    let mut changeset = crate::diff_snapshots(
        &whole,
        None,
        false,
        &read,
        progress,
        crate::diff::Output::Sink(&mut sink),
    )
    .await?;
    changeset.changes = std::mem::take(&mut tally.samples);
    let columns = tally.columns(&changeset);
    let mut store = State::open(job).await?;
    let failing = store.failed_rows().await?;
    let mut trend: Vec<TrendPoint> = store
        .history(TREND * 20)
        .await?
        .into_iter()
        .filter(|r| r.command == "audit")
        .take(TREND)
        .map(|r| TrendPoint {
            drift_share: share(
                (r.planned_insert + r.planned_update + r.planned_delete) as u64,
                (r.source_rows + r.planned_delete) as u64,
            ),
            audited_at: r.started_at,
        })
        .collect();
    trend.reverse();
    let s = changeset.summary;
    trend.push(TrendPoint {
        audited_at: started_at.clone(),
        drift_share: share(s.changes(), s.unchanged + s.changes()),
    });
    let run = Run {
        command: "audit".into(),
        started_at: started_at.clone(),
        finished_at: crate::state::now(),
        outcome: if s.changes() > 0 { "drift" } else { "ok" }.into(),
        source_rows: s.source_rows as i64,
        destination_rows: s.destination_rows as i64,
        planned_insert: s.insert as i64,
        planned_update: s.update as i64,
        planned_delete: s.delete as i64,
        ..Run::default()
    };
    store.record_run_only(&run).await?;
    Ok(Audit {
        changeset,
        audited_at: started_at,
        columns,
        failing,
        persistent_after: job.write.persistent_after,
        trend,
    })
}

/// Figures gathered change by change.
struct Tally {
    keep: usize,
    samples: Vec<Change>,
    kept: [usize; 3],
    rows: Vec<u64>,
    nulls: Vec<u64>,
    max: Vec<Option<Decimal>>,
    total: Vec<Option<Decimal>>,
}

impl Tally {
    fn new(keep: usize) -> Tally {
        Tally {
            keep,
            samples: Vec::new(),
            kept: [0; 3],
            rows: Vec::new(),
            nulls: Vec::new(),
            max: Vec::new(),
            total: Vec::new(),
        }
    }

    fn add(&mut self, shape: &Changeset, change: Change) {
        let n = shape.compared_columns.len();
        if self.rows.len() < n {
            self.rows.resize(n, 0);
            self.nulls.resize(n, 0);
            self.max.resize(n, None);
            self.total.resize(n, None);
        }
        if change.action == Action::Update {
            for i in 0..n {
                if !change.changed.get(i).copied().unwrap_or(false) {
                    continue;
                }
                self.rows[i] += 1;
                let (from, to) = (&change.destination[i], &change.source[i]);
                if from.is_null() != to.is_null() {
                    self.nulls[i] += 1;
                }
                let numeric = shape.compared_numeric.get(i).copied().unwrap_or(false);
                if let (true, Some(a), Some(b)) = (numeric, number(from), number(to)) {
                    let d = (a - b).abs();
                    self.max[i] = Some(self.max[i].map_or(d, |m| m.max(d)));
                    self.total[i] = Some(match self.total[i] {
                        Some(t) => t.checked_add(d).unwrap_or(Decimal::MAX),
                        None => d,
                    });
                }
            }
        }
        let slot = match change.action {
            Action::Insert => 0,
            Action::Update => 1,
            Action::Delete => 2,
        };
        if self.kept[slot] < self.keep {
            self.kept[slot] += 1;
            self.samples.push(change);
        }
    }

    fn columns(&self, shape: &Changeset) -> Vec<ColumnDrift> {
        shape
            .compared_columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let numeric = shape.compared_numeric.get(i).copied().unwrap_or(false);
                let figure = |v: Option<&Option<Decimal>>| match (numeric, v.copied().flatten()) {
                    (true, Some(d)) => d.to_f64(),
                    (true, None) => Some(0.0),
                    (false, _) => None,
                };
                ColumnDrift {
                    column: column.clone(),
                    rows: self.rows.get(i).copied().unwrap_or(0),
                    null_vs_value: self.nulls.get(i).copied().unwrap_or(0),
                    max_abs_difference: figure(self.max.get(i)),
                    total_abs_difference: figure(self.total.get(i)),
                }
            })
            .collect()
    }
}

/// A JSON number, or a decimal's exact text, as a decimal (NaN and infinities are not numbers).
fn number(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Decimal::from(i)),
            None => n
                .as_f64()
                .and_then(|f| Decimal::from_str(&f.to_string()).ok()),
        },
        Value::String(s) => Decimal::from_str_exact(s)
            .ok()
            .or_else(|| Decimal::from_scientific(s).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_exactly() {
        assert_eq!(number(&Value::from(3)), Some(Decimal::from(3)));
        assert_eq!(
            number(&Value::from("10.50")),
            Decimal::from_str("10.50").ok()
        );
        assert_eq!(number(&Value::from(0.1)), Decimal::from_str("0.1").ok());
        assert_eq!(number(&Value::from("NaN")), None);
        assert_eq!(number(&Value::Null), None);
    }
}
