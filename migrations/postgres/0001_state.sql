-- The state store (PostgreSQL): per job, its runs, the rows that failed in its last apply, and its
-- state value. Keep in step with migrations/sqlite/.

CREATE TABLE runs (
    id               BIGSERIAL PRIMARY KEY,
    job              TEXT    NOT NULL,
    command          TEXT    NOT NULL,            -- apply | state set | state reset
    started_at       TEXT    NOT NULL,            -- RFC 3339, UTC
    finished_at      TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,            -- ok | partial | refused | error | state
    source_rows      BIGINT  NOT NULL DEFAULT 0,
    destination_rows BIGINT  NOT NULL DEFAULT 0,
    planned_insert   BIGINT  NOT NULL DEFAULT 0,
    planned_update   BIGINT  NOT NULL DEFAULT 0,
    planned_delete   BIGINT  NOT NULL DEFAULT 0,
    applied_insert   BIGINT  NOT NULL DEFAULT 0,
    applied_update   BIGINT  NOT NULL DEFAULT 0,
    applied_delete   BIGINT  NOT NULL DEFAULT 0,
    failed           BIGINT  NOT NULL DEFAULT 0,
    message          TEXT
);
CREATE INDEX runs_by_job ON runs (job, id);

-- Rows that failed in the job's last apply; `runs` counts consecutive failing applies.
CREATE TABLE failed_rows (
    job     TEXT    NOT NULL,
    key     TEXT    NOT NULL,                     -- the key as a JSON object
    action  TEXT    NOT NULL,
    error   TEXT    NOT NULL,
    run_id  BIGINT  NOT NULL REFERENCES runs (id),
    runs    BIGINT  NOT NULL,
    PRIMARY KEY (job, key)
);

-- The job's state value (JSON: a string, a number or an object).
CREATE TABLE state (
    job        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
