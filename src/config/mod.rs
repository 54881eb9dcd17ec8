//! The job: what a job file describes, validated. `Job::load` parses the TOML, expands `${VAR}`
//! from the environment, and checks every key and value without touching disk (beyond reading the
//! file itself) or network; every problem is collected and returned at once, each with its line.

mod http;
mod mapping;
mod parse;
mod urls;
mod values;

pub use http::{Field, FieldKind, HttpOptions, Paging, Request};
pub use urls::{is_secret_parameter, redact};

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Side};

/// A validated job file.
#[derive(Debug, Clone)]
pub struct Job {
    /// `name = ...`, or the file stem.
    pub name: String,
    /// The job file, as given.
    pub file: PathBuf,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// `[match]`: source key column = destination key column, in file order.
    pub keys: Vec<ColumnPair>,
    /// `[compare]`: `None` means every same-named column outside the key and the destination id.
    pub compare: Option<Vec<ColumnPair>>,
    pub write: WriteOptions,
    /// Where state lives (`[state] url`); default `.recon/state.db` beside the job file.
    pub state_url: String,
    /// `diff_query = "..."`: the user's own comparison SQL, resolved against the job's folder.
    pub diff_query: Option<PathBuf>,
    /// `[engine]`: memory budget and spill folder.
    pub engine: EngineOptions,
    /// `[compare.options]`: per compared column (by destination or source name), or `"*"` for
    /// every one.
    pub compare_options: std::collections::BTreeMap<String, CompareOptions>,
}

/// How one compared column is compared (`[compare.options]`). Every option applies on both
/// sides, to `plan`, `apply` and `audit` alike; what `apply` writes is always the source value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompareOptions {
    /// `tolerance = 0.01`: numbers within this distance are equal (inclusive), as written (the
    /// decimal text, compared exactly for decimal columns).
    pub tolerance: Option<String>,
    /// `relative = 0.001`: numbers within this fraction of the larger magnitude are equal
    /// (inclusive; compared as floats).
    pub relative: Option<f64>,
    /// `ignore_case = true`: text compared lowercased.
    pub ignore_case: bool,
    /// `trim = true`: text compared without leading and trailing whitespace.
    pub trim: bool,
    /// `normalize = "nfc"`: text compared in Unicode normal form C.
    pub nfc: bool,
    /// `precision = "1s"`: timestamps compared truncated to this many microseconds.
    pub precision: Option<i64>,
    /// `ignore = true`: the column is neither compared nor written.
    pub ignore: bool,
}

impl CompareOptions {
    /// `self` with the options `over` sets taking precedence.
    fn overlay(&self, over: &CompareOptions) -> CompareOptions {
        CompareOptions {
            tolerance: over.tolerance.clone().or_else(|| self.tolerance.clone()),
            relative: over.relative.or(self.relative),
            ignore_case: over.ignore_case || self.ignore_case,
            trim: over.trim || self.trim,
            nfc: over.nfc || self.nfc,
            precision: over.precision.or(self.precision),
            ignore: over.ignore || self.ignore,
        }
    }
}

/// `[engine]`: how much memory a run may use, and where it spills beyond that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineOptions {
    /// Bytes; `None` means the default (src/engine.rs). `--memory-limit` overrides it.
    pub memory_limit: Option<u64>,
    /// Folder for staged snapshots and spill files; `None` means the system temp dir.
    pub spill_dir: Option<PathBuf>,
    /// `io_timeout`: longest wait for a database to connect, send the next part of a snapshot or
    /// answer a write; `None` means [`DEFAULT_IO_TIMEOUT`].
    pub io_timeout: Option<std::time::Duration>,
}

/// How long a run waits on a silent database before it stops with an error (a stalled network
/// must never hang a nightly run): long enough for a slow statement on a big table.
pub const DEFAULT_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A pair of column names, one per side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPair {
    pub source: String,
    pub destination: String,
}

