//! Files the state store keeps beside the job, created private whatever the umask (folders 0700,
//! files 0600), and the per-job lock that keeps two applies of one job apart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use super::{io_error, now, state_location};
use crate::config::Job;
use crate::error::{Error, Result};

/// Create a folder (and its missing parents) with mode 0700 whatever the umask, so the state
/// store, locks and failed rows are readable by their owner only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// Create the file with mode 0600 if it does not exist, so secrets in state stay private.
pub(super) fn create_private(path: &Path) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(|_| ()).map_err(io_error(path))
}

/// An exclusive, per-job lock held by `apply` (a file beside the state store, locked with the
/// operating system's advisory lock, so it is released when the holder dies however it dies).
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn acquire(job: &Job) -> Result<Lock> {
        let dir = state_location(job).lock_folder(job);
        create_private_dir(&dir)?;
        let path = dir.join(format!("{}.lock", sanitize(&job.name)));
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(io_error(&path))?;
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
