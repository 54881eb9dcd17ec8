//! The comparison's join, for the shape queries/diff.sql always has: a hash join of the two
//! sides on one integer key, the smaller side held (`CollectLeft`), under a filter that keeps a
//! row when one side lacks it or when any compared column differs (`IS DISTINCT FROM` between
//! two columns of one type).
//!
//! DataFusion's join copies every matched pair's columns into its output (a pass of the 10M
//! benchmark: 1.9 M rows, 219 MB) and the filter then drops ~97 % of them. This join looks each
//! probe row's key up in the held side, compares the compared columns of the pair where they
//! are, and copies only the rows the filter keeps. Its output is the filter's: the same schema
//! and the same rows, in another order within a pass (listings sort above it).
//!
//! [`rewrite`] puts it in place of exactly that shape; any other (a `diff_query`, comparison
//! options that wrap a column in an expression, a key of another type, a column type not
//! compared here) keeps DataFusion's join. Held keys sparse in their range are found out once
//! the held side is read, and the replaced join runs on it then ([`Build::collect`]).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrowPrimitiveType, AsArray, PrimitiveArray, RecordBatch, UInt32Array,
    downcast_primitive_array, new_null_array,
};
use datafusion::arrow::compute::{BatchCoalescer, interleave, take};
use datafusion::arrow::datatypes::{
    ArrowNativeTypeOp, BinaryType, BinaryViewType, DataType, Float16Type, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, LargeBinaryType, LargeUtf8Type, SchemaRef,
    StringViewType, UInt8Type, UInt16Type, UInt32Type, Utf8Type,
};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, JoinType, NullEquality, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, IsNullExpr};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, Gauge, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

/// Replace each filtered join of the comparison's shape in `plan` with a [`DiffJoinExec`];
/// `true` when one was. Every hash join that holds its left side whole and probes it from
/// several partitions has its probe side spread over the threads first ([`SpreadExec`]), this
/// join's and DataFusion's alike.
pub fn rewrite(plan: Arc<dyn ExecutionPlan>) -> Result<(Arc<dyn ExecutionPlan>, bool)> {
    let mut replaced = false;
    let done = plan.transform_up(|node| {
        let node = SpreadExec::under(node)?;
        Ok(match DiffJoinExec::replacing(&node.data) {
            Some(join) => {
                replaced = true;
                Transformed::yes(Arc::new(join) as Arc<dyn ExecutionPlan>)
            }
            None => node,
        })
    })?;
    Ok((done.data, replaced))
}

/// A join's probe side, as it is, except that each partition's stream, on its first poll, has
/// its task woken once from outside the runtime's threads (through the blocking pool).
///
/// A join that holds one side builds it once, in whichever partition's task asks first; the
/// others wait for it and are woken on the thread that built it, into a slot no other thread
/// takes from (tokio's LIFO slot). Without this, those partitions then probed one after the
/// other on that one thread while the others sat idle: 1M rows on two threads, the whole probe
/// on one (this join's, and DataFusion's for sparse or text keys). The probe side is first read
/// once the held side is built, so that each partition goes then to whichever thread is free.
#[derive(Debug)]
struct SpreadExec {
    input: Arc<dyn ExecutionPlan>,
}

impl SpreadExec {
    /// `node` with its probe side spread, when it is a hash join holding its left side whole
    /// whose right side has several partitions.
    fn under(node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
        let Some(join) = node.downcast_ref::<HashJoinExec>() else {
            return Ok(Transformed::no(node));
        };
        let right = join.right();
        if *join.partition_mode() != PartitionMode::CollectLeft
            || right.output_partitioning().partition_count() < 2
            || right.downcast_ref::<SpreadExec>().is_some()
        {
            return Ok(Transformed::no(node));
        }
        let spread = Arc::new(SpreadExec {
            input: right.clone(),
        });
        let children = vec![join.left().clone(), spread as Arc<dyn ExecutionPlan>];
        datafusion::physical_plan::execution_plan::replace_children_if_necessary(
            node.clone(),
            children,
        )
        .map(Transformed::yes)
    }
}

impl DisplayAs for SpreadExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SpreadExec")
    }
}

impl ExecutionPlan for SpreadExec {
    fn name(&self) -> &'static str {
        "SpreadExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(SpreadExec { input })),
            _ => Err(DataFusionError::Internal("SpreadExec has one child".into())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        // Pending once, woken by a thread of the blocking pool (the runtime then hands the task
        // to an idle thread); awaiting a blocking task instead would not always wait, as one
        // that has already ended is ready at once.
        let mut handed = false;
        let hop = std::future::poll_fn(move |cx| {
            if handed {
                return std::task::Poll::Ready(());
            }
            handed = true;
            let waker = cx.waker().clone();
            tokio::task::spawn_blocking(move || waker.wake());
            std::task::Poll::Pending
        });
        let hop = futures::stream::once(hop).filter_map(|()| std::future::ready(None));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            hop.chain(input),
        )))
    }
}

/// What the join needs to know of the plan it replaces.
#[derive(Debug, Clone)]
struct Spec {
    join_type: JoinType,
    /// The key's column in the held (left) side and in the probe (right) side.
    left_key: usize,
    right_key: usize,
    /// Compared pairs: (left column, right column), each of one type.
    compared: Vec<(usize, usize)>,
    /// The filter's output schema: the left side's columns, then the right side's.
    schema: SchemaRef,
}

/// The comparison's join (see the module's documentation).
#[derive(Debug)]
pub struct DiffJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    /// The filtered DataFusion join this one stands for: it runs instead when the held keys
    /// are sparse (see [`Build::collect`]).
    replaced: Arc<dyn ExecutionPlan>,
    spec: Arc<Spec>,
    properties: Arc<PlanProperties>,
    shared: Arc<Shared>,
    metrics: ExecutionPlanMetricsSet,
}

/// What the probe partitions share: the held side, built once, and which of its rows some
/// partition matched.
#[derive(Debug)]
struct Shared {
    build: tokio::sync::OnceCell<std::result::Result<Arc<Held>, Arc<DataFusionError>>>,
    visited: Mutex<Vec<u64>>,
    /// Probe partitions still running: the last one emits the held rows nobody matched.
    running: AtomicUsize,
}

