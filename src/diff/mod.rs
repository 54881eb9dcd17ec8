//! The diff: with both snapshots registered as `source` and `destination`, project each into the
//! views `s` and `d` (mapped key and compared columns, renamed `k0…`, `v0…` and cast to their
//! common types), check the keys (queries/key_checks.sql), then run queries/diff.sql — or the
//! user's `diff_query` wrapped by queries/user_diff.sql — read-only, and collect the changeset.

mod bucket;
mod join;
mod options;
mod resolve;
mod rows;
pub mod stored;

use datafusion::arrow::datatypes::DataType;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, ident, lit};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;

pub use bucket::hash_value as bucket_hash_value;
pub use bucket::passes;
pub use bucket::{Estimate, KeyRange, values as bucket_values};
pub use resolve::{Mapped, Resolved, resolve};
pub use rows::{changes_of, json_value};

use crate::changeset::Changeset;
use crate::config::Job;
use crate::error::{Error, Result, Side};

const DIFF_SQL: &str = include_str!("../../queries/diff.sql");
const USER_DIFF_SQL: &str = include_str!("../../queries/user_diff.sql");
const KEY_CHECKS_SQL: &str = include_str!("../../queries/key_checks.sql");
/// Rows of the diff's output written (and so read back, and built into changes) at a time.
const CHANGES_PER_SLICE: usize = 4096;

/// Read-only: no DDL, no DML, no `SET`.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Run SQL read-only in the session.
pub async fn sql(ctx: &SessionContext, query: &str) -> Result<DataFrame> {
    Ok(ctx.sql_with_options(query, read_only()).await?)
}

/// Resolve the mapping against the registered snapshots.
pub async fn resolve_registered(ctx: &SessionContext, job: &Job) -> Result<Resolved> {
    let source = ctx.table(Side::Source.name()).await?;
    let destination = ctx.table(Side::Destination.name()).await?;
    resolve(
        job,
        source.schema().as_arrow(),
        destination.schema().as_arrow(),
    )
    .map_err(Error::Mapping)
}

/// Compute the changeset of the registered snapshots, listing at most `limit` changes.
pub async fn changeset(ctx: &SessionContext, job: &Job, limit: Option<usize>) -> Result<Changeset> {
    changeset_with(ctx, job, limit, false, Layout::default(), Output::Listed).await
}

/// How the diff runs, decided once the snapshots are read.
#[derive(Default)]
pub struct Layout {
    /// Passes over the staged snapshots (src/diff/bucket.rs); 0 or 1: one.
    pub passes: u64,
    /// The join holds the destination in memory rather than the source.
    pub smaller_destination: bool,
    /// A spooled changeset (an apply's) is sorted by key, pass by pass, for writes in the
    /// destination's key order (src/writeback/spool.rs). Worth its sort when the destination
    /// holds much of what the source does: the changes then land among rows already indexed;
    /// into an empty or small destination (an initial load) rows go in the order the diff finds
    /// them (1M-row initial load: the same time sorted, and 300 MB more memory for the sort).
    pub key_order: bool,
    /// The catalog facts, looked up while the snapshots were read ([`catalog`]); `None`: looked
    /// up first.
    pub catalog: Option<Catalog>,
}

/// What the sides' catalogs say, looked up while the snapshots are read: at 1M rows, the three
/// lookups on their own connections took ~25 ms after the reads.
pub struct Catalog {
    /// Each destination column's storage (src/diff/stored.rs).
    storage: std::collections::HashMap<String, stored::Storage>,
    /// Whether each side's catalog proves its key columns (as `[match]` names them) unique and
    /// never NULL (source, destination).
    proven: [bool; 2],
}

/// Look up the catalog facts of `job`'s sides, all at once.
pub async fn catalog(job: &Job) -> Result<Catalog> {
    let source_keys: Vec<String> = job.keys.iter().map(|k| k.source.clone()).collect();
    let destination_keys: Vec<String> = job.keys.iter().map(|k| k.destination.clone()).collect();
    let (storage, source, destination) = futures::join!(
        stored::destination(job),
        crate::connect::key_proven_unique(&job.source, &source_keys),
        crate::connect::key_proven_unique(&job.destination, &destination_keys),
    );
    Ok(Catalog {
        storage: storage?,
        proven: [source, destination],
    })
}

/// Receives every change as the diff produces it, with the changeset's job and columns (its
/// `changes` empty): output that is written as it is produced, holding no changeset in memory.
pub type ChangeSink<'a> = dyn FnMut(&Changeset, crate::changeset::Change) -> Result<()> + Send + 'a;

