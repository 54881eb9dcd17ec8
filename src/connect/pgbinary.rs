//! Decoder for PostgreSQL's binary `COPY ... TO STDOUT (FORMAT binary)` stream into Arrow
//! batches. It is fed chunks as they arrive, or all the messages of one read of the connection
//! at once ([`Decoder::push_frames`]; a chunk may end anywhere, even inside a field), notes where
//! each tuple's values lie, decodes them a column at a time, and yields a batch every
//! [`BATCH_ROWS`] rows, or, dealing rows to buckets by a key's hash
//! ([`Decoder::deal_by`]), a bucket's rows whenever it has gathered enough. Values are decoded
//! exactly: `numeric` keeps its digits and scale, timestamps keep microseconds, `uuid` becomes
//! its canonical text.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrowPrimitiveType, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, PrimitiveBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::i256;
use datafusion::arrow::record_batch::RecordBatch;

use crate::snapshot::{BATCH_ROWS, ColumnBuilder, Decimals, batch};

/// How a column's binary value is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    /// `char(n)`: text whose trailing spaces are padding, not value (PostgreSQL ignores them in
    /// comparisons and drops them when casting to text), read without them.
    Bpchar,
    Jsonb,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    Time,
    Uuid,
}

impl PgKind {
    /// The kind for a PostgreSQL type name (as sqlx reports it); `None` means "read it as text".
    pub fn from_type_name(name: &str) -> Option<PgKind> {
        Some(match name {
            "BOOL" => PgKind::Bool,
            "INT2" => PgKind::Int2,
            "INT4" => PgKind::Int4,
            "INT8" => PgKind::Int8,
            "OID" => PgKind::Oid,
            "FLOAT4" => PgKind::Float4,
            "FLOAT8" => PgKind::Float8,
            "NUMERIC" => PgKind::Numeric,
            "TEXT" | "VARCHAR" | "NAME" | "JSON" | "\"CHAR\"" | "CITEXT" => PgKind::Text,
            // sqlx names `char(n)` (bpchar) "CHAR", and the one-byte `"char"` "\"CHAR\"".
            "CHAR" | "BPCHAR" => PgKind::Bpchar,
            "JSONB" => PgKind::Jsonb,
            "BYTEA" => PgKind::Bytea,
            "DATE" => PgKind::Date,
            "TIMESTAMP" => PgKind::Timestamp,
            "TIMESTAMPTZ" => PgKind::TimestampTz,
            "TIME" => PgKind::Time,
            "UUID" => PgKind::Uuid,
            _ => return None,
        })
    }

    fn column(self) -> Column {
        self.column_for(BATCH_ROWS)
    }

    /// A column with room for `n` rows.
    fn column_for(self, n: usize) -> Column {
        let text = || BinaryBuilder::with_capacity(n, n * 16);
        let timestamp = || TimestampMicrosecondBuilder::with_capacity(n);
        match self {
            PgKind::Bool => Column::Bool(BooleanBuilder::with_capacity(n)),
            PgKind::Int2 => Column::Int2(Int16Builder::with_capacity(n)),
            PgKind::Int4 => Column::Int4(Int32Builder::with_capacity(n)),
            PgKind::Int8 => Column::Int8(Int64Builder::with_capacity(n)),
            PgKind::Oid => Column::Oid(Int64Builder::with_capacity(n)),
            PgKind::Float4 => Column::Float4(Float32Builder::with_capacity(n)),
            PgKind::Float8 => Column::Float8(Float64Builder::with_capacity(n)),
            PgKind::Numeric => Column::Numeric(Decimals::with_capacity(n)),
            PgKind::Text => Column::Text(text()),
            PgKind::Bpchar => Column::Bpchar(text()),
            PgKind::Jsonb => Column::Jsonb(text()),
            PgKind::Uuid => Column::Uuid(text()),
            PgKind::Bytea => Column::Bytea(BinaryBuilder::with_capacity(n, n * 16)),
            PgKind::Date => Column::Date(Date32Builder::with_capacity(n)),
            PgKind::Timestamp => Column::Timestamp(timestamp()),
            PgKind::TimestampTz => Column::TimestampTz(timestamp()),
            PgKind::Time => Column::Time(Time64MicrosecondBuilder::with_capacity(n)),
        }
    }
}

/// A column being decoded: its kind and its builder in one. A chunk's tuples are first read
/// into a [`Tape`] (where each value lies), then decoded a column at a time ([`Column::decode`]):
/// one match on the column's kind per run of values rather than one per value, and text taken
/// as bytes whose UTF-8 is checked once per batch ([`ColumnBuilder::Utf8`]).
enum Column {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Oid(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Numeric(Decimals),
    Text(BinaryBuilder),
    Bpchar(BinaryBuilder),
    Jsonb(BinaryBuilder),
    Uuid(BinaryBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    TimestampTz(TimestampMicrosecondBuilder),
    Time(Time64MicrosecondBuilder),
}

/// Each of `rows`' values of one column, from where the tape says they lie in `data` (`None`:
/// NULL).
#[inline(always)]
fn values<'a>(
    data: &'a [u8],
    fields: &'a [(u32, i32)],
    rows: impl Iterator<Item = usize> + 'a,
) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
    rows.map(move |r| {
        let (at, len) = fields[r];
        (len >= 0).then(|| &data[at as usize..at as usize + len as usize])
    })
}

/// Decode fixed-width big-endian values of `N` bytes into a primitive builder.
#[inline(always)]
fn fixed<'a, T: ArrowPrimitiveType, const N: usize>(
    b: &mut PrimitiveBuilder<T>,
    values: impl Iterator<Item = Option<&'a [u8]>>,
    value: impl Fn([u8; N]) -> Result<T::Native, String>,
) -> Result<(), String> {
    in_runs(
        values,
        |v| value(be(v)?),
        |run| match run {
            Some(run) => b.append_slice(run),
            None => b.append_null(),
        },
    )
}

/// Decode `values` with `value`, handing them to `append` a run at a time (`None`: a NULL):
/// a builder's append then runs once per run of up to 64 values rather than once per value (its
/// call was not inlined: ~4 % of a 10M plan's samples).
#[inline(always)]
fn in_runs<'a, X: Copy + Default>(
    values: impl Iterator<Item = Option<&'a [u8]>>,
    value: impl Fn(&'a [u8]) -> Result<X, String>,
    mut append: impl FnMut(Option<&[X]>),
) -> Result<(), String> {
    let mut run = [X::default(); 64];
    let mut n = 0;
    for v in values {
        match v {
            Some(v) => {
                run[n] = value(v)?;
                n += 1;
                if n == run.len() {
                    append(Some(&run));
                    n = 0;
                }
            }
            None => {
                append(Some(&run[..n]));
                n = 0;
                append(None);
            }
        }
    }
    append(Some(&run[..n]));
    Ok(())
}

