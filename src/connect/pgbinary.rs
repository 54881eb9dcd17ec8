//! Decoder for PostgreSQL's binary `COPY ... TO STDOUT (FORMAT binary)` stream into Arrow
//! batches. It is fed chunks as they arrive (a chunk may end anywhere, even inside a field) and
//! yields a batch every [`BATCH_ROWS`] rows, or, dealing rows to buckets by a key's hash
//! ([`Decoder::deal_by`]), a bucket's rows whenever it has gathered enough. Values are decoded
//! exactly: `numeric` keeps its digits and scale, timestamps keep microseconds, `uuid` becomes
//! its canonical text.

use std::sync::Arc;

use datafusion::arrow::array::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
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
        let text = || StringBuilder::with_capacity(n, n * 16);
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

/// A column being decoded: its kind and its builder in one, so that each value is dispatched
/// once, not matched on its kind and then on its builder. With each field's length read once
/// ([`Decoder`]) and decimals kept as 128-bit mantissas ([`Decimals`]), 1M benchmark rows decode
/// in 60 ms on one core instead of 84.
enum Column {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Oid(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Numeric(Decimals),
    Text(StringBuilder),
    Bpchar(StringBuilder),
    Jsonb(StringBuilder),
    Uuid(StringBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    TimestampTz(TimestampMicrosecondBuilder),
    Time(Time64MicrosecondBuilder),
}

impl Column {
    fn push_null(&mut self) {
        match self {
            Column::Bool(b) => b.append_null(),
            Column::Int2(b) => b.append_null(),
            Column::Int4(b) => b.append_null(),
            Column::Int8(b) | Column::Oid(b) => b.append_null(),
            Column::Float4(b) => b.append_null(),
            Column::Float8(b) => b.append_null(),
            Column::Numeric(d) => d.push(None),
            Column::Text(b) | Column::Bpchar(b) | Column::Jsonb(b) | Column::Uuid(b) => {
                b.append_null()
            }
            Column::Bytea(b) => b.append_null(),
            Column::Date(b) => b.append_null(),
            Column::Timestamp(b) | Column::TimestampTz(b) => b.append_null(),
            Column::Time(b) => b.append_null(),
        }
    }

    /// Decode one value, `v` being its bytes.
    fn push(&mut self, v: &[u8]) -> Result<(), String> {
        match self {
            Column::Bool(b) => b.append_value(v.first() == Some(&1)),
            Column::Int2(b) => b.append_value(i16::from_be_bytes(be(v)?)),
            Column::Int4(b) => b.append_value(i32::from_be_bytes(be(v)?)),
            Column::Int8(b) => b.append_value(i64::from_be_bytes(be(v)?)),
            Column::Oid(b) => b.append_value(u32::from_be_bytes(be(v)?).into()),
            Column::Float4(b) => b.append_value(f32::from_be_bytes(be(v)?)),
            Column::Float8(b) => b.append_value(f64::from_be_bytes(be(v)?)),
            Column::Numeric(d) => match numeric_short(v) {
                Some((mantissa, scale)) => d.push_i128(mantissa, scale),
                None => match numeric_128(v)? {
                    Some((mantissa, scale)) => d.push_i128(mantissa, scale),
                    None => d.push(Some(numeric(v)?)),
                },
            },
            Column::Text(b) => b.append_value(utf8(v)?),
            Column::Bpchar(b) => b.append_value(utf8(v)?.trim_end_matches(' ')),
            Column::Jsonb(b) => b.append_value(utf8(v.get(1..).unwrap_or_default())?),
            Column::Uuid(b) => b.append_value(uuid(v)?),
            Column::Bytea(b) => b.append_value(v),
            Column::Date(b) => b.append_value(date(i32::from_be_bytes(be(v)?))?),
            Column::Timestamp(b) | Column::TimestampTz(b) => {
                b.append_value(timestamp(i64::from_be_bytes(be(v)?))?)
            }
            Column::Time(b) => b.append_value(i64::from_be_bytes(be(v)?)),
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
                ColumnBuilder::Text(b)
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

pub struct Decoder {
    names: Vec<String>,
    kinds: Vec<PgKind>,
    columns: Vec<Column>,
    /// Rows in `columns`.
    rows: usize,
    /// Rows `columns` gather before they are yielded as a batch (rows not dealt to buckets).
    batch_rows: usize,
    /// Where each value of the tuple being decoded starts, and its length (-1: NULL): one
    /// place a column.
    fields: Vec<(usize, i32)>,
    deal: Option<Deal>,
    /// Bytes of an incomplete tuple (or header) carried over to the next chunk.
    buf: Vec<u8>,
    header_done: bool,
    finished: bool,
}

impl Decoder {
    pub fn new(names: Vec<String>, kinds: Vec<PgKind>) -> Decoder {
        let columns = kinds.iter().map(|k| k.column()).collect();
        let fields = vec![(0, 0); kinds.len()];
        Decoder {
            names,
            kinds,
            columns,
            rows: 0,
            batch_rows: BATCH_ROWS,
            fields,
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

    /// Feed one chunk; returns the batches completed by it. Values are decoded from the chunk
    /// itself (PostgreSQL sends a message per row, so a chunk is usually whole tuples); only an
    /// incomplete tuple's bytes are kept until the next chunk completes it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
        let mut out = Vec::new();
        if self.buf.is_empty() {
            let used = self.consume(chunk, &mut out)?;
            self.buf.extend_from_slice(&chunk[used..]);
        } else {
            self.buf.extend_from_slice(chunk);
            let data = std::mem::take(&mut self.buf);
            let used = self.consume(&data, &mut out)?;
            self.buf = data;
            self.buf.drain(..used);
        }
        Ok(out)
    }

    /// Decode the header and every whole tuple at the start of `data`; returns the bytes used.
    fn consume(&mut self, data: &[u8], out: &mut Vec<Decoded>) -> Result<usize, DecodeError> {
        let mut pos = 0;
        if !self.header_done {
            match self.header_len(data)? {
                Some(n) => {
                    pos = n;
                    self.header_done = true;
                }
                None => return Ok(0),
            }
        }
        while !self.finished {
            let Some((n, bucket)) = self.read_tuple(&data[pos..])? else {
                break;
            };
            pos += n;
            match (bucket, self.deal.as_ref()) {
                (Some(b), Some(deal)) if deal.rows[b] >= deal.target => {
                    out.push((Some(b), self.take_bucket(b)?));
                }
                (None, _) if self.rows >= self.batch_rows => out.push((None, self.take_batch()?)),
                _ => {}
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

    /// Decode the tuple (or the trailer) at the start of `b`, once all of it is there; returns
    /// its length.
    fn read_tuple(&mut self, b: &[u8]) -> Result<Option<(usize, Option<usize>)>, DecodeError> {
        if b.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([b[0], b[1]]);
        if fields == -1 {
            self.finished = true;
            return Ok(Some((2, None)));
        }
        if fields as usize != self.kinds.len() {
            return Err(self.error(
                0,
                &format!("a row has {fields} fields, expected {}", self.kinds.len()),
            ));
        }
        // First make sure the whole tuple is here, so that a row is decoded all at once; the
        // values' places are kept, so that each length is read once.
        let mut end = 2;
        for field in self.fields.iter_mut() {
            let Some(header) = b.get(end..end + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            end += 4;
            *field = (end, len);
            end += len.max(0) as usize;
        }
        if b.len() < end {
            return Ok(None);
        }
        let (columns, bucket) = match self.deal.as_mut() {
            None => {
                self.rows += 1;
                (&mut self.columns, None)
            }
            Some(deal) => {
                let (at, len) = self.fields[deal.key];
                let hash = match len {
                    ..0 => 0,
                    _ => key_hash(self.kinds[deal.key], &b[at..at + len as usize], deal.range)
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
                } as usize;
                deal.rows[bucket] += 1;
                (&mut deal.buckets[bucket], Some(bucket))
            }
        };
        for (i, (column, &(at, len))) in columns.iter_mut().zip(&self.fields).enumerate() {
            if len < 0 {
                column.push_null();
            } else if let Err(message) = column.push(&b[at..at + len as usize]) {
                return Err(DecodeError {
                    column: self.names[i].clone(),
                    message,
                });
            }
        }
        Ok(Some((end, bucket)))
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

fn uuid(v: &[u8]) -> Result<String, String> {
    let b: [u8; 16] = be(v)?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
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
            uuid(&bytes).unwrap(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }
}
