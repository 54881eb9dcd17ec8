//! Plan files (`recon plan --save PLAN`): a reviewed changeset, written so that `recon apply
//! --plan PLAN` writes exactly it. JSON Lines, so that neither writing nor applying a plan of
//! millions of changes holds it in memory; `.gz` at the end of the name compresses it:
//!
//! ```text
//! {"plan": {"format": "recon plan", "version": 1, "job": …, "fingerprint": …, "created_at": …, columns…}}
//! {"change": {"action": "update", "key": […], "id": …, "source": […], "destination": […], "changed": […], "cells": …}}
//! …
//! {"end": {"summary": {…}, "changes": N, "digest": "sha256:…"}}
//! ```
//!
//! Each change holds its key, the destination id, the values to write (`source`, with typed
//! `cells`) and the destination's values as they were (`destination`). The digest covers every
//! line before the last; it identifies the plan in the state store and detects a cut or edited
//! file. The fingerprint is a digest of everything in the job file that shapes the changeset
//! (both sides with urls redacted and HTTP headers left out, the mapping, the compare options,
//! `[write] deletes`, the `diff_query` text): another job file, or this one changed, does not fit.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::changeset::{Change, Changeset, Summary};
use crate::config::{Endpoint, Job};
use crate::error::{Error, Result};

pub const FORMAT: &str = "recon plan";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub job: String,
    pub fingerprint: String,
    /// When the plan was computed (RFC 3339, UTC).
    pub created_at: String,
    pub key_columns: Vec<String>,
    pub compared_columns: Vec<String>,
    pub compared_numeric: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trailer {
    pub summary: Summary,
    /// Change lines in the file.
    pub changes: u64,
    pub digest: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Plan(Header),
    Change(Box<Change>),
    End(Trailer),
}

/// The digest of everything in `job` that shapes its changeset.
pub fn fingerprint(job: &Job) -> Result<String> {
    let side = |e: &Endpoint| {
        let mut http = e.http.clone();
        if let Some(h) = http.as_mut() {
            h.headers.clear();
        }
        format!(
            "{}|{:?}|{:?}|{:?}|{:?}",
            e.location.display(),
            e.relation,
            e.id,
            e.cursor,
            http
        )
    };
    let query = match &job.diff_query {
        Some(path) => std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?,
        None => String::new(),
    };
    let shape = format!(
        "{}\n{}\n{:?}\n{:?}\n{:?}\ndeletes={}\n{query}",
        side(&job.source),
        side(&job.destination),
        job.keys,
        job.compare,
        job.compare_options,
        job.write.deletes
    );
    Ok(format!("sha256:{:x}", Sha256::digest(shape.as_bytes())))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a plan file: to a private temporary file beside it, renamed into place by `finish`.
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<Box<dyn Write + Send>>,
    digest: Sha256,
    changes: u64,
}

impl Writer {
    pub fn create(path: &Path, job: &Job, shape: &Changeset) -> Result<Writer> {
        let tmp = crate::report::temporary(path)?;
        let file = crate::report::create_private(&tmp).map_err(io(&tmp))?;
        let out: Box<dyn Write + Send> = match path.extension().is_some_and(|e| e == "gz") {
            true => Box::new(flate2::write::GzEncoder::new(
                BufWriter::new(file),
                flate2::Compression::default(),
            )),
            false => Box::new(BufWriter::new(file)),
        };
        let mut w = Writer {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            digest: Sha256::new(),
            changes: 0,
        };
        w.line(&Line::Plan(Header {
            format: FORMAT.into(),
            version: VERSION,
            job: job.name.clone(),
            fingerprint: fingerprint(job)?,
            created_at: crate::state::now(),
            key_columns: shape.key_columns.clone(),
            compared_columns: shape.compared_columns.clone(),
            compared_numeric: shape.compared_numeric.clone(),
        }))?;
        Ok(w)
    }

