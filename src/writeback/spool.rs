//! The changeset of an `apply`, spooled to local files in a private work folder as it is
//! produced, so that no part of an apply holds the whole changeset: the guards read its counts,
//! writeback reads it back a batch at a time.
//!
//! A diff's output is kept as the diff wrote it — each pass's Arrow IPC file, adopted whole
//! ([`Spool::adopt`]) — and its changes are built from it only as they are read back, one action
//! at a time: no change is serialised and parsed again on the way to the destination (at 10M
//! rows with 250,000 changes that round trip through JSON cost more CPU than the writes' own).
//! Changes that do not come from a diff (a reviewed plan's) are pushed one at a time and kept as
//! one JSON line each, a file per action.

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use crate::changeset::{Action, Cell, Change};
use crate::engine::WorkDir;
use crate::error::{Error, Result};

const ACTIONS: [Action; 3] = [Action::Insert, Action::Update, Action::Delete];

/// Changes written to `<work>/<action>.jsonl`.
pub struct Spool {
    work: WorkDir,
    writers: Vec<BufWriter<File>>,
    /// The first changes, kept for the report (`None`: every change).
    listed: Vec<Change>,
    list: Option<usize>,
    /// The diff's output files, in the order the diff wrote them.
    parts: Vec<Part>,
    /// Where each diff output file goes as soon as it is written, for writes that overlap the
    /// diff's later passes ([`Spool::hand_over`]).
    handoff: Option<Handoff>,
}

/// A diff output file: one change per row (see queries/diff.sql for its columns).
#[derive(Clone)]
pub struct Part {
    path: PathBuf,
    keys: usize,
    compared: usize,
}

impl Part {
    /// This file's changes of one action, in the order the diff wrote them, as a writer reads
    /// them (see [`Spool::read_to_write`]).
    pub fn read_to_write(&self, action: Action) -> impl Iterator<Item = Result<Change>> + use<> {
        Built::new(action, false, vec![self.clone()])
    }
}

/// A pass's diff output, handed to writeback as soon as the pass has written it.
pub struct Handed {
    pub part: Part,
    /// The changeset's job and columns (its changes empty, its counts this pass's).
    pub shape: crate::changeset::Changeset,
}

struct Handoff {
    sender: tokio::sync::mpsc::UnboundedSender<Handed>,
    refuse_empty_source: bool,
}

impl Spool {
    /// A spool in the job's spill folder (`[engine] spill_dir`, default the system temp dir).
    pub fn for_job(job: &crate::config::Job, list: Option<usize>) -> Result<Spool> {
        let spill = job
            .engine
            .spill_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        Spool::create(&spill, list)
    }

    /// A spool under `parent` (the job's spill folder).
    pub fn create(parent: &std::path::Path, list: Option<usize>) -> Result<Spool> {
        let work = WorkDir::create(parent)?;
        let mut writers = Vec::with_capacity(3);
        for action in ACTIONS {
            let path = work.path().join(format!("{}.jsonl", action.name()));
            writers.push(BufWriter::new(File::create(&path).map_err(io(&path))?));
        }
        Ok(Spool {
            work,
            writers,
            listed: Vec::new(),
            list,
            parts: Vec::new(),
            handoff: None,
        })
    }

    /// Where the diff writes its next output file, to be adopted when written.
    pub fn next_part(&self) -> PathBuf {
        self.work
            .path()
            .join(format!("diff-{}.arrow", self.parts.len()))
    }

    /// Keep the diff output file at `path` (written at [`Spool::next_part`]) as spooled changes:
    /// `keys` key columns and `compared` compared columns.
    pub fn adopt(&mut self, path: PathBuf, keys: usize, compared: usize) {
        self.parts.push(Part {
            path,
            keys,
            compared,
        });
    }

    /// Ask for each diff output file as soon as it is written (an apply whose guards need no
    /// totals): the diff hands them over only when its key checks were settled before the first
    /// pass, and, with `refuse_empty_source`, when the source has rows (src/diff/mod.rs). The
    /// receiver gets nothing when the diff hands nothing over; its channel closes with
    /// [`Spool::stop_handing`] or [`Spool::close`].
    pub fn hand_over(
        &mut self,
        refuse_empty_source: bool,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Handed> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.handoff = Some(Handoff {
            sender,
            refuse_empty_source,
        });
        receiver
    }

