//! The state store: an embedded SQLite file (default `.recon/state.db` beside the job file, mode
//! 0600, WAL) or a PostgreSQL database (`[state] url = "postgres://…"`, tables in the schema
//! `recon`), holding, per job, its runs, the rows that failed in its last apply, and its state
//! value. The schema comes from `migrations/sqlite` or `migrations/postgres` (`sqlx::migrate!`);
//! the statements are written once, with `$n` parameters, which both drivers accept. A run is recorded after the
//! destination has been written, in one transaction with its failed rows, never before: a crash
//! in between loses only the record, and the next run's diff finds whatever was not written.
//!
//! Also here: the per-job lock that keeps two applies of one job apart (a file lock beside the
//! state store, plus a PostgreSQL advisory lock when state lives in PostgreSQL, so that applies
//! on different machines sharing that state also exclude each other).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};

use crate::config::Job;
use crate::error::{Error, Result};

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StateLocation {
    fn display(&self) -> PathBuf {
        match self {
            StateLocation::Sqlite(p) => p.clone(),
            StateLocation::Postgres(url) => PathBuf::from(crate::config::redact(url)),
        }
    }

    /// The folder that holds the job's lock file.
    fn lock_folder(&self, job: &Job) -> PathBuf {
        match self {
            StateLocation::Sqlite(p) => p
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            StateLocation::Postgres(_) => job.folder().join(".recon"),
        }
    }
}

enum Store {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

/// Run `$body` with `$conn` bound to the store's connection, whichever driver it is.
macro_rules! on_store {
    ($store:expr, $conn:ident => $body:expr) => {
        match $store {
            $crate::state::Store::Sqlite($conn) => $body,
            $crate::state::Store::Postgres($conn) => $body,
        }
    };
}

mod lock;
mod open;
mod owner;

pub use lock::{Lock, create_private_dir};
pub use open::probe;
use open::{open_postgres, open_sqlite};

/// One recorded run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Run {
    pub id: i64,
    pub command: String,
    pub started_at: String,
    pub finished_at: String,
    pub outcome: String,
    pub source_rows: i64,
    pub destination_rows: i64,
    pub planned_insert: i64,
    pub planned_update: i64,
    pub planned_delete: i64,
    pub applied_insert: i64,
    pub applied_update: i64,
    pub applied_delete: i64,
    pub failed: i64,
    pub message: Option<String>,
}

/// A row the destination refused, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedRow {
    pub action: String,
    /// The key as a JSON object (`{"code": "A-1"}`).
    pub key: String,
    pub error: String,
    /// In how many consecutive applies this key has failed, this one included.
    pub runs: i64,
}

/// The state store of one job.
pub struct State {
    store: Store,
    job: String,
    path: PathBuf,
}

