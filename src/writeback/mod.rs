//! Writeback: turn a changeset into writes on the destination. Rows are written in batches, each
//! batch in its own transaction: inserts (key and compared columns, skipped when the key exists,
//! so a replay inserts nothing twice), updates grouped by the set of changed columns (only those
//! columns are written), and deletes when `[write] deletes = true`.
//!
//! A batch the database refuses (a constraint, a type, a length, a trigger) is rolled back and
//! split in halves until the refused rows stand alone; the rest are written, and each refused row
//! is returned with the database's message. Errors that are not about the rows (the connection
//! is lost, the table is gone) stop the run.

mod http;
mod mysql;
mod postgres;
mod spool;
mod sqlite;

pub use spool::Spool;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::changeset::{Action, Change, Changeset};
use crate::config::{Job, Location, Relation};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Rows written per action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
}

impl Applied {
    fn add(&mut self, action: Action, n: u64) {
        match action {
            Action::Insert => self.insert += n,
            Action::Update => self.update += n,
            Action::Delete => self.delete += n,
        }
    }
}

/// A row the destination refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub action: Action,
    pub key: Map<String, Value>,
    pub error: String,
    /// Incremental mode: the refused row's cursor value (it holds the watermark back).
    pub cursor: Option<crate::changeset::Cell>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub applied: Applied,
    pub failed: Vec<Failure>,
}

/// The destination table and its mapped columns.
#[derive(Debug, Clone)]
pub struct Target {
    pub table: String,
    /// `[engine] io_timeout`: longest wait for one batch's answer.
    pub io_timeout: std::time::Duration,
    pub keys: Vec<String>,
    pub compared: Vec<String>,
}

impl Target {
    /// `"code" AS k0, …` and `k0, …`: the key columns as staging and key maps name them.
    pub fn staged_keys(&self, quote: fn(&str) -> String) -> (Vec<String>, Vec<String>) {
        let aliased = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS k{i}", quote(k)))
            .collect();
        let names = (0..self.keys.len()).map(|i| format!("k{i}")).collect();
        (aliased, names)
    }
}

/// One statement's worth of rows: an action, the compared columns it writes (by index) and rows.
pub struct Op<'a> {
    pub action: Action,
    pub columns: &'a [usize],
    pub rows: &'a [&'a Change],
}

impl Op<'_> {
    /// The compared columns this op writes (none for deletes).
    pub fn written(&self) -> &[usize] {
        if self.action == Action::Delete {
            &[]
        } else {
            self.columns
        }
    }

    /// The values bound or copied for one row: its key, then the written columns' source values.
    pub fn cells<'c>(
        &'c self,
        change: &'c Change,
    ) -> impl Iterator<Item = &'c crate::changeset::Cell> {
        let source = self.written().iter().map(|i| &change.cells.source[*i]);
        change.cells.key.iter().chain(source)
    }

    /// The batch's column names as writers stage them: `k0…` for the key, `v<i>` for column i.
    pub fn staged_names(&self, target: &Target) -> Vec<String> {
        let keys = (0..target.keys.len()).map(|i| format!("k{i}"));
        keys.chain(self.written().iter().map(|i| format!("v{i}")))
            .collect()
    }

    /// The destination's names for the same columns, quoted.
    pub fn destination_names(&self, target: &Target, quote: fn(&str) -> String) -> Vec<String> {
        let written = self.written().iter().map(|i| &target.compared[*i]);
        target
            .keys
            .iter()
            .chain(written)
            .map(|c| quote(c))
            .collect()
    }

    /// `d."total_price" = w.v0, …`: the update's assignments (`prefix` is `d.` where the dialect
    /// wants the target qualified).
    pub fn assignments(&self, target: &Target, quote: fn(&str) -> String, prefix: &str) -> String {
        let sets: Vec<String> = self
            .columns
            .iter()
            .map(|i| format!("{prefix}{} = w.v{i}", quote(&target.compared[*i])))
            .collect();
        sets.join(", ")
    }

    /// What is being written, for messages.
    pub fn what(&self, target: &Target) -> String {
        format!("writing {}s to `{}`", self.action.name(), target.table)
    }
}

