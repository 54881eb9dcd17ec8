//! Changes written as the diff produces them (`plan --format json|jsonl|csv`), or as an apply
//! reads them back from its spool, so that no output format holds the changeset: each change is
//! rendered and written, then dropped. `--limit N`
//! writes the first N; counts come at the end (`json` puts `"summary"` after `"changes"`).
//! With `--output PATH`, the text goes to a private temporary file beside PATH that is renamed
//! into place when complete, and removed if the run fails.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Format, change_object, csv_header, csv_row};
use crate::changeset::{Change, Changeset};
use crate::error::{Error, Result};

/// Where streamed output goes.
pub struct Stream {
    out: Box<dyn Write + Send>,
    format: Format,
    limit: Option<usize>,
    written: usize,
    started: bool,
    /// The temporary file and the path it becomes.
    file: Option<(PathBuf, PathBuf)>,
}

impl Stream {
    /// A stream to `output` (or stdout) in `format` (json, jsonl or csv).
    pub fn new(format: Format, output: Option<&Path>, limit: Option<usize>) -> Result<Stream> {
        let (out, file): (Box<dyn Write + Send>, _) = match output {
            None => (Box::new(std::io::BufWriter::new(std::io::stdout())), None),
            Some(path) => {
                let tmp = super::temporary(path)?;
                let file = super::create_private(&tmp).map_err(|source| Error::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
                (
                    Box::new(std::io::BufWriter::new(file)),
                    Some((tmp, path.to_path_buf())),
                )
            }
        };
        Ok(Stream {
            out,
            format,
            limit,
            written: 0,
            started: false,
            file,
        })
    }

    fn write(&mut self, text: &str) -> Result<()> {
        match self.out.write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && self.file.is_none() => Ok(()),
            other => other.map_err(|source| Error::Write {
                path: self
                    .file
                    .as_ref()
                    .map_or("<stdout>".into(), |f| f.1.clone()),
                source,
            }),
        }
    }

    fn start(&mut self, changeset: &Changeset) -> Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        match self.format {
            Format::Json => {
                let job = Value::String(changeset.job.clone());
                self.write(&format!("{{\n  \"job\": {job},\n  \"changes\": ["))
            }
            Format::Csv => self.write(&csv_header(changeset)),
            _ => Ok(()),
        }
    }

    /// Write one change (the first `limit`; later ones are only counted by the diff).
    pub fn change(&mut self, changeset: &Changeset, change: &Change) -> Result<()> {
        self.start(changeset)?;
        if self.limit.is_some_and(|n| self.written >= n) {
            return Ok(());
        }
        let text = match self.format {
            Format::Json => {
                let sep = if self.written == 0 {
                    "\n    "
                } else {
                    ",\n    "
                };
                format!("{sep}{}", Value::Object(change_object(changeset, change)))
            }
            Format::Jsonl => format!("{}\n", Value::Object(change_object(changeset, change))),
            _ => csv_row(changeset, change),
        };
        self.written += 1;
        self.write(&text)
    }

    /// Close the output with the complete counts, and put a file in place.
    pub fn finish(self, changeset: &Changeset) -> Result<()> {
        self.finish_with(changeset, &[], "")
    }

    /// Close the output with the complete counts and, for `json`, the `fields` after them; `csv`
    /// and `jsonl` end with `trailer` instead.
    pub fn finish_with(
        mut self,
        changeset: &Changeset,
        fields: &[(&str, Value)],
        trailer: &str,
    ) -> Result<()> {
        self.start(changeset)?;
        if self.format == Format::Json {
            let summary = serde_json::to_string(&json!(changeset.summary)).unwrap_or_default();
            let close = if self.written == 0 { "]" } else { "\n  ]" };
            let mut text = format!("{close},\n  \"summary\": {summary}");
            for (name, value) in fields {
                let value = serde_json::to_string_pretty(value)
                    .unwrap_or_default()
                    .replace('\n', "\n  ");
                text.push_str(&format!(
                    ",\n  {}: {value}",
                    Value::String(name.to_string())
                ));
            }
            text.push_str("\n}\n");
            self.write(&text)?;
        } else {
            self.write(trailer)?;
        }
        let flushed = self.out.flush();
        if let Some((tmp, path)) = self.file.take() {
            let done = flushed.and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(source) = done {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::Write { path, source });
            }
        }
        Ok(())
    }
}

impl Drop for Stream {
    /// A run that failed leaves no partial report behind.
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.file.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