    fn line(&mut self, line: &Line) -> Result<()> {
        let mut text = serde_json::to_string(line)
            .map_err(|e| Error::Internal(format!("a plan line does not serialize: {e}")))?;
        text.push('\n');
        if !matches!(line, Line::End(_)) {
            self.digest.update(text.as_bytes());
        }
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::Internal("a finished plan".into()))?;
        out.write_all(text.as_bytes()).map_err(io(&self.tmp))
    }

    pub fn change(&mut self, change: &Change) -> Result<()> {
        self.changes += 1;
        self.line(&Line::Change(Box::new(change.clone())))
    }

    /// Write the trailer and move the file into place; returns the plan's digest.
    pub fn finish(mut self, summary: Summary) -> Result<String> {
        let digest = format!("sha256:{:x}", self.digest.clone().finalize());
        self.line(&Line::End(Trailer {
            summary,
            changes: self.changes,
            digest: digest.clone(),
        }))?;
        let mut out = self
            .out
            .take()
            .ok_or_else(|| Error::Internal("a finished plan".into()))?;
        out.flush().map_err(io(&self.tmp))?;
        drop(out);
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        Ok(digest)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A plan file that was read through and found whole: its header and trailer.
#[derive(Debug, Clone)]
pub struct Plan {
    pub path: PathBuf,
    pub header: Header,
    pub trailer: Trailer,
}

fn bad(path: &Path, why: impl Into<String>) -> Error {
    Error::Plan {
        path: path.to_path_buf(),
        reason: why.into(),
    }
}

fn lines(path: &Path) -> Result<impl Iterator<Item = Result<(String, Line)>>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let reader: Box<dyn BufRead> = match gz {
        true => Box::new(BufReader::new(flate2::read::GzDecoder::new(file))),
        false => Box::new(BufReader::new(file)),
    };
    let owned = path.to_path_buf();
    Ok(reader.lines().enumerate().map(move |(n, text)| {
        let text = text.map_err(|e| bad(&owned, format!("line {}: {e}", n + 1)))?;
        let line: Line = serde_json::from_str(&text)
            .map_err(|e| bad(&owned, format!("line {} is not a plan line ({e})", n + 1)))?;
        Ok((text, line))
    }))
}

impl Plan {
    /// Read a plan file through once (bounded memory): a header first, change lines, a trailer
    /// last whose count and digest match what came before.
    pub fn open(path: &Path) -> Result<Plan> {
        let mut header = None;
        let mut trailer = None;
        let mut digest = Sha256::new();
        let mut changes = 0u64;
        for line in lines(path)? {
            let (text, line) = line?;
            if trailer.is_some() {
                return Err(bad(path, "lines after the end line"));
            }
            match line {
                Line::Plan(h) if header.is_none() => header = Some(h),
                Line::Plan(_) => return Err(bad(path, "a second header")),
                Line::Change(_) if header.is_none() => return Err(bad(path, "no header line")),
                Line::Change(_) => changes += 1,
                Line::End(t) => {
                    trailer = Some(t);
                    continue;
                }
            }
            digest.update(text.as_bytes());
            digest.update(b"\n");
        }
        let header = header.ok_or_else(|| bad(path, "an empty file"))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(bad(path, format!("not a version {VERSION} recon plan")));
        }
        let trailer =
            trailer.ok_or_else(|| bad(path, "the file ends before its end line (cut short?)"))?;
        let found = format!("sha256:{:x}", digest.finalize());
        if trailer.changes != changes || trailer.digest != found {
            return Err(bad(
                path,
                "its changes do not match its digest (the file was edited or cut)",
            ));
        }
        if trailer.summary.changes() != changes {
            return Err(bad(
                path,
                format!(
                    "it lists {changes} of the {} changes it counts; a saved plan holds every change",
                    trailer.summary.changes()
                ),
            ));
        }
        Ok(Plan {
            path: path.to_path_buf(),
            header,
            trailer,
        })
    }

    /// The plan's changes, in file order.
    pub fn changes(&self) -> Result<impl Iterator<Item = Result<Change>>> {
        Ok(lines(&self.path)?.filter_map(|line| match line {
            Ok((_, Line::Change(c))) => Some(Ok(*c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }))
    }

    /// A changeset shell with the plan's job, columns and counts (no changes).
    pub fn shell(&self) -> Changeset {
        Changeset {
            job: self.header.job.clone(),
            key_columns: self.header.key_columns.clone(),
            compared_columns: self.header.compared_columns.clone(),
            compared_numeric: self.header.compared_numeric.clone(),
            summary: self.trailer.summary,
            changes: Vec::new(),
            cursor_max: None,
        }
    }
}