/// Append byte values (as `value` cuts them) to a bytes builder.
#[inline(always)]
fn bytes<'a>(
    b: &mut BinaryBuilder,
    values: impl Iterator<Item = Option<&'a [u8]>>,
    value: impl Fn(&'a [u8]) -> &'a [u8],
) {
    for v in values {
        match v {
            None => b.append_null(),
            Some(v) => b.append_value(value(v)),
        }
    }
}

impl Column {
    /// Decode `rows`' values of this column, `fields` being where the tape says they lie in
    /// `data`.
    fn decode(
        &mut self,
        data: &[u8],
        fields: &[(u32, i32)],
        rows: impl Iterator<Item = usize>,
    ) -> Result<(), String> {
        let values = values(data, fields, rows);
        match self {
            Column::Bool(b) => in_runs(
                values,
                |v| Ok(v.first() == Some(&1)),
                |run| match run {
                    Some(run) => b.append_slice(run),
                    None => b.append_null(),
                },
            )?,
            Column::Int2(b) => fixed(b, values, |v| Ok(i16::from_be_bytes(v)))?,
            Column::Int4(b) => fixed(b, values, |v| Ok(i32::from_be_bytes(v)))?,
            Column::Int8(b) => fixed(b, values, |v| Ok(i64::from_be_bytes(v)))?,
            Column::Oid(b) => fixed(b, values, |v| Ok(u32::from_be_bytes(v).into()))?,
            Column::Float4(b) => fixed(b, values, |v| Ok(f32::from_be_bytes(v)))?,
            Column::Float8(b) => fixed(b, values, |v| Ok(f64::from_be_bytes(v)))?,
            Column::Date(b) => fixed(b, values, |v| date(i32::from_be_bytes(v)))?,
            Column::Timestamp(b) | Column::TimestampTz(b) => {
                fixed(b, values, |v| timestamp(i64::from_be_bytes(v)))?
            }
            Column::Time(b) => fixed(b, values, |v| Ok(i64::from_be_bytes(v)))?,
            // Runs of values of one scale (a column's declared scale, usually) go in at once.
            Column::Numeric(d) => {
                let (mut run, mut n, mut run_scale) = ([0i128; 64], 0, 0);
                for v in values {
                    let short = v.map(|v| (v, numeric_short(v)));
                    let (mantissa, scale) = match short {
                        Some((_, Some(short))) => short,
                        Some((v, None)) => match numeric_128(v)? {
                            Some(narrow) => narrow,
                            None => {
                                d.push_run(&run[..n], run_scale);
                                n = 0;
                                d.push(Some(numeric(v)?));
                                continue;
                            }
                        },
                        None => {
                            d.push_run(&run[..n], run_scale);
                            n = 0;
                            d.push(None);
                            continue;
                        }
                    };
                    if scale != run_scale || n == run.len() {
                        d.push_run(&run[..n], run_scale);
                        n = 0;
                        run_scale = scale;
                    }
                    run[n] = mantissa;
                    n += 1;
                }
                d.push_run(&run[..n], run_scale);
            }
            Column::Text(b) | Column::Bytea(b) => bytes(b, values, |v| v),
            // Trailing spaces are `char(n)`'s padding (a space is never part of a longer
            // UTF-8 character).
            Column::Bpchar(b) => bytes(b, values, |v| {
                let end = v.iter().rposition(|c| *c != b' ').map_or(0, |i| i + 1);
                &v[..end]
            }),
            // The version byte first.
            Column::Jsonb(b) => bytes(b, values, |v| v.get(1..).unwrap_or_default()),
            Column::Uuid(b) => {
                for v in values {
                    match v {
                        None => b.append_null(),
                        Some(v) => b.append_value(uuid(v)?),
                    }
                }
            }
        }
        Ok(())
    }

    /// The batch's builder for the column.
    fn into_builder(self) -> ColumnBuilder {
        match self {
            Column::Bool(b) => ColumnBuilder::Bool(b),
            Column::Int2(b) => ColumnBuilder::Int16(b),
            Column::Int4(b) => ColumnBuilder::Int32(b),
            Column::Int8(b) | Column::Oid(b) => ColumnBuilder::Int64(b),
            Column::Float4(b) => ColumnBuilder::Float32(b),
            Column::Float8(b) => ColumnBuilder::Float64(b),
            Column::Numeric(d) => ColumnBuilder::Decimal(d),
            Column::Text(b) | Column::Bpchar(b) | Column::Jsonb(b) | Column::Uuid(b) => {
                ColumnBuilder::Utf8(b)
            }
            Column::Bytea(b) => ColumnBuilder::Binary(b),
            Column::Date(b) => ColumnBuilder::Date(b),
            Column::Timestamp(b) => ColumnBuilder::Timestamp(b, None),
            Column::TimestampTz(b) => ColumnBuilder::Timestamp(b, Some(Arc::from("UTC"))),
            Column::Time(b) => ColumnBuilder::Time(b),
        }
    }
}

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A decoding failure: which column, and what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {message}")]
pub struct DecodeError {
    pub column: String,
    pub message: String,
}

/// A decoded batch, with the bucket all its rows are in when the decoder deals rows to buckets
/// ([`Decoder::deal_by`]).
pub type Decoded = (Option<usize>, RecordBatch);

/// Rows dealt to buckets as they are decoded, by the hash of one key column (src/stage.rs): each
/// bucket gathers its rows in its own columns, so a staged side is not copied again into its
/// buckets after it is decoded.
struct Deal {
    key: usize,
    buckets: Vec<Vec<Column>>,
    rows: Vec<usize>,
    /// Rows a bucket's batch gathers.
    target: usize,
    /// Deal an integer key by its block of this range rather than its hash.
    range: Option<crate::diff::KeyRange>,
}

/// Tuples read before they are decoded: at most a wire read's worth (256 KiB holds ~3,600
/// tuples of the benchmark's 7 columns), small enough to stay in cache with the bytes it points
/// into.
const TAPE_ROWS: usize = 2048;

/// Where the values of the tuples read but not yet decoded lie in the data being decoded.
struct Tape {
    /// Per column, per tuple: the value's start and length (-1: NULL).
    fields: Vec<Vec<(u32, i32)>>,
    /// Per tuple, its bucket (rows dealt to buckets).
    buckets: Vec<u32>,
    rows: usize,
    /// The tuples' order by bucket, and where each bucket's rows end in it (reused).
    order: Vec<u32>,
    starts: Vec<usize>,
}

pub struct Decoder {
    names: Vec<String>,
    kinds: Vec<PgKind>,
    columns: Vec<Column>,
    /// Rows in `columns`.
    rows: usize,
    /// Rows `columns` gather before they are yielded as a batch (rows not dealt to buckets).
    batch_rows: usize,
    tape: Tape,
    deal: Option<Deal>,
    /// Bytes of an incomplete tuple (or header) carried over to the next chunk.
    buf: Vec<u8>,
    header_done: bool,
    finished: bool,
}

