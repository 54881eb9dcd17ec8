//! The command line (clap derive). Flags describe this run; the job file describes the
//! reconciliation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::report::Format;

#[derive(Debug, Parser)]
#[command(
    name = "recon",
    version,
    about = "Reconcile a destination with a source: snapshot both, diff them in SQL, write back only what changed",
    long_about = "recon pulls a source and a destination snapshot into Arrow, compares them with SQL in \
DataFusion (a FULL OUTER JOIN on the mapped key, NULL-safe on every compared column) and reports \
the rows to insert, update and delete.\n\nStart with `recon init demo && recon plan demo/orders.toml`.",
    after_help = "Exit codes: 0 ok, 1 runtime failure or a guard refused, 2 usage error, 3 apply finished but some rows failed (recorded; retried next run), 4 changes found (with --exit-code) or drift (audit --exit-code, --fail-above), 75 another apply of the job holds the lock, 78 invalid job file (or its name belongs to another job file).\nData goes to stdout; logs and progress go to stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Print only errors on stderr
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// More detail on stderr (-v: info, -vv: debug)
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Never show progress bars (they are already hidden when stderr is not a terminal)
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// Memory budget for this run (e.g. 512MB, 2GB); beyond it, sorts and joins spill to disk.
    /// Overrides `[engine] memory_limit`; default: a quarter of the machine's memory, 256 MB to 1 GB
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::engine::parse_size(s).ok_or_else(|| "a size like 512MB, 2GB or a byte count".into())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run: show the changeset (inserts, updates field by field, deletes); writes nothing
    #[command(
        after_help = "Examples:\n  recon plan orders.toml\n  recon plan orders.toml --format json --limit 0 | jq .summary\n  recon plan orders.toml --format csv --output changes.csv\n  recon plan orders.toml --exit-code || echo \"drift\"\n  recon plan orders.toml --save orders.plan -f markdown > plan.md   # for review\n  recon plan --show orders.plan"
    )]
    Plan(PlanArgs),

    /// Compute the changeset and write it back; record the run and every failed row
    #[command(
        after_help = "Examples:\n  recon apply orders.toml\n  recon apply orders.toml --plan orders.plan   # exactly the reviewed plan\n  recon apply orders.toml --format json > run.json\n  recon apply orders.toml --max-changes 5000\n\nExit codes: 0 all written, 1 failure or guard tripped (nothing written by a guard), 3 some rows failed (recorded; retried by the next run), 75 another apply of this job is running."
    )]
    Apply(ApplyArgs),

    /// Report how far the destination has drifted from the source (read-only; recorded for the trend)
    #[command(
        after_help = "Examples:\n  recon audit orders.toml\n  recon audit orders.toml --format html --output drift.html\n  recon audit orders.toml --format openmetrics --output /var/lib/node_exporter/textfile/recon_orders.prom\n  recon audit orders.toml --fail-above 0.5%   # exit 4 above half a percent\n\nExit codes: 0 audited, 4 drift (with --exit-code) or drift above --fail-above, 1 failure."
    )]
    Audit(AuditArgs),

    /// Read or change the job's saved state, or list its past runs
    #[command(subcommand)]
    State(StateCommand),

    /// Validate the job file, reach both sides and the state store, check the column mapping; writes nothing
    Check {
        /// The job file (TOML)
        job: PathBuf,
    },

    /// Write a commented example job with its data (SQLite + CSV), runnable as is
    Init {
        /// Folder to write into (created if missing)
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The job file (TOML); not needed with --show
    #[arg(required_unless_present = "show")]
    pub job: Option<PathBuf>,

    /// Also save the plan (every change, whatever --limit lists) to this file, for review and
    /// `recon apply JOB --plan PLAN`; a name ending in .gz is compressed
    #[arg(long, value_name = "PLAN", conflicts_with = "show")]
    pub save: Option<PathBuf>,

    /// Show a saved plan instead of computing one (in any --format)
    #[arg(long, value_name = "PLAN")]
    pub show: Option<PathBuf>,

    /// Output format
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Write the output to this file instead of stdout
    #[arg(long, short)]
    pub output: Option<PathBuf>,

    /// List at most N changes (counts are always complete); default 20 for table/markdown, all for json/jsonl/csv
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Exit with 4 when anything would change (for scripts and CI)
    #[arg(long)]
    pub exit_code: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The job file (TOML)
    pub job: PathBuf,

    /// Output format
    #[arg(long, short, value_enum, default_value_t = crate::report::AuditFormat::Table)]
    pub format: crate::report::AuditFormat,

    /// Write the output to this file instead of stdout
    #[arg(long, short)]
    pub output: Option<PathBuf>,

    /// Sample rows listed per category (missing, changed, extra)
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub samples: usize,

    /// Exit with 4 when anything drifts
    #[arg(long)]
    pub exit_code: bool,

    /// Exit with 4 when the drift share exceeds this percentage of the rows compared (e.g. 0.5%)
    #[arg(long, value_name = "P%", value_parser = parse_percent)]
    pub fail_above: Option<f64>,
}

