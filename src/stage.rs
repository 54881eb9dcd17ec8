//! Staging: a database side is read once. Its batches are held in memory while they fit a share
//! of the memory budget (an eighth: the share a side may take for the diff to run in one pass,
//! src/diff/bucket.rs), so a side that fits is never written out. Past that share the batches go
//! to Arrow IPC files in the run's work folder (src/engine.rs) as they arrive, split by the hash
//! of the side's key column into [`BUCKETS`] folders, which the diff's passes take as they are:
//! a large side is not read back to be split after it is read. The key checks, the counts and
//! the diff then read the held batches or those local files, as often as they need.
//!
//! Batches of one side can differ in type (a SQLite column holding integers in one batch and
//! reals in the next, a PostgreSQL `numeric` whose scale grows): each run of same-typed batches
//! goes to its own segment file. When the side is read, the columns whose types differ are read
//! back once to choose one exact type ([`Facts`]), and the segments not of that type are
//! rewritten, batch by batch. (Held batches of different types are written out to be brought
//! to one type the same way.)

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::diff::KeyRange;
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
    /// The key checks' counts for the tracked key column, when it could be tracked.
    pub key: Option<KeyFacts>,
    /// The side's batches when they fit what may be held in memory ([`Stager::hold`]):
    /// nothing was written to `dir`.
    pub held: Option<Vec<RecordBatch>>,
    /// The held batches' bytes in memory.
    pub held_bytes: Option<u64>,
    /// Staged in [`BUCKETS`] folders (`dir/bucket=NN`) by the hash of the key column as staged.
    pub bucketed: bool,
    /// The buckets were dealt by key range rather than hash (src/diff/bucket.rs [`KeyRange`]):
    /// whether the side outgrew what is held or not, the range the sides agreed on.
    pub range: Option<KeyRange>,
}

/// Rows, NULL keys and duplicated keys of a side whose key is one integer column, counted as
/// the side was staged (the same counts as queries/key_checks.sql's `counts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFacts {
    pub rows: u64,
    pub nulls: u64,
    pub duplicates: u64,
}

/// Widest range of key values tracked: two bitmaps of 8 MiB. A wider range (or a key column
/// that is not an integer) leaves the key checks to the staged files.
const MAX_KEY_RANGE: u64 = 1 << 26;

/// Counts duplicated integers with two bitmaps (seen, seen twice) over the values' range, grown
/// (at least doubling, so linear overall) as values outside it arrive, in any order.
#[derive(Debug)]
pub struct KeyBitmap {
    /// Widest range held, in values (at least one word of 64).
    max_range: u64,
    /// The value of bit 0 (a multiple of 64), and the bitmaps, a word per 64 values.
    base: i128,
    seen: Vec<u64>,
    twice: Vec<u64>,
    /// Values seen more than once, each counted once.
    pub duplicates: u64,
}

impl KeyBitmap {
    pub fn new(max_range: u64) -> KeyBitmap {
        KeyBitmap {
            max_range: max_range.max(64),
            base: 0,
            seen: Vec::new(),
            twice: Vec::new(),
            duplicates: 0,
        }
    }

    /// Count `v`; `false` when holding it would take the range past the widest allowed.
    pub fn add(&mut self, v: i64) -> bool {
        if !self.cover(v) {
            return false;
        }
        self.mark(v);
        true
    }

    /// Count every value of `values`, as [`KeyBitmap::add`] each would: the range made to cover
    /// the slice's least and greatest value first, then each value marked without a range check
    /// (the key check's loop over every key read: ~2 % of a 10M plan's samples when each value
    /// checked the range in 128-bit arithmetic).
    pub fn add_all(&mut self, values: &[i64]) -> bool {
        let (Some(min), Some(max)) = (values.iter().min(), values.iter().max()) else {
            return true;
        };
        if !self.cover(*min) || !self.cover(*max) {
            return false;
        }
        values.iter().for_each(|v| self.mark(*v));
        true
    }