impl Decoder {
    pub fn new(names: Vec<String>, kinds: Vec<PgKind>) -> Decoder {
        let columns = kinds.iter().map(|k| k.column()).collect();
        let tape = Tape {
            fields: vec![vec![(0, 0); TAPE_ROWS]; kinds.len()],
            buckets: vec![0; TAPE_ROWS],
            rows: 0,
            order: Vec::new(),
            starts: Vec::new(),
        };
        Decoder {
            names,
            kinds,
            columns,
            rows: 0,
            batch_rows: BATCH_ROWS,
            tape,
            deal: None,
            buf: Vec::new(),
            header_done: false,
            finished: false,
        }
    }

    /// Gather the first `rows` rows into one batch, with room for them from the start (a side
    /// expected to be held whole: the diff's join then takes it as its build side without
    /// copying it into one, src/diff/mod.rs `arrange_held`); later rows come in batches of
    /// [`BATCH_ROWS`]. Only before the first row.
    pub fn first_batch(&mut self, rows: usize) {
        if self.rows == 0 && self.deal.is_none() && rows > BATCH_ROWS {
            self.batch_rows = rows;
            self.columns = self.kinds.iter().map(|k| k.column_for(rows)).collect();
        }
    }

    /// Deal the rows from now on to `buckets` buckets by column `key`'s hash
    /// (src/diff/bucket.rs `hash_value`, modulo `buckets`), or by its block of `range` (an
    /// integer key, src/diff/bucket.rs `KeyRange`), in batches of `target` rows; `false` (and
    /// rows not dealt) when the column's kind is not one dealt here.
    pub fn deal_by(
        &mut self,
        key: usize,
        buckets: usize,
        target: usize,
        range: Option<crate::diff::KeyRange>,
    ) -> bool {
        let integer = matches!(
            self.kinds.get(key),
            Some(PgKind::Int2 | PgKind::Int4 | PgKind::Int8 | PgKind::Oid)
        );
        let text = matches!(self.kinds.get(key), Some(PgKind::Text | PgKind::Bpchar));
        let dealt = integer || (text && range.is_none());
        if dealt && buckets > 0 {
            let target = target.max(1);
            let columns = || self.kinds.iter().map(|k| k.column_for(target)).collect();
            self.deal = Some(Deal {
                key,
                buckets: (0..buckets).map(|_| columns()).collect(),
                rows: vec![0; buckets],
                target,
                range,
            });
        }
        dealt
    }

