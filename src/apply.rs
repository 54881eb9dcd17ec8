//! `recon apply`: the plan, then the writes, then the record — in that order. One apply per job
//! at a time (a lock beside the state store); guards (`max_changes`, an empty source with deletes
//! on) refuse before any write; the run and its failed rows are recorded in one state
//! transaction only after the destination has been written, so a crash anywhere loses nothing:
//! the next run's diff finds whatever was not written.

use crate::changeset::Changeset;
use crate::config::{Job, MaxChanges};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::state::{FailedRow, Lock, Run, State, now};
use crate::watermark;
use crate::writeback::{self, Applied, pause_point};

/// Flags that change this run's guards.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Overrides `[write] max_changes` for this run.
    pub max_changes: Option<MaxChanges>,
    /// Skip the `max_changes` guard.
    pub force: bool,
    /// Let an empty source snapshot delete destination rows.
    pub allow_empty_source: bool,
    /// How many changes the report keeps in memory (`None`: all); every change is written
    /// regardless, and [`ApplyReport::changes`] reads them all back from the spool.
    pub list: Option<usize>,
}

/// What an apply did.
pub struct ApplyReport {
    /// The changeset's job, columns and counts, with the first changes (`ApplyOptions::list`).
    pub changeset: Changeset,
    /// Every change, spooled to local files (removed when the report is dropped).
    spool: writeback::Spool,
    pub deletes: bool,
    pub applied: Applied,
    /// Rows the destination refused, with how many consecutive applies they have failed in.
    pub failed: Vec<FailedRow>,
    pub run_id: i64,
    /// `[write] persistent_after`: failing this many applies in a row makes a row persistent.
    pub persistent_after: u64,
    /// A reviewed plan's changes found stale (also in `failed`) and already written.
    pub stale: u64,
    pub already_written: u64,
}

pub async fn apply(job: &Job, options: &ApplyOptions, progress: &Progress) -> Result<ApplyReport> {
    writeback::check_destination(job)?;
    let _lock = Lock::acquire(job)?;
    let mut state = State::open(job).await?;
    state.lock_shared().await?;
    state.check_writable().await?;
    let started_at = now();
    let saved = state.get().await?;
    let read = crate::source_read(job, saved.clone())?;
    let mut run = Run {
        command: "apply".into(),
        started_at,
        ..Run::default()
    };
    // The diff's output goes to a local spool as it is produced; only the listed changes stay.
    let mut spool = writeback::Spool::for_job(job, options.list)?;
    // With no guard that needs the totals, a diff in passes hands each pass's changes to
    // writeback as it ends, and they are written while the next passes run.
    let (changeset, handed) = match overlaps(job, options) {
        false => {
            let output = crate::diff::Output::Spool(&mut spool);
            let diffed = crate::diff_snapshots(job, options.list, true, &read, progress, output);
            (diffed.await?, None)
        }
        true => {
            let refuse_empty_source = job.write.deletes && !options.allow_empty_source;
            let parts = spool.hand_over(refuse_empty_source);
            let diffed = async {
                let output = crate::diff::Output::Spool(&mut spool);
                let diffed =
                    crate::diff_snapshots(job, options.list, true, &read, progress, output).await;
                spool.stop_handing();
                diffed
            };
            let written = writeback::write_handed(job, parts, job.write.deletes, progress);
            match futures::try_join!(diffed, written) {
                Ok(done) => done,
                Err(e) => {
                    let _ = stopped(&mut state, &mut run, "error", &e).await;
                    return Err(e);
                }
            }
        }
    };
    spool.close()?;
    let s = &changeset.summary;
    run.source_rows = s.source_rows as i64;
    run.destination_rows = s.destination_rows as i64;
    run.planned_insert = s.insert as i64;
    run.planned_update = s.update as i64;
    run.planned_delete = s.delete as i64;
    if let Err(refusal) = guard(job, options, &changeset) {
        stopped(&mut state, &mut run, "refused", &refusal).await?;
        return Err(refusal);
    }
    let written = match handed {
        Some(outcome) => Ok(outcome),
        None => {
            pause_point("before-write");
            writeback::write(job, &changeset, &spool, job.write.deletes, progress).await
        }
    };
    let outcome = match written {
        Ok(outcome) => outcome,
        Err(e) => {
            let _ = stopped(&mut state, &mut run, "error", &e).await;
            return Err(e);
        }
    };
    pause_point("before-state");
    crate::failpoint::hit("before-state");
    let failed = recorded(&mut state, &outcome.failed).await?;
    run.applied_insert = outcome.applied.insert as i64;
    run.applied_update = outcome.applied.update as i64;
    run.applied_delete = outcome.applied.delete as i64;
    run.failed = failed.len() as i64;
    run.outcome = if failed.is_empty() { "ok" } else { "partial" }.into();
    run.finished_at = now();
    let new_state = advance(saved.clone(), &changeset, &outcome.failed);
    if let Some(new) = &new_state {
        let old = watermark::of_state(saved.as_ref()).map_or("none".into(), |v| v.to_string());
        let new = watermark::of_state(Some(new)).map_or("none".into(), |v| v.to_string());
        run.message = Some(format!("watermark {old} → {new}"));
    }
    let run_id = state
        .record_with_state(&run, Some(&failed), new_state.as_ref())
        .await?;
    Ok(ApplyReport {
        changeset,
        spool,
        deletes: job.write.deletes,
        applied: outcome.applied,
        failed,
        run_id,
        persistent_after: job.write.persistent_after,
        stale: 0,
        already_written: 0,
    })
}

