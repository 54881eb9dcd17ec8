//! Typed errors: every failure a user can meet, with the object it concerns, a remedy (`hint`)
//! and the exit code it maps to. There is no catch-all string variant; `Internal` means a bug.

use std::path::PathBuf;

/// Which side of the reconciliation a problem concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Source, Side::Destination];

    /// The name used in job files, SQL (`source`, `destination`) and messages.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem in a job file, located by file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Sample of offending keys for key checks (at most five, rendered as `a, b`).
pub type KeySample = Vec<String>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the job file is invalid ({} problem{})", .0.len(), if .0.len() == 1 { "" } else { "s" })]
    InvalidJob(Vec<Problem>),

    #[error("cannot read `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot connect to the {side} `{url}`")]
    Connect {
        side: Side,
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("reading the {side} snapshot failed ({what})")]
    Read {
        side: Side,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("the column mapping does not fit the snapshots ({} problem{})", .0.len(), if .0.len() == 1 { "" } else { "s" })]
    Mapping(Vec<Error>),

    #[error("{side} column `{column}` is not in the {side} snapshot (it has: {available})")]
    MissingColumn {
        side: Side,
        column: String,
        available: String,
    },

    #[error(
        "cannot compare source `{source_column}` ({source_type}) with destination `{destination_column}` ({destination_type})"
    )]
    Incomparable {
        source_column: String,
        source_type: String,
        destination_column: String,
        destination_type: String,
    },

    #[error("`[compare.options]` for `{column}`: {message}")]
    BadOption { column: String, message: String },

    #[error("{count} {side} row{} {} a NULL key ({columns}); sample: {}", if *.count == 1 { "" } else { "s" }, if *.count == 1 { "has" } else { "have" }, .sample.join("; "))]
    NullKeys {
        side: Side,
        columns: String,
        count: u64,
        sample: KeySample,
    },

    #[error("{count} key{} {} more than once in the {side} ({columns}); sample: {}", if *.count == 1 { "" } else { "s" }, if *.count == 1 { "appears" } else { "appear" }, .sample.join("; "))]
    DuplicateKeys {
        side: Side,
        columns: String,
        count: u64,
        sample: KeySample,
    },

    #[error("the diff query `{}` is not usable: {reason}", path.display())]
    DiffQuery { path: PathBuf, reason: String },

    #[error("the comparison query failed")]
    Engine(#[from] datafusion::error::DataFusionError),

    #[error("cannot write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the state store `{}` failed", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("another run of job `{job}` holds the lock `{}` ({holder})", path.display())]
    Locked {
        job: String,
        holder: String,
        path: PathBuf,
    },

    #[error("job files `{}` and `{}` both use the job name `{job}`, and one name has one state in `{}`", other.display(), file.display(), store.display())]
    NameClash {
        job: String,
        file: PathBuf,
        other: PathBuf,
        store: PathBuf,
    },

    #[error("{message}")]
    Guard { message: String, hint: String },

    #[error("{0}")]
    Unsupported(String),

    #[error("writing to the destination failed ({what})")]
    Writeback {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("the plan file `{}` cannot be applied: {reason}", path.display())]
    Plan { path: PathBuf, reason: String },

    #[error("the {side} API `{endpoint}`: {message}")]
    Http {
        side: Side,
        endpoint: String,
        message: String,
    },

    #[error("internal error (this is a bug in recon, please report it): {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code for this error (see README, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidJob(_) | Error::NameClash { .. } => 78,
            Error::Locked { .. } => 75,
            _ => 1,
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::InvalidJob(_) => "fix the lines above; `recon check JOB.toml` re-validates".into(),
            Error::Mapping(_) => "fix [match]/[compare] in the job file, or the side's `query`; `recon check JOB.toml` lists every problem".into(),
            Error::Connect { side, .. } => format!(
                "check the [{side}] url (host, port, database, credentials) and that the server is running; a PostgreSQL server not on this machine must accept TLS unless the url says `?sslmode=disable`"
            ),
            Error::MissingColumn { side, .. } => format!(
                "map the column under [match] or [compare] to a column the {side} has, or select it in the {side} `query`"
            ),
            Error::Incomparable { .. } => "cast one side so both have the same kind of type, e.g. `query = \"SELECT CAST(code AS TEXT) AS code, ...\"`".into(),
            Error::NullKeys { side, .. } => format!(
                "a NULL key never matches; filter those rows out in the {side} `query` or fix the data"
            ),
            Error::DuplicateKeys { side, .. } => format!(
                "a key must identify one row; add columns to [match] for a composite key, or de-duplicate the {side}"
            ),
            Error::DiffQuery { .. } => "a diff query returns `action` ('insert', 'update' or 'delete') and the destination's key and compared columns".into(),
            Error::Locked { .. } => "wait for the other run to finish; the lock is released as soon as its process ends".into(),
            Error::Guard { hint, .. } => hint.clone(),
            Error::NameClash { file, .. } => format!(
                "give `{}` its own `name = \"…\"` (the name defaults to the file's stem), or point its `[state] url` elsewhere",
                file.display()
            ),
            Error::Writeback { .. } => "rows written before the failure are kept; the next run's diff finds the rest".into(),
            Error::State { source, .. } => return state_hint(&source.to_string()),
            Error::Plan { .. } => "nothing was written; compute and review a new plan with `recon plan JOB.toml --save PLAN`".into(),
            Error::Http { side, .. } => format!(
                "check the [{side}] url and `[{side}.http]` (records, paging, headers); `recon check JOB.toml` reads a first page; rows written before a failure are kept and the next run's diff finds the rest"
            ),
            Error::Read { .. } => "run `recon check JOB.toml` to see whether both sides can be reached and read".into(),
            _ => return None,
        })
    }
}

/// What to do about a state store failure, from the store's own message. The store is never
/// re-created behind the user's back: that would forget failed rows and the watermark.
fn state_hint(message: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    Some(if m.contains("malformed") || m.contains("not a database") {
        "the state store file is damaged; recon does not re-create it (that would forget failed rows and the watermark): restore it from a backup, or move it aside to start over (`mv state.db state.db.broken`)".into()
    } else if m.contains("previously applied but is missing") {
        "the state store was written by a newer version of recon; run that version or a newer one"
            .into()
    } else if m.contains("locked") {
        "another process holds the state store's write lock (a long run, or a tool with the file open); run again when it is done".into()
    } else if m.contains("readonly") || m.contains("read-only") || m.contains("permission") {
        "the state store or its folder is read-only for this user; recon records every run there: make both writable, or point `[state] url` elsewhere".into()
    } else if m.contains("disk is full") || m.contains("no space") || m.contains("disk i/o error") {
        "the disk holding the state store is full (or failing); nothing of this run was recorded, and the next run's diff finds whatever was not written: free space and run again".into()
    } else {
        return None;
    })
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for wrapping a lower-level failure while reading one side.
pub fn read_error(
    side: Side,
    what: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Read {
        side,
        what: what.into(),
        source: source.into(),
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Error {
        Error::Engine(e.into())
    }
}
