//! HTTP faults against a scripted server on 127.0.0.1 (tests/support/scripted.rs): each ends in
//! a retry that succeeds or a clear error naming the endpoint, within a bounded time, and never in
//! a duplicate record or a credential sent elsewhere.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::scripted::{Reply, serve};
use crate::support::*;

/// A SQLite source of two orders and a job writing them to `url` (records under `/items`).
async fn job(f: &Folder, url: &str, extra: &str) {
    let db = f
        .sqlite(
            "source.db",
            "CREATE TABLE orders (code TEXT PRIMARY KEY, total REAL);
             INSERT INTO orders VALUES ('A-1', 1.5), ('A-2', 2.5);",
        )
        .await;
    f.write(
        "job.toml",
        &format!(
            r#"[source]
url = "sqlite://{}"
table = "orders"
[destination]
url = "{url}/items"
id = "id"
[destination.http]
records = "/items"
timeout = "1s"
retries = 2
{extra}
[match]
code = "code"
[compare]
total = "total"
"#,
            db.display()
        ),
    );
}

fn items(records: Value) -> Reply {
    Reply::Json(200, json!({ "items": records }).to_string())
}

fn both() -> Value {
    json!([{"id": "1", "code": "A-1", "total": 1.5}, {"id": "2", "code": "A-2", "total": 2.5}])
}

