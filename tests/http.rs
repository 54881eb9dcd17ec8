//! HTTP APIs as source and destination, configured in the job file only: a real PocketBase
//! (tests/run.sh starts it: RECON_TEST_PB_URL, RECON_TEST_PB_ADMIN) and a real GraphQL server
//! (json-graphql-server from npm, one per test on its own data: RECON_TEST_GRAPHQL_BIN).

use serde_json::{Value, json};

use crate::support::*;

/// A client for the tests' own requests (rustls needs its provider chosen, as recon does).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// PocketBase's url and a superuser token.
async fn pocketbase() -> (String, String) {
    let url = std::env::var("RECON_TEST_PB_URL")
        .expect("RECON_TEST_PB_URL is not set: run the suite with `bash tests/run.sh`");
    let admin = std::env::var("RECON_TEST_PB_ADMIN").expect("RECON_TEST_PB_ADMIN");
    let (email, password) = admin.split_once(':').expect("email:password");
    let auth: Value = client()
        .post(format!(
            "{url}/api/collections/_superusers/auth-with-password"
        ))
        .json(&json!({"identity": email, "password": password}))
        .send()
        .await
        .expect("auth")
        .json()
        .await
        .expect("auth json");
    (url, auth["token"].as_str().expect("token").to_string())
}

/// A fresh collection `name` (dropped first) with `code` (text, required), `total` (number ≥ 0),
/// `items` (number) and autodate `updated`; returns its records url.
async fn collection(name: &str) -> (String, String) {
    let (url, token) = pocketbase().await;
    let client = client();
    let _ = client
        .delete(format!("{url}/api/collections/{name}"))
        .header("Authorization", &token)
        .send()
        .await;
    let created = client
        .post(format!("{url}/api/collections"))
        .header("Authorization", &token)
        .json(&json!({
            "name": name, "type": "base",
            "listRule": null, "viewRule": null, "createRule": null, "updateRule": null, "deleteRule": null,
            "fields": [
                {"name": "code", "type": "text", "required": true},
                {"name": "total", "type": "number", "min": 0},
                {"name": "items", "type": "number"},
                {"name": "updated", "type": "autodate", "onCreate": true, "onUpdate": true}
            ]
        }))
        .send()
        .await
        .expect("create collection");
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap_or_default()
    );
    (format!("{url}/api/collections/{name}/records"), token)
}

