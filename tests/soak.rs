//! The crash soak: applies of an incremental PostgreSQL job, each killed — at a random time, or
//! (built with `--features failpoints`) at a random crash point — while the source keeps moving,
//! then one clean run. After it the destination equals the source, no key is there twice, the
//! state store passes `PRAGMA integrity_check`, and a full comparison finds nothing: the
//! watermark never passed a row that was not written. `RECON_SOAK_KILLS` sets the number of
//! killed applies (default 8 here; tests/soak.sh runs 50).

use std::time::Duration;

use crate::support::*;

/// A small deterministic generator (the seed is printed, to replay a failure).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

const POINTS: &[&str] = &["after-read", "mid-batch", "before-state", "in-state-commit"];

fn job(url: &str, incremental: bool) -> String {
    let cursor = if incremental { "cursor = \"at\"\n" } else { "" };
    format!(
        "name = \"soak\"\n[source]\nurl = \"{url}\"\ntable = \"s\"\n{cursor}[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nname = \"name\"\nqty = \"qty\"\nat = \"at\"\n[write]\nbatch_size = 50\n"
    )
}

#[tokio::test]
#[allow(clippy::print_stderr)] // the seed, to replay a failure
async fn applies_killed_at_random_converge_on_the_next_clean_run() {
    let kills: usize = std::env::var("RECON_SOAK_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("soak seed {seed}, {kills} kills");
    let mut rng = Lcg(seed);
    // No unique key in the destination: a replayed insert would show as a duplicate.
    let url = postgres(
        "soak",
        "CREATE TABLE s (k int, name text, qty int, at timestamptz);
         INSERT INTO s SELECT g, 'n' || g, g, '2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, 3000) g;
         CREATE TABLE d (id serial, k int, name text, qty int, at timestamptz);",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, true));
    f.write(
        "full.toml",
        &job(&url, false).replace("name = \"soak\"", "name = \"soak-full\""),
    );
    let mut crashed = 0;
    for round in 0..kills {
        // The source moves between runs: updates (with a new cursor value) and inserts.
        pg_exec(
            &url,
            &format!(
                "UPDATE s SET qty = qty + 1, at = clock_timestamp() WHERE k % 97 = {m};
                 INSERT INTO s SELECT 10000 * ({round} + 1) + g, 'new', g, clock_timestamp() FROM generate_series(1, 40) g;",
                m = rng.next(97)
            ),
        )
        .await;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_recon"));
        cmd.args(["apply", "job.toml", "--force", "-q"])
            .current_dir(f.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let by_point = cfg!(feature = "failpoints") && rng.next(2) == 0;
        if by_point {
            let point = POINTS[rng.next(POINTS.len() as u64) as usize];
            // Every point is reached once a run; a run writes a few batches.
            let nth = if point == "mid-batch" {
                1 + rng.next(3)
            } else {
                1
            };
            cmd.env("RECON_FAILPOINT", format!("{point}:{nth}"));
        }
        let mut child = cmd.spawn().expect("recon");
        if !by_point {
            std::thread::sleep(Duration::from_millis(100 + rng.next(900)));
            let _ = child.kill();
        }
        // Bounded: a run that neither crashed nor finished in 120 s is a hang.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                // SIGABRT: the process stopped itself at its crash point.
                if by_point && std::os::unix::process::ExitStatusExt::signal(&status) == Some(6) {
                    crashed += 1;
                }
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "an apply hung (seed {seed})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if cfg!(feature = "failpoints") && kills >= 8 {
        assert!(crashed > 0, "no crash point was reached (seed {seed})");
    }
    eprintln!("{crashed} runs stopped at a crash point");
    // One clean run finishes the job.
    let (code, _, err) = recon(&["apply", "job.toml", "--force"], f.dir.path());
    assert_eq!(code, 0, "seed {seed}: {err}");
    assert_eq!(
        pg_count(&url, "SELECT count(*) - count(DISTINCT k) FROM d").await,
        0,
        "duplicate keys (seed {seed})"
    );
    assert_eq!(
        pg_difference(
            &url,
            "SELECT k, name, qty, at FROM s",
            "SELECT k, name, qty, at FROM d"
        )
        .await,
        0,
        "the destination differs from the source (seed {seed})"
    );
    // A full comparison (no watermark) agrees: no row was ever skipped past.
    assert_plan_empty(f.dir.path(), "full.toml");
    let state = f.path(".recon/state.db");
    let check = sqlite_text(&state, "PRAGMA integrity_check").await;
    assert_eq!(check, [Some("ok".to_string())], "seed {seed}");
}
