//! Network faults between recon and real PostgreSQL and MariaDB servers, through a TCP fault
//! proxy (tests/support/proxy.rs): a reset mid-COPY, a stall mid-snapshot or mid-write, a server
//! that accepts and never answers. Each ends in a clear error naming the side within the
//! configured `[engine] io_timeout` — never a hang — and the next healthy run converges.

use std::time::{Duration, Instant};

use crate::support::proxy::{Fault, proxy};
use crate::support::*;

/// `url` with its port replaced by `port` (the proxy's).
fn through(url: &str, port: u16) -> String {
    let (head, rest) = url.split_once("://").unwrap();
    let (hostport, tail) = rest.split_once('/').unwrap();
    let (userhost, _) = hostport.rsplit_once(':').unwrap();
    format!("{head}://{userhost}:{port}/{tail}")
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let hostport = rest.split_once('/').unwrap().0;
    hostport
        .rsplit_once('@')
        .map_or(hostport, |(_, h)| h)
        .to_string()
}

fn job(source: &str, destination: &str) -> String {
    format!(
        "[source]\nurl = \"{source}\"\ntable = \"s\"\n[destination]\nurl = \"{destination}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[engine]\nio_timeout = \"2s\"\n"
    )
}

const TABLES: &str = "CREATE TABLE s (k int PRIMARY KEY, v text);
     INSERT INTO s SELECT g, repeat('x', 40) || g FROM generate_series(1, 60000) g;
     CREATE TABLE d (k int PRIMARY KEY, v text);";

/// Run `recon args`; it must end (within 60 s) with exit 1 and an error that contains `expect`.
fn fails_promptly(f: &Folder, args: &[&str], expect: &[&str]) {
    let started = Instant::now();
    let (code, out, err) = recon(args, f.dir.path());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 1, "{out}{err}");
    for e in expect {
        assert!(err.contains(e), "`{e}` not in: {err}");
    }
}

#[tokio::test]
async fn postgres_reset_stall_and_silence_end_in_clear_errors() {
    let url = postgres("network", TABLES).await;
    let server = host_port(&url);
    let f = Folder::new();
    // Reset in the middle of the source's COPY (about 3 MB).
    let reset = proxy(server.clone(), Fault::ResetDownAfter(500_000));
    f.write("job.toml", &job(&through(&url, reset), &url));
    fails_promptly(
        &f,
        &["plan", "job.toml"],
        &["reading the source snapshot failed"],
    );
    // The COPY stalls: no byte for longer than io_timeout.
    let stall = proxy(server.clone(), Fault::StallDownAfter(500_000));
    f.write("job.toml", &job(&through(&url, stall), &url));
    fails_promptly(&f, &["plan", "job.toml"], &["source", "io_timeout"]);
    // A server that accepts and never answers.
    let silent = proxy(server.clone(), Fault::Blackhole);
    f.write("job.toml", &job(&url, &through(&url, silent)));
    fails_promptly(
        &f,
        &["plan", "job.toml"],
        &["cannot connect to the destination", "io_timeout"],
    );
    // Writes stall after the first batches went out: the run stops; what landed stays.
    let writes = proxy(server, Fault::StallUpAfter(400_000));
    f.write("job.toml", &job(&url, &through(&url, writes)));
    fails_promptly(
        &f,
        &["apply", "job.toml", "--force"],
        &["writing", "io_timeout"],
    );
    // Healthy again: converges.
    f.write("job.toml", &job(&url, &url));
    let (code, _, err) = recon(&["apply", "job.toml", "--force"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        pg_difference(&url, "SELECT * FROM s", "SELECT * FROM d").await,
        0
    );
}

#[tokio::test]
async fn mariadb_reset_and_stall_end_in_clear_errors() {
    let url = mariadb(
        "network",
        "SET SESSION max_recursive_iterations = 100000;
         CREATE TABLE s (k int PRIMARY KEY, v text);
         INSERT INTO s WITH RECURSIVE g(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM g WHERE k < 40000)
           SELECT k, CONCAT(REPEAT('x', 40), k) FROM g;
         CREATE TABLE d (k int PRIMARY KEY, v text);",
    )
    .await;
    let server = host_port(&url);
    let f = Folder::new();
    let reset = proxy(server.clone(), Fault::ResetDownAfter(300_000));
    f.write("job.toml", &job(&through(&url, reset), &url));
    fails_promptly(
        &f,
        &["plan", "job.toml"],
        &["reading the source snapshot failed"],
    );
    let stall = proxy(server, Fault::StallDownAfter(300_000));
    f.write("job.toml", &job(&through(&url, stall), &url));
    fails_promptly(&f, &["plan", "job.toml"], &["source", "io_timeout"]);
    f.write("job.toml", &job(&url, &url));
    let (code, _, err) = recon(&["apply", "job.toml", "--force"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert_plan_empty(f.dir.path(), "job.toml");
}

#[tokio::test]
async fn an_http_listing_reset_or_stalled_mid_body_ends_in_a_clear_error() {
    use crate::support::scripted::{Reply, serve};
    // A large page: several hundred kilobytes of records.
    let records: Vec<serde_json::Value> = (0..5000)
        .map(|i| serde_json::json!({"id": i.to_string(), "code": format!("C-{i}"), "note": "x".repeat(60)}))
        .collect();
    let page = serde_json::json!({ "items": records }).to_string();
    let server = serve(move |_, _| Reply::Json(200, page.clone()));
    let origin = server.url.trim_start_matches("http://").to_string();
    let f = Folder::new();
    f.sqlite(
        "s.db",
        "CREATE TABLE s (code TEXT PRIMARY KEY, note TEXT); INSERT INTO s VALUES ('C-1', 'x');",
    )
    .await;
    let job = |port: u16| {
        format!(
            "[source]\nurl = \"sqlite://s.db\"\ntable = \"s\"\n[destination]\nurl = \"http://127.0.0.1:{port}/items\"\nid = \"id\"\n[destination.http]\nrecords = \"/items\"\ntimeout = \"2s\"\nretries = 1\n[match]\ncode = \"code\"\n"
        )
    };
    for (fault, expect) in [
        (Fault::ResetDownAfter(100_000), "the connection failed"),
        (
            Fault::StallDownAfter(100_000),
            "no complete answer within 2s",
        ),
    ] {
        let port = proxy(origin.clone(), fault);
        f.write("job.toml", &job(port));
        fails_promptly(&f, &["plan", "job.toml"], &["the destination API", expect]);
    }
    // Straight to the server: the listing reads whole.
    let port: u16 = origin.rsplit(':').next().unwrap().parse().unwrap();
    f.write("job.toml", &job(port));
    let (code, out, err) = recon(
        &["plan", "job.toml", "-f", "json", "--limit", "0"],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["summary"]["destination_rows"], 5000);
}