/// `d."code" = w.k0 AND …`: the key match between the destination `alias` and the staged rows.
pub fn key_matches(target: &Target, quote: fn(&str) -> String, alias: &str) -> String {
    let matches: Vec<String> = target
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{alias}.{} = w.k{i}", quote(k)))
        .collect();
    matches.join(" AND ")
}

/// Why a batch was not written.
pub enum WriteError {
    /// The database refused the rows (constraint, type, …): split and retry.
    Rejected(String),
    /// The statement changed another number of rows than the batch holds (an insert whose key
    /// exists, an update or delete whose key matches no row or several rows): rolled back; split
    /// until the rows concerned stand alone.
    Mismatch(u64),
    /// Anything else: stop the run.
    Fatal(Error),
}

/// Roll back unless the statement changed exactly one destination row per row of the batch.
pub fn expect_rows(affected: u64, op: &Op<'_>) -> Result<(), WriteError> {
    if affected == op.rows.len() as u64 {
        Ok(())
    } else {
        Err(WriteError::Mismatch(affected))
    }
}

/// Classify a driver error: database errors concern the rows, the rest the run.
pub fn classify(what: &str, e: sqlx::Error) -> WriteError {
    match e {
        sqlx::Error::Database(db) => WriteError::Rejected(db.message().to_string()),
        other => WriteError::Fatal(Error::Writeback {
            what: what.to_string(),
            source: Box::new(other),
        }),
    }
}

enum Writer {
    Postgres(postgres::Writer),
    Mysql(mysql::Writer),
    Sqlite(sqlite::Writer),
}

impl Writer {
    async fn write(&mut self, target: &Target, op: &Op<'_>) -> Result<(), WriteError> {
        match self {
            Writer::Postgres(w) => w.write(target, op).await,
            Writer::Mysql(w) => w.write(target, op).await,
            Writer::Sqlite(w) => w.write(target, op).await,
        }
    }

    /// How many destination rows the change's key matches, under the destination's own rules
    /// (collation included): explains a row whose write changed no row or several.
    async fn matches(&mut self, target: &Target, change: &Change) -> Result<u64, WriteError> {
        match self {
            Writer::Postgres(w) => w.matches(target, change).await,
            Writer::Mysql(w) => w.matches(target, change).await,
            Writer::Sqlite(w) => w.matches(target, change).await,
        }
    }

    /// Why the destination cannot hold this row as the source has it, before anything is sent.
    fn unstorable(&self, target: &Target, op: &Op<'_>, change: &Change) -> Option<String> {
        match self {
            Writer::Postgres(w) => w.unstorable(target, op, change),
            Writer::Mysql(w) => mysql::unstorable(target, op, change, w.floats()),
            Writer::Sqlite(w) => w.unstorable(target, op, change),
        }
    }

    /// Most rows one statement may carry with `values` bound values per row.
    fn max_rows(&self, values: usize) -> usize {
        let placeholders = match self {
            Writer::Postgres(_) => return usize::MAX,
            Writer::Mysql(_) => 65_535,
            Writer::Sqlite(_) => 32_766,
        };
        (placeholders / values.max(1)).max(1)
    }
}

/// Refuse destinations that cannot be written: files, and sides read through a `query`.
pub fn check_destination(job: &Job) -> Result<()> {
    match (&job.destination.location, &job.destination.relation) {
        (Location::Http(_), _) => Ok(()),
        (Location::File(..), _) => Err(Error::Unsupported(
            "apply writes to databases (PostgreSQL, MySQL/MariaDB, SQLite); a file destination can be planned, not applied".into(),
        )),
        (_, Relation::Table(_)) => Ok(()),
        (_, _) => Err(Error::Unsupported(
            "apply needs `[destination] table`: rows cannot be written back through a `query`".into(),
        )),
    }
}