impl DiffJoinExec {
    /// The join for `node` when it is a filter over a hash join of the comparison's shape.
    fn replacing(node: &Arc<dyn ExecutionPlan>) -> Option<DiffJoinExec> {
        let filter = node.downcast_ref::<FilterExec>()?;
        let join = filter.input().downcast_ref::<HashJoinExec>()?;
        if filter.projection().is_some()
            || join.filter().is_some()
            || join.projection.is_some()
            || join.mode != PartitionMode::CollectLeft
            || join.null_equality() != NullEquality::NullEqualsNothing
            || !matches!(
                join.join_type(),
                JoinType::Full | JoinType::Left | JoinType::Right
            )
        {
            return None;
        }
        let (left, right) = (join.left().schema(), join.right().schema());
        let [(l, r)] = join.on() else {
            return None;
        };
        let left_key = l.downcast_ref::<Column>()?.index();
        let right_key = r.downcast_ref::<Column>()?.index();
        let key_type = left.field(left_key).data_type();
        if key_type != right.field(right_key).data_type() || !integer_key(key_type) {
            return None;
        }
        let width = left.fields().len();
        let schema = filter.schema();
        if schema.fields().len() != width + right.fields().len() {
            return None;
        }
        // The filter: `<left present> IS NULL OR <right present> IS NULL OR a IS DISTINCT FROM
        // b OR …`, with each side's "present" column never NULL on its own side (so NULL
        // exactly where the join found no row there). Any other leaf: not this shape.
        let mut leaves = Vec::new();
        disjuncts(filter.predicate(), &mut leaves);
        let (mut present, mut compared) = ([false, false], Vec::new());
        for leaf in leaves {
            if let Some(is_null) = leaf.downcast_ref::<IsNullExpr>() {
                let c = is_null.arg().downcast_ref::<Column>()?.index();
                let (side, field) = match c < width {
                    true => (0, left.field(c)),
                    false => (1, right.field(c.checked_sub(width)?)),
                };
                if field.is_nullable() {
                    return None;
                }
                present[side] = true;
                continue;
            }
            let binary = leaf.downcast_ref::<BinaryExpr>()?;
            if *binary.op() != Operator::IsDistinctFrom {
                return None;
            }
            let a = binary.left().downcast_ref::<Column>()?.index();
            let b = binary.right().downcast_ref::<Column>()?.index();
            let (l, r) = match (a < width, b < width) {
                (true, false) => (a, b - width),
                (false, true) => (b, a - width),
                _ => return None,
            };
            let t = left.field(l).data_type();
            if t != right.field(r).data_type() || !compared_here(t) {
                return None;
            }
            compared.push((l, r));
        }
        // A held row nothing matched has the probe side's columns NULL, and the other way
        // round: the filter keeps it through the other side's "present" test, for each side
        // the join keeps unmatched (DataFusion drops the test of a side the join always has).
        let needed = match join.join_type() {
            JoinType::Left => [false, true],
            JoinType::Right => [true, false],
            _ => [true, true],
        };
        if needed.iter().zip(present).any(|(n, p)| *n && !p) {
            return None;
        }
        let spec = Spec {
            join_type: *join.join_type(),
            left_key,
            right_key,
            compared,
            schema: schema.clone(),
        };
        Some(DiffJoinExec::new(
            join.left().clone(),
            join.right().clone(),
            node.clone(),
            spec,
        ))
    }

    fn new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        replaced: Arc<dyn ExecutionPlan>,
        spec: Spec,
    ) -> Self {
        let partitions = right.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(spec.schema.clone()),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(partitions),
            EmissionType::Both,
            Boundedness::Bounded,
        );
        DiffJoinExec {
            left,
            right,
            replaced,
            spec: Arc::new(spec),
            properties: Arc::new(properties),
            shared: Arc::new(Shared {
                build: tokio::sync::OnceCell::new(),
                visited: Mutex::new(Vec::new()),
                running: AtomicUsize::new(partitions),
            }),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

/// The leaves of a tree of ORs.
fn disjuncts<'a>(expr: &'a Arc<dyn PhysicalExpr>, out: &mut Vec<&'a Arc<dyn PhysicalExpr>>) {
    match expr.downcast_ref::<BinaryExpr>() {
        Some(or) if *or.op() == Operator::Or => {
            disjuncts(or.left(), out);
            disjuncts(or.right(), out);
        }
        _ => out.push(expr),
    }
}

/// Keys looked up here: integers that fit an `i64`.
fn integer_key(t: &DataType) -> bool {
    use DataType::*;
    matches!(t, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32)
}

/// Column types compared here, as arrow's `IS DISTINCT FROM` compares them.
fn compared_here(t: &DataType) -> bool {
    use DataType::*;
    t.is_primitive()
        || matches!(
            t,
            Boolean | Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView
        )
}

impl DisplayAs for DiffJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DiffJoinExec: join_type={}, on=(left {}, right {}), compared={}",
            self.spec.join_type,
            self.spec.left_key,
            self.spec.right_key,
            self.spec.compared.len()
        )
    }
}