/// Where the diff's changes go, besides the counts.
pub enum Output<'s, 'a> {
    /// The first `limit` changes are listed in the changeset.
    Listed,
    /// The first `limit` changes go to a sink as the diff produces them (the changeset lists
    /// none).
    Sink(&'s mut ChangeSink<'a>),
    /// Each pass's output, every change of it, is written into the spool's folder as it is
    /// produced and kept there as it is (an apply): changes are built from it only as writeback
    /// reads them back. The first `limit` are listed as well. No change is serialised in between.
    Spool(&'s mut crate::writeback::Spool),
}

/// As [`changeset`]; with `cells`, each listed change also carries typed cells for writeback.
/// Changes go to `output`. The key checks and the diff run as `layout` says; a `diff_query`
/// always runs in one pass.
pub async fn changeset_with(
    ctx: &SessionContext,
    job: &Job,
    limit: Option<usize>,
    cells: bool,
    layout: Layout,
    mut output: Output<'_, '_>,
) -> Result<Changeset> {
    let Layout {
        passes,
        smaller_destination,
        key_order,
        catalog,
    } = layout;
    let catalog = match catalog {
        Some(catalog) => catalog,
        None => self::catalog(job).await?,
    };
    let resolved = prepare(ctx, job, &catalog.storage).await?;
    let shell = Changeset {
        job: job.name.clone(),
        key_columns: resolved.key_names(),
        compared_columns: resolved.compared_names(),
        compared_numeric: resolved
            .compared
            .iter()
            .map(|m| m.common.is_numeric())
            .collect(),
        summary: Default::default(),
        changes: Vec::new(),
        cursor_max: None,
    };
    // A listing in order needs the diff sorted (see queries/diff.sql), not `--limit 0` nor an
    // apply's writeback (cells, every change, its listing the first ones written) — unless the
    // layout asks for writes in key order.
    let spooled = matches!(output, Output::Spool(_));
    let ordered = match spooled {
        true => key_order,
        false => limit != Some(0) && !(cells && limit.is_none()),
    };
    register_view(ctx, Side::Source, &resolved).await?;
    register_view(ctx, Side::Destination, &resolved).await?;
    let mut passes = if job.diff_query.is_some() {
        1
    } else {
        passes.max(1)
    };
    // A side staged in buckets by its key as compared (src/stage.rs) is not split again: its
    // buckets are grouped into passes. More than half as many passes as buckets would leave
    // some passes twice the share of others: one pass per bucket then.
    let mut staged_buckets = Side::BOTH.map(|side| {
        crate::engine::staged(ctx, side).bucketed
            && matches!(&resolved.keys[..], [m] if {
                let (name, _) = side_column(side, m);
                side_values(side, m).1 == ident(name)
            })
    });
    // Both sides dealt by one key range (src/diff/bucket.rs `KeyRange`), or both by hash: a side
    // dealt by a range the other was not is split again.
    let ranges = Side::BOTH.map(|side| crate::engine::staged(ctx, side).range);
    let mut range = match ranges {
        [Some(a), Some(b)] if a == b => Some(a),
        _ => None,
    };
    for (staged, side_range) in staged_buckets.iter_mut().zip(ranges) {
        *staged &= side_range == range;
    }
    let buckets = crate::stage::BUCKETS as u64;
    if passes > 1 && passes <= buckets && staged_buckets.contains(&true) {
        if passes > buckets / 2 {
            passes = buckets;
        }
    } else {
        staged_buckets = [false; 2];
    }
    // A key bunched in a few blocks of its range (or an estimate far off) leaves some passes
    // much more than their share: then both sides are split again, by hash.
    if passes > 1 && range.is_some() && staged_buckets.contains(&true) {
        let work = crate::engine::work_dir(ctx)?;
        let skewed = Side::BOTH
            .into_iter()
            .zip(staged_buckets)
            .filter(|(_, staged)| *staged)
            .any(|(side, _)| bucket::skewed(&work.path().join(side.name()), passes));
        if skewed {
            tracing::info!("the key's values are bunched in its range: passes by hash instead");
            range = None;
            staged_buckets = [false; 2];
        }
    }
    // Only buckets checked above split a side by range: two sides both split after they are
    // read (none staged in buckets to check) are split by hash.
    if !staged_buckets.contains(&true) {
        range = None;
    }
    if passes > 1 {
        ctx.register_udf(bucket::Bucket::udf(range));
        tracing::info!(
            passes,
            "the snapshots exceed the memory budget: diffing in passes"
        );
    }
    let mut collector = rows::Collector::new(resolved.keys.len(), resolved.compared.len(), limit);
    collector.cells = cells;
    let mut checks = [
        KeyCheck::new(Side::Source),
        KeyCheck::new(Side::Destination),
    ];
    // Keys a side's catalog proves unique and present need no checking (compared as they are
    // stored, or widened between integers: no two values can meet).
    let faithful = |from: &DataType, m: &Mapped| {
        (from == &m.common || (from.is_integer() && m.common.is_integer()))
            && m.storage == stored::Storage::Plain
    };
    checks[0].proven =
        catalog.proven[0] && resolved.keys.iter().all(|m| faithful(&m.source_type, m));
    checks[1].proven = catalog.proven[1]
        && resolved
            .keys
            .iter()
            .all(|m| faithful(&m.destination_type, m));
    // One integer key column (all but unsigned 64-bit values fit a BIGINT): checked without a
    // grouping.
    let integer_key =
        matches!(&resolved.keys[..], [m] if m.common.is_integer() && m.common != DataType::UInt64);
    for check in checks.iter_mut() {
        check.integer_key = integer_key;
    }
    // A side whose one integer key was counted while it was staged (src/stage.rs) is not read
    // again for its checks, unless it has NULL or duplicated keys (then each pass finds its
    // share and its samples, as before).
    if let [m] = &resolved.keys[..]
        && integer_key
    {
        for (check, from) in checks.iter_mut().zip([&m.source_type, &m.destination_type]) {
            if let Some(facts) = crate::engine::staged(ctx, check.side).key
                && faithful(from, m)
                && facts.nulls == 0
                && facts.duplicates == 0
            {
                check.rows = facts.rows;
                check.counted = true;
            }
        }
    }
    // Files removed while the passes run: the split snapshots, then each pass's buckets.
    let mut removals = Vec::new();
    let buckets = match passes > 1 {
        true => {
            let (buckets, removal) =
                split_sides(ctx, &resolved, passes, staged_buckets, range).await?;
            crate::engine::read_buckets_whole(ctx);
            removals.push(removal);
            Some(buckets)
        }
        false => None,
    };
    // The join's build side: the smaller side (see queries/diff.sql).
    let left = match smaller_destination && resolved.cursor.is_none() {
        true => Side::Destination,
        false => Side::Source,
    };
    if buckets.is_none() && job.diff_query.is_none() {
        arrange_held(ctx, &resolved, left).await?;
    }
    // An apply whose guards need no totals asked for each pass's output as it is written
    // (src/apply.rs): handed over only when no pass can fail the key checks (each side counted
    // while staged or its key proven by the catalog) and, when an empty source must refuse,
    // the source is known to have rows. The changes of one pass are then written while the
    // next passes run.
    let handing = match &output {
        Output::Spool(spool) => spool.handoff().is_some_and(|refuse_empty_source| {
            passes > 1
                && checks.iter().all(|c| c.counted || c.proven)
                && (!refuse_empty_source || (checks[0].counted && checks[0].rows > 0))
        }),
        _ => false,
    };
    if handing {
        tracing::info!(passes, "each pass's changes are written as the pass ends");
    }
    let mut cursor_max: Option<crate::changeset::Cell> = None;
    for pass in 0..passes {
        let folders = buckets
            .as_ref()
            .map(|[s, d]| [&s[pass as usize], &d[pass as usize]]);
        select_pass(ctx, &resolved, folders).await?;
        let started = std::time::Instant::now();
        let source_keys: Vec<String> = resolved.keys.iter().map(|m| m.source.clone()).collect();
        // The two sides' checks on two threads.
        let run = |mut check: KeyCheck, keys: Vec<String>| {
            let ctx = ctx.clone();
            crate::engine::on_own_task("checking the keys".into(), async move {
                let done = check.run(&ctx, &keys).await;
                done.map(|()| check)
            })
        };
        let [source, destination] = checks;
        checks = futures::try_join!(
            run(source, source_keys),
            run(destination, resolved.key_names())
        )
        .map(|(s, d)| [s, d])?;
        tracing::debug!(
            pass,
            elapsed = ?started.elapsed(),
            reserved = ctx.runtime_env().memory_pool.reserved(),
            "key checks"
        );
        let started = std::time::Instant::now();
        if checks.iter().any(KeyCheck::failed) {
            continue;
        }
        let query = match &job.diff_query {
            None => {
                let query = render_diff(DIFF_SQL, &resolved, "s");
                let (left, right) = match left {
                    Side::Destination => ("d", "s"),
                    Side::Source => ("s", "d"),
                };
                let query = query.replace("{{left}}", left).replace("{{right}}", right);
                let unordered = &query[..query.find("{{order}}").unwrap_or(query.len())];
                match (ordered, spooled) {
                    (false, _) => unordered.to_string(),
                    // Spooled changes are read back one action at a time, merged by key
                    // (src/writeback/spool.rs): the key's order is all they need.
                    (true, true) => format!(
                        "{unordered}ORDER BY {}",
                        list(resolved.keys.len(), |i| format!("k{i}"), ", ")
                    ),
                    (true, false) => query.replace("{{order}}", ""),
                }
            }
            Some(path) => user_diff(ctx, path, &resolved).await?,
        };
        // `-vvv` logs the diff's physical plan with its metrics once it has run.
        let plan = sql(ctx, &query).await?.create_physical_plan().await?;
        let (plan, in_place) = join::rewrite(plan)?;
        if pass == 0 {
            tracing::debug!(in_place, "the diff's join compares matched rows in place");
        }
        let mut stream = datafusion::physical_plan::execute_stream(plan.clone(), ctx.task_ctx())?;
        if let Output::Spool(spool) = &mut output {
            // Counted (and the first changes listed) as the output is written.
            let path = spool.next_part();
            let before = collector.summary;
            OutputFile::write(&path, &mut stream, |batch| collector.add(batch)).await?;
            spool.adopt(path, resolved.keys.len(), resolved.compared.len());
            if handing {
                let now = collector.summary;
                let summary = crate::changeset::Summary {
                    insert: now.insert - before.insert,
                    update: now.update - before.update,
                    delete: now.delete - before.delete,
                    ..Default::default()
                };
                spool.hand(Changeset {
                    summary,
                    ..shell.clone()
                });
            }
        } else if collector.counts_only() {
            while let Some(batch) = stream.next().await {
                collector.add(&batch?)?;
            }
        } else {
            // Building and writing changes is slower than the join produces them, and a join
            // that waits lets the repartitioned input pile up in memory: the diff's output goes
            // to a local file at the join's pace first, then changes are built from it.
            let path = crate::engine::work_dir(ctx)?
                .path()
                .join(format!("diff-{pass}.arrow"));
            let file = OutputFile::write(&path, &mut stream, |_| Ok(())).await?;
            // The file holds slices of at most CHANGES_PER_SLICE rows: changes are built and
            // handed on a slice at a time.
            for batch in file.read()? {
                collector.add(&batch?)?;
                if let Output::Sink(sink) = &mut output {
                    for change in collector.changes.drain(..) {
                        sink(&shell, change)?;
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        tracing::debug!(pass, elapsed = ?started.elapsed(), "diff");
        if tracing::enabled!(tracing::Level::TRACE) {
            let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                plan.as_ref(),
            )
            .indent(true);
            tracing::trace!(pass, "the diff's physical plan, with its metrics:\n{shown}");
        }
        if resolved.cursor.is_some() {
            let max = sql(ctx, "SELECT max(cur) AS m FROM s")
                .await?
                .collect()
                .await?;
            let pass_max = max
                .first()
                .filter(|b| b.num_rows() > 0)
                .map(|b| rows::cell(b.column(0), 0))
                .filter(|c| *c != crate::changeset::Cell::Null);
            cursor_max = match (cursor_max, pass_max) {
                (Some(a), Some(b)) => Some(std::cmp::max_by(a, b, crate::watermark::compare)),
                (a, b) => a.or(b),
            };
        }
        // The pass's bucket files are done with: removed while the next pass runs, rather than
        // all at the end (at 10M rows, 1.2 GB of files took 0.2 s to remove after the last pass).
        if let Some([s, d]) = buckets.as_ref() {
            let done = [s[pass as usize].clone(), d[pass as usize].clone()];
            removals.push(tokio::task::spawn_blocking(move || {
                for dir in done {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }));
        }
    }
    for removal in removals {
        let _ = removal.await;
    }
    let (source_rows, destination_rows) = (checks[0].rows, checks[1].rows);
    let [source, destination] = checks;
    source.into_result()?;
    destination.into_result()?;
    let mut summary = collector.summary;
    summary.source_rows = source_rows;
    summary.destination_rows = destination_rows;
    summary.unchanged = summary
        .source_rows
        .saturating_sub(summary.insert + summary.update);
    Ok(Changeset {
        summary,
        changes: collector.changes,
        cursor_max,
        ..shell
    })
}

/// The mapping resolved against the registered snapshots, with each destination column's
/// storage and `[compare.options]`.
async fn prepare(
    ctx: &SessionContext,
    job: &Job,
    storage: &std::collections::HashMap<String, stored::Storage>,
) -> Result<Resolved> {
    let mut resolved = resolve_registered(ctx, job).await?;
    for m in resolved.keys.iter_mut().chain(resolved.compared.iter_mut()) {
        m.storage = storage.get(&m.destination).copied().unwrap_or_default();
    }
    apply_options(job, &mut resolved)?;
    Ok(resolved)
}

/// Register the destination's view `d_all` — its key as compared (`k0…`) and its compared
/// columns as it holds them (`o0…`) — for reading destination rows by key (reviewed plans).
pub async fn destination_view(ctx: &SessionContext, job: &Job) -> Result<Resolved> {
    let storage = stored::destination(job).await?;
    let resolved = prepare(ctx, job, &storage).await?;
    register_view(ctx, Side::Destination, &resolved).await?;
    Ok(resolved)
}

/// Split both sides into `passes` buckets (src/diff/bucket.rs), side by side; the folders of
/// each side's buckets, source first. The staged snapshots are removed once split, by the task
/// returned (awaited when the passes are done).
async fn split_sides(
    ctx: &SessionContext,
    resolved: &Resolved,
    passes: u64,
    staged_buckets: [bool; 2],
    range: Option<KeyRange>,
) -> Result<([Vec<std::path::PathBuf>; 2], tokio::task::JoinHandle<()>)> {
    let work = crate::engine::work_dir(ctx)?;
    let split = |side: Side, staged: bool| {
        let keys = resolved
            .keys
            .iter()
            .map(|m| side_values(side, m).1)
            .collect();
        let dir = work.path().join(format!("{}-buckets", side.name()));
        let from = work.path().join(side.name());
        let ctx = ctx.clone();
        // A task each, so that the two sides are split on two threads.
        crate::engine::on_own_task(format!("splitting the {side} snapshot"), async move {
            tracing::debug!(
                side = %side,
                "{}",
                match staged {
                    true => "buckets staged as read, grouped into passes",
                    false => "split into passes",
                }
            );
            match staged {
                true => bucket::group(&ctx, side.name(), &from, passes, &dir).await,
                false => bucket::split(&ctx, side.name(), keys, range, passes, &dir).await,
            }
        })
    };
    let (source, destination) = futures::try_join!(
        split(Side::Source, staged_buckets[0]),
        split(Side::Destination, staged_buckets[1])
    )?;
    // The staged snapshots are removed while the passes run (the work folder goes at the end in
    // any case).
    let staged: Vec<_> = Side::BOTH
        .into_iter()
        .map(|side| work.path().join(side.name()))
        .collect();
    let removal = tokio::task::spawn_blocking(move || {
        for dir in staged.iter().filter(|d| d.is_dir()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    });
    Ok(([source, destination], removal))
}

/// One pass over sides held in memory: the join's build side (`left`) as one partition of its
/// batches as staged — one batch when its connector gathered it whole (src/connect/postgres.rs),
/// which the join then builds on without copying it into one (1M rows: ~30 ms of a ~100 ms
/// diff) — and the other side's batches in slices over the session's partitions, so that the
/// probe runs on every core. Only for the diff's own query: the slices share their batch's
/// buffers, which operators that count their input's memory would count once a slice.
async fn arrange_held(ctx: &SessionContext, resolved: &Resolved, left: Side) -> Result<()> {
    use datafusion::datasource::MemTable;
    let n = ctx.state().config().target_partitions().max(1);
    for side in Side::BOTH {
        let Some(batches) = crate::engine::staged(ctx, side).held else {
            continue;
        };
        let registered = ctx.table_provider(side.name()).await?;
        let (Some(first), true) = (batches.first(), registered.is::<MemTable>()) else {
            continue;
        };
        let schema = first.schema();
        let table: std::sync::Arc<dyn datafusion::catalog::TableProvider> = match side == left {
            // Not a MemTable: its scan would cut the batch into session-sized ones again.
            true => std::sync::Arc::new(datafusion::catalog::streaming::StreamingTable::try_new(
                schema.clone(),
                vec![std::sync::Arc::new(Held { schema, batches })],
            )?),
            false => {
                let rows = crate::snapshot::BATCH_ROWS;
                let mut partitions = vec![Vec::new(); n];
                let slices = batches.iter().flat_map(|batch| {
                    (0..batch.num_rows().div_ceil(rows)).map(move |i| {
                        let offset = i * rows;
                        batch.slice(offset, rows.min(batch.num_rows() - offset))
                    })
                });
                for (i, slice) in slices.enumerate() {
                    partitions[i % n].push(slice);
                }
                std::sync::Arc::new(MemTable::try_new(schema, partitions)?)
            }
        };
        ctx.deregister_table(side.name())?;
        ctx.register_table(side.name(), table)?;
        ctx.deregister_table(format!("{}_all", view_alias(side)).as_str())?;
        register_view(ctx, side, resolved).await?;
    }
    Ok(())
}

/// A held side's batches as one partition, yielded as they are.
#[derive(Debug)]
struct Held {
    schema: datafusion::arrow::datatypes::SchemaRef,
    batches: Vec<datafusion::arrow::record_batch::RecordBatch>,
}

impl datafusion::physical_plan::streaming::PartitionStream for Held {
    fn schema(&self) -> &datafusion::arrow::datatypes::SchemaRef {
        &self.schema
    }

    fn execute(
        &self,
        _: std::sync::Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::execution::SendableRecordBatchStream {
        let batches = self.batches.clone().into_iter().map(Ok);
        Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::iter(batches),
            ),
        )
    }
}

/// Register `s` and `d` for a pass: the full views `s_all` and `d_all`, or, when diffing in
/// passes, the views over this pass's bucket of each side (`folders`, source first).
async fn select_pass(
    ctx: &SessionContext,
    resolved: &Resolved,
    folders: Option<[&std::path::PathBuf; 2]>,
) -> Result<()> {
    for (i, side) in Side::BOTH.into_iter().enumerate() {
        if let Some(folders) = folders {
            let schema = ctx.table(side.name()).await?.schema().as_arrow().clone();
            let options = datafusion::datasource::file_format::options::ArrowReadOptions {
                schema: Some(&schema),
                file_extension: ".arrow",
                ..Default::default()
            };
            ctx.deregister_table(side.name())?;
            let dir = format!("{}/", folders[i].display());
            ctx.register_arrow(side.name(), &dir, options).await?;
            ctx.deregister_table(format!("{}_all", view_alias(side)).as_str())?;
            register_view(ctx, side, resolved).await?;
        }
        let alias = view_alias(side);
        let _ = ctx.deregister_table(alias)?;
        let view = ctx.table(format!("{alias}_all").as_str()).await?;
        ctx.register_table(alias, view.into_view())?;
    }
    Ok(())
}

fn view_alias(side: Side) -> &'static str {
    match side {
        Side::Source => "s",
        Side::Destination => "d",
    }
}

fn cast_to(name: &str, from: &DataType, to: &DataType) -> Expr {
    let decimal = matches!(
        from,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    );
    if from == to {
        ident(name)
    } else if decimal && to.is_floating() {
        // Arrow's decimal → float cast divides in floating point (10.0 at scale 32 becomes
        // 9.999999999999998); going through the decimal's exact text rounds correctly.
        cast(cast(ident(name), DataType::Utf8), to.clone())
    } else {
        cast(ident(name), to.clone())
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// A mapped column's name and type on `side`.
fn side_column(side: Side, m: &Mapped) -> (&String, &DataType) {
    match side {
        Side::Source => (&m.source, &m.source_type),
        Side::Destination => (&m.destination, &m.destination_type),
    }
}

/// A mapped column of `side`: the value written (the source as the destination would store it:
/// what `apply` writes, `w…`) and the value compared (`k…`/`v…`: JSON parsed on both sides, then
/// `[compare.options]` on both sides).
fn side_values(side: Side, m: &Mapped) -> (Expr, Expr) {
    let (name, from) = side_column(side, m);
    let mut value = cast_to(name, from, &m.common);
    if side == Side::Source {
        value = m.storage.apply(value, &m.common);
    }
    let written = value.clone();
    if m.storage.both_sides() && is_text(&m.common) {
        value = stored::json(value);
    }
    (written, options::compared(value, &m.options, &m.common))
}

/// The columns of a side's view to read a mapped pair's value as held (`o…`) and as written
/// (`w…`) from: `v…` where that is the same expression as the compared value.
fn read_as_compared(side: Side, m: &Mapped) -> (&'static str, &'static str) {
    let (written, compared) = side_values(side, m);
    let name = match side {
        Side::Source => &m.source,
        Side::Destination => &m.destination,
    };
    (
        if compared == ident(name) { "v" } else { "o" },
        if compared == written { "v" } else { "w" },
    )
}

/// Register `s` or `d`: the side's mapped columns renamed and cast, plus `id` and `__present`.
async fn register_view(ctx: &SessionContext, side: Side, resolved: &Resolved) -> Result<()> {
    let pick = |m: &Mapped| match side {
        Side::Source => (m.source.clone(), m.source_type.clone()),
        Side::Destination => (m.destination.clone(), m.destination_type.clone()),
    };
    let mut exprs = Vec::new();
    for (prefix, mapped) in [("k", &resolved.keys), ("v", &resolved.compared)] {
        for (i, m) in mapped.iter().enumerate() {
            let (written, compared) = side_values(side, m);
            if side == Side::Source && prefix == "v" {
                exprs.push(written.alias(format!("w{i}")));
            }
            exprs.push(compared.alias(format!("{prefix}{i}")));
        }
    }
    // The compared values as the side holds them, for display (`o0…`).
    for (i, m) in resolved.compared.iter().enumerate() {
        exprs.push(ident(pick(m).0).alias(format!("o{i}")));
    }
    if let (Side::Source, Some(cursor)) = (side, &resolved.cursor) {
        exprs.push(ident(cursor).alias("cur"));
    }
    if side == Side::Destination {
        exprs.push(match &resolved.id {
            Some((id, _)) => ident(id).alias("id"),
            None => lit(ScalarValue::Null).alias("id"),
        });
    }
    exprs.push(lit(true).alias("__present"));
    let view = ctx.table(side.name()).await?.select(exprs)?.into_view();
    ctx.register_table(format!("{}_all", view_alias(side)), view)?;
    Ok(())
}

/// One `-- name:` section of a query file.
fn section<'a>(file: &'a str, name: &str) -> &'a str {
    let marker = format!("-- name: {name}\n");
    let start = file.find(&marker).map_or(0, |i| i + marker.len());
    let end = file[start..]
        .find("-- name: ")
        .map_or(file.len(), |i| start + i);
    &file[start..end]
}

fn list(n: usize, item: impl Fn(usize) -> String, sep: &str) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(sep)
}

/// Key checks for one side, summed over the passes: NULL keys, then duplicate keys, each a typed
/// error with the total count and up to five sample keys.
struct KeyCheck {
    side: Side,
    columns: Vec<String>,
    /// Rows of the side, over the passes so far.
    rows: u64,
    nulls: u64,
    duplicates: u64,
    null_sample: Vec<String>,
    /// Duplicated keys with their number of copies.
    duplicate_sample: Vec<(u64, String)>,
    /// The side's catalog proves the key unique and never NULL: only rows are counted.
    proven: bool,
    /// The key is one integer column: counted by [`integer_key_counts`].
    integer_key: bool,
    /// Counted while the side was staged, with no NULL or duplicated key: nothing to read.
    counted: bool,
}

/// Rows, NULL keys and duplicated keys of a side (`s` or `d`) whose key is one integer column
/// `k0`, without a grouping: the keys are read into one array (8 bytes a row, against the tens a
/// hash table of groups takes) and checked with a bitmap over their range when the keys are dense
/// (ids), or sorted otherwise. The same counts as queries/key_checks.sql's `counts`.
async fn integer_key_counts(ctx: &SessionContext, alias: &str) -> Result<(u64, u64, u64)> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;
    let mut stream = sql(
        ctx,
        &format!("SELECT CAST(k0 AS BIGINT) AS k0 FROM {alias}"),
    )
    .await?
    .execute_stream()
    .await?;
    let (mut rows, mut nulls) = (0u64, 0u64);
    let mut keys: Vec<i64> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let column = batch.column(0).as_primitive::<Int64Type>();
        rows += batch.num_rows() as u64;
        nulls += column.null_count() as u64;
        match column.null_count() {
            0 => keys.extend_from_slice(column.values()),
            _ => keys.extend(column.iter().flatten()),
        }
    }
    Ok((rows, nulls, duplicated(keys)))
}

/// Rows of a side (`s` or `d`) whose key is any other (text, several columns), when no key is
/// NULL or occurs twice — found from the keys' 64-bit hashes (DataFusion's, as its grouping
/// hashes them), sorted: no hash twice, no key twice. `None` when a key is NULL or a hash occurs
/// twice (a duplicated key, or two keys' hashes colliding, ~n²/2⁶⁵: 3·10⁻⁸ at 1M rows): the
/// grouping of queries/key_checks.sql counts exactly then. The grouping took ~125 ms for 1M text
/// keys here; the hashes and their sort, ~8 bytes a row, a fraction of that.
async fn hashed_key_counts(ctx: &SessionContext, alias: &str, keys: usize) -> Result<Option<u64>> {
    use datafusion::common::hash_utils::{RandomState, create_hashes};
    let mut stream = sql(
        ctx,
        &format!(
            "SELECT {} FROM {alias}",
            list(keys, |i| format!("k{i}"), ", ")
        ),
    )
    .await?
    .execute_stream()
    .await?;
    let state = RandomState::with_seed(0);
    let mut hashes = Vec::<u64>::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.columns().iter().any(|c| c.null_count() > 0) {
            return Ok(None);
        }
        let at = hashes.len();
        hashes.resize(at + batch.num_rows(), 0);
        // A type the hashing does not take is left to the grouping.
        if create_hashes(batch.columns(), &state, &mut hashes[at..]).is_err() {
            return Ok(None);
        }
    }
    hashes.sort_unstable();
    Ok(match hashes.windows(2).any(|w| w[0] == w[1]) {
        true => None,
        false => Some(hashes.len() as u64),
    })
}

