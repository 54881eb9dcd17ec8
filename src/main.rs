//! The `recon` binary: parse arguments, call the library, print errors, map outcomes to exit
//! codes (README, "Exit codes").

use std::process::ExitCode;

use clap::Parser;

use recon::cli::{ApplyArgs, AuditArgs, Cli, Command, PlanArgs, StateCommand};
use recon::{Error, Job, Progress, report};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code when `--exit-code` is given and something would change.
const EXIT_DRIFT: u8 = 4;
/// Exit code when apply finished but some rows failed (they are recorded and retried).
const EXIT_PARTIAL: u8 = 3;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v3): milliseconds before freed memory goes
/// back to the system; -1: never. Its default is 1000.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep the memory the run frees for its later allocations rather than returning it to the
/// system after a second: each diff pass allocates what the one before freed, and memory returned
/// then touched again cost page faults and TLB shootdowns between the cores (10M-row plan: system
/// CPU 1.9 → 1.5 s, wall 7.97 → 7.32 s, median of 5; peak RSS +40 MB). A `MIMALLOC_PURGE_DELAY`
/// the user sets is kept (the option then differs from its default).
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: plain calls into the allocator's option table, which takes any option number and
    // value; made before any other thread exists.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == 1000 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            print_error(&Error::Internal(format!(
                "cannot start the async runtime: {e}"
            )));
            return ExitCode::from(1);
        }
    };
    let progress = Progress::stderr(!cli.no_progress && !cli.quiet);
    MEMORY_LIMIT.set(cli.memory_limit).ok();
    let outcome = runtime.block_on(run(cli.command, progress));
    // Everything the command started has ended (its work folder is removed): the idle worker
    // threads are left to the process's exit rather than joined one by one, each returning its
    // memory first (20-30 ms at the end of a large plan).
    runtime.shutdown_background();
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            print_error(&e);
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// `--memory-limit`, applied to every job this run loads.
static MEMORY_LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// Load a job file; command-line settings for this run override its `[engine]`.
fn load(path: &std::path::Path) -> recon::Result<Job> {
    let mut job = Job::load(path)?;
    if let Some(limit) = MEMORY_LIMIT.get().copied().flatten() {
        job.engine.memory_limit = Some(limit);
    }
    Ok(job)
}

async fn run(command: Command, progress: Progress) -> recon::Result<u8> {
    match command {
        Command::Plan(args) => plan(args, progress).await,
        Command::Apply(args) => apply(args, progress).await,
        Command::Audit(args) => audit(args, progress).await,
        Command::State(command) => state(command).await,
        Command::Check { job } => check(&load(&job)?, &progress).await,
        Command::Init { dir } => {
            let job = recon::init::init(&dir)?;
            report::emit(
                &format!(
                    "wrote {}\nnext: recon plan {}\n",
                    job.display(),
                    job.display()
                ),
                None,
            )?;
            Ok(0)
        }
    }
}

async fn plan(args: PlanArgs, progress: Progress) -> recon::Result<u8> {
    if let Some(path) = &args.show {
        return show_plan(path, &args);
    }
    let job = load(args.job.as_deref().unwrap_or(std::path::Path::new("")))?;
    let limit = args.limit.or(args.format.default_limit());
    // Streamed formats write each listed change as it comes; the others keep the listed ones.
    let mut stream = listing_stream(&args, limit)?;
    let mut saved: Option<recon::plan_file::Writer> = None;
    let mut listed = Vec::new();
    let changeset = match &args.save {
        Some(path) => {
            // Every change goes to the plan file; the listing shows the first `limit`.
            let mut sink = |shell: &recon::Changeset, change: recon::Change| {
                if saved.is_none() {
                    saved = Some(recon::plan_file::Writer::create(path, &job, shell)?);
                }
                if let Some(w) = saved.as_mut() {
                    w.change(&change)?;
                }
                list(&mut stream, &mut listed, limit, shell, change)
            };
            recon::plan_for_review(&job, &progress, &mut sink).await?
        }
        None => {
            let mut sink = |shell: &recon::Changeset, change: recon::Change| {
                list(&mut stream, &mut listed, limit, shell, change)
            };
            recon::plan_streaming(&job, limit, &progress, &mut sink).await?
        }
    };
    let mut changeset = changeset;
    changeset.changes = listed;
    match stream {
        Some(out) => out.finish(&changeset)?,
        None => report::emit(
            &report::render(&changeset, args.format),
            args.output.as_deref(),
        )?,
    }
    if let Some(path) = &args.save {
        let writer = match saved {
            Some(w) => w,
            None => recon::plan_file::Writer::create(path, &job, &changeset)?,
        };
        let digest = writer.finish(changeset.summary)?;
        note(&format!(
            "plan saved to {} ({} changes, {digest}); after review: recon apply {} --plan {}",
            path.display(),
            changeset.summary.changes(),
            job.file.display(),
            path.display()
        ));
    }
    Ok(if args.exit_code && changeset.summary.changes() > 0 {
        EXIT_DRIFT
    } else {
        0
    })
}

