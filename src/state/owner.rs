//! Which job file owns a job name in the state store: one name, one state, one job file.

use std::path::{Path, PathBuf};

use super::{State, now, store_error};
use crate::config::Job;
use crate::error::{Error, Result};

impl State {
    /// Record this job file as the owner of the job's name, refusing a second job file that uses
    /// the same `name` while the first still exists on this machine (it would share the first's
    /// state and watermark). A job file that moved, or that another machine runs against a shared
    /// PostgreSQL store, takes the name over.
    pub(super) async fn claim(&mut self, job: &Job) -> Result<()> {
        let file = std::fs::canonicalize(&job.file)
            .unwrap_or_else(|_| job.file.clone())
            .display()
            .to_string();
        let host = hostname();
        let name = self.job.clone();
        let owner: Option<(String, String)> = on_store!(&mut self.store, conn => {
            sqlx::query_as("SELECT file, host FROM jobs WHERE job = $1")
                .bind(&name)
                .fetch_optional(&mut *conn)
                .await
        })
        .map_err(store_error(&self.path))?;
        if let Some((other, other_host)) = &owner {
            if *other == file {
                return Ok(());
            }
            if *other_host == host && Path::new(other).is_file() {
                return Err(Error::NameClash {
                    job: name,
                    file: PathBuf::from(file),
                    other: PathBuf::from(other),
                    store: self.path.clone(),
                });
            }
        }
        let now = now();
        on_store!(&mut self.store, conn => {
            sqlx::query(
                "INSERT INTO jobs (job, file, host, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job) DO UPDATE SET file = excluded.file, host = excluded.host, updated_at = excluded.updated_at",
            )
            .bind(&name)
            .bind(&file)
            .bind(&host)
            .bind(&now)
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })
        .map_err(store_error(&self.path))
    }
}

/// This machine's name, to tell a job file elsewhere from one here that shares a name
/// (`RECON_HOSTNAME` overrides it, e.g. for containers that share one host name).
fn hostname() -> String {
    if let Ok(name) = std::env::var("RECON_HOSTNAME") {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