impl ApplyReport {
    /// A report of a reviewed plan's apply: `(stale, already written)` changes of the plan.
    pub(crate) fn new(
        changeset: Changeset,
        spool: writeback::Spool,
        job: &Job,
        applied: Applied,
        failed: Vec<FailedRow>,
        run_id: i64,
        (stale, already_written): (u64, u64),
    ) -> ApplyReport {
        ApplyReport {
            changeset,
            spool,
            deletes: job.write.deletes,
            applied,
            failed,
            run_id,
            persistent_after: job.write.persistent_after,
            stale,
            already_written,
        }
    }

    /// Every change of the run, read back from the spool: inserts, then updates, then deletes.
    pub fn changes(&self) -> Result<impl Iterator<Item = Result<crate::changeset::Change>>> {
        use crate::changeset::Action;
        Ok(self
            .spool
            .read(Action::Insert)?
            .chain(self.spool.read(Action::Update)?)
            .chain(self.spool.read(Action::Delete)?))
    }
}

/// The refused rows as the state store records them, each counting the applies in a row it has
/// failed in (this one included).
pub(crate) async fn recorded(
    state: &mut State,
    failures: &[writeback::Failure],
) -> Result<Vec<FailedRow>> {
    let previous = state.failing().await?;
    Ok(failures
        .iter()
        .map(|f| {
            let key = serde_json::Value::Object(f.key.clone()).to_string();
            FailedRow {
                action: f.action.name().into(),
                runs: previous.get(&key).copied().unwrap_or(0) + 1,
                key,
                error: f.error.clone(),
            }
        })
        .collect())
}

/// The state with the watermark moved to the highest cursor value below which every row of the
/// window was written or found unchanged: the window's maximum when nothing failed, else the
/// lowest cursor among the refused rows (so they are read again). `None` leaves the state as is.
fn advance(
    saved: Option<serde_json::Value>,
    changeset: &Changeset,
    failed: &[writeback::Failure],
) -> Option<serde_json::Value> {
    let candidate = if failed.is_empty() {
        changeset.cursor_max.clone()?
    } else {
        let cursors: Option<Vec<_>> = failed.iter().map(|f| f.cursor.clone()).collect();
        cursors?.into_iter().min_by(watermark::compare)?
    };
    let value = watermark::to_json(&candidate)?;
    if watermark::of_state(saved.as_ref()) == Some(&value) {
        return None;
    }
    Some(watermark::into_state(saved, value))
}

/// Record `run` as ended before the destination was fully written: `outcome` (`refused` or
/// `error`), with `why` as its message.
async fn stopped(state: &mut State, run: &mut Run, outcome: &str, why: &Error) -> Result<()> {
    run.outcome = outcome.into();
    run.finished_at = now();
    run.message = Some(why.to_string());
    state.record_run_only(run).await.map(|_| ())
}

/// Whether writes may start before the diff's totals are known: no `max_changes` guard (or
/// `--force`), and a database destination (an HTTP API is written after the diff). The diff
/// still hands nothing over unless it runs in passes with its key checks settled first (src/diff/mod.rs).
fn overlaps(job: &Job, options: &ApplyOptions) -> bool {
    let guarded = !options.force && options.max_changes.or(job.write.max_changes).is_some();
    !guarded && !matches!(job.destination.location, crate::config::Location::Http(_))
}

/// Refuse before any write when more rows would change than allowed, or when an empty source
/// would delete rows.
pub(crate) fn guard(job: &Job, options: &ApplyOptions, changeset: &Changeset) -> Result<()> {
    let s = &changeset.summary;
    let deletes = if job.write.deletes { s.delete } else { 0 };
    if job.write.deletes && s.source_rows == 0 && deletes > 0 && !options.allow_empty_source {
        return Err(Error::Guard {
            message: format!("the source snapshot is empty: applying would delete all {deletes} destination rows"),
            hint: "check the source; if the destination really must be emptied, pass `--allow-empty-source`".into(),
        });
    }
    let changes = s.insert + s.update + deletes;
    let limit = match (options.force, options.max_changes.or(job.write.max_changes)) {
        (true, _) | (_, None) => return Ok(()),
        (false, Some(limit)) => limit,
    };
    let (allowed, described) = match limit {
        MaxChanges::Rows(n) => (n, format!("{n} rows")),
        // A share of nothing allows nothing: an initial load would always be refused. A
        // percentage guards an existing destination; an empty one is filled, and the run says so.
        MaxChanges::Percent(p) if s.destination_rows == 0 => {
            tracing::warn!(
                "max_changes = {p}% does not apply to an empty destination: writing all {changes} rows (an initial load); set a row count to cap it"
            );
            return Ok(());
        }
        MaxChanges::Percent(p) => {
            let n = (s.destination_rows as f64 * p / 100.0).floor() as u64;
            (
                n,
                format!("{p}% of {} destination rows ({n})", s.destination_rows),
            )
        }
    };
    if changes <= allowed {
        return Ok(());
    }
    Err(Error::Guard {
        message: format!(
            "max_changes: {changes} rows would change ({} insert, {} update, {deletes} delete), more than the limit of {described}; nothing was written",
            s.insert, s.update
        ),
        hint: format!(
            "if this is expected, allow it for this run with `--max-changes {changes}` or `--force` (or raise `[write] max_changes`)"
        ),
    })
}
