//! `recon init [DIR]`: write the bundled orders example (a commented job file, a CSV source and a
//! SQLite destination) so a new user has a job that runs as is. Existing files are never
//! overwritten.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const FILES: &[(&str, &[u8])] = &[
    ("orders.toml", include_bytes!("../fixtures/orders/job.toml")),
    (
        "source_order.csv",
        include_bytes!("../fixtures/orders/source_order.csv"),
    ),
    ("app.db", include_bytes!("../fixtures/orders/app.db")),
];

/// Write the example into `dir` (created if missing); returns the job file's path.
pub fn init(dir: &Path) -> Result<PathBuf> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, _) in FILES {
        let path = dir.join(name);
        if path.exists() {
            return Err(Error::Write {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "it already exists; recon init never overwrites (choose another folder)",
                ),
            });
        }
    }
    for (name, bytes) in FILES {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    Ok(dir.join(FILES[0].0))
}
