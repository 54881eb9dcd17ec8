//! Connectors: each side's snapshot becomes a table in the DataFusion session, named `source` or
//! `destination`. Databases are read into Arrow batches (PostgreSQL by binary COPY, MySQL/MariaDB
//! and SQLite by sqlx row streams); files are registered with DataFusion's own readers and
//! scanned in place. Both sides are read at the same time.

mod files;
pub(crate) mod http;
mod index;
mod mysql;
pub(crate) mod pgbinary;
mod pgwire;
mod postgres;

/// A connection to a PostgreSQL side (for catalog lookups).
pub async fn pg_connect(
    endpoint: &crate::config::Endpoint,
    url: &str,
) -> crate::error::Result<sqlx::postgres::PgConnection> {
    postgres::connect(endpoint, url).await
}

pub use index::{key_proven_unique, missing_index_note};
pub use postgres::pg_options;
mod sqlite;

use datafusion::execution::options::ArrowReadOptions;
use datafusion::prelude::SessionContext;

use crate::config::{Endpoint, Job, Location};
use crate::error::{Error, Result, Side};
use crate::progress::Progress;
use crate::progress::RowCounter;
use crate::snapshot::BATCH_ROWS;
use crate::stage::{Staged, Stager};
use crate::watermark::{Bound, KeyFilter, ParamStyle, SourceRead};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Register both sides' snapshots in `ctx` as `source` and `destination`. With `limit`, only
/// that many rows of each database side are read (used by `check` to sample).
/// With `window`, the source is read only from `window.column >= window.lower`.
pub async fn register_both(
    ctx: &SessionContext,
    job: &Job,
    limit: Option<usize>,
    progress: &Progress,
    read: Option<&SourceRead>,
) -> Result<()> {
    let narrow = read.is_some_and(|r| r.window.is_some())
        && matches!(
            job.destination.location,
            Location::Postgres(_) | Location::Sqlite(_)
        );
    if !narrow {
        // A task each, so that each side is read, decoded and staged on its own thread (on one,
        // a side whose turn it is not lets its server wait with a full socket).
        // Two PostgreSQL sides may deal their rows to buckets by key range: they vote on it.
        let both_postgres = [&job.source, &job.destination]
            .iter()
            .all(|e| matches!(e.location, Location::Postgres(_)));
        let [source_vote, destination_vote] = match both_postgres {
            true => RangeVote::pair().map(Some),
            false => [None, None],
        };
        let side = |endpoint: &Endpoint, read: Option<SourceRead>, vote: Option<RangeVote>| {
            let (ctx, endpoint, progress) = (ctx.clone(), endpoint.clone(), progress.clone());
            let wanted = wanted(job, endpoint.side);
            let key = single_key(job, endpoint.side);
            // A database side on a task of its own, started when first polled; a file or an
            // API side in place, so that a side that fails at once (a missing file) is the
            // error reported, the source's first.
            let database = matches!(
                endpoint.location,
                Location::Postgres(_) | Location::Mysql(_) | Location::Sqlite(_)
            );
            async move {
                let what = format!("reading the {}", endpoint.side);
                let work = async move {
                    let read = read.as_ref();
                    register(&ctx, &endpoint, limit, &progress, read, &wanted, key, vote).await
                };
                match database {
                    true => crate::engine::on_own_task(what, work).await,
                    false => work.await,
                }
            }
        };
        tokio::try_join!(
            side(&job.source, read.cloned(), source_vote),
            side(&job.destination, None, destination_vote)
        )?;
        return Ok(());
    }
    // Incremental mode: read the source window first, then only the destination rows with its keys.
    register(
        ctx,
        &job.source,
        limit,
        progress,
        read,
        &wanted(job, Side::Source),
        single_key(job, Side::Source),
        None,
    )
    .await?;
    let keys = window_keys(ctx, job).await?;
    let read = SourceRead {
        keys,
        ..SourceRead::default()
    };
    register(
        ctx,
        &job.destination,
        limit,
        progress,
        Some(&read),
        &wanted(job, Side::Destination),
        single_key(job, Side::Destination),
        None,
    )
    .await
}