/// How many values occur more than once: with a bitmap over their range when the keys are dense
/// (at most 32 bits a key), else by sorting.
fn duplicated(mut keys: Vec<i64>) -> u64 {
    let mut bitmap = crate::stage::KeyBitmap::new(16 * keys.len() as u64);
    if bitmap.add_all(&keys) {
        return bitmap.duplicates;
    }
    keys.sort_unstable();
    keys.chunk_by(|a, b| a == b)
        .filter(|run| run.len() > 1)
        .count() as u64
}

impl KeyCheck {
    fn new(side: Side) -> KeyCheck {
        KeyCheck {
            side,
            columns: Vec::new(),
            rows: 0,
            nulls: 0,
            duplicates: 0,
            null_sample: Vec::new(),
            duplicate_sample: Vec::new(),
            proven: false,
            integer_key: false,
            counted: false,
        }
    }

    fn failed(&self) -> bool {
        self.nulls > 0 || self.duplicates > 0
    }

    /// Check this pass's rows of the side (`s` or `d`).
    async fn run(&mut self, ctx: &SessionContext, key_columns: &[String]) -> Result<()> {
        self.columns = key_columns.to_vec();
        if self.counted {
            return Ok(());
        }
        let keys = key_columns.len();
        let alias = view_alias(self.side);
        let render = |name: &str| {
            section(KEY_CHECKS_SQL, name)
                .replace("{{side}}", alias)
                .replace("{{keys}}", &list(keys, |i| format!("k{i}"), ", "))
                .replace(
                    "{{any_key_null}}",
                    &format!("({})", list(keys, |i| format!("(k{i} IS NULL)"), " OR ")),
                )
        };
        let hashed = match (self.proven, self.integer_key) {
            (false, false) => hashed_key_counts(ctx, alias, keys).await?,
            _ => None,
        };
        let (rows, nulls, duplicates) = match hashed {
            Some(rows) => (rows, 0, 0),
            None if self.integer_key && !self.proven => integer_key_counts(ctx, alias).await?,
            None => {
                let query = render(if self.proven { "rows" } else { "counts" });
                let counts = sql(ctx, &query).await?.collect().await?;
                let count = |col: &str| -> u64 {
                    counts
                        .first()
                        .and_then(|b| b.column_by_name(col))
                        .map(|a| json_value(a, 0).as_u64().unwrap_or(0))
                        .unwrap_or(0)
                };
                (count("rows"), count("null_keys"), count("duplicate_keys"))
            }
        };
        self.rows += rows;
        self.nulls += nulls;
        self.duplicates += duplicates;
        if nulls > 0 && self.null_sample.len() < 5 {
            let rows = sql(ctx, &render("null_sample")).await?.collect().await?;
            self.null_sample
                .extend(sample_keys(&rows, key_columns).into_iter().map(|(_, k)| k));
            self.null_sample.truncate(5);
        }
        // The most copied keys of all passes come first.
        if duplicates > 0 {
            let rows = sql(ctx, &render("duplicate_sample"))
                .await?
                .collect()
                .await?;
            self.duplicate_sample
                .extend(sample_keys(&rows, key_columns));
            self.duplicate_sample
                .sort_by_key(|d| std::cmp::Reverse(d.0));
            self.duplicate_sample.truncate(5);
        }
        Ok(())
    }

