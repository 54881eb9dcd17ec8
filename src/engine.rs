//! The run's DataFusion session, in bounded memory: a memory pool of `[engine] memory_limit`
//! (`--memory-limit`; by default a quarter of the machine's memory, between 256 MB and 1 GB) with sorts,
//! aggregations and joins spilling to a private work folder under `[engine] spill_dir` (default:
//! the system temp dir). The work folder also holds the staged snapshots (src/stage.rs). It is
//! removed when the session ends, and folders left by a run that crashed are removed by the next.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::Job;
use crate::error::{Error, Result, Side};
use crate::stage::KeyFacts;

/// Smallest and largest default memory budget.
const MIN_DEFAULT: u64 = 256 << 20;
const MAX_DEFAULT: u64 = 1 << 30;
/// Prefix of work folders, followed by the owning process id.
const PREFIX: &str = "recon-run-";

/// A private folder for one run's staged snapshots and spill files, removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Create `recon-run-<pid>-<nanos>` (mode 0700) under `parent`, first removing folders that
    /// runs which no longer exist left behind (a crash, a SIGKILL).
    pub fn create(parent: &Path) -> Result<WorkDir> {
        clean_stale(parent);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("{PREFIX}{}-{nanos}", std::process::id()));
        crate::state::create_private_dir(&path)?;
        Ok(WorkDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Remove work folders whose process is gone.
fn clean_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The memory budget when neither the job nor the command line sets one.
pub fn default_memory_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024);
    (total / 4).clamp(MIN_DEFAULT, MAX_DEFAULT)
}

/// `1GB`, `256MB`, `512MiB`, `2g`, or a byte count.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = (number * factor as f64) as u64;
    (bytes > 0).then_some(bytes)
}

/// A session for one run of `job`: memory pool, spilling, and the work folder (kept as a session
/// extension, so it lives exactly as long as the session).
pub fn session(job: &Job) -> Result<SessionContext> {
    let parent = job
        .engine
        .spill_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let work = Arc::new(WorkDir::create(&parent)?);
    let limit = job.engine.memory_limit.unwrap_or_else(default_memory_limit);
    let spill = work.path().join("spill");
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(limit as usize)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill])),
        )
        .build_arc()
        .map_err(|e| Error::Internal(format!("starting the engine: {e}")))?;
    let mut config = SessionConfig::new()
        .with_extension(work)
        .with_extension(Arc::new(StagedSides::default()))
        .with_extension(Arc::new(HeldMemory::default()))
        .with_extension(Arc::new(MemoryLimit(limit)));
    // Each sorting partition reserves this much for merging its spill files: keep it a small
    // share of a small budget (DataFusion's default is 10 MB).
    let execution = &mut config.options_mut().execution;
    execution.sort_spill_reservation_bytes =
        (limit as usize / 16).clamp(64 << 10, execution.sort_spill_reservation_bytes);
    // A sort whose input fits this share of the budget concatenates it and sorts it once,
    // rather than sorting each batch and merging them (DataFusion's default: 1 MB). The diff's
    // output comes in many small batches (a filter keeps ~3 % of each): 27,000 changes took 52 ms
    // to sort and merge from ~120 batches of 220 rows.
    execution.sort_in_place_threshold_bytes =
        (limit as usize / 16).clamp(execution.sort_in_place_threshold_bytes, 64 << 20);
    // Smaller batches under a small budget, so that every sort can hold a few of them.
    if limit < 256 << 20
        && let Ok(small) = datafusion::common::config::ConfigNonZeroUsize::try_new(1024)
    {
        execution.batch_size = small;
    }
    // Joins build one hash table of their left side (the smaller one, queries/diff.sql) and
    // probe it from every partition, rather than hash-partitioning both sides first: the probe
    // side is not copied through repartition buffers (1M benchmark: plan peak RSS 304 MiB, was
    // 425 MiB; time within this machine's run-to-run noise). The hash table holds the whole left
    // side either way, bounded by the passes.
    config.options_mut().optimizer.repartition_joins = false;
    // An integer key's hash table is an array over the key's range (no hashing) when the keys
    // are dense (15 %) or the range small. A pass of the diff holds a bucket's share of the keys
    // over their whole range (1/8 of a dense key in 8 passes): the array is still used while it
    // takes at most a sixteenth of the budget (4 bytes a value of the range). 10M rows of a
    // dense key in 8 passes: ~220 ms → ~160 ms a pass.
    config
        .options_mut()
        .execution
        .perfect_hash_join_small_build_threshold = (limit / 64) as usize;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// Run `work` on a task of its own (so on another thread than its sibling); dropping the