/// The destination table and its mapped columns.
pub fn target(job: &Job, changeset: &Changeset) -> Result<Target> {
    check_destination(job)?;
    let table = match (&job.destination.relation, &job.destination.location) {
        (Relation::Table(table), _) => table.clone(),
        (_, Location::Http(_)) => job.destination.location.display(),
        _ => return Err(Error::Internal("checked above".into())),
    };
    Ok(Target {
        table,
        io_timeout: job.destination.io_timeout,
        keys: changeset.key_columns.clone(),
        compared: changeset.compared_columns.clone(),
    })
}

/// Write the spooled changeset (`shape` names its job and columns and holds its counts): deletes
/// first (only when `deletes`), then updates, then inserts, read back `batch_size` changes at a
/// time, updates grouped by their changed columns within each batch.
pub async fn write(
    job: &Job,
    shape: &Changeset,
    spool: &Spool,
    deletes: bool,
    progress: &Progress,
) -> Result<Outcome> {
    let target = target(job, shape)?;
    if let Location::Http(_) = &job.destination.location {
        return http::write(job, shape, spool, deletes, progress, &target).await;
    }
    let mut writing = Writing::open(job, target, progress, total(shape, deletes)).await?;
    for action in actions(deletes) {
        writing
            .write(shape, action, spool.read_to_write(action)?)
            .await?;
    }
    Ok(writing.finish())
}

/// Write each pass's changes as the diff hands them over (src/apply.rs), while the diff's later
/// passes run: each pass's deletes (when `deletes`), then its updates, then its inserts. `None`
/// when the diff handed nothing over (its changes are then written by [`write`]).
///
/// Passes split the keys, so no key is written twice; only the order of actions across passes
/// differs from [`write`]'s. A row refused while a later pass had yet to be written (a unique
/// value that a later pass's delete or update frees) is tried once more after the last pass.
pub async fn write_handed(
    job: &Job,
    mut handed: tokio::sync::mpsc::UnboundedReceiver<spool::Handed>,
    deletes: bool,
    progress: &Progress,
) -> Result<Option<Outcome>> {
    let Some(first) = handed.recv().await else {
        return Ok(None);
    };
    pause_point("before-write");
    let target = target(job, &first.shape)?;
    let mut writing = Writing::open(job, target, progress, 0).await?;
    writing.retry = Some(Vec::new());
    let mut next = Some(first);
    while let Some(spool::Handed { part, shape }) = next {
        writing.counter.grow(total(&shape, deletes));
        for action in actions(deletes) {
            writing
                .write(&shape, action, part.read_to_write(action))
                .await?;
        }
        next = handed.recv().await;
        if next.is_none() {
            writing.again(&shape).await?;
        }
    }
    Ok(Some(writing.finish()))
}

/// The destination's writers, and what they wrote so far.
struct Writing {
    target: Target,
    writers: Vec<Writer>,
    batch_size: usize,
    /// Rows per batch by the values each row binds (a statement's placeholders are limited).
    sizes: Vec<usize>,
    counter: crate::progress::RowCounter,
    outcome: Outcome,
    /// Rows the destination refused, kept to be tried again once every pass is written
    /// ([`write_handed`]); `None`: refused rows are failed at once.
    retry: Option<Vec<Refused>>,
}

/// A row the destination refused, with the columns its write set: tried again later.
type Refused = (Action, Vec<usize>, Change);

impl Writing {
    async fn open(job: &Job, target: Target, progress: &Progress, total: u64) -> Result<Writing> {
        let mut writers = vec![connect(job, &target).await?];
        if matches!(&writers[0], Writer::Postgres(w) if w.shareable()) {
            for _ in 1..POSTGRES_WRITERS {
                writers.push(connect(job, &target).await?);
            }
        }
        let sizes = (0..=target.keys.len() + target.compared.len())
            .map(|per_row| job.write.batch_size.min(writers[0].max_rows(per_row)))
            .collect();
        Ok(Writing {
            target,
            writers,
            batch_size: job.write.batch_size,
            sizes,
            counter: progress.bar("writing", total),
            outcome: Outcome::default(),
            retry: None,
        })
    }

