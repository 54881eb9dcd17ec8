//! Crash points for the hostile tests, behind the cargo feature `failpoints` (off in normal
//! builds, where [`hit`] is empty and compiled away). With `RECON_FAILPOINT=NAME[:N]` the N-th
//! time (default the first) the run reaches point NAME, the process aborts on the spot — no
//! destructor, flush or rollback runs — as a kill or a power cut would leave it. Points:
//! `after-read` (both snapshots read), `mid-batch` (a batch's statement run, its transaction not
//! committed), `before-state` (the destination committed, the state not), `in-state-commit`
//! (the run's rows inserted in the state transaction, not committed), `mid-plan` (a reviewed
//! plan checked, before its writes) and `mid-http-write` (an HTTP write answered).
//! tests/soak.sh runs the full soak with the feature on.

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("RECON_FAILPOINT") else {
        return;
    };
    let (point, nth) = spec
        .split_once(':')
        .map_or((spec.as_str(), 1), |(p, n)| (p, n.parse().unwrap_or(1)));
    if point == name && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("recon: failpoint {name}:{nth}");
        }
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_: &str) {}
