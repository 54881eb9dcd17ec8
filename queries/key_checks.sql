-- key_checks.sql: keys must be present and unique on both sides before the diff, or the join
-- would drop (NULL) or fan out (duplicate) rows.
--
-- Input: {{side}}, the source (s) or destination (d) view with key columns k0..kN.
-- Sections, each selected by its `-- name:` line:

-- name: counts
-- Output: null_keys (rows with any key column NULL), duplicate_keys (keys on more than one row),
-- rows (all rows: the side's count in the summary, so no separate scan is needed).
-- One grouping by key gives all three: rows with a NULL in the key group together (by key), and
-- the side is read once.
SELECT
    CAST(COALESCE(sum(g.copies), 0) AS BIGINT) AS rows,
    CAST(COALESCE(sum(CASE WHEN g.null_key THEN g.copies ELSE 0 END), 0) AS BIGINT) AS null_keys,
    count(*) FILTER (WHERE NOT g.null_key AND g.copies > 1) AS duplicate_keys
FROM (
    SELECT {{any_key_null}} AS null_key, count(*) AS copies FROM {{side}} GROUP BY {{keys}}
) AS g

-- name: rows
-- Output: rows. Used instead of `counts` when the side's own catalog proves its key unique and
-- never NULL (a PostgreSQL unique index on NOT NULL key columns, compared without a lossy cast).
SELECT count(*) AS rows, 0 AS null_keys, 0 AS duplicate_keys FROM {{side}}

-- name: null_sample
-- Output: up to five rows whose key has a NULL.
SELECT {{keys}} FROM {{side}} WHERE {{any_key_null}} LIMIT 5

-- name: duplicate_sample
-- Output: up to five duplicated keys, most copies first, with their count.
SELECT {{keys}}, count(*) AS copies
FROM {{side}} WHERE NOT ({{any_key_null}})
GROUP BY {{keys}} HAVING count(*) > 1
ORDER BY copies DESC LIMIT 5

-- name: bad_actions
-- Input: u, a diff_query's result. Output: up to five actions that are not insert/update/delete.
SELECT DISTINCT CAST(action AS VARCHAR) AS action FROM u
WHERE action IS NULL OR lower(action) NOT IN ('insert', 'update', 'delete') LIMIT 5