    /// Grow the bitmaps to hold `v`; `false` when that would take them past the widest range.
    fn cover(&mut self, v: i64) -> bool {
        let v = v as i128;
        if self.seen.is_empty() {
            self.base = v - v.rem_euclid(64);
            self.seen = vec![0; 1];
            self.twice = vec![0; 1];
        }
        let end = self.base + 64 * self.seen.len() as i128;
        if v < self.base || v >= end {
            let words = self.seen.len() as i128;
            let need = match v < self.base {
                true => (self.base - v + 63) / 64,
                false => (v - end) / 64 + 1,
            };
            // Grow by at least the current size (linear overall), within the widest range.
            let cap = (self.max_range / 64) as i128;
            if words + need > cap {
                return false;
            }
            let grow = need.max(words).min(cap - words);
            let (low, total) = match v < self.base {
                true => (grow, words + grow),
                false => (0, words + grow),
            };
            for map in [&mut self.seen, &mut self.twice] {
                let mut grown = vec![0u64; total as usize];
                grown[low as usize..(low + words) as usize].copy_from_slice(map);
                *map = grown;
            }
            self.base -= 64 * low;
        }
        true
    }

    /// Mark `v`, which the bitmaps cover: seen, or seen again (a duplicate, counted once).
    #[inline(always)]
    fn mark(&mut self, v: i64) {
        let at = (v as i128 - self.base) as usize;
        let (word, bit) = (at / 64, 1u64 << (at % 64));
        let seen = self.seen[word];
        self.seen[word] = seen | bit;
        if seen & bit != 0 && self.twice[word] & bit == 0 {
            self.twice[word] |= bit;
            self.duplicates += 1;
        }
    }
}

/// Counts one integer column's rows, NULLs and duplicated values as batches go by.
#[derive(Debug)]
struct KeyTracker {
    column: String,
    rows: u64,
    nulls: u64,
    /// `None` once the column could not be tracked (not an integer, too wide a range).
    bitmap: Option<KeyBitmap>,
}

impl KeyTracker {
    fn new(column: &str) -> KeyTracker {
        KeyTracker {
            column: column.to_string(),
            rows: 0,
            nulls: 0,
            bitmap: Some(KeyBitmap::new(MAX_KEY_RANGE)),
        }
    }

    fn push(&mut self, batch: &RecordBatch) {
        use datafusion::arrow::array::Array;
        use datafusion::arrow::compute::cast;
        use datafusion::arrow::datatypes::{DataType, Int64Type};
        let Some(bitmap) = self.bitmap.as_mut() else {
            return;
        };
        let wide = match batch.column_by_name(&self.column) {
            Some(c) if c.data_type().is_integer() && c.data_type() != &DataType::UInt64 => {
                cast(c, &DataType::Int64).ok()
            }
            _ => None,
        };
        let Some(wide) = wide else {
            self.bitmap = None;
            return;
        };
        let values = datafusion::arrow::array::AsArray::as_primitive::<Int64Type>(&wide);
        self.rows += values.len() as u64;
        self.nulls += values.null_count() as u64;
        let held = match values.null_count() {
            0 => bitmap.add_all(values.values()),
            _ => values.iter().flatten().all(|v| bitmap.add(v)),
        };
        if !held {
            self.bitmap = None;
        }
    }

    /// The counts, when the column could be tracked all along.
    fn facts(&self) -> Option<KeyFacts> {
        self.bitmap.as_ref().map(|b| KeyFacts {
            rows: self.rows,
            nulls: self.nulls,
            duplicates: b.duplicates,
        })
    }
}

struct Segment {
    path: PathBuf,
    schema: SchemaRef,
    rows: usize,
}

/// A folder being written to, with its open segment (the writer and its index in `segments`).
struct Lane {
    dir: PathBuf,
    open: Option<(FileWriter<BufWriter<File>>, usize)>,
}

