//! recon: a SQL-diff reconciliation engine.
//!
//! A run pulls a **source** snapshot and a **destination** snapshot into Arrow, compares them with
//! SQL in DataFusion (`queries/`), and produces a [`Changeset`]: the rows to insert, update (with
//! the changed columns) and delete so the destination agrees with the source.
//!
//! ```text
//! job.toml ─▶ config::Job ─▶ connect (snapshots) ─▶ diff (queries/*.sql) ─▶ Changeset ─▶ report
//! ```
//!
//! Library use:
//!
//! ```no_run
//! # async fn run() -> recon::Result<()> {
//! let job = recon::Job::load(std::path::Path::new("orders.toml"))?;
//! let changeset = recon::plan(&job, None, &recon::Progress::hidden()).await?;
//! println!("{} rows would change", changeset.summary.changes());
//! # Ok(()) }
//! ```

// One `unsafe` block is allowed where it is: a socket option no dependency sets
// (src/connect/pgwire.rs `receive_mark`).
#![deny(unsafe_code)]

pub mod apply;
pub mod audit;
pub mod changeset;
pub mod check;
pub mod cli;
pub mod config;
pub mod connect;
pub mod diff;
pub mod engine;
pub mod error;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod init;
pub mod plan_file;
pub mod progress;
pub mod report;
pub mod reviewed;
pub mod snapshot;
pub mod sql;
pub mod stage;
pub mod state;
pub mod temporal;
pub mod types;
pub mod watermark;
pub mod writeback;

pub use apply::{ApplyOptions, ApplyReport, apply};
pub use changeset::{Action, Change, Changeset, Summary};
pub use config::Job;
pub use error::{Error, Result, Side};
pub use progress::Progress;
pub use state::State;

/// Compute the job's changeset without writing anything: read both snapshots, check keys, diff.
/// `limit` caps the listed changes (counts are always complete); `None` lists all. In incremental
/// mode the source is read from the saved watermark (the state store is only read).
pub async fn plan(job: &Job, limit: Option<usize>, progress: &Progress) -> Result<Changeset> {
    let read = planned_read(job).await?;
    diff_snapshots(job, limit, false, &read, progress, diff::Output::Listed).await
}

/// As [`plan`], handing the first `limit` changes (`None`: all) to `sink` as the diff produces
/// them instead of listing them: the returned changeset has the complete counts and no listed
/// changes.
pub async fn plan_streaming(
    job: &Job,
    limit: Option<usize>,
    progress: &Progress,
    sink: &mut diff::ChangeSink<'_>,
) -> Result<Changeset> {
    let read = planned_read(job).await?;
    diff_snapshots(job, limit, false, &read, progress, diff::Output::Sink(sink)).await
}

/// As [`plan_streaming`] for a plan to be saved (`recon plan --save`): every change, in listing
/// order, with the typed values that writeback binds.
pub async fn plan_for_review(
    job: &Job,
    progress: &Progress,
    sink: &mut diff::ChangeSink<'_>,
) -> Result<Changeset> {
    let read = planned_read(job).await?;
    diff_snapshots(
        job,
        Some(usize::MAX),
        true,
        &read,
        progress,
        diff::Output::Sink(sink),
    )
    .await
}

/// How a plan reads the source: from the saved watermark in incremental mode, with the saved
/// state for a `query` that refers to it (the state store is only read).
async fn planned_read(job: &Job) -> Result<watermark::SourceRead> {
    let state = match job.source.cursor.is_some() || uses_state(job) {
        true => State::peek(job).await?,
        false => None,
    };
    source_read(job, state)
}

/// Whether the source `query` refers to the saved state.
pub(crate) fn uses_state(job: &Job) -> bool {
    matches!(&job.source.relation, config::Relation::Query(q) if q.contains("$watermark") || q.contains("$state."))
}

/// How a job reads its source given its saved state: the window in incremental mode, and the
/// state for `$watermark`/`$state.<field>` in a source `query`.
pub fn source_read(job: &Job, state: Option<serde_json::Value>) -> Result<watermark::SourceRead> {
    let window = match (&job.source.cursor, watermark::of_state(state.as_ref())) {
        (Some(cursor), Some(mark)) => Some(watermark::Window {
            column: cursor.column.clone(),
            lower: watermark::lower_bound(mark, cursor.lag)?,
        }),
        _ => None,
    };
    Ok(watermark::SourceRead {
        window,
        state,
        keys: None,
    })
}

/// Read both snapshots (the source as `read` says) and diff them; with `cells`, every listed
/// change carries typed values for writeback.
pub async fn diff_snapshots(
    job: &Job,
    limit: Option<usize>,
    cells: bool,
    read: &watermark::SourceRead,
    progress: &Progress,
    output: diff::Output<'_, '_>,
) -> Result<Changeset> {
    let ctx = engine::session(job)?;
    // The catalogs are looked up while the snapshots are read.
    let (snapshots, catalog) = futures::join!(
        connect::register_both(&ctx, job, None, progress, Some(read)),
        diff::catalog(job)
    );
    snapshots?;
    let catalog = catalog?;
    failpoint::hit("after-read");
    let work = engine::work_dir(&ctx)?;
    let sizes = [&job.source, &job.destination].map(|e| match &e.location {
        config::Location::File(path, _) => engine::size_of(path),
        _ => engine::staged(&ctx, e.side)
            .held_bytes
            .unwrap_or_else(|| engine::size_of(&work.path().join(e.side.name()))),
    });
    // A diff_query runs in one pass (its SQL is the user's): join in constant memory instead.
    let passes = match job.diff_query {
        Some(_) => {
            engine::choose_join(&ctx, sizes);
            1
        }
        None => diff::passes(sizes[0].min(sizes[1]), engine::memory_limit(&ctx)),
    };
    let step = progress.step("comparing");
    let smaller_destination = sizes[1] < sizes[0];
    let layout = diff::Layout {
        passes,
        smaller_destination,
        key_order: sizes[1] >= sizes[0] / 2,
        catalog: Some(catalog),
    };
    let changeset = diff::changeset_with(&ctx, job, limit, cells, layout, output).await;
    step.done();
    changeset
}