/// returned future, as a failed sibling does, cancels the task.
pub fn on_own_task<T: Send + 'static>(
    what: String,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> impl std::future::Future<Output = Result<T>> {
    struct Cancel(tokio::task::AbortHandle);
    impl Drop for Cancel {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let task = tokio::spawn(work);
    let cancel = Cancel(task.abort_handle());
    async move {
        let done = task.await;
        drop(cancel);
        done.map_err(|e| Error::Internal(format!("{what}: {e}")))?
    }
}

/// What staging found about each database side (src/stage.rs), by side.
#[derive(Debug, Default)]
pub struct StagedSides(std::sync::Mutex<[SideFacts; 2]>);

/// What staging found about one side.
#[derive(Debug, Default, Clone)]
pub struct SideFacts {
    /// The key checks' counts, when the side's one integer key could be counted.
    pub key: Option<KeyFacts>,
    /// The bytes of a side held in memory (a side in files is measured by its files).
    pub held_bytes: Option<u64>,
    /// The side is staged in buckets by its one key column (src/stage.rs `BUCKETS`).
    pub bucketed: bool,
    /// Its rows were dealt to buckets by this key range rather than by hash
    /// (src/diff/bucket.rs `KeyRange`).
    pub range: Option<crate::diff::KeyRange>,
    /// The side's batches as staging held them (its table spreads them, in slices, over the
    /// session's partitions): the diff's join builds on them as they are (src/diff/mod.rs).
    pub held: Option<Vec<datafusion::arrow::record_batch::RecordBatch>>,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Destination => 1,
    }
}

/// Keep (or forget, with the default) what staging found about `side`.
pub fn set_staged(ctx: &SessionContext, side: Side, facts: SideFacts) {
    if let Some(sides) = ctx.state().config().get_extension::<StagedSides>()
        && let Ok(mut sides) = sides.0.lock()
    {
        sides[side_index(side)] = facts;
    }
}

/// What staging found about `side` (the default when it was not staged).
pub fn staged(ctx: &SessionContext, side: Side) -> SideFacts {
    ctx.state()
        .config()
        .get_extension::<StagedSides>()
        .and_then(|sides| sides.0.lock().ok().map(|s| s[side_index(side)].clone()))
        .unwrap_or_default()
}

/// Memory the session holds outside DataFusion's operators (snapshots held in memory), counted
/// in its pool for as long as the session lives.
#[derive(Debug, Default)]
pub struct HeldMemory(std::sync::Mutex<Vec<datafusion::execution::memory_pool::MemoryReservation>>);

/// Count `bytes` held by `what` against the session's memory budget, for the session's life.
pub fn account_held(ctx: &SessionContext, what: String, bytes: usize) {
    use datafusion::execution::memory_pool::MemoryConsumer;
    let reservation = MemoryConsumer::new(what).register(&ctx.runtime_env().memory_pool);
    reservation.grow(bytes);
    if let Some(held) = ctx.state().config().get_extension::<HeldMemory>()
        && let Ok(mut held) = held.0.lock()
    {
        held.push(reservation);
    }
}

/// The run's memory budget in bytes, as a session extension.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimit(pub u64);

/// The session's work folder.
pub fn work_dir(ctx: &SessionContext) -> Result<Arc<WorkDir>> {
    ctx.state()
        .config()
        .get_extension::<WorkDir>()
        .ok_or_else(|| Error::Internal("a session without a work folder".into()))
}

/// Join in constant memory when the snapshots are large for the budget: a hash join holds one
/// side in memory and cannot spill, a sort-merge join sorts both sides (spilling as needed) and
/// streams them. `sizes` are the bytes of each side as staged or as files.
pub fn choose_join(ctx: &SessionContext, sizes: [u64; 2]) {
    let smaller = sizes[0].min(sizes[1]);
    let spill = smaller.saturating_mul(3) > memory_limit(ctx) / 2;
    if spill {
        tracing::info!(
            bytes = smaller,
            "the snapshots exceed the memory budget: sort-merge join with spilling"
        );
        let state = ctx.state_ref();
        let mut state = state.write();
        let options = state.config_mut().options_mut();
        options.optimizer.prefer_hash_join = false;
        // DataFusion plans a sort-merge join only with more than one partition.
        options.execution.target_partitions = options.execution.target_partitions.max(2);
    }
}

/// Diffing in passes reads only bucket files, Arrow IPC that recon wrote: each is read whole by
/// one partition (a pass's bucket has many files, so every core still gets its share). Split
/// into byte ranges, each range would be read into fresh memory before it is decoded (10M rows
/// in five passes: 1.24 s → 0.85 s); and a pass side of one file stays one partition rather
/// than being dealt round-robin into two through buffers, which under a small budget took the
/// memory the join's build needed. (Left as they are for a single pass, which may read a user's
/// file: a large CSV is parsed in ranges on every core.)
pub fn read_buckets_whole(ctx: &SessionContext) {
    let state = ctx.state_ref();
    let mut state = state.write();
    let optimizer = &mut state.config_mut().options_mut().optimizer;
    optimizer.repartition_file_scans = false;
    optimizer.enable_round_robin_repartition = false;
}

/// Bytes under a path (a staged side's folder, or a file).
pub fn size_of(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| size_of(&e.path()))
            .sum(),
        Err(_) => 0,
    }
}

/// The session's memory budget.
pub fn memory_limit(ctx: &SessionContext) -> u64 {
    ctx.state()
        .config()
        .get_extension::<MemoryLimit>()
        .map_or_else(default_memory_limit, |m| m.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("256MB"), Some(256 << 20));
        assert_eq!(parse_size("512 MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("0"), None);
    }
}