    /// Feed one chunk of the stream; returns the batches completed by it. A chunk may end
    /// anywhere: an incomplete tuple's bytes are kept until the next chunk completes it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
        self.push_frames(chunk, std::slice::from_ref(&(0..chunk.len())))
    }

    /// Feed the parts `frames` of `data`, in order (the COPY's data messages in a read of the
    /// connection: PostgreSQL sends a message per tuple); returns the batches completed by them.
    /// Values are decoded from `data` itself; only an incomplete tuple's bytes are kept until a
    /// later part completes it.
    pub fn push_frames(
        &mut self,
        data: &[u8],
        frames: &[std::ops::Range<usize>],
    ) -> Result<Vec<Decoded>, DecodeError> {
        if u32::try_from(data.len()).is_err() {
            return Err(self.error(0, "a COPY chunk of more than 4 GiB"));
        }
        let mut out = Vec::new();
        for frame in frames {
            if self.buf.is_empty() {
                let used = self.read(data, frame.start, frame.end, &mut out)?;
                self.buf.extend_from_slice(&data[used..frame.end]);
            } else {
                // The rest of a tuple begun in an earlier part.
                self.decode(data, &mut out)?;
                self.buf.extend_from_slice(&data[frame.clone()]);
                let held = std::mem::take(&mut self.buf);
                if u32::try_from(held.len()).is_err() {
                    return Err(self.error(0, "a COPY tuple of more than 4 GiB"));
                }
                let used = self.read(&held, 0, held.len(), &mut out);
                let decoded = used.and_then(|used| self.decode(&held, &mut out).map(|_| used));
                self.buf = held;
                self.buf.drain(..decoded?);
            }
        }
        self.decode(data, &mut out)?;
        Ok(out)
    }

    /// Read the header and every whole tuple in `data[from..to]` onto the tape (decoding it
    /// whenever it is full); returns where the first incomplete one begins.
    fn read(
        &mut self,
        data: &[u8],
        from: usize,
        to: usize,
        out: &mut Vec<Decoded>,
    ) -> Result<usize, DecodeError> {
        let mut pos = from;
        if !self.header_done {
            match self.header_len(&data[from..to])? {
                Some(n) => {
                    pos += n;
                    self.header_done = true;
                }
                None => return Ok(from),
            }
        }
        while !self.finished {
            if self.tape.rows == TAPE_ROWS {
                self.decode(data, out)?;
            }
            match self.read_tuple(&data[..to], pos)? {
                Some(end) => pos = end,
                None => break,
            }
        }
        Ok(pos)
    }

    /// The last, partial batches: the rows not dealt, then every bucket's (one empty batch
    /// when there were no rows); an error if the stream ended early.
    pub fn finish(mut self) -> Result<Vec<Decoded>, DecodeError> {
        if !self.finished {
            return Err(self.error(0, "the COPY stream ended before its trailer"));
        }
        let mut out = Vec::new();
        // Rows decoded before dealing began.
        if self.rows > 0 {
            out.push((None, self.take_batch()?));
        }
        let buckets = self.deal.as_ref().map_or(0, |d| d.buckets.len());
        for b in 0..buckets {
            if self.deal.as_ref().is_some_and(|d| d.rows[b] > 0) {
                out.push((Some(b), self.take_bucket(b)?));
            }
        }
        if out.is_empty() {
            out.push((None, self.take_batch()?));
        }
        Ok(out)
    }

    fn take_batch(&mut self) -> Result<RecordBatch, DecodeError> {
        let fresh = self.kinds.iter().map(|k| k.column()).collect();
        let columns = std::mem::replace(&mut self.columns, fresh);
        self.rows = 0;
        self.batch_rows = BATCH_ROWS;
        self.batch_of(columns)
    }

    /// Bucket `b`'s rows as a batch.
    fn take_bucket(&mut self, b: usize) -> Result<RecordBatch, DecodeError> {
        let Some(deal) = self.deal.as_mut() else {
            return self.take_batch();
        };
        let fresh = self
            .kinds
            .iter()
            .map(|k| k.column_for(deal.target))
            .collect();
        let columns = std::mem::replace(&mut deal.buckets[b], fresh);
        deal.rows[b] = 0;
        self.batch_of(columns)
    }

    fn batch_of(&self, columns: Vec<Column>) -> Result<RecordBatch, DecodeError> {
        let builders = columns.into_iter().map(Column::into_builder).collect();
        batch(&self.names, builders).map_err(|e| DecodeError {
            column: e.column,
            message: e.message,
        })
    }

    fn error(&self, column: usize, message: &str) -> DecodeError {
        DecodeError {
            column: self.names.get(column).cloned().unwrap_or_default(),
            message: message.to_string(),
        }
    }

    /// The header's length, once `data` holds all of it.
    fn header_len(&self, data: &[u8]) -> Result<Option<usize>, DecodeError> {
        if data.len() < SIGNATURE.len() + 8 {
            return Ok(None);
        }
        if &data[..SIGNATURE.len()] != SIGNATURE {
            return Err(self.error(0, "not a binary COPY stream"));
        }
        let ext = u32::from_be_bytes(data[15..19].try_into().unwrap_or_default()) as usize;
        Ok((data.len() >= 19 + ext).then_some(19 + ext))
    }

    /// Read the tuple (or the trailer) at `data[at..]` onto the tape, once all of it is there;
    /// returns where it ends. Its bucket is found here, from its key.
    fn read_tuple(&mut self, data: &[u8], at: usize) -> Result<Option<usize>, DecodeError> {
        let Some(head) = data.get(at..at + 2) else {
            return Ok(None);
        };
        let fields = i16::from_be_bytes([head[0], head[1]]);
        if fields == -1 {
            self.finished = true;
            return Ok(Some(at + 2));
        }
        if fields as usize != self.kinds.len() {
            return Err(self.error(
                0,
                &format!("a row has {fields} fields, expected {}", self.kinds.len()),
            ));
        }
        // Where each value lies; the tuple counts only once all of it is here.
        let row = self.tape.rows;
        let mut end = at + 2;
        for column in self.tape.fields.iter_mut() {
            let Some(header) = data.get(end..end + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            end += 4;
            column[row] = (end as u32, len);
            end += len.max(0) as usize;
        }
        if data.len() < end {
            return Ok(None);
        }
        if let Some(deal) = self.deal.as_ref() {
            let (at, len) = self.tape.fields[deal.key][row];
            let hash = match len {
                ..0 => 0,
                _ => key_hash(
                    self.kinds[deal.key],
                    &data[at as usize..at as usize + len as usize],
                    deal.range,
                )
                .map_err(|message| DecodeError {
                    column: self.names[deal.key].clone(),
                    message,
                })?,
            };
            // `hash % n`, without a division when `n` is a power of two (32: src/stage.rs).
            let n = deal.buckets.len() as u64;
            let bucket = match n.is_power_of_two() {
                true => hash & (n - 1),
                false => hash % n,
            };
            self.tape.buckets[row] = bucket as u32;
        }
        self.tape.rows += 1;
        Ok(Some(end))
    }

    /// Decode the tuples on the tape, whose values lie in `data`, a column at a time: into the
    /// batch being gathered, or, dealt, into their buckets' (taking each batch that fills).
    fn decode(&mut self, data: &[u8], out: &mut Vec<Decoded>) -> Result<(), DecodeError> {
        let n = std::mem::take(&mut self.tape.rows);
        if n == 0 {
            return Ok(());
        }
        let Some(buckets) = self.deal.as_ref().map(|d| d.buckets.len()) else {
            let mut start = 0;
            while start < n {
                let take = (self.batch_rows - self.rows).min(n - start);
                for (c, column) in self.columns.iter_mut().enumerate() {
                    column
                        .decode(data, &self.tape.fields[c], start..start + take)
                        .map_err(|message| DecodeError {
                            column: self.names[c].clone(),
                            message,
                        })?;
                }
                self.rows += take;
                start += take;
                if self.rows >= self.batch_rows {
                    out.push((None, self.take_batch()?));
                }
            }
            return Ok(());
        };
        // The tuples by bucket (a counting sort), keeping their order within each.
        let mut order = std::mem::take(&mut self.tape.order);
        let mut starts = std::mem::take(&mut self.tape.starts);
        starts.clear();
        starts.resize(buckets + 1, 0);
        for b in &self.tape.buckets[..n] {
            starts[*b as usize + 1] += 1;
        }
        for b in 0..buckets {
            starts[b + 1] += starts[b];
        }
        order.clear();
        order.resize(n, 0);
        // Each bucket's start serves as its cursor: placed, it is where the next bucket starts.
        for (row, b) in self.tape.buckets[..n].iter().enumerate() {
            order[starts[*b as usize]] = row as u32;
            starts[*b as usize] += 1;
        }
        let mut result = Ok(());
        'buckets: for b in 0..buckets {
            let from = match b {
                0 => 0,
                _ => starts[b - 1],
            };
            let mut rows = &order[from..starts[b]];
            while !rows.is_empty() {
                let Some(deal) = self.deal.as_mut() else {
                    break 'buckets;
                };
                let take = (deal.target - deal.rows[b]).min(rows.len());
                for (c, column) in deal.buckets[b].iter_mut().enumerate() {
                    let these = rows[..take].iter().map(|r| *r as usize);
                    if let Err(message) = column.decode(data, &self.tape.fields[c], these) {
                        result = Err(DecodeError {
                            column: self.names[c].clone(),
                            message,
                        });
                        break 'buckets;
                    }
                }
                deal.rows[b] += take;
                rows = &rows[take..];
                if deal.rows[b] >= deal.target {
                    match self.take_bucket(b) {
                        Ok(batch) => out.push((Some(b), batch)),
                        Err(e) => {
                            result = Err(e);
                            break 'buckets;
                        }
                    }
                }
            }
        }
        self.tape.order = order;
        self.tape.starts = starts;
        result
    }
}

/// A key value's bucket value, as src/diff/bucket.rs `values` takes it from the Arrow array it
/// decodes to: its hash, or an integer's block of `range`.
#[inline(always)]
fn key_hash(kind: PgKind, v: &[u8], range: Option<crate::diff::KeyRange>) -> Result<u64, String> {
    use crate::diff::bucket_hash_value as hash;
    let block = |k: i64| range.map(|r| r.value(k));
    Ok(match kind {
        PgKind::Int2 => {
            let k = i16::from_be_bytes(be(v)?);
            block(k.into()).unwrap_or_else(|| hash(&k))
        }
        PgKind::Int4 => {
            let k = i32::from_be_bytes(be(v)?);
            block(k.into()).unwrap_or_else(|| hash(&k))
        }
        PgKind::Int8 => {
            let k = i64::from_be_bytes(be(v)?);
            block(k).unwrap_or_else(|| hash(&k))
        }
        PgKind::Oid => {
            let k = i64::from(u32::from_be_bytes(be(v)?));
            block(k).unwrap_or_else(|| hash(&k))
        }
        PgKind::Text => hash(utf8(v)?),
        PgKind::Bpchar => hash(utf8(v)?.trim_end_matches(' ')),
        _ => 0,
    })
}

fn be<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", v.len()))
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("invalid UTF-8: {e}"))
}

