-- user_diff.sql: wraps a user's `diff_query` so its output looks like diff.sql's.
--
-- Inputs:
--   u  the user's query result, projected by recon to: action, k0..kN, v0..vM (the destination's
--      key and compared columns, cast to the common types), o0..oM (uncast)
--   d  the destination, as in diff.sql
--
-- Output: the columns of diff.sql (n_v0.. are the user's values, cast). Rows whose action is not insert/update/delete are refused
-- before this runs (key_checks.sql, `bad_actions`).
SELECT
    lower(u.action) AS action,
    {{keys}},
    {{values}}
    {{changed}}
    {{cursor}}
    d.id AS id
FROM u
{{join}} JOIN d ON {{key_join}}
ORDER BY action, {{order_keys}}