    /// Write `changes`, all of one action.
    async fn write(
        &mut self,
        shape: &Changeset,
        action: Action,
        mut changes: impl Iterator<Item = Result<Change>> + Send + 'static,
    ) -> Result<()> {
        let began = std::time::Instant::now();
        // A thread reads the spool and cuts it into batches while the writers write: a writer
        // that is free takes the next batch (batches of one action touch distinct keys, so their
        // order does not matter), and no writer waits for the others or for the spool.
        let (send, receive) = tokio::sync::mpsc::channel::<Batch>(2 * self.writers.len());
        let compared = self.target.compared.len();
        let (batch_size, keys, sizes, n) = (
            self.batch_size,
            self.target.keys.len(),
            self.sizes.clone(),
            self.writers.len(),
        );
        let reader = tokio::task::spawn_blocking(move || -> Result<()> {
            loop {
                let chunk = changes
                    .by_ref()
                    .take(batch_size * n)
                    .collect::<Result<Vec<Change>>>()?;
                if chunk.is_empty() {
                    return Ok(());
                }
                for (columns, rows) in groups(compared, action, chunk) {
                    let size = sizes[keys + columns.len()];
                    let mut rows = rows.into_iter().peekable();
                    while rows.peek().is_some() {
                        let part: Vec<Change> = rows.by_ref().take(size).collect();
                        if send.blocking_send((columns.clone(), part)).is_err() {
                            // The writers stopped (an error): nothing more to hand them.
                            return Ok(());
                        }
                    }
                }
            }
        });
        let receive = tokio::sync::Mutex::new(receive);
        let keep = self.retry.is_some();
        let work = self.writers.iter_mut().map(|writer| {
            let (receive, target, counter) = (&receive, &self.target, &self.counter);
            async move {
                let mut done = Outcome::default();
                let mut refused = Vec::new();
                loop {
                    let next = receive.lock().await.recv().await;
                    let Some((columns, rows)) = next else {
                        return Ok::<_, Error>((done, refused));
                    };
                    pause_point("before-batch");
                    let rows: Vec<&Change> = rows.iter().collect();
                    let op = Op {
                        action,
                        columns: &columns,
                        rows: &rows,
                    };
                    let kept = if keep { Some(&mut refused) } else { None };
                    isolate(writer, target, shape, op, &mut done, kept).await?;
                    counter.add(rows.len());
                    pause_point("after-batch");
                }
            }
        });
        let written = futures::future::try_join_all(work).await;
        // A writer's error ends the reader too (its channel is closed): wait for it either way.
        drop(receive);
        let read = reader
            .await
            .map_err(|e| Error::Internal(format!("reading the spooled changes: {e}")))?;
        for (done, refused) in written? {
            self.outcome.applied.insert += done.applied.insert;
            self.outcome.applied.update += done.applied.update;
            self.outcome.applied.delete += done.applied.delete;
            self.outcome.failed.extend(done.failed);
            if let Some(retry) = &mut self.retry {
                retry.extend(refused);
            }
        }
        read?;
        tracing::debug!(action = action.name(), elapsed = ?began.elapsed(), "written");
        Ok(())
    }

