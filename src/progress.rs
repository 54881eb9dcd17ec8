//! Progress on stderr: one line per side while snapshots load ("source: 120,000 rows read in 2s
//! (60,000/s)"), then the comparison, then writes. Hidden
//! when stderr is not a terminal or when `--no-progress`/`--quiet` is given, so piped and cron
//! output stays clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::Side;

/// The progress display of one command run. Cheap to clone.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Progress shown on stderr when `enabled` and stderr is a terminal.
    pub fn stderr(enabled: bool) -> Progress {
        let shown = enabled && std::io::stderr().is_terminal();
        Progress {
            multi: shown.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// No progress at all (library use, tests).
    pub fn hidden() -> Progress {
        Progress { multi: None }
    }

    /// A counter of rows read for one side.
    pub fn rows(&self, side: Side) -> RowCounter {
        let Some(multi) = &self.multi else {
            return RowCounter(ProgressBar::hidden());
        };
        let style = ProgressStyle::with_template(
            "{spinner} {prefix}: {human_pos} rows read in {elapsed} ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = multi.add(
            ProgressBar::new_spinner()
                .with_style(style)
                .with_prefix(side.name()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        RowCounter(bar)
    }
}

impl Progress {
    /// A bar counting up to `total` rows (writes).
    pub fn bar(&self, label: &'static str, total: u64) -> RowCounter {
        let Some(multi) = &self.multi else {
            return RowCounter(ProgressBar::hidden());
        };
        let style = ProgressStyle::with_template(
            "{prefix}: {bar:30} {human_pos}/{human_len} rows ({per_sec}, {eta} left) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        RowCounter(multi.add(ProgressBar::new(total).with_style(style).with_prefix(label)))
    }
}

impl Progress {
    /// A spinner for a step without a count (the comparison).
    pub fn step(&self, label: &'static str) -> RowCounter {
        let Some(multi) = &self.multi else {
            return RowCounter(ProgressBar::hidden());
        };
        let style = ProgressStyle::with_template("{spinner} {prefix} for {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = multi.add(
            ProgressBar::new_spinner()
                .with_style(style)
                .with_prefix(label),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        RowCounter(bar)
    }
}

/// Rows read so far on one side.
pub struct RowCounter(ProgressBar);

impl RowCounter {
    pub fn add(&self, rows: usize) {
        self.0.inc(rows as u64);
    }

    /// Count `rows` more to come (a bar whose total grows as the work becomes known).
    pub fn grow(&self, rows: u64) {
        self.0.inc_length(rows);
    }

    pub fn done(&self) {
        self.0.finish_with_message("done");
    }
}
