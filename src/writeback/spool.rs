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

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use crate::changeset::{Action, Change};
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
}

/// A diff output file: one change per row (see queries/diff.sql for its columns).
#[derive(Clone)]
struct Part {
    path: PathBuf,
    keys: usize,
    compared: usize,
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
        let built = Built {
            action,
            values,
            parts: self.parts.clone().into_iter(),
            reading: None,
            ready: Vec::new().into_iter(),
        };
        Ok(pushed.chain(built))
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

    /// A diff output file written as the diff writes it (`action`, `k0`, `s_v0`, `d_v0`, `c0`,
    /// `id`, `n_v0`), one batch per slice of `actions`.
    fn diff_output(path: &std::path::Path, actions: &[&[&str]]) {
        use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
        use datafusion::arrow::record_batch::RecordBatch;
        use std::sync::Arc;
        let mut writer = None;
        let mut next = 0i64;
        for slice in actions {
            let n = slice.len();
            let keys: Vec<i64> = (next..next + n as i64).collect();
            next += n as i64;
            let text = |prefix: &str| -> ArrayRef {
                Arc::new(StringArray::from_iter(
                    keys.iter()
                        .zip(slice.iter())
                        .map(|(k, a)| (*a != "delete").then(|| format!("{prefix}{k}"))),
                ))
            };
            let batch = RecordBatch::try_from_iter([
                (
                    "action",
                    Arc::new(StringArray::from(slice.to_vec())) as ArrayRef,
                ),
                ("k0", Arc::new(Int64Array::from(keys.clone())) as ArrayRef),
                ("s_v0", text("s")),
                ("d_v0", text("d")),
                (
                    "c0",
                    Arc::new(BooleanArray::from(vec![true; n])) as ArrayRef,
                ),
                ("id", Arc::new(Int64Array::from(vec![None; n])) as ArrayRef),
                ("n_v0", text("s")),
            ])
            .unwrap();
            let writer = writer.get_or_insert_with(|| {
                let file = File::create(path).unwrap();
                datafusion::arrow::ipc::writer::FileWriter::try_new(file, &batch.schema()).unwrap()
            });
            writer.write(&batch).unwrap();
        }
        writer.unwrap().finish().unwrap();
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
        let read = |action, values: bool| -> Vec<Change> {
            match values {
                true => spool.read(action).unwrap().map(Result::unwrap).collect(),
                false => spool
                    .read_to_write(action)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
            }
        };
        for values in [true, false] {
            // Keys restart at 0 in each part.
            assert_eq!(keys(&read(Action::Update, values)), [-1, 1, 3, 4, 1]);
            assert_eq!(keys(&read(Action::Insert, values)), [0]);
            assert_eq!(keys(&read(Action::Delete, values)), [2, 0]);
        }
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