/// A side's first batches, held in memory until they outgrow `limit` bytes.
struct Hold {
    limit: usize,
    bytes: usize,
    batches: Vec<RecordBatch>,
    /// Each held batch's bucket, when the connector dealt its rows to one ([`Stager::push_in`]).
    buckets: Vec<Option<usize>>,
}

/// Rows gathered per bucket ([`BUCKETS`] of them) before they are written, all of one schema.
struct Split {
    schema: SchemaRef,
    key: usize,
    coalescers: Vec<BatchCoalescer>,
    hashes: Vec<u64>,
}

/// Buckets a side is staged in once it outgrows what is held: the diff's passes each take a
/// share of them (consecutive buckets to a pass, src/diff/bucket.rs `pass_of_bucket`), so a
/// large side is not read back and split after it is read.
pub const BUCKETS: usize = 32;

/// A bucket's folder under the side's: named as a Hive partition (`bucket=07`), so that
/// DataFusion reads it as part of the side's folder (it skips other subfolders).
pub fn bucket_folder(bucket: usize) -> String {
    format!("bucket={bucket:02}")
}

/// Rows gathered per bucket before they are written: all buckets together wait with about one
/// segment's worth of rows.
pub const BUCKET_ROWS: usize = SEGMENT_ROWS / BUCKETS;

/// Bytes gathered per segment file before they are written: a batch's buffers in a few writes
/// rather than one system call per column buffer.
const WRITE_BUFFER: usize = 256 << 10;

/// Writes one side's batches to segment files as they arrive.
pub struct Stager {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The side's folder; or, once the rows are split, one folder per bucket (`dir/bucket=NN`).
    lanes: Vec<Lane>,
    key: Option<KeyTracker>,
    hold: Option<Hold>,
    /// The key column the rows are split by, when they outgrow what is held.
    bucket_key: Option<String>,
    /// Buckets by this key range rather than by hash ([`Stager::by_range`]).
    range: Option<KeyRange>,
    split: Option<Split>,
}
/// Deal a batch's rows among `coalescers` by each row's bucket (`buckets`, in row order); the
/// batches this completes, by bucket.
pub fn deal(
    batch: &RecordBatch,
    buckets: impl Iterator<Item = usize>,
    coalescers: &mut [BatchCoalescer],
) -> Result<Vec<(usize, RecordBatch)>, datafusion::arrow::error::ArrowError> {
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); coalescers.len()];
    for (row, b) in buckets.enumerate() {
        rows[b].push(row as u32);
    }
    let mut done = Vec::new();
    for (b, rows) in rows.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
        let coalescer = &mut coalescers[b];
        coalescer.push_batch_with_indices(batch.clone(), &UInt32Array::from(rows))?;
        while let Some(full) = coalescer.next_completed_batch() {
            done.push((b, full));
        }
    }
    Ok(done)
}

fn io(column: &str, e: impl std::fmt::Display) -> ColumnError {
    ColumnError {
        column: column.to_string(),
        message: format!("staging the snapshot in the work folder: {e}"),
    }
}