/// The columns the job maps on `side` (keys, compared columns, id, cursor): an HTTP side has
/// them even when no record of the first page does.
pub fn wanted(job: &Job, side: Side) -> Vec<String> {
    let pick = |p: &crate::config::ColumnPair| match side {
        Side::Source => p.source.clone(),
        Side::Destination => p.destination.clone(),
    };
    let endpoint = job.endpoint(side);
    job.keys
        .iter()
        .chain(job.compare.iter().flatten())
        .map(pick)
        .chain(endpoint.id.clone())
        .chain(endpoint.cursor.as_ref().map(|c| c.column.clone()))
        .collect()
}

/// Most keys passed to the destination as a filter; a larger window reads the destination whole.
const MAX_FILTER_KEYS: usize = 1_000_000;

/// The distinct keys of the registered source, as a filter for the destination read.
async fn window_keys(ctx: &SessionContext, job: &Job) -> Result<Option<KeyFilter>> {
    let columns: Vec<String> = job
        .keys
        .iter()
        .map(|k| crate::sql::quote(&k.source))
        .collect();
    let query = format!("SELECT DISTINCT {} FROM source", columns.join(", "));
    let batches = crate::diff::sql(ctx, &query).await?.collect().await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows > MAX_FILTER_KEYS {
        return Ok(None);
    }
    let mut keys = Vec::with_capacity(rows);
    for b in &batches {
        for row in 0..b.num_rows() {
            let key: Vec<serde_json::Value> = b
                .columns()
                .iter()
                .map(|c| crate::diff::json_value(c, row))
                .collect();
            keys.push(serde_json::Value::Array(key));
        }
    }
    Ok(Some(KeyFilter {
        columns: job.keys.iter().map(|k| k.destination.clone()).collect(),
        json: serde_json::Value::Array(keys).to_string(),
    }))
}

/// The side's key column when the match has one: its NULLs and duplicates are counted as a
/// database side is staged (src/stage.rs), and the key checks use those counts.
fn single_key(job: &Job, side: Side) -> Option<String> {
    match &job.keys[..] {
        [k] => Some(match side {
            Side::Source => k.source.clone(),
            Side::Destination => k.destination.clone(),
        }),
        _ => None,
    }
}

/// One side's say, with the other side's, in whether both PostgreSQL sides deal their rows to
/// buckets by the key's range (src/diff/bucket.rs `KeyRange`) rather than its hash: both must
/// deal the same way, and each knows only its own key's type and statistics. The first side to
/// vote waits for the other at most [`VOTE_WAIT`]; past that (a server slow to answer, a side
/// that failed before voting) it decides for both — by hash — and the late side finds the
/// decision made, so that neither side's read waits long on the other's connection.
pub struct RangeVote {
    shared: Arc<std::sync::Mutex<Ballot>>,
    side: usize,
}

/// The most the first side to vote waits for the other.
pub const VOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct Ballot {
    votes: [Option<crate::diff::Estimate>; 2],
    /// The decision, once made: the same for both sides.
    decided: Option<Option<crate::diff::KeyRange>>,
    /// Wakes the side waiting for the other's vote.
    wake: Option<futures::channel::oneshot::Sender<()>>,
}

impl RangeVote {
    /// The two sides' votes.
    pub fn pair() -> [RangeVote; 2] {
        let shared = Arc::new(std::sync::Mutex::new(Ballot::default()));
        [0, 1].map(|side| RangeVote {
            shared: shared.clone(),
            side,
        })
    }

