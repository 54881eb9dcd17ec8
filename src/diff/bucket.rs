//! Diffing in passes: when the snapshots are large for the memory budget, the key checks and the
//! diff run once per *bucket* — the rows whose key hashes to that bucket, on both sides — so a
//! pass holds only its share of the smaller side in the join's hash table. Equal keys always land
//! in the same bucket (the key is hashed in its compared type), so duplicates, NULL keys, inserts,
//! updates and deletes are each found in exactly one pass. A side that src/stage.rs staged in
//! its buckets as it was read (its key compared in the type it is held in) is [`group`]ed into
//! the passes by moving files; any other side is [`split`] once, in one read of its snapshot
//! (staged files, or the user's file), into Arrow IPC files in the work folder, with the same
//! bucket function ([`of_hash`]). A pass reads only its bucket's files. (Filtering the whole
//! snapshot in every pass read and hashed each row once per pass: at 10M rows in 5 passes, two
//! fifths of the diff.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{Expr, SessionContext, ident, lit};
use futures::StreamExt;

use crate::stage::BUCKETS;

/// `recon_bucket(n, k0, k1, …)`: the bucket (0..n) of a key, stable across runs and sides.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Bucket {
    signature: Signature,
}

pub const NAME: &str = "recon_bucket";

/// The bucket hash: DataFusion's fast fixed-seed hash (SipHash took a sixth of a 10M-row plan),
/// seeded apart from the join's own hash so that a bucket's keys still spread over its table.
const HASH_STATE: RandomState = RandomState::with_seed(0x7265_636f_6e5f_6275);