impl ExecutionPlan for DiffJoinExec {
    fn name(&self) -> &'static str {
        "DiffJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 2 {
            return Err(DataFusionError::Internal(
                "DiffJoinExec has two children".into(),
            ));
        }
        let right = children.pop().unwrap_or_else(|| self.right.clone());
        let left = children.pop().unwrap_or_else(|| self.left.clone());
        let replaced = replacing_children(&self.replaced, left.clone(), right.clone())?;
        Ok(Arc::new(DiffJoinExec::new(
            left,
            right,
            replaced,
            (*self.spec).clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batch_size = context.session_config().batch_size();
        let probe = Probe {
            spec: self.spec.clone(),
            shared: self.shared.clone(),
            left: self.left.clone(),
            right: self.right.clone(),
            replaced: self.replaced.clone(),
            partition,
            context,
            build: None,
            input: None,
            coalescer: BatchCoalescer::new(self.spec.schema.clone(), batch_size),
            visited: Vec::new(),
            keys: Vec::new(),
            batch_size,
            finished: false,
            metrics: BaselineMetrics::new(&self.metrics, partition),
            build_metrics: BuildMetrics::new(&self.metrics, partition),
        };
        let stream = futures::stream::try_unfold(probe, |mut probe| async move {
            let next = probe.next().await?;
            Ok(next.map(|batch| (batch, probe)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.spec.schema.clone(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// A held row: its batch's place among the held batches, shifted left by [`Build::shift`], then
/// its place in that batch.
type Row = u32;
const NONE: Row = u32::MAX;
/// Held batches are held as slices of at most 2^16 rows (slicing copies nothing).
const MOST_ROWS_BITS: u32 = 16;

/// Key → held row: an array over the keys' range (the held keys are dense in it, as passes by
/// key range hold them; sparse ones leave the join to DataFusion, see [`Build::collect`]).
#[derive(Debug)]
struct KeyMap {
    min: i64,
    slots: Vec<Row>,
}

impl KeyMap {
    #[inline]
    fn get(&self, key: i64) -> Option<Row> {
        let at = key.wrapping_sub(self.min) as u64;
        self.slots
            .get(usize::try_from(at).ok()?)
            .copied()
            .filter(|r| *r != NONE)
    }
}

/// The held side, in the batches it was read in (not concatenated into one, as DataFusion's
/// join holds it: that copy was a tenth of the passes' time at 10M rows, on the one thread that
/// builds), and the key map.
#[derive(Debug)]
struct Build {
    batches: Vec<RecordBatch>,
    /// A row's batch is `row >> shift`, its place in it `row & (1 << shift) - 1`.
    shift: u32,
    /// Each column as one row of NULLs, taken for the probe rows no held row matches.
    nulls: Vec<datafusion::arrow::array::ArrayRef>,
    map: KeyMap,
    _reservation: MemoryReservation,
}

impl Build {
    fn at(&self, row: Row) -> (usize, usize) {
        (
            (row >> self.shift) as usize,
            (row & ((1 << self.shift) - 1)) as usize,
        )
    }

    /// Column `c` of the held batches `batches`.
    fn column(&self, c: usize, batches: std::ops::RangeInclusive<usize>) -> Vec<&dyn Array> {
        let held = self.batches[batches].iter();
        held.map(|b| b.column(c).as_ref()).collect()
    }

    /// The held rows at `rows` (a batch and a place in it; the batch after the last: NULLs).
    /// Only the batches they are in are handed to `interleave` (which looks at each array it
    /// is given), and rows of one batch are taken from it.
    fn take(&self, rows: &[(usize, usize)]) -> Result<Vec<datafusion::arrow::array::ArrayRef>> {
        let mut local = vec![usize::MAX; self.batches.len() + 1];
        let mut used = Vec::new();
        let rows: Vec<(usize, usize)> = rows
            .iter()
            .map(|&(b, r)| {
                if local[b] == usize::MAX {
                    local[b] = used.len();
                    used.push(b);
                }
                (local[b], r)
            })
            .collect();
        let array = |b: usize, c: usize| match self.batches.get(b) {
            Some(batch) => batch.column(c).as_ref(),
            None => self.nulls[c].as_ref(),
        };
        let one = match used[..] {
            [b] if b < self.batches.len() => Some(UInt32Array::from_iter_values(
                rows.iter().map(|(_, r)| *r as u32),
            )),
            _ => None,
        };
        (0..self.nulls.len())
            .map(|c| match &one {
                Some(places) => Ok(take(array(used[0], c), places, None)?),
                None => {
                    let values: Vec<&dyn Array> = used.iter().map(|b| array(*b, c)).collect();
                    Ok(interleave(&values, &rows)?)
                }
            })
            .collect()
    }

    /// How many bits a bitmap over the held rows' numbers takes.
    fn span(&self) -> usize {
        self.batches.len() << self.shift
    }
}

/// The held side as the probe partitions find it: built here, or left to DataFusion's join.
#[derive(Debug)]
enum Held {
    Here(Build),
    /// The replaced filter and join, over the held side's batches already read.
    DataFusion(Arc<dyn ExecutionPlan>),
}

/// The held side built here (not left to DataFusion's join).
fn here(held: Option<&Held>) -> Result<&Build> {
    match held {
        Some(Held::Here(build)) => Ok(build),
        _ => Err(DataFusionError::Internal(
            "the diff's join was not built".into(),
        )),
    }
}

/// The replaced filter (over its join) with the join's children replaced.
fn replacing_children(
    replaced: &Arc<dyn ExecutionPlan>,
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
    let join = replaced
        .children()
        .first()
        .map(|j| (*j).clone())
        .ok_or_else(|| DataFusionError::Internal("the replaced filter has no join".into()))?;
    let join = replace_children_if_necessary(join, vec![left, right])?;
    replace_children_if_necessary(replaced.clone(), vec![join])
}

impl Build {
    /// Read the held side. Keys spread over more than eight times as many values as there are
    /// rows (sparse ids, or a key dealt to many passes by hash) are looked up faster by
    /// DataFusion's hash table than by a table of its own here (1M keys 1,000 apart, one pass:
    /// 180–208 ms against 141–144), so the replaced join runs then, on the batches read.
    async fn collect(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        replaced: Arc<dyn ExecutionPlan>,
        spec: &Spec,
        context: Arc<TaskContext>,
        metrics: BuildMetrics,
    ) -> Result<Held> {
        let started = std::time::Instant::now();
        let reservation = MemoryConsumer::new("DiffJoinExec build").register(context.memory_pool());
        let schema = left.schema();
        let mut stream = datafusion::physical_plan::execute_stream(left, context)?;
        let mut batches = Vec::new();
        // Batches read from one file share its buffers: each buffer is counted once.
        let mut counter = datafusion::common::utils::memory::RecordBatchMemoryCounter::new();
        let mut keys = Vec::new();
        let (mut min, mut max, mut keyed) = (i64::MAX, i64::MIN, 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() > 0 {
                let size = counter.count_batch(&batch);
                reservation.try_grow(size)?;
                metrics.memory.add(size);
                metrics.batches.add(1);
                metrics.rows.add(batch.num_rows());
                // The keys' range, a batch at a time: the keys are read again from the batches
                // to fill the map (a vector of every held key, grown as the batches came, was a
                // tenth of the passes' time at 10M rows: its copies and their page faults).
                keys.clear();
                key_values(batch.column(spec.left_key).as_ref(), &mut keys);
                for k in keys.iter().flatten() {
                    min = min.min(*k);
                    max = max.max(*k);
                    keyed += 1;
                }
                batches.push(batch);
            }
        }
        let range = match keyed {
            0 => 0,
            _ => (max as i128 - min as i128 + 1) as u128,
        };
        if range > (keyed as u128 * 8).max(1 << 20) {
            drop(reservation);
            let held = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                &[batches],
                schema,
                None,
            )?;
            metrics.time.add_elapsed(started);
            return Ok(Held::DataFusion(replacing_children(
                &replaced, held, right,
            )?));
        }
        // Batches as read, those longer than the power of two at or above their mean length
        // (at most 2^16) in slices of it: a row's number then fits the held rows thrice over,
        // whatever the lengths (one long batch among many short ones would otherwise space every
        // batch's numbers as widely as its own).
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mean = rows.div_ceil(batches.len().max(1)).max(1);
        let shift = mean
            .next_power_of_two()
            .trailing_zeros()
            .min(MOST_ROWS_BITS);
        let most = 1usize << shift;
        let batches: Vec<RecordBatch> = batches
            .into_iter()
            .flat_map(|b| {
                let rows = b.num_rows();
                (0..rows)
                    .step_by(most)
                    .map(move |at| b.slice(at, most.min(rows - at)))
            })
            .collect();
        if (batches.len() as u64) << shift >= NONE as u64 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the diff's held side has {rows} rows in {} batches, more than one pass can hold",
                batches.len()
            )));
        }
        reservation.try_grow(range as usize * size_of::<Row>())?;
        let mut map = KeyMap {
            min,
            slots: vec![NONE; range as usize],
        };
        for (b, batch) in batches.iter().enumerate() {
            keys.clear();
            key_values(batch.column(spec.left_key).as_ref(), &mut keys);
            for (r, k) in keys.iter().enumerate() {
                let Some(k) = *k else { continue };
                let slot = &mut map.slots[(k - min) as usize];
                // The key checks ran before the diff: a key held twice means they were skipped.
                if *slot != NONE {
                    return Err(DataFusionError::Internal(format!(
                        "the key {k} is held twice in the diff's join"
                    )));
                }
                *slot = ((b << shift) | r) as Row;
            }
        }
        let nulls = schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        metrics.time.add_elapsed(started);
        Ok(Held::Here(Build {
            batches,
            shift,
            nulls,
            map,
            _reservation: reservation,
        }))
    }
}

/// Each row's key as an `i64` (`None`: NULL), for the types [`integer_key`] accepts.
fn key_values(a: &dyn Array, out: &mut Vec<Option<i64>>) {
    fn push<T: ArrowPrimitiveType>(a: &dyn Array, out: &mut Vec<Option<i64>>)
    where
        T::Native: Into<i64>,
    {
        let a = a.as_primitive::<T>();
        match a.null_count() {
            0 => out.extend(a.values().iter().map(|v| Some((*v).into()))),
            _ => out.extend(a.iter().map(|v| v.map(Into::into))),
        }
    }
    match a.data_type() {
        DataType::Int8 => push::<Int8Type>(a, out),
        DataType::Int16 => push::<Int16Type>(a, out),
        DataType::Int32 => push::<Int32Type>(a, out),
        DataType::Int64 => push::<Int64Type>(a, out),
        DataType::UInt8 => push::<UInt8Type>(a, out),
        DataType::UInt16 => push::<UInt16Type>(a, out),
        DataType::UInt32 => push::<UInt32Type>(a, out),
        _ => out.extend(std::iter::repeat_n(None, a.len())),
    }
}

/// One probe partition.
struct Probe {
    spec: Arc<Spec>,
    shared: Arc<Shared>,
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    replaced: Arc<dyn ExecutionPlan>,
    partition: usize,
    context: Arc<TaskContext>,
    build: Option<Arc<Held>>,
    /// The probe side's partition, or the replaced join's when DataFusion's runs.
    input: Option<SendableRecordBatchStream>,
    coalescer: BatchCoalescer,
    /// Held rows this partition matched (a bit a row, by its place among all held rows).
    visited: Vec<u64>,
    keys: Vec<Option<i64>>,
    batch_size: usize,
    finished: bool,
    metrics: BaselineMetrics,
    build_metrics: BuildMetrics,
}

/// The held side's figures, named as DataFusion's hash join names them (`-vvv`).
#[derive(Clone)]
struct BuildMetrics {
    batches: Count,
    rows: Count,
    memory: Gauge,
    time: Time,
}

impl BuildMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let m = || MetricBuilder::new(metrics);
        BuildMetrics {
            batches: m().counter("build_input_batches", partition),
            rows: m().counter("build_input_rows", partition),
            memory: m().gauge("build_mem_used", partition),
            time: m().subset_time("build_time", partition),
        }
    }
}

impl Probe {
    /// The next output batch, once the held side is built.
    async fn next(&mut self) -> Result<Option<RecordBatch>> {
        if self.build.is_none() {
            let (left, right, replaced) =
                (self.left.clone(), self.right.clone(), self.replaced.clone());
            let (spec, context) = (self.spec.clone(), self.context.clone());
            let metrics = self.build_metrics.clone();
            let built = self
                .shared
                .build
                .get_or_init(|| async move {
                    Build::collect(left, right, replaced, &spec, context, metrics)
                        .await
                        .map(Arc::new)
                        .map_err(Arc::new)
                })
                .await;
            let held = built
                .clone()
                .map_err(|e| DataFusionError::Shared(e.clone()))?;
            let input = match held.as_ref() {
                Held::Here(build) => {
                    self.visited = vec![0; build.span().div_ceil(64)];
                    self.right.execute(self.partition, self.context.clone())?
                }
                Held::DataFusion(plan) => plan.execute(self.partition, self.context.clone())?,
            };
            self.input = Some(input);
            self.build = Some(held);
        }
        if let Some(Held::DataFusion(_)) = self.build.as_deref() {
            let next = match self.input.as_mut() {
                Some(input) => input.next().await.transpose()?,
                None => None,
            };
            if let Some(batch) = &next {
                self.metrics.record_output(batch.num_rows());
            }
            return Ok(next);
        }
        loop {
            if let Some(batch) = self.coalescer.next_completed_batch() {
                self.metrics.record_output(batch.num_rows());
                return Ok(Some(batch));
            }
            if self.finished {
                return Ok(None);
            }
            let input = self.input.as_mut();
            match input
                .ok_or_else(|| DataFusionError::Internal("no probe input".into()))?
                .next()
                .await
            {
                Some(batch) => {
                    let batch = batch?;
                    let time = self.metrics.elapsed_compute().clone();
                    let timer = time.timer();
                    self.probe(&batch)?;
                    timer.done();
                }
                None => {
                    let time = self.metrics.elapsed_compute().clone();
                    let timer = time.timer();
                    self.finish()?;
                    timer.done();
                    self.coalescer.finish_buffered_batch()?;
                    self.finished = true;
                }
            }
        }
    }

    /// Look one probe batch up and keep its unmatched rows (when the join keeps them) and the
    /// matched rows whose compared columns differ.
    fn probe(&mut self, batch: &RecordBatch) -> Result<()> {
        let held = self.build.clone();
        let build = here(held.as_deref())?;
        self.keys.clear();
        key_values(batch.column(self.spec.right_key).as_ref(), &mut self.keys);
        let keep_unmatched = matches!(self.spec.join_type, JoinType::Full | JoinType::Right);
        let (mut held, mut rows, mut unmatched) = (Vec::new(), Vec::new(), Vec::new());
        for (i, key) in self.keys.iter().enumerate() {
            match key.and_then(|k| build.map.get(k)) {
                Some(at) => {
                    let g = at as usize;
                    self.visited[g / 64] |= 1 << (g % 64);
                    held.push(at);
                    rows.push(i as u32);
                }
                None if keep_unmatched => unmatched.push(i as u32),
                None => {}
            }
        }
        let mut changed = vec![false; held.len()];
        // The held batches the pairs are in (a few, when both sides are in key order).
        let batch_of = |g: &Row| (*g >> build.shift) as usize;
        let spanned = held
            .iter()
            .map(batch_of)
            .min()
            .zip(held.iter().map(batch_of).max());
        if let Some((first, last)) = spanned {
            let mut pairs = Pairs {
                held: &held,
                shift: build.shift,
                first,
                probe: &rows,
                changed: &mut changed,
            };
            for &(l, r) in &self.spec.compared {
                let column = build.column(l, first..=last);
                differ(&column, batch.column(r).as_ref(), &mut pairs)?;
            }
        }
        let mut left = Vec::new();
        let mut right = Vec::new();
        for ((at, row), changed) in held.iter().zip(&rows).zip(&changed) {
            if *changed {
                left.push(build.at(*at));
                right.push(*row);
            }
        }
        for row in unmatched {
            left.push((build.batches.len(), 0));
            right.push(row);
        }
        if left.is_empty() {
            return Ok(());
        }
        let right = UInt32Array::from(right);
        let mut columns = build.take(&left)?;
        columns.reserve(batch.num_columns());
        for column in batch.columns() {
            columns.push(take(column.as_ref(), &right, None)?);
        }
        let out = RecordBatch::try_new(self.spec.schema.clone(), columns)?;
        self.coalescer.push_batch(out)?;
        Ok(())
    }

    /// This partition's probe is done: the last partition to finish emits the held rows no
    /// partition matched (FULL and LEFT joins).
    fn finish(&mut self) -> Result<()> {
        let held = self.build.clone();
        let build = here(held.as_deref())?;
        let all = {
            let mut visited = self
                .shared
                .visited
                .lock()
                .map_err(|_| DataFusionError::Internal("a probe partition panicked".into()))?;
            if visited.len() < self.visited.len() {
                visited.resize(self.visited.len(), 0);
            }
            for (v, mine) in visited.iter_mut().zip(&self.visited) {
                *v |= mine;
            }
            match self.shared.running.fetch_sub(1, Ordering::AcqRel) {
                1 => std::mem::take(&mut *visited),
                _ => return Ok(()),
            }
        };
        if !matches!(self.spec.join_type, JoinType::Full | JoinType::Left) {
            return Ok(());
        }
        let width = build.nulls.len();
        let unmatched = build
            .batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |r| (b, r)));
        let mut unmatched = unmatched
            .filter(|(b, r)| {
                let g = (b << build.shift) | r;
                all.get(g / 64).is_none_or(|w| w & (1 << (g % 64)) == 0)
            })
            .peekable();
        let mut left = Vec::with_capacity(self.batch_size);
        while unmatched.peek().is_some() {
            left.clear();
            left.extend(unmatched.by_ref().take(self.batch_size));
            let mut columns = build.take(&left)?;
            for field in self.spec.schema.fields().iter().skip(width) {
                columns.push(new_null_array(field.data_type(), left.len()));
            }
            let out = RecordBatch::try_new(self.spec.schema.clone(), columns)?;
            self.coalescer.push_batch(out)?;
        }
        Ok(())
    }
}