    /// `Some(refuse_empty_source)` when writeback asked for each file as it is written.
    pub fn handoff(&self) -> Option<bool> {
        self.handoff.as_ref().map(|h| h.refuse_empty_source)
    }

    /// Hand the file last adopted to writeback, with `shape` (its counts the file's).
    pub fn hand(&mut self, shape: crate::changeset::Changeset) {
        if let (Some(handoff), Some(part)) = (&self.handoff, self.parts.last()) {
            // A receiver that is gone (writeback stopped on an error) ends the run anyway.
            let _ = handoff.sender.send(Handed {
                part: part.clone(),
                shape,
            });
        }
    }

    /// Hand nothing more over: the receiver's channel closes.
    pub fn stop_handing(&mut self) {
        self.handoff = None;
    }

    fn path(&self, action: Action) -> PathBuf {
        self.work.path().join(format!("{}.jsonl", action.name()))
    }

    /// Spool one change (and keep it for the report while the listing has room).
    pub fn push(&mut self, change: Change) -> Result<()> {
        let i = ACTIONS
            .iter()
            .position(|a| *a == change.action)
            .unwrap_or(0);
        let path = self.path(change.action);
        let line = serde_json::to_string(&change).map_err(|e| Error::Internal(e.to_string()))?;
        let w = &mut self.writers[i];
        w.write_all(line.as_bytes())
            .and_then(|_| w.write_all(b"\n"))
            .map_err(io(&path))?;
        if self.list.is_none_or(|n| self.listed.len() < n) {
            self.listed.push(change);
        }
        Ok(())
    }

    /// Finish writing; returns the changes kept for the report.
    pub fn close(&mut self) -> Result<Vec<Change>> {
        self.stop_handing();
        for (w, action) in self.writers.iter_mut().zip(ACTIONS) {
            let path = self.work.path().join(format!("{}.jsonl", action.name()));
            w.flush().map_err(io(&path))?;
        }
        Ok(std::mem::take(&mut self.listed))
    }

    /// The spooled changes of one action, in the order they were produced: the pushed ones,
    /// then those of the adopted diff output, built a batch at a time as they are read.
    pub fn read(&self, action: Action) -> Result<impl Iterator<Item = Result<Change>> + use<>> {
        self.read_as(action, true)
    }

    /// As [`Spool::read`], for a writer: the changes built from the diff's output carry their
    /// key, id, changed columns and typed cells, and no JSON `source` or `destination` values.
    pub fn read_to_write(
        &self,
        action: Action,
    ) -> Result<impl Iterator<Item = Result<Change>> + use<>> {
        self.read_as(action, false)
    }

    fn read_as(
        &self,
        action: Action,
        values: bool,
    ) -> Result<impl Iterator<Item = Result<Change>> + use<>> {
        let path = self.path(action);
        let file = File::open(&path).map_err(io(&path))?;
        let pushed = BufReader::new(file).lines().map(move |line| {
            let line = line.map_err(io(&path))?;
            serde_json::from_str(&line)
                .map_err(|e| Error::Internal(format!("a spooled change: {e}")))
        });
        let parts = self.parts.clone();
        let built = if !values && parts.len() > 1 && parts.len() <= MERGED_PARTS {
            let parts = parts
                .into_iter()
                .map(|p| Built::new(action, values, vec![p]));
            Adopted::Merged(Merged {
                parts: parts.collect(),
                heads: BinaryHeap::new(),
                started: false,
            })
        } else {
            Adopted::InTurn(Box::new(Built::new(action, values, parts)))
        };
        Ok(pushed.chain(built))
    }
}

/// The most diff output files whose changes are merged into one key order for a writer (each
/// holds a batch of built changes meanwhile); past that, each file's changes come in their own
/// key order, one file after the other.
const MERGED_PARTS: usize = 32;