impl Bucket {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Bucket {
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Bucket {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<_>>()?;
        let (n, keys) = arrays.split_first().ok_or_else(|| {
            datafusion::error::DataFusionError::Plan(format!("{NAME} needs a bucket count"))
        })?;
        let n = datafusion::arrow::compute::cast(n, &DataType::Int64)?;
        let n = n
            .as_any()
            .downcast_ref::<Int64Array>()
            .map_or(1, |a| a.value(0).max(1)) as u64;
        let mut hashes = vec![0u64; rows];
        hash(keys, &mut hashes)?;
        let buckets: Int64Array = hashes.iter().map(|h| of_hash(*h, n) as i64).collect();
        Ok(ColumnarValue::Array(Arc::new(buckets)))
    }
}

/// The pass (of `n`) a key's hash goes to: the stager's bucket (`hash % BUCKETS`,
/// src/stage.rs) modulo `n` when there are no more passes than buckets, so that a side staged in
/// buckets is grouped into passes without being read again ([`group`]).
pub fn of_hash(hash: u64, n: u64) -> u64 {
    match n <= BUCKETS as u64 {
        true => (hash % BUCKETS as u64) % n,
        false => hash % n,
    }
}

/// The bucket hash of one value of a one-column key, as [`hash`] hashes it in an array of the
/// value's Arrow type (a NULL hashes to 0): for a connector that deals rows as it decodes them.
pub fn hash_value<T: datafusion::common::hash_utils::HashValue + ?Sized>(value: &T) -> u64 {
    value.hash_one(&HASH_STATE)
}

/// The bucket hash of each row of `keys` (the key columns) into `hashes` (one per row): bucket
/// `hash % n` of `n`. The stager (src/stage.rs) splits a large side with it as it is read.
pub fn hash(keys: &[ArrayRef], hashes: &mut [u64]) -> Result<()> {
    create_hashes(keys, &HASH_STATE, hashes)?;
    Ok(())
}

/// The column holding each row's bucket while a side is split.
const COLUMN: &str = "__recon_bucket";

/// Split the registered side `table` into `passes` buckets by `keys` (its key columns as compared):
/// bucket `p`'s rows go to Arrow IPC files under `dir/p/`. Returns the folders, by bucket.
pub async fn split(
    ctx: &SessionContext,
    table: &str,
    keys: Vec<Expr>,
    passes: u64,
    dir: &Path,
) -> crate::error::Result<Vec<PathBuf>> {
    use crate::error::Error;
    let frame = ctx.table(table).await?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let mut exprs: Vec<Expr> = schema.fields().iter().map(|f| ident(f.name())).collect();
    let mut args = vec![lit(passes as i64)];
    args.extend(keys);
    exprs.push(Bucket::udf().call(args).alias(COLUMN));
    let mut stream = frame.select(exprs)?.execute_stream().await?;
    let stage_error = |e: crate::snapshot::ColumnError| {
        Error::Internal(format!(
            "splitting the {table} snapshot into buckets: {}",
            e.message
        ))
    };
    let mut stagers = Vec::with_capacity(passes as usize);
    let mut coalescers = Vec::with_capacity(passes as usize);
    let mut folders = Vec::with_capacity(passes as usize);
    // Rows are gathered per bucket into batches of a useful size before they are written; the
    // rows waiting stay near one staged segment's worth whatever the number of buckets.
    let target = (131_072 / passes as usize).clamp(1024, 8192);
    for p in 0..passes {
        let folder = dir.join(p.to_string());
        let mut stager = crate::stage::Stager::in_dir(&folder).map_err(|source| Error::Io {
            path: folder.clone(),
            source,
        })?;
        stager
            .push(RecordBatch::new_empty(schema.clone()))
            .map_err(stage_error)?;
        stagers.push(stager);
        coalescers.push(BatchCoalescer::new(schema.clone(), target));
        folders.push(folder);
    }
    while let Some(batch) = stream.next().await {
        let mut batch = batch?;
        let Some(column) = batch.column_by_name(COLUMN).cloned() else {
            continue;
        };
        batch.remove_column(batch.num_columns() - 1);
        let column = column.as_primitive::<Int64Type>();
        let buckets = column.values().iter().map(|p| *p as usize);
        for (p, done) in crate::stage::deal(&batch, buckets, &mut coalescers)? {
            stagers[p].push(done).map_err(stage_error)?;
        }
    }
    for (mut stager, mut coalescer) in stagers.into_iter().zip(coalescers) {
        coalescer.finish_buffered_batch()?;
        while let Some(done) = coalescer.next_completed_batch() {
            stager.push(done).map_err(stage_error)?;
        }
        stager.finish().map_err(stage_error)?;
    }
    Ok(folders)
}

/// Group a side staged in buckets (src/stage.rs: folders `from/bucket=NN`) into `passes` folders
/// under `dir` (no more than the buckets), moving its files: bucket `b` goes to pass
/// `b % passes`, which is where [`split`] puts the same keys ([`of_hash`]). Each folder also
/// gets an empty file of the side's schema. Returns the folders.
pub async fn group(
    ctx: &SessionContext,
    table: &str,
    from: &Path,
    passes: u64,
    dir: &Path,
) -> crate::error::Result<Vec<PathBuf>> {
    use crate::error::Error;
    use crate::stage::{Stager, bucket_folder};
    let schema = Arc::new(ctx.table(table).await?.schema().as_arrow().clone());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut folders = Vec::with_capacity(passes as usize);
    for p in 0..passes {
        let folder = dir.join(p.to_string());
        let mut stager = Stager::in_dir(&folder).map_err(io(&folder))?;
        let empty = stager
            .push(RecordBatch::new_empty(schema.clone()))
            .and_then(|()| stager.finish());
        empty.map_err(|e| {
            Error::Internal(format!(
                "grouping the {table} snapshot's buckets: {}",
                e.message
            ))
        })?;
        for b in (p as usize..BUCKETS).step_by(passes as usize) {
            let bucket = from.join(bucket_folder(b));
            for entry in std::fs::read_dir(&bucket).map_err(io(&bucket))? {
                let path = entry.map_err(io(&bucket))?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().to_string());
                let to = folder.join(format!("b{b:02}-{}", name.unwrap_or_default()));
                std::fs::rename(&path, &to).map_err(io(&path))?;
            }
        }
        folders.push(folder);
    }
    Ok(folders)
}

/// How many passes the diff needs so that a pass's share of the smaller side (`bytes`, as
/// staged) fits a quarter of the memory budget (hash tables take several times the data).
pub fn passes(bytes: u64, memory_limit: u64) -> u64 {
    let share = (memory_limit / 4).max(1);
    bytes.saturating_mul(2).div_ceil(share).clamp(1, 4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_grow_with_the_data_not_below_one() {
        assert_eq!(super::passes(0, 1 << 30), 1);
        assert_eq!(super::passes(100 << 20, 1 << 30), 1);
        assert_eq!(super::passes(1 << 30, 256 << 20), 32);
    }
}