    /// Try once more the rows refused while later passes were still to be written; those
    /// refused again fail.
    async fn again(&mut self, shape: &Changeset) -> Result<()> {
        let Some(retry) = self.retry.take() else {
            return Ok(());
        };
        // Deletes, updates, inserts; each batch of rows that write the same columns.
        let mut by_op: BTreeMap<(u8, Vec<usize>), (Action, Vec<Change>)> = BTreeMap::new();
        for (action, columns, change) in retry {
            let group = by_op
                .entry((rank(action), columns))
                .or_insert((action, Vec::new()));
            group.1.push(change);
        }
        for ((_, columns), (action, changes)) in by_op {
            let size = self.sizes[self.target.keys.len() + columns.len()];
            for chunk in changes.chunks(size) {
                let rows: Vec<&Change> = chunk.iter().collect();
                let op = Op {
                    action,
                    columns: &columns,
                    rows: &rows,
                };
                let (writer, target) = (&mut self.writers[0], &self.target);
                isolate(writer, target, shape, op, &mut self.outcome, None).await?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Outcome {
        self.counter.done();
        sort_failures(&mut self.outcome.failed);
        self.outcome
    }
}

/// Changes to write: inserts and updates, and deletes when they are on.
fn total(shape: &Changeset, deletes: bool) -> u64 {
    let s = &shape.summary;
    s.insert + s.update + if deletes { s.delete } else { 0 }
}

/// The order actions are written in: deletes first (when on), then updates, then inserts.
fn actions(deletes: bool) -> Vec<Action> {
    let mut actions = Vec::new();
    if deletes {
        actions.push(Action::Delete);
    }
    actions.extend([Action::Update, Action::Insert]);
    actions
}

/// Writers and the diff give no order of their own: failures are reported by action, then key.
fn sort_failures(failed: &mut [Failure]) {
    failed.sort_by(|a, b| {
        rank(a.action)
            .cmp(&rank(b.action))
            .then_with(|| compare_keys(&a.key, &b.key))
    });
}

/// Deletes, updates, inserts: the order they are written in.
fn rank(action: Action) -> u8 {
    match action {
        Action::Delete => 0,
        Action::Update => 1,
        Action::Insert => 2,
    }
}

/// Keys in their natural order: numbers as numbers, text as text, column by column.
fn compare_keys(a: &Map<String, Value>, b: &Map<String, Value>) -> std::cmp::Ordering {
    for (x, y) in a.values().zip(b.values()) {
        let order = match (x, y) {
            (Value::Number(m), Value::Number(n)) => match (m.as_i64(), n.as_i64()) {
                (Some(m), Some(n)) => m.cmp(&n),
                _ => m
                    .as_f64()
                    .partial_cmp(&n.as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal),
            },
            (Value::String(m), Value::String(n)) => m.cmp(n),
            _ => x.to_string().cmp(&y.to_string()),
        };
        if order.is_ne() {
            return order;
        }
    }
    std::cmp::Ordering::Equal
}

/// How many connections write a PostgreSQL destination whose key is indexed: the server's work
/// (index lookups, heap and index writes) is most of a batch's cost, and two sessions share it
/// over two cores (benches/run.sh measures it).
const POSTGRES_WRITERS: usize = 2;

async fn connect(job: &Job, target: &Target) -> Result<Writer> {
    Ok(match &job.destination.location {
        Location::Postgres(url) => {
            Writer::Postgres(postgres::Writer::connect(&job.destination, url, target).await?)
        }
        Location::Mysql(url) => {
            Writer::Mysql(mysql::Writer::connect(&job.destination, url, target).await?)
        }
        Location::Sqlite(path) => {
            Writer::Sqlite(sqlite::Writer::connect(&job.destination, path, target).await?)
        }
        Location::File(..) | Location::Http(_) => {
            return Err(Error::Internal(
                "file and HTTP destinations have no database writer".into(),
            ));
        }
    })
}

/// Changes for a writer: the compared columns they write, and the changes.
type Batch = (Vec<usize>, Vec<Change>);

/// Changes by the compared columns they write (of `compared`): every column for inserts, none
/// for deletes, the changed ones for updates.
fn groups(compared: usize, action: Action, chunk: Vec<Change>) -> Vec<Batch> {
    let all: Vec<usize> = (0..compared).collect();
    match action {
        Action::Insert => vec![(all, chunk)],
        Action::Delete => vec![(Vec::new(), chunk)],
        Action::Update => {
            let mut by_columns: BTreeMap<Vec<usize>, Vec<Change>> = BTreeMap::new();
            for c in chunk {
                let columns = c
                    .changed
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| **x)
                    .map(|(i, _)| i)
                    .collect();
                by_columns.entry(columns).or_default().push(c);
            }
            by_columns.into_iter().collect()
        }
    }
}

/// Write one batch; when the database refuses it, split until the refused rows stand alone.
/// Rows the destination cannot hold as the source has them are failed before anything is sent.
/// With `keep`, a row the database refuses goes there (to be tried again) rather than failing.
async fn isolate(
    writer: &mut Writer,
    target: &Target,
    changeset: &Changeset,
    op: Op<'_>,
    outcome: &mut Outcome,
    mut keep: Option<&mut Vec<Refused>>,
) -> Result<()> {
    let fail = |change: &Change, error: String| Failure {
        action: op.action,
        key: changeset.key_object(change),
        error,
        cursor: change.cells.cursor.clone(),
    };
    let mut storable = Vec::with_capacity(op.rows.len());
    for change in op.rows {
        match writer.unstorable(target, &op, change) {
            Some(error) => outcome.failed.push(fail(change, error)),
            None => storable.push(*change),
        }
    }
    let mut pending: Vec<&[&Change]> = vec![&storable];
    while let Some(rows) = pending.pop() {
        if rows.is_empty() {
            continue;
        }
        let part = Op {
            action: op.action,
            columns: op.columns,
            rows,
        };
        let answer = tokio::time::timeout(target.io_timeout, writer.write(target, &part)).await;
        let Ok(answer) = answer else {
            return Err(Error::Writeback {
                what: part.what(target),
                source: Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer within {}s (`[engine] io_timeout`): the server or the network stalled",
                        target.io_timeout.as_secs()
                    ),
                )),
            });
        };
        match answer {
            Ok(()) => outcome.applied.add(op.action, rows.len() as u64),
            Err(WriteError::Rejected(error)) if rows.len() == 1 => match keep.as_deref_mut() {
                Some(kept) => kept.push((op.action, op.columns.to_vec(), rows[0].clone())),
                None => outcome.failed.push(fail(rows[0], error)),
            },
            Err(WriteError::Mismatch(_)) if rows.len() == 1 => {
                let found = writer.matches(target, rows[0]).await;
                let found = match found {
                    Ok(n) => n,
                    Err(WriteError::Fatal(e)) => return Err(e),
                    Err(_) => u64::MAX,
                };
                if let Some(error) = mismatch_message(op.action, found) {
                    outcome.failed.push(fail(rows[0], error));
                }
            }
            Err(WriteError::Rejected(_) | WriteError::Mismatch(_)) => {
                let (a, b) = rows.split_at(rows.len() / 2);
                pending.push(b);
                pending.push(a);
            }
            Err(WriteError::Fatal(e)) => return Err(e),
        }
    }
    Ok(())
}