    fn into_result(self) -> Result<()> {
        let columns = self.columns.join(", ");
        if self.nulls > 0 {
            return Err(Error::NullKeys {
                side: self.side,
                columns,
                count: self.nulls,
                sample: self.null_sample,
            });
        }
        if self.duplicates > 0 {
            return Err(Error::DuplicateKeys {
                side: self.side,
                columns,
                count: self.duplicates,
                sample: self.duplicate_sample.into_iter().map(|(_, k)| k).collect(),
            });
        }
        Ok(())
    }
}

fn sample_keys(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    names: &[String],
) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for b in batches {
        for row in 0..b.num_rows() {
            let key: Vec<String> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    format!(
                        "{n}={}",
                        crate::changeset::display(&json_value(b.column(i), row))
                    )
                })
                .collect();
            let mut key = key.join(", ");
            let copies = b
                .column_by_name("copies")
                .and_then(|c| json_value(c, row).as_u64())
                .unwrap_or(0);
            if copies > 0 {
                key.push_str(&format!(" ({copies} rows)"));
            }
            out.push((copies, key));
        }
    }
    out
}

/// Fill a diff template for `n` keys and `m` compared columns; `left` is the view holding the
/// new values (`s`, or `u` for a user diff).
fn render_diff(template: &str, resolved: &Resolved, left: &str) -> String {
    let (n, m) = (resolved.keys.len(), resolved.compared.len());
    let distinct = |i: usize| options::differs(left, i, &resolved.compared[i]);
    let keys = match left {
        "s" => list(
            n,
            |i| format!("COALESCE(s.k{i}, d.k{i}) AS k{i}"),
            ",\n    ",
        ),
        _ => list(n, |i| format!("{left}.k{i} AS k{i}"), ",\n    "),
    };
    // Incremental mode reads a window of the source: a destination row outside it is not a delete.
    let (join, cursor) = match (&resolved.cursor, left) {
        (Some(_), "s") => ("LEFT", "s.cur AS cur,"),
        (None, "s") => ("FULL OUTER", "NULL AS cur,"),
        _ => ("LEFT", "NULL AS cur,"),
    };
    let any_changed = if m == 0 {
        "FALSE".to_string()
    } else {
        format!("({})", list(m, distinct, " OR "))
    };
    template
        .replace("{{keys}}", &keys)
        .replace("{{join}}", join)
        .replace("{{cursor}}", cursor)
        .replace(
            "{{values}}",
            &list(
                m,
                |i| {
                    // What apply writes: the source value as the destination stores it, before
                    // any comparison option (a case-folded value is never written). A column
                    // that is the compared one under another name is read as that one, so the
                    // join carries (and its build side copies) each value once.
                    let m = &resolved.compared[i];
                    let (held, written) = match left {
                        "s" => read_as_compared(Side::Source, m),
                        _ => ("o", "v"),
                    };
                    let (destination_held, _) = read_as_compared(Side::Destination, m);
                    format!(
                        "{left}.{held}{i} AS s_v{i}, d.{destination_held}{i} AS d_v{i}, {left}.{written}{i} AS n_v{i},"
                    )
                },
                "\n    ",
            ),
        )
        .replace(
            "{{changed}}",
            &list(m, |i| format!("{} AS c{i},", distinct(i)), "\n    "),
        )
        .replace(
            "{{key_join}}",
            &list(n, |i| format!("({left}.k{i} = d.k{i})"), " AND "),
        )
        .replace("{{any_changed}}", &any_changed)
        .replace("{{order_keys}}", &list(n, |i| format!("k{i}"), ", "))
}

