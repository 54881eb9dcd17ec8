//! `recon apply --plan PLAN`: write exactly a reviewed plan (src/plan_file.rs) and nothing else.
//!
//! Refused whole, before anything is read, when the plan does not fit the job (fingerprint),
//! is older than `--max-age`, was applied before (its digest is recorded with the run that
//! applied it), or is not whole. Otherwise, under the job's lock: the destination is read once
//! and each change is checked against the row as it is now, a slice of the plan at a time —
//!
//! - still as reviewed (an update's or delete's row holds the plan's "before" values; an
//!   insert's key is absent) → written, through the usual writeback (batches, per-row failures);
//! - already as the plan wants it (a rerun after a crash: the update's changed columns hold the
//!   "after" values, the inserted row is there with them, the deleted row is gone) → skipped;
//! - anything else (someone changed the row since the review, deleted it, or inserted the key) →
//!   **stale**: not written, reported with what changed and recorded like a failed row (exit 3).
//!
//! Values are compared as the destination shows them, numbers by value (`10.5` = `"10.50"`).
//! A reviewed plan does not move the watermark; the guards apply to the plan's counts.

use std::collections::HashMap;
use std::str::FromStr;

use futures::StreamExt;
use serde_json::Value;

use crate::apply::{ApplyOptions, ApplyReport};
use crate::changeset::{Action, Change};
use crate::config::Job;
use crate::error::{Error, Result};
use crate::plan_file::{Plan, fingerprint};
use crate::progress::Progress;
use crate::state::{Lock, Run, State, now};
use crate::writeback::{self, pause_point};

/// Changes checked against the destination at a time.
const SLICE: usize = 50_000;

/// What a change is, against the destination as it is now.
enum Verdict {
    Write,
    Done,
    Stale(String),
}

/// Refuse a plan that does not fit `job`, is too old, or was applied already.
async fn admit(
    job: &Job,
    plan: &Plan,
    max_age: std::time::Duration,
    state: &mut State,
) -> Result<()> {
    let refuse = |reason: String| Error::Plan {
        path: plan.path.clone(),
        reason,
    };
    if plan.header.job != job.name {
        return Err(refuse(format!(
            "it is a plan of job `{}`, not `{}`",
            plan.header.job, job.name
        )));
    }
    if plan.header.fingerprint != fingerprint(job)? {
        return Err(refuse(
            "the job file changed since the plan was computed (sides, mapping, compare options or `[write] deletes`)".into(),
        ));
    }
    let created = chrono::DateTime::parse_from_rfc3339(&plan.header.created_at)
        .map_err(|_| refuse("its creation time is not a timestamp".into()))?;
    let age = (chrono::Utc::now() - created.with_timezone(&chrono::Utc))
        .to_std()
        .unwrap_or_default();
    if age > max_age {
        return Err(refuse(format!(
            "it was computed {} ago, more than --max-age ({})",
            humanize(age),
            humanize(max_age)
        )));
    }
    if let Some(run) = state.plan_applied(&plan.trailer.digest).await? {
        return Err(refuse(format!(
            "it was applied already (run {run}); a plan is applied once"
        )));
    }
    Ok(())
}

fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

pub async fn apply_plan(
    job: &Job,
    path: &std::path::Path,
    max_age: std::time::Duration,
    options: &ApplyOptions,
    progress: &Progress,
) -> Result<ApplyReport> {
    writeback::check_destination(job)?;
    let plan = Plan::open(path)?;
    let _lock = Lock::acquire(job)?;
    let mut state = State::open(job).await?;
    state.lock_shared().await?;
    state.check_writable().await?;
    admit(job, &plan, max_age, &mut state).await?;
    let started_at = now();
    let shell = plan.shell();
    crate::apply::guard(job, options, &shell)?;
    // The destination as it is now; the source only for its columns (the mapping resolves
    // against both).
    let ctx = crate::engine::session(job)?;
    let wanted = crate::error::Side::BOTH.map(|side| crate::connect::wanted(job, side));
    crate::connect::register(
        &ctx,
        &job.source,
        Some(0),
        progress,
        None,
        &wanted[0],
        None,
        None,
    )
    .await?;
    crate::connect::register(
        &ctx,
        &job.destination,
        None,
        progress,
        None,
        &wanted[1],
        None,
        None,
    )
    .await?;
    let resolved = crate::diff::destination_view(&ctx, job).await?;
    let mut spool = writeback::Spool::for_job(job, options.list)?;
    let mut stale = Vec::new();
    let mut done = 0u64;
    let mut changes = plan.changes()?.peekable();
    while changes.peek().is_some() {
        let slice = changes
            .by_ref()
            .take(SLICE)
            .collect::<Result<Vec<Change>>>()?;
        let now = current(&ctx, &slice, resolved.keys.len(), resolved.compared.len()).await?;
        for (change, row) in slice.into_iter().zip(now) {
            match verdict(
                &change,
                row.as_deref(),
                &shell.compared_columns,
                &shell.compared_numeric,
            ) {
                Verdict::Write => spool.push(change)?,
                Verdict::Done => done += 1,
                Verdict::Stale(why) => stale.push(writeback::Failure {
                    action: change.action,
                    key: shell.key_object(&change),
                    error: format!("stale: {why}; not written"),
                    cursor: None,
                }),
            }
        }
    }
    let mut changeset = shell.clone();
    changeset.changes = spool.close()?;
    crate::failpoint::hit("mid-plan");
    pause_point("before-write");
    let outcome = writeback::write(job, &shell, &spool, job.write.deletes, progress).await?;
    pause_point("before-state");
    crate::failpoint::hit("before-state");
    let stale_count = stale.len();
    let mut refused = outcome.failed;
    refused.extend(stale);
    let failed = crate::apply::recorded(&mut state, &refused).await?;
    let s = plan.trailer.summary;
    let run = Run {
        command: "apply --plan".into(),
        started_at,
        finished_at: now(),
        outcome: if failed.is_empty() { "ok" } else { "partial" }.into(),
        source_rows: s.source_rows as i64,
        destination_rows: s.destination_rows as i64,
        planned_insert: s.insert as i64,
        planned_update: s.update as i64,
        planned_delete: s.delete as i64,
        applied_insert: outcome.applied.insert as i64,
        applied_update: outcome.applied.update as i64,
        applied_delete: outcome.applied.delete as i64,
        failed: failed.len() as i64,
        message: Some(format!(
            "plan {}; {} stale, {done} already written",
            plan.trailer.digest, stale_count
        )),
        ..Run::default()
    };
    let run_id = state.record_with_state(&run, Some(&failed), None).await?;
    Ok(ApplyReport::new(
        changeset,
        spool,
        job,
        outcome.applied,
        failed,
        run_id,
        (stale_count as u64, done),
    ))
}