/// Every record of a collection, by code: (total, items).
async fn records(url: &str, token: &str) -> Vec<(String, f64, i64)> {
    let doc: Value = client()
        .get(format!("{url}?perPage=500&sort=code"))
        .header("Authorization", token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("list json");
    let mut out: Vec<(String, f64, i64)> = doc["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap_or_default().to_string(),
                r["total"].as_f64().unwrap_or(f64::NAN),
                r["items"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn create(url: &str, token: &str, record: Value) {
    let r = client()
        .post(url)
        .header("Authorization", token)
        .json(&record)
        .send()
        .await
        .expect("create");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
}

/// A job writing PostgreSQL `orders` into PocketBase, 40 records a page.
fn pg_to_pocketbase(pg: &str, pb: &str) -> String {
    format!(
        r#"[source]
url = "{pg}"
table = "orders"
[destination]
url = "{pb}"
id = "id"
[destination.http]
headers = {{ Authorization = "${{PB_TOKEN}}" }}
records = "/items"
page = {{ param = "page", size_param = "perPage", size = 40, start = 1 }}
concurrency = 4
[match]
code = "code"
[compare]
total = "total"
items = "items"
[write]
deletes = true
"#
    )
}

async fn pg_orders(url: &str) -> Vec<(String, f64, i64)> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .expect("connect");
    sqlx::query_as::<_, (String, f64, i64)>(
        "SELECT code, total::float8, items::int8 FROM orders ORDER BY code",
    )
    .fetch_all(&mut conn)
    .await
    .expect("orders")
}

#[tokio::test]
async fn postgres_to_pocketbase_inserts_updates_and_deletes_over_pages() {
    let pg = postgres(
        "pb_orders",
        "CREATE TABLE orders (code text PRIMARY KEY, total numeric(10,2), items int);
         INSERT INTO orders SELECT 'A-' || lpad(g::text, 3, '0'), g * 1.25, g % 7 + 1 FROM generate_series(1, 130) g;",
    )
    .await;
    let (pb, token) = collection("recon_orders").await;
    // Records already there: one right, one wrong, one the source does not have.
    create(
        &pb,
        &token,
        json!({"code": "A-001", "total": 1.25, "items": 2}),
    )
    .await;
    create(
        &pb,
        &token,
        json!({"code": "A-002", "total": 99, "items": 3}),
    )
    .await;
    create(
        &pb,
        &token,
        json!({"code": "Z-999", "total": 1, "items": 1}),
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &pg_to_pocketbase(&pg, &pb));
    let env = [("PB_TOKEN", token.as_str())];
    let (code, out, err) = recon_env(
        &["plan", "job.toml", "-f", "json", "--limit", "0"],
        f.dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let s = json(&out)["summary"].clone();
    assert_eq!(
        (
            s["insert"].as_u64(),
            s["update"].as_u64(),
            s["delete"].as_u64()
        ),
        (Some(128), Some(1), Some(1)),
        "{s}"
    );
    let (code, out, err) = recon_env(
        &["apply", "job.toml", "-f", "json", "--force"],
        f.dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["applied"],
        json!({"insert": 128, "update": 1, "delete": 1})
    );
    assert_eq!(records(&pb, &token).await, pg_orders(&pg).await);
    // The source moves: an update, a delete, an insert.
    pg_exec(
        &pg,
        "UPDATE orders SET total = 7.5, items = 9 WHERE code = 'A-050';
                  DELETE FROM orders WHERE code = 'A-051';
                  INSERT INTO orders VALUES ('B-001', 0.5, 1);",
    )
    .await;
    let (code, out, err) = recon_env(
        &["apply", "job.toml", "-f", "json", "--force"],
        f.dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["applied"],
        json!({"insert": 1, "update": 1, "delete": 1})
    );
    assert_eq!(records(&pb, &token).await, pg_orders(&pg).await);
    let (code, out, err) = recon_env(&["plan", "job.toml", "--exit-code"], f.dir.path(), &env);
    assert_eq!(code, 0, "not converged: {out}{err}");
    // The token is a secret: no output shows it, nor the state store.
    assert!(!out.contains(&token) && !err.contains(&token));
    let store = std::fs::read(f.path(".recon/state.db")).expect("state store");
    assert!(!String::from_utf8_lossy(&store).contains(&token));
}

#[tokio::test]
async fn a_record_pocketbase_refuses_fails_alone_and_goes_through_once_fixed() {
    let pg = postgres(
        "pb_refused",
        "CREATE TABLE orders (code text PRIMARY KEY, total numeric(10,2), items int);
         INSERT INTO orders VALUES ('A-1', 10, 1), ('A-2', -5, 2), ('A-3', 30, 3);",
    )
    .await;
    let (pb, token) = collection("recon_refused").await;
    let f = Folder::new();
    f.write("job.toml", &pg_to_pocketbase(&pg, &pb));
    let env = [("PB_TOKEN", token.as_str())];
    let (code, out, err) = recon_env(
        &["apply", "job.toml", "-f", "json", "--force"],
        f.dir.path(),
        &env,
    );
    assert_eq!(code, 3, "{out}{err}");
    let doc = json(&out);
    assert_eq!(doc["applied"]["insert"], 2);
    let failed = doc["failed_rows"].as_array().expect("failed_rows").clone();
    assert_eq!(failed.len(), 1, "{doc}");
    let text = failed[0].to_string();
    assert!(text.contains("A-2"), "{text}");
    // PocketBase's own reason (the `min: 0` rule on `total`) is reported.
    assert!(text.contains("total") && text.contains("400"), "{text}");
    assert_eq!(records(&pb, &token).await.len(), 2);
    pg_exec(&pg, "UPDATE orders SET total = 5 WHERE code = 'A-2'").await;
    let (code, out, err) = recon_env(
        &["apply", "job.toml", "-f", "json", "--force"],
        f.dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(records(&pb, &token).await, pg_orders(&pg).await);
}

#[tokio::test]
async fn pocketbase_as_a_source_diffed_against_sqlite_and_read_incrementally() {
    let (pb, token) = collection("recon_source").await;
    for i in 1..=25 {
        create(
            &pb,
            &token,
            json!({"code": format!("C-{i:02}"), "total": i as f64 / 2.0, "items": i}),
        )
        .await;
    }
    let f = Folder::new();
    let db = f
        .sqlite(
            "dest.db",
            "CREATE TABLE orders (code TEXT PRIMARY KEY, total REAL, items INTEGER);
             INSERT INTO orders VALUES ('C-01', 0.5, 1), ('C-02', 9, 2), ('X-1', 1, 1);",
        )
        .await;
    let job = format!(
        r#"[source]
url = "{pb}"
cursor = "updated"
[source.http]
headers = {{ Authorization = "${{PB_TOKEN}}" }}
records = "/items"
page = {{ param = "page", size_param = "perPage", size = 10 }}
params = {{ filter = "updated >= '$watermark'", sort = "updated" }}
[source.http.schema]
updated = {{ type = "timestamptz", format = "%Y-%m-%d %H:%M:%S%.3fZ" }}
[destination]
url = "sqlite://{}"
table = "orders"
[match]
code = "code"
[compare]
total = "total"
items = "items"
"#,
        db.display()
    );
    f.write("job.toml", &job);
    let env = [("PB_TOKEN", token.as_str())];
    let (code, out, err) = recon_env(
        &["plan", "job.toml", "-f", "json", "--limit", "0"],
        f.dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let s = json(&out)["summary"].clone();
    // Three pages of 10, 10 and 5 records; in incremental mode rows outside the window are not deletes.
    assert_eq!(
        (
            s["source_rows"].as_u64(),
            s["insert"].as_u64(),
            s["update"].as_u64()
        ),
        (Some(25), Some(23), Some(1)),
        "{s}"
    );
    let (code, _, err) = recon_env(&["apply", "job.toml", "--force"], f.dir.path(), &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite_text(&db, "SELECT CAST(count(*) AS TEXT) FROM orders").await,
        vec![Some("26".into())]
    );
    // One record changes in PocketBase: the next run asks PocketBase only for records from the
    // watermark on (its filter, with the watermark in PocketBase's own format) and writes it.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let list: Value = client()
        .get(format!("{pb}?filter=code='C-07'"))
        .header("Authorization", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list["items"][0]["id"].as_str().unwrap().to_string();
    client()
        .patch(format!("{pb}/{id}"))
        .header("Authorization", &token)
        .json(&json!({"total": 70}))
        .send()
        .await
        .unwrap();
    let (code, out, err) = recon_env(
        &["apply", "job.toml", "-f", "json", "--force", "-vv"],
        f.dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["summary"]["update"], 1, "{doc}");
    assert!(
        doc["summary"]["source_rows"].as_u64().unwrap() < 25,
        "{doc}"
    );
    let asked: Vec<&str> = err.lines().filter(|l| l.contains("listing page")).collect();
    assert_eq!(asked.len(), 1, "{err}");
    assert!(
        asked[0].contains("filter=updated") && asked[0].contains("%3E%3D"),
        "{}",
        asked[0]
    );
    assert!(!err.contains(&token));
    assert_eq!(
        sqlite_text(
            &db,
            "SELECT CAST(total AS TEXT) FROM orders WHERE code = 'C-07'"
        )
        .await,
        vec![Some("70.0".into())]
    );
}

/// A json-graphql-server on `data`, on a free loopback port, killed when dropped.
struct GraphQl {
    child: std::process::Child,
    url: String,
}

impl Drop for GraphQl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn graphql(dir: &std::path::Path, data: Value) -> GraphQl {
    let bin = std::env::var("RECON_TEST_GRAPHQL_BIN")
        .expect("RECON_TEST_GRAPHQL_BIN is not set: run the suite with `bash tests/run.sh`");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.join("data.json"), data.to_string()).unwrap();
    let child = std::process::Command::new(bin)
        .args([
            "data.json",
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start json-graphql-server");
    let url = format!("http://127.0.0.1:{port}/");
    let server = GraphQl { child, url };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if client()
            .post(&server.url)
            .json(&json!({"query": "{ __typename }"}))
            .send()
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("json-graphql-server did not start within 20 s");
}

async fn graphql_orders(url: &str) -> Vec<(String, f64, i64)> {
    let doc: Value = client()
        .post(url)
        .json(&json!({"query": "{ allOrders(perPage: 1000) { code total items } }"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out: Vec<(String, f64, i64)> = doc["data"]["allOrders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap().to_string(),
                r["total"].as_f64().unwrap(),
                r["items"].as_i64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn the_same_engine_reads_and_writes_a_graphql_api_from_the_job_file_alone() {
    let f = Folder::new();
    let server = graphql(
        f.dir.path(),
        json!({"orders": [
            {"id": 1, "code": "A-1", "total": 10.5, "items": 3},
            {"id": 2, "code": "A-2", "total": 99, "items": 1},
            {"id": 3, "code": "Z-9", "total": 1, "items": 1}
        ]}),
    )
    .await;
    let db = f
        .sqlite(
            "source.db",
            "CREATE TABLE orders (code TEXT PRIMARY KEY, total REAL, items INTEGER);
             INSERT INTO orders VALUES ('A-1', 10.5, 3), ('A-2', 20, 1), ('A-3', 7.25, 4), ('A-4', 3, 2), ('A-5', 1.5, 1);",
        )
        .await;
    let job = format!(
        r#"[source]
url = "sqlite://{db}"
table = "orders"
[destination]
url = "{url}"
id = "id"
[destination.http]
records = "/data/allOrders"
page = {{ size = 2, start = 0 }}
list = {{ method = "POST", body = {{ query = "query($page: Int, $size: Int) {{ allOrders(page: $page, perPage: $size, sortField: \"id\") {{ id code total items }} }}", variables = {{ page = "$page", size = "$size" }} }} }}
create = {{ method = "POST", body = {{ query = "mutation($code: String!, $total: Float!, $items: Int!) {{ createOrder(code: $code, total: $total, items: $items) {{ id }} }}", variables = {{ code = "{{code}}", total = "{{total}}", items = "{{items}}" }} }} }}
update = {{ method = "POST", idempotent = true, body = {{ query = "mutation($id: ID!, $total: Float, $items: Int) {{ updateOrder(id: $id, total: $total, items: $items) {{ id }} }}", variables = {{ id = "{{id}}", total = "{{total}}", items = "{{items}}" }} }} }}
delete = {{ method = "POST", idempotent = true, body = {{ query = "mutation($id: ID!) {{ removeOrder(id: $id) {{ id }} }}", variables = {{ id = "{{id}}" }} }} }}
[match]
code = "code"
[compare]
total = "total"
items = "items"
[write]
deletes = true
"#,
        db = db.display(),
        url = server.url
    );
    f.write("job.toml", &job);
    let (code, out, err) = recon(
        &["plan", "job.toml", "-f", "json", "--limit", "0"],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let s = json(&out)["summary"].clone();
    assert_eq!(
        (
            s["destination_rows"].as_u64(),
            s["insert"].as_u64(),
            s["update"].as_u64(),
            s["delete"].as_u64()
        ),
        (Some(3), Some(3), Some(1), Some(1)),
        "{s}"
    );
    let (code, out, err) = recon(
        &["apply", "job.toml", "-f", "json", "--force"],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        graphql_orders(&server.url).await,
        vec![
            ("A-1".into(), 10.5, 3),
            ("A-2".into(), 20.0, 1),
            ("A-3".into(), 7.25, 4),
            ("A-4".into(), 3.0, 2),
            ("A-5".into(), 1.5, 1)
        ]
    );
    assert_plan_empty(f.dir.path(), "job.toml");
}