/// The matched pairs of one probe batch: each held row, its probe row, and whether some
/// compared column differs between them yet.
struct Pairs<'a> {
    held: &'a [Row],
    /// [`Build::shift`].
    shift: u32,
    /// The first held batch a pair is in: the held columns start there.
    first: usize,
    probe: &'a [u32],
    changed: &'a mut [bool],
}

impl Pairs<'_> {
    /// Mark the pairs whose values in `held` (a column of the held batches from
    /// [`Pairs::first`]) and `probe` differ (`eq`: two values are equal); pairs already marked
    /// are not looked at again.
    fn mark<A: Array + ?Sized>(
        &mut self,
        held: &[&A],
        probe: &A,
        eq: impl Fn(&A, usize, &A, usize) -> bool,
    ) {
        // All pairs in one held batch (the usual case in key order): its array found once.
        match held {
            [one] => self.mark_in(|_| *one, probe, eq),
            _ => {
                let first = self.first;
                self.mark_in(|b| held[b - first], probe, eq)
            }
        }
    }

    #[inline(always)]
    fn mark_in<'h, A: Array + ?Sized + 'h>(
        &mut self,
        held: impl Fn(usize) -> &'h A,
        probe: &A,
        eq: impl Fn(&A, usize, &A, usize) -> bool,
    ) {
        let pairs = self
            .held
            .iter()
            .zip(self.probe)
            .zip(self.changed.iter_mut());
        let (shift, mask) = (self.shift, (1usize << self.shift) - 1);
        for ((r, i), changed) in pairs {
            if *changed {
                continue;
            }
            let held = held(*r as usize >> shift);
            let (r, i) = (*r as usize & mask, *i as usize);
            *changed = match (held.is_valid(r), probe.is_valid(i)) {
                (true, true) => !eq(held, r, probe, i),
                (false, false) => false,
                _ => true,
            };
        }
    }
}

