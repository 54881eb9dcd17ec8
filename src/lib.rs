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

pub mod apply;
pub mod changeset;
pub mod check;
pub mod cli;
pub mod config;
pub mod connect;
pub mod diff;
pub mod error;
pub mod init;
pub mod progress;
pub mod report;
pub mod snapshot;
pub mod sql;
pub mod state;
pub mod types;
pub mod writeback;

pub use apply::{ApplyOptions, ApplyReport, apply};
pub use changeset::{Action, Change, Changeset, Summary};
pub use config::Job;
pub use error::{Error, Result, Side};
pub use progress::Progress;
pub use state::State;

/// Compute the job's changeset without writing anything: read both snapshots, check keys, diff.
/// `limit` caps the listed changes (counts are always complete); `None` lists all.
pub async fn plan(job: &Job, limit: Option<usize>, progress: &Progress) -> Result<Changeset> {
    let ctx = diff::session();
    connect::register_both(&ctx, job, None, progress).await?;
    diff::changeset(&ctx, job, limit).await
}

/// The full changeset with typed cells for every change, as `apply` writes it.
pub async fn plan_with_cells(job: &Job, progress: &Progress) -> Result<Changeset> {
    let ctx = diff::session();
    connect::register_both(&ctx, job, None, progress).await?;
    diff::changeset_with(&ctx, job, None, true).await
}