/// The streamed output for json, jsonl and csv (written change by change); `None` for the
/// formats rendered whole.
fn listing_stream(args: &PlanArgs, limit: Option<usize>) -> recon::Result<Option<report::Stream>> {
    Ok(match args.format.streams() {
        true => Some(report::Stream::new(
            args.format,
            args.output.as_deref(),
            limit,
        )?),
        false => None,
    })
}

/// Hand a change to the streamed output, or keep it for the listing, while the listing has room.
fn list(
    stream: &mut Option<report::Stream>,
    listed: &mut Vec<recon::Change>,
    limit: Option<usize>,
    shell: &recon::Changeset,
    change: recon::Change,
) -> recon::Result<()> {
    match stream {
        Some(out) => out.change(shell, &change),
        None if limit.is_none_or(|n| listed.len() < n) => {
            listed.push(change);
            Ok(())
        }
        None => Ok(()),
    }
}

/// `recon plan --show PLAN`: a saved plan, in any format, read a change at a time.
fn show_plan(path: &std::path::Path, args: &PlanArgs) -> recon::Result<u8> {
    let plan = recon::plan_file::Plan::open(path)?;
    let limit = args.limit.or(args.format.default_limit());
    let mut changeset = plan.shell();
    let mut stream = listing_stream(args, limit)?;
    let mut listed = Vec::new();
    for change in plan.changes()? {
        if stream.is_none() && limit.is_some_and(|n| listed.len() >= n) {
            break;
        }
        list(&mut stream, &mut listed, limit, &changeset, change?)?;
    }
    changeset.changes = listed;
    match stream {
        Some(out) => out.finish(&changeset)?,
        None => {
            let mut text = format!(
                "plan of job `{}`, computed {} ({})\n",
                plan.header.job, plan.header.created_at, plan.trailer.digest
            );
            text.push_str(&report::render(&changeset, args.format));
            report::emit(&text, args.output.as_deref())?
        }
    }
    Ok(if args.exit_code && changeset.summary.changes() > 0 {
        EXIT_DRIFT
    } else {
        0
    })
}

/// A line for people on stderr.
#[allow(clippy::print_stderr)]
fn note(text: &str) {
    eprintln!("{text}");
}

async fn apply(args: ApplyArgs, progress: Progress) -> recon::Result<u8> {
    let job = load(&args.job)?;
    let options = recon::ApplyOptions {
        max_changes: args.max_changes,
        force: args.force,
        allow_empty_source: args.allow_empty_source,
        // Streamed formats read the changes back from the spool: none is kept in memory.
        list: if args.format.streams() {
            Some(0)
        } else {
            args.limit.or(args.format.default_limit())
        },
    };
    let report = match &args.plan {
        Some(plan) => {
            recon::reviewed::apply_plan(&job, plan, args.max_age, &options, &progress).await?
        }
        None => recon::apply(&job, &options, &progress).await?,
    };
    if args.format.streams() {
        report::write_apply(&report, args.format, args.output.as_deref(), args.limit)?;
    } else {
        report::emit(
            &report::render_apply(&report, args.format),
            args.output.as_deref(),
        )?;
    }
    Ok(if report.failed.is_empty() {
        0
    } else {
        EXIT_PARTIAL
    })
}