/// The adopted diff output's changes of one action: merged by key, or file after file.
enum Adopted {
    Merged(Merged),
    InTurn(Box<Built>),
}

impl Iterator for Adopted {
    type Item = Result<Change>;

    fn next(&mut self) -> Option<Result<Change>> {
        match self {
            Adopted::Merged(m) => m.next(),
            Adopted::InTurn(b) => b.next(),
        }
    }
}

/// The changes of several diff output files, each in key order (a pass's changes, sorted by the
/// diff for an apply), merged into one key order: a writer then meets the destination's rows in
/// the order of its key index, so that consecutive rows of a batch share index pages and the
/// destination's cache, rather than landing anywhere in the index (the benchmark's 10M-row drift,
/// 270,000 changes: its write phase 15–30 % shorter, README "Measured"). Only the order of
/// writes changes: every change comes once either way.
struct Merged {
    parts: Vec<Built>,
    heads: BinaryHeap<Head>,
    started: bool,
}

/// A file's next change, ordered for a min-heap by key.
struct Head {
    change: Change,
    part: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Head) -> std::cmp::Ordering {
        key_order(&other.change.cells.key, &self.change.cells.key).then(other.part.cmp(&self.part))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Head) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Head {}

impl Merged {
    /// Put file `part`'s next change among the heads.
    fn pull(&mut self, part: usize) -> Result<()> {
        if let Some(change) = self.parts[part].next() {
            self.heads.push(Head {
                change: change?,
                part,
            });
        }
        Ok(())
    }

    fn end(&mut self) {
        self.parts.clear();
        self.heads.clear();
    }
}

impl Iterator for Merged {
    type Item = Result<Change>;

    fn next(&mut self) -> Option<Result<Change>> {
        if !self.started {
            self.started = true;
            for part in 0..self.parts.len() {
                if let Err(e) = self.pull(part) {
                    // One error ends the reading.
                    self.end();
                    return Some(Err(e));
                }
            }
        }
        let Head { change, part } = self.heads.pop()?;
        if let Err(e) = self.pull(part) {
            self.end();
            return Some(Err(e));
        }
        Some(Ok(change))
    }
}

