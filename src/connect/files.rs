//! File endpoints: CSV, Parquet, JSON (an array of objects) and JSON Lines, registered with
//! DataFusion's readers and scanned in place.
//!
//! DataFusion infers CSV and JSON numbers as `Float64` (and big integers as `Int64`, which then
//! fail to parse), so `1234567890123456789012345678.1234567890` would arrive rounded. recon keeps
//! file numbers exact: after inference, the text of every numeric column is read once more and
//! each column gets the narrowest exact type — `Int64` when every value is a whole number that
//! fits, else a decimal at the largest scale found (`Decimal128(38, s)`, or `Decimal256(76, s)`
//! past 38 digits). A column written in exponent notation (`1.5e3`) or holding `NaN`/`inf` stays
//! a float, as written. Numbers of more than 76 digits are refused, naming the file and column.

use std::collections::HashMap;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::options::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::config::FileFormat;
use crate::error::{Error, Result, Side, read_error};

/// Rows used to infer a CSV/JSON file's column types (the whole file, up to this many rows).
const INFER_ROWS: usize = 1_000_000;

/// Register `path` as the side's table, with exact number types for CSV and JSON.
pub async fn register(
    ctx: &SessionContext,
    side: Side,
    path: &Path,
    format: FileFormat,
) -> Result<()> {
    if !path.is_file() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the {side} file does not exist"),
            ),
        });
    }
    let file = File {
        ctx,
        side,
        path,
        format,
    };
    if format == FileFormat::Csv {
        file.check_header()?;
    }
    file.register(None).await?;
    if format == FileFormat::Parquet {
        return Ok(());
    }
    let inferred = ctx.table(side.name()).await?.schema().as_arrow().clone();
    // Numbers, and (CSV) text columns, which may be integers too big for 64 bits.
    let numeric: Vec<String> = inferred
        .fields()
        .iter()
        .filter(|f| {
            f.data_type().is_numeric()
                || (format == FileFormat::Csv && f.data_type() == &DataType::Utf8)
        })
        .map(|f| f.name().clone())
        .collect();
    if numeric.is_empty() {
        return Ok(());
    }
    let stats = match format {
        FileFormat::Csv => file.csv_stats(&inferred, &numeric).await?,
        _ => json_stats(path, format == FileFormat::JsonLines, &numeric).map_err(|e| {
            read_error(
                side,
                format!("reading the numbers of `{}`", path.display()),
                e,
            )
        })?,
    };
    let mut fields = Vec::with_capacity(inferred.fields().len());
    for field in inferred.fields() {
        let data_type = match stats.get(field.name()) {
            Some(s) if field.data_type() == &DataType::Utf8 && !s.big_integers() => DataType::Utf8,
            Some(s) => s.data_type().map_err(|message| {
                read_error(
                    side,
                    format!("reading `{}`", path.display()),
                    format!("column `{}`: {message}", field.name()),
                )
            })?,
            None => field.data_type().clone(),
        };
        fields.push(Field::new(field.name(), data_type, true));
    }
    file.register(Some(&Schema::new(fields))).await
}

/// One file being registered.
struct File<'a> {
    ctx: &'a SessionContext,
    side: Side,
    path: &'a Path,
    format: FileFormat,
}

