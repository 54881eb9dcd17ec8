//! Whether the destination has an index that starts with the first match column: `recon check`
//! says when it has none and what one would buy.

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions};

use crate::config::{Job, Location, Relation};
use crate::error::Result;

/// A note for `recon check` when the destination table's first match column leads no index;
/// `None` when it does, or when the destination is not a database table.
pub async fn missing_index_note(job: &Job) -> Result<Option<String>> {
    let (Relation::Table(table), Some(key)) = (&job.destination.relation, job.keys.first()) else {
        return Ok(None);
    };
    let column = key.destination.clone();
    let indexed = match &job.destination.location {
        Location::Postgres(url) => {
            let mut conn = super::postgres::connect(&job.destination, url).await?;
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                   ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                 WHERE i.indrelid = to_regclass($1) AND a.attname = $2)",
            )
            .bind(crate::sql::quote_table(
                crate::sql::Dialect::Standard,
                table,
            ))
            .bind(&column)
            .fetch_one(&mut conn)
            .await
        }
        Location::Sqlite(path) => {
            let mut conn = super::sqlite::open(&job.destination, path).await?;
            let name = crate::sql::table_name(table);
            sqlx::query_scalar::<_, bool>(AssertSqlSafe(
                "SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1) l, pragma_index_info(l.name) i
                   WHERE i.seqno = 0 AND i.name = ?2)
                 OR EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2 AND pk = 1
                   AND upper(type) = 'INTEGER')",
            ))
            .bind(name)
            .bind(&column)
            .fetch_one(&mut conn)
            .await
        }
        Location::Mysql(url) => {
            let options: MySqlConnectOptions = match url.parse() {
                Ok(o) => o,
                Err(_) => return Ok(None),
            };
            let Ok(mut conn) = options.connect().await else {
                return Ok(None);
            };
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
                   AND TABLE_NAME = ? AND COLUMN_NAME = ? AND SEQ_IN_INDEX = 1)",
            )
            .bind(table.as_str())
            .bind(&column)
            .fetch_one(&mut conn)
            .await
        }
        Location::File(..) | Location::Http(_) => return Ok(None),
    };
    let indexed = indexed.unwrap_or(true);
    Ok((!indexed).then(|| {
        let cost = match job.destination.location {
            Location::Mysql(_) => "apply reads every key once into a key map to find rows (a table without a primary key is scanned once per batch instead), and incremental runs read the destination rows of a window by key",
            _ => "apply reads every key once into a key map to find rows, and incremental runs read the destination rows of a window by key",
        };
        format!(
            "note: destination key column `{column}` of `{table}` leads no index: {cost}; `CREATE INDEX ON {table} ({column})` makes those lookups instead of scans"
        )
    }))
}

/// Whether the side's own catalog proves its key columns unique and never NULL: a PostgreSQL
/// table (read whole, or a window of it) with a valid, non-partial unique index on key columns
/// only, each `NOT NULL`. Then the key checks have nothing to find. Any doubt (another kind of
/// side, a `query`, an error) answers `false`, and the checks run.
pub async fn key_proven_unique(endpoint: &crate::config::Endpoint, columns: &[String]) -> bool {
    let (Location::Postgres(url), Relation::Table(table)) =
        (&endpoint.location, &endpoint.relation)
    else {
        return false;
    };
    let Ok(mut conn) = super::postgres::connect(endpoint, url).await else {
        return false;
    };
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_index i
           WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid
             AND i.indpred IS NULL AND i.indexprs IS NULL
             AND NOT EXISTS (SELECT 1 FROM generate_series(0, i.indnkeyatts - 1) n
               LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[n]
               WHERE a.attname IS NULL OR NOT (a.attname = ANY($2))))
         AND (SELECT count(*) FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attname = ANY($2) AND a.attnotnull
                AND NOT a.attisdropped) = cardinality($2)",
    )
    .bind(crate::sql::quote_table(
        crate::sql::Dialect::Standard,
        table,
    ))
    .bind(columns)
    .fetch_one(&mut conn)
    .await
    .unwrap_or(false)
}