async fn audit(args: AuditArgs, progress: Progress) -> recon::Result<u8> {
    let job = load(&args.job)?;
    let audit = recon::audit::audit(&job, args.samples, &progress).await?;
    report::emit(
        &report::render_audit(&audit, args.format),
        args.output.as_deref(),
    )?;
    let share = audit.share(audit.drift());
    let over = args.fail_above.is_some_and(|limit| share > limit);
    Ok(if over || (args.exit_code && audit.drift() > 0) {
        EXIT_DRIFT
    } else {
        0
    })
}

async fn state(command: StateCommand) -> recon::Result<u8> {
    match command {
        StateCommand::Get { job } => {
            let value = recon::State::open(&load(&job)?).await?.get().await?;
            if let Some(v) = value {
                report::emit(&format!("{v}\n"), None)?;
            }
        }
        StateCommand::Set { job, value } => {
            let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            recon::State::open(&load(&job)?)
                .await?
                .set(Some(&value), "state set")
                .await?;
        }
        StateCommand::Reset { job } => {
            recon::State::open(&load(&job)?)
                .await?
                .set(None, "state reset")
                .await?;
        }
        StateCommand::History { job, limit, format } => {
            let runs = recon::State::open(&load(&job)?)
                .await?
                .history(limit)
                .await?;
            report::emit(&report::render_history(&runs, format), None)?;
        }
    }
    Ok(0)
}

async fn check(job: &Job, progress: &Progress) -> recon::Result<u8> {
    let found = recon::check::check(job, progress).await;
    let mut text = format!(
        "job `{}` ({}): the file is valid\n",
        job.name,
        job.file.display()
    );
    for line in &found.reached {
        text.push_str(&format!("reached {line}\n"));
    }
    for pair in &found.pairs {
        text.push_str(&format!("{pair}\n"));
    }
    for note in &found.notes {
        text.push_str(&format!("{note}\n"));
    }
    if found.ok() {
        text.push_str("ok: both sides and the state store are reachable, and every mapped column exists and compares\n");
        report::emit(&text, None)?;
        return Ok(0);
    }
    report::emit(&text, None)?;
    for problem in found.problems.iter().take(100) {
        print_error(problem);
    }
    if found.problems.len() > 100 {
        print_problems::<String>(&[format!(
            "… and {} more problems",
            found.problems.len() - 100
        )]);
    }
    Ok(1)
}

fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter};
    // The drivers (sqlx) stay at `error` at every verbosity: their warnings can carry connection
    // parameters and `.pgpass` lines, values included.
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn,sqlx=error",
        (false, 1) => "warn,sqlx=error,recon=info",
        (false, 2) => "warn,sqlx=error,recon=debug",
        (false, _) => "info,sqlx=error,recon=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RECON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour)
        .with_filter(filter)
        .with_filter(filter::filter_fn(|meta| !may_carry_secret(meta)));
    tracing_subscriber::registry().with(layer).init();
}

/// A driver event whose fields may hold a secret: sqlx's "ignoring unrecognized connect
/// parameter key=… value=…" and "Malformed line in pgpass file line=…". Dropped whatever the
/// filter (`RECON_LOG` included) says.
fn may_carry_secret(meta: &tracing::Metadata<'_>) -> bool {
    !meta.target().starts_with("recon")
        && meta
            .fields()
            .iter()
            .any(|f| matches!(f.name(), "value" | "line" | "password" | "url"))
}

/// Problems listed under an error: the first hundred, then how many more (a job file with
/// thousands of bad mappings should not flood the terminal).
#[allow(clippy::print_stderr)]
fn print_problems<T: std::fmt::Display>(problems: &[T]) {
    const SHOWN: usize = 100;
    let mut text = String::new();
    for p in problems.iter().take(SHOWN) {
        text.push_str(&format!("  {p}\n"));
    }
    if problems.len() > SHOWN {
        text.push_str(&format!("  … and {} more\n", problems.len() - SHOWN));
    }
    eprint!("{text}");
}

/// `error: …`, then each `caused by: …`, then `hint: …`, on stderr.
#[allow(clippy::print_stderr)]
fn print_error(error: &Error) {
    eprintln!("error: {error}");
    match error {
        Error::InvalidJob(problems) => print_problems(problems),
        Error::Mapping(problems) => print_problems(problems),
        _ => {}
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        eprintln!("caused by: {cause}");
        source = cause.source();
    }
    if let Some(hint) = error.hint() {
        eprintln!("hint: {hint}");
    }
}