impl File<'_> {
    /// Register (again) under the side's name, inferring types or with `schema`.
    async fn register(&self, schema: Option<&Schema>) -> Result<()> {
        let name = self.side.name();
        let _ = self.ctx.deregister_table(name);
        let location = self.path.to_string_lossy();
        let extension = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let read = |e| read_error(self.side, format!("opening `{location}`"), e);
        match self.format {
            FileFormat::Csv => {
                let mut options = CsvReadOptions::new()
                    .has_header(true)
                    .file_extension(&extension)
                    .schema_infer_max_records(INFER_ROWS);
                if let Some(schema) = schema {
                    options = options.schema(schema);
                }
                self.ctx
                    .register_csv(name, location.as_ref(), options)
                    .await
                    .map_err(read)
            }
            FileFormat::Parquet => {
                let options = ParquetReadOptions::default().file_extension(&extension);
                self.ctx
                    .register_parquet(name, location.as_ref(), options)
                    .await
                    .map_err(read)
            }
            FileFormat::Json | FileFormat::JsonLines => {
                let mut options = JsonReadOptions::default()
                    .file_extension(&extension)
                    .schema_infer_max_records(INFER_ROWS);
                options.newline_delimited = self.format == FileFormat::JsonLines;
                if let Some(schema) = schema {
                    options = options.schema(schema);
                }
                self.ctx
                    .register_json(name, location.as_ref(), options)
                    .await
                    .map_err(read)
            }
        }
    }

    /// A header that names a column twice cannot be read (DataFusion's own message names neither
    /// the file nor the column): say which, and where.
    fn check_header(&self) -> Result<()> {
        use std::io::BufRead;
        let problem = |message: String| {
            read_error(
                self.side,
                format!("reading the header of `{}`", self.path.display()),
                message,
            )
        };
        let file = std::fs::File::open(self.path).map_err(|source| Error::Io {
            path: self.path.to_path_buf(),
            source,
        })?;
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(std::io::Read::take(file, 1 << 20));
        if reader.read_line(&mut line).is_err() {
            return Ok(());
        }
        let names = header_names(
            line.trim_start_matches('\u{feff}')
                .trim_end_matches(['\r', '\n']),
        );
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(first) = seen.insert(name, i + 1) {
                return Err(problem(format!(
                    "column `{name}` appears twice in the header (fields {first} and {}); rename one so every column has its own name",
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// The text of each numeric column, read once with those columns typed as text.
    async fn csv_stats(
        &self,
        inferred: &Schema,
        numeric: &[String],
    ) -> Result<HashMap<String, NumberStats>> {
        let fields: Vec<Field> = inferred
            .fields()
            .iter()
            .map(|f| match numeric.contains(f.name()) {
                true => Field::new(f.name(), DataType::Utf8, true),
                false => f.as_ref().clone(),
            })
            .collect();
        self.register(Some(&Schema::new(fields))).await?;
        let columns: Vec<String> = numeric.iter().map(|n| crate::sql::quote(n)).collect();
        let query = format!("SELECT {} FROM {}", columns.join(", "), self.side.name());
        let mut stream = crate::diff::sql(self.ctx, &query)
            .await?
            .execute_stream()
            .await?;
        let mut stats: Vec<NumberStats> = vec![NumberStats::default(); numeric.len()];
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            for (column, s) in batch.columns().iter().zip(stats.iter_mut()) {
                let text = column.as_string::<i32>();
                (0..text.len())
                    .filter(|i| text.is_valid(*i))
                    .for_each(|i| s.observe(text.value(i)));
            }
        }
        Ok(numeric.iter().cloned().zip(stats).collect())
    }
}

/// Split a CSV header line into names (quotes and doubled quotes understood).
fn header_names(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut name = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                name.push('"');
            }
            (_, '"') => quoted = !quoted,
            (false, ',') => names.push(std::mem::take(&mut name)),
            (_, c) => name.push(c),
        }
    }
    names.push(name);
    names
}

/// What the numbers of one column need to be held exactly.
#[derive(Debug, Clone, Default)]
pub struct NumberStats {
    /// Exponent notation, NaN or infinity: the column is a float column, as written.
    float: bool,
    /// A value that is no plain number at all (a text column).
    text: bool,
    /// A value with a decimal point.
    point: bool,
    /// Most digits after the point.
    scale: u32,
    /// Most significant digits before the point.
    whole: u32,
    /// A whole number outside the 64-bit range.
    beyond_i64: bool,
}

