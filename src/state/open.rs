//! Opening a state store: the SQLite file (created 0600, WAL, migrated) or the PostgreSQL schema
//! `recon`; and `probe`, which reaches it for `recon check` without writing.

use std::path::{Path, PathBuf};

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};

use super::lock::{create_private, create_private_dir};
use super::{POSTGRES_MIGRATOR, SQLITE_MIGRATOR, StateLocation, state_location, store_error};
use crate::config::Job;
use crate::error::{Error, Result};

pub(super) async fn open_sqlite(path: &Path) -> Result<SqliteConnection> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    // SQLite reads a file cut short to its first page as a smaller (even empty) database; its
    // header still says how long it was: refused as damaged rather than migrated afresh. While
    // a write-ahead log holds pages, the file may be shorter than its header says (a checkpoint
    // copies page 1 before it extends the file): SQLite reads those pages from the log.
    let mut log = path.as_os_str().to_owned();
    log.push("-wal");
    let logged = std::fs::metadata(&log).is_ok_and(|m| m.len() > 0);
    if let Some((header, actual)) = sqlite_length(path)
        .filter(|(header, actual)| header > actual)
        .filter(|_| !logged)
    {
        return Err(Error::State {
            path: path.to_path_buf(),
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not a database any more: its header says {header} bytes, the file has {actual}"
                ),
            )),
        });
    }
    // A file that cannot be opened for writing is the store's problem, with the store's hint.
    create_private(path).map_err(|e| match e {
        Error::Io { source, .. } => Error::State {
            path: path.to_path_buf(),
            source: Box::new(source),
        },
        other => other,
    })?;
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(store_error(path))?;
    if let Err(e) = SQLITE_MIGRATOR.run(&mut conn).await {
        return Err(Error::State {
            path: path.to_path_buf(),
            source: Box::new(e),
        });
    }
    Ok(conn)
}

/// An SQLite file's length as its header gives it (pages × page size, when the header's page
/// count is valid: its change counter matches "version-valid-for", fileformat2.html §1.3.7), and
/// its length on disk; `None` for a file that is missing, empty or not SQLite's.
fn sqlite_length(path: &Path) -> Option<(u64, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let actual = file.metadata().ok()?.len();
    let mut header = [0u8; 100];
    file.read_exact(&mut header).ok()?;
    if &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let page = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => n as u64,
    };
    (be32(24) == be32(92) && be32(28) > 0).then(|| (be32(28) as u64 * page, actual))
}

/// Connect with `search_path = recon` (created if missing) so recon's tables never meet the
/// database's own.
pub(super) async fn open_postgres(url: &str, shown: &Path) -> Result<PgConnection> {
    let err = store_error(shown);
    let options = crate::connect::pg_options(url).map_err(&err)?;
    let mut conn = options
        .application_name("recon state")
        .connect()
        .await
        .map_err(&err)?;
    sqlx::raw_sql("CREATE SCHEMA IF NOT EXISTS recon; SET search_path = recon")
        .execute(&mut conn)
        .await
        .map_err(&err)?;
    if let Err(e) = POSTGRES_MIGRATOR.run(&mut conn).await {
        return Err(Error::State {
            path: shown.to_path_buf(),
            source: Box::new(e),
        });
    }
    Ok(conn)
}

/// Check that the job's state store can be reached, writing nothing; returns a line describing it.
pub async fn probe(job: &Job) -> Result<String> {
    match state_location(job) {
        StateLocation::Postgres(url) => {
            let shown = PathBuf::from(crate::config::redact(&url));
            let options = crate::connect::pg_options(&url).map_err(store_error(&shown))?;
            let mut conn = options.connect().await.map_err(store_error(&shown))?;
            sqlx::query("SELECT 1")
                .execute(&mut conn)
                .await
                .map_err(store_error(&shown))?;
            Ok(format!("state store: {} (schema recon)", shown.display()))
        }
        StateLocation::Sqlite(path) if path.exists() => {
            let mut conn = SqliteConnectOptions::new()
                .filename(&path)
                .read_only(true)
                .connect()
                .await
                .map_err(store_error(&path))?;
            sqlx::query("SELECT count(*) FROM sqlite_master")
                .execute(&mut conn)
                .await
                .map_err(store_error(&path))?;
            Ok(format!("state store: {}", path.display()))
        }
        StateLocation::Sqlite(path) => {
            let mut folder = path.parent().map(Path::to_path_buf);
            while let Some(dir) = folder.clone().filter(|d| !d.exists()) {
                folder = dir.parent().map(Path::to_path_buf);
            }
            let writable = folder
                .as_ref()
                .and_then(|d| std::fs::metadata(d).ok())
                .is_some_and(|m| m.is_dir() && !m.permissions().readonly());
            if !writable {
                return Err(Error::Io {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "the state store's folder cannot be created or written",
                    ),
                });
            }
            Ok(format!(
                "state store: {} (created by the first apply)",
                path.display()
            ))
        }
    }
}