    /// Cast this side's vote and wait for the other's: the range both deal by, if any (the
    /// same answer on both sides).
    pub async fn cast(self, mine: crate::diff::Estimate) -> Option<crate::diff::KeyRange> {
        let waiting = {
            let Ok(mut ballot) = self.shared.lock() else {
                return None;
            };
            if let Some(decided) = ballot.decided {
                return decided;
            }
            ballot.votes[self.side] = Some(mine);
            if let Some(theirs) = ballot.votes[1 - self.side] {
                let decided = crate::diff::KeyRange::estimated([mine, theirs]);
                ballot.decided = Some(decided);
                if let Some(wake) = ballot.wake.take() {
                    let _ = wake.send(());
                }
                return decided;
            }
            let (wake, waiting) = futures::channel::oneshot::channel();
            ballot.wake = Some(wake);
            waiting
        };
        let _ = tokio::time::timeout(VOTE_WAIT, waiting).await;
        let Ok(mut ballot) = self.shared.lock() else {
            return None;
        };
        *ballot.decided.get_or_insert(None)
    }
}

/// Register one side's snapshot in `ctx` under the side's name; with `key` (see
/// [`single_key`]), its NULLs and duplicates are counted while a database side is staged; with
/// `vote`, the side's [`RangeVote`] (both sides PostgreSQL tables read at once).
#[allow(clippy::too_many_arguments)]
pub async fn register(
    ctx: &SessionContext,
    endpoint: &Endpoint,
    limit: Option<usize>,
    progress: &Progress,
    read: Option<&SourceRead>,
    wanted: &[String],
    key: Option<String>,
    vote: Option<RangeVote>,
) -> Result<()> {
    let name = endpoint.side.name();
    let snapshot = match &endpoint.location {
        Location::File(path, format) => {
            files::register(ctx, endpoint.side, path, *format).await?;
            return match read.and_then(|r| r.window.as_ref()) {
                Some(w) => filter_file(ctx, name, w).await,
                None => Ok(()),
            };
        }
        location => {
            let work = crate::engine::work_dir(ctx)?;
            // A side that fits an eighth of the budget stays in memory (the diff then runs in
            // one pass, src/diff/bucket.rs); a larger one is staged in buckets by its one key
            // column. An API's window is applied after staging (below): its staged rows are
            // not the side's rows, so neither its key counts nor its buckets stand.
            let api = matches!(location, Location::Http(_));
            let hold = Hold {
                bytes: (crate::engine::memory_limit(ctx) / 8) as usize,
                key,
                buckets: !api,
                vote,
            };
            let staged =
                read_database(endpoint, limit, progress, read, wanted, work.path(), hold).await?;
            if !api {
                crate::engine::set_staged(
                    ctx,
                    endpoint.side,
                    crate::engine::SideFacts {
                        key: staged.key,
                        held_bytes: staged.held_bytes,
                        bucketed: staged.bucketed,
                        range: staged.range,
                        held: staged.held.clone(),
                    },
                );
            }
            staged
        }
    };
    match snapshot.held {
        Some(batches) => {
            let bytes = snapshot.held_bytes.unwrap_or_default() as usize;
            crate::engine::account_held(ctx, format!("the {name} snapshot"), bytes);
            // Spread over the session's partitions, so that scans of it run on every core.
            let n = ctx.state().config().target_partitions().max(1);
            let mut partitions = vec![Vec::new(); n];
            for (i, batch) in batches.into_iter().enumerate() {
                partitions[i % n].push(batch);
            }
            let table = datafusion::datasource::MemTable::try_new(snapshot.schema, partitions)?;
            ctx.register_table(name, Arc::new(table))?;
        }
        None => {
            let options = ArrowReadOptions {
                schema: Some(&snapshot.schema),
                file_extension: ".arrow",
                ..Default::default()
            };
            let dir = format!("{}/", snapshot.dir.display());
            ctx.register_arrow(name, &dir, options).await?;
        }
    }
    // An API may not filter by the watermark (or be told to): the window applies here too.
    match (&endpoint.location, read.and_then(|r| r.window.as_ref())) {
        (Location::Http(_), Some(w)) => filter_file(ctx, name, w).await,
        _ => Ok(()),
    }
}