/// Register the user's diff query as `u` (its destination-named columns renamed and cast like
/// `d`), refuse unknown actions, and return the wrapping query.
async fn user_diff(
    ctx: &SessionContext,
    path: &std::path::Path,
    resolved: &Resolved,
) -> Result<String> {
    let bad = |reason: String| Error::DiffQuery {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let raw = sql(ctx, &text).await.map_err(|e| bad(e.to_string()))?;
    let schema = raw.schema().as_arrow().clone();
    let mut exprs = vec![cast(ident("action"), DataType::Utf8).alias("action")];
    let mut missing = Vec::new();
    for name in ["action"]
        .iter()
        .map(|s| s.to_string())
        .chain(resolved.key_names())
        .chain(resolved.compared_names())
    {
        if schema.field_with_name(&name).is_err() {
            missing.push(format!("`{name}`"));
        }
    }
    if !missing.is_empty() {
        return Err(bad(format!("it does not return {}", missing.join(", "))));
    }
    for (prefix, mapped) in [("k", &resolved.keys), ("v", &resolved.compared)] {
        for (i, m) in mapped.iter().enumerate() {
            exprs.push(cast(ident(&m.destination), m.common.clone()).alias(format!("{prefix}{i}")));
        }
    }
    for (i, m) in resolved.compared.iter().enumerate() {
        exprs.push(ident(&m.destination).alias(format!("o{i}")));
    }
    ctx.register_table("u", raw.select(exprs)?.into_view())?;
    let bad_actions = sql(ctx, section(KEY_CHECKS_SQL, "bad_actions"))
        .await?
        .collect()
        .await?;
    let found: Vec<String> = bad_actions
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| crate::changeset::display(&json_value(b.column(0), r)))
        })
        .collect();
    if !found.is_empty() {
        return Err(bad(format!(
            "it returns action {}, expected insert, update or delete",
            found.join(", ")
        )));
    }
    Ok(render_diff(USER_DIFF_SQL, resolved, "u"))
}

