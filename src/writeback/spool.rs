//! The changeset of an `apply`, spooled to local files as the diff produces it — one JSON line
//! per change, a file per action, in a private work folder — so that no part of an apply holds
//! the whole changeset: the guards read its counts, writeback reads it back a batch at a time.

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
        })
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

    /// The spooled changes of one action, in the order the diff produced them.
    pub fn read(&self, action: Action) -> Result<impl Iterator<Item = Result<Change>> + use<>> {
        let path = self.path(action);
        let file = File::open(&path).map_err(io(&path))?;
        Ok(BufReader::new(file).lines().map(move |line| {
            let line = line.map_err(io(&path))?;
            serde_json::from_str(&line)
                .map_err(|e| Error::Internal(format!("a spooled change: {e}")))
        }))
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
}
