-- diff.sql: the generated comparison (a FULL OUTER JOIN on the mapped key).
--
-- Inputs, registered by recon (src/diff.rs) from the two snapshots:
--   s  the source:      k0..kN (key), cur (the cursor, incremental mode only), v0..vM (compared columns, cast),
--                      o0..oM (the same columns as the side holds them), __present (always true)
--   d  the destination: k0..kN, v0..vM, o0..oM, id (the destination's record id, or NULL), __present
-- Both sides are already cast to one common type per column pair (src/types.rs).
--
-- Output: one row per key that is missing, changed or extra in the destination:
--   action  'insert' (only in source), 'update' (in both, some column differs), 'delete' (only in destination)
--   k0..kN  the key;  id  the destination's id
--   s_v0.., d_v0..  the source and destination values as each side holds them;  c0..  true where that column differs
--   n_v0..  the source values in the compared type: what writeback writes, so that the destination
--           stores the value the comparison saw (a text timestamp's zone applied, a date parsed)
--
-- The hash join holds its left side in memory: recon puts the smaller side there ({{left}} is `d`
-- and {{right}} `s` when the destination is smaller, which a FULL OUTER JOIN allows).
--
-- In incremental mode the source is a window (rows from the watermark on): the join is a LEFT
-- JOIN, so destination rows outside the window are not deletes, and `cur` carries the cursor.
--
-- Rows come inserts first, then updates, then deletes, each by key, so listings are stable. The
-- ORDER BY section is left out when no change is listed in order (counting only, or an apply,
-- whose writeback groups changes by action anyway): sorting every change is the costliest part
-- of an initial load. An apply into a destination that already holds much of the source sorts
-- its changes by key alone instead (`ORDER BY k0, …`, src/diff/mod.rs), so that writeback can
-- write them in the order of the destination's key index (src/writeback/spool.rs).
-- Every comparison is parenthesised: DataFusion's parser binds IS DISTINCT FROM looser than OR.
SELECT
    CASE
        WHEN d.__present IS NULL THEN 'insert'
        WHEN s.__present IS NULL THEN 'delete'
        ELSE 'update'
    END AS action,
    {{keys}},
    {{values}}
    {{changed}}
    {{cursor}}
    d.id AS id
FROM {{left}}
{{join}} JOIN {{right}} ON {{key_join}}
WHERE s.__present IS NULL
   OR d.__present IS NULL
   OR {{any_changed}}
{{order}}ORDER BY
    CASE WHEN d.__present IS NULL THEN 0 WHEN s.__present IS NULL THEN 2 ELSE 1 END,
    {{order_keys}}