/// How a side is held while it is read (src/stage.rs [`Stager::hold`]).
struct Hold {
    /// Bytes held in memory at most.
    bytes: usize,
    /// The side's one key column: its NULLs and duplicates are counted as it is read, and a
    /// larger side is split by it into buckets (when `buckets`).
    key: Option<String>,
    buckets: bool,
    /// The side's say in dealing rows to buckets by key range (PostgreSQL sides).
    vote: Option<RangeVote>,
}

/// Read a database side once, holding its batches in memory while they fit `hold`, else staging
/// them in the work folder as they arrive.
async fn read_database(
    endpoint: &Endpoint,
    limit: Option<usize>,
    progress: &Progress,
    read: Option<&SourceRead>,
    wanted: &[String],
    work: &std::path::Path,
    hold: Hold,
) -> Result<Staged> {
    let side = endpoint.side;
    let counter = progress.rows(side);
    let mut stager = Stager::new(work, side).map_err(|e| Error::Io {
        path: work.to_path_buf(),
        source: e,
    })?;
    if let Some(key) = &hold.key {
        stager.track_key(key);
    }
    stager.hold(hold.bytes, hold.key.filter(|_| hold.buckets));
    let out = &mut stager;
    match &endpoint.location {
        Location::Postgres(url) => {
            postgres::snapshot(endpoint, url, limit, &counter, read, out, hold.vote).await?
        }
        Location::Mysql(url) => mysql::snapshot(endpoint, url, limit, &counter, read, out).await?,
        Location::Sqlite(path) => {
            sqlite::snapshot(endpoint, path, limit, &counter, read, out).await?
        }
        Location::Http(url) => {
            http::snapshot(endpoint, url, limit, &counter, read, wanted, out).await?
        }
        Location::File(..) => return Err(Error::Internal("files are registered, not read".into())),
    };
    let staged = stager
        .finish()
        .map_err(|e| crate::error::read_error(side, "reading the snapshot", e))?;
    counter.done();
    tracing::info!(side = %side, rows = staged.rows, "snapshot read");
    Ok(staged)
}

/// Narrow a registered file to the window: `column >= lower`, the bound a typed literal.
async fn filter_file(
    ctx: &SessionContext,
    name: &str,
    window: &crate::watermark::Window,
) -> Result<()> {
    use datafusion::prelude::{ident, lit};
    use datafusion::scalar::ScalarValue;
    let bound = match &window.lower {
        Bound::Int(n) => ScalarValue::Int64(Some(*n)),
        Bound::Timestamp(t) => {
            ScalarValue::TimestampMicrosecond(Some(t.and_utc().timestamp_micros()), None)
        }
        Bound::TimestampTz(t) => {
            ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
        }
        Bound::Date(d) => {
            ScalarValue::Date32(Some((*d - chrono::NaiveDate::default()).num_days() as i32))
        }
    };
    let filtered = ctx
        .table(name)
        .await?
        .filter(ident(&window.column).gt_eq(lit(bound)))?;
    ctx.deregister_table(name)?;
    ctx.register_table(name, filtered.into_view())?;
    Ok(())
}

/// Bind a JSON value from the saved state as the SQL value it stands for (NULL, a boolean, a
/// number or text; arrays and objects as JSON text).
pub(crate) fn bind_json<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    value: serde_json::Value,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    use serde_json::Value;
    match value {
        Value::Null => query.bind(None::<String>),
        Value::Bool(b) => query.bind(b),
        Value::Number(n) if n.is_i64() => query.bind(n.as_i64()),
        Value::Number(n) => query.bind(n.as_f64()),
        Value::String(s) => query.bind(s),
        other => query.bind(other.to_string()),
    }
}

