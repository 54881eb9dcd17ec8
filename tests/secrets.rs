//! Secrets that used to be printed, and robustness and output defects (issue "Nothing silently
//! wrong"). Secret tests plant a canary in every place a credential can go and grep stdout,
//! stderr at `-vv` and `RECON_LOG=trace`, reports and the state store for it.

use crate::support::*;
use std::path::Path;

const CANARY: &str = "CanaryS3cret";

/// Every file under `dir`, as bytes: the state store, locks, reports.
fn files_contain(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && String::from_utf8_lossy(&bytes).contains(needle)
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

/// Run recon at `-vv` and at `RECON_LOG=trace`; the canary must appear nowhere.
fn assert_no_canary(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> i32 {
    let mut verbose = args.to_vec();
    verbose.push("-vv");
    let (code, out, err) = recon_env(&verbose, dir, env);
    assert!(
        !out.contains(CANARY) && !err.contains(CANARY),
        "{args:?}: {out}{err}"
    );
    let mut traced = env.to_vec();
    traced.push(("RECON_LOG", "trace"));
    let (_, out, err) = recon_env(args, dir, &traced);
    assert!(
        !out.contains(CANARY) && !err.contains(CANARY),
        "{args:?} (trace): {out}{err}"
    );
    code
}

#[tokio::test]
async fn a_password_url_parameter_never_reaches_output_logs_or_state() {
    let url = postgres(
        "canary",
        "CREATE TABLE s (k text, v int); INSERT INTO s VALUES ('a', 1);",
    )
    .await;
    let secret_url = format!("{url}?sslmode=disable&password={CANARY}");
    let f = Folder::new();
    f.write("d.csv", "k,v\n");
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{secret_url}\"\ntable = \"s\"\n[destination]\nurl = \"d.csv\"\n[match]\nk = \"k\"\n[state]\nurl = \"{secret_url}\"\n"),
    );
    assert_eq!(
        assert_no_canary(f.dir.path(), &["check", "job.toml"], &[]),
        0
    );
    assert_eq!(
        assert_no_canary(f.dir.path(), &["plan", "job.toml"], &[]),
        0
    );
    assert_eq!(
        assert_no_canary(f.dir.path(), &["plan", "job.toml", "-o", "out.txt"], &[]),
        0
    );
    assert_eq!(
        assert_no_canary(f.dir.path(), &["state", "history", "job.toml"], &[]),
        0
    );
    // A failure prints the url: redacted too.
    let unreachable =
        format!("postgres://postgres@127.0.0.1:1/db?sslmode=disable&password={CANARY}");
    f.write(
        "down.toml",
        &format!("[source]\nurl = \"{unreachable}\"\ntable = \"s\"\n[destination]\nurl = \"d.csv\"\n[match]\nk = \"k\"\n"),
    );
    assert_eq!(
        assert_no_canary(f.dir.path(), &["plan", "down.toml"], &[]),
        1
    );
    assert!(
        files_contain(f.dir.path(), CANARY)
            .iter()
            .all(|p| p.ends_with(".toml"))
    );
    let in_state = pg_count(
        &url,
        &format!("SELECT count(*) FROM recon.runs WHERE message LIKE '%{CANARY}%'"),
    )
    .await;
    assert_eq!(in_state, 0);
}

#[test]
fn unknown_url_parameters_are_refused_by_name_never_by_value() {
    let f = Folder::new();
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"postgres://u@127.0.0.1/db?sslmod={CANARY}&passwd={CANARY}\"\ntable = \"s\"\n[destination]\nurl = \"d.csv\"\n[match]\nk = \"k\"\n"),
    );
    let (code, _, err) = recon(&["plan", "job.toml", "-vv"], f.dir.path());
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("unknown connection parameter `sslmod`"),
        "{err}"
    );
    assert!(!err.contains(CANARY), "{err}");
    assert_no_canary(f.dir.path(), &["check", "job.toml"], &[]);
}

#[test]
fn a_password_holding_a_slash_or_an_unclosed_variable_is_never_printed() {
    let f = Folder::new();
    let job = |url: &str| {
        format!(
            "[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"d.csv\"\n[match]\nk = \"k\"\n"
        )
    };
    f.write(
        "slash.toml",
        &job(&format!("postgres://u:{CANARY}/x?y@127.0.0.1:1/db")),
    );
    f.write(
        "open.toml",
        &job(&format!("postgres://u:{CANARY}@127.0.0.1:1/${{DB")),
    );
    assert_eq!(
        assert_no_canary(f.dir.path(), &["plan", "slash.toml"], &[]),
        1
    );
    assert_eq!(
        assert_no_canary(f.dir.path(), &["plan", "open.toml"], &[]),
        78
    );
    let (_, _, err) = recon(&["check", "open.toml"], f.dir.path());
    assert!(err.contains("without a closing"), "{err}");
}