/// Where a job's state lives (`[state] url`: a SQLite path, `sqlite://` optional, or postgres://).
pub fn state_location(job: &Job) -> StateLocation {
    let url = job.state_url.as_str();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return StateLocation::Postgres(url.to_string());
    }
    let path = Path::new(url.strip_prefix("sqlite://").unwrap_or(url));
    StateLocation::Sqlite(if path.is_absolute() {
        path.to_path_buf()
    } else {
        job.folder().join(path)
    })
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn store_error(path: &Path) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| Error::State {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

impl State {
    /// Open (creating if needed) the job's state store and bring its schema up to date.
    pub async fn open(job: &Job) -> Result<State> {
        let location = state_location(job);
        let path = location.display();
        let store = match &location {
            StateLocation::Sqlite(file) => Store::Sqlite(open_sqlite(file).await?),
            StateLocation::Postgres(url) => Store::Postgres(open_postgres(url, &path).await?),
        };
        let mut state = State {
            store,
            job: job.name.clone(),
            path,
        };
        state.claim(job).await?;
        Ok(state)
    }

    /// The job's state value without creating a state store that does not exist yet.
    pub async fn peek(job: &Job) -> Result<Option<Value>> {
        if let StateLocation::Sqlite(path) = state_location(job)
            && !path.exists()
        {
            return Ok(None);
        }
        State::open(job).await?.get().await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The job's state value, if one was set.
    pub async fn get(&mut self) -> Result<Option<Value>> {
        let job = self.job.clone();
        let text: Option<String> = on_store!(&mut self.store, conn => {
            sqlx::query("SELECT value FROM state WHERE job = $1")
                .bind(job)
                .fetch_optional(&mut *conn)
                .await
                .map(|row| row.map(|r| r.get(0)))
        })
        .map_err(store_error(&self.path))?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| Error::State {
                path: self.path.clone(),
                source: Box::new(e),
            })
        })
        .transpose()
    }

    /// The job's state value as a serde type, for Rust programs keeping their own place:
    ///
    /// ```no_run
    /// # async fn sync(job: &recon::Job) -> recon::Result<()> {
    /// #[derive(serde::Serialize, serde::Deserialize, Default)]
    /// struct Place { page: u32, cursor: Option<String> }
    ///
    /// let mut state = recon::State::open(job).await?;
    /// let mut place: Place = state.get_as().await?.unwrap_or_default();
    /// place.page += 1;
    /// state.set_as(&place).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_as<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let Some(value) = self.get().await? else {
            return Ok(None);
        };
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| Error::State {
                path: self.path.clone(),
                source: Box::new(e),
            })
    }

    /// Store a serde value as the job's state (recorded in run history).
    pub async fn set_as<T: Serialize>(&mut self, value: &T) -> Result<()> {
        let value = serde_json::to_value(value).map_err(|e| Error::State {
            path: self.path.clone(),
            source: Box::new(e),
        })?;
        self.set(Some(&value), "library set").await
    }

    /// Replace the job's state value (`None` removes it), recording the change as a run.
    pub async fn set(&mut self, value: Option<&Value>, command: &str) -> Result<()> {
        let (job, now) = (self.job.clone(), now());
        let message = value.map_or_else(
            || "state removed".to_string(),
            |v| format!("state set to {v}"),
        );
        let value = value.map(Value::to_string);
        on_store!(&mut self.store, conn => {
            async {
                let mut tx = conn.begin().await?;
                match &value {
                    Some(v) => sqlx::query(
                        "INSERT INTO state (job, value, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (job) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    )
                    .bind(&job)
                    .bind(v)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await?,
                    None => sqlx::query("DELETE FROM state WHERE job = $1").bind(&job).execute(&mut *tx).await?,
                };
                sqlx::query("INSERT INTO runs (job, command, started_at, finished_at, outcome, message) VALUES ($1, $2, $3, $4, 'state', $5)")
                    .bind(&job)
                    .bind(command)
                    .bind(&now)
                    .bind(&now)
                    .bind(&message)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            .await
        })
        .map_err(store_error(&self.path))
    }

    /// How many consecutive applies each currently failing key has failed in (key → runs).
    pub async fn failing(&mut self) -> Result<HashMap<String, i64>> {
        Ok(self
            .failed_rows()
            .await?
            .into_iter()
            .map(|f| (f.key, f.runs))
            .collect())
    }

    /// Record a finished run and the rows that failed in it (replacing the previous run's), in one
    /// transaction. `failed[i].runs` must already count earlier consecutive failures.
    pub async fn record(&mut self, run: &Run, failed: &[FailedRow]) -> Result<i64> {
        self.record_with_state(run, Some(failed), None).await
    }

    /// As [`State::record`], also replacing the job's state value (the watermark) in the same
    /// transaction. `failed: None` keeps the failed rows of the last apply that wrote.
    pub async fn record_with_state(
        &mut self,
        run: &Run,
        failed: Option<&[FailedRow]>,
        state: Option<&Value>,
    ) -> Result<i64> {
        let job = self.job.clone();
        let (state, now) = (state.map(Value::to_string), now());
        on_store!(&mut self.store, conn => {
            async {
                let mut tx = conn.begin().await?;
                let id: i64 = sqlx::query(
                    "INSERT INTO runs (job, command, started_at, finished_at, outcome, source_rows, destination_rows,
                       planned_insert, planned_update, planned_delete, applied_insert, applied_update, applied_delete, failed, message)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
                )
                .bind(&job)
                .bind(&run.command)
                .bind(&run.started_at)
                .bind(&run.finished_at)
                .bind(&run.outcome)
                .bind(run.source_rows)
                .bind(run.destination_rows)
                .bind(run.planned_insert)
                .bind(run.planned_update)
                .bind(run.planned_delete)
                .bind(run.applied_insert)
                .bind(run.applied_update)
                .bind(run.applied_delete)
                .bind(run.failed)
                .bind(&run.message)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
                if failed.is_some() {
                    sqlx::query("DELETE FROM failed_rows WHERE job = $1").bind(&job).execute(&mut *tx).await?;
                }
                for row in failed.unwrap_or_default() {
                    sqlx::query("INSERT INTO failed_rows (job, key, action, error, run_id, runs) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(&job)
                        .bind(&row.key)
                        .bind(&row.action)
                        .bind(&row.error)
                        .bind(id)
                        .bind(row.runs)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(value) = &state {
                    sqlx::query(
                        "INSERT INTO state (job, value, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (job) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    )
                    .bind(&job)
                    .bind(value)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await?;
                }
                crate::failpoint::hit("in-state-commit");
                tx.commit().await?;
                Ok(id)
            }
            .await
        })
        .map_err(store_error(&self.path))
    }

    /// Record a run that wrote nothing (refused by a guard, or failed), keeping the failed rows
    /// of the last apply that did write.
    pub async fn record_run_only(&mut self, run: &Run) -> Result<i64> {
        self.record_with_state(run, None, None).await
    }

    /// The job's most recent runs, newest first.
    pub async fn history(&mut self, limit: usize) -> Result<Vec<Run>> {
        let job = self.job.clone();
        on_store!(&mut self.store, conn => {
            sqlx::query(
                "SELECT id, command, started_at, finished_at, outcome, source_rows, destination_rows, planned_insert,
                   planned_update, planned_delete, applied_insert, applied_update, applied_delete, failed, message
                 FROM runs WHERE job = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(job)
            .bind(limit as i64)
            .fetch_all(&mut *conn)
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| Run {
                        id: r.get(0),
                        command: r.get(1),
                        started_at: r.get(2),
                        finished_at: r.get(3),
                        outcome: r.get(4),
                        source_rows: r.get(5),
                        destination_rows: r.get(6),
                        planned_insert: r.get(7),
                        planned_update: r.get(8),
                        planned_delete: r.get(9),
                        applied_insert: r.get(10),
                        applied_update: r.get(11),
                        applied_delete: r.get(12),
                        failed: r.get(13),
                        message: r.get(14),
                    })
                    .collect()
            })
        })
        .map_err(store_error(&self.path))
    }

    /// Fail now, before anything is written to the destination, when this run could not record
    /// itself: the store is read-only, or another process holds its write lock (past the busy
    /// timeout). A SQLite store takes and releases its write lock; PostgreSQL needs nothing.
    pub async fn check_writable(&mut self) -> Result<()> {
        let Store::Sqlite(conn) = &mut self.store else {
            return Ok(());
        };
        sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK;")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(store_error(&self.path))
    }

    /// The run that applied the reviewed plan with this digest, if one did.
    pub async fn plan_applied(&mut self, digest: &str) -> Result<Option<i64>> {
        let job = self.job.clone();
        let pattern = format!("plan {digest};%");
        on_store!(&mut self.store, conn => {
            sqlx::query_scalar::<_, i64>(
                "SELECT id FROM runs WHERE job = $1 AND command = 'apply --plan' AND message LIKE $2 ORDER BY id LIMIT 1",
            )
            .bind(job)
            .bind(pattern)
            .fetch_optional(&mut *conn)
            .await
        })
        .map_err(store_error(&self.path))
    }

    /// The rows that failed in the job's last apply.
    pub async fn failed_rows(&mut self) -> Result<Vec<FailedRow>> {
        let job = self.job.clone();
        on_store!(&mut self.store, conn => {
            sqlx::query("SELECT action, key, error, runs FROM failed_rows WHERE job = $1 ORDER BY key")
                .bind(job)
                .fetch_all(&mut *conn)
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| FailedRow { action: r.get(0), key: r.get(1), error: r.get(2), runs: r.get(3) })
                        .collect()
                })
        })
        .map_err(store_error(&self.path))
    }

    /// Hold a PostgreSQL advisory lock for the job on this connection (state in PostgreSQL only),
    /// so applies on other machines sharing the state store exclude each other too.
    pub async fn lock_shared(&mut self) -> Result<()> {
        let Store::Postgres(conn) = &mut self.store else {
            return Ok(());
        };
        let key = format!("recon job {}", self.job);
        let got: bool = sqlx::query("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&key)
            .fetch_one(&mut *conn)
            .await
            .map_err(store_error(&self.path))?
            .get(0);
        if got {
            return Ok(());
        }
        Err(Error::Locked {
            job: self.job.clone(),
            holder: "another apply holds the job's advisory lock in the PostgreSQL state store"
                .into(),
            path: self.path.clone(),
        })
    }
}

/// The current time, RFC 3339 in UTC.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
