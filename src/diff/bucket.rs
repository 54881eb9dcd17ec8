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

/// Buckets by *key range*: for a one-column integer key whose range the servers' statistics
/// estimate before reading ([`KeyRange::estimated`]), a key's bucket value is its block of
/// `width` consecutive values from `lo` (32 blocks span the estimate), in place of its hash. A
/// pass then holds a run of consecutive keys: the join's array over the key's range
/// (DataFusion's `ArrayMap`) covers a fifth of the range in five passes rather than all of it,
/// and rows read in key order (a table filled by a sequence) are dealt to one bucket at a time.
/// 10M-row plan: user CPU 3.1–3.4 → 2.7–3.0 s, the passes 0.85–1.0 → 0.67–0.80 s (interleaved
/// runs; README, "Buckets by key range"). Keys
/// outside the estimate (rows since the statistics were taken) continue the blocks round the
/// buckets, so a stale estimate spreads them rather than piling them in one bucket; a skewed
/// key (its values bunched in a few blocks) is caught after staging and hashed instead
/// (src/diff/mod.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRange {
    pub lo: i64,
    pub width: u64,
}

/// A side's say in buckets by key range (src/connect/mod.rs `RangeVote`): `None` when its key
/// cannot be dealt by range (not one integer column); else the key's lowest and highest value as
/// its server's statistics estimate them, if they do.
pub type Estimate = Option<Option<(i64, i64)>>;

impl KeyRange {
    /// Blocks of [`BUCKETS`] to cover `lo..=hi`.
    pub fn covering(lo: i64, hi: i64) -> KeyRange {
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        let span = hi as i128 - lo as i128 + 1;
        let width = (span + BUCKETS as i128 - 1) / BUCKETS as i128;
        KeyRange {
            lo,
            width: width.clamp(1, u64::MAX as i128) as u64,
        }
    }

    /// The range both sides' estimates (`lo`, `hi`) cover, when the key qualifies on both
    /// sides (`Some`) and at least one side has an estimate.
    pub fn estimated(sides: [Estimate; 2]) -> Option<KeyRange> {
        let [Some(a), Some(b)] = sides else {
            return None;
        };
        let (lo, hi) = match (a, b) {
            (Some(a), Some(b)) => (a.0.min(b.0), a.1.max(b.1)),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => return None,
        };
        Some(KeyRange::covering(lo, hi))
    }

    /// A key's bucket value: its block from `lo` (bucket `value % BUCKETS`), counted round
    /// the buckets past the estimate (and below it).
    /// (`(k - lo).div_euclid(width)` as a two's complement `u64`, without 128-bit division: a
    /// call per row of the decoder took 1.3 % of a 1M-row plan's CPU.)
    #[inline(always)]
    pub fn value(&self, k: i64) -> u64 {
        match k >= self.lo {
            // `k - lo` fits a u64 whatever the two values.
            true => k.wrapping_sub(self.lo) as u64 / self.width,
            // Block -1 holds lo - width ..= lo - 1: !b is -(b + 1).
            false => !((self.lo.wrapping_sub(k) as u64 - 1) / self.width),
        }
    }
}

/// `recon_bucket(n, k0, k1, …)`: the bucket (0..n) of a key, stable across runs and sides.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Bucket {
    signature: Signature,
    /// Buckets by key range rather than by hash (the sides were staged so).
    range: Option<KeyRange>,
}

pub const NAME: &str = "recon_bucket";

/// The bucket hash: DataFusion's fast fixed-seed hash (SipHash took a sixth of a 10M-row plan),
/// seeded apart from the join's own hash so that a bucket's keys still spread over its table.
const HASH_STATE: RandomState = RandomState::with_seed(0x7265_636f_6e5f_6275);

