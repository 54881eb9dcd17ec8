//! `recon check`: validate the job, reach both sides and the state store, and check the mapping
//! against what the sides hold — without writing anything. Every problem is collected so one run lists them all. Database
//! sides are sampled (the first rows), so checking a large table is quick.

use crate::config::Job;
use crate::connect;
use crate::diff;
use crate::error::{Error, Side};
use crate::progress::Progress;

/// Rows read per database side to learn column types.
pub const SAMPLE_ROWS: usize = 1000;

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// One line per side that could be read: `source: postgres://…/dw (3 columns)`.
    pub reached: Vec<String>,
    /// Advice that is not a problem (a match key without an index).
    pub notes: Vec<String>,
    /// One line per mapped pair: each side's type, the type they are compared in, and how the
    /// destination stores the source's values when it holds less (a warning).
    pub pairs: Vec<String>,
    pub problems: Vec<Error>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub async fn check(job: &Job, progress: &Progress) -> CheckReport {
    let mut report = CheckReport::default();
    let ctx = match crate::engine::session(job) {
        Ok(ctx) => ctx,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    let wanted = Side::BOTH.map(|side| connect::wanted(job, side));
    let (source, destination) = tokio::join!(
        connect::register(
            &ctx,
            &job.source,
            Some(SAMPLE_ROWS),
            progress,
            None,
            &wanted[0],
            None,
            None
        ),
        connect::register(
            &ctx,
            &job.destination,
            Some(SAMPLE_ROWS),
            progress,
            None,
            &wanted[1],
            None,
            None
        ),
    );
    for (side, result) in Side::BOTH.into_iter().zip([source, destination]) {
        match result {
            Ok(()) => report.reached.push(describe(&ctx, job, side).await),
            Err(e) => report.problems.push(e),
        }
    }
    match crate::state::probe(job).await {
        Ok(line) => report.reached.push(line),
        Err(e) => report.problems.push(e),
    }
    if let Some(path) = &job.diff_query
        && !path.is_file()
    {
        report.problems.push(Error::Io {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the diff_query file does not exist",
            ),
        });
    }
    if report.ok()
        && let Ok(Some(note)) = connect::missing_index_note(job).await
    {
        report.notes.push(note);
    }
    if report.ok() {
        match diff::resolve_registered(&ctx, job).await {
            Ok(resolved) => {
                let storage = diff::stored::destination(job).await.unwrap_or_default();
                for m in resolved.keys.iter().chain(&resolved.compared) {
                    report
                        .pairs
                        .push(pair_line(m, storage.get(&m.destination).copied()));
                }
            }
            Err(Error::Mapping(problems)) => report.problems.extend(problems),
            Err(e) => report.problems.push(e),
        }
    }
    report
}

async fn describe(ctx: &datafusion::prelude::SessionContext, job: &Job, side: Side) -> String {
    let columns = match ctx.table(side.name()).await {
        Ok(t) => t.schema().fields().len(),
        Err(_) => 0,
    };
    format!(
        "{side}: {} ({columns} columns)",
        job.endpoint(side).location.display()
    )
}

/// `source price (decimal(10,2)) → destination total_price (float (Float64)): compared as float
/// (Float64)`, and when the destination holds less than the source can, how it stores values.
fn pair_line(m: &diff::Mapped, storage: Option<diff::stored::Storage>) -> String {
    use crate::types::describe;
    let mut line = format!(
        "pair: source `{}` ({}) → destination `{}` ({}): compared as {}",
        m.source,
        describe(&m.source_type),
        m.destination,
        describe(&m.destination_type),
        describe(&m.common)
    );
    let column = datafusion::prelude::ident("x");
    let narrower =
        storage.filter(|s| s.apply(column.clone(), &m.common) != column || s.both_sides());
    if let Some(how) = narrower.and_then(|s| s.describe()) {
        line.push_str(&format!(
            "; warning: the destination stores source values {how}, and they are compared so"
        ));
    }
    line
}
