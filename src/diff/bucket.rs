//! Diffing in passes: when the snapshots are large for the memory budget, the key checks and the
//! diff run once per *bucket* — the rows whose key hashes to that bucket, on both sides — so a
//! pass holds only its share of the smaller side in the join's hash table. Equal keys always land
//! in the same bucket (the key is hashed in its compared type), so duplicates, NULL keys, inserts,
//! updates and deletes are each found in exactly one pass. Every pass re-reads the staged files
//! (local, fast); the remote sides were read once.

use std::hash::BuildHasherDefault;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::hash_utils::create_hashes_with_hasher;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// `recon_bucket(n, k0, k1, …)`: the bucket (0..n) of a key, stable across runs and sides.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Bucket {
    signature: Signature,
}

pub const NAME: &str = "recon_bucket";

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
        let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        create_hashes_with_hasher(keys, &hasher, &mut hashes)?;
        let buckets: Int64Array = hashes.iter().map(|h| (h % n) as i64).collect();
        Ok(ColumnarValue::Array(Arc::new(buckets)))
    }
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
