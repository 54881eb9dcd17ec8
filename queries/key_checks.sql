-- key_checks.sql: keys must be present and unique on both sides before the diff, or the join
-- would drop (NULL) or fan out (duplicate) rows.
--
-- Input: {{side}}, the source (s) or destination (d) view with key columns k0..kN.
-- Sections, each selected by its `-- name:` line:

-- name: counts
-- Output: null_keys (rows with any key column NULL), duplicate_keys (keys on more than one row),
-- rows (all rows: the side's count in the summary, so no separate scan is needed).
-- One scan counts the rows and the NULL keys; the duplicates need a grouping of their own.
SELECT
    c.rows, c.null_keys,
    (SELECT count(*) FROM (
        SELECT {{keys}} FROM {{side}} WHERE NOT ({{any_key_null}}) GROUP BY {{keys}} HAVING count(*) > 1
    ) AS dup) AS duplicate_keys
FROM (
    SELECT count(*) AS rows, count(*) FILTER (WHERE {{any_key_null}}) AS null_keys FROM {{side}}
) AS c

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
