//! Entry points for the fuzz targets (fuzz/, run with `bash fuzz/run.sh`) and for the test that
//! replays their seed corpus (tests/fuzz_corpus.rs): each takes arbitrary bytes and may return
//! an error, but must never panic or hang.

use std::path::Path;

use crate::config::{Field, FieldKind};
use crate::connect::pgbinary::{Decoder, PgKind};

/// The job-file parser, with every `${VAR}` set; whether the file is a valid job.
pub fn job_file(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| {
        crate::Job::parse(Path::new("/fuzz/job.toml"), text, &|_| Some("x".into())).is_ok()
    })
}

const KINDS: [PgKind; 17] = [
    PgKind::Bool,
    PgKind::Int2,
    PgKind::Int4,
    PgKind::Int8,
    PgKind::Oid,
    PgKind::Float4,
    PgKind::Float8,
    PgKind::Numeric,
    PgKind::Text,
    PgKind::Bpchar,
    PgKind::Jsonb,
    PgKind::Bytea,
    PgKind::Date,
    PgKind::Timestamp,
    PgKind::TimestampTz,
    PgKind::Time,
    PgKind::Uuid,
];

/// The binary COPY decoder. Input: a column count `n` (mod 8, plus 1), `n` bytes choosing each
/// column's kind, then the COPY stream, fed in chunks of 1–16 bytes (sized by the count byte).
/// Returns the rows decoded, or `None` when the stream is refused.
pub fn copy_decoder(data: &[u8]) -> Option<usize> {
    let (&count, rest) = data.split_first()?;
    let n = (count % 8) as usize + 1;
    if rest.len() < n {
        return None;
    }
    let (picks, stream) = rest.split_at(n);
    let kinds: Vec<PgKind> = picks
        .iter()
        .map(|p| KINDS[*p as usize % KINDS.len()])
        .collect();
    let names = (0..n).map(|i| format!("c{i}")).collect();
    let mut decoder = Decoder::new(names, kinds);
    let mut rows = 0;
    for chunk in stream.chunks((count as usize / 8) % 16 + 1) {
        rows += decoder
            .push(chunk)
            .ok()?
            .iter()
            .map(|(_, b)| b.num_rows())
            .sum::<usize>();
    }
    let last: usize = decoder
        .finish()
        .ok()?
        .iter()
        .map(|(_, b)| b.num_rows())
        .sum();
    Some(rows + last)
}

/// The HTTP page decoder: a JSON body's records (at `/items`, or the body itself) as a batch,
/// once with inferred types and once with every column declared as each kind in turn. Returns
/// the rows of the inferred batch, or `None` when there is no record array.
pub fn http_page(data: &[u8]) -> Option<usize> {
    let doc = serde_json::from_slice::<serde_json::Value>(data).ok()?;
    let records = match doc.get("items").unwrap_or(&doc) {
        serde_json::Value::Array(a) => a.clone(),
        _ => return None,
    };
    let names = crate::connect::http::column_names(&[], &[], &records);
    let inferred = crate::connect::http::records_batch(&records, &names, &[]).ok()?;
    for kind in [
        FieldKind::Text,
        FieldKind::Integer,
        FieldKind::Float,
        FieldKind::Decimal,
        FieldKind::Boolean,
        FieldKind::Date,
        FieldKind::Timestamp,
        FieldKind::TimestampTz,
        FieldKind::Json,
    ] {
        let schema: Vec<(String, Field)> = names
            .iter()
            .map(|n| (n.clone(), Field { kind, format: None }))
            .collect();
        let _ = crate::connect::http::records_batch(&records, &names, &schema);
    }
    Some(inferred.num_rows())
}