/// The destination's compared values now (`o0…`, as JSON) for each change's key, or `None` where
/// no row has it: one read of the staged destination per slice.
async fn current(
    ctx: &datafusion::prelude::SessionContext,
    slice: &[Change],
    keys: usize,
    compared: usize,
) -> Result<Vec<Option<Vec<Value>>>> {
    let wanted: HashMap<String, usize> = slice
        .iter()
        .enumerate()
        .map(|(i, c)| (Value::Array(c.key.clone()).to_string(), i))
        .collect();
    let mut found: Vec<Option<Vec<Value>>> = vec![None; slice.len()];
    let columns: Vec<String> = (0..keys)
        .map(|i| format!("k{i}"))
        .chain((0..compared).map(|i| format!("o{i}")))
        .collect();
    let query = format!("SELECT {} FROM d_all", columns.join(", "));
    let mut stream = crate::diff::sql(ctx, &query)
        .await?
        .execute_stream()
        .await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        for row in 0..batch.num_rows() {
            let key: Vec<Value> = (0..keys)
                .map(|i| crate::diff::json_value(batch.column(i), row))
                .collect();
            if let Some(&i) = wanted.get(&Value::Array(key).to_string()) {
                found[i] = Some(
                    (keys..keys + compared)
                        .map(|c| crate::diff::json_value(batch.column(c), row))
                        .collect(),
                );
            }
        }
    }
    Ok(found)
}

fn verdict(
    change: &Change,
    now: Option<&[Value]>,
    columns: &[String],
    numeric: &[bool],
) -> Verdict {
    let differs = |want: &[Value], only: &dyn Fn(usize) -> bool, now: &[Value]| -> Vec<String> {
        (0..columns.len())
            .filter(|i| only(*i) && !same(&want[*i], &now[*i], numeric.get(*i) == Some(&true)))
            .map(|i| {
                format!(
                    "{}: reviewed {}, now {}",
                    columns[i],
                    crate::changeset::display(&want[i]),
                    crate::changeset::display(&now[i])
                )
            })
            .collect()
    };
    let all = |_: usize| true;
    match (change.action, now) {
        (Action::Insert, None) => Verdict::Write,
        (Action::Insert, Some(now)) if differs(&change.source, &all, now).is_empty() => {
            Verdict::Done
        }
        (Action::Insert, Some(_)) => {
            Verdict::Stale("a destination row with this key was written since the review".into())
        }
        (Action::Update, None) => {
            Verdict::Stale("the destination row was deleted since the review".into())
        }
        (Action::Delete, None) => Verdict::Done,
        (action, Some(now)) => {
            let changes = differs(&change.destination, &all, now);
            if changes.is_empty() {
                return Verdict::Write;
            }
            // A rerun after a crash: the written columns hold the plan's values, the rest as reviewed.
            let written = |i: usize| change.changed.get(i).copied().unwrap_or(false);
            let kept = |i: usize| !written(i);
            if action == Action::Update
                && differs(&change.source, &written, now).is_empty()
                && differs(&change.destination, &kept, now).is_empty()
            {
                return Verdict::Done;
            }
            Verdict::Stale(format!(
                "the destination row changed since the review ({})",
                changes.join("; ")
            ))
        }
    }
}

/// Equal as values: the same JSON, or in a numeric column numbers equal by value (`10.5` and
/// `"10.50"`).
fn same(a: &Value, b: &Value, numeric: bool) -> bool {
    if a == b {
        return true;
    }
    if !numeric {
        return false;
    }
    let number = |v: &Value| match v {
        Value::Number(n) => rust_decimal::Decimal::from_str(&n.to_string()).ok(),
        Value::String(s) => rust_decimal::Decimal::from_str(s).ok(),
        _ => None,
    };
    matches!((number(a), number(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_value() {
        assert!(same(&Value::from(10.5), &Value::from("10.50"), true));
        assert!(!same(&Value::from(10.5), &Value::from("10.51"), true));
        assert!(!same(&Value::Null, &Value::from(0), true));
        assert!(same(&Value::from("A-1"), &Value::from("A-1"), false));
        assert!(!same(&Value::from("007"), &Value::from("7"), false));
    }
}