/// PostgreSQL's day count (from 2000-01-01) as Arrow's (from 1970-01-01); `infinity` and
/// `-infinity` become the column's extreme values (src/temporal.rs).
fn date(days: i32) -> Result<i32, String> {
    use crate::temporal::{DATE_INFINITY, DATE_NEG_INFINITY};
    match days {
        i32::MAX => Ok(DATE_INFINITY),
        i32::MIN => Ok(DATE_NEG_INFINITY),
        _ => days
            .checked_add(PG_EPOCH_DAYS)
            .filter(|d| *d != DATE_INFINITY && *d != DATE_NEG_INFINITY)
            .ok_or_else(|| "date out of range".to_string()),
    }
}

/// PostgreSQL's microseconds (from 2000-01-01) as Arrow's (from 1970-01-01), ±infinity kept.
fn timestamp(us: i64) -> Result<i64, String> {
    use crate::temporal::{TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY};
    match us {
        i64::MAX => Ok(TIMESTAMP_INFINITY),
        i64::MIN => Ok(TIMESTAMP_NEG_INFINITY),
        _ => us
            .checked_add(PG_EPOCH_MICROS)
            .filter(|t| *t != TIMESTAMP_INFINITY)
            .ok_or_else(|| {
                "timestamp beyond year 294000, past what recon holds; cast it to text in a `query`"
                    .to_string()
            }),
    }
}

/// A `uuid` as its canonical text (lower-case hex, hyphens at 8, 12, 16 and 20 digits).
fn uuid(v: &[u8]) -> Result<[u8; 36], String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b: [u8; 16] = be(v)?;
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at] = HEX[(x >> 4) as usize];
        text[at + 1] = HEX[(x & 15) as usize];
        at += 2;
    }
    Ok(text)
}

/// A binary `numeric` as (mantissa, scale): digits are base 10000, `weight` is the power of the
/// first digit, `dscale` the number of decimal digits after the point. The mantissa is 256 bits
/// wide (76 digits); the batch narrows it to 128 bits when every value fits 38 digits.
pub fn numeric(v: &[u8]) -> Result<(i256, u32), String> {
    if let Some((n, scale)) = numeric_short(v) {
        return Ok((i256::from_i128(n), scale));
    }
    if let Some((n, scale)) = numeric_128(v)? {
        return Ok((i256::from_i128(n), scale));
    }
    let ndigits = u16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]) as i32;
    let negative = u16::from_be_bytes([v[4], v[5]]) == 0x4000;
    let dscale = u16::from_be_bytes([v[6], v[7]]) as i32;
    let exp = 4 * (weight - ndigits as i32 + 1) + dscale;
    let overflow = || {
        "numeric value has more than 76 digits, more than recon keeps exactly; cast it to text or float8 in a `query`"
            .to_string()
    };
    let ten = i256::from_i128(10);
    let mut n = i256::ZERO;
    for i in 0..ndigits {
        let d = u16::from_be_bytes([v[8 + 2 * i], v[9 + 2 * i]]) as i128;
        n = n
            .checked_mul(i256::from_i128(10_000))
            .and_then(|n| n.checked_add(i256::from_i128(d)))
            .ok_or_else(overflow)?;
    }
    let n = if exp >= 0 {
        ten.checked_pow(exp as u32)
            .and_then(|f| n.checked_mul(f))
            .ok_or_else(overflow)?
    } else {
        match ten.checked_pow((-exp) as u32) {
            Some(f) => n.wrapping_div(f),
            None => i256::ZERO,
        }
    };
    let n = if negative { n.wrapping_neg() } else { n };
    Ok((n, dscale as u32))
}

/// The common binary `numeric`, decoded inline where a column's values are (a call returning
/// [`numeric_128`]'s `Result` cost ~4 ns a value): finite, up to 4 base-10000 digits (16
/// decimal ones, 64-bit arithmetic, no division but by a constant) and a small exponent, as
/// (mantissa, scale); `None`: [`numeric_128`] decides, and says what is wrong.
#[inline(always)]
fn numeric_short(v: &[u8]) -> Option<(i128, u32)> {
    let head: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let ndigits = u16::from_be_bytes([head[0], head[1]]) as usize;
    let weight = i16::from_be_bytes([head[2], head[3]]) as i32;
    let sign = u16::from_be_bytes([head[4], head[5]]);
    let dscale = u16::from_be_bytes([head[6], head[7]]) as i32;
    let exp = 4 * (weight - ndigits as i32 + 1) + dscale;
    if ndigits > 4 || (sign != 0 && sign != 0x4000) || !(-3..=3).contains(&exp) {
        return None;
    }
    let digits = v.get(8..8 + 2 * ndigits)?;
    let mut n: u64 = 0;
    for d in digits.chunks_exact(2) {
        n = n * 10_000 + u16::from_be_bytes([d[0], d[1]]) as u64;
    }
    let n = match exp {
        -3 => n / 1000,
        -2 => n / 100,
        -1 => n / 10,
        0 => n,
        1 => n * 10,
        2 => n * 100,
        _ => n * 1000,
    } as i128;
    Some((if sign == 0x4000 { -n } else { n }, dscale as u32))
}

/// A binary `numeric` checked, and as a 128-bit (mantissa, scale) when it fits without 256-bit
/// arithmetic (up to 9 base-10000 digits and a small exponent); `None`: see [`numeric`].
#[inline]
fn numeric_128(v: &[u8]) -> Result<Option<(i128, u32)>, String> {
    if v.len() < 8 {
        return Err("truncated numeric".into());
    }
    let ndigits = u16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]) as i32;
    let sign = u16::from_be_bytes([v[4], v[5]]);
    let dscale = u16::from_be_bytes([v[6], v[7]]) as i32;
    if sign == 0xC000 || sign == 0xD000 || sign == 0xF000 {
        return Err(
            "numeric NaN or infinity cannot be compared exactly; filter or cast it in a `query`"
                .into(),
        );
    }
    if v.len() < 8 + ndigits * 2 {
        return Err("truncated numeric".into());
    }
    // n × 10000^(weight - ndigits + 1) × 10^dscale is the mantissa.
    let exp = 4 * (weight - ndigits as i32 + 1) + dscale;
    let negative = sign == 0x4000;
    // Up to 9 base-10000 digits and a small exponent fit 128 bits: no 256-bit arithmetic.
    if ndigits <= 9 && (-38..=38).contains(&exp) {
        let mut n: i128 = 0;
        for i in 0..ndigits {
            n = n * 10_000 + u16::from_be_bytes([v[8 + 2 * i], v[9 + 2 * i]]) as i128;
        }
        let scaled = if exp >= 0 {
            n.checked_mul(POW10[exp as usize])
        } else {
            Some(n / POW10[(-exp) as usize])
        };
        if let Some(n) = scaled {
            return Ok(Some((if negative { -n } else { n }, dscale as u32)));
        }
    }
    Ok(None)
}

