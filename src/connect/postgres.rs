//! PostgreSQL snapshots through binary `COPY (SELECT …) TO STDOUT`, decoded straight into Arrow
//! (about four times faster than decoding sqlx rows). The statement is described first so each
//! column gets an exact Arrow type; columns of types recon does not decode (intervals, arrays,
//! enums, geometry, …) are read as their text form (`::text`).

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Column, ConnectOptions, Executor, SqlSafeStr, Statement, TypeInfo};

use super::pgbinary::{Decoder, PgKind};
use super::pgwire;
use crate::config::Endpoint;
use crate::error::{Error, Result, read_error};
use crate::progress::RowCounter;
use crate::sql::quote;
use crate::stage::Stager;

use crate::watermark::{Bound, ParamStyle, SourceRead, setting_text};

/// COPY messages (rows) decoded in one poll of the stream at most.
const MESSAGES_PER_POLL: usize = 4096;

/// The bound's text and the SQL type it is read back as.
fn pg_bound(bound: &Bound) -> (String, &'static str) {
    let sql_type = match bound {
        Bound::Int(_) => "bigint",
        Bound::Timestamp(_) => "timestamp",
        Bound::TimestampTz(_) => "timestamptz",
        Bound::Date(_) => "date",
    };
    let text = match bound {
        Bound::TimestampTz(_) => format!("{}+00", bound.text()),
        _ => bound.text(),
    };
    (text, sql_type)
}

/// Connection options from a url. Without an explicit `sslmode`, a server that is not on this
/// machine must speak TLS (`require`): sqlx's own default, `prefer`, falls back to plaintext
/// silently. `?sslmode=disable` (or `prefer`) in the url opts out.
pub fn pg_options(url: &str) -> std::result::Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let explicit = url.to_ascii_lowercase().contains("sslmode=");
    Ok(if explicit || on_this_machine(&options) {
        options
    } else {
        options.ssl_mode(sqlx::postgres::PgSslMode::Require)
    })
}