/// A pass's diff output, written to a local Arrow IPC file as the query produces it.
struct OutputFile {
    path: std::path::PathBuf,
}

impl OutputFile {
    /// Write the stream's batches to `path`, each seen by `each` first. A join emits its
    /// unmatched build rows as one batch (a whole side, on an initial load): batches are written
    /// a slice at a time, so that whoever reads the file back holds one slice at a time.
    async fn write(
        path: &std::path::Path,
        stream: &mut datafusion::physical_plan::SendableRecordBatchStream,
        mut each: impl FnMut(&datafusion::arrow::record_batch::RecordBatch) -> Result<()>,
    ) -> Result<OutputFile> {
        use datafusion::arrow::ipc::writer::FileWriter;
        let io = |source| Error::Write {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut writer = FileWriter::try_new(std::io::BufWriter::new(file), &stream.schema())?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            each(&batch)?;
            for start in (0..batch.num_rows()).step_by(CHANGES_PER_SLICE) {
                let len = CHANGES_PER_SLICE.min(batch.num_rows() - start);
                writer.write(&batch.slice(start, len))?;
            }
        }
        writer.finish()?;
        Ok(OutputFile {
            path: path.to_path_buf(),
        })
    }

    fn read(
        &self,
    ) -> Result<
        impl Iterator<
            Item = std::result::Result<
                datafusion::arrow::record_batch::RecordBatch,
                datafusion::arrow::error::ArrowError,
            >,
        >,
    > {
        let file = std::fs::File::open(&self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(datafusion::arrow::ipc::reader::FileReader::try_new(
            std::io::BufReader::new(file),
            None,
        )?)
    }
}

/// Set each compared pair's `[compare.options]`, drop ignored columns, and refuse options that do
/// not fit the pair's comparison type.
fn apply_options(job: &Job, resolved: &mut Resolved) -> Result<()> {
    let mut problems = Vec::new();
    for m in resolved.compared.iter_mut() {
        m.options = job.options_for(&m.source, &m.destination);
        if let Some(message) = options::unfit(&m.options, &m.common) {
            problems.push(Error::BadOption {
                column: m.destination.clone(),
                message,
            });
        }
    }
    for name in job.compare_options.keys() {
        let known = name == "*"
            || resolved
                .compared
                .iter()
                .chain(&resolved.keys)
                .any(|m| &m.destination == name || &m.source == name);
        if !known {
            problems.push(Error::BadOption {
                column: name.clone(),
                message: "no compared column has this name (on either side)".into(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(Error::Mapping(problems));
    }
    resolved.compared.retain(|m| !m.options.ignore);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::duplicated;

    #[test]
    fn duplicated_integer_keys_are_counted_once_each_dense_or_sparse() {
        // Dense (a bitmap over the range): 3 twice, 7 three times.
        assert_eq!(duplicated(vec![1, 3, 3, 5, 7, 7, 7, 9]), 2);
        assert_eq!(duplicated((0..1000).collect()), 0);
        assert_eq!(duplicated(vec![]), 0);
        // Sparse (sorted), including the extremes of the type.
        assert_eq!(
            duplicated(vec![i64::MIN, i64::MAX, 0, i64::MAX, -5, i64::MIN]),
            2
        );
        assert_eq!(duplicated(vec![i64::MIN, i64::MAX]), 0);
        let sparse: Vec<i64> = (0..1000).map(|i| i * 1_000_003).collect();
        let mut twice = sparse.clone();
        twice.extend_from_slice(&sparse[..10]);
        assert_eq!(duplicated(sparse), 0);
        assert_eq!(duplicated(twice), 10);
    }

    /// Text and composite keys are counted from their hashes when all are present and unique;
    /// a NULL or a key twice leaves the count to the grouping.
    #[tokio::test]
    async fn text_and_composite_keys_are_counted_by_hash_unless_one_repeats() {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, StringViewArray};
        use datafusion::arrow::record_batch::RecordBatch;
        use std::sync::Arc;
        let ctx = datafusion::prelude::SessionContext::new();
        let codes = |n: usize| -> Vec<Option<String>> {
            (0..n).map(|i| Some(format!("C-{i:012}"))).collect()
        };
        let register = |name: &str, columns: Vec<(&str, ArrayRef)>| {
            let batch = RecordBatch::try_from_iter(columns).unwrap();
            // Two batches, so that a key repeated across them is caught as one within one.
            let (a, b) = (
                batch.slice(0, batch.num_rows() / 2),
                batch.slice(
                    batch.num_rows() / 2,
                    batch.num_rows() - batch.num_rows() / 2,
                ),
            );
            let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![a, b]])
                .unwrap();
            ctx.deregister_table(name).unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        };
        // Unique text keys, as text and as text views.
        register(
            "s",
            vec![("k0", Arc::new(StringArray::from(codes(5000))) as ArrayRef)],
        );
        assert_eq!(
            super::hashed_key_counts(&ctx, "s", 1).await.unwrap(),
            Some(5000)
        );
        register(
            "s",
            vec![(
                "k0",
                Arc::new(StringViewArray::from(codes(5000))) as ArrayRef,
            )],
        );
        assert_eq!(
            super::hashed_key_counts(&ctx, "s", 1).await.unwrap(),
            Some(5000)
        );
        // A key twice, the two copies in different batches.
        let mut twice = codes(5000);
        twice[4999] = twice[0].clone();
        register(
            "s",
            vec![("k0", Arc::new(StringArray::from(twice)) as ArrayRef)],
        );
        assert_eq!(super::hashed_key_counts(&ctx, "s", 1).await.unwrap(), None);
        // A NULL key.
        let mut null = codes(5000);
        null[17] = None;
        register(
            "s",
            vec![("k0", Arc::new(StringArray::from(null)) as ArrayRef)],
        );
        assert_eq!(super::hashed_key_counts(&ctx, "s", 1).await.unwrap(), None);
        // Two columns: unique as pairs though each column repeats.
        let pairs = |n: i64| -> (Vec<Option<String>>, Vec<i64>) {
            (0..n)
                .map(|i| (Some(format!("region {}", i % 7)), i / 7))
                .unzip()
        };
        let (regions, numbers) = pairs(7000);
        register(
            "s",
            vec![
                (
                    "k0",
                    Arc::new(StringArray::from(regions.clone())) as ArrayRef,
                ),
                (
                    "k1",
                    Arc::new(Int64Array::from(numbers.clone())) as ArrayRef,
                ),
            ],
        );
        assert_eq!(
            super::hashed_key_counts(&ctx, "s", 2).await.unwrap(),
            Some(7000)
        );
        // The same pair twice.
        let (mut regions, mut numbers) = (regions, numbers);
        regions[6999] = regions[0].clone();
        numbers[6999] = numbers[0];
        register(
            "s",
            vec![
                ("k0", Arc::new(StringArray::from(regions)) as ArrayRef),
                ("k1", Arc::new(Int64Array::from(numbers)) as ArrayRef),
            ],
        );
        assert_eq!(super::hashed_key_counts(&ctx, "s", 2).await.unwrap(), None);
    }
}