impl Bucket {
    pub fn udf(range: Option<KeyRange>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Bucket {
            signature: Signature::variadic_any(Volatility::Immutable),
            range,
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
        // More passes than buckets take every key's hash: blocks of a range cut for the
        // buckets would leave the passes past the 32nd empty.
        let range = self.range.filter(|_| n <= BUCKETS as u64);
        values(keys, range, &mut hashes)?;
        let buckets: Int64Array = hashes.iter().map(|h| of_hash(*h, n) as i64).collect();
        Ok(ColumnarValue::Array(Arc::new(buckets)))
    }
}

/// The pass (of `n`) a key's bucket value goes to: when there are no more passes than buckets,
/// the pass of the stager's bucket (`value % BUCKETS`, src/stage.rs; [`pass_of_bucket`]), so
/// that a side staged in buckets is grouped into passes without being read again ([`group`]).
pub fn of_hash(hash: u64, n: u64) -> u64 {
    match n <= BUCKETS as u64 {
        true => pass_of_bucket(hash % BUCKETS as u64, n),
        false => hash % n,
    }
}

/// The pass (of `n`, at most [`BUCKETS`]) that bucket `b` goes to: consecutive buckets share a
/// pass, so that a pass of buckets by key range holds one run of keys.
pub fn pass_of_bucket(b: u64, n: u64) -> u64 {
    b * n / BUCKETS as u64
}

/// The bucket hash of one value of a one-column key, as [`hash`] hashes it in an array of the
/// value's Arrow type (a NULL hashes to 0): for a connector that deals rows as it decodes them.
pub fn hash_value<T: datafusion::common::hash_utils::HashValue + ?Sized>(value: &T) -> u64 {
    value.hash_one(&HASH_STATE)
}

/// The bucket value of each row of `keys` (the key columns) into `hashes` (one per row): bucket
/// `value % n` of `n`. With `range`, a one-column integer key's block ([`KeyRange::value`]; a
/// NULL is 0); else the key's hash. The stager (src/stage.rs) splits a large side with it as it
/// is read.
pub fn values(keys: &[ArrayRef], range: Option<KeyRange>, hashes: &mut [u64]) -> Result<()> {
    match (range, keys) {
        (Some(range), [key]) if key.data_type().is_integer() => {
            let wide = datafusion::arrow::compute::cast(key, &DataType::Int64)?;
            let wide = wide.as_primitive::<Int64Type>();
            for (h, k) in hashes.iter_mut().zip(wide.iter()) {
                *h = k.map_or(0, |k| range.value(k));
            }
        }
        (Some(_), _) => {
            return Err(datafusion::error::DataFusionError::Internal(
                "buckets by key range need one integer key column".into(),
            ));
        }
        (None, _) => {
            create_hashes(keys, &HASH_STATE, hashes)?;
        }
    }
    Ok(())
}

/// The column holding each row's bucket while a side is split.
const COLUMN: &str = "__recon_bucket";

/// Split the registered side `table` into `passes` buckets by `keys` (its key columns as
/// compared; by key range with `range`, as the other side was staged): bucket `p`'s rows go to
/// Arrow IPC files under `dir/p/`. Returns the folders, by bucket.
pub async fn split(
    ctx: &SessionContext,
    table: &str,
    keys: Vec<Expr>,
    range: Option<KeyRange>,
    passes: u64,
    dir: &Path,
) -> crate::error::Result<Vec<PathBuf>> {
    use crate::error::Error;
    let frame = ctx.table(table).await?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let mut exprs: Vec<Expr> = schema.fields().iter().map(|f| ident(f.name())).collect();
    let mut args = vec![lit(passes as i64)];
    args.extend(keys);
    exprs.push(Bucket::udf(range).call(args).alias(COLUMN));
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
/// [`pass_of_bucket`], which is where [`split`] puts the same keys ([`of_hash`]). Each folder also
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
        for b in (0..BUCKETS).filter(|b| pass_of_bucket(*b as u64, passes) == p) {
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

/// Whether the buckets of a side staged in them (`from/bucket=NN`, src/stage.rs) would give a
/// pass (of `passes`, grouped as [`group`] does) more than half again its share of the bytes.
pub fn skewed(from: &Path, passes: u64) -> bool {
    let mut bytes = vec![0u64; passes as usize];
    for b in 0..BUCKETS {
        let folder = from.join(crate::stage::bucket_folder(b));
        let size: u64 = std::fs::read_dir(&folder)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        bytes[pass_of_bucket(b as u64, passes) as usize] += size;
    }
    let total: u64 = bytes.iter().sum();
    let most = bytes.iter().copied().max().unwrap_or_default();
    most.saturating_mul(passes * 2) > total.saturating_mul(3)
}

/// How many passes the diff needs so that a pass's share of the smaller side (`bytes`, as
/// staged) fits a quarter of the memory budget (hash tables take several times the data).
pub fn passes(bytes: u64, memory_limit: u64) -> u64 {
    let share = (memory_limit / 4).max(1);
    bytes.saturating_mul(2).div_ceil(share).clamp(1, 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_range_deals_runs_of_keys_to_consecutive_buckets_and_passes() {
        let range = KeyRange::covering(1, 3200);
        assert_eq!(range, KeyRange { lo: 1, width: 100 });
        // Blocks of 100 keys: the estimate fills the 32 buckets, one run each.
        let bucket = |k: i64| range.value(k) % BUCKETS as u64;
        assert_eq!([1, 100, 101, 3200].map(bucket), [0, 0, 1, 31]);
        // Past the estimate (and below it) the blocks go round the buckets again.
        assert_eq!([3201, 3301, 0, -99, -100].map(bucket), [0, 1, 31, 31, 30]);
        // Consecutive buckets share a pass, and a key's pass is its bucket's.
        assert_eq!((0..32).map(|b| pass_of_bucket(b, 5)).max(), Some(4));
        for k in [1, 640, 641, 1900, 3200, 5000, -7] {
            let h = range.value(k);
            assert_eq!(of_hash(h, 5), pass_of_bucket(h % BUCKETS as u64, 5), "{k}");
        }
        assert_eq!(
            [1, 640, 3200].map(|k| of_hash(range.value(k), 5)),
            [0, 0, 4]
        );
        // Arrays take the same values as the decoder, in any integer type; a NULL is 0.
        let keys: ArrayRef = Arc::new(datafusion::arrow::array::Int32Array::from(vec![
            Some(101),
            None,
            Some(-100),
        ]));
        let mut values = vec![0; 3];
        super::values(std::slice::from_ref(&keys), Some(range), &mut values).unwrap();
        assert_eq!(values, [1, 0, range.value(-100)]);
        // A range needs an integer key.
        let text: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec!["a"]));
        assert!(super::values(&[text], Some(range), &mut values[..1]).is_err());
        // As Euclidean division, below the estimate too.
        for k in -1000..1000 {
            let r = KeyRange { lo: 17, width: 7 };
            assert_eq!(r.value(k), (k - 17).div_euclid(7) as u64, "{k}");
        }
        // Extremes do not overflow.
        let below = KeyRange::covering(0, 63);
        assert_eq!(
            below.value(i64::MIN),
            (i64::MIN as i128).div_euclid(2) as i64 as u64
        );
        let wide = KeyRange::covering(i64::MIN, i64::MAX);
        assert_eq!(wide.value(i64::MIN) % 32, 0);
        assert_eq!(wide.value(i64::MAX) % 32, 31);
    }

    #[test]
    fn both_sides_agree_on_a_range_only_when_both_keys_can_take_one() {
        let est = |lo, hi| Some(Some((lo, hi)));
        assert_eq!(
            KeyRange::estimated([est(10, 100), est(1, 50)]),
            Some(KeyRange::covering(1, 100))
        );
        assert_eq!(
            KeyRange::estimated([est(10, 100), Some(None)]),
            Some(KeyRange::covering(10, 100))
        );
        assert_eq!(KeyRange::estimated([Some(None), Some(None)]), None);
        assert_eq!(KeyRange::estimated([est(10, 100), None]), None);
        assert_eq!(KeyRange::estimated([None, est(10, 100)]), None);
    }

    #[test]
    fn a_pass_with_half_again_its_share_is_skewed() {
        let dir = tempfile::tempdir().unwrap();
        let fill = |sizes: &[usize]| {
            for (b, size) in sizes.iter().enumerate() {
                let folder = dir.path().join(crate::stage::bucket_folder(b));
                std::fs::create_dir_all(&folder).unwrap();
                std::fs::write(folder.join("part.arrow"), vec![0u8; *size]).unwrap();
            }
        };
        fill(&[1000; BUCKETS]);
        assert!(!skewed(dir.path(), 5));
        // Half the bytes in the first bucket.
        let mut sizes = [1000; BUCKETS];
        sizes[0] = 31_000;
        fill(&sizes);
        assert!(skewed(dir.path(), 5));
        // Two passes of 16 buckets: 46,000 bytes against a share of 31,000 is not yet half
        // again; 76,000 against 45,500 is.
        assert!(!skewed(dir.path(), 2));
        sizes[0] = 61_000;
        fill(&sizes);
        assert!(skewed(dir.path(), 2));
    }

    #[test]
    fn passes_grow_with_the_data_not_below_one() {
        assert_eq!(super::passes(0, 1 << 30), 1);
        assert_eq!(super::passes(100 << 20, 1 << 30), 1);
        assert_eq!(super::passes(1 << 30, 256 << 20), 32);
    }
}