/// The side's statement with `$watermark`/`$state.x` in a user query made parameters.
pub(crate) fn state_params(
    relation: &crate::config::Relation,
    read: Option<&SourceRead>,
    style: ParamStyle,
) -> (String, Vec<serde_json::Value>) {
    let dialect = if style == ParamStyle::Positional {
        crate::sql::Dialect::Mysql
    } else {
        crate::sql::Dialect::Standard
    };
    let select = crate::sql::relation_select(dialect, relation);
    match (relation, read) {
        (crate::config::Relation::Query(_), Some(r)) => {
            crate::watermark::bind_state(&select, r.state.as_ref(), style)
        }
        (crate::config::Relation::Query(_), None) => {
            crate::watermark::bind_state(&select, None, style)
        }
        _ => (select, Vec::new()),
    }
}

/// Await a driver call for at most `limit`: past it, sqlx's own I/O error "timed out", so each
/// caller reports it as it reports a lost connection, naming the side. The call is polled once
/// first: a row or chunk already received is taken without reading the clock or arming a timer
/// (this runs once per row of a MySQL or SQLite snapshot).
pub(crate) async fn within<T, E: From<std::io::Error>>(
    limit: std::time::Duration,
    call: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E> {
    tokio::pin!(call);
    if let std::task::Poll::Ready(result) = futures::poll!(call.as_mut()) {
        return result;
    }
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(E::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer within {}s (`[engine] io_timeout`): the server or the network stalled",
                limit.as_secs()
            ),
        ))),
    }
}

/// Cut a row stream into record batches of [`BATCH_ROWS`], counting rows as they come, and
/// stage each; always at least one batch (empty when there are no rows), so the column names and
/// types are known.
pub(crate) async fn batched<R, S, E>(
    mut rows: S,
    io_timeout: std::time::Duration,
    counter: &RowCounter,
    read_error: impl Fn(sqlx::Error) -> Error,
    to_batch: impl Fn(&[R]) -> std::result::Result<RecordBatch, E>,
    batch_error: impl Fn(E) -> Error,
    out: &mut Stager,
) -> Result<()>
where
    S: futures::Stream<Item = std::result::Result<R, sqlx::Error>> + Unpin,
{
    use futures::TryStreamExt;
    let mut chunk = Vec::with_capacity(BATCH_ROWS);
    loop {
        let row = within(io_timeout, rows.try_next())
            .await
            .map_err(&read_error)?;
        let end = row.is_none();
        chunk.extend(row);
        if chunk.len() == BATCH_ROWS || end {
            let batch = to_batch(&chunk).map_err(&batch_error)?;
            out.push(batch)
                .map_err(|e| read_error(sqlx::Error::Decode(Box::new(e))))?;
            counter.add(chunk.len());
            chunk.clear();
        }
        if end {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod vote_tests {
    use super::*;
    use crate::diff::KeyRange;

    #[tokio::test]
    async fn both_sides_reach_one_decision_even_when_one_is_late() {
        // Both vote: the range covering both estimates, on both sides.
        let [a, b] = RangeVote::pair();
        let (x, y) = tokio::join!(a.cast(Some(Some((1, 100)))), b.cast(Some(Some((50, 300)))));
        assert_eq!((x, y), (Some(KeyRange::covering(1, 300)), x));
        // A side whose key cannot take a range: both hash.
        let [a, b] = RangeVote::pair();
        let (x, y) = tokio::join!(a.cast(Some(Some((1, 100)))), b.cast(None));
        assert_eq!((x, y), (None, None));
        // The other side does not vote within the wait: the first decides for both, by hash,
        // and the late side finds that decision whatever it votes.
        let [a, b] = RangeVote::pair();
        let started = std::time::Instant::now();
        assert_eq!(a.cast(Some(Some((1, 100)))).await, None);
        assert!(started.elapsed() >= VOTE_WAIT);
        assert_eq!(b.cast(Some(Some((1, 100)))).await, None);
    }
}