#[tokio::test]
async fn a_malformed_pgpass_line_never_reaches_the_log() {
    use std::os::unix::fs::PermissionsExt;
    let url = postgres(
        "pgpass",
        "CREATE TABLE s (k text); INSERT INTO s VALUES ('a');",
    )
    .await;
    let f = Folder::new();
    let pgpass = f.write("pgpass", &format!("this line is malformed {CANARY}\n"));
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    f.write("d.csv", "k\n");
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"d.csv\"\n[match]\nk = \"k\"\n"),
    );
    let env = [("PGPASSFILE", pgpass.to_str().unwrap())];
    assert_eq!(
        assert_no_canary(f.dir.path(), &["plan", "job.toml"], &env),
        0
    );
}

#[tokio::test]
async fn under_umask_000_state_locks_and_reports_stay_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = Folder::new();
    f.sqlite("app.db", "CREATE TABLE d (k TEXT PRIMARY KEY, v INT);")
        .await;
    f.write("s.csv", "k,v\na,1\n");
    f.write(
        "job.toml",
        "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"sqlite://app.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n",
    );
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && {r} plan job.toml --save p.plan -o plan.txt && {r} audit job.toml -f html -o audit.html && exec {r} apply job.toml -o report.txt",
            r = env!("CARGO_BIN_EXE_recon")
        ))
        .current_dir(f.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let mode = |p: &str| std::fs::metadata(f.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(".recon"), 0o700);
    assert_eq!(mode(".recon/job.lock"), 0o600);
    assert_eq!(mode(".recon/state.db"), 0o600);
    assert_eq!(mode("report.txt"), 0o600);
    // Plan files and every report, too; the store's sidecar files when they exist.
    assert_eq!(mode("p.plan"), 0o600);
    assert_eq!(mode("plan.txt"), 0o600);
    assert_eq!(mode("audit.html"), 0o600);
    for sidecar in [".recon/state.db-wal", ".recon/state.db-shm"] {
        if f.path(sidecar).exists() {
            assert_eq!(mode(sidecar), 0o600, "{sidecar}");
        }
    }
}

#[test]
fn a_job_file_of_many_mappings_is_checked_in_linear_time() {
    // 60,000 mappings: quadratic resolution took minutes for a third of this.
    let f = Folder::new();
    f.write("s.csv", "k,a\n1,2\n");
    let mut text = String::from(
        "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"s.csv\"\n[match]\nk = \"k\"\n[compare]\n",
    );
    for i in 0..60_000 {
        text.push_str(&format!("c{i} = \"d{i}\"\n"));
    }
    f.write("job.toml", &text);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recon"))
        .args(["check", "job.toml"])
        .current_dir(f.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("recon check did not finish within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
    let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(err.contains("more problems"), "{err}");
}

#[test]
fn a_job_file_that_is_not_utf8_is_an_invalid_job() {
    let f = Folder::new();
    std::fs::write(f.path("job.toml"), b"name = \"x\"\n# caf\xe9\n").unwrap();
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("job.toml:2:") && err.contains("not UTF-8"),
        "{err}"
    );
}

fn orders(f: &Folder) {
    f.write("d.csv", "k,v\n");
    f.write(
        "job.toml",
        "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"d.csv\"\n[match]\nk = \"k\"\n",
    );
}

#[test]
fn output_to_a_folder_fails_and_leaves_nothing_behind() {
    let f = Folder::new();
    f.write("s.csv", "k,v\na,1\n");
    orders(&f);
    std::fs::create_dir(f.path("out")).unwrap();
    let (code, _, err) = recon(&["plan", "job.toml", "-o", "out"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("folder"), "{err}");
    let left: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("recon-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn csv_output_tells_the_empty_string_from_null_and_tables_escape_control_bytes() {
    let f = Folder::new();
    f.sqlite(
        "s.db",
        "CREATE TABLE s (k TEXT, v TEXT); INSERT INTO s VALUES ('empty', ''), ('null', NULL), ('esc', 'red' || char(27) || '[31m' || char(13) || 'x');",
    )
    .await;
    f.sqlite("d.db", "CREATE TABLE d (k TEXT, v TEXT);").await;
    f.write(
        "job.toml",
        "[source]\nurl = \"sqlite://s.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n",
    );
    let (code, out, err) = recon(&["plan", "job.toml", "-f", "csv"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "insert,empty,,v,\"\","), "{out}");
    assert!(out.lines().any(|l| l == "insert,null,,,,"), "{out}");
    let (_, table, _) = recon(&["plan", "job.toml"], f.dir.path());
    assert!(
        !table.contains('\u{1b}') && !table.contains('\r'),
        "{table:?}"
    );
    assert!(table.contains("red\\u{1b}[31m\\rx"), "{table}");
}

#[test]
fn a_repeated_csv_header_names_the_file_and_the_column() {
    let f = Folder::new();
    f.write("s.csv", "k,v,v\na,1,2\n");
    orders(&f);
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("s.csv") && err.contains("column `v` appears twice"),
        "{err}"
    );
}