fn arrow(e: datafusion::arrow::error::ArrowError) -> ColumnError {
    io("", e)
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
            lanes: vec![Lane {
                dir: dir.clone(),
                open: None,
            }],
            dir,
            segments: Vec::new(),
            key: None,
            hold: None,
            bucket_key: None,
            range: None,
            split: None,
        })
    }

    /// Count the NULLs and duplicates of the integer column `column` (the side's one key
    /// column) as batches arrive, so that the key checks need not read it back.
    pub fn track_key(&mut self, column: &str) {
        self.key = Some(KeyTracker::new(column));
    }

    /// Hold the side's batches in memory while they take at most `limit` bytes (a side that
    /// fits is never written: [`Staged::held`]); past that, write them out, split into
    /// [`BUCKETS`] by the hash of `key` (the side's one key column) when there is one.
    pub fn hold(&mut self, limit: usize, key: Option<String>) {
        self.hold = Some(Hold {
            limit,
            bytes: 0,
            batches: Vec::new(),
            buckets: Vec::new(),
        });
        self.bucket_key = key;
    }

    /// The most bytes held ([`Stager::hold`]), if any are.
    pub fn hold_limit(&self) -> Option<usize> {
        self.hold.as_ref().map(|h| h.limit)
    }

    /// Hold nothing: for a side known (from its server's statistics) to be larger than what is
    /// held, so that memory filled and then written out is not taken at all (it is not needed
    /// again until the diff, whose passes need less of it with buckets by key range).
    pub fn skip_hold(&mut self) {
        if let Some(hold) = self.hold.as_mut().filter(|h| h.batches.is_empty()) {
            hold.limit = 0;
        }
    }

    /// Deal rows to buckets by `range` (the key column's block) rather than by hash: set
    /// before the first batch, as the connector's own dealing ([`Stager::push_in`]) uses it.
    pub fn by_range(&mut self, range: Option<KeyRange>) {
        self.range = range;
    }

    /// The key range rows are dealt to buckets by, if not by hash ([`Stager::by_range`]).
    pub fn range(&self) -> Option<KeyRange> {
        self.range
    }

    /// The column the side is split into buckets by if it outgrows what is held
    /// ([`Stager::hold`]): a connector may deal its rows to the buckets itself as it decodes
    /// them ([`Stager::push_in`]); a side that stays held keeps such batches as they are.
    pub fn bucket_key(&self) -> Option<&str> {
        self.bucket_key.as_deref()
    }

    /// Take one batch. Connectors push at least one batch (empty when the side has no rows) so
    /// that the columns are known.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), ColumnError> {
        self.push_in(None, batch)
    }

    /// As [`Stager::push`], for a batch whose rows all hash to `bucket` (`Some`: by the
    /// [`bucket_key`](Stager::bucket_key) column, with src/diff/bucket.rs's hash, modulo
    /// [`BUCKETS`]): written to that bucket as it is, not dealt again.
    pub fn push_in(
        &mut self,
        bucket: Option<usize>,
        batch: RecordBatch,
    ) -> Result<(), ColumnError> {
        let started =
            !self.segments.is_empty() || self.hold.as_ref().is_some_and(|h| !h.batches.is_empty());
        if batch.num_rows() == 0 && started {
            return Ok(());
        }
        if let Some(key) = self.key.as_mut() {
            key.push(&batch);
        }
        let Some(hold) = self.hold.as_mut() else {
            return self.write_in(bucket, batch);
        };
        hold.bytes += batch.get_array_memory_size();
        hold.batches.push(batch);
        hold.buckets.push(bucket);
        if hold.bytes <= hold.limit {
            return Ok(());
        }
        // Outgrown: written from now on, in buckets when the side has one key column (a key
        // the snapshot lacks is left for the mapping to report).
        let held = std::mem::take(&mut hold.batches);
        let buckets = std::mem::take(&mut hold.buckets);
        self.hold = None;
        let schema = held[0].schema();
        self.bucket_key = self
            .bucket_key
            .take()
            .filter(|k| schema.index_of(k).is_ok());
        if self.bucket_key.is_some() {
            self.lanes = (0..BUCKETS)
                .map(|b| Lane {
                    dir: self.dir.join(bucket_folder(b)),
                    open: None,
                })
                .collect();
            for lane in &self.lanes {
                std::fs::create_dir_all(&lane.dir).map_err(|e| io("", e))?;
            }
        }
        for (batch, bucket) in held.into_iter().zip(buckets) {
            self.write_in(bucket, batch)?;
        }
        Ok(())
    }

    /// Write a batch whose rows are all in `bucket` straight to it; any other as [`Stager::write`].
    fn write_in(&mut self, bucket: Option<usize>, batch: RecordBatch) -> Result<(), ColumnError> {
        match bucket {
            Some(b) if self.lanes.len() == BUCKETS && b < BUCKETS => self.write_lane(b, batch),
            _ => self.write(batch),
        }
    }

    /// Write a batch to the side's folder, or split it into the buckets' folders.
    fn write(&mut self, batch: RecordBatch) -> Result<(), ColumnError> {
        if self.lanes.len() != BUCKETS {
            return self.write_lane(0, batch);
        }
        if self
            .split
            .as_ref()
            .is_some_and(|s| s.schema != batch.schema())
        {
            self.flush_split()?;
        }
        if self.split.is_none() {
            let schema = batch.schema();
            let key = self.bucket_key.as_deref().unwrap_or_default();
            let key = schema.index_of(key).map_err(|e| io(key, e))?;
            self.split = Some(Split {
                coalescers: (0..BUCKETS)
                    .map(|_| BatchCoalescer::new(schema.clone(), BUCKET_ROWS))
                    .collect(),
                schema,
                key,
                hashes: Vec::new(),
            });
        }
        let mut done = Vec::new();
        if let Some(split) = self.split.as_mut() {
            split.hashes.clear();
            split.hashes.resize(batch.num_rows(), 0);
            let key = [batch.column(split.key).clone()];
            crate::diff::bucket_values(&key, self.range, &mut split.hashes)
                .map_err(|e| io("", e))?;
            let buckets = split.hashes.iter().map(|h| (*h % BUCKETS as u64) as usize);
            done = deal(&batch, buckets, &mut split.coalescers).map_err(arrow)?;
        }
        for (b, full) in done {
            self.write_lane(b, full)?;
        }
        Ok(())
    }

    /// Write the rows still gathered per bucket.
    fn flush_split(&mut self) -> Result<(), ColumnError> {
        let Some(mut split) = self.split.take() else {
            return Ok(());
        };
        for (b, coalescer) in split.coalescers.iter_mut().enumerate() {
            coalescer.finish_buffered_batch().map_err(arrow)?;
            while let Some(full) = coalescer.next_completed_batch() {
                self.write_lane(b, full)?;
            }
        }
        Ok(())
    }

    /// Write a batch to a lane's open segment, or to a new one: when the type changes, and
    /// every SEGMENT_ROWS rows (DataFusion reads an IPC file a whole file at a time, so small
    /// files keep every scan's memory small). Segment names are unique across lanes.
    fn write_lane(&mut self, lane: usize, batch: RecordBatch) -> Result<(), ColumnError> {
        let same = self.lanes[lane].open.as_ref().is_some_and(|(_, i)| {
            let s = &self.segments[*i];
            s.schema == batch.schema() && s.rows < SEGMENT_ROWS
        });
        if !same {
            if let Some((mut w, _)) = self.lanes[lane].open.take() {
                w.finish().map_err(arrow)?;
            }
            let path = self.lanes[lane]
                .dir
                .join(format!("part-{:05}.arrow", self.segments.len()));
            let file = File::create(&path).map_err(|e| io("", e))?;
            let writer = FileWriter::try_new(
                BufWriter::with_capacity(WRITE_BUFFER, file),
                &batch.schema(),
            )
            .map_err(arrow)?;
            self.lanes[lane].open = Some((writer, self.segments.len()));
            self.segments.push(Segment {
                path,
                schema: batch.schema(),
                rows: 0,
            });
        }
        if let Some((w, i)) = self.lanes[lane].open.as_mut() {
            w.write(&batch).map_err(arrow)?;
            self.segments[*i].rows += batch.num_rows();
        }
        Ok(())
    }

    /// Close every segment and bring them to one schema; or hand over the held batches.
    pub fn finish(mut self) -> Result<Staged, ColumnError> {
        let key = self.key.take().and_then(|k| k.facts());
        if let Some(hold) = self.hold.take() {
            let schema = hold.batches.first().map(|b| b.schema());
            match schema {
                Some(schema) if hold.batches.iter().all(|b| b.schema() == schema) => {
                    let rows = hold.batches.iter().map(|b| b.num_rows()).sum();
                    return Ok(Staged {
                        dir: self.dir.clone(),
                        schema,
                        rows,
                        key: key.filter(|f| f.rows == rows as u64),
                        held: Some(hold.batches),
                        held_bytes: Some(hold.bytes as u64),
                        bucketed: false,
                        range: self.range,
                    });
                }
                // Batches of different types are brought to one type in files, as below.
                _ => {
                    for batch in hold.batches {
                        self.write(batch)?;
                    }
                }
            }
        }
        self.flush_split()?;
        for lane in self.lanes.iter_mut() {
            if let Some((mut w, _)) = lane.open.take() {
                w.finish().map_err(arrow)?;
            }
        }
        let bucketed = self.lanes.len() == BUCKETS;
        let mut segments = std::mem::take(&mut self.segments);
        // Empty segments go, except in buckets (each bucket keeps its files' schema) or when
        // the side is empty.
        if segments.len() > 1 && !bucketed {
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
        // The buckets hold when the key was hashed in the type it is staged in.
        let bucketed = bucketed
            && self.bucket_key.as_ref().is_some_and(|k| {
                let Ok(field) = schema.field_with_name(k) else {
                    return false;
                };
                segments.iter().all(|s| {
                    s.schema.field_with_name(k).ok().map(|f| f.data_type())
                        == Some(field.data_type())
                })
            });
        Ok(Staged {
            dir: self.dir.clone(),
            schema,
            rows,
            key: key.filter(|f| f.rows == rows as u64),
            held: None,
            held_bytes: None,
            bucketed,
            range: self.range,
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};

    fn batch(column: Arc<dyn datafusion::arrow::array::Array>) -> RecordBatch {
        let field = Field::new("k", column.data_type().clone(), true);
        RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![column]).unwrap()
    }

    fn two_columns(from: i64, to: i64) -> RecordBatch {
        let k: Vec<i64> = (from..to).collect();
        let v: Vec<String> = (from..to).map(|i| format!("v{i}")).collect();
        let schema = Schema::new(vec![
            Field::new("k", datafusion::arrow::datatypes::DataType::Int64, true),
            Field::new("v", datafusion::arrow::datatypes::DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(k)),
                Arc::new(StringArray::from(v)),
            ],
        )
        .unwrap()
    }

    /// Rows staged in each bucket folder, and whether every row is in the bucket its key
    /// hashes to.
    fn bucket_rows(dir: &Path) -> (usize, bool) {
        let (mut rows, mut placed) = (0, true);
        for b in 0..BUCKETS {
            let folder = dir.join(bucket_folder(b));
            for entry in std::fs::read_dir(&folder).unwrap() {
                for batch in batches(&entry.unwrap().path()).unwrap() {
                    let batch = batch.unwrap();
                    let mut hashes = vec![0u64; batch.num_rows()];
                    crate::diff::bucket_values(&[batch.column(0).clone()], None, &mut hashes)
                        .unwrap();
                    placed &= hashes.iter().all(|h| (*h % BUCKETS as u64) as usize == b);
                    rows += batch.num_rows();
                }
            }
        }
        (rows, placed)
    }

    #[test]
    fn a_side_is_held_while_it_fits_and_staged_in_buckets_by_its_key_past_that() {
        let work = tempfile::tempdir().unwrap();
        // Fits: held, nothing written.
        let mut small = Stager::in_dir(&work.path().join("small")).unwrap();
        small.hold(1 << 20, Some("k".into()));
        small.push(two_columns(0, 1000)).unwrap();
        let staged = small.finish().unwrap();
        assert_eq!((staged.rows, staged.bucketed), (1000, false));
        assert_eq!(staged.held.map(|b| b.len()), Some(1));
        assert_eq!(std::fs::read_dir(&staged.dir).unwrap().count(), 0);
        // Outgrows 64 KiB: every row lands in its key's bucket, the held ones too.
        let mut large = Stager::in_dir(&work.path().join("large")).unwrap();
        large.hold(64 << 10, Some("k".into()));
        for from in (0..50_000).step_by(5000) {
            large.push(two_columns(from, from + 5000)).unwrap();
        }
        let staged = large.finish().unwrap();
        assert!(staged.held.is_none());
        assert_eq!((staged.rows, staged.bucketed), (50_000, true));
        assert_eq!(bucket_rows(&staged.dir), (50_000, true));
        // A key the snapshot lacks: staged whole, not in buckets (the mapping reports it).
        let mut keyless = Stager::in_dir(&work.path().join("keyless")).unwrap();
        keyless.hold(64 << 10, Some("id".into()));
        for from in (0..20_000).step_by(5000) {
            keyless.push(two_columns(from, from + 5000)).unwrap();
        }
        let staged = keyless.finish().unwrap();
        assert_eq!((staged.rows, staged.bucketed), (20_000, false));
        assert!(staged.dir.join("part-00000.arrow").is_file());
    }

    /// A slice counted at once gives what its values added one by one give: the duplicates,
    /// and whether the range could be held (near both ends of the integers too).
    #[test]
    fn a_slice_of_keys_counts_as_its_values_one_by_one() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (base, spread, range) in [
            (0i64, 5_000u64, 1u64 << 14),
            (-3_000, 2_000, 1 << 12),
            (i64::MIN, 3_000, 1 << 14),
            (i64::MAX - 4_000, 4_000, 1 << 14),
            (0, 100_000, 1 << 12),
        ] {
            let mut one = KeyBitmap::new(range);
            let mut all = KeyBitmap::new(range);
            let (mut held_one, mut held_all) = (true, true);
            for _ in 0..20 {
                let slice: Vec<i64> = (0..500)
                    .map(|_| base.wrapping_add((next() % spread) as i64))
                    .collect();
                held_one = held_one && slice.iter().all(|v| one.add(*v));
                held_all = held_all && all.add_all(&slice);
            }
            assert_eq!(held_one, held_all, "{base} {spread}");
            if held_one {
                assert_eq!(one.duplicates, all.duplicates, "{base} {spread}");
                assert!(one.duplicates > 0);
            }
        }
        assert!(KeyBitmap::new(64).add_all(&[]));
    }

    #[test]
    fn staged_keys_are_counted_as_a_grouping_counts_them_in_any_order() {
        let mut t = KeyTracker::new("k");
        // 0..10000 in a scattered order (the range grows down and up), 17 and 9999 twice more,
        // 42 once more, and NULLs, over batches of two integer types.
        let scattered: Vec<i64> = (0..10_000).map(|i| (i * 7919 + 5000) % 10_000).collect();
        for part in scattered.chunks(999) {
            t.push(&batch(Arc::new(Int64Array::from(part.to_vec()))));
        }
        t.push(&batch(Arc::new(Int32Array::from(vec![
            Some(17),
            None,
            Some(9999),
            Some(17),
            Some(42),
            None,
        ]))));
        t.push(&batch(Arc::new(Int64Array::from(vec![9999]))));
        assert_eq!(
            t.facts(),
            Some(KeyFacts {
                rows: 10_007,
                nulls: 2,
                duplicates: 3
            })
        );
        // Extreme values: tracked while the range stays narrow.
        let mut t = KeyTracker::new("k");
        t.push(&batch(Arc::new(Int64Array::from(vec![
            i64::MAX,
            i64::MAX - 5,
            i64::MAX,
        ]))));
        assert_eq!(t.facts().map(|f| f.duplicates), Some(1));
        // Too wide a range, or a key that is not an integer: left to the staged files.
        t.push(&batch(Arc::new(Int64Array::from(vec![i64::MIN]))));
        assert_eq!(t.facts(), None);
        let mut t = KeyTracker::new("k");
        t.push(&batch(Arc::new(StringArray::from(vec!["a"]))));
        assert_eq!(t.facts(), None);
    }
}