/// Why a one-row write changed no row or several, given how many destination rows its key
/// matches now; `None` for a delete whose row is already gone (nothing left to do).
fn mismatch_message(action: Action, found: u64) -> Option<String> {
    const COLLATION: &str = "the destination's collation treats keys that differ only in case, accents or trailing spaces as equal";
    Some(match (action, found) {
        (Action::Delete, 0) => return None,
        (Action::Insert, _) => format!(
            "a destination row already has this key ({COLLATION}, or the row was written since the snapshot); nothing written"
        ),
        (Action::Update, 0) => {
            "no destination row has this key any more (deleted since the snapshot); nothing written".into()
        }
        (_, 1) => "the write changed no destination row (a trigger or rule skipped it, or the row changed meanwhile); the next run compares it again".into(),
        (_, n) if n == u64::MAX => "the write changed no row or several rows; nothing written".into(),
        (_, n) => format!("the key matches {n} destination rows ({COLLATION}); nothing written"),
    })
}

/// Test hook for crash tests: with `RECON_PAUSE_AT=NAME[:N]`, the N-th (default first) time the
/// run reaches point NAME it says so on stderr and sleeps, so a test can kill it there. Points:
/// `before-write`, `before-batch`, `after-batch`, `before-state`.
pub fn pause_point(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Only the configured point is ever counted, so one counter serves.
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("RECON_PAUSE_AT") else {
        return;
    };
    let (point, nth) = spec
        .split_once(':')
        .map_or((spec.as_str(), 1), |(p, n)| (p, n.parse().unwrap_or(1)));
    if point != name || REACHED.fetch_add(1, Ordering::SeqCst) + 1 != nth {
        return;
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("recon: paused at {name}:{nth}");
    }
    std::thread::sleep(std::time::Duration::from_secs(120));
}