/// One side of a job: where it lives and which rows form its snapshot.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub side: Side,
    pub location: Location,
    /// `table` or `query` (absent for files, whose path is the table).
    pub relation: Relation,
    /// The destination's own record id column, carried to writeback and output.
    pub id: Option<String>,
    /// `cursor`/`lag` (source only): incremental mode.
    pub cursor: Option<Cursor>,
    /// `[side.http]`: how an `http(s)://` side is listed and written (always set for one).
    pub http: Option<HttpOptions>,
    /// `[engine] io_timeout`, for this side's database connections.
    pub io_timeout: std::time::Duration,
}

/// Incremental mode: read the source from `column >= watermark - lag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub column: String,
    pub lag: Lag,
}

/// How far below the watermark each run re-reads, for rows committed late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    None,
    /// A duration, for timestamp and date cursors.
    Micros(i64),
    /// A number, for integer cursors.
    Number(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    Table(String),
    Query(String),
    /// A file endpoint: the whole file is the snapshot.
    File,
    /// An HTTP endpoint: the records its url lists.
    Http,
}

/// Where a side's data lives, from its `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Postgres(String),
    Mysql(String),
    Sqlite(PathBuf),
    File(PathBuf, FileFormat),
    /// An `http(s)://` API (see [`HttpOptions`]).
    Http(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Parquet,
    /// A JSON array of objects.
    Json,
    /// One JSON object per line (`.jsonl`, `.ndjson`).
    JsonLines,
}

impl Location {
    /// The url with any password replaced by `***`, for messages and logs.
    pub fn display(&self) -> String {
        match self {
            Location::Postgres(url) | Location::Mysql(url) | Location::Http(url) => redact(url),
            Location::Sqlite(path) => format!("sqlite://{}", path.display()),
            Location::File(path, _) => path.display().to_string(),
        }
    }
}

/// `[write]`: how changes are written back (used by `apply`).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOptions {
    pub deletes: bool,
    pub max_changes: Option<MaxChanges>,
    pub batch_size: usize,
    /// A row failing in this many consecutive applies is reported as persistently failing.
    pub persistent_after: u64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            deletes: false,
            max_changes: None,
            batch_size: 1000,
            persistent_after: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxChanges {
    Rows(u64),
    Percent(f64),
}

impl Job {
    /// The options of the compared pair `source` → `destination`: `"*"`'s, overlaid by the
    /// column's own (named by its destination name, or else its source name).
    pub fn options_for(&self, source: &str, destination: &str) -> CompareOptions {
        let all = self.compare_options.get("*").cloned().unwrap_or_default();
        match self
            .compare_options
            .get(destination)
            .or_else(|| self.compare_options.get(source))
        {
            Some(own) => all.overlay(own),
            None => all,
        }
    }

    /// Read, parse and validate a job file. All problems are reported together as
    /// [`Error::InvalidJob`].
    pub fn load(path: &Path) -> Result<Job> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
                return Err(Error::InvalidJob(vec![crate::error::Problem {
                    file: path.to_path_buf(),
                    line,
                    message: format!(
                        "the job file is not UTF-8 text (byte 0x{:02x} cannot start a character); save it as UTF-8",
                        e.as_bytes()[valid.len()]
                    ),
                }]));
            }
        };
        Job::parse(path, &text, &|name| std::env::var(name).ok())
    }

    /// Parse and validate job file text; `path` names the file in messages and anchors relative
    /// paths, `env` resolves `${VAR}`.
    pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Job> {
        parse::parse(path, text, env).map_err(Error::InvalidJob)
    }

    /// The folder that relative paths in the job resolve against.
    pub fn folder(&self) -> PathBuf {
        folder_of(&self.file)
    }

    pub fn endpoint(&self, side: Side) -> &Endpoint {
        match side {
            Side::Source => &self.source,
            Side::Destination => &self.destination,
        }
    }
}

pub(crate) fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