/// `0.5%` (or `0.5`) as a share: 0.005.
fn parse_percent(s: &str) -> Result<f64, String> {
    let p = s.trim().trim_end_matches('%').trim();
    match p.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err("a percentage from 0 to 100, like 0.5%".into()),
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The job file (TOML)
    pub job: PathBuf,

    /// Output format
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Write the output to this file instead of stdout
    #[arg(long, short)]
    pub output: Option<PathBuf>,

    /// List at most N changes (counts are always complete); default 20 for table/markdown, all for json/jsonl/csv
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Allow this many changes for this run: a row count (5000) or a percentage of the destination (25%)
    #[arg(long, value_name = "N|P%", value_parser = parse_max_changes)]
    pub max_changes: Option<crate::config::MaxChanges>,

    /// Skip the max_changes guard for this run
    #[arg(long)]
    pub force: bool,

    /// Let an empty source snapshot delete destination rows (off: an empty source deletes nothing)
    #[arg(long)]
    pub allow_empty_source: bool,

    /// Write exactly this reviewed plan (from `recon plan --save`): nothing else, and no row
    /// changed in the destination since the review (those are reported stale)
    #[arg(long, value_name = "PLAN")]
    pub plan: Option<PathBuf>,

    /// With --plan: refuse a plan older than this (e.g. 30m, 24h, 7d)
    #[arg(long, value_name = "AGE", default_value = "24h", value_parser = parse_age)]
    pub max_age: std::time::Duration,
}

/// `30m`, `24h`, `7d`, `90s`.
fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| "an age like 30m, 24h or 7d".to_string())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => return Err("an age like 30m, 24h or 7d".into()),
    };
    Ok(std::time::Duration::from_secs(n * seconds))
}

fn parse_max_changes(s: &str) -> Result<crate::config::MaxChanges, String> {
    use crate::config::MaxChanges;
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        return match p.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(MaxChanges::Percent(p)),
            _ => Err("a percentage above 0 and at most 100, like 25%".into()),
        };
    }
    s.parse::<u64>()
        .map(MaxChanges::Rows)
        .map_err(|_| "a row count (5000) or a percentage (25%)".into())
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Print the job's state value as JSON (nothing when none is set)
    Get {
        /// The job file (TOML)
        job: PathBuf,
    },
    /// Set the job's state value: VALUE is parsed as JSON, otherwise stored as a string
    #[command(
        after_help = "Examples:\n  recon state set orders.toml 42\n  recon state set orders.toml '{\"page\": 3}'\n  recon state set orders.toml 2024-01-01T00:00:00Z"
    )]
    Set {
        /// The job file (TOML)
        job: PathBuf,
        /// The new value
        value: String,
    },
    /// Remove the job's state value
    Reset {
        /// The job file (TOML)
        job: PathBuf,
    },
    /// List the job's recent runs, newest first
    History {
        /// The job file (TOML)
        job: PathBuf,
        /// How many runs to list
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}
