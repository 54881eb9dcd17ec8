//! The state store: an embedded SQLite file (default `.recon/state.db` beside the job file, mode
//! 0600, WAL) holding, per job, its runs, the rows that failed in its last apply, and its state
//! value. The schema comes from `migrations/` (`sqlx::migrate!`). A run is recorded after the
//! destination has been written, in one transaction with its failed rows, never before: a crash
//! in between loses only the record, and the next run's diff finds whatever was not written.
//!
//! Also here: the per-job lock that keeps two applies of one job apart.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, Row};

use crate::config::Job;
use crate::error::{Error, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
    conn: SqliteConnection,
    job: String,
    path: PathBuf,
}

/// The state database file for a job (`[state] url`, `sqlite://` prefix optional).
pub fn state_path(job: &Job) -> Result<PathBuf> {
    let url = job.state_url.as_str();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(Error::Unsupported(
            "a PostgreSQL state store ([state] url = \"postgres://…\") is not available in this version; use a SQLite path".into(),
        ));
    }
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    let path = Path::new(path);
    Ok(if path.is_absolute() {
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
        let path = state_path(job)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        create_private(&path)?;
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .connect()
            .await
            .map_err(store_error(&path))?;
        if let Err(e) = MIGRATOR.run(&mut conn).await {
            return Err(Error::State {
                path,
                source: Box::new(e),
            });
        }
        Ok(State {
            conn,
            job: job.name.clone(),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The job's state value, if one was set.
    pub async fn get(&mut self) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT value FROM state WHERE job = ?")
            .bind(&self.job)
            .fetch_optional(&mut self.conn)
            .await
            .map_err(store_error(&self.path))?;
        row.map(|r| {
            let text: String = r.get(0);
            serde_json::from_str(&text).map_err(|e| Error::State {
                path: self.path.clone(),
                source: Box::new(e),
            })
        })
        .transpose()
    }

    /// Replace the job's state value (`None` removes it), recording the change as a run.
    pub async fn set(&mut self, value: Option<&Value>, command: &str) -> Result<()> {
        let err = store_error(&self.path);
        let now = now();
        let mut tx = self.conn.begin().await.map_err(&err)?;
        match value {
            Some(v) => {
                sqlx::query("INSERT INTO state (job, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (job) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")
                    .bind(&self.job)
                    .bind(v.to_string())
                    .bind(&now)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
            }
            None => {
                sqlx::query("DELETE FROM state WHERE job = ?")
                    .bind(&self.job)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
            }
        }
        let message = value.map_or_else(
            || "state removed".to_string(),
            |v| format!("state set to {v}"),
        );
        sqlx::query("INSERT INTO runs (job, command, started_at, finished_at, outcome, message) VALUES (?, ?, ?, ?, 'state', ?)")
            .bind(&self.job)
            .bind(command)
            .bind(&now)
            .bind(&now)
            .bind(message)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    /// How many consecutive applies each currently failing key has failed in (key → runs).
    pub async fn failing(&mut self) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT key, runs FROM failed_rows WHERE job = ?")
            .bind(&self.job)
            .fetch_all(&mut self.conn)
            .await
            .map_err(store_error(&self.path))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect())
    }

    /// Record a finished run and the rows that failed in it (replacing the previous run's), in one
    /// transaction. `failed[i].runs` must already count earlier consecutive failures.
    pub async fn record(&mut self, run: &Run, failed: &[FailedRow]) -> Result<i64> {
        let err = store_error(&self.path);
        let mut tx = self.conn.begin().await.map_err(&err)?;
        let id: i64 = sqlx::query(
            "INSERT INTO runs (job, command, started_at, finished_at, outcome, source_rows, destination_rows,
               planned_insert, planned_update, planned_delete, applied_insert, applied_update, applied_delete, failed, message)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&self.job)
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
        .await
        .map_err(&err)?
        .get(0);
        sqlx::query("DELETE FROM failed_rows WHERE job = ?")
            .bind(&self.job)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        for row in failed {
            sqlx::query("INSERT INTO failed_rows (job, key, action, error, run_id, runs) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(&self.job)
                .bind(&row.key)
                .bind(&row.action)
                .bind(&row.error)
                .bind(id)
                .bind(row.runs)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        Ok(id)
    }

    /// Record a run that wrote nothing (refused by a guard, or failed), keeping the failed rows
    /// of the last apply that did write.
    pub async fn record_run_only(&mut self, run: &Run) -> Result<i64> {
        let previous = self.failed_rows().await?;
        let id = self.record(run, &previous).await?;
        Ok(id)
    }

    /// The job's most recent runs, newest first.
    pub async fn history(&mut self, limit: usize) -> Result<Vec<Run>> {
        let rows = sqlx::query(
            "SELECT id, command, started_at, finished_at, outcome, source_rows, destination_rows, planned_insert,
               planned_update, planned_delete, applied_insert, applied_update, applied_delete, failed, message
             FROM runs WHERE job = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(&self.job)
        .bind(limit as i64)
        .fetch_all(&mut self.conn)
        .await
        .map_err(store_error(&self.path))?;
        Ok(rows
            .iter()
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
            .collect())
    }

    /// The rows that failed in the job's last apply.
    pub async fn failed_rows(&mut self) -> Result<Vec<FailedRow>> {
        let rows = sqlx::query(
            "SELECT action, key, error, runs FROM failed_rows WHERE job = ? ORDER BY key",
        )
        .bind(&self.job)
        .fetch_all(&mut self.conn)
        .await
        .map_err(store_error(&self.path))?;
        Ok(rows
            .iter()
            .map(|r| FailedRow {
                action: r.get(0),
                key: r.get(1),
                error: r.get(2),
                runs: r.get(3),
            })
            .collect())
    }
}

/// Create the file with mode 0600 if it does not exist, so secrets in state stay private.
fn create_private(path: &Path) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(|_| ()).map_err(io_error(path))
}

/// The current time, RFC 3339 in UTC.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An exclusive, per-job lock held by `apply` (a file beside the state store, locked with the
/// operating system's advisory lock, so it is released when the holder dies however it dies).
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn acquire(job: &Job) -> Result<Lock> {
        let state = state_path(job)?;
        let dir = state
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let path = dir.join(format!("{}.lock", sanitize(&job.name)));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Locked {
                    job: job.name.clone(),
                    holder: holder.trim().to_string(),
                    path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_error(&path)(e)),
        }
        let note = format!("pid {} since {}", std::process::id(), now());
        let written = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(note.as_bytes()));
        written.map_err(io_error(&path))?;
        Ok(Lock { _file: file })
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