#[tokio::test]
async fn a_server_error_is_retried_and_the_listing_succeeds() {
    let server = serve(|n, _| match n {
        0 => Reply::Json(500, r#"{"message": "try again"}"#.into()),
        _ => items(both()),
    });
    let f = Folder::new();
    job(&f, &server.url, "").await;
    let (code, out, err) = recon(&["plan", "job.toml", "--exit-code"], f.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let server = serve(|n, _| match n {
        0 => Reply::Full(
            429,
            vec![("Retry-After".into(), "1".into())],
            "{}".into(),
            "application/json",
        ),
        _ => items(both()),
    });
    let f = Folder::new();
    job(&f, &server.url, "").await;
    let started = Instant::now();
    let (code, out, err) = recon(&["plan", "job.toml", "--exit-code"], f.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn truncated_json_and_an_html_page_are_clear_errors() {
    for (body, kind, expect) in [
        (
            r#"{"items": [{"id": "1", "code": "A-"#,
            "application/json",
            "EOF while parsing",
        ),
        (
            "<html><body><h1>Service down for maintenance</h1></body></html>",
            "text/html",
            "Service down for maintenance",
        ),
    ] {
        let server = serve(move |_, _| Reply::Full(200, Vec::new(), body.into(), kind));
        let f = Folder::new();
        job(&f, &server.url, "").await;
        let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("is not JSON") && err.contains(expect), "{err}");
        assert!(err.contains(&format!("{}/items", server.url)), "{err}");
    }
}

#[tokio::test]
async fn a_cursor_that_cycles_stops_with_an_error() {
    let server = serve(|_, _| {
        Reply::Json(
            200,
            json!({"items": [{"id": "1", "code": "A-1", "total": 1.5}], "next": "same"})
                .to_string(),
        )
    });
    let f = Folder::new();
    job(
        &f,
        &server.url,
        "next = { pointer = \"/next\", param = \"cursor\" }",
    )
    .await;
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("came back to a page it had already read"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 2);
    assert!(server.requests()[1].target.contains("cursor=same"));
}

#[tokio::test]
async fn credentials_never_follow_a_redirect_to_another_origin() {
    let other = serve(|_, _| items(both()));
    let target = format!("{}/items", other.url);
    let server = serve(move |_, _| {
        Reply::Full(
            302,
            vec![("Location".into(), target.clone())],
            String::new(),
            "text/plain",
        )
    });
    let f = Folder::new();
    job(
        &f,
        &server.url,
        "headers = { Authorization = \"Bearer canary-token-4711\", X-Api-Key = \"canary-key-4711\" }",
    )
    .await;
    let (code, out, err) = recon(&["plan", "job.toml", "--exit-code"], f.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let first = &server.requests()[0];
    assert_eq!(
        first.header("authorization"),
        Some("Bearer canary-token-4711")
    );
    assert_eq!(first.header("x-api-key"), Some("canary-key-4711"));
    let elsewhere = other.requests();
    assert_eq!(elsewhere.len(), 1);
    assert_eq!(elsewhere[0].header("authorization"), None);
    assert_eq!(elsewhere[0].header("x-api-key"), None);
    assert!(!out.contains("canary") && !err.contains("canary"));
}

#[tokio::test]
async fn a_stalled_body_times_out_within_the_configured_time() {
    let server = serve(|_, _| Reply::Stall(r#"{"items": ["#.into(), Duration::from_secs(30)));
    let f = Folder::new();
    job(&f, &server.url, "").await;
    let started = Instant::now();
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no complete answer within 1s"), "{err}");
    // Three attempts of one second each, and backoff between them.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn a_create_that_timed_out_after_the_server_stored_it_is_not_duplicated() {
    let stored: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = stored.clone();
    let server = serve(move |_, seen| {
        let mut store = store.lock().unwrap();
        if seen.method == "POST" {
            let mut record: Value = serde_json::from_str(&seen.body).unwrap();
            record["id"] = json!(format!("r{}", store.len() + 1));
            store.push(record);
            // Stored, but the answer never comes in time.
            return Reply::Stall("{".into(), Duration::from_secs(5));
        }
        items(Value::Array(store.clone()))
    });
    let f = Folder::new();
    job(&f, &server.url, "concurrency = 1").await;
    let (code, out, err) = recon(
        &["apply", "job.toml", "-f", "json", "--force"],
        f.dir.path(),
    );
    assert_eq!(code, 3, "{out}{err}");
    let doc = json(&out);
    assert_eq!(doc["failed"], 2, "{doc}");
    assert!(
        doc.to_string().contains("not repeated in this run"),
        "{doc}"
    );
    let posts = |s: &crate::support::scripted::Scripted| {
        s.requests().iter().filter(|r| r.method == "POST").count()
    };
    // Each create was sent once: a POST whose answer is lost is not retried.
    assert_eq!(posts(&server), 2);
    // The next run sees both records landed: nothing to insert, no duplicate.
    let (code, out, err) = recon(
        &["apply", "job.toml", "-f", "json", "--force"],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["applied"]["insert"], 0);
    assert_eq!(posts(&server), 2);
    assert_eq!(stored.lock().unwrap().len(), 2);
    assert_plan_empty(f.dir.path(), "job.toml");
}

/// Five records served two at a time, by the paging style the request asks for.
fn paged(_: usize, seen: &crate::support::scripted::Seen) -> Reply {
    let all: Vec<Value> = (1..=5)
        .map(|i| json!({"id": i.to_string(), "code": format!("A-{i}"), "total": i as f64 + 0.5}))
        .collect();
    let query = |name: &str| {
        seen.target
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let start = query("offset").or(query("after")).unwrap_or(0);
    let page: Vec<Value> = all.iter().skip(start).take(2).cloned().collect();
    let next = start + 2;
    let more = next < all.len();
    if seen.target.contains("style=link") {
        let headers = match more {
            true => vec![(
                "Link".into(),
                format!("</items?style=link&offset={next}>; rel=\"next\""),
            )],
            false => Vec::new(),
        };
        return Reply::Full(
            200,
            headers,
            json!({"items": page}).to_string(),
            "application/json",
        );
    }
    let next_url = more.then(|| format!("/items?style=url&after={next}"));
    items_with(page, next_url)
}

fn items_with(page: Vec<Value>, next: Option<String>) -> Reply {
    Reply::Json(200, json!({"items": page, "next": next}).to_string())
}

#[tokio::test]
async fn offset_next_url_and_link_header_paging_read_every_page_within_the_rate_limit() {
    for (style, paging) in [
        (
            "offset",
            "offset = { param = \"offset\", limit_param = \"limit\", size = 2 }",
        ),
        ("url", "next = \"/next\""),
        ("link", "link_header = true"),
    ] {
        let server = serve(paged);
        let f = Folder::new();
        let extra = format!("{paging}\nparams = {{ style = \"{style}\" }}\nrate_limit = \"10/s\"");
        job(&f, &server.url, &extra).await;
        let started = Instant::now();
        let (code, out, err) = recon(
            &["plan", "job.toml", "-f", "json", "--limit", "0"],
            f.dir.path(),
        );
        assert_eq!(code, 0, "{style}: {err}");
        let s = json(&out)["summary"].clone();
        assert_eq!(s["destination_rows"], 5, "{style}: {s}");
        assert_eq!(
            (s["update"].as_u64(), s["delete"].as_u64()),
            (Some(0), Some(3)),
            "{style}: {s}"
        );
        assert_eq!(server.requests().len(), 3, "{style}");
        // Three requests at 10 a second: at least 0.2 s between the first and the last.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{style}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn an_answer_larger_than_max_body_is_refused() {
    let big = json!({"items": (0..200).map(|i| json!({"id": i.to_string(), "code": format!("C-{i}"), "total": 1})).collect::<Vec<_>>()}).to_string();
    let server = serve(move |_, _| Reply::Json(200, big.clone()));
    let f = Folder::new();
    job(&f, &server.url, "max_body = \"2KB\"").await;
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("larger than max_body (2048 bytes)"), "{err}");
}