impl NumberStats {
    pub fn observe(&mut self, text: &str) {
        let t = text.trim();
        let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
        let plain = !unsigned.is_empty()
            && unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && unsigned.matches('.').count() <= 1
            && unsigned != ".";
        if !plain {
            match t.parse::<f64>() {
                Ok(_) => self.float = true,
                Err(_) => self.text = true,
            }
            return;
        }
        let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        self.point |= unsigned.contains('.');
        self.scale = self.scale.max(fraction.len() as u32);
        self.whole = self.whole.max(whole.trim_start_matches('0').len() as u32);
        if !unsigned.contains('.') && t.parse::<i64>().is_err() {
            self.beyond_i64 = true;
        }
    }

    /// A text column that holds only plain numbers, some of them integers past 64 bits (CSV
    /// inference leaves those as text): read as decimals.
    pub fn big_integers(&self) -> bool {
        !self.text && !self.float && self.beyond_i64
    }

    /// The exact type for the column, or why there is none.
    pub fn data_type(&self) -> std::result::Result<DataType, String> {
        if self.float {
            return Ok(DataType::Float64);
        }
        if !self.point && !self.beyond_i64 {
            return Ok(DataType::Int64);
        }
        match self.whole + self.scale {
            0..=38 => Ok(DataType::Decimal128(38, self.scale as i8)),
            39..=76 => Ok(DataType::Decimal256(76, self.scale as i8)),
            digits => Err(format!(
                "a number has {digits} digits; recon keeps numbers exact up to 76 digits (quote the values to read them as text)"
            )),
        }
    }
}

/// Number statistics of `columns` in a JSON file, from each number's own text (serde_json's
/// `RawValue`), one record at a time.
fn json_stats(
    path: &Path,
    lines: bool,
    columns: &[String],
) -> std::result::Result<HashMap<String, NumberStats>, Box<dyn std::error::Error + Send + Sync>> {
    use serde::de::Deserializer as _;
    let mut stats: HashMap<String, NumberStats> = columns
        .iter()
        .map(|c| (c.clone(), NumberStats::default()))
        .collect();
    let reader = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut de = serde_json::Deserializer::from_reader(reader);
    if lines {
        for record in de.into_iter::<Record>() {
            observe(&mut stats, &record?);
        }
    } else {
        de.deserialize_seq(Records(&mut stats))?;
    }
    Ok(stats)
}

type Record = HashMap<String, Box<serde_json::value::RawValue>>;

fn observe(stats: &mut HashMap<String, NumberStats>, record: &Record) {
    for (name, s) in stats.iter_mut() {
        if let Some(raw) = record.get(name).map(|r| r.get())
            && raw != "null"
            && !raw.starts_with('"')
        {
            s.observe(raw);
        }
    }
}

/// Visits a JSON array of records without holding it.
struct Records<'a>(&'a mut HashMap<String, NumberStats>);

impl<'de> serde::de::Visitor<'de> for Records<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(record) = seq.next_element::<Record>()? {
            observe(self.0, &record);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(values: &[&str]) -> std::result::Result<DataType, String> {
        let mut s = NumberStats::default();
        values.iter().for_each(|v| s.observe(v));
        s.data_type()
    }

    #[test]
    fn file_numbers_get_exact_types() {
        assert_eq!(typed(&["1", "-20"]), Ok(DataType::Int64));
        assert_eq!(typed(&["1", "2.50"]), Ok(DataType::Decimal128(38, 2)));
        assert_eq!(
            typed(&["12345678901234567890"]),
            Ok(DataType::Decimal128(38, 0))
        );
        assert_eq!(
            typed(&["1234567890123456789012345678.1234567890"]),
            Ok(DataType::Decimal128(38, 10))
        );
        assert_eq!(
            typed(&["123456789012345678901234567890.1234567890"]),
            Ok(DataType::Decimal256(76, 10))
        );
        assert_eq!(typed(&["1.5e3", "2"]), Ok(DataType::Float64));
        assert!(typed(&[&"9".repeat(80)]).is_err());
        assert_eq!(header_names("a,\"b,c\",\"d\"\"e\""), ["a", "b,c", "d\"e"]);
    }
}