/// Mark the matched pairs whose values in one compared column differ, as DataFusion's `IS
/// DISTINCT FROM` does (NULL against a value differs, two NULLs do not; primitives by their
/// native equality; floats by their bits, the two zeros being one value).
fn differ(held: &[&dyn Array], probe: &dyn Array, pairs: &mut Pairs) -> Result<()> {
    fn raw<N: AsRef<[u8]> + ?Sized>(v: &N) -> &[u8] {
        v.as_ref()
    }
    fn primitive<T: ArrowPrimitiveType>(
        held: &[&dyn Array],
        probe: &PrimitiveArray<T>,
        pairs: &mut Pairs,
    ) {
        let held: Vec<&PrimitiveArray<T>> = held.iter().map(|a| a.as_primitive::<T>()).collect();
        pairs.mark(&held, probe, |x, r, p, i| {
            x.values()[r].is_eq(p.values()[i])
        });
    }
    // Each held batch's column as the probe column's type (`$as`: the array's accessor).
    macro_rules! typed {
        ($as:ident $(, $t:ty)?) => {
            held.iter().map(|a| a.$as$(::<$t>)?()).collect::<Vec<_>>()
        };
    }
    // Text and binary, offsets or views: by their bytes.
    macro_rules! bytes {
        ($as:ident, $t:ty) => {
            pairs.mark(&typed!($as, $t), probe.$as::<$t>(), |x, r, p, i| {
                raw(x.value(r)) == raw(p.value(i))
            })
        };
    }
    // Floats as DataFusion compares them: by their bits, but for the two zeros, which are one
    // value (datafusion_common::utils::normalize_float_zero).
    macro_rules! float {
        ($t:ty) => {
            pairs.mark(
                &typed!(as_primitive, $t),
                probe.as_primitive::<$t>(),
                |x, r, p, i| {
                    let (a, b) = (x.values()[r].to_bits(), p.values()[i].to_bits());
                    a == b || (a << 1 == 0 && b << 1 == 0)
                },
            )
        };
    }
    match probe.data_type() {
        DataType::Float16 => float!(Float16Type),
        DataType::Float32 => float!(Float32Type),
        DataType::Float64 => float!(Float64Type),
        DataType::Boolean => pairs.mark(&typed!(as_boolean), probe.as_boolean(), |x, r, p, i| {
            x.values().value(r) == p.values().value(i)
        }),
        DataType::Utf8 => bytes!(as_bytes, Utf8Type),
        DataType::LargeUtf8 => bytes!(as_bytes, LargeUtf8Type),
        DataType::Binary => bytes!(as_bytes, BinaryType),
        DataType::LargeBinary => bytes!(as_bytes, LargeBinaryType),
        DataType::Utf8View => bytes!(as_byte_view, StringViewType),
        DataType::BinaryView => bytes!(as_byte_view, BinaryViewType),
        _ => downcast_primitive_array!(
            probe => primitive(held, probe, pairs),
            t => {
                return Err(DataFusionError::Internal(format!(
                    "the diff's join does not compare {t}"
                )));
            }
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch,
        StringArray, StringViewArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A deterministic stream of numbers.
    struct Numbers(u64);
    impl Numbers {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// One side: `rows` keys (`step` apart, some skipped), values that change with `seed`
    /// on some rows, NULLs, NaN and both zeros.
    fn side(rows: i64, step: i64, seed: u64, skip: u64) -> RecordBatch {
        let mut n = Numbers(seed);
        let mut other = Numbers(7);
        let keys: Vec<i64> = (0..rows)
            .filter(|_| n.next(100) >= skip)
            .map(|i| i * step)
            .collect();
        let len = keys.len();
        let mut pick = |k: &i64, choices: u64| {
            // Most rows agree between the sides (the same draw for the same key); some do not.
            let agreed = (*k as u64).wrapping_mul(2654435761) % choices;
            match other.next(40) {
                0 => n.next(choices),
                _ => agreed,
            }
        };
        let ints: Vec<Option<i64>> = keys
            .iter()
            .map(|k| match pick(k, 12) {
                0 => None,
                v => Some(v as i64),
            })
            .collect();
        let floats: Vec<Option<f64>> = keys
            .iter()
            .map(|k| match pick(k, 8) {
                0 => None,
                1 => Some(f64::NAN),
                2 => Some(0.0),
                3 => Some(-0.0),
                v => Some(v as f64 / 3.0),
            })
            .collect();
        let texts: Vec<Option<String>> = keys
            .iter()
            .map(|k| match pick(k, 6) {
                0 => None,
                1 => Some(String::new()),
                v => Some(format!(
                    "value {v} of a text long enough to leave the view's inline part"
                )),
            })
            .collect();
        let bools: Vec<Option<bool>> = keys
            .iter()
            .map(|k| match pick(k, 3) {
                0 => None,
                v => Some(v == 1),
            })
            .collect();
        let decimals: Vec<Option<i128>> = keys
            .iter()
            .map(|k| match pick(k, 5) {
                0 => None,
                v => Some(v as i128 * 125),
            })
            .collect();
        let small: Vec<Option<i32>> = keys.iter().map(|k| Some(pick(k, 4) as i32)).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(Int64Array::from(ints)),
            Arc::new(Float64Array::from(floats)),
            Arc::new(StringArray::from(texts.clone())),
            Arc::new(StringViewArray::from(texts)),
            Arc::new(BooleanArray::from(bools)),
            Arc::new(
                Decimal128Array::from(decimals)
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(Int32Array::from(small)),
            Arc::new(BooleanArray::from(vec![true; len])),
        ];
        RecordBatch::try_new(schema(), columns).unwrap()
    }

    fn schema() -> Arc<Schema> {
        let nullable = |name: &str, t: DataType| Field::new(name, t, true);
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            nullable("i", DataType::Int64),
            nullable("f", DataType::Float64),
            nullable("t", DataType::Utf8),
            nullable("w", DataType::Utf8View),
            nullable("b", DataType::Boolean),
            nullable("m", DataType::Decimal128(12, 2)),
            nullable("n", DataType::Int32),
            Field::new("p", DataType::Boolean, false),
        ]))
    }

    /// The held side in batches of uneven lengths (so that a held row's batch and place in it
    /// are not its place among all held rows), the probed side in batches of 300.
    fn context(held: RecordBatch, probed: RecordBatch) -> SessionContext {
        context_cut(held, probed, &[300, 1, 700, 64], 512)
    }

    /// The held side in one partition, cut in batches of `cuts` rows (in turn; a scan splits
    /// them further to the `batch_size`), the probed side in two, in batches of 300 rows.
    fn context_cut(
        held: RecordBatch,
        probed: RecordBatch,
        cuts: &[usize],
        batch_size: usize,
    ) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(batch_size);
        config.options_mut().optimizer.repartition_joins = false;
        // The held side stays the left one, as recon places it (queries/diff.sql).
        config.options_mut().optimizer.join_reordering = false;
        let ctx = SessionContext::new_with_config(config);
        let mut cut = Vec::new();
        let (mut at, mut next) = (0, cuts.iter().cycle());
        while at < held.num_rows() {
            let n = (*next.next().unwrap()).min(held.num_rows() - at);
            cut.push(held.slice(at, n));
            at += n;
        }
        let slices = |b: &RecordBatch| -> Vec<RecordBatch> {
            (0..b.num_rows())
                .step_by(300)
                .map(|o| b.slice(o, 300.min(b.num_rows() - o)))
                .collect()
        };
        let probed = slices(&probed);
        let (even, odd): (Vec<_>, Vec<_>) = probed
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let parts = vec![
            even.into_iter().map(|(_, b)| b).collect(),
            odd.into_iter().map(|(_, b)| b).collect(),
        ];
        ctx.register_table(
            "d",
            Arc::new(MemTable::try_new(schema(), vec![cut]).unwrap()),
        )
        .unwrap();
        ctx.register_table("s", Arc::new(MemTable::try_new(schema(), parts).unwrap()))
            .unwrap();
        ctx
    }

    /// Each row of the output as text, sorted.
    fn rows(batches: &[RecordBatch]) -> Vec<String> {
        let options = FormatOptions::default().with_null("∅");
        let mut out = Vec::new();
        for batch in batches {
            let formats: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for r in 0..batch.num_rows() {
                let row: Vec<String> = formats.iter().map(|f| f.value(r).to_string()).collect();
                out.push(row.join("|"));
            }
        }
        out.sort();
        out
    }

    const COMPARED: &str = "(s.i IS DISTINCT FROM d.i) OR (s.f IS DISTINCT FROM d.f) \
        OR (s.t IS DISTINCT FROM d.t) OR (s.w IS DISTINCT FROM d.w) \
        OR (s.b IS DISTINCT FROM d.b) OR (s.m IS DISTINCT FROM d.m) OR (s.n IS DISTINCT FROM d.n)";

    /// DataFusion's rows and this join's for `query`; whether the join replaced DataFusion's.
    async fn both(ctx: &SessionContext, query: &str) -> (Vec<String>, Vec<String>, bool) {
        let plan = || async {
            ctx.sql(query)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap()
        };
        let theirs = rows(&collect(plan().await, ctx.task_ctx()).await.unwrap());
        let (ours, replaced) = super::rewrite(plan().await).unwrap();
        (
            theirs,
            rows(&collect(ours, ctx.task_ctx()).await.unwrap()),
            replaced,
        )
    }

    /// Rows in one list and not the other, a few of each.
    fn differing(theirs: &[String], ours: &[String]) -> String {
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter()
                .filter(|r| !b.contains(r))
                .take(3)
                .cloned()
                .collect()
        };
        format!(
            "{} rows against {}; only DataFusion's: {:?}; only ours: {:?}",
            theirs.len(),
            ours.len(),
            only(theirs, ours),
            only(ours, theirs)
        )
    }

    fn shown(plan: &Arc<dyn ExecutionPlan>) -> String {
        datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string()
    }

    #[tokio::test]
    async fn the_join_keeps_exactly_the_rows_datafusion_keeps() {
        // Dense keys (an array over the range) and sparse ones (left to DataFusion's join once
        // the held side is read); the held side with keys the probed side lacks and the other
        // way round.
        for (step, seed) in [(1, 3), (1_000_003, 5)] {
            let ctx = context(side(3000, step, 11, 10), side(3400, step, seed, 5));
            for join in ["FULL", "LEFT", "RIGHT"] {
                let query = format!(
                    "SELECT d.*, s.* FROM d {join} JOIN s ON s.k = d.k \
                     WHERE s.p IS NULL OR d.p IS NULL OR {COMPARED}"
                );
                let (theirs, ours, replaced) = both(&ctx, &query).await;
                assert!(
                    replaced,
                    "{join} join, step {step}: not replaced\n{}",
                    shown(
                        &ctx.sql(&query)
                            .await
                            .unwrap()
                            .create_physical_plan()
                            .await
                            .unwrap()
                    )
                );
                assert!(
                    theirs == ours,
                    "{join} join, step {step}: {}",
                    differing(&theirs, &ours)
                );
                // Something of each kind: missing on either side (as the join keeps them) and
                // changed; most rows agree.
                assert!(
                    ours.len() > 200 && ours.len() < 2000,
                    "{join}: {} rows",
                    ours.len()
                );
            }
        }
    }

    #[tokio::test]
    async fn a_held_batch_longer_than_a_slice_is_held_in_slices() {
        // One held batch of ~90,000 rows (slices of 65,536 and the rest); batches of 70,000 and
        // 20,000; and one of 20,000 before ~10,000 of 7 rows, held in slices of 16 (so that its
        // rows are numbered as closely as the short batches').
        let query = format!(
            "SELECT d.*, s.* FROM d FULL JOIN s ON s.k = d.k \
             WHERE s.p IS NULL OR d.p IS NULL OR {COMPARED}"
        );
        let long_then_short: Vec<usize> = [20_000].into_iter().chain([7; 10_000]).collect();
        for cuts in [&[usize::MAX][..], &[70_000, 20_000], &long_then_short] {
            let (held, probed) = (side(100_000, 1, 7, 10), side(100_500, 1, 13, 5));
            let ctx = context_cut(held, probed, cuts, 1 << 17);
            let (theirs, ours, replaced) = both(&ctx, &query).await;
            assert!(replaced);
            assert!(theirs == ours, "{cuts:?}: {}", differing(&theirs, &ours));
            assert!(ours.len() > 5_000, "{cuts:?}: {} rows", ours.len());
        }
    }

    #[tokio::test]
    async fn an_empty_side_and_null_keys_are_kept_as_datafusion_keeps_them() {
        let mut held = side(500, 1, 2, 0);
        // NULL keys on the held side: never matched, kept by a FULL join.
        let keys: Vec<Option<i64>> = (0..held.num_rows() as i64)
            .map(|k| (k % 50 != 0).then_some(k))
            .collect();
        let mut columns = held.columns().to_vec();
        columns[0] = Arc::new(Int64Array::from(keys));
        held = RecordBatch::try_new(schema(), columns).unwrap();
        let query = format!(
            "SELECT d.*, s.* FROM d FULL JOIN s ON s.k = d.k \
             WHERE s.p IS NULL OR d.p IS NULL OR {COMPARED}"
        );
        for probed in [side(500, 1, 9, 0), side(500, 1, 9, 100)] {
            let ctx = context(held.clone(), probed);
            let (theirs, ours, replaced) = both(&ctx, &query).await;
            assert!(replaced);
            assert!(theirs == ours, "{}", differing(&theirs, &ours));
            // The held rows whose key is NULL: its `k` NULL, its `p` true.
            let null_keys = ours.iter().filter(|r| {
                let fields: Vec<&str> = r.split('|').collect();
                fields[0] == "∅" && fields[8] == "true"
            });
            assert_eq!(null_keys.count(), 10);
        }
        let ctx = context(side(500, 1, 2, 100), side(500, 1, 9, 0));
        let (theirs, ours, replaced) = both(&ctx, &query).await;
        assert!(replaced);
        assert!(theirs == ours, "{}", differing(&theirs, &ours));
        assert_eq!(ours.len(), side(500, 1, 9, 0).num_rows());
    }

    #[tokio::test]
    async fn other_shapes_keep_datafusions_join() {
        let ctx = context(side(300, 1, 2, 0), side(300, 1, 9, 0));
        for query in [
            // A compared value wrapped in an expression (comparison options do this).
            "SELECT d.*, s.* FROM d FULL JOIN s ON s.k = d.k \
             WHERE s.p IS NULL OR d.p IS NULL OR (lower(s.t) IS DISTINCT FROM lower(d.t))",
            // A text key.
            "SELECT d.*, s.* FROM d FULL JOIN s ON s.t = d.t \
             WHERE s.p IS NULL OR d.p IS NULL OR (s.i IS DISTINCT FROM d.i)",
            // Unmatched rows not kept by the filter.
            "SELECT d.*, s.* FROM d FULL JOIN s ON s.k = d.k WHERE (s.i IS DISTINCT FROM d.i)",
            // No filter at all (a diff_query's wrapping join).
            "SELECT d.*, s.* FROM d FULL JOIN s ON s.k = d.k",
        ] {
            let (theirs, ours, replaced) = both(&ctx, query).await;
            let plan = ctx
                .sql(query)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            assert!(!replaced, "{query}\n{}", shown(&plan));
            assert!(theirs == ours, "{query}: {}", differing(&theirs, &ours));
        }
    }

    /// A side as one table of `partitions` streams over its batches of 300 rows (dealt in
    /// turn); `first` runs in each stream before its first batch.
    fn streamed(
        batch: &RecordBatch,
        partitions: usize,
        first: impl Fn() -> futures::future::BoxFuture<'static, datafusion::common::Result<()>>
        + Send
        + Sync
        + Clone
        + 'static,
    ) -> Arc<dyn datafusion::catalog::TableProvider> {
        use datafusion::physical_plan::streaming::PartitionStream;
        struct Part<F> {
            batches: Vec<RecordBatch>,
            first: F,
        }
        impl<F> std::fmt::Debug for Part<F> {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "Part({} batches)", self.batches.len())
            }
        }
        impl<F> PartitionStream for Part<F>
        where
            F: Fn() -> futures::future::BoxFuture<'static, datafusion::common::Result<()>>
                + Send
                + Sync
                + 'static,
        {
            fn schema(&self) -> &datafusion::arrow::datatypes::SchemaRef {
                self.batches[0].schema_ref()
            }
            fn execute(
                &self,
                _: Arc<datafusion::execution::TaskContext>,
            ) -> datafusion::execution::SendableRecordBatchStream {
                use futures::StreamExt;
                let first = futures::stream::once((self.first)())
                    .filter_map(|done| std::future::ready(done.err().map(Err)));
                let batches = futures::stream::iter(self.batches.clone().into_iter().map(Ok));
                Box::pin(
                    datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                        schema(),
                        first.chain(batches),
                    ),
                )
            }
        }
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
        for (i, at) in (0..batch.num_rows()).step_by(300).enumerate() {
            parts[i % partitions].push(batch.slice(at, 300.min(batch.num_rows() - at)));
        }
        let parts = parts
            .into_iter()
            .map(|batches| {
                Arc::new(Part {
                    batches,
                    first: first.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Arc::new(datafusion::catalog::streaming::StreamingTable::try_new(schema(), parts).unwrap())
    }

    /// The probe partitions run at once, on two threads, once the held side is built: each
    /// partition's stream, on its first poll, keeps its thread until the other's has been
    /// polled too (at most 5 s). The held side is built after a pause, so that the partitions
    /// other than the one building it are waiting for it then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_probe_partitions_run_on_all_threads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cases = [
            // Dense keys: this join; sparse: DataFusion's within it; a text key: DataFusion's.
            (1, "s.k = d.k", true),
            (1_000_003, "s.k = d.k", true),
            (1, "CAST(s.k AS VARCHAR) = CAST(d.k AS VARCHAR)", false),
        ];
        for (step, key, replaced) in cases {
            let (held, probed) = (side(3000, step, 11, 10), side(3400, step, 5, 5));
            let query = format!(
                "SELECT d.*, s.* FROM d FULL JOIN s ON {key} \
                 WHERE s.p IS NULL OR d.p IS NULL OR {COMPARED}"
            );
            let theirs = both(&context(held.clone(), probed.clone()), &query).await.0;
            let ctx = context(held.clone(), probed.clone());
            let pause =
                || -> futures::future::BoxFuture<'static, datafusion::common::Result<()>> {
                    Box::pin(async {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok(())
                    })
                };
            let polled = Arc::new(AtomicUsize::new(0));
            let meet = {
                let polled = polled.clone();
                move || -> futures::future::BoxFuture<'static, datafusion::common::Result<()>> {
                    let polled = polled.clone();
                    Box::pin(async move {
                        polled.fetch_add(1, Ordering::SeqCst);
                        let deadline =
                            std::time::Instant::now() + std::time::Duration::from_secs(5);
                        while polled.load(Ordering::SeqCst) < 2 {
                            if std::time::Instant::now() > deadline {
                                return Err(datafusion::common::DataFusionError::Execution(
                                    "one probe partition waited 5 s for the other to start".into(),
                                ));
                            }
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        Ok(())
                    })
                }
            };
            for (name, table) in [
                ("d", streamed(&held, 1, pause)),
                ("s", streamed(&probed, 2, meet)),
            ] {
                ctx.deregister_table(name).unwrap();
                ctx.register_table(name, table).unwrap();
            }
            let plan = ctx
                .sql(&query)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let (plan, was) = super::rewrite(plan).unwrap();
            assert_eq!(was, replaced, "step {step}, key {key}\n{}", shown(&plan));
            let ours = collect(plan, ctx.task_ctx()).await;
            let ours = rows(&ours.unwrap_or_else(|e| panic!("step {step}, key {key}: {e}")));
            assert!(
                theirs == ours,
                "step {step}, key {key}: {}",
                differing(&theirs, &ours)
            );
            assert!(
                ours.len() > 200,
                "step {step}, key {key}: {} rows",
                ours.len()
            );
        }
    }
}
