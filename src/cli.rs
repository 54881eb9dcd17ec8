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
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 4 changes found (with --exit-code), 78 invalid job file.\nData goes to stdout; logs and progress go to stderr."
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run: show the changeset (inserts, updates field by field, deletes); writes nothing
    #[command(
        after_help = "Examples:\n  recon plan orders.toml\n  recon plan orders.toml --format json --limit 0 | jq .summary\n  recon plan orders.toml --format csv --output changes.csv\n  recon plan orders.toml --exit-code || echo \"drift\""
    )]
    Plan(PlanArgs),

    /// Validate the job file, reach both sides and check the column mapping; writes nothing
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

    /// Exit with 4 when anything would change (for scripts and CI)
    #[arg(long)]
    pub exit_code: bool,
}