/// Keys in the order the diff sorts them (queries/diff.sql: numbers as numbers, text by its
/// bytes, times in time order), column by column. Decimals compare as floats: enough for an
/// order of writes (two decimals a float cannot tell apart fall back to their text).
fn key_order(a: &[Cell], b: &[Cell]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for (x, y) in a.iter().zip(b) {
        let order = match (x, y) {
            (Cell::Int(m), Cell::Int(n)) => m.cmp(n),
            (Cell::Float(m), Cell::Float(n)) => m.total_cmp(n),
            (Cell::Decimal(m), Cell::Decimal(n)) => {
                let (p, q) = (m.parse::<f64>(), n.parse::<f64>());
                match (p, q) {
                    (Ok(p), Ok(q)) => p.total_cmp(&q).then_with(|| m.cmp(n)),
                    _ => m.cmp(n),
                }
            }
            (Cell::Text(m), Cell::Text(n)) => m.cmp(n),
            (Cell::Bytes(m), Cell::Bytes(n)) => m.cmp(n),
            (Cell::Bool(m), Cell::Bool(n)) => m.cmp(n),
            (Cell::Date(m), Cell::Date(n)) => m.cmp(n),
            (Cell::Time(m), Cell::Time(n)) => m.cmp(n),
            (Cell::Timestamp(m), Cell::Timestamp(n)) => m.cmp(n),
            (Cell::TimestampTz(m), Cell::TimestampTz(n)) => m.cmp(n),
            _ => rank(x).cmp(&rank(y)),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

/// Cells of different kinds (NULL, infinities) in a fixed order among themselves.
fn rank(cell: &Cell) -> u8 {
    match cell {
        Cell::Infinity(true) => 0,
        Cell::Null => 1,
        Cell::Infinity(false) => 3,
        _ => 2,
    }
}

type IpcReader = datafusion::arrow::ipc::reader::FileReader<BufReader<File>>;

/// The changes of one action in the adopted diff output, built one batch (at most 4,096 rows,
/// as the diff wrote them) at a time.
struct Built {
    action: Action,
    values: bool,
    parts: std::vec::IntoIter<Part>,
    reading: Option<(Part, IpcReader)>,
    ready: std::vec::IntoIter<Change>,
}

impl Built {
    fn new(action: Action, values: bool, parts: Vec<Part>) -> Built {
        Built {
            action,
            values,
            parts: parts.into_iter(),
            reading: None,
            ready: Vec::new().into_iter(),
        }
    }

    /// The next batch's changes of the action, `None` after the last part.
    fn fill(&mut self) -> Option<Result<Vec<Change>>> {
        loop {
            let Some((part, reader)) = &mut self.reading else {
                let part = self.parts.next()?;
                let opened = File::open(&part.path)
                    .map_err(|source| Error::Io {
                        path: part.path.clone(),
                        source,
                    })
                    .and_then(|file| Ok(IpcReader::try_new(BufReader::new(file), None)?));
                match opened {
                    Ok(reader) => self.reading = Some((part, reader)),
                    Err(e) => return Some(Err(e)),
                }
                continue;
            };
            match reader.next() {
                None => self.reading = None,
                Some(batch) => {
                    let built = batch.map_err(Error::from).and_then(|batch| {
                        let (keys, compared) = (part.keys, part.compared);
                        crate::diff::changes_of(&batch, keys, compared, self.action, self.values)
                    });
                    return Some(built);
                }
            }
        }
    }
}

impl Iterator for Built {
    type Item = Result<Change>;

    fn next(&mut self) -> Option<Result<Change>> {
        loop {
            if let Some(change) = self.ready.next() {
                return Some(Ok(change));
            }
            match self.fill()? {
                Ok(changes) => self.ready = changes.into_iter(),
                Err(e) => {
                    // One error ends the reading.
                    self.parts = Vec::new().into_iter();
                    self.reading = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::{Cell, Cells};

    #[test]
    fn spooled_changes_come_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path(), Some(0)).unwrap();
        let cells = vec![
            Cell::Float(f64::NAN),
            Cell::Float(-0.0),
            Cell::Decimal("123456789012345678901234567890.1".into()),
            Cell::Infinity(true),
            Cell::Timestamp(
                chrono::DateTime::from_timestamp_micros(1)
                    .unwrap()
                    .naive_utc(),
            ),
        ];
        let change = Change {
            action: Action::Update,
            key: vec![serde_json::json!("a")],
            id: serde_json::Value::Null,
            source: vec![],
            destination: vec![],
            changed: vec![true],
            cells: Cells {
                key: vec![Cell::Text("a".into())],
                source: cells.clone(),
                cursor: None,
            },
        };
        spool.push(change.clone()).unwrap();
        assert!(spool.close().unwrap().is_empty());
        let back: Vec<Change> = spool
            .read(Action::Update)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let got = &back[0].cells.source;
        assert!(matches!(got[0], Cell::Float(f) if f.is_nan()));
        assert!(matches!(got[1], Cell::Float(f) if f == 0.0 && f.is_sign_negative()));
        assert_eq!(got[2..], cells[2..]);
        assert_eq!(back[0].key, change.key);
        assert_eq!(spool.read(Action::Insert).unwrap().count(), 0);
    }

    /// Every change of `action`: as the report reads them (`values`) or as a writer does.
    fn read_back(spool: &Spool, action: Action, values: bool) -> Vec<Change> {
        match values {
            true => spool.read(action).unwrap().map(Result::unwrap).collect(),
            false => spool
                .read_to_write(action)
                .unwrap()
                .map(Result::unwrap)
                .collect(),
        }
    }

    /// A diff output batch as the diff writes it (`action`, `k0`, `s_v0`, `d_v0`, `c0`, `id`,
    /// `n_v0`) of `rows` (action, key).
    fn diff_batch(rows: &[(&str, i64)]) -> datafusion::arrow::record_batch::RecordBatch {
        use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
        use datafusion::arrow::record_batch::RecordBatch;
        use std::sync::Arc;
        let n = rows.len();
        let text = |prefix: &str| -> ArrayRef {
            Arc::new(StringArray::from_iter(
                rows.iter()
                    .map(|(a, k)| (*a != "delete").then(|| format!("{prefix}{k}"))),
            ))
        };
        let actions: Vec<&str> = rows.iter().map(|(a, _)| *a).collect();
        let keys: Vec<i64> = rows.iter().map(|(_, k)| *k).collect();
        RecordBatch::try_from_iter([
            ("action", Arc::new(StringArray::from(actions)) as ArrayRef),
            ("k0", Arc::new(Int64Array::from(keys)) as ArrayRef),
            ("s_v0", text("s")),
            ("d_v0", text("d")),
            (
                "c0",
                Arc::new(BooleanArray::from(vec![true; n])) as ArrayRef,
            ),
            ("id", Arc::new(Int64Array::from(vec![None; n])) as ArrayRef),
            ("n_v0", text("s")),
        ])
        .unwrap()
    }

    /// A diff output file of `batches`, each a list of (action, key).
    fn diff_file(path: &std::path::Path, batches: &[Vec<(&str, i64)>]) {
        let mut writer = None;
        for rows in batches {
            let batch = diff_batch(rows);
            let writer = writer.get_or_insert_with(|| {
                let file = File::create(path).unwrap();
                datafusion::arrow::ipc::writer::FileWriter::try_new(file, &batch.schema()).unwrap()
            });
            writer.write(&batch).unwrap();
        }
        writer.unwrap().finish().unwrap();
    }

    /// A diff output file, one batch per slice of `actions`, keyed 0, 1, 2… through the file.
    fn diff_output(path: &std::path::Path, actions: &[&[&str]]) {
        let mut next = 0i64;
        let batches: Vec<Vec<(&str, i64)>> = actions
            .iter()
            .map(|slice| {
                let rows = slice.iter().zip(next..).map(|(a, k)| (*a, k)).collect();
                next += slice.len() as i64;
                rows
            })
            .collect();
        diff_file(path, &batches);
    }

    #[test]
    fn changes_to_write_come_merged_in_key_order_across_the_diffs_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path(), Some(0)).unwrap();
        // Three passes' output, each sorted by key, their keys interleaved (as hash buckets
        // are); the second file in two batches.
        let files: [Vec<Vec<(&str, i64)>>; 3] = [
            vec![vec![
                ("update", 2),
                ("insert", 5),
                ("update", 9),
                ("update", 40),
            ]],
            vec![
                vec![("update", 1), ("delete", 3), ("update", 4)],
                vec![("update", 8), ("insert", 30)],
            ],
            vec![vec![
                ("insert", 0),
                ("update", 6),
                ("update", 7),
                ("delete", 50),
            ]],
        ];
        for batches in &files {
            let path = spool.next_part();
            diff_file(&path, batches);
            spool.adopt(path, 1, 1);
        }
        spool.close().unwrap();
        let keys = |action, values: bool| -> Vec<i64> {
            let changes = read_back(&spool, action, values);
            changes.iter().map(|c| c.key[0].as_i64().unwrap()).collect()
        };
        // A writer gets each action's changes once, in one key order.
        assert_eq!(keys(Action::Update, false), [1, 2, 4, 6, 7, 8, 9, 40]);
        assert_eq!(keys(Action::Insert, false), [0, 5, 30]);
        assert_eq!(keys(Action::Delete, false), [3, 50]);
        // The report reads them file after file.
        assert_eq!(keys(Action::Update, true), [2, 9, 40, 1, 4, 8, 6, 7]);
        // A file that is gone is an error that names it, and ends the reading.
        std::fs::remove_file(spool.work.path().join("diff-2.arrow")).unwrap();
        let mut changes = spool.read_to_write(Action::Update).unwrap();
        let error = changes.next().unwrap().unwrap_err().to_string();
        assert!(error.contains("diff-2.arrow"), "{error}");
        assert!(changes.next().is_none());
    }

    #[test]
    fn keys_order_writes_as_the_diff_sorts_them() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let d = |t: &str| Cell::Decimal(t.into());
        assert_eq!(key_order(&[d("9.5")], &[d("10")]), Less);
        assert_eq!(key_order(&[d("-2")], &[d("-10.25")]), Greater);
        assert_eq!(key_order(&[d("1.0")], &[d("1.00")]), Less);
        assert_eq!(key_order(&[Cell::Int(-3)], &[Cell::Int(2)]), Less);
        let t = |s: &str| Cell::Text(s.into());
        assert_eq!(
            key_order(&[t("b"), Cell::Int(1)], &[t("b"), Cell::Int(0)]),
            Greater
        );
        assert_eq!(key_order(&[t("B")], &[t("a")]), Less);
        assert_eq!(key_order(&[Cell::Float(-0.5)], &[Cell::Float(0.25)]), Less);
        assert_eq!(key_order(&[Cell::Null], &[Cell::Int(0)]), Less);
        assert_eq!(
            key_order(&[Cell::Infinity(false)], &[Cell::Int(0)]),
            Greater
        );
        assert_eq!(key_order(&[t("x")], &[t("x")]), Equal);
    }

    #[test]
    fn adopted_diff_output_comes_back_by_action_in_order_with_or_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path(), Some(0)).unwrap();
        // A pushed change comes first, then the adopted parts, each in the order written.
        let mut pushed = Change {
            action: Action::Update,
            key: vec![serde_json::json!(-1)],
            id: serde_json::Value::Null,
            source: vec![serde_json::json!("pushed")],
            destination: vec![serde_json::json!("old")],
            changed: vec![true],
            cells: Cells::default(),
        };
        pushed.cells.key = vec![Cell::Int(-1)];
        spool.push(pushed).unwrap();
        for parts in [
            &[
                &["insert", "update", "delete"][..],
                &["update", "update"][..],
            ][..],
            &[&["delete", "update"][..]][..],
        ] {
            let path = spool.next_part();
            diff_output(&path, parts);
            spool.adopt(path, 1, 1);
        }
        spool.close().unwrap();
        let keys = |changes: &[Change]| -> Vec<i64> {
            changes.iter().map(|c| c.key[0].as_i64().unwrap()).collect()
        };
        let read = |action, values: bool| read_back(&spool, action, values);
        // Keys restart at 0 in each part: the report reads the parts in turn, a writer merges
        // them by key.
        assert_eq!(keys(&read(Action::Update, true)), [-1, 1, 3, 4, 1]);
        assert_eq!(keys(&read(Action::Update, false)), [-1, 1, 1, 3, 4]);
        for values in [true, false] {
            assert_eq!(keys(&read(Action::Insert, values)), [0]);
        }
        assert_eq!(keys(&read(Action::Delete, true)), [2, 0]);
        assert_eq!(keys(&read(Action::Delete, false)), [0, 2]);
        let full = read(Action::Update, true);
        assert_eq!(full[1].source, [serde_json::json!("s1")]);
        assert_eq!(full[1].destination, [serde_json::json!("d1")]);
        assert_eq!(full[1].cells.source, [Cell::Text("s1".into())]);
        assert_eq!(full[1].changed, [true]);
        let to_write = read(Action::Update, false);
        // Built from the diff: no JSON values, the same cells; pushed: as pushed.
        assert!(to_write[1].source.is_empty() && to_write[1].destination.is_empty());
        assert_eq!(to_write[1].cells, full[1].cells);
        assert_eq!(to_write[1].key, full[1].key);
        assert_eq!(to_write[0].source, [serde_json::json!("pushed")]);
        // A part that is gone is an error that names it, and ends the reading.
        std::fs::remove_file(
            dir.path()
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
                .join("diff-1.arrow"),
        )
        .unwrap();
        let mut changes = spool.read(Action::Delete).unwrap();
        assert!(changes.next().unwrap().is_ok());
        let error = changes.next().unwrap().unwrap_err().to_string();
        assert!(error.contains("diff-1.arrow"), "{error}");
        assert!(changes.next().is_none());
    }
}