/// A Unix socket, `localhost` or a loopback address.
pub fn on_this_machine(options: &PgConnectOptions) -> bool {
    let host = options.get_host().trim_matches(|c| c == '[' || c == ']');
    options.get_socket().is_some()
        || host.starts_with('/')
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub async fn connect(endpoint: &Endpoint, url: &str) -> Result<PgConnection> {
    let connect_error = |source| Error::Connect {
        side: endpoint.side,
        url: endpoint.location.display(),
        source,
    };
    let options = pg_options(url).map_err(connect_error)?;
    let options = options.application_name("recon");
    super::within(endpoint.io_timeout, options.connect())
        .await
        .map_err(connect_error)
}

/// Read the endpoint's snapshot; `limit` caps the rows (used by `check` to sample).
pub async fn snapshot(
    endpoint: &Endpoint,
    url: &str,
    limit: Option<usize>,
    counter: &RowCounter,
    read: Option<&SourceRead>,
    out: &mut Stager,
    vote: Option<super::RangeVote>,
) -> Result<()> {
    let side = endpoint.side;
    // The COPY's own connection is opened while this one describes the query and reads the
    // table's statistics (a connection costs the server a new process: ~5 ms here).
    let wire = tokio::spawn({
        let (endpoint, url) = (endpoint.clone(), url.to_string());
        async move { own_connection(&endpoint, &url).await }
    });
    let mut conn = connect(endpoint, url).await?;
    let window = read.and_then(|r| r.window.as_ref());
    // COPY takes no parameters: values are bound into session settings instead.
    let (select, params) = super::state_params(&endpoint.relation, read, ParamStyle::Setting);
    // The settings the COPY's query reads, made again (bound) on a connection of
    // src/connect/pgwire.rs.
    let mut settings = Vec::new();
    for (i, value) in params.iter().enumerate() {
        let name = format!("recon.p{}", i + 1);
        let text = setting_text(value);
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(&name)
            .bind(&text)
            .execute(&mut conn)
            .await
            .map_err(|e| read_error(side, "binding the saved state", e))?;
        settings.push((name, text));
    }
    let filter = match window {
        Some(w) => {
            let (text, sql_type) = pg_bound(&w.lower);
            sqlx::query("SET TimeZone = 'UTC'")
                .execute(&mut conn)
                .await
                .map_err(|e| read_error(side, "setting the session time zone", e))?;
            sqlx::query("SELECT set_config('recon.lower', $1, false)")
                .bind(&text)
                .execute(&mut conn)
                .await
                .map_err(|e| read_error(side, "binding the watermark", e))?;
            settings.push(("recon.lower".to_string(), text));
            format!(
                " WHERE q.{} >= current_setting('recon.lower')::{sql_type}",
                quote(&w.column)
            )
        }
        None => String::new(),
    };
    let described = (&mut conn)
        .prepare(AssertSqlSafe(select.clone()).into_sql_str())
        .await
        .map_err(|e| read_error(side, format!("preparing `{select}`"), e))?;
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut projection = Vec::new();
    for column in described.columns() {
        let name = column.name().to_string();
        let kind = PgKind::from_type_name(column.type_info().name());
        projection.push(match kind {
            Some(_) => format!("q.{}", quote(&name)),
            None => format!("q.{}::text AS {}", quote(&name), quote(&name)),
        });
        kinds.push(kind.unwrap_or(PgKind::Text));
        names.push(name);
    }
    let filter = match read.and_then(|r| r.keys.as_ref()) {
        Some(keys) => {
            sqlx::query("SELECT set_config('recon.keys', $1, false)")
                .bind(&keys.json)
                .execute(&mut conn)
                .await
                .map_err(|e| read_error(side, "binding the window's keys", e))?;
            settings.push(("recon.keys".to_string(), keys.json.clone()));
            let mut columns = Vec::new();
            let mut values = Vec::new();
            for (i, name) in keys.columns.iter().enumerate() {
                let column = described.columns().iter().find(|c| c.name() == name);
                let sql_type =
                    column.map_or("text".to_string(), |c| c.type_info().name().to_string());
                columns.push(format!("q.{}", quote(name)));
                values.push(format!("(e->>{i})::{sql_type}"));
            }
            let joiner = if filter.is_empty() { " WHERE" } else { " AND" };
            format!(
                "{filter}{joiner} ({}) IN (SELECT {} FROM jsonb_array_elements(current_setting('recon.keys')::jsonb) AS e)",
                columns.join(", "),
                values.join(", ")
            )
        }
        None => filter,
    };
    let limit = limit.map_or(String::new(), |n| format!(" LIMIT {n}"));
    let copy = format!(
        "COPY (SELECT {} FROM ({select}) AS q{filter}{limit}) TO STDOUT (FORMAT binary)",
        projection.join(", ")
    );
    let key = out
        .bucket_key()
        .and_then(|k| names.iter().position(|n| n == k));
    // A table's statistics: its size, and its key's range.
    let integer = key.filter(|k| {
        matches!(
            kinds[*k],
            PgKind::Int2 | PgKind::Int4 | PgKind::Int8 | PgKind::Oid
        )
    });
    // A whole table read that its statistics say is more than twice what may be held is
    // staged from its first row.
    let whole = limit.is_empty() && filter.is_empty();
    let facts = match (&endpoint.relation, key) {
        (crate::config::Relation::Table(table), Some(k)) if whole || vote.is_some() => {
            table_estimate(&mut conn, table, &names[k]).await
        }
        _ => TableEstimate::default(),
    };
    // One that fits is expected to stay held, whole (see below): with an integer key, which
    // the stager counts as it goes, so that the key checks need not scan it.
    let mut held_whole = None;
    if whole && let (Some(bytes), Some(held)) = (facts.bytes, out.hold_limit()) {
        if bytes > 2 * held as u64 {
            out.skip_hold();
        } else if bytes <= held as u64 && integer.is_some() {
            held_whole = facts.rows;
        }
    }
    // An integer key may be dealt by its range, when the other side's can too (a vote, src/
    // connect/mod.rs `RangeVote`): the estimate is the key's statistics, for a table.
    if let Some(vote) = vote {
        let estimate = integer.map(|_| facts.key_range);
        let range = vote.cast(estimate).await;
        tracing::debug!(side = %side, ?estimate, ?range, "buckets by key range");
        out.by_range(range);
    }
    let mut decoder = Decoder::new(names.clone(), kinds);
    // Rows are dealt to the buckets the side is split into when it outgrows what is held
    // (src/stage.rs) as they are decoded, by the same hash (or key range), so that a staged side
    // is not copied again into its buckets (10M rows: 0.4–0.6 CPU-s less; a side that stays
    // held pays ~0.03 CPU-s a million rows for the hashing and the scattered appends).
    // A side expected to stay held is gathered in one batch instead (room for an eighth more
    // rows than its statistics count), which the diff's join builds on without copying it (1M
    // rows: ~30 ms of a ~100 ms diff); should it outgrow what is held after all, the stager
    // splits its batches into the buckets.
    if let Some(rows) = held_whole {
        decoder.first_batch(rows as usize + rows as usize / 8 + 1024);
    } else if let Some(key) = key {
        let (buckets, rows) = (crate::stage::BUCKETS, crate::stage::BUCKET_ROWS);
        decoder.deal_by(key, buckets, rows, out.range());
    }
    // A decode error is kept, and the rest of the stream read (sqlx: so that the connection
    // leaves COPY mode cleanly) or left (own connection: it is closed).
    let mut failure = None;
    let mut handle = |data: &[u8], frames: &[std::ops::Range<usize>]| {
        if failure.is_some() {
            return;
        }
        let staged = decoder.push_frames(data, frames).and_then(|done| {
            for (bucket, batch) in done {
                counter.add(batch.num_rows());
                out.push_in(bucket, batch)
                    .map_err(|e| super::pgbinary::DecodeError {
                        column: e.column,
                        message: e.message,
                    })?;
            }
            Ok(())
        });
        if let Err(e) = staged {
            failure = Some(e);
        }
    };
    match wire.await.ok().flatten() {
        Some(mut wire) => {
            drop(conn);
            wire.set(&settings)
                .await
                .map_err(|e| read_error(side, "binding the saved state", e))?;
            let utc = if window.is_some() {
                "SET TimeZone = 'UTC'; "
            } else {
                ""
            };
            wire.start_copy(&format!("{utc}{copy}"))
                .await
                .map_err(|e| read_error(side, format!("starting `{copy}`"), e))?;
            wire.copy_out(&mut handle)
                .await
                .map_err(|e| read_error(side, "reading the COPY stream", e))?;
        }
        None => copy_through_sqlx(&mut conn, endpoint, &copy, &mut handle).await?,
    }
    if let Some(e) = failure {
        return Err(read_error(side, "decoding the COPY stream", e));
    }
    let last = decoder
        .finish()
        .map_err(|e| read_error(side, "decoding the COPY stream", e))?;
    for (bucket, batch) in last {
        counter.add(batch.num_rows());
        out.push_in(bucket, batch)
            .map_err(|e| read_error(side, "decoding the COPY stream", e))?;
    }
    Ok(())
}

/// What a table's statistics (from its last VACUUM or ANALYZE) say about it.
#[derive(Debug, Default)]
struct TableEstimate {
    /// Its heap's size in bytes (`relpages`), when it has been measured.
    bytes: Option<u64>,
    /// Its rows (`reltuples`), when they have been counted.
    rows: Option<u64>,
    /// The lowest and highest value of the key column (`pg_stats`' histogram), if it has one.
    key_range: Option<(i64, i64)>,
}

/// A table's [`TableEstimate`], with `column` its key; nothing on any error: an estimate only
/// chooses how rows are held and dealt to buckets, never which rows are read.
async fn table_estimate(conn: &mut PgConnection, table: &str, column: &str) -> TableEstimate {
    let table = crate::sql::quote_table(crate::sql::Dialect::Standard, table);
    let row: Option<(i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT c.relpages::int8 * current_setting('block_size')::int8, c.reltuples::int8, \
           (SELECT s.histogram_bounds::text FROM pg_catalog.pg_stats s \
             WHERE s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = $2 \
               AND s.histogram_bounds IS NOT NULL LIMIT 1) \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(&table)
    .bind(column)
    .fetch_optional(&mut *conn)
    .await
    .ok()
    .flatten();
    let Some((bytes, rows, bounds)) = row else {
        return TableEstimate::default();
    };
    TableEstimate {
        bytes: u64::try_from(bytes).ok().filter(|b| *b > 0),
        rows: u64::try_from(rows).ok().filter(|r| *r > 0),
        key_range: bounds.as_deref().and_then(histogram_ends),
    }
}

/// The first and last value of an integer histogram as PostgreSQL prints it (`{1,250,…,9998}`).
fn histogram_ends(text: &str) -> Option<(i64, i64)> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let first = inner.split(',').next()?.trim().parse().ok()?;
    let last = inner.rsplit(',').next()?.trim().parse().ok()?;
    Some((first, last))
}

/// A connection of src/connect/pgwire.rs for the snapshot's COPY, when the server is one it
/// serves (plaintext anyway, an authentication it speaks); `None`: read through sqlx.
async fn own_connection(endpoint: &Endpoint, url: &str) -> Option<pgwire::Wire> {
    let options = pg_options(url).ok()?.application_name("recon");
    if !pgwire::eligible(&options) {
        return None;
    }
    let password = pgwire::password(url);
    match pgwire::Wire::connect(&options, password.as_deref(), endpoint.io_timeout).await {
        Ok(wire) => {
            tracing::debug!(side = %endpoint.side, "COPY over recon's own connection");
            Some(wire)
        }
        Err(reason) => {
            tracing::debug!(side = %endpoint.side, %reason, "COPY through sqlx");
            None
        }
    }
}

/// The COPY through sqlx's stream of messages.
async fn copy_through_sqlx(
    conn: &mut PgConnection,
    endpoint: &Endpoint,
    copy: &str,
    handle: &mut impl FnMut(&[u8], &[std::ops::Range<usize>]),
) -> Result<()> {
    let side = endpoint.side;
    let mut stream = conn
        .copy_out_raw(copy)
        .await
        .map_err(|e| read_error(side, format!("starting `{copy}`"), e))?;
    // PostgreSQL sends a message per row: every message already received is decoded in one
    // poll, and only a wait for more is bounded by the timeout (one timer per wait, not per row).
    loop {
        let step = super::within(
            endpoint.io_timeout,
            futures::future::poll_fn(|cx| {
                use std::task::Poll;
                // Bounded, so that a stream that never waits still lets the runtime run others.
                for taken in 0..MESSAGES_PER_POLL {
                    match stream.as_mut().poll_next(cx) {
                        Poll::Ready(Some(Ok(chunk))) => {
                            handle(&chunk, std::slice::from_ref(&(0..chunk.len())))
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                        Poll::Ready(None) => return Poll::Ready(Ok(true)),
                        Poll::Pending if taken > 0 => return Poll::Ready(Ok(false)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Poll::Ready(Ok(false))
            }),
        )
        .await
        .map_err(|e| read_error(side, "reading the COPY stream", e))?;
        if step {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgSslMode;

    #[test]
    fn an_integer_histograms_ends_are_its_estimated_range() {
        assert_eq!(histogram_ends("{-5,17,250,9998}"), Some((-5, 9998)));
        assert_eq!(histogram_ends("{42}"), Some((42, 42)));
        assert_eq!(histogram_ends("{a,b}"), None);
        assert_eq!(histogram_ends(""), None);
    }

    fn mode(url: &str) -> PgSslMode {
        pg_options(url).unwrap().get_ssl_mode()
    }

    #[test]
    fn remote_servers_must_speak_tls_unless_the_url_says_otherwise() {
        assert!(matches!(
            mode("postgres://u@db.example.com/dw"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@10.1.2.3/dw"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@db.example.com/dw?sslmode=disable"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@db.example.com/dw?sslmode=verify-full"),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode("postgres://u@127.0.0.1:5432/dw"),
            PgSslMode::Prefer
        ));
        assert!(matches!(
            mode("postgres://u@localhost/dw"),
            PgSslMode::Prefer
        ));
        assert!(matches!(mode("postgres://u@[::1]/dw"), PgSslMode::Prefer));
    }
}