/// 10^0 … 10^38.
const POW10: [i128; 39] = {
    let mut p = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(ndigits: &[u16], weight: i16, neg: bool, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((ndigits.len() as u16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend((if neg { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend(dscale.to_be_bytes());
        for d in ndigits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn short_numerics_decode_as_the_128_bit_arithmetic_does() {
        // The mantissa by i128 arithmetic, as the 9-digit path computes it.
        let reference = |digits: &[u16], weight: i16, neg: bool, dscale: u16| {
            let n = digits.iter().fold(0i128, |n, d| n * 10_000 + *d as i128);
            let exp = 4 * (weight as i32 - digits.len() as i32 + 1) + dscale as i32;
            let n = match exp >= 0 {
                true => n * 10i128.pow(exp as u32),
                false => n / 10i128.pow((-exp) as u32),
            };
            (if neg { -n } else { n }, dscale as u32)
        };
        let values: [u16; 4] = [0, 1, 1234, 9999];
        let mut checked = 0;
        for ndigits in 0..=5usize {
            for pick in 0..values.len() {
                let digits: Vec<u16> = (0..ndigits).map(|i| values[(pick + i) % 4]).collect();
                for weight in -3..=6i16 {
                    for dscale in 0..=12u16 {
                        for neg in [false, true] {
                            let v = encode(&digits, weight, neg, dscale);
                            if let Some(short) = numeric_short(&v) {
                                assert_eq!(short, reference(&digits, weight, neg, dscale), "{v:?}");
                                checked += 1;
                            }
                            // Whatever path it takes, the value is the same.
                            let wide = numeric_128(&v).unwrap();
                            if let Some(wide) = wide {
                                assert_eq!(wide, reference(&digits, weight, neg, dscale));
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 500, "the short path took {checked} values");
        // The largest: 16 nines times 1000 is past i64, not past the mantissa.
        let v = encode(&[9999, 9999, 9999, 9999], 3, true, 3);
        assert_eq!(numeric_short(&v), Some((-9_999_999_999_999_999_000, 3)));
        // Five digits, NaN, infinity, a truncated value: not the short path's.
        assert_eq!(numeric_short(&encode(&[1, 2, 3, 4, 5], 4, false, 0)), None);
        let mut nan = encode(&[], 0, false, 0);
        nan[4] = 0xC0;
        assert_eq!(numeric_short(&nan), None);
        assert!(numeric_128(&nan).is_err());
        let mut inf = encode(&[], 0, false, 0);
        inf[4] = 0xD0;
        assert_eq!(numeric_short(&inf), None);
        let v = encode(&[12, 34], 1, false, 0);
        assert_eq!(numeric_short(&v[..v.len() - 1]), None);
        assert!(numeric_128(&v[..v.len() - 1]).is_err());
    }

    #[test]
    fn numeric_keeps_digits_and_scale() {
        // 12.50: digits [12, 5000], weight 0, dscale 2
        let n = |m: i128, s: u32| (i256::from_i128(m), s);
        assert_eq!(
            numeric(&encode(&[12, 5000], 0, false, 2)).unwrap(),
            n(1250, 2)
        );
        // -0.0001: digits [1], weight -1, dscale 4
        assert_eq!(numeric(&encode(&[1], -1, true, 4)).unwrap(), n(-1, 4));
        // 20000: digits [2], weight 1, dscale 0
        assert_eq!(numeric(&encode(&[2], 1, false, 0)).unwrap(), n(20000, 0));
        // 0 with scale 3
        assert_eq!(numeric(&encode(&[], 0, false, 3)).unwrap(), n(0, 3));
        // 12345.6, -7.000 and 16 nines: the 64-bit path, dividing or multiplying by 10^1..10^3.
        assert_eq!(
            numeric(&encode(&[1, 2345, 6000], 1, false, 1)).unwrap(),
            n(123456, 1)
        );
        assert_eq!(numeric(&encode(&[7], 0, true, 3)).unwrap(), n(-7000, 3));
        assert_eq!(
            numeric(&encode(&[9999, 9999, 9999, 9999], 3, false, 0)).unwrap(),
            n(9_999_999_999_999_999, 0)
        );
        assert_eq!(
            numeric(&encode(&[9999, 9999, 9999, 9999], 0, false, 15)).unwrap(),
            n(9_999_999_999_999_999_000, 15)
        );
        // 1234567890123456789012345678.1234567890 (38 digits; base-10000 groups reach 40)
        let v = encode(
            &[1234, 5678, 9012, 3456, 7890, 1234, 5678, 1234, 5678, 9000],
            6,
            false,
            10,
        );
        assert_eq!(
            numeric(&v).unwrap().0,
            i256::from_string("12345678901234567890123456781234567890").unwrap()
        );
    }

    /// A COPY stream of (int8, text, numeric) rows decodes the same whether it arrives whole,
    /// a byte at a time, or in chunks that end inside fields.
    #[test]
    fn chunks_may_end_anywhere() {
        let mut stream = SIGNATURE.to_vec();
        stream.extend([0u8; 8]);
        let rows: [(i64, Option<&str>, Vec<u8>); 3] = [
            (1, Some("a"), encode(&[12, 5000], 0, false, 2)),
            (-2, None, encode(&[1], -1, true, 4)),
            (3, Some("été"), encode(&[2], 1, false, 0)),
        ];
        for (k, text, num) in &rows {
            stream.extend(3i16.to_be_bytes());
            stream.extend(8i32.to_be_bytes());
            stream.extend(k.to_be_bytes());
            match text {
                Some(t) => {
                    stream.extend((t.len() as i32).to_be_bytes());
                    stream.extend(t.as_bytes());
                }
                None => stream.extend((-1i32).to_be_bytes()),
            }
            stream.extend((num.len() as i32).to_be_bytes());
            stream.extend(num);
        }
        stream.extend((-1i16).to_be_bytes());
        let decode_in = |size: usize| {
            let kinds = vec![PgKind::Int8, PgKind::Text, PgKind::Numeric];
            let names = ["k", "t", "n"].map(String::from).to_vec();
            let mut decoder = Decoder::new(names, kinds);
            for chunk in stream.chunks(size) {
                assert!(decoder.push(chunk).unwrap().is_empty());
            }
            let mut last = decoder.finish().unwrap();
            assert_eq!(last.len(), 1);
            last.remove(0).1
        };
        let whole = decode_in(stream.len());
        assert_eq!(whole.num_rows(), 3);
        assert_eq!(
            crate::diff::json_value(whole.column(2), 1),
            serde_json::json!("-0.0001")
        );
        assert_eq!(
            crate::diff::json_value(whole.column(1), 2),
            serde_json::json!("été")
        );
        for size in [1, 2, 3, 5, 7, 13] {
            assert_eq!(decode_in(size), whole, "chunks of {size}");
        }
        // Rows dealt to buckets as they are decoded, by the integer key (its hash, or its block
        // of a key range) or by the text (NULL included): each batch's rows are in the bucket
        // src/diff/bucket.rs puts its key in, and every row is dealt once, whatever the chunks.
        let range = Some(crate::diff::KeyRange::covering(-2, 1));
        let cases = [
            (0, 2, None),
            (0, 3, None),
            (1, 3, None),
            (1, 32, None),
            (0, 32, range),
            (0, 3, range),
        ];
        for (key, buckets, range) in cases {
            for size in [1, 7, stream.len()] {
                let kinds = vec![PgKind::Int8, PgKind::Text, PgKind::Numeric];
                let names = ["k", "t", "n"].map(String::from).to_vec();
                let mut decoder = Decoder::new(names, kinds);
                assert!(decoder.deal_by(key, buckets, 1, range));
                let mut dealt = Vec::new();
                for chunk in stream.chunks(size) {
                    dealt.extend(decoder.push(chunk).unwrap());
                }
                dealt.extend(decoder.finish().unwrap());
                let mut keys = Vec::new();
                for (bucket, batch) in dealt {
                    let mut hashes = vec![0; batch.num_rows()];
                    let column = [batch.column(key).clone()];
                    crate::diff::bucket_values(&column, range, &mut hashes).unwrap();
                    for (row, h) in hashes.iter().enumerate() {
                        assert_eq!(bucket, Some((*h % buckets as u64) as usize));
                        keys.push(crate::diff::json_value(batch.column(0), row));
                    }
                }
                keys.sort_by_key(|k| k.as_i64());
                assert_eq!(
                    keys,
                    [-2, 1, 3].map(|k| serde_json::json!(k)),
                    "{key} {size}"
                );
            }
        }
        let mut decoder = Decoder::new(vec!["n".into()], vec![PgKind::Numeric]);
        assert!(
            !decoder.deal_by(0, 32, 1, None),
            "a numeric key is dealt after decoding"
        );
        let mut decoder = Decoder::new(vec!["t".into()], vec![PgKind::Text]);
        assert!(
            !decoder.deal_by(0, 32, 1, range),
            "a text key is not dealt by a key range"
        );
        // A stream that stops before its trailer is an error, not a short snapshot.
        let kinds = vec![PgKind::Int8, PgKind::Text, PgKind::Numeric];
        let mut cut = Decoder::new(["k", "t", "n"].map(String::from).to_vec(), kinds);
        cut.push(&stream[..stream.len() - 5]).unwrap();
        assert!(cut.finish().is_err());
    }

    #[test]
    fn a_first_batch_gathers_its_rows_and_later_rows_come_in_batches() {
        let n = 2 * BATCH_ROWS + 100;
        let mut stream = SIGNATURE.to_vec();
        stream.extend([0u8; 8]);
        for k in 0..n as i64 {
            stream.extend(1i16.to_be_bytes());
            stream.extend(8i32.to_be_bytes());
            stream.extend(k.to_be_bytes());
        }
        stream.extend((-1i16).to_be_bytes());
        // The sizes of the batches decoded (in chunks of 1,000 bytes), and their keys in order.
        let decode = |first: Option<usize>, deal: bool| {
            let mut decoder = Decoder::new(vec!["k".into()], vec![PgKind::Int8]);
            if deal {
                assert!(decoder.deal_by(0, 2, BATCH_ROWS, None));
            }
            if let Some(rows) = first {
                decoder.first_batch(rows);
            }
            let mut batches = Vec::new();
            for chunk in stream.chunks(1000) {
                batches.extend(decoder.push(chunk).unwrap());
            }
            batches.extend(decoder.finish().unwrap());
            // (The last batch may be empty: the stager takes it only for the columns.)
            let sizes: Vec<usize> = batches
                .iter()
                .map(|(_, b)| b.num_rows())
                .filter(|n| *n > 0)
                .collect();
            let mut keys = Vec::new();
            for (_, batch) in &batches {
                for row in 0..batch.num_rows() {
                    keys.push(
                        crate::diff::json_value(batch.column(0), row)
                            .as_i64()
                            .unwrap(),
                    );
                }
            }
            (sizes, keys)
        };
        let all: Vec<i64> = (0..n as i64).collect();
        let first = BATCH_ROWS + 500;
        assert_eq!(
            decode(Some(first), false),
            (vec![first, n - first], all.clone())
        );
        assert_eq!(decode(Some(n), false).0, vec![n]);
        assert_eq!(decode(Some(n + 1), false).0, vec![n]);
        let usual = vec![BATCH_ROWS, BATCH_ROWS, 100];
        assert_eq!(decode(None, false), (usual.clone(), all));
        assert_eq!(
            decode(Some(BATCH_ROWS / 2), false).0,
            usual,
            "fewer than a batch: ignored"
        );
        let (sizes, _) = decode(Some(n), true);
        assert!(
            sizes.len() > 2,
            "rows dealt to buckets stay dealt: {sizes:?}"
        );
    }

    #[test]
    fn uuid_is_canonical_text() {
        let bytes: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            &uuid(&bytes).unwrap(),
            b"00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }

    /// A stream of `n` tuples of every kind the decoder reads, NULLs among them, and each
    /// tuple's place in it (the header is before the first).
    fn every_kind(
        n: usize,
    ) -> (
        Vec<PgKind>,
        Vec<String>,
        Vec<u8>,
        Vec<std::ops::Range<usize>>,
    ) {
        let kinds = vec![
            PgKind::Int8,
            PgKind::Text,
            PgKind::Bpchar,
            PgKind::Numeric,
            PgKind::Uuid,
            PgKind::Bool,
            PgKind::Float8,
            PgKind::TimestampTz,
            PgKind::Date,
            PgKind::Jsonb,
            PgKind::Int2,
            PgKind::Bytea,
        ];
        let names = (0..kinds.len()).map(|i| format!("c{i}")).collect();
        let mut stream = SIGNATURE.to_vec();
        stream.extend([0u8; 8]);
        let mut tuples = Vec::new();
        let field = |stream: &mut Vec<u8>, v: Option<&[u8]>| match v {
            Some(v) => {
                stream.extend((v.len() as i32).to_be_bytes());
                stream.extend(v);
            }
            None => stream.extend((-1i32).to_be_bytes()),
        };
        for k in 0..n as i64 {
            let start = stream.len();
            let null = |every: i64| k % every == 3;
            stream.extend((kinds.len() as i16).to_be_bytes());
            field(&mut stream, Some(&k.to_be_bytes()));
            let text = format!("näme-{k}");
            field(&mut stream, (!null(7)).then_some(text.as_bytes()));
            field(
                &mut stream,
                (!null(5)).then_some(format!("c{k}   ").as_bytes()),
            );
            let num = encode(&[(k % 10_000) as u16, 25], 0, k % 2 == 1, 2);
            field(&mut stream, (!null(11)).then_some(&num));
            let uuid: Vec<u8> = (0..16).map(|i| (k as u8).wrapping_mul(i)).collect();
            field(&mut stream, (!null(13)).then_some(&uuid));
            field(&mut stream, (!null(4)).then_some(&[(k % 2) as u8]));
            field(
                &mut stream,
                (!null(9)).then_some(&(k as f64 / 7.0).to_be_bytes()),
            );
            field(&mut stream, Some(&(k * 1_000_000).to_be_bytes()));
            field(&mut stream, (!null(6)).then_some(&(k as i32).to_be_bytes()));
            field(&mut stream, (!null(8)).then_some(b"\x01{\"a\": 1}"));
            field(&mut stream, Some(&(k as i16).to_be_bytes()));
            field(&mut stream, (!null(10)).then_some(&[0xff, k as u8]));
            tuples.push(start..stream.len());
        }
        stream.extend((-1i16).to_be_bytes());
        let last = tuples.len() - 1;
        tuples[last].end = stream.len();
        (kinds, names, stream, tuples)
    }

    /// Each row of the batches as JSON values, in key order.
    fn rows_of(batches: &[Decoded]) -> Vec<Vec<serde_json::Value>> {
        let mut rows = Vec::new();
        for (_, batch) in batches {
            for row in 0..batch.num_rows() {
                let values = batch.columns().iter();
                rows.push(values.map(|c| crate::diff::json_value(c, row)).collect());
            }
        }
        rows.sort_by_key(|r: &Vec<serde_json::Value>| r[0].as_i64());
        rows
    }

    /// The COPY's messages as the connection reads them — several in one buffer, each a tuple
    /// between other bytes (the messages' headers), handed over a read at a time — decode as the
    /// stream pushed whole does: with more tuples in a read than the tape holds, with a read
    /// ending inside a tuple, and dealt to buckets.
    #[test]
    fn a_read_of_many_messages_decodes_as_the_stream_does() {
        let n = 3 * TAPE_ROWS + 77;
        let (kinds, names, stream, tuples) = every_kind(n);
        let mut whole = Decoder::new(names.clone(), kinds.clone());
        let mut expected = whole.push(&stream).unwrap();
        expected.extend(whole.finish().unwrap());
        let expected = rows_of(&expected);
        assert_eq!(expected.len(), n);
        assert_eq!(expected[3][1], serde_json::Value::Null);
        assert_eq!(expected[4][1], serde_json::json!("näme-4"));
        assert_eq!(expected[4][2], serde_json::json!("c4"));
        assert_eq!(expected[2][9], serde_json::json!("{\"a\": 1}"));
        // The messages in a buffer: each tuple (the first with the header) behind 5 bytes.
        let mut buffer = Vec::new();
        let mut frames = Vec::new();
        for (i, t) in tuples.iter().enumerate() {
            buffer.extend(b"d\0\0\0\0");
            let from = if i == 0 { 0 } else { t.start };
            frames.push(buffer.len()..buffer.len() + t.end - from);
            buffer.extend(&stream[from..t.end]);
        }
        // Reads of `size` messages; `cut`: each read's last message split in two.
        for (size, cut, deal) in [
            (1, false, false),
            (3, true, false),
            (TAPE_ROWS + 1, false, false),
            (n, false, false),
            (500, true, false),
            (1, false, true),
            (TAPE_ROWS - 1, true, true),
            (n, false, true),
        ] {
            let mut decoder = Decoder::new(names.clone(), kinds.clone());
            if deal {
                assert!(decoder.deal_by(0, 32, 100, None));
            }
            let mut batches = Vec::new();
            for read in frames.chunks(size) {
                let mut read = read.to_vec();
                let last = read.len() - 1;
                let tail = read[last].clone();
                if cut && tail.len() > 10 {
                    read[last].end = tail.start + 10;
                    read.push(tail.start + 10..tail.end);
                }
                batches.extend(decoder.push_frames(&buffer, &read).unwrap());
            }
            batches.extend(decoder.finish().unwrap());
            if deal {
                assert!(batches.iter().all(|(b, _)| b.is_some()));
                assert!(batches.iter().all(|(_, batch)| batch.num_rows() <= 100));
            }
            assert_eq!(
                rows_of(&batches),
                expected,
                "reads of {size}, cut {cut}, deal {deal}"
            );
        }
    }

    /// Text that is not UTF-8 is an error naming its column, though it is checked a batch at a
    /// time; so is a value cut across a character.
    #[test]
    fn text_that_is_not_utf8_names_its_column() {
        for bad in [&b"\xff"[..], b"\xc3"] {
            let mut stream = SIGNATURE.to_vec();
            stream.extend([0u8; 8]);
            for v in [&b"ok"[..], bad, b"\xa9"] {
                stream.extend(2i16.to_be_bytes());
                stream.extend(8i32.to_be_bytes());
                stream.extend(1i64.to_be_bytes());
                stream.extend((v.len() as i32).to_be_bytes());
                stream.extend(v);
            }
            stream.extend((-1i16).to_be_bytes());
            let mut decoder = Decoder::new(
                vec!["k".into(), "label".into()],
                vec![PgKind::Int8, PgKind::Text],
            );
            let result = decoder.push(&stream).and_then(|_| decoder.finish());
            let err = result.unwrap_err();
            assert_eq!(err.column, "label");
            assert!(err.message.contains("not UTF-8"), "{}", err.message);
        }
    }

    /// A fixed-width value of another length is an error naming its column; a NULL there is a
    /// NULL.
    #[test]
    fn a_value_of_another_width_is_an_error() {
        let tuple = |k: &[u8], n: Option<i32>| {
            let mut t = 2i16.to_be_bytes().to_vec();
            t.extend((k.len() as i32).to_be_bytes());
            t.extend(k);
            match n {
                Some(n) => {
                    t.extend(4i32.to_be_bytes());
                    t.extend(n.to_be_bytes());
                }
                None => t.extend((-1i32).to_be_bytes()),
            }
            t
        };
        let decode = |tuples: &[Vec<u8>]| {
            let mut stream = SIGNATURE.to_vec();
            stream.extend([0u8; 8]);
            tuples.iter().for_each(|t| stream.extend(t));
            stream.extend((-1i16).to_be_bytes());
            let names = vec!["k".into(), "n".into()];
            let mut decoder = Decoder::new(names, vec![PgKind::Int8, PgKind::Int4]);
            let mut batches = decoder.push(&stream)?;
            batches.extend(decoder.finish()?);
            Ok::<_, DecodeError>(rows_of(&batches))
        };
        let rows = decode(&[
            tuple(&7i64.to_be_bytes(), None),
            tuple(&8i64.to_be_bytes(), Some(5)),
        ]);
        assert_eq!(
            rows.unwrap(),
            vec![
                vec![serde_json::json!(7), serde_json::Value::Null],
                vec![serde_json::json!(8), serde_json::json!(5)]
            ]
        );
        let err = decode(&[tuple(&7i32.to_be_bytes(), Some(5))]).unwrap_err();
        assert_eq!(err.column, "k");
        assert!(
            err.message.contains("expected 8 bytes, got 4"),
            "{}",
            err.message
        );
    }
}
