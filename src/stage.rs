//! Staging: a database side is read once, and its batches are written as they arrive to Arrow
//! IPC files in the run's work folder (src/engine.rs), never held in memory. The key checks, the
//! counts and the diff then read those local files, as often as they need.
//!
//! Batches of one side can differ in type (a SQLite column holding integers in one batch and
//! reals in the next, a PostgreSQL `numeric` whose scale grows): each run of same-typed batches
//! goes to its own segment file. When the side is read, the columns whose types differ are read
//! back once to choose one exact type ([`Facts`]), and the segments not of that type are
//! rewritten, batch by batch.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Side;
use crate::snapshot::{ColumnError, Facts, convert};

/// Rows per staged file.
const SEGMENT_ROWS: usize = 131_072;

/// A side's rows as staged files: all of `schema`, in the folder `dir`.
#[derive(Debug, Clone)]
pub struct Staged {
    pub dir: PathBuf,
    pub schema: SchemaRef,
    pub rows: usize,
}

struct Segment {
    path: PathBuf,
    schema: SchemaRef,
    rows: usize,
}

/// Writes one side's batches to segment files as they arrive.
pub struct Stager {
    dir: PathBuf,
    segments: Vec<Segment>,
    writer: Option<FileWriter<BufWriter<File>>>,
}

fn io(column: &str, e: impl std::fmt::Display) -> ColumnError {
    ColumnError {
        column: column.to_string(),
        message: format!("staging the snapshot in the work folder: {e}"),
    }
}

impl Stager {
    /// A stager writing under `work/<side>/` (created empty).
    pub fn new(work: &Path, side: Side) -> std::io::Result<Stager> {
        Stager::in_dir(&work.join(side.name()))
    }

    /// A stager writing under `dir` (created empty).
    pub fn in_dir(dir: &Path) -> std::io::Result<Stager> {
        let dir = dir.to_path_buf();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Stager {
            dir,
            segments: Vec::new(),
            writer: None,
        })
    }

    /// Write one batch. Connectors push at least one batch (empty when the side has no rows) so
    /// that the columns are known.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), ColumnError> {
        // A new segment when the type changes, and every SEGMENT_ROWS rows: DataFusion reads an
        // IPC file a whole file at a time, so small files keep every scan's memory small.
        let same = self
            .segments
            .last()
            .is_some_and(|s| s.schema == batch.schema() && s.rows < SEGMENT_ROWS);
        if batch.num_rows() == 0 && !self.segments.is_empty() {
            return Ok(());
        }
        if !same {
            self.close()?;
            let path = self
                .dir
                .join(format!("part-{:05}.arrow", self.segments.len()));
            let file = File::create(&path).map_err(|e| io("", e))?;
            let writer = FileWriter::try_new(BufWriter::new(file), &batch.schema())
                .map_err(|e| io("", e))?;
            self.writer = Some(writer);
            self.segments.push(Segment {
                path,
                schema: batch.schema(),
                rows: 0,
            });
        }
        if let (Some(w), Some(s)) = (self.writer.as_mut(), self.segments.last_mut()) {
            w.write(&batch).map_err(|e| io("", e))?;
            s.rows += batch.num_rows();
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), ColumnError> {
        if let Some(mut w) = self.writer.take() {
            w.finish().map_err(|e| io("", e))?;
        }
        Ok(())
    }

    /// Close the last segment and bring every segment to one schema.
    pub fn finish(mut self) -> Result<Staged, ColumnError> {
        self.close()?;
        let mut segments = std::mem::take(&mut self.segments);
        if segments.len() > 1 {
            for s in segments.iter().filter(|s| s.rows == 0) {
                let _ = std::fs::remove_file(&s.path);
            }
            segments.retain(|s| s.rows > 0);
        }
        if segments.is_empty() {
            return Err(ColumnError {
                column: String::new(),
                message: "internal error (this is a bug in recon): a snapshot without columns"
                    .into(),
            });
        }
        let rows = segments.iter().map(|s| s.rows).sum();
        let schema = unified_schema(&segments)?;
        for segment in segments.iter().filter(|s| s.schema != schema) {
            rewrite(segment, &schema)?;
        }
        Ok(Staged {
            dir: self.dir.clone(),
            schema,
            rows,
        })
    }
}

fn batches(path: &Path) -> Result<FileReader<std::io::BufReader<File>>, ColumnError> {
    let file = File::open(path).map_err(|e| io("", e))?;
    FileReader::try_new(std::io::BufReader::new(file), None).map_err(|e| io("", e))
}

/// The schema every segment is brought to: per column, the one type that holds all its values.
/// Only columns whose type differs between segments are read back.
fn unified_schema(segments: &[Segment]) -> Result<SchemaRef, ColumnError> {
    let first = &segments[0].schema;
    let mut fields = Vec::with_capacity(first.fields().len());
    for (i, field) in first.fields().iter().enumerate() {
        let name = field.name();
        let differs = segments
            .iter()
            .any(|s| s.schema.field(i).data_type() != field.data_type());
        if !differs {
            fields.push(field.as_ref().clone());
            continue;
        }
        let fail = |message: String| ColumnError {
            column: name.clone(),
            message,
        };
        let mut facts = Facts::default();
        for segment in segments {
            for batch in batches(&segment.path)? {
                let batch = batch.map_err(|e| io(name, e))?;
                facts.observe(batch.column(i)).map_err(fail)?;
            }
        }
        fields.push(Field::new(name, facts.target().map_err(fail)?, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Rewrite one segment in `schema`, batch by batch.
fn rewrite(segment: &Segment, schema: &SchemaRef) -> Result<(), ColumnError> {
    let tmp = segment.path.with_extension("arrow.tmp");
    let file = File::create(&tmp).map_err(|e| io("", e))?;
    let mut writer = FileWriter::try_new(BufWriter::new(file), schema).map_err(|e| io("", e))?;
    for batch in batches(&segment.path)? {
        let batch = batch.map_err(|e| io("", e))?;
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (column, field) in batch.columns().iter().zip(schema.fields()) {
            columns.push(
                convert(column, field.data_type()).map_err(|message| ColumnError {
                    column: field.name().clone(),
                    message,
                })?,
            );
        }
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| io("", e))?;
        writer.write(&batch).map_err(|e| io("", e))?;
    }
    writer.finish().map_err(|e| io("", e))?;
    std::fs::rename(&tmp, &segment.path).map_err(|e| io("", e))
}
